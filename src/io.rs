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

thread_local! {
    static PLAN: RefCell<Option<Arc<testing::FaultPlan>>> = const { RefCell::new(None) };
}

/// Consults the fault plan of the current thread, if any.
pub(crate) fn check_op(op: Op, path: &Path) -> io::Result<()> {
    check(op, path)
}

fn check(op: Op, path: &Path) -> io::Result<()> {
    PLAN.with(|p| match &*p.borrow() {
        Some(plan) => plan.tick(op, path),
        None => Ok(()),
    })
}

/// Fault injection for tests (not part of the stable API).
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Fails the N-th file-system operation made on the installing thread.
    #[derive(Debug, Default)]
    pub struct FaultPlan {
        count: AtomicU64,
        fail_at: AtomicU64,
        kind: parking_lot::Mutex<Option<io::ErrorKind>>,
        log: parking_lot::Mutex<Vec<(Op, PathBuf)>>,
        hook: Hook,
    }

    /// A function called before every operation (see [`FaultPlan::with_hook`]).
    type HookFn = Arc<dyn Fn(Op, &Path) + Send + Sync>;

    #[derive(Default)]
    struct Hook(parking_lot::Mutex<Option<HookFn>>);

    impl std::fmt::Debug for Hook {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0.lock().is_some() {
                "Hook(Some)"
            } else {
                "Hook(None)"
            })
        }
    }

    impl FaultPlan {
        /// A plan that fails operation number `n` (1-based); `0` never fails
        /// and only counts.
        pub fn fail_at(n: u64) -> Arc<Self> {
            let p = FaultPlan::default();
            p.fail_at.store(n, Ordering::Relaxed);
            Arc::new(p)
        }

        /// Sets the error kind injected (default: `Other`).
        pub fn with_kind(self: Arc<Self>, kind: io::ErrorKind) -> Arc<Self> {
            *self.kind.lock() = Some(kind);
            self
        }

        /// Calls `hook` on the installing thread before each operation (and
        /// before the fault, if any): a test can act at a chosen point of an
        /// operation, e.g. once a file was renamed away.
        pub fn with_hook(
            self: Arc<Self>,
            hook: impl Fn(Op, &Path) + Send + Sync + 'static,
        ) -> Arc<Self> {
            *self.hook.0.lock() = Some(Arc::new(hook));
            self
        }

        /// Operations seen so far.
        pub fn count(&self) -> u64 {
            self.count.load(Ordering::Relaxed)
        }

        /// The operations seen, in order.
        pub fn log(&self) -> Vec<(Op, PathBuf)> {
            self.log.lock().clone()
        }

        pub(crate) fn tick(&self, op: Op, path: &Path) -> io::Result<()> {
            let hook = self.hook.0.lock().clone();
            if let Some(hook) = hook {
                hook(op, path);
            }
            let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            self.log.lock().push((op, path.to_path_buf()));
            if n == self.fail_at.load(Ordering::Relaxed) {
                let kind = self.kind.lock().unwrap_or(io::ErrorKind::Other);
                return Err(io::Error::new(
                    kind,
                    format!("injected fault at {op:?} #{n}"),
                ));
            }
            Ok(())
        }
    }

    /// Installs `plan` for the current thread until the guard is dropped.
    pub fn install(plan: Arc<FaultPlan>) -> PlanGuard {
        PLAN.with(|p| *p.borrow_mut() = Some(plan));
        PlanGuard(())
    }

    /// Removes the thread's fault plan when dropped.
    #[derive(Debug)]
    pub struct PlanGuard(());

    impl Drop for PlanGuard {
        fn drop(&mut self) {
            PLAN.with(|p| *p.borrow_mut() = None);
        }
    }
}

/// A file handle whose writes go through the seam.
#[derive(Debug)]
pub(crate) struct SeamFile {
    file: File,
    path: PathBuf,
}

impl Write for SeamFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check(Op::Write, &self.path)?;
        self.file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        check(Op::Write, &self.path)?;
        self.file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary name `.ndo.<unique>.<tag>.tmp`.
