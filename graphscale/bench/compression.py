"""``graphscale bench compression``: what 2-bit activation compression (ActNN / EXACT) saves and costs.

For GCN, GraphSAGE and GEN stacks and the RevGNN recipe on real data sets (Cora, CiteSeer), in one run and on the same graph:

* activation bytes autograd keeps for backward (exact count, :func:`count_saved_bytes`; parameters,
  the graph structure and the input features -- held by the data set -- excluded) for float32, 8/4/2/1-bit
  layers (``compress_model(..., hooks_fallback=True)``: message-passing internals quantized by scoped
  hooks), 2 bits + random projection (EXACT), 2-bit per-node statistics (EXACT), 2-bit layers without
  the fallback (``2bit-nofb``), the model-agnostic 2-bit hooks (``hook_compression``), dropout masks
  regenerated from a seed (``*-seed``: 0 mask bytes) and the replaced layers with exact storage
  (``fp32-layers``: ``compress_model(disable=True)``, e.g. SAGE's reordered neighbour Linear alone);
* time per training step (forward + backward + Adam), median over ``--time-steps``, each config
  timed interleaved with a float32 twin (overhead = same-window ratio);
* test accuracy at the best validation epoch, mean and std over ``--seeds`` seeds (float32 vs the
  ``--accuracy-configs``);
* gradient error at initialisation: relative bias ``|E[g] - g_fp32| / |g_fp32|`` and relative
  standard deviation over ``--grad-draws`` quantization seeds (same dropout masks).

Rows go through :mod:`graphscale.bench.output` to ``<out>/<tag>.csv`` and ``<out>/<tag>.json``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings

_CONFIGS = {
    # name: (mode, bits, group_size, kept_frac[, dropout_mask])
    "fp32": ("none", 32, None, 1.0),
    "fp32-layers": ("disabled", 32, None, 1.0),  # compress_model(disable=True): replaced layers, exact storage
    "8bit": ("layers", 8, 256, 1.0),
    "4bit": ("layers", 4, 256, 1.0),
    "2bit": ("layers", 2, 256, 1.0),
    "1bit": ("layers", 1, 256, 1.0),
    "2bit-rp": ("layers", 2, 256, 0.125),
    "2bit-node": ("layers", 2, None, 1.0),
    "2bit-hooks": ("hooks", 2, 256, 1.0),
    "2bit-nofb": ("layers-only", 2, 256, 1.0),
    "2bit-seed": ("layers", 2, 256, 1.0, "seed"),  # dropout masks regenerated from a seed (0 bytes)
    "2bit-rp-seed": ("layers", 2, 256, 0.125, "seed"),
    "2bit-rp4-seed": ("layers", 2, 256, 0.25, "seed"),
}


def _spec(config: str):
    mode, bits, group, kept, *rest = _CONFIGS[config]
    return mode, bits, group, kept, (rest[0] if rest else "packed")
_MODELS = ("gcn", "sage", "gen", "revgnn")


NAME = "compression"

_DESCRIPTION = """\
What 2-bit activation compression (ActNN / EXACT) saves and costs, for GCN, GraphSAGE and GEN
stacks and the RevGNN recipe on Planetoid data sets (Cora, CiteSeer), in one run, on the same graph:

  activation bytes   bytes autograd keeps for backward, counted exactly (parameters, the graph
                     and the input features excluded), per configuration (--configs)
  step time          forward + backward + Adam, median over --time-steps, each configuration
                     timed interleaved with a float32 twin (the overhead is a same-window ratio)
  accuracy           test accuracy at the best validation epoch, mean and std over --seeds
                     seeds (float32 and the --accuracy-configs)
  gradient error     relative bias and standard deviation of the gradient at initialisation over
                     --grad-draws quantization seeds (same dropout masks)

Configurations: fp32; fp32-layers (the replaced layers with exact storage); 8bit, 4bit, 2bit,
1bit (layers, with hooks for message-passing internals); 2bit-rp (2 bits + random projection
keeping 1/8, EXACT); 2bit-node (per-node statistics); 2bit-hooks (model-agnostic hooks);
2bit-nofb (layers only); *-seed (dropout masks regenerated from a seed: 0 bytes);
2bit-rp4-seed (projection keeping 1/4).

