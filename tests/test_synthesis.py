"""Exact synthesis: integer arithmetic whatever the formulation, tiles or threads; close to the float transform."""

import pytest
import torch
from conftest import natural_image, torch_threads

from refcodec import codec
from refcodec.layers.gdn import IGSDN
from refcodec.models import registry
from refcodec.models.base import STRIDE, synthesis_transform
from refcodec.synthesis import (
    ACTIVATION_DIGITS,
    KERNEL_VARIABLE,
    KERNELS,
    ExactDeconv,
    ExactIGSDN,
    ExactnessError,
    ExactSynthesis,
    KernelError,
    digit_max,
    digits,
    exact_synthesis,
    kernel_for,
    probed,
)
from refcodec.tiling import halo_for, run_tiled


def random_synthesis(n=16, m=24, seed=0, cout_last=3):
    torch.manual_seed(seed)
    g_s = synthesis_transform(n, m, True)
    with torch.no_grad():
        for layer in g_s:
            if isinstance(layer, IGSDN):
                layer.tau.normal_(0, 0.05)
                layer.nu.normal_(0, 0.1)
    return g_s


@pytest.mark.parametrize("count", [1, 2, 3])
def test_digits_are_7_bit_and_add_up(count):
    top = digit_max(count)
    x = torch.cat([torch.randint(-top, top + 1, (5000,)), torch.tensor([top, -top, 0, 1, -1])]).double()
    parts = digits(x, count)
    assert all(p.dtype == torch.int8 and p.min() >= -64 and p.max() <= 63 for p in parts)
    assert torch.equal(sum(p.double() * 128**i for i, p in enumerate(parts)), x)


def test_every_formulation_of_a_transposed_convolution_gives_the_same_integers():
    g_s = random_synthesis()
    for layer, in_bits, in_digits in [(g_s[0], 0, 2), (g_s[2], 15, ACTIVATION_DIGITS), (g_s[6], 15, ACTIVATION_DIGITS)]:
        exact = ExactDeconv(layer, in_bits, in_digits)
        top = digit_max(in_digits)
        x = torch.randint(-top, top + 1, (7, 9, layer.in_channels)).double()
        x[0, 0], x[1, 1] = top, -top  # the extremes
        integer, float32, float64 = (exact(x, kernel) for kernel in KERNELS)
        assert torch.equal(integer, float64) and torch.equal(float32, float64) and integer.shape == (14, 18, layer.out_channels)
        assert torch.equal(integer, torch.round(integer))
        if exact.taps is not None:  # the last layer, few outputs: summed into place by default
            assert torch.equal(exact(x), float64)
        reference = torch.nn.functional.conv_transpose2d(
            x.permute(2, 0, 1)[None] * 2.0**-in_bits, layer.weight.double(), layer.bias.double(), 2, 2, 1)
        assert (integer * 2.0**-15 - reference[0].permute(1, 2, 0)).abs().max() < 1e-3 * reference.abs().max()


def test_every_kernel_gives_the_same_integers_at_the_bounds_of_wide_layers():
    """Issue 37: the largest inputs and weights of a layer as wide as the medium preset's (9 taps x 192
    channels in, 128 out), on the three kernels; float32 is exact there (1728 x 2**12 < 2**24)."""
    torch.manual_seed(7)
    layer = torch.nn.ConvTranspose2d(192, 128, 5, 2, 2, 1)
    with torch.no_grad():
        layer.weight.uniform_(-0.05, 0.05)
        layer.weight[:, :, 2, 2] = 0.05  # every input at its largest weight in one column
    for in_bits, in_digits in [(0, 2), (15, ACTIVATION_DIGITS)]:
        exact = ExactDeconv(layer, in_bits, in_digits)
        top = digit_max(in_digits)
        x = torch.randint(-top, top + 1, (5, 6, 192)).double()
        x[2] = top  # a row of the largest inputs
        x[3] = -top
        results = [exact(x, kernel) for kernel in KERNELS]
        assert all(torch.equal(r, results[-1]) for r in results)


def test_a_layer_too_long_for_exact_digit_sums_is_refused():
    layer = torch.nn.ConvTranspose2d(512, 8, 5, 2, 2, 1)  # 9 taps x 512 channels: 4608 x 2**12 > 2**24 (and int32's bound)
    with pytest.raises(ExactnessError, match="digit products"):
        ExactDeconv(layer, 15, ACTIVATION_DIGITS)


