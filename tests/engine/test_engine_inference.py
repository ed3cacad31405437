"""The authors' inference protocol: window grid, mean padding, flips, scales, batching."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet import create_model
from pspnet.data.info import DatasetInfo, default_palette
from pspnet.engine.inference import predict_probs, scaled_size, sliding_windows
from pspnet.errors import InputError

ATOL = 2e-5
NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    # Non-trivial BN statistics so outputs vary across pixels and classes.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _softmax(model: torch.nn.Module, raw_hwc: np.ndarray) -> torch.Tensor:
    """Independent single-image forward: raw 0-255 HWC -> (C, H, W) probabilities."""
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    x = (torch.from_numpy(np.asarray(raw_hwc, dtype=np.float32).transpose(2, 0, 1).copy()) - mean) / std
    with torch.no_grad():
        return torch.softmax(model(x[None])["out"][0], dim=0)


def _authors_windows(h: int, w: int, crop: int, stride_rate: float) -> list[tuple[int, int, int, int]]:
    """The loops of semseg tool/test.py scale_process, restated."""
    stride = int(np.ceil(crop * stride_rate))
    grid_h = int(np.ceil(float(h - crop) / stride) + 1)
    grid_w = int(np.ceil(float(w - crop) / stride) + 1)
    out = []
    for ih in range(grid_h):
        for iw in range(grid_w):
            e_h = min(ih * stride + crop, h)
            e_w = min(iw * stride + crop, w)
            out.append((e_h - crop, e_h, e_w - crop, e_w))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(1, 120),
    st.sampled_from([2 / 3, 0.5, 1.0, 0.3]),
)
def test_sliding_windows_match_the_authors_and_cover_every_pixel(
    h: int, w: int, crop: int, rate: float
) -> None:
    h, w = max(h, crop), max(w, crop)  # the authors pad smaller images to the crop first
    stride = math.ceil(crop * rate)
    windows = sliding_windows(h, w, crop, stride)
    assert windows == _authors_windows(h, w, crop, rate)
    count = np.zeros((h, w), dtype=np.int32)
    for y0, y1, x0, x1 in windows:
        assert y0 >= 0 and y1 <= h and x0 >= 0 and x1 <= w
        assert (y1 - y0, x1 - x0) == (crop, crop)
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1
    assert len(set(windows)) == len(windows)


@pytest.mark.parametrize(
    ("h", "w", "crop", "stride", "expected_rows", "expected_cols"),
    [
        (33, 33, 33, 22, [0], [0]),
        (40, 56, 33, 22, [0, 7], [0, 22, 23]),
        (100, 34, 33, 22, [0, 22, 44, 66, 67], [0, 1]),
    ],
)
def test_sliding_windows_by_hand(
    h: int, w: int, crop: int, stride: int, expected_rows: list[int], expected_cols: list[int]
) -> None:
    windows = sliding_windows(h, w, crop, stride)
    assert sorted({y0 for y0, _, _, _ in windows}) == expected_rows
    assert sorted({x0 for _, _, x0, _ in windows}) == expected_cols
    assert len(windows) == len(expected_rows) * len(expected_cols)


def test_sliding_windows_refuse_an_unpadded_image() -> None:
    with pytest.raises(ValueError, match="pad it first"):
        sliding_windows(10, 40, 33, 22)


def test_scaled_size_keeps_aspect_with_the_authors_rounding() -> None:
    assert scaled_size(375, 500, 512) == (384, 512)  # 375 * 512 / 500 = 384
    assert scaled_size(500, 333, 256) == (256, 170)  # 333 * 256 / 500 = 170.496
    assert scaled_size(100, 100, 50) == (50, 50)


def test_whole_equals_a_plain_forward(model: torch.nn.Module) -> None:
    image = _image(45, 61)
    assert torch.allclose(predict_probs(model, image), _softmax(model, image), atol=ATOL)


def test_flip_average_equals_manual_computation(model: torch.nn.Module) -> None:
    image = _image(40, 52, seed=1)
    plain = _softmax(model, image)
    mirrored = _softmax(model, np.ascontiguousarray(image[:, ::-1])).flip(-1)
    expected = (plain + mirrored) / 2
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the flip really changes something
    assert torch.allclose(predict_probs(model, image, flip=True), expected, atol=ATOL)


def test_slide_on_an_image_of_crop_size_equals_whole(model: torch.nn.Module) -> None:
    image = _image(41, 41, seed=2)
    whole = predict_probs(model, image, flip=True)
    slide = predict_probs(model, image, mode="slide", crop_size=41, flip=True)
    assert torch.allclose(whole, slide, atol=ATOL)


def test_slide_equals_manual_window_average(model: torch.nn.Module) -> None:
    image = _image(40, 56, seed=3)
    crop = 33
    total = torch.zeros(4, 40, 56)
    count = torch.zeros(40, 56)
    for y0, y1, x0, x1 in _authors_windows(40, 56, crop, 2 / 3):
        window = np.ascontiguousarray(image[y0:y1, x0:x1])
        probs = (
            _softmax(model, window) + _softmax(model, np.ascontiguousarray(window[:, ::-1])).flip(-1)
        ) / 2
        total[:, y0:y1, x0:x1] += probs
        count[y0:y1, x0:x1] += 1
    expected = total / count
    for batch_size in (1, 3, 8):
        got = predict_probs(model, image, mode="slide", crop_size=crop, flip=True, batch_size=batch_size)
        assert torch.allclose(got, expected, atol=ATOL), batch_size


@pytest.mark.parametrize(("h", "w"), [(20, 25), (17, 50), (50, 9)])
def test_slide_pads_small_images_with_the_mean_symmetrically(model: torch.nn.Module, h: int, w: int) -> None:
    crop = 33
    image = _image(h, w, seed=4)
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    top, left = pad_h // 2, pad_w // 2
    mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    padded = np.broadcast_to(mean, (h + pad_h, w + pad_w, 3)).copy()
    padded[top : top + h, left : left + w] = image
    total = torch.zeros(4, *padded.shape[:2])
    count = torch.zeros(padded.shape[:2])
    for y0, y1, x0, x1 in _authors_windows(padded.shape[0], padded.shape[1], crop, 2 / 3):
        total[:, y0:y1, x0:x1] += _softmax(model, padded[y0:y1, x0:x1])
        count[y0:y1, x0:x1] += 1
    expected = (total / count)[:, top : top + h, left : left + w]
    got = predict_probs(model, image, mode="slide", crop_size=crop)
    assert got.shape == (4, h, w)
    assert torch.allclose(got, expected, atol=ATOL)


def test_padding_is_zero_after_normalisation(model: torch.nn.Module) -> None:
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        predict_probs(model, _image(21, 33, seed=5), mode="slide", crop_size=33)
    finally:
        handle.remove()
    (batch,) = seen
    assert batch.shape == (1, 3, 33, 33)
    assert torch.all(batch[0, :, :6] == 0) and torch.all(batch[0, :, -6:] == 0)  # 12 rows padded, 6 + 6
    assert torch.all(batch[0, :, 6:27].abs().sum(0) > 0)


def test_windows_and_flips_go_through_the_network_in_batches(model: torch.nn.Module) -> None:
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        # 40x56 with crop 33: 2 x 3 = 6 windows; with flips 12 inputs; 4 per batch -> 3 passes.
        predict_probs(model, _image(40, 56), mode="slide", crop_size=33, flip=True, batch_size=4)
        assert sizes == [4, 4, 4]
        sizes.clear()
        predict_probs(model, _image(40, 56), mode="slide", crop_size=33, batch_size=4)
        assert sizes == [4, 2]
    finally:
        handle.remove()


def test_single_scale_list_equals_single_scale(model: torch.nn.Module) -> None:
    image = _image(36, 48, seed=6)
    plain = predict_probs(model, image)
    assert torch.allclose(predict_probs(model, image, scales=[1.0]), plain, atol=ATOL)
    # base_size equal to the long side at scale 1.0 is the identity resize.
    assert torch.allclose(predict_probs(model, image, scales=(1.0,), base_size=48), plain, atol=ATOL)


def test_multi_scale_averages_resized_probabilities(model: torch.nn.Module) -> None:
    image = _image(36, 48, seed=7)
    expected = torch.zeros(4, 36, 48)
    for scale in (0.5, 1.5):
        long_side = round(scale * 64)
        new_h, new_w = round(long_side / 48 * 36), long_side
        resized = cv2.resize(image.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        probs = _softmax(model, resized)
        expected += F.interpolate(probs[None], (36, 48), mode="bilinear", align_corners=False)[0]
    expected /= 2
    got = predict_probs(model, image, scales=(0.5, 1.5), base_size=64)
    assert torch.allclose(got, expected, atol=ATOL)


def test_output_is_a_cpu_probability_map(model: torch.nn.Module) -> None:
    probs = predict_probs(model, _image(30, 30), mode="slide", crop_size=17, scales=(0.75, 1.25), flip=True)
    assert probs.device.type == "cpu" and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(30, 30), atol=1e-5)


def test_training_mode_is_restored_and_eval_mode_used(model: torch.nn.Module) -> None:
    image = _image(32, 32, seed=8)
    expected = predict_probs(model, image)
    model.train()
    try:
        got = predict_probs(model, image)
        assert model.training
    finally:
        model.eval()
    assert torch.allclose(got, expected, atol=ATOL)


def test_every_scale_is_relative_to_the_image_unless_a_base_size_is_given() -> None:
    """One rule: the model's dataset base size (512 here) is never an implicit base, so
    ``scales=(0.75,)`` runs 0.75x the image's own sides (not 0.75 x 512)."""
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    net.dataset_info = DatasetInfo("d", NAMES, default_palette(4), crop_size=33, base_size=512)
    seen: list[tuple[int, int]] = []
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        predict_probs(net, _image(36, 48), scales=(0.75,))
        assert seen == [(27, 36)]
        seen.clear()
        predict_probs(net, _image(36, 48), scales=(0.5, 1.0))
        assert seen == [(18, 24), (36, 48)]
        seen.clear()
        predict_probs(net, _image(36, 48), scales=(0.5,), base_size=64)
        assert seen == [(24, 32)]
    finally:
        handle.remove()


