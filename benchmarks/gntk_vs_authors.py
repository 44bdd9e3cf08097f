"""graphscale's GNTK against the authors' own code (github.com/KangchengHou/gntk): same values, and speed.

The test suite checks the batched kernel against an unbatched Kronecker-form oracle written for the
tests (``tests/gntk/kron_oracle.py``); an oracle written by the same team can share its misreadings
of the paper, and timing it says nothing about the authors' code. This script imports the authors'
``gntk.py`` and ``util.py`` from a checkout you supply (nothing of it is copied into graphscale) and has
two sections:

* ``check``: the authors' ``util.load_data`` against ``graphscale.data.graph_classification`` on the
  whole data set (node counts, edge sets, graph labels and node tags, each up to a renaming of the
  values, which the kernel cannot see); and their ``GNTK.diag`` / ``GNTK.gntk`` against
  :func:`graphscale.gntk.kernel.gram_matrix` on a seeded random subset of the graphs. Table
  ``gntk_vs_authors``.
* ``speed``: the **whole** Gram matrix (every pair ``i <= j``, no sampling, no extrapolation) computed
  the way their ``gram.py`` does it (adjacency ``A + A^T + I`` as a scipy sparse matrix, ``GNTK.diag`` per
  graph, then ``GNTK.gntk`` per pair, over a ``multiprocessing.Pool`` of ``--threads`` processes; one
  process runs the pairs in a plain loop), and by ``gram_matrix`` with ``workers=--threads`` (one
  intra-op thread each); wall and CPU seconds of both (CPU = user + system of the process and its
  children), the speed-up, and the largest difference between the two matrices. Data loading is
  timed for neither. BLAS threads are limited to one per process for both (``threadpoolctl``) so the
  thread count is the same. ``--authors-budget S`` stops the authors' run after ``S`` seconds: the row
  then says how many pairs it finished (``authors_complete = False``), a lower bound on their time,
  never extrapolated. Table ``gntk_speed_vs_authors``.

Their ``num_layers`` counts the input layer: ``num_layers = L + 1`` here. It needs ``networkx`` (their
loader uses it) and their code::

    git clone https://github.com/KangchengHou/gntk /path/to/gntk
    python benchmarks/gntk_vs_authors.py --authors /path/to/gntk --sections check --datasets NCI1 \\
        --configs L3-R3-uniform L9-R1-uniform-jk L13-R2-degree-jk --graphs 30
    python benchmarks/gntk_vs_authors.py --authors /path/to/gntk --sections speed \\
        --datasets MUTAG IMDBBINARY --configs L1-R2-degree-jk --threads 1

Results go to a fresh ``runs/bench/gntk_vs_authors-<timestamp>/`` (``--out benchmarks/results`` to update
the committed ones, with ``--overwrite`` to replace them).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time

import numpy as np

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.data.graph_classification import load_graph_dataset
from graphscale.errors import ConfigError, GraphscaleError
from graphscale.gntk.cli import default_data_root
from graphscale.gntk.kernel import GNTKConfig, gram_matrix

NAME = "gntk_vs_authors"


def _authors_modules(path: str):
    for f in ("gntk.py", "util.py"):
        if not os.path.isfile(os.path.join(path, f)):
            raise ConfigError(f"--authors {path!r} must be a checkout of github.com/KangchengHou/gntk (no {f} there)")
    try:
        import networkx  # noqa: F401
    except ImportError:
        raise ConfigError("the authors' loader needs networkx: pip install networkx") from None
    mods = []
    for name in ("gntk", "util"):  # loaded from their files by path: nothing is added to sys.path
        spec = importlib.util.spec_from_file_location(f"authors_{name}", os.path.join(path, f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return tuple(mods)


def _load_authors(util, name: str, data_root: str):
    """The authors' ``load_data`` reads ``dataset/<NAME>/<NAME>.txt`` relative to the working folder."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.abspath(data_root), os.path.join(tmp, "dataset"))
        os.chdir(tmp)
        try:
            graphs, _ = util.load_data(name, name.upper().startswith(("IMDB", "COLLAB")))
        finally:
            os.chdir(cwd)
    return graphs


