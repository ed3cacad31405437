"""The authors' Caffe models: our converted model computes what the Caffe net computes.

The caffemodels here are written with our protobuf writer, laid out like the authors' deploy
prototxts (caffe_reference.build_pspnet_net: same layer names, parameters, in-place BN/ReLU,
[x, bin6, bin3, bin2, bin1] concatenation, Caffe's Split layers), tiny widths and distinct random
blobs, so that a tensor landing in the wrong place changes the logits. The expected logits come
from caffe_reference.caffe_forward, a layer-by-layer interpreter of the net with Caffe's semantics
(the fork's BN and Interp, Caffe's ceil-mode pooling), fed the BGR mean-subtracted input built by
hand -- never from our modules or our preprocessing.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from caffe_reference import NetSpec, build_pspnet_net, caffe_forward, caffe_input, insert_splits
from hypothesis import given, settings
from hypothesis import strategies as st

from pspnet.cli import main
from pspnet.data.preprocess import CAFFE_PREPROCESS
from pspnet.errors import InputError
from pspnet.io.caffe_proto import (
    CaffeBlob,
    CaffeLayer,
    CaffeNet,
    ConvolutionParam,
    EltwiseParam,
    InterpParam,
    PoolingParam,
    encode_net,
    parse_net,
    read_caffemodel,
    write_caffemodel,
)
from pspnet.io.checkpoint import load_model
from pspnet.io.convert import convert_checkpoint
from pspnet.io.convert_caffe import caffe_pool_size

TOL = 1e-4
# BN layers given a non-default eps: the converter must fold each into the running variance
EPS = {
    "conv1_2_3x3/bn": 0.05,
    "conv3_1_1x1_reduce/bn": 0.1,
    "conv5_3_pool2_conv/bn": 0.03,
    "conv5_4/bn": 0.08,
}


def _image(size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _ours(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(model.preprocess.to_tensor(image)[None])["out"]


def _reference(net: CaffeNet, image: np.ndarray) -> torch.Tensor:
    return caffe_forward(net, caffe_input(image))["conv6_interp"]


@pytest.fixture(scope="module")
def ade_style(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NetSpec, CaffeNet]:
    """ResNet-50, stride on conv3_1_1x1_reduce (pspnet50_ADE20K), Split layers as Caffe saves them."""
    spec = NetSpec(depth=50, stride_in_1x1=True, eps=EPS, classes=6)
    net = insert_splits(build_pspnet_net(spec))
    path = write_caffemodel(net, tmp_path_factory.mktemp("caffe") / "pspnet50_ADE20K.caffemodel")
    return path, spec, net


def test_ade_style_resnet50_matches_the_caffe_net(ade_style: tuple[Path, NetSpec, CaffeNet]) -> None:
    path, spec, net = ade_style
    result = convert_checkpoint(path)  # .caffemodel -> source "caffe"
    config = result.model.config
    assert result.source == "caffe"
    assert (config.depth, config.stride_in_1x1, config.stem_width, config.widths) == (
        50,
        True,
        4,
        (4, 8, 16, 32),
    )
    assert (config.num_classes, config.head_channels, config.bins, config.aux) == (6, 8, (1, 2, 3, 6), False)
    assert config.align_corners and config.output_stride == 8
    assert result.model.preprocess == CAFFE_PREPROCESS
    assert any("[x, bin6, bin3, bin2, bin1]" in n for n in result.notes)
    assert any("folded" in n for n in result.notes)

    image = _image(spec.input_size)
    expected = _reference(net, image)
    diff = (_ours(result.model, image) - expected).abs().max().item()
    assert diff < TOL, diff
    assert expected.abs().max() > 0.5  # logits of a sensible scale, so TOL means something

    # The eps values above matter: ignoring them (eps 1e-5 everywhere) gives other logits,
    # so the comparison above would catch a missing fold.
    plain = CaffeNet(net.name, [dataclasses.replace(layer) for layer in net.layers], net.input, net.input_dim)
    for layer in plain.layers:
        if layer.bn_param is not None:
            layer.bn_param = dataclasses.replace(layer.bn_param, eps=None)
    assert (_reference(plain, image) - expected).abs().max() > 10 * TOL


def test_voc_style_resnet101_with_legacy_encoding_matches(tmp_path: Path) -> None:
    """ResNet-101, stride on the 3x3 (pspnet101_VOC2012/cityscapes); unpacked floats, 4-D legacy shapes."""
    spec = NetSpec(depth=101, stride_in_1x1=False, classes=4, feature=6, seed=3)
    net = build_pspnet_net(spec)
    path = write_caffemodel(net, tmp_path / "pspnet101_VOC2012.caffemodel", packed=False, legacy_shape=True)
    result = convert_checkpoint(path, source="caffe")
    config = result.model.config
    assert (config.depth, config.stride_in_1x1, config.num_classes) == (101, False, 4)
    image = _image(spec.input_size, seed=2)
    diff = (_ours(result.model, image) - _reference(net, image)).abs().max().item()
    assert diff < TOL, diff


def test_bins_given_in_another_order_still_match(ade_style: tuple[Path, NetSpec, CaffeNet]) -> None:
    path, spec, net = ade_style
    result = convert_checkpoint(path, bins=(6, 3, 2, 1))
    assert result.model.config.bins == (6, 3, 2, 1)
    image = _image(spec.input_size, seed=4)
    assert (_ours(result.model, image) - _reference(net, image)).abs().max() < TOL


def test_cli_convert_then_load_model(
    ade_style: tuple[Path, NetSpec, CaffeNet], tmp_path: Path, capsys
) -> None:
    path, spec, net = ade_style
    out = tmp_path / "pspnet50_ade20k_caffe.safetensors"
    assert main(["convert", str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(caffe)" in printed and "BGR" in printed
    model = load_model(out)
    assert model.preprocess == CAFFE_PREPROCESS
    assert model.config.stride_in_1x1
    image = _image(spec.input_size, seed=5)
    assert (_ours(model, image) - _reference(net, image)).abs().max() < TOL


def test_training_net_extras_are_dropped_not_imported(tmp_path: Path) -> None:
    """A net saved from training: data layer, an auxiliary branch with weights, a loss."""
    spec = NetSpec(depth=50, classes=3, feature=6, seed=7)
    net = build_pspnet_net(spec)
    rng = np.random.default_rng(0)
    data = CaffeLayer("data", "ImageSegData", [], ["data", "label"])
    aux_w = CaffeBlob((3, 64, 1, 1), rng.normal(0, 0.1, 3 * 64).astype(np.float32))
    aux = CaffeLayer(
        "conv4_aux", "Convolution", ["conv4_6"], ["conv4_aux"], [aux_w], convolution_param=ConvolutionParam(3)
    )
    loss = CaffeLayer("loss", "SoftmaxWithLoss", ["conv6", "label"], ["loss"], loss_weight=(1.0,))
    layers = list(net.layers)
    layers.insert(layers.index(next(x for x in layers if x.name == "conv5_1_1x1_reduce")), aux)
    train_net = CaffeNet("train", [data, *layers[:-1], loss], [], [])
    path = write_caffemodel(train_net, tmp_path / "train_iter_1000.caffemodel")
    imported = convert_checkpoint(path)
    assert any("conv4_aux" in n and "not imported" in n for n in imported.notes)
    assert any("loss" in n for n in imported.notes)
    image = _image(spec.input_size)
    assert (_ours(imported.model, image) - _reference(net, image)).abs().max() < TOL


def _without(net: CaffeNet, name: str) -> CaffeNet:
    return CaffeNet(net.name, [layer for layer in net.layers if layer.name != name], net.input, net.input_dim)


def _edited(net: CaffeNet, name: str, **changes: object) -> CaffeNet:
    layers = [dataclasses.replace(x, **changes) if x.name == name else x for x in net.layers]
    return CaffeNet(net.name, layers, net.input, net.input_dim)


@pytest.fixture(scope="module")
def small_net() -> CaffeNet:
    return build_pspnet_net(NetSpec(depth=50, classes=3, feature=6, seed=11))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n: _without(n, "conv3_2_3x3/bn"), "conv3_2_3x3/bn"),
        (lambda n: _without(n, "conv6"), "conv6"),
        (
            lambda n: _edited(
                n, "conv5_2_3x3", convolution_param=ConvolutionParam(32, False, (2,), (3,), (1,), (2,))
            ),
            "dilation",
        ),
        (lambda n: _edited(n, "conv5_1_3x3/bn", type="BatchNorm"), "BatchNorm"),
        (lambda n: _edited(n, "conv4_2", eltwise_param=EltwiseParam(operation=0)), "conv4_2"),
        (lambda n: _edited(n, "conv2_1/relu", type="Power"), "conv2_1/relu (Power)"),
    ],
    ids=["missing-bn", "missing-classifier", "not-os8", "stock-batchnorm", "eltwise-prod", "unknown-layer"],
)
def test_nets_that_are_not_pspnet_are_refused_by_name(
    small_net: CaffeNet, tmp_path: Path, edit, message: str
) -> None:
    path = write_caffemodel(edit(small_net), tmp_path / "broken.caffemodel")
    with pytest.raises(InputError) as info:
        convert_checkpoint(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_wrong_bins_are_refused_with_the_fix(small_net: CaffeNet, tmp_path: Path) -> None:
    path = write_caffemodel(small_net, tmp_path / "model.caffemodel")
    with pytest.raises(InputError, match=r"--bins 1 2 3 6"):
        convert_checkpoint(path, bins=(1, 2, 4, 8))


# --- the protobuf reader on hostile input ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a caffemodel"),
        (b'name: "pspnet"\nlayer {\n  name: "conv1"\n}\n', "prototxt"),
        (b"\xa2\x06\x80\x80\x80\x80\x80\x20", "declares"),  # field 100, length 2**40: refused, not allocated
        (b"\x12\x02\x0a\x00", "V1"),  # NetParameter.layers (V1)
        (b"\xa2\x06\x05\x3a\x03\x2d\x00\x00", "not a caffemodel"),  # a float cut short inside a blob
    ],
    ids=["empty", "junk", "text", "huge-length", "v1", "truncated-float"],
)
def test_unreadable_files_are_input_errors_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.caffemodel"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_caffemodel(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_truncated_caffemodel_is_refused(small_net: CaffeNet, tmp_path: Path) -> None:
    data = encode_net(small_net)
    for cut in (len(data) // 2, len(data) - 1, 7):
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="not a caffemodel"):
            read_caffemodel(path)


# --- the writer and reader agree -----------------------------------------------------------------

_u32 = st.integers(0, 2**32 - 1)
_i32 = st.integers(-(2**31), 2**31 - 1)
_f32 = st.floats(width=32, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    conv=st.builds(
        ConvolutionParam,
        num_output=st.none() | _u32,
        bias_term=st.none() | st.booleans(),
        pad=st.lists(_u32, max_size=3).map(tuple),
        kernel_size=st.lists(_u32, max_size=3).map(tuple),
        stride_h=st.none() | _u32,
        group=st.none() | _u32,
    ),
    interp=st.builds(
        InterpParam, height=st.none() | _i32, pad_beg=st.none() | _i32, zoom_factor=st.none() | _i32
    ),
    pool=st.builds(
        PoolingParam, pool=st.none() | st.integers(0, 2), kernel_size=_u32, global_pooling=st.booleans()
    ),
    coeff=st.lists(_f32, max_size=4).map(tuple),
    packed=st.booleans(),
    name=st.text(max_size=12),
)
def test_layer_parameters_round_trip(
    conv: ConvolutionParam,
    interp: InterpParam,
    pool: PoolingParam,
    coeff: tuple[float, ...],
    packed: bool,
    name: str,
) -> None:
    layer = CaffeLayer(
        name,
        "X",
        ["a", "b"],
        ["c"],
        convolution_param=conv,
        interp_param=interp,
        pooling_param=pool,
        eltwise_param=EltwiseParam(coeff=coeff),
    )
    net = CaffeNet("n", [layer], ["data"], [1, 3, 5, 5])
    assert parse_net(encode_net(net, packed_params=packed)) == net


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(_f32, max_size=300),
    double=st.booleans(),
    packed=st.booleans(),
    legacy=st.booleans(),
)
def test_blobs_round_trip_in_every_encoding(
    values: list[float], double: bool, packed: bool, legacy: bool
) -> None:
    data = np.array(values, dtype=np.float64 if double else np.float32)
    blob = CaffeBlob((1, len(values), 1, 1) if legacy else (len(values),), data)
    net = CaffeNet("n", [CaffeLayer("l", "Convolution", blobs=[blob, blob])])
    back = parse_net(encode_net(net, packed=packed, legacy_shape=legacy)).layers[0].blobs
    for got in back:
        assert got.shape == blob.shape
        assert got.data.dtype == data.dtype or not values  # no values written: no type either
        np.testing.assert_array_equal(got.data, data)


def test_unpacked_floats_are_decoded_in_bulk() -> None:
    """A large unpacked blob (old encoders) and fields after it decode exactly."""
    data = np.arange(300_000, dtype=np.float32) * np.float32(0.5) - 7
    net = CaffeNet("n", [CaffeLayer("a", "BN", blobs=[CaffeBlob((300_000,), data)]), CaffeLayer("b", "ReLU")])
    back = parse_net(encode_net(net, packed=False))
    np.testing.assert_array_equal(back.layers[0].blobs[0].data, data)
    assert [layer.name for layer in back.layers] == ["a", "b"]


def _varint(value: int) -> bytes:
    """Base-128 little-endian groups, high bit = more (the protobuf spec)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_wire_format_by_hand() -> None:
    """Bytes written from the protobuf spec, not by our writer: varints, negative int32, packed dims."""
    assert _varint(150) == b"\x96\x01"  # the spec's own example
    shape = _field(1, b"\x02\x96\x01")  # BlobShape.dim packed [2, 150]
    blob = _field(7, shape) + _field(5, struct.pack("<300f", *range(300)))  # shape, packed data
    interp = b"\x28" + b"\xfe" + b"\xff" * 8 + b"\x01"  # pad_beg (field 5) = -2: a 10-byte varint
    layer = _field(1, b"L") + _field(2, b"Interp") + _field(7, blob) + _field(143, interp)
    net = parse_net(_field(1, b"net") + _field(100, layer))
    (parsed,) = net.layers
    assert (net.name, parsed.name, parsed.type) == ("net", "L", "Interp")
    assert parsed.interp_param == InterpParam(pad_beg=-2)
    assert parsed.blobs[0].shape == (2, 150)
    np.testing.assert_array_equal(parsed.blobs[0].data, np.arange(300, dtype=np.float32))


