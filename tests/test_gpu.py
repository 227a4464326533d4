"""A model on a GPU encodes files that a CPU decoder reads back exactly (skipped without CUDA)."""

import copy

import pytest
import torch
from conftest import file_objective, natural_image

from refcodec import codec
from refcodec.bitstream import read_header
from refcodec.models import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cpu_and_gpu(name: str, seed: int):
    """A small untrained model with its coding tables, on the CPU and as a copy on the GPU."""
    torch.manual_seed(seed)
    cpu = registry.build(name, "small").eval()
    cpu.update()
    cpu.id = f"{name}/small/test"
    return cpu, copy.deepcopy(cpu).cuda()


@pytest.mark.parametrize("name", ["factorized", "hyperprior", "joint", "grm"])
def test_gpu_encoder_cpu_decoder_round_trip(name):
    cpu, gpu = _cpu_and_gpu(name, seed=0)
    image = natural_image(200, 136, seed=3)
    x = codec.padded_tensor(image)
    streams, y_gpu = gpu.encode(x.cuda())
    assert torch.equal(cpu.decode(streams, *x.shape[2:]), y_gpu.cpu())
    data = codec.compress(image, gpu)  # the file API too: same weights hash on both devices
    assert codec.decompress(data, cpu).size == image.size


def test_cli_compress_on_the_gpu_then_decompress_on_the_cpu(tmp_path):
    from refcodec import cli

    natural_image(120, 80, seed=5).save(tmp_path / "a.png")
    assert cli.main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.rfc"), "--device", "cuda"]) == 0
    assert cli.main(["decompress", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "b.png")]) == 0


def _pixels(image) -> bytes:
    return image.convert("RGB").tobytes()


@pytest.mark.parametrize("name", ["factorized", "hyperprior", "joint", "grm"])
def test_gpu_decoder_gives_the_cpu_decoders_latents_and_pixels_both_ways(name):
    cpu, gpu = _cpu_and_gpu(name, seed=1)
    x = codec.padded_tensor(natural_image(200, 136, seed=4))
    for encoder in (cpu, gpu):  # CPU encode, GPU decode; GPU encode, CPU decode
        streams, y_hat = encoder.encode(x.to(next(encoder.parameters()).device))
        y_cpu, y_gpu = cpu.decode(streams, *x.shape[2:]), gpu.decode(streams, *x.shape[2:])
        assert y_gpu.is_cuda and torch.equal(y_gpu.cpu(), y_cpu) and torch.equal(y_cpu, y_hat.cpu())
        assert torch.equal(gpu.synthesize(y_gpu).cpu(), cpu.synthesize(y_cpu))


@pytest.mark.parametrize("quality", [0.0, 2.5, 8.0])
def test_gpu_decodes_shipped_models_files_to_the_cpus_pixels(quality):
    image = natural_image(250, 170, seed=6)
    cpu_file = codec.compress(image, registry.load_model("grm/small/vr", quality))
    gpu_file = codec.compress(image, registry.load_model("grm/small/vr", quality).cuda())
    for data in (cpu_file, gpu_file):
        assert _pixels(codec.decompress(data, device="cuda")) == _pixels(codec.decompress(data))


def test_gpu_decodes_the_conformance_files_to_their_manifests_pixels():
    import hashlib
    import json
    from pathlib import Path

    folder = Path(__file__).parent / "conformance"
    for name, expected in json.loads((folder / "MANIFEST.json").read_text()).items():
        data = (folder / name).read_bytes()
        header = read_header(data)
        if registry.retired_reason(header.model, header.weights_hash):
            continue  # refused on every device (tests/test_conformance.py)
        image = codec.decompress(data, device="cuda")
        assert hashlib.sha256(_pixels(image)).hexdigest() == expected, name


def test_cli_decompress_on_the_gpu(tmp_path):
    from refcodec import cli

    natural_image(120, 80, seed=7).save(tmp_path / "a.png")
    assert cli.main(["compress", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.rfc")]) == 0
    assert cli.main(["decompress", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "gpu.png"), "--device", "cuda"]) == 0
    assert cli.main(["decompress", str(tmp_path / "a.rfc"), "-o", str(tmp_path / "cpu.png")]) == 0
    assert (tmp_path / "gpu.png").read_bytes() == (tmp_path / "cpu.png").read_bytes()


def test_effort_on_the_gpu_writes_normal_files_never_worse_than_its_default():
    """The refinement runs on the model's device; its file is decoded by the CPU like any other."""
    cpu = registry.load_model("grm/small/vr", 3)
    gpu = copy.deepcopy(cpu).cuda()
    image = natural_image(160, 96, seed=2).convert("L").convert("RGB")
    default, fast = codec.compress(image, gpu), codec.compress(image, gpu, effort="fast")
    assert read_header(fast).quality == read_header(default).quality
    for data in (default, fast):
        assert _pixels(codec.decompress(data, cpu)) == _pixels(codec.decompress(data, gpu))
    assert file_objective(image, fast, cpu) <= file_objective(image, default, cpu) + 1e-9
