"""verify_dataset and `pspnet verify-dataset` on good and broken trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.cli import main
from pspnet.data.datasets import open_dataset
from pspnet.data.verify import verify_dataset
from pspnet.errors import InputError

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
    assert "mask is 48x20 but the image " in by_file["small.png"]
    assert "small.png is 48x40; masks must have the image's size" in by_file["small.png"]
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


def test_mostly_0_255_masks_with_stray_values_are_flagged(trees) -> None:
    """One anti-aliased pixel must not hide 0/255 binary masks (all their foreground is ignored)."""
    noisy = trees.quadrants((0, 255, 0, 0))
    noisy[0, 0] = 1
    root = trees.folder(masks={"a": noisy, "b": trees.quadrants((255, 0, 0, 0))})
    report = verify_dataset(open_dataset(root, num_classes=2), progress=False)
    assert len(report.problems) == 1
    message = report.problems[0][1]
    assert "masks look binary 0/255" in message and "25.0% of the pixels" in message
    assert "classes 1 and up only 1 px" in message and "map 255 -> 1" in message


def test_thin_void_borders_are_not_taken_for_binary_masks(trees) -> None:
    """VOC-style data: 255 marks thin object borders, the objects are classes 1 and up."""
    masks = {}
    for i in range(3):
        mask = trees.quadrants((0, 1 + i, 0, 3))
        mask[H // 2 - 1 : H // 2 + 1, :] = 255  # a 2 px void border across the image
        masks[str(i)] = mask
    report = verify_dataset(open_dataset(trees.folder(masks=masks), num_classes=4), progress=False)
    assert report.ok, report.problems
    assert report.ignore_pixels == 3 * 2 * W


def test_cityscapes_train_ids_saved_as_label_ids_are_flagged(trees) -> None:
    root = trees.cityscapes()
    path = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    trees.write_mask(path, trees.quadrants((0, 13, 255, 18)))  # trainIds: road, car, void, bicycle
    report = verify_dataset(open_dataset(root, split="train"), progress=False)
    assert [Path(p).name for p, _ in report.problems] == [path.name]
    assert f"label values 255 ({Q} px) in a labelIds file" in report.problems[0][1]
    assert "labelTrainIds" in report.problems[0][1]


def test_ade20k_problems_show_the_file_values(trees) -> None:
    root = trees.ade20k()
    trees.write_mask(
        root / "annotations" / "training" / "ADE_train_00000002.png", trees.quadrants((3, 151, 0, 0))
    )
    report = verify_dataset(open_dataset(root, split="train"), progress=False)
    assert len(report.problems) == 1
    assert f"label values 151 ({Q} px) in the file (train ids [150]" in report.problems[0][1]


def test_a_chosen_ignore_index_is_counted_as_ignore_and_a_class_id_is_refused(trees) -> None:
    root = trees.folder(masks={"a": trees.quadrants((3, 1, 2, 3))})
    report = verify_dataset(open_dataset(root, num_classes=3, ignore_index=3), progress=False)
    assert report.ok, report.problems
    assert report.ignore_index == 3 and report.ignore_pixels == 2 * Q
    assert report.class_pixels == [0, Q, Q]
    with pytest.raises(InputError, match="ignore index 0 is class 0 'class_0'"):
        open_dataset(root, num_classes=3, ignore_index=0)


def test_cli_dataset_palette_and_ignore_options(trees, capsys) -> None:
    root = trees.folder(masks={"a": trees.quadrants((0, 15, 254, 1))})
    (root / "classes.txt").write_text("only\ntwo\n")
    argv = ["verify-dataset", str(root), "--no-progress"]
    assert main([*argv, "--dataset", "voc2012"]) == 2
    assert "classes.txt lists 2 classes but the dataset 'voc2012'" in capsys.readouterr().err
    (root / "classes.txt").unlink()
    assert main([*argv, "--dataset", "voc2012"]) == 1  # 254 is not the ignore value
    assert "254 (" in capsys.readouterr().out
    assert main([*argv, "--dataset", "voc2012", "--ignore-index", "254"]) == 0
    assert main([*argv, "--dataset", "nope"]) == 2
    assert "--dataset: unknown dataset 'nope'" in capsys.readouterr().err
    colour = np.zeros((H, W, 3), np.uint8)
    colour[:, : W // 2] = (128, 0, 0)  # VOC aeroplane
    colour[:, W // 2 :] = (224, 224, 192)  # VOC void border
    Image.fromarray(colour).save(root / "masks" / "a.png")
    assert main([*argv, "--dataset", "voc2012"]) == 1
    assert "--mask-palette voc2012" in capsys.readouterr().out
    assert (
        main(
            [*argv, "--dataset", "voc2012", "--mask-palette", "voc2012", "--json", str(trees.base / "r.json")]
        )
        == 0
    )
    data = json.loads((trees.base / "r.json").read_text())
    assert data["class_pixels"]["aeroplane"] == 2 * Q and data["ignore_pixels"] == 2 * Q


def test_cli_reads_the_demo_data_label_space(tmp_path: Path, capsys) -> None:
    from pspnet.data.synthetic import make_demo_data

    root = make_demo_data(tmp_path / "demo", num_train=2, num_val=1, size=32, workers=0, progress=False)
    assert main(["verify-dataset", str(root), "--no-progress"]) == 0
    assert "dataset context_demo" in capsys.readouterr().out


def test_cli_list_split_is_refused(trees, capsys) -> None:
    trees.folder()
    listing = trees.base / "train.txt"
    listing.write_text("folder/images/a.png folder/masks/a.png\n")
    argv = ["verify-dataset", str(listing), "--num-classes", "3", "--no-progress"]
    assert main(argv) == 0
    assert main([*argv, "--split", "val"]) == 2
    assert "the list file is the split" in capsys.readouterr().err


def test_exif_rotated_images_get_a_note_and_a_size_mismatch_with_its_cause(
    trees, tmp_path: Path, capsys
) -> None:
    """A square photo with a rotation tag and a mask drawn on its stored pixels cannot be caught by
    size: the report says that tagged images exist and how their masks must be drawn."""
    root = trees.base / "phone"
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, (h, w) in {"square": (48, 48), "wide": (48, 80)}.items():
        trees.write_rgb(root / "images" / f"{name}.jpg", trees.random_image(0, h, w), exif=exif, quality=95)
        trees.write_mask(root / "masks" / f"{name}.png", np.zeros((h, w), np.uint8))  # stored grid
    trees.write_rgb(root / "images" / "plain.png", trees.random_image(1))
    trees.write_mask(root / "masks" / "plain.png", np.zeros((H, W), np.uint8))
    report = verify_dataset(open_dataset(root, num_classes=2), progress=False)
    assert [Path(p).name for p, _ in report.problems] == ["wide.png"]
    assert "stored 80x48 and shown 48x80 after its EXIF orientation 6" in report.problems[0][1]
    assert len(report.notes) == 1
    assert report.notes[0].startswith("2 image(s) carry an EXIF orientation tag (e.g. ")
    assert "masks must be drawn on the image as shown" in report.notes[0]
    out = tmp_path / "r.json"
    assert main(["verify-dataset", str(root), "--num-classes", "2", "--json", str(out), "--no-progress"]) == 1
    lines = capsys.readouterr().out.splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith("dataset phone at "))
    assert lines[summary + 1] == f"note: {report.notes[0]}"
    assert json.loads(out.read_text())["notes"] == report.notes


def test_skipped_hidden_files_are_counted_in_the_report(trees, capsys) -> None:
    root = trees.folder()
    for stem in ("a", "b"):
        (root / "images" / f"._{stem}.png").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
        (root / "masks" / f"._{stem}.png").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    assert main(["verify-dataset", str(root), "--num-classes", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out
    assert "note: skipped 4 hidden file(s) with image suffixes (2 in " in out
    report = verify_dataset(open_dataset(root, num_classes=3), progress=False)
    assert report.ok and len(report.notes) == 1  # no rotation note: no image carries a tag
