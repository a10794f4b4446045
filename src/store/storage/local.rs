//! [`LocalDir`]: a store in a local directory, held open. Every operation
//! is relative to the directory's descriptor (`io::Dir`); publishing,
//! removing and recovering pairs follow the protocol of `pair.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::procs::{self, Procs, WriterInfo, CRATE_DIR};
use super::{
    pair, Checked, Lease, Listed, Listing, LockMode, PairJob, Published, Recovered, Storage,
    SyncMode,
};
use crate::error::{Error, IoContext, Result};
use crate::io::{self, FileId, Found, Kind};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::store::meta::Meta;

/// Name of the store's lock file: every writable open holds a `flock` on
/// it, shared (several writers) or exclusive
/// ([`StoreBuilder::exclusive`](crate::StoreBuilder::exclusive)).
pub const LOCK_FILE: &str = ".ndoffload.lock";

/// A store's directory, held open.
#[derive(Debug)]
pub(crate) struct LocalDir {
    dir: io::Dir,
    /// This writer's registration and the per-key locks (writable opens).
    procs: OnceLock<Arc<Procs>>,
    /// The folder of version links, once found (a reader opens it when it
    /// first needs it: a writer may create it after the reader opened).
    versions: OnceLock<io::Dir>,
}

/// A writable open's hold on the store: the store lock file, locked shared
/// (or exclusively), and the writer's registration. Dropping it releases
/// both.
#[derive(Debug)]
struct WriterLease {
    lock: File,
    procs: Arc<Procs>,
}

impl Lease for WriterLease {}

impl Drop for WriterLease {
    fn drop(&mut self) {
        self.procs.release();
        // Unlock explicitly: closing our descriptor would leave the lock held
        // while a child process forked meanwhile still has a copy of it.
        let _ = self.lock.unlock();
    }
}

/// A read-only open holds nothing.
#[derive(Debug)]
struct ReaderLease;

impl Lease for ReaderLease {}

impl LocalDir {
    /// Opens the directory at `path`. The path is resolved once; every
    /// later operation is relative to the directory held open, wherever the
    /// path points afterwards.
    pub(crate) fn open(path: &Path) -> Result<LocalDir> {
        Ok(LocalDir {
            dir: io::Dir::open(path)?,
            procs: OnceLock::new(),
            versions: OnceLock::new(),
        })
    }

    fn procs(&self) -> Option<&Procs> {
        self.procs.get().map(|p| &**p)
    }

    /// This writer's registration id (`None`: a reader).
    pub(crate) fn writer_id(&self) -> Option<&str> {
        self.procs().map(|p| p.id())
    }

    /// Whether the writer registered as `id` is alive (a reader cannot
    /// tell: `true`).
    pub(crate) fn is_alive(&self, id: &str) -> bool {
        self.procs().is_none_or(|p| p.is_alive(id))
    }

    /// Whether this handle registered as a writer.
    pub(crate) fn is_writer(&self) -> bool {
        self.procs.get().is_some()
    }

    /// The push lock of `name` (a writer's; see `Procs::push_lock`).
    pub(crate) fn push_lock(&self, name: &EntryName) -> Result<Option<Box<dyn Lease>>> {
        match self.procs() {
            Some(p) => Ok(Some(Box::new(p.push_lock(name)?))),
            None => Ok(None),
        }
    }

    /// Replaces fields of `name`'s metadata when it satisfies `check` (see
    /// `pair::replace_fields_if`).
    pub(crate) fn replace_fields_if(
        &self,
        name: &EntryName,
        check: impl Fn(&Meta) -> bool,
        set: &[(&str, Option<serde_json::Value>)],
        durable: bool,
    ) -> Result<bool> {
        pair::replace_fields_if(&self.dir, self.procs(), name, check, set, durable)
    }

    /// Removes `name`'s pair when its metadata satisfies `check` (see
    /// `pair::remove_pair_if`).
    pub(crate) fn remove_if(
        &self,
        name: &EntryName,
        check: impl Fn(Option<&Meta>) -> bool,
    ) -> Result<bool> {
        pair::remove_pair_if(&self.dir, self.procs(), name, check)
    }

