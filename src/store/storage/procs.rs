//! Many processes on one store directory: writer registrations, per-key
//! locks, and who holds what.
//!
//! The crate keeps its own files in the folder `.ndoffload/` of the store
//! (GSEGUtils lists `*.npy` files only, so it never sees them):
//!
//! * `.ndoffload/writers/<id>.writer`: one per writable open, `flock`ed
//!   exclusively for as long as the store is open, holding one JSON line
//!   (pid, host name, start time, id, mode). `<id>` is the registration id
//!   (`<pid>-<counter>-<millis>`, base 36) that every temporary file this writer
//!   stages in the store carries. A registration file that is not locked
//!   belongs to a dead writer (the kernel releases a `flock` when its
//!   process dies, however it dies).
//! * `.ndoffload/locks/publish-NN.lock` (`NN` from `00` to `63`): the
//!   publish locks. Key `K`'s publish lock is the file of its stripe
//!   ([`publish_stripe`]), `flock`ed around the commit of a publish or a
//!   removal of `K` (the backups, the renames and the directory `fsync`);
//!   it records nothing. A fixed set of files, created once per store: a
//!   publish of a new key creates no lock file (a file creation per
//!   publish cost as much as a tenth of a small durable insert), and the
//!   folder does not grow with the keys.
//! * `.ndoffload/locks/<K>.compute`: the compute lock of key `K`, held by
//!   the process computing `K` in `get_or_compute`; it records its holder
//!   (one JSON line, as a registration).
//!
//! Every one of these files is opened relative to the folder's descriptor
//! with `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC` and checked to be a regular
//! file (the folders with `O_DIRECTORY | O_NOFOLLOW`): a symbolic link, a
//! FIFO or a directory planted there is an error naming it, never followed.
//!
//! `flock` locks belong to an open file description: every lock here opens
//! its own, so two threads of one process exclude each other exactly as two
//! processes do.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::io::{self, Kind};
use crate::name::EntryName;

/// The folder of the crate's own files in a store directory.
pub const CRATE_DIR: &str = ".ndoffload";
const WRITERS: &str = "writers";
const LOCKS: &str = "locks";
/// The folder of version links (see `pair.rs`).
pub(crate) const VERSIONS: &str = "versions";
const WRITER_SUFFIX: &str = ".writer";
/// Bytes read of a registration or lock file.
const RECORD_LIMIT: u64 = 4096;

/// A writer registered on a store, as its registration file records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct WriterInfo {
    /// The registration id (temporary files of this writer carry it).
    pub id: String,
    /// The writer's process id.
    pub pid: u32,
    /// The host name of the machine it runs on.
    pub host: String,
    /// When it opened the store, in seconds since the Unix epoch.
    pub started: u64,
    /// Whether it opened the store exclusively.
    pub exclusive: bool,
}

