"""Global reference (paper section 3, Figures 4 and 5).

For every target position i the module looks at the latents decoded before it
(the decode schedule decides which), finds the position j whose masked
neighbourhood is most similar to i's (cosine similarity of masked k x k patches,
eq. 4), and transfers the "relevant latents" at j (its causal neighbours and its
centre) with a masked convolution. The transferred features are scaled by the
similarity S_i = max(r_ij, 0) and by the confidence U_j, the channel average of
the probability of the latents at j under the context model's Gaussian
(mu1, sigma1).

Unlike the paper's released code, the causal mask of the search is the decode
schedule itself, in training as in coding, so training never sees a latent the
decoder would not have.

Search on integer latents is exact: dot products of integers are exact in
float64 and cos = dot / (sqrt(|q_i|^2) * sqrt(|q_j|^2)) uses only correctly
rounded operations, so the encoder (whole image, in blocks) and the decoder (one
step at a time) pick the same position; ties go to the lowest raster index.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SEARCH_BLOCK = 512  # target rows per block: memory is SEARCH_BLOCK x positions


def masked_patches(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unfold (N, C, H, W) into masked k x k patches: (N, H*W, C * mask.sum()), zero outside the image."""
    k = mask.shape[-1]
    cols = F.unfold(y, k, padding=k // 2)  # (N, C*k*k, HW)
    n, _, hw = cols.shape
    keep = mask.flatten().bool()
    return cols.view(n, y.shape[1], k * k, hw)[:, :, keep].reshape(n, -1, hw).transpose(1, 2)


def patches_at(y_padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked patches at given positions of a (C, H + 2p, W + 2p) zero-padded latent: (P, C * mask.sum()).

    The element order matches :func:`masked_patches` and a convolution weight's flatten(1).
    """
    dr, dc = mask.bool().nonzero(as_tuple=True)
    patch = y_padded[:, rows.view(-1, 1) + dr.view(1, -1), cols.view(-1, 1) + dc.view(1, -1)]  # (C, P, m)
    return patch.permute(1, 0, 2).reshape(len(rows), -1)


def cosine(dot: torch.Tensor, norm2_a: torch.Tensor, norm2_b: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Eq. 4 from dot products (..., A, B) and squared norms (..., A), (..., B); 0 where a patch is all zero.

    ``inplace`` overwrites ``dot`` (coding: no gradient, one pass less over a large matrix).
    """
    denom = torch.sqrt(norm2_a.clamp_min(1e-12)).unsqueeze(-1) * torch.sqrt(norm2_b.clamp_min(1e-12)).unsqueeze(-2)
    return dot.div_(denom) if inplace else dot / denom


def visible_prefix(key_steps: torch.Tensor) -> Callable[[int], int]:
    """For a step t, the length of the shortest prefix of the keys that holds every key decoded before t.

    Keys are in raster order, so a search over the prefix keeps the lowest-index tie rule;
    for raster and wavefront orders the prefix ends a few rows below the query.
    """
    sorted_steps, order = torch.sort(key_steps, stable=True)
    last = torch.cummax(order, 0).values + 1  # last[c - 1]: prefix holding the c earliest keys

    def prefix(t: int) -> int:
        c = int(torch.searchsorted(sorted_steps, t))
        return int(last[c - 1]) if c else 0

    return prefix


def _exact_dots(qb: torch.Tensor, kb: torch.Tensor, key_max: float) -> torch.Tensor:
    """qb @ kb.T of integer patches, exactly: in float32 when every partial sum is an integer
    below 2^24, which float32 holds exactly whatever the summation order; else in float64.
    On a GPU always float64: a float32 product there may run in TF32, which rounds the inputs."""
    if qb.device.type == "cpu" and float(qb.abs().max()) * key_max * qb.shape[1] < 2**24:
        return (qb.float() @ kb.T).double()
    return qb.double() @ kb.double().T


@torch.compiler.disable  # block bounds depend on the data: eager under torch.compile (refcodec train --compile)
@torch.no_grad()
def _nearest(q: torch.Tensor, q_steps: torch.Tensor, keys: torch.Tensor, key_steps: torch.Tensor) -> torch.Tensor:
    """Index (..., P) of the most similar key decoded before each query (:func:`search`), in blocks of
    queries, each against the shortest prefix of keys that holds every key decoded before it."""
    prefix, q_steps_cpu = visible_prefix(key_steps.cpu()), q_steps.cpu()  # block bounds without a device sync per block
    norm2 = (keys * keys).sum(-1)
    index = []
    for start in range(0, q.shape[-2], SEARCH_BLOCK):
        qb, tb = q[..., start : start + SEARCH_BLOCK, :], q_steps[start : start + SEARCH_BLOCK]
        n = max(prefix(int(q_steps_cpu[start : start + SEARCH_BLOCK].max())), 1)  # a query with nothing before it gets S = 0
        r = cosine(qb @ keys[..., :n, :].mT, (qb * qb).sum(-1), norm2[..., :n], inplace=True)
        r.masked_fill_(key_steps[:n] >= tb.view(-1, 1), -2.0)  # not decoded before the query
        index.append(torch.argmax(r, -1))  # first maximum: the lowest index wins ties
    return torch.cat(index, -1)


def search(q: torch.Tensor, q_steps: torch.Tensor, keys: torch.Tensor, key_steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Most similar earlier-decoded position for each query row (training; differentiable in S).

    q: (..., P, D) patches of the targets, decoded at q_steps (P,); keys: (..., K, D) patches of
    candidates decoded at key_steps (K,); leading dimensions (a batch of images) are searched at
    once, each image in its own keys. Returns (index (..., P), similarity S (..., P)):
    S = max(cos, 0) and 0 with index 0 where no candidate was decoded before.

    The search runs without gradient; S is then recomputed, with its gradient, at the chosen
    pairs only: the same operations on the same numbers (dot products of integer latents are
    exact in float32 below 2^24), so the same S, without a backward pass over every pair.
    """
    index = _nearest(q, q_steps, keys, key_steps)
    best = keys.gather(-2, index.unsqueeze(-1).expand(q.shape))
    dot, norm2_q, norm2_best = ((a * b).sum(-1, keepdim=True) for a, b in ((q, best), (q, q), (best, best)))
    s = cosine(dot.unsqueeze(-1), norm2_q, norm2_best)[..., 0, 0]  # each pair as a 1 x 1 similarity matrix
    return index, s.masked_fill(key_steps[index] >= q_steps, -2.0).clamp_min(0)


class ReferenceIndex:
    """The keys (masked patches of decoded latents) of one image, for exact search at coding time.

    Latents are integers, so dot products and squared norms are exact integers: the encoder
    (all keys at once) and the decoder (keys added step by step) pick the same position on
    any machine and thread count. Keys are kept in float32, which holds them exactly, in
    decode order, so a query multiplies only the keys decoded before it (about half of all
    keys on average, where a raster prefix holds most of them); the winner is the same as
    :func:`search`'s: the largest similarity, ties to the lowest raster index.
    """

    def __init__(self, key_steps: torch.Tensor, dim: int):
        self.steps, self.position = torch.sort(key_steps, stable=True)  # slot -> step, raster position
        self.slot = torch.empty_like(self.position)
        self.slot[self.position] = torch.arange(len(key_steps), device=key_steps.device)
        self.keys = torch.zeros(len(key_steps), dim, dtype=torch.float32, device=key_steps.device)
        self.norm2 = torch.zeros(len(key_steps), dtype=torch.float64, device=key_steps.device)
        self.max = 0.0  # largest |entry| of any key so far

    def add(self, positions: torch.Tensor, patches: torch.Tensor) -> None:
        """Patches (P, D) of integer latents at raster positions (P,)."""
        slots = self.slot[positions]
        self.keys[slots] = patches.float()
        self.norm2[slots] = (patches.double() ** 2).sum(1)
        self.max = max(self.max, float(patches.abs().max())) if len(patches) else self.max

    def search(self, q: torch.Tensor, q_steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :func:`search`, for integer query patches (P, D); S in float64."""
        index, score = [], []
        for start in range(0, len(q), SEARCH_BLOCK):
            qb, tb = q[start : start + SEARCH_BLOCK].double(), q_steps[start : start + SEARCH_BLOCK]
            n = max(int(torch.searchsorted(self.steps, tb.max())), 1)  # the keys decoded before the last query
            r = cosine(_exact_dots(qb, self.keys[:n], self.max), (qb * qb).sum(1), self.norm2[:n], inplace=True)
            r.masked_fill_(self.steps[:n].view(1, -1) >= tb.view(-1, 1), -2.0)
            best = r.max(1).values
            ties = torch.where(r == best.view(-1, 1), self.position[:n].view(1, -1), len(self.slot))
            index.append(ties.min(1).values)  # the lowest raster index among the best
            score.append(best.clamp_min(0))
        return torch.cat(index), torch.cat(score)

    def search_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key's own reference (the encoder's case), in raster order.

        The keys ask in decode order, so each block of queries multiplies only the keys
        decoded before it: about half the products of a full similarity matrix.
        """
        index, s = self.search(self.keys, self.steps)
        return index[self.slot], s[self.slot]
