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
from pspnet.engine.optim import build_optimizer, poly_lr, segmentation_loss, set_lr
from pspnet.engine.train import MAX_SKIPS_IN_A_ROW, NonFiniteLossError, train
from pspnet.engine.train_setup import open_train_datasets
from pspnet.errors import DataError, InputError
from pspnet.io.checkpoint import load_model
from pspnet.io.train_state import list_checkpoints, load_checkpoint
from pspnet.models.registry import create_model


@dataclass(frozen=True)
class _Sample:
    name: str


class TinyDataset(torch.utils.data.Dataset):
    """The SegmentationDataset contract on patterned 64 px scenes (4x4 blocks of classes).

    Deterministic per ``(seed, epoch, index)``. Every pixel is labelled (no 255), so per-rank mean
    losses average to the global mean. ``poison`` indices return NaN images, ``void`` indices
    all-ignore masks, ``fail_after`` makes loading raise (a simulated crash), ``delay`` slows each
    item (to kill a run mid-way).
    """

    def __init__(
        self, n=16, num_classes=4, size=64, seed=0, delay=0.0, poison=(), fail_after=None, flip=True, void=()
    ):
        names = tuple(f"c{i}" for i in range(num_classes))
        self.info = DatasetInfo("tiny", names, default_palette(num_classes), crop_size=size, base_size=size)
        self.samples = [_Sample(f"img{i:03d}") for i in range(n)]
        self.n, self.size, self.seed, self.delay = n, size, seed, delay
        self.poison, self.fail_after, self.flip, self.void = set(poison), fail_after, flip, set(void)
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
        if index in self.void:
            mask = np.full_like(mask, 255)
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


def test_skip_stops_after_too_many_nonfinite_steps_in_a_row(tmp_path):
    """Skipping leaves the weights finite, so only the streak can tell a bad batch from a diverged
    model: the run stops at the MAX_SKIPS_IN_A_ROW-th non-finite step in a row."""
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(out, **{"optim.iterations": MAX_SKIPS_IN_A_ROW + 5}))
    with pytest.raises(NonFiniteLossError, match=f"iteration {MAX_SKIPS_IN_A_ROW}: the last "):
        train(cfg, TinyDataset(8, poison=set(range(8))))
    skips = [e for e in read_metrics(out) if e.get("action") == "skipped"]
    assert len(skips) == MAX_SKIPS_IN_A_ROW - 1


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
    with pytest.raises(InputError, match="--resume") as info:
        train(cfg, TinyDataset(8))
    # the Python API has no flags: the message also names what to set there
    assert "resume=True" in str(info.value) and "output.dir" in str(info.value)


def test_micro_batch_of_one_is_refused_with_the_change_that_helps(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"optim.accumulate": 2}))
    with pytest.raises(InputError, match="micro-batch.*lower optim.accumulate"):
        train(cfg, TinyDataset(8))
    cfg = load_config(None, tiny_overrides(tmp_path / "run1", **{"optim.batch_size": 1}))
    with pytest.raises(InputError, match="micro-batch.*raise optim.batch_size"):
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
    # resuming the finished run trains nothing and says so
    assert main([*_command_args(data, out), "--set", "data.dataset=null", "--resume"]) == 0
    assert "already complete (4/4 iterations)" in capsys.readouterr().out


def test_command_refuses_a_dataset_failing_verification(tmp_path, capsys):
    data = _folder_dataset(tmp_path / "data", 4, bad_value=9)
    assert main([*_command_args(data, tmp_path / "run"), "--set", "data.dataset=null"]) == 2
    err = capsys.readouterr().err
    assert "verification" in err and "data.verify=false" in err


def test_command_rejects_bad_config_values(tmp_path, capsys):
    assert main(["train", "--config", "demo", "--set", "optim.amp=fp8"]) == 2
    assert "optim.amp" in capsys.readouterr().err


def test_command_refuses_a_bad_validation_mask_before_training(tmp_path, capsys):
    """The val split is verified before step 1: a bad val mask costs seconds, not the whole run."""
    data = _folder_dataset(tmp_path / "data", 4)
    mask = np.array(Image.open(data / "masks" / "val" / "001.png"))
    mask[:2, :2] = 30
    Image.fromarray(mask).save(data / "masks" / "val" / "001.png")
    out = tmp_path / "run"
    assert main([*_command_args(data, out), "--set", "data.dataset=null"]) == 2
    err = capsys.readouterr().err
    assert "validation dataset" in err and "001.png" in err and "30" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


