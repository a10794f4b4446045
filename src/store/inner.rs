//! The store's shared state at work: publishing batches, flushing,
//! removing and closing (`impl Inner`), and small helpers of the handle.
//! The lock order at the top of `store/mod.rs` holds here too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use super::behind;
use super::budget::{Account, Lru, SystemPressure};
use super::entry::{retire_slot, with_entry_stopped, AnyEntry, BatchJob, Loaded, Slot};
use super::meta::{Attrs, EntryFlags};
use super::stats::Counters;
use super::storage::{Lease, PairJob, Storage, SyncMode};
use crate::array::ArrayState;
use crate::config::CacheConfig;
use crate::error::{Error, Result};
use crate::name::EntryName;

pub(crate) struct Inner {
    /// Where the entries live: every file operation goes through it.
    pub(super) storage: Arc<dyn Storage>,
    pub(super) read_only: bool,
    pub(super) config: CacheConfig,
    pub(super) defaults: EntryFlags,
    pub(super) entries: RwLock<BTreeMap<EntryName, Arc<Mutex<Slot>>>>,
    pub(super) incomplete: RwLock<BTreeMap<EntryName, String>>,
    /// The store's lock, held until the store is dropped.
    pub(super) _lease: Box<dyn Lease>,
    pub(super) account: Arc<Account>,
    /// The budget in bytes (`u64::MAX`: none).
    pub(super) budget: AtomicU64,
    /// The disk budget in bytes (`u64::MAX`: none).
    pub(super) disk_budget: AtomicU64,
    /// Held while recomputable entries are deleted for the disk budget.
    pub(super) disk_evicting: Mutex<()>,
    pub(super) pressure: Option<SystemPressure>,
    pub(super) lru: Mutex<Lru>,
    pub(super) evicting: Mutex<()>,
    pub(super) last_pressure_check: Mutex<Option<Instant>>,
    pub(super) counters: Counters,
    pub(super) inflight: Mutex<HashMap<EntryName, Arc<Mutex<()>>>>,
    /// The write-behind writers, once started (when the store opens, or at
    /// the first spill the policy writes behind).
    pub(super) write_behind: std::sync::OnceLock<behind::WriteBehind>,
    /// Which spills are written behind.
    pub(super) behind_policy: behind::Policy,
    /// How long `get_or_compute` waits for another process computing the
    /// same key (`None`: as long as it takes).
    pub(super) lock_timeout: Option<std::time::Duration>,
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
    pub(super) inner: Arc<Inner>,
}

impl DiskBackedStore {
    /// The storage the store runs over (for the calls of one backend).
    pub(crate) fn storage(&self) -> &dyn super::storage::Storage {
        &*self.inner.storage
    }

