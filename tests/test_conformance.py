"""The conformance files (tests/conformance): every file decodes to the pixels its manifest lists, on this machine."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

from refcodec import codec
from refcodec.bitstream import BitstreamError, read_header
from refcodec.models import registry
from refcodec.synthesis import KERNEL_VARIABLE, KERNELS

FOLDER = Path(__file__).parent / "conformance"
MANIFEST = json.loads((FOLDER / "MANIFEST.json").read_text())


@pytest.mark.parametrize("kernel", [None, *KERNELS])
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_conformance_file_decodes_to_its_pixels(name, kernel, monkeypatch):
    """With the kernel the probe picks on this machine (None), and with each exact synthesis kernel forced."""
    if kernel:
        monkeypatch.setenv(KERNEL_VARIABLE, kernel)
    data = (FOLDER / name).read_bytes()
    assert len(data) <= 64 * 1024
    header = read_header(data)
    if registry.retired_reason(header.model, header.weights_hash):  # a retired model's or replaced weights' file: refused in one line
        with pytest.raises(BitstreamError, match=r"(was retired|were replaced) after refcodec \d+\.\d+\.\d+; decode its files with"):
            codec.decompress(data)
        return
    assert header.exact_synthesis
    image = codec.decompress(data)
    assert hashlib.sha256(image.convert("RGB").tobytes()).hexdigest() == MANIFEST[name]


def test_every_shipped_model_has_conformance_files():
    headers = [read_header((FOLDER / name).read_bytes()) for name in MANIFEST]
    covered = {(h.model, h.weights_hash) for h in headers}
    shipped = {(i, registry.load_model(i).weights_hash()) for i in registry.shipped_ids()}
    assert shipped <= covered  # a newly shipped model or new weights: run scripts/conformance.py
    assert sorted(p.name for p in FOLDER.glob("*.rfc")) == sorted(MANIFEST)


def test_the_script_refuses_a_manifest_whose_files_decode_to_other_pixels(tmp_path, monkeypatch, capsys):
    script = load_script("conformance")
    shipped = registry.load_model("grm/small/vr").weights_hash()
    name = next(n for n in sorted(MANIFEST) if n.endswith("gray-53x70.rfc") and read_header((FOLDER / n).read_bytes()).weights_hash == shipped)
    (tmp_path / name).write_bytes((FOLDER / name).read_bytes())
    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({name: "0" * 64}))
    monkeypatch.setattr("sys.argv", ["conformance.py", "--folder", str(tmp_path)])
    assert script.main() == 1
    assert "format break" in capsys.readouterr().err
    assert json.loads(manifest.read_text()) == {name: "0" * 64} and sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "MANIFEST.json"])
    manifest.write_text(json.dumps({name: MANIFEST[name]}))
    monkeypatch.setattr("sys.argv", ["conformance.py", "--folder", str(tmp_path), "--check"])
    assert script.main() == 0


def test_files_of_replaced_weights_decode_with_the_weights_their_refusal_names(tmp_path):
    """docs/compatibility.md: a file whose weights a later release replaced is refused, and decodes to its
    manifest's pixels with this release and the old weights from the commit the refusal names."""
    root = FOLDER.parents[1]
    old = [n for n in sorted(MANIFEST) if registry.replaced().get(read_header((FOLDER / n).read_bytes()).weights_hash.hex())]
    if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=root, capture_output=True).returncode:
        pytest.skip("needs the git history of the weights")
    assert old  # today: 126 of the 148 files
    weights = {}
    for name in old:
        header = read_header((FOLDER / name).read_bytes())
        entry = registry.replaced()[header.weights_hash.hex()]
        if entry["commit"] not in weights:
            blob = subprocess.run(["git", "show", f"{entry['commit']}:{registry.WEIGHTS_IN_GIT}/{registry.weights_path(header.model).name}"],
                                  cwd=root, capture_output=True)  # fmt: skip
            if blob.returncode:
                pytest.skip(f"the clone lacks commit {entry['commit'][:12]}")
            (tmp_path / f"{entry['commit']}.safetensors").write_bytes(blob.stdout)
            weights[entry["commit"]] = registry.load_model(str(tmp_path / f"{entry['commit']}.safetensors"))
        model = weights[entry["commit"]]
        assert model.weights_hash() == header.weights_hash
        image = codec.decompress((FOLDER / name).read_bytes(), model)
        assert hashlib.sha256(image.convert("RGB").tobytes()).hexdigest() == MANIFEST[name], name
