"""``graphscale bench memory-depth``: training memory and time against depth, per technique.

Li, Müller, Ghanem, Koltun, "Training Graph Neural Networks with 1000 Layers", ICML 2021, Fig. 1:
memory of plain residual GNNs grows linearly in depth, that of reversible / weight-tied / equilibrium
GNNs does not. This benchmark measures it on one random graph and width for

* ``residual``       ``h <- h + f(h)``, plain autograd (the baseline);
* ``checkpoint``     the same, each block under ``torch.utils.checkpoint`` (stores block inputs);
* ``reversible``     :class:`graphscale.nn.RevStack` of grouped reversible blocks;
* ``wt-reversible``  one reversible block reused ``depth`` times (:class:`WeightTiedReversible`);
* ``deq``            :class:`graphscale.nn.DEQBlock`, ``depth`` fixed-point iterations forward and
  ``depth`` adjoint iterations backward (the equilibrium model at the same effective depth);
* ``pyg-rev``        PyG's ``GroupAddRev`` on the identical block and groups (the peer).

``f`` = LayerNorm -> ReLU -> SAGEConv (the reversible models split the channels into ``groups``
groups, each with its own ``f`` of width ``channels / groups``, as PyG's and the paper's RevGNN).

Per (model, depth), in a fresh process: parameters; activation bytes saved for backward (exact:
saved-tensor hooks de-duplicated by storage + tensors custom Functions report on ctx; PyG's
``GroupAddRev`` keeps its output on ctx without reporting it, so its count is incomplete:
``activation_bytes_complete`` is False); bytes held after the forward (the profiler cross-check,
sees ctx stashes too; always taken for ``pyg-rev``); peak memory (CUDA ``max_memory_allocated`` on
GPU, peak RSS of the process during the timed steps on CPU); seconds per training step (forward +
backward + SGD step; the minimum over the timed steps, all kept), and the process CPU seconds of
that step (``step_cpu_s``; robust to other jobs on a shared machine).

Results go through :mod:`graphscale.bench.output`: ``<out>/<tag>.csv``, ``.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import math
import time

DEFAULT_DEPTHS = "1,10,100,300,1000"
QUICK = {"depths": "1,10,30", "nodes": 1000, "edges": 10000, "steps": 1}
FULL = {"depths": DEFAULT_DEPTHS, "nodes": 5000, "edges": 50000, "steps": 2}
MODELS = ("residual", "checkpoint", "reversible", "wt-reversible", "deq", "pyg-rev")
LINEAR_MODELS = ("residual", "checkpoint")  # memory grows with depth
NAME = "memory-depth"

_DESCRIPTION = """\
Peak training memory and step time against depth (Li et al., "Training Graph Neural Networks
with 1000 Layers", ICML 2021, Fig. 1), on one random graph, for these models:

  residual       h <- h + f(h), plain autograd (the baseline)
  checkpoint     the same, each block under torch.utils.checkpoint
  reversible     graphscale RevStack of grouped reversible blocks
  wt-reversible  one reversible block reused depth times (weight-tied)
  deq            equilibrium block: depth fixed-point iterations forward and backward
  pyg-rev        PyG's GroupAddRev on the identical block (the peer)

f = LayerNorm -> ReLU -> SAGEConv. Each (model, depth) runs in a fresh process and reports
parameters, activation bytes saved for backward (exact count), bytes held after the forward
(profiler), peak memory (CUDA max allocated, or peak RSS on CPU) and seconds per training step.

Results: a CSV, a JSON (with versions, device, git commit and the load average at the start)
and a PNG plot, in a new folder runs/bench/memory-depth-<timestamp>/ unless --out is given."""


def add_parser(subparsers) -> None:
    from graphscale.bench.output import add_output_args

    p = subparsers.add_parser(
        NAME, help="peak memory and step time vs depth: residual, checkpoint, reversible, "
        "weight-tied, equilibrium, PyG GroupAddRev",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default=None, metavar="LIST",
                   help=f"comma-separated depths, each a whole number >= 1 (default {FULL['depths']}; "
                        f"with --quick {QUICK['depths']})")
    p.add_argument("--models", default=",".join(MODELS), metavar="LIST",
                   help=f"comma-separated models to run, from {', '.join(MODELS)} (default: all)")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"nodes of the random graph (default {FULL['nodes']}; with --quick {QUICK['nodes']})")
    p.add_argument("--edges", type=int, default=None,
                   help=f"edges of the random graph (default {FULL['edges']}; with --quick {QUICK['edges']})")
    p.add_argument("--channels", type=int, default=64, help="width of every block (default 64)")
    p.add_argument("--groups", type=int, default=2,
                   help="channel groups of the reversible models, at least 2 (default 2)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed training steps after one warm-up step (default {FULL['steps']}; "
                        f"with --quick {QUICK['steps']})")
    p.add_argument("--linear-max-depth", type=int, default=None, metavar="DEPTH",
                   help="skip residual and checkpoint above this depth (their memory grows with depth: "
                        "about 3.7 GiB of activations at depth 1000 on the default graph); default: no limit")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run: auto (CUDA if available, else CPU), cpu or cuda")
    p.add_argument("--tag", default="memory_depth",
                   help="file name stem of the results: TAG.csv, TAG.json, TAG.png (default memory_depth)")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds one configuration may run before it is stopped and recorded as failed "
                        "(default 1800)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in each measuring process (default 0: torch's choice); 1 makes "
                        "CPU-time comparisons on a busy machine meaningful")
    p.add_argument("--malloc-default", action="store_true",
                   help="keep glibc's dynamic mmap threshold in the measuring processes (by default it is "
                        "fixed at 128 KiB so that freed tensors go back to the system and peak RSS follows "
                        "live memory)")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the profiler pass for graphscale's models (faster; their exact count is "
                        "complete). PyG GroupAddRev is always profiled, because its saved bytes are "
                        "only visible to the profiler")
    p.add_argument("--tensor-peak", action="store_true",
                   help="CPU only: also run one profiled step and record its peak of live tensor bytes "
                        "above the start of the step (the CPU counterpart of CUDA max allocated)")
    p.add_argument("--note", default="", help="free text stored with the results")
    p.add_argument("--replot", default=None, metavar="FILE.json",
                   help="measure nothing: draw TAG.png from the rows of an earlier run's JSON")
    p.add_argument("--quick", action="store_true",
                   help=f"small smoke run: depths {QUICK['depths']}, {QUICK['nodes']} nodes, "
                        f"{QUICK['edges']} edges, {QUICK['steps']} timed step (options given explicitly win)")
    add_output_args(p, NAME)
    p.set_defaults(func=run)


def parse_depths(text: str) -> list[int]:
    """``"1,10,100"`` -> ``[1, 10, 100]``; anything else is a ConfigError naming the bad items."""
    from graphscale.errors import ConfigError

    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ConfigError(f"--depths {text!r}: no depth given; expected comma-separated whole numbers >= 1, "
                          f"like 1,10,100")
    bad = [t for t in items if not (t.isdigit() and int(t) >= 1)]
    if bad:
        raise ConfigError(f"--depths {text!r}: {', '.join(repr(b) for b in bad)} "
                          f"{'is not a depth' if len(bad) == 1 else 'are not depths'}; expected "
                          f"comma-separated whole numbers >= 1, like 1,10,100")
    return list(dict.fromkeys(int(t) for t in items))


def parse_models(text: str) -> list[str]:
    from graphscale.errors import ConfigError

    models = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if not models or bad:
        raise ConfigError(f"--models {text!r}: {'unknown ' + ', '.join(map(repr, bad)) if bad else 'no model given'}"
                          f"; expected a comma-separated subset of {', '.join(MODELS)}")
    return list(dict.fromkeys(models))


def resolve_args(args) -> tuple[list[int], list[str]]:
    """Fill the --quick / full defaults and check every option; raise ConfigError before any work."""
    from graphscale.errors import ConfigError

    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    depths, models = parse_depths(args.depths), parse_models(args.models)
    for key, low in (("nodes", 2), ("edges", 1), ("steps", 1), ("channels", 2), ("threads", 0)):
        if getattr(args, key) < low:
            raise ConfigError(f"--{key} {getattr(args, key)}: expected a whole number >= {low}")
    if args.groups < 2 or args.channels % args.groups:
        raise ConfigError(f"--groups {args.groups}: expected >= 2 groups that split --channels {args.channels} "
                          f"into equal parts")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout {args.timeout}: expected a number of seconds > 0")
    if args.linear_max_depth is not None and args.linear_max_depth < 1:
        raise ConfigError(f"--linear-max-depth {args.linear_max_depth}: expected a whole number >= 1")
    if not args.tag or any(c in args.tag for c in "/\\") or args.tag.startswith("."):
        raise ConfigError(f"--tag {args.tag!r}: expected a file name stem without folders, like memory_depth")
    if not configurations(depths, models, args.linear_max_depth):
        raise ConfigError(f"--linear-max-depth {args.linear_max_depth} leaves nothing to run: every depth in "
                          f"{args.depths} is above it and only {', '.join(models)} were asked for")
    return depths, models


def configurations(depths: list[int], models: list[str], linear_max_depth: int | None) -> list[tuple[str, int]]:
    return [(m, d) for d in depths for m in models
            if not (m in LINEAR_MODELS and linear_max_depth is not None and d > linear_max_depth)]


# --------------------------------------------------------------------------------------------
# The child side: build one model, measure it. Imported by name in a fresh process.
def _block_cls():
    from torch import nn
    from torch_geometric.nn import SAGEConv

    class Block(nn.Module):
        """LayerNorm -> ReLU -> SAGEConv (DESIGN.md's anchor block)."""

        def __init__(self, c: int):
            super().__init__()
            self.norm, self.conv = nn.LayerNorm(c), SAGEConv(c, c)

        def forward(self, x, edge_index, *args):
            return self.conv(self.norm(x).relu(), edge_index)

    class DEQCell(nn.Module):
        """``f(z, x) = x + SAGEConv(ReLU(LayerNorm(z)))``: the anchor block with input injection."""

        def __init__(self, c: int):
            super().__init__()
            self.block = Block(c)

        def forward(self, z, x, edge_index):
            return x + self.block(z, edge_index)

    return Block, DEQCell


def build(model: str, depth: int, channels: int, groups: int):
    """The benchmarked network: ``Linear`` encoder -> ``depth`` blocks of ``model``."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from graphscale.nn.deq import DEQBlock
    from graphscale.nn.reversible import GroupRevBlock, RevStack
    from graphscale.nn.weight_tied import WeightTiedReversible

    Block, DEQCell = _block_cls()
    w = channels // groups

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(channels, channels)
            if model in ("residual", "checkpoint"):
                self.blocks = nn.ModuleList(Block(channels) for _ in range(depth))
            elif model == "reversible":
                self.blocks = RevStack([GroupRevBlock(Block(w), num_groups=groups) for _ in range(depth)])
            elif model == "wt-reversible":
                self.blocks = WeightTiedReversible(GroupRevBlock(Block(w), num_groups=groups), depth)
            elif model == "deq":
                self.blocks = DEQBlock(DEQCell(channels), solver="fixed-point", max_iter=depth, tol=1e-30,
                                       warn=False, divergence_threshold=float("inf"))
            elif model == "pyg-rev":
                from torch_geometric.nn import GroupAddRev
                self.blocks = nn.ModuleList(GroupAddRev(Block(w), num_groups=groups) for _ in range(depth))
            else:
                raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")

        def forward(self, x, edge_index):
            h = self.encoder(x)
            if model == "residual":
                for b in self.blocks:
                    h = h + b(h, edge_index)
            elif model == "checkpoint":
                for b in self.blocks:
                    h = h + checkpoint(b, h, edge_index, use_reentrant=True)
            elif model == "pyg-rev":
                for b in self.blocks:
                    h = b(h, edge_index)
            else:
                h = self.blocks(h, edge_index)
            return h

    return Net()


def measure(model: str, depth: int, nodes: int, edges: int, channels: int, groups: int, steps: int,
            device: str, profile: bool, seed: int = 0, threads: int = 0, tensor_peak: bool = False) -> dict:
    """Build, warm up (counting saved bytes), time ``steps`` steps, read the peak, then profile."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from graphscale.memory.accounting import (count_saved_bytes, profiled_forward_bytes, profiled_peak_bytes,
                                              read_peak_rss, state_bytes)

    torch.manual_seed(seed)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, nodes, (2, edges), generator=g).to(dev)
    x = torch.randn(nodes, channels, generator=g).to(dev)
    net = build(model, depth, channels, groups).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = net(x, edge_index).pow(2).mean()
        loss.backward()
        opt.step()
        return float(loss)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # warm-up step: exact count of activation bytes held for backward
    opt.zero_grad(set_to_none=True)
    with count_saved_bytes(exclude=net) as counter:
        out = net(x, edge_index)
    out.pow(2).mean().backward()
    opt.step()
    del out
    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats(dev)
    times, cpu_times = [], []
    for _ in range(steps):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        # process CPU time: robust to other jobs on a shared machine (wall time is not)
        cpu_times.append(time.process_time() - c0)
    if dev.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(dev), "cuda_max_allocated"
    else:
        peak, peak_kind = read_peak_rss(), "cpu_peak_rss"
    tpeak = None
    if tensor_peak and dev.type == "cpu":
        # after the RSS reading (the profiler's own buffers must not count there): one more step,
        # its peak of live tensor bytes above the start (params and inputs live, grads set to None)
        opt.zero_grad(set_to_none=True)
        tpeak, _, _ = profiled_peak_bytes(step)
    held = None
    if profile:
        opt.zero_grad(set_to_none=True)
        held, out = profiled_forward_bytes(lambda: net(x, edge_index))
        out.pow(2).mean().backward()
        del out
    sb = state_bytes(net, opt)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "param_bytes": sb["params"],
        "activation_bytes": counter.total,
        "activation_saved_bytes": counter.saved,
        "activation_ctx_bytes": counter.ctx,
        "held_bytes_profiler": held,
        "tensor_peak_bytes": tpeak,
        "peak_bytes": peak,
        "peak_kind": peak_kind,
        "step_s": min(times) if times else None,
        "step_s_all": times,
        "step_cpu_s": min(cpu_times) if cpu_times else None,
        "loss": loss if times else None,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# The parent side: one fresh process per configuration, rows written through ResultWriter.

