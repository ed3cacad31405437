"""PSPNet and its dilated-FCN baseline, configured by one typed dataclass."""

from __future__ import annotations

import functools
import numbers
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from pspnet.data.info import DatasetInfo
from pspnet.data.preprocess import PYTORCH_PREPROCESS, Preprocess
from pspnet.errors import InputError
from pspnet.models.decoder import DECODER_TYPES, RefineDecoder
from pspnet.models.ops import resize_bilinear
from pspnet.models.ppm import POOLING_TYPES, PyramidPooling
from pspnet.models.resnet import RESNET_SPECS, STEM_TYPES, ResNetBackbone, stage_dilations

__all__ = ["SIZE_RULES", "PSPNet", "PSPNetConfig", "SegmentationHead"]

SIZE_RULES = ("any", "authors")


@dataclass(frozen=True)
class PSPNetConfig:
    """Everything that decides the network's shape. Every ablation of the paper is a field.

    Args:
        num_classes: output classes (>= 2).
        depth: ResNet depth, 18/34/50/101/152.
        output_stride: 8 (paper), 16 or 32.
        stem: ``"deep"`` (authors) or ``"classic"`` (7x7, torchvision).
        stem_width: deep stem widths are ``(w, w, 2w)``; 64 for the authors' weights.
        widths: base width of the four ResNet stages (smaller for the tiny CPU presets).
        use_ppm: False gives the paper's dilated-FCN baseline (same network, no PPM).
        bins: pyramid grid sizes (paper: 1, 2, 3, 6).
        pooling: ``"avg"`` or ``"max"``.
        reduction: 1x1 dimension reduction of each pyramid branch to 1/N channels.
        head_channels: channels of the 3x3 conv in the main head (512 in the paper).
        aux: build the auxiliary head on layer3 (trained with weight 0.4, unused at test time).
        aux_channels: channels of the auxiliary head's 3x3 conv (256 in the paper).
        dropout: Dropout2d probability before each classifier (0.1 in the paper).
        align_corners: bilinear convention of every upsampling; True is the authors'.
        size_rule: ``"any"`` accepts every input size; ``"authors"`` additionally enforces the
            official code's ``(H - 1) % 8 == 0`` rule, to reproduce its protocol exactly. On such
            sizes both rules compute the same numbers.
        decoder: ``"bilinear"`` (paper: upsample the 1/8 logits 8x) or ``"refine"`` (a learned
            residual refinement at 1/4 resolution from ``layer1``, see :class:`RefineDecoder`).
        avg_down: average-pool shortcut downsampling (timm ``resnet*d``, OpenMMLab ``v1d``).
        contract_dilation: first block of a dilated stage at half dilation (MMSegmentation).
        stride_in_1x1: bottleneck stride on the first 1x1 conv (the authors' Caffe ADE20K R50).
    """

    num_classes: int = 21
    depth: int = 50
    output_stride: int = 8
    stem: str = "deep"
    stem_width: int = 64
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    use_ppm: bool = True
    bins: tuple[int, ...] = (1, 2, 3, 6)
    pooling: str = "avg"
    reduction: bool = True
    head_channels: int = 512
    aux: bool = True
    aux_channels: int = 256
    dropout: float = 0.1
    align_corners: bool = True
    size_rule: str = "any"
    decoder: str = "bilinear"
    avg_down: bool = False
    contract_dilation: bool = False
    stride_in_1x1: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        # Normalise list inputs (from YAML/JSON) to tuples so configs compare and hash.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "bins", tuple(int(b) for b in self.bins))
        if self.num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.depth not in RESNET_SPECS:
            raise InputError(f"depth must be one of {sorted(RESNET_SPECS)}, got {self.depth}")
        stage_dilations(self.output_stride)  # validates output_stride
        if self.stem not in STEM_TYPES:
            raise InputError(f"stem must be one of {STEM_TYPES}, got {self.stem!r}")
        if self.pooling not in POOLING_TYPES:
            raise InputError(f"pooling must be one of {POOLING_TYPES}, got {self.pooling!r}")
        if self.size_rule not in SIZE_RULES:
            raise InputError(f"size_rule must be one of {SIZE_RULES}, got {self.size_rule!r}")
        if self.decoder not in DECODER_TYPES:
            raise InputError(f"decoder must be one of {DECODER_TYPES}, got {self.decoder!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("stem_width", "head_channels", "aux_channels"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be a positive integer, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["bins"] = list(self.bins)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PSPNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PSPNetConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> PSPNetConfig:
        return replace(self, **changes)


@functools.cache
def _field_types() -> dict[str, type]:
    """Each config field's base type (``int``, ``str``, ``tuple`` ...), from its annotation."""
    hints = typing.get_type_hints(PSPNetConfig)
    return {f.name: typing.get_origin(hints[f.name]) or hints[f.name] for f in fields(PSPNetConfig)}


def _check_types(config: PSPNetConfig) -> None:
    """Refuse wrongly typed fields by name (``num_classes="21"`` would otherwise fail deep inside
    a convolution's constructor with a message about string formatting); NumPy numbers become
    Python ones (the config is saved as JSON)."""
    for name, kind in _field_types().items():
        value = getattr(config, name)
        what = type(value).__name__
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InputError(f"{name} must be an integer, got {value!r} ({what})")
            object.__setattr__(config, name, int(value))
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(f"{name} must be a number, got {value!r} ({what})")
            object.__setattr__(config, name, float(value))
        elif kind is bool and not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r} ({what})")
        elif kind is str and not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {value!r} ({what})")
        elif kind is tuple and (
            isinstance(value, (str, bytes))
            or not isinstance(value, (tuple, list))
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value)
        ):
            raise InputError(f"{name} must be a sequence of integers, got {value!r} ({what})")


