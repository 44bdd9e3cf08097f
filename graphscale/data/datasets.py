"""``load_dataset(name, root)``: every node-classification data set as one :class:`NodeDataset`.

Names:

* ``ogbn-proteins``, ``ogbn-arxiv``, ``ogbn-products``: through ``ogb`` (downloads where the
  internet is reachable). Preprocessed as the reference recipes do (DeeperGCN / RevGNN): proteins'
  node features are the aggregated 8-dim edge features, its 112 targets are binary tasks on the
  species split; arxiv is symmetrised.
* ``synthetic-proteins``, ``synthetic-arxiv``, ``synthetic-products``: written once (seeded) by
  :mod:`graphscale.data.synthetic` in OGB's raw layout under ``root``, then read back through the
  very same ``ogb`` loader path.
* ``cora``, ``citeseer``, ``pubmed``: PyG's ``Planetoid`` on raw ``ind.*`` files under
  ``root/<Name>/raw`` (never downloaded: a missing file is an error), public split, row-normalised
  features. The raw folder is only read: PyG's ``processed/`` cache goes to graphscale's cache folder
  (``$GRAPHSCALE_CACHE``, default ``~/.cache/graphscale``, see :mod:`graphscale.data.cache`), never
  beside ``raw/``, so a shared data folder (``../shared/data``) is never written even when it is writable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from graphscale.data.synthetic import SyntheticSpec, meta_dict, write_synthetic
from graphscale.errors import DataError

PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
SYNTHETIC = {"synthetic-proteins": "proteins", "synthetic-arxiv": "arxiv", "synthetic-products": "products"}
OGB = ("ogbn-proteins", "ogbn-arxiv", "ogbn-products")
DATASETS = OGB + tuple(SYNTHETIC) + tuple(PLANETOID)


@dataclass
class NodeDataset:
    """A node-classification graph, ready for training.

    Attributes:
        name: data set name.
        x: ``[N, F]`` float node features.
        edge_index: ``[2, E]`` long, both directions of every undirected edge present.
        edge_attr: ``[E, D]`` float edge features or ``None``.
        y: ``[N, T]`` float 0/1 for ``task='multilabel'``; ``[N]`` long for ``'multiclass'``.
        split: ``{'train', 'valid', 'test'}`` -> long node index tensors.
        task: ``'multilabel'`` or ``'multiclass'``.
        num_outputs: ``T`` tasks or number of classes.
        metric: ``'rocauc'`` or ``'acc'``.
        evaluator: the ogb Evaluator name that computes the metric, or ``None`` (Planetoid).
    """

    name: str
    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor | None
    y: Tensor
    split: dict
    task: str
    num_outputs: int
    metric: str
    evaluator: str | None = None

    @property
    def num_nodes(self) -> int:
        return self.x.size(0)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    def validate(self) -> "NodeDataset":
        """Check shapes, index ranges and finiteness; raise :class:`DataError` naming the problem."""
        n = self.num_nodes
        ei = self.edge_index
        if ei.dim() != 2 or ei.size(0) != 2:
            raise DataError(f"{self.name}: edge_index must have shape [2, E], got {list(ei.shape)}")
        if ei.numel():
            lo, hi = int(ei.min()), int(ei.max())
            if lo < 0 or hi >= n:
                raise DataError(f"{self.name}: edge_index holds node ids in [{lo}, {hi}], expected [0, {n - 1}] "
                                f"(num_nodes={n})")
        if not torch.isfinite(self.x).all():
            bad = (~torch.isfinite(self.x)).any(dim=1).nonzero().view(-1)
            raise DataError(f"{self.name}: node features hold NaN/inf in {bad.numel()} rows "
                            f"(first: node {int(bad[0])}); clean the features first")
        if self.edge_attr is not None:
            if self.edge_attr.size(0) != ei.size(1):
                raise DataError(f"{self.name}: edge_attr has {self.edge_attr.size(0)} rows for {ei.size(1)} edges")
            if not torch.isfinite(self.edge_attr).all():
                raise DataError(f"{self.name}: edge features hold NaN/inf")
        if self.y.size(0) != n:
            raise DataError(f"{self.name}: y has {self.y.size(0)} rows for {n} nodes")
        for key in ("train", "valid", "test"):
            idx = self.split.get(key)
            if idx is None:
                raise DataError(f"{self.name}: split has no '{key}' index")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise DataError(f"{self.name}: split '{key}' holds ids outside [0, {n - 1}]")
        if self.split["train"].numel() == 0:
            raise DataError(f"{self.name}: the training split is empty")
        return self


def _proteins_features(edge_index: Tensor, edge_attr: Tensor, num_nodes: int, aggr: str) -> Tensor:
    # DeeperGCN / RevGNN: a protein's features = its incident edges' association scores, aggregated.
    x = torch.zeros(num_nodes, edge_attr.size(1), dtype=edge_attr.dtype)
    x.index_add_(0, edge_index[1], edge_attr)
    if aggr == "mean":
        deg = torch.bincount(edge_index[1], minlength=num_nodes).clamp(min=1).to(x.dtype)
        x = x / deg[:, None]
    elif aggr != "sum":
        raise DataError(f"node_feat_aggr must be 'sum' or 'mean', got {aggr!r}")
    return x


def _from_ogb(name: str, data, split: dict, evaluator: str, node_feat_aggr: str, num_classes: int) -> NodeDataset:
    if evaluator == "ogbn-proteins":
        edge_attr = data.edge_attr.float()
        x = _proteins_features(data.edge_index, edge_attr, data.num_nodes, node_feat_aggr)
        return NodeDataset(name, x, data.edge_index, edge_attr, data.y.float(), split, "multilabel",
                           int(data.y.size(1)), "rocauc", evaluator)
    from torch_geometric.utils import to_undirected
    edge_index = data.edge_index
    if evaluator == "ogbn-arxiv":  # directed citations; the reference recipes symmetrise
        edge_index = to_undirected(edge_index, num_nodes=data.num_nodes)
    y = data.y.view(-1).long()  # labels are checked against num_classes by graphscale.data.ogb
    return NodeDataset(name, data.x.float(), edge_index, None, y, split, "multiclass", num_classes, "acc", evaluator)


def _planetoid(name: str, root: str) -> NodeDataset:
    from torch_geometric.datasets import Planetoid
    from torch_geometric.transforms import NormalizeFeatures

    from graphscale.data import cache

    pyg_name = PLANETOID[name]
    raw = os.path.join(root, pyg_name, "raw")
    if not os.path.isdir(raw):
        raise DataError(f"{name}: no raw folder at {raw!r}; expected the Planetoid ind.{name}.* files there "
                        f"(e.g. data.root=../shared/data/planetoid)")
    processed = cache.processed_dir("planetoid", pyg_name, raw)
    files = [f"ind.{name}.{k}" for k in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")]
    cache.prepare(raw, files, processed, name)

    try:
        ds = cache.in_place(Planetoid, raw, processed)(root, pyg_name, transform=NormalizeFeatures())
    except Exception as exc:  # a malformed file: name the folder (missing files were refused above)
        raise DataError(f"{name}: could not read Planetoid files under {raw!r}: {type(exc).__name__}: {exc}") from None
    cache.save_stamp(raw, files, processed)
    d = ds[0]
    split = {k: m.nonzero().view(-1) for k, m in
             (("train", d.train_mask), ("valid", d.val_mask), ("test", d.test_mask))}
    return NodeDataset(name, d.x, d.edge_index, None, d.y, split, "multiclass", ds.num_classes, "acc", None)


def load_dataset(name: str, root: str, *, synthetic: SyntheticSpec | None = None,
                 node_feat_aggr: str = "sum") -> NodeDataset:
    """Load a node-classification data set by name (see the module docstring for the names).

    Args:
        name: data set name.
        root: folder holding (or receiving) the data set.
        synthetic: the shape of a ``synthetic-*`` set (its ``kind`` is taken from ``name``).
        node_feat_aggr: ``'sum'`` or ``'mean'`` of edge features into proteins' node features.

    The user's own graphs (``pyg``, ``MODULE:CLASS``) load through
    :func:`graphscale.data.user_data.load_user_dataset`.
    """
    if name in PLANETOID:
        return _planetoid(name, root).validate()
    if name in SYNTHETIC:
        from graphscale.data.ogb import read_ogb_node_dataset
        spec = synthetic or SyntheticSpec()
        spec = SyntheticSpec(**{**spec.__dict__, "kind": SYNTHETIC[name]})
        path = write_synthetic(spec, root)
        meta = meta_dict(spec, path)
        data, split = read_ogb_node_dataset(name, root, meta=meta)
        return _from_ogb(name, data, split, "ogbn-" + spec.kind, node_feat_aggr, int(meta["num classes"])).validate()
    if name in OGB:
        from graphscale.data.ogb import read_ogb_node_dataset
        data, split = read_ogb_node_dataset(name, root)
        classes = {"ogbn-proteins": 2, "ogbn-arxiv": 40, "ogbn-products": 47}[name]  # ogb's master.csv
        return _from_ogb(name, data, split, name, node_feat_aggr, classes).validate()
    import difflib
    close = difflib.get_close_matches(name, DATASETS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DataError(f"unknown data set {name!r}{hint}; expected one of {', '.join(DATASETS)}, pyg (with data.path) "
                    f"or MODULE:CLASS (docs/user-data.md)")
