"""Reading a partitioned graph store: ``meta.json``, file checks, one part's arrays (features memory-mapped).

A store is the folder ``graphscale data partition`` writes (writer:
:mod:`graphscale.sampling.store_writer`; format: ``docs/partitioned.md``). It is immutable and
versioned: ``meta.json`` names the data set, its shape, the partition (method, parts, seed, halo)
and the size, ``.npy`` header and sha256 of every file; ``book.npy`` maps node -> part; folder
``part-NNNNN/`` holds one part. A reader opens ``meta.json`` and only the parts it owns, so ranks
of a job each read their own share, and node features (``x.npy``) are mapped with
``np.load(mmap_mode="r")``: processes on one machine share the page cache, and a graph larger than
RAM is paged in as batches touch it (DGL ``partition_graph`` / ``DistGraph`` and PyG's
``Partitioner`` folders are the models; OGB ships papers100M's features as ``.npy`` for the same reason).

Part ``p`` with ``n`` inner nodes, ``h`` halo nodes, ``e`` intra-part edges and ``c`` edges that
enter it from other parts (``part-NNNNN/<file>``, every integer array int64 unless said):

=================  ==================  ===========================================================
file               shape, dtype        what
=================  ==================  ===========================================================
nodes.npy          [n + h]             global ids: the inner nodes ascending, then the halo nodes
                                       ascending (``h = 0`` unless written with ``--halo 1``)
rowptr.npy         [n + 1]             in-CSR of the intra-part edges over the inner nodes: row
                                       ``i`` = the edges that end at local node ``i``
col.npy            [e]                 local id of each intra edge's source (``< n``)
eid.npy            [e]                 global edge id of each intra edge
cross_src.npy      [c]                 global id of the source of each edge entering from another part
cross_part.npy     [c] int32           the part of that source
cross_pos.npy      [c]                 the source's position among its own part's inner nodes
cross_dst.npy      [c]                 local id of the target (``< n``)
cross_eid.npy      [c]                 global edge id
x.npy              [n + h, F]          node features (float, as loaded), halo rows after the inner
y.npy              [n] or [n, T]       labels of the inner nodes (int64 classes / float 0-1 tasks)
train/valid/test   [k]                 local ids (``< n``) of the inner nodes in each split
edge_attr.npy      [e, D]              edge features of the intra edges (only when the graph has them)
cross_edge_attr    [c, D]              edge features of the entering edges (idem)
=================  ==================  ===========================================================

Checks at open (:func:`verify_files`): every file of the opened parts must exist, have the byte
size and ``.npy`` header (dtype, shape) that ``meta.json`` records (a missing or truncated file is
a :class:`StoreError` naming it), and, with ``checksum=True``, the recorded sha256 (reads each
file once; hashlib's sha256 ran at 573 MiB/s on one core of the 2-core development machine).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from graphscale.errors import DataError

FORMAT = "graphscale-partitioned-store"
VERSION = 1
META = "meta.json"
BOOK = "book.npy"
SPLITS = ("train", "valid", "test")
#: files every part has
PART_FILES = ("nodes", "rowptr", "col", "eid", "cross_src", "cross_part", "cross_pos", "cross_dst", "cross_eid",
              "x", "y", *SPLITS)
#: files a part has when the graph has edge features
EDGE_FILES = ("edge_attr", "cross_edge_attr")
_META_KEYS = ("dataset", "data_config", "fingerprint", "num_nodes", "num_edges", "num_features", "num_outputs",
              "edge_dim", "task", "metric", "evaluator", "method", "num_parts", "seed", "halo", "parts", "files",
              "split_sizes")


class StoreError(DataError):
    """A partitioned store is missing, unreadable, incomplete, corrupt or not the one the config names."""


def part_dir(p: int) -> str:
    """Folder name of part ``p`` inside a store (``part-00042``)."""
    return f"part-{p:05d}"


def part_file(p: int, name: str) -> str:
    """Path of file ``name`` (without ``.npy``) of part ``p``, relative to the store."""
    return f"{part_dir(p)}/{name}.npy"


def fingerprint(data_config: dict) -> str:
    """sha256 of a data config (canonical JSON): identifies the data set a store was written from."""
    return hashlib.sha256(json.dumps(data_config, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def read_meta(root: str) -> dict:
    """``meta.json`` of the store at ``root``, checked for format, version and completeness.

    Raises:
        StoreError: no folder / no meta.json / unreadable / not JSON / another format or version /
            a key missing / the recorded fingerprint does not match the recorded data config.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        what = "is a file" if os.path.exists(root) else "does not exist"
        raise StoreError(f"partitioned store {root!r} {what}; expected the folder written by "
                         f"'graphscale data partition CONFIG --out {root}'")
    path = os.path.join(root, META)
    if not os.path.isfile(path):
        tmp = [n for n in os.listdir(os.path.dirname(os.path.abspath(root)) or ".")
               if n.startswith(os.path.basename(os.path.abspath(root)) + ".tmp-")]
        hint = f" (an interrupted write left {tmp[0]!r}: run the partition step again)" if tmp else ""
        raise StoreError(f"{path} does not exist: {root!r} is not a complete partitioned store{hint}")
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except OSError as exc:
        raise StoreError(f"{path} cannot be read ({exc.strerror or exc}); check the folder's permissions") from None
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}); the store is damaged: write it again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StoreError(f"{path}: format {found!r}, expected {FORMAT!r}; this is not a graphscale partitioned store")
    if meta.get("version") != VERSION:
        raise StoreError(f"{path}: format version {meta.get('version')!r}, but this graphscale reads version "
                         f"{VERSION}; write the store again with this graphscale (graphscale data partition)")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise StoreError(f"{path} lacks the key(s) {', '.join(missing)}; the store is damaged: write it again")
    if fingerprint(meta["data_config"]) != meta["fingerprint"]:
        raise StoreError(f"{path}: the fingerprint does not match the recorded data_config (the file was edited?); "
                         f"write the store again")
    if len(meta["parts"]) != meta["num_parts"]:
        raise StoreError(f"{path}: {len(meta['parts'])} part entries for num_parts={meta['num_parts']}")
    return meta


