"""Out-of-core training from a partitioned store, measured (issue 19, item 7).

Trains the same config twice from one store, one process each, same seed:

* **free**: no memory limit;
* **limited**: inside a cgroup-v1 memory cgroup (``/sys/fs/cgroup/memory/gs-ooc-PID``) whose
  ``memory.limit_in_bytes`` is at most 1/3 of the store's size on disk (``--limit-mb``, checked). The
  launcher writes the child's pid into the cgroup's ``cgroup.procs`` between fork and exec (what a
  wrapper shell ``echo $$ > .../cgroup.procs; exec graphscale train ...`` does), so every byte the
  run touches, anonymous memory and the page cache it reads, is charged to the cgroup. The cgroup is
  removed afterwards.

The store's feature files are memory-mapped; under the limit the kernel reclaims their clean pages
and reads them again when a batch needs them (major page faults), while the index arrays, model and
one batch stay resident. Before each run the store's files are dropped from the page cache
(``posix_fadvise(DONTNEED)``), so both runs start cold and pages cached by an earlier run (charged to
another cgroup) cannot hide the limit.

Recorded: the limit, the store's size, ``memory.max_usage_in_bytes`` and ``memory.failcnt`` (how often
the limit was hit), the child's peak RSS and major faults (``wait4``), wall time, per-epoch losses
and the final accuracy, for both runs; "same loss" means equal per-epoch losses (same seed, CPU).

Needs root and a cgroup-v1 memory hierarchy at ``/sys/fs/cgroup/memory``. The data set and the store are
built once under ``--root`` if missing (``graphscale data synth`` / ``graphscale data partition``).

Usage::

    python benchmarks/out_of_core.py --num-nodes 500000 --num-features 1000 --avg-degree 4 --parts 32 \\
        --limit-mb 600 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import GraphscaleError

NAME = "out_of_core"
CGROUP_ROOT = "/sys/fs/cgroup/memory"
MiB = 2**20


def data_keys(args) -> list[str]:
    return ["data.name=synthetic-products", f"data.num_nodes={args.num_nodes}", f"data.avg_degree={args.avg_degree}",
            f"data.num_features={args.num_features}", f"data.num_communities={args.num_communities}",
            f"data.root={args.root}"]


def train_keys(args) -> list[str]:
    return ["sampler.name=cluster", "sampler.partitioner=metis", f"sampler.num_parts={args.parts}",
            f"sampler.clusters_per_batch={args.q}", "model.name=sage", f"model.hidden_channels={args.hidden}",
            "model.num_layers=2", "model.dropout=0.0", f"train.epochs={args.epochs}", "train.lr=0.01",
            "train.device=cpu", "log.progress=false", f"train.eval_every={args.epochs}"]


def _config(work: str) -> str:
    path = os.path.join(work, "empty.yaml")
    with open(path, "w") as fh:
        fh.write("log:\n  progress: false\n")
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def store_files(store: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(store) for f in fs]


def du(store: str) -> int:
    return sum(os.path.getsize(p) for p in store_files(store))


def drop_cache(store: str) -> None:
    """Evict the store's clean pages from the page cache (they are not mapped by anyone now)."""
    for p in store_files(store):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def build(args, work: str) -> tuple[str, dict]:
    store = os.path.join(args.root, "stores", f"ooc-n{args.num_nodes}-f{args.num_features}-p{args.parts}"
                         + (f"-halo{args.halo}" if args.halo else ""))
    if os.path.isfile(os.path.join(store, "meta.json")):
        return store, {"reused": True}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "graphscale", "data", "partition", _config(work), *data_keys(args),
           *train_keys(args), "--parts", str(args.parts), "--halo", str(args.halo), "--out", store, "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise GraphscaleError(f"building the store failed:\n{proc.stderr[-2000:]}")
    return store, {"reused": False, "seconds": round(time.perf_counter() - t0, 1)}


