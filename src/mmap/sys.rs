//! Memory maps (and one allocator call): the only file of the crate that
//! contains `unsafe` code (`#![allow(unsafe_code)]` here alone; the crate
//! root denies it everywhere else).
//!
//! # Soundness contract
//!
//! Creating a memory map is `unsafe` because the mapped bytes can change or
//! disappear underneath safe references if the file is modified or truncated
//! while mapped. The crate upholds the following, and documents the rest as
//! outside its guarantee (as `memmap2` does):
//!
//! * A published file is never modified in place by the crate, except through
//!   a read-write map that the user asked for explicitly
//!   ([`LoadMode::ReadWrite`](crate::LoadMode::ReadWrite)), and only for the
//!   array that owns that file. Every other overwrite writes a new file and
//!   renames it over the old name, so an existing map keeps the old inode.
//! * A window cache file (an object store's, `remote/window_cache.rs`) has
//!   its data object's full size from its creation on, is never truncated,
//!   and is written only where it holds nothing yet: a [`MapView`] of bytes
//!   it holds never sees them change or disappear.
//! * A map is created over the whole file as it is when mapped; every read
//!   through it is bounds-checked against the map length, so a file shorter
//!   than its header promises yields an error, never a read past the end
//!   (which would raise `SIGBUS`).
//! * Element slices are produced from mapped bytes only through
//!   `ndarray-npy`'s checked `ViewElement` casts (type, alignment, length and,
//!   for `bool`, value validity).
//!
//! Outside the guarantee: another program (or another handle of the user's)
//! truncating or rewriting a file while this crate has it mapped.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Mmap, MmapMut, MmapOptions};
use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Dimension};
use parking_lot::{
    RecursiveRwLockReadGuard as RwLockReadGuard, RecursiveRwLockWriteGuard as RwLockWriteGuard,
};

use crate::error::{IoContext, Result};

/// Maps `file` read-only.
pub(crate) fn map_readonly(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: see the module's soundness contract: the crate never modifies a
    // published file in place, and all access through the map is
    // bounds-checked against the length captured here.
    unsafe { MmapOptions::new().map(file) }.ctx("map", path)
}

/// [`map_readonly`] of a file whose length `len` the caller just read with
/// `fstat` on the same descriptor (saves the `fstat` the map would make).
pub(crate) fn map_readonly_len(file: &File, len: u64, path: &Path) -> Result<Mmap> {
    let Ok(len) = usize::try_from(len) else {
        return Err(crate::error::Error::corrupt(path, "too large to map"));
    };
    // SAFETY: as `map_readonly`; `len` is the file's length by an `fstat`
    // of this descriptor, and a published file never shrinks in place (the
    // module's soundness contract), so the map covers no byte past its end.
    unsafe { MmapOptions::new().len(len).map(file) }.ctx("map", path)
}

/// Maps `file` read-write: writes through the map reach the file.
pub(crate) fn map_read_write(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: read-write maps are created only for a file owned by one array,
    // at the user's explicit request; the crate holds the map behind a lock so
    // no two mutable views alias. Changes by other programs are outside the
    // guarantee (module docs).
    unsafe { MmapOptions::new().map_mut(file) }.ctx("map read-write", path)
}

/// Maps `file` copy-on-write: writes stay private to the process.
pub(crate) fn map_copy_on_write(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: a private map never writes to the file; the file itself is never
    // modified in place by the crate (module docs).
    unsafe { MmapOptions::new().map_copy(file) }.ctx("map copy-on-write", path)
}

/// A read lock guard on `S` and a view of data inside `S`, kept together so
/// that the array guards can dereference to an array (`&ArrayRef`).
///
/// Sound because: the view borrows data reachable from the `&S` the guard
/// gives, which stays valid and unchanged while a read guard is held (no
/// `&mut S` exists; `S` is the array's state, without interior mutability);
/// moving the guard moves a pointer to the lock, never the data; the view
/// is handed out only reborrowed from `&self` (its `'static` lifetime never
/// escapes: [`ArrayRef`] is unsized, so a `&ArrayRef` cannot be swapped or
/// copied out), and it is dropped before the guard (field order, and
/// [`WriteView::into_guard`]).
pub(crate) struct ReadView<'a, S, T: 'static, E: Dimension> {
    view: ArrayView<'static, T, E>,
    _guard: RwLockReadGuard<'a, S>,
}

