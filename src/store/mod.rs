//! [`DiskBackedStore`]: a crash-safe, persistent map of names to arrays.
//!
//! # Lock order
//!
//! Locks are taken in this order, never against it:
//!
//! 1. **Entry locks**, the `RwLock` of each entry's array. Guards hold them
//!    as long as the caller likes, several at a time, in any order; the
//!    store takes one for the length of one write or state change.
//! 2. **Store locks**, all fields of `Inner` below (its methods are in
//!    `inner.rs`, the handle's reads in `read.rs`): a `get_or_compute` gate
//!    (in `inflight`, held while the value is computed: `compute.rs`),
//!    `evicting`, `disk_evicting` (`budget.rs`; only ever try-locked), the
//!    map `entries`, a slot's mutex, `lru` and `incomplete`, in that order.
//! 3. **Leaf locks**, under which nothing else is waited for:
//!    `io::OWNERSHIP`, an entry's `counted` and `pinned` (`entry.rs`), the
//!    disk ledger in `Account` (`budget.rs`), the registry of waiting
//!    threads (`array/guard.rs`).
//!
//! Rules that make every wait end:
//!
//! * The store never waits for an entry lock while it holds a store lock:
//!   what it does to an entry under the map or a slot (`detach`, `pin`,
//!   `stop_publish`, `enable_publish`) never takes the entry's lock, and
//!   eviction only try-locks entries.
//! * The store never waits for an entry lock while it holds another entry
//!   lock it took itself. A batch (`flush`, `offload_all`, `offload_keys`,
//!   `insert_batch`) try-locks its entries, writes the ones it got with one
//!   round of syncs and releases them, then takes each remaining one alone;
//!   offloads take one entry at a time, after the batch.
//! * So a store call waits for an entry only while the entry is held by a
//!   guard or by a short store operation that waits for nothing, and a cycle
//!   of waiting threads can only be made of guards. A thread that holds
//!   guards registers each wait for another entry, and a wait that would
//!   close a cycle (a thread holding a guard on that entry waits, directly
//!   or through others, for a guard of the calling thread) returns
//!   [`Error::InUse`] instead; a thread holding no guard cannot be part of a
//!   cycle. A guard of the calling thread itself is never waited for
//!   ([`Error::InUse`] too), except by a read, the lock being recursive for
//!   reads.
//!
//! The one wait outside these rules is user code: a `get_or_compute`
//! computation runs under its key's gate, and a computation that waits for a
//! guard of a thread calling `get_or_compute` for the same key never ends.

mod behind;
mod budget;
mod compute;
mod entry;
mod import;
mod inner;
mod insert;
pub(crate) mod meta;
mod open;
mod prefetch;
mod read;
mod stats;
pub(crate) mod storage;
mod stored;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Dimension;
use parking_lot::{Mutex, RwLock};

use crate::array::ArrayState;
use crate::config::{CacheConfig, ConfigOverrides};
use crate::dynarray::DynArray;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

pub(crate) use behind::WriteBehindConfig;
pub use budget::SystemPressure;
use budget::{Account, Lru};
use entry::{AnyEntry, BatchJob, Loaded, Slot, StoreEntry};
use inner::{attrs_object, in_use_error};
pub use insert::{Batch, InsertOptions};
pub use meta::{Attrs, EntryFlags};
pub(crate) use open::{open_store, OpenOptions};
pub use prefetch::Prefetching;
use stats::Counters;
pub use stats::StoreStats;
#[cfg(feature = "testing")]
pub(crate) use storage::set_read_attempts;
pub(crate) use storage::Backend;
use storage::{Lease, Listed, PairJob, Storage, SyncMode};
pub use storage::{WriterInfo, CRATE_DIR, LOCK_FILE};
pub use stored::{DynReadGuard, DynStoredArray, StoredArray};

struct Inner {
    /// Where the entries live: every file operation goes through it.
    storage: Arc<dyn Storage>,
    read_only: bool,
    config: CacheConfig,
    defaults: EntryFlags,
    entries: RwLock<BTreeMap<EntryName, Arc<Mutex<Slot>>>>,
    incomplete: RwLock<BTreeMap<EntryName, String>>,
    /// The store's lock, held until the store is dropped.
    _lease: Box<dyn Lease>,
    account: Arc<Account>,
    /// The budget in bytes (`u64::MAX`: none).
    budget: AtomicU64,
    /// The disk budget in bytes (`u64::MAX`: none).
    disk_budget: AtomicU64,
    /// Held while recomputable entries are deleted for the disk budget.
    disk_evicting: Mutex<()>,
    pressure: Option<SystemPressure>,
    lru: Mutex<Lru>,
    evicting: Mutex<()>,
    last_pressure_check: Mutex<Option<Instant>>,
    counters: Counters,
    inflight: Mutex<HashMap<EntryName, Arc<Mutex<()>>>>,
    /// The write-behind writers, if the store was opened with them.
    write_behind: Option<behind::WriteBehind>,
    /// How long `get_or_compute` waits for another process computing the
    /// same key (`None`: as long as it takes).
    lock_timeout: Option<std::time::Duration>,
}

