//! Writing arrays larger than RAM, one first-axis chunk at a time.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, Data, Dimension, IxDyn};

use crate::array::DiskBackedArray;
use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::io::{self, TempFile};
use crate::npy;

/// Streams an array into an `.npy` file chunk by chunk along its first axis,
/// so an array larger than RAM can be written with bounded memory.
///
/// Nothing is visible at the target path until [`finish`](Self::finish)
/// publishes the file atomically; dropping an unfinished writer removes its
/// temporary file.
///
/// # Examples
///
/// ```
/// use ndarray::{Array2, Ix2};
/// use ndarray_offload::{CacheConfig, NpyStreamWriter};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("big.npy");
/// let mut w = NpyStreamWriter::<f32, Ix2>::create(&path, &[4, 3])?;
/// for i in 0..2 {
///     let rows = Array2::<f32>::from_elem((2, 3), i as f32);
///     w.write_chunk(&rows)?;
/// }
/// let arr = w.finish_array(&CacheConfig::default())?;
/// assert_eq!(arr.read()?.view().sum(), 6.0);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub struct NpyStreamWriter<T: Element, D: Dimension> {
    tmp: TempFile,
    target: PathBuf,
    shape: Vec<usize>,
    rows_written: usize,
    _t: PhantomData<(T, D)>,
}

impl<T: Element, D: Dimension> NpyStreamWriter<T, D> {
    /// Starts writing an array of `shape` to `path` (its directory must
    /// exist). `shape` must have `D`'s number of dimensions and at least one
    /// axis.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad shape; I/O errors creating the
    /// temporary file.
    pub fn create(path: impl AsRef<Path>, shape: &[usize]) -> Result<Self> {
        let target = path.as_ref().to_path_buf();
        if shape.is_empty() || D::NDIM.is_some_and(|n| n != shape.len()) {
            return Err(Error::InvalidInput {
                path: target,
                reason: format!("shape {shape:?} does not fit the array's dimension"),
            });
        }
        if npy::data_bytes::<T>(shape).is_none_or(|n| n > isize::MAX as u64) {
            return Err(Error::InvalidInput {
                path: target,
                reason: format!("shape {shape:?} overflows the addressable size"),
            });
        }
        let mut tmp = TempFile::create(io::parent_dir(&target), "part", false)?;
        npy::write_header::<T>(tmp.writer(), shape, false, &target)?;
        Ok(NpyStreamWriter {
            tmp,
            target,
            shape: shape.to_vec(),
            rows_written: 0,
            _t: PhantomData,
        })
    }

    /// Appends `chunk`: some rows along the first axis; its other axes must
    /// match the declared shape.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a chunk of the wrong shape or one that
    /// would exceed the declared first axis; I/O errors.
    pub fn write_chunk<S: Data<Elem = T>>(&mut self, chunk: &ArrayBase<S, D>) -> Result<()> {
        let cs = chunk.shape();
        if cs[1..] != self.shape[1..] || self.rows_written + cs[0] > self.shape[0] {
            return Err(Error::InvalidInput {
                path: self.target.clone(),
                reason: format!(
                    "chunk of shape {cs:?} does not fit: {} of {} rows written, row shape {:?}",
                    self.rows_written,
                    self.shape[0],
                    &self.shape[1..]
                ),
            });
        }
        let c = chunk.as_standard_layout();
        let s = c.as_slice().expect("standard layout");
        T::write_slice(s, &mut *self.tmp.writer()).map_err(|e| match e {
            ndarray_npy::WriteDataError::Io(io) => Error::io("write", self.tmp.path(), io),
            other => Error::InvalidInput {
                path: self.target.clone(),
                reason: other.to_string(),
            },
        })?;
        self.rows_written += cs[0];
        Ok(())
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> usize {
        self.rows_written
    }

    /// Publishes the file atomically (`fsync`, rename, directory `fsync`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if fewer rows than declared were written
    /// (nothing is published); I/O errors.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.rows_written != self.shape[0] {
            return Err(Error::InvalidInput {
                path: self.target.clone(),
                reason: format!(
                    "only {} of {} rows were written",
                    self.rows_written, self.shape[0]
                ),
            });
        }
        self.tmp.flush_and_sync()?;
        let target = self.target.clone();
        {
            let _g = io::OWNERSHIP.lock();
            self.tmp.rename_to(&target)?;
        }
        io::sync_dir(io::parent_dir(&target))?;
        Ok(target)
    }

    /// Publishes the file and opens it as an offloaded [`DiskBackedArray`].
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish) and [`DiskBackedArray::open`].
    pub fn finish_array(self, config: &CacheConfig) -> Result<DiskBackedArray<T, D>> {
        let path = self.finish()?;
        DiskBackedArray::open(path, config)
    }
}

/// `IxDyn` convenience alias.
pub type NpyStreamWriterDyn<T> = NpyStreamWriter<T, IxDyn>;
