"""Dataset loaders over fake trees in the real layouts: pairing, label mapping, seeding, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.data.datasets import Sample, SegmentationDataset, detect_kind, open_dataset
from pspnet.data.info import ADE20K, CITYSCAPES, VOC2012, DatasetInfo
from pspnet.data.loader import build_loader, measure_loader_throughput, set_loader_epoch
from pspnet.data.preprocess import PYTORCH_PREPROCESS
from pspnet.data.transforms import train_transforms
from pspnet.errors import DataError, InputError

IGN = 255


def _quadrant_values(mask: np.ndarray) -> tuple[int, int, int, int]:
    h, w = mask.shape
    return (int(mask[0, 0]), int(mask[0, w - 1]), int(mask[h - 1, 0]), int(mask[h - 1, w - 1]))


def _by_name(dataset: SegmentationDataset) -> dict[str, np.ndarray]:
    return {s.name: dataset.load_raw(i)[1] for i, s in enumerate(dataset.samples)}


def test_voc_splits_and_palette_indices(trees) -> None:
    root = trees.voc()
    train = open_dataset(root, "voc2012", "train")
    assert train.info is VOC2012
    assert [s.name for s in train.samples] == ["2007_000001", "2007_000002"]
    masks = _by_name(train)
    assert _quadrant_values(masks["2007_000001"]) == (0, 15, IGN, 1)  # palette indices, 255 kept
    assert _quadrant_values(masks["2007_000002"]) == (20, 0, 0, 7)
    assert masks["2007_000001"].dtype == np.int64
    val = open_dataset(root, "voc2012", "val")
    assert [s.name for s in val.samples] == ["2008_000003"]
    # the VOCdevkit folder above is accepted too
    assert len(open_dataset(root.parent, "voc2012", "train")) == 2


def test_voc_trainaug_reads_sbd_masks(trees) -> None:
    root = trees.voc()
    aug = open_dataset(root, "voc2012", "trainaug")
    assert len(aug) == 3
    assert all(s.mask.parent.name == "SegmentationClassAug" for s in aug.samples)
    # the fake SBD mask is the VOC mask with every non-ignore id shifted by one (mod 21)
    assert _quadrant_values(_by_name(aug)["2007_000001"]) == (1, 16, IGN, 2)


def test_cityscapes_label_ids_map_to_train_ids(trees) -> None:
    root = trees.cityscapes()
    ds = open_dataset(root, "cityscapes", "train")
    assert ds.info is CITYSCAPES
    masks = _by_name(ds)
    assert set(masks) == {"aachen_000000_000019", "bremen_000001_000019"}
    assert _quadrant_values(masks["aachen_000000_000019"]) == (0, 13, IGN, 18)  # 7, 26, 0, 33
    assert _quadrant_values(masks["bremen_000001_000019"]) == (1, 2, 11, IGN)  # 8, 11, 24, 6
    assert len(open_dataset(root, "cityscapes", "val")) == 1


def test_ade20k_shifts_ids_and_ignores_other(trees) -> None:
    root = trees.ade20k()
    ds = open_dataset(root, "ade20k", "train")
    assert ds.info is ADE20K
    masks = _by_name(ds)
    assert _quadrant_values(masks["ADE_train_00000001"]) == (IGN, 0, 149, 1)  # 0, 1, 150, 2
    assert _quadrant_values(masks["ADE_train_00000002"]) == (2, 2, IGN, IGN)
    val = open_dataset(root.parent, "ade20k", "val")  # parent of ADEChallengeData2016 works too
    assert [s.name for s in val.samples] == ["ADE_val_00000001"]


def test_auto_detects_each_layout(trees) -> None:
    assert detect_kind(trees.voc()) == "voc2012"
    assert detect_kind(trees.cityscapes()) == "cityscapes"
    assert detect_kind(trees.ade20k()) == "ade20k"
    assert detect_kind(trees.folder()) == "folder"
    empty = trees.base / "nothing"
    empty.mkdir()
    with pytest.raises(DataError, match=r"nothing: dataset layout not recognised.*JPEGImages.*leftImg8bit"):
        open_dataset(empty)
    assert open_dataset(trees.base / "cityscapes").info is CITYSCAPES


def test_folder_dataset_classes_from_num_classes_or_file(trees) -> None:
    root = trees.folder()
    with pytest.raises(InputError, match="num_classes"):
        open_dataset(root, "folder")
    ds = open_dataset(root, num_classes=3)
    assert ds.info.class_names == ("class_0", "class_1", "class_2")
    assert [s.name for s in ds.samples] == ["a", "b", "c"]
    assert _quadrant_values(_by_name(ds)["a"]) == (0, 1, 2, IGN)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    assert open_dataset(root).info.class_names == ("sky", "road", "car")
    custom = DatasetInfo("mine", ("x", "y", "z"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    with pytest.warns(
        UserWarning, match=r"classes\.txt: class 0 is 'sky' but 'x'.*using the names of 'mine'"
    ):
        assert open_dataset(root, info=custom).info is custom


def test_folder_split_subfolders(trees) -> None:
    root = trees.base / "split"
    m = trees.quadrants((0, 1, 1, 0))
    for split, stems in {"train": ["t1", "t2"], "val": ["v1"]}.items():
        for stem in stems:
            trees.write_rgb(root / "images" / split / f"{stem}.jpg", trees.random_image(0))
            trees.write_mask(root / "masks" / split / f"{stem}.png", m)
    assert [s.name for s in open_dataset(root, split="train", num_classes=2).samples] == ["t1", "t2"]
    assert [s.name for s in open_dataset(root, split="val", num_classes=2).samples] == ["v1"]


def test_folder_missing_pairs_and_duplicates_are_listed(trees) -> None:
    root = trees.folder()
    (root / "masks" / "b.png").unlink()
    trees.write_rgb(root / "images" / "c.jpg", trees.random_image(5))  # c.png exists too
    with pytest.raises(DataError, match=r"2 problem\(s\).*duplicate stem 'c'.*no mask with stem 'b'") as err:
        open_dataset(root, num_classes=3)
    assert "c.jpg" in str(err.value) and "b.png" in str(err.value)
    lenient = open_dataset(root, num_classes=3, strict=False)
    assert [s.name for s in lenient.samples] == ["a", "c"]
    assert len(lenient.problems) == 2


def test_voc_missing_file_listed(trees) -> None:
    root = trees.voc()
    (root / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(DataError, match=r"2007_000002\.png: listed in train\.txt but missing"):
        open_dataset(root, "voc2012", "train")


def test_list_file_relative_absolute_and_escapes(trees) -> None:
    root = trees.folder()
    lst = trees.base / "train.txt"
    abs_image = (root / "images" / "c.png").resolve()
    lst.write_text(
        f"images/a.png masks/a.png\n\nimages/b.png masks/b.png\n{abs_image} {root / 'masks' / 'c.png'}\n"
    )
    ds = open_dataset(lst, "list", data_root=root, num_classes=3)
    assert [s.name for s in ds.samples] == ["a", "b", "c"]
    assert _quadrant_values(ds.load_raw(1)[1]) == (2, 2, 1, 0)
    assert detect_kind(lst) == "list"

    lst.write_text("images/a.png masks/a.png\n../secret.png masks/a.png\n")
    with pytest.raises(DataError, match=r"train\.txt:2: '\.\./secret\.png' points outside the data root"):
        open_dataset(lst, "list", data_root=root, num_classes=3)
    lst.write_text("images/a.png masks/a.png\nimages/zz.png masks/a.png\n")
    with pytest.raises(DataError, match=r"zz\.png: listed at train\.txt:2 but missing"):
        open_dataset(lst, "list", data_root=root, num_classes=3)
    lst.write_text("images/a.png\n")
    with pytest.raises(DataError, match=r"train\.txt:1: expected 'image_path mask_path'"):
        open_dataset(lst, "list", data_root=root, num_classes=3)


def test_getitem_without_transform_is_normalised_whole_image(trees) -> None:
    ds = open_dataset(trees.folder(), num_classes=3)
    item = ds[0]
    image, _ = ds.load_raw(0)
    assert item["index"] == 0
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 40, 48)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (40, 48)
    mean = torch.tensor(PYTORCH_PREPROCESS.mean).view(3, 1, 1)
    std = torch.tensor(PYTORCH_PREPROCESS.std).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
    torch.testing.assert_close(item["image"], expected)


def test_augmentation_seeded_by_seed_epoch_index(trees) -> None:
    root = trees.folder()
    make = lambda seed: open_dataset(root, num_classes=3, transform=train_transforms(32), seed=seed)  # noqa: E731
    a, b = make(0), make(0)
    torch.testing.assert_close(a[1]["image"], b[1]["image"])
    torch.testing.assert_close(a[1]["mask"], b[1]["mask"])
    assert not torch.equal(a[1]["image"], make(1)[1]["image"])
    b.set_epoch(1)
    assert not torch.equal(a[1]["image"], b[1]["image"])
    b.set_epoch(0)
    torch.testing.assert_close(a[1]["image"], b[1]["image"])


@pytest.mark.parametrize("layout", ["voc", "cityscapes", "ade20k", "folder"])
def test_uint8_mask_path_maps_like_int64(trees, layout: str) -> None:
    """The table lookup for 8-bit masks (no map, Cityscapes' table, ADE20K's shift) gives the same
    train ids as the int64 mapping; our transforms get the uint8 mask, a user's transform int64."""
    root = getattr(trees, layout)()
    ds = open_dataset(root, num_classes=3) if layout == "folder" else open_dataset(root)
    assert ds._table8 is not None
    seen = []
    user_transform = lambda image, mask, rng: (seen.append(mask.dtype) or image, mask)  # noqa: E731
    for i in range(len(ds)):
        compact = ds._load(i)[1]
        assert compact.dtype == np.uint8
        expected = ds.map_mask(ds.read_raw_mask(i))
        np.testing.assert_array_equal(compact, expected)
        np.testing.assert_array_equal(ds.load_raw(i)[1], expected)
        assert ds.load_raw(i)[1].dtype == np.int64
        ds.transform = user_transform
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), expected)
    assert seen and set(seen) == {np.dtype(np.int64)}


