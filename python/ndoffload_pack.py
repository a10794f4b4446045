"""Read ndarray-offload packs with numpy and the Python standard library only.

A *pack* is one file holding many keyed arrays and samples, written by the
Rust crate ``ndarray-offload`` (``PackWriter``). This module reads **pack
format version 2**, described byte by byte in ``docs/format.md, section "Pack file format"``; it
refuses any other version (version 1 packs, with a layered hash index, must
be rewritten by a current ``PackWriter``).

Usage::

    from ndoffload_pack import read_pack

    entries = read_pack("tiles.pack")        # verifies every checksum
    tile = entries["tile_0001"]               # a numpy array
    sample = entries[17]                      # integer keys stay ints
    sample["arrays"]["image"], sample["meta"]

``read_pack(path)`` returns a ``dict`` in the pack's file order (the order
the entries were appended), keyed by ``int`` (integer keys) or ``str``
(string keys). A value is

* a ``numpy.ndarray`` for an entry holding one array and no metadata;
* otherwise (a sample of named arrays, or an array with metadata) a
  ``dict`` ``{"arrays": {name: ndarray, ...}, "meta": value or None}``;
  a plain entry's single array is named ``""``.

Uncompressed arrays are read-only views into a memory map of the file (no
copy); the map stays open as long as any of them is alive. Compressed
entries are decoded with ``lz4.block`` or ``zstandard`` (or Python 3.14's
``compression.zstd``) when those modules are installed, and raise
``ValueError`` otherwise.

Only numpy and the standard library are needed: ``struct``, ``json``,
``mmap``, and ``zlib`` for the CRC-32 checksums.
"""

import json
import mmap
import os
import struct
import zlib

import numpy as np

#: The pack format version this module reads.
FORMAT_VERSION = 2

MAGIC = b"NDOPACK\0"
TRAILER_MAGIC = b"NDOTRAIL"
PREAMBLE_LEN = 64
TRAILER_LEN = 128
LEAF_REC = 16
DESC_HEAD = 24
ARRAY_REC = 32

KEY_U64, KEY_STR = 0, 1
ENTRY_ARRAY, ENTRY_SAMPLE = 0, 1
COMP_NONE, COMP_LZ4, COMP_ZSTD = 0, 1, 2

_M64 = (1 << 64) - 1


class PackError(ValueError):
    """A file that is not a valid pack (bad magic, checksum, bounds...)."""


def key_hash(key):
    """The 64-bit hash the pack's index is sorted by.

    FNV-1a over the kind byte (0 for an integer key, 1 for a string key)
    followed by the key bytes (8 little-endian bytes, or UTF-8), finished
    with MurmurHash3's fmix64.
    """
    if isinstance(key, int):
        data = bytes([KEY_U64]) + struct.pack("<Q", key)
    else:
        data = bytes([KEY_STR]) + key.encode("utf-8")
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & _M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


def _decompress(code, data, raw_len, what):
    if code == COMP_LZ4:
        try:
            import lz4.block
        except ImportError:
            raise ValueError(f"{what} is lz4-compressed; install the lz4 package") from None
        return lz4.block.decompress(bytes(data), uncompressed_size=raw_len)
    if code == COMP_ZSTD:
        try:
            from compression import zstd  # Python 3.14+
            return zstd.decompress(bytes(data))
        except ImportError:
            pass
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"{what} is zstd-compressed; install zstandard") from None
        return zstandard.ZstdDecompressor().decompress(bytes(data), max_output_size=raw_len)
    raise PackError(f"{what}: unknown compression code {code}")


def _parse_entry(mm, off, index_off, verify, path):
    """Parses the entry descriptor at ``off``; returns (key, value)."""
    if off % 8 or off < PREAMBLE_LEN or off + DESC_HEAD > index_off:
        raise PackError(f"{path}: bad entry descriptor offset {off}")
    desc_len, desc_crc = struct.unpack_from("<II", mm, off)
    if desc_len < DESC_HEAD or desc_len % 8 or off + desc_len > index_off:
        raise PackError(f"{path}: bad descriptor length at {off}")
    if verify and zlib.crc32(mm[off + 8 : off + desc_len]) != desc_crc:
        raise PackError(f"{path}: descriptor checksum mismatch at {off}")
    key_kind, entry_kind, n_arrays, key_len, meta_len, _ = struct.unpack_from(
        "<BBHIII", mm, off + 8
    )
    at = off + DESC_HEAD
    recs = [struct.unpack_from("<QQIHBB8s", mm, at + i * ARRAY_REC) for i in range(n_arrays)]
    at += n_arrays * ARRAY_REC
    shapes = []
    for rec in recs:
        ndim = rec[5]
        shapes.append(struct.unpack_from(f"<{ndim}Q", mm, at))
        at += 8 * ndim
    key_bytes = mm[at : at + key_len]
    at += key_len
    if key_kind == KEY_U64:
        key = struct.unpack("<Q", key_bytes)[0]
    elif key_kind == KEY_STR:
        key = key_bytes.decode("utf-8")
    else:
        raise PackError(f"{path}: bad key kind at {off}")
    names = []
    for rec in recs:
        names.append(mm[at : at + rec[3]].decode("utf-8"))
        at += rec[3]
    meta = json.loads(mm[at : at + meta_len]) if meta_len else None
    if at + meta_len > off + desc_len:
        raise PackError(f"{path}: descriptor fields overrun at {off}")

    arrays = {}
    for rec, shape, name in zip(recs, shapes, names):
        data_off, stored_len, crc, _, comp, _, dtype = rec
        what = f"{path}: entry {key!r}" + (f" array {name!r}" if name else "")
        dt = np.dtype(dtype.rstrip(b"\0").decode("ascii"))
        count = 1
        for d in shape:
            count *= d
        if data_off % 64 or data_off < PREAMBLE_LEN or data_off + stored_len > off:
            raise PackError(f"{what}: payload out of bounds")
        if verify and zlib.crc32(mm[data_off : data_off + stored_len]) != crc:
            raise PackError(f"{what}: payload checksum mismatch")
        if comp == COMP_NONE:
            if stored_len != count * dt.itemsize:
                raise PackError(f"{what}: payload size does not match its shape")
            a = np.frombuffer(mm, dtype=dt, count=count, offset=data_off).reshape(shape)
        else:
            raw = _decompress(comp, mm[data_off : data_off + stored_len], count * dt.itemsize, what)
            if len(raw) != count * dt.itemsize:
                raise PackError(f"{what}: decoded size does not match its shape")
            a = np.frombuffer(raw, dtype=dt, count=count).reshape(shape)
        arrays[name] = a

    if entry_kind == ENTRY_ARRAY and meta_len == 0 and len(arrays) == 1:
        return key, arrays[""]
    return key, {"arrays": arrays, "meta": meta}


