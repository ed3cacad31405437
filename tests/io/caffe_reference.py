"""Test helpers for the Caffe importer: small nets laid out like the authors' deploy prototxts,
and a forward pass with Caffe's semantics written independently of our model.

``build_pspnet_net`` follows hszhao/PSPNet ``evaluation/prototxt/pspnet50_ADE20K_473.prototxt``
(and the ResNet-101 VOC/Cityscapes ones): the same layer names, types, bottoms/tops (in-place BN
and ReLU), parameters and concatenation order, with tiny widths and distinct random blobs.
``caffe_forward`` interprets such a net layer by layer as Caffe computes it (the fork's BN and
Interp, Caffe's ceil-mode pooling), with explicit index arithmetic rather than our modules or
``F.interpolate``/``F.avg_pool2d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pspnet.io.caffe_proto import (
    BNParam,
    CaffeBlob,
    CaffeLayer,
    CaffeNet,
    ConcatParam,
    ConvolutionParam,
    DropoutParam,
    EltwiseParam,
    InterpParam,
    PoolingParam,
)

__all__ = ["CAFFE_MEAN_BGR", "NetSpec", "build_pspnet_net", "caffe_forward", "caffe_input", "insert_splits"]

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the authors' Caffe evaluation (B, G, R)
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass
class NetSpec:
    depth: int = 50
    stride_in_1x1: bool = True  # ADE20K R50: stride on conv3_1_1x1_reduce; VOC/Cityscapes R101: on the 3x3
    stem_width: int = 4
    widths: tuple[int, int, int, int] = (4, 8, 16, 32)
    head: int = 8
    classes: int = 5
    feature: int = 12  # feature map side at output stride 8; input side 8 * (feature - 1) + 1
    bins: tuple[int, ...] = (1, 2, 3, 6)  # pooling layers are declared in this order ...
    concat_order: tuple[int, ...] = (6, 3, 2, 1)  # ... and concatenated in this one, as the authors'
    eps: dict[str, float] = field(default_factory=dict)  # BN layer name -> bn_param.eps
    seed: int = 0

    @property
    def input_size(self) -> int:
        return 8 * (self.feature - 1) + 1


class _Builder:
    def __init__(self, spec: NetSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.layers: list[CaffeLayer] = []
        self.channels: dict[str, int] = {"data": 3}

    def conv(
        self,
        name: str,
        bottom: str,
        out: int,
        kernel: int,
        *,
        stride: int = 1,
        pad: int = 0,
        dilation: int = 1,
        bias: bool = False,
        explicit_pad: bool = True,
        gain: float = 1.0,
    ) -> str:
        cin = self.channels[bottom]
        std = gain * math.sqrt(2.0 / (cin * kernel * kernel))
        blobs = [CaffeBlob((out, cin, kernel, kernel), self.rng.normal(0, std, out * cin * kernel * kernel))]
        if bias:
            blobs.append(CaffeBlob((out,), self.rng.uniform(-0.3, 0.3, out)))
        param = ConvolutionParam(
            num_output=out,
            bias_term=None if bias else False,  # the deploy files leave conv6's bias_term at its default
            pad=(pad,) if (pad or explicit_pad) else (),
            kernel_size=(kernel,),
            stride=(stride,),
            dilation=(dilation,) if dilation > 1 else (),
        )
        self._add(CaffeLayer(name, "Convolution", [bottom], [name], blobs, convolution_param=param))
        self.channels[name] = out
        return name

    def bn(self, top: str, *, slope: tuple[float, float] = (0.5, 1.5)) -> None:
        c = self.channels[top]
        name = f"{top}/bn"
        values = [
            self.rng.uniform(*slope, c),
            self.rng.uniform(-0.2, 0.2, c),
            self.rng.uniform(-0.3, 0.3, c),
            self.rng.uniform(0.5, 2.0, c),
        ]
        eps = self.spec.eps.get(name)
        param = BNParam(momentum=0.95, frozen=True, eps=eps)
        blobs = [CaffeBlob((1, c, 1, 1), v) for v in values]
        self._add(CaffeLayer(name, "BN", [top], [top], blobs, bn_param=param))

    def relu(self, top: str, name: str | None = None) -> None:
        self._add(CaffeLayer(name or f"{top}/relu", "ReLU", [top], [top]))

    def _add(self, layer: CaffeLayer) -> None:
        for blob in layer.blobs:
            blob.data = np.asarray(blob.data, np.float32).reshape(-1)
        self.layers.append(layer)

    def block(self, stage: int, block: int, bottom: str, planes: int, stride: int, dilation: int) -> str:
        base = f"conv{stage}_{block}"
        s1x1, s3x3 = (stride, 1) if self.spec.stride_in_1x1 else (1, stride)
        x = self.conv(f"{base}_1x1_reduce", bottom, planes, 1, stride=s1x1)
        self.bn(x)
        self.relu(x)
        y = self.conv(f"{base}_3x3", x, planes, 3, stride=s3x3, pad=dilation, dilation=dilation)
        self.bn(y)
        self.relu(y)
        z = self.conv(f"{base}_1x1_increase", y, 4 * planes, 1)
        self.bn(z, slope=(0.1, 0.4))  # small residual branches keep 100 blocks of random weights finite
        shortcut = bottom
        if block == 1:
            shortcut = self.conv(f"{base}_1x1_proj", bottom, 4 * planes, 1, stride=stride)
            self.bn(shortcut)
        self._add(CaffeLayer(base, "Eltwise", [shortcut, z], [base], eltwise_param=EltwiseParam(operation=1)))
        self.channels[base] = 4 * planes
        self.relu(base)
        return base


def build_pspnet_net(spec: NetSpec) -> CaffeNet:
    """A PSPNet deploy net with the authors' layer names, tiny widths and random weights."""
    b = _Builder(spec)
    w = spec.stem_width
    x = b.conv("conv1_1_3x3_s2", "data", w, 3, stride=2, pad=1, gain=1 / 64)  # inputs are +-128
    b.bn(x)
    b.relu(x)
    x = b.conv("conv1_2_3x3", x, w, 3, pad=1)
    b.bn(x)
    b.relu(x)
    x = b.conv("conv1_3_3x3", x, 2 * w, 3, pad=1)
    b.bn(x)
    b.relu(x)
    pool = PoolingParam(pool=0, kernel_size=3, stride=2, pad=1)
    b._add(CaffeLayer("pool1_3x3_s2", "Pooling", [x], ["pool1_3x3_s2"], pooling_param=pool))
    b.channels["pool1_3x3_s2"] = 2 * w
    x = "pool1_3x3_s2"
    plan = {2: (1, 1), 3: (2, 1), 4: (1, 2), 5: (1, 4)}  # stage -> (stride, dilation) at output stride 8
    for stage, blocks in zip(range(2, 6), BLOCKS[spec.depth], strict=True):
        stride, dilation = plan[stage]
        for block in range(1, blocks + 1):
            x = b.block(stage, block, x, spec.widths[stage - 2], stride if block == 1 else 1, dilation)
    features, f = x, spec.feature
    branch = b.channels[features] // len(spec.bins)
    interps = {}
    for bin_ in spec.bins:
        name = f"conv5_3_pool{bin_}"
        kernel = f // bin_
        pool = PoolingParam(pool=1, kernel_size=kernel, stride=kernel)
        b._add(CaffeLayer(name, "Pooling", [features], [name], pooling_param=pool))
        b.channels[name] = b.channels[features]
        conv = b.conv(f"{name}_conv", name, branch, 1, stride=1, explicit_pad=False)
        b.bn(conv)
        b.relu(conv)
        interps[bin_] = f"{name}_interp"
        interp = InterpParam(height=f, width=f)
        b._add(CaffeLayer(interps[bin_], "Interp", [conv], [interps[bin_]], interp_param=interp))
    bottoms = [features] + [interps[bin_] for bin_ in spec.concat_order]
    b._add(CaffeLayer("conv5_3_concat", "Concat", bottoms, ["conv5_3_concat"], concat_param=ConcatParam()))
    b.channels["conv5_3_concat"] = b.channels[features] + branch * len(spec.bins)
    x = b.conv("conv5_4", "conv5_3_concat", spec.head, 3, pad=1)
    b.bn(x)
    b.relu(x)
    b._add(CaffeLayer("conv5_4/dropout", "Dropout", [x], [x], dropout_param=DropoutParam(0.1)))
    b.conv("conv6", x, spec.classes, 1, bias=True, explicit_pad=False)
    b._add(
        CaffeLayer(
            "conv6_interp", "Interp", ["conv6"], ["conv6_interp"], interp_param=InterpParam(zoom_factor=8)
        )
    )
    size = spec.input_size
    return CaffeNet(name="pspnet_test", layers=b.layers, input=["data"], input_dim=[1, 3, size, size])


