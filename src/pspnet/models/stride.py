"""Run a trained PSPNet at another output stride: a speed/accuracy trade made at inference time.

The output stride (8 in the paper) is where the dilated ResNet stops downsampling: at 8, layer3
and layer4 keep 1/8 resolution with dilations 2 and 4; at 16, layer3 strides by 2 and layer4
dilates by 2; at 32, both stride and nothing is dilated. Strides and dilations have no parameters,
so the SAME weights fit every output stride, which is why the conversion is valid: halving the
dilation while doubling the stride keeps the spacing of each kernel's taps in input pixels, so the
receptive field stays about the same size, but every map from layer3 on is sampled twice as
coarsely as the network saw it in training.

What changes is the work and the accuracy. At stride 16, layer3, layer4, the pyramid pooling and the
3x3 head compute 4x fewer positions: 3.1x less work for PSPNet-50 at 473x473, measured 3.0x faster
on CPU. The coarser sampling loses thin structures and boundaries, and the pyramid bins pool a
coarser map; on the demo benchmark a model trained at stride 8 lost 26 mIoU at stride 16
(docs/cpu_modes.md, ``benchmarks/cpu_modes.py``). So measure it on your validation set before
shipping a model at a stride it was not trained at. The other direction (a stride-16 model run at 8)
is the usual "train at 16, test at 8" trick.
"""

from __future__ import annotations

from torch import nn

from pspnet.errors import InputError
from pspnet.models.pspnet import PSPNet
from pspnet.models.registry import attach_metadata
from pspnet.models.resnet import stage_dilations

__all__ = ["OUTPUT_STRIDES", "at_output_stride", "with_output_stride"]

OUTPUT_STRIDES = (8, 16, 32)


def with_output_stride(model: PSPNet, output_stride: int) -> PSPNet:
    """A new PSPNet with the same weights and metadata, running at ``output_stride``.

    The original model is not modified; the new one is on the same device, in the same dtype and
    in the same train/eval mode. Weights are copied (not shared), so fine-tuning one never changes
    the other. Asking for the model's own stride still returns a copy.

    Args:
        model: a :class:`PSPNet` (any preset; the ONNX runner cannot be converted because its
            strides are fixed in the exported graph).
        output_stride: 8, 16 or 32.

    Raises:
        InputError: not a PSPNet (e.g. an ``.onnx`` model) or an unsupported stride.
    """
    if not isinstance(model, PSPNet):
        raise InputError(
            f"output stride can only be changed on a PSPNet, got {type(model).__name__}; an exported ONNX "
            "model has its stride fixed in the graph: convert the .safetensors model, then export it"
        )
    try:
        stage_dilations(int(output_stride))
    except (TypeError, ValueError):
        raise InputError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}") from None
    state = model.state_dict()
    converted = PSPNet(model.config.replace(output_stride=int(output_stride)))
    missing = sorted(set(converted.state_dict()) ^ set(state))
    if missing:
        # Only a stage whose width does not change could gain or lose its shortcut conv with its stride.
        raise InputError(
            f"cannot run this {model.preset_name} model at output stride {output_stride}: its parameters "
            f"differ at that stride ({', '.join(missing[:4])}); use its own stride "
            f"{model.config.output_stride}"
        )
    reference = next(model.parameters())
    converted.to(device=reference.device, dtype=reference.dtype)
    converted.load_state_dict(state, strict=True)
    attach_metadata(converted, model.preset_name, model.dataset_info, model.preprocess)
    return converted.train(model.training)


def at_output_stride(model: nn.Module, output_stride: int, source: object = "the model") -> nn.Module:
    """``model`` itself if it already runs at ``output_stride``, else :func:`with_output_stride`.

    What ``pspnet eval/predict --output-stride`` call. ``source`` (the model file) is named in the
    error raised for a model whose stride cannot change, such as an exported ``.onnx`` file.
    """
    if not isinstance(model, PSPNet):
        raise InputError(
            f"{source}: --output-stride needs a .safetensors model; an ONNX model's output stride is fixed "
            "when it is exported. Use the .safetensors model, or export one converted with "
            "pspnet.models.stride.with_output_stride"
        )
    if model.config.output_stride == int(output_stride):
        return model
    return with_output_stride(model, output_stride)
