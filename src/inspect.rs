//! Read-only inspection of stores and packs without knowing their element
//! types: what the `ndoffload` command-line inspector uses.
//!
//! [`inspect_store`] reports every entry of a store directory (complete or
//! not), [`inspect_pack`] every array of a pack file, [`inspect_npy`] one
//! `.npy` file; with
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
pub use crate::store::WriterInfo;

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
    /// The entry's user attributes (`ndoffload_attrs` in its
    /// `.meta.json`); empty when it has none, and for packs and `.npy`
    /// files.
    pub attrs: crate::Attrs,
    /// Not an entry: files named like one of a pair (`NAME.npy`,
    /// `NAME.meta.json`) under a name the store refuses and therefore
    /// ignores (see [`EntryName`](crate::EntryName)), or one that is not
    /// UTF-8. `name` shows the name with control characters and bytes that
    /// are not UTF-8 escaped (`\x0a`, `\xff`) and `problem` says why it is
    /// ignored. Always `false` for packs.
    pub ignored: bool,
    /// Bytes the entry takes where it is stored: its `.npy` and
    /// `.meta.json` files in a store directory, its data and metadata
    /// objects in an object store, the file for a `.npy` file; `None` for
    /// the arrays of a pack (the pack's size is the file's) and when
    /// unknown.
    pub stored_bytes: Option<u64>,
}

impl EntryReport {
    /// A report for `name` with nothing known yet.
    pub(crate) fn named(name: String) -> Self {
        EntryReport {
            name,
            dtype: None,
            shape: None,
            nbytes: None,
            fortran_order: false,
            problem: None,
            sha256: None,
            attrs: crate::Attrs::new(),
            ignored: false,
            stored_bytes: None,
        }
    }

    /// A report for `name` that only says what is wrong.
    pub(crate) fn problem(name: String, problem: String) -> Self {
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
///
/// Build it with [`InspectOptions::new`] or from
/// [`InspectOptions::default`] (metadata only) and the setters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InspectOptions {
    /// Read every array: compute its checksum and check its values (`bool`
    /// bytes must be 0 or 1).
    pub read_data: bool,
}

impl InspectOptions {
    /// Options that read every array (`read_data: true`) or only the
    /// metadata (`false`).
    pub fn new(read_data: bool) -> Self {
        Self { read_data }
    }
    /// Sets [`read_data`](InspectOptions#structfield.read_data).
    pub fn read_data(mut self, on: bool) -> Self {
        self.read_data = on;
        self
    }
}

/// What a path given to the inspector is: see [`path_kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A directory: a store, for [`inspect_store`].
    Store,
    /// A regular file not starting with the `.npy` magic: a pack, for
    /// [`inspect_pack`].
    Pack,
    /// A regular file starting with the `.npy` magic (`\x93NUMPY`), for
    /// [`inspect_npy`].
    Npy,
}

/// What the path a user names is: a directory ([`PathKind::Store`]) or a
/// regular file, told apart by its first 6 bytes ([`PathKind::Npy`] or
/// [`PathKind::Pack`]).
///
/// The path is opened once, read-only, as the crate opens the files it
/// reads, except that a symbolic link at `path` is followed: without
/// blocking (`O_NONBLOCK`), then checked with `fstat` on the descriptor
/// before anything is read from it. A FIFO, socket or device (or a link to
/// one) never hangs the call and is never read.
///
/// # Errors
///
/// [`Error::InvalidInput`] naming `path` and what it is (`"is a FIFO, not a
/// regular file or directory"`); [`Error::NotFound`],
/// [`Error::PermissionDenied`] and I/O errors opening or reading it.
///
/// # Examples
///
/// ```
/// use ndarray_offload::inspect::{path_kind, PathKind};
///
/// let dir = tempfile::tempdir()?;
/// assert_eq!(path_kind(dir.path())?, PathKind::Store);
/// let npy = dir.path().join("a.npy");
/// ndarray_npy::write_npy(&npy, &ndarray::array![1u8])?;
/// assert_eq!(path_kind(&npy)?, PathKind::Npy);
/// assert!(path_kind(std::path::Path::new("/dev/null")).is_err());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn path_kind(path: &Path) -> Result<PathKind> {
    use crate::error::IoContext;
    use std::io::Read;
    let (file, kind) = crate::io::open_argument(path, crate::io::Want::FileOrDir)?;
    if kind == crate::io::Kind::Dir {
        return Ok(PathKind::Store);
    }
    let mut magic = Vec::with_capacity(6);
    file.take(6).read_to_end(&mut magic).ctx("read", path)?;
    Ok(if magic == b"\x93NUMPY" {
        PathKind::Npy
    } else {
        PathKind::Pack
    })
}

