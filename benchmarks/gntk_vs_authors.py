"""Cross-check graphscale's GNTK against the authors' own code (github.com/KangchengHou/gntk).

The test suite checks the batched kernel against an unbatched Kronecker-form oracle written for the
tests (``tests/gntk/kron_oracle.py``); an oracle written by the same team can share its
misreadings of the paper. This script removes that doubt: it imports the authors' ``gntk.py`` and
``util.py`` from a checkout you supply (nothing of it is copied into graphscale), and compares

* **data**: the authors' ``util.load_data`` against ``graphscale.data.graph_classification`` on the
  whole data set: node counts, edge sets, graph labels and node tags (each up to a renaming of the
  values, which the kernel cannot see);
* **kernel**: the authors' ``GNTK.diag`` / ``GNTK.gntk`` (numpy, ``scipy.sparse.kron``, one pair at a
  time, the adjacency built as their ``gram.py`` builds it: ``A + A^T + I``) against
  :func:`graphscale.gntk.kernel.gram_matrix` on a seeded random subset of the graphs, for each
  configuration given. Their ``num_layers`` counts the input layer: ``num_layers = L + 1``.

It needs ``networkx`` (the authors' loader uses it) and their code::

    git clone https://github.com/KangchengHou/gntk /path/to/gntk
    python benchmarks/gntk_vs_authors.py --authors /path/to/gntk --datasets NCI1 \\
        --configs L3-R3-uniform L9-R1-uniform-jk L13-R2-degree-jk --graphs 30

Rows go to ``benchmarks/results/gntk_vs_authors.csv``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time

import numpy as np

from graphscale.data.graph_classification import load_graph_dataset
from graphscale.errors import ConfigError
from graphscale.gntk.kernel import GNTKConfig, gram_matrix

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gntk import GIN, _cfg_str, _parse_cfg, env, write  # noqa: E402


def _authors_modules(path: str):
    for f in ("gntk.py", "util.py"):
        if not os.path.isfile(os.path.join(path, f)):
            raise SystemExit(f"--authors {path!r} must be a checkout of github.com/KangchengHou/gntk "
                             f"(no {f} there)")
    try:
        import networkx  # noqa: F401
    except ImportError:
        raise SystemExit("the authors' loader needs networkx: pip install networkx") from None
    sys.path.insert(0, os.path.abspath(path))
    return importlib.import_module("gntk"), importlib.import_module("util")


def _load_authors(util, name: str, data_root: str):
    """The authors' ``load_data`` reads ``dataset/<NAME>/<NAME>.txt`` relative to the working folder."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.abspath(data_root), os.path.join(tmp, "dataset"))
        os.chdir(tmp)
        try:
            graphs, _ = util.load_data(name, name.upper().startswith(("IMDB", "COLLAB")))
        finally:
            os.chdir(cwd)
    return graphs


