//! [`DiskBackedArray`]: an ndarray that lives in RAM or in an `.npy` file.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use ndarray::{Array, ArrayBase, ArrayView, ArrayViewMut, Data, Dimension, IxDyn};
use parking_lot::Mutex;
// Reads never queue behind a waiting writer: the store takes short read
// locks on entries (to flush or detach them) that the calling thread may
// already hold a read guard on, while another thread waits to write; a fair
// lock would deadlock there. A writer waits until no reader holds the lock.
use parking_lot::{
    RecursiveRwLock as RwLock, RecursiveRwLockReadGuard as RwLockReadGuard,
    RecursiveRwLockUpgradableReadGuard as RwLockUpgradableReadGuard,
    RecursiveRwLockWriteGuard as RwLockWriteGuard,
};

use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::{Error, IoContext, Result};
use crate::io::{self, FileId};
use crate::mmap::{LoadMode, MappedNpy};
use crate::name::EntryName;
use crate::npy::{self, NpyInfo};
use crate::store::meta::EntryFlags;
use crate::store::pair::{self, PairJob, SyncMode};
use crate::store::Account;

/// The guards the calling thread holds, as (address of the array's lock,
/// whether the guard writes). A guard never leaves its thread (the lock's
/// guards are not `Send`), so an operation that needs an array exclusively
/// can tell a guard of its own thread, which it would wait for forever, from
/// a guard of another thread, which it waits for.
mod held {
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<(usize, bool)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn add(id: usize, write: bool) {
        let _ = HELD.try_with(|h| h.borrow_mut().push((id, write)));
    }

    pub(super) fn remove(id: usize, write: bool) {
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&e| e == (id, write)) {
                h.swap_remove(i);
            }
        });
    }

    /// Whether the calling thread holds a guard on `id` (a write guard if
    /// `write_only`).
    pub(super) fn holds(id: usize, write_only: bool) -> bool {
        HELD.try_with(|h| {
            h.borrow()
                .iter()
                .any(|&(i, w)| i == id && (w || !write_only))
        })
        .unwrap_or(false)
    }

    /// A thread waiting for an array's lock while it holds guards.
    struct Waiter {
        thread: std::thread::ThreadId,
        /// The lock waited for, and whether exclusively.
        lock: usize,
        write: bool,
        /// The guards the thread holds (they cannot change while it waits).
        holds: Vec<(usize, bool)>,
    }

    /// The threads that hold guards and wait for another array's lock.
    static WAITING: parking_lot::Mutex<Vec<Waiter>> = parking_lot::Mutex::new(Vec::new());

    /// Whether a guard held in mode `held` makes a thread that wants the
    /// lock in mode `want` wait (readers never wait for readers: the lock
    /// lets a read in while a writer waits).
    fn conflicts(held: bool, want: bool) -> bool {
        held || want
    }

    /// Registers the calling thread as waiting for lock `id` (exclusively
    /// with `write`) until the returned value is dropped, or returns `None`
    /// if that wait would close a cycle: a thread holding a guard on `id`
    /// waits, directly or through other waiting threads, for a guard of the
    /// calling thread, and none of them could ever go on.
    ///
    /// Only threads that hold guards are registered: a thread holding none
    /// cannot be waited for, so it can never be part of a cycle. The store
    /// never waits for an array's lock while holding another lock of its
    /// own, so every cycle goes through guards, and this check sees it.
    pub(super) fn start_wait(id: usize, write: bool) -> Option<Wait> {
        let mine: Vec<(usize, bool)> = HELD.try_with(|h| h.borrow().clone()).unwrap_or_default();
        if mine.is_empty() {
            return Some(Wait(None));
        }
        let me = std::thread::current().id();
        let mut waiting = WAITING.lock();
        let mut frontier = vec![(id, write)];
        let mut seen = vec![false; waiting.len()];
        while let Some((lock, want)) = frontier.pop() {
            for (i, w) in waiting.iter().enumerate() {
                if seen[i] || w.thread == me {
                    continue;
                }
                let blocks = w
                    .holds
                    .iter()
                    .any(|&(l, held)| l == lock && conflicts(held, want));
                if !blocks {
                    continue;
                }
                seen[i] = true;
                if mine
                    .iter()
                    .any(|&(l, held)| l == w.lock && conflicts(held, w.write))
                {
                    return None;
                }
                frontier.push((w.lock, w.write));
            }
        }
        waiting.push(Waiter {
            thread: me,
            lock: id,
            write,
            holds: mine,
        });
        Some(Wait(Some(me)))
    }

    /// A registered wait; dropping it ends the registration.
    pub(super) struct Wait(Option<std::thread::ThreadId>);

    impl Drop for Wait {
        fn drop(&mut self) {
            if let Some(me) = self.0 {
                let mut waiting = WAITING.lock();
                if let Some(i) = waiting.iter().position(|w| w.thread == me) {
                    waiting.swap_remove(i);
                }
            }
        }
    }
}

/// Where an array's data is right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArrayState {
    /// Owned in RAM.
    InMemory,
    /// Memory-mapped from its `.npy` file with the given mode.
    Mapped(LoadMode),
    /// Only in its file; no RAM held.
    Offloaded,
}

pub(crate) enum State<T, D> {
    Owned(Array<T, D>),
    Mapped(MappedNpy<T, D>),
    Offloaded,
}

impl<T: Element, D: Dimension> State<T, D> {
    /// The public state, encoded for `DiskBackedArray::kind`.
    fn code(&self) -> u8 {
        match self {
            State::Owned(_) => 0,
            State::Mapped(m) => match m.mode() {
                LoadMode::ReadOnly => 1,
                LoadMode::ReadWrite => 2,
                LoadMode::CopyOnWrite => 3,
            },
            State::Offloaded => 4,
        }
    }
}

fn decode_state(code: u8) -> ArrayState {
    match code {
        0 => ArrayState::InMemory,
        1 => ArrayState::Mapped(LoadMode::ReadOnly),
        2 => ArrayState::Mapped(LoadMode::ReadWrite),
        3 => ArrayState::Mapped(LoadMode::CopyOnWrite),
        _ => ArrayState::Offloaded,
    }
}

static TEMP_DIR: Mutex<Weak<tempfile::TempDir>> = Mutex::new(Weak::new());
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The private temporary directory shared by arrays without a location.
fn shared_temp_dir() -> Result<Arc<tempfile::TempDir>> {
    let mut slot = TEMP_DIR.lock();
    if let Some(d) = slot.upgrade() {
        return Ok(d);
    }
    let mut b = tempfile::Builder::new();
    b.prefix("ndarray-offload-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o700));
    }
    let d = Arc::new(
        b.tempdir()
            .map_err(|e| Error::io("create", std::env::temp_dir(), e))?,
    );
    *slot = Arc::downgrade(&d);
    Ok(d)
}

/// Arrays at least this large are freed on a background thread after an
/// offload: unmapping a gigabyte takes tens of milliseconds that the caller
/// need not wait for (the data is already durable).
const BACKGROUND_FREE_BYTES: u64 = 64 << 20;

