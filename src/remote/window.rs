//! Windows of entries: a box of an entry (a range per axis) read without
//! reading the rest ([`DiskBackedStore::read_window`]).
//!
//! Over an object store, the box's bytes are computed from the data
//! object's `.npy` header (C or Fortran order): one run of contiguous bytes
//! per combination of the indices of the axes before the innermost partial
//! one (in storage order), runs closer than [`GAP`] coalesced into one
//! request, and fetched by parallel ranged GETs into a sparse local file
//! per data object (the window cache), whose fetched ranges the handle
//! remembers: a second window over the same bytes fetches nothing. Data
//! objects are immutable, so the ranges of one never mix two versions of
//! an entry.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};

use std::sync::Arc;

use ndarray::{ArrayD, ArrayRef, ArrayView, IxDyn, ShapeBuilder, Slice};

use super::backend::{ObjectBackend, WindowPlan};
use super::protocol::RemoteMeta;
use super::window_cache::{coalesce, WindowCopy, GAP};
use crate::array::ArrayState;
use crate::element::{dtype_itemsize, Element};
use crate::error::{Error, IoContext, RemoteErrorKind, Result};
use crate::mmap::{LoadMode, MapView};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::DiskBackedStore;

/// Bytes fetched first for a data object's `.npy` header (more if the
/// header says it is longer).
const HEAD: u64 = 4096;

/// Reads from the window cache smaller than this go through a block buffer.
const SMALL: u64 = 64 << 10;

/// The block buffer's size.
const BLOCK: u64 = 1 << 20;

