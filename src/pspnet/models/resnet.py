"""Dilated ResNet backbone, written for PSPNet.

Why our own ResNet rather than torchvision's: PSPNet uses the "deep stem" (three 3x3 convs
64-64-128 instead of one 7x7), dilates *every* block of the dilated stages (torchvision keeps the
first block of a stage at the previous dilation), and needs dilated BasicBlocks for the small
CPU presets (torchvision refuses those). Module names follow the torchvision / authors layout
(``layer1.0.conv2``...) so that converting released checkpoints is a plain prefix rename.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNetBackbone", "ResNetSpec", "stage_dilations"]


@dataclass(frozen=True)
class ResNetSpec:
    """Block type and blocks per stage for each supported depth."""

    block: type[nn.Module]
    layers: tuple[int, int, int, int]


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Both convs are dilated in dilated stages."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        del stride_in_1x1  # a BasicBlock has no 1x1 conv; accepted so stages build blocks uniformly
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck.

    The stride sits on the 3x3 conv, as in the authors' PyTorch code; ``stride_in_1x1`` moves it
    to the first 1x1 conv, as in the original MSRA/Caffe ResNet that the authors' Caffe ADE20K
    ResNet-50 model was built on (the two compute different functions with the same weights).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride_3x3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS: dict[int, ResNetSpec] = {
    18: ResNetSpec(BasicBlock, (2, 2, 2, 2)),
    34: ResNetSpec(BasicBlock, (3, 4, 6, 3)),
    50: ResNetSpec(Bottleneck, (3, 4, 6, 3)),
    101: ResNetSpec(Bottleneck, (3, 4, 23, 3)),
    152: ResNetSpec(Bottleneck, (3, 8, 36, 3)),
}

STEM_TYPES = ("deep", "classic")


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(stride, dilation) of layer3 and layer4 for an output stride of 8, 16 or 32.

    Output stride 8 is the paper's setting: layer3 keeps resolution with dilation 2, layer4 with
    dilation 4, so the receptive field grows while the feature map stays at 1/8.
    """
    table = {8: ((1, 2), (1, 4)), 16: ((2, 1), (1, 2)), 32: ((2, 1), (2, 1))}
    if output_stride not in table:
        raise ValueError(f"output_stride must be one of {sorted(table)}, got {output_stride}")
    return table[output_stride]


def _make_stem(stem: str, width: int) -> tuple[nn.Sequential, int]:
    """The stem as one Sequential whose indices match the authors' ``layer0`` (0..9)."""
    if stem == "deep":
        layers = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width * 2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width * 2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        return layers, width * 2
    if stem == "classic":
        layers = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        return layers, width
    raise ValueError(f"stem must be one of {STEM_TYPES}, got {stem!r}")


class ResNetBackbone(nn.Module):
    """ResNet without its classifier, returning the four stage outputs.

    Args:
        depth: 18, 34, 50, 101 or 152.
        output_stride: 8 (paper), 16 or 32; the last stages trade stride for dilation.
        stem: ``"deep"`` (3x3 convs ``w, w, 2w``; authors, timm ``*d``, OpenMMLab ``v1c``) or
            ``"classic"`` (one 7x7 conv, torchvision).
        stem_width: ``w`` above: 64 for the authors' models, 32 for timm/OpenMMLab deep stems.
        widths: base width of each stage; the defaults are ResNet's. Smaller values make the tiny
            CPU presets used by the demo and the tests.
        avg_down: shortcut downsampling by a 2x2 average pool before a stride-1 1x1 conv (timm
            ``resnet*d``, OpenMMLab ``v1d``) instead of a strided 1x1 conv, which drops 3/4 of the
            input. The shortcut is then ``Sequential(pool, conv, bn)``, keyed as in those sources.
        contract_dilation: the first block of a dilated stage uses half the stage's dilation
            (MMSegmentation's ``contract_dilation=True``); the authors dilate every block fully.
        stride_in_1x1: put a bottleneck's stride on its first 1x1 conv (original Caffe ResNet).

    ``forward`` returns ``{"layer1": 1/4, "layer2": 1/8, "layer3": aux input, "layer4": PPM input}``.
    """

    def __init__(
        self,
        depth: int = 50,
        output_stride: int = 8,
        stem: str = "deep",
        stem_width: int = 64,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        *,
        avg_down: bool = False,
        contract_dilation: bool = False,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be 4 positive integers, got {widths}")
        spec = RESNET_SPECS[depth]
        self.avg_down = avg_down
        self.contract_dilation = contract_dilation
        self.stride_in_1x1 = stride_in_1x1
        (s3, d3), (s4, d4) = stage_dilations(output_stride)
        self.stem, inplanes = _make_stem(stem, stem_width)
        plan = ((widths[0], 1, 1), (widths[1], 2, 1), (widths[2], s3, d3), (widths[3], s4, d4))
        stages = []
        for (planes, stride, dilation), blocks in zip(plan, spec.layers, strict=True):
            stage, inplanes = self._make_stage(spec.block, inplanes, planes, blocks, stride, dilation)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = {
            "layer1": widths[0] * spec.block.expansion,
            "layer2": widths[1] * spec.block.expansion,
            "layer3": widths[2] * spec.block.expansion,
            "layer4": widths[3] * spec.block.expansion,
        }
        self._init_weights()

    def _make_shortcut(self, inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
        if not self.avg_down:
            return nn.Sequential(
                nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), nn.BatchNorm2d(outplanes)
            )
        pool: nn.Module = nn.Identity()
        if stride > 1:
            pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(
            pool, nn.Conv2d(inplanes, outplanes, 1, 1, bias=False), nn.BatchNorm2d(outplanes)
        )

    def _make_stage(
        self, block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int, dilation: int
    ) -> tuple[nn.Sequential, int]:
        outplanes = planes * block.expansion  # type: ignore[attr-defined]
        downsample = None
        if stride != 1 or inplanes != outplanes:
            downsample = self._make_shortcut(inplanes, outplanes, stride)
        # By default every block of a dilated stage gets the full dilation, including the first:
        # this is what the authors' code does (it patches all conv2 layers after construction).
        first_dilation = dilation // 2 if self.contract_dilation and dilation > 1 else dilation
        layers = [block(inplanes, planes, stride, first_dilation, downsample, self.stride_in_1x1)]
        layers += [block(outplanes, planes, 1, dilation, None, self.stride_in_1x1) for _ in range(1, blocks)]
        return nn.Sequential(*layers), outplanes

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return {"layer1": c1, "layer2": c2, "layer3": c3, "layer4": c4}
