"""Node partitioners: a registry of functions ``(edge_index, num_nodes, num_parts, *, seed, **kwargs)
-> part`` where ``part`` is a ``LongTensor[num_nodes]`` with values in ``[0, num_parts)``.

Registered: ``metis`` (multilevel k-way min-cut through ``pymetis``; Karypis & Kumar 1998, as used by
Cluster-GCN, Chiang et al. KDD 2019), ``random`` and ``contiguous``. :func:`partition` is the one
entry point; given ``cache_dir`` it stores each assignment on disk keyed by a hash of the graph and
the parameters, so a second run does not repartition.

Computing an assignment is kept apart from using it (DESIGN.md rule 8): batch builders in
:mod:`graphscale.sampling.subgraph` and :mod:`graphscale.sampling.cluster` take a ``part`` tensor,
so they are tested with hand-made input.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import warnings
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from graphscale._features import require
from graphscale.atomic import save_torch
from graphscale.errors import ConfigError, DataError

#: name -> partitioner(edge_index, num_nodes, num_parts, *, seed, **kwargs) -> LongTensor[num_nodes]
PARTITIONERS: dict[str, Callable[..., Tensor]] = {}


def register_partitioner(name: str):
    def deco(fn):
        PARTITIONERS[name] = fn
        return fn
    return deco


def check_num_parts(num_parts: int, num_nodes: int) -> None:
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ConfigError(f"num_parts must be a positive integer, got {num_parts!r}")
    if num_parts > num_nodes:
        raise ConfigError(f"num_parts={num_parts} is larger than the number of nodes ({num_nodes}); "
                          f"expected 1 <= num_parts <= {num_nodes}")


def check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    """Reject an ``edge_index`` that is not an integer ``[2, E]`` tensor with ids in ``[0, num_nodes)``."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise DataError(f"edge_index must be a LongTensor of shape [2, E], got {shape}")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise DataError(f"edge_index must hold integer node ids, got dtype {edge_index.dtype}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise DataError(f"edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}], "
                        f"expected ids in [0, {num_nodes})")


def _check_weights(w, length: int, what: str) -> Tensor:
    w = torch.as_tensor(w)
    if w.dtype == torch.bool:
        w = w.long()
    if w.dim() != 1 or w.size(0) != length:
        raise DataError(f"{what} must have shape [{length}], got {tuple(w.shape)}")
    if w.dtype.is_floating_point and not bool(torch.isfinite(w).all()):
        raise DataError(f"{what} holds NaN or infinite values")
    if w.numel() and float(w.min()) < 0:
        raise DataError(f"{what} must be non-negative, got a minimum of {float(w.min())}")
    return w


def _as_metis_ints(w: Tensor, scale_to: int) -> Tensor:
    """Non-negative weights -> int64 as METIS wants them. Integer-valued input is kept as is; other
    floats are scaled so the largest becomes ``scale_to`` (rounded)."""
    if not w.dtype.is_floating_point or bool((w == w.round()).all()):
        return w.round().long() if w.dtype.is_floating_point else w.long()
    top = w.max().clamp_min(torch.finfo(w.dtype).tiny)
    return (w / top * scale_to).round().long()


#: keys (one per directed pair) per block of rows in :func:`metis_input`'s unweighted construction:
#: 2^24 int64 keys = 128 MiB, small next to a graph that needs blocks at all (105M edges: 13 blocks)
METIS_BLOCK_KEYS = 1 << 24
#: edges scanned at a time when a block's keys are gathered (bounds the temporary masks to ~4 MiB)
_SCAN_CHUNK = 1 << 22


