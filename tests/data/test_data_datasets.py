"""Dataset loaders over fake trees in the real layouts: pairing, label mapping, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
    with pytest.raises(DataError, match=r"a\.png: label values \[7\] outside \[0, 3\)"):
        ds[0]
    with pytest.raises(DataError, match=r"b\.png: label values \[200\] outside \[0, 3\)"):
        ds[1]


def test_out_of_range_labels_and_size_mismatch_raise(trees) -> None:
    root = trees.folder(masks={"a": trees.quadrants((0, 1, 7, 255))})
    with pytest.raises(DataError, match=r"a\.png: label values \[7\] outside \[0, 3\)"):
        open_dataset(root, num_classes=3).load_raw(0)
    trees.write_mask(root / "masks" / "a.png", trees.quadrants((0, 1, 1, 0), h=20))
    with pytest.raises(DataError, match=r"a\.png: mask is 48x20 but image .*a\.png is 48x40"):
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
