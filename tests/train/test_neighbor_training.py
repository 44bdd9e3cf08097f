"""Training with sampler.name=neighbor (GraphSAGE neighbour sampling) and layer-wise evaluation."""
import json
import os
import subprocess
import sys

import pytest
import torch

from graphscale.errors import ConfigError
from graphscale.train.api import train
from graphscale.train.config import load_config
from graphscale.train.distributed import deal, rank_step_indices

TINY = ["data.name=synthetic-arxiv", "data.num_nodes=500", "data.avg_degree=6", "data.num_communities=5",
        "data.num_features=12", "data.num_classes=4", "model.name=sage", "model.hidden_channels=16",
        "model.num_layers=2", "model.norm=none", "sampler.name=neighbor", "sampler.fanouts=[5, 3]",
        "sampler.batch_size=64", "sampler.eval_name=layerwise", "sampler.eval_batch_size=128", "train.epochs=3",
        "log.progress=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _cfg(data_root, out, *extra, drop=()):
    keys = {e.split("=")[0] for e in extra} | set(drop)  # drop: keys the chosen components do not read
    base = [o for o in TINY if o.split("=")[0] not in keys]
    return load_config(None, base + [f"data.root={data_root}", f"log.out={out}", *extra])


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def test_neighbor_training_runs_and_repeats_per_seed(data_root, tmp_path):
    a = train(_cfg(data_root, tmp_path / "a"))
    b = train(_cfg(data_root, tmp_path / "b"))
    assert a["epochs"] == 3 and 0.0 <= a["best_valid"] <= 1.0
    assert [r["loss"] for r in _rows(tmp_path / "a")] == [r["loss"] for r in _rows(tmp_path / "b")]
    assert a["best_valid"] == b["best_valid"] and a["test_at_best_valid"] == b["test_at_best_valid"]
    c = train(_cfg(data_root, tmp_path / "c", "train.seed=1"))
    assert [r["loss"] for r in _rows(tmp_path / "a")] != [r["loss"] for r in _rows(tmp_path / "c")]


def test_layerwise_evaluation_equals_full_graph_evaluation(data_root, tmp_path):
    """The same training (neighbour batches, same seed) scored layer-wise and on the full graph."""
    a = train(_cfg(data_root, tmp_path / "lw"))
    b = train(_cfg(data_root, tmp_path / "full", "sampler.eval_name=full", drop=("sampler.eval_batch_size",)))
    ra, rb = _rows(tmp_path / "lw"), _rows(tmp_path / "full")
    for x, y in zip(ra, rb):
        assert x["loss"] == y["loss"]
        assert abs(x["valid_acc"] - y["valid_acc"]) < 1e-9 and abs(x["test_acc"] - y["test_acc"]) < 1e-9


def test_resume_equals_uninterrupted(data_root, tmp_path):
    ref = train(_cfg(data_root, tmp_path / "ref", "train.epochs=4"))
    train(_cfg(data_root, tmp_path / "part", "train.epochs=2"))
    res = train(_cfg(data_root, tmp_path / "part", "train.epochs=4"), resume=True)
    assert [r["loss"] for r in _rows(tmp_path / "ref")] == [r["loss"] for r in _rows(tmp_path / "part")]
    assert ref["best_valid"] == res["best_valid"] and ref["test_at_best_valid"] == res["test_at_best_valid"]


def test_grad_accum_runs_on_padded_steps(data_root, tmp_path):
    res = train(_cfg(data_root, tmp_path / "acc", "train.grad_accum=2", "train.epochs=2"))
    assert all(r["loss"] > 0 for r in _rows(tmp_path / "acc")) and res["epochs"] == 2


@pytest.mark.parametrize("k,world,accum", [(5, 2, 1), (5, 2, 2), (7, 3, 1), (4, 1, 3), (1, 2, 2)])
def test_rank_step_indices_match_deal(k, world, accum):
    for rank in range(world):
        assert rank_step_indices(k, rank, world, accum) == list(deal(range(k), k, rank, world, accum))


@pytest.mark.parametrize("extra,match", [
    (["sampler.fanouts=[5, 3, 2]"], r"sampler.fanouts=\[5, 3, 2\] has 3 entries but model.num_layers=2"),
    (["sampler.fanouts=[5, 0]"], r"sampler.fanouts=\[5, 0\].*got 0"),
    (["sampler.fanouts=[]"], "sampler.fanouts is empty"),
    (["sampler.batch_size=0"], "sampler.batch_size must be an integer >= 1.*got 0"),
    (["sampler.prefetch=-1"], "sampler.prefetch must be >= 0"),
    (["sampler.eval_batch_size=0"], "sampler.eval_batch_size must be >= 1"),
])
def test_bad_neighbor_keys_fail_before_loading(tmp_path, extra, match):
    root = tmp_path / "never"
    with pytest.raises(ConfigError, match=match):
        train(_cfg(str(root), tmp_path / "o", *extra))
    assert not root.exists()


def test_layerwise_eval_needs_a_layerwise_model(data_root, tmp_path):
    with pytest.raises(ConfigError, match="sampler.eval_name=layerwise needs a model"):
        train(_cfg(data_root, tmp_path / "g", "model.name=gcn", drop=("model.norm",)))


def test_two_processes_split_the_batches(data_root, tmp_path):
    """``--nproc 2``: each rank samples its own batches (rank_step_indices) and the run finishes."""
    out = str(tmp_path / "ddp")
    args = [o for o in TINY] + [f"data.root={data_root}", "train.epochs=2"]
    proc = subprocess.run([sys.executable, "-m", "graphscale", "train", *args, "--out", out, "--nproc", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["distributed"]["world_size"] == 2 and res["epochs"] == 2
    assert torch.isfinite(torch.tensor([r["loss"] for r in _rows(out)])).all()


def test_neighbor_training_with_activation_compression(data_root, tmp_path):
    res = train(_cfg(data_root, tmp_path / "comp", "memory.compression=layers", "train.epochs=2"))
    assert res["epochs"] == 2 and all(r["loss"] > 0 for r in _rows(tmp_path / "comp"))
