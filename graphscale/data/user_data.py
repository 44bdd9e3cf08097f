"""The user's own graph: a PyG ``Data`` from a file, from a dataset class, or passed in Python.

Three sources, one result (a validated :class:`~graphscale.data.datasets.NodeDataset`):

* ``data.name=pyg`` with ``data.path=FILE``: a ``torch.save``\\ d :class:`torch_geometric.data.Data`.
  Read with ``torch.load(weights_only=True)``, with PyG's own data classes allow-listed
  (:data:`PYG_SAFE_GLOBALS`): tensors, containers and those classes only, never code from the file.
* ``data.name=MODULE:CLASS``: an :class:`torch_geometric.data.InMemoryDataset` subclass importable as
  ``MODULE`` (on ``PYTHONPATH`` or installed), built as ``CLASS(root=data.root)`` (offline when its raw
  files are there: PyG downloads only what is missing). It must hold one graph; its ``[0]`` is used,
  and its split comes from ``get_idx_split()`` when the class has one (OGB's convention).
* Python: ``Trainer(cfg, data=Data)`` / ``graphscale.train.api.train(cfg, data=Data)``
  (:func:`node_dataset_from_data`).

What the ``Data`` must hold (each problem is a :class:`DataError` naming the field):

* ``x``: ``[N, F]`` floating point, finite (float64 / float16 / bfloat16 features are trained as float32).
* ``edge_index``: ``[2, E]`` int64 (long), node ids in ``[0, N)``; used as given (messages flow source ->
  target): save both directions for an undirected graph (``torch_geometric.utils.to_undirected``).
* ``y``: ``[N]`` or ``[N, 1]`` integer class ids (float holding whole numbers is accepted) -> single-label,
  **multi-class**: cross-entropy, metric accuracy, ``max(y) + 1`` classes. ``[N, T]`` with ``T > 1`` and
  values 0/1 (float, int or bool) -> **multi-label**: binary cross-entropy per task, metric ROC-AUC
  averaged over the tasks that have both classes in the scored nodes (as ogbn-proteins). Negative
  labels are allowed only on nodes outside every split (a common mark for "unlabelled").
* a split: either ``train_mask`` / ``val_mask`` / ``test_mask`` (bool ``[N]``) or ``split`` = a dict with
  ``train`` / ``valid`` / ``test`` (int64 node indices, or bool masks ``[N]``), not both. Training and
  validation nodes must exist; the three sets must not overlap. An empty test set is allowed (its score
  is reported as NaN).
* ``edge_attr`` (optional): ``[E, D]`` (or ``[E]``, used as ``[E, 1]``) floating point, finite.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import re
import zipfile

import torch
from torch import Tensor

from graphscale.data.datasets import NodeDataset
from graphscale.errors import ConfigError, DataError

#: data.name of a torch.save'd Data file (data.path)
PYG_FILE = "pyg"
_CLASS_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_user_dataset(name: str) -> bool:
    """``data.name=pyg`` or ``data.name=MODULE:CLASS``."""
    return name == PYG_FILE or ":" in name


def check_user_source(name: str, path: str) -> None:
    """Checks of the config alone, before anything is loaded: ``pyg`` needs a ``data.path``; a class name
    must look like ``MODULE:CLASS``. (Whether the file exists is checked when it is read.)"""
    if name == PYG_FILE:
        if not path:
            raise ConfigError("data.name=pyg needs data.path=FILE: a torch.save'd torch_geometric.data.Data "
                              "(see docs/user-data.md)", key="data.path")
    elif ":" in name and not _CLASS_SPEC.match(name):
        raise ConfigError(f"data.name={name!r}: expected MODULE:CLASS (e.g. mypackage.graphs:MyDataset), an "
                          f"importable module and an InMemoryDataset class in it", key="data.name")


def _safe_globals() -> list:
    from torch_geometric.data import Data, HeteroData
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.feature_store import TensorAttr
    from torch_geometric.data.graph_store import EdgeAttr
    from torch_geometric.data.storage import BaseStorage, EdgeStorage, GlobalStorage, NodeStorage
    # PyG's data containers and their storages, nothing else (HeteroData so that it is named, not refused
    # as an unknown class)
    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, HeteroData, EdgeAttr, TensorAttr, BaseStorage,
            NodeStorage, EdgeStorage]


@contextlib.contextmanager
def _pyg_classes_allowed():
    """Allow PyG's data classes in ``torch.load(weights_only=True)`` for the block. ``safe_globals``
    *removes* its list on exit, and PyG allow-lists ``Data`` and ``HeteroData`` process-wide at import
    (which ogb's loading relies on): pass it only the classes not already allowed, so that leaving the
    block restores the allow-list as it was."""
    allowed = torch.serialization.get_safe_globals()
    with torch.serialization.safe_globals([g for g in _safe_globals() if g not in allowed]):
        yield


def _describe(obj) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:8])) + (", ..." if len(obj) > 8 else "")
        return f"a dict (keys: {keys})" if obj else "an empty dict"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    if isinstance(obj, Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__name__}"


def load_pyg_file(path: str):
    """Read a ``torch.save``\\ d ``Data`` safely (tensors and PyG's data classes only).

    Raises :class:`DataError` naming the file when it cannot be read, holds another object, or would
    need any other class to load.
    """
    from torch_geometric.data import Data, HeteroData
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f"data.path={path!r}: no such file (expected a torch.save'd torch_geometric.data.Data)")
    try:
        with _pyg_classes_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise DataError(f"data.path={path!r} cannot be read: {exc.strerror or exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError) as exc:
        # torch's own message may advise weights_only=False: never repeat that for a file from anywhere
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise DataError(f"data.path={path!r} holds an object of class {found.group(1)}; graphscale reads only "
                            f"tensors and torch_geometric Data from a file (never code): save the graph with "
                            f"torch.save(data, FILE) where data is a torch_geometric.data.Data") from None
        inner = re.search(r"WeightsUnpickler error: ([^\n]+)", str(exc))
        first = inner.group(1) if inner else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights_only" in first or "trust" in first:
            first = type(exc).__name__
        raise DataError(f"data.path={path!r} is not a readable torch.save file ({first[:160]}); expected a "
                        f"torch.save'd torch_geometric.data.Data") from None
    if isinstance(obj, HeteroData):
        raise DataError(f"data.path={path!r} holds a HeteroData (node types: {', '.join(obj.node_types)}); "
                        f"graphscale trains one homogeneous graph: save data.to_homogeneous() instead")
    if not isinstance(obj, Data):
        raise DataError(f"data.path={path!r} holds {_describe(obj)}, not a torch_geometric.data.Data")
    return obj


def load_dataset_class(spec: str, root: str):
    """``(Data, split or None)`` of the one-graph ``InMemoryDataset`` that ``spec`` = ``MODULE:CLASS`` names,
    built as ``CLASS(root=root)``; ``split`` from ``get_idx_split()`` where the class has one."""
    from torch_geometric.data import Dataset
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error of any kind inside the user's module: name the module
        raise DataError(f"data.name={spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                        f"it must be importable from here (installed, or its folder on PYTHONPATH)") from None
    cls = module
    for part in attr.split("."):
        if not hasattr(cls, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise DataError(f"data.name={spec!r}: module {module_name!r} has no {attr!r} (it has: "
                            f"{', '.join(public) or 'nothing public'})")
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise DataError(f"data.name={spec!r}: {attr} is {_describe(cls) if not isinstance(cls, type) else 'the class ' + cls.__name__}, "
                        f"not a torch_geometric Dataset (InMemoryDataset) class")
    try:
        # PyG reloads its processed file with torch.load(weights_only=True) and, when a class is not
        # allow-listed, retries without it: allow-list its data classes so the safe load succeeds
        with _pyg_classes_allowed():
            ds = cls(root=root)
    except Exception as exc:  # a download attempted offline, a missing raw file, a bad argument
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise DataError(f"data.name={spec!r}: {attr}(root={root!r}) failed ({type(exc).__name__}: {first}); "
                        f"put its raw files under data.root ({root!r}) to build it offline") from None
    if len(ds) != 1:
        raise DataError(f"data.name={spec!r}: the dataset holds {len(ds)} graphs; graphscale trains node "
                        f"classification on one graph (a dataset of exactly one)")
    split = None
    if hasattr(ds, "get_idx_split"):
        split = ds.get_idx_split()
        if not isinstance(split, dict):
            raise DataError(f"data.name={spec!r}: get_idx_split() returned {_describe(split)}; expected a dict "
                            f"with train / valid / test index tensors")
    return ds[0], split


def load_user_dataset(name: str, root: str, path: str = "") -> NodeDataset:
    """The :class:`NodeDataset` of ``data.name=pyg`` (``path``) or ``data.name=MODULE:CLASS`` (``root``)."""
    check_user_source(name, path)
    if name == PYG_FILE:
        data = load_pyg_file(path)
        return node_dataset_from_data(data, name=f"pyg:{os.path.basename(path)}", where=f"data.path={path!r}")
    data, split = load_dataset_class(name, root)
    return node_dataset_from_data(data, name=name, where=f"data.name={name!r}", split=split)


# ------------------------------------------------------------------------------ Data -> NodeDataset
def _tensor(data, key: str, where: str, what: str) -> Tensor:
    value = getattr(data, key, None) if key in data else None
    if value is None:
        raise DataError(f"{where}: the Data has no '{key}' ({what})")
    if not isinstance(value, Tensor):
        raise DataError(f"{where}: '{key}' is {_describe(value)}, expected a tensor ({what})")
    return value


def _labels(y: Tensor, where: str) -> tuple[Tensor, str]:
    """``(y, task)``: single-label ``[N]`` long or multi-label ``[N, T]`` float 0/1."""
    if y.dim() == 2 and y.size(1) == 1:
        y = y.view(-1)
    if y.dim() == 1:
        if y.dtype == torch.bool:
            y = y.long()
        if y.is_floating_point():
            bad = ~torch.isfinite(y) | (y != y.round())
            if bad.any():
                i = int(bad.nonzero()[0])
                raise DataError(f"{where}: y holds non-integer values (node {i}: {float(y[i])}); single-label y "
                                f"must be class ids 0..C-1 (for several 0/1 tasks use y of shape [N, T])")
            y = y.long()
        elif y.dtype.is_complex:
            raise DataError(f"{where}: y has dtype {y.dtype}; expected integer class ids")
        return y.long(), "multiclass"
    if y.dim() == 2:
        vals = y.float() if not y.is_floating_point() else y
        bad = ~((vals == 0) | (vals == 1))
        if bad.any():
            i, t = (int(v) for v in bad.nonzero()[0])
            raise DataError(f"{where}: y has shape {list(y.shape)} (multi-label, {y.size(1)} tasks) but holds "
                            f"{float(vals[i, t])} at node {i}, task {t}; multi-label y must be 0/1 (single-label "
                            f"class ids go in y of shape [N])")
        return vals.float(), "multilabel"
    raise DataError(f"{where}: y has shape {list(y.shape)}; expected [N] class ids or [N, T] 0/1 tasks")


def _index(name: str, v, n: int, where: str, field: str) -> Tensor:
    if not isinstance(v, Tensor):
        raise DataError(f"{where}: {field} is {_describe(v)}, expected a tensor of node indices or a bool mask")
    if v.dtype == torch.bool:
        if v.dim() != 1 or v.numel() != n:
            extra = " (several splits in columns: save one column)" if v.dim() == 2 else ""
            raise DataError(f"{where}: {field} is a bool mask of shape {list(v.shape)}, expected [{n}] "
                            f"(one entry per node){extra}")
        return v.nonzero().view(-1)
    if v.is_floating_point() or v.dtype.is_complex:
        raise DataError(f"{where}: {field} has dtype {v.dtype}; expected int64 node indices or a bool mask")
    v = v.view(-1).long() if v.dim() <= 1 else v
    if v.dim() != 1:
        raise DataError(f"{where}: {field} has shape {list(v.shape)}; expected a 1-D index tensor")
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= n):
        raise DataError(f"{where}: {field} holds node ids in [{int(v.min())}, {int(v.max())}], expected [0, {n - 1}]")
    return v


def _split(data, n: int, where: str, split: dict | None) -> dict:
    masks = [k for k in ("train_mask", "val_mask", "test_mask") if k in data]
    given = split if split is not None else (getattr(data, "split", None) if "split" in data else None)
    source = "get_idx_split()" if split is not None else "split"
    if given is not None and masks:
        raise DataError(f"{where}: the Data has both a '{source}' and {', '.join(masks)}; keep one split")
    if given is not None:
        if not isinstance(given, dict):
            raise DataError(f"{where}: '{source}' is {_describe(given)}; expected a dict with train / valid / test")
        missing = [k for k in ("train", "valid", "test") if k not in given]
        if missing:
            raise DataError(f"{where}: '{source}' has no {', '.join(repr(k) for k in missing)} (keys: "
                            f"{', '.join(map(str, given))}); expected train / valid / test")
        out = {k: _index(k, given[k], n, where, f"{source}['{k}']") for k in ("train", "valid", "test")}
    elif masks:
        if len(masks) < 3:
            missing = [k for k in ("train_mask", "val_mask", "test_mask") if k not in masks]
            raise DataError(f"{where}: the Data has {', '.join(masks)} but no {', '.join(missing)}")
        out = {}
        for key, m in (("train", "train_mask"), ("valid", "val_mask"), ("test", "test_mask")):
            v = getattr(data, m)
            if not isinstance(v, Tensor) or v.dtype != torch.bool:
                raise DataError(f"{where}: {m} is {_describe(v) if not isinstance(v, Tensor) else 'of dtype ' + str(v.dtype)}"
                                f"; expected a bool mask [{n}]")
            out[key] = _index(key, v, n, where, m)
    else:
        raise DataError(f"{where}: the Data has no split: give train_mask / val_mask / test_mask (bool [N]) or "
                        f"split = {{'train': idx, 'valid': idx, 'test': idx}}")
    for key in ("train", "valid"):
        if out[key].numel() == 0:
            raise DataError(f"{where}: the {key} split is empty")
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        in_a = torch.zeros(n, dtype=torch.bool)
        in_a[out[a]] = True
        common = out[b][in_a[out[b]]]
        if common.numel():
            raise DataError(f"{where}: {common.numel()} node(s) are in both the {a} and the {b} split (first: node "
                            f"{int(common[0])}); the splits must not overlap")
    return out


def node_dataset_from_data(data, name: str = "pyg", where: str | None = None, split: dict | None = None) -> NodeDataset:
    """Check a PyG ``Data`` (see the module docstring for what it must hold) and wrap it as a
    :class:`NodeDataset`.

    Args:
        data: a :class:`torch_geometric.data.Data`.
        name: the data set name recorded in the results.
        where: how errors name the source (default: ``name``).
        split: ``{'train', 'valid', 'test'}`` indices given outside the Data (``get_idx_split()``).
    """
    from torch_geometric.data import Data
    where = where or name
    if not isinstance(data, Data):
        raise DataError(f"{where}: expected a torch_geometric.data.Data, got {_describe(data)}")
    x = _tensor(data, "x", where, "node features [N, F]")
    edge_index = _tensor(data, "edge_index", where, "edges [2, E] int64")
    y = _tensor(data, "y", where, "labels [N] or [N, T]")
    if x.dim() != 2 or not x.is_floating_point():
        raise DataError(f"{where}: x has shape {list(x.shape)} and dtype {x.dtype}; expected [N, F] floating point")
    n = x.size(0)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise DataError(f"{where}: edge_index has shape {list(edge_index.shape)}; expected [2, E]")
    if edge_index.dtype != torch.long:
        raise DataError(f"{where}: edge_index has dtype {edge_index.dtype}; expected int64 (edge_index.long())")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n:
            raise DataError(f"{where}: edge_index holds node ids in [{lo}, {hi}], expected [0, {n - 1}] (x has {n} rows)")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().view(-1)
        raise DataError(f"{where}: x holds NaN/inf in {bad.numel()} row(s) (first: node {int(bad[0])})")
    edge_attr = getattr(data, "edge_attr", None) if "edge_attr" in data else None
    if edge_attr is not None:
        if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point() or edge_attr.dim() not in (1, 2):
            desc = _describe(edge_attr) if not isinstance(edge_attr, Tensor) else \
                f"shape {list(edge_attr.shape)}, dtype {edge_attr.dtype}"
            raise DataError(f"{where}: edge_attr ({desc}); expected [E, D] floating point")
        if edge_attr.size(0) != edge_index.size(1):
            raise DataError(f"{where}: edge_attr has {edge_attr.size(0)} rows for {edge_index.size(1)} edges")
        if not torch.isfinite(edge_attr).all():
            raise DataError(f"{where}: edge_attr holds NaN/inf")
        edge_attr = edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr
        edge_attr = edge_attr.float()
    if y.size(0) != n:
        raise DataError(f"{where}: y has {y.size(0)} rows for {n} nodes (x has {n} rows)")
    y, task = _labels(y, where)
    split = _split(data, n, where, split)
    if task == "multiclass":
        scored = torch.cat([split["train"], split["valid"], split["test"]])
        neg = scored[y[scored] < 0]
        if neg.numel():
            raise DataError(f"{where}: y is negative ({int(y[neg[0]])}) at node {int(neg[0])}, which is in a split; "
                            f"class ids must be 0..C-1 (negative labels may mark only nodes outside every split)")
        num_outputs = int(y.max()) + 1
        if num_outputs < 2:
            raise DataError(f"{where}: y holds a single class ({num_outputs - 1}); node classification needs 2 or more")
        metric = "acc"
    else:
        num_outputs, metric = int(y.size(1)), "rocauc"
    return NodeDataset(name, x.float(), edge_index, edge_attr, y, split, task, num_outputs, metric, None).validate()
