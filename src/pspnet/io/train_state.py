"""Training checkpoints that survive a kill at any moment and resume bit-exactly.

Layout of an output folder::

    OUT/checkpoints/iter_00001000/model.safetensors   weights (+ model metadata, loadable by predict)
                                 /state.pt            optimizer, scaler, counters, RNG states
                                 /config.yaml         the resolved training config
    OUT/last                                          text: "checkpoints/iter_00001000"
    OUT/best.safetensors                              best validation mIoU so far
    OUT/.lock                                         pid and host of the run using OUT (while it runs)

A checkpoint is written into a hidden temporary folder and renamed into place; ``OUT/last`` is
rewritten (atomically) only after that rename. A kill during the write therefore leaves the
previous checkpoint and ``last`` untouched; the stale temporary folder is removed next time. A
failed write (disk full) removes the temporary folder at once and raises a one-line
:class:`~pspnet.errors.StorageError` that names the checkpoint still intact.

``state.pt`` holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no code runs while reading it).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from pspnet.errors import InputError, StorageError
from pspnet.io.checkpoint import (
    atomic_write,
    read_torch_file,
    save_model,
    save_torch_file,
    storage_error,
    storage_reason,
)

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_DIR",
    "LAST_NAME",
    "LOCK_ABANDONED_S",
    "LOCK_NAME",
    "LOCK_REFRESH_S",
    "OutputLock",
    "capture_rng",
    "checkpoint_name",
    "find_last_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lock_output",
    "restore_rng",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last"
BEST_NAME = "best.safetensors"
MODEL_FILE = "model.safetensors"
LOCK_NAME = ".lock"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
_TMP_PREFIX = ".tmp-"


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:08d}"


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as plain tensors and numbers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": float(gauss) if gauss is not None else None,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_state"].tolist()),
            state["python_gauss"],
        )
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_gauss"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("iter_"))


def _previous(out: Path) -> str:
    """What a failed save leaves to resume from, for the error message."""
    pointer = out / LAST_NAME
    if not pointer.is_file():
        return "no earlier checkpoint exists"
    try:
        target = pointer.read_text(encoding="utf-8").strip()
    except OSError:
        return f"{pointer} is unchanged"
    return f"the previous checkpoint {out / target} is intact ({pointer} still names it)"


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    state: Mapping[str, Any],
    config_yaml: str,
    *,
    iteration: int,
    keep_last: int = 3,
) -> Path:
    """Write ``OUT/checkpoints/iter_N`` atomically, point ``OUT/last`` at it, prune old ones.

    Returns the checkpoint folder.

    Raises:
        StorageError: a write failed (disk full, quota, I/O error). Nothing of the new checkpoint
            is left behind; the message says which checkpoint is intact to ``--resume`` from.
    """
    out = Path(out_dir)
    root = out / CHECKPOINT_DIR
    name = checkpoint_name(iteration)
    final = root / name
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out.glob(".*.tmp"):  # atomic_write temporaries of OUT/last, best, model: a kill's
            if stale.name.startswith(tuple(f".{n}." for n in (LAST_NAME, BEST_NAME, MODEL_FILE))):
                stale.unlink(missing_ok=True)
        tmp.mkdir()
        save_model(model, tmp / MODEL_FILE, extra={"iteration": str(iteration)})
        save_torch_file(dict(state), tmp / STATE_FILE)
        atomic_write(tmp / CONFIG_FILE, lambda path: Path(path).write_text(config_yaml, encoding="utf-8"))
        _fsync_dir(tmp)
        if final.exists():  # the same iteration saved again (e.g. a resume at a checkpoint step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = storage_error(final, exc) if isinstance(exc, Exception) else None
        if error is None:
            raise
        reason = storage_reason(error.errno)
        raise StorageError(
            f"checkpoint {final} not saved: {reason}; {_previous(out)}: free some space, then rerun "
            "with --resume",
            error.errno,
        ) from exc
    try:
        atomic_write(out / LAST_NAME, lambda path: Path(path).write_text(f"{CHECKPOINT_DIR}/{name}\n"))
    except StorageError as exc:
        reason = storage_reason(exc.errno)
        raise StorageError(
            f"checkpoint {final} was saved but {out / LAST_NAME} could not be updated: {reason}; "
            f"{_previous(out)}: free some space, then rerun with --resume",
            exc.errno,
        ) from exc
    for old in list_checkpoints(out)[: -max(keep_last, 1)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_last_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``OUT/last`` names, or None when there is none yet."""
    out = Path(out_dir)
    pointer = out / LAST_NAME
    if not pointer.is_file():
        return None
    target = out / pointer.read_text(encoding="utf-8").strip()
    if not (target / STATE_FILE).is_file() or not (target / MODEL_FILE).is_file():
        raise InputError(
            f"{pointer} names {target}, which is missing or incomplete; delete {pointer} to start over "
            "or point it at a complete checkpoint folder"
        )
    return target


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(model tensors, state)`` of a checkpoint folder (state read with ``weights_only=True``)."""
    folder = Path(folder)
    tensors = load_file(str(folder / MODEL_FILE))
    state = read_torch_file(folder / STATE_FILE)
    if not isinstance(state, dict):
        raise InputError(f"{folder / STATE_FILE}: not a pspnet training state")
    return tensors, state


# ----------------------------------------------------------------------------- the output lock


LOCK_REFRESH_S = 30.0
"""How often a running training touches ``OUT/.lock`` (its modification time is the heartbeat)."""
LOCK_ABANDONED_S = 600.0
"""A lock not refreshed for this long belongs to a run that is gone, whatever host it names: a
preempted job requeued on another node (or in a restarted container, where the same host name and
pid may come back) must be able to ``--resume`` without anyone deleting the lock by hand."""


@dataclass
class OutputLock:
    """``OUT/.lock`` held by this process; :meth:`release` removes it (only if it is still ours).

    While held, a daemon thread refreshes the file's modification time every
    :data:`LOCK_REFRESH_S`, so other machines can tell a live run from an abandoned lock.

    Attributes:
        path: the lock file. content: what this process wrote into it (its identity).
        made_dir: the output folder when taking the lock created it (removed again if still empty).
    """

    path: Path
    content: str
    made_dir: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        threading.Thread(target=self._refresh, name="pspnet-lock-heartbeat", daemon=True).start()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            with contextlib.suppress(OSError):  # a shared disk that hiccups must not stop training
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        try:
            if self.path.read_text(encoding="utf-8") == self.content:
                self.path.unlink()
        except OSError:
            pass  # gone already (deleted by hand): nothing to release
        if self.made_dir is not None:
            with contextlib.suppress(OSError):  # only when empty: a run refused before writing anything
                self.made_dir.rmdir()


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None when it names no process. A lock file is created
    empty and written just after, so an empty one is read again for a moment.

    Raises:
        FileNotFoundError: the lock is gone (released meanwhile).
    """
    for _ in range(20):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except OSError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = None
        if isinstance(holder, dict) and isinstance(holder.get("host"), str):
            pid = holder.get("pid")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                return holder
        time.sleep(0.05)
    return None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: cannot check, assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    except (OSError, OverflowError, ValueError):  # a pid no process can have
        return False
    return True


