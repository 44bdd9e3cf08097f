"""Synthetic node-property data sets written in OGB's raw on-disk layout.

The files are the ones ``ogb``'s ``read_csv_graph_raw`` reads (``raw/edge.csv.gz``,
``raw/edge-feat.csv.gz`` or ``raw/node-feat.csv.gz``, ``raw/node-label.csv.gz``,
``raw/num-node-list.csv.gz``, ``raw/num-edge-list.csv.gz``, ``raw/node_<extra>.csv.gz``,
``split/<type>/{train,valid,test}.csv.gz``, ``RELEASE_v1.txt``), so a synthetic set is read back
through ``ogb``'s own ``PygNodePropPredDataset`` (with ``meta_dict=``): the loading code that runs
offline is the code that runs on the real data.

Two shapes:

* ``proteins``: like ogbn-proteins. Undirected (each edge written once, ogb adds the inverse),
  8-dim edge features in [0, 1], no node features, 112 binary tasks, split by species. Nodes live in
  planted communities; each community has a functional *type* shared across species, the type sets
  both the label probabilities of its nodes and the mean of its internal edge features, so labels
  are learnable from the (noisy) graph, and test species hold communities never seen in training.
* ``arxiv``: like ogbn-arxiv. Directed edges, ``num_features``-dim node features (class centroid +
  Gaussian noise of std ``feature_noise``, so neighbour aggregation helps), one label among
  ``num_classes`` (10 % replaced by a random class), split by year. The default noise (2.0) leaves
  the classes almost separable from the features alone (an MLP is near the 90.25 % label-noise
  ceiling). With ``feature_noise=4.4`` and ``p_intra=0.3`` (100k nodes, 40 classes, 128 features)
  the nearest-class-mean test accuracy of ``X`` is 63.0 % and of ``A_hat^2 X`` 74.7 %
  (``benchmarks/synthetic_difficulty.py``), near ogbn-arxiv's MLP 55.5 % and GCN 71.7 % (OGB
  leaderboard): the graph has to do part of the work, as on the real data (see docs/layerwise.md).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from graphscale.errors import DataError

PROTEINS_TASKS = 112  # ogbn-proteins' task count; the ogbn-proteins Evaluator checks it
PROTEINS_EDGE_DIM = 8
PROTEINS_SPECIES = 8
KINDS = ("proteins", "arxiv")


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic data set; equal specs produce byte-identical files."""

    kind: str = "proteins"
    num_nodes: int = 20_000
    avg_degree: float = 20.0
    num_communities: int = 50
    num_features: int = 128  # arxiv only
    num_classes: int = 40  # arxiv only
    seed: int = 0
    p_intra: float = 0.8  # share of edges inside a node's community
    feature_noise: float = 2.0  # arxiv only: std of the Gaussian noise added to the class centroid

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"synthetic kind {self.kind!r} is not one of {KINDS}")
        if self.num_nodes < 10:
            raise DataError(f"synthetic num_nodes must be >= 10, got {self.num_nodes}")
        if not self.avg_degree > 0:
            raise DataError(f"synthetic avg_degree must be > 0, got {self.avg_degree}")
        if not 1 <= self.num_communities <= self.num_nodes:
            raise DataError(f"synthetic num_communities must be in [1, num_nodes={self.num_nodes}], "
                            f"got {self.num_communities}")
        if self.kind == "arxiv" and (self.num_classes < 2 or self.num_features < 1):
            raise DataError(f"synthetic arxiv needs num_classes >= 2 and num_features >= 1, got "
                            f"{self.num_classes} and {self.num_features}")
        if not 0.0 <= self.p_intra <= 1.0:
            raise DataError(f"synthetic p_intra must be in [0, 1], got {self.p_intra}")
        if not (isinstance(self.feature_noise, (int, float)) and self.feature_noise >= 0.0
                and np.isfinite(self.feature_noise)):
            raise DataError(f"synthetic feature_noise must be a finite number >= 0, got {self.feature_noise!r}")

    @property
    def dir_name(self) -> str:
        base = f"synthetic_{self.kind}_n{self.num_nodes}_d{self.avg_degree:g}_c{self.num_communities}_s{self.seed}"
        if self.kind == "arxiv":
            base += f"_f{self.num_features}_k{self.num_classes}"
            if self.feature_noise != 2.0:  # defaults keep the folder names of earlier releases
                base += f"_x{self.feature_noise:g}"
        if self.p_intra != 0.8:
            base += f"_p{self.p_intra:g}"
        return base


