"""Aggregation benchmark: graphscale.ops against its peers, forward + backward, in one run.

Question: is ``graphscale.ops.spmm`` / ``softmax_aggr`` (and the convolutions built on them) at least
as fast as the best available implementation for each reduce, and how close to the memory-bandwidth
floor is it?

For every graph (random, ``N`` nodes, ``N * deg`` edges; an ogbn-arxiv-sized one: 169,343 nodes,
1.17M edges symmetrised to ~2.3M; on CUDA also an ogbn-products-sized one: 2,449,029 nodes, 61.9M
edges symmetrised to ~123.7M, and ``-skewed`` variants whose destinations follow a power law --
``dst = floor(N * u**2)``, ids shuffled -- so one node receives ~``E / sqrt(N)`` edges, about the
hubs of the real graphs: arxiv's largest in-degree is ~13k, products' ~17k) and feature width ``F``,
it times ``out.backward(g)`` after ``out = impl(x)`` (x requires grad) for every implementation
available here:

* ``graphscale`` (``graphscale.ops``, backend auto) on CPU; on CUDA ``graphscale-triton`` (the
  Triton kernels, autotuned, degree-balanced) and ``graphscale-torch`` (the reference),
* ``torch.sparse.mm`` on a CSR tensor: cuSPARSE on CUDA (sum; mean as the product with values
  ``1 / degree``), torch's CSR kernels on CPU (with ``reduce=`` for mean/max/min),
* gather + ``index_add_`` (sum), gather + ``scatter_reduce`` (mean/max/min),
* ``torch_geometric.utils.scatter`` on gathered messages,
* ``torch_scatter.scatter`` / ``torch_sparse.SparseTensor.matmul`` when installed,
* layer level: PyG ``GCNConv`` / ``GENConv`` vs graphscale's (same weights).

Structure conversions (CSR build, transposed CSR) are done before timing, for every implementation,
and reported separately. Rows report the min and median of ``--repeats`` runs (run round-robin across implementations; the min,
``min_ms``, is the statistic used for ratios since it is the least disturbed by other load), the ratio to the best *peer*
(non-graphscale implementation) of the same op, and achieved bandwidth under the usual SpMM
traffic model: every edge reads its source row of ``x`` (``E * F`` elements) plus its index, every
destination row is written once; forward + backward = twice that. ``floor_ratio`` = time / (model
bytes / measured copy bandwidth), where the copy bandwidth is measured here by copying a large
tensor into a preallocated one (bytes read + written / time; ``clone`` is recorded too, it also
pays first-touch page faults on CPU). ``compulsory_ratio`` uses the bytes a perfect cache would
move instead (each array touched once).

Gather-based implementations (the peers' ``[E, F]`` messages, and the reference on CUDA) are
skipped where those messages would exceed ``--max-gather-gib``.

Usage::

    python benchmarks/bench_spmm.py --quick                 # ~2 minutes on 2 CPU cores
    python benchmarks/bench_spmm.py --quick --device cuda   # arxiv + products sized, ~1.5 minutes on an H100 (budget)
    python benchmarks/bench_spmm.py                         # full grid (1e4..1e6 nodes, deg 10..100, F 32..256)
    python benchmarks/bench_spmm.py --tiny                  # seconds: checks the script (device_check --dry-run)

Writes ``<out>/<tag>.csv`` and ``.json`` through ``graphscale.bench.output`` (default: a fresh
``runs/bench/spmm-<timestamp>/``, tag ``spmm_<preset>_<device>``; ``--out benchmarks/results``
updates the committed results); rows are tagged with device and library versions.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from graphscale import _features
from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError
from graphscale.ops import CSR, softmax_aggr, spmm

NAME = "spmm"
ARXIV = ("arxiv-sized", 169_343, 1_166_243)  # ogbn-arxiv: nodes, directed edges (symmetrised here)
PRODUCTS = ("products-sized", 2_449_029, 61_859_140)  # ogbn-products: nodes, edges (symmetrised here)


# ------------------------------------------------------------------------------------ environment
def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    info["device_name"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            info["device_name"] = platform.processor()
        info["cpu_count"] = os.cpu_count()
    for mod in ("torch_geometric", "triton", "torch_scatter", "torch_sparse"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed
            info[mod] = None
    try:
        import importlib.metadata as md
        info["graphscale_version"] = md.version("graphscale")
    except Exception:
        info["graphscale_version"] = None
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int = 512 * 2**20, repeats: int = 5) -> tuple[float, float]:
    """``(copy, clone)`` bytes/second for a large float32 tensor, read + write counted.

    ``copy`` copies into a preallocated tensor (the memory system's rate, used for the floor);
    ``clone`` allocates its result each time, so on CPU it also pays first-touch page faults.
    """
    x = torch.empty(nbytes // 4, device=device).uniform_()
    y = torch.empty_like(x).zero_()
    best = {"copy": float("inf"), "clone": float("inf")}
    for _ in range(repeats):
        for kind in best:
            sync(device)
            t0 = time.perf_counter()
            z = y.copy_(x) if kind == "copy" else x.clone()
            sync(device)
            best[kind] = min(best[kind], time.perf_counter() - t0)
            del z
    return 2 * nbytes / best["copy"], 2 * nbytes / best["clone"]


# ------------------------------------------------------------------------------------ graphs
def random_graph(n: int, num_edges: int, seed: int, symmetric: bool = False, skewed: bool = False) -> torch.Tensor:
    """Uniform random ``edge_index``, or with power-law destinations (``skewed``: ``floor(n * u**2)``
    with shuffled ids, so the top node receives ~``num_edges / sqrt(n)`` edges)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, num_edges), generator=g)
    if skewed:
        u = torch.rand(num_edges, generator=g, dtype=torch.float64)
        ei[1] = torch.randperm(n, generator=g)[(u * u * n).long().clamp_(max=n - 1)]
    if symmetric:
        ei = torch.cat([ei, ei.flip(0)], 1)
    return ei


