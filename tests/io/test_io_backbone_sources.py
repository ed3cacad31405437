"""ImageNet backbones from timm (resnet50d) and OpenMMLab (resnet50_v1c, mmcv zoo and mmpretrain layouts).

The source state dicts are written here from each library's layer definitions (timm
``ResNet(stem_type='deep', avg_down=True)`` + ``downsample_avg``; mmcv/mmseg ``ResNetV1c``
``stem`` Sequential; mmpretrain ``ResNetV1c``/``V1d`` with ``ConvModule`` stems and its
``ResLayer`` that adds the average pool only where the stride is 2), with distinct random values
per tensor, and every tensor is checked by value at the place we expect by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from pspnet import create_model
from pspnet.errors import InputError
from pspnet.io.backbone import detect_backbone_source, imagenet_to_backbone, load_backbone_weights
from pspnet.models.pspnet import PSPNet, PSPNetConfig

WIDTHS = (8, 16, 32, 64)  # small stages; the stems keep their real widths


class _Values:
    def __init__(self, seed: int = 0, device: str = "cpu") -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device

    def __call__(self, *shape: int) -> Tensor:
        if self.device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=self.gen)

    def bn(self, prefix: str, n: int, counters: bool = True) -> dict[str, Tensor]:
        out = {f"{prefix}.{name}": self(n) for name in ("weight", "bias", "running_mean")}
        out[f"{prefix}.running_var"] = self(n).abs() + 0.1 if self.device != "meta" else self(n)
        if counters:
            out[f"{prefix}.num_batches_tracked"] = torch.tensor(1000, device=self.device)
        return out


def resnet_body(
    v: _Values,
    stem_out: int,
    *,
    widths: tuple[int, ...] = WIDTHS,
    blocks: tuple[int, ...] = (3, 4, 6, 3),
    shortcut: str = "conv",
    counters: bool = True,
) -> dict[str, Tensor]:
    """Bottleneck stages ``layer1..4`` (torchvision naming, shared by all four libraries).

    shortcut: ``"conv"`` = ``downsample.0`` conv + ``.1`` BN (torchvision, mmcv v1c);
    ``"avg"`` = pool or identity at ``.0``, conv ``.1``, BN ``.2`` (timm ``downsample_avg``);
    ``"avg_if_strided"`` = mmpretrain v1d: the pool exists only where the stride is 2.
    """
    sd: dict[str, Tensor] = {}
    inplanes = stem_out
    for i, (n, planes) in enumerate(zip(blocks, widths, strict=True)):
        stride = 1 if i == 0 else 2
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            sd[f"{p}.conv1.weight"] = v(planes, inplanes, 1, 1)
            sd.update(v.bn(f"{p}.bn1", planes, counters))
            sd[f"{p}.conv2.weight"] = v(planes, planes, 3, 3)
            sd.update(v.bn(f"{p}.bn2", planes, counters))
            sd[f"{p}.conv3.weight"] = v(planes * 4, planes, 1, 1)
            sd.update(v.bn(f"{p}.bn3", planes * 4, counters))
            if b == 0:
                first = 0 if shortcut == "conv" or (shortcut == "avg_if_strided" and stride == 1) else 1
                sd[f"{p}.downsample.{first}.weight"] = v(planes * 4, inplanes, 1, 1)
                sd.update(v.bn(f"{p}.downsample.{first + 1}", planes * 4, counters))
            inplanes = planes * 4
    return sd


def timm_resnet_d(v: _Values, stem_width: int = 32, counters: bool = True, **body) -> dict[str, Tensor]:
    """timm resnet50d: conv1 = Sequential(conv, bn, act, conv, bn, act, conv), then bn1; fc."""
    sd = {
        "conv1.0.weight": v(stem_width, 3, 3, 3),
        **v.bn("conv1.1", stem_width, counters),
        "conv1.3.weight": v(stem_width, stem_width, 3, 3),
        **v.bn("conv1.4", stem_width, counters),
        "conv1.6.weight": v(2 * stem_width, stem_width, 3, 3),
        **v.bn("bn1", 2 * stem_width, counters),
    }
    sd.update(resnet_body(v, 2 * stem_width, shortcut="avg", counters=counters, **body))
    sd["fc.weight"], sd["fc.bias"] = v(1000, body.get("widths", WIDTHS)[3] * 4), v(1000)
    return sd


def mmcv_resnet_v1c(v: _Values, stem_channels: int = 64, **body) -> dict[str, Tensor]:
    """open-mmlab://resnet50_v1c as mmseg loads it: ``stem`` = Sequential(conv, bn, relu) x 3."""
    half = stem_channels // 2
    sd: dict[str, Tensor] = {}
    for conv, cin, cout in ((0, 3, half), (3, half, half), (6, half, stem_channels)):
        sd[f"stem.{conv}.weight"] = v(cout, cin, 3, 3)
        sd.update(v.bn(f"stem.{conv + 1}", cout))
    sd.update(resnet_body(v, stem_channels, **body))
    sd["fc.weight"], sd["fc.bias"] = v(1000, WIDTHS[3] * 4), v(1000)
    return sd