impl WriterInfo {
    fn this_process(id: &str, exclusive: bool) -> WriterInfo {
        WriterInfo {
            id: id.to_owned(),
            pid: std::process::id(),
            host: host_name(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            exclusive,
        }
    }

    /// `pid 4242 on host "node7", shared writer since 2024-04-05 19:34:38
    /// UTC`.
    pub fn describe(&self) -> String {
        format!(
            "pid {} on host {:?}, {} writer since {}",
            self.pid,
            self.host,
            if self.exclusive {
                "exclusive"
            } else {
                "shared"
            },
            utc_time(self.started)
        )
    }

    fn parse(bytes: &[u8]) -> Option<WriterInfo> {
        let line = bytes.split(|&b| b == b'\n').next()?;
        // A record is a flat object: no nesting to bound.
        serde_json::from_slice(line).ok()
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (the civil
/// calendar, proleptic Gregorian; Howard Hinnant's `civil_from_days`).
pub(crate) fn utc_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn host_name() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "?".into())
}

/// The crate's folder of a store opened for writing, and this writer's
/// registration in it.
#[derive(Debug)]
pub(crate) struct Procs {
    writers: io::Dir,
    locks: io::Dir,
    /// `versions/`: a hard link of every published `.npy`, named by its
    /// version token.
    versions: io::Dir,
    id: String,
    exclusive: bool,
    /// The registration file, locked for as long as the store is open.
    registration: File,
}

impl Procs {
    /// Creates the crate's folder if needed and registers this writer:
    /// creates `writers/<id>.writer`, locks it, checks that the name still
    /// names the file it locked (a recovery in another process may have
    /// removed an unlocked registration of the same name just before), and
    /// writes the record.
    pub(crate) fn register(dir: &io::Dir, exclusive: bool) -> Result<Procs> {
        let (writers, locks) = Self::folders(dir, true)?;
        let versions = match dir.open_subdir(CRATE_DIR, true)? {
            Some(own) => own.open_subdir(VERSIONS, true)?,
            None => None,
        };
        let (writers, locks, versions) = match (writers, locks, versions) {
            (Some(w), Some(l), Some(v)) => (w, l, v),
            _ => return Err(Error::corrupt(&dir.join(CRATE_DIR), "could not be created")),
        };
        loop {
            let id = io::registration_id();
            let name = format!("{id}{WRITER_SUFFIX}");
            let path = writers.join(&name);
            let Some(mut file) = writers.open_lock(&name, true)? else {
                return Err(Error::corrupt(&path, "could not be created"));
            };
            file.lock().ctx("lock", &path)?;
            let same = match (writers.stat(&name), io::FileId::of_file(&file, &path)) {
                (Some(f), Ok(id)) => f.id == id,
                _ => false,
            };
            if !same {
                continue;
            }
            let mut record = serde_json::to_vec(&WriterInfo::this_process(&id, exclusive))
                .map_err(|e| Error::corrupt(&path, e.to_string()))?;
            record.push(b'\n');
            file.set_len(0).ctx("write", &path)?;
            file.write_all(&record).ctx("write", &path)?;
            dir.set_owner(id.clone());
            return Ok(Procs {
                writers,
                locks,
                versions,
                id,
                exclusive,
                registration: file,
            });
        }
    }

    /// The folders `writers/` and `locks/` of the crate's folder (created
    /// when `create`; `None` where missing).
    fn folders(dir: &io::Dir, create: bool) -> Result<(Option<io::Dir>, Option<io::Dir>)> {
        let Some(own) = dir.open_subdir(CRATE_DIR, create)? else {
            return Ok((None, None));
        };
        Ok((
            own.open_subdir(WRITERS, create)?,
            own.open_subdir(LOCKS, create)?,
        ))
    }

    /// The folder of version links.
    pub(crate) fn versions(&self) -> &io::Dir {
        &self.versions
    }

    /// Ends the registration (the store is closed): removes the file, then
    /// unlocks it. No other process removes a locked registration, so the
    /// name is still this writer's.
    pub(crate) fn release(&self) {
        self.writers
            .remove_quietly(&format!("{}{WRITER_SUFFIX}", self.id));
        let _ = self.registration.unlock();
    }

    /// Whether the writer registered as `id` is alive: its registration file
    /// is locked (this writer's own is). A missing registration is a dead
    /// writer's (a writer registers before it stages anything, and only a
    /// dead writer's registration is ever removed by another process);
    /// anything doubtful (not a regular file, an error) counts as alive, so
    /// that nothing of it is touched.
    /// This writer's registration id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn is_alive(&self, id: &str) -> bool {
        if id == self.id {
            return true;
        }
        let name = format!("{id}{WRITER_SUFFIX}");
        match self.writers.open_lock(&name, false) {
            Ok(None) => self.writers.stat(&name).is_some(),
            Ok(Some(f)) => match f.try_lock_shared() {
                Ok(()) => {
                    let _ = f.unlock();
                    false
                }
                Err(_) => true,
            },
            Err(e) => {
                tracing::warn!(error = %e, "a registration that is not a regular file: its writer counts as alive");
                true
            }
        }
    }

    /// Removes the registration files of dead writers (after recovery dealt
    /// with their temporary files): each is locked first and removed only if
    /// its name still names the file locked.
    /// Returns how many it removed.
    pub(crate) fn remove_dead_registrations(&self) -> usize {
        let Ok(names) = self.writers.list() else {
            return 0;
        };
        let mut removed = 0;
        for (name, kind) in names {
            if kind != Kind::File || !name.ends_with(WRITER_SUFFIX) || name.starts_with(&self.id) {
                continue;
            }
            let Ok(Some(f)) = self.writers.open_lock(&name, false) else {
                continue;
            };
            if f.try_lock().is_err() {
                continue;
            }
            let path = self.writers.join(&name);
            if let (Some(found), Ok(id)) =
                (self.writers.stat(&name), io::FileId::of_file(&f, &path))
            {
                if found.id == id {
                    self.writers.remove_quietly(&name);
                    removed += 1;
                }
            }
            let _ = f.unlock();
        }
        removed
    }

    /// Takes the publish locks of `names`: the lock of each one's stripe
    /// ([`publish_stripe`]), in stripe order (so that two batches never
    /// wait for each other in a cycle), each once, blocking until each is
    /// free. An exclusive writer takes none: no other writer can publish.
    pub(crate) fn publish_locks(&self, names: &[&EntryName]) -> Result<Vec<KeyLock>> {
        if self.exclusive {
            return Ok(Vec::new());
        }
        let mut stripes: Vec<u32> = names.iter().map(|n| publish_stripe(n)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len());
        for s in stripes {
            let name = stripe_file(s);
            let path = || self.locks.join(&name);
            let Some(f) = self.locks.open_lock(&name, true)? else {
                return Err(Error::corrupt(&path(), "could not be created"));
            };
            f.lock().map_err(|e| Error::io("lock", path(), e))?;
            held.push(KeyLock(f));
        }
        Ok(held)
    }

    /// Takes the push lock of `name` (a remote store's cache directory: the
    /// upload and commit of the key's staged write), blocking until it is
    /// free. Taken by exclusive writers too: their threads push in turn.
    pub(crate) fn push_lock(&self, name: &EntryName) -> Result<KeyLock> {
        let file = format!("{name}.push");
        let path = self.locks.join(&file);
        let Some(f) = self.locks.open_lock(&file, true)? else {
            return Err(Error::corrupt(&path, "could not be created"));
        };
        f.lock().ctx("lock", &path)?;
        Ok(KeyLock(f))
    }

    /// Takes the compute lock of `name`, waiting up to `timeout` (`None`:
    /// as long as it takes) for the process that holds it, and records
    /// this writer as its holder. An exclusive writer has no other writer
    /// to wait for: `None`.
    ///
    /// The wait is a blocking `flock` (no polling); with a timeout it runs
    /// on a helper thread, which, if the wait times out, keeps waiting and
    /// releases the lock as soon as it gets it.
    ///
    /// # Errors
    ///
    /// [`Error::Locked`] naming the holder when the timeout passed; errors
    /// opening the lock file.
    pub(crate) fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<Duration>,
    ) -> Result<Option<KeyLock>> {
        if self.exclusive {
            return Ok(None);
        }
        let file_name = format!("{name}.compute");
        let path = self.locks.join(&file_name);
        let Some(mut f) = self.locks.open_lock(&file_name, true)? else {
            return Err(Error::corrupt(&path, "could not be created"));
        };
        let locked = match f.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        };
        if !locked {
            match timeout {
                None => f.lock().ctx("lock", &path)?,
                Some(t) => {
                    let (tx, rx) = mpsc::channel();
                    let waiter = f.try_clone().ctx("lock", &path)?;
                    std::thread::Builder::new()
                        .name("ndoffload-compute-wait".into())
                        .spawn(move || {
                            let r = waiter.lock();
                            // The receiver gone (timed out): dropping the
                            // clone does not unlock, so unlock explicitly.
                            if tx.send(r).is_err() {
                                let _ = waiter.unlock();
                            }
                        })
                        .ctx("spawn a lock waiter for", &path)?;
                    // `f` and the waiter's clone share one open file
                    // description: the lock the waiter takes is `f`'s.
                    match rx.recv_timeout(t) {
                        Ok(r) => r.ctx("lock", &path)?,
                        Err(_) => {
                            let holder = describe_holder(&mut f, &self.writers);
                            return Err(Error::Locked { path, holder });
                        }
                    }
                }
            }
        }
        // Record the holder, unless the file has other links (then it is
        // not one the crate made: leave its bytes alone).
        if self.locks.stat(&file_name).is_some_and(|s| s.is_file()) && nlink_is_one(&f) {
            let mut record =
                serde_json::to_vec(&WriterInfo::this_process(&self.id, false)).unwrap_or_default();
            record.push(b'\n');
            let _ = f.set_len(0);
            let _ = f.rewind();
            let _ = f.write_all(&record);
        }
        Ok(Some(KeyLock(f)))
    }
}

