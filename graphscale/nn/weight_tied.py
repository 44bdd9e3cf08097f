"""Weight-tied deep GNN stacks: one block's parameters reused across ``L`` layers.

Li, Müller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021, Sec. 3.2:
tying the weights of all layers makes the parameter count O(1) in depth; combined with a reversible
block (WT-RevGNN) the activation memory is O(1) in depth as well. WT-ResGNN (a residual block
reused) keeps O(L) activations and serves as its plain-autograd counterpart.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from graphscale.errors import ConfigError
from graphscale.nn.reversible import GroupRevBlock, run_reversible

__all__ = ["WeightTiedResidual", "WeightTiedReversible"]


def _check_depth(num_layers: int) -> None:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigError(f"num_layers must be an integer >= 1, got {num_layers!r}")


class WeightTiedResidual(nn.Module):
    """WT-ResGNN: ``h <- h + f(h, edge_index, *args)`` repeated ``num_layers`` times with one ``f``.

    Args:
        block: ``f(x, edge_index, *args) -> [N, D]`` (e.g. norm -> act -> conv).
        num_layers: ``L >= 1``.

    Parameters are those of ``block`` alone; activations grow with ``L`` (plain autograd).
    Shapes: ``x [N, D]`` -> ``[N, D]``.
    """

    def __init__(self, block: nn.Module, num_layers: int):
        super().__init__()
        _check_depth(num_layers)
        self.block = block
        self.num_layers = num_layers

    def forward(self, x: Tensor, edge_index: Any, *args) -> Tensor:
        for _ in range(self.num_layers):
            x = x + self.block(x, edge_index, *args)
        return x

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}"


class WeightTiedReversible(nn.Module):
    """WT-RevGNN: one :class:`~graphscale.nn.reversible.GroupRevBlock` applied ``num_layers`` times.

    Runs as one memory-flat reversible stack (:func:`~graphscale.nn.reversible.run_reversible`):
    parameters and activation memory are both O(1) in depth; the tied parameters' gradients are
    summed over the layers.

    Args:
        block: the shared reversible block (its ``disable`` / ``free_input`` /
            ``preserve_rng_state`` flags apply to the whole stack).
        num_layers: ``L >= 1``.

    Shapes: ``x [N, D]`` -> ``[N, D]``.
    """

    def __init__(self, block: GroupRevBlock, num_layers: int):
        super().__init__()
        _check_depth(num_layers)
        if not isinstance(block, GroupRevBlock):
            raise ConfigError(f"WeightTiedReversible takes a GroupRevBlock, got {type(block).__name__}")
        self.block = block
        self.num_layers = num_layers

    def forward(self, x: Tensor, edge_index: Any, *args) -> Tensor:
        b = self.block
        return run_reversible([b] * self.num_layers, x, edge_index, args, disable=b.disable,
                              free_input=b.free_input, preserve_rng_state=b.preserve_rng_state,
                              training=self.training)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}"
