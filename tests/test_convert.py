"""Two-stage GSDN initialization (section 5.3) and the import of CompressAI mbt2018 weights.

CompressAI is not installed: the tests build a state dict with its key names,
shapes and parametrizations (compressai/models/google.py, layers/gdn.py,
ops/parametrizers.py, entropy_models/entropy_models.py) and compute its layers
with plain torch.nn.functional ops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refcodec.errors import RefcodecError
from refcodec.layers.gdn import GSDN, IGSDN
from refcodec.models import registry
from refcodec.models.convert import (
    SCALE_TANGENT,
    from_compressai_mbt2018,
    gsdn_from_gdn,
    initialize,
    load_compressai_mbt2018,
)
from refcodec.models.grm import _unrows

N, M = 8, 12
PEDESTAL = (2.0**-18) ** 2


def image(seed: int = 1, size: int = 64) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- two-stage initialization ---------------------------------------------------------------------


def trained_gdn_model(name: str = "grm", seed: int = 0):
    """A GDN model with non-trivial weights, carrying a config as loaded models do."""
    torch.manual_seed(seed)
    model = registry.MODELS[name](N=N, M=M, gsdn=False)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (GSDN, IGSDN)):
                layer.beta.copy_(layer.beta_reparam.init(torch.empty(N).uniform_(0.5, 2.0)))
                layer.gamma.copy_(layer.gamma_reparam.init(0.1 * torch.eye(N) + torch.rand(N, N) * 0.02))
        model.g_a[-1].weight.mul_(20)
    model.config = {"name": name, "N": N, "M": M, "flags": {"gsdn": False}, "quality": 3, "id": f"{name}/test/q3"}
    return model.eval()


@pytest.mark.parametrize("name", ["grm", "joint"])
def test_gsdn_from_gdn_computes_the_same(name, tmp_path):
    source = trained_gdn_model(name)
    model = gsdn_from_gdn(source)
    assert model.config["flags"]["gsdn"] is True and source.config["flags"]["gsdn"] is False
    assert all(layer.subtractive for layer in model.modules() if isinstance(layer, (GSDN, IGSDN)))
    fresh = registry.MODELS[name](N=N, M=M, gsdn=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    x = image()
    with torch.no_grad():
        a, b = source(x), model(x)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["likelihoods"]["z"], b["likelihoods"]["z"])
    assert all(torch.equal(p, q) for p, q in zip(a["likelihoods"]["y"], b["likelihoods"]["y"]))
    # The config rebuilds the converted model.
    path = tmp_path / "gsdn.safetensors"
    registry.save(model, path, model.config)
    loaded = registry.load_model(str(path))
    assert loaded.config["flags"]["gsdn"] is True
    assert torch.allclose(loaded(x)["x_hat"], b["x_hat"], atol=1e-6)


def test_gsdn_from_gdn_refuses_gsdn():
    with pytest.raises(RefcodecError, match="already uses GSDN"):
        gsdn_from_gdn(registry.MODELS["grm"](N=N, M=M))


def test_initialize_from_refcodec_weights(tmp_path):
    source = trained_gdn_model("grm")
    path = tmp_path / "gdn.safetensors"
    registry.save(source, path, source.config)
    x = image()
    with torch.no_grad():
        expected = registry.load_model(str(path))(x)["x_hat"]

    same = registry.MODELS["grm"](N=N, M=M, gsdn=False)  # same architecture: plain copy
    assert "weights of" in initialize(same, str(path))
    gsdn = registry.MODELS["grm"](N=N, M=M)  # GSDN target: two-stage initialization
    assert "two-stage" in initialize(gsdn, path)
    with torch.no_grad():
        assert torch.equal(same.eval()(x)["x_hat"], expected)
        assert torch.equal(gsdn.eval()(x)["x_hat"], expected)

    with pytest.raises(RefcodecError, match="does not fit"):
        initialize(registry.MODELS["joint"](N=N, M=M), path)
    with pytest.raises(RefcodecError, match="no such file"):
        initialize(same, tmp_path / "missing.pt")


# -- a CompressAI mbt2018 state dict -------------------------------------------------------------


def reparam_init(x: torch.Tensor) -> torch.Tensor:
    """CompressAI's NonNegativeParametrizer.init: sqrt(max(x + pedestal, pedestal))."""
    return torch.sqrt(torch.clamp_min(x + PEDESTAL, PEDESTAL))


def reparam_value(v: torch.Tensor, minimum: float) -> torch.Tensor:
    """CompressAI's NonNegativeParametrizer.forward: max(v, sqrt(minimum + pedestal))^2 - pedestal."""
    return torch.clamp_min(v, math.sqrt(minimum + PEDESTAL)) ** 2 - PEDESTAL


