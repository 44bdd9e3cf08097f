"""Streaming writer for synthetic sets of the published OGB sizes (``--like ogbn-proteins`` etc.).

The small-set generator in :mod:`graphscale.data.synthetic` draws every edge at once and
de-duplicates them globally: fine for 20k nodes, several GB of copies for ogbn-proteins' 39.6M
edges. This one writes blocks of about ``EDGE_BLOCK`` edges and never holds more than one block:

* Nodes are numbered internally so that each planted community is a contiguous id range; the
  written ids are a seeded permutation of the internal ones.
* The graph is a stochastic block model with exact edge counts: each undirected pair ``u < v`` is
  *owned* by ``u``. A share ``p_intra`` of the edges falls on pairs inside a community, spread evenly
  over those pairs; the rest falls evenly on all pairs. Node ``u``'s expected share is therefore a
  closed form of the number of pairs it owns, so the node range is cut into blocks of about
  ``EDGE_BLOCK`` expected edges, each block gets an exact integer quota (largest remainder), and
  duplicates can only occur inside a block (the owner decides the block): each block draws pairs,
  de-duplicates them with ``np.unique`` and tops up until it holds its quota.
* Node files are written in chunks of output ids.

Labels follow the small generator: proteins-like labels come from a functional type per community
(shared across species), 8-dim edge features from a type profile inside communities; arxiv- and
products-like labels are the community's class (10 % replaced at random) and node features are the
class centroid plus Gaussian noise of std ``feature_noise``. Splits have the published proportions:
proteins by species (contiguous id ranges, 6 / 1 / 1 species), arxiv by year (random nodes),
products by "sales rank", taken here as the node degree (the best-connected 8 % train, the next 2 %
valid, the rest test, as OGB's split puts the most popular products in training).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graphscale.data.csv_gz import GzCsvWriter
from graphscale.errors import DataError

EDGE_BLOCK = 500_000  # edges per block: with 8 edge features ~6 float64 copies of 32 MB at the peak
NODE_BLOCK = 50_000  # nodes per chunk of the node files (x 128 features: ~50 MB of float64)
PROTEINS_SPECIES = 8
FLOAT_DECIMALS = 3


@dataclass(frozen=True)
class StreamShape:
    """Concrete sizes of one streamed set (see :meth:`graphscale.data.synthetic.SyntheticSpec.stream_shape`)."""

    kind: str
    num_nodes: int
    num_edges: int
    num_communities: int
    node_features: int
    edge_features: int
    num_tasks: int
    num_classes: int
    split_sizes: tuple
    p_intra: float
    feature_noise: float
    seed: int


def _quota(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (largest remainder)."""
    if total == 0 or weights.sum() <= 0:
        return np.zeros(weights.size, dtype=np.int64)
    exact = weights / weights.sum() * total
    q = np.floor(exact).astype(np.int64)
    short = int(total - q.sum())
    if short:
        q[np.argsort(-(exact - q), kind="stable")[:short]] += 1
    return q


def _pairs_owned(shape: StreamShape, bounds: np.ndarray):
    n = shape.num_nodes
    ids = np.arange(n, dtype=np.int64)
    comm = np.repeat(np.arange(bounds.size - 1), np.diff(bounds))
    comm_end = bounds[1:][comm]
    return comm, comm_end, comm_end - ids - 1, n - ids - 1


