"""One (data set, method) run of the layer-wise training comparison (``benchmarks/bench_layerwise.py``).

You, Chen, Wang, Shen, "L2-GCN: Layer-Wise and Learned Efficient Training of Graph Convolutional
Networks", CVPR 2020. The question the benchmark answers: does layer-wise training (L-GCN, L2-GCN)
reach the accuracy of the same GCN trained full-batch faster and in less memory? Here live the
pieces the benchmark script and ``benchmarks/synthetic_difficulty.py`` share: the per-data-set
settings, the synthetic presets and their loader, and :func:`run_method`, which a fresh process
runs (``peak_rss_subprocess("graphscale.bench.layerwise_runs:run_method", ...)``) so that each method
gets a peak RSS of its own.

Methods: ``full`` (:class:`LayerwiseGCN` trained end to end on the whole graph), ``lgcn``, ``l2gcn``,
``cluster`` (Cluster-GCN batches with PyG GCN layers). Each returns a summary and its training curve
of (seconds, valid, test); the clock stops while evaluating.
"""
from __future__ import annotations

import os
import time
import warnings

import torch

# Per data set: hidden width, layers, and each method's schedule. Full-batch GCN uses dropout 0.5 and
# weight decay 5e-4 (Kipf & Welling's Cora settings); layer-wise settings are configs/cora/lgcn.yaml's.
SETTINGS = {
    "planetoid": dict(hidden=64, layers=2, lr=0.01, weight_decay=5e-4, full_epochs=200, full_dropout=0.5,
                      lw_dropout=0.2, layer_epochs=100, batch_size=256, eval_every=5, cluster_parts=10,
                      cluster_q=2, cluster_epochs=200, l2o_sample_nodes=1024, l2o_min_epochs=10,
                      l2o_decision_step=5, full_eval_every=1, full_max_seconds=None),
    "synthetic": dict(hidden=128, layers=2, lr=0.01, weight_decay=0.0, full_epochs=200, full_dropout=0.5,
                      lw_dropout=0.2, layer_epochs=40, batch_size=1024, eval_every=2, cluster_parts=50,
                      cluster_q=5, cluster_epochs=60, l2o_sample_nodes=2048, l2o_min_epochs=10,
                      l2o_decision_step=5, full_eval_every=1, full_max_seconds=None),
    # 1e6 nodes on 2 shared cores: one full-batch epoch takes ~10-30 s here, so full-batch runs until
    # full_epochs or full_max_seconds of training time, whichever comes first (the row records how
    # many epochs it did), and is evaluated every 2 epochs; each L-GCN epoch is ~530 Adam steps.
    "synthetic-1m": dict(hidden=128, layers=2, lr=0.01, weight_decay=0.0, full_epochs=100, full_dropout=0.5,
                         lw_dropout=0.2, layer_epochs=20, batch_size=1024, eval_every=1, cluster_parts=50,
                         cluster_q=5, cluster_epochs=10, l2o_sample_nodes=2048, l2o_min_epochs=4,
                         l2o_decision_step=2, full_eval_every=2, full_max_seconds=900.0),
}

# Synthetic presets (graphscale.data.synthetic, arxiv kind: written in OGB's raw layout and read back
# through ogb's PygNodePropPredDataset). "synthetic-pubmed" has PubMed's size (19,717 nodes, 500
# features, 3 classes, ~4.5 edges per node) and a Planetoid-style split drawn here (20 training nodes
# per class, 500 valid, 1,000 test), like PubMed's public split.
PRESETS = {
    "synthetic-arxiv-1m": dict(num_nodes=1_000_000, avg_degree=12.0, num_communities=200, num_features=128,
                               num_classes=40),
    "synthetic-pubmed": dict(num_nodes=19_717, avg_degree=4.5, num_communities=30, num_features=500, num_classes=3),
    # "-hard": the same shape with ogbn-arxiv's published difficulty. With the defaults (feature noise
    # 2.0, 80 % of edges inside a community) the features alone give ~90 % (the label-noise ceiling) and
    # full-batch GCN is done after 4 epochs. Feature noise 4.4 and 30 % intra-community edges put the
    # nearest-class-mean test accuracy of the raw features at 63.0 % and of A_hat^2 X at 74.7 % (100k,
    # `python benchmarks/synthetic_difficulty.py`), next to ogbn-arxiv's MLP 55.5 % and GCN 71.7 % (OGB
    # leaderboard). "100k": the same per-community size at a tenth of the nodes, for quick checks.
    "synthetic-arxiv-1m-hard": dict(num_nodes=1_000_000, avg_degree=12.0, num_communities=200, num_features=128,
                                    num_classes=40, feature_noise=4.4, p_intra=0.3),
    "synthetic-arxiv-100k-hard": dict(num_nodes=100_000, avg_degree=12.0, num_communities=20, num_features=128,
                                      num_classes=40, feature_noise=4.4, p_intra=0.3),
}


