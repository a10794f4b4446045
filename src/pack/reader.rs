//! The pack reader: map the file, read the trailer, search the index in
//! place.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayView, CowArray, Dimension};
use serde_json::Value;

use super::codec::{self, Compression};
use super::format::{
    self, Desc, Layout, Trailer, ALIGN, ENTRY_SAMPLE, KEY_U64, LEAF_REC, MAX_BUCKET_READ,
    PREAMBLE_LEN, TRAILER_LEN,
};
use super::key::PackKey;
use super::sample::{check_type, decode_owned, Sample, SampleArray};
use crate::element::{checked_nbytes, dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};
use crate::mapped::map_readonly;

/// Tail read at open: one page holding the trailer (and, for a small file,
/// the preamble too).
const TAIL_READ: u64 = 4096;

/// A pack opened for reading: the file is memory-mapped, and open reads
/// only the last 4 KiB of the file, for its fixed-size trailer, whatever
/// the number of entries.
///
/// A lookup costs the same at any number of entries: one positioned read of
/// 16 bytes from the hash index's bucket directory, one positioned read of
/// that bucket's leaf records (8 to 16 on average, at most 8 KiB), then the
/// entry's descriptor, which sits right after the entry's data, through the
/// map. Positioned reads rather than the map are used for the index because,
/// on a freshly opened map, each page touched costs a page fault several
/// times dearer than a small read.
/// Uncompressed arrays come back as views into the map, without copying;
/// compressed ones are decoded into owned arrays (both as a [`CowArray`]).
///
/// `PackReader` is `Send + Sync`: share it between threads by reference or in
/// an `Arc`.
///
/// # Integrity
///
/// Open checks the trailer's checksum and version and that every index
/// section lies inside the file (and the preamble, for files of up to
/// 4 KiB; [`verify`](PackReader::verify) always checks it). Every entry
/// descriptor is checksum-verified whenever it is read, every record is
/// bounds-checked when used, and a compressed payload's checksum is verified
/// before it is decoded.
/// [`get_verified`](PackReader::get_verified) also checks the checksum of an
/// uncompressed payload, and [`verify`](PackReader::verify) checks
/// everything. A truncated or corrupted pack yields [`Error::Corrupt`] or
/// [`Error::Truncated`] naming the file, never a panic or a read outside the
/// map.
///
/// The map's soundness rests on the crate's rule that a published file is
/// never modified in place (see the crate's mapping contract); another
/// program rewriting the file while it is open is outside the guarantee.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix2};
/// use ndarray_offload::{PackReader, PackWriter};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.pack");
/// let mut w = PackWriter::create(&path)?;
/// w.append("xyz", &array![[1.0f32, 2.0, 3.0]])?;
/// w.finish()?;
///
/// let r = PackReader::open(&path)?;
/// let a = r.get::<f32, Ix2>("xyz")?;
/// assert!(a.is_view()); // zero-copy
/// assert_eq!(a, array![[1.0f32, 2.0, 3.0]]);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
pub struct PackReader {
    path: PathBuf,
    file: File,
    map: Mmap,
    t: Trailer,
    layout: Layout,
    /// Positioned reads made so far (tests check a lookup's cost with it).
    #[cfg(test)]
    preads: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for PackReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackReader")
            .field("path", &self.path)
            .field("entries", &self.t.n_entries)
            .field("bytes", &self.t.file_len)
            .finish()
    }
}