def mmpretrain_resnet(v: _Values, stem_channels: int = 64, v1d: bool = False) -> dict[str, Tensor]:
    """mmpretrain ImageClassifier(ResNetV1c/V1d): ``backbone.stem.i`` ConvModules, ``head.fc``."""
    half = stem_channels // 2
    sd: dict[str, Tensor] = {}
    for i, (cin, cout) in enumerate(((3, half), (half, half), (half, stem_channels))):
        sd[f"stem.{i}.conv.weight"] = v(cout, cin, 3, 3)
        sd.update(v.bn(f"stem.{i}.bn", cout))
    sd.update(resnet_body(v, stem_channels, shortcut="avg_if_strided" if v1d else "conv"))
    sd = {f"backbone.{k}": t for k, t in sd.items()}
    sd["head.fc.weight"], sd["head.fc.bias"] = v(1000, WIDTHS[3] * 4), v(1000)
    return sd


# where each source tensor must land, written by hand
TIMM_STEM = {
    "conv1.0.": "0.",
    "conv1.1.": "1.",
    "conv1.3.": "3.",
    "conv1.4.": "4.",
    "conv1.6.": "6.",
    "bn1.": "7.",
}
MMPRETRAIN_STEM = {
    "0.conv.": "0.",
    "0.bn.": "1.",
    "1.conv.": "3.",
    "1.bn.": "4.",
    "2.conv.": "6.",
    "2.bn.": "7.",
}


def expected_key(source: str, key: str) -> str | None:
    """Our key for a source key, None for the classifier."""
    if key.startswith(("fc.", "head.")):
        return None
    key = key.removeprefix("backbone.")
    if key.startswith("layer"):
        if source == "mmpretrain_v1d" and key.startswith("layer1.0.downsample."):
            index, rest = key[len("layer1.0.downsample.") :].split(".", 1)
            return f"backbone.layer1.0.downsample.{int(index) + 1}.{rest}"  # conv at .0 -> our .1
        return f"backbone.{key}"
    if source == "timm":
        prefix = next(p for p in TIMM_STEM if key.startswith(p))
        return f"backbone.stem.{TIMM_STEM[prefix]}{key[len(prefix) :]}"
    if source.startswith("mmpretrain"):
        rest = key.removeprefix("stem.")
        prefix = next(p for p in MMPRETRAIN_STEM if rest.startswith(p))
        return f"backbone.stem.{MMPRETRAIN_STEM[prefix]}{rest[len(prefix) :]}"
    return f"backbone.{key}"  # mmcv zoo: stem.{0,1,3,4,6,7} are our indices already


def _check_every_tensor(model: PSPNet, source: str, state: dict[str, Tensor], report) -> None:
    ours = model.state_dict()
    placed = set()
    for key, value in state.items():
        target = expected_key(source, key)
        if target is None:
            assert key in report.dropped, key
            continue
        assert torch.equal(ours[target], value), (key, target)
        placed.add(target)
    backbone = {k for k in ours if k.startswith("backbone.")}
    assert backbone - placed <= {k for k in backbone if k.endswith("num_batches_tracked")}
    assert all(
        k.startswith(("ppm.", "classifier.", "aux_classifier.")) for k in report.missing if k not in backbone
    )


