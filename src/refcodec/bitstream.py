"""The refcodec container format: a small header, the payload streams, a CRC32.

Stdlib only (no torch, no numpy), so the parser can be fuzzed on its own.

Versioning rule: ``FORMAT_VERSION`` is bumped whenever the byte layout or the
meaning of any field changes. A reader refuses every version it does not know.

Byte layout of version 4 (all integers little-endian, unsigned)::

    offset          size  field
    0               4     magic b"RFCD"
    4               1     format version (4)
    5               1     schedule code (0 = raster, 1 = wavefront)
    6               1     mode code (0 = RGB, 1 = L)
    7               1     n: byte length of the model id (1..255)
    8               1     k: number of payload streams (1..16)
    9               16    weights hash
    25              2     width (1..65535)
    27              2     height (1..65535)
    29              2     pad_right (0..65535)
    31              2     pad_bottom (0..65535)
    33              8     quality, IEEE float64 (a variable-rate model's exact quality; NaN: a fixed-rate model)
    41              4     m: byte length of the ICC colour profile (0: none)
    45              n     model id, UTF-8
    45+n            m     the input image's ICC profile, as it was (opaque bytes: the pixels are coded as they are)
    45+n+m          4*k   byte length of each stream (u32 each)
    45+n+m+4k       P     the k streams, concatenated (P = sum of the lengths)
    45+n+m+4k+P     4     CRC32 (zlib.crc32) of every byte before it

A file ends exactly after the CRC; anything longer or shorter is rejected. Version 3 and later mean that
the decoder synthesizes the image with the exact fixed-point g_s (``synthesis``), the same pixels on
every machine; versions 1 and 2 are decoded with the float32 g_s they were written for, whose
pixels may differ by a level between machines. Version 3 is version 4 without the ICC profile (no
field m, no profile); version 2 has the layout of version 3. Version 1, written by releases before
variable-rate models, is the same without the quality field; it is still read (as a fixed-rate file).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import RefcodecError

MAGIC = b"RFCD"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
ICC_FROM = 4  # files of this version and later carry an ICC profile field
EXACT_SYNTHESIS_FROM = 3  # files of this version and later are synthesized exactly (``synthesis``)

MAX_STREAMS = 16
HASH_SIZE = 16
MAX_ICC = 1 << 24  # bytes of an ICC profile (real ones take a few kB to a few hundred kB)

_SCHEDULES = ("raster", "wavefront")  # index = byte code
_MODES = ("RGB", "L")  # index = byte code

_PREAMBLE = struct.Struct("<4sB")  # magic, version
_FIXED = struct.Struct(f"<BBBB{HASH_SIZE}sHHHH")  # offsets 5..32
_QUALITY = struct.Struct("<d")  # version 2 and later
_ICC_LENGTH = struct.Struct("<I")  # version 4 and later
_WITH_QUALITY = _PREAMBLE.size + _FIXED.size + _QUALITY.size
_HEADER_FIXED_SIZE = {1: _PREAMBLE.size + _FIXED.size, 2: _WITH_QUALITY, 3: _WITH_QUALITY, 4: _WITH_QUALITY + _ICC_LENGTH.size}  # 33, 41, 41, 45
_STREAM_LENGTH = struct.Struct("<I")
_CRC = struct.Struct("<I")

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFF_FFFF


class BitstreamError(RefcodecError):
    """A byte string is not a valid refcodec file this version can read."""


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise ValueError unless ``value`` is an int in ``lo..hi``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")


@dataclass(frozen=True)
class Header:
    """Everything a decoder needs besides the payload streams."""

    model: str
    weights_hash: bytes
    schedule: str
    width: int
    height: int
    mode: str
    pad_right: int
    pad_bottom: int
    stream_lengths: tuple[int, ...]
    quality: float | None = None  # a variable-rate model's coding quality; None for a fixed-rate model
    version: int = FORMAT_VERSION  # the format version a file was read from (``pack`` writes FORMAT_VERSION only)
    icc_profile: bytes | None = None  # the input's ICC colour profile (version 4 and later), or None

    def __post_init__(self) -> None:
        """Validate every field against what the format can store."""
        if not isinstance(self.model, str):
            raise ValueError(f"model must be a str, got {type(self.model).__name__}")
        try:
            model_size = len(self.model.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"model id {self.model!r} is not encodable as UTF-8") from None
        if not 1 <= model_size <= 255:
            raise ValueError(f"model id must be 1..255 UTF-8 bytes, got {model_size}")
        if not isinstance(self.weights_hash, bytes) or len(self.weights_hash) != HASH_SIZE:
            raise ValueError(f"weights_hash must be {HASH_SIZE} bytes, got {self.weights_hash!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        _check_int("width", self.width, 1, _U16_MAX)
        _check_int("height", self.height, 1, _U16_MAX)
        _check_int("pad_right", self.pad_right, 0, _U16_MAX)
        _check_int("pad_bottom", self.pad_bottom, 0, _U16_MAX)
        object.__setattr__(self, "stream_lengths", tuple(self.stream_lengths))
        if not 1 <= len(self.stream_lengths) <= MAX_STREAMS:
            raise ValueError(f"need 1..{MAX_STREAMS} streams, got {len(self.stream_lengths)}")
        for i, length in enumerate(self.stream_lengths):
            _check_int(f"stream_lengths[{i}]", length, 0, _U32_MAX)
        if self.quality is not None:
            if isinstance(self.quality, bool) or not isinstance(self.quality, (int, float)) or not math.isfinite(self.quality):
                raise ValueError(f"quality must be a finite number or None, got {self.quality!r}")
            object.__setattr__(self, "quality", float(self.quality))
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"version must be one of {READABLE_VERSIONS}, got {self.version!r}")
        if self.icc_profile is not None:
            if not isinstance(self.icc_profile, bytes) or not 1 <= len(self.icc_profile) <= MAX_ICC:
                raise ValueError(f"icc_profile must be 1..{MAX_ICC} bytes or None")
            if self.version < ICC_FROM:
                raise ValueError(f"format version {self.version} holds no ICC profile")

    @property
    def padded_size(self) -> tuple[int, int]:
        """(height, width) of the padded image the model coded."""
        return self.height + self.pad_bottom, self.width + self.pad_right

    @property
    def exact_synthesis(self) -> bool:
        """Whether the decoder synthesizes this file exactly (format version 3 and later) or in float32."""
        return self.version >= EXACT_SYNTHESIS_FROM

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable view (hash as hex), for ``refcodec info``."""
        return {
            "model": self.model,
            "weights_hash": self.weights_hash.hex(),
            "schedule": self.schedule,
            "width": self.width,
            "height": self.height,
            "mode": self.mode,
            "pad_right": self.pad_right,
            "pad_bottom": self.pad_bottom,
            "stream_lengths": list(self.stream_lengths),
            "quality": self.quality,
            "format_version": self.version,
            "icc_profile_bytes": len(self.icc_profile or b""),
        }


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Serialize ``header`` and ``streams`` (whose lengths the header lists) to a file."""
    if header.version != FORMAT_VERSION:
        raise ValueError(f"this refcodec writes format version {FORMAT_VERSION} only, not {header.version}")
    if len(streams) != len(header.stream_lengths):
        raise ValueError(
            f"header lists {len(header.stream_lengths)} streams, got {len(streams)}"
        )
    for i, (stream, length) in enumerate(zip(streams, header.stream_lengths)):
        if len(stream) != length:
            raise ValueError(f"stream {i} is {len(stream)} bytes, header says {length}")
    model = header.model.encode("utf-8")
    parts = [
        _PREAMBLE.pack(MAGIC, FORMAT_VERSION),
        _FIXED.pack(
            _SCHEDULES.index(header.schedule),
            _MODES.index(header.mode),
            len(model),
            len(streams),
            header.weights_hash,
            header.width,
            header.height,
            header.pad_right,
            header.pad_bottom,
        ),
        _QUALITY.pack(math.nan if header.quality is None else header.quality),
        _ICC_LENGTH.pack(len(header.icc_profile or b"")),
        model,
        header.icc_profile or b"",
        *(_STREAM_LENGTH.pack(length) for length in header.stream_lengths),
        *streams,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _require_size(data: bytes, needed: int) -> None:
    """Raise unless ``data`` holds at least ``needed`` bytes."""
    if len(data) < needed:
        raise BitstreamError(f"truncated file: header needs {needed} bytes, found {len(data)}")


def _parse(data: bytes) -> tuple[Header, int]:
    """Validate a whole file; return its header and the offset of the first stream."""
    if not MAGIC.startswith(data[: len(MAGIC)]):
        raise BitstreamError("not a refcodec file (bad magic)")
    _require_size(data, _PREAMBLE.size)
    version = data[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(
            f"unsupported format version {version} (this refcodec reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    fixed_size = _HEADER_FIXED_SIZE[version]
    _require_size(data, fixed_size)
    schedule_code, mode_code, model_size, n_streams, weights_hash, *sizes = _FIXED.unpack_from(
        data, _PREAMBLE.size
    )
    quality = math.nan if version == 1 else _QUALITY.unpack_from(data, _PREAMBLE.size + _FIXED.size)[0]
    icc_size = _ICC_LENGTH.unpack_from(data, _WITH_QUALITY)[0] if version >= ICC_FROM else 0
    if not 1 <= n_streams <= MAX_STREAMS:
        raise BitstreamError(f"bad stream count {n_streams} (must be 1..{MAX_STREAMS})")
    if icc_size > MAX_ICC:
        raise BitstreamError(f"implausible ICC profile of {icc_size} bytes (at most {MAX_ICC})")

    # Framing: every size is known before any payload byte is touched.
    icc_at = fixed_size + model_size
    lengths_at = icc_at + icc_size
    payload_at = lengths_at + _STREAM_LENGTH.size * n_streams
    _require_size(data, payload_at)
    stream_lengths = tuple(
        _STREAM_LENGTH.unpack_from(data, lengths_at + _STREAM_LENGTH.size * i)[0]
        for i in range(n_streams)
    )
    payload_size = sum(stream_lengths)
    expected = payload_at + payload_size + _CRC.size
    if len(data) < expected:
        raise BitstreamError(
            f"truncated file: header says {payload_size} payload bytes "
            f"({expected} bytes in all), found {len(data)} bytes"
        )
    if len(data) > expected:
        raise BitstreamError(
            f"trailing garbage: {len(data) - expected} bytes after the end of the file "
            f"({expected} bytes expected)"
        )

    body = memoryview(data)[: expected - _CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(data, len(body))[0]:
        raise BitstreamError("checksum mismatch: file is corrupted")

    # Field meanings: a file that passes the checksum but fails here was written wrong.
    if schedule_code >= len(_SCHEDULES):
        raise BitstreamError(f"unknown schedule code {schedule_code}")
    if mode_code >= len(_MODES):
        raise BitstreamError(f"unknown image mode code {mode_code}")
    try:
        model = data[fixed_size:icc_at].decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("model id is not valid UTF-8") from None
    width, height, pad_right, pad_bottom = sizes
    try:
        header = Header(
            model=model,
            weights_hash=weights_hash,
            schedule=_SCHEDULES[schedule_code],
            width=width,
            height=height,
            mode=_MODES[mode_code],
            pad_right=pad_right,
            pad_bottom=pad_bottom,
            stream_lengths=stream_lengths,
            quality=None if math.isnan(quality) else quality,
            version=version,
            icc_profile=bytes(data[icc_at:lengths_at]) or None,
        )
    except ValueError as e:
        raise BitstreamError(f"invalid header: {e}") from None
    return header, payload_at


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and validate a file; return its header and payload streams."""
    header, offset = _parse(data)
    streams = []
    for length in header.stream_lengths:
        streams.append(data[offset : offset + length])
        offset += length
    return header, streams


def read_header(data: bytes) -> Header:
    """Validate a whole file (checksum included) and return only its header."""
    return _parse(data)[0]
