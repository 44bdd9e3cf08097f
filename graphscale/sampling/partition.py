"""Node partitioners: a registry of functions ``(num_nodes, ..., num_parts, seed) -> part`` where
``part`` is a ``LongTensor[num_nodes]`` with values in ``[0, num_parts)``.

Computing an assignment is kept apart from using it (DESIGN.md rule 8): batch builders in
:mod:`graphscale.sampling.subgraph` take a ``part`` tensor, so they are tested with hand-made input.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from graphscale.errors import ConfigError

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


def partition(name: str, edge_index: Tensor | None, num_nodes: int, num_parts: int, *, seed: int = 0,
              **kwargs) -> Tensor:
    """Run the partitioner registered as ``name``."""
    if name not in PARTITIONERS:
        raise ConfigError(f"unknown partitioner {name!r}; expected one of {', '.join(sorted(PARTITIONERS))}")
    return PARTITIONERS[name](edge_index, num_nodes, num_parts, seed=seed, **kwargs)