impl PackReader {
    /// Opens and maps the pack at `path`, reading only its preamble and
    /// trailer.
    ///
    /// # Errors
    ///
    /// I/O errors opening or mapping the file; [`Error::Truncated`] if the
    /// file is shorter than its trailer says; [`Error::Corrupt`] for a bad
    /// magic, trailer checksum or section layout; [`Error::Unsupported`] for
    /// any format version other than 2 (packs written by earlier releases,
    /// format version 1, must be rewritten).
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// std::fs::write(&path, b"not a pack").unwrap();
    /// assert!(ndarray_offload::PackReader::open(&path).is_err());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = crate::io::open_regular(&path, crate::io::Access::Read)?;
        let map = map_readonly(&file, &path)?;
        let len = map.len() as u64;
        let min = PREAMBLE_LEN + TRAILER_LEN;
        if len < min {
            return Err(Error::Truncated {
                path,
                expected: min,
                actual: len,
            });
        }
        // One positioned read brings the trailer; nothing else is read until
        // a lookup.
        let tail_len = TAIL_READ.min(len);
        let mut tail = vec![0u8; tail_len as usize];
        read_at(&file, &map, &mut tail, len - tail_len).ctx("read", &path)?;
        if tail_len == len {
            format::check_preamble(&tail, &path)?;
        }
        let (t, layout) = Trailer::decode(&tail[(tail_len - TRAILER_LEN) as usize..], len, &path)?;
        Ok(PackReader {
            path,
            file,
            map,
            t,
            layout,
            #[cfg(test)]
            preads: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The pack's path.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// assert_eq!(ndarray_offload::PackReader::open(&path)?.path(), path);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(1u64, &ndarray::array![0u8])?;
    /// w.finish()?;
    /// assert_eq!(ndarray_offload::PackReader::open(&path)?.len(), 1);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.t.n_entries as usize
    }

    /// Whether the pack has no entry.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// assert!(ndarray_offload::PackReader::open(&path)?.is_empty());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.t.n_entries == 0
    }

