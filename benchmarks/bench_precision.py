"""fp32 vs bf16 (vs fp16 on CUDA): time, bytes saved for backward, gradients and metric of shipped recipes.

For each recipe (a config plus overrides) and each precision (``train.precision``):

* **step**: one training step (forward under the precision's autocast, loss in fp32, backward) on the
  first subgraph the recipe's sampler gives in epoch 1, the model built from the recipe with
  ``train.seed`` (the same weights for every precision; the precisions take turns in each repeat).
  Measured: the median wall seconds and process CPU seconds (``time.process_time``: less sensitive to
  other jobs on a shared machine) of ``--repeats`` steps after one warm-up round,
  the bytes autograd saves for backward in the forward (``graphscale.saved_bytes.count_saved_bytes``,
  parameters excluded; under autocast the low-precision copies of the weights that matrix products
  save count, as they are held), and the relative difference of the flattened parameter gradient
  from the fp32 step with the same weights and the same dropout draw (``|g - g32| / |g32|``).
* **train** (unless ``--no-train``): the recipe trained end to end by ``graphscale.train.api.train``
  into a temporary folder (``--epochs`` overrides ``train.epochs``): seconds per epoch (the trainer's
  training time over its epochs, evaluation included), this process's CPU seconds per epoch over the
  whole run (data loading included), best validation score, test score at it.

    python benchmarks/bench_precision.py                               # quickstart + RevGNN quickstart
    python benchmarks/bench_precision.py --precisions fp32 bf16 --epochs 5 --repeats 3

fp16 autocast runs on CUDA only (``train.precision=fp16`` is refused on CPU); on a CPU-only machine
it is left out of the default ``--precisions``. Writes ``precision.{csv,json}`` (``--tag``) through
graphscale.bench.output.
"""
from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time

import torch

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError
from graphscale.saved_bytes import count_saved_bytes
from graphscale.train import api
from graphscale.train.build import DatasetInfo, apply_memory, build_model, build_sampler
from graphscale.train.config import load_config
from graphscale.train.metrics import loss_fn
from graphscale.train.precision import PRECISIONS, Precision, check_precision
from graphscale.train.run import load_data, resolve_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "precision"
DEFAULT_RECIPES = ["configs/quickstart.yaml", "configs/quickstart-revgnn.yaml"]


def _config(recipe: str, precision: str, device: str, root: str, out: str, epochs: int | None):
    parts = shlex.split(recipe)
    if not parts:
        raise ConfigError("--recipes: an empty recipe; expected 'CONFIG.yaml [key=value ...]'")
    path = os.path.join(REPO, parts[0])
    if not os.path.isfile(path):
        raise ConfigError(f"--recipes {recipe!r}: no config file {parts[0]!r} in {REPO}")
    extra = [f"train.precision={precision}", f"train.device={device}", f"log.out={out}", "log.progress=false"]
    if not any(o.startswith("data.root=") for o in parts[1:]):
        extra.append(f"data.root={root}")
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    return load_config(path, [*parts[1:], *extra])


