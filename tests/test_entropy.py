"""Entropy models (eq. 2, factorized density) and the range coder."""

import math

import numpy as np
import pytest
import torch

from refcodec.entropy.coder import CodingError, Decoder, Encoder
from refcodec.entropy.factorized import FactorizedDensity
from refcodec.entropy.gaussian import (
    LIKELIHOOD_MIN,
    SCALE_MIN,
    SCALE_TABLE,
    coding_scale,
    exact_likelihood,
    likelihood,
    scale_from_log,
)
from refcodec.fixedpoint import snap


def test_gaussian_likelihood_sums_to_one_over_integers():
    y = torch.arange(-60, 61).float().view(-1, 1)
    for mean, scale in [(0.0, 1.0), (2.3, 0.5), (-7.7, 9.0)]:
        p = likelihood(y, torch.full_like(y, mean), torch.full_like(y, math.log(scale)))
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-4)


def test_bounds():
    assert float(scale_from_log(torch.tensor(-10.0))) == pytest.approx(SCALE_MIN)
    p = likelihood(torch.tensor([100.0]), torch.tensor([0.0]), torch.tensor([math.log(0.2)]))
    assert float(p) == pytest.approx(LIKELIHOOD_MIN)
    s = torch.tensor(-10.0, requires_grad=True)
    (-scale_from_log(s)).backward()  # a gradient that raises the scale passes the bound
    assert s.grad < 0


def test_coding_scale_is_close_to_the_training_scale():
    ls = snap(torch.linspace(math.log(0.12), math.log(200), 1000))
    ratio = coding_scale(ls) / scale_from_log(ls.float()).double()
    assert (ratio - 1).abs().max() < 0.01
    assert torch.all(SCALE_TABLE[1:] > SCALE_TABLE[:-1])


def test_exact_likelihood_matches_eq2():
    y = torch.randint(-10, 11, (500, 1)).double()
    mean = snap(torch.randn(500, 1) * 3)
    ls = snap(torch.rand(500, 1) * 3 - 1)
    exact = exact_likelihood(y, mean, ls)
    ref = likelihood(y.float(), mean.float(), torch.log(coding_scale(ls)).float()).double()
    assert (exact - ref).abs().max() < 1e-4


def test_factorized_density_tables_and_likelihood():
    torch.manual_seed(0)
    d = FactorizedDensity(3)
    x = torch.arange(-400, 401).float().view(1, 1, -1, 1).expand(1, 3, -1, 1)
    p = d.likelihood(x)
    assert p.shape == x.shape
    assert torch.allclose(p.sum(2), torch.ones(1, 3, 1), atol=1e-3)
    d.update()
    for c, table in enumerate(d.tables()):
        assert table.sum() == pytest.approx(1.0, abs=1e-3) and (table > 0).all()
        assert len(table) == int(d.pmf_length[c])
    big = torch.full((1, 3, 1, 1), 1e4)
    assert torch.equal(d.clamp_to_support(big).flatten(), (d.pmf_offset + d.pmf_length - 1).float())


def test_factorized_tables_survive_save_and_load():
    d = FactorizedDensity(2)
    d.update()
    e = FactorizedDensity(2)
    e.load_state_dict(d.state_dict())
    assert torch.equal(d.pmf, e.pmf) and torch.equal(d.pmf_offset, e.pmf_offset)


def test_range_coder_round_trip_and_rate():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 5, 4000)
    scales = np.exp(rng.uniform(-2, 3, 4000))
    symbols = np.round(rng.normal(means, scales)).astype(np.int32)
    table = np.array([0.1, 0.2, 0.7])
    cats = rng.choice(3, 500, p=table)
    enc = Encoder()
    enc.gaussian(symbols, means, scales)
    enc.categorical(cats, table)
    data = enc.finish()
    dec = Decoder(data)
    assert np.array_equal(dec.gaussian(means, scales), symbols)
    assert np.array_equal(dec.categorical(500, table), cats)
    y = torch.from_numpy(symbols).double()
    bits = -torch.log2(likelihood(y.float(), torch.from_numpy(means).float(), torch.from_numpy(np.log(scales)).float())).sum()
    bits += -np.log2(table[cats]).sum()
    assert 8 * len(data) < 1.01 * float(bits) + 64


def test_decoder_rejects_bad_lengths():
    with pytest.raises(CodingError):
        Decoder(b"abc")


def test_a_collapsed_channel_still_gets_a_codable_table():
    """A channel whose density puts all mass on one integer (seen in training) must still code."""
    d = FactorizedDensity(1)
    with torch.no_grad():
        d.matrices[0].fill_(8.0)  # a very steep cumulative: all mass in one bin
    d.update()
    assert int(d.pmf_length[0]) >= 2
    enc = Encoder()
    enc.categorical(np.zeros(5, dtype=np.int32), d.tables()[0])
    assert np.array_equal(Decoder(enc.finish()).categorical(5, d.tables()[0]), np.zeros(5))
