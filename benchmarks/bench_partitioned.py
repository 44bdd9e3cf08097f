"""Partitioned store vs in-memory Cluster-GCN (issue 19, item 6): per-rank private memory, epoch time,
accuracy for W = 1, 2, 4 processes, and the cost of the partition step.

One synthetic ogbn-products-like graph (``graphscale data synth --like ogbn-products --scale S``: the
published mean degree and 100 features), written once under ``--root`` (default
``$GRAPHSCALE_CACHE`` or ``runs/bench-data``), never in the repository. Then:

1. ``graphscale data partition`` writes a METIS store of ``--parts`` parts (time, peak USS / RSS of the
   step, store size on disk). Its partition is the one the in-memory Cluster-GCN run computes for
   the same config (same METIS call and seed), so both paths train on the same clusters.
2. For each W and each path (``memory``: every process loads the whole graph, ``sampler.name=cluster``;
   ``store``: ``data.partitions=DIR``, each process opens only its parts, features memory-mapped),
   ``graphscale train ... --nproc W`` runs in a fresh process tree. A sampler thread
   (:class:`graphscale.bench.procmem.ProcessTreeSampler`) reads ``/proc/PID/smaps_rollup`` of every
   process of the tree every ``--interval`` seconds and keeps each rank's peak **USS** (private pages),
   **PSS** (shared pages split between the processes that map them) and RSS (counts shared page
   cache in every process). Epoch times come from the run's ``log.jsonl`` (evaluation only after the
   last epoch, so the other epochs are training only); accuracy is the test accuracy of the final
   evaluation (``results.json``): per-part evaluation on the store's partition for the store,
   ``eval_name=metis`` with as many parts for the in-memory run (a METIS partition of its own seed).

Targets (issue 19), reported as met / not met with the numbers: per-rank private memory (peak USS of
the largest rank) from the store <= in-memory W = 1 USS / W + 300 MB; test accuracy within 0.5 point
of the in-memory run at the same W; store epoch time <= 1.1 x in-memory at W = 1.

Every process runs with ``OMP_NUM_THREADS=1`` (``--threads``). ``--nproc`` refuses more processes than
cores on CPU, so a W above the core count runs as W / cores torchrun agents on 127.0.0.1
(``graphscale train --nnodes K --node-rank k``); on a 2-core machine W = 4 runs 4 processes on 2 cores:
its times measure contention, not scaling. A run that would not fit the memory available (judged from
the in-memory W = 1 run's training-epoch PSS) is recorded as skipped instead of started.

Usage::

    python benchmarks/bench_partitioned.py --scale 0.85 --parts 64 --epochs 3     # >= 2M nodes
    python benchmarks/bench_partitioned.py --scale 0.05 --parts 32 --epochs 3 --out benchmarks/results --tag small
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.bench.procmem import ProcessTreeSampler
from graphscale.errors import GraphscaleError

NAME = "partitioned"
MiB = 2**20


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def data_keys(args) -> list[str]:
    return ["data.name=synthetic-products", "data.like=ogbn-products", f"data.scale={args.scale}",
            f"data.root={args.root}"]


def train_keys(args) -> list[str]:
    return ["sampler.name=cluster", "sampler.partitioner=metis", f"sampler.num_parts={args.parts}",
            f"sampler.clusters_per_batch={args.q}", "model.name=sage", f"model.hidden_channels={args.hidden}",
            f"model.num_layers={args.layers}", f"model.dropout={args.dropout}", f"train.epochs={args.epochs}",
            f"train.lr={args.lr}", f"train.eval_every={args.epochs}", f"train.checkpoint_every={args.epochs}",
            "train.device=cpu", "log.progress=false", f"train.dist_timeout={args.dist_timeout}"]


def monitored(cmd: list[str], env: dict, interval: float, log_path: str,
              markers: tuple[str, ...] = ()) -> tuple[int, float, ProcessTreeSampler, dict]:
    """Run ``cmd`` with its process tree sampled (with a timeline); returns (exit status, wall seconds,
    sampler, ``{marker: time.monotonic() when it first appeared in the output}``)."""
    t0 = time.perf_counter()
    seen: dict[str, float] = {}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = ProcessTreeSampler(proc.pid, interval, timeline=True).start()
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                if len(seen) < len(markers):
                    text = open(log_path, errors="replace").read()
                    for m in markers:
                        if m not in seen and m in text:
                            seen[m] = time.monotonic()
            rc = proc.wait()
        finally:
            sampler.stop()
    return rc, time.perf_counter() - t0, sampler, seen


def _tail(path: str, n: int = 15) -> str:
    try:
        return "".join(open(path).readlines()[-n:])
    except OSError:
        return ""


def ensure_data(args) -> float:
    """Write (once) and process (once, ogb's processed/ cache) the synthetic set; seconds spent."""
    t0 = time.perf_counter()
    code = ("import sys; from graphscale.train.config import load_config; from graphscale.train.run import load_data;"
            "d = load_data(load_config(None, sys.argv[1:])); print(d.num_nodes, d.edge_index.size(1), d.x.shape)")
    proc = subprocess.run([sys.executable, "-c", code, *data_keys(args)], env=_env(args.threads),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise GraphscaleError(f"could not write / load the synthetic set under {args.root}:\n{proc.stderr[-2000:]}")
    print(f"data: {proc.stdout.strip()} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(dirpath, f))
    return total


def partition_step(args, store: str, work: str) -> dict:
    record = store.rstrip("/") + ".bench.json"  # the step's measurement, kept beside (not in) the store
    if os.path.isdir(store) and os.path.isfile(os.path.join(store, "meta.json")) and not args.repartition:
        meta = json.load(open(os.path.join(store, "meta.json")))
        print(f"store: reusing {store}", flush=True)
        earlier = json.load(open(record)) if os.path.isfile(record) else None
        return {"step": "partition", "reused": True, "store_bytes": du(store), "num_parts": meta["num_parts"],
                "meta_partition_seconds": meta.get("partition_seconds"), "measured_when_written": earlier}
    if os.path.isdir(store):
        shutil.rmtree(store)
    cmd = [sys.executable, "-m", "graphscale", "data", "partition", *data_keys(args), *train_keys(args),
           "--parts", str(args.parts), "--method", "metis", "--out", store, "--no-progress"]
    cmd.insert(cmd.index("partition") + 1, _blank_config(work))
    rc, wall, s, _ = monitored(cmd, _env(args.threads), args.interval, os.path.join(work, "partition.log"))
    if rc != 0:
        raise GraphscaleError(f"the partition step failed (exit {rc}):\n{_tail(os.path.join(work, 'partition.log'))}")
    peak = s.procs[max(s.procs, key=lambda p: s.procs[p].peak.uss)].peak
    row = {"step": "partition", "reused": False, "seconds": round(wall, 1), "peak_uss_mib": round(peak.uss / MiB),
           "peak_pss_mib": round(peak.pss / MiB), "peak_rss_mib": round(peak.rss / MiB),
           "store_bytes": du(store), "num_parts": args.parts}
    print(f"partition: {row}", flush=True)
    with open(record, "w") as fh:
        json.dump({**row, "command": " ".join(cmd), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, fh)
    return row


def _blank_config(work: str) -> str:
    path = os.path.join(work, "empty.yaml")
    with open(path, "w") as fh:
        fh.write("log:\n  progress: false\n")
    return path


def train_run(args, path: str, world: int, store: str, work: str) -> dict:
    out = os.path.join(work, f"{path}-w{world}")
    if os.path.isdir(out):
        shutil.rmtree(out)
    keys = [*data_keys(args), *train_keys(args), f"log.out={out}"]
    if path == "store":
        keys += [f"data.partitions={store}", "sampler.eval_name=parts"]
    else:
        keys += ["sampler.eval_name=metis", f"sampler.eval_parts={args.parts}"]
    cmd = [sys.executable, "-m", "graphscale", "train", _blank_config(work), *keys]
    cores = os.cpu_count() or 1
    if world > cores and world % cores == 0:
        # --nproc is capped at the core count: start W / cores torchrun agents on 127.0.0.1 instead
        # (graphscale train --nnodes K --node-rank k), under one shell so that one tree holds every rank
        from graphscale.train.distributed import free_port
        port, k = free_port(), world // cores
        agents = [" ".join([*map(shlex.quote, cmd), "--nproc", str(cores), "--nnodes", str(k), "--node-rank", str(i),
                            "--rdzv-endpoint", f"127.0.0.1:{port}"]) + (" 2>/dev/null >/dev/null" if i else "")
                  for i in range(k)]
        # a bare `wait` exits 0 whatever the agents did: wait for each and fail if any failed
        cmd = ["bash", "-c", " & ".join(agents) + " & rc=0; for j in $(jobs -p); do wait $j || rc=1; done; exit $rc"]
    elif world > 1:
        cmd += ["--nproc", str(world)]
    log = os.path.join(work, f"{path}-w{world}.log")
    # training window: from the end of setup (the trainer's "N step(s) per epoch" line) to the line of
    # epoch E-1 (evaluation runs after epoch E only), so no setup (data loading, METIS when not cached)
    # and no evaluation falls inside it
    last_train = f"epoch {args.epochs - 1}/{args.epochs} "
    rc, wall, s, seen = monitored(cmd, _env(args.threads), args.interval, log, ("step(s) per epoch", last_train))
    if rc != 0:
        return {"path": path, "world_size": world, "error": f"exit {rc}: {_tail(log, 4).strip()[-400:]}"}
    ranks = s.ranks()
    if world == 1:  # no torchrun: the train process itself is rank 0
        ranks = {0: s.procs[s.root_pid]}
    if len(ranks) != world:
        return {"path": path, "world_size": world, "error": f"sampled {len(ranks)} ranks, expected {world}"}
    rows = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    res = json.load(open(os.path.join(out, "results.json")))
    secs = [r["seconds"] for r in rows]
    per_epoch = [secs[0]] + [b - a for a, b in zip(secs, secs[1:])]
    train_only = per_epoch[:-1] if len(per_epoch) > 1 else per_epoch  # the last epoch includes evaluation
    uss = [ranks[r].peak.uss for r in sorted(ranks)]
    pss = [ranks[r].peak.pss for r in sorted(ranks)]
    rss = [ranks[r].peak.rss for r in sorted(ranks)]
    win = None
    if args.epochs > 1 and len(seen) == 2:
        win = [s.window_peak(ranks[r].pid, seen["step(s) per epoch"], seen[last_train]) for r in sorted(ranks)]
    row = {"path": path, "world_size": world,
           "train_rank_uss_mib": [round(m.uss / MiB) for m in win] if win and all(win) else None,
           "train_max_rank_uss_mib": round(max(m.uss for m in win) / MiB) if win and all(win) else None,
           "train_max_rank_pss_mib": round(max(m.pss for m in win) / MiB) if win and all(win) else None,
           "train_max_rank_rss_mib": round(max(m.rss for m in win) / MiB) if win and all(win) else None,
           "rank_peak_uss_mib": [round(v / MiB) for v in uss], "rank_peak_pss_mib": [round(v / MiB) for v in pss],
           "rank_peak_rss_mib": [round(v / MiB) for v in rss],
           "max_rank_uss_mib": round(max(uss) / MiB), "max_rank_pss_mib": round(max(pss) / MiB),
           "max_rank_rss_mib": round(max(rss) / MiB), "tree_pss_peak_mib": round(s.total_pss_peak / MiB),
           "epoch_s": [round(v, 2) for v in per_epoch], "train_epoch_s": round(sum(train_only) / len(train_only), 2),
           "final_loss": rows[-1]["loss"], "test_acc": res["test_at_best_valid"], "valid_acc": res["best_valid"],
           "wall_s": round(wall, 1), "samples": min(ranks[r].samples for r in ranks)}
    print(f"{path} W={world}: {json.dumps(row)}", flush=True)
    return row


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_guard(rows: list[dict], path: str, world: int) -> str | None:
    """A reason not to start a run that would not fit in this machine's available memory (others share
    it), judged from the same path's W = 1 run: W x its peak PSS during the training epochs (its whole
    run's peak includes the one-off METIS of an uncached partition) x 1.3; ``None`` = start it."""
    one = next((r for r in rows if r["path"] == path and r["world_size"] == 1 and "error" not in r), None)
    if one is None or world == 1 or path == "store":  # a store rank holds a share of what the W=1 rank held
        return None
    key = "train_max_rank_pss_mib" if one.get("train_max_rank_pss_mib") is not None else "max_rank_pss_mib"
    need = world * one[key] * MiB * 1.3
    have = mem_available()
    if need > have:
        return (f"skipped: {world} x the W=1 peak PSS ({key}: {one[key]} MiB) x 1.3 = {need / 2**30:.1f} GiB "
                f"> MemAvailable {have / 2**30:.1f} GiB at the start of this run")
    return None


def targets(rows: list[dict]) -> list[dict]:
    by = {(r["path"], r["world_size"]): r for r in rows if "error" not in r}
    out = []
    base = by.get(("memory", 1))
    for (path, w), r in sorted(by.items()):
        if path != "store":
            continue
        if base is not None:
            for key, what in (("train_max_rank_uss_mib", "training epochs"), ("max_rank_uss_mib", "whole run")):
                if base.get(key) is None or r.get(key) is None:
                    continue
                limit = base[key] / w + 300
                out.append({"target": f"store per-rank USS <= memory W=1 USS / {w} + 300 MB ({what})",
                            "world_size": w, "value": r[key], "limit": round(limit), "met": r[key] <= limit})
        mem = by.get(("memory", w))
        if mem is not None:
            d = abs(r["test_acc"] - mem["test_acc"]) * 100
            out.append({"target": "|store - memory| test accuracy <= 0.5 point", "world_size": w,
                        "value": round(d, 3), "limit": 0.5, "met": d <= 0.5})
            if w == 1:
                ratio = r["train_epoch_s"] / mem["train_epoch_s"]
                out.append({"target": "store epoch time <= 1.1 x memory at W=1", "world_size": 1,
                            "value": round(ratio, 3), "limit": 1.1, "met": ratio <= 1.1})
    return out


def _uss(row: dict) -> float:
    return row["train_max_rank_uss_mib"] if row.get("train_max_rank_uss_mib") is not None else row["max_rank_uss_mib"]


def plot(rows: list[dict], prow: dict, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    worlds = sorted({r["world_size"] for r in ok})
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, path in enumerate(("memory", "store")):
        rs = {r["world_size"]: r for r in ok if r["path"] == path}
        xs = [w + (i - 0.5) * 0.3 for w in worlds if w in rs]
        ax[0].bar(xs, [_uss(rs[w]) for w in worlds if w in rs], width=0.3, label=f"{path}: USS, training epochs")
        ax[0].scatter(xs, [rs[w]["max_rank_uss_mib"] for w in worlds if w in rs], marker="x", color="k",
                      zorder=3, label="USS, whole run" if i == 0 else None)
        ax[0].scatter(xs, [rs[w]["max_rank_rss_mib"] for w in worlds if w in rs], marker="_", s=300, color="grey",
                      zorder=3, label="RSS, whole run" if i == 0 else None)
        ax[1].plot([w for w in worlds if w in rs], [rs[w]["train_epoch_s"] for w in worlds if w in rs], "o-",
                   label=path)
        ax[2].plot([w for w in worlds if w in rs], [100 * rs[w]["test_acc"] for w in worlds if w in rs], "o-",
                   label=path)
    base = next((r for r in ok if r["path"] == "memory" and r["world_size"] == 1), None)
    if base is not None:
        ax[0].plot(worlds, [_uss(base) / w + 300 for w in worlds], "r--", label="target: memory W=1 / W + 300 MB")
    ax[0].set(xlabel="processes W", ylabel="peak MiB of the largest rank", title="per-rank memory", xticks=worlds)
    ax[1].set(xlabel="processes W", ylabel="s per training epoch", title="epoch time (2 cores)", xticks=worlds)
    ax[2].set(xlabel="processes W", ylabel="test accuracy %", title="accuracy", xticks=worlds)
    for a in ax:
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.85, help="size relative to ogbn-products (0.85: 2.08M nodes)")
    p.add_argument("--root", default=os.environ.get("GRAPHSCALE_CACHE", os.path.join("runs", "bench-data")),
                   help="folder for the synthetic set and the store (default $GRAPHSCALE_CACHE or runs/bench-data)")
    p.add_argument("--parts", type=int, default=64, help="METIS parts of the store and of the in-memory run")
    p.add_argument("--q", type=int, default=4, help="parts merged per Cluster-GCN step")
    p.add_argument("--worlds", default="1,2,4", help="process counts W, comma-separated")
    p.add_argument("--paths", default="memory,store", help="memory, store or both")
    p.add_argument("--epochs", type=int, default=3, help="training epochs per run (evaluation after the last)")
    p.add_argument("--hidden", type=int, default=128, help="SAGE hidden width")
    p.add_argument("--layers", type=int, default=2, help="SAGE layers")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout (0: runs comparable)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per process")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--dist-timeout", type=float, default=1800, help="train.dist_timeout of the runs")
    p.add_argument("--repartition", action="store_true", help="write the store again even if it exists")
    p.add_argument("--tag", default="", help="suffix of the result files (partitioned_<tag>.csv)")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        worlds = [int(w) for w in args.worlds.split(",")]
    except ValueError:
        p.error(f"--worlds {args.worlds!r}: expected comma-separated integers such as 1,2,4")
    paths = args.paths.split(",")
    if any(w < 1 for w in worlds) or any(x not in ("memory", "store") for x in paths) or args.parts < max(worlds):
        p.error(f"--worlds {args.worlds} / --paths {args.paths} / --parts {args.parts}: expected W >= 1, paths from "
                f"memory,store, and parts >= the largest W")
    if not 0 < args.scale <= 1:
        p.error(f"--scale {args.scale}: expected a factor in (0, 1]")
    args.root = os.path.abspath(os.path.expanduser(args.root))
    stem = NAME + (f"_{args.tag}" if args.tag else "")
    writer = ResultWriter.from_args(args, NAME, device="cpu")
    writer.check(stem, stem + "_targets", suffixes=(".csv", ".json"))
    work = os.path.abspath(os.path.join("runs", "bench-work", f"{stem}-{os.getpid()}"))
    os.makedirs(work, exist_ok=True)
    store = os.path.join(args.root, "stores", f"products-{args.scale:g}-metis-{args.parts}")
    data_s = ensure_data(args)
    prow = partition_step(args, store, work)
    rows: list[dict] = []
    extra = {"partition": prow, "data_seconds": round(data_s, 1), "store": store, "note": args.note,
             "settings": {k: v for k, v in vars(args).items() if k not in ("out", "overwrite")}}
    # the in-memory W=1 run first (every target compares with it), then the store runs, then the other
    # in-memory runs: a run stopped early keeps the rows that answer the most
    order = [(p, 1) for p in paths if 1 in worlds] + [(p, w) for p in ("store", "memory") if p in paths
                                                       for w in worlds if w > 1]
    title = (f"synthetic ogbn-products x{args.scale:g}, {args.parts} METIS parts, q={args.q}, "
             f"SAGE {args.layers}x{args.hidden}, {args.epochs} epochs, {os.cpu_count()} cores")
    for path, w in order:
        skip = memory_guard(rows, path, w)
        rows.append({"path": path, "world_size": w, "error": skip} if skip else train_run(args, path, w, store, work))
        extra["targets"] = tg = targets(rows)
        writer.write_table(stem, rows, extra)  # rewritten after every run: a killed run keeps its rows
        if tg:
            writer.write_table(stem + "_targets", tg, {"partition": prow})
        fig = plot(rows, prow, title)
        writer.write_file(stem + ".png", lambda fh: fig.savefig(fh, format="png", dpi=110))
        import matplotlib.pyplot as plt
        plt.close(fig)
    for t in tg:
        print(f"{'MET' if t['met'] else 'NOT MET'}: {t['target']} (W={t['world_size']}): {t['value']} vs {t['limit']}")
    print(f"-> {writer.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GraphscaleError as exc:
        print(f"bench_partitioned: error: {exc}", file=sys.stderr)
        sys.exit(2)