class SegmentationHead(nn.Sequential):
    """3x3 conv -> BN -> ReLU -> Dropout2d -> 1x1 conv, indices matching the authors' ``cls``/``aux``."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(mid_channels, num_classes, 1),
        )


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network (Zhao et al., CVPR 2017, https://arxiv.org/abs/1612.01105).

    Input: a float tensor ``(N, 3, H, W)`` already normalised (see :class:`pspnet.Preprocess`).
    Output: ``{"out": logits}`` in eval mode, ``{"out": logits, "aux": aux_logits}`` in training
    mode when the auxiliary head exists; both ``(N, num_classes, H, W)``, bilinearly upsampled to
    the input size. With ``use_ppm=False`` this is the paper's dilated-FCN baseline.
    """

    def __init__(self, config: PSPNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, PSPNetConfig):
            raise InputError(
                f"PSPNet(config) takes a PSPNetConfig, got {type(config).__name__}; write "
                "PSPNet(PSPNetConfig(num_classes=3)), PSPNet(num_classes=3), or "
                "PSPNetConfig.from_dict(mapping) for a dict"
            )
        config = config or PSPNetConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        # Provenance and input contract; the registry and the checkpoint loader fill these in.
        self.preset_name: str = "custom"
        self.dataset_info: DatasetInfo | None = None
        self.preprocess: Preprocess = PYTORCH_PREPROCESS
        self.backbone = ResNetBackbone(
            config.depth,
            config.output_stride,
            config.stem,
            config.stem_width,
            config.widths,
            avg_down=config.avg_down,
            contract_dilation=config.contract_dilation,
            stride_in_1x1=config.stride_in_1x1,
        )
        features = self.backbone.channels["layer4"]
        self.ppm: PyramidPooling | None = None
        if config.use_ppm:
            self.ppm = PyramidPooling(
                features, config.bins, config.pooling, config.reduction, config.align_corners
            )
            features = self.ppm.out_channels
        self.classifier = SegmentationHead(features, config.head_channels, config.num_classes, config.dropout)
        self.aux_classifier: SegmentationHead | None = None
        if config.aux:
            self.aux_classifier = SegmentationHead(
                self.backbone.channels["layer3"], config.aux_channels, config.num_classes, config.dropout
            )
        self.decoder: RefineDecoder | None = None
        if config.decoder == "refine":
            self.decoder = RefineDecoder(
                config.num_classes, self.backbone.channels["layer1"], align_corners=config.align_corners
            )

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def head_modules(self) -> list[nn.Module]:
        """The layers the paper trains from scratch with 10x learning rate (PPM, heads, decoder)."""
        heads = (self.ppm, self.classifier, self.aux_classifier, self.decoder)
        return [m for m in heads if m is not None]

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with the fix when ``x`` cannot go through the network."""
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (N, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 input channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        minimum = self.config.output_stride
        if height < minimum or width < minimum:
            raise ValueError(
                f"input {height}x{width} is smaller than the minimum {minimum}x{minimum} "
                f"(output stride {self.config.output_stride}); pad or resize the image"
            )
        if self.config.size_rule == "authors" and ((height - 1) % 8 or (width - 1) % 8):
            fix_h, fix_w = ((height - 1 + 7) // 8) * 8 + 1, ((width - 1 + 7) // 8) * 8 + 1
            raise ValueError(
                f"size_rule='authors' needs (H-1) and (W-1) divisible by 8, got {height}x{width}; "
                f"pad to {fix_h}x{fix_w} or use size_rule='any'"
            )
        if x.shape[0] == 1 and self._bin1_norm_trains():
            raise ValueError(
                "training with batch size 1 is impossible with the 1x1 pyramid bin: its BatchNorm sees "
                "one value per channel. Use a batch of at least 2 (gradient accumulation keeps the "
                "effective batch), freeze the BatchNorms (eval mode, model.freeze_bn in a training "
                "config), or call model.eval() for inference"
            )

    def _bin1_norm_trains(self) -> bool:
        """Whether the 1x1 bin's BatchNorm uses batch statistics (it cannot on a single image).
        Its own mode decides, not the model's: frozen BatchNorms (eval mode inside a training
        model) use running statistics and take a batch of 1."""
        if self.ppm is None or 1 not in self.ppm.bins:
            return False
        branch = self.ppm.branches[self.ppm.bins.index(1)]
        return any(m.training for m in branch.modules() if isinstance(m, _BatchNorm))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.check_input(x)
        size = x.shape[-2:]
        feats = self.backbone(x)
        top = feats["layer4"] if self.ppm is None else self.ppm(feats["layer4"])
        logits = self.classifier(top)
        out = self._upsample(logits, size)
        if self.decoder is not None:
            out = out + self._upsample(self.decoder(logits, feats["layer1"]), size)
        if self.training and self.aux_classifier is not None:
            return {"out": out, "aux": self._upsample(self.aux_classifier(feats["layer3"]), size)}
        return {"out": out}

    def _upsample(self, logits: Tensor, size: Any) -> Tensor:
        return resize_bilinear(logits, size, self.config.align_corners)