def check_density(shape: StreamShape) -> None:
    """Refuse shapes whose edges cannot be drawn as distinct pairs (density over 1/2 in a block model)."""
    n, k = shape.num_nodes, shape.num_communities
    sizes = np.diff(np.linspace(0, n, k + 1).round().astype(np.int64))
    intra_pairs = int((sizes * (sizes - 1) // 2).sum())
    all_pairs = n * (n - 1) // 2
    e_intra = int(round(shape.p_intra * shape.num_edges))
    if shape.num_edges > all_pairs // 2 or (e_intra and e_intra > intra_pairs // 2):
        raise DataError(
            f"synthetic {shape.kind}: {shape.num_edges:,} edges ({e_intra:,} inside communities) do not fit "
            f"{n:,} nodes in {k} communities ({all_pairs:,} pairs, {intra_pairs:,} inside communities; at most "
            f"half of them can be drawn): use fewer edges, more nodes or fewer, larger communities")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=" rows", unit_scale=True, mininterval=1.0, leave=True)


def write_stream(shape: StreamShape, tmp: str, progress: bool = False) -> None:
    """Write ``shape`` in OGB's raw layout into ``tmp`` (``raw/``, ``split/<name>/``)."""
    check_density(shape)
    n, k = shape.num_nodes, shape.num_communities
    streams = np.random.SeedSequence([shape.seed, 20_261_207]).spawn(6)
    r_perm, r_edge, r_comm, r_feat, r_label, r_split = (np.random.default_rng(s) for s in streams)
    raw = os.path.join(tmp, "raw")
    split_name = {"proteins": "species", "arxiv": "time", "products": "sales_ranking"}[shape.kind]
    split_dir = os.path.join(tmp, "split", split_name)
    os.makedirs(raw)
    os.makedirs(split_dir)

    bounds = np.linspace(0, n, k + 1).round().astype(np.int64)
    comm, comm_end, ip, ap = _pairs_owned(shape, bounds)
    out_id = r_perm.permutation(n)  # internal id -> written id

    # Per-community attributes.
    if shape.kind == "proteins":
        num_types = max(2, min(10, k))
        ctype = r_comm.integers(0, num_types, k)
        ctype[:min(num_types, k)] = np.arange(min(num_types, k))
        profile = r_comm.random((num_types, shape.edge_features))
    else:
        ccls = r_comm.permutation(np.arange(k) % shape.num_classes)
        centroids = r_comm.standard_normal((shape.num_classes, shape.node_features))

    degree = _write_edges(shape, raw, r_edge, comm, comm_end, ip, ap, out_id,
                          ctype if shape.kind == "proteins" else None,
                          profile if shape.kind == "proteins" else None, progress)

    # Node files, in written-id order.
    internal = np.empty(n, dtype=np.int64)
    internal[out_id] = np.arange(n)
    bar = _progress(n, "nodes", progress)
    train_n, valid_n, _ = shape.split_sizes
    if shape.kind == "proteins":
        # Species are contiguous internal ranges with the published split sizes: 6 train species.
        cuts = np.concatenate([np.linspace(0, train_n, PROTEINS_SPECIES - 1).round().astype(np.int64),
                               [train_n + valid_n, n]])
        species_internal = np.searchsorted(cuts, np.arange(n), side="right") - 1
        logits = 2.5 * r_label.standard_normal((num_types, shape.num_tasks))
        prob = 1.0 / (1.0 + np.exp(-logits))
        with GzCsvWriter(os.path.join(raw, "node-label.csv.gz")) as lab:
            for lo in range(0, n, NODE_BLOCK):
                c = comm[internal[lo:lo + NODE_BLOCK]]
                lab.write((r_label.random((c.size, shape.num_tasks)) < prob[ctype[c]]).astype(np.int64))
                if bar is not None:
                    bar.update(c.size)
        species = species_internal[internal]
        _write_small(os.path.join(raw, "node_species.csv.gz"), 3702 + species)
        parts = {"train": species < PROTEINS_SPECIES - 2, "valid": species == PROTEINS_SPECIES - 2,
                 "test": species == PROTEINS_SPECIES - 1}
    else:
        with GzCsvWriter(os.path.join(raw, "node-feat.csv.gz"), decimals=FLOAT_DECIMALS) as feat, \
                GzCsvWriter(os.path.join(raw, "node-label.csv.gz")) as lab:
            for lo in range(0, n, NODE_BLOCK):
                cls = ccls[comm[internal[lo:lo + NODE_BLOCK]]]
                x = centroids[cls] + shape.feature_noise * r_feat.standard_normal((cls.size, shape.node_features))
                feat.write(x)
                noisy = r_label.random(cls.size) < 0.1
                lab.write(np.where(noisy, r_label.integers(0, shape.num_classes, cls.size), cls))
                if bar is not None:
                    bar.update(cls.size)
        if shape.kind == "arxiv":
            order = r_split.permutation(n)
            year = np.empty(n, dtype=np.int64)
            year[order[:train_n]] = r_split.integers(1995, 2018, train_n)
            year[order[train_n:train_n + valid_n]] = 2018
            year[order[train_n + valid_n:]] = r_split.integers(2019, 2021, n - train_n - valid_n)
            _write_small(os.path.join(raw, "node_year.csv.gz"), year)
            parts = {"train": year <= 2017, "valid": year == 2018, "test": year >= 2019}
        else:  # products: "sales rank" = degree, ties broken at random
            degree_out = np.empty(n, dtype=np.int64)
            degree_out[out_id] = degree  # degrees were counted on internal ids
            rank = np.lexsort((r_split.random(n), -degree_out))  # best-connected first
            which = np.empty(n, dtype=np.int64)
            which[rank] = np.repeat([0, 1, 2], shape.split_sizes)
            parts = {"train": which == 0, "valid": which == 1, "test": which == 2}
    if bar is not None:
        bar.close()
    _write_small(os.path.join(raw, "num-node-list.csv.gz"), np.array([n]))
    _write_small(os.path.join(raw, "num-edge-list.csv.gz"), np.array([shape.num_edges]))
    for name, mask in parts.items():
        _write_small(os.path.join(split_dir, f"{name}.csv.gz"), np.flatnonzero(mask))


def _write_small(path: str, array: np.ndarray) -> None:
    with GzCsvWriter(path) as w:
        w.write(np.asarray(array).reshape(-1, 1) if np.asarray(array).ndim == 1 else array)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # sort + neighbour compare: np.unique took its hash path here, ~10x slower on 1M int64 keys
    a = np.sort(a)
    keep = np.empty(a.size, dtype=bool)
    keep[:1] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _block_pairs(rng, lo, hi, want, p_block_intra, ip, ap, n):
    """``want`` distinct keys ``u * n + v`` (``lo <= u < hi``, ``u < v``) drawn from the block model."""
    cip = np.cumsum(ip[lo:hi])
    cap = np.cumsum(ap[lo:hi])
    keys = np.empty(0, dtype=np.int64)
    while keys.size < want:
        m = int((want - keys.size) * 1.05) + 64
        intra = rng.random(m) < p_block_intra
        if cip[-1] == 0:
            intra[:] = False
        mi = int(intra.sum())
        u = np.empty(m, dtype=np.int64)
        span = np.empty(m, dtype=np.int64)
        if mi:
            u[intra] = lo + np.searchsorted(cip, rng.random(mi) * cip[-1], side="right")
        if m - mi:
            u[~intra] = lo + np.searchsorted(cap, rng.random(m - mi) * cap[-1], side="right")
        span[intra] = ip[u[intra]]
        span[~intra] = ap[u[~intra]]
        ok = span > 0
        u, span = u[ok], span[ok]
        v = u + 1 + (rng.random(u.size) * span).astype(np.int64)
        keys = _sorted_unique(np.concatenate([keys, u * n + v]))
    if keys.size > want:
        keys = np.sort(rng.choice(keys, want, replace=False))
    return keys


def _write_edges(shape, raw, rng, comm, comm_end, ip, ap, out_id, ctype, profile, progress) -> np.ndarray:
    """Write ``edge.csv.gz`` (and proteins' ``edge-feat.csv.gz``) block by block; return degrees."""
    n, e = shape.num_nodes, shape.num_edges
    ip_total, ap_total = float(ip.sum()), float(ap.sum())
    e_intra = int(round(shape.p_intra * e)) if ip_total > 0 else 0
    w_intra = e_intra * ip / ip_total if ip_total > 0 else np.zeros(n)
    w = w_intra + (e - e_intra) * ap / ap_total
    cw = np.cumsum(w)
    blocks = max(1, -(-e // EDGE_BLOCK))
    cuts = np.unique(np.concatenate([[0], np.searchsorted(cw, cw[-1] * np.arange(1, blocks) / blocks), [n]]))
    block_w = np.add.reduceat(w, cuts[:-1])
    block_wi = np.add.reduceat(w_intra, cuts[:-1])
    quota = _quota(block_w, e)
    degree = np.zeros(n, dtype=np.int64)
    bar = _progress(e, "edges", progress)
    feat = (GzCsvWriter(os.path.join(raw, "edge-feat.csv.gz"), decimals=FLOAT_DECIMALS)
            if shape.edge_features else None)
    try:
        with GzCsvWriter(os.path.join(raw, "edge.csv.gz")) as out:
            for b in range(cuts.size - 1):
                lo, hi, want = int(cuts[b]), int(cuts[b + 1]), int(quota[b])
                if want == 0:
                    continue
                keys = _block_pairs(rng, lo, hi, want, block_wi[b] / block_w[b], ip, ap, n)
                u, v = keys // n, keys % n
                degree += np.bincount(u, minlength=n) + np.bincount(v, minlength=n)
                pair = np.stack([out_id[u], out_id[v]], axis=1)
                if shape.kind == "arxiv":  # directed citations: a random direction each
                    flip = rng.random(want) < 0.5
                    pair[flip] = pair[flip][:, ::-1]
                out.write(pair)
                if feat is not None:
                    same = v < comm_end[u]
                    base = np.where(same[:, None], profile[ctype[comm[u]]], 0.15)
                    x = base + 0.35 * rng.standard_normal((want, shape.edge_features))
                    feat.write(np.clip(x, 0.0, 1.0) * (rng.random(x.shape) < 0.7))
                if bar is not None:
                    bar.update(want)
    finally:
        if feat is not None:
            feat.close()
        if bar is not None:
            bar.close()
    return degree
