//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the crate reports.
///
/// Each variant names the file, directory or entry it concerns, so a message
/// read in a log says where to look. The enum is `#[non_exhaustive]`: match
/// with a wildcard arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory that should exist does not.
    #[error("not found: {path}")]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A store was opened at a path that is a file (or anything but a
    /// directory).
    #[error("{path} is a file, not a store directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A directory or an object-store prefix holds nothing of a store (no
    /// entry, no store file or object), where one was expected: a mistyped
    /// path or prefix. Opening a store there would create an empty one;
    /// the inspector (`ndoffload`) reports this instead.
    #[error("{location}: not a store ({reason})")]
    NotAStore {
        /// The directory or URL given.
        location: String,
        /// What was looked for, and what is there instead.
        reason: String,
    },
    /// The operating system refused access.
    #[error("permission denied while trying to {op} {path}")]
    PermissionDenied {
        /// The path that could not be accessed.
        path: PathBuf,
        /// What was being done (`"create"`, `"write"`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system has no space (or quota) left.
    #[error("no space left on device while trying to {op} {path}")]
    DiskFull {
        /// The path being written.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure.
    #[error("I/O error while trying to {op} {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file is shorter than its header or index says it must be.
    #[error("{path} is truncated: expected at least {expected} bytes, found {actual}")]
    Truncated {
        /// The short file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A file's contents are malformed (bad magic, unparsable header, bad
    /// checksum, sizes that overflow, ...).
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The malformed file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds a different element type than the one requested.
    #[error(
        "{path} holds {}, but {} was requested{}",
        crate::element::describe_dtype(found),
        crate::element::describe_dtype(expected),
        dtype_hint(found, expected)
    )]
    DtypeMismatch {
        /// The file read.
        path: PathBuf,
        /// The numpy dtype string of the requested element type.
        expected: String,
        /// The numpy dtype string found in the file.
        found: String,
    },
    /// The file holds an array of a different dimensionality than requested.
    #[error("{path} holds a {found}-dimensional array, but {expected} dimensions were requested")]
    DimensionMismatch {
        /// The file read.
        path: PathBuf,
        /// Requested number of dimensions.
        expected: usize,
        /// Number of dimensions found.
        found: usize,
    },
    /// Two descriptions of one entry disagree (for example the `.meta.json`
    /// and the `.npy` header); `path` is the file judged to be at fault.
    #[error("{path}: {field} is {found}, but {other} says {expected}")]
    Mismatch {
        /// The file at fault.
        path: PathBuf,
        /// Which field disagrees (`"shape"`, `"dtype"`).
        field: &'static str,
        /// The value in the file at fault.
        found: String,
        /// The value the other description holds.
        expected: String,
        /// The other file.
        other: PathBuf,
    },
    /// A `.meta.json` declares a schema version this crate does not read.
    #[error("{path}: unsupported schema_version {found} (this crate reads version 1)")]
    SchemaVersion {
        /// The metadata file.
        path: PathBuf,
        /// The version found, as JSON text.
        found: String,
    },
    /// A `.meta.json` names an entry class this crate does not know.
    #[error("{path}: unknown lazy_disk_cache_class {class:?}")]
    UnknownClass {
        /// The metadata file.
        path: PathBuf,
        /// The class named there.
        class: String,
    },
    /// A name is not a valid entry name (see [`EntryName`](crate::EntryName)).
    #[error("invalid name {name:?}: {rule}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A budget or size string could not be parsed.
    #[error("invalid size {input:?}{}: {reason}", option.map(|o| format!(" for {o}")).unwrap_or_default())]
    InvalidSize {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
        /// The option it was given to (`"memory_budget"`, ...), when known.
        option: Option<&'static str>,
    },
    /// User attributes that are not a JSON object.
    #[error("invalid attributes for entry {name:?}: {reason}")]
    InvalidAttrs {
        /// The entry name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No entry with this name exists.
    #[error("no entry named {name:?} in {path}")]
    KeyNotFound {
        /// The entry name.
        name: String,
        /// The store directory.
        path: PathBuf,
    },
    /// An entry exists on disk but is missing part of its pair.
    #[error("entry {name:?} in {path} is incomplete: {reason}")]
    Incomplete {
        /// The entry name.
        name: String,
        /// The store directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A lock is held by another writer: the store's lock (an exclusive
    /// open while other writers are registered, or any writable open while
    /// an exclusive writer is), or a key's compute lock a `get_or_compute`
    /// waited for longer than its timeout.
    #[error("{path} is locked by {holder}")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as its registration records it (`pid 4242 on
        /// host "node7", shared writer since 2024-04-05 19:34:38 UTC`), or
        /// what is known of the holder.
        holder: String,
    },
    /// The operation needs the array exclusively, but the calling thread
    /// holds a guard on it (from `read`/`write` of the array or of a store
    /// handle to it), or a guard of another thread that waits for one of the
    /// calling thread's guards does: waiting for the guard would never end.
    /// Drop the guard first.
    #[error("{path} is in use by a guard the calling thread would wait for forever (its own, or one of a thread waiting for its guards); drop the guard first")]
    InUse {
        /// The array's file.
        path: PathBuf,
    },
    /// A spill written behind (see `StoreBuilder::write_behind`) failed: the
    /// entry stayed in RAM, nothing was lost, and the next flush or eviction
    /// writes it again. Reported once, by the next store call that can
    /// return an error (that call itself was carried out).
    #[error("the background write of entry {name} failed (the entry stays in RAM): {source}")]
    WriteBehind {
        /// The entry.
        name: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A write was attempted through a read-only handle or mapping.
    #[error("{path} is open read-only")]
    ReadOnly {
        /// The file or directory.
        path: PathBuf,
    },
    /// An operation needed a file but the array has none (for example
    /// `load` on an array that was never offloaded).
    #[error("{path} does not exist yet: {reason}")]
    NoFile {
        /// The file the array would have.
        path: PathBuf,
        /// Why a file was needed.
        reason: &'static str,
    },
    /// Data handed to the crate does not fit what was declared (for example a
    /// chunk of the wrong shape given to a streaming writer), or a path
    /// given to the inspector is not what it must be (a FIFO, socket or
    /// device where a file or directory is expected).
    #[error("{path}: {reason}")]
    InvalidInput {
        /// The file being written, or the path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed file uses something this build cannot handle: a newer
    /// format version, or a compression whose cargo feature is disabled.
    #[error("{path}: unsupported: {reason}")]
    Unsupported {
        /// The file concerned.
        path: PathBuf,
        /// What is unsupported, and how to get support for it.
        reason: String,
    },
    /// Another writer committed the entry since this handle last saw it: an
    /// object store's conditional write (`If-Match` / `If-None-Match`)
    /// answered that the entry's metadata object changed. Nothing was
    /// overwritten; re-read the entry and decide again.
    #[error(
        "conflict on entry {key:?} at {url}: another writer committed it since this handle read it"
    )]
    Conflict {
        /// The entry name.
        key: String,
        /// The URL of the entry's metadata object.
        url: String,
    },
    /// A request to an object store failed (after the retries of its retry
    /// policy, where the failure is retryable).
    ///
    /// The message names the cause and what to do about it where the crate
    /// can tell (a variable to set, a bucket to create, no credentials, a
    /// connection refused at the endpoint, no answer within the timeout);
    /// `source` holds that explanation, and its own source the error of
    /// `object_store`.
    #[error(
        "object store error ({kind}) while trying to {op} {}: {source}",
        remote_target(key, url)
    )]
    Remote {
        /// What was being done (`"upload"`, `"commit"`, `"download"`, ...).
        op: &'static str,
        /// The entry name, or the object's name when no entry is concerned.
        key: String,
        /// The URL of the object concerned.
        url: String,
        /// The class of failure.
        kind: RemoteErrorKind,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// The class of an [`Error::Remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The object, or the bucket, does not exist (HTTP 404).
    NotFound,
    /// No credentials were found, or the server refused them or they lack
    /// permission (HTTP 401/403).
    PermissionDenied,
    /// A precondition failed (HTTP 412) outside a commit.
    Precondition,
    /// The server accepted the connection but did not answer in time (a
    /// hung or overloaded server), after the retries.
    Timeout,
    /// The server could not be reached (connection refused, unknown host)
    /// or the connection broke.
    Network,
    /// The store does not support an operation the protocol needs (for
    /// example a conditional replace on `file://`).
    Unsupported,
    /// The URL or configuration is invalid (for example a plain `http://`
    /// endpoint without `AWS_ALLOW_HTTP=true`).
    Config,
    /// Any other failure (an unexpected HTTP status, a malformed answer).
    Other,
}

