//! Object storage as the durable home of a store (cargo feature `remote`).
//!
//! [`StoreBuilder::remote`](crate::StoreBuilder::remote) opens a
//! [`DiskBackedStore`] whose entries live under a
//! URL prefix (`s3://bucket/prefix`, `file:///dir`, `memory:///prefix`),
//! with the store's directory as their local cache: entries are downloaded
//! into it and memory-mapped, so reads stay zero-copy, and the store's disk
//! budget drops clean cached copies least-recently-used. Writes are staged
//! in the cache directory and kept there until their remote commit
//! succeeded. The cache directory is shared by processes as any store
//! directory is: readers take no lock, writers register.
//!
//! The commit protocol (docs/format.md, "Remote stores"): each write
//! uploads a new immutable data object (a plain `.npy`), then swaps the
//! entry's metadata object with a conditional PUT. A reader on any node sees
//! the complete old or the complete new value; two writers never silently
//! lose an update: the loser gets [`Error::Conflict`] naming the key.
//!
//! The API is synchronous: a private tokio runtime owned by the store runs
//! `object_store`'s requests. Do not call it from inside an async runtime's
//! worker thread (use `spawn_blocking`).
//!
//! This module holds the options ([`RemoteOptions`]), garbage collection
//! ([`DiskBackedStore::gc`](crate::DiskBackedStore::gc)), windows
//! ([`DiskBackedStore::read_window`](crate::DiskBackedStore::read_window):
//! a box of an entry fetched by ranged GETs of only its bytes) and
//! inspection without a store ([`inspect_remote`], [`list_entries`],
//! [`verify`]).
//!
//! # Progress
//!
//! Transfers report their progress as `tracing` events at DEBUG level,
//! target `ndarray_offload::remote`, message `"transfer progress"`, with
//! the fields `key` (the entry), `direction` (`"upload"`, `"download"` or
//! `"window"`), `bytes_done` and `bytes_total`: one when a transfer starts
//! (`bytes_done = 0`), then at most one per part and per whole percent of
//! `bytes_total`, and one when its last byte is done. An upload from the
//! cache directory counts a part done once the upload has room for the
//! next part (at most [`TransferOptions::concurrency`] parts are still
//! being sent); an upload from memory (a durable insert of an array in
//! RAM) once the part is sent. A
//! subscriber (or a `tracing-subscriber` layer filtered on that target)
//! draws a progress bar from them; see the README, "Remote stores".
//!
//! # Examples
//!
//! ```
//! use ndarray::{array, Ix1};
//! use ndarray_offload::StoreBuilder;
//!
//! let cache = tempfile::tempdir()?;
//! let store = StoreBuilder::new(cache.path()).remote("memory:///bucket/prefix").open()?;
//! store.insert_durable("a", array![1.0f64, 2.0])?;
//! let a = store.get::<f64, Ix1>("a")?;
//! assert_eq!(a.read()?.view(), array![1.0, 2.0]);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod backend;
pub(crate) mod boot;
mod gc;
mod inspect;
mod protocol;
mod transfer;
mod url;
mod window;
mod window_cache;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::store::RemoteStats;
pub use gc::GcReport;
pub use inspect::{inspect_remote, inspect_remote_with, list_entries, verify};
pub use transfer::TransferOptions;
pub use url::NetOptions;
pub use window::WindowView;

use crate::error::{Error, RemoteErrorKind, Result};
use crate::npy::NpyInfo;
use crate::DiskBackedStore;
use protocol::{Head, RemoteMeta};
use transfer::UploadError;
use url::Location;

/// Options of a store over an object store
/// ([`StoreBuilder::remote_with`](crate::StoreBuilder::remote_with)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// Timeouts and retries of requests.
    pub net: NetOptions,
    /// Part sizes and parallelism of transfers.
    pub transfer: TransferOptions,
    /// Requests in flight at once for a durable batch
    /// ([`insert_many`](crate::DiskBackedStore::insert_many),
    /// [`insert_batch`](crate::DiskBackedStore::insert_batch),
    /// [`flush`](crate::DiskBackedStore::flush)): its entries' uploads
    /// (each object, or each part of a large one) and their commits
    /// together (default 8, at least 1). A batch holds at most this many
    /// parts of [`TransferOptions::part_size`] bytes in memory.
    pub batch_concurrency: usize,
    /// How long an unreferenced data object is kept before `gc` deletes it
    /// (default: one hour). Readers that read an entry's metadata before a
    /// replace have this long to download the old data.
    pub grace: Duration,
    /// Extra `object_store` configuration, applied after the environment
    /// (for example `("aws_endpoint", "http://127.0.0.1:9000")`,
    /// `("aws_allow_http", "true")`): what the `AWS_*` variables would set.
    pub config: Vec<(String, String)>,
    /// Open without the object store (default `false`): no request is
    /// made, and the handle reads what the local cache directory already
    /// holds: each entry whose copy of a committed data object it holds,
    /// and the writes staged there and not yet committed. The store must be
    /// opened [`read_only(true)`](crate::StoreBuilder::read_only); a name
    /// the cache does not hold is [`Error::KeyNotFound`]. For reading while
    /// the server is unreachable; see also [`with_offline`](Self::with_offline).
    pub offline: bool,
}