    /// Size of the pack file in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.file_len(), std::fs::metadata(&path).unwrap().len());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.t.file_len
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.path, reason)
    }

    /// The `u64` at byte offset `off` of the file, through the map.
    fn map_u64(&self, off: u64) -> Result<u64> {
        usize::try_from(off)
            .ok()
            .and_then(|o| format::le64(&self.map, o))
            .ok_or_else(|| self.corrupt(format!("read outside the file at {off}")))
    }

    /// Positioned read of `buf.len()` bytes at `off` (not through the map, so
    /// that a cold lookup does not fault in index pages one by one).
    fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        #[cfg(test)]
        self.preads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        read_at(&self.file, &self.map, buf, off).ctx("read", &self.path)
    }

    /// The descriptor at `off`, checksum-verified.
    fn desc_at(&self, off: u64) -> Result<Desc<'_>> {
        let end = self.t.index_off;
        if !off.is_multiple_of(format::DESC_ALIGN) || off < PREAMBLE_LEN || off >= end {
            return Err(self.corrupt(format!("entry descriptor offset {off} is invalid")));
        }
        let b = self
            .map
            .get(off as usize..end as usize)
            .ok_or_else(|| self.corrupt("data region outside the file"))?;
        format::decode_desc(b)
            .map_err(|r| self.corrupt(format!("entry descriptor at offset {off}: {r}")))
    }

    fn make_entry(&self, off: u64) -> Result<PackEntry<'_>> {
        let desc = self.desc_at(off)?;
        let key = match desc.key_kind {
            KEY_U64 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(desc.key.get(..8).unwrap_or(&[0; 8]));
                PackKey::U64(u64::from_le_bytes(x))
            }
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

    /// The descriptor offset of the entry holding `key`, if any.
    ///
    /// Two positioned reads whatever the number of entries: the key's
    /// bucket's two directory slots (16 bytes), then that bucket's leaf
    /// records (at most `MAX_BUCKET_READ`, 8 KiB). Records with equal hashes
    /// are in the same bucket, so the scan never leaves it.
    fn find(&self, key: &PackKey<'_>) -> Result<Option<u64>> {
        let n = self.t.n_entries;
        if n == 0 {
            return Ok(None);
        }
        let h = key.hash64();
        let (lo, hi) = self.bucket(format::bucket_of(h, self.layout.buckets))?;
        let kind = key.kind();
        let is_key = |off: u64| -> Result<bool> {
            let d = self.desc_at(off)?;
            Ok(d.key_kind == kind && key.with_bytes(|b| b == d.key))
        };
        let leaf = self.layout.leaf;
        if hi - lo <= MAX_BUCKET_READ {
            let len = ((hi - lo) * LEAF_REC) as usize;
            let mut small = [0u8; 64 * LEAF_REC as usize];
            let mut large = Vec::new();
            let recs = if len <= small.len() {
                &mut small[..len]
            } else {
                large.resize(len, 0);
                &mut large[..]
            };
            self.pread(recs, leaf + lo * LEAF_REC)?;
            let mut o = lower_bound(recs, LEAF_REC as usize, h) as usize * LEAF_REC as usize;
            while let (Some(hh), Some(off)) = (format::le64(recs, o), format::le64(recs, o + 8)) {
                if hh != h {
                    break;
                }
                if is_key(off)? {
                    return Ok(Some(off));
                }
                o += LEAF_REC as usize;
            }
        } else {
            // An oversized bucket (many hashes sharing their top bits):
            // binary search through the map.
            let (mut a, mut e) = (lo, hi);
            while a < e {
                let mid = a + (e - a) / 2;
                if self.map_u64(leaf + mid * LEAF_REC)? < h {
                    a = mid + 1;
                } else {
                    e = mid;
                }
            }
            for i in a..hi {
                if self.map_u64(leaf + i * LEAF_REC)? != h {
                    break;
                }
                let off = self.map_u64(leaf + i * LEAF_REC + 8)?;
                if is_key(off)? {
                    return Ok(Some(off));
                }
            }
        }
        Ok(None)
    }

    /// The leaf index range `[lo, hi)` of bucket `b`, from one positioned
    /// read of two directory slots, bounds-checked.
    fn bucket(&self, b: u64) -> Result<(u64, u64)> {
        let mut slots = [0u8; 16];
        if b >= self.layout.buckets {
            return Err(self.corrupt(format!("hash index bucket {b} out of range")));
        }
        self.pread(&mut slots, self.layout.dir + 8 * b)?;
        let (lo, hi) = (
            format::le64(&slots, 0).unwrap_or(u64::MAX),
            format::le64(&slots, 8).unwrap_or(u64::MAX),
        );
        if lo > hi || hi > self.t.n_entries {
            return Err(self.corrupt(format!(
                "hash index bucket {b} has an invalid range {lo}..{hi}"
            )));
        }
        Ok((lo, hi))
    }

    /// Whether the pack holds `key`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the index is damaged where the search went.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert!(r.contains("a")?);
    /// assert!(!r.contains(0u64)?);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn contains<'k>(&self, key: impl Into<PackKey<'k>>) -> Result<bool> {
        Ok(self.find(&key.into())?.is_some())
    }

    /// The entry holding `key`.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] if there is none; [`Error::Corrupt`] if its
    /// index records are damaged.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.key().as_str(), Some("a"));
    /// assert!(r.entry("b").unwrap_err().is_not_found());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn entry<'k>(&self, key: impl Into<PackKey<'k>>) -> Result<PackEntry<'_>> {
        let key = key.into();
        match self.find(&key)? {
            Some(off) => self.make_entry(off),
            None => Err(Error::KeyNotFound {
                name: key.to_string(),
                path: self.path.clone(),
            }),
        }
    }

    /// The array stored under `key`: a view into the map when uncompressed,
    /// a decoded owned array when compressed.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`]; [`Error::DtypeMismatch`] /
    /// [`Error::DimensionMismatch`] if the entry holds another element type
    /// or dimensionality; [`Error::InvalidInput`] if the entry is a sample
    /// with other than one array; [`Error::Corrupt`] for damaged records or
    /// (compressed entries) a payload checksum mismatch.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1.5f64, 2.5])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.get::<f64, Ix1>(7u64)?, array![1.5, 2.5]);
    /// assert!(r.get::<f32, Ix1>(7u64).is_err()); // wrong dtype
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn get<'k, T: Element, D: Dimension>(
        &self,
        key: impl Into<PackKey<'k>>,
    ) -> Result<CowArray<'_, T, D>> {
        self.entry(key)?.get()
    }

    /// As [`get`](PackReader::get), also verifying the payload's checksum.
    ///
    /// # Errors
    ///
    /// As [`get`](PackReader::get), plus [`Error::Corrupt`] on a checksum
    /// mismatch.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1u16, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.get_verified::<u16, Ix1>(7u64)?, array![1u16, 2]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn get_verified<'k, T: Element, D: Dimension>(
        &self,
        key: impl Into<PackKey<'k>>,
    ) -> Result<CowArray<'_, T, D>> {
        self.entry(key)?.get_verified()
    }

    /// A zero-copy view of the uncompressed array stored under `key`.
    ///
    /// # Errors
    ///
    /// As [`get`](PackReader::get), plus [`Error::Unsupported`] if the entry
    /// is compressed (use [`get`](PackReader::get) to decode it).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix2};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("m", &array![[1i32, 2], [3, 4]])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let v = r.view::<i32, Ix2>("m")?;
    /// assert_eq!(v.sum(), 10);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn view<'k, T: Element, D: Dimension>(
        &self,
        key: impl Into<PackKey<'k>>,
    ) -> Result<ArrayView<'_, T, D>> {
        self.entry(key)?.single()?.view()
    }

    /// The entry at position `index` in file order (the order of appends).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `index >= len()`; [`Error::Corrupt`] for a
    /// damaged record.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("b", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry_at(0)?.key().as_str(), Some("b"));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn entry_at(&self, index: usize) -> Result<PackEntry<'_>> {
        if index as u64 >= self.t.n_entries {
            return Err(Error::InvalidInput {
                path: self.path.clone(),
                reason: format!("entry index {index} out of range (pack has {})", self.len()),
            });
        }
        self.make_entry(self.map_u64(self.layout.seq + 8 * index as u64)?)
    }

    /// `n` consecutive entries in file order starting at `start`, each of
    /// whose uncompressed arrays is a view into the map (nothing is copied):
    /// the pack's equivalent of a sample cache's `read(index, n)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if the range exceeds the pack;
    /// [`Error::Corrupt`] for a damaged record.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// for i in 0..10u64 {
    ///     w.append(i, &array![i as f32])?;
    /// }
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let batch = r.read(4, 3)?;
    /// let firsts: Vec<f32> = batch
    ///     .iter()
    ///     .map(|e| e.get::<f32, Ix1>().map(|a| a[0]))
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(firsts, [4.0, 5.0, 6.0]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn read(&self, start: usize, n: usize) -> Result<Vec<PackEntry<'_>>> {
        match start.checked_add(n) {
            Some(end) if end as u64 <= self.t.n_entries => {
                (start..end).map(|i| self.entry_at(i)).collect()
            }
            _ => Err(Error::InvalidInput {
                path: self.path.clone(),
                reason: format!(
                    "entries {start}..{start}+{n} out of range (pack has {})",
                    self.len()
                ),
            }),
        }
    }

    /// All entries in file order.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("z", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let keys: Vec<String> = r.iter().map(|e| e.map(|e| e.key().to_string())).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, ["z", "a"]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<PackEntry<'_>>> + '_ {
        (0..self.len()).map(move |i| self.entry_at(i))
    }

    /// All entries in key order: integer keys ascending, then string keys
    /// by their UTF-8 bytes. The order is stored in the pack, so nothing is
    /// sorted at read time.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("b", &ndarray::array![0u8])?;
    /// w.append(10u64, &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.append(2u64, &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let keys: Vec<String> = r.iter_by_key().map(|e| e.map(|e| e.key().to_string())).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, ["2", "10", "a", "b"]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn iter_by_key(&self) -> impl ExactSizeIterator<Item = Result<PackEntry<'_>>> + '_ {
        (0..self.len())
            .map(move |i| self.make_entry(self.map_u64(self.layout.order + 8 * i as u64)?))
    }

    /// A description of every entry in file order, for inspection tools.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::Array2::<f32>::zeros((2, 3)))?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let infos = r.list().collect::<Result<Vec<_>, _>>()?;
    /// assert_eq!(infos[0].arrays[0].dtype, "<f4");
    /// assert_eq!(infos[0].arrays[0].shape, [2, 3]);
    /// println!("{}", infos[0]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn list(&self) -> impl ExactSizeIterator<Item = Result<PackEntryInfo>> + '_ {
        self.iter().map(|e| e?.info())
    }

    /// Checks the whole pack: the index checksum, the ordering of the hash
    /// index and of the key order, every record's bounds, every metadata and
    /// payload checksum, and that every compressed payload decodes to its
    /// declared size. Reads every byte of the file.
    ///
    /// # Errors
    ///
    /// The first problem found, as [`Error::Corrupt`] naming the file (and
    /// the entry); [`Error::Unsupported`] for a compressed entry this build
    /// cannot decode.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2, 3])?;
    /// w.finish()?;
    /// let report = ndarray_offload::PackReader::open(&path)?.verify()?;
    /// assert_eq!(report.entries, 1);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn verify(&self) -> Result<VerifyReport> {
        format::check_preamble(
            self.map.get(..PREAMBLE_LEN as usize).unwrap_or(&[]),
            &self.path,
        )?;
        let index = self
            .map
            .get(self.t.index_off as usize..self.layout.trailer as usize)
            .ok_or_else(|| self.corrupt("index outside the file"))?;
        if crc32fast::hash(index) != self.t.index_crc {
            return Err(self.corrupt("index checksum mismatch"));
        }
        let n = self.t.n_entries;
        let mut report = VerifyReport {
            entries: n,
            ..VerifyReport::default()
        };
        // File order: descriptors and payloads ascending, never overlapping.
        let mut end_prev = PREAMBLE_LEN;
        for e in self.iter() {
            let e = e?;
            for a in e.arrays() {
                let a = a?;
                if a.data_off < end_prev {
                    return Err(
                        self.corrupt(format!("{}: payload overlaps the previous data", a.what()))
                    );
                }
                end_prev = a.data_off + a.stored_len;
                a.check_crc()?;
                if a.compression != Compression::None {
                    a.decoded_bytes()?;
                }
                report.arrays += 1;
                report.payload_bytes += a.stored_len;
            }
            if e.off < end_prev {
                return Err(
                    self.corrupt(format!("entry {:?}: descriptor overlaps its data", e.key))
                );
            }
            end_prev = e.off + e.desc.len;
            e.meta()?;
        }
        // Hash index: sorted leaf whose records name real entries by their
        // key's hash; the bucket directory delimits the leaf's buckets.
        let seq_has = |off: u64| -> Result<bool> {
            let (mut lo, mut hi) = (0u64, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let v = self.map_u64(self.layout.seq + 8 * mid)?;
                match v.cmp(&off) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => return Ok(true),
                }
            }
            Ok(false)
        };
        let mut prev: Option<(u64, u64)> = None;
        for i in 0..n {
            let at = self.layout.leaf + i * LEAF_REC;
            let rec = (self.map_u64(at)?, self.map_u64(at + 8)?);
            if prev.is_some_and(|p| p >= rec) {
                return Err(self.corrupt(format!("hash index not sorted at #{i}")));
            }
            prev = Some(rec);
            if !seq_has(rec.1)? {
                return Err(self.corrupt(format!("hash index #{i} names no entry")));
            }
            let e = self.make_entry(rec.1)?;
            if e.key.hash64() != rec.0 {
                return Err(
                    self.corrupt(format!("entry {:?}: indexed under the wrong hash", e.key))
                );
            }
        }
        let buckets = self.layout.buckets;
        let mut at = 0u64;
        for b in 0..=buckets {
            while at < n
                && format::bucket_of(self.map_u64(self.layout.leaf + at * LEAF_REC)?, buckets) < b
            {
                at += 1;
            }
            if self.map_u64(self.layout.dir + 8 * b)? != at {
                return Err(self.corrupt(format!(
                    "hash index bucket directory disagrees with the leaf at bucket {b}"
                )));
            }
        }
        // Key order: strictly increasing keys (so no duplicates), each a
        // real entry.
        let mut prev_key: Option<PackKey<'_>> = None;
        for (i, e) in self.iter_by_key().enumerate() {
            let e = e?;
            if !seq_has(e.off)? {
                return Err(self.corrupt(format!("key order #{i} names no entry")));
            }
            if prev_key.as_ref().is_some_and(|p| *p >= e.key) {
                return Err(
                    self.corrupt(format!("key order wrong or duplicate key at {:?}", e.key))
                );
            }
            prev_key = Some(e.key);
        }
        Ok(report)
    }
}

