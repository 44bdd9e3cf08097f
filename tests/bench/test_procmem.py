"""USS / PSS / RSS from /proc/PID/smaps_rollup on child processes with a known layout.

Each child first reports its baseline, then allocates ``A`` bytes of private anonymous memory
(every page written) and maps a ``F``-byte file read-only (every page read). Two such children map
the same file, so its pages are shared by two processes: from baseline to loaded, each child's USS
grows by ``A`` only, its PSS by ``A + F/2``, its RSS by ``A + F``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from graphscale.bench.procmem import ProcessTreeSampler, read_smaps_rollup

MiB = 2**20
A, F = 48 * MiB, 64 * MiB
CHILD = r"""
import mmap, sys
A, path = int(sys.argv[1]), sys.argv[2]
sys.stdout.write("base\n"); sys.stdout.flush(); sys.stdin.readline()
buf = bytearray(A)
for i in range(0, A, 4096):
    buf[i] = 1  # private, dirty
f = open(path, "rb")
m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
s = 0
for i in range(0, len(m), 4096):
    s += m[i]  # file-backed, clean, shared with the other child
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
"""

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="needs Linux smaps_rollup")


def test_private_and_shared_file_memory_are_told_apart(tmp_path):
    path = tmp_path / "shared.bin"
    path.write_bytes(os.urandom(F))
    kids = [subprocess.Popen([sys.executable, "-c", CHILD, str(A), str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, RANK=str(r)))
            for r in range(2)]
    try:
        for k in kids:
            assert k.stdout.readline().strip() == "base"
        base = [read_smaps_rollup(k.pid) for k in kids]
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        for k in kids:
            assert k.stdout.readline().strip() == "ready"
        sampler = ProcessTreeSampler(os.getpid(), timeline=True)
        t0 = time.monotonic()
        sampler.sample()
        loaded = [read_smaps_rollup(k.pid) for k in kids]
    finally:
        for k in kids:
            k.kill()
            k.wait()
    tol = 6 * MiB  # interpreter bookkeeping, page tables, the mmap module
    for b, m in zip(base, loaded):
        assert abs((m.uss - b.uss) - A) < tol, (m.uss - b.uss) / MiB
        assert abs((m.pss - b.pss) - (A + F / 2)) < tol, (m.pss - b.pss) / MiB
        assert abs((m.rss - b.rss) - (A + F)) < tol, (m.rss - b.rss) / MiB
        assert m.pss_file - b.pss_file == pytest.approx(F / 2, abs=tol)
    # the sampler found both children by walking the tree below this process, with their ranks
    ranks = sampler.ranks()
    assert {0, 1} <= set(ranks)
    for r, k in enumerate(kids):
        assert ranks[r].pid == k.pid and ranks[r].peak.uss >= base[r].uss + A - tol
        assert sampler.window_peak(k.pid, t0, time.monotonic()).uss == ranks[r].peak.uss
        assert sampler.window_peak(k.pid, 0.0, t0 - 1e-6) is None  # no sample before t0


def test_peak_is_kept_per_process(tmp_path):
    kid = subprocess.Popen([sys.executable, "-c", CHILD, str(A), os.devnull.replace("null", "zero")],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert kid.stdout.readline().strip() == "base"
        s = ProcessTreeSampler(os.getpid())
        s.sample()
        low = s.procs[kid.pid].peak.uss
        assert read_smaps_rollup(10**9) is None  # no such process
    finally:
        kid.kill()
        kid.wait()
    s.sample()  # the child is gone: its record keeps its peak
    assert s.procs[kid.pid].peak.uss == low and s.procs[kid.pid].samples == 1
