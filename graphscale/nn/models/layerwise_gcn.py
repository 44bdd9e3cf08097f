"""The GCN that L-GCN / L2-GCN train layer by layer (You, Chen, Wang, Shen, CVPR 2020, "L2-GCN:
Layer-Wise and Learned Efficient Training of Graph Convolutional Networks"): ``L`` blocks
``H_l = ReLU(Linear_l(A_hat H_{l-1}))`` and a linear output head. Trained end to end it is a plain GCN;
:mod:`graphscale.train.layerwise` trains it one block at a time.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphscale.errors import ConfigError
from graphscale.sampling.feature_store import FeatureStore
from graphscale.sampling.propagation import aggregate, gcn_adjacency, layerwise_inference


class LayerwiseGCN(nn.Module):
    """The GCN that L-GCN trains: ``L`` blocks ``H_l = ReLU(Linear_l(A_hat H_{l-1}))`` and a linear
    output head on ``H_L`` (You et al., CVPR 2020; the layer of Kipf & Welling, ICLR 2017).

    Args:
        in_channels: ``F_in``.
        hidden_channels: ``H``, width of every layer.
        out_channels: ``C`` classes or tasks.
        num_layers: ``L >= 1``.
        dropout: dropout on each layer's aggregated input, during training only.

    Shapes: ``forward(x [N, F_in], edge_index [2, E]) -> [N, C]``.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                 dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
        if hidden_channels < 1:
            raise ConfigError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.dropout = dropout
        self.layers = nn.ModuleList(nn.Linear(in_channels if i == 0 else hidden_channels, hidden_channels)
                                    for i in range(num_layers))
        # The output head; during layer-wise training it is the auxiliary classifier of the layer in
        # training (a fresh one per layer), and the last layer's becomes the model's head.
        self.head = nn.Linear(hidden_channels, out_channels)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def block(self, layer: int, z: Tensor) -> Tensor:
        """``ReLU(Linear_layer(z))`` for already aggregated rows ``z = (A_hat H)[rows]``."""
        z = F.dropout(z, p=self.dropout, training=self.training)
        return F.relu(self.layers[layer](z))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        return self.forward_adj(x, gcn_adjacency(edge_index, x.size(0), x.dtype).to(x.device))

    def forward_adj(self, x: Tensor, adj: Tensor) -> Tensor:
        """The composed full-graph forward with a prebuilt ``A_hat`` (sparse CSR ``[N, N]``)."""
        for layer in range(self.num_layers):
            x = self.block(layer, aggregate(adj, x))
        return self.head(x)

    def inference_layers(self) -> list[Callable]:
        """The blocks in :func:`~graphscale.sampling.propagation.layerwise_inference`'s layer contract;
        the head is folded into the last one."""
        def make(layer: int):
            last = layer == self.num_layers - 1

            def fn(x_src: Tensor, adj_block: Tensor, x_dst: Tensor) -> Tensor:
                h = self.block(layer, aggregate(adj_block, x_src))
                return self.head(h) if last else h
            return fn
        return [make(i) for i in range(self.num_layers)]

    @torch.no_grad()
    def inference(self, x: Tensor, adj: Tensor, batch_size: int = 65_536, device=None,
                  store: FeatureStore | None = None) -> Tensor:
        """Logits ``[N, C]`` computed layer by layer (one layer's activations in memory at a time)."""
        was = self.training
        self.eval()
        try:
            return layerwise_inference(self.inference_layers(), x, adj, batch_size, device, store)
        finally:
            self.train(was)
