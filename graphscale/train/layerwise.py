"""Layer-wise GCN training: L-GCN, and L2-GCN with the learned stopping controller.

You, Chen, Wang, Shen, CVPR 2020, "L2-GCN: Layer-Wise and Learned Efficient Training of Graph
Convolutional Networks". For layer ``l = 1..L``:

1. aggregate the current features once over the whole graph, ``Z_l = A_hat H_{l-1}``
   (:func:`graphscale.sampling.propagation.propagate`, GCN normalisation);
2. train the layer's transform ``H_l = ReLU(Z_l W_l + b_l)`` together with a throw-away auxiliary
   classifier ``H_l C_l`` on mini-batches of *training-node rows* of ``Z_l`` -- an MLP step, no graph
   in the loop, so memory per step is independent of the graph size;
3. freeze it, map every node forward (``H_l`` for all nodes), go on with the next layer.

The classifier of the last layer is the model's output head. The trained network is exactly the
stacked GCN ``C_L ReLU(A_hat ... ReLU(A_hat X W_1) ... W_L)`` (:class:`LayerwiseGCN.forward`), so
inference can run on the full graph or layer by layer (:meth:`LayerwiseGCN.inference`).

L-GCN trains every layer for ``train.layer_epochs`` epochs; L2-GCN (``train.controller=l2o``) lets
a recurrent controller (:mod:`graphscale.train.l2gcn_controller`) stop each layer, trained with REINFORCE on
episodes over small sampled subgraphs (:func:`gcn_episode`) or loaded from ``train.controller_path``.

The feature matrices live on the host (``train.storage=memory``) or in memory-mapped files
(``mmap``); a GPU receives only mini-batches. :class:`LayerwiseTrainer` writes the same files as the
standard trainer and checkpoints after each finished layer (a resumed run replays the finished,
frozen layers to rebuild the features, then continues with identical randomness).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphscale.errors import ConfigError, TrainingError
from graphscale.nn.models.layerwise_gcn import LayerwiseGCN
from graphscale.sampling.feature_store import FeatureStore, map_rows, node_batches
from graphscale.sampling.propagation import aggregate, gcn_adjacency, propagate
from graphscale.sampling.samplers import epoch_seed
from graphscale.train import distributed
from graphscale.train.config import Config
from graphscale.train.l2gcn_controller import StopPolicy


def _layer_seed(seed: int, layer: int, epoch: int = 0) -> int:
    return epoch_seed(seed * 131 + layer * 7 + 3, epoch)


class Stopper(Protocol):
    """Decides when a layer's training ends: ``start_layer(layer)``, then ``observe(epoch, loss) -> stop``."""

    def start_layer(self, layer: int) -> None: ...

    def observe(self, epoch: int, loss: float) -> bool: ...


class FixedEpochs:
    """L-GCN's schedule: every layer trains for ``epochs`` epochs."""

    def __init__(self, epochs: int):
        if epochs < 1:
            raise ConfigError(f"layer_epochs must be >= 1, got {epochs}")
        self.epochs = epochs

    def start_layer(self, layer: int) -> None:
        pass

    def observe(self, epoch: int, loss: float) -> bool:
        return epoch >= self.epochs


@dataclass
class LayerSettings:
    """Optimisation of one layer: Adam on the layer and its auxiliary classifier."""

    batch_size: int = 256
    lr: float = 0.01
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    seed: int = 0


class _LayerStep(nn.Module):
    """The network of one layer-wise training step, ``head(ReLU(Linear_layer(z * keep)))``, as a module
    of its own so that a multi-process run can wrap exactly the trained parameters in DDP.

    Shapes: ``z [b, F]`` aggregated rows, ``keep [b, F]`` dropout mask already divided by ``1 - p``
    (or ``None``) -> ``[b, C]`` logits.
    """

    def __init__(self, linear: nn.Linear, head: nn.Linear):
        super().__init__()
        self.linear, self.head = linear, head

    def forward(self, z: Tensor, keep: Tensor | None = None) -> Tensor:
        if keep is not None:
            z = z * keep
        return self.head(F.relu(self.linear(z)))