/// Index of the first record (of `rec` bytes, starting with a `u64` hash)
/// whose hash is `>= h`, or the record count.
fn lower_bound(recs: &[u8], rec: usize, h: u64) -> u64 {
    let (mut lo, mut hi) = (0usize, recs.len() / rec);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if format::le64(recs, mid * rec).unwrap_or(u64::MAX) < h {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo as u64
}

/// Fills `buf` from `off` of `file` (`map` is the same file, used where
/// positioned reads are not available).
fn read_at(file: &File, map: &Mmap, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let _ = map;
        std::os::unix::fs::FileExt::read_exact_at(file, buf, off)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| map.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// What [`PackReader::verify`] checked.
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.pack");
/// ndarray_offload::PackWriter::create(&path)?.finish()?;
/// let r = ndarray_offload::PackReader::open(&path)?.verify()?;
/// assert_eq!((r.entries, r.arrays, r.payload_bytes), (0, 0, 0));
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// Arrays checked.
    pub arrays: u64,
    /// Stored payload bytes whose checksums were verified.
    pub payload_bytes: u64,
}

/// One entry of an open pack: a key, optional JSON metadata, and one array
/// (a plain entry) or several named arrays (a sample).
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix1};
/// use ndarray_offload::{PackReader, PackWriter, Sample};
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
    r: &'a PackReader,
    off: u64,
    desc: Desc<'a>,
    key: PackKey<'a>,
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
    /// See [`PackReader::entry`].
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
    /// use ndarray_offload::{PackReader, PackWriter, Sample};
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
    /// See [`PackWriter::append_with_meta`](crate::PackWriter::append_with_meta).
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
    /// See [`PackWriter::append_with_meta`](crate::PackWriter::append_with_meta).
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
    /// use ndarray_offload::{PackReader, PackWriter, Sample};
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
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
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
    /// As [`PackReader::get`].
    ///
    /// # Examples
    ///
    /// See [`PackReader::read`].
    pub fn get<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        self.single()?.get()
    }

    /// As [`get`](PackEntry::get), also verifying the payload checksum.
    ///
    /// # Errors
    ///
    /// As [`PackReader::get_verified`].
    ///
    /// # Examples
    ///
    /// See [`PackReader::get_verified`].
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
    /// See [`PackWriter::append_sample`](crate::PackWriter::append_sample).
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

    /// An owned description of the entry, for listings.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for damaged array records.
    ///
    /// # Examples
    ///
    /// See [`PackReader::list`].
    pub fn info(&self) -> Result<PackEntryInfo> {
        Ok(PackEntryInfo {
            key: self.key.clone().into_owned(),
            is_sample: self.is_sample(),
            meta_len: self.desc.meta.len() as u64,
            arrays: self
                .arrays()
                .map(|a| {
                    a.map(|a| PackArrayInfo {
                        name: a.name.to_string(),
                        dtype: a.dtype.to_string(),
                        shape: a.shape.clone(),
                        compression: a.compression,
                        stored_len: a.stored_len,
                        raw_len: a.raw_len as u64,
                    })
                })
                .collect::<Result<_>>()?,
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
/// let mut w = ndarray_offload::PackWriter::create(&path)?;
/// w.append("a", &array![1i16, 2, 3])?;
/// w.finish()?;
/// let r = ndarray_offload::PackReader::open(&path)?;
/// let a = r.entry("a")?.single()?;
/// assert_eq!((a.dtype(), a.shape()), ("<i2", &[3usize][..]));
/// assert_eq!(a.get::<i16, Ix1>()?, array![1i16, 2, 3]);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone)]
pub struct PackArray<'a> {
    r: &'a PackReader,
    key: PackKey<'a>,
    name: &'a str,
    dtype: &'a str,
    shape: Vec<usize>,
    compression: Compression,
    raw_len: usize,
    data: &'a [u8],
    crc: u32,
    data_off: u64,
    stored_len: u64,
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
    fn what(&self) -> String {
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
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.compression(), ndarray_offload::Compression::None);
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
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &array![true, false])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
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
    /// As [`PackReader::get`].
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
    /// As [`PackReader::get_verified`].
    ///
    /// # Examples
    ///
    /// See [`PackReader::get_verified`].
    pub fn get_verified<T: Element, D: Dimension>(&self) -> Result<CowArray<'a, T, D>> {
        check_type::<T, D>(self.dtype, &self.shape, &self.r.path)?;
        self.check_crc()?;
        self.get()
    }
}

