"""``graphscale gntk``: GNTK Gram matrix of a graph-classification set, optionally 10-fold SVM accuracy.

Examples::

    graphscale gntk --dataset MUTAG --layers 2 --mlp-layers 2 --scale degree --cv
    graphscale gntk --data ../shared/data/TU --dataset IMDB-BINARY --out imdb.npy --cv
    graphscale gntk --node --data ../shared/data/planetoid --dataset cora --layers 2 --mlp-layers 1

The Gram matrix goes to ``--out`` (``.npy``, float64) with the labels beside it (``.labels.npy``); with
``--cv`` the accuracy table goes to ``<out stem>.json``. Chunks are written to ``<out>.chunks/`` while
computing; rerunning the same command resumes from them (``--resume`` insists that they exist), and
they are removed once the ``.npy`` is written unless ``--keep-chunks``.
"""
from __future__ import annotations

import argparse
import os


def default_data_root() -> str:
    """``$GRAPHSCALE_SHARED_DATA/GIN_format/dataset``, else ``../shared/data/GIN_format/dataset``."""
    shared = os.environ.get("GRAPHSCALE_SHARED_DATA", os.path.join("..", "shared", "data"))
    return os.path.join(shared, "GIN_format", "dataset")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "gntk", help="Graph Neural Tangent Kernel Gram matrix and kernel-SVM accuracy",
        description="Graph Neural Tangent Kernel (Du et al., NeurIPS 2019): Gram matrix of a graph-classification "
                    "data set (GIN text or TU format), optionally scored by a kernel SVM with 10-fold "
                    "cross-validation; or, with --node, node classification on a Planetoid graph.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None,
                   help="folder with one sub-folder per data set (GIN text or TU raw format); default "
                        f"{default_data_root()} (or ../shared/data/planetoid with --node)")
    p.add_argument("--dataset", required=True, help="data set name, e.g. MUTAG, PTC, NCI1, PROTEINS, IMDB-B, IMDB-M")
    p.add_argument("--layers", type=int, default=2, help="L: BLOCK operations (aggregation + MLP)")
    p.add_argument("--mlp-layers", type=int, default=2, help="R: ReLU layers per BLOCK")
    p.add_argument("--scale", choices=("uniform", "degree"), default="degree",
                   help="neighbour aggregation: sum (uniform) or 1/(degree+1) (degree)")
    p.add_argument("--jk", action=argparse.BooleanOptionalAction, default=True, help="jumping-knowledge readout")
    p.add_argument("--degree-as-tag", action=argparse.BooleanOptionalAction, default=None,
                   help="node degree as the node label (default: automatic for IMDB / COLLAB)")
    p.add_argument("--out", default=None, help="Gram matrix .npy (default gntk-<dataset>-L<L>-R<R>-<scale>[-jk].npy)")
    p.add_argument("--cv", action="store_true", help="10-fold kernel-SVM accuracy (shipped folds when present)")
    p.add_argument("--c-grid", type=int, default=25, help="number of C values in [1e-2, 1e4] for --cv")
    p.add_argument("--jobs", type=int, default=1, help="parallel SVM fits for --cv")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    p.add_argument("--chunk-nodes", type=int, default=None, help="padded nodes per block (default 512 CPU, 8192 CUDA)")
    p.add_argument("--workers", type=int, default=None, help="block pairs computed in parallel (default: CPU threads)")
    p.add_argument("--compile", action="store_true",
                   help="fuse the element-wise ReLU update with torch.compile (~1 min to compile)")
    p.add_argument("--resume", action="store_true", help="require an existing chunk folder and continue it "
                                                         "(resuming is automatic when the folder exists)")
    p.add_argument("--keep-chunks", action="store_true", help="keep <out>.chunks/ after writing the .npy")
    p.add_argument("--node", action="store_true", help="node-level GNTK on a Planetoid graph (public split)")
    p.add_argument("--max-bytes", type=float, default=None, help="memory budget of --node (default 80%% of free)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import shutil
    import time
    from dataclasses import asdict

    import numpy as np
    import torch

    from graphscale.errors import ConfigError
    from graphscale.gntk.kernel import GNTKConfig

    cfg = GNTKConfig(args.layers, args.mlp_layers, args.scale, args.jk)
    dtype = getattr(torch, args.dtype)
    if args.node:
        from graphscale.gntk.node import evaluate_planetoid

        root = args.data or os.path.join(os.path.dirname(os.path.dirname(default_data_root())), "planetoid")
        res = evaluate_planetoid(args.dataset.lower(), root, cfg, dtype=dtype, device=args.device,
                                 max_bytes=None if args.max_bytes is None else int(args.max_bytes))
        res["config"] = asdict(cfg)
        out = args.out or f"gntk-node-{args.dataset.lower()}-L{cfg.layers}-R{cfg.mlp_layers}-{cfg.scale}" \
                          f"{'-jk' if cfg.jk else ''}.json"
        _write_json(out, res)
        b = res["best"]
        print(f"{args.dataset}: node GNTK {res['kernel_seconds']:.1f} s, best on valid: {b['kernel']} {b['method']} "
              f"-> valid {100 * b['valid_acc']:.1f} %, test {100 * b['test_acc']:.1f} %  ({out})")
        return 0

    from graphscale.data.graph_classification import load_graph_dataset
    from graphscale.gntk.kernel import gram_matrix

    root = args.data or default_data_root()
    ds = load_graph_dataset(args.dataset, root, degree_as_tag=args.degree_as_tag)
    out = args.out or f"gntk-{ds.name}-L{cfg.layers}-R{cfg.mlp_layers}-{cfg.scale}{'-jk' if cfg.jk else ''}.npy"
    if not out.endswith(".npy"):
        out += ".npy"
    chunk_dir = out + ".chunks"
    if args.resume and not os.path.isdir(chunk_dir):
        raise ConfigError(f"--resume: no chunk folder {chunk_dir!r} to resume (run without --resume to start)")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    gram = gram_matrix(ds.graphs, cfg, dtype=dtype, device=args.device, chunk_nodes=args.chunk_nodes,
                       chunk_dir=chunk_dir, progress=not args.no_progress, compile=args.compile,
                       workers=args.workers)
    seconds = time.perf_counter() - t0
    np.save(out, gram)
    np.save(out[:-4] + ".labels.npy", ds.labels)
    if not args.keep_chunks:
        shutil.rmtree(chunk_dir, ignore_errors=True)
    print(f"{ds.name}: {len(ds)} graphs, Gram matrix in {seconds:.1f} s -> {out}")
    if args.cv:
        from graphscale.gntk.svm import cross_validate, default_c_grid, format_table

        res = cross_validate(gram, ds.labels, ds.folds, c_grid=default_c_grid(args.c_grid), n_jobs=args.jobs)
        res.update({"dataset": ds.name, "format": ds.fmt, "folds": ds.meta["folds"], "config": asdict(cfg),
                    "dtype": args.dtype, "gram_seconds": seconds, "num_graphs": len(ds)})
        js = out[:-4] + ".json"
        _write_json(js, res)
        print(format_table(res))
        print(f"best: {res['best']['variant']} C={res['best']['C']:.4g}: {100 * res['best']['mean']:.2f} "
              f"+- {100 * res['best']['std']:.2f} %  ({js})")
    return 0


def _write_json(path: str, obj) -> None:
    from graphscale.atomic import save_json

    save_json(obj, path)