def read_pack(path, verify=True):
    """Reads every entry of the pack at ``path`` into a dict (file order).

    With ``verify`` (the default), checks the trailer, index, descriptor and
    payload CRC-32 checksums, that every key is indexed under its hash and
    that the bucket directory matches the hash-sorted leaf,
    raising ``PackError`` on any mismatch.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < PREAMBLE_LEN + TRAILER_LEN:
            raise PackError(f"{path}: truncated ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if mm[:8] != MAGIC:
        raise PackError(f"{path}: not a pack file")
    (version,) = struct.unpack_from("<I", mm, 8)
    t = size - TRAILER_LEN
    if mm[t : t + 8] != TRAILER_MAGIC:
        raise PackError(f"{path}: no trailer (truncated, or never finished)")
    if zlib.crc32(mm[t : t + 124]) != struct.unpack_from("<I", mm, t + 124)[0]:
        raise PackError(f"{path}: trailer checksum mismatch")
    (tversion, _flags, file_len, n, index_off, buckets, dir_off) = struct.unpack_from(
        "<IIQQQQQ", mm, t + 8
    )
    if version != FORMAT_VERSION or tversion != FORMAT_VERSION:
        raise PackError(f"{path}: pack format version {tversion}; this reader reads {FORMAT_VERSION}")
    if file_len != size or buckets < 1 or buckets & (buckets - 1):
        raise PackError(f"{path}: trailer does not match the file")
    seq = index_off
    leaf = seq + 16 * n
    if dir_off != leaf + LEAF_REC * n or dir_off + 8 * (buckets + 1) != t:
        raise PackError(f"{path}: index layout does not match the trailer")
    if verify:
        (index_crc,) = struct.unpack_from("<I", mm, t + 120)
        if zlib.crc32(mm[index_off:t]) != index_crc:
            raise PackError(f"{path}: index checksum mismatch")

    offsets = np.frombuffer(mm, dtype="<u8", count=n, offset=seq)
    out = {}
    for off in offsets.tolist():
        key, value = _parse_entry(mm, off, index_off, verify, path)
        if key in out:
            raise PackError(f"{path}: duplicate key {key!r}")
        out[key] = value
    if verify and n:
        recs = np.frombuffer(mm, dtype="<u8", count=2 * n, offset=leaf).reshape(n, 2)
        by_off = {}
        for off, key in zip(offsets.tolist(), out):
            by_off[off] = key
        hashes = recs[:, 0]
        if np.any(hashes[1:] < hashes[:-1]):
            raise PackError(f"{path}: hash index not sorted")
        for h, off in recs.tolist():
            if off not in by_off or key_hash(by_off[off]) != h:
                raise PackError(f"{path}: hash index does not match the entries")
    if verify:
        # The bucket directory: dir[b] is the number of leaf records whose
        # hash's top log2(buckets) bits are < b.
        directory = np.frombuffer(mm, dtype="<u8", count=buckets + 1, offset=dir_off)
        bits = buckets.bit_length() - 1
        hashes = np.frombuffer(mm, dtype="<u8", count=2 * n, offset=leaf)[0::2]
        if bits:
            bucket = (hashes >> np.uint64(64 - bits)).astype(np.int64)
        else:
            bucket = np.zeros(n, dtype=np.int64)
        counts = np.bincount(bucket, minlength=buckets)
        expected = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
        if len(expected) != buckets + 1 or np.any(directory != expected):
            raise PackError(f"{path}: hash index bucket directory does not match the leaf")
    return out


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        for k, v in read_pack(p).items():
            if isinstance(v, np.ndarray):
                print(f"{k!r}: {v.dtype.str} {v.shape}")
            else:
                desc = ", ".join(f"{n}: {a.dtype.str} {a.shape}" for n, a in v["arrays"].items())
                print(f"{k!r}: {{{desc}}} meta={json.dumps(v['meta'])}")
