"""scripts/determinism.py: the machine it records, and its comparison with another machine's run."""

from refcodec.models import registry

from conftest import load_script


def run(files: dict, pixels: dict) -> dict:
    return {"models": {"m": {"per_image": {i: {"file_sha256": {"1": files[i]}, "pixels_sha256": {"enc1-dec1": pixels[i]}} for i in files}}}}


def test_the_machine_names_its_cpu_and_instruction_sets():
    machine = load_script("determinism").machine()
    assert machine["cpu"] and machine["torch_cpu_capability"] and isinstance(machine["instruction_sets"], list)
    assert set(machine["instruction_sets"]) <= load_script("determinism").INSTRUCTION_SETS


def test_a_file_identical_on_two_machines_must_decode_to_the_same_pixels_there():
    compare = load_script("determinism").compare
    mine = run({"a": "f1", "b": "f2", "c": "f3"}, {"a": "p1", "b": "p2", "c": "p3"})
    other = run({"a": "f1", "b": "other encoder", "c": "f3"}, {"a": "p1", "b": "px", "c": "p3"}) | {"machine": {"cpu": "X"}}
    result = compare(mine, other)
    assert result["models"]["m"] == {"images": 3, "same_bytes": 2, "same_pixels_of_same_bytes": 2} and result["failures"] == 0
    broken = run({"a": "f1", "b": "f2", "c": "f3"}, {"a": "p1", "b": "p2", "c": "another picture"})
    assert compare(mine, broken)["failures"] == 1


def test_a_variable_rate_model_is_run_at_several_qualities():
    script = load_script("determinism")
    variable = [i for i in registry.shipped_ids() if i.split("/")[2].startswith("vr")]  # the MSE and the MS-SSIM model
    assert "grm/small/vr" in variable and script.shipped_refs() == [f"{i}@{q}" for i in variable for q in ("1", "2.5", "8")]
    assert script.load("grm/small/vr@2.5").quality == 2.5 and script.load("grm/small/vr").quality == 3
