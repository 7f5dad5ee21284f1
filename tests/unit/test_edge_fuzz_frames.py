"""Malformed NTNDArray frames: ``read_frame`` decodes a sane 2-D image or says why it cannot.

The edge decodes every frame a source sends in its monitor callback, so
whatever arrives there, from a broken detector plugin, a misconfigured
NDCodec, or a PV that is not a detector image at all, must end either as an
image whose shape is what its ``dimension`` field says, or as a ``ValueError``
that the edge counts as a bad frame. Nothing else may escape (an exception
out of the callback loses the frame without a count), and a few bytes that
declare a huge image must never make the decoder allocate what they declare.

The strategies are shared with the system test that sends such frames to a
running edge (``tests/system/edge/test_edge_fuzz.py``).
"""

from __future__ import annotations

import copy
import math
import queue
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from p4p import Type, Value
from p4p.nt import NTScalar

from ptychoflow.codec import NAMES, CodecError, dtype_of
from ptychoflow.ntnda import (
    _CODES,
    _TYPE,
    SUPPORTED_DTYPES,
    is_placeholder,
    make_frame,
    read_frame,
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MEMBERS = sorted(set(_CODES.values()) | {"booleanValue"})  # the value union's members
MEMBER_DTYPE = {m: np.dtype(c) for c, m in _CODES.items()} | {"booleanValue": np.dtype(bool)}
ALLOCATION_LIMIT = 8 << 20  # bytes read_frame may allocate for frames of a few kB

int32s = st.one_of(st.integers(*INT32),
                   st.sampled_from([0, 1, -1, 2, 10**9, -(10**9), *INT32]))
int64s = st.one_of(st.integers(*INT64),
                   st.sampled_from([0, 1, -1, 10**9, 10**18, 2**62, *INT64]))
texts = st.one_of(st.text(max_size=20), st.sampled_from(["", "\x00", "\x00lz4", "é☃\U0001f4a9",
                                                         "lz4 ", "LZ4", "jpeg", "none"]),
                  st.just("x" * 100_000))
# what a variant field (an attribute's value, codec.parameters) may hold over pvAccess
variants = st.one_of(st.none(), st.booleans(), int32s, int64s,
                     st.floats(allow_nan=True, allow_infinity=True), texts,
                     st.lists(st.text(max_size=5), max_size=3),
                     arrays(np.float64, st.integers(0, 4)), st.binary(max_size=8))


def _data(member: str, n: int) -> st.SearchStrategy[np.ndarray]:
    dt = MEMBER_DTYPE[member]
    if dt.kind != "f":
        return arrays(dt, n)
    floats = (st.floats(allow_nan=True, allow_infinity=True, width=32) if dt.itemsize == 4
              else st.floats(allow_nan=True, allow_infinity=True))
    return arrays(dt, n, elements=floats)


# ---- mutations: each turns a frame's fields into a malformed version of them ----------------
Mutation = Callable[[st.DrawFn, dict[str, Any]], None]


def _wrong_member(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """The data as another member of the union (a bool array, say), of any length."""
    member = draw(st.sampled_from(MEMBERS))
    f["value"] = (member, draw(_data(member, draw(st.integers(0, 300)))))


def _dimensions(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """Dimension sizes that disagree with the data: none, one, three, huge, negative, zero."""
    sizes = st.one_of(st.integers(0, 64), int32s,
                      st.sampled_from([1000, 4096, 10**5, 46341, 10**9]))
    count = st.one_of(st.lists(sizes, min_size=2, max_size=2), st.lists(sizes, max_size=4))
    f["dimension"] = [{"size": s, "offset": draw(int32s), "fullSize": draw(int32s),
                       "binning": draw(int32s), "reverse": draw(st.booleans())}
                      for s in draw(count)]


def _empty(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """No data at all: the union left empty."""
    f.pop("value", None)


def _codec(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """A codec name, known or garbage, over random bytes or corrupted compressed ones."""
    name = draw(st.one_of(st.sampled_from([*NAMES, "jpeg"]), texts))
    payload = draw(st.binary(max_size=600))
    f["value"] = ("ubyteValue", np.frombuffer(payload, np.uint8))
    f["codec"] = {"name": name, "parameters": draw(st.one_of(st.integers(0, 11), variants))}
    f["compressedSize"] = draw(st.one_of(st.just(len(payload)), int64s))
    f["uncompressedSize"] = draw(st.one_of(st.just(0), int64s))  # 0: "not given"


def _corrupt_compressed(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """A real NDCodec frame whose bytes were flipped, cut short or lengthened."""
    if not f.get("codec", {}).get("name") or "value" not in f:
        return
    data = bytearray(np.ascontiguousarray(f["value"][1]).tobytes())
    for _ in range(draw(st.integers(1, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data) + 8))
    data = data[:cut] + bytes(max(0, cut - len(data)))
    f["value"] = ("ubyteValue", np.frombuffer(bytes(data), np.uint8))


def _declare_huge(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """Dimensions declaring a huge image (up to 10^9 a side), uncompressedSize agreeing or 0."""
    big = st.one_of(st.integers(1, INT32[1]), st.sampled_from([4096, 10**5, 46341, 10**9]))
    w, h = draw(big), draw(big)
    f["dimension"] = [{"size": w}, {"size": h}]
    try:
        itemsize = dtype_of(f["codec"]["parameters"]).itemsize
    except (KeyError, CodecError):
        itemsize = 1
    f["uncompressedSize"] = draw(st.sampled_from([0, min(w * h * itemsize, INT64[1])]))


def _sizes(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """uncompressedSize and compressedSize of any value: huge, negative, zero."""
    f["uncompressedSize"] = draw(int64s)
    f["compressedSize"] = draw(int64s)


def _attributes(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """Attributes of the wrong type: PositionX as a string, NaN, arrays, names garbled."""
    names = st.one_of(st.sampled_from(["PositionX", "PositionY", "ScanId", "ColorMode"]), texts)
    f["attribute"] = [{"name": draw(names), "value": draw(variants)}
                      for _ in range(draw(st.integers(0, 4)))]


def _unique_id(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """uniqueId negative, zero or huge."""
    f["uniqueId"] = draw(int32s)


def _time_stamp(draw: st.DrawFn, f: dict[str, Any]) -> None:
    """dataTimeStamp of any value."""
    f["dataTimeStamp"] = {"secondsPastEpoch": draw(int64s), "nanoseconds": draw(int32s)}


CORRUPTING: tuple[Mutation, ...] = (_wrong_member, _dimensions, _empty, _codec,
                                    _corrupt_compressed, _declare_huge, _sizes)
COSMETIC: tuple[Mutation, ...] = (_attributes, _unique_id, _time_stamp)


def _member(value: Value) -> str:
    raw = value["value"]
    return _CODES[np.asarray(raw).dtype.char] if np.asarray(raw).dtype != bool else "booleanValue"


@st.composite
def good_fields(draw: st.DrawFn, shape: st.SearchStrategy[tuple[int, int]] | None = None,
                dtype: st.SearchStrategy[Any] | None = None,
                codecs: st.SearchStrategy[str] | None = None) -> dict[str, Any]:
    """The fields of a well-formed frame (compressed or not) of a small image."""
    dt = np.dtype(draw(st.sampled_from(SUPPORTED_DTYPES) if dtype is None else dtype))
    h, w = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)) if shape is None else shape)
    a = draw(arrays(dt, (h, w)))
    codec = draw(st.sampled_from(["", *NAMES]) if codecs is None else codecs)
    v = make_frame(a, 1, 1.7e9, {"PositionX": 0.0, "PositionY": 0.0}, codec)
    f: dict[str, Any] = v.todict()
    f["value"] = (_member(v), np.asarray(v["value"]))
    return f


@st.composite
def malformed_fields(draw: st.DrawFn, corrupt: bool = False,
                     base: st.SearchStrategy[dict[str, Any]] | None = None,
                     mutations: st.SearchStrategy[list[Mutation]] | None = None
                     ) -> dict[str, Any]:
    """A frame's fields after a few mutations; with ``corrupt``, at least one that breaks it."""
    f = draw(good_fields() if base is None else base)
    chosen = draw(st.lists(st.sampled_from(CORRUPTING + COSMETIC), max_size=3)
                  if mutations is None else mutations)
    if corrupt:
        chosen.append(draw(st.sampled_from(CORRUPTING)))
    for mutate in chosen:
        mutate(draw, f)
    return f


def ntndarray(fields: dict[str, Any]) -> Value:
    """The fields as an NTNDArray value, every field marked changed: posted, it replaces the
    whole value as a detector's frame does (an unmarked, emptied ``value`` would not)."""
    v = Value(_TYPE, fields)
    v.mark()
    return v


# ---- values of other structures: a look-alike, or a PV that is no image at all -------------
def _spec(drop: frozenset[str], retype: dict[str, Any]) -> Type:
    out = []
    for name, code in _TYPE.aspy()[2]:
        if name in drop:
            continue
        out.append((name, retype.get(name, code)))
    return Type(out, id="epics:nt/NTNDArray:1.0")


@st.composite
def other_structures(draw: st.DrawFn) -> Value:
    """NTNDArray look-alikes with fields missing or of the wrong type, and other NT types."""
    kind = draw(st.sampled_from(["lookalike", "ntscalar", "ntscalar_array", "string_union"]))
    if kind == "ntscalar":
        return NTScalar("d").wrap(draw(st.floats()))
    if kind == "ntscalar_array":
        return NTScalar("as").wrap(draw(st.lists(st.text(max_size=4), max_size=4)))
    n = draw(st.integers(0, 6))
    dims: list[dict[str, Any]] = [{"size": draw(st.integers(-2, 4))}
                                  for _ in range(draw(st.integers(0, 3)))]
    if kind == "string_union":  # the union grown a string-array member
        members = [*_TYPE.aspy()[2][0][1][2], ("stringValue", "as")]
        t = _spec(frozenset(), {"value": ("U", None, members)})
        return Value(t, {"value": ("stringValue", draw(st.lists(st.text(max_size=3),
                                                                min_size=n, max_size=n))),
                         "dimension": dims})
    drop = frozenset(draw(st.lists(st.sampled_from(
        ["value", "codec", "compressedSize", "uncompressedSize", "uniqueId", "dataTimeStamp",
         "attribute", "dimension"]), max_size=3)))
    retype: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    value_kind = draw(st.sampled_from(["union", "variant", "double", "string"]))
    if value_kind == "variant":
        retype["value"] = "v"
        fields["value"] = draw(st.one_of(variants, st.just(np.ones(n, np.float32))))
    elif value_kind == "double":
        retype["value"] = "d"
        fields["value"] = draw(st.floats())
    elif value_kind == "string":
        retype["value"] = "s"
        fields["value"] = draw(texts)
    else:
        fields["value"] = ("floatValue", np.ones(n, np.float32))
    if draw(st.booleans()):
        retype["uniqueId"] = "d"
        fields["uniqueId"] = draw(st.floats(allow_nan=True, allow_infinity=True))
    else:
        fields["uniqueId"] = draw(int32s)
    if draw(st.booleans()):
        code = draw(st.sampled_from(["s", "d"]))
        retype["dimension"] = ("aS", None, [("size", code)])
        size = (st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 4))
                if code == "d" else texts)
        dims = [{"size": draw(size)} for _ in range(len(dims))]
    fields["dimension"] = dims
    if draw(st.booleans()):
        retype["codec"] = ("S", None, [("name", "i")])
        fields["codec"] = {"name": draw(int32s)}
    t = _spec(drop, retype)
    names = {name for name, _ in t.aspy()[2]}
    return Value(t, {k: v for k, v in fields.items() if k in names})


# ---- the property -------------------------------------------------------------------------
def _dims(value: Value) -> list[int]:
    return [int(d["size"]) for d in value["dimension"]]


def check_decodes_or_refuses(value: Value) -> str:
    """The property: a sane 2-D frame or ValueError, with no big allocation; which it was."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        frame = read_frame(value)
    except ValueError:
        outcome = "refused"
    else:
        a = frame.array
        assert a.ndim == 2
        assert list(a.shape) == _dims(value)[::-1]  # dimension: fastest-varying first
        assert isinstance(frame.unique_id, int) and isinstance(frame.timestamp, float)
        assert isinstance(frame.attributes, dict)
        outcome = "decoded"
    grown = tracemalloc.get_traced_memory()[1] - before
    assert grown < ALLOCATION_LIMIT, f"read_frame allocated {grown} bytes"
    return outcome


def _aim_at_big_declarations(fields: dict[str, Any]) -> None:
    """Steer the search to compressed frames that declare big images (the allocation risk)."""
    if fields.get("codec", {}).get("name") and len(fields.get("dimension", [])) == 2:
        declared = math.prod(max(1, d["size"]) for d in fields["dimension"])
        target(math.log2(declared), label="log2 of the pixels a compressed frame declares")


@pytest.fixture(scope="module")
def traced() -> Any:
    tracemalloc.start()
    yield
    tracemalloc.stop()


FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_malformed_ntndarray_decodes_to_its_dimensions_or_is_refused(traced: Any) -> None:
    seen = {"decoded": 0, "refused": 0}

    @FUZZ
    @given(malformed_fields())
    def fuzz(fields: dict[str, Any]) -> None:
        seen[check_decodes_or_refuses(ntndarray(fields))] += 1
        _aim_at_big_declarations(fields)

    fuzz()
    assert min(seen.values()) > 30, seen  # both outcomes exercised


def test_frames_broken_in_their_structure_are_mostly_refused(traced: Any) -> None:
    """With a breaking mutation too, a frame decodes to its dimensions or is refused.

    Not every breaking mutation breaks a frame (corrupting compressed bytes of a
    frame that is not compressed changes nothing, new dimensions may match the
    data), so the property is checked, and that most are refused.
    """
    seen = {"decoded": 0, "refused": 0}

    @FUZZ
    @given(malformed_fields(corrupt=True))
    def fuzz(fields: dict[str, Any]) -> None:
        seen[check_decodes_or_refuses(ntndarray(fields))] += 1
        _aim_at_big_declarations(fields)

    fuzz()
    assert seen["refused"] > 2 * seen["decoded"], seen


def test_compressed_frames_declaring_huge_images_never_allocate_what_they_declare(
        traced: Any) -> None:
    """Every codec, a few bytes or a few kB declaring up to 10^9 x 10^9 pixels: refused, cheaply.

    The decoders allocate the size a frame declares before they find its data
    short; read_frame must refuse a declaration its bytes cannot hold first.
    """
    seen = {"decoded": 0, "refused": 0}

    @settings(FUZZ, max_examples=150)
    @given(malformed_fields(base=good_fields(codecs=st.sampled_from(NAMES)),
                            mutations=st.just([_declare_huge])))
    def fuzz(fields: dict[str, Any]) -> None:
        seen[check_decodes_or_refuses(ntndarray(fields))] += 1

    fuzz()
    assert seen["refused"] > 100, seen


def test_values_of_other_structures_are_refused_not_crashed_on(traced: Any) -> None:
    seen = {"decoded": 0, "refused": 0}

    @settings(FUZZ, max_examples=250)
    @given(other_structures())
    def fuzz(value: Value) -> None:
        try:
            dims = _dims(value)
        except (KeyError, TypeError, ValueError, OverflowError):
            dims = None
        if dims is None:  # no readable dimension: it can only be refused
            with pytest.raises(ValueError):
                read_frame(value)
            seen["refused"] += 1
        else:
            seen[check_decodes_or_refuses(value)] += 1
        assert is_placeholder(value) in (True, False)  # never raises either

    fuzz()
    assert seen["refused"] > 100, seen


# ---- the cases the fuzzing found, kept as plain examples ----------------------------------
def _lz4_frame(dims: tuple[int, int]) -> Value:
    v = make_frame(np.ones((4, 4), np.uint16), 3, codec="lz4")
    v["dimension"] = [{"size": dims[0]}, {"size": dims[1]}]
    v["uncompressedSize"] = 0  # "not given": nothing but the dimensions says how big it is
    return v


@pytest.mark.parametrize("dims", [(100_000, 10_000), (10**9, 10**4), (10**9, 10**9)])
def test_a_few_compressed_bytes_declaring_gigabytes_are_refused_before_allocating(
        traced: Any, dims: tuple[int, int]) -> None:
    # lz4 allocated the 2 GB the first declares before finding the data short, and the
    # others overflowed its size argument (OverflowError, which no caller expected)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    with pytest.raises(CodecError, match=r"more than the \d+ that \d+ compressed bytes"):
        read_frame(_lz4_frame(dims))
    assert tracemalloc.get_traced_memory()[1] - before < ALLOCATION_LIMIT


@pytest.mark.parametrize("compressor", ["zstd", "zlib", "lz4"])
def test_the_best_compressed_frames_ndcodec_makes_still_decode(compressor: str) -> None:
    """The expansion limits are above what real compressors reach: a blank 2048x1024 frame."""
    import blosc

    a = np.zeros((1024, 2048), np.uint16)
    v = make_frame(a, 1, codec="blosc")
    data = blosc.compress(a, typesize=2, clevel=9, shuffle=blosc.BITSHUFFLE, cname=compressor)
    v["value"] = ("ubyteValue", np.frombuffer(data, np.uint8))
    v["compressedSize"] = len(data)
    if compressor == "zstd":
        assert a.nbytes > 10_000 * len(data)  # what a dark frame of a Blosc/Zstd NDCodec is
    np.testing.assert_array_equal(read_frame(v).array, a)
    for name in ("zlib", "lz4", "bslz4", "lz4hdf5"):
        np.testing.assert_array_equal(read_frame(make_frame(a, 1, codec=name)).array, a)


def test_a_frame_with_negative_dimension_sizes_is_refused_by_name() -> None:
    v = make_frame(np.ones((4, 4), np.uint16), 3)
    v["dimension"] = [{"size": -4}, {"size": -4}]  # their product matches the data
    with pytest.raises(ValueError, match="negative"):
        read_frame(v)
    v = make_frame(np.ones((4, 4), np.uint16), 3, codec="zlib")
    v["dimension"] = [{"size": -4}, {"size": 4}]
    with pytest.raises(ValueError, match="negative"):
        read_frame(v)


def test_a_negative_compressed_size_is_refused_not_taken_as_a_slice() -> None:
    v = make_frame(np.arange(16, dtype=np.uint16).reshape(4, 4), 3, codec="zlib")
    v["compressedSize"] = -5
    with pytest.raises(CodecError, match="compressedSize is -5"):
        read_frame(v)


def test_a_pv_that_is_no_image_is_refused_as_not_an_ntndarray() -> None:
    # an operator's Edge:Input put naming a counter PV: its updates are bad frames, and
    # is_placeholder (asked about every value that does not decode) must not raise either
    for value in (NTScalar("d").wrap(1.5), NTScalar("as").wrap(["a", "b"])):
        with pytest.raises(ValueError, match="not an NTNDArray image"):
            read_frame(value)
        assert not is_placeholder(value)


def test_an_attribute_that_is_not_utf8_costs_the_frame_nothing_but_that_attribute() -> None:
    # found by the fuzzing: p4p's UnicodeDecodeError (a ValueError) made the whole frame
    # bad, so a detector with one Latin-1 NDAttribute ("\xb5m") lost every image
    a = np.arange(6, dtype=np.uint16).reshape(2, 3)
    frame = read_frame(make_frame(a, 4, attributes={"Units": b"\xb5m", "PositionX": 1e-6}))
    np.testing.assert_array_equal(frame.array, a)
    assert frame.attributes["Units"] == "\ufffdm" and frame.attributes["PositionX"] == 1e-6


def test_an_uncompressed_frame_after_a_compressed_one_on_one_pv_decodes() -> None:
    # found by the system fuzzing: make_frame left codec.name out of uncompressed frames, and
    # a SharedPV post changes only the fields a value sets, so a client got the image with
    # the codec of the compressed frame before it and refused it as corrupt
    from p4p.client.thread import Context
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    pv = SharedPV(initial=make_frame(np.zeros((2, 2), np.uint16), 0, 0.0))
    got: queue.Queue[Any] = queue.Queue()
    images = [np.full((4, 4), k, np.uint16) for k in range(1, 5)]
    with Server(providers=[{"T:Image": pv}], isolate=True) as server, \
            Context("pva", conf=server.conf(), useenv=False, nt=False) as ctx:
        sub = ctx.monitor("T:Image", got.put, request="record[queueSize=10]")
        got.get(timeout=10)  # the current value
        for k, (img, codec) in enumerate(zip(images, ["zlib", "", "lz4", ""], strict=True), 1):
            pv.post(make_frame(img, k, 1.7e9 + k, codec=codec))
        for k, img in enumerate(images, 1):
            frame = read_frame(got.get(timeout=10))
            assert frame.unique_id == k
            np.testing.assert_array_equal(frame.array, img)
        sub.close()


@st.composite
def _good_and_cosmetic(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    good = draw(good_fields())
    changed = copy.deepcopy(good)
    draw(st.sampled_from(COSMETIC))(draw, changed)
    return good, changed


def test_the_strategies_make_what_they_say() -> None:
    """The generators themselves: a good frame decodes, and still does after a cosmetic change."""
    @settings(max_examples=50, deadline=None, database=None)
    @given(_good_and_cosmetic())
    def check(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
        good, changed = pair
        frame = read_frame(ntndarray(good))
        assert frame.array.size == math.prod(frame.array.shape) > 0
        assert read_frame(ntndarray(changed)).array.shape == frame.array.shape

    check()