def _seconds_since_refresh(path: Path) -> float | None:
    """Seconds since the holder last touched the lock (None: the lock is gone)."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return None


def lock_output(out_dir: str | os.PathLike[str]) -> OutputLock:
    """Take ``OUT/.lock`` (created atomically, holding this process's pid and host) so that a second
    training run cannot write into the same output folder: two runs there interleave their
    checkpoints, ``last`` and ``metrics.jsonl``.

    A lock left by a process of this host that no longer runs (a killed run) is taken over, with a
    one-line note on stderr. A lock of another host cannot be checked directly: it is respected
    while its holder keeps refreshing it, and taken over once it has not been refreshed for
    :data:`LOCK_ABANDONED_S` (a preempted job requeued on another node resumes on its own).

    Raises:
        InputError: another live run holds the lock (or it is on another host, or unreadable);
            the message names the lock file to delete if that run is gone.
    """
    out = Path(out_dir)
    path = out / LOCK_NAME
    made_dir = None if out.is_dir() else out
    host = socket.gethostname()
    content = json.dumps({"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = storage_error(out, exc)
        if error is None:
            raise
        raise error from exc
    for _ in range(3):  # a stale lock taken over by another process at the same moment: look again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = _read_lock(path)
            except FileNotFoundError:  # released in between
                continue
            if holder is None:
                raise InputError(
                    f"{out} may be in use: {path} exists but does not name a process; delete {path} if no "
                    "run uses this folder"
                ) from None
            pid, other = holder["pid"], holder["host"]
            age = _seconds_since_refresh(path)
            if age is None:  # released in between
                continue
            if age < LOCK_ABANDONED_S:
                if other != host:
                    raise InputError(
                        f"{out} is in use by pid {pid} on {other} ({path}, refreshed {age:.0f} s ago); wait "
                        f"for it (a lock not refreshed for {LOCK_ABANDONED_S / 60:.0f} minutes is taken "
                        f"over), or delete {path} now if that run is gone"
                    ) from None
                if pid != os.getpid() and _pid_alive(pid):  # our own pid: a past life (restarted container)
                    raise InputError(
                        f"{out} is in use by pid {pid} on {other} ({path}); wait for it, or delete the lock "
                        "if that run is gone"
                    ) from None
            # Stale: its process died without releasing it (SIGKILL, power cut, preemption). Remove
            # it only if it is still that one, then race for the new lock like any other starter.
            # (Two starters judging the same stale lock in the same microseconds could still both
            # run; a kernel lock would close that window but is unreliable on network file systems.)
            with contextlib.suppress(FileNotFoundError):
                if _read_lock(path) == holder:
                    path.unlink(missing_ok=True)
                    print(
                        f"note: {path} was left by pid {pid} on {other}, which is gone; taking it over",
                        file=sys.stderr,
                    )
            continue
        try:
            os.write(fd, content.encode("utf-8"))
        finally:
            os.close(fd)
        return OutputLock(path, content, made_dir)
    raise InputError(f"{out}: could not take {path} (other runs are starting there); wait for them")
