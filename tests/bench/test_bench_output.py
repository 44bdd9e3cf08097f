"""graphscale.bench.output (the one way benchmarks write), the bench CLIs' help, the depth plot's axes."""
from __future__ import annotations

import argparse
import json
import os
import re

import pytest

from graphscale.bench.output import EmptyResultError, ResultExistsError, ResultWriter, add_output_args


def _writer(tmp_path, **kw) -> ResultWriter:
    return ResultWriter("demo", str(tmp_path / "out"), **kw)


def test_empty_table_is_never_written(tmp_path):
    w = _writer(tmp_path)
    with pytest.raises(EmptyResultError, match="no result rows"):
        w.write_table("t", [])
    assert not (tmp_path / "out" / "t.csv").exists() and not (tmp_path / "out" / "t.json").exists()


def test_existing_file_needs_overwrite_and_the_run_may_rewrite_its_own(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.json").write_text("old")
    w = _writer(tmp_path)
    with pytest.raises(ResultExistsError, match="t.json exists"):
        w.check("t")
    with pytest.raises(ResultExistsError):
        w.write_table("t", [{"a": 1}])
    assert (out / "t.json").read_text() == "old"
    # a file this run wrote itself may be rewritten (incremental results), a second table stem not yet
    w.write_table("u", [{"a": 1}])
    w.write_table("u", [{"a": 1}, {"a": 2, "b": [1, 2]}], extra={"note": "x"})
    doc = json.loads((out / "u.json").read_text())
    assert [r["a"] for r in doc["rows"]] == [1, 2] and doc["note"] == "x" and doc["benchmark"] == "demo"
    assert (out / "u.csv").read_text().splitlines() == ["a,b", "1,", '2,"[1, 2]"']  # replaced, not appended
    # with overwrite the old file is replaced
    w2 = _writer(tmp_path, overwrite=True)
    w2.check("t")
    w2.write_table("t", [{"a": 3}])
    assert json.loads((out / "t.json").read_text())["rows"] == [{"a": 3}]


def test_csv_exclude_keeps_columns_in_the_json_only(tmp_path):
    w = _writer(tmp_path)
    csv_path, json_path = w.write_table("t", [{"a": 1, "curve": [1, 2, 3]}], csv_exclude=("curve",))
    assert open(csv_path).read().splitlines() == ["a", "1"]
    assert json.load(open(json_path))["rows"][0]["curve"] == [1, 2, 3]


def test_default_folder_is_fresh_and_under_runs_bench(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser()
    add_output_args(p, "demo")
    a = ResultWriter.from_args(p.parse_args([]), "demo")
    assert re.fullmatch(r"runs/bench/demo-\d{8}-\d{6}", a.out)
    a.write_table("t", [{"x": 1}])
    b = ResultWriter.from_args(p.parse_args([]), "demo")
    assert b.out != a.out and not os.path.exists(b.out)
    env = a.env
    assert len(env["load_average_at_start"]) == 3 and "torch" in env and "git_commit" in env


def _subparser(*path):
    from graphscale.cli import build_parser
    p = build_parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


@pytest.mark.parametrize("bench", ["memory-depth", "compression"])
def test_bench_help_is_plain_text_and_every_option_has_help(bench):
    p = _subparser("bench", bench)
    text = p.format_help()
    for markup in ("``", ":class:", ":func:", ":mod:", ".. "):
        assert markup not in text, f"{bench} --help shows {markup!r}"
    no_help = [a.option_strings for a in p._actions if a.option_strings and not (a.help or "").strip()]
    assert no_help == []


def test_log_axis_gets_more_than_two_labelled_ticks_and_narrow_ranges_stay_linear():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from graphscale.bench.memory_depth import _y_axis
    fig, (a, b) = plt.subplots(1, 2)
    a.plot([1, 10], [1.2, 1100])
    _y_axis(a, [1.2, 1100], "MiB")
    ticks = [t for t in a.get_yticks() if a.get_ylim()[0] <= t <= a.get_ylim()[1]]
    assert a.get_yscale() == "log" and len(ticks) > 2
    assert a.yaxis.get_major_formatter()(ticks[0], 0) == f"{ticks[0]:g}"  # plain numbers, not 10^k
    b.plot([1, 10], [1.2, 3.7])
    _y_axis(b, [1.2, 3.7], "MiB")
    assert b.get_yscale() == "linear" and b.get_ylim()[0] == 0
    plt.close(fig)


def test_coinciding_lines_are_found():
    from graphscale.bench.memory_depth import _coinciding
    same = [(1, 1.22), (10, 1.22)]
    assert _coinciding({"reversible": same, "wt-reversible": list(same), "pyg-rev": list(same),
                        "residual": [(1, 5.7), (10, 39.0)]}) == [["reversible", "wt-reversible", "pyg-rev"]]
