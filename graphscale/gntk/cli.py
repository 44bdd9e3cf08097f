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

from graphscale.errors import ConfigError

SCALES = ("uniform", "degree")  # graphscale.gntk.kernel.SCALES (not imported: it pulls in torch)


def default_data_root() -> str:
    """``$GRAPHSCALE_SHARED_DATA/GIN_format/dataset``, else ``../shared/data/GIN_format/dataset``."""
    shared = os.environ.get("GRAPHSCALE_SHARED_DATA", os.path.join("..", "shared", "data"))
    return os.path.join(shared, "GIN_format", "dataset")


def add_parser(subparsers) -> argparse.ArgumentParser:
    # Plain HelpFormatter: every help text below states its own default, once, in words.
    p = subparsers.add_parser(
        "gntk", help="Graph Neural Tangent Kernel Gram matrix and kernel-SVM accuracy",
        description="Graph Neural Tangent Kernel (Du et al., NeurIPS 2019): Gram matrix of a graph-classification "
                    "data set (GIN text or TU format), optionally scored by a kernel SVM with 10-fold "
                    "cross-validation; or, with --node, node classification on a Planetoid graph.",
        epilog="Example: graphscale gntk --dataset MUTAG --layers 1 --mlp-layers 2 --scale degree --cv")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder with one sub-folder per data set (GIN text or TU raw format); default "
                        f"{default_data_root()} (or ../shared/data/planetoid with --node)")
    p.add_argument("--dataset", required=True,
                   help="data set name, e.g. MUTAG, PTC, NCI1, PROTEINS, IMDB-B, IMDB-M (cora, citeseer, pubmed "
                        "with --node)")
    p.add_argument("--layers", type=int, default=2, metavar="L",
                   help="number of BLOCK operations (neighbour aggregation + MLP), at least 1; default 2")
    p.add_argument("--mlp-layers", type=int, default=2, metavar="R",
                   help="ReLU layers in each BLOCK, at least 1; default 2")
    p.add_argument("--scale", choices=SCALES, default="degree",
                   help="neighbour aggregation: plain sum (uniform) or divided by degree + 1 (degree); default degree")
    p.add_argument("--jk", action=argparse.BooleanOptionalAction, default=True,
                   help="jumping-knowledge readout: sum the input layer and every BLOCK instead of using the last "
                        "BLOCK only; on by default")
    p.add_argument("--degree-as-tag", action=argparse.BooleanOptionalAction, default=None,
                   help="use the node degree as the node label; by default on for IMDB and COLLAB, off otherwise")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the Gram matrix (.npy; the labels go beside it as .labels.npy); default "
                        "gntk-<dataset>-L<L>-R<R>-<scale>[-jk].npy in the current folder (a .json file with --node)")
    p.add_argument("--cv", action="store_true",
                   help="also score the Gram matrix with a kernel SVM, 10-fold cross-validation (the folds shipped "
                        "with the data set when there are any); the table goes to <out>.json")
    p.add_argument("--c-grid", type=int, default=None, metavar="N",
                   help="with --cv: number of SVM C values, log-spaced over 0.01 to 10000; default 25")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --cv: SVM fits run in parallel (-1: one per CPU); default 1")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="floating-point precision of the kernel computation; default float64 (the Gram matrix is "
                        "always saved as float64)")
    p.add_argument("--device", default="cpu", help="where to compute: cpu, cuda or cuda:N; default cpu")
    p.add_argument("--chunk-nodes", type=int, default=None, metavar="N",
                   help="padded nodes per block of graphs (memory per block pair grows with its square); default "
                        "512 on CPU, 8192 on CUDA")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="block pairs computed in parallel threads; default: the number of torch CPU threads")
    p.add_argument("--compile", action="store_true",
                   help="fuse the element-wise ReLU update with torch.compile (about a minute to compile, then "
                        "faster)")
    p.add_argument("--resume", action="store_true",
                   help="require an existing <out>.chunks folder and continue it (resuming is automatic when the "
                        "folder exists)")
    p.add_argument("--keep-chunks", action="store_true", help="keep <out>.chunks after writing the .npy file")
    p.add_argument("--node", action="store_true",
                   help="node-level GNTK on a Planetoid graph (public split) instead of a graph-level Gram matrix")
    p.add_argument("--max-bytes", type=float, default=None, metavar="BYTES",
                   help="with --node: memory budget in bytes; default 80%% of the free memory")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=run)
    return p


