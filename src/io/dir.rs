//! A directory held open: every operation on its files is relative to its
//! descriptor (`openat`, `renameat`, `linkat`, `unlinkat`, `fsync`).

use super::*;

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

    pub(super) fn of(ft: &fs::FileType) -> Kind {
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
            Some(owner) => format!("{owner}-{}", base36(next_counter())),
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
        // One allocation of the final size (`Path::join` copies the
        // directory, then grows the copy).
        let dir = self.0.path.as_os_str();
        let mut p = PathBuf::with_capacity(dir.len() + 1 + name.len());
        p.push(dir);
        p.push(name);
        p
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
        self.open_regular_md(name, access).map(|(f, _)| f)
    }

    /// [`open_regular`](Self::open_regular), with the `fstat` it checked the
    /// file with.
    pub(crate) fn open_regular_md(
        &self,
        name: &str,
        access: Access,
    ) -> Result<(File, fs::Metadata)> {
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
            .open(self.join(name));
        self.checked_regular(name, opened, "open")
    }

    /// A freshly opened `file` at `name` (or the error opening it) as a
    /// regular file, or an error saying what is there instead.
    /// (The path named in errors is made only for an error.)
    fn checked_regular(
        &self,
        name: &str,
        opened: io::Result<File>,
        op: &'static str,
    ) -> Result<(File, fs::Metadata)> {
        let file = match opened {
            Ok(f) => f,
            // A symbolic link (ELOOP), a directory opened for writing
            // (EISDIR), a socket (ENXIO): name what is there.
            Err(e) => {
                let path = self.join(name);
                return Err(match self.stat(name) {
                    Some(f) if !f.is_file() => not_regular(&path, f.kind.describe()),
                    _ => Error::io(op, &path, e),
                });
            }
        };
        let md = match file.metadata() {
            Ok(md) => md,
            Err(e) => return Err(Error::io("stat", self.join(name), e)),
        };
        if !md.is_file() {
            let path = self.join(name);
            return Err(not_regular(&path, Kind::of(&md.file_type()).describe()));
        }
        Ok((file, md))
    }

    /// Reads the whole of `name`, a regular file of at most `limit` bytes
    /// (see [`read_bounded`]).
    pub(crate) fn read_bounded(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let (file, md) = self.open_regular_md(name, Access::Read)?;
        read_file_bounded(file, md.len(), || self.join(name), limit)
    }

    /// Opens (creating it if missing, with `mode`) the lock file `name`:
    /// never through a symbolic link (`O_NOFOLLOW`), never truncated, never
    /// blocking; it must be a regular file. With `create` off a missing or
    /// unreadable lock file is `None`.
    pub(crate) fn open_lock(&self, name: &str, create: bool) -> Result<Option<File>> {
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
            .open(self.join(name));
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
        self.checked_regular(name, opened, "open lock file")
            .map(|(f, _)| Some(f))
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
        self.link_into(src, self, link)
    }

    /// Creates the hard link `link` in the directory `to` to `src` of this
    /// directory (a symbolic link at `src` is linked, not followed).
    pub(crate) fn link_into(&self, src: &str, to: &Dir, link: &str) -> Result<()> {
        let path = to.join(link);
        check(Op::Link, &path).ctx("link", &path)?;
        #[cfg(unix)]
        rustix::fs::linkat(
            &self.0.fd,
            src,
            &to.0.fd,
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