def metis_input(edge_index: Tensor, num_nodes: int, edge_weight: Tensor | None = None, *,
                block_keys: int = METIS_BLOCK_KEYS) -> tuple[Tensor, Tensor, Tensor | None]:
    """The graph METIS can take: symmetric, without self-loops or duplicate edges, as CSR.

    Args:
        edge_index: ``[2, E]`` edges, any direction, duplicates and self-loops allowed.
        num_nodes: ``N``.
        edge_weight: optional ``[E]`` non-negative weights; the weight of an undirected pair is the
            largest over its copies (either direction); zero-weight edges are dropped.
        block_keys: without weights, the CSR is built one block of rows at a time, each block of
            about this many (directed) pairs: the pairs ``row * N + col`` whose row falls in the block
            are gathered from both directions of every edge, sorted in place and deduplicated, then
            appended. Peak memory beyond the input is the result and one block's keys: +2.0 x the
            bytes of an int64 ``[E]`` array, measured, where concatenating, masking and
            ``torch.unique``-ing all ``2E`` pairs at once peaked at +14.3 x. The result does not
            depend on it.

    Returns:
        ``(rowptr [N+1], col [M], weight [M] or None)``, int64, where ``M`` counts both directions
        of every undirected edge once; ``col`` ascending inside each row.
    """
    if edge_weight is not None:
        return _metis_input_weighted(edge_index, num_nodes, edge_weight)
    if not (isinstance(block_keys, int) and block_keys >= 1):
        raise ConfigError(f"block_keys must be a positive integer, got {block_keys!r}")
    n = int(num_nodes)
    src, dst = edge_index[0].numpy(), edge_index[1].numpy()  # views (any integer dtype, any stride)
    e = src.shape[0]
    rowptr = np.zeros(n + 1, dtype=np.int64)
    # An upper bound on each row's pairs (both directions, before removing self-loops and duplicates)
    # places the block boundaries; N-sized only.
    bound = np.bincount(src, minlength=n).astype(np.int64, copy=False)
    bound += np.bincount(dst, minlength=n)
    np.cumsum(bound, out=bound)
    total = int(bound[-1]) if n else 0
    cuts = np.searchsorted(bound, np.arange(block_keys, total, block_keys, dtype=np.int64), side="right")
    del bound
    edges = np.unique(np.concatenate([[0], cuts, [n]])).tolist()
    # The result is written in place, block after block, into a buffer of the upper bound 2E: pages
    # are only touched (made resident) as far as the blocks fill it, and the tail is given back below.
    col = np.empty(max(total, 1), dtype=np.int64)
    w = 0
    for a, b in itertools.pairwise(edges):
        pieces = []
        for s, d in ((src, dst), (dst, src)):  # row = source, then row = target (the reverse edge)
            for c0 in range(0, e, _SCAN_CHUNK):
                sc, dc = s[c0:c0 + _SCAN_CHUNK], d[c0:c0 + _SCAN_CHUNK]
                m = (sc >= a) & (sc < b) & (sc != dc)
                if m.any():
                    k = sc[m].astype(np.int64)
                    k *= n  # fits int64 for N < 3e9
                    k += dc[m]
                    pieces.append(k)
        if not pieces:
            rowptr[a + 1:b + 1] = w
            continue
        keys = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        del pieces
        keys.sort()  # in place: row-major order = CSR order
        if keys.size > 1:
            first = np.empty(keys.size, dtype=bool)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            keys = keys[first]
            del first
        # rowptr[r + 1] = pairs with row <= r
        rowptr[a + 1:b + 1] = w + np.searchsorted(keys, np.arange(a + 1, b + 1, dtype=np.int64) * n)
        np.remainder(keys, n, out=col[w:w + keys.size])
        w += keys.size
        del keys
    col.resize(w, refcheck=False)  # realloc: the untouched tail of the 2E buffer goes back, no copy
    return torch.from_numpy(rowptr), torch.from_numpy(col), None