# glibc raises its mmap threshold to the size of the largest freed block, after which tensors of a
# few MiB come from the brk heap, where small long-lived allocations pin it: measured here, peak RSS
# of a 120-block reversible stack grew 4.3 MiB per block (966 MiB) with the default, stayed at
# 444 MiB with the threshold fixed (PyG GroupAddRev alike). Fixed, peak RSS tracks live memory.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run(args) -> int:
    import torch

    from graphscale.bench.output import ResultWriter
    from graphscale.errors import ConfigError, GraphscaleError
    from graphscale.memory.accounting import peak_rss_subprocess

    if args.replot:
        defaults = {"depths": None, "models": ",".join(MODELS), "nodes": None, "edges": None, "channels": 64,
                    "groups": 2, "steps": None, "linear_max_depth": None, "device": "auto", "timeout": 1800,
                    "threads": 0, "malloc_default": False, "no_profile": False, "tensor_peak": False, "note": "",
                    "quick": False}
        given = [k for k, v in defaults.items() if getattr(args, k) != v]
        if given:  # nothing is measured: a measuring option would be silently ignored
            raise ConfigError(f"--replot draws the rows of an earlier run and measures nothing; it takes only "
                              f"--tag, --out and --overwrite, not {', '.join('--' + k.replace('_', '-') for k in given)}")
        return replot(args)
    depths, models = resolve_args(args)  # every option checked before anything is created or measured
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    writer = ResultWriter.from_args(args, NAME, device)
    writer.check(args.tag, suffixes=(".csv", ".json", ".png"))
    tags = {"device": device,
            "device_name": _cpu_name() if device == "cpu" else writer.env.get("device_name", device),
            "malloc_env": "glibc default" if args.malloc_default or device == "cuda" else
            ",".join(f"{k}={v}" for k, v in _MALLOC_ENV.items())}
    rows: list[dict] = []
    for model, depth in configurations(depths, models, args.linear_max_depth):
        profile = model == "pyg-rev" or not args.no_profile
        kwargs = dict(model=model, depth=depth, nodes=args.nodes, edges=args.edges, channels=args.channels,
                      groups=args.groups, steps=args.steps, device=device, profile=profile,
                      threads=args.threads, tensor_peak=args.tensor_peak)
        row = {"model": model, "depth": depth, "nodes": args.nodes, "edges": args.edges,
               "channels": args.channels, "groups": args.groups}
        t0 = time.perf_counter()
        try:
            res = peak_rss_subprocess("graphscale.bench.memory_depth:measure", kwargs, timeout=args.timeout,
                                      env=None if args.malloc_default else _MALLOC_ENV)
            row.update(res["result"])
            # PyG keeps its output on ctx, where saved-tensor hooks do not see it (the profiler does)
            row["activation_bytes_complete"] = model != "pyg-rev"
            row["process_base_rss"] = res["base_rss"]
            if row.get("peak_kind") == "cpu_peak_rss":
                row["peak_growth_bytes"] = row["peak_bytes"] - res["base_rss"]
            row["ms_per_layer"] = 1000 * row["step_s"] / depth
            row["error"] = None
        except Exception as exc:  # one failing configuration (out of memory, timeout) must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[-300:]}"
        row["wall_s"] = time.perf_counter() - t0
        row.update(tags)
        rows.append(row)
        _print_row(row)
        if any(r["error"] is None for r in rows):
            _write(writer, rows, args, finished=False)  # a killed sweep keeps what it measured
    if not any(r["error"] is None for r in rows):
        raise GraphscaleError(f"memory-depth: every configuration failed, nothing written; first error: "
                              f"{rows[0]['error']}")
    paths = _write(writer, rows, args, finished=True)
    print("wrote " + ", ".join(paths))
    return 0


