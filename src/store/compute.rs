//! `get_or_compute`: an entry computed once, however many threads ask for
//! it at the same time.

use std::sync::Arc;

use ndarray::{Array, Dimension};

use super::stats::Counters;
use super::{DiskBackedStore, StoredArray};
use crate::config::ConfigOverrides;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

impl DiskBackedStore {
    /// The entry `name`, computed by `compute`, stored and returned if it
    /// does not exist. Concurrent callers for one missing name compute it
    /// once; the others wait and get the stored value.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get) and [`insert`](Self::insert).
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
        if self.inner.entries.read().contains_key(&name) {
            match self.get(name.as_str()) {
                Err(Error::KeyNotFound { .. }) => {}
                r => return Ok(r?),
            }
        }
        let gate = self
            .inner
            .inflight
            .lock()
            .entry(name.clone())
            .or_default()
            .clone();
        let result = {
            let _g = gate.lock();
            let stored = if self.inner.entries.read().contains_key(&name) {
                match self.get(name.as_str()) {
                    Err(Error::KeyNotFound { .. }) => None,
                    r => Some(r),
                }
            } else {
                None
            };
            match stored {
                Some(r) => r.map_err(E::from),
                None => {
                    Counters::add(&self.inner.counters.misses);
                    Counters::add(&self.inner.counters.computes);
                    match compute() {
                        // The handle of the entry inserted, not a new look-up:
                        // another thread may remove or replace the key at once.
                        Ok(a) => self.insert_handle(name.clone(), a).map_err(E::from),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        let mut inflight = self.inner.inflight.lock();
        if Arc::strong_count(&gate) <= 2 {
            inflight.remove(&name);
        }
        result
    }

    /// Inserts `array` as `name` (as [`insert`](Self::insert)) and returns
    /// the handle of the entry inserted.
    fn insert_handle<T: Element, D: Dimension>(
        &self,
        name: EntryName,
        array: Array<T, D>,
    ) -> Result<StoredArray<T, D>> {
        self.check_writable()?;
        let loaded = self.insert_entry(
            name.clone(),
            array.into_dyn(),
            &ConfigOverrides::default(),
            None,
        );
        self.inner.enforce_budget();
        // Counted as the `get` of the inserted value.
        Counters::add(&self.inner.counters.hits);
        let meta_path = self.inner.storage.meta_path(&name);
        StoredArray::of(loaded, name, meta_path)
    }
}