def timed(impls: dict, x: torch.Tensor, grad: torch.Tensor, repeats: int, device) -> dict:
    """name -> list of seconds; implementations run round-robin so load changes hit all alike."""
    times: dict = {name: [] for name in impls}
    for i in range(repeats + 1):  # the first round warms caches / compiles and is dropped
        for name, (fn, _) in impls.items():
            if name not in times:
                continue
            x.grad = None
            try:
                sync(device)
                t0 = time.perf_counter()
                out = fn(x)
                out.backward(grad)
                sync(device)
            except (RuntimeError, MemoryError) as exc:  # e.g. an op not implemented on this device
                print(f"  {name:24s} failed: {str(exc).splitlines()[0][:100]}", file=sys.stderr)
                times.pop(name)
                continue
            if i:
                times[name].append(time.perf_counter() - t0)
            del out
    return times


# ------------------------------------------------------------------------------------ implementations
def op_impls(ei: torch.Tensor, n: int, device: torch.device, reduce: str, max_gather: int, num_f: int) -> dict:
    """name -> (callable x -> out, is_graphscale)."""
    adj = CSR.from_edge_index(ei, n)
    adj.t()  # build caches outside the timed region, as the peers' structures are
    _ = adj.row
    row, col = adj.row, adj.col
    fits = adj.num_edges * num_f <= max_gather  # gathered [E, F] messages: skip when too large
    if device.type == "cuda":
        if _features.WITH_TRITON:
            impls = {"graphscale-triton": (lambda x: spmm(adj, x, reduce, backend="triton", ties="first"), True)}
        else:
            impls = {}
        if fits:  # the reference gathers [E, F] messages on CUDA
            impls["graphscale-torch"] = (lambda x: spmm(adj, x, reduce, backend="torch"), True)
    else:
        impls = {"graphscale": (lambda x: spmm(adj, x, reduce), True)}
    a_csr = adj.sparse_tensor(None, torch.float32)
    if reduce == "sum":
        impls["torch.sparse.mm"] = (lambda x: torch.sparse.mm(a_csr, x), False)
    elif device.type == "cpu":  # the reduce= variants are CPU-only in torch
        red = {"mean": "mean", "max": "amax", "min": "amin"}[reduce]
        impls["torch.sparse.mm"] = (lambda x: torch.sparse.mm(a_csr, x, red), False)
    elif reduce == "mean":  # cuSPARSE: the product with values 1 / degree
        a_mean = adj.sparse_tensor((1.0 / adj.degree(torch.float32).clamp(min=1)).index_select(0, row),
                                   torch.float32)
        impls["torch.sparse.mm"] = (lambda x: torch.sparse.mm(a_mean, x), False)
    if fits:
        idx = row[:, None]

        def gather_scatter(x):
            msg = x[col]
            if reduce == "sum":
                return torch.zeros(n, x.size(1), dtype=x.dtype, device=device).index_add_(0, row, msg)
            red = {"mean": "mean", "max": "amax", "min": "amin"}[reduce]
            return torch.zeros(n, x.size(1), dtype=x.dtype, device=device).scatter_reduce_(
                0, idx.expand_as(msg), msg, red, include_self=False)

        impls["gather+" + ("index_add_" if reduce == "sum" else "scatter_reduce")] = (gather_scatter, False)
        from torch_geometric.utils import scatter as pyg_scatter
        impls["pyg.utils.scatter"] = (lambda x: pyg_scatter(x[col], row, 0, dim_size=n, reduce=reduce), False)
        if _features.WITH_TORCH_SCATTER:
            import torch_scatter
            impls["torch_scatter"] = (lambda x: torch_scatter.scatter(x[col], row, 0, dim_size=n, reduce=reduce), False)
    if _features.WITH_TORCH_SPARSE:
        from torch_sparse import SparseTensor
        st = SparseTensor(row=row, col=col, sparse_sizes=(n, n))
        impls["torch_sparse.matmul"] = (lambda x: st.matmul(x, reduce=reduce), False)
    return impls


