#!/usr/bin/env bash
# The GPU verification of graphscale in one command (<= 8 minutes on one H100):
#   benchmarks/device_check.sh OUTDIR            # on a CUDA machine
#   benchmarks/device_check.sh OUTDIR --dry-run  # the same steps on CPU at tiny sizes (CI)
# Steps, sizes, budgets and targets: benchmarks/device_check.py and docs/ops.md ("GPU verification").
# Writes at most 8 files under OUTDIR, prints a summary table, exits non-zero naming the first failed step.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUTDIR [--dry-run]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/triton_kernels${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Wheels carried to a machine without internet (e.g. ogb on the lent GPU machine; docs/ops.md): a .whl/
# folder at the repository root is installed into a private folder and put on the path.
if compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/graphscale-device-check-site"
    "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$site"
fi
exec "${PYTHON:-python3}" benchmarks/device_check.py "$@"