def _metis_input_weighted(edge_index: Tensor, num_nodes: int, edge_weight: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
    # With weights (the in-memory sampler's edge_weight; the partition step never passes them):
    # all 2E pairs at once, the largest weight per pair through torch.unique's inverse.
    src, dst = edge_index[0].long(), edge_index[1].long()
    row, col = torch.cat([src, dst]), torch.cat([dst, src])
    w = torch.cat([edge_weight, edge_weight])
    keep = (row != col) & (w > 0)
    w = w[keep]
    row, col = row[keep], col[keep]
    key = row * num_nodes + col  # fits int64 for N < 3e9
    key, inv = torch.unique(key, return_inverse=True)
    w = torch.zeros(key.numel(), dtype=w.dtype).scatter_reduce_(0, inv, w, "amax", include_self=False)
    row, col = key // num_nodes, key % num_nodes
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long)
    rowptr[1:] = torch.bincount(row, minlength=num_nodes).cumsum(0)
    return rowptr, col, w


def vertex_weights(kind: str, edge_index: Tensor, num_nodes: int, train_mask: Tensor | None = None
                   ) -> Tensor | None:
    """Vertex weights for METIS balance constraints.

    ``'none'`` -> ``None`` (balance node counts); ``'degree'`` -> ``[N]`` degree + 1 (balance edges,
    i.e. work per batch); ``'train'`` -> ``[N]`` ``1 + c * is_train`` with ``c = round(N / n_train)``:
    training nodes carry half the total weight, so parts balance training nodes and node counts
    together (one blended constraint: pymetis exposes no multi-constraint partitioning), and every
    batch gets training signal.
    """
    if kind == "none":
        return None
    if kind == "degree":
        return torch.bincount(edge_index.reshape(-1).long(), minlength=num_nodes) + 1
    if kind == "train":
        if train_mask is None:
            raise ConfigError("vertex_weight='train' needs the training-node mask (train_mask)")
        train_mask = torch.as_tensor(train_mask)
        if train_mask.dtype != torch.bool:  # an index list of training nodes
            idx = train_mask.long()
            train_mask = torch.zeros(num_nodes, dtype=torch.bool)
            train_mask[idx] = True
        if train_mask.numel() != num_nodes:
            raise DataError(f"train_mask must have {num_nodes} entries, got {train_mask.numel()}")
        n_train = int(train_mask.sum())
        c = max(1, round(num_nodes / max(n_train, 1)))
        return 1 + c * train_mask.long()
    raise ConfigError(f"unknown vertex weight {kind!r}; expected 'none', 'degree' or 'train'")


def _fill_isolated(part: Tensor, isolated: Tensor, num_parts: int, vw: Tensor | None) -> None:
    """Put isolated nodes (they add no cut) into the lightest parts, one at a time.

    Load = node count / N plus, per weight constraint, weight / total weight: a greedy balance of
    every constraint at once.
    """
    n = part.numel()
    cols = [torch.ones(n, dtype=torch.float64)]
    if vw is not None:
        cols.append(vw.double())
    share = torch.zeros(n, dtype=torch.float64)
    for c in cols:
        total = float(c.sum())
        if total > 0:
            share += c / total
    placed = torch.ones(n, dtype=torch.bool)
    placed[isolated] = False
    load = torch.zeros(num_parts, dtype=torch.float64).index_add_(0, part[placed], share[placed])
    heap = [(float(load[p]), p) for p in range(num_parts)]
    heapq.heapify(heap)
    share_l = share[isolated].tolist()
    out = []
    for s in share_l:
        ld, p = heapq.heappop(heap)
        out.append(p)
        heapq.heappush(heap, (ld + s, p))
    part[isolated] = torch.tensor(out, dtype=torch.long)


def _fill_empty_parts(part: Tensor, num_parts: int) -> None:
    """Give every empty part one node taken from the largest part (METIS may leave a part empty on
    tiny or disconnected graphs; a sampler expects every part to hold a node)."""
    counts = torch.bincount(part, minlength=num_parts)
    for p in (counts == 0).nonzero().view(-1).tolist():
        big = int(counts.argmax())
        node = int((part == big).nonzero()[-1])
        part[node] = p
        counts[big] -= 1
        counts[p] += 1


