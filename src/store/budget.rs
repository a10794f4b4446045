//! A store's budgets. The memory budget: the accounting of resident bytes
//! its entries report ([`Account`]), the least-recently-used order of
//! resident entries, offloading on system memory pressure, and eviction.
//! The disk budget: the bytes of the entries' files ([`DiskLedger`], kept
//! in the [`Account`] while a disk budget is set) and the deletion of
//! recomputable entries, least recently used first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::entry::Loaded;
use super::stats::Counters;
use super::storage::Storage;
use super::{DiskBackedStore, Inner};
use crate::array::ArrayState;
use crate::mmap::LoadMode;
use crate::name::EntryName;
use crate::size::{available_memory, ByteSize};

/// Offloading on host-wide memory pressure (off by default).
///
/// When the memory available to the process (as `sysinfo` reports it for
/// the host, capped by the process's cgroup limit on Linux) falls below
/// `min_available`, the store offloads least-recently-used entries until its
/// resident bytes are at most `target_resident`.
///
/// # Examples
///
/// ```
/// use ndarray_offload::{StoreBuilder, SystemPressure};
///
/// let dir = tempfile::tempdir()?;
/// let store = StoreBuilder::new(dir.path())
///     .system_pressure(SystemPressure::new(512 << 20, 64 << 20))
///     .open()?;
/// # drop(store);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SystemPressure {
    /// Available-memory threshold that triggers offloading.
    pub min_available: u64,
    /// Resident bytes to offload down to once triggered.
    pub target_resident: u64,
}

impl SystemPressure {
    /// Offload down to `target_resident` bytes whenever less than
    /// `min_available` bytes of memory are available.
    pub const fn new(min_available: u64, target_resident: u64) -> Self {
        SystemPressure {
            min_available,
            target_resident,
        }
    }
}

/// Resident entries in least-recently-used order.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    by_tick: BTreeMap<u64, EntryName>,
    tick_of: std::collections::HashMap<EntryName, u64>,
    next: u64,
}

impl Lru {
    /// Marks `name` as used now (adding it if absent).
    pub(crate) fn touch(&mut self, name: &EntryName) {
        self.next += 1;
        if let Some(old) = self.tick_of.insert(name.clone(), self.next) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.next, name.clone());
    }

    /// Stops tracking `name`.
    pub(crate) fn remove(&mut self, name: &EntryName) {
        if let Some(t) = self.tick_of.remove(name) {
            self.by_tick.remove(&t);
        }
    }

    /// Names from least to most recently used.
    pub(crate) fn oldest_first(&self) -> Vec<EntryName> {
        self.by_tick.values().cloned().collect()
    }

    /// Number of tracked names.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_tick.len()
    }
}

/// One entry's file, as the disk budget knows it.
#[derive(Debug)]
struct DiskRec {
    /// Length of the entry's `.npy` file.
    bytes: u64,
    /// Whether the entry the name holds now is recomputable (`None`: not
    /// known yet; its metadata is read when it is a candidate).
    recomputable: Option<bool>,
    /// Its place in the least-recently-used order.
    tick: u64,
}

/// The entries' files this handle knows of, with their lengths, in
/// least-recently-used order (what the disk budget limits).
#[derive(Debug, Default)]
pub(crate) struct DiskLedger {
    recs: HashMap<EntryName, DiskRec>,
    by_tick: BTreeMap<u64, EntryName>,
    next: u64,
    total: u64,
}

impl DiskLedger {
    fn retick(&mut self, name: &EntryName) {
        self.next += 1;
        let next = self.next;
        if let Some(r) = self.recs.get_mut(name) {
            self.by_tick.remove(&r.tick);
            r.tick = next;
            self.by_tick.insert(next, name.clone());
        }
    }