/// The calls of windows (any store; over an object store they fetch only
/// the window's bytes).
impl DiskBackedStore {
    /// The box `ranges` (one range of indices per axis, in the entry's
    /// axis order) of the entry `name`, as an owned array of shape
    /// `[r.len() for r in ranges]`, without reading the rest of the entry.
    /// `&[a..b, 0..n1, 0..n2]` is a slab of the outer axis; an empty range
    /// gives an empty array (and fetches nothing).
    ///
    /// On a local store, and for an entry this handle holds in RAM or
    /// whose current data the cache directory holds, this copies the box
    /// out of the mapped (or resident) entry, as slicing
    /// [`get`](Self::get)'s view would.
    ///
    /// Over an object store ([`StoreBuilder::remote`](crate::StoreBuilder::remote)),
    /// an entry not cached is **not** downloaded: the window's bytes are
    /// fetched with ranged GETs of the entry's data object, and kept in the
    /// handle's window cache (a sparse file per entry under
    /// `.ndoffload/windows/` of the cache directory, or in a temporary
    /// directory for a read-only handle; removed when the handle is
    /// dropped, when the entry's data object changes and when a full
    /// `get` cached the entry whole, but kept while a
    /// [`map_window`](Self::map_window) view maps it), so that a
    /// window over bytes already fetched makes no request. The window
    /// reads one version: the data object the handle's metadata of the
    /// entry names (as [`get`](Self::get) reads; [`refresh`](Self::refresh)
    /// to see newer versions); data objects are immutable, so its bytes
    /// never mix two versions. If that object was collected (the entry was
    /// replaced and `gc` ran), the entry's metadata is read again and the
    /// window read once more, whole, from the new version.
    ///
    /// # Cost model (over an object store)
    ///
    /// The array is stored in C (row-major) or Fortran order; in that
    /// order, the trailing axes the box covers whole and the innermost one
    /// it does not form contiguous runs of bytes: a slab `a..b` of the
    /// outer axis of a C-order array is **one** run; a box is one run per
    /// combination of the indices of the axes before that (a box
    /// `[a..b, c..d]` of a C-order matrix is `b - a` runs). Runs closer than
    /// 256 KiB are coalesced (the bytes between are fetched too), and the
    /// coalesced runs split into parts of
    /// [`TransferOptions::part_size`](super::TransferOptions::part_size)
    /// fetched [`concurrency`](super::TransferOptions::concurrency) at a
    /// time. So:
    ///
    /// * requests ≈ the number of coalesced runs (at least one per part),
    ///   plus one for the `.npy` header on the entry's first window;
    /// * bytes ≈ the runs' bytes (plus the gaps under 256 KiB between
    ///   them) plus the header's first 4 KiB;
    /// * bytes already in the window cache are not fetched again: a second
    ///   window over the same bytes makes no request.
    ///
    /// The window cache counts against the store's disk budget
    /// ([`StoreBuilder::disk_budget`](crate::StoreBuilder::disk_budget)):
    /// an entry's cached ranges are dropped least recently used first,
    /// with the cached whole copies (never while a window of it is read or
    /// a [`WindowView`](super::WindowView) of it lives). A later full
    /// [`get`](Self::get) of the same version copies the cached ranges
    /// and fetches only the rest. A window checks the data object's header
    /// against the entry's metadata, but not the object's CRC-32 (which
    /// covers the whole object: `get` checks it, the copied ranges
    /// included). Transfers report their progress as `tracing` events (see
    /// [`remote`](crate::remote#progress)).
    ///
    /// [`map_window`](Self::map_window) gives the same window as a view
    /// over the window cache's file instead of a copy.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`]; [`Error::DtypeMismatch`] if `T` is not the
    /// entry's element type; [`Error::InvalidInput`] if `ranges` does not
    /// have one range per axis, or a range is out of the axis's bounds (or
    /// decreasing); [`Error::Remote`] naming the entry and the data
    /// object's URL if a request fails; [`Error::Mismatch`] /
    /// [`Error::Corrupt`] if the data object's header disagrees with the
    /// entry's metadata; [`Error::Io`] if the window cache cannot be
    /// written.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{s, Array2};
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let cache = tempfile::tempdir()?;
    /// let store = StoreBuilder::new(cache.path()).remote("memory:///b/windows").open()?;
    /// let a = Array2::from_shape_fn((1000, 8), |(i, j)| (i * 8 + j) as f64);
    /// store.insert_durable("a", a.clone())?;
    ///
    /// // Rows 10..20 (over an object store, on a node that has not cached
    /// // the entry: one ranged GET), then a box.
    /// let slab = store.read_window::<f64>("a", &[10..20, 0..8])?;
    /// assert_eq!(slab, a.slice(s![10..20, ..]).into_dyn());
    /// let b = store.read_window::<f64>("a", &[5..7, 2..4])?;
    /// assert_eq!(b, a.slice(s![5..7, 2..4]).into_dyn());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_window<T: Element>(
        &self,
        name: impl AsRef<str>,
        ranges: &[Range<usize>],
    ) -> Result<ArrayD<T>> {
        let name = EntryName::new(name.as_ref())?;
        self.window_of(
            &name,
            || self.local_window(&name, ranges),
            |b, remote| remote_window::<T>(b, &name, remote, ranges),
        )
    }

    /// The box `ranges` (one range of indices per axis) of the entry
    /// `name`, as a read-only view over a memory map, without reading the
    /// rest of the entry and without copying the window's elements: the
    /// view's elements are those of [`read_window`](Self::read_window)'s
    /// array (same shape, same values), read in place.
    ///
    /// Over an object store, the window's bytes are fetched exactly as
    /// [`read_window`](Self::read_window) fetches them, into the handle's
    /// window cache, and the view maps the window cache's file of the
    /// entry's data object. On a local store, and for an entry whose
    /// current data the cache directory holds, it maps the entry's data
    /// file. An entry this handle holds in RAM (inserted and not offloaded
    /// since, or mapped read-write or copy-on-write) has no file that is
    /// its value: its window is copied, as `read_window` does
    /// ([`WindowView::is_mapped`](super::WindowView::is_mapped) says
    /// which), and so is every window of a store that maps entries
    /// read-write ([`CacheConfig::with_load_mode`](crate::CacheConfig::with_load_mode)).
    ///
    /// # Cost model: owned array or view
    ///
    /// The bytes fetched and the requests are those of `read_window` (see
    /// its cost model). What differs is what the window costs in memory
    /// and time once its bytes are local:
    ///
    /// * `read_window` reads the window's bytes from the window cache's
    ///   file (or the entry's mapped file) into a new array: the window's
    ///   size in RAM, allocated and copied before it returns, and owned
    ///   (it outlives the store, nothing pins the file);
    /// * `map_window` maps the bytes between the window's first and last
    ///   element and returns at once: nothing is copied, pages are read
    ///   in (from the page cache) when an element of them is first read,
    ///   and they count in the resident memory of the process only while
    ///   they are in the page cache (the kernel drops clean pages under
    ///   memory pressure). The view is strided over the entry's layout: a
    ///   box that is not a slab of the outer axis (in C order; of the
    ///   inner axis in Fortran order) is not contiguous in memory.
    ///
    /// A view keeps what it maps: its window cache file (or the entry's
    /// data file) stays on disk until the view is dropped, whatever
    /// happens to the entry meanwhile (another handle replacing it, `gc`,
    /// the disk budget, which skips files in use, or the handle being
    /// dropped); other windows of the same entry fill other parts of the
    /// same file, never the bytes the view shows, and a new version of
    /// the entry gets a new file. The view therefore shows one version of
    /// the entry, whole. (As for every map: another program truncating or
    /// rewriting the file while it is mapped is outside the guarantee.)
    ///
    /// # Errors
    ///
    /// As [`read_window`](Self::read_window); [`Error::Io`] if the file
    /// cannot be mapped; [`Error::Corrupt`] if the window cache's file was
    /// changed by something else twice while the window was fetched, or
    /// the `.npy`'s data is not aligned for `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{s, Array2};
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let cache = tempfile::tempdir()?;
    /// let store = StoreBuilder::new(cache.path()).remote("memory:///b/views").open()?;
    /// let a = Array2::from_shape_fn((1000, 8), |(i, j)| (i * 8 + j) as f64);
    /// store.insert_durable("a", a.clone())?;
    ///
    /// // Rows 10..20 as a view: nothing copied, the elements are read in
    /// // place from the mapped file.
    /// let w = store.map_window::<f64>("a", &[10..20, 0..8])?;
    /// assert_eq!(w.view(), a.slice(s![10..20, ..]).into_dyn());
    /// assert_eq!(w[[0, 1]], 81.0);
    /// assert_eq!(w.sum(), a.slice(s![10..20, ..]).sum());
    /// // An owned array when one is needed.
    /// let owned = w.to_owned();
    /// drop(w);
    /// assert_eq!(owned.shape(), [10, 8]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_window<T: Element>(
        &self,
        name: impl AsRef<str>,
        ranges: &[Range<usize>],
    ) -> Result<WindowView<T>> {
        let name = EntryName::new(name.as_ref())?;
        self.window_of(
            &name,
            || self.local_view(&name, ranges),
            |b, remote| remote_view::<T>(b, &name, remote, ranges),
        )
    }

    /// A window of `name`: `local` when this handle or the cache directory
    /// holds its data, else `remote` of the data object this handle's
    /// metadata names (once more, of the entry's metadata read again, if
    /// that object was collected); the window cache's bytes then counted.
    fn window_of<R>(
        &self,
        name: &EntryName,
        local: impl Fn() -> Result<R>,
        remote: impl Fn(&ObjectBackend, &RemoteMeta) -> Result<R>,
    ) -> Result<R> {
        let Some(b) = self.object_backend() else {
            return local();
        };
        if self.holds_data(name) {
            return local();
        }
        let mut retried = false;
        loop {
            let meta = match b.window_plan(name)? {
                WindowPlan::Local => return local(),
                WindowPlan::Remote(m) => m,
            };
            let r = remote(b, &meta);
            if r.is_ok() {
                self.note_window(name);
            }
            match r {
                Err(Error::Remote {
                    kind: RemoteErrorKind::NotFound,
                    ..
                }) if !retried => {
                    // The data object was collected: the entry changed.
                    retried = true;
                    b.reload_entry(name)?;
                }
                r => return r,
            }
        }
    }

    /// The window copied out of the entry as [`get`](Self::get) reads it.
    fn local_window<T: Element>(
        &self,
        name: &EntryName,
        ranges: &[Range<usize>],
    ) -> Result<ArrayD<T>> {
        let a = self.get::<T, IxDyn>(name.as_str())?;
        let g = a.read()?;
        let v = g.view();
        check_ranges(v.shape(), ranges, &self.storage().meta_path(name))?;
        Ok(
            v.slice_each_axis(|ax| Slice::from(ranges[ax.axis.index()].clone()))
                .to_owned(),
        )
    }

    /// The window as a view of the entry as [`get`](Self::get) reads it:
    /// a map of its data file, or a copy when the handle holds it in RAM.
    fn local_view<T: Element>(
        &self,
        name: &EntryName,
        ranges: &[Range<usize>],
    ) -> Result<WindowView<T>> {
        let a = self.get::<T, IxDyn>(name.as_str())?;
        let in_file = matches!(
            a.state(),
            ArrayState::Offloaded | ArrayState::Mapped(LoadMode::ReadOnly)
        );
        if !in_file || self.maps_read_write() {
            drop(a);
            return self.local_window(name, ranges).map(WindowView::owned);
        }
        drop(a);
        let storage = self.storage();
        let meta_path = storage.meta_path(name);
        let c = storage.read_checked(name)?;
        let path = storage.data_path(name);
        let Some((file, info)) = c.file else {
            return Err(Error::NoFile {
                path,
                reason: "the data file disagrees with the entry's metadata",
            });
        };
        if info.descr != T::dtype() {
            return Err(Error::DtypeMismatch {
                path: meta_path,
                expected: T::dtype(),
                found: info.descr,
            });
        }
        check_ranges(&info.shape, ranges, &meta_path)?;
        map_box(&file, &path, &info, ranges, None)
    }
}