def _same_partition(a, b) -> bool:
    """``a`` and ``b`` agree up to a renaming of their values (a bijection)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def compare_data(theirs, ours) -> dict:
    if len(theirs) != len(ours.graphs):
        return {"data_equal": False, "data_note": f"{len(theirs)} vs {len(ours.graphs)} graphs"}
    for i, (t, g) in enumerate(zip(theirs, ours.graphs)):
        if len(t.g) != g.num_nodes:
            return {"data_equal": False, "data_note": f"graph {i}: {len(t.g)} vs {g.num_nodes} nodes"}
        te = {tuple(sorted(e)) for e in t.g.edges}
        oe = {tuple(sorted(e)) for e in np.asarray(g.edges).T.tolist()}
        if te != oe:
            return {"data_equal": False, "data_note": f"graph {i}: edge sets differ ({len(te)} vs {len(oe)})"}
    tags_t = np.concatenate([np.asarray(t.node_tags) for t in theirs])
    tags_o = np.concatenate([np.asarray(g.tags) for g in ours.graphs])
    labels_ok = _same_partition([t.label for t in theirs], ours.labels)
    tags_ok = _same_partition(tags_t, tags_o)
    return {"data_equal": labels_ok and tags_ok,
            "data_note": f"graphs, node counts and edge sets equal; labels {'equal' if labels_ok else 'DIFFER'}; "
                         f"node tags {'equal' if tags_ok else 'DIFFER'} up to renaming"}


def authors_gram(gntk_mod, theirs, idx, cfg: GNTKConfig) -> np.ndarray:
    import scipy.sparse as sp

    model = gntk_mod.GNTK(num_layers=cfg.layers + 1, num_mlp_layers=cfg.mlp_layers, jk=int(cfg.jk),
                          scale=cfg.scale)
    adj, diag = [], []
    for i in idx:
        g = theirs[i]
        n = len(g.g)
        e = np.array(list(g.g.edges), dtype=np.int64).reshape(-1, 2)
        a = sp.coo_matrix((np.ones(len(e), dtype=np.float32), (e[:, 0], e[:, 1])), shape=(n, n))
        a = a + a.T + sp.identity(n)  # as their gram.py builds it
        adj.append(a)
        diag.append(model.diag(g, a))
    out = np.zeros((len(idx), len(idx)))
    for p in range(len(idx)):
        for q in range(p, len(idx)):
            out[p, q] = out[q, p] = model.gntk(theirs[idx[p]], theirs[idx[q]], diag[p], diag[q], adj[p], adj[q])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors", required=True, help="checkout of github.com/KangchengHou/gntk")
    p.add_argument("--data", default=GIN, help="GIN-format data root (<NAME>/<NAME>.txt)")
    p.add_argument("--datasets", nargs="+", default=["NCI1"])
    p.add_argument("--configs", nargs="+", default=["L3-R3-uniform", "L9-R1-uniform-jk", "L13-R2-degree-jk"],
                   help="L<layers>-R<mlp layers>-<uniform|degree>[-jk]")
    p.add_argument("--graphs", type=int, default=30, help="random graphs per data set (all pairs compared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfgs = []
    for c in args.configs:  # bad strings fail here, before any loading
        try:
            cfgs.append(_parse_cfg(c))
        except (IndexError, ValueError, ConfigError) as e:
            raise SystemExit(f"--configs {c!r}: expected L<layers>-R<mlp layers>-<uniform|degree>[-jk], "
                             f"e.g. L11-R3-degree-jk ({e})") from None
    gntk_mod, util = _authors_modules(args.authors)
    rows = []
    for name in args.datasets:
        ours = load_graph_dataset(name, args.data)
        theirs = _load_authors(util, ours.name, args.data)
        data = compare_data(theirs, ours)
        print(f"{name}: data {'equal' if data['data_equal'] else 'DIFFERENT'} ({data['data_note']})", flush=True)
        k = min(args.graphs, len(ours.graphs))
        idx = np.sort(np.random.default_rng(args.seed).choice(len(ours.graphs), k, replace=False))
        for cfg in cfgs:
            t0 = time.perf_counter()
            ref = authors_gram(gntk_mod, theirs, idx, cfg)
            ref_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = gram_matrix([ours.graphs[i] for i in idx], cfg, progress=False)
            our_s = time.perf_counter() - t0
            row = {"dataset": name, "config": _cfg_str(cfg),
                   "graphs": k, "pairs": k * (k + 1) // 2, "seed": args.seed,
                   "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
                   "max_entry_rel_diff": float(np.max(np.abs(got - ref) / np.abs(ref))),
                   "authors_s": round(ref_s, 2), "graphscale_s": round(our_s, 2), **data, **env()}
            rows.append(row)
            print(f"{name} {row['config']} ({k} graphs): max relative difference {row['max_rel_diff']:.2e} "
                  f"(per entry {row['max_entry_rel_diff']:.2e})", flush=True)
    write("vs_authors", rows, to_json=False)


if __name__ == "__main__":
    main()