/// Inspects every entry of the store at `dir`, complete or not, in name
/// order. Opens the store read-only: nothing is written. `dir` may be a
/// symbolic link to the store; anything but a directory is refused before
/// anything is read.
///
/// Files named like an entry's (`NAME.npy`, `NAME.meta.json`) whose name
/// the store refuses (a Windows device name, a control character, longer
/// than [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES), not UTF-8, ...) are not
/// entries: the store ignores them, as GSEGUtils does. They are reported
/// too, with [`ignored`](EntryReport#structfield.ignored) set and the
/// reason in [`problem`](EntryReport#structfield.problem), so that a check
/// of the directory does not call it sound while the store cannot see some
/// of its files.
///
/// # Errors
///
/// Errors opening the store ([`Error::NotFound`],
/// [`Error::NotADirectory`] for a regular file, [`Error::InvalidInput`] for
/// a FIFO, socket or device, ...). Writers may be at
/// work meanwhile: the store is opened read-only, which takes no lock.
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
/// let reports = inspect_store(dir.path(), InspectOptions::new(true))?;
/// assert_eq!(reports[0].status(), "ok");
/// assert_eq!(reports[0].dtype.as_deref(), Some("|u1"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn inspect_store(dir: &Path, opts: InspectOptions) -> Result<Vec<EntryReport>> {
    // A FIFO, socket or device is refused here, naming what it is; a
    // regular file is refused by the store's open (`Error::NotADirectory`).
    crate::io::open_argument(dir, crate::io::Want::FileOrDir)?;
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
    out.extend(ignored_names(dir)?);
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reports for the files of `dir` that are named like half of a pair but
/// that the store's listing ignores: names that are not UTF-8, and stems
/// that are not valid entry names. One report per stem.
fn ignored_names(dir: &Path) -> Result<Vec<EntryReport>> {
    use crate::error::IoContext;
    let mut found: std::collections::BTreeMap<String, String> = Default::default();
    for e in std::fs::read_dir(dir).ctx("list", dir)? {
        let raw = e.ctx("list", dir)?.file_name();
        let bytes = os_bytes(&raw);
        let Some(stem) = bytes
            .strip_suffix(b".npy")
            .or_else(|| bytes.strip_suffix(b".meta.json"))
        else {
            continue;
        };
        let reason = match std::str::from_utf8(&bytes) {
            Err(_) => "the file name is not UTF-8".to_owned(),
            Ok(whole) if crate::io::is_temp_name(whole) => continue,
            Ok(_) => match std::str::from_utf8(stem).map(crate::EntryName::new) {
                Ok(Ok(_)) => continue,
                Ok(Err(Error::InvalidName { rule, .. })) => format!("invalid name: {rule}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the file name is not UTF-8".to_owned(),
            },
        };
        found.entry(escape_name(stem)).or_insert(reason);
    }
    Ok(found
        .into_iter()
        .map(|(name, reason)| EntryReport {
            ignored: true,
            ..EntryReport::problem(name, format!("ignored by the store: {reason}"))
        })
        .collect())
}

/// The bytes of a file name.
fn os_bytes(name: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::borrow::Cow::Borrowed(name.as_bytes())
    }
    #[cfg(not(unix))]
    {
        match name.to_string_lossy() {
            std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
        }
    }
}

