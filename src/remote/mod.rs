//! Object storage as the durable home of a store (cargo feature `remote`).
//!
//! A [`RemoteStore`] keeps its entries under a URL prefix
//! (`s3://bucket/prefix`, `file:///dir`, `memory:///prefix`) and uses a
//! local directory as its cache: entries are downloaded into it and
//! memory-mapped, so reads stay zero-copy; a disk budget evicts clean cached
//! copies least-recently-used. Writes are staged in the local directory and
//! kept there until their remote commit succeeded.
//!
//! The commit protocol (docs/format.md, "Remote stores"): each write
//! uploads a new immutable data object (a plain `.npy`), then swaps the
//! entry's metadata object with a conditional PUT. A reader on any node sees
//! the complete old or the complete new value; two writers never silently
//! lose an update: the loser gets [`Error::Conflict`] naming the key.
//!
//! The API is synchronous: a private tokio runtime owned by the store runs
//! `object_store`'s requests. Do not call it from inside an async runtime's
//! worker thread (use `spawn_blocking`).
//!
//! # Examples
//!
//! ```
//! use ndarray::{array, Ix1};
//! use ndarray_offload::remote::RemoteStore;
//!
//! let cache = tempfile::tempdir()?;
//! let store = RemoteStore::open("memory:///bucket/prefix", cache.path())?;
//! store.insert_durable("a", array![1.0f64, 2.0])?;
//! let a = store.get::<f64, Ix1>("a")?;
//! assert_eq!(a.read()?.view(), array![1.0, 2.0]);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod gc;
mod inspect;
mod protocol;
mod read;
pub(crate) mod tier;
mod transfer;
mod url;
mod write;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ndarray::{Array, Dimension};
use object_store::UpdateVersion;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use gc::GcReport;
pub use inspect::{inspect_remote, inspect_remote_with, list_entries, verify};
pub use transfer::TransferOptions;
pub use url::NetOptions;

use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::{Error, IoContext, RemoteErrorKind, Result};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::size::ByteSize;
use crate::DiskBackedArray;
use protocol::{Head, RemoteField, RemoteMeta};
use transfer::UploadError;
use url::Location;

/// Options of a [`RemoteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// Timeouts and retries of requests.
    pub net: NetOptions,
    /// Part sizes and parallelism of transfers.
    pub transfer: TransferOptions,
    /// How long an unreferenced data object is kept before `gc` deletes it
    /// (default: one hour). Readers that read an entry's metadata before a
    /// replace have this long to download the old data.
    pub grace: Duration,
    /// Bytes of clean cached copies kept in the local directory (`None`:
    /// no limit). Staged writes not yet committed are never evicted.
    pub disk_budget: Option<ByteSize>,
    /// Extra `object_store` configuration, applied after the environment
    /// (for example `("aws_endpoint", "http://127.0.0.1:9000")`,
    /// `("aws_allow_http", "true")`): what the `AWS_*` variables would set.
    pub config: Vec<(String, String)>,
    /// Open without the object store (default `false`): no request is
    /// made, and the handle reads what the local cache directory already
    /// holds: each entry whose metadata this cache directory saw (the last
    /// version it read or committed) and whose data it still has, and the
    /// writes staged there and not yet committed. Nothing can be written
    /// (`Error::ReadOnly`; a [`DiskBackedStore`](crate::DiskBackedStore)
    /// must be opened with [`read_only(true)`](crate::StoreBuilder::read_only)),
    /// cached copies are never evicted, and a name the cache does not hold
    /// is [`Error::KeyNotFound`]. For reading while the server is
    /// unreachable; see also [`with_offline`](Self::with_offline).
    pub offline: bool,
}

impl RemoteOptions {
    /// Sets [`offline`](Self::offline): read what the local cache holds,
    /// without the object store.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::remote::{RemoteOptions, RemoteStore};
    ///
    /// let cache = tempfile::tempdir()?;
    /// let online = RemoteStore::open("memory:///bucket/p", cache.path())?;
    /// online.insert_durable("a", array![1.0f64, 2.0])?;
    /// drop(online);
    /// // The server is unreachable now (here: a new, empty memory store):
    /// // the entries this cache holds still read.
    /// let offline = RemoteOptions::default().with_offline(true);
    /// let store = RemoteStore::open_with("memory:///bucket/p", cache.path(), offline)?;
    /// assert_eq!(store.keys(), ["a"]);
    /// assert_eq!(store.get::<f64, Ix1>("a")?.read()?.sum(), 3.0);
    /// assert!(store.insert_durable("b", array![1u8]).is_err()); // read-only
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_offline(mut self, on: bool) -> Self {
        self.offline = on;
        self
    }
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            net: NetOptions::default(),
            transfer: TransferOptions::default(),
            grace: Duration::from_secs(3600),
            disk_budget: None,
            config: Vec::new(),
            offline: false,
        }
    }
}

