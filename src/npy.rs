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
        if let Some(info) = fast_parse(bytes) {
            let data_len = Self::data_len_of(&info.0, &info.2, path)?;
            return Ok(NpyInfo {
                descr: info.0,
                fortran: info.1,
                shape: info.2,
                data_offset: info.3,
                data_len,
            });
        }
        // The parser allocates the header length the preamble declares
        // (up to 4 GiB for NPY 2.0) before reading it: refuse a header that
        // cannot be complete first.
        let declared = header_len_hint(bytes);
        if bytes.starts_with(b"\x93NUMPY") && declared > bytes.len() as u64 {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: declared,
                actual: bytes.len() as u64,
            });
        }
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
        let data_len = Self::data_len_of(&descr, &header.shape, path)?;
        Ok(NpyInfo {
            descr,
            fortran: header.layout.is_fortran(),
            shape: header.shape,
            data_offset,
            data_len,
        })
    }

    fn data_len_of(descr: &str, shape: &[usize], path: &Path) -> Result<Option<u64>> {
        match dtype_itemsize(descr) {
            Some(size) => Ok(Some(
                shape
                    .iter()
                    .try_fold(size as u64, |acc, &d| acc.checked_mul(d as u64))
                    .filter(|n| *n <= isize::MAX as u64)
                    .ok_or_else(|| {
                        Error::corrupt(
                            path,
                            format!("shape {shape:?} overflows the addressable size"),
                        )
                    })?,
            )),
            None => Ok(None),
        }
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
        let file = crate::io::open_regular(path, crate::io::Access::Read)?;
        let len = file.metadata().ctx("stat", path)?.len();
        let mut buf = Vec::with_capacity(256);
        file.take(4096).read_to_end(&mut buf).ctx("read", path)?;
        let hint = header_len_hint(&buf);
        if buf.starts_with(b"\x93NUMPY") && hint > len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: hint,
                actual: len,
            });
        }
        if hint > buf.len() as u64 && hint <= len {
            // A long (format 2.0) header: read all of it.
            buf.clear();
            let file = crate::io::open_regular(path, crate::io::Access::Read)?;
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
        .try_fold(std::mem::size_of::<T>() as u64, |a, &d| {
            a.checked_mul(d as u64)
        })
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
/// written in C order, one first-axis chunk of at most `chunk_budget()`
/// bytes at a time (the budget is only computed for such layouts: it may
/// query the system's available memory).
pub(crate) fn write_array<T, S, D>(
    w: &mut impl Write,
    a: &ArrayBase<S, D>,
    chunk_budget: impl FnOnce() -> u64,
    path: &Path,
) -> Result<()>
where
    T: Element,
    S: Data<Elem = T>,
    D: Dimension,
{
    if a.is_standard_layout() {
        write_header::<T>(w, a.shape(), false, path)?;
        let s = a
            .as_slice_memory_order()
            .expect("standard layout is contiguous");
        return T::write_slice(s, &mut *w).map_err(|e| write_err(e, path));
    }
    if a.ndim() > 1 && a.t().is_standard_layout() {
        write_header::<T>(w, a.shape(), true, path)?;
        let s = a
            .as_slice_memory_order()
            .expect("fortran layout is contiguous");
        return T::write_slice(s, &mut *w).map_err(|e| write_err(e, path));
    }
    write_header::<T>(w, a.shape(), false, path)?;
    let a = a.view().into_dyn();
    write_rows_chunked(w, a, chunk_budget(), path)
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

/// Parses the canonical header numpy and this crate write
/// (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`) without
/// a general Python-literal parser. Returns `None` for anything else, which
/// then goes to `ndarray-npy`'s full parser: this only makes the common case
/// fast (about 0.2 us instead of 30 us), it never accepts more.
fn fast_parse(bytes: &[u8]) -> Option<(String, bool, Vec<usize>, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[7] != 0 {
        return None;
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 => {
            if bytes.len() < 12 {
                return None;
            }
            (
                u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize,
                12,
            )
        }
        _ => return None,
    };
    let end = start.checked_add(hlen)?;
    let text = bytes.get(start..end)?;
    let (last, text) = text.split_last()?;
    if *last != b'\n' || !text.is_ascii() {
        return None;
    }
    let mut p = Cursor { s: text, i: 0 };
    p.ws();
    p.eat(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
            break;
        }
        let key = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        match key {
            b"descr" if descr.is_none() => descr = Some(p.string()?),
            b"fortran_order" if fortran.is_none() => {
                fortran = Some(if p.word(b"True") {
                    true
                } else if p.word(b"False") {
                    false
                } else {
                    return None;
                })
            }
            b"shape" if shape.is_none() => shape = Some(p.tuple()?),
            _ => return None,
        }
        p.ws();
        match p.peek()? {
            b',' => p.i += 1,
            b'}' => {}
            _ => return None,
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return None;
    }
    let descr = std::str::from_utf8(descr?).ok()?.to_owned();
    Some((descr, fortran?, shape?, end))
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    fn word(&mut self, w: &[u8]) -> bool {
        if self.s[self.i..].starts_with(w) {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    /// A simple quoted string without escapes.
    fn string(&mut self) -> Option<&'a [u8]> {
        let q = self.peek()?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == q)?;
        let body = &self.s[start..start + len];
        if body.contains(&b'\\') {
            return None;
        }
        self.i = start + len + 1;
        Some(body)
    }
    /// A tuple of non-negative decimal integers: `()`, `(3,)`, `(3, 4)`.
    fn tuple(&mut self) -> Option<Vec<usize>> {
        self.eat(b'(')?;
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.peek()? == b')' {
                self.i += 1;
                break;
            }
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).ok()?;
            if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
                return None;
            }
            out.push(digits.parse().ok()?);
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b')' => {}
                _ => return None,
            }
        }
        // A one-element tuple needs its trailing comma in Python.
        if out.len() == 1 && self.s[..self.i - 1].trim_ascii_end().last() != Some(&b',') {
            return None;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray_npy::npy::header::Header;
    use proptest::prelude::*;

    fn slow(bytes: &[u8]) -> Option<(String, bool, Vec<usize>, usize)> {
        let mut r = bytes;
        let h = Header::from_reader(&mut r).ok()?;
        Some((
            descr_string(&h.type_descriptor),
            h.layout.is_fortran(),
            h.shape,
            bytes.len() - r.len(),
        ))
    }

    fn header(text: &str, version: u8) -> Vec<u8> {
        let mut v = b"\x93NUMPY".to_vec();
        v.push(version);
        v.push(0);
        let body_len = text.len() + 1;
        if version == 1 {
            v.extend_from_slice(&(body_len as u16).to_le_bytes());
        } else {
            v.extend_from_slice(&(body_len as u32).to_le_bytes());
        }
        v.extend_from_slice(text.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(&[0u8; 16]);
        v
    }

    #[test]
    fn agrees_with_the_full_parser_on_typical_headers() {
        for text in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
            "{'descr': '|b1', 'fortran_order': True, 'shape': (), }     ",
            "{'descr': '<c16', 'fortran_order': False, 'shape': (0,), }",
            "{\"descr\": \"<i8\", \"shape\": (10, 2, 3), \"fortran_order\": False}",
            "{'shape': (7,), 'fortran_order': False, 'descr': '>u2'}",
        ] {
            for v in [1, 2] {
                let b = header(text, v);
                assert_eq!(fast_parse(&b), slow(&b), "{text}");
                assert!(fast_parse(&b).is_some(), "{text}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_know() {
        for text in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (03,), }",
        ] {
            assert_eq!(fast_parse(&header(text, 1)), None, "{text}");
        }
    }

    proptest! {
        #[test]
        fn never_disagrees_with_the_full_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 1);
            for (i, x) in bytes.iter().enumerate().take(b.len()) {
                if i % 7 == 3 { b[i] = *x; }
            }
            if let Some(f) = fast_parse(&b) {
                prop_assert_eq!(Some(f), slow(&b));
            }
        }

        #[test]
        fn shapes_agree(shape in proptest::collection::vec(0usize..100_000, 0..5), fortran: bool) {
            let h = Header {
                type_descriptor: py_literal::Value::String("<f8".into()),
                layout: if fortran { ndarray_npy::npy::header::Layout::Fortran } else { ndarray_npy::npy::header::Layout::Standard },
                shape,
            };
            let b = h.to_bytes().unwrap();
            prop_assert!(fast_parse(&b).is_some());
            prop_assert_eq!(fast_parse(&b), slow(&b));
        }
    }
}
