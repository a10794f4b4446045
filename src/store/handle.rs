//! The store handle's own calls: opening shortcuts, attributes, removal,
//! flush, offload and close (inserts are in `insert.rs`, reads in
//! `read.rs`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::entry::{Loaded, Slot};
use super::inner::{attrs_object, in_use_error, DiskBackedStore};
use super::meta::EntryFlags;
use super::open::{open_store, OpenOptions};
use super::stats::{Counters, StoreStats};
use crate::array::ArrayState;
use crate::config::{CacheConfig, ConfigOverrides};
#[allow(unused_imports)] // named by the documentation
use crate::error::{Error, Result};
use crate::name::EntryName;

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

    pub(super) fn check_writable(&self) -> Result<()> {
        self.inner.check_writable()
    }

    pub(super) fn flags_for(&self, overrides: &ConfigOverrides) -> (EntryFlags, CacheConfig) {
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
        let write = || match self.inner.storage.exists(&name) {
            true => self.inner.storage.set_attrs(&name, &attrs),
            false => Ok(()),
        };
        match &s.loaded {
            // Serialized with the entry's publishes (see `replace_attrs`).
            Some(l) => l.link().replace_attrs(Some(attrs.clone()), write)?,
            None => write()?,
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

    pub(super) fn loaded_entry(&self, name: &str) -> Result<Option<Loaded>> {
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

    /// The names of the writes staged in the store's directory and not yet
    /// committed to its durable home: for a store over an object store
    /// ([`StoreBuilder::remote`](crate::StoreBuilder::remote)), the spills
    /// and the writes whose commit failed, which [`flush`](Self::flush)
    /// commits (also those a crashed handle on the same cache directory
    /// left). Always empty for a local directory, whose files are the
    /// durable home.
    pub fn pending_writes(&self) -> Vec<String> {
        self.inner
            .storage
            .staged()
            .into_iter()
            .map(|n| n.as_str().to_string())
            .collect()
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
        if let Some(wb) = self.inner.write_behind.get() {
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

impl DiskBackedStore {
    /// A snapshot of the store's statistics.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("a", array![1.0f64, 2.0])?;
    /// store.get::<f64, Ix1>("a")?;
    /// let _ = store.get::<f64, Ix1>("b");
    /// let s = store.stats();
    /// assert_eq!((s.hits, s.misses, s.bytes_resident), (1, 1, 16));
    /// println!("{s}");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let mut st = StoreStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            computes: c.computes.load(Ordering::Relaxed),
            offloads: c.offloads.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed)
                + self.inner.write_behind.get().map_or(0, |w| w.written()),
            over_budget_events: c.over_budget.load(Ordering::Relaxed),
            bytes_resident: self.inner.account.resident(),
            budget: self.inner.budget(),
            bytes_in_flight: self.inner.write_behind.get().map_or(0, |w| w.in_flight()),
            write_behind_failures: self.inner.write_behind.get().map_or(0, |w| w.failures()),
            disk_budget: self.inner.disk_budget(),
            bytes_in_files: self.inner.account.disk_bytes(),
            disk_evictions: c.disk_evictions.load(Ordering::Relaxed),
            bytes_disk_evicted: c.disk_evicted_bytes.load(Ordering::Relaxed),
            disk_over_budget_events: c.disk_over_budget.load(Ordering::Relaxed),
            write_behind_time: self
                .inner
                .write_behind
                .get()
                .map_or_else(Default::default, |w| w.busy()),
            remote: self.inner.storage.remote_stats(),
            ..Default::default()
        };
        let slots: Vec<(EntryName, Arc<Mutex<Slot>>)> = self
            .inner
            .entries
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, slot) in slots {
            let s = slot.lock();
            match &s.loaded {
                Some(l) => {
                    if l.state() != ArrayState::Offloaded {
                        st.entries_resident += 1;
                    }
                    if l.is_persisted() {
                        st.entries_on_disk += 1;
                        st.bytes_on_disk += l.nbytes();
                    }
                }
                None => {
                    st.entries_on_disk += 1;
                    let nbytes = s.meta.as_ref().and_then(|(d, shape, _)| {
                        crate::element::dtype_itemsize(d).and_then(|size| {
                            shape
                                .iter()
                                .try_fold(size as u64, |a, &x| a.checked_mul(x as u64))
                        })
                    });
                    st.bytes_on_disk += nbytes.unwrap_or_else(|| {
                        let found = self.inner.storage.stat_data(&name);
                        found.filter(|f| f.is_file()).map_or(0, |f| f.len)
                    });
                }
            }
        }
        st
    }

    /// Resets the counters (hits, misses, loads, computes, offloads,
    /// evictions, over-budget events, disk evictions and their bytes, disk
    /// over-budget events).
    pub fn reset_stats(&self) {
        self.inner.counters.reset();
        if let Some(w) = self.inner.write_behind.get() {
            w.reset_counts();
        }
    }
}