/// A window of an entry as a read-only view, without a copy of its
/// elements ([`DiskBackedStore::map_window`]): dereferences to the array
/// (`&ArrayRef<T, IxDyn>`, so `w[[i, j]]`, `w.sum()`, `w.shape()`), or
/// [`view`](Self::view) gives an [`ArrayView`]. It keeps the file it maps
/// until it is dropped.
pub struct WindowView<T: Element> {
    repr: Repr<T>,
}

enum Repr<T: Element> {
    /// A view over a mapped file: the window cache's (with the copy that
    /// owns it, kept from the disk budget while the view lives) or the
    /// entry's data file.
    Mapped {
        view: MapView<T>,
        _copy: Option<Arc<WindowCopy>>,
    },
    /// A copy of the window (an entry the handle holds in RAM; an empty
    /// window).
    Owned(ArrayD<T>),
}

impl<T: Element> WindowView<T> {
    fn owned(a: ArrayD<T>) -> Self {
        WindowView {
            repr: Repr::Owned(a),
        }
    }

    /// The window, as a view borrowed from `self`.
    pub fn view(&self) -> ArrayView<'_, T, IxDyn> {
        match &self.repr {
            Repr::Mapped { view: m, .. } => m.array().view(),
            Repr::Owned(a) => a.view(),
        }
    }

    /// Whether the elements are read in place from a mapped file (`false`:
    /// the window was copied, see [`DiskBackedStore::map_window`]).
    pub fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }
}

