"""Runs ``triton_cases.py`` in a subprocess with ``TRITON_INTERPRET=1`` (how CPU-only CI tests the
Triton kernels): the interpreter must be on before triton kernels are defined, and keeping it in a
child process leaves the rest of the suite untouched and fast."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from graphscale import _features

HERE = pathlib.Path(__file__).resolve().parent


@pytest.mark.skipif(not _features.WITH_TRITON, reason="triton is not installed")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("GRAPHSCALE_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(HERE / "triton_cases.py")], cwd=HERE.parents[1], env=env,
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
