"""Layer-wise training (L-GCN / L2-GCN) vs full-batch GCN vs Cluster-GCN: time to the full-batch
accuracy, and memory, on the same graph in one run.

Question: does layer-wise training (You, Chen, Wang, Shen, CVPR 2020) reach the accuracy of the same
GCN trained full-batch faster and in less memory, and does the learned controller (L2-GCN) cut the
time further?

Per data set, every method runs in a fresh process (peak RSS of its own, through
:func:`graphscale.memory.accounting.peak_rss_subprocess`) and reports:

* the training-time curve of (seconds, valid, test): the clock stops during evaluation, so all
  methods are timed on training work only (L-GCN's aggregations and forward maps are included;
  Cluster-GCN's partitioning is included; building ``A_hat`` once is excluded for all);
* ``target``: the full-batch GCN's best validation accuracy minus ``--tol``; ``time_to_target``: the
  first training time at which a method's full-depth model scores at least that on validation;
* exact bytes autograd saves for one training step (``count_saved_bytes``), and the peak RSS growth
  of the process (data loading included, the same for every method).

L2-GCN's controller is trained once on the first data set (REINFORCE on sampled subgraphs; its time
is reported as ``controller_seconds``) and reused unchanged on the others, as the paper does.

Methods: ``full`` (the same :class:`LayerwiseGCN` trained end to end on the whole graph), ``lgcn``,
``l2gcn``, ``cluster`` (Cluster-GCN batches of :mod:`graphscale.sampling.cluster` with PyG GCN
layers, when that module is present).

Usage::

    python benchmarks/bench_layerwise.py --datasets cora citeseer synthetic-arxiv:100000
    python benchmarks/bench_layerwise.py --datasets synthetic-arxiv:1000000 --methods full lgcn l2gcn

Writes ``benchmarks/results/layerwise.csv`` (one row per data set x method) and
``benchmarks/results/layerwise.json`` (rows + curves), tagged with device and versions; ``--tag``
adds a suffix to the file names.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

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


def _settings(name: str) -> dict:
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


def _load(name: str, root: str):
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
    return load_dataset(name, os.path.join(REPO, "..", "shared", "data", "planetoid"))


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
               layer_epochs: int | None = None, l2o_rule: str = "median", overrides: dict | None = None) -> dict:
    """One (data set, method) run; returns summary + curve (runs inside peak_rss_subprocess)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from graphscale.memory.accounting import count_saved_bytes
    from graphscale.sampling.propagation import gcn_adjacency
    from graphscale.train.metrics import loss_fn

    s = _settings(dataset)
    if full_max_seconds is not None:
        s["full_max_seconds"] = full_max_seconds
    if layer_epochs is not None:
        s["layer_epochs"] = layer_epochs
    s["l2o_rule"] = l2o_rule
    for key, value in (overrides or {}).items():
        if key not in s:
            raise ValueError(f"--set {key}: not a setting; expected one of {sorted(s)}")
        s[key] = type(s[key])(value) if s[key] is not None else float(value)
    data = _load(dataset, root)
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
        raise ValueError(method)
    out["curve"] = curve
    return out


def _run_full(data, adj, s, loss, curve, count_saved_bytes) -> dict:
    from graphscale.sampling.propagation import aggregate
    from graphscale.train.layerwise import LayerwiseGCN
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
    from graphscale.train.layerwise import FixedEpochs, LayerSettings, LayerwiseGCN, gcn_episode, train_layer

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


