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

mod gc;
mod protocol;
mod transfer;
mod url;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ndarray::{Array, Dimension};
use object_store::UpdateVersion;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

pub use gc::GcReport;
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
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            net: NetOptions::default(),
            transfer: TransferOptions::default(),
            grace: Duration::from_secs(3600),
            disk_budget: None,
            config: Vec::new(),
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
    /// Whether `pending/<name>.json` exists.
    #[serde(skip)]
    recorded: bool,
}

struct Cached {
    size: u64,
    tick: u64,
    users: Vec<Weak<dyn Any + Send + Sync>>,
}

#[derive(Default)]
struct State {
    view: BTreeMap<String, Seen>,
    pending: BTreeMap<String, Pending>,
    cache: HashMap<String, Cached>,
    tick: u64,
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
    _lock: File,
    opts: RemoteOptions,
    writer: String,
    state: Mutex<State>,
    counters: Counters,
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

fn upload_err(op: &'static str, name: &str, url: String, e: UploadError) -> Error {
    match e {
        UploadError::Remote(e) => protocol::remote_err(op, name, url, e),
        UploadError::Local(e) => e,
    }
}

impl RemoteStore {
    /// Opens the store at `url` with `cache_dir` as its local directory
    /// (created if missing), with default options.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] (bad URL, unreachable server, refused
    /// credentials), [`Error::Locked`] (another handle uses `cache_dir`),
    /// I/O errors on `cache_dir`.
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
        let cache = cache_dir.as_ref().to_path_buf();
        let objects = cache.join("objects");
        let pending_dir = cache.join("pending");
        for d in [&cache, &objects, &pending_dir] {
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
        let loc = url::open(url, &options.net, &options.config)?;
        let store = RemoteStore {
            rt,
            loc,
            objects,
            pending_dir,
            _lock: lock,
            opts: options,
            writer: protocol::unique_id(),
            state: Mutex::new(State::default()),
            counters: Counters::default(),
        };
        store.scan_cache()?;
        store.refresh()?;
        Ok(store)
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
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if name.ends_with(".npy") {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                st.cache.insert(
                    name,
                    Cached {
                        size,
                        tick: 0,
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
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let text = crate::io::read_bounded(&path, 1 << 20)?;
            let rec: Pending = match serde_json::from_slice(&text) {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(path = %path.display(), "unreadable pending record removed");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            let valid = EntryName::new(&rec.name).is_ok()
                && protocol::data_file_name(&rec.data, &rec.name).as_deref()
                    == Some(rec.file.as_str())
                && format!("{}.json", rec.name) == name
                && st.cache.contains_key(&rec.file);
            if !valid {
                tracing::warn!(path = %path.display(), "pending record without its staged file removed");
                let _ = std::fs::remove_file(&path);
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
    pub fn refresh(&self) -> Result<()> {
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
        Ok(())
    }

    /// Re-reads the metadata of one entry; returns whether it exists.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`], [`Error::Corrupt`] (a malformed metadata object).
    pub fn reload(&self, name: impl AsRef<str>) -> Result<bool> {
        let name = name_of(name.as_ref())?;
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
                false
            }
            Some(Head::Removed(v)) => {
                st.view.insert(name.to_string(), Seen::Removed(v));
                false
            }
            Some(Head::Live(m, v)) => {
                st.view.insert(name.to_string(), Seen::Live(m, v));
                true
            }
        }
    }

    /// Whether an entry named `name` is known (committed or staged).
    pub fn contains(&self, name: impl AsRef<str>) -> bool {
        let st = self.state.lock();
        let n = name.as_ref();
        st.pending.contains_key(n)
            || matches!(st.view.get(n), Some(Seen::Listed(_) | Seen::Live(..)))
    }

    /// The names of the known entries, sorted.
    pub fn keys(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut keys: Vec<String> = st
            .view
            .iter()
            .filter(|(_, s)| !matches!(s, Seen::Removed(_)))
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

    /// Stages `array` as the new value of `name` in the local directory; it
    /// is uploaded and committed by [`flush`](Self::flush). Until then
    /// [`get`](Self::get) on this handle returns it. Not durable: a crash
    /// before `flush` loses it (as [`DiskBackedStore::insert`](crate::DiskBackedStore::insert)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], I/O errors on the local directory.
    pub fn insert<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        let name = name_of(name.as_ref())?;
        let p = self.stage(&name, &array, false)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p);
        Ok(())
    }

    /// Stores `array` as `name` and commits it to the object store before
    /// returning. The write is staged durably in the local directory first
    /// and kept there until the commit succeeded: after a failure or a
    /// crash, [`flush`](Self::flush) (of this or a later handle on the same
    /// directory) completes it.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] (another writer committed `name` since this
    /// handle saw it; the staged write is dropped), [`Error::Remote`] (the
    /// write stays staged), [`Error::InvalidName`], local I/O errors.
    pub fn insert_durable<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        let name = name_of(name.as_ref())?;
        let mut p = self.stage(&name, &array, true)?;
        self.record(&mut p)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p.clone());
        self.push(p)
    }

    /// Stores the `.npy` file at `path` as `name` and commits it, as
    /// [`insert_durable`](Self::insert_durable) does, without reading the
    /// array into memory: the file is hard-linked (or copied, across file
    /// systems) into the local directory, then uploaded by parts. Use it
    /// with [`NpyStreamWriter`](crate::NpyStreamWriter) for entries larger
    /// than RAM. The file must not be modified afterwards.
    ///
    /// # Errors
    ///
    /// As [`insert_durable`](Self::insert_durable); [`Error::Corrupt`] or
    /// [`Error::Truncated`] if `path` is not a whole `.npy` file.
    pub fn insert_npy_file(&self, name: impl AsRef<str>, path: impl AsRef<FsPath>) -> Result<()> {
        let name = name_of(name.as_ref())?;
        let src = path.as_ref();
        let (info, len) = NpyInfo::read(src)?;
        info.check_len(len, src)?;
        let unique = protocol::unique_id();
        let file = format!("{}.{unique}.npy", name.as_str());
        let dest = self.objects.join(&file);
        if std::fs::hard_link(src, &dest).is_err() {
            let tmp = self.objects.join(format!(".{unique}.stage.tmp"));
            let copied = std::fs::copy(src, &tmp)
                .ctx("copy", src)
                .and_then(|_| std::fs::rename(&tmp, &dest).ctx("rename", &tmp));
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let mut p = {
            let mut st = self.state.lock();
            let base = st
                .view
                .get(name.as_str())
                .map(|s| VersionRec::from(s.version()));
            if let Some(old) = st.pending.remove(name.as_str()) {
                self.drop_staged(&mut st, &old);
            }
            st.tick += 1;
            let tick = st.tick;
            st.cache.insert(
                file.clone(),
                Cached {
                    size: len,
                    tick,
                    users: Vec::new(),
                },
            );
            Pending {
                name: name.as_str().to_string(),
                file,
                data: protocol::new_data_rel(&name, &unique),
                shape: info.shape.clone(),
                dtype: info.descr.clone(),
                base,
                recorded: false,
            }
        };
        self.record(&mut p)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p.clone());
        self.push(p)
    }

    /// Stores many entries: stages all of them durably, then uploads and
    /// commits each. Returns the first error after trying all; entries
    /// whose commit failed for another reason than a conflict stay staged.
    ///
    /// # Errors
    ///
    /// As [`insert_durable`](Self::insert_durable).
    pub fn insert_batch<T, D, N, I>(&self, entries: I) -> Result<()>
    where
        T: Element,
        D: Dimension,
        N: AsRef<str>,
        I: IntoIterator<Item = (N, Array<T, D>)>,
    {
        let mut staged = Vec::new();
        for (n, a) in entries {
            let name = name_of(n.as_ref())?;
            let mut p = self.stage(&name, &a, true)?;
            self.record(&mut p)?;
            self.state
                .lock()
                .pending
                .insert(name.as_str().to_string(), p.clone());
            staged.push(p);
        }
        let mut first = None;
        for p in staged {
            if let Err(e) = self.push(p) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Uploads and commits every staged write. Returns the first error after
    /// trying all; a write that lost a race is dropped (its error is
    /// [`Error::Conflict`]), any other failure keeps it staged, durably.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`], [`Error::Remote`], local I/O errors.
    pub fn flush(&self) -> Result<()> {
        let all: Vec<Pending> = self.state.lock().pending.values().cloned().collect();
        let mut first = None;
        for mut p in all {
            if !p.recorded {
                if let Err(e) = self.record(&mut p) {
                    first.get_or_insert(e);
                    continue;
                }
                if let Some(q) = self.state.lock().pending.get_mut(&p.name) {
                    q.recorded = true;
                }
            }
            if let Err(e) = self.push(p) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn stage<T: Element, D: Dimension>(
        &self,
        name: &EntryName,
        array: &Array<T, D>,
        durable: bool,
    ) -> Result<Pending> {
        let unique = protocol::unique_id();
        let file = format!("{}.{unique}.npy", name.as_str());
        let data = protocol::new_data_rel(name, &unique);
        let tmp = self.objects.join(format!(".{unique}.stage.tmp"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let written = crate::npy::write_array(
            &mut w,
            array,
            || CacheConfig::default().effective_chunk_budget(),
            &tmp,
        )
        .and_then(|()| w.flush().ctx("write", &tmp))
        .and_then(|()| {
            if durable {
                w.get_ref().sync_all().ctx("fsync", &tmp)
            } else {
                Ok(())
            }
        });
        let path = self.objects.join(&file);
        let written = written.and_then(|()| std::fs::rename(&tmp, &path).ctx("rename", &tmp));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let size = std::fs::metadata(&path).ctx("stat", &path)?.len();
        let mut st = self.state.lock();
        let base = st
            .view
            .get(name.as_str())
            .map(|s| VersionRec::from(s.version()));
        // A staged write on top of a staged write replaces it.
        if let Some(old) = st.pending.remove(name.as_str()) {
            self.drop_staged(&mut st, &old);
        }
        st.tick += 1;
        let tick = st.tick;
        st.cache.insert(
            file.clone(),
            Cached {
                size,
                tick,
                users: Vec::new(),
            },
        );
        Ok(Pending {
            name: name.as_str().to_string(),
            file,
            data,
            shape: array.shape().to_vec(),
            dtype: T::dtype(),
            base,
            recorded: false,
        })
    }

    fn drop_staged(&self, st: &mut State, p: &Pending) {
        if p.recorded {
            let _ = std::fs::remove_file(self.pending_dir.join(format!("{}.json", p.name)));
        }
        let live = st
            .cache
            .get(&p.file)
            .is_some_and(|c| c.users.iter().any(|u| u.strong_count() > 0));
        if !live {
            st.cache.remove(&p.file);
            let _ = std::fs::remove_file(self.objects.join(&p.file));
        }
    }

    /// Makes a staged write durable: fsyncs its file and writes its record.
    fn record(&self, p: &mut Pending) -> Result<()> {
        if p.recorded {
            return Ok(());
        }
        let path = self.objects.join(&p.file);
        let f = File::open(&path).ctx("open", &path)?;
        f.sync_all().ctx("fsync", &path)?;
        let body = serde_json::to_vec(&*p).map_err(|e| Error::InvalidInput {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let rec = self.pending_dir.join(format!("{}.json", p.name));
        let tmp = self
            .pending_dir
            .join(format!(".{}.tmp", protocol::unique_id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let done = f
            .write_all(&body)
            .ctx("write", &tmp)
            .and_then(|()| f.sync_all().ctx("fsync", &tmp))
            .and_then(|()| std::fs::rename(&tmp, &rec).ctx("rename", &tmp))
            .and_then(|()| crate::io::sync_dir(&self.pending_dir));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        p.recorded = true;
        Ok(())
    }

    /// Uploads and commits one staged write.
    fn push(&self, p: Pending) -> Result<()> {
        let local = self.objects.join(&p.file);
        let dest = protocol::rel_path(&self.loc, &p.data);
        let url = self.loc.url_of(&dest);
        let file = Arc::new(File::open(&local).ctx("open", &local)?);
        let size = file.metadata().ctx("stat", &local)?.len();
        let started = std::time::Instant::now();
        let crc = self
            .rt
            .block_on(transfer::upload_file(
                protocol::client(&self.loc),
                file,
                &local,
                size,
                &dest,
                self.opts.transfer,
            ))
            .map_err(|e| upload_err("upload", &p.name, url.clone(), e))?;
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_up.fetch_add(size, Ordering::Relaxed);
        if !self.opts.grace.is_zero() && started.elapsed() > self.opts.grace / 2 {
            // gc may already have marked the upload: upload again (flush).
            return Err(Error::Remote {
                op: "commit",
                key: p.name.clone(),
                url,
                kind: RemoteErrorKind::Timeout,
                source: "the upload took longer than half the grace period; flush uploads it again"
                    .into(),
            });
        }
        let meta = RemoteMeta::new(
            p.shape.clone(),
            p.dtype.clone(),
            RemoteField {
                version: protocol::REMOTE_VERSION,
                name: p.name.clone(),
                data: p.data.clone(),
                size,
                crc32: crc,
                writer: self.writer.clone(),
                committed_ms: protocol::now_ms(),
            },
        );
        let base: Option<UpdateVersion> = p.base.clone().map(Into::into);
        let result = self.rt.block_on(protocol::commit(
            &self.loc,
            &p.name,
            base.as_ref(),
            meta.to_bytes(),
        ));
        let mut st = self.state.lock();
        let current = st.pending.get(&p.name).is_some_and(|q| q.file == p.file);
        match result {
            Ok(v) => {
                if current {
                    st.pending.remove(&p.name);
                    let _ = std::fs::remove_file(self.pending_dir.join(format!("{}.json", p.name)));
                    st.view
                        .insert(p.name.clone(), Seen::Live(Box::new(meta), v));
                }
                drop(st);
                self.evict();
                Ok(())
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                // The view stays as it was: stale, so that this handle's
                // next write of the key conflicts too until it reloads.
                if current {
                    if let Some(q) = st.pending.remove(&p.name) {
                        self.drop_staged(&mut st, &q);
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
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
        let (base, had_pending) = {
            let mut st = self.state.lock();
            let had = match st.pending.remove(name.as_str()) {
                Some(p) => {
                    self.drop_staged(&mut st, &p);
                    true
                }
                None => false,
            };
            let base = match st.view.get(name.as_str()) {
                Some(Seen::Live(_, v) | Seen::Listed(v)) => Some(v.clone()),
                _ => None,
            };
            (base, had)
        };
        let Some(base) = base else {
            return Ok(had_pending);
        };
        let result = self.rt.block_on(protocol::commit(
            &self.loc,
            name.as_str(),
            Some(&base),
            Vec::new(),
        ));
        let mut st = self.state.lock();
        match result {
            Ok(v) => {
                st.view.insert(name.as_str().to_string(), Seen::Removed(v));
                Ok(true)
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The committed metadata of `name`, read from the object store if this
    /// handle has not read it yet.
    fn meta_of(&self, name: &str) -> Result<RemoteMeta> {
        let seen = self.state.lock().view.get(name).cloned();
        match seen {
            Some(Seen::Live(m, _)) => return Ok(*m),
            Some(Seen::Removed(_)) => return Err(self.not_found(name)),
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
        Error::KeyNotFound {
            name: name.to_string(),
            path: PathBuf::from(&self.loc.url),
        }
    }

    /// Returns the entry `name`, mapped from its copy in the local
    /// directory (downloaded by parallel ranged GETs if this directory has
    /// no copy of its current data object). A write staged by this handle
    /// is returned before it is committed.
    ///
    /// The value is the one this handle last saw: call
    /// [`reload`](Self::reload) or [`refresh`](Self::refresh) first to see
    /// other nodes' newer commits.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`], [`Error::DtypeMismatch`],
    /// [`Error::DimensionMismatch`], [`Error::Corrupt`] (a data object whose
    /// size or checksum differs from its metadata), [`Error::Remote`].
    pub fn get<T: Element, D: Dimension + 'static>(
        &self,
        name: impl AsRef<str>,
    ) -> Result<Arc<DiskBackedArray<T, D>>> {
        let name = name_of(name.as_ref())?;
        let staged = self
            .state
            .lock()
            .pending
            .get(name.as_str())
            .map(|p| p.file.clone());
        if let Some(file) = staged {
            return self.open_cached::<T, D>(&file, None);
        }
        let mut retried = false;
        loop {
            let meta = self.meta_of(name.as_str())?;
            match self.fetch(name.as_str(), &meta) {
                Ok(file) => return self.open_cached::<T, D>(&file, Some(&meta)),
                Err(e) if e.is_not_found() && !retried => {
                    // The data object was collected: the entry changed.
                    retried = true;
                    self.reload(name.as_str())?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ensures the local directory has the data object of `meta`; returns
    /// its local file name.
    fn fetch(&self, name: &str, meta: &RemoteMeta) -> Result<String> {
        let r = &meta.ndoffload_remote;
        let url_path = PathBuf::from(&self.loc.url);
        let file = protocol::data_file_name(&r.data, name).ok_or_else(|| {
            Error::corrupt(&url_path, format!("bad data object name {:?}", r.data))
        })?;
        {
            let mut st = self.state.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some(c) = st.cache.get_mut(&file) {
                if c.size == r.size && self.objects.join(&file).exists() {
                    c.tick = tick;
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(file);
                }
            }
        }
        let src = protocol::rel_path(&self.loc, &r.data);
        let url = self.loc.url_of(&src);
        let tmp = self
            .objects
            .join(format!(".{}.fetch.tmp", protocol::unique_id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let got = self
            .rt
            .block_on(transfer::download_to_file(
                self.loc.store.clone(),
                &src,
                r.size,
                Arc::new(f),
                &tmp,
                self.opts.transfer,
            ))
            .map_err(|e| upload_err("download", name, url.clone(), e));
        let crc = match got {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if crc != r.crc32 {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::corrupt(
                &PathBuf::from(url),
                format!("CRC-32 {crc:08x}, but its metadata says {:08x}", r.crc32),
            ));
        }
        let path = self.objects.join(&file);
        if let Err(e) = std::fs::rename(&tmp, &path).ctx("rename", &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_down
            .fetch_add(r.size, Ordering::Relaxed);
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        st.cache.insert(
            file.clone(),
            Cached {
                size: r.size,
                tick,
                users: Vec::new(),
            },
        );
        Ok(file)
    }

    fn open_cached<T: Element, D: Dimension + 'static>(
        &self,
        file: &str,
        meta: Option<&RemoteMeta>,
    ) -> Result<Arc<DiskBackedArray<T, D>>> {
        let path = self.objects.join(file);
        let arr = DiskBackedArray::<T, D>::open(&path, &CacheConfig::default())?;
        if let Some(m) = meta {
            if arr.shape() != m.shape.as_slice() {
                return Err(Error::Mismatch {
                    path: PathBuf::from(&self.loc.url)
                        .join("meta")
                        .join(format!("{}.meta.json", m.ndoffload_remote.name)),
                    field: "shape",
                    found: format!("{:?}", m.shape),
                    expected: format!("{:?}", arr.shape()),
                    other: path,
                });
            }
        }
        let arr = Arc::new(arr);
        let any: Arc<dyn Any + Send + Sync> = arr.clone();
        {
            let mut st = self.state.lock();
            if let Some(c) = st.cache.get_mut(file) {
                c.users.retain(|u| u.strong_count() > 0);
                c.users.push(Arc::downgrade(&any));
            }
        }
        self.evict();
        Ok(arr)
    }

    /// Returns `name` if it exists, else computes it with `f`, commits it
    /// and returns it. If another node commits `name` first, its value is
    /// returned (and `f`'s result dropped).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get) and [`insert_durable`](Self::insert_durable).
    pub fn get_or_compute<T, D, F>(
        &self,
        name: impl AsRef<str>,
        f: F,
    ) -> Result<Arc<DiskBackedArray<T, D>>>
    where
        T: Element,
        D: Dimension + 'static,
        F: FnOnce() -> Array<T, D>,
    {
        let name = name.as_ref();
        match self.get::<T, D>(name) {
            Err(e) if e.is_not_found() => {}
            other => return other,
        }
        match self.insert_durable(name, f()) {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => {
                self.reload(name)?;
            }
            Err(e) => return Err(e),
        }
        self.get(name)
    }

    /// Deletes clean cached copies, least recently used first, until the
    /// disk budget holds. Copies in use by a returned array and staged
    /// writes are kept.
    fn evict(&self) {
        let Some(budget) = self.opts.disk_budget else {
            return;
        };
        let budget = budget.bytes();
        let mut st = self.state.lock();
        let staged: std::collections::HashSet<String> =
            st.pending.values().map(|p| p.file.clone()).collect();
        let mut total: u64 = st.cache.values().map(|c| c.size).sum();
        if total <= budget {
            return;
        }
        let mut order: Vec<(u64, String)> = st
            .cache
            .iter_mut()
            .filter(|(f, _)| !staged.contains(*f))
            .filter_map(|(f, c)| {
                c.users.retain(|u| u.strong_count() > 0);
                c.users.is_empty().then(|| (c.tick, f.clone()))
            })
            .collect();
        order.sort();
        for (_, f) in order {
            if total <= budget {
                break;
            }
            if let Some(c) = st.cache.remove(&f) {
                let _ = std::fs::remove_file(self.objects.join(&f));
                total = total.saturating_sub(c.size);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
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

/// Lists the entries of the remote store at `url` (one LIST, then one GET
/// per entry).
///
/// # Errors
///
/// [`Error::Remote`], [`Error::Corrupt`] and friends for a malformed
/// metadata object.
pub fn list_entries(url: &str) -> Result<Vec<RemoteEntry>> {
    let rt = runtime()?;
    let loc = url::open(url, &NetOptions::default(), &[])?;
    rt.block_on(async {
        let mut out = Vec::new();
        for l in protocol::list_meta(&loc).await? {
            if l.size == 0 {
                continue;
            }
            if let Some(Head::Live(m, _)) = protocol::read_meta(&loc, l.name.as_str()).await? {
                out.push(RemoteEntry {
                    name: l.name.as_str().to_string(),
                    shape: m.shape.clone(),
                    dtype: m.dtype.clone(),
                    size: m.ndoffload_remote.size,
                    data: m.ndoffload_remote.data.clone(),
                });
            }
        }
        Ok(out)
    })
}

/// Checks every entry of the remote store at `url`: its metadata, that its
/// data object exists with the recorded size and CRC-32 (every byte is
/// read), and that the `.npy` header agrees with the metadata. Returns one
/// result per entry.
///
/// # Errors
///
/// [`Error::Remote`] if the store cannot be listed.
pub fn verify(url: &str) -> Result<Vec<(String, Result<()>)>> {
    let rt = runtime()?;
    let loc = url::open(url, &NetOptions::default(), &[])?;
    let opts = TransferOptions::default();
    rt.block_on(async {
        let mut out = Vec::new();
        for l in protocol::list_meta(&loc).await? {
            if l.size == 0 {
                continue;
            }
            let name = l.name.as_str().to_string();
            let r = async {
                let Some(Head::Live(m, _)) = protocol::read_meta(&loc, &name).await? else {
                    return Ok(());
                };
                let r = &m.ndoffload_remote;
                let src = protocol::rel_path(&loc, &r.data);
                let url = loc.url_of(&src);
                let head = protocol::client(&loc);
                let meta = object_store::ObjectStoreExt::head(head, &src)
                    .await
                    .map_err(|e| protocol::remote_err("verify", &name, url.clone(), e))?;
                let at = PathBuf::from(&url);
                if meta.size != r.size {
                    return Err(Error::Truncated {
                        path: at,
                        expected: r.size,
                        actual: meta.size,
                    });
                }
                let (crc, first) =
                    transfer::checksum_object(loc.store.clone(), &src, r.size, 65_536 + 12, opts)
                        .await
                        .map_err(|e| protocol::remote_err("verify", &name, url.clone(), e))?;
                if crc != r.crc32 {
                    return Err(Error::corrupt(
                        &at,
                        format!("CRC-32 {crc:08x}, metadata says {:08x}", r.crc32),
                    ));
                }
                let info = NpyInfo::parse(&first, &at)?;
                info.check_len(r.size, &at)?;
                if info.shape != m.shape {
                    return Err(Error::Mismatch {
                        path: at,
                        field: "shape",
                        found: format!("{:?}", info.shape),
                        expected: format!("{:?}", m.shape),
                        other: PathBuf::from(loc.url_of(&protocol::meta_path(&loc, &name))),
                    });
                }
                Ok(())
            }
            .await;
            out.push((name, r));
        }
        Ok(out)
    })
}
