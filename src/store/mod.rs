//! [`DiskBackedStore`]: a crash-safe, persistent map of names to arrays.
//!
//! # Lock order
//!
//! Locks are taken in this order, never against it:
//!
//! 1. **Entry locks**, the `RwLock` of each entry's array. Guards hold them
//!    as long as the caller likes, several at a time, in any order; the
//!    store takes one for the length of one write or state change.
//! 2. **Store locks**, all fields of `Inner` below: a `get_or_compute` gate
//!    (in `inflight`, held while the value is computed: `compute.rs`),
//!    `evicting` (`budget.rs`), the map `entries`, a slot's mutex, `lru` and
//!    `incomplete`, in that order.
//! 3. **Leaf locks**, under which nothing else is waited for:
//!    `io::OWNERSHIP`, an entry's `counted` and `pinned` (`entry.rs`), the
//!    registry of waiting threads (`array/guard.rs`).
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

mod budget;
mod compute;
mod entry;
pub(crate) mod meta;
mod open;
mod stats;
mod storage;
mod stored;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array, ArrayD, Dimension};
use parking_lot::{Mutex, RwLock};

use crate::array::ArrayState;
use crate::config::{CacheConfig, ConfigOverrides};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

pub use budget::SystemPressure;
use budget::{Account, Lru};
use entry::{AnyEntry, BatchJob, Loaded, Slot, StoreEntry};
pub use meta::EntryFlags;
pub use open::StoreBuilder;
use stats::Counters;
pub use stats::StoreStats;
use storage::{Lease, Listed, PairJob, Storage, SyncMode};
pub use storage::{WriterInfo, CRATE_DIR, LOCK_FILE};
pub use stored::StoredArray;

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
    pressure: Option<SystemPressure>,
    lru: Mutex<Lru>,
    evicting: Mutex<()>,
    last_pressure_check: Mutex<Option<Instant>>,
    counters: Counters,
    inflight: Mutex<HashMap<EntryName, Arc<Mutex<()>>>>,
    /// How long `get_or_compute` waits for another process computing the
    /// same key (`None`: as long as it takes).
    lock_timeout: Option<std::time::Duration>,
}

/// A persistent map of names to arrays, stored as `NAME.npy` +
/// `NAME.meta.json` pairs that numpy and GSEGUtils read (see
/// `docs/format.md`).
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
            .field("dir", &self.inner.storage.location())
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
}

