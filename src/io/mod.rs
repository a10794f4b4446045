//! The crate's file-system seam and the atomic publish protocol.
//!
//! Every create, write, fsync, rename, directory fsync and remove that can
//! change what is stored goes through this module, so tests can make the
//! N-th operation fail ([`testing::FaultPlan`]) and check that nothing stored
//! was lost.
//!
//! Atomic publish: a unique temporary file is created in the target
//! directory with `create_new` (`O_CREAT | O_EXCL`, so a planted symlink is
//! never followed), written, `fsync`ed, renamed over the final name, and the
//! directory is `fsync`ed. On any error the temporary file is removed and the
//! previous file is left untouched.
//!
//! A store holds its directory open as a [`Dir`]: every operation on its
//! files is made relative to the directory's descriptor (`openat`,
//! `renameat`, `linkat`, `unlinkat`, `fsync`), through the same fault plan.

#[cfg(feature = "testing")]
use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};

/// Prefix of every temporary file the crate creates.
pub(crate) const TEMP_PREFIX: &str = ".ndo.";
/// Suffix of every temporary file the crate creates.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// The kinds of file-system operation that go through the seam.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Creating a file.
    Create,
    /// Writing bytes to a file.
    Write,
    /// `fsync` of a file.
    Sync,
    /// Renaming a file.
    Rename,
    /// `fsync` of a directory.
    SyncDir,
    /// Removing a file.
    Remove,
    /// Creating a hard link.
    Link,
}

#[cfg(feature = "testing")]
thread_local! {
    static PLAN: RefCell<Option<Arc<testing::FaultPlan>>> = const { RefCell::new(None) };
}

/// Consults the calling thread's fault plan (only with the `testing`
/// feature; otherwise nothing, inlined away).
#[inline(always)]
fn check(op: Op, path: &Path) -> io::Result<()> {
    #[cfg(feature = "testing")]
    {
        PLAN.with(|p| match &*p.borrow() {
            Some(plan) => plan.tick(op, path),
            None => Ok(()),
        })
    }
    #[cfg(not(feature = "testing"))]
    {
        let _ = (op, path);
        Ok(())
    }
}

/// Hands an operation that was done to the thread's recorder (a no-op
/// without the `testing` feature: the event is not even built).
macro_rules! record {
    ($event:expr) => {{
        #[cfg(feature = "testing")]
        record($event);
    }};
}

/// Hands an operation that was done to the thread's recorder, if any (see
/// [`testing::FaultPlan::with_recorder`]); `event` is built only then.
#[cfg(feature = "testing")]
fn record(event: impl FnOnce() -> testing::Event) {
    PLAN.with(|p| {
        if let Some(plan) = &*p.borrow() {
            plan.record(event);
        }
    });
}

/// The calling thread's fault plan, to be installed with [`adopt_plan`] on
/// a thread it spawns to do file-system work for it.
#[cfg(feature = "testing")]
pub(crate) fn current_plan() -> Option<Arc<testing::FaultPlan>> {
    PLAN.with(|p| p.borrow().clone())
}

/// Installs on the calling (spawned) thread the plan its spawner had.
#[cfg(feature = "testing")]
pub(crate) fn adopt_plan(plan: Option<Arc<testing::FaultPlan>>) -> Option<testing::PlanGuard> {
    plan.map(testing::install)
}

/// Without the `testing` feature there is no plan to hand on.
#[cfg(not(feature = "testing"))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoPlan;

/// Without the `testing` feature there is no plan to hand on.
#[cfg(not(feature = "testing"))]
pub(crate) fn current_plan() -> NoPlan {
    NoPlan
}

/// Without the `testing` feature there is no plan to install.
#[cfg(not(feature = "testing"))]
pub(crate) fn adopt_plan(plan: NoPlan) -> NoPlan {
    plan
}

/// Fault injection for tests (not part of the stable API; compiled only
/// with the `testing` feature).
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

/// A file handle whose writes go through the seam.
#[derive(Debug)]
pub(crate) struct SeamFile {
    file: File,
    path: PathBuf,
    /// Bytes written so far (files are only ever written from the start,
    /// in sequence): the offset of the next write, for the recorder.
    pos: u64,
}

impl SeamFile {
    /// The file, for writes at offsets of its own (parallel downloads).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Its path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn written(&mut self, data: &[u8]) {
        #[cfg(feature = "testing")]
        let offset = self.pos;
        self.pos += data.len() as u64;
        record!(|| testing::Event::Write {
            path: self.path.clone(),
            offset,
            data: data.to_vec(),
        });
    }
}