def share_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, end)`` of a global batch of ``batch`` rows; the
    ``world_size`` shares cover the batch and differ in size by at most one (a share may be empty)."""
    return batch * rank // world_size, batch * (rank + 1) // world_size


def train_layer(model: LayerwiseGCN, layer: int, z: Tensor, y: Tensor, train_idx: Tensor, loss: Callable,
                stopper: Stopper, settings: LayerSettings, device: torch.device | str = "cpu",
                on_epoch: Callable[[int, float], None] | None = None, *, rank: int = 0, world_size: int = 1,
                wrap: Callable[[nn.Module], nn.Module] | None = None) -> tuple[int, float]:
    """Train block ``layer`` of ``model`` and a fresh output head on aggregated rows ``z``.

    Each step gathers ``z[batch]`` (host, possibly mmap) and ``y[batch]`` for a mini-batch of training
    nodes, moves them to ``device`` and takes one Adam step on ``loss(head(block(z[batch])), y[batch])``.
    The batch order and dropout masks of epoch ``e`` are seeded from ``(settings.seed, layer, e)``; the
    mask is drawn for the whole ``[b, F]`` batch on the host, so it does not depend on how the batch is
    split over processes.

    Multi-process (``world_size > 1``, docs/distributed.md): every rank walks the same global batches
    and trains on its contiguous share (:func:`share_bounds`), so all ranks take the same number of
    steps. The share's mean loss is scaled by ``share * W / b``: DDP's average over ranks is then the
    mean over the whole global batch, and the run equals the 1-process run up to float rounding. The
    epoch's mean loss is summed over ranks; the stop decision is taken by ``stopper`` on rank 0 only
    and broadcast, so every rank ends the layer at the same epoch.

    Args:
        model: the network (on ``device``); its ``head`` is replaced by a fresh classifier.
        layer: 0-based block index.
        z: ``[N, F]`` aggregated features ``A_hat H_{layer-1}`` (host).
        y: ``[N]`` or ``[N, T]`` targets (host).
        train_idx: training node ids.
        loss: ``loss(logits, target) -> scalar`` (a mean over rows).
        stopper: ends the layer (:class:`FixedEpochs` or :class:`~graphscale.train.l2gcn_controller.StopPolicy`).
        settings: batch size (global, over all ranks) and optimiser.
        device: where the step runs.
        on_epoch: called as ``on_epoch(epoch, mean_loss)`` after every epoch, before the stop check
            (on every rank).
        rank, world_size: this process's place in the job (``0, 1``: plain single process).
        wrap: turns the step module into the one to call (``DistributedDataParallel``); ``None``: as is.

    Returns:
        ``(epochs, last mean epoch loss)``.
    """
    device = torch.device(device)
    torch.manual_seed(_layer_seed(settings.seed, layer))  # the head's initialisation
    model.head = nn.Linear(model.head.in_features, model.head.out_features).to(device)
    params = list(model.layers[layer].parameters()) + list(model.head.parameters())
    opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    step = _LayerStep(model.layers[layer], model.head)
    runner = wrap(step) if wrap is not None else step
    p = model.dropout
    model.train()
    stopper.start_layer(layer)
    epoch = 0
    while True:
        epoch += 1
        total, count = _layer_epoch(runner, opt, params, layer, epoch, z, y, train_idx, loss, settings, p, device,
                                    rank, world_size)
        if world_size > 1:
            total, count = distributed.all_reduce_sum([total, count], device=device)
        mean = total / max(count, 1)
        if on_epoch is not None:
            on_epoch(epoch, mean)
        stop = stopper.observe(epoch, mean) if rank == 0 else None
        if world_size > 1:
            stop = distributed.broadcast_object(stop)
        if stop:
            return epoch, mean


def _layer_epoch(runner, opt, params, layer: int, epoch: int, z: Tensor, y: Tensor, train_idx: Tensor, loss: Callable,
                 settings: LayerSettings, p: float, device, rank: int, world_size: int) -> tuple[float, int]:
    """One epoch of :func:`train_layer` on this rank's shares of the global batches: ``(loss sum, rows)``."""
    seed = _layer_seed(settings.seed, layer, epoch)
    gen = torch.Generator().manual_seed(seed)
    drop_gen = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for idx in node_batches(train_idx, settings.batch_size, gen):
        b = idx.numel()
        keep = None
        if p > 0:  # the global batch's mask, then this rank's rows of it
            keep = torch.empty(b, z.size(1), dtype=z.dtype).bernoulli_(1 - p, generator=drop_gen).div_(1 - p)
        if world_size > 1:
            lo, hi = share_bounds(b, rank, world_size)
            idx = idx[lo:hi]
            keep = keep[lo:hi] if keep is not None else None
        n = idx.numel()
        zb = z[idx].to(device, non_blocking=True)
        yb = y[idx].to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        out = runner(zb, keep.to(device, non_blocking=True) if keep is not None else None)
        value = loss(out, yb) if n else out.sum() * 0.0  # an empty share still joins the all-reduce
        if not torch.isfinite(value):
            where = f" on rank {rank}" if world_size > 1 else ""
            raise TrainingError(f"loss is {value.item()} in layer {layer + 1}, epoch {epoch}{where}: training "
                                f"diverged (try a lower train.lr={settings.lr})")
        (value * (n * world_size / b) if world_size > 1 else value).backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        total, count = total + value.item() * n, count + n
    return total, count


