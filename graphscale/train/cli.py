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
               "  graphscale train configs/quickstart.yaml --nproc 2   (= torchrun --nproc-per-node 2 -m graphscale "
               "train ...)\n"
               "  graphscale train --list-keys")
    p.add_argument("config", nargs="?", help="YAML config file (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out", help="output folder (same as log.out=...)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in the output folder")
    p.add_argument("--list-keys", action="store_true", help="print every config key with its default and exit")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel processes on this machine, started through torchrun (one per GPU; gloo "
                        "processes on CPU); see docs/distributed.md")
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

    from graphscale.train import distributed
    env = distributed.DistEnv.from_env()
    nproc = 1 if args.nproc is None else args.nproc
    if nproc > 1 or env.distributed:
        _check_distributed(cfg, nproc, env)
    if nproc > 1 and not env.distributed:  # start the workers: each runs this command without --nproc
        return _launch(nproc, [*([config] if config else []), *overrides, *(["--resume"] if args.resume else [])])

    from graphscale.train.trainer import train

    if env.distributed:  # torchrun writes the traceback of a failing rank into its error summary
        from torch.distributed.elastic.multiprocessing.errors import record
        results = record(train)(cfg, resume=args.resume)
        if env.rank != 0:
            return 0
    else:
        results = train(cfg, resume=args.resume)
    m = results["metric"]
    print(f"{results['dataset']}: best valid {m} {results['best_valid']:.4f} at epoch {results['best_epoch']}, "
          f"test {m} {results['test_at_best_valid']:.4f}  ({results['seconds']:.1f} s, "
          f"peak memory {results['peak_memory_bytes'] / 2**20:.0f} MiB) -> {cfg.log.out}/results.json")
    return 0


def _check_distributed(cfg, nproc: int, env) -> None:
    from graphscale.errors import ConfigError
    from graphscale.train import distributed
    from graphscale.train.layerwise import check_layerwise_config
    from graphscale.train.trainer import check_config

    if nproc > 1 and env.distributed:
        raise ConfigError(f"--nproc {nproc} inside a torchrun worker (WORLD_SIZE={env.world_size}): use one of them")
    check_config(cfg)
    if cfg.train.mode == "layerwise":
        check_layerwise_config(cfg)
    if nproc > 1:
        if cfg.train.device.startswith("cuda:"):
            raise ConfigError(f"train.device={cfg.train.device!r} with --nproc {nproc}: each process takes its own GPU "
                              f"(cuda:LOCAL_RANK); use train.device=cuda or auto")
        distributed.check_nproc(nproc, cfg.train.device)


def _launch(nproc: int, args: list[str]) -> int:
    import subprocess
    import sys

    from graphscale.train import distributed

    cmd = distributed.torchrun_command(nproc, ["-m", "graphscale"], ["train", *args])
    sys.stdout.flush()
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"graphscale train: error: the {nproc}-process run failed (exit status {rc}); the failing rank's "
              f"message is above", file=sys.stderr)
    return rc
