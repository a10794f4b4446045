//! Memory maps of `.npy` files: [`MappedNpy`], a file mapped with a
//! [`LoadMode`] and validated against its element type and dimension.
//!
//! Every `unsafe` block of the crate is in the private `sys` module (the
//! map calls and one allocator call), under its written soundness contract;
//! this module and the rest of the crate only use its safe functions.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};
use ndarray::{ArrayView, ArrayViewMut, Dimension, IxDyn, ShapeBuilder};
use ndarray_npy::ViewDataError;

use crate::element::Element;
use crate::error::{Error, IoContext, Result};
use crate::io::FileId;
use crate::npy::NpyInfo;

mod sys;

#[cfg(feature = "remote")]
pub(crate) use sys::MapView;
pub(crate) use sys::{element_bytes, map_readonly, note_freed, trim_if_due, ReadView, WriteView};

/// How an offloaded array is mapped back into memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoadMode {
    /// Read-only map: writing through the array first switches it to a
    /// copy-on-write map.
    #[default]
    ReadOnly,
    /// Shared read-write map: writes reach the array's own file and are
    /// made durable by [`flush`](crate::DiskBackedArray::flush) or
    /// [`offload`](crate::DiskBackedArray::offload).
    ReadWrite,
    /// Private map: edits stay in this process until the array is offloaded
    /// or flushed, which publishes a new file atomically.
    CopyOnWrite,
}

enum Map {
    Ro(Mmap),
    Rw(MmapMut),
    Cow(MmapMut),
}

/// An `.npy` file mapped with a [`LoadMode`], its header validated against
/// `T` and `D`.
pub(crate) struct MappedNpy<T, D> {
    map: Map,
    file: File,
    path: PathBuf,
    id: FileId,
    offset: usize,
    len: usize,
    dim: D,
    fortran: bool,
    /// Whether the mapped data was changed since it was mapped or flushed.
    pub(crate) dirty: bool,
    _t: PhantomData<T>,
}

/// What is known of a data file opened for mapping, read through its
/// descriptor: its identity and its header, with the file's length then
/// ([`NpyInfo::file_len`]).
#[derive(Debug)]
pub(crate) struct Known {
    pub id: FileId,
    pub info: NpyInfo,
}

fn view_err(e: ViewDataError, path: &Path, expected: u64, actual: u64) -> Error {
    match e {
        ViewDataError::MissingBytes(_) => Error::Truncated {
            path: path.to_path_buf(),
            expected,
            actual,
        },
        other => Error::corrupt(path, other.to_string()),
    }
}

impl<T: Element, D: Dimension> MappedNpy<T, D> {
    /// Opens and maps `path`, checking the header, the dtype, the number of
    /// dimensions, the file length and (for `bool`) every value.
    pub(crate) fn open(path: &Path, mode: LoadMode) -> Result<Self> {
        let access = match mode {
            LoadMode::ReadWrite => crate::io::Access::ReadWrite,
            _ => crate::io::Access::Read,
        };
        let file = crate::io::open_regular(path, access)?;
        Self::from_file(file, path, mode)
    }

    /// Maps an open `file` (named `path` in errors) as [`open`](Self::open)
    /// does.
    pub(crate) fn from_file(file: File, path: &Path, mode: LoadMode) -> Result<Self> {
        Self::from_opened(file, None, path, mode)
    }