def _npy_header(path: str) -> tuple[np.dtype, tuple]:
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return dtype, tuple(shape)


def files_of(meta: dict, parts) -> list[str]:
    """The store-relative paths of the files of ``parts`` (every file ``meta.json`` lists for them)."""
    prefixes = tuple(part_dir(p) + "/" for p in parts)
    return [f for f in meta["files"] if f.startswith(prefixes)]


def verify_files(root: str, meta: dict, names, checksum: bool = True) -> None:
    """Check the files ``names`` (store-relative) against ``meta.json``: present, the recorded byte
    size, the recorded ``.npy`` dtype and shape, and (``checksum``) the recorded sha256.

    Raises:
        StoreError: naming the first file that is missing, truncated, of another shape or corrupt.
    """
    for name in names:
        rec = meta["files"].get(name)
        path = os.path.join(root, name)
        if rec is None:
            raise StoreError(f"{root}/{META} lists no file {name!r}; the store is damaged: write it again")
        if not os.path.isfile(path):
            raise StoreError(f"{path} is missing (listed in {META}); the store is incomplete: write it again")
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise StoreError(f"{path} cannot be read ({exc.strerror or exc})") from None
        if size != rec["bytes"]:
            cut = "truncated" if size < rec["bytes"] else "longer than written"
            raise StoreError(f"{path} has {size} bytes, expected {rec['bytes']} ({cut}); write the store again")
        try:
            dtype, shape = _npy_header(path)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is not a readable .npy file ({exc}); write the store again") from None
        if str(dtype) != rec["dtype"] or list(shape) != rec["shape"]:
            raise StoreError(f"{path} holds {dtype} {list(shape)}, expected {rec['dtype']} {rec['shape']} "
                             f"(from {META}); write the store again")
        if checksum and file_sha256(path) != rec["sha256"]:
            raise StoreError(f"{path}: sha256 differs from the one in {META} (the file changed after writing); "
                             f"write the store again")


def _load(root: str, p: int, name: str, mmap: bool = False) -> np.ndarray:
    path = os.path.join(root, part_file(p, name))
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc})") from None


@dataclass
class Part:
    """One part of a store, as :func:`open_part` returns it.

    Index arrays are in memory (``LongTensor``), features stay memory-mapped (``np.memmap``):
    gather the rows a batch needs with :meth:`feature_rows`.

    Attributes:
        index: the part's id ``p``.
        num_inner: ``n``, inner nodes (local ids ``0..n-1``); halo nodes follow (``h = nodes.numel() - n``).
        nodes: ``[n + h]`` global ids.
        rowptr, col, eid: in-CSR of the intra-part edges (``[n + 1]``, ``[e]``, ``[e]``).
        cross_src, cross_part, cross_pos, cross_dst, cross_eid: the ``c`` edges entering from other parts
            (``None`` when opened with ``cross=False``; ``num_cross`` is then read from ``meta.json``).
        x: ``np.memmap [n + h, F]``.
        y: ``[n]`` or ``[n, T]`` labels of the inner nodes.
        split: ``{'train', 'valid', 'test'}`` -> local ids of inner nodes.
        edge_attr, cross_edge_attr: ``np.memmap [e, D]`` / ``[c, D]`` or ``None``.
    """

    index: int
    num_inner: int
    nodes: Tensor
    rowptr: Tensor
    col: Tensor
    eid: Tensor
    cross_src: Tensor
    cross_part: Tensor
    cross_pos: Tensor
    cross_dst: Tensor
    cross_eid: Tensor
    x: np.ndarray
    y: Tensor
    split: dict
    edge_attr: np.ndarray | None = None
    cross_edge_attr: np.ndarray | None = None
    cross_edges: int | None = None  # c as meta.json records it (used when the cross_* arrays are not read)

    @property
    def num_halo(self) -> int:
        return self.nodes.numel() - self.num_inner

    @property
    def num_intra(self) -> int:
        return self.col.numel()

    @property
    def num_cross(self) -> int:
        return self.cross_src.numel() if self.cross_src is not None else int(self.cross_edges)

    def intra_dst(self) -> Tensor:
        """``[e]`` local target of every intra edge (the CSR rows expanded)."""
        return torch.repeat_interleave(torch.arange(self.num_inner), self.rowptr[1:] - self.rowptr[:-1])


