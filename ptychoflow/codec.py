"""Compressed frames as areaDetector's NDCodec plugin makes them, and as NDPluginPva sends them.

A beamline often puts NDCodec in front of NDPluginPva to cut the network load.
The NTNDArray then carries (ADCore ``NDPluginCodec.cpp`` and
``ntndArrayConverter.cpp``):

* ``codec.name``: ``"lz4"``, ``"bslz4"``, ``"blosc"``, ``"zlib"``, ``"lz4hdf5"``
  or ``"jpeg"`` (``""`` when not compressed);
* ``codec.parameters``: a variant union holding the data type of the
  *uncompressed* image as a pvData ScalarType code (1 int8, 2 int16, 3 int32,
  4 int64, 5 uint8, 6 uint16, 7 uint32, 8 uint64, 9 float32, 10 float64), an
  Int32 from NDPluginPva and pvapy's servers; a ``{value: int}`` structure, or
  another integer type, is read as well;
* ``uncompressedSize`` and ``compressedSize`` in bytes, and the compressed
  bytes in the ``ubyteValue`` member of the ``value`` union.

The formats: ``lz4`` is one raw LZ4 block; ``bslz4`` is bitshuffle's
``bshuf_compress_lz4`` stream (blocks of the default size, each a 4-byte
big-endian length and an LZ4 block, the last few elements copied as they are),
*without* the 12-byte header the HDF5 bitshuffle filter adds; ``blosc`` is a
c-blosc 1 chunk whose header names the compressor and shuffle; ``lz4hdf5`` is
the HDF5 LZ4 filter's framing (8-byte size, 4-byte block size, then blocks);
``zlib`` is a zlib stream. pvapy's ``pvapy-ad-sim-server`` streaming HDF5
chunks sends ``bslz4`` and ``lz4`` *with* the HDF5 filter headers; both forms
decode here (a raw stream of 8 elements or more never starts with the frame's
size as a 64-bit big-endian number, so the two are told apart). ``jpeg`` is
refused: it is lossy and 8-bit, and a reconstruction needs the counts as the
detector gave them.

The compression libraries are imported when a codec is first used, so
``ptychoflow`` imports without them; a missing one is a :class:`CodecError`
naming the pip package. Every codec is a small class in :data:`CODECS`.
"""

from __future__ import annotations

import importlib
import math
import struct
import zlib
from functools import cache
from types import ModuleType
from typing import Any, Protocol

import numpy as np

# codec.parameters: pvData ScalarType code -> numpy dtype (the detector's byte order: little)
SCALAR_TYPES: dict[int, np.dtype[Any]] = {
    code: np.dtype(t) for code, t in ((1, "i1"), (2, "<i2"), (3, "<i4"), (4, "<i8"), (5, "u1"),
                                      (6, "<u2"), (7, "<u4"), (8, "<u8"), (9, "<f4"),
                                      (10, "<f8"))}
_CODE_OF = {(dt.kind, dt.itemsize): code for code, dt in SCALAR_TYPES.items()}

_LOSSY = {"jpeg": "lossy and 8-bit, and a reconstruction needs the detector's exact counts"}
_BSHUF_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block: 8 KiB, in whole groups of 8
_LZ4HDF5_BLOCK = 1 << 30  # the HDF5 LZ4 filter's default block size (one block per frame)


class CodecError(ValueError):
    """A compressed frame that cannot be decoded here; the message names the codec and the fix."""


