"""``graphscale gntk`` end to end on a small GIN-format set written to a temporary folder."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch

from graphscale.cli import main
from graphscale.data.graph_classification import write_gin_txt
from graphscale.gntk.kernel import GNTKConfig, gram_matrix

from .conftest import random_graphs


def _write(root, name="TOY", count=30):
    gs = random_graphs(7, count, nmin=2, nmax=8)
    # label = whether the graph has more tag-0 than tag-1 nodes: learnable from one-hot sums
    labels = [int((g.tags == 0).sum() > (g.tags == 1).sum()) for g in gs]
    folds = [(np.setdiff1d(np.arange(count), te), te) for te in np.array_split(np.arange(count), 10)]
    write_gin_txt(os.path.join(root, name, f"{name}.txt"), gs, labels, folds)
    return gs


def test_cli_gram_and_cv(tmp_path, capsys):
    gs = _write(tmp_path / "data")
    out = tmp_path / "res" / "toy.npy"
    rc = main(["gntk", "--data", str(tmp_path / "data"), "--dataset", "TOY", "--layers", "2", "--mlp-layers", "1",
               "--scale", "uniform", "--no-jk", "--out", str(out), "--cv", "--c-grid", "3", "--no-progress",
               "--chunk-nodes", "16"])
    assert rc == 0
    gram = np.load(out)
    # The CLI must save exactly what gram_matrix computes with the same options, so the comparison uses the
    # same blocking (chunk_nodes=16) and is exact. Comparing with another blocking (one 512-node block, as
    # this test once did at rtol 1e-9) compares two roundings of an ill-conditioned quantity: arccos at
    # lam ~ 1 (node pairs of identical structure) turns a 1-ulp difference in lam into ~1e-8 in the kernel
    # (measured: 1-2 ulp perturbations of the aggregations move up to 7e-9 of 900 entries). Agreement across
    # blockings is tested in test_kernel.py; agreement with the oracle at the tolerance that rounding allows.
    np.testing.assert_array_equal(
        gram, gram_matrix(gs, GNTKConfig(2, 1, "uniform", False), chunk_nodes=16, progress=False))
    assert np.load(str(out).replace(".npy", ".labels.npy")).shape == (30,)
    res = json.loads((tmp_path / "res" / "toy.json").read_text())
    assert res["config"] == {"layers": 2, "mlp_layers": 1, "scale": "uniform", "jk": False}
    assert res["folds"] == "10fold_idx files" and len(res["variants"]["raw"]["best_fold_acc"]) == 10
    assert 0.0 <= res["best"]["mean"] <= 1.0
    assert not (tmp_path / "res" / "toy.npy.chunks").exists()
    assert "best:" in capsys.readouterr().out


def test_cli_keeps_and_resumes_chunks(tmp_path):
    _write(tmp_path / "data")
    out = str(tmp_path / "g.npy")
    args = ["gntk", "--data", str(tmp_path / "data"), "--dataset", "toy", "--out", out, "--no-progress",
            "--chunk-nodes", "16"]
    assert main(args + ["--resume"]) == 2                      # nothing to resume yet
    assert main(args + ["--keep-chunks"]) == 0
    first = np.load(out)
    chunks = sorted(os.listdir(out + ".chunks"))
    os.remove(os.path.join(out + ".chunks", chunks[0]))
    assert main(args + ["--resume"]) == 0
    np.testing.assert_array_equal(np.load(out), first)


def test_cli_unknown_dataset(tmp_path, capsys):
    _write(tmp_path / "data")
    assert main(["gntk", "--data", str(tmp_path / "data"), "--dataset", "MUTAGX", "--no-progress"]) == 2
    assert "unknown graph data set 'MUTAGX'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- bad input
# Each bad option: exit status 2, a one-line message naming the value, no traceback, and nothing
# written (the output folder is never created): every option is checked before any kernel work.
BAD_OPTIONS = [
    (["--layers", "0"], "--layers 0"),
    (["--layers", "-3"], "--layers -3"),
    (["--mlp-layers", "0"], "--mlp-layers 0"),
    (["--cv", "--c-grid", "0"], "--c-grid 0"),
    (["--cv", "--c-grid", "-2"], "--c-grid -2"),
    (["--cv", "--jobs", "0"], "--jobs 0"),
    (["--c-grid", "5"], "--c-grid: only used with --cv"),
    (["--jobs", "2"], "--jobs: only used with --cv"),
    (["--chunk-nodes", "0"], "--chunk-nodes 0"),
    (["--workers", "0"], "--workers 0"),
    (["--workers", "-1"], "--workers -1"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "cpu:x"], "--device 'cpu:x'"),
    (["--max-bytes", "1e9"], "--max-bytes 1e+09: only used with --node"),
    (["--node", "--cv"], "--cv: not used with --node"),
    (["--node", "--chunk-nodes", "8"], "--chunk-nodes: not used with --node"),
    (["--node", "--no-degree-as-tag"], "--degree-as-tag: not used with --node"),
    (["--node", "--max-bytes", "-1"], "--max-bytes -1"),
]


def _run_bad(tmp_path, capsys, extra, dataset="TOY", data=None):
    out = tmp_path / "res" / "g.npy"
    rc = main(["gntk", "--data", str(data or tmp_path / "data"), "--dataset", dataset, "--no-progress",
               "--out", str(out)] + extra)
    err = capsys.readouterr().err
    return rc, err, out


@pytest.mark.parametrize("extra,named", BAD_OPTIONS, ids=[" ".join(b[0]) for b in BAD_OPTIONS])
def test_cli_bad_option_is_one_line_error_before_any_work(tmp_path, capsys, extra, named):
    _write(tmp_path / "data")
    rc, err, out = _run_bad(tmp_path, capsys, extra)
    assert rc == 2, err
    assert named in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.parent.exists()  # nothing written, not even the folder


def test_cli_cuda_without_cuda_leaves_nothing(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _write(tmp_path / "data")
    rc, err, out = _run_bad(tmp_path, capsys, ["--device", "cuda"])
    assert rc == 2 and "--device 'cuda': CUDA is not available" in err and "Traceback" not in err
    assert not out.parent.exists()  # before the fix the chunk folder <out>.chunks/ was left behind


def test_cli_unwritable_or_folder_out(tmp_path, capsys):
    _write(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    for out, named in ((tmp_path / "afile" / "g.npy", "is a file, not a folder"),
                       (tmp_path / "data", "is a folder; expected a file name")):
        rc = main(["gntk", "--data", str(tmp_path / "data"), "--dataset", "TOY", "--no-progress", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and repr(str(out)) in err and named in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["afile", "data"]


def test_cli_bad_data(tmp_path, capsys):
    _write(tmp_path / "data")
    rc, err, out = _run_bad(tmp_path, capsys, [], data=tmp_path / "nowhere")
    assert rc == 2 and "--data" in err and "nowhere" in err and "Traceback" not in err
    rc, err, out = _run_bad(tmp_path, capsys, [], dataset="MUTAGX")
    assert rc == 2 and "unknown graph data set 'MUTAGX'" in err and not out.parent.exists()
    # a fold file with an index past the last graph: named, before any kernel work
    fold = tmp_path / "data" / "TOY" / "10fold_idx" / "test_idx-3.txt"
    fold.write_text(fold.read_text() + "99\n")
    rc, err, out = _run_bad(tmp_path, capsys, ["--cv"])
    assert rc == 2 and "test_idx-3.txt" in err and "[99]" in err and "Traceback" not in err
    assert not out.parent.exists()


def test_cli_failure_mid_kernel_leaves_no_empty_chunk_folder(tmp_path, monkeypatch):
    import graphscale.gntk.kernel as K

    _write(tmp_path / "data")

    def boom(*a, **kw):
        raise RuntimeError("simulated failure inside the kernel")

    monkeypatch.setattr(K, "block_pair", boom)
    out = tmp_path / "g.npy"
    with pytest.raises(RuntimeError, match="simulated"):
        main(["gntk", "--data", str(tmp_path / "data"), "--dataset", "TOY", "--no-progress", "--out", str(out)])
    assert not (tmp_path / "g.npy.chunks").exists()


# ---------------------------------------------------------------------------------------- --help
def test_cli_help_is_plain_and_complete(capsys):
    from graphscale.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["gntk"]
    for action in sub._actions:
        flag = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{flag} has no help text"
        assert action.help.count("default") <= 1, f"{flag}: default stated twice: {action.help!r}"
    with pytest.raises(SystemExit):
        main(["gntk", "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert "(default:" not in text  # argparse's own default suffix doubled the hand-written defaults


def test_cli_disk_error_mid_kernel_is_a_message_and_keeps_finished_chunks(tmp_path, capsys, monkeypatch):
    import errno

    import graphscale.gntk.kernel as K

    _write(tmp_path / "data")
    real, calls = K._save_atomic, []

    def full_after_two(path, **arrays):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, **arrays)

    monkeypatch.setattr(K, "_save_atomic", full_after_two)
    out = tmp_path / "g.npy"
    rc = main(["gntk", "--data", str(tmp_path / "data"), "--dataset", "TOY", "--no-progress", "--out", str(out),
               "--chunk-nodes", "16", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "No space left on device" in err and "rerun the same command" in err and "Traceback" not in err
    assert len([f for f in os.listdir(tmp_path / "g.npy.chunks") if f.startswith("chunk_")]) == 2
    assert not out.exists()
