"""Writing a partitioned graph store (the format: :mod:`graphscale.data.part_store`, ``docs/partitioned.md``).

:func:`write_store` partitions a loaded :class:`~graphscale.data.datasets.NodeDataset` with the
partition registry (:func:`graphscale.sampling.partition.partition`) and writes one folder per part.
Memory: the graph as loaded, plus ``O(N + E)`` int64 index arrays (the node and edge orders by
part), plus one part's buffers at a time (its features are gathered, written and dropped before
the next part): never a second copy of the features. Every ``.npy`` is hashed while it is written.
METIS itself needs about 11x its int64 input (the symmetric CSR, ``M`` = 2 x undirected edges
entries: 2.08 GB for 24.7M entries, measured): with ``offload=True`` the graph is on disk while it
runs, so the step's peak is METIS's, not METIS's plus the graph (``docs/partitioned.md``).

Atomicity: everything goes into ``<out>.tmp-<pid>``; ``meta.json`` is written last and the folder
is renamed to ``out`` at the end (``os.replace``), so an interrupted run leaves no folder named
``out`` (or leaves the previous store there untouched), and a folder without ``meta.json`` is never
read as a store.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from graphscale import __version__
from graphscale.data.datasets import NodeDataset
from graphscale.data.part_store import (BOOK, FORMAT, META, SPLITS, VERSION, StoreError, fingerprint, part_dir,
                                        part_file)
from graphscale.errors import ConfigError
from graphscale.sampling.partition import (PARTITIONERS, check_edge_index, check_metis_options, metis_input,
                                          metis_partition_csr, partition)


class _HashingWriter:
    """A write-only file that hashes what goes through it (np.save then writes in 16 MiB chunks)."""

    def __init__(self, fh):
        self.fh, self.h, self.n = fh, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.fh.write(data)


def _save(folder: str, rel: str, array, files: dict) -> None:
    array = np.ascontiguousarray(array.numpy() if isinstance(array, Tensor) else array)
    path = os.path.join(folder, rel)
    with open(path, "wb") as fh:
        w = _HashingWriter(fh)
        np.save(w, array, allow_pickle=False)
    files[rel] = {"bytes": w.n, "sha256": w.h.hexdigest(), "dtype": str(array.dtype), "shape": list(array.shape)}


def check_store_args(num_parts, num_nodes: int | None, method: str, halo) -> None:
    """The partition step's options, checked before the data set is read (``num_nodes=None``) and again
    after (the part count against the node count)."""
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ConfigError(f"--parts {num_parts!r}: expected a number of parts >= 1")
    if num_nodes is not None and num_parts > num_nodes:
        raise ConfigError(f"--parts {num_parts} is larger than the number of nodes ({num_nodes:,}); "
                          f"expected 1 <= --parts <= {num_nodes}")
    if method not in PARTITIONERS:
        import difflib
        close = difflib.get_close_matches(str(method), list(PARTITIONERS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"--method {method!r} is not a partitioner{hint}; expected one of "
                          f"{', '.join(sorted(PARTITIONERS))}")
    if halo not in (0, 1) or isinstance(halo, bool):
        raise ConfigError(f"--halo {halo!r}: expected 0 (intra-part edges only) or 1 (also the 1-hop in-neighbours "
                          f"of every part, with their features)")


def check_out(out: str, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; refuse a file; check the parent is writable."""
    if os.path.isfile(out):
        raise ConfigError(f"--out {out!r} is a file; expected a folder for the store")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConfigError(f"--out {out!r} exists and is not empty; pass --overwrite to replace it, or choose "
                          f"another folder")
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {parent!r} for --out {out!r}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the store into {parent!r} (not writable)")


