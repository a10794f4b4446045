//! Publishing and removing `(.npy, .meta.json)` pairs so that after a crash
//! or an I/O error every key reads as its complete old or complete new value,
//! and recovering interrupted publishes when a store is opened.
//!
//! Publish (one key, or many with one round of syncs):
//!
//! 1. write `K.npy` to a unique temporary `T_npy`, and `K.meta.json` to
//!    `T_meta`, whose `ndoffload_commit` names `T_npy` and its inode;
//! 2. make both durable (`fsync` each, or one `syncfs` for a batch);
//! 3. hard-link the current pair to backup names (for an in-process
//!    rollback; no data is copied);
//! 4. rename `T_npy` over `K.npy`, then `T_meta` over `K.meta.json`;
//! 5. `fsync` the directory; remove the backups.
//!
//! An error in steps 4-5 renames the backups back, so the old pair is left
//! byte-identical. A crash leaves temporary files that [`recover`] resolves
//! at the next writable open: a `T_meta` whose inode matches the current
//! `K.npy` is renamed into place (the publish completes); a `T_npy` named by
//! the current `K.meta.json` is renamed into place; everything else is
//! removed (the publish never happened).

use std::collections::BTreeSet;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::meta::{self, Commit, EntryFlags, Meta};
use crate::error::{Error, IoContext, Result};
use crate::io::{self, FileId, SeamFile, TempFile};
use crate::name::EntryName;

/// Writes an entry's `.npy` bytes to the temporary file (the path is the
/// final one, for error messages).
pub(crate) type WriteNpy<'a> = Box<dyn FnOnce(&mut BufWriter<SeamFile>, &Path) -> Result<()> + 'a>;

/// One pair to publish.
pub(crate) struct PairJob<'a> {
    pub name: &'a EntryName,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub flags: EntryFlags,
    /// Whether the entry may still publish (it was not replaced or removed
    /// meanwhile): checked at the rename, under `io::OWNERSHIP`.
    pub publish: &'a AtomicBool,
    /// The entry's version whose data this job writes, and the newest
    /// version of the entry renamed into place so far: an older snapshot
    /// (a flush that wrote its files before an offload published newer
    /// data) is never renamed over a newer one.
    pub version: u64,
    pub published: &'a AtomicU64,
    pub write_npy: WriteNpy<'a>,
}

struct Staged {
    npy: TempFile,
    meta: TempFile,
    id: FileId,
}

/// How the temporary files of a publish are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncMode {
    /// `fsync` each file, `fsync` the directory after the renames.
    PerFile,
    /// One `syncfs` on the store's file system (Linux; `fsync` each file
    /// elsewhere), `fsync` the directory after the renames.
    FileSystem,
    /// As `FileSystem`, but the directory is not synced: the new pair is
    /// complete and its data durable, but the renames may not survive a
    /// crash (the key then reads as its old value). Used for spills; the
    /// store syncs the directory on its next flush.
    Spill,
}