def insert_splits(net: CaffeNet) -> CaffeNet:
    """Add the ``Split`` layers Caffe inserts (and saves) where a blob feeds several layers.

    Written from Caffe's documented behaviour: after the last producer of a blob that is read by
    k > 1 layers, a layer ``{blob}_{producer}_{top index}_split`` copies it to k tops, and each
    reader takes its own copy in order.
    """
    last: dict[str, tuple[str, int]] = {name: ("input", i) for i, name in enumerate(net.input)}
    readers: dict[tuple[str, int, str], list[tuple[int, int]]] = {}
    for li, layer in enumerate(net.layers):
        for bi, blob in enumerate(layer.bottom):
            producer = last[blob]
            readers.setdefault((*producer, blob), []).append((li, bi))
        for ti, blob in enumerate(layer.top):
            last[blob] = (layer.name, ti)
    new_bottoms = {li: list(layer.bottom) for li, layer in enumerate(net.layers)}
    splits_after: dict[str, list[CaffeLayer]] = {}
    for (producer, ti, blob), uses in readers.items():
        if len(uses) < 2:
            continue
        tops = [f"{blob}_{producer}_{ti}_split_{k}" for k in range(len(uses))]
        for (li, bi), top in zip(uses, tops, strict=True):
            new_bottoms[li][bi] = top
        split = CaffeLayer(f"{blob}_{producer}_{ti}_split", "Split", [blob], tops)
        splits_after.setdefault(producer, []).append(split)
    layers: list[CaffeLayer] = list(splits_after.get("input", []))
    for li, layer in enumerate(net.layers):
        copy = CaffeLayer(**{**layer.__dict__, "bottom": new_bottoms[li]})
        layers.append(copy)
        layers += splits_after.get(layer.name, [])
    return CaffeNet(net.name, layers, list(net.input), list(net.input_dim))