def test_out_of_range_labels_through_the_uint8_path(trees) -> None:
    """__getitem__ with the built-in transforms (uint8 path) refuses the same labels, same message."""
    root = trees.folder(masks={"a": trees.quadrants((0, 1, 7, 255)), "b": trees.quadrants((0, 1, 2, 200))})
    ds = open_dataset(root, num_classes=3, transform=train_transforms(16))
    with pytest.raises(DataError, match=r"a\.png: label values 7 \(480 px\) outside \[0, 3\)"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png: label values 200 \(480 px\) outside \[0, 3\)"):
        ds[1]


def test_out_of_range_labels_and_size_mismatch_raise(trees) -> None:
    root = trees.folder(masks={"a": trees.quadrants((0, 1, 7, 255))})
    with pytest.raises(DataError, match=r"a\.png: label values 7 \(480 px\) outside \[0, 3\)"):
        open_dataset(root, num_classes=3).load_raw(0)
    trees.write_mask(root / "masks" / "a.png", trees.quadrants((0, 1, 1, 0), h=20))
    with pytest.raises(DataError, match=r"a\.png: mask is 48x20 but the image .*a\.png is 48x40"):
        open_dataset(root, num_classes=3).load_raw(0)


def test_unlabelled_sample_gets_ignore_mask(trees) -> None:
    path = trees.write_rgb(trees.base / "x.png", trees.random_image(0))
    ds = SegmentationDataset([Sample(path, None, "x")], VOC2012)
    assert ds.load_raw(0)[1] is None
    assert torch.all(ds[0]["mask"] == IGN)


def test_loader_batches_and_epoch_keyed_shuffle(trees) -> None:
    ds = open_dataset(trees.folder(), num_classes=3, transform=train_transforms(24))
    loader = build_loader(ds, 2, shuffle=True, seed=3, pin_memory=False)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 24, 24) and batch["mask"].shape == (2, 24, 24)

    def order(epoch: int, seed: int = 3) -> list[int]:
        fresh = build_loader(ds, 1, shuffle=True, seed=seed, pin_memory=False)
        set_loader_epoch(fresh, epoch)
        return [int(b["index"]) for b in fresh]

    assert sorted(order(0)) == [0, 1, 2]
    assert order(4) == order(4)  # a resumed run sees the same order for the same epoch
    assert len({tuple(order(e)) for e in range(6)}) > 1  # and the order changes between epochs
    assert ds.epoch == 5
    plain = build_loader(ds, 2, shuffle=False, drop_last=True, pin_memory=False)
    assert [b["index"].tolist() for b in plain] == [[0, 1]]
    with pytest.raises(InputError, match="distributed=True"):
        build_loader(ds, 2, shuffle=True, distributed=True)
    assert measure_loader_throughput(build_loader(ds, 1, shuffle=False), max_batches=2) > 0


