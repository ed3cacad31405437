"""MMSegmentation PSPNet import: exact key names, and the converted model computes MMSegmentation's logits.

The state dicts below are built from MMSegmentation's layer definitions (mmseg ResNetV1c/V1b,
ResLayer, PSPHead, FCNHead, mmcv ConvModule), with its key names, and the expected logits come
from a reference forward written here with torch.nn.functional straight from those definitions,
never from our modules.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pspnet.cli import main
from pspnet.data.preprocess import Preprocess
from pspnet.errors import InputError
from pspnet.io.checkpoint import load_model
from pspnet.io.convert import convert_checkpoint, detect_source
from pspnet.io.convert_mmseg import MMSegSettings, infer_mmseg_config, mmseg_settings, mmseg_to_pspnet
from pspnet.models.pspnet import PSPNet
from pspnet.models.registry import get_preset

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
D8 = ((1, 2, 1, 1), (1, 1, 2, 4))  # mmseg pspnet_r50-d8: strides, dilations
D16 = ((1, 2, 2, 1), (1, 1, 1, 2))
CITYSCAPES_FILE = "pspnet_r50-d8_512x1024_80k_cityscapes_20200605_003338-2966598c.pth"

# A config as MMSegmentation stores it in meta["config"] (cfg.pretty_text), reduced to what matters.
CONFIG_TEXT = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet50_v1c',
    backbone=dict(
        type='ResNetV1c', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False, style='pytorch', contract_dilation=True),
    decode_head=dict(type='PSPHead', in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1, num_classes=19, align_corners=False),
    auxiliary_head=dict(type='FCNHead', in_channels=1024, in_index=2, channels=256, num_convs=1,
        concat_input=False, dropout_ratio=0.1, num_classes=19, align_corners=False))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='Normalize', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)]
"""


# --- MMSegmentation's state dict, from its layer definitions -------------------------------------


class _Values:
    """Distinct random values per tensor (so a swapped pair is caught), on a stable scale."""

    def __init__(self, device: str, seed: int = 0) -> None:
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def conv(self, *shape: int) -> Tensor:
        if self.device == "meta":
            return torch.empty(shape, device="meta")
        fan_in = shape[1] * shape[2] * shape[3]
        return torch.randn(shape, generator=self.gen) * math.sqrt(2.0 / fan_in)

    def vector(self, n: int, base: float, spread: float) -> Tensor:
        if self.device == "meta":
            return torch.empty(n, device="meta")
        return base + spread * (torch.rand(n, generator=self.gen) - 0.5)

    def bn(self, prefix: str, n: int) -> dict[str, Tensor]:
        return {
            f"{prefix}.weight": self.vector(n, 1.0, 0.4),
            f"{prefix}.bias": self.vector(n, 0.0, 0.2),
            f"{prefix}.running_mean": self.vector(n, 0.0, 0.2),
            f"{prefix}.running_var": self.vector(n, 1.0, 0.5),
            f"{prefix}.num_batches_tracked": torch.tensor(80000, device=self.device),
        }