impl<T: Element> std::ops::Deref for WindowView<T> {
    type Target = ArrayRef<T, IxDyn>;

    fn deref(&self) -> &ArrayRef<T, IxDyn> {
        match &self.repr {
            Repr::Mapped { view: m, .. } => m.array(),
            Repr::Owned(a) => a,
        }
    }
}

impl<T: Element> std::fmt::Debug for WindowView<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowView")
            .field("shape", &self.shape())
            .field("mapped", &self.is_mapped())
            .finish_non_exhaustive()
    }
}

/// Strides (in elements) of an array of `shape` stored in C or Fortran
/// order.
fn strides(shape: &[usize], fortran: bool) -> Vec<usize> {
    let n = shape.len();
    let mut st = vec![1usize; n];
    if fortran {
        for i in 1..n {
            st[i] = st[i - 1] * shape[i - 1];
        }
    } else {
        for i in (0..n.saturating_sub(1)).rev() {
            st[i] = st[i + 1] * shape[i + 1];
        }
    }
    st
}

/// A view of the box `ranges` (checked against `info.shape`) of the `.npy`
/// open as `file` (its header `info`): a map of the bytes from the box's
/// first element to its last, `keep` kept with it.
fn map_box<T: Element>(
    file: &File,
    path: &FsPath,
    info: &NpyInfo,
    ranges: &[Range<usize>],
    keep: Option<Arc<WindowCopy>>,
) -> Result<WindowView<T>> {
    let wshape: Vec<usize> = ranges.iter().map(|r| r.end - r.start).collect();
    if wshape.contains(&0) {
        return ArrayD::from_shape_vec(IxDyn(&wshape), Vec::new())
            .map(WindowView::owned)
            .map_err(|e| Error::corrupt(path, e.to_string()));
    }
    let item = dtype_itemsize(&info.descr)
        .ok_or_else(|| Error::corrupt(path, format!("unsupported dtype {}", info.descr)))?
        as u64;
    let st = strides(&info.shape, info.fortran);
    // The box's first and last element, as indices of the flat storage
    // (the shape passed the header's size checks: no overflow).
    let first: usize = ranges.iter().zip(&st).map(|(r, s)| r.start * s).sum();
    let last: usize = ranges.iter().zip(&st).map(|(r, s)| (r.end - 1) * s).sum();
    let count = last - first + 1;
    let offset = info.data_offset as u64 + first as u64 * item;
    let len = count as u64 * item;
    let file_len = file.metadata().ctx("stat", path)?.len();
    if offset + len > file_len {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            expected: offset + len,
            actual: file_len,
        });
    }
    let len = usize::try_from(len).map_err(|_| Error::corrupt(path, "too large to map"))?;
    let view = MapView::new(file, offset, len, path, |bytes| {
        let data = T::bytes_as_slice(bytes, &T::type_descriptor(), count)
            .map_err(|e| Error::corrupt(path, format!("mapping a window: {e}")))?;
        let sub: Vec<usize> = st.clone();
        ArrayView::from_shape(IxDyn(&wshape).strides(IxDyn(&sub)), data)
            .map_err(|e| Error::corrupt(path, format!("mapping a window: {e}")))
    })?;
    Ok(WindowView {
        repr: Repr::Mapped { view, _copy: keep },
    })
}

