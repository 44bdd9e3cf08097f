"""Small random graphs for the GNTK tests."""
from __future__ import annotations

import numpy as np
import pytest

from graphscale.data.graph_classification import Graph


def random_graphs(seed: int, count: int, nmin: int = 1, nmax: int = 9, num_tags: int = 3, p: float = 0.35):
    """``count`` random undirected graphs with ``nmin..nmax`` nodes (isolated nodes and 1-node graphs
    included) and random tags in ``0..num_tags-1``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(nmin, nmax + 1))
        iu = np.triu_indices(n, 1)
        keep = rng.random(iu[0].size) < p
        edges = np.stack([iu[0][keep], iu[1][keep]]).astype(np.int64)
        out.append(Graph(n, edges, rng.integers(0, num_tags, n).astype(np.int64)))
    return out


def one_hot(g: Graph, k: int) -> np.ndarray:
    x = np.zeros((g.num_nodes, k))
    x[np.arange(g.num_nodes), g.tags] = 1.0
    return x


@pytest.fixture
def graphs():
    return random_graphs(0, 9)