impl DiskBackedStore {
    /// Opens (creating if needed) a writable store at `dir` with default
    /// options; see [`StoreBuilder`].
    ///
    /// # Errors
    ///
    /// As [`StoreBuilder::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        StoreBuilder::new(dir).open()
    }

    /// Opens the store at `dir` read-only; see [`StoreBuilder::read_only`].
    ///
    /// # Errors
    ///
    /// As [`StoreBuilder::open`].
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        StoreBuilder::new(dir).read_only(true).open()
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.inner.storage.location()
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
            },
            c,
        )
    }

    /// Inserts (or replaces) `name` with `array`, kept in RAM until the entry
    /// is flushed, offloaded or the store is closed. Replacing an entry never
    /// disturbs readers holding the old value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] (nothing on disk is touched),
    /// [`Error::ReadOnly`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("labels", array![1u8, 0, 1])?;
    /// store.flush()?; // now durable
    /// assert_eq!(store.keys()[0].as_str(), "labels");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        self.insert_with(name, array, &ConfigOverrides::default())
    }

    /// [`insert`](Self::insert) with per-entry overrides of the store's
    /// defaults (caching, automatic offloading, purge on drop), like
    /// GSEGUtils' `add_data_to_store(..., **overrides)`.
    ///
    /// Purge-on-drop makes a *scratch entry*: this handle deletes its pair
    /// when the store is closed or dropped. That is a choice of this process
    /// only: it is recorded as GSEGUtils' `purge_disk_on_gc` flag, which
    /// never deletes a pair when the store is opened again (by this crate or
    /// by GSEGUtils), and an entry left by a crash stays on disk whole.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub fn insert_with<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
        overrides: &ConfigOverrides,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        self.insert_entry(name, array.into_dyn(), overrides);
        self.inner.enforce_budget();
        Ok(())
    }

    fn insert_entry<T: Element>(
        &self,
        name: EntryName,
        array: ArrayD<T>,
        overrides: &ConfigOverrides,
    ) -> Loaded {
        let (flags, config) = self.flags_for(overrides);
        let shape = array.shape().to_vec();
        let loaded: Loaded = Arc::new(StoreEntry::new(
            array,
            &self.inner.storage,
            &name,
            flags,
            &config,
            self.inner.account.clone(),
        ));
        let slot = Slot {
            meta: Some((T::dtype(), shape, flags)),
            loaded: Some(loaded.clone()),
            retired: false,
            scratch: flags.purge_on_drop,
        };
        self.inner.incomplete.write().remove(&name);
        // The old entry is detached (keeping its file) before the map is
        // released: a removal of the name, which takes the map, must not
        // delete the file before the old entry kept it. Detaching takes no
        // entry lock (see the lock order above).
        let mut entries = self.inner.entries.write();
        let old = entries.insert(name.clone(), Arc::new(Mutex::new(slot)));
        if let Some(old) = old {
            let mut old = old.lock();
            old.retired = true;
            if let Some(l) = &old.loaded {
                // A handle may hold the old entry: it keeps its data.
                l.link().detach(true);
            }
        }
        drop(entries);
        // Only now may the new entry's files replace the old entry's.
        loaded.link().enable_publish();
        if flags.caching {
            self.inner.lru.lock().touch(&name);
        }
        loaded
    }

    /// Inserts and writes the entry durably before returning (one atomic
    /// pair publish: two `fsync`s, two renames, one directory `fsync`).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), plus I/O errors. After an I/O error the
    /// previous pair on disk is byte-identical, no temporary file is left,
    /// and the new value stays in the store in RAM (a later flush retries).
    pub fn insert_durable<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let loaded = self.insert_entry(name, array.into_dyn(), &ConfigOverrides::default());
        let r = loaded.flush();
        self.inner.enforce_budget();
        r
    }

    /// Inserts many entries and writes them durably with one round of
    /// syncs: every temporary file is written, then one `syncfs(2)` of the
    /// store's file system (Linux; an `fsync` per file elsewhere), then the
    /// renames and one directory `fsync`.
    ///
    /// `syncfs` also flushes other programs' pending writes to the same file
    /// system, which can make it slower on a busy disk.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for any name (nothing is inserted); I/O errors
    /// (entries stay in RAM; pairs already on disk are unchanged).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::Array2;
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// let tiles = (0..100).map(|i| (format!("tile_{i:04}"), Array2::<f64>::zeros((10, 3))));
    /// store.insert_batch(tiles)?;
    /// assert_eq!(store.len(), 100);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert_batch<T, D, N, I>(&self, entries: I) -> Result<()>
    where
        T: Element,
        D: Dimension,
        N: AsRef<str>,
        I: IntoIterator<Item = (N, Array<T, D>)>,
    {
        self.check_writable()?;
        let mut named = Vec::new();
        for (n, a) in entries {
            named.push((EntryName::new(n.as_ref())?, a));
        }
        // A name given twice: the later array wins (as with repeated inserts).
        let mut seen = std::collections::HashSet::new();
        named.reverse();
        named.retain(|(n, _)| seen.insert(n.clone()));
        named.reverse();
        let loaded: Vec<Loaded> = named
            .into_iter()
            .map(|(n, a)| self.insert_entry(n, a.into_dyn(), &ConfigOverrides::default()))
            .collect();
        self.inner
            .publish_batch(loaded.iter().map(|l| l.as_ref()).collect())
    }

    fn slot(&self, name: &EntryName) -> Result<Arc<Mutex<Slot>>> {
        if let Some(s) = self.inner.entries.read().get(name) {
            return Ok(s.clone());
        }
        // Another process may have published it since the store was listed:
        // look at the directory (two `fstatat`s).
        if self.inner.storage.is_pair(name) {
            let mut entries = self.inner.entries.write();
            let s = entries.entry(name.clone()).or_default().clone();
            drop(entries);
            self.inner.incomplete.write().remove(name);
            return Ok(s);
        }
        if let Some(reason) = self.inner.incomplete.read().get(name) {
            return Err(Error::Incomplete {
                name: name.to_string(),
                path: self.inner.storage.location().to_path_buf(),
                reason: reason.clone(),
            });
        }
        Counters::add(&self.inner.counters.misses);
        Err(Error::KeyNotFound {
            name: name.to_string(),
            path: self.inner.storage.location().to_path_buf(),
        })
    }

    fn read_meta(
        &self,
        name: &EntryName,
        slot: &mut Slot,
    ) -> Result<(String, Vec<usize>, EntryFlags)> {
        if let Some(m) = &slot.meta {
            return Ok(m.clone());
        }
        let m = self.inner.storage.read_meta(name)?;
        let flags = m.flags(self.inner.defaults);
        let (dtype, shape) = match (m.dtype, m.shape) {
            (Some(d), Some(s)) => (d, s),
            // GSEGUtils takes what the metadata leaves out from the .npy
            // header: so does the store.
            (d, s) => {
                let info = self.inner.storage.read_header(name)?;
                (d.unwrap_or(info.descr), s.unwrap_or(info.shape))
            }
        };
        let v = (dtype, shape, flags);
        slot.meta = Some(v.clone());
        Ok(v)
    }

    /// The entry `name` as an array of `T` with dimension `D`. Views of the
    /// handle come from RAM or a memory map without copying; a persisted
    /// entry is mapped when first read.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`], [`Error::Incomplete`], [`Error::DtypeMismatch`]
    /// / [`Error::DimensionMismatch`] for a wrong `T` / `D`, metadata errors
    /// ([`Error::SchemaVersion`], [`Error::UnknownClass`], [`Error::Corrupt`]),
    /// and, when the data is read, [`Error::Mismatch`] if the `.npy` header
    /// disagrees with the metadata.
    pub fn get<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
    ) -> Result<StoredArray<T, D>> {
        let name = EntryName::new(name.as_ref())?;
        let meta_path = || self.inner.storage.meta_path(&name);
        let loaded = loop {
            let slot = self.slot(&name)?;
            let mut s = slot.lock();
            if s.retired {
                // Replaced or removed since it was looked up.
                continue;
            }
            // An entry read from disk for the first time: its metadata and
            // its data file are read together, so that they agree even while
            // another process replaces the pair.
            let mut opened = None;
            if s.loaded.is_none() {
                let checked = self.inner.storage.read_checked(&name)?;
                let flags = checked.meta.flags(self.inner.defaults);
                let (d, sh) = (checked.meta.dtype, checked.meta.shape);
                let v = match (&checked.file, d, sh) {
                    (_, Some(d), Some(sh)) => Some((d, sh)),
                    (Some((_, info)), d, sh) => Some((
                        d.unwrap_or_else(|| info.descr.clone()),
                        sh.unwrap_or_else(|| info.shape.clone()),
                    )),
                    _ => None,
                };
                s.meta = v.map(|(d, sh)| (d, sh, flags));
                opened = checked.file.map(|(f, _)| f);
            }
            let (dtype, shape, flags) = self.read_meta(&name, &mut s)?;
            if dtype != T::dtype() {
                return Err(Error::DtypeMismatch {
                    path: meta_path(),
                    expected: T::dtype(),
                    found: dtype,
                });
            }
            if let Some(n) = D::NDIM {
                if n != shape.len() {
                    return Err(Error::DimensionMismatch {
                        path: meta_path(),
                        expected: n,
                        found: shape.len(),
                    });
                }
            }
            let loaded = match &s.loaded {
                Some(l) => l.clone(),
                None => {
                    let (_, config) = self.flags_for(&ConfigOverrides::default());
                    let l: Loaded = Arc::new(StoreEntry::<T>::persisted(
                        shape,
                        opened,
                        &self.inner.storage,
                        &name,
                        flags,
                        &config,
                        self.inner.account.clone(),
                    ));
                    s.loaded = Some(l.clone());
                    l
                }
            };
            break loaded;
        };
        if loaded.state() == ArrayState::Offloaded {
            Counters::add(&self.inner.counters.loads);
        } else {
            Counters::add(&self.inner.counters.hits);
        }
        if loaded.flags().caching {
            // Mapped entries count against the budget too: track them all.
            self.inner.lru.lock().touch(&name);
        }
        let meta_path = meta_path();
        StoredArray::of(loaded, name, meta_path)
    }

    /// Whether an entry named `name` exists (complete pairs only).
    pub fn contains(&self, name: impl AsRef<str>) -> bool {
        EntryName::new(name.as_ref())
            .map(|n| self.inner.entries.read().contains_key(&n))
            .unwrap_or(false)
    }

    /// The names of all complete entries, sorted.
    pub fn keys(&self) -> Vec<EntryName> {
        self.inner.entries.read().keys().cloned().collect()
    }

    /// Number of complete entries.
    pub fn len(&self) -> usize {
        self.inner.entries.read().len()
    }

    /// Whether the store has no complete entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries on disk that are missing part of their pair (or are not
    /// regular files), with the reason. They are not listed by
    /// [`keys`](Self::keys).
    pub fn incomplete(&self) -> Vec<(EntryName, String)> {
        self.inner
            .incomplete
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Reads the directory again, so that this handle sees the entries other
    /// processes added, replaced or removed since the store was opened (or
    /// last refreshed). Costs one listing of the directory (as an open does)
    /// plus one `fstatat` per entry this handle has read; no file is read.
    ///
    /// A name this handle does not know is looked up on disk anyway (two
    /// `fstatat`s) by [`get`](Self::get), [`info`](Self::info) and
    /// `get_or_compute`, so a reader needs `refresh` only to see
    /// replacements and removals of entries it has already read, and to
    /// update [`keys`](Self::keys), [`len`](Self::len) and
    /// [`contains`](Self::contains).
    ///
    /// Entries whose data in this handle differs from their file (inserted,
    /// or edited, and not yet written) are kept as they are. Handles
    /// ([`StoredArray`]) taken before keep the value they map.
    ///
    /// # Errors
    ///
    /// Errors listing the directory.
    pub fn refresh(&self) -> Result<()> {
        let listing = self.inner.storage.list()?;
        let mut entries = self.inner.entries.write();
        let mut retired = Vec::new();
        for (name, slot) in entries.iter() {
            let mut s = slot.lock();
            let stale = match &s.loaded {
                // Not read yet: its metadata is read again when used.
                None => {
                    s.meta = None;
                    !matches!(listing.entries.get(name), Some(Listed::Pair))
                }
                Some(l) => match l.clean_file() {
                    // In RAM and not written: this handle's value stands.
                    None => false,
                    Some(id) => self.inner.storage.stat_data(name).map(|f| f.id) != Some(id),
                },
            };
            if stale {
                retired.push(name.clone());
            }
        }
        for name in &retired {
            if let Some(old) = entries.remove(name) {
                let mut old = old.lock();
                old.retired = true;
                if let Some(l) = &old.loaded {
                    l.link().detach(false);
                }
            }
            self.inner.lru.lock().remove(name);
        }
        let mut incomplete = self.inner.incomplete.write();
        incomplete.clear();
        for (name, kind) in listing.entries {
            match kind {
                Listed::Pair => {
                    incomplete.remove(&name);
                    entries.entry(name).or_default();
                }
                Listed::Broken(reason) => {
                    if !entries.contains_key(&name) {
                        incomplete.insert(name, reason);
                    }
                }
            }
        }
        Ok(())
    }

    /// The writers registered on this store and alive (this handle
    /// included, if writable): pid, host name, start time.
    ///
    /// # Errors
    ///
    /// Errors reading the crate's folder (`.ndoffload/`).
    pub fn writers(&self) -> Result<Vec<WriterInfo>> {
        self.inner.storage.writers()
    }

    /// A summary of the entry `name` (reads its metadata if not yet known;
    /// never reads the array).
    ///
    /// # Errors
    ///
    /// As the metadata errors of [`get`](Self::get).
    pub fn info(&self, name: impl AsRef<str>) -> Result<EntryInfo> {
        let name = EntryName::new(name.as_ref())?;
        let slot = self.slot(&name)?;
        let mut s = slot.lock();
        let (dtype, shape, flags) = self.read_meta(&name, &mut s)?;
        let (state, flags) = match &s.loaded {
            Some(l) => (l.state(), l.flags()),
            None => (ArrayState::Offloaded, flags),
        };
        let nbytes = crate::element::dtype_itemsize(&dtype)
            .and_then(|size| {
                shape
                    .iter()
                    .try_fold(size as u64, |a, &d| a.checked_mul(d as u64))
            })
            .unwrap_or(0);
        Ok(EntryInfo {
            name,
            dtype,
            shape,
            state,
            nbytes,
            flags,
        })
    }

    /// Iterates over the summaries of all complete entries in name order
    /// (entries whose metadata cannot be read yield their error).
    pub fn iter(&self) -> impl Iterator<Item = Result<EntryInfo>> + '_ {
        self.keys().into_iter().map(move |k| self.info(k.as_str()))
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
        self.inner.flush()
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
        in_use.map_or(Ok(()), Err)
    }

    /// Flushes, deletes the scratch entries (those inserted through this
    /// handle with purge-on-drop on, see [`insert_with`](Self::insert_with)),
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

