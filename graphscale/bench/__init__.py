"""Benchmarks reachable from the CLI (``graphscale bench NAME``).

Each benchmark module exposes ``add_parser(subparsers)``; register it in ``_BENCHES`` of
:mod:`graphscale.bench.cli`. Stand-alone scripts for other questions live in ``benchmarks/``.
"""
