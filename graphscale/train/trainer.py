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
import json
import math
import os
import resource
import sys
import time

import torch
import yaml
from tqdm.auto import tqdm

from graphscale.data import SyntheticSpec, load_dataset
from graphscale.data.datasets import NodeDataset
from graphscale.errors import ConfigError, TrainingError
from graphscale.sampling.partition import check_num_parts, partition
from graphscale.sampling.samplers import epoch_seed
from graphscale.sampling.subgraph import Subgraph, full_graph, part_subgraphs
from graphscale.train import distributed
from graphscale.train.build import DatasetInfo, apply_memory, build_model, build_sampler
from graphscale.atomic import load_torch, save_json, save_text, save_torch
from graphscale.train.config import Config, to_dict
from graphscale.train.metrics import Metric, loss_fn

CHECKPOINT, BEST, RESULTS, LOG, CONFIG = "checkpoint.pt", "best_model.pt", "results.json", "log.jsonl", "config.yaml"


def check_config(cfg: Config) -> None:
    """Cheap range checks, before any data is loaded."""
    t, s, m = cfg.train, cfg.sampler, cfg.model
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {t.grad_clip}"),
        (t.eval_every >= 1, f"train.eval_every must be >= 1, got {t.eval_every}"),
        (t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}"),
        (t.patience >= 0, f"train.patience must be >= 0, got {t.patience}"),
        (t.grad_accum >= 1, f"train.grad_accum must be >= 1, got {t.grad_accum}"),
        (t.dist_timeout > 0, f"train.dist_timeout must be > 0 seconds, got {t.dist_timeout}"),
        (s.num_parts >= 1, f"sampler.num_parts must be >= 1, got {s.num_parts}"),
        (s.eval_parts >= 1, f"sampler.eval_parts must be >= 1, got {s.eval_parts}"),
        (s.eval_views >= 1, f"sampler.eval_views must be >= 1, got {s.eval_views}"),
        (m.num_layers >= 1, f"model.num_layers must be >= 1, got {m.num_layers}"),
        (m.hidden_channels >= 1, f"model.hidden_channels must be >= 1, got {m.hidden_channels}"),
        (0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    resolve_device(t.device)


def check_output_folder(cfg: Config, resume: bool, dist) -> None:
    """Refuse to overwrite or to resume what is not there; under DDP every rank also checks that all
    ranks were given the same config, and all stop together before rank 0 writes anything."""
    ckpt = os.path.join(cfg.log.out, CHECKPOINT)
    error = None
    if resume and not os.path.isfile(ckpt):
        error = f"--resume: no checkpoint at {ckpt!r}"
    if not resume and os.path.isfile(ckpt):
        error = (f"{cfg.log.out!r} already holds a checkpoint: pass --resume to continue it, "
                 f"or choose another output folder (--out / log.out=...)")
    if dist:
        distributed.check_same_config(to_dict(cfg))
        distributed.agree(error)
    elif error:
        raise ConfigError(error)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {name!r}: expected auto, cpu, cuda or cuda:N")
    return dev


def load_data(cfg: Config) -> NodeDataset:
    d = cfg.data
    spec = SyntheticSpec(num_nodes=d.num_nodes, avg_degree=d.avg_degree, num_communities=d.num_communities,
                         num_features=d.num_features, num_classes=d.num_classes, seed=d.seed,
                         p_intra=d.p_intra, feature_noise=d.feature_noise)
    return load_dataset(d.name, os.path.expanduser(d.root), synthetic=spec, node_feat_aggr=d.node_feat_aggr)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out


class Trainer:
    """Train ``cfg.model`` on ``cfg.data`` as configured; :meth:`run` returns the results dict.

    Args:
        cfg: the resolved :class:`~graphscale.train.config.Config`.
        resume: continue from ``<log.out>/checkpoint.pt``. Without it, an output folder that already
            holds a checkpoint is an error (nothing is overwritten silently).
    """

    def __init__(self, cfg: Config, resume: bool = False):
        check_config(cfg)
        self.cfg, self.resume = cfg, resume
        self.out = cfg.log.out
        # Under torchrun: join the process group (None in a 1-process job; docs/distributed.md).
        self.dist = distributed.setup(cfg.train.device, cfg.train.dist_timeout)
        self.rank, self.world_size = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        self.is_main = self.rank == 0
        try:
            self.device = self.dist.device if self.dist else resolve_device(cfg.train.device)
            check_output_folder(cfg, resume, self.dist)
        except BaseException:
            if self.dist:
                self.dist.destroy()
            raise

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        with distributed.main_first():  # rank 0 writes / downloads the data set, then the others read it
            self.data = data = load_data(cfg)
        if cfg.sampler.name != "full":
            check_num_parts(cfg.sampler.num_parts, data.num_nodes)
        if cfg.sampler.eval_name != "full":
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
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        cache = os.path.join(os.path.expanduser(cfg.data.root), "partitions")
        with distributed.main_first():  # rank 0 computes and caches the partition, the others read it
            self.sampler = build_sampler(cfg.sampler, data.edge_index, data.num_nodes, cfg.train.seed, cache,
                                         train_mask=self.train_mask)
        self.cache_dir = cache
        # Cluster-GCN's diagonal enhancement hands the model per-edge weights: the model must take them.
        if getattr(cfg.sampler, "diag_lambda", None) is not None and \
                "edge_weight" not in inspect.signature(self.model.forward).parameters:
            raise ConfigError(f"sampler.diag_lambda={cfg.sampler.diag_lambda} gives the model edge weights, but "
                              f"model.name={cfg.model.name!r} takes none; use model.name=gcn or diag_lambda=null")
        self.train_model, self.comm = self.model, None
        if self.dist:
            t = cfg.train
            self.train_model, self.comm = distributed.wrap_model(
                self.model, self.dist, static_graph=t.ddp_static_graph, find_unused=t.ddp_find_unused,
                comm_hook=t.comm_hook, powersgd_rank=t.powersgd_rank, powersgd_start_iter=t.powersgd_start_iter,
                seed=t.seed)
        self.metric = Metric(data.metric, data.task, data.evaluator)
        self.loss = loss_fn(data.task)

    # ------------------------------------------------------------------ steps
    def _forward(self, sub: Subgraph, model=None) -> torch.Tensor:
        model = self.model if model is None else model  # the DDP wrapper when training distributed
        dev = self.device
        x = self.x[sub.node_ids.to(dev)]
        ei = sub.edge_index.to(dev)
        ea = self.edge_attr[sub.edge_ids.to(dev)] if self.edge_attr is not None else None
        weight = getattr(sub, "edge_weight", None)
        if weight is not None:
            return model(x, ei, ea, edge_weight=weight.to(dev))
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
        steps = self.sampler.epoch(epoch)
        if grouped:
            steps = distributed.deal(steps, len(self.sampler), self.rank, world, accum)
        bar = tqdm(steps, total=num, desc=f"epoch {epoch}", leave=False,
                   disable=not self.cfg.log.progress or num == 1 or not self.is_main)
        for step, sub in enumerate(bar):
            mask = self.train_mask[sub.node_ids]
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
                (loss / accum if accum > 1 else loss).backward()
            if last:
                if self.cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
                self.optimizer.step()
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
        logits = self.predict()
        scores = {}
        for key in ("train", "valid", "test"):
            idx = self.data.split[key].to(logits.device)
            scores[key] = self.metric(self.y[idx], logits[idx]) if idx.numel() else float("nan")
        return distributed.broadcast_object(scores)  # rank 0's, so best-model / early-stop decisions agree

    # ------------------------------------------------------------------ files
    def _state(self, epoch: int, history: list, best: dict, elapsed: float, bad_evals: int) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": history, "best": best, "elapsed": elapsed, "bad_evals": bad_evals,
                "config": to_dict(self.cfg)}

    def _write_log(self, history: list) -> None:
        save_text("".join(json.dumps(row) + "\n" for row in history), os.path.join(self.out, LOG))

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
            if self.dist:
                self.dist.destroy()

    def _run(self) -> dict:
        cfg = self.cfg
        os.makedirs(self.out, exist_ok=True)
        resolved = to_dict(cfg)
        start_epoch, history, elapsed, bad_evals = 1, [], 0.0, 0
        best = {"valid": -math.inf, "test": float("nan"), "train": float("nan"), "epoch": 0}
        ckpt = None
        if self.resume:
            ckpt = load_torch(os.path.join(self.out, CHECKPOINT))
            diff = _config_diff({k: v for k, v in ckpt["config"].items() if k != "log"},
                                {k: v for k, v in resolved.items() if k != "log"})
            diff = [d for d in diff if not d.startswith("train.epochs:")]  # extending a run is fine
            if diff:
                raise ConfigError("--resume with a different config than the checkpoint's: " + "; ".join(diff))
        if self.is_main:  # only rank 0 writes files (DESIGN rule 11)
            save_text(yaml.safe_dump(resolved, sort_keys=False), os.path.join(self.out, CONFIG))

        self._setup()
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
            elapsed, bad_evals = ckpt["elapsed"], ckpt["bad_evals"]
            self._load_comm_state(ckpt.get("comm_state"))
            if self.is_main:
                self._write_log(history)  # drop rows of epochs the killed run did not checkpoint

        t, metric = cfg.train, self.data.metric
        bar = tqdm(range(start_epoch, t.epochs + 1), initial=start_epoch - 1, total=t.epochs, desc="train",
                   disable=not cfg.log.progress or not self.is_main)
        for epoch in bar:
            t0 = time.perf_counter()
            torch.manual_seed(epoch_seed(t.seed, epoch) + self.rank)  # dropout of this epoch (and rank), resume-safe
            loss = self._train_epoch(epoch)
            row = {"epoch": epoch, "loss": loss}
            stats = getattr(self.model, "stats", None)  # DEQ models: last training solve's convergence
            if isinstance(stats, dict) and stats:
                row["solver"] = {k: (v if isinstance(v, (bool, int)) else float(v)) for k, v in stats.items()}
            if epoch % t.eval_every == 0 or epoch == t.epochs:
                scores = self.evaluate()
                row.update({f"{k}_{metric}": v for k, v in scores.items()})
                if scores["valid"] > best["valid"]:
                    best = {"valid": scores["valid"], "test": scores["test"], "train": scores["train"],
                            "epoch": epoch}
                    if self.is_main:
                        save_torch(self.model.state_dict(), os.path.join(self.out, BEST))
                    bad_evals = 0
                else:
                    bad_evals += 1
                bar.set_postfix(loss=f"{loss:.4f}", valid=f"{scores['valid']:.4f}", best=f"{best['valid']:.4f}")
            elapsed += time.perf_counter() - t0
            row["seconds"] = elapsed
            history.append(row)
            if self.is_main:
                with open(os.path.join(self.out, LOG), "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            stop = t.patience > 0 and bad_evals >= t.patience
            if epoch % t.checkpoint_every == 0 or epoch == t.epochs or stop:
                comm = self._comm_state()  # collective: gathers every rank's hook state on rank 0
                if self.is_main:
                    state = self._state(epoch, history, best, elapsed, bad_evals)
                    if comm is not None:
                        state["comm_state"] = comm
                    save_torch(state, os.path.join(self.out, CHECKPOINT))
            if stop:
                break
        bar.close()

        results = {
            "dataset": self.data.name,
            "metric": metric,
            "best_valid": best["valid"],
            "test_at_best_valid": best["test"],
            "train_at_best_valid": best["train"],
            "best_epoch": best["epoch"],
            "epochs": history[-1]["epoch"] if history else 0,
            "seconds": elapsed,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "device": str(self.device),
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "config": resolved,
        }
        if self.dist:  # rank 0's own device, memory and communication counters
            results["distributed"] = {"world_size": self.world_size, "backend": self.dist.backend,
                                      "grad_accum": t.grad_accum, "comm_hook": t.comm_hook,
                                      "allreduce_bytes_per_step": distributed.grad_bytes(self.model)}
            if self.comm is not None:
                results["distributed"].update(self.comm.stats.as_dict())
        if self.is_main:
            save_json(results, os.path.join(self.out, RESULTS))
        return results


def train(cfg: Config, resume: bool = False) -> dict:
    """Train from a resolved config; see :class:`Trainer`."""
    if cfg.train.mode == "layerwise":  # L-GCN / L2-GCN: graphscale.train.layerwise
        from graphscale.train.layerwise import train_layerwise
        return train_layerwise(cfg, resume=resume)
    return Trainer(cfg, resume=resume).run()
