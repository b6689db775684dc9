"""Run Python in a process that sees an AVX2 x86 CPU without AVX-512 or VNNI (`qemu-x86_64 -cpu Haswell-v4`,
Debian's qemu-user; .ci/run installs it): libraries that pick their kernels from CPUID then take that CPU's path."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs Debian's qemu-user (.ci/run installs it)")


def run_on_avx2(code: str, *args: object) -> None:
    """Run `code` (`python -c`, with `args` as sys.argv[1:]) from the repository root; fail with its stderr."""
    done = subprocess.run([QEMU, "-cpu", "Haswell-v4", sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
