"""Read and write Caffe's ``.caffemodel`` files without Caffe or protobuf.

A ``.caffemodel`` is one serialised ``NetParameter`` message (protocol buffers, proto2). Only the
few messages a PSPNet needs are decoded here, with the field numbers of the authors' Caffe fork
(hszhao/PSPNet ``src/caffe/proto/caffe.proto``): ``NetParameter``, ``LayerParameter``,
``BlobProto``/``BlobShape`` and the parameters of the layer types a PSPNet is built from
(``Convolution``, ``BN`` -- the fork's batch norm --, ``Pooling``, ``Interp``, ``Eltwise``,
``Concat``, ``Dropout``, ``ReLU``). Every other field is skipped by its wire type, as protobuf itself does.

Why not the ``protobuf`` package: it would need the generated ``caffe_pb2`` module (or ``protoc``)
and brings a native dependency for four messages; the wire format fits in a page.

The reader is written for untrusted files: every length is checked against the bytes left before
anything is sliced or allocated, varints are at most 10 bytes, nesting follows the fixed schema
(no recursion on the data), and any inconsistency raises :class:`ProtoDecodeError`. Blob values
are viewed with ``np.frombuffer`` (a 270 MB caffemodel parses in well under a second); the legacy
unpacked encoding of repeated floats is decoded with numpy too.

The writer produces the same messages (packed floats by default, as Caffe writes them); the tests
use it to build small caffemodels with the layout of the authors' released nets.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pspnet.errors import InputError

__all__ = [
    "BNParam",
    "CaffeBlob",
    "CaffeLayer",
    "CaffeNet",
    "ConcatParam",
    "ConvGeometry",
    "ConvolutionParam",
    "DropoutParam",
    "EltwiseParam",
    "InterpParam",
    "PoolGeometry",
    "PoolingParam",
    "ProtoDecodeError",
    "ReLUParam",
    "encode_net",
    "parse_net",
    "read_caffemodel",
    "write_caffemodel",
]

# wire types
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10

# PoolingParameter.PoolMethod and EltwiseParameter.EltwiseOp
POOL_MAX, POOL_AVE, POOL_STOCHASTIC = 0, 1, 2
ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2


class ProtoDecodeError(InputError):
    """The bytes are not a valid encoding of the expected message (truncated, junk, wrong file)."""


# --- messages ------------------------------------------------------------------------------------
# Optional proto2 fields are ``None`` when absent, so that "absent" and "set to the default" stay
# distinguishable (Caffe's Interp and Pooling layers branch on has_*()); repeated fields are tuples.


@dataclass
class CaffeBlob:
    """``BlobProto``: a tensor. ``shape`` comes from ``shape.dim``, else the legacy 4-D fields."""

    shape: tuple[int, ...]
    data: np.ndarray  # float32 (``data``) or float64 (``double_data``), flat

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 0


@dataclass
class ConvGeometry:
    """A convolution's resolved 2-D geometry, (height, width) pairs."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int
    bias: bool


@dataclass
class ConvolutionParam:
    """``ConvolutionParameter`` (field 106 of LayerParameter)."""

    num_output: int | None = None
    bias_term: bool | None = None
    pad: tuple[int, ...] = ()
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    pad_h: int | None = None
    pad_w: int | None = None
    kernel_h: int | None = None
    kernel_w: int | None = None
    stride_h: int | None = None
    stride_w: int | None = None
    group: int | None = None

    def geometry(self) -> ConvGeometry:
        """Resolve Caffe's alternatives (``kernel_size`` or ``kernel_h/w``, 1 or 2 values...).

        Raises ValueError on combinations Caffe itself rejects.
        """
        kernel = _pair(self.kernel_size, self.kernel_h, self.kernel_w, None, "kernel")
        return ConvGeometry(
            kernel=kernel,
            stride=_pair(self.stride, self.stride_h, self.stride_w, 1, "stride"),
            pad=_pair(self.pad, self.pad_h, self.pad_w, 0, "pad"),
            dilation=_pair(self.dilation, None, None, 1, "dilation"),
            group=1 if self.group is None else self.group,
            bias=True if self.bias_term is None else self.bias_term,
        )


