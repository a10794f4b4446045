//! Decoding one entry of an open pack: its key, metadata and arrays, each
//! array a zero-copy view into the map or decoded from its compressed
//! payload.

use std::fmt;

use ndarray::{ArrayView, CowArray, Dimension};
use serde_json::Value;

use super::codec::{self, Compression};
use super::file::PackFile;
use super::format::{self, Desc, ALIGN, ENTRY_SAMPLE, KEY_U64, PREAMBLE_LEN};
use super::key::PackKey;
use super::sample::{check_type, decode_owned, Sample, SampleArray};
use crate::element::{checked_nbytes, dtype_itemsize, Element};
use crate::error::{Error, Result};

/// One entry of an open pack: a key, optional JSON metadata, and one array
/// (a plain entry) or several named arrays (a sample).
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix1};
/// use ndarray_offload::pack::{PackReader, PackWriter, Sample};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.pack");
/// let mut w = PackWriter::create(&path)?;
/// w.append_sample("s", &Sample::new().with_array("x", &array![1u8, 2])?)?;
/// w.finish()?;
/// let r = PackReader::open(&path)?;
/// let e = r.entry("s")?;
/// assert!(e.is_sample());
/// assert_eq!(e.array("x")?.get::<u8, Ix1>()?, array![1u8, 2]);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone)]
pub struct PackEntry<'a> {
    pub(super) r: &'a PackFile,
    pub(super) off: u64,
    pub(super) desc: Desc<'a>,
    pub(super) key: PackKey<'a>,
}

impl fmt::Debug for PackEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackEntry")
            .field("key", &self.key)
            .field("arrays", &self.desc.n_arrays)
            .field("meta_len", &self.desc.meta.len())
            .finish()
    }
}