impl std::fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteErrorKind::NotFound => "not found",
            RemoteErrorKind::PermissionDenied => "permission denied",
            RemoteErrorKind::Precondition => "precondition failed",
            RemoteErrorKind::Timeout => "timeout",
            RemoteErrorKind::Network => "network",
            RemoteErrorKind::Unsupported => "unsupported",
            RemoteErrorKind::Config => "configuration",
            RemoteErrorKind::Other => "other",
        })
    }
}

impl Error {
    /// Classifies an I/O error, attaching the path and the operation.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path, source },
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                Error::PermissionDenied { path, op, source }
            }
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Error::DiskFull { path, op, source }
            }
            _ => Error::Io { path, op, source },
        }
    }

    /// A [`Error::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Whether this error means the file or entry does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::KeyNotFound { .. }
                | Error::Remote {
                    kind: RemoteErrorKind::NotFound,
                    ..
                }
        )
    }
}

/// `"KEY" at URL`, or only the URL when no entry is concerned.
fn remote_target(key: &str, url: &str) -> String {
    if key.is_empty() {
        url.to_string()
    } else {
        format!("{key:?} at {url}")
    }
}

/// A hint for a dtype mismatch that a converting read resolves.
fn dtype_hint(found: &str, expected: &str) -> &'static str {
    let same_kind = found.get(1..).is_some() && found.get(1..) == expected.get(1..);
    if same_kind {
        " (another byte order: read it with `get_as`, which converts)"
    } else {
        ""
    }
}

/// Adds a path and an operation name to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
