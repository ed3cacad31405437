"""Faults: a full disk and a SIGKILL at every step of a checkpoint write never lose a training run.

A full disk is simulated at the lowest write of the checkpoint code (``Path.write_bytes`` /
``write_text``: half the data lands, then ``OSError(ENOSPC)``), and for real on a tiny tmpfs when
the tests run as root. A kill is a real SIGKILL of a forked child in the middle of a write.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from robustness_helpers import (
    TinyScenes,
    assert_same_weights,
    disk_fills_up,
    hidden_leftovers,
    train_overrides,
    write_folder_dataset,
)

from pspnet.cli import main
from pspnet.config import load_config
from pspnet.engine.train import train
from pspnet.errors import StorageError
from pspnet.io import train_state
from pspnet.io.checkpoint import load_model, save_model
from pspnet.io.train_state import find_last_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from pspnet.models.registry import create_model


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Final weights of the 6-iteration run that every interrupted run must reproduce."""
    out = tmp_path_factory.mktemp("full")
    return train(load_config(None, train_overrides(out)), TinyScenes(8)).model_path


def _nth(count: int, test: Callable[[Path], bool]) -> Callable[[Path], bool]:
    """A predicate true only for the ``count``-th path (1-based) that passes ``test``."""
    seen = [0]

    def when(path: Path) -> bool:
        if not test(path):
            return False
        seen[0] += 1
        return seen[0] == count

    return when


_IN_CHECKPOINT_4 = ".tmp-iter_00000004"


# Which write fails: the three files of the checkpoint at iteration 4, its `last` pointer update
# (the second `last` write of the run), and the final OUT/model.safetensors.
def _in_checkpoint_4(name: str) -> Callable[[], Callable[[Path], bool]]:
    return lambda: lambda p: _IN_CHECKPOINT_4 in str(p) and p.name.startswith(f".{name}.")


_FAULTS: dict[str, Callable[[], Callable[[Path], bool]]] = {
    "model.safetensors": _in_checkpoint_4("model.safetensors"),
    "state.pt": _in_checkpoint_4("state.pt"),
    "config.yaml": _in_checkpoint_4("config.yaml"),
    "last": lambda: _nth(2, lambda p: p.name.startswith(".last.")),
    "final model": lambda: lambda p: p.parent.name == "run" and p.name.startswith(".model.safetensors."),
}


