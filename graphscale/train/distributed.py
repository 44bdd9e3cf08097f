"""Multi-process training on PyTorch's own engine: ``torchrun`` environment, process group, helpers.

A distributed run is ``torchrun --nproc-per-node N -m graphscale train CONFIG`` (or ``graphscale
train CONFIG --nproc N``, which starts exactly that through :func:`torchrun_command`). Each process
reads its place from the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``; :class:`DistEnv`), joins a process group (``nccl`` on GPUs, one
GPU per process, ``cuda:{LOCAL_RANK}``; ``gloo`` on CPU) and trains one replica of the model under
:class:`torch.nn.parallel.DistributedDataParallel` (Li et al., VLDB 2020, "PyTorch Distributed:
Experiences on Accelerating Data Parallel Training"). Without those variables, or with
``WORLD_SIZE=1``, nothing here touches ``torch.distributed`` and training is the plain
single-process path.

Work split (:func:`deal`): an epoch's ``K`` steps (partitions / clusters) are dealt round-robin,
step ``i`` to rank ``i mod W``. With gradient accumulation ``A`` (``train.grad_accum``) one optimiser
step covers ``G = W * A`` consecutive steps of the epoch. When ``K`` is not a multiple of ``G`` the
epoch is *padded by repeating its first steps* (cyclically) up to ``ceil(K / G) * G``: every rank
then takes the same number of steps (a collective never waits on a rank that ran out), and every
node of the epoch's partition is still trained on each epoch. Dropping the remainder instead would
skip the same node ranges whenever the partition is fixed (Cluster-GCN's clusters).

Equivalence: a ``W``-process run with ``grad_accum=A`` takes the same optimiser steps as a
1-process run with ``grad_accum=W*A``: both average the per-step mean losses' gradients over the
same ``G`` steps (DDP averages over ranks, accumulation divides by ``A``), up to float rounding.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import socket
import sys
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

from graphscale.errors import ConfigError, TrainingError

T = TypeVar("T")

# Environment variables torchrun sets for every worker.
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# On CPU more processes than cores only adds contention; above this cap it is almost surely a typo.
MAX_CPU_PROCS = 64


@dataclass(frozen=True)
class DistEnv:
    """One process's place in the job, as torchrun describes it.

    Attributes:
        rank: global rank ``0 <= rank < world_size``.
        world_size: number of processes ``W``.
        local_rank: rank on this node; picks the GPU ``cuda:{local_rank}``.
        master_addr, master_port: the rendezvous (rank 0's TCP store).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = ""
    master_port: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ=None) -> "DistEnv":
        """Read torchrun's variables; a process without ``WORLD_SIZE`` is a 1-process job."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()

        def num(name, default=None):
            raw = env.get(name, default)
            if raw is None:
                raise ConfigError(f"WORLD_SIZE={env['WORLD_SIZE']} is set but {name} is not; launch with "
                                  f"torchrun (or graphscale train --nproc N), which sets {', '.join(_ENV)}")
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None

        world, rank = num("WORLD_SIZE"), num("RANK", "0")
        local = num("LOCAL_RANK", str(rank))
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: expected WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
        if world == 1:
            return cls()
        addr = env.get("MASTER_ADDR", "")
        port = num("MASTER_PORT")
        if not addr:
            raise ConfigError(f"WORLD_SIZE={world} but MASTER_ADDR is not set (the rendezvous host)")
        return cls(rank, world, local, addr, port)


@dataclass
class DistContext:
    """What the trainer needs from the process group: who it is, where it computes, which backend."""

    env: DistEnv
    device: torch.device
    backend: str = ""
    owns_group: bool = False  # this context initialised the process group (and destroys it)
    wrapped: list = field(default_factory=list)  # weak references to the DDP wrappers of this run

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0

    def destroy(self) -> None:
        """End of the run: release the DDP wrappers' hold on the group, then destroy it if ours."""
        self.release_models()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def release_models(self) -> None:
        """Drop every reference a DDP wrapper of this run holds to the process group.

        Why: a DDP's C++ reducer owns a reference to the group. If it is the last one, the group's
        destructor runs inside the reducer's Python deallocation, which holds the GIL while it joins
        gloo's worker threads; a worker still releasing a finished collective's tensors waits for
        the GIL, and the process never exits (seen as 2-process runs that wrote their results and
        hung; pytorch/pytorch#56297 made the group's own Python object let go of the GIL when it is
        destroyed, not the reducer). A wrapper that outlives the interpreter's shutdown destroys the
        group during finalization instead ("terminate called without an active exception"). After
        this the group is destroyed by ``destroy_process_group`` (or the caller's, for a group it
        owns), wherever the wrappers are. The wrappers cannot train after this; the modules inside
        them are untouched."""
        for ref in self.wrapped:
            ddp = ref()
            if ddp is not None:  # the logger holds the reducer too
                for name in ("logger", "reducer", "process_group"):
                    if name in ddp.__dict__:
                        delattr(ddp, name)
        self.wrapped.clear()


