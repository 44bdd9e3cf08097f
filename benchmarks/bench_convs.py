"""Training epoch time of the GENConv recipes on graphscale's convolutions vs PyG's (``model.conv``).

For each recipe (deepergcn, revgnn, wt-revgnn, deq-gnn: the shipped quickstart configs) and each graph,
two trainers are set up in this one process from the same config and seed, one with
``model.conv=graphscale`` and one with ``model.conv=pyg`` (same initial weights), and their training
epochs run interleaved (graphscale first on even repeats, PyG first on odd ones), after one warm-up
epoch each. The timed call is :meth:`graphscale.train.trainer.Trainer._train_epoch`, the trainer's own
epoch (sampling, forward, loss, backward, optimiser step); evaluation is not timed.

Graphs:

* ``quickstart``: the quickstart's synthetic ogbn-proteins-like graph as shipped (20,000 nodes,
  average degree 20, 8 edge features, 10 random parts per epoch).
* ``high-degree``: proteins-shaped (8 edge features, 112 tasks) with ogbn-proteins' average degree
  (~600; ``--hd-nodes`` nodes) trained on the whole graph per step (``sampler.num_parts=1``), where
  PyG's GENConv materialises ``[E, F]`` message tensors in every layer. Depths are cut
  (``--hd-layers`` blocks for revgnn / wt-revgnn, ``--hd-deq-iter`` solver iterations) to keep the run
  in minutes on a 2-core machine.

    python benchmarks/bench_convs.py                       # both graphs, all four recipes
    python benchmarks/bench_convs.py --graphs quickstart --recipes deepergcn --repeats 2

Writes ``convs_cpu.{csv,json}`` (``convs_cpu_TAG`` with ``--tag TAG``; one row per graph, recipe and conv; ratio = graphscale / pyg median
epoch seconds) through graphscale.bench.output.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "convs"
RECIPES = {
    "deepergcn": ("configs/quickstart.yaml", []),
    "revgnn": ("configs/quickstart-revgnn.yaml", []),
    "wt-revgnn": ("configs/quickstart-revgnn.yaml", ["model.name=wt-revgnn"]),
    "deq-gnn": ("configs/quickstart-deq.yaml", []),
}
GRAPHS = ("quickstart", "high-degree")
CONVS = ("graphscale", "pyg")


def graph_overrides(graph: str, recipe: str, args) -> list[str]:
    if graph == "quickstart":
        return []
    # p_intra=0.1: most edges between communities, else the intra-community pairs run out and the
    # generator's duplicates collapse (1,000 nodes, 10 communities, p_intra 0.8 at degree 600 gave 215)
    o = [f"data.num_nodes={args.hd_nodes}", f"data.avg_degree={args.hd_degree}", "data.num_communities=8",
         "data.p_intra=0.1", "sampler.num_parts=1"]
    if recipe in ("revgnn", "wt-revgnn"):
        o += [f"model.num_layers={args.hd_layers}", "sampler.eval_parts=1"]
    if recipe == "deq-gnn":
        o += [f"model.max_iter={args.hd_deq_iter}", "sampler.eval_parts=1"]
    return o


def make_trainer(config: str, overrides: list[str], conv: str, work: str, data_root: str):
    from graphscale.train.config import load_config
    from graphscale.train.trainer import Trainer
    out = tempfile.mkdtemp(prefix=f"{conv}-", dir=work)
    cfg = load_config(os.path.join(REPO, config), overrides + [
        f"model.conv={conv}", f"data.root={data_root}", f"log.out={out}", "log.progress=false", "train.device=cpu"])
    trainer = Trainer(cfg)
    trainer._setup()
    return trainer


def measure(graph: str, recipe: str, args, work: str) -> list[dict]:
    config, extra = RECIPES[recipe]
    overrides = extra + graph_overrides(graph, recipe, args)
    trainers = {c: make_trainer(config, overrides, c, work, args.data_root) for c in CONVS}
    times: dict[str, list[float]] = {c: [] for c in CONVS}
    try:
        for rep in range(args.repeats + 1):  # repeat 0 is the warm-up (CSR caches, allocator)
            order = CONVS if rep % 2 == 0 else CONVS[::-1]
            for conv in order:
                torch.manual_seed(1000 + rep)  # the same dropout draws for both
                t0 = time.perf_counter()
                trainers[conv]._train_epoch(rep + 1)
                if rep:
                    times[conv].append(time.perf_counter() - t0)
    finally:
        for t in trainers.values():
            t.run_ctx.close()
    tr = trainers["graphscale"]
    m = tr.cfg.model
    med = {c: statistics.median(times[c]) for c in CONVS}
    rows = []
    for conv in CONVS:
        rows.append({
            "graph": graph, "recipe": recipe, "conv": conv, "epoch_s": round(med[conv], 4),
            "ratio_vs_pyg": round(med[conv] / med["pyg"], 3), "all_s": [round(v, 4) for v in times[conv]],
            "num_nodes": tr.data.num_nodes, "num_edges": int(tr.data.edge_index.size(1)),
            "steps_per_epoch": len(tr.sampler), "aggr": m.aggr, "hidden": m.hidden_channels,
            "layers": m.num_layers if recipe != "deq-gnn" else f"deq max_iter={m.max_iter}",
            "overrides": " ".join(overrides),
        })
    print(f"{graph:12s} {recipe:10s} graphscale {med['graphscale']:.3f} s  pyg {med['pyg']:.3f} s  "
          f"ratio {med['graphscale'] / med['pyg']:.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Training epoch time of deepergcn / revgnn / wt-revgnn / deq-gnn with "
                                            "graphscale's GENConv vs PyG's, interleaved in one process.")
    p.add_argument("--graphs", default=",".join(GRAPHS), help=f"comma-separated subset of {', '.join(GRAPHS)}")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {', '.join(RECIPES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per conv after one warm-up epoch (default 3)")
    p.add_argument("--hd-nodes", type=int, default=2000, help="high-degree graph: number of nodes (default 2000)")
    p.add_argument("--hd-degree", type=float, default=600.0, help="high-degree graph: average degree (default 600)")
    p.add_argument("--hd-layers", type=int, default=4, help="high-degree graph: revgnn / wt-revgnn blocks (default 4)")
    p.add_argument("--hd-deq-iter", type=int, default=5, help="high-degree graph: deq-gnn solver iterations (default 5)")
    p.add_argument("--data-root", default="data", help="folder for the synthetic data sets (default data)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--tag", default="", help="suffix of the result file name: convs_cpu_TAG (default: convs_cpu)")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        graphs = [g for g in args.graphs.split(",") if g]
        recipes = [r for r in args.recipes.split(",") if r]
        bad = [g for g in graphs if g not in GRAPHS] + [r for r in recipes if r not in RECIPES]
        if bad:
            raise ConfigError(f"unknown graph or recipe {', '.join(bad)}; expected graphs from {', '.join(GRAPHS)} "
                              f"and recipes from {', '.join(RECIPES)}")
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        if args.threads:
            torch.set_num_threads(args.threads)
        stem = f"convs_cpu_{args.tag}" if args.tag else "convs_cpu"
        writer = ResultWriter.from_args(args, NAME, "cpu")
        writer.check(stem)
        rows: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="bench-convs-") as work:
            for graph in graphs:
                for recipe in recipes:
                    rows += measure(graph, recipe, args, work)
                    # rewritten after every recipe (the writer allows its own files): a killed run keeps its rows
                    writer.write_table(stem, rows, {"note": args.note, "repeats": args.repeats},
                                       csv_exclude=("all_s",))
        print(f"wrote {', '.join(writer.written[-2:])}")
        return 0
    except GraphscaleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
