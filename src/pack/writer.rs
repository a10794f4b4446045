//! The pack writer: append keyed arrays and samples, commit in `finish()`.

use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ndarray::{ArrayBase, Data, Dimension};
use serde_json::Value;

use super::codec::{self, Compression};
use super::format::{self, ArrayDesc, Trailer, ALIGN, DESC_ALIGN, ENTRY_ARRAY, ENTRY_SAMPLE};
use super::key::PackKey;
use super::sample::Sample;
use crate::element::{dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};
use crate::io::{parent_dir, sync_dir, sync_file, SeamFile, TempFile};

/// Hasher for keys that are already 64-bit hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NONE: u32 = u32::MAX;
static ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// Counts and checksums bytes on their way to the file.
struct Counter<'a, W: Write> {
    inner: &'a mut W,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.crc.update(buf);
        self.n += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

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
    tmp: Option<TempFile>,
    tmp_path: PathBuf,
    pos: u64,
    compression: Compression,
    /// Per entry, in file order.
    entries: Vec<EntryMem>,
    /// Key bytes of every entry.
    keys: Vec<u8>,
    first_by_hash: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    poisoned: bool,
    raw: Vec<u8>,
    packed: Vec<u8>,
    desc: Vec<u8>,
    placed: Vec<(u64, u64, u32)>,
    dtypes: Vec<(TypeId, Option<StoredDtype>)>,
    /// Whether `first_by_hash` holds every entry. Until a key arrives out
    /// of order (per key kind), keys are known to be increasing and
    /// duplicates are ruled out by comparing with the last key, without
    /// touching a hash table.
    indexed: bool,
    /// While not indexed: entry indices of each key kind, keys increasing.
    by_kind: [Vec<u32>; 2],
    /// Output not yet handed to the file (see `Chunked`).
    chunk: Vec<u8>,
    /// Background flushing of what is written so far.
    syncer: Option<Syncer>,
    /// `pos` at which the next background flush is requested.
    next_sync: u64,
}

/// Size of the writer's own output buffer: payloads are gathered into
/// 1 MiB writes (the temporary file's buffer is only 64 KiB).
const CHUNK: usize = 1 << 20;

/// Gathers small writes into `CHUNK`-sized ones.
struct Chunked<'a> {
    buf: &'a mut Vec<u8>,
    inner: &'a mut BufWriter<SeamFile>,
}

impl Chunked<'_> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.write_all(b)?;
        Ok(b.len())
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        if self.buf.len() + b.len() > CHUNK {
            self.flush_buf()?;
        }
        if b.len() >= CHUNK {
            self.inner.write_all(b)
        } else {
            self.buf.extend_from_slice(b);
            Ok(())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.inner.flush()
    }
}

/// A dtype as stored (zero-padded) and its length.
type StoredDtype = ([u8; format::DTYPE_LEN], usize);

/// Bytes written between two background flushes.
const SYNC_EVERY: u64 = 64 << 20;

/// A thread that `fsync`s the temporary file whenever asked, so the disk
/// writes back the first bytes while later ones are still being produced
/// and `finish` only waits for the tail (what `bytes_per_sync` does in
/// RocksDB). Requests made while a flush runs are merged into one.
struct Syncer {
    tx: Option<mpsc::SyncSender<()>>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Syncer {
    fn start(file: std::fs::File, path: PathBuf) -> Self {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let plan = crate::io::current_plan();
        let handle = std::thread::Builder::new()
            .name("ndarray-offload pack sync".into())
            .spawn(move || {
                let _plan = crate::io::adopt_plan(plan);
                for () in rx {
                    sync_file(&file, &path)?;
                }
                Ok(())
            })
            .ok();
        Syncer {
            tx: handle.as_ref().map(|_| tx),
            handle,
        }
    }

    fn request(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Stops the thread and returns the first error it met.
    fn stop(&mut self) -> Result<()> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What the writer keeps in memory per entry until `finish`.
struct EntryMem {
    hash: u64,
    desc_off: u64,
    key_off: u64,
    key_len: u32,
    /// Next entry with the same hash (`NONE` ends the chain).
    next_same: u32,
    key_kind: u8,
}

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .field("bytes", &self.pos)
            .field("compression", &self.compression)
            .finish()
    }
}

/// Type-erased view of one array to be written.
pub(crate) struct ArrayIn<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [usize],
    payload: Payload<'a>,
}