@register_partitioner("metis")
def metis_partition(edge_index: Tensor, num_nodes: int, num_parts: int, *, seed: int = 0,
                    vertex_weight: Tensor | None = None, edge_weight: Tensor | None = None,
                    imbalance: float = 0.03, recursive: bool | None = None, **_: object) -> Tensor:
    """METIS k-way partition minimising the edge cut (Karypis & Kumar 1998), as Cluster-GCN builds
    its clusters (Chiang et al., KDD 2019, Sec. 3.2).

    The input is made safe for METIS first (:func:`metis_input`: symmetrised, self-loops and
    duplicates removed); METIS sees only non-isolated nodes, and isolated nodes then fill the
    lightest parts; no part is left empty.

    Args:
        edge_index: ``[2, E]`` edges (directed graphs are treated as undirected).
        num_nodes: ``N``.
        num_parts: ``1 <= num_parts <= N``.
        seed: METIS random seed (equal seeds give equal assignments).
        vertex_weight: optional ``[N]`` non-negative weights; METIS balances their sum across parts
            (e.g. :func:`vertex_weights`). Non-integer floats are scaled. One constraint only:
            pymetis 2025.2 hands METIS ``ncon = 1`` whatever it is given (its wrapper.cpp), so a
            multi-constraint partition cannot be asked for through it.
        edge_weight: optional ``[E]`` non-negative weights; METIS minimises the cut weight.
        imbalance: allowed load imbalance, ``max part weight <= (1 + imbalance) * mean``
            (METIS ``ufactor = 1000 * imbalance``; k-way METIS honours it approximately).
        recursive: recursive bisection instead of k-way (default: pymetis' choice, ``num_parts <= 8``).

    Returns:
        ``LongTensor[N]`` part of every node.
    """
    require("pymetis", "the 'metis' partitioner")
    check_num_parts(num_parts, num_nodes)
    check_edge_index(edge_index, num_nodes)
    check_metis_options(num_nodes, vertex_weight, imbalance)
    ew = None
    if edge_weight is not None:
        ew = _check_weights(edge_weight, edge_index.size(1), "edge_weight")
        ew = ew.double() if ew.dtype.is_floating_point else ew.long()

    rowptr, col, cw = metis_input(edge_index, num_nodes, ew)
    if cw is not None:
        cw = _as_metis_ints(cw, scale_to=1000).clamp_min(1)
    return metis_partition_csr(rowptr, col, num_parts, seed=seed, vertex_weight=vertex_weight, edge_weight=cw,
                               imbalance=imbalance, recursive=recursive)


def check_metis_options(num_nodes: int, vertex_weight, imbalance) -> Tensor | None:
    """Check METIS's ``imbalance`` and ``vertex_weight`` (before long work); the weights as METIS ints."""
    if not (isinstance(imbalance, (int, float)) and 0 < imbalance <= 10):
        raise ConfigError(f"imbalance must be a number in (0, 10] (e.g. 0.03 = 3%), got {imbalance!r}")
    if vertex_weight is None:
        return None
    return _as_metis_ints(_check_weights(vertex_weight, num_nodes, "vertex_weight"), scale_to=10_000)


