"""Data-parallel scaling: steps per second for 1..N processes, and the bytes each gradient hook sends.

Each configuration is a real run of ``graphscale train`` (``--nproc N`` = torchrun, gloo on CPU,
nccl on GPUs) on the quickstart graph (synthetic ogbn-proteins twin, random partition into
``--parts`` parts per epoch, DeeperGCN). Throughput = the epoch's parts (all ranks together) per
second, from the per-epoch times in ``log.jsonl``, skipping the first epoch (warm-up) and the last
(it evaluates). Scaling efficiency = throughput(N) / (N * throughput(1)). The hook rows (``--hooks``)
add the gradient bytes one rank handed to its collectives per step, counted inside the DDP
communication hook, next to plain all-reduce.

    python benchmarks/bench_distributed.py                       # 1, 2 processes; none/powersgd/signsgd
    python benchmarks/bench_distributed.py --nprocs 1,2,4 --epochs 6 --nodes 50000

Writes ``benchmarks/results/distributed.{csv,json}`` (rows tagged with device and versions).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _device_tag() -> dict:
    import torch
    import torch_geometric

    import graphscale
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or f"cpu: {cpu}", "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__, "graphscale": graphscale.__version__,
            "python": platform.python_version()}


def run_one(nproc: int, args, hook: str, root: str) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-dist-{nproc}-{hook}-")
    cmd = [sys.executable, "-m", "graphscale", "train", os.path.join(REPO, "configs", "quickstart.yaml"),
           f"data.root={root}", f"data.num_nodes={args.nodes}", f"sampler.num_parts={args.parts}",
           f"train.epochs={args.epochs}", f"train.eval_every={10 * args.epochs}", f"train.device={args.device}",
           f"train.comm_hook={hook}", "train.powersgd_start_iter=2", "log.progress=false", "--out", out]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    # Same intra-op threads per process for every N (torchrun sets OMP_NUM_THREADS=1 per worker by default;
    # an unpinned 1-process run would use all cores and spin its OpenMP threads on a busy machine).
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    res = json.load(open(os.path.join(out, "results.json")))
    secs = [b["seconds"] - a["seconds"] for a, b in zip(rows, rows[1:])][:-1]  # epochs 2 .. E-1
    if not secs:
        raise SystemExit("--epochs must be >= 3 (epoch 1 is warm-up, the last one evaluates)")
    epoch_s = sorted(secs)[len(secs) // 2]  # median: the machine is shared, single epochs spike
    dist = res.get("distributed", {})
    return {"nproc": nproc, "threads_per_process": args.threads, "comm_hook": hook, "nodes": args.nodes, "parts_per_epoch": args.parts,
            "epochs": args.epochs, "epoch_seconds_median": epoch_s, "parts_per_second": args.parts / epoch_s,
            "wall_seconds": wall, "loss_last": rows[-1]["loss"],
            "allreduce_bytes_per_step": dist.get("allreduce_bytes_per_step"),
            "comm_bytes_per_step": (dist["comm_bytes"] / dist["comm_steps"]) if dist.get("comm_steps") else None,
            "comm_compression": dist.get("comm_compression"), "backend": dist.get("backend", "none")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nprocs", default="1,2", help="process counts to time (comma-separated)")
    p.add_argument("--hooks", default="none,powersgd,signsgd", help="hooks to run at the largest process count")
    p.add_argument("--nodes", type=int, default=20_000)
    p.add_argument("--parts", type=int, default=10)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every process")
    p.add_argument("--device", default="cpu", help="cpu | cuda (nccl, one GPU per process)")
    p.add_argument("--root", default=os.path.join(REPO, "data"), help="data root (synthetic set written there)")
    p.add_argument("--note", default="", help="free text stored with every row (e.g. 'machine shared')")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "distributed"))
    args = p.parse_args(argv)
    nprocs = [int(n) for n in args.nprocs.split(",")]
    hooks = [h for h in args.hooks.split(",") if h]
    tag = _device_tag()

    rows = []
    for n in nprocs:
        rows.append(run_one(n, args, "none", args.root))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["parts_per_second"] for r in rows if r["nproc"] == 1), None)
    big = max(nprocs)
    for h in hooks:
        if h != "none" and big > 1:
            rows.append(run_one(big, args, h, args.root))
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["scaling_efficiency"] = r["parts_per_second"] / (r["nproc"] * base) if base else None
        r.update(tag, note=args.note, command=" ".join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])]))

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(rows, fh, indent=2)
    with open(args.out + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}.csv and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
