"""Multi-process training with PyTorch's DistributedDataParallel, as torchvision's reference scripts do it.

``wbc train --nproc N`` starts N processes on this machine (:func:`spawn`); ``torchrun --nproc-per-node N
-m wbc train ...`` (or several machines with ``--nnodes``) sets the same environment itself. Each process
calls :func:`init_distributed_mode`: gloo on CPUs, NCCL on GPUs (one GPU per process). The training loop
shards the data with a ``DistributedSampler``, averages gradients through DDP, and lets rank 0 alone write
checkpoints and metrics.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from wbc.errors import WbcError
from wbc.runtime import die_with_parent

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

#: How long the processes wait for one another to join the job (their rendezvous) before stopping with one line.
#: Only the start: a collective after it (rank 0 scanning the dataset while the others wait) keeps torch's default.
RENDEZVOUS_TIMEOUT = datetime.timedelta(seconds=120)

# The public, differentiable all_reduce CpuSyncBatchNorm needs; its suggested successor is a private module.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when training in one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class StoppedWithMain(WbcError):
    """Rank 0's own error, raised on the other ranks too (:func:`raise_from_main`): the command prints it from rank
    0 alone, and the others stop quietly."""


def init_distributed_mode(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*);
    one process when they are absent. Idempotent."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=_rendezvous(info),
                                rank=info.rank, world_size=info.world_size)
    return info


def _rendezvous(info: DistInfo) -> dist.Store:
    """The job's store, joined within :data:`RENDEZVOUS_TIMEOUT` (torch's own wait is 30 minutes, in silence, and its
    failures are tracebacks), or a one-line WbcError naming the address. The store then gets torch's default timeout
    back, as ``init_process_group`` would have set it."""
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:  # a launcher that set RANK and WORLD_SIZE only: nothing to wait for (it waited 120 s for host "?")
        raise WbcError(f"process {info.rank} of {info.world_size}: {' and '.join(missing)} not set; a launcher "
                       "(torchrun) sets them, or train on one machine with wbc train --nproc N")
    addr, port = os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]
    seconds = round(RENDEZVOUS_TIMEOUT.total_seconds())
    where = f"process {info.rank} of {info.world_size} cannot join the job at MASTER_ADDR:MASTER_PORT {addr}:{port}"
    if info.rank != 0 and not _reachable(addr, port, RENDEZVOUS_TIMEOUT):  # torch's retries log C++ stack traces
        raise WbcError(f"{where}: nothing answered there within {seconds} s (is that address this job's rank 0?)")
    try:
        store, _, _ = next(dist.rendezvous("env://", info.rank, info.world_size, timeout=RENDEZVOUS_TIMEOUT))
    except (dist.DistError, ValueError) as exc:  # a taken port, a peer that never came, a variable not set
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WbcError(f"{where} (waited at most {seconds} s): {first}") from None
    store.set_timeout(default_pg_timeout)
    return dist.PrefixStore("default_pg", store)  # the key prefix init_process_group gives a store it makes


def _reachable(addr: str, port: str, timeout: datetime.timedelta) -> bool:
    """Whether something accepts connections at ``addr:port`` within ``timeout`` (tried every half second: rank 0
    may still be starting)."""
    import time

    if not port.isdigit():
        return True  # torch's own message names the bad value
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        try:
            with socket.create_connection((addr, int(port)), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                return True
        except socket.gaierror:
            return True  # a host name that does not resolve: torch's own message names it, at once
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def wait_for_main(seconds: float = 10.0) -> None:
    """On a rank stopped by rank 0's error under torchrun: give rank 0 the time to print it. torchrun stops every
    process as soon as one ends, so a rank leaving first could cut rank 0 off before its line; rank 0's end ends this
    wait (torchrun's SIGTERM), and ``seconds`` bounds it should rank 0 hang."""
    import time

    time.sleep(seconds)


def raise_from_main(error: WbcError | None) -> None:
    """After a part only rank 0 runs (scanning the dataset): its WbcError (or None) on every rank, so that the others
    stop with it (:class:`StoppedWithMain`) instead of dying in the next collective with gloo's "Connection closed by
    peer" traceback, under torchrun too. Also a barrier: no rank goes on before rank 0's part is done."""
    if current().enabled:
        box = [str(error) if error is not None else None]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise StoppedWithMain(box[0])
    if error is not None:
        raise error


def current() -> DistInfo:
    """The running job's ranks (after :func:`init_distributed_mode`), or one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over all processes (the values themselves in one process)."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t``'s element-wise sum over all processes, on ``t``'s device and without gradient (``t`` itself, detached,
    in one process): a denominator, such as the global batch's weight sum of the class-weighted loss."""
    t = t.detach().clone()
    if current().enabled:
        dist.all_reduce(t)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every process (``[obj]`` in one process)."""
    if not current().enabled:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(values: Sequence[float]) -> list[float]:
    """Rank 0's values on every process, so that decisions taken from them (early stopping) agree."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.broadcast(t, src=0)
    return t.tolist()


class GlobalBatchStats:
    """Mixin for BatchNorm2d classes: in training, normalise by the statistics of the global batch, over all
    processes (on CPUs too: ``torch.nn.SyncBatchNorm`` needs GPUs, and its converter drops timm's fused
    activation). Without it each process normalises by its share of the batch alone: at 64 px the last layers
    see 2x2 maps, so 16 cells give 64 values per channel. With it, one step of two processes on 16 + 16 cells
    equals one process's step on the 32 (tested)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: Any = self
        if not (bn.training and current().enabled):
            return super().forward(x)  # type: ignore[misc]
        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients reach every rank

        c = x.shape[1]
        # two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses the variance to rounding
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / c])]))
        n = stats[-1]
        mean = stats[:c] / n
        var = all_reduce(((x - mean[None, :, None, None]) ** 2).sum((0, 2, 3))) / n
        if bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked += 1
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                bn.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + bn.eps)
        if bn.affine:
            y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        if hasattr(bn, "act"):  # timm's BatchNormAct2d: BatchNorm, then dropout and activation
            y = bn.act(bn.drop(y))
        return y


_SYNCED: dict[type, type] = {}


def sync_batchnorm(module: ModuleT) -> ModuleT:
    """``module`` with every BatchNorm2d (timm's BatchNormAct2d too) normalising by the global batch in
    training. The layers keep their class's parameters, buffers and eval behaviour (only their class is
    swapped for a subclass), so checkpoints and export are unchanged."""
    for m in module.modules():
        cls = type(m)
        if isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, GlobalBatchStats):
            if cls not in _SYNCED:
                _SYNCED[cls] = type(f"Global{cls.__name__}", (GlobalBatchStats, cls), {})
            m.__class__ = _SYNCED[cls]
    return module


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(local_rank: int, nproc: int, fn: Callable[..., Any], args: tuple[Any, ...], errors: str,
            parent: int) -> None:
    # the rank ends with the process that started it (``wbc train --nproc N``), however that one stops: before wbc
    # 0.37.0 a SIGTERM to it (``kill``, ``timeout``, a scheduler) left the ranks training on, orphaned, writing the run
    # folder, where a --resume of the same run then started a second set of ranks
    if (call := die_with_parent()) is not None:
        call()
        if os.getppid() != parent:  # it died before the call above: nobody is left to tell this rank so
            os.kill(os.getpid(), signal.SIGTERM)
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc))
    try:
        fn(*args)
    except WbcError as exc:  # written before cleanup(): the other ranks fail only once this one leaves the group
        (Path(errors) / f"rank{local_rank}").write_text(str(exc))
        raise
    finally:
        cleanup()


def _died(exc: torch.multiprocessing.ProcessExitedException) -> WbcError:
    """A rank that ended without a word (the OOM killer's SIGKILL, a crash in native code), in one line with the way
    on: the epochs in last.pt are whole (written atomically by rank 0), and ``--resume`` goes on from them."""
    how = (f"was killed by {exc.signal_name}{' (out of memory?)' if exc.exit_code == -signal.SIGKILL else ''}"
           if exc.signal_name else f"exited with code {exc.exit_code}")
    return WbcError(f"training process {exc.error_index} (pid {exc.error_pid}) {how}; the run goes on from its last "
                    "finished epoch (last.pt) with the same command and --resume")


def spawn(fn: Callable[..., Any], nproc: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine, as ranks 0..nproc-1 of one job.

    They meet at 127.0.0.1 on a free port, whatever MASTER_ADDR / MASTER_PORT this process has: those are torchrun's
    (a job script's, another job's), and before wbc 0.34.0 a foreign address made the ranks wait 30 minutes in
    silence, a taken port ended in a traceback. Several machines are torchrun's job (``--nnodes``). On Linux the
    processes end with this one (SIGTERM when it dies, :func:`wbc.runtime.die_with_parent`), however it is stopped."""
    keys = ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
    saved = {k: os.environ.get(k) for k in keys}  # the children inherit these; this process gets its own back
    # GLOO_SOCKET_IFNAME: containers often resolve the host name to an address gloo cannot reach
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), GLOO_SOCKET_IFNAME="lo")
    quiet = logging.getLogger("torch.multiprocessing.spawn")  # "Terminating process N via signal SIGTERM"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as errors:
            try:
                torch.multiprocessing.spawn(_worker, args=(nproc, fn, args, errors, os.getpid()), nprocs=nproc,
                                            join=True)
            except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as exc:
                if found := sorted(Path(errors).iterdir()):  # a rank's own message, not a peer's gloo error
                    raise WbcError(found[0].read_text()) from None
                if isinstance(exc, torch.multiprocessing.ProcessExitedException):
                    raise _died(exc) from None
                raise
    finally:
        quiet.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