impl Inner {
    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.storage.location().to_path_buf(),
            })
        } else {
            Ok(())
        }
    }

    fn loaded_entries(&self) -> Vec<Loaded> {
        self.entries
            .read()
            .values()
            .filter_map(|s| s.lock().loaded.clone())
            .collect()
    }

    fn publish_batch(&self, arrays: Vec<&dyn AnyEntry>) -> Result<()> {
        let mut jobs = Vec::new();
        let mut marks = Vec::new();
        // An entry the calling thread is writing to is left out; the others
        // are published, then its error is returned.
        let mut in_use = None;
        // Entries another thread holds exclusively (a write guard, an
        // offload, a load) are not waited for while the batch holds the
        // others: they are written after it, one at a time (see the lock
        // order at the top of this module).
        let mut busy = Vec::new();
        for a in &arrays {
            match a.batch_job(false) {
                Ok(BatchJob::Job(job)) => {
                    jobs.push(job);
                    marks.push(*a);
                }
                Ok(BatchJob::Current) => {}
                Ok(BatchJob::Busy) => busy.push(*a),
                Err(e) => {
                    in_use.get_or_insert(e);
                }
            }
        }
        self.publish_jobs(jobs, marks)?;
        for a in busy {
            match a.batch_job(true) {
                Ok(BatchJob::Job(job)) => {
                    self.publish_jobs(vec![job], vec![a])?;
                }
                Ok(BatchJob::Current | BatchJob::Busy) => {}
                Err(e) => {
                    in_use.get_or_insert(e);
                }
            }
        }
        in_use.map_or(Ok(()), Err)
    }

    /// Publishes `jobs` with one round of syncs and records each published
    /// version in its entry (`marks`, in job order).
    fn publish_jobs(&self, jobs: Vec<PairJob<'_>>, marks: Vec<&dyn AnyEntry>) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let versions: Vec<u64> = jobs.iter().map(|j| j.version).collect();
        let ids = self.storage.publish(jobs, SyncMode::FileSystem)?;
        for ((a, v), id) in marks.into_iter().zip(versions).zip(ids) {
            if let Some(id) = id {
                a.mark_published(v, id);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let loaded = self.loaded_entries();
        // An entry the calling thread is writing to is not flushed (its
        // error is returned at the end); everything else is.
        let in_use = in_use_error(self.publish_batch(loaded.iter().map(|l| l.as_ref()).collect()))?;
        // Spills renamed files without syncing the directory.
        if self.account.take_dir_unsynced() {
            if let Err(e) = self.storage.sync() {
                self.account.mark_dir_unsynced();
                return Err(e);
            }
        }
        in_use.map_or(Ok(()), Err)
    }

    fn remove(&self, name: &EntryName) -> Result<bool> {
        self.check_writable()?;
        let mut entries = self.entries.write();
        let on_disk = self.storage.exists(name);
        let broken = self.incomplete.read().contains_key(name);
        let existed = entries.contains_key(name) || broken;
        // A handle may hold the entry: it keeps the file it reads from open
        // before the file is deleted. A publish of the entry still in flight
        // (a flush that took it before the removal) must not bring the files
        // back.
        let loaded = entries.get(name).and_then(|s| s.lock().loaded.clone());
        if let Some(l) = &loaded {
            l.link().pin();
            l.link().stop_publish();
        }
        if on_disk {
            if let Err(e) = self.storage.remove(name) {
                if let Some(l) = &loaded {
                    l.link().unpin();
                    l.link().enable_publish();
                }
                return Err(e);
            }
        }
        if let Some(old) = entries.remove(name) {
            let mut old = old.lock();
            old.retired = true;
            if let Some(l) = &old.loaded {
                l.link().detach(true);
            }
        }
        self.lru.lock().remove(name);
        self.incomplete.write().remove(name);
        Ok(existed)
    }

    /// Flushes and deletes the scratch entries inserted through this handle.
    fn finish(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // An entry the calling thread is writing to is not flushed; the
        // rest of closing still happens.
        let in_use = in_use_error(self.flush())?;
        // Only entries this handle inserted as scratch entries: the
        // persisted `purge_disk_on_gc` flag never deletes a pair.
        let purge: Vec<EntryName> = self
            .entries
            .read()
            .iter()
            .filter(|(_, s)| s.lock().scratch)
            .map(|(k, _)| k.clone())
            .collect();
        for k in purge {
            self.remove(&k)?;
        }
        in_use.map_or(Ok(()), Err)
    }
}

/// Separates [`Error::InUse`] (an entry the calling thread holds a guard on
/// was skipped; the caller goes on with the rest) from other errors.
fn in_use_error(r: Result<()>) -> Result<Option<Error>> {
    match r {
        Ok(()) => Ok(None),
        Err(e @ Error::InUse { .. }) => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `DiskBackedStore::close` is the checked path; here errors can only
        // be logged.
        if let Err(e) = self.finish() {
            tracing::warn!(dir = %self.storage.location().display(), error = %e, "could not flush the store when dropped");
        }
        // Handles that outlive the store keep their data and never write
        // into the directory again (another process may own it now).
        for slot in self.entries.get_mut().values() {
            if let Some(l) = &slot.lock().loaded {
                // Only the slot holds an entry nobody else uses.
                l.link().detach(Arc::strong_count(l) > 1);
            }
        }
        // The lease is released when the fields are dropped, after this.
    }
}