METHODS = ("full", "lgcn", "l2gcn", "cluster")


def settings(name: str) -> dict:
    if name in ("cora", "citeseer", "pubmed", "synthetic-pubmed"):
        return dict(SETTINGS["planetoid"])
    return dict(SETTINGS["synthetic-1m" if name.startswith("synthetic-arxiv-1m") else "synthetic"])


def _planetoid_split(y, per_class: int = 20, valid: int = 500, test: int = 1000, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.numel(), generator=gen)
    train = torch.cat([perm[y[perm] == c][:per_class] for c in range(int(y.max()) + 1)])
    rest = perm[~torch.isin(perm, train)]
    return {"train": train.sort().values, "valid": rest[:valid].sort().values,
            "test": rest[valid:valid + test].sort().values}


def load(name: str, root: str, planetoid_root: str | None = None):
    """A preset (``PRESETS``), ``synthetic-arxiv[:N]`` (written under ``root``) or a Planetoid set
    (read from ``planetoid_root``, default ``$GRAPHSCALE_SHARED_DATA/planetoid`` or ``../shared/data/planetoid``)."""
    from graphscale.data import SyntheticSpec, load_dataset
    if name in PRESETS:
        data = load_dataset("synthetic-arxiv", root, synthetic=SyntheticSpec(kind="arxiv", **PRESETS[name]))
        data.name = name
        if name == "synthetic-pubmed":
            data.split = _planetoid_split(data.y)
        return data
    if name.startswith("synthetic-arxiv"):
        n = int(float(name.split(":")[1])) if ":" in name else 100_000
        return load_dataset("synthetic-arxiv", root, synthetic=SyntheticSpec(
            kind="arxiv", num_nodes=n, avg_degree=20.0, num_communities=50, num_features=128, num_classes=40))
    if planetoid_root is None:
        planetoid_root = os.path.join(os.environ.get("GRAPHSCALE_SHARED_DATA", os.path.join("..", "shared", "data")),
                                      "planetoid")
    return load_dataset(name, planetoid_root)


class Clock:
    """Training time with the clock stopped while evaluating."""

    def __init__(self):
        self.total, self.start = 0.0, None

    def go(self):
        self.start = time.perf_counter()

    def stop(self) -> float:
        self.total += time.perf_counter() - self.start
        self.start = None
        return self.total


def _acc(logits, y) -> float:
    return float((logits.argmax(-1) == y).float().mean())