def softmax_impls(ei, n, device, num_f, max_gather) -> dict:
    adj = CSR.from_edge_index(ei, n)
    adj.t()
    _ = adj.row
    t = torch.ones(1, device=device, requires_grad=True)
    fits = adj.num_edges * num_f <= max_gather
    if device.type == "cuda":
        impls = {"graphscale-triton": (lambda x: softmax_aggr(adj, x, t, backend="triton"), True)} \
            if _features.WITH_TRITON else {}
        if fits:
            impls["graphscale-torch"] = (lambda x: softmax_aggr(adj, x, t, backend="torch"), True)
    else:
        impls = {"graphscale": (lambda x: softmax_aggr(adj, x, t), True)}
    if fits:
        from torch_geometric.nn.aggr import SoftmaxAggregation
        agg = SoftmaxAggregation(learn=True).to(device)
        src, dst = ei[0], ei[1]
        impls["pyg.SoftmaxAggregation"] = (lambda x: agg(x[src].relu() + 1e-7, dst, dim_size=n), False)
    return impls


def layer_impls(ei, n, device, num_f, max_gather) -> dict:
    import torch_geometric.nn as pygnn

    from graphscale.nn import GCNConv, GENConv
    impls = {}
    torch.manual_seed(0)
    pg = pygnn.GCNConv(num_f, num_f).to(device)
    gg = GCNConv(num_f, num_f).to(device)
    gg.load_state_dict(pg.state_dict())
    impls["GCNConv"] = {"graphscale": (lambda x: gg(x, ei), True), "pyg": (lambda x: pg(x, ei), False)}
    if ei.size(1) * num_f <= max_gather:
        pe = pygnn.GENConv(num_f, num_f, learn_t=True, edge_dim=num_f, norm="layer").to(device)
        ge = GENConv(num_f, num_f, learn_t=True, edge_dim=num_f, norm="layer").to(device)
        ge.load_state_dict(pe.state_dict())
        ea = torch.randn(ei.size(1), num_f, device=device) * 0.1
        impls["GENConv"] = {"graphscale": (lambda x: ge(x, ei, ea), True), "pyg": (lambda x: pe(x, ei, ea), False)}
    return impls


