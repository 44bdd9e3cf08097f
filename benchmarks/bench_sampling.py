"""Neighbour sampling time per epoch: graphscale's plain-torch sampler against PyG's ``NeighborLoader``
(torch-sparse backend) and a plain Python-loop sampler, on the same graph and thread count.

Graphs (synthetic, power-law in-degrees; ``--graphs``):

* ``arxiv``: 169,343 nodes, 2,316,000 directed edges (1,158,000 random pairs in both directions),
  90,941 seed (training) nodes, as ogbn-arxiv's sizes;
* ``products``: 2,449,029 nodes, 61,859,140 directed edges, 196,615 seed nodes, as ogbn-products
  (``--products-nodes/--products-edges`` scale it down where memory does not allow it).

An edge's two ends are ``floor(N * u^2)`` for uniform ``u`` (then node ids shuffled), so node ``i``'s
expected degree falls like ``1/sqrt(rank)``: a heavy tail like the real graphs', not a uniform graph.

Per epoch: fanouts ``[15, 10, 5]``, batch 1024, seeds shuffled, every batch fully built (relabelled
``edge_index``, ``n_id``, ``e_id``, per-hop counts); no feature gathering in any method. Methods run
interleaved round by round (the machine is shared; the load average goes into the result file) and
the median epoch is reported, as wall-clock seconds and as the process's CPU seconds
(``time.process_time``: on a loaded shared machine wall time also counts the time other jobs held the
cores; CPU seconds do not). ``--max-batches`` times the first N batches of an epoch and the Python
loop ``--loop-batches``; both are scaled to the epoch's batch count (marked ``extrapolated``).

Peers: PyG's ``NeighborLoader`` (``pyg``) when torch-sparse (or pyg-lib) is installed, and
``torch-sparse-op``: torch-sparse's C++ sampler ``torch.ops.torch_sparse.neighbor_sample`` called
directly on the same CSR (what the loader calls per batch, without its Python around it: a lower bound
of the loader's time), from the installed package or from a library built alone
(``--torch-sparse-op``, docs/sampling.md).

PyG needs torch-sparse (or pyg-lib); neither has wheels for torch 2.13, so run this script with the
interpreter of a separate environment that has it built (docs/sampling.md)::

    python -m venv --system-site-packages /work/venv-sparse
    /work/venv-sparse/bin/pip install wheel setuptools
    MAX_JOBS=1 /work/venv-sparse/bin/pip install --no-build-isolation torch-scatter torch-sparse
    /work/venv-sparse/bin/python benchmarks/bench_sampling.py --out benchmarks/results

Without torch-sparse the PyG rows are skipped with a note (``--require-pyg`` makes that an error).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time

import torch

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError
from graphscale.ops import CSR
from graphscale.sampling.neighbor import NeighborSampler, check_batch_size, check_fanouts, sample_neighbors_loop

NAME = "sampling"
GRAPHS = {  # name: (nodes, directed edges, seed nodes) -- the OGB data sets' sizes
    "arxiv": (169_343, 2_316_000, 90_941),
    "products": (2_449_029, 61_859_140, 196_615),
}
METHODS = ("graphscale", "graphscale-prefetch", "pyg", "torch-sparse-op", "loop")


def powerlaw_graph(n: int, e: int, seed: int = 0) -> torch.Tensor:
    """``edge_index [2, e]`` (``e`` even): ``e / 2`` random pairs in both directions, each end
    ``floor(n * u^2)`` under a random relabelling of the nodes (heavy-tailed degrees)."""
    g = torch.Generator().manual_seed(seed)
    m = e // 2
    ends = torch.empty(2, m, dtype=torch.long)
    chunk = 1 << 22  # generate in chunks: float64 draws for 31M pairs would be another 500 MB
    for a in range(0, m, chunk):
        b = min(m, a + chunk)
        ends[:, a:b] = (torch.rand(2, b - a, generator=g, dtype=torch.float64).square_() * n).long().clamp_(max=n - 1)
    relabel = torch.randperm(n, generator=g)
    ends = relabel[ends]
    return torch.cat([ends, ends.flip(0)], 1)


def _pyg_loader_cls():
    """PyG's NeighborLoader and the backend it will sample with, or (None, reason)."""
    try:
        import torch_geometric.typing as pyg_typing
        from torch_geometric.loader import NeighborLoader
    except ImportError as exc:
        return None, f"torch_geometric not importable: {exc}"
    if pyg_typing.WITH_PYG_LIB:
        return NeighborLoader, "pyg-lib"
    if pyg_typing.WITH_TORCH_SPARSE:
        return NeighborLoader, "torch-sparse"
    return None, ("neither pyg-lib nor torch-sparse is installed in this interpreter "
                  f"({sys.executable}); see docs/sampling.md for the build")