pub(crate) fn temp_name(tag: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TEMP_PREFIX}{:x}-{:x}-{:x}.{tag}{TEMP_SUFFIX}",
        std::process::id(),
        n,
        nanos
    )
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
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_char_device() {
            return "a character device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
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

fn not_regular(path: &Path, what: &str) -> Error {
    Error::corrupt(path, format!("is {what}, not a regular file"))
}

/// Reads a whole regular file of at most `limit` bytes, opened as
/// [`open_regular`] does; a larger file is [`Error::Corrupt`] (never an
/// unbounded read).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular(path, Access::Read)?;
    let len = file.metadata().ctx("stat", path)?.len();
    if len > limit {
        return Err(Error::corrupt(
            path,
            format!("is {len} bytes, more than the {limit} bytes allowed for it"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // One byte more than the limit tells a file that grew since the stat.
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .ctx("read", path)?;
    if buf.len() as u64 > limit {
        return Err(Error::corrupt(
            path,
            format!("is more than the {limit} bytes allowed for it"),
        ));
    }
    Ok(buf)
}

/// Creates a new file that must not exist (never follows a symlink).
pub(crate) fn create_new(path: &Path, private: bool) -> Result<File> {
    check(Op::Create, path).ctx("create", path)?;
    let mut o = OpenOptions::new();
    o.write(true).read(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    o.open(path).ctx("create", path)
}

/// `fsync` of a file's data and metadata.
pub(crate) fn sync_file(file: &File, path: &Path) -> Result<()> {
    check(Op::Sync, path).ctx("fsync", path)?;
    file.sync_all().ctx("fsync", path)
}

/// Renames `from` over `to` (replacing `to`, never following a symlink at `to`).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    check(Op::Rename, to).ctx("rename into", to)?;
    fs::rename(from, to).ctx("rename into", to)
}

/// `fsync` of a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    check(Op::SyncDir, dir).ctx("fsync directory", dir)?;
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx("fsync directory", dir)
    }
    #[cfg(not(unix))]
    Ok(())
}

/// Creates a hard link `link` to `src`.
pub(crate) fn hard_link(src: &Path, link: &Path) -> Result<()> {
    check(Op::Link, link).ctx("link", link)?;
    fs::hard_link(src, link).ctx("link", link)
}

/// Removes a file.
pub(crate) fn remove(path: &Path) -> Result<()> {
    check(Op::Remove, path).ctx("remove", path)?;
    fs::remove_file(path).ctx("remove", path)
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
    path: PathBuf,
    writer: Option<BufWriter<SeamFile>>,
}

impl TempFile {
    /// Creates `.ndo.<unique>.<tag>.tmp` in `dir`.
    pub(crate) fn create(dir: &Path, tag: &str, private: bool) -> Result<Self> {
        loop {
            let path = dir.join(temp_name(tag));
            match create_new(&path, private) {
                Ok(file) => {
                    return Ok(TempFile {
                        writer: Some(BufWriter::with_capacity(
                            1 << 16,
                            SeamFile {
                                file,
                                path: path.clone(),
                            },
                        )),
                        path,
                    })
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

    /// Flushes buffered bytes and closes the file (no `fsync`: the caller
    /// syncs the whole file system). The file stays until renamed or dropped.
    pub(crate) fn flush_and_close(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.writer().flush().ctx("write", &path)?;
        self.writer = None;
        Ok(())
    }

    /// Flushes buffered bytes and `fsync`s the file.
    pub(crate) fn flush_and_sync(&mut self) -> Result<()> {
        let path = self.path.clone();
        self.writer().flush().ctx("write", &path)?;
        sync_file(self.file(), &path)
    }

    /// Renames the temporary file to `target` (the caller syncs the
    /// directory). On success the file is no longer removed on drop.
    pub(crate) fn rename_to(mut self, target: &Path) -> Result<()> {
        self.writer = None;
        rename(&self.path, target)?;
        self.writer = None;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.writer = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Atomically publishes `target`: writes it through `fill` into a fresh
/// temporary file beside it, `fsync`s, renames and `fsync`s the directory.
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
    let dir = parent_dir(target);
    let mut tmp = TempFile::create(dir, "part", private)?;
    fill(tmp.writer())?;
    tmp.flush_and_sync()?;
    let id = FileId::of_file(tmp.file(), tmp.path())?;
    {
        let _g = OWNERSHIP.lock();
        tmp.rename_to(target)?;
    }
    sync_dir(dir)?;
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
