//! Arrays that belong to an owner (a store entry).
//!
//! The array layer sits below the store, so it never names it: it defines
//! the [`Owner`] trait, which the store's entries implement, and the
//! crate-visible methods the owner calls on the array (its unpublished
//! data, the mark of a publish, a spill that never waits). A lower layer
//! that must reach up defines the trait; the upper layer implements it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ndarray::{ArrayD, ArrayView, Dimension, IxDyn};
use parking_lot::RecursiveRwLockReadGuard as RwLockReadGuard;

use super::{ArrayState, DiskBackedArray, Parts, State};
use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::Result;
use crate::io::{self, FileId};
use crate::mmap::{element_bytes, Known};
use crate::npy;

/// What an array that belongs to an owner tells it, and asks of it.
///
/// Methods are called with the array's state lock held unless noted, and
/// none may take that lock: the owner never calls back into the array from
/// them (see the lock order in the store's module documentation).
pub(crate) trait Owner: Send + Sync {
    /// Whether the array still belongs to its owner (false once detached:
    /// a store entry replaced or removed, or its store closed). A detached
    /// array keeps its data where it is: offloading it does nothing.
    fn attached(&self) -> bool;

    /// The array's resident bytes (in RAM or mapped) changed by `delta`;
    /// counted only while the array is attached.
    fn add_resident(&self, delta: i64);

    /// Publishes `snapshot` as the owner's files (for a store entry, its
    /// `(.npy, .meta.json)` pair) and returns the new data file's identity,
    /// or `None` when the owner does not take it: publishing is not allowed
    /// (not yet, or no longer), or a newer snapshot was published first.
    /// With `spill`, the owner may defer making the publish durable (the
    /// data is complete; its name may not survive a crash until the owner's
    /// next flush).
    fn publish(&self, snapshot: Snapshot<'_>, spill: bool) -> Result<Option<FileId>>;

    /// The file holding the array's published data, opened with `access`
    /// for mapping: the file now at the owner's name, or, for an array that
    /// stopped publishing, the file kept open when it stopped
    /// ([`Error::NoFile`](crate::Error::NoFile) when none was kept).
    /// With the file, what the owner already read of it through this
    /// descriptor (its identity and header), if anything.
    fn open_data(&self, access: io::Access) -> Result<(File, Option<Known>)>;

    /// The owner's metadata file: named by errors when the data file
    /// disagrees with it.
    fn metadata_path(&self) -> &Path;

    /// An access mapped the array without the owner seeing it (through a
    /// handle kept from earlier).
    fn mapped_unseen(&self);

    /// An access that may have mapped the array ended its load (called
    /// without the state lock); `caching` is the array's caching flag.
    fn note_loaded(&self, caching: bool);

    /// A guard on the array ended (called without the state lock): the
    /// owner may resume evicting.
    fn guard_released(&self);
}

/// An array's data as of `version`, ready to be written: the read or write
/// lock that makes it stable is held until `write_npy` has run (or the
/// snapshot is dropped).
pub(crate) struct Snapshot<'a> {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub caching: bool,
    pub automatic_offloading: bool,
    /// The array's version whose data this is (every write access makes a
    /// new version).
    pub version: u64,
    /// Writes the `.npy` bytes to a staged file.
    pub write_npy: io::Fill<'a>,
    /// The same bytes, readable in memory, when the data is contiguous
    /// (the lock is then held until this is dropped too).
    pub image: Option<npy::NpyImage<'a>>,
}

/// What [`DiskBackedArray::unpublished`] found.
pub(crate) enum Unpublished<'s> {
    /// Data the file does not hold yet.
    Data(Snapshot<'s>),
    /// Nothing to write: the file holds the current data.
    Current,
    /// Another thread holds the array's lock exclusively (not waited for).
    Busy,
}

/// Where an owned array's data starts.
pub(crate) enum InitialData<T> {
    /// In RAM, not yet published.
    InMemory(ArrayD<T>),
    /// In the owner's data file, of this shape and identity (offloaded:
    /// nothing is read until used).
    InFile {
        shape: Vec<usize>,
        id: Option<FileId>,
    },
}

impl<T: Element> DiskBackedArray<T, IxDyn> {
    /// An array that belongs to `owner`, whose data file is named `path` in
    /// messages. Purge-on-drop is off: the owner decides what happens to its
    /// files.
    pub(crate) fn owned_by(
        owner: Arc<dyn Owner>,
        data: InitialData<T>,
        path: PathBuf,
        caching: bool,
        automatic: bool,
        config: &CacheConfig,
    ) -> Self {
        let in_memory = matches!(data, InitialData::InMemory(_));
        let (state, shape, file_id, file_current) = match data {
            InitialData::InMemory(a) => {
                let shape = a.shape().to_vec();
                (State::Owned(a), shape, None, false)
            }
            InitialData::InFile { shape, id } => (State::Offloaded, shape, id, true),
        };
        let a = Self::assemble(Parts {
            state,
            shape,
            path,
            file_id,
            file_current,
            caching,
            purge: false,
            automatic,
            config: config.clone(),
            temp: None,
            owner: Some(owner),
        });
        if in_memory {
            a.account(a.nbytes() as i64);
        }
        a
    }
}

impl<T: Element, D: Dimension> DiskBackedArray<T, D> {
    /// `view` as the owner's snapshot (called under the state lock: the
    /// current version).
    pub(super) fn snapshot_of<'v>(&'v self, view: ArrayView<'v, T, D>) -> Snapshot<'v>
    where
        D: 'v,
    {
        let image = npy::image_header(&view).and_then(|header| {
            let body = element_bytes(view.to_slice_memory_order()?)?;
            Some(npy::NpyImage {
                header,
                body: Arc::new(npy::SliceBody(body)),
            })
        });
        self.snapshot(
            Box::new(move |w, path| {
                npy::write_array(w, &view, || self.config.effective_chunk_budget(), path)
            }),
            image,
        )
    }