impl<'a> PackEntry<'a> {
    /// The entry's key (borrowed from the map).
    ///
    /// # Examples
    ///
    /// See [`PackReader::entry`](super::PackReader::entry).
    pub fn key(&self) -> &PackKey<'a> {
        &self.key
    }

    /// Whether the entry was written as a [`Sample`] (named arrays), rather
    /// than a single array.
    ///
    /// # Examples
    ///
    /// See [`PackEntry`].
    pub fn is_sample(&self) -> bool {
        self.desc.entry_kind == ENTRY_SAMPLE
    }

    /// Number of arrays in the entry (1 for a plain entry).
    ///
    /// # Examples
    ///
    /// See [`PackEntry::arrays`].
    pub fn len(&self) -> usize {
        usize::from(self.desc.n_arrays)
    }

    /// Whether the entry holds no array (a sample of metadata only).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{PackReader, PackWriter, Sample};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = PackWriter::create(&path)?;
    /// w.append_sample(1u64, &Sample::new().with_meta(serde_json::json!(1)))?;
    /// w.finish()?;
    /// assert!(PackReader::open(&path)?.entry(1u64)?.is_empty());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.desc.n_arrays == 0
    }

    /// Whether the entry carries metadata.
    ///
    /// # Examples
    ///
    /// See [`PackWriter::append_with_meta`](crate::pack::PackWriter::append_with_meta).
    pub fn has_meta(&self) -> bool {
        !self.desc.meta.is_empty()
    }

    /// The metadata value, parsed (its bytes are covered by the entry
    /// descriptor's checksum, verified when the entry was looked up).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the text is not JSON.
    ///
    /// # Examples
    ///
    /// See [`PackWriter::append_with_meta`](crate::pack::PackWriter::append_with_meta).
    pub fn meta(&self) -> Result<Option<Value>> {
        if self.desc.meta.is_empty() {
            return Ok(None);
        }
        crate::depth::check_json(self.desc.meta, crate::depth::MAX_JSON_DEPTH).map_err(|e| {
            self.r
                .corrupt(format!("entry {:?}: metadata: {e}", self.key))
        })?;
        serde_json::from_slice(self.desc.meta)
            .map(Some)
            .map_err(|e| {
                self.r
                    .corrupt(format!("entry {:?}: metadata: {e}", self.key))
            })
    }

    /// The entry's arrays, in the order they were written.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::pack::{PackReader, PackWriter, Sample};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let s = Sample::new().with_array("a", &array![1u8])?.with_array("b", &array![2.0f32])?;
    /// let mut w = PackWriter::create(&path)?;
    /// w.append_sample("s", &s)?;
    /// w.finish()?;
    /// let r = PackReader::open(&path)?;
    /// let e = r.entry("s")?;
    /// assert_eq!(e.len(), 2);
    /// let names: Vec<String> = e.arrays().map(|a| a.map(|a| a.name().to_string())).collect::<Result<_, _>>()?;
    /// assert_eq!(names, ["a", "b"]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn arrays(&self) -> impl ExactSizeIterator<Item = Result<PackArray<'a>>> + '_ {
        let (mut dim_at, mut name_at) = (0usize, 0usize);
        (0..self.len()).map(move |i| {
            let a = self.make_array(i, dim_at, name_at);
            if let Some(rec) = self.desc.rec(i) {
                dim_at += usize::from(rec.ndim) * 8;
                name_at += usize::from(rec.name_len);
            }
            a
        })
    }

    /// The array called `name` (a plain entry's array is called `""`).
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] if the entry has no such array;
    /// [`Error::Corrupt`] for damaged records.
    ///
    /// # Examples
    ///
    /// See [`PackEntry`].
    pub fn array(&self, name: &str) -> Result<PackArray<'a>> {
        for a in self.arrays() {
            let a = a?;
            if a.name == name {
                return Ok(a);
            }
        }
        Err(Error::KeyNotFound {
            name: format!("{}/{name}", self.key),
            path: self.r.path.clone(),
        })
    }

    /// The entry's only array.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the entry holds other than one array.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.dtype(), "<u4");
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn single(&self) -> Result<PackArray<'a>> {
        if self.desc.n_arrays != 1 {
            return Err(Error::InvalidInput {
                path: self.r.path.clone(),
                reason: format!(
                    "entry {:?} holds {} arrays; pick one with array(name)",
                    self.key, self.desc.n_arrays
                ),
            });
        }
        self.make_array(0, 0, 0)
    }

    /// The entry's only array, typed: a view when uncompressed, decoded when
    /// compressed.
    ///
    /// # Errors
    ///
    /// As [`PackReader::get`](super::PackReader::get).
    ///
    /// # Examples
    ///
    /// See [`PackReader::read`](super::PackReader::read).
    pub fn get<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        self.single()?.get()
    }

    /// As [`get`](PackEntry::get), also verifying the payload checksum.
    ///
    /// # Errors
    ///
    /// As [`PackReader::get_verified`](super::PackReader::get_verified).
    ///
    /// # Examples
    ///
    /// See [`PackReader::get_verified`](super::PackReader::get_verified).
    pub fn get_verified<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        self.single()?.get_verified()
    }

    /// Copies the entry out as an owned [`Sample`] (decoding compressed
    /// arrays and verifying every checksum). A plain entry becomes a sample
    /// with one array named `""`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for damaged records or checksum mismatches.
    ///
    /// # Examples
    ///
    /// See [`PackWriter::append_sample`](crate::pack::PackWriter::append_sample).
    pub fn to_sample(&self) -> Result<Sample> {
        let mut arrays = Vec::with_capacity(self.len());
        for a in self.arrays() {
            let a = a?;
            a.check_crc()?;
            arrays.push(SampleArray {
                name: a.name.to_string(),
                dtype: a.dtype.to_string(),
                shape: a.shape.clone(),
                bytes: a.decoded_bytes()?,
            });
        }
        Ok(Sample {
            arrays,
            meta: self.meta()?,
            origin: Some(self.r.path.clone()),
        })
    }

    /// Array `i`, whose dimensions start at byte `dim_at` of the
    /// descriptor's dimensions and whose name at byte `name_at` of its names.
    fn make_array(&self, i: usize, dim_at: usize, name_at: usize) -> Result<PackArray<'a>> {
        let r = self.r;
        let bad = |what: String| r.corrupt(format!("entry {:?}: array #{i}: {what}", self.key));
        let rec = self
            .desc
            .rec(i)
            .ok_or_else(|| bad("record missing".into()))?;
        let dtype = format::decode_dtype(rec.dtype).ok_or_else(|| bad("bad dtype field".into()))?;
        let itemsize =
            dtype_itemsize(dtype).ok_or_else(|| bad(format!("unknown dtype {dtype:?}")))?;
        let ndim = usize::from(rec.ndim);
        if ndim > format::MAX_NDIM {
            return Err(bad("too many dimensions".into()));
        }
        let dims = self
            .desc
            .dims
            .get(dim_at..dim_at.saturating_add(ndim * 8))
            .ok_or_else(|| bad("shape outside the descriptor".into()))?;
        let mut shape = Vec::with_capacity(ndim);
        for k in 0..ndim {
            let d = format::le64(dims, k * 8).unwrap_or(0);
            shape.push(usize::try_from(d).map_err(|_| bad("dimension too large".into()))?);
        }
        // Zero dimensions do not make any shape fit (see `checked_nbytes`).
        let raw_len = checked_nbytes(&shape, itemsize)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(format!("shape {shape:?} overflows the addressable size")))?;
        let compression = Compression::from_code(rec.compression)
            .ok_or_else(|| bad(format!("unknown compression code {}", rec.compression)))?;
        // A payload lies in the data region, before its own descriptor.
        if !rec.data_off.is_multiple_of(ALIGN)
            || rec.data_off < PREAMBLE_LEN
            || rec
                .data_off
                .checked_add(rec.stored_len)
                .is_none_or(|e| e > self.off)
        {
            return Err(bad("payload outside the data region".into()));
        }
        if compression == Compression::None && rec.stored_len != raw_len as u64 {
            return Err(bad(format!(
                "payload holds {} bytes but its shape needs {raw_len}",
                rec.stored_len
            )));
        }
        let name = self
            .desc
            .names
            .get(name_at..name_at.saturating_add(usize::from(rec.name_len)))
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| bad("bad name".into()))?;
        let data = r
            .map
            .get(rec.data_off as usize..(rec.data_off + rec.stored_len) as usize)
            .ok_or_else(|| bad("payload outside the file".into()))?;
        Ok(PackArray {
            r,
            key: self.key.clone(),
            name,
            dtype,
            shape,
            compression,
            raw_len,
            data,
            crc: rec.crc,
            data_off: rec.data_off,
            stored_len: rec.stored_len,
        })
    }
}