/// Checks that `ranges` has one range per axis of `shape`, each within it.
fn check_ranges(shape: &[usize], ranges: &[Range<usize>], path: &FsPath) -> Result<()> {
    if ranges.len() != shape.len() {
        return Err(Error::InvalidInput {
            path: path.to_path_buf(),
            reason: format!(
                "a window needs one range per axis: the entry has shape {shape:?} ({} axes), \
                 {} ranges were given",
                shape.len(),
                ranges.len()
            ),
        });
    }
    for (axis, (r, &n)) in ranges.iter().zip(shape).enumerate() {
        if r.start > r.end || r.end > n {
            return Err(Error::InvalidInput {
                path: path.to_path_buf(),
                reason: format!(
                    "window range {}..{} of axis {axis} is out of bounds 0..{n} (shape {shape:?})",
                    r.start, r.end
                ),
            });
        }
    }
    Ok(())
}

/// Checks that `T` is the element type of the data object `remote`
/// names and that `ranges` is a window of its shape (errors name the
/// entry's metadata, whose path it returns).
fn check_window<T: Element>(
    b: &ObjectBackend,
    name: &EntryName,
    remote: &RemoteMeta,
    ranges: &[Range<usize>],
) -> Result<PathBuf> {
    let meta_path = b.entry_meta_path(name);
    if remote.dtype != T::dtype() {
        return Err(Error::DtypeMismatch {
            path: meta_path,
            expected: T::dtype(),
            found: remote.dtype.clone(),
        });
    }
    check_ranges(&remote.shape, ranges, &meta_path)?;
    Ok(meta_path)
}

