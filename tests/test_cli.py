"""The command line: JSON outputs, overwrite protection, one-line errors, batch mode, atomic outputs."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import natural_image, save_tiny
from PIL import Image

import refcodec
from refcodec import cli, codec
from refcodec.bitstream import read_header
from refcodec.models import registry

WIDTH, HEIGHT = 40, 30


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model):
    """A small PNG and its .rfc (written through the API), in a folder the tests only read."""
    folder = tmp_path_factory.mktemp("inputs")
    image = natural_image(WIDTH, HEIGHT, seed=11)
    image.save(folder / "a.png")
    data = codec.compress(image, tiny_model)
    (folder / "a.rfc").write_bytes(data)
    return {"png": folder / "a.png", "rfc": folder / "a.rfc", "data": data, "image": image}


def run_main(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_process(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "refcodec.cli", *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(rc, err):
    assert rc == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("refcodec: error:"), err


def no_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")] == []


# -- end to end, in a separate process ------------------------------------------------------


def test_compress_info_decompress_json_round_trip(files, tiny_weights, tiny_model, tmp_path):
    png, rfc, out = tmp_path / "in.png", tmp_path / "in.rfc", tmp_path / "out.png"
    files["image"].save(png)

    p = run_process("compress", png, "-o", rfc, "--model", tiny_weights, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    size = rfc.stat().st_size
    assert record["bytes"] == size
    assert record["bpp"] == pytest.approx(8 * size / (WIDTH * HEIGHT))
    assert record["output"] == str(rfc) and record["model"] == "grm/test/q3"
    assert rfc.read_bytes() == files["data"], "another process must write the same file as the API"

    p = run_process("info", rfc, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert (info["width"], info["height"], info["mode"]) == (WIDTH, HEIGHT, "RGB")
    assert info["file_bytes"] == size
    assert info["bpp"] == pytest.approx(record["bpp"])
    assert info["model"] == "grm/test/q3"
    assert info["weights_hash"] == tiny_model.weights_hash().hex()
    assert sum(info["stream_lengths"]) < size
    assert info["versions"]["refcodec"] == refcodec.__version__ and info["versions"]["torch"] == torch.__version__

    p = run_process("decompress", rfc, "-o", out, "--model", tiny_weights, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    record = json.loads(p.stdout)
    assert (record["width"], record["height"]) == (WIDTH, HEIGHT)
    assert record["output"] == str(out)
    with Image.open(out) as decoded:
        assert decoded.size == (WIDTH, HEIGHT) and decoded.mode == "RGB"
        expected = codec.decompress(files["data"], tiny_model)
        assert np.array_equal(np.asarray(decoded), np.asarray(expected))
    assert no_leftovers(tmp_path)


def test_errors_in_a_process_have_no_traceback(files, tiny_weights, tmp_path):
    bad = tmp_path / "bad.rfc"
    bad.write_bytes(files["data"][:-3])
    p = run_process("decompress", bad, "--model", tiny_weights, cwd=tmp_path)
    assert_one_line_error(p.returncode, p.stderr)
    assert p.stdout == ""
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad.rfc"]


def test_help_in_a_process(tmp_path):
    p = run_process("--help", cwd=tmp_path)
    assert p.returncode == 0 and "compress" in p.stdout and "decompress" in p.stdout


@pytest.mark.parametrize("command", ["compress", "decompress", "info", "demo", "train"])
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["info", "FILE"], ["info", "missing.rfc"], ["compress"],
                                  ["decompress", "FILE", "--bogus"], ["compress", "--help"], ["compress", "missing.png"],
                                  ["compress", "PNG", "-o", "nowhere/x.rfc"], ["decompress", "missing.rfc"],
                                  ["decompress", "FILE", "-o", "x.xyz"], ["decompress", "PNG"]])  # fmt: skip
def test_the_parser_help_version_info_and_usage_errors_do_not_import_torch(argv, files):
    """Issue 38: an instant start. Importing torch takes seconds; none of these needs it, nor any input or output error."""
    argv = [{"FILE": str(files["rfc"]), "PNG": str(files["png"])}.get(a, a) for a in argv]
    code = ("import sys\nfrom refcodec import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('torch imported' if 'torch' in sys.modules else 'no torch')")  # fmt: skip
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert p.stderr.endswith("no torch"), p.stderr


def test_version_names_refcodec_and_torch(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"refcodec {refcodec.__version__}, torch {torch.__version__}, "), out


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["compress"])
    assert e.value.code == 2


# -- human-readable output ---------------------------------------------------------------------


def test_info_text(capsys, files):
    rc, out, err = run_main(capsys, "info", files["rfc"])
    assert rc == 0 and err == ""
    assert f"width: {WIDTH}" in out and f"height: {HEIGHT}" in out and "model: grm/test/q3" in out
    assert f"versions: refcodec {refcodec.__version__}, torch {torch.__version__}, " in out


# -- overwriting -------------------------------------------------------------------------------


def test_compress_refuses_to_overwrite_without_force(capsys, files, tiny_weights, tmp_path):
    out = tmp_path / "a.rfc"
    out.write_bytes(b"precious")
    rc, _, err = run_main(capsys, "compress", files["png"], "-o", out, "--model", tiny_weights)
    assert_one_line_error(rc, err)
    assert "exists" in err
    assert out.read_bytes() == b"precious"

    rc, _, err = run_main(capsys, "compress", files["png"], "-o", out, "--model", tiny_weights, "--force")
    assert rc == 0, err
    assert out.read_bytes() == files["data"]
    assert no_leftovers(tmp_path)


def test_decompress_refuses_to_overwrite_without_force(capsys, files, tiny_weights, tmp_path):
    out = tmp_path / "a.png"
    out.write_bytes(b"precious")
    rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", out, "--model", tiny_weights)
    assert_one_line_error(rc, err)
    assert out.read_bytes() == b"precious"

    rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", out, "--model", tiny_weights, "--force")
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.size == (WIDTH, HEIGHT)
    assert no_leftovers(tmp_path)


def test_compress_default_output_name(capsys, files, tiny_weights, tmp_path):
    src = tmp_path / "pic.png"
    files["image"].save(src)
    rc, out, err = run_main(capsys, "compress", src, "--model", tiny_weights)
    assert rc == 0, err
    assert (tmp_path / "pic.rfc").read_bytes() == files["data"]
    assert "pic.rfc" in out


@pytest.mark.parametrize("width,height", [(1, 1), (1, 37), (45, 1)])
def test_one_pixel_wide_or_high_images_round_trip(capsys, tiny_weights, tmp_path, width, height):
    natural_image(width, height, seed=width * height).save(tmp_path / "thin.png")
    rc, _, err = run_main(capsys, "compress", tmp_path / "thin.png", "--model", tiny_weights)
    assert rc == 0, err
    rc, _, err = run_main(capsys, "decompress", tmp_path / "thin.rfc", "-o", tmp_path / "back.png", "--model", tiny_weights)
    assert rc == 0, err
    assert Image.open(tmp_path / "back.png").size == (width, height)


# -- one-line errors -------------------------------------------------------------------------


def _setup(tmp, files, weights):
    """Inputs for the error cases."""
    (tmp / "text.png").write_text("this is not an image\n")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "empty.rfc").write_bytes(b"")
    (tmp / "truncated.rfc").write_bytes(files["data"][: len(files["data"]) // 2])
    corrupt = bytearray(files["data"])
    corrupt[len(corrupt) // 2] ^= 0xFF
    (tmp / "corrupt.rfc").write_bytes(bytes(corrupt))
    (tmp / "folder").mkdir()
    (tmp / "plain_file").write_text("x")
    return {"png": files["png"], "rfc": files["rfc"], "W": weights, "foreign": files["png"]}


ERROR_CASES = {
    "compress missing input": ["compress", "{tmp}/missing.png", "-o", "{tmp}/o.rfc", "--model", "{W}"],
    "decompress missing input": ["decompress", "{tmp}/missing.rfc", "-o", "{tmp}/o.png", "--model", "{W}"],
    "info missing input": ["info", "{tmp}/missing.rfc"],
    "compress directory": ["compress", "{tmp}/folder", "-o", "{tmp}/o.rfc", "--model", "{W}"],
    "decompress directory": ["decompress", "{tmp}/folder", "-o", "{tmp}/o.png", "--model", "{W}"],
    "info directory": ["info", "{tmp}/folder"],
    "compress non-image": ["compress", "{tmp}/text.png", "-o", "{tmp}/o.rfc", "--model", "{W}"],
    "compress empty file": ["compress", "{tmp}/empty.png", "-o", "{tmp}/o.rfc", "--model", "{W}"],
    "decompress empty file": ["decompress", "{tmp}/empty.rfc", "-o", "{tmp}/o.png", "--model", "{W}"],
    "info empty file": ["info", "{tmp}/empty.rfc"],
    "decompress truncated": ["decompress", "{tmp}/truncated.rfc", "-o", "{tmp}/o.png", "--model", "{W}"],
    "info truncated": ["info", "{tmp}/truncated.rfc"],
    "decompress corrupted": ["decompress", "{tmp}/corrupt.rfc", "-o", "{tmp}/o.png", "--model", "{W}"],
    "info corrupted": ["info", "{tmp}/corrupt.rfc"],
    "decompress foreign": ["decompress", "{foreign}", "-o", "{tmp}/o.png", "--model", "{W}"],
    "decompress foreign no model": ["decompress", "{foreign}", "-o", "{tmp}/o.png"],
    "info foreign": ["info", "{foreign}"],
    "compress into missing folder": ["compress", "{png}", "-o", "{tmp}/nowhere/o.rfc", "--model", "{W}"],
    "decompress into missing folder": ["decompress", "{rfc}", "-o", "{tmp}/nowhere/o.png", "--model", "{W}"],
    "compress under a file": ["compress", "{png}", "-o", "{tmp}/plain_file/o.rfc", "--model", "{W}"],
    "compress unknown model": ["compress", "{png}", "-o", "{tmp}/o.rfc", "--model", "no-such-model"],
    "compress unknown model id": ["compress", "{png}", "-o", "{tmp}/o.rfc", "--model", "grm/nope/q3"],
    "compress missing weights file": ["compress", "{png}", "-o", "{tmp}/o.rfc", "--model", "{tmp}/none.safetensors"],
    "decompress unknown model": ["decompress", "{rfc}", "-o", "{tmp}/o.png", "--model", "no-such-model"],
    "decompress without shipped model": ["decompress", "{rfc}", "-o", "{tmp}/o.png"],
    "compress over the pixel limit": ["compress", "{png}", "-o", "{tmp}/o.rfc", "--model", "{W}", "--max-pixels", "100"],
    "decompress over the pixel limit": ["decompress", "{rfc}", "-o", "{tmp}/o.png", "--model", "{W}", "--max-pixels", "100"],
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_one_line_errors(capsys, files, tiny_weights, tmp_path, case):
    names = _setup(tmp_path, files, tiny_weights)
    argv = [a.format(tmp=tmp_path, **names) for a in ERROR_CASES[case]]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, out, err = run_main(capsys, *argv)
    assert_one_line_error(rc, err)
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failing command must not write anything"
    assert not (tmp_path / "nowhere").exists()


def test_read_only_output_folder(capsys, files, tiny_weights, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user (root) who can write into a read-only folder")
        for argv in (["compress", files["png"], "-o", locked / "o.rfc", "--model", tiny_weights],
                     ["decompress", files["rfc"], "-o", locked / "o.png", "--model", tiny_weights]):  # fmt: skip
            rc, _, err = run_main(capsys, *argv)
            assert_one_line_error(rc, err)
            assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_schedule_the_model_cannot_use_is_a_clean_error(capsys, files, tmp_path):
    weights = save_tiny(tmp_path / "factorized.safetensors", name="factorized")
    rc, _, err = run_main(capsys, "compress", files["png"], "-o", tmp_path / "o.rfc", "--model", weights, "--schedule", "wavefront")
    assert_one_line_error(rc, err)
    assert "schedule" in err
    assert not (tmp_path / "o.rfc").exists()
    # in a batch, every input fails: none is coded with another schedule than asked for
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, _, err = run_main(capsys, "compress", files["png"], files["png"], "-o", out_dir, "--model", weights, "--schedule", "wavefront")
    assert rc == 1 and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


# -- batch mode --------------------------------------------------------------------------------


def test_batch_reports_bad_inputs_and_codes_the_rest(capsys, files, tiny_weights, tmp_path):
    a, b, bad = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "bad.txt"
    files["image"].save(a)
    natural_image(24, 20, seed=12).save(b)
    bad.write_text("not an image")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = run_main(capsys, "compress", a, bad, b, "-o", out_dir, "--model", tiny_weights, "--json")
    assert rc == 1
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.rfc", "b.rfc"]
    assert (out_dir / "a.rfc").read_bytes() == files["data"]
    assert read_header((out_dir / "b.rfc").read_bytes()).width == 24
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refcodec: error:") and "bad.txt" in lines[0]
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["output"] for r in records] == [str(out_dir / "a.rfc"), str(out_dir / "b.rfc")]
    assert [r["bytes"] for r in records] == [(out_dir / n).stat().st_size for n in ("a.rfc", "b.rfc")]


def test_batch_needs_an_existing_folder(capsys, files, tiny_weights, tmp_path):
    rc, _, err = run_main(capsys, "compress", files["png"], files["png"], "-o", tmp_path / "nope", "--model", tiny_weights)
    assert rc == 1 and "refcodec: error:" in err
    assert not (tmp_path / "nope").exists()


def test_a_batch_whose_outputs_collide_is_refused_before_anything_is_written(capsys, files, tiny_weights, tmp_path):
    """Issue 38: photo.png and photo.webp both map to out/photo.rfc; the second used to replace the first silently."""
    files["image"].save(tmp_path / "photo.png")
    files["image"].save(tmp_path / "photo.webp", lossless=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = run_main(capsys, "compress", tmp_path / "photo.png", tmp_path / "photo.webp", "-o", out_dir, "--model", tiny_weights, "--force")
    assert_one_line_error(rc, err)
    assert "photo.png and" in err and "photo.webp would both be written to" in err and out == ""
    assert list(out_dir.iterdir()) == []


def test_batch_errors_name_the_input_once(capsys, files, tiny_weights, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rc, _, err = run_main(capsys, "compress", files["png"], empty, "-o", tmp_path, "--model", tiny_weights)
    assert rc == 1 and err.count(str(empty)) == 1


def test_every_command_that_computes_takes_threads(capsys, files, tiny_weights, tmp_path):
    """Issue 38: only eval, compare and bench took --threads."""
    before = torch.get_num_threads()
    try:
        assert run_main(capsys, "compress", files["png"], "-o", tmp_path / "t.rfc", "--model", tiny_weights, "--threads", "1")[0] == 0
        assert torch.get_num_threads() == 1 and (tmp_path / "t.rfc").read_bytes() == files["data"]
        assert run_main(capsys, "decompress", tmp_path / "t.rfc", "--model", tiny_weights, "--threads", "2")[0] == 0
        assert torch.get_num_threads() == 2
        rc, _, err = run_main(capsys, "decompress", tmp_path / "t.rfc", "--model", tiny_weights, "--threads", "0", "--force")
        assert_one_line_error(rc, err)
    finally:
        torch.set_num_threads(before)


def test_the_training_objective_is_objective_and_metric_is_the_tables_axis(capsys, files, tmp_path):
    """Issue 38: --metric meant the objective in compress and the table axis in compare; compress now says
    --objective (the old spelling still works, unlisted)."""
    with pytest.raises(SystemExit):
        cli.main(["compress", "--help"])
    shown = capsys.readouterr().out
    assert "--objective" in shown and "--metric" not in shown
    for spelling in ("--objective", "--metric"):
        out = tmp_path / f"{spelling[2:]}.rfc"
        assert run_main(capsys, "compress", files["png"], "-o", out, spelling, "ms-ssim", "-q", "2")[0] == 0
        assert read_header(out.read_bytes()).model == "grm/small/vr-ms-ssim"


def test_an_opaque_rgba_image_is_coded_with_a_note(capsys, files, tiny_weights, tmp_path):
    files["image"].convert("RGBA").save(tmp_path / "shot.png")
    rc, _, err = run_main(capsys, "compress", tmp_path / "shot.png", "-o", tmp_path / "shot.rfc", "--model", tiny_weights)
    assert rc == 0 and err.count("refcodec: note:") == 1 and "opaque everywhere: dropped" in err
    assert (tmp_path / "shot.rfc").read_bytes() == files["data"]  # the same file as the RGB image's


@pytest.mark.parametrize("extension", sorted(cli.FORMATS))
def test_decompress_writes_the_format_its_extension_names(capsys, files, tiny_weights, tmp_path, extension):
    """Issue 38: x.jpg used to hold PNG bytes. Every format but JPEG keeps the decoded pixels exactly."""
    out = tmp_path / f"x{extension}"
    rc, printed, _ = run_main(capsys, "decompress", files["rfc"], "-o", out, "--model", tiny_weights, "--json")
    kind = cli.FORMATS[extension][0]
    assert rc == 0 and json.loads(printed)["format"] == kind
    with Image.open(out) as written:
        assert written.format == kind
        pixels = np.asarray(written.convert("RGB"), dtype=np.int16)
    decoded = np.asarray(codec.decompress(files["data"], registry.load_model(str(tiny_weights))).convert("RGB"), dtype=np.int16)
    if kind == "JPEG":  # lossy: close to the decoded pixels
        assert 10 * np.log10(255**2 / np.square(pixels - decoded).mean()) > 30
    else:
        assert np.array_equal(pixels, decoded)


def test_decompress_refuses_an_unknown_extension_and_a_missing_folder_before_decoding(capsys, monkeypatch, files, tiny_weights, tmp_path):
    """Issue 38: the missing folder was found only after the whole decode."""
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: pytest.fail("decoded before the output was checked"))
    for out, words in ((tmp_path / "x.xyz", "cannot tell the image format from '.xyz'"),
                       (tmp_path / "missing" / "x.png", "the folder"), (tmp_path, "cannot tell the image format")):  # fmt: skip
        rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", out, "--model", tiny_weights)
        assert_one_line_error(rc, err)
        assert words in err
    rc, _, err = run_main(capsys, "compress", files["png"], "-o", tmp_path / "missing" / "x.rfc", "--model", tiny_weights)
    assert_one_line_error(rc, err)
    assert "does not exist" in err and not (tmp_path / "missing").exists()


# -- no partial outputs ------------------------------------------------------------------------


def test_failing_decompress_leaves_nothing(capsys, files, tiny_weights, tmp_path):
    corrupt = bytearray(files["data"])
    corrupt[-10] ^= 1
    src = tmp_path / "c.rfc"
    src.write_bytes(bytes(corrupt))
    rc, _, err = run_main(capsys, "decompress", src, "-o", tmp_path / "c.png", "--model", tiny_weights)
    assert_one_line_error(rc, err)
    assert not (tmp_path / "c.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.rfc"]


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_failure_while_writing_removes_the_temporary_file(capsys, monkeypatch, files, tiny_weights, tmp_path, command):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.os, "fsync", disk_full)
    src, out = (files["png"], tmp_path / "o.rfc") if command == "compress" else (files["rfc"], tmp_path / "o.png")
    rc, _, err = run_main(capsys, command, src, "-o", out, "--model", tiny_weights)
    assert_one_line_error(rc, err)
    assert "No space left" in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder_even_for_root(capsys, files, tiny_weights):
    """/proc takes no new files, whoever asks."""
    for argv in (["compress", files["png"], "-o", "/proc/o.rfc", "--model", tiny_weights],
                 ["decompress", files["rfc"], "-o", "/proc/o.png", "--model", tiny_weights]):  # fmt: skip
        rc, _, err = run_main(capsys, *argv)
        assert_one_line_error(rc, err)


def test_outputs_get_the_usual_permissions(capsys, files, tiny_weights, tmp_path):
    old = os.umask(0o022)
    try:
        rc, _, err = run_main(capsys, "compress", files["png"], "-o", tmp_path / "o.rfc", "--model", tiny_weights)
    finally:
        os.umask(old)
    assert rc == 0, err
    assert (tmp_path / "o.rfc").stat().st_mode & 0o777 == 0o644


# -- killed at any moment ----------------------------------------------------------------------


def _kill_at(argv, seconds, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "refcodec.cli", *map(str, argv)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL: no handler runs
        proc.wait()
    return proc.returncode


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_kill_9_at_any_moment_leaves_no_partial_output(command, files, tiny_weights, tiny_model, tmp_path):
    """Kill the process at moments spread over a whole run: the output is either absent or complete,
    no temporary file is left, and an existing file is untouched without --force."""
    big = tmp_path / "big.png"
    natural_image(512, 384, seed=5).save(big)
    src, out = (big, tmp_path / "out.rfc") if command == "compress" else (tmp_path / "big.rfc", tmp_path / "out.png")
    expected = codec.compress(big, tiny_model)
    (tmp_path / "big.rfc").write_bytes(expected)
    argv = [command, src, "-o", out, "--model", tiny_weights]
    start = time.perf_counter()
    assert _kill_at(argv, 600, tmp_path) == 0
    whole = time.perf_counter() - start
    complete = out.read_bytes()
    inputs = sorted(p.name for p in tmp_path.iterdir() if p != out)
    for fraction in (0.4, 0.7, 0.9, 1.0):
        out.unlink(missing_ok=True)
        _kill_at(argv, whole * fraction, tmp_path)
        assert not out.exists() or out.read_bytes() == complete, f"partial output when killed at {fraction:.0%}"
        assert sorted(p.name for p in tmp_path.iterdir() if p != out) == inputs, "a temporary file was left"
    out.write_bytes(b"precious")  # an existing file: refused without --force, whenever the process dies
    for fraction in (0.6,):
        _kill_at(argv, whole * fraction, tmp_path)
        assert out.read_bytes() == b"precious"
    for fraction in (0.7, 1.1):  # with --force: the old file or the new one, never a mix
        out.write_bytes(b"precious")
        _kill_at(argv + ["--force"], whole * fraction, tmp_path)
        assert out.read_bytes() in (b"precious", complete)
        assert sorted(p.name for p in tmp_path.iterdir() if p != out) == inputs


def test_compress_device_cpu_is_the_default_and_cuda_without_a_gpu_is_a_clean_error(capsys, files, tiny_weights, tmp_path):
    rc, _, err = run_main(capsys, "compress", files["png"], "-o", tmp_path / "a.rfc", "--model", tiny_weights, "--device", "cpu")
    assert rc == 0, err
    assert (tmp_path / "a.rfc").read_bytes() == files["data"]
    if not torch.cuda.is_available():
        rc, _, err = run_main(capsys, "compress", files["png"], "-o", tmp_path / "b.rfc", "--model", tiny_weights, "--device", "cuda")
        assert_one_line_error(rc, err)
        assert "no CUDA device" in err and not (tmp_path / "b.rfc").exists()


def test_decompress_device_cpu_is_the_default_and_cuda_without_a_gpu_is_a_clean_error(capsys, files, tiny_weights, tmp_path):
    rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", tmp_path / "a.png", "--model", tiny_weights, "--device", "cpu")
    assert rc == 0, err
    rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", tmp_path / "b.png", "--model", tiny_weights)
    assert rc == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    if not torch.cuda.is_available():
        rc, _, err = run_main(capsys, "decompress", files["rfc"], "-o", tmp_path / "c.png", "--device", "cuda")
        assert_one_line_error(rc, err)
        assert "no CUDA device" in err and not (tmp_path / "c.png").exists()
