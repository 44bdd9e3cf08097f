"""The ``graphscale`` command line.

Each sub-command lives next to the code it drives, in a module that exposes
``add_parser(subparsers)``; the parser it adds sets ``func(args) -> int``. Those modules import
their heavy dependencies inside ``func`` so that ``graphscale --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from graphscale import __version__
from graphscale.errors import GraphscaleError

# name -> module with add_parser(subparsers). Order is the order shown in --help.
_COMMANDS = {
    "train": "graphscale.train.cli",
    "data": "graphscale.data.cli",
    "bench": "graphscale.bench.cli",
    "gntk": "graphscale.gntk.cli",
}
# command -> modules of upper layers that add actions to it (add_parser(the command's subparsers))
_ACTIONS = {"data": ("graphscale.train.store_cli",)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphscale",
        description=(
            "Train graph neural networks past the memory and size limits of one device: "
            "partition / Cluster-GCN training, reversible, weight-tied and equilibrium blocks, "
            "2-bit activation compression, Graph Neural Tangent Kernels."
        ),
        epilog="Run 'graphscale COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"graphscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # sub-command not built yet
                continue
            raise
        if name in _ACTIONS:
            mod.add_parser(sub, actions=[importlib.import_module(m) for m in _ACTIONS[name]])
        else:
            mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (`train CFG --out D a.b=1`): argparse leaves those
    # as extras, which commands with an `overrides` list take; anything else is an error.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(
                "=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except GraphscaleError as exc:
        print(f"graphscale {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"graphscale {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
