"""versions.py: the versions that --version, info and the eval JSON record."""

import platform
import subprocess
import sys

import numpy
import PIL
import torch

import refcodec
from refcodec.versions import versions


def test_versions_are_those_of_this_process():
    assert versions() == {"refcodec": refcodec.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
                          "Pillow": PIL.__version__, "Python": platform.python_version()}  # fmt: skip


def test_torch_version_is_read_without_importing_torch():
    code = "import sys; from refcodec.versions import versions; v = versions(); assert 'torch' not in sys.modules; print(v['torch'])"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == torch.__version__
