"""Models: training outputs, causality of the entropy model, and bit-exact coding round trips."""

import pytest
import torch
from torch import nn

from refcodec.models import registry
from refcodec.models.grm import GRM
from refcodec.models.registry import MODELS
from refcodec.schedule import Schedule

N, M = 16, 24


def make(name: str, seed: int = 0, **flags):
    """A small random model whose latents are spread over many integers (a harder test than near-zero latents)."""
    torch.manual_seed(seed)
    model = MODELS[name](N=N, M=M, **flags)
    with torch.no_grad():
        model.g_a[-1].weight.mul_(60)
    model.eval()
    model.update()
    return model


def image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g)
    smooth = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 0.05 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


VARIANTS = [
    ("factorized", {}),
    ("hyperprior", {}),
    ("joint", {}),
    ("grm", {}),
    ("grm", {"schedule": "raster"}),
    ("grm", {"hyperprior": False}),
    ("grm", {"confidence": False, "gsdn": False}),
]


@pytest.mark.parametrize("name,flags", VARIANTS, ids=[f"{n}-{'-'.join(f) or 'default'}" for n, f in VARIANTS])
def test_round_trip_two_threads_then_one(name, flags):
    model = make(name, **flags)
    x = image(128, 192)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        streams, y_hat = model.encode(x)
        x_enc = model.synthesize(y_hat)
        torch.set_num_threads(1)
        y_dec = model.decode(streams, 128, 192)
        x_dec = model.synthesize(y_dec)
    finally:
        torch.set_num_threads(threads)
    assert len(streams) == model.stream_count()
    assert y_hat.abs().max() > 2, "test latents should not be trivially zero"
    assert torch.equal(y_hat.float(), y_dec)
    assert torch.equal(torch.round(x_enc.clamp(0, 1) * 255), torch.round(x_dec.clamp(0, 1) * 255))


def test_training_outputs():
    x = image(64, 64).repeat(2, 1, 1, 1)
    grm = make("grm").train()
    out = grm(x)
    assert out["x_hat"].shape == x.shape
    assert len(out["likelihoods"]["y"]) == 3
    assert all(p.shape == (2, M, 4, 4) for p in out["likelihoods"]["y"])
    assert out["likelihoods"]["z"].shape == (2, N, 1, 1)
    loss = sum(-torch.log2(p).sum() for p in out["likelihoods"]["y"]) + ((out["x_hat"] - x) ** 2).sum()
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in grm.parameters())
    assert len(make("joint")(x)["likelihoods"]["y"]) == 1
    assert len(make("grm", reference=False, confidence=False)(x)["likelihoods"]["y"]) == 2


def test_flags_validate():
    with pytest.raises(ValueError):
        GRM(N=N, M=M, reference=False, confidence=True)
    with pytest.raises(ValueError):
        GRM(N=N, M=M, progressive=False)


@pytest.mark.parametrize("schedule", ["raster", "wavefront"])
@pytest.mark.parametrize("exact", [False, True], ids=["training", "coding"])
def test_predictions_are_causal(schedule, exact):
    """Changing latents not yet decoded never changes any stage's prediction at a position."""
    model = make("grm", hyperprior=False, schedule=schedule)
    torch.manual_seed(3)
    h, w = 6, 7
    y = torch.randint(-4, 5, (1, M, h, w)).float()
    steps = Schedule(schedule).steps(h, w).flatten()
    predict = model.exact_predict if exact else model.predict
    with torch.no_grad():
        base = predict(y, None)
        for target in [0, 9, 20, 41]:
            later = (steps >= steps[target]).view(h, w)
            y2 = y.clone()
            y2[0, :, later] = torch.randint(-4, 5, (M, int(later.sum()))).float()
            changed = predict(y2, None)
            for (m0, s0), (m1, s1) in zip(base, changed):
                assert torch.equal(m0[target], m1[target]) and torch.equal(s0[target], s1[target])


def test_paper_preset_builds_and_runs():
    """Table 1 sizes: N=192, M=384; GSDN layers hold 2(N + N^2) parameters each."""
    from refcodec.layers.gdn import GSDN
    from refcodec.models.registry import build

    model = build("grm", "paper")
    assert (model.N, model.M) == (192, 384)
    gsdn = [m for m in model.g_a if isinstance(m, GSDN)]
    assert len(gsdn) == 3 and all(sum(p.numel() for p in g.parameters()) == 2 * (192 + 192**2) for g in gsdn)
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out["x_hat"].shape == (1, 3, 64, 64) and len(out["likelihoods"]["y"]) == 3


def test_weights_hash_follows_every_change_of_the_weights():
    torch.manual_seed(0)
    model = registry.build("grm", "small")
    first = model.weights_hash()
    assert model.weights_hash() == first
    with torch.no_grad():
        model.g_a[0].weight.add_(1e-3)  # in place
    second = model.weights_hash()
    assert second != first
    model.g_a[0].weight = nn.Parameter(model.g_a[0].weight.detach() - 1e-3)  # replaced
    assert model.weights_hash() not in (first, second)
    torch.manual_seed(0)
    model.load_state_dict(registry.build("grm", "small").state_dict())
    assert model.weights_hash() == first
