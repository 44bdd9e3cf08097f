"""Cluster-GCN partitioning benchmark: partition quality and cost, batch assembly vs compute, loader
memory, and accuracy against full-batch training.

Questions, one section each (rows go to ``partition_<section>.{csv,json}`` through
graphscale.bench.output: a fresh ``runs/bench/partition-<timestamp>/`` unless ``--out`` is given):

* ``cut``: METIS (pymetis) vs random partition on planted-partition graphs of 1e4..1e6 nodes: time,
  edge cut, largest part / mean part (target: METIS cut >= 5x lower, sizes within ``imbalance``).
* ``epoch``: one Cluster-GCN epoch of a 2-layer GCN split into batch assembly (sampler + feature
  gather) and compute (forward, backward, step) (target: assembly < 10 % at 1e5+ nodes on CPU).
* ``memory``: the loader's bytes next to the graph's own (edge_index + x + y), counted exactly and as
  peak RSS in a fresh process; beside it PyG's ``ClusterData`` where it runs, else (pyg-lib /
  METIS-enabled torch-sparse missing, as here) its memory layout rebuilt on the random partition path:
  a full permuted copy of x, y and the CSR graph (target: overhead < 1.5x the graph).
* ``accuracy``: Cora / CiteSeer public split, GCN full-batch vs Cluster-GCN (METIS clusters), mean
  over seeds, test accuracy at the best validation epoch (target: within 1 point).

Usage::

    python benchmarks/bench_partition.py                    # everything, default sizes
    python benchmarks/bench_partition.py --sections cut --sizes 10000 100000
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import GraphscaleError
from graphscale.sampling.cluster import ClusterGCNSampler, build_cluster_sampler
from graphscale.sampling.partition import clear_memo, edge_cut, partition
from graphscale.sampling.subgraph import full_graph

NAME = "partition"
SECTIONS = ("cut", "epoch", "memory", "accuracy")
SHARED = os.environ.get("GRAPHSCALE_SHARED_DATA",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))


# ----------------------------------------------------------------------------------- helpers
def planted_graph(n: int, k: int, avg_degree: float = 10.0, p_in: float = 0.9, seed: int = 0):
    """Planted-partition graph: ``k`` equal communities (node ``i`` in community ``i % k``), about
    ``n * avg_degree / 2`` undirected edges, a share ``p_in`` of them inside a community. Returns the
    symmetric ``edge_index [2, ~n * avg_degree]`` and the community of every node."""
    g = torch.Generator().manual_seed(seed)
    comm = torch.arange(n) % k
    m = int(n * avg_degree / 2)
    src = torch.randint(0, n, (m,), generator=g)
    mate = comm[src] + k * torch.randint(0, n // k, (m,), generator=g)
    dst = torch.where(torch.rand(m, generator=g) < p_in, mate, torch.randint(0, n, (m,), generator=g))
    ei = torch.stack([src, dst])
    return torch.cat([ei, ei.flip(0)], dim=1), comm


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def env_tags() -> dict:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": f"cpu: {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
            "torch_geometric": _version("torch_geometric"), "pymetis": _version("pymetis"),
            "pyg_lib": _version("pyg_lib"), "torch_sparse": _version("torch_sparse")}


def pyg_cluster_data_status() -> str:
    """'ok' if PyG's ClusterData can partition here, else the reason it cannot."""
    from torch_geometric.data import Data
    from torch_geometric.loader import ClusterData
    tmp = tempfile.mkdtemp()
    try:
        ClusterData(Data(edge_index=torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]]), num_nodes=4), num_parts=2,
                    save_dir=tmp, log=False)
        return "ok"
    except Exception as exc:  # ImportError today; anything else is reported as well
        return f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------- cut
