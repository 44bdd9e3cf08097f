"""Optional dependencies, probed once at import (PyG ``torch_geometric/typing.py`` style).

Everywhere else branches on these flags; code that needs a missing package calls
:func:`require` so the user learns what to install instead of getting an ``ImportError`` from
deep inside a call stack.
"""
from __future__ import annotations

import importlib.util
import os


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


WITH_TRITON = _has("triton")
WITH_TORCH_SCATTER = _has("torch_scatter")
WITH_TORCH_SPARSE = _has("torch_sparse")
WITH_PYMETIS = _has("pymetis")
WITH_OGB = _has("ogb")
WITH_MATPLOTLIB = _has("matplotlib")
WITH_SKLEARN = _has("sklearn")

#: ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors (slow; tests use small shapes).
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_INSTALL_HINT = {
    "triton": "pip install triton  (Linux x86_64)",
    "torch_scatter": "pip install torch-scatter  (builds from source; optional fast path)",
    "torch_sparse": "pip install torch-sparse  (builds from source; optional fast path)",
    "pymetis": "pip install pymetis",
    "ogb": "pip install ogb",
    "matplotlib": "pip install matplotlib",
    "sklearn": "pip install scikit-learn",
}


def require(module: str, what: str) -> None:
    """Raise a clear ``ImportError`` if ``module`` is missing, naming ``what`` needs it."""
    if not _has(module):
        hint = _INSTALL_HINT.get(module, f"pip install {module}")
        raise ImportError(f"{what} needs the optional package '{module}': {hint}")