def caffe_input(image_rgb: np.ndarray) -> Tensor:
    """The authors' Caffe input: BGR, mean subtracted, no scaling, (1, 3, H, W) float32."""
    bgr = image_rgb[..., ::-1].astype(np.float64) - np.array(CAFFE_MEAN_BGR)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1), dtype=np.float32))[None]


# --- Caffe semantics -----------------------------------------------------------------------------


def _blob(layer: CaffeLayer, i: int, dtype: torch.dtype) -> Tensor:
    blob = layer.blobs[i]
    return torch.from_numpy(np.array(blob.data, dtype=np.float64).reshape(blob.shape)).to(dtype)


def _conv(layer: CaffeLayer, x: Tensor) -> Tensor:
    p = layer.convolution_param
    assert p is not None

    def one(values: tuple[int, ...], default: int) -> int:
        return values[0] if values else default

    weight = _blob(layer, 0, x.dtype)
    bias = _blob(layer, 1, x.dtype).reshape(-1) if len(layer.blobs) > 1 else None
    return F.conv2d(
        x,
        weight,
        bias,
        stride=one(p.stride, 1),
        padding=one(p.pad, 0),
        dilation=one(p.dilation, 1),
        groups=p.group or 1,
    )


def _bn(layer: CaffeLayer, x: Tensor) -> Tensor:
    """The fork's BN at test time: slope * (x - mean) / sqrt(var + eps) + bias."""
    c = x.shape[1]
    slope, bias, mean, var = (_blob(layer, i, x.dtype).reshape(1, c, 1, 1) for i in range(4))
    eps = 1e-5 if layer.bn_param is None or layer.bn_param.eps is None else layer.bn_param.eps
    return slope * (x - mean) / torch.sqrt(var + eps) + bias


