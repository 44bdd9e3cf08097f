"""Graph-classification data sets: the GIN / GNTK text format and the TU format (through PyG).

``load_graph_dataset(name, root)`` returns a :class:`GraphDataset`: a list of :class:`Graph` (node
count, undirected edges, integer node tags), graph labels mapped to ``0..C-1``, the number of
distinct node tags (the width of the one-hot node features), and the 10 standard folds when the data
set ships them.

Formats (``root`` is the folder that holds one sub-folder per data set):

* **GIN / GNTK text** (Xu et al., *How Powerful are Graph Neural Networks?*, ICLR 2019; Du et al.,
  *Graph Neural Tangent Kernel*, NeurIPS 2019): ``root/<NAME>/<NAME>.txt``; first line the number of
  graphs; per graph a line ``n label``, then per node a line ``tag degree neighbour_1 ... neighbour_degree``
  (any further numbers on the line are continuous attributes, ignored here as in the GNTK
  reference). Folds: ``root/<NAME>/10fold_idx/{train,test}_idx-{1..10}.txt``, indices into the order of
  the ``.txt`` file.
* **TU** (Morris et al., *TUDataset*, 2020): ``root/<NAME>/raw/<NAME>_A.txt`` etc., read offline by
  PyG's ``TUDataset``, the raw folder read in place and PyG's ``processed/`` written under graphscale's
  cache folder (:mod:`graphscale.data.cache`), never beside ``raw/``.
  No folds ship with it: :func:`stratified_folds` draws 10 seeded stratified folds as GIN does.

Node tags: the node labels of the file; data sets without node labels (IMDB-BINARY, IMDB-MULTI, COLLAB)
use the node degree as the tag (the GIN and GNTK convention, ``degree_as_tag``). Label and tag ids are
mapped to ``0..K-1`` in order of first appearance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from graphscale.errors import DataError

#: GIN-format names and the TU names of the same data sets (GIN's PTC is not TU's PTC_MR, see
#: ``../shared/data/README.md``; it is listed for convenience, not as the same graphs).
GIN_NAMES = ("MUTAG", "PTC", "NCI1", "PROTEINS", "IMDBBINARY", "IMDBMULTI", "COLLAB")
TU_NAMES = ("MUTAG", "PTC_MR", "NCI1", "NCI109", "PROTEINS", "ENZYMES", "IMDB-BINARY", "IMDB-MULTI")
#: short names used in papers -> the folder name in each format.
ALIASES = {
    "IMDB-B": {"gin": "IMDBBINARY", "tu": "IMDB-BINARY"},
    "IMDB-M": {"gin": "IMDBMULTI", "tu": "IMDB-MULTI"},
    "IMDB-BINARY": {"gin": "IMDBBINARY", "tu": "IMDB-BINARY"},
    "IMDB-MULTI": {"gin": "IMDBMULTI", "tu": "IMDB-MULTI"},
    "IMDBBINARY": {"gin": "IMDBBINARY", "tu": "IMDB-BINARY"},
    "IMDBMULTI": {"gin": "IMDBMULTI", "tu": "IMDB-MULTI"},
}
#: social-network sets whose nodes carry no labels: the degree is the tag (GIN / GNTK convention).
DEGREE_AS_TAG = {"IMDBBINARY", "IMDBMULTI", "COLLAB", "IMDB-BINARY", "IMDB-MULTI", "REDDIT-BINARY",
                 "REDDIT-MULTI-5K", "REDDIT-MULTI-12K"}


@dataclass
class Graph:
    """One undirected graph.

    Attributes:
        num_nodes: ``n >= 1``.
        edges: ``[2, E]`` int64, each undirected edge once with ``edges[0] < edges[1]`` (no self-loops).
        tags: ``[n]`` int64 node tags in ``0..num_tags-1``.
    """

    num_nodes: int
    edges: np.ndarray
    tags: np.ndarray

    def degree(self) -> np.ndarray:
        """``[n]`` number of distinct neighbours of every node."""
        return np.bincount(self.edges.reshape(-1), minlength=self.num_nodes).astype(np.int64)


@dataclass
class GraphDataset:
    """A graph-classification data set.

    Attributes:
        name: the folder name it was read from.
        graphs: ``G`` graphs.
        labels: ``[G]`` int64 in ``0..num_classes-1``.
        num_tags: number of distinct node tags (one-hot feature width).
        folds: list of ``(train_idx, test_idx)`` int64 arrays (the shipped 10 folds) or ``None``.
        fmt: ``'gin'`` or ``'tu'``.
        degree_as_tag: whether the node tags are degrees.
    """

    name: str
    graphs: list
    labels: np.ndarray
    num_tags: int
    folds: list | None = None
    fmt: str = "gin"
    degree_as_tag: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def num_nodes(self) -> np.ndarray:
        """``[G]`` node counts."""
        return np.array([g.num_nodes for g in self.graphs], dtype=np.int64)

    def features(self, i: int) -> np.ndarray:
        """``[n, num_tags]`` float64 one-hot node features of graph ``i``."""
        g = self.graphs[i]
        x = np.zeros((g.num_nodes, self.num_tags))
        x[np.arange(g.num_nodes), g.tags] = 1.0
        return x


# ------------------------------------------------------------------------------------ discovery
def detect_format(root: str, name: str) -> str:
    """``'gin'`` if ``root/<name>/<name>.txt`` exists, ``'tu'`` if ``root/<name>/raw`` exists."""
    if os.path.isfile(os.path.join(root, name, f"{name}.txt")):
        return "gin"
    if os.path.isdir(os.path.join(root, name, "raw")):
        return "tu"
    return ""


def available(root: str) -> list[str]:
    """Data set folders under ``root`` that hold a readable GIN ``.txt`` or a TU ``raw/`` folder."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root) if detect_format(root, d))


