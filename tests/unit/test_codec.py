"""Frames compressed by areaDetector's NDCodec decode to the detector's image, or are refused
with a message that names the codec and the fix.

The formats are checked against the reference libraries the way other clients
read them (pvapy's AdImageUtility, PyDM's pva_codec): plain ``lz4.block`` for
lz4, ``bitshuffle.decompress_lz4`` with no header for bslz4, ``blosc.decompress``
for blosc.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest
from p4p import Type, Value

from ptychoflow import codec
from ptychoflow.codec import NAMES, CodecError, decode, encode
from ptychoflow.ntnda import make_frame, read_frame

# what the simulator sends (uint16, int32; replayed files: others) and what detectors send
DTYPES = [np.uint8, np.uint16, np.uint32, np.int32, np.float32]
SHAPES = [(128, 128), (64, 520), (7, 13), (1, 1)]
USHORT = 6  # pvData ScalarType of uint16, as NDPluginPva writes it in codec.parameters


def _image(shape: tuple[int, int], dtype: type, seed: int = 0) -> np.ndarray:
    """Detector-like counts: mostly small, a bright centre, and the type's extremes."""
    rng = np.random.default_rng(seed)
    a: np.ndarray = rng.poisson(3.0, shape).astype(dtype)
    a[shape[0] // 2, shape[1] // 2] = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" \
        else 1e30
    if np.dtype(dtype).kind == "i":
        a[0, 0] = np.iinfo(dtype).min
    return a


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_codec_round_trips_every_dtype_and_shape(name: str, dtype: type,
                                                        shape: tuple[int, int]) -> None:
    a = _image(shape, dtype)
    v = make_frame(a, 7, 1.5, {"PositionX": 1e-6}, codec=name)
    assert v["codec.name"] == name
    assert v["uncompressedSize"] == a.nbytes
    assert v["compressedSize"] == len(v["value"])
    assert v["value"].dtype == np.uint8  # compressed bytes travel as ubyteValue
    f = read_frame(v)
    assert f.array.dtype == a.dtype and f.array.shape == shape
    np.testing.assert_array_equal(f.array, a)
    assert (f.unique_id, f.timestamp, f.attributes["PositionX"]) == (7, 1.5, 1e-6)


def test_uncompressed_frames_say_no_codec() -> None:
    v = make_frame(np.ones((4, 4), np.uint16), 1)
    assert v["codec.name"] == ""
    assert v["compressedSize"] == v["uncompressedSize"] == 32


def test_counts_compress_and_the_codec_parameters_hold_the_scalar_type() -> None:
    a = _image((128, 128), np.uint16)
    for name in NAMES:
        data, code = encode(a, name)
        assert code == USHORT
        assert len(data) < a.nbytes / 1.3, name
    assert [codec.scalar_type(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8,
                                            np.uint16, np.uint32, np.uint64, np.float32,
                                            np.float64)] == list(range(1, 11))


# ---- the formats as NDCodec writes them and other clients read them --------------------------

def test_lz4_is_one_raw_block() -> None:
    import lz4.block

    a = _image((64, 64), np.uint16)
    data, _ = encode(a, "lz4")
    assert lz4.block.decompress(data, uncompressed_size=a.nbytes) == a.tobytes()


def test_bslz4_is_bitshuffles_stream_without_the_hdf5_header() -> None:
    import bitshuffle

    a = _image((64, 64), np.uint16)
    data, _ = encode(a, "bslz4")
    assert struct.unpack(">Q", data[:8])[0] != a.nbytes  # no HDF5 filter header
    got = bitshuffle.decompress_lz4(np.frombuffer(data, np.uint8), a.shape, a.dtype, 0)
    np.testing.assert_array_equal(got, a)


def test_blosc_is_a_c_blosc_1_chunk() -> None:
    import blosc

    a = _image((64, 64), np.uint16)
    data, _ = encode(a, "blosc")
    assert data[0] == 2  # c-blosc 1's format version, which NDCodec's c-blosc writes
    assert blosc.decompress(data) == a.tobytes()


def test_lz4hdf5_has_the_hdf5_lz4_filter_header() -> None:
    a = _image((64, 64), np.uint16)
    data, _ = encode(a, "lz4hdf5")
    assert struct.unpack(">QI", data[:12]) == (a.nbytes, a.nbytes)


def _h5_lz4(raw: bytes, block: int, store_raw: frozenset[int] = frozenset()) -> bytes:
    """The HDF5 LZ4 filter's chunk of ``raw`` in blocks of ``block`` bytes."""
    import lz4.block

    out = [struct.pack(">QI", len(raw), block)]
    for k, start in enumerate(range(0, len(raw), block)):
        piece = raw[start:start + block]
        c = piece if k in store_raw else lz4.block.compress(piece, store_size=False)
        out += [struct.pack(">I", len(c)), c]
    return b"".join(out)


@pytest.mark.parametrize("name", ["lz4hdf5", "lz4"])
def test_hdf5_lz4_chunks_of_several_blocks_decode(name: str) -> None:
    """Dectris Stream2 blocks (lz4hdf5), and pvapy-ad-sim-server streaming an HDF5 file's
    LZ4 chunks under the name lz4; a block LZ4 could not shrink is stored as it is."""
    a = _image((50, 50), np.uint16)
    data = _h5_lz4(a.tobytes(), 1024, store_raw=frozenset({1}))
    got = decode(np.frombuffer(data, np.uint8), name, USHORT, a.nbytes, a.shape)
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("block", [0, 256, 1000])
def test_bslz4_with_the_hdf5_bitshuffle_filter_header_decodes(block: int) -> None:
    """pvapy-ad-sim-server sends an HDF5 file's bitshuffle chunks as they are stored: a
    12-byte header (size, block size in bytes), any block size."""
    import bitshuffle

    a = _image((40, 30), np.uint16)  # 1200 elements: a partial last block and a tail
    size = block or max(128, 8192 // 2 // 8 * 8)
    body = bitshuffle.compress_lz4(a.reshape(-1), block).tobytes()
    data = struct.pack(">QI", a.nbytes, size * 2) + body
    got = decode(np.frombuffer(data, np.uint8), "bslz4", USHORT, a.nbytes, a.shape)
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize(("cname", "shuffle", "clevel"), [
    ("blosclz", 0, 3),  # NDCodec's defaults
    ("lz4", 1, 5), ("lz4", 2, 5), ("lz4hc", 2, 9), ("zstd", 1, 3), ("zlib", 0, 1)])
def test_blosc_decodes_whichever_compressor_and_shuffle_ndcodec_chose(
        cname: str, shuffle: int, clevel: int) -> None:
    import blosc

    a = _image((128, 128), np.uint16)
    data = blosc.compress(a.tobytes(), typesize=2, clevel=clevel, shuffle=shuffle, cname=cname)
    got = decode(np.frombuffer(data, np.uint8), "blosc", USHORT, a.nbytes, a.shape)
    np.testing.assert_array_equal(got, a)


def test_a_blosc2_chunk_is_refused_with_what_to_do() -> None:
    a = _image((32, 32), np.uint16)
    data = bytearray(encode(a, "blosc")[0])
    data[0] = 5  # the format version python-blosc2's compress writes; c-blosc 1 cannot read it
    with pytest.raises(CodecError, match=r"codec 'blosc': a Blosc2 chunk .* NDCodec"):
        decode(np.frombuffer(data, np.uint8), "blosc", USHORT, a.nbytes, a.shape)


# ---- codec.parameters: its type varies between ADCore releases and senders -------------------

def _struct(code: int) -> Value:
    return Value(Type([("value", "i")]), {"value": code})


@pytest.mark.parametrize("parameters", [
    USHORT,                        # NDPluginPva, pvapy: an Int32 in the variant (p4p: an int)
    np.int32(USHORT),
    _struct(USHORT),               # a {value: int} structure in the variant
    {"value": USHORT},             # the same as a plain dict
    ({"value": USHORT},),          # pvapy's reading of a variant: a tuple of one dict
    ("intValue", USHORT),          # a union as (member, value)
], ids=["int", "numpy-int", "structure", "dict", "pvapy-tuple", "union-pair"])
def test_every_form_of_codec_parameters_gives_the_data_type(parameters: object) -> None:
    a = _image((32, 48), np.uint16)
    data, _ = encode(a, "bslz4")
    got = decode(np.frombuffer(data, np.uint8), "bslz4", parameters, a.nbytes, a.shape)
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("parameters", [
    pytest.param(_struct(USHORT), id="structure"), pytest.param(("i", USHORT), id="int32"),
    pytest.param(("l", USHORT), id="int64"), pytest.param(("s", "x"), id="string")])
def test_read_frame_takes_codec_parameters_in_the_variant_as_senders_put_them(
        parameters: object) -> None:
    a = _image((32, 48), np.uint16)
    v = make_frame(a, 3, codec="lz4")
    v["codec.parameters"] = parameters
    if parameters == ("s", "x"):
        with pytest.raises(CodecError, match=r"codec 'lz4': codec.parameters holds 'x'"):
            read_frame(v)
    else:
        np.testing.assert_array_equal(read_frame(v).array, a)


@pytest.mark.parametrize("parameters", [None, 0, 11, True, "uint16", {"type": 6}, (1, 2, 3)])
def test_codec_parameters_without_a_data_type_are_refused(parameters: object) -> None:
    data, _ = encode(np.ones((4, 4), np.uint16), "lz4")
    with pytest.raises(CodecError, match=r"codec 'lz4': codec.parameters holds .* ScalarType"):
        decode(data, "lz4", parameters, 32, (4, 4))


# ---- frames that do not decode ------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cut", [1, 7, 200])
def test_a_truncated_frame_is_refused_naming_the_codec(name: str, cut: int) -> None:
    a = _image((128, 128), np.uint16)
    v = make_frame(a, 1, codec=name)
    short = v["value"][:-cut]
    # the value holds fewer bytes than compressedSize says ...
    with pytest.raises(CodecError, match=rf"codec '{name}'.*corrupted or truncated"):
        decode(short, name, USHORT, a.nbytes, a.shape, int(v["compressedSize"]))
    # ... or compressedSize agrees with the cut value: the codec itself finds it short
    with pytest.raises(CodecError, match=rf"codec '{name}'.*does not decompress"):
        decode(short, name, USHORT, a.nbytes, a.shape, len(short))


@pytest.mark.parametrize("name", NAMES)
def test_a_frame_that_decompresses_to_another_size_is_refused(name: str) -> None:
    small = _image((64, 64), np.uint16)
    data, _ = encode(small, name)
    # dimensions (and uncompressedSize) say 64x128: twice what the bytes hold
    with pytest.raises(CodecError, match=rf"codec '{name}'.*does not decompress to its 16384"):
        decode(np.frombuffer(data, np.uint8), name, USHORT, 0, (64, 128))
    # the dimensions say 32x64: half
    with pytest.raises(CodecError, match=rf"codec '{name}'.*does not decompress to its 4096"):
        decode(np.frombuffer(data, np.uint8), name, USHORT, 0, (32, 64))


def test_sizes_that_disagree_with_the_dimensions_are_refused() -> None:
    a = _image((16, 16), np.uint16)
    v = make_frame(a, 1, codec="lz4")
    v["uncompressedSize"] = 1000
    with pytest.raises(CodecError, match=r"uncompressedSize is 1000 bytes, but 16x16 of uint16"):
        read_frame(v)


@pytest.mark.parametrize("name", NAMES)
def test_corrupt_frames_never_crash_and_never_change_shape(name: str) -> None:
    """Random damage to the bytes: refused with CodecError, or (no checksum) an image of the
    declared shape and type; never a crash and never anything else."""
    rng = np.random.default_rng(5)
    a = _image((96, 96), np.uint16)
    data, _ = encode(a, name)
    refused = 0
    for _ in range(300):
        bad = np.frombuffer(data, np.uint8).copy()
        idx = rng.integers(0, len(bad), rng.integers(1, 6))
        bad[idx] = rng.integers(0, 256, len(idx))
        if rng.random() < 0.3:
            bad = bad[:rng.integers(0, len(bad))]
        try:
            got = decode(bad, name, USHORT, a.nbytes, a.shape)
        except CodecError as exc:
            assert f"codec '{name}'" in str(exc)
            refused += 1
        else:
            assert got.shape == a.shape and got.dtype == a.dtype
    assert refused > 0


def test_an_unknown_codec_is_refused_with_the_ones_that_work() -> None:
    with pytest.raises(CodecError, match=r"codec 'zstd' is not one NDCodec sends.*"
                                         r"lz4, bslz4, blosc.*set the detector's NDCodec"):
        decode(b"\0" * 10, "zstd", USHORT, 0, (2, 2))


def test_jpeg_is_refused_because_counts_must_stay_exact() -> None:
    v = make_frame(np.ones((8, 8), np.uint8), 1)
    v["codec.name"] = "jpeg"
    with pytest.raises(CodecError, match=r"codec 'jpeg' is lossy.*lossless Compressor"):
        read_frame(v)


def test_a_codec_error_is_a_value_error_so_the_edge_counts_a_bad_frame() -> None:
    # the edge's input monitor turns ValueError from read_frame into a bad frame
    assert issubclass(CodecError, ValueError)


def test_a_missing_library_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    codec._library.cache_clear()
    monkeypatch.setitem(sys.modules, "bitshuffle", None)  # import bitshuffle fails
    try:
        with pytest.raises(CodecError, match=r"codec 'bslz4' needs the Python package "
                                             r"bitshuffle.*pip install bitshuffle"):
            encode(np.ones((4, 4), np.uint16), "bslz4")
        with pytest.raises(CodecError, match=r"pip install bitshuffle"):
            decode(b"\0" * 16, "bslz4", USHORT, 32, (4, 4))
    finally:
        codec._library.cache_clear()


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('lz4', 'bitshuffle', 'blosc', 'blosc2'):
            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)
sys.meta_path.insert(0, Block())
import numpy as np
import ptychoflow.codec, ptychoflow.ntnda, ptychoflow.sim.server
from ptychoflow.ntnda import make_frame, read_frame
assert (read_frame(make_frame(np.ones((4, 4), np.uint16), 1)).array == 1).all()
assert (read_frame(make_frame(np.ones((4, 4), np.uint16), 1, codec='zlib')).array == 1).all()
try:
    make_frame(np.ones((4, 4), np.uint16), 1, codec='blosc')
except ValueError as exc:
    print(exc)
from ptychoflow.cli import main
print('exit', main(['sim', '--codec', 'bslz4', '--frames', '2', '--size', '64', '--out', '']))
"""


def test_ptychoflow_works_without_the_compression_libraries() -> None:
    """Uncompressed frames (and zlib, in the standard library) need none of them; a codec
    whose library is missing says which package to install, and the simulator refuses to start."""
    r = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "codec 'blosc' needs the Python package blosc" in r.stdout
    assert "exit 2" in r.stdout
    assert "pip install bitshuffle" in r.stderr


def test_the_simulators_choices_are_the_codecs() -> None:
    from ptychoflow.sim.cli import CODEC_CHOICES

    assert CODEC_CHOICES == ("none", *NAMES)


def test_the_edge_benchmark_measures_every_codec() -> None:
    from ptychoflow.edge.bench.codecs import codec_costs, sim_codec_args

    costs = codec_costs(64, frames=3)
    assert list(costs) == ["none", *NAMES]
    assert costs["none"]["ratio"] == 1.0
    for name in NAMES:
        assert costs[name]["ratio"] > 1.0 and costs[name]["decode_us"] > 0, (name, costs[name])
    assert sim_codec_args("none") == [] and sim_codec_args("bslz4") == ["--codec", "bslz4"]
