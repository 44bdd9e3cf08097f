"""Small awkward graphs for the aggregation-op tests: odd sizes, duplicate edges, self-loops,
destinations without in-edges and isolated nodes."""
from __future__ import annotations

import pytest
import torch


def make_graph(num_nodes: int = 11, num_edges: int = 37, seed: int = 0, num_src: int | None = None):
    """``edge_index [2, E]`` with duplicates, self-loops, an empty row (node 3 receives nothing) and an
    isolated node (the last one); bipartite when ``num_src`` is given."""
    g = torch.Generator().manual_seed(seed)
    n_src = num_nodes if num_src is None else num_src
    src = torch.randint(0, n_src - 1, (num_edges,), generator=g)
    dst = torch.randint(0, num_nodes - 1, (num_edges,), generator=g)
    dst[dst == 3] = 4
    ei = torch.stack([src, dst])
    extra = torch.tensor([[1, 1, 2, 5, 5, 0], [4, 4, 2, 5, 6, 6]])  # duplicates, self-loops
    return torch.cat([ei, extra], 1)


@pytest.fixture
def graph():
    return make_graph


# Tolerances per dtype (outputs / gradients vs the reference): float64 is exact up to summation
# order; float32 accumulates ~E_row terms of ~1 in a different order.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


@pytest.fixture
def tol():
    return TOL