/// `name` made printable on one line: control characters, backslashes and
/// bytes that are not UTF-8 escaped as `\xNN`.
pub(crate) fn escape_name(name: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c < ' ' || c == '\u{7f}' || c == '\\' {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn inspect_entry(dir: &Path, name: &str, opts: InspectOptions) -> EntryReport {
    // A writer may replace the pair between the reads of its two files: a
    // disagreement is read again a few times (about 10 ms in all) before it
    // is reported.
    let mut delay = std::time::Duration::from_micros(50);
    for attempt in 0.. {
        let mut r = EntryReport::named(name.to_owned());
        let len = |f: String| std::fs::symlink_metadata(dir.join(f)).map_or(0, |m| m.len());
        r.stored_bytes = Some(len(format!("{name}.npy")) + len(format!("{name}.meta.json")));
        match check_entry(dir, name, opts, &mut r) {
            Ok(()) => return r,
            Err(Error::Mismatch { .. }) if attempt < 9 => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(2));
            }
            Err(e) => {
                r.problem = Some(e.to_string());
                return r;
            }
        }
    }
    EntryReport::named(name.to_owned())
}

/// The writers registered on the store at `dir` and alive (pid, host name,
/// start time), for `ndoffload ls`. Reads only: nothing is created or
/// locked for longer than the check.
///
/// # Errors
///
/// Errors opening the directory or reading the crate's folder
/// (`.ndoffload/`; a symbolic link or a file there is [`Error::Corrupt`]).
///
/// # Examples
///
/// ```
/// use ndarray_offload::inspect::active_writers;
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// let writers = active_writers(dir.path())?;
/// assert_eq!(writers.len(), 1);
/// assert_eq!(writers[0].pid, std::process::id());
/// drop(store);
/// assert!(active_writers(dir.path())?.is_empty());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn active_writers(dir: &Path) -> Result<Vec<WriterInfo>> {
    DiskBackedStore::open_read_only(dir)?.writers()
}

fn check_entry(dir: &Path, name: &str, opts: InspectOptions, r: &mut EntryReport) -> Result<()> {
    let meta_path = dir.join(format!("{name}.meta.json"));
    let npy_path = dir.join(format!("{name}.npy"));
    let meta = Meta::read(&meta_path)?;
    r.attrs.clone_from(&meta.attrs);
    r.dtype = meta.dtype.clone();
    r.shape = meta.shape.clone();
    // One descriptor for the header and the data: a publish renaming
    // another file over the name meanwhile changes neither.
    let file = crate::io::open_regular(&npy_path, crate::io::Access::Read)?;
    let (info, len) = NpyInfo::read_file(&file, &npy_path)?;
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
        r.sha256 = Some(data_sha256(&file, &npy_path, &info, itemsize)?);
    }
    Ok(())
}

/// Reads the data of the open `.npy` `file` (named `npy_path`, header
/// `info` read from the same descriptor), checks `bool` values and returns
/// the SHA-256 of its values in C order.
pub(crate) fn data_sha256(
    file: &std::fs::File,
    npy_path: &Path,
    info: &NpyInfo,
    itemsize: usize,
) -> Result<String> {
    let map = mmap::map_readonly(file, npy_path)?;
    let end = (info.data_offset as u64).saturating_add(info.data_len.unwrap_or(0));
    let data = usize::try_from(end)
        .ok()
        .and_then(|end| map.get(info.data_offset..end))
        .ok_or_else(|| Error::Truncated {
            path: npy_path.to_path_buf(),
            expected: end,
            actual: map.len() as u64,
        })?;
    if info.descr == "|b1" {
        if let Some(pos) = data.iter().position(|&b| b > 1) {
            return Err(Error::corrupt(
                npy_path,
                format!("element {pos} is not a valid bool (byte {})", data[pos]),
            ));
        }
    }
    c_order_sha256(data, &info.shape, itemsize, info.fortran).ok_or_else(|| {
        Error::corrupt(
            npy_path,
            format!("shape {:?} does not fit the data", info.shape),
        )
    })
}