def compressai_state(n: int = N, m: int = M, filters=(3, 3, 3, 3), seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the layout of JointAutoregressiveHierarchicalPriors(N=n, M=m)."""
    g = torch.Generator().manual_seed(seed)

    def conv(prefix, cin, cout, k, transposed=False):
        shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        scale = (2 if transposed else 1) / math.sqrt(cin * k * k)
        state[f"{prefix}.weight"] = torch.randn(shape, generator=g) * scale
        state[f"{prefix}.bias"] = torch.randn(cout, generator=g) * 0.1

    def gdn(prefix):
        beta = torch.rand(n, generator=g) * 1.5 + 0.5
        gamma = 0.1 * torch.eye(n) + torch.rand(n, n, generator=g) * 0.05
        gamma[0, 1] = 0.0  # a value at the parametrization's bound
        state[f"{prefix}.beta"], state[f"{prefix}.gamma"] = reparam_init(beta), reparam_init(gamma)
        for name, minimum in (("beta", 1e-6), ("gamma", 0.0)):
            state[f"{prefix}.{name}_reparam.pedestal"] = torch.tensor([PEDESTAL])
            state[f"{prefix}.{name}_reparam.lower_bound.bound"] = torch.tensor([math.sqrt(minimum + PEDESTAL)])

    state: dict[str, torch.Tensor] = {}
    for i, (cin, cout) in enumerate([(3, n), (n, n), (n, n), (n, m)]):  # g_a's convolutions; g_s mirrors them
        conv(f"g_a.{2 * i}", cin, cout, 5)
        conv(f"g_s.{6 - 2 * i}", cout, cin, 5, transposed=True)
    for i in (1, 3, 5):
        gdn(f"g_a.{i}")
        gdn(f"g_s.{i}")
    conv("h_a.0", m, n, 3), conv("h_a.2", n, n, 5), conv("h_a.4", n, n, 5)
    conv("h_s.0", n, m, 5, transposed=True), conv("h_s.2", m, m * 3 // 2, 5, transposed=True), conv("h_s.4", m * 3 // 2, 2 * m, 3)
    conv("context_prediction", m, 2 * m, 5)
    mask = torch.ones(2 * m, m, 5, 5)
    mask[:, :, 2, 2:] = 0
    mask[:, :, 3:] = 0
    state["context_prediction.mask"] = mask
    conv("entropy_parameters.0", 4 * m, m * 10 // 3, 1), conv("entropy_parameters.2", m * 10 // 3, m * 8 // 3, 1)
    conv("entropy_parameters.4", m * 8 // 3, 2 * m, 1)
    dims = (1, *filters, 1)
    scale = 10 ** (1 / (len(filters) + 1))
    for i in range(len(filters) + 1):
        init = math.log(math.expm1(1 / scale / dims[i + 1]))
        state[f"entropy_bottleneck._matrix{i}"] = init + 0.3 * torch.randn(n, dims[i + 1], dims[i], generator=g)
        state[f"entropy_bottleneck._bias{i}"] = torch.rand(n, dims[i + 1], 1, generator=g) - 0.5
        if i < len(filters):
            state[f"entropy_bottleneck._factor{i}"] = 0.3 * torch.randn(n, dims[i + 1], 1, generator=g)
    state["entropy_bottleneck.quantiles"] = torch.tensor([-10.0, 0.0, 10.0]).repeat(n, 1, 1)
    for module in ("entropy_bottleneck", "gaussian_conditional"):
        state[f"{module}._offset"] = torch.zeros(0, dtype=torch.int32)
        state[f"{module}._quantized_cdf"] = torch.zeros(0, dtype=torch.int32)
        state[f"{module}._cdf_length"] = torch.zeros(0, dtype=torch.int32)
    state["gaussian_conditional.scale_table"] = torch.zeros(0)
    state["gaussian_conditional.scale_bound"] = torch.tensor([0.11])
    return state


# -- CompressAI's forward pass with plain ops -------------------------------------------------------


def ref_gdn(x, state, prefix, inverse=False):
    """compressai/layers/gdn.py: x * rsqrt(beta + conv1x1(x^2, gamma)), or x * sqrt(...) for IGDN."""
    beta = reparam_value(state[f"{prefix}.beta"], 1e-6)
    gamma = reparam_value(state[f"{prefix}.gamma"], 0.0)
    norm = F.conv2d(x**2, gamma[:, :, None, None], beta)
    return x * (torch.sqrt(norm) if inverse else torch.rsqrt(norm))


def ref_conv(x, state, prefix, stride=2):
    w = state[f"{prefix}.weight"]
    return F.conv2d(x, w, state[f"{prefix}.bias"], stride=stride, padding=w.shape[-1] // 2)


def ref_deconv(x, state, prefix):
    return F.conv_transpose2d(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"], stride=2, padding=2, output_padding=1)


def ref_g_a(x, s):
    for i in (0, 2, 4):
        x = ref_gdn(ref_conv(x, s, f"g_a.{i}"), s, f"g_a.{i + 1}")
    return ref_conv(x, s, "g_a.6")


def ref_g_s(y, s):
    for i in (0, 2, 4):
        y = ref_gdn(ref_deconv(y, s, f"g_s.{i}"), s, f"g_s.{i + 1}", inverse=True)
    return ref_deconv(y, s, "g_s.6")


def ref_h_a(y, s):
    z = F.leaky_relu(ref_conv(y, s, "h_a.0", stride=1))
    return ref_conv(F.leaky_relu(ref_conv(z, s, "h_a.2")), s, "h_a.4")


def ref_h_s(z, s):
    p = F.leaky_relu(ref_deconv(F.leaky_relu(ref_deconv(z, s, "h_s.0")), s, "h_s.2"))
    return ref_conv(p, s, "h_s.4", stride=1)


def ref_context(y_hat, s):
    return F.conv2d(y_hat, s["context_prediction.weight"] * s["context_prediction.mask"], s["context_prediction.bias"], padding=2)


def ref_entropy_parameters(hyper, ctx, s):
    """(scales, means), from torch.cat((params, ctx_params)) as in google.py."""
    p = torch.cat((hyper, ctx), 1)
    for i in (0, 2):
        p = F.leaky_relu(F.conv2d(p, s[f"entropy_parameters.{i}.weight"], s[f"entropy_parameters.{i}.bias"]))
    return F.conv2d(p, s["entropy_parameters.4.weight"], s["entropy_parameters.4.bias"]).chunk(2, 1)


def ref_bottleneck_likelihood(z, s):
    """EntropyBottleneck._likelihood (entropy_models.py), with the sign trick of older releases."""
    depth = sum(1 for k in s if k.startswith("entropy_bottleneck._matrix"))

    def logits(x):
        for i in range(depth):
            x = torch.matmul(F.softplus(s[f"entropy_bottleneck._matrix{i}"]), x) + s[f"entropy_bottleneck._bias{i}"]
            if i < depth - 1:
                x = x + torch.tanh(s[f"entropy_bottleneck._factor{i}"]) * torch.tanh(x)
        return x

    c = z.shape[1]
    v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
    lower, upper = logits(v - 0.5), logits(v + 0.5)
    sign = -torch.sign(lower + upper)
    p = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
    return p.reshape(c, *z.shape[:1], *z.shape[2:]).permute(1, 0, 2, 3)


# -- the import ---------------------------------------------------------------------------------------


def check_transforms(model, s):
    x = image()
    with torch.no_grad():
        y = model.g_a(x)
        assert torch.allclose(y, ref_g_a(x, s), rtol=1e-5, atol=1e-5)
        y_hat = torch.round(y)
        assert torch.allclose(model.g_s(y_hat), ref_g_s(y_hat, s), rtol=1e-5, atol=1e-5)
        z = model.h_a(y)
        assert torch.allclose(z, ref_h_a(y, s), rtol=1e-5, atol=1e-5)
        z_hat = torch.round(z)
        hyper = model.h_s(z_hat)
        assert torch.allclose(hyper, ref_h_s(z_hat, s), rtol=1e-5, atol=1e-5)
        ctx = model.context(y_hat)
        assert torch.allclose(ctx, ref_context(y_hat, s), rtol=1e-5, atol=1e-5)
        scales, means = ref_entropy_parameters(hyper, ctx, s)
        preds = model.predict(y_hat, hyper)
        n, _, h, w = y_hat.shape
        mean, log_scale = (_unrows(t, n, h, w) for t in preds[-1])
        assert torch.allclose(mean, means, rtol=1e-5, atol=1e-5)
        s0 = SCALE_TANGENT  # log-sigma is the tangent of log at s0 of CompressAI's sigma
        assert torch.allclose(log_scale, math.log(s0) + (scales - s0) / s0, rtol=1e-5, atol=1e-5)
        for mean1, log_scale1 in preds[:-1]:  # earlier stages start at (0, 0)
            assert not mean1.any() and not log_scale1.any()
    return z


@pytest.mark.parametrize("name", ["joint", "grm"])
def test_mbt2018_import_matches_compressai(name, tmp_path):
    s = compressai_state(filters=(3, 3, 3))
    path = tmp_path / "mbt2018.pth.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in s.items()}}, path)  # a DataParallel training checkpoint
    model = from_compressai_mbt2018(path, name)
    assert (model.N, model.M) == (N, M) and model.config["name"] == name
    if name == "grm":
        layers = [layer for layer in model.modules() if isinstance(layer, (GSDN, IGSDN))]
        assert all(layer.subtractive and not layer.nu.any() and not layer.tau.any() for layer in layers)
    z = check_transforms(model, s)
    with torch.no_grad():  # same density depth: copied exactly
        z_hat = torch.round(z * 3)
        expected = ref_bottleneck_likelihood(z_hat, s).clamp_min(1e-9)
        assert torch.allclose(model.density.likelihood(z_hat), expected, rtol=1e-5, atol=1e-7)
        model(image())  # runs end to end
    streams = model.compress(image())  # and codes (tables were tabulated)
    assert torch.allclose(model.decode(streams, 64, 64), model.encode(image())[1])


def test_mbt2018_default_density_is_fitted():
    """CompressAI's EntropyBottleneck has filters (3, 3, 3, 3), ours (3, 3, 3): the density is fitted."""
    s = compressai_state()
    g = torch.Generator().manual_seed(5)
    for key in [k for k in s if k.startswith("entropy_bottleneck._")]:  # narrow, skewed densities, as after training
        s[key] = s[key] + torch.randn(s[key].shape, generator=g) * 2 + ("_matrix" in key)
    model = registry.MODELS["joint"](N=N, M=M)
    description = load_compressai_mbt2018(model, s)
    assert "fitted" in description
    check_transforms(model, s)
    z = torch.arange(-100.0, 101.0).view(1, 1, -1, 1).expand(1, N, -1, 1)
    with torch.no_grad():
        p = ref_bottleneck_likelihood(z, s)
        q = model.density.likelihood(z)
    assert torch.allclose(p.sum(2), torch.ones(N), atol=1e-4)  # z covers the support
    kl = (p * (p.clamp_min(1e-12).log2() - q.log2())).sum(2)  # extra bits per value, per channel
    assert kl.mean() < 0.005 and kl.max() < 0.01


def test_mbt2018_old_key_names():
    s = compressai_state(filters=(3, 3, 3))
    rename = {"_matrix": "_matrices.", "_bias": "_biases.", "_factor": "_factors."}  # nn.ParameterList names
    old = {}
    for key, value in s.items():
        for new, former in rename.items():
            key = key.replace(new, former)
        old[key] = value
    a, b = registry.MODELS["joint"](N=N, M=M), registry.MODELS["joint"](N=N, M=M)
    load_compressai_mbt2018(a, s), load_compressai_mbt2018(b, old)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_initialize_detects_compressai(tmp_path):
    path = tmp_path / "mbt.pth"
    torch.save(compressai_state(filters=(3, 3, 3)), path)
    model = registry.MODELS["grm"](N=N, M=M)
    assert "CompressAI mbt2018" in initialize(model, path)
    check_transforms(model, compressai_state(filters=(3, 3, 3)))


def test_compressai_errors(tmp_path):
    model = registry.MODELS["joint"](N=N, M=M)
    random = tmp_path / "random.pt"
    torch.save({"foo": torch.zeros(3), "bar.weight": torch.ones(2, 2)}, random)
    with pytest.raises(RefcodecError, match="not a CompressAI mbt2018"):
        initialize(model, random)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RefcodecError, match="not a torch state dict"):
        initialize(model, garbage)
    wrong_m = tmp_path / "wrong_m.pt"
    torch.save(compressai_state(m=2 * M), wrong_m)
    with pytest.raises(RefcodecError, match=f"N={N}, M={2 * M}; the model has N={N}, M={M}"):
        initialize(model, wrong_m)
    with pytest.raises(RefcodecError, match="M=12; the model has N=64, M=96"):
        from_compressai_mbt2018(compressai_state(), "joint", preset="small")
    broken = compressai_state()
    broken["entropy_parameters.2.weight"] = broken["entropy_parameters.2.weight"][:-1]
    with pytest.raises(RefcodecError, match="entropy_parameters.2.weight has shape"):
        load_compressai_mbt2018(model, broken)
    with pytest.raises(RefcodecError, match="context \\+ hyperprior"):
        load_compressai_mbt2018(registry.MODELS["hyperprior"](N=N, M=M), compressai_state())