def metis_partition_csr(rowptr: Tensor, col: Tensor, num_parts: int, *, seed: int = 0,
                        vertex_weight: Tensor | None = None, edge_weight: Tensor | None = None,
                        imbalance: float = 0.03, recursive: bool | None = None) -> Tensor:
    """:func:`metis_partition` on a graph already in METIS's form, the output of :func:`metis_input`.

    The step that writes a partitioned store builds this input itself, so that it can put the rest of
    the graph on disk while METIS runs (:func:`graphscale.sampling.store_writer.write_store`).

    Args:
        rowptr: ``[N+1]`` int64 CSR row pointers of the symmetric graph without loops or duplicates.
        col: ``[M]`` int64 column ids; **relabelled in place** when some nodes are isolated (it is the
            buffer METIS reads: no second copy of it).
        num_parts, seed, vertex_weight, imbalance, recursive: as for :func:`metis_partition`.
        edge_weight: ``[M]`` positive integer weights per CSR entry, or ``None``.

    Returns:
        ``LongTensor[N]`` part of every node.
    """
    require("pymetis", "the 'metis' partitioner")
    import pymetis

    num_nodes = rowptr.numel() - 1
    check_num_parts(num_parts, num_nodes)
    vw = check_metis_options(num_nodes, vertex_weight, imbalance)
    cw = edge_weight
    deg = rowptr[1:] - rowptr[:-1]
    conn = (deg > 0).nonzero().view(-1)
    isolated = (deg == 0).nonzero().view(-1)
    part = torch.zeros(num_nodes, dtype=torch.long)

    k = min(num_parts, conn.numel())
    if k > 1:
        # Relabel connected nodes 0..n_conn-1: isolated nodes have no CSR entries, so only ids change
        # (in place, a chunk at a time: no second edge-length array; nothing to do without isolated nodes).
        sub_ptr = torch.cat([torch.zeros(1, dtype=torch.long), deg[conn].cumsum(0)])
        if isolated.numel():
            new_id = torch.full((num_nodes,), -1, dtype=torch.long)
            new_id[conn] = torch.arange(conn.numel())
            for c0 in range(0, col.numel(), _SCAN_CHUNK):
                chunk = col[c0:c0 + _SCAN_CHUNK]
                chunk.copy_(new_id[chunk])
            del new_id
        dtype = pymetis.zero_copy_dtype()  # METIS's idx_t: int64 in pymetis 2025.2's wheels, no copy then
        vw_sub = None
        if vw is not None:
            vw_c = vw[conn]
            if int(vw_c.sum()) > 0:  # all-zero weights would put every node into part 0
                vw_sub = vw_c.numpy().astype(dtype, copy=False)
        adjacency = pymetis.CSRAdjacency(sub_ptr.numpy().astype(dtype, copy=False),
                                         col.numpy().astype(dtype, copy=False))
        opts = pymetis.Options(seed=int(seed) % (2**31 - 1), ufactor=max(1, int(round(imbalance * 1000))))
        res = pymetis.part_graph(k, adjacency, vweights=vw_sub,
                                 eweights=None if cw is None else cw.numpy().astype(dtype, copy=False),
                                 recursive=recursive, options=opts)
        part[conn] = torch.from_numpy(np.asarray(res.vertex_part, dtype=np.int64))
    if isolated.numel():
        _fill_isolated(part, isolated, num_parts, vw)
    _fill_empty_parts(part, num_parts)
    return part


@register_partitioner("random")
def random_partition(edge_index: Tensor | None, num_nodes: int, num_parts: int, *, seed: int = 0,
                     **_: object) -> Tensor:
    """Uniform random partition into parts of equal size (+-1), as DeeperGCN / RevGNN train on
    ogbn-proteins: a random permutation cut into ``num_parts`` consecutive chunks."""
    check_num_parts(num_parts, num_nodes)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_nodes, generator=g)
    part = torch.empty(num_nodes, dtype=torch.long)
    part[perm] = torch.arange(num_nodes) * num_parts // num_nodes
    return part


@register_partitioner("contiguous")
def contiguous_partition(edge_index: Tensor | None, num_nodes: int, num_parts: int, *, seed: int = 0,
                         **_: object) -> Tensor:
    """Consecutive node-id ranges of equal size: node ``i`` goes to part ``i * num_parts // n``."""
    check_num_parts(num_parts, num_nodes)
    return torch.arange(num_nodes) * num_parts // num_nodes


def edge_cut(edge_index: Tensor, part: Tensor) -> int:
    """Number of ``edge_index`` columns whose two ends lie in different parts."""
    return int((part[edge_index[0]] != part[edge_index[1]]).sum())


# --------------------------------------------------------------------------------------------
# Caching: METIS on a million-node graph takes seconds to minutes; a rerun (or an evaluation that
# partitions the same graph again) loads the assignment instead.
_MEMO: OrderedDict[str, Tensor] = OrderedDict()
_MEMO_SIZE = 8
_MEMO_NAMES = {"metis"}  # only expensive partitioners are memoised in-process


