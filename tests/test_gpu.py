"""A model on a GPU encodes files that a CPU decoder reads back exactly (skipped without CUDA)."""

import copy

import pytest
import torch
from conftest import natural_image

from refcodec import codec
from refcodec.models import registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["factorized", "hyperprior", "joint", "grm"])
def test_gpu_encoder_cpu_decoder_round_trip(name):
    torch.manual_seed(0)
    cpu = registry.build(name, "small").eval()
    cpu.update()
    cpu.id = f"{name}/small/test"
    gpu = copy.deepcopy(cpu).cuda()
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
