"""Accuracy of ``compress_model`` on a model written the way a PyG user writes it (issue 20, item 4).

The model: ``torch_geometric.nn.SAGEConv`` (mean) -> ``torch.nn.BatchNorm1d`` -> ``F.relu`` ->
``F.dropout`` -> ``SAGEConv``, with ``F.dropout`` on the input features too, all activations and
dropout as functional calls in ``forward`` (no ``nn.ReLU`` / ``nn.Dropout`` modules). Before the
functional rule (``graphscale.memory.functional``) those calls stayed uncompressed and unlisted.

Per data set (Planetoid public split, loaded by ``graphscale.data.load_dataset``) and configuration:
``--seeds`` runs (seed ``s`` gives the same initialisation and the same dropout draws in every
configuration: packed dropout masks are torch's own Bernoulli draws), ``--epochs`` full-batch Adam
epochs, test accuracy at the epoch of best validation accuracy; mean, sample standard deviation and
the difference to float32. Also recorded: the activation bytes one training forward saves
(``count_saved_bytes``, parameters excluded; the input features are kept by reference), the ratio
to float32, and ``find_uncompressed`` on the compressed model (expected: nothing).

``--grad-draws K`` also writes ``TAG-grad.csv``: the relative error of all parameter gradients at the
seed-0 initialisation against float32 (same dropout draw), over ``K`` quantization seeds.

Configurations (``--configs``): ``fp32`` (the baseline, always run); ``2bit`` = ``compress_model(model,
bits=2)``, the default configuration; ``4bit``, ``8bit``; ``2bit-node`` (per-node statistics, EXACT);
``2bit-exact-inputs`` (2 bits, but the dropped-out input features that the first layer reads are
stored exactly: ``F.dropout`` on the input runs before ``compress_model``'s rule sees a gradient).

Example (the committed rows)::

    python benchmarks/bench_compress_user_model.py --datasets cora citeseer --configs fp32 2bit \\
        --seeds 5 --epochs 100 --out benchmarks/results --tag compress-user-sage-cora
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from graphscale.bench.output import ResultWriter, add_output_args
from graphscale.errors import ConfigError, GraphscaleError

NAME = "compress-user-model"
# name: keyword arguments of compress_model (None: float32, no compression)
CONFIGS = {
    "fp32": None,
    "2bit": {"bits": 2},
    "4bit": {"bits": 4},
    "8bit": {"bits": 8},
    "2bit-node": {"bits": 2, "group_size": None},
    "2bit-exact-inputs": {"bits": 2},
}


class UserSAGE(nn.Module):
    """Two SAGEConv layers with BatchNorm, ReLU and dropout as a PyG user writes them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float, input_dropout: bool = True):
        super().__init__()
        from torch_geometric.nn import SAGEConv
        self.conv1 = SAGEConv(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.conv2 = SAGEConv(hidden, out_dim)
        self.dropout = dropout
        self.input_dropout = input_dropout

    def forward(self, x, edge_index):
        if self.input_dropout:
            x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.conv1(x, edge_index)
        x = self.bn1(x)
        x = F.relu(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


class _ExactInputs(nn.Module):
    """Runs the input dropout outside the compressed model, so its output is a step input (kept
    by reference, exact) for ``compress_model``; the rest is the same model and the same draws."""

    def __init__(self, inner: UserSAGE):
        super().__init__()
        self.inner = inner
        inner.input_dropout = False

    def forward(self, x, edge_index):
        x = F.dropout(x, p=self.inner.dropout, training=self.training)
        return self.inner(x, edge_index)


def _build(config: str, data, hidden: int, dropout: float, seed: int) -> nn.Module:
    from graphscale.memory import compress_model
    torch.manual_seed(seed)
    model = UserSAGE(data.x.size(1), hidden, data.num_outputs, dropout)
    opts = CONFIGS[config]
    if opts is None:
        return model
    if config == "2bit-exact-inputs":
        wrapper = _ExactInputs(model)
        compress_model(model, strict=True, **opts)
        return wrapper
    return compress_model(model, strict=True, example_inputs=(data.x, data.edge_index), **opts)


def _train(model, data, epochs: int, lr: float, wd: float, seed: int) -> tuple[float, float]:
    """(test accuracy at the best validation epoch, seconds per epoch)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    sp = data.split
    best_val, test_at_best = -1.0, 0.0
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x, data.edge_index)[sp["train"]], data.y[sp["train"]]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x, data.edge_index).argmax(-1)
        val = float((pred[sp["valid"]] == data.y[sp["valid"]]).float().mean())
        if val > best_val:
            best_val = val
            test_at_best = float((pred[sp["test"]] == data.y[sp["test"]]).float().mean())
    return test_at_best, (time.perf_counter() - t0) / epochs


def _saved_bytes(model, data) -> int:
    from graphscale.memory import count_saved_bytes
    model.train()
    torch.manual_seed(0)
    with count_saved_bytes(exclude=[*model.parameters(), *model.buffers(), data.x, data.edge_index]) as c:
        out = model(data.x, data.edge_index)
    del out
    return c.total


def _grad_error(config: str, data, hidden: int, dropout: float, draws: int) -> tuple[float, float]:
    """(mean, max) over ``draws`` quantization seeds of ``|grad - grad_fp32| / |grad_fp32|`` over all
    parameters, at the seed-0 initialisation, with the same dropout draw as float32."""
    from graphscale.memory.random_streams import set_seed

    def grad(model, k):
        model.train()
        model.zero_grad()
        set_seed(k)
        torch.manual_seed(123)  # identical dropout masks in every draw and every config
        tr = data.split["train"]
        F.cross_entropy(model(data.x, data.edge_index)[tr], data.y[tr]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    ref = grad(_build("fp32", data, hidden, dropout, 0), 0)
    model = _build(config, data, hidden, dropout, 0)
    errs = [float((grad(model, k) - ref).norm() / ref.norm()) for k in range(draws)]
    return statistics.mean(errs), max(errs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["cora", "citeseer"], choices=["cora", "citeseer", "pubmed"],
                   metavar="NAME", help="Planetoid data sets (default: cora citeseer)")
    p.add_argument("--root", default=os.path.join(os.environ.get("GRAPHSCALE_SHARED_DATA", "../shared/data"),
                                                  "planetoid"),
                   help="folder holding the Planetoid data sets (default: $GRAPHSCALE_SHARED_DATA/planetoid, "
                        "else ../shared/data/planetoid)")
    p.add_argument("--configs", nargs="+", default=["fp32", "2bit"], choices=list(CONFIGS), metavar="CONFIG",
                   help=f"configurations, from {', '.join(CONFIGS)} (default: fp32 2bit; the difference to fp32 "
                        f"is filled in when fp32 is among them)")
    p.add_argument("--seeds", type=int, default=5,
                   help="training seeds per configuration (default 5; 0 skips the accuracy runs)")
    p.add_argument("--grad-draws", type=int, default=0,
                   help="quantization seeds for the gradient error at initialisation against float32, written "
                        "to TAG-grad.csv (default 0: not measured)")
    p.add_argument("--epochs", type=int, default=200, help="training epochs per run (default 200)")
    p.add_argument("--hidden", type=int, default=64, help="hidden width (default 64)")
    p.add_argument("--dropout", type=float, default=0.5, help="dropout probability (default 0.5)")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="Adam weight decay (default 0.0005)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tag", default="compress-user-model", help="result file stem: TAG.csv and TAG.json")
    p.add_argument("--note", default="", help="free text stored with the results")
    add_output_args(p, NAME)
    args = p.parse_args(argv)
    try:
        return _run(args)
    except GraphscaleError as exc:  # bad input / an existing result file: one line, no traceback
        print(f"bench_compress_user_model: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    for key in ("epochs", "hidden", "threads"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key} must be at least 1, got {getattr(args, key)}")
    for key in ("seeds", "grad_draws"):
        if getattr(args, key) < 0:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 0, got {getattr(args, key)}")
    if args.seeds == 0 and args.grad_draws == 0:
        raise ConfigError("nothing to measure: give --seeds or --grad-draws at least 1")
    if not 0.0 <= args.dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {args.dropout}")

    from graphscale.data import load_dataset
    from graphscale.memory import find_uncompressed

    writer = ResultWriter.from_args(args, NAME, "cpu")
    stems = ([args.tag] if args.seeds else []) + ([args.tag + "-grad"] if args.grad_draws else [])
    writer.check(*stems)
    torch.set_num_threads(args.threads)
    # fp32 first when asked for (the baseline of the differences); a long run may be split into one
    # process per configuration, the seeds making the runs comparable across processes
    configs = sorted(dict.fromkeys(args.configs), key=lambda c: c != "fp32")
    rows, grad_rows = [], []
    for ds in args.datasets:
        data = load_dataset(ds, args.root)
        for config in configs if args.grad_draws else ():
            if config == "fp32":
                continue
            mean_err, max_err = _grad_error(config, data, args.hidden, args.dropout, args.grad_draws)
            grad_rows.append({"dataset": ds, "config": config, "draws": args.grad_draws,
                              "grad_rel_err_mean": round(mean_err, 4), "grad_rel_err_max": round(max_err, 4)})
            print(f"{ds} {config}: gradient error {mean_err:.4f} (max {max_err:.4f})", flush=True)
            writer.write_table(args.tag + "-grad", grad_rows, {"note": args.note, "command": " ".join(sys.argv)})
        if not args.seeds:
            continue
        base_mean = None
        base_bytes = None
        for config in configs:
            accs, secs = [], []
            for seed in range(args.seeds):
                model = _build(config, data, args.hidden, args.dropout, seed)
                acc, sec = _train(model, data, args.epochs, args.lr, args.weight_decay, seed)
                accs.append(100.0 * acc)
                secs.append(sec)
                print(f"{ds} {config} seed {seed}: test {100 * acc:.2f} ({sec * 1000:.0f} ms/epoch)", flush=True)
            model = _build(config, data, args.hidden, args.dropout, 0)
            nbytes = _saved_bytes(model, data)
            left = find_uncompressed(model) if config != "fp32" else []
            mean = statistics.mean(accs)
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            if config == "fp32":
                base_mean, base_bytes = mean, nbytes
            rows.append({
                "dataset": ds, "config": config, "seeds": args.seeds, "epochs": args.epochs,
                "test_acc_mean": round(mean, 2), "test_acc_std": round(std, 2),
                "delta_vs_fp32": round(mean - base_mean, 2) if base_mean is not None else "",
                "per_seed": " ".join(f"{a:.1f}" for a in accs),
                "saved_bytes": nbytes, "bytes_vs_fp32": round(base_bytes / nbytes, 2) if base_bytes else "",
                "ms_per_epoch_median": round(1000 * statistics.median(secs), 1),
                "uncompressed": "; ".join(f"{n}: {c}" for n, c in left),
            })
            writer.write_table(args.tag, rows, {"note": args.note, "command": " ".join(sys.argv)})
    print(f"wrote {', '.join(writer.written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
