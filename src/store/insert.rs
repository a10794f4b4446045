//! Inserting entries: one options value ([`InsertOptions`]) whose choices
//! combine freely, for one entry ([`DiskBackedStore::insert_opts`]) and for
//! batches of any dtypes and shapes ([`Batch`]), and the one place where an
//! entry replaces another in the store's map ([`DiskBackedStore::insert_entry`]).

use std::sync::Arc;

use ndarray::ArrayD;
use parking_lot::Mutex;

use super::entry::{retire_slot, Loaded, Slot, StoreEntry};
use super::inner::{attrs_object, DiskBackedStore};
use super::meta::Attrs;
use crate::array::IntoStoredArray;
use crate::config::ConfigOverrides;
use crate::element::Element;
use crate::error::Result;
use crate::name::EntryName;

/// How an entry is inserted. Every choice combines with every other; the
/// default is [`DiskBackedStore::insert`]'s (kept in RAM until flushed, no
/// attributes, not recomputable, the store's flags).
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use ndarray_offload::{DiskBackedStore, InsertOptions};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// let opts = InsertOptions::new()
///     .durable(true)
///     .attrs(json!({"crs": "EPSG:2056"}))
///     .recomputable(true);
/// store.insert_opts("tile_0001", Array2::<f64>::zeros((100, 3)), &opts)?;
/// let info = store.info("tile_0001")?;
/// assert!(info.flags.recomputable);
/// assert_eq!(info.attrs["crs"], "EPSG:2056");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InsertOptions {
    durable: bool,
    attrs: Option<serde_json::Value>,
    recomputable: bool,
    overrides: ConfigOverrides,
}

impl InsertOptions {
    /// The defaults (those of [`DiskBackedStore::insert`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the entry durably before the insert returns (one atomic pair
    /// publish: after it returns, a power cut loses nothing of it). In a
    /// [`Batch`] every entry is written durably with one round of syncs,
    /// whatever this says.
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// User attributes: a JSON object (a CRS, a tile origin, units,
    /// provenance, ...) stored with the entry in its `.meta.json` under
    /// `ndoffload_attrs`, which GSEGUtils ignores and numpy users read with
    /// `json.load`. Read them back with [`DiskBackedStore::info`]; change
    /// them with [`DiskBackedStore::set_attrs`]. Anything but an object (or
    /// `null`: none) makes the insert fail with
    /// [`Error::InvalidAttrs`](crate::Error::InvalidAttrs).
    pub fn attrs(mut self, attrs: serde_json::Value) -> Self {
        self.attrs = Some(attrs);
        self
    }

    /// A *recomputable* entry: one the program can compute again, which the
    /// disk budget ([`StoreBuilder::disk_budget`](crate::StoreBuilder::disk_budget))
    /// may delete, least recently used first. Written in the entry's
    /// `.meta.json` (`ndoffload_recomputable`) and shown in
    /// [`EntryInfo::flags`](crate::EntryInfo#structfield.flags); replacing
    /// a recomputable entry with an ordinary one makes the key ordinary
    /// again.
    pub fn recomputable(mut self, on: bool) -> Self {
        self.recomputable = on;
        self
    }

    /// A *scratch* entry: this handle deletes its pair when the store is
    /// closed or dropped. A choice of this process only: it is recorded as
    /// GSEGUtils' `purge_disk_on_gc` flag, which never deletes a pair when
    /// the store is opened again (by this crate or by GSEGUtils), and an
    /// entry left by a crash stays on disk whole.
    pub fn scratch(mut self, on: bool) -> Self {
        self.overrides.purge_on_drop = Some(on);
        self
    }

    /// Whether the entry may live on disk (GSEGUtils' `enable_caching`;
    /// off: it stays in RAM, but is still written by `flush` and `close`).
    pub fn caching(mut self, on: bool) -> Self {
        self.overrides.caching = Some(on);
        self
    }

    /// Whether the entry's array offloads itself after each use
    /// (GSEGUtils' `automatic_offloading`).
    pub fn automatic_offloading(mut self, on: bool) -> Self {
        self.overrides.automatic_offloading = Some(on);
        self
    }

    /// The per-entry overrides of the store's defaults, as GSEGUtils'
    /// `add_data_to_store(..., **overrides)` takes them (the `location`
    /// override is not used by store entries).
    pub fn overrides(mut self, overrides: ConfigOverrides) -> Self {
        self.overrides = overrides;
        self
    }
}

