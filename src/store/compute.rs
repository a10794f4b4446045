//! `get_or_compute`: an entry computed once, however many threads, and
//! however many processes writing the store, ask for it at the same time.

use std::sync::Arc;

use ndarray::{Array, Dimension};

use super::inner::DiskBackedStore;
use super::stats::Counters;
use super::stored::StoredArray;
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
        // A key removed between the look-up and the `get` is computed.
        if let Some(r) = self.stored(&name) {
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
            if let Some(r) = self.stored(&name) {
                return r.map_err(E::from);
            }
            // Other processes: the one holding the key's compute lock is
            // computing it; once it is released, look again.
            let cross = if self.inner.read_only {
                None
            } else {
                self.inner
                    .storage
                    .compute_lock(&name, self.inner.lock_timeout)?
            };
            if cross.is_some() {
                if let Some(r) = self.stored(&name) {
                    return r.map_err(E::from);
                }
            }
            Counters::add(&self.inner.counters.misses);
            Counters::add(&self.inner.counters.computes);
            match compute() {
                // The handle of the entry inserted, not a new look-up:
                // another thread may remove or replace the key at once.
                // With other writers waiting, it is written before the key
                // is released, so that they find it.
                Ok(a) => self
                    .insert_handle(name.clone(), a, cross.is_some())
                    .map_err(E::from),
                Err(e) => Err(e),
            }
        })();
        let mut inflight = self.inner.inflight.lock();
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&name);
        }
        result
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
        let meta_path = self.inner.storage.meta_path(&name);
        StoredArray::of(loaded, name, meta_path)
    }
}
