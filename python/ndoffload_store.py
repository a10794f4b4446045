"""Read entries of an ndarray-offload store with numpy, safely while writers run.

The rule: **open once, read header and data from the same descriptor; check
the version link.**

A store directory holds pairs ``K.npy`` + ``K.meta.json`` (see
``docs/format.md``, "Reading from other languages"). A writer replaces a pair
by renaming a new ``K.npy`` and then a new ``K.meta.json`` over the old
ones, so a reader that opens ``K.npy`` by name twice (``np.load(path,
mmap_mode="r")`` reads the header through one open and maps the data
through another) can get one version's header over another version's data,
or ``ValueError: mmap length is greater than file size``; and a
``K.meta.json`` read separately may belong to another version than the
``K.npy``. This module reads a pair as the Rust crate's readers do:

1. read ``K.meta.json`` whole, from one descriptor (its token ``T`` is its
   ``"ndoffload_version"`` field, when present);
2. open ``K.npy`` once (``O_RDONLY | O_NOFOLLOW | O_NONBLOCK``, ``fstat``:
   a regular file);
3. the pair is consistent when ``.ndoffload/versions/K.T`` is a regular
   file with the same ``(st_dev, st_ino)`` as the opened ``K.npy``: the
   hard link the writer made to the very ``.npy`` it published with ``T``.
   Without a token (a pair written by numpy, GSEGUtils or an older version
   of the crate), or when the opened ``K.npy`` has a single link and is
   still the file at ``K.npy`` (a foreign file, or a store copied with
   ``cp -r``), the ``.npy`` header must agree with the metadata's
   ``dtype`` and ``shape`` instead (the legacy rule). A single-link file no
   longer at ``K.npy`` was replaced after it was opened: its one name may be
   its version link, so it is read again;
4. otherwise a publish is in flight: read again after a short sleep (50 us
   doubling up to 2 ms, 500 attempts, about 1 s), then fall back to the
   header-agreement rule and raise ``EntryError`` if that fails too;
5. parse the header from the opened descriptor, check that the file is
   exactly header + data long (a truncated file is an error, never a
   ``SIGBUS``), and map the data from the same descriptor (``np.memmap``
   over a file object of it) or read it.

Usage::

    from ndoffload_store import load

    xyz, attrs = load("clouds", "tile_0001_xyz")            # read-only map
    xyz, attrs = load("clouds", "tile_0001_xyz", mmap=False)  # read into RAM

Only numpy (any 1.x from 1.17, or 2.x) and the standard library are needed;
Python 3.9 or later.
"""

import errno
import json
import os
import re
import stat
import time

import numpy as np
from numpy.lib import format as _npformat

__all__ = ["load", "load_meta", "keys", "EntryError", "NPY_SUFFIX", "META_SUFFIX"]

NPY_SUFFIX = ".npy"
META_SUFFIX = ".meta.json"
#: Folder of the version links, relative to the store directory.
VERSIONS_DIR = os.path.join(".ndoffload", "versions")
#: The metadata field naming the published version.
VERSION_FIELD = "ndoffload_version"
#: Largest ``K.meta.json`` read (the crate's limit).
META_LIMIT = 4 << 20
#: Longest ``.npy`` header read (the crate's limit).
MAX_HEADER_LEN = 65535
#: Attempts before falling back to the header-agreement rule.
ATTEMPTS = 500
FIRST_DELAY = 50e-6
MAX_DELAY = 2e-3

_TOKEN = re.compile(r"[0-9a-z-]+\Z")
_O_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0)


class EntryError(ValueError):
    """An entry that cannot be read: missing, corrupt, truncated, or whose
    ``.npy`` and ``.meta.json`` never agreed within the retry time."""


def _check_key(key):
    if (
        not isinstance(key, str)
        or key in ("", ".", "..")
        or "/" in key
        or "\\" in key
        or "\0" in key
    ):
        raise EntryError(f"invalid entry name {key!r}")