/// Reads the window from the data object `remote` names.
fn remote_window<T: Element>(
    b: &ObjectBackend,
    name: &EntryName,
    remote: &RemoteMeta,
    ranges: &[Range<usize>],
) -> Result<ArrayD<T>> {
    let meta_path = check_window::<T>(b, name, remote, ranges)?;
    let wshape: Vec<usize> = ranges.iter().map(|r| r.end - r.start).collect();
    let len: usize = wshape.iter().product();
    if len == 0 {
        return ArrayD::from_shape_vec(IxDyn(&wshape), Vec::new())
            .map_err(|e| Error::corrupt(&meta_path, e.to_string()));
    }
    let copy = b.window_copy(name, remote)?;
    let url = PathBuf::from(&copy.url);
    let bad_shape = |e: ndarray::ShapeError| Error::corrupt(&url, e.to_string());
    let info = header(b, name, remote, &copy, &meta_path)?;
    let item = dtype_itemsize(&info.descr)
        .ok_or_else(|| Error::corrupt(&url, format!("unsupported dtype {}", info.descr)))?;
    let runs = || {
        Runs::new(
            &remote.shape,
            ranges,
            item as u64,
            info.fortran,
            info.data_offset as u64,
        )
    };
    b.window_fetch(name, &copy, &coalesce(runs(), GAP))?;
    let reader = RunsReader {
        file: &copy.file,
        size: copy.size,
        runs: runs(),
        cur: (0, 0),
        block: Vec::new(),
        block_start: 0,
    };
    let values =
        T::read_to_end_exact_vec(reader, &T::type_descriptor(), len).map_err(|e| match e {
            ndarray_npy::ReadDataError::Io(e) => Error::io("read", &copy.path, e),
            e => Error::corrupt(&url, format!("reading a window: {e}")),
        })?;
    let shape = if info.fortran {
        IxDyn(&wshape).f()
    } else {
        IxDyn(&wshape).into_shape_with_order()
    };
    ArrayD::from_shape_vec(shape, values).map_err(bad_shape)
}

/// The window of the data object `remote` names, as a view of the window
/// cache's file.
fn remote_view<T: Element>(
    b: &ObjectBackend,
    name: &EntryName,
    remote: &RemoteMeta,
    ranges: &[Range<usize>],
) -> Result<WindowView<T>> {
    let meta_path = check_window::<T>(b, name, remote, ranges)?;
    if ranges.iter().any(|r| r.is_empty()) {
        let wshape: Vec<usize> = ranges.iter().map(|r| r.end - r.start).collect();
        return ArrayD::from_shape_vec(IxDyn(&wshape), Vec::new())
            .map(WindowView::owned)
            .map_err(|e| Error::corrupt(&meta_path, e.to_string()));
    }
    // A copy whose file something else changed is replaced by a new one
    // (`window_copy`), and the window fetched into it: once.
    for _ in 0..2 {
        let copy = b.window_copy(name, remote)?;
        let info = header(b, name, remote, &copy, &meta_path)?;
        let item = dtype_itemsize(&info.descr).ok_or_else(|| {
            Error::corrupt(
                &PathBuf::from(&copy.url),
                format!("unsupported dtype {}", info.descr),
            )
        })?;
        let runs = Runs::new(
            &remote.shape,
            ranges,
            item as u64,
            info.fortran,
            info.data_offset as u64,
        );
        b.window_fetch(name, &copy, &coalesce(runs, GAP))?;
        if copy.intact() {
            let file = copy.file.clone();
            let path = copy.path.clone();
            return map_box(&file, &path, &info, ranges, Some(copy));
        }
    }
    Err(Error::corrupt(
        &b.entry_meta_path(name),
        "the window cache's file of the entry was changed by something else while a window \
         was fetched into it, twice",
    ))
}

