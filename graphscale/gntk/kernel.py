"""Graph Neural Tangent Kernel (Du et al., *Graph Neural Tangent Kernel: Fusing Graph Neural Networks
with Graph Kernels*, NeurIPS 2019), graph level, batched in torch.

The kernel of a pair of graphs ``(G, G')`` with ``n`` and ``n'`` nodes follows the infinitely wide GNN
of ``L`` BLOCK operations, each = neighbour aggregation followed by ``R`` fully connected ReLU layers:

* input: ``Sigma^(0) = X X'^T``  (``[n, n']``; ``X`` the one-hot node tags);
* aggregation (each BLOCK starts with it): ``S <- c (.) (A S A'^T) (.) c'^T`` for Sigma and Theta,
  with ``A = adjacency + I`` and ``c_u = 1`` (``scale='uniform'``) or ``1 / (|N(u)| + 1)``
  (``'degree'``), i.e. the paper's ``[(A (x) A') vec S]`` without ever forming the Kronecker product;
* ReLU layer (closed-form arc-cosine kernel, ``c_sigma = 2``): with ``d_u = sqrt(Sigma_GG[u, u])`` from
  the self pairs and ``lam = Sigma / (d d'^T)`` clipped to ``[-1, 1]``,
  ``Sigma <- (lam (pi - arccos lam) + sqrt(1 - lam^2)) / pi * d d'^T``,
  ``dot = (pi - arccos lam) / pi``, ``Theta <- Theta * dot + Sigma``;
* readout: ``2 * sum(Theta^(L))``, or with jumping knowledge ``2 * (sum Sigma^(0) + sum_l sum Theta^(l))``.

This matches the authors' reference code (github.com/KangchengHou/gntk, ``gntk.py``; its
``num_layers`` counts the input layer, so its ``num_layers = layers + 1`` here) to float rounding.

How it is batched: graphs are sorted by size and cut into *blocks* of at most ``chunk_nodes`` padded
nodes. For a pair of blocks ``(I, J)`` the state of every pair ``(i in I, j in J)`` is one tensor
``[g_I, a, g_J, b]`` (``a``, ``b`` the padded sizes); the aggregation is two batched matmuls
(``bmm`` over the graphs of ``I`` on the left, over those of ``J`` on the right). Padded nodes have
zero rows in ``A``, ``X`` and ``c``, so they stay exactly zero and add nothing to the readout. The
self-pair normalisers ``d`` come from the diagonal blocks ``(I, I)`` (computed first), where they are
read off the state itself. Each block pair's result is a *chunk* written atomically to ``chunk_dir``;
a rerun skips the chunks already there.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from graphscale.atomic import atomic_write
from graphscale.errors import ConfigError, DataError

SCALES = ("uniform", "degree")


@dataclass(frozen=True)
class GNTKConfig:
    """Architecture of the infinitely wide GNN the kernel follows.

    Args:
        layers: ``L >= 1`` BLOCK operations (aggregation + MLP); the reference's ``num_layers - 1``.
        mlp_layers: ``R >= 1`` ReLU layers per BLOCK.
        scale: ``'uniform'`` (``c_u = 1``, sum aggregation) or ``'degree'`` (``c_u = 1 / (|N(u)| + 1)``).
        jk: jumping-knowledge readout (sum over the input and every BLOCK) instead of the last BLOCK only.
    """

    layers: int = 2
    mlp_layers: int = 2
    scale: str = "degree"
    jk: bool = True

    def __post_init__(self):
        if not isinstance(self.layers, int) or self.layers < 1:
            raise ConfigError(f"gntk layers must be an integer >= 1 (number of BLOCK operations), got {self.layers!r}")
        if not isinstance(self.mlp_layers, int) or self.mlp_layers < 1:
            raise ConfigError(f"gntk mlp_layers must be an integer >= 1, got {self.mlp_layers!r}")
        if self.scale not in SCALES:
            raise ConfigError(f"gntk scale must be one of {SCALES}, got {self.scale!r}")

    @property
    def name(self) -> str:
        """Short name, e.g. ``L1-R2-degree-jk`` (``-jk`` only with jumping knowledge); :meth:`parse` reads it."""
        return f"L{self.layers}-R{self.mlp_layers}-{self.scale}{'-jk' if self.jk else ''}"

    @classmethod
    def parse(cls, text: str) -> "GNTKConfig":
        """The config named by ``text`` (``L<layers>-R<mlp layers>-<uniform|degree>[-jk]``, as :attr:`name`)."""
        parts = text.split("-")
        ok = (len(parts) in (3, 4) and parts[0][:1] == "L" and parts[0][1:].isdigit() and parts[1][:1] == "R"
              and parts[1][1:].isdigit() and parts[2] in SCALES and (len(parts) == 3 or parts[3] == "jk"))
        if not ok:
            raise ConfigError(f"gntk configuration {text!r}: expected L<layers>-R<mlp layers>-<uniform|degree>[-jk], "
                              f"e.g. L11-R3-degree-jk")
        return cls(int(parts[0][1:]), int(parts[1][1:]), parts[2], len(parts) == 4)


# ------------------------------------------------------------------------ shared recursion pieces
def relu_update(sigma: Tensor, ntk: Tensor, d_r: Tensor, d_c: Tensor) -> tuple[Tensor, Tensor]:
    """One infinitely wide ReLU layer: arc-cosine update of ``(sigma, ntk)``; returns the new pair.

    ``d_r`` / ``d_c`` are the square roots of the self-covariances of the row / column nodes, shaped to
    broadcast against ``sigma`` (zero for padded nodes, whose entries stay zero). ``sigma`` is consumed
    (overwritten); ``ntk`` is left as it was.
    """
    # Element-wise passes dominate the cost (profiled: ~75 % of a MUTAG Gram on CPU), so the update is
    # written in 10 passes: -lam is kept so that pi - arccos(lam) = arccos(-lam) costs one pass.
    neg_inv_r = torch.where(d_r > 0, -1.0 / d_r.clamp_min(1e-300), torch.zeros_like(d_r))
    inv_c = torch.where(d_c > 0, 1.0 / d_c.clamp_min(1e-300), torch.zeros_like(d_c))
    neg_lam = sigma.mul_(neg_inv_r).mul_(inv_c).clamp_(-1.0, 1.0)
    dot = torch.acos(neg_lam)                                    # pi - arccos(lam)
    # 1 - lam^2 >= 0 exactly for |lam| <= 1 in floating point, so no clamp before the sqrt.
    new_sigma = torch.addcmul(_ONE.to(neg_lam), neg_lam, neg_lam, value=-1.0).sqrt_()
    new_sigma.addcmul_(neg_lam, dot, value=-1.0).mul_(d_r * (1.0 / math.pi)).mul_(d_c)
    del neg_lam, sigma
    return new_sigma, torch.addcmul(new_sigma, ntk, dot, value=1.0 / math.pi)


_ONE = torch.ones(())
_COMPILED = {}


def _relu_fn(compile: bool):
    """``relu_update`` or its ``torch.compile``d form (one fused loop instead of 10 passes).

    Measured on this 2-core CPU on a [64, 32, 64, 32] float64 state: 116 ms eager vs 48 ms compiled; the
    first compilation takes about a minute (inductor caches it on disk for later processes).
    """
    if not compile:
        return relu_update
    if "relu" not in _COMPILED:
        _COMPILED["relu"] = torch.compile(relu_update, dynamic=True)
    return _COMPILED["relu"]


def recursion(sigma0: Tensor, aggregate: Callable[[Tensor], Tensor],
              relu: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]],
              readout: Callable[[Tensor], Tensor], cfg: GNTKConfig, per_layer: bool = False):
    """The GNTK recursion shared by the graph- and node-level kernels.

    ``aggregate(S)`` returns a new tensor (the BLOCK's neighbour aggregation); ``relu(sigma, ntk, k)``
    applies ReLU layer ``k`` (``0 .. L*R-1``) and returns the new ``(sigma, ntk)``; ``readout(S)`` maps a
    state to the output (a ``[g_I, g_J]`` sum per graph pair, or the node-pair matrix itself). Returns the readout of
    ``Theta^(L)``, or with ``cfg.jk`` ``readout(Sigma^(0)) + sum_l readout(Theta^(l))``.

    With ``per_layer=True`` it returns the list ``[readout(Sigma^(0)), readout(Theta^(1)), ...,
    readout(Theta^(L))]`` instead (``cfg.jk`` ignored): the recursion up to BLOCK ``l`` does not depend on
    the BLOCKs after it, so this one pass holds the output of every ``L' <= L`` with either readout
    (:func:`combine_layers`).
    """
    parts = [readout(sigma0)] if (cfg.jk or per_layer) else None
    sigma = aggregate(sigma0)
    del sigma0
    ntk = sigma.clone()
    for layer in range(cfg.layers):
        for r in range(cfg.mlp_layers):
            sigma, ntk = relu(sigma, ntk, layer * cfg.mlp_layers + r)
        if per_layer:
            parts.append(readout(ntk))
        elif cfg.jk:
            parts[0] += readout(ntk)
        if layer < cfg.layers - 1:
            sigma = aggregate(sigma)
            ntk = aggregate(ntk)
    if per_layer:
        return parts
    return parts[0] if cfg.jk else readout(ntk)


def combine_layers(parts, layers: int, jk: bool):
    """Output of an ``L = layers`` GNTK from per-layer readouts ``parts[l]`` (``l = 0..L_max``, 0 = input).

    ``parts`` is what :func:`layer_grams` returns (``[L_max + 1, G, G]``) or any sequence/array indexed
    by layer: jumping knowledge sums ``parts[0..L]``, otherwise ``parts[L]``.
    """
    if not 1 <= layers < len(parts):
        raise ConfigError(f"layers must be in [1, {len(parts) - 1}] (the per-layer pass went to L={len(parts) - 1}), "
                          f"got {layers}")
    if not jk:
        return parts[layers]
    out = parts[0] + parts[1]
    for l in range(2, layers + 1):
        out = out + parts[l]
    return out


# ------------------------------------------------------------------------ graph blocks
def _graph_arrays(graphs, features):
    """Validate and return per-graph ``(n, edges [2, E], x [n, F])`` as numpy."""
    if len(graphs) == 0:
        raise DataError("gntk: no graphs given")
    out = []
    width = None
    for i, g in enumerate(graphs):
        n = int(g.num_nodes)
        if n <= 0:
            raise DataError(f"gntk: graph {i} is empty (num_nodes={n}); the GNTK needs at least one node per graph")
        if features is None:
            tags = getattr(g, "tags", None)
            if tags is None or len(tags) != n:
                raise DataError(f"gntk: graph {i} has no node tags/features (tags={tags!r}); give integer node "
                                f"tags or a features array per graph (use degrees for unlabelled graphs)")
            x = tags
        else:
            x = np.asarray(features[i], dtype=np.float64)
            if x.ndim != 2 or x.shape[0] != n:
                raise DataError(f"gntk: features of graph {i} must be [num_nodes={n}, F], got {list(x.shape)}")
            if width is not None and x.shape[1] != width:
                raise DataError(f"gntk: features of graph {i} have {x.shape[1]} columns, graph 0 has {width}")
            width = x.shape[1]
        e = np.asarray(g.edges, dtype=np.int64).reshape(2, -1)
        if e.size and (e.min() < 0 or e.max() >= n):
            raise DataError(f"gntk: graph {i} has edge endpoints in [{e.min()}, {e.max()}], expected [0, {n - 1}]")
        out.append((n, e, x))
    if features is None:
        num_tags = 1 + max(int(np.max(x)) for _, _, x in out)
        out = [(n, e, _one_hot(x, num_tags)) for n, e, x in out]
    return out


def _one_hot(tags, k):
    tags = np.asarray(tags, dtype=np.int64)
    if tags.size and tags.min() < 0:
        raise DataError(f"gntk: node tags must be >= 0, got {tags.min()}")
    x = np.zeros((tags.size, k))
    x[np.arange(tags.size), tags] = 1.0
    return x


def make_blocks(sizes: np.ndarray, chunk_nodes: int) -> list[np.ndarray]:
    """Sort graphs by size and cut them into blocks of at most ``chunk_nodes`` padded nodes.

    A block's padded node count is ``len(block) * max size in block``; a graph larger than
    ``chunk_nodes`` gets a block of its own. Returns a list of graph-index arrays.
    """
    order = np.argsort(sizes, kind="stable")
    blocks, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * int(sizes[i]) > chunk_nodes:
            blocks.append(np.array(cur, dtype=np.int64))
            cur = []
        cur.append(int(i))
    if cur:
        blocks.append(np.array(cur, dtype=np.int64))
    return blocks


class _Block:
    """Padded tensors of one block of graphs: scaled adjacency ``[g, a, a]``, features ``[g, a, F]``."""

    def __init__(self, items, idx, scale, dtype, device):
        self.idx = idx
        self.a = max(items[i][0] for i in idx)
        g, a, f = len(idx), self.a, items[idx[0]][2].shape[1]
        adj = np.zeros((g, a, a))
        x = np.zeros((g, a, f))
        for k, i in enumerate(idx):
            n, e, feats = items[i]
            adj[k, e[0], e[1]] = 1.0
            adj[k, e[1], e[0]] = 1.0
            adj[k, np.arange(n), np.arange(n)] = 1.0
            x[k, :n] = feats
        if scale == "degree":  # c_u = 1 / (|N(u)| + 1) = 1 / rowsum(A + I); zero for padding
            rows = adj.sum(2, keepdims=True)
            adj = np.divide(adj, rows, out=np.zeros_like(adj), where=rows > 0)
        # C A: folding c into A makes c A S A'^T c' two plain batched matmuls.
        self.adj = torch.as_tensor(adj, dtype=dtype, device=device)
        self.x = torch.as_tensor(x, dtype=dtype, device=device)


def _aggregate(s: Tensor, ar: Tensor, ac: Tensor) -> Tensor:
    """``(C_r A_r) S (C_c A_c)^T`` for every pair: ``s`` ``[gi, a, gj, b]`` -> same shape."""
    gi, a, gj, b = s.shape
    t = torch.bmm(ar, s.reshape(gi, a, gj * b))                              # left, batched over I
    t = t.view(gi, a, gj, b).permute(2, 0, 1, 3).reshape(gj, gi * a, b)
    t = torch.bmm(t, ac.transpose(1, 2))                                      # right, batched over J
    return t.view(gj, gi, a, b).permute(1, 2, 0, 3).contiguous()


def _self_diag(s: Tensor) -> Tensor:
    """``[g, a]`` diagonal ``s[i, u, i, u]`` of a square block state ``[g, a, g, a]``."""
    return torch.diagonal(torch.diagonal(s, 0, 0, 2), 0, 0, 1).clone()


def block_pair(bi: _Block, bj: _Block, cfg: GNTKConfig, diag_i: Tensor | None = None,
               diag_j: Tensor | None = None, compile: bool = False,
               per_layer: bool = False) -> tuple[Tensor, Tensor | None]:
    """GNTK values of every graph pair of blocks ``(I, J)``.

    Args:
        diag_i, diag_j: ``[L*R, g, a]`` self-pair normalisers ``sqrt(Sigma_GG[u, u])`` of each ReLU layer;
            ``None`` for a diagonal block ``(I, I)``, where they are read off the state and returned.
        compile: fuse the ReLU update with ``torch.compile``.
        per_layer: return ``[L+1, g_I, g_J]`` per-layer values (``2 * sum Sigma^(0)``, then ``2 * sum Theta^(l)``
            for ``l = 1..L``; ``cfg.jk`` ignored) instead of the kernel values.

    Returns:
        ``([g_I, g_J] kernel values (or [L+1, g_I, g_J]), [L*R, g_I, a] normalisers or None)``.
    """
    self_pair = diag_i is None
    gi, a = bi.x.shape[:2]
    gj, b = bj.x.shape[:2]
    sigma0 = (bi.x.reshape(gi * a, -1) @ bj.x.reshape(gj * b, -1).T).view(gi, a, gj, b)
    diags = []
    update = _relu_fn(compile)

    def relu(sigma, ntk, k):
        if self_pair:
            d = _self_diag(sigma).sqrt_()
            diags.append(d)
            dr, dc = d, d
        else:
            dr, dc = diag_i[k], diag_j[k]
        return update(sigma, ntk, dr.view(gi, a, 1, 1), dc.view(1, 1, gj, b))

    out = recursion(sigma0, lambda s: _aggregate(s, bi.adj, bj.adj), relu, lambda s: s.sum(dim=(1, 3)), cfg,
                    per_layer=per_layer)
    if per_layer:
        out = torch.stack(out)
    return 2.0 * out, (torch.stack(diags) if self_pair else None)


# ------------------------------------------------------------------------ resumable Gram matrix
def _fingerprint(items, cfg, dtype, chunk_nodes, per_layer=False) -> dict:
    h = hashlib.sha1()
    for n, e, x in items:
        h.update(np.int64(n).tobytes())
        h.update(np.ascontiguousarray(e).tobytes())
        h.update(np.ascontiguousarray(x).tobytes())
    meta = {"config": asdict(cfg), "dtype": str(dtype).replace("torch.", ""), "num_graphs": len(items),
            "chunk_nodes": int(chunk_nodes), "graphs_sha1": h.hexdigest(), "format": 1}
    if per_layer:  # chunks hold [L+1, g_I, g_J] per-layer values; jk does not matter then
        meta["config"]["jk"] = None
        meta["readout"] = "per_layer"
    return meta


def _save_atomic(path: str, **arrays) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _default_chunk_nodes(device) -> int:
    # CPU: 512 padded nodes -> 262k pair entries, 2 MiB per float64 state tensor, so the ~10 element-wise
    # passes per ReLU layer stay in cache. Measured (1 thread, MUTAG, L=1, R=2): CPU time 0.35 s at 1024,
    # 0.21 s at 512, 0.22 s at 256, 0.41 s at 128 (per-chunk overhead); IMDB-B 5.7 s at 512, 6.2 s at 256.
    # GPUs want large batched matmuls.
    return 8192 if torch.device(device).type == "cuda" else 512


def gram_matrix(graphs: Sequence, cfg: GNTKConfig = GNTKConfig(), *, features: Sequence | None = None,
                dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                chunk_nodes: int | None = None, chunk_dir: str | None = None,
                progress: bool = True, compile: bool = False, workers: int | None = None) -> np.ndarray:
    """GNTK Gram matrix ``[G, G]`` (float64 numpy) of a list of graphs (Du et al., NeurIPS 2019).

    Args:
        graphs: objects with ``num_nodes``, ``edges`` (``[2, E]`` undirected, either direction, no need for
            self-loops) and, without ``features``, integer ``tags`` (one-hot encoded); e.g.
            :class:`graphscale.data.graph_classification.Graph`.
        cfg: :class:`GNTKConfig`.
        features: optional per-graph ``[n_i, F]`` node features instead of one-hot tags.
        dtype: ``torch.float64`` (default; exact agreement with the reference) or ``torch.float32``.
        device: where the batched matmuls run (``'cpu'`` or ``'cuda'``).
        chunk_nodes: padded nodes per block (memory per block pair ~ ``8 * chunk_nodes**2 * itemsize``).
        chunk_dir: folder for the per-chunk results; an existing folder of the same computation is
            resumed (finished chunks are loaded, not recomputed); one of another computation is refused.
        progress: show a tqdm bar over block pairs.
        compile: fuse the element-wise ReLU update with ``torch.compile`` (~2.4x faster update on CPU
            after a one-off compilation of about a minute; needs a C++ compiler on CPU).
        workers: block pairs computed concurrently by threads. On CPU each runs with one intra-op
            thread (``torch.set_num_threads(1)`` for the duration of the call); default: as many
            workers as torch's intra-op threads on CPU, 1 on CUDA.
    """
    return _gram(graphs, cfg, features, dtype, device, chunk_nodes, chunk_dir, progress, compile, workers, False)


def layer_grams(graphs: Sequence, cfg: GNTKConfig = GNTKConfig(), *, features: Sequence | None = None,
                dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                chunk_nodes: int | None = None, chunk_dir: str | None = None,
                progress: bool = True, compile: bool = False, workers: int | None = None) -> np.ndarray:
    """Per-layer GNTK Gram contributions ``[L+1, G, G]`` from one pass at ``L = cfg.layers``.

    ``out[0] = 2 * sum Sigma^(0)`` (the input layer) and ``out[l] = 2 * sum Theta^(l)`` (BLOCK ``l``) per
    graph pair, for the ``cfg.mlp_layers`` / ``cfg.scale`` architecture (``cfg.jk`` is ignored). The
    recursion up to BLOCK ``l`` is the same whatever ``L >= l`` is, so
    ``combine_layers(out, L', jk)`` equals ``gram_matrix(graphs, GNTKConfig(L', R, scale, jk))`` for every
    ``L' <= L`` and both readouts: the paper's search over the number of BLOCKs and jumping knowledge
    costs one pass at the largest ``L``. Arguments as :func:`gram_matrix` (its chunk folder is not
    interchangeable with this one's; each refuses the other's).
    """
    return _gram(graphs, cfg, features, dtype, device, chunk_nodes, chunk_dir, progress, compile, workers, True)


def _gram(graphs, cfg, features, dtype, device, chunk_nodes, chunk_dir, progress, compile, workers,
          per_layer: bool) -> np.ndarray:
    if dtype not in (torch.float64, torch.float32):
        raise ConfigError(f"gntk dtype must be torch.float64 or torch.float32, got {dtype}")
    items = _graph_arrays(graphs, features)
    chunk_nodes = int(chunk_nodes or _default_chunk_nodes(device))
    if chunk_nodes < 1:
        raise ConfigError(f"gntk chunk_nodes must be >= 1, got {chunk_nodes}")
    sizes = np.array([n for n, _, _ in items], dtype=np.int64)
    blocks = make_blocks(sizes, chunk_nodes)
    if chunk_dir is not None:
        _check_chunk_dir(chunk_dir, _fingerprint(items, cfg, dtype, chunk_nodes, per_layer))
    pairs = [(i, i) for i in range(len(blocks))] + [(i, j) for i in range(len(blocks))
                                                     for j in range(i + 1, len(blocks))]
    gram = np.zeros(((cfg.layers + 1,) if per_layer else ()) + (len(items), len(items)))
    diags: dict[int, Tensor] = {}
    # All blocks up front: their padded adjacencies total ~ sum_g n_g * max n in block, small next to a
    # chunk's state, and the worker threads then share them read-only.
    built = [_Block(items, idx, cfg.scale, dtype, device) for idx in blocks]

    def compute(i: int, j: int):
        path = os.path.join(chunk_dir, f"chunk_{i:05d}_{j:05d}.npz") if chunk_dir else None
        if path and os.path.exists(path):
            with np.load(path) as z:
                return z["gram"], (torch.as_tensor(z["diags"], dtype=dtype, device=device) if i == j else None)
        if i == j:
            vals, d = block_pair(built[i], built[i], cfg, compile=compile, per_layer=per_layer)
        else:
            vals, d = block_pair(built[i], built[j], cfg, diags[i], diags[j], compile=compile,
                                 per_layer=per_layer)
        vals = vals.double().cpu().numpy()
        if i == j:  # (i, j) and (j, i) of a diagonal block differ by rounding: make it exactly symmetric
            vals = 0.5 * (vals + vals.swapaxes(-1, -2))
        if path:
            extra = {"diags": d.cpu().numpy()} if i == j else {}
            _save_atomic(path, gram=vals, **extra)
        return vals, d

    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pairs), desc="gntk gram", unit="chunk", disable=not progress,
               postfix={"graphs": len(items), "blocks": len(blocks)})
    threads = torch.get_num_threads()
    cpu = torch.device(device).type == "cpu"
    workers = int(workers or (threads if cpu else 1))
    if cpu:
        # Parallel over chunks (threads; torch releases the GIL), one intra-op thread each. Measured on
        # the shared 2-core machine, MUTAG, 512-node chunks: 2 intra-op threads 12.0 s wall / 3.4 s CPU,
        # 1 thread 0.44 s / 0.20 s (the threaded element-wise passes on cache-sized chunks mostly spin).
        torch.set_num_threads(1)
    try:
        # Each worker sets its own intra-op threads on start: torch applies the global setting to a new thread
        # only at its first large element-wise op, so until then (measured with mkl_get_max_threads: the whole
        # first block pair of each worker when the blocks are small) MKL ran there with the process default.
        init = (torch.set_num_threads, (1,)) if cpu else (None, ())
        with ThreadPoolExecutor(max_workers=max(1, workers), initializer=init[0], initargs=init[1]) as pool:
            nd = len(blocks)
            for phase in (pairs[:nd], pairs[nd:]):  # diagonal blocks first: they give the normalisers
                for (i, j), (vals, d) in zip(phase, pool.map(lambda p: compute(*p), phase)):
                    if i == j:
                        diags[i] = d
                    gram[(...,) + np.ix_(blocks[i], blocks[j])] = vals
                    gram[(...,) + np.ix_(blocks[j], blocks[i])] = vals.swapaxes(-1, -2)
                    bar.update(1)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return gram


def _check_chunk_dir(chunk_dir: str, meta: dict) -> None:
    os.makedirs(chunk_dir, exist_ok=True)
    path = os.path.join(chunk_dir, "meta.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise ConfigError(f"chunk folder {chunk_dir!r} holds chunks of another computation (differs in "
                              f"{diff}: {[old.get(k) for k in diff]} vs now {[meta.get(k) for k in diff]}); "
                              f"use another folder or delete it")
    else:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, path)


def normalize_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine-normalised Gram matrix ``K_ij / sqrt(K_ii K_jj)`` (the reference's ``gram_nor``)."""
    d = np.sqrt(np.diag(gram))
    if np.any(d <= 0):
        raise DataError(f"cannot normalise a Gram matrix with non-positive diagonal entries "
                        f"(first at index {int(np.argmax(d <= 0))})")
    return gram / d[:, None] / d[None, :]
