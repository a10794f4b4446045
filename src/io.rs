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
        recorder: Recorder,
    }

    /// A file-system operation that was done, with its arguments, as handed
    /// to a recorder (see [`FaultPlan::with_recorder`]). Paths are full
    /// paths; every event is reported after the operation succeeded.
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum Event {
        /// A new file was created (`O_CREAT | O_EXCL`), with its inode.
        Create {
            /// The new file.
            path: PathBuf,
            /// Its inode number (`0` off Unix).
            ino: u64,
        },
        /// Bytes were written at `offset` of the file opened at `path`.
        Write {
            /// The file (the name it was created under).
            path: PathBuf,
            /// Where in the file.
            offset: u64,
            /// What was written.
            data: Vec<u8>,
        },
        /// `fsync` of the file at `path`.
        Fsync {
            /// The file.
            path: PathBuf,
        },
        /// `fsync` of the directory at `path`.
        SyncDir {
            /// The directory.
            path: PathBuf,
        },
        /// `syncfs(2)` of the file system holding the directory at `path`.
        SyncFs {
            /// The directory.
            path: PathBuf,
        },
        /// `from` was renamed over `to`.
        Rename {
            /// The old name.
            from: PathBuf,
            /// The new name.
            to: PathBuf,
        },
        /// The hard link `dst` to `src` was made.
        Link {
            /// The existing name.
            src: PathBuf,
            /// The new name.
            dst: PathBuf,
        },
        /// The name `path` was unlinked.
        Remove {
            /// The removed name.
            path: PathBuf,
        },
    }

    /// A function given every [`Event`] (see [`FaultPlan::with_recorder`]).
    type RecordFn = Arc<dyn Fn(Event) + Send + Sync>;

    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Option<RecordFn>>);

    impl std::fmt::Debug for Recorder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0.lock().is_some() {
                "Recorder(Some)"
            } else {
                "Recorder(None)"
            })
        }
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

        /// Calls `recorder` with every file-system operation done while the
        /// plan is installed (creates, writes with their offset and bytes,
        /// `fsync`s, directory `fsync`s, `syncfs`, renames, links, unlinks,
        /// including the quiet ones of rollbacks and clean-ups), after it
        /// succeeded, in the order they were done. Threads the crate spawns
        /// for file-system work (the shard writers, the pack writer's
        /// background `fsync`) install the plan of the thread that spawned
        /// them. Writes through a read-write memory map of a standalone
        /// array do not go through the seam and are not recorded (only the
        /// `fsync` after them is).
        pub fn with_recorder(
            self: Arc<Self>,
            recorder: impl Fn(Event) + Send + Sync + 'static,
        ) -> Arc<Self> {
            *self.recorder.0.lock() = Some(Arc::new(recorder));
            self
        }

        pub(crate) fn record(&self, event: impl FnOnce() -> Event) {
            let recorder = self.recorder.0.lock().clone();
            if let Some(r) = recorder {
                r(event());
            }
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
    /// Bytes written so far (files are only ever written from the start,
    /// in sequence): the offset of the next write, for the recorder.
    pos: u64,
}

impl SeamFile {
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

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh `<unique>` part of a temporary name (process id, counter, time;
/// never contains a `.`). Temporary files of a store carry their writer's
/// registration instead (see [`Dir::temp_unique`]).
pub(crate) fn temp_unique() -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}-{:x}", std::process::id(), n, nanos)
}

static REGISTRATION_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh registration id `<pid>-<counter>-<millis>` (base 36; the time
/// in milliseconds since the Unix epoch): unique among the processes of a
/// machine, never reused by a later process with the same pid. Base 36
/// keeps every temporary name of a 200-byte entry name within 255 bytes.
pub(crate) fn registration_id() -> String {
    let n = REGISTRATION_COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        base36(u64::from(std::process::id())),
        base36(n),
        base36(millis)
    )
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
    read_file_bounded(file, path, limit)
}

/// Reads the whole of the open regular `file` (named `path` in errors), of
/// at most `limit` bytes.
fn read_file_bounded(file: File, path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
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

/// What is found at a name (a symbolic link is never followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else.
    Other,
}