    /// `name`'s file is now `bytes` long (`None`: gone).
    fn set(&mut self, name: &EntryName, bytes: Option<u64>, recomputable: Option<bool>) {
        let Some(bytes) = bytes else {
            self.remove(name);
            return;
        };
        match self.recs.get_mut(name) {
            Some(r) => {
                self.total = self.total - r.bytes + bytes;
                r.bytes = bytes;
                if recomputable.is_some() {
                    r.recomputable = recomputable;
                }
            }
            None => {
                self.next += 1;
                self.total += bytes;
                self.by_tick.insert(self.next, name.clone());
                self.recs.insert(
                    name.clone(),
                    DiskRec {
                        bytes,
                        recomputable,
                        tick: self.next,
                    },
                );
            }
        }
    }

    fn remove(&mut self, name: &EntryName) {
        if let Some(r) = self.recs.remove(name) {
            self.by_tick.remove(&r.tick);
            self.total -= r.bytes;
        }
    }

    /// The least recently used name not known to be ordinary and not in
    /// `skip`.
    fn candidate(&self, skip: &HashSet<EntryName>) -> Option<(EntryName, u64)> {
        self.by_tick.values().find_map(|n| {
            let r = &self.recs[n];
            (r.recomputable != Some(false) && !skip.contains(n)).then(|| (n.clone(), r.bytes))
        })
    }
}

/// The store's accounting of resident bytes (and, while a disk budget is
/// set, of its entries' files), shared with its entries.
pub(crate) struct Account {
    resident: AtomicU64,
    /// Set when a spill renamed files without syncing the directory.
    dir_unsynced: AtomicBool,
    /// Set while the budget is exceeded because entries are pinned.
    over: AtomicBool,
    /// The entries' files, while a disk budget is set (a leaf lock: nothing
    /// is waited for under it).
    disk: Mutex<Option<DiskLedger>>,
    /// Whether `disk` is kept (read without its lock).
    tracks_disk: AtomicBool,
    store: Weak<Inner>,
}

impl Account {
    /// The accounting of the store `store` (nothing resident yet).
    pub(super) fn new(store: Weak<Inner>) -> Self {
        Account {
            resident: AtomicU64::new(0),
            dir_unsynced: AtomicBool::new(false),
            over: AtomicBool::new(false),
            disk: Mutex::new(None),
            tracks_disk: AtomicBool::new(false),
            store,
        }
    }

    /// `name`'s pair was just published (its file is looked up once, only
    /// while a disk budget is set).
    pub(crate) fn disk_published(
        &self,
        storage: &dyn Storage,
        name: &EntryName,
        recomputable: bool,
    ) {
        if !self.tracks_disk.load(Ordering::Acquire) {
            return;
        }
        let bytes = storage
            .stat_data(name)
            .filter(|f| f.is_file())
            .map(|f| f.len);
        if let Some(d) = self.disk.lock().as_mut() {
            d.set(name, bytes, Some(recomputable));
        }
    }

    /// `name`'s files were deleted.
    pub(super) fn disk_removed(&self, name: &EntryName) {
        if let Some(d) = self.disk.lock().as_mut() {
            d.remove(name);
        }
    }

    /// `name` was used (or now holds an entry whose flag is `recomputable`).
    pub(super) fn disk_touch(&self, name: &EntryName, recomputable: Option<bool>) {
        if !self.tracks_disk.load(Ordering::Acquire) {
            return;
        }
        if let Some(d) = self.disk.lock().as_mut() {
            d.retick(name);
            if let (Some(r), Some(flag)) = (d.recs.get_mut(name), recomputable) {
                r.recomputable = Some(flag);
            }
        }
    }

    /// Bytes of the entries' files this handle knows of (`None`: no disk
    /// budget was ever set, so they are not counted).
    pub(super) fn disk_bytes(&self) -> Option<u64> {
        self.disk.lock().as_ref().map(|d| d.total)
    }

