"""Parameters and multiply-accumulates of every module: the paper's Tables 2 and 3, for refcodec's models.

    python scripts/complexity.py -o results/complexity

Counted with ``torch.utils.flop_counter`` on meta tensors (shapes only, nothing is computed).
Like the paper, GFLOPs here are multiply-accumulates (GMACs), and a masked convolution counts its
whole kernel. The reference search counts one D-long dot product for every (query, key decoded
before it) pair, as refcodec's coder computes it (``layers.reference.ReferenceIndex``); the
paper's search, which it calls naive, computes all N^2 pairs (given alongside).

Table 2: per module, ``joint`` and ``grm`` at the paper preset on a 512x768 image.
Table 3: the entropy model (context, reference, hyper decoder, parameter networks) of ``grm`` at
the paper preset, with the reference's share, from 240p to 4K (sizes padded to multiples of 64).
Writes complexity.json and complexity.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from refcodec.models import registry
from refcodec.models.base import ALIGNMENT, STRIDE

SIZES = {"240p": (426, 240), "360p": (640, 360), "480p": (854, 480), "512x768": (768, 512),
         "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}  # fmt: skip


def gmacs(fn, *inputs) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() / 2e9


def params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def search_macs(model, h: int, w: int) -> tuple[float, float]:
    """(GMACs over earlier-decoded pairs, GMACs over all N^2 pairs) of the reference search."""
    steps = model.schedule.steps(h, w).flatten()
    earlier = torch.searchsorted(torch.sort(steps).values, steps).sum().item()  # keys decoded before each query
    dim = model.M * int(model.schedule.visible(model.transfer.kernel_size[0], False).sum())  # masked patch length
    return earlier * dim / 1e9, (h * w) ** 2 * dim / 1e9


def modules(name: str, width: int, height: int) -> dict:
    """Parameters and GMACs of each module of a model at the paper preset, for one image size."""
    model = registry.build(name, "paper").to("meta").eval()
    w, h = -(-width // ALIGNMENT) * ALIGNMENT, -(-height // ALIGNMENT) * ALIGNMENT
    x = torch.empty(1, 3, h, w, device="meta")
    y = torch.empty(1, model.M, h // STRIDE, w // STRIDE, device="meta")
    z = torch.empty(1, model.N, h // STRIDE // 4, w // STRIDE // 4, device="meta")
    out = {
        "encoder": (params(model.g_a), gmacs(model.g_a, x)),
        "decoder": (params(model.g_s), gmacs(model.g_s, y)),
        "hyper encoder": (params(model.h_a), gmacs(model.h_a, y)),
        "hyper decoder": (params(model.h_s), gmacs(model.h_s, z)),
        "context model": (params(model.context), gmacs(model.context, y)),
    }
    if model.reference:
        found, naive = search_macs(model, y.shape[2], y.shape[3])
        out["reference model"] = (params(model.transfer), gmacs(model.transfer, y) + found)
        out["reference search alone"] = (0, found)
        out["reference search, all N^2 pairs"] = (0, naive)
    nets = 0.0
    for net in model.param_nets:
        nets += gmacs(net, torch.empty(1, net[0].in_channels, *y.shape[2:], device="meta"))
    out["parameter networks"] = (params(model.param_nets), nets)
    return {k: {"parameters": p, "gmacs": round(g, 2)} for k, (p, g) in out.items()}


ENTROPY = ("hyper decoder", "context model", "reference model", "parameter networks")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()
    table2 = {name: modules(name, 768, 512) for name in ("joint", "grm")}
    table3 = {}
    for size, (w, h) in SIZES.items():
        m = modules("grm", w, h)
        entropy = sum(m[k]["gmacs"] for k in ENTROPY)
        table3[size] = {"entropy_gmacs": round(entropy, 2), "reference_share": round(m["reference model"]["gmacs"] / entropy, 4),
                        "reference_share_naive_search": round((m["reference model"]["gmacs"] - m["reference search alone"]["gmacs"]
                                                               + m["reference search, all N^2 pairs"]["gmacs"])
                                                              / (entropy - m["reference search alone"]["gmacs"]
                                                                 + m["reference search, all N^2 pairs"]["gmacs"]), 4)}  # fmt: skip
    lines = ["Table 2: parameters (millions) and GMACs of each module at the paper preset (N=192, M=384), 512x768 image.\n",
             "| module | joint params (M) | joint GMACs | grm params (M) | grm GMACs |", "|---|---|---|---|---|"]  # fmt: skip
    for k in table2["grm"]:
        j, g = table2["joint"].get(k), table2["grm"][k]
        jp = f"{j['parameters'] / 1e6:.2f} | {j['gmacs']:.2f}" if j else "- | -"
        lines.append(f"| {k} | {jp} | {g['parameters'] / 1e6:.2f} | {g['gmacs']:.2f} |")
    lines += ["\nTable 3: GMACs of grm's entropy model (hyper decoder, context, reference, parameter networks) and the "
              "reference's share, with refcodec's search and with a search over all N^2 pairs.\n",
              "| size | entropy model GMACs | reference share | reference share, N^2 search |", "|---|---|---|---|"]  # fmt: skip
    for size, r in table3.items():
        lines.append(f"| {size} | {r['entropy_gmacs']:.2f} | {r['reference_share']:.1%} | {r['reference_share_naive_search']:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "complexity.json").write_text(json.dumps({"table2": table2, "table3": table3}, indent=1) + "\n")
        (args.output / "complexity.md").write_text(text)


if __name__ == "__main__":
    main()
