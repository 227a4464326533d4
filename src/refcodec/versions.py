"""The software versions a record names: refcodec's, and those of the libraries its results depend on.

``refcodec --version``, ``refcodec info`` and the ``refcodec eval`` JSON carry them, so that a file,
a measurement or a problem report can be tied to the code that made it. Like ``refcodec.bitstream``,
this module loads without torch, and asking it does not import torch.
"""

from __future__ import annotations

import ast
import importlib.util
import platform
import sys
from pathlib import Path

import numpy
import PIL

from . import __version__


def _torch_version() -> str:
    """``torch.__version__``, build tag included (``2.3.1+cu121``; the package metadata says ``2.3.1``).

    Read from torch's ``version.py`` unless torch is imported already: importing it takes seconds.
    """
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "not installed"
    try:
        body = ast.parse(Path(spec.origin).with_name("version.py").read_text()).body
    except (OSError, SyntaxError):
        body = []
    for node in body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                return str(node.value.value)
    import torch  # a torch without the usual version.py

    return torch.__version__


def versions() -> dict[str, str]:
    """``{"refcodec": ..., "torch": ..., "numpy": ..., "Pillow": ..., "Python": ...}`` of this process."""
    return {
        "refcodec": __version__,
        "torch": _torch_version(),
        "numpy": numpy.__version__,
        "Pillow": PIL.__version__,
        "Python": platform.python_version(),
    }


def describe() -> str:
    """One line for people: ``refcodec 0.2.0, torch 2.13.0+cpu, numpy 2.4.6, Pillow 13.0.0, Python 3.11.7``."""
    return ", ".join(f"{name} {version}" for name, version in versions().items())