def is_main() -> bool:
    """True on rank 0, or when no process group exists (DESIGN rule 11: it alone logs and writes)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_device(env: DistEnv, device: str) -> torch.device:
    """The device of this rank: ``cuda:{LOCAL_RANK}`` on GPUs (one GPU per process), else CPU.

    ``device`` is ``train.device``: ``auto`` | ``cpu`` | ``cuda``. A fixed ``cuda:N`` would put
    every rank on one GPU, which nccl refuses, so it is an error in a multi-process job.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device != "cuda":
        raise ConfigError(f"train.device={device!r} in a {env.world_size}-process job: use auto, cuda or cpu "
                          f"(each rank takes cuda:LOCAL_RANK)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if env.local_rank >= count:
        raise ConfigError(f"LOCAL_RANK={env.local_rank} but only {count} CUDA device(s) are visible: start at most "
                          f"{count} processes per node (--nproc), or train on CPU with train.device=cpu")
    return torch.device("cuda", env.local_rank)


def setup(device: str, timeout_s: float, env: DistEnv | None = None, force: bool = False) -> DistContext | None:
    """Join the process group described by the environment; ``None`` for a 1-process job, unless
    ``force`` (``train.distributed``): then a single process joins a group of one on 127.0.0.1 too, so
    the distributed path (nccl, DDP, comm hooks) runs, and is checked, on one device.

    nccl when this rank computes on a GPU (after ``torch.cuda.set_device``), gloo on CPU. A
    process group that already exists (a caller initialised it) is used as is and left alone.
    A rendezvous that does not complete within ``timeout_s`` (a rank that never starts, a wrong
    ``MASTER_ADDR``) is a :class:`~graphscale.errors.TrainingError` naming the address.
    """
    env = DistEnv.from_env() if env is None else env
    if not env.distributed and not force:
        return None
    init = "env://"
    if not env.distributed and not env.master_addr:  # a group of one, rendezvous on this host
        env = DistEnv(0, 1, 0, "127.0.0.1", free_port())
        init = f"tcp://{env.master_addr}:{env.master_port}"  # not env://: leave os.environ alone
    dev = world_device(env, device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise ConfigError(f"a process group exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
                              f"but the environment says rank {env.rank} of {env.world_size}")
        return DistContext(env, dev, dist.get_backend(), owns_group=False)
    try:
        dist.init_process_group(backend, init_method=init, rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    except (RuntimeError, TimeoutError, ValueError) as exc:  # DistStoreError is a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"rank {env.rank}: the rendezvous at {env.master_addr}:{env.master_port} did not complete within "
            f"{timeout_s:g} s (train.dist_timeout) for {env.world_size} processes: a rank did not start, or "
            f"MASTER_ADDR/MASTER_PORT differ between ranks ({type(exc).__name__}: {first})") from None
    return DistContext(env, dev, backend, owns_group=True)


def barrier() -> None:
    """Wait for every rank (no-op in a 1-process job)."""
    if _active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Run the body on the main rank first, then on the others (DESIGN rule 11).

    The main rank downloads / writes the data set and computes the cached partition; the other ranks
    enter after it is done and read the cache instead of racing to write it.
    """
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


#: ``train.data_prep`` values: who writes / downloads data sets and partition caches first.
DATA_PREP = ("node", "job")


def is_prep_rank(scope: str = "node", env: DistEnv | None = None) -> bool:
    """True on the process that prepares data for ``scope``: ``node`` = local rank 0 of every node
    (each node writes its own copy, local disks), ``job`` = global rank 0 only (one shared filesystem)."""
    if scope not in DATA_PREP:
        raise ConfigError(f"train.data_prep={scope!r}: expected one of {', '.join(DATA_PREP)}")
    env = DistEnv.from_env() if env is None else env
    if scope == "job":
        return is_main()
    return env.local_rank == 0 if env.distributed else is_main()


@contextlib.contextmanager
def prep_first(scope: str = "node", root: str | None = None):
    """Run the body on the preparing rank(s) first, then on the others (DESIGN rule 11, per node or per job).

    ``scope`` is ``train.data_prep``: ``node`` -- the local rank 0 of each node writes / downloads the data
    set and computes the cached partition into ``data.root`` on its own disk while the node's other ranks
    wait; ``job`` -- global rank 0 alone does it, for a ``data.root`` on a filesystem every node shares.
    The barrier is global, so all preparers work at the same time and every rank enters the body after
    all of them are done. With ``job`` and a ``root``, rank 0 then leaves a token file in ``root`` that
    every other rank must see: a root that is not shared stops every rank with a
    :class:`~graphscale.errors.ConfigError` (instead of each node racing to write its own copy).
    """
    first = is_prep_rank(scope)
    check = scope == "job" and root is not None and _active()
    if not first:
        barrier()
        if check:  # before this rank's body: one that does not see rank 0's files must not write its own
            check_shared_root(root)
    yield
    if first:
        barrier()
        if check:
            check_shared_root(root)


def check_shared_root(root: str) -> None:
    """Collective: every rank must see the file rank 0 writes into ``root`` (``train.data_prep=job``).

    Rank 0 writes ``root/.graphscale-shared-<random>``; the name is broadcast; a rank that cannot see
    it raises, on every rank, naming the rank, its host and the folder. Skipped (for all ranks) when
    rank 0 cannot write into ``root`` (a read-only copy of the data, which nobody writes anyway)."""
    token = None
    if dist.get_rank() == 0:
        name = f".graphscale-shared-{os.urandom(8).hex()}"
        try:
            with open(os.path.join(root, name), "w") as fh:
                fh.write(socket.gethostname())
            token = name
        except OSError:
            token = None
    token = broadcast_object(token)
    if token is None:
        return
    path = os.path.join(root, token)
    seen = os.path.exists(path)
    try:
        agree(None if seen else f"train.data_prep=job but {root!r} on host {socket.gethostname()} does not hold "
                                f"the file rank 0 just wrote there: data.root is not on a filesystem every node "
                                f"shares; use train.data_prep=node (each node prepares its own copy)")
    finally:
        barrier()
        if dist.get_rank() == 0:
            with contextlib.suppress(OSError):
                os.remove(path)


def all_reduce_sum(values: list[float], device=None) -> list[float]:
    """Sum a few Python numbers over ranks (float64; identity in a 1-process job)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``tensor`` (``sum`` | ``mean`` | ``max``); identity in a 1-process job."""
    if _active():
        if op == "mean":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(dist.get_world_size())
        else:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (so decisions taken from float results agree everywhere)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj, dst: int = 0) -> list | None:
    """Every rank's ``obj`` as a list on rank ``dst`` (``None`` elsewhere); ``[obj]`` in a 1-process job."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_object(obj) -> list:
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(error: str | None, exc_type=ConfigError) -> None:
    """Collective check: if any rank found a problem, every rank raises it (named by rank).

    Used for checks that could differ between ranks (a file one rank sees, a device count), so that
    all ranks stop with the same message instead of the others hanging at the next collective.
    """
    errors = all_gather_object(error)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        raise exc_type("; ".join(e if len(errors) == 1 else f"rank {r}: {e}" for r, e in bad))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_hash(resolved: dict) -> str:
    """sha256 of the resolved config (canonical JSON)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(resolved: dict) -> None:
    """All ranks must train the same config: all-gather its hash, and on a mismatch raise a
    :class:`~graphscale.errors.ConfigError` naming the rank(s) and the keys that differ from rank 0."""
    if not _active():
        return
    hashes = all_gather_object(config_hash(resolved))
    if len(set(hashes)) == 1:
        return
    configs = all_gather_object(resolved)
    ref = _flat(configs[0])
    parts = []
    for r, (h, c) in enumerate(zip(hashes, configs)):
        if h != hashes[0]:
            other = _flat(c)
            diff = [f"{k}: {ref.get(k)!r} (rank 0) vs {other.get(k)!r}" for k in sorted(set(ref) | set(other))
                    if ref.get(k) != other.get(k)]
            parts.append(f"rank {r} ({'; '.join(diff)})")
    raise ConfigError("the ranks were given different configs: " + ", ".join(parts) +
                      "; every rank must get the same CONFIG and key=value overrides")


# ------------------------------------------------------------------------------------------ work split
def padded_steps(num_steps: int, world_size: int, grad_accum: int = 1) -> int:
    """Steps of one epoch after padding to a multiple of ``G = world_size * grad_accum``."""
    group = world_size * grad_accum
    return -(-num_steps // group) * group


def local_steps(num_steps: int, world_size: int, grad_accum: int = 1) -> int:
    """Steps each rank takes per epoch (the same on every rank)."""
    return padded_steps(num_steps, world_size, grad_accum) // world_size


def rank_step_indices(num_steps: int, rank: int, world_size: int, grad_accum: int = 1) -> list[int]:
    """The indices of the epoch's steps that :func:`deal` gives ``rank``, in order (padding repeats
    included), for a sampler that can produce exactly those steps (and so samples nothing it drops)."""
    return [i % num_steps for i in range(rank, padded_steps(num_steps, world_size, grad_accum), world_size)]


def deal(steps: Iterable[T], num_steps: int, rank: int, world_size: int, grad_accum: int = 1) -> Iterator[T]:
    """This rank's share of an epoch: padded step ``i`` (item ``i mod K`` of ``steps``) goes to rank
    ``i mod W``. ``steps`` is consumed once, lazily; only the few items that padding repeats and
    this rank takes are kept. With ``W = A = 1`` it yields ``steps`` unchanged.

    Args:
        steps: the epoch's ``K = num_steps`` items (subgraphs), identical on every rank.
        num_steps: ``K >= 1``.
        rank, world_size: ``0 <= rank < W``.
        grad_accum: ``A``; the epoch is padded to a multiple of ``W * A`` (module docstring).
    """
    total = padded_steps(num_steps, world_size, grad_accum)
    repeat = {i % num_steps for i in range(num_steps, total) if i % world_size == rank}
    kept = {}
    seen = 0
    for i, item in enumerate(steps):
        seen += 1
        if i % world_size == rank:
            yield item
        if i in repeat:
            kept[i] = item
    if seen != num_steps:
        raise TrainingError(f"the sampler yielded {seen} steps but announced {num_steps} (len(sampler))")
    for i in range(num_steps, total):
        if i % world_size == rank:
            yield kept[i % num_steps]


# ------------------------------------------------------------------------------------------ launching
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_nproc(nproc: int, device: str) -> None:
    """``--nproc`` against what this machine has: GPUs for a GPU run, cores (capped) on CPU."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if gpu:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nproc > count:
            raise ConfigError(f"--nproc {nproc} but only {count} CUDA device(s) are visible (one process per GPU); "
                              f"use --nproc {max(count, 1)} or train.device=cpu")
        return
    cap = min(os.cpu_count() or 1, MAX_CPU_PROCS)
    if nproc > cap:
        raise ConfigError(f"--nproc {nproc} on CPU but this machine has {os.cpu_count()} CPU core(s) "
                          f"(at most {cap} CPU processes): use --nproc <= {cap}")


def torchrun_command(nproc: int, entry: list[str], args: list[str], master_port: int | None = None,
                     monitor_interval: float = 0.5) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` processes on this host running ``entry``
    (``["-m", "graphscale"]`` or a script) with ``args``. Rendezvous on 127.0.0.1 and a free port.
    ``monitor_interval`` (s): how often torchrun checks its workers; a rank that dies stops the others
    within about this long."""
    port = free_port() if master_port is None else master_port
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(port), "--max-restarts", "0",
            "--monitor-interval", str(monitor_interval), *entry, *args]


@dataclass(frozen=True)
class Nodes:
    """Where this torchrun agent sits in a multi-node job (``graphscale train --nnodes K ...``).

    Attributes:
        nnodes: machines in the job ``K`` (each runs one agent with ``--nproc`` workers).
        node_rank: this machine's index ``0 <= R < K`` (static rendezvous: node 0 hosts the store at
            ``endpoint`` and its workers take global ranks ``0 .. nproc-1``).
        endpoint: ``HOST:PORT`` every node reaches: node 0's address and a port free there.
        backend: ``static`` (node ranks fixed by ``node_rank``) or ``c10d`` (ranks handed out at the
            rendezvous, in joining order; needs ``rdzv_id``, takes no ``node_rank``).
        rdzv_id: the job's name, the same on every node (``c10d``).
    """

    nnodes: int = 1
    node_rank: int | None = None
    endpoint: str | None = None
    backend: str = "static"
    rdzv_id: str | None = None

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    def host_port(self) -> tuple[str, int]:
        host, _, port = (self.endpoint or "").rpartition(":")
        return host.strip("[]"), int(port)

    def check(self) -> None:
        """One-line :class:`~graphscale.errors.ConfigError` for every bad combination, before launching."""
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes {self.nnodes}: expected a number of machines >= 1")
        if self.backend not in ("static", "c10d"):
            raise ConfigError(f"--rdzv-backend {self.backend!r}: expected static or c10d")
        if not self.multi:
            given = [f for f, v in (("--node-rank", self.node_rank), ("--rdzv-endpoint", self.endpoint),
                                    ("--rdzv-id", self.rdzv_id)) if v is not None]
            if given or self.backend != "static":
                raise ConfigError(f"{', '.join(given) or '--rdzv-backend'} given with --nnodes 1: these describe a "
                                  f"multi-machine job; pass --nnodes K (K >= 2) or leave them out")
            return
        if self.endpoint is None:
            raise ConfigError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address and a free "
                              f"port there, the same on every node)")
        host, sep, port = self.endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"--rdzv-endpoint {self.endpoint!r}: expected HOST:PORT with a port in 1..65535, "
                              f"e.g. node0.cluster:29500")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise ConfigError(f"--rdzv-endpoint {self.endpoint!r}: the host {host!r} does not resolve on this "
                              f"machine") from None
        if self.backend == "static":
            if self.node_rank is None:
                raise ConfigError(f"--nnodes {self.nnodes} needs --node-rank R (0 <= R < {self.nnodes}), different "
                                  f"on every machine; node 0 hosts the rendezvous")
            if not 0 <= self.node_rank < self.nnodes:
                raise ConfigError(f"--node-rank {self.node_rank}: expected 0 <= R < --nnodes {self.nnodes}")
        else:
            if self.node_rank is not None:
                raise ConfigError(f"--node-rank {self.node_rank} with --rdzv-backend c10d: c10d hands out node ranks "
                                  f"at the rendezvous; leave --node-rank out or use --rdzv-backend static")
            if not self.rdzv_id:
                raise ConfigError("--rdzv-backend c10d needs --rdzv-id NAME, the same on every node (the job's "
                                  "name at the rendezvous)")

    def torchrun_args(self, timeout_s: float) -> list[str]:
        """torchrun's options for this node (``timeout_s``: how long the rendezvous waits for the others)."""
        if not self.multi:
            return []
        args = ["--nnodes", str(self.nnodes), "--rdzv-backend", self.backend, "--rdzv-endpoint", str(self.endpoint)]
        if self.backend == "static":
            args += ["--node-rank", str(self.node_rank), "--rdzv-conf", f"timeout={max(1, int(timeout_s))}"]
        else:
            args += ["--rdzv-id", str(self.rdzv_id), "--rdzv-conf", f"join_timeout={max(1, int(timeout_s))}"]
        return args


def multinode_command(nproc: int, nodes: Nodes, entry: list[str], args: list[str], timeout_s: float = 600.0,
                      monitor_interval: float = 0.5) -> list[str]:
    """``python -m torch.distributed.run`` for this node of a ``nodes.nnodes``-machine job: ``nproc``
    workers here, rendezvous at ``nodes.endpoint`` (waiting up to ``timeout_s`` for the other nodes).
    With one node it is :func:`torchrun_command` (127.0.0.1 and a free port)."""
    if not nodes.multi:
        return torchrun_command(nproc, entry, args, monitor_interval=monitor_interval)
    return [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(timeout_s),
            "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", str(monitor_interval),
            *entry, *args]


# ------------------------------------------------------------------------------------------ DDP
def wrap_model(model: torch.nn.Module, ctx: DistContext, *, static_graph: bool = True, find_unused: bool = False,
               comm_hook: str = "none", powersgd_rank: int = 1, powersgd_start_iter: int = 10, seed: int = 0):
    """``DistributedDataParallel(model)`` on this rank's device, with the communication hook.

    ``static_graph=True`` (the default) tells DDP that every step uses the same parameters in the
    same autograd graph; DDP then finds unused parameters itself after the first step and supports
    backward passes that re-enter autograd (activation checkpointing, reversible blocks recomputing
    their inputs, DEQ implicit gradients). ``find_unused=True`` is for graphs that change between
    steps (and excludes ``static_graph``). Returns ``(ddp_model, hook)``: ``hook`` is the communication
    hook's state (``.stats`` its byte counts, ``state_dict()`` for checkpoints;
    :func:`graphscale.train.comm_hooks.register_comm_hook`), ``None`` for plain all-reduce.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from graphscale.train.comm_hooks import register_comm_hook
    if static_graph and find_unused:
        raise ConfigError("train.ddp_static_graph=true and train.ddp_find_unused=true exclude each other: "
                          "a static graph finds unused parameters itself; set one of them to false")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters: nothing for DistributedDataParallel to sync")
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids, output_device=ids[0] if ids else None, static_graph=static_graph,
              find_unused_parameters=find_unused)
    hook = register_comm_hook(ddp, comm_hook, powersgd_rank=powersgd_rank,
                              powersgd_start_iter=powersgd_start_iter, seed=seed)
    ctx.wrapped.append(weakref.ref(ddp))  # released by ctx.destroy(), before the group goes
    return ddp, hook


def grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients one plain all-reduce step hands over (trainable parameters)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
