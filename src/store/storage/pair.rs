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
//! removed (the publish never happened). The new files take the permission
//! bits of the files they replace.
//!
//! Remove (see [`remove_pair`]): hard-link `K.npy` to the tombstone
//! `.ndo.U.K.npy.del.tmp`, rename `K.meta.json` to `.ndo.U.K.meta.json.del.tmp`
//! (the removal is decided), unlink `K.npy`, `fsync` the directory, delete
//! the tombstones. Recovery deletes a `K.npy` left by an interrupted removal
//! only when the `.npy` tombstone of the same removal (same `U`) is a link
//! of that very file: a tombstone the store did not stage never deletes
//! anything but itself.
//!
//! Every operation is relative to the store's directory descriptor
//! ([`io::Dir`]); a temporary file or tombstone that is not a regular file is
//! never opened, followed or deleted: recovery leaves it alone and reports
//! it.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::procs::Procs;
use super::{PairJob, Published, SyncMode};
use crate::error::{Error, IoContext, Result};
use crate::io::{self, Dir, FileId, Kind, TempFile};
use crate::name::EntryName;
use crate::store::meta::{self, Commit, Meta};

struct Staged {
    npy: TempFile,
    meta: TempFile,
    id: FileId,
    token: Option<String>,
}

/// Publishes every job; returns the new `.npy` versions in job order
/// (`None` for a job whose entry was replaced or removed before its rename:
/// its files are dropped, so that it never overwrites its successor's).
pub(crate) fn publish_pairs(
    dir: &Dir,
    procs: Option<&Procs>,
    jobs: Vec<PairJob<'_>>,
    sync: SyncMode,
) -> Result<Vec<Option<Published>>> {
    let synced = sync != SyncMode::Unsynced;
    let per_file = synced && (sync != SyncMode::FileSystem || !cfg!(target_os = "linux"));
    let dir_sync = synced && sync != SyncMode::Spill;
    let mut staged = Vec::with_capacity(jobs.len());
    let mut names = Vec::with_capacity(jobs.len());
    // The version links made so far: removed again unless their publish
    // commits.
    let mut links = Links::new(procs.map(Procs::versions));
    for job in jobs {
        let (npy_name, meta_name) = (job.name.npy_file(), job.name.meta_file());
        let target = dir.join(&npy_name);
        let mut npy = TempFile::create_in(dir, &npy_name, false)?;
        keep_mode(dir, &npy_name, &npy)?;
        // The version token is the staged file's unique part; the link
        // `versions/K.<token>` names this very file from before its rename
        // until the next publish of the key has committed. A batch links
        // every staged file now, so that its one `syncfs` makes the links
        // durable with the files; with an `fsync` per file the link is made
        // just before the rename (see below).
        let token = match per_file {
            true => links.plan(npy.name()),
            false => links.make(dir, npy.name(), job.name)?,
        };
        // With an `fsync` per file (Unix: the inode is known at creation),
        // the metadata file is staged before the data is written: the data
        // file's `fsync` then also writes the directory and inode-table
        // blocks the two new files share, and the metadata's own `fsync`
        // little more than its data block.
        let early = per_file && cfg!(unix);
        let (shape, dtype, flags, attrs) = (&job.shape, &job.dtype, job.flags, job.attrs.clone());
        let extra = job.extra.clone();
        let render = |c: &Commit| {
            meta::render(
                shape,
                dtype,
                flags,
                Some(c),
                attrs.as_deref(),
                extra.as_deref(),
            )
        };
        let tok = token.as_deref();
        // The staged file's identity: its inode, known from its creation
        // (one `fstat`, before or after the data is written).
        let mut id = None;
        let mut m = match early {
            true => {
                let known = FileId::of_file(npy.file(), npy.path())?;
                id = Some(known);
                let mut m = stage_meta(dir, render, &meta_name, &npy, known, tok)?;
                // Written to the disk now: the data file's `fsync` below
                // then commits the metadata file with it (one journal
                // commit for both on ext4), and the metadata's own `fsync`
                // finds little or nothing left to do.
                m.flush_and_start_writeback()?;
                Some(m)
            }
            false => None,
        };
        (job.write_npy)(npy.writer(), &target)?;
        if per_file {
            npy.flush_and_sync()?;
        }
        let id = match id {
            Some(id) => id,
            None => FileId::of_file(npy.file(), npy.path())?,
        };
        if !per_file {
            npy.flush_and_close()?;
        }
        let mut m = match m.take() {
            Some(m) => m,
            None => stage_meta(dir, render, &meta_name, &npy, id, tok)?,
        };
        if per_file {
            m.flush_and_sync()?;
        } else {
            m.flush_and_close()?;
        }
        staged.push(Staged {
            npy,
            meta: m,
            id,
            token,
        });
        names.push((
            job.name,
            job.publish,
            job.version,
            job.published,
            job.unless,
        ));
    }
    if !per_file && synced {
        dir.syncfs()?;
    }
    // With an `fsync` per file the links are not synced on their own (made
    // under the publish locks, just before the renames, they are on ext4
    // made durable by the directory `fsync` with the renames): a power cut
    // may keep a rename and lose the link it was made with, and recovery
    // then decides as for a publish without a version (it never installs a
    // staged metadata file over a whole pair).
    // Other writers' publishes and removals of these keys wait from here to
    // the end of the rollback or of the clean-up: whatever is at the final
    // names while the locks are held was put there by this publish.
    let _locks = match procs {
        Some(p) => p.publish_locks(&names.iter().map(|n| n.0).collect::<Vec<_>>())?,
        None => Vec::new(),
    };
    let mut backups: Vec<Backup> = Vec::with_capacity(staged.len());
    let mut ids: Vec<Option<Published>> = staged
        .iter()
        .map(|s| {
            Some(Published {
                id: s.id,
                token: s.token.as_deref().map(Arc::from),
            })
        })
        .collect();
    // The versions the committed publishes replaced, whose links go once
    // the new pairs are durable.
    let mut replaced: Vec<(&EntryName, String)> = Vec::new();
    let result = (|| -> Result<()> {
        for (i, (s, &(name, publish, version, published, unless))) in
            staged.into_iter().zip(&names).enumerate()
        {
            let _g = io::OWNERSHIP.lock();
            let refused =
                unless.is_some_and(|f| Meta::read_in(dir, &name.meta_file()).is_ok_and(|m| f(&m)));
            if refused
                || !publish.load(Ordering::Acquire)
                || version < published.load(Ordering::Acquire)
            {
                ids[i] = None;
                continue; // dropping `s` removes its temporary files
            }
            if per_file {
                links.link_now(i, dir, s.npy.name(), name)?;
            }
            let b = Backup::take(dir, name)?;
            // The version replaced (whose link goes once the new pair is
            // durable) is in the metadata being replaced, if there is one.
            if links.is_on() && b.meta.1.is_some() {
                if let Some(old) = version_of(dir, name) {
                    replaced.push((name, old));
                }
            }
            backups.push(b);
            if synced {
                s.npy.rename_into(&name.npy_file())?;
                s.meta.rename_into(&name.meta_file())?;
            } else {
                // Unsynced, the metadata goes first: a power cut that
                // keeps one rename (an ordered journal keeps a prefix of
                // them) leaves the new metadata, which says its pair may be
                // torn, never the old metadata over new unsynced data.
                s.meta.rename_into(&name.meta_file())?;
                s.npy.rename_into(&name.npy_file())?;
            }
            published.fetch_max(version, Ordering::AcqRel);
            links.keep(i);
        }
        if dir_sync {
            dir.sync()
        } else {
            Ok(())
        }
    })();
    match result {
        Ok(()) => {
            for b in backups {
                b.discard(dir);
            }
            links.confirm();
            for (name, old) in replaced {
                links.remove(name, &old);
            }
            Ok(ids)
        }
        Err(e) => {
            // Roll back in reverse order; what cannot be rolled back here is
            // resolved by `recover` at the next open.
            for b in backups.into_iter().rev() {
                b.restore(dir);
            }
            let _ = dir.sync();
            Err(e)
        }
    }
}