def _cpu_name() -> str:
    import platform
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _print_row(r: dict) -> None:
    if r.get("error"):
        print(f"{r['model']:>14} depth {r['depth']:>5}: FAILED {r['error']}", flush=True)
        return
    held = r.get("held_bytes_profiler")
    held_s = f"{held / 2**20:9.2f}" if held is not None else "        -"
    print(f"{r['model']:>14} depth {r['depth']:>5}: params {r['params']:>9,}  act {r['activation_bytes'] / 2**20:9.2f} "
          f"MiB  held {held_s} MiB  peak {r['peak_bytes'] / 2**20:8.1f} MiB"
          + (f"  tensor peak {r['tensor_peak_bytes'] / 2**20:7.2f} MiB" if r.get("tensor_peak_bytes") else "")
          + f"  step {r['step_s']:7.3f} s ({r['ms_per_layer']:.2f} ms/layer)", flush=True)


def _ratios(rows: list[dict]) -> dict:
    by = {(r["model"], r["depth"]): r for r in rows if r.get("error") is None}
    out: dict = {}
    for model in MODELS:
        ds = sorted(d for (m, d) in by if m == model)
        if len(ds) < 2:
            continue
        lo = 10 if 10 in ds else ds[0]
        hi = ds[-1]
        for key in ("activation_bytes", "held_bytes_profiler"):
            a, b = by[(model, lo)].get(key), by[(model, hi)].get(key)
            if a and b is not None:
                out[f"{model}_{key}_growth_{lo}_to_{hi}"] = b / a
    for d in sorted({d for (_, d) in by}):
        rev, pyg, res = by.get(("reversible", d)), by.get(("pyg-rev", d)), by.get(("residual", d))
        if rev and pyg:
            out[f"reversible_vs_pyg_peak_depth{d}"] = rev["peak_bytes"] / pyg["peak_bytes"]
            out[f"reversible_vs_pyg_step_depth{d}"] = rev["step_s"] / pyg["step_s"]
            if rev.get("held_bytes_profiler") and pyg.get("held_bytes_profiler"):
                out[f"reversible_vs_pyg_held_depth{d}"] = rev["held_bytes_profiler"] / pyg["held_bytes_profiler"]
            if rev.get("tensor_peak_bytes") and pyg.get("tensor_peak_bytes"):
                out[f"reversible_vs_pyg_tensor_peak_depth{d}"] = rev["tensor_peak_bytes"] / pyg["tensor_peak_bytes"]
        if rev and res:
            out[f"reversible_vs_residual_step_depth{d}"] = rev["step_s"] / res["step_s"]
    return out


