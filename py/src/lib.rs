//! `ndoffload._ndoffload`: the Python binding of `ndarray-offload`'s
//! [`DiskBackedStore`]. The Python package `ndoffload` wraps it in a
//! `MutableMapping` (see `python/ndoffload/__init__.py`); this module is
//! the thin layer under it:
//!
//! * every call into the crate runs with the GIL released (and under the
//!   fork gate, see `keeper.rs`);
//! * reads return numpy arrays over the entry's data (RAM or the mapped
//!   `.npy`), pinned by the keeper while Python holds them;
//! * writes copy the numpy array once into an array the crate owns.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use ndarray_offload::{
    ArrayState, ConfigOverrides, DiskBackedStore, DynArray, DynStoredArray, Error, InsertOptions,
    LoadMode, StoreBuilder,
};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

mod convert;
mod errors;
mod keeper;

use errors::{ClosedError, IntoPy};
use keeper::FORK_GATE;

/// Live pins per entry identity (see [`keeper::entry_id`]).
type PinCounts = Arc<Mutex<HashMap<usize, usize>>>;

/// The base object of every array a store hands out: while it lives, the
/// entry's data stays where the array points (in RAM or mapped), whatever
/// the store does with the key (replace, remove, evict, close).
#[pyclass(module = "ndoffload._ndoffload", name = "Pin", frozen)]
struct Pin {
    id: u64,
    pid: u32,
    tx: mpsc::Sender<keeper::Msg>,
    entry: usize,
    counts: PinCounts,
    #[pyo3(get)]
    key: String,
}

#[pymethods]
impl Pin {
    fn __repr__(&self) -> String {
        format!("<ndoffload pin of entry {:?}>", self.key)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // A forked child inherited the parent's pin: the parent unpins it;
        // the child's copy of the memory stays valid (it is never unmapped
        // here).
        if self.pid == std::process::id() {
            {
                let mut c = self.counts.lock();
                if let Some(n) = c.get_mut(&self.entry) {
                    *n -= 1;
                    if *n == 0 {
                        c.remove(&self.entry);
                    }
                }
            }
            let _ = self.tx.send(keeper::Msg::Unpin(self.id));
        }
    }
}

/// The open store: a handle of the crate, or `None` once closed.
#[pyclass(module = "ndoffload._ndoffload", name = "_Store", frozen)]
struct PyStore {
    store: Mutex<Option<DiskBackedStore>>,
    pid: u32,
    dir: PathBuf,
    read_only: bool,
    pins: PinCounts,
}

impl Drop for PyStore {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A forked child's copy of its parent's store: dropping it would
            // flush, remove the parent's registration and release locks the
            // parent holds. It is left alone.
            if let Some(s) = self.store.get_mut().take() {
                std::mem::forget(s);
            }
        }
    }
}

/// Runs `f` with the GIL released and the fork gate held.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(|| {
        let _gate = FORK_GATE.read_recursive();
        f()
    })
}

/// A value computed by a Python function, or a store error.
enum ComputeError {
    Store(Error),
    Py(PyErr),
}

impl From<Error> for ComputeError {
    fn from(e: Error) -> Self {
        ComputeError::Store(e)
    }
}

fn state_name(s: ArrayState) -> &'static str {
    match s {
        ArrayState::InMemory => "in_memory",
        ArrayState::Mapped(LoadMode::ReadOnly) => "mapped",
        ArrayState::Mapped(LoadMode::ReadWrite) => "mapped_read_write",
        ArrayState::Mapped(LoadMode::CopyOnWrite) => "mapped_copy_on_write",
        ArrayState::Offloaded => "offloaded",
        _ => "unknown",
    }
}

impl PyStore {
    /// The crate's handle (a clone: cheap, an `Arc`).
    fn handle(&self) -> PyResult<DiskBackedStore> {
        if self.pid != std::process::id() {
            return Err(ClosedError::new_err(format!(
                "this handle of the store {} was opened by process {} and inherited by process {} through fork(); open the store again in this process",
                self.dir.display(),
                self.pid,
                std::process::id()
            )));
        }
        self.store.lock().clone().ok_or_else(|| {
            ClosedError::new_err(format!("the store {} is closed", self.dir.display()))
        })
    }

    /// A numpy array of the entry `handle`: over its data (pinned) when it
    /// can be mapped.
    fn to_numpy(&self, py: Python<'_>, key: &str, handle: DynStoredArray) -> PyResult<Py<PyAny>> {
        let (info, tx) = py.detach(|| keeper::pin(handle)).py_err()?;
        *self.pins.lock().entry(info.entry).or_insert(0) += 1;
        let pin = Pin {
            id: info.id,
            pid: std::process::id(),
            tx,
            entry: info.entry,
            counts: self.pins.clone(),
            key: key.to_owned(),
        };
        let base = Bound::new(py, pin)?.into_any();
        // SAFETY: the pin keeps a read guard on the entry: its data stays
        // where `info` says, unchanged (reads never write, and published
        // files are never modified in place) until the pin is dropped.
        unsafe { convert::pinned_to_numpy(py, &info, base) }
    }

