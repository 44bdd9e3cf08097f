"""``train.mode=layerwise``: the L-GCN / L2-GCN run (You et al., CVPR 2020) on the shared run lifecycle.

The algorithm (aggregate once, train one block on rows, freeze, map forward) is in
:mod:`graphscale.train.layerwise`; the output folder, resume and files are :mod:`graphscale.train.run`'s,
the same as the standard trainer's. Checkpoints fall after every finished layer; a resumed run
replays the finished, frozen layers to rebuild the features, then continues with identical randomness.
"""
from __future__ import annotations

import json
import os
import time

import torch
from torch import Tensor, nn

from graphscale.atomic import save_text
from graphscale.errors import DataError
from graphscale.nn.models.layerwise_gcn import LayerwiseGCN
from graphscale.sampling.feature_store import FeatureStore, map_rows
from graphscale.sampling.propagation import gcn_adjacency, propagate
from graphscale.train import distributed
from graphscale.train.config import Config
from graphscale.train.l2gcn_controller import (NUM_FEATURES, StopController, StopPolicy, load_controller,
                                               save_controller, train_controller)
from graphscale.train.layerwise import (FixedEpochs, LayerSettings, Stopper, check_layerwise_config,
                                        forward_features, gcn_episode, train_layer)
from graphscale.train.metrics import Metric, loss_fn
from graphscale.train.run import Run, load_data, new_best

CONTROLLER = "controller.pt"


