"""``graphscale gntk`` end to end on a small GIN-format set written to a temporary folder."""
from __future__ import annotations

import json
import os

import numpy as np

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
    np.testing.assert_allclose(gram, gram_matrix(gs, GNTKConfig(2, 1, "uniform", False), progress=False), rtol=1e-9)
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
