"""L2-GCN's learned stopping controller ("learning to optimise" the layer-wise schedule).

You, Chen, Wang, Shen, CVPR 2020, "L2-GCN: Layer-Wise and Learned Efficient Training of Graph
Convolutional Networks", Sec. 3.3: a small recurrent controller watches the training loss of the
layer being trained and decides, every few epochs, whether to stop that layer and move on. It is
trained with REINFORCE on short episodes (layer-wise training on small sampled subgraphs) against a
reward that trades the final training loss against the number of epochs spent, and a trained
controller can be reused on another data set.

This module is independent of the model being trained: an *episode* is any callable that runs a
staged training with a :class:`StopPolicy` deciding when each stage ends and returns
``(final_loss, total_epochs)`` (:mod:`graphscale.train.layerwise` provides the GCN one).

Controller files (:func:`save_controller`) hold ``{"header": {...}, "state": state_dict}``; the
header names the format, version, ``input_size`` and ``hidden_size``, and :func:`load_controller`
refuses a file of another shape with a message naming the expected and found values. The state
includes ``stop_threshold``, the reference script's deployment threshold learned with the controller
(below).

Deployment rule. REINFORCE trains a *stochastic* policy: at every decision it stops with
probability ``p``, so over a layer the chance of having stopped compounds to ``1 - prod(1 - p)``, and
a trained controller stops its episodes mid-way with per-decision ``p`` of only ~0.1-0.3.
Thresholding that same ``p`` at 0.5 when deployed waits far longer than the policy ever did in
training (benchmarks/bench_layerwise.py, three Cora-trained controllers: [60, 30], [100, 100] and
[100, 100] epochs on Cora). The reference script deploys with ``threshold = mean P(stop)`` over all
training decisions (kept here as ``controller.stop_threshold``), but that stops at the very first
decision whenever the first ``p`` is above the mean (2 of the 3 controllers: [10, 10] epochs, 41-69
% test on Cora). The default rule here (``threshold=None``; config
``train.l2o_threshold: 0``) deploys the trained policy's *median stopping time*: a layer stops at
the first decision where ``1 - prod(1 - p_i)`` over its decisions so far reaches 0.5, i.e. where the
sampled policy would have stopped with probability 1/2 on the same loss trajectory (the same
controllers: [40, 25], [35, 45], [25, 25] epochs, 80.4 % mean test vs 80.1 % for L-GCN's
[100, 100], at 0.40x its training time; docs/layerwise.md).
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable

import torch
from torch import Tensor, nn

from graphscale.errors import ConfigError

FORMAT = "graphscale-l2o-controller"
VERSION = 2  # 2: state holds stop_threshold
NUM_FEATURES = 6  # see controller_features


def controller_features(loss: float, layer_first_loss: float, run_first_loss: float, prev_loss: float,
                        layer: int, num_layers: int, epoch: int, max_epochs: int) -> Tensor:
    """The controller's input at one decision, ``[NUM_FEATURES]``; scale-free so a controller
    trained on one data set transfers to another (losses are divided by first losses, positions by
    their ranges).

    Features: loss / first loss of this layer; loss / first loss of the run; improvement since the
    previous decision relative to this layer's first loss (x10); layer position in [0, 1]; is-last-
    layer flag; epoch / max_epochs.
    """
    lf = max(layer_first_loss, 1e-12)
    rf = max(run_first_loss, 1e-12)
    return torch.tensor([loss / lf, loss / rf, 10.0 * (prev_loss - loss) / lf,
                         layer / max(num_layers - 1, 1), float(layer == num_layers - 1),
                         epoch / max(max_epochs, 1)], dtype=torch.float32)


class StopController(nn.Module):
    """Recurrent stopping controller of L2-GCN: ``GRUCell -> Linear -> sigmoid`` = P(stop).

    The reference implementation uses an LSTM cell over the loss with per-step decoders; a GRU cell
    with one shared decoder keeps it small and independent of the number of decisions.

    Args:
        input_size: feature width (:data:`NUM_FEATURES` for :func:`controller_features`).
        hidden_size: GRU state width.

    Shapes: ``forward(x [B, input_size], h [B, hidden_size] | None) -> (p_stop [B], h [B, hidden])``.
    """

    def __init__(self, input_size: int = NUM_FEATURES, hidden_size: int = 16):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ConfigError(f"controller sizes must be >= 1, got input_size={input_size}, hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = nn.GRUCell(input_size, hidden_size)
        self.decoder = nn.Linear(hidden_size, 1)
        # Start out reluctant to stop (p ~ 0.12) so early episodes explore long schedules too.
        nn.init.constant_(self.decoder.bias, -2.0)
        # The reference script's deployment threshold: mean P(stop) over the decisions of training
        # (set by train_controller; use it with StopPolicy(threshold=float(ctrl.stop_threshold))).
        self.register_buffer("stop_threshold", torch.tensor(0.5))

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.cell(x, h)
        return torch.sigmoid(self.decoder(h)).squeeze(-1), h

    def header(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "input_size": self.input_size,
                "hidden_size": self.hidden_size}


def save_controller(controller: StopController, path: str) -> None:
    """Write ``{"header", "state"}`` atomically (``torch.save``)."""
    from graphscale.atomic import save_torch
    save_torch({"header": controller.header(), "state": controller.state_dict()}, path)


def load_controller(path: str, input_size: int = NUM_FEATURES, hidden_size: int | None = None) -> StopController:
    """Load a controller written by :func:`save_controller`.

    Args:
        path: the file.
        input_size: the feature width this code feeds (:data:`NUM_FEATURES`).
        hidden_size: required hidden width, or ``None`` to take the file's.

    Raises:
        ConfigError: missing file, not a controller file, other format version, or a shape other
            than expected (the message names the expected and the found sizes).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"controller file {path!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"controller file {path!r} is not readable by torch.load: {exc}") from None
    header = blob.get("header") if isinstance(blob, dict) else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConfigError(f"{path!r} is not an L2-GCN controller file (expected a header with format "
                          f"{FORMAT!r})")
    if header.get("version") != VERSION:
        raise ConfigError(f"controller file {path!r} has version {header.get('version')}, expected {VERSION}")
    found_in, found_h = header.get("input_size"), header.get("hidden_size")
    want_h = found_h if hidden_size is None else hidden_size
    if found_in != input_size or found_h != want_h:
        raise ConfigError(f"controller file {path!r} has the wrong shape: expected input_size={input_size}, "
                          f"hidden_size={want_h}; found input_size={found_in}, hidden_size={found_h}")
    ctrl = StopController(found_in, found_h)
    try:
        ctrl.load_state_dict(blob["state"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"controller file {path!r}: weights do not match its header "
                          f"(input_size={found_in}, hidden_size={found_h}): {exc}") from None
    return ctrl


class StopPolicy:
    """Drives one staged training run with a :class:`StopController`.

    Call :meth:`start_layer` when a layer starts and :meth:`observe` after each of its epochs; it
    returns whether to stop the layer now. Decisions are taken every ``decision_step`` epochs once
    ``min_epochs`` are done; ``max_epochs`` always stops. In ``sample`` mode (controller training)
    the stop action is drawn from Bernoulli(p) and its log-probability kept for REINFORCE; otherwise
    (deployment) the layer stops when ``p >= threshold`` (the paper's rule), or with ``threshold=None``
    at the policy's median stopping time, when ``1 - prod(1 - p)`` over the layer's decisions reaches
    0.5 (see the module docstring). ``forced (controller warm-up,
    as the reference script's predefined actions) maps a layer to the epoch at which it stops whatever
    ``p`` says; the log-probability of the forced action is still kept.

    Args:
        controller: the controller (its GRU state is carried across layers).
        num_layers: layers of the run.
        min_epochs, max_epochs, decision_step: per-layer schedule bounds.
        threshold: deployment stop probability per decision; ``None`` or ``<= 0``: the median rule
            (see the module docstring).
        sample: draw actions (training) instead of thresholding.
        generator: RNG for the draws.
        forced: ``{layer: epoch}`` stops imposed in sample mode (warm-up rounds).
    """

    def __init__(self, controller: StopController, num_layers: int, min_epochs: int = 10, max_epochs: int = 100,
                 decision_step: int = 5, threshold: float | None = None, sample: bool = False,
                 generator: torch.Generator | None = None, forced: dict[int, int] | None = None):
        if not 1 <= min_epochs <= max_epochs:
            raise ConfigError(f"controller epochs need 1 <= min_epochs <= max_epochs, got min_epochs={min_epochs}, "
                              f"max_epochs={max_epochs}")
        if decision_step < 1:
            raise ConfigError(f"decision_step must be >= 1, got {decision_step}")
        self.controller, self.num_layers = controller, num_layers
        self.min_epochs, self.max_epochs, self.decision_step = min_epochs, max_epochs, decision_step
        if threshold is not None and threshold <= 0:
            threshold = None
        self.threshold, self.sample, self.generator = threshold, sample, generator
        self.forced = forced or {}
        self.hidden: Tensor | None = None
        self.log_probs: list[Tensor] = []
        self.run_first_loss: float | None = None
        self.trace: list[dict] = []  # one row per decision: layer, epoch, p_stop, stop

    def start_layer(self, layer: int) -> None:
        self.layer, self.layer_first_loss, self.prev_loss = layer, None, None
        self.survival = 1.0  # prod(1 - p) over this layer's decisions (median rule)

    def observe(self, epoch: int, loss: float) -> bool:
        """Record the mean training loss after ``epoch`` (1-based) of the current layer; True = stop."""
        if self.layer_first_loss is None:
            self.layer_first_loss = loss
            if self.run_first_loss is None:
                self.run_first_loss = loss
        if epoch >= self.max_epochs:
            return True
        if epoch < self.min_epochs or (epoch - self.min_epochs) % self.decision_step:
            return False
        prev = self.prev_loss if self.prev_loss is not None else self.layer_first_loss
        self.prev_loss = loss
        x = controller_features(loss, self.layer_first_loss, self.run_first_loss, prev, self.layer,
                                self.num_layers, epoch, self.max_epochs).unsqueeze(0)
        with torch.set_grad_enabled(self.sample):
            p, self.hidden = self.controller(x, self.hidden)
        p = p.squeeze(0)
        if self.sample and self.layer in self.forced:
            stop = epoch >= self.forced[self.layer]
            self.log_probs.append(torch.log(p if stop else 1 - p).clamp_min(-30))
        elif self.sample:
            stop = bool(torch.rand((), generator=self.generator) < p.detach())
            self.log_probs.append(torch.log(p if stop else 1 - p).clamp_min(-30))
        elif self.threshold is None:
            self.survival *= 1.0 - float(p.detach())
            stop = self.survival <= 0.5
        else:
            stop = bool(p >= self.threshold)
        self.trace.append({"layer": self.layer, "epoch": epoch, "p_stop": float(p.detach()), "stop": stop})
        return stop

    def state(self) -> dict:
        """Resumable state (GRU hidden and loss references) for per-layer checkpoints."""
        return {"hidden": self.hidden.detach() if self.hidden is not None else None,
                "run_first_loss": self.run_first_loss}

    def load_state(self, state: dict) -> None:
        self.hidden, self.run_first_loss = state["hidden"], state["run_first_loss"]


Episode = Callable[[StopPolicy, int], tuple[float, int]]


def _reinforce_round(run_episode: Episode, policy: "StopPolicy", r: int, opt, time_ratio: float,
                     baseline: float | None, baseline_ratio: float) -> tuple[float, int, float, float]:
    """Run episode ``r`` under ``policy`` and take one REINFORCE step; returns ``(final loss, epochs, cost,
    new baseline)``."""
    final_loss, epochs = run_episode(policy, r)
    if not math.isfinite(final_loss):
        raise ConfigError(f"controller episode {r} diverged (final loss {final_loss}); lower train.lr")
    cost = final_loss + time_ratio * epochs
    baseline = cost if baseline is None else baseline_ratio * baseline + (1 - baseline_ratio) * cost
    if policy.log_probs:
        opt.zero_grad(set_to_none=True)
        ((cost - baseline) * torch.stack(policy.log_probs).sum()).backward()
        opt.step()
    return final_loss, epochs, cost, baseline


def train_controller(run_episode: Episode, num_layers: int, rounds: int = 40, hidden_size: int = 16,
                     lr: float = 0.05, time_ratio: float = 1e-2, baseline_ratio: float = 0.9,
                     min_epochs: int = 10, max_epochs: int = 100, decision_step: int = 5, seed: int = 0,
                     controller: StopController | None = None, log: Callable[[dict], None] | None = None,
                     warmup_rounds: int = 0) -> StopController:
    """Train a :class:`StopController` with REINFORCE (L2-GCN, Sec. 3.3).

    Each round runs ``run_episode(policy, round)`` -- a short staged training whose stops the
    sampling policy draws -- and gets ``(final_loss, total_epochs)``. The cost (negative reward) is
    ``final_loss + time_ratio * total_epochs``; with a moving-average baseline ``b`` (``b <-
    baseline_ratio * b + (1 - baseline_ratio) * cost``) the controller's loss is
    ``(cost - b) * sum(log p(action))``, as in the reference implementation.

    The first ``warmup_rounds`` rounds impose their stops (each layer at a decision epoch drawn
    uniformly), like the reference script's predefined warm-up actions, so the controller sees short
    and long schedules before its own policy takes over. Afterwards the controller's
    ``stop_threshold`` is set to the mean P(stop) over all decisions taken in training (the reference
    script's deployment threshold; the default deployment is the median rule, see the module docstring).

    Args:
        run_episode: the episode (see above).
        num_layers: layers per episode.
        rounds: episodes.
        hidden_size: controller width (when ``controller`` is None).
        lr: controller Adam learning rate (paper: 0.05).
        time_ratio: cost per epoch in units of training loss. Measured on Cora episodes (1024-node
            subgraphs, 2 layers, max 100 epochs each): 2e-3 learns to run every layer to the maximum,
            1e-2 stops layers once their loss flattens (~75 of 200 epochs).
        baseline_ratio: baseline moving-average factor (paper: 0.9).
        min_epochs, max_epochs, decision_step: per-layer schedule bounds.
        seed: seeds initialisation and action draws.
        controller: continue training this controller instead of a new one.
        log: called with a dict per round (round, cost, loss, epochs, baseline, mean p_stop, warm-up flag).
        warmup_rounds: rounds with imposed stops (see above).

    Returns:
        the trained controller (eval mode).
    """
    if rounds < 1:
        raise ConfigError(f"controller rounds must be >= 1, got {rounds}")
    if not 1 <= min_epochs <= max_epochs or decision_step < 1:
        raise ConfigError(f"controller schedule needs 1 <= min_epochs <= max_epochs and decision_step >= 1, got "
                          f"min_epochs={min_epochs}, max_epochs={max_epochs}, decision_step={decision_step}")
    torch.manual_seed(seed)
    ctrl = controller if controller is not None else StopController(NUM_FEATURES, hidden_size)
    ctrl.train()
    opt = torch.optim.Adam(ctrl.parameters(), lr=lr)
    baseline = None
    decision_epochs = list(range(min_epochs, max_epochs + 1, decision_step))
    if decision_epochs[-1] != max_epochs:
        decision_epochs.append(max_epochs)
    p_sum, p_count = 0.0, 0
    for r in range(rounds):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + r)
        forced = None
        if r < warmup_rounds:
            picks = torch.randint(len(decision_epochs), (num_layers,), generator=gen)
            forced = {layer: decision_epochs[int(i)] for layer, i in enumerate(picks)}
        policy = StopPolicy(ctrl, num_layers, min_epochs, max_epochs, decision_step, sample=True, generator=gen,
                            forced=forced)
        final_loss, epochs, cost, baseline = _reinforce_round(run_episode, policy, r, opt, time_ratio, baseline,
                                                              baseline_ratio)
        ps = [row["p_stop"] for row in policy.trace]
        p_sum, p_count = p_sum + sum(ps), p_count + len(ps)
        if log is not None:
            log({"round": r, "cost": cost, "loss": final_loss, "epochs": epochs, "baseline": baseline,
                 "p_stop_mean": sum(ps) / max(len(ps), 1), "warmup": forced is not None,
                 "seconds": time.perf_counter() - t0})
    if p_count:
        ctrl.stop_threshold.fill_(p_sum / p_count)
    ctrl.eval()
    return ctrl