def test_loader_workers_see_the_epoch(trees) -> None:
    """Persistent workers keep their dataset copy; the epoch reaches it through the sampler's keys."""
    ds = open_dataset(trees.folder(), num_classes=3, transform=train_transforms(16))
    loader = build_loader(ds, 3, shuffle=False, num_workers=1, pin_memory=False)
    assert loader.persistent_workers
    assert loader.dataset.info is ds.info and len(loader.dataset) == len(ds)  # the wrapper forwards
    for epoch in (2, 3, 2):  # the same worker process serves all three epochs
        set_loader_epoch(loader, epoch)
        with_workers = next(iter(loader))["image"]
        ds.set_epoch(epoch)
        in_process = torch.stack([ds[i]["image"] for i in range(3)])
        torch.testing.assert_close(with_workers, in_process)


class _GlobalRngDataset(torch.utils.data.Dataset):
    """Returns draws from the worker's global generators, as a user transform might make."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([np.random.random(), float(torch.rand(()))])


def test_worker_global_generators_depend_on_epoch_not_worker_age() -> None:
    """Epoch 1 through a worker that already served epoch 0 draws what a fresh worker draws
    (a resumed run), and differs from epoch 0."""
    aged = build_loader(_GlobalRngDataset(), 4, shuffle=False, num_workers=1, seed=5, pin_memory=False)
    epoch0 = next(iter(aged))
    set_loader_epoch(aged, 1)
    epoch1_aged = next(iter(aged))
    fresh = build_loader(_GlobalRngDataset(), 4, shuffle=False, num_workers=1, seed=5, pin_memory=False)
    set_loader_epoch(fresh, 1)
    torch.testing.assert_close(next(iter(fresh)), epoch1_aged)
    assert not torch.equal(epoch0, epoch1_aged)


# ----------------------------------------------------------------------------- audit fixes


def test_list_dataset_refuses_another_split(trees) -> None:
    """A list file is one split: split="val" on the training list must not silently read it."""
    root = trees.folder()
    listing = trees.base / "train.txt"
    listing.write_text("folder/images/a.png folder/masks/a.png\n")
    assert len(open_dataset(listing, "list", num_classes=3)) == 1
    for kind in ("list", "auto"):
        with pytest.raises(
            InputError, match=r"train\.txt: split 'val' given for a list dataset.*list file is"
        ):
            open_dataset(listing, kind, "val", num_classes=3)
    assert root.is_dir()


def test_ade20k_label_errors_name_the_values_in_the_file(trees) -> None:
    root = trees.ade20k()
    mask = trees.quadrants((0, 151, 255, 2))  # 151: one past ADE's 150; 255: an MMSeg-style void
    trees.write_mask(root / "annotations" / "training" / "ADE_train_00000001.png", mask)
    ds = open_dataset(root, "ade20k", "train")
    with pytest.raises(DataError) as err:
        ds.load_raw(0)
    message = str(err.value)
    assert "label values 151 (480 px), 255 (480 px) in the file" in message
    assert "train ids [150, 254]" in message and "outside [0, 150)" in message


def test_jpeg_masks_are_named_as_jpeg_not_missing(trees) -> None:
    root = trees.folder()
    Image.open(root / "masks" / "b.png").save(root / "masks" / "b.jpg", quality=95)
    (root / "masks" / "b.png").unlink()
    ds = open_dataset(root, num_classes=3, strict=False)
    assert [s.name for s in ds.samples] == ["a", "c"]
    assert ds.problems == [(str(root / "masks" / "b.jpg"), ds.problems[0][1])]
    assert "is a JPEG" in ds.problems[0][1] and "save masks as PNG" in ds.problems[0][1]


def test_named_label_space_and_classes_file_must_agree_in_count(trees) -> None:
    root = trees.folder()
    (root / "classes.txt").write_text("sky\nroad\ncar\nboat\n")
    with pytest.raises(InputError, match=r"classes\.txt lists 4 classes but the dataset 'voc2012'.* has 21"):
        open_dataset(root, info=VOC2012)
    same_count = DatasetInfo("four", ("sky", "road", "car", "boat"), ((0, 0, 0),) * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same names: no warning
        assert open_dataset(root, info=same_count).info is same_count


def test_dataset_json_gives_the_label_space(trees) -> None:
    root = trees.folder()
    names, palette = ["sky", "road", "car"], [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    (root / "dataset.json").write_text(json.dumps({"name": "mine", "class_names": names, "palette": palette}))
    (root / "classes.txt").write_text("x\n")  # dataset.json comes first
    info = open_dataset(root).info
    assert (info.name, info.class_names, info.palette) == (
        "mine",
        tuple(names),
        ((1, 2, 3), (4, 5, 6), (7, 8, 9)),
    )
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}}))  # another tool's file
    assert open_dataset(root).info.class_names == ("x",)


def test_class_count_message_names_every_way_to_give_it(trees) -> None:
    with pytest.raises(InputError) as err:
        open_dataset(trees.folder(), "folder")
    message = str(err.value)
    for way in ("model.num_classes", "--num-classes for verify-dataset", "num_classes=", "classes.txt"):
        assert way in message


def test_missing_root_is_named_for_every_layout(trees) -> None:
    missing = trees.base / "nope"
    for kind in ("voc2012", "cityscapes", "ade20k", "folder"):
        with pytest.raises(DataError, match=rf"nope: {kind} dataset folder not found"):
            open_dataset(missing, kind)
    with pytest.raises(DataError, match=r"nope: list file not found"):
        open_dataset(missing, "list", num_classes=2)
    (trees.base / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a VOC2012 folder: no JPEGImages/"):
        open_dataset(trees.base / "empty", "voc2012")


@pytest.mark.parametrize("ignore", [254, 3, 300])  # 3: the first value past the 3 classes
def test_folder_ignore_index_is_used_by_loading_and_padding(trees, ignore: int) -> None:
    """A chosen ignore value is accepted by the label check (uint8 table and int64 paths alike),
    pads the augmentation, and other values past the classes are still refused."""
    dtype = np.uint16 if ignore > 255 else np.uint8
    root = trees.folder(masks={"a": trees.quadrants((1, 2, ignore, 1), dtype=dtype)})
    ds = open_dataset(root, num_classes=3, ignore_index=ignore)
    assert ds.info.ignore_index == ignore
    assert _quadrant_values(ds.load_raw(0)[1]) == (1, 2, ignore, 1)
    assert _quadrant_values(ds._load(0)[1]) == (1, 2, ignore, 1)
    ds.transform = train_transforms(
        (80, 96), scale=None, rotate=None, blur=False, flip=False, ignore_index=ignore
    )
    padded = ds[0]["mask"]  # image 48x40 inside an 96x80 crop: the rest is padding
    assert padded.shape == (80, 96)
    assert int((padded == ignore).sum()) == 80 * 96 - 3 * 480
    if ignore != 255:
        trees.write_mask(root / "masks" / "a.png", trees.quadrants((1, 2, 255, 1)))
        for load in (ds.load_raw, ds._load):
            with pytest.raises(
                DataError, match=rf"255 \(480 px\) outside \[0, 3\) and not the ignore value {ignore}"
            ):
                load(0)


def test_unlabelled_sample_mask_holds_an_ignore_value_above_255(tmp_path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    info = DatasetInfo("big", ("a", "b"), ((0, 0, 0), (1, 1, 1)), ignore_index=300)
    ds = SegmentationDataset([Sample(path, None, "x")], info, transform=train_transforms(8, scale=None))
    assert torch.all(ds[0]["mask"] == 300)


def test_public_layouts_require_ignore_255(trees) -> None:
    root = trees.voc()
    assert open_dataset(root, "voc2012", ignore_index=255).info.ignore_index == 255
    with pytest.raises(InputError, match=r"voc2012 layout maps void pixels to 255; ignore_index must be 255"):
        open_dataset(root, "voc2012", ignore_index=0)
    with pytest.raises(InputError, match=r"ignore_index must be in \[0, 65535\]"):
        open_dataset(trees.folder(), num_classes=3, ignore_index=-1)


def test_voc_colour_masks_read_with_the_named_palette(trees) -> None:
    """VOC masks saved as RGB (void borders in VOC's cream colour) give the same ids as the
    palette PNGs, 255 borders included."""
    root = trees.voc()
    expected = _by_name(open_dataset(root, "voc2012", "train"))
    for path in (root / "SegmentationClass").glob("*.png"):
        Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match="RGB colour mask.*--mask-palette voc2012"):
        open_dataset(root, "voc2012", "train").load_raw(0)
    got = _by_name(open_dataset(root, "voc2012", "train", mask_palette="voc2012"))
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert 255 in np.unique(got["2007_000001"])
    with pytest.raises(
        InputError,
        match=r"a mask palette \(--mask-palette / data\.mask_palette\) cannot be used with the "
        "cityscapes layout",
    ):
        open_dataset(trees.cityscapes(), mask_palette="cityscapes")
    with pytest.raises(InputError, match="ade20k palette gives ids"):
        open_dataset(root, "voc2012", mask_palette="ade20k")


def test_unknown_mask_palette_lists_only_the_usable_ones(trees) -> None:
    """ADE20K's palette gives two ids one colour, so offering it would only lead to a refusal."""
    with pytest.raises(InputError) as err:
        open_dataset(trees.voc(), "voc2012", mask_palette="foo")
    assert str(err.value) == (
        "mask palette 'foo': no such palette; choose one of cityscapes, context_demo, voc2012"
    )


def test_list_kept_apart_from_the_data_finds_classes_in_the_data_root(tmp_path) -> None:
    data, lists = tmp_path / "data", tmp_path / "lists"
    (data / "img").mkdir(parents=True)
    lists.mkdir()
    Image.fromarray(np.zeros((9, 10, 3), np.uint8)).save(data / "img" / "a.png")
    Image.fromarray(np.full((9, 10), 2, np.uint8)).save(data / "img" / "a_mask.png")
    (data / "classes.txt").write_text("x\ny\nz\n")
    (lists / "train.txt").write_text("img/a.png img/a_mask.png\n")
    dataset = open_dataset(lists / "train.txt", "list", data_root=data)
    assert dataset.info.class_names == ("x", "y", "z") and dataset.class_names_file == data / "classes.txt"
    (lists / "classes.txt").write_text("p\nq\nr\ns\n")  # one beside the list file comes first
    dataset = open_dataset(lists / "train.txt", "list", data_root=data)
    assert dataset.info.num_classes == 4 and dataset.class_names_file == lists / "classes.txt"


_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200)