def _pair(
    values: tuple[int, ...], h: int | None, w: int | None, default: int | None, what: str
) -> tuple[int, int]:
    if h is not None or w is not None:
        if values or h is None or w is None:
            raise ValueError(f"{what}: give either {what}_h and {what}_w, or {what}(_size)")
        return h, w
    if not values:
        if default is None:
            raise ValueError(f"{what}: not given")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"{what}: {len(values)} values for a 2-D layer")


@dataclass
class PoolGeometry:
    """A pooling layer's resolved geometry; ``kernel`` is None for global pooling."""

    method: int
    kernel: tuple[int, int] | None
    stride: tuple[int, int]
    pad: tuple[int, int]


@dataclass
class PoolingParam:
    """``PoolingParameter`` (field 121)."""

    pool: int | None = None
    kernel_size: int | None = None
    kernel_h: int | None = None
    kernel_w: int | None = None
    stride: int | None = None
    stride_h: int | None = None
    stride_w: int | None = None
    pad: int | None = None
    pad_h: int | None = None
    pad_w: int | None = None
    global_pooling: bool | None = None

    def geometry(self) -> PoolGeometry:
        """Resolve the alternatives as Caffe's PoolingLayer does (raises ValueError if invalid)."""
        method = POOL_MAX if self.pool is None else self.pool
        single = lambda v: () if v is None else (v,)  # noqa: E731
        stride = _pair(single(self.stride), self.stride_h, self.stride_w, 1, "stride")
        pad = _pair(single(self.pad), self.pad_h, self.pad_w, 0, "pad")
        if self.global_pooling:
            return PoolGeometry(method, None, stride, pad)
        kernel = _pair(single(self.kernel_size), self.kernel_h, self.kernel_w, None, "kernel")
        return PoolGeometry(method, kernel, stride, pad)


@dataclass
class BNParam:
    """``BNParameter`` (field 152): the fork's batch norm. Only what inference needs."""

    momentum: float | None = None
    eps: float | None = None
    frozen: bool | None = None

    @property
    def epsilon(self) -> float:
        return 1e-5 if self.eps is None else self.eps


@dataclass
class InterpParam:
    """``InterpParameter`` (field 143): the fork's bilinear resize."""

    height: int | None = None
    width: int | None = None
    zoom_factor: int | None = None
    shrink_factor: int | None = None
    pad_beg: int | None = None
    pad_end: int | None = None


@dataclass
class EltwiseParam:
    """``EltwiseParameter`` (field 110)."""

    operation: int | None = None
    coeff: tuple[float, ...] = ()


@dataclass
class ConcatParam:
    """``ConcatParameter`` (field 104); ``concat_dim`` is the deprecated alias of ``axis``."""

    axis: int | None = None
    concat_dim: int | None = None

    @property
    def resolved_axis(self) -> int:
        if self.axis is not None:
            return self.axis
        return 1 if self.concat_dim is None else self.concat_dim


@dataclass
class DropoutParam:
    """``DropoutParameter`` (field 108)."""

    dropout_ratio: float | None = None


@dataclass
class ReLUParam:
    """``ReLUParameter`` (field 123); a non-zero ``negative_slope`` makes it a leaky ReLU."""

    negative_slope: float | None = None


@dataclass
class CaffeLayer:
    """``LayerParameter`` (V2, ``NetParameter.layer``): the fields a PSPNet needs."""

    name: str = ""
    type: str = ""
    bottom: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)
    blobs: list[CaffeBlob] = field(default_factory=list)
    loss_weight: tuple[float, ...] = ()
    convolution_param: ConvolutionParam | None = None
    pooling_param: PoolingParam | None = None
    bn_param: BNParam | None = None
    interp_param: InterpParam | None = None
    eltwise_param: EltwiseParam | None = None
    concat_param: ConcatParam | None = None
    dropout_param: DropoutParam | None = None
    relu_param: ReLUParam | None = None


@dataclass
class CaffeNet:
    """``NetParameter``. ``v1_layers`` counts layers in the pre-2015 ``layers`` field (not decoded)."""

    name: str = ""
    layers: list[CaffeLayer] = field(default_factory=list)
    input: list[str] = field(default_factory=list)
    input_dim: list[int] = field(default_factory=list)
    v1_layers: int = 0