fn release<T: Element, D: Dimension>(old: State<T, D>) {
    if let State::Owned(a) = old {
        let bytes = (a.len() * std::mem::size_of::<T>()) as u64;
        if bytes >= BACKGROUND_FREE_BYTES {
            let (a, _) = a.into_raw_vec_and_offset();
            let spawned = std::thread::Builder::new()
                .name("ndarray-offload-free".into())
                .spawn(move || drop(a));
            if let Err(e) = spawned {
                tracing::debug!(error = %e, "freeing on the calling thread");
            }
        } else {
            drop(a);
            crate::mmap::note_freed(bytes);
        }
    }
}

/// An n-dimensional array that is owned in RAM, memory-mapped from its
/// `.npy` file, or offloaded to that file with no RAM held.
///
/// * [`offload`](Self::offload) writes the array to its file atomically
///   (unique temporary file, `fsync`, rename, directory `fsync`) and frees
///   the RAM. Offloading a mapped array that was not modified writes nothing.
/// * [`load`](Self::load) maps the file in a [`LoadMode`]; nothing is read
///   until the data is touched, and no mode truncates or zeroes the file.
/// * [`read`](Self::read) and [`write`](Self::write) give scoped guards with
///   ndarray views, loading an offloaded array on demand; with automatic
///   offloading on, the array is offloaded again when the last guard that
///   needed the load ends. Guards hold a lock, so a reader on another thread
///   never sees its buffer dropped underneath it.
/// * On drop, the file is deleted when purge-on-drop is on (the default for
///   files in the private temporary directory), and only if the file at the
///   path is still the one this array wrote: a newer array's file under the
///   same name is never deleted.
///
/// Every file written is a valid `.npy` that `numpy.load(path,
/// mmap_mode='r')` reads.
///
/// # Examples
///
/// ```
/// use ndarray::Array2;
/// use ndarray_offload::{ArrayState, DiskBackedArray};
///
/// let points = Array2::<f32>::from_shape_fn((1000, 3), |(i, j)| (i * 3 + j) as f32);
/// let arr = DiskBackedArray::new(points)?;
/// arr.offload()?;
/// assert_eq!(arr.state(), ArrayState::Offloaded);
/// // Reading maps the file back on demand.
/// let sum: f32 = arr.read()?.view().sum();
/// assert_eq!(sum, (0..3000).map(|x| x as f32).sum::<f32>());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// # Guards held by the calling thread
///
/// A guard holds the array's lock, and a guard held by another thread is
/// waited for. An operation that would wait for a guard of the *calling*
/// thread, which could never end, returns [`Error::InUse`] instead:
/// [`offload`](Self::offload), [`load`](Self::load),
/// [`flush`](Self::flush), [`disable_caching`](Self::disable_caching) and
/// [`write`](Self::write) while the thread holds any guard on the same array,
/// and [`read`](Self::read) while it holds a write guard on it.
///
/// For a store entry the same holds for the store's
/// [`offload`](crate::DiskBackedStore::offload),
/// [`offload_keys`](crate::DiskBackedStore::offload_keys) and
/// [`offload_all`](crate::DiskBackedStore::offload_all), and, with a write
/// guard, for [`flush`](crate::DiskBackedStore::flush); the other entries
/// are still offloaded or written before the error is returned. Replacing
/// or removing an entry, `state`, and the store's `stats`, `info`, `get`
/// and inserts of other entries (which may evict) work whatever guard the
/// thread holds.
///
/// # Guards held by several threads
///
/// Replacing or removing a store entry never waits for its guards, and no
/// store call waits for an entry while it holds another one (see the lock
/// order in the store module), so a deadlock needs threads that each hold
/// a guard and wait for another's. A thread holding guards that would wait
/// for a guard of a thread that waits (directly or through others) for one
/// of its own gets [`Error::InUse`] for that array instead: a
/// [`read`](Self::read) or [`write`](Self::write), an offload, or a store
/// `flush` or `offload_all` (which still handle every other entry). Without
/// guards of its own, a thread waits for other threads' guards.
///
/// ```
/// use ndarray::array;
/// use ndarray_offload::{DiskBackedArray, Error};
///
/// let arr = DiskBackedArray::new(array![1.0f32, 2.0])?;
/// let guard = arr.read()?;
/// assert!(matches!(arr.offload(), Err(Error::InUse { .. })));
/// drop(guard);
/// arr.offload()?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// Guards cannot move to another thread:
///
/// ```compile_fail
/// fn send<S: Send>(_: S) {}
/// let arr = ndarray_offload::DiskBackedArray::new(ndarray::array![1u8])?;
/// send(arr.read()?);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct DiskBackedArray<T: Element, D: Dimension> {
    state: RwLock<State<T, D>>,
    /// The state's kind (`State::code`), written under the state's write
    /// lock whenever the state changes: queries of where the data is never
    /// wait for the lock, which a guard may hold (even on the querying
    /// thread).
    kind: AtomicU8,
    shape: Vec<usize>,
    path: PathBuf,
    /// Identity of the file this array last published or opened.
    file_id: Mutex<Option<FileId>>,
    /// Whether the file holds exactly the current data.
    file_current: AtomicBool,
    caching: AtomicBool,
    purge: AtomicBool,
    automatic: AtomicBool,
    /// Guards alive whose access triggered a load.
    readers: AtomicUsize,
    loaded_on_demand: AtomicBool,
    config: CacheConfig,
    _temp: Option<Arc<tempfile::TempDir>>,
    /// Incremented by every write access (to tell whether a persisted
    /// snapshot is still current).
    version: AtomicU64,
    /// For a store entry: the pair this array is published as.
    pair: Option<PairTarget>,
}

/// What [`DiskBackedArray::batch_job`] found.
pub(crate) enum BatchJob<'s> {
    /// A job writing the entry's data, and the version it snapshots.
    Job(PairJob<'s>, u64),
    /// Nothing to write (the file is current, or the entry may not publish).
    Current,
    /// Another thread holds the entry's lock exclusively (not waited for).
    Busy,
}

/// The store entry an array belongs to: offloads publish the whole
/// `(.npy, .meta.json)` pair.
pub(crate) struct PairTarget {
    /// The store's directory, held open (every file operation is relative
    /// to it).
    pub dir: io::Dir,
    pub name: EntryName,
    pub meta_path: PathBuf,
    pub purge: AtomicBool,
    /// The store's accounting of resident bytes, while the entry belongs to
    /// the store.
    pub account: Arc<Account>,
    pub attached: AtomicBool,
    /// Whether the entry may publish into the store's files: set by the
    /// store once the entry it replaces was detached, cleared when this one
    /// is detached. Checked again at the rename, under `io::OWNERSHIP`, so
    /// that a replaced entry never overwrites its successor's files.
    pub publish: AtomicBool,
    /// The newest version of the entry's data renamed into its files (see
    /// `PairJob::published`).
    pub published: AtomicU64,
    /// The entry's file, kept open once the entry stopped publishing (it is
    /// being removed, or was replaced or detached): the entry maps this file
    /// from then on, so that it reads its own data after its name was
    /// removed or given to another entry (see `DiskBackedArray::pin`).
    pub pinned: Mutex<Option<std::fs::File>>,
    /// The bytes this entry adds to the store's resident bytes. Changed
    /// only under this lock, together with the store's count and only while
    /// the entry is attached, so that `detach` takes back exactly what the
    /// entry counted without waiting for the entry's lock.
    pub counted: Mutex<i64>,
    /// Set when an access mapped the entry from its file without the store
    /// seeing it (through a handle kept from an earlier `get`, after an
    /// eviction): the store tracks the entry again when the access ends.
    pub loaded_unseen: AtomicBool,
}

