"""Synthetic node-property data sets written in OGB's raw on-disk layout.

The files are the ones ``ogb``'s ``read_csv_graph_raw`` reads (``raw/edge.csv.gz``,
``raw/edge-feat.csv.gz`` or ``raw/node-feat.csv.gz``, ``raw/node-label.csv.gz``,
``raw/num-node-list.csv.gz``, ``raw/num-edge-list.csv.gz``, ``raw/node_<extra>.csv.gz``,
``split/<type>/{train,valid,test}.csv.gz``, ``RELEASE_v1.txt``), so a synthetic set is read back
through ``ogb``'s own ``PygNodePropPredDataset`` (with ``meta_dict=``): the loading code that runs
offline is the code that runs on the real data.

Two generators. The small one (this module) draws the whole graph at once; the streaming one
(:mod:`graphscale.data.synthetic_stream`) writes blocks and is used for the published sizes
(``SyntheticSpec(like='ogbn-proteins' | 'ogbn-arxiv' | 'ogbn-products')``, the shapes in
:mod:`graphscale.data.published`), for the ``products`` kind and whenever ``num_edges`` is given.
``graphscale data synth --like ogbn-proteins`` writes 132,534 nodes and 39,561,252 undirected edges
(79,122,504 directed once ogb adds the reverse), as the real set has; a small-generator set with
``num_nodes=132534`` has the default degree 20, i.e. 1.3M undirected edges (2.65M directed), and is
not "published size".

Small-generator shapes:

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
from dataclasses import asdict, dataclass, replace

import numpy as np

from graphscale.errors import DataError

PROTEINS_TASKS = 112  # ogbn-proteins' task count; the ogbn-proteins Evaluator checks it
PROTEINS_EDGE_DIM = 8
PROTEINS_SPECIES = 8
KINDS = ("proteins", "arxiv", "products")
SPLIT_NAME = {"proteins": "species", "arxiv": "time", "products": "sales_ranking"}
# Defaults of the small generator (and of products without --like): unchanged since the first release,
# so existing folders and the figures measured on them stay valid.
SMALL_DEFAULTS = dict(num_nodes=20_000, avg_degree=20.0, num_communities=50)
KIND_DEFAULTS = {"proteins": dict(num_features=128, num_classes=40), "arxiv": dict(num_features=128, num_classes=40),
                 "products": dict(num_features=100, num_classes=47)}


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic data set; equal specs produce byte-identical files.

    Two generators:

    * the small one (``kind`` proteins / arxiv, no ``like``, no ``num_edges``): ``num_nodes`` nodes,
      ``avg_degree * num_nodes / 2`` edges drawn at once (defaults: 20,000 nodes, degree 20, 50
      communities, 128 features, 40 classes);
    * the streaming one (:mod:`graphscale.data.synthetic_stream`) for ``like='ogbn-...'`` (the
      published shape of that set, :data:`graphscale.data.published.PUBLISHED`, node and edge counts
      multiplied by ``scale`` unless ``num_nodes`` / ``num_edges`` are given), for ``kind='products'``
      and whenever ``num_edges`` is given. It writes in blocks, so the published sizes fit in memory.

    ``None`` means the default of the generator and kind.
    """

    kind: str = "proteins"
    num_nodes: int | None = None
    avg_degree: float | None = None
    num_communities: int | None = None
    num_features: int | None = None  # arxiv / products
    num_classes: int | None = None  # arxiv / products
    seed: int = 0
    p_intra: float = 0.8  # share of edges inside a node's community
    feature_noise: float = 2.0  # arxiv / products: std of the Gaussian noise added to the class centroid
    like: str | None = None  # 'ogbn-proteins' | 'ogbn-arxiv' | 'ogbn-products': the published shape
    scale: float = 1.0  # with like: multiplies the published node and edge counts
    num_edges: int | None = None  # rows of raw/edge.csv.gz (streaming generator)

    @property
    def streaming(self) -> bool:
        return self.like is not None or self.kind == "products" or self.num_edges is not None

    def resolved(self) -> "SyntheticSpec":
        """The small generator's spec with every ``None`` replaced by its default."""
        fill = {**SMALL_DEFAULTS, **KIND_DEFAULTS[self.kind]} if self.kind in KIND_DEFAULTS else SMALL_DEFAULTS
        return replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def stream_shape(self):
        """Concrete sizes for the streaming generator (validates first)."""
        from graphscale.data.published import PUBLISHED
        from graphscale.data.synthetic_stream import StreamShape

        self.validate()
        if self.like is not None:
            pub = PUBLISHED[self.like]
            n = self.num_nodes if self.num_nodes is not None else max(10, int(round(pub.num_nodes * self.scale)))
            e = self.num_edges if self.num_edges is not None else int(round(pub.num_edges * self.scale))
            k = self.num_communities if self.num_communities is not None else \
                max(1, int(round(pub.communities * n / pub.num_nodes)))
            ratios = np.array(pub.split_sizes, dtype=np.float64) / pub.num_nodes
            feats, edge_feats, tasks, classes = pub.node_features, pub.edge_features, pub.num_tasks, pub.num_classes
        else:
            from graphscale.data.published import LIKE_OF_KIND
            r = self.resolved()
            pub = PUBLISHED[LIKE_OF_KIND[self.kind]]
            n = r.num_nodes
            e = self.num_edges if self.num_edges is not None else int(round(n * r.avg_degree / 2))
            k = r.num_communities
            ratios = np.array(pub.split_sizes, dtype=np.float64) / pub.num_nodes
            proteins = self.kind == "proteins"
            feats = 0 if proteins else r.num_features
            edge_feats = PROTEINS_EDGE_DIM if proteins else 0
            tasks = PROTEINS_TASKS if proteins else 1
            classes = 2 if proteins else r.num_classes
        if n < 10 or e < 1:
            raise DataError(f"synthetic {self.kind}: need >= 10 nodes and >= 1 edge, got {n} nodes and {e} edges "
                            f"(scale={self.scale:g})")
        if not 1 <= k <= n:
            raise DataError(f"synthetic num_communities must be in [1, num_nodes={n}], got {k}")
        train = int(round(n * ratios[0]))
        valid = int(round(n * ratios[1]))
        if min(train, valid, n - train - valid) < 1:
            raise DataError(f"synthetic {self.kind}: {n} nodes are too few for a train / valid / test split in "
                            f"the published proportions {np.round(ratios, 3).tolist()}")
        return StreamShape(self.kind, n, e, k, feats, edge_feats, tasks, classes, (train, valid, n - train - valid),
                           self.p_intra, self.feature_noise, self.seed)

    def validate(self) -> None:
        from graphscale.data.published import PUBLISHED
        if self.kind not in KINDS:
            raise DataError(f"synthetic kind {self.kind!r} is not one of {KINDS}")
        if self.like is not None:
            if self.like not in PUBLISHED:
                raise DataError(f"synthetic like={self.like!r} is not one of {tuple(PUBLISHED)}")
            pub = PUBLISHED[self.like]
            if pub.kind != self.kind:
                raise DataError(f"synthetic like={self.like!r} needs kind={pub.kind!r}, got kind={self.kind!r}")
            if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 1 and np.isfinite(self.scale)):
                raise DataError(f"synthetic scale must be in (0, 1], got {self.scale!r}")
            if self.avg_degree is not None:
                raise DataError("synthetic avg_degree cannot be combined with like=...: the published edge count "
                                "sets the degree (give num_edges to change it)")
            if self.scale != 1 and (self.num_nodes is not None or self.num_edges is not None):
                raise DataError("synthetic scale cannot be combined with an explicit num_nodes / num_edges")
            for key, published in (("num_features", pub.node_features), ("num_classes", pub.num_classes)):
                value = getattr(self, key)
                if value is not None and value != published:
                    raise DataError(f"synthetic {key}={value} differs from the published {published} of {self.like}: "
                                    f"leave it out with like=..., or drop like= for a custom shape")
        elif self.scale != 1:
            raise DataError("synthetic scale only applies with like=ogbn-... (the published shape it scales)")
        if self.num_edges is not None and self.avg_degree is not None:
            raise DataError("synthetic num_edges and avg_degree both set: give one of them")
        if self.num_edges is not None and self.num_edges < 1:
            raise DataError(f"synthetic num_edges must be >= 1, got {self.num_edges}")
        r = self.resolved()
        if self.like is None:
            if r.num_nodes < 10:
                raise DataError(f"synthetic num_nodes must be >= 10, got {r.num_nodes}")
            if self.num_edges is None and not r.avg_degree > 0:
                raise DataError(f"synthetic avg_degree must be > 0, got {r.avg_degree}")
            if not 1 <= r.num_communities <= r.num_nodes:
                raise DataError(f"synthetic num_communities must be in [1, num_nodes={r.num_nodes}], "
                                f"got {r.num_communities}")
            if r.kind == "proteins" and not self.streaming and r.num_communities < PROTEINS_SPECIES:
                # species are drawn per community: fewer than 8 leave the valid / test species empty
                raise DataError(f"synthetic proteins needs num_communities >= {PROTEINS_SPECIES} (one per species, "
                                f"the split is by species), got {r.num_communities}")
        if self.kind != "proteins" and ((r.num_classes or 2) < 2 or (r.num_features or 1) < 1):
            raise DataError(f"synthetic {self.kind} needs num_classes >= 2 and num_features >= 1, got "
                            f"{r.num_classes} and {r.num_features}")
        if not 0.0 <= self.p_intra <= 1.0:
            raise DataError(f"synthetic p_intra must be in [0, 1], got {self.p_intra}")
        if not (isinstance(self.feature_noise, (int, float)) and self.feature_noise >= 0.0
                and np.isfinite(self.feature_noise)):
            raise DataError(f"synthetic feature_noise must be a finite number >= 0, got {self.feature_noise!r}")

    @property
    def dir_name(self) -> str:
        if self.streaming:
            s = self.stream_shape()
            base = (f"synthetic_{self.kind}_{('like-' + self.like) if self.like else 'custom'}_n{s.num_nodes}"
                    f"_e{s.num_edges}_c{s.num_communities}_s{self.seed}")
            if self.kind != "proteins":
                base += f"_f{s.node_features}_k{s.num_classes}"
                if self.feature_noise != 2.0:
                    base += f"_x{self.feature_noise:g}"
            if self.p_intra != 0.8:
                base += f"_p{self.p_intra:g}"
            return base
        r = self.resolved()
        base = f"synthetic_{r.kind}_n{r.num_nodes}_d{r.avg_degree:g}_c{r.num_communities}_s{r.seed}"
        if r.kind == "arxiv":
            base += f"_f{r.num_features}_k{r.num_classes}"
            if r.feature_noise != 2.0:  # defaults keep the folder names of earlier releases
                base += f"_x{r.feature_noise:g}"
        if r.p_intra != 0.8:
            base += f"_p{r.p_intra:g}"
        return base


