"""torchrun DDP on CPU (gloo): ranks stay in sync and match a single process with the same global batch.

What is compared, and why it can match: 2 ranks x 2 images vs 1 process x 4 images, same seed.
- Data: DistributedSampler deals the epoch's permutation round-robin, so step k sees the same 4
  images on both sides; augmentation is keyed on (seed, epoch, index), not on the rank.
- BatchNorm: per-rank batch statistics (no SyncBN on CPU) differ from the 4-image statistics, so
  BN is frozen (``model.freeze_bn``: running statistics); dropout is 0 (per-rank RNG streams).
- Loss: every pixel is labelled, so the mean of the per-rank mean losses (what DDP's gradient
  averaging computes) equals the 4-image mean loss.
Then the weights agree up to float summation order (atol 1e-5).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_engine_train import tiny_overrides

from pspnet.models.registry import create_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

_SCRIPT = """
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from test_engine_train import TinyDataset
from pspnet.config import load_config
from pspnet.engine.train import train
void = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
result = train(load_config(None, json.loads(sys.argv[1])), TinyDataset(16, void=void))
digest = hashlib.sha256()
for key, value in sorted(result.model.state_dict().items()):
    digest.update(key.encode()); digest.update(value.detach().cpu().contiguous().numpy().tobytes())
rank = os.environ.get("RANK", "single")
with open(os.path.join(sys.argv[2], f"hash_{{rank}}.txt"), "w") as handle:
    handle.write(digest.hexdigest())
"""

_TIMEOUT_SCRIPT = """
import os, sys, time
from datetime import timedelta
import torch.distributed as dist
from pspnet.engine.distributed import barrier, init_distributed
init_distributed("cpu", timeout_s=30)
if dist.get_rank() == 1:
    time.sleep(30)  # a hung rank
else:
    try:
        barrier(2.0, "the test barrier")
    except RuntimeError as exc:
        with open(sys.argv[1], "w") as handle:
            handle.write(str(exc))
        os._exit(3)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]  # fmt: skip


SETTINGS = {
    "optim.iterations": 3,
    "model.freeze_bn": True,
    "model.overrides": {"dropout": 0.0},
    "dist_timeout_s": 60,
}


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_SCRIPT.format(here=str(HERE)))
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    single_out.mkdir()
    ddp = subprocess.Popen(
        _torchrun(
            str(script),
            json.dumps(tiny_overrides(ddp_out, **SETTINGS, **{"optim.batch_size": 4})),
            str(ddp_out),
        ),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    single = subprocess.run(
        [
            sys.executable,
            str(script),
            json.dumps(tiny_overrides(single_out, **SETTINGS, **{"optim.batch_size": 4})),
            str(single_out),
        ],
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    log = ddp.communicate(timeout=120)[0].decode()
    assert ddp.returncode == 0, log[-3000:]
    assert single.returncode == 0, single.stderr.decode()[-3000:]

    # ranks in sync: identical weights on both
    assert (ddp_out / "hash_0.txt").read_text() == (ddp_out / "hash_1.txt").read_text()
    # only rank 0 writes
    assert len((ddp_out / "metrics.jsonl").read_text().splitlines()) == 3
    a, b = load_file(str(ddp_out / "model.safetensors")), load_file(str(single_out / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    torch.manual_seed(0)  # train() seeds with config.seed (0) before building the model
    fresh = create_model("pspnet_tiny", num_classes=4, dropout=0.0).state_dict()
    moved = sum(not torch.allclose(a[k], fresh[k].to(a[k].dtype)) for k in a if k.endswith("weight"))
    assert moved > 10  # training changed the weights, so the agreement above is not vacuous


@pytest.mark.slow
def test_a_hung_rank_makes_the_others_exit_with_a_message(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(_TIMEOUT_SCRIPT)
    message = tmp_path / "message.txt"
    run = subprocess.run(_torchrun(str(script), str(message)), env=_env(), capture_output=True, timeout=120)
    assert run.returncode != 0
    text = message.read_text()
    assert "rank 0: gave up at the test barrier after 2 s" in text and "another rank died or hangs" in text


def test_only_lost_peer_errors_are_rewritten():
    """Gloo's "peer closed" becomes one line naming the rank; any other RuntimeError keeps its traceback."""
    from pspnet.cli import exit_status
    from pspnet.engine.distributed import lost_peer_error

    gloo = RuntimeError(
        "[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
        "[127.0.0.1]:24497. This is typically caused by a remote worker crashing.\nmore detail"
    )
    lost = lost_peer_error(gloo, rank=3)
    assert lost is not None and exit_status(lost) == 1
    assert str(lost).startswith("rank 3 lost contact with the other ranks (Connection closed by peer")
    assert "\n" not in str(lost) and "pair.cc" not in str(lost)
    assert lost_peer_error(torch.distributed.DistBackendError("NCCL error"), rank=0) is not None
    assert lost_peer_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), rank=0) is None


def test_a_collective_timeout_means_a_lost_peer():
    """A hung rank: gloo's recv times out after dist_timeout_s (NCCL's watchdog says "timeout")."""
    from pspnet.engine.distributed import lost_peer_error

    gloo = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms "
        "for recv operation to complete"
    )
    lost = lost_peer_error(gloo, rank=0)
    assert lost is not None and "unbound_buffer" not in str(lost)
    assert str(lost).startswith("rank 0 lost contact with the other ranks (Timed out waiting 10000ms")
    nccl = RuntimeError("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, ...)")
    assert lost_peer_error(nccl, rank=1) is not None


@pytest.mark.slow
def test_ranks_stay_in_step_when_one_has_only_void_pixels(tmp_path):
    """All images but one are all-ignore: at every step at least one rank's micro-batch has no
    labelled pixel. Its loss is 0 (not NaN), so nonfinite: abort never fires, and both ranks end
    with the same weights."""
    script = tmp_path / "ddp_train.py"
    script.write_text(_SCRIPT.format(here=str(HERE)))
    out = tmp_path / "ddp"
    out.mkdir()
    settings = {**SETTINGS, "optim.batch_size": 4, "nonfinite": "abort"}
    run = subprocess.run(
        _torchrun(
            str(script), json.dumps(tiny_overrides(out, **settings)), str(out), json.dumps(list(range(1, 16)))
        ),
        env=_env(),
        capture_output=True,
        timeout=180,
    )
    assert run.returncode == 0, (run.stdout + run.stderr).decode()[-3000:]
    assert (out / "hash_0.txt").read_text() == (out / "hash_1.txt").read_text()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in lines if "loss" in e] == [1, 2, 3] and not any("event" in e for e in lines)
