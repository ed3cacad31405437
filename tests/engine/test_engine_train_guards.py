"""Training guards around the run: the output-folder lock, config checks before a queue wait, and no
checkpoints while non-finite steps are being skipped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_engine_train import TinyDataset, _command_args, _folder_dataset, read_metrics, tiny_overrides

from pspnet.cli import main
from pspnet.config import load_config
from pspnet.engine.train import MAX_SKIPS_IN_A_ROW, NonFiniteLossError, train
from pspnet.errors import InputError
from pspnet.io.train_state import list_checkpoints

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(out: Path, pid: int, host: str | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return path


class _WatchLock(TinyDataset):
    """Records what ``OUT/.lock`` holds while the training loads its images."""

    def __init__(self, out: Path, n: int = 8, interrupt_after: int | None = None):
        super().__init__(n)
        self.lock, self.seen, self.interrupt_after = out / ".lock", [], interrupt_after

    def __getitem__(self, index):
        self.seen.append(json.loads(self.lock.read_text()) if self.lock.exists() else None)
        if self.interrupt_after is not None and self.loads >= self.interrupt_after:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return super().__getitem__(index)


# ----------------------------------------------------------------------------- the output lock


def test_the_lock_is_held_while_training_and_removed_at_the_end(tmp_path):
    out = tmp_path / "run"
    data = _WatchLock(out)
    train(load_config(None, tiny_overrides(out)), data)
    assert data.seen and all(s == data.seen[0] for s in data.seen)
    assert data.seen[0]["pid"] == os.getpid() and data.seen[0]["host"] == socket.gethostname()
    assert not (out / ".lock").exists()


def test_a_live_run_holding_the_folder_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    holder = os.getppid()  # alive while this test runs
    lock = _write_lock(out, holder)
    with pytest.raises(InputError) as info:
        train(load_config(None, tiny_overrides(out, resume=True)), TinyDataset(8))
    assert str(info.value) == (
        f"{out} is in use by pid {holder} on {socket.gethostname()} ({lock}); wait for it, or delete "
        "the lock if that run is gone"
    )
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written, the lock not taken
    assert json.loads(lock.read_text())["pid"] == holder


def test_a_lock_from_another_host_is_respected(tmp_path):
    out = tmp_path / "run"
    lock = _write_lock(out, _dead_pid(), host="some-other-node")  # its pid means nothing here
    with pytest.raises(InputError, match=rf"pid \d+ on some-other-node .*delete {lock}"):
        train(load_config(None, tiny_overrides(out)), TinyDataset(8))
    assert lock.exists()


@pytest.mark.parametrize("holder", ["other_host", "own_pid"])
def test_an_abandoned_lock_is_taken_over_so_a_requeued_job_resumes(holder, tmp_path, capsys):
    """A preempted job requeued on another node, or restarted in a container whose host name and
    pid come back, finds its old lock: unrefreshed for LOCK_ABANDONED_S, or naming this very
    process, it is taken over without anyone deleting it by hand."""
    from pspnet.io.train_state import LOCK_ABANDONED_S

    out = tmp_path / "run"
    if holder == "other_host":
        lock = _write_lock(out, 4242, host="some-other-node")
        old = time.time() - LOCK_ABANDONED_S - 5
        os.utime(lock, (old, old))
    else:
        lock = _write_lock(out, os.getpid())  # just refreshed, but the pid is ours: a past life
    data = _WatchLock(out)
    train(load_config(None, tiny_overrides(out)), data)
    assert f"note: {lock} was left by pid" in capsys.readouterr().err
    assert data.seen[0]["pid"] == os.getpid() and data.seen[0]["host"] == socket.gethostname()


def test_a_running_holder_refreshes_its_lock(tmp_path, monkeypatch):
    from pspnet.io import train_state

    monkeypatch.setattr(train_state, "LOCK_REFRESH_S", 0.05)
    lock = train_state.lock_output(tmp_path / "run")
    old = time.time() - 1000
    os.utime(lock.path, (old, old))
    deadline = time.time() + 10
    while not (refreshed := lock.path.stat().st_mtime > old + 500) and time.time() < deadline:
        time.sleep(0.05)
    lock.release()
    assert refreshed and not lock.path.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    dead = _dead_pid()
    lock = _write_lock(out, dead)
    data = _WatchLock(out)
    train(load_config(None, tiny_overrides(out)), data)
    assert f"note: {lock} was left by pid {dead} on {socket.gethostname()}, which is gone" in (
        capsys.readouterr().err
    )
    assert data.seen[0]["pid"] == os.getpid()
    assert not lock.exists()


def test_the_lock_is_released_after_an_error_and_a_ctrl_c(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(None, tiny_overrides(out)), TinyDataset(8, fail_after=3))
    assert (out / "metrics.jsonl").exists() and not (out / ".lock").exists()
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, tiny_overrides(out, resume=True)), _WatchLock(out, interrupt_after=3))
    assert not (out / ".lock").exists()
    with pytest.raises(InputError, match="micro-batch"):  # refused at the start: no folder left behind
        train(load_config(None, tiny_overrides(tmp_path / "new", **{"optim.batch_size": 1})), TinyDataset(8))
    assert not (tmp_path / "new").exists()


def test_the_command_refuses_a_folder_in_use_in_one_line(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "data", 4)
    out = tmp_path / "run"
    lock = _write_lock(out, os.getppid())
    assert main([*_command_args(data, out), "--set", "data.dataset=null", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"pspnet train: error: {out} is in use by pid {os.getppid()} on {socket.gethostname()} ({lock}); "
        "wait for it, or delete the lock if that run is gone"
    )


_DDP_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from test_engine_train import TinyDataset
from pspnet.config import load_config
from pspnet.engine.train import train
train(load_config(None, json.loads(sys.argv[1])), TinyDataset(16))
"""


