"""scripts/fuzz_decoder.py, short: every mutation class, only decodes and refcodec's own errors."""

from conftest import load_script


def test_fuzzer_finds_only_decodes_and_refcodec_errors():
    fuzz = load_script("fuzz_decoder")
    report = fuzz.fuzz(400, seed=1, time_limit=30.0)
    assert report["failures"] == 0, report["failure_examples"][:3]
    assert report["decoded"] + report["refcodec_errors"] == 400
    assert report["decoded"] > 0 and report["refcodec_errors"] > 0
    assert all(sum(outcomes.values()) == 40 for outcomes in report["by_mutation"].values())  # every class ran
    assert all("weights hash mismatch" in outcome for outcome in report["by_mutation"]["other weights"])
    assert any("over the limit" in outcome for outcome in report["by_mutation"]["huge size"])