def test_the_kernel_is_probed_once_per_shape_or_forced(monkeypatch):
    exact = ExactDeconv(random_synthesis(seed=8)[2], 15, ACTIVATION_DIGITS)
    monkeypatch.delenv(KERNEL_VARIABLE, raising=False)
    chosen = kernel_for(exact, torch.device("cpu"))
    mine = [p for p in probed() if (p["inputs"], p["outputs"], p["input_digits"]) == exact.shape]
    assert chosen in KERNELS and [p["kernel"] for p in mine] == [chosen] and set(mine[0]["seconds"]) == set(KERNELS)
    assert kernel_for(exact, torch.device("cpu")) == chosen and len(probed()) == len(set(map(str, probed())))
    state = torch.get_rng_state()
    exact.probe()
    assert torch.equal(torch.get_rng_state(), state)  # a probe in a training run's validation moves none of its draws
    for kernel in KERNELS:
        monkeypatch.setenv(KERNEL_VARIABLE, kernel)
        assert kernel_for(exact, torch.device("cpu")) == kernel
    assert kernel_for(exact, torch.device("meta")) == "float64"  # off the CPU: float64 products
    monkeypatch.setenv(KERNEL_VARIABLE, "int4")
    with pytest.raises(KernelError, match="names no synthesis kernel; choose one of int8, float32, float64"):
        kernel_for(exact, torch.device("cpu"))


def test_every_kernel_decodes_a_file_to_the_same_pixels(monkeypatch):
    model = registry.load_model("grm/small/vr", 5)
    data = codec.compress(natural_image(130, 70, seed=3), model)
    pixels = set()
    for kernel in ["", *KERNELS]:  # "": the probe's choice
        monkeypatch.setenv(KERNEL_VARIABLE, kernel)
        pixels.add(codec.decompress(data, model).tobytes())
    assert len(pixels) == 1


def test_exact_synthesis_is_close_to_the_float_transform_of_a_shipped_model():
    model = registry.load_model("grm/small/vr")
    x = codec.padded_tensor(natural_image(128, 128, seed=1))
    y_hat = torch.round(model.analysis(x))
    exact = model.synthesize(y_hat)
    assert exact.dtype == torch.float64 and torch.equal(exact, torch.round(exact * 2**15) / 2**15)
    gain = model.synthesis_gain()  # the inverse gain of the coding quality
    difference = (exact - model.g_s(y_hat * gain.to(y_hat)).double()).abs().max()
    assert difference < 2e-3  # a fraction of an 8-bit level (1/255)
    assert codec.psnr(codec.tensor_to_image(exact), codec.tensor_to_image(model.synthesize(y_hat, exact=False))) > 50


def test_tiles_and_threads_do_not_change_a_bit():
    g_s = random_synthesis(seed=2)
    net = exact_synthesis(g_s)
    y = torch.randint(-30, 31, (1, 24, 11, 13)).float()
    whole = net(y)
    with torch_threads(1):
        tiled = run_tiled(net, y, 4, halo_for(g_s, 1), STRIDE)
    with torch_threads(2):
        tiled2 = run_tiled(net, y, 3, halo_for(g_s, 1), STRIDE)
    assert torch.equal(whole, tiled) and torch.equal(whole, tiled2)


def test_the_prepared_copy_is_kept_until_the_weights_change():
    g_s = random_synthesis(seed=3)
    first = exact_synthesis(g_s)
    assert exact_synthesis(g_s) is first
    with torch.no_grad():
        g_s[0].weight.mul_(1.01)
    assert exact_synthesis(g_s) is not first


def test_a_variable_rate_gain_is_folded_into_the_first_layer():
    g_s = random_synthesis(seed=4)
    gain = (torch.rand(1, 24, 1, 1, dtype=torch.float64) + 0.5).mul(2**16).round().div(2**16)
    y = torch.randint(-20, 21, (1, 24, 5, 6)).float()
    first = ExactDeconv(g_s[0], 0, 2, gain)(y[0].double().permute(1, 2, 0)) * 2.0**-15
    reference = g_s[0](y * gain.float())[0].permute(1, 2, 0).double()
    assert (first - reference).abs().max() < 1e-3 * reference.abs().max()
    assert not torch.equal(ExactSynthesis(g_s, gain)(y), ExactSynthesis(g_s)(y))


def test_layers_that_could_round_are_refused():
    g_s = random_synthesis(seed=5)
    with torch.no_grad():
        g_s[1].gamma.fill_(30.0)  # gamma = 900: the sum under the square root could pass 2**37 units
    with pytest.raises(ExactnessError, match="IGSDN normalization"):
        ExactIGSDN(g_s[1])
    with pytest.raises(ExactnessError, match="no exact synthesis"):
        ExactSynthesis(torch.nn.Sequential(torch.nn.ReLU()))
