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

Writes ``layerwise[_TAG].csv`` (one row per data set x method x seed), ``layerwise[_TAG].json``
(the rows with their training curves) and ``layerwise[_TAG]_summary.{csv,json}`` (mean / std over
seeds) through graphscale.bench.output: a fresh ``runs/bench/layerwise-<timestamp>/`` unless
``--out`` is given. The per-method code lives in :mod:`graphscale.bench.layerwise_runs`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from graphscale.bench.layerwise_runs import METHODS
from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NAME = "layerwise"
PLANETOID_ROOT = os.path.join(os.environ.get("GRAPHSCALE_SHARED_DATA", os.path.join(REPO, "..", "shared", "data")),
                              "planetoid")


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


FIELDS = ["dataset", "method", "seed", "num_nodes", "num_edges", "num_train", "epochs", "layer_epochs_used",
          "train_seconds", "controller_seconds", "controller_from", "partition_seconds", "target_valid",
          "time_to_target", "speedup_vs_full", "train_seconds_ratio_vs_lgcn", "time_to_target_ratio_vs_lgcn",
          "stop_threshold", "l2o_rule", "test_at_target", "best_valid", "test_at_best_valid", "final_valid",
          "final_test", "step_saved_bytes", "saved_bytes_ratio_vs_full", "peak_rss_bytes", "peak_rss_growth_bytes",
          "wall_seconds", "threads", "source"]


def _write(writer, all_rows: list, meta: dict, args) -> list[str]:
    """The rows (curves in the JSON only) and the per-seed summary; called after every data set, so a
    long run keeps what it measured (the writer replaces files it wrote itself in this run)."""
    stem = "layerwise" + (f"_{args.tag}" if args.tag else "")
    ordered = [{**{k: r[k] for k in FIELDS if k in r}, **{k: v for k, v in r.items() if k not in FIELDS}}
               for r in all_rows]
    paths = list(writer.write_table(stem, ordered, {"meta": meta}, csv_exclude=("curve",)))
    paths += writer.write_table(stem + "_summary", aggregate_seeds(all_rows), {"meta": meta})
    return paths


def _stems(args) -> list[str]:
    stem = "layerwise" + (f"_{args.tag}" if args.tag else "")
    return [stem, stem + "_summary"]


def _merge(writer, args, meta) -> int:
    rows, sources = [], []
    for spec in args.merge:
        path, _, suffix = spec.partition(":")
        with open(path) as fh:
            blob = json.load(fh)
        sources.append({"file": os.path.basename(path), "suffix": suffix,
                        "command": blob.get("meta", {}).get("command") or blob.get("environment", {}).get("command")})
        for r in blob["rows"]:
            r = dict(r, source=os.path.basename(path))
            if suffix and r["method"] != "full":
                r["method"] += suffix
            rows.append(r)
    meta = dict(meta, merged_from=sources)
    writer.check(*_stems(args))
    all_rows = []
    for key in dict.fromkeys((r["dataset"], r["seed"]) for r in rows):
        group = [r for r in rows if (r["dataset"], r["seed"]) == key]
        group.sort(key=lambda r: r["method"] != "full")
        summarise(group, args.tol)
        all_rows += group
    print("wrote " + ", ".join(_write(writer, all_rows, meta, args)))
    for r in aggregate_seeds(all_rows):
        print(r["dataset"], r["method"], {k: round(v, 4) for k, v in r.items() if k.endswith("_mean")},
              "reached", r["reached"], "of", len(r["seeds"]))
    return 0


def main(argv=None) -> int:
    try:
        return _main(argv)
    except GraphscaleError as exc:
        print(f"bench_layerwise: error: {exc}", file=sys.stderr)
        return 2


