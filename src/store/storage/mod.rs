//! The storage seam: every operation the store makes on its files goes
//! through the [`Storage`] trait, so the store's upper half (the handle,
//! entries, budget, statistics) never names a directory, a path or a
//! rename.
//!
//! [`LocalDir`] implements it today: a directory held open (`io::Dir`),
//! the lock file, and the publish, remove and recovery protocol of
//! `pair.rs`. The trait is shaped after redb's `StorageBackend` and zarrs'
//! `zarrs_storage` stores: operations name entries ([`EntryName`]), never
//! paths; data goes in as a writer function and comes out as a file to
//! map; every failure is a typed [`Error`](crate::Error).
//!
//! How other backends fit:
//!
//! * **Object store** (no rename, conditional PUT): `publish` uploads the
//!   data object, then writes the metadata object with a conditional PUT
//!   on the version it replaces (the metadata object is the commit point,
//!   as `K.meta.json`'s rename is here; [`PairJob::publish`] and
//!   [`PairJob::version`] are checked just before it); `open_data`
//!   materialises the data in a local cache file to map; `lock` is a lease
//!   object written with a conditional PUT; `recover` deletes uploads no
//!   metadata names.
//! * **Many processes on one directory**: `lock(Shared)` registers the
//!   process instead of excluding others, and `publish`/`remove` take a
//!   per-entry lock around the commit point; `list` is re-read to see
//!   other processes' entries.
//!
//! Fault injection works at both grains: `io`'s fault plan fails the N-th
//! file-system operation of a `LocalDir`, which tests the local protocol
//! step by step; `fault.rs` (feature `testing`) wraps any `Storage` and
//! fails the N-th seam call, which reaches backends without file-system
//! operations (an object store).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::meta::{EntryFlags, Meta};
use crate::error::Result;
use crate::io::{self, FileId, Found};
use crate::name::EntryName;
use crate::npy::NpyInfo;

#[cfg(feature = "testing")]
pub(crate) mod fault;
mod local;
mod pair;
mod procs;

#[cfg(feature = "testing")]
pub(crate) use local::set_read_attempts;
pub use local::LOCK_FILE;
pub(crate) use local::{read_header_of, LocalDir};
pub use procs::{WriterInfo, CRATE_DIR};

/// Where a store's entries live, and every operation the store makes on
/// them.
pub(crate) trait Storage: Send + Sync + fmt::Debug {
    /// Where the entries are, for messages: the directory, or the URL of
    /// an object store.
    fn location(&self) -> &Path;

    /// The store's directory (for an object store, its local cache):
    /// [`DiskBackedStore::dir`](crate::DiskBackedStore::dir).
    fn dir(&self) -> &Path {
        self.location()
    }

    /// The path that names `name`'s data file in messages.
    fn data_path(&self, name: &EntryName) -> PathBuf;

    /// The path that names `name`'s metadata file in messages.
    fn meta_path(&self, name: &EntryName) -> PathBuf;

    /// Opens the store as `mode`: a writer takes the store's lock (shared
    /// with other writers, or exclusive; fails at once with
    /// [`Error::Locked`](crate::Error::Locked) naming the holders when that
    /// is not possible) and registers itself; a reader takes nothing.
    /// Dropping the lease releases it.
    fn lock(&self, mode: LockMode) -> Result<Box<dyn Lease>>;

    /// The entries (whole pairs, and broken ones with the reason), and the
    /// leftovers of interrupted operations, without reading any entry.
    fn list(&self) -> Result<Listing>;

    /// Completes or rolls back the interrupted operations whose leftovers
    /// [`list`](Self::list) found, of dead writers only: a live writer's
    /// staged files are never touched (writers only).
    fn recover(&self, pending: &[String]) -> Result<Recovered>;

    /// `name`'s metadata (a bounded read).
    fn read_meta(&self, name: &EntryName) -> Result<Meta>;

    /// The header of `name`'s data file (a bounded read).
    fn read_header(&self, name: &EntryName) -> Result<NpyInfo>;

    /// `name`'s data file, opened with `access` for mapping (a regular file,
    /// never through a symbolic link).
    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File>;

    /// What is at `name`'s data file now (`None`: nothing).
    fn stat_data(&self, name: &EntryName) -> Option<Found>;

    /// Whether either file of `name` exists.
    fn exists(&self, name: &EntryName) -> bool;

    /// Publishes every job atomically per entry, with `sync`'s durability,
    /// and returns the new data files' identities in job order (`None` for
    /// a job whose entry may no longer publish or was overtaken by a newer
    /// version: it changes nothing). After an error each entry reads as its
    /// complete old or complete new value.
    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>>;

    /// Removes `name`'s files durably; after an error they are as they were.
    fn remove(&self, name: &EntryName) -> Result<()>;

