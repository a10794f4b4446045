"""A drop-in for GSEGUtils 0.6.0's ``DiskBackedStore``, on the same files.

Code written for GSEGUtils changes one import line::

    # from GSEGUtils.lazy_disk_cache import DiskBackedStore, LazyDiskCacheConfig, DiskBackedNDArray
    from ndoffload.gsegutils import DiskBackedStore, LazyDiskCacheConfig, DiskBackedNDArray

    config = LazyDiskCacheConfig(cache_path=Path("cache"), enable_caching=True)
    store = DiskBackedStore(config=config, factory=DiskBackedNDArray)
    store.add_data_to_store("xyz", points)
    store.offload(pickle_container=True)           # writes xyz.npy + xyz.meta.json
    np.asarray(store["xyz"])                       # a copy, as GSEGUtils gives

The constructor takes GSEGUtils' arguments (``config``, ``factory``,
``value_type``, ``validator``); the store is a ``MutableMapping`` of keys to
entries (:class:`DiskBackedNDArray`), with ``add_data_to_store``,
``offload``, ``purge``, ``store``, ``cache_dir``, ``keys``/``values``/
``items``; entries have GSEGUtils' ``offload``/``load``/``data``/
``__array__``/ufunc surface. A directory GSEGUtils wrote opens here, and
GSEGUtils opens what this module writes.

What is deliberately different (see ``docs/python.md``):

* **Crash safety and the budget.** Entries live in an ``ndoffload.Store``:
  every pair is published crash-safely (unique temporary names, both
  files synced before the renames, recovery at open), and a
  ``memory_budget`` (keyword, default none, as GSEGUtils) spills entries to
  their pairs. Entries are also written by ``flush()`` and ``close()``
  (and when the store is garbage-collected): data added is never lost at
  exit. GSEGUtils writes a pair only in ``offload(pickle_container=True)``
  and when pickled.
* **``offload()`` writes the pair**, with or without ``pickle_container``:
  no ``K.dat`` working copy is ever written.
* **Arrays read are read-only** views of the stored data (``entry.data``,
  ``entry[...]``); ``np.asarray(entry)`` is a copy, as in GSEGUtils. To
  change an entry, assign a new array.
* **``purge_disk_on_gc`` never deletes a pair** (nor does GSEGUtils'); no
  flag deletes anything. Pairs this module writes carry
  ``"purge_disk_on_gc": false`` (the flag only governs GSEGUtils' ``.dat``
  working copies, which are never made here); the entry object keeps the
  value it was given.
* ``del store[key]`` forgets the key in this handle and leaves its pair on
  disk, as GSEGUtils does; a value inserted and deleted before it was ever
  written is dropped, but one replacing a pair already on disk is written
  at close (a deleted value is never the reason old data is lost).
  ``purge(key)`` deletes the pair.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from functools import wraps
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Optional, TypedDict, Union

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import Store, _as_storable

__all__ = [
    "LazyDiskCache",
    "LazyDiskCacheKw",
    "LazyDiskCacheConfig",
    "DiskBackedNDArray",
    "DiskBackedStore",
    "StoreKeyError",
    "StoreContainmentError",
    "StorePurgeRefusedError",
    "StorePurgeForeignArtefactError",
    "StorePurgeAliasedArtefactError",
    "StorePurgeIncompleteError",
    "is_valid_store_key",
    "get_npy_path",
    "get_meta_path",
    "get_legacy_pickle_path",
]

NPY_SUFFIX = ".npy"
META_SUFFIX = ".meta.json"
LEGACY_PICKLE_SUFFIX = ".pkl"


class StoreKeyError(ValueError):
    """A key breaks the store-key rule (as GSEGUtils' ``StoreKeyError``)."""


class StoreContainmentError(StoreKeyError):
    """A path built from a key would land outside the cache directory."""


class StorePurgeRefusedError(RuntimeError):
    """``purge`` refused and touched nothing (called from another process
    than the one that constructed the store)."""


class StorePurgeForeignArtefactError(StorePurgeRefusedError):
    """Kept for GSEGUtils' name; never raised here (purge never follows a
    link)."""


class StorePurgeAliasedArtefactError(StorePurgeRefusedError):
    """Kept for GSEGUtils' name; never raised here (purge never follows a
    link)."""


class StorePurgeIncompleteError(OSError):
    """``purge`` could not remove the pair."""


_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789¹²³"}


def _key_problem(key: object) -> Optional[str]:
    if not isinstance(key, str):
        return f"is not a str ({type(key).__name__})"
    if key in ("", ".", ".."):
        return "is empty or a reserved path name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "contains a control character"
    if ":" in key or key.startswith("/") or key.startswith("\\"):
        return "is an absolute or drive-relative path"
    if "/" in key or "\\" in key:
        return "contains a path separator"
    stem = key.split(".", 1)[0]
    if "." in key:
        stem = stem.rstrip(" ")
    if stem.upper() in _DEVICES:
        return "is a reserved device name"
    if key.endswith((" ", ".")):
        return "ends in a space or a dot"
    if len(key.encode("utf-8")) > 200:
        return "is longer than 200 bytes (its file names would exceed the file-name limit)"
    return None


def is_valid_store_key(key: object) -> bool:
    """Whether ``key`` may name an entry (GSEGUtils' rule, and at most 200
    bytes)."""
    return _key_problem(key) is None


def validate_store_key(key: object, cache_dir: Optional[Path] = None) -> str:
    problem = _key_problem(key)
    if problem is not None:
        where = f" in {str(cache_dir)!r}" if cache_dir is not None else ""
        raise StoreKeyError(f"Invalid store key {key!r}{where}: {problem}")
    return key  # type: ignore[return-value]


def get_npy_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{validate_store_key(key, cache_dir)}{NPY_SUFFIX}"


def get_meta_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{validate_store_key(key, cache_dir)}{META_SUFFIX}"


def get_legacy_pickle_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{validate_store_key(key, cache_dir)}{LEGACY_PICKLE_SUFFIX}"


class LazyDiskCacheKw(TypedDict, total=False):
    """Keyword arguments of the cache constructors (GSEGUtils' names)."""

    enable_caching: bool
    cache_path: Optional[Path]
    purge_disk_on_gc: bool
    automatic_offloading: bool


@dataclasses.dataclass(frozen=True)
class LazyDiskCacheConfig:
    """The store's configuration, as GSEGUtils' frozen dataclass."""

    enable_caching: bool = False
    cache_path: Optional[Path] = None
    purge_disk_on_gc: bool = True
    automatic_offloading: bool = False

    def __post_init__(self) -> None:
        if self.cache_path is not None and not isinstance(self.cache_path, Path):
            object.__setattr__(self, "cache_path", Path(self.cache_path))

    def as_kwargs(self) -> LazyDiskCacheKw:
        return LazyDiskCacheKw(
            enable_caching=self.enable_caching,
            cache_path=self.cache_path,
            purge_disk_on_gc=self.purge_disk_on_gc,
            automatic_offloading=self.automatic_offloading,
        )

    @classmethod
    def from_kwargs(cls, settings: LazyDiskCacheKw) -> "LazyDiskCacheConfig":
        return cls(**settings)

    def updated(self, **overrides: Any) -> "LazyDiskCacheConfig":
        return dataclasses.replace(self, **overrides)

    def extend_cache_path(self, new_folder: str) -> "LazyDiskCacheConfig":
        if self.cache_path is None:
            return self
        return dataclasses.replace(self, cache_path=self.cache_path / new_folder)


class LazyDiskCache:
    """The base of cache entries: flags, ``offload``/``load``, and where the
    data is (its own, or a store's entry once inserted)."""

    def __init__(self, **settings: Any) -> None:
        self._enable_caching = bool(settings.get("enable_caching", False))
        cp = settings.get("cache_path")
        self._cache_path = None if cp is None else Path(cp)
        self._purge_disk_on_gc = bool(settings.get("purge_disk_on_gc", True))
        self._automatic_offloading = bool(settings.get("automatic_offloading", False))
        self._offloaded = False
        self._spill: Optional[str] = None  # a standalone entry's offloaded copy
        self._store_ref: Optional[Callable[[], Any]] = None
        self._key: Optional[str] = None

    # -- where the data is --------------------------------------------

    def _bound(self) -> Optional[Store]:
        if self._store_ref is None:
            return None
        return self._store_ref()

    def _bind(self, store: Store, key: str) -> None:
        self._store_ref = weakref.ref(store)
        self._key = key
        self._drop_buffer()
        self._offloaded = False

    @staticmethod
    def ensure_loaded(func: Callable) -> Callable:
        """Loads the entry before ``func`` and, with automatic offloading,
        offloads it again after."""

        @wraps(func)
        def wrapper(self: "LazyDiskCache", *args: Any, **kwargs: Any) -> Any:
            was = self.offloaded
            if was:
                self.load()
            try:
                return func(self, *args, **kwargs)
            finally:
                if was and self._automatic_offloading:
                    self.offload()

        return wrapper

    # -- flags ----------------------------------------------------------

    @property
    def cache_enabled(self) -> bool:
        return self._enable_caching

    @property
    def automatic_offloading(self) -> bool:
        return self._automatic_offloading

    @property
    def purge_disk_on_gc(self) -> bool:
        return self._purge_disk_on_gc

    @property
    def cache_path(self) -> Optional[Path]:
        return self._cache_path

    @property
    def offloaded(self) -> bool:
        return self._offloaded

    def enable_caching(self) -> None:
        self._enable_caching = True

    def disable_caching(self) -> None:
        if self._offloaded:
            self.load()
        self._enable_caching = False

    def enable_purge(self) -> None:
        self._purge_disk_on_gc = True

    def disable_purge(self) -> None:
        self._purge_disk_on_gc = False

    def on_load(self) -> None:
        """Runs after a load (for subclasses)."""

    def on_offload(self) -> None:
        """Runs after an offload (for subclasses)."""

    # -- offload / load ---------------------------------------------------

    def offload(self) -> None:
        """Writes the entry and frees its RAM: a store entry is published
        as its pair; a standalone entry is saved to a private temporary
        ``.npy``."""
        if self._offloaded:
            return
        store = self._bound()
        if store is not None:
            store.offload([self._key])
        else:
            _, _, arr = self._describe_buffer()
            fd, path = tempfile.mkstemp(suffix=NPY_SUFFIX, prefix="ndoffload-entry-")
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(arr), allow_pickle=False)
            self._spill = path
            weakref.finalize(self, _unlink_quietly, path)
        self._drop_buffer()
        self._offloaded = True
        self.on_offload()

    def load(self, mode: str = "r+") -> None:
        """Brings the data back: a store entry's read-only array (whatever
        ``mode``), a standalone entry's copy mapped with ``mode``."""
        store = self._bound()
        if store is not None:
            self._set_buffer(store[self._key])
        elif self._spill is not None:
            self._set_buffer(np.load(self._spill, mmap_mode=mode if mode in ("r", "r+", "c") else "r+"))
        self._offloaded = False
        self.on_load()

    # -- what subclasses provide ----------------------------------------

    def _describe_buffer(self) -> tuple:
        raise NotImplementedError

    def _describe_shape_dtype(self) -> tuple:
        raise NotImplementedError

    def _drop_buffer(self) -> None:
        raise NotImplementedError

    def _set_buffer(self, buf: np.ndarray) -> None:
        raise NotImplementedError


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class DiskBackedNDArray(LazyDiskCache, NDArrayOperatorsMixin):
    """One array as a cache entry, usable where an ``ndarray`` is: indexing,
    ufuncs, ``np.asarray`` (a copy, as in GSEGUtils).

    Standalone, it holds ``data`` in RAM. Inserted into a
    :class:`DiskBackedStore`, its data is the store's entry: read (without a
    copy, read-only) when used.
    """

    def __init__(self, data: Any, **settings: Any) -> None:
        self._data_ram: Optional[np.ndarray] = np.asarray(data)
        self._shape = self._data_ram.shape
        self._dtype = self._data_ram.dtype
        super().__init__(**settings)

    @property
    def _data(self) -> np.ndarray:
        if self._data_ram is None:
            store = self._bound()
            if store is None and self._spill is None:
                raise AttributeError("_data")
            self.load()
        return self._data_ram  # type: ignore[return-value]

    @property
    def data(self) -> np.ndarray:
        """The array (read-only for a store's entry), loaded on demand."""
        return self._data

    @property
    def shape(self) -> tuple:
        return tuple(self._shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @LazyDiskCache.ensure_loaded
    def __array__(self, dtype: Any = None, *, copy: Optional[bool] = None) -> np.ndarray:
        if copy is False:
            raise ValueError("`copy=False` isn't supported. A copy is always created.")
        arr = self._data
        return arr.astype(dtype, copy=True) if dtype else arr.copy()

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        def unwrap(x: Any) -> Any:
            return x._data if isinstance(x, DiskBackedNDArray) else x

        inputs = tuple(unwrap(x) for x in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(unwrap(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    @LazyDiskCache.ensure_loaded
    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __repr__(self) -> str:
        where = f"entry {self._key!r}" if self._key is not None else "standalone"
        return f"<DiskBackedNDArray {self._shape} {self._dtype} ({where})>"

    def _describe_buffer(self) -> tuple:
        return self._shape, self._dtype, self._data

    def _describe_shape_dtype(self) -> tuple:
        return self._shape, self._dtype

    def _drop_buffer(self) -> None:
        self._data_ram = None

    def _set_buffer(self, buf: np.ndarray) -> None:
        self._data_ram = buf


def _array_of(value: Any) -> np.ndarray:
    """The data of an entry object (this module's, GSEGUtils', or any
    LazyDiskCache-like object)."""
    if hasattr(value, "_describe_buffer"):
        return np.asarray(value._describe_buffer()[2])
    return np.asarray(value)


class DiskBackedStore(MutableMapping):
    """GSEGUtils' ``DiskBackedStore`` over an :class:`ndoffload.Store`.

    Parameters
    ----------
    config : LazyDiskCacheConfig
        ``cache_path`` is the store directory (a temporary one when
        ``None``); the flags are the defaults of entries added.
    factory : callable
        ``factory(data, enable_caching=..., cache_path=...,
        automatic_offloading=..., purge_disk_on_gc=...)`` wraps arrays given
        to :meth:`add_data_to_store` (usually :class:`DiskBackedNDArray`).
    value_type : type or tuple of types, optional
        Every value inserted must be an instance.
    validator : callable, optional
        Every value inserted must pass it.
    memory_budget : int or str, optional
        This module's addition (keyword): entries past it spill to their
        pairs. Default: none (everything stays in RAM, as GSEGUtils).
    """

    def __init__(
        self,
        *,
        config: LazyDiskCacheConfig = LazyDiskCacheConfig(),
        factory: Callable[..., Any],
        value_type: Any = None,
        validator: Optional[Callable[[object], bool]] = None,
        memory_budget: Union[int, str, None] = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        if config.cache_path is None or Path(config.cache_path).is_file():
            self._cache_dir = Path(tempfile.mkdtemp())
        else:
            self._cache_dir = Path(config.cache_path)
        self._enable_caching = config.enable_caching
        self._automatic_offloading = config.automatic_offloading and config.cache_path is not None
        self._purge_disk_on_gc = config.purge_disk_on_gc
        self._factory = factory
        self._value_type = value_type
        self._validator = validator
        self._owner_pid = os.getpid()
        self._memory_budget = memory_budget
        self._s = Store(self._cache_dir, memory_budget=memory_budget)
        self._store: dict[str, Any] = {k: None for k in self._s}

    # -- checks -----------------------------------------------------------

    def _check_T(self, value: object) -> Any:
        if not (isinstance(value, LazyDiskCache) or hasattr(value, "_describe_buffer")):
            raise TypeError(f"value must be LazyDiskCache; got {type(value)}")
        if self._value_type is not None and not isinstance(value, self._value_type):
            raise TypeError(f"value must be {self._value_type}; got {type(value)}")
        if self._validator is not None and not self._validator(value):
            raise TypeError(f"value rejected by validator; got {type(value)}")
        return value

    def _put(self, key: str, value: Any) -> None:
        data = _as_storable(_array_of(value))
        self._s.insert(
            key,
            data,
            caching=bool(getattr(value, "cache_enabled", self._enable_caching)),
            automatic_offloading=bool(getattr(value, "automatic_offloading", self._automatic_offloading)),
        )
        if isinstance(value, LazyDiskCache):
            value._bind(self._s, key)
        self._store[key] = value

    # -- the mapping ----------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        validate_store_key(key, self._cache_dir)
        obj = self._store.get(key)
        if obj is not None:
            return obj
        obj = self._load_entry(key)
        self._store[key] = obj
        return obj

    def _load_entry(self, key: str) -> Any:
        try:
            info = self._s.info(key)
        except KeyError:
            raise KeyError(key) from None
        entry = DiskBackedNDArray.__new__(DiskBackedNDArray)
        LazyDiskCache.__init__(
            entry,
            enable_caching=info["enable_caching"],
            cache_path=get_npy_path(self._cache_dir, key),
            purge_disk_on_gc=info["purge_disk_on_gc"],
            automatic_offloading=info["automatic_offloading"],
        )
        entry._data_ram = None
        entry._shape = tuple(info["shape"])
        entry._dtype = np.dtype(info["dtype"])
        entry._bind(self._s, key)
        return entry

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except StoreContainmentError:
            raise
        except (KeyError, StoreKeyError):
            return default

    def pop(self, key: str, default: Any = ...) -> Any:  # type: ignore[override]
        try:
            value = self[key]
        except (KeyError, StoreKeyError):
            if key in self:
                del self[key]
            if default is ...:
                raise
            return default
        del self[key]
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        validate_store_key(key, self._cache_dir)
        self._put(key, self._check_T(value))

    def __delitem__(self, key: str) -> None:
        if key not in self._store:
            raise KeyError(key)
        del self._store[key]
        if not get_npy_path(self._cache_dir, key).exists():
            # Never written: nothing on disk to keep.
            try:
                del self._s[key]
            except KeyError:
                pass

    def clear(self) -> None:
        for key in list(self._store):
            del self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"<DiskBackedStore({list(self._store.keys())})>"

    def keys(self) -> list:  # type: ignore[override]
        return list(self._store.keys())

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self._store.values())

    def items(self) -> Iterator[tuple]:  # type: ignore[override]
        return iter(self._store.items())

    @property
    def store(self) -> Mapping[str, Any]:
        return MappingProxyType(self._store)

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    # -- GSEGUtils' operations --------------------------------------------

    def add_data_to_store(
        self,
        key: str,
        data: Any,
        *,
        enable_caching_override: Optional[bool] = None,
        automatic_offloading_override: Optional[bool] = None,
        purge_disk_on_gc_override: Optional[bool] = None,
    ) -> None:
        """Wraps ``data`` with the factory and inserts it under ``key``;
        ``KeyError`` if the key is present."""
        validate_store_key(key, self._cache_dir)
        if key in self:
            raise KeyError(f"Key {key} already exists in store.")
        pick = lambda o, d: o if o is not None else d  # noqa: E731
        entry = self._factory(
            data,
            enable_caching=pick(enable_caching_override, self._enable_caching),
            cache_path=get_npy_path(self._cache_dir, key),
            automatic_offloading=pick(automatic_offloading_override, self._automatic_offloading),
            purge_disk_on_gc=pick(purge_disk_on_gc_override, self._purge_disk_on_gc),
        )
        self._put(key, self._check_T(entry))

    def offload(self, keys: Union[str, list, None] = None, pickle_container: bool = False) -> None:
        """Writes the entries ``keys`` (all when ``None``) as their pairs and
        frees their RAM (entries with caching disabled are skipped, as in
        GSEGUtils). With ``pickle_container`` the in-memory reference is
        dropped too; the next access reloads it."""
        if keys is None:
            keys = self.keys()
        if isinstance(keys, str):
            keys = [keys]
        for key in keys:
            obj = self._store[key]
            if obj is None:
                continue
            if not getattr(obj, "cache_enabled", True):
                continue
            if pickle_container:
                if not isinstance(obj, LazyDiskCache):
                    self._put(key, obj)
                self._s.offload([key])
                self._store[key] = None
            else:
                obj.offload()

    def purge(self, key: str) -> None:
        """Deletes the pair of ``key`` (durably) and forgets the key."""
        validate_store_key(key, self._cache_dir)
        if os.getpid() != self._owner_pid:
            raise StorePurgeRefusedError(
                f"Refusing to purge {key!r}: this store was constructed by process {self._owner_pid} "
                f"and purge was called from process {os.getpid()}."
            )
        tracked = key in self._store
        try:
            removed = self._s._handle().remove(key)
        except OSError as e:
            raise StorePurgeIncompleteError(f"Purge of {key!r} was incomplete: {e}") from e
        if not tracked and not removed:
            raise KeyError(key)
        self._store.pop(key, None)

    def flush(self) -> None:
        """This module's addition: writes every entry not yet on disk,
        durably."""
        self._s.flush()

    def close(self) -> None:
        """This module's addition: flushes and releases the store."""
        self._s.close()

    def __enter__(self) -> "DiskBackedStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        if not self._s.closed:
            self._s.flush()
        return {
            "cache_dir": self._cache_dir,
            "config": (self._enable_caching, self._automatic_offloading, self._purge_disk_on_gc),
            "factory": self._factory,
            "value_type": self._value_type,
            "validator": self._validator,
            "memory_budget": self._memory_budget,
            "keys": list(self._store),
        }

    def __setstate__(self, state: dict) -> None:
        self._cache_dir = Path(state["cache_dir"])
        self._enable_caching, self._automatic_offloading, self._purge_disk_on_gc = state["config"]
        self._factory = state["factory"]
        self._value_type = state["value_type"]
        self._validator = state["validator"]
        self._memory_budget = state["memory_budget"]
        self._owner_pid = os.getpid()
        for k in state["keys"]:
            validate_store_key(k, self._cache_dir)
        self._s = Store(self._cache_dir, memory_budget=self._memory_budget)
        self._store = {k: None for k in state["keys"]}
