//! Enforcing the budgets: the handle's budget calls, eviction of
//! least-recently-used entries for the memory budget and under system
//! pressure, and deletion of recomputable entries for the disk budget (the
//! accounting they act on is in `budget.rs`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::behind::{self, Policy, WriteBehind};
use super::budget::{BudgetHost, DiskItem, DiskLedger};
use super::entry::Loaded;
use super::inner::{DiskBackedStore, Inner};
use super::stats::Counters;
use crate::array::ArrayState;
use crate::mmap::LoadMode;
use crate::name::EntryName;
use crate::size::{available_memory, ByteSize};

impl BudgetHost for Inner {
    fn touch(&self, name: &EntryName) {
        self.lru.lock().touch(name);
    }

    fn budget(&self) -> Option<u64> {
        Inner::budget(self)
    }

    fn enforce_budget(&self) {
        Inner::enforce_budget(self);
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

    /// The window cache's bytes of `name` changed or were used (counted
    /// by the disk budget, which is then enforced).
    #[cfg(feature = "remote")]
    pub(crate) fn note_window(&self, name: &EntryName) {
        self.inner.note_window(name);
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
        let windows = self.storage.windows_held();
        let mut d = self.account.disk.lock();
        if let Some(d) = d.as_mut() {
            for (n, bytes, flag) in found {
                // A publish since the listing was counted already.
                if !d.recs.contains_key(&n) {
                    d.set(&n, Some(bytes), flag);
                }
            }
            for (n, bytes) in windows {
                d.set_window(&n, Some(bytes));
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
        let copies = self.storage.holds_copies();
        let over = |skip: &HashSet<DiskItem>| {
            let d = self.account.disk.lock();
            let d = d.as_ref()?;
            (d.total > cap).then(|| d.candidate(skip, copies))
        };
        if over(&HashSet::new()).is_none() {
            return;
        }
        let Some(_g) = self.disk_evicting.try_lock() else {
            return;
        };
        let mut skip = HashSet::new();
        while let Some(candidate) = over(&skip) {
            let Some((item, bytes)) = candidate else {
                // Only ordinary entries (or entries that could not be
                // deleted) are left: the budget is exceeded.
                Counters::add(&self.counters.disk_over_budget);
                tracing::debug!(dir = %self.storage.location().display(), cap, "disk budget exceeded by ordinary entries");
                return;
            };
            let done = match &item {
                DiskItem::Entry(name) => self.evict_from_disk(name),
                DiskItem::Window(name) => self.evict_window(name),
            };
            match done {
                Ok(true) => {
                    Counters::add(&self.counters.disk_evictions);
                    self.counters
                        .disk_evicted_bytes
                        .fetch_add(bytes, Ordering::Relaxed);
                    tracing::debug!(item = ?item, bytes, "deleted by the disk budget");
                }
                Ok(false) => {
                    skip.insert(item);
                }
                Err(e) => {
                    tracing::warn!(item = ?item, error = %e, "deletion by the disk budget failed; the entry stays");
                    skip.insert(item);
                }
            }
        }
    }

    /// Drops the window cache's bytes of `name`, unless a window being
    /// read or a view uses them.
    fn evict_window(&self, name: &EntryName) -> crate::Result<bool> {
        let dropped = self.storage.drop_window(name)?.is_some();
        // Dropped, or gone already (with a download of the entry): no
        // longer counted.
        if dropped || self.storage.window_bytes(name).is_none() {
            self.account.disk_window(name, None);
        }
        Ok(dropped)
    }

    /// The window cache's bytes of `name` changed or were used: counted,
    /// and the disk budget enforced.
    #[cfg(feature = "remote")]
    pub(super) fn note_window(&self, name: &EntryName) {
        self.account
            .disk_window(name, self.storage.window_bytes(name));
        self.enforce_disk_budget();
    }

    /// Deletes `name` if the entry it holds now is recomputable (decided
    /// under the map, so that an entry inserted meanwhile is never taken);
    /// `false` if it is ordinary (it is then known to be) or gone.
    fn evict_from_disk(&self, name: &EntryName) -> crate::Result<bool> {
        if self.storage.holds_copies() {
            // A copy of data kept elsewhere: only the copy goes, the entry
            // stays (a staged write is never dropped). Its map goes first
            // (a mapped file's blocks are freed only when it is unmapped):
            // an entry a guard pins, or whose data in RAM is only staged
            // by the offload, keeps its copy.
            let loaded = self
                .entries
                .read()
                .get(name)
                .and_then(|s| s.lock().loaded.clone());
            if let Some(l) = &loaded {
                if l.state() != ArrayState::Offloaded && !l.try_offload()? {
                    return Ok(false);
                }
            }
            let dropped = self.storage.drop_copy(name)?;
            if dropped {
                self.account.disk_removed(name);
            }
            return Ok(dropped);
        }
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
        let wb = self.write_behind.get();
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
        // (The default's writer may start during this pass.)
        let excess = || {
            let flying = self.write_behind.get().map_or(0, |w| w.in_flight());
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
            if let Some(wb) = self.writers_for(bytes) {
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

    /// The writers a spill of an entry of `bytes` resident bytes is handed
    /// to (see [`Policy`]): `None` when the evicting call writes it. The
    /// default's writer starts at its first spill; if it cannot start, the
    /// spill is written by the evicting call.
    fn writers_for(&self, bytes: u64) -> Option<&WriteBehind> {
        match self.behind_policy {
            Policy::Off => None,
            Policy::Always => self.write_behind.get(),
            Policy::Large => {
                let budget = self.budget()?;
                if bytes < behind::min_bytes() {
                    return None;
                }
                if let Some(w) = self.write_behind.get() {
                    return Some(w);
                }
                match WriteBehind::start(Policy::default_config(budget)) {
                    Ok(w) => {
                        // Only the evicting thread starts it (under
                        // `evicting`): the cell is empty.
                        let _ = self.write_behind.set(w);
                        self.write_behind.get()
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.storage.location().display(), error = %e, "could not start the write-behind writer; spills are written by the evicting call");
                        None
                    }
                }
            }
        }
    }
}
