"""Training the user's own graph: data.name=pyg (a Data file), Trainer(cfg, data=Data), every sampler,
multi-label ROC-AUC, and the config checks around it (docs/user-data.md)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch_geometric.data import Data

from graphscale.errors import ConfigError, DataError
from graphscale.train import api
from graphscale.train.config import load_config
from graphscale.train.trainer import Trainer

COMMON = ["log.progress=false", "train.device=cpu", "model.hidden_channels=8", "train.epochs=2"]


def _graph(n=240, classes=3, tasks=None, seed=0) -> Data:
    """Planted communities: features carry a noisy class signal, edges mostly join nodes of one class."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(n) % classes
    src = torch.randint(0, n, (4 * n,), generator=g)
    same = (torch.rand(4 * n, generator=g) < 0.8)
    dst = torch.where(same, (src + classes * torch.randint(1, 5, (4 * n,), generator=g)) % n,
                      torch.randint(0, n, (4 * n,), generator=g))
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    x = torch.nn.functional.one_hot(c, classes).float() + torch.randn(n, classes, generator=g)
    x = torch.cat([x, torch.randn(n, 5, generator=g)], 1)
    perm = torch.randperm(n, generator=g)
    split = {"train": perm[: n // 2], "valid": perm[n // 2: 3 * n // 4], "test": perm[3 * n // 4:]}
    y = c if tasks is None else torch.stack([(c == k % classes).float() for k in range(tasks)], 1)
    return Data(x=x, edge_index=ei, y=y, split=split)


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "mine.pt"
    torch.save(_graph(), path)
    return str(path)


SAMPLERS = {
    "full": ["sampler.name=full", "model.name=gcn"],
    "random": ["sampler.name=random", "sampler.num_parts=3", "model.name=gcn"],
    "cluster-metis": ["sampler.name=cluster", "sampler.partitioner=metis", "sampler.num_parts=4",
                      "sampler.clusters_per_batch=2", "model.name=gcn"],
    "neighbor": ["sampler.name=neighbor", "sampler.fanouts=[5,5]", "sampler.batch_size=40", "model.name=sage",
                 "model.num_layers=2"],
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_pyg_file_with_every_sampler(graph_file, tmp_path, sampler):
    cfg = load_config(None, ["data.name=pyg", f"data.path={graph_file}", f"data.root={tmp_path / 'root'}",
                             f"log.out={tmp_path / 'run'}", *COMMON, *SAMPLERS[sampler]])
    api.check(cfg)
    res = api.train(cfg)
    assert res["dataset"] == "pyg:mine.pt" and res["metric"] == "acc" and res["epochs"] == 2
    assert 0.0 <= res["best_valid"] <= 1.0 and 0.0 <= res["test_at_best_valid"] <= 1.0
    assert res["config"]["data"]["path"] == graph_file


def test_trainer_takes_a_data_object(tmp_path):
    cfg = load_config(None, [*COMMON, "sampler.name=full", "model.name=gcn", "train.epochs=30", "train.lr=0.05",
                             f"log.out={tmp_path / 'run'}", f"data.root={tmp_path / 'root'}"])
    import graphscale.train
    assert graphscale.train.Trainer is Trainer  # the documented spelling
    res = graphscale.train.Trainer(cfg, data=_graph()).run()
    assert res["dataset"] == "pyg" and res["config"]["data"]["name"] == "pyg" and res["config"]["data"]["path"] == ""
    assert res["best_valid"] > 0.6  # the planted signal is learnt (chance is 1/3)
    # the same graph through a file gives the same run
    path = tmp_path / "g.pt"
    torch.save(_graph(), path)
    cfg2 = load_config(None, [*COMMON, "sampler.name=full", "model.name=gcn", "train.epochs=30", "train.lr=0.05",
                              "data.name=pyg", f"data.path={path}", f"log.out={tmp_path / 'run2'}",
                              f"data.root={tmp_path / 'root'}"])
    res2 = api.train(cfg2)
    assert res2["best_valid"] == res["best_valid"] and res2["test_at_best_valid"] == res["test_at_best_valid"]


def test_multilabel_data_is_scored_by_rocauc(tmp_path):
    cfg = load_config(None, [*COMMON, "sampler.name=full", "model.name=gcn", f"log.out={tmp_path / 'run'}"])
    res = api.train(cfg, data=_graph(tasks=4))
    assert res["metric"] == "rocauc" and 0.0 <= res["best_valid"] <= 1.0


def test_rocauc_follows_ogb_rule():
    from graphscale.train.metrics import rocauc
    y = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]]).float()
    s = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.1], [0.4, 0.2, 0.5], [0.3, 0.3, 0.9]])
    # task 0: positives score 0.9, 0.4 vs negatives 0.2, 0.3 -> AUC 1; tasks 1 and 2 lack a class: skipped
    assert rocauc(y, s) == 1.0
    s[2, 0] = 0.25  # now one positive (0.25) ranks below one negative (0.3): 3 of 4 pairs right
    assert rocauc(y, s) == 0.75
    assert rocauc(y[:, 1:], s[:, 1:]) != rocauc(y[:, 1:], s[:, 1:])  # NaN: no task has both classes