/// How many publish locks a store has: every key's publish lock is the
/// lock of one of them, its stripe ([`publish_stripe`]).
pub(crate) const PUBLISH_STRIPES: u32 = 64;

/// The stripe of `name`'s publish lock: the 64-bit FNV-1a hash of its UTF-8
/// bytes, modulo [`PUBLISH_STRIPES`] (the same in every process and on
/// every platform).
pub(crate) fn publish_stripe(name: &EntryName) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(PUBLISH_STRIPES)) as u32
}

/// The file of publish stripe `s` in `locks/`: `publish-NN.lock`.
fn stripe_file(s: u32) -> String {
    format!("publish-{s:02}.lock")
}

#[cfg(unix)]
fn nlink_is_one(f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    f.metadata().is_ok_and(|m| m.nlink() == 1)
}

#[cfg(not(unix))]
fn nlink_is_one(_: &File) -> bool {
    true
}

/// Who holds the lock of `f`: the record in it, completed with whether its
/// writer is registered.
fn describe_holder(f: &mut File, writers: &io::Dir) -> String {
    let mut buf = Vec::new();
    let _ = f.rewind();
    let _ = f.take(RECORD_LIMIT).read_to_end(&mut buf);
    match WriterInfo::parse(&buf) {
        Some(w) => {
            let registered = writers.stat(&format!("{}{WRITER_SUFFIX}", w.id)).is_some();
            format!(
                "{}{}",
                w.describe(),
                if registered { "" } else { " (unregistered)" }
            )
        }
        None => "a process that recorded no holder".into(),
    }
}