/// An owned description of one pack entry (see [`PackReader::list`]).
///
/// Its `Display` prints one line per entry: key, then each array's name,
/// dtype, shape, compression and stored bytes, then the metadata size.
///
/// # Examples
///
/// See [`PackReader::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackEntryInfo {
    /// The key.
    pub key: PackKey<'static>,
    /// Whether it was written as a sample.
    pub is_sample: bool,
    /// Bytes of JSON metadata (0: none).
    pub meta_len: u64,
    /// Its arrays.
    pub arrays: Vec<PackArrayInfo>,
}

impl PackEntryInfo {
    /// Whether the entry carries metadata.
    ///
    /// # Examples
    ///
    /// See [`PackReader::list`].
    pub fn has_meta(&self) -> bool {
        self.meta_len > 0
    }
}

/// An owned description of one array of a pack entry.
///
/// # Examples
///
/// See [`PackReader::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackArrayInfo {
    /// Name within the entry (`""` for a plain entry).
    pub name: String,
    /// numpy dtype string.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// How it is stored.
    pub compression: Compression,
    /// Bytes in the file.
    pub stored_len: u64,
    /// Bytes decoded.
    pub raw_len: u64,
}

impl fmt::Display for PackEntryInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            PackKey::U64(k) => write!(f, "{k}")?,
            PackKey::Str(s) => write!(f, "{s:?}")?,
        }
        for a in &self.arrays {
            if !a.name.is_empty() {
                write!(f, " {}:", a.name)?;
            }
            write!(
                f,
                " {} {:?} {} {}B",
                a.dtype, a.shape, a.compression, a.stored_len
            )?;
        }
        if self.has_meta() {
            write!(f, " meta {}B", self.meta_len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PackReader>();
        check::<PackEntry<'static>>();
    }

    fn preads(r: &PackReader) -> u64 {
        r.preads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write(path: &Path, keys: &[String]) {
        let mut w = crate::PackWriter::create(path).unwrap();
        for (i, k) in keys.iter().enumerate() {
            w.append(k.as_str(), &ndarray::array![i as u32]).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn a_lookup_is_two_reads_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for n in [1usize, 2, 16, 17, 1_000, 70_000] {
            let path = dir.path().join(format!("{n}.pack"));
            let keys: Vec<String> = (0..n).map(|i| format!("tile_{i:08}")).collect();
            write(&path, &keys);
            let r = PackReader::open(&path).unwrap();
            assert_eq!(r.layout.buckets, format::bucket_count(n as u64));
            for (i, k) in keys.iter().enumerate().step_by((n / 200).max(1)) {
                let before = preads(&r);
                assert_eq!(r.get::<u32, ndarray::Ix1>(k.as_str()).unwrap()[0], i as u32);
                assert_eq!(preads(&r) - before, 2, "n={n} key {k}");
            }
            let before = preads(&r);
            assert!(!r.contains("absent").unwrap());
            assert!(!r.contains(n as u64).unwrap());
            assert_eq!(preads(&r) - before, 4, "n={n}");
            if n <= 1_000 {
                r.verify().unwrap();
            }
        }
    }

    #[test]
    fn an_oversized_bucket_is_searched_through_the_map() {
        // 1,000 keys whose hashes all fall in bucket 0 of 64.
        let keys: Vec<String> = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| format::bucket_of(PackKey::from(k.as_str()).hash64(), 64) == 0)
            .take(1_000)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skewed.pack");
        write(&path, &keys);
        let r = PackReader::open(&path).unwrap();
        assert_eq!(r.layout.buckets, 64);
        for (i, k) in keys.iter().enumerate().step_by(7) {
            let before = preads(&r);
            assert_eq!(r.get::<u32, ndarray::Ix1>(k.as_str()).unwrap()[0], i as u32);
            assert_eq!(preads(&r) - before, 1);
        }
        assert!(!r.contains("absent").unwrap());
        r.verify().unwrap();
    }
}
