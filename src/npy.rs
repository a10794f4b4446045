//! The `.npy` side of the format: writing arrays in bounded chunks and
//! reading/validating headers. Encoding and parsing are `ndarray-npy`'s.

use std::io::Write;
use std::path::Path;

use ndarray::{ArrayBase, Axis, Data, Dimension, IxDyn};
use ndarray_npy::npy::header::{Header, Layout};
use ndarray_npy::WriteDataError;

use crate::element::{checked_nbytes, dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};
use crate::pylit::Lit;

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
    /// The length of the file the header was read from, by an `fstat` of
    /// the descriptor it was read through (`None`: parsed from bytes).
    pub file_len: Option<u64>,
}

impl NpyInfo {
    /// Parses the header at the start of `bytes` (a whole file or a prefix).
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        // A header that cannot be complete is refused before anything is
        // read or allocated (NPY 2.0 declares up to 4 GiB).
        let declared = header_len_hint(bytes);
        if bytes.starts_with(b"\x93NUMPY") && declared > bytes.len() as u64 {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: declared,
                actual: bytes.len() as u64,
            });
        }
        if let Some(text) = header_text(bytes) {
            check_header_len(text.len() as u64, path)?;
        }
        // The canonical header, else the general parser (linear, its
        // nesting bounded: see `crate::pylit`).
        let (descr, fortran, shape, data_offset) = match fast_parse(bytes) {
            Some(h) => h,
            None => parse_header(bytes, path)?,
        };
        let data_len = Self::data_len_of(&descr, &shape, path)?;
        Ok(NpyInfo {
            descr,
            fortran,
            shape,
            data_offset,
            data_len,
            file_len: None,
        })
    }

    /// Bytes of data of `shape`, checked for every dtype: an array whose
    /// size (without its zero dimensions) overflows `isize::MAX` cannot
    /// exist, even with no element. `None` for dtypes whose item size is not
    /// known to the crate (their element count is still checked).
    fn data_len_of(descr: &str, shape: &[usize], path: &Path) -> Result<Option<u64>> {
        let itemsize = dtype_itemsize(descr);
        let bytes = checked_nbytes(shape, itemsize.unwrap_or(1)).ok_or_else(|| {
            Error::corrupt(
                path,
                format!("shape {shape:?} overflows the addressable size"),
            )
        })?;
        Ok(itemsize.map(|_| bytes))
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
        let file = crate::io::open_regular(path, crate::io::Access::Read)?;
        Self::read_file(&file, path)
    }

    /// Reads and parses the header of the open regular `file` (named
    /// `path` in errors), from its start, and returns it with the file's
    /// length: the header and a later map of the same descriptor describe
    /// the same file, whatever is renamed over `path` meanwhile.
    pub(crate) fn read_file(file: &std::fs::File, path: &Path) -> Result<(Self, u64)> {
        let len = file.metadata().ctx("stat", path)?.len();
        Ok((Self::read_file_of_len(file, len, path)?, len))
    }

    /// [`read_file`](Self::read_file) of a file whose length `len` the
    /// caller knows (from its `fstat`): reads at offsets (`pread`), so the
    /// file's position is neither used nor changed.
    pub(crate) fn read_file_of_len(file: &std::fs::File, len: u64, path: &Path) -> Result<Self> {
        let mut buf = read_prefix(file, 4096.min(len), path)?;
        let hint = header_len_hint(&buf);
        if buf.starts_with(b"\x93NUMPY") && hint > len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: hint,
                actual: len,
            });
        }
        if buf.starts_with(b"\x93NUMPY") {
            let preamble = if buf.get(6) == Some(&1) { 10 } else { 12 };
            check_header_len(hint.saturating_sub(preamble), path)?;
        }
        if hint > buf.len() as u64 && hint <= len {
            // A long (format 2.0) header: read all of it.
            buf = read_prefix(file, hint, path)?;
        }
        let mut info = Self::parse(&buf, path)?;
        info.file_len = Some(len);
        Ok(info)
    }
}