# --------------------------------------------------------------------------- driver
def _versions() -> dict:
    import numpy
    import torch_geometric
    return {"torch": torch.__version__, "torch_geometric": torch_geometric.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


def summarise(rows: list[dict], tol: float) -> None:
    """Add target / time_to_target / final scores / ratios vs full-batch to the rows of one data set."""
    full = next((r for r in rows if r["method"] == "full"), None)
    target = max(p["valid"] for p in full["curve"]) - tol if full else None
    for r in rows:
        curve = r["curve"]
        best = max(curve, key=lambda p: p["valid"])
        r["best_valid"], r["test_at_best_valid"] = best["valid"], best["test"]
        r["final_valid"], r["final_test"] = curve[-1]["valid"], curve[-1]["test"]
        r["train_seconds"] = curve[-1]["seconds"]
        r["target_valid"] = target
        hit = next((p for p in curve if target is not None and p["valid"] >= target), None)
        r["time_to_target"] = hit["seconds"] if hit else None
        r["test_at_target"] = hit["test"] if hit else None
    if full:
        for r in rows:
            if r["time_to_target"] and full["time_to_target"]:
                r["speedup_vs_full"] = full["time_to_target"] / r["time_to_target"]
            r["saved_bytes_ratio_vs_full"] = r["step_saved_bytes"] / full["step_saved_bytes"]
    for r in rows:  # vs the L-GCN row of the same run (same load), also in merged tables
        lgcn = next((q for q in rows if q["method"].startswith("lgcn") and q.get("source") == r.get("source")), None)
        r.pop("time_to_target_ratio_vs_lgcn", None)
        if lgcn:
            r["train_seconds_ratio_vs_lgcn"] = r["train_seconds"] / lgcn["train_seconds"]
            if r["time_to_target"] and lgcn["time_to_target"]:
                r["time_to_target_ratio_vs_lgcn"] = r["time_to_target"] / lgcn["time_to_target"]


SUMMARY_KEYS = ("final_test", "test_at_best_valid", "best_valid", "train_seconds", "epochs", "time_to_target",
                "speedup_vs_full", "train_seconds_ratio_vs_lgcn", "time_to_target_ratio_vs_lgcn",
                "peak_rss_bytes", "controller_seconds")


def aggregate_seeds(rows: list[dict]) -> list[dict]:
    """Mean / std / count over seeds of SUMMARY_KEYS per (data set, method); a time to target that
    some seeds never reached is averaged over the seeds that reached it (``reached`` counts them)."""
    import statistics
    out = []
    for key in dict.fromkeys((r["dataset"], r["method"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["method"]) == key]
        row = {"dataset": key[0], "method": key[1], "seeds": [r["seed"] for r in group],
               "reached": sum(r.get("time_to_target") is not None for r in group)}
        for k in SUMMARY_KEYS:
            vals = [r[k] for r in group if r.get(k) is not None]
            if vals:
                row[k + "_mean"] = statistics.fmean(vals)
                row[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(row)
    return out


def _write(all_rows: list, meta: dict, args) -> None:
    """Write the CSV and JSON (called after every data set, so a long run keeps what it measured)."""
    suffix = f"_{args.tag}" if args.tag else ""
    fields = ["dataset", "method", "seed", "num_nodes", "num_edges", "num_train", "epochs", "layer_epochs_used",
              "train_seconds", "controller_seconds", "controller_from", "partition_seconds", "target_valid",
              "time_to_target", "speedup_vs_full", "train_seconds_ratio_vs_lgcn",
              "time_to_target_ratio_vs_lgcn", "stop_threshold", "l2o_rule", "test_at_target", "best_valid", "test_at_best_valid",
              "final_valid", "final_test", "step_saved_bytes", "saved_bytes_ratio_vs_full", "peak_rss_bytes",
              "peak_rss_growth_bytes", "wall_seconds"]
    with open(os.path.join(HERE, "results", f"layerwise{suffix}.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields + ["device", "torch", "threads"])
        for r in all_rows:
            w.writerow([r.get(f, "") for f in fields] + [meta["device"], meta["versions"]["torch"], args.threads])
    summary = aggregate_seeds(all_rows)
    with open(os.path.join(HERE, "results", f"layerwise{suffix}_summary.csv"), "w", newline="") as fh:
        keys = ["dataset", "method", "seeds", "reached"] + [f"{k}_{s}" for k in SUMMARY_KEYS for s in ("mean", "std")]
        w = csv.writer(fh)
        w.writerow(keys)
        for r in summary:
            w.writerow([r.get(k, "") for k in keys])
    with open(os.path.join(HERE, "results", f"layerwise{suffix}.json"), "w") as fh:
        json.dump({"meta": meta, "summary": summary, "rows": all_rows}, fh, indent=1)


def _merge(args, meta) -> int:
    rows, sources = [], []
    for spec in args.merge:
        path, _, suffix = spec.partition(":")
        with open(path) as fh:
            blob = json.load(fh)
        sources.append({"file": os.path.basename(path), "suffix": suffix, "command": blob["meta"].get("command")})
        for r in blob["rows"]:
            r = dict(r, source=os.path.basename(path))
            if suffix and r["method"] != "full":
                r["method"] += suffix
            rows.append(r)
    meta = dict(meta, merged_from=sources)
    all_rows = []
    for key in dict.fromkeys((r["dataset"], r["seed"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["seed"]) == key]
        group.sort(key=lambda r: r["method"] != "full")
        summarise(group, args.tol)
        all_rows += group
    _write(all_rows, meta, args)
    for r in aggregate_seeds(all_rows):
        print(r["dataset"], r["method"], {k: round(v, 4) for k, v in r.items() if k.endswith("_mean")},
              "reached", r["reached"], "of", len(r["seeds"]))
    return 0


def main(argv=None) -> int:
    from graphscale.memory.accounting import peak_rss_subprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer", "synthetic-arxiv:100000"])
    p.add_argument("--methods", nargs="+", default=["full", "lgcn", "l2gcn", "cluster"])
    p.add_argument("--root", default=os.path.join(REPO, "data"), help="where synthetic sets are written")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: the machine is shared)")
    p.add_argument("--tol", type=float, default=0.01, help="target = full-batch best valid accuracy - tol")
    p.add_argument("--controller", default=os.path.join(HERE, "results", "layerwise_controller.pt"),
                   help="L2-GCN controller file: trained on the first data set if missing, then reused")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="one run per seed (model init, batch order; L2-GCN trains its controller per seed)")
    p.add_argument("--full-max-seconds", type=float, default=None,
                   help="override the full-batch training-time budget of every data set")
    p.add_argument("--merge", nargs="+", default=None, metavar="FILE[:SUFFIX]",
                   help="no runs: re-summarise the rows of earlier result JSONs (one table per data set and "
                        "seed; methods other than full get SUFFIX appended, so e.g. an L2-GCN rerun under "
                        "another rule is scored against the same full-batch target) and write them under --tag")
    p.add_argument("--l2o-rule", default="median",
                   help="L2-GCN deployment: median (default), mean (reference script's mean-P(stop) threshold) "
                        "or a number (stop when P(stop) >= it, the paper's rule)")
    p.add_argument("--layer-epochs", type=int, default=None,
                   help="override epochs per layer (L-GCN) / max epochs per layer (L2-GCN)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override per-data-set settings for every method (e.g. lw_dropout=0.5 hidden=256)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = value

    try:
        import graphscale.sampling.cluster  # noqa: F401
    except ImportError:
        args.methods = [m for m in args.methods if m != "cluster"]
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    env = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
    meta = {"device": _device(), "versions": _versions(), "threads": args.threads,
            "note": "measured on a 2-core machine shared with other jobs: timings are noisy, byte counts exact",
            "command": "python benchmarks/bench_layerwise.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    all_rows = []
    if args.merge:
        return _merge(args, meta)
    for ds in args.datasets:
        for seed in args.seeds:
            rows = []
            ctrl_path = args.controller
            if ctrl_path and args.seeds != [0]:
                stem, ext = os.path.splitext(ctrl_path)
                ctrl_path = f"{stem}_s{seed}{ext}"
            for m in args.methods:
                t0 = time.perf_counter()
                res = peak_rss_subprocess("bench_layerwise:run_method",
                                          {"dataset": ds, "method": m, "root": args.root, "threads": args.threads,
                                           "seed": seed, "controller_path": ctrl_path,
                                           "full_max_seconds": args.full_max_seconds,
                                           "layer_epochs": args.layer_epochs, "l2o_rule": args.l2o_rule,
                                           "overrides": overrides},
                                          timeout=args.timeout, env=env)
                row = res["result"]
                row["seed"] = seed
                row["peak_rss_bytes"], row["base_rss_bytes"] = res["peak_rss"], res["base_rss"]
                row["peak_rss_growth_bytes"] = res["peak_rss"] - res["base_rss"]
                row["wall_seconds"] = time.perf_counter() - t0
                rows.append(row)
                print(f"{ds} seed {seed} {m}: {row['curve'][-1]['seconds']:.1f} s train, valid "
                      f"{max(q['valid'] for q in row['curve']):.4f}, epochs {row.get('layer_epochs_used', row['epochs'])}",
                      flush=True)
            summarise(rows, args.tol)
            for r in rows:
                print(f"  {ds:>20} s{seed} {r['method']:>6}: test@best-valid {r['test_at_best_valid']:.4f} final test "
                      f"{r['final_test']:.4f}  time-to-target {r['time_to_target']}  train {r['train_seconds']:.2f} s  "
                      f"ratio-vs-lgcn {r.get('train_seconds_ratio_vs_lgcn')}  step saved "
                      f"{r['step_saved_bytes'] / 2**20:.2f} MiB  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
            all_rows += rows
            _write(all_rows, meta, args)

    return 0


if __name__ == "__main__":
    sys.exit(main())
