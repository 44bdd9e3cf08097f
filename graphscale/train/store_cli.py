"""``graphscale data partition CONFIG --parts P --out DIR``: write a partitioned store, once.

The action is added to ``graphscale data`` by :mod:`graphscale.cli` (it needs the train config and
``load_data``, which the data layer may not import). Format and use: ``docs/partitioned.md``.
"""
from __future__ import annotations

import argparse


def add_parser(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "partition", help="cut a data set into parts on disk (a partitioned store) for training from parts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read the data set that CONFIG's data section names (any data set 'graphscale train' reads),\n"
                    "partition it once and write a partitioned store: meta.json, book.npy (node -> part) and one\n"
                    "folder per part with its global node ids, local CSR, entering edges, labels, split ids and\n"
                    "node features as a plain .npy that is memory-mapped when training. Train from it with\n"
                    "'graphscale train CONFIG data.partitions=DIR': each process then opens only its own parts.\n"
                    "The store is written into DIR.tmp-PID and renamed to DIR at the end, so an interrupted run\n"
                    "leaves nothing that looks complete. Format: docs/partitioned.md.",
        epilog="examples:\n"
               "  graphscale data partition configs/ogbn-products/cluster-gcn-store.yaml --parts 150 --out data/products-150\n"
               "  graphscale data partition configs/cora/cluster-gcn.yaml --parts 10 --out runs/cora-10 --halo 1")
    p.add_argument("config", help="YAML train config; its data section names the data set")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, as for 'graphscale train' (e.g. data.root=../shared/data)")
    p.add_argument("--parts", type=int, default=None, metavar="P",
                   help="number of parts, from 1 to the number of nodes (default: the config's sampler.num_parts)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder to write the store into (default: the config's data.partitions)")
    p.add_argument("--method", default=None,
                   help="partitioner: metis (min edge cut), random or contiguous (default: the config's "
                        "sampler.partitioner)")
    p.add_argument("--halo", type=int, default=0,
                   help="0: each part keeps the edges among its own nodes (the edges entering it are listed "
                        "without features); 1: also store each part's 1-hop in-neighbours with their features "
                        "(default 0)")
    p.add_argument("--seed", type=int, default=None, help="partition seed (default: the config's train.seed)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store in the output folder (once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar over the parts")
    p.set_defaults(func=_partition)


def _partition(args) -> int:
    import os
    import time

    from graphscale.errors import ConfigError
    from graphscale.sampling.store_writer import check_out, check_store_args, write_store
    from graphscale.train.config import load_config, to_dict
    from graphscale.train.partitioned import DATA_KEYS_NOT_IN_STORE
    from graphscale.train.run import load_data

    cfg = load_config(args.config, list(args.overrides))
    s = cfg.sampler
    parts = args.parts if args.parts is not None else s.num_parts
    method = args.method if args.method is not None else s.partitioner
    seed = args.seed if args.seed is not None else cfg.train.seed
    out = args.out or cfg.data.partitions
    if not out:
        raise ConfigError("no output folder: pass --out DIR (or set data.partitions in the config)")
    check_store_args(parts, None, method, args.halo)
    if method != "metis" and s.vertex_weight != "none":
        raise ConfigError(f"sampler.vertex_weight={s.vertex_weight} in the config weights METIS parts, but --method is "
                          f"{method}; use --method metis or sampler.vertex_weight=none")
    check_out(out, args.overwrite)
    data_cfg = {k: v for k, v in to_dict(cfg)["data"].items() if k not in DATA_KEYS_NOT_IN_STORE}
    t0 = time.perf_counter()
    data = load_data(cfg)
    t_load = time.perf_counter() - t0
    opts = {}
    if method == "metis":  # the options the in-memory Cluster-GCN sampler partitions with
        from graphscale.sampling.partition import vertex_weights
        opts["imbalance"] = s.imbalance
        train_mask = None
        if s.vertex_weight == "train":
            import torch
            train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
            train_mask[data.split["train"]] = True
        vw = vertex_weights(s.vertex_weight, data.edge_index, data.num_nodes, train_mask)
        if vw is not None:
            opts["vertex_weight"] = vw
    t1 = time.perf_counter()
    meta = write_store(data, out, parts, method=method, halo=args.halo, seed=seed, data_config=data_cfg,
                       method_options=opts, overwrite=args.overwrite, progress=not args.no_progress,
                       record_options={"vertex_weight": s.vertex_weight} if method == "metis" else None,
                       offload=True)  # the graph waits on disk while METIS runs (docs/partitioned.md)
    took = time.perf_counter() - t1
    size = sum(f["bytes"] for f in meta["files"].values())
    inner = [q["inner"] for q in meta["parts"]]
    print(f"wrote {out}: {data.name}, {meta['num_nodes']:,} nodes, {meta['num_edges']:,} edges in {parts} {method} "
          f"parts ({min(inner):,}-{max(inner):,} nodes each), halo {args.halo}, {size / 2**20:.1f} MiB; loading "
          f"{t_load:.1f} s, partitioning {meta['partition_seconds']:.1f} s, writing "
          f"{took - meta['partition_seconds']:.1f} s")
    print(f"train from it with: graphscale train {args.config} data.partitions={os.path.abspath(out)}")
    return 0