@pytest.mark.slow
def test_under_torchrun_only_rank_0_locks_and_every_rank_stops_on_a_held_lock(tmp_path):
    """A run of 2 ranks succeeds (rank 1 would be refused by rank 0's lock if it took one too), and
    with the folder in use, both ranks stop at once instead of rank 1 waiting for rank 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(here=str(HERE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "run"

    def torchrun(**extra) -> subprocess.CompletedProcess:
        settings = tiny_overrides(out, **{"optim.batch_size": 4, "dist_timeout_s": 600}, **extra)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(port), str(script), json.dumps(settings)]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, timeout=300)

    done = torchrun()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert (out / "model.safetensors").exists() and not (out / ".lock").exists()
    _write_lock(out, os.getppid())
    refused = torchrun(resume=True)  # a hang of rank 1 would run into the subprocess timeout
    log = refused.stderr.decode()
    assert refused.returncode != 0 and log.count(f"is in use by pid {os.getppid()}") >= 2, log[-3000:]


# ----------------------------------------------------------------------------- non-finite streaks


class _PoisonFrom(TinyDataset):
    """Every image from load ``first`` on (1-based) is NaN: a run of non-finite steps."""

    def __init__(self, first: int, n: int = 8):
        super().__init__(n)
        self.first = first

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if self.loads >= self.first:
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item


@pytest.mark.parametrize("streak_start", [4, 3])
def test_no_checkpoint_during_a_non_finite_streak_and_the_stop_names_the_one_before(tmp_path, streak_start):
    """Batches of 2, a checkpoint every 2 iterations: from iteration ``streak_start`` every loss is
    non-finite. Checkpoints 4, 6, ... would hold the weights that gave those losses; none is written,
    and the stop names checkpoint 2, written before the streak."""
    out = tmp_path / "run"
    config = load_config(
        None, tiny_overrides(out, **{"optim.iterations": 40, "output.checkpoint_interval": 2})
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(config, _PoisonFrom(first=2 * (streak_start - 1) + 1))
    stop = streak_start + MAX_SKIPS_IN_A_ROW - 1
    message = str(info.value)
    assert message.startswith(
        f"iteration {stop}: the last {MAX_SKIPS_IN_A_ROW} steps in a row (from iteration {streak_start})"
    )
    assert [p.name for p in list_checkpoints(out)] == ["iter_00000002"]
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000002"
    skipped = [e["iter"] for e in read_metrics(out) if e.get("action") == "skipped"]
    assert skipped == list(range(streak_start, stop))  # the streak really covered checkpoint steps
    checkpoint = out / "checkpoints" / "iter_00000002"
    if streak_start == 4:
        assert f"Rerun with --resume (it continues from {checkpoint})" in message
    else:  # checkpoint 2 holds exactly the weights whose loss at iteration 3 was non-finite
        assert f"The last checkpoint, {checkpoint}, holds the weights whose loss was non-finite" in message
        assert "start over in a new --out" in message and "Rerun with --resume" not in message


def test_a_streak_at_the_very_end_still_writes_the_final_checkpoint(tmp_path):
    """The run ends normally (fewer than MAX_SKIPS_IN_A_ROW skips): its final checkpoint and model
    are written, so a --resume finds it complete."""
    out = tmp_path / "run"
    config = load_config(
        None, tiny_overrides(out, **{"optim.iterations": 4, "output.checkpoint_interval": 2})
    )
    result = train(config, _PoisonFrom(first=5))  # iterations 3 and 4 are skipped
    assert result.skipped_steps == [2, 3]
    assert [p.name for p in list_checkpoints(out)] == ["iter_00000002", "iter_00000004"]
    assert (out / "model.safetensors").exists()


# ----------------------------------------------------------------------------- --print-config


@pytest.mark.parametrize(
    "sets",
    [
        ["model.preset=pspnet51"],
        ["data.dataset=cityscape"],
        ["data.mask_palette=foo"],
        ["data.mask_palette=ade20k"],
        ["optim.amp=bf16", "device=cpu"],
        *([] if torch.cuda.is_available() else [["device=cuda"]]),
    ],
)
def test_print_config_refuses_what_training_refuses_with_the_same_message(tmp_path, capsys, sets):
    sets = [*sets, f"output.dir={tmp_path / 'run'}"]
    assert (
        main(["train", "--config", "demo", *[a for s in sets for a in ("--set", s)], "--print-config"]) == 2
    )
    captured = capsys.readouterr()
    assert captured.out == ""  # no config printed for a config that cannot train
    printed = captured.err.strip().splitlines()[-1]
    with pytest.raises(InputError) as info:  # what a training start says (before reading any data)
        train(load_config("demo", sets))
    assert printed == f"pspnet train: error: {info.value}"
    assert not (tmp_path / "run").exists()


def test_print_config_names_the_problem_key(capsys):
    assert main(["train", "--config", "demo", "--set", "data.kind=folder2", "--print-config"]) == 2
    assert "data.kind: invalid value 'folder2'" in capsys.readouterr().err
    assert main(["train", "--config", "demo", "--set", "data.mask_palette=ade20k", "--print-config"]) == 2
    assert "same colour" in capsys.readouterr().err
    assert main(["train", "--config", "demo", "--set", "data.mask_palette=foo", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "no such palette; choose one of cityscapes, context_demo, voc2012\n" in err  # not ade20k: unusable


def test_print_config_prints_a_good_config_and_says_it_validates(capsys):
    assert main(["train", "--config", "demo", "--set", "optim.iterations=7", "--print-config"]) == 0
    captured = capsys.readouterr()
    assert load_config("demo", ["optim.iterations=7"]).to_yaml() == captured.out
    assert captured.err.strip().startswith("config: ") and captured.err.strip().endswith("demo.yaml")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "check the config as a training start would" in " ".join(capsys.readouterr().out.split())
