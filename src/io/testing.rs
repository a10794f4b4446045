//! Fault injection and recording for tests (compiled only with the
//! `testing` feature): a per-thread plan that fails the N-th file-system
//! operation, calls a hook before each, and records what was done.

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