    /// [`from_file`](Self::from_file) of a file whose identity and header
    /// the caller already read through this descriptor (`known`): the file
    /// is mapped as it is now (its `fstat`), and when it is still that file
    /// at the length the header was read at, the header is not parsed
    /// again. The data is checked against the map as for any file.
    pub(crate) fn from_opened(
        file: File,
        known: Option<Known>,
        path: &Path,
        mode: LoadMode,
    ) -> Result<Self> {
        let meta = file.metadata().ctx("stat", path)?;
        if !meta.is_file() {
            return Err(Error::corrupt(path, "not a regular file"));
        }
        let file_len = meta.len();
        let id = FileId::from_meta(&meta);
        let known_info = known
            .filter(|k| k.id == id && k.info.file_len == Some(file_len))
            .map(|k| k.info);
        let map = match mode {
            LoadMode::ReadOnly => Map::Ro(sys::map_readonly_len(&file, file_len, path)?),
            LoadMode::ReadWrite => Map::Rw(sys::map_read_write(&file, path)?),
            LoadMode::CopyOnWrite => Map::Cow(sys::map_copy_on_write(&file, path)?),
        };
        let bytes: &[u8] = match &map {
            Map::Ro(m) => m,
            Map::Rw(m) | Map::Cow(m) => m,
        };
        let info = match known_info {
            Some(info) => info,
            None => NpyInfo::parse(bytes, path)?,
        };
        info.check::<T, D>(file_len, path)?;
        // The header's shape passed `checked_nbytes`: no product overflows.
        let len: usize = info.shape.iter().product();
        let expected = info.data_offset as u64 + info.data_len.unwrap_or(0);
        let data_bytes = bytes
            .get(info.data_offset..)
            .ok_or_else(|| Error::Truncated {
                path: path.to_path_buf(),
                expected,
                actual: file_len,
            })?;
        // Validates alignment, length and element values once.
        let data = T::bytes_as_slice(data_bytes, &T::type_descriptor(), len)
            .map_err(|e| view_err(e, path, expected, file_len))?;
        let dim =
            D::from_dimension(&IxDyn(&info.shape)).ok_or_else(|| Error::DimensionMismatch {
                path: path.to_path_buf(),
                expected: D::NDIM.unwrap_or(0),
                found: info.shape.len(),
            })?;
        // And the view once, so that `view` and `view_mut` cannot fail.
        ArrayView::from_shape(dim.clone().set_f(info.fortran), data)
            .map_err(|e| Error::corrupt(path, format!("shape {:?}: {e}", info.shape)))?;
        Ok(MappedNpy {
            map,
            file,
            path: path.to_path_buf(),
            id,
            offset: info.data_offset,
            len,
            dim,
            fortran: info.fortran,
            dirty: false,
            _t: PhantomData,
        })
    }

    /// The mode this file is mapped with.
    pub(crate) fn mode(&self) -> LoadMode {
        match self.map {
            Map::Ro(_) => LoadMode::ReadOnly,
            Map::Rw(_) => LoadMode::ReadWrite,
            Map::Cow(_) => LoadMode::CopyOnWrite,
        }
    }

    /// Identity of the mapped file.
    pub(crate) fn file_id(&self) -> FileId {
        self.id
    }

    /// A view of the mapped array.
    pub(crate) fn view(&self) -> ArrayView<'_, T, D> {
        let bytes: &[u8] = match &self.map {
            Map::Ro(m) => m,
            Map::Rw(m) | Map::Cow(m) => m,
        };
        let data = T::bytes_as_slice(&bytes[self.offset..], &T::type_descriptor(), self.len)
            .expect("validated when mapped");
        ArrayView::from_shape(self.dim.clone().set_f(self.fortran), data)
            .expect("validated when mapped")
    }

    /// A mutable view; `None` for a read-only map.
    pub(crate) fn view_mut(&mut self) -> Option<ArrayViewMut<'_, T, D>> {
        let bytes: &mut [u8] = match &mut self.map {
            Map::Ro(_) => return None,
            Map::Rw(m) | Map::Cow(m) => m,
        };
        self.dirty = true;
        let data =
            T::bytes_as_mut_slice(&mut bytes[self.offset..], &T::type_descriptor(), self.len)
                .expect("validated when mapped");
        Some(
            ArrayViewMut::from_shape(self.dim.clone().set_f(self.fortran), data)
                .expect("validated when mapped"),
        )
    }

    /// For a read-write map: writes dirty pages back and `fsync`s the file.
    pub(crate) fn flush(&mut self) -> Result<()> {
        if let Map::Rw(m) = &self.map {
            if self.dirty {
                m.flush().ctx("flush map of", &self.path)?;
                crate::io::sync_file(&self.file, &self.path)?;
                self.dirty = false;
            }
        }
        Ok(())
    }
}
