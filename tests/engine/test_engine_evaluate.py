"""Dataset evaluation: confusion over the whole dataset, reports, DDP sharding."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from pspnet import create_model
from pspnet.data.info import DatasetInfo, default_palette
from pspnet.engine.evaluate import EvalResult, evaluate, protocol_base_size
from pspnet.engine.inference import predict_probs
from pspnet.errors import DataError, InputError

NAMES = ("sky", "road", "boat", "car")


class FakeDataset:
    """Implements the evaluation contract (info, __len__, load_raw) with random images in memory."""

    def __init__(self, sizes: list[tuple[int, int]], num_classes: int = 4, seed: int = 0) -> None:
        names = NAMES[:num_classes] if num_classes <= 4 else tuple(f"c{i}" for i in range(num_classes))
        self.info = DatasetInfo("fake", names, default_palette(num_classes), crop_size=33, base_size=64)
        rng = np.random.default_rng(seed)
        self.items: list[tuple[np.ndarray, np.ndarray | None]] = []
        for h, w in sizes:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            mask = rng.integers(0, num_classes, (h, w)).astype(np.int64)
            mask[rng.random((h, w)) < 0.2] = 255
            self.items.append((image, mask))
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        self.loaded.append(index)
        return self.items[index]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
    return net


def _manual_confusion(model: torch.nn.Module, dataset: FakeDataset, **kwargs) -> np.ndarray:
    conf = np.zeros((4, 4), dtype=np.int64)
    for image, mask in dataset.items:
        if mask is None:
            continue
        pred = predict_probs(model, image, **kwargs).argmax(0).numpy()
        keep = mask != 255
        np.add.at(conf, (mask[keep], pred[keep]), 1)
    return conf


def test_confusion_accumulates_over_the_whole_dataset(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(40, 52), (33, 33), (25, 60)])
    result = evaluate(model, dataset, progress=False)
    expected = _manual_confusion(model, dataset)
    assert np.array_equal(result.confusion, expected)
    assert result.num_images == 3
    inter = np.diag(expected)
    union = expected.sum(0) + expected.sum(1) - inter
    assert result.metrics.miou == pytest.approx(float(np.mean(inter / (union + 1e-10))))
    assert result.metrics.labelled_pixels == int(sum((m != 255).sum() for _, m in dataset.items))


def test_settings_are_passed_to_the_inference(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(30, 41), (45, 28)], seed=1)
    settings = {"mode": "slide", "crop_size": 25, "flip": True, "scales": (0.75, 1.0), "base_size": 48}
    result = evaluate(model, dataset, progress=False, **settings)
    assert np.array_equal(result.confusion, _manual_confusion(model, dataset, **settings))
    assert result.settings["mode"] == "slide" and result.settings["scales"] == [0.75, 1.0]


def test_slide_crop_falls_back_to_the_authors_dataset_crop_only(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(40, 52)], seed=2)
    dataset.kind = "cityscapes"  # the authors' layouts carry a real crop size
    result = evaluate(model, dataset, mode="slide", progress=False)
    assert result.settings["crop_size"] == 33
    assert np.array_equal(result.confusion, _manual_confusion(model, dataset, mode="slide", crop_size=33))
    dataset.kind = "folder"  # a folder dataset's crop is a placeholder: no silent guess
    with pytest.raises(InputError, match="needs a crop size"):
        evaluate(model, dataset, mode="slide", progress=False)


def test_protocol_base_size_follows_the_layout_not_the_name() -> None:
    dataset = FakeDataset([(20, 20)])
    dataset.info = dataclasses.replace(dataset.info, name="cityscapes")
    for kind, expected in (
        ("cityscapes", 64),
        ("ade20k", 64),
        ("voc2012", 64),
        ("folder", None),
        ("list", None),
    ):
        dataset.kind = kind
        assert protocol_base_size(dataset) == expected
    del dataset.kind  # a hand-made dataset: its own size
    assert protocol_base_size(dataset) is None


def test_unlabelled_images_are_skipped_and_limit_stops_early(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(20, 20), (20, 24), (24, 20)], seed=3)
    dataset.items[1] = (dataset.items[1][0], None)
    result = evaluate(model, dataset, progress=False)
    assert result.num_images == 2
    dataset.loaded.clear()
    limited = evaluate(model, dataset, progress=False, limit=1)
    assert dataset.loaded == [0] and limited.num_images == 1


def test_kept_examples_are_the_first_scored_images_with_their_predictions(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(20, 22), (24, 20), (26, 30)], seed=4)
    dataset.items[0] = (dataset.items[0][0], None)  # unlabelled: not scored, not kept
    assert evaluate(model, dataset, progress=False).examples == []  # off by default
    result = evaluate(model, dataset, progress=False, keep_examples=1)
    assert [e.index for e in result.examples] == [1]
    image, mask = dataset.items[1]
    kept = result.examples[0]
    assert kept.image is image and kept.mask is mask
    np.testing.assert_array_equal(kept.pred, predict_probs(model, image).argmax(0).numpy())
    assert [e.index for e in evaluate(model, dataset, progress=False, keep_examples=5).examples] == [1, 2]


def test_boundary_f_is_one_when_the_mask_is_the_prediction_and_off_by_default(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(48, 64), (40, 40)], seed=5)
    preds = [predict_probs(model, image).argmax(0).numpy() for image, _ in dataset.items]
    dataset.items = [
        (image, pred.astype(np.int64)) for (image, _), pred in zip(dataset.items, preds, strict=True)
    ]
    assert evaluate(model, dataset, progress=False).boundary is None
    result = evaluate(model, dataset, progress=False, boundary=True)
    assert result.boundary is not None
    edged = [bool(np.any(p[:, 1:] != p[:, :-1]) or np.any(p[1:] != p[:-1])) for p in preds]
    assert any(edged) and sum(result.boundary.present) >= 2
    assert all(
        f == 1.0 for f, present in zip(result.boundary.f, result.boundary.present, strict=True) if present
    )
    assert result.boundary.mean_f == 1.0
    assert "boundary" in result.to_dict() and "BndF" in result.format_table()
    # shift every mask by 4 px (tolerance at these sizes: 1 px): edges no longer line up
    dataset.items = [(image, np.roll(mask, 4, axis=1)) for image, mask in dataset.items]
    shifted = evaluate(model, dataset, progress=False, boundary=True).boundary
    assert shifted is not None and shifted.mean_f < 1.0


def test_an_image_the_network_refuses_is_a_data_error_naming_the_sample(model: torch.nn.Module) -> None:
    dataset = FakeDataset([(20, 20), (5, 30)], seed=6)
    with pytest.raises(DataError, match=r"^sample 1: .*--mode slide pads small images"):
        evaluate(model, dataset, mode="whole", progress=False)


def test_class_count_mismatch_is_an_input_error(model: torch.nn.Module) -> None:
    with pytest.raises(InputError, match="4 classes but dataset 'fake' has 5"):
        evaluate(model, FakeDataset([(20, 20)], num_classes=5), progress=False)


def test_reports_table_json_and_confusion_plot(model: torch.nn.Module, tmp_path: Path) -> None:
    dataset = FakeDataset([(30, 30)], seed=4)
    for _, mask in dataset.items:
        mask[mask == 3] = 255  # class "car" never in the ground truth
    result = evaluate(model, dataset, progress=False)
    table = result.format_table()
    for name in NAMES:
        assert name in table
    assert "mIoU" in table and "allAcc" in table
    car_present = result.metrics.present[3]
    assert ("absent" in table.splitlines()[4]) == (not car_present)

    path = result.to_json(tmp_path / "out" / "metrics.json")
    data = json.loads(path.read_text())
    assert data["metrics"]["miou"] == pytest.approx(result.metrics.miou)
    assert [c["name"] for c in data["metrics"]["per_class"]] == list(NAMES)
    assert data["settings"]["mode"] == "whole"
    assert np.array_equal(np.array(data["confusion"]), result.confusion)

    plot = result.save_confusion_plot(tmp_path / "out" / "confusion.png")
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["confusion.png", "metrics.json"]


def test_absent_row_in_table_says_absent() -> None:
    conf = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    from pspnet.engine.metrics import metrics_from_confusion

    result = EvalResult(metrics_from_confusion(conf), conf, ["a", "b", "c"], num_images=1)
    lines = result.format_table().splitlines()
    assert "absent" in lines[3] and "absent" not in lines[1] + lines[2]
    assert "100.00" in lines[1]


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.manual_seed(0)
        net = create_model("pspnet_tiny", num_classes=4).eval()
        dataset = FakeDataset([(20, 24), (24, 20), (28, 28), (20, 20), (22, 26)], seed=5)
        result = evaluate(net, dataset, progress=False)
        np.save(os.path.join(out_dir, f"conf{rank}.npy"), result.confusion)
        Path(out_dir, f"loaded{rank}.json").write_text(json.dumps([dataset.loaded, result.num_images]))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_ranks_shard_and_all_reduce(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    single = evaluate(
        net, FakeDataset([(20, 24), (24, 20), (28, 28), (20, 20), (22, 26)], seed=5), progress=False
    )
    for rank, shard in ((0, [0, 2, 4]), (1, [1, 3])):
        assert np.array_equal(np.load(tmp_path / f"conf{rank}.npy"), single.confusion)
        loaded, count = json.loads((tmp_path / f"loaded{rank}.json").read_text())
        assert loaded == shard and count == 5


def _void_topped_masks(seed: int, sizes: dict[str, tuple[int, int]], rows: int, void: int) -> dict:
    """Random 4-class masks whose top ``rows`` rows hold the ``void`` value."""
    rng = np.random.default_rng(seed)
    masks = {stem: rng.integers(0, 4, size).astype(np.uint8) for stem, size in sizes.items()}
    for mask in masks.values():
        mask[:rows] = void
    return masks


def test_eval_command_on_a_folder_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pspnet.data.datasets")
    from pspnet.cli import main
    from pspnet.io.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model_path = save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(7)
    masks = {}
    for stem, (h, w) in {"p": (30, 41), "q": (36, 28), "r": (25, 25)}.items():
        (tmp_path / "data" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "images" / f"{stem}.png"
        )
        mask = rng.integers(0, 4, (h, w)).astype(np.uint8)
        mask[:3] = 255
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{stem}.png")
        masks[stem] = mask
    (tmp_path / "data" / "classes.txt").write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_path), "--data", str(tmp_path / "data"), "--out", str(out)]
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "boat" in printed and "mIoU" in printed

    # Expected confusion computed independently from the files, with the public predict API.
    from pspnet.prediction import predict

    net = load_model(model_path)
    conf = np.zeros((4, 4), dtype=np.int64)
    for stem, mask in masks.items():
        labels = predict(net, tmp_path / "data" / "images" / f"{stem}.png").labels
        keep = mask != 255
        np.add.at(conf, (mask[keep].astype(np.int64), labels[keep].astype(np.int64)), 1)
    data = json.loads((out / "metrics.json").read_text())
    assert np.array_equal(np.array(data["confusion"]), conf)
    assert data["num_images"] == 3 and data["settings"]["split"] == "val"
    assert (out / "confusion.png").stat().st_size > 0

    assert main([*argv, "--limit", "1", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 1

    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--no-progress", "--boundary"]) == 0
    assert "BndF" in capsys.readouterr().out
    assert "boundary" in json.loads((out / "metrics.json").read_text())
    assert main([*argv, "--device", "cpu", "--no-progress", "--amp", "bf16"]) == 2  # autocast: CUDA only
    assert "--amp bf16 needs a CUDA device" in capsys.readouterr().err


def _write_pairs(root: Path, masks: dict[str, np.ndarray], seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for stem, mask in masks.items():
        h, w = mask.shape
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")


def _confusion_from_predict(
    model_path: Path, root: Path, masks: dict[str, np.ndarray], ignore: int
) -> np.ndarray:
    from pspnet.io.checkpoint import load_model
    from pspnet.prediction import predict

    net = load_model(model_path)
    conf = np.zeros((4, 4), dtype=np.int64)
    for stem, mask in masks.items():
        labels = predict(net, root / "images" / f"{stem}.png").labels
        keep = mask != ignore
        np.add.at(conf, (mask[keep].astype(np.int64), labels[keep].astype(np.int64)), 1)
    return conf


def test_eval_command_folder_name_list_file_and_ignore_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder named like an authors' dataset is still scored at its own size; a list file needs
    no --split; --ignore-index changes which pixels are scored."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model = create_model("pspnet_tiny", num_classes=4).eval()
    model.dataset_info = DatasetInfo("m", NAMES, default_palette(4), crop_size=33, base_size=512)
    model_path = save_model(model, tmp_path / "m.safetensors")
    masks = _void_topped_masks(seed=3, sizes={"a": (30, 41), "b": (27, 20)}, rows=2, void=255)
    root = tmp_path / "ade20k"  # the name of an authors' dataset, the layout of a folder dataset
    _write_pairs(root, masks, seed=4)
    expected = _confusion_from_predict(model_path, root, masks, ignore=255)  # own size, no base_size
    out = tmp_path / "report"
    base = ["eval", "--model", str(model_path), "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main([*base, "--data", str(root)]) == 0
    data = json.loads((out / "metrics.json").read_text())
    assert np.array_equal(np.array(data["confusion"]), expected) and data["settings"]["base_size"] is None

    (root / "val.txt").write_text("".join(f"images/{s}.png masks/{s}.png\n" for s in masks))
    assert main([*base, "--data", str(root / "val.txt"), "--kind", "list"]) == 0
    assert np.array_equal(np.array(json.loads((out / "metrics.json").read_text())["confusion"]), expected)

    void4 = {s: np.where(m == 255, 4, m).astype(np.uint8) for s, m in masks.items()}
    _write_pairs(tmp_path / "void4", void4, seed=4)
    assert main([*base, "--data", str(tmp_path / "void4"), "--ignore-index", "4"]) == 0
    got = np.array(json.loads((out / "metrics.json").read_text())["confusion"])
    assert np.array_equal(got, expected)  # the same pixels scored as with 255 in the masks
    # a class id as ignore index: class 0 would be predicted but never scored (refused, one line)
    capsys.readouterr()
    assert main([*base, "--data", str(tmp_path / "void4"), "--ignore-index", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: ignore index 0 is class 0 'sky' of " in err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scales": (-1.0,)}, "scales must be positive"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"base_size": 0}, "base_size must be >= 1"),
        ({"mode": "slide", "crop_size": -5}, "crop_size must be >= 1"),
        ({"mode": "slide", "crop_size": 0}, "crop_size must be >= 1"),  # 0 is not "the default"
        ({"amp_dtype": torch.bfloat16}, r"amp_dtype=torch.bfloat16 needs a CUDA device"),
    ],
)
def test_bad_settings_are_refused_before_any_image_as_settings(
    model: torch.nn.Module, kwargs: dict, match: str
) -> None:
    dataset = FakeDataset([(20, 20), (24, 24)], seed=8)
    with pytest.raises(InputError, match=f"^{match}") as info:
        evaluate(model, dataset, progress=False, **kwargs)
    assert not isinstance(info.value, DataError)  # not blamed on a sample
    assert "sample" not in str(info.value) and "pads small images" not in str(info.value)
    assert dataset.loaded == []  # refused before the first image was read


def test_eval_command_checks_options_before_loading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model path does not exist: each error below can only come from the upfront check."""
    from pspnet.cli import main

    (tmp_path / "afile").write_text("")
    base = [
        "eval",
        "--model",
        str(tmp_path / "missing.safetensors"),
        "--data",
        str(tmp_path),
        "--no-progress",
    ]
    cases = [
        (["--scales", "-1"], "--scales must be positive numbers, got -1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--base-size", "-3"], "--base-size must be >= 1 pixel, got -3"),
        (["--mode", "slide", "--crop-size", "-5"], "--crop-size must be >= 1 pixel, got -5"),
        (["--crop-size", "0"], "--crop-size must be >= 1 pixel, got 0"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
        (["--out", str(tmp_path / "afile")], "afile is a file, not a folder"),
        (["--out", str(tmp_path / "afile" / "sub")], "afile is a file, not a folder"),
        (["--data-root", str(tmp_path)], "--data-root is only for list files"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda requested but no CUDA device is available"))
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)


def test_eval_command_reads_a_list_file_against_data_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authors keep list files apart from the data: --data-root says where the paths start,
    and the error without it says so. A list file is one split: --split is refused, not ignored."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model_path = save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(5)
    masks = {
        s: rng.integers(0, 4, (h, w)).astype(np.uint8) for s, (h, w) in {"a": (30, 41), "b": (22, 26)}.items()
    }
    data = tmp_path / "data"
    _write_pairs(data, masks, seed=6)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classes.txt").write_text("\n".join(NAMES) + "\n")
    (lists / "val.txt").write_text("".join(f"images/{s}.png masks/{s}.png\n" for s in masks))
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_path), "--data", str(lists / "val.txt"), "--kind", "list"]
    assert main([*argv, "--data-root", str(data), "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert np.array_equal(
        np.array(result["confusion"]), _confusion_from_predict(model_path, data, masks, 255)
    )
    assert result["settings"]["data_root"] == str(data)
    capsys.readouterr()
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 2  # without it the paths resolve nowhere
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"pspnet eval: error: {lists / 'val.txt'} (list): 4 problem"
    )
    assert "split" not in err  # the user gave none: "split 'train'" was an internal convention
    assert "the paths are read relative to the list file's folder" in err and "--data-root DIR" in err
    for split in ("train", "val"):
        assert main([*argv, "--data-root", str(data), "--device", "cpu", "--split", split]) == 2
        assert capsys.readouterr().err == (
            f"pspnet eval: error: --split {split}: {lists / 'val.txt'} is a list file, which is one split; "
            "leave --split out and pass the list file of the split to score\n"
        )