impl Kind {
    /// What it is, in words for an error (`"a FIFO"`).
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Other => "not a regular file",
        }
    }

    fn of(ft: &fs::FileType) -> Kind {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                return Kind::Fifo;
            }
            if ft.is_socket() {
                return Kind::Socket;
            }
            if ft.is_block_device() {
                return Kind::BlockDevice;
            }
            if ft.is_char_device() {
                return Kind::CharDevice;
            }
        }
        if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        }
    }
}

/// What [`Dir::stat`] found at a name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    /// What the name is (not following a symbolic link).
    pub kind: Kind,
    /// Its identity.
    pub id: FileId,
    /// Its permission bits (`0o777` part of the mode; `0` off Unix).
    pub mode: u32,
    /// Its length in bytes.
    pub len: u64,
}

impl Found {
    /// Whether the name is a regular file.
    pub(crate) fn is_file(&self) -> bool {
        self.kind == Kind::File
    }
}

/// A directory held open: every file of it the crate opens, creates,
/// renames, links or removes, and every `fsync` of it, is done relative to
/// this descriptor (`openat`, `renameat`, `linkat`, `unlinkat`), never
/// through its path again. A path swapped for a symbolic link, or a
/// directory renamed away and replaced, while the directory is held cannot
/// redirect a write or a deletion elsewhere.
///
/// Names are single file names in the directory. Each operation that
/// changes what is stored goes through the fault plan with the full path
/// (as the path-based helpers above do), and errors name the full path.
///
/// This is the local-directory backend of the store; the operations are
/// the ones a storage seam needs (open, create, rename, link, remove, sync,
/// list).
#[derive(Clone)]
pub(crate) struct Dir(Arc<DirInner>);

struct DirInner {
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
    /// The registration of the writer that owns the temporary files made
    /// here (see [`Dir::set_owner`]); unset: the process-wide names of
    /// [`temp_unique`].
    owner: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dir").field(&self.0.path).finish()
    }
}

#[cfg(unix)]
fn errno(e: rustix::io::Errno) -> io::Error {
    e.into()
}

