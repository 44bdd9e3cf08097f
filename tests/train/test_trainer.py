import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch import nn

from graphscale.cli import main
from graphscale.errors import ConfigError, TrainingError
from graphscale.train.build import MODEL_KEYS, MODELS
from graphscale.train.config import load_config
from graphscale.train.api import train

TINY = ["data.name=synthetic-proteins", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
        "model.hidden_channels=8", "model.num_layers=2", "sampler.num_parts=3", "train.epochs=3",
        "log.progress=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _cfg(data_root, out, *extra, drop=()):
    base = [o for o in TINY if o.split("=")[0] not in drop]  # keys the chosen components do not read
    return load_config(None, base + [f"data.root={data_root}", f"log.out={out}", *extra])


def test_trains_and_writes_results(data_root, tmp_path):
    res = train(_cfg(data_root, tmp_path / "run"))
    for f in ("results.json", "log.jsonl", "checkpoint.pt", "best_model.pt", "config.yaml"):
        assert (tmp_path / "run" / f).is_file(), f
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["metric"] == "rocauc" and on_disk["epochs"] == 3
    assert 0.0 <= on_disk["best_valid"] <= 1.0 and on_disk["peak_memory_bytes"] > 0
    assert on_disk["config"]["model"]["num_layers"] == 2  # resolved config stored
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert res["best_valid"] == max(r["valid_rocauc"] for r in rows)


def test_same_seed_same_run_full_batch_and_multiview(data_root, tmp_path):
    extra = ["sampler.name=full", "sampler.eval_name=random", "sampler.eval_parts=2", "sampler.eval_views=2"]
    a = train(_cfg(data_root, tmp_path / "a", *extra, drop=("sampler.num_parts",)))
    b = train(_cfg(data_root, tmp_path / "b", *extra, drop=("sampler.num_parts",)))
    assert a["best_valid"] == b["best_valid"] and a["test_at_best_valid"] == b["test_at_best_valid"]


def test_refuses_to_overwrite_and_checks_resume_config(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "r"))
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(_cfg(data_root, tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"model.hidden_channels: 8 -> 16"):
        train(_cfg(data_root, tmp_path / "r", "model.hidden_channels=16"), resume=True)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_cfg(data_root, tmp_path / "empty"), resume=True)


def test_num_parts_larger_than_graph(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"num_parts=5000 is larger than the number of nodes \(600\)"):
        train(_cfg(data_root, tmp_path / "p", "sampler.num_parts=5000"))


def test_bad_ranges_fail_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="train.lr must be > 0, got -1.0"):
        train(load_config(None, ["train.lr=-1", f"data.root={tmp_path}/never"]))
    assert not os.path.exists(f"{tmp_path}/never")


class _NaNModel(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.lin = nn.Linear(1, out)

    def forward(self, x, edge_index, edge_attr=None):
        return self.lin(x[:, :1]) * float("nan")


def test_nan_loss_is_a_clear_error(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "nan-test", lambda cfg, info: _NaNModel(info.num_outputs))
    monkeypatch.setitem(MODEL_KEYS, "nan-test", ("hidden_channels", "num_layers"))
    cfg = _cfg(data_root, tmp_path / "n")
    object.__setattr__(cfg.model, "name", "nan-test")
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, step 0"):
        train(cfg)


def test_cli_reports_config_errors_in_one_line(capsys, tmp_path):
    assert main(["train", "model.num_layer=3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'num_layers'" in err and "Traceback" not in err


def _rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def test_kill_and_resume_equals_uninterrupted(data_root, tmp_path):
    args = TINY + [f"data.root={data_root}", "train.epochs=8", "data.num_nodes=1500", "model.hidden_channels=16",
                   "model.num_layers=3"]
    cmd = [sys.executable, "-m", "graphscale", "train", *args]
    ref = str(tmp_path / "ref")
    subprocess.run(cmd + ["--out", ref], check=True, capture_output=True, timeout=600)

    out = str(tmp_path / "killed")
    killer = [sys.executable, os.path.join(os.path.dirname(__file__), "kill_at_epoch.py"), "4", *args, "--out", out]
    proc = subprocess.run(killer, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "results.json"))
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3]  # killed as epoch 4 began

    subprocess.run(cmd + ["--out", out, "--resume"], check=True, capture_output=True, timeout=600)
    a = json.load(open(os.path.join(ref, "results.json")))
    b = json.load(open(os.path.join(out, "results.json")))
    for key in ("best_valid", "test_at_best_valid", "train_at_best_valid", "best_epoch", "epochs"):
        assert a[key] == b[key], key
    assert [r["loss"] for r in _rows(ref)] == [r["loss"] for r in _rows(out)]
    ra = torch.load(os.path.join(ref, "best_model.pt"))
    rb = torch.load(os.path.join(out, "best_model.pt"))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_cora_gcn_reaches_80_percent(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHSCALE_CACHE", str(tmp_path / "cache"))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(repo, "configs", "cora", "gcn.yaml"),
                      [f"data.root={shared_data / 'planetoid'}", f"log.out={tmp_path / 'cora'}", "log.progress=false"])
    res = train(cfg)
    assert res["test_at_best_valid"] >= 0.80, res


def test_diag_lambda_needs_a_model_taking_edge_weights(data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"diag_lambda=1.0 .* model.name='deepergcn' takes none"):
        train(_cfg(data_root, tmp_path / "d", "sampler.name=cluster", "sampler.partitioner=random",
                   "sampler.diag_lambda=1"))


def test_deq_convergence_statistics_are_logged(data_root, tmp_path):
    train(_cfg(data_root, tmp_path / "deq", "model.name=deq-gnn", "train.epochs=1", drop=("model.num_layers",)))
    (row,) = _rows(tmp_path / "deq")
    assert row["solver"]["forward_iterations"] >= 1 and row["solver"]["backward_iterations"] >= 1
    assert row["solver"]["forward_residual"] >= 0.0