/// Inspects one `.npy` file: its header (dtype, shape, memory order, data
/// bytes) and, with `read_data`, its values (checked, and their SHA-256 in
/// C order). The report is named after the file.
///
/// The file is opened once, as [`path_kind`] opens it (a symbolic link at
/// `path` is followed, `O_NONBLOCK`, `fstat`), and its header and data are
/// read from that one descriptor.
///
/// # Errors
///
/// Errors opening the file ([`Error::NotFound`], [`Error::InvalidInput`]
/// for anything but a regular file, ...) and reading its header
/// ([`Error::Corrupt`], [`Error::Truncated`]); a problem with the
/// data is in the report.
///
/// # Examples
///
/// ```
/// use ndarray::array;
/// use ndarray_offload::inspect::{inspect_npy, InspectOptions};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("a.npy");
/// ndarray_npy::write_npy(&path, &array![[1.0f64, 2.0], [3.0, 4.0]])?;
/// let r = inspect_npy(&path, InspectOptions::default())?;
/// assert_eq!((r.dtype.as_deref(), r.shape.as_deref()), (Some("<f8"), Some(&[2, 2][..])));
/// assert!(!r.fortran_order);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn inspect_npy(path: &Path, opts: InspectOptions) -> Result<EntryReport> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let (file, _) = crate::io::open_argument(path, crate::io::Want::File)?;
    let (info, len) = NpyInfo::read_file(&file, path)?;
    let mut r = EntryReport::named(name);
    r.stored_bytes = Some(len);
    r.dtype = Some(info.descr.clone());
    r.shape = Some(info.shape.clone());
    r.fortran_order = info.fortran;
    r.nbytes = info.data_len;
    let checked = info.check_len(len, path).and_then(|()| {
        let itemsize = dtype_itemsize(&info.descr)
            .ok_or_else(|| Error::corrupt(path, format!("unsupported dtype {}", info.descr)))?;
        if opts.read_data {
            r.sha256 = Some(data_sha256(&file, path, &info, itemsize)?);
        }
        Ok(())
    });
    if let Err(e) = checked {
        r.problem = Some(e.to_string());
    }
    Ok(r)
}

/// Inspects every array of the pack at `path`, in file order. Each array is
/// one report, named `KEY` for a plain entry and `KEY/NAME` for an array of
/// a sample; an entry whose metadata does not parse has that problem in
/// the report of each of its arrays. With `read_data`, each payload's
/// checksum is verified (and compressed payloads decoded) and the SHA-256
/// of its values computed. The pack is opened as [`path_kind`] opens it (a
/// symbolic link at `path` is followed).
///
/// # Errors
///
/// Errors opening the pack ([`Error::NotFound`], [`Error::InvalidInput`]
/// for anything but a regular file, [`Error::Corrupt`], ...).
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
/// let reports = inspect_pack(&path, InspectOptions::new(true))?;
/// assert_eq!(reports[0].name, "t0");
/// assert_eq!(reports[0].status(), "ok");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub fn inspect_pack(path: &Path, opts: InspectOptions) -> Result<Vec<EntryReport>> {
    let (file, _) = crate::io::open_argument(path, crate::io::Want::File)?;
    let reader = crate::pack::PackReader::from_file(file, path)?;
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
        // Metadata a reader cannot parse makes each array of the entry bad.
        let meta_problem = entry.meta().err().map(|e| e.to_string());
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
                                r.sha256 = c_order_sha256(&bytes, a.shape(), 1, false);
                            }
                            Err(e) => r.problem = Some(e.to_string()),
                        }
                    }
                }
            }
            if r.problem.is_none() {
                r.problem.clone_from(&meta_problem);
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// SHA-256 of array data in C order, whatever order it is stored in
/// (`None` if `data` does not hold an array of `shape`).
pub(crate) fn c_order_sha256(
    data: &[u8],
    shape: &[usize],
    itemsize: usize,
    fortran: bool,
) -> Option<String> {
    let mut h = Sha256::new();
    if !fortran || shape.len() < 2 {
        h.update(data);
    } else {
        // Fortran data read in C order is the transposed array: view it with
        // the axes reversed (keeping each element's bytes together) and walk
        // it in logical order.
        let mut dims: Vec<usize> = shape.iter().rev().copied().collect();
        dims.push(itemsize);
        let v = ArrayView::from_shape(IxDyn(&dims), data).ok()?;
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
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
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
            c_order_sha256(&fbytes, &[2, 3, 4], 2, true).unwrap(),
            c_order_sha256(&c, &[2, 3, 4], 2, false).unwrap()
        );
    }
}
