"""The allocator policy (onnxverify.backend.memory): freed large arrays stay with the process
(reused without page faults) unless $ONNXVERIFY_KEEP_MEMORY=0; checked by the RSS of a fresh
process after freeing a 256 MB array."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the policy acts on glibc only")

SCRIPT = """
import numpy as np
from onnxverify.backend import get_backend, memory
get_backend("numpy")
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
a = np.ones(64 * 2**20, dtype=np.float32)  # 256 MB, touched
before = rss()
del a
print(memory.apply(), before - rss())
"""


def _run(keep):
    env = dict(os.environ, ONNXVERIFY_KEEP_MEMORY=keep)
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    kept, released = out.stdout.split()
    return kept == "True", float(released)


def test_freed_memory_is_kept_for_reuse():
    kept, released = _run("1")
    assert kept
    assert released < 32  # MB: the 256 MB block stays in the heap


def test_opt_out_leaves_glibc_defaults():
    kept, released = _run("0")
    assert not kept
    assert released > 200  # munmap'd at once
