"""The authors' Caffe models (hszhao/PSPNet ``*.caffemodel``) -> our model, without Caffe.

The released files (``pspnet50_ADE20K``, ``pspnet101_VOC2012``, ``pspnet101_cityscapes``) are
read with :mod:`pspnet.io.caffe_proto`. A caffemodel stores the whole net -- layer names, types,
parameters and weights -- so the architecture is read off the file, not assumed:

- layer names (the authors' deploy prototxts) -> our keys: ``conv1_{1,2,3}_3x3[_s2]`` ->
  ``backbone.stem.{0,3,6}``; ``conv{s}_{b}_1x1_reduce / _3x3 / _1x1_increase / _1x1_proj`` ->
  ``backbone.layer{s-1}.{b-1}.conv1 / conv2 / conv3 / downsample.0``; each ``<conv>/bn`` -> the
  matching BatchNorm; the pyramid branches (found through the ``Concat`` feeding ``conv5_4``) ->
  ``ppm.branches.i.{1,2}`` by their bin; ``conv5_4`` -> ``classifier.0``; ``conv6`` -> ``classifier.4``.
- The fork's ``BN`` layer computes ``slope * (x - mean) / sqrt(var + eps) + bias`` from its four
  blobs ``[slope, bias, mean, var]`` (each 1xCx1x1, mean and variance stored as is, no scale
  factor); ``eps`` comes from the layer's ``bn_param`` (default 1e-5). Our BatchNorm's eps is
  1e-5, so ``var + eps - 1e-5`` is stored as running variance: the same function.
- Caffe concatenates the pyramid as ``[x, bin6, bin3, bin2, bin1]`` (``conv5_3_concat``); ours is
  ``[x, bins...]``, so ``conv5_4``'s input-channel blocks are permuted.
- The ADE20K ResNet-50 has its stage stride on the first 1x1 conv (``conv3_1_1x1_reduce``
  stride 2, the original MSRA ResNet): read from the strides, it sets ``stride_in_1x1=True``.
- Every convolution's kernel, stride, padding, dilation and bias is compared with our network
  (output stride 8, dilation 2 and 4); anything else is refused rather than converted into a
  network that computes something different.

Inputs are BGR with the mean subtracted and no std (:data:`CAFFE_PREPROCESS`). Resizes are
bilinear with aligned corners (the fork's ``Interp``), as ours with ``align_corners=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pspnet.data.preprocess import CAFFE_PREPROCESS
from pspnet.errors import InputError
from pspnet.io.caffe_proto import (
    ELTWISE_SUM,
    POOL_AVE,
    POOL_MAX,
    CaffeBlob,
    CaffeLayer,
    CaffeNet,
    ConvGeometry,
    read_caffemodel,
)
from pspnet.io.convert import ImportedWeights
from pspnet.models.pspnet import PSPNet, PSPNetConfig
from pspnet.models.resnet import RESNET_SPECS

__all__ = ["BN_EPS", "CaffeGraph", "caffe_pool_size", "caffe_to_pspnet", "read_caffe"]

BN_EPS = 1e-5
"""Our BatchNorm's eps (PyTorch's default); the Caffe eps is folded into the variance."""

_DEPTH_BY_STAGE4 = {6: 50, 23: 101, 36: 152}
_STEM_CONVS = ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3")  # -> backbone.stem.0 / 3 / 6
_STEM_POOL = "pool1_3x3_s2"
_HEAD, _CLASSIFIER = "conv5_4", "conv6"
_BLOCK_CONVS = {"conv1": "1x1_reduce", "conv2": "3x3", "conv3": "1x1_increase"}


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of Caffe's pooling: rounded up, then clipped so the last window starts inside."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass
class CaffeGraph:
    """The net as a graph: for each layer, the index of the layer that produced each bottom.

    Layers often work in place (``top == bottom``), so a blob name means "the latest producer";
    ``deps[i][j]`` is -1 for a net input. Caffe's saved nets also hold the ``Split`` layers it
    inserted where a blob feeds several layers; :meth:`source` looks through them.
    """

    net: CaffeNet
    deps: list[list[int]]
    index: dict[str, int]

    @classmethod
    def build(cls, net: CaffeNet, source: str) -> CaffeGraph:
        producer: dict[str, int] = {}
        deps: list[list[int]] = []
        index: dict[str, int] = {}
        for i, layer in enumerate(net.layers):
            if layer.name in index:
                raise InputError(f"{source}: two layers are named {layer.name!r}")
            index[layer.name] = i
            deps.append([producer.get(b, -1) for b in layer.bottom])
            for top in layer.top:
                producer[top] = i
        return cls(net, deps, index)

    def layer(self, name: str) -> CaffeLayer:
        return self.net.layers[self.index[name]]

    def source(self, i: int, j: int = 0) -> int:
        """The layer behind bottom ``j`` of layer ``i``, looking through Split layers."""
        k = self.deps[i][j] if j < len(self.deps[i]) else -1
        while k >= 0 and self.net.layers[k].type == "Split" and self.deps[k]:
            k = self.deps[k][0]
        return k

    def ancestors(self, i: int) -> set[int]:
        """``i`` and every layer it depends on."""
        seen, stack = {i}, [i]
        while stack:
            for k in self.deps[stack.pop()]:
                if k >= 0 and k not in seen:
                    seen.add(k)
                    stack.append(k)
        return seen


@dataclass
class _Branch:
    """One pyramid branch: Pooling -> Convolution -> BN -> ReLU -> Interp."""

    pool: CaffeLayer
    conv: CaffeLayer
    bn: CaffeLayer
    interp: CaffeLayer
    bin: int
    exact_at: tuple[int, int] | None  # feature size at which the fixed kernel equals adaptive pooling


@dataclass
class _Pyramid:
    concat: CaffeLayer
    branches: list[_Branch]  # in Caffe's concatenation order
    method: str  # "avg" | "max"


def _missing(graph: CaffeGraph, names: list[str], source: str) -> None:
    absent = [n for n in names if n not in graph.index]
    if absent:
        more = f" (+{len(absent) - 8} more)" if len(absent) > 8 else ""
        raise InputError(
            f"{source}: missing layers {', '.join(absent[:8])}{more}: not one of the authors' PSPNet "
            "caffemodels (hszhao/PSPNet), or an incomplete one"
        )


def _conv(graph: CaffeGraph, name: str, source: str) -> CaffeLayer:
    _missing(graph, [name], source)
    layer = graph.layer(name)
    if layer.type != "Convolution" or not layer.blobs:
        raise InputError(
            f"{source}: layer {name!r} is a {layer.type!r} layer, expected a Convolution with weights"
        )
    return layer


def _conv_geometry(layer: CaffeLayer, source: str) -> ConvGeometry:
    if layer.convolution_param is None:
        raise InputError(f"{source}: Convolution layer {layer.name!r} has no convolution_param")
    try:
        return layer.convolution_param.geometry()
    except ValueError as exc:
        raise InputError(f"{source}: layer {layer.name!r}: invalid convolution_param ({exc})") from exc


def _out_channels(layer: CaffeLayer) -> int:
    return int(layer.blobs[0].shape[0]) if layer.blobs[0].shape else 0


def _stages(graph: CaffeGraph, source: str) -> tuple[int, tuple[int, int, int, int]]:
    """Depth from the block counts of stages conv2..conv5 (checked against ResNet's)."""
    counts = []
    for stage in range(2, 6):
        pattern = re.compile(rf"conv{stage}_(\d+)_1x1_reduce")
        blocks = sorted(int(m.group(1)) for n in graph.index if (m := pattern.fullmatch(n)))
        if blocks != list(range(1, len(blocks) + 1)) or not blocks:
            raise InputError(
                f"{source}: the blocks of stage conv{stage} are {blocks or 'absent'}: expected "
                f"conv{stage}_1.. conv{stage}_N as in the authors' ResNet"
            )
        counts.append(len(blocks))
    depth = _DEPTH_BY_STAGE4.get(counts[2])
    if depth is None or RESNET_SPECS[depth].layers != tuple(counts):
        raise InputError(
            f"{source}: stages conv2..conv5 have {tuple(counts)} blocks: not a ResNet-50/101/152 "
            "((3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3))"
        )
    return depth, tuple(counts)  # type: ignore[return-value]


def _stride_in_1x1(graph: CaffeGraph, source: str) -> bool:
    """Whether the downsampling stages stride on their first 1x1 conv (MSRA) or on the 3x3."""
    places = {}
    for stage in range(2, 6):
        reduce_ = _conv_geometry(_conv(graph, f"conv{stage}_1_1x1_reduce", source), source).stride
        conv3x3 = _conv_geometry(_conv(graph, f"conv{stage}_1_3x3", source), source).stride
        if reduce_ != (1, 1) and conv3x3 != (1, 1):
            raise InputError(f"{source}: conv{stage}_1 strides both its 1x1 and its 3x3 conv")
        if reduce_ != (1, 1) or conv3x3 != (1, 1):
            places[stage] = reduce_ != (1, 1)
    if len(set(places.values())) > 1:
        raise InputError(
            f"{source}: some stages stride on the first 1x1 conv and others on the 3x3 "
            f"({ {f'conv{s}_1': '1x1' if v else '3x3' for s, v in places.items()} }): no PSPNet equivalent"
        )
    return any(places.values())


def _branch_bin(pool: CaffeLayer, interp: CaffeLayer, source: str) -> tuple[int, tuple[int, int] | None]:
    """The grid size a branch pools to, from the pooling and the Interp's output (the feature size)."""
    if pool.pooling_param is None:
        raise InputError(f"{source}: Pooling layer {pool.name!r} has no pooling_param")
    try:
        geo = pool.pooling_param.geometry()
    except ValueError as exc:
        raise InputError(f"{source}: layer {pool.name!r}: invalid pooling_param ({exc})") from exc
    named = re.search(r"pool(\d+)$", pool.name)
    name_bin = int(named.group(1)) if named else None
    p = interp.interp_param
    if p is not None and (p.pad_beg or p.pad_end):
        raise InputError(
            f"{source}: {interp.name!r} crops its input (pad_beg/pad_end); PSPNet's branches do not"
        )
    feature = None
    if p is not None and p.height and p.width and p.zoom_factor is None and p.shrink_factor is None:
        feature = (p.height, p.width)
    geo_bin, exact = None, None
    if geo.kernel is None:  # global pooling
        geo_bin, exact = 1, feature
    elif feature is not None:
        sizes = [
            caffe_pool_size(f, k, s, q)
            for f, k, s, q in zip(feature, geo.kernel, geo.stride, geo.pad, strict=True)
        ]
        if sizes[0] != sizes[1]:
            raise InputError(
                f"{source}: {pool.name!r} pools a {feature[0]}x{feature[1]} map to {sizes[0]}x{sizes[1]}: "
                "PSPNet's bins are square grids"
            )
        geo_bin = sizes[0]
        tiles = all(
            k * geo_bin == f and s == k and q == 0
            for f, k, s, q in zip(feature, geo.kernel, geo.stride, geo.pad, strict=True)
        )
        exact = feature if tiles else None
    if name_bin is not None and geo_bin is not None and name_bin != geo_bin:
        raise InputError(
            f"{source}: {pool.name!r} is named for bin {name_bin} but pools its {feature} input "
            f"to {geo_bin}x{geo_bin}"
        )
    bin_ = geo_bin if geo_bin is not None else name_bin
    if bin_ is None:
        raise InputError(f"{source}: cannot tell the grid size of pyramid branch {pool.name!r}")
    return bin_, exact


def _pyramid(graph: CaffeGraph, head: int, source: str) -> _Pyramid | None:
    """The pyramid pooling module feeding ``conv5_4``, or None for the dilated-FCN baseline."""
    ci = graph.source(head)
    if ci < 0 or graph.net.layers[ci].type != "Concat":
        return None
    concat = graph.net.layers[ci]
    axis = concat.concat_param.resolved_axis if concat.concat_param else 1
    if axis != 1:
        raise InputError(f"{source}: {concat.name!r} concatenates along axis {axis}, expected channels (1)")
    feature = graph.source(ci, 0)
    branches, methods = [], set()
    for j in range(1, len(concat.bottom)):
        chain, k = [], graph.source(ci, j)
        while k >= 0 and graph.net.layers[k].type != "Pooling" and len(chain) < 8:
            chain.append(k)
            k = graph.source(k)
        types = [graph.net.layers[c].type for c in chain]
        if k < 0 or types != ["Interp", "ReLU", "BN", "Convolution"]:
            found = " -> ".join(reversed(types)) or "nothing"
            raise InputError(
                f"{source}: input {concat.bottom[j]!r} of {concat.name!r} is not a pyramid branch "
                f"(Pooling -> Convolution -> BN -> ReLU -> Interp); found {found}"
            )
        pool = graph.net.layers[k]
        if graph.source(k) != feature:
            raise InputError(
                f"{source}: {pool.name!r} does not pool the feature map that {concat.name!r} keeps"
            )
        interp, relu, bn, conv = (graph.net.layers[c] for c in chain)
        _check_relu(relu, source)
        bin_, exact = _branch_bin(pool, interp, source)
        method = pool.pooling_param.geometry().method if pool.pooling_param else POOL_MAX
        if method not in (POOL_AVE, POOL_MAX):
            raise InputError(f"{source}: {pool.name!r} uses stochastic pooling, which PSPNet does not have")
        methods.add("avg" if method == POOL_AVE else "max")
        branches.append(_Branch(pool, conv, bn, interp, bin_, exact))
    if not branches:
        return None
    if len(methods) > 1:
        raise InputError(f"{source}: the pyramid mixes average and max pooling")
    bins = [b.bin for b in branches]
    if len(set(bins)) != len(bins):
        raise InputError(f"{source}: the pyramid has repeated bins {bins}")
    return _Pyramid(concat, branches, methods.pop())


def _check_relu(layer: CaffeLayer, source: str) -> None:
    slope = layer.relu_param.negative_slope if layer.relu_param else None
    if slope:
        raise InputError(f"{source}: {layer.name!r} is a leaky ReLU (slope {slope}); PSPNet uses plain ReLU")


def _infer_config(
    graph: CaffeGraph, pyramid: _Pyramid | None, bins: tuple[int, ...], source: str
) -> PSPNetConfig:
    stem = [_conv(graph, n, source) for n in _STEM_CONVS]
    stem_widths = [_out_channels(c) for c in stem]
    w = stem_widths[0]
    if stem_widths != [w, w, 2 * w]:
        raise InputError(
            f"{source}: the stem convs have {stem_widths} channels, expected (w, w, 2w) as in PSPNet"
        )
    depth, _ = _stages(graph, source)
    widths = tuple(_out_channels(_conv(graph, f"conv{s}_1_1x1_reduce", source)) for s in range(2, 6))
    head = _conv(graph, _HEAD, source)
    classifier = _conv(graph, _CLASSIFIER, source)
    features = 4 * widths[3]
    pooling, reduction = "avg", True
    if pyramid is not None:
        file_bins = [b.bin for b in pyramid.branches]
        if sorted(file_bins) != sorted(bins):
            raise InputError(
                f"{source}: the pyramid pools to bins {sorted(file_bins)} (branches "
                f"{', '.join(b.pool.name for b in pyramid.branches)}) but bins={tuple(bins)}; "
                f"pass --bins {' '.join(map(str, sorted(file_bins)))}"
            )
        pooling = pyramid.method
        branch_channels = {_out_channels(b.conv) for b in pyramid.branches}
        if branch_channels == {features // len(bins)} and features % len(bins) == 0:
            reduction = True
        elif branch_channels == {features}:
            reduction = False
        else:
            raise InputError(
                f"{source}: pyramid branches of {sorted(branch_channels)} channels from {features} features: "
                f"PSPNet's have {features}/{len(bins)} (or {features} without reduction)"
            )
    dropouts = [
        layer.dropout_param.dropout_ratio
        for i in sorted(graph.ancestors(graph.index[_CLASSIFIER]))
        if (layer := graph.net.layers[i]).type == "Dropout"
        and layer.dropout_param is not None
        and layer.dropout_param.dropout_ratio is not None
    ]
    dropout = dropouts[-1] if dropouts and 0.0 <= dropouts[-1] < 1.0 else 0.1
    try:
        return PSPNetConfig(
            num_classes=_out_channels(classifier),
            depth=depth,
            output_stride=8,
            stem="deep",
            stem_width=w,
            widths=widths,  # type: ignore[arg-type]
            use_ppm=pyramid is not None,
            bins=tuple(bins),
            pooling=pooling,
            reduction=reduction,
            head_channels=_out_channels(head),
            aux=False,
            dropout=round(float(dropout), 6),  # stored as float32 in the file
            align_corners=True,
            stride_in_1x1=_stride_in_1x1(graph, source),
        )
    except ValueError as exc:
        raise InputError(f"{source}: the layers do not form a PSPNet ({exc})") from exc


def _caffe_name(prefix: str, pyramid: _Pyramid | None, bins: tuple[int, ...]) -> str:
    """The Caffe layer holding the weights of our module ``prefix``."""
    parts = prefix.split(".")
    if parts[:2] == ["backbone", "stem"]:
        conv = _STEM_CONVS[int(parts[2]) // 3]
        return conv if int(parts[2]) % 3 == 0 else f"{conv}/bn"
    if parts[0] == "backbone":
        stage, block = int(parts[1][len("layer") :]) + 1, int(parts[2]) + 1
        base = f"conv{stage}_{block}"
        if parts[3] == "downsample":
            return f"{base}_1x1_proj" + ("" if parts[4] == "0" else "/bn")
        kind, number = parts[3][:-1], parts[3][-1]
        conv = f"{base}_{_BLOCK_CONVS['conv' + number]}"
        return conv if kind == "conv" else f"{conv}/bn"
    if parts[0] == "ppm" and pyramid is not None:
        branch = next(b for b in pyramid.branches if b.bin == bins[int(parts[2])])
        return branch.conv.name if parts[3] == "1" else branch.bn.name
    if parts[0] == "classifier":
        return {"0": _HEAD, "1": f"{_HEAD}/bn", "4": _CLASSIFIER}[parts[1]]
    raise KeyError(prefix)


def _vector(blob: CaffeBlob, channels: int, what: str, source: str) -> np.ndarray:
    if blob.count != channels:
        raise InputError(f"{source}: {what} has {blob.count} values, expected {channels}")
    return np.asarray(blob.data, dtype=np.float64).reshape(channels)


def _weight(blob: CaffeBlob, shape: tuple[int, ...], what: str, source: str) -> np.ndarray:
    if blob.count != int(np.prod(shape)) or (len(blob.shape) == len(shape) and tuple(blob.shape) != shape):
        raise InputError(f"{source}: {what} has shape {tuple(blob.shape)}, expected {shape}")
    return np.array(blob.data, dtype=np.float32).reshape(shape)  # a copy: the file's bytes are read-only


def _check_geometry(layer: CaffeLayer, conv: nn.Conv2d, config: PSPNetConfig, source: str) -> None:
    geo = _conv_geometry(layer, source)
    theirs = (geo.kernel, geo.stride, geo.pad, geo.dilation, geo.group, geo.bias)
    ours = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    if theirs != tuple(ours):
        labels = ("kernel", "stride", "pad", "dilation", "group", "bias")
        diffs = [f"{n} {t} (ours {o})" for n, t, o in zip(labels, theirs, ours, strict=True) if t != o]
        stride_place = "first 1x1 conv" if config.stride_in_1x1 else "3x3 conv"
        raise InputError(
            f"{source}: layer {layer.name!r} has {', '.join(diffs)}: PSPNet (ResNet-{config.depth}, output "
            f"stride 8, dilations 2 and 4, stride on the {stride_place}) computes something else, so the "
            "file is not converted"
        )


def _check_stem_pool(graph: CaffeGraph, source: str) -> None:
    _missing(graph, [_STEM_POOL], source)
    pool = graph.layer(_STEM_POOL)
    geo = pool.pooling_param.geometry() if pool.type == "Pooling" and pool.pooling_param else None
    if geo is None or (geo.method, geo.kernel, geo.stride, geo.pad) != (POOL_MAX, (3, 3), (2, 2), (1, 1)):
        raise InputError(
            f"{source}: {_STEM_POOL!r} is not a 3x3 stride-2 max pooling with padding 1, as in PSPNet"
        )


def _check_path(graph: CaffeGraph, path: set[int], known: set[int], source: str) -> None:
    """Every layer between the input and the classifier must be mapped or an identity/sum."""
    strange = []
    for i in sorted(path):
        layer = graph.net.layers[i]
        if i in known or layer.type in ("Dropout", "Split"):
            continue
        if layer.type == "ReLU":
            _check_relu(layer, source)
        elif layer.type == "Eltwise":
            param = layer.eltwise_param
            op = ELTWISE_SUM if param is None or param.operation is None else param.operation
            if op != ELTWISE_SUM or any(c != 1.0 for c in (param.coeff if param else ())):
                strange.append(f"{layer.name} (Eltwise other than a plain sum)")
        elif layer.bottom or layer.blobs:  # a data layer (no bottoms, no weights) is the input
            strange.append(f"{layer.name} ({layer.type})")
    if strange:
        raise InputError(
            f"{source}: layers between the input and the classifier with no place in PSPNet: "
            f"{', '.join(strange[:6])}{' ...' if len(strange) > 6 else ''}"
        )


def _build_state(
    graph: CaffeGraph, config: PSPNetConfig, pyramid: _Pyramid | None, source: str
) -> tuple[dict[str, Tensor], dict[str, str], list[float]]:
    """Our state dict from the blobs; also our prefix -> Caffe layer, and the BN eps found."""
    with torch.device("meta"):
        model = PSPNet(config)
    modules = {prefix: m for prefix, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))}
    names = {prefix: _caffe_name(prefix, pyramid, config.bins) for prefix in modules}
    _missing(graph, list(names.values()), source)
    state: dict[str, Tensor] = {}
    eps_found: list[float] = []
    for prefix, module in modules.items():
        layer = graph.layer(names[prefix])
        what = f"layer {layer.name!r}"
        if isinstance(module, nn.Conv2d):
            if layer.type != "Convolution":
                raise InputError(f"{source}: {what} is a {layer.type!r} layer, expected a Convolution")
            _check_geometry(layer, module, config, source)
            expected_blobs = 2 if module.bias is not None else 1
            if len(layer.blobs) != expected_blobs:
                raise InputError(f"{source}: {what} has {len(layer.blobs)} blobs, expected {expected_blobs}")
            shape = tuple(module.weight.shape)
            state[f"{prefix}.weight"] = torch.from_numpy(
                _weight(layer.blobs[0], shape, f"{what} weights", source)
            )
            if module.bias is not None:
                bias = _vector(layer.blobs[1], shape[0], f"{what} bias", source)
                state[f"{prefix}.bias"] = torch.from_numpy(bias.astype(np.float32))
            continue
        if layer.type != "BN":
            hint = (
                " (stock Caffe BatchNorm + Scale is not the authors' release)"
                if layer.type == "BatchNorm"
                else ""
            )
            raise InputError(f"{source}: {what} is a {layer.type!r} layer, expected the fork's BN{hint}")
        if len(layer.blobs) != 4:
            raise InputError(
                f"{source}: {what} has {len(layer.blobs)} blobs, expected 4 (slope, bias, mean, variance)"
            )
        channels = int(module.num_features)
        slope, bias, mean, var = (
            _vector(b, channels, f"{what} blob {j}", source) for j, b in enumerate(layer.blobs)
        )
        eps = layer.bn_param.epsilon if layer.bn_param is not None else BN_EPS
        eps_found.append(eps)
        # Caffe divides by sqrt(var + eps); ours by sqrt(running_var + 1e-5): fold the difference in.
        state[f"{prefix}.weight"] = torch.from_numpy(slope.astype(np.float32))
        state[f"{prefix}.bias"] = torch.from_numpy(bias.astype(np.float32))
        state[f"{prefix}.running_mean"] = torch.from_numpy(mean.astype(np.float32))
        state[f"{prefix}.running_var"] = torch.from_numpy((var + float(eps) - BN_EPS).astype(np.float32))
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if pyramid is not None:
        state["classifier.0.weight"] = _permute_head(state["classifier.0.weight"], pyramid, config)
    expected = model.state_dict()
    wrong = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong or set(state) - set(expected):
        example = (wrong or sorted(set(state) - set(expected)))[:3]
        raise InputError(f"{source}: the weights do not form a PSPNet (e.g. {example})")
    return state, names, eps_found


def _permute_head(weight: Tensor, pyramid: _Pyramid, config: PSPNetConfig) -> Tensor:
    """Reorder conv5_4's input channels from Caffe's concatenation order to ours."""
    features = 4 * config.widths[3]
    branch = (weight.shape[1] - features) // len(pyramid.branches)
    start = {"x": 0}
    offset = features
    for b in pyramid.branches:  # Caffe's order: [x, then the branches as concatenated]
        start[str(b.bin)] = offset
        offset += branch
    index = [torch.arange(0, features)]
    index += [torch.arange(start[str(b)], start[str(b)] + branch) for b in config.bins]
    return weight[:, torch.cat(index)].contiguous()


def caffe_to_pspnet(
    net: CaffeNet, bins: tuple[int, ...] = (1, 2, 3, 6), source: str = "caffemodel"
) -> ImportedWeights:
    """Turn a parsed authors' PSPNet caffemodel into our config and state dict (see the module doc)."""
    graph = CaffeGraph.build(net, source)
    _missing(graph, [_CLASSIFIER, _HEAD, *_STEM_CONVS], source)
    classifier = graph.index[_CLASSIFIER]
    pyramid = _pyramid(graph, graph.index[_HEAD], source)
    config = _infer_config(graph, pyramid, tuple(bins), source)
    _check_stem_pool(graph, source)
    state, names, eps_found = _build_state(graph, config, pyramid, source)

    path = graph.ancestors(classifier)
    known = {graph.index[n] for n in names.values()} | {graph.index[_STEM_POOL]}
    if pyramid is not None:
        known |= {graph.index[pyramid.concat.name]}
        known |= {graph.index[layer.name] for b in pyramid.branches for layer in (b.pool, b.interp)}
    detached = sorted(graph.net.layers[i].name for i in known - path)
    if detached:
        raise InputError(
            f"{source}: layers {detached[:6]} are not connected to the classifier {_CLASSIFIER!r}"
        )
    _check_path(graph, path, known, source)
    dropped = [
        f"{layer.name} ({layer.type}{f', {len(layer.blobs)} blobs' if layer.blobs else ''})"
        for i, layer in enumerate(net.layers)
        if i not in path and (layer.blobs or layer.type.endswith(("Loss", "Accuracy")))
    ]
    notes = _notes(net, config, pyramid, eps_found, source)
    return ImportedWeights(config, state, CAFFE_PREPROCESS, dropped, notes)


def _notes(
    net: CaffeNet, config: PSPNetConfig, pyramid: _Pyramid | None, eps_found: list[float], source: str
) -> list[str]:
    stride = "the first 1x1 conv (stride_in_1x1=True)" if config.stride_in_1x1 else "the 3x3 conv"
    w = config.stem_width
    notes = [
        f"authors' Caffe PSPNet{f' {net.name!r}' if net.name else ''}: ResNet-{config.depth} (deep stem "
        f"{w}-{w}-{2 * w}, stage stride on {stride}), output stride 8, {config.num_classes} classes, no "
        "auxiliary head (not in the release)"
    ]
    if pyramid is not None:
        caffe_order = ", ".join(f"bin{b.bin}" for b in pyramid.branches)
        ours = ", ".join(f"bin{b}" for b in config.bins)
        if [b.bin for b in pyramid.branches] != list(config.bins):
            notes.append(
                f"pyramid concatenated as [x, {caffe_order}] in Caffe ({pyramid.concat.name}): "
                f"{_HEAD}'s input channels permuted into our order [x, {ours}]"
            )
        exact = {b.exact_at for b in pyramid.branches}
        if len(exact) == 1 and (size := exact.pop()) is not None:
            crop = tuple(8 * (s - 1) + 1 for s in size)
            notes.append(
                f"the file pools with fixed kernels for a {size[0]}x{size[1]} feature map "
                f"({crop[0]}x{crop[1]} input crops); our adaptive pooling computes the same whenever the "
                f"bins divide the feature map, e.g. on {crop[0]}x{crop[1]} crops as the authors evaluate"
            )
        else:
            notes.append(
                "the file's pyramid pooling kernels do not tile its feature map exactly: our adaptive "
                "pooling may differ from the Caffe net at its design size"
            )
    distinct = sorted(set(eps_found))
    if distinct == [BN_EPS]:
        notes.append("BN eps 1e-5 in the file, as ours: running variances copied as they are")
    else:
        shown = ", ".join(f"{e:g}" for e in distinct)
        notes.append(f"BN eps {shown} folded into the running variances (var + eps - 1e-5) for our eps 1e-5")
        if distinct[0] < BN_EPS:
            notes.append(
                "some BN eps are below 1e-5: Caffe's cuDNN engine would have used 1e-5 there, its CPU "
                "code the file's (folded here)"
            )
    notes.append(
        "input: BGR, mean (B 103.939, G 116.779, R 123.68) subtracted, no std division (CAFFE_PREPROCESS, "
        "stored with the model and applied by pspnet predict/eval to RGB images)"
    )
    notes.append(
        "resizes are bilinear with align_corners=True (the fork's Interp); Caffe's pooling rounds sizes "
        "up, ours down: identical on (H-1) % 8 == 0 inputs, the authors' sizes. The authors' evaluation "
        "also sums the logits of the image and its flip before the softmax and scales the long side to "
        "base*s+1: protocol details, not part of the weights"
    )
    del source
    return notes


def read_caffe(path: Path, bins: tuple[int, ...]) -> ImportedWeights:
    """Reader for the authors' Caffe release (``.caffemodel``), registered as source ``caffe``."""
    return caffe_to_pspnet(read_caffemodel(path), tuple(bins), str(path))
