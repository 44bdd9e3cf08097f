"""``graphscale train CONFIG [key=value ...]``."""
from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a YAML config",
        description="Train a GNN from a YAML config. Overrides are section.key=value pairs, e.g.\n"
                    "model.num_layers=28 train.lr=0.001. Writes config.yaml, checkpoint.pt, best_model.pt,\n"
                    "log.jsonl and results.json into the output folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  graphscale train configs/quickstart.yaml\n"
               "  graphscale train configs/ogbn-proteins/deepergcn.yaml data.root=~/ogb --out runs/dgcn\n"
               "  graphscale train configs/quickstart.yaml --out runs/q --resume\n"
               "  graphscale train --list-keys")
    p.add_argument("config", nargs="?", help="YAML config file (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", help="output folder (same as log.out=...)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in the output folder")
    p.add_argument("--list-keys", action="store_true", help="print every config key with its default and exit")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from graphscale.train.config import describe, load_config

    if args.list_keys:
        print(describe())
        return 0
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # `graphscale train key=value` with no file
        config = None
    if args.out:
        overrides.append(f"log.out={args.out}")
    cfg = load_config(config, overrides)

    from graphscale.train.trainer import train

    results = train(cfg, resume=args.resume)
    m = results["metric"]
    print(f"{results['dataset']}: best valid {m} {results['best_valid']:.4f} at epoch {results['best_epoch']}, "
          f"test {m} {results['test_at_best_valid']:.4f}  ({results['seconds']:.1f} s, "
          f"peak memory {results['peak_memory_bytes'] / 2**20:.0f} MiB) -> {cfg.log.out}/results.json")
    return 0