impl<T: Element, D: Dimension> fmt::Debug for DiskBackedArray<T, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBackedArray")
            .field("dtype", &T::dtype())
            .field("shape", &self.shape)
            .field("state", &self.state())
            .field("path", &self.path)
            .finish()
    }
}

impl<T: Element, D: Dimension> DiskBackedArray<T, D> {
    /// Wraps `array` (kept in RAM) with the default [`CacheConfig`]: its file
    /// will go to a private temporary directory and be deleted on drop.
    ///
    /// # Errors
    ///
    /// An I/O error if the temporary directory cannot be created.
    pub fn new(array: Array<T, D>) -> Result<Self> {
        Self::with_config(array, &CacheConfig::default())
    }

    /// Wraps `array` with `config`; the file is a new unique name in the
    /// configured location (created if missing) or the temporary directory.
    ///
    /// # Errors
    ///
    /// An I/O error if the directory cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::{CacheConfig, DiskBackedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let config = CacheConfig::default().with_location(dir.path());
    /// let arr = DiskBackedArray::with_config(array![1i64, 2, 3], &config)?;
    /// arr.offload()?;
    /// assert!(arr.path().starts_with(dir.path()));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_config(array: Array<T, D>, config: &CacheConfig) -> Result<Self> {
        let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("array-{:x}-{n:x}.npy", std::process::id());
        match config.location() {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
                Ok(Self::build(array, dir.join(name), config, None))
            }
            None => {
                let tmp = shared_temp_dir()?;
                let path = tmp.path().join(name);
                Ok(Self::build(array, path, config, Some(tmp)))
            }
        }
    }

    /// Wraps `array` with an explicit file path (its directory must exist).
    /// Purge-on-drop defaults to off for an explicit path.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::{CacheConfig, DiskBackedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("normals.npy");
    /// let arr = DiskBackedArray::with_path(array![[0.0f32, 0.0, 1.0]], &path, &CacheConfig::default())?;
    /// arr.offload()?;
    /// drop(arr);
    /// assert!(path.exists()); // kept: explicit paths are not purged by default
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_path(
        array: Array<T, D>,
        path: impl AsRef<Path>,
        config: &CacheConfig,
    ) -> Result<Self> {
        Ok(Self::build(
            array,
            path.as_ref().to_path_buf(),
            config,
            None,
        ))
    }

    fn build(
        array: Array<T, D>,
        path: PathBuf,
        config: &CacheConfig,
        temp: Option<Arc<tempfile::TempDir>>,
    ) -> Self {
        DiskBackedArray {
            shape: array.shape().to_vec(),
            state: RwLock::new(State::Owned(array)),
            kind: AtomicU8::new(0),
            path,
            file_id: Mutex::new(None),
            file_current: AtomicBool::new(false),
            caching: AtomicBool::new(config.caching()),
            purge: AtomicBool::new(config.effective_purge(temp.is_some())),
            automatic: AtomicBool::new(config.automatic_offloading()),
            readers: AtomicUsize::new(0),
            loaded_on_demand: AtomicBool::new(false),
            config: config.clone(),
            _temp: temp,
            version: AtomicU64::new(0),
            pair: None,
        }
    }

    /// Opens an existing `.npy` file as an offloaded array (nothing is mapped
    /// until it is used). The header is checked now. Purge-on-drop is off
    /// unless `config` turns it on.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::PermissionDenied`], [`Error::Corrupt`]
    /// (bad magic or header), [`Error::Truncated`] (shorter than the header
    /// promises), [`Error::DtypeMismatch`], [`Error::DimensionMismatch`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::{CacheConfig, DiskBackedArray};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.npy");
    /// ndarray_npy::write_npy(&path, &array![1.0f64, 2.0]).unwrap();
    /// let arr = DiskBackedArray::<f64, Ix1>::open(&path, &CacheConfig::default())?;
    /// assert_eq!(arr.read()?.view(), array![1.0, 2.0]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>, config: &CacheConfig) -> Result<Self> {
        let path = path.as_ref();
        let (info, len) = NpyInfo::read(path)?;
        info.check::<T, D>(len, path)?;
        let id = FileId::of_path(path);
        Ok(DiskBackedArray {
            shape: info.shape,
            state: RwLock::new(State::Offloaded),
            kind: AtomicU8::new(4),
            path: path.to_path_buf(),
            file_id: Mutex::new(id),
            file_current: AtomicBool::new(true),
            caching: AtomicBool::new(true),
            purge: AtomicBool::new(config.effective_purge(false)),
            automatic: AtomicBool::new(config.automatic_offloading()),
            readers: AtomicUsize::new(0),
            loaded_on_demand: AtomicBool::new(false),
            config: config.clone(),
            _temp: None,
            version: AtomicU64::new(0),
            pair: None,
        })
    }

    /// Shape of the array (known without loading it).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// numpy dtype string of the element type (`"<f4"`, ...).
    pub fn dtype(&self) -> String {
        T::dtype()
    }

    /// Size of the data in bytes.
    pub fn nbytes(&self) -> u64 {
        npy::data_bytes::<T>(&self.shape).unwrap_or(u64::MAX)
    }

    /// Path of the array's `.npy` file (it exists once the array has been
    /// offloaded, flushed or loaded).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data is now.
    ///
    /// Never waits for a guard (also one held by the calling thread).
    pub fn state(&self) -> ArrayState {
        decode_state(self.kind.load(Ordering::Acquire))
    }

    /// Whether the array is offloaded (no RAM held).
    pub fn is_offloaded(&self) -> bool {
        self.state() == ArrayState::Offloaded
    }

    /// Bytes of RAM the array holds (0 when mapped or offloaded).
    pub fn resident_bytes(&self) -> u64 {
        match self.state() {
            ArrayState::InMemory => self.nbytes(),
            _ => 0,
        }
    }

    /// Replaces the state (the caller holds the write lock) and its kind.
    fn set_state(&self, st: &mut State<T, D>, new: State<T, D>) -> State<T, D> {
        self.kind.store(new.code(), Ordering::Release);
        std::mem::replace(st, new)
    }

    /// Whether caching is on (the array may live on disk).
    pub fn caching(&self) -> bool {
        self.caching.load(Ordering::Relaxed)
    }

    /// Whether the file is deleted on drop.
    pub fn purge_on_drop(&self) -> bool {
        self.purge.load(Ordering::Relaxed)
    }

    /// Switches purge-on-drop at run time.
    pub fn set_purge_on_drop(&self, on: bool) {
        self.purge.store(on, Ordering::Relaxed);
    }

    /// Whether scoped accesses re-offload when they end.
    pub fn automatic_offloading(&self) -> bool {
        self.automatic.load(Ordering::Relaxed)
    }

    /// Switches automatic offloading at run time.
    pub fn set_automatic_offloading(&self, on: bool) {
        self.automatic.store(on, Ordering::Relaxed);
    }

    fn lock_id(&self) -> usize {
        std::ptr::from_ref(&self.state) as usize
    }

    /// [`Error::InUse`] if the calling thread holds a guard on this array
    /// (any guard, or only a write guard with `write_only`).
    fn check_not_held(&self, write_only: bool) -> Result<()> {
        if held::holds(self.lock_id(), write_only) {
            return Err(Error::InUse {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The write lock, unless the calling thread holds a guard on this array
    /// (it would wait forever).
    fn lock_exclusive(&self) -> Result<RwLockWriteGuard<'_, State<T, D>>> {
        self.check_not_held(false)?;
        self.write_lock()
    }

    fn in_use(&self) -> Error {
        Error::InUse {
            path: self.path.clone(),
        }
    }

    /// The write lock, waiting for guards of other threads unless that wait
    /// would never end (see `held::start_wait`): then [`Error::InUse`].
    fn write_lock(&self) -> Result<RwLockWriteGuard<'_, State<T, D>>> {
        if let Some(st) = self.state.try_write() {
            return Ok(st);
        }
        let _wait = held::start_wait(self.lock_id(), true).ok_or_else(|| self.in_use())?;
        Ok(self.state.write())
    }

    /// The read lock, as [`write_lock`](Self::write_lock).
    fn read_lock(&self) -> Result<RwLockReadGuard<'_, State<T, D>>> {
        if let Some(st) = self.state.try_read() {
            return Ok(st);
        }
        let _wait = held::start_wait(self.lock_id(), false).ok_or_else(|| self.in_use())?;
        Ok(self.state.read())
    }

    /// The upgradable read lock, as [`write_lock`](Self::write_lock) (it
    /// waits for writers only, as a read does).
    fn upgradable_lock(&self) -> Result<RwLockUpgradableReadGuard<'_, State<T, D>>> {
        if let Some(st) = self.state.try_upgradable_read() {
            return Ok(st);
        }
        let _wait = held::start_wait(self.lock_id(), false).ok_or_else(|| self.in_use())?;
        Ok(self.state.upgradable_read())
    }

    /// Turns caching on: later offloads write the file.
    pub fn enable_caching(&self) {
        self.caching.store(true, Ordering::Relaxed);
    }

    /// Turns caching off: a mapped or offloaded array is copied back into
    /// RAM, and offload becomes a no-op. The file is left as it is (and is
    /// still purged on drop if purge-on-drop is on).
    ///
    /// # Errors
    ///
    /// Errors of loading the file if the array is offloaded.
    pub fn disable_caching(&self) -> Result<()> {
        let mut st = self.lock_exclusive()?;
        let owned = match &*st {
            State::Owned(_) => None,
            State::Mapped(m) => Some((m.view().to_owned(), !m.dirty)),
            State::Offloaded => {
                let m = self.open_map(LoadMode::ReadOnly)?;
                Some((m.view().to_owned(), true))
            }
        };
        if let Some((a, clean)) = owned {
            if matches!(*st, State::Offloaded) {
                self.account(self.nbytes() as i64);
            }
            self.set_state(&mut st, State::Owned(a));
            self.file_current.store(clean, Ordering::Relaxed);
        }
        self.caching.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the array to its file if the file does not hold the current
    /// data, and frees the RAM. A no-op when caching is off or the array is
    /// already offloaded; a mapped array that was not modified writes
    /// nothing.
    ///
    /// # Errors
    ///
    /// I/O errors naming the path ([`Error::DiskFull`],
    /// [`Error::PermissionDenied`], ...). After an error the array is
    /// unchanged and usable, and the previous file (if any) is untouched.
    /// [`Error::InUse`] if the calling thread holds a guard on the array.
    pub fn offload(&self) -> Result<()> {
        if !self.caching() {
            return Ok(());
        }
        let mut st = self.lock_exclusive()?;
        self.offload_locked(&mut st)
    }

    fn offload_locked(&self, st: &mut RwLockWriteGuard<'_, State<T, D>>) -> Result<()> {
        self.offload_locked_with(st, SyncMode::PerFile)
    }

    fn offload_locked_with(
        &self,
        st: &mut RwLockWriteGuard<'_, State<T, D>>,
        sync: SyncMode,
    ) -> Result<()> {
        if self.detached() {
            // No file of its own to write to: the data stays where it is.
            return Ok(());
        }
        if !self.persist_locked_with(st, sync)? {
            return Ok(());
        }
        if !matches!(**st, State::Offloaded) {
            let old = self.set_state(st, State::Offloaded);
            self.account(-(self.nbytes() as i64));
            release(old);
            tracing::debug!(path = %self.path.display(), bytes = self.nbytes(), "offloaded");
        }
        Ok(())
    }

    /// Makes the file hold the current data, without changing the state
    /// (except that a copy-on-write map now maps the new file's data).
    /// Returns whether the file holds the data: a store entry that may not
    /// publish (detached, or not yet allowed) writes nothing.
    fn persist_locked(&self, st: &mut RwLockWriteGuard<'_, State<T, D>>) -> Result<bool> {
        self.persist_locked_with(st, SyncMode::PerFile)
    }

    fn persist_locked_with(
        &self,
        st: &mut RwLockWriteGuard<'_, State<T, D>>,
        sync: SyncMode,
    ) -> Result<bool> {
        Ok(match &mut **st {
            State::Owned(a) => {
                self.file_current.load(Ordering::Relaxed) || self.publish_view(a.view(), sync)?
            }
            State::Mapped(m) => match m.mode() {
                LoadMode::ReadWrite => {
                    m.flush()?;
                    true
                }
                LoadMode::CopyOnWrite if m.dirty => {
                    let written = self.publish_view(m.view(), sync)?;
                    if written {
                        m.dirty = false;
                    }
                    written
                }
                _ => true,
            },
            State::Offloaded => true,
        })
    }

    /// Whether this array was a store entry and was detached from its store
    /// (replaced, removed, or the store was closed).
    fn detached(&self) -> bool {
        self.pair
            .as_ref()
            .is_some_and(|p| !p.attached.load(Ordering::Acquire))
    }

    fn publish_view(&self, view: ArrayView<'_, T, D>, sync: SyncMode) -> Result<bool> {
        let id = match &self.pair {
            Some(p) => {
                if !p.publish.load(Ordering::Acquire) {
                    return Ok(false);
                }
                let job = self.pair_job(p, view);
                let Some(id) = pair::publish_pairs(&p.dir, vec![job], sync)?[0] else {
                    return Ok(false);
                };
                if sync == SyncMode::Spill {
                    p.account.mark_dir_unsynced();
                }
                id
            }
            None => io::publish(&self.path, self._temp.is_some(), |w| {
                npy::write_array(
                    w,
                    &view,
                    || self.config.effective_chunk_budget(),
                    &self.path,
                )
            })?,
        };
        *self.file_id.lock() = Some(id);
        self.file_current.store(true, Ordering::Relaxed);
        tracing::debug!(path = %self.path.display(), bytes = self.nbytes(), "wrote array file");
        Ok(true)
    }

    /// For a store entry, a dtype or dimension disagreement between the
    /// metadata (already checked against `T` and `D`) and the `.npy` header
    /// names the metadata file as the one at fault.
    fn pair_error(&self, e: Error) -> Error {
        let Some(p) = &self.pair else { return e };
        match e {
            Error::DtypeMismatch {
                path,
                expected,
                found,
            } => Error::Mismatch {
                path: p.meta_path.clone(),
                field: "dtype",
                found: expected,
                expected: found,
                other: path,
            },
            Error::DimensionMismatch {
                path,
                expected,
                found,
            } => Error::Mismatch {
                path: p.meta_path.clone(),
                field: "number of dimensions",
                found: expected.to_string(),
                expected: found.to_string(),
                other: path,
            },
            e => e,
        }
    }

    fn pair_job<'v>(&'v self, p: &'v PairTarget, view: ArrayView<'v, T, D>) -> PairJob<'v>
    where
        D: 'v,
    {
        PairJob {
            name: &p.name,
            shape: self.shape.clone(),
            dtype: T::dtype(),
            flags: self.entry_flags(),
            publish: &p.publish,
            // Called under the write lock: the current version.
            version: self.version.load(Ordering::Relaxed),
            published: &p.published,
            write_npy: Box::new(move |w, path| {
                npy::write_array(w, &view, || self.config.effective_chunk_budget(), path)
            }),
        }
    }

    /// Adds `delta` to the store's resident bytes, the bytes held in RAM or
    /// mapped (store entries only, while they belong to the store). Called
    /// with the state lock held.
    fn account(&self, delta: i64) {
        if let Some(p) = &self.pair {
            let mut counted = p.counted.lock();
            if p.attached.load(Ordering::Acquire) {
                *counted += delta;
                p.account.add_resident(delta);
            }
        }
    }

    /// Takes a store entry out of its store (it was replaced or removed,
    /// or the store was closed; a handle may still hold it): it stops
    /// publishing into the store's files and counting against its budget,
    /// and, with `keep`, keeps its file open (see [`pin`](Self::pin)) so
    /// that it goes on reading its own data. Its data then stays where it
    /// is: offloading it does nothing.
    ///
    /// Never waits for the entry's lock: the store calls it while holding
    /// its map or the entry's slot, and a guard of any thread may hold the
    /// entry (see the lock order in the store's module documentation).
    pub(crate) fn detach(&self, keep: bool) {
        let Some(p) = &self.pair else { return };
        if keep {
            self.pin();
        } else {
            self.stop_publish();
        }
        let was_attached = {
            // With `enable_publish` and the renames of `publish_pairs`.
            let _g = io::OWNERSHIP.lock();
            p.publish.store(false, Ordering::Release);
            p.attached.swap(false, Ordering::AcqRel)
        };
        if was_attached {
            // Whatever the entry counted, up to now (see `account`).
            let mut counted = p.counted.lock();
            p.account.add_resident(-*counted);
            *counted = 0;
        }
    }

    /// Stops the store entry from publishing and keeps the file now at its
    /// name open: the entry maps that file from then on (see `open_map`).
    /// Called before a removal deletes the file, and when the entry is
    /// detached.
    ///
    /// Never waits for the entry's lock. Once publishing is stopped (under
    /// `io::OWNERSHIP`, which every rename of a publish holds) no file of
    /// this entry is renamed into place any more, and no other entry
    /// publishes under its name while it is attached: the file at the name
    /// is the last one the entry published or was opened from, the only one
    /// its data can be in when it is mapped or offloaded. An entry whose data
    /// is in RAM and differs from that file never maps it (it cannot publish
    /// any more, so it stays in RAM).
    pub(crate) fn pin(&self) {
        let Some(p) = &self.pair else { return };
        self.stop_publish();
        let mut pinned = p.pinned.lock();
        if pinned.is_some() {
            return;
        }
        if let Ok(f) = p.dir.open_regular(&p.name.npy_file(), io::Access::Read) {
            *pinned = Some(f);
        }
    }

    /// Closes the file [`pin`](Self::pin) kept (the removal failed).
    pub(crate) fn unpin(&self) {
        if let Some(p) = &self.pair {
            *p.pinned.lock() = None;
        }
    }

    /// Stops a store entry from publishing (it is being removed; undone by
    /// [`enable_publish`](Self::enable_publish) if the removal fails).
    pub(crate) fn stop_publish(&self) {
        if let Some(p) = &self.pair {
            let _g = io::OWNERSHIP.lock();
            p.publish.store(false, Ordering::Release);
        }
    }

    /// Lets a new store entry publish (the entry it replaces is detached).
    pub(crate) fn enable_publish(&self) {
        if let Some(p) = &self.pair {
            // Not if it was itself replaced meanwhile (see `detach`).
            let _g = io::OWNERSHIP.lock();
            if p.attached.load(Ordering::Acquire) {
                p.publish.store(true, Ordering::Release);
            }
        }
    }

    /// Maps the array's file; a store entry that kept its file (it is being
    /// removed, or was detached) maps that file: its name may now hold
    /// another entry's data, or nothing.
    fn open_map(&self, mode: LoadMode) -> Result<MappedNpy<T, D>> {
        if let Some(p) = &self.pair {
            if let Some(f) = &*p.pinned.lock() {
                let f = f.try_clone().ctx("reopen", &self.path)?;
                return MappedNpy::from_file(f, &self.path, mode);
            }
            if self.detached() {
                return Err(Error::NoFile {
                    reason: "the store entry was replaced or removed, and its data was not kept",
                });
            }
        }
        if let Some(p) = &self.pair {
            let access = match mode {
                LoadMode::ReadWrite => io::Access::ReadWrite,
                _ => io::Access::Read,
            };
            let f = p.dir.open_regular(&p.name.npy_file(), access)?;
            return MappedNpy::from_file(f, &self.path, mode);
        }
        MappedNpy::open(&self.path, mode)
    }

    /// Spills the array (as `offload`, but a store entry's directory is not
    /// synced: see `SyncMode::Spill`) unless a guard is alive (never
    /// blocks). Returns whether the array's RAM or map was released.
    pub(crate) fn try_offload(&self) -> Result<bool> {
        if !self.caching() {
            return Ok(false);
        }
        match self.state.try_write() {
            Some(mut st) => {
                let was_in_memory = !matches!(*st, State::Offloaded);
                self.offload_locked_with(&mut st, SyncMode::Spill)?;
                Ok(was_in_memory && matches!(*st, State::Offloaded))
            }
            None => Ok(false),
        }
    }

    /// A store entry mapped by an access the store did not see goes back
    /// into the store's least-recently-used order, so that the budget can
    /// evict it again. Called without the state lock.
    fn note_loaded(&self) {
        if let Some(p) = &self.pair {
            if p.loaded_unseen.swap(false, Ordering::Relaxed)
                && p.attached.load(Ordering::Relaxed)
                && self.caching()
            {
                p.account.touch(&p.name);
            }
        }
    }

    /// Tells the store a guard ended (it may resume evicting).
    fn released(&self) {
        self.note_loaded();
        if let Some(p) = &self.pair {
            p.account.guard_released();
        }
    }

    /// The flags recorded in a store entry's metadata.
    pub(crate) fn entry_flags(&self) -> EntryFlags {
        EntryFlags {
            purge_on_drop: self
                .pair
                .as_ref()
                .is_some_and(|p| p.purge.load(Ordering::Relaxed)),
            automatic_offloading: self.automatic_offloading(),
            caching: self.caching(),
        }
    }

    /// Writes the current data durably to the file without freeing RAM:
    /// an in-memory array is published atomically, a read-write map is
    /// flushed and `fsync`ed, a modified copy-on-write map is published as a
    /// new file. A no-op when caching is off.
    ///
    /// # Errors
    ///
    /// As [`offload`](Self::offload).
    pub fn flush(&self) -> Result<()> {
        // A store entry is persisted whatever its caching flag (which only
        // decides whether it may leave RAM).
        if !self.caching() && self.pair.is_none() {
            return Ok(());
        }
        let mut st = self.lock_exclusive()?;
        self.persist_locked(&mut st).map(drop)
    }

    /// Maps the file with `mode`, first writing the current data if the file
    /// does not hold it. With caching off this is a no-op (the data stays in
    /// RAM). No mode truncates or zeroes data.
    ///
    /// # Errors
    ///
    /// I/O errors, and the validation errors of [`open`](Self::open) if the
    /// file was changed by another program. [`Error::InUse`] if the calling
    /// thread holds a guard on the array.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::{ArrayState, DiskBackedArray, LoadMode};
    ///
    /// let arr = DiskBackedArray::new(array![1u8, 2, 3])?;
    /// arr.load(LoadMode::CopyOnWrite)?;
    /// arr.write()?.view_mut()[0] = 9; // private to this process until offload
    /// assert_eq!(arr.state(), ArrayState::Mapped(LoadMode::CopyOnWrite));
    /// arr.offload()?; // publishes a new file with the edit
    /// assert_eq!(arr.read()?.view(), array![9u8, 2, 3]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(&self, mode: LoadMode) -> Result<()> {
        if !self.caching() {
            return Ok(());
        }
        let r = {
            let mut st = self.lock_exclusive()?;
            self.load_locked(&mut st, mode)
        };
        self.note_loaded();
        r
    }

    fn load_locked(
        &self,
        st: &mut RwLockWriteGuard<'_, State<T, D>>,
        mode: LoadMode,
    ) -> Result<()> {
        if let State::Mapped(m) = &**st {
            if m.mode() == mode {
                return Ok(());
            }
        }
        let mode = match (&self.pair, mode) {
            // A store's published files are never written in place.
            (Some(_), LoadMode::ReadWrite) => LoadMode::CopyOnWrite,
            _ => mode,
        };
        if !self.persist_locked(st)? {
            // The data could not be written (a detached store entry): it
            // stays in RAM.
            return Ok(());
        }
        let m = self.open_map(mode).map_err(|e| self.pair_error(e))?;
        if let Some(p) = &self.pair {
            if m.view().shape() != self.shape.as_slice() {
                return Err(Error::Mismatch {
                    path: p.meta_path.clone(),
                    field: "shape",
                    found: format!("{:?}", self.shape),
                    expected: format!("{:?}", m.view().shape()),
                    other: self.path.clone(),
                });
            }
        }
        {
            let mut id = self.file_id.lock();
            if id.is_none() {
                *id = Some(m.file_id());
            }
        }
        if matches!(**st, State::Offloaded) {
            self.account(self.nbytes() as i64);
            if let Some(p) = &self.pair {
                p.loaded_unseen.store(true, Ordering::Relaxed);
            }
        }
        self.set_state(st, State::Mapped(m));
        tracing::debug!(path = %self.path.display(), bytes = self.nbytes(), ?mode, "loaded (mapped)");
        Ok(())
    }

    /// A read guard: the data stays where it is until the guard is dropped.
    /// An offloaded array is mapped on demand with the configured
    /// [`LoadMode`].
    ///
    /// # Errors
    ///
    /// Errors of loading the file. [`Error::InUse`] if the calling thread
    /// holds a write guard on the array.
    pub fn read(&self) -> Result<ReadGuard<'_, T, D>> {
        self.read_as::<D>()
    }

    /// A read guard whose views have the dimension `E` (checked by the caller).
    pub(crate) fn read_as<E: Dimension>(&self) -> Result<ReadGuard<'_, T, D, E>> {
        self.check_not_held(true)?;
        let st = self.upgradable_lock()?;
        let (st, loaded) = if matches!(*st, State::Offloaded) {
            let mut w = RwLockUpgradableReadGuard::upgrade(st);
            if matches!(*w, State::Offloaded) {
                self.load_locked(&mut w, self.config.load_mode())?;
                (RwLockWriteGuard::downgrade(w), true)
            } else {
                (RwLockWriteGuard::downgrade(w), false)
            }
        } else {
            (RwLockUpgradableReadGuard::downgrade(st), false)
        };
        if loaded {
            self.loaded_on_demand.store(true, Ordering::Relaxed);
        }
        self.readers.fetch_add(1, Ordering::AcqRel);
        held::add(self.lock_id(), false);
        Ok(ReadGuard {
            array: self,
            guard: Some(st),
            _e: PhantomData,
        })
    }

    /// A write guard with a mutable view. An offloaded or read-only mapped
    /// array is first mapped copy-on-write (unless the configured load mode
    /// is read-write), so the published file is never changed in place
    /// except through an explicit read-write map.
    ///
    /// # Errors
    ///
    /// Errors of loading the file. [`Error::InUse`] if the calling thread
    /// holds a guard on the array.
    pub fn write(&self) -> Result<WriteGuard<'_, T, D>> {
        self.write_as::<D>()
    }

    /// A write guard whose views have the dimension `E` (checked by the caller).
    pub(crate) fn write_as<E: Dimension>(&self) -> Result<WriteGuard<'_, T, D, E>> {
        let mut st = self.lock_exclusive()?;
        self.version.fetch_add(1, Ordering::Relaxed);
        let mut loaded = false;
        match &*st {
            State::Owned(_) => {}
            State::Mapped(m) if m.mode() != LoadMode::ReadOnly => {}
            State::Mapped(_) | State::Offloaded => {
                loaded = matches!(*st, State::Offloaded);
                let mode = match self.config.load_mode() {
                    LoadMode::ReadWrite if self.pair.is_none() => LoadMode::ReadWrite,
                    _ => LoadMode::CopyOnWrite,
                };
                self.load_locked(&mut st, mode)?;
            }
        }
        if let State::Owned(_) = &*st {
            self.file_current.store(false, Ordering::Relaxed);
        }
        held::add(self.lock_id(), true);
        Ok(WriteGuard {
            array: self,
            guard: Some(st),
            reoffload: loaded && self.automatic_offloading() && self.caching(),
            _e: PhantomData,
        })
    }

    /// Runs `f` on a view of the array (see [`read`](Self::read)) and, with
    /// automatic offloading on, reports an error of the re-offload.
    ///
    /// # Errors
    ///
    /// Errors of loading or re-offloading.
    pub fn with_view<R>(&self, f: impl FnOnce(ArrayView<'_, T, D>) -> R) -> Result<R> {
        self.with_view_as::<D, R>(f)
    }

    /// [`with_view`](Self::with_view) with views of dimension `E` (checked by
    /// the caller).
    pub(crate) fn with_view_as<E: Dimension, R>(
        &self,
        f: impl FnOnce(ArrayView<'_, T, E>) -> R,
    ) -> Result<R> {
        let g = self.read_as::<E>()?;
        let r = f(g.view());
        g.finish()?;
        Ok(r)
    }

    /// Runs `f` on a mutable view of the array (see [`write`](Self::write)).
    ///
    /// # Errors
    ///
    /// Errors of loading or re-offloading.
    pub fn with_view_mut<R>(&self, f: impl FnOnce(ArrayViewMut<'_, T, D>) -> R) -> Result<R> {
        self.with_view_mut_as::<D, R>(f)
    }

    /// [`with_view_mut`](Self::with_view_mut) with views of dimension `E`
    /// (checked by the caller).
    pub(crate) fn with_view_mut_as<E: Dimension, R>(
        &self,
        f: impl FnOnce(ArrayViewMut<'_, T, E>) -> R,
    ) -> Result<R> {
        let mut g = self.write_as::<E>()?;
        let r = f(g.view_mut());
        g.finish()?;
        Ok(r)
    }

    /// A copy of the data in RAM (loading it if needed).
    ///
    /// # Errors
    ///
    /// Errors of loading.
    pub fn to_owned_array(&self) -> Result<Array<T, D>> {
        self.with_view(|v| v.to_owned())
    }

    /// Consumes the wrapper and returns the data in RAM. The file is handled
    /// as on drop.
    ///
    /// # Errors
    ///
    /// Errors of loading.
    pub fn into_array(self) -> Result<Array<T, D>> {
        {
            let mut st = self.state.write();
            if let State::Owned(_) = &*st {
                if let State::Owned(a) = self.set_state(&mut st, State::Offloaded) {
                    return Ok(a);
                }
            }
        }
        self.to_owned_array()
    }

    /// Whether the array has a file (it was written, opened or mapped).
    pub(crate) fn has_file(&self) -> bool {
        self.file_id.lock().is_some()
            || self.state() != ArrayState::InMemory
            || self.file_current.load(Ordering::Relaxed)
    }

    /// A read guard ended: the last reader of an array that was loaded on
    /// demand re-offloads it (with automatic offloading on).
    fn end_read(&self) -> Result<()> {
        let r = if self.readers.fetch_sub(1, Ordering::AcqRel) == 1
            && self.automatic_offloading()
            && self.caching()
            && self.loaded_on_demand.load(Ordering::Relaxed)
        {
            self.reoffload_if_idle()
        } else {
            Ok(())
        };
        self.released();
        r
    }

    fn reoffload_if_idle(&self) -> Result<()> {
        // Not if that would wait forever: the array stays loaded (a later
        // guard's end offloads it).
        let Ok(mut st) = self.write_lock() else {
            return Ok(());
        };
        if self.readers.load(Ordering::Acquire) == 0
            && self.loaded_on_demand.swap(false, Ordering::Relaxed)
        {
            self.offload_locked(&mut st)?;
        }
        Ok(())
    }
}

impl<T: Element> DiskBackedArray<T, IxDyn> {
    #[allow(clippy::too_many_arguments)]
    fn pair_base(
        state: State<T, IxDyn>,
        shape: Vec<usize>,
        dir: &io::Dir,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        current: bool,
        account: Arc<Account>,
    ) -> Self {
        let path = dir.join(&name.npy_file());
        // A persisted entry's data is the file at its name now: remember
        // which one, so that it can be kept when the name is reused.
        let (file_id, publish) = if current {
            (dir.stat(&name.npy_file()).map(|f| f.id), true)
        } else {
            // A new entry publishes once the entry it replaces is detached.
            (None, false)
        };
        DiskBackedArray {
            shape,
            kind: AtomicU8::new(state.code()),
            state: RwLock::new(state),
            path,
            file_id: Mutex::new(file_id),
            file_current: AtomicBool::new(current),
            caching: AtomicBool::new(flags.caching),
            purge: AtomicBool::new(false),
            automatic: AtomicBool::new(flags.automatic_offloading),
            readers: AtomicUsize::new(0),
            loaded_on_demand: AtomicBool::new(false),
            config: config.clone(),
            _temp: None,
            version: AtomicU64::new(0),
            pair: Some(PairTarget {
                dir: dir.clone(),
                name: name.clone(),
                meta_path: dir.join(&name.meta_file()),
                purge: AtomicBool::new(flags.purge_on_drop),
                account,
                attached: AtomicBool::new(true),
                publish: AtomicBool::new(publish),
                published: AtomicU64::new(0),
                pinned: Mutex::new(None),
                counted: Mutex::new(0),
                loaded_unseen: AtomicBool::new(false),
            }),
        }
    }

    /// A new store entry held in RAM (not yet written).
    pub(crate) fn new_pair(
        array: ndarray::ArrayD<T>,
        dir: &io::Dir,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        account: Arc<Account>,
    ) -> Self {
        let shape = array.shape().to_vec();
        let a = Self::pair_base(
            State::Owned(array),
            shape,
            dir,
            name,
            flags,
            config,
            false,
            account,
        );
        a.account(a.nbytes() as i64);
        a
    }

    /// A persisted store entry, offloaded; its files are read when used.
    pub(crate) fn open_pair(
        shape: Vec<usize>,
        dir: &io::Dir,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        account: Arc<Account>,
    ) -> Self {
        Self::pair_base(
            State::Offloaded,
            shape,
            dir,
            name,
            flags,
            config,
            true,
            account,
        )
    }
}

impl<T: Element, D: Dimension> DiskBackedArray<T, D> {
    /// For a store entry whose file is not current: a publish job writing its
    /// data (taking the read lock while it writes) and the version it
    /// snapshots.
    ///
    /// Without `wait`, an entry whose lock another thread holds exclusively
    /// is [`BatchJob::Busy`] instead of waited for: a batch takes the locks
    /// of many entries, and must not wait for one while it holds others
    /// (see the lock order in the store's module documentation).
    ///
    /// # Errors
    ///
    /// [`Error::InUse`] if the calling thread holds a write guard on the
    /// entry (its data is being changed, and cannot be read until the guard
    /// ends).
    pub(crate) fn batch_job<'s>(&'s self, wait: bool) -> Result<BatchJob<'s>>
    where
        D: 's,
    {
        let Some(p) = self.pair.as_ref() else {
            return Ok(BatchJob::Current);
        };
        if !p.publish.load(Ordering::Acquire) {
            return Ok(BatchJob::Current);
        }
        self.check_not_held(true)?;
        // The read lock is held until the job has written its data, so the
        // entry cannot be offloaded or changed in between (the flushing
        // thread may hold a read guard on it: see the lock's import).
        let st = if wait {
            self.read_lock()?
        } else {
            match self.state.try_read() {
                Some(st) => st,
                None => return Ok(BatchJob::Busy),
            }
        };
        let current = match &*st {
            State::Owned(_) => self.file_current.load(Ordering::Relaxed),
            State::Mapped(m) => !m.dirty,
            State::Offloaded => true,
        };
        if current {
            return Ok(BatchJob::Current);
        }
        let version = self.version.load(Ordering::Relaxed);
        let config = &self.config;
        let job = PairJob {
            name: &p.name,
            shape: self.shape.clone(),
            dtype: T::dtype(),
            flags: self.entry_flags(),
            publish: &p.publish,
            version,
            published: &p.published,
            write_npy: Box::new(move |w, path| match &*st {
                State::Owned(a) => {
                    npy::write_array(w, &a.view(), || config.effective_chunk_budget(), path)
                }
                State::Mapped(m) => {
                    npy::write_array(w, &m.view(), || config.effective_chunk_budget(), path)
                }
                State::Offloaded => unreachable!("checked under the same lock"),
            }),
        };
        Ok(BatchJob::Job(job, version))
    }

    /// Records that a batch published this array's data as of `version`.
    ///
    /// Never waits for a guard: the flushing thread may hold one on this
    /// entry. A read lock excludes writers, which is all the version check
    /// needs; clearing a map's dirty flag needs the write lock, and when a
    /// guard holds the entry the mark is skipped (the next flush writes the
    /// entry again).
    pub(crate) fn mark_published(&self, version: u64, id: FileId) {
        {
            // Not if that would wait forever (the next flush writes again).
            let Ok(st) = self.read_lock() else { return };
            if self.version.load(Ordering::Relaxed) != version {
                return;
            }
            match &*st {
                State::Owned(_) => {
                    self.file_current.store(true, Ordering::Relaxed);
                    *self.file_id.lock() = Some(id);
                    return;
                }
                State::Offloaded => {
                    *self.file_id.lock() = Some(id);
                    return;
                }
                State::Mapped(_) => {}
            }
        }
        if let Some(mut st) = self.state.try_write() {
            if self.version.load(Ordering::Relaxed) != version {
                return;
            }
            if let State::Mapped(m) = &mut *st {
                m.dirty = false;
            }
            *self.file_id.lock() = Some(id);
        }
    }
}

/// Creates a disk-backed array from any ndarray (copying views).
impl<T: Element, S: Data<Elem = T>, D: Dimension> TryFrom<&ArrayBase<S, D>>
    for DiskBackedArray<T, D>
{
    type Error = Error;
    fn try_from(a: &ArrayBase<S, D>) -> Result<Self> {
        DiskBackedArray::new(a.to_owned())
    }
}

impl<T: Element, D: Dimension> Drop for DiskBackedArray<T, D> {
    fn drop(&mut self) {
        // Unmap before deleting.
        *self.state.get_mut() = State::Offloaded;
        *self.kind.get_mut() = 4;
        if self.purge.load(Ordering::Relaxed) {
            if let Some(id) = *self.file_id.get_mut() {
                if let Err(e) = io::remove_if_same(&self.path, id) {
                    if !e.is_not_found() {
                        tracing::warn!(path = %self.path.display(), error = %e, "could not purge array file");
                    }
                }
            }
        }
    }
}

/// A scoped read access to a [`DiskBackedArray`] (or to a store entry, whose
/// views have the dimension `E` it was requested with).
pub struct ReadGuard<'a, T: Element, D: Dimension, E: Dimension = D> {
    array: &'a DiskBackedArray<T, D>,
    guard: Option<RwLockReadGuard<'a, State<T, D>>>,
    _e: PhantomData<E>,
}

impl<T: Element, D: Dimension, E: Dimension> ReadGuard<'_, T, D, E> {
    /// A view of the data.
    pub fn view(&self) -> ArrayView<'_, T, E> {
        let v = match &**self.guard.as_ref().expect("guard is live") {
            State::Owned(a) => a.view(),
            State::Mapped(m) => m.view(),
            State::Offloaded => unreachable!("a read guard never sees an offloaded array"),
        };
        v.into_dimensionality::<E>()
            .expect("dimension checked when the guard was made")
    }

    /// A view with a dynamic number of dimensions.
    pub fn view_dyn(&self) -> ArrayView<'_, T, IxDyn> {
        self.view().into_dyn()
    }

    /// Ends the access, reporting an error of the automatic re-offload.
    ///
    /// # Errors
    ///
    /// Errors of offloading.
    pub fn finish(mut self) -> Result<()> {
        self.guard = None;
        let a = self.array;
        std::mem::forget(self);
        held::remove(a.lock_id(), false);
        a.end_read()
    }
}

