"""Memory accounting: what a training step really keeps alive, counted exactly.

Three complementary measurements (DESIGN.md, "Measuring memory honestly"):

* :class:`SavedBytes` / :func:`count_saved_bytes` -- the bytes autograd saves for backward, seen
  through :func:`torch.autograd.graph.saved_tensors_hooks` and de-duplicated by storage (a tensor
  saved by five ops, or a view of it, counts once). Custom :class:`torch.autograd.Function`\\ s that
  keep tensors on ``ctx`` directly (not through ``save_for_backward``) are invisible to those hooks;
  they call :func:`report_ctx` so the count stays complete. This count is exact and device-agnostic.
* :func:`profiled_forward_bytes` -- a cross-check that sees everything the allocator still holds
  after a forward (``ctx`` stashes included): ``torch.profiler`` with ``profile_memory=True``,
  summing ``self_cpu_memory_usage`` (and the device counterpart) over the events.
* :func:`peak_rss_subprocess` -- the peak resident set size of a fresh Python process running one
  configuration (the CPU analogue of ``torch.cuda.max_memory_allocated``).

:func:`state_bytes` adds parameters, gradients and optimizer state for the total.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

import torch
from torch import Tensor, nn

from graphscale.saved_bytes import SavedBytes, count_saved_bytes, report_ctx, tensor_bytes

__all__ = ["SavedBytes", "count_saved_bytes", "report_ctx", "profiled_forward_bytes",
           "peak_rss_subprocess", "read_peak_rss", "state_bytes", "tensor_bytes"]


def profiled_forward_bytes(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Net bytes the allocator still holds after ``fn()`` (the profiler cross-check).

    Runs ``fn`` under ``torch.profiler.profile(activities=[CPU(, CUDA)], profile_memory=True)`` and
    sums ``self_cpu_memory_usage`` (+ ``self_device_memory_usage`` on CUDA) over all events:
    allocations minus frees inside the window, i.e. everything the result and the autograd graph
    keep alive (tensors stashed on ``ctx`` included), inputs excluded. Returns ``(bytes, fn())``.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts, profile_memory=True) as prof:
        out = fn()
    total = 0
    for ev in prof.events():
        total += int(getattr(ev, "self_cpu_memory_usage", 0) or 0)
        total += int(getattr(ev, "self_device_memory_usage", 0) or 0)
    return total, out


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of parameters, their gradients and optimizer state (distinct storages).

    Returns ``{"params": ..., "grads": ..., "optimizer": ..., "total": ...}``. Weight-tied models
    reuse one storage across layers and count it once.
    """
    params = list(model.parameters())
    out = {
        "params": tensor_bytes(*params),
        "grads": tensor_bytes(*[p.grad for p in params if p.grad is not None]),
        "optimizer": 0,
    }
    if optimizer is not None:
        tensors = [v for st in optimizer.state.values() for v in st.values() if isinstance(v, Tensor)]
        out["optimizer"] = tensor_bytes(*tensors)
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


# --------------------------------------------------------------------------------------------
# Peak RSS of a fresh process.
def read_peak_rss() -> int:
    """This process's peak resident set size in bytes so far (``VmHWM``; ``ru_maxrss`` elsewhere).

    Inside :func:`peak_rss_subprocess` the counter was reset just before the call, so this is the
    call's high-water mark up to now (useful to read it before a phase that should not count).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
_CHILD = r"""
import json, resource, sys, importlib
import torch  # imported (and its import-time high-water mark reset below) before measuring


def status(key):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


spec = json.loads(sys.argv[1])
mod_name, _, attr = spec["target"].partition(":")
fn = importlib.import_module(mod_name)
for part in attr.split("."):
    fn = getattr(fn, part)
base = status("VmRSS")
try:  # Linux >= 4.0: "5" resets the peak-RSS counter (VmHWM) so imports do not mask the call's peak
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
result = fn(**spec["kwargs"])
peak = status("VmHWM") if reset else None
if peak is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("__GRAPHSCALE_RSS__" + json.dumps({"peak_rss": peak, "base_rss": base, "result": result,
                                         "peak_reset": reset}))
"""


def peak_rss_subprocess(target: str, kwargs: dict | None = None, timeout: float | None = None,
                        env: dict | None = None) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh Python process and report its peak RSS.

    Args:
        target: ``"package.module:function"``; the function must be importable and return a
            JSON-serialisable value (or None).
        kwargs: JSON-serialisable keyword arguments.
        timeout: seconds before the child is killed (``subprocess.TimeoutExpired``).
        env: extra environment variables for the child.

    Returns ``{"peak_rss": bytes, "base_rss": bytes, "result": ..., "peak_reset": bool}``.
    ``base_rss`` is the resident size after importing torch and the target, just before the call;
    on Linux the peak counter (``VmHWM``) is reset there, so ``peak_rss`` is the high-water mark
    during the call itself and ``peak_rss - base_rss`` its own growth. Where the reset is not
    available (``peak_reset`` False) ``peak_rss`` is ``ru_maxrss`` over the whole process.
    """
    if ":" not in target:
        raise ValueError(f"target {target!r} must look like 'package.module:function'")
    child_env = dict(os.environ)
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"target": target, "kwargs": kwargs or {}})],
                          capture_output=True, text=True, timeout=timeout, env=child_env)
    for line in proc.stdout.splitlines():
        if line.startswith("__GRAPHSCALE_RSS__"):
            return json.loads(line[len("__GRAPHSCALE_RSS__"):])
    raise RuntimeError(f"peak_rss_subprocess({target!r}) failed with exit code {proc.returncode}:\n"
                       f"{proc.stderr[-4000:]}")


def profiled_peak_bytes(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """Peak of live CPU tensor bytes during ``fn()``, above what was live when it started.

    The CPU counterpart of ``torch.cuda.max_memory_allocated`` after a reset: runs ``fn`` under
    ``torch.profiler.profile(profile_memory=True)`` and walks the allocator's alloc / free events in
    time order (``[memory]`` events, signed ``nbytes``), keeping the running sum's maximum. Unlike
    peak RSS it sees tensors only -- no allocator fragmentation, no Python objects -- so two
    techniques on the same model compare exactly. Returns ``(peak, net_at_end, fn())``.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts, profile_memory=True) as prof:
        out = fn()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU),
                    key=lambda t: t[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, live, out
