"""How hard is a synthetic arxiv-kind set? Nearest-class-mean accuracy of ``A_hat^K X``, K = 0, 1, 2.

A training-free probe of the information in the features (K = 0, what an MLP can use) and in the
graph (K = 2, what a linear 2-layer GCN / SGC can use): class means from the training split, each
test node assigned to the nearest mean (the Bayes rule for isotropic Gaussian classes, which is how
:mod:`graphscale.data.synthetic` draws the features). Compare with ogbn-arxiv's published MLP 55.5 %
and GCN 71.7 % (OGB leaderboard).

Usage::

    python benchmarks/synthetic_difficulty.py --datasets synthetic-arxiv-100k-hard synthetic-arxiv-1m \\
        --root /work/lwdata

Writes ``synthetic_difficulty.{csv,json}`` (one row per data set) through graphscale.bench.output
(a fresh ``runs/bench/synthetic-difficulty-<timestamp>/`` unless ``--out`` is given).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile

import torch

from graphscale.bench.layerwise_runs import PRESETS, load
from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import GraphscaleError

NAME = "synthetic-difficulty"


def probe(data, hops=(0, 1, 2)) -> dict:
    from graphscale.sampling.propagation import gcn_adjacency
    adj = gcn_adjacency(data.edge_index, data.num_nodes)  # the A_hat the benchmark's GCNs train on
    y = data.y.view(-1)
    train, test = data.split["train"], data.split["test"]
    c = int(y.max()) + 1
    out, h = {}, data.x.float()
    for k in range(max(hops) + 1):
        if k in hops:
            mu = torch.zeros(c, h.size(1)).index_add_(0, y[train], h[train])
            mu /= torch.bincount(y[train], minlength=c).clamp_min(1).unsqueeze(1).float()
            pred = torch.cat([torch.cdist(h[test[i:i + 65536]], mu).argmin(1) for i in range(0, test.numel(), 65536)])
            out[k] = float((pred == y[test]).float().mean())
        h = torch.sparse.mm(adj, h)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="How hard is a synthetic arxiv-kind set? Nearest-class-mean test "
                                "accuracy of A_hat^K X for K = 0, 1, 2 (features alone, then 1 and 2 hops).")
    p.add_argument("--datasets", nargs="+", default=["synthetic-arxiv-100k-hard"], choices=sorted(PRESETS),
                   metavar="NAME", help="synthetic presets to probe, from " + ", ".join(sorted(PRESETS)) +
                   " (default synthetic-arxiv-100k-hard)")
    p.add_argument("--root", default=None,
                   help="folder for the synthetic data sets (default: a temporary folder, removed at the end)")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        writer = ResultWriter.from_args(args, NAME, "cpu")
        writer.check("synthetic_difficulty")
        work = tempfile.mkdtemp(prefix="synthetic-difficulty-")
        rows = []
        try:
            for name in args.datasets:
                data = load(name, args.root or work)
                acc = probe(data)
                rows.append({"dataset": name, "num_nodes": data.num_nodes, "num_edges": data.num_edges,
                             **PRESETS[name], **{f"nearest_mean_test_acc_k{k}": a for k, a in acc.items()}})
                print(f"{name}: nearest-class-mean test accuracy " +
                      ", ".join(f"K={k} {100 * a:.1f} %" for k, a in acc.items()), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("wrote " + ", ".join(writer.write_table("synthetic_difficulty", rows)))
    except GraphscaleError as exc:
        print(f"synthetic_difficulty: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