def _scaled(t0: float, c0: float, nb: int, nn: int, ne: int, total: int) -> tuple:
    """(wall, batches timed, nodes, edges, CPU) with the times scaled from ``nb`` batches to ``total``."""
    scale = total / nb
    return (time.perf_counter() - t0) * scale, nb, nn, ne, (time.process_time() - c0) * scale


def _epoch_graphscale(sampler: NeighborSampler, epoch: int, max_batches: int) -> tuple:
    total = sampler.num_batches
    steps = range(min(total, max_batches)) if max_batches > 0 else None
    t0, c0 = time.perf_counter(), time.process_time()
    nb = nn = ne = 0
    for b in sampler.epoch(epoch, steps):
        nb, nn, ne = nb + 1, nn + b.node_ids.numel(), ne + b.edge_index.size(1)
    return _scaled(t0, c0, nb, nn, ne, total)


def _epoch_pyg(loader, max_batches: int) -> tuple:
    t0, c0 = time.perf_counter(), time.process_time()
    nb = nn = ne = 0
    for b in loader:
        nb, nn, ne = nb + 1, nn + b.n_id.numel(), ne + b.edge_index.size(1)
        if nb == max_batches:
            break
    return _scaled(t0, c0, nb, nn, ne, len(loader))


def _epoch_kernel(colptr: torch.Tensor, row: torch.Tensor, seeds: torch.Tensor, fanouts, batch_size: int,
                  epoch: int, max_batches: int) -> tuple:
    """torch-sparse's C++ sampling op alone (``torch.ops.torch_sparse.neighbor_sample``, what PyG's
    NeighborLoader calls with torch-sparse), without PyG's Python around it (no Data objects)."""
    order = seeds[torch.randperm(seeds.numel(), generator=torch.Generator().manual_seed(epoch))]
    op = torch.ops.torch_sparse.neighbor_sample
    batches = torch.split(order, batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    nb = nn = ne = 0
    for s in batches[:max_batches] if max_batches > 0 else batches:
        node, r, c, e = op(colptr, row, s, fanouts, False, True)
        nb, nn, ne = nb + 1, nn + node.numel(), ne + e.numel()
    return _scaled(t0, c0, nb, nn, ne, len(batches))


def _epoch_loop(csr: CSR, seeds: torch.Tensor, fanouts, batch_size: int, batches: int, epoch: int):
    """Time ``batches`` batches of the Python-loop sampler (0 = all) and scale to the epoch."""
    order = seeds[torch.randperm(seeds.numel(), generator=torch.Generator().manual_seed(epoch))]
    all_batches = list(torch.split(order, batch_size))
    run = all_batches if batches <= 0 else all_batches[:batches]
    rng = random.Random(epoch)
    t0, c0 = time.perf_counter(), time.process_time()
    nn = ne = 0
    for s in run:
        b = sample_neighbors_loop(csr, s.tolist(), fanouts, rng)
        nn, ne = nn + b.node_ids.numel(), ne + b.edge_index.size(1)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    scale = len(all_batches) / len(run)
    return dt * scale, len(run), nn, ne, dc * scale


def _overlap_rows(csr: CSR, seeds: torch.Tensor, fanouts, batch_size: int, batches: int, rounds: int,
                  seed: int, threads: int, gname: str) -> list[dict]:
    """Sampling overlapped with training: ``batches`` steps of a SAGE (128 -> 128 -> 40,
    trimmed per hop; 128 hidden) on random features, with the batches sampled inline, by a prefetch thread, and
    by one worker process. Interleaved over ``rounds``; median seconds per step."""
    import torch.nn.functional as F
    from graphscale.nn.models import SAGE

    n = csr.num_rows
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 128, generator=g)
    y = torch.randint(0, 40, (n,), generator=g)
    model = SAGE(128, 128, 40, num_layers=len(fanouts), dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    modes = {"inline": {}, "prefetch-thread-4": {"prefetch": 4}, "worker-process-1": {"num_workers": 1, "prefetch": 4}}
    times: dict[str, list] = {m: [] for m in modes}
    for r in range(rounds):
        for mode, kw in modes.items():
            sampler = NeighborSampler(csr, fanouts, batch_size, input_nodes=seeds[:batches * batch_size], seed=seed, **kw)
            t0 = time.perf_counter()
            steps = 0
            for b in sampler.epoch(r):
                out = model(x[b.node_ids], b.edge_index, num_sampled_nodes=b.num_sampled_nodes,
                            num_sampled_edges=b.num_sampled_edges)[:b.batch_size]
                loss = F.cross_entropy(out, y[b.seed_ids])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
            times[mode].append((time.perf_counter() - t0) / steps)
            print(f"[{gname}] overlap round {r + 1} {mode}: {times[mode][-1] * 1e3:.0f} ms/step",
                  file=sys.stderr, flush=True)
    base = statistics.median(times["inline"])
    return [{"graph": gname, "threads": threads, "mode": mode, "steps": batches, "fanouts": fanouts,
             "batch_size": batch_size, "ms_per_step_median": round(1e3 * statistics.median(v), 1),
             "ms_per_step": [round(1e3 * t, 1) for t in v],
             "speedup_vs_inline": round(base / statistics.median(v), 3),
             "load_average_end": [round(a, 2) for a in os.getloadavg()]} for mode, v in times.items()]


def accuracy(args) -> int:
    """Train each ``--accuracy`` config with seeds ``0..--seeds-1`` (graphscale.train, as ``graphscale
    train CONFIG train.seed=S``) and write one row per run plus a mean/std row per config."""
    import tempfile

    from graphscale.train import api
    from graphscale.train.config import load_config

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    cfgs = {path: load_config(path, []) for path in args.accuracy}  # fail on a bad file before training
    for path, cfg in cfgs.items():
        api.check(cfg)
    stem = args.stem or f"{NAME}_accuracy"
    writer = ResultWriter.from_args(args, NAME, "cpu")
    writer.check(stem)
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as tmp:
        for path in args.accuracy:
            tests, valids = [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                out = os.path.join(tmp, f"{os.path.basename(os.path.dirname(path))}-{os.path.basename(path)}-{seed}")
                overrides = [f"train.seed={seed}", f"log.out={out}", "log.progress=false"]
                cfg = load_config(path, overrides)
                api.check(cfg)
                res = api.train(cfg)
                cmd = f"graphscale train {path} " + " ".join(overrides[:1])
                rows.append({"config": path, "dataset": res["dataset"], "sampler": cfg.sampler.name,
                             "model": cfg.model.name, "seed": seed, "epochs": cfg.train.epochs,
                             "best_epoch": res["best_epoch"], "best_valid": round(res["best_valid"], 4),
                             "test_at_best_valid": round(res["test_at_best_valid"], 4),
                             "train_seconds": round(res["seconds"], 1), "command": cmd})
                tests.append(res["test_at_best_valid"])
                valids.append(res["best_valid"])
                print(f"{path} seed {seed}: valid {res['best_valid']:.4f} test {res['test_at_best_valid']:.4f}",
                      file=sys.stderr, flush=True)
            summary.append({"config": path, "dataset": rows[-1]["dataset"], "sampler": rows[-1]["sampler"],
                            "seed": f"mean of {args.seeds} from {args.first_seed}", "best_valid": round(statistics.mean(valids), 4),
                            "test_at_best_valid": round(statistics.mean(tests), 4),
                            "test_std": round(statistics.stdev(tests), 4) if len(tests) > 1 else 0.0,
                            "command": f"python benchmarks/bench_sampling.py --accuracy {path} --seeds {args.seeds} "
                                       f"--first-seed {args.first_seed}"})
    for path in writer.write_table(stem, rows + summary):
        print(path)
    return 0


def _load_op(path: str):
    """Where ``torch.ops.torch_sparse.neighbor_sample`` comes from, or ``None``."""
    try:
        import torch_sparse  # noqa: F401  (registers the op)
        return f"torch_sparse {torch_sparse.__version__}"
    except ImportError:
        pass
    if not path:
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"--torch-sparse-op {path!r}: no such file")
    torch.ops.load_library(path)
    return f"library {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Neighbour sampling time per epoch: graphscale vs PyG NeighborLoader "
                                            "(torch-sparse) vs a Python loop.")
    p.add_argument("--graphs", nargs="+", default=["arxiv", "products"], choices=sorted(GRAPHS),
                   help="synthetic graphs with OGB sizes to measure on (default: both)")
    p.add_argument("--products-nodes", type=int, default=GRAPHS["products"][0],
                   help="node count of the products-like graph (default: ogbn-products' 2,449,029)")
    p.add_argument("--products-edges", type=int, default=GRAPHS["products"][1],
                   help="directed edge count of the products-like graph (default: 61,859,140)")
    p.add_argument("--fanouts", default="15,10,5", help="neighbours per hop, comma-separated (-1 = all)")
    p.add_argument("--batch-size", type=int, default=1024, help="seed nodes per batch")
    p.add_argument("--threads", default="1", help="torch thread counts to measure, comma-separated (same for all methods)")
    p.add_argument("--rounds", type=int, default=3, help="epochs per method, interleaved; the median is reported")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--max-batches", type=int, default=0,
                   help="time only the first N batches of each epoch and scale to the epoch's batch count "
                        "(0 = whole epochs; the Python loop has --loop-batches)")
    p.add_argument("--prefetch", type=int, default=4, help="batches the prefetch thread keeps ready (graphscale-prefetch)")
    p.add_argument("--loop-batches", type=int, default=5,
                   help="batches the Python-loop sampler is timed on per round, scaled to an epoch (0 = whole epoch)")
    p.add_argument("--overlap-batches", type=int, default=0,
                   help="also time this many SAGE training steps with sampling inline / in a prefetch thread / in a "
                        "worker process, on the first graph (0 = skip)")
    p.add_argument("--torch-sparse-op", default="", metavar="SO",
                   help="a shared library that registers torch.ops.torch_sparse.neighbor_sample (torch-sparse's "
                        "C++ sampler built alone, docs/sampling.md), for when the torch_sparse package is not "
                        "installed; unused when it is")
    p.add_argument("--require-pyg", action="store_true", help="fail when PyG's sampler backend is missing (default: skip it)")
    p.add_argument("--seed", type=int, default=0, help="graph and sampling seed")
    p.add_argument("--accuracy", nargs="+", metavar="CONFIG",
                   help="instead of timing: train these configs (graphscale train) with --seeds seeds each and "
                        "write test accuracy at the best validation epoch")
    p.add_argument("--seeds", type=int, default=5, help="--accuracy: seeds per config (first-seed, first-seed + 1, ...)")
    p.add_argument("--first-seed", type=int, default=0, help="--accuracy: the first train.seed")
    p.add_argument("--stem", default="", help="result file name without extension (default sampling, "
                                              "or sampling_accuracy with --accuracy)")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    if args.accuracy:
        return accuracy(args)

    try:
        fanouts = check_fanouts([int(v) for v in args.fanouts.split(",")], "--fanouts")
    except ValueError:
        raise ConfigError(f"--fanouts {args.fanouts!r}: expected comma-separated integers, e.g. 15,10,5") from None
    batch_size = check_batch_size(args.batch_size, "--batch-size")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods {args.methods!r}: expected a comma-separated subset of {', '.join(METHODS)}")
    try:
        threads = [int(v) for v in args.threads.split(",")]
    except ValueError:
        threads = [0]
    if any(t < 1 for t in threads):
        raise ConfigError(f"--threads {args.threads!r}: expected comma-separated integers >= 1")
    if args.rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    if args.products_nodes < 2 or args.products_edges < 2:
        raise ConfigError(f"--products-nodes/--products-edges must be >= 2, got {args.products_nodes}, {args.products_edges}")
    op_source = _load_op(args.torch_sparse_op)
    loader_cls, pyg_backend = _pyg_loader_cls()
    if loader_cls is None and op_source is not None and op_source.startswith("library"):
        # PyG calls torch.ops.torch_sparse.neighbor_sample when this flag is set; the flag is False here
        # only because the torch_sparse Python package (which needs torch-scatter) is not installed.
        import torch_geometric.typing as pyg_typing
        pyg_typing.WITH_TORCH_SPARSE = True
        loader_cls, _ = _pyg_loader_cls()
        pyg_backend = (f"torch-sparse neighbor_sample op from {args.torch_sparse_op} (built alone; "
                       f"torch_geometric.typing.WITH_TORCH_SPARSE set by this benchmark)")
    if "pyg" in methods and loader_cls is None:
        if args.require_pyg:
            raise ConfigError(f"PyG NeighborLoader cannot sample here: {pyg_backend}")
        print(f"bench_sampling: skipping pyg: {pyg_backend}", file=sys.stderr)
        methods.remove("pyg")

    if "torch-sparse-op" in methods and op_source is None:
        print("bench_sampling: skipping torch-sparse-op: torch_sparse is not installed and no --torch-sparse-op "
              "library was given", file=sys.stderr)
        methods.remove("torch-sparse-op")
    stem = args.stem or NAME
    writer = ResultWriter.from_args(args, NAME, "cpu")
    writer.check(stem, stem + "_overlap")
    rows, overlap = [], []
    for gname in args.graphs:
        n, e, s = GRAPHS[gname]
        if gname == "products":
            n, e = args.products_nodes, args.products_edges
            s = min(s, n)
        t0 = time.perf_counter()
        ei = powerlaw_graph(n, e, args.seed)
        csr = CSR.from_edge_index(ei, n)
        seeds = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 1))[:s]
        setup = {"graphscale": time.perf_counter() - t0}
        deg = csr.degree()
        print(f"[{gname}] {n:,} nodes, {ei.size(1):,} edges, max in-degree {int(deg.max())}, "
              f"graph + CSR {setup['graphscale']:.1f} s", file=sys.stderr, flush=True)
        loader = None
        if "pyg" in methods:
            from torch_geometric.data import Data
            t0 = time.perf_counter()
            loader = loader_cls(Data(edge_index=ei, num_nodes=n), num_neighbors=fanouts, batch_size=batch_size,
                                input_nodes=seeds, shuffle=True)
            setup["pyg"] = time.perf_counter() - t0  # the CSC conversion happens here
        for nt in threads:
            torch.set_num_threads(nt)
            samplers = {"graphscale": NeighborSampler(csr, fanouts, batch_size, input_nodes=seeds, seed=args.seed),
                        "graphscale-prefetch": NeighborSampler(csr, fanouts, batch_size, input_nodes=seeds,
                                                               seed=args.seed, prefetch=args.prefetch)}
            times: dict[str, list] = {m: [] for m in methods}
            for r in range(args.rounds):
                torch.manual_seed(args.seed + r)  # PyG's shuffle
                for m in methods:
                    gc.collect()
                    if m == "pyg":
                        res = _epoch_pyg(loader, args.max_batches)
                    elif m == "loop":
                        res = _epoch_loop(csr, seeds, fanouts, batch_size, args.loop_batches, r)
                    elif m == "torch-sparse-op":  # the in-neighbour CSC PyG builds is this CSR
                        res = _epoch_kernel(csr.rowptr, csr.col, seeds, fanouts, batch_size, r, args.max_batches)
                    else:
                        res = _epoch_graphscale(samplers[m], r, args.max_batches)
                    times[m].append(res)
                    print(f"[{gname}] threads={nt} round {r + 1} {m}: {res[0]:.2f} s/epoch, {res[4]:.2f} s CPU "
                          f"({res[1]} batches timed)",
                          file=sys.stderr, flush=True)
            num_batches = -(-s // batch_size)
            def med_of(m, i):
                return statistics.median(t[i] for t in times[m]) if m in times else None
            pyg_med, op_med = med_of("pyg", 0), med_of("torch-sparse-op", 0)
            pyg_cpu, op_cpu = med_of("pyg", 4), med_of("torch-sparse-op", 4)
            for m in methods:
                epochs = [t[0] for t in times[m]]
                med, cpu = statistics.median(epochs), med_of(m, 4)
                timed = sum(t[1] for t in times[m])
                rows.append({
                    "graph": gname, "nodes": n, "edges": ei.size(1), "seed_nodes": s, "batches_per_epoch": num_batches,
                    "fanouts": fanouts, "batch_size": batch_size, "threads": nt, "method": m,
                    "backend": {"pyg": pyg_backend, "loop": "python loop", "torch-sparse-op": op_source}.get(m, "torch ops"),
                    "prefetch": args.prefetch if m == "graphscale-prefetch" else 0,
                    "epoch_s_median": round(med, 3), "epoch_s": [round(v, 3) for v in epochs],
                    "ms_per_batch": round(1e3 * med / num_batches, 2),
                    "nodes_per_batch": round(sum(t[2] for t in times[m]) / timed),
                    "edges_per_batch": round(sum(t[3] for t in times[m]) / timed),
                    "cpu_s_median": round(cpu, 3), "cpu_s": [round(t[4], 3) for t in times[m]],
                    "ratio_to_pyg": round(med / pyg_med, 3) if pyg_med else None,
                    "cpu_ratio_to_pyg": round(cpu / pyg_cpu, 3) if pyg_cpu else None,
                    "ratio_to_torch_sparse_op": round(med / op_med, 3) if op_med else None,
                    "cpu_ratio_to_torch_sparse_op": round(cpu / op_cpu, 3) if op_cpu else None,
                    "extrapolated": (0 < args.loop_batches < num_batches) if m == "loop" else
                    (0 < args.max_batches < num_batches),
                    "batches_timed": timed,
                    "setup_s": round(setup.get("pyg" if m == "pyg" else "graphscale", float("nan")), 2),
                    "load_average_end": [round(v, 2) for v in os.getloadavg()],
                })
                print(f"[{gname}] threads={nt} {m}: median {med:.2f} s/epoch ({cpu:.2f} s CPU)"
                      + (f", {med / pyg_med:.2f}x PyG" if pyg_med else "")
                      + (f", {med / op_med:.2f}x torch-sparse op" if op_med else ""), file=sys.stderr, flush=True)
        if args.overlap_batches > 0 and not overlap:
            torch.set_num_threads(threads[0])
            overlap = _overlap_rows(csr, seeds, fanouts, batch_size, args.overlap_batches, args.rounds, args.seed,
                                    threads[0], gname)
        del loader, csr, ei
        gc.collect()
    extra = {"graphs": {g: GRAPHS[g] for g in args.graphs}, "pyg_backend": pyg_backend, "torch_sparse_op": op_source,
             "products_size": [args.products_nodes, args.products_edges]}
    for path in writer.write_table(stem, rows, extra):
        print(path)
    if overlap:
        for path in writer.write_table(stem + "_overlap", overlap, extra):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