# --- field numbers (the fork's caffe.proto) ------------------------------------------------------

_NET_NAME, _NET_INPUT, _NET_INPUT_DIM, _NET_V1_LAYERS, _NET_LAYER = 1, 3, 4, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BOTTOM, _LAYER_TOP, _LAYER_LOSS_WEIGHT, _LAYER_BLOBS = 1, 2, 3, 4, 5, 7
_LAYER_PARAMS = {
    104: "concat_param",
    106: "convolution_param",
    108: "dropout_param",
    110: "eltwise_param",
    121: "pooling_param",
    123: "relu_param",
    143: "interp_param",
    152: "bn_param",
}
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_SHAPE_DIM = 1

# (field number -> (attribute, kind)); kinds: u = unsigned varint, i = int32 varint, b = bool,
# e = enum, f = float (fixed32), ru = repeated unsigned varint, rf = repeated float
_CONV_FIELDS = {
    1: ("num_output", "u"),
    2: ("bias_term", "b"),
    3: ("pad", "ru"),
    4: ("kernel_size", "ru"),
    6: ("stride", "ru"),
    18: ("dilation", "ru"),
    9: ("pad_h", "u"),
    10: ("pad_w", "u"),
    11: ("kernel_h", "u"),
    12: ("kernel_w", "u"),
    13: ("stride_h", "u"),
    14: ("stride_w", "u"),
    5: ("group", "u"),
}
_POOL_FIELDS = {
    1: ("pool", "e"),
    2: ("kernel_size", "u"),
    5: ("kernel_h", "u"),
    6: ("kernel_w", "u"),
    3: ("stride", "u"),
    7: ("stride_h", "u"),
    8: ("stride_w", "u"),
    4: ("pad", "u"),
    9: ("pad_h", "u"),
    10: ("pad_w", "u"),
    12: ("global_pooling", "b"),
}
_BN_FIELDS = {3: ("momentum", "f"), 4: ("eps", "f"), 5: ("frozen", "b")}
_INTERP_FIELDS = {
    1: ("height", "i"),
    2: ("width", "i"),
    3: ("zoom_factor", "i"),
    4: ("shrink_factor", "i"),
    5: ("pad_beg", "i"),
    6: ("pad_end", "i"),
}
_ELTWISE_FIELDS = {1: ("operation", "e"), 2: ("coeff", "rf")}
_CONCAT_FIELDS = {2: ("axis", "i"), 1: ("concat_dim", "u")}
_DROPOUT_FIELDS = {1: ("dropout_ratio", "f")}
_RELU_FIELDS = {1: ("negative_slope", "f")}

_PARAM_SCHEMAS: dict[str, tuple[type, dict[int, tuple[str, str]]]] = {
    "convolution_param": (ConvolutionParam, _CONV_FIELDS),
    "pooling_param": (PoolingParam, _POOL_FIELDS),
    "bn_param": (BNParam, _BN_FIELDS),
    "interp_param": (InterpParam, _INTERP_FIELDS),
    "eltwise_param": (EltwiseParam, _ELTWISE_FIELDS),
    "concat_param": (ConcatParam, _CONCAT_FIELDS),
    "dropout_param": (DropoutParam, _DROPOUT_FIELDS),
    "relu_param": (ReLUParam, _RELU_FIELDS),
}


# --- decoding ------------------------------------------------------------------------------------


