//! [`DiskBackedArray`]: an ndarray that lives in RAM or in an `.npy` file.
//!
//! * `state.rs`: where the data is ([`ArrayState`], and the private `State`
//!   holding it);
//! * `guard.rs`: scoped access ([`ReadGuard`], [`WriteGuard`]) and the locks
//!   that never wait forever;
//! * `owner.rs`: what an array that belongs to an owner (a store entry)
//!   asks of it, through the [`Owner`] trait: the array never knows the
//!   store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use ndarray::{Array, ArrayBase, ArrayView, Data, Dimension};
use parking_lot::Mutex;
// Recursive for reads: see the note in `guard.rs`.
use parking_lot::{RecursiveRwLock as RwLock, RecursiveRwLockWriteGuard as RwLockWriteGuard};

use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::io::{self, FileId};
use crate::mmap::{LoadMode, MappedNpy};
use crate::npy::{self, NpyInfo};

mod guard;
mod input;
mod owner;
mod state;

pub use guard::{ReadGuard, WriteGuard};
pub use input::IntoStoredArray;
pub(crate) use owner::{InitialData, Owner, Snapshot, Unpublished};
pub use state::ArrayState;
use state::{decode_state, State};

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
    /// The owner the array belongs to (a store entry), if any: offloads
    /// publish through it, and it accounts for the array's resident bytes.
    owner: Option<Arc<dyn Owner>>,
}

/// The initial values of a [`DiskBackedArray`]'s fields, for
/// [`DiskBackedArray::assemble`], the one constructor.
struct Parts<T, D> {
    state: State<T, D>,
    shape: Vec<usize>,
    path: PathBuf,
    file_id: Option<FileId>,
    file_current: bool,
    caching: bool,
    purge: bool,
    automatic: bool,
    config: CacheConfig,
    temp: Option<Arc<tempfile::TempDir>>,
    owner: Option<Arc<dyn Owner>>,
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
    ///
    /// `array` is any [`IntoStoredArray`]: an owned array is moved, a view or
    /// a reference is copied.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{s, Array2};
    /// use ndarray_offload::DiskBackedArray;
    ///
    /// let big = Array2::<f32>::ones((1000, 3));
    /// let head = DiskBackedArray::new(big.slice(s![..10, ..]))?; // copied
    /// let all = DiskBackedArray::new(big)?; // moved
    /// assert_eq!((head.shape(), all.shape()), (&[10, 3][..], &[1000, 3][..]));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(array: impl IntoStoredArray<Elem = T, Dim = D>) -> Result<Self> {
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
    pub fn with_config(
        array: impl IntoStoredArray<Elem = T, Dim = D>,
        config: &CacheConfig,
    ) -> Result<Self> {
        let array = array.into_stored_array();
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
        array: impl IntoStoredArray<Elem = T, Dim = D>,
        path: impl AsRef<Path>,
        config: &CacheConfig,
    ) -> Result<Self> {
        let array = array.into_stored_array();
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
        Self::assemble(Parts {
            shape: array.shape().to_vec(),
            state: State::Owned(array),
            path,
            file_id: None,
            file_current: false,
            caching: config.caching(),
            purge: config.effective_purge(temp.is_some()),
            automatic: config.automatic_offloading(),
            config: config.clone(),
            temp,
            owner: None,
        })
    }