impl<'a, S, T: 'static, E: Dimension> ReadView<'a, S, T, E> {
    /// `guard` with the view `make` returns of the data it guards.
    pub(crate) fn new(
        guard: RwLockReadGuard<'a, S>,
        make: impl for<'x> FnOnce(&'x S) -> ArrayView<'x, T, E>,
    ) -> Self {
        let view = make(&guard);
        // SAFETY: only the lifetime changes; see the type's documentation.
        let view =
            unsafe { std::mem::transmute::<ArrayView<'_, T, E>, ArrayView<'static, T, E>>(view) };
        ReadView {
            view,
            _guard: guard,
        }
    }

    /// The array, borrowed from `self`.
    pub(crate) fn array(&self) -> &ArrayRef<T, E> {
        &self.view
    }

    /// A view, borrowed from `self`.
    pub(crate) fn view(&self) -> ArrayView<'_, T, E> {
        self.view.view()
    }
}

/// A read-only map of part of a file and a view of elements in it, kept
/// together (the views of
/// [`map_window`](crate::DiskBackedStore::map_window)).
///
/// Sound because: the view points into the map's pages, whose address
/// does not change when the [`Mmap`] value moves, and which stay mapped
/// until it is dropped, after the view (field order); the view is handed
/// out only reborrowed from `&self`; the map covers only bytes within the
/// file's length when it is made ([`MapView::new`]'s caller checked it with
/// `fstat` on the same descriptor), and the crate never truncates the
/// files it maps so, nor writes again the bytes such a view shows (the
/// window cache's files keep their full size from their creation on, and
/// are written only where they hold nothing yet; a local entry's
/// published file is never modified in place, module docs). Another
/// program truncating or rewriting the file is outside the guarantee, as
/// for every map.
#[cfg(feature = "remote")]
pub(crate) struct MapView<T: 'static> {
    view: ArrayView<'static, T, IxDyn>,
    _map: Mmap,
}

#[cfg(feature = "remote")]
use ndarray::IxDyn;

#[cfg(feature = "remote")]
impl<T: 'static> MapView<T> {
    /// Maps `len` bytes (at least one) of `file` from `offset` on, read
    /// only, and keeps the view `make` returns of them. The caller checked
    /// that the file is at least `offset + len` bytes long.
    pub(crate) fn new(
        file: &File,
        offset: u64,
        len: usize,
        path: &Path,
        make: impl for<'x> FnOnce(&'x [u8]) -> Result<ArrayView<'x, T, IxDyn>>,
    ) -> Result<Self> {
        // SAFETY: the bytes mapped are within the file (checked by the
        // caller just before), and the crate neither truncates the file
        // nor writes the bytes the view shows while it is mapped (see the
        // type's documentation).
        let map =
            unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.ctx("map", path)?;
        let view = make(&map)?;
        // SAFETY: only the lifetime changes; the view is dropped before the
        // map (see the type's documentation).
        let view = unsafe {
            std::mem::transmute::<ArrayView<'_, T, IxDyn>, ArrayView<'static, T, IxDyn>>(view)
        };
        Ok(MapView { view, _map: map })
    }

    /// The array, borrowed from `self`.
    pub(crate) fn array(&self) -> &ArrayRef<T, IxDyn> {
        &self.view
    }
}

/// A write lock guard on `S` and a view of data inside `S`: a shared view
/// made when the guard is, replaced by a mutable one on first mutable
/// access (so that taking a write guard alone does not mark a map as
/// changed).
///
/// Sound for the reasons of [`ReadView`], and because the guard itself is
/// never dereferenced while a view exists, except to make the mutable view
/// once the shared one was dropped (with `&mut self`: no borrow of either
/// is live then).
pub(crate) struct WriteView<'a, S, T: 'static, E: Dimension> {
    shared: Option<ArrayView<'static, T, E>>,
    unique: Option<ArrayViewMut<'static, T, E>>,
    make_mut: for<'x> fn(&'x mut S) -> ArrayViewMut<'x, T, E>,
    guard: RwLockWriteGuard<'a, S>,
}

