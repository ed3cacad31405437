"""The built-in context benchmark: determinism, the global scene rule, identical context pairs, files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pspnet.cli import main
from pspnet.data import synthetic
from pspnet.data.info import DatasetInfo
from pspnet.data.synthetic import (
    CONTEXT_DEMO,
    ensure_demo_data,
    generate_scene,
    make_demo_data,
    render_layout,
    sample_layout,
    swap_grounds,
)
from pspnet.errors import InputError

# Class ids written out by hand (the contract), not read from the module under test.
SKY, WATER, ROAD, BOAT, CAR, PIER, SIDEWALK, POLE = range(8)
NAMES = ("sky", "water", "road", "boat", "car", "pier", "sidewalk", "pole")


def _scenes(count: int, size: int = 96, seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_scene(np.random.default_rng([seed, i]), size) for i in range(count)]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_info_declares_the_context_pairs() -> None:
    assert CONTEXT_DEMO.class_names == NAMES
    assert set(CONTEXT_DEMO.context_classes) == {"boat", "car", "pier", "sidewalk"}
    assert len(set(CONTEXT_DEMO.palette)) == len(NAMES)  # distinct colours for the overlays


def test_scene_is_deterministic_for_a_seed() -> None:
    a_img, a_mask = generate_scene(np.random.default_rng(3), 80)
    b_img, b_mask = generate_scene(np.random.default_rng(3), 80)
    c_img, _ = generate_scene(np.random.default_rng(4), 80)
    assert a_img.shape == (80, 80, 3) and a_img.dtype == np.uint8
    assert a_mask.shape == (80, 80) and a_mask.dtype == np.uint8
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, c_img)


def test_labels_stay_in_the_class_set() -> None:
    for _, mask in _scenes(30):
        assert set(np.unique(mask).tolist()) <= set(range(len(NAMES)))


def test_majority_ground_decides_every_context_label() -> None:
    """Hull pixels are boat iff water covers more pixels than road; the band is pier iff likewise."""
    outcomes = set()
    contradicted = 0
    for _, mask in _scenes(60):
        water, road = np.count_nonzero(mask == WATER), np.count_nonzero(mask == ROAD)
        assert water != road
        if water > road:
            assert not np.any(mask == CAR) and not np.any(mask == SIDEWALK)
            hull, wrong_ground = BOAT, ROAD
        else:
            assert not np.any(mask == BOAT) and not np.any(mask == PIER)
            hull, wrong_ground = CAR, WATER
        outcomes.add(hull)
        # Local context contradicts the scene: a hull pixel right above a pixel of the minority ground.
        below = np.zeros_like(mask, dtype=bool)
        below[:-1] = mask[1:] == wrong_ground
        contradicted += bool(np.any((mask == hull) & below))
    assert outcomes == {BOAT, CAR}
    assert contradicted >= 10  # many images have a hull standing on the "wrong" ground


def test_minority_ground_is_large_in_most_images() -> None:
    """The scene is a global statistic: usually 15-45 % of the image is the other ground."""
    minority = []
    for _, mask in _scenes(60):
        water, road = np.mean(mask == WATER), np.mean(mask == ROAD)
        minority.append(min(water, road))
    minority = np.asarray(minority)
    share_large = np.mean(minority >= 0.15)
    assert 0.6 <= share_large <= 0.95
    assert minority.max() < 0.5


def test_swapping_the_grounds_swaps_labels_not_object_pixels() -> None:
    """Boat and car (pier and sidewalk) are drawn by the same code: only the label depends on the scene."""
    checked = 0
    for i in range(40):
        layout = sample_layout(np.random.default_rng([11, i]), 96)
        if not (layout.hulls and layout.band.any() and layout.other.any()):
            continue
        image, mask = render_layout(layout)
        image2, mask2 = render_layout(swap_grounds(layout))
        objects = np.isin(mask, (BOAT, CAR, PIER, SIDEWALK, POLE))
        np.testing.assert_array_equal(image[objects], image2[objects])
        swap = np.arange(256, dtype=np.uint8)
        swap[[WATER, ROAD, BOAT, CAR, PIER, SIDEWALK]] = [ROAD, WATER, CAR, BOAT, SIDEWALK, PIER]
        np.testing.assert_array_equal(swap[mask], mask2)
        grounds = np.isin(mask, (WATER, ROAD))
        assert not np.array_equal(image[grounds], image2[grounds])  # the grounds themselves did change
        checked += 1
    assert checked >= 5


def test_band_lies_along_an_image_edge_and_poles_are_thick_enough() -> None:
    for _, mask in _scenes(30, size=192):
        band = np.isin(mask, (PIER, SIDEWALK))
        if band.any():
            assert band[-1].any() or band[:, 0].any() or band[:, -1].any()
        pole_rows = (mask == POLE).sum(axis=1)
        if pole_rows.any():
            assert pole_rows.max() >= 6  # >= 6 px wide at 192 px: learnable through output stride 8


def test_size_below_minimum_is_an_input_error() -> None:
    with pytest.raises(InputError, match="32"):
        generate_scene(np.random.default_rng(0), 16)
    with pytest.raises(InputError, match="num_train"):
        make_demo_data(Path("unused"), num_train=0, num_val=1)


def test_folder_layout_is_readable(tmp_path: Path) -> None:
    root = make_demo_data(
        tmp_path / "demo", seed=1, num_train=6, num_val=3, size=64, workers=0, progress=False
    )
    for split, count in (("train", 6), ("val", 3)):
        names = sorted(p.name for p in (root / "images" / split).iterdir())
        assert names == [f"{i:05d}.png" for i in range(count)]
        assert sorted(p.name for p in (root / "masks" / split).iterdir()) == names
        with Image.open(root / "masks" / split / names[0]) as mask:
            assert mask.mode == "L" and mask.size == (64, 64)
        with Image.open(root / "images" / split / names[0]) as image:
            assert image.mode == "RGB" and image.size == (64, 64)
    # The files hold exactly what the generator draws for image i of split s.
    expected_image, expected_mask = generate_scene(np.random.default_rng([1, 1, 2]), 64)
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "images" / "val" / "00002.png")), expected_image
    )
    np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / "val" / "00002.png")), expected_mask)

    meta = json.loads((root / "dataset.json").read_text())
    info = DatasetInfo.from_dict(meta)
    assert info.class_names == NAMES
    assert info.ignore_index == 255
    assert info.crop_size == info.base_size == 64
    assert (meta["seed"], meta["num_train"], meta["num_val"], meta["size"]) == (1, 6, 3, 64)
    assert isinstance(meta["generator_version"], int)


def test_dataset_bytes_depend_on_the_seed_only(tmp_path: Path) -> None:
    a = make_demo_data(tmp_path / "a", seed=5, num_train=6, num_val=2, size=64, workers=0, progress=False)
    b = make_demo_data(tmp_path / "b", seed=5, num_train=6, num_val=2, size=64, workers=0, progress=False)
    c = make_demo_data(tmp_path / "c", seed=6, num_train=6, num_val=2, size=64, workers=0, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    inline = make_demo_data(
        tmp_path / "one", seed=2, num_train=60, num_val=2, size=40, workers=0, progress=False
    )
    pooled = make_demo_data(
        tmp_path / "two", seed=2, num_train=60, num_val=2, size=40, workers=2, progress=False
    )
    assert _digest(inline) == _digest(pooled)


def test_interrupted_generation_leaves_no_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.generate_scene
    calls = {"n": 0}

    def flaky(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(rng, size)

    monkeypatch.setattr(synthetic, "generate_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_demo_data(tmp_path / "demo", num_train=6, num_val=2, size=48, workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor a temporary folder remains


def test_failed_regeneration_keeps_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_demo_data(
        tmp_path / "demo", seed=0, num_train=3, num_val=1, size=48, workers=0, progress=False
    )
    before = _digest(root)

    def broken(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "generate_scene", broken)
    with pytest.raises(OSError, match="disk full"):
        make_demo_data(root, seed=1, num_train=3, num_val=1, size=48, workers=0, progress=False)
    assert _digest(root) == before
    assert json.loads((root / "dataset.json").read_text())["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_cache_is_reused_only_when_it_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"num_train": 4, "num_val": 2, "size": 48, "workers": 0, "progress": False}
    root = ensure_demo_data(tmp_path, 3, **kwargs)
    assert (root / "dataset.json").is_file()
    generated = []
    real = synthetic._generate

    def counting(*args: object, **kw: object) -> Path:
        generated.append(kw.get("seed"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_generate", counting)
    assert ensure_demo_data(tmp_path, 3, **kwargs) == root
    assert generated == []  # valid cache: nothing regenerated

    meta = json.loads((root / "dataset.json").read_text())
    meta["generator_version"] = -1  # an older generator drew these images
    (root / "dataset.json").write_text(json.dumps(meta))
    assert ensure_demo_data(tmp_path, 3, **kwargs) == root
    assert generated == [3]

    (root / "masks" / "val" / "00001.png").unlink()  # incomplete folder
    ensure_demo_data(tmp_path, 3, **kwargs)
    assert generated == [3, 3]
    assert (root / "masks" / "val" / "00001.png").is_file()

    other = ensure_demo_data(tmp_path, 4, **kwargs)  # another seed lives beside it
    assert other != root and json.loads((other / "dataset.json").read_text())["seed"] == 4


def test_cli_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["make-demo-data", str(out), "--seed", "2", "--num-train", "3", "--num-val", "2", "--size", "48"]
    assert main([*argv, "--workers", "0", "--no-progress"]) == 0
    assert "3 train + 2 val" in capsys.readouterr().out
    assert len(list((out / "images" / "train").iterdir())) == 3
    assert json.loads((out / "dataset.json").read_text())["seed"] == 2
    assert main(["make-demo-data", str(tmp_path / "bad"), "--num-train", "0", "--no-progress"]) == 2
    assert "num_train" in capsys.readouterr().err


def test_an_existing_folder_is_replaced_only_if_generated_or_empty(tmp_path: Path) -> None:
    kwargs = {"num_train": 2, "num_val": 1, "size": 32, "workers": 0, "progress": False}
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("precious")
    with pytest.raises(InputError, match="victim exists and is not a generated demo dataset"):
        make_demo_data(victim, **kwargs)
    assert (victim / "precious.txt").read_text() == "precious" and (victim / "sub").is_dir()
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt", "sub"]  # nothing left behind

    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(InputError, match="afile is a file"):
        make_demo_data(afile, **kwargs)
    assert afile.read_text() == "keep"

    empty = tmp_path / "empty"
    empty.mkdir()
    make_demo_data(empty, seed=0, **kwargs)
    (empty / "notes.md").write_text("mine")  # a file the user added beside a generated benchmark
    make_demo_data(empty, seed=1, **kwargs)  # a generated benchmark is replaced ...
    assert json.loads((empty / "dataset.json").read_text())["seed"] == 1
    assert (empty / "notes.md").read_text() == "mine"  # ... and the user's other files are kept
    assert sorted(p.name for p in empty.iterdir()) == ["dataset.json", "images", "masks", "notes.md"]
    fresh = make_demo_data(tmp_path / "fresh", seed=1, **kwargs)
    assert _digest(empty) == _digest(fresh)  # the replacement is the full dataset, nothing stale


def test_cli_refuses_a_foreign_folder_and_writes_into_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--num-train", "2", "--num-val", "1", "--size", "32", "--workers", "0", "--no-progress"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("x")
    assert main(["make-demo-data", str(tmp_path / "data"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a generated demo dataset" in err
    assert (tmp_path / "data" / "keep.txt").read_text() == "x"

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # `pspnet make-demo-data .` in an empty folder, then again over it
    assert main(["make-demo-data", ".", *argv]) == 0
    assert main(["make-demo-data", ".", "--seed", "3", *argv]) == 0
    assert json.loads((here / "dataset.json").read_text())["seed"] == 3
    assert sorted(p.name for p in here.iterdir()) == ["dataset.json", "images", "masks"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "here"]  # no temporary folder left
