"""Config-driven node-classification trainer.

One epoch = the sampler's steps (a random node partition, one part per step, as DeeperGCN and
RevGNN train on ogbn-proteins; or the full graph); the loss is taken on the training nodes inside
each step's subgraph. Evaluation runs on the full graph or on partitions averaged over views
(RevGNN's multi-view inference) and scores with the data set's OGB Evaluator. The model with the
best validation score is kept (``best_model.pt``) and its test score reported.

Reproducibility and resume: all randomness of epoch ``e`` (partitions, dropout) is seeded from
``(train.seed, e)``, and a checkpoint holds model, optimiser, history and best-so-far, written
atomically after every ``checkpoint_every`` epochs. ``resume=True`` continues from it, so a killed
run ends with the same results as an uninterrupted one (on CPU; CUDA scatter kernels are not
bit-deterministic).

Files in ``log.out``: ``config.yaml`` (resolved), ``checkpoint.pt``, ``best_model.pt``,
``log.jsonl`` (one row per epoch), ``results.json``.
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time

import torch
from tqdm.auto import tqdm

from graphscale.data.user_data import node_dataset_from_data
from graphscale.errors import ConfigError, TrainingError
from graphscale.sampling.neighbor import NeighborBatch, NeighborSampler
from graphscale.sampling.partition import check_num_parts, partition
from graphscale.sampling.propagation import edge_adjacency, model_inference
from graphscale.sampling.samplers import epoch_seed
from graphscale.sampling.subgraph import Subgraph, full_graph, part_subgraphs
from graphscale.train import distributed
from graphscale.train.build import DatasetInfo, apply_memory, build_model, build_sampler, check_sampler_config
from graphscale.train.config import Config
from graphscale.train.metrics import Metric, loss_fn
from graphscale.train.partitioned import (build_store_sampler, evaluate_store, open_rank_data,
                                          resolve_store_config)
from graphscale.train.precision import Precision, check_precision_config
from graphscale.train.run import Run, config_for_data, load_data, new_best


def epoch_line(epoch: int, epochs: int, row: dict, metric: str, best: dict, seconds: float) -> str:
    """One plain line per epoch, printed when progress bars are off (``log.progress=false``)."""
    parts = [f"epoch {epoch}/{epochs}", f"loss {row['loss']:.4f}"]
    if f"valid_{metric}" in row:
        parts.append(f"valid {metric} {row[f'valid_{metric}']:.4f} (best {best['valid']:.4f} at epoch {best['epoch']})")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


class Trainer:
    """Train ``cfg.model`` on ``cfg.data`` as configured; :meth:`run` returns the results dict.

    Args:
        cfg: the resolved :class:`~graphscale.train.config.Config`.
        resume: continue from ``<log.out>/checkpoint.pt``. Without it, an output folder that already
            holds a checkpoint is an error (nothing is overwritten silently).
        data: a :class:`torch_geometric.data.Data` to train on instead of ``cfg.data`` (checked first,
            see :mod:`graphscale.data.user_data`); the run records ``data.name=pyg``, ``data.path=''``.
    """

    def __init__(self, cfg: Config, resume: bool = False, data=None):
        self._given = None
        if data is not None:  # the user's own graph, checked before the run starts (graphscale.data.user_data)
            cfg = config_for_data(cfg)
            self._given = node_dataset_from_data(data, name="pyg", where="Trainer(data=...)")
        self.cfg, self.resume = cfg, resume
        resolve_store_config(cfg)  # data.partitions: the data set, parts and evaluation come from the store
        self.run_ctx = run = Run(cfg, resume, checks=(check_sampler_config, check_precision_config))
        self.rank, self.world_size, self.is_main = run.rank, run.world_size, run.is_main
        self.device, self.dir, self.out = run.device, run.dir, cfg.log.out
        self.precision = Precision(cfg.train.precision, run.device)  # train.precision: autocast, loss scaling

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        store = bool(cfg.data.partitions)
        if store:  # only this rank's parts of a partitioned store (graphscale.train.partitioned)
            self.data = data = open_rank_data(cfg, self.rank, self.world_size)
        elif self._given is not None:
            self.data = data = self._given
        else:
            # local rank 0 of each node (train.data_prep=node) or rank 0 (job) writes / downloads the data set first
            with distributed.prep_first(cfg.train.data_prep, os.path.expanduser(cfg.data.root)):
                self.data = data = load_data(cfg)
        if cfg.sampler.name not in ("full", "neighbor") and not store:
            check_num_parts(cfg.sampler.num_parts, data.num_nodes)
        if cfg.sampler.eval_name not in ("full", "layerwise", "parts"):
            check_num_parts(cfg.sampler.eval_parts, data.num_nodes)
        dev = self.device
        self.x, self.y = data.x.to(dev), data.y.to(dev)
        self.edge_index = data.edge_index
        self.edge_attr = data.edge_attr.to(dev) if data.edge_attr is not None else None
        self.train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
        self.train_mask[data.split["train"]] = True

        torch.manual_seed(cfg.train.seed)  # model initialisation
        info = DatasetInfo(data.x.size(1), data.num_outputs,
                           data.edge_attr.size(1) if data.edge_attr is not None else None)
        self.model = apply_memory(build_model(cfg.model, info), cfg.memory).to(dev)
        if cfg.sampler.eval_name == "layerwise" and not hasattr(self.model, "inference_layers"):
            raise ConfigError(f"sampler.eval_name=layerwise needs a model whose layers run one at a time "
                              f"(inference_layers()); model.name={cfg.model.name} has none: use model.name=sage "
                              f"or sampler.eval_name=full", key="sampler.eval_name")
        # neighbour-sampled batches: layer l of an L-layer model only computes the hops it still needs
        self._trim = "num_sampled_nodes" in inspect.signature(self.model.forward).parameters
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        cache = os.path.join(os.path.expanduser(cfg.data.root), "partitions")
        if store:
            self.sampler = build_store_sampler(cfg, data, self.rank, self.world_size)
        else:
            with distributed.prep_first(cfg.train.data_prep):  # the same rank(s) compute and cache the partition first
                self.sampler = build_sampler(cfg.sampler, data.edge_index, data.num_nodes, cfg.train.seed, cache,
                                             train_mask=self.train_mask)
        self.cache_dir = cache
        # Cluster-GCN's diagonal enhancement hands the model per-edge weights: the model must take them.
        if getattr(cfg.sampler, "diag_lambda", None) is not None and \
                "edge_weight" not in inspect.signature(self.model.forward).parameters:
            raise ConfigError(f"sampler.diag_lambda={cfg.sampler.diag_lambda} gives the model edge weights, but "
                              f"model.name={cfg.model.name!r} takes none; use model.name=gcn or diag_lambda=null")
        self.train_model, self.comm = self.model, None
        if self.run_ctx.dist:
            t = cfg.train
            self.train_model, self.comm = distributed.wrap_model(
                self.model, self.run_ctx.dist, static_graph=t.ddp_static_graph, find_unused=t.ddp_find_unused,
                comm_hook=t.comm_hook, powersgd_rank=t.powersgd_rank, powersgd_start_iter=t.powersgd_start_iter,
                seed=t.seed)
        self.metric = Metric(data.metric, data.task, data.evaluator)
        self.loss = loss_fn(data.task)
        graph = data.describe() if store else f"{data.name}: {data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges"
        self.run_ctx.say(f"{graph}; model "
                         f"{cfg.model.name} ({sum(p.numel() for p in self.model.parameters()):,} parameters); "
                         f"{len(self.sampler)} step(s) per epoch on {self.device}, {self.world_size} process(es)")

    # ------------------------------------------------------------------ steps
    def _forward(self, sub: Subgraph, model=None) -> torch.Tensor:
        with self.precision.autocast():  # train.precision=bf16/fp16; nothing for fp32
            out = self._model_forward(sub, model)
        return out.float()  # loss and metrics in fp32 (a no-op for fp32 logits)

    def _model_forward(self, sub: Subgraph, model=None) -> torch.Tensor:
        model = self.model if model is None else model  # the DDP wrapper when training distributed
        dev = self.device
        x = self.x[sub.node_ids.to(dev)]
        ei = sub.edge_index.to(dev)
        ea = self.edge_attr[sub.edge_ids.to(dev)] if self.edge_attr is not None else None
        weight = getattr(sub, "edge_weight", None)
        if weight is not None:
            return model(x, ei, ea, edge_weight=weight.to(dev))
        if isinstance(sub, NeighborBatch) and self._trim:
            return model(x, ei, ea, num_sampled_nodes=sub.num_sampled_nodes, num_sampled_edges=sub.num_sampled_edges)
        return model(x, ei, ea)

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        total, count = 0.0, 0
        # One optimiser step per G = W * A sampler steps: rank r takes steps r, r + W, ... of the epoch
        # (padded to a multiple of G; graphscale.train.distributed.deal), DDP averages over ranks and
        # A micro-steps accumulate. G = 1 is the plain path: one step, one update.
        world, accum = self.world_size, self.cfg.train.grad_accum
        grouped = world * accum > 1
        num = distributed.local_steps(len(self.sampler), world, accum)
        if grouped and isinstance(self.sampler, NeighborSampler):  # sample only this rank's (padded) steps
            steps = self.sampler.epoch(epoch, distributed.rank_step_indices(len(self.sampler), self.rank, world, accum))
        elif grouped and getattr(self.sampler, "rank_local", False):  # a store sampler plans this rank's steps
            steps = self.sampler.epoch(epoch)
        elif grouped:
            steps = distributed.deal(self.sampler.epoch(epoch), len(self.sampler), self.rank, world, accum)
        else:
            steps = self.sampler.epoch(epoch)
        bar = tqdm(steps, total=num, desc=f"epoch {epoch}", leave=False,
                   disable=not self.cfg.log.progress or num == 1 or not self.is_main)
        for step, sub in enumerate(bar):
            mask = self.train_mask[sub.node_ids]
            if isinstance(sub, NeighborBatch):  # the loss is on the seeds; the other nodes only feed them
                mask[sub.batch_size:] = False
            if not grouped and not mask.any():
                continue
            if step % accum == 0:
                self.optimizer.zero_grad(set_to_none=True)
            last = step % accum == accum - 1  # DDP all-reduces on the last micro-step of a group only
            with contextlib.nullcontext() if world == 1 or last else self.train_model.no_sync():
                out = self._forward(sub, self.train_model)
                mask = mask.to(self.device)
                if mask.any():
                    loss = self.loss(out[mask], self.y[sub.node_ids.to(self.device)][mask])
                else:  # a step without training nodes still runs (zero gradient): ranks stay in lock-step
                    loss = out.sum() * 0.0
                if not torch.isfinite(loss):
                    where = f" on rank {self.rank}" if world > 1 else ""
                    raise TrainingError(f"loss is {loss.item()} at epoch {epoch}, step {step}{where}: training "
                                        f"diverged (try a lower train.lr={self.cfg.train.lr}, or train.grad_clip)")
                self.precision.scale(loss / accum if accum > 1 else loss).backward()
            if last:
                if self.cfg.train.grad_clip > 0:
                    self.precision.unscale_(self.optimizer)  # fp16: clip the true gradients, not the scaled
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                self.precision.step(self.optimizer)
            n = int(mask.sum())
            total, count = total + loss.detach().item() * n, count + n
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        if world > 1:  # mean over every rank's training nodes
            total, count = distributed.all_reduce_sum([total, count])
        return total / max(count, 1)

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """Logits for every node: full graph, or the mean over ``eval_views`` partitions."""
        self.model.eval()
        s, n = self.cfg.sampler, self.data.num_nodes
        # Evaluation subgraphs are normalised as the training batches were (Cluster-GCN diag_lambda).
        transform = getattr(self.sampler, "transform", lambda sub: sub)
        if s.eval_name == "full":
            return self._forward(transform(full_graph(self.edge_index, n)))
        if s.eval_name == "layerwise":  # every rank computes all of it (one layer's [N, H] at a time)
            if getattr(self, "_eval_adj", None) is None:
                self._eval_adj = edge_adjacency(self.edge_index, n, self.x.dtype)
            return model_inference(self.model, self.x, self._eval_adj, batch_size=s.eval_batch_size,
                                   device=self.device).to(self.device)
        out, k = None, -1
        if self.world_size > 1:  # evaluation parts are dealt round-robin over ranks, logits summed over ranks
            out = torch.zeros(n, self.data.num_outputs, device=self.device)
        for view in range(s.eval_views):
            # Fixed per view (not per epoch): scores of different epochs compare on the same parts,
            # and METIS views come from the partition cache after the first evaluation.
            part = partition(s.eval_name, self.edge_index, n, s.eval_parts,
                             seed=epoch_seed(self.cfg.train.seed + 7_777, view),
                             cache_dir=self.cache_dir if s.eval_name == "metis" else None)
            for sub in part_subgraphs(self.edge_index, part, s.eval_parts):
                k += 1
                if k % self.world_size != self.rank:
                    continue
                logits = self._forward(transform(sub))
                if out is None:
                    out = torch.zeros(n, logits.size(1), device=logits.device, dtype=logits.dtype)
                out[sub.node_ids.to(out.device)] += logits
        if self.world_size > 1:
            distributed.all_reduce_(out)
        return out / s.eval_views

    def evaluate(self) -> dict:
        if self.cfg.data.partitions:  # per part on each rank, gathered by node id (graphscale.train.partitioned)
            return evaluate_store(self)
        logits = self.predict()
        scores = {}
        for key in ("train", "valid", "test"):
            idx = self.data.split[key].to(logits.device)
            scores[key] = self.metric(self.y[idx], logits[idx]) if idx.numel() else float("nan")
        return distributed.broadcast_object(scores)  # rank 0's, so best-model / early-stop decisions agree

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, history: list, best: dict, elapsed: float, bad_evals: int, finished: bool) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": history, "best": best, "elapsed": elapsed, "bad_evals": bad_evals,
                "config": self.run_ctx.resolved, "finished": finished,
                "peak_memory_bytes": self.run_ctx.peak_memory(self._ckpt),
                "grad_scaler": self.precision.state_dict()}

    def _comm_state(self) -> dict | None:
        """Every rank's communication-hook state (error-feedback residuals differ per rank), gathered
        on rank 0 for its checkpoint (collective: all ranks call it). ``None`` without a hook."""
        if self.comm is None:
            return None
        ranks = distributed.gather_object(self.comm.state_dict())
        return {"hook": self.cfg.train.comm_hook, "world_size": self.world_size, "ranks": ranks}

    def _load_comm_state(self, saved: dict | None) -> None:
        if self.comm is None:
            return
        hook = self.cfg.train.comm_hook
        if saved is not None and saved["hook"] == hook and saved["world_size"] == self.world_size:
            self.comm.load_state_dict(saved["ranks"][self.rank])
        elif self.is_main:
            found = "none" if saved is None else f"{saved['hook']} on {saved['world_size']} processes"
            print(f"graphscale train: the checkpoint holds no {hook} state for {self.world_size} processes "
                  f"(found: {found}); error feedback restarts from zero", file=sys.stderr)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.run_ctx.close()

    def _run(self) -> dict:
        self._ckpt = ckpt = self.dir.resume_state(self.run_ctx.resolved) if self.resume else None
        if ckpt is not None:
            done = self.dir.finished_results(ckpt)
            t = self.cfg.train
            early = t.patience > 0 and ckpt["bad_evals"] >= t.patience  # it stopped early; it would again
            if done is not None and (ckpt["epoch"] >= t.epochs or early):
                self.run_ctx.say(f"the run in {self.out} already finished ({ckpt['epoch']} epochs); nothing to do")
                return done
        self.dir.write_config(self.run_ctx.resolved)
        self._setup()
        loop = {"start": 1, "history": [], "best": new_best(), "elapsed": 0.0, "bad_evals": 0}
        if ckpt is not None:
            self._restore(ckpt, loop)
        history = self._loop(loop)
        return self._finish(history, loop)

    def _restore(self, ckpt: dict, loop: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.precision.load_state_dict(ckpt.get("grad_scaler"))
        loop.update(start=ckpt["epoch"] + 1, history=ckpt["history"], best=ckpt["best"], elapsed=ckpt["elapsed"],
                    bad_evals=ckpt["bad_evals"])
        self._load_comm_state(ckpt.get("comm_state"))
        self.dir.write_log(loop["history"])  # drop rows of epochs the killed run did not checkpoint

    def _loop(self, loop: dict) -> list:
        t, metric, history = self.cfg.train, self.data.metric, loop["history"]
        bars = self.cfg.log.progress
        bar = tqdm(range(loop["start"], t.epochs + 1), initial=loop["start"] - 1, total=t.epochs, desc="train",
                   disable=not bars or not self.is_main)
        for epoch in bar:
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(t.seed, epoch) + self.rank)  # dropout of this epoch (and rank), resume-safe
            row = {"epoch": epoch, "loss": self._train_epoch(epoch)}
            stats = getattr(self.model, "stats", None)  # DEQ models: last training solve's convergence
            if isinstance(stats, dict) and stats:
                row["solver"] = {k: (v if isinstance(v, (bool, int)) else float(v)) for k, v in stats.items()}
            if epoch % t.eval_every == 0 or epoch == t.epochs:
                self._score(epoch, row, loop)
                bar.set_postfix(loss=f"{row['loss']:.4f}", valid=f"{row[f'valid_{metric}']:.4f}",
                                best=f"{loop['best']['valid']:.4f}")
            loop["elapsed"] += time.perf_counter() - t0
            row["seconds"] = loop["elapsed"]
            history.append(row)
            self.dir.append_log(row)
            if not bars and self.is_main:
                print(epoch_line(epoch, t.epochs, row, metric, loop["best"], loop["elapsed"]), flush=True)
            stop = t.patience > 0 and loop["bad_evals"] >= t.patience
            last = epoch == t.epochs or stop
            if epoch % t.checkpoint_every == 0 or last:
                self._checkpoint(epoch, loop, finished=last)
            if stop:
                break
        bar.close()
        return history

    def _score(self, epoch: int, row: dict, loop: dict) -> None:
        scores = self.evaluate()
        row.update({f"{k}_{self.data.metric}": v for k, v in scores.items()})
        if scores["valid"] > loop["best"]["valid"]:
            loop["best"] = {"valid": scores["valid"], "test": scores["test"], "train": scores["train"], "epoch": epoch}
            self.dir.save_best(self.model.state_dict())
            loop["bad_evals"] = 0
        else:
            loop["bad_evals"] += 1

    def _checkpoint(self, epoch: int, loop: dict, finished: bool) -> None:
        comm = self._comm_state()  # collective: gathers every rank's hook state on rank 0
        if self.is_main:
            state = self._state(epoch, loop["history"], loop["best"], loop["elapsed"], loop["bad_evals"], finished)
            if comm is not None:
                state["comm_state"] = comm
            self.dir.save_checkpoint(state)

    def _finish(self, history: list, loop: dict) -> dict:
        t, run = self.cfg.train, self.run_ctx
        results = run.results(self.data.name, self.data.metric, loop["best"], history[-1]["epoch"] if history else 0,
                              loop["elapsed"], self.model, run.peak_memory(self._ckpt))
        if run.dist:  # rank 0's own device, memory and communication counters
            results["distributed"] = {"world_size": self.world_size, "backend": run.dist.backend,
                                      "grad_accum": t.grad_accum, "comm_hook": t.comm_hook,
                                      "allreduce_bytes_per_step": distributed.grad_bytes(self.model)}
            if self.comm is not None:
                results["distributed"].update(self.comm.stats.as_dict())
        self.dir.write_results(results)
        return results