    /// Whether the store maps entries read-write by default (their files
    /// then change in place).
    #[cfg(feature = "remote")]
    pub(crate) fn maps_read_write(&self) -> bool {
        self.inner.config.load_mode() == crate::LoadMode::ReadWrite
    }
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

impl Inner {
    pub(super) fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.storage.location().to_path_buf(),
            })
        } else {
            Ok(())
        }
    }

    pub(super) fn loaded_entries(&self) -> Vec<Loaded> {
        self.entries
            .read()
            .values()
            .filter_map(|s| s.lock().loaded.clone())
            .collect()
    }

    pub(super) fn publish_batch(&self, arrays: Vec<&dyn AnyEntry>) -> Result<()> {
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
    pub(super) fn publish_jobs(
        &self,
        jobs: Vec<PairJob<'_>>,
        marks: Vec<&dyn AnyEntry>,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let versions: Vec<u64> = jobs.iter().map(|j| j.version).collect();
        let named: Vec<(EntryName, bool, Option<Arc<Attrs>>)> = jobs
            .iter()
            .map(|j| (j.name.clone(), j.flags.recomputable, j.attrs.clone()))
            .collect();
        let ids = self.storage.publish(jobs, SyncMode::FileSystem)?;
        let mut first = None;
        for (((a, v), id), (name, recomputable, attrs)) in
            marks.into_iter().zip(versions).zip(ids).zip(named)
        {
            if let Some(p) = id {
                a.mark_published(v, p.id);
                a.link().note_version(p);
                self.account
                    .disk_published(&*self.storage, &name, recomputable);
                if let Err(e) = a.link().settle_attrs(&attrs) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) fn flush(&self) -> Result<()> {
        let r = self.flush_entries();
        // What the flush wrote may take the files over the disk budget.
        self.enforce_disk_budget();
        r
    }

    fn flush_entries(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // Spills handed to the writers finish first (they hold no lock the
        // caller may hold: see `behind.rs`).
        if let Some(wb) = self.write_behind.get() {
            wb.wait_idle();
        }
        let loaded = self.loaded_entries();
        // An entry the calling thread is writing to is not flushed (its
        // error is returned at the end); everything else is.
        let in_use = in_use_error(self.publish_batch(loaded.iter().map(|l| l.as_ref()).collect()))?;
        // Spills renamed files without syncing the directory.
        if self.account.take_dir_unsynced() | self.storage.has_unsynced() {
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

    /// Takes `name`'s entry out of the map (its value on this handle is
    /// stale or lost): handles keep what they hold; the next look-up reads
    /// the storage again.
    pub(super) fn retire(
        &self,
        entries: &mut BTreeMap<EntryName, Arc<Mutex<Slot>>>,
        name: &EntryName,
    ) {
        if let Some(old) = entries.remove(name) {
            retire_slot(&old, false);
        }
        self.lru.lock().remove(name);
    }

    /// After `r`, an error: entries whose write lost a race with another
    /// writer of the storage (an object store's conditional commit,
    /// [`Error::Conflict`]) are retired, so that they read as the winner's
    /// value.
    pub(super) fn settle<R>(&self, r: Result<R>) -> Result<R> {
        if r.is_err() {
            let lost = self.storage.take_lost();
            if !lost.is_empty() {
                let mut entries = self.entries.write();
                for name in &lost {
                    self.retire(&mut entries, name);
                }
            }
        }
        r
    }

    /// The first write-behind failure not reported yet, as an error.
    pub(super) fn take_behind_error(&self) -> Result<()> {
        match self.write_behind.get().and_then(|wb| wb.take_error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(super) fn remove(&self, name: &EntryName) -> Result<bool> {
        self.check_writable()?;
        let mut entries = self.entries.write();
        self.remove_locked(&mut entries, name)
    }

    /// [`remove`](Self::remove), with the map held.
    pub(super) fn remove_locked(
        &self,
        entries: &mut BTreeMap<EntryName, Arc<Mutex<Slot>>>,
        name: &EntryName,
    ) -> Result<bool> {
        let broken = self.incomplete.read().contains_key(name);
        let existed = entries.contains_key(name) || broken;
        // A handle may hold the entry: it keeps the file it reads from open
        // before the file is deleted. A publish of the entry still in flight
        // (a flush, or a spill written behind, that took it before the
        // removal) must not bring the files back: whether there are files
        // is asked once the entry stopped publishing (under `io::OWNERSHIP`,
        // which every publish's renames hold), so a publish that renamed
        // its pair in just before is seen and deleted.
        let loaded = entries.get(name).and_then(|s| s.lock().loaded.clone());
        with_entry_stopped(loaded.as_ref(), || match self.storage.exists(name) {
            true => self.storage.remove(name),
            false => Ok(()),
        })?;
        // No file of the name is left (the disk budget stops counting one
        // that vanished without the store).
        self.account.disk_removed(name);
        if let Some(old) = entries.remove(name) {
            retire_slot(&old, true);
        }
        self.lru.lock().remove(name);
        self.incomplete.write().remove(name);
        Ok(existed)
    }

    /// Flushes and deletes the scratch entries inserted through this handle.
    pub(super) fn finish(&self) -> Result<()> {
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

/// `attrs` as an attribute object (`None` for JSON `null`).
pub(super) fn attrs_object(
    name: &EntryName,
    attrs: serde_json::Value,
) -> Result<Option<Arc<Attrs>>> {
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
pub(super) fn in_use_error(r: Result<()>) -> Result<Option<Error>> {
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
        if let Some(wb) = self.write_behind.get() {
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
