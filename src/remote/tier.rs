//! The object store as the durable tier of a [`DiskBackedStore`]:
//! [`StoreBuilder::remote`](crate::StoreBuilder::remote) opens the store's directory as the local cache
//! of a remote prefix. The store keeps its API, its memory budget (RAM, the
//! first tier) and its entries; this module implements the storage seam
//! over a [`RemoteStore`] (the local cache, the second tier, and the
//! commit protocol to the object store, the durable home).
//!
//! | store operation | local cache | object store |
//! |---|---|---|
//! | durable publish (`insert_durable`, `insert_batch`, `flush`) | data staged in `objects/`, fsynced, pending record | upload, conditional PUT of the metadata object |
//! | spill (memory budget) | data staged in `objects/`, fsynced | at the next `flush` |
//! | read of an entry not in RAM | mapped from `objects/` (downloaded first if missing) | ranged GETs |
//! | `remove` | staged copy dropped | tombstone (conditional PUT) |
//! | `refresh` | | re-lists the metadata objects |

use std::fs::File;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::io::{self, FileId, Found};
use crate::store::meta::{Attrs, Meta};
use crate::store::storage::{
    read_header_of, Backend, Checked, Lease, Listed, Listing, LockMode, PairJob, Published,
    Recovered, Storage, SyncMode, WriterInfo,
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
        let t = Tier::open(&url, store.clone(), dir, options.clone(), !read_only)?;
        Ok(Arc::new(t) as Arc<dyn Storage>)
    };
    Backend {
        describe,
        open: Arc::new(open),
    }
}

/// The storage seam over a [`RemoteStore`].
pub(crate) struct Tier {
    rs: RemoteStore,
    cache: PathBuf,
    /// The store's URL, as a path: where messages say the entries are
    /// (`Error::KeyNotFound`, `Error::ReadOnly`).
    url: PathBuf,
    objects: io::Dir,
    /// Entries whose commit lost a race, for [`Storage::take_lost`].
    lost: Mutex<Vec<EntryName>>,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("url", &self.rs.loc.url)
            .field("cache", &self.cache)
            .finish()
    }
}

/// The cache directory's lock is held by the [`RemoteStore`] itself.
#[derive(Debug)]
struct Held;

impl Lease for Held {}

impl Tier {
    fn open(
        url: &str,
        store: Option<Arc<dyn object_store::ObjectStore>>,
        cache: &FsPath,
        options: RemoteOptions,
        writable: bool,
    ) -> Result<Tier> {
        let rs = RemoteStore::open_on(url, store, cache, options, writable)?;
        let objects = io::Dir::open(&rs.objects)?;
        Ok(Tier {
            url: PathBuf::from(&rs.loc.url),
            rs,
            cache: cache.to_path_buf(),
            objects,
            lost: Mutex::new(Vec::new()),
        })
    }

    /// The local file holding `name`'s current value, if this directory
    /// has it without a download: a staged write, or the cached copy of the
    /// committed data object this handle last saw.
    fn local_file(&self, name: &EntryName) -> Option<String> {
        let st = self.rs.state.lock();
        if let Some(p) = st.pending.get(name.as_str()) {
            return Some(p.file.clone());
        }
        match st.view.get(name.as_str()) {
            Some(Seen::Live(m, _)) => {
                protocol::data_file_name(&m.ndoffload_remote.data, name.as_str())
                    .filter(|f| st.cache.contains_key(f))
            }
            _ => None,
        }
    }

