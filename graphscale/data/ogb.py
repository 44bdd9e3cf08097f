"""OGB node-property data sets, real or synthetic, read through ``ogb``'s own loader.

This is the only module that imports ``ogb``.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

from graphscale.data import raw_check
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


def _master_meta(name: str) -> dict:
    import pandas as pd
    from ogb import nodeproppred
    master = pd.read_csv(os.path.join(os.path.dirname(nodeproppred.__file__), "master.csv"), index_col=0,
                         keep_default_na=False)
    return {k: str(v) for k, v in master[name].items()}


def _processed_files(processed_dir: str) -> list:
    return [os.path.join(processed_dir, f) for f in
            ("geometric_data_processed.pt", "pre_transform.pt", "pre_filter.pt", raw_check.STAMP)]


def _prepare_cache(name: str, folder: str, meta: dict) -> bool:
    """Check the raw files and ogb's processed/ cache before ogb runs; return whether ogb will (re)build it.

    The raw files are scanned (:func:`raw_check.check_raw`) whenever ogb is about to parse them: on
    the first load and when the cache is stale, in which case the cache files are removed so that
    ogb rebuilds them from the current raw files (a line on stderr says so).
    """
    raw_check.check_present(folder, raw_check.layout(meta), name)
    processed = os.path.join(folder, "processed", "geometric_data_processed.pt")
    if os.path.exists(processed):
        why = raw_check.cache_is_stale(folder, meta, processed)
        if why is None:
            if not os.path.exists(os.path.join(folder, "processed", raw_check.STAMP)):
                with contextlib.suppress(OSError):  # adopt a cache ogb built: later changes are then seen
                    raw_check.save_stamp(folder, meta, processed)
            raw_check.check_splits(folder, meta)
            return False
        raw_check.check_raw(folder, meta, name)
        print(f"graphscale: the raw files of {name} {why}; rebuilding ogb's cache "
              f"{os.path.dirname(processed)!r}", file=sys.stderr)
        try:
            for f in _processed_files(os.path.dirname(processed)):
                if os.path.exists(f):
                    os.remove(f)
        except OSError as exc:
            raise DataError(f"{name}: the cache {os.path.dirname(processed)!r} is stale (raw files {why}) and "
                            f"cannot be removed ({exc.strerror or exc}): delete it and run again") from None
        return True
    raw_check.check_raw(folder, meta, name)
    return True


def _first_bad(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, -1]) if mask.dim() == 2 else int(mask.nonzero()[0, 0])


def _check_loaded(name: str, folder: str, meta: dict, data, split: dict) -> None:
    """Counts and value ranges of what ogb returned, each error naming the raw file and line."""
    processed_dir = os.path.join(folder, "processed")
    n = raw_check.read_count(folder, "node")
    e = raw_check.read_count(folder, "edge")
    mult = 2 if meta["add_inverse_edge"] == "True" else 1
    ei = data.edge_index
    if int(data.num_nodes) != n or ei.size(1) != e * mult:
        raise DataError(f"{name}: ogb's cache {processed_dir!r} holds {int(data.num_nodes):,} nodes and "
                        f"{ei.size(1):,} edges but the raw files say {n:,} nodes and {e * mult:,} edges: the cache "
                        f"is stale; delete {processed_dir!r} and run again")
    edge_file = os.path.join(folder, "raw", "edge.csv.gz")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        col = _first_bad((ei < 0) | (ei >= n))
        bad = ei[:, col]
        value = int(bad[0]) if not 0 <= int(bad[0]) < n else int(bad[1])
        raise DataError(f"{edge_file}: line {col // mult + 1} holds node id {value}, expected 0..{n - 1} "
                        f"(raw/num-node-list.csv.gz says {n:,} nodes)")
    label_file = os.path.join(folder, "raw", "node-label.csv.gz")
    y = data.y
    if torch.is_floating_point(y) and torch.isnan(y).any():
        raise DataError(f"{label_file}: line {_first_bad(torch.isnan(y).view(n, -1).any(1)) + 1} has no label "
                        f"(NaN); every node needs one")
    classes = int(meta["num classes"])
    bad = (y < 0) | (y >= classes)
    if bad.any():
        row = _first_bad(bad.view(n, -1).any(1))
        raise DataError(f"{label_file}: line {row + 1} holds label {y.view(n, -1)[row].tolist()[:8]}, expected "
                        f"values in 0..{classes - 1}")
    for part, idx in split.items():
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            row = _first_bad(bad)
            path = os.path.join(folder, "split", meta["split"], f"{part}.csv.gz")
            raise DataError(f"{path}: line {row + 1} holds node id {int(idx[row])}, expected 0..{n - 1}")


def dataset_folder(name: str, root: str) -> str:
    """Where ogb keeps ``name`` under ``root`` (it prefers an existing ``<dir>_pyg`` folder)."""
    folder = os.path.join(root, name.replace("-", "_"))
    return folder + "_pyg" if os.path.exists(folder + "_pyg") else folder


def read_ogb_node_dataset(name: str, root: str, meta: dict | None = None):
    """Return ``(data, split_idx)`` from ``PygNodePropPredDataset``, checked before and after ogb runs.

    Before: the raw files are present, well formed and agree with their counts (:mod:`raw_check`);
    a ``processed/`` cache older than its raw files is rebuilt. After: counts and value ranges of
    the loaded graph, each error naming the raw file and line.

    Args:
        name: an OGB name (``ogbn-proteins``...) or, with ``meta``, a synthetic set's name.
        root: folder holding ``<name with _>/`` (OGB) — ignored when ``meta`` gives ``dir_path``.
        meta: ogb ``meta_dict`` for data sets not in ogb's ``master.csv``.
    """
    from ogb.nodeproppred import PygNodePropPredDataset

    if meta is None:
        folder = dataset_folder(name, root)
        info = _master_meta(name)
        _check_folder(folder, name, int(info["version"]))
    else:
        folder = meta["dir_path"]
        info = {k: str(v) for k, v in meta.items()}
        _check_folder(folder, name, int(meta["version"]))
    local = os.path.isdir(folder)  # else ogb downloads it (real OGB sets, where the internet is reachable)
    building = _prepare_cache(name, folder, info) if local else True
    try:
        with _pyg_safe_globals():
            ds = PygNodePropPredDataset(name=name, root=root, meta_dict=meta)
            split = ds.get_idx_split()
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        if meta is None and not local:
            raise DataError(f"could not load {name} under {root!r} ({type(exc).__name__}: {exc}). "
                            f"Without internet access, use data.name=synthetic-proteins or synthetic-arxiv "
                            f"(same on-disk format, generated locally).") from None
        raise DataError(f"could not read the data set at {folder!r} ({type(exc).__name__}: {exc})") from None
    if building:
        with contextlib.suppress(OSError):
            raw_check.save_stamp(folder, info, os.path.join(folder, "processed", "geometric_data_processed.pt"))
    data = ds[0]
    _check_loaded(name, folder, info, data, split)
    return data, split


def evaluator(name: str):
    """ogb's :class:`~ogb.nodeproppred.Evaluator` for an ``ogbn-*`` name."""
    from ogb.nodeproppred import Evaluator
    return Evaluator(name)