impl RemoteOptions {
    /// Sets [`offline`](Self::offline): read what the local cache holds,
    /// without the object store.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::remote::RemoteOptions;
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let cache = tempfile::tempdir()?;
    /// let online = StoreBuilder::new(cache.path()).remote("memory:///bucket/p").open()?;
    /// online.insert_durable("a", array![1.0f64, 2.0])?;
    /// drop(online);
    /// // The server is unreachable now (here: a new, empty memory store):
    /// // the entries this cache holds still read.
    /// let offline = RemoteOptions::default().with_offline(true);
    /// let store = StoreBuilder::new(cache.path())
    ///     .remote_with("memory:///bucket/p", offline)
    ///     .read_only(true)
    ///     .open()?;
    /// assert_eq!(store.keys(), ["a"]);
    /// assert_eq!(store.get::<f64, Ix1>("a")?.read()?.sum(), 3.0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_offline(mut self, on: bool) -> Self {
        self.offline = on;
        self
    }
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            net: NetOptions::default(),
            transfer: TransferOptions::default(),
            batch_concurrency: 8,
            grace: Duration::from_secs(3600),
            config: Vec::new(),
            offline: false,
        }
    }
}

/// One entry of a remote store, as listed by [`list_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteEntry {
    /// The entry name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its numpy dtype string.
    pub dtype: String,
    /// Size of its data object in bytes.
    pub size: u64,
    /// Its data object, relative to the prefix.
    pub data: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ndoffload-remote")
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            path: PathBuf::new(),
            op: "start the object-store runtime",
            source: e,
        })
}

fn upload_err(loc: &Location, op: &'static str, name: &str, url: String, e: UploadError) -> Error {
    match e {
        UploadError::Remote(e) => protocol::remote_err(loc, op, name, url, e),
        UploadError::Local(e) => e,
    }
}

/// Adds to an unreachable server's error at open how to read what the
/// cache directory holds anyway (`cached` entries).
fn offline_hint(e: Error, cached: usize) -> Error {
    match e {
        Error::Remote {
            op,
            key,
            url,
            kind: kind @ (RemoteErrorKind::Network | RemoteErrorKind::Timeout),
            source,
        } if cached > 0 => Error::Remote {
            op,
            key,
            url,
            kind,
            source: Box::new(protocol::Explained {
                message: format!(
                    "{source}; to read the {cached} {} this cache directory holds without the \
                     server, open with RemoteOptions::default().with_offline(true) (read-only)",
                    if cached == 1 { "entry" } else { "entries" }
                ),
                inner: source,
            }),
        },
        e => e,
    }
}

/// The calls of a store over an object store.
impl DiskBackedStore {
    fn object_backend(&self) -> Option<&backend::ObjectBackend> {
        self.storage().as_any().downcast_ref()
    }

    /// Runs a garbage-collection pass over the object store
    /// ([`StoreBuilder::remote`](crate::StoreBuilder::remote)) with the
    /// grace period of its [`RemoteOptions`]: marks the data objects no
    /// metadata object names, and deletes those marked longer ago than the
    /// grace period. Only objects of the store's own naming form are ever
    /// deleted. A store over a local directory has nothing to collect (an
    /// empty report).
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] (the prefix cannot be listed, or a metadata object
    /// cannot be read for a reason that is not its own: nothing is deleted
    /// then), [`Error::ReadOnly`] for a store opened offline. A malformed
    /// metadata object does not stop the pass: the data objects of its
    /// entry are kept ([`GcReport::malformed`]); objects under `data/` and
    /// `gc/` of another naming form are never deleted
    /// ([`GcReport::foreign`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let cache = tempfile::tempdir()?;
    /// let store = StoreBuilder::new(cache.path()).remote("memory:///b/gc").open()?;
    /// store.insert_durable("a", array![1.0f64])?;
    /// store.insert_durable("a", array![2.0f64])?; // the first data object is unreferenced
    /// let report = store.gc_with_grace(std::time::Duration::ZERO)?;
    /// assert_eq!(report.deleted, 1);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn gc(&self) -> Result<GcReport> {
        match self.object_backend() {
            Some(b) => b.gc(None),
            None => Ok(GcReport::default()),
        }
    }

    /// As [`gc`](Self::gc), with `grace` instead of the options' grace
    /// period. A zero grace deletes every unreferenced data object at once:
    /// use it only while no other handle writes or reads.
    ///
    /// # Errors
    ///
    /// As [`gc`](Self::gc).
    pub fn gc_with_grace(&self, grace: Duration) -> Result<GcReport> {
        match self.object_backend() {
            Some(b) => b.gc(Some(grace)),
            None => Ok(GcReport::default()),
        }
    }
}