def _same_partition(a, b) -> bool:
    """``a`` and ``b`` agree up to a renaming of their values (a bijection)."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def compare_data(theirs, ours) -> dict:
    if len(theirs) != len(ours.graphs):
        return {"data_equal": False, "data_note": f"{len(theirs)} vs {len(ours.graphs)} graphs"}
    for i, (t, g) in enumerate(zip(theirs, ours.graphs)):
        if len(t.g) != g.num_nodes:
            return {"data_equal": False, "data_note": f"graph {i}: {len(t.g)} vs {g.num_nodes} nodes"}
        te = {tuple(sorted(e)) for e in t.g.edges}
        oe = {tuple(sorted(e)) for e in np.asarray(g.edges).T.tolist()}
        if te != oe:
            return {"data_equal": False, "data_note": f"graph {i}: edge sets differ ({len(te)} vs {len(oe)})"}
    tags_t = np.concatenate([np.asarray(t.node_tags) for t in theirs])
    tags_o = np.concatenate([np.asarray(g.tags) for g in ours.graphs])
    labels_ok = _same_partition([t.label for t in theirs], ours.labels)
    tags_ok = _same_partition(tags_t, tags_o)
    return {"data_equal": labels_ok and tags_ok,
            "data_note": f"graphs, node counts and edge sets equal; labels {'equal' if labels_ok else 'DIFFER'}; "
                         f"node tags {'equal' if tags_ok else 'DIFFER'} up to renaming"}


def _authors_model(gntk_mod, cfg: GNTKConfig):
    return gntk_mod.GNTK(num_layers=cfg.layers + 1, num_mlp_layers=cfg.mlp_layers, jk=int(cfg.jk), scale=cfg.scale)


def _authors_adjacency(g):
    """As their ``gram.py``: float32 COO of the edge list, ``A + A^T + I``."""
    import scipy.sparse as sp

    n = len(g.g)
    e = np.array(list(g.g.edges), dtype=np.int64).reshape(-1, 2)
    a = sp.coo_matrix((np.ones(len(e), dtype=np.float32), (e[:, 0], e[:, 1])), shape=(n, n))
    return a + a.T + sp.identity(n)


def authors_gram(gntk_mod, theirs, idx, cfg: GNTKConfig) -> np.ndarray:
    """Their kernel on the graphs ``idx`` (every pair), one pair at a time in this process."""
    model = _authors_model(gntk_mod, cfg)
    adj = [_authors_adjacency(theirs[i]) for i in idx]
    diag = [model.diag(theirs[i], a) for i, a in zip(idx, adj)]
    out = np.zeros((len(idx), len(idx)))
    for p in range(len(idx)):
        for q in range(p, len(idx)):
            out[p, q] = out[q, p] = model.gntk(theirs[idx[p]], theirs[idx[q]], diag[p], diag[q], adj[p], adj[q])
    return out


# ------------------------------------------------------------------------------------ speed
def _cpu_seconds() -> float:
    """User + system seconds of this process (all threads) and of its reaped children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


_STATE: dict = {}  # what the forked pool workers read (as their gram.py's module globals)


def _calc_range(bounds):
    """Pairs ``calc_list[a:b]`` with the authors' ``GNTK.gntk`` (runs in a pool worker or in-process)."""
    a, b = bounds
    m, graphs, diag, adj, pairs = (_STATE[k] for k in ("model", "graphs", "diag", "adj", "pairs"))
    return a, [m.gntk(graphs[i], graphs[j], diag[i], diag[j], adj[i], adj[j]) for i, j in pairs[a:b]]