# --------------------------------------------------------------------------- methods (child process)
def run_method(dataset: str, method: str, root: str, threads: int = 1, seed: int = 0,
               controller_path: str = "", full_max_seconds: float | None = None,
               layer_epochs: int | None = None, l2o_rule: str = "median", overrides: dict | None = None,
               planetoid_root: str | None = None) -> dict:
    """One (data set, method) run; returns summary + curve (runs inside peak_rss_subprocess)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from graphscale.memory.accounting import count_saved_bytes
    from graphscale.sampling.propagation import gcn_adjacency
    from graphscale.train.metrics import loss_fn

    s = settings(dataset)
    if full_max_seconds is not None:
        s["full_max_seconds"] = full_max_seconds
    if layer_epochs is not None:
        s["layer_epochs"] = layer_epochs
    s["l2o_rule"] = l2o_rule
    for key, value in (overrides or {}).items():
        if key not in s:
            raise ValueError(f"--set {key}: not a setting; expected one of {sorted(s)}")
        s[key] = type(s[key])(value) if s[key] is not None else float(value)
    data = load(dataset, root, planetoid_root)
    x, y, split = data.x, data.y, data.split
    adj = gcn_adjacency(data.edge_index, data.num_nodes)
    loss = loss_fn(data.task)
    torch.manual_seed(seed)
    out = {"dataset": dataset, "method": method, "num_nodes": data.num_nodes, "num_edges": data.num_edges,
           "num_train": int(split["train"].numel())}
    curve = []
    if method == "full":
        out.update(_run_full(data, adj, s, loss, curve, count_saved_bytes))
    elif method in ("lgcn", "l2gcn"):
        out.update(_run_layerwise(data, adj, s, loss, curve, count_saved_bytes, method == "l2gcn", controller_path,
                                  seed))
    elif method == "cluster":
        out.update(_run_cluster(data, s, loss, curve, count_saved_bytes, seed))
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    out["curve"] = curve
    return out


def _run_full(data, adj, s, loss, curve, count_saved_bytes) -> dict:
    from graphscale.sampling.propagation import aggregate
    from graphscale.nn.models import LayerwiseGCN
    x, y, split = data.x, data.y, data.split
    tr = split["train"]
    model = LayerwiseGCN(x.size(1), s["hidden"], data.num_outputs, s["layers"], s["full_dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    clock, step_bytes = Clock(), None

    def forward(ax):  # = model.forward_adj(x, adj), with the first aggregation A_hat X done once
        h = model.block(0, ax)
        for layer in range(1, model.num_layers):
            h = model.block(layer, aggregate(adj, h))
        return model.head(h)

    # The input X never changes, so full-batch GCN aggregates it once (timed), as L-GCN does: the
    # baseline is not charged a propagation per epoch that it does not need.
    clock.go()
    ax = aggregate(adj, x)
    clock.stop()
    epoch = 0
    for epoch in range(1, s["full_epochs"] + 1):
        clock.go()
        model.train()
        opt.zero_grad(set_to_none=True)
        if step_bytes is None:
            with count_saved_bytes(exclude=model) as c:
                value = loss(forward(ax)[tr], y[tr])
            step_bytes = c.total
        else:
            value = loss(forward(ax)[tr], y[tr])
        value.backward()
        opt.step()
        t = clock.stop()
        out_of_time = s.get("full_max_seconds") and t >= s["full_max_seconds"]
        if epoch % s.get("full_eval_every", 1) == 0 or epoch == s["full_epochs"] or out_of_time:
            model.eval()
            with torch.no_grad():
                logits = forward(ax)
            curve.append({"seconds": t, "epoch": epoch, "loss": float(value),
                          "valid": _acc(logits[split["valid"]], y[split["valid"]]),
                          "test": _acc(logits[split["test"]], y[split["test"]])})
            del logits
        if out_of_time:
            break
    return {"step_saved_bytes": step_bytes, "epochs": epoch}


def _run_layerwise(data, adj, s, loss, curve, count_saved_bytes, learned: bool, controller_path: str,
                   seed: int) -> dict:
    from graphscale.sampling.feature_store import FeatureStore, map_rows
    from graphscale.sampling.propagation import propagate
    from graphscale.train.l2gcn_controller import NUM_FEATURES, StopPolicy, load_controller, save_controller, train_controller
    from graphscale.nn.models import LayerwiseGCN
    from graphscale.train.layerwise import FixedEpochs, LayerSettings, gcn_episode, train_layer

    x, y, split = data.x, data.y, data.split
    L, n = s["layers"], data.num_nodes
    extra = {"controller_seconds": 0.0}
    if learned:
        if controller_path and os.path.isfile(controller_path):
            ctrl = load_controller(controller_path, NUM_FEATURES)
            extra["controller_from"] = os.path.basename(controller_path)
        else:
            t0 = time.perf_counter()
            episode = gcn_episode(x, data.edge_index, y, split["train"], loss, L, s["hidden"],
                                  s["l2o_sample_nodes"], s["lr"], seed)
            ctrl = train_controller(episode, L, rounds=40, hidden_size=16, max_epochs=s["layer_epochs"],
                                    min_epochs=s["l2o_min_epochs"], decision_step=s["l2o_decision_step"],
                                    time_ratio=1e-2, seed=seed)
            extra["controller_seconds"] = time.perf_counter() - t0
            extra["controller_from"] = data.name
            if controller_path:
                save_controller(ctrl, controller_path)
        # median: stop where the sampled policy would have with probability 1/2 (threshold=None);
        # mean: the reference script's threshold, mean P(stop) over training; a number: P(stop) >= it.
        rule = s.get("l2o_rule", "median")
        threshold = None if rule == "median" else float(ctrl.stop_threshold) if rule == "mean" else float(rule)
        stopper = StopPolicy(ctrl, L, min_epochs=s["l2o_min_epochs"], max_epochs=s["layer_epochs"],
                             decision_step=s["l2o_decision_step"], threshold=threshold)
        extra["l2o_rule"] = rule
        extra["stop_threshold"] = float(ctrl.stop_threshold)
    else:
        stopper = FixedEpochs(s["layer_epochs"])
    # Re-seed: training a controller in this process consumed random numbers, and L-GCN and L2-GCN
    # should start from the same initial layers. (Runs before commit 'bench: re-seed' initialised
    # L2-GCN from the RNG state after in-process controller training.)
    torch.manual_seed(seed)
    model = LayerwiseGCN(x.size(1), s["hidden"], data.num_outputs, L, s["lw_dropout"])
    settings = LayerSettings(s["batch_size"], s["lr"], s["weight_decay"], seed=seed)
    store = FeatureStore("memory")
    clock, h, total_epochs, used = Clock(), x, 0, []
    step_bytes = {}
    for layer in range(L):
        clock.go()
        z = store.empty(n, h.size(1))
        propagate(adj, h, z)

        def on_epoch(epoch, mean, layer=layer, z=z):
            nonlocal total_epochs
            total_epochs += 1
            if layer == L - 1 and epoch % s["eval_every"] == 0:
                t = clock.stop()
                model.eval()
                with torch.no_grad():
                    row = {"seconds": t, "epoch": total_epochs, "loss": mean}
                    for key in ("valid", "test"):
                        idx = split[key]
                        row[key] = _acc(model.head(model.block(layer, z[idx])), y[idx])
                curve.append(row)
                model.train()
                clock.go()

        if layer == 0:  # exact saved bytes of one step: a separate one-step run, clock stopped
            clock.stop()
            probe = LayerwiseGCN(x.size(1), s["hidden"], data.num_outputs, L, s["lw_dropout"])
            with count_saved_bytes(exclude=probe) as c:
                train_layer(probe, 0, z, y, split["train"][:s["batch_size"]], loss, FixedEpochs(1),
                            LayerSettings(s["batch_size"], s["lr"]))
            step_bytes = c.total
            clock.go()
        epochs, _ = train_layer(model, layer, z, y, split["train"], loss, stopper, settings, "cpu", on_epoch)
        used.append(epochs)
        if layer < L - 1:
            nxt = store.empty(n, s["hidden"])
            model.eval()
            map_rows(lambda r, layer=layer: model.block(layer, r), z, nxt)
            h = nxt
        if clock.start is not None:
            clock.stop()
    last = curve[-1] if curve else None
    if last is None or last["epoch"] != total_epochs:  # score the final model
        model.eval()
        with torch.no_grad():
            row = {"seconds": clock.total, "epoch": total_epochs, "loss": float("nan")}
            for key in ("valid", "test"):
                idx = split[key]
                row[key] = _acc(model.head(model.block(L - 1, z[idx])), y[idx])
        curve.append(row)
    return {"step_saved_bytes": step_bytes, "epochs": total_epochs, "layer_epochs_used": used, **extra}


def _run_cluster(data, s, loss, curve, count_saved_bytes, seed) -> dict:
    from graphscale.nn.models import GCN
    from graphscale.sampling.cluster import build_cluster_sampler
    from graphscale.sampling.partition import PARTITIONERS

    x, y, split = data.x, data.y, data.split
    train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    train_mask[split["train"]] = True
    clock = Clock()
    clock.go()
    partitioner = "metis" if "metis" in PARTITIONERS else "random"
    sampler = build_cluster_sampler(data.edge_index, data.num_nodes, s["cluster_parts"], s["cluster_q"],
                                    partitioner=partitioner, seed=seed)
    partition_seconds = clock.stop()
    model = GCN(x.size(1), s["hidden"], data.num_outputs, s["layers"], s["full_dropout"])
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    step_bytes = 0
    for epoch in range(1, s["cluster_epochs"] + 1):
        clock.go()
        model.train()
        last = 0.0
        for sub in sampler.epoch(epoch):
            mask = train_mask[sub.node_ids]
            if not mask.any():
                continue
            opt.zero_grad(set_to_none=True)
            with count_saved_bytes(exclude=model) as c:
                value = loss(model(x[sub.node_ids], sub.edge_index)[mask], y[sub.node_ids][mask])
            step_bytes = max(step_bytes, c.total)
            value.backward()
            opt.step()
            last = float(value)
        t = clock.stop()
        model.eval()
        with torch.no_grad():
            logits = model(x, data.edge_index)
        curve.append({"seconds": t, "epoch": epoch, "loss": last,
                      "valid": _acc(logits[split["valid"]], y[split["valid"]]),
                      "test": _acc(logits[split["test"]], y[split["test"]])})
    return {"step_saved_bytes": step_bytes, "epochs": s["cluster_epochs"], "partition_seconds": partition_seconds,
            "partitioner": partitioner}