/// The data object's `.npy` header, fetched into the window cache and
/// checked against the entry's metadata.
fn header(
    b: &ObjectBackend,
    name: &EntryName,
    remote: &RemoteMeta,
    copy: &WindowCopy,
    meta_path: &FsPath,
) -> Result<NpyInfo> {
    if let Some(h) = copy.header.get() {
        return Ok(h.clone());
    }
    let url = PathBuf::from(&copy.url);
    let mut want = HEAD.min(copy.size);
    let info = loop {
        b.window_fetch(name, copy, std::slice::from_ref(&(0..want)))?;
        let mut buf = vec![0u8; want as usize];
        copy.file
            .read_exact_at(&mut buf, 0)
            .ctx("read", &copy.path)?;
        match NpyInfo::parse(&buf, &url) {
            Err(Error::Truncated { expected, .. }) if expected > want && expected <= copy.size => {
                want = expected;
            }
            r => break r?,
        }
    };
    let mismatch = |field: &'static str, found: String, expected: String| Error::Mismatch {
        path: url.clone(),
        field,
        found,
        expected,
        other: meta_path.to_path_buf(),
    };
    if info.descr != remote.dtype {
        return Err(mismatch("dtype", info.descr, remote.dtype.clone()));
    }
    if info.shape != remote.shape {
        return Err(mismatch(
            "shape",
            format!("{:?}", info.shape),
            format!("{:?}", remote.shape),
        ));
    }
    let end = info.data_len.map(|n| n + info.data_offset as u64);
    if end != Some(copy.size) {
        return Err(Error::corrupt(
            &url,
            format!(
                "its header promises {} bytes, its metadata says the object has {}",
                end.map_or_else(|| "an unknown number of".into(), |n| n.to_string()),
                copy.size
            ),
        ));
    }
    let _ = copy.header.set(info.clone());
    Ok(info)
}

/// The byte runs `(offset, length)` of a box of an array stored in C or
/// Fortran order from `base` on, in increasing offset order.
pub(crate) struct Runs {
    /// The axes before the run's, slowest first: index range and stride in
    /// bytes.
    outer: Vec<(u64, u64, u64)>,
    idx: Vec<u64>,
    /// Offset and length of the first run.
    first: u64,
    len: u64,
    done: bool,
}

impl Runs {
    pub(crate) fn new(
        shape: &[usize],
        ranges: &[Range<usize>],
        item: u64,
        fortran: bool,
        base: u64,
    ) -> Runs {
        // Axes in storage order, slowest first.
        let mut axes: Vec<(u64, Range<u64>)> = shape
            .iter()
            .zip(ranges)
            .map(|(&n, r)| (n as u64, r.start as u64..r.end as u64))
            .collect();
        if fortran {
            axes.reverse();
        }
        let empty = axes.iter().any(|(_, r)| r.start >= r.end);
        let n = axes.len();
        let mut stride = vec![item; n];
        for i in (0..n.saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * axes[i + 1].0;
        }
        if n == 0 {
            return Runs {
                outer: Vec::new(),
                idx: Vec::new(),
                first: base,
                len: item,
                done: false,
            };
        }
        // The innermost axis the box does not cover whole (the run's axis:
        // the ones after it are whole).
        let mut k = n - 1;
        while k > 0 && axes[k].1 == (0..axes[k].0) {
            k -= 1;
        }
        let outer: Vec<(u64, u64, u64)> = (0..k)
            .map(|i| (axes[i].1.start, axes[i].1.end, stride[i]))
            .collect();
        Runs {
            idx: outer.iter().map(|o| o.0).collect(),
            outer,
            first: base + axes[k].1.start * stride[k],
            len: (axes[k].1.end - axes[k].1.start) * stride[k],
            done: empty,
        }
    }
}