/// Writes the metadata `render` makes, naming the staged data file `npy`
/// (identified by `id`), to a new temporary file, unsynced.
fn stage_meta(
    dir: &Dir,
    render: impl Fn(&Commit) -> String,
    meta_name: &str,
    npy: &TempFile,
    id: FileId,
    version: Option<&str>,
) -> Result<TempFile> {
    let commit = Commit {
        npy_tmp: npy.name().to_owned(),
        npy_ino: id.ino(),
        version: version.map(str::to_owned),
    };
    let text = render(&commit);
    let mut m = TempFile::create_in(dir, meta_name, false)?;
    keep_mode(dir, meta_name, &m)?;
    let w = m.writer();
    std::io::Write::write_all(w, text.as_bytes()).ctx("write", m.path())?;
    std::io::Write::flush(m.writer()).ctx("write", m.path())?;
    Ok(m)
}

/// The name of the version link of `name`'s version `token` in `versions/`.
pub(crate) fn version_link(name: &EntryName, token: &str) -> String {
    let mut s = name.with_suffix(".");
    s.push_str(token);
    s
}

/// The `(key, token)` a name in `versions/` is the link of.
pub(crate) fn parse_version_link(link: &str) -> Option<(&str, &str)> {
    let (key, token) = link.rsplit_once('.')?;
    (meta::is_token(token) && !key.is_empty()).then_some((key, token))
}

