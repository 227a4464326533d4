"""Command line: argument parsing only; every command calls a module.

Expected failures (bad input, corrupt files, missing models, unwritable outputs)
print one line ``refcodec: error: ...`` and exit with status 1; usage errors exit
with 2. Outputs are written to a temporary file and renamed into place, and an
existing file is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from . import allocator
from .errors import RefcodecError

EXIT_ERROR = 1
EXIT_INTERNAL = 3


class CliError(Exception):
    """A failure to report as one line."""


def _write_atomic(path: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` so that it appears whole or not at all.

    The bytes go to an unnamed file in the target folder (Linux ``O_TMPFILE``), which the
    system deletes if the process dies at any moment, and are linked into place only once
    written and synced. An existing file is only ever replaced, with ``force``, by one rename.
    Where unnamed files are not supported, a hidden ``.part`` file is used and removed on any
    error (a ``kill -9`` can then leave it behind, never a partial output).
    """
    if path.exists() and not force:
        raise CliError(f"{path} exists (use --force to overwrite)")
    if path.is_dir():
        raise CliError(f"{path} is a directory")
    try:
        fd = _unnamed_file(path.parent)
        unnamed = fd is not None
        if not unnamed:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise CliError(f"cannot write to {path.parent}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if unnamed:
                _link_into_place(f.fileno(), path, force)
        if not unnamed:
            os.replace(tmp, path)
    except BaseException:
        if not unnamed:
            os.unlink(tmp)
        raise


def _unnamed_file(folder: Path) -> int | None:
    """A descriptor of a new unnamed file in ``folder`` (Linux ``O_TMPFILE``), or None where the
    system or the filesystem has none."""
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _link_into_place(fd: int, path: Path, force: bool) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (replacing it only with ``force``).

    linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N, as open(2) documents for O_TMPFILE;
    Python calls linkat, rather than link, only when given a directory descriptor.
    """
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        name = path.name if not force else f".{path.name}.{os.getpid()}.part"
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=folder, follow_symlinks=True)
        except FileExistsError:
            raise CliError(f"{path} exists (use --force to overwrite)") from None
        if force:
            os.replace(name, path.name, src_dir_fd=folder, dst_dir_fd=folder)
    finally:
        os.close(folder)


def _emit(args, record: dict, line: str) -> None:
    print(json.dumps(record) if args.json else line)


def _outputs(inputs: list[str], out: str | None, suffix: str) -> list[Path]:
    """The output of every input: ``out`` itself for one input, else the input's name with ``suffix`` beside it or
    in the folder ``out``. Refused, before anything is written, where two inputs would map to one output."""
    if len(inputs) == 1 and out and not Path(out).is_dir():
        return [Path(out)]
    if out is not None and not Path(out).is_dir():
        raise CliError(f"{out}: with several inputs, -o must be an existing folder")
    outputs = [Path(i).with_suffix(suffix) if out is None else Path(out) / (Path(i).stem + suffix) for i in inputs]
    seen: dict[Path, str] = {}
    for src, dst in zip(inputs, outputs):
        key = Path(os.path.abspath(dst))
        if key in seen:
            raise CliError(f"{seen[key]} and {src} would both be written to {dst}; compress them into separate folders "
                           "or one at a time (nothing was written)")  # fmt: skip
        seen[key] = src
    return outputs


def _check_output(path: Path, force: bool) -> None:
    """Refuse, before any coding, an output that could not be written: an existing file without ``force``,
    a folder, or a parent folder that is missing or not writable."""
    if path.is_dir():
        raise CliError(f"{path} is a directory")
    if path.exists() and not force:
        raise CliError(f"{path} exists (use --force to overwrite)")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"cannot write {path}: the folder {parent} is not writable")


# What ``decompress`` writes for an output's extension: Pillow's format and options (every one lossless but JPEG).
FORMATS = {".png": ("PNG", {}), ".tif": ("TIFF", {}), ".tiff": ("TIFF", {}), ".bmp": ("BMP", {}), ".ppm": ("PPM", {}),
           ".pgm": ("PPM", {}), ".pnm": ("PPM", {}), ".webp": ("WEBP", {"lossless": True, "quality": 100}),
           ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}), ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0})}  # fmt: skip


def cmd_compress(args) -> int:
    from . import images
    from .models.presets import DEFAULT_QUALITY

    target = any(t is not None for t in (args.target_bpp, args.target_psnr, args.target_ms_ssim))
    if target and args.quality is not None:
        raise CliError("give --quality or a target (--target-bpp, --target-psnr, --target-ms-ssim), not both")
    outputs = _outputs(args.images, args.output, ".rfc")
    loaded = {}
    if len(args.images) == 1:  # its input and output are refused before torch loads (seconds)
        _check_output(outputs[0], args.force)
        loaded[args.images[0]] = images.load_image(args.images[0], args.max_pixels)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    quality = DEFAULT_QUALITY if args.quality is None else args.quality
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", images.InputWarning)  # each input's notes are said once, by _compress_each
        failures = _compress_each(args, quality, target, outputs, loaded)
    for f in failures:
        print(f"refcodec: error: {f}", file=sys.stderr)
    return EXIT_ERROR if failures else 0


def _compress_each(args, quality: float, target: bool, outputs: list[Path], loaded: dict) -> list[str]:
    """``compress``'s inputs, each coded and written, or its failure kept (a batch goes on; one input raises);
    ``loaded``: inputs already read, by path."""
    from . import codec, images, ratecontrol, refine
    from .bitstream import read_header

    model = None
    failures = []
    for src, dst in zip(args.images, outputs):
        try:
            _check_output(dst, args.force)
            start = time.perf_counter()
            image = loaded.pop(src, None) or images.load_image(src, args.max_pixels)
            with warnings.catch_warnings(record=True) as caught:  # what is not coded (an opaque alpha): said once
                warnings.simplefilter("always", images.InputWarning)
                images.to_rgb(image)
            for note in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, images.InputWarning)):
                print(f"refcodec: note: {src}: {note}", file=sys.stderr)
            if model is None:  # loaded once, after the first readable input
                model = _load_for_compress(args, quality, target)
            record = {"input": src, "output": str(dst)}
            if target:
                choice = ratecontrol.search(image, model, args.target_bpp, args.target_psnr, args.preset, args.max_pixels, args.effort,
                                            args.target_ms_ssim, args.strict_target)  # fmt: skip
                data = choice.data
                if choice.note:
                    record["note"] = choice.note
                    print(f"refcodec: note: {src}: {choice.note}", file=sys.stderr)
                record |= {"quality": choice.quality, "psnr": choice.psnr, "encodes": choice.encodes}
                ms_ssim = "" if choice.ms_ssim is None else f", MS-SSIM {choice.ms_ssim:.4f}"
                record |= {} if choice.ms_ssim is None else {"ms_ssim": choice.ms_ssim}
                achieved = f", quality {choice.quality:g}, {choice.psnr:.2f} dB{ms_ssim} ({choice.encodes} encodes)"
            else:
                rgb, mode = images.to_rgb(image)
                data = codec.encode_rgb(rgb, mode, model, effort=args.effort, progress=not args.json and sys.stderr.isatty())[0]
                record["quality"] = model.quality
                achieved = "" if model.quality is None else f", quality {model.quality:g}"
            seconds = time.perf_counter() - start
            _write_atomic(dst, data, args.force)
            bpp = 8 * len(data) / (image.width * image.height)
            record |= {"bytes": len(data), "bpp": bpp, "seconds": seconds, "model": read_header(data).model,
                       "effort": args.effort, "refinement_steps": refine.steps_of(args.effort)}  # fmt: skip
            _emit(args, record, f"{src} -> {dst}: {len(data)} bytes, {bpp:.4f} bpp{achieved}, {seconds:.2f} s")
        except (CliError, RefcodecError, OSError) as e:
            if len(args.images) == 1:
                raise
            failures.append(str(e) if str(src) in str(e) else f"{src}: {e}")  # the path once
    return failures


def _load_for_compress(args, quality: float, target: bool):
    """What ``compress`` codes with: the model, or with rate control its candidates
    (``ratecontrol.candidates``), on the device and in the decode order asked for."""
    from . import ratecontrol
    from .models.registry import load_model

    if target:
        options = ratecontrol.candidates(args.model, args.preset, args.metric)
        for net in {id(o[0]): o[0] for o in options}.values():
            _prepare(net, args)
        return options
    return _prepare(load_model(args.model, quality, args.preset, args.metric), args)


def _prepare(net, args):
    if args.schedule:
        try:
            net.use_schedule(args.schedule)
        except ValueError as e:
            raise CliError(str(e)) from None
    return net.to(args.device)


def cmd_decompress(args) -> int:
    from .bitstream import read_header

    src = Path(args.file)
    dst = Path(args.output) if args.output else src.with_suffix(".png")
    if dst.suffix.lower() not in FORMATS:
        raise CliError(f"{dst}: cannot tell the image format from {dst.suffix or 'no extension'!r}; use one of {', '.join(FORMATS)}")
    _check_output(dst, args.force)
    data = _read(src)
    read_header(data)  # a damaged or foreign file is refused before torch loads (seconds)
    import torch

    from . import codec

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    model = None
    if args.model:
        from .models.registry import load_model

        model = load_model(args.model).to(args.device)
    start = time.perf_counter()
    image = codec.decompress(data, model, progress=not args.json and sys.stderr.isatty(), max_pixels=args.max_pixels,
                             device=args.device)  # fmt: skip
    seconds = time.perf_counter() - start
    from io import BytesIO

    buf = BytesIO()
    kind, options = FORMATS[dst.suffix.lower()]
    profile = {"icc_profile": image.info["icc_profile"]} if image.info.get("icc_profile") and kind != "BMP" else {}
    image.save(buf, format=kind, **options, **profile)  # the input's colour profile, where the format holds one
    _write_atomic(dst, buf.getvalue(), args.force)
    record = {"input": str(src), "output": str(dst), "format": kind, "width": image.width, "height": image.height, "seconds": seconds}
    lossy = " (JPEG at quality 95, 4:4:4: lossy; PNG, TIFF, BMP, PPM and WebP keep the decoded pixels)" if kind == "JPEG" else ""
    _emit(args, record, f"{src} -> {dst}: {image.width}x{image.height} {kind}{lossy}, {seconds:.2f} s")
    return 0


def _read(path: Path) -> bytes:
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if not path.is_file():
        raise CliError(f"{path}: not a file")
    return path.read_bytes()


def cmd_info(args) -> int:
    from .bitstream import read_header
    from .versions import describe, versions

    data = _read(Path(args.file))
    header = read_header(data).to_dict()
    header["file_bytes"] = len(data)
    header["bpp"] = 8 * len(data) / (header["width"] * header["height"])
    lines = [f"{k}: {v}" for k, v in header.items()] + [f"versions: {describe()}"]
    _emit(args, {**header, "versions": versions()}, "\n".join(lines))
    return 0


def cmd_demo(args) -> int:
    from . import codec, synthesis
    from .models.registry import DEFAULT_QUALITY, load_model
    from .sample import sample_image

    model = load_model(args.model, DEFAULT_QUALITY if args.quality is None else args.quality, args.preset, args.metric)
    image = sample_image()
    start = time.perf_counter()
    data = codec.compress(image, model)
    mid = time.perf_counter()
    back = codec.decompress(data, model)
    end = time.perf_counter()
    psnr = codec.psnr(image, back)
    bpp = 8 * len(data) / (image.width * image.height)
    kernels = sorted({p["kernel"] for p in synthesis.probed()}) or [synthesis.forced_kernel() or "float64"]
    record = {"model": model.id, "width": image.width, "height": image.height, "bytes": len(data), "bpp": bpp,
              "psnr": psnr, "encode_seconds": mid - start, "decode_seconds": end - mid,
              "synthesis_kernels": synthesis.probed() or kernels}  # fmt: skip
    _emit(args, record, f"{model.id} on a {image.width}x{image.height} sample: {bpp:.4f} bpp, PSNR {psnr:.2f} dB, "
                        f"encode {mid - start:.2f} s, decode {end - mid:.2f} s (exact synthesis: {', '.join(kernels)})")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of the subcommands defined here (train, eval, compare, bench and viz parse their own)."""
    from .efforts import EFFORTS
    from .images import MAX_PIXELS
    from .models.presets import DEFAULT_MODEL, DEFAULT_PRESETS, DEFAULT_QUALITY, LAMBDAS, PRESETS
    from .versions import describe

    p = argparse.ArgumentParser(
        prog="refcodec",
        description="Learned image codec with a global-reference entropy model (Qian et al., ICLR 2021).",
        epilog="examples:\n"
        "  refcodec compress photo.png -o photo.rfc -q 3\n"
        "  refcodec decompress photo.rfc -o photo.png\n"
        "  refcodec eval IMAGES --model grm -q 1 2 3 4 -o grm.json\n"
        "  refcodec viz bits photo.rfc -o bits.png\n"
        "Expected failures print one line 'refcodec: error: ...' and exit with status 1; usage errors exit with 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=describe(),
                   help="print the versions of refcodec, torch, numpy, Pillow and Python, and exit")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model=False, limit=False, threads=False):
        sp.add_argument("--json", action="store_true", help="print one JSON object per result")
        if threads:
            sp.add_argument("--threads", type=int, metavar="N", help="torch threads (default: torch's, about one per core)")
        if limit:
            sp.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                            help=f"refuse images of more than N pixels (default {MAX_PIXELS})")  # fmt: skip
        if model:
            sp.add_argument("--model", default=DEFAULT_MODEL,
                            help=f"model name (grm, joint, ...), model id (grm/small/vr) or .safetensors file (default {DEFAULT_MODEL})")  # fmt: skip
            sp.add_argument("--quality", "-q", type=float, default=None,
                            help=f"quality, higher is better and larger: any number in a variable-rate model's range "
                            f"(0-{max(LAMBDAS)}), an integer for a fixed-rate one (default {DEFAULT_QUALITY})")  # fmt: skip
            sp.add_argument("--preset", choices=sorted(PRESETS),
                            help=f"model size with --model NAME (default: the first of {', '.join(DEFAULT_PRESETS)} shipped for the "
                            "objective; small is the fast one; paper: N=192, M=384)")  # fmt: skip
            sp.add_argument("--objective", dest="metric", default="mse", choices=["mse", "ms-ssim"],
                            help="with --model NAME: the model trained for this distortion (default mse)")  # fmt: skip
            sp.add_argument("--metric", dest="metric", choices=["mse", "ms-ssim"], help=argparse.SUPPRESS)  # the old name

    c = sub.add_parser("compress", help="compress images into .rfc files",
                       description="Compress images into .rfc files; with several inputs, code them all and list the failures.")  # fmt: skip
    c.add_argument("images", nargs="+", help="image files (PNG, JPEG, WebP, ...)")
    c.add_argument("-o", "--output", help="output file (one input) or existing folder (several inputs)")
    c.add_argument("--force", action="store_true", help="overwrite existing outputs")
    c.add_argument("--schedule", choices=["raster", "wavefront"], help="decode order (default: the model's)")
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where to encode (default cpu); files encoded on a GPU decode on a CPU")  # fmt: skip
    c.add_argument("--effort", default="default", choices=list(EFFORTS),
                   help="encoder effort: fast and slow refine each image's latents for its RD objective "
                   f"({EFFORTS['fast']} and {EFFORTS['slow']} steps: smaller files, slower encoding; the same decoder)")  # fmt: skip
    target = c.add_mutually_exclusive_group()
    target.add_argument("--target-bpp", type=float, metavar="B",
                        help="rate control: the highest quality whose file has at most B bits per pixel")  # fmt: skip
    target.add_argument("--target-psnr", type=float, metavar="P",
                        help="rate control: the lowest quality whose decoded image has at least P dB PSNR")  # fmt: skip
    target.add_argument("--target-ms-ssim", type=float, metavar="M",
                        help="rate control: the lowest quality whose decoded image has at least MS-SSIM M (0-1; "
                        "with --objective ms-ssim, the model trained for it)")  # fmt: skip
    c.add_argument("--strict-target", action="store_true",
                   help="refuse a target beyond the model's range on an image (default: the nearest end's file, with a note)")  # fmt: skip
    common(c, model=True, limit=True, threads=True)
    c.set_defaults(func=cmd_compress)

    d = sub.add_parser("decompress", help="decompress a .rfc file into an image file",
                       description="Decompress a .rfc file, with the model and weights named in its header, into the format "
                       "the output's extension names: PNG, TIFF, BMP, PPM/PGM, WebP (lossless) or JPEG (lossy: quality 95, 4:4:4).")  # fmt: skip
    d.add_argument("file", help="a .rfc file written by refcodec compress")
    d.add_argument("-o", "--output", help="output image, its format by its extension (default: FILE with .png)")
    d.add_argument("--force", action="store_true", help="overwrite an existing output")
    d.add_argument("--model", help="weights to decode with (default: the shipped model named in the file)")
    d.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the exact entropy model and synthesis run (default cpu; the range decoder runs on the "
                   "CPU); the same pixels on either")  # fmt: skip
    common(d, limit=True, threads=True)
    d.set_defaults(func=cmd_decompress)

    i = sub.add_parser("info", help="print the header of a .rfc file",
                       description="Print the header of a .rfc file (model, weights hash, schedule, sizes, streams) and the "
                       "versions of the refcodec and torch reading it.")  # fmt: skip
    i.add_argument("file", help="a .rfc file")
    common(i)
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("demo", help="compress and decompress a generated sample image; print bpp and PSNR",
                       description="Compress and decompress a generated 384x256 sample image; print bpp, PSNR and times.")  # fmt: skip
    common(m, model=True, threads=True)
    m.set_defaults(func=cmd_demo)

    sub.add_parser("train", help="train a model (see refcodec train --help)", add_help=False)
    sub.add_parser("eval", help="evaluate a model on a folder with real bitstreams (see refcodec eval --help)", add_help=False)
    sub.add_parser("compare", help="classical codecs on a folder, BD-rate tables and RD plots (see refcodec compare --help)",
                   add_help=False)  # fmt: skip
    sub.add_parser("bench", help="time and memory of every coding stage per image size (see refcodec bench --help)",
                   add_help=False)  # fmt: skip
    sub.add_parser("viz", help="figures of the entropy model: bits, reference, stages, latents (see refcodec viz --help)",
                   add_help=False)  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``refcodec ARGV``; returns the exit status (0; 1 for expected errors; 2 for bad arguments; 3 for bugs; 130 on Ctrl-C)."""
    if argv is None and sys.argv[1:2] == ["train"]:  # the command line itself, not a call from Python: keep freed memory
        allocator.reexec()
    elif argv is None:
        allocator.configure()
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["train"]:
            from .train.trainer import main as train_main

            train_main(argv[1:])
            return 0
        if argv[:1] == ["eval"]:
            from .eval.evaluate import main as eval_main

            return eval_main(argv[1:])
        if argv[:1] == ["compare"]:
            from .eval.compare import main as compare_main

            return compare_main(argv[1:])
        if argv[:1] == ["viz"]:
            from .eval.viz import main as viz_main

            return viz_main(argv[1:])
        if argv[:1] == ["bench"]:
            from .eval.bench import main as bench_main

            bench_main(argv[1:])
            return 0
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise CliError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except KeyboardInterrupt:
        print("refcodec: interrupted", file=sys.stderr)
        return 130
    except (CliError, RefcodecError, OSError) as e:
        print(f"refcodec: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # a bug: still one line, but say so
        print(f"refcodec: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