def test_bad_data_object_fails_before_the_run_starts(tmp_path):
    bad = _graph()
    bad.y = bad.y[:-1]
    cfg = load_config(None, [*COMMON, "sampler.name=full", "model.name=gcn", f"log.out={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="Trainer\\(data=...\\): y has 239 rows for 240 nodes"):
        Trainer(cfg, data=bad)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_config_keys_around_user_data(tmp_path, graph_file):
    with pytest.raises(ConfigError, match="data.path is set .* but data.name=cora does not use it"):
        api.check(load_config(None, ["data.name=cora", f"data.path={graph_file}"]))
    with pytest.raises(ConfigError, match="data.num_nodes is set .* but data.name=pyg does not use it"):
        api.check(load_config(None, ["data.name=pyg", f"data.path={graph_file}", "data.num_nodes=100"]))
    with pytest.raises(ConfigError, match="data.name=pyg needs data.path=FILE"):
        api.check(load_config(None, ["data.name=pyg"]))
    cfg = load_config(None, [*COMMON, "data.name=cora", f"log.out={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="data.name is set .* but the graph is the Data passed in Python"):
        Trainer(cfg, data=_graph())
    cfg = load_config(None, ["train.mode=layerwise", "model.name=lgcn", f"log.out={tmp_path / 'lw'}"])
    with pytest.raises(ConfigError, match="train.mode=layerwise save the Data"):
        api.train(cfg, data=_graph())


def test_layerwise_mode_reads_a_pyg_file(graph_file, tmp_path):
    cfg = load_config(None, ["train.mode=layerwise", "model.name=lgcn", "model.num_layers=2", "train.layer_epochs=3",
                             "data.name=pyg", f"data.path={graph_file}", "log.progress=false", "train.device=cpu",
                             f"log.out={tmp_path / 'lw'}"])
    res = api.train(cfg)
    assert res["dataset"] == "pyg:mine.pt" and 0.0 <= res["best_valid"] <= 1.0


def test_cora_saved_as_a_data_trains_like_data_name_cora(shared_data, tmp_path):
    """The same graph, split and features through the file route give the same training run."""
    from torch_geometric.datasets import Planetoid
    from torch_geometric.transforms import NormalizeFeatures
    shutil.copytree(shared_data / "planetoid" / "Cora" / "raw", tmp_path / "pl" / "Cora" / "raw")
    torch.save(Planetoid(str(tmp_path / "pl"), "Cora", transform=NormalizeFeatures())[0], tmp_path / "cora.pt")
    common = [*COMMON, "sampler.name=full", "model.name=gcn", "model.hidden_channels=16", "train.epochs=3"]
    named = api.train(load_config(None, [*common, "data.name=cora", f"data.root={shared_data / 'planetoid'}",
                                         f"log.out={tmp_path / 'named'}"]))
    mine = api.train(load_config(None, [*common, "data.name=pyg", f"data.path={tmp_path / 'cora.pt'}",
                                        f"data.root={tmp_path / 'root'}", f"log.out={tmp_path / 'mine'}"]))
    loss = {k: [json.loads(line)["loss"] for line in open(tmp_path / k / "log.jsonl")] for k in ("named", "mine")}
    assert loss["named"] == loss["mine"]
    assert named["test_at_best_valid"] == mine["test_at_best_valid"]