/// Counters of a [`RemoteStore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Data objects uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub bytes_up: u64,
    /// Data objects downloaded.
    pub downloads: u64,
    /// Bytes downloaded.
    pub bytes_down: u64,
    /// Gets served from a cached copy.
    pub cache_hits: u64,
    /// Commits that lost a race ([`Error::Conflict`]).
    pub conflicts: u64,
    /// Cached copies evicted by the disk budget.
    pub evictions: u64,
    /// Bytes of cached copies in the local directory.
    pub cached_bytes: u64,
    /// Writes staged locally and not yet committed.
    pub pending: u64,
}

/// One entry of a remote store, as listed by [`list_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteEntry {
    /// The entry name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its numpy dtype string.
    pub dtype: String,
    /// Size of its data object in bytes.
    pub size: u64,
    /// Its data object, relative to the prefix.
    pub data: String,
}

#[derive(Debug, Clone)]
enum Seen {
    /// Listed, metadata not read yet.
    Listed(UpdateVersion),
    Live(Box<RemoteMeta>, UpdateVersion),
    Removed(UpdateVersion),
}

impl Seen {
    fn version(&self) -> &UpdateVersion {
        match self {
            Seen::Listed(v) | Seen::Live(_, v) | Seen::Removed(v) => v,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VersionRec {
    e_tag: Option<String>,
    version: Option<String>,
}

impl From<&UpdateVersion> for VersionRec {
    fn from(v: &UpdateVersion) -> Self {
        VersionRec {
            e_tag: v.e_tag.clone(),
            version: v.version.clone(),
        }
    }
}

impl From<VersionRec> for UpdateVersion {
    fn from(v: VersionRec) -> Self {
        UpdateVersion {
            e_tag: v.e_tag,
            version: v.version,
        }
    }
}

/// A write staged in the local directory, not yet committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    name: String,
    /// Local file name in `objects/` (also the decoded data object name).
    file: String,
    /// The data object, relative to the prefix.
    data: String,
    shape: Vec<usize>,
    dtype: String,
    /// The version this write replaces (`None`: the entry must not exist).
    base: Option<VersionRec>,
    /// Flags and user attributes of a store entry (`StoreBuilder::remote`).
    #[serde(default)]
    automatic: bool,
    #[serde(default = "protocol::yes")]
    caching: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Whether `pending/<name>.json` exists.
    #[serde(skip)]
    recorded: bool,
    /// The staged file of a recorded write of the same entry this one
    /// replaces and that is still on disk with its record: both stay until
    /// this write's record replaces that record (a power cut in between
    /// keeps the older write staged, never neither).
    #[serde(skip)]
    superseded: Option<String>,
    /// A removal intent, not a write (`file` and `data` are empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    remove: bool,
}

struct Cached {
    size: u64,
    users: Vec<Weak<dyn Any + Send + Sync>>,
}

#[derive(Default)]
struct State {
    view: BTreeMap<String, Seen>,
    pending: BTreeMap<String, Pending>,
    /// Removals of keys whose staged write was recorded, not yet committed:
    /// their record (`pending/K.json` with `remove`) replaced the write's,
    /// so a power cut never brings back the value before the write.
    removals: BTreeMap<String, Option<VersionRec>>,
    cache: HashMap<String, Cached>,
    /// The cached copies in least-recently-used order.
    order: crate::lru::Lru<String>,
    /// Entries with a record in `seen/` (the metadata this cache last saw).
    seen: std::collections::HashSet<String>,
}

/// `seen/K.json` of a cache directory: the metadata object of `K` this
/// cache directory last read or committed, kept so that an offline handle
/// ([`RemoteOptions::offline`]) can read the cached copies. Written without
/// `fsync` (a lost or torn record only hides an entry from an offline
/// handle).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeenRec {
    e_tag: Option<String>,
    version: Option<String>,
    meta: RemoteMeta,
}

#[derive(Default)]
struct Counters {
    uploads: AtomicU64,
    bytes_up: AtomicU64,
    downloads: AtomicU64,
    bytes_down: AtomicU64,
    cache_hits: AtomicU64,
    conflicts: AtomicU64,
    evictions: AtomicU64,
}

/// A store whose durable home is an object store, with the local disk (and
/// the page cache, through memory maps) as its cache. See the
/// [module documentation](self).
pub struct RemoteStore {
    rt: tokio::runtime::Runtime,
    loc: Location,
    objects: PathBuf,
    pending_dir: PathBuf,
    /// `seen/`: the metadata last seen of each entry (see [`SeenRec`]).
    seen_dir: PathBuf,
    /// `objects` and `pending_dir`, held open: staging and the pending
    /// records go through the crate's file-system seam.
    objects_io: crate::io::Dir,
    pending_io: crate::io::Dir,
    _lock: File,
    opts: RemoteOptions,
    writer: String,
    state: Mutex<State>,
    counters: Counters,
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        // Unlock explicitly: closing the descriptor would leave the cache
        // directory locked while a child process forked meanwhile (by any
        // thread of the program) still holds a copy of it.
        let _ = self._lock.unlock();
    }
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.loc.url)
            .field("cache", &self.objects)
            .finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ndoffload-remote")
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            path: PathBuf::new(),
            op: "start the object-store runtime",
            source: e,
        })
}