# ----------------------------------------------------------------------------- data from the config


def _list_files(data: Path, folder: Path, data_root: Path | None = None) -> None:
    """train.txt / val.txt in ``folder`` listing the folder dataset's train / val pairs."""
    base = data_root if data_root is not None else folder
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        lines = [
            f"{(data / 'images' / split / f'{i:03d}.png').relative_to(base)} "
            f"{(data / 'masks' / split / f'{i:03d}.png').relative_to(base)}"
            for i in range(4 if split == "train" else 2)
        ]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (folder / "classes.txt").write_text("c0\nc1\nc2\nc3\n")


def _open(root: Path, *sets: str):
    config = load_config("demo", ["data.dataset=null", f"data.root={root}", "data.kind=list", *sets])
    return open_train_datasets(config, PYTORCH_PREPROCESS)


def test_a_list_dataset_validates_on_its_val_list_never_on_the_training_list(tmp_path, monkeypatch):
    data = _folder_dataset(tmp_path / "data", 4)
    _list_files(data, data)
    train_list = data / "train.txt"
    val_images = [data / "images" / "val" / f"{i:03d}.png" for i in range(2)]
    for val_split in ("val", "val.txt", str(data / "val.txt")):
        train_set, val_set = _open(train_list, f"data.val_split={val_split}")
        assert [s.image.resolve() for s in val_set.samples] == val_images
        assert len(train_set.samples) == 4
    monkeypatch.chdir(tmp_path)
    _, val_set = _open(train_list, "data.val_split=data/val.txt")  # relative to the working directory
    assert [s.image.resolve() for s in val_set.samples] == val_images
    assert _open(train_list, "data.val_split=null")[1] is None
    with pytest.raises(
        InputError, match=r"data\.val_split='test'.*set data\.val_split to the val list path or null"
    ):
        _open(train_list, "data.val_split=test")
    with pytest.raises(InputError, match="training list .* itself"):
        _open(train_list, "data.val_split=train")


def test_list_files_kept_apart_from_the_data_use_data_root(tmp_path):
    """The authors' layout: list/train.txt with paths relative to the dataset root."""
    data = _folder_dataset(tmp_path / "data", 4)
    _list_files(data, tmp_path / "lists", data_root=data)
    with pytest.raises(
        DataError, match=r"but missing.*give it as the data root \(--data-root DIR, data\.data_root\)"
    ):
        _open(tmp_path / "lists" / "train.txt")
    train_set, val_set = _open(tmp_path / "lists" / "train.txt", f"data.data_root={data}")
    assert [s.image for s in train_set.samples] == [
        data / "images" / "train" / f"{i:03d}.png" for i in range(4)
    ]
    assert [s.image for s in val_set.samples] == [data / "images" / "val" / f"{i:03d}.png" for i in range(2)]


def test_a_flat_folder_has_no_validation_split(tmp_path):
    data = tmp_path / "flat"
    split = _folder_dataset(tmp_path / "split", 4)
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(4):
        (data / "images" / f"{i}.png").write_bytes((split / "images" / "train" / f"{i:03d}.png").read_bytes())
        (data / "masks" / f"{i}.png").write_bytes((split / "masks" / "train" / f"{i:03d}.png").read_bytes())
    (data / "classes.txt").write_text("c0\nc1\nc2\nc3\n")
    sets = ["data.dataset=null", f"data.root={data}", "data.kind=folder"]
    with pytest.raises(InputError, match=r"no val/ folder.*training images.*data\.val_split=null"):
        open_train_datasets(load_config("demo", sets), PYTORCH_PREPROCESS)
    train_set, val_set = open_train_datasets(
        load_config("demo", [*sets, "data.val_split=null"]), PYTORCH_PREPROCESS
    )
    assert len(train_set) == 4 and val_set is None


