"""OGB node-property data sets, real or synthetic, read through ``ogb``'s own loader.

This is the only module that imports ``ogb``.
"""
from __future__ import annotations

import contextlib
import os

import torch

from graphscale.errors import DataError

OGB_NODE_DATASETS = ("ogbn-proteins", "ogbn-arxiv", "ogbn-products")


@contextlib.contextmanager
def _pyg_safe_globals():
    # ogb 1.3.6 calls torch.load without weights_only; torch >= 2.6 then refuses PyG's Data classes.
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage
    with torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage]):
        yield


def _check_folder(path: str, name: str, version: int) -> None:
    """ogb asks ``input()`` when a folder exists without its release marker (EOFError under CI):
    refuse first, with a message that says what to do."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, f"RELEASE_v{version}.txt")):
        raise DataError(f"data folder {path!r} for {name} exists but is incomplete (no RELEASE_v{version}.txt): "
                        f"delete it to download / generate it again")


def read_ogb_node_dataset(name: str, root: str, meta: dict | None = None):
    """Return ``(data, split_idx)`` from ``PygNodePropPredDataset``.

    Args:
        name: an OGB name (``ogbn-proteins``...) or, with ``meta``, a synthetic set's name.
        root: folder holding ``<name with _>/`` (OGB) — ignored when ``meta`` gives ``dir_path``.
        meta: ogb ``meta_dict`` for data sets not in ogb's ``master.csv``.
    """
    from ogb.nodeproppred import PygNodePropPredDataset

    if meta is None:
        folder = os.path.join(root, name.replace("-", "_"))
        _check_folder(folder, name, 1)
    else:
        _check_folder(meta["dir_path"], name, int(meta["version"]))
    try:
        with _pyg_safe_globals():
            ds = PygNodePropPredDataset(name=name, root=root, meta_dict=meta)
            split = ds.get_idx_split()
    except (OSError, RuntimeError, EOFError) as exc:
        if meta is None:
            raise DataError(f"could not load {name} under {root!r} ({type(exc).__name__}: {exc}). "
                            f"Without internet access, use data.name=synthetic-proteins or synthetic-arxiv "
                            f"(same on-disk format, generated locally).") from exc
        raise DataError(f"could not read the data set at {meta['dir_path']!r}: {exc}") from exc
    return ds[0], split


def evaluator(name: str):
    """ogb's :class:`~ogb.nodeproppred.Evaluator` for an ``ogbn-*`` name."""
    from ogb.nodeproppred import Evaluator
    return Evaluator(name)