/// Publishes every job; returns the new `.npy` identities in job order
/// (`None` for a job whose entry was replaced or removed before its rename:
/// its files are dropped, so that it never overwrites its successor's).
pub(crate) fn publish_pairs(
    dir: &Path,
    jobs: Vec<PairJob<'_>>,
    sync: SyncMode,
) -> Result<Vec<Option<FileId>>> {
    let per_file = sync != SyncMode::FileSystem || !cfg!(target_os = "linux");
    let dir_sync = sync != SyncMode::Spill;
    let mut staged = Vec::with_capacity(jobs.len());
    let mut names = Vec::with_capacity(jobs.len());
    for job in jobs {
        let target = dir.join(job.name.npy_file());
        let mut npy = TempFile::create(dir, &job.name.npy_file(), false)?;
        (job.write_npy)(npy.writer(), &target)?;
        if per_file {
            npy.flush_and_sync()?;
        }
        let id = FileId::of_file(npy.file(), npy.path())?;
        if !per_file {
            npy.flush_and_close()?;
        }
        let commit = Commit {
            npy_tmp: file_name(npy.path()),
            npy_ino: id.ino(),
        };
        let text = meta::render(&job.shape, &job.dtype, job.flags, Some(&commit));
        let mut m = TempFile::create(dir, &job.name.meta_file(), false)?;
        std::io::Write::write_all(m.writer(), text.as_bytes()).ctx("write", m.path())?;
        if per_file {
            m.flush_and_sync()?;
        } else {
            m.flush_and_close()?;
        }
        staged.push(Staged { npy, meta: m, id });
        names.push((job.name, job.publish, job.version, job.published));
    }
    if !per_file {
        syncfs(dir)?;
    }
    let mut backups: Vec<Backup> = Vec::with_capacity(staged.len());
    let mut ids: Vec<Option<FileId>> = staged.iter().map(|s| Some(s.id)).collect();
    let result = (|| -> Result<()> {
        for (i, (s, &(name, publish, version, published))) in
            staged.into_iter().zip(&names).enumerate()
        {
            let npy_path = dir.join(name.npy_file());
            let meta_path = dir.join(name.meta_file());
            let _g = io::OWNERSHIP.lock();
            if !publish.load(Ordering::Acquire) || version < published.load(Ordering::Acquire) {
                ids[i] = None;
                continue; // dropping `s` removes its temporary files
            }
            let b = Backup::take(dir, name, &npy_path, &meta_path)?;
            backups.push(b);
            s.npy.rename_to(&npy_path)?;
            s.meta.rename_to(&meta_path)?;
            published.fetch_max(version, Ordering::AcqRel);
        }
        if dir_sync {
            io::sync_dir(dir)
        } else {
            Ok(())
        }
    })();
    match result {
        Ok(()) => {
            for b in backups {
                b.discard();
            }
            Ok(ids)
        }
        Err(e) => {
            // Roll back in reverse order; what cannot be rolled back here is
            // resolved by `recover` at the next open.
            for b in backups.into_iter().rev() {
                b.restore();
            }
            let _ = io::sync_dir(dir);
            Err(e)
        }
    }
}

/// Hard links to the pair being replaced: for each final path, the backup
/// link, or `None` when there was no file (rolling back then removes what
/// the publish renamed there).
struct Backup {
    npy: (PathBuf, Option<PathBuf>),
    meta: (PathBuf, Option<PathBuf>),
}

impl Backup {
    fn take(dir: &Path, name: &EntryName, npy: &Path, meta: &Path) -> Result<Backup> {
        let link = |src: &Path, tag: String| -> Result<Option<PathBuf>> {
            if fs::symlink_metadata(src).is_err() {
                return Ok(None);
            }
            let b = dir.join(io::temp_name(&tag));
            io::hard_link(src, &b)?;
            Ok(Some(b))
        };
        let npy_b = link(npy, format!("{}.bak", name.npy_file()))?;
        let meta_b = match link(meta, format!("{}.bak", name.meta_file())) {
            Ok(m) => m,
            Err(e) => {
                if let Some(b) = &npy_b {
                    let _ = fs::remove_file(b);
                }
                return Err(e);
            }
        };
        Ok(Backup {
            npy: (npy.to_path_buf(), npy_b),
            meta: (meta.to_path_buf(), meta_b),
        })
    }

    fn discard(self) {
        for b in [self.npy.1, self.meta.1].into_iter().flatten() {
            let _ = fs::remove_file(b);
        }
    }

    /// Puts the old pair back (the caller holds the store's write lock, so
    /// whatever is at the final paths was put there by this publish).
    fn restore(self) {
        for (orig, backup) in [self.meta, self.npy] {
            match backup {
                // Renaming a hard link onto another link of the same file
                // does nothing (POSIX), so a file that was not replaced yet
                // only needs its backup removed.
                Some(b) if FileId::of_path(&orig) == FileId::of_path(&b) => {
                    let _ = fs::remove_file(&b);
                }
                Some(b) => {
                    let _ = fs::rename(&b, &orig);
                }
                None => {
                    let _ = fs::remove_file(&orig);
                }
            }
        }
    }
}