class MemCgroup:
    """A cgroup-v1 memory cgroup with a hard limit; removed on exit (the processes in it must be gone)."""

    def __init__(self, name: str, limit: int):
        self.path = os.path.join(CGROUP_ROOT, name)
        self.limit = limit

    def __enter__(self):
        os.mkdir(self.path)
        with open(os.path.join(self.path, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(self.limit))
        return self

    def read(self, name: str) -> int:
        with open(os.path.join(self.path, name)) as fh:
            return int(fh.read().split()[0])

    def stat(self) -> dict:
        with open(os.path.join(self.path, "memory.stat")) as fh:
            return {k: int(v) for k, v in (line.split() for line in fh)}

    def join(self) -> None:
        """In the child, between fork and exec: move this process into the cgroup."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    def __exit__(self, *exc):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)  # the last process is still leaving
        print(f"out_of_core: could not remove {self.path}; remove it with rmdir", file=sys.stderr)


def run(args, store: str, work: str, label: str, cgroup: MemCgroup | None) -> dict:
    out = os.path.join(work, label)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "graphscale", "train", _config(work), *data_keys(args), *train_keys(args),
           f"data.partitions={store}", "sampler.eval_name=parts", f"log.out={out}"]
    drop_cache(store)
    t0 = time.perf_counter()
    with open(os.path.join(work, f"{label}.log"), "w") as log:
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=cgroup.join if cgroup else None)
        _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    row = {"run": label, "limit_mib": round(cgroup.limit / MiB) if cgroup else None, "exit": proc.returncode,
           "wall_s": round(wall, 1), "peak_rss_mib": round(ru.ru_maxrss / 1024), "major_faults": ru.ru_majflt}
    if cgroup:
        row.update(max_usage_mib=round(cgroup.read("memory.max_usage_in_bytes") / MiB),
                   failcnt=cgroup.read("memory.failcnt"))
        row["oom_kills"] = _oom_kills(cgroup)
    if proc.returncode == 0:
        rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
        res = json.load(open(os.path.join(out, "results.json")))
        row.update(losses=[r["loss"] for r in rows], epoch_s=[r["seconds"] for r in rows],
                   test_acc=res["test_at_best_valid"])
    else:
        with open(os.path.join(work, f"{label}.log")) as fh:
            row["error"] = fh.read()[-600:]
    print(json.dumps(row), flush=True)
    return row


def _oom_kills(cg: MemCgroup) -> int | None:
    """Processes the kernel's OOM killer ended in the cgroup (``None`` where the kernel does not say)."""
    with open(os.path.join(cg.path, "memory.oom_control")) as fh:
        for line in fh:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-nodes", type=int, default=500_000, help="nodes of the synthetic products-kind set")
    p.add_argument("--num-features", type=int, default=1000, help="feature width (the store is mostly x.npy)")
    p.add_argument("--avg-degree", type=float, default=4.0, help="mean degree")
    p.add_argument("--num-communities", type=int, default=50, help="planted communities")
    p.add_argument("--parts", type=int, default=32, help="METIS parts of the store")
    p.add_argument("--q", type=int, default=1, help="parts per Cluster-GCN step")
    p.add_argument("--halo", type=int, default=0, choices=(0, 1),
                   help="1: the store keeps each part's 1-hop in-neighbours with their feature rows (a larger store)")
    p.add_argument("--hidden", type=int, default=64, help="SAGE hidden width")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run")
    p.add_argument("--limit-mb", type=float, required=True, help="the cgroup's memory limit in MiB (<= store / 3)")
    p.add_argument("--root", default=os.environ.get("GRAPHSCALE_CACHE", os.path.join("runs", "bench-data")),
                   help="folder for the data set and the store (default $GRAPHSCALE_CACHE or runs/bench-data)")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    if os.geteuid() != 0 or not os.path.isdir(CGROUP_ROOT):
        p.error(f"needs root and a cgroup-v1 memory hierarchy at {CGROUP_ROOT}")
    args.root = os.path.abspath(args.root)
    stem = NAME + (f"_{args.tag}" if args.tag else "")
    writer = ResultWriter.from_args(args, NAME, device="cpu")
    writer.check(stem)
    work = os.path.abspath(os.path.join("runs", "bench-work", f"{stem}-{os.getpid()}"))
    os.makedirs(work, exist_ok=True)
    store, built = build(args, work)
    size = du(store)
    limit = int(args.limit_mb * MiB)
    if limit * 3 > size:
        p.error(f"--limit-mb {args.limit_mb:g} is more than 1/3 of the store's {size / MiB:.0f} MiB on disk; "
                f"use at most {size / 3 / MiB:.0f}")
    x_bytes = sum(os.path.getsize(f) for f in store_files(store) if f.endswith("x.npy"))
    rows = [run(args, store, work, "free", None)]
    with MemCgroup(f"gs-ooc-{os.getpid()}", limit) as cg:
        rows.append(run(args, store, work, "limited", cg))
    free, lim = rows
    same = "losses" in free and "losses" in lim and free["losses"] == lim["losses"]
    extra = {"store": store, "store_bytes": size, "x_npy_bytes": x_bytes, "limit_bytes": limit,
             "limit_over_store": round(limit / size, 3), "build": built, "same_losses": same,
             # glibc allocator settings the runs inherited (a lower mmap threshold returns freed batch
             # buffers to the kernel instead of keeping them in the heap: ~200 MB less anonymous memory here)
             "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
             "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")}}
    writer.write_table(stem, rows, extra)
    print(f"store {size / MiB:.0f} MiB (x.npy {x_bytes / MiB:.0f} MiB), limit {limit / MiB:.0f} MiB "
          f"({limit / size:.2f} of the store); same losses: {same} -> {writer.out}")
    return 0 if same else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GraphscaleError as exc:
        print(f"out_of_core: error: {exc}", file=sys.stderr)
        sys.exit(2)
