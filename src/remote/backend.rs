//! The object store as a backend of the storage seam: a [`DiskBackedStore`]
//! over a remote prefix ([`StoreBuilder::remote`](crate::StoreBuilder::remote)).
//!
//! The store's directory is the prefix's local cache, and it is laid out
//! and shared as any store directory is (`LocalDir`): pairs of `K.npy` and
//! `K.meta.json`, the writers' registrations, the per-key locks and the
//! version links; readers take no lock and create nothing; writers
//! register. Each cached pair's metadata is the entry's remote metadata
//! object (GSEGUtils' fields, `ndoffload_attrs`, `ndoffload_remote`), so
//! one metadata model describes both; a pair that is a write not yet
//! committed carries `ndoffload_staged` (the version it replaces and the
//! name of its data object).
//!
//! | store operation | local cache | object store |
//! |---|---|---|
//! | durable publish (`insert_durable`, `insert_batch`, `flush`) | pair published (durable), `ndoffload_staged` | upload (from memory, at the same time as the local publish, for an array in RAM in C or Fortran order; else from the staged file after it), then the conditional PUT of the metadata object, then `ndoffload_staged` dropped |
//! | spill (memory budget) | pair published, `ndoffload_staged` | at the next `flush` |
//! | read of an entry not in RAM | the cached pair when it is a copy of the current data object, else downloaded into a new pair | ranged GETs |
//! | `remove` | pair removed | tombstone (conditional PUT) |
//! | `refresh` | | re-lists the metadata objects |
//! | disk budget | cached copies removed, least recently used first (never a staged write) | |
//!
//! A read-only handle downloads into a private temporary directory (it
//! writes nothing into the cache directory) and reads the cached pairs
//! writers left there.
//!
//! # The durable write path
//!
//! A durable publish of a job whose bytes are readable in memory
//! (`PairJob::image`: an array in RAM in C or Fortran order) uploads its
//! data object from memory on a helper thread while the calling thread
//! publishes the local pair; the data object's name is chosen before
//! either starts (`Staged::data`). The commit (the conditional PUT of the
//! metadata object, `commit_staged`, shared with `push`) waits for both:
//! the metadata PUT cannot run beside the data PUT, since a metadata
//! object naming a data object that is not there yet would be read by
//! other nodes, and would outlive a crash between the two. So a write
//! acknowledged durable is committed on the object store, and its local
//! copy was durable before the commit, as before. A batch uploads its
//! jobs' data objects concurrently (`RemoteOptions::batch_concurrency`
//! objects or parts in flight, sharing the slots, so memory stays within
//! that many parts) and commits each once its upload is done and the
//! batch's pairs are published, the commits holding the same slots (at
//! most that many requests in flight in all). Anything
//! unusual falls back to `push` (upload from the staged file, then the
//! same commit): a spill, a job without an image, a staged pair that is no
//! longer this write; an upload that failed leaves the staged pair for the
//! next flush; the upload of a skipped job is deleted (best effort; `gc`
//! collects it otherwise).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use object_store::{ObjectStoreExt, UpdateVersion};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::boot;
use super::protocol::{self, Head, RemoteField, RemoteMeta};
use super::url::Location;
use super::window_cache::{WindowCache, WindowCopy};
use super::{offline_hint, runtime, transfer, upload_err, RemoteOptions};
use crate::error::{Error, IoContext, RemoteErrorKind, Result};
use crate::io::{self, FileId, Found};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::store::meta::{Attrs, Meta, ATTRS_FIELD, REMOTE_FIELD, STAGED_FIELD};
use crate::store::storage::{
    read_header_of, Backend, Checked, Lease, Listed, Listing, LocalDir, LockMode, PairJob,
    Published, Recovered, RemoteStats, Storage, SyncMode, WriterInfo,
};

/// The backend of a store over the remote prefix `url` (its requests going
/// to `store` instead of the client the URL names when given: tests, see
/// `__testing::open_tiered_on`).
pub(crate) fn backend(
    url: String,
    store: Option<Arc<dyn object_store::ObjectStore>>,
    options: RemoteOptions,
) -> Backend {
    let describe = format!("remote {url}");
    let open = move |dir: &FsPath, read_only: bool| -> Result<Arc<dyn Storage>> {
        if options.offline && !read_only {
            return Err(Error::Remote {
                op: "open",
                key: String::new(),
                url: url.clone(),
                kind: RemoteErrorKind::Config,
                source: "RemoteOptions::offline reads the local cache only: open the store \
                         read-only (StoreBuilder::read_only(true))"
                    .into(),
            });
        }
        let b = ObjectBackend::open(&url, store.clone(), dir, options.clone(), read_only)?;
        Ok(Arc::new(b) as Arc<dyn Storage>)
    };
    Backend {
        describe,
        open: Arc::new(open),
    }
}

/// What this handle knows of an entry's metadata object.
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

/// `ndoffload_staged` of a cached pair: a write not yet committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Staged {
    /// The data object it is uploaded as, relative to the prefix.
    data: String,
    /// The version of the metadata object it replaces (`None`: the key
    /// must not exist).
    #[serde(default)]
    e_tag: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    base: bool,
    /// A removal promised to the next flush: the tombstone is committed
    /// over `base`, then the pair goes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    remove: bool,
    /// The registration of the writer that staged it: other processes on
    /// the cache directory read the committed value instead, until it is
    /// committed (or its writer died: then any writer commits it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    writer: Option<String>,
    /// The boot the pair was published in without being synced (`None`:
    /// synced). Such a pair is made durable by its commit (the object
    /// store then holds the value) or, when the commit fails, synced
    /// before the error is returned; found after a reboot it may be torn:
    /// it is never read nor uploaded (see `boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unsynced: Option<String>,
}

impl Staged {
    fn of(meta: &Meta) -> Option<Staged> {
        serde_json::from_value(meta.staged.clone()?).ok()
    }

    fn base(&self) -> Option<UpdateVersion> {
        self.base.then(|| UpdateVersion {
            e_tag: self.e_tag.clone(),
            version: self.version.clone(),
        })
    }
}

/// The key of a cached copy's `ndoffload_remote` field recording the boot
/// its pair was published in without being synced (see `boot`).
const UNSYNCED_KEY: &str = "unsynced";

/// The most keys a durable publish holds the push locks of to publish
/// its pairs without syncing (one open lock file each); a larger batch is
/// synced, as on a local store.
const UNSYNCED_MAX_KEYS: usize = 64;

/// Whether a cached pair's metadata is a staged write (or removal).
fn is_staged(meta: &Meta) -> bool {
    meta.staged.is_some()
}

/// Whether a cached pair's metadata is a staged removal.
fn is_removal(meta: &Meta) -> bool {
    Staged::of(meta).is_some_and(|s| s.remove)
}

/// The data object a cached pair's metadata says it is a copy of.
fn data_of(meta: &Meta) -> Option<&str> {
    meta.remote.as_ref()?.get("data")?.as_str()
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
    bytes_reused: AtomicU64,
    window_evictions: AtomicU64,
}

/// A data object uploaded: what its commit records.
#[derive(Debug, Clone, Copy)]
struct Uploaded {
    size: u64,
    crc: u32,
    /// When the upload started (a commit after half the grace period is
    /// refused: `gc` may have marked the object).
    started: Instant,
}

/// The PUT of the data object of a durable publish of one small entry
/// held in memory, started before anything else of the publish (see
/// [`RemoteBackend::start_small_put`]); aborted if the publish stops before
/// it waits for it.
struct SmallPut {
    data: String,
    dest: object_store::path::Path,
    put: Option<tokio::task::JoinHandle<object_store::Result<object_store::PutResult>>>,
    size: u64,
    crc: u32,
    started: Instant,
    /// Reported on the calling thread (whose `tracing` subscriber the
    /// caller set).
    progress: transfer::Progress,
}

impl Drop for SmallPut {
    fn drop(&mut self) {
        if let Some(p) = self.put.take() {
            // Its object is left to `gc`.
            p.abort();
        }
    }
}

/// The commit step of one published job of a durable publish.
enum Commit {
    /// Its data object (this name) was uploaded from memory.
    Uploaded(String, Uploaded),
    /// The upload from memory failed: the staged pair stays for the next
    /// flush.
    Failed(Error),
    /// Uploaded from the cached file, then committed (`push`).
    Push,
}

/// Where a read finds an entry's data.
enum Copy {
    /// The cached pair (a staged write, or a copy of the current data
    /// object).
    Cache,
    /// A file a read-only handle downloaded, and the metadata it belongs to.
    Private(PathBuf, Box<Meta>),
}