class _Decoder:
    """A bounds-checked cursor over the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        data = self.data
        for _ in range(_MAX_VARINT_BYTES):
            if pos >= end:
                raise ProtoDecodeError(f"truncated varint at byte {pos}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result & 0xFFFFFFFFFFFFFFFF, pos
            shift += 7
        raise ProtoDecodeError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos}")

    def fields(self, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
        """Yield ``(field, wire_type, value_or_start, end_of_value)`` for each field in [start, end).

        For VARINT the third item is the value; for the others it is where the value starts.
        """
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ProtoDecodeError(f"field number 0 at byte {pos}")
            if wire == VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
                continue
            if wire == LENGTH:
                length, pos = self.varint(pos, end)
                size = length
            elif wire == FIXED32:
                size = 4
            elif wire == FIXED64:
                size = 8
            else:
                raise ProtoDecodeError(f"unsupported wire type {wire} (field {number}) at byte {pos}")
            if size > end - pos:
                raise ProtoDecodeError(
                    f"field {number} declares {size} bytes at byte {pos} but only {end - pos} remain"
                )
            yield number, wire, pos, pos + size
            pos += size

    def string(self, start: int, stop: int) -> str:
        try:
            return bytes(self.view[start:stop]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtoDecodeError(f"invalid UTF-8 text at byte {start}") from exc

    def packed_varints(self, start: int, stop: int) -> list[int]:
        values, pos = [], start
        while pos < stop:
            value, pos = self.varint(pos, stop)
            values.append(value)
        return values

    def fixed(self, start: int, stop: int, dtype: str) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        if (stop - start) % width:
            raise ProtoDecodeError(
                f"packed values of {stop - start} bytes at byte {start}: not a multiple of {width}"
            )
        return np.frombuffer(self.data, dtype=dtype, count=(stop - start) // width, offset=start)

    def unpacked_run(self, pos: int, end: int, tag: int, dtype: str) -> tuple[np.ndarray, int]:
        """Decode consecutive unpacked fixed-width values ``[tag, value]*`` starting at ``pos`` (a tag).

        Legacy encoders wrote repeated floats one field at a time; a run is located with numpy in
        doubling chunks, so the work is proportional to the run, whatever the bytes that follow.
        """
        width = np.dtype(dtype).itemsize
        record = 1 + width  # the tags used here are single bytes
        parts, chunk = [], 256
        while True:
            n = min(chunk, (end - pos) // record)
            if n == 0:
                break
            rows = np.frombuffer(self.data, dtype=np.uint8, count=n * record, offset=pos).reshape(n, record)
            bad = np.flatnonzero(rows[:, 0] != tag)
            good = int(bad[0]) if bad.size else n
            parts.append(rows[:good, 1:])
            pos += good * record
            if good < n:
                break
            chunk *= 2
        if pos < end and self.data[pos] == tag:
            raise ProtoDecodeError(f"truncated value at byte {pos}")
        raw = np.concatenate(parts) if parts else np.zeros((0, width), np.uint8)
        return np.ascontiguousarray(raw).view(dtype).reshape(-1), pos


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _check_wire(number: int, wire: int, expected: tuple[int, ...], what: str, pos: int) -> None:
    if wire not in expected:
        raise ProtoDecodeError(
            f"{what}: field {number} has wire type {wire}, expected {expected} (byte {pos})"
        )


def _parse_params(
    dec: _Decoder, start: int, end: int, cls: type, schema: dict[int, tuple[str, str]]
) -> object:
    values: dict[str, object] = {}
    for number, wire, a, b in dec.fields(start, end):
        if number not in schema:
            continue
        name, kind = schema[number]
        what = f"{cls.__name__}.{name}"
        if kind in ("u", "i", "b", "e"):
            _check_wire(number, wire, (VARINT,), what, a)
            if kind == "b":
                values[name] = bool(a)
            elif kind == "i":
                values[name] = _signed(a, 32)
            else:
                values[name] = a & 0xFFFFFFFF
        elif kind == "f":
            _check_wire(number, wire, (FIXED32,), what, a)
            values[name] = struct.unpack_from("<f", dec.data, a)[0]
        elif kind == "ru":
            _check_wire(number, wire, (VARINT, LENGTH), what, a)
            more = [a] if wire == VARINT else dec.packed_varints(a, b)
            values[name] = (*values.get(name, ()), *(v & 0xFFFFFFFF for v in more))  # type: ignore[misc]
        elif kind == "rf":
            _check_wire(number, wire, (FIXED32, LENGTH), what, a)
            more_f = (
                [struct.unpack_from("<f", dec.data, a)[0]]
                if wire == FIXED32
                else dec.fixed(a, b, "<f4").tolist()
            )
            values[name] = (*values.get(name, ()), *more_f)  # type: ignore[misc]
    return cls(**values)


def _parse_shape(dec: _Decoder, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for number, wire, a, b in dec.fields(start, end):
        if number == _SHAPE_DIM:
            _check_wire(number, wire, (VARINT, LENGTH), "BlobShape.dim", a)
            dims += [_signed(v, 64) for v in ([a] if wire == VARINT else dec.packed_varints(a, b))]
    return dims


def _parse_blob(dec: _Decoder, start: int, end: int) -> CaffeBlob:
    dims: list[int] | None = None
    legacy = {_BLOB_NUM: 0, _BLOB_CHANNELS: 0, _BLOB_HEIGHT: 0, _BLOB_WIDTH: 0}
    has_legacy = False
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = start
    # A manual loop rather than dec.fields(): unpacked float runs advance the cursor by many fields.
    while pos < end:
        key, after_key = dec.varint(pos, end)
        number, wire = key >> 3, key & 7
        if number in (_BLOB_DATA, _BLOB_DOUBLE_DATA) and wire in (FIXED32, FIXED64) and after_key == pos + 1:
            dtype, expected = ("<f4", FIXED32) if number == _BLOB_DATA else ("<f8", FIXED64)
            _check_wire(number, wire, (expected, LENGTH), "BlobProto.data", pos)
            run, pos = dec.unpacked_run(pos, end, dec.data[pos], dtype)
            (floats if number == _BLOB_DATA else doubles).append(run)
            continue
        number, wire, a, b = next(iter(dec.fields(pos, end)))
        pos = b
        if number == _BLOB_SHAPE:
            _check_wire(number, wire, (LENGTH,), "BlobProto.shape", a)
            dims = (dims or []) + _parse_shape(dec, a, b)
        elif number in legacy:
            _check_wire(number, wire, (VARINT,), "BlobProto.num/channels/height/width", a)
            legacy[number] = _signed(a, 32)
            has_legacy = True
        elif number == _BLOB_DATA:
            _check_wire(number, wire, (LENGTH,), "BlobProto.data", a)
            floats.append(dec.fixed(a, b, "<f4"))
        elif number == _BLOB_DOUBLE_DATA:
            _check_wire(number, wire, (LENGTH,), "BlobProto.double_data", a)
            doubles.append(dec.fixed(a, b, "<f8"))
    if floats and doubles:
        raise ProtoDecodeError(f"blob at byte {start} has both float and double data")
    parts = floats or doubles
    data = parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.zeros(0, np.float32))
    if dims is not None:
        shape = tuple(dims)
    elif has_legacy:
        shape = tuple(legacy[k] for k in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH))
    else:
        shape = (int(data.size),)
    if any(d < 0 for d in shape):
        raise ProtoDecodeError(f"blob at byte {start} has a negative dimension {shape}")
    blob = CaffeBlob(shape, data)
    if blob.count != data.size:
        raise ProtoDecodeError(f"blob at byte {start} has shape {shape} but {data.size} values")
    return blob


def _parse_layer(dec: _Decoder, start: int, end: int) -> CaffeLayer:
    layer = CaffeLayer()
    for number, wire, a, b in dec.fields(start, end):
        if number in (_LAYER_NAME, _LAYER_TYPE, _LAYER_BOTTOM, _LAYER_TOP):
            _check_wire(number, wire, (LENGTH,), "LayerParameter name/type/bottom/top", a)
            text = dec.string(a, b)
            if number == _LAYER_NAME:
                layer.name = text
            elif number == _LAYER_TYPE:
                layer.type = text
            else:
                (layer.bottom if number == _LAYER_BOTTOM else layer.top).append(text)
        elif number == _LAYER_BLOBS:
            _check_wire(number, wire, (LENGTH,), "LayerParameter.blobs", a)
            layer.blobs.append(_parse_blob(dec, a, b))
        elif number == _LAYER_LOSS_WEIGHT:
            _check_wire(number, wire, (FIXED32, LENGTH), "LayerParameter.loss_weight", a)
            more = (
                [struct.unpack_from("<f", dec.data, a)[0]]
                if wire == FIXED32
                else dec.fixed(a, b, "<f4").tolist()
            )
            layer.loss_weight = (*layer.loss_weight, *more)
        elif number in _LAYER_PARAMS:
            attr = _LAYER_PARAMS[number]
            _check_wire(number, wire, (LENGTH,), f"LayerParameter.{attr}", a)
            cls, schema = _PARAM_SCHEMAS[attr]
            setattr(layer, attr, _parse_params(dec, a, b, cls, schema))
    return layer


def parse_net(data: bytes) -> CaffeNet:
    """Decode a serialised ``NetParameter``. Raises :class:`ProtoDecodeError` on malformed bytes."""
    dec = _Decoder(bytes(data))
    net = CaffeNet()
    for number, wire, a, b in dec.fields(0, len(dec.data)):
        if number == _NET_NAME:
            _check_wire(number, wire, (LENGTH,), "NetParameter.name", a)
            net.name = dec.string(a, b)
        elif number == _NET_INPUT:
            _check_wire(number, wire, (LENGTH,), "NetParameter.input", a)
            net.input.append(dec.string(a, b))
        elif number == _NET_INPUT_DIM:
            _check_wire(number, wire, (VARINT, LENGTH), "NetParameter.input_dim", a)
            net.input_dim += [_signed(v, 32) for v in ([a] if wire == VARINT else dec.packed_varints(a, b))]
        elif number == _NET_LAYER:
            _check_wire(number, wire, (LENGTH,), "NetParameter.layer", a)
            net.layers.append(_parse_layer(dec, a, b))
        elif number == _NET_V1_LAYERS:
            _check_wire(number, wire, (LENGTH,), "NetParameter.layers", a)
            net.v1_layers += 1
    return net


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    return bool(head) and all(32 <= c < 127 or c in (9, 10, 13) for c in head)


def read_caffemodel(path: str | os.PathLike[str]) -> CaffeNet:
    """Read a ``.caffemodel``; every problem is an :class:`InputError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    text_hint = ""
    if _looks_like_text(data):
        text_hint = (
            "; it is text (a .prototxt network definition?): pass the binary .caffemodel that holds "
            "the weights"
        )
    try:
        net = parse_net(data)
    except ProtoDecodeError as exc:
        raise InputError(f"{path}: not a caffemodel: {exc}{text_hint}") from None
    if net.v1_layers:
        raise InputError(
            f"{path}: the net uses Caffe's V1 'layers' format (before 2015), which is not read here; "
            "upgrade it with Caffe's tools/upgrade_net_proto_binary, or use the authors' released files"
        )
    if not net.layers:
        what = "empty file" if not data else "no layers found"
        raise InputError(f"{path}: not a caffemodel: {what}{text_hint}")
    return net


# --- encoding ------------------------------------------------------------------------------------


class _Encoder:
    def __init__(self) -> None:
        self.out = bytearray()

    def varint(self, value: int) -> None:
        value &= 0xFFFFFFFFFFFFFFFF  # negative int32/int64 -> 10-byte two's complement, as protobuf
        while value >= 0x80:
            self.out.append((value & 0x7F) | 0x80)
            value >>= 7
        self.out.append(value)

    def key(self, number: int, wire: int) -> None:
        self.varint((number << 3) | wire)

    def uint(self, number: int, value: int) -> None:
        self.key(number, VARINT)
        self.varint(int(value))

    def float32(self, number: int, value: float) -> None:
        self.key(number, FIXED32)
        self.out += struct.pack("<f", value)

    def bytes_field(self, number: int, payload: bytes) -> None:
        self.key(number, LENGTH)
        self.varint(len(payload))
        self.out += payload

    def string(self, number: int, text: str) -> None:
        self.bytes_field(number, text.encode("utf-8"))

    def packed_varints(self, number: int, values: Iterable[int]) -> None:
        inner = _Encoder()
        for v in values:
            inner.varint(int(v))
        self.bytes_field(number, bytes(inner.out))

    def floats(self, number: int, values: np.ndarray, dtype: str, packed: bool) -> None:
        array = np.ascontiguousarray(values, dtype=dtype).reshape(-1)
        if packed:
            self.bytes_field(number, array.tobytes())
            return
        wire = FIXED32 if np.dtype(dtype).itemsize == 4 else FIXED64
        if number >= 16:
            raise ValueError(f"unpacked encoding is written for field numbers < 16, got {number}")
        records = np.empty((array.size, 1 + array.itemsize), np.uint8)
        records[:, 0] = (number << 3) | wire  # single-byte tag: field numbers < 16
        records[:, 1:] = array.view(np.uint8).reshape(array.size, array.itemsize)
        self.out += records.tobytes()


def _encode_params(params: object, schema: dict[int, tuple[str, str]], packed: bool) -> bytes:
    # Caffe's own files write these repeated scalars unpacked (caffe.proto does not declare them packed)
    enc = _Encoder()
    for number, (name, kind) in schema.items():
        value = getattr(params, name)
        if value is None or value == ():
            continue
        if kind in ("u", "i", "b", "e"):
            enc.uint(number, int(value))
        elif kind == "f":
            enc.float32(number, float(value))
        elif kind == "ru":
            if packed:
                enc.packed_varints(number, value)
            else:
                for v in value:
                    enc.uint(number, int(v))
        elif kind == "rf":
            enc.floats(number, np.asarray(value), "<f4", packed)
    return bytes(enc.out)


def _encode_blob(blob: CaffeBlob, packed: bool, legacy_shape: bool) -> bytes:
    enc = _Encoder()
    if legacy_shape:
        dims = (1,) * (4 - len(blob.shape)) + tuple(blob.shape)
        if len(dims) != 4:
            raise ValueError(f"legacy blob shapes are 4-D, got {blob.shape}")
        for number, dim in zip((_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH), dims, strict=True):
            enc.uint(number, dim)
    else:
        shape = _Encoder()
        shape.packed_varints(_SHAPE_DIM, blob.shape)
        enc.bytes_field(_BLOB_SHAPE, bytes(shape.out))
    if blob.data.dtype == np.float64:
        enc.floats(_BLOB_DOUBLE_DATA, blob.data, "<f8", packed)
    else:
        enc.floats(_BLOB_DATA, blob.data, "<f4", packed)
    return bytes(enc.out)


def _encode_layer(layer: CaffeLayer, packed: bool, packed_params: bool, legacy_shape: bool) -> bytes:
    enc = _Encoder()
    enc.string(_LAYER_NAME, layer.name)
    enc.string(_LAYER_TYPE, layer.type)
    for name in layer.bottom:
        enc.string(_LAYER_BOTTOM, name)
    for name in layer.top:
        enc.string(_LAYER_TOP, name)
    for weight in layer.loss_weight:
        enc.float32(_LAYER_LOSS_WEIGHT, weight)
    for blob in layer.blobs:
        enc.bytes_field(_LAYER_BLOBS, _encode_blob(blob, packed, legacy_shape))
    for number, attr in _LAYER_PARAMS.items():
        params = getattr(layer, attr)
        if params is not None:
            enc.bytes_field(number, _encode_params(params, _PARAM_SCHEMAS[attr][1], packed_params))
    return bytes(enc.out)


def encode_net(
    net: CaffeNet, *, packed: bool = True, packed_params: bool = False, legacy_shape: bool = False
) -> bytes:
    """Serialise ``net`` as Caffe does: packed blob values and dims, unpacked layer parameters.

    ``packed=False`` writes blob values one field each and ``legacy_shape=True`` the 4-D
    ``num/channels/height/width`` fields, as old Caffe versions did; ``packed_params=True`` packs
    the repeated layer parameters (valid protobuf that Caffe never writes). All are read back.
    """
    enc = _Encoder()
    if net.name:
        enc.string(_NET_NAME, net.name)
    for name in net.input:
        enc.string(_NET_INPUT, name)
    for dim in net.input_dim:
        enc.uint(_NET_INPUT_DIM, dim)
    for layer in net.layers:
        enc.bytes_field(_NET_LAYER, _encode_layer(layer, packed, packed_params, legacy_shape))
    return bytes(enc.out)


def write_caffemodel(
    net: CaffeNet,
    path: str | os.PathLike[str],
    *,
    packed: bool = True,
    packed_params: bool = False,
    legacy_shape: bool = False,
) -> Path:
    """Write ``net`` to ``path`` (see :func:`encode_net`)."""
    path = Path(path)
    path.write_bytes(encode_net(net, packed=packed, packed_params=packed_params, legacy_shape=legacy_shape))
    return path