def test_ignore_index_reaches_the_dataset_the_padding_the_loss_and_the_model(tmp_path, capsys):
    """Masks that mark unlabelled pixels with 9 (4 classes): refused by default, trained with
    data.ignore_index=9; the crop padding uses 9 too."""
    data = _folder_dataset(tmp_path / "data", 4)
    for split in ("train", "val"):
        for i in range(4):
            path = data / "masks" / split / f"{i:03d}.png"
            mask = np.array(Image.open(path))
            mask[:8] = 9
            Image.fromarray(mask).save(path)
    sets = ["data.dataset=null", f"data.root={data}", "data.kind=folder", "data.crop_size=96"]
    sets += ["data.scale=null", "data.rotate=null"]
    train_set, val_set = open_train_datasets(
        load_config("demo", [*sets, "data.ignore_index=9"]), PYTORCH_PREPROCESS
    )
    assert train_set.info.ignore_index == 9 and val_set.info.ignore_index == 9
    item = train_set[0]
    assert item["mask"].shape == (96, 96)
    padding = item["image"].abs().sum(0) == 0  # padded with the mean colour: zero after normalising
    assert padding.sum() >= 96 * 96 - 64 * 64 and bool((item["mask"][padding] == 9).all())
    out = tmp_path / "run"
    args = [*_command_args(data, out), *[a for s in [*sets, "data.ignore_index=9"] for a in ("--set", s)]]
    assert main(args) == 0, capsys.readouterr().err
    assert load_model(out / "model.safetensors").dataset_info.ignore_index == 9
    assert all(math.isfinite(e["loss"]) for e in read_metrics(out) if "loss" in e)
    assert main([*_command_args(data, tmp_path / "run2"), *[a for s in sets for a in ("--set", s)]]) == 2
    assert "9" in capsys.readouterr().err  # label 9 outside [0, 4) without data.ignore_index


def test_ignore_index_must_match_a_given_dataset(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "run", **{"data.ignore_index": 0}))
    with pytest.raises(InputError, match=r"data\.ignore_index=0 .* 255"):
        train(cfg, TinyDataset(8))


def _voc_dataset(root: Path, n: int = 4, size: tuple[int, int] = (48, 40)) -> Path:
    """A small PASCAL VOC 2012 layout (21 classes, grey masks) with train and val lists."""
    voc = root / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"2007_{i:06d}" for i in range(2 * n)]
    for name in names:
        mask = np.kron(rng.integers(0, 21, (4, 4)), np.ones((size[1] // 4, size[0] // 4))).astype(np.uint8)
        image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:n]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[n:]) + "\n")
    return voc


def test_validation_during_training_uses_the_eval_protocol(tmp_path, monkeypatch):
    """VOC images are resized to the VOC base size (512) as `pspnet eval` does, and the sliding
    window is the training crop, which the saved model records for later `pspnet eval --mode slide`."""
    import pspnet.engine.evaluate as evaluate_module

    calls = []
    real = evaluate_module.evaluate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", spy)
    voc = _voc_dataset(tmp_path / "voc")
    out = tmp_path / "run"
    sets = {"data.root": str(voc), "data.kind": "voc2012", "data.crop_size": 40, "data.train_split": "train"}
    sets.update({"optim.iterations": 2, "eval.mode": "slide", "eval.limit": 1, "data.dataset": None})
    train(load_config("demo", tiny_overrides(out, **sets)))
    assert [(c["base_size"], c["crop_size"], c["mode"]) for c in calls] == [(512, 40, "slide")]
    info = load_model(out / "model.safetensors").dataset_info
    assert (info.name, info.crop_size, info.base_size) == ("voc2012", 40, 512)
    with pytest.raises(InputError, match=r"data\.ignore_index=254: .*255"):  # the VOC layout maps void to 255
        train(load_config("demo", tiny_overrides(tmp_path / "r2", **sets, **{"data.ignore_index": 254})))


def test_all_void_batch_is_a_zero_loss_not_a_divergence(tmp_path):
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    void = torch.full((2, 8, 8), 255)
    loss, _, aux = segmentation_loss({"out": logits}, void)
    assert loss.item() == 0.0 and aux is None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    target = void.clone()
    target[0, :3] = 2
    target[1, 5:, 2:] = 1
    reference = F.cross_entropy(logits.detach(), target, ignore_index=255)  # mean over labelled pixels
    torch.testing.assert_close(segmentation_loss({"out": logits.detach()}, target)[0], reference)
    # a whole run over all-void crops: nothing non-finite, nothing aborted
    out = tmp_path / "run"
    result = train(load_config(None, tiny_overrides(out, nonfinite="abort")), TinyDataset(8, void=range(8)))
    assert result.skipped_steps == [] and [e["loss"] for e in read_metrics(out)] == [0.0] * 4