impl<T: Element, D: Dimension, E: Dimension> Drop for ReadGuard<'_, T, D, E> {
    fn drop(&mut self) {
        self.guard = None;
        held::remove(self.array.lock_id(), false);
        if let Err(e) = self.array.end_read() {
            tracing::warn!(path = %self.array.path.display(), error = %e, "automatic offload failed");
        }
    }
}

/// A scoped write access to a [`DiskBackedArray`] (or to a store entry, whose
/// views have the dimension `E` it was requested with).
pub struct WriteGuard<'a, T: Element, D: Dimension, E: Dimension = D> {
    array: &'a DiskBackedArray<T, D>,
    guard: Option<RwLockWriteGuard<'a, State<T, D>>>,
    reoffload: bool,
    _e: PhantomData<E>,
}

impl<T: Element, D: Dimension, E: Dimension> WriteGuard<'_, T, D, E> {
    /// A view of the data.
    pub fn view(&self) -> ArrayView<'_, T, E> {
        let v = match &**self.guard.as_ref().expect("guard is live") {
            State::Owned(a) => a.view(),
            State::Mapped(m) => m.view(),
            State::Offloaded => unreachable!("a write guard never sees an offloaded array"),
        };
        v.into_dimensionality::<E>()
            .expect("dimension checked when the guard was made")
    }

    /// A mutable view of the data.
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, E> {
        let v = match &mut **self.guard.as_mut().expect("guard is live") {
            State::Owned(a) => a.view_mut(),
            State::Mapped(m) => m
                .view_mut()
                .expect("write guards never hold read-only maps"),
            State::Offloaded => unreachable!("a write guard never sees an offloaded array"),
        };
        v.into_dimensionality::<E>()
            .expect("dimension checked when the guard was made")
    }

    /// Ends the access, reporting an error of the automatic re-offload.
    ///
    /// # Errors
    ///
    /// Errors of offloading.
    pub fn finish(mut self) -> Result<()> {
        let r = self.end();
        let a = self.array;
        std::mem::forget(self);
        held::remove(a.lock_id(), true);
        a.released();
        r
    }

    fn end(&mut self) -> Result<()> {
        let mut g = match self.guard.take() {
            Some(g) => g,
            None => return Ok(()),
        };
        if self.reoffload {
            self.array.offload_locked(&mut g)?;
        }
        Ok(())
    }
}

impl<T: Element, D: Dimension, E: Dimension> Drop for WriteGuard<'_, T, D, E> {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!(path = %self.array.path.display(), error = %e, "automatic offload failed");
        }
        held::remove(self.array.lock_id(), true);
        self.array.released();
    }
}