# ------------------------------------------------------------------------------------ driver
def traffic_bytes(n: int, e: int, f: int, elt: int = 4) -> tuple[int, int]:
    """(SpMM traffic model, compulsory) bytes of forward + backward for one unweighted sum."""
    model = 2 * (e * f * elt + e * 8 + (n + 1) * 8 + n * f * elt)
    compulsory = 2 * (e * 8 + (n + 1) * 8 + 2 * n * f * elt)
    return model, compulsory


def bench_case(name, n, ei, f, reduces, levels, device, repeats, bw, max_gather, info, rows, verbose=True):
    e = ei.size(1)
    ei = ei.to(device)
    sync(device)
    t0 = time.perf_counter()
    adj = CSR.from_edge_index(ei, n)
    adj.t()
    sync(device)
    build = time.perf_counter() - t0
    max_deg = int((adj.rowptr[1:] - adj.rowptr[:-1]).max())
    del adj
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, f, generator=g).to(device).requires_grad_()
    grad = torch.randn(n, f, generator=g).to(device)
    model_b, comp_b = traffic_bytes(n, e, f)
    groups = []
    for reduce in reduces:
        impls = softmax_impls(ei, n, device, f, max_gather) if reduce == "softmax" else \
            op_impls(ei, n, device, reduce, max_gather, f)
        groups.append(("op", reduce, impls))
    if "layer" in levels:
        for lname, impls in layer_impls(ei, n, device, f, max_gather).items():
            groups.append(("layer", lname, impls))
    for level, what, impls in groups:
        res = {name: (statistics.median(ts), min(ts), impls[name][1])
               for name, ts in timed(impls, x, grad, repeats, device).items()}
        peers = [v[1] for v in res.values() if not v[2]]
        best_peer = min(peers) if peers else None
        for iname, (med, mn, ours) in res.items():
            row = dict(graph=name, nodes=n, edges=e, avg_degree=round(e / n, 2), max_in_degree=max_deg, features=f, level=level, op=what,
                       impl=iname, graphscale=ours, median_ms=round(med * 1e3, 3), min_ms=round(mn * 1e3, 3),
                       repeats=repeats, ratio_to_best_peer=round(mn / best_peer, 3) if best_peer else None,
                       csr_build_ms=round(build * 1e3, 1), copy_gbps=round(bw / 1e9, 2))
            if level == "op" and what != "softmax":
                row.update(model_gbps=round(model_b / mn / 1e9, 2),
                           floor_ratio=round(mn / (model_b / bw), 2),
                           compulsory_ratio=round(mn / (comp_b / bw), 2))
            row.update(info)
            rows.append(row)
            if verbose:
                extra = f" floor x{row['floor_ratio']}" if "floor_ratio" in row else ""
                print(f"  {level:5s} {what:8s} {iname:24s} {mn * 1e3:9.1f} ms (min)  "
                      f"vs best peer {row['ratio_to_best_peer']}{extra}", flush=True)


