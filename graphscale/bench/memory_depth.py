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
saved-tensor hooks de-duplicated by storage + tensors custom Functions report on ctx); bytes held
after the forward (the profiler cross-check, sees PyG's ctx stashes too); peak memory (CUDA
``max_memory_allocated`` on GPU, peak RSS of the process during the timed steps on CPU); seconds
per training step (forward + backward + SGD step; the minimum over the timed steps, all kept), and
the process CPU seconds of that step (``step_cpu_s``; robust to other jobs on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

DEFAULT_DEPTHS = "1,10,100,300,1000"
MODELS = ("residual", "checkpoint", "reversible", "wt-reversible", "deq", "pyg-rev")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "memory-depth", help="peak memory and step time vs depth: residual, checkpoint, reversible, "
        "weight-tied, equilibrium, PyG GroupAddRev",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default=DEFAULT_DEPTHS, help=f"comma-separated depths (default {DEFAULT_DEPTHS})")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--nodes", type=int, default=5000, help="random graph nodes (default 5000)")
    p.add_argument("--edges", type=int, default=50000, help="random graph edges (default 50000)")
    p.add_argument("--channels", type=int, default=64, help="block width (default 64)")
    p.add_argument("--groups", type=int, default=2, help="reversible channel groups (default 2)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after one warm-up (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")
    p.add_argument("--tag", default="memory_depth", help="file name stem (default memory_depth)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration before it is skipped")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in each child (0 = torch's default); 1 makes CPU-time "
                   "comparisons on a shared machine meaningful (no spinning worker threads)")
    p.add_argument("--malloc-default", action="store_true",
                   help="keep glibc's dynamic mmap threshold in the children (by default it is fixed at "
                   "128 KiB so freed tensors return to the OS and peak RSS tracks live memory)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiler cross-check (faster)")
    p.add_argument("--tensor-peak", action="store_true",
                   help="CPU: also run one profiled step and report its peak of live tensor bytes above the "
                        "step's start (tensor_peak_bytes; the CPU counterpart of CUDA max_memory_allocated, "
                        "blind to allocator fragmentation)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    p.add_argument("--quick", action="store_true",
                   help="small smoke run: depths 1,10,30, 1000 nodes, 10000 edges, 1 timed step")
    p.set_defaults(func=run)


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
def _env(device: str) -> dict:
    import torch
    import torch_geometric
    info = {"device": device, "malloc_env": "" if device.startswith("cuda") else json.dumps(_MALLOC_ENV), "torch": torch.__version__, "torch_geometric": torch_geometric.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ratios(rows: list[dict]) -> dict:
    by = {(r["model"], r["depth"]): r for r in rows if r.get("error") is None}
    depths = sorted({r["depth"] for r in rows})
    out: dict = {}
    for model in ("reversible", "wt-reversible", "deq", "residual", "checkpoint", "pyg-rev"):
        lo = 10 if (model, 10) in by else (depths[0] if depths else None)
        hi = max((d for (m, d) in by if m == model), default=None)
        if lo is not None and hi is not None and (model, lo) in by and by[(model, lo)]["activation_bytes"]:
            out[f"{model}_activation_growth_{lo}_to_{hi}"] = \
                by[(model, hi)]["activation_bytes"] / by[(model, lo)]["activation_bytes"]
    for d in depths:
        rev, pyg, res = by.get(("reversible", d)), by.get(("pyg-rev", d)), by.get(("residual", d))
        if rev and pyg:
            out[f"reversible_vs_pyg_peak_depth{d}"] = rev["peak_bytes"] / pyg["peak_bytes"]
            out[f"reversible_vs_pyg_step_depth{d}"] = rev["step_s"] / pyg["step_s"]
            if rev.get("tensor_peak_bytes") and pyg.get("tensor_peak_bytes"):
                out[f"reversible_vs_pyg_tensor_peak_depth{d}"] = rev["tensor_peak_bytes"] / pyg["tensor_peak_bytes"]
        if rev and res:
            out[f"reversible_vs_residual_step_depth{d}"] = rev["step_s"] / res["step_s"]
    return out


def _plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = [("activation_bytes", "activation bytes saved for backward (MiB)", 2**20),
              ("peak_bytes", f"peak memory (MiB, {rows[0].get('peak_kind', '')})", 2**20),
              ("ms_per_layer", "training step time per layer (ms)", 1.0)]
    for ax, (key, label, scale) in zip(axes, panels):
        for model in MODELS:
            pts = sorted((r["depth"], r[key] / scale) for r in rows
                         if r["model"] == model and r.get(key) is not None and r.get("error") is None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=model)
        ax.set_xscale("log")
        if key != "ms_per_layer":
            ax.set_yscale("log")  # every plotted value is > 0 MiB
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# glibc raises its mmap threshold to the size of the largest freed block, after which tensors of a
# few MiB come from the brk heap, where small long-lived allocations pin it: measured here, peak RSS
# of a 120-block reversible stack grew 4.3 MiB per block (966 MiB) with the default, stayed at
# 444 MiB with the threshold fixed (PyG GroupAddRev alike). Fixed, peak RSS tracks live memory.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def run(args) -> int:
    import torch

    from graphscale.errors import ConfigError
    from graphscale.memory.accounting import peak_rss_subprocess

    if args.quick:
        args.depths, args.nodes, args.edges, args.steps = "1,10,30", 1000, 10000, 1
    try:
        depths = [int(d) for d in str(args.depths).split(",") if d.strip()]
    except ValueError:
        raise ConfigError(f"--depths {args.depths!r}: expected comma-separated integers like 1,10,100") from None
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise ConfigError(f"--models: unknown {', '.join(bad)}; expected a subset of {', '.join(MODELS)}")
    if any(d < 1 for d in depths):
        raise ConfigError(f"--depths must be >= 1, got {depths}")
    if args.channels % args.groups or args.groups < 2:
        raise ConfigError(f"--channels {args.channels} must split into --groups {args.groups} (>= 2) equal groups")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    os.makedirs(args.out, exist_ok=True)
    env = _env(device)
    if args.malloc_default:
        env["malloc_env"] = "glibc default"
    rows: list[dict] = []
    stem = os.path.join(args.out, args.tag)
    for depth in depths:
        for model in models:
            kwargs = dict(model=model, depth=depth, nodes=args.nodes, edges=args.edges, channels=args.channels,
                          groups=args.groups, steps=args.steps, device=device, profile=not args.no_profile,
                          threads=args.threads, tensor_peak=args.tensor_peak)
            row = {"model": model, "depth": depth, "nodes": args.nodes, "edges": args.edges,
                   "channels": args.channels, "groups": args.groups}
            t0 = time.perf_counter()
            try:
                res = peak_rss_subprocess("graphscale.bench.memory_depth:measure", kwargs, timeout=args.timeout,
                                          env=None if args.malloc_default else _MALLOC_ENV)
                row.update(res["result"])
                row["process_base_rss"] = res["base_rss"]
                row["ms_per_layer"] = 1000 * row["step_s"] / depth if row.get("step_s") else None
                row["error"] = None
            except Exception as exc:  # one failing configuration must not lose the others
                row["error"] = f"{type(exc).__name__}: {str(exc)[-300:]}"
            row["wall_s"] = time.perf_counter() - t0
            row.update(env)
            rows.append(row)
            _print_row(row)
            _write(rows, stem, args, env)  # after every row: a killed sweep keeps what it measured
    _write(rows, stem, args, env, plot=True)
    print(f"wrote {stem}.csv, {stem}.json, {stem}.png")
    return 0


def _print_row(r: dict) -> None:
    if r.get("error"):
        print(f"{r['model']:>14} depth {r['depth']:>5}: FAILED {r['error']}", flush=True)
        return
    held = r.get("held_bytes_profiler")
    held_s = f"{held / 2**20:9.2f}" if held is not None else "        -"
    print(f"{r['model']:>14} depth {r['depth']:>5}: params {r['params']:>9,}  act {r['activation_bytes'] / 2**20:9.2f} "
          f"MiB  held {held_s} MiB  peak {r['peak_bytes'] / 2**20:8.1f} MiB"
          + (f"  tensor peak {r['tensor_peak_bytes'] / 2**20:7.2f} MiB" if r.get("tensor_peak_bytes") else "")
          + f"  step {r['step_s']:7.3f} s "
          f"({r['ms_per_layer']:.2f} ms/layer)", flush=True)


def _write(rows: list[dict], stem: str, args, env: dict, plot: bool = False) -> None:
    import csv
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(stem + ".csv.tmp", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    os.replace(stem + ".csv.tmp", stem + ".csv")
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v!r}"
             for k, v in vars(args).items() if k not in ("func", "bench", "command") and v not in (False, None, "")]
    summary = {"command": "graphscale bench memory-depth " + " ".join(flags),
        "environment": env, "note": args.note, "ratios": _ratios(rows), "rows": rows,
        "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(stem + ".json.tmp", "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    if plot and any(r.get("error") is None for r in rows):
        _plot(rows, stem + ".png", f"{args.nodes} nodes, {args.edges} edges, {args.channels} channels, "
              f"{args.groups} groups; {env['device']}, torch {env['torch']}, PyG {env['torch_geometric']}"
              + (f"; {args.note}" if args.note else ""))