def clear_memo() -> None:
    """Forget the in-process partition memo (the on-disk cache is untouched)."""
    _MEMO.clear()


def _feed(h, value) -> None:
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():  # the buffer itself: tobytes() would copy the whole edge_index (2 x E x 8 bytes)
            h.update(t.numpy().reshape(-1).view(np.uint8))
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(f"K{k}=".encode())
            _feed(h, value[k])
    else:
        h.update(f"V{value!r};".encode())


def partition_key(name: str, edge_index: Tensor, num_nodes: int, num_parts: int, seed: int,
                  **kwargs) -> str:
    """Hex digest of the graph (``edge_index`` bytes as int64, ``num_nodes``) and the parameters."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {"v": 1, "name": name, "num_nodes": int(num_nodes), "num_parts": int(num_parts),
              "seed": int(seed), "edge_index": edge_index.long(), "kwargs": kwargs})
    return h.hexdigest()


def partition(name: str, edge_index: Tensor | None, num_nodes: int, num_parts: int, *, seed: int = 0,
              cache_dir: str | os.PathLike | None = None, **kwargs) -> Tensor:
    """Run the partitioner registered as ``name``; the one entry point.

    Args:
        name: a key of :data:`PARTITIONERS`.
        edge_index, num_nodes, num_parts, seed: as the partitioner takes them.
        cache_dir: folder for cached assignments, ``<cache_dir>/<name>-<hash>.pt`` (written
            atomically), keyed by :func:`partition_key`. ``None``: no disk cache. METIS results are
            also memoised in-process (last 8), so evaluation can re-ask for the same partition cheaply.
        **kwargs: partitioner options (``vertex_weight``, ``edge_weight``, ``imbalance`` for METIS).

    Returns:
        ``LongTensor[num_nodes]`` with values in ``[0, num_parts)``.
    """
    if name not in PARTITIONERS:
        raise ConfigError(f"unknown partitioner {name!r}; expected one of {', '.join(sorted(PARTITIONERS))}")
    check_num_parts(num_parts, num_nodes)
    fn = PARTITIONERS[name]
    use_cache = edge_index is not None and (cache_dir is not None or name in _MEMO_NAMES)
    if not use_cache:
        return fn(edge_index, num_nodes, num_parts, seed=seed, **kwargs)
    check_edge_index(edge_index, num_nodes)
    key = f"{name}-{partition_key(name, edge_index, num_nodes, num_parts, seed, **kwargs)}"
    path = os.path.join(os.fspath(cache_dir), f"{key}.pt") if cache_dir is not None else None
    part = None
    if key in _MEMO:
        _MEMO.move_to_end(key)
        part = _MEMO[key].clone()
        if path is None or os.path.isfile(path):
            return part
    elif path is not None and os.path.isfile(path):
        try:
            loaded = torch.load(path, weights_only=True)
            if (isinstance(loaded, Tensor) and loaded.shape == (num_nodes,) and loaded.dtype == torch.long
                    and (num_nodes == 0 or (int(loaded.min()) >= 0 and int(loaded.max()) < num_parts))):
                part = loaded
            else:
                warnings.warn(f"ignoring malformed cached partition {path}; recomputing", stacklevel=2)
        except Exception as exc:  # a truncated or foreign file: recompute rather than fail
            warnings.warn(f"ignoring unreadable cached partition {path} ({exc}); recomputing", stacklevel=2)
    if part is None or (path is not None and not os.path.isfile(path)):
        if part is None:
            part = fn(edge_index, num_nodes, num_parts, seed=seed, **kwargs)
        if path is not None:
            try:
                save_torch(part, path)
            except OSError as exc:  # e.g. a read-only data root: partition anyway, uncached
                warnings.warn(f"could not cache the partition at {path} ({exc}); set "
                              f"sampler.cache_dir to a writable folder to keep it", stacklevel=2)
    if name in _MEMO_NAMES:
        _MEMO[key] = part.clone()
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return part