#: Options used only by graph-level runs, and only with --cv (given elsewhere, they are refused, not ignored).
_GRAPH_ONLY = ("degree_as_tag", "chunk_nodes", "workers", "compile", "resume", "keep_chunks", "cv")
_CV_ONLY = ("c_grid", "jobs")


def _flag(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def _set(args, attr: str) -> bool:
    """Whether the user gave the option (each of these defaults to None, or False for plain flags)."""
    v = getattr(args, attr)
    return v is not None if attr == "degree_as_tag" else (v is not None and v is not False)


def validate(args) -> None:
    """Every check on the options that needs no data, before anything is loaded, computed or written.

    Raises :class:`~graphscale.errors.ConfigError` naming the option, the value and what is expected.
    """
    from graphscale.gntk.kernel import GNTKConfig

    if args.layers < 1:
        raise ConfigError(f"--layers {args.layers}: expected the number of BLOCK operations, at least 1")
    if args.mlp_layers < 1:
        raise ConfigError(f"--mlp-layers {args.mlp_layers}: expected the number of ReLU layers per BLOCK, at least 1")
    GNTKConfig(args.layers, args.mlp_layers, args.scale, args.jk)  # anything else the config refuses
    if args.data is not None and not os.path.isdir(args.data):
        raise ConfigError(f"--data {args.data!r}: no such folder (expected a folder with one sub-folder per data set)")
    if args.node:
        given = [_flag(a) for a in _GRAPH_ONLY + _CV_ONLY if _set(args, a)]
        if given:
            raise ConfigError(f"{', '.join(given)}: not used with --node (graph-level options only)")
    else:
        if args.max_bytes is not None:
            raise ConfigError(f"--max-bytes {args.max_bytes:g}: only used with --node")
        if not args.cv:
            given = [_flag(a) for a in _CV_ONLY if _set(args, a)]
            if given:
                raise ConfigError(f"{', '.join(given)}: only used with --cv")
    if args.c_grid is not None and args.c_grid < 1:
        raise ConfigError(f"--c-grid {args.c_grid}: expected the number of C values, at least 1")
    if args.jobs is not None and args.jobs < 1 and args.jobs != -1:
        raise ConfigError(f"--jobs {args.jobs}: expected at least 1, or -1 for one per CPU")
    if args.chunk_nodes is not None and args.chunk_nodes < 1:
        raise ConfigError(f"--chunk-nodes {args.chunk_nodes}: expected at least 1")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1")
    if args.max_bytes is not None and not args.max_bytes > 0:
        raise ConfigError(f"--max-bytes {args.max_bytes:g}: expected a positive number of bytes")
    check_device(args.device)


def check_device(device: str) -> None:
    """``cpu``, or ``cuda[:N]`` with CUDA available and device ``N`` present."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device!r}: CUDA is not available here (torch {torch.__version__}, "
                              f"{'built without CUDA' if torch.version.cuda is None else 'no usable GPU found'}); "
                              f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device!r}: there are {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")


def check_writable(path: str, what: str = "--out") -> None:
    """``path`` can be created as a file: it is not a folder, and its nearest existing parent folder is a
    writable folder. Creates nothing."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise ConfigError(f"{what} {path!r} is a folder; expected a file name")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{what} {path!r}: {parent!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path!r}: the folder {parent!r} is not writable")


