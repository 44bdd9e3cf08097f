"""Optional-dependency probes (graphscale._features): a package that is installed but broken counts as
absent, with a warning, and ``require`` names the package and how to install it.

Broken packages are simulated by fake modules on ``sys.path`` that raise on import, in a fresh
interpreter (the flags are computed once, at import)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

FAKES = {
    # a compiled extension built against another torch: the loader fails with OSError
    "torch_scatter/__init__.py": "raise OSError('libtorch_cuda.so: cannot open shared object file')\n",
    # a failing import inside the package (an undefined symbol, a missing dependency of its own)
    "torch_sparse/__init__.py": "raise ImportError('undefined symbol: _ZN3c1017RegisterOperators')\n",
    # Triton itself imports, its compiler does not (a broken backend or driver)
    "triton/__init__.py": "__version__ = '0.0-fake'\n",
    "triton/compiler/__init__.py": "raise ImportError('cannot import name \"get_backend\" from triton.backends')\n",
    "pymetis/__init__.py": "raise OSError('libmetis.so: undefined symbol METIS_PartGraphKway')\n",
}

_CHECK = textwrap.dedent(r"""
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from graphscale import _features as f
    out = {"flags": [f.WITH_TRITON, f.WITH_TORCH_SCATTER, f.WITH_TORCH_SPARSE],
           "warnings": [str(w.message) for w in caught], "require": {}}
    for module, what in (("triton", "the Triton quantization backend"), ("pymetis", "the 'metis' partitioner"),
                         ("torch_sparse", "the SparseTensor path"), ("no_such_package_xyz", "a test")):
        try:
            f.require(module, what)
            out["require"][module] = None
        except ImportError as e:
            out["require"][module] = str(e)
    print("RESULT" + json.dumps(out))
""")


def _run(tmp_path, fakes: dict[str, str]) -> dict:
    for rel, text in fakes.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path)] + [p for p in sys.path if p])  # fakes shadow the real ones
    proc = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_broken_optional_packages_are_absent_and_named(tmp_path):
    got = _run(tmp_path, FAKES)
    assert got["flags"] == [False, False, False]  # WITH_TRITON, WITH_TORCH_SCATTER, WITH_TORCH_SPARSE
    # each broken package is reported once, with the error its import raised
    warned = "\n".join(got["warnings"])
    for module, error in (("triton", "get_backend"), ("torch_scatter", "libtorch_cuda.so"),
                          ("torch_sparse", "undefined symbol")):
        assert f"'{module}' is installed but failed to import" in warned and error in warned, module
    req = got["require"]
    assert req["triton"].startswith("the Triton quantization backend needs the optional package 'triton': "
                                    "pip install triton")
    assert "get_backend" in req["triton"] and "reinstall" in req["triton"]
    assert "'pymetis': pip install pymetis" in req["pymetis"] and "OSError: libmetis.so" in req["pymetis"]
    assert "'torch_sparse': pip install torch-sparse" in req["torch_sparse"]
    # a package that is simply not installed: named with its install command, no "installed" remark
    assert req["no_such_package_xyz"] == ("a test needs the optional package 'no_such_package_xyz': "
                                          "pip install no_such_package_xyz")


def test_working_packages_are_present(tmp_path):
    # The same probes accept packages that import: fakes that import cleanly give True and no warning.
    fine = {"triton/__init__.py": "", "triton/compiler/__init__.py": "", "torch_scatter/__init__.py": "",
            "torch_sparse/__init__.py": "", "pymetis/__init__.py": ""}
    got = _run(tmp_path, fine)
    assert got["flags"] == [True, True, True]
    assert got["warnings"] == []
    assert got["require"]["triton"] is None and got["require"]["pymetis"] is None
    assert "pip install no_such_package_xyz" in got["require"]["no_such_package_xyz"]