/// Makes one entry of a [`Batch`] in the store (its element type known).
type Make = Box<dyn FnOnce(&DiskBackedStore, EntryName, &Checked) -> Loaded + Send>;

/// An entry's options, checked against its name.
pub(super) struct Checked {
    attrs: Option<Arc<Attrs>>,
    recomputable: bool,
    overrides: ConfigOverrides,
}

impl Checked {
    fn of(name: &EntryName, opts: &InsertOptions) -> Result<Checked> {
        let attrs = match &opts.attrs {
            Some(a) => attrs_object(name, a.clone())?,
            None => None,
        };
        Ok(Checked {
            attrs,
            recomputable: opts.recomputable,
            overrides: opts.overrides.clone(),
        })
    }
}

/// Entries to insert together, of any element types and shapes, each with
/// its own [`InsertOptions`]; [`DiskBackedStore::insert_many`] writes them
/// durably with one round of syncs.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Array2};
/// use ndarray_offload::{Batch, DiskBackedStore, InsertOptions};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// let mut batch = Batch::new();
/// batch.push("xyz", Array2::<f64>::zeros((1000, 3)))?;
/// batch.push("labels", array![1u8, 0, 1])?;
/// batch.push_opts("mean", array![0.5f32], &InsertOptions::new().attrs(json!({"of": "xyz"})))?;
/// store.insert_many(batch)?;
/// assert_eq!(store.len(), 3);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Batch {
    items: Vec<(EntryName, Checked, Make)>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|(n, _, _)| n))
            .finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `array` as `name` with the default options.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn push<A: IntoStoredArray>(&mut self, name: impl AsRef<str>, array: A) -> Result<()> {
        self.push_opts(name, array, &InsertOptions::default())
    }

    /// Adds `array` as `name` with `opts` (its durability aside: the whole
    /// batch is written durably).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName),
    /// [`Error::InvalidAttrs`](crate::Error::InvalidAttrs).
    pub fn push_opts<A: IntoStoredArray>(
        &mut self,
        name: impl AsRef<str>,
        array: A,
        opts: &InsertOptions,
    ) -> Result<()> {
        let name = EntryName::new(name.as_ref())?;
        let checked = Checked::of(&name, opts)?;
        let array = array.into_stored_array().into_dyn();
        let make: Make = Box::new(move |store, name, c| store.insert_entry(name, array, c));
        self.items.push((name, checked, make));
        Ok(())
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no entry.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl DiskBackedStore {
    /// Inserts (or replaces) `name` with `array`, kept in RAM until the entry
    /// is flushed, offloaded or the store is closed (or the memory budget
    /// spills it). Replacing an entry never disturbs readers holding the old
    /// value. The short form of [`insert_opts`](Self::insert_opts) with the
    /// default [`InsertOptions`].
    ///
    /// `array` is any [`IntoStoredArray`]: an owned [`Array`](ndarray::Array)
    /// is moved without a copy; a view, a slice or a reference (`&a`) is
    /// copied once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) (nothing on disk is
    /// touched), [`Error::ReadOnly`](crate::Error::ReadOnly), the error of a
    /// write-behind spill that failed since the last call.
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
        self.insert_opts(name, array, &InsertOptions::default())
    }

    /// Inserts and writes the entry durably before returning (one atomic
    /// pair publish: two `fsync`s, two renames, one directory `fsync`). The
    /// short form of [`insert_opts`](Self::insert_opts) with
    /// [`InsertOptions::durable`].
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
        self.insert_opts(name, array, &InsertOptions::new().durable(true))
    }

    /// Inserts (or replaces) `name` with `array` as `opts` says: durably or
    /// not, with attributes, recomputable, scratch, with per-entry flags, in
    /// any combination.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) and
    /// [`Error::InvalidAttrs`](crate::Error::InvalidAttrs) (nothing is
    /// inserted), [`Error::ReadOnly`](crate::Error::ReadOnly), the error of
    /// a write-behind spill that failed since the last call; for a durable
    /// insert, I/O errors (as [`insert_durable`](Self::insert_durable)).
    pub fn insert_opts<A: IntoStoredArray>(
        &self,
        name: impl AsRef<str>,
        array: A,
        opts: &InsertOptions,
    ) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let checked = Checked::of(&name, opts)?;
        let array = array.into_stored_array().into_dyn();
        let loaded = self.insert_entry(name, array, &checked);
        if opts.durable {
            let r = self.inner.settle(loaded.flush());
            self.inner.enforce_budget();
            return r.and_then(|()| self.inner.take_behind_error());
        }
        self.inner.enforce_budget();
        self.inner.take_behind_error()
    }

    /// Inserts many entries of one element type and writes them durably
    /// with one round of syncs: every temporary file is written, then one
    /// `syncfs(2)` of the store's file system (Linux; an `fsync` per file
    /// elsewhere), then the renames and one directory `fsync`. For entries
    /// of several element types, or with options, use a [`Batch`] and
    /// [`insert_many`](Self::insert_many).
    ///
    /// `syncfs` also flushes other programs' pending writes to the same file
    /// system, which can make it slower on a busy disk.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for any name
    /// (nothing is inserted); I/O errors (entries stay in RAM; pairs already
    /// on disk are unchanged).
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
        let mut batch = Batch::new();
        for (n, a) in entries {
            batch.push(n, a)?;
        }
        self.insert_many(batch)
    }

    /// Inserts every entry of `batch` (any element types and shapes, each
    /// with its options) and writes them durably with one round of syncs
    /// (as [`insert_batch`](Self::insert_batch)). A name given twice: the
    /// later entry wins.
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`](crate::Error::ReadOnly); I/O errors (entries
    /// stay in RAM; pairs already on disk are unchanged).
    pub fn insert_many(&self, batch: Batch) -> Result<()> {
        self.check_writable()?;
        let mut items = batch.items;
        let mut seen = std::collections::HashSet::new();
        items.reverse();
        items.retain(|(n, _, _)| seen.insert(n.clone()));
        items.reverse();
        let loaded: Vec<Loaded> = items
            .into_iter()
            .map(|(name, checked, make)| make(self, name, &checked))
            .collect();
        let r = self
            .inner
            .publish_batch(loaded.iter().map(|l| l.as_ref()).collect());
        self.inner.enforce_disk_budget();
        self.inner.settle(r)
    }

    /// Puts a new entry holding `array` at `name` in the store's map,
    /// replacing (and detaching) the entry there: the one place where an
    /// entry replaces another.
    pub(super) fn insert_entry<T: Element>(
        &self,
        name: EntryName,
        array: ArrayD<T>,
        opts: &Checked,
    ) -> Loaded {
        let (mut flags, config) = self.flags_for(&opts.overrides);
        flags.recomputable = opts.recomputable;
        let shape = array.shape().to_vec();
        let loaded: Loaded = Arc::new(StoreEntry::new(
            array,
            &self.inner.storage,
            &name,
            flags,
            &config,
            self.inner.account.clone(),
        ));
        loaded.link().set_attrs(opts.attrs.clone());
        let slot = Slot {
            meta: Some((T::dtype(), shape, flags)),
            attrs: Some(opts.attrs.clone().unwrap_or_default()),
            loaded: Some(loaded.clone()),
            retired: false,
            scratch: flags.purge_on_drop,
        };
        self.inner.incomplete.write().remove(&name);
        // The old entry is detached (keeping its file) before the map is
        // released: a removal of the name, which takes the map, must not
        // delete the file before the old entry kept it. Detaching takes no
        // entry lock (see the lock order in the module documentation).
        let mut entries = self.inner.entries.write();
        let old = entries.insert(name.clone(), Arc::new(Mutex::new(slot)));
        if let Some(old) = old {
            // A handle may hold the old entry: it keeps its data.
            retire_slot(&old, true);
        }
        drop(entries);
        // The name's file (the old entry's, until this one is written) is
        // now this entry's for the disk budget.
        self.inner
            .account
            .disk_touch(&name, Some(opts.recomputable));
        // Only now may the new entry's files replace the old entry's.
        loaded.link().enable_publish();
        if flags.caching {
            self.inner.lru.lock().touch(&name);
        }
        loaded
    }

    /// [`insert_entry`](Self::insert_entry) with the default options, for
    /// the store's own inserts (`get_or_compute`, imports).
    pub(super) fn insert_new<T: Element>(
        &self,
        name: EntryName,
        array: ArrayD<T>,
        recomputable: bool,
    ) -> Loaded {
        let c = Checked {
            attrs: None,
            recomputable,
            overrides: ConfigOverrides::default(),
        };
        self.insert_entry(name, array, &c)
    }
}