/// The version token `name`'s current metadata records (`None`: none, or
/// no metadata that parses).
pub(crate) fn version_of(dir: &Dir, name: &EntryName) -> Option<String> {
    Meta::read_in(dir, &name.meta_file()).ok()?.version
}

/// Whether the version link `versions/K.<token>` and `K.npy` (or the
/// file `id`) are one file. The link holds its file from before the
/// `.npy` is renamed into place until after a later publish replaced it,
/// so its inode number cannot be reused meanwhile: equal identities are
/// the same file, never a reused number.
pub(crate) fn is_version(versions: &Dir, name: &EntryName, token: &str, id: FileId) -> bool {
    versions
        .stat(&version_link(name, token))
        .is_some_and(|f| f.is_file() && f.id == id)
}

/// The version links one publish makes: each is removed again when the
/// set is dropped, unless its job committed ([`keep`](Self::keep)) and the
/// publish succeeded ([`confirm`](Self::confirm)).
struct Links<'d> {
    versions: Option<&'d Dir>,
    made: Vec<Option<String>>,
    kept: Vec<bool>,
}

impl<'d> Links<'d> {
    fn new(versions: Option<&'d Dir>) -> Self {
        Links {
            versions,
            made: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Whether links are made (a registered writer).
    fn is_on(&self) -> bool {
        self.versions.is_some()
    }

    /// The next job's token, the unique part of its staged file `staged`,
    /// whose link [`link_now`](Self::link_now) makes later (`None`: no
    /// links are made).
    fn plan(&mut self, staged: &str) -> Option<String> {
        self.kept.push(false);
        self.made.push(None);
        self.versions?;
        temp_parts(staged).map(|(token, _)| token.to_owned())
    }

    /// Links the staged file `staged` of `dir` as job `i`'s version of
    /// `name` (a job whose token [`plan`](Self::plan) gave).
    fn link_now(&mut self, i: usize, dir: &Dir, staged: &str, name: &EntryName) -> Result<()> {
        let (Some(versions), Some((token, _))) = (self.versions, temp_parts(staged)) else {
            return Ok(());
        };
        let link = version_link(name, token);
        dir.link_into(staged, versions, &link)?;
        if let Some(m) = self.made.get_mut(i) {
            *m = Some(link);
        }
        Ok(())
    }

    /// Links the staged file `staged` of `dir` as the next job's version
    /// of `name`; returns its token (`None`: no links are made).
    fn make(&mut self, dir: &Dir, staged: &str, name: &EntryName) -> Result<Option<String>> {
        self.kept.push(false);
        let token = match (self.versions, temp_parts(staged)) {
            (Some(versions), Some((token, _))) => {
                let link = version_link(name, token);
                dir.link_into(staged, versions, &link)?;
                self.made.push(Some(link));
                Some(token.to_owned())
            }
            _ => {
                self.made.push(None);
                None
            }
        };
        Ok(token)
    }

    /// Job `i` committed.
    fn keep(&mut self, i: usize) {
        if let Some(k) = self.kept.get_mut(i) {
            *k = true;
        }
    }

    /// The publish succeeded: the links of the jobs that committed stay.
    fn confirm(&mut self) {
        for (m, &k) in self.made.iter_mut().zip(&self.kept) {
            if k {
                *m = None;
            }
        }
    }

    /// Removes the link of `name`'s replaced version `token`.
    fn remove(&self, name: &EntryName, token: &str) {
        if let Some(v) = self.versions {
            v.remove_quietly(&version_link(name, token));
        }
    }
}

impl Drop for Links<'_> {
    fn drop(&mut self) {
        if let Some(v) = self.versions {
            for l in self.made.iter().flatten() {
                v.remove_quietly(l);
            }
        }
    }
}

/// Replaces the user attributes in `name`'s metadata: a new `.meta.json`
/// (the old one with `attrs`, see [`meta::with_fields`]) is staged, synced
/// and renamed over the old one, then the directory is synced. Under
/// `io::OWNERSHIP`, so that no publish of the entry commits between the
/// read and the rename. A crash leaves the old or the new metadata, and
/// recovery removes the staged file (it names no `.npy`).
pub(crate) fn replace_attrs(
    dir: &Dir,
    procs: Option<&Procs>,
    name: &EntryName,
    attrs: &meta::Attrs,
) -> Result<()> {
    let attrs = (!attrs.is_empty()).then(|| serde_json::Value::Object(attrs.clone()));
    replace_fields_if(
        dir,
        procs,
        name,
        |_| true,
        &[(meta::ATTRS_FIELD, attrs)],
        true,
    )
    .map(|_| ())
}

/// Replaces fields of `name`'s metadata (see [`meta::with_fields`]) when
/// its current metadata satisfies `check`, as [`replace_attrs`] replaces
/// the attributes; returns whether it did. Without `durable` neither the
/// new file nor the directory is synced (the change may be lost by a power
/// cut, never torn into the old pair's place: the old or the new metadata).
pub(crate) fn replace_fields_if(
    dir: &Dir,
    procs: Option<&Procs>,
    name: &EntryName,
    check: impl Fn(&Meta) -> bool,
    set: &[(&str, Option<serde_json::Value>)],
    durable: bool,
) -> Result<bool> {
    let meta_name = name.meta_file();
    // Serialised with other processes' publishes of the key, as a publish.
    let _lock = match procs {
        Some(p) => p.publish_locks(&[name])?,
        None => Vec::new(),
    };
    let _g = io::OWNERSHIP.lock();
    let bytes = dir.read_bounded(&meta_name, meta::META_LIMIT)?;
    let path = dir.join(&meta_name);
    if !check(&Meta::parse(&bytes, &path)?) {
        return Ok(false);
    }
    let text = meta::with_fields(&bytes, &path, set)?;
    let mut m = TempFile::create_in(dir, &meta_name, false)?;
    keep_mode(dir, &meta_name, &m)?;
    std::io::Write::write_all(m.writer(), text.as_bytes()).ctx("write", m.path())?;
    if durable {
        m.flush_and_sync()?;
    } else {
        m.flush_and_close()?;
    }
    m.rename_into(&meta_name)?;
    if durable {
        dir.sync()?;
    }
    Ok(true)
}

/// Gives a staged file the permission bits of the regular file it will
/// replace, if any (a replaced entry keeps the mode its owner chose).
fn keep_mode(dir: &Dir, name: &str, tmp: &TempFile) -> Result<()> {
    match dir.stat(name) {
        Some(f) if f.is_file() => tmp.set_mode(f.mode),
        _ => Ok(()),
    }
}

/// Hard links to the pair being replaced: for each final name, the backup
/// link, or `None` when there was no file (rolling back then removes what
/// the publish renamed there).
struct Backup {
    npy: (String, Option<String>),
    meta: (String, Option<String>),
}

impl Backup {
    fn take(dir: &Dir, name: &EntryName) -> Result<Backup> {
        let (npy, meta) = (name.npy_file(), name.meta_file());
        let link = |src: &str| -> Result<Option<String>> {
            if dir.stat(src).is_none() {
                return Ok(None);
            }
            let b = dir.temp_name(&format!("{src}.bak"));
            dir.link(src, &b)?;
            Ok(Some(b))
        };
        let npy_b = link(&npy)?;
        let meta_b = match link(&meta) {
            Ok(m) => m,
            Err(e) => {
                if let Some(b) = &npy_b {
                    dir.remove_quietly(b);
                }
                return Err(e);
            }
        };
        Ok(Backup {
            npy: (npy, npy_b),
            meta: (meta, meta_b),
        })
    }