/// One array of a [`PackEntry`]: its name, dtype, shape and stored bytes.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix1};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.pack");
/// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
/// w.append("a", &array![1i16, 2, 3])?;
/// w.finish()?;
/// let r = ndarray_offload::pack::PackReader::open(&path)?;
/// let a = r.entry("a")?.single()?;
/// assert_eq!((a.dtype(), a.shape()), ("<i2", &[3usize][..]));
/// assert_eq!(a.get::<i16, Ix1>()?, array![1i16, 2, 3]);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone)]
pub struct PackArray<'a> {
    pub(super) r: &'a PackFile,
    pub(super) key: PackKey<'a>,
    pub(super) name: &'a str,
    pub(super) dtype: &'a str,
    pub(super) shape: Vec<usize>,
    pub(super) compression: Compression,
    pub(super) raw_len: usize,
    pub(super) data: &'a [u8],
    pub(super) crc: u32,
    pub(super) data_off: u64,
    pub(super) stored_len: u64,
}

impl fmt::Debug for PackArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackArray")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("compression", &self.compression)
            .finish()
    }
}

impl<'a> PackArray<'a> {
    pub(super) fn what(&self) -> String {
        if self.name.is_empty() {
            format!("entry {:?}", self.key)
        } else {
            format!("entry {:?} array {:?}", self.key, self.name)
        }
    }