impl Dir {
    /// Opens the directory at `path`. The path is resolved once (it may be
    /// given through a symbolic link); everything after is relative to the
    /// descriptor.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`] (a directory the
    /// caller may not read), [`Error::Corrupt`] when `path` is not a
    /// directory.
    pub(crate) fn open(path: &Path) -> Result<Dir> {
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC;
            match rustix::fs::open(path, flags, Mode::empty()) {
                Ok(fd) => Ok(Dir(Arc::new(DirInner {
                    path: path.to_path_buf(),
                    fd,
                    owner: std::sync::OnceLock::new(),
                }))),
                Err(rustix::io::Errno::NOTDIR) if fs::metadata(path).is_ok() => {
                    Err(Error::corrupt(path, "not a directory"))
                }
                Err(e) => Err(Error::io("open directory", path, errno(e))),
            }
        }
        #[cfg(not(unix))]
        {
            let md = fs::metadata(path).ctx("open directory", path)?;
            if !md.is_dir() {
                return Err(Error::corrupt(path, "not a directory"));
            }
            Ok(Dir(Arc::new(DirInner {
                path: path.to_path_buf(),
                owner: std::sync::OnceLock::new(),
            })))
        }
    }

    /// Marks the temporary files made in this directory from now on as the
    /// registered writer `id`'s: their `<unique>` part is `<id>-<counter>`,
    /// so that recovery in another process can tell whether the writer that
    /// staged them is alive. Set once; later calls change nothing.
    pub(crate) fn set_owner(&self, id: String) {
        let _ = self.0.owner.set(id);
    }

    /// A fresh `<unique>` part for a temporary name in this directory.
    pub(crate) fn temp_unique(&self) -> String {
        match self.0.owner.get() {
            Some(owner) => {
                let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
                format!("{owner}-{}", base36(n))
            }
            None => temp_unique(),
        }
    }

    /// A fresh temporary name `.ndo.<unique>.<tag>.tmp` in this directory.
    pub(crate) fn temp_name(&self, tag: &str) -> String {
        temp_name_with(&self.temp_unique(), tag)
    }

    /// Opens the subdirectory `name` (creating it, mode `0755`, when
    /// `create`), never through a symbolic link. `None`: it does not exist
    /// and `create` is off.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming it when something else than a directory is
    /// there (a symbolic link, even to a directory, a FIFO, a file); I/O
    /// errors.
    pub(crate) fn open_subdir(&self, name: &str, create: bool) -> Result<Option<Dir>> {
        let path = self.join(name);
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            if create {
                match rustix::fs::mkdirat(&self.0.fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(Error::io("create directory", &path, errno(e))),
                }
            }
            let flags = OFlags::RDONLY
                | OFlags::DIRECTORY
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC;
            match rustix::fs::openat(&self.0.fd, name, flags, Mode::empty()) {
                Ok(fd) => Ok(Some(Dir(Arc::new(DirInner {
                    path,
                    fd,
                    owner: std::sync::OnceLock::new(),
                })))),
                Err(rustix::io::Errno::NOENT) if !create => Ok(None),
                Err(e) => match self.stat(name) {
                    Some(f) if f.kind != Kind::Dir => {
                        Err(not_regular_dir(&path, f.kind.describe()))
                    }
                    _ => Err(Error::io("open directory", &path, errno(e))),
                },
            }
        }
        #[cfg(not(unix))]
        {
            if create {
                fs::create_dir_all(&path).ctx("create directory", &path)?;
            }
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => Ok(Some(Dir(Arc::new(DirInner {
                    path,
                    owner: std::sync::OnceLock::new(),
                })))),
                Ok(m) => Err(not_regular_dir(&path, Kind::of(&m.file_type()).describe())),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
                Err(e) => Err(Error::io("open directory", &path, e)),
            }
        }
    }

    /// The path the directory was opened with (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.0.path
    }

    /// The path of `name` in the directory (for messages and the fault plan).
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.path.join(name)
    }

    /// What is at `name` now, without following a symbolic link (`None`:
    /// nothing, or it cannot be examined).
    pub(crate) fn stat(&self, name: &str) -> Option<Found> {
        #[cfg(unix)]
        {
            use rustix::fs::{AtFlags, FileType};
            let st = rustix::fs::statat(&self.0.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
            let kind = match FileType::from_raw_mode(st.st_mode as _) {
                FileType::RegularFile => Kind::File,
                FileType::Directory => Kind::Dir,
                FileType::Symlink => Kind::Symlink,
                FileType::Fifo => Kind::Fifo,
                FileType::Socket => Kind::Socket,
                FileType::CharacterDevice => Kind::CharDevice,
                FileType::BlockDevice => Kind::BlockDevice,
                _ => Kind::Other,
            };
            #[allow(clippy::unnecessary_cast)]
            Some(Found {
                kind,
                id: FileId {
                    dev: st.st_dev as u64,
                    ino: st.st_ino as u64,
                },
                mode: (st.st_mode as u32) & 0o777,
                len: u64::try_from(st.st_size).unwrap_or(0),
            })
        }
        #[cfg(not(unix))]
        {
            let m = fs::symlink_metadata(self.join(name)).ok()?;
            Some(Found {
                kind: Kind::of(&m.file_type()),
                id: FileId::from_meta(&m),
                mode: 0,
                len: m.len(),
            })
        }
    }

    /// Opens `name`, which must be a regular file, as [`open_regular`]
    /// opens a path: `O_NOFOLLOW | O_NONBLOCK`, then `fstat`.
    pub(crate) fn open_regular(&self, name: &str, access: Access) -> Result<File> {
        let path = self.join(name);
        #[cfg(unix)]
        let opened = {
            use rustix::fs::{Mode, OFlags};
            let mode = match access {
                Access::Read => OFlags::RDONLY,
                Access::ReadWrite => OFlags::RDWR,
            };
            let flags = mode | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            rustix::fs::openat(&self.0.fd, name, flags, Mode::empty())
                .map(File::from)
                .map_err(errno)
        };
        #[cfg(not(unix))]
        let opened = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(&path);
        self.checked_regular(name, &path, opened, "open")
    }

    /// A freshly opened `file` at `name` (or the error opening it) as a
    /// regular file, or an error saying what is there instead.
    fn checked_regular(
        &self,
        name: &str,
        path: &Path,
        opened: io::Result<File>,
        op: &'static str,
    ) -> Result<File> {
        let file = match opened {
            Ok(f) => f,
            // A symbolic link (ELOOP), a directory opened for writing
            // (EISDIR), a socket (ENXIO): name what is there.
            Err(e) => {
                return Err(match self.stat(name) {
                    Some(f) if !f.is_file() => not_regular(path, f.kind.describe()),
                    _ => Error::io(op, path, e),
                })
            }
        };
        let md = file.metadata().ctx("stat", path)?;
        if !md.is_file() {
            return Err(not_regular(path, Kind::of(&md.file_type()).describe()));
        }
        Ok(file)
    }

    /// Reads the whole of `name`, a regular file of at most `limit` bytes
    /// (see [`read_bounded`]).
    pub(crate) fn read_bounded(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let file = self.open_regular(name, Access::Read)?;
        read_file_bounded(file, &self.join(name), limit)
    }

    /// Opens (creating it if missing, with `mode`) the lock file `name`:
    /// never through a symbolic link (`O_NOFOLLOW`), never truncated, never
    /// blocking; it must be a regular file. With `create` off a missing or
    /// unreadable lock file is `None`.
    pub(crate) fn open_lock(&self, name: &str, create: bool) -> Result<Option<File>> {
        let path = self.join(name);
        #[cfg(unix)]
        let opened = {
            use rustix::fs::{Mode, OFlags};
            let mut flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            flags |= if create {
                OFlags::RDWR | OFlags::CREATE
            } else {
                OFlags::RDONLY
            };
            rustix::fs::openat(&self.0.fd, name, flags, Mode::from_raw_mode(0o644))
                .map(File::from)
                .map_err(errno)
        };
        #[cfg(not(unix))]
        let opened = OpenOptions::new()
            .read(true)
            .write(create)
            .create(create)
            .truncate(false)
            .open(&path);
        if !create {
            if let Err(e) = &opened {
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) && self.stat(name).is_none_or(|f| f.is_file())
                {
                    return Ok(None);
                }
            }
        }
        self.checked_regular(name, &path, opened, "open lock file")
            .map(Some)
    }

    /// Creates `name`, which must not exist (`O_CREAT | O_EXCL`, so a
    /// symbolic link there is never followed); mode `0o600` when `private`.
    pub(crate) fn create_new(&self, name: &str, private: bool) -> Result<File> {
        let path = self.join(name);
        check(Op::Create, &path).ctx("create", &path)?;
        #[cfg(unix)]
        {
            use rustix::fs::{Mode, OFlags};
            let flags =
                OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let mode = Mode::from_raw_mode(if private { 0o600 } else { 0o666 });
            let file = rustix::fs::openat(&self.0.fd, name, flags, mode)
                .map(File::from)
                .map_err(errno)
                .ctx("create", &path)?;
            record!(|| testing::Event::Create {
                path: path.clone(),
                ino: FileId::of_file(&file, &path).map_or(0, |id| id.ino()),
            });
            Ok(file)
        }
        #[cfg(not(unix))]
        {
            let _ = private;
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .open(&path)
                .ctx("create", &path)?;
            record!(|| testing::Event::Create {
                path: path.clone(),
                ino: 0,
            });
            Ok(file)
        }
    }

    fn rename_raw(&self, from: &str, to: &str) -> io::Result<()> {
        #[cfg(unix)]
        rustix::fs::renameat(&self.0.fd, from, &self.0.fd, to).map_err(errno)?;
        #[cfg(not(unix))]
        fs::rename(self.join(from), self.join(to))?;
        record!(|| testing::Event::Rename {
            from: self.join(from),
            to: self.join(to),
        });
        Ok(())
    }

    fn remove_raw(&self, name: &str) -> io::Result<()> {
        #[cfg(unix)]
        rustix::fs::unlinkat(&self.0.fd, name, rustix::fs::AtFlags::empty()).map_err(errno)?;
        #[cfg(not(unix))]
        fs::remove_file(self.join(name))?;
        record!(|| testing::Event::Remove {
            path: self.join(name),
        });
        Ok(())
    }

    /// Renames `from` over `to` (replacing `to`; a symbolic link at either
    /// name is renamed, never followed).
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<()> {
        let path = self.join(to);
        check(Op::Rename, &path).ctx("rename into", &path)?;
        self.rename_raw(from, to).ctx("rename into", &path)
    }

    /// [`rename`](Self::rename) outside the fault plan, for rolling back;
    /// whether it succeeded.
    pub(crate) fn rename_quietly(&self, from: &str, to: &str) -> bool {
        self.rename_raw(from, to).is_ok()
    }

    /// Creates the hard link `link` to `src` (a symbolic link at `src` is
    /// linked, not followed).
    pub(crate) fn link(&self, src: &str, link: &str) -> Result<()> {
        let path = self.join(link);
        check(Op::Link, &path).ctx("link", &path)?;
        #[cfg(unix)]
        rustix::fs::linkat(
            &self.0.fd,
            src,
            &self.0.fd,
            link,
            rustix::fs::AtFlags::empty(),
        )
        .map_err(errno)
        .ctx("link", &path)?;
        #[cfg(not(unix))]
        fs::hard_link(self.join(src), &path).ctx("link", &path)?;
        record!(|| testing::Event::Link {
            src: self.join(src),
            dst: path.clone(),
        });
        Ok(())
    }

    /// Removes the name `name` (a file or a symbolic link; never a
    /// directory).
    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        let path = self.join(name);
        check(Op::Remove, &path).ctx("remove", &path)?;
        self.remove_raw(name).ctx("remove", &path)
    }

    /// [`remove`](Self::remove) outside the fault plan, for cleaning up;
    /// errors are ignored.
    pub(crate) fn remove_quietly(&self, name: &str) {
        let _ = self.remove_raw(name);
    }

    /// `fsync` of the directory, making renames and removals in it durable.
    pub(crate) fn sync(&self) -> Result<()> {
        let path = self.path();
        check(Op::SyncDir, path).ctx("fsync directory", path)?;
        #[cfg(unix)]
        rustix::fs::fsync(&self.0.fd)
            .map_err(errno)
            .ctx("fsync directory", path)?;
        record!(|| testing::Event::SyncDir {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    /// `syncfs(2)` of the directory's file system (Linux; elsewhere nothing,
    /// the caller `fsync`s each file).
    pub(crate) fn syncfs(&self) -> Result<()> {
        let path = self.path();
        check(Op::Sync, path).ctx("syncfs", path)?;
        #[cfg(target_os = "linux")]
        rustix::fs::syncfs(&self.0.fd)
            .map_err(errno)
            .ctx("syncfs", path)?;
        record!(|| testing::Event::SyncFs {
            path: path.to_path_buf(),
        });
        Ok(())
    }

    /// The names in the directory (UTF-8 names only; `.` and `..` left
    /// out) with what each is, never following a symbolic link.
    pub(crate) fn list(&self) -> Result<Vec<(String, Kind)>> {
        let path = self.path();
        let mut out = Vec::new();
        #[cfg(unix)]
        {
            use rustix::fs::FileType;
            let rd = rustix::fs::Dir::read_from(&self.0.fd)
                .map_err(errno)
                .ctx("list", path)?;
            for e in rd {
                let e = e.map_err(errno).ctx("list", path)?;
                let Ok(name) = e.file_name().to_str() else {
                    continue;
                };
                if name == "." || name == ".." {
                    continue;
                }
                let kind = match e.file_type() {
                    FileType::RegularFile => Kind::File,
                    FileType::Directory => Kind::Dir,
                    FileType::Symlink => Kind::Symlink,
                    FileType::Fifo => Kind::Fifo,
                    FileType::Socket => Kind::Socket,
                    FileType::CharacterDevice => Kind::CharDevice,
                    FileType::BlockDevice => Kind::BlockDevice,
                    // Some file systems do not say: ask.
                    _ => match self.stat(name) {
                        Some(f) => f.kind,
                        None => continue,
                    },
                };
                out.push((name.to_owned(), kind));
            }
        }
        #[cfg(not(unix))]
        for e in fs::read_dir(path).ctx("list", path)? {
            let e = e.ctx("list", path)?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let ft = e.file_type().ctx("stat", &e.path())?;
            out.push((name, Kind::of(&ft)));
        }
        Ok(out)
    }
}

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