def meta_dict(spec: SyntheticSpec, path: str) -> dict:
    """The ``meta_dict`` that lets ``PygNodePropPredDataset`` read a set not in ogb's master.csv."""
    proteins = spec.kind == "proteins"
    return {
        "dir_path": path,
        "version": 1,
        "num tasks": PROTEINS_TASKS if proteins else 1,
        "task type": "binary classification" if proteins else "multiclass classification",
        "eval metric": "rocauc" if proteins else "acc",
        "num classes": 2 if proteins else spec.num_classes,
        "is hetero": "False",
        "binary": "False",
        "add_inverse_edge": "True" if proteins else "False",
        "has_node_attr": "False" if proteins else "True",
        "has_edge_attr": "True" if proteins else "False",
        "split": "species" if proteins else "time",
        "additional node files": "node_species" if proteins else "node_year",
        "additional edge files": "None",
        "download_name": spec.dir_name,
        "url": "",
    }


def _communities(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    comm = np.arange(n) % k
    rng.shuffle(comm)
    return comm


def _edges(rng: np.random.Generator, comm: np.ndarray, k: int, num_edges: int, p_intra: float) -> np.ndarray:
    """Unique undirected edges (u < v), ``p_intra`` of them inside a community. Returns [2, M]."""
    n = comm.size
    order = np.argsort(comm, kind="stable")
    sizes = np.bincount(comm, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Draw a few extra to make up for self-loops and duplicates removed below.
    m = int(num_edges * 1.15) + 16
    src = rng.integers(0, n, m)
    intra = rng.random(m) < p_intra
    c = comm[src]
    dst_intra = order[starts[c] + (rng.random(m) * sizes[c]).astype(np.int64)]
    dst = np.where(intra, dst_intra, rng.integers(0, n, m))
    u, v = np.minimum(src, dst), np.maximum(src, dst)
    keep = u != v
    key = np.unique(u[keep] * n + v[keep])
    if key.size > num_edges:
        key = rng.choice(key, num_edges, replace=False)
        key.sort()
    return np.stack([key // n, key % n])


def _write_csv(path: str, array: np.ndarray, fmt: str) -> None:
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    # mtime=0 keeps the gzip header (and so the file) byte-identical across runs.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=3) as gz:
        np.savetxt(gz, array, fmt=fmt, delimiter=",")


def _generate_proteins(spec: SyntheticSpec, rng: np.random.Generator, raw: str, split: str) -> None:
    n, k = spec.num_nodes, spec.num_communities
    comm = _communities(rng, n, k)
    num_types = max(2, min(10, k))
    ctype = rng.integers(0, num_types, k)
    ctype[:num_types] = np.arange(num_types)[: min(num_types, k)]  # every type present
    species_of_comm = rng.permutation(np.arange(k) % PROTEINS_SPECIES)
    edges = _edges(rng, comm, k, int(round(n * spec.avg_degree / 2)), spec.p_intra)

    # Edge features: inside a community, a noisy type-specific profile (proteins' features are
    # association scores in [0, 1], many of them zero); across communities, weak random scores.
    profile = rng.random((num_types, PROTEINS_EDGE_DIM))
    same = comm[edges[0]] == comm[edges[1]]
    t = ctype[comm[edges[0]]]
    feat = np.where(same[:, None], profile[t], 0.15) + 0.35 * rng.standard_normal((edges.shape[1], PROTEINS_EDGE_DIM))
    feat = np.clip(feat, 0.0, 1.0) * (rng.random(feat.shape) < 0.7)

    # Labels: type-specific probability profile per task, spread from ~0.05 to ~0.95.
    logits = 2.5 * rng.standard_normal((num_types, PROTEINS_TASKS))
    prob = 1.0 / (1.0 + np.exp(-logits))
    y = (rng.random((n, PROTEINS_TASKS)) < prob[ctype[comm]]).astype(np.int64)
    species = species_of_comm[comm]

    # Species split (ogbn-proteins: train/valid/test by species): 6 / 1 / 1 species.
    valid_sp, test_sp = PROTEINS_SPECIES - 2, PROTEINS_SPECIES - 1
    idx = np.arange(n)
    parts = {"train": idx[species < valid_sp], "valid": idx[species == valid_sp], "test": idx[species == test_sp]}

    _write_csv(os.path.join(raw, "edge.csv.gz"), edges.T, "%d")
    _write_csv(os.path.join(raw, "edge-feat.csv.gz"), feat, "%.3f")
    _write_csv(os.path.join(raw, "node-label.csv.gz"), y, "%d")
    # Real ogbn-proteins stores raw species ids (e.g. 3702); offsets keep that flavour.
    _write_csv(os.path.join(raw, "node_species.csv.gz"), 3702 + species, "%d")
    _write_csv(os.path.join(raw, "num-node-list.csv.gz"), np.array([n]), "%d")
    _write_csv(os.path.join(raw, "num-edge-list.csv.gz"), np.array([edges.shape[1]]), "%d")
    for name, ids in parts.items():
        _write_csv(os.path.join(split, f"{name}.csv.gz"), ids, "%d")


def _generate_arxiv(spec: SyntheticSpec, rng: np.random.Generator, raw: str, split: str) -> None:
    n, k, c = spec.num_nodes, spec.num_communities, spec.num_classes
    comm = _communities(rng, n, k)
    cls_of_comm = rng.permutation(np.arange(k) % c)
    edges = _edges(rng, comm, k, int(round(n * spec.avg_degree / 2)), spec.p_intra)
    flip = rng.random(edges.shape[1]) < 0.5  # directed citations: random direction
    edges = np.where(flip, edges[::-1], edges)
    y = cls_of_comm[comm]
    noisy = rng.random(n) < 0.1
    y = np.where(noisy, rng.integers(0, c, n), y)
    centroids = rng.standard_normal((c, spec.num_features))
    x = centroids[cls_of_comm[comm]] + spec.feature_noise * rng.standard_normal((n, spec.num_features))
    # ogbn-arxiv's time split holds about 54 / 18 / 28 % of the papers (<= 2017 / 2018 / >= 2019).
    bucket = rng.choice(3, n, p=[0.54, 0.18, 0.28])
    year = np.choose(bucket, [rng.integers(1995, 2018, n), np.full(n, 2018), rng.integers(2019, 2021, n)])
    idx = np.arange(n)
    parts = {"train": idx[year <= 2017], "valid": idx[year == 2018], "test": idx[year >= 2019]}

    _write_csv(os.path.join(raw, "edge.csv.gz"), edges.T, "%d")
    _write_csv(os.path.join(raw, "node-feat.csv.gz"), x, "%.4f")
    _write_csv(os.path.join(raw, "node-label.csv.gz"), y, "%d")
    _write_csv(os.path.join(raw, "node_year.csv.gz"), year, "%d")
    _write_csv(os.path.join(raw, "num-node-list.csv.gz"), np.array([n]), "%d")
    _write_csv(os.path.join(raw, "num-edge-list.csv.gz"), np.array([edges.shape[1]]), "%d")
    for name, ids in parts.items():
        _write_csv(os.path.join(split, f"{name}.csv.gz"), ids, "%d")


def write_synthetic(spec: SyntheticSpec, root: str, overwrite: bool = False) -> str:
    """Write ``spec`` under ``root/<spec.dir_name>`` in OGB's raw layout and return that path.

    The folder is built in a temporary sibling and renamed into place, so an interrupted write
    never leaves a half-written data set that a later run would mistake for a complete one.
    An existing complete folder is reused (same spec, same seed -> same files) unless ``overwrite``.
    """
    spec.validate()
    path = os.path.join(root, spec.dir_name)
    if os.path.isfile(os.path.join(path, "RELEASE_v1.txt")) and not overwrite:
        return path
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{spec.dir_name}.", dir=root)
    try:
        raw = os.path.join(tmp, "raw")
        split = os.path.join(tmp, "split", "species" if spec.kind == "proteins" else "time")
        os.makedirs(raw)
        os.makedirs(split)
        rng = np.random.default_rng(spec.seed)
        (_generate_proteins if spec.kind == "proteins" else _generate_arxiv)(spec, rng, raw, split)
        with open(os.path.join(tmp, "synthetic.json"), "w") as fh:
            json.dump(asdict(spec), fh, indent=2)
        with open(os.path.join(tmp, "RELEASE_v1.txt"), "w") as fh:
            fh.write("graphscale synthetic data set, OGB raw layout\n")
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