/// The storage seam over an object store, with a local directory as its
/// cache. See the [module documentation](self).
pub(crate) struct ObjectBackend {
    rt: tokio::runtime::Runtime,
    loc: Location,
    opts: RemoteOptions,
    /// The store's URL, as a path: where messages say the entries are.
    url: PathBuf,
    cache_path: PathBuf,
    /// The cache directory (`None`: a read-only open of a directory that
    /// does not exist).
    cache: Option<LocalDir>,
    read_only: bool,
    /// Downloads of a read-only handle (created on its first download).
    private: Mutex<Option<tempfile::TempDir>>,
    /// Unique id of this handle, recorded as the writer of its commits.
    writer: String,
    view: Mutex<BTreeMap<EntryName, Seen>>,
    /// Staged writes in the cache directory to commit on `sync`.
    staged: Mutex<BTreeSet<EntryName>>,
    /// Entries whose commit lost a race, for [`Storage::take_lost`].
    lost: Mutex<Vec<EntryName>>,
    counters: Counters,
    /// Ranges of data objects fetched by windows.
    windows: WindowCache,
}

/// Where a window of an entry is read from.
pub(crate) enum WindowPlan {
    /// The entry as the store reads it: a staged write, or a cached copy
    /// of its current data object.
    Local,
    /// Ranges of the data object this metadata names.
    Remote(Box<RemoteMeta>),
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBackend")
            .field("url", &self.loc.url)
            .field("cache", &self.cache_path)
            .finish_non_exhaustive()
    }
}

/// A lease that holds nothing.
#[derive(Debug)]
struct NoLease;

impl Lease for NoLease {}

impl ObjectBackend {
    fn open(
        url: &str,
        store: Option<Arc<dyn object_store::ObjectStore>>,
        cache_path: &FsPath,
        opts: RemoteOptions,
        read_only: bool,
    ) -> Result<ObjectBackend> {
        let offline = opts.offline;
        let loc = match store {
            Some(store) => Location {
                store,
                ..super::url::open(url, &opts.net, &opts.config, offline)?
            },
            None => super::url::open(url, &opts.net, &opts.config, offline)?,
        };
        let cache = if read_only {
            match std::fs::symlink_metadata(cache_path) {
                Ok(_) => Some(LocalDir::open(cache_path)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("stat", cache_path, e)),
            }
        } else {
            std::fs::create_dir_all(cache_path).ctx("create", cache_path)?;
            Some(LocalDir::open(cache_path)?)
        };
        let b = ObjectBackend {
            rt: runtime()?,
            url: PathBuf::from(&loc.url),
            loc,
            opts,
            cache_path: cache_path.to_path_buf(),
            cache,
            read_only,
            private: Mutex::new(None),
            writer: protocol::unique_id(),
            view: Mutex::new(BTreeMap::new()),
            staged: Mutex::new(BTreeSet::new()),
            lost: Mutex::new(Vec::new()),
            counters: Counters::default(),
            windows: WindowCache::default(),
        };
        if !read_only {
            b.drop_torn()?;
        }
        if offline {
            b.load_offline_view()?;
        } else {
            // A writable open checks that the server enforces conditional
            // PUT (`protocol::check_conditional_put`) while it lists.
            let probe = (!read_only).then(|| {
                let loc = b.loc.clone();
                b.rt.spawn(async move { protocol::check_conditional_put(&loc).await })
            });
            let listed = b.refresh();
            // Awaited whatever the listing gave: the probe deletes its object.
            if let Some(probe) = probe {
                let probed = b.rt.block_on(probe).map_err(|e| Error::Remote {
                    op: "open for writing",
                    key: String::new(),
                    url: b.loc.url.clone(),
                    kind: RemoteErrorKind::Other,
                    source: Box::new(e),
                });
                if listed.is_ok() {
                    probed??;
                }
            }
            listed.map_err(|e| {
                let cached = b.cached_names().len();
                offline_hint(e, cached)
            })?;
        }
        Ok(b)
    }

