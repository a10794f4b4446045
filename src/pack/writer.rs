//! The pack writer: append keyed arrays and samples, commit in `finish()`.

use std::any::TypeId;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayBase, Data, Dimension};
use serde_json::Value;

use super::codec::{self, Compression};
use super::format::{self, ArrayDesc, Trailer, ALIGN, DESC_ALIGN, ENTRY_ARRAY, ENTRY_SAMPLE};
use super::index_build::{KeyIndex, NONE};
use super::key::PackKey;
use super::sample::Sample;
use super::sink::{byte_len, ArrayIn, Chunked, Counter, Payload, Sink, ZEROS};
use crate::element::{dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};
use crate::io::{parent_dir, sync_dir, TempFile};

/// Writes many keyed arrays and samples into one pack file.
///
/// Entries are appended in order (that is the pack's *file order*); each
/// payload starts at a 64-byte aligned offset so it can be viewed in place.
/// Nothing is visible at the target path until [`finish`](PackWriter::finish)
/// writes the index, `fsync`s and atomically renames the file into place; a
/// writer dropped before that removes its temporary file and leaves nothing
/// behind.
///
/// The index (about 100 bytes per entry plus keys, names and metadata) is
/// kept in memory until `finish`; the array data is streamed to the file.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Array2};
/// use ndarray_offload::pack::{PackReader, PackWriter};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tiles.pack");
/// let mut w = PackWriter::create(&path)?;
/// w.append("tile_0", &Array2::<f32>::zeros((128, 3)))?;
/// w.append(17u64, &array![1i64, 2, 3])?;
/// w.finish()?;
///
/// let r = PackReader::open(&path)?;
/// let v = r.get::<i64, ndarray::Ix1>(17u64)?;
/// assert_eq!(v, array![1i64, 2, 3]);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
pub struct PackWriter {
    path: PathBuf,
    /// The temporary file and the writing position.
    sink: Sink,
    compression: Compression,
    /// The keys appended so far, per entry in file order.
    index: KeyIndex,
    poisoned: bool,
    desc: Vec<u8>,
    placed: Vec<(u64, u64, u32)>,
    dtypes: Vec<(TypeId, Option<StoredDtype>)>,
}

/// A dtype as stored (zero-padded) and its length.
type StoredDtype = ([u8; format::DTYPE_LEN], usize);

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("path", &self.path)
            .field("entries", &self.index.len())
            .field("bytes", &self.sink.pos)
            .field("compression", &self.compression)
            .finish()
    }
}