impl Iterator for Runs {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.done {
            return None;
        }
        let off = self.first
            + self
                .idx
                .iter()
                .zip(&self.outer)
                .map(|(i, o)| i * o.2)
                .sum::<u64>();
        let mut i = self.outer.len();
        loop {
            if i == 0 {
                self.done = true;
                break;
            }
            i -= 1;
            self.idx[i] += 1;
            if self.idx[i] < self.outer[i].1 {
                break;
            }
            self.idx[i] = self.outer[i].0;
        }
        Some((off, self.len))
    }
}

/// Reads the bytes of `runs` from the window cache, one after the other.
struct RunsReader<'a> {
    file: &'a File,
    size: u64,
    runs: Runs,
    /// The current run: offset and bytes left.
    cur: (u64, u64),
    /// Small runs are served from this copy of the file at `block_start`.
    block: Vec<u8>,
    block_start: u64,
}

impl Read for RunsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.1 == 0 {
            match self.runs.next() {
                Some(r) => self.cur = r,
                None => return Ok(0),
            }
        }
        let (off, left) = self.cur;
        let n = left.min(buf.len() as u64);
        let in_block =
            off >= self.block_start && off + n <= self.block_start + self.block.len() as u64;
        if !in_block && left >= SMALL {
            self.file.read_exact_at(&mut buf[..n as usize], off)?;
        } else {
            if !in_block {
                let len = BLOCK.max(n).min(self.size.saturating_sub(off));
                self.block.resize(len as usize, 0);
                self.file.read_exact_at(&mut self.block, off)?;
                self.block_start = off;
            }
            let at = (off - self.block_start) as usize;
            buf[..n as usize].copy_from_slice(&self.block[at..at + n as usize]);
        }
        self.cur = (off + n, left - n);
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;

    /// The bytes of the runs, as element indices of the flat storage.
    fn elements(shape: &[usize], ranges: &[Range<usize>], fortran: bool) -> Vec<u64> {
        Runs::new(shape, ranges, 1, fortran, 0)
            .flat_map(|(o, l)| o..o + l)
            .collect()
    }

    #[test]
    fn runs_are_the_box_in_storage_order() {
        let shape = [4usize, 5, 6];
        let c = ndarray::Array::from_shape_fn(shape, |(i, j, k)| (i * 30 + j * 6 + k) as u64);
        let f = ndarray::Array::from_shape_fn(shape.f(), |(i, j, k)| (i + j * 4 + k * 20) as u64);
        for ranges in [
            vec![1..3, 0..5, 0..6],
            vec![0..4, 2..4, 1..5],
            vec![0..4, 0..5, 0..6],
            vec![3..4, 4..5, 5..6],
            vec![0..4, 0..5, 2..3],
            vec![1..1, 0..5, 0..6],
        ] {
            let (a, b, cc) = (ranges[0].clone(), ranges[1].clone(), ranges[2].clone());
            let want_c: Vec<u64> = c
                .slice(s![a.clone(), b.clone(), cc.clone()])
                .iter()
                .copied()
                .collect();
            assert_eq!(elements(&shape, &ranges, false), want_c, "{ranges:?}");
            let want_f: Vec<u64> = f.slice(s![a, b, cc]).t().iter().copied().collect();
            assert_eq!(elements(&shape, &ranges, true), want_f, "{ranges:?}");
        }
        // A slab of the outer axis of a C-order array is one run.
        assert_eq!(
            Runs::new(&shape, &[1..3, 0..5, 0..6], 8, false, 128).count(),
            1
        );
        // 0-d: the one element.
        assert_eq!(
            Runs::new(&[], &[], 8, false, 128).collect::<Vec<_>>(),
            [(128, 8)]
        );
    }
}