    /// The local file holding `name`'s current value, downloaded if needed.
    fn file_of(&self, name: &EntryName) -> Result<String> {
        if let Some(f) = self.local_file(name) {
            if self.objects.stat(&f).is_some_and(|s| s.is_file()) {
                return Ok(f);
            }
        }
        let mut retried = false;
        loop {
            let meta = self.rs.meta_of(name.as_str())?;
            match self.rs.fetch(name.as_str(), &meta) {
                Ok(file) => {
                    self.rs.evict_except(&file);
                    return Ok(file);
                }
                Err(e) if e.is_not_found() && !retried => {
                    // The data object was collected: the entry changed.
                    retried = true;
                    self.rs.reload(name.as_str())?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one job's data into `objects/` and registers it as a staged
    /// write, unless the entry may no longer publish (`None`).
    ///
    /// A spill's file is `fsync`ed here; a durable write's by its record,
    /// while its upload runs ([`commit`](Self::commit)).
    fn stage(&self, job: PairJob<'_>, spill: bool) -> Result<Option<(Pending, FileId)>> {
        let unique = protocol::unique_id();
        let file = format!("{}.{unique}.npy", job.name.as_str());
        let target = self.objects.join(&file);
        let mut tmp = io::TempFile::create_in(&self.objects, "stage", false)?;
        (job.write_npy)(tmp.writer(), &target)?;
        if spill {
            tmp.flush_and_sync()?;
        } else {
            tmp.flush_and_close()?;
        }
        let name = job.name.as_str().to_string();
        let mut st = self.rs.state.lock();
        {
            let _g = io::OWNERSHIP.lock();
            if !job.publish.load(Ordering::Acquire)
                || job.version < job.published.load(Ordering::Acquire)
            {
                return Ok(None); // dropping `tmp` removes it
            }
            tmp.rename_into(&file)?;
            job.published.fetch_max(job.version, Ordering::AcqRel);
        }
        let found = self.objects.stat(&file).filter(|f| f.is_file());
        let Some(found) = found else {
            return Err(Error::NoFile {
                path: target,
                reason: "a staged file vanished from the cache directory",
            });
        };
        let (id, size) = (found.id, found.len);
        let (base, superseded) = self.rs.register_staged(&mut st, &name, &file, size);
        let p = Pending {
            data: protocol::new_data_rel(job.name, &unique),
            name: name.clone(),
            file,
            shape: job.shape,
            dtype: job.dtype,
            base,
            automatic: job.flags.automatic_offloading,
            caching: job.flags.caching,
            attrs: job.attrs.map(|a| (*a).clone()),
            recorded: false,
            superseded,
            remove: false,
        };
        st.pending.insert(name, p.clone());
        Ok(Some((p, id)))
    }

    /// Records and commits staged writes; a lost race makes the entry read
    /// as the winner's value.
    fn commit(&self, staged: Vec<Pending>) -> Result<()> {
        let mut first = None;
        for p in staged {
            let name = p.name.clone();
            let r = self.record_and_push(p);
            if let Err(e) = r {
                if matches!(e, Error::Conflict { .. }) {
                    // Read the winner's version: the entry reads as it.
                    let _ = self.rs.reload(&name);
                    if let Ok(n) = EntryName::new(&name) {
                        self.lost.lock().push(n);
                    }
                }
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Makes a staged write durable locally (its record) while its data
    /// object uploads, then commits it: the local `fsync`s overlap the
    /// transfer. After a failure of either, the write stays staged when
    /// its record was written.
    fn record_and_push(&self, mut p: Pending) -> Result<()> {
        let (recorded, uploaded) = if p.recorded {
            (Ok(()), self.rs.upload(&p))
        } else {
            let mut q = p.clone();
            let plan = io::current_plan();
            std::thread::scope(|s| {
                let rec = s.spawn(|| {
                    let _plan = io::adopt_plan(plan);
                    self.rs.record(&mut q)
                });
                let up = self.rs.upload(&p);
                let rec = rec.join().unwrap_or_else(|_| {
                    Err(Error::InvalidInput {
                        path: self.objects.join(&p.file),
                        reason: "recording the staged write panicked".into(),
                    })
                });
                (rec, up)
            })
        };
        recorded?;
        p.recorded = true;
        p.superseded = None;
        if let Some(q) = self.rs.state.lock().pending.get_mut(&p.name) {
            if q.file == p.file {
                q.recorded = true;
                q.superseded = None;
            }
        }
        let (size, crc, started) = uploaded?;
        self.rs.commit_uploaded(p, size, crc, started)
    }

    fn url_path(&self, rel: &str) -> PathBuf {
        PathBuf::from(format!("{}/{rel}", self.rs.loc.url.trim_end_matches('/')))
    }
}

impl Storage for Tier {
    fn location(&self) -> &FsPath {
        &self.url
    }

    fn dir(&self) -> &FsPath {
        &self.cache
    }

    fn data_path(&self, name: &EntryName) -> PathBuf {
        match self.local_file(name) {
            Some(f) => self.objects.join(&f),
            None => self.url_path(&format!("{}/{}.npy", protocol::DATA_DIR, name.as_str())),
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

    fn lock(&self, _mode: LockMode) -> Result<Box<dyn Lease>> {
        Ok(Box::new(Held))
    }

    fn list(&self) -> Result<Listing> {
        self.rs.refresh()?;
        let mut entries = std::collections::BTreeMap::new();
        for k in self.rs.keys() {
            if let Ok(n) = EntryName::new(&k) {
                entries.insert(n, Listed::Pair);
            }
        }
        Ok(Listing {
            entries,
            pending: Vec::new(),
        })
    }

    fn recover(&self, _pending: &[String]) -> Result<Recovered> {
        // Staged writes of an earlier handle were loaded at open; `flush`
        // commits them.
        Ok(Recovered::default())
    }

    fn read_meta(&self, name: &EntryName) -> Result<Meta> {
        let staged = self.rs.state.lock().pending.get(name.as_str()).cloned();
        let (shape, dtype, automatic, caching, attrs) = match staged {
            Some(p) => (p.shape, p.dtype, p.automatic, p.caching, p.attrs),
            None => {
                let m = self.rs.meta_of(name.as_str())?;
                (
                    m.shape,
                    m.dtype,
                    m.automatic_offloading,
                    m.enable_caching,
                    m.ndoffload_attrs,
                )
            }
        };
        Ok(Meta {
            class: "DiskBackedNDArray".to_string(),
            shape: Some(shape),
            dtype: Some(dtype),
            purge: Some(false),
            automatic: Some(automatic),
            caching: Some(caching),
            commit: None,
            version: None,
            // The disk budget of a remote store is the cache's
            // (`RemoteOptions::disk_budget`): no entry is deleted remotely.
            recomputable: None,
            attrs: attrs.unwrap_or_default(),
        })
    }

    fn read_header(&self, name: &EntryName) -> Result<NpyInfo> {
        let file = self.file_of(name)?;
        let f = self.objects.open_regular(&file, io::Access::Read)?;
        read_header_of(&f, &self.objects.join(&file))
    }

    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File> {
        let file = self.file_of(name)?;
        self.objects.open_regular(&file, access)
    }

    fn stat_data(&self, name: &EntryName) -> Option<Found> {
        self.local_file(name).and_then(|f| self.objects.stat(&f))
    }

    fn exists(&self, name: &EntryName) -> bool {
        self.rs.contains(name.as_str())
    }

    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut staged = Vec::new();
        for job in jobs {
            match self.stage(job, sync == SyncMode::Spill)? {
                Some((p, id)) => {
                    staged.push(p);
                    ids.push(Some(Published { id, token: None }));
                }
                None => ids.push(None),
            }
        }
        if sync != SyncMode::Spill {
            self.commit(staged)?;
        }
        self.rs.evict();
        Ok(ids)
    }

    fn remove(&self, name: &EntryName) -> Result<()> {
        self.rs.remove(name.as_str()).map(|_| ())
    }

    fn sync(&self) -> Result<()> {
        let removed = self.rs.flush_removals();
        let staged: Vec<Pending> = self.rs.state.lock().pending.values().cloned().collect();
        self.commit(staged).and(removed)
    }

    fn has_unsynced(&self) -> bool {
        let st = self.rs.state.lock();
        !st.pending.is_empty() || !st.removals.is_empty()
    }

    fn set_attrs(&self, name: &EntryName, attrs: &Attrs) -> Result<()> {
        let attrs = (!attrs.is_empty()).then(|| attrs.clone());
        {
            let mut st = self.rs.state.lock();
            if let Some(p) = st.pending.get_mut(name.as_str()) {
                p.attrs = attrs;
                let mut p = p.clone();
                drop(st);
                if p.recorded {
                    p.recorded = false;
                    self.rs.record(&mut p)?;
                }
                return Ok(());
            }
        }
        let meta = self.rs.meta_of(name.as_str())?;
        let base = match self.rs.state.lock().view.get(name.as_str()) {
            Some(Seen::Live(_, v)) => v.clone(),
            _ => return Err(self.rs.not_found(name.as_str())),
        };
        let mut meta = meta;
        meta.ndoffload_attrs = attrs;
        let r = self.rs.rt.block_on(protocol::commit(
            &self.rs.loc,
            name.as_str(),
            Some(&base),
            meta.to_bytes(),
        ));
        match r {
            Ok(v) => {
                let mut st = self.rs.state.lock();
                self.rs.save_seen(&mut st, name.as_str(), &meta, &v);
                st.view
                    .insert(name.as_str().to_string(), Seen::Live(Box::new(meta), v));
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::Conflict { .. }) {
                    self.rs.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                    let _ = self.rs.reload(name.as_str());
                }
                Err(e)
            }
        }
    }

    fn is_pair(&self, name: &EntryName) -> bool {
        // Another node may have committed it since the store was listed.
        self.rs.contains(name.as_str()) || self.rs.reload(name.as_str()).unwrap_or(false)
    }

    fn read_checked(&self, name: &EntryName) -> Result<Checked> {
        let meta = self.read_meta(name)?;
        let Ok(file) = self.file_of(name) else {
            return Ok(Checked {
                meta,
                file: None,
                version: None,
                id: None,
            });
        };
        let Ok(f) = self.objects.open_regular(&file, io::Access::Read) else {
            return Ok(Checked {
                meta,
                file: None,
                version: None,
                id: None,
            });
        };
        let Ok(info) = read_header_of(&f, &self.objects.join(&file)) else {
            return Ok(Checked {
                meta,
                file: None,
                version: None,
                id: None,
            });
        };
        let agrees = meta.dtype.as_ref().is_none_or(|d| *d == info.descr)
            && meta.shape.as_ref().is_none_or(|s| *s == info.shape);
        Ok(Checked {
            meta,
            file: agrees.then_some((f, info)),
            version: None,
            id: None,
        })
    }

    fn writers(&self) -> Result<Vec<WriterInfo>> {
        Ok(Vec::new())
    }

    fn take_lost(&self) -> Vec<EntryName> {
        std::mem::take(&mut *self.lost.lock())
    }

    fn compute_lock(
        &self,
        _name: &EntryName,
        _timeout: Option<Duration>,
    ) -> Result<Option<Box<dyn Lease>>> {
        // No lock across nodes (one handle per cache directory computes a
        // key once); the lease makes `get_or_compute` commit its value, so
        // other nodes find it, and a node that loses the commit race
        // returns the winner's value.
        Ok(Some(Box::new(Held)))
    }
}