def authors_full_gram(gntk_mod, theirs, cfg: GNTKConfig, procs: int, budget_s: float | None,
                      report_s: float = 60.0) -> dict:
    """The whole Gram matrix with the authors' code, as their ``gram.py`` computes it, timed.

    Returns ``gram`` (NaN where not computed), ``pairs_done``, ``complete``, ``wall_s``, ``cpu_s``,
    ``prep_s`` (adjacencies + ``GNTK.diag``, inside ``wall_s``).
    """
    from multiprocessing import get_context

    t0, c0 = time.perf_counter(), _cpu_seconds()
    model = _authors_model(gntk_mod, cfg)
    adj = [_authors_adjacency(g) for g in theirs]
    diag = [model.diag(g, a) for g, a in zip(theirs, adj)]
    prep = time.perf_counter() - t0
    n = len(theirs)
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    _STATE.update(model=model, graphs=theirs, diag=diag, adj=adj, pairs=pairs)
    step = 2000  # pairs per task: small enough to report progress and stop near the budget
    tasks = [(a, min(a + step, len(pairs))) for a in range(0, len(pairs), step)]
    vals = np.full(len(pairs), np.nan)
    done, last = 0, time.perf_counter()
    pool = get_context("fork").Pool(procs) if procs > 1 else None
    results = pool.imap_unordered(_calc_range, tasks) if pool else map(_calc_range, tasks)
    try:
        for a, v in results:
            vals[a:a + len(v)] = v
            done += len(v)
            now = time.perf_counter()
            if now - last > report_s:
                last = now
                print(f"  authors: {done:,} / {len(pairs):,} pairs in {now - t0:.0f} s wall, "
                      f"{_cpu_seconds() - c0:.0f} s CPU so far (children counted when they end)", flush=True)
            if budget_s is not None and now - t0 > budget_s and done < len(pairs):
                break
    finally:
        if pool:
            pool.terminate()
            pool.join()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    _STATE.clear()
    gram = np.full((n, n), np.nan)
    idx = np.array(pairs)
    gram[idx[:, 0], idx[:, 1]] = vals
    gram[idx[:, 1], idx[:, 0]] = vals
    return {"gram": gram, "pairs_done": done, "complete": done == len(pairs), "wall_s": wall, "cpu_s": cpu,
            "prep_s": prep}


def speed(args, gntk_mod, util, cfgs) -> list[dict]:
    from threadpoolctl import threadpool_limits

    rows = []
    for name in args.datasets:
        ours = load_graph_dataset(name, args.data)
        theirs = _load_authors(util, ours.name, args.data)
        data = compare_data(theirs, ours)
        if not data["data_equal"]:
            raise GraphscaleError(f"{name}: the authors' loader and ours read different data ({data['data_note']})")
        g = len(ours.graphs)
        for cfg, threads in ((c, t) for c in cfgs for t in args.threads):
            with threadpool_limits(1):  # one BLAS / OpenMP thread per process or worker, for both
                load0 = os.getloadavg()[0]
                t0, c0 = time.perf_counter(), _cpu_seconds()
                got = gram_matrix(ours.graphs, cfg, progress=False, workers=threads)
                our_wall, our_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
                print(f"{name} {cfg.name}: graphscale {our_wall:.2f} s wall, {our_cpu:.2f} s CPU "
                      f"({threads} worker thread(s))", flush=True)
                load1 = os.getloadavg()[0]
                ref = authors_full_gram(gntk_mod, theirs, cfg, threads, args.authors_budget)
                load2 = os.getloadavg()[0]
            ok = ~np.isnan(ref["gram"])
            diff = np.abs(got[ok] - ref["gram"][ok])
            row = {"dataset": ours.name, "config": cfg.name, "authors_num_layers": cfg.layers + 1, "graphs": g,
                   "pairs": g * (g + 1) // 2, "threads": threads,
                   "authors_pairs_done": ref["pairs_done"], "authors_complete": ref["complete"],
                   "authors_wall_s": round(ref["wall_s"], 2), "authors_cpu_s": round(ref["cpu_s"], 2),
                   "authors_prep_s": round(ref["prep_s"], 2),
                   "graphscale_wall_s": round(our_wall, 2), "graphscale_cpu_s": round(our_cpu, 2),
                   "speedup_wall": round(ref["wall_s"] / our_wall, 1), "speedup_cpu": round(ref["cpu_s"] / our_cpu, 1),
                   "speedup_is_lower_bound": not ref["complete"],
                   "max_rel_diff": float(diff.max() / np.abs(ref["gram"][ok]).max()),
                   "max_entry_rel_diff": float(np.max(diff / np.abs(ref["gram"][ok]))),
                   "load_avg_1m_before_graphscale": round(load0, 2), "load_avg_1m_before_authors": round(load1, 2),
                   "load_avg_1m_after_authors": round(load2, 2)}
            rows.append(row)
            print(f"{name} {cfg.name}: authors {row['authors_wall_s']} s wall / {row['authors_cpu_s']} s CPU "
                  f"({ref['pairs_done']:,} of {row['pairs']:,} pairs{'' if ref['complete'] else ', STOPPED at the budget'})"
                  f" vs graphscale {row['graphscale_wall_s']} s / {row['graphscale_cpu_s']} s -> "
                  f"{'>= ' if not ref['complete'] else ''}{row['speedup_wall']}x wall, {row['speedup_cpu']}x CPU; "
                  f"max relative difference {row['max_rel_diff']:.1e}", flush=True)
    return rows