impl Write for SeamFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check(Op::Write, &self.path)?;
        let n = self.file.write(buf)?;
        self.written(&buf[..n]);
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        check(Op::Write, &self.path)?;
        self.file.write_all(buf)?;
        self.written(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fills a staged file through the seam (the path is the final one, for
/// error messages).
pub(crate) type Fill<'a> = Box<dyn FnOnce(&mut BufWriter<SeamFile>, &Path) -> Result<()> + 'a>;

/// The one counter of [`unique_id`].
static UNIQUE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh unique id: this process, a counter of the process and the time.
/// The crate's one generator of unique ids, rendered as each use needs
/// (temporary names, writer registrations, remote objects).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UniqueId {
    pid: u32,
    counter: u64,
    nanos: u128,
}

/// The next value of the process's one counter (what a registered
/// writer's temporary names add to its registration id: no process id or
/// clock needed).
pub(crate) fn next_counter() -> u64 {
    UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh [`UniqueId`].
pub(crate) fn unique_id() -> UniqueId {
    UniqueId {
        pid: std::process::id(),
        counter: next_counter(),
        nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    }
}

impl UniqueId {
    /// `<pid>-<counter>-<nanos>` in hexadecimal (never contains a `.`): the
    /// `<unique>` part of a temporary name made outside a store.
    pub(crate) fn temp(self) -> String {
        format!(
            "{:x}-{:x}-{:x}",
            self.pid,
            self.counter,
            self.nanos % 1_000_000_000
        )
    }

    /// `<pid>-<counter>-<millis>` in base 36: a writer registration id,
    /// unique among the processes of a machine and never reused by a later
    /// process with the same pid. Base 36 keeps every temporary name of a
    /// 200-byte entry name within 255 bytes.
    pub(crate) fn registration(self) -> String {
        format!(
            "{}-{}-{}",
            base36(u64::from(self.pid)),
            base36(self.counter),
            base36((self.nanos / 1_000_000) as u64)
        )
    }

    /// 20 lowercase hexadecimal digits, unique across machines: a hash of
    /// the host name, the boot id, the thread and this id.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn hex20(self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.nanos.to_le_bytes());
        h.update(self.pid.to_le_bytes());
        h.update(self.counter.to_le_bytes());
        h.update(format!("{:?}", std::thread::current().id()).as_bytes());
        // The machine, read once per process.
        static MACHINE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        h.update(MACHINE.get_or_init(|| {
            [
                "/proc/sys/kernel/hostname",
                "/proc/sys/kernel/random/boot_id",
            ]
            .iter()
            .filter_map(|f| std::fs::read(f).ok())
            .flatten()
            .collect()
        }));
        let digest = h.finalize();
        digest[..10].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A fresh `<unique>` part of a temporary name (see [`UniqueId::temp`]).
/// Temporary files of a store carry their writer's registration instead
/// (see [`Dir::temp_unique`]).
pub(crate) fn temp_unique() -> String {
    unique_id().temp()
}

/// A fresh writer registration id (see [`UniqueId::registration`]).
pub(crate) fn registration_id() -> String {
    unique_id().registration()
}

/// `n` in base 36 (digits and lowercase letters).
pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(13);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The registration id a temporary name's `<unique>` part carries
/// (`<registration>-<counter>`, four dash-separated fields), or `None` for
/// a name made without one (by an older version, or outside a store).
pub(crate) fn temp_owner(unique: &str) -> Option<&str> {
    let (owner, counter) = unique.rsplit_once('-')?;
    let digits = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    let parts: Vec<&str> = owner.split('-').collect();
    (digits(counter) && parts.len() == 3 && parts.iter().all(|p| digits(p))).then_some(owner)
}

/// The temporary name `.ndo.<unique>.<tag>.tmp`: files staged together by
/// one operation share `unique`.
pub(crate) fn temp_name_with(unique: &str, tag: &str) -> String {
    format!("{TEMP_PREFIX}{unique}.{tag}{TEMP_SUFFIX}")
}

/// Whether `name` is one of the crate's temporary file names.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// How [`open_regular`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read only.
    Read,
    /// Read and write (for read-write maps).
    ReadWrite,
}

/// What a file that is not a regular file is, in words for an error.
pub(crate) fn file_kind(ft: &fs::FileType) -> &'static str {
    Kind::of(ft).describe()
}

/// Opens an existing file that must be a regular file, as every file the
/// crate reads from a store or pack directory is opened: without following
/// a symbolic link at `path` (`O_NOFOLLOW`) and without blocking
/// (`O_NONBLOCK`, so a FIFO with no writer does not hang the open), then
/// checked with `fstat` on the open descriptor (so the check and the read
/// see the same file). A symbolic link, FIFO, socket, device or directory is
/// [`Error::Corrupt`] naming `path` and what was found there.
pub(crate) fn open_regular(path: &Path, access: Access) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(access == Access::ReadWrite);
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    }
    let file = match o.open(path) {
        Ok(f) => f,
        Err(e) => {
            // A symbolic link (ELOOP), a directory opened for writing
            // (EISDIR), a socket (ENXIO): name what is there.
            return Err(match fs::symlink_metadata(path) {
                Ok(m) if !m.is_file() => not_regular(path, file_kind(&m.file_type())),
                _ => Error::io("open", path, e),
            });
        }
    };
    let md = file.metadata().ctx("stat", path)?;
    if !md.is_file() {
        return Err(not_regular(path, file_kind(&md.file_type())));
    }
    Ok(file)
}