    /// The folder of version links (`None`: there is none yet, or it is
    /// not a directory: every version then counts as unproven).
    fn versions(&self) -> Option<&io::Dir> {
        if let Some(v) = self.versions.get() {
            return Some(v);
        }
        let own = self.dir.open_subdir(CRATE_DIR, false).ok()??;
        let v = own.open_subdir(procs::VERSIONS, false).ok()??;
        Some(self.versions.get_or_init(|| v))
    }

    /// Whether `file`, opened at `name`'s data file, is the version `meta`
    /// records, as far as that can be told: `Some(true)` proven (its
    /// version link is this file), `Some(false)` not this version (a
    /// publish in flight), `None` no version to check (the metadata has
    /// no token, or the file has no other link: written by numpy,
    /// GSEGUtils, an older version of the crate, or copied without its
    /// links).
    fn check_version(&self, name: &EntryName, meta: &Meta, md: &std::fs::Metadata) -> Option<bool> {
        let token = meta.version.as_deref()?;
        if nlink(md) < 2 {
            // A single link: a foreign file only while `K.npy` still names
            // it (a published file keeps its version link for as long as it
            // is at `K.npy`). Otherwise it was replaced, and its version link
            // removed, after it was opened: read again.
            let at_name = self
                .dir
                .stat(&name.npy_file())
                .is_some_and(|f| f.id == FileId::from_meta(md));
            return if at_name { None } else { Some(false) };
        }
        let Some(versions) = self.versions() else {
            return Some(false);
        };
        Some(pair::is_version(
            versions,
            name,
            token,
            FileId::from_meta(md),
        ))
    }
}

impl Storage for LocalDir {
    fn location(&self) -> &Path {
        self.dir.path()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn data_path(&self, name: &EntryName) -> PathBuf {
        self.dir.join(&name.npy_file())
    }

    fn meta_path(&self, name: &EntryName) -> PathBuf {
        self.dir.join(&name.meta_file())
    }

    fn lock(&self, mode: LockMode) -> Result<Box<dyn Lease>> {
        let exclusive = match mode {
            LockMode::Reader => return Ok(Box::new(ReaderLease)),
            LockMode::Writer => false,
            LockMode::ExclusiveWriter => true,
        };
        let lock_path = self.dir.join(LOCK_FILE);
        let Some(file) = self.dir.open_lock(LOCK_FILE, true)? else {
            return Err(Error::corrupt(&lock_path, "could not be created"));
        };
        let tried = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match tried {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    holder: procs::describe_writers(&self.dir),
                    path: lock_path,
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        let procs = match Procs::register(&self.dir, exclusive) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let _ = file.unlock();
                return Err(e);
            }
        };
        let _ = self.versions.set(procs.versions().clone());
        let _ = self.procs.set(procs.clone());
        Ok(Box::new(WriterLease { lock: file, procs }))
    }

    fn list(&self) -> Result<Listing> {
        // name -> (npy file kind, meta file kind)
        let mut seen: HashMap<String, (Option<Kind>, Option<Kind>)> = HashMap::new();
        let mut pending = Vec::new();
        for (name, kind) in self.dir.list()? {
            if io::is_temp_name(&name) {
                pending.push(name);
                continue;
            }
            if let Some(stem) = name.strip_suffix(".meta.json") {
                seen.entry(stem.to_owned()).or_default().1 = Some(kind);
            } else if let Some(stem) = name.strip_suffix(".npy") {
                seen.entry(stem.to_owned()).or_default().0 = Some(kind);
            }
        }
        let mut entries = BTreeMap::new();
        for (stem, (npy, meta)) in seen {
            let Ok(name) = EntryName::new(stem) else {
                continue;
            };
            let odd = |file: String, k: Kind| match k {
                Kind::Dir => format!("{file} is a directory"),
                Kind::Symlink => format!("{file} is a symbolic link (not followed)"),
                k => format!("{file} is {}, not a regular file", k.describe()),
            };
            let kind = match (npy, meta) {
                (Some(Kind::File), Some(Kind::File)) => Listed::Pair,
                (Some(n), _) if n != Kind::File => Listed::Broken(odd(name.npy_file(), n)),
                (_, Some(m)) if m != Kind::File => Listed::Broken(odd(name.meta_file(), m)),
                (Some(_), None) => Listed::Broken(format!("{} is missing", name.meta_file())),
                (None, Some(_)) => Listed::Broken(format!("{} is missing", name.npy_file())),
                _ => Listed::Broken("not a regular file".into()),
            };
            entries.insert(name, kind);
        }
        Ok(Listing { entries, pending })
    }

