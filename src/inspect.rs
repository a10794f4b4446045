//! Read-only inspection of stores and packs without knowing their element
//! types: what the `ndoffload` command-line inspector uses.
//!
//! [`inspect_store`] reports every entry of a store directory (complete or
//! not), [`inspect_pack`] every array of a pack file; with
//! [`InspectOptions::read_data`] both read the data, check it and compute a
//! SHA-256 that numpy reproduces.

use std::path::Path;

use ndarray::{ArrayView, IxDyn};
use sha2::{Digest, Sha256};

use crate::element::dtype_itemsize;
use crate::error::{Error, Result};
use crate::mmap;
use crate::npy::NpyInfo;
use crate::store::meta::Meta;
use crate::store::DiskBackedStore;

/// What the inspector found for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryReport {
    /// The entry's name.
    pub name: String,
    /// numpy dtype string, when readable.
    pub dtype: Option<String>,
    /// Shape, when readable.
    pub shape: Option<Vec<usize>>,
    /// Bytes of data, when known.
    pub nbytes: Option<u64>,
    /// Whether the data is in Fortran order.
    pub fortran_order: bool,
    /// `None` when the entry is sound, otherwise what is wrong.
    pub problem: Option<String>,
    /// SHA-256 (hex) of the values in C order, element bytes in the file's
    /// byte order (`hashlib.sha256(np.ascontiguousarray(a).tobytes())`).
    pub sha256: Option<String>,
}

impl EntryReport {
    /// A report for `name` with nothing known yet.
    fn named(name: String) -> Self {
        EntryReport {
            name,
            dtype: None,
            shape: None,
            nbytes: None,
            fortran_order: false,
            problem: None,
            sha256: None,
        }
    }

    /// A report for `name` that only says what is wrong.
    fn problem(name: String, problem: String) -> Self {
        EntryReport {
            problem: Some(problem),
            ..Self::named(name)
        }
    }

    /// `"ok"`, or the problem.
    pub fn status(&self) -> &str {
        self.problem.as_deref().unwrap_or("ok")
    }
}

/// How thoroughly to inspect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InspectOptions {
    /// Read every array: compute its checksum and check its values (`bool`
    /// bytes must be 0 or 1).
    pub read_data: bool,
}

