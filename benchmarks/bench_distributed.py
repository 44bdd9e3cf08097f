"""Data-parallel training: does N processes equal 1 process, and how fast is it?

Two sections, each a set of real ``graphscale train`` runs (``--nproc N`` = torchrun, gloo on CPU,
nccl on GPUs):

* ``equivalence``: a 2-process run against the 1-process run that takes the same optimiser steps,
  on a tiny synthetic graph; the row records the largest absolute difference of any parameter in
  the final checkpoints (and of the per-epoch losses).
  - ``deepergcn``: DeeperGCN on random partitions, 2 processes vs 1 process with ``grad_accum=2``
    (both average the gradients of the same pairs of steps; docs/distributed.md, "Equivalence").
  - ``lgcn``: layer-wise training (L-GCN, dropout 0.3, a global batch of 51 nodes: shares 25 / 26),
    2 processes vs 1 process with the same config.
* ``throughput``: steps per second for 1..N processes on the quickstart graph (synthetic
  ogbn-proteins twin, ``--parts`` random parts per epoch, DeeperGCN), and the gradient bytes each
  communication hook sends. Throughput = the epoch's parts (all ranks together) per second, from
  the per-epoch times in ``log.jsonl``, skipping the first epoch (warm-up) and the last (it
  evaluates). Scaling efficiency = throughput(N) / (N * throughput(1)).

    python benchmarks/bench_distributed.py --sections equivalence
    python benchmarks/bench_distributed.py --sections throughput --nprocs 1,2 --nodes 10000 --epochs 4

Writes ``distributed_equivalence.{csv,json}`` and ``distributed.{csv,json}`` through
graphscale.bench.output (a fresh runs/bench/distributed-<timestamp>/ unless --out is given).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "distributed"
SECTIONS = ("equivalence", "throughput")

# The equivalence configurations: the tiny graphs of tests/train/test_distributed*.py, dropout 0 where
# masks are drawn per rank (DeeperGCN), dropout 0.3 where they are drawn for the global batch (L-GCN).
EQUIVALENCE = {
    "deepergcn": dict(
        common=["data.name=synthetic-proteins", "data.num_nodes=600", "data.avg_degree=8", "data.num_communities=12",
                "model.hidden_channels=8", "model.num_layers=2", "model.dropout=0.0", "sampler.num_parts=3",
                "sampler.eval_name=random", "sampler.eval_parts=3", "train.epochs=4", "log.progress=false",
                "train.device=cpu"],
        one=["train.grad_accum=2"], two=[]),
    "lgcn": dict(
        common=["train.mode=layerwise", "data.name=synthetic-arxiv", "data.num_nodes=400", "data.avg_degree=6",
                "data.num_communities=8", "data.num_features=16", "data.num_classes=4", "model.hidden_channels=8",
                "model.num_layers=2", "train.batch_size=51", "train.eval_every=2", "train.device=cpu",
                "log.progress=false", "model.dropout=0.3", "train.layer_epochs=3"],
        one=[], two=[]),
}


def _train(overrides: list[str], out: str, nproc: int, threads: int, timeout: float) -> float:
    """One ``graphscale train`` run; returns its wall seconds. A failed run is an error with its stderr."""
    cmd = [sys.executable, "-m", "graphscale", "train", *overrides, "--out", out]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    # Same intra-op threads per process for every N (torchrun sets OMP_NUM_THREADS=1 per worker by default;
    # an unpinned 1-process run would use all cores and spin its OpenMP threads on a busy machine).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise GraphscaleError(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _log(out: str) -> list[dict]:
    with open(os.path.join(out, "log.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def max_parameter_difference(a: dict, b: dict) -> float:
    """Largest ``|a[k] - b[k]|`` over the floating-point tensors of two state dicts (same keys)."""
    import torch
    if a.keys() != b.keys():
        raise GraphscaleError(f"the two checkpoints hold different parameters: {sorted(a.keys() ^ b.keys())}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if torch.is_floating_point(a[k]))


def equivalence(name: str, root: str, work: str, threads: int, timeout: float) -> dict:
    import torch
    cfg = EQUIVALENCE[name]
    outs = {}
    wall = {}
    for nproc, extra in ((1, cfg["one"]), (2, cfg["two"])):
        out = os.path.join(work, f"{name}-{nproc}")
        wall[nproc] = _train(cfg["common"] + extra + [f"data.root={root}"], out, nproc, threads, timeout)
        outs[nproc] = out
    models = {n: torch.load(os.path.join(o, "checkpoint.pt"), weights_only=True)["model"] for n, o in outs.items()}
    loss1, loss2 = ([r["loss"] for r in _log(outs[n]) if "loss" in r] for n in (1, 2))
    res2 = json.load(open(os.path.join(outs[2], "results.json")))
    return {"section": "equivalence", "case": name, "nproc": 2, "reference": "1 process" + (
                " with " + " ".join(cfg["one"]) if cfg["one"] else ""),
            "overrides": " ".join(cfg["common"]),
            "world_size": res2.get("distributed", {}).get("world_size"),
            "backend": res2.get("distributed", {}).get("backend"),
            "parameters": sum(v.numel() for v in models[1].values() if torch.is_floating_point(v)),
            "max_parameter_difference": max_parameter_difference(models[1], models[2]),
            "epochs_logged": len(loss2),
            "max_epoch_loss_difference": max((abs(a - b) for a, b in zip(loss1, loss2)), default=None)
            if len(loss1) == len(loss2) else None,
            "wall_seconds_1": wall[1], "wall_seconds_2": wall[2]}


def throughput(nproc: int, args, hook: str, root: str, work: str) -> dict:
    out = os.path.join(work, f"throughput-{nproc}-{hook}")
    overrides = [f"data.root={root}", f"data.num_nodes={args.nodes}", f"sampler.num_parts={args.parts}",
                 f"train.epochs={args.epochs}", f"train.eval_every={10 * args.epochs}", f"train.device={args.device}",
                 f"train.comm_hook={hook}", "train.powersgd_start_iter=2", "log.progress=false"]
    wall = _train([os.path.join(REPO, "configs", "quickstart.yaml"), *overrides], out, nproc, args.threads,
                  args.timeout)
    rows = _log(out)
    res = json.load(open(os.path.join(out, "results.json")))
    secs = [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])][:-1]  # epochs 2 .. E-1
    epoch_s = sorted(secs)[len(secs) // 2]  # median: single epochs spike on a busy machine
    dist = res.get("distributed", {})
    return {"section": "throughput", "nproc": nproc, "threads_per_process": args.threads, "comm_hook": hook,
            "nodes": args.nodes, "parts_per_epoch": args.parts, "epochs": args.epochs,
            "epoch_seconds_median": epoch_s, "parts_per_second": args.parts / epoch_s, "wall_seconds": wall,
            "loss_last": rows[-1]["loss"], "allreduce_bytes_per_step": dist.get("allreduce_bytes_per_step"),
            "comm_bytes_per_step": (dist["comm_bytes"] / dist["comm_steps"]) if dist.get("comm_steps") else None,
            "comm_compression": dist.get("comm_compression"), "backend": dist.get("backend", "none")}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Writes distributed_equivalence.csv/json and distributed.csv/json.")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="what to measure (default: both)")
    p.add_argument("--cases", nargs="+", default=list(EQUIVALENCE), choices=list(EQUIVALENCE),
                   help="equivalence: which configurations (default: all)")
    p.add_argument("--nprocs", default="1,2", help="throughput: process counts to time, comma-separated (default 1,2)")
    p.add_argument("--hooks", default="none,powersgd,signsgd",
                   help="throughput: communication hooks run at the largest process count (default none,powersgd,signsgd)")
    p.add_argument("--nodes", type=int, default=20_000, help="throughput: nodes of the quickstart graph (default 20000)")
    p.add_argument("--parts", type=int, default=10, help="throughput: random parts per epoch (default 10)")
    p.add_argument("--epochs", type=int, default=5, help="throughput: epochs, at least 3 (default 5)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process (default 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="throughput: cpu (gloo) or cuda (nccl, one GPU per process)")
    p.add_argument("--root", default=None,
                   help="folder for the synthetic data sets (default: a temporary folder, removed at the end)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one training run may take (default 1800)")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        args.nproc_list = [int(n) for n in args.nprocs.split(",")]
    except ValueError:
        raise ConfigError(f"--nprocs {args.nprocs!r}: expected comma-separated whole numbers like 1,2") from None
    if any(n < 1 for n in args.nproc_list):
        raise ConfigError(f"--nprocs {args.nprocs!r}: every process count must be >= 1")
    args.hook_list = [h for h in args.hooks.split(",") if h]
    bad = [h for h in args.hook_list if h not in ("none", "powersgd", "signsgd")]
    if bad:
        raise ConfigError(f"--hooks: unknown {', '.join(bad)}; expected none, powersgd, signsgd")
    if args.epochs < 3:
        raise ConfigError(f"--epochs {args.epochs}: expected >= 3 (epoch 1 is warm-up, the last one evaluates)")
    if args.nodes < 100 or args.parts < 1 or args.threads < 1:
        raise ConfigError("--nodes >= 100, --parts >= 1 and --threads >= 1 expected; got "
                          f"{args.nodes}, {args.parts}, {args.threads}")
    return args


def main(argv=None) -> int:
    try:
        args = _parse(argv)
        writer = ResultWriter.from_args(args, NAME, args.device)
        stems = {"equivalence": "distributed_equivalence", "throughput": "distributed"}
        writer.check(*(stems[s] for s in args.sections))
        work = tempfile.mkdtemp(prefix="bench-distributed-")
        root = args.root or os.path.join(work, "data")
        extra = {"note": args.note}
        try:
            if "equivalence" in args.sections:
                rows = []
                for case in args.cases:
                    rows.append(equivalence(case, root, work, args.threads, args.timeout))
                    print(json.dumps(rows[-1]), flush=True)
                print("wrote " + ", ".join(writer.write_table(stems["equivalence"], rows, extra)))
            if "throughput" in args.sections:
                rows = []
                for n in args.nproc_list:
                    rows.append(throughput(n, args, "none", root, work))
                    print(json.dumps(rows[-1]), flush=True)
                big = max(args.nproc_list)
                for h in args.hook_list:
                    if h != "none" and big > 1:
                        rows.append(throughput(big, args, h, root, work))
                        print(json.dumps(rows[-1]), flush=True)
                base = next((r["parts_per_second"] for r in rows if r["nproc"] == 1), None)
                for r in rows:
                    r["scaling_efficiency"] = r["parts_per_second"] / (r["nproc"] * base) if base else None
                print("wrote " + ", ".join(writer.write_table(stems["throughput"], rows, extra)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except GraphscaleError as exc:
        print(f"bench_distributed: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