impl PackWriter {
    /// Starts a pack that [`finish`](PackWriter::finish) will publish at
    /// `path`. The data goes to a uniquely named temporary file in the same
    /// directory.
    ///
    /// # Errors
    ///
    /// I/O errors creating the temporary file ([`Error::NotFound`] if the
    /// directory does not exist, [`Error::PermissionDenied`], ...).
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// drop(w); // unfinished: nothing is left behind
    /// assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut tmp = TempFile::create(parent_dir(&path), "pack", false)?;
        let tpath = tmp.path().to_path_buf();
        tmp.writer()
            .write_all(&format::encode_preamble())
            .ctx("write", &tpath)?;
        let sink = Sink::new(tmp, format::PREAMBLE_LEN);
        Ok(PackWriter {
            path,
            sink,
            compression: Compression::None,
            index: KeyIndex::new(),
            poisoned: false,
            desc: Vec::new(),
            placed: Vec::new(),
            dtypes: Vec::new(),
        })
    }

    /// Sets the compression of the entries appended from now on
    /// (default: [`Compression::None`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] if the codec's cargo feature is disabled;
    /// [`Error::InvalidInput`] for a zstd level zstd does not accept.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{Compression, PackWriter};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut w = PackWriter::create(dir.path().join("a.pack"))?;
    /// w.set_compression(Compression::None)?;
    /// assert_eq!(w.compression(), Compression::None);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn set_compression(&mut self, c: Compression) -> Result<()> {
        codec::check_available(c, &self.path)?;
        if let Compression::Zstd(level) = c {
            if !codec::zstd_level_ok(level) {
                return Err(self.invalid(format!("zstd level {level} is out of range")));
            }
        }
        self.compression = c;
        Ok(())
    }

    /// The compression used for the next entries.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// assert_eq!(w.compression(), ndarray_offload::pack::Compression::None);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Number of entries appended so far.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// w.append(1u64, &ndarray::array![1u8])?;
    /// assert_eq!(w.len(), 1);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no entry was appended yet.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// assert!(w.is_empty());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Whether `key` was already appended.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// assert!(w.contains("a"));
    /// assert!(!w.contains("b"));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn contains<'k>(&self, key: impl Into<PackKey<'k>>) -> bool {
        let key = key.into();
        self.index.find(&key, key.hash64())
    }

    /// The path the pack will be published at.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// assert!(w.path().ends_with("a.pack"));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one array under `key`, without metadata.
    ///
    /// The array is written in C order whatever its memory layout; it is
    /// stored with the compression set by
    /// [`set_compression`](PackWriter::set_compression).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `key` was already appended (nothing is
    /// written, and the writer stays usable); I/O errors while writing, after
    /// which the writer refuses further appends and `finish`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut w = ndarray_offload::pack::PackWriter::create(dir.path().join("a.pack"))?;
    /// w.append("a", &array![[1.0f32, 2.0], [3.0, 4.0]])?;
    /// assert!(w.append("a", &array![1u8]).is_err()); // duplicate key
    /// w.finish()?;
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn append<'k, T, S, D>(
        &mut self,
        key: impl Into<PackKey<'k>>,
        array: &ArrayBase<S, D>,
    ) -> Result<()>
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        self.append_array(key.into(), array, None)
    }

    /// Appends one array under `key` with a JSON metadata value.
    ///
    /// # Errors
    ///
    /// As [`append`](PackWriter::append); [`Error::InvalidInput`] for
    /// metadata nested more than 16 levels deep (readers refuse it).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use serde_json::json;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append_with_meta(5u64, &array![1u8, 2], &json!({"label": "cat"}))?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.entry(5u64)?.meta()?, Some(json!({"label": "cat"})));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn append_with_meta<'k, T, S, D>(
        &mut self,
        key: impl Into<PackKey<'k>>,
        array: &ArrayBase<S, D>,
        meta: &Value,
    ) -> Result<()>
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        self.append_array(key.into(), array, Some(meta))
    }

    fn append_array<T, S, D>(
        &mut self,
        key: PackKey<'_>,
        array: &ArrayBase<S, D>,
        meta: Option<&Value>,
    ) -> Result<()>
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        let (dt, dt_len) = self.dtype_of::<T>()?;
        let dtype = std::str::from_utf8(&dt[..dt_len]).unwrap_or("");
        let std = array.as_standard_layout();
        let slice: &[T] = std.as_slice().unwrap_or(&[]);
        let write = |w: &mut dyn Write| {
            T::write_slice(slice, w).map_err(|e| match e {
                ndarray_npy::WriteDataError::Io(e) => e,
                other => io::Error::other(other.to_string()),
            })
        };
        let a = ArrayIn {
            name: "",
            dtype,
            shape: array.shape(),
            payload: Payload::Typed(&write),
        };
        self.append_entry(key, ENTRY_ARRAY, std::slice::from_ref(&a), meta)
    }

    /// Appends a [`Sample`] (its named arrays and metadata) as one entry.
    ///
    /// # Errors
    ///
    /// As [`append_with_meta`](PackWriter::append_with_meta).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Array2};
    /// use ndarray_offload::pack::{PackReader, PackWriter, Sample};
    /// use serde_json::json;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("samples.pack");
    /// let s = Sample::new()
    ///     .with_array("image", &Array2::<u8>::zeros((8, 8)))?
    ///     .with_array("label", &array![2i64])?
    ///     .with_meta(json!({"id": 0}));
    /// let mut w = PackWriter::create(&path)?;
    /// w.append_sample(0u64, &s)?;
    /// w.finish()?;
    ///
    /// let r = PackReader::open(&path)?;
    /// assert_eq!(r.entry(0u64)?.to_sample()?, s);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn append_sample<'k>(
        &mut self,
        key: impl Into<PackKey<'k>>,
        sample: &Sample,
    ) -> Result<()> {
        let ins: Vec<ArrayIn<'_>> = sample
            .arrays
            .iter()
            .map(|a| ArrayIn {
                name: &a.name,
                dtype: &a.dtype,
                shape: &a.shape,
                payload: Payload::Bytes(&a.bytes),
            })
            .collect();
        self.append_entry(key.into(), ENTRY_SAMPLE, &ins, sample.meta.as_ref())
    }

    /// `T::dtype()` as stored in a pack, computed once per element type.
    fn dtype_of<T: Element>(&mut self) -> Result<StoredDtype> {
        let id = TypeId::of::<T>();
        let d = match self.dtypes.iter().find(|(t, _)| *t == id) {
            Some((_, d)) => *d,
            None => {
                let s = T::dtype();
                let d = format::encode_dtype(&s)
                    .filter(|_| dtype_itemsize(&s).is_some())
                    .map(|b| (b, s.len()));
                self.dtypes.push((id, d));
                d
            }
        };
        d.ok_or_else(|| self.invalid(format!("dtype {} cannot be stored in a pack", T::dtype())))
    }

    fn invalid(&self, reason: String) -> Error {
        Error::InvalidInput {
            path: self.path.clone(),
            reason,
        }
    }

    fn append_entry(
        &mut self,
        key: PackKey<'_>,
        entry_kind: u8,
        arrays: &[ArrayIn<'_>],
        meta: Option<&Value>,
    ) -> Result<()> {
        if self.poisoned || self.sink.tmp.is_none() {
            return Err(self.invalid("the pack writer failed earlier and cannot continue".into()));
        }
        let h = key.hash64();
        if self.index.indexed() || !self.index.is_new_max(&key) {
            if !self.index.indexed() {
                self.index.build_index();
            }
            if self.index.find(&key, h) {
                return Err(self.invalid(format!("duplicate key {key:?}")));
            }
        }
        if self.index.len() >= NONE as usize - 1 {
            return Err(self.invalid("a pack holds at most 2^32 - 2 entries".into()));
        }
        if arrays.len() > usize::from(u16::MAX) {
            return Err(self.invalid("a sample holds at most 65535 arrays".into()));
        }
        // Validate everything before writing a byte, so that a refused
        // entry leaves the writer usable.
        for a in arrays {
            if format::encode_dtype(a.dtype).is_none() || dtype_itemsize(a.dtype).is_none() {
                return Err(self.invalid(format!("dtype {} cannot be stored in a pack", a.dtype)));
            }
            if a.shape.len() > format::MAX_NDIM {
                return Err(self.invalid(format!(
                    "{} dimensions (a pack stores at most {})",
                    a.shape.len(),
                    format::MAX_NDIM
                )));
            }
            if a.name.len() > usize::from(u16::MAX) {
                return Err(self.invalid("array name longer than 65535 bytes".into()));
            }
            if byte_len(a).is_none() {
                return Err(self.invalid(format!("array {:?}: size overflows", a.name)));
            }
        }
        let meta_text = match meta {
            Some(v) => serde_json::to_vec(v)
                .map_err(|e| self.invalid(format!("metadata is not serialisable: {e}")))?,
            None => Vec::new(),
        };
        // Readers refuse deeper metadata (their parser recurses per level).
        crate::depth::check_json(&meta_text, crate::depth::MAX_JSON_DEPTH)
            .map_err(|e| self.invalid(format!("metadata is {e}")))?;
        let key_len = key.with_bytes(|b| b.len());
        if u32::try_from(meta_text.len()).is_err() || u32::try_from(key_len).is_err() {
            return Err(self.invalid("key or metadata larger than 4 GiB".into()));
        }

        let comp = self.compression;
        let mut placed = std::mem::take(&mut self.placed);
        placed.clear();
        for a in arrays {
            match self.sink.write_payload(a, comp, &self.path) {
                Ok(p) => placed.push(p),
                Err(e) => {
                    self.poisoned = true;
                    return Err(e);
                }
            }
        }
        let make = |i: usize| {
            let (a, &(data_off, stored_len, crc)) = (&arrays[i], &placed[i]);
            ArrayDesc {
                data_off,
                stored_len,
                crc,
                compression: comp.code(),
                dtype: format::encode_dtype(a.dtype).unwrap_or_default(),
                name: a.name,
                shape: a.shape,
            }
        };
        let one;
        let many: Vec<ArrayDesc<'_>>;
        let descs: &[ArrayDesc<'_>] = if arrays.len() == 1 {
            one = [make(0)];
            &one
        } else {
            many = (0..arrays.len()).map(make).collect();
            &many
        };
        let mut desc = std::mem::take(&mut self.desc);
        desc.clear();
        let pad = format::align_up(self.sink.pos, DESC_ALIGN).expect("file offsets fit in u64")
            - self.sink.pos;
        desc.resize(pad as usize, 0);
        key.with_bytes(|kb| {
            format::encode_desc(&mut desc, key.kind(), entry_kind, kb, &meta_text, descs)
        });
        let r = self.sink.write_raw(&desc);
        self.desc = desc;
        self.placed = placed;
        if let Err(e) = r {
            self.poisoned = true;
            return Err(e);
        }
        let desc_off = self.sink.pos + pad;
        self.sink.advance(self.desc.len() as u64);

        self.index.push(&key, h, desc_off, key_len as u32);
        Ok(())
    }

    /// Writes the index and trailer, `fsync`s, and atomically publishes the
    /// pack at its path (replacing any file there), then `fsync`s the
    /// directory.
    ///
    /// # Errors
    ///
    /// I/O errors; on error nothing is published and the temporary file is
    /// removed. Also an [`Error::InvalidInput`] if an earlier append failed
    /// with an I/O error.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("empty.pack");
    /// ndarray_offload::pack::PackWriter::create(&path)?.finish()?;
    /// assert_eq!(ndarray_offload::pack::PackReader::open(&path)?.len(), 0);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn finish(mut self) -> Result<()> {
        let tmp = self.prepare()?;
        let dir = parent_dir(&self.path).to_path_buf();
        tmp.rename_to(&self.path)?;
        sync_dir(&dir)
    }

    /// Writes the index and trailer and `fsync`s the temporary file, without
    /// publishing it (used by the shard writer to publish a set together).
    pub(crate) fn prepare(&mut self) -> Result<TempFile> {
        if self.poisoned {
            return Err(
                self.invalid("the pack writer failed earlier and cannot be finished".into())
            );
        }
        let mut tmp = self
            .sink
            .tmp
            .take()
            .ok_or_else(|| self.invalid("the pack writer was already finished".into()))?;
        let tpath = tmp.path().to_path_buf();
        let n = self.index.len() as u64;
        let index_off = format::align_up(self.sink.pos, ALIGN).expect("file offsets fit in u64");

        let buckets = format::bucket_count(n);
        let layout = format::layout(index_off, n, buckets).expect("index sizes fit in u64");

        Chunked {
            buf: &mut self.sink.chunk,
            inner: tmp.writer(),
        }
        .flush_buf()
        .ctx("write", &tpath)?;
        let w = tmp.writer();
        // Padding before the index is not part of the index checksum.
        w.write_all(&ZEROS[..(index_off - self.sink.pos) as usize])
            .ctx("write", &tpath)?;
        let mut c = Counter {
            inner: w,
            crc: crc32fast::Hasher::new(),
            n: 0,
        };
        self.index
            .write_index(&mut c, buckets)
            .ctx("write", &tpath)?;
        let index_crc = c.crc.finalize();
        debug_assert_eq!(index_off + c.n, layout.trailer);
        let t = Trailer {
            file_len: layout.trailer + format::TRAILER_LEN,
            n_entries: n,
            index_off,
            buckets,
            dir_off: layout.dir,
            index_crc,
        };
        tmp.writer().write_all(&t.encode()).ctx("write", &tpath)?;
        if let Some(mut s) = self.sink.syncer.take() {
            s.stop()?;
        }
        tmp.flush_and_sync()?;
        Ok(tmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_is_send() {
        fn check<T: Send>() {}
        check::<PackWriter>();
    }
}
