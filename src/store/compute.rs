//! `get_or_compute`: an entry computed once, however many threads, and
//! however many processes writing the store, ask for it at the same time.

use std::sync::Arc;

use ndarray::{Array, Dimension};

use super::inner::DiskBackedStore;
use super::stats::Counters;
use super::stored::{DynStoredArray, StoredArray};
use crate::dynarray::DynArray;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

impl DiskBackedStore {
    /// The entry `name`, computed by `compute`, stored and returned if it
    /// does not exist. Concurrent callers for one missing name compute it
    /// once; the others wait and get the stored value.
    ///
    /// Across processes too: while other writers may be open (a store not
    /// opened [`exclusive`](crate::StoreBuilder::exclusive)), the caller that
    /// computes holds the key's compute lock (`.ndoffload/locks/NAME.compute`)
    /// and writes the entry durably before releasing it; callers in other
    /// processes wait for the lock (a blocking `flock`, no polling; see
    /// [`StoreBuilder::lock_timeout`](crate::StoreBuilder::lock_timeout))
    /// and then map the stored entry. A computation that fails, or whose
    /// process dies, releases the key: a waiter then computes it.
    ///
    /// The entry is *recomputable* (`ndoffload_recomputable` in its
    /// metadata): the disk budget
    /// ([`StoreBuilder::disk_budget`](crate::StoreBuilder::disk_budget)) may
    /// delete it, and the next call computes it again.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get) and [`insert`](Self::insert); [`Error::Locked`]
    /// naming the process computing the key when the lock timeout passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{Array1, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// let a = store.get_or_compute::<f32, Ix1, _>("ramp", || Array1::linspace(0.0, 1.0, 5))?;
    /// let b = store.get_or_compute::<f32, Ix1, _>("ramp", || unreachable!())?;
    /// assert_eq!(a.to_owned_array()?, b.to_owned_array()?);
    /// assert_eq!(store.stats().computes, 1);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_or_compute<T, D, F>(
        &self,
        name: impl AsRef<str>,
        compute: F,
    ) -> Result<StoredArray<T, D>>
    where
        T: Element,
        D: Dimension,
        F: FnOnce() -> Array<T, D>,
    {
        self.try_get_or_compute(name, || Ok::<_, Error>(compute()))
    }

    /// [`get_or_compute`](Self::get_or_compute) with a fallible computation;
    /// its error is returned as it is and nothing is stored.
    ///
    /// # Errors
    ///
    /// The computation's error, or the store's (converted with `From`).
    pub fn try_get_or_compute<T, D, F, E>(
        &self,
        name: impl AsRef<str>,
        compute: F,
    ) -> Result<StoredArray<T, D>, E>
    where
        T: Element,
        D: Dimension,
        F: FnOnce() -> Result<Array<T, D>, E>,
        E: From<Error>,
    {
        let name = EntryName::new(name.as_ref())?;
        self.compute_once(
            &name,
            || self.stored(&name),
            |durable| match compute() {
                // The handle of the entry inserted, not a new look-up:
                // another thread may remove or replace the key at once.
                Ok(a) => self
                    .insert_handle(name.clone(), a, durable)
                    .map_err(E::from),
                Err(e) => Err(e),
            },
        )
    }

    /// [`try_get_or_compute`](Self::try_get_or_compute) for a computation
    /// whose element type is known only when it returns (a binding to a
    /// dynamically typed language): the value is a [`DynArray`] and the
    /// entry is returned as a [`DynStoredArray`]. The same guarantees hold:
    /// one computation across threads and processes, nothing stored on
    /// error, the entry recomputable.
    ///
    /// # Errors
    ///
    /// As [`try_get_or_compute`](Self::try_get_or_compute), and as
    /// [`get_dyn`](Self::get_dyn) for a stored entry.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::ArrayD;
    /// use ndarray_offload::{DiskBackedStore, DynArray, Error};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// let make = || Ok::<_, Error>(DynArray::from(ArrayD::<u16>::zeros(vec![3, 2])));
    /// let a = store.try_get_or_compute_dyn("grid", make)?;
    /// assert_eq!((a.dtype(), a.shape()), ("<u2".to_string(), &[3, 2][..]));
    /// let b = store.try_get_or_compute_dyn("grid", || -> Result<DynArray, Error> { unreachable!() })?;
    /// assert_eq!(b.dtype(), "<u2");
    /// assert_eq!(store.stats().computes, 1);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get_or_compute_dyn<F, E>(
        &self,
        name: impl AsRef<str>,
        compute: F,
    ) -> Result<DynStoredArray, E>
    where
        F: FnOnce() -> Result<DynArray, E>,
        E: From<Error>,
    {
        let name = EntryName::new(name.as_ref())?;
        self.compute_once(
            &name,
            || self.stored_dyn(&name),
            |durable| match compute() {
                Ok(a) => self.insert_handle_dyn(&name, a, durable).map_err(E::from),
                Err(e) => Err(e),
            },
        )
    }

    /// The compute-once protocol: `stored` looks the entry up (`None` when
    /// there is none); `compute` computes and inserts it, writing it first
    /// when told (other writers wait for it).
    fn compute_once<R, E>(
        &self,
        name: &EntryName,
        stored: impl Fn() -> Option<Result<R>>,
        compute: impl FnOnce(bool) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<Error>,
    {
        // A key removed between the look-up and the `get` is computed.
        if let Some(r) = stored() {
            return Ok(r?);
        }
        let gate = self
            .inner
            .inflight
            .lock()
            .entry(name.clone())
            .or_default()
            .clone();
        let result = (|| {
            let _g = gate.lock();
            if let Some(r) = stored() {
                return r.map_err(E::from);
            }
            // Other processes: the one holding the key's compute lock is
            // computing it; once it is released, look again.
            let cross = if self.inner.read_only {
                None
            } else {
                self.inner
                    .storage
                    .compute_lock(name, self.inner.lock_timeout)?
            };
            if cross.is_some() {
                if let Some(r) = stored() {
                    return r.map_err(E::from);
                }
            }
            Counters::add(&self.inner.counters.misses);
            Counters::add(&self.inner.counters.computes);
            // With other writers waiting, the entry is written before the
            // key is released, so that they find it.
            compute(cross.is_some())
        })();
        let mut inflight = self.inner.inflight.lock();
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(name);
        }
        result
    }

    /// The stored entry `name` as a [`DynStoredArray`] (looked up on disk
    /// too), or `None` when there is none.
    fn stored_dyn(&self, name: &EntryName) -> Option<Result<DynStoredArray>> {
        if !self.inner.entries.read().contains_key(name) && !self.inner.storage.is_pair(name) {
            return None;
        }
        match self.get_dyn(name.as_str()) {
            Err(Error::KeyNotFound { .. }) => None,
            r => Some(r),
        }
    }

    /// [`insert_handle`](Self::insert_handle) of a [`DynArray`].
    fn insert_handle_dyn(
        &self,
        name: &EntryName,
        array: DynArray,
        durable: bool,
    ) -> Result<DynStoredArray> {
        macro_rules! each {
            ($($v:ident),*) => {
                match array {
                    $(DynArray::$v(a) => {
                        self.insert_handle(name.clone(), a, durable).map(DynStoredArray::$v)
                    })*
                }
            };
        }
        each!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64, C32, C64)
    }

    /// The stored entry `name` (looked up on disk too), or `None` when there
    /// is none.
    fn stored<T: Element, D: Dimension>(
        &self,
        name: &EntryName,
    ) -> Option<Result<StoredArray<T, D>>> {
        if !self.inner.entries.read().contains_key(name) && !self.inner.storage.is_pair(name) {
            return None;
        }
        match self.get(name.as_str()) {
            Err(Error::KeyNotFound { .. }) => None,
            r => Some(r),
        }
    }

    /// Inserts `array` as `name` (as [`insert`](Self::insert)) and returns
    /// the handle of the entry inserted.
    fn insert_handle<T: Element, D: Dimension>(
        &self,
        name: EntryName,
        array: Array<T, D>,
        durable: bool,
    ) -> Result<StoredArray<T, D>> {
        self.check_writable()?;
        // Computed entries may be computed again: the disk budget may
        // delete them.
        let loaded = self.insert_new(name.clone(), array.into_dyn(), true);
        if durable {
            match self.inner.settle(loaded.flush()) {
                Ok(()) => {}
                // Another node of an object store committed it first: its
                // value is the entry's.
                Err(Error::Conflict { .. }) => return self.get(name.as_str()),
                Err(e) => return Err(e),
            }
        }
        self.inner.enforce_budget();
        // Counted as the `get` of the inserted value.
        Counters::add(&self.inner.counters.hits);
        let storage = &self.inner.storage;
        StoredArray::of(loaded, name, |n| storage.meta_path(n))
    }
}