def _save(path: str, write) -> None:
    """Write one output file atomically; an OS error (disk full, permissions) becomes a one-line error."""
    from graphscale.atomic import atomic_write

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, write)
    except OSError as exc:
        raise ConfigError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def run(args) -> int:
    import shutil
    import time
    from dataclasses import asdict

    import numpy as np
    import torch

    from graphscale.gntk.kernel import GNTKConfig

    validate(args)  # every option, before any data is read or kernel work starts
    cfg = GNTKConfig(args.layers, args.mlp_layers, args.scale, args.jk)
    dtype = getattr(torch, args.dtype)
    if args.node:
        from graphscale.gntk.node import evaluate_planetoid

        out = args.out or f"gntk-node-{args.dataset.lower()}-L{cfg.layers}-R{cfg.mlp_layers}-{cfg.scale}" \
                          f"{'-jk' if cfg.jk else ''}.json"
        check_writable(out)
        root = args.data or os.path.join(os.path.dirname(os.path.dirname(default_data_root())), "planetoid")
        res = evaluate_planetoid(args.dataset.lower(), root, cfg, dtype=dtype, device=args.device,
                                 max_bytes=None if args.max_bytes is None else int(args.max_bytes))
        res["config"] = asdict(cfg)
        _write_json(out, res)
        b = res["best"]
        print(f"{args.dataset}: node GNTK {res['kernel_seconds']:.1f} s, best on valid: {b['kernel']} {b['method']} "
              f"-> valid {100 * b['valid_acc']:.1f} %, test {100 * b['test_acc']:.1f} %  ({out})")
        return 0

    from graphscale.data.graph_classification import load_graph_dataset
    from graphscale.gntk.kernel import gram_matrix

    out = args.out
    if out is not None:
        if os.path.isdir(out):
            raise ConfigError(f"--out {out!r} is a folder; expected a file name such as {os.path.join(out, 'gram.npy')!r}")
        out = out if out.endswith(".npy") else out + ".npy"
        check_writable(out)  # before the data is read: a bad --out fails at once
    root = args.data or default_data_root()
    ds = load_graph_dataset(args.dataset, root, degree_as_tag=args.degree_as_tag)
    if out is None:
        out = f"gntk-{ds.name}-L{cfg.layers}-R{cfg.mlp_layers}-{cfg.scale}{'-jk' if cfg.jk else ''}.npy"
        check_writable(out)
    chunk_dir = out + ".chunks"
    if args.resume and not os.path.isdir(chunk_dir):
        raise ConfigError(f"--resume: no chunk folder {chunk_dir!r} to resume (run without --resume to start)")
    if args.cv:
        from graphscale.gntk.svm import check_folds

        check_folds(ds.folds, len(ds))  # bad folds fail now, not after the kernel
    fresh = not os.path.exists(chunk_dir)
    t0 = time.perf_counter()
    try:
        gram = gram_matrix(ds.graphs, cfg, dtype=dtype, device=args.device, chunk_nodes=args.chunk_nodes,
                           chunk_dir=chunk_dir, progress=not args.no_progress, compile=args.compile,
                           workers=args.workers)
    except BaseException as exc:
        # Finished chunks are kept for a rerun to resume; a folder this run made and filled with nothing is not.
        kept = os.path.isdir(chunk_dir) and any(f.startswith("chunk_") for f in os.listdir(chunk_dir))
        if fresh and os.path.isdir(chunk_dir) and not kept:
            shutil.rmtree(chunk_dir, ignore_errors=True)
        if isinstance(exc, OSError):  # disk full, folder removed or made read-only while computing
            raise ConfigError(f"cannot write the chunk folder {chunk_dir!r}: {exc.strerror or exc}"
                              + ("; the finished chunks are kept there: rerun the same command to resume"
                                 if kept else "")) from None
        raise
    seconds = time.perf_counter() - t0
    _save(out, lambda fh: np.save(fh, gram))
    _save(out[:-4] + ".labels.npy", lambda fh: np.save(fh, ds.labels))
    if not args.keep_chunks:
        shutil.rmtree(chunk_dir, ignore_errors=True)
    print(f"{ds.name}: {len(ds)} graphs, Gram matrix in {seconds:.1f} s -> {out}")
    if args.cv:
        from graphscale.gntk.svm import cross_validate, default_c_grid, format_table

        c_grid = default_c_grid(25 if args.c_grid is None else args.c_grid)
        res = cross_validate(gram, ds.labels, ds.folds, c_grid=c_grid, n_jobs=1 if args.jobs is None else args.jobs)
        res.update({"dataset": ds.name, "format": ds.fmt, "folds": ds.meta["folds"], "config": asdict(cfg),
                    "dtype": args.dtype, "gram_seconds": seconds, "num_graphs": len(ds)})
        js = out[:-4] + ".json"
        _write_json(js, res)
        print(format_table(res))
        print(f"best: {res['best']['variant']} C={res['best']['C']:.4g}: {100 * res['best']['mean']:.2f} "
              f"+- {100 * res['best']['std']:.2f} %  ({js})")
    return 0


def _write_json(path: str, obj) -> None:
    import json

    text = json.dumps(obj, indent=2) + "\n"
    _save(path, lambda fh: fh.write(text.encode()))
