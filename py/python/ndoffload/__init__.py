"""The ndarray-offload store from numpy code.

A :class:`Store` is a persistent, crash-safe mapping of names to numpy
arrays, kept as ``NAME.npy`` + ``NAME.meta.json`` pairs in a directory (the
files numpy, GSEGUtils and the Rust crate ``ndarray-offload`` read), under a
memory budget: least-recently-used entries spill to disk and are mapped back
when read. Several processes (Python or Rust) may open one store at once,
and a store may live on S3-compatible object storage with a local cache.

Example::

    import numpy as np
    from ndoffload import Store

    with Store("clouds", memory_budget="2GiB") as store:
        store["tile_0001"] = np.zeros((1_000_000, 3))   # copied once, spilled when over budget
        xyz = store["tile_0001"]                          # read-only, no copy: RAM or the mapped file
        store.flush()                                     # durable: a power cut loses nothing

Reading returns a **read-only numpy array over the entry's data**: the RAM
the store holds, or the ``.npy`` file mapped. Python holding the array pins
that data: it stays valid and unchanged while the entry is replaced,
removed or evicted, or the store is closed. Entries the crate cannot map
(big-endian ``.npy`` files written by numpy elsewhere) are returned as
copies in the host's byte order.

Every call that reads or writes files or the network releases the GIL.
A handle may be used from any number of threads. With ``multiprocessing``,
a store passed to a spawned child (pickled) is opened again there, after
being flushed; a forked child that uses a store it inherited opens it again
itself (it never touches the parent's locks or registration).

``ndoffload.gsegutils`` is a drop-in for GSEGUtils 0.6.0's
``DiskBackedStore`` on the same files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Optional, Union

import numpy as np

from . import _ndoffload as _nd
from ._ndoffload import (
    ClosedError,
    ConflictError,
    CorruptError,
    InUseError,
    LockedError,
    ReadOnlyError,
    RemoteError,
    StoreError,
)

__all__ = [
    "Store",
    "StoreError",
    "CorruptError",
    "LockedError",
    "ConflictError",
    "InUseError",
    "ReadOnlyError",
    "ClosedError",
    "RemoteError",
    "SUPPORTED_DTYPES",
]

__version__ = "0.1.0"

#: The element types a store holds (any byte order is accepted on write;
#: entries are stored in the host's).
SUPPORTED_DTYPES = tuple(
    np.dtype(t)
    for t in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)
_SUPPORTED = {(d.kind, d.itemsize) for d in SUPPORTED_DTYPES}

Size = Union[int, str, None]

if hasattr(os, "register_at_fork"):
    # No thread is inside the store's native code while the process forks,
    # so a child never inherits one of its locks held.
    os.register_at_fork(
        before=_nd._fork_prepare,
        after_in_parent=_nd._fork_release,
        after_in_child=_nd._fork_release,
    )


def _size(value: Size, name: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a size (an int of bytes or a string such as '2GiB'), not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"{name} must be a size (an int of bytes or a string such as '2GiB'), not {type(value).__name__}")


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"store keys are str, not {type(key).__name__}")
    return key


def _as_storable(value: Any) -> np.ndarray:
    """`value` as a numpy array the store holds: one of
    :data:`SUPPORTED_DTYPES`, in the host's byte order (a big-endian array
    is converted). Raises ``TypeError`` for anything else (object arrays,
    strings, structured dtypes, float16, ...)."""
    a = value if isinstance(value, np.ndarray) else np.asarray(value)
    dt = a.dtype
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or (dt.kind, dt.itemsize) not in _SUPPORTED:
        raise TypeError(
            f"unsupported dtype {dt.str!r} ({dt}): the store holds "
            + ", ".join(str(d) for d in SUPPORTED_DTYPES)
            + " arrays"
        )
    if not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    if type(a) is not np.ndarray:
        a = a.view(np.ndarray)
    return a


class Store(MutableMapping):
    """A persistent, crash-safe mapping of names to numpy arrays.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory (created if missing, unless ``read_only``); for
        a remote store, its local cache.
    memory_budget : int or str, optional
        Bytes of entry data held in RAM or mapped (``"2GiB"``, ``"500MB"``,
        an ``int``); least-recently-used entries are written and freed past
        it. ``None``: no budget (entries stay in RAM until flushed or
        offloaded).
    disk_budget : int or str, optional
        Bytes of ``.npy`` files; past it, *recomputable* entries (made by
        :meth:`get_or_compute`, or inserted with ``recomputable=True``) are
        deleted, least recently used first. No other entry is ever deleted.
    remote : str, optional
        ``"s3://bucket/prefix"``: the store's durable home is that prefix of
        an S3-compatible object store (endpoint and credentials from
        ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), and ``path`` is
        its local cache.
    read_only : bool
        Open without writing anything or taking any lock.
    exclusive : bool
        Be the only writer (other writable opens fail with
        :class:`LockedError`).
    lock_timeout : float, optional
        Seconds :meth:`get_or_compute` waits for another process computing
        the same key before :class:`LockedError` (default: no limit).
    write_behind : (int, str), optional
        ``(threads, max_in_flight)``: spills are written by background
        threads. By default (and with ``threads=0``) every spill is
        written by the call that evicts: the Rust crate's default writes
        large spills behind, which the package leaves off so that a fork
        never inherits a writer thread's lock (see "Processes" in
        docs/python.md).
    create : bool
        Create a missing directory (writable opens).

    Notes
    -----
    Reads (``store[key]``) return read-only arrays over the entry's data,
    without a copy, pinned while Python holds them. Writes
    (``store[key] = a``) copy ``a`` once; C and Fortran order are kept,
    other layouts are stored in C order.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        memory_budget: Size = "2GiB",
        disk_budget: Size = None,
        remote: Optional[str] = None,
        read_only: bool = False,
        *,
        exclusive: bool = False,
        lock_timeout: Optional[float] = None,
        write_behind: Optional[tuple] = None,
        create: bool = True,
    ) -> None:
        if write_behind is not None:
            threads, bound = write_behind
            write_behind = (int(threads), _size(bound, "write_behind"))
        self._args = dict(
            path=os.fspath(path),
            memory_budget=_size(memory_budget, "memory_budget"),
            disk_budget=_size(disk_budget, "disk_budget"),
            remote=remote,
            read_only=bool(read_only),
            exclusive=bool(exclusive),
            lock_timeout=lock_timeout,
            write_behind=write_behind,
            create=bool(create),
        )
        self._closed = False
        self._open()

    def _open(self) -> None:
        self._h = _nd._Store(**self._args)
        self._pid = os.getpid()

    def _handle(self) -> "_nd._Store":
        if self._pid != os.getpid() and not self._closed:
            # A forked child: the parent's handle (its locks, registration
            # and unwritten entries) is the parent's; open the store here.
            self._h.abandon()
            self._open()
        return self._h

    # -- the mapping ----------------------------------------------------

    def __getitem__(self, key: str) -> np.ndarray:
        """The entry ``key`` as a read-only array (no copy; see the class
        notes). ``KeyError`` when missing."""
        return self._handle().get(_check_key(key))

    def __setitem__(self, key: str, value: Any) -> None:
        """Inserts or replaces ``key`` (kept in RAM until the budget, a
        flush or close writes it); see :meth:`insert`."""
        self.insert(key, value)

    def __delitem__(self, key: str) -> None:
        """Removes ``key`` and deletes its pair durably; arrays Python holds
        of it stay valid. ``KeyError`` when missing."""
        if not self._handle().remove(_check_key(key)):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            return self._handle().contains(key)
        except ValueError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._handle().keys())

    def __len__(self) -> int:
        return self._handle().len()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} entries"
        return f"<ndoffload.Store {self._args['path']!r} ({state})>"

    # -- writing ----------------------------------------------------------

    def insert(
        self,
        key: str,
        array: Any,
        durable: bool = False,
        attrs: Optional[dict] = None,
        recomputable: bool = False,
        *,
        caching: Optional[bool] = None,
        automatic_offloading: Optional[bool] = None,
    ) -> None:
        """Inserts or replaces ``key`` with a copy of ``array``.

        ``durable=True`` returns once the pair is on disk (fsynced, renamed
        into place). ``attrs`` (a JSON-serializable ``dict``) is stored with
        the entry (``ndoffload_attrs`` in its ``.meta.json``).
        ``recomputable=True`` lets the disk budget delete the entry.
        ``caching`` and ``automatic_offloading`` set the entry's GSEGUtils
        flags (``enable_caching``: the budget may spill it;
        ``automatic_offloading``: unmapped again after each read).

        Raises ``TypeError`` for an unsupported dtype (object arrays,
        strings, float16, ...), ``ValueError`` for an invalid key,
        ``MemoryError`` when the copy does not fit in memory.
        """
        key = _check_key(key)
        a = _as_storable(array)
        attrs_json = None if attrs is None else _attrs_json(attrs)
        self._handle().insert(
            key,
            a,
            durable=bool(durable),
            attrs=attrs_json,
            recomputable=bool(recomputable),
            caching=caching,
            automatic_offloading=automatic_offloading,
        )

    def attrs(self, key: str) -> dict:
        """The user attributes of ``key`` (``{}`` when it has none)."""
        return json.loads(self._handle().attrs(_check_key(key)))

    def set_attrs(self, key: str, attrs: dict) -> None:
        """Replaces the attributes of ``key`` (durably when it is on disk;
        the data file is not touched)."""
        self._handle().set_attrs(_check_key(key), _attrs_json(attrs))

    def info(self, key: str) -> dict:
        """A summary of ``key`` without reading its data: ``name``,
        ``dtype``, ``shape``, ``state`` (``"in_memory"``, ``"mapped"``,
        ``"offloaded"``), ``nbytes``, its flags and ``attrs``."""
        d = self._handle().info(_check_key(key))
        d["attrs"] = json.loads(d["attrs"])
        return d

    def get_or_compute(self, key: str, fn: Callable[[], Any]) -> np.ndarray:
        """The entry ``key``; when missing, ``fn()`` is called, its array
        stored (recomputable) and returned. Threads and processes asking for
        the same key at once compute it once: the others wait and read the
        stored value. An exception of ``fn`` propagates, and nothing is
        stored."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        return self._handle().get_or_compute(_check_key(key), fn)

    def flush(self) -> None:
        """Writes every entry not yet on disk, durably (one round of
        syncs). After it returns, a power cut loses nothing."""
        self._handle().flush()

    def offload(self, keys: Union[str, Iterable[str], None] = None) -> list:
        """Writes ``keys`` (every entry when ``None``) and frees their RAM;
        a later read maps them. Entries Python holds arrays of are written
        but stay where they are; their keys are returned."""
        if isinstance(keys, str):
            keys = [keys]
        elif keys is not None:
            keys = [_check_key(k) for k in keys]
        return self._handle().offload(keys)

    def prefetch(self, keys: Iterable[str]) -> int:
        """Asks the kernel to read ``keys``' files ahead (up to the memory
        budget); returns the bytes requested."""
        if isinstance(keys, str):
            keys = [keys]
        return self._handle().prefetch([_check_key(k) for k in keys])

    def refresh(self) -> None:
        """Sees entries other processes added, replaced or removed."""
        self._handle().refresh()

    def stats(self) -> dict:
        """Hits, misses, loads, computes, evictions, bytes resident and on
        disk, budgets, ... as a ``dict``."""
        return self._handle().stats()

    # -- lifetime ---------------------------------------------------------

    @property
    def path(self) -> str:
        return self._args["path"]

    @property
    def read_only(self) -> bool:
        return self._args["read_only"]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flushes and releases the store. Arrays Python holds stay valid.
        Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            self._h.abandon()
            return
        self._h.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self):
        # Pickled for another process (multiprocessing's spawn): what this
        # handle holds is written first, and the child opens the store again.
        if not self._closed and not self.read_only and self._pid == os.getpid():
            self.flush()
        return (_reopen, (self._args,))


def _reopen(args: dict) -> Store:
    s = Store.__new__(Store)
    s._args = dict(args)
    s._closed = False
    s._open()
    return s


def _attrs_json(attrs: Any) -> str:
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict, not {type(attrs).__name__}")
    try:
        return json.dumps(attrs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"attrs must be JSON-serializable: {e}") from None