def forward_features(model: LayerwiseGCN, layer: int, h: Tensor, adj: Tensor, store: FeatureStore,
                     device: torch.device | str = "cpu", block_rows: int = 65_536) -> tuple[Tensor, Tensor]:
    """``Z = A_hat h`` (aggregated once) and ``H = block_layer(Z)`` for all nodes, in new buffers of
    ``store``; returns ``(Z, H)``. The caller releases what it no longer needs."""
    z = store.empty(h.size(0), h.size(1), what=f"layer {layer + 1} aggregated features")
    propagate(adj, h, z, block_rows, device)
    out = store.empty(h.size(0), model.layers[layer].out_features, what=f"layer {layer + 1} output features")
    was = model.training
    model.eval()
    map_rows(lambda rows: model.block(layer, rows), z, out, block_rows, device)
    model.train(was)
    return z, out


# --------------------------------------------------------------------------- L2-GCN episodes
def gcn_episode(x: Tensor, edge_index: Tensor, y: Tensor, train_idx: Tensor, loss: Callable, num_layers: int,
                hidden_channels: int, sample_nodes: int = 1024, lr: float = 0.01, seed: int = 0
                ) -> Callable[[StopPolicy, int], tuple[float, int]]:
    """An L2-GCN controller-training episode on this graph (for :func:`~graphscale.train.l2gcn_controller.train_controller`).

    Round ``r`` samples ``sample_nodes`` nodes (up to half of them training nodes, the rest uniform),
    takes their induced subgraph with its own ``A_hat``, and trains a fresh :class:`LayerwiseGCN`
    layer by layer on it, one full-batch step per epoch over the sampled training nodes, stopping
    each layer when the policy says so (as the reference implementation's sampled rounds).
    Returns ``(final training loss, total epochs)``.
    """
    from torch_geometric.utils import subgraph

    n = x.size(0)

    def run(policy: StopPolicy, round_: int) -> tuple[float, int]:
        gen = torch.Generator().manual_seed(_layer_seed(seed + 99_991, round_))
        k = min(n, sample_nodes)
        t = train_idx[torch.randperm(train_idx.numel(), generator=gen)[:max(1, k // 2)]]
        other = torch.randperm(n, generator=gen)[:max(0, k - t.numel())]
        nodes = torch.unique(torch.cat([t, other]))
        ei, _ = subgraph(nodes, edge_index, relabel_nodes=True, num_nodes=n)
        adj = gcn_adjacency(ei, nodes.numel(), x.dtype)
        is_train = torch.zeros(n, dtype=torch.bool)
        is_train[train_idx] = True
        local_train = is_train[nodes].nonzero().view(-1)
        torch.manual_seed(_layer_seed(seed + 77_777, round_))
        model = LayerwiseGCN(x.size(1), hidden_channels, int(_num_outputs(y)), num_layers)
        h, ys = x[nodes], y[nodes]
        settings = LayerSettings(batch_size=max(1, local_train.numel()), lr=lr, seed=seed + round_)
        epochs, last = 0, math.nan
        for layer in range(num_layers):
            z = aggregate(adj, h)
            e, last = train_layer(model, layer, z, ys, local_train, loss, policy, settings)
            epochs += e
            with torch.no_grad():
                model.eval()
                h = model.block(layer, z)
        return last, epochs

    return run


def _num_outputs(y: Tensor) -> int:
    return y.size(1) if y.dim() == 2 else int(y.max()) + 1


def check_layerwise_config(cfg: Config) -> None:
    """Range checks of the layer-wise options, before any data is loaded."""
    t, m = cfg.train, cfg.model
    checks = [
        (m.num_layers >= 1, f"model.num_layers must be >= 1 for layer-wise training, got {m.num_layers}"),
        (t.layer_epochs >= 1, f"train.layer_epochs must be >= 1, got {t.layer_epochs}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
    ]
    if t.controller == "l2o":
        checks += [
            (t.l2o_rounds >= 1, f"train.l2o_rounds must be >= 1, got {t.l2o_rounds}"),
            (1 <= t.l2o_min_epochs <= t.layer_epochs,
             f"train.l2o_min_epochs must be in [1, train.layer_epochs={t.layer_epochs}], got {t.l2o_min_epochs}"),
            (t.l2o_decision_step >= 1, f"train.l2o_decision_step must be >= 1, got {t.l2o_decision_step}"),
            (0.0 <= t.l2o_threshold <= 1.0,
             f"train.l2o_threshold must be in [0, 1] (0: the median stopping rule), got {t.l2o_threshold}"),
            (t.l2o_sample_nodes >= 2, f"train.l2o_sample_nodes must be >= 2, got {t.l2o_sample_nodes}"),
            (t.l2o_hidden >= 1, f"train.l2o_hidden must be >= 1, got {t.l2o_hidden}"),
        ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