Results: a CSV and a JSON (with versions, device, git commit and the load average at the start)
in a new folder runs/bench/compression-<timestamp>/ unless --out is given."""


def add_parser(subparsers) -> None:
    from graphscale.bench.output import add_output_args

    p = subparsers.add_parser(NAME, help="activation compression: bytes, step time, accuracy, gradient error",
                              description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer"], metavar="NAME",
                   help="Planetoid data sets to run on (default: cora citeseer)")
    p.add_argument("--root", default=os.path.join(os.environ.get("GRAPHSCALE_SHARED_DATA", "../shared/data"),
                                                  "planetoid"),
                   help="folder holding the Planetoid data sets (default: $GRAPHSCALE_SHARED_DATA/planetoid, "
                        "else ../shared/data/planetoid)")
    p.add_argument("--models", nargs="+", default=list(_MODELS), choices=_MODELS, metavar="MODEL",
                   help=f"models to run, from {', '.join(_MODELS)} (default: all)")
    p.add_argument("--configs", nargs="+", default=list(_CONFIGS), choices=list(_CONFIGS), metavar="CONFIG",
                   help="compression configurations to measure (default: all; fp32 is always included as "
                        "the baseline)")
    p.add_argument("--accuracy-configs", nargs="*", default=["fp32", "2bit", "2bit-rp"], choices=list(_CONFIGS),
                   metavar="CONFIG",
                   help="configurations also trained for accuracy (default: fp32 2bit 2bit-rp; give the "
                        "option with no value to skip training)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width of every model (default 128)")
    p.add_argument("--layers", type=int, default=3, help="convolutions (or reversible blocks), at least 2 "
                                                         "(default 3)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout probability between layers (default 0.5)")
    p.add_argument("--epochs", type=int, default=200, help="training epochs for the accuracy runs (default 200)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the accuracy runs (default 0.01)")
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="Adam weight decay of the accuracy runs (default 0.0005)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per accuracy run, at least 1 (default 3)")
    p.add_argument("--time-steps", type=int, default=20,
                   help="timed training steps per configuration (default 20; 0 skips the timing)")
    p.add_argument("--grad-draws", type=int, default=16,
                   help="quantization seeds for the gradient error (default 16; 0 skips it)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: stable timings on a busy machine)")
    p.add_argument("--tag", default="compression",
                   help="file name stem of the results: TAG.csv and TAG.json (default compression)")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------
def _build(kind: str, in_dim: int, hidden: int, out: int, layers: int, dropout: float):
    import torch
    from torch import nn
    from torch_geometric.nn import GCNConv, GENConv, SAGEConv

    if kind == "revgnn":
        # The RevGNN recipe (Li et al., ICML 2021; graphscale.nn.RevGNN): encoder, ``layers`` reversible
        # LayerNorm -> ReLU -> Dropout -> GENConv(max, as for ogbn-proteins) blocks in 2 groups, decoder.
        # The blocks save nothing (recomputed in backward); compression acts on what the model still saves.
        from graphscale.nn.models import RevGNN
        return RevGNN(in_dim, hidden, out, layers, num_groups=2, dropout=dropout, aggr="max")

    class Net(nn.Module):
        """``layers`` convolutions; between them LayerNorm -> ReLU -> Dropout (as modules, so
        compress_model can swap them; the input features go straight into the first convolution)."""

        def __init__(self):
            super().__init__()
            dims = [in_dim] + [hidden] * (layers - 1) + [out]

            def conv(a, b):
                if kind == "gcn":
                    return GCNConv(a, b, normalize=False)  # pre-normalised adjacency
                if kind == "sage":
                    return SAGEConv(a, b, aggr="mean")
                return GENConv(a, b, aggr="softmax", t=1.0, learn_t=True, num_layers=2, norm="layer")

            self.convs = nn.ModuleList(conv(dims[i], dims[i + 1]) for i in range(layers))
            self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers - 1))
            self.acts = nn.ModuleList(nn.ReLU() for _ in range(layers - 1))
            self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(layers - 1))

        def forward(self, x, graph):
            h = x
            for i, c in enumerate(self.convs):
                h = c(h, graph)
                if i < len(self.convs) - 1:
                    h = self.drops[i](self.acts[i](self.norms[i](h)))
            return h

    del torch
    return Net()


def _graph(kind: str, edge_index, n: int):
    """GCN: ``D^-1/2 (A + I) D^-1/2`` as a sparse CSR ``adj_t``; SAGE: ``A`` as CSR; GEN, RevGNN: ``edge_index``."""
    import torch
    if kind in ("gen", "revgnn"):
        return edge_index
    if kind == "gcn":
        loops = torch.arange(n)
        ei = torch.cat([edge_index, torch.stack([loops, loops])], 1)
        deg = torch.zeros(n).index_add_(0, ei[1], torch.ones(ei.size(1)))
        w = deg[ei[0]].rsqrt() * deg[ei[1]].rsqrt()
    else:
        ei, w = edge_index, torch.ones(edge_index.size(1))
    # adj_t[i, j] = weight of the edge j -> i (PyG's convention for sparse adjacency inputs)
    return torch.sparse_coo_tensor(torch.stack([ei[1], ei[0]]), w, (n, n)).coalesce().to_sparse_csr()


def _apply(model, config: str):
    from graphscale.memory import compress_model, hook_compression
    mode, bits, group, kept, drop = _spec(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode in ("layers", "layers-only"):
            return compress_model(model, bits=bits, group_size=group, kept_frac=kept,
                                  hooks_fallback=mode == "layers", dropout_mask=drop)
        if mode == "disabled":
            return compress_model(model, disable=True, hooks_fallback=True)
        if mode == "hooks":
            return hook_compression(model, bits=bits, group_size=group)
    return model


def _graph_tensors(graph):
    import torch
    if isinstance(graph, torch.Tensor) and graph.layout == torch.sparse_csr:
        return [graph.crow_indices(), graph.col_indices(), graph.values()]
    return [graph]


def _saved_bytes(model, x, graph) -> int:
    import torch
    from graphscale.memory import count_saved_bytes
    # Counted: everything autograd keeps for backward except parameters, the graph and the input
    # features (held by the data set in full-batch training; every config keeps them by reference).
    exclude = list(model.parameters()) + list(model.buffers()) + [x] + _graph_tensors(graph)
    model.train()
    torch.manual_seed(0)
    with count_saved_bytes(exclude=exclude) as c:
        out = model(x, graph)
    del out
    return c.total


def _step_ms(models, data, graph, steps: int) -> list[float]:
    """Median ms per training step (forward + backward + Adam) of each model. The models' steps are
    interleaved (A, B, A, B, ...) so load changes on a shared machine hit them alike."""
    import torch
    import torch.nn.functional as F
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in models]
    train = data.split["train"]
    times = [[] for _ in models]
    for m in models:
        m.train()
    for i in range(steps + 2):
        for k, (m, opt) in enumerate(zip(models, opts)):
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(m(data.x, graph)[train], data.y[train]).backward()
            opt.step()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def _accuracy(model, data, graph, epochs: int, lr: float, wd: float) -> float:
    import torch
    import torch.nn.functional as F
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    sp = data.split
    best_val, test_at_best = -1.0, 0.0
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x, graph)[sp["train"]], data.y[sp["train"]]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x, graph).argmax(-1)
        val = float((pred[sp["valid"]] == data.y[sp["valid"]]).float().mean())
        if val > best_val:
            best_val = val
            test_at_best = float((pred[sp["test"]] == data.y[sp["test"]]).float().mean())
    return test_at_best


def _grad_error(make, config: str, data, graph, draws: int) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F
    from graphscale.memory.random_streams import set_seed

    def grad(model, k):
        model.train()
        model.zero_grad()
        torch.manual_seed(123)  # identical dropout masks in every draw and every config
        set_seed(k)
        tr = data.split["train"]
        F.cross_entropy(model(data.x, graph)[tr], data.y[tr]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])

    ref = grad(make(), 0)
    model = _apply(make(), config)
    gs = torch.stack([grad(model, k) for k in range(draws)])
    mean = gs.mean(0)
    nrm = float(ref.norm())
    bias = float((mean - ref).norm()) / nrm
    std = math.sqrt(float(((gs - mean) ** 2).sum(1).mean())) / nrm
    return bias, std


def _env() -> dict:
    """Per-row tags (the writer's JSON holds the full environment)."""
    import torch
    from graphscale import _features
    env = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if _features.WITH_TRITON:
        import triton
        env["triton"] = triton.__version__
    return env


def _check(args) -> None:
    """Every option checked before anything is loaded, created or measured."""
    from graphscale.errors import ConfigError

    for key, low in (("seeds", 1), ("epochs", 1), ("layers", 2), ("hidden", 1), ("time_steps", 0),
                     ("grad_draws", 0), ("threads", 1)):
        if getattr(args, key) < low:
            raise ConfigError(f"--{key.replace('_', '-')} {getattr(args, key)}: expected a whole number >= {low}")
    if not 0.0 <= args.dropout < 1.0:
        raise ConfigError(f"--dropout {args.dropout}: expected a probability in [0, 1)")
    if not args.lr > 0 or args.weight_decay < 0:
        raise ConfigError(f"--lr {args.lr} / --weight-decay {args.weight_decay}: expected lr > 0 and "
                          f"weight decay >= 0")
    if not args.tag or any(c in args.tag for c in "/\\") or args.tag.startswith("."):
        raise ConfigError(f"--tag {args.tag!r}: expected a file name stem without folders, like compression")
    from graphscale.data.datasets import PLANETOID
    unknown = [d for d in args.datasets if d not in PLANETOID]
    if unknown:
        raise ConfigError(f"--datasets {' '.join(unknown)}: expected Planetoid names from {', '.join(PLANETOID)}")
    missing = [d for d in args.datasets if not os.path.isdir(os.path.join(args.root, PLANETOID[d], "raw"))]
    if missing:
        raise ConfigError(f"--datasets {' '.join(missing)}: no {PLANETOID[missing[0]]}/raw folder under "
                          f"--root {args.root!r}")


def run(args) -> int:
    import torch
    from graphscale.bench.output import ResultWriter
    from graphscale.data import load_dataset

    _check(args)
    writer = ResultWriter.from_args(args, NAME, "cpu")
    writer.check(args.tag)
    torch.set_num_threads(args.threads)
    env = _env()
    configs = list(dict.fromkeys(["fp32"] + args.configs))
    rows = []
    for ds in args.datasets:
        data = load_dataset(ds, args.root)
        n, f_in, c = data.x.size(0), data.x.size(1), data.num_outputs
        for kind in args.models:
            graph = _graph(kind, data.edge_index, n)

            def make(seed=0):
                torch.manual_seed(seed)
                return _build(kind, f_in, args.hidden, c, args.layers, args.dropout)

            base = {}
            for cfg in configs:
                mode, bits, group, kept, drop = _spec(cfg)
                row = {"dataset": ds, "model": kind, "config": cfg, "mode": mode, "bits": bits,
                       "group_size": group or 0, "kept_frac": kept, "dropout_mask": drop if mode != "none" else "",
                       "num_nodes": n, "hidden": args.hidden,
                       "layers": args.layers}
                model = _apply(make(), cfg)
                row["act_bytes"] = _saved_bytes(model, data.x, graph)
                if not args.time_steps:
                    row["step_ms"] = row["fp32_step_ms"] = None  # timing skipped (--time-steps 0)
                if cfg == "fp32":
                    if args.time_steps:
                        row["step_ms"] = row["fp32_step_ms"] = _step_ms([make()], data, graph, args.time_steps)[0]
                    base = dict(row)
                    row["grad_rel_bias"], row["grad_rel_std"] = 0.0, 0.0
                else:
                    # timed interleaved with a float32 twin: the overhead is a same-window ratio
                    if args.time_steps:
                        row["step_ms"], row["fp32_step_ms"] = _step_ms([_apply(make(), cfg), make()], data, graph,
                                                                       args.time_steps)
                    # A seed-regenerated dropout mask is not torch's Bernoulli draw: the fp32 reference
                    # would drop other units, so the comparison would measure the masks, not the
                    # quantization (the seed mask's gradient is exact: tests/memory/test_compress.py).
                    row["grad_rel_bias"], row["grad_rel_std"] = (
                        _grad_error(make, cfg, data, graph, args.grad_draws)
                        if args.grad_draws > 0 and drop != "seed" else (math.nan, math.nan))
                row["bytes_ratio"] = base["act_bytes"] / row["act_bytes"]
                row["time_overhead"] = row["step_ms"] / row["fp32_step_ms"] - 1.0 if args.time_steps else None
                if cfg in args.accuracy_configs:
                    accs = []
                    for s in range(args.seeds):
                        from graphscale.memory.random_streams import set_seed
                        set_seed(s)
                        accs.append(_accuracy(_apply(make(s), cfg), data, graph, args.epochs, args.lr,
                                              args.weight_decay))
                    row["acc_mean"] = statistics.mean(accs) * 100
                    row["acc_std"] = (statistics.stdev(accs) if len(accs) > 1 else 0.0) * 100
                    row["acc_seeds"] = len(accs)
                    row["accs"] = [round(a * 100, 2) for a in accs]
                row.update(env)
                row["note"] = args.note
                rows.append(row)
                acc = f"  acc {row['acc_mean']:.2f}+-{row['acc_std']:.2f}" if "acc_mean" in row else ""
                step = (f"step {row['step_ms']:7.1f} ms ({row['time_overhead'] * 100:+5.0f}%)" if args.time_steps
                        else "step not timed")
                print(f"{ds:9s} {kind:5s} {cfg:10s} act {row['act_bytes'] / 2**20:8.3f} MiB  x{row['bytes_ratio']:6.2f}  "
                      f"{step}  grad bias "
                      f"{row['grad_rel_bias']:.3f} std {row['grad_rel_std']:.3f}{acc}", flush=True)
    csv_path, json_path = writer.write_table(args.tag, rows, {"note": args.note, "args": {
        k: v for k, v in vars(args).items() if k not in ("func", "command", "bench")}})
    print(f"wrote {csv_path} and {json_path}")
    return 0
