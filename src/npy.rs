//! The `.npy` side of the format: writing arrays in bounded chunks and
//! reading/validating headers. Encoding and parsing are `ndarray-npy`'s.

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayBase, Axis, Data, Dimension, IxDyn};
use ndarray_npy::npy::header::{Header, Layout, ReadHeaderError};
use ndarray_npy::WriteDataError;

use crate::element::{descr_string, dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};

/// What a `.npy` header says, plus where the data starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NpyInfo {
    /// numpy dtype string.
    pub descr: String,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran: bool,
    /// The shape.
    pub shape: Vec<usize>,
    /// Offset of the first data byte.
    pub data_offset: usize,
    /// Bytes of data the header promises (`None` for dtypes whose size is not
    /// known to the crate).
    pub data_len: Option<u64>,
}

impl NpyInfo {
    /// Parses the header at the start of `bytes` (a whole file or a prefix).
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let mut reader = bytes;
        let header = Header::from_reader(&mut reader).map_err(|e| match e {
            ReadHeaderError::Io(_) => Error::Truncated {
                path: path.to_path_buf(),
                expected: header_len_hint(bytes),
                actual: bytes.len() as u64,
            },
            ReadHeaderError::Parse(p) => Error::corrupt(path, format!("invalid .npy header: {p}")),
        })?;
        let data_offset = bytes.len() - reader.len();
        let descr = descr_string(&header.type_descriptor);
        let data_len = match dtype_itemsize(&descr) {
            Some(size) => Some(
                header
                    .shape
                    .iter()
                    .try_fold(size as u64, |acc, &d| acc.checked_mul(d as u64))
                    .filter(|n| *n <= isize::MAX as u64)
                    .ok_or_else(|| {
                        Error::corrupt(
                            path,
                            format!("shape {:?} overflows the addressable size", header.shape),
                        )
                    })?,
            ),
            None => None,
        };
        Ok(NpyInfo {
            descr,
            fortran: header.layout.is_fortran(),
            shape: header.shape,
            data_offset,
            data_len,
        })
    }

    /// Checks the header against the element type `T` and dimension `D`,
    /// and the file length against what the header promises.
    pub(crate) fn check<T: Element, D: Dimension>(&self, file_len: u64, path: &Path) -> Result<()> {
        let want = T::dtype();
        if self.descr != want {
            return Err(Error::DtypeMismatch {
                path: path.to_path_buf(),
                expected: want,
                found: self.descr.clone(),
            });
        }
        if let Some(n) = D::NDIM {
            if n != self.shape.len() {
                return Err(Error::DimensionMismatch {
                    path: path.to_path_buf(),
                    expected: n,
                    found: self.shape.len(),
                });
            }
        }
        self.check_len(file_len, path)
    }

    /// Checks the file length against the header.
    pub(crate) fn check_len(&self, file_len: u64, path: &Path) -> Result<()> {
        if let Some(data_len) = self.data_len {
            let expected = self.data_offset as u64 + data_len;
            if file_len < expected {
                return Err(Error::Truncated {
                    path: path.to_path_buf(),
                    expected,
                    actual: file_len,
                });
            }
            if file_len > expected {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "{} bytes after the end of the data the header describes",
                        file_len - expected
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads and parses the header of the file at `path`.
    pub(crate) fn read(path: &Path) -> Result<(Self, u64)> {
        use std::io::Read;
        let file = std::fs::File::open(path).ctx("open", path)?;
        let len = file.metadata().ctx("stat", path)?.len();
        let mut buf = Vec::with_capacity(256);
        file.take(4096).read_to_end(&mut buf).ctx("read", path)?;
        let hint = header_len_hint(&buf);
        if hint > buf.len() as u64 && hint <= len {
            // A long (format 2.0) header: read all of it.
            buf.clear();
            let file = std::fs::File::open(path).ctx("open", path)?;
            file.take(hint).read_to_end(&mut buf).ctx("read", path)?;
        }
        Ok((Self::parse(&buf, path)?, len))
    }
}

/// Total header length as announced by the preamble, if readable.
fn header_len_hint(bytes: &[u8]) -> u64 {
    if bytes.len() >= 10 && bytes[6] == 1 {
        10 + u16::from_le_bytes([bytes[8], bytes[9]]) as u64
    } else if bytes.len() >= 12 && (bytes[6] == 2 || bytes[6] == 3) {
        12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as u64
    } else {
        10
    }
}

/// Bytes of data for an array of `T` with `shape` (`None` on overflow).
pub(crate) fn data_bytes<T>(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(std::mem::size_of::<T>() as u64, |a, &d| a.checked_mul(d as u64))
}

fn write_err(e: WriteDataError, path: &Path) -> Error {
    match e {
        WriteDataError::Io(io) => Error::io("write", path, io),
        other => Error::InvalidInput {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Writes the `.npy` header for `shape` with the given layout.
pub(crate) fn write_header<T: Element>(
    w: &mut impl Write,
    shape: &[usize],
    fortran: bool,
    path: &Path,
) -> Result<()> {
    let header = Header {
        type_descriptor: T::type_descriptor(),
        layout: if fortran {
            Layout::Fortran
        } else {
            Layout::Standard
        },
        shape: shape.to_vec(),
    };
    let bytes = header.to_bytes().map_err(|e| Error::InvalidInput {
        path: path.to_path_buf(),
        reason: format!("cannot format .npy header: {e}"),
    })?;
    w.write_all(&bytes).ctx("write", path)
}

/// Writes `a` as a complete `.npy` file to `w`.
///
/// C-contiguous and Fortran-contiguous arrays are written straight from
/// their memory (no copy); any other layout (sliced, negative strides) is
/// written in C order, one first-axis chunk of at most `chunk_budget` bytes
/// at a time.
pub(crate) fn write_array<T, S, D>(
    w: &mut impl Write,
    a: &ArrayBase<S, D>,
    chunk_budget: u64,
    path: &Path,
) -> Result<()>
where
    T: Element,
    S: Data<Elem = T>,
    D: Dimension,
{
    if a.is_standard_layout() {
        write_header::<T>(w, a.shape(), false, path)?;
        let s = a.as_slice_memory_order().expect("standard layout is contiguous");
        return T::write_slice(s, &mut *w).map_err(|e| write_err(e, path));
    }
    if a.ndim() > 1 && a.t().is_standard_layout() {
        write_header::<T>(w, a.shape(), true, path)?;
        let s = a.as_slice_memory_order().expect("fortran layout is contiguous");
        return T::write_slice(s, &mut *w).map_err(|e| write_err(e, path));
    }
    write_header::<T>(w, a.shape(), false, path)?;
    let a = a.view().into_dyn();
    write_rows_chunked(w, a, chunk_budget, path)
}

fn write_rows_chunked<T: Element>(
    w: &mut impl Write,
    a: ndarray::ArrayView<'_, T, IxDyn>,
    chunk_budget: u64,
    path: &Path,
) -> Result<()> {
    if a.ndim() == 0 || a.is_standard_layout() {
        let c = a.as_standard_layout();
        let s = c.as_slice().expect("standard layout");
        return T::write_slice(s, &mut *w).map_err(|e| write_err(e, path));
    }
    let rows = a.len_of(Axis(0));
    let row_bytes = (a.len() / rows.max(1)) as u64 * std::mem::size_of::<T>() as u64;
    if row_bytes > chunk_budget && a.ndim() > 1 {
        // A single row exceeds the budget: split it further.
        for row in a.axis_iter(Axis(0)) {
            write_rows_chunked(w, row, chunk_budget, path)?;
        }
        return Ok(());
    }
    let per_chunk = (chunk_budget / row_bytes.max(1)).max(1) as usize;
    for chunk in a.axis_chunks_iter(Axis(0), per_chunk) {
        let c = chunk.as_standard_layout();
        let s = c.as_slice().expect("standard layout");
        T::write_slice(s, &mut *w).map_err(|e| write_err(e, path))?;
    }
    Ok(())
}