@pytest.mark.parametrize("fault", list(_FAULTS))
def test_disk_full_keeps_the_last_good_checkpoint_and_resume_is_exact(
    fault: str, tmp_path: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    with disk_fills_up(_FAULTS[fault]()) as failed, pytest.raises(StorageError) as info:
        train(load_config(None, train_overrides(out)), TinyScenes(8))
    assert len(failed) == 1  # the fault fired once, where intended
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "\n" not in message and "disk full" in message
    assert hidden_leftovers(out) == []  # no temporary file or folder survives the failure
    expected_last = {"last": 2, "final model": 6}.get(fault, 2)
    assert (out / "last").read_text().strip() == f"checkpoints/iter_{expected_last:08d}"
    _, state = load_checkpoint(find_last_checkpoint(out))
    assert state["iteration"] == expected_last
    assert (
        load_model(out / "checkpoints" / f"iter_{expected_last:08d}" / "model.safetensors").num_classes == 3
    )
    if fault == "final model":
        assert f"{out / 'model.safetensors'}: could not write it" in message
    else:
        assert "iter_00000004" in message and "--resume" in message
        assert f"checkpoint {out / 'checkpoints' / 'iter_00000002'} is intact" in message
        assert not (out / "model.safetensors").exists()
    if fault == "last":  # the folder was renamed into place before `last` failed: complete, unused
        assert [p.name for p in list_checkpoints(out)] == ["iter_00000002", "iter_00000004"]
    elif fault != "final model":
        assert [p.name for p in list_checkpoints(out)] == ["iter_00000002"]

    resumed = train(load_config(None, train_overrides(out, resume=True)), TinyScenes(8))
    assert_same_weights(uninterrupted, resumed.model_path)
    assert hidden_leftovers(out) == []


def test_disk_full_through_the_cli_is_one_line_and_resume_works(
    tmp_path: Path, uninterrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    sets = train_overrides(out, **{"data.root": str(data), "data.crop_size": 32, "data.dataset": None})
    argv = ["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]
    with disk_fills_up(_FAULTS["state.pt"]()):
        assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 2 and err[0].startswith("config: "), err  # which file was read, then the error
    err = err[1:]
    assert err[0].startswith("pspnet train: error: checkpoint ") and "disk full" in err[0]
    assert "Traceback" not in err[0] and "--resume" in err[0]
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000002"
    assert hidden_leftovers(out) == []
    assert main([*argv, "--resume"]) == 0
    assert load_model(out / "model.safetensors").num_classes == 3


def test_disk_full_in_save_model_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    old = save_model(create_model("pspnet_tiny", num_classes=3), path).read_bytes()
    with (
        disk_fills_up(lambda p: p.parent == tmp_path),
        pytest.raises(StorageError, match="disk full") as info,
    ):
        save_model(create_model("pspnet_tiny", num_classes=5), path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == old and load_model(path).num_classes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_disk_full_while_predicting_leaves_no_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(create_model("pspnet_tiny", num_classes=3), tmp_path / "m.safetensors")
    from PIL import Image

    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:  # the write was buffered; the flush to disk fails
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to map a file descriptor to its path")
    monkeypatch.setattr(os, "fsync", full_disk)
    argv = ["predict", str(tmp_path / "a.png"), "--model", str(model), "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "disk full" in err[0] and str(out / "a.png") in err[0]
    assert list(out.iterdir()) == []  # neither the label PNG nor a temporary file


def test_written_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """Temporary files start private (0o600); the renamed result must be readable as the umask says,
    or teammates on a shared cluster could not read a model, checkpoint or prediction."""
    mask = os.umask(0o022)
    os.umask(mask)
    model = create_model("pspnet_tiny", num_classes=3)
    folder = save_checkpoint(tmp_path, model, {"iteration": 1}, "", iteration=1)
    written = [save_model(model, tmp_path / "m.safetensors"), tmp_path / "last", *folder.iterdir()]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(0o666 & ~mask)}


# ----------------------------------------------------------------------------- SIGKILL mid-write


def _in_killed_child(action: Callable[[], None]) -> None:
    """Run ``action`` in a forked child that must die of SIGKILL; fail if it exits otherwise."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            action()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child did not reach the kill point")
        time.sleep(0.01)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the kill point was not reached"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_during(name_prefix: str) -> Callable[[], None]:
    """Patch the writers so that writing a temporary file named ``name_prefix*`` stops half-way, dead."""

    def arm() -> None:
        import pathlib

        real_bytes, real_text = pathlib.Path.write_bytes, pathlib.Path.write_text

        def half_then_die(path: Path, data: bytes) -> None:
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
            _die()

        def write_bytes(self, data):  # type: ignore[no-untyped-def]
            if self.name.startswith(name_prefix):
                half_then_die(self, bytes(data))
            return real_bytes(self, data)

        def write_text(self, data, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.name.startswith(name_prefix):
                half_then_die(self, data.encode())
            return real_text(self, data, *args, **kwargs)

        pathlib.Path.write_bytes = write_bytes  # type: ignore[method-assign]
        pathlib.Path.write_text = write_text  # type: ignore[method-assign]

    return arm


def _kill_before_folder_rename() -> None:
    real = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).name.startswith(".tmp-iter_"):
            _die()
        return real(src, dst)

    os.replace = replace  # type: ignore[assignment]


def _kill_while_pruning() -> None:
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(path).name.startswith("iter_"):
            (Path(path) / "model.safetensors").unlink()  # half deleted
            _die()
        return real(path, *args, **kwargs)

    train_state.shutil.rmtree = rmtree  # type: ignore[attr-defined]


_KILL_POINTS = {
    "model file": (_kill_during(".model.safetensors."), 1),
    "state file": (_kill_during(".state.pt."), 1),
    "config file": (_kill_during(".config.yaml."), 1),
    "folder rename": (_kill_before_folder_rename, 1),
    "last pointer": (_kill_during(".last."), 1),
    "pruning": (_kill_while_pruning, 2),
}


@pytest.mark.parametrize("point", list(_KILL_POINTS))
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(point: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("pspnet_tiny", num_classes=3)
    state = {"iteration": 1, "momentum": torch.arange(6.0)}
    save_checkpoint(tmp_path, model, state, "seed: 0\n", iteration=1, keep_last=1)
    arm, survivor = _KILL_POINTS[point]

    def write_the_next_one() -> None:
        arm()
        save_checkpoint(tmp_path, model, {**state, "iteration": 2}, "seed: 0\n", iteration=2, keep_last=1)

    _in_killed_child(write_the_next_one)

    folder = find_last_checkpoint(tmp_path)
    assert folder == tmp_path / "checkpoints" / f"iter_{survivor:08d}"
    _, loaded = load_checkpoint(folder)
    assert loaded["iteration"] == survivor and torch.equal(loaded["momentum"], torch.arange(6.0))
    reloaded = load_model(folder / "model.safetensors")
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # the next save cleans what the kill left (temporary folder/files, a half-pruned folder)
    save_checkpoint(tmp_path, model, {**state, "iteration": 3}, "seed: 0\n", iteration=3, keep_last=1)
    assert hidden_leftovers(tmp_path) == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_00000003"]


# ----------------------------------------------------------------------------- a real full disk


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 4 MiB tmpfs (root only; skipped elsewhere): room for one tiny checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        gc.collect()  # drop tensors that may still map files on it
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_really_full_disk_keeps_the_last_good_checkpoint(tiny_disk: Path) -> None:
    model = create_model("pspnet_tiny", num_classes=3)  # ~1.2 MB of weights
    momentum = torch.zeros(300_000)  # ~1.2 MB of optimizer state
    save_checkpoint(tiny_disk, model, {"iteration": 1, "m": momentum}, "", iteration=1, keep_last=1)
    with pytest.raises(StorageError) as info:
        save_checkpoint(tiny_disk, model, {"iteration": 2, "m": momentum}, "", iteration=2, keep_last=1)
    assert info.value.errno == errno.ENOSPC and "disk full" in str(info.value)
    assert "iter_00000001 is intact" in str(info.value)
    assert hidden_leftovers(tiny_disk) == []
    tensors, state = load_checkpoint(find_last_checkpoint(tiny_disk))
    assert state["iteration"] == 1 and tensors.keys() == model.state_dict().keys()
    del tensors, state


# ----------------------------------------------------------------------------- a DDP rank dies

_DYING_RANK = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from robustness_helpers import TinyScenes
from pspnet.config import load_config
from pspnet.engine.train import train
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
die = (4, kill) if os.environ["RANK"] == "1" else None  # rank 1 dies loading iteration 3's images
train(load_config(None, json.loads(sys.argv[1])), TinyScenes(16, die_after=die))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dying_ddp_rank_ends_the_job_with_the_cause_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    script = tmp_path / "dying_rank.py"
    script.write_text(_DYING_RANK.format(here=str(Path(__file__).resolve().parent)))
    out = tmp_path / "run"
    overrides = train_overrides(
        out, **{"optim.batch_size": 4, "output.checkpoint_interval": 1, "dist_timeout_s": 60}
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(script), json.dumps(overrides)]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
    }
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)  # a hang fails here
    assert run.returncode != 0
    # torchrun stops the surviving rank at once and names the root cause: rank 1, SIGKILL
    cause = run.stderr[run.stderr.index("Root Cause") :]
    assert "rank      : 1" in cause and "SIGKILL" in cause
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000002"
    _, state = load_checkpoint(find_last_checkpoint(out))
    assert state["iteration"] == 2
    assert not (out / "model.safetensors").exists()


_DYING_RANK_BY_HAND = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from robustness_helpers import TinyScenes
from pspnet.cli import exit_status, one_line
from pspnet.config import load_config
from pspnet.engine.train import train
kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
die = (4, kill) if os.environ["RANK"] == "1" else None
try:
    train(load_config(None, json.loads(sys.argv[1])), TinyScenes(16, die_after=die))
except Exception as exc:
    print(type(exc).__name__, exit_status(exc), one_line(exc), sep="|")
"""


@pytest.mark.slow
def test_a_dying_rank_without_torchrun_is_one_line_on_the_survivor(tmp_path: Path) -> None:
    """Two processes started by hand (no torchrun to stop them): when rank 1 is SIGKILLed, rank 0
    ends with a one-line PeerLostError (exit status 1), not gloo's traceback, and does not hang."""
    script = tmp_path / "dying_rank_by_hand.py"
    script.write_text(_DYING_RANK_BY_HAND.format(here=str(Path(__file__).resolve().parent)))
    overrides = train_overrides(tmp_path / "run", **{"optim.batch_size": 4, "dist_timeout_s": 60})
    port = str(_free_port())
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "WORLD_SIZE": "2",
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(overrides)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    out0, err0 = ranks[0].communicate(timeout=240)  # a hang fails here
    ranks[1].wait(timeout=60)
    assert ranks[1].returncode == -signal.SIGKILL
    name, status, message = out0.strip().splitlines()[-1].split("|")
    assert (name, status) == ("PeerLostError", "1"), (out0, err0[-2000:])
    assert message.startswith("rank 0 lost contact with the other ranks") and "--resume" in message


def test_disk_full_while_logging_names_the_metrics_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_open = Path.open

    def open_fails_for_the_log(self: Path, mode: str = "r", *args, **kwargs):
        if self.name == "metrics.jsonl" and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_fails_for_the_log)
    with pytest.raises(StorageError, match="metrics.jsonl") as info:
        train(load_config(None, train_overrides(out)), TinyScenes(8))
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert (out / "config.yaml").is_file() and hidden_leftovers(out) == []