/// What [`open_argument`] may accept at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// A regular file only.
    File,
    /// A regular file or a directory.
    FileOrDir,
}

impl Want {
    fn accepts(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Want::File | Want::FileOrDir, Kind::File) | (Want::FileOrDir, Kind::Dir)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Want::File => "a regular file",
            Want::FileOrDir => "a regular file or directory",
        }
    }
}

/// Opens a path a user names (a command-line argument, the path given to
/// an inspection function) read-only, as the crate opens every file it
/// reads, except that a symbolic link at `path` is followed (users pass
/// links legitimately): without blocking (`O_NONBLOCK`, so a FIFO with no
/// writer does not hang the open), then checked with `fstat` on the open
/// descriptor before anything is read. Returns the descriptor and whether
/// it is a regular file or a directory.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming `path` and what it is (`"is a FIFO, not
/// a regular file or directory"`) when it is not what `want` accepts;
/// [`Error::NotFound`] and the other open errors as usual.
pub(crate) fn open_argument(path: &Path, want: Want) -> Result<(File, Kind)> {
    let refuse = |kind: Kind| Error::InvalidInput {
        path: path.to_path_buf(),
        reason: format!("is {}, not {}", kind.describe(), want.describe()),
    };
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(OFlags::NONBLOCK.bits() as i32);
    }
    let file = match o.open(path) {
        Ok(f) => f,
        Err(e) => {
            // A socket cannot be opened (ENXIO): name what is there.
            return Err(match fs::metadata(path) {
                Ok(m) if !want.accepts(Kind::of(&m.file_type())) => {
                    refuse(Kind::of(&m.file_type()))
                }
                _ => Error::io("open", path, e),
            });
        }
    };
    let kind = Kind::of(&file.metadata().ctx("stat", path)?.file_type());
    if !want.accepts(kind) {
        return Err(refuse(kind));
    }
    Ok((file, kind))
}

fn not_regular_dir(path: &Path, what: &str) -> Error {
    Error::corrupt(
        path,
        format!("is {what}, not a directory (never followed or used)"),
    )
}

fn not_regular(path: &Path, what: &str) -> Error {
    Error::corrupt(path, format!("is {what}, not a regular file"))
}

/// Reads a whole regular file of at most `limit` bytes, opened as
/// [`open_regular`] does; a larger file is [`Error::Corrupt`] (never an
/// unbounded read).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path, Access::Read)?;
    let len = file.metadata().ctx("stat", path)?.len();
    read_file_bounded(file, len, || path.to_path_buf(), limit)
}

/// Reads the whole of the open regular `file` (named by `path` in errors,
/// made only for an error; `len` bytes long by its `fstat`), of at most
/// `limit` bytes.
fn read_file_bounded(
    file: File,
    len: u64,
    path: impl Fn() -> PathBuf,
    limit: u64,
) -> Result<Vec<u8>> {
    use std::io::Read;
    if len > limit {
        return Err(Error::corrupt(
            &path(),
            format!("is {len} bytes, more than the {limit} bytes allowed for it"),
        ));
    }
    // One read of one byte more than the `fstat` said: a read of a regular
    // file returns fewer bytes than asked for only at its end, so `len`
    // bytes are the whole file. Anything else (the file grew or shrank
    // since the `fstat`) reads on to the end.
    let mut buf = vec![0u8; len as usize + 1];
    let n = loop {
        match (&file).read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path(), e)),
        }
    };
    buf.truncate(n);
    if n as u64 != len {
        // One byte more than the limit tells a file that grew past it.
        (&file)
            .take((limit + 1).saturating_sub(n as u64))
            .read_to_end(&mut buf)
            .map_err(|e| Error::io("read", path(), e))?;
    }
    if buf.len() as u64 > limit {
        return Err(Error::corrupt(
            &path(),
            format!("is more than the {limit} bytes allowed for it"),
        ));
    }
    Ok(buf)
}

