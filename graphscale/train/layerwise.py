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

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from graphscale.errors import ConfigError, DataError, TrainingError
from graphscale.sampling.feature_store import FeatureStore, map_rows, node_batches
from graphscale.sampling.propagation import aggregate, gcn_adjacency, layerwise_inference, propagate
from graphscale.sampling.samplers import epoch_seed
from graphscale.atomic import load_torch, save_json, save_text, save_torch
from graphscale.train import distributed
from graphscale.train.config import Config, to_dict
from graphscale.train.l2gcn_controller import NUM_FEATURES, StopController, StopPolicy, load_controller, save_controller, \
    train_controller
from graphscale.train.metrics import Metric, loss_fn


def _layer_seed(seed: int, layer: int, epoch: int = 0) -> int:
    return epoch_seed(seed * 131 + layer * 7 + 3, epoch)


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


# --------------------------------------------------------------------------- trainer
CHECKPOINT, BEST, RESULTS, LOG, CONFIG, CONTROLLER = ("checkpoint.pt", "best_model.pt", "results.json", "log.jsonl",
                                                      "config.yaml", "controller.pt")


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


class LayerwiseTrainer:
    """``train.mode=layerwise``: L-GCN / L2-GCN on ``cfg.data``; :meth:`run` returns the results dict.

    Writes into ``log.out`` what the standard trainer writes (``config.yaml``, ``checkpoint.pt``
    after every finished layer, ``best_model.pt``, ``log.jsonl`` with one row per epoch,
    ``results.json`` with the same keys plus ``layer_epochs_used``, ``controller_seconds`` and
    ``train_seconds``), and ``controller.pt`` for L2-GCN.

    Evaluation (every ``train.eval_every`` epochs and at the end of each layer) scores the depth-``l``
    network (the trained blocks and the current auxiliary classifier) on the split nodes; it needs no
    propagation because ``A_hat H_{l-1}`` is already there. ``best_valid`` is the best over the
    evaluations of the last layer (the full model); ``best_epoch`` counts epochs over all layers.

    Args:
        cfg: the resolved config (``model.hidden_channels``, ``model.num_layers``, ``model.dropout``,
            ``train.*`` are used; ``model.name`` is ignored: the model is :class:`LayerwiseGCN`).
        resume: continue after the last finished layer of ``<log.out>/checkpoint.pt``.
    """

    def __init__(self, cfg: Config, resume: bool = False):
        from graphscale.train.trainer import check_config, check_output_folder, resolve_device

        check_config(cfg)
        check_layerwise_config(cfg)
        self.cfg, self.resume, self.out = cfg, resume, cfg.log.out
        # Under torchrun: join the process group (None in a 1-process job; docs/distributed.md).
        self.dist = distributed.setup(cfg.train.device, cfg.train.dist_timeout)
        self.rank, self.world_size = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        self.is_main = self.rank == 0
        try:
            self.device = self.dist.device if self.dist else resolve_device(cfg.train.device)
            check_output_folder(cfg, resume, self.dist)
            t = cfg.train
            if t.controller == "l2o" and t.controller_path and os.path.isfile(t.controller_path):
                # Fail on a wrong file now, not after the data is loaded.
                load_controller(t.controller_path, NUM_FEATURES, t.l2o_hidden)
        except BaseException:
            if self.dist:
                self.dist.destroy()
            raise

    def _controller(self, data, loss) -> tuple[StopController, float]:
        t = self.cfg.train
        own = os.path.join(self.out, CONTROLLER)
        for path in (own if self.resume else None, t.controller_path or None):
            if path and os.path.isfile(path):
                return load_controller(path, NUM_FEATURES, t.l2o_hidden), 0.0
        # Every rank trains the same controller (deterministic CPU episodes, same seed) rather than
        # rank 0 alone: training it can take longer than train.dist_timeout, which the other ranks
        # would spend waiting at a collective. Only rank 0's decisions are used, and only it writes.
        t0 = time.perf_counter()
        episode = gcn_episode(data.x, data.edge_index, data.y, data.split["train"], loss, self.cfg.model.num_layers,
                              self.cfg.model.hidden_channels, t.l2o_sample_nodes, t.lr, t.seed)
        rows = []
        ctrl = train_controller(episode, self.cfg.model.num_layers, rounds=t.l2o_rounds, hidden_size=t.l2o_hidden,
                                lr=t.l2o_lr, time_ratio=t.l2o_time_ratio, min_epochs=t.l2o_min_epochs,
                                max_epochs=t.layer_epochs, decision_step=t.l2o_decision_step, seed=t.seed,
                                log=rows.append)
        seconds = time.perf_counter() - t0
        if self.is_main:
            save_controller(ctrl, own)
            if t.controller_path:
                save_controller(ctrl, t.controller_path)
            save_text("".join(json.dumps(r) + "\n" for r in rows), os.path.join(self.out, "controller_log.jsonl"))
        return ctrl, seconds

    def _wrap(self, step: nn.Module) -> nn.Module:
        """DDP around one layer's step module (a fresh DDP per layer: the trained parameters change)."""
        t = self.cfg.train
        ddp, hook = distributed.wrap_model(step, self.dist, static_graph=t.ddp_static_graph,
                                            find_unused=t.ddp_find_unused, comm_hook=t.comm_hook,
                                            powersgd_rank=t.powersgd_rank,
                                            powersgd_start_iter=t.powersgd_start_iter, seed=t.seed)
        if hook is not None:  # a fresh hook (and state) per layer: checkpoints fall between layers
            self.comm_stats.append(hook.stats)
        return ddp

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            if self.dist:
                self.dist.destroy()

    def _run(self) -> dict:
        from graphscale.train.trainer import _config_diff, load_data, peak_memory_bytes

        cfg, t, dev = self.cfg, self.cfg.train, self.device
        os.makedirs(self.out, exist_ok=True)
        resolved = to_dict(cfg)
        ckpt = None
        if self.resume:
            ckpt = load_torch(os.path.join(self.out, CHECKPOINT))
            diff = _config_diff({k: v for k, v in ckpt["config"].items() if k != "log"},
                                {k: v for k, v in resolved.items() if k != "log"})
            if diff:
                raise ConfigError("--resume with a different config than the checkpoint's: " + "; ".join(diff))
        main, world = self.is_main, self.world_size
        if main:  # only rank 0 writes files (DESIGN rule 11)
            save_text(yaml.safe_dump(resolved, sort_keys=False), os.path.join(self.out, CONFIG))

        with distributed.main_first():  # rank 0 writes / downloads the data set, then the others read it
            data = load_data(cfg)
        n, L = data.num_nodes, cfg.model.num_layers
        store = FeatureStore(t.storage, t.storage_dir or os.path.join(self.out, "features"))
        # Fail before training if the largest feature buffers (input width + hidden width) do not fit;
        # every rank of this host holds its own copy (each computes the same aggregation).
        per_host = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if world > 1 else 1
        fit_error = None
        try:
            store.check_fits(n, max(data.x.size(1), cfg.model.hidden_channels) * 2 * per_host,
                             "layer-wise feature buffers" + (f" ({per_host} ranks on this host)" if per_host > 1 else ""))
        except DataError as exc:
            if world == 1:
                raise
            fit_error = str(exc)
        if world > 1:  # hosts differ: every rank stops with the message instead of waiting for the others
            distributed.agree(fit_error, DataError)
        x, y = data.x, data.y
        train_idx = data.split["train"]
        metric, loss = Metric(data.metric, data.task, data.evaluator), loss_fn(data.task)
        adj = gcn_adjacency(data.edge_index, n, x.dtype)

        torch.manual_seed(t.seed)
        self.model = model = LayerwiseGCN(x.size(1), cfg.model.hidden_channels, data.num_outputs, L,
                                          cfg.model.dropout).to(dev)
        settings = LayerSettings(t.batch_size, t.lr, t.weight_decay, t.grad_clip, t.seed)

        policy, controller_seconds = None, 0.0
        if t.controller == "l2o":
            ctrl, controller_seconds = self._controller(data, loss)
            policy = StopPolicy(ctrl, L, t.l2o_min_epochs, t.layer_epochs, t.l2o_decision_step, t.l2o_threshold)
            stopper: Stopper = policy
        else:
            stopper = FixedEpochs(t.layer_epochs)

        history, best = [], {"valid": -math.inf, "test": float("nan"), "train": float("nan"), "epoch": 0}
        start, elapsed, train_elapsed, total_epochs, used = 0, 0.0, 0.0, 0, []
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            start, history, best = ckpt["finished_layers"], ckpt["history"], ckpt["best"]
            elapsed, train_elapsed = ckpt["elapsed"], ckpt["train_elapsed"]
            total_epochs, used = ckpt["total_epochs"], ckpt["layer_epochs_used"]
            controller_seconds = ckpt["controller_seconds"]
            if policy is not None and ckpt["policy"] is not None:
                policy.load_state(ckpt["policy"])
        if main:
            self._write_log(history)
        self.comm_stats = []
        dist_kw = {"rank": self.rank, "world_size": world, "wrap": self._wrap} if world > 1 else {}

        h = x
        for layer in range(start):  # resume: replay the finished, frozen layers
            z, h_next = forward_features(model, layer, h, adj, store, dev)
            store.release(z)
            if h is not x:
                store.release(h)
            h = h_next

        for layer in range(start, L):
            t0 = time.perf_counter()
            z = store.empty(n, h.size(1), what=f"layer {layer + 1} aggregated features")
            propagate(adj, h, z, device=dev)
            clock = {"train": time.perf_counter() - t0, "eval": 0.0, "mark": time.perf_counter()}

            def on_epoch(epoch: int, mean: float, layer=layer, z=z, clock=clock) -> None:
                nonlocal total_epochs, best
                now = time.perf_counter()
                clock["train"] += now - clock["mark"]
                total_epochs += 1
                row = {"layer": layer + 1, "layer_epoch": epoch, "epoch": total_epochs, "loss": mean}
                if epoch % t.eval_every == 0:
                    scores = self._evaluate(model, layer, z, data, metric)
                    row.update({f"{k}_{data.metric}": v for k, v in scores.items()})
                    if layer == L - 1 and scores["valid"] > best["valid"]:
                        best = {"valid": scores["valid"], "test": scores["test"], "train": scores["train"],
                                "epoch": total_epochs}
                        if main:
                            save_torch(model.state_dict(), os.path.join(self.out, BEST))
                done = time.perf_counter()
                clock["eval"] += done - now
                row["train_seconds"] = train_elapsed + clock["train"]
                row["seconds"] = elapsed + clock["train"] + clock["eval"]
                history.append(row)
                if main:
                    with open(os.path.join(self.out, LOG), "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                clock["mark"] = time.perf_counter()

            epochs, _ = train_layer(model, layer, z, y, train_idx, loss, stopper, settings, dev, on_epoch, **dist_kw)
            last = history[-1]
            if layer == L - 1 and f"valid_{data.metric}" not in last:  # always score the final model
                scores = self._evaluate(model, layer, z, data, metric)
                last.update({f"{k}_{data.metric}": v for k, v in scores.items()})
                if scores["valid"] > best["valid"]:
                    best = {"valid": scores["valid"], "test": scores["test"], "train": scores["train"],
                            "epoch": total_epochs}
                    if main:
                        save_torch(model.state_dict(), os.path.join(self.out, BEST))
                if main:
                    self._write_log(history)
            t1 = time.perf_counter()
            if layer < L - 1:  # map every node forward through the frozen block
                h_next = store.empty(n, model.layers[layer].out_features, what=f"layer {layer + 1} output features")
                model.eval()
                map_rows(lambda rows, layer=layer: model.block(layer, rows), z, h_next, device=dev)
                if h is not x:
                    store.release(h)
                h = h_next
            store.release(z)
            clock["train"] += time.perf_counter() - t1
            train_elapsed += clock["train"]
            elapsed += clock["train"] + clock["eval"]
            used.append(epochs)
            if main:
                save_torch({"finished_layers": layer + 1, "model": model.state_dict(), "history": history, "best": best,
                            "elapsed": elapsed, "train_elapsed": train_elapsed, "total_epochs": total_epochs,
                            "layer_epochs_used": used, "controller_seconds": controller_seconds,
                            "policy": policy.state() if policy is not None else None, "config": resolved},
                           os.path.join(self.out, CHECKPOINT))
        store.release_all()

        results = {
            "dataset": data.name,
            "metric": data.metric,
            "best_valid": best["valid"],
            "test_at_best_valid": best["test"],
            "train_at_best_valid": best["train"],
            "best_epoch": best["epoch"],
            "epochs": total_epochs,
            "seconds": elapsed,
            "peak_memory_bytes": peak_memory_bytes(dev),
            "device": str(dev),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "config": resolved,
            "train_seconds": train_elapsed,
            "controller_seconds": controller_seconds,
            "layer_epochs_used": used,
        }
        if self.dist:  # rank 0's own device and memory; gradient bytes summed over the layers' hooks
            results["distributed"] = {"world_size": world, "backend": self.dist.backend, "comm_hook": t.comm_hook,
                                      "allreduce_bytes_per_step": [
                                          distributed.grad_bytes(model.layers[i]) + distributed.grad_bytes(model.head)
                                          for i in range(L)]}
            if self.comm_stats:
                from graphscale.train.comm_hooks import CommStats
                total = CommStats(t.comm_hook)
                for part in self.comm_stats:  # one per trained layer
                    total.add(part.bytes, part.uncompressed_bytes, last_bucket=False)
                    total.steps += part.steps
                results["distributed"].update(total.as_dict())
        if main:
            save_json(results, os.path.join(self.out, RESULTS))
        return results

    def _write_log(self, history: list) -> None:
        save_text("".join(json.dumps(r) + "\n" for r in history), os.path.join(self.out, LOG))

    @torch.no_grad()
    def _evaluate(self, model: LayerwiseGCN, layer: int, z: Tensor, data, metric: Metric) -> dict:
        """Scores of the depth-``layer + 1`` network on the split nodes, from ``z = A_hat H_layer-1``."""
        was = model.training
        model.eval()
        scores = {}
        for key in ("train", "valid", "test"):
            idx = data.split[key]
            if not idx.numel():
                scores[key] = float("nan")
                continue
            logits = torch.cat([model.head(model.block(layer, z[b].to(self.device))).cpu()
                                for b in idx.split(65_536)])
            scores[key] = metric(data.y[idx], logits)
        model.train(was)
        # Every rank scores (as the standard trainer's full-graph evaluation); rank 0's scores are
        # used everywhere so that the best-model decision agrees.
        return distributed.broadcast_object(scores) if self.world_size > 1 else scores


def train_layerwise(cfg: Config, resume: bool = False) -> dict:
    """Entry point used by :func:`graphscale.train.trainer.train` for ``train.mode=layerwise``."""
    return LayerwiseTrainer(cfg, resume=resume).run()
