"""GraphSAGE (Hamilton, Ying, Leskovec, NeurIPS 2017) on graphscale's :class:`~graphscale.nn.SAGEConv`,
trainable on neighbour-sampled mini-batches and evaluated layer by layer on the full graph."""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphscale.errors import ConfigError
from graphscale.nn.conv import SAGEConv

_NORMS = ("none", "batch", "layer")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    return nn.Identity()


class SAGE(nn.Module):
    """GraphSAGE: ``num_layers`` :class:`~graphscale.nn.SAGEConv` layers
    (``h_i' = W_l mean_{j -> i} h_j + W_r h_i``); between them norm -> ReLU -> dropout, and with
    ``residual=True`` a skip ``h' = h + layer(h)`` wherever the widths agree (hidden -> hidden).

    Every layer depends on its input only through the in-neighbours of each node, so the model runs
    (a) on the full graph, (b) on a neighbour-sampled mini-batch
    (:class:`graphscale.sampling.neighbor.NeighborBatch`; pass ``num_sampled_nodes`` /
    ``num_sampled_edges`` to skip the rows a layer no longer needs, as PyG's ``trim_to_layer``), and
    (c) one layer at a time over the whole graph (:meth:`inference_layers`, :meth:`inference`).

    Args:
        in_channels, hidden_channels, out_channels: ``F_in``, ``H``, ``C``.
        num_layers: ``L >= 1`` convolutions.
        dropout: dropout after each hidden layer's activation.
        norm: ``'none' | 'batch' | 'layer'`` after each hidden convolution.
        residual: add the layer's input to its output where the widths match.
        aggr: neighbour aggregation of :class:`~graphscale.nn.SAGEConv` (``mean | sum | max | min``).

    Shapes: ``x [N, F_in]``, ``edge_index [2, E]`` -> ``[N, C]`` (``edge_attr`` is ignored).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2,
                 dropout: float = 0.5, norm: str = "none", residual: bool = False, aggr: str = "mean"):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        if norm not in _NORMS:
            raise ConfigError(f"unknown SAGE norm {norm!r}; expected one of {', '.join(_NORMS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        dims = [in_channels] + [hidden_channels] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(SAGEConv(a, b, aggr=aggr) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(_norm(norm, hidden_channels) for _ in range(num_layers - 1))
        self.dropout, self.residual, self.num_layers = dropout, residual, num_layers

    def reset_parameters(self) -> None:
        for m in list(self.convs) + list(self.norms):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def layer(self, i: int, x_src: Tensor, adj, x_dst: Tensor, size=None) -> Tensor:
        """Layer ``i`` for destination nodes ``x_dst [n_dst, F]`` from sources ``x_src [n_src, F]``
        over ``adj`` (``edge_index`` in local ids, a ``torch.sparse`` ``adj_t [n_dst, n_src]`` or a CSR)."""
        out = self.convs[i]((x_src, x_dst), adj, size)
        if i < self.num_layers - 1:
            out = F.dropout(F.relu(self.norms[i](out)), p=self.dropout, training=self.training)
        if self.residual and out.shape == x_dst.shape:
            out = out + x_dst
        return out

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                num_sampled_nodes: Optional[Sequence[int]] = None,
                num_sampled_edges: Optional[Sequence[int]] = None) -> Tensor:
        """Logits ``[N, C]``. With ``num_sampled_nodes`` (``[L + 1]``) and ``num_sampled_edges``
        (``[L]``) of a neighbour-sampled batch (nodes and edges ordered by hop), layer ``l`` computes
        only the nodes of hops ``0..L-l-1`` it still needs: rows past those are zero in the output.
        Shapes stay ``[N, C]``; the seed rows ``[:batch_size]`` equal the untrimmed forward."""
        if num_sampled_nodes is None:
            for i in range(self.num_layers):
                x = self.layer(i, x, edge_index, x)
            return x
        if num_sampled_edges is None or len(num_sampled_edges) != self.num_layers or \
                len(num_sampled_nodes) != self.num_layers + 1:
            raise ConfigError(f"trimmed forward needs num_sampled_nodes of length {self.num_layers + 1} and "
                              f"num_sampled_edges of length {self.num_layers} (one per layer), got "
                              f"{num_sampled_nodes!r} and {num_sampled_edges!r}")
        n = x.size(0)
        L = self.num_layers
        nodes = torch.tensor(list(num_sampled_nodes)).cumsum(0).tolist()
        edges = torch.tensor(list(num_sampled_edges)).cumsum(0).tolist()
        for i in range(L):
            # layer i feeds the nodes of hops 0..L-1-i; their in-edges are hops 1..L-i
            n_src, n_dst, e = nodes[L - i], nodes[L - 1 - i], edges[L - 1 - i]
            x = self.layer(i, x[:n_src], edge_index[:, :e], x[:n_dst], size=(n_src, n_dst))
        return torch.cat([x, x.new_zeros(n - x.size(0), x.size(1))]) if x.size(0) < n else x

    # ------------------------------------------------------------------ layer-wise inference
    def inference_layers(self) -> list[Callable[[Tensor, Tensor, Tensor], Tensor]]:
        """The layers as ``fn(x_src, adj_block, x_dst) -> out`` callables, the contract of
        :func:`graphscale.sampling.propagation.layerwise_inference` (``adj_block`` a sparse CSR
        ``[b, n_src]`` with one entry per edge, so ``mean`` averages over in-edges as in
        :meth:`forward`)."""
        return [partial(self.layer, i) for i in range(self.num_layers)]

    @torch.no_grad()
    def inference(self, x: Tensor, adj, batch_size: int = 65_536, device=None) -> Tensor:
        """Full-graph logits ``[N, C]`` one layer at a time over node batches of ``batch_size``
        (never an ``L``-hop neighbourhood). ``adj``: ``edge_index``, CSR or sparse CSR tensor.
        Call in ``eval()`` mode for deterministic output."""
        from graphscale.sampling.propagation import layerwise_inference
        return layerwise_inference(self.inference_layers(), x, adj, batch_size=batch_size, device=device)