    fn discard(self, dir: &Dir) {
        for b in [self.npy.1, self.meta.1].into_iter().flatten() {
            dir.remove_quietly(&b);
        }
    }

    /// Puts the old pair back (the caller holds the keys' publish locks, so
    /// whatever is at the final names was put there by this publish).
    fn restore(self, dir: &Dir) {
        let id = |n: &str| dir.stat(n).map(|f| f.id);
        for (orig, backup) in [self.meta, self.npy] {
            match backup {
                // Renaming a hard link onto another link of the same file
                // does nothing (POSIX), so a file that was not replaced yet
                // only needs its backup removed.
                Some(b) if id(&orig) == id(&b) => dir.remove_quietly(&b),
                Some(b) => {
                    dir.rename_quietly(&b, &orig);
                }
                None => dir.remove_quietly(&orig),
            }
        }
    }
}

/// Removes a pair (see the module docs): `K.npy` is hard-linked to its
/// tombstone, `K.meta.json` renamed to its tombstone, `K.npy` unlinked, the
/// directory synced, then the tombstones are deleted. An error before the
/// directory sync completes puts both names back, so the pair is left as
/// it was; a crash leaves tombstones that the next open completes.
///
/// # Errors
///
/// [`Error::Corrupt`] naming the file when either name is a directory:
/// nothing is renamed or staged. I/O errors.
pub(crate) fn remove_pair(dir: &Dir, procs: Option<&Procs>, name: &EntryName) -> Result<()> {
    remove_pair_if(dir, procs, name, |_| true).map(|_| ())
}

/// As [`remove_pair`], only when the pair's current metadata satisfies
/// `check` (decided under the key's publish lock); returns whether it was
/// removed. Metadata that cannot be read is given to `check` as `None`.
pub(crate) fn remove_pair_if(
    dir: &Dir,
    procs: Option<&Procs>,
    name: &EntryName,
    check: impl Fn(Option<&Meta>) -> bool,
) -> Result<bool> {
    // Publishes and removals of the key by other writers wait until the
    // removal is done or undone.
    let _lock = match procs {
        Some(p) => p.publish_locks(&[name])?,
        None => Vec::new(),
    };
    if !check(Meta::read_in(dir, &name.meta_file()).ok().as_ref()) {
        return Ok(false);
    }
    let (npy, meta) = (name.npy_file(), name.meta_file());
    let (npy_found, meta_found) = (dir.stat(&npy), dir.stat(&meta));
    // Only a name can be removed: a directory at either name is refused
    // before anything is staged (a symbolic link or a FIFO is unlinked like
    // a file, never followed or opened).
    for (file, found) in [(&npy, npy_found), (&meta, meta_found)] {
        if found.is_some_and(|f| f.kind == Kind::Dir) {
            return Err(Error::corrupt(
                &dir.join(file),
                "is a directory, not a file: the entry is not removed",
            ));
        }
    }
    // The version removed, whose link goes with it.
    let version = procs.and_then(|_| version_of(dir, name));
    let unique = dir.temp_unique();
    let npy_tomb = io::temp_name_with(&unique, &format!("{npy}.del"));
    let meta_tomb = io::temp_name_with(&unique, &format!("{meta}.del"));
    // Steps done, to undo in reverse order on error.
    let (mut linked, mut meta_moved, mut npy_gone) = (false, false, false);
    let result = (|| -> Result<()> {
        let _g = io::OWNERSHIP.lock();
        if npy_found.is_some() {
            dir.link(&npy, &npy_tomb)?;
            linked = true;
        }
        if meta_found.is_some() {
            dir.rename(&meta, &meta_tomb)?;
            meta_moved = true;
        }
        if linked {
            dir.remove(&npy)?;
            npy_gone = true;
        }
        dir.sync()
    })();
    match result {
        Ok(()) => {
            for t in [&meta_tomb, &npy_tomb] {
                dir.remove_quietly(t);
            }
            if let (Some(p), Some(v)) = (procs, version) {
                p.versions().remove_quietly(&version_link(name, &v));
            }
            Ok(true)
        }
        Err(e) => {
            if npy_gone {
                dir.rename_quietly(&npy_tomb, &npy);
            }
            if meta_moved {
                dir.rename_quietly(&meta_tomb, &meta);
            }
            if linked && !npy_gone {
                dir.remove_quietly(&npy_tomb);
            }
            let _ = dir.sync();
            Err(e)
        }
    }
}

/// Whether `name`'s current pair is one version: its metadata's version
/// link is `K.npy` (the file `npy`), or, for metadata without a version,
/// the `.npy` header agrees with it.
fn pair_is_whole(dir: &Dir, versions: &Dir, name: &EntryName, npy: FileId) -> bool {
    match Meta::read_in(dir, &name.meta_file()) {
        Ok(m) => match &m.version {
            Some(token) => is_version(versions, name, token, npy),
            None => header_agrees(dir, name, &m),
        },
        Err(_) => false,
    }
}

/// Whether the header of `name`'s `.npy` agrees with `m`'s dtype and shape.
fn header_agrees(dir: &Dir, name: &EntryName, m: &Meta) -> bool {
    let file = name.npy_file();
    let Ok(f) = dir.open_regular(&file, io::Access::Read) else {
        return false;
    };
    let Ok(info) = super::read_header_of(&f, &dir.join(&file)) else {
        return false;
    };
    m.dtype.as_ref().is_none_or(|d| *d == info.descr)
        && m.shape.as_ref().is_none_or(|s| *s == info.shape)
}

/// Removes the version links in `procs`' `versions/` that no longer vouch
/// for a current version: those whose key's metadata records another token
/// (or none), unless the writer that made the link is alive (its publish
/// may be in flight). Each link is removed under its key's publish lock.
pub(crate) fn sweep_versions(dir: &Dir, procs: &Procs) -> Result<usize> {
    let versions = procs.versions();
    let mut removed = 0;
    for (link, kind) in versions.list()? {
        if kind != Kind::File {
            continue;
        }
        let Some((key, token)) = parse_version_link(&link) else {
            continue;
        };
        let Ok(name) = EntryName::new(key) else {
            continue;
        };
        if io::temp_owner(token).is_some_and(|o| procs.is_alive(o)) {
            continue;
        }
        let _lock = procs.publish_locks(&[&name])?;
        if version_of(dir, &name).as_deref() != Some(token) {
            // Another writer's sweep may have removed it just before.
            versions.remove_quietly(&link);
            removed += 1;
        }
    }
    Ok(removed)
}

/// What recovery did at open.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub completed: Vec<String>,
    pub removed_temps: usize,
    /// Temporary names that are not regular files (never staged by the
    /// crate): left alone, with what they are.
    pub left: Vec<(String, &'static str)>,
}

/// The tag of one of the crate's temporary file names (`K.npy`,
/// `K.meta.json`, `K.npy.bak`, `K.meta.json.del`, ...).
fn temp_tag(name: &str) -> Option<&str> {
    temp_parts(name).map(|(_, tag)| tag)
}

/// The registration id of the writer that staged the temporary file
/// `name` (`None`: none recorded, see [`io::temp_owner`]).
pub(crate) fn temp_writer(name: &str) -> Option<&str> {
    temp_parts(name).and_then(|(unique, _)| io::temp_owner(unique))
}

/// The `(unique, tag)` parts of a temporary name `.ndo.<unique>.<tag>.tmp`.
fn temp_parts(name: &str) -> Option<(&str, &str)> {
    if !io::is_temp_name(name) || name.len() < io::TEMP_PREFIX.len() + io::TEMP_SUFFIX.len() {
        return None;
    }
    let rest = &name[io::TEMP_PREFIX.len()..name.len() - io::TEMP_SUFFIX.len()];
    let dot = rest.find('.')?;
    Some((&rest[..dot], &rest[dot + 1..]))
}

/// The entry key a temporary name belongs to (`K` of `K.npy.del`, ...).
pub(crate) fn temp_key(name: &str) -> Option<&str> {
    let tag = temp_tag(name)?;
    let tag = tag
        .strip_suffix(".del")
        .or_else(|| tag.strip_suffix(".bak"))
        .unwrap_or(tag);
    tag.strip_suffix(".npy")
        .or_else(|| tag.strip_suffix(".meta.json"))
}

/// Resolves interrupted publishes and removals and deletes the crate's
/// stray temporary files in `dir` (see the module docs). A temporary name
/// that is not a regular file is never opened, renamed or deleted: it is
/// returned in [`Recovery::left`].
pub(crate) fn recover(dir: &Dir, versions: &Dir, temps: &[String]) -> Result<Recovery> {
    let mut rec = Recovery::default();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let found = |n: &str| dir.stat(n);
    let regular_ino = |n: &str| found(n).filter(|f| f.is_file()).map(|f| f.id.ino());
    // Tombstones: finish a removal, but only one this crate staged: the
    // `.npy` tombstone of the same removal must be a link of `K.npy`.
    for t in temps {
        let Some((unique, tag)) = temp_parts(t) else {
            continue;
        };
        let Some(meta_name) = tag.strip_suffix(".del") else {
            continue;
        };
        let Some(key) = meta_name.strip_suffix(".meta.json") else {
            continue;
        };
        if !found(t).is_some_and(|f| f.is_file()) || found(meta_name).is_some() {
            // Not a tombstone the crate made, or the pair is whole again.
            continue;
        }
        let npy = format!("{key}.npy");
        let npy_tomb = io::temp_name_with(unique, &format!("{npy}.del"));
        match (found(&npy), found(&npy_tomb)) {
            (Some(n), Some(b)) if n.kind != Kind::Dir && n.id == b.id => {
                dir.remove(&npy)?;
                rec.completed.push(format!("removal of {key}"));
            }
            (None, _) => rec.completed.push(format!("removal of {key}")),
            _ => tracing::warn!(
                dir = %dir.path().display(),
                tombstone = t.as_str(),
                "a tombstone this store did not stage: {npy} is kept"
            ),
        }
    }
    // Metadata published after its .npy: complete it, but only when the
    // current `K.npy` is provably the file staged with it: its version link
    // (which has held that file since before its rename, so its inode
    // number cannot have been reused) is `K.npy`. Staged metadata without a
    // version (older versions of the crate) records an inode number only,
    // which a later file may have been given: it is installed only over a
    // pair that is not whole (its `.npy` disagrees with its metadata) and
    // when the `.npy` agrees with it, never over a whole pair.
    for t in temps {
        let Some(tag) = temp_tag(t) else { continue };
        let Some(key) = tag.strip_suffix(".meta.json") else {
            continue;
        };
        let Ok(name) = EntryName::new(key) else {
            continue;
        };
        let Ok(m) = Meta::read_in(dir, t) else {
            continue;
        };
        let Some(c) = &m.commit else {
            continue;
        };
        let Some(current) = found(&name.npy_file()).filter(|f| f.is_file()) else {
            continue;
        };
        let link = m
            .version
            .as_deref()
            .filter(|t| versions.stat(&version_link(&name, t)).is_some());
        let complete = match link {
            // The version's link is there: it decides.
            Some(token) => is_version(versions, &name, token, current.id),
            // No version, or its link was lost with a power cut: the
            // staged metadata completes only a pair that is not whole.
            None => {
                c.npy_ino == current.id.ino()
                    && !pair_is_whole(dir, versions, &name, current.id)
                    && header_agrees(dir, &name, &m)
            }
        };
        if complete {
            dir.rename(t, &name.meta_file())?;
            rec.completed.push(format!("publish of {key}"));
            done.insert(t);
        }
    }
    // A .npy whose metadata was published first: complete it.
    for t in temps {
        let Some(tag) = temp_tag(t) else { continue };
        let Some(key) = tag.strip_suffix(".npy") else {
            continue;
        };
        let Ok(m) = Meta::read_in(dir, &format!("{key}.meta.json")) else {
            continue;
        };
        if let Some(c) = &m.commit {
            let target = format!("{key}.npy");
            if c.npy_tmp == *t
                && regular_ino(t) == Some(c.npy_ino)
                && found(&target).map(|f| f.id.ino()) != Some(c.npy_ino)
            {
                dir.rename(t, &target)?;
                rec.completed.push(format!("publish of {key}"));
                done.insert(t);
            }
        }
    }
    for t in temps {
        if done.contains(t.as_str()) {
            continue;
        }
        match found(t) {
            Some(f) if f.kind == Kind::File => {
                dir.remove(t)?;
                rec.removed_temps += 1;
            }
            Some(f) => rec.left.push((t.clone(), f.kind.describe())),
            None => {}
        }
    }
    if !rec.completed.is_empty() || rec.removed_temps > 0 {
        dir.sync()?;
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
        assert_eq!(temp_key(".ndo.1f-2-3.k.v1.npy.del.tmp"), Some("k.v1"));
        assert_eq!(temp_key(".ndo.1f-2-3.k.meta.json.bak.tmp"), Some("k"));
        assert_eq!(temp_key(".ndo.1f-2-3.part.tmp"), None);
        assert_eq!(temp_key(".ndo.tmp"), None);
    }
}