    fn recover(&self, pending: &[String]) -> Result<Recovered> {
        let Some(procs) = self.procs() else {
            return Ok(Recovered::default());
        };
        // Only what dead writers left: a live writer's staged files, backups
        // and tombstones are never touched. Each key is recovered under its
        // publish lock, so no live writer commits it meanwhile.
        let dead = procs::of_dead_writers(procs, pending, pair::temp_writer);
        let mut by_key: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
        for t in dead {
            by_key
                .entry(pair::temp_key(t).map(str::to_owned))
                .or_default()
                .push(t.clone());
        }
        let mut completed = Vec::new();
        let mut left_raw = Vec::new();
        let any_dead = !by_key.is_empty();
        for (key, temps) in by_key {
            let name = key.as_deref().and_then(|k| EntryName::new(k).ok());
            let _lock = match &name {
                Some(n) => procs.publish_locks(&[n])?,
                None => Vec::new(),
            };
            let rec = pair::recover(&self.dir, procs.versions(), &temps)?;
            completed.extend(rec.completed);
            left_raw.extend(rec.left);
        }
        // Version links a dead writer left (made for a publish it never
        // committed, or of a version it replaced and had not unlinked yet)
        // hold old data: swept only when a writer died, so that an open
        // after clean closes lists nothing more.
        if procs.remove_dead_registrations() > 0 || any_dead {
            pair::sweep_versions(&self.dir, procs)?;
        }
        // A temporary name that is not a regular file was never staged by
        // this crate: recovery left it alone, and its key is reported.
        let left = left_raw
            .into_iter()
            .map(|(temp, what)| {
                let key = pair::temp_key(&temp).and_then(|k| EntryName::new(k).ok());
                let reason =
                    format!("{temp} is {what}, not a regular file: left alone by recovery");
                (key, reason)
            })
            .collect();
        Ok(Recovered { completed, left })
    }

    fn read_meta(&self, name: &EntryName) -> Result<Meta> {
        Meta::read_in(&self.dir, &name.meta_file())
    }

    fn read_header(&self, name: &EntryName) -> Result<NpyInfo> {
        use std::io::Read;
        let file = name.npy_file();
        let path = self.dir.join(&file);
        let f = self.dir.open_regular(&file, io::Access::Read)?;
        // NPY 1.0 headers are at most 65535 + 10 bytes; GSEGUtils' are 128.
        let mut buf = Vec::with_capacity(4096);
        f.take(65_545).read_to_end(&mut buf).ctx("read", &path)?;
        NpyInfo::parse(&buf, &path)
    }

    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File> {
        self.dir.open_regular(&name.npy_file(), access)
    }

    fn stat_data(&self, name: &EntryName) -> Option<Found> {
        self.dir.stat(&name.npy_file())
    }

    fn exists(&self, name: &EntryName) -> bool {
        self.dir.stat(&name.npy_file()).is_some() || self.dir.stat(&name.meta_file()).is_some()
    }

    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>> {
        pair::publish_pairs(&self.dir, self.procs(), jobs, sync)
    }

    fn remove(&self, name: &EntryName) -> Result<()> {
        pair::remove_pair(&self.dir, self.procs(), name)
    }

    fn sync(&self) -> Result<()> {
        self.dir.sync()
    }

    fn set_attrs(&self, name: &EntryName, attrs: &crate::store::meta::Attrs) -> Result<()> {
        pair::replace_attrs(&self.dir, self.procs(), name, attrs)
    }

    fn is_pair(&self, name: &EntryName) -> bool {
        let file = |n: &str| self.dir.stat(n).is_some_and(|f| f.is_file());
        file(&name.meta_file()) && file(&name.npy_file())
    }