def resolve_name(root: str, name: str) -> tuple[str, str]:
    """Map ``name`` (case-insensitive, aliases such as ``IMDB-B``) to ``(folder, format)`` under ``root``.

    Raises:
        DataError: ``root`` missing, or no readable data set of that name (lists the available ones).
    """
    if not os.path.isdir(root):
        raise DataError(f"graph data root {root!r} does not exist; expected a folder with one sub-folder "
                        f"per data set (e.g. ../shared/data/GIN_format/dataset or ../shared/data/TU)")
    candidates = [name]
    alias = ALIASES.get(name.upper())
    if alias:
        candidates += [alias["gin"], alias["tu"]]
    present = os.listdir(root)
    for cand in candidates:
        for folder in present:
            if folder.upper() == cand.upper():
                fmt = detect_format(root, folder)
                if fmt:
                    return folder, fmt
                if folder.upper() == name.upper():
                    raise DataError(f"{name}: folder {os.path.join(root, folder)!r} holds neither a GIN-format "
                                    f"'{folder}.txt' nor a TU 'raw/' folder (contents: "
                                    f"{sorted(os.listdir(os.path.join(root, folder)))})")
    raise DataError(f"unknown graph data set {name!r} under {root!r}; available: "
                    f"{', '.join(available(root)) or '(none)'}")


# ------------------------------------------------------------------------------------ GIN text
def _tokens(path: str):
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            yield lineno, line.split()


def read_gin_txt(path: str, degree_as_tag: bool = False):
    """Parse a GIN-format ``.txt``: returns ``(graphs, raw_labels, raw_tags_per_graph)``.

    Raises:
        DataError: truncated file, non-integer fields, a neighbour id out of range, an empty graph, or
            a degree field that does not match the neighbour list.
    """
    lines = _tokens(path)

    def nxt(what: str):
        try:
            lineno, toks = next(lines)
        except StopIteration:
            raise DataError(f"{path}: file ends early while reading {what}") from None
        try:
            return lineno, [int(t) for t in toks[:2]] + toks[2:]
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected integers for {what}, got {' '.join(toks)!r}") from None

    lineno, head = nxt("the number of graphs")
    if len(head) != 1 or head[0] < 1:
        raise DataError(f"{path}:{lineno}: first line must be the number of graphs (>= 1), got {head}")
    graphs, labels, tags = [], [], []
    for gi in range(head[0]):
        lineno, row = nxt(f"the header 'n label' of graph {gi}")
        if len(row) != 2:
            raise DataError(f"{path}:{lineno}: graph {gi} header must be 'n label', got {row}")
        n, label = row
        if n <= 0:
            raise DataError(f"{path}:{lineno}: graph {gi} is empty (n={n}); every graph needs at least one node")
        src, dst, gtags = [], [], []
        for j in range(n):
            lineno, row = nxt(f"node {j} of graph {gi}")
            if len(row) < 2:
                raise DataError(f"{path}:{lineno}: node {j} of graph {gi} needs 'tag degree neighbours...', got {row}")
            tag, deg = row[0], row[1]
            if len(row) < 2 + deg:
                raise DataError(f"{path}:{lineno}: node {j} of graph {gi} declares degree {deg} but lists "
                                f"{len(row) - 2} neighbours")
            try:
                nbrs = [int(t) for t in row[2:2 + deg]]
            except ValueError:
                raise DataError(f"{path}:{lineno}: non-integer neighbour id in {row[2:2 + deg]}") from None
            bad = [v for v in nbrs if v < 0 or v >= n]
            if bad:
                raise DataError(f"{path}:{lineno}: node {j} of graph {gi} has neighbour ids {bad} outside "
                                f"[0, {n - 1}]")
            gtags.append(tag)
            src += [j] * deg
            dst += nbrs
        edges = _undirected(np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64))
        graphs.append(Graph(n, edges, np.zeros(n, dtype=np.int64)))
        labels.append(label)
        tags.append(np.array(gtags, dtype=np.int64))
    return graphs, labels, tags


