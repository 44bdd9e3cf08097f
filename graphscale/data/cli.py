"""``graphscale data synth|info``."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("data", help="write synthetic OGB-format data sets, inspect data sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")

    s = sub.add_parser("synth", help="write a synthetic data set in OGB's raw on-disk layout",
                       description="Write a seeded synthetic graph in OGB's raw layout (read back by ogb's own "
                                   "PygNodePropPredDataset). proteins: 112 binary tasks, 8-dim edge features, "
                                   "species split; arxiv: node features, multi-class, time split.")
    s.add_argument("--kind", choices=["proteins", "arxiv"], default="proteins")
    s.add_argument("--root", default="data", help="parent folder (default: data)")
    s.add_argument("--num-nodes", type=int, default=20_000)
    s.add_argument("--avg-degree", type=float, default=20.0)
    s.add_argument("--num-communities", type=int, default=50)
    s.add_argument("--num-features", type=int, default=128, help="arxiv only")
    s.add_argument("--num-classes", type=int, default=40, help="arxiv only")
    s.add_argument("--p-intra", type=float, default=0.8, help="share of edges inside a node's community")
    s.add_argument("--feature-noise", type=float, default=2.0,
                   help="arxiv only: std of the noise on the class-centroid features (see graphscale.data.synthetic)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_synth)

    i = sub.add_parser("info", help="load a data set and print its shape")
    i.add_argument("name")
    i.add_argument("--root", default="data")
    i.set_defaults(func=_info)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _synth(args) -> int:
    import time

    from graphscale.data.synthetic import SyntheticSpec, write_synthetic

    spec = SyntheticSpec(kind=args.kind, num_nodes=args.num_nodes, avg_degree=args.avg_degree,
                         num_communities=args.num_communities, num_features=args.num_features,
                         num_classes=args.num_classes, seed=args.seed,
                         p_intra=args.p_intra, feature_noise=args.feature_noise)
    t0 = time.perf_counter()
    path = write_synthetic(spec, args.root, overwrite=args.overwrite)
    print(f"wrote {path} ({time.perf_counter() - t0:.1f} s); train with: "
          f"graphscale train configs/quickstart.yaml data.name=synthetic-{args.kind} data.root={args.root} "
          f"data.num_nodes={args.num_nodes}")
    return 0


def _info(args) -> int:
    from graphscale.data import load_dataset

    d = load_dataset(args.name, args.root)
    sizes = ", ".join(f"{k} {v.numel()}" for k, v in d.split.items())
    print(f"{d.name}: {d.num_nodes} nodes, {d.num_edges} directed edges, x {list(d.x.shape)}, "
          f"edge_attr {list(d.edge_attr.shape) if d.edge_attr is not None else None}, task {d.task} "
          f"({d.num_outputs} outputs, metric {d.metric}), split: {sizes}")
    return 0