def test_hidden_files_are_not_data_in_folder_ade20k_and_cityscapes_layouts(trees) -> None:
    """A folder copied from a Mac holds '._x.jpg' / '._x.png' metadata beside every file, and a
    '.DS_Store': they were paired as images and masks and the whole dataset was refused."""
    folder, ade, city = trees.folder(), trees.ade20k(), trees.cityscapes()
    for images, masks in [
        (folder / "images", folder / "masks"),
        (ade / "images" / "training", ade / "annotations" / "training"),
    ]:
        for path in sorted(images.iterdir()):
            (images / f"._{path.name}").write_bytes(_APPLEDOUBLE)
            (masks / f"._{path.stem}.png").write_bytes(_APPLEDOUBLE)
        (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    aachen = city / "leftImg8bit" / "train" / "aachen"
    (aachen / "._aachen_000000_000019_leftImg8bit.png").write_bytes(_APPLEDOUBLE)
    (city / "gtFine" / "train" / "aachen" / "._aachen_000000_000019_gtFine_labelIds.png").write_bytes(
        _APPLEDOUBLE
    )

    ds = open_dataset(folder, num_classes=3)  # strict: any problem would raise
    assert [s.name for s in ds.samples] == ["a", "b", "c"]
    assert len(ds.notes) == 1
    assert "skipped 6 hidden file(s)" in ds.notes[0] and "3 in " + str(folder / "images") in ds.notes[0]
    ade_ds = open_dataset(ade, split="train")
    assert [s.name for s in ade_ds.samples] == ["ADE_train_00000001", "ADE_train_00000002"]
    assert "skipped 4 hidden file(s)" in ade_ds.notes[0]
    city_ds = open_dataset(city, split="train")
    assert [s.name for s in city_ds.samples] == ["aachen_000000_000019", "bremen_000001_000019"]
    assert "skipped 1 hidden file(s)" in city_ds.notes[0]
    assert open_dataset(trees.folder("clean"), num_classes=3).notes == []


def test_size_mismatch_from_exif_rotation_names_the_cause(trees) -> None:
    """A phone photo stored 80x48 with orientation 6 is read 48x80, as shown; a mask drawn on
    the stored pixels is 80x48, and both files look 80x48 in a file browser."""
    root = trees.base / "phone"
    exif = Image.Exif()
    exif[0x0112] = 6
    trees.write_rgb(root / "images" / "wide.jpg", trees.random_image(0, 48, 80), exif=exif, quality=95)
    trees.write_mask(root / "masks" / "wide.png", np.zeros((48, 80), np.uint8))
    with pytest.raises(DataError) as info:
        open_dataset(root, num_classes=2).load_raw(0)
    message = str(info.value)
    assert message.startswith(f"{root / 'masks' / 'wide.png'}: mask is 80x48 but the image ")
    assert "is 48x80: it is stored 80x48 and shown 48x80 after its EXIF orientation 6" in message
    assert "masks must match the image as shown" in message and "strip the orientation tag" in message
    trees.write_mask(root / "masks" / "wide.png", np.zeros((40, 80), np.uint8))  # not the rotation
    with pytest.raises(
        DataError, match=r"mask is 80x40 but the image .* is 48x80; masks must have the image's size"
    ):
        open_dataset(root, num_classes=2).load_raw(0)


def test_list_file_paths_with_spaces_need_a_tab(trees) -> None:
    root = trees.base / "spaced"
    image = trees.write_rgb(root / "my images" / "a.png", trees.random_image(0))
    trees.write_mask(root / "my masks" / "a.png", trees.quadrants((0, 1, 1, 0)))
    lst = root / "val.txt"
    lst.write_text("my images/a.png my masks/a.png\n")
    with pytest.raises(DataError, match=r"val\.txt:1: expected .*got 4 field\(s\).*needs a TAB between"):
        open_dataset(lst, "list", num_classes=2)
    lst.write_text("my images/a.png\tmy masks/a.png \n\n")  # TAB-separated, trailing space
    ds = open_dataset(lst, "list", num_classes=2)
    assert ds.samples == [Sample(image, root / "my masks" / "a.png", "a")]
    assert _quadrant_values(ds.load_raw(0)[1]) == (0, 1, 1, 0)
    lst.write_text("my images/a.png\tmy masks/a.png\textra.png\n")
    with pytest.raises(DataError, match=r"val\.txt:1: expected 'image_path mask_path', got 3 field\(s\)"):
        open_dataset(lst, "list", num_classes=2)


def test_jfif_and_gif_images_pair_with_masks(trees) -> None:
    root = trees.base / "mixed"
    trees.write_rgb(root / "images" / "a.jfif", trees.random_image(0), format="JPEG")
    trees.write_rgb(root / "images" / "b.gif", trees.random_image(1))
    for stem in ("a", "b"):
        trees.write_mask(root / "masks" / f"{stem}.png", trees.quadrants((0, 1, 1, 0)))
    ds = open_dataset(root, num_classes=2)
    assert [s.image.name for s in ds.samples] == ["a.jfif", "b.gif"]
    assert ds.load_raw(1)[0].shape == (40, 48, 3)


@pytest.mark.parametrize("layout", ["folder", "list"])
def test_ignore_index_that_is_a_class_id_is_refused(trees, layout: str) -> None:
    """ignore_index 0 with classes a, b, c: class 'a' would never be trained and would still be
    predicted and scored (IoU 0). The message names the value, the class, the file and both fixes."""
    root = trees.folder(masks={"a": trees.quadrants((0, 1, 2, 0))})
    (root / "classes.txt").write_text("a\nb\nc\n")
    target = root
    if layout == "list":
        target = root / "val.txt"
        target.write_text("images/a.png masks/a.png\n")
    with pytest.raises(InputError) as err:
        open_dataset(target, layout, ignore_index=0)
    assert str(err.value) == (
        f"ignore index 0 is class 0 'a' of {target} ({root / 'classes.txt'}), so that class would never be "
        "trained nor scored; to train 'a', use an ignore index outside 0..2 such as 255; to ignore its "
        "pixels, remove 'a' from the class list and rewrite the masks with ids 0..1 and the ignore value "
        "for those pixels"
    )
    with pytest.raises(InputError, match=r"ignore index 2 is class 2 'c' .* remove 'c' from the class list$"):
        open_dataset(target, layout, ignore_index=2)  # the last class: dropping it renumbers nothing
    assert open_dataset(target, layout, ignore_index=3).info.ignore_index == 3  # just past the classes


def test_ignore_index_inside_the_class_range_is_refused_from_every_source(trees) -> None:
    """The value may come from dataset.json or from a label space with more than 255 classes
    (where the default 255 is a class id), not only from ignore_index=."""
    root = trees.folder()
    (root / "dataset.json").write_text(json.dumps({"class_names": ["x", "y", "z"], "ignore_index": 1}))
    with pytest.raises(InputError, match=r"ignore index 1 is class 1 'y' of .*dataset\.json\)"):
        open_dataset(root)
    big = DatasetInfo("big", tuple(f"c{i}" for i in range(300)), ((0, 0, 0),) * 300)
    (root / "dataset.json").unlink()
    with pytest.raises(
        InputError, match=r"ignore index 255 is class 255 'c255' of .*\(the big classes\).* 65535"
    ):
        open_dataset(root, info=big)
    assert open_dataset(root, info=big, ignore_index=65535).info.ignore_index == 65535
    with pytest.raises(
        InputError, match=r"is class 1 'class_1' of .*\(3 classes\).*; to ignore its pixels, use 2 "
    ):
        open_dataset(root, num_classes=3, ignore_index=1)


def test_list_messages_name_no_split_and_class_names_file_is_recorded(trees) -> None:
    """A list file is its own split: "split 'train'" in its messages was open_dataset's internal
    convention, not anything the user gave."""
    root = trees.folder()
    listing = trees.base / "val.txt"
    listing.write_text("folder/images/a.png folder/masks/a.png\nfolder/images/zz.png folder/masks/a.png\n")
    with pytest.raises(DataError) as err:
        open_dataset(listing, "list", num_classes=3)
    assert str(err.value).startswith(f"{listing} (list): 1 problem(s): ") and "split" not in str(err.value)
    listing.write_text("\n")
    with pytest.raises(DataError) as err:
        open_dataset(listing, "list", num_classes=3)
    assert str(err.value) == f"{listing}: no samples found in the list file"

    assert open_dataset(root, num_classes=3).class_names_file is None
    (root / "classes.txt").write_text("a\nb\nc\n")
    assert open_dataset(root).class_names_file == root / "classes.txt"
    assert (
        open_dataset(root, info=DatasetInfo("n", ("a", "b", "c"), ((0, 0, 0),) * 3)).class_names_file is None
    )
    (root / "dataset.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    assert open_dataset(root).class_names_file == root / "dataset.json"
    listing.write_text("folder/images/a.png folder/masks/a.png\n")
    assert open_dataset(listing, "list", num_classes=3).class_names_file is None
    (trees.base / "classes.txt").write_text("p\nq\nr\n")
    assert open_dataset(listing, "list").class_names_file == trees.base / "classes.txt"
    assert open_dataset(trees.voc(), "voc2012").class_names_file is None