def _undirected(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Unique undirected edges ``[2, E]`` with ``u < v``; self-loops dropped (the kernel adds I itself)."""
    keep = src != dst
    lo, hi = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
    if lo.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    return np.unique(np.stack([lo, hi]), axis=1)


def _map_ids(values) -> dict:
    """First-appearance mapping of hashable ids to ``0..K-1``."""
    mapping: dict = {}
    for v in values:
        if v not in mapping:
            mapping[v] = len(mapping)
    return mapping


def read_folds(folder: str, num_graphs: int, k: int = 10) -> list | None:
    """Read ``folder/10fold_idx/{train,test}_idx-{1..k}.txt``; ``None`` if the folder is absent.

    Raises:
        DataError: a missing fold file, an index outside ``[0, num_graphs)``, a train/test overlap, or a
            fold whose train and test indices together do not cover every graph.
    """
    fdir = os.path.join(folder, "10fold_idx")
    if not os.path.isdir(fdir):
        return None
    folds = []
    for i in range(1, k + 1):
        pair = []
        for part in ("train", "test"):
            path = os.path.join(fdir, f"{part}_idx-{i}.txt")
            if not os.path.isfile(path):
                raise DataError(f"fold file {path!r} is missing (expected {part}_idx-1..{k}.txt in {fdir!r})")
            try:
                idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
            except ValueError as exc:
                raise DataError(f"fold file {path!r} is not a list of integers: {exc}") from None
            bad = idx[(idx < 0) | (idx >= num_graphs)]
            if bad.size:
                raise DataError(f"fold file {path!r} holds indices {bad[:5].tolist()} outside [0, {num_graphs - 1}] "
                                f"(the data set has {num_graphs} graphs)")
            pair.append(idx)
        train, test = pair
        both = np.intersect1d(train, test)
        if both.size:
            raise DataError(f"fold {i} in {fdir!r}: train and test share {both.size} graphs, e.g. "
                            f"{both[:5].tolist()}")
        missing = np.setdiff1d(np.arange(num_graphs), np.union1d(train, test))
        if missing.size:
            raise DataError(f"fold {i} in {fdir!r}: train + test cover {num_graphs - missing.size} of {num_graphs} "
                            f"graphs; missing e.g. {missing[:5].tolist()}")
        folds.append((train, test))
    return folds


def stratified_folds(labels: np.ndarray, k: int = 10, seed: int = 0) -> list:
    """``k`` stratified folds, shuffled with ``seed`` (GIN's ``separate_data`` protocol)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(labels))
    if counts.max() < k:
        raise DataError(f"stratified {k}-fold cross-validation needs a class with at least {k} graphs; the "
                        f"class sizes are {counts.tolist()}")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr.astype(np.int64), te.astype(np.int64)) for tr, te in skf.split(np.zeros(len(labels)), labels)]


# ------------------------------------------------------------------------------------ TU via PyG
def read_tu(root: str, name: str, use_node_labels: bool = True):
    """Read a TU data set with PyG's ``TUDataset``: ``(graphs, raw_labels, raw_tags_per_graph or None)``."""
    from torch_geometric.datasets import TUDataset

    from graphscale.data import cache

    raw = os.path.join(root, name, "raw")
    processed = cache.processed_dir("TU", name, raw)
    files = sorted(f for f in os.listdir(raw) if f.startswith(f"{name}_") and f.endswith(".txt")) \
        if os.path.isdir(raw) else []
    if f"{name}_A.txt" not in files:
        raise DataError(f"{name}: no TU file {name}_A.txt in {raw!r}")
    cache.prepare(raw, files, processed, name)

    try:
        ds = cache.in_place(TUDataset, raw, processed)(root, name)
    except Exception as exc:  # a malformed or missing file: name the folder
        raise DataError(f"{name}: could not read TU files under {raw!r}: {type(exc).__name__}: {exc}") from None
    cache.save_stamp(raw, files, processed)
    graphs, labels, tags = [], [], []
    has_labels = ds.num_node_labels > 0
    for gi in range(len(ds)):
        d = ds[gi]
        n = int(d.num_nodes or 0)
        if n <= 0:
            raise DataError(f"{name}: graph {gi} is empty (0 nodes); every graph needs at least one node")
        ei = d.edge_index.numpy()
        graphs.append(Graph(n, _undirected(ei[0], ei[1]), np.zeros(n, dtype=np.int64)))
        labels.append(int(d.y.view(-1)[0]))
        if has_labels and use_node_labels:
            tags.append(d.x[:, :ds.num_node_labels].argmax(1).numpy().astype(np.int64))
    return graphs, labels, (tags if tags else None)


