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
    x = codec.image_to_tensor(image)
    x = torch.nn.functional.pad(x, (0, -200 % 64, 0, -136 % 64), mode="replicate")
    streams, y_gpu = gpu.encode(x.cuda())
    assert torch.equal(cpu.decode(streams, *x.shape[2:]), y_gpu.cpu())
    data = codec.compress(image, gpu)  # the file API too: same weights hash on both devices
    assert codec.decompress(data, cpu).size == image.size