mod dir;
pub(crate) use dir::{Dir, Found, Kind};

/// `fsync` of a file's data and metadata.
pub(crate) fn sync_file(file: &File, path: &Path) -> Result<()> {
    check(Op::Sync, path).ctx("fsync", path)?;
    file.sync_all().ctx("fsync", path)?;
    record!(|| testing::Event::Fsync {
        path: path.to_path_buf(),
    });
    Ok(())
}

/// `fsync` of a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    check(Op::SyncDir, dir).ctx("fsync directory", dir)?;
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)?;
    record!(|| testing::Event::SyncDir {
        path: dir.to_path_buf(),
    });
    Ok(())
}

/// Removes a file.
pub(crate) fn remove(path: &Path) -> Result<()> {
    check(Op::Remove, path).ctx("remove", path)?;
    fs::remove_file(path).ctx("remove", path)?;
    record!(|| testing::Event::Remove {
        path: path.to_path_buf(),
    });
    Ok(())
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file in a target directory, removed on drop unless renamed.
#[derive(Debug)]
pub(crate) struct TempFile {
    dir: Dir,
    /// The file name in `dir` (empty once renamed).
    name: String,
    path: PathBuf,
    writer: Option<BufWriter<SeamFile>>,
}

impl TempFile {
    /// Creates `.ndo.<unique>.<tag>.tmp` in the directory at `dir`.
    pub(crate) fn create(dir: &Path, tag: &str, private: bool) -> Result<Self> {
        Self::create_in(&Dir::open(dir)?, tag, private)
    }

    /// Creates `.ndo.<unique>.<tag>.tmp` in `dir`.
    pub(crate) fn create_in(dir: &Dir, tag: &str, private: bool) -> Result<Self> {
        loop {
            let name = dir.temp_name(tag);
            match dir.create_new(&name, private) {
                Ok(file) => {
                    let path = dir.join(&name);
                    return Ok(TempFile {
                        dir: dir.clone(),
                        name,
                        writer: Some(BufWriter::with_capacity(
                            1 << 16,
                            SeamFile {
                                file,
                                path: path.clone(),
                                pos: 0,
                            },
                        )),
                        path,
                    });
                }
                Err(Error::Io { ref source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The temporary path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file's name in its directory.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The buffered writer.
    pub(crate) fn writer(&mut self) -> &mut BufWriter<SeamFile> {
        self.writer.as_mut().expect("temp file already committed")
    }

    /// The underlying file.
    pub(crate) fn file(&self) -> &File {
        &self
            .writer
            .as_ref()
            .expect("temp file already committed")
            .get_ref()
            .file
    }

    /// Gives the file the permission bits `mode` (those of the file it
    /// replaces).
    pub(crate) fn set_mode(&self, mode: u32) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.file()
                .set_permissions(fs::Permissions::from_mode(mode & 0o777))
                .ctx("chmod", &self.path)
        }
        #[cfg(not(unix))]
        {
            let _ = mode;
            Ok(())
        }
    }

    /// Flushes buffered bytes and closes the file (no `fsync`: the caller
    /// syncs the whole file system). The file stays until renamed or dropped.
    pub(crate) fn flush_and_close(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.writer().flush().ctx("write", &path)?;
        self.writer = None;
        Ok(())
    }

    /// Flushes buffered bytes and starts writing them to the disk without
    /// waiting (Linux: `posix_fadvise(POSIX_FADV_DONTNEED)`, which starts
    /// the write-back of the file's dirty pages; elsewhere only the flush).
    /// Its `fsync` is still needed: this only has the file system allocate
    /// and write the file now, so that an `fsync` of another file (which
    /// commits the file system's journal) commits this file's too, and this
    /// file's own `fsync` then finds nothing left to commit. Errors of the
    /// hint are ignored (the `fsync` reports any).
    pub(crate) fn flush_and_start_writeback(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.writer().flush().ctx("write", &path)?;
        #[cfg(target_os = "linux")]
        let _ = rustix::fs::fadvise(self.file(), 0, None, rustix::fs::Advice::DontNeed);
        Ok(())
    }

    /// Flushes buffered bytes and `fsync`s the file.
    pub(crate) fn flush_and_sync(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.writer().flush().ctx("write", &path)?;
        sync_file(self.file(), &path)
    }

    /// Renames the temporary file to `target`, a path in the same directory
    /// (the caller syncs the directory). On success the file is no longer
    /// removed on drop.
    pub(crate) fn rename_to(self, target: &Path) -> Result<()> {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::corrupt(target, "not a file name"))?;
        self.rename_into(&name)
    }

    /// Renames the temporary file to `name` in its directory (the caller
    /// syncs the directory). On success the file is no longer removed on
    /// drop.
    pub(crate) fn rename_into(mut self, name: &str) -> Result<()> {
        self.writer = None;
        self.dir.rename(&self.name, name)?;
        self.name = String::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            self.writer = None;
            self.dir.remove_quietly(&self.name);
        }
    }
}

/// Atomically publishes `target`: writes it through `fill` into a fresh
/// temporary file beside it, `fsync`s, renames and `fsync`s the directory.
/// The directory is opened once, and every step is relative to it.
///
/// Returns the file's identity after the rename. On error nothing at
/// `target` has changed (unless the final directory fsync failed, in which
/// case the new file is in place but its durability is unconfirmed) and no
/// temporary file is left.
pub(crate) fn publish(
    target: &Path,
    private: bool,
    fill: impl FnOnce(&mut BufWriter<SeamFile>) -> Result<()>,
) -> Result<FileId> {
    let dir = Dir::open(parent_dir(target))?;
    let mut tmp = TempFile::create_in(&dir, "part", private)?;
    fill(tmp.writer())?;
    tmp.flush_and_sync()?;
    let id = FileId::of_file(tmp.file(), tmp.path())?;
    {
        let _g = OWNERSHIP.lock();
        tmp.rename_to(target)?;
    }
    dir.sync()?;
    Ok(id)
}

/// Serialises renames into owned paths with purge-on-drop deletions, so a
/// dropped array never deletes a file that has just replaced its own.
pub(crate) static OWNERSHIP: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Identity of a file (device and inode on Unix; length and mtime elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(crate) fn from_meta(m: &fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: m.dev(),
                ino: m.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            FileId {
                dev: m.len(),
                ino: m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
            }
        }
    }

    pub(crate) fn of_file(f: &File, path: &Path) -> Result<Self> {
        Ok(Self::from_meta(&f.metadata().ctx("stat", path)?))
    }

    /// The identity of whatever `path` names now (not following symlinks).
    pub(crate) fn of_path(path: &Path) -> Option<Self> {
        fs::symlink_metadata(path).ok().map(|m| Self::from_meta(&m))
    }

    /// Inode number (Unix).
    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }
}

