"""Image <-> padded tensor <-> model <-> container bytes.

The encoder pads the image to a multiple of the model's alignment by repeating
its last row and column, and records the padding and the original mode; the
decoder crops back and restores the mode. Reading images and converting their
modes is ``images``'s.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import refine
from .bitstream import BitstreamError, Header, pack, unpack
from .entropy.coder import CodingError
from .errors import RefcodecError
from .images import MAX_PIXELS, load_image, to_rgb
from .models.base import ALIGNMENT, CompressionModel
from .models.registry import DEFAULT_MODEL, DEFAULT_QUALITY, ModelNotFoundError, load_model, retired_reason


class DeviceError(RefcodecError):
    """A device this machine does not have, or another than the given model's."""


def resolve_model(model: CompressionModel | str | None, quality: float | None, device: str | torch.device | None = None) -> CompressionModel:
    """The model object, or the one loaded by name (on ``device``); a given model must be on ``device``."""
    check_device(device)
    if isinstance(model, CompressionModel):
        if device is not None and torch.device(device) != next(model.parameters()).device:
            raise DeviceError(f"the model is on {next(model.parameters()).device}, not {device}: move it, or give a model name")
        return model
    net = load_model(model or DEFAULT_MODEL, DEFAULT_QUALITY if quality is None else quality)
    return net if device is None else net.to(device)


