"""``graphscale data synth|info`` (and ``partition``, added from :mod:`graphscale.train.store_cli`)."""
from __future__ import annotations

import argparse
import os

_SHAPE_KEYS = ("num_nodes", "num_edges", "avg_degree", "num_communities", "num_features", "num_classes",
               "p_intra", "feature_noise", "seed", "like", "scale")


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    from graphscale.data.published import PUBLISHED

    p.add_argument("--like", choices=sorted(PUBLISHED), default=None,
                   help="copy the published shape of this OGB set: its node count, edge count, feature "
                        "widths, task count and split proportions (see the list above)")
    p.add_argument("--scale", type=float, default=None,
                   help="with --like: multiply the published node and edge counts by this factor in (0, 1] "
                        "(the mean degree stays), for a small test copy (default 1)")
    p.add_argument("--num-nodes", type=int, default=None,
                   help="number of nodes (default 20000; with --like: the published count)")
    p.add_argument("--num-edges", type=int, default=None,
                   help="number of rows of raw/edge.csv.gz: undirected edges for proteins and products (ogb "
                        "adds the reverse direction), directed edges for arxiv (default: num-nodes x avg-degree / 2; "
                        "with --like: the published count)")
    p.add_argument("--avg-degree", type=float, default=None,
                   help="mean undirected degree, which sets the edge count when --num-edges is not given "
                        "(default 20; not with --like)")
    p.add_argument("--num-communities", type=int, default=None,
                   help="number of planted communities (default 50; with --like: 50 for proteins, 200 for arxiv, "
                        "470 for products at the published size, fewer in proportion to the node count)")
    p.add_argument("--num-features", type=int, default=None,
                   help="arxiv and products: node feature width (default 128 for arxiv, 100 for products)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="arxiv and products: number of classes (default 40 for arxiv, 47 for products)")
    p.add_argument("--p-intra", type=float, default=None,
                   help="share of the edges inside a node's community (default 0.8)")
    p.add_argument("--feature-noise", type=float, default=None,
                   help="arxiv and products: std of the noise added to the class-centroid features "
                        "(default 2.0; see graphscale.data.synthetic)")
    p.add_argument("--seed", type=int, default=None,
                   help="generator seed: the same options and seed write byte-identical files (default 0)")


def add_parser(subparsers, actions=()) -> None:
    """``actions``: modules of upper layers with ``add_parser(data_subparsers)`` adding more actions
    (``partition``, :mod:`graphscale.train.store_cli`), passed in by :mod:`graphscale.cli`."""
    from graphscale.data.published import describe

    p = subparsers.add_parser("data", help="write synthetic OGB-format data sets, inspect data sets, partition them into a store")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = sub.add_parser(
        "synth", help="write a synthetic data set in OGB's raw on-disk layout",
        description="Write a seeded synthetic graph in OGB's raw layout (read back by ogb's own "
                    "PygNodePropPredDataset). Kinds: proteins (112 binary tasks, 8-dim edge features, species "
                    "split), arxiv (node features, one class per node, year split), products (node features, "
                    "one class per node, sales-rank split). With --like the files have the published shape of "
                    "the OGB set (node count, edge count, feature widths, task count, split proportions). "
                    "Published shapes (OGB paper and ogb's master.csv): " + describe() + ". Without --like "
                    "the default is a small 20,000-node graph.")
    s.add_argument("--kind", choices=["proteins", "arxiv", "products"], default=None,
                   help="which kind of graph to write (default: the kind of --like, else proteins)")
    s.add_argument("--root", default="data", help="parent folder of the data set's folder (default: data)")
    _add_shape_args(s)
    s.add_argument("--overwrite", action="store_true",
                   help="write the data set again even when a complete folder for these options exists "
                        "(default: reuse it)")
    s.add_argument("--no-progress", action="store_true", help="do not show progress bars while writing")
    s.set_defaults(func=_synth)

    i = sub.add_parser(
        "info", help="load a data set and print its shape",
        description="Load a data set and print its shape. NAME is a data set name (ogbn-arxiv, cora, "
                    "synthetic-proteins, ...; a synthetic set takes the same shape options as 'data synth' and "
                    "must have been written first) or the folder of a synthetic set written by 'data synth'.")
    i.add_argument("name", help="data set name, or the folder of a synthetic data set")
    i.add_argument("--root", default="data", help="folder holding the data set's folder (default: data)")
    _add_shape_args(i)
    i.set_defaults(func=_info)
    for action in actions:
        action.add_parser(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _spec(args, kind: str):
    from graphscale.data.published import KIND_OF
    from graphscale.data.synthetic import SyntheticSpec
    from graphscale.errors import ConfigError

    if args.like is not None and kind is not None and KIND_OF[args.like] != kind:
        raise ConfigError(f"--like {args.like} writes kind {KIND_OF[args.like]}, but --kind is {kind}: "
                          f"drop --kind or use --kind {KIND_OF[args.like]}")
    kind = kind or (KIND_OF[args.like] if args.like else "proteins")
    given = {k: getattr(args, k) for k in _SHAPE_KEYS if getattr(args, k) is not None}
    return SyntheticSpec(kind=kind, **given)


def _synth(args) -> int:
    import time

    from graphscale.data.synthetic import write_synthetic

    spec = _spec(args, args.kind)
    t0 = time.perf_counter()
    path = write_synthetic(spec, args.root, overwrite=args.overwrite, progress=not args.no_progress)
    took = time.perf_counter() - t0
    if spec.streaming:
        s = spec.stream_shape()
        opts = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in _SHAPE_KEYS
                        if getattr(args, k) is not None)
        print(f"wrote {path} ({took:.1f} s): {s.num_nodes:,} nodes, {s.num_edges:,} edges in raw/edge.csv.gz, "
              f"split {'/'.join(f'{v:,}' for v in s.split_sizes)}; inspect it with: graphscale data info "
              f"synthetic-{spec.kind} --root {args.root} {opts}")
        keys = " ".join(f"data.{k}={getattr(args, k)}" for k in _SHAPE_KEYS if getattr(args, k) is not None)
        print(f"train on it with: graphscale train CONFIG data.name=synthetic-{spec.kind} data.root={args.root} {keys}")
    else:
        r = spec.resolved()
        print(f"wrote {path} ({took:.1f} s); train with: graphscale train configs/quickstart.yaml "
              f"data.name=synthetic-{spec.kind} data.root={args.root} data.num_nodes={r.num_nodes}")
    return 0


def _info(args) -> int:
    import json

    from graphscale.data import load_dataset
    from graphscale.data.datasets import SYNTHETIC
    from graphscale.data.synthetic import SyntheticSpec
    from graphscale.errors import ConfigError, DataError

    given = [k for k in _SHAPE_KEYS if getattr(args, k) is not None]
    name, root, spec = args.name, args.root, None
    if os.path.isfile(os.path.join(name, "synthetic.json")):  # a synthetic set's folder
        if given:
            raise ConfigError(f"{name!r} is a data set folder: its shape is read from its synthetic.json, so "
                              f"--{given[0].replace('_', '-')} does not apply")
        with open(os.path.join(name, "synthetic.json")) as fh:
            saved = json.load(fh)
        spec = SyntheticSpec(**{k: v for k, v in saved.items() if k in SyntheticSpec.__dataclass_fields__})
        root = os.path.dirname(os.path.abspath(name))
        if spec.dir_name != os.path.basename(os.path.abspath(name)):
            raise DataError(f"{name!r}: its synthetic.json describes the folder {spec.dir_name!r}; rename the "
                            f"folder back or write the set again")
        name = next(k for k, v in SYNTHETIC.items() if v == spec.kind)
    elif name in SYNTHETIC:
        spec = _spec(args, SYNTHETIC[name])
        path = os.path.join(root, spec.dir_name)
        if not os.path.isfile(os.path.join(path, "RELEASE_v1.txt")):
            raise DataError(f"no synthetic data set at {path!r}; write it first with: graphscale data synth "
                            f"--kind {spec.kind} --root {root} followed by the same shape options")
    elif given:
        raise ConfigError(f"--{given[0].replace('_', '-')} applies to synthetic data sets only, not to {name!r}")
    d = load_dataset(name, root, synthetic=spec)
    sizes = ", ".join(f"{k} {v.numel()}" for k, v in d.split.items())
    print(f"{d.name}: {d.num_nodes} nodes, {d.num_edges} directed edges, x {list(d.x.shape)}, "
          f"edge_attr {list(d.edge_attr.shape) if d.edge_attr is not None else None}, task {d.task} "
          f"({d.num_outputs} outputs, metric {d.metric}), split: {sizes}")
    return 0