ALL = ["sum", "mean", "max", "min", "softmax"]
GPU_OPS = ["sum", "mean", "max", "softmax"]
# cases: (kind, nodes, average degree, feature widths, levels, ops); arxiv / products: fixed sizes,
# symmetrised; "-skewed": power-law destinations
PRESETS = {
    "quick": dict(cases=[("random", 10_000, 10, [32], ["op", "layer"], ALL),
                         ("random", 100_000, 10, [64], ["op"], ALL),
                         ("arxiv", None, None, [128], ["op"], ["sum"])], repeats=2),
    # CUDA quick (device_check step b, budget 100 s on an H100): both OGB sizes, forward + backward
    "quick-cuda": dict(cases=[("arxiv", None, None, [128], ["op", "layer"], GPU_OPS),
                              ("arxiv-skewed", None, None, [128], ["op"], ["sum", "softmax"]),
                              ("products-skewed", None, None, [32], ["op"], GPU_OPS)], repeats=3),
    "full": dict(cases=[("random", n, d, [32, 128, 256], ["op", "layer"], ALL) for n in (10_000, 100_000, 1_000_000)
                        for d in (10, 100) if n * d <= 20_000_000]
                 + [("arxiv", None, None, [32, 128, 256], ["op", "layer"], ALL)], repeats=3),
    # seconds: exercises every code path of this script (device_check --dry-run)
    "tiny": dict(cases=[("random", 2_000, 5, [16], ["op"], ["sum", "mean", "max", "softmax"]),
                        ("random-skewed", 2_000, 5, [16], ["op"], ["sum"])], repeats=1),
}


def make_graph(kind: str, n, deg) -> tuple[str, int, torch.Tensor]:
    skewed = kind.endswith("-skewed")
    base = kind.removesuffix("-skewed")
    if base in ("arxiv", "products"):
        name, n, e = ARXIV if base == "arxiv" else PRODUCTS
        ei = random_graph(n, e, seed=0, symmetric=True, skewed=skewed)
    else:
        name, ei = f"random-n{n}-d{deg}", random_graph(n, n * deg, seed=0, skewed=skewed)
    return name + ("-skewed" if skewed else ""), n, ei


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="small preset: about 2 minutes on 2 CPU cores; on CUDA the arxiv- and products-sized graphs")
    size.add_argument("--tiny", action="store_true", help="a few seconds: checks that the script runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per implementation (default: the preset's)")
    p.add_argument("--max-gather-gib", type=float, default=2.0,
                   help="skip gather-based implementations whose [E, F] float32 messages exceed this (GiB)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 gives far steadier timings on an oversubscribed machine)")
    p.add_argument("--tag", default=None, help="result file name stem (default spmm_<preset>_<device>)")
    p.add_argument("--note", default="", help="free text stored in every row (e.g. 'shared machine')")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ConfigError(f"--device {args.device!r}: expected cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {args.device!r}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible")
    if args.repeats is not None and args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    preset = "tiny" if args.tiny else ("quick" if args.quick else "full")
    cfg = PRESETS["quick-cuda" if (preset == "quick" and device.type == "cuda") else preset]
    repeats = args.repeats or cfg["repeats"]
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = args.tag or f"spmm_{preset}_{device.type}"
    writer = ResultWriter.from_args(args, NAME, str(device))
    writer.check(stem)
    info = device_info(device)
    info["note"] = args.note
    info["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    bw, bw_clone = copy_bandwidth(device, nbytes=(32 if preset == "tiny" else 512) * 2**20)
    info["clone_gbps"] = round(bw_clone / 1e9, 2)
    print(f"{preset} preset on {info.get('device_name', device)} ({info['threads']} threads); "
          f"copy bandwidth {bw / 1e9:.2f} GB/s (clone {bw_clone / 1e9:.2f} GB/s)", flush=True)
    max_gather = int(args.max_gather_gib * 2**30 / 4)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for kind, n, deg, widths, levels, reduces in cfg["cases"]:
        name, n, ei = make_graph(kind, n, deg)
        for f in widths:
            print(f"{name}: {n} nodes, {ei.size(1)} edges, F={f}", flush=True)
            bench_case(name, n, ei, f, reduces, levels, device, repeats, bw, max_gather, info, rows)
        del ei
        if device.type == "cuda":
            torch.cuda.empty_cache()
    paths = writer.write_table(stem, rows, {"preset": preset, "copy_gbps": bw / 1e9,
                                            "wall_s": time.perf_counter() - t_start})
    print(f"wrote {' and '.join(paths)} ({len(rows)} rows, {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    from graphscale.errors import GraphscaleError
    try:
        sys.exit(main())
    except GraphscaleError as exc:
        print(f"bench_spmm: error: {exc}", file=sys.stderr)
        sys.exit(2)