/// A persistent map of names to arrays, stored as `NAME.npy` +
/// `NAME.meta.json` pairs that numpy reads (and the Python package
/// GSEGUtils' `DiskBackedStore`; see `docs/format.md`).
///
/// * [`insert`](Self::insert) keeps an array in RAM; [`flush`](Self::flush),
///   [`offload`](Self::offload) or [`close`](Self::close) write it;
///   [`insert_durable`](Self::insert_durable) and
///   [`insert_batch`](Self::insert_batch) return once it is on disk.
/// * [`get`](Self::get) returns a typed handle whose views come straight
///   from RAM or from a memory map: no copy.
/// * After a crash at any point, every key reads as its complete old or its
///   complete new value (see `docs/reliability.md`).
///
/// The store is `Send + Sync`; clone the handle to share it between threads.
///
/// # Examples
///
/// ```
/// use ndarray::{Array2, Ix2};
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// {
///     let store = DiskBackedStore::open(dir.path())?;
///     store.insert_durable("tile_0001", Array2::<f64>::zeros((1000, 3)))?;
/// }
/// // A later process:
/// let store = DiskBackedStore::open(dir.path())?;
/// let tile = store.get::<f64, Ix2>("tile_0001")?;
/// assert_eq!(tile.read()?.view().shape(), &[1000, 3]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DiskBackedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskBackedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBackedStore")
            .field("dir", &self.inner.storage.dir())
            .field("read_only", &self.inner.read_only)
            .field("len", &self.len())
            .finish()
    }
}

/// A summary of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The entry's name.
    pub name: EntryName,
    /// numpy dtype string.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Where the data is (an entry not used since open is `Offloaded`).
    pub state: ArrayState,
    /// Size of the data in bytes.
    pub nbytes: u64,
    /// The entry's flags.
    pub flags: EntryFlags,
    /// The entry's user attributes (empty when it has none); see
    /// [`InsertOptions::attrs`](crate::InsertOptions::attrs).
    pub attrs: Attrs,
}

