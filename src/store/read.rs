//! The read side of [`DiskBackedStore`]: look-ups, typed, dynamic and
//! converting reads, entry summaries and the listing of other processes'
//! entries and writers.

use std::sync::Arc;

use ndarray::Dimension;
use parking_lot::Mutex;

use super::entry::{Loaded, Slot, StoreEntry};
use super::inner::{DiskBackedStore, EntryInfo};
use super::meta::EntryFlags;
use super::stats::Counters;
use super::storage::Listed;
use super::storage::WriterInfo;
use super::stored::{DynStoredArray, StoredArray};
use crate::array::ArrayState;
use crate::config::ConfigOverrides;
use crate::dynarray::DynArray;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

impl DiskBackedStore {
    pub(super) fn slot(&self, name: &EntryName) -> Result<Arc<Mutex<Slot>>> {
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

    /// Whether this handle holds `name`'s data in RAM or mapped (read
    /// through it, nothing is fetched).
    pub(crate) fn holds_data(&self, name: &EntryName) -> bool {
        let Some(slot) = self.inner.entries.read().get(name).cloned() else {
            return false;
        };
        let s = slot.lock();
        !s.retired
            && s.loaded
                .as_ref()
                .is_some_and(|l| l.state() != ArrayState::Offloaded)
    }

    pub(super) fn read_meta(
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
            let mut version = None;
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
                opened = checked.file.map(|(f, info)| (f, checked.id, Some(info)));
                version = checked.version;
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
                    if let Some(v) = version {
                        l.link().note_version(v);
                    }
                    s.loaded = Some(l.clone());
                    l
                }
            };
            break loaded;
        };
        if loaded.state() == ArrayState::Offloaded {
            Counters::add(&self.inner.counters.loads);
            if self.inner.storage.holds_copies() {
                self.fetch_copy(&name);
            }
        } else {
            Counters::add(&self.inner.counters.hits);
        }
        if loaded.flags().caching {
            // Mapped entries count against the budget too: track them all.
            self.inner.lru.lock().touch(&name);
        }
        self.inner
            .account
            .disk_touch(&name, Some(loaded.flags().recomputable));
        let storage = &self.inner.storage;
        StoredArray::of(loaded, name, |n| storage.meta_path(n))
    }

    /// Fetches the copy of `name` to map now (it is read next), and counts
    /// it in the disk budget, which then holds. Out of line: `get`'s frame
    /// stays small (it is on the stack below every header parse).
    #[inline(never)]
    fn fetch_copy(&self, name: &EntryName) {
        let _ = self.inner.storage.read_header(name);
        self.inner
            .account
            .disk_published(&*self.inner.storage, name, true);
        // The window cache's bytes of it were dropped with the download.
        self.inner
            .account
            .disk_window(name, self.inner.storage.window_bytes(name));
        self.inner.enforce_disk_budget();
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
        let dtype = match self.dyn_entry(&name)? {
            Ok(a) => return Ok(a),
            Err(dtype) => dtype,
        };
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

    /// The entry `name` as the [`DynStoredArray`] of its own dtype, or
    /// that dtype when no element type maps it. The dtype is the one of the
    /// version read: when another process replaced the entry with one of
    /// another dtype between reading its metadata and reading the pair,
    /// the entry is looked up again (up to [`DYN_ATTEMPTS`] times), so an
    /// untyped read never fails because of a concurrent replace.
    fn dyn_entry(&self, name: &EntryName) -> Result<std::result::Result<DynStoredArray, String>> {
        let mut attempt = 0;
        loop {
            let dtype = self.dtype_of(name)?;
            match DynStoredArray::get(self, name.as_str(), &dtype) {
                Ok(Some(a)) => return Ok(Ok(a)),
                Ok(None) => return Ok(Err(dtype)),
                Err(e @ Error::DtypeMismatch { .. }) => {
                    attempt += 1;
                    // The dtype of the version now known to this handle.
                    if attempt >= DYN_ATTEMPTS || self.dtype_of(name)? == dtype {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A copy in RAM of the entry `name`, whatever its element type and
    /// byte order: big-endian `.npy` files (written by numpy or GSEGUtils on
    /// another machine, or with `dtype=">f8"`) are read and swapped, as
    /// numpy and `ndarray-npy`'s `read_npy` do.
    ///
    /// The metadata and the data read are one version of the entry, whatever
    /// other processes replace meanwhile (with values of another dtype or
    /// shape too).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`Error::Corrupt`] for a data file that does
    /// not read, [`Error::Unsupported`] for a dtype no element type holds.
    pub fn read_dyn(&self, name: impl AsRef<str>) -> Result<DynArray> {
        let name = EntryName::new(name.as_ref())?;
        if let Ok(a) = self.dyn_entry(&name)? {
            return a.to_owned_array();
        }
        // Not mappable (the other byte order): read the pair once more as
        // one version, and the data from the file opened with it.
        let path = self.inner.storage.data_path(&name);
        let checked = self.inner.storage.read_checked(&name)?;
        let Some((file, info)) = checked.file else {
            // The pair disagrees for good: the same error as a typed read.
            let found = self.inner.storage.read_header(&name)?;
            let meta_path = self.inner.storage.meta_path(&name);
            let (field, found, expected) = match &checked.meta.dtype {
                Some(d) if *d != found.descr => ("dtype", found.descr, d.clone()),
                _ => (
                    "shape",
                    format!("{:?}", found.shape),
                    format!("{:?}", checked.meta.shape.unwrap_or_default()),
                ),
            };
            return Err(Error::Mismatch {
                path,
                field,
                found,
                expected,
                other: meta_path,
            });
        };
        DynArray::read_npy(&info.descr, std::io::BufReader::new(file), &path)
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
    pub(super) fn dtype_of(&self, name: &EntryName) -> Result<String> {
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
                    Some(id) => {
                        let token = l.link().token_of(id);
                        !self.inner.storage.is_current(name, id, token.as_deref())
                    }
                },
            };
            if stale {
                retired.push(name.clone());
            }
        }
        for name in &retired {
            self.inner.retire(&mut entries, name);
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
}

/// How many times an untyped read looks an entry up again when another
/// process changed its dtype in between (each look-up reads a newer
/// version, so this bounds only a writer replacing the entry faster than it
/// can be read).
const DYN_ATTEMPTS: u32 = 1000;

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
