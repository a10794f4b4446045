//! Opening a store: the lock, the listing of the directory and the
//! recovery of interrupted operations ([`StoreBuilder`](crate::StoreBuilder)
//! collects the options).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::behind::{Policy, WriteBehind, WriteBehindConfig};
use super::budget::{Account, BudgetHost, Lru, SystemPressure};
use super::entry::Slot;
use super::inner::{DiskBackedStore, Inner};
use super::meta::EntryFlags;
use super::stats::Counters;
use super::storage::{Backend, Listed, LocalDir, LockMode, Storage};
use crate::config::CacheConfig;
use crate::error::{Error, IoContext, Result};
use crate::size::SizeSetting;

/// What a [`StoreBuilder`](crate::StoreBuilder) collected: the options of
/// an open.
#[derive(Clone, Debug)]
pub(crate) struct OpenOptions {
    pub dir: PathBuf,
    pub read_only: bool,
    pub create: bool,
    pub config: CacheConfig,
    pub budget: Option<SizeSetting>,
    pub disk_budget: Option<SizeSetting>,
    pub pressure: Option<SystemPressure>,
    pub write_behind: Option<WriteBehindConfig>,
    pub exclusive: bool,
    pub lock_timeout: Option<std::time::Duration>,
    pub backend: Option<Backend>,
    /// Wraps the storage opened (tests: faults at the seam, broken
    /// backends).
    #[cfg(feature = "testing")]
    pub wrap: Option<super::storage::fault::WrapStorage>,
}

impl OpenOptions {
    /// The defaults for the store at `dir` (see [`StoreBuilder`](crate::StoreBuilder)).
    pub(crate) fn new(dir: &Path) -> Self {
        OpenOptions {
            dir: dir.to_path_buf(),
            read_only: false,
            create: true,
            config: CacheConfig::default().with_purge_on_drop(false),
            budget: None,
            disk_budget: None,
            pressure: None,
            write_behind: None,
            exclusive: false,
            lock_timeout: None,
            backend: None,
            #[cfg(feature = "testing")]
            wrap: None,
        }
    }
}

/// Opens the store `o` describes (see [`StoreBuilder::open`](crate::StoreBuilder::open)).
pub(crate) fn open_store(o: OpenOptions) -> Result<DiskBackedStore> {
    let budget = match &o.budget {
        Some(b) => Some(b.get("memory_budget")?),
        None => None,
    };
    let disk_budget = match &o.disk_budget {
        Some(b) => Some(b.get("disk_budget")?),
        None => None,
    };
    let path = o.dir;
    if fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::NotADirectory { path });
    }
    if !o.read_only && o.create {
        fs::create_dir_all(&path).ctx("create directory", &path)?;
    }
    let storage: Arc<dyn Storage> = match &o.backend {
        Some(b) => (b.open)(&path, o.read_only)?,
        None => Arc::new(LocalDir::open(&path)?),
    };
    #[cfg(feature = "testing")]
    let storage = match &o.wrap {
        Some(w) => (w.0)(storage),
        None => storage,
    };
    let lease = storage.lock(match (o.read_only, o.exclusive) {
        (true, _) => LockMode::Reader,
        (false, false) => LockMode::Writer,
        (false, true) => LockMode::ExclusiveWriter,
    })?;
    let mut listing = storage.list()?;
    let mut left = Vec::new();
    // Recovery runs at every writable open, even with no temporary
    // file left: it also removes the registrations of dead writers
    // (a writer that died between operations leaves only that).
    if !o.read_only {
        let rec = storage.recover(&listing.pending)?;
        if !rec.completed.is_empty() {
            tracing::info!(dir = %path.display(), completed = ?rec.completed, "recovered interrupted operations");
        }
        left = rec.left;
        if !listing.pending.is_empty() {
            listing = storage.list()?;
        }
    }
    let defaults = EntryFlags {
        purge_on_drop: o.config.purge_on_drop().unwrap_or(false),
        automatic_offloading: o.config.automatic_offloading(),
        caching: o.config.caching(),
        recomputable: false,
    };
    let mut entries = BTreeMap::new();
    let mut incomplete = BTreeMap::new();
    for (name, kind) in listing.entries {
        match kind {
            Listed::Pair => {
                entries.insert(name, Arc::new(Mutex::new(Slot::default())));
            }
            Listed::Broken(reason) => {
                incomplete.insert(name, reason);
            }
        }
    }
    // What recovery left alone was never staged by this crate. Its key
    // is reported as incomplete unless a whole pair holds that name.
    for (key, reason) in left {
        tracing::warn!(dir = %path.display(), "{reason}");
        if let Some(key) = key.filter(|k| !entries.contains_key(k)) {
            incomplete.entry(key).or_insert(reason);
        }
    }
    let pressure = o.pressure;
    // Explicit writers start now; the default's at its first spill.
    let write_behind = std::sync::OnceLock::new();
    let behind_policy = match o.write_behind {
        _ if o.read_only => Policy::Off,
        Some(c) if c.threads == 0 => Policy::Off,
        Some(c) => {
            let w = WriteBehind::start(c).ctx("start the write-behind threads of", &path)?;
            let _ = write_behind.set(w);
            Policy::Always
        }
        // An object store's spills stage locally and commit on `flush`:
        // the default stays with a local directory.
        None if o.backend.is_some() => Policy::Off,
        None => Policy::Large,
    };
    let store = DiskBackedStore {
        inner: Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| Inner {
            storage,
            read_only: o.read_only,
            config: o.config,
            defaults,
            entries: RwLock::new(entries),
            incomplete: RwLock::new(incomplete),
            _lease: lease,
            account: Arc::new(Account::new(weak.clone() as std::sync::Weak<dyn BudgetHost>)),
            budget: AtomicU64::new(budget.unwrap_or(u64::MAX)),
            disk_budget: AtomicU64::new(u64::MAX),
            disk_evicting: Mutex::new(()),
            pressure,
            lru: Mutex::new(Lru::default()),
            evicting: Mutex::new(()),
            last_pressure_check: Mutex::new(None),
            counters: Counters::default(),
            inflight: Mutex::new(HashMap::new()),
            write_behind,
            behind_policy,
            lock_timeout: o.lock_timeout,
        }),
    };
    if disk_budget.is_some() {
        // Counts the files listed and deletes what is over the budget.
        store.inner.set_disk_budget(disk_budget);
    }
    Ok(store)
}