# ------------------------------------------------------------------------------------ check
def check(args, gntk_mod, util, cfgs) -> list[dict]:
    rows = []
    for name in args.datasets:
        ours = load_graph_dataset(name, args.data)
        theirs = _load_authors(util, ours.name, args.data)
        data = compare_data(theirs, ours)
        print(f"{name}: data {'equal' if data['data_equal'] else 'DIFFERENT'} ({data['data_note']})", flush=True)
        k = min(args.graphs, len(ours.graphs))
        idx = np.sort(np.random.default_rng(args.seed).choice(len(ours.graphs), k, replace=False))
        for cfg in cfgs:
            t0 = time.perf_counter()
            ref = authors_gram(gntk_mod, theirs, idx, cfg)
            ref_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = gram_matrix([ours.graphs[i] for i in idx], cfg, progress=False)
            our_s = time.perf_counter() - t0
            row = {"dataset": name, "config": cfg.name, "graphs": k, "pairs": k * (k + 1) // 2, "seed": args.seed,
                   "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
                   "max_entry_rel_diff": float(np.max(np.abs(got - ref) / np.abs(ref))),
                   "authors_s": round(ref_s, 2), "graphscale_s": round(our_s, 2), **data}
            rows.append(row)
            print(f"{name} {row['config']} ({k} graphs): max relative difference {row['max_rel_diff']:.2e} "
                  f"(per entry {row['max_entry_rel_diff']:.2e})", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors", required=True, help="folder with the authors' gntk.py and util.py "
                                                    "(a checkout of github.com/KangchengHou/gntk)")
    p.add_argument("--sections", nargs="+", default=["check"], choices=["check", "speed"],
                   help="check: same data and kernel values on a random subset; speed: the whole Gram matrix timed")
    p.add_argument("--data", default=default_data_root(), help="GIN-format data root (<NAME>/<NAME>.txt)")
    p.add_argument("--datasets", nargs="+", default=["NCI1"], help="data set names, e.g. MUTAG IMDBBINARY NCI1")
    p.add_argument("--configs", nargs="+", default=["L3-R3-uniform", "L9-R1-uniform-jk", "L13-R2-degree-jk"],
                   help="L<layers>-R<mlp layers>-<uniform|degree>[-jk]")
    p.add_argument("--graphs", type=int, default=30, help="check: random graphs per data set (all pairs compared)")
    p.add_argument("--seed", type=int, default=0, help="check: seed of the random subset")
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="speed: processes of the authors' pool and worker threads of graphscale (the same count; "
                        "one row per value)")
    p.add_argument("--authors-budget", type=float, default=None, metavar="SECONDS",
                   help="speed: stop the authors' run after this many seconds and record the pairs it finished")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        cfgs = [GNTKConfig.parse(c) for c in args.configs]  # bad strings fail here, before any loading
        if min(args.threads) < 1:
            raise ConfigError(f"--threads must be >= 1, got {min(args.threads)}")
        if args.graphs < 1:
            raise ConfigError(f"--graphs must be >= 1, got {args.graphs}")
        gntk_mod, util = _authors_modules(args.authors)
        writer = ResultWriter.from_args(args, NAME, "cpu")
        stems = {"check": NAME, "speed": "gntk_speed_vs_authors"}
        writer.check(*(stems[s] for s in args.sections))
        for section in args.sections:
            rows = (check if section == "check" else speed)(args, gntk_mod, util, cfgs)
            paths = writer.write_table(stems[section], rows, {"section": section})
            print("wrote " + ", ".join(paths))
    except GraphscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