    /// The array's name within its entry (`""` for a plain entry).
    ///
    /// # Examples
    ///
    /// See [`PackEntry::arrays`].
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The numpy dtype string (`"<f4"`, `"|u1"`, ...).
    ///
    /// # Examples
    ///
    /// See [`PackArray`].
    pub fn dtype(&self) -> &'a str {
        self.dtype
    }

    /// The shape.
    ///
    /// # Examples
    ///
    /// See [`PackArray`].
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// How the payload is stored.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.compression(), ndarray_offload::pack::Compression::None);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Bytes the payload occupies in the file.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// let a = r.entry("a")?.single()?;
    /// assert_eq!((a.stored_len(), a.raw_len()), (8, 8));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn stored_len(&self) -> u64 {
        self.stored_len
    }

    /// Bytes of the decoded elements (shape × item size).
    ///
    /// # Examples
    ///
    /// See [`stored_len`](PackArray::stored_len).
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// The stored payload bytes (compressed if the entry is), borrowed from
    /// the map without verification.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.stored_bytes(), [1, 2]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn stored_bytes(&self) -> &'a [u8] {
        self.data
    }

    pub(crate) fn check_crc(&self) -> Result<()> {
        if crc32fast::hash(self.data) != self.crc {
            return Err(self
                .r
                .corrupt(format!("{}: payload checksum mismatch", self.what())));
        }
        Ok(())
    }

    /// Decoded element bytes (the caller has verified the checksum, or the
    /// codec does it here for compressed payloads).
    pub(crate) fn decoded_bytes(&self) -> Result<Vec<u8>> {
        if self.compression != Compression::None {
            self.check_crc()?;
        }
        codec::decompress(
            self.compression,
            self.data,
            self.raw_len,
            &self.r.path,
            &self.what(),
        )
    }

    /// A zero-copy view into the map.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the payload is compressed;
    /// [`Error::DtypeMismatch`] / [`Error::DimensionMismatch`] for another
    /// type; [`Error::Corrupt`] if the bytes are not valid elements (a `bool`
    /// byte other than 0 or 1).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &array![true, false])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.view::<bool, Ix1>()?, array![true, false]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn view<T: Element, D: Dimension>(&self) -> Result<ArrayView<'a, T, D>> {
        let dim = check_type::<T, D>(self.dtype, &self.shape, &self.r.path)?;
        if self.compression != Compression::None {
            return Err(Error::Unsupported {
                path: self.r.path.clone(),
                reason: format!(
                    "{} is {}-compressed and cannot be viewed in place; use get()",
                    self.what(),
                    self.compression
                ),
            });
        }
        let len = dim.size();
        let slice = T::bytes_as_slice(self.data, &T::type_descriptor(), len)
            .map_err(|e| self.r.corrupt(format!("{}: {e}", self.what())))?;
        ArrayView::from_shape(dim, slice)
            .map_err(|e| self.r.corrupt(format!("{}: {e}", self.what())))
    }

    /// The array typed: a view into the map when uncompressed, decoded (after
    /// its checksum is verified) when compressed.
    ///
    /// # Errors
    ///
    /// As [`PackReader::get`](super::PackReader::get).
    ///
    /// # Examples
    ///
    /// See [`PackArray`].
    pub fn get<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        if self.compression == Compression::None {
            return self.view().map(CowArray::from);
        }
        check_type::<T, D>(self.dtype, &self.shape, &self.r.path)?;
        let bytes = self.decoded_bytes()?;
        decode_owned(&bytes, self.dtype, &self.shape, &self.r.path, &self.what())
            .map(CowArray::from)
    }

    /// As [`get`](PackArray::get), verifying the payload checksum first.
    ///
    /// # Errors
    ///
    /// As [`PackReader::get_verified`](super::PackReader::get_verified).
    ///
    /// # Examples
    ///
    /// See [`PackReader::get_verified`](super::PackReader::get_verified).
    pub fn get_verified<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        check_type::<T, D>(self.dtype, &self.shape, &self.r.path)?;
        self.check_crc()?;
        self.get()
    }
}

impl PackFile {
    /// The entry whose descriptor is at `off`.
    pub(super) fn make_entry(&self, off: u64) -> Result<PackEntry<'_>> {
        let desc = self.desc_at(off)?;
        let key = match desc.key_kind {
            // A `u64` key is 8 bytes (checked when the descriptor was decoded).
            KEY_U64 => PackKey::U64(format::le64(desc.key, 0).unwrap_or(0)),
            _ => PackKey::Str(
                std::str::from_utf8(desc.key)
                    .map_err(|_| {
                        self.corrupt(format!(
                            "entry descriptor at offset {off}: key is not UTF-8"
                        ))
                    })?
                    .into(),
            ),
        };
        Ok(PackEntry {
            r: self,
            off,
            desc,
            key,
        })
    }

    /// Entry number `i` in file order (the caller checks `i` against the
    /// entry count).
    pub(super) fn entry_in_file_order(&self, i: u64) -> Result<PackEntry<'_>> {
        self.make_entry(self.map_u64(self.layout.seq + 8 * i)?)
    }

    /// Entry number `i` in key order (as [`entry_in_file_order`](Self::entry_in_file_order)).
    pub(super) fn entry_in_key_order(&self, i: u64) -> Result<PackEntry<'_>> {
        self.make_entry(self.map_u64(self.layout.order + 8 * i)?)
    }
}