/// The first `n` bytes of `file` (fewer if it is shorter), read at offsets.
fn read_prefix(file: &std::fs::File, n: u64, path: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
    let mut done = 0;
    while done < buf.len() {
        #[cfg(unix)]
        let r = std::os::unix::fs::FileExt::read_at(file, &mut buf[done..], done as u64);
        #[cfg(not(unix))]
        let r = std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], done as u64);
        match r {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// Longest `.npy` header read, in bytes: the longest format 1.0 allows
/// (numpy itself refuses headers over 10000 bytes unless told otherwise).
pub(crate) const MAX_HEADER_LEN: u64 = 65535;

/// Parses the header at the start of `bytes` with the general parser
/// (`crate::pylit`), as `ndarray-npy` would: `(descr, fortran, shape, data
/// offset)`. `bytes` holds the whole header if it is a `.npy` file.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(String, bool, Vec<usize>, usize)> {
    let truncated = || Error::Truncated {
        path: path.to_path_buf(),
        expected: header_len_hint(bytes),
        actual: bytes.len() as u64,
    };
    let corrupt = |why: String| Error::corrupt(path, format!("invalid .npy header: {why}"));
    let magic = bytes.get(..6).ok_or_else(truncated)?;
    if magic != b"\x93NUMPY" {
        return Err(corrupt("not a .npy file (bad magic string)".into()));
    }
    let prefix = match bytes.get(6..8).ok_or_else(truncated)? {
        [1, 0] => 10,
        [2 | 3, 0] => 12,
        [major, minor] => {
            return Err(corrupt(format!(
                "unsupported format version {major}.{minor}"
            )))
        }
        _ => return Err(truncated()),
    };
    if bytes.len() < prefix {
        return Err(truncated());
    }
    let text = header_text(bytes).ok_or_else(truncated)?;
    let Some((b'\n', text)) = text.split_last() else {
        return Err(corrupt("no newline at the end".into()));
    };
    let text = match std::str::from_utf8(text) {
        Ok(t) if t.is_ascii() || bytes[6] == 3 => t,
        _ if bytes[6] == 3 => return Err(corrupt("not UTF-8".into())),
        _ => return Err(corrupt("not ASCII".into())),
    };
    let Lit::Dict(fields) = crate::pylit::parse(text).map_err(corrupt)? else {
        return Err(corrupt("not a dictionary".into()));
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in fields {
        match (key, value) {
            (Lit::Str(k), v) if k == "descr" => {
                descr = Some(match v {
                    Lit::Str(s) => s,
                    other => other.repr(),
                })
            }
            (Lit::Str(k), Lit::Bool(b)) if k == "fortran_order" => fortran = Some(b),
            (Lit::Str(k), Lit::Tuple(dims)) if k == "shape" => {
                shape = Some(
                    dims.iter()
                        .map(|d| match d {
                            Lit::Int(Some(n)) => usize::try_from(*n).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| {
                            corrupt(format!(
                                "shape {} is not a tuple of sizes",
                                Lit::Tuple(dims.clone()).repr()
                            ))
                        })?,
                )
            }
            (Lit::Str(k), v) if k == "fortran_order" || k == "shape" => {
                return Err(corrupt(format!("illegal value {} for {k}", v.repr())))
            }
            (k, _) => return Err(corrupt(format!("unknown key {}", k.repr()))),
        }
    }
    let missing = |k: &str| corrupt(format!("no {k:?} key"));
    let end = usize::try_from(header_len_hint(bytes)).map_err(|_| truncated())?;
    Ok((
        descr.ok_or_else(|| missing("descr"))?,
        fortran.ok_or_else(|| missing("fortran_order"))?,
        shape.ok_or_else(|| missing("shape"))?,
        end,
    ))
}

fn check_header_len(len: u64, path: &Path) -> Result<()> {
    if len > MAX_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            format!("the .npy header is {len} bytes long (at most {MAX_HEADER_LEN} are read)"),
        ));
    }
    Ok(())
}