def measure_steps(cfgs: dict, repeats: int, cache: dict) -> dict:
    """One training step of the recipe's model in each precision of ``cfgs`` (``{precision: config}``, the
    configs differing only in ``train.precision``), on the same weights and subgraph. The precisions take
    turns within every repeat, so a change in the machine's load hits them alike (see the module docstring)."""
    cfg = next(iter(cfgs.values()))
    device = resolve_device(cfg.train.device)
    key = (cfg.data.name, cfg.data.root, cfg.data.num_nodes, cfg.data.seed)
    if key not in cache:
        cache[key] = load_data(cfg)
    data = cache[key]
    torch.manual_seed(cfg.train.seed)
    info = DatasetInfo(data.x.size(1), data.num_outputs, data.edge_attr.size(1) if data.edge_attr is not None else None)
    model = apply_memory(build_model(cfg.model, info), cfg.memory).to(device).train()
    train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    train_mask[data.split["train"]] = True
    sampler = build_sampler(cfg.sampler, data.edge_index, data.num_nodes, cfg.train.seed,
                            os.path.join(cfg.data.root, "partitions"), train_mask=train_mask)
    sub = next(iter(sampler.epoch(1)))
    x = data.x[sub.node_ids].to(device)
    ei = sub.edge_index.to(device)
    ea = data.edge_attr[sub.edge_ids].to(device) if data.edge_attr is not None else None
    mask = train_mask[sub.node_ids].to(device)
    y = data.y[sub.node_ids].to(device)[mask]
    loss_of = loss_fn(data.task)
    precs = {name: Precision(c.train.precision, device) for name, c in cfgs.items()}
    out_rows = {name: {"wall": [], "cpu": []} for name in cfgs}
    for r in range(repeats + 1):  # repeat 0 warms up (allocator, autocast weight cache, kernels)
        for name, prec in precs.items():
            row = out_rows[name]
            model.zero_grad(set_to_none=True)
            torch.manual_seed(cfg.train.seed + 1)  # the same dropout draw in every precision
            t0, c0 = time.perf_counter(), time.process_time()
            with count_saved_bytes(exclude=model) as counter:
                with prec.autocast():
                    out = model(x, ei, ea)
            step_loss = loss_of(out.float()[mask], y)
            prec.scale(step_loss).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:
                row["wall"].append(time.perf_counter() - t0)
                row["cpu"].append(time.process_time() - c0)
            grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
                              for p in model.parameters()])
            if prec.scaler is not None:
                grad = grad / prec.scaler.get_scale()
            row.update(saved=counter.total, loss=float(step_loss.detach()), grad=grad, dtype=out.dtype)
    return {name: {"step_seconds": statistics.median(r["wall"]), "step_cpu_seconds": statistics.median(r["cpu"]),
                   "saved_bytes": r["saved"], "step_loss": r["loss"], "step_nodes": int(sub.node_ids.numel()),
                   "step_edges": int(ei.size(1)), "grad": r["grad"], "out_dtype": str(r["dtype"]).replace("torch.", "")}
            for name, r in out_rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, metavar="RECIPE",
                   help="recipes, each 'CONFIG.yaml [key=value ...]' in one quoted string "
                        f"(default: {' '.join(DEFAULT_RECIPES)})")
    p.add_argument("--precisions", nargs="+", default=None, metavar="P",
                   help="precisions to compare, fp32 first (default: fp32 bf16, plus fp16 on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--repeats", type=int, default=5, help="timed training steps per recipe and precision (default 5)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train.epochs for the end-to-end runs (default: the recipe's own)")
    p.add_argument("--no-train", action="store_true", help="measure the single step only, no end-to-end run")
    p.add_argument("--tag", default=NAME, help=f"file name stem: TAG.csv and TAG.json (default {NAME})")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
        precisions = args.precisions or (["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else []))
        for prec in precisions:
            if prec not in PRECISIONS:
                raise ConfigError(f"--precisions {prec!r}: expected some of {', '.join(PRECISIONS)}")
            check_precision(prec, device)
        if precisions[0] != "fp32":
            raise ConfigError(f"--precisions {' '.join(precisions)}: start with fp32 (the gradients are compared "
                              f"with it)")
        if args.repeats < 1:
            raise ConfigError(f"--repeats {args.repeats}: expected >= 1")
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs {args.epochs}: expected >= 1")
        if not args.tag or any(c in args.tag for c in "/\\") or args.tag.startswith("."):
            raise ConfigError(f"--tag {args.tag!r}: expected a file name stem without folders, like {NAME}")
        writer = ResultWriter.from_args(args, NAME, str(device))
        writer.check(args.tag)
        work = tempfile.mkdtemp(prefix="bench-precision-")
        rows, cache = [], {}
        try:
            root = os.path.join(work, "data")
            for recipe in args.recipes:
                _config(recipe, "fp32", str(device), root, work, args.epochs)  # a bad recipe fails before measuring
            for recipe in args.recipes:
                cfgs = {prec: _config(recipe, prec, str(device), root, tempfile.mkdtemp(prefix="run-", dir=work),
                                      args.epochs) for prec in precisions}
                steps = measure_steps(cfgs, args.repeats, cache)
                base = steps["fp32"]
                for prec, cfg in cfgs.items():
                    step = dict(steps[prec])
                    grad = step.pop("grad")
                    row = {"recipe": recipe, "precision": prec, "model": cfg.model.name, **step,
                           "step_time_vs_fp32": step["step_seconds"] / base["step_seconds"],
                           "step_cpu_vs_fp32": step["step_cpu_seconds"] / base["step_cpu_seconds"],
                           "saved_bytes_vs_fp32": step["saved_bytes"] / max(base["saved_bytes"], 1),
                           "grad_rel_diff_vs_fp32": float((grad - base["grad"]).norm() / base["grad"].norm())}
                    if not args.no_train:
                        before = resource.getrusage(resource.RUSAGE_SELF)
                        res = api.train(cfg)
                        after = resource.getrusage(resource.RUSAGE_SELF)
                        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                        row.update({"metric": res["metric"], "best_valid": res["best_valid"],
                                    "test_at_best_valid": res["test_at_best_valid"], "epochs": res["epochs"],
                                    "epoch_seconds": res["seconds"] / max(res["epochs"], 1),
                                    "run_cpu_seconds_per_epoch": cpu / max(res["epochs"], 1)})
                    row["device"] = str(device)
                    rows.append(row)
                    extra = "" if args.no_train else (f", {row['metric']} valid {row['best_valid']:.4f} test "
                                                      f"{row['test_at_best_valid']:.4f}, {row['epoch_seconds']:.2f} "
                                                      f"s/epoch ({row['run_cpu_seconds_per_epoch']:.2f} CPU s)")
                    print(f"{recipe} {prec}: step {row['step_seconds'] * 1e3:.0f} ms ({row['step_cpu_seconds'] * 1e3:.0f} "
                          f"ms CPU), saved {row['saved_bytes'] / 2**20:.1f} MiB ({row['saved_bytes_vs_fp32']:.2f}x fp32), "
                          f"grad diff {row['grad_rel_diff_vs_fp32']:.3g}{extra}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cmd = "python benchmarks/bench_precision.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        print("wrote " + ", ".join(writer.write_table(args.tag, rows, {"note": args.note, "command": cmd})))
    except GraphscaleError as exc:
        print(f"bench_precision: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