def _main(argv) -> int:
    from graphscale.bench.layerwise_runs import PRESETS, SETTINGS
    from graphscale.memory.accounting import peak_rss_subprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer", "synthetic-arxiv:100000"],
                   help="cora, citeseer, pubmed, a preset (" + ", ".join(PRESETS) + ") or synthetic-arxiv:N "
                        "(default: cora citeseer synthetic-arxiv:100000)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run (default: all)")
    p.add_argument("--root", default=None,
                   help="folder for the synthetic data sets (default: a temporary folder, removed at the end)")
    p.add_argument("--planetoid-root", default=PLANETOID_ROOT,
                   help=f"folder holding the Planetoid data sets (default {PLANETOID_ROOT})")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--tol", type=float, default=0.01, help="target = full-batch best valid accuracy - tol "
                                                           "(default 0.01)")
    p.add_argument("--controller", default=None, metavar="FILE",
                   help="an L2-GCN controller file to use (read only); default: train one on the first data set "
                        "(per seed) and write it into the output folder")
    p.add_argument("--tag", default="", help="suffix of the result file names: layerwise_TAG.csv ...")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default 3600)")
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
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    overrides = {}
    keys = set().union(*(s.keys() for s in SETTINGS.values())) | {"l2o_rule"}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(keys))}")
        overrides[key] = value
    if args.controller and not os.path.isfile(args.controller):
        raise ConfigError(f"--controller {args.controller!r}: no such file")
    if args.l2o_rule not in ("median", "mean"):
        try:
            float(args.l2o_rule)
        except ValueError:
            raise ConfigError(f"--l2o-rule {args.l2o_rule!r}: expected median, mean or a number") from None

    if "l2gcn" in args.methods and not args.merge:
        from graphscale.bench.layerwise_runs import settings
        for ds in args.datasets:
            s = {**settings(ds), **{k: v for k, v in overrides.items()}}
            epochs = args.layer_epochs if args.layer_epochs is not None else int(s["layer_epochs"])
            if epochs < int(s["l2o_min_epochs"]):
                raise ConfigError(f"--layer-epochs {epochs}: L2-GCN on {ds} decides from epoch "
                                  f"{s['l2o_min_epochs']} (l2o_min_epochs); give at least that many, or "
                                  f"--set l2o_min_epochs=N")
    writer = ResultWriter.from_args(args, NAME)
    meta = {"threads": args.threads,
            "command": "python benchmarks/bench_layerwise.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.merge:
        return _merge(writer, args, meta)
    writer.check(*_stems(args))
    work = tempfile.mkdtemp(prefix="bench-layerwise-")
    root = args.root or os.path.join(work, "data")
    all_rows = []
    try:
        for ds in args.datasets:
            for seed in args.seeds:
                rows = []
                ctrl_path = args.controller or os.path.join(work, f"layerwise_controller_s{seed}.pt")
                for m in args.methods:
                    t0 = time.perf_counter()
                    res = peak_rss_subprocess("graphscale.bench.layerwise_runs:run_method",
                                              {"dataset": ds, "method": m, "root": root, "threads": args.threads,
                                               "seed": seed, "controller_path": ctrl_path,
                                               "full_max_seconds": args.full_max_seconds,
                                               "layer_epochs": args.layer_epochs, "l2o_rule": args.l2o_rule,
                                               "overrides": overrides, "planetoid_root": args.planetoid_root},
                                              timeout=args.timeout)
                    row = res["result"]
                    row["seed"], row["threads"] = seed, args.threads
                    row["peak_rss_bytes"], row["base_rss_bytes"] = res["peak_rss"], res["base_rss"]
                    row["peak_rss_growth_bytes"] = res["peak_rss"] - res["base_rss"]
                    row["wall_seconds"] = time.perf_counter() - t0
                    rows.append(row)
                    print(f"{ds} seed {seed} {m}: {row['curve'][-1]['seconds']:.1f} s train, valid "
                          f"{max(q['valid'] for q in row['curve']):.4f}, epochs "
                          f"{row.get('layer_epochs_used', row['epochs'])}", flush=True)
                summarise(rows, args.tol)
                for r in rows:
                    print(f"  {ds:>20} s{seed} {r['method']:>6}: test@best-valid {r['test_at_best_valid']:.4f} final "
                          f"test {r['final_test']:.4f}  time-to-target {r['time_to_target']}  train "
                          f"{r['train_seconds']:.2f} s  ratio-vs-lgcn {r.get('train_seconds_ratio_vs_lgcn')}  step "
                          f"saved {r['step_saved_bytes'] / 2**20:.2f} MiB  peak RSS {r['peak_rss_bytes'] / 2**20:.0f} "
                          f"MiB", flush=True)
                all_rows += rows
                paths = _write(writer, all_rows, meta, args)
        if not args.controller and "l2gcn" in args.methods:
            for seed in args.seeds:
                src = os.path.join(work, f"layerwise_controller_s{seed}.pt")
                if os.path.isfile(src):
                    with open(src, "rb") as fh:
                        blob = fh.read()
                    paths.append(writer.write_file(f"layerwise_controller_s{seed}.pt", lambda out: out.write(blob)))
        print("wrote " + ", ".join(paths))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
