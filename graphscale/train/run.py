"""One run lifecycle for every trainer: process group, device, output folder, resume, files.

A trainer (:class:`graphscale.train.trainer.Trainer`, :class:`graphscale.train.layerwise_trainer.
LayerwiseTrainer`) owns its training loop and nothing else. What every run does around the loop lives
here, once:

* :class:`Run` -- checks the config before anything is loaded (ranges, keys the chosen components
  do not use), joins the process group under ``torchrun`` (``None`` in a 1-process job), picks the
  device, checks the output folder, and closes the process group at the end.
* :class:`RunDir` -- the output folder: refuses to overwrite a run or to resume what is not there,
  reads a checkpoint with a one-line error when it is unreadable, refuses a resume whose config
  differs from the checkpoint's, and writes ``config.yaml``, ``checkpoint.pt``, ``best_model.pt``,
  ``log.jsonl`` and ``results.json`` atomically (rank 0 only, DESIGN rule 11).

Resume rules: a config may differ from the checkpoint's only in ``log.*`` and by a larger
``train.epochs`` (extending a run); ``train.epochs`` below the epochs already trained is an error.
Resuming a run that already finished retrains nothing and rewrites nothing: the results written at
the end stand (:meth:`RunDir.finished_results`). The peak memory in ``results.json`` is the largest of
every process that worked on the run (the checkpoint carries it across a resume).
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import sys
import zipfile

import torch
import yaml

from graphscale.atomic import save_json, save_text, save_torch
from graphscale.data import SyntheticSpec, load_dataset
from graphscale.data.datasets import NodeDataset
from graphscale.data.user_data import check_user_source, is_user_dataset, load_user_dataset
from graphscale.errors import ConfigError, GraphscaleError
from graphscale.train import distributed
from graphscale.train.config import Config, to_dict

CHECKPOINT, BEST, RESULTS, LOG, CONFIG = "checkpoint.pt", "best_model.pt", "results.json", "log.jsonl", "config.yaml"


class CheckpointError(GraphscaleError):
    """A checkpoint file cannot be read or is not one of ours."""


class RunFileError(GraphscaleError):
    """A file of the run cannot be written (disk full, folder removed, permissions)."""


def check_common(cfg: Config) -> None:
    """Range checks every trainer shares, before any data is loaded."""
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
        (bool(cfg.log.out), "log.out must name an output folder, got ''"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    resolve_device(t.device)
    if not getattr(cfg, "_given_data", False):  # Trainer(cfg, data=...) brings its own graph
        check_user_source(cfg.data.name, cfg.data.path)


def load_data(cfg: Config) -> NodeDataset:
    """The data set ``cfg.data`` names (written first for a synthetic set)."""
    d = cfg.data
    spec = SyntheticSpec(num_nodes=d.num_nodes, avg_degree=d.avg_degree, num_communities=d.num_communities,
                         num_features=d.num_features, num_classes=d.num_classes, seed=d.seed,
                         p_intra=d.p_intra, feature_noise=d.feature_noise, like=d.like, scale=d.scale,
                         num_edges=d.num_edges)
    if is_user_dataset(d.name):  # data.name=pyg (data.path) or MODULE:CLASS (docs/user-data.md)
        return load_user_dataset(d.name, os.path.expanduser(d.root), d.path)
    return load_dataset(d.name, os.path.expanduser(d.root), synthetic=spec, node_feat_aggr=d.node_feat_aggr)


def config_for_data(cfg: Config) -> Config:
    """The config of a run on a ``Data`` passed in Python (``Trainer(cfg, data=...)``): a copy with
    ``data.name=pyg`` and ``data.path=''`` (recorded so in ``results.json``; an empty path = given in Python).
    A ``data.name`` other than ``pyg`` or a ``data.path`` set explicitly would be ignored: an error."""
    import dataclasses

    from graphscale.train.config import explicit_keys
    explicit = explicit_keys(cfg)
    for key in ("data.name", "data.path", "data.partitions"):
        if key in explicit and not (key == "data.name" and cfg.data.name == "pyg"):
            where = f" ({explicit[key]})" if explicit[key] else ""
            raise ConfigError(f"{key} is set{where} but the graph is the Data passed in Python (data=...); remove "
                              f"{key}", key=key)
    out = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name="pyg", path=""))
    object.__setattr__(out, "_sources", explicit)
    object.__setattr__(out, "_given_data", True)
    return out


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


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak: CUDA bytes allocated on a GPU, peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two resolved configs."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint with ``weights_only=True`` (tensors, containers, numbers, strings only: safe for
    a file from anywhere). Anything unreadable is a :class:`CheckpointError` naming the file."""
    what = "--resume from an earlier good checkpoint, or start over in a new output folder"
    try:
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"{path} is empty (0 bytes; a write was cut short?): {what}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or exc}): {what}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, IndexError) as exc:
        # torch's own message here may advise weights_only=False: never repeat that for an untrusted file
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable graphscale checkpoint (truncated or corrupt: {first}): "
                              f"{what}") from None
    if not isinstance(state, dict) or "config" not in state or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is not a graphscale checkpoint (it holds no run config): {what}")
    return state


