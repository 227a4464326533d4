"""The software versions a record names: refcodec's, and those of the libraries its results depend on.

``refcodec --version``, ``refcodec info`` and the ``refcodec eval`` JSON carry them, so that a file,
a measurement or a problem report can be tied to the code that made it. torch's version is read from
its installed metadata where torch is not imported yet: importing it takes seconds, and ``refcodec
info`` does not need it.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

import numpy
import PIL

from . import __version__


def _torch_version() -> str:
    """The running torch's version, else the installed one's, without importing torch where its metadata says it."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:  # a torch installed without metadata
        try:
            import torch
        except ImportError:
            return "not installed"
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
