"""Training engine: the recipe (checked against a hand-written SGD step), logs, guards, command."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pspnet.cli import main
from pspnet.config import load_config
from pspnet.data.info import DatasetInfo, default_palette
from pspnet.data.preprocess import PYTORCH_PREPROCESS
from pspnet.engine.optim import build_optimizer, poly_lr, set_lr
from pspnet.engine.train import NonFiniteLossError, train
from pspnet.errors import InputError
from pspnet.io.checkpoint import load_model
from pspnet.io.train_state import list_checkpoints, load_checkpoint
from pspnet.models.registry import create_model


@dataclass(frozen=True)
class _Sample:
    name: str


class TinyDataset(torch.utils.data.Dataset):
    """The SegmentationDataset contract on patterned 64 px scenes (4x4 blocks of classes).

    Deterministic per ``(seed, epoch, index)``. Every pixel is labelled (no 255), so per-rank mean
    losses average to the global mean. ``poison`` indices return NaN images, ``fail_after`` makes
    loading raise (a simulated crash), ``delay`` slows each item (to kill a run mid-way).
    """

    def __init__(
        self, n=16, num_classes=4, size=64, seed=0, delay=0.0, poison=(), fail_after=None, flip=True
    ):
        names = tuple(f"c{i}" for i in range(num_classes))
        self.info = DatasetInfo("tiny", names, default_palette(num_classes), crop_size=size, base_size=size)
        self.samples = [_Sample(f"img{i:03d}") for i in range(n)]
        self.n, self.size, self.seed, self.delay = n, size, seed, delay
        self.poison, self.fail_after, self.flip = set(poison), fail_after, flip
        self.epoch, self.loads = 0, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def load_raw(self, index):
        rng = np.random.default_rng([self.seed, index])
        blocks = rng.integers(0, self.info.num_classes, (4, 4))
        mask = np.kron(blocks, np.ones((self.size // 4, self.size // 4), dtype=np.int64)).astype(np.int64)
        image = np.array(self.info.palette, dtype=np.float64)[mask] + rng.normal(
            0, 20, (self.size, self.size, 3)
        )
        return np.clip(image, 0, 255).astype(np.uint8), mask

    def __getitem__(self, index):
        if self.fail_after is not None and self.loads >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.loads += 1
        if self.delay:
            time.sleep(self.delay)
        image, mask = self.load_raw(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.flip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        x = PYTORCH_PREPROCESS.to_tensor(np.ascontiguousarray(image))
        if index in self.poison:
            x = torch.full_like(x, float("nan"))
        return {"image": x, "mask": torch.from_numpy(np.ascontiguousarray(mask)), "index": int(index)}


def tiny_overrides(out: Path, **extra) -> list[str]:
    """``--set`` list for a tiny deterministic CPU run."""
    settings = {
        "model.preset": "pspnet_tiny",
        "optim.batch_size": 2,
        "optim.iterations": 4,
        "output.dir": str(out),
        "output.checkpoint_interval": 2,
        "output.log_interval": 1,
        "output.progress": False,
        "data.num_workers": 0,
        "deterministic": True,
        "device": "cpu",
    }
    settings.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- optimizer


def test_optimizer_groups_follow_the_paper():
    model = create_model("pspnet_tiny", num_classes=4)
    opt = build_optimizer(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    backbone = {names[id(p)] for p in opt.param_groups[0]["params"]}
    head = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert backbone | head == set(names.values()) and not backbone & head
    assert all(n.startswith("backbone.") for n in backbone)
    assert all(n.split(".")[0] in ("ppm", "classifier", "aux_classifier") for n in head)
    assert [g["lr"] for g in opt.param_groups] == [0.01, pytest.approx(0.1)]
    assert all(g["weight_decay"] == 1e-4 and g["momentum"] == 0.9 for g in opt.param_groups)
    set_lr(opt, 0.005)
    assert [g["lr"] for g in opt.param_groups] == [0.005, pytest.approx(0.05)]


def test_poly_schedule_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0


# ----------------------------------------------------------------------------- the recipe


def test_two_iterations_match_a_hand_written_sgd_step(tmp_path):
    """train() == CE(main) + 0.4 CE(aux), SGD momentum 0.9 + wd 1e-4, 10x on heads, poly lr, data order."""
    seed, base = 3, 0.01
    cfg = load_config(
        None,
        tiny_overrides(
            tmp_path / "run", seed=seed, **{"optim.iterations": 2, "model.overrides": {"dropout": 0.0}}
        ),
    )
    result = train(cfg, TinyDataset(8, flip=False))

    torch.manual_seed(seed)
    ref = create_model("pspnet_tiny", num_classes=4, dropout=0.0).train()
    data = TinyDataset(8, flip=False)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(seed)).tolist()  # epoch 0
    params = dict(ref.named_parameters())
    momentum = {}
    for step in range(2):
        items = [data[i] for i in order[2 * step : 2 * step + 2]]
        x, y = torch.stack([it["image"] for it in items]), torch.stack([it["mask"] for it in items])
        out = ref(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=255) + 0.4 * F.cross_entropy(
            out["aux"], y, ignore_index=255
        )
        ref.zero_grad()
        loss.backward()
        lr = base * (1 - step / 2) ** 0.9
        with torch.no_grad():
            for name, p in params.items():
                d = p.grad + 1e-4 * p
                momentum[name] = d.clone() if step == 0 else 0.9 * momentum[name] + d
                head = name.split(".")[0] in ("ppm", "classifier", "aux_classifier")
                p -= (10 * lr if head else lr) * momentum[name]
    trained = load_model(result.model_path).state_dict()
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    """batch 4 as 2 x 2 accumulated == batch 4 at once (frozen BN: batch statistics would differ)."""
    common = {"optim.batch_size": 4, "optim.iterations": 2, "model.freeze_bn": True}
    common["model.overrides"] = {"dropout": 0.0}
    one = train(load_config(None, tiny_overrides(tmp_path / "a", **common)), TinyDataset(8))
    two = train(
        load_config(None, tiny_overrides(tmp_path / "b", **common, **{"optim.accumulate": 2})), TinyDataset(8)
    )
    a, b = load_model(one.model_path).state_dict(), load_model(two.model_path).state_dict()
    initial = create_model("pspnet_tiny", num_classes=4).state_dict()
    assert any(not torch.equal(a[k], initial[k].to(a[k].dtype)) for k in a if "conv" in k)  # it trained
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_persistent_workers_train_like_the_main_process(tmp_path):
    """Three epochs through 2 persistent worker processes == loading in the main process: the
    epoch, which keys each sample's flip, reaches the workers' dataset copies."""
    common = {"optim.iterations": 6, "output.checkpoint_interval": 0}
    runs = {}
    for workers in (0, 2):
        cfg = load_config(
            None, tiny_overrides(tmp_path / f"w{workers}", **common, **{"data.num_workers": workers})
        )
        runs[workers] = load_model(train(cfg, TinyDataset(4)).model_path).state_dict()
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[2][name], value, rtol=0, atol=0, msg=name)


def test_outputs_logs_checkpoints_and_validation(tmp_path):
    out = tmp_path / "run"
    extra = {
        "optim.iterations": 6,
        "output.checkpoint_interval": 2,
        "output.keep_last": 2,
        "eval.interval": 3,
    }
    result = train(load_config(None, tiny_overrides(out, **extra)), TinyDataset(8), TinyDataset(4, seed=9))
    assert [p.name for p in list_checkpoints(out)] == ["iter_00000004", "iter_00000006"]
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000006"
    folder = out / "checkpoints" / "iter_00000006"
    assert load_config(folder / "config.yaml").optim.iterations == 6
    state = torch.load(folder / "state.pt", weights_only=True)
    assert (state["iteration"], state["epoch"], state["epoch_step"]) == (6, 1, 2)  # 4 steps per epoch
    assert load_model(out / "model.safetensors").num_classes == 4
    assert load_model(out / "best.safetensors").num_classes == 4
    lines = read_metrics(out)
    train_lines = [e for e in lines if "loss" in e]
    assert [e["iter"] for e in train_lines] == [1, 2, 3, 4, 5, 6]
    for e in train_lines:  # the update of iteration i (1-based) uses the poly rate of i - 1
        assert e["lr"] == pytest.approx(0.01 * (1 - (e["iter"] - 1) / 6) ** 0.9)
        assert math.isfinite(e["loss"]) and e["images_per_s"] > 0 and "aux_loss" in e
    val = [e for e in lines if "val_miou" in e]
    assert [e["iter"] for e in val] == [3, 6]
    assert result.best_miou == pytest.approx(max(e["val_miou"] for e in val))
    assert result.history == lines


# ----------------------------------------------------------------------------- guards


def test_nonfinite_batch_is_skipped_and_logged(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(out, **{"optim.iterations": 4}))
    result = train(cfg, TinyDataset(8, poison={5}))
    events = [e for e in read_metrics(out) if e.get("event") == "nonfinite_loss"]
    assert len(events) == 1 and 5 in events[0]["indices"] and "img005" in events[0]["names"]
    assert result.skipped_steps == [events[0]["iter"] - 1]
    state = load_model(result.model_path).state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())  # BN stats too


def test_nonfinite_abort_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    poisoned = order[5]  # consumed by iteration 3 (1-based), after the checkpoint at 2
    cfg = load_config(None, tiny_overrides(out, nonfinite="abort", **{"output.checkpoint_interval": 1}))
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        train(cfg, TinyDataset(8, poison={poisoned}))
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000002"
    tensors, _ = load_checkpoint(out / "checkpoints" / "iter_00000002")
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_class_count_mismatch_is_refused(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"model.num_classes": 5}))
    with pytest.raises(InputError, match=r"num_classes=5.*4 classes"):
        train(cfg, TinyDataset(8))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_needs_resume(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"optim.iterations": 2}))
    train(cfg, TinyDataset(8))
    with pytest.raises(InputError, match="--resume"):
        train(cfg, TinyDataset(8))


def test_micro_batch_of_one_is_refused(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"optim.accumulate": 2}))
    with pytest.raises(InputError, match="micro-batch"):
        train(cfg, TinyDataset(8))


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"output.tensorboard": True}))
    with pytest.raises(InputError, match="pip install tensorboard"):
        train(cfg, TinyDataset(8))


def test_tensorboard_gets_scalars_and_validation_predictions(tmp_path):
    """The event file holds the loss and val mIoU curves and, at each validation, one image per
    kept validation sample: image | ground truth | prediction, 3 panels wide."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = {"output.tensorboard": True, "output.tensorboard_images": 2, "eval.interval": 2}
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **settings))
    train(cfg, TinyDataset(8), val_dataset=TinyDataset(3, seed=9))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "val_miou"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val_miou")] == [2, 4]
    assert sorted(tags["images"]) == ["val/prediction_0", "val/prediction_1"]
    shown = events.Images("val/prediction_0")
    assert [e.step for e in shown] == [2, 4]
    assert (shown[0].width, shown[0].height) == (3 * 64, 64)