def test_eval_of_a_list_names_the_authors_base_size_when_the_model_is_theirs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list file is read at each image's own size; for a model of the authors' label spaces the
    run says which --base-size gives their protocol (and says nothing for other models)."""
    from pspnet.cli import main
    from pspnet.data.info import VOC2012
    from pspnet.io.checkpoint import save_model
    from pspnet.models.registry import attach_metadata

    rng = np.random.default_rng(1)
    masks = {"a": rng.integers(0, 4, (30, 41)).astype(np.uint8)}
    data = tmp_path / "data"
    _write_pairs(data, masks, seed=2)
    (data / "val.txt").write_text("images/a.png masks/a.png\n")
    voc = create_model("pspnet_tiny", num_classes=21).eval()
    voc = attach_metadata(voc, "pspnet_tiny", VOC2012, voc.preprocess)
    models = {
        "voc": save_model(voc, tmp_path / "voc.safetensors"),
        "folder": save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "f.safetensors"),
    }
    folder_classes = (data / "classes.txt").read_text()
    for name, path in models.items():
        classes = "\n".join(VOC2012.class_names) + "\n" if name == "voc" else folder_classes
        (data / "classes.txt").write_text(classes)
        argv = [
            "eval",
            "--model",
            str(path),
            "--data",
            str(data / "val.txt"),
            "--device",
            "cpu",
            "--no-progress",
        ]
        for base in ([], ["--base-size", "64"]):
            assert main([*argv, *base]) == 0
            noted = "the authors' voc2012 protocol resizes the long side to 512: add --base-size 512"
            assert (noted in capsys.readouterr().err) is (name == "voc" and not base)


def _rgb_copy(grey: Path, rgb: Path, masks: dict[str, np.ndarray]) -> None:
    """The same dataset with its masks saved as RGB colour masks in VOC's colours (void: cream)."""
    colours = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 255: (224, 224, 192)}
    (rgb / "masks").mkdir(parents=True)
    (rgb / "images").symlink_to(grey / "images")
    (rgb / "classes.txt").write_text((grey / "classes.txt").read_text())
    for stem, mask in masks.items():
        coloured = np.zeros((*mask.shape, 3), dtype=np.uint8)
        for value, colour in colours.items():
            coloured[mask == value] = colour
        Image.fromarray(coloured).save(rgb / "masks" / f"{stem}.png")