def _command(args) -> str:
    flags = []
    for k, v in vars(args).items():
        if k in ("func", "bench", "command") or v in (False, None, ""):
            continue
        flag = "--" + k.replace("_", "-")
        flags.append(flag if v is True else f"{flag} {v}")
    return "graphscale bench memory-depth " + " ".join(flags)


def _write(writer, rows: list[dict], args, finished: bool) -> list[str]:
    """CSV + JSON + PNG of the rows so far (rewritten after every row: a stopped sweep keeps them all)."""
    extra = {"command": _command(args), "note": args.note, "finished": finished, "ratios": _ratios(rows)}
    paths = list(writer.write_table(args.tag, rows, extra))
    title = caption(rows, writer.env, args.note, finished)
    paths.append(writer.write_file(args.tag + ".png", lambda fh: plot(rows, fh, title)))
    return paths


def replot(args) -> int:
    """``--replot FILE.json``: draw the figure of an earlier run from its JSON (nothing is measured)."""
    import json

    from graphscale.bench.output import ResultWriter
    from graphscale.errors import ConfigError

    try:
        with open(args.replot) as fh:
            doc = json.load(fh)
        rows, env = doc["rows"], doc["environment"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--replot {args.replot!r}: not the JSON of a memory-depth run ({exc})") from None
    if not any(r.get("error") is None for r in rows):
        raise ConfigError(f"--replot {args.replot!r}: no measured row to draw")
    for r in rows:  # rows written before peak_growth_bytes was recorded
        if r.get("peak_kind") == "cpu_peak_rss" and "peak_growth_bytes" not in r and r.get("process_base_rss"):
            r["peak_growth_bytes"] = r["peak_bytes"] - r["process_base_rss"]
    writer = ResultWriter.from_args(args, NAME)
    writer.check(args.tag, suffixes=(".png",))
    title = caption(rows, env, doc.get("note", ""), bool(doc.get("finished", True)))
    print("wrote " + writer.write_file(args.tag + ".png", lambda fh: plot(rows, fh, title)))
    return 0


def caption(rows: list[dict], env: dict, note: str = "", finished: bool = True) -> str:
    r = next(r for r in rows if r.get("error") is None)
    load, commit = env.get("load_average_at_start"), env.get("git_commit")
    device = r.get("device") or env.get("device", "?")
    return (f"random graph: {r['nodes']:,} nodes, {r['edges']:,} edges, {r['channels']} channels, "
            f"{r['groups']} groups; blocks LayerNorm -> ReLU -> SAGEConv\n"
            f"{device}{' (' + r['device_name'] + ')' if r.get('device_name') else ''}, "
            f"torch threads {r.get('threads', '?')}, torch {env.get('torch', '?')}, "
            f"PyG {env.get('torch_geometric', '?')}"
            + (f", load average at start {load[0]}" if load else "") + (f", commit {commit}" if commit else "")
            + ("" if finished else "\nrun stopped before the sweep finished: the rows measured so far")
            + (f"\n{note}" if note else ""))


# Each model has its own colour, marker and line style, so lines that coincide (reversible,
# weight-tied and PyG hold the same bytes) stay visible: hollow markers of different sizes nest.
STYLE = {
    "residual": dict(color="tab:red", marker="o", linestyle="-", markersize=6),
    "checkpoint": dict(color="tab:orange", marker="s", linestyle="--", markersize=6),
    "reversible": dict(color="tab:blue", marker="o", linestyle="-", markersize=14, markerfacecolor="none",
                       markeredgewidth=1.6, linewidth=2.4),
    "wt-reversible": dict(color="tab:green", marker="s", linestyle="--", markersize=8, markerfacecolor="none",
                          markeredgewidth=1.6, linewidth=1.8),
    "deq": dict(color="tab:purple", marker="D", linestyle="-.", markersize=6),
    "pyg-rev": dict(color="black", marker="x", linestyle=":", markersize=8, markeredgewidth=1.6, linewidth=1.4),
}
LABEL = {"residual": "residual", "checkpoint": "checkpointed residual", "reversible": "reversible (graphscale)",
         "wt-reversible": "weight-tied reversible", "deq": "equilibrium (DEQ)", "pyg-rev": "PyG GroupAddRev"}


def _y_axis(ax, values: list[float], unit: str) -> None:
    """Linear from 0 when the values span less than 30x; else log with 1-2-5 ticks in plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = min(values), max(values)
    if lo <= 0 or hi / lo < 30:
        ax.set_ylim(0, hi * 1.15 if hi > 0 else 1)
        return
    ax.set_yscale("log")
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    ax.set_ylim(lo / 1.4, hi * 1.4)
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if lo / 1.4 <= t <= hi * 1.4]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _coinciding(series: dict) -> list[list[str]]:
    """Groups of models whose points agree within 0.5 % at every depth (drawn on top of each other)."""
    groups: list[list[str]] = []
    for model, pts in series.items():
        for g in groups:
            ref = series[g[0]]
            if len(ref) == len(pts) and all(d1 == d2 and abs(v1 - v2) <= 0.005 * max(abs(v1), abs(v2), 1e-12)
                                            for (d1, v1), (d2, v2) in zip(ref, pts)):
                g.append(model)
                break
        else:
            groups.append([model])
    return [g for g in groups if len(g) > 1]


def plot(rows: list[dict], fh, title: str) -> None:
    """Three panels against depth: bytes held for backward, peak memory, step time per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ok = [dict(r) for r in rows if r.get("error") is None]  # copies: derived columns stay out of the rows
    # Panel 1 compares one instrument across models: the profiler's bytes held after the forward
    # when every model was profiled; otherwise the exact count, without PyG (whose ctx stash the
    # saved-tensor hooks cannot see: drawn from the hooks it would show half the bytes it holds).
    profiled = all(r.get("held_bytes_profiler") is not None for r in ok)
    if profiled:
        held_key, held_label = "held_bytes_profiler", "bytes held after the forward (MiB, profiler)"
    else:
        held_key, held_label = "activation_bytes", "activation bytes saved for backward (MiB, exact count)"
    if ok[0].get("peak_kind") == "cpu_peak_rss":
        # the process's RSS after importing torch (~440 MiB here) would flatten every line
        peak_key, peak_label = "peak_growth_bytes", "peak RSS above the process's RSS after imports (MiB)"
    else:
        peak_key, peak_label = "peak_bytes", "peak memory (MiB, CUDA max allocated)"
    if all(r.get("threads") == 1 and r.get("step_cpu_s") is not None for r in ok):
        # one thread: the process's CPU time is the step's work, whatever else runs on the machine
        for r in ok:
            r["cpu_ms_per_layer"] = 1000 * r["step_cpu_s"] / r["depth"]
        time_key, time_label = "cpu_ms_per_layer", "training step CPU time per layer (ms, 1 thread)"
    else:
        time_key, time_label = "ms_per_layer", "training step wall time per layer (ms)"
    panels = [(held_key, held_label), (peak_key, peak_label), (time_key, time_label)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4))
    depths = sorted({r["depth"] for r in ok})
    if not profiled and any(r["model"] == "pyg-rev" for r in ok):
        panels[0] = (held_key, held_label + "\n(PyG GroupAddRev not drawn: the hooks miss the output it keeps "
                     "on ctx)")
    for ax, (key, label) in zip(axes, panels):
        values, series = [], {}
        for model in MODELS:
            if key == "activation_bytes" and model == "pyg-rev":
                continue
            scale = 1.0 if key.endswith("ms_per_layer") else 2.0 ** 20
            pts = sorted((r["depth"], r[key] / scale) for r in ok if r["model"] == model and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), label=LABEL[model], **STYLE[model])
                values += [v for _, v in pts]
                series[model] = pts
        same = _coinciding(series)
        if same:  # said in words as well: nested markers are easy to miss
            label += "".join("\n(same values, drawn on top of each other: " + ", ".join(g) + ")" for g in same)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(depths))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if values:
            _y_axis(ax, values, "MiB")
        ax.set_xlabel("depth (layers)")
        ax.set_title(label, fontsize=9.5)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=9.5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)