def open_part(root: str, meta: dict, p: int, mmap: bool = True, cross: bool = True) -> Part:
    """Open part ``p`` of the store at ``root`` (files checked with :func:`verify_files` first by
    the caller); ``x`` and the edge features are memory-mapped when ``mmap``. ``cross=False`` leaves
    the entering edges' five index arrays unread (``None``; 40 bytes per entering edge not held in memory), for
    readers that never use them (Cluster-GCN batches of one part without a halo)."""
    if not 0 <= p < meta["num_parts"]:
        raise StoreError(f"part {p} does not exist: the store has parts 0..{meta['num_parts'] - 1}")

    def t(name):
        return torch.from_numpy(np.ascontiguousarray(_load(root, p, name)))

    def c(name):
        return t(name) if cross else None

    edge = meta["edge_dim"] is not None
    cross_part = c("cross_part")
    return Part(
        index=p, num_inner=int(meta["parts"][p]["inner"]), nodes=t("nodes"), rowptr=t("rowptr"), col=t("col"),
        eid=t("eid"), cross_src=c("cross_src"), cross_part=None if cross_part is None else cross_part.long(),
        cross_pos=c("cross_pos"), cross_dst=c("cross_dst"), cross_eid=c("cross_eid"), x=_load(root, p, "x", mmap),
        y=t("y"), split={k: t(k) for k in SPLITS},
        edge_attr=_load(root, p, "edge_attr", mmap) if edge else None,
        cross_edge_attr=_load(root, p, "cross_edge_attr", mmap) if edge else None,
        cross_edges=int(meta["parts"][p]["cross_edges"]))


def load_book(root: str, meta: dict, mmap: bool = True) -> np.ndarray:
    """``book.npy``: the part of every node (``[N]`` int32), memory-mapped."""
    path = os.path.join(root, BOOK)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path} cannot be read ({exc})") from None


def owned_parts(num_parts: int, rank: int, world_size: int) -> list[int]:
    """The parts rank ``rank`` of ``world_size`` owns: ``p`` with ``p mod world_size == rank``."""
    if world_size > num_parts:
        raise StoreError(f"{world_size} processes but the store has only {num_parts} part(s): every process needs "
                         f"at least one part; partition into >= {world_size} parts or use fewer processes")
    return list(range(rank, num_parts, world_size))


def gather_rows(arrays: list, offsets: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx`` of the row-wise concatenation of ``arrays`` (``np.ndarray`` / ``np.memmap``, each
    ``[n_k, F]``; ``offsets = [0, n_0, n_0 + n_1, ...]``) without concatenating them: only the
    requested rows are read (from the page cache or disk for a memmap).

    Returns:
        ``Tensor[len(idx), F]`` (a copy).
    """
    idx = idx.long().cpu()
    first = arrays[0]
    out = torch.empty((idx.numel(), *first.shape[1:]), dtype=torch.from_numpy(np.empty(0, first.dtype)).dtype)
    if idx.numel() == 0:
        return out
    which = torch.searchsorted(offsets[1:], idx, right=True)
    order = torch.argsort(which, stable=True)
    counts = torch.bincount(which, minlength=len(arrays)).tolist()
    start = 0
    for k, cnt in enumerate(counts):
        if cnt == 0:
            continue
        sel = order[start:start + cnt]
        start += cnt
        rows = (idx[sel] - offsets[k]).numpy()
        # numpy fancy indexing reads only these rows of a memmap; sorted rows read the file in order
        srt = np.argsort(rows, kind="stable")
        block = np.asarray(arrays[k][rows[srt]])
        out[sel[torch.from_numpy(srt)]] = torch.from_numpy(block)
    return out