@cache
def _library(module: str, package: str, codec: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CodecError(f"codec {codec!r} needs the Python package {package} on this host: "
                         f"pip install {package} (or pip install 'ptychoflow[edge]')") from exc


def _corrupt(codec: str, nbytes: int, why: object) -> CodecError:
    return CodecError(f"codec {codec!r}: the frame does not decompress to its {nbytes} bytes "
                      f"({why}); it was corrupted or truncated on the way: check the detector's "
                      "NDCodec plugin and what sits between it and this client")


def _be(buf: memoryview, fmt: str, pos: int) -> int:
    return int(struct.unpack_from(fmt, buf, pos)[0])


def _has_h5_header(buf: memoryview, nbytes: int, header: int) -> bool:
    """True when ``buf`` starts with the HDF5 filters' header: the size as big-endian u64.

    A raw LZ4 block, or a bitshuffle stream of 8 elements or more, never starts
    with four zero bytes, which the size of any frame under 4 GiB puts first.
    """
    return len(buf) >= header and _be(buf, ">Q", 0) == nbytes


class Codec(Protocol):
    """One NDCodec compressor: bytes of a flat array in, the same bytes out."""

    name: str
    package: str  # the pip package it needs ("" for the standard library)

    def compress(self, data: np.ndarray) -> bytes:
        """The compressed bytes of the C-contiguous array ``data``, as NDCodec writes them."""

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        """The ``nbytes`` uncompressed bytes (any array holding exactly them); CodecError else."""


class Lz4:
    """One raw LZ4 block (NDCodec's LZ4_compress_default); the HDF5 LZ4 framing is read too."""

    name = "lz4"
    package = "lz4"

    def compress(self, data: np.ndarray) -> bytes:
        lz4 = _library("lz4.block", self.package, self.name)
        return bytes(lz4.compress(data, mode="default", store_size=False))

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        if _has_h5_header(buf, nbytes, 16):
            return _lz4hdf5_decode(buf, nbytes, self.name)
        lz4 = _library("lz4.block", self.package, self.name)
        try:
            out = lz4.decompress(buf, uncompressed_size=nbytes)
        except lz4.LZ4BlockError as exc:
            raise _corrupt(self.name, nbytes, exc) from None
        if len(out) != nbytes:
            raise _corrupt(self.name, nbytes, f"it gave {len(out)}")
        return np.frombuffer(out, np.uint8)


def _lz4hdf5_decode(buf: memoryview, nbytes: int, codec: str) -> np.ndarray:
    """The HDF5 LZ4 filter's framing: a block stored as it is when LZ4 did not shrink it."""
    lz4 = _library("lz4.block", "lz4", codec)
    if len(buf) < 12:
        raise _corrupt(codec, nbytes, f"{len(buf)} bytes hold no header")
    total, block = _be(buf, ">Q", 0), _be(buf, ">I", 8)
    if total != nbytes or block == 0:
        raise _corrupt(codec, nbytes, f"its header says {total} bytes in blocks of {block}")
    out = np.empty(nbytes, np.uint8)
    pos, done = 12, 0
    while done < nbytes:
        n = min(block, nbytes - done)
        if pos + 4 > len(buf):
            raise _corrupt(codec, nbytes, f"it ends before block {done // block + 1}")
        c = _be(buf, ">I", pos)
        pos += 4
        if pos + c > len(buf):
            raise _corrupt(codec, nbytes, f"block {done // block + 1} ends past the "
                                          f"{len(buf)} bytes received")
        if c == n:
            out[done:done + n] = np.frombuffer(buf, np.uint8, n, pos)
        else:
            try:
                raw = lz4.decompress(buf[pos:pos + c], uncompressed_size=n)
            except lz4.LZ4BlockError as exc:
                raise _corrupt(codec, nbytes, exc) from None
            if len(raw) != n:
                raise _corrupt(codec, nbytes, f"block {done // block + 1} gave {len(raw)} bytes")
            out[done:done + n] = np.frombuffer(raw, np.uint8)
        pos += c
        done += n
    if pos != len(buf):
        raise _corrupt(codec, nbytes, f"{len(buf) - pos} bytes left over")
    return out


class Lz4Hdf5:
    """NDCodec's LZ4HDF5: the HDF5 LZ4 filter's framing (Dectris Stream2)."""

    name = "lz4hdf5"
    package = "lz4"

    def compress(self, data: np.ndarray) -> bytes:
        lz4 = _library("lz4.block", self.package, self.name)
        raw = data.reshape(-1).view(np.uint8).data
        block = min(_LZ4HDF5_BLOCK, max(len(raw), 1))
        parts = [struct.pack(">QI", len(raw), block)]
        for start in range(0, len(raw), block):
            piece = raw[start:start + block]
            c = lz4.compress(piece, mode="default", store_size=False)
            if len(c) >= len(piece):  # stored as it is, as the filter does
                c = bytes(piece)
            parts += [struct.pack(">I", len(c)), c]
        return b"".join(parts)

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        return _lz4hdf5_decode(buf, nbytes, self.name)


class BitshuffleLz4:
    """NDCodec's BSLZ4: bitshuffle + LZ4 in blocks (Dectris Stream), by bitshuffle's C library.

    The block framing is walked here before bitshuffle reads it: the C code
    trusts the block lengths, so a truncated frame must not reach it.
    """

    name = "bslz4"
    package = "bitshuffle"

    def compress(self, data: np.ndarray) -> bytes:
        bitshuffle = _library("bitshuffle", self.package, self.name)
        return bytes(bitshuffle.compress_lz4(data.reshape(-1), 0))

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        bitshuffle = _library("bitshuffle", self.package, self.name)
        size = dtype.itemsize
        if nbytes % size:
            raise _corrupt(self.name, nbytes, f"not a whole number of {dtype} elements")
        block = 0
        if _has_h5_header(buf, nbytes, 12):  # the HDF5 filter's chunk, as pvapy streams them
            block = _be(buf, ">I", 8) // size
            buf = buf[12:]
        n = nbytes // size
        block = block or max(128, _BSHUF_TARGET_BLOCK_BYTES // size // 8 * 8)
        self._check_blocks(buf, n, size, block, nbytes)
        try:
            return bitshuffle.decompress_lz4(np.frombuffer(buf, np.uint8), (n,), dtype, block)
        except (RuntimeError, ValueError) as exc:
            raise _corrupt(self.name, nbytes, exc) from None

    def _check_blocks(self, buf: memoryview, n: int, size: int, block: int,
                      nbytes: int) -> None:
        if block % 8:
            raise _corrupt(self.name, nbytes, f"block size {block} is not a multiple of 8")
        blocks = n // block + (1 if n % block >= 8 else 0)
        pos, end = 0, len(buf)
        for k in range(blocks):
            if pos + 4 > end:
                raise _corrupt(self.name, nbytes, f"it ends before block {k + 1} of {blocks}")
            pos += 4 + _be(buf, ">I", pos)
        tail = (n % 8) * size  # the elements after the last whole group of 8, copied
        if pos + tail != end:
            raise _corrupt(self.name, nbytes, f"its {blocks} blocks and {tail} bytes of tail "
                                              f"need {pos + tail} bytes, the frame has {end}")


class Blosc:
    """A c-blosc 1 chunk (NDCodec's Blosc): the compressor and shuffle are in its header."""

    name = "blosc"
    package = "blosc"

    def compress(self, data: np.ndarray) -> bytes:
        blosc = _library("blosc", self.package, self.name)
        return bytes(blosc.compress(data, typesize=data.dtype.itemsize, clevel=5,
                                    shuffle=blosc.BITSHUFFLE, cname="lz4"))

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        blosc = _library("blosc", self.package, self.name)
        if len(buf) < 16:
            raise _corrupt(self.name, nbytes, f"{len(buf)} bytes hold no blosc header")
        version, nb, cb = buf[0], _be(buf, "<I", 4), _be(buf, "<I", 12)
        if version > 2:
            raise CodecError(f"codec {self.name!r}: a Blosc2 chunk (format {version}), not the "
                             "c-blosc 1 chunk NDCodec writes; compress with NDCodec's Blosc")
        if cb != len(buf) or nb != nbytes:
            raise _corrupt(self.name, nbytes, f"its header says {cb} compressed bytes of {nb}, "
                                              f"the frame holds {len(buf)}")
        out = np.empty(nbytes, np.uint8)
        try:
            got = blosc.decompress_ptr(buf, out.ctypes.data)
        except Exception as exc:  # noqa: BLE001 - blosc raises its own error types
            raise _corrupt(self.name, nbytes, exc) from None
        if got != nbytes:
            raise _corrupt(self.name, nbytes, f"it gave {got}")
        return out


class Zlib:
    """NDCodec's zlib: one zlib stream (Python's standard library)."""

    name = "zlib"
    package = ""

    def compress(self, data: np.ndarray) -> bytes:
        return zlib.compress(data.data, 6)

    def decompress(self, buf: memoryview, nbytes: int, dtype: np.dtype[Any]) -> np.ndarray:
        try:
            d = zlib.decompressobj()
            out = d.decompress(buf, nbytes)
        except zlib.error as exc:
            raise _corrupt(self.name, nbytes, exc) from None
        if len(out) != nbytes or not d.eof or d.unconsumed_tail or d.unused_data:
            raise _corrupt(self.name, nbytes, f"it gave {len(out)} bytes"
                           + ("" if d.eof else " and the stream is cut short"))
        return np.frombuffer(out, np.uint8)


CODECS: dict[str, Codec] = {c.name: c for c in (Lz4(), BitshuffleLz4(), Blosc(), Zlib(),
                                                Lz4Hdf5())}
NAMES: tuple[str, ...] = tuple(CODECS)


def codec(name: str) -> Codec:
    """The codec called ``name``; CodecError naming the ones decoded here otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        pass
    if name in _LOSSY:
        raise CodecError(f"codec {name!r} is {_LOSSY[name]}: set the detector's NDCodec plugin "
                         f"to a lossless Compressor ({', '.join(NAMES)}) or None") from None
    raise CodecError(f"codec {name!r} is not one NDCodec sends that is decoded here "
                     f"({', '.join(NAMES)}); set the detector's NDCodec plugin to one of these "
                     "or to None") from None


def require(name: str) -> Codec:
    """The codec called ``name``, with its library imported: CodecError with the fix if not."""
    c = codec(name)
    if c.package:
        c.compress(np.zeros(8, np.uint16))
    return c


def scalar_type(dtype: np.dtype[Any] | type) -> int:
    """The pvData ScalarType code NDPluginPva puts in ``codec.parameters`` for ``dtype``."""
    dt = np.dtype(dtype)
    try:
        return _CODE_OF[dt.kind, dt.itemsize]
    except KeyError:
        raise CodecError(f"data type {np.dtype(dtype)} cannot be sent compressed; NDCodec "
                         "takes integer and float images") from None


def _as_int(parameters: Any) -> int | None:
    """The integer in ``parameters``: an int, or a structure / union / sequence holding one."""
    for _ in range(4):  # int, {value: int}, ({value: int},), Value(...)
        if isinstance(parameters, bool):
            return None
        if isinstance(parameters, int | np.integer):
            return int(parameters)
        if isinstance(parameters, tuple | list) and len(parameters) == 1:
            parameters = parameters[0]
        elif isinstance(parameters, tuple | list) and len(parameters) == 2 and \
                isinstance(parameters[0], str):  # a union as (member name, value)
            parameters = parameters[1]
        else:
            try:
                parameters = parameters["value"]
            except (KeyError, TypeError, IndexError, ValueError, AttributeError):
                return None
    return None


def dtype_of(parameters: Any, codec_name: str = "") -> np.dtype[Any]:
    """The uncompressed data type held in ``codec.parameters`` (any of the forms senders use)."""
    code = _as_int(parameters)
    if code is None or code not in SCALAR_TYPES:
        raise CodecError(f"codec {codec_name!r}: codec.parameters holds {parameters!r}, not the "
                         "image's data type as NDPluginPva sends it (a pvData ScalarType code, "
                         "1-10); the sender does not fill the NTNDArray codec as areaDetector "
                         "does")
    return SCALAR_TYPES[code]


def decode(payload: Any, codec_name: str, parameters: Any, uncompressed_size: int,
           shape: tuple[int, ...], compressed_size: int = 0) -> np.ndarray:
    """The image of an NDCodec-compressed NTNDArray, in its original data type and ``shape``.

    ``payload`` is the ``value`` union's array (or any bytes-like), the other
    arguments the NTNDArray fields of the same names; ``0`` sizes mean
    "not given". CodecError, naming the codec and the fix, when it cannot be decoded.
    """
    c = codec(codec_name)
    dtype = dtype_of(parameters, codec_name)
    nbytes = math.prod(shape) * dtype.itemsize
    if uncompressed_size and uncompressed_size != nbytes:
        raise CodecError(f"codec {codec_name!r}: uncompressedSize is {uncompressed_size} bytes, "
                         f"but {'x'.join(map(str, shape))} of {dtype} are {nbytes}; the sender's "
                         "dimensions, data type (codec.parameters) and sizes disagree")
    if isinstance(payload, bytes | bytearray | memoryview):
        buf = memoryview(payload).cast("B")
    else:  # the union's array: ubyteValue as NDPluginPva sends it, any type taken as bytes
        buf = np.ascontiguousarray(payload).reshape(-1).view(np.uint8).data
    if compressed_size:
        if compressed_size > len(buf):
            raise _corrupt(codec_name, nbytes, f"compressedSize is {compressed_size} bytes, the "
                                               f"frame holds {len(buf)}")
        buf = buf[:compressed_size]
    out = c.decompress(buf, nbytes, dtype)
    return out.view(dtype).reshape(shape)


def encode(array: np.ndarray, codec_name: str) -> tuple[bytes, int]:
    """``array`` compressed as NDCodec does: (compressed bytes, the ``codec.parameters`` code)."""
    code = scalar_type(array.dtype)
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return codec(codec_name).compress(a), code

