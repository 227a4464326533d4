"""Training's glibc malloc settings: added once to the environment, and the process restarted with them."""

import platform
import subprocess
import sys

import pytest

from refcodec.train import allocator

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables")


@glibc
def test_tunables_are_added_to_the_environment_unless_malloc_is_already_set():
    assert allocator.environment({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.TUNABLES}
    other = allocator.environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert other["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + allocator.TUNABLES
    assert allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None  # the user's choice stays


@glibc
def test_reexec_restarts_the_command_once_with_the_tunables():
    code = "import os; from refcodec.train import allocator; print('start', flush=True); allocator.reexec(); print(os.environ['GLIBC_TUNABLES'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["start", "start"] and len(out) == 3
    assert all(t in out[2].split(":") for t in allocator.TUNABLES.split(":"))