CASES = {
    # name: (source state builder, detected source, model overrides)
    "timm": (lambda v: timm_resnet_d(v), "timm", {"stem_width": 32, "avg_down": True}),
    "mmcv_zoo": (lambda v: mmcv_resnet_v1c(v), "openmmlab", {"stem_width": 32}),
    "mmpretrain": (lambda v: mmpretrain_resnet(v), "openmmlab", {"stem_width": 32}),
    "mmpretrain_v1d": (
        lambda v: mmpretrain_resnet(v, v1d=True),
        "openmmlab",
        {"stem_width": 32, "avg_down": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tensor_lands_in_place(case: str, tmp_path: Path) -> None:
    build, source, overrides = CASES[case]
    state = build(_Values(seed=len(case)))
    assert detect_backbone_source(state) == source
    torch.save({"state_dict": state}, tmp_path / "imagenet.pth")
    model = create_model("pspnet50", num_classes=5, widths=WIDTHS, **overrides)
    fresh_head = model.classifier[0].weight.clone()
    report = load_backbone_weights(model, tmp_path / "imagenet.pth")
    assert report.source == source and report.summary().startswith(source)
    _check_every_tensor(model, case, state, report)
    assert sorted(report.dropped) == sorted(k for k in state if k.startswith(("fc.", "head.")))
    assert torch.equal(model.classifier[0].weight, fresh_head)  # heads keep their initialisation


def test_timm_safetensors_without_batch_counters(tmp_path: Path) -> None:
    state = timm_resnet_d(_Values(seed=9), counters=False)
    save_file(state, str(tmp_path / "model.safetensors"))
    model = create_model("pspnet50", num_classes=5, widths=WIDTHS, stem_width=32, avg_down=True)
    report = load_backbone_weights(model, tmp_path / "model.safetensors", source="timm")
    _check_every_tensor(model, "timm", state, report)


@pytest.mark.parametrize("depth", [50, 101])
def test_full_width_timm_and_openmmlab_fill_the_backbone(depth: int) -> None:
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    full = {"widths": (64, 128, 256, 512), "blocks": blocks}
    for state, avg_down in (
        (timm_resnet_d(_Values(device="meta"), **full), True),
        (mmcv_resnet_v1c(_Values(device="meta"), **full), False),
    ):
        mapped, _, layout = imagenet_to_backbone(state)
        assert (layout.stem, layout.stem_width, layout.avg_down, layout.depth) == (
            "deep",
            32,
            avg_down,
            depth,
        )
        with torch.device("meta"):
            ours = PSPNet(PSPNetConfig(depth=depth, stem_width=32, avg_down=avg_down)).state_dict()
        backbone = {k: v for k, v in ours.items() if k.startswith("backbone.")}
        assert set(mapped) == set(backbone)
        assert all(mapped[k].shape == backbone[k].shape for k in mapped)


def test_mismatched_model_is_refused_with_the_overrides_to_use(tmp_path: Path) -> None:
    torch.save(timm_resnet_d(_Values()), tmp_path / "resnet50d.pth")
    model = create_model("pspnet50", num_classes=5, widths=WIDTHS)
    before = model.backbone.stem[0].weight.clone()
    with pytest.raises(InputError) as err:
        load_backbone_weights(model, tmp_path / "resnet50d.pth")
    message = str(err.value)
    assert str(tmp_path / "resnet50d.pth") in message
    assert "create_model('pspnet50', stem_width=32, avg_down=True)" in message
    assert "model.overrides {stem_width: 32, avg_down: true}" in message
    assert torch.equal(model.backbone.stem[0].weight, before)  # nothing half-loaded
    torch.save(mmcv_resnet_v1c(_Values()), tmp_path / "resnet50_v1c.pth")
    with pytest.raises(InputError, match=r"create_model\('pspnet50', stem_width=32\)"):
        load_backbone_weights(model, tmp_path / "resnet50_v1c.pth")
    with pytest.raises(InputError, match=r"depth=101") as err:
        load_backbone_weights(
            create_model("pspnet101", num_classes=5, widths=WIDTHS, stem_width=32),
            tmp_path / "resnet50_v1c.pth",
        )
    # a ResNet-50 file for a ResNet-101 preset: the ResNet-50 preset, not "pspnet101 with depth=50"
    message = str(err.value)
    assert "an OpenMMLab ResNet-50 (deep stem 32-32-64) checkpoint" in message
    assert "create_model('pspnet50')" in message and "model.preset: pspnet50" in message
    assert "depth=50" not in message


def test_wrong_files_are_refused_clearly(tmp_path: Path) -> None:
    model = create_model("pspnet50", num_classes=5, widths=WIDTHS, stem_width=32)
    torch.save(mmcv_resnet_v1c(_Values()), tmp_path / "v1c.pth")
    with pytest.raises(InputError, match="not a timm ResNet checkpoint"):
        load_backbone_weights(model, tmp_path / "v1c.pth", source="timm")
    whole = {**mmcv_resnet_v1c(_Values()), "decode_head.conv_seg.weight": torch.zeros(19, 8, 1, 1)}
    torch.save(
        {"state_dict": {f"backbone.{k}" if not k.startswith("decode") else k: t for k, t in whole.items()}},
        tmp_path / "pspnet_mmseg.pth",
    )
    with pytest.raises(InputError, match="whole segmentation checkpoint"):
        load_backbone_weights(model, tmp_path / "pspnet_mmseg.pth")
    tiered = timm_resnet_d(_Values())
    tiered["conv1.0.weight"] = torch.zeros(24, 3, 3, 3)  # timm resnet50t: 24-32-64
    tiered["conv1.3.weight"] = torch.zeros(32, 24, 3, 3)
    torch.save(tiered, tmp_path / "resnet50t.pth")
    with pytest.raises(InputError, match="tiered"):
        load_backbone_weights(model, tmp_path / "resnet50t.pth")
    with pytest.raises(InputError, match="no such file"):
        load_backbone_weights(model, tmp_path / "absent.pth")


def test_bookkeeping_objects_in_a_backbone_file_are_skipped_and_reported(tmp_path: Path) -> None:
    """An mmpretrain/mmengine-trained classifier pickles its trainer's objects next to the weights."""
    import sys
    import types

    ghost = types.ModuleType("ghost_trainer_xyz")
    ghost.History = type("History", (), {"__module__": "ghost_trainer_xyz"})
    sys.modules["ghost_trainer_xyz"] = ghost
    try:
        state = mmcv_resnet_v1c(_Values())
        torch.save({"state_dict": state, "message_hub": {"loss": ghost.History()}}, tmp_path / "r50.pth")
    finally:
        del sys.modules["ghost_trainer_xyz"]
    model = create_model("pspnet50", num_classes=5, widths=WIDTHS, stem_width=32)
    report = load_backbone_weights(model, tmp_path / "r50.pth")
    assert report.skipped == ["ghost_trainer_xyz.History"]
    assert "never imported or run: ghost_trainer_xyz.History" in report.summary()
    assert torch.equal(model.backbone.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