def _check_controller_file(cfg: Config) -> None:
    t = cfg.train
    if t.controller == "l2o" and t.controller_path and os.path.isfile(t.controller_path):
        load_controller(t.controller_path, NUM_FEATURES, t.l2o_hidden)  # a wrong file fails now, not after loading


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
        cfg: the resolved config: ``model.name=lgcn`` (:class:`LayerwiseGCN`) with ``hidden_channels``,
            ``num_layers``, ``dropout``; the ``train.*`` keys of the layer-wise mode (``--list-keys``).
        resume: continue after the last finished layer of ``<log.out>/checkpoint.pt``.
    """

    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.run_ctx = run = Run(cfg, resume, checks=(check_layerwise_config, _check_controller_file))
        self.rank, self.world_size, self.is_main = run.rank, run.world_size, run.is_main
        self.device, self.dir, self.out = run.device, run.dir, cfg.log.out
        self.comm_stats: list = []

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.run_ctx.close()

    # ------------------------------------------------------------------ setup
    def _controller(self, data, loss) -> tuple[StopController, float]:
        t = self.cfg.train
        own = self.dir.path(CONTROLLER)
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
            save_text("".join(json.dumps(r) + "\n" for r in rows), self.dir.path("controller_log.jsonl"))
        return ctrl, seconds

    def _wrap(self, step: nn.Module) -> nn.Module:
        """DDP around one layer's step module (a fresh DDP per layer: the trained parameters change)."""
        t = self.cfg.train
        ddp, hook = distributed.wrap_model(step, self.run_ctx.dist, static_graph=t.ddp_static_graph,
                                            find_unused=t.ddp_find_unused, comm_hook=t.comm_hook,
                                            powersgd_rank=t.powersgd_rank,
                                            powersgd_start_iter=t.powersgd_start_iter, seed=t.seed)
        if hook is not None:  # a fresh hook (and state) per layer: checkpoints fall between layers
            self.comm_stats.append(hook.stats)
        return ddp

    def _store(self, data) -> FeatureStore:
        """The feature store, after checking that the largest buffers fit (on every rank of this host)."""
        t, world = self.cfg.train, self.world_size
        store = FeatureStore(t.storage, t.storage_dir or self.dir.path("features"))
        # input width + hidden width; every rank of this host holds its own copy (each computes the same aggregation)
        per_host = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if world > 1 else 1
        fit_error = None
        try:
            store.check_fits(data.num_nodes, max(data.x.size(1), self.cfg.model.hidden_channels) * 2 * per_host,
                             "layer-wise feature buffers" + (f" ({per_host} ranks on this host)" if per_host > 1 else ""))
        except DataError as exc:
            if world == 1:
                raise
            fit_error = str(exc)
        if world > 1:  # hosts differ: every rank stops with the message instead of waiting for the others
            distributed.agree(fit_error, DataError)
        return store

    def _setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        # local rank 0 of each node (train.data_prep=node) or rank 0 (job) writes / downloads the data set first
        with distributed.prep_first(t.data_prep, os.path.expanduser(cfg.data.root)):
            self.data = data = load_data(cfg)
        self.store = self._store(data)
        self.metric, self.loss = Metric(data.metric, data.task, data.evaluator), loss_fn(data.task)
        self.adj = gcn_adjacency(data.edge_index, data.num_nodes, data.x.dtype)
        torch.manual_seed(t.seed)
        self.model = LayerwiseGCN(data.x.size(1), cfg.model.hidden_channels, data.num_outputs, cfg.model.num_layers,
                                  cfg.model.dropout).to(self.device)
        self.settings = LayerSettings(t.batch_size, t.lr, t.weight_decay, t.grad_clip, t.seed)
        self.policy, self.controller_seconds = None, 0.0
        if t.controller == "l2o":
            ctrl, self.controller_seconds = self._controller(data, self.loss)
            self.policy = StopPolicy(ctrl, cfg.model.num_layers, t.l2o_min_epochs, t.layer_epochs,
                                     t.l2o_decision_step, t.l2o_threshold)
        self.stopper: Stopper = self.policy if self.policy is not None else FixedEpochs(t.layer_epochs)
        self.run_ctx.say(f"{data.name}: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges; layer-wise "
                         f"{'L2-GCN' if self.policy is not None else 'L-GCN'}, {cfg.model.num_layers} layers, features "
                         f"in {t.storage}, on {self.device}, {self.world_size} process(es)")

    # ------------------------------------------------------------------ main loop
    def _run(self) -> dict:
        ckpt = self.dir.resume_state(self.run_ctx.resolved, done_key="layers") if self.resume else None
        L = self.cfg.model.num_layers
        if ckpt is not None and ckpt.get("finished_layers", 0) >= L:
            done = self.dir.finished_results({**ckpt, "finished": True})
            if done is not None:
                self.run_ctx.say(f"the run in {self.out} already finished ({L} layers); nothing to do")
                return done
        self.dir.write_config(self.run_ctx.resolved)
        self._setup()
        s = {"start": 0, "history": [], "best": new_best(), "elapsed": 0.0, "train_elapsed": 0.0,
             "total_epochs": 0, "used": []}
        if ckpt is not None:
            self._restore(ckpt, s)
        self.dir.write_log(s["history"])
        self._ckpt = ckpt
        h = self._replay(s["start"])
        for layer in range(s["start"], L):
            h = self._train_one_layer(layer, h, s)
        self.store.release_all()
        return self._finish(s)

    def _restore(self, ckpt: dict, s: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        s.update(start=ckpt["finished_layers"], history=ckpt["history"], best=ckpt["best"], elapsed=ckpt["elapsed"],
                 train_elapsed=ckpt["train_elapsed"], total_epochs=ckpt["total_epochs"],
                 used=ckpt["layer_epochs_used"])
        self.controller_seconds = ckpt["controller_seconds"]
        if self.policy is not None and ckpt["policy"] is not None:
            self.policy.load_state(ckpt["policy"])

    def _replay(self, finished: int) -> Tensor:
        """The input of layer ``finished`` (resume: the finished, frozen layers run forward again)."""
        x = h = self.data.x
        for layer in range(finished):
            z, h_next = forward_features(self.model, layer, h, self.adj, self.store, self.device)
            self.store.release(z)
            if h is not x:
                self.store.release(h)
            h = h_next
        return h

    def _train_one_layer(self, layer: int, h: Tensor, s: dict) -> Tensor:
        t0 = time.perf_counter()
        n, last_layer = self.data.num_nodes, layer == self.cfg.model.num_layers - 1
        z = self.store.empty(n, h.size(1), what=f"layer {layer + 1} aggregated features")
        propagate(self.adj, h, z, device=self.device)
        clock = {"train": time.perf_counter() - t0, "eval": 0.0, "mark": time.perf_counter()}
        dist_kw = {"rank": self.rank, "world_size": self.world_size, "wrap": self._wrap} if self.world_size > 1 else {}
        epochs, _ = train_layer(self.model, layer, z, self.data.y, self.data.split["train"], self.loss, self.stopper,
                                self.settings, self.device, self._on_epoch(layer, z, clock, s), **dist_kw)
        if last_layer and f"valid_{self.data.metric}" not in s["history"][-1]:  # always score the final model
            self._score(layer, z, s["history"][-1], s, s["total_epochs"])
            self.dir.write_log(s["history"])
        t1 = time.perf_counter()
        if not last_layer:  # map every node forward through the frozen block
            h_next = self.store.empty(n, self.model.layers[layer].out_features, what=f"layer {layer + 1} output features")
            self.model.eval()
            map_rows(lambda rows: self.model.block(layer, rows), z, h_next, device=self.device)
            if h is not self.data.x:
                self.store.release(h)
            h = h_next
        self.store.release(z)
        clock["train"] += time.perf_counter() - t1
        s["train_elapsed"] += clock["train"]
        s["elapsed"] += clock["train"] + clock["eval"]
        s["used"].append(epochs)
        self._checkpoint(layer, s)
        return h

    def _on_epoch(self, layer: int, z: Tensor, clock: dict, s: dict):
        t, metric = self.cfg.train, self.data.metric
        bars = self.cfg.log.progress

        def on_epoch(epoch: int, mean: float) -> None:
            now = time.perf_counter()
            clock["train"] += now - clock["mark"]
            s["total_epochs"] += 1
            row = {"layer": layer + 1, "layer_epoch": epoch, "epoch": s["total_epochs"], "loss": mean}
            if epoch % t.eval_every == 0:
                self._score(layer, z, row, s, s["total_epochs"])
            clock["eval"] += time.perf_counter() - now
            row["train_seconds"] = s["train_elapsed"] + clock["train"]
            row["seconds"] = s["elapsed"] + clock["train"] + clock["eval"]
            s["history"].append(row)
            self.dir.append_log(row)
            if not bars and self.is_main:  # a line per epoch when progress bars are off
                valid = f"  valid {metric} {row[f'valid_{metric}']:.4f}" if f"valid_{metric}" in row else ""
                print(f"layer {layer + 1}/{self.cfg.model.num_layers} epoch {epoch}  loss {mean:.4f}{valid}  "
                      f"{row['seconds']:.1f} s", flush=True)
            clock["mark"] = time.perf_counter()
        return on_epoch

    def _score(self, layer: int, z: Tensor, row: dict, s: dict, epoch: int) -> None:
        scores = self._evaluate(layer, z)
        row.update({f"{k}_{self.data.metric}": v for k, v in scores.items()})
        if layer == self.cfg.model.num_layers - 1 and scores["valid"] > s["best"]["valid"]:
            s["best"] = {"valid": scores["valid"], "test": scores["test"], "train": scores["train"], "epoch": epoch}
            self.dir.save_best(self.model.state_dict())

    def _checkpoint(self, layer: int, s: dict) -> None:
        self.dir.save_checkpoint({
            "finished_layers": layer + 1, "model": self.model.state_dict(), "history": s["history"],
            "best": s["best"], "elapsed": s["elapsed"], "train_elapsed": s["train_elapsed"],
            "total_epochs": s["total_epochs"], "layer_epochs_used": s["used"],
            "controller_seconds": self.controller_seconds,
            "policy": self.policy.state() if self.policy is not None else None, "config": self.run_ctx.resolved,
            "peak_memory_bytes": self.run_ctx.peak_memory(self._ckpt)})

    def _finish(self, s: dict) -> dict:
        run, t, L = self.run_ctx, self.cfg.train, self.cfg.model.num_layers
        results = run.results(self.data.name, self.data.metric, s["best"], s["total_epochs"], s["elapsed"], self.model,
                              run.peak_memory(self._ckpt))
        results.update(train_seconds=s["train_elapsed"], controller_seconds=self.controller_seconds,
                       layer_epochs_used=s["used"])
        if run.dist:  # rank 0's own device and memory; gradient bytes summed over the layers' hooks
            results["distributed"] = {"world_size": self.world_size, "backend": run.dist.backend,
                                      "comm_hook": t.comm_hook, "allreduce_bytes_per_step": [
                                          distributed.grad_bytes(self.model.layers[i]) +
                                          distributed.grad_bytes(self.model.head) for i in range(L)]}
            if self.comm_stats:
                from graphscale.train.comm_hooks import CommStats
                total = CommStats(t.comm_hook)
                for part in self.comm_stats:  # one per trained layer
                    total.add(part.bytes, part.uncompressed_bytes, last_bucket=False)
                    total.steps += part.steps
                results["distributed"].update(total.as_dict())
        self.dir.write_results(results)
        return results

    @torch.no_grad()
    def _evaluate(self, layer: int, z: Tensor) -> dict:
        """Scores of the depth-``layer + 1`` network on the split nodes, from ``z = A_hat H_layer-1``."""
        model, data = self.model, self.data
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
            scores[key] = self.metric(data.y[idx], logits)
        model.train(was)
        # Every rank scores (as the standard trainer's full-graph evaluation); rank 0's scores are
        # used everywhere so that the best-model decision agrees.
        return distributed.broadcast_object(scores) if self.world_size > 1 else scores
