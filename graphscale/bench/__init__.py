"""Benchmarks reachable from the CLI (``graphscale bench NAME``), and the one way benchmarks write.

Each benchmark module exposes ``add_parser(subparsers)``; register it in ``_BENCHES`` of
:mod:`graphscale.bench.cli`. One-question scripts live in ``benchmarks/``; both kinds write only
through :mod:`graphscale.bench.output` (the rule: ``benchmarks/README.md``). Code that several
benchmarks share lives here too (:mod:`graphscale.bench.layerwise_runs`).
"""
