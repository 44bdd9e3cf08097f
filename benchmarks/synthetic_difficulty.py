"""How hard is a synthetic arxiv-kind set? Nearest-class-mean accuracy of ``A_hat^K X``, K = 0, 1, 2.

A training-free probe of the information in the features (K = 0, what an MLP can use) and in the
graph (K = 2, what a linear 2-layer GCN / SGC can use): class means from the training split, each
test node assigned to the nearest mean (the Bayes rule for isotropic Gaussian classes, which is how
:mod:`graphscale.data.synthetic` draws the features). Compare with ogbn-arxiv's published MLP 55.5 %
and GCN 71.7 % (OGB leaderboard).

Usage::

    python benchmarks/synthetic_difficulty.py --datasets synthetic-arxiv-100k-hard synthetic-arxiv-1m \\
        --root /work/lwdata
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_layerwise import PRESETS, _load  # noqa: E402  (same presets and loader as the benchmark)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic-arxiv-100k-hard"], choices=sorted(PRESETS))
    p.add_argument("--root", default=os.path.join(HERE, "..", "data"), help="where synthetic sets are written")
    args = p.parse_args()
    for name in args.datasets:
        acc = probe(_load(name, args.root))
        print(f"{name}: nearest-class-mean test accuracy " +
              ", ".join(f"K={k} {100 * a:.1f} %" for k, a in acc.items()), flush=True)


if __name__ == "__main__":
    main()
