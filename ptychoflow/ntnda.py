"""NTNDArray helpers: build and read frames exactly as areaDetector's NDPluginPva does.

p4p's ``NTNDArray().wrap`` leaves ``uniqueId`` at 0 and no ``dataTimeStamp``; a
detector sets both, and every consumer downstream (edge, stitcher, clients)
relies on them to tell frames apart and to measure latency. These helpers keep
that in one place. Frames compressed by areaDetector's NDCodec plugin are built
and read here too (:mod:`ptychoflow.codec`): a reader gets the image back in
its original data type, whichever codec the detector chose.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from p4p import Value
from p4p.nt import NTNDArray

from ptychoflow.codec import CodecError, decode, dtype_of, encode
from ptychoflow.codec import codec as find_codec

_TYPE = NTNDArray.buildType()
_CODES: dict[str, str] = dict(NTNDArray._code2u)  # numpy dtype char -> union member

SUPPORTED_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32,
                    np.uint64, np.int64, np.float32, np.float64)

# The most each NDCodec format can expand: LZ4 (raw, HDF5-framed or bitshuffled) about
# 255:1, deflate about 1032:1, a blosc chunk of zstd blocks about 18,000:1 (measured with
# c-blosc 1.21 at NDCodec's automatic block size; its other compressors far less). A
# compressed frame whose dimensions declare more than that many times its bytes, or
# more than any detector's frame, is corrupt: refused before a decoder allocates what
# it declares, as some do first thing (a few bytes must not make the edge ask for
# gigabytes).
MAX_EXPANSION: dict[str, int] = {"lz4": 300, "lz4hdf5": 300, "bslz4": 300, "zlib": 1100,
                                 "blosc": 1 << 16}
MAX_FRAME_BYTES = 1 << 30


def _split_time(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec, int(round((t - sec) * 1e9)) % 1_000_000_000


def make_frame(array: np.ndarray, unique_id: int, timestamp: float | None = None,
               attributes: dict[str, Any] | None = None, codec: str = "") -> Value:
    """Wrap a 2-D array as an NTNDArray value with its id, time stamp and attributes.

    ``timestamp`` is POSIX seconds (default: now) and goes to both
    ``dataTimeStamp`` (when the data were taken) and ``timeStamp``. With
    ``codec`` (one of :data:`ptychoflow.codec.NAMES`) the image is compressed
    as NDCodec sends it: bytes in ``ubyteValue``, ``codec.name``, the data type
    in ``codec.parameters``, their length in ``compressedSize``.
    """
    a = np.ascontiguousarray(array)
    if a.ndim != 2:
        raise ValueError(f"a frame is a 2-D image, got shape {a.shape}")
    try:
        code = _CODES[a.dtype.char]
    except KeyError:
        raise ValueError(f"dtype {a.dtype} cannot be sent as an NTNDArray") from None
    sec, nsec = _split_time(time.time() if timestamp is None else timestamp)
    stamp = {"secondsPastEpoch": sec, "nanoseconds": nsec}
    attrs = [{"name": "ColorMode", "value": 0}]
    if attributes:
        attrs += [{"name": k, "value": v} for k, v in attributes.items()]
    # codec.name "" said outright, as NDPluginPva does: a SharedPV post only changes the
    # fields a value sets, so a frame that left it out would keep the previous frame's codec
    fields: dict[str, Any] = {"value": (code, a.ravel()), "compressedSize": a.nbytes,
                              "codec": {"name": ""}}
    if codec:
        data, dtype_code = encode(a, codec)
        # NDPluginPva's Int32 in the variant: ADCore's own reader asks for exactly that type
        fields = {"value": ("ubyteValue", np.frombuffer(data, np.uint8)),
                  "compressedSize": len(data),
                  "codec": {"name": codec, "parameters": ("i", dtype_code)}}
    # Built directly rather than through NTNDArray.wrap: this is the detector's
    # per-frame hot path, and wrap's generic bookkeeping costs as much as the post.
    return Value(_TYPE, {
        **fields,
        "uncompressedSize": a.nbytes,
        "uniqueId": int(unique_id) & 0x7FFFFFFF,
        "dataTimeStamp": stamp,
        "timeStamp": stamp,
        "attribute": attrs,
        "dimension": [{"size": n, "offset": 0, "fullSize": n, "binning": 1, "reverse": False}
                      for n in (a.shape[1], a.shape[0])],
    })


def stamp(value: Value, timestamp: float | None = None) -> Value:
    """Set ``dataTimeStamp`` and ``timeStamp`` of a prepared frame to ``timestamp`` (now)."""
    sec, nsec = _split_time(time.time() if timestamp is None else timestamp)
    value["dataTimeStamp.secondsPastEpoch"] = sec
    value["dataTimeStamp.nanoseconds"] = nsec
    value["timeStamp.secondsPastEpoch"] = sec
    value["timeStamp.nanoseconds"] = nsec
    return value


class ImageStream:
    """NTNDArray values for a stream of images, refilled instead of rebuilt for each one.

    The edge posts every prediction, so building a fresh value (``make_frame``,
    about 9 us) is a real share of its per-frame work. pvxs's ``SharedPV.post``
    sends each subscriber a copy of the value it is given, so one value can be
    refilled with the next image's data, ``uniqueId`` and time stamps (about
    3 us) and posted again. Images with attributes, or of a new shape or type,
    get a fresh value. The value returned is reused by the next call: post it
    before calling again, from one thread.
    """

    def __init__(self) -> None:
        self._value: Value | None = None
        self._key: tuple[tuple[int, ...], str] | None = None

    def value(self, array: np.ndarray, unique_id: int, timestamp: float | None = None,
              attributes: dict[str, Any] | None = None) -> Value:
        """The image as an NTNDArray value, as :func:`make_frame` builds it."""
        a = np.ascontiguousarray(array)
        key = (a.shape, a.dtype.char)
        if attributes or self._value is None or key != self._key:
            v = make_frame(a, unique_id, timestamp, attributes)
            if not attributes:
                self._value, self._key = v, key
            return v
        v = self._value
        v["value"] = (_CODES[a.dtype.char], a.ravel())
        v["uniqueId"] = int(unique_id) & 0x7FFFFFFF
        return stamp(v, timestamp)


@dataclass
class Frame:
    """A received frame: the image in numpy form plus what identifies it."""

    array: np.ndarray
    unique_id: int
    timestamp: float
    attributes: dict[str, Any]


def attributes_of(value: Value) -> dict[str, Any]:
    """The NDAttributes of an NTNDArray value as a plain dict.

    A string that is not UTF-8 (an NDAttribute read from a device in Latin-1,
    say) is kept with the undecodable bytes replaced: one odd attribute must not
    cost the frame its image.
    """
    out: dict[str, Any] = {}
    for elem in value.get("attribute", []) or []:
        out[_text(elem, "name")] = _text(elem, "value")
    return out


def _text(elem: Value, field: str) -> Any:
    try:
        return elem[field]
    except UnicodeDecodeError as exc:  # p4p decodes strings as UTF-8
        return bytes(exc.object).decode("utf-8", "replace")


def timestamp_of(value: Value) -> float:
    """``dataTimeStamp`` as POSIX seconds."""
    return float(value["dataTimeStamp.secondsPastEpoch"]) + \
        float(value["dataTimeStamp.nanoseconds"]) * 1e-9


def placeholder() -> Value:
    """The value a detector's PV holds before its first frame: no data, ``uniqueId`` 0.

    areaDetector's NDPluginPva and pvapy's servers start with such an empty
    NTNDArray, and a client that subscribes before the first acquisition gets it.
    """
    return Value(_TYPE, {})


def is_placeholder(value: Value) -> bool:
    """True for a server's "no image yet" value (see :func:`placeholder`), not a frame."""
    try:
        if int(value["uniqueId"]) != 0:
            return False
        raw = value["value"]
        return raw is None or np.asarray(raw).size == 0
    except (LookupError, TypeError, ValueError, ArithmeticError):
        return False  # not even shaped like an NTNDArray: not a placeholder either


