//! Scoped access to an array: [`ReadGuard`] and [`WriteGuard`], the locks
//! they hold, and the registry of guards held by each thread that lets an
//! operation refuse ([`Error::InUse`]) a wait that would never end.

use std::sync::atomic::Ordering;

use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Dimension, IxDyn};
// Reads never queue behind a waiting writer: the store takes short read
// locks on entries (to flush or detach them) that the calling thread may
// already hold a read guard on, while another thread waits to write; a fair
// lock would deadlock there. A writer waits until no reader holds the lock.
use parking_lot::{
    RecursiveRwLockReadGuard as RwLockReadGuard,
    RecursiveRwLockUpgradableReadGuard as RwLockUpgradableReadGuard,
    RecursiveRwLockWriteGuard as RwLockWriteGuard,
};

use super::state::State;
use super::DiskBackedArray;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::mmap::{LoadMode, ReadView, WriteView};

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

impl<T: Element, D: Dimension> DiskBackedArray<T, D> {
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
            guard: Some(ReadView::new(st, state_view::<T, D, E>)),
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
                    LoadMode::ReadWrite if self.owner.is_none() => LoadMode::ReadWrite,
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
            guard: Some(WriteView::new(
                st,
                state_view::<T, D, E>,
                state_view_mut::<T, D, E>,
            )),
            reoffload: loaded && self.automatic_offloading() && self.caching(),
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

    pub(super) fn lock_id(&self) -> usize {
        std::ptr::from_ref(&self.state) as usize
    }

    /// [`Error::InUse`] if the calling thread holds a guard on this array
    /// (any guard, or only a write guard with `write_only`).
    pub(super) fn check_not_held(&self, write_only: bool) -> Result<()> {
        if held::holds(self.lock_id(), write_only) {
            return Err(Error::InUse {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The write lock, unless the calling thread holds a guard on this array
    /// (it would wait forever).
    pub(super) fn lock_exclusive(&self) -> Result<RwLockWriteGuard<'_, State<T, D>>> {
        self.check_not_held(false)?;
        self.write_lock()
    }

    pub(super) fn in_use(&self) -> Error {
        Error::InUse {
            path: self.path.clone(),
        }
    }

    /// The write lock, waiting for guards of other threads unless that wait
    /// would never end (see `held::start_wait`): then [`Error::InUse`].
    pub(super) fn write_lock(&self) -> Result<RwLockWriteGuard<'_, State<T, D>>> {
        if let Some(st) = self.state.try_write() {
            return Ok(st);
        }
        let _wait = held::start_wait(self.lock_id(), true).ok_or_else(|| self.in_use())?;
        Ok(self.state.write())
    }

    /// The read lock, as [`write_lock`](Self::write_lock).
    pub(super) fn read_lock(&self) -> Result<RwLockReadGuard<'_, State<T, D>>> {
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

    /// Tells the owner, if any, that a guard ended (it may resume evicting).
    fn released(&self) {
        self.note_loaded();
        if let Some(o) = &self.owner {
            o.guard_released();
        }
    }
}

/// The view of `E` of a state a guard holds (loaded: never offloaded; the
/// dimension was checked when the guard was made).
fn state_view<T: Element, D: Dimension, E: Dimension>(s: &State<T, D>) -> ArrayView<'_, T, E> {
    let v = match s {
        State::Owned(a) => a.view(),
        State::Mapped(m) => m.view(),
        State::Offloaded => unreachable!("a guard never sees an offloaded array"),
    };
    v.into_dimensionality::<E>()
        .expect("dimension checked when the guard was made")
}

/// The mutable view of `E` of a state a write guard holds.
fn state_view_mut<T: Element, D: Dimension, E: Dimension>(
    s: &mut State<T, D>,
) -> ArrayViewMut<'_, T, E> {
    let v = match s {
        State::Owned(a) => a.view_mut(),
        State::Mapped(m) => m
            .view_mut()
            .expect("write guards never hold read-only maps"),
        State::Offloaded => unreachable!("a write guard never sees an offloaded array"),
    };
    v.into_dimensionality::<E>()
        .expect("dimension checked when the guard was made")
}

/// A scoped read access to a [`DiskBackedArray`] (or to a store entry, whose
/// views have the dimension `E` it was requested with).
///
/// It dereferences to the array ([`ArrayRef`], what every ndarray array
/// dereferences to), so ndarray's methods apply to it directly:
///
/// ```
/// use ndarray::{Array2, Ix2};
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// store.insert("xyz", Array2::<f64>::ones((4, 3)))?;
/// assert_eq!(store.get::<f64, Ix2>("xyz")?.read()?.nrows(), 4);
/// let xyz = store.get::<f64, Ix2>("xyz")?;
/// let g = xyz.read()?;
/// assert_eq!((g.sum(), g[[0, 2]], g.column(1).len()), (12.0, 1.0, 4));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct ReadGuard<'a, T: Element, D: Dimension, E: Dimension = D> {
    array: &'a DiskBackedArray<T, D>,
    guard: Option<ReadView<'a, State<T, D>, T, E>>,
}

impl<T: Element, D: Dimension, E: Dimension> ReadGuard<'_, T, D, E> {
    fn held(&self) -> &ReadView<'_, State<T, D>, T, E> {
        self.guard.as_ref().expect("guard is live")
    }

    /// A view of the data.
    pub fn view(&self) -> ArrayView<'_, T, E> {
        self.held().view()
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

impl<T: Element, D: Dimension, E: Dimension> std::ops::Deref for ReadGuard<'_, T, D, E> {
    type Target = ArrayRef<T, E>;
    fn deref(&self) -> &ArrayRef<T, E> {
        self.held().array()
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
///
/// It dereferences mutably to the array ([`ArrayRef`]):
///
/// ```
/// use ndarray::{Array1, Ix1};
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// store.insert("v", Array1::<f32>::zeros(3))?;
/// let v = store.get::<f32, Ix1>("v")?;
/// let mut g = v.write()?;
/// g.fill(2.0);
/// g[0] = 1.0;
/// drop(g);
/// assert_eq!(v.read()?.to_vec(), [1.0, 2.0, 2.0]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct WriteGuard<'a, T: Element, D: Dimension, E: Dimension = D> {
    array: &'a DiskBackedArray<T, D>,
    guard: Option<WriteView<'a, State<T, D>, T, E>>,
    reoffload: bool,
}

impl<T: Element, D: Dimension, E: Dimension> WriteGuard<'_, T, D, E> {
    /// A view of the data.
    pub fn view(&self) -> ArrayView<'_, T, E> {
        self.guard.as_ref().expect("guard is live").array().view()
    }

    /// A mutable view of the data.
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, E> {
        self.guard
            .as_mut()
            .expect("guard is live")
            .array_mut()
            .view_mut()
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
            Some(g) => g.into_guard(),
            None => return Ok(()),
        };
        if self.reoffload {
            self.array.offload_locked(&mut g)?;
        }
        Ok(())
    }
}

impl<T: Element, D: Dimension, E: Dimension> std::ops::Deref for WriteGuard<'_, T, D, E> {
    type Target = ArrayRef<T, E>;
    fn deref(&self) -> &ArrayRef<T, E> {
        self.guard.as_ref().expect("guard is live").array()
    }
}

impl<T: Element, D: Dimension, E: Dimension> std::ops::DerefMut for WriteGuard<'_, T, D, E> {
    fn deref_mut(&mut self) -> &mut ArrayRef<T, E> {
        self.guard.as_mut().expect("guard is live").array_mut()
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