def meta_dict(spec: SyntheticSpec, path: str) -> dict:
    """The ``meta_dict`` that lets ``PygNodePropPredDataset`` read a set not in ogb's master.csv."""
    proteins = spec.kind == "proteins"
    classes = 2 if proteins else (spec.stream_shape().num_classes if spec.streaming else spec.resolved().num_classes)
    return {
        "dir_path": path,
        "version": 1,
        "num tasks": PROTEINS_TASKS if proteins else 1,
        "task type": "binary classification" if proteins else "multiclass classification",
        "eval metric": "rocauc" if proteins else "acc",
        "num classes": classes,
        "is hetero": "False",
        "binary": "False",
        "add_inverse_edge": "False" if spec.kind == "arxiv" else "True",
        "has_node_attr": "False" if proteins else "True",
        "has_edge_attr": "True" if proteins else "False",
        "split": SPLIT_NAME[spec.kind],
        "additional node files": {"proteins": "node_species", "arxiv": "node_year", "products": "None"}[spec.kind],
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


def write_synthetic(spec: SyntheticSpec, root: str, overwrite: bool = False, progress: bool = False) -> str:
    """Write ``spec`` under ``root/<spec.dir_name>`` in OGB's raw layout and return that path.

    The folder is built in a temporary sibling and renamed into place, so an interrupted write
    never leaves a half-written data set that a later run would mistake for a complete one.
    An existing complete folder is reused (same spec, same seed -> same files) unless ``overwrite``.
    ``progress`` shows a progress bar per file (streaming generator).

    Raises:
        DataError: a bad spec, or ``root`` cannot be written (named, with the reason).
    """
    spec.validate()
    shape = None
    if spec.streaming:
        from graphscale.data.synthetic_stream import check_density
        shape = spec.stream_shape()
        check_density(shape)
    path = os.path.join(root, spec.dir_name)
    if os.path.isfile(os.path.join(path, "RELEASE_v1.txt")) and not overwrite:
        return path
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{spec.dir_name}.", dir=root)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the data set private once renamed
    except OSError as exc:
        raise DataError(f"cannot write the synthetic data set under {root!r} ({exc.strerror or exc}): "
                        f"choose a writable folder (data.root=... or --root ...)") from None
    try:
        if shape is not None:
            from graphscale.data.synthetic_stream import write_stream
            write_stream(shape, tmp, progress=progress)
            info = {**asdict(spec), "shape": asdict(shape)}
        else:
            r = spec.resolved()
            raw = os.path.join(tmp, "raw")
            split = os.path.join(tmp, "split", SPLIT_NAME[r.kind])
            os.makedirs(raw)
            os.makedirs(split)
            rng = np.random.default_rng(r.seed)
            (_generate_proteins if r.kind == "proteins" else _generate_arxiv)(r, rng, raw, split)
            info = asdict(r)
        with open(os.path.join(tmp, "synthetic.json"), "w") as fh:
            json.dump(info, fh, indent=2)
        with open(os.path.join(tmp, "RELEASE_v1.txt"), "w") as fh:
            fh.write("graphscale synthetic data set, OGB raw layout\n")
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"could not write the synthetic data set {path!r} ({exc.strerror or exc}); nothing was "
                        f"left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