impl DiskBackedStore {
    /// Opens (creating if needed) a writable store at `dir` with default
    /// options; see [`StoreBuilder`](crate::StoreBuilder).
    ///
    /// # Errors
    ///
    /// As [`StoreBuilder::open`](crate::StoreBuilder::open).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        open_store(OpenOptions::new(dir.as_ref()))
    }

    /// Opens the store at `dir` read-only; see [`StoreBuilder::read_only`](crate::StoreBuilder::read_only).
    ///
    /// # Errors
    ///
    /// As [`StoreBuilder::open`](crate::StoreBuilder::open).
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let mut o = OpenOptions::new(dir.as_ref());
        o.read_only = true;
        open_store(o)
    }

    /// The store directory (for a store over an object store, its local
    /// cache directory).
    pub fn dir(&self) -> &Path {
        self.inner.storage.dir()
    }

    /// Whether this handle is read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn check_writable(&self) -> Result<()> {
        self.inner.check_writable()
    }

    fn flags_for(&self, overrides: &ConfigOverrides) -> (EntryFlags, CacheConfig) {
        let c = self.inner.config.updated(overrides);
        let d = self.inner.defaults;
        (
            EntryFlags {
                purge_on_drop: overrides.purge_on_drop.unwrap_or(d.purge_on_drop),
                automatic_offloading: c.automatic_offloading(),
                caching: c.caching(),
                recomputable: false,
            },
            c,
        )
    }

    /// Replaces the user attributes of the entry `name` (see
    /// [`InsertOptions::attrs`](crate::InsertOptions::attrs)); an empty object
    /// removes them. When the entry is on disk, a new `.meta.json` is
    /// written and renamed over the old one (durably, before this returns):
    /// a crash leaves the old or the new attributes, and the data file is
    /// not touched. An entry not yet written takes them with its first
    /// write.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAttrs`] when `attrs` is not a JSON object,
    /// [`Error::ReadOnly`], [`Error::KeyNotFound`], metadata errors as for
    /// [`get`](Self::get), I/O errors (the metadata is then unchanged).
    pub fn set_attrs(&self, name: impl AsRef<str>, attrs: serde_json::Value) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let attrs = attrs_object(&name, attrs)?.unwrap_or_default();
        let slot = self.slot(&name)?;
        let mut s = slot.lock();
        self.read_meta(&name, &mut s)?;
        if self.inner.storage.exists(&name) {
            self.inner.storage.set_attrs(&name, &attrs)?;
        }
        if let Some(l) = &s.loaded {
            l.link().set_attrs(Some(attrs.clone()));
        }
        s.attrs = Some(attrs);
        Ok(())
    }

    /// Removes `name` and deletes its files durably. Returns whether it
    /// existed. Readers holding the entry keep their data.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::ReadOnly`], I/O errors (the entry is
    /// then still present, on disk and in the store).
    pub fn remove(&self, name: impl AsRef<str>) -> Result<bool> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        self.inner.remove(&name)
    }

    fn loaded_entry(&self, name: &str) -> Result<Option<Loaded>> {
        let name = EntryName::new(name)?;
        let slot = self.slot(&name)?;
        let s = slot.lock();
        Ok(s.loaded.clone())
    }

    /// Writes every entry whose file does not hold its current data, durably
    /// and with one round of syncs (see [`insert_batch`](Self::insert_batch)).
    /// After it returns, a power cut loses nothing written before the call.
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`], I/O errors (entries stay in RAM, pairs on disk
    /// are unchanged or complete). [`Error::InUse`] if the calling thread
    /// holds a write guard on an entry: that entry is not written, all the
    /// others are.
    pub fn flush(&self) -> Result<()> {
        self.inner.settle(self.inner.flush())
    }

    /// Persists the entry `name` if needed and frees its RAM; a later read
    /// maps it back lazily.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`], I/O errors (the entry stays in RAM),
    /// [`Error::InUse`] if the calling thread holds a guard on the entry.
    pub fn offload(&self, name: impl AsRef<str>) -> Result<()> {
        self.check_writable()?;
        match self.loaded_entry(name.as_ref())? {
            Some(l) => self.offload_loaded(std::slice::from_ref(&l)),
            None => Ok(()),
        }
    }

    /// Offloads each of `names` (persisting them with one round of syncs).
    ///
    /// # Errors
    ///
    /// As [`offload`](Self::offload).
    pub fn offload_keys<N: AsRef<str>>(&self, names: &[N]) -> Result<()> {
        self.check_writable()?;
        let mut loaded = Vec::new();
        for n in names {
            if let Some(l) = self.loaded_entry(n.as_ref())? {
                loaded.push(l);
            }
        }
        self.offload_loaded(&loaded)
    }

    /// Offloads every entry (persisting with one round of syncs).
    ///
    /// # Errors
    ///
    /// As [`offload`](Self::offload). Entries the calling thread holds a
    /// guard on stay in RAM; all the others are offloaded before their
    /// [`Error::InUse`] is returned.
    pub fn offload_all(&self) -> Result<()> {
        self.check_writable()?;
        let loaded = self.inner.loaded_entries();
        self.offload_loaded(&loaded)
    }

    fn offload_loaded(&self, loaded: &[Loaded]) -> Result<()> {
        if let Some(wb) = &self.inner.write_behind {
            wb.wait_idle();
        }
        self.inner.take_behind_error()?;
        // Entries the calling thread holds a guard on stay where they are;
        // the others are offloaded, then the first such error is returned.
        let mut in_use = in_use_error(
            self.inner
                .publish_batch(loaded.iter().map(|l| l.as_ref()).collect()),
        )?;
        for l in loaded {
            let was = l.state() == ArrayState::InMemory;
            if let Some(e) = in_use_error(l.offload())? {
                in_use.get_or_insert(e);
            }
            if was && l.state() == ArrayState::Offloaded {
                Counters::add(&self.inner.counters.offloads);
            }
        }
        self.inner.enforce_disk_budget();
        in_use.map_or(Ok(()), Err)
    }

    /// Flushes, deletes the scratch entries (those inserted through this
    /// handle with purge-on-drop on, see [`InsertOptions::scratch`](crate::InsertOptions::scratch)),
    /// and releases the lock. Entries read from disk are never deleted,
    /// whatever their `purge_disk_on_gc` flag says.
    ///
    /// # Errors
    ///
    /// Errors of [`flush`](Self::flush) and of removing purged entries.
    pub fn close(self) -> Result<()> {
        self.inner.finish()
    }
}
