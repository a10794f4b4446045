"""Type stubs of ndoffload (see the module's docstring)."""

import os
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

from ._ndoffload import (
    ClosedError as ClosedError,
    ConflictError as ConflictError,
    CorruptError as CorruptError,
    InUseError as InUseError,
    LockedError as LockedError,
    ReadOnlyError as ReadOnlyError,
    RemoteError as RemoteError,
    StoreError as StoreError,
)

__version__: str
SUPPORTED_DTYPES: tuple[np.dtype[Any], ...]
Size = Union[int, str, None]

class Store(MutableMapping[str, np.ndarray]):
    """A persistent, crash-safe mapping of names to numpy arrays."""

    def __init__(
        self,
        path: Union[str, os.PathLike[str]],
        memory_budget: Size = "2GiB",
        disk_budget: Size = None,
        remote: Optional[str] = None,
        read_only: bool = False,
        *,
        exclusive: bool = False,
        lock_timeout: Optional[float] = None,
        write_behind: Optional[tuple[int, Union[int, str]]] = None,
        create: bool = True,
    ) -> None: ...
    def __getitem__(self, key: str) -> np.ndarray:
        """A read-only array over the entry's data (no copy); KeyError when missing."""
    def __setitem__(self, key: str, value: npt.ArrayLike) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def insert(
        self,
        key: str,
        array: npt.ArrayLike,
        durable: bool = False,
        attrs: Optional[dict[str, Any]] = None,
        recomputable: bool = False,
        *,
        caching: Optional[bool] = None,
        automatic_offloading: Optional[bool] = None,
    ) -> None:
        """Inserts or replaces `key` with a copy of `array` (durably with `durable`)."""
    def attrs(self, key: str) -> dict[str, Any]: ...
    def set_attrs(self, key: str, attrs: dict[str, Any]) -> None: ...
    def info(self, key: str) -> dict[str, Any]:
        """name, dtype, shape, state, nbytes, flags and attrs of `key`."""
    def get_or_compute(self, key: str, fn: Callable[[], npt.ArrayLike]) -> np.ndarray:
        """The entry, computed once across threads and processes when missing."""
    def flush(self) -> None: ...
    def offload(self, keys: Union[str, Iterable[str], None] = None) -> list[str]:
        """Writes and frees `keys`; returns those Python holds arrays of."""
    def prefetch(self, keys: Iterable[str]) -> int: ...
    def refresh(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def path(self) -> str: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...