    /// Makes spilled publishes ([`SyncMode::Spill`]) durable.
    fn sync(&self) -> Result<()>;

    /// Whether writes staged by [`SyncMode::Spill`] publishes (of this
    /// handle or, for an object store, of an earlier handle on the same
    /// cache directory) wait for [`sync`](Self::sync).
    fn has_unsynced(&self) -> bool {
        false
    }

    /// Replaces the user attributes in `name`'s metadata atomically and
    /// durably (the data is untouched); after an error the metadata is as
    /// it was.
    fn set_attrs(&self, name: &EntryName, attrs: &crate::store::meta::Attrs) -> Result<()>;

    /// Whether both files of `name` are there (regular files), now.
    fn is_pair(&self, name: &EntryName) -> bool;

    /// `name`'s metadata and its data file, opened, whose header agrees
    /// with the metadata: a publish by another process between the two
    /// reads is read again (up to about 1 s in all). `file` is
    /// `None` when the data file cannot be opened or parsed, or still
    /// disagrees: its error shows when the data is read.
    fn read_checked(&self, name: &EntryName) -> Result<Checked>;

    /// The writers registered and alive.
    fn writers(&self) -> Result<Vec<WriterInfo>>;

    /// Whether `name`'s current data is still the version this handle
    /// knows: the file `id`, published (or read) with the version token
    /// `token`. `false` whenever that cannot be proven (a file system may
    /// give a freed inode number to the next file, so an equal `id` alone
    /// proves nothing once the file was closed).
    fn is_current(&self, name: &EntryName, id: FileId, token: Option<&str>) -> bool {
        let _ = token;
        self.stat_data(name).map(|f| f.id) == Some(id)
    }

    /// The entries whose last write lost a race with another writer since
    /// the last call (an object store's conditional commit): the store
    /// drops its copy of them, so that they read as the winner's value.
    fn take_lost(&self) -> Vec<EntryName> {
        Vec::new()
    }

    /// Itself, for the calls of one backend
    /// ([`DiskBackedStore::gc`](crate::DiskBackedStore::gc)).
    fn as_any(&self) -> &dyn std::any::Any;

    /// Whether the entries' files here are copies of data kept elsewhere
    /// (an object store's cache): the disk budget may then drop any
    /// entry's copy ([`drop_copy`](Self::drop_copy)), not only delete
    /// recomputable entries.
    fn holds_copies(&self) -> bool {
        false
    }

    /// Drops `name`'s local copy, when it is one that can be fetched
    /// again; whether it did.
    fn drop_copy(&self, name: &EntryName) -> Result<bool> {
        let _ = name;
        Ok(false)
    }

    /// The writes staged here and not yet committed to the durable home
    /// (an object store's).
    fn staged(&self) -> Vec<EntryName> {
        Vec::new()
    }

    /// The entries of which the window cache (ranges of data objects that
    /// windows fetched) holds bytes, and how many.
    fn windows_held(&self) -> Vec<(EntryName, u64)> {
        Vec::new()
    }

    /// Bytes the window cache holds of `name` (`None`: nothing).
    fn window_bytes(&self, name: &EntryName) -> Option<u64> {
        let _ = name;
        None
    }

    /// Drops the window cache's bytes of `name` unless a window being
    /// read or a view uses them: the bytes dropped, `None` if none were.
    fn drop_window(&self, name: &EntryName) -> Result<Option<u64>> {
        let _ = name;
        Ok(None)
    }

    /// The object store's counters (`None`: a local directory).
    fn remote_stats(&self) -> Option<RemoteStats> {
        None
    }

    /// Takes `name`'s compute lock (for `get_or_compute` across processes),
    /// waiting up to `timeout`; `None` when no other process can compute
    /// (an exclusive writer). Dropping the lease releases it.
    fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<std::time::Duration>,
    ) -> Result<Option<Box<dyn Lease>>>;
}

/// Counters of a store over an object store
/// ([`StoreStats::remote`](crate::StoreStats#structfield.remote)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Data objects uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Data objects downloaded (whole, some of their bytes perhaps copied
    /// from the window cache).
    pub downloads: u64,
    /// Bytes downloaded: data objects (less the bytes a download copied
    /// from the window cache, [`bytes_reused`](Self::bytes_reused)), and
    /// the ranges windows fetch.
    pub bytes_down: u64,
    /// Reads served from a copy in the cache directory.
    pub cache_hits: u64,
    /// Commits that lost a race ([`Error::Conflict`](crate::Error::Conflict)).
    pub conflicts: u64,
    /// Cached copies dropped by the disk budget.
    pub evictions: u64,
    /// Writes staged in the cache directory and not yet committed.
    pub pending: u64,
    /// Bytes a full download copied from the window cache instead of
    /// fetching them (see [`DiskBackedStore::map_window`](crate::DiskBackedStore::map_window)).
    pub bytes_reused: u64,
    /// Bytes of data objects the window cache holds now.
    pub window_bytes: u64,
    /// Window cache copies dropped by the disk budget.
    pub window_evictions: u64,
}