/// The header text (the dictionary, padding and final newline) of a file
/// starting with `bytes`, when the preamble is one of NPY 1.0, 2.0 or 3.0 and
/// the whole header is in `bytes`.
fn header_text(bytes: &[u8]) -> Option<&[u8]> {
    if !bytes.starts_with(b"\x93NUMPY") || bytes.get(7) != Some(&0) {
        return None;
    }
    let start = match bytes.get(6)? {
        1 => 10,
        2 | 3 => 12,
        _ => return None,
    };
    let end = usize::try_from(header_len_hint(bytes)).ok()?;
    bytes.get(start..end)
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

/// Bytes of data for an array of `T` with `shape` (`None` when such an
/// array cannot exist: see [`checked_nbytes`]).
pub(crate) fn data_bytes<T>(shape: &[usize]) -> Option<u64> {
    checked_nbytes(shape, std::mem::size_of::<T>())
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

/// The bytes an in-memory array's `.npy` file holds, readable without
/// writing the file: the header, and the elements' bytes as they are in
/// memory (the array is C or Fortran contiguous, and its element type's
/// memory is its `.npy` encoding). What an object-store upload reads from
/// RAM while the same bytes are written to a local file
/// ([`image`] makes one).
pub(crate) struct NpyImage<'a> {
    /// The `.npy` header, exactly as [`write_array`] writes it.
    pub header: Vec<u8>,
    /// The elements' bytes (kept readable, and unchanged, while this lives).
    pub body: std::sync::Arc<dyn ImageBody + 'a>,
}

/// The element bytes of an [`NpyImage`]: a contiguous array, held (and
/// its lock, when it has one) for as long as the image lives.
pub(crate) trait ImageBody: Sync {
    /// The elements' bytes, in memory order.
    fn bytes(&self) -> &[u8];
}

/// A body that is a plain borrowed slice.
pub(crate) struct SliceBody<'a>(pub &'a [u8]);

impl ImageBody for SliceBody<'_> {
    fn bytes(&self) -> &[u8] {
        self.0
    }
}

/// The header of an [`NpyImage`] of `a`, and whether `a`'s memory is the
/// body [`write_array`] writes (C or Fortran contiguous, an element type
/// whose memory is its encoding: see `mmap::element_bytes`); `None`
/// otherwise (the file must then be written to be read).
pub(crate) fn image_header<T, S, D>(a: &ArrayBase<S, D>) -> Option<Vec<u8>>
where
    T: Element,
    S: Data<Elem = T>,
    D: Dimension,
{
    let fortran = if a.is_standard_layout() {
        false
    } else if a.ndim() > 1 && a.t().is_standard_layout() {
        true
    } else {
        return None;
    };
    let mut header = Vec::new();
    write_header::<T>(&mut header, a.shape(), fortran, Path::new("")).ok()?;
    Some(header)
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
    use crate::element::descr_string;
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

    fn general(bytes: &[u8]) -> Option<(String, bool, Vec<usize>, usize)> {
        parse_header(bytes, Path::new("x")).ok()
    }

    #[test]
    fn the_general_parser_agrees_with_ndarray_npy() {
        for text in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
            "{\"descr\": \"<i8\", \"shape\": (10, 2, 3), \"fortran_order\": False}",
            "{'descr': [('a', '<i4'), ('b', '<f4', (2, 3))], 'fortran_order': False, 'shape': (3,), }",
            "{ 'descr' : '<\\x66\\u0038' ,'fortran_order':True,'shape':( 1_0 , ) }",
            "{'descr': '|b1', 'fortran_order': False, 'shape': (000,), }",
            "{'descr': b'<f4', 'fortran_order': False, 'shape': (), }",
        ] {
            for v in [1, 2, 3] {
                let b = header(text, v);
                let (g, s) = (general(&b), slow(&b));
                assert!(g.is_some(), "{text}");
                assert_eq!(g, s, "{text}");
            }
        }
        for text in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3.0,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [3], }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
            "{'descr': '<f4', 'shape': (3,)}",
            "['descr', 'fortran_order', 'shape']",
        ] {
            assert_eq!(general(&header(text, 1)), None, "{text}");
            assert_eq!(slow(&header(text, 1)), None, "{text}");
        }
    }

    proptest! {
        /// The general parser accepts nothing `ndarray-npy` refuses, and
        /// reads what both accept the same way.
        #[test]
        fn the_general_parser_never_accepts_more(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            base in 0usize..3,
        ) {
            let text = [
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
                "{'descr': [('a', '<i4'), ('b', '<f4', (2,))], 'fortran_order': True, 'shape': (1_0,), }",
                "{\"descr\": '\\x3cf\\'4', \"shape\": (), \"fortran_order\": False, }",
            ][base];
            let mut b = header(text, 1);
            let meaningful = b"0123456789(),:'\"{}[] <>|_-\\xuTFN";
            for (i, x) in bytes.iter().enumerate().take(b.len() - 10) {
                if i % 5 == 2 { b[10 + i] = meaningful[usize::from(*x) % meaningful.len()]; }
            }
            if let Some(g) = general(&b) {
                prop_assert_eq!(Some(g), slow(&b));
            }
        }

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
