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


def test_summarize_skips_missing_values_without_a_warning():
    import math
    import warnings

    from refcodec.eval.evaluate import summarize

    rows = [{"image": "a", "ms-ssim-rgb": math.nan, "bpp": 1.0}, {"image": "b", "ms-ssim-rgb": math.nan, "bpp": 3.0}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" would fail here
        mean = summarize(rows)
    assert mean["bpp"] == 2.0 and math.isnan(mean["ms-ssim-rgb"])
    assert summarize([{"image": "a", "ms-ssim-rgb": 0.9}, {"image": "b", "ms-ssim-rgb": math.nan}]) == {"ms-ssim-rgb": 0.9}