    /// The one constructor: every other one fills in [`Parts`].
    fn assemble(p: Parts<T, D>) -> Self {
        DiskBackedArray {
            kind: AtomicU8::new(p.state.code()),
            state: RwLock::new(p.state),
            shape: p.shape,
            path: p.path,
            file_id: Mutex::new(p.file_id),
            file_current: AtomicBool::new(p.file_current),
            caching: AtomicBool::new(p.caching),
            purge: AtomicBool::new(p.purge),
            automatic: AtomicBool::new(p.automatic),
            readers: AtomicUsize::new(0),
            loaded_on_demand: AtomicBool::new(false),
            config: p.config,
            _temp: p.temp,
            version: AtomicU64::new(0),
            owner: p.owner,
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
        Ok(Self::assemble(Parts {
            shape: info.shape,
            state: State::Offloaded,
            path: path.to_path_buf(),
            file_id: FileId::of_path(path),
            file_current: true,
            caching: true,
            purge: config.effective_purge(false),
            automatic: config.automatic_offloading(),
            config: config.clone(),
            temp: None,
            owner: None,
        }))
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
        self.offload_locked_with(st, false)
    }

    /// [`offload_locked`](Self::offload_locked); with `spill`, an owner may
    /// defer making the publish durable (see [`Owner::publish`]).
    fn offload_locked_with(
        &self,
        st: &mut RwLockWriteGuard<'_, State<T, D>>,
        spill: bool,
    ) -> Result<()> {
        if self.detached() {
            // No file of its own to write to: the data stays where it is.
            return Ok(());
        }
        if !self.persist_locked_with(st, spill)? {
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
        self.persist_locked_with(st, false)
    }

    fn persist_locked_with(
        &self,
        st: &mut RwLockWriteGuard<'_, State<T, D>>,
        spill: bool,
    ) -> Result<bool> {
        Ok(match &mut **st {
            State::Owned(a) => {
                self.file_current.load(Ordering::Relaxed) || self.publish_view(a.view(), spill)?
            }
            State::Mapped(m) => match m.mode() {
                LoadMode::ReadWrite => {
                    m.flush()?;
                    true
                }
                LoadMode::CopyOnWrite if m.dirty => {
                    let written = self.publish_view(m.view(), spill)?;
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

    /// Whether this array belonged to an owner and was detached from it (a
    /// store entry replaced or removed, or its store closed).
    fn detached(&self) -> bool {
        self.owner.as_ref().is_some_and(|o| !o.attached())
    }

    fn publish_view(&self, view: ArrayView<'_, T, D>, spill: bool) -> Result<bool> {
        let id = match &self.owner {
            Some(o) => match o.publish(self.snapshot_of(view), spill)? {
                Some(id) => id,
                None => return Ok(false),
            },
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

    /// For an owned array, a dtype or dimension disagreement between the
    /// owner's metadata (already checked against `T` and `D`) and the `.npy`
    /// header names the metadata file as the one at fault.
    fn owner_error(&self, e: Error) -> Error {
        let Some(o) = &self.owner else { return e };
        match e {
            Error::DtypeMismatch {
                path,
                expected,
                found,
            } => Error::Mismatch {
                path: o.metadata_path().to_path_buf(),
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
                path: o.metadata_path().to_path_buf(),
                field: "number of dimensions",
                found: expected.to_string(),
                expected: found.to_string(),
                other: path,
            },
            e => e,
        }
    }

    /// Adds `delta` to the owner's count of resident bytes, the bytes held
    /// in RAM or mapped. Called with the state lock held.
    fn account(&self, delta: i64) {
        if let Some(o) = &self.owner {
            o.add_resident(delta);
        }
    }

    /// Maps the array's file; an owned array maps the file its owner
    /// opens (which may be a file kept open after its name was reused).
    fn open_map(&self, mode: LoadMode) -> Result<MappedNpy<T, D>> {
        match &self.owner {
            Some(o) => {
                let access = match mode {
                    LoadMode::ReadWrite => io::Access::ReadWrite,
                    _ => io::Access::Read,
                };
                let (file, known) = o.open_data(access)?;
                MappedNpy::from_opened(file, known, &self.path, mode)
            }
            None => MappedNpy::open(&self.path, mode),
        }
    }

    /// Tells the owner, if any, that an access may have mapped the array
    /// (see [`Owner::note_loaded`]). Called without the state lock.
    fn note_loaded(&self) {
        if let Some(o) = &self.owner {
            o.note_loaded(self.caching());
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
        if !self.caching() && self.owner.is_none() {
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
        let mode = match (&self.owner, mode) {
            // An owner's published files are never written in place.
            (Some(_), LoadMode::ReadWrite) => LoadMode::CopyOnWrite,
            _ => mode,
        };
        if !self.persist_locked(st)? {
            // The data could not be written (a detached owned array): it
            // stays in RAM.
            return Ok(());
        }
        let m = self.open_map(mode).map_err(|e| self.owner_error(e))?;
        if let Some(o) = &self.owner {
            if m.view().shape() != self.shape.as_slice() {
                return Err(Error::Mismatch {
                    path: o.metadata_path().to_path_buf(),
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
            if let Some(o) = &self.owner {
                o.mapped_unseen();
            }
        }
        self.set_state(st, State::Mapped(m));
        tracing::debug!(path = %self.path.display(), bytes = self.nbytes(), ?mode, "loaded (mapped)");
        Ok(())
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
