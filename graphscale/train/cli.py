"""``graphscale train CONFIG [key=value ...]``."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from graphscale._procs import descendants


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
               "  graphscale train CONFIG --nproc 4 --nnodes 2 --node-rank 0 --rdzv-endpoint node0:29500   (on node 0;\n"
               "    the same with --node-rank 1 on node 1)\n"
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
    p.add_argument("--nnodes", type=int, default=1, metavar="K",
                   help="machines in the job (default 1); run the same command on each of them with its own "
                        "--node-rank, --nproc processes per machine; see docs/distributed.md")
    p.add_argument("--node-rank", type=int, default=None, metavar="R",
                   help="with --nnodes K: this machine's index, 0 <= R < K, different on every machine "
                        "(node 0 hosts the rendezvous)")
    p.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                   help="with --nnodes K: node 0's address and a free port there, the same on every machine")
    p.add_argument("--rdzv-backend", default="static", choices=("static", "c10d"),
                   help="with --nnodes K: static (default; ranks fixed by --node-rank) or c10d (ranks handed out "
                        "as the machines join; needs --rdzv-id, takes no --node-rank)")
    p.add_argument("--rdzv-id", default=None, metavar="NAME",
                   help="with --rdzv-backend c10d: the job's name, the same on every machine")
    p.add_argument("--distributed", action="store_true",
                   help="join a process group and train under DDP even with one process (same as "
                        "train.distributed=true): checks gloo / nccl and the communication hooks on one device")
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
    if args.distributed:
        overrides.append("train.distributed=true")
    cfg = load_config(config, overrides)

    from graphscale.train import api, distributed
    env = distributed.DistEnv.from_env()
    nproc = _check_nproc(args.nproc, cfg, env)
    nodes = _check_nodes(args, cfg, env)
    api.check(cfg)
    if cfg.data.partitions:  # a partitioned store: at least one part per process, before launching
        from graphscale.train.partitioned import check_store_world
        check_store_world(cfg, max(nproc * nodes.nnodes, env.world_size if env.distributed else 1))
    if (nproc > 1 or nodes.multi) and not env.distributed:  # start the workers: each runs this command without --nproc
        return _launch(nproc, [*([config] if config else []), *overrides, *(["--resume"] if args.resume else [])],
                       cfg.log.out, nodes, cfg.train.dist_timeout)
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


def _check_nodes(args, cfg, env):
    """``--nnodes / --node-rank / --rdzv-*`` checked before anything starts (one-line errors)."""
    from graphscale.errors import ConfigError
    from graphscale.train import distributed

    nodes = distributed.Nodes(args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_backend, args.rdzv_id)
    nodes.check()
    if nodes.multi and env.distributed:
        raise ConfigError(f"--nnodes {nodes.nnodes} inside a torchrun worker (WORLD_SIZE={env.world_size}): the "
                          f"launcher starts the workers; run graphscale train without torchrun")
    if nodes.multi and cfg.train.device.startswith("cuda:"):
        raise ConfigError(f"train.device={cfg.train.device!r} with --nnodes {nodes.nnodes}: each process takes its "
                          f"own GPU (cuda:LOCAL_RANK); use train.device=cuda or auto")
    return nodes


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


def _launch(nproc: int, args: list[str], out: str, nodes=None, timeout_s: float = 600.0) -> int:
    """Run torchrun with ``nproc`` workers and stop all of them when this process is told to stop.

    On SIGTERM / SIGINT the launcher SIGKILLs torchrun and every worker at once: a checkpoint is written
    atomically, so a kill at any point leaves the last one whole (and its temporary file is removed
    by the next ``--resume``). Asking torchrun to stop them instead takes seconds per worker blocked in a
    collective and prints torchrun's own traceback. If the launcher itself dies (even by SIGKILL)
    torchrun gets SIGTERM, and every worker gets SIGTERM when torchrun dies (:func:`_die_with_parent`).
    With ``nodes`` (``--nnodes K``) this starts this machine's agent of a K-machine job, whose rendezvous
    waits up to ``timeout_s`` (``train.dist_timeout``) for the other machines; the same rules apply to it."""
    import subprocess

    from graphscale.train import distributed

    nodes = distributed.Nodes() if nodes is None else nodes
    cmd = distributed.multinode_command(nproc, nodes, ["-m", "graphscale"], ["train", *args], timeout_s)
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, preexec_fn=_pdeathsig_term)
    stopped = []

    def stop(signum, frame):
        if not stopped:
            stopped.append(signum)
            _kill_tree(proc.pid)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopped:
        print(f"graphscale train: stopped ({signal.Signals(stopped[0]).name}); all {nproc} workers ended; the last "
              f"checkpoint in {out} is intact: run the same command with --resume to continue", file=sys.stderr)
        return 128 + stopped[0]
    if rc < 0:  # torchrun itself was killed; its workers follow it (PDEATHSIG)
        print(f"graphscale train: error: the torchrun agent was killed ({signal.Signals(-rc).name}) and its workers "
              f"stopped with it; the last checkpoint in {out} is intact: run the same command with --resume to "
              f"continue", file=sys.stderr)
        return 128 - rc
    if rc != 0:
        where = f" on node {nodes.node_rank} of {nodes.nnodes}" if nodes.multi and nodes.node_rank is not None else ""
        hint = (f" (when another machine stops, or does not join the rendezvous at {nodes.endpoint} within "
                f"train.dist_timeout = {timeout_s:g} s, this machine's ranks stop too)" if nodes.multi else "")
        print(f"graphscale train: error: the {nproc}-process run{where} failed (exit status {rc}); the failing rank's "
              f"message is above{hint}", file=sys.stderr)
    return rc


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (torchrun starts each worker in a session of its own, so a
    process-group kill would miss them); children first, so none is re-parented and missed."""
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _pdeathsig_term() -> None:
    """In the torchrun child, before exec: SIGTERM when the launcher dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