/// Removes a pair: both files are renamed to tombstones (the metadata
/// first), the directory is synced, then the tombstones are deleted. An
/// error before the directory sync completes renames them back, so the pair
/// is left as it was; a crash leaves tombstones that the next open completes.
pub(crate) fn remove_pair(dir: &Path, name: &EntryName) -> Result<()> {
    let npy_path = dir.join(name.npy_file());
    let meta_path = dir.join(name.meta_file());
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(2);
    let result = (|| -> Result<()> {
        for (path, file) in [(&meta_path, name.meta_file()), (&npy_path, name.npy_file())] {
            if fs::symlink_metadata(path).is_err() {
                continue;
            }
            let tomb = dir.join(io::temp_name(&format!("{file}.del")));
            let _g = io::OWNERSHIP.lock();
            io::rename(path, &tomb)?;
            moved.push((path.clone(), tomb));
        }
        io::sync_dir(dir)
    })();
    match result {
        Ok(()) => {
            for (_, tomb) in moved {
                let _ = fs::remove_file(tomb);
            }
            Ok(())
        }
        Err(e) => {
            for (path, tomb) in moved.into_iter().rev() {
                let _ = fs::rename(&tomb, &path);
            }
            let _ = io::sync_dir(dir);
            Err(e)
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
fn syncfs(dir: &Path) -> Result<()> {
    io::check_op(io::Op::Sync, dir).ctx("syncfs", dir)?;
    let d = fs::File::open(dir).ctx("open", dir)?;
    rustix::fs::syncfs(&d).map_err(|e| Error::io("syncfs", dir, e.into()))
}

#[cfg(not(target_os = "linux"))]
fn syncfs(_dir: &Path) -> Result<()> {
    Ok(())
}

/// What recovery did at open.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub completed: Vec<String>,
    pub removed_temps: usize,
}

/// The tag of one of the crate's temporary file names (`K.npy`,
/// `K.meta.json`, `K.npy.bak`, `K.meta.json.del`, ...).
fn temp_tag(name: &str) -> Option<&str> {
    if !io::is_temp_name(name) {
        return None;
    }
    let rest = &name[io::TEMP_PREFIX.len()..name.len() - io::TEMP_SUFFIX.len()];
    let dot = rest.find('.')?;
    Some(&rest[dot + 1..])
}

/// Resolves interrupted publishes and removals and deletes the crate's
/// stray temporary files in `dir` (see the module docs).
pub(crate) fn recover(dir: &Path, temps: &[String]) -> Result<Recovery> {
    let mut rec = Recovery::default();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let ino = |p: &Path| FileId::of_path(p).map(|i| i.ino());
    // Tombstones: finish the removal.
    for t in temps {
        let Some(tag) = temp_tag(t) else { continue };
        if let Some(meta_name) = tag.strip_suffix(".del") {
            if let Some(key) = meta_name.strip_suffix(".meta.json") {
                let npy = dir.join(format!("{key}.npy"));
                if fs::symlink_metadata(dir.join(meta_name)).is_err()
                    && fs::symlink_metadata(&npy).is_ok()
                {
                    io::remove(&npy)?;
                }
                rec.completed.push(format!("removal of {key}"));
            }
        }
    }
    // Metadata published after its .npy: complete it.
    for t in temps {
        let Some(tag) = temp_tag(t) else { continue };
        let Some(key) = tag.strip_suffix(".meta.json") else {
            continue;
        };
        let path = dir.join(t);
        let Ok(m) = Meta::read(&path) else { continue };
        if let Some(c) = &m.commit {
            if ino(&dir.join(format!("{key}.npy"))) == Some(c.npy_ino) {
                io::rename(&path, &dir.join(format!("{key}.meta.json")))?;
                rec.completed.push(format!("publish of {key}"));
                done.insert(t);
            }
        }
    }
    // A .npy whose metadata was published first: complete it.
    for t in temps {
        let Some(tag) = temp_tag(t) else { continue };
        let Some(key) = tag.strip_suffix(".npy") else {
            continue;
        };
        let path = dir.join(t);
        let Ok(m) = Meta::read(&dir.join(format!("{key}.meta.json"))) else {
            continue;
        };
        if let Some(c) = &m.commit {
            let target = dir.join(format!("{key}.npy"));
            if c.npy_tmp == *t && ino(&path) == Some(c.npy_ino) && ino(&target) != Some(c.npy_ino) {
                io::rename(&path, &target)?;
                rec.completed.push(format!("publish of {key}"));
                done.insert(t);
            }
        }
    }
    for t in temps {
        if done.contains(t.as_str()) {
            continue;
        }
        let p = dir.join(t);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() || m.file_type().is_symlink() => {
                io::remove(&p)?;
                rec.removed_temps += 1;
            }
            _ => {}
        }
    }
    if !rec.completed.is_empty() || rec.removed_temps > 0 {
        io::sync_dir(dir)?;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(temp_tag(".ndo.1f-2-3.k.v1.npy.tmp"), Some("k.v1.npy"));
        assert_eq!(
            temp_tag(".ndo.1f-2-3.k.meta.json.del.tmp"),
            Some("k.meta.json.del")
        );
        assert_eq!(temp_tag("k.npy"), None);
    }
}
