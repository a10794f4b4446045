//! [`LocalDir`]: a store in a local directory, held open. Every operation
//! is relative to the directory's descriptor (`io::Dir`); publishing,
//! removing and recovering pairs follow the protocol of `pair.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::procs::{self, Procs, WriterInfo};
use super::{
    pair, Checked, Lease, Listed, Listing, LockMode, PairJob, Recovered, Storage, SyncMode,
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
        })
    }

    fn procs(&self) -> Option<&Procs> {
        self.procs.get().map(|p| &**p)
    }
}

impl Storage for LocalDir {
    fn location(&self) -> &Path {
        self.dir.path()
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
        for (key, temps) in by_key {
            let name = key.as_deref().and_then(|k| EntryName::new(k).ok());
            let _lock = match &name {
                Some(n) => procs.publish_locks(&[n])?,
                None => Vec::new(),
            };
            let rec = pair::recover(&self.dir, &temps)?;
            completed.extend(rec.completed);
            left_raw.extend(rec.left);
        }
        procs.remove_dead_registrations();
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

    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<FileId>>> {
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
        loop {
            let meta = self.read_meta(name)?;
            // Errors of the data file are reported when it is read, as for
            // any entry.
            let Ok(file) = self.open_data(name, io::Access::Read) else {
                return Ok(Checked { meta, file: None });
            };
            let path = self.dir.join(&name.npy_file());
            let Ok(info) = read_header_of(&file, &path) else {
                return Ok(Checked { meta, file: None });
            };
            let agrees = meta.dtype.as_ref().is_none_or(|d| *d == info.descr)
                && meta.shape.as_ref().is_none_or(|s| *s == info.shape);
            if agrees {
                return Ok(Checked {
                    meta,
                    file: Some((file, info)),
                });
            }
            // The metadata names this very file: the pair disagrees for good.
            let committed = meta.commit.as_ref().is_some_and(|c| {
                FileId::of_file(&file, &path).is_ok_and(|id| id.ino() == c.npy_ino)
            });
            attempt += 1;
            if committed || attempt >= read_attempts() {
                // Reported as a mismatch when the data is read.
                return Ok(Checked { meta, file: None });
            }
            // A publish between the two reads (its `.npy` renamed, its
            // metadata not yet): read both again.
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(2));
        }
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

/// [`READ_ATTEMPTS`], or the calling thread's override (tests that check
/// stores no writer is changing, see `__testing::set_read_attempts`).
fn read_attempts() -> u32 {
    #[cfg(feature = "testing")]
    if let Some(n) = io::testing::read_attempts() {
        return n;
    }
    READ_ATTEMPTS
}

/// The header of an open `.npy` file (a bounded read from its start).
pub(crate) fn read_header_of(file: &File, path: &Path) -> Result<NpyInfo> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4096);
    let mut r = file;
    std::io::Seek::rewind(&mut r).ctx("read", path)?;
    r.take(65_545).read_to_end(&mut buf).ctx("read", path)?;
    std::io::Seek::rewind(&mut r).ctx("read", path)?;
    NpyInfo::parse(&buf, path)
}
