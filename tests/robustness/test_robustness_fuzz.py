"""Fuzzing with hypothesis: damaged image bytes, random arrays, random write failures, list-file paths.

Each property says what may come out: a valid result, or the package's own one-line error, and
nothing else (no IndexError, struct.error, crash or escaped path). Transforms, metrics, sliding
windows and config junk are fuzzed where they live (tests/data, tests/engine, tests/test_config.py).
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from robustness_helpers import disk_fills_up, hidden_leftovers

from pspnet.data.datasets import open_dataset
from pspnet.data.imageio import read_image, read_mask
from pspnet.errors import DataError, InputError, StorageError
from pspnet.io.train_state import find_last_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from pspnet.models.registry import create_model
from pspnet.prediction import predict

_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_FEWER = settings(max_examples=30, deadline=None)  # each example writes two checkpoints


def _encoded(kind: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    if kind == "jpeg":
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=80)
    elif kind == "png rgb":
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    elif kind == "png palette":
        im = Image.fromarray(rng.integers(0, 21, (24, 32), dtype=np.uint8), mode="P")
        im.putpalette(list(range(256)) * 3)
        im.save(buffer, "PNG")
    elif kind == "png 16-bit":
        Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16)).save(buffer, "PNG")
    else:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buffer, "BMP")
    return buffer.getvalue()


_SEEDS = {kind: _encoded(kind) for kind in ("jpeg", "png rgb", "png palette", "png 16-bit", "bmp")}


@st.composite
def damaged_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid image file cut short and/or with some bytes overwritten, or plain random bytes."""
    kind = draw(st.sampled_from([*_SEEDS, "random"]))
    if kind == "random":
        return kind, draw(st.binary(max_size=300))
    data = bytearray(_SEEDS[kind])
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return kind, bytes(data[:cut] if draw(st.booleans()) else data)


@_SETTINGS
@given(damaged_files(), st.sampled_from([".png", ".jpg"]))
def test_damaged_image_bytes_give_an_image_or_a_data_error(
    tmp_path: Path, case: tuple[str, bytes], suffix: str
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(case[1])
    for complete in (False, True):  # OpenCV alone (training), then also Pillow's full decode (predict)
        try:
            image = read_image(path, max_pixels=10**6, check_complete=complete)  # headers may claim any size
        except DataError as exc:
            assert str(path) in str(exc)
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    try:
        mask = read_mask(path, max_pixels=10**6)
    except DataError as exc:
        assert str(path) in str(exc)
    else:
        assert mask.ndim == 2 and mask.dtype.kind in "ui"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("pspnet_tiny", num_classes=3).eval()


_DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_]


@st.composite
def odd_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_DTYPES))
    h, w = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    shape = draw(
        st.sampled_from([(h, w), (h, w, 1), (h, w, 3), (h, w, 4), (3, h, w), (h, w, 5), (h,), (1, h, w, 3)])
    )
    array = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, shape).astype(dtype)
    if dtype in (np.float32, np.float64) and array.size and draw(st.booleans()):
        array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return array


@settings(max_examples=50, deadline=None)
@given(odd_arrays(), st.sampled_from(["whole", "slide"]))
def test_any_array_gives_labels_or_an_input_error(
    model: torch.nn.Module, array: np.ndarray, mode: str
) -> None:
    try:
        result = predict(model, array, mode=mode, crop_size=16)
    except InputError:
        return
    assert array.dtype == np.uint8  # only 8-bit arrays are accepted
    assert result.labels.shape == array.shape[:2] and result.labels.max() < 3


@_FEWER
@given(
    st.sampled_from([".model.safetensors.", ".state.pt.", ".config.yaml.", ".last."]),
    st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EIO]),
    st.floats(0.0, 1.0),
)
def test_any_failed_checkpoint_write_keeps_the_previous_checkpoint(
    model: torch.nn.Module, failing: str, code: int, fraction: float
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        save_checkpoint(out, model, {"iteration": 1}, "seed: 0\n", iteration=1)
        fault = disk_fills_up(lambda p: p.name.startswith(failing), code, fraction)
        with fault as failed, pytest.raises(StorageError) as info:
            save_checkpoint(out, model, {"iteration": 2}, "seed: 0\n", iteration=2)
        assert len(failed) == 1 and info.value.errno == code
        assert "\n" not in str(info.value) and os.strerror(code) in str(info.value)
        assert hidden_leftovers(out) == []
        _, state = load_checkpoint(find_last_checkpoint(out))
        assert state == {"iteration": 1}
        renamed = ["iter_00000001", "iter_00000002"] if failing == ".last." else ["iter_00000001"]
        assert [p.name for p in list_checkpoints(out)] == renamed


_SEGMENTS = st.sampled_from(["..", ".", "images", "a.png", "sub", "x"])


@_SETTINGS
@given(st.lists(st.lists(_SEGMENTS, min_size=1, max_size=5), min_size=1, max_size=2))
def test_list_file_paths_never_leave_the_data_root(tmp_path: Path, relative: list[list[str]]) -> None:
    root = tmp_path / "data"
    (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "images" / "a.png").write_bytes(b"")
    tokens = ["/".join(parts) for parts in relative] + ["images/a.png"] * (2 - len(relative))
    listing = root / "train.txt"
    listing.write_text(" ".join(tokens) + "\n")
    base = os.path.realpath(root)
    outside = [
        t for t in tokens if os.path.commonpath([base, os.path.normpath(os.path.join(base, t))]) != base
    ]
    try:
        dataset = open_dataset(listing, "list", num_classes=3, strict=False)
    except DataError as exc:
        if outside:
            assert "points outside the data root" in str(exc)
            return
        assert "no samples found" in str(exc)  # only missing files: nothing left to read
        return
    assert not outside, f"{outside} escaped the data root"
    for sample in dataset.samples:
        for path in (sample.image, sample.mask):
            assert os.path.commonpath([base, os.path.realpath(path)]) == base