    fn read_checked(&self, name: &EntryName) -> Result<Checked> {
        let mut delay = Duration::from_micros(50);
        let mut attempt = 0;
        let npy = name.npy_file();
        loop {
            let meta = self.read_meta(name)?;
            // Errors of the data file are reported when it is read, as for
            // any entry.
            let Ok((file, md)) = self.dir.open_regular_md(&npy, io::Access::Read) else {
                return Ok(Checked {
                    meta,
                    file: None,
                    version: None,
                    id: None,
                });
            };
            let path = self.dir.join(&npy);
            let Ok(info) = NpyInfo::read_file_of_len(&file, md.len(), &path) else {
                return Ok(Checked {
                    meta,
                    file: None,
                    version: None,
                    id: None,
                });
            };
            let agrees = meta.dtype.as_ref().is_none_or(|d| *d == info.descr)
                && meta.shape.as_ref().is_none_or(|s| *s == info.shape);
            attempt += 1;
            let last = attempt >= read_attempts();
            let id = FileId::from_meta(&md);
            let proven = match self.check_version(name, &meta, &md) {
                // The very file published with this metadata: a header
                // that disagrees is reported when the data is read.
                Some(true) => true,
                // Another version than the metadata's: a publish between
                // the two reads (its `.npy` renamed, its metadata not yet).
                Some(false) if !last => false,
                // No version to check (or it could not be proven within the
                // bound): the header must agree with the metadata.
                _ if agrees => {
                    return Ok(Checked {
                        meta,
                        file: Some((file, info)),
                        version: None,
                        id: Some(id),
                    })
                }
                _ if last => {
                    // Reported as a mismatch when the data is read.
                    return Ok(Checked {
                        meta,
                        file: None,
                        version: None,
                        id: None,
                    });
                }
                _ => false,
            };
            if proven {
                let version = Some(Published {
                    id,
                    token: meta.version.as_deref().map(Arc::from),
                });
                let file = agrees.then_some((file, info));
                return Ok(Checked {
                    meta,
                    file,
                    version,
                    id: Some(id),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(2));
        }
    }

    fn is_current(&self, name: &EntryName, id: FileId, token: Option<&str>) -> bool {
        // Without a token the identity proves nothing: the file may have
        // been replaced and its inode number given to the new file.
        let (Some(token), Some(versions)) = (token, self.versions()) else {
            return false;
        };
        pair::is_version(versions, name, token, id)
            && self.dir.stat(&name.npy_file()).is_some_and(|f| f.id == id)
    }

    fn writers(&self) -> Result<Vec<WriterInfo>> {
        procs::live_writers(&self.dir)
    }

    fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<dyn Lease>>> {
        let Some(procs) = self.procs() else {
            return Ok(None);
        };
        Ok(procs
            .compute_lock(name, timeout)?
            .map(|l| Box::new(l) as Box<dyn Lease>))
    }
}

/// How many times [`Storage::read_checked`] reads a pair whose `.npy`
/// header disagrees with its metadata before it reports the disagreement
/// (about 1 s in all: a publish renames its two files microseconds apart,
/// but a writer descheduled between them on a loaded machine can take tens
/// of milliseconds; a pair that still disagrees after that is reported).
const READ_ATTEMPTS: u32 = 500;

#[cfg(feature = "testing")]
thread_local! {
    static READ_ATTEMPTS_OVERRIDE: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Sets the calling thread's override of [`READ_ATTEMPTS`] (see
/// `__testing::set_read_attempts`).
#[cfg(feature = "testing")]
pub(crate) fn set_read_attempts(n: Option<u32>) {
    READ_ATTEMPTS_OVERRIDE.with(|c| c.set(n.map(|n| n.max(1))));
}

/// [`READ_ATTEMPTS`], or the calling thread's override (tests that check
/// stores no writer is changing, see `__testing::set_read_attempts`).
fn read_attempts() -> u32 {
    #[cfg(feature = "testing")]
    if let Some(n) = READ_ATTEMPTS_OVERRIDE.with(std::cell::Cell::get) {
        return n;
    }
    READ_ATTEMPTS
}

#[cfg(unix)]
fn nlink(md: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    md.nlink()
}

#[cfg(not(unix))]
fn nlink(_: &std::fs::Metadata) -> u64 {
    1
}

/// The header of an open `.npy` file (a bounded read from its start).
pub(crate) fn read_header_of(file: &File, path: &Path) -> Result<NpyInfo> {
    NpyInfo::read_file(file, path).map(|(info, _)| info)
}
