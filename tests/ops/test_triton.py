"""Runs ``triton_cases.py`` in a subprocess with ``TRITON_INTERPRET=1`` (how CPU-only CI tests the
Triton kernels): the interpreter must be on before triton kernels are defined, and keeping it in a
child process leaves the rest of the suite untouched and fast."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

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


# ------------------------------------------------------------------ pure-torch pieces, no interpreter
def test_row_split_schedule_covers_every_edge_once():
    from graphscale_triton.schedule import build_schedule, default_chunk
    deg = torch.tensor([0, 3, 50, 7, 0, 24, 25, 1])
    rowptr = torch.zeros(deg.numel() + 1, dtype=torch.long)
    rowptr[1:] = deg.cumsum(0)
    assert build_schedule(rowptr, 50) is None            # no row longer than the chunk: one program per row
    s = build_schedule(rowptr, 12)
    assert s.chunk == 12 and s.num_items == 1 + 1 + 5 + 1 + 1 + 2 + 3 + 1
    covered = torch.zeros(int(rowptr[-1]), dtype=torch.long)
    for r, st in zip(s.item_row.tolist(), s.item_start.tolist()):
        end = min(st + 12, int(rowptr[r + 1]))
        assert int(rowptr[r]) <= st and (st < end or deg[r] == 0)
        covered[st:end] += 1
    assert torch.equal(covered, torch.ones_like(covered))  # every edge in exactly one item
    assert s.split_row.tolist() == [2, 5, 6]               # rows with more than 12 edges
    assert s.split_ptr.tolist() == [0, 5, 7, 10] and s.num_partials == 10
    # items of split rows get consecutive slots in chunk order; whole rows write directly (-1)
    slots = {r: [sl for rr, sl in zip(s.item_row.tolist(), s.item_slot.tolist()) if rr == r] for r in range(8)}
    assert slots[2] == [0, 1, 2, 3, 4] and slots[5] == [5, 6] and slots[6] == [7, 8, 9]
    assert slots[0] == [-1] and slots[1] == [-1] and slots[7] == [-1]
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        build_schedule(rowptr, 0)
    assert default_chunk(169_343, 2_332_486) == 256 and default_chunk(1000, 100_000) == 1024


def test_config_pinning_from_the_environment(monkeypatch):
    pytest.importorskip("triton")
    from graphscale_triton import spmm  # noqa: F401  (registers the kernels)
    from graphscale_triton.tuning import ENV, pinned_index
    monkeypatch.setenv(ENV, "spmm_fwd=3, spmm_bwd=1")
    assert pinned_index("spmm_fwd") == 3 and pinned_index("spmm_bwd") == 1 and pinned_index("quantize") is None
    monkeypatch.setenv(ENV, "*=0,spmm_bwd=2")
    assert pinned_index("spmm_fwd") == 0 and pinned_index("spmm_bwd") == 2
    monkeypatch.setenv(ENV, "spmm_fwd")
    with pytest.raises(ValueError, match="name=index pairs"):
        pinned_index("spmm_fwd")
    monkeypatch.setenv(ENV, "spmmfwd=1")
    with pytest.raises(ValueError, match="unknown kernel 'spmmfwd'"):
        pinned_index("spmm_fwd")


def test_bad_chunk_setting_is_a_config_error(monkeypatch):
    from graphscale.errors import ConfigError
    from graphscale.ops import CSR
    from graphscale.ops.triton_ops import CHUNK_ENV, schedule_of
    adj = CSR.from_edge_index(torch.tensor([[1, 2, 3, 1], [0, 0, 0, 2]]), 4)
    monkeypatch.setenv(CHUNK_ENV, "lots")
    with pytest.raises(ConfigError, match="GRAPHSCALE_TRITON_CHUNK='lots'"):
        schedule_of(adj)
    monkeypatch.setenv(CHUNK_ENV, "2")
    s = schedule_of(adj)
    assert s.split_row.tolist() == [0] and schedule_of(adj) is s  # cached on the CSR
    monkeypatch.setenv(CHUNK_ENV, "off")
    assert schedule_of(adj) is None