    /// The entry `key` as numpy: zero-copy when mappable, else a copy read
    /// (and swapped) from its file (a big-endian `.npy`).
    fn read(&self, py: Python<'_>, key: &str, s: &DiskBackedStore) -> PyResult<Py<PyAny>> {
        match detached(py, || s.get_dyn(key)) {
            Ok(h) => self.to_numpy(py, key, h),
            Err(Error::DtypeMismatch { .. }) => {
                let a = detached(py, || s.read_dyn(key)).py_err()?;
                convert::owned_to_numpy(py, a)
            }
            Err(e) => Err(errors::to_py(e)),
        }
    }
}

fn parse_attrs(attrs: Option<&str>) -> PyResult<Option<serde_json::Value>> {
    attrs
        .map(|a| {
            serde_json::from_str(a)
                .map_err(|e| PyValueError::new_err(format!("attributes are not JSON: {e}")))
        })
        .transpose()
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, memory_budget=None, disk_budget=None, remote=None, read_only=false, exclusive=false, lock_timeout=None, write_behind=None, create=true))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        memory_budget: Option<String>,
        disk_budget: Option<String>,
        remote: Option<String>,
        read_only: bool,
        exclusive: bool,
        lock_timeout: Option<f64>,
        write_behind: Option<(usize, String)>,
        create: bool,
    ) -> PyResult<Self> {
        let mut b = StoreBuilder::new(&path)
            .read_only(read_only)
            .exclusive(exclusive)
            .create(create);
        if let Some(m) = memory_budget {
            b = b.memory_budget(m.as_str());
        }
        if let Some(d) = disk_budget {
            b = b.disk_budget(d.as_str());
        }
        if let Some(t) = lock_timeout {
            if !(t.is_finite() && t >= 0.0) {
                return Err(PyValueError::new_err(format!(
                    "lock_timeout must be a non-negative number of seconds, not {t}"
                )));
            }
            b = b.lock_timeout(Some(std::time::Duration::from_secs_f64(t)));
        }
        // Spills stay in the evicting call unless asked for: a writer
        // thread of the crate's default could hold one of its locks when
        // the process forks, which the fork hooks (no thread inside the
        // crate) would not see.
        b = match write_behind {
            Some((threads, bound)) => {
                let bound = ndarray_offload::ByteSize::parse(&bound).py_err()?;
                b.write_behind(threads, bound)
            }
            None => b.write_behind(0, 0u64),
        };
        if let Some(url) = remote {
            #[cfg(feature = "remote")]
            {
                b = b.remote(url);
            }
            #[cfg(not(feature = "remote"))]
            {
                return Err(PyValueError::new_err(format!(
                    "remote={url:?}: this build of ndoffload has no object-storage tier (cargo feature `remote`)"
                )));
            }
        }
        let store = detached(py, || b.open()).py_err()?;
        Ok(PyStore {
            dir: store.dir().to_path_buf(),
            read_only: store.is_read_only(),
            store: Mutex::new(Some(store)),
            pid: std::process::id(),
            pins: Arc::default(),
        })
    }

    /// The store directory (the local cache of a remote store).
    #[getter]
    fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    #[getter]
    fn read_only(&self) -> bool {
        self.read_only
    }

    #[getter]
    fn closed(&self) -> bool {
        self.store.lock().is_none()
    }

    /// Whether this handle was opened by the calling process.
    fn owned_here(&self) -> bool {
        self.pid == std::process::id()
    }

    #[pyo3(signature = (key, array, durable=false, attrs=None, recomputable=false, caching=None, automatic_offloading=None))]
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        py: Python<'_>,
        key: &str,
        array: &Bound<'_, PyAny>,
        durable: bool,
        attrs: Option<&str>,
        recomputable: bool,
        caching: Option<bool>,
        automatic_offloading: Option<bool>,
    ) -> PyResult<()> {
        let s = self.handle()?;
        let attrs = parse_attrs(attrs)?;
        // Checked before the copy: a bad name costs nothing.
        ndarray_offload::EntryName::new(key).py_err()?;
        // SAFETY: `view` is dropped at the end of this function, before
        // `_borrow`.
        let (view, _borrow) = unsafe { convert::borrow(array)? };
        let r: Result<Result<(), Error>, convert::CopyError> = detached(py, || {
            let a: DynArray = view.to_owned()?;
            let mut flags = ConfigOverrides::new();
            flags.caching = caching;
            flags.automatic_offloading = automatic_offloading;
            Ok(insert_dyn(&s, key, a, durable, attrs, recomputable, flags))
        });
        drop(view);
        r?.py_err()
    }

    /// The entry `key` as a read-only numpy array (see the module's notes).
    fn get(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyAny>> {
        let s = self.handle()?;
        self.read(py, key, &s)
    }

    fn remove(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let s = self.handle()?;
        detached(py, || s.remove(key)).py_err()
    }

    fn contains(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let s = self.handle()?;
        Ok(detached(py, || s.contains(key)))
    }

    fn len(&self) -> PyResult<usize> {
        Ok(self.handle()?.len())
    }

    fn keys(&self) -> PyResult<Vec<String>> {
        Ok(self
            .handle()?
            .keys()
            .into_iter()
            .map(|k| k.as_str().to_owned())
            .collect())
    }

    /// The entry's attributes as JSON text.
    fn attrs(&self, py: Python<'_>, key: &str) -> PyResult<String> {
        let s = self.handle()?;
        let info = detached(py, || s.info(key)).py_err()?;
        Ok(serde_json::Value::Object(info.attrs).to_string())
    }

    fn set_attrs(&self, py: Python<'_>, key: &str, attrs: &str) -> PyResult<()> {
        let s = self.handle()?;
        let attrs = parse_attrs(Some(attrs))?.unwrap_or_default();
        detached(py, || s.set_attrs(key, attrs)).py_err()
    }

    /// A summary of the entry (never reads its data).
    fn info<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyDict>> {
        let s = self.handle()?;
        let info = detached(py, || s.info(key)).py_err()?;
        let d = PyDict::new(py);
        d.set_item("name", info.name.as_str())?;
        d.set_item("dtype", &info.dtype)?;
        d.set_item("shape", PyTuple::new(py, &info.shape)?)?;
        d.set_item("state", state_name(info.state))?;
        d.set_item("nbytes", info.nbytes)?;
        d.set_item("recomputable", info.flags.recomputable)?;
        d.set_item("automatic_offloading", info.flags.automatic_offloading)?;
        d.set_item("enable_caching", info.flags.caching)?;
        d.set_item("purge_disk_on_gc", info.flags.purge_on_drop)?;
        d.set_item("attrs", serde_json::Value::Object(info.attrs).to_string())?;
        Ok(d)
    }

    /// The entry `key`, computed by `compute` (a callable returning a numpy
    /// array) if it does not exist, once across threads and processes.
    fn get_or_compute(&self, py: Python<'_>, key: &str, compute: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let s = self.handle()?;
        let r = py.detach(|| {
            let mut gate = FORK_GATE.read_recursive();
            s.try_get_or_compute_dyn(key, || {
                // The Python function runs with the GIL and without the
                // fork gate (it may fork, or wait for a thread that does).
                parking_lot::RwLockReadGuard::unlocked(&mut gate, || {
                    Python::attach(|py| -> Result<DynArray, ComputeError> {
                        let v = compute.call0(py).map_err(ComputeError::Py)?;
                        let v = prepare_array(py, v.bind(py)).map_err(ComputeError::Py)?;
                        // SAFETY: `view` is dropped before `_borrow`.
                        let (view, _borrow) =
                            unsafe { convert::borrow(&v) }.map_err(ComputeError::Py)?;
                        let a = py.detach(|| view.to_owned());
                        drop(view);
                        a.map_err(|e| ComputeError::Py(e.into()))
                    })
                })
            })
        });
        match r {
            Ok(h) => self.to_numpy(py, key, h),
            Err(ComputeError::Py(e)) => Err(e),
            Err(ComputeError::Store(e)) => Err(errors::to_py(e)),
        }
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.handle()?;
        detached(py, || s.flush()).py_err()
    }

    /// Offloads `keys` (all entries when `None`), except entries Python
    /// holds arrays of (they stay where they are; they are written if
    /// needed). Returns the keys skipped.
    #[pyo3(signature = (keys=None))]
    fn offload(&self, py: Python<'_>, keys: Option<Vec<String>>) -> PyResult<Vec<String>> {
        let s = self.handle()?;
        let pins = self.pins.clone();
        detached(py, || -> Result<Vec<String>, Error> {
            let keys: Vec<String> = match keys {
                Some(k) => k,
                None => s
                    .keys()
                    .into_iter()
                    .map(|k| k.as_str().to_owned())
                    .collect(),
            };
            let mut go = Vec::new();
            let mut held = Vec::new();
            for k in keys {
                let pinned = {
                    let p = pins.lock();
                    !p.is_empty()
                        && match s.get_dyn(&k) {
                            Ok(h) => p.contains_key(&keeper::entry_id(&h)),
                            Err(_) => false,
                        }
                };
                if pinned {
                    held.push(k);
                } else {
                    go.push(k);
                }
            }
            s.offload_keys(&go)?;
            if !held.is_empty() {
                s.flush()?;
            }
            Ok(held)
        })
        .py_err()
    }

    /// Read-ahead hints for `keys`; the bytes requested.
    fn prefetch(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<u64> {
        let s = self.handle()?;
        detached(py, || s.prefetch(&keys)).py_err()
    }

    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.handle()?;
        detached(py, || s.refresh()).py_err()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.handle()?.stats();
        let d = PyDict::new(py);
        d.set_item("hits", st.hits)?;
        d.set_item("misses", st.misses)?;
        d.set_item("loads", st.loads)?;
        d.set_item("computes", st.computes)?;
        d.set_item("offloads", st.offloads)?;
        d.set_item("evictions", st.evictions)?;
        d.set_item("over_budget_events", st.over_budget_events)?;
        d.set_item("bytes_resident", st.bytes_resident)?;
        d.set_item("bytes_on_disk", st.bytes_on_disk)?;
        d.set_item("entries_resident", st.entries_resident)?;
        d.set_item("entries_on_disk", st.entries_on_disk)?;
        d.set_item("budget", st.budget)?;
        d.set_item("bytes_in_flight", st.bytes_in_flight)?;
        d.set_item("write_behind_failures", st.write_behind_failures)?;
        d.set_item("disk_budget", st.disk_budget)?;
        d.set_item("bytes_in_files", st.bytes_in_files)?;
        d.set_item("disk_evictions", st.disk_evictions)?;
        d.set_item("bytes_disk_evicted", st.bytes_disk_evicted)?;
        d.set_item("disk_over_budget_events", st.disk_over_budget_events)?;
        d.set_item("hit_rate", st.hit_rate())?;
        Ok(d)
    }

    /// Live arrays handed out by this handle, per entry (for tests).
    fn pinned(&self) -> usize {
        self.pins.lock().values().sum()
    }

    /// Flushes, deletes this handle's scratch entries and releases the
    /// store's lock. Arrays Python holds stay valid.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.pid != std::process::id() {
            // A forked child's copy: never closed here (see `Drop`).
            if let Some(s) = self.store.lock().take() {
                std::mem::forget(s);
            }
            return Ok(());
        }
        let s = self.store.lock().take();
        match s {
            Some(s) => detached(py, || s.close()).py_err(),
            None => Ok(()),
        }
    }

    /// Forgets the handle without closing it (a forked child's copy).
    fn abandon(&self) {
        if let Some(s) = self.store.lock().take() {
            std::mem::forget(s);
        }
    }
}