def write_store(data: NodeDataset, out: str, num_parts: int, method: str = "metis", halo: int = 0, seed: int = 0,
                data_config: dict | None = None, method_options: dict | None = None, overwrite: bool = False,
                progress: bool = True, part: Tensor | None = None, record_options: dict | None = None,
                offload: bool = False) -> dict:
    """Partition ``data`` and write the store folder ``out``.

    Args:
        data: the loaded data set.
        out: the store folder (must not exist, be empty, or ``overwrite``).
        num_parts: ``P``, ``1 <= P <= N``.
        method: a partitioner name (``metis`` | ``random`` | ``contiguous``).
        halo: ``0``: each part holds its inner nodes and the edges among them (the entering edges
            are listed as index arrays, without features); ``1``: also the 1-hop in-neighbours of
            the inner nodes as halo nodes, with their feature rows.
        seed: partition seed.
        data_config: the config's ``data`` section (recorded, and fingerprinted, in ``meta.json``).
        method_options: partitioner options (METIS ``imbalance`` / ``vertex_weight`` tensor); the
            tensors are recorded by name only.
        overwrite: replace an existing store at ``out`` (after the new one is complete).
        progress: tqdm bar over the parts.
        part: a precomputed ``[N]`` assignment instead of calling the partitioner (tests).
        record_options: how to record options in ``meta.json`` where the value passed is not
            JSON (``{"vertex_weight": "degree"}`` for a weight tensor).
        offload: with ``method='metis'``, keep the graph on disk while METIS runs: METIS's input is
            built, then ``data.x``, ``data.edge_index`` and ``data.edge_attr`` are saved into the
            temporary folder and dropped from memory, and read back (as equal, new tensors: ``data``
            is changed in place) once METIS returns. METIS's own working memory is ~11x its int64
            input (measured), so its peak is what the step's peak is made of; without the graph
            beside it, that peak is lower by the size of the graph. Costs one write and one read of
            the graph.

    Returns:
        the ``meta.json`` dict.
    """
    n, e = data.num_nodes, data.num_edges
    check_store_args(num_parts, n, method, halo)
    check_out(out, overwrite)
    opts = dict(method_options or {})
    x_dtype, edge_dim = data.x.dtype, (data.edge_attr.size(1) if data.edge_attr is not None else None)

    tmp = f"{os.path.abspath(out)}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        t0 = time.perf_counter()
        if part is None:
            part = _partition(data, method, num_parts, seed, opts, tmp if offload else None)
        part = part.long()
        t_part = time.perf_counter() - t0
        meta = _write(data, tmp, part, num_parts, halo, progress)
        data_config = dict(data_config or {"name": data.name})
        meta.update({
            "format": FORMAT, "version": VERSION, "dataset": data.name, "data_config": data_config,
            "fingerprint": fingerprint(data_config), "num_nodes": n, "num_edges": e,
            "num_features": int(data.x.size(1)), "num_outputs": int(data.num_outputs), "edge_dim": edge_dim,
            "task": data.task, "metric": data.metric, "evaluator": data.evaluator,
            "method": method, "method_options": {**{k: (v if isinstance(v, (int, float, str, bool)) or v is None
                                                        else f"<{type(v).__name__}>") for k, v in opts.items()},
                                                 **(record_options or {})},
            "num_parts": num_parts, "seed": seed, "halo": halo,
            "split_sizes": {k: int(data.split[k].numel()) for k in SPLITS},
            "x_dtype": str(x_dtype).replace("torch.", ""),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "graphscale_version": __version__, "partition_seconds": round(t_part, 3),
        })
        with open(os.path.join(tmp, META), "w") as fh:
            json.dump(meta, fh, indent=1)
        if os.path.isdir(out):  # --overwrite (or an empty folder): the new store is complete, swap it in
            old = f"{os.path.abspath(out)}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _partition(data: NodeDataset, method: str, num_parts: int, seed: int, opts: dict, scratch: str | None) -> Tensor:
    n = data.num_nodes
    if scratch is None or method != "metis" or not set(opts) <= {"imbalance", "vertex_weight", "recursive"}:
        return partition(method, data.edge_index, n, num_parts, seed=seed, **opts)
    check_edge_index(data.edge_index, n)
    check_metis_options(n, opts.get("vertex_weight"), opts.get("imbalance", 0.03))
    rowptr, col, _ = metis_input(data.edge_index, n)
    with _graph_on_disk(data, scratch):
        part = metis_partition_csr(rowptr, col, num_parts, seed=seed, **opts)
        del rowptr, col  # before the graph is read back
    return part


@contextlib.contextmanager
def _graph_on_disk(data: NodeDataset, folder: str):
    """Save ``data``'s feature and edge tensors as ``.npy`` under ``folder``, drop them from memory for
    the body, and read them back (in memory, writable) afterwards, also after an error."""
    names = [k for k in ("x", "edge_index", "edge_attr")
             if getattr(data, k) is not None and getattr(data, k).dtype != torch.bfloat16]  # numpy has no bf16
    paths = {k: os.path.join(folder, f".offload-{k}.npy") for k in names}
    try:
        for k in names:
            np.save(paths[k], getattr(data, k).detach().numpy(), allow_pickle=False)
            setattr(data, k, None)
        gc.collect()  # a loader may have left the tensors in a reference cycle (ogb's dataset object)
        yield
    finally:
        for k in names:
            if getattr(data, k) is None:
                setattr(data, k, torch.from_numpy(np.load(paths[k])))
            if os.path.exists(paths[k]):
                os.remove(paths[k])