def bench_cut(sizes, imbalance=0.03, avg_degree=10.0):
    rows = []
    for n in sizes:
        k = max(10, n // 1000)  # communities of ~1000 nodes; as many parts as communities
        ei, _ = planted_graph(n, k, avg_degree, seed=0)
        for name in ("metis", "random"):
            clear_memo()
            t = time.perf_counter()
            part = partition(name, ei, n, k, seed=0, imbalance=imbalance)
            secs = time.perf_counter() - t
            sizes_ = torch.bincount(part, minlength=k)
            cut = edge_cut(ei, part)
            rows.append({"section": "cut", "partitioner": name, "num_nodes": n, "num_edges": ei.size(1),
                         "num_parts": k, "seconds": round(secs, 3), "edge_cut": cut,
                         "cut_fraction": round(cut / ei.size(1), 4),
                         "max_over_mean_part": round(float(sizes_.max()) / (n / k), 4),
                         "imbalance": imbalance if name == "metis" else 0.0})
            print(rows[-1], flush=True)
        m, r = rows[-2], rows[-1]
        m["random_over_metis_cut"] = r["random_over_metis_cut"] = round(r["edge_cut"] / max(m["edge_cut"], 1), 2)
    return rows


# ----------------------------------------------------------------------------------- epoch
def bench_epoch(sizes, features=128, hidden=128, classes=10, parts_per_node=1000, q=10, epochs=2):
    from graphscale.nn.models import GCN
    torch.manual_seed(0)
    rows = []
    for n in sizes:
        k = max(10, n // parts_per_node)
        ei, comm = planted_graph(n, k, 10.0, seed=1)
        x = torch.randn(n, features)
        y = comm % classes
        train = torch.rand(n) < 0.5
        for partitioner, lam in (("metis", None), ("metis", 1.0), ("random", None)):
            sampler = build_cluster_sampler(ei, n, num_parts=k, clusters_per_batch=q, partitioner=partitioner,
                                            diag_lambda=lam, seed=0)
            model = GCN(features, hidden, classes, 2, dropout=0.5)
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
            assembly = compute = 0.0
            kept = 0
            for epoch in range(epochs + 1):  # epoch 0 warms up
                a = c = 0.0
                t0 = time.perf_counter()
                it = sampler.epoch(epoch)
                while True:
                    sub = next(it, None)
                    if sub is None:
                        a += time.perf_counter() - t0
                        break
                    xb, yb, mb = x[sub.node_ids], y[sub.node_ids], train[sub.node_ids]
                    t1 = time.perf_counter()
                    a += t1 - t0
                    opt.zero_grad(set_to_none=True)
                    out = model(xb, sub.edge_index, None, edge_weight=sub.edge_weight)
                    torch.nn.functional.cross_entropy(out[mb], yb[mb]).backward()
                    opt.step()
                    t0 = time.perf_counter()
                    c += t0 - t1
                    if epoch == 1:
                        kept += sub.edge_ids.numel()
                if epoch > 0:
                    assembly, compute = assembly + a, compute + c
            row = {"section": "epoch", "partitioner": partitioner, "diag_lambda": lam, "num_nodes": n,
                   "num_edges": ei.size(1), "num_parts": k, "clusters_per_batch": q, "steps": len(sampler),
                   "features": features, "hidden": hidden, "edges_kept_fraction": round(kept / ei.size(1), 4),
                   "assembly_s": round(assembly / epochs, 4), "compute_s": round(compute / epochs, 4),
                   "assembly_share": round(assembly / (assembly + compute), 4)}
            rows.append(row)
            print(row, flush=True)
    return rows


# ----------------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def _reset_peak() -> bool:
    try:  # Linux >= 4.0: writing 5 resets VmHWM (peak RSS) to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_worker(mode: str, path: str, num_parts: int, q: int) -> dict:
    """Runs in a fresh process: load the graph (mmap, no transient copy), reset the peak, build the
    loader of ``mode`` and assemble one epoch of batches (features gathered per batch)."""
    torch.set_num_threads(1)
    if not os.environ.get("_GS_WARM"):
        # Warm-up on a tiny graph first: the first call of each op maps code pages and allocator
        # arenas (MiBs of RSS) that would otherwise be charged to the loader.
        tiny, _ = planted_graph(200, 4, seed=3)
        tiny_path = path + ".tiny"
        torch.save({"edge_index": tiny, "x": torch.randn(200, 8), "y": torch.zeros(200, dtype=torch.long),
                    "part": torch.arange(200) % 4}, tiny_path)
        os.environ["_GS_WARM"] = "1"
        for m in ("graphscale", "permuted-copy"):
            rss_worker(m, tiny_path, 4, 2)
    g = torch.load(path, mmap=True, weights_only=True)
    ei, x, y = g["edge_index"].clone(), g["x"].clone(), g["y"].clone()  # resident, owned
    part = g["part"].clone()
    del g
    n = x.size(0)
    base = _rss_kib("VmRSS")
    ok = _reset_peak()
    held = 0
    t = time.perf_counter()
    if mode == "graphscale":
        sampler = ClusterGCNSampler(ei, n, part, num_parts, clusters_per_batch=q, seed=0)
        held = sampler.index_bytes()
        for sub in sampler.epoch(0):
            xb, yb = x[sub.node_ids], y[sub.node_ids]
            del xb, yb, sub
    elif mode == "permuted-copy":
        # PyG ClusterData's layout: a permuted copy of the whole data object (x, y, CSR graph in the
        # new order) plus partptr; ClusterLoader slices it and concatenates q clusters per batch.
        perm = torch.argsort(part, stable=True)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n)
        row, col = inv[ei[0]], inv[ei[1]]
        order = torch.argsort(row * n + col)
        col = col[order]
        rowptr = torch.zeros(n + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(row, minlength=n).cumsum(0)
        del row, order
        xp, yp = x[perm], y[perm]
        partptr = torch.zeros(num_parts + 1, dtype=torch.long)
        partptr[1:] = torch.bincount(part, minlength=num_parts).cumsum(0)
        held = sum(tt.numel() * tt.element_size() for tt in (perm, rowptr, col, xp, yp, partptr))
        gen = torch.Generator().manual_seed(0)
        order = torch.randperm(num_parts, generator=gen)
        for s in range(0, num_parts, q):
            cl = order[s:s + q].tolist()
            nodes = torch.cat([torch.arange(int(partptr[c]), int(partptr[c + 1])) for c in cl])
            xb, yb = xp[nodes], yp[nodes]
            del xb, yb, nodes
    else:
        raise SystemExit(f"unknown mode {mode}")
    secs = time.perf_counter() - t
    peak = _rss_kib("VmHWM")
    return {"mode": mode, "held_bytes": held, "rss_base_kib": base, "rss_peak_kib": peak,
            "peak_over_base_bytes": (peak - base) * 1024 if ok else None, "build_and_epoch_s": round(secs, 3)}


def bench_memory(sizes, features=128, q=10):
    rows = []
    status = pyg_cluster_data_status()
    for n in sizes:
        k = max(10, n // 1000)
        ei, comm = planted_graph(n, k, 10.0, seed=2)
        x = torch.randn(n, features)
        y = comm % 10
        graph_bytes = sum(t.numel() * t.element_size() for t in (ei, x, y))
        # the partition does not change the layouts' sizes; random keeps this section free of METIS time
        part = partition("random", ei, n, k, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "graph.pt")
            torch.save({"edge_index": ei, "x": x, "y": y, "part": part}, path)
            for mode in ("graphscale", "permuted-copy"):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_rss-worker", mode, path,
                                      str(k), str(q)], capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                row = {"section": "memory", "loader": "graphscale ClusterGCNSampler" if mode == "graphscale"
                       else "PyG ClusterData layout (full permuted copy), rebuilt", "num_nodes": n,
                       "num_edges": ei.size(1), "features": features, "num_parts": k, "clusters_per_batch": q,
                       "graph_bytes": graph_bytes, **res,
                       "held_over_graph": round(res["held_bytes"] / graph_bytes, 4),
                       "peak_over_graph": (round(res["peak_over_base_bytes"] / graph_bytes, 4)
                                           if res["peak_over_base_bytes"] is not None else None),
                       "pyg_cluster_data": status}
                rows.append(row)
                print(row, flush=True)
    return rows


# ----------------------------------------------------------------------------------- accuracy
def load_planetoid(name: str, tmp: str):
    from torch_geometric.datasets import Planetoid
    src = os.path.join(SHARED, "planetoid", name)
    shutil.copytree(src, os.path.join(tmp, name))  # PyG writes processed/ beside raw/
    return Planetoid(tmp, name)[0]


def run_gcn(data, seed: int, sampler=None, eval_graph=None, epochs=200, lr=0.01, weight_decay=5e-4) -> float:
    """Kipf & Welling's GCN recipe; test accuracy at the best validation epoch."""
    from graphscale.nn.models import GCN
    torch.manual_seed(seed)
    n = data.num_nodes
    model = GCN(data.num_features, 16, int(data.y.max()) + 1, 2, dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    full = full_graph(data.edge_index, n)
    eval_graph = eval_graph or full
    best_val, best_test = -1.0, 0.0
    for epoch in range(epochs):
        model.train()
        for sub in (sampler.epoch(epoch) if sampler is not None else [full]):
            mask = data.train_mask[sub.node_ids]
            if not mask.any():
                continue
            opt.zero_grad(set_to_none=True)
            out = model(data.x[sub.node_ids], sub.edge_index, None, edge_weight=sub.edge_weight)
            torch.nn.functional.cross_entropy(out[mask], data.y[sub.node_ids][mask]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x, eval_graph.edge_index, None, edge_weight=eval_graph.edge_weight).argmax(1)
        val = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        test = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
        if val > best_val:
            best_val, best_test = val, test
    return best_test


def bench_accuracy(datasets, seeds, num_parts=10, q=5):
    rows = []
    for name in datasets:
        if not os.path.isdir(os.path.join(SHARED, "planetoid", name)):
            print(f"skip {name}: not found under {SHARED}/planetoid", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            data = load_planetoid(name, tmp)
        n = data.num_nodes
        variants = {"full-batch": lambda s: (None, None)}
        for lam in (None, 1.0):
            def make(s, lam=lam):
                sm = build_cluster_sampler(data.edge_index, n, num_parts=num_parts, clusters_per_batch=q,
                                           partitioner="metis", diag_lambda=lam, seed=s)
                return sm, sm.transform(full_graph(data.edge_index, n))
            variants[f"cluster-gcn metis P={num_parts} q={q}" + ("" if lam is None else f" diag_lambda={lam:g}")] = make
        for variant, make in variants.items():
            accs = []
            t = time.perf_counter()
            for s in seeds:
                sampler, eval_graph = make(s)
                accs.append(run_gcn(data, s, sampler, eval_graph))
            acc = torch.tensor(accs)
            rows.append({"section": "accuracy", "dataset": name, "variant": variant, "seeds": len(seeds),
                         "test_acc_mean": round(float(acc.mean()) * 100, 2),
                         "test_acc_std": round(float(acc.std()) * 100, 2) if len(seeds) > 1 else 0.0,
                         "per_seed": [round(a * 100, 1) for a in accs], "seconds": round(time.perf_counter() - t, 1)})
            print(rows[-1], flush=True)
        base = rows[-len(variants)]["test_acc_mean"]
        for r in rows[-len(variants):]:
            r["delta_vs_full_batch"] = round(r["test_acc_mean"] - base, 2)
    return rows


# ----------------------------------------------------------------------------------- main
def write(writer, rows: list, tags: dict, note: str) -> list[str]:
    """One table per section: ``partition_<section>.csv`` / ``.json``."""
    by_section: dict[str, list] = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append({**r, **tags})
    paths = []
    for section, rs in by_section.items():
        paths += writer.write_table(f"partition_{section}", rs, {"note": note})
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="what to measure (default: all four)")
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000],
                   help="cut: node counts (default 10000 100000 1000000)")
    p.add_argument("--epoch-sizes", nargs="+", type=int, default=[100_000], help="epoch: node counts (default 100000)")
    p.add_argument("--memory-sizes", nargs="+", type=int, default=[100_000],
                   help="memory: node counts (default 100000)")
    p.add_argument("--datasets", nargs="+", default=["Cora", "CiteSeer"],
                   help="accuracy: Planetoid data sets (default Cora CiteSeer)")
    p.add_argument("--seeds", type=int, default=5, help="accuracy: seeds per variant (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine, 2 threads per job "
                        "oversubscribe the cores; one epoch's batch assembly took 3x longer with 2)")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    p.add_argument("--_rss-worker", nargs=4, metavar=("MODE", "PATH", "PARTS", "Q"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._rss_worker:
        mode, path, k, q = args._rss_worker
        print(json.dumps(rss_worker(mode, path, int(k), int(q))))
        return 0
    if args.seeds < 1 or args.threads < 1 or min(args.sizes + args.epoch_sizes + args.memory_sizes) < 100:
        print(f"bench_partition: error: expected --seeds >= 1, --threads >= 1 and node counts >= 100; got "
              f"{args.seeds}, {args.threads}, {args.sizes + args.epoch_sizes + args.memory_sizes}", file=sys.stderr)
        return 2
    try:
        writer = ResultWriter.from_args(args, NAME, "cpu")
        writer.check(*(f"partition_{s}" for s in args.sections))
    except GraphscaleError as exc:
        print(f"bench_partition: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    tags = env_tags()
    tags["pyg_cluster_data"] = pyg_cluster_data_status()
    print(tags, flush=True)
    rows = []
    if "cut" in args.sections:
        rows += bench_cut(args.sizes)
    if "epoch" in args.sections:
        rows += bench_epoch(args.epoch_sizes)
    if "memory" in args.sections:
        rows += bench_memory(args.memory_sizes)
    if "accuracy" in args.sections:
        rows += bench_accuracy(args.datasets, list(range(args.seeds)))
    if not rows:
        print("bench_partition: error: nothing was measured (no data set found for the accuracy section?)",
              file=sys.stderr)
        return 2
    print("wrote " + ", ".join(write(writer, rows, tags, args.note)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
