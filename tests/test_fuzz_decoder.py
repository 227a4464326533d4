"""scripts/fuzz_decoder.py, short: every mutation class, only decodes and refcodec's own errors."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "fuzz_decoder.py"


def load_script():
    spec = importlib.util.spec_from_file_location("fuzz_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzzer_finds_only_decodes_and_refcodec_errors():
    fuzz = load_script()
    report = fuzz.fuzz(400, seed=1, time_limit=30.0)
    assert report["failures"] == 0, report["failure_examples"][:3]
    assert report["decoded"] + report["refcodec_errors"] == 400
    assert report["decoded"] > 0 and report["refcodec_errors"] > 0
    assert all(sum(outcomes.values()) == 40 for outcomes in report["by_mutation"].values())  # every class ran
    assert all("weights hash mismatch" in outcome for outcome in report["by_mutation"]["other weights"])
    assert any("over the limit" in outcome for outcome in report["by_mutation"]["huge size"])
