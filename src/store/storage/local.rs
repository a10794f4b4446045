//! [`LocalDir`]: a store in a local directory, held open. Every operation
//! is relative to the directory's descriptor (`io::Dir`); publishing,
//! removing and recovering pairs follow the protocol of `pair.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{pair, Lease, Listed, Listing, LockMode, PairJob, Recovered, Storage, SyncMode};
use crate::error::{Error, IoContext, Result};
use crate::io::{self, FileId, Found, Kind};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::store::meta::Meta;

/// Name of the lock file a writable open holds.
pub const LOCK_FILE: &str = ".ndoffload.lock";

/// A store's directory, held open.
#[derive(Debug)]
pub(crate) struct LocalDir {
    dir: io::Dir,
}

/// The lock file, locked (`None`: a read-only open found none to lock).
#[derive(Debug)]
struct LockFile(Option<File>);

impl Lease for LockFile {}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Unlock explicitly: closing our descriptor would leave the lock held
        // while a child process forked meanwhile still has a copy of it.
        if let Some(f) = &self.0 {
            let _ = f.unlock();
        }
    }
}

impl LocalDir {
    /// Opens the directory at `path`. The path is resolved once; every
    /// later operation is relative to the directory held open, wherever the
    /// path points afterwards.
    pub(crate) fn open(path: &Path) -> Result<LocalDir> {
        Ok(LocalDir {
            dir: io::Dir::open(path)?,
        })
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
        let lock_path = self.dir.join(LOCK_FILE);
        let file = self.dir.open_lock(LOCK_FILE, mode == LockMode::Exclusive)?;
        if let Some(f) = &file {
            let tried = match mode {
                LockMode::Shared => f.try_lock_shared(),
                LockMode::Exclusive => f.try_lock(),
            };
            match tried {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
            }
        }
        Ok(Box::new(LockFile(file)))
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
        let rec = pair::recover(&self.dir, pending)?;
        // A temporary name that is not a regular file was never staged by
        // this crate: recovery left it alone, and its key is reported.
        let left = rec
            .left
            .into_iter()
            .map(|(temp, what)| {
                let key = pair::temp_key(&temp).and_then(|k| EntryName::new(k).ok());
                let reason =
                    format!("{temp} is {what}, not a regular file: left alone by recovery");
                (key, reason)
            })
            .collect();
        Ok(Recovered {
            completed: rec.completed,
            left,
        })
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
        pair::publish_pairs(&self.dir, jobs, sync)
    }

    fn remove(&self, name: &EntryName) -> Result<()> {
        pair::remove_pair(&self.dir, name)
    }

    fn sync(&self) -> Result<()> {
        self.dir.sync()
    }

    fn set_attrs(&self, name: &EntryName, attrs: &crate::store::meta::Attrs) -> Result<()> {
        pair::replace_attrs(&self.dir, name, attrs)
    }
}