def read_frame(value: Value) -> Frame:
    """Decode an NTNDArray value (as given to a monitor callback) into a :class:`Frame`.

    The image keeps the detector's dtype; the shape is rebuilt from the
    ``dimension`` field (fastest-varying first, as areaDetector sends it). A
    frame compressed by NDCodec is decompressed to its original data type.
    Raises ``ValueError`` for values that are not a 2-D image, whatever is wrong
    with them (a missing or mistyped field included: a monitor may be pointed at
    any PV), and its subclass :class:`~ptychoflow.codec.CodecError` for
    compressed ones that do not decode.
    """
    try:
        return _read_frame(value)
    except (LookupError, TypeError, AttributeError, ArithmeticError) as exc:
        raise ValueError(f"not an NTNDArray image as areaDetector sends it ({type(exc).__name__}"
                         f": {exc}); check that the input PV is the detector's NDPluginPva "
                         "image") from exc


def _read_frame(value: Value) -> Frame:
    raw = value["value"]
    if raw is None:
        raise ValueError("NTNDArray carries no data (empty union)")
    dims = [int(d["size"]) for d in value["dimension"]]
    if len(dims) != 2:
        raise ValueError(f"expected a 2-D image, got {len(dims)} dimension(s) {dims}")
    if min(dims) < 0:
        raise ValueError(f"dimension sizes {dims} are negative; the sender fills the "
                         "NTNDArray's dimension field wrongly")
    shape = (dims[1], dims[0])
    try:
        codec = value["codec.name"]
    except KeyError:  # not a full NTNDArray: nothing says it is compressed
        codec = ""
    if codec:
        find_codec(codec)  # an unknown codec is named as such, whatever else is wrong
        payload = np.asarray(raw)
        compressed = int(value["compressedSize"])
        if compressed < 0:
            raise CodecError(f"codec {codec!r}: compressedSize is {compressed} bytes; the "
                             "sender fills the NTNDArray's sizes wrongly")
        declared = shape[0] * shape[1] * dtype_of(value["codec.parameters"], codec).itemsize
        most = min(MAX_EXPANSION[codec] * max(payload.nbytes, 1), MAX_FRAME_BYTES)
        if declared > most:
            raise CodecError(f"codec {codec!r}: dimensions {dims} declare {declared} bytes, "
                             f"more than the {most} that {payload.nbytes} compressed bytes "
                             f"can hold (at most {MAX_EXPANSION[codec]} times as many, and "
                             f"{MAX_FRAME_BYTES} in all); the frame's dimension or codec "
                             "fields are corrupt")
        image = decode(payload, codec, value["codec.parameters"],
                       int(value["uncompressedSize"]), shape, compressed)
        return Frame(image, int(value["uniqueId"]), timestamp_of(value), attributes_of(value))
    flat = np.asarray(raw)
    if flat.size != shape[0] * shape[1]:
        raise ValueError(f"data has {flat.size} elements, dimensions say {shape}")
    return Frame(flat.reshape(shape), int(value["uniqueId"]), timestamp_of(value),
                 attributes_of(value))
