"""The result writer's rules, through ``graphscale bench memory-depth`` (benchmarks/README.md).

Bad options are errors naming the bad value, raised before anything is created or measured; the
default output is a fresh ``runs/bench/memory-depth-<timestamp>/`` folder; an existing result is
never replaced without ``--overwrite``; a run that measured nothing writes nothing. The measuring
runs use a 60-node graph and depth 1 so that each takes seconds.
"""
from __future__ import annotations

import csv
import json
import os

import pytest

from graphscale.cli import main

# one configuration on a tiny graph: one measuring process of a few seconds
TINY = ["--models", "residual", "--depths", "1", "--nodes", "60", "--edges", "240", "--channels", "8",
        "--steps", "1", "--no-profile", "--threads", "1"]


def _bench(*args: str) -> int:
    return main(["bench", "memory-depth", *args])


@pytest.mark.parametrize("depths, named", [
    ("", "''"),
    ("0,-1,abc", "'0', '-1', 'abc'"),
    ("10,,20", "''"),
    ("1.5", "'1.5'"),
])
def test_bad_depths_are_errors_naming_them_and_write_nothing(depths, named, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench("--quick", "--depths", depths, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"--depths {depths!r}" in err and named in err and "Traceback" not in err
    assert not out.exists()  # checked before the output folder is even created


@pytest.mark.parametrize("args, named", [
    (["--models", "residual,resnet"], "'resnet'"),
    (["--steps", "0"], "--steps 0"),
    (["--groups", "3"], "--groups 3"),
    (["--linear-max-depth", "5", "--models", "residual", "--depths", "10"], "--linear-max-depth 5"),
    (["--tag", "../x"], "--tag '../x'"),
])
def test_other_bad_options_are_errors_before_anything_is_created(args, named, tmp_path, capsys):
    out = tmp_path / "out"
    assert _bench("--quick", *args, "--out", str(out)) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_default_output_is_a_fresh_runs_bench_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _bench(*TINY) == 0
    folders = os.listdir(tmp_path / "runs" / "bench")
    assert len(folders) == 1 and folders[0].startswith("memory-depth-")
    run = tmp_path / "runs" / "bench" / folders[0]
    assert sorted(os.listdir(run)) == ["memory_depth.csv", "memory_depth.json", "memory_depth.png"]
    rows = list(csv.DictReader(open(run / "memory_depth.csv")))
    assert [(r["model"], r["depth"], r["error"]) for r in rows] == [("residual", "1", "")]
    assert int(rows[0]["activation_bytes"]) > 0
    doc = json.load(open(run / "memory_depth.json"))
    env = doc["environment"]
    assert len(env["load_average_at_start"]) == 3 and env["git_commit"] and env["torch"]
    assert doc["finished"] is True and doc["rows"][0]["model"] == "residual"
    assert open(run / "memory_depth.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_existing_result_is_kept_without_overwrite_and_replaced_with_it(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "memory_depth.png").write_bytes(b"committed figure")
    assert _bench(*TINY, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "memory_depth.png exists" in err and "--overwrite" in err
    assert os.listdir(out) == ["memory_depth.png"]  # refused before measuring: nothing else written
    assert (out / "memory_depth.png").read_bytes() == b"committed figure"

    assert _bench(*TINY, "--out", str(out), "--overwrite") == 0
    assert sorted(os.listdir(out)) == ["memory_depth.csv", "memory_depth.json", "memory_depth.png"]
    assert (out / "memory_depth.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_that_measured_nothing_writes_nothing(tmp_path, capsys):
    # every configuration fails (its process is stopped after 1 ms): an error, and no file at all
    out = tmp_path / "out"
    assert _bench(*TINY, "--timeout", "0.001", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "every configuration failed, nothing written" in err and "Timeout" in err
    assert not out.exists() or os.listdir(out) == []


def _row(model, depth, act, held=None):
    return {"model": model, "depth": depth, "nodes": 60, "edges": 240, "channels": 8, "groups": 2, "error": None,
            "activation_bytes": act, "held_bytes_profiler": held, "peak_bytes": 2**28, "peak_kind": "cpu_peak_rss",
            "process_base_rss": 2**27, "step_s": 0.01 * depth, "ms_per_layer": 10.0, "device": "cpu", "threads": 1}


def test_replot_draws_an_earlier_runs_rows_and_rejects_what_is_not_one(tmp_path, capsys):
    src = tmp_path / "old.json"
    rows = [_row(m, d, a * d if m == "residual" else a) for d in (1, 10) for m, a in
            (("residual", 5_000_000), ("reversible", 2_560_000), ("pyg-rev", 1_280_000))]
    src.write_text(json.dumps({"environment": {"torch": "x"}, "rows": rows}))
    out = tmp_path / "out"
    assert _bench("--replot", str(src), "--out", str(out)) == 0
    assert os.listdir(out) == ["memory_depth.png"]  # the figure only: the rows are the old run's
    assert (out / "memory_depth.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text("{}")
    assert _bench("--replot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "out2")) == 2
    assert "not the JSON of a memory-depth run" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