enum Payload<'a> {
    Bytes(&'a [u8]),
    Typed(&'a dyn Fn(&mut dyn Write) -> io::Result<()>),
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
        Ok(PackWriter {
            path,
            tmp: Some(tmp),
            tmp_path: tpath,
            pos: format::PREAMBLE_LEN,
            compression: Compression::None,
            entries: Vec::new(),
            keys: Vec::new(),
            first_by_hash: HashMap::default(),
            poisoned: false,
            raw: Vec::new(),
            packed: Vec::new(),
            desc: Vec::new(),
            placed: Vec::new(),
            dtypes: Vec::new(),
            indexed: false,
            by_kind: [Vec::new(), Vec::new()],
            chunk: Vec::with_capacity(CHUNK),
            syncer: None,
            next_sync: SYNC_EVERY,
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
        self.entries.len()
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
        self.entries.is_empty()
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
        self.find(&key, key.hash64())
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

    /// The stored key bytes of entry `i`.
    fn key_at(&self, i: u32) -> &[u8] {
        let e = &self.entries[i as usize];
        let s = e.key_off as usize;
        &self.keys[s..s + e.key_len as usize]
    }

    /// Compares the key of entry `i` (of the same kind) with `key`.
    fn cmp_key(&self, i: u32, key: &PackKey<'_>) -> std::cmp::Ordering {
        let stored = self.key_at(i);
        match key {
            PackKey::U64(k) => format::le64(stored, 0).unwrap_or(0).cmp(k),
            PackKey::Str(s) => stored.cmp(s.as_bytes()),
        }
    }

    fn find(&self, key: &PackKey<'_>, h: u64) -> bool {
        let kind = key.kind();
        if !self.indexed {
            let list = &self.by_kind[usize::from(kind)];
            return list.binary_search_by(|&i| self.cmp_key(i, key)).is_ok();
        }
        let mut i = match self.first_by_hash.get(&h) {
            Some(&i) => i,
            None => return false,
        };
        key.with_bytes(|kb| {
            while i != NONE {
                let e = &self.entries[i as usize];
                if e.key_kind == kind && self.key_at(i) == kb {
                    return true;
                }
                i = e.next_same;
            }
            false
        })
    }

    /// Whether `key` is greater than every key of its kind so far.
    fn is_new_max(&self, key: &PackKey<'_>) -> bool {
        self.by_kind[usize::from(key.kind())]
            .last()
            .is_none_or(|&i| self.cmp_key(i, key).is_lt())
    }

    /// Switches duplicate detection to the hash table.
    fn build_index(&mut self) {
        self.first_by_hash.reserve(self.entries.len());
        for (i, e) in self.entries.iter_mut().enumerate() {
            e.next_same = self.first_by_hash.insert(e.hash, i as u32).unwrap_or(NONE);
        }
        self.indexed = true;
        self.by_kind = [Vec::new(), Vec::new()];
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
        if self.poisoned || self.tmp.is_none() {
            return Err(self.invalid("the pack writer failed earlier and cannot continue".into()));
        }
        let h = key.hash64();
        if self.indexed || !self.is_new_max(&key) {
            if !self.indexed {
                self.build_index();
            }
            if self.find(&key, h) {
                return Err(self.invalid(format!("duplicate key {key:?}")));
            }
        }
        if self.entries.len() >= NONE as usize - 1 {
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
            match self.write_payload(a, comp) {
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
        let pad =
            format::align_up(self.pos, DESC_ALIGN).expect("file offsets fit in u64") - self.pos;
        desc.resize(pad as usize, 0);
        key.with_bytes(|kb| {
            format::encode_desc(&mut desc, key.kind(), entry_kind, kb, &meta_text, descs)
        });
        let r = self.write_raw(&desc);
        self.desc = desc;
        self.placed = placed;
        if let Err(e) = r {
            self.poisoned = true;
            return Err(e);
        }
        let desc_off = self.pos + pad;
        self.pos += self.desc.len() as u64;
        if self.pos >= self.next_sync {
            self.next_sync = self.pos + SYNC_EVERY;
            self.background_sync();
        }

        let idx = self.entries.len() as u32;
        let key_off = self.keys.len() as u64;
        key.with_bytes(|b| self.keys.extend_from_slice(b));
        let next_same = if self.indexed {
            self.first_by_hash.insert(h, idx).unwrap_or(NONE)
        } else {
            self.by_kind[usize::from(key.kind())].push(idx);
            NONE
        };
        self.entries.push(EntryMem {
            hash: h,
            desc_off,
            key_off,
            key_len: key_len as u32,
            next_same,
            key_kind: key.kind(),
        });
        Ok(())
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        let tmp = self.tmp.as_mut().expect("checked by the caller");
        Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        }
        .write_all(b)
        .ctx("write", &self.tmp_path)
    }

    /// Pushes buffered bytes to the file and asks the background thread to
    /// flush them to disk.
    fn background_sync(&mut self) {
        let Some(tmp) = self.tmp.as_mut() else { return };
        let mut w = Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        };
        if w.flush().is_err() {
            return; // the next write reports the error
        }
        if self.syncer.is_none() {
            match tmp.file().try_clone() {
                Ok(f) => self.syncer = Some(Syncer::start(f, self.tmp_path.clone())),
                Err(_) => return,
            }
        }
        if let Some(s) = &self.syncer {
            s.request();
        }
    }

    /// Writes one payload at the next aligned offset; returns
    /// `(offset, stored length, crc32)`.
    fn write_payload(&mut self, a: &ArrayIn<'_>, comp: Compression) -> Result<(u64, u64, u32)> {
        let numel = byte_len(a).ok_or_else(|| self.invalid("array size overflows".into()))?;
        let tmp = self.tmp.as_mut().expect("checked by the caller");
        let tpath = &self.tmp_path;
        let w = &mut Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        };
        let pad = format::align_up(self.pos, ALIGN).expect("file offsets fit in u64") - self.pos;
        w.write_all(&ZEROS[..pad as usize]).ctx("write", tpath)?;
        let data_off = self.pos + pad;
        let (stored_len, crc) = if comp == Compression::None {
            let mut c = Counter {
                inner: w,
                crc: crc32fast::Hasher::new(),
                n: 0,
            };
            match &a.payload {
                Payload::Bytes(b) => c.write_all(b),
                Payload::Typed(f) => f(&mut c),
            }
            .ctx("write", tpath)?;
            (c.n, c.crc.finalize())
        } else {
            self.raw.clear();
            match &a.payload {
                Payload::Bytes(b) => self.raw.extend_from_slice(b),
                Payload::Typed(f) => f(&mut self.raw).ctx("encode", tpath)?,
            }
            if self.raw.len() as u64 != numel {
                return Err(self.invalid(format!(
                    "array {:?} encoded to {} bytes, expected {numel}",
                    a.name,
                    self.raw.len()
                )));
            }
            codec::compress(comp, &self.raw, &mut self.packed, &self.path)?;
            w.write_all(&self.packed).ctx("write", tpath)?;
            (self.packed.len() as u64, crc32fast::hash(&self.packed))
        };
        if comp == Compression::None && stored_len != numel {
            return Err(self.invalid(format!(
                "array {:?} encoded to {stored_len} bytes, expected {numel}",
                a.name
            )));
        }
        self.pos = data_off + stored_len;
        Ok((data_off, stored_len, crc))
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
            .tmp
            .take()
            .ok_or_else(|| self.invalid("the pack writer was already finished".into()))?;
        let tpath = tmp.path().to_path_buf();
        let n = self.entries.len() as u64;
        let index_off = format::align_up(self.pos, ALIGN).expect("file offsets fit in u64");

        // Hash order (ties broken by file position) and key order.
        let mut leaf: Vec<(u64, u64)> = self.entries.iter().map(|e| (e.hash, e.desc_off)).collect();
        leaf.sort_unstable();
        let order = key_order(&self.entries, &self.keys);
        let entries = &self.entries;
        let buckets = format::bucket_count(n);
        let layout = format::layout(index_off, n, buckets).expect("index sizes fit in u64");

        Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        }
        .flush_buf()
        .ctx("write", &tpath)?;
        let w = tmp.writer();
        // Padding before the index is not part of the index checksum.
        w.write_all(&ZEROS[..(index_off - self.pos) as usize])
            .ctx("write", &tpath)?;
        let mut c = Counter {
            inner: w,
            crc: crc32fast::Hasher::new(),
            n: 0,
        };
        let r: io::Result<()> = (|| {
            let mut buf = Vec::with_capacity(1 << 16);
            let put = |buf: &mut Vec<u8>, c: &mut Counter<'_, _>, bytes: &[u8]| {
                buf.extend_from_slice(bytes);
                if buf.len() >= 1 << 16 {
                    c.write_all(buf)?;
                    buf.clear();
                }
                io::Result::Ok(())
            };
            for e in &self.entries {
                put(&mut buf, &mut c, &e.desc_off.to_le_bytes())?;
            }
            for &i in &order {
                put(
                    &mut buf,
                    &mut c,
                    &entries[i as usize].desc_off.to_le_bytes(),
                )?;
            }
            for (h, off) in &leaf {
                put(&mut buf, &mut c, &h.to_le_bytes())?;
                put(&mut buf, &mut c, &off.to_le_bytes())?;
            }
            // Bucket directory: dir[b] is the index of the first leaf
            // record whose hash is in bucket b or a later one.
            let mut at = 0usize;
            for b in 0..=buckets {
                while at < leaf.len() && format::bucket_of(leaf[at].0, buckets) < b {
                    at += 1;
                }
                put(&mut buf, &mut c, &(at as u64).to_le_bytes())?;
            }
            c.write_all(&buf)
        })();
        r.ctx("write", &tpath)?;
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
        if let Some(mut s) = self.syncer.take() {
            s.stop()?;
        }
        tmp.flush_and_sync()?;
        Ok(tmp)
    }
}