def test_slide_crop_defaults_to_the_models_dataset_info() -> None:
    torch.manual_seed(0)
    net = create_model("pspnet_tiny", num_classes=4).eval()
    with pytest.raises(InputError, match="crop size"):
        predict_probs(net, _image(20, 20), mode="slide")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "tiles"}, "mode"),
        ({"scales": ()}, "scales"),
        ({"scales": (0.0,)}, "scales"),
        ({"stride_rate": 0.0}, "stride_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"base_size": 0, "scales": (1.0, 2.0)}, "base_size"),
        ({"scales": "0.5 1.0"}, "scales must be a list of numbers"),
        ({"scales": (0.5, None)}, "scales must be a list of numbers"),
        ({"crop_size": "473", "mode": "slide"}, "crop_size must be a whole number"),
        ({"base_size": 64.5}, "base_size must be a whole number"),
    ],
)
def test_bad_arguments_raise_input_error(model: torch.nn.Module, kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        predict_probs(model, _image(20, 20), **kwargs)


def test_a_bare_number_is_one_scale(model: torch.nn.Module) -> None:
    image = _image(40, 24)
    torch.testing.assert_close(
        predict_probs(model, image, scales=0.5), predict_probs(model, image, scales=[0.5])
    )
    assert not torch.equal(predict_probs(model, image, scales=0.5), predict_probs(model, image, scales=[1.0]))


def test_bad_image_raises_input_error(model: torch.nn.Module) -> None:
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        predict_probs(model, np.zeros((20, 20), dtype=np.uint8))


def test_autocast_is_refused_off_cuda(model: torch.nn.Module) -> None:
    with pytest.raises(InputError, match="needs a CUDA device"):
        predict_probs(model, _image(32, 32), amp_dtype=torch.bfloat16)
    with pytest.raises(InputError, match="amp_dtype must be"):
        predict_probs(model, _image(32, 32), amp_dtype=torch.float64)


@pytest.mark.parametrize("crop", [0, -3])
def test_a_crop_size_below_one_is_an_error_not_the_default(model: torch.nn.Module, crop: int) -> None:
    with pytest.raises(InputError, match=f"^crop_size must be >= 1 pixel, got {crop}$"):
        predict_probs(model, _image(20, 20), mode="slide", crop_size=crop)


def test_check_settings_names_the_command_line_options() -> None:
    from pspnet.engine.inference import check_settings

    assert check_settings(scales=[0.5, 1]) == (0.5, 1.0)
    with pytest.raises(InputError, match=r"^--scales must be positive numbers, got 1 -0.5$"):
        check_settings(scales=[1, -0.5], option_names=True)
    with pytest.raises(InputError, match=r"^--base-size must be >= 1 pixel, got 0$"):
        check_settings(base_size=0, option_names=True)
    with pytest.raises(InputError, match="scales must be positive"):
        check_settings(scales=[float("nan")])