def _pool(layer: CaffeLayer, x: Tensor) -> Tensor:
    """Caffe's PoolingLayer: ceil-mode output size; averages divide by the window clipped to H + pad."""
    p = layer.pooling_param
    assert p is not None
    height, width = x.shape[-2:]
    if p.global_pooling:
        kh, kw, stride, pad = height, width, 1, 0
    else:
        kh = kw = p.kernel_size
        stride, pad = p.stride or 1, p.pad or 0
    out_h = math.ceil((height + 2 * pad - kh) / stride) + 1
    out_w = math.ceil((width + 2 * pad - kw) / stride) + 1
    if pad:
        out_h -= (out_h - 1) * stride >= height + pad
        out_w -= (out_w - 1) * stride >= width + pad
    out = x.new_empty(*x.shape[:2], out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + kh, height + pad), min(w0 + kw, width + pad)
            area = (h1 - h0) * (w1 - w0)
            window = x[..., max(h0, 0) : min(h1, height), max(w0, 0) : min(w1, width)]
            if (p.pool or 0) == 0:
                out[..., i, j] = window.amax(dim=(-2, -1))
            else:
                out[..., i, j] = window.sum(dim=(-2, -1)) / area
    return out


def _interp(layer: CaffeLayer, x: Tensor) -> Tensor:
    """The fork's Interp: output size from height/width or zoom_factor; bilinear, corners aligned."""
    p = layer.interp_param
    assert p is not None
    h1, w1 = x.shape[-2:]
    if p.zoom_factor is not None:
        h2, w2 = h1 + (h1 - 1) * (p.zoom_factor - 1), w1 + (w1 - 1) * (p.zoom_factor - 1)
    else:
        h2, w2 = p.height, p.width
    assert h2 is not None and w2 is not None
    if (h1, w1) == (h2, w2):
        return x.clone()

    def axis(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        ratio = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        pos = ratio * np.arange(n_out, dtype=np.float32)  # float32 arithmetic, as the C++ code
        lo = pos.astype(np.int64)
        step = (lo < n_in - 1).astype(np.int64)
        frac = torch.from_numpy((pos - lo).astype(np.float64))
        return torch.from_numpy(lo), torch.from_numpy(lo + step), frac

    r0, r1, fr = axis(h1, h2)
    c0, c1, fc = axis(w1, w2)
    fr, fc = fr.to(x.dtype).view(-1, 1), fc.to(x.dtype).view(1, -1)
    top = x[..., r0, :][..., c0] * (1 - fc) + x[..., r0, :][..., c1] * fc
    bottom = x[..., r1, :][..., c0] * (1 - fc) + x[..., r1, :][..., c1] * fc
    return top * (1 - fr) + bottom * fr


def caffe_forward(net: CaffeNet, data: Tensor) -> dict[str, Tensor]:
    """Run ``net`` on ``data`` (the Caffe input) with Caffe's test-phase semantics; returns all blobs."""
    blobs: dict[str, Tensor] = {net.input[0]: data}
    for layer in net.layers:
        inputs = [blobs[b] for b in layer.bottom]
        kind = layer.type
        if kind == "Convolution":
            out = [_conv(layer, inputs[0])]
        elif kind == "BN":
            out = [_bn(layer, inputs[0])]
        elif kind == "ReLU":
            slope = layer.relu_param.negative_slope if layer.relu_param else None
            out = [torch.where(inputs[0] > 0, inputs[0], inputs[0] * (slope or 0.0))]
        elif kind == "Pooling":
            out = [_pool(layer, inputs[0])]
        elif kind == "Eltwise":
            coeff = (layer.eltwise_param.coeff if layer.eltwise_param else ()) or (1.0,) * len(inputs)
            out = [sum(c * t for c, t in zip(coeff, inputs, strict=True))]  # type: ignore[misc]
        elif kind == "Interp":
            out = [_interp(layer, inputs[0])]
        elif kind == "Concat":
            out = [torch.cat(inputs, 1)]
        elif kind in ("Dropout", "Split"):
            out = [inputs[0]] * len(layer.top)
        elif kind == "Power":  # y = (shift + scale * x) ^ power; used to build a layer we refuse
            out = [inputs[0] * 2.0]
        elif not layer.bottom:
            continue  # a data layer: the input is given
        elif kind.endswith("Loss"):
            continue
        else:
            raise NotImplementedError(kind)
        for top, value in zip(layer.top, out, strict=True):
            blobs[top] = value
    return blobs