    pub(crate) fn add_resident(&self, delta: i64) {
        if delta >= 0 {
            self.resident.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.resident
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    pub(super) fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Whether a spill renamed files without syncing the directory since
    /// the last call (the caller syncs it, or marks it again).
    pub(super) fn take_dir_unsynced(&self) -> bool {
        self.dir_unsynced.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn mark_dir_unsynced(&self) {
        self.dir_unsynced.store(true, Ordering::Release);
    }

    /// Puts `name` back into the least-recently-used order (it was mapped
    /// by an access the store did not see).
    pub(crate) fn touch(&self, name: &EntryName) {
        if let Some(inner) = self.store.upgrade() {
            inner.lru.lock().touch(name);
        }
    }

    /// A guard on an entry ended: if the store is over its budget (because
    /// entries were pinned, or because the access mapped an entry), evict
    /// now.
    pub(crate) fn guard_released(&self) {
        if let Some(inner) = self.store.upgrade() {
            if self.over.load(Ordering::Relaxed)
                || inner.budget().is_some_and(|b| self.resident() > b)
            {
                inner.enforce_budget();
                crate::mmap::trim_if_due();
            }
        }
    }
}

impl DiskBackedStore {
    /// Changes the memory budget (`None`: no budget) and enforces it:
    /// least-recently-used entries are offloaded until the store is within
    /// it (as after every insert, and whenever a guard ends while the store
    /// is over budget).
    pub fn set_memory_budget(&self, budget: Option<ByteSize>) {
        let b = budget.map_or(u64::MAX, |b| b.bytes().min(u64::MAX - 1));
        self.inner.budget.store(b, Ordering::Relaxed);
        self.inner.enforce_budget();
    }

    /// Total bytes of entries currently held in RAM.
    pub fn resident_bytes(&self) -> u64 {
        self.inner.account.resident()
    }

    /// Changes the disk budget (`None`: no budget) and enforces it; see
    /// [`StoreBuilder::disk_budget`](crate::StoreBuilder::disk_budget). The
    /// first budget set on a store opened without one looks up the length
    /// of every entry's file once.
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`](crate::Error::ReadOnly) for a budget on a
    /// read-only handle (which deletes nothing).
    pub fn set_disk_budget(&self, budget: Option<ByteSize>) -> crate::Result<()> {
        if budget.is_some() {
            self.inner.check_writable()?;
        }
        self.inner.set_disk_budget(budget.map(|b| b.bytes()));
        Ok(())
    }
}

impl Inner {
    pub(super) fn disk_budget(&self) -> Option<u64> {
        let b = self.disk_budget.load(Ordering::Relaxed);
        (b != u64::MAX).then_some(b)
    }

    /// Sets the disk budget (`None`: none), starts counting the entries'
    /// files if it was not yet, and enforces it.
    pub(super) fn set_disk_budget(&self, budget: Option<u64>) {
        let b = budget.map_or(u64::MAX, |b| b.min(u64::MAX - 1));
        self.disk_budget.store(b, Ordering::Relaxed);
        if budget.is_some() && !self.read_only {
            self.track_disk();
            self.enforce_disk_budget();
        }
    }

    /// Starts counting the entries' files: every entry the store lists,
    /// with the length of its `.npy`; least recently used first in name
    /// order (nothing was used yet by this handle, or it is not known in
    /// which order).
    fn track_disk(&self) {
        {
            let mut d = self.account.disk.lock();
            if d.is_some() {
                return;
            }
            *d = Some(DiskLedger::default());
            // From now on publishes and removals update the ledger.
            self.account.tracks_disk.store(true, Ordering::Release);
        }
        let known: Vec<(EntryName, Option<bool>)> = self
            .entries
            .read()
            .iter()
            .map(|(n, s)| {
                let s = s.lock();
                let flag = match &s.loaded {
                    Some(l) => Some(l.flags().recomputable),
                    None => s.meta.as_ref().map(|m| m.2.recomputable),
                };
                (n.clone(), flag)
            })
            .collect();
        let found: Vec<(EntryName, u64, Option<bool>)> = known
            .into_iter()
            .filter_map(|(n, flag)| {
                let f = self.storage.stat_data(&n).filter(|f| f.is_file())?;
                Some((n, f.len, flag))
            })
            .collect();
        let mut d = self.account.disk.lock();
        if let Some(d) = d.as_mut() {
            for (n, bytes, flag) in found {
                // A publish since the listing was counted already.
                if !d.recs.contains_key(&n) {
                    d.set(&n, Some(bytes), flag);
                }
            }
        }
    }

    /// Deletes recomputable entries, least recently used first, through the
    /// durable removal, until the entries' files are within the disk budget.
    /// Ordinary entries are never deleted: when only they remain over the
    /// budget, the event is counted. A handle or guard on a deleted entry
    /// keeps its data, as after [`DiskBackedStore::remove`]. Another thread
    /// enforcing it already is not waited for.
    pub(super) fn enforce_disk_budget(&self) {
        if self.read_only {
            return;
        }
        let Some(cap) = self.disk_budget() else {
            return;
        };
        let over = |skip: &HashSet<EntryName>| {
            let d = self.account.disk.lock();
            let d = d.as_ref()?;
            (d.total > cap).then(|| d.candidate(skip))
        };
        if over(&HashSet::new()).is_none() {
            return;
        }
        let Some(_g) = self.disk_evicting.try_lock() else {
            return;
        };
        let mut skip = HashSet::new();
        while let Some(candidate) = over(&skip) {
            let Some((name, bytes)) = candidate else {
                // Only ordinary entries (or entries that could not be
                // deleted) are left: the budget is exceeded.
                Counters::add(&self.counters.disk_over_budget);
                tracing::debug!(dir = %self.storage.location().display(), cap, "disk budget exceeded by ordinary entries");
                return;
            };
            match self.evict_from_disk(&name) {
                Ok(true) => {
                    Counters::add(&self.counters.disk_evictions);
                    self.counters
                        .disk_evicted_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    tracing::debug!(name = name.as_str(), bytes, "deleted by the disk budget");
                }
                Ok(false) => {
                    skip.insert(name);
                }
                Err(e) => {
                    tracing::warn!(name = name.as_str(), error = %e, "deletion by the disk budget failed; the entry stays");
                    skip.insert(name);
                }
            }
        }
    }

    /// Deletes `name` if the entry it holds now is recomputable (decided
    /// under the map, so that an entry inserted meanwhile is never taken);
    /// `false` if it is ordinary (it is then known to be) or gone.
    fn evict_from_disk(&self, name: &EntryName) -> crate::Result<bool> {
        let mut entries = self.entries.write();
        let Some(slot) = entries.get(name).cloned() else {
            // Removed meanwhile, or never listed: nothing of the store's.
            self.account.disk_removed(name);
            return Ok(false);
        };
        let recomputable = {
            let s = slot.lock();
            match (&s.loaded, &s.meta) {
                (Some(l), _) => l.flags().recomputable,
                (None, Some(m)) => m.2.recomputable,
                // Unreadable metadata: never deleted.
                (None, None) => self
                    .storage
                    .read_meta(name)
                    .is_ok_and(|m| m.recomputable == Some(true)),
            }
        };
        if !recomputable {
            self.account.disk_touch(name, Some(false));
            return Ok(false);
        }
        self.remove_locked(&mut entries, name)?;
        Ok(true)
    }

    pub(super) fn budget(&self) -> Option<u64> {
        let b = self.budget.load(Ordering::Relaxed);
        (b != u64::MAX).then_some(b)
    }

    /// The resident-bytes limit in force now: the budget, or the system
    /// pressure target when available memory is low (checked at most every
    /// 100 ms).
    fn limit(&self) -> Option<u64> {
        let mut limit = self.budget();
        if let Some(p) = self.pressure {
            let mut last = self.last_pressure_check.lock();
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
            if due {
                *last = Some(Instant::now());
                if available_memory().is_some_and(|a| a < p.min_available) {
                    limit = Some(limit.map_or(p.target_resident, |b| b.min(p.target_resident)));
                }
            }
        }
        limit
    }

    /// Enforces the memory budget, then the disk budget (the memory budget
    /// may have spilled entries to disk).
    pub(super) fn enforce_budget(&self) {
        self.enforce_memory_budget();
        self.enforce_disk_budget();
    }

    /// Offloads least-recently-used entries until the resident bytes are
    /// within the limit. Entries pinned by a live guard are skipped; if only
    /// pinned entries remain, the event is counted and eviction resumes when
    /// a guard ends.
    fn enforce_memory_budget(&self) {
        let wb = self.write_behind.as_ref();
        if let Some(wb) = wb {
            let back = wb.take_requeued();
            if !back.is_empty() {
                let mut lru = self.lru.lock();
                for n in &back {
                    lru.touch(n);
                }
            }
        }
        let Some(limit) = self.limit() else { return };
        // Bytes handed to the writers are released without the store's
        // help: they count against the in-flight bound, not the budget.
        let excess = || {
            let flying = wb.map_or(0, |w| w.in_flight());
            self.account.resident().saturating_sub(flying) > limit
        };
        if !excess() {
            self.account.over.store(false, Ordering::Relaxed);
            return;
        }
        let _g = self.evicting.lock();
        // Least recently used first, but clean entries (mapped read-only:
        // releasing them unmaps, no write) before entries that must be
        // written: a pass reading spilled entries back then releases the
        // entries it read instead of spilling the ones still in RAM.
        let order = self.lru.lock().oldest_first();
        let mut candidates = Vec::with_capacity(order.len());
        for name in order {
            let slot = self.entries.read().get(&name).cloned();
            match slot.and_then(|s| s.lock().loaded.clone()) {
                Some(l) => candidates.push((name, l)),
                None => self.lru.lock().remove(&name),
            }
        }
        let clean = |l: &Loaded| l.state() == ArrayState::Mapped(LoadMode::ReadOnly);
        // A read-only store releases mapped entries only (it writes nothing).
        if self.read_only {
            candidates.retain(|(_, l)| clean(l));
        }
        candidates.sort_by_key(|(_, l)| !clean(l));
        for (name, l) in candidates {
            if !excess() {
                break;
            }
            let bytes = l.resident_bytes();
            if let Some(wb) = wb {
                // Data in RAM is written behind; mapped data is released
                // here (unmodified: nothing to write).
                if l.state() == ArrayState::InMemory && l.flags().caching {
                    if l.link().start_write_behind() {
                        self.lru.lock().remove(&name);
                        // Counted as an eviction by the writer, once done.
                        // Holds no entry lock and no store lock but
                        // `evicting`, which the writers never take.
                        if let Some(back) = wb.submit(name.clone(), l, bytes) {
                            drop(back);
                            self.lru.lock().touch(&name);
                        }
                    }
                    continue;
                }
            }
            match l.try_offload() {
                Ok(true) => {
                    Counters::add(&self.counters.evictions);
                    self.lru.lock().remove(&name);
                    tracing::debug!(name = name.as_str(), bytes, "evicted");
                }
                Ok(false) => {
                    if l.state() == ArrayState::Offloaded || !l.flags().caching {
                        self.lru.lock().remove(&name);
                    }
                    // else: pinned by a live guard; keep it for later.
                }
                Err(e) => {
                    tracing::warn!(name = name.as_str(), error = %e, "eviction failed; the entry stays in RAM");
                }
            }
        }
        let over = excess();
        if over {
            Counters::add(&self.counters.over_budget);
        }
        self.account.over.store(over, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order() {
        let n = |s: &str| EntryName::new(s).unwrap();
        let mut l = Lru::default();
        l.touch(&n("a"));
        l.touch(&n("b"));
        l.touch(&n("c"));
        l.touch(&n("a"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("c"), n("a")]);
        l.remove(&n("c"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("a")]);
        assert_eq!(l.len(), 2);
    }
}