/// Removes `path` if it is still the file identified by `id`. Used by
/// purge-on-drop.
pub(crate) fn remove_if_same(path: &Path, id: FileId) -> Result<bool> {
    let _g = OWNERSHIP.lock();
    if FileId::of_path(path) == Some(id) {
        remove(path)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    /// Every temporary name of the longest entry name fits a file name
    /// (255 bytes), with a registration id and a temporary counter as large
    /// as a long-lived writer makes them: the largest Linux pid, a
    /// thousandth store opened by the process, the clock in the year 2100,
    /// two billion temporary files.
    #[test]
    fn temporary_names_of_the_longest_entry_name_fit() {
        let pid = 4_194_304u64; // PID_MAX_LIMIT on 64-bit Linux
        let year_2100_ms = 4_102_444_800_000u64;
        let id = format!("{}-{}-{}", base36(pid), base36(1_000), base36(year_2100_ms));
        let unique = format!("{id}-{}", base36(2_000_000_000));
        let key = "y".repeat(crate::name::MAX_NAME_BYTES);
        for tag in [
            ".npy",
            ".meta.json",
            ".npy.bak",
            ".meta.json.bak",
            ".npy.del",
            ".meta.json.del",
        ] {
            let n = temp_name_with(&unique, &format!("{key}{tag}"));
            assert!(n.len() <= 255, "{} bytes: {n}", n.len());
            assert_eq!(temp_owner(&unique), Some(id.as_str()));
        }
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
