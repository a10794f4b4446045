//! The crate's errors as Python exceptions: `KeyError` for a missing key,
//! `ValueError` / `TypeError` for bad input, `OSError` subclasses (with the
//! path) for I/O, and the package's own types for the rest, each carrying
//! the crate's message.

use ndarray_offload::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _ndoffload,
    StoreError,
    PyException,
    "An error of the store that is not an I/O error nor bad input: the base of the package's own exceptions."
);
create_exception!(
    _ndoffload,
    CorruptError,
    StoreError,
    "A file of the store is malformed, truncated, incomplete or disagrees with its pair."
);
create_exception!(
    _ndoffload,
    LockedError,
    StoreError,
    "A lock is held by another writer (an exclusive open, or a key another process computes past the lock timeout)."
);
create_exception!(
    _ndoffload,
    ConflictError,
    StoreError,
    "Another writer committed the entry first (remote stores): nothing was overwritten."
);
create_exception!(
    _ndoffload,
    InUseError,
    StoreError,
    "The entry is held by a reader the call would wait for forever."
);
create_exception!(
    _ndoffload,
    ReadOnlyError,
    StoreError,
    "A write through a store opened read-only."
);
create_exception!(_ndoffload, ClosedError, StoreError, "The store was closed.");
create_exception!(
    _ndoffload,
    RemoteError,
    PyOSError,
    "A request to the object store failed (after retries)."
);

/// An `OSError` (the subclass its errno selects) with `message` and `path`.
fn os_error(errno: Option<i32>, message: String, path: &std::path::Path) -> PyErr {
    let path = path.to_string_lossy().into_owned();
    PyOSError::new_err((errno.unwrap_or(libc::EIO), message, path))
}

/// The Python exception for `e`, with the crate's message.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::KeyNotFound { name, .. } => PyKeyError::new_err(name),
        Error::InvalidName { .. }
        | Error::InvalidSize { .. }
        | Error::InvalidAttrs { .. }
        | Error::InvalidInput { .. }
        | Error::DimensionMismatch { .. } => PyValueError::new_err(msg),
        Error::DtypeMismatch { .. } => PyTypeError::new_err(msg),
        Error::NotFound { path, source } => {
            os_error(source.raw_os_error().or(Some(libc::ENOENT)), msg, &path)
        }
        Error::NotADirectory { path } => os_error(Some(libc::ENOTDIR), msg, &path),
        Error::PermissionDenied { path, source, .. } => {
            os_error(source.raw_os_error().or(Some(libc::EACCES)), msg, &path)
        }
        Error::DiskFull { path, source, .. } => {
            os_error(source.raw_os_error().or(Some(libc::ENOSPC)), msg, &path)
        }
        Error::Io { path, source, .. } => os_error(source.raw_os_error(), msg, &path),
        Error::Truncated { .. }
        | Error::Corrupt { .. }
        | Error::Mismatch { .. }
        | Error::SchemaVersion { .. }
        | Error::UnknownClass { .. }
        | Error::Incomplete { .. } => CorruptError::new_err(msg),
        Error::Locked { .. } => LockedError::new_err(msg),
        Error::InUse { .. } => InUseError::new_err(msg),
        Error::ReadOnly { .. } => ReadOnlyError::new_err(msg),
        Error::Conflict { .. } => ConflictError::new_err(msg),
        Error::Remote { .. } => RemoteError::new_err(msg),
        _ => StoreError::new_err(msg),
    }
}

/// `Result` with the crate's error, to a `PyResult`.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// Adds the exception types to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("CorruptError", py.get_type::<CorruptError>())?;
    m.add("LockedError", py.get_type::<LockedError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("InUseError", py.get_type::<InUseError>())?;
    m.add("ReadOnlyError", py.get_type::<ReadOnlyError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    Ok(())
}