    fn cache(&self) -> Result<&LocalDir> {
        self.cache.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.cache_path.clone(),
        })
    }

    /// The cached pairs' metadata (best effort: unreadable pairs skipped).
    fn cached_metas(&self) -> Vec<(EntryName, Meta)> {
        let Some(cache) = &self.cache else {
            return Vec::new();
        };
        let Ok(listing) = cache.list() else {
            return Vec::new();
        };
        listing
            .entries
            .into_iter()
            .filter(|(_, l)| matches!(l, Listed::Pair))
            .filter_map(|(n, _)| cache.read_meta(&n).ok().map(|m| (n, m)))
            .collect()
    }

    /// The entries the cache directory holds a whole copy or a staged write of.
    fn cached_names(&self) -> Vec<EntryName> {
        self.cached_metas()
            .into_iter()
            .filter(|(_, m)| is_staged(m) || data_of(m).is_some())
            .map(|(n, _)| n)
            .collect()
    }

    /// Offline: the view is what the cache directory holds.
    fn load_offline_view(&self) -> Result<()> {
        let mut view = self.view.lock();
        let mut staged = self.staged.lock();
        for (name, meta) in self.cached_metas() {
            if is_staged(&meta) {
                staged.insert(name);
                continue;
            }
            if self.copy_data(&meta).is_none() {
                continue;
            }
            let Ok(text) = serde_json::to_vec(&meta_object(&meta)) else {
                continue;
            };
            if let Ok(m) = RemoteMeta::parse(&text, name.as_str(), &self.loc.url) {
                view.insert(
                    name,
                    Seen::Live(
                        Box::new(m),
                        UpdateVersion {
                            e_tag: None,
                            version: None,
                        },
                    ),
                );
            }
        }
        Ok(())
    }

    /// Re-lists the metadata objects (offline: nothing changes).
    fn refresh(&self) -> Result<()> {
        if self.opts.offline {
            return Ok(());
        }
        let listed = self.rt.block_on(protocol::list_meta(&self.loc))?;
        let mut st = self.view.lock();
        let mut view = BTreeMap::new();
        for l in listed {
            let seen = match st.remove(&l.name) {
                Some(s) if s.version() == &l.version => s,
                _ if l.size == 0 => Seen::Removed(l.version),
                _ => Seen::Listed(l.version),
            };
            view.insert(l.name, seen);
        }
        *st = view;
        drop(st);
        if !self.read_only {
            // Staged writes of this cache directory (this or an earlier
            // handle's, or another process's on this node) are committed by
            // the next `sync`.
            let mut staged = self.staged.lock();
            for (name, meta) in self.cached_metas() {
                if is_staged(&meta) {
                    staged.insert(name);
                }
            }
        }
        Ok(())
    }

    /// Re-reads the metadata object of `name`; whether the entry exists.
    fn reload(&self, name: &EntryName) -> Result<bool> {
        if self.opts.offline {
            return Ok(self.exists(name));
        }
        let head = self
            .rt
            .block_on(protocol::read_meta(&self.loc, name.as_str()))?;
        Ok(self.note_head(name, head))
    }

    fn note_head(&self, name: &EntryName, head: Option<Head>) -> bool {
        let mut view = self.view.lock();
        match head {
            None => {
                view.remove(name);
                false
            }
            Some(Head::Removed(v)) => {
                view.insert(name.clone(), Seen::Removed(v));
                false
            }
            Some(Head::Live(m, v)) => {
                view.insert(name.clone(), Seen::Live(m, v));
                true
            }
        }
    }

    fn not_found(&self, name: &EntryName) -> Error {
        let path = if self.opts.offline {
            PathBuf::from(format!(
                "{} (opened offline: only the entries cached in {})",
                self.loc.url,
                self.cache_path.display()
            ))
        } else {
            self.url.clone()
        };
        Error::KeyNotFound {
            name: name.as_str().to_string(),
            path,
        }
    }

    /// The committed metadata of `name`, read from the object store if this
    /// handle has not read it yet.
    fn remote_meta(&self, name: &EntryName) -> Result<RemoteMeta> {
        let seen = self.view.lock().get(name).cloned();
        match seen {
            Some(Seen::Live(m, _)) => return Ok(*m),
            Some(Seen::Removed(_)) => return Err(self.not_found(name)),
            _ if self.opts.offline => return Err(self.not_found(name)),
            _ => {}
        }
        let head = self
            .rt
            .block_on(protocol::read_meta(&self.loc, name.as_str()))?;
        self.note_head(name, head);
        match self.view.lock().get(name) {
            Some(Seen::Live(m, _)) => Ok((**m).clone()),
            _ => Err(self.not_found(name)),
        }
    }

    /// Whether a cached pair is a staged write (or removal) this handle
    /// reads as the entry's value: its own, or one a dead writer left
    /// (committed by the next `sync`). Another live process's staged write
    /// is read as the committed value until it is committed; a read-only
    /// handle reads only committed values.
    fn visible(&self, meta: &Meta) -> bool {
        let Some(s) = Staged::of(meta) else {
            return false;
        };
        if !self.intact(s.unsynced.as_deref()) {
            return false;
        }
        let Some(cache) = &self.cache else {
            return false;
        };
        match (s.writer.as_deref(), cache.writer_id()) {
            (None, Some(_)) => true,
            (Some(w), Some(me)) => w == me || !cache.is_alive(w),
            (_, None) => false,
        }
    }

    /// Whether a pair recorded as published without syncing in boot
    /// `written` (`None`: synced) is whole (see `boot`).
    fn intact(&self, written: Option<&str>) -> bool {
        boot::intact(&self.cache_path, written)
    }

    /// The data object a cached clean copy is a copy of, if its bytes can
    /// be trusted: a copy of a write published without syncing, found
    /// after a reboot, may be torn (it is downloaded again).
    fn copy_data<'m>(&self, meta: &'m Meta) -> Option<&'m str> {
        let unsynced = meta.remote.as_ref()?.get(UNSYNCED_KEY);
        match unsynced {
            None => data_of(meta),
            Some(b) => self.intact(Some(b.as_str()?)).then(|| data_of(meta))?,
        }
    }

    /// The cached pair's metadata of `name`, if there is one that parses.
    fn cached_meta(&self, name: &EntryName) -> Option<Meta> {
        self.cache.as_ref()?.read_meta(name).ok()
    }

    /// What a staged write of `name` this handle reads as the entry's value
    /// says (see [`visible`](Self::visible)): `Some(true)` a value,
    /// `Some(false)` a removal; `None` if there is no such staged write.
    fn staged_value(&self, name: &EntryName) -> Option<bool> {
        let m = self.cached_meta(name).filter(|m| self.visible(m))?;
        Some(!is_removal(&m))
    }

    /// Where `name`'s current data is, downloading it if needed.
    fn copy_of(&self, name: &EntryName) -> Result<Copy> {
        let mut retried = false;
        loop {
            let cached = self.cached_meta(name);
            let visible = cached.as_ref().is_some_and(|m| self.visible(m));
            if visible && cached.as_ref().is_some_and(is_removal) {
                return Err(self.not_found(name));
            }
            if visible {
                return Ok(Copy::Cache);
            }
            let remote = self.remote_meta(name)?;
            let data = &remote.ndoffload_remote.data;
            if cached.as_ref().and_then(|m| self.copy_data(m)) == Some(data.as_str()) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Copy::Cache);
            }
            if self.opts.offline {
                return Err(self.not_found(name));
            }
            match self.download(name, &remote) {
                Err(e) if e.is_not_found() && !retried => {
                    // The data object was collected: the entry changed.
                    retried = true;
                    self.reload(name)?;
                }
                r => return r,
            }
        }
    }

    /// Downloads the data object `remote` names: into a new cached pair
    /// (writers; never over a staged write), or into the private directory
    /// (read-only handles).
    fn download(&self, name: &EntryName, remote: &RemoteMeta) -> Result<Copy> {
        let r = &remote.ndoffload_remote;
        let src = protocol::rel_path(&self.loc, &r.data);
        let url = self.loc.url_of(&src);
        let meta = Meta::parse(&remote.to_bytes(), &PathBuf::from(&url))?;
        // The ranges windows fetched of this object are copied, not
        // fetched again.
        let reuse = self.windows.get(name, &r.data);
        let fetch = |file: &File, path: &FsPath| -> Result<()> {
            let f = Arc::new(file.try_clone().ctx("open", path)?);
            let attempt = |held: Option<&transfer::Held>| {
                let progress = transfer::Progress::start(name.as_str(), "download", r.size);
                self.rt
                    .block_on(transfer::download_to_file(
                        self.loc.store.clone(),
                        &src,
                        r.size,
                        f.clone(),
                        path,
                        held,
                        self.opts.transfer,
                        &progress,
                    ))
                    .map_err(|e| upload_err(&self.loc, "download", name.as_str(), url.clone(), e))
            };
            let held = reuse.as_ref().map(|c| transfer::Held {
                file: c.file.clone(),
                path: c.path.clone(),
                ranges: c.held(),
            });
            let mut got = attempt(held.as_ref())?;
            if got.crc != r.crc32 && got.reused > 0 {
                // The window cache's bytes were changed by something else:
                // forgotten, and the whole object fetched.
                self.windows.discard(name);
                self.counters
                    .bytes_down
                    .fetch_add(got.fetched, Ordering::Relaxed);
                got = attempt(None)?;
            }
            if got.crc != r.crc32 {
                return Err(Error::corrupt(
                    &PathBuf::from(&url),
                    format!(
                        "CRC-32 {:08x}, but its metadata says {:08x}",
                        got.crc, r.crc32
                    ),
                ));
            }
            self.counters.downloads.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_down
                .fetch_add(got.fetched, Ordering::Relaxed);
            self.counters
                .bytes_reused
                .fetch_add(got.reused, Ordering::Relaxed);
            Ok(())
        };
        if let Some(cache) = self.cache.as_ref().filter(|c| c.is_writer()) {
            let publish = AtomicBool::new(true);
            let published = AtomicU64::new(0);
            let mut extra = Attrs::new();
            extra.insert(
                REMOTE_FIELD.to_string(),
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
            let job = PairJob {
                name,
                shape: remote.shape.clone(),
                dtype: remote.dtype.clone(),
                flags: meta.flags(crate::store::meta::EntryFlags {
                    purge_on_drop: false,
                    automatic_offloading: false,
                    caching: true,
                    recomputable: false,
                }),
                attrs: remote.ndoffload_attrs.clone().map(Arc::new),
                publish: &publish,
                version: 1,
                published: &published,
                write_npy: Box::new(|w, target| {
                    std::io::Write::flush(w).ctx("write", target)?;
                    fetch(w.get_ref().file(), w.get_ref().path())
                }),
                image: None,
                extra: Some(Arc::new(extra)),
                unless: Some(is_staged),
            };
            // A clean copy: not synced (a copy lost by a power cut is
            // downloaded again). Never over a staged write: the copy is then
            // read from the private directory.
            if cache.publish(vec![job], SyncMode::Spill)?[0].is_some() {
                // The whole object is cached: windows read it there.
                self.windows.discard(name);
                return Ok(Copy::Cache);
            }
        }
        let mut private = self.private.lock();
        if private.is_none() {
            *private = Some(
                tempfile::Builder::new()
                    .prefix("ndoffload-remote-")
                    .tempdir()
                    .ctx("create", &std::env::temp_dir())?,
            );
        }
        let dir = private.as_ref().map(|d| d.path().to_path_buf());
        drop(private);
        let dir = dir.unwrap_or_else(std::env::temp_dir);
        let file = protocol::data_file_name(&r.data, name.as_str())
            .ok_or_else(|| Error::corrupt(&PathBuf::from(&url), "bad data object name"))?;
        let path = dir.join(&file);
        if !path.is_file() {
            let tmp = dir.join(format!(".{}.fetch.tmp", protocol::unique_id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&tmp)
                .ctx("create", &tmp)?;
            let got =
                fetch(&f, &tmp).and_then(|()| std::fs::rename(&tmp, &path).ctx("rename", &tmp));
            if let Err(e) = got {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        Ok(Copy::Private(path, Box::new(meta)))
    }

    /// Uploads and commits `name`'s staged write, if the cache directory
    /// still holds one (another process may have committed or replaced
    /// it). Serialised per key with the other processes on the directory.
    fn push(&self, name: &EntryName) -> Result<()> {
        let cache = self.cache()?;
        let _lock = cache.push_lock(name)?;
        if self.drop_if_torn(cache, name)? {
            self.staged.lock().remove(name);
            return Ok(());
        }
        let c = cache.read_checked(name)?;
        let Some(staged) = Staged::of(&c.meta) else {
            self.staged.lock().remove(name);
            return Ok(());
        };
        if staged.remove {
            return self.remove_staged(cache, name, &staged);
        }
        let Some((file, info)) = c.file else {
            return Err(Error::Mismatch {
                path: cache.data_path(name),
                field: "dtype and shape",
                found: format!("{:?}", (&c.meta.dtype, &c.meta.shape)),
                expected: "the staged write's header".into(),
                other: cache.meta_path(name),
            });
        };
        let local = cache.data_path(name);
        let dest = protocol::rel_path(&self.loc, &staged.data);
        let url = self.loc.url_of(&dest);
        let size = file.metadata().ctx("stat", &local)?.len();
        let started = Instant::now();
        let progress = transfer::Progress::start(name.as_str(), "upload", size);
        let crc = self
            .rt
            .block_on(transfer::upload_file(
                protocol::client(&self.loc),
                Arc::new(file),
                &local,
                size,
                &dest,
                self.opts.transfer,
                &progress,
            ))
            .map_err(|e| upload_err(&self.loc, "upload", name.as_str(), url, e))?;
        let up = Uploaded { size, crc, started };
        self.commit_staged(cache, name, &staged, &c.meta, &info, &up)
    }

    /// The commit of a staged write whose data object is uploaded (`up`),
    /// under its push lock: the conditional PUT of the metadata object
    /// (`meta` and `info` are the cached pair's), then the pair becomes a
    /// clean copy; a lost race leaves the winner's value. The one commit
    /// step of uploads from the cached file (`push`) and from memory
    /// (`commit_uploaded`).
    fn commit_staged(
        &self,
        cache: &LocalDir,
        name: &EntryName,
        staged: &Staged,
        meta: &Meta,
        info: &NpyInfo,
        up: &Uploaded,
    ) -> Result<()> {
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_up.fetch_add(up.size, Ordering::Relaxed);
        let url = self
            .loc
            .url_of(&protocol::rel_path(&self.loc, &staged.data));
        if !self.opts.grace.is_zero() && up.started.elapsed() > self.opts.grace / 2 {
            // gc may already have marked the upload: upload again (flush).
            return Err(Error::Remote {
                op: "commit",
                key: name.as_str().to_string(),
                url,
                kind: RemoteErrorKind::Timeout,
                source: "the upload took longer than half the grace period; flush uploads it again"
                    .into(),
            });
        }
        let field = RemoteField {
            version: protocol::REMOTE_VERSION,
            name: name.as_str().to_string(),
            data: staged.data.clone(),
            size: up.size,
            crc32: up.crc,
            writer: self.writer.clone(),
            committed_ms: protocol::now_ms(),
        };
        let mut remote = RemoteMeta::new(info.shape.clone(), info.descr.clone(), field.clone());
        remote.automatic_offloading = meta.automatic.unwrap_or(false);
        remote.enable_caching = meta.caching.unwrap_or(true);
        remote.ndoffload_attrs = Some(meta.attrs.clone()).filter(|a| !a.is_empty());
        let base = staged.base();
        let result = self.rt.block_on(protocol::commit(
            &self.loc,
            name.as_str(),
            base.as_ref(),
            remote.to_bytes(),
        ));
        let this = |m: &Meta| Staged::of(m).is_some_and(|s| s.data == staged.data);
        match result {
            Ok(v) => {
                self.view
                    .lock()
                    .insert(name.clone(), Seen::Live(Box::new(remote), v));
                // The pair is a clean copy now (a newer staged write of the
                // key stays staged). Not synced: a power cut keeps it staged,
                // and the next commit of it finds it committed. A pair
                // published without syncing stays marked so as a copy.
                let mut field = serde_json::to_value(&field).ok();
                if let (Some(Value::Object(o)), Some(b)) = (field.as_mut(), &staged.unsynced) {
                    o.insert(UNSYNCED_KEY.to_string(), Value::String(b.clone()));
                }
                // The clean-up of a synced staged write is synced: a later
                // write published without syncing over this copy must not
                // bring the staged write back after a power cut.
                let cleaned = cache.replace_fields_if(
                    name,
                    this,
                    &[(REMOTE_FIELD, field), (STAGED_FIELD, None)],
                    staged.unsynced.is_none(),
                )?;
                if cleaned {
                    self.staged.lock().remove(name);
                }
                Ok(())
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                // The write lost: the entry reads as the winner's value.
                let _ = cache.remove_if(name, |m| m.is_some_and(this));
                self.staged.lock().remove(name);
                let _ = self.reload(name);
                self.lost.lock().push(name.clone());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Commits `name`'s staged write whose data object `data` was uploaded
    /// from memory (`up`) while the pair was published locally. When the
    /// cached pair is no longer that staged write (another thread or
    /// process committed or replaced it meanwhile), or its file is not
    /// the size uploaded, the key is pushed as any staged write is (the
    /// upload is then left to `gc` if nothing names it).
    fn commit_uploaded(&self, name: &EntryName, data: &str, up: &Uploaded) -> Result<()> {
        self.commit_when_uploaded(name, data, || Ok(*up))
    }

    /// [`commit_uploaded`](Self::commit_uploaded) of an upload still under
    /// way: the key's push lock is taken and its cached pair read while
    /// `uploaded` waits for it (an upload that failed returns its error).
    fn commit_when_uploaded(
        &self,
        name: &EntryName,
        data: &str,
        uploaded: impl FnOnce() -> Result<Uploaded>,
    ) -> Result<()> {
        let cache = self.cache()?;
        let lock = cache.push_lock(name)?;
        let c = cache.read_checked(name)?;
        let up = uploaded()?;
        if let (Some(staged), Some((_, info))) = (Staged::of(&c.meta), c.file.as_ref()) {
            if staged.data == data && !staged.remove && info.file_len == Some(up.size) {
                return self.commit_staged(cache, name, &staged, &c.meta, info, &up);
            }
        }
        drop(lock);
        self.push(name)
    }

    /// When `jobs` is the durable publish of one entry held in memory whose
    /// data object is one PUT (at most a part), starts that PUT on the
    /// runtime: it runs while the publish takes its locks, publishes the
    /// pair locally and makes the commit's checks.
    fn start_small_put(&self, jobs: &[PairJob<'_>], sync: SyncMode) -> Option<SmallPut> {
        let [job] = jobs else { return None };
        let image = job.image.as_ref().filter(|_| sync != SyncMode::Spill)?;
        let (head, body) = (&image.header[..], image.body.bytes());
        let len = head.len() + body.len();
        if len > self.opts.transfer.part_size.max(5 << 20) {
            return None;
        }
        let size = len as u64;
        let started = Instant::now();
        let data = protocol::new_data_rel(job.name, &protocol::unique_id());
        let dest = protocol::rel_path(&self.loc, &data);
        let progress = transfer::Progress::start(job.name.as_str(), "upload", size);
        let (bytes, h) = transfer::copy_part(head, body, 0, len);
        let (store, to) = (self.loc.store.clone(), dest.clone());
        let put = self.rt.spawn(async move {
            store
                .put_opts(&to, bytes.into(), object_store::PutOptions::default())
                .await
        });
        Some(SmallPut {
            data,
            dest,
            put: Some(put),
            size,
            crc: h.finalize(),
            started,
            progress,
        })
    }

    /// Deletes the data object `data` uploaded for a job that was skipped
    /// (replaced or removed meanwhile): nothing names it. Best effort:
    /// `gc` collects it otherwise.
    fn delete_unnamed(&self, data: &str) {
        let dest = protocol::rel_path(&self.loc, data);
        let _ = self.rt.block_on(self.loc.store.delete(&dest));
    }

    /// The rest of a durable publish whose data object `small` is being
    /// PUT: the local publish, then the commit (as
    /// [`commit_batch`](Self::commit_batch) of one job, without a thread of
    /// its own), its checks made while the PUT runs.
    fn publish_one_small(
        &self,
        cache: &LocalDir,
        jobs: Vec<PairJob<'_>>,
        local_sync: SyncMode,
        held: Vec<Option<Box<dyn Lease>>>,
        name: &EntryName,
        mut small: SmallPut,
    ) -> Result<Vec<Option<Published>>> {
        let published = cache.publish(jobs, local_sync);
        drop(held);
        // An error drops `small`, which aborts the PUT.
        let ids = published?;
        self.note_staged(std::slice::from_ref(name), &ids);
        let put = small.put.take();
        let wait = || match put.map(|p| self.rt.block_on(p)) {
            Some(Ok(Ok(_))) => {
                small.progress.advance(small.size);
                Ok(Uploaded {
                    size: small.size,
                    crc: small.crc,
                    started: small.started,
                })
            }
            Some(Ok(Err(e))) => Err(upload_err(
                &self.loc,
                "upload",
                name.as_str(),
                self.loc.url_of(&small.dest),
                transfer::UploadError::Remote(e),
            )),
            other => Err(Error::Io {
                path: PathBuf::from(self.loc.url_of(&small.dest)),
                op: "upload",
                source: std::io::Error::other(match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "the upload was not started".to_string(),
                }),
            }),
        };
        if ids.first().is_some_and(Option::is_some) {
            let r = self.commit_when_uploaded(name, &small.data, wait);
            self.settle_job(name, &small.data, r)?;
        } else if wait().is_ok() {
            self.delete_unnamed(&small.data);
        }
        Ok(ids)
    }

    /// Uploads the data objects of the jobs held in memory (`parts`: the
    /// header and body of job `i`, uploaded as `data[i]`), each part or
    /// single PUT holding one of `slots`, at most `at_once` objects at a
    /// time; sends each result to `done` as it finishes.
    #[allow(clippy::too_many_arguments)]
    fn upload_images(
        &self,
        names: &[EntryName],
        data: &[String],
        parts: &[Option<(&[u8], &[u8])>],
        slots: &Arc<tokio::sync::Semaphore>,
        at_once: usize,
        cancel: &AtomicBool,
        done: std::sync::mpsc::Sender<(usize, Result<Uploaded>)>,
    ) {
        let t = self.opts.transfer;
        let jobs = parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|(head, body)| (i, head, body)));
        let uploads = futures::stream::iter(jobs)
            .map(|(i, head, body)| async move {
                let dest = protocol::rel_path(&self.loc, &data[i]);
                let size = (head.len() + body.len()) as u64;
                let started = Instant::now();
                let progress = transfer::Progress::start(names[i].as_str(), "upload", size);
                let r = transfer::upload_bytes(
                    &self.loc.store,
                    head,
                    body,
                    &dest,
                    t,
                    slots,
                    cancel,
                    &progress,
                )
                .await
                .map(|crc| Uploaded { size, crc, started })
                .map_err(|e| {
                    upload_err(
                        &self.loc,
                        "upload",
                        names[i].as_str(),
                        self.loc.url_of(&dest),
                        e,
                    )
                });
                (i, r)
            })
            .buffer_unordered(at_once)
            .for_each(|r| {
                // The receiver is gone only once the publish returned.
                let _ = done.send(r);
                std::future::ready(())
            });
        self.rt.block_on(uploads);
    }

    /// Whether a cached pair's metadata records a pair published without
    /// syncing before a reboot (a staged write, or the copy its commit
    /// left): its files may be torn.
    fn torn(&self, meta: &Meta) -> bool {
        let staged = Staged::of(meta).and_then(|s| s.unsynced);
        let copy = meta
            .remote
            .as_ref()
            .and_then(|r| r.get(UNSYNCED_KEY))
            .and_then(Value::as_str)
            .map(str::to_owned);
        staged.or(copy).is_some_and(|b| !self.intact(Some(&b)))
    }

    /// Drops `name`'s cached pair if it may be torn (see [`torn`](Self::torn)):
    /// its write was never acknowledged (an acknowledged one is committed;
    /// one whose commit failed was synced before its error), or it is a
    /// copy; the entry then reads as the object store has it. Whether it
    /// dropped one.
    fn drop_if_torn(&self, cache: &LocalDir, name: &EntryName) -> Result<bool> {
        let Ok(meta) = cache.read_meta(name) else {
            return Ok(false);
        };
        if !self.torn(&meta) {
            return Ok(false);
        }
        let dropped = cache.remove_if(name, |m| m.is_some_and(|m| self.torn(m)))?;
        if dropped {
            tracing::info!(
                key = name.as_str(),
                "dropped a cached pair published without syncing before a reboot"
            );
        }
        Ok(dropped)
    }

    /// Drops every cached pair that may be torn, whole or not (a writer's
    /// open; after a reboot).
    fn drop_torn(&self) -> Result<()> {
        let Some(cache) = self.cache.as_ref().filter(|_| !self.read_only) else {
            return Ok(());
        };
        let Ok(listing) = cache.list() else {
            return Ok(());
        };
        for name in listing.entries.keys() {
            if cache.read_meta(name).is_ok_and(|m| self.torn(&m)) {
                let _lock = cache.push_lock(name)?;
                self.drop_if_torn(cache, name)?;
            }
        }
        Ok(())
    }

    /// The end of one published job of a durable publish (`r`: its commit):
    /// when the commit failed (other than lost to another writer, whose
    /// pair is gone), the staged pair, published without syncing, is made
    /// durable before the error is returned: the next flush commits it,
    /// also after a power cut.
    fn settle_job(&self, name: &EntryName, data: &str, r: Result<()>) -> Result<()> {
        match r {
            Err(e) if !matches!(e, Error::Conflict { .. }) => match self.make_durable(name, data) {
                Ok(()) => Err(e),
                Err(d) => {
                    tracing::warn!(key = name.as_str(), error = %e, "the commit failed, and its staged write could not be synced");
                    Err(d)
                }
            },
            r => r,
        }
    }

    /// Syncs `name`'s staged write `data` if it was published without
    /// syncing (the data file, then its metadata without the mark, and the
    /// directory).
    fn make_durable(&self, name: &EntryName, data: &str) -> Result<()> {
        let cache = self.cache()?;
        let _lock = cache.push_lock(name)?;
        let this = |m: &Meta| Staged::of(m).is_some_and(|s| s.data == data);
        let Some(mut staged) = cache
            .read_meta(name)
            .ok()
            .and_then(|m| Staged::of(&m))
            .filter(|s| s.data == data && s.unsynced.is_some())
        else {
            return Ok(());
        };
        let file = cache.open_data(name, io::Access::Read)?;
        io::sync_file(&file, &cache.data_path(name))?;
        staged.unsynced = None;
        let value = serde_json::to_value(&staged).ok();
        cache.replace_fields_if(name, this, &[(STAGED_FIELD, value)], true)?;
        Ok(())
    }

    /// The commit step of one published job.
    fn commit_one(&self, name: &EntryName, task: Commit) -> Result<()> {
        match task {
            Commit::Uploaded(data, up) => self.commit_uploaded(name, &data, &up),
            Commit::Failed(e) => Err(e),
            Commit::Push => self.push(name),
        }
    }

    /// The commit steps of a batch: for each published job (`ids[i]`), its
    /// push when it has no upload from memory (`parts[i]` is `None`), else
    /// its commit once its upload arrives on `uploads` (a skipped job's
    /// upload is deleted, best effort); `at_once` at a time, each holding
    /// one of `slots` (shared with the uploads still running). Every job
    /// is attempted; returns the first error in job order.
    #[allow(clippy::too_many_arguments)]
    fn commit_batch(
        &self,
        names: &[EntryName],
        data: &[String],
        parts: &[Option<(&[u8], &[u8])>],
        ids: &[Option<Published>],
        uploads: std::sync::mpsc::Receiver<(usize, Result<Uploaded>)>,
        slots: &Arc<tokio::sync::Semaphore>,
        at_once: usize,
    ) -> Result<()> {
        if at_once <= 1 {
            // One at a time, on the calling thread, in job order.
            let mut got: Vec<Option<Result<Uploaded>>> = (0..ids.len()).map(|_| None).collect();
            for (i, r) in uploads {
                got[i] = Some(r);
            }
            let mut first = None;
            for (i, (id, up)) in ids.iter().zip(got).enumerate() {
                let r = match (id, up) {
                    (Some(_), Some(Ok(up))) => self.commit_uploaded(&names[i], &data[i], &up),
                    (Some(_), Some(Err(e))) => Err(e),
                    (Some(_), None) => self.push(&names[i]),
                    (None, Some(Ok(_))) => {
                        self.delete_unnamed(&data[i]);
                        Ok(())
                    }
                    (None, _) => Ok(()),
                };
                let r = match id {
                    Some(_) => self.settle_job(&names[i], &data[i], r),
                    None => r,
                };
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
            return first.map_or(Ok(()), Err);
        }
        let (work, queue) = std::sync::mpsc::channel::<(usize, Commit)>();
        let queue = Mutex::new(queue);
        let out: Mutex<Vec<(usize, Result<()>)>> = Mutex::new(Vec::new());
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        // The calling thread's fault plan (tests) reaches the commits' file
        // operations too.
        let plan = io::current_plan();
        std::thread::scope(|s| {
            for _ in 0..at_once.max(1) {
                s.spawn(|| {
                    let _plan = io::adopt_plan(plan.clone());
                    tracing::dispatcher::with_default(&dispatch, || loop {
                        let next = queue.lock().recv();
                        let Ok((i, task)) = next else { break };
                        let slot = self.rt.block_on(slots.clone().acquire_owned());
                        let r = self.commit_one(&names[i], task);
                        let r = self.settle_job(&names[i], &data[i], r);
                        drop(slot);
                        out.lock().push((i, r));
                    })
                });
            }
            for (i, id) in ids.iter().enumerate() {
                if id.is_some() && parts[i].is_none() {
                    let _ = work.send((i, Commit::Push));
                }
            }
            let mut seen = vec![false; ids.len()];
            for (i, r) in uploads {
                seen[i] = true;
                if ids[i].is_none() {
                    // Skipped (replaced or removed meanwhile): nothing
                    // names its upload (best effort; `gc` collects it
                    // otherwise).
                    if r.is_ok() {
                        self.delete_unnamed(&data[i]);
                    }
                    continue;
                }
                let task = match r {
                    Ok(up) => Commit::Uploaded(data[i].clone(), up),
                    // The staged pair stays: the next flush uploads it again.
                    Err(e) => Commit::Failed(e),
                };
                let _ = work.send((i, task));
            }
            // Uploads that never reported (their thread failed): pushed.
            for (i, id) in ids.iter().enumerate() {
                if id.is_some() && parts[i].is_some() && !seen[i] {
                    let _ = work.send((i, Commit::Push));
                }
            }
            drop(work);
        });
        let mut out = out.into_inner();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter()
            .map(|(_, r)| r)
            .find(|r| r.is_err())
            .unwrap_or(Ok(()))
    }

    /// Notes the published jobs as staged writes (committed by `push` or
    /// `commit_uploaded`, or by the next `sync`).
    fn note_staged(&self, names: &[EntryName], ids: &[Option<Published>]) {
        let mut staged = self.staged.lock();
        for (n, id) in names.iter().zip(ids) {
            if id.is_some() {
                staged.insert(n.clone());
            }
        }
    }

    /// Completes a removal promised by a staged removal: the tombstone over
    /// its base (a tombstone already there counts as done), then the pair.
    fn remove_staged(&self, cache: &LocalDir, name: &EntryName, staged: &Staged) -> Result<()> {
        if let Some(base) = staged.base() {
            self.commit_tombstone(name, &base, || {
                // Another writer's value stands: the removal lost.
                let _ = cache.remove_if(name, |m| m.is_some_and(is_removal));
                self.staged.lock().remove(name);
                self.lost.lock().push(name.clone());
            })?;
        }
        cache.remove_if(name, |m| m.is_some_and(is_removal))?;
        self.staged.lock().remove(name);
        Ok(())
    }

    /// Commits the tombstone of `name` over `base` (a tombstone already
    /// there counts as done). If another writer's commit won, `lost` runs,
    /// the key is read again and the [`Error::Conflict`] returned.
    fn commit_tombstone(
        &self,
        name: &EntryName,
        base: &UpdateVersion,
        lost: impl FnOnce(),
    ) -> Result<()> {
        let r = self.rt.block_on(protocol::commit(
            &self.loc,
            name.as_str(),
            Some(base),
            Vec::new(),
        ));
        match r {
            Ok(v) => {
                self.view.lock().insert(name.clone(), Seen::Removed(v));
                Ok(())
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                lost();
                let _ = self.reload(name);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

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

    fn url_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rel}", self.loc.url.trim_end_matches('/')))
    }

    /// Where a window of `name` is read from: the cache directory when it
    /// holds the entry's current data (or a staged write this handle
    /// reads), else the data object of the metadata this handle knows.
    pub(crate) fn window_plan(&self, name: &EntryName) -> Result<WindowPlan> {
        let cached = self.cached_meta(name);
        if cached.as_ref().is_some_and(|m| self.visible(m)) {
            if cached.as_ref().is_some_and(is_removal) {
                return Err(self.not_found(name));
            }
            return Ok(WindowPlan::Local);
        }
        let remote = self.remote_meta(name)?;
        if cached.as_ref().and_then(|m| self.copy_data(m))
            == Some(remote.ndoffload_remote.data.as_str())
        {
            return Ok(WindowPlan::Local);
        }
        if self.opts.offline {
            return Err(self.not_found(name));
        }
        Ok(WindowPlan::Remote(Box::new(remote)))
    }

    /// Re-reads the metadata object of `name` (its data object was not
    /// found).
    pub(crate) fn reload_entry(&self, name: &EntryName) -> Result<bool> {
        self.reload(name)
    }

    /// Where `name`'s metadata object is, for messages.
    pub(crate) fn entry_meta_path(&self, name: &EntryName) -> PathBuf {
        self.meta_path(name)
    }

    /// The window cache's copy of the data object `remote` names.
    pub(crate) fn window_copy(
        &self,
        name: &EntryName,
        remote: &RemoteMeta,
    ) -> Result<Arc<WindowCopy>> {
        let r = &remote.ndoffload_remote;
        let url = self.loc.url_of(&protocol::rel_path(&self.loc, &r.data));
        self.windows.copy(name, &r.data, url, r.size, || {
            let Some(cache) = self.cache.as_ref().filter(|c| c.is_writer()) else {
                return Ok(None);
            };
            let Some(id) = cache.writer_id() else {
                return Ok(None);
            };
            let root = self
                .cache_path
                .join(crate::store::CRATE_DIR)
                .join("windows");
            std::fs::create_dir_all(&root).ctx("create", &root)?;
            // The folders of handles that are gone.
            if let Ok(list) = std::fs::read_dir(&root) {
                for e in list.flatten() {
                    let other = e.file_name().to_string_lossy().into_owned();
                    if other != id && !cache.is_alive(&other) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            let dir = root.join(id);
            std::fs::create_dir_all(&dir).ctx("create", &dir)?;
            Ok(Some(dir))
        })
    }

    /// Fetches the parts of the byte ranges `want` of `copy`'s data object
    /// the window cache does not hold yet; returns the bytes fetched.
    pub(crate) fn window_fetch(
        &self,
        name: &EntryName,
        copy: &WindowCopy,
        want: &[std::ops::Range<u64>],
    ) -> Result<u64> {
        // One fetch into the copy at a time: no byte held (and perhaps
        // shown by a view) is written again.
        let _one = copy.fetching.lock();
        let missing = copy.missing(want);
        if missing.requests.is_empty() {
            return Ok(0);
        }
        let total = missing.requests.iter().map(|r| r.end - r.start).sum();
        let progress = transfer::Progress::start(name.as_str(), "window", total);
        let src = protocol::rel_path(&self.loc, &copy.data);
        let got = self
            .rt
            .block_on(transfer::fetch_ranges(
                self.loc.store.clone(),
                &src,
                &missing,
                copy.file.clone(),
                &copy.path,
                self.opts.transfer,
                &progress,
            ))
            .map_err(|e| {
                upload_err(
                    &self.loc,
                    "read a window of",
                    name.as_str(),
                    copy.url.clone(),
                    e,
                )
            })?;
        copy.note_fetched(&missing.writes);
        self.counters.bytes_down.fetch_add(got, Ordering::Relaxed);
        Ok(got)
    }

    /// Runs a garbage-collection pass with `grace` (see
    /// [`DiskBackedStore::gc`](crate::DiskBackedStore::gc)).
    pub(crate) fn gc(&self, grace: Option<Duration>) -> Result<super::GcReport> {
        self.check_online()?;
        let grace = grace.unwrap_or(self.opts.grace);
        self.rt.block_on(super::gc::run(&self.loc, grace))
    }
}

/// The remote metadata object a cached pair's metadata stands for: its
/// fields without the local ones.
fn meta_object(meta: &Meta) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("schema_version".into(), Value::from(1));
    o.insert(
        "lazy_disk_cache_class".into(),
        Value::from(meta.class.clone()),
    );
    o.insert(
        "shape".into(),
        serde_json::to_value(meta.shape.clone().unwrap_or_default()).unwrap_or(Value::Null),
    );
    o.insert(
        "dtype".into(),
        Value::from(meta.dtype.clone().unwrap_or_default()),
    );
    o.insert(
        "purge_disk_on_gc".into(),
        Value::from(meta.purge.unwrap_or(false)),
    );
    o.insert(
        "automatic_offloading".into(),
        Value::from(meta.automatic.unwrap_or(false)),
    );
    o.insert(
        "enable_caching".into(),
        Value::from(meta.caching.unwrap_or(true)),
    );
    if !meta.attrs.is_empty() {
        o.insert(ATTRS_FIELD.into(), Value::Object(meta.attrs.clone()));
    }
    if let Some(r) = &meta.remote {
        o.insert(REMOTE_FIELD.into(), r.clone());
    }
    Value::Object(o)
}

impl Storage for ObjectBackend {
    fn location(&self) -> &FsPath {
        &self.url
    }

    fn dir(&self) -> &FsPath {
        &self.cache_path
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn data_path(&self, name: &EntryName) -> PathBuf {
        match &self.cache {
            Some(c) if c.is_pair(name) => c.data_path(name),
            _ => self.url_path(&format!("{}/{}.npy", protocol::DATA_DIR, name.as_str())),
        }
    }

    fn meta_path(&self, name: &EntryName) -> PathBuf {
        self.url_path(&format!(
            "{}/{}{}",
            protocol::META_DIR,
            name.as_str(),
            protocol::META_SUFFIX
        ))
    }

    fn lock(&self, mode: LockMode) -> Result<Box<dyn Lease>> {
        match (&self.cache, mode) {
            (Some(c), _) => c.lock(mode),
            (None, LockMode::Reader) => Ok(Box::new(NoLease)),
            (None, _) => Err(Error::ReadOnly {
                path: self.cache_path.clone(),
            }),
        }
    }

    fn list(&self) -> Result<Listing> {
        self.refresh()?;
        let mut entries = BTreeMap::new();
        for (n, s) in self.view.lock().iter() {
            if !matches!(s, Seen::Removed(_)) {
                entries.insert(n.clone(), Listed::Pair);
            }
        }
        let staged: Vec<EntryName> = self.staged.lock().iter().cloned().collect();
        for n in staged {
            match self.staged_value(&n) {
                Some(false) => {
                    entries.remove(&n);
                }
                Some(true) => {
                    entries.insert(n, Listed::Pair);
                }
                None => {}
            }
        }
        let pending = match &self.cache {
            Some(c) if c.is_writer() => c.list()?.pending,
            _ => Vec::new(),
        };
        Ok(Listing { entries, pending })
    }

    fn recover(&self, pending: &[String]) -> Result<Recovered> {
        match &self.cache {
            Some(c) => c.recover(pending),
            None => Ok(Recovered::default()),
        }
    }

    fn read_meta(&self, name: &EntryName) -> Result<Meta> {
        if let Some(m) = self.cached_meta(name).filter(|m| self.visible(m)) {
            if is_removal(&m) {
                return Err(self.not_found(name));
            }
            return Ok(m);
        }
        let remote = self.remote_meta(name)?;
        Meta::parse(&remote.to_bytes(), &self.meta_path(name))
    }

    fn read_header(&self, name: &EntryName) -> Result<NpyInfo> {
        match self.copy_of(name)? {
            Copy::Cache => self.cache()?.read_header(name),
            Copy::Private(path, _) => {
                let f = io::open_regular(&path, io::Access::Read)?;
                read_header_of(&f, &path)
            }
        }
    }

    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File> {
        if access == io::Access::Read {
            // The file of the version this handle reads, whatever another
            // process on the cache directory publishes meanwhile.
            let c = self.read_checked(name)?;
            return match c.file {
                Some((f, _)) => Ok(f),
                None => Err(Error::NoFile {
                    path: self.data_path(name),
                    reason: "the cached copy disagrees with the entry's metadata",
                }),
            };
        }
        match self.copy_of(name)? {
            Copy::Cache => self.cache()?.open_data(name, access),
            Copy::Private(path, _) => io::open_regular(&path, io::Access::Read),
        }
    }

    fn stat_data(&self, name: &EntryName) -> Option<Found> {
        self.cache.as_ref()?.stat_data(name)
    }

    fn exists(&self, name: &EntryName) -> bool {
        // As `list` and `read_meta` see it: a staged write this handle reads
        // decides; another live process's is not there yet.
        if self.staged.lock().contains(name) {
            if let Some(there) = self.staged_value(name) {
                return there;
            }
        }
        matches!(
            self.view.lock().get(name),
            Some(Seen::Listed(_) | Seen::Live(..))
        )
    }

    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>> {
        self.check_online()?;
        let cache = self.cache()?;
        let small = self.start_small_put(&jobs, sync);
        // A durable publish is made durable by its commit: its pairs are
        // not synced (and say so), unless the boot cannot be told. A spill
        // is synced as on any store (it is committed by a later flush).
        let mut unsynced = match sync {
            SyncMode::Spill => None,
            _ => boot::current(&self.cache_path),
        };
        // A pair published without syncing never replaces a synced staged
        // write or removal (a promise to the next flush, which a power cut
        // would take with it): the keys' push locks are held from this
        // look to the end of the local publish (a failed commit syncs its
        // staged write under its push lock).
        let mut keys: Vec<&EntryName> = jobs.iter().map(|j| j.name).collect();
        keys.sort();
        keys.dedup();
        // Holding a lock file per key is bounded: a larger batch is synced.
        if keys.len() > UNSYNCED_MAX_KEYS {
            unsynced = None;
        }
        let mut held = Vec::new();
        if unsynced.is_some() {
            for k in &keys {
                held.push(cache.push_lock(k)?);
            }
            let promised = |k: &&EntryName| {
                cache
                    .read_meta(k)
                    .ok()
                    .and_then(|m| Staged::of(&m))
                    .is_some_and(|s| s.unsynced.is_none())
            };
            if keys.iter().any(promised) {
                unsynced = None;
            }
        }
        let local_sync = match unsynced {
            Some(_) => SyncMode::Unsynced,
            None => sync,
        };
        let mut names = Vec::with_capacity(jobs.len());
        let mut data = Vec::with_capacity(jobs.len());
        let mut images = Vec::with_capacity(jobs.len());
        let jobs: Vec<PairJob<'_>> = jobs
            .into_iter()
            .map(|mut job| {
                let base = self.view.lock().get(job.name).map(|s| s.version().clone());
                let staged = Staged {
                    data: match &small {
                        Some(p) => p.data.clone(),
                        None => protocol::new_data_rel(job.name, &protocol::unique_id()),
                    },
                    base: base.is_some(),
                    e_tag: base.as_ref().and_then(|b| b.e_tag.clone()),
                    version: base.and_then(|b| b.version),
                    remove: false,
                    writer: cache.writer_id().map(str::to_owned),
                    unsynced: unsynced.clone(),
                };
                let mut extra = Attrs::new();
                extra.insert(
                    STAGED_FIELD.to_string(),
                    serde_json::to_value(&staged).unwrap_or(Value::Null),
                );
                job.extra = Some(Arc::new(extra));
                // A spill is uploaded by the next flush, from its file.
                images.push(job.image.take().filter(|_| sync != SyncMode::Spill));
                names.push(job.name.clone());
                data.push(staged.data);
                job
            })
            .collect();
        let batch = jobs.len() > 1;
        let t = self.opts.transfer;
        // The data objects held in memory are uploaded while the pairs are
        // published locally; the metadata objects (the commits) only once
        // both are done, each entry as soon as its upload is.
        let parts: Vec<Option<(&[u8], &[u8])>> = images
            .iter()
            .map(|i| i.as_ref().map(|i| (&i.header[..], i.body.bytes())))
            .collect();
        if parts.iter().all(Option::is_none) {
            let ids = cache.publish(jobs, local_sync)?;
            self.note_staged(&names, &ids);
            drop(held);
            if sync == SyncMode::Spill {
                return Ok(ids);
            }
            let mut first = None;
            for (i, (n, id)) in names.iter().zip(&ids).enumerate() {
                if id.is_some() {
                    if let Err(e) = self.settle_job(n, &data[i], self.push(n)) {
                        first.get_or_insert(e);
                    }
                }
            }
            return first.map_or(Ok(ids), Err);
        }
        if let Some(small) = small {
            return self.publish_one_small(cache, jobs, local_sync, held, &names[0], small);
        }
        let (slots, at_once) = if batch {
            let n = self.opts.batch_concurrency.max(1);
            (Arc::new(tokio::sync::Semaphore::new(n)), n)
        } else {
            (t.slots(), 1)
        };
        let cancel = AtomicBool::new(false);
        // The caller's `tracing` subscriber sees the progress.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let (done, uploads) = std::sync::mpsc::channel();
        let (ids, committed) = std::thread::scope(|s| {
            let up = s.spawn(|| {
                tracing::dispatcher::with_default(&dispatch, || {
                    self.upload_images(&names, &data, &parts, &slots, at_once, &cancel, done)
                })
            });
            let published = cache.publish(jobs, local_sync);
            drop(held);
            let ids = match published {
                Ok(ids) => ids,
                Err(e) => {
                    // Its uploads are left to `gc` (a pair it published
                    // before the error may name one: the next flush pushes
                    // that pair).
                    cancel.store(true, Ordering::Release);
                    let _ = up.join();
                    return (Err(e), Ok(()));
                }
            };
            self.note_staged(&names, &ids);
            let committed =
                self.commit_batch(&names, &data, &parts, &ids, uploads, &slots, at_once);
            let _ = up.join();
            (Ok(ids), committed)
        });
        let ids = ids?;
        committed?;
        Ok(ids)
    }

    fn remove(&self, name: &EntryName) -> Result<()> {
        self.check_online()?;
        let cache = self.cache()?;
        let _lock = cache.push_lock(name)?;
        let base = match self.view.lock().get(name) {
            Some(Seen::Live(_, v) | Seen::Listed(v)) => Some(v.clone()),
            _ => None,
        };
        // A staged write is promised to the next flush: it becomes a
        // staged removal (durably) before the tombstone, so that neither a
        // failure nor a power cut brings back the value before it.
        if let (Some(b), Some(mut st)) =
            (&base, self.cached_meta(name).as_ref().and_then(Staged::of))
        {
            st.remove = true;
            st.base = true;
            st.e_tag = b.e_tag.clone();
            st.version = b.version.clone();
            let intent = serde_json::to_value(&st).ok();
            cache.replace_fields_if(name, is_staged, &[(STAGED_FIELD, intent)], true)?;
            return self.remove_staged(cache, name, &st);
        }
        // A clean copy goes first, durably (its metadata may still read as
        // staged after a power cut: the rewrite after its commit is not
        // synced); a power cut before the tombstone leaves the committed
        // value, as a removal that did not happen.
        cache.remove(name)?;
        if let Some(base) = base {
            self.commit_tombstone(name, &base, || {})?;
        }
        cache.remove(name)?;
        self.staged.lock().remove(name);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if let Some(c) = &self.cache {
            if c.is_writer() {
                c.sync()?;
            }
        }
        let staged: Vec<EntryName> = self.staged.lock().iter().cloned().collect();
        let mut first = None;
        for n in staged {
            if let Err(e) = self.push(&n) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn has_unsynced(&self) -> bool {
        !self.staged.lock().is_empty()
    }

    fn set_attrs(&self, name: &EntryName, attrs: &Attrs) -> Result<()> {
        self.check_online()?;
        let cache = self.cache()?;
        let _lock = cache.push_lock(name)?;
        let value = (!attrs.is_empty()).then(|| Value::Object(attrs.clone()));
        if cache.replace_fields_if(name, is_staged, &[(ATTRS_FIELD, value.clone())], true)? {
            // Committed with the write.
            return Ok(());
        }
        let mut meta = self.remote_meta(name)?;
        let base = match self.view.lock().get(name) {
            Some(Seen::Live(_, v)) => v.clone(),
            _ => return Err(self.not_found(name)),
        };
        meta.ndoffload_attrs = (!attrs.is_empty()).then(|| attrs.clone());
        let r = self.rt.block_on(protocol::commit(
            &self.loc,
            name.as_str(),
            Some(&base),
            meta.to_bytes(),
        ));
        match r {
            Ok(v) => {
                let data = meta.ndoffload_remote.data.clone();
                self.view
                    .lock()
                    .insert(name.clone(), Seen::Live(Box::new(meta), v));
                // The cached copy's attributes too (best effort: a copy
                // without them is still a copy of the data object).
                let _ = cache.replace_fields_if(
                    name,
                    |m| !is_staged(m) && data_of(m) == Some(data.as_str()),
                    &[(ATTRS_FIELD, value)],
                    false,
                );
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::Conflict { .. }) {
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    let _ = self.reload(name);
                }
                Err(e)
            }
        }
    }

    fn is_pair(&self, name: &EntryName) -> bool {
        // Another node may have committed it since the store was listed.
        self.exists(name) || self.reload(name).unwrap_or(false)
    }

    fn read_checked(&self, name: &EntryName) -> Result<Checked> {
        for _ in 0..8 {
            match self.copy_of(name)? {
                Copy::Cache => {
                    let c = self.cache()?.read_checked(name)?;
                    // A copy of the version this handle knows, or a staged
                    // write; else the cache changed meanwhile: again.
                    let current = self.visible(&c.meta)
                        || self.view.lock().get(name).is_some_and(|s| match s {
                            Seen::Live(m, _) => {
                                self.copy_data(&c.meta) == Some(m.ndoffload_remote.data.as_str())
                            }
                            _ => false,
                        });
                    if current {
                        return Ok(c);
                    }
                }
                Copy::Private(path, meta) => {
                    let Ok(f) = io::open_regular(&path, io::Access::Read) else {
                        continue;
                    };
                    let info = read_header_of(&f, &path).ok();
                    let id = FileId::of_file(&f, &path).ok();
                    let file = info.filter(|i| {
                        meta.dtype.as_ref().is_none_or(|d| *d == i.descr)
                            && meta.shape.as_ref().is_none_or(|s| *s == i.shape)
                    });
                    return Ok(Checked {
                        meta: *meta,
                        file: file.map(|i| (f, i)),
                        version: None,
                        id,
                    });
                }
            }
        }
        Err(Error::Mismatch {
            path: self.data_path(name),
            field: "data object",
            found: "a cached copy replaced while it was read".into(),
            expected: "the entry's current data object".into(),
            other: self.meta_path(name),
        })
    }

    fn is_current(&self, name: &EntryName, id: FileId, token: Option<&str>) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        if !cache.is_current(name, id, token) {
            return false;
        }
        let Some(m) = self.cached_meta(name) else {
            return false;
        };
        self.visible(&m)
            || self.view.lock().get(name).is_some_and(|s| match s {
                Seen::Live(r, _) => self.copy_data(&m) == Some(r.ndoffload_remote.data.as_str()),
                Seen::Listed(_) | Seen::Removed(_) => false,
            })
    }

    fn writers(&self) -> Result<Vec<WriterInfo>> {
        match &self.cache {
            Some(c) => c.writers(),
            None => Ok(Vec::new()),
        }
    }

    fn take_lost(&self) -> Vec<EntryName> {
        std::mem::take(&mut *self.lost.lock())
    }

    fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<dyn Lease>>> {
        // The cache directory's lock orders the processes of this node; a
        // lease is always returned, so that `get_or_compute` commits its
        // value for other nodes to find (a node that loses the commit race
        // returns the winner's value).
        let lock = match &self.cache {
            Some(c) => c.compute_lock(name, timeout)?,
            None => None,
        };
        Ok(Some(lock.unwrap_or_else(|| Box::new(NoLease))))
    }

    fn holds_copies(&self) -> bool {
        true
    }

    fn drop_copy(&self, name: &EntryName) -> Result<bool> {
        let Some(cache) = self.cache.as_ref().filter(|c| c.is_writer()) else {
            return Ok(false);
        };
        if self.opts.offline {
            // A copy dropped could not be downloaded again.
            return Ok(false);
        }
        let dropped = cache.remove_if(name, |m| m.is_some_and(|m| !is_staged(m)))?;
        if dropped {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(dropped)
    }

    fn staged(&self) -> Vec<EntryName> {
        self.staged.lock().iter().cloned().collect()
    }

    fn windows_held(&self) -> Vec<(EntryName, u64)> {
        self.windows.held()
    }

    fn window_bytes(&self, name: &EntryName) -> Option<u64> {
        self.windows.bytes_of(name)
    }

    fn drop_window(&self, name: &EntryName) -> Result<Option<u64>> {
        let dropped = self.windows.drop_unused(name);
        if dropped.is_some() {
            self.counters
                .window_evictions
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(dropped)
    }

    fn remote_stats(&self) -> Option<RemoteStats> {
        let c = &self.counters;
        Some(RemoteStats {
            uploads: c.uploads.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            pending: self.staged.lock().len() as u64,
            bytes_reused: c.bytes_reused.load(Ordering::Relaxed),
            window_bytes: self.windows.held().iter().map(|(_, b)| b).sum(),
            window_evictions: c.window_evictions.load(Ordering::Relaxed),
        })
    }
}
