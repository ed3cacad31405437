"""Model definitions: dilated ResNet, pyramid pooling, PSPNet, and the preset registry."""

from pspnet.models.ppm import PyramidPooling
from pspnet.models.pspnet import PSPNet, PSPNetConfig, SegmentationHead
from pspnet.models.registry import ModelPreset, create_model, get_preset, list_models, register_preset
from pspnet.models.resnet import ResNetBackbone
from pspnet.models.stride import with_output_stride

__all__ = [
    "ModelPreset",
    "PSPNet",
    "PSPNetConfig",
    "PyramidPooling",
    "ResNetBackbone",
    "SegmentationHead",
    "create_model",
    "get_preset",
    "list_models",
    "register_preset",
    "with_output_stride",
]