def mmseg_pspnet_state(
    depth: int = 50,
    *,
    stem_channels: int = 64,
    base_channels: int = 64,
    num_classes: int = 19,
    pool_scales: tuple[int, ...] = (1, 2, 3, 6),
    channels: int = 512,
    aux_channels: int = 256,
    v1b: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Tensor]:
    """``EncoderDecoder(ResNetV1c|V1b, PSPHead, FCNHead(num_convs=1, concat_input=False))`` keys/shapes."""
    v = _Values(device, seed)
    sd: dict[str, Tensor] = {}
    if v1b:  # ResNet._make_stem_layer, deep_stem=False: conv1 7x7 + norm1 ('bn1')
        sd["backbone.conv1.weight"] = v.conv(stem_channels, 3, 7, 7)
        sd.update(v.bn("backbone.bn1", stem_channels))
    else:  # deep_stem=True: Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu)
        half = stem_channels // 2
        for conv, cin, cout in ((0, 3, half), (3, half, half), (6, half, stem_channels)):
            sd[f"backbone.stem.{conv}.weight"] = v.conv(cout, cin, 3, 3)
            sd.update(v.bn(f"backbone.stem.{conv + 1}", cout))
    inplanes = stem_channels
    stage_out = []
    for i, (blocks, stride) in enumerate(zip(BLOCKS[depth], D8[0], strict=True)):
        planes = base_channels * 2**i
        for b in range(blocks):
            p = f"backbone.layer{i + 1}.{b}"
            sd[f"{p}.conv1.weight"] = v.conv(planes, inplanes, 1, 1)
            sd.update(v.bn(f"{p}.bn1", planes))
            sd[f"{p}.conv2.weight"] = v.conv(planes, planes, 3, 3)
            sd.update(v.bn(f"{p}.bn2", planes))
            sd[f"{p}.conv3.weight"] = v.conv(planes * 4, planes, 1, 1)
            sd.update(v.bn(f"{p}.bn3", planes * 4))
            if b == 0 and (stride != 1 or inplanes != planes * 4):  # ResLayer downsample
                sd[f"{p}.downsample.0.weight"] = v.conv(planes * 4, inplanes, 1, 1)
                sd.update(v.bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
        stage_out.append(inplanes)
    in_channels = stage_out[3]
    for i, _ in enumerate(pool_scales):  # PPM: Sequential(AdaptiveAvgPool2d, ConvModule 1x1)
        sd[f"decode_head.psp_modules.{i}.1.conv.weight"] = v.conv(channels, in_channels, 1, 1)
        sd.update(v.bn(f"decode_head.psp_modules.{i}.1.bn", channels))
    sd["decode_head.bottleneck.conv.weight"] = v.conv(
        channels, in_channels + len(pool_scales) * channels, 3, 3
    )
    sd.update(v.bn("decode_head.bottleneck.bn", channels))
    sd["decode_head.conv_seg.weight"] = v.conv(num_classes, channels, 1, 1)
    sd["decode_head.conv_seg.bias"] = v.vector(num_classes, 0.0, 0.2)
    sd["auxiliary_head.convs.0.conv.weight"] = v.conv(aux_channels, stage_out[2], 3, 3)
    sd.update(v.bn("auxiliary_head.convs.0.bn", aux_channels))
    sd["auxiliary_head.conv_seg.weight"] = v.conv(num_classes, aux_channels, 1, 1)
    sd["auxiliary_head.conv_seg.bias"] = v.vector(num_classes, 0.0, 0.2)
    return sd


# --- MMSegmentation's forward, from its layer definitions ----------------------------------------


def _bn(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,  # BN/SyncBN default; the PSPNet configs set no eps
    )


def _conv_module(sd: dict[str, Tensor], prefix: str, x: Tensor, padding: int = 0) -> Tensor:
    """mmcv ConvModule, order (conv, norm, act), no conv bias (bias='auto' with a norm)."""
    return F.relu(_bn(sd, f"{prefix}.bn", F.conv2d(x, sd[f"{prefix}.conv.weight"], padding=padding)))


def _bottleneck(sd: dict[str, Tensor], p: str, x: Tensor, stride: int, dilation: int) -> Tensor:
    """mmseg Bottleneck, style='pytorch': the stride is on the 3x3 conv."""
    out = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
    out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation)
    out = F.relu(_bn(sd, f"{p}.bn2", out))
    out = _bn(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
    identity = x
    if f"{p}.downsample.0.weight" in sd:
        identity = _bn(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
    return F.relu(out + identity)


def mmseg_forward(
    sd: dict[str, Tensor],
    img: Tensor,
    *,
    depth: int = 50,
    strides_dilations: tuple[tuple[int, ...], tuple[int, ...]] = D8,
    pool_scales: tuple[int, ...] = (1, 2, 3, 6),
    v1b: bool = False,
) -> tuple[Tensor, Tensor]:
    """EncoderDecoder.encode_decode (whole mode) + the auxiliary head, resized like the decode head."""
    if v1b:
        x = F.conv2d(img, sd["backbone.conv1.weight"], stride=2, padding=3)
        x = F.relu(_bn(sd, "backbone.bn1", x))
    else:
        x = img
        for conv, stride in ((0, 2), (3, 1), (6, 1)):
            x = F.conv2d(x, sd[f"backbone.stem.{conv}.weight"], stride=stride, padding=1)
            x = F.relu(_bn(sd, f"backbone.stem.{conv + 1}", x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    feats = []
    for i, (blocks, stride, dilation) in enumerate(zip(BLOCKS[depth], *strides_dilations, strict=True)):
        # ResLayer with contract_dilation=True: the first block of a dilated stage at dilation // 2
        first = dilation // 2 if dilation > 1 else dilation
        for b in range(blocks):
            x = _bottleneck(
                sd, f"backbone.layer{i + 1}.{b}", x, stride if b == 0 else 1, first if b == 0 else dilation
            )
        feats.append(x)
    x4 = feats[3]
    outs = [x4]
    for i, scale in enumerate(pool_scales):
        y = _conv_module(sd, f"decode_head.psp_modules.{i}.1", F.adaptive_avg_pool2d(x4, scale))
        outs.append(F.interpolate(y, size=x4.shape[2:], mode="bilinear", align_corners=False))
    y = _conv_module(sd, "decode_head.bottleneck", torch.cat(outs, dim=1), padding=1)
    logits = F.conv2d(y, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])  # dropout: eval
    aux = _conv_module(sd, "auxiliary_head.convs.0", feats[2], padding=1)
    aux = F.conv2d(aux, sd["auxiliary_head.conv_seg.weight"], sd["auxiliary_head.conv_seg.bias"])
    size = img.shape[2:]
    return (
        F.interpolate(logits, size=size, mode="bilinear", align_corners=False),
        F.interpolate(aux, size=size, mode="bilinear", align_corners=False),
    )


def _ours(model: PSPNet, img: Tensor) -> tuple[Tensor, Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(img)["out"]
        aux = model.aux_classifier(model.backbone(img)["layer3"])
        aux = F.interpolate(aux, size=img.shape[2:], mode="bilinear", align_corners=False)
    return out, aux


SMALL = {"stem_channels": 16, "base_channels": 8, "channels": 64, "aux_channels": 32}


def _save(tmp_path: Path, sd: dict[str, Tensor], name: str, meta: dict | None = None) -> Path:
    path = tmp_path / name
    torch.save({"meta": meta if meta is not None else {}, "state_dict": sd}, path)
    return path


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
def test_full_width_keys_and_shapes_fill_our_model_exactly(depth: int) -> None:
    sd = mmseg_pspnet_state(depth, device="meta")
    config = infer_mmseg_config(sd, (1, 2, 3, 6), MMSegSettings())
    assert (config.depth, config.num_classes, config.stem, config.stem_width) == (depth, 19, "deep", 32)
    assert config.widths == (64, 128, 256, 512)
    assert (config.head_channels, config.aux_channels, config.reduction, config.aux) == (512, 256, True, True)
    assert (config.contract_dilation, config.align_corners, config.avg_down) == (True, False, False)
    assert config.output_stride == 8
    mapped = mmseg_to_pspnet(sd)
    assert len(mapped) == len(sd)
    with torch.device("meta"):
        ours = PSPNet(config).state_dict()
    assert set(mapped) == set(ours)
    for key, value in mapped.items():
        assert value.shape == ours[key].shape, key
    preset = get_preset(f"pspnet{depth}_cityscapes").config
    assert (preset.depth, preset.num_classes, preset.use_ppm) == (config.depth, config.num_classes, True)


def test_key_mapping_spot_checks() -> None:
    sd = mmseg_pspnet_state(50, **SMALL)
    mapped = mmseg_to_pspnet(sd)
    pairs = {  # MMSegmentation name -> ours, written out by hand
        "backbone.stem.6.weight": "backbone.stem.6.weight",
        "backbone.stem.7.running_var": "backbone.stem.7.running_var",
        "backbone.layer3.0.downsample.1.weight": "backbone.layer3.0.downsample.1.weight",
        "decode_head.psp_modules.3.1.conv.weight": "ppm.branches.3.1.weight",
        "decode_head.psp_modules.2.1.bn.running_mean": "ppm.branches.2.2.running_mean",
        "decode_head.bottleneck.conv.weight": "classifier.0.weight",
        "decode_head.bottleneck.bn.bias": "classifier.1.bias",
        "decode_head.conv_seg.bias": "classifier.4.bias",
        "auxiliary_head.convs.0.conv.weight": "aux_classifier.0.weight",
        "auxiliary_head.convs.0.bn.num_batches_tracked": "aux_classifier.1.num_batches_tracked",
        "auxiliary_head.conv_seg.weight": "aux_classifier.4.weight",
    }
    for theirs, ours in pairs.items():
        assert mapped[ours] is sd[theirs], (theirs, ours)


@pytest.mark.parametrize(
    ("v1b", "name", "strides_dilations"),
    [
        (False, CITYSCAPES_FILE, D8),
        (True, "pspnet_r50b-d8_512x1024_80k_cityscapes.pth", D8),
        (False, "pspnet_r50-d16_custom.pth", D16),
    ],
)
def test_converted_model_computes_mmsegmentation_logits(
    v1b: bool, name: str, strides_dilations, tmp_path: Path
) -> None:
    sd = mmseg_pspnet_state(50, v1b=v1b, seed=3, **SMALL)
    src = _save(tmp_path, sd, name)  # no config in meta: the output stride comes from the file name
    assert detect_source(src) == "mmseg"
    result = convert_checkpoint(src, tmp_path / "out.safetensors", source="auto")
    assert result.source == "mmseg" and result.report.complete
    model = result.model
    assert model.config.stem == ("classic" if v1b else "deep")
    img = torch.randn(2, 3, 67, 83, generator=torch.Generator().manual_seed(1))
    # float64 on both sides: any mapping or semantic error shows far above rounding
    ref_out, ref_aux = mmseg_forward(
        {k: v.double() if v.is_floating_point() else v for k, v in sd.items()},
        img.double(),
        v1b=v1b,
        strides_dilations=strides_dilations,
    )
    out, aux = _ours(model.double(), img.double())
    assert out.shape == ref_out.shape == (2, 19, 67, 83)
    assert torch.allclose(out, ref_out, rtol=0, atol=1e-9 * ref_out.abs().max().item())
    assert torch.allclose(aux, ref_aux, rtol=0, atol=1e-9 * ref_aux.abs().max().item())
    # the saved file is the same model
    loaded = load_model(tmp_path / "out.safetensors")
    assert loaded.config == model.config
    assert loaded.preprocess == Preprocess((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "rgb")


def test_float32_equivalence_and_cli_end_to_end(tmp_path: Path, capsys) -> None:
    sd = mmseg_pspnet_state(50, seed=5, **SMALL)
    from pspnet.data.info import CITYSCAPES

    classes = CITYSCAPES.class_names  # the preset must name the same classes (checked)
    src = _save(tmp_path, sd, CITYSCAPES_FILE, {"config": CONFIG_TEXT, "CLASSES": classes})
    dst = tmp_path / "pspnet50_cityscapes_mmseg.safetensors"
    assert main(["convert", str(src), str(dst), "--preset", "pspnet50_cityscapes"]) == 0
    printed = capsys.readouterr().out
    assert "(mmseg)" in printed and "19 classes" in printed and "road, sidewalk" in printed
    model = load_model(dst)
    assert model.preset_name == "pspnet50_cityscapes"
    assert model.dataset_info is not None and model.dataset_info.name == "cityscapes"
    cfg = model.config
    assert (cfg.stem_width, cfg.contract_dilation, cfg.align_corners, cfg.output_stride) == (
        8,
        True,
        False,
        8,
    )
    img = torch.randn(1, 3, 97, 129, generator=torch.Generator().manual_seed(2))
    ref_out, ref_aux = mmseg_forward(sd, img)
    out, aux = _ours(model, img)
    assert (out - ref_out).abs().max().item() < 1e-4 * max(1.0, ref_out.abs().max().item())
    assert (aux - ref_aux).abs().max().item() < 1e-4 * max(1.0, ref_aux.abs().max().item())


def test_preset_with_another_label_space_is_refused(tmp_path: Path, capsys) -> None:
    src = _save(tmp_path, mmseg_pspnet_state(50, **SMALL), CITYSCAPES_FILE)
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--preset", "pspnet50_ade20k"]) == 2
    assert "'num_classes': (19, 150)" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_settings_are_read_from_the_saved_config() -> None:
    settings = mmseg_settings({"config": CONFIG_TEXT}, "anything.pth")
    assert (settings.output_stride, settings.contract_dilation, settings.align_corners) == (8, True, False)
    assert settings.preprocess == Preprocess((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "rgb")
    d32_bgr = (
        CONFIG_TEXT.replace(
            "dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1)", "dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2)"
        )
        .replace("to_rgb=True", "to_rgb=False")
        .replace("align_corners=False", "align_corners=True")
    )
    settings = mmseg_settings({"config": d32_bgr}, "pspnet_r50-d8_x.pth")  # the config wins over the name
    assert (settings.output_stride, settings.align_corners) == (32, True)
    # to_rgb=False: the network sees BGR and the config's mean is in BGR order; ours is written in RGB
    assert settings.preprocess == Preprocess((103.53, 116.28, 123.675), (57.375, 57.12, 58.395), "bgr")
    # mmseg 1.x: data_preprocessor with bgr_to_rgb, config under meta["cfg"]
    v1 = "data_preprocessor = dict(mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], bgr_to_rgb=True)"
    assert mmseg_settings({"cfg": v1}, "a-d16.pth").preprocess == Preprocess((1, 2, 3), (4, 5, 6), "rgb")
    assert mmseg_settings({"cfg": v1}, "a-d16.pth").output_stride == 16
    bare = mmseg_settings({}, "weights.pth")
    assert bare.output_stride == 8 and bare.align_corners is False and "assumed" in bare.notes[0]
    conflicting = CONFIG_TEXT + "model = dict(backbone=dict(dilations=(1, 1, 1, 2), strides=(1, 2, 2, 1)))\n"
    assert (
        mmseg_settings({"config": conflicting}, "x-d16_y.pth").output_stride == 16
    )  # falls back to the name
    with pytest.raises(InputError, match="strides"):
        mmseg_settings(
            {"config": CONFIG_TEXT.replace("strides=(1, 2, 1, 1)", "strides=(1, 1, 1, 1)")}, "f.pth"
        )


def test_missing_batch_counters_are_filled(tmp_path: Path) -> None:
    sd = {k: v for k, v in mmseg_pspnet_state(50, **SMALL).items() if not k.endswith("num_batches_tracked")}
    result = convert_checkpoint(_save(tmp_path, sd, CITYSCAPES_FILE), None)
    assert result.report.complete
    assert any("num_batches_tracked" in note for note in result.notes)


def test_other_decode_heads_are_refused_by_name(tmp_path: Path) -> None:
    base = {k: v for k, v in mmseg_pspnet_state(50, **SMALL).items() if not k.startswith("decode_head.")}
    aspp = dict(base)
    aspp["decode_head.image_pool.1.conv.weight"] = torch.zeros(64, 256, 1, 1)
    aspp["decode_head.aspp_modules.0.conv.weight"] = torch.zeros(64, 256, 1, 1)
    aspp["decode_head.bottleneck.conv.weight"] = torch.zeros(64, 320, 3, 3)
    aspp["decode_head.conv_seg.weight"] = torch.zeros(19, 64, 1, 1)
    src = _save(tmp_path, aspp, "deeplabv3_r50-d8.pth")
    assert detect_source(src) == "mmseg"
    with pytest.raises(InputError, match=r"ASPPHead \(DeepLabV3\).*only PSPHead"):
        convert_checkpoint(src, None)
    uper = dict(mmseg_pspnet_state(50, **SMALL))
    uper["decode_head.lateral_convs.0.conv.weight"] = torch.zeros(64, 32, 1, 1)
    with pytest.raises(InputError, match="UPerHead"):
        convert_checkpoint(_save(tmp_path, uper, "upernet_r50.pth"), None)


def test_unknown_keys_and_unsupported_layouts_are_refused(tmp_path: Path) -> None:
    sd = mmseg_pspnet_state(50, **SMALL)
    with pytest.raises(InputError, match="no place in PSPNet.*decode_head.psp_modules.0.2.weight"):
        mmseg_to_pspnet({**sd, "decode_head.psp_modules.0.2.weight": torch.zeros(1)})
    two_convs = {**sd, "auxiliary_head.convs.1.conv.weight": torch.zeros(32, 32, 3, 3)}
    with pytest.raises(InputError, match="num_convs=1"):
        convert_checkpoint(_save(tmp_path, two_convs, "a.pth"), None)
    with pytest.raises(InputError, match="4 pyramid branches but bins=.1, 2, 3."):
        convert_checkpoint(_save(tmp_path, sd, "b.pth"), None, bins=(1, 2, 3))
    other_scales = _save(tmp_path, sd, "d.pth", {"config": CONFIG_TEXT})
    with pytest.raises(InputError, match=r"pool_scales \(1, 2, 3, 6\) .* pass --bins 1 2 3 6"):
        convert_checkpoint(other_scales, None, bins=(1, 2, 4, 8))
    # ResNet-18 (BasicBlock): mmseg leaves conv2 undilated, which our BasicBlock cannot express
    basic = {k: v for k, v in sd.items() if ".conv3." not in k and ".bn3." not in k}
    basic = {k: v for k, v in basic.items() if not k.startswith(("backbone.layer3.2", "backbone.layer3.3"))}
    basic = {k: v for k, v in basic.items() if not k.startswith(("backbone.layer3.4", "backbone.layer3.5"))}
    with pytest.raises(InputError, match="BasicBlock"):
        convert_checkpoint(_save(tmp_path, basic, "c.pth"), None)


def test_class_names_are_stored_without_a_preset_and_checked_against_one(tmp_path: Path) -> None:
    sd = mmseg_pspnet_state(50, **SMALL)
    names = tuple(f"thing{i}" for i in range(19))
    palette = [[i, 2 * i, 3 * i] for i in range(19)]
    square = CONFIG_TEXT + "crop_size = (512, 512)\n"
    src = _save(tmp_path, sd, "pspnet_mine.pth", {"config": square, "CLASSES": names, "PALETTE": palette})
    result = convert_checkpoint(src, tmp_path / "mine.safetensors")
    info = load_model(tmp_path / "mine.safetensors").dataset_info
    assert info is not None and info.class_names == names and info.crop_size == 512
    assert info.palette == tuple(tuple(c) for c in palette)
    assert any("label space stored from the file" in note for note in result.notes)
    # a crop the dataset info cannot hold (Cityscapes' 512x1024): not stored, and the note says why
    wide = _save(
        tmp_path, sd, "wide.pth", {"config": CONFIG_TEXT + "crop_size = (512, 1024)\n", "CLASSES": names}
    )
    result = convert_checkpoint(wide, None)
    assert result.model.dataset_info is None
    assert any("class names not stored" in note for note in result.notes)
    # a preset with the same class count but other classes: refused, named
    with pytest.raises(
        InputError, match=r"trained on other classes than preset 'pspnet50_cityscapes'.*'thing0' vs 'road'"
    ):
        convert_checkpoint(src, None, preset="pspnet50_cityscapes")
    # spelling differences only: accepted, the preset's names kept, the differences noted
    from pspnet.data.info import CITYSCAPES

    spelled = [n.upper() if i else "Road_Surface" for i, n in enumerate(CITYSCAPES.class_names)]
    close = _save(tmp_path, sd, "close.pth", {"config": CONFIG_TEXT, "CLASSES": spelled})
    result = convert_checkpoint(close, None, preset="pspnet50_cityscapes")
    assert result.model.dataset_info == CITYSCAPES
    assert any("1 class names differ" in note and "'Road_Surface' vs 'road'" in note for note in result.notes)


def test_mmengine_checkpoint_with_numpy_meta_converts(tmp_path: Path) -> None:
    """MMSegmentation 1.x (mmengine) files: numpy scalars in ``meta`` and a ``message_hub``."""
    import numpy as np

    sd = mmseg_pspnet_state(50, seed=2, **SMALL)
    path = tmp_path / "pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.pth"
    meta = {"cfg": CONFIG_TEXT, "seed": np.int64(5), "dataset_meta": {"classes": ["road"] * 19}}
    torch.save({"meta": meta, "state_dict": sd, "message_hub": {"runtime_info": {"iter": np.int64(8)}}}, path)
    result = convert_checkpoint(path, None)
    assert result.report.complete and result.source == "mmseg"
    assert any("numpy" in note for note in result.notes)
    assert any("not imported (not part of the network): message_hub" in note for note in result.notes)
    img = torch.randn(1, 3, 41, 57, generator=torch.Generator().manual_seed(3))
    ref_out, _ = mmseg_forward(sd, img)
    out, _ = _ours(result.model, img)
    assert (out - ref_out).abs().max().item() < 1e-4 * max(1.0, ref_out.abs().max().item())
