"""refcodec eval: real bitstream sizes, metrics and the CompressAI results layout."""

import json

import pytest
import torch

import refcodec

from refcodec.eval.evaluate import main

from conftest import natural_image


def test_eval_writes_compressai_layout(tmp_path, tiny_weights):
    for i in range(2):
        natural_image(200, 176, seed=i).save(tmp_path / f"{i}.png")
    out = tmp_path / "r.json"
    assert main([str(tmp_path), "--model", str(tiny_weights), "--estimate", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"name", "description", "results"}
    assert report["versions"]["refcodec"] == refcodec.__version__ and report["versions"]["torch"] == torch.__version__
    results = report["results"]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "estimate_gap"):
        assert len(results[key]) == 1
    rows = report["per_image"]["grm/test/q3"]
    assert results["bpp"][0] == pytest.approx(sum(r["bpp"] for r in rows) / 2)
    assert all(r["bpp"] > r["payload_bpp"] for r in rows)  # the file includes its header
