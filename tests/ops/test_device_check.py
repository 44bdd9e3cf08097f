"""``benchmarks/device_check.sh OUTDIR --dry-run``: the GPU verification script rehearsed on CPU.

Runs the whole dry run once (all five steps at tiny sizes: Triton interpreter, CPU memory
accounting, gloo) and checks what a GPU session will rely on: the exit status, at most 8 files,
every step reported in summary.json and in the printed table, and a failing step named and
stopping the run."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from graphscale import _features

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
STEPS = ["a kernels", "b spmm", "c memory", "d quickstart", "e gloo"]


def _run(out: pathlib.Path, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, **(env_extra or {}))
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", str(SCRIPT), str(out), *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.skipif(not _features.WITH_TRITON, reason="needs triton (ogb is a dependency)")
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "check"
    proc = _run(out, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    assert {"summary.json", "log.txt", "spmm.csv", "spmm.json", "memory_depth.csv", "memory_depth.json"} <= set(files)
    doc = json.loads((out / "summary.json").read_text())
    assert doc["dry_run"] is True and doc["failed_step"] is None
    steps = {s["step"]: s for s in doc["steps"]}
    assert list(steps) == STEPS
    for name in STEPS[:4]:
        assert steps[name]["status"] == "ok", steps[name]
    # step e needs `graphscale train --distributed`; until it exists the dry run skips it and says so
    e = steps["e gloo"]
    assert e["status"] == "ok" or e["status"] == "skipped: needs flag --distributed", e
    if e["status"] == "ok":
        assert e["numbers"]["backend"] == "gloo"
    else:
        assert "needs flag `graphscale train --distributed`" in proc.stdout
    assert " passed" in steps["a kernels"]["numbers"]["pytest"]
    # the numbers were read back from the steps' own result files
    spmm_rows = json.loads((out / "spmm.json").read_text())["rows"]
    assert {r["op"] for r in spmm_rows} >= {"sum", "mean", "max", "softmax"}
    assert any("torch.sparse.mm" in k for k in steps["b spmm"]["numbers"])
    assert all("[dry run: not the target]" in t["detail"] for t in steps["b spmm"]["targets"])
    mem = steps["c memory"]["numbers"]
    assert set(mem["reversible peak MiB by depth (cpu_peak_rss)"]) == {"1", "2"}
    d = steps["d quickstart"]["numbers"]
    assert d["quickstart"]["device"] == "cpu" and d["revgnn 2-bit 1 epoch"]["peak MiB"] > 0
    # the summary table is printed, one line per step
    table = proc.stdout[proc.stdout.index("step "):]
    for name in STEPS:
        assert name in table


def test_refuses_a_non_empty_outdir(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode != 0 and "is not empty" in proc.stderr


def _module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_first_failing_step_stops_the_run(tmp_path, monkeypatch, capsys):
    # A step whose command fails (here: a Python error standing in for a kernel error) stops the run:
    # exit 1, the step named, later steps not started, summary.json still written.
    dc = _module()
    boom = [sys.executable, "-c", "raise RuntimeError('triton compile failed: kernel X')"]
    never = [sys.executable, "-c", "open('never_ran', 'w')"]
    monkeypatch.setattr(dc, "plan", lambda dry, tmp, out: [dict(name="a kernels", timeout=60, cmds=[boom]),
                                                            dict(name="b spmm", timeout=60, cmds=[never])])
    monkeypatch.setattr(dc, "preflight", lambda dry: None)
    out = tmp_path / "check"
    assert dc.main([str(out), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "FAILED at step 'a kernels'" in err and "triton compile failed: kernel X" in err
    doc = json.loads((out / "summary.json").read_text())
    assert doc["failed_step"] == "a kernels" and [s["step"] for s in doc["steps"]] == ["a kernels"]
    assert not (dc.ROOT / "never_ran").exists()
    assert "triton compile failed" in (out / "log.txt").read_text()


def test_a_timeout_is_a_failure(tmp_path, monkeypatch, capsys):
    dc = _module()
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    monkeypatch.setattr(dc, "plan", lambda dry, tmp, out: [dict(name="c memory", timeout=1, cmds=[slow])])
    monkeypatch.setattr(dc, "preflight", lambda dry: None)
    assert dc.main([str(tmp_path / "check"), "--dry-run"]) == 1
    assert "FAILED at step 'c memory'" in capsys.readouterr().err and "(timeout)" in \
        json.loads((tmp_path / "check" / "summary.json").read_text())["steps"][0]["error"]
