"""glibc malloc settings of the command line: added once to the environment and the process restarted with them
(training), or set in the running process (the other commands)."""

import platform
import subprocess
import sys

import pytest

from refcodec import allocator

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc tunables")


@glibc
def test_tunables_are_added_to_the_environment_unless_malloc_is_already_set():
    assert allocator.environment({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.TUNABLES}
    other = allocator.environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert other["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + allocator.TUNABLES
    assert allocator.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None  # the user's choice stays


@glibc
def test_reexec_restarts_the_command_once_with_the_tunables():
    code = "import os; from refcodec import allocator; print('start', flush=True); allocator.reexec(); print(os.environ['GLIBC_TUNABLES'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["start", "start"] and len(out) == 3
    assert all(t in out[2].split(":") for t in allocator.TUNABLES.split(":"))


@glibc
def test_configure_sets_malloc_in_this_process_unless_the_user_did():
    code = ("import resource, torch; from refcodec import allocator; print(allocator.configure()); "
            "f = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt; blocks = lambda n: any(torch.ones(2**23).sum() < 0 "
            "for _ in range(n)); blocks(3); start = f(); blocks(8); print(f() - start)")  # 32 MiB each, freed in turn
    env = {k: v for k, v in __import__("os").environ.items() if k != "GLIBC_TUNABLES"}
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    configured, kept = run(env), run({**env, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert configured[0] == "True" and kept[0] == "False"
    assert 2 * int(configured[1]) < int(kept[1])  # 8 blocks of 8,192 pages: mostly reused, or faulted in every time
