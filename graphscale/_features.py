"""Optional dependencies, probed once at import (PyG ``torch_geometric/typing.py`` style).

Everywhere else branches on these flags; code that needs a missing package calls :func:`require` so
the user learns what to install instead of getting an ``ImportError`` from deep inside a call stack.

A probe imports the package rather than asking ``importlib.util.find_spec`` whether it is on the path:
an installed but broken package (a binary built for another torch or CUDA, a missing shared library:
``OSError``; a failing import inside it: ``ImportError``; for Triton also a failing import of its
compiler) counts as absent, with a warning that names the error, instead of as present.
"""
from __future__ import annotations

import importlib
import os
import warnings

#: Extra modules a package needs to be usable (Triton's compiler imports its backends and drivers).
_SUBMODULES = {"triton": ("triton.compiler",)}

_INSTALL_HINT = {
    "triton": "pip install triton  (Linux x86_64)",
    "torch_scatter": "pip install torch-scatter  (builds from source; optional fast path)",
    "torch_sparse": "pip install torch-sparse  (builds from source; optional fast path)",
    "pymetis": "pip install pymetis",
}


def _import_error(module: str) -> Exception | None:
    """``None`` if ``module`` (and the submodules it needs) imports, else the exception its import raised."""
    try:
        for name in (module, *_SUBMODULES.get(module, ())):
            importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 -- any failure means unusable (PyG catches Exception too)
        return e
    return None


def _not_installed(module: str, err: Exception) -> bool:
    # The package itself is absent (as opposed to present and failing inside its own import).
    return isinstance(err, ModuleNotFoundError) and err.name == module.partition(".")[0]


def _probe(module: str) -> bool:
    """Whether ``module`` imports; a package that is installed but fails to import is reported in a warning."""
    err = _import_error(module)
    if err is None:
        return True
    if not _not_installed(module, err):
        warnings.warn(f"The optional package '{module}' is installed but failed to import "
                      f"({type(err).__name__}: {err}); graphscale runs without it.", stacklevel=2)
    return False


WITH_TRITON = _probe("triton")
WITH_TORCH_SCATTER = _probe("torch_scatter")
WITH_TORCH_SPARSE = _probe("torch_sparse")

#: ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors (slow; tests use small shapes).
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _has(module: str) -> bool:
    """Whether ``module`` imports now (the probe behind :func:`require`, for packages without a flag)."""
    return _import_error(module) is None


def require(module: str, what: str) -> None:
    """Raise a clear ``ImportError`` if ``module`` cannot be imported, naming ``what`` needs it and how to
    install it (and, for an installed but broken package, the error its import raised)."""
    if _has(module):
        return
    hint = _INSTALL_HINT.get(module, f"pip install {module}")
    err = _import_error(module)
    broken = "" if err is None or _not_installed(module, err) else (
        f" (it is installed but its import failed: {type(err).__name__}: {err}; reinstall it)")
    raise ImportError(f"{what} needs the optional package '{module}': {hint}{broken}")