    /// A snapshot of the current version whose data `write_npy` writes.
    fn snapshot<'v>(
        &self,
        write_npy: io::Fill<'v>,
        image: Option<npy::NpyImage<'v>>,
    ) -> Snapshot<'v> {
        Snapshot {
            shape: self.shape.clone(),
            dtype: T::dtype(),
            caching: self.caching(),
            automatic_offloading: self.automatic_offloading(),
            version: self.version.load(Ordering::Relaxed),
            write_npy,
            image,
        }
    }

    /// The data the file does not hold yet, as a snapshot that keeps the
    /// read lock until it is written.
    ///
    /// Without `wait`, an array whose lock another thread holds exclusively
    /// is [`Unpublished::Busy`] instead of waited for: a batch takes the
    /// locks of many entries, and must not wait for one while it holds
    /// others (see the lock order in the store's module documentation).
    ///
    /// # Errors
    ///
    /// [`Error::InUse`](crate::Error::InUse) if the calling thread holds a
    /// write guard on the array (its data is being changed, and cannot be
    /// read until the guard ends).
    pub(crate) fn unpublished<'s>(&'s self, wait: bool) -> Result<Unpublished<'s>>
    where
        D: 's,
    {
        self.check_not_held(true)?;
        // The read lock is held until the snapshot has written its data, so
        // the array cannot be offloaded or changed in between (the flushing
        // thread may hold a read guard on it: see the lock's import).
        let st = if wait {
            self.read_lock()?
        } else {
            match self.state.try_read() {
                Some(st) => st,
                None => return Ok(Unpublished::Busy),
            }
        };
        let current = match &*st {
            State::Owned(_) => self.file_current.load(Ordering::Relaxed),
            State::Mapped(m) => !m.dirty,
            State::Offloaded => true,
        };
        if current {
            return Ok(Unpublished::Current);
        }
        let config = &self.config;
        // The lock is shared by the writer of the file and the image: it
        // is held until both are done.
        let held = Arc::new(Held(st));
        let image = held.header().map(|header| npy::NpyImage {
            header,
            body: held.clone(),
        });
        Ok(Unpublished::Data(self.snapshot(
            Box::new(move |w, path| {
                let budget = || config.effective_chunk_budget();
                match &*held.0 {
                    State::Owned(a) => npy::write_array(w, &a.view(), budget, path),
                    State::Mapped(m) => npy::write_array(w, &m.view(), budget, path),
                    State::Offloaded => unreachable!("checked under the same lock"),
                }
            }),
            image,
        )))
    }

    /// Records that the owner published this array's data as of `version`.
    ///
    /// Never waits for a guard: the flushing thread may hold one on this
    /// array. A read lock excludes writers, which is all the version check
    /// needs; clearing a map's dirty flag needs the write lock, and when a
    /// guard holds the array the mark is skipped (the next flush writes the
    /// array again).
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

    /// Spills the array (as `offload`, but the owner may defer durability:
    /// see [`Owner::publish`]) unless a guard is alive (never blocks).
    /// Returns whether the array's RAM or map was released.
    pub(crate) fn try_offload(&self) -> Result<bool> {
        if !self.caching() {
            return Ok(false);
        }
        match self.state.try_write() {
            Some(mut st) => {
                let was_in_memory = !matches!(*st, State::Offloaded);
                self.offload_locked_with(&mut st, true)?;
                Ok(was_in_memory && matches!(*st, State::Offloaded))
            }
            None => Ok(false),
        }
    }

    /// The identity of the array's file when the file holds exactly the
    /// array's data (`None`: not written, edited since, or the array is
    /// busy: never waits).
    pub(crate) fn clean_file(&self) -> Option<FileId> {
        let st = self.state.try_read()?;
        let clean = match &*st {
            State::Owned(_) => self.file_current.load(Ordering::Relaxed),
            State::Offloaded => true,
            State::Mapped(m) => !m.dirty,
        };
        if clean {
            *self.file_id.lock()
        } else {
            None
        }
    }

    /// Whether the array has a file (it was written, opened or mapped).
    pub(crate) fn has_file(&self) -> bool {
        self.file_id.lock().is_some()
            || self.state() != ArrayState::InMemory
            || self.file_current.load(Ordering::Relaxed)
    }
}

/// An array's state, read-locked, as the body of an [`npy::NpyImage`].
struct Held<'s, T: Element, D: Dimension>(RwLockReadGuard<'s, State<T, D>>);

impl<T: Element, D: Dimension> Held<'_, T, D> {
    /// The image header, when the data is contiguous and its memory is
    /// its encoding.
    fn header(&self) -> Option<Vec<u8>> {
        self.elements()?;
        match &*self.0 {
            State::Owned(a) => npy::image_header(a),
            State::Mapped(m) => npy::image_header(&m.view()),
            State::Offloaded => None,
        }
    }

    fn elements(&self) -> Option<&[u8]> {
        match &*self.0 {
            State::Owned(a) => element_bytes(a.as_slice_memory_order()?),
            State::Mapped(m) => element_bytes(m.view().to_slice_memory_order()?),
            State::Offloaded => None,
        }
    }
}

impl<T: Element, D: Dimension> npy::ImageBody for Held<'_, T, D> {
    fn bytes(&self) -> &[u8] {
        self.elements().unwrap_or_default()
    }
}