/// A numpy array of `v` in the host's byte order (what the crate stores).
fn prepare_array<'py>(py: Python<'py>, v: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let ndo = py.import("ndoffload")?;
    ndo.getattr("_as_storable")?.call1((v,))
}

fn insert_dyn(
    s: &DiskBackedStore,
    key: &str,
    a: DynArray,
    durable: bool,
    attrs: Option<serde_json::Value>,
    recomputable: bool,
    flags: ConfigOverrides,
) -> Result<(), Error> {
    let with_flags = flags.caching.is_some() || flags.automatic_offloading.is_some();
    let plain = attrs.is_none() && !recomputable && !with_flags;
    let mut opts = InsertOptions::new()
        .durable(durable)
        .recomputable(recomputable)
        .overrides(flags);
    if let Some(at) = attrs {
        opts = opts.attrs(at);
    }
    macro_rules! each {
        ($($v:ident),*) => {
            match a {
                $(DynArray::$v(x) => s.insert_opts(key, x, &opts),)*
                other => Err(Error::InvalidInput { path: key.into(), reason: format!("unsupported dtype {}", other.dtype()) }),
            }
        };
    }
    each!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64, C32, C64)?;
    if durable && !plain {
        // Written (durably, one publish) and its RAM freed; the next read
        // maps it.
        s.offload(key)?;
    }
    Ok(())
}

/// `os.register_at_fork(before=...)`: no thread is inside the crate while
/// the process forks.
#[pyfunction]
fn _fork_prepare(py: Python<'_>) {
    py.detach(|| std::mem::forget(FORK_GATE.write()));
}

/// `os.register_at_fork(after_in_parent=...)` and `after_in_child=...`.
#[pyfunction]
fn _fork_release() {
    if FORK_GATE.is_locked_exclusive() {
        // SAFETY: taken (and its guard forgotten) by `_fork_prepare` of
        // this process (or of the parent, whose memory the child copied).
        unsafe { FORK_GATE.force_unlock_write() };
    }
}

#[pymodule]
fn _ndoffload(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<Pin>()?;
    m.add_function(wrap_pyfunction!(_fork_prepare, m)?)?;
    m.add_function(wrap_pyfunction!(_fork_release, m)?)?;
    errors::register(m)?;
    let _ = PyList::empty(m.py());
    Ok(())
}