/// A held per-key lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct KeyLock(File);

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// The writers registered on the store in `dir` whose registration is
/// locked (alive), in id order. Reads only: nothing is created, and a
/// registration file that is not a regular file is skipped.
pub(crate) fn live_writers(dir: &io::Dir) -> Result<Vec<WriterInfo>> {
    let (Some(writers), _) = Procs::folders(dir, false)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (name, kind) in writers.list()? {
        if kind != Kind::File || !name.ends_with(WRITER_SUFFIX) {
            continue;
        }
        let Ok(Some(f)) = writers.open_lock(&name, false) else {
            continue;
        };
        match f.try_lock_shared() {
            Ok(()) => {
                let _ = f.unlock();
                continue;
            }
            Err(std::fs::TryLockError::Error(_)) => continue,
            Err(std::fs::TryLockError::WouldBlock) => {}
        }
        let mut buf = Vec::new();
        let _ = (&f).take(RECORD_LIMIT).read_to_end(&mut buf);
        let id = name.trim_end_matches(WRITER_SUFFIX).to_owned();
        out.push(WriterInfo::parse(&buf).unwrap_or(WriterInfo {
            id,
            pid: 0,
            host: "?".into(),
            started: 0,
            exclusive: false,
        }));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Who holds the store's lock, for [`Error::Locked`]: the live writers.
pub(crate) fn describe_writers(dir: &io::Dir) -> String {
    match live_writers(dir) {
        Ok(w) if !w.is_empty() => w
            .iter()
            .map(WriterInfo::describe)
            .collect::<Vec<_>>()
            .join("; "),
        _ => "another writer (unregistered: an older version of the crate?)".into(),
    }
}

/// Groups temporary names by liveness of their writer: those whose writer
/// is dead (or unknown), for recovery.
pub(crate) fn of_dead_writers<'a>(
    procs: &Procs,
    temps: &'a [String],
    owner_of: impl Fn(&str) -> Option<&str>,
) -> Vec<&'a String> {
    let mut alive: HashMap<String, bool> = HashMap::new();
    temps
        .iter()
        .filter(|t| match owner_of(t) {
            None => true,
            Some(o) => !*alive
                .entry(o.to_owned())
                .or_insert_with(|| procs.is_alive(o)),
        })
        .collect()
}

#[cfg(test)]
mod utc_tests {
    use super::{publish_stripe, utc_time, PUBLISH_STRIPES};
    use crate::name::EntryName;

    /// The stripes are the documented hash (docs/format.md), the same in
    /// every process, and spread keys over every stripe.
    #[test]
    fn publish_stripes() {
        let s = |k: &str| publish_stripe(&EntryName::new(k).unwrap());
        assert_eq!(
            (s("k"), s("ok2"), s("ok"), s("cloud_00002")),
            (10, 7, 47, 3)
        );
        let mut seen = [0u32; PUBLISH_STRIPES as usize];
        for i in 0..6400 {
            seen[s(&format!("tile_{i:05}")) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (50..150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_712_345_678), "2024-04-05 19:34:38 UTC");
        assert_eq!(utc_time(1_796_615_798), "2026-12-07 03:56:38 UTC");
    }
}