# ----------------------------------------------------------------------------- real data + command


def _folder_dataset(root: Path, n: int, bad_value: int | None = None) -> Path:
    source = TinyDataset(n)
    for split in ("train", "val"):
        for i in range(n):
            image, mask = source.load_raw(i)
            if bad_value is not None and i == 0:
                mask[0, 0] = bad_value
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"{i:03d}.png")
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / split / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(source.info.class_names))
    return root


def _command_args(data: Path, out: Path) -> list[str]:
    sets = tiny_overrides(out, **{"data.root": str(data), "data.kind": "folder", "data.crop_size": 64})
    sets += ["data.scale=[0.75, 1.25]", "eval.limit=2"]
    return ["train", "--config", "demo", *[a for s in sets for a in ("--set", s)]]


def test_command_trains_on_a_folder_dataset(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "data", 4)
    out = tmp_path / "run"
    assert main([*_command_args(data, out), "--set", "data.dataset=null"]) == 0
    assert "trained 4 iterations" in capsys.readouterr().out
    assert load_model(out / "model.safetensors").dataset_info.class_names == ("c0", "c1", "c2", "c3")
    assert any("val_miou" in e for e in read_metrics(out))


def test_command_refuses_a_dataset_failing_verification(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "data", 4, bad_value=9)
    assert main([*_command_args(data, tmp_path / "run"), "--set", "data.dataset=null"]) == 2
    err = capsys.readouterr().err
    assert "verification" in err and "data.verify=false" in err


def test_command_rejects_bad_config_values(tmp_path, capsys):
    assert main(["train", "--config", "demo", "--set", "optim.amp=fp8"]) == 2
    assert "optim.amp" in capsys.readouterr().err
