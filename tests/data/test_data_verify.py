"""verify_dataset and `pspnet verify-dataset` on good and broken trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pspnet.cli import main
from pspnet.data.datasets import open_dataset
from pspnet.data.verify import verify_dataset

H, W = 40, 48
Q = (H // 2) * (W // 2)  # pixels per quadrant


def test_clean_dataset_counts_pixels_per_class(trees) -> None:
    ds = open_dataset(trees.folder(), num_classes=3)
    report = verify_dataset(ds, progress=False)
    assert report.ok, report.problems
    # masks a=(0,1,2,255), b=(2,2,1,0), c=(1,1,1,1) quadrants
    assert report.class_pixels == [2 * Q, 6 * Q, 3 * Q]
    assert report.ignore_pixels == Q
    assert report.sizes == {"48x40": 3}
    assert report.num_checked == 3
    text = report.format()
    assert "class_1" in text and "48x40: 3" in text


def test_cityscapes_statistics_use_train_ids(trees) -> None:
    report = verify_dataset(open_dataset(trees.cityscapes(), split="train"), progress=False)
    assert report.ok
    expected = [0] * 19
    for train_id in (0, 13, 18, 1, 2, 11):  # labelIds 7, 26, 33, 8, 11, 24
        expected[train_id] += Q
    assert report.class_pixels == expected
    assert report.ignore_pixels == 2 * Q  # labelIds 0 and 6


def _broken_tree(trees) -> Path:
    root = trees.folder(
        masks={
            "good": trees.quadrants((0, 1, 1, 0)),
            "badvalue": trees.quadrants((0, 9, 1, 0)),
            "small": trees.quadrants((0, 1, 1, 0), h=20),
            "colour": trees.quadrants((0, 1, 1, 0)),
            "cutimage": trees.quadrants((0, 1, 1, 0)),
        }
    )
    trees.write_rgb(root / "images" / "small.png", trees.random_image(9))  # full size, mask is half
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, : W // 2] = (128, 0, 0)
    Image.fromarray(colour).save(root / "masks" / "colour.png")
    jpeg = root / "images" / "cutimage.jpg"
    Image.fromarray(trees.random_image(3)).save(jpeg, quality=95)
    (root / "images" / "cutimage.png").unlink()
    jpeg.write_bytes(jpeg.read_bytes()[:600])
    trees.write_rgb(root / "images" / "orphan.png", trees.random_image(4))
    return root


def test_broken_dataset_reports_every_problem(trees) -> None:
    root = _broken_tree(trees)
    report = verify_dataset(open_dataset(root, num_classes=2, strict=False), progress=False)
    by_file = {Path(p).name: m for p, m in report.problems}
    assert "no mask with stem 'orphan'" in by_file["orphan.png"]
    assert f"9 ({Q} px)" in by_file["badvalue.png"] and "outside [0, 2)" in by_file["badvalue.png"]
    assert "mask is 48x20 but the image is 48x40" in by_file["small.png"]
    assert "RGB colour mask" in by_file["colour.png"]
    assert "not a readable image" in by_file["cutimage.jpg"]
    assert len(report.problems) == 5
    assert not report.ok


def test_binary_0_255_masks_are_flagged(trees) -> None:
    root = trees.folder(masks={"a": trees.quadrants((0, 255, 0, 255)), "b": trees.quadrants((255, 0, 0, 0))})
    report = verify_dataset(open_dataset(root, num_classes=2), progress=False)
    assert len(report.problems) == 1
    assert "values {0, 255} only: binary masks stored as 0/255? " in report.problems[0][1]
    assert "map 255 -> 1" in report.problems[0][1]


def test_max_files_limits_the_scan(trees) -> None:
    report = verify_dataset(open_dataset(trees.folder(), num_classes=3), max_files=1, progress=False)
    assert report.num_checked == 1 and report.num_samples == 3
    assert report.class_pixels == [Q, Q, Q]


def test_cli_good_tree_exit_0_and_json(trees, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    rc = main(["verify-dataset", str(trees.voc()), "--split", "val", "--json", str(out), "--no-progress"])
    assert rc == 0
    assert "pixels per class" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["num_samples"] == 1
    assert data["class_pixels"]["background"] == 2 * Q  # val mask quadrants (0, 5, 0, 255)
    assert data["class_pixels"]["bottle"] == Q  # VOC id 5
    assert data["ignore_pixels"] == Q


def test_cli_broken_tree_exit_1_and_usage_errors_exit_2(trees, capsys) -> None:
    root = _broken_tree(trees)
    assert main(["verify-dataset", str(root), "--num-classes", "2", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "orphan.png: no mask with stem 'orphan'" in captured.out
    assert "5 problem(s) found" in captured.err
    # usage errors: no class count for a folder dataset, unknown layout
    assert main(["verify-dataset", str(root), "--no-progress"]) == 2
    assert main(["verify-dataset", str(trees.base / "missing"), "--no-progress"]) == 2
    assert "dataset path not found" in capsys.readouterr().err