class RunDir:
    """The output folder of one run (see the module docstring). Only ``is_main`` writes."""

    def __init__(self, out: str, is_main: bool = True):
        self.out, self.is_main = out, is_main

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def preflight(self, resume: bool) -> str | None:
        """The reason this run cannot use the folder, or ``None``: resume without a checkpoint, a fresh
        run over an existing checkpoint, a folder that cannot be created or written."""
        ckpt = self.path(CHECKPOINT)
        if resume and not os.path.isfile(ckpt):
            return f"--resume: no checkpoint at {ckpt!r}"
        if not resume and os.path.isfile(ckpt):
            return (f"{self.out!r} already holds a checkpoint: pass --resume to continue it, "
                    f"or choose another output folder (--out / log.out=...)")
        if self.is_main:
            try:
                os.makedirs(self.out, exist_ok=True)
            except OSError as exc:
                return f"cannot create the output folder {self.out!r}: {exc.strerror or exc}"
            if not os.access(self.out, os.W_OK | os.X_OK):
                return f"the output folder {self.out!r} is not writable"
        return None

    def resume_state(self, resolved: dict, done_key: str = "epoch") -> dict:
        """The checkpoint to continue, after checking its config against this run's."""
        ckpt = load_checkpoint(self.path(CHECKPOINT))
        old = {k: v for k, v in ckpt["config"].items() if k != "log"}
        new = {k: v for k, v in resolved.items() if k != "log"}
        diff = [d for d in config_diff(old, new) if not d.startswith("train.epochs:")]  # extending is fine
        if diff:
            raise ConfigError("--resume with a different config than the checkpoint's: " + "; ".join(diff))
        trained = int(ckpt.get("epoch", 0)) if done_key == "epoch" else None
        epochs = resolved["train"]["epochs"]
        if trained is not None and epochs < trained:
            raise ConfigError(f"--resume with train.epochs={epochs}, but the checkpoint has already trained {trained} "
                              f"epochs: pass train.epochs >= {trained} (or leave it as it was)")
        return ckpt

    def finished_results(self, ckpt: dict) -> dict | None:
        """The results of a run the checkpoint marks as finished (``None`` if it is not, or if its
        ``results.json`` is missing: then the run is finished again from the checkpoint)."""
        if not ckpt.get("finished"):
            return None
        try:
            with open(self.path(RESULTS)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _write(self, name: str, write) -> None:
        """Run ``write(path)`` on the main rank; a full disk or a vanished folder is a one-line error
        (the atomic writers leave the previous file of that name intact)."""
        if not self.is_main:
            return
        path = self.path(name)
        try:
            write(path)
        except OSError as exc:
            kept = " (the previous checkpoint is intact: fix this, then --resume)" if os.path.isfile(
                self.path(CHECKPOINT)) else ""
            raise RunFileError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None

    def write_config(self, resolved: dict) -> None:
        self._write(CONFIG, lambda p: save_text(yaml.safe_dump(resolved, sort_keys=False), p))

    def append_log(self, row: dict) -> None:
        def append(path):
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        self._write(LOG, append)

    def write_log(self, history: list) -> None:
        """Rewrite the log from ``history`` (drops rows of epochs a killed run never checkpointed)."""
        self._write(LOG, lambda p: save_text("".join(json.dumps(row) + "\n" for row in history), p))

    def save_checkpoint(self, state: dict) -> None:
        self._write(CHECKPOINT, lambda p: save_torch(state, p))

    def save_best(self, model_state: dict) -> None:
        self._write(BEST, lambda p: save_torch(model_state, p))

    def write_results(self, results: dict) -> None:
        self._write(RESULTS, lambda p: save_json(results, p))

    def remove_stale_temps(self) -> list[str]:
        """Delete the temporary files a run killed mid-write left (``.checkpoint.pt.XXXX``); the file
        they were meant to replace is whole (atomic rename). Returns the names removed."""
        removed = []
        if not self.is_main or not os.path.isdir(self.out):
            return removed
        ours = (CHECKPOINT, BEST, RESULTS, LOG, CONFIG)
        for name in os.listdir(self.out):
            if name.startswith(".") and any(name.startswith(f".{f}.") for f in ours):
                try:
                    os.unlink(self.path(name))
                    removed.append(name)
                except OSError:
                    pass
        return removed


class Run:
    """Everything a trainer needs around its loop; close it with :meth:`close` (or use ``with``).

    Args:
        cfg: the resolved config.
        resume: continue from ``<log.out>/checkpoint.pt``.
        checks: extra config checks of the trainer (called before the process group is joined).

    Attributes: ``dist`` (the :class:`~graphscale.train.distributed.DistContext` or ``None``), ``rank``,
    ``world_size``, ``is_main``, ``device``, ``dir`` (:class:`RunDir`), ``resolved`` (the config as a dict).
    """

    def __init__(self, cfg: Config, resume: bool = False, checks=()):
        from graphscale.train.schema import check_used_keys

        check_common(cfg)
        check_used_keys(cfg)
        for check in checks:
            check(cfg)
        self.cfg, self.resume = cfg, resume
        self.resolved = to_dict(cfg)
        # Under torchrun: join the process group (None in a 1-process job; docs/distributed.md).
        self.dist = distributed.setup(cfg.train.device, cfg.train.dist_timeout, force=cfg.train.distributed)
        self.rank, self.world_size = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        self.is_main = self.rank == 0
        self.dir = RunDir(cfg.log.out, self.is_main)
        try:
            self.device = self.dist.device if self.dist else resolve_device(cfg.train.device)
            error = self.dir.preflight(resume)
            if error is None:
                self.dir.remove_stale_temps()
            if self.dist:  # every rank checks the configs agree; all stop together before rank 0 writes
                distributed.check_same_config(self.resolved)
                distributed.agree(error)
            elif error:
                raise ConfigError(error)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.dist:
            self.dist.destroy()
            self.dist = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def peak_memory(self, ckpt: dict | None) -> int:
        """The largest peak of any process that worked on this run (carried in the checkpoint)."""
        mine = peak_memory_bytes(self.device)
        return max(mine, int((ckpt or {}).get("peak_memory_bytes", 0)))

    def results(self, dataset: str, metric: str, best: dict, epochs: int, seconds: float, model, peak: int) -> dict:
        """The common part of ``results.json``."""
        return {
            "dataset": dataset,
            "metric": metric,
            "best_valid": best["valid"],
            "test_at_best_valid": best["test"],
            "train_at_best_valid": best["train"],
            "best_epoch": best["epoch"],
            "epochs": epochs,
            "seconds": seconds,
            "peak_memory_bytes": peak,
            "device": str(self.device),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "config": self.resolved,
        }

    def say(self, message: str) -> None:
        """A one-line status message on stderr (main rank only)."""
        if self.is_main:
            print(f"graphscale train: {message}", file=sys.stderr, flush=True)


def new_best() -> dict:
    return {"valid": -float("inf"), "test": float("nan"), "train": float("nan"), "epoch": 0}
