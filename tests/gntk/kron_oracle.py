"""Direct, unbatched GNTK of one pair of graphs in the paper's Kronecker form (test oracle).

Written from the equations of Du et al. (NeurIPS 2019, Section 4) independently of
``graphscale.gntk.kernel``: the pair state is the vector ``vec(Sigma)`` of length ``n1 * n2``, the
aggregation multiplies it by ``c (.) (A1 (x) A2)`` with ``A = adjacency + I``, and every quantity
of a pair is recomputed from scratch (the self pairs that give the ReLU normalisers included).
It is a test oracle only: speed is compared with the authors' own code (``benchmarks/gntk_vs_authors.py``).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


def adjacency(num_nodes: int, edges) -> np.ndarray:
    """Dense symmetric 0/1 adjacency with self-loops: ``A + I``."""
    a = np.zeros((num_nodes, num_nodes))
    e = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    a[e[0], e[1]] = 1.0
    a[e[1], e[0]] = 1.0
    a[np.arange(num_nodes), np.arange(num_nodes)] = 1.0
    return a


def _walk(a1, x1, a2, x2, layers, mlp_layers, scale, norms1=None, norms2=None):
    n1, n2 = a1.shape[0], a2.shape[0]
    kron = sp.kron(sp.csr_matrix(a1), sp.csr_matrix(a2), format="csr")
    if scale == "degree":
        cvec = np.kron(1.0 / a1.sum(1), 1.0 / a2.sum(1))
    else:
        cvec = np.ones(n1 * n2)
    sig = (x1 @ x2.T).reshape(-1)
    sums = [sig.sum()]
    sig = cvec * (kron @ sig)
    theta = sig.copy()
    found = []
    k = 0
    for block in range(layers):
        for _ in range(mlp_layers):
            if norms1 is None:  # a self pair: read the normaliser off the diagonal u == v
                s = np.sqrt(np.diag(sig.reshape(n1, n2)))
                found.append(s)
                p = np.kron(s, s)
            else:
                p = np.kron(norms1[k], norms2[k])
            lam = np.clip(sig / p, -1.0, 1.0)
            ang = np.arccos(lam)
            # E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[p1^2, sig], [sig, p2^2]]),
            # times c_sigma = 2.
            new_sig = 2.0 * p * (np.sin(ang) + (math.pi - ang) * np.cos(ang)) / (2.0 * math.pi)
            dot = 2.0 * (math.pi - ang) / (2.0 * math.pi)
            theta = theta * dot + new_sig
            sig = new_sig
            k += 1
        sums.append(theta.sum())
        if block < layers - 1:
            sig = cvec * (kron @ sig)
            theta = cvec * (kron @ theta)
    return sums, found


def pair_kernel(g1, g2, layers, mlp_layers, scale, jk):
    """GNTK value of one pair; ``g = (A + I [n, n], X [n, F])``."""
    _, norms1 = _walk(g1[0], g1[1], g1[0], g1[1], layers, mlp_layers, scale)
    _, norms2 = _walk(g2[0], g2[1], g2[0], g2[1], layers, mlp_layers, scale)
    sums, _ = _walk(g1[0], g1[1], g2[0], g2[1], layers, mlp_layers, scale, norms1, norms2)
    return 2.0 * (sum(sums) if jk else sums[-1])


def gram(graphs, layers, mlp_layers, scale, jk, norms_cache=True):
    """``[G, G]`` Gram matrix, one pair at a time (self normalisers computed once per graph)."""
    norms = [_walk(a, x, a, x, layers, mlp_layers, scale)[1] for a, x in graphs]
    out = np.zeros((len(graphs), len(graphs)))
    for i in range(len(graphs)):
        for j in range(i, len(graphs)):
            sums, _ = _walk(graphs[i][0], graphs[i][1], graphs[j][0], graphs[j][1], layers, mlp_layers, scale,
                            norms[i], norms[j])
            out[i, j] = out[j, i] = 2.0 * (sum(sums) if jk else sums[-1])
    return out
