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

mod behind;
mod budget;
mod compute;
mod entry;
pub(crate) mod meta;
mod open;
mod prefetch;
mod stats;
mod storage;
mod stored;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayD, Dimension};
use parking_lot::{Mutex, RwLock};

use crate::array::{ArrayState, IntoStoredArray};
use crate::config::{CacheConfig, ConfigOverrides};
use crate::dynarray::DynArray;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

pub use budget::SystemPressure;
use budget::{Account, Lru};
use entry::{AnyEntry, BatchJob, Loaded, Slot, StoreEntry};
pub use meta::{Attrs, EntryFlags};
pub use open::StoreBuilder;
pub use prefetch::Prefetching;
use stats::Counters;
pub use stats::StoreStats;
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
    /// The entry's user attributes (empty when it has none); see
    /// [`DiskBackedStore::insert_with_attrs`].
    pub attrs: Attrs,
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
    /// `array` is any [`IntoStoredArray`]: an owned [`Array`](ndarray::Array)
    /// is moved without a copy; a view, a slice or a reference (`&a`) is
    /// copied once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] (nothing on disk is touched),
    /// [`Error::ReadOnly`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, s};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// let big = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
    /// store.insert("head", big.slice(s![..2, ..]))?; // a view: copied
    /// store.insert("copy", &big)?; // a reference: copied
    /// store.insert("labels", array![1u8, 0, 1])?; // owned: moved
    /// store.flush()?; // now durable
    /// assert_eq!(store.keys().len(), 3);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert<A: IntoStoredArray>(&self, name: impl AsRef<str>, array: A) -> Result<()> {
        self.insert_with(name, array, &ConfigOverrides::default())
    }

    /// [`insert`](Self::insert) with per-entry overrides of the store's
    /// defaults (caching, automatic offloading, purge on drop), as the
    /// Python GSEGUtils' `add_data_to_store(..., **overrides)` takes them.
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
    pub fn insert_with<A: IntoStoredArray>(
        &self,
        name: impl AsRef<str>,
        array: A,
        overrides: &ConfigOverrides,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let array = array.into_stored_array().into_dyn();
        self.insert_entry(name, array, overrides, None);
        self.inner.enforce_budget();
        self.inner.take_behind_error()
    }

    /// [`insert`](Self::insert) with user attributes: a JSON object (a CRS,
    /// a tile origin, units, provenance, ...) stored with the entry in its
    /// `.meta.json` under the field `ndoffload_attrs`, which GSEGUtils
    /// ignores and numpy users read with `json.load`. Read them back with
    /// [`info`](Self::info); change them with [`set_attrs`](Self::set_attrs).
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), and [`Error::InvalidAttrs`] when
    /// `attrs` is not a JSON object (nothing is inserted).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::Array2;
    /// use ndarray_offload::DiskBackedStore;
    /// use serde_json::json;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// let attrs = json!({"crs": "EPSG:2056", "origin": [2600000.0, 1200000.0]});
    /// store.insert_with_attrs("tile_0001", Array2::<f64>::zeros((100, 3)), attrs)?;
    /// store.flush()?;
    /// assert_eq!(store.info("tile_0001")?.attrs["crs"], "EPSG:2056");
    /// store.set_attrs("tile_0001", json!({"crs": "EPSG:4326"}))?;
    /// assert_eq!(store.info("tile_0001")?.attrs["crs"], "EPSG:4326");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert_with_attrs<A: IntoStoredArray>(
        &self,
        name: impl AsRef<str>,
        array: A,
        attrs: serde_json::Value,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let attrs = attrs_object(&name, attrs)?;
        let array = array.into_stored_array().into_dyn();
        self.insert_entry(name, array, &ConfigOverrides::default(), attrs);
        self.inner.enforce_budget();
        Ok(())
    }

    /// Replaces the user attributes of the entry `name` (see
    /// [`insert_with_attrs`](Self::insert_with_attrs)); an empty object
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

    fn insert_entry<T: Element>(
        &self,
        name: EntryName,
        array: ArrayD<T>,
        overrides: &ConfigOverrides,
        attrs: Option<Arc<Attrs>>,
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
        loaded.link().set_attrs(attrs.clone());
        let slot = Slot {
            meta: Some((T::dtype(), shape, flags)),
            attrs: Some(attrs.unwrap_or_default()),
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
    pub fn insert_durable<A: IntoStoredArray>(
        &self,
        name: impl AsRef<str>,
        array: A,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let array = array.into_stored_array().into_dyn();
        let loaded = self.insert_entry(name, array, &ConfigOverrides::default(), None);
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
    pub fn insert_batch<A, N, I>(&self, entries: I) -> Result<()>
    where
        A: IntoStoredArray,
        N: AsRef<str>,
        I: IntoIterator<Item = (N, A)>,
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
            .map(|(n, a)| {
                let a = a.into_stored_array().into_dyn();
                self.insert_entry(n, a, &ConfigOverrides::default(), None)
            })
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
        slot.attrs = Some(Arc::new(m.attrs));
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
    /// disagrees with the metadata. An entry stored in the other byte order
    /// (a big-endian file) is a [`Error::DtypeMismatch`] that says so: read
    /// it with [`get_as`](Self::get_as).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1, Ix2};
    /// use ndarray_offload::{DiskBackedStore, Error};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("xyz", array![[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])?;
    /// store.offload("xyz")?; // now only on disk
    ///
    /// let xyz = store.get::<f64, Ix2>("xyz")?; // the entry's handle
    /// let g = xyz.read()?; // maps the file; no copy
    /// assert_eq!((g.nrows(), g[[1, 2]]), (2, 5.0));
    /// drop(g);
    ///
    /// // The wrong element type or dimension is an error naming both.
    /// let err = store.get::<f32, Ix2>("xyz").unwrap_err();
    /// assert!(err.to_string().contains("holds f64 (<f8), but f32 (<f4) was requested"));
    /// assert!(matches!(store.get::<f64, Ix1>("xyz"), Err(Error::DimensionMismatch { .. })));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn get<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
    ) -> Result<StoredArray<T, D>> {
        self.inner.take_behind_error()?;
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
                s.attrs = Some(Arc::new(checked.meta.attrs));
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
                    l.link().set_attrs(s.attrs.clone());
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

    /// The entry `name` without naming its element type: a
    /// [`DynStoredArray`], one variant per element type, whose views come
    /// from RAM or a memory map without copying (as [`get`](Self::get)).
    ///
    /// An entry in the other byte order (a big-endian `.npy` written by
    /// numpy on another machine) cannot be mapped: read it with
    /// [`read_dyn`](Self::read_dyn) or [`get_as`](Self::get_as), which
    /// convert.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`Error::DtypeMismatch`] for an entry in the
    /// other byte order, [`Error::Unsupported`] for a dtype no element type
    /// holds.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::{DiskBackedStore, DynView};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("labels", array![1u8, 0, 1])?;
    /// let entry = store.get_dyn("labels")?;
    /// assert_eq!((entry.dtype(), entry.shape()), ("|u1".to_string(), &[3][..]));
    /// match entry.read()?.view() {
    ///     DynView::U8(v) => assert_eq!(v.sum(), 2),
    ///     other => panic!("unexpected {}", other.type_name()),
    /// }
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_dyn(&self, name: impl AsRef<str>) -> Result<DynStoredArray> {
        let name = EntryName::new(name.as_ref())?;
        let dtype = self.dtype_of(&name)?;
        if let Some(a) = DynStoredArray::get(self, name.as_str(), &dtype)? {
            return Ok(a);
        }
        let path = self.inner.storage.meta_path(&name);
        match crate::element::rust_type_name(&dtype) {
            Some(_) => Err(Error::DtypeMismatch {
                path,
                expected: native_order(&dtype),
                found: dtype,
            }),
            None => Err(Error::Unsupported {
                path,
                reason: format!("dtype {dtype:?} is not one of the element types the crate reads"),
            }),
        }
    }

    /// A copy in RAM of the entry `name`, whatever its element type and
    /// byte order: big-endian `.npy` files (written by numpy or GSEGUtils on
    /// another machine, or with `dtype=">f8"`) are read and swapped, as
    /// numpy and `ndarray-npy`'s `read_npy` do.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`Error::Corrupt`] for a data file that does
    /// not read, [`Error::Unsupported`] for a dtype no element type holds.
    pub fn read_dyn(&self, name: impl AsRef<str>) -> Result<DynArray> {
        let name = EntryName::new(name.as_ref())?;
        let dtype = self.dtype_of(&name)?;
        if let Some(a) = DynStoredArray::get(self, name.as_str(), &dtype)? {
            return a.to_owned_array();
        }
        let path = self.inner.storage.data_path(&name);
        let file = self
            .inner
            .storage
            .open_data(&name, crate::io::Access::Read)?;
        let a = DynArray::read_npy(&dtype, std::io::BufReader::new(file), &path)?;
        let (meta_path, found) = (self.inner.storage.meta_path(&name), a.shape().to_vec());
        let (_, shape, _) = {
            let slot = self.slot(&name)?;
            let mut s = slot.lock();
            self.read_meta(&name, &mut s)?
        };
        if found != shape {
            return Err(Error::Mismatch {
                path,
                field: "shape",
                found: format!("{found:?}"),
                expected: format!("{shape:?}"),
                other: meta_path,
            });
        }
        Ok(a)
    }

    /// The entry `name` as an owned array of `T`, converted from its stored
    /// element type by a safe cast (see [`Widen`](crate::Widen): `u8` or
    /// `f32` to `f64`, `i32` to `i64`, ...) and from either byte order: a
    /// converting read, as numpy's `astype(..., casting="safe")` and
    /// `ndarray-npy`'s `read_npy` do. Entries already of type `T` are
    /// copied once.
    ///
    /// # Errors
    ///
    /// As [`read_dyn`](Self::read_dyn); [`Error::DtypeMismatch`] when the
    /// cast would lose information (`f64` to `f32`),
    /// [`Error::DimensionMismatch`] for a wrong `D`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("intensity", array![1u16, 500, 65535])?;
    /// let i = store.get_as::<f64, Ix1>("intensity")?;
    /// assert_eq!(i, array![1.0, 500.0, 65535.0]);
    /// assert!(store.get_as::<i8, Ix1>("intensity").is_err()); // would lose values
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_as<T: crate::Widen, D: Dimension>(
        &self,
        name: impl AsRef<str>,
    ) -> Result<ndarray::Array<T, D>> {
        let name = EntryName::new(name.as_ref())?;
        let path = self.inner.storage.meta_path(&name);
        let a = self.read_dyn(name.as_str())?;
        let found = a.dtype();
        let ndim = a.shape().len();
        let a = a.into_array::<T>().ok_or_else(|| Error::DtypeMismatch {
            path: path.clone(),
            expected: T::dtype(),
            found,
        })?;
        a.into_dimensionality::<D>()
            .map_err(|_| Error::DimensionMismatch {
                path,
                expected: D::NDIM.unwrap_or(0),
                found: ndim,
            })
    }

    /// The dtype of `name` from its metadata (or `.npy` header).
    fn dtype_of(&self, name: &EntryName) -> Result<String> {
        loop {
            let slot = self.slot(name)?;
            let mut s = slot.lock();
            if s.retired {
                continue;
            }
            return Ok(self.read_meta(name, &mut s)?.0);
        }
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
        let attrs = s.attrs.as_deref().cloned().unwrap_or_default();
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
            attrs,
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
        // Spills handed to the writers finish first (they hold no lock the
        // caller may hold: see `behind.rs`).
        if let Some(wb) = &self.write_behind {
            wb.wait_idle();
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
        // A background write that failed: its entry stayed in RAM and was
        // just written; the failure is still reported.
        self.take_behind_error()?;
        in_use.map_or(Ok(()), Err)
    }

    /// The first write-behind failure not reported yet, as an error.
    pub(super) fn take_behind_error(&self) -> Result<()> {
        match self.write_behind.as_ref().and_then(|wb| wb.take_error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

/// `dtype` in the host's byte order (`">f8"` -> `"<f8"` on little-endian).
fn native_order(dtype: &str) -> String {
    let native = if cfg!(target_endian = "little") {
        "<"
    } else {
        ">"
    };
    match dtype.strip_prefix(['<', '>', '=']) {
        Some(rest) => format!("{native}{rest}"),
        None => dtype.to_owned(),
    }
}

/// `attrs` as an attribute object (`None` for JSON `null`).
fn attrs_object(name: &EntryName, attrs: serde_json::Value) -> Result<Option<Arc<Attrs>>> {
    match attrs {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Object(m) => Ok(Some(Arc::new(m))),
        other => Err(Error::InvalidAttrs {
            name: name.to_string(),
            reason: format!("attributes must be a JSON object, not {other}"),
        }),
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
        if let Some(wb) = &self.write_behind {
            wb.stop();
            if let Some(e) = wb.take_error() {
                tracing::warn!(dir = %self.storage.location().display(), error = %e, "a background write failed");
            }
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