def test_freeze_bn_trains_with_a_micro_batch_of_one(tmp_path):
    settings = {"optim.accumulate": 2, "model.freeze_bn": True}
    result = train(load_config(None, tiny_overrides(tmp_path / "run", **settings)), TinyDataset(8))
    assert result.iterations == 4 and load_model(result.model_path).num_classes == 4


def test_log_lines_total_loss_and_the_epoch_of_their_iteration(tmp_path):
    """8 images, batch 2: 4 steps per epoch. The val line of iteration 4 (the last of epoch 0)
    says epoch 0 like the train line; total_loss is what is optimised, main + 0.4 aux."""
    out = tmp_path / "run"
    settings = {"optim.iterations": 8, "eval.interval": 4, "eval.limit": 1}
    train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(8), TinyDataset(2, seed=9))
    lines = read_metrics(out)
    epochs = {(e["iter"], "val_miou" in e): e["epoch"] for e in lines}
    assert epochs[(4, False)] == epochs[(4, True)] == 0 and epochs[(8, False)] == epochs[(8, True)] == 1
    for e in (e for e in lines if "loss" in e):
        assert e["total_loss"] == pytest.approx(e["loss"] + 0.4 * e["aux_loss"], rel=1e-5)


def test_throughput_leaves_out_validation_and_checkpoint_time(tmp_path, monkeypatch):
    """A fake clock: each reading advances 1 ms, each validation 1000 s. The images/s of the
    window after a validation would be ~0.002 if the validation counted."""
    import pspnet.engine.train as engine

    clock = {"t": 0.0}

    def perf_counter():
        clock["t"] += 0.001
        return clock["t"]

    real = engine._validate

    def slow_validate(*args, **kwargs):
        clock["t"] += 1000.0
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "time", type("FakeTime", (), {"perf_counter": staticmethod(perf_counter)}))
    monkeypatch.setattr(engine, "_validate", slow_validate)
    out = tmp_path / "run"
    settings = {"optim.iterations": 4, "eval.interval": 2, "eval.limit": 1}
    result = train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(8), TinyDataset(2, seed=9))
    speeds = [e["images_per_s"] for e in read_metrics(out) if "loss" in e]
    assert len(speeds) == 4 and min(speeds) > 1.0 and result.images_per_s > 1.0


class _BrokenVal(TinyDataset):
    def load_raw(self, index):
        raise DataError(f"val_{index}.png: label values [30] outside [0, 4)")


def test_a_failing_final_validation_keeps_the_trained_model(tmp_path):
    """The final checkpoint and model.safetensors are written before the final validation; after
    fixing the data, --resume validates them without training again."""
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"final validation failed: val_0\.png.*--resume"):
        train(load_config(None, tiny_overrides(out)), TinyDataset(8), _BrokenVal(2))
    assert (out / "last").read_text().strip() == "checkpoints/iter_00000004"
    assert load_model(out / "model.safetensors").num_classes == 4
    data = TinyDataset(8)
    result = train(load_config(None, tiny_overrides(out, resume=True)), data, TinyDataset(2, seed=9))
    assert data.loads == 0  # nothing trained again
    val = [e for e in read_metrics(out) if "val_miou" in e]
    assert [e["iter"] for e in val] == [4] and result.best_miou == val[0]["val_miou"]
    assert load_model(out / "best.safetensors").num_classes == 4
    # resuming the finished, validated run validates nothing again
    train(load_config(None, tiny_overrides(out, resume=True)), TinyDataset(8), _BrokenVal(2))


def test_a_run_killed_before_its_first_checkpoint_still_needs_resume(tmp_path):
    """Its metrics.jsonl would mix with a new run's: refused without --resume; --resume starts over."""
    out = tmp_path / "run"
    settings = {"output.checkpoint_interval": 10, "optim.iterations": 6}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_config(None, tiny_overrides(out, **settings)), TinyDataset(8, fail_after=2 * 3))
    assert not (out / "last").exists() and (out / "metrics.jsonl").exists()
    with pytest.raises(InputError, match=r"already holds a training run \(metrics\.jsonl\).*--resume"):
        train(load_config(None, tiny_overrides(out, **settings, seed=3)), TinyDataset(8))
    train(load_config(None, tiny_overrides(out, resume=True, **settings)), TinyDataset(8))
    assert [e["iter"] for e in read_metrics(out)] == [1, 2, 3, 4, 5, 6]