impl<'a, S, T: 'static, E: Dimension> WriteView<'a, S, T, E> {
    /// `guard` with the views `make` and `make_mut` return of the data it
    /// guards.
    pub(crate) fn new(
        guard: RwLockWriteGuard<'a, S>,
        make: for<'x> fn(&'x S) -> ArrayView<'x, T, E>,
        make_mut: for<'x> fn(&'x mut S) -> ArrayViewMut<'x, T, E>,
    ) -> Self {
        let view = make(&guard);
        // SAFETY: only the lifetime changes; see the type's documentation.
        let view =
            unsafe { std::mem::transmute::<ArrayView<'_, T, E>, ArrayView<'static, T, E>>(view) };
        WriteView {
            shared: Some(view),
            unique: None,
            make_mut,
            guard,
        }
    }

    /// The array, borrowed from `self`.
    pub(crate) fn array(&self) -> &ArrayRef<T, E> {
        match (&self.unique, &self.shared) {
            (Some(v), _) => v,
            (None, Some(v)) => v,
            (None, None) => unreachable!("a write view always holds a view"),
        }
    }

    /// The array, mutably borrowed from `self`.
    pub(crate) fn array_mut(&mut self) -> &mut ArrayRef<T, E> {
        if self.unique.is_none() {
            self.shared = None;
            let view = (self.make_mut)(&mut self.guard);
            // SAFETY: only the lifetime changes; see the type's
            // documentation. No shared view exists any more.
            let view = unsafe {
                std::mem::transmute::<ArrayViewMut<'_, T, E>, ArrayViewMut<'static, T, E>>(view)
            };
            self.unique = Some(view);
        }
        match &mut self.unique {
            Some(v) => v,
            None => unreachable!("made above"),
        }
    }

    /// The guard (the views are dropped first).
    pub(crate) fn into_guard(self) -> RwLockWriteGuard<'a, S> {
        let WriteView {
            shared,
            unique,
            guard,
            ..
        } = self;
        drop((shared, unique));
        guard
    }
}

/// Bytes freed since the allocator last returned free memory to the system.
static FREED_SINCE_TRIM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Notes that `bytes` of array data were freed.
pub(crate) fn note_freed(bytes: u64) {
    FREED_SINCE_TRIM.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// glibc keeps freed blocks of up to 32 MiB inside its heap (its mmap
/// threshold adapts upwards), so memory released by offloading stays in the
/// process's resident set until the program allocates again. When eviction
/// is driven by reads (mapped data replacing arrays in RAM), nothing will
/// reuse it: once 32 MiB have been freed, return free pages to the system.
/// Inserts do not trim: the caller's next array reuses the freed block, and
/// trimming would only make it fault the pages back in.
pub(crate) fn trim_if_due() {
    use std::sync::atomic::Ordering;
    const TRIM_EVERY: u64 = 32 << 20;
    if FREED_SINCE_TRIM.load(Ordering::Relaxed) >= TRIM_EVERY {
        FREED_SINCE_TRIM.store(0, Ordering::Relaxed);
        trim_heap();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: `malloc_trim` has no preconditions; it only gives free pages
    // of the allocator's heaps back to the kernel and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// The memory of `s` as bytes, for the element types whose memory is their
/// `.npy` encoding (`ndarray-npy` writes these by the same cast): `bool`,
/// the integers, `f32`, `f64`, `Complex<f32>` and `Complex<f64>`. `None`
/// for any other type (an element type implemented outside the crate may
/// have padding, whose bytes must not be read).
pub(crate) fn element_bytes<T: 'static>(s: &[T]) -> Option<&[u8]> {
    use num_complex::Complex;
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    let plain = [
        TypeId::of::<bool>(),
        TypeId::of::<u8>(),
        TypeId::of::<i8>(),
        TypeId::of::<u16>(),
        TypeId::of::<i16>(),
        TypeId::of::<u32>(),
        TypeId::of::<i32>(),
        TypeId::of::<u64>(),
        TypeId::of::<i64>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
        TypeId::of::<Complex<f32>>(),
        TypeId::of::<Complex<f64>>(),
    ];
    if !plain.contains(&t) {
        return None;
    }
    // SAFETY: `T` is one of the types above: each has no padding (`bool`
    // is one byte holding 0 or 1; `Complex` is `#[repr(C)]` of two equal
    // floats), so every byte of `s` is initialised; `u8` has alignment 1;
    // the length is the slice's size in bytes, which `s` covers; the
    // returned slice borrows `s` immutably for its whole lifetime.
    Some(unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) })
}