class _Dir:
    """The store directory, opened once: every name is opened relative to
    its descriptor where the platform allows it."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.fd = None
        if os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd:
            self.fd = os.open(self.path, _O_DIR)
            if not stat.S_ISDIR(os.fstat(self.fd).st_mode):
                os.close(self.fd)
                raise EntryError(f"{self.path}: not a directory")

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def join(self, name):
        return os.path.join(self.path, name)

    def open_regular(self, name):
        """A descriptor of the regular file `name` (never a symbolic link,
        FIFO, socket, device or directory; never blocks)."""
        try:
            if self.fd is not None:
                fd = os.open(name, _O_READ, dir_fd=self.fd)
            else:
                fd = os.open(self.join(name), _O_READ)
        except FileNotFoundError:
            raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise EntryError(f"{self.join(name)}: not a regular file") from e
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise EntryError(f"{self.join(name)}: not a regular file")
        return fd, st

    def lstat(self, name):
        if self.fd is not None:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        return os.lstat(self.join(name))


def _read_meta(d, key):
    name = key + META_SUFFIX
    fd, st = d.open_regular(name)
    try:
        if st.st_size > META_LIMIT:
            raise EntryError(f"{d.join(name)}: larger than {META_LIMIT} bytes")
        chunks = []
        total = 0
        while True:
            # A published metadata file is never modified in place: its
            # size is known, and one read usually brings all of it.
            b = os.read(fd, max(st.st_size + 1 - total, 1))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > META_LIMIT:
                raise EntryError(f"{d.join(name)}: larger than {META_LIMIT} bytes")
    finally:
        os.close(fd)
    try:
        meta = json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise EntryError(f"{d.join(name)}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise EntryError(f"{d.join(name)}: not a JSON object")
    return meta


def _token(d, key, meta):
    token = meta.get(VERSION_FIELD)
    if token is None:
        return None
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise EntryError(f"{d.join(key + META_SUFFIX)}: invalid {VERSION_FIELD} {token!r}")
    return token


def _link_matches(d, key, token, st):
    """Whether the version link of `token` is the opened `.npy` (`st`)."""
    try:
        ls = d.lstat(os.path.join(VERSIONS_DIR, f"{key}.{token}"))
    except OSError:
        return False
    return stat.S_ISREG(ls.st_mode) and _same_file(ls, st)


def _same_file(a, b):
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _rule(d, key, npy, token, st):
    """How to tell whether the metadata (version `token`) and the opened
    `.npy` (`st`, its ``fstat``) are one version: ``"link"`` (the version
    link is that file: they are), ``"header"`` (the legacy rule: the header
    must agree with the metadata), or ``"retry"`` (a publish is in flight).
    """
    if token is None:
        return "header"
    if _link_matches(d, key, token, st):
        return "link"
    if st.st_nlink == 1:
        # One link: a foreign file (GSEGUtils', or a store copied with
        # `cp -r`) if it is still the file at K.npy. A file the crate
        # published has two links while it is at K.npy (K.npy and its
        # version link); one that was renamed over after it was opened may
        # be left with only its version link: then a publish is in flight.
        try:
            now = d.lstat(npy)
        except OSError:
            return "retry"
        return "header" if _same_file(now, st) else "retry"
    return "retry"


def _read_header(fp, path):
    """(shape, fortran_order, dtype, data offset) of the `.npy` open as
    `fp`, read from its start."""
    fp.seek(0)
    try:
        version = _npformat.read_magic(fp)
        if version == (1, 0):
            read = _npformat.read_array_header_1_0
        elif version in ((2, 0), (3, 0)):
            # 3.0 differs from 2.0 only in the header's text encoding (UTF-8
            # instead of Latin-1), which is the same for ASCII headers.
            read = _npformat.read_array_header_2_0
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        try:
            shape, fortran, dtype = read(fp, max_header_size=MAX_HEADER_LEN)
        except TypeError:  # numpy < 1.24 has no max_header_size
            shape, fortran, dtype = read(fp)
    except EntryError:
        raise
    except Exception as e:  # numpy raises ValueError, OSError, SyntaxError...
        raise EntryError(f"{path}: not a valid .npy file: {e}") from e
    if dtype.hasobject:
        raise EntryError(f"{path}: holds Python objects (pickles are never loaded)")
    return tuple(shape), bool(fortran), dtype, fp.tell()


def _agrees(meta, header):
    """Whether the metadata's `dtype` and `shape` (when present) agree with
    the `.npy` header."""
    shape, _, dtype, _ = header
    if meta.get("shape") is not None:
        s = meta["shape"]
        if not isinstance(s, list) or tuple(s) != shape:
            return False
    if meta.get("dtype") is not None:
        try:
            if np.dtype(meta["dtype"]) != dtype:
                return False
        except TypeError:
            return False
    return True


def _array(fd, st, header, path, mmap):
    shape, fortran, dtype, offset = header
    order = "F" if fortran else "C"
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if st.st_size != offset + nbytes:
        what = "truncated" if st.st_size < offset + nbytes else "longer than its header says"
        raise EntryError(
            f"{path}: {what}: {st.st_size} bytes, expected {offset + nbytes} "
            f"({offset} header + {nbytes} data)"
        )
    if nbytes == 0:
        # np.memmap cannot map 0 bytes: an empty array, read-only like a map.
        a = np.empty(shape, dtype=dtype, order=order)
        a.flags.writeable = not mmap
        return a
    with os.fdopen(fd, "rb", closefd=False) as fp:
        if mmap:
            # The map takes its own reference to the open file: the array
            # stays valid after `fd` is closed and whatever is renamed over
            # the name.
            return np.memmap(fp, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
        buf = bytearray(nbytes)
        fp.seek(offset)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            n = fp.readinto(view[got:])
            if not n:
                raise EntryError(f"{path}: truncated while it was read")
            got += n
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _attrs(meta, path):
    attrs = meta.get("ndoffload_attrs")
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise EntryError(f"{path}: ndoffload_attrs is not a JSON object")
    return attrs


def load_meta(store_dir, key):
    """The whole metadata of entry `key` of the store at `store_dir` (the
    parsed ``K.meta.json``, read from one descriptor; its user attributes
    are under ``"ndoffload_attrs"``). On its own it may belong to another
    version than the ``K.npy`` read later: use `load` for a consistent
    pair."""
    _check_key(key)
    with _Dir(store_dir) as d:
        return _read_meta(d, key)


def load(store_dir, key, mmap=True):
    """Entry `key` of the store at `store_dir`: ``(array, attrs)``, the
    array and the user attributes (``ndoffload_attrs``, ``{}`` when none)
    of one and the same published version, even while writers replace it.

    With ``mmap=True`` the array is a read-only ``numpy.memmap`` of the
    opened file (a replace after the call does not change it); with
    ``mmap=False`` it is read into RAM (a writable array). An empty array
    (a zero in its shape) is a ``numpy.empty`` array, read-only with
    ``mmap=True``.

    Raises ``FileNotFoundError`` for a missing ``K.npy`` or ``K.meta.json``
    and ``EntryError`` (a ``ValueError``) for an entry that is not sound.
    """
    _check_key(key)
    npy = key + NPY_SUFFIX
    with _Dir(store_dir) as d:
        path = d.join(npy)
        delay = FIRST_DELAY
        for attempt in range(ATTEMPTS + 1):
            fallback = attempt == ATTEMPTS
            meta = _read_meta(d, key)
            token = _token(d, key, meta)
            fd, st = d.open_regular(npy)
            try:
                with os.fdopen(fd, "rb", closefd=False) as fp:
                    rule = _rule(d, key, npy, token, st) if not fallback else "header"
                    if rule == "link":
                        header = _read_header(fp, path)
                        if not _agrees(meta, header):
                            raise EntryError(
                                f"{path}: its header disagrees with "
                                f"{d.join(key + META_SUFFIX)} of the same version {token}"
                            )
                        consistent = True
                    elif rule == "header":
                        header = _read_header(fp, path)
                        consistent = _agrees(meta, header)
                    else:
                        consistent = False
                if consistent:
                    return _array(fd, st, header, path, mmap), _attrs(meta, d.join(key + META_SUFFIX))
            finally:
                os.close(fd)
            if not fallback:
                time.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
        raise EntryError(
            f"{path}: its header disagrees with {d.join(key + META_SUFFIX)} "
            f"(dtype {header[2].str}, shape {list(header[0])} against the metadata's "
            f"{meta.get('dtype')}, {meta.get('shape')}), after {ATTEMPTS} reads over about 1 s"
        )


def keys(store_dir):
    """The names of the complete pairs in `store_dir` (``K.npy`` and
    ``K.meta.json`` both present), sorted. The crate's temporary files
    (``.ndo.*.tmp``) are never listed."""
    names = os.listdir(store_dir)
    present = set(names)
    out = []
    for n in names:
        if n.endswith(META_SUFFIX) and not n.startswith(".ndo."):
            k = n[: -len(META_SUFFIX)]
            if k and k + NPY_SUFFIX in present:
                out.append(k)
    return sorted(out)