# ------------------------------------------------------------------------------------ entry point
def load_graph_dataset(name: str, root: str, *, degree_as_tag: bool | None = None,
                       fold_seed: int = 0) -> GraphDataset:
    """Read a graph-classification data set from ``root`` (GIN text or TU format, detected).

    Args:
        name: folder name (case-insensitive) or alias (``IMDB-B``, ``IMDB-M``).
        root: folder with one sub-folder per data set.
        degree_as_tag: use node degrees as node tags; ``None`` = automatic (the social-network sets
            without node labels: IMDB-BINARY, IMDB-MULTI, COLLAB, REDDIT-*).
        fold_seed: seed of the stratified folds drawn when the set ships none (TU format).

    Raises:
        DataError: unknown name (lists the available ones), missing / malformed files, empty graphs,
            inconsistent fold files, or a set without node labels when ``degree_as_tag=False``.
    """
    folder, fmt = resolve_name(root, name)
    if degree_as_tag is None:
        degree_as_tag = folder.upper() in DEGREE_AS_TAG
    if fmt == "gin":
        graphs, raw_labels, raw_tags = read_gin_txt(os.path.join(root, folder, f"{folder}.txt"))
    else:
        graphs, raw_labels, raw_tags = read_tu(root, folder)
        if raw_tags is None and not degree_as_tag:
            raise DataError(f"{folder}: the graphs have no node labels (no {folder}_node_labels.txt) and no "
                            f"tags to one-hot; use the node degree as the tag (degree_as_tag=True, the GIN/GNTK "
                            f"convention for IMDB / COLLAB)")
    if degree_as_tag:
        raw_tags = [g.degree() for g in graphs]
    tag_map = _map_ids(t for tags in raw_tags for t in tags.tolist())
    for g, tags in zip(graphs, raw_tags):
        g.tags = np.array([tag_map[t] for t in tags.tolist()], dtype=np.int64)
    label_map = _map_ids(raw_labels)
    labels = np.array([label_map[v] for v in raw_labels], dtype=np.int64)
    folds = read_folds(os.path.join(root, folder), len(graphs)) if fmt == "gin" else None
    if folds is None:
        folds = stratified_folds(labels, seed=fold_seed)
        fold_source = f"stratified 10-fold, seed {fold_seed}"
    else:
        fold_source = "10fold_idx files"
    return GraphDataset(folder, graphs, labels, len(tag_map), folds, fmt, degree_as_tag,
                        {"root": os.path.abspath(root), "folds": fold_source,
                         "label_values": list(label_map)})


def write_gin_txt(path: str, graphs: Sequence[Graph], labels: Sequence[int], folds: list | None = None) -> None:
    """Write graphs in the GIN / GNTK text format (and, with ``folds``, ``10fold_idx/`` beside it).

    The inverse of :func:`read_gin_txt`: node lines are ``tag degree neighbours...``; ``folds`` is a list
    of ``(train_idx, test_idx)`` written as ``{train,test}_idx-{k}.txt``.
    """
    lines = [str(len(graphs))]
    for g, y in zip(graphs, labels):
        nbrs = [[] for _ in range(g.num_nodes)]
        for u, v in np.asarray(g.edges).reshape(2, -1).T.tolist():
            nbrs[u].append(v)
            nbrs[v].append(u)
        lines.append(f"{g.num_nodes} {int(y)}")
        for u in range(g.num_nodes):
            lines.append(" ".join(str(t) for t in [int(g.tags[u]), len(nbrs[u]), *nbrs[u]]))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if folds is not None:
        fdir = os.path.join(os.path.dirname(os.path.abspath(path)), "10fold_idx")
        os.makedirs(fdir, exist_ok=True)
        for k, (tr, te) in enumerate(folds, 1):
            np.savetxt(os.path.join(fdir, f"train_idx-{k}.txt"), np.asarray(tr, dtype=np.int64), fmt="%d")
            np.savetxt(os.path.join(fdir, f"test_idx-{k}.txt"), np.asarray(te, dtype=np.int64), fmt="%d")