fn name_of(name: &str) -> Result<EntryName> {
    EntryName::new(name)
}

fn upload_err(loc: &Location, op: &'static str, name: &str, url: String, e: UploadError) -> Error {
    match e {
        UploadError::Remote(e) => protocol::remote_err(loc, op, name, url, e),
        UploadError::Local(e) => e,
    }
}

/// Adds to an unreachable server's error at open how to read what the
/// cache directory holds anyway (`cached` entries).
fn offline_hint(e: Error, cached: usize) -> Error {
    match e {
        Error::Remote {
            op,
            key,
            url,
            kind: kind @ (RemoteErrorKind::Network | RemoteErrorKind::Timeout),
            source,
        } if cached > 0 => Error::Remote {
            op,
            key,
            url,
            kind,
            source: Box::new(protocol::Explained {
                message: format!(
                    "{source}; to read the {cached} {} this cache directory holds without the \
                     server, open with RemoteOptions::default().with_offline(true) (read-only)",
                    if cached == 1 { "entry" } else { "entries" }
                ),
                inner: source,
            }),
        },
        e => e,
    }
}

impl RemoteStore {
    /// Opens the store at `url` with `cache_dir` as its local directory
    /// (created if missing), with default options.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`], whose kind and message say what to fix: a bad
    /// URL or a plain `http://` endpoint without `AWS_ALLOW_HTTP=true`
    /// ([`Config`](RemoteErrorKind::Config)), no credentials or refused ones
    /// ([`PermissionDenied`](RemoteErrorKind::PermissionDenied)), a missing
    /// bucket ([`NotFound`](RemoteErrorKind::NotFound)), no server at the
    /// endpoint ([`Network`](RemoteErrorKind::Network), at once) or one
    /// that does not answer ([`Timeout`](RemoteErrorKind::Timeout));
    /// [`Error::Locked`] (another handle uses `cache_dir`), I/O errors on
    /// `cache_dir`. To read the cache while the server is unreachable, see
    /// [`RemoteOptions::offline`].
    ///
    /// # Examples
    ///
    /// ```
    /// let cache = tempfile::tempdir()?;
    /// let store = ndarray_offload::remote::RemoteStore::open("memory:///b/p", cache.path())?;
    /// assert!(store.is_empty());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(url: &str, cache_dir: impl AsRef<FsPath>) -> Result<Self> {
        Self::open_with(url, cache_dir, RemoteOptions::default())
    }

    /// Opens the store at `url` with `options`. Lists the entries (one LIST
    /// request per 1,000 entries), loads the writes a previous handle
    /// staged in `cache_dir` and could not commit (see
    /// [`pending`](Self::pending); [`flush`](Self::flush) commits them).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(
        url: &str,
        cache_dir: impl AsRef<FsPath>,
        options: RemoteOptions,
    ) -> Result<Self> {
        Self::open_on(url, None, cache_dir.as_ref(), options, true)
    }

    /// Opens the store at `url`, through `store` instead of the client the
    /// URL names when given (tests: several handles on one in-memory
    /// object store, see `__testing::open_remote_on`). A `writable` open
    /// checks that the server enforces conditional PUT
    /// (`protocol::check_conditional_put`), while the entries are listed.
    pub(crate) fn open_on(
        url: &str,
        store: Option<Arc<dyn object_store::ObjectStore>>,
        cache_dir: &FsPath,
        options: RemoteOptions,
        writable: bool,
    ) -> Result<Self> {
        let cache = cache_dir.to_path_buf();
        let objects = cache.join("objects");
        let pending_dir = cache.join("pending");
        let seen_dir = cache.join("seen");
        for d in [&cache, &objects, &pending_dir, &seen_dir] {
            std::fs::create_dir_all(d).ctx("create", d)?;
        }
        let lock_path = cache.join(".ndoffload-remote.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx("open", &lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: lock_path,
                    holder: "another remote store handle on this cache directory".into(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        let rt = runtime()?;
        let offline = options.offline;
        let loc = match store {
            Some(store) => url::Location {
                store,
                ..url::open(url, &options.net, &options.config, offline)?
            },
            None => url::open(url, &options.net, &options.config, offline)?,
        };
        let store = RemoteStore {
            rt,
            loc,
            objects_io: crate::io::Dir::open(&objects)?,
            pending_io: crate::io::Dir::open(&pending_dir)?,
            objects,
            pending_dir,
            seen_dir,
            _lock: lock,
            opts: options,
            writer: protocol::unique_id(),
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        };
        store.scan_cache()?;
        store.scan_seen(offline)?;
        if !offline {
            let probe = writable.then(|| {
                let loc = store.loc.clone();
                store
                    .rt
                    .spawn(async move { protocol::check_conditional_put(&loc).await })
            });
            let listed = store.refresh();
            // Awaited whatever the listing gave: the probe deletes its object.
            if let Some(probe) = probe {
                let probed = store.rt.block_on(probe).map_err(|e| Error::Remote {
                    op: "open for writing",
                    key: String::new(),
                    url: store.loc.url.clone(),
                    kind: RemoteErrorKind::Other,
                    source: Box::new(e),
                });
                if listed.is_ok() {
                    probed??;
                }
            }
            listed.map_err(|e| {
                let cached = store.cached_seen().len();
                offline_hint(e, cached)
            })?;
        }
        Ok(store)
    }

    /// Whether this handle was opened [offline](RemoteOptions::offline).
    pub fn is_offline(&self) -> bool {
        self.opts.offline
    }

    /// [`Error::ReadOnly`] for a write through an offline handle.
    fn check_online(&self) -> Result<()> {
        if self.opts.offline {
            return Err(Error::ReadOnly {
                path: PathBuf::from(format!(
                    "{} (opened offline: RemoteOptions::offline)",
                    self.loc.url
                )),
            });
        }
        Ok(())
    }

    /// Lists `seen/` (removing temporary files). Offline, loads the view
    /// from it: each entry whose data this cache holds.
    fn scan_seen(&self, offline: bool) -> Result<()> {
        let mut st = self.state.lock();
        for e in std::fs::read_dir(&self.seen_dir).ctx("list", &self.seen_dir)? {
            let e = e.ctx("list", &self.seen_dir)?;
            let Ok(file) = e.file_name().into_string() else {
                continue;
            };
            if file.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            if EntryName::new(name).is_err() {
                continue;
            }
            st.seen.insert(name.to_string());
        }
        if offline {
            let names: Vec<String> = st.seen.iter().cloned().collect();
            for name in names {
                if let Some(rec) = self.read_seen(&st, &name) {
                    let v = UpdateVersion {
                        e_tag: rec.e_tag,
                        version: rec.version,
                    };
                    st.view.insert(name, Seen::Live(Box::new(rec.meta), v));
                }
            }
        }
        Ok(())
    }

    /// The record `seen/K.json` of `name`, if it is readable and its data
    /// is in the cache directory with the recorded size.
    fn read_seen(&self, st: &State, name: &str) -> Option<SeenRec> {
        let path = self.seen_dir.join(format!("{name}.json"));
        let rec = crate::io::read_bounded(&path, 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice::<SeenRec>(&b).ok())
            .filter(|r| r.meta.ndoffload_remote.name == name)?;
        let data = protocol::data_file_name(&rec.meta.ndoffload_remote.data, name)?;
        st.cache
            .get(&data)
            .is_some_and(|c| c.size == rec.meta.ndoffload_remote.size)
            .then_some(rec)
    }

    /// The entries an offline handle on this cache directory would read.
    fn cached_seen(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut names: Vec<String> = st
            .seen
            .iter()
            .filter(|n| self.read_seen(&st, n).is_some())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Records `meta` (at version `v`) as the metadata of `name` this
    /// cache saw last (best effort: see [`SeenRec`]).
    fn save_seen(&self, st: &mut State, name: &str, meta: &RemoteMeta, v: &UpdateVersion) {
        let rec = SeenRec {
            e_tag: v.e_tag.clone(),
            version: v.version.clone(),
            meta: meta.clone(),
        };
        let Ok(body) = serde_json::to_vec(&rec) else {
            return;
        };
        let tmp = self
            .seen_dir
            .join(format!(".{}.seen.tmp", protocol::unique_id()));
        let dest = self.seen_dir.join(format!("{name}.json"));
        let written = std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, &dest));
        match written {
            Ok(()) => {
                st.seen.insert(name.to_string());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(error = %e, key = name, "could not record the metadata seen");
            }
        }
    }

    /// Drops the record of `name` in `seen/` (the entry is gone).
    fn forget_seen(&self, st: &mut State, name: &str) {
        if st.seen.remove(name) {
            let _ = std::fs::remove_file(self.seen_dir.join(format!("{name}.json")));
        }
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.loc.url
    }

    fn scan_cache(&self) -> Result<()> {
        let mut st = self.state.lock();
        for e in std::fs::read_dir(&self.objects).ctx("list", &self.objects)? {
            let e = e.ctx("list", &self.objects)?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let ft = e.file_type().ctx("stat", &e.path())?;
            if !ft.is_file() {
                continue;
            }
            if name.ends_with(".tmp") {
                self.objects_io.remove_quietly(&name);
                continue;
            }
            if name.ends_with(".npy") {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                st.order.touch(&name);
                st.cache.insert(
                    name,
                    Cached {
                        size,
                        users: Vec::new(),
                    },
                );
            }
        }
        for e in std::fs::read_dir(&self.pending_dir).ctx("list", &self.pending_dir)? {
            let e = e.ctx("list", &self.pending_dir)?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                self.pending_io.remove_quietly(&name);
                continue;
            }
            let text = crate::io::read_bounded(&path, 1 << 20)?;
            let rec: Pending = match serde_json::from_slice(&text) {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(path = %path.display(), "unreadable pending record removed");
                    self.pending_io.remove_quietly(&name);
                    continue;
                }
            };
            if rec.remove
                && EntryName::new(&rec.name).is_ok()
                && format!("{}.json", rec.name) == name
            {
                st.removals.insert(rec.name.clone(), rec.base.clone());
                continue;
            }
            let valid = !rec.remove
                && EntryName::new(&rec.name).is_ok()
                && protocol::data_file_name(&rec.data, &rec.name).as_deref()
                    == Some(rec.file.as_str())
                && format!("{}.json", rec.name) == name
                && st.cache.contains_key(&rec.file);
            if !valid {
                tracing::warn!(path = %path.display(), "pending record without its staged file removed");
                self.pending_io.remove_quietly(&name);
                continue;
            }
            let mut rec = rec;
            rec.recorded = true;
            st.pending.insert(rec.name.clone(), rec);
        }
        Ok(())
    }

    /// Re-lists the remote entries: entries other nodes committed, replaced
    /// or removed since this handle last looked become visible.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`].
    ///
    /// Offline ([`RemoteOptions::offline`]) this does nothing.
    pub fn refresh(&self) -> Result<()> {
        if self.opts.offline {
            return Ok(());
        }
        let listed = self.rt.block_on(protocol::list_meta(&self.loc))?;
        let mut st = self.state.lock();
        let mut view = BTreeMap::new();
        for l in listed {
            let key = l.name.as_str().to_string();
            let seen = match st.view.remove(&key) {
                Some(s) if s.version() == &l.version => s,
                _ if l.size == 0 => Seen::Removed(l.version),
                _ => Seen::Listed(l.version),
            };
            view.insert(key, seen);
        }
        st.view = view;
        // Entries removed since: their records in `seen/` go.
        let gone: Vec<String> = st
            .seen
            .iter()
            .filter(|k| !matches!(st.view.get(*k), Some(Seen::Listed(_) | Seen::Live(..))))
            .cloned()
            .collect();
        for k in gone {
            self.forget_seen(&mut st, &k);
        }
        Ok(())
    }

    /// Re-reads the metadata of one entry; returns whether it exists.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`], [`Error::Corrupt`] (a malformed metadata object).
    pub fn reload(&self, name: impl AsRef<str>) -> Result<bool> {
        let name = name_of(name.as_ref())?;
        if self.opts.offline {
            return Ok(self.contains(name.as_str()));
        }
        let head = self
            .rt
            .block_on(protocol::read_meta(&self.loc, name.as_str()))?;
        let mut st = self.state.lock();
        Ok(self.note_head(&mut st, name.as_str(), head))
    }

    fn note_head(&self, st: &mut State, name: &str, head: Option<Head>) -> bool {
        match head {
            None => {
                st.view.remove(name);
                self.forget_seen(st, name);
                false
            }
            Some(Head::Removed(v)) => {
                st.view.insert(name.to_string(), Seen::Removed(v));
                self.forget_seen(st, name);
                false
            }
            Some(Head::Live(m, v)) => {
                self.save_seen(st, name, &m, &v);
                st.view.insert(name.to_string(), Seen::Live(m, v));
                !st.removals.contains_key(name)
            }
        }
    }

    /// Whether an entry named `name` is known (committed or staged).
    pub fn contains(&self, name: impl AsRef<str>) -> bool {
        let st = self.state.lock();
        let n = name.as_ref();
        st.pending.contains_key(n)
            || (!st.removals.contains_key(n)
                && matches!(st.view.get(n), Some(Seen::Listed(_) | Seen::Live(..))))
    }

    /// The names of the known entries, sorted.
    pub fn keys(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut keys: Vec<String> = st
            .view
            .iter()
            .filter(|(k, s)| !matches!(s, Seen::Removed(_)) && !st.removals.contains_key(*k))
            .map(|(k, _)| k.clone())
            .chain(st.pending.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Number of known entries.
    pub fn len(&self) -> usize {
        self.keys().len()
    }

    /// Whether the store has no known entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of the writes staged locally and not yet committed.
    pub fn pending(&self) -> Vec<String> {
        self.state.lock().pending.keys().cloned().collect()
    }

    /// Removes `name`: commits a tombstone over the version this handle
    /// saw. Returns whether there was an entry. The data object is deleted
    /// by a later [`gc`](Self::gc).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] (the entry changed since this handle saw it),
    /// [`Error::Remote`].
    pub fn remove(&self, name: impl AsRef<str>) -> Result<bool> {
        let name = name_of(name.as_ref())?;
        self.check_online()?;
        let (base, had_pending, intent) = {
            let mut st = self.state.lock();
            let base = match st.view.get(name.as_str()) {
                Some(Seen::Live(_, v) | Seen::Listed(v)) => Some(VersionRec::from(v)),
                _ => None,
            };
            let staged = st.pending.remove(name.as_str());
            // A recorded write is promised to the next flush: its record is
            // replaced by a removal intent (atomically, before the staged
            // file goes), so that a power cut before the tombstone leaves
            // the removal to complete, never the value before the write.
            let recorded = staged
                .as_ref()
                .is_some_and(|p| p.recorded || p.superseded.is_some());
            let intent = recorded || st.removals.contains_key(name.as_str());
            if intent {
                st.removals.insert(name.as_str().to_string(), base.clone());
            }
            (base, staged, intent)
        };
        if intent {
            self.record_removal(name.as_str(), base.clone())?;
        }
        let had = had_pending.is_some();
        if let Some(p) = had_pending {
            let mut st = self.state.lock();
            if intent {
                // The record is the intent now: only the files go.
                self.drop_file(&mut st, &p.file);
                if let Some(old) = &p.superseded {
                    self.drop_file(&mut st, old);
                }
            } else {
                self.drop_staged(&mut st, &p);
            }
        }
        if base.is_none() && !intent {
            return Ok(had);
        }
        self.commit_removal(name.as_str(), base).map(|()| true)
    }

    /// Writes `pending/K.json` as a removal intent over `base` (durable).
    fn record_removal(&self, name: &str, base: Option<VersionRec>) -> Result<()> {
        let rec = Pending {
            name: name.to_string(),
            file: String::new(),
            data: String::new(),
            shape: Vec::new(),
            dtype: String::new(),
            base,
            automatic: false,
            caching: true,
            attrs: None,
            recorded: true,
            superseded: None,
            remove: true,
        };
        self.write_record(&rec, &self.pending_dir.join(format!("{name}.json")))
    }

    /// Commits the tombstone of `name` over `base` (nothing to commit
    /// without one) and ends its removal intent, if any. A condition that
    /// fails because the key is already removed counts as done (a removal
    /// committed before a power cut, completed again by the next flush).
    fn commit_removal(&self, name: &str, base: Option<VersionRec>) -> Result<()> {
        let result = match &base {
            Some(b) => {
                let b: UpdateVersion = b.clone().into();
                match self
                    .rt
                    .block_on(protocol::commit(&self.loc, name, Some(&b), Vec::new()))
                {
                    Err(Error::Conflict { key, url }) => {
                        match self.rt.block_on(protocol::read_meta(&self.loc, name)) {
                            Ok(Some(Head::Removed(v))) => Ok(Some(v)),
                            Ok(None) => Ok(None),
                            _ => Err(Error::Conflict { key, url }),
                        }
                    }
                    r => r.map(Some),
                }
            }
            None => Ok(None),
        };
        let mut st = self.state.lock();
        match result {
            Ok(v) => {
                // Nothing committed (no base: the key was never committed,
                // or is already a tombstone): the view stands.
                if let Some(v) = v {
                    st.view.insert(name.to_string(), Seen::Removed(v));
                    self.forget_seen(&mut st, name);
                }
                if st.removals.remove(name).is_some() {
                    drop(st);
                    self.end_record(name);
                }
                Ok(())
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                // The removal lost: another writer's value stands.
                if st.removals.remove(name).is_some() {
                    drop(st);
                    self.end_record(name);
                }
                Err(e)
            }
            // Kept: the next flush commits it.
            Err(e) => Err(e),
        }
    }

    /// Removes `pending/K.json` durably.
    fn end_record(&self, name: &str) {
        self.pending_io.remove_quietly(&format!("{name}.json"));
        if let Err(e) = self.pending_io.sync() {
            tracing::warn!(error = %e, key = name, "the end of a pending record may not be durable");
        }
    }

    /// The committed metadata of `name`, read from the object store if this
    /// handle has not read it yet.
    fn meta_of(&self, name: &str) -> Result<RemoteMeta> {
        let seen = {
            let st = self.state.lock();
            if st.removals.contains_key(name) {
                return Err(self.not_found(name));
            }
            st.view.get(name).cloned()
        };
        match seen {
            Some(Seen::Live(m, _)) => return Ok(*m),
            Some(Seen::Removed(_)) => return Err(self.not_found(name)),
            _ if self.opts.offline => return Err(self.not_found(name)),
            _ => {}
        }
        let head = self.rt.block_on(protocol::read_meta(&self.loc, name))?;
        let mut st = self.state.lock();
        self.note_head(&mut st, name, head);
        match st.view.get(name) {
            Some(Seen::Live(m, _)) => Ok((**m).clone()),
            _ => Err(self.not_found(name)),
        }
    }

    fn not_found(&self, name: &str) -> Error {
        let path = if self.opts.offline {
            PathBuf::from(format!(
                "{} (opened offline: only the entries cached in {})",
                self.loc.url,
                self.objects.parent().unwrap_or(&self.objects).display()
            ))
        } else {
            PathBuf::from(&self.loc.url)
        };
        Error::KeyNotFound {
            name: name.to_string(),
            path,
        }
    }

    /// Runs a garbage-collection pass with this store's grace period: marks
    /// unreferenced data objects, deletes those marked longer ago than the
    /// grace period.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`], [`Error::Corrupt`] (a malformed metadata object:
    /// nothing is deleted then).
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with_grace(self.opts.grace)
    }

    /// Runs a garbage-collection pass with `grace`. A zero grace deletes
    /// every unreferenced data object at once: use it only while no other
    /// handle writes or reads.
    ///
    /// # Errors
    ///
    /// As [`gc`](Self::gc).
    pub fn gc_with_grace(&self, grace: Duration) -> Result<GcReport> {
        self.check_online()?;
        self.rt.block_on(gc::run(&self.loc, grace))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RemoteStats {
        let st = self.state.lock();
        let c = &self.counters;
        RemoteStats {
            uploads: c.uploads.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            cached_bytes: st.cache.values().map(|c| c.size).sum(),
            pending: st.pending.len() as u64,
        }
    }
}