def test_eval_command_reads_rgb_colour_masks_with_mask_palette(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dataset of colour masks that verify-dataset and training accept is scored by eval too,
    exactly as the same masks saved as ids; the option is checked before the model is opened."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model_path = save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "m.safetensors")
    rng = np.random.default_rng(11)
    masks = {
        s: rng.integers(0, 4, (h, w)).astype(np.uint8) for s, (h, w) in {"a": (30, 41), "b": (27, 20)}.items()
    }
    for mask in masks.values():
        mask[-2:] = 255
    _write_pairs(tmp_path / "grey", masks, seed=12)
    _rgb_copy(tmp_path / "grey", tmp_path / "rgb", masks)
    expected = _confusion_from_predict(model_path, tmp_path / "grey", masks, ignore=255)
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_path), "--data", str(tmp_path / "rgb"), "--device", "cpu"]
    assert main([*argv, "--no-progress", "--out", str(out), "--mask-palette", "voc2012"]) == 0
    assert np.array_equal(np.array(json.loads((out / "metrics.json").read_text())["confusion"]), expected)
    capsys.readouterr()

    assert main([*argv, "--no-progress"]) == 2  # colour masks without a palette: refused by name
    assert "looks like an RGB colour mask" in capsys.readouterr().err
    verify = ["verify-dataset", str(tmp_path / "rgb"), "--split", "val", "--no-progress"]
    assert main([*verify, "--mask-palette", "voc2012"]) == 0  # the same option, shared
    capsys.readouterr()

    missing = ["eval", "--model", str(tmp_path / "missing.safetensors"), "--data", str(tmp_path / "rgb")]
    for name, message in [
        ("vocx", "--mask-palette vocx: no such palette; choose one of cityscapes, context_demo, voc2012"),
        ("ade20k", "--mask-palette ade20k: the ade20k palette gives ids"),  # two ids share a colour
    ]:
        assert main([*missing, "--mask-palette", name]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_class_names_note_names_the_first_difference_and_counts_them() -> None:
    from pspnet.engine.evaluate import class_names_note

    note = class_names_note(("e", "d", "c", "b", "a"), tuple("abcde"), "data/classes.txt")
    assert note == (
        "note: data/classes.txt lists class 0 as 'e' but the model calls it 'a' (4 of 5 names differ); "
        "the table uses the dataset's names; check that the masks use the model's class order"
    )
    assert "class 2 as 'x'" in (class_names_note(("a", "b", "x"), ("a", "b", "c")) or "")
    assert class_names_note(tuple("abc"), tuple("abc")) is None
    assert class_names_note(("class_0", "class_1"), ("a", "b")) is None  # nothing known: no claim
    assert class_names_note(("a", "b"), ("class_0", "class_1")) is None
    assert class_names_note(("a", "b"), ("a", "b", "c")) is None  # a count mismatch is refused elsewhere


def test_eval_command_notes_dataset_class_names_that_contradict_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same class count, other names (a sorted classes.txt): one note naming the file; the table
    keeps the dataset's names. Same names, or generic names on either side: no note."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    named = create_model("pspnet_tiny", num_classes=4).eval()
    named.dataset_info = DatasetInfo("m", NAMES, default_palette(4), crop_size=33, base_size=64)
    models = {
        "named": save_model(named, tmp_path / "named.safetensors"),
        "bare": save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "bare.safetensors"),
    }
    masks = {"a": np.random.default_rng(2).integers(0, 4, (24, 30)).astype(np.uint8)}
    data = tmp_path / "data"
    _write_pairs(data, masks, seed=3)

    def run(model: str, *extra: str) -> tuple[str, str]:
        argv = [
            "eval",
            "--model",
            str(models[model]),
            "--data",
            str(data),
            "--device",
            "cpu",
            "--no-progress",
        ]
        assert main([*argv, *extra]) == 0
        captured = capsys.readouterr()
        return captured.out, captured.err

    sorted_names = sorted(NAMES)  # boat, car, road, sky: every position differs from NAMES
    (data / "classes.txt").write_text("\n".join(sorted_names) + "\n")
    out, err = run("named")
    assert err == (
        f"note: {data / 'classes.txt'} lists class 0 as 'boat' but the model calls it 'sky' (4 of 4 names "
        "differ); the table uses the dataset's names; check that the masks use the model's class order\n"
    )
    assert out.splitlines()[1].split()[:2] == ["0", "boat"]

    (data / "val.txt").write_text("images/a.png masks/a.png\n")  # a list file: the same file is named
    assert f"note: {data / 'classes.txt'} lists class 0" in run("named", "--data", str(data / "val.txt"))[1]

    assert run("bare")[1] == ""  # the model knows no names
    (data / "classes.txt").write_text("\n".join(NAMES) + "\n")
    assert run("named")[1] == ""  # the same names
    (data / "classes.txt").unlink()
    out, err = run("named")
    assert err == "" and out.splitlines()[1].split()[:2] == ["0", "sky"]  # no names: the model's


