"""Global reference search (section 3, eq. 4): masked patches, causality, exactness, ties."""

import pytest
import torch

from refcodec.layers.reference import ReferenceIndex, masked_patches, patches_at, search, visible_prefix
from refcodec.schedule import Schedule


def test_masked_patches_match_per_position_patches():
    mask = Schedule("wavefront").visible(3, False)
    y = torch.randint(-5, 6, (1, 4, 6, 7)).double()
    q = masked_patches(y, mask)[0]
    pad = torch.nn.functional.pad(y[0], (1, 1, 1, 1))
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    assert torch.equal(q, patches_at(pad, rows.flatten(), cols.flatten(), mask.bool()))
    assert q.shape == (42, 4 * 4)


def test_reference_finds_a_repeated_pattern():
    """A latent patch that repeats exactly is found with similarity 1."""
    mask = Schedule("wavefront").visible(3, False)
    y = torch.zeros(1, 4, 5, 8)
    y[0, :, 1, 1] = torch.tensor([1.0, 2, 3, 4])
    y[0, :, 3, 5] = torch.tensor([1.0, 2, 3, 4])
    q = masked_patches(y, mask)[0]
    steps = Schedule("wavefront").steps(5, 8).flatten()
    index, s = search(q, steps, q, steps)
    target = 4 * 8 + 6  # (4, 6) sees (3, 5) as its top-left neighbour, like (2, 2) sees (1, 1)
    assert index[target] == 2 * 8 + 2 and s[target] == pytest.approx(1.0)
    assert s[0] == 0 and index[0] == 0  # nothing decoded before the first position


@pytest.mark.parametrize("name", ["raster", "wavefront"])
def test_search_only_returns_earlier_positions(name):
    torch.manual_seed(0)
    q = torch.randint(-3, 4, (60, 8)).double()
    steps = Schedule(name).steps(6, 10).flatten()
    index, s = search(q, steps, q, steps)
    has_earlier = steps > 0
    assert torch.all(steps[index][has_earlier] < steps[has_earlier])
    assert torch.all(s >= 0) and torch.all(s <= 1 + 1e-12)


def test_ties_go_to_the_lowest_index_and_blocks_do_not_matter(monkeypatch):
    q = torch.ones(40, 3).double()  # every candidate ties
    steps = torch.arange(40)
    index, _ = search(q, steps, q, steps)
    assert torch.all(index[1:] == 0)
    torch.manual_seed(1)
    q = torch.randint(-2, 3, (300, 12)).double()
    steps = torch.arange(300) // 3
    full = search(q, steps, q, steps)
    import refcodec.layers.reference as ref

    monkeypatch.setattr(ref, "SEARCH_BLOCK", 7)
    blocked = search(q, steps, q, steps)
    assert torch.equal(full[0], blocked[0]) and torch.equal(full[1], blocked[1])


@pytest.mark.parametrize("name", ["raster", "wavefront"])
def test_visible_prefix_holds_every_earlier_key(name):
    steps = Schedule(name).steps(7, 11).flatten()
    prefix = visible_prefix(steps)
    for t in range(int(steps.max()) + 2):
        n = prefix(t)
        assert torch.all(steps[n:] >= t) and (n == 0 or steps[n - 1] < t)


@pytest.mark.parametrize("scale", [3, 250])  # float32 dot products (exact below 2^24), or float64
def test_reference_index_matches_the_exact_search_step_by_step(scale):
    torch.manual_seed(2)
    schedule = Schedule("wavefront")
    steps = schedule.steps(9, 13).flatten()
    keys = torch.randint(-scale, scale + 1, (len(steps), 300)).double()
    keys[5] = keys[40]  # an exact repeat, and ties
    keys[60:64] = keys[70]
    expected = search(keys, steps, keys, steps)  # float64 throughout: exact on integers

    whole = ReferenceIndex(steps, keys.shape[1])  # the encoder: every key at once
    whole.add(torch.arange(len(steps)), keys)
    assert all(torch.equal(a, b) for a, b in zip(whole.search(keys, steps), expected))
    assert all(torch.equal(a, b) for a, b in zip(whole.search_all(), expected))  # queries in decode order

    growing = ReferenceIndex(steps, keys.shape[1])  # the decoder: keys arrive step by step
    for positions in schedule.order(9, 13):
        growing.add(positions, keys[positions])
        index, s = growing.search(keys[positions], steps[positions])
        assert torch.equal(index, expected[0][positions]) and torch.equal(s, expected[1][positions])


def _naive_search(q: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, the whole similarity matrix at once: eq. 4, causal mask, first maximum, S = max(cos, 0)."""
    norm = torch.sqrt((q * q).sum(1).clamp_min(1e-12))
    r = (q @ q.T) / (norm.view(-1, 1) * norm.view(1, -1))
    r = r.masked_fill(steps.view(1, -1) >= steps.view(-1, 1), -2.0)
    index = torch.argmax(r, 1)
    return index, r.gather(1, index.view(-1, 1)).squeeze(1).clamp_min(0)


@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("name", ["raster", "wavefront"])
def test_batched_search_equals_the_per_image_loop(name, batch, monkeypatch):
    """A batch searched at once gives, bit for bit, every image's own index and S, with ties."""
    torch.manual_seed(batch)
    mask, steps = Schedule(name).visible(3, False), Schedule(name).steps(9, 12).flatten()
    y = torch.randint(-4, 5, (batch, 6, 9, 12)).float()
    y[:, :, 5:8] = y[:, :, 1:4]  # repeated patches: exact ties at S = 1
    y[0, :, :, 6:] = 1  # constant patches: many ties
    y[-1, :, 4:] = 0  # all-zero patches: S = 0
    q = masked_patches(y, mask).requires_grad_()
    import refcodec.layers.reference as ref

    monkeypatch.setattr(ref, "SEARCH_BLOCK", 25)  # several blocks of queries
    index, s = search(q, steps, q, steps)
    for i in range(batch):
        one = search(q[i], steps, q[i], steps)
        naive = _naive_search(q[i], steps)
        assert torch.equal(index[i], one[0]) and torch.equal(s[i], one[1])
        assert torch.equal(index[i], naive[0]) and torch.equal(s[i], naive[1])
    weights = torch.rand(s.shape)
    (grad,) = torch.autograd.grad((s * weights).sum(), q)  # S's gradient, taken at the chosen pairs only
    naive = torch.stack([_naive_search(q[i], steps)[1] for i in range(batch)])
    assert torch.allclose(grad, torch.autograd.grad((naive * weights).sum(), q)[0], atol=1e-6)
