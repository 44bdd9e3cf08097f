"""``graphscale train CONFIG [key=value ...]``."""
from __future__ import annotations

import argparse
import os
import signal
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from a YAML config",
        description="Train a GNN from a YAML config. Overrides are section.key=value pairs, e.g.\n"
                    "model.num_layers=28 train.lr=1e-3. Writes config.yaml, checkpoint.pt, best_model.pt,\n"
                    "log.jsonl and results.json into the output folder. Ctrl-C or SIGTERM stops the run; the\n"
                    "last checkpoint stays valid and --resume continues from it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  graphscale train configs/quickstart.yaml\n"
               "  graphscale train configs/ogbn-proteins/deepergcn.yaml data.root=~/ogb --out runs/dgcn\n"
               "  graphscale train configs/quickstart.yaml --out runs/q --resume\n"
               "  graphscale train configs/quickstart.yaml --nproc 2   (= torchrun --nproc-per-node 2 -m graphscale "
               "train ...)\n"
               "  graphscale train --list-keys")
    p.add_argument("config", nargs="?", help="YAML config file (omit to start from the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. train.lr=1e-3 (they win over the file)")
    p.add_argument("--out", help="output folder (same as log.out=...)")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in the output folder")
    p.add_argument("--list-keys", action="store_true",
                   help="print every config key with its default, and which model / sampler / mode reads it, then exit")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel processes on this machine, started through torchrun (one per GPU; gloo "
                        "processes on CPU); see docs/distributed.md")
    p.set_defaults(func=_run)


class Stopped(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that ``finally`` blocks (temp files, process groups) run."""


def _on_sigterm(signum, frame):
    raise Stopped()


def _run(args) -> int:
    from graphscale.train.config import describe, load_config

    if args.list_keys:
        from graphscale.train.schema import usage_table
        print(describe())
        print()
        print(usage_table())
        return 0
    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)  # `graphscale train key=value` with no file
        config = None
    if args.out:
        overrides.append(f"log.out={args.out}")
    cfg = load_config(config, overrides)

    from graphscale.train import api, distributed
    env = distributed.DistEnv.from_env()
    nproc = _check_nproc(args.nproc, cfg, env)
    api.check(cfg)
    if nproc > 1 and not env.distributed:  # start the workers: each runs this command without --nproc
        return _launch(nproc, [*([config] if config else []), *overrides, *(["--resume"] if args.resume else [])],
                       cfg.log.out)
    if env.distributed:
        _die_with_parent()  # a worker whose torchrun agent is killed must not go on training
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = _train(api.train, cfg, args.resume, env)
    except KeyboardInterrupt as exc:
        what = "stopped (SIGTERM)" if isinstance(exc, Stopped) else "interrupted"
        print(f"graphscale train: {what}; the last checkpoint in {cfg.log.out} is intact: run the same command "
              f"with --resume to continue", file=sys.stderr)
        return 143 if isinstance(exc, Stopped) else 130
    if results is None:
        return 0
    m = results["metric"]
    print(f"{results['dataset']}: best valid {m} {results['best_valid']:.4f} at epoch {results['best_epoch']}, "
          f"test {m} {results['test_at_best_valid']:.4f}  ({results['seconds']:.1f} s, "
          f"peak memory {results['peak_memory_bytes'] / 2**20:.0f} MiB) -> {cfg.log.out}/results.json")
    return 0


def _train(train, cfg, resume: bool, env):
    if env.distributed:  # torchrun writes the traceback of a failing rank into its error summary
        from torch.distributed.elastic.multiprocessing.errors import record
        results = record(train)(cfg, resume=resume)
        return results if env.rank == 0 else None
    return train(cfg, resume=resume)


def _check_nproc(nproc: int | None, cfg, env) -> int:
    from graphscale.errors import ConfigError
    from graphscale.train import distributed

    if nproc is None:
        return 1
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: expected a number of processes >= 1")
    if nproc > 1 and env.distributed:
        raise ConfigError(f"--nproc {nproc} inside a torchrun worker (WORLD_SIZE={env.world_size}): use one of them")
    if nproc > 1:
        if cfg.train.device.startswith("cuda:"):
            raise ConfigError(f"train.device={cfg.train.device!r} with --nproc {nproc}: each process takes its own GPU "
                              f"(cuda:LOCAL_RANK); use train.device=cuda or auto")
        distributed.check_nproc(nproc, cfg.train.device)
    return nproc


def _die_with_parent() -> None:
    """Linux: ask the kernel to send this process SIGTERM when its parent (the torchrun agent) dies,
    so a worker never outlives a killed agent. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getppid()
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _launch(nproc: int, args: list[str], out: str) -> int:
    """Run torchrun with ``nproc`` workers and stop all of them when this process is told to stop.

    SIGTERM / SIGINT here are forwarded to torchrun, which stops its workers; if it has not exited
    within 10 s the launcher kills it. torchrun itself gets SIGTERM if this process dies (even by
    SIGKILL), and every worker gets SIGTERM if torchrun dies (:func:`_die_with_parent`)."""
    import subprocess

    from graphscale.train import distributed

    cmd = distributed.torchrun_command(nproc, ["-m", "graphscale"], ["train", *args])
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, preexec_fn=_pdeathsig_term)
    stopped = []

    def forward(signum, frame):
        stopped.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = _wait(proc, stopped)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopped:
        print(f"graphscale train: stopped ({signal.Signals(stopped[0]).name}); all {nproc} workers ended; the last "
              f"checkpoint in {out} is intact: run the same command with --resume to continue", file=sys.stderr)
        return 128 + stopped[0]
    if rc != 0:
        print(f"graphscale train: error: the {nproc}-process run failed (exit status {rc}); the failing rank's "
              f"message is above", file=sys.stderr)
    return rc


def _wait(proc, stopped: list, grace_s: float = 10.0) -> int:
    import subprocess
    import time

    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if stopped:
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            return proc.wait()


def _pdeathsig_term() -> None:
    """In the torchrun child, before exec: SIGTERM when the launcher dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
