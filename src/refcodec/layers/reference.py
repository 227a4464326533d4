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


def cosine(dot: torch.Tensor, norm2_a: torch.Tensor, norm2_b: torch.Tensor) -> torch.Tensor:
    """Eq. 4 from dot products and squared norms; 0 where a patch is all zero (its dot products are 0)."""
    denom = torch.sqrt(norm2_a.clamp_min(1e-12)).view(-1, 1) * torch.sqrt(norm2_b.clamp_min(1e-12)).view(1, -1)
    return dot / denom


def search(q: torch.Tensor, q_steps: torch.Tensor, keys: torch.Tensor, key_steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Most similar earlier-decoded position for each query row.

    q: (P, D) patches of the targets, decoded at q_steps (P,); keys: (K, D) patches of
    candidates decoded at key_steps (K,). Returns (index (P,), similarity S (P,)):
    S = max(cos, 0) and 0 with index 0 where no candidate was decoded before.
    Differentiable in S with respect to q and keys.
    """
    key_norm2 = (keys * keys).sum(1)
    index, score = [], []
    for start in range(0, len(q), SEARCH_BLOCK):
        qb = q[start : start + SEARCH_BLOCK]
        r = cosine(qb @ keys.T, (qb * qb).sum(1), key_norm2)
        visible = key_steps.view(1, -1) < q_steps[start : start + SEARCH_BLOCK].view(-1, 1)
        r = torch.where(visible, r, torch.full_like(r, -2.0))
        best = torch.argmax(r, 1)  # first maximum: the lowest index wins ties
        s = r.gather(1, best.view(-1, 1)).squeeze(1).clamp_min(0)
        index.append(best)
        score.append(s)
    return torch.cat(index), torch.cat(score)
