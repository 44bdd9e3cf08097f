"""``graphscale bench NAME``: the benchmarks that ship with the package."""
from __future__ import annotations

import importlib

# name -> module exposing add_parser(subparsers); a module not written yet is left out of --help.
_BENCHES = {
    "memory-depth": "graphscale.bench.memory_depth",
    "compression": "graphscale.bench.compression",
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark (memory vs depth, compression, ...)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH")
    for module in _BENCHES.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        mod.add_parser(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])