def test_eval_command_says_when_it_replaces_earlier_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model_path = save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "m.safetensors")
    _write_pairs(tmp_path / "data", {"a": np.zeros((20, 24), dtype=np.uint8)}, seed=1)
    out = tmp_path / "report"
    argv = ["eval", "--model", str(model_path), "--data", str(tmp_path / "data"), "--out", str(out)]

    def wrote() -> str:
        assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    assert wrote() == f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}"
    assert wrote().endswith("confusion.png (replaced the old files)")
    (out / "confusion.png").unlink()
    assert wrote().endswith("confusion.png (replaced the old file)")


@pytest.mark.parametrize("layout", ["folder", "list"])
def test_eval_command_uses_the_ignore_index_the_model_was_trained_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    """A model trained with data.ignore_index=4 records it; eval of data whose void pixels are 4
    then scores what training's validation scored without repeating --ignore-index (it used 255,
    and the void pixels were refused as labels outside the classes)."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model = create_model("pspnet_tiny", num_classes=4).eval()
    model.dataset_info = DatasetInfo("m", NAMES, default_palette(4), ignore_index=4)
    model_path = save_model(model, tmp_path / "m.safetensors")
    masks = _void_topped_masks(seed=7, sizes={"a": (30, 41), "b": (26, 20)}, rows=3, void=4)
    data = tmp_path / "data"
    _write_pairs(data, masks, seed=8)
    target = data
    if layout == "list":
        target = data / "val.txt"
        target.write_text("".join(f"images/{s}.png masks/{s}.png\n" for s in masks))
    expected = _confusion_from_predict(model_path, data, masks, ignore=4)  # by hand, void 4 left out
    out = tmp_path / "report"
    base = ["eval", "--model", str(model_path), "--data", str(target), "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) == 0
    assert capsys.readouterr().err == (
        "note: ignore index 4, as the model was trained with (--ignore-index to change)\n"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        np.array_equal(np.array(metrics["confusion"]), expected) and metrics["settings"]["ignore_index"] == 4
    )
    assert main([*base, "--ignore-index", "4", "--out", str(out)]) == 0  # the same, said explicitly
    assert capsys.readouterr().err == ""
    assert np.array_equal(np.array(json.loads((out / "metrics.json").read_text())["confusion"]), expected)
    assert main([*base, "--ignore-index", "255"]) == 2  # the option still wins: 4 is then a bad label
    assert "label values 4 (" in capsys.readouterr().err


def test_eval_command_prints_the_dataset_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hidden files skipped while listing are said by eval as by verify-dataset ("note: ..." lines)."""
    from pspnet.cli import main
    from pspnet.io.checkpoint import save_model

    torch.manual_seed(0)
    model_path = save_model(create_model("pspnet_tiny", num_classes=4).eval(), tmp_path / "m.safetensors")
    data = tmp_path / "data"
    _write_pairs(data, {"a": np.random.default_rng(1).integers(0, 4, (24, 30)).astype(np.uint8)}, seed=2)
    (data / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # macOS AppleDouble
    capsys.readouterr()
    assert (
        main(["eval", "--model", str(model_path), "--data", str(data), "--device", "cpu", "--no-progress"])
        == 0
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"note: skipped 1 hidden file(s) with image suffixes (1 in {data / 'images'})"
    )