def test_caffe_pool_size_rounds_up_and_clips() -> None:
    # hand-computed from Caffe's formula: ceil((size + 2 pad - kernel) / stride) + 1, clipped
    assert caffe_pool_size(237, 3, 2, 1) == 119  # pool1 of a 473 input
    assert caffe_pool_size(60, 10, 10, 0) == 6 and caffe_pool_size(90, 45, 45, 0) == 2
    assert caffe_pool_size(8, 3, 2, 1) == 5  # floor mode would give 4
    assert caffe_pool_size(5, 2, 2, 1) == 3  # the clip: ceil gives 4, whose window starts in the padding


def test_fine_tuning_from_a_caffemodel_refuses_what_the_tensors_cannot_say(
    ade_style: tuple[Path, NetSpec, CaffeNet], tmp_path: Path
) -> None:
    """stride_in_1x1 and the BGR mean-only input have no tensors: loading must not drop them silently."""
    from pspnet import create_model
    from pspnet.io.convert import load_init_weights

    path, spec, _ = ade_style
    shape = {"stem_width": spec.stem_width, "widths": spec.widths, "head_channels": spec.head, "aux": False}
    plain = create_model("pspnet50", num_classes=spec.classes, **shape)
    with pytest.raises(InputError, match=r"stride_in_1x1.*--set model.overrides.stride_in_1x1=true"):
        load_init_weights(plain, path)
    strided = create_model("pspnet50", num_classes=spec.classes, stride_in_1x1=True, **shape)
    with pytest.raises(InputError, match="expect input normalised as .*bgr"):
        load_init_weights(strided, path)


def test_a_renamed_caffemodel_is_recognised(
    ade_style: tuple[Path, NetSpec, CaffeNet], tmp_path: Path
) -> None:
    from pspnet.io.convert import detect_source

    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(ade_style[0].read_bytes())
    with pytest.raises(InputError, match="looks like a Caffe model.*--source caffe"):
        detect_source(renamed)


def test_a_text_file_starting_with_a_newline_is_not_taken_for_a_caffemodel(tmp_path: Path) -> None:
    """0x0a is also a newline: the name after it must be a short printable string followed by a
    NetParameter field, so a stray text file gets the torch reader's error, not the Caffe hint."""
    from pspnet.io.convert import detect_source, looks_like_caffemodel

    text = tmp_path / "notes.pth"
    text.write_text("\nthese are not weights, just a note that was saved with the wrong name\n")
    assert not looks_like_caffemodel(text)
    with pytest.raises(InputError) as info:
        detect_source(text)
    assert "Caffe" not in str(info.value)
