//! A store's budgets. The memory budget: the accounting of resident bytes
//! its entries report ([`Account`]), the least-recently-used order of
//! resident entries, offloading on system memory pressure, and eviction.
//! The disk budget: the bytes of the entries' files ([`DiskLedger`], kept
//! in the [`Account`] while a disk budget is set) and the deletion of
//! recomputable entries, least recently used first.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;

use parking_lot::Mutex;

use super::storage::Storage;
use crate::name::EntryName;

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
pub(crate) type Lru = crate::lru::Lru<EntryName>;

/// One entry's file, as the disk budget knows it.
#[derive(Debug)]
pub(super) struct DiskRec {
    /// Length of the entry's `.npy` file.
    bytes: u64,
    /// Whether the entry the name holds now is recomputable (`None`: not
    /// known yet; its metadata is read when it is a candidate).
    recomputable: Option<bool>,
}

/// What the disk budget counts: an entry's file, or the bytes of an
/// entry's data object the window cache holds (an object store's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum DiskItem {
    Entry(EntryName),
    Window(EntryName),
}

/// The entries' files this handle knows of, with their lengths, and the
/// window cache's bytes per entry, in least-recently-used order (what the
/// disk budget limits).
#[derive(Debug, Default)]
pub(crate) struct DiskLedger {
    pub(super) recs: HashMap<EntryName, DiskRec>,
    windows: HashMap<EntryName, u64>,
    order: crate::lru::Lru<DiskItem>,
    pub(super) total: u64,
}

impl DiskLedger {
    fn retick(&mut self, name: &EntryName) {
        if self.recs.contains_key(name) {
            self.order.touch(&DiskItem::Entry(name.clone()));
        }
    }

    /// `name`'s file is now `bytes` long (`None`: gone).
    pub(super) fn set(&mut self, name: &EntryName, bytes: Option<u64>, recomputable: Option<bool>) {
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
                self.total += bytes;
                self.order.touch(&DiskItem::Entry(name.clone()));
                self.recs.insert(
                    name.clone(),
                    DiskRec {
                        bytes,
                        recomputable,
                    },
                );
            }
        }
    }

    fn remove(&mut self, name: &EntryName) {
        if let Some(r) = self.recs.remove(name) {
            self.order.remove(&DiskItem::Entry(name.clone()));
            self.total -= r.bytes;
        }
    }

    /// The window cache holds `bytes` of `name` now (`None`: nothing), and
    /// was just used.
    pub(super) fn set_window(&mut self, name: &EntryName, bytes: Option<u64>) {
        let key = DiskItem::Window(name.clone());
        if let Some(old) = self.windows.remove(name) {
            self.total -= old;
            self.order.remove(&key);
        }
        if let Some(bytes) = bytes {
            self.total += bytes;
            self.windows.insert(name.clone(), bytes);
            self.order.touch(&key);
        }
    }

    /// The least recently used item the disk budget may take, not in
    /// `skip`: window cache bytes always (they can be fetched again), and
    /// with `copies` any entry's file (copies too), else entries not known
    /// to be ordinary.
    pub(super) fn candidate(
        &self,
        skip: &HashSet<DiskItem>,
        copies: bool,
    ) -> Option<(DiskItem, u64)> {
        self.order.iter().find_map(|item| {
            if skip.contains(item) {
                return None;
            }
            match item {
                DiskItem::Window(n) => Some((item.clone(), self.windows[n])),
                DiskItem::Entry(n) => {
                    let r = &self.recs[n];
                    (copies || r.recomputable != Some(false)).then(|| (item.clone(), r.bytes))
                }
            }
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
    pub(super) over: AtomicBool,
    /// The entries' files, while a disk budget is set (a leaf lock: nothing
    /// is waited for under it).
    pub(super) disk: Mutex<Option<DiskLedger>>,
    /// Whether `disk` is kept (read without its lock).
    pub(super) tracks_disk: AtomicBool,
    store: Weak<dyn BudgetHost>,
}

/// What the accounting asks of the store it counts for (the store
/// implements it; the accounting never names the store).
pub(crate) trait BudgetHost: Send + Sync {
    /// Puts `name` back into the least-recently-used order.
    fn touch(&self, name: &EntryName);
    /// The memory budget in bytes, if any.
    fn budget(&self) -> Option<u64>;
    /// Offloads least-recently-used entries until the store is within its
    /// memory budget.
    fn enforce_budget(&self);
}

impl Account {
    /// The accounting of the store `store` (nothing resident yet).
    pub(super) fn new(store: Weak<dyn BudgetHost>) -> Self {
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

    /// The window cache holds `bytes` of `name` now (`None`: nothing), and
    /// was just used.
    pub(crate) fn disk_window(&self, name: &EntryName, bytes: Option<u64>) {
        if !self.tracks_disk.load(Ordering::Acquire) {
            return;
        }
        if let Some(d) = self.disk.lock().as_mut() {
            d.set_window(name, bytes);
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
        if let Some(host) = self.store.upgrade() {
            host.touch(name);
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