def _write(data: NodeDataset, folder: str, part: Tensor, num_parts: int, halo: int, progress: bool) -> dict:
    n = data.num_nodes
    ei = data.edge_index
    dst_all = ei[1]
    files: dict = {}
    _save(folder, BOOK, part.to(torch.int32), files)

    # Nodes by part (ascending global id inside a part) and each node's position inside its part.
    node_perm = torch.argsort(part, stable=True)
    node_ptr = torch.zeros(num_parts + 1, dtype=torch.long)
    node_ptr[1:] = torch.bincount(part, minlength=num_parts).cumsum(0)
    pos = torch.empty(n, dtype=torch.long)
    pos[node_perm] = torch.arange(n) - node_ptr[part[node_perm]]
    # Edges by the part of their target, ascending edge id inside a part: a stable argsort of the
    # targets' parts in the narrowest unsigned type (uint8 up to 256 parts), which numpy sorts by radix
    # (<= 16 bits): the key is E bytes and the sort needs one index array besides its result. Measured
    # on 24.7M edges, 64 parts: this setup peaked 415 MiB above the loaded graph, against 972 MiB with
    # torch's stable argsort of the int64 parts (the argsort alone: 0.36 s vs 2.6 s).
    key = part.numpy().astype(np.min_scalar_type(max(num_parts - 1, 0)))[dst_all.numpy()]
    edge_perm = torch.from_numpy(np.argsort(key, kind="stable"))
    edge_ptr = torch.zeros(num_parts + 1, dtype=torch.long)
    edge_ptr[1:] = torch.from_numpy(np.bincount(key, minlength=num_parts)).cumsum(0)
    del key
    masks = {k: torch.zeros(n, dtype=torch.bool) for k in SPLITS}
    for k in SPLITS:
        masks[k][data.split[k]] = True

    # The loop below runs many small gathers per part (a few thousand elements each). With torch's
    # thread pool on a busy machine each of them waited on the other thread: 135 ms per part with
    # 2 threads vs 4 ms with 1 (245k nodes, 12.4M edges, 1500 parts, load ~13 on 2 cores). One
    # thread loses nothing on ops this small.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts_meta = _write_parts(data, folder, part, num_parts, halo, progress, files, node_perm, node_ptr, pos,
                                  edge_perm, edge_ptr, masks)
    finally:
        torch.set_num_threads(threads)
    return {"parts": parts_meta, "files": files}


def _write_parts(data, folder, part, num_parts, halo, progress, files, node_perm, node_ptr, pos, edge_perm,
                 edge_ptr, masks) -> list:
    src_all, dst_all = data.edge_index[0], data.edge_index[1]
    parts_meta = []
    for p in tqdm(range(num_parts), desc="parts", disable=not progress, leave=False):
        d = os.path.join(folder, part_dir(p))
        os.makedirs(d)
        inner = node_perm[node_ptr[p]:node_ptr[p + 1]]
        eids = edge_perm[edge_ptr[p]:edge_ptr[p + 1]]
        src, dst = src_all[eids], dst_all[eids]
        sp = part[src]
        intra = sp == p
        # intra edges: in-CSR over the inner nodes, edge ids ascending inside a row
        i_eid, i_src, i_dst = eids[intra], pos[src[intra]], pos[dst[intra]]
        order = torch.argsort(i_dst, stable=True)
        i_eid, i_src, i_dst = i_eid[order], i_src[order], i_dst[order]
        rowptr = torch.zeros(inner.numel() + 1, dtype=torch.long)
        rowptr[1:] = torch.bincount(i_dst, minlength=inner.numel()).cumsum(0)
        cross = ~intra
        c_eid, c_src, c_part = eids[cross], src[cross], sp[cross]
        halo_nodes = torch.unique(c_src) if halo else torch.empty(0, dtype=torch.long)
        nodes = torch.cat([inner, halo_nodes])
        arrays = {
            "nodes": nodes, "rowptr": rowptr, "col": i_src, "eid": i_eid,
            "cross_src": c_src, "cross_part": c_part.to(torch.int32), "cross_pos": pos[c_src],
            "cross_dst": pos[dst[cross]], "cross_eid": c_eid,
            "y": data.y[inner],
        }
        for k in SPLITS:
            arrays[k] = masks[k][inner].nonzero().view(-1)
        for name, arr in arrays.items():
            _save(folder, part_file(p, name), arr, files)
        _save(folder, part_file(p, "x"), data.x[nodes], files)  # one part's feature rows at a time
        if data.edge_attr is not None:
            _save(folder, part_file(p, "edge_attr"), data.edge_attr[i_eid], files)
            _save(folder, part_file(p, "cross_edge_attr"), data.edge_attr[c_eid], files)
        parts_meta.append({"inner": int(inner.numel()), "halo": int(halo_nodes.numel()),
                           "intra_edges": int(i_eid.numel()), "cross_edges": int(c_eid.numel())})
    return parts_meta


def store_bytes(root: str) -> int:
    """Bytes of every file the store's ``meta.json`` lists (its size on disk, ``meta.json`` excluded)."""
    with open(os.path.join(root, META)) as fh:
        return sum(int(f["bytes"]) for f in json.load(fh)["files"].values())


__all__ = ["write_store", "check_store_args", "check_out", "store_bytes", "StoreError"]