/// Inspects every entry of the store at `dir`, complete or not, in name
/// order. Opens the store read-only: nothing is written.
///
/// # Errors
///
/// Errors opening the store ([`Error::NotFound`], [`Error::Locked`], ...).
/// Problems with single entries are reported in their [`EntryReport`].
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use ndarray_offload::inspect::{inspect_store, InspectOptions};
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// DiskBackedStore::open(dir.path())?.insert_durable("a", array![1u8, 2])?;
/// let reports = inspect_store(dir.path(), InspectOptions { read_data: true })?;
/// assert_eq!(reports[0].status(), "ok");
/// assert_eq!(reports[0].dtype.as_deref(), Some("|u1"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn inspect_store(dir: &Path, opts: InspectOptions) -> Result<Vec<EntryReport>> {
    let store = DiskBackedStore::open_read_only(dir)?;
    let mut out: Vec<EntryReport> = store
        .keys()
        .iter()
        .map(|k| inspect_entry(dir, k.as_str(), opts))
        .collect();
    for (name, reason) in store.incomplete() {
        out.push(EntryReport::problem(
            name.to_string(),
            format!("incomplete: {reason}"),
        ));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn inspect_entry(dir: &Path, name: &str, opts: InspectOptions) -> EntryReport {
    let mut r = EntryReport::named(name.to_owned());
    if let Err(e) = check_entry(dir, name, opts, &mut r) {
        r.problem = Some(e.to_string());
    }
    r
}

fn check_entry(dir: &Path, name: &str, opts: InspectOptions, r: &mut EntryReport) -> Result<()> {
    let meta_path = dir.join(format!("{name}.meta.json"));
    let npy_path = dir.join(format!("{name}.npy"));
    let meta = Meta::read(&meta_path)?;
    r.dtype = meta.dtype.clone();
    r.shape = meta.shape.clone();
    let (info, len) = NpyInfo::read(&npy_path)?;
    r.fortran_order = info.fortran;
    r.nbytes = info.data_len;
    // A field the metadata leaves out is taken from the .npy header.
    let dtype = meta.dtype.unwrap_or_else(|| info.descr.clone());
    let shape = meta.shape.unwrap_or_else(|| info.shape.clone());
    r.dtype = Some(dtype.clone());
    r.shape = Some(shape.clone());
    if info.descr != dtype {
        return Err(Error::Mismatch {
            path: meta_path,
            field: "dtype",
            found: dtype,
            expected: info.descr,
            other: npy_path,
        });
    }
    if info.shape != shape {
        return Err(Error::Mismatch {
            path: meta_path,
            field: "shape",
            found: format!("{shape:?}"),
            expected: format!("{:?}", info.shape),
            other: npy_path,
        });
    }
    let Some(itemsize) = dtype_itemsize(&info.descr) else {
        return Err(Error::corrupt(
            &npy_path,
            format!("unsupported dtype {}", info.descr),
        ));
    };
    info.check_len(len, &npy_path)?;
    if opts.read_data {
        let file = crate::io::open_regular(&npy_path, crate::io::Access::Read)?;
        let map = mmap::map_readonly(&file, &npy_path)?;
        let end = info.data_offset as u64 + info.data_len.unwrap_or(0);
        let data = map
            .get(info.data_offset..end as usize)
            .ok_or_else(|| Error::Truncated {
                path: npy_path.clone(),
                expected: end,
                actual: map.len() as u64,
            })?;
        if info.descr == "|b1" {
            if let Some(pos) = data.iter().position(|&b| b > 1) {
                return Err(Error::corrupt(
                    &npy_path,
                    format!("element {pos} is not a valid bool (byte {})", data[pos]),
                ));
            }
        }
        r.sha256 = Some(c_order_sha256(data, &info.shape, itemsize, info.fortran));
    }
    Ok(())
}

/// Inspects every array of the pack at `path`, in file order. Each array is
/// one report, named `KEY` for a plain entry and `KEY/NAME` for an array of
/// a sample. With `read_data`, each payload's checksum is verified (and
/// compressed payloads decoded) and the SHA-256 of its values computed.
///
/// # Errors
///
/// Errors opening the pack ([`Error::NotFound`], [`Error::Corrupt`], ...).
/// Problems with single entries are reported in their [`EntryReport`].
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use ndarray_offload::pack::PackWriter;
/// use ndarray_offload::inspect::{inspect_pack, InspectOptions};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("tiles.pack");
/// let mut w = PackWriter::create(&path)?;
/// w.append("t0", &array![[1.0f32, 2.0, 3.0]])?;
/// w.finish()?;
/// let reports = inspect_pack(&path, InspectOptions { read_data: true })?;
/// assert_eq!(reports[0].name, "t0");
/// assert_eq!(reports[0].status(), "ok");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn inspect_pack(path: &Path, opts: InspectOptions) -> Result<Vec<EntryReport>> {
    let reader = crate::pack::PackReader::open(path)?;
    let mut out = Vec::with_capacity(reader.len());
    for (i, entry) in reader.iter().enumerate() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.push(EntryReport::problem(format!("#{i}"), e.to_string()));
                continue;
            }
        };
        let key = match entry.key() {
            crate::pack::PackKey::U64(k) => k.to_string(),
            crate::pack::PackKey::Str(s) => s.to_string(),
        };
        for array in entry.arrays() {
            let mut r = EntryReport::named(key.clone());
            match array {
                Err(e) => r.problem = Some(e.to_string()),
                Ok(a) => {
                    if entry.is_sample() {
                        r.name = format!("{key}/{}", a.name());
                    }
                    r.dtype = Some(a.dtype().to_owned());
                    r.shape = Some(a.shape().to_vec());
                    r.nbytes = Some(a.raw_len() as u64);
                    if opts.read_data {
                        let checked = a.check_crc().and_then(|()| a.decoded_bytes());
                        match checked {
                            Ok(bytes) => {
                                if a.dtype() == "|b1" && bytes.iter().any(|&b| b > 1) {
                                    r.problem = Some("a bool value is neither 0 nor 1".into());
                                }
                                r.sha256 = Some(c_order_sha256(&bytes, a.shape(), 1, false));
                            }
                            Err(e) => r.problem = Some(e.to_string()),
                        }
                    }
                }
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// SHA-256 of array data in C order, whatever order it is stored in.
pub(crate) fn c_order_sha256(
    data: &[u8],
    shape: &[usize],
    itemsize: usize,
    fortran: bool,
) -> String {
    let mut h = Sha256::new();
    if !fortran || shape.len() < 2 {
        h.update(data);
    } else {
        // Fortran data read in C order is the transposed array: view it with
        // the axes reversed (keeping each element's bytes together) and walk
        // it in logical order.
        let mut dims: Vec<usize> = shape.iter().rev().copied().collect();
        dims.push(itemsize);
        let v = ArrayView::from_shape(IxDyn(&dims), data).expect("length checked");
        let n = shape.len();
        let mut perm: Vec<usize> = (0..n).rev().collect();
        perm.push(n);
        let v = v.permuted_axes(IxDyn(&perm));
        let mut buf = Vec::with_capacity(1 << 16);
        for &b in v.iter() {
            buf.push(b);
            if buf.len() == buf.capacity() {
                h.update(&buf);
                buf.clear();
            }
        }
        h.update(&buf);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_checksum_equals_c_checksum() {
        let a = ndarray::Array3::<u16>::from_shape_fn((2, 3, 4), |(i, j, k)| {
            (i * 100 + j * 10 + k) as u16
        });
        let c: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
        let f = a.t().as_standard_layout().to_owned(); // data of `a` in Fortran order
        let fbytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            c_order_sha256(&fbytes, &[2, 3, 4], 2, true),
            c_order_sha256(&c, &[2, 3, 4], 2, false)
        );
    }
}
