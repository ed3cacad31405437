"""torchrun-launched DDP: process-group setup from the environment, rank helpers, a guarded barrier.

Why a timeout everywhere: when one rank dies (out of memory, a bad file) the others block in their
next collective forever by default. The process group gets a finite timeout (``dist_timeout_s``),
and :func:`barrier` turns a timeout into an error that says which rank gave up and why, so the job
exits instead of hanging a node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pspnet.errors import PeerLostError

__all__ = [
    "DistContext",
    "all_reduce_mean",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "lost_peer_error",
    "same_on_every_rank",
]

# What Gloo and NCCL say when the other end of a collective has gone away, or never came (a hung
# rank: "Timed out waiting 10000ms for recv operation", NCCL's watchdog "Watchdog caught collective
# operation timeout"). Matched case-insensitively.
_PEER_LOST_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "remote worker crashing",
    "broken pipe",
    "nccl communicator was aborted",
    "remote process exited",
    "timed out",
    "timeout",
)


@dataclass(frozen=True)
class DistContext:
    """Who this process is: ``rank`` of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

    A plain ``python`` launch (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) runs single-process. The
    backend is NCCL for CUDA and Gloo for CPU. An already initialised group is reused.
    """
    world = _env_int("WORLD_SIZE", 1)
    if is_distributed():
        return DistContext(
            dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend()
        )
    if world <= 1:
        return DistContext()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, backend)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none exists)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier(timeout_s: float, what: str = "barrier") -> None:
    """Wait for every rank; raise :class:`PeerLostError` (a RuntimeError) naming the wait when one
    does not arrive in time."""
    if not is_distributed():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
        else:
            dist.barrier()
    except RuntimeError as exc:
        raise PeerLostError(
            f"rank {dist.get_rank()}: gave up at {what} after {timeout_s:g} s: another rank died or hangs "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc


def all_reduce_mean(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """The mean over ranks of each number (identity when not distributed)."""
    if not is_distributed() or not values:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def same_on_every_rank(exc: BaseException) -> BaseException:
    """Mark ``exc`` as raised alike by every rank (a config or data check before training): the
    CLI then prints it on rank 0 only, instead of once per process. Errors of one rank (a file
    only its shard reads) stay unmarked and are printed where they happen."""
    exc.same_on_every_rank = True  # type: ignore[attr-defined]
    return exc


def lost_peer_error(exc: BaseException, rank: int) -> PeerLostError | None:
    """The one-line error for ``exc`` when it means another rank went away, else None."""
    text = str(exc)
    lower = text.lower()
    if not (isinstance(exc, dist.DistError) or any(marker in lower for marker in _PEER_LOST_MARKERS)):
        return None
    cause = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if cause.startswith("[") and "] " in cause:  # drop gloo's "[/path/pair.cc:553] " source location
        cause = cause.split("] ", 1)[1]
    return PeerLostError(
        f"rank {rank} lost contact with the other ranks ({cause[:200]}); another rank died, hangs, or "
        "the network failed: see that rank's output, then restart every rank with --resume"
    )