/// A published version of an entry's data: its file, and the version
/// token its metadata records (`None`: the storage has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    pub id: FileId,
    pub token: Option<std::sync::Arc<str>>,
}

/// What [`Storage::read_checked`] read.
#[derive(Debug)]
pub(crate) struct Checked {
    pub meta: Meta,
    /// The data file and its header, agreeing with `meta`.
    pub file: Option<(File, NpyInfo)>,
    /// The version read, when proven: `file` is the very file published
    /// with `meta`'s version token.
    pub version: Option<Published>,
    /// The identity of `file`, when there is one.
    pub id: Option<FileId>,
}

/// A held store lock; dropping it releases the lock.
pub(crate) trait Lease: Send + Sync + fmt::Debug {}

impl Lease for procs::KeyLock {}

/// Opens the storage of a store other than a local directory (the
/// object-storage tier of the `remote` feature): given the store's
/// directory (its local cache) and whether the open is read-only.
pub(crate) type OpenStorage =
    dyn Fn(&Path, bool) -> Result<std::sync::Arc<dyn Storage>> + Send + Sync;

/// A storage backend chosen on a [`StoreBuilder`](crate::StoreBuilder).
#[derive(Clone)]
pub(crate) struct Backend {
    /// What it is, for `Debug` (for example the URL).
    pub describe: String,
    pub open: std::sync::Arc<OpenStorage>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

/// How [`Storage::lock`] opens the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockMode {
    /// Read only: takes no lock and creates nothing.
    Reader,
    /// One of any number of writers (and readers).
    Writer,
    /// The only writer.
    ExclusiveWriter,
}

/// What [`Storage::list`] found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub entries: std::collections::BTreeMap<EntryName, Listed>,
    /// Leftovers of interrupted operations, for [`Storage::recover`].
    pub pending: Vec<String>,
}

/// One entry of a [`Listing`].
#[derive(Debug)]
pub(crate) enum Listed {
    /// Both files are there.
    Pair,
    /// Part of the pair is missing or is not a regular file: why.
    Broken(String),
}

/// What [`Storage::recover`] did.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The operations completed (for the log).
    pub completed: Vec<String>,
    /// Leftovers recovery would not touch: the entry each belongs to, if
    /// any, and why (the store reports such an entry as incomplete).
    pub left: Vec<(Option<EntryName>, String)>,
}

/// One entry's pair to publish.
pub(crate) struct PairJob<'a> {
    pub name: &'a EntryName,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub flags: EntryFlags,
    /// The user attributes written with the pair.
    pub attrs: Option<std::sync::Arc<crate::store::meta::Attrs>>,
    /// Whether the entry may still publish (it was not replaced or removed
    /// meanwhile): checked at the commit point, under `io::OWNERSHIP`.
    pub publish: &'a AtomicBool,
    /// The entry's version whose data this job writes, and the newest
    /// version of the entry committed so far: an older snapshot (a flush
    /// that wrote its files before an offload published newer data) is
    /// never committed over a newer one.
    pub version: u64,
    pub published: &'a AtomicU64,
    /// Writes the `.npy` bytes.
    pub write_npy: io::Fill<'a>,
    /// The same bytes readable in memory, when the entry's data is in RAM
    /// and contiguous (`None`: only `write_npy` writes them). A backend
    /// that sends the bytes elsewhere (an object store's upload) reads
    /// them from here while the local pair is written; the data is held,
    /// unchanged, until the job and this are dropped.
    pub image: Option<crate::npy::NpyImage<'a>>,
    /// A backend's own metadata fields, written after the crate's.
    pub extra: Option<std::sync::Arc<crate::store::meta::Attrs>>,
    /// Skips the job (as one that may no longer publish) when the entry's
    /// current metadata satisfies this, checked at the commit point.
    pub unless: Option<fn(&Meta) -> bool>,
}

/// How the staged files of a publish are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncMode {
    /// `fsync` each file, `fsync` the directory after the renames.
    PerFile,
    /// One `syncfs` on the store's file system (Linux; `fsync` each file
    /// elsewhere), `fsync` the directory after the renames.
    FileSystem,
    /// As `FileSystem`, but the directory is not synced: the new pair is
    /// complete and its data durable, but the renames may not survive a
    /// crash (the key then reads as its old value). Used for spills; the
    /// store syncs on its next flush ([`Storage::sync`]).
    Spill,
    /// Nothing is synced: the new pair is complete at its names for every
    /// process until the machine goes down, and may be lost or torn by a
    /// power cut. Used by an object store's cache directory for the copy
    /// of a write whose commit makes it durable (the pair records the boot
    /// it was written in: `remote::boot`).
    Unsynced,
}