@contextmanager
def at_quality(model: CompressionModel, quality: float | None):
    """``model`` coding at ``quality`` (a variable-rate model; None keeps its quality), restored afterwards."""
    own = model.quality
    if quality is not None or not model.levels:
        model.use_quality(quality)
    try:
        yield model
    finally:
        model.quality = own


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) float32 tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def padded_tensor(rgb: Image.Image) -> torch.Tensor:
    """An RGB image as the tensor the encoder codes: sides padded to a multiple of ALIGNMENT by
    repeating the last row and column."""
    width, height = rgb.size
    return F.pad(image_to_tensor(rgb), (0, -width % ALIGNMENT, 0, -height % ALIGNMENT), mode="replicate")


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """A (1, 3, H, W) tensor in [0, 1] (clamped) as an 8-bit RGB image, rounding to the nearest level."""
    arr = torch.round(x.clamp(0, 1)[0].permute(1, 2, 0) * 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def compress(
    image: str | Path | Image.Image,
    model: CompressionModel | str | None = None,
    quality: float | None = None,
    max_pixels: int = MAX_PIXELS,
    effort: str = "default",
    device: str | torch.device | None = None,
) -> bytes:
    """Compress an image (path or PIL image) of at most ``max_pixels`` into a refcodec bitstream.

    ``quality`` picks the shipped model of that quality, or, for a variable-rate model, any float
    in its range (recorded exactly in the file). A fixed-rate model object takes no quality.
    ``effort`` (``refine.EFFORTS``) spends encode time for smaller files; decoding is unchanged.
    ``device`` (for example ``"cuda"``) is where a model given by name encodes; a given model encodes where it is.
    """
    net = resolve_model(model, quality, device)
    rgb, mode = to_rgb(load_image(image, max_pixels))
    return compress_rgb(rgb, mode, net, quality, effort)


def compress_rgb(rgb: Image.Image, mode: str, net: CompressionModel, quality: float | None = None, effort: str = "default") -> bytes:
    """The bitstream of an RGB image (``to_rgb``) with a loaded model, at ``quality`` for a variable-rate one."""
    return encode_rgb(rgb, mode, net, quality, effort)[0]


def encode_rgb(rgb: Image.Image, mode: str, net: CompressionModel, quality: float | None = None, effort: str = "default",
               progress: bool = False, ungained: torch.Tensor | None = None) -> tuple[bytes, torch.Tensor]:  # fmt: skip
    """:func:`compress_rgb` and the quantized latents y_hat it coded (the decoder gets exactly these).

    ``effort`` above ``default`` refines the image's latents first (``refine``); the file is the same format.
    ``ungained``: a variable-rate model's analysis of this image before the gain (``GRM.latents``), reused.
    """
    width, height = rgb.size
    x = padded_tensor(rgb).to(next(net.parameters()).device)  # a model on a GPU encodes there
    steps = refine.steps_of(effort)
    with at_quality(net, quality if net.levels else None):
        if steps:
            streams, y_hat, _ = refine.encode(net, x, steps, height, width, progress)
        elif ungained is not None:
            streams, y_hat = net.encode_latents(*net.latents(x, ungained))
        else:
            streams, y_hat = net.encode(x)
        coded_quality = net.quality
    header = Header(
        model=net.id,
        weights_hash=net.weights_hash(),
        schedule=net.schedule.name,
        width=width,
        height=height,
        mode=mode,
        pad_right=x.shape[3] - width,
        pad_bottom=x.shape[2] - height,
        stream_lengths=tuple(len(s) for s in streams),
        quality=coded_quality,
        icc_profile=rgb.info.get("icc_profile") or None,  # kept as it was: the decoded image gives it back
    )
    return pack(header, streams), y_hat


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB between two 8-bit images of the same size and mode."""
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


@contextmanager
def opened(data: bytes, model: CompressionModel | None = None, max_pixels: int = MAX_PIXELS, device: str | torch.device | None = None):
    """Check a file and yield (header, streams, model), the model set to the file's decode order (the model
    named in the file, on ``device``, unless one is given).

    Everything is refused before any decoding: implausible headers, files of more than
    ``max_pixels``, a missing model, other weights than the file was written with, a wrong
    stream count or schedule. Coding errors in the body become ``BitstreamError``, and the
    caller's model gets its own decode order back.
    """
    header, streams = unpack(bytes(data))
    if header.pad_right >= ALIGNMENT or header.pad_bottom >= ALIGNMENT:
        raise BitstreamError(f"implausible padding in the header ({header.pad_right}x{header.pad_bottom})")
    if header.width * header.height > max_pixels:
        raise BitstreamError(f"file holds a {header.width}x{header.height} image, over the limit of {max_pixels} pixels")
    if model is None:
        retired = retired_reason(header.model, header.weights_hash)
        if retired:
            raise BitstreamError(f"file was written by {header.model} with weights {header.weights_hash.hex()}: {retired}")
        try:
            model = load_model(header.model).to(device or "cpu")
        except ModelNotFoundError as e:
            raise BitstreamError(f"file needs model {header.model!r}, which is not available ({e})") from None
    if model.weights_hash() != header.weights_hash:
        given = getattr(model, "id", None)
        if given is not None and given != header.model:
            raise BitstreamError(f"file was written by {header.model!r}, not by the given model {given!r}")
        raise BitstreamError(f"file was written with other weights for {header.model!r} (weights hash mismatch)")
    if len(streams) != model.stream_count():
        raise BitstreamError(f"file has {len(streams)} streams, model {header.model!r} needs {model.stream_count()}")
    if any(side % ALIGNMENT for side in header.padded_size):
        raise BitstreamError("padded size in the header is not a multiple of 64")
    own_schedule, own_quality = model.schedule.name, model.quality
    try:
        model.use_schedule(header.schedule)
        model.use_quality(header.quality)
    except ValueError as e:
        model.use_schedule(own_schedule)
        raise BitstreamError(f"file's {header.schedule} schedule or quality does not fit model {header.model!r} ({e})") from None
    try:
        yield header, streams, model
    except CodingError as e:
        raise BitstreamError(str(e)) from None
    finally:
        model.use_schedule(own_schedule)
        model.quality = own_quality


def to_image(header: Header, x_hat: torch.Tensor) -> Image.Image:
    """The decoded image of a file from the reconstruction of its padded image, with the input's ICC
    profile in ``info["icc_profile"]`` where the file carries one."""
    image = tensor_to_image(x_hat[:, :, : header.height, : header.width])
    image = image.convert("L") if header.mode == "L" else image
    if header.icc_profile:
        image.info["icc_profile"] = header.icc_profile
    return image


def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line, a device this machine does not have (``cuda`` without a GPU)."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"device {device!r}: {e}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: no CUDA device is available")


def read_bytes(source: bytes | bytearray | memoryview | str | Path | BinaryIO) -> bytes:
    """The bytes of a file given as bytes, a path or a file object opened for reading in binary."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise BitstreamError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
        return path.read_bytes()
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise BitstreamError("the file object gives text, not bytes: open it in binary mode ('rb')")
        return data
    raise BitstreamError(f"cannot decode a {type(source).__name__}: give bytes, a path or a binary file object")


def decompress(data: bytes | str | Path | BinaryIO, model: CompressionModel | None = None, progress: bool = False,
               max_pixels: int = MAX_PIXELS, device: str | torch.device | None = None) -> Image.Image:  # fmt: skip
    """Decode a refcodec bitstream (bytes, a path or a binary file object) into a PIL image (mode as it was
    given to the encoder).

    Files of more than ``max_pixels`` are refused from their header, before anything is allocated.
    ``device`` (for example ``"cuda"``) is where the model named in the file decodes: the exact entropy
    model and synthesis run there, the range decoder on the CPU, and the pixels are the CPU's. A given
    ``model`` decodes where it is.
    """
    check_device(device)
    data = read_bytes(data)
    if device is not None and model is not None and torch.device(device) != next(model.parameters()).device:
        raise DeviceError(f"the model is on {next(model.parameters()).device}, not {device}: move it, or give no model")
    with opened(data, model, max_pixels, device) as (header, streams, model):
        x_hat = model.decompress(streams, *header.padded_size, progress, header.exact_synthesis)
    return to_image(header, x_hat)
