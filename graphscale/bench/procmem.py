"""Per-process memory with shared mappings counted honestly: USS / PSS / RSS from ``/proc``.

RSS counts every resident page a process maps, so the page cache of a memory-mapped file that W
processes share shows up W times. ``/proc/PID/smaps_rollup`` (Linux >= 4.14) also gives

* **USS** (unique set size) = ``Private_Clean + Private_Dirty`` (+ ``Private_Hugetlb``): the pages only
  this process maps; what it costs the machine by itself (an anonymous allocation, a file page that
  no other process maps);
* **PSS** (proportional set size) = private pages + each shared page divided by the number of
  processes mapping it; PSS summed over processes is what they occupy together.

``Pss`` already contains ``Pss_Anon``, ``Pss_File``, ``Pss_Shmem``; anonymous memory is private
unless a fork shares it copy-on-write. Page cache that no process maps (a file read once and closed)
is in none of these numbers: it is the kernel's, reclaimable, not a copy held by a process.

:class:`ProcessTreeSampler` samples every process of a run (a launcher, torchrun and its workers)
in a background thread and keeps each process's peak, so a benchmark can report per-rank peaks.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from graphscale._procs import descendants

#: the ``smaps_rollup`` fields read (kB in the file, bytes here)
_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
           "Private_Hugetlb", "Swap")


@dataclass
class MemInfo:
    """One reading of one process, in bytes."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    pss_anon: int = 0
    pss_file: int = 0
    shared: int = 0
    swap: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_smaps_rollup(pid: int | str = "self") -> MemInfo | None:
    """USS / PSS / RSS of ``pid`` from ``/proc/PID/smaps_rollup``; ``None`` when the process is gone
    or not readable (another user's process without privileges)."""
    vals = dict.fromkeys(_FIELDS, 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in vals:
                    vals[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        return None
    return MemInfo(rss=vals["Rss"], pss=vals["Pss"],
                   uss=vals["Private_Clean"] + vals["Private_Dirty"] + vals["Private_Hugetlb"],
                   pss_anon=vals["Pss_Anon"], pss_file=vals["Pss_File"],
                   shared=vals["Shared_Clean"] + vals["Shared_Dirty"], swap=vals["Swap"])


def _environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class ProcPeak:
    """The peak of each quantity over the samples of one process (each maximum taken separately)."""

    pid: int
    cmdline: str = ""
    rank: int | None = None  # torchrun's RANK, read from the process environment
    samples: int = 0
    peak: MemInfo = field(default_factory=MemInfo)

    def update(self, m: MemInfo) -> None:
        self.samples += 1
        for k, v in m.__dict__.items():
            if v > getattr(self.peak, k):
                setattr(self.peak, k, v)


class ProcessTreeSampler:
    """Sample USS / PSS / RSS of ``root_pid`` and all its descendants every ``interval`` seconds, in a
    background thread, keeping each process's peaks (:class:`ProcPeak`). Processes that start later
    (torchrun's workers) are picked up at the next sample; a process's rank is read from its
    ``RANK`` environment variable.

    Use as a context manager around the run, or :meth:`start` / :meth:`stop`. A process that lives
    shorter than ``interval`` may be missed; its peak between two samples is not seen (sampling, not
    accounting: keep ``interval`` well below the phases being measured).
    """

    def __init__(self, root_pid: int, interval: float = 0.2, timeline: bool = False):
        self.root_pid, self.interval = root_pid, interval
        self.procs: dict[int, ProcPeak] = {}
        # with timeline: {pid: [(time.monotonic(), MemInfo), ...]}, for peaks inside a window of the run
        self.timeline: dict[int, list] | None = {} if timeline else None
        self.total_pss_peak = 0  # the largest sum of PSS over the tree at one sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        total = 0
        for pid in descendants(self.root_pid):
            m = read_smaps_rollup(pid)
            if m is None or m.rss == 0:  # gone, or a kernel thread
                continue
            rec = self.procs.get(pid)
            if rec is None:
                env = _environ(pid)
                rank = env.get("RANK")
                rec = self.procs[pid] = ProcPeak(pid, _cmdline(pid)[:300],
                                                 int(rank) if rank is not None and rank.isdigit() else None)
            rec.update(m)
            if self.timeline is not None:
                self.timeline.setdefault(pid, []).append((time.monotonic(), m))
            total += m.pss
        self.total_pss_peak = max(self.total_pss_peak, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> "ProcessTreeSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True, name="procmem")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def window_peak(self, pid: int, start: float, end: float) -> MemInfo | None:
        """Peaks of ``pid`` over the samples taken between ``start`` and ``end`` (``time.monotonic()``);
        ``None`` without a timeline or without a sample in the window."""
        if self.timeline is None:
            return None
        peak, seen = MemInfo(), False
        for t, m in self.timeline.get(pid, []):
            if start <= t <= end:
                seen = True
                for k, v in m.__dict__.items():
                    setattr(peak, k, max(v, getattr(peak, k)))
        return peak if seen else None

    def ranks(self) -> dict[int, ProcPeak]:
        """``{rank: peak}`` of the processes that had a ``RANK`` (torchrun workers); when a rank was
        seen in more than one process (a worker and a child it forked), the largest peak USS wins."""
        out: dict[int, ProcPeak] = {}
        for rec in self.procs.values():
            if rec.rank is None:
                continue
            if rec.rank not in out or rec.peak.uss > out[rec.rank].peak.uss:
                out[rec.rank] = rec
        return out


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(interval)
