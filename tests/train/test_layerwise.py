"""L-GCN / L2-GCN: composed-GCN equivalence, memory per step, controller, trainer files and resume."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from torch_geometric.nn import GCNConv

from graphscale.errors import ConfigError, DataError
from graphscale.memory.accounting import count_saved_bytes
from graphscale.sampling.propagation import aggregate, gcn_adjacency
from graphscale.train import layerwise_trainer as lw
from graphscale.train.config import load_config
from graphscale.train.l2gcn_controller import (NUM_FEATURES, StopController, StopPolicy, load_controller, save_controller,
                                  train_controller)
from graphscale.nn.models import LayerwiseGCN
from graphscale.train.layerwise import FixedEpochs, LayerSettings, gcn_episode, train_layer
from graphscale.train.metrics import loss_fn
from graphscale.train.api import train

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
CE = loss_fn("multiclass")


def toy_graph(n: int, f: int = 12, classes: int = 3, seed: int = 0):
    """A planted-partition graph whose classes are learnable from features + neighbours."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    src = torch.randint(0, n, (4 * n,), generator=g)
    # most edges stay inside a class: pick a target of the same class
    same = torch.randint(0, n, (4 * n,), generator=g)
    by_class = [torch.nonzero(y == c).view(-1) for c in range(classes)]
    dst = torch.stack([by_class[int(y[s])][int(t) % by_class[int(y[s])].numel()] for s, t in zip(src, same)])
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    x = torch.randn(n, f, generator=g) + 0.8 * torch.nn.functional.one_hot(y, classes).float().repeat(1, f // classes + 1)[:, :f]
    return x, ei, y


# ------------------------------------------------------------------ model equivalence
def test_layerwise_gcn_equals_stacked_pyg_gcn():
    """Same weights -> same outputs as a stack of PyG GCNConv layers (full graph)."""
    x, ei, _ = toy_graph(60)
    torch.manual_seed(0)
    model = LayerwiseGCN(12, 8, 3, num_layers=3).double()
    convs = [GCNConv(12, 8).double(), GCNConv(8, 8).double(), GCNConv(8, 8).double()]
    for conv, lin in zip(convs, model.layers):
        conv.lin.weight.data.copy_(lin.weight.data)
        conv.bias.data.copy_(lin.bias.data)
    h = x.double()
    for conv in convs:
        h = torch.relu(conv(h, ei))
    ref = model.head(h)
    model.eval()
    torch.testing.assert_close(model(x.double(), ei), ref, rtol=1e-10, atol=1e-10)
    adj = gcn_adjacency(ei, 60, torch.float64)
    torch.testing.assert_close(model.inference(x.double(), adj, batch_size=7), ref, rtol=1e-10, atol=1e-10)


def test_trained_layerwise_pipeline_is_the_composed_gcn():
    """Features mapped forward during layer-wise training = the composed full-graph forward."""
    x, ei, y = toy_graph(80)
    adj = gcn_adjacency(ei, 80)
    torch.manual_seed(0)
    model = LayerwiseGCN(12, 8, 3, num_layers=2)
    h = x
    for layer in range(2):
        z = aggregate(adj, h)
        train_layer(model, layer, z, y, torch.arange(40), CE, FixedEpochs(3), LayerSettings(batch_size=16))
        model.eval()
        with torch.no_grad():
            h = model.block(layer, z)
    with torch.no_grad():
        torch.testing.assert_close(model.head(h), model(x, ei), rtol=1e-5, atol=1e-5)


def test_layer_counts_below_one_are_rejected():
    with pytest.raises(ConfigError, match="num_layers must be >= 1, got 0"):
        LayerwiseGCN(4, 4, 2, num_layers=0)
    with pytest.raises(ConfigError, match="layer_epochs must be >= 1, got 0"):
        FixedEpochs(0)
    cfg = load_config(None, ["train.mode=layerwise", "model.num_layers=0", "data.name=cora"])
    with pytest.raises(ConfigError, match="model.num_layers must be >= 1"):
        train(cfg)
    cfg = load_config(None, ["train.mode=layerwise", "train.layer_epochs=0"])
    with pytest.raises(ConfigError, match="train.layer_epochs must be >= 1, got 0"):
        train(cfg)


# ------------------------------------------------------------------ memory per step
def _step_bytes(n: int, batch: int) -> int:
    x, ei, y = toy_graph(n, f=24)
    z = aggregate(gcn_adjacency(ei, n), x)
    torch.manual_seed(0)
    model = LayerwiseGCN(24, 16, 3, num_layers=2)
    with count_saved_bytes(exclude=model) as c:
        # one epoch over exactly one batch of training nodes = one optimiser step
        train_layer(model, 0, z, y, torch.arange(batch), CE, FixedEpochs(1), LayerSettings(batch_size=batch))
    return c.total


def test_memory_per_step_does_not_grow_with_the_graph():
    small, large = _step_bytes(300, 64), _step_bytes(3000, 64)
    assert small > 0
    assert small == large
    assert _step_bytes(300, 128) > small  # the count does see the batch size
    # contrast: a full-graph step of the same network saves bytes that grow with N
    counts = []
    for n in (300, 3000):
        x, ei, _ = toy_graph(n, f=24)
        model = LayerwiseGCN(24, 16, 3, num_layers=2)
        adj = gcn_adjacency(ei, n)
        with count_saved_bytes(exclude=model) as c:
            model.forward_adj(x, adj).sum().backward()
        counts.append(c.total)
    assert counts[1] > 5 * counts[0]


# ------------------------------------------------------------------ controller
def test_policy_respects_min_max_and_threshold():
    ctrl = StopController(NUM_FEATURES, 4)
    torch.nn.init.constant_(ctrl.decoder.bias, 10.0)  # always wants to stop
    pol = StopPolicy(ctrl, num_layers=2, min_epochs=3, max_epochs=20, decision_step=2)
    pol.start_layer(0)
    assert [pol.observe(e, 1.0 / e) for e in range(1, 4)] == [False, False, True]  # first decision at min_epochs
    torch.nn.init.constant_(ctrl.decoder.bias, -10.0)  # never wants to stop: max_epochs ends it
    pol = StopPolicy(ctrl, num_layers=2, min_epochs=3, max_epochs=20, decision_step=2)
    pol.start_layer(1)
    e = 1
    while not pol.observe(e, 1.0):
        e += 1
    assert e == 20
    with pytest.raises(ConfigError, match="min_epochs <= max_epochs"):
        StopPolicy(ctrl, 2, min_epochs=5, max_epochs=4)


def test_controller_trains_with_reinforce_and_stops():
    x, ei, y = toy_graph(120)
    episode = gcn_episode(x, ei, y, torch.arange(60), CE, num_layers=2, hidden_channels=8, sample_nodes=64,
                          lr=0.01, seed=0)
    before = StopController(NUM_FEATURES, 8)
    snapshot = [p.detach().clone() for p in before.parameters()]
    rows = []
    ctrl = train_controller(episode, num_layers=2, rounds=4, min_epochs=2, max_epochs=8, decision_step=2,
                            controller=before, log=rows.append)
    assert len(rows) == 4 and all(2 * 2 <= r["epochs"] <= 2 * 8 for r in rows)
    assert any(not torch.equal(a, b) for a, b in zip(snapshot, ctrl.parameters()))  # REINFORCE moved it
    pol = StopPolicy(ctrl, 2, min_epochs=2, max_epochs=8, decision_step=2)
    loss, epochs = episode(pol, 0)
    assert 4 <= epochs <= 16 and loss == loss and pol.trace


def test_controller_file_roundtrip_and_wrong_shape(tmp_path):
    ctrl = StopController(NUM_FEATURES, 8)
    path = str(tmp_path / "ctrl.pt")
    save_controller(ctrl, path)
    back = load_controller(path, NUM_FEATURES, 8)
    for a, b in zip(ctrl.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert load_controller(path).hidden_size == 8  # hidden size from the header when not required
    with pytest.raises(ConfigError, match=r"expected input_size=6, hidden_size=16; found input_size=6, hidden_size=8"):
        load_controller(path, NUM_FEATURES, 16)
    save_controller(StopController(3, 8), path)
    with pytest.raises(ConfigError, match=r"expected input_size=6, hidden_size=8; found input_size=3, hidden_size=8"):
        load_controller(path, NUM_FEATURES)
    torch.save({"weights": 1}, str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="not an L2-GCN controller file"):
        load_controller(str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_controller(str(tmp_path / "missing.pt"))


# ------------------------------------------------------------------ trainer
@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("syn"))


def _cfg(root, out, *extra):
    return load_config(None, ["train.mode=layerwise", "data.name=synthetic-arxiv", f"data.root={root}",
                              "data.num_nodes=400", "data.avg_degree=6", "data.num_communities=8",
                              "data.num_features=16", "data.num_classes=4", "model.hidden_channels=8",
                              "model.num_layers=2", "model.dropout=0.0", "train.layer_epochs=4",
                              "train.batch_size=64", "train.eval_every=2", "train.device=cpu",
                              "log.progress=false", f"log.out={out}", *extra])


def test_trainer_writes_standard_files_and_resumes_after_a_killed_layer(syn_root, tmp_path, monkeypatch):
    full = train(_cfg(syn_root, tmp_path / "full", "train.storage=mmap"))
    standard_keys = {"dataset", "metric", "best_valid", "test_at_best_valid", "train_at_best_valid", "best_epoch",
                     "epochs", "seconds", "peak_memory_bytes", "device", "num_parameters", "config"}
    assert standard_keys <= set(full)
    assert full["epochs"] == 8 and full["layer_epochs_used"] == [4, 4] and full["best_epoch"] > 4
    rows = [json.loads(r) for r in open(tmp_path / "full" / "log.jsonl")]
    assert [r["layer"] for r in rows] == [1] * 4 + [2] * 4
    assert os.listdir(tmp_path / "full" / "features") == []  # mmap files cleaned up

    real = lw.train_layer

    def killed(model, layer, *args, **kw):
        if layer == 1:
            raise KeyboardInterrupt("killed in layer 2")
        return real(model, layer, *args, **kw)

    monkeypatch.setattr(lw, "train_layer", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(syn_root, tmp_path / "part"))
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ckpt["finished_layers"] == 1
    monkeypatch.setattr(lw, "train_layer", real)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train(_cfg(syn_root, tmp_path / "part"))
    resumed = train(_cfg(syn_root, tmp_path / "part"), resume=True)
    for key in ("best_valid", "test_at_best_valid", "best_epoch", "epochs", "layer_epochs_used"):
        assert resumed[key] == full[key], key
    a = torch.load(tmp_path / "full" / "best_model.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "best_model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_l2o_trains_saves_and_reuses_a_controller(syn_root, tmp_path):
    path = str(tmp_path / "ctrl.pt")
    l2o = ["train.controller=l2o", "train.l2o_rounds=3", "train.l2o_min_epochs=2", "train.l2o_decision_step=2",
           "train.l2o_sample_nodes=64", "train.l2o_hidden=8", "train.layer_epochs=6", f"train.controller_path={path}"]
    res = train(_cfg(syn_root, tmp_path / "a", *l2o))
    assert os.path.isfile(path) and res["controller_seconds"] > 0
    assert all(2 <= e <= 6 for e in res["layer_epochs_used"])
    again = train(_cfg(syn_root, tmp_path / "b", *l2o, "data.num_features=12"))  # reuse on another data set
    assert again["controller_seconds"] == 0.0
    with pytest.raises(ConfigError, match=r"wrong shape: expected input_size=6, hidden_size=16; found .*hidden_size=8"):
        train(_cfg(syn_root, tmp_path / "c", *l2o[:-2], "train.l2o_hidden=16", f"train.controller_path={path}"))


def test_trainer_rejects_features_that_do_not_fit(syn_root, tmp_path, monkeypatch):
    monkeypatch.setattr("graphscale.sampling.feature_store._available_memory_bytes", lambda: 1000)
    with pytest.raises(DataError, match="use storage='mmap'"):
        train(_cfg(syn_root, tmp_path / "o"))