/// Bytes of an array's elements, if that fits in `u64`.
fn byte_len(a: &ArrayIn<'_>) -> Option<u64> {
    let itemsize = dtype_itemsize(a.dtype)? as u64;
    a.shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))?
        .checked_mul(itemsize)
}

/// Entry indices sorted by key: integer keys ascending, then string keys by
/// their bytes.
///
/// Sorts `(kind, 8-byte prefix, index)` integers first, the prefix of a
/// string key being the 8 bytes after the prefix common to all string keys
/// (so `tile_00000017` and `tile_00000018` differ in it); only runs of
/// equal prefixes are then compared byte by byte.
fn key_order(entries: &[EntryMem], keys: &[u8]) -> Vec<u32> {
    let key_of = |e: &EntryMem| {
        let s = e.key_off as usize;
        &keys[s..s + e.key_len as usize]
    };
    let mut common: Option<&[u8]> = None;
    for e in entries.iter().filter(|e| e.key_kind == format::KEY_STR) {
        let k = key_of(e);
        common = Some(match common {
            None => k,
            Some(c) => {
                let n = c.iter().zip(k).take_while(|(a, b)| a == b).count();
                &c[..n]
            }
        });
    }
    let skip = common.map_or(0, <[u8]>::len);
    let prefix = |e: &EntryMem| -> u64 {
        let k = key_of(e);
        if e.key_kind == format::KEY_U64 {
            // A `u64` key is its 8 little-endian bytes.
            return format::le64(k, 0).unwrap_or(0);
        }
        let mut b = [0u8; 8];
        let tail = k.get(skip..).unwrap_or(&[]);
        let n = tail.len().min(8);
        b[..n].copy_from_slice(&tail[..n]);
        u64::from_be_bytes(b)
    };
    let mut tagged: Vec<u128> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (u128::from(e.key_kind) << 96) | (u128::from(prefix(e)) << 32) | i as u128)
        .collect();
    tagged.sort_unstable();
    let mut order: Vec<u32> = tagged.iter().map(|&t| t as u32).collect();
    // Resolve runs of equal (kind, prefix) by comparing whole keys.
    let mut start = 0;
    while start < tagged.len() {
        let mut end = start + 1;
        while end < tagged.len() && tagged[end] >> 32 == tagged[start] >> 32 {
            end += 1;
        }
        if end - start > 1 {
            order[start..end].sort_unstable_by(|&a, &b| {
                key_of(&entries[a as usize]).cmp(key_of(&entries[b as usize]))
            });
        }
        start = end;
    }
    order
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
