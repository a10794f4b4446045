//! The pack reader: map the file, read the trailer, search the index in
//! place.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayView, CowArray, Dimension};
use serde_json::Value;

use super::codec::{self, Compression};
use super::format::{
    self, ArrayRec, EntryRec, Trailer, ALIGN, ARRAY_LEN, ENTRY_ARRAY, ENTRY_LEN, ENTRY_SAMPLE,
    FENCE_STRIDE, KEY_STR, KEY_U64, PREAMBLE_LEN, TRAILER_LEN,
};
use super::key::PackKey;
use super::sample::{check_type, decode_owned, Sample, SampleArray};
use crate::element::{dtype_itemsize, Element};
use crate::error::{Error, IoContext, Result};
use crate::mapped::map_readonly;

/// A pack opened for reading: the file is memory-mapped and only its
/// fixed-size preamble and trailer are read at open, whatever the number of
/// entries.
///
/// Lookups search the sorted key-hash index inside the map (a fence of every
/// 512th hash, then one block of hashes), so a lookup touches a handful of
/// pages. Uncompressed arrays come back as views into the map, without
/// copying; compressed ones are decoded into owned arrays (both as a
/// [`CowArray`]).
///
/// `PackReader` is `Send + Sync`: share it between threads by reference or in
/// an `Arc`.
///
/// # Integrity
///
/// Open checks the preamble, the trailer's checksum and that every index
/// section lies inside the file. Every record is bounds-checked when used,
/// and a compressed payload's checksum is verified before it is decoded.
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
/// let dir = tempfile::tempdir()?;
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
    map: Mmap,
    t: Trailer,
    entries: Range<usize>,
    arrays: Range<usize>,
    hashes: Range<usize>,
    slots: Range<usize>,
    order: Range<usize>,
    fence: Range<usize>,
    dims: Range<usize>,
    heap: Range<usize>,
}

impl fmt::Debug for PackReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackReader")
            .field("path", &self.path)
            .field("entries", &self.t.n_entries)
            .field("arrays", &self.t.n_arrays)
            .field("bytes", &self.t.file_len)
            .finish()
    }
}

fn range(a: u64, len: u64) -> Range<usize> {
    // Offsets were validated against the file length, which fits in usize
    // because the whole file is mapped.
    a as usize..(a + len) as usize
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
    /// a newer format version.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// std::fs::write(&path, b"not a pack")?;
    /// assert!(ndarray_offload::PackReader::open(&path).is_err());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).ctx("open", &path)?;
        let len = file.metadata().ctx("stat", &path)?.len();
        let min = PREAMBLE_LEN + TRAILER_LEN;
        if len < min {
            return Err(Error::Truncated {
                path,
                expected: min,
                actual: len,
            });
        }
        if usize::try_from(len).is_err() {
            return Err(Error::corrupt(&path, "file too large to map"));
        }
        let map = map_readonly(&file, &path)?;
        if map.len() as u64 != len {
            return Err(Error::corrupt(
                &path,
                "file changed size while being opened",
            ));
        }
        let pre: &[u8; PREAMBLE_LEN as usize] = map
            .get(..PREAMBLE_LEN as usize)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::corrupt(&path, "short preamble"))?;
        format::check_preamble(pre, &path)?;
        let tb: &[u8; TRAILER_LEN as usize] = map
            .get((len - TRAILER_LEN) as usize..)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::corrupt(&path, "short trailer"))?;
        let t = Trailer::decode(tb, len, &path)?;
        let ne = t.n_entries;
        Ok(PackReader {
            entries: range(t.index_off, ne * ENTRY_LEN),
            arrays: range(t.arrays_off, t.n_arrays * ARRAY_LEN),
            hashes: range(t.hashes_off, ne * 8),
            slots: range(t.slots_off, ne * 4),
            order: range(t.order_off, ne * 4),
            fence: range(t.fence_off, format::fence_len(ne) * 8),
            dims: range(t.dims_off, t.n_dims * 8),
            heap: range(t.heap_off, t.heap_len),
            path,
            map,
            t,
        })
    }

    /// The pack's path.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// assert_eq!(ndarray_offload::PackReader::open(&path)?.path(), path);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(1u64, &ndarray::array![0u8])?;
    /// w.finish()?;
    /// assert_eq!(ndarray_offload::PackReader::open(&path)?.len(), 1);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.t.n_entries as usize
    }

    /// Whether the pack has no entry.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// assert!(ndarray_offload::PackReader::open(&path)?.is_empty());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.t.n_entries == 0
    }

    /// Size of the pack file in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// ndarray_offload::PackWriter::create(&path)?.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.file_len(), std::fs::metadata(&path)?.len());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.t.file_len
    }

    fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.path, reason)
    }

    fn sec(&self, r: &Range<usize>) -> &[u8] {
        self.map.get(r.clone()).unwrap_or(&[])
    }

    fn heap_slice(&self, off: u64, len: u64) -> Option<&[u8]> {
        let heap = self.sec(&self.heap);
        let s = usize::try_from(off).ok()?;
        let e = s.checked_add(usize::try_from(len).ok()?)?;
        heap.get(s..e)
    }

    /// Decodes and validates entry record `i`.
    fn entry_rec(&self, i: u64) -> Result<EntryRec> {
        let b: &[u8; ENTRY_LEN as usize] = i
            .checked_mul(ENTRY_LEN)
            .and_then(|o| {
                let o = usize::try_from(o).ok()?;
                self.sec(&self.entries).get(o..o + ENTRY_LEN as usize)
            })
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.corrupt(format!("entry #{i} is outside the index")))?;
        let e = EntryRec::decode(b);
        let bad = |what: &str| Err(self.corrupt(format!("entry #{i}: {what}")));
        if !EntryRec::reserved_ok(b) {
            return bad("non-zero reserved bytes");
        }
        match e.key_kind {
            KEY_U64 if e.key_len == 8 => {}
            KEY_STR => {}
            _ => return bad("bad key kind or length"),
        }
        match e.entry_kind {
            ENTRY_ARRAY if e.n_arrays == 1 => {}
            ENTRY_SAMPLE => {}
            _ => return bad("bad entry kind"),
        }
        if self.heap_slice(e.key_off, u64::from(e.key_len)).is_none()
            || self.heap_slice(e.meta_off, u64::from(e.meta_len)).is_none()
        {
            return bad("key or metadata outside the heap");
        }
        if u64::from(e.first_array) + u64::from(e.n_arrays) > self.t.n_arrays {
            return bad("array records out of range");
        }
        Ok(e)
    }

    fn key_of(&self, e: &EntryRec, i: u64) -> Result<PackKey<'_>> {
        let b = self
            .heap_slice(e.key_off, u64::from(e.key_len))
            .ok_or_else(|| self.corrupt(format!("entry #{i}: key outside the heap")))?;
        Ok(match e.key_kind {
            KEY_U64 => {
                let mut x = [0u8; 8];
                if b.len() != 8 {
                    return Err(self.corrupt(format!("entry #{i}: bad integer key")));
                }
                x.copy_from_slice(b);
                PackKey::U64(u64::from_le_bytes(x))
            }
            _ => PackKey::Str(
                std::str::from_utf8(b)
                    .map_err(|_| self.corrupt(format!("entry #{i}: key is not UTF-8")))?
                    .into(),
            ),
        })
    }

    fn make_entry(&self, i: u64) -> Result<PackEntry<'_>> {
        let rec = self.entry_rec(i)?;
        let key = self.key_of(&rec, i)?;
        Ok(PackEntry {
            r: self,
            index: i as usize,
            rec,
            key,
        })
    }

    /// The index of the entry holding `key`, if any.
    fn find(&self, key: &PackKey<'_>) -> Result<Option<u64>> {
        let n = self.t.n_entries;
        if n == 0 {
            return Ok(None);
        }
        let h = key.hash64();
        let fence = self.sec(&self.fence);
        let hashes = self.sec(&self.hashes);
        let slots = self.sec(&self.slots);
        let oob = || self.corrupt("index lookup outside its section");
        // First fence hash >= h.
        let (mut lo, mut hi) = (0u64, format::fence_len(n));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if format::u64_in(fence, mid).ok_or_else(oob)? < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // The first hash >= h lies in ((j-1)*S, j*S].
        let j = lo;
        let (mut lo, mut hi) = (
            if j == 0 {
                0
            } else {
                (j - 1) * FENCE_STRIDE + 1
            },
            (j * FENCE_STRIDE).min(n),
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if format::u64_in(hashes, mid).ok_or_else(oob)? < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let kind = key.kind();
        let mut i = lo;
        while i < n && format::u64_in(hashes, i).ok_or_else(oob)? == h {
            let slot = u64::from(format::u32_in(slots, i).ok_or_else(oob)?);
            if slot >= n {
                return Err(self.corrupt(format!("hash slot #{i} points past the entries")));
            }
            let e = self.entry_rec(slot)?;
            if e.key_kind == kind {
                let stored = self
                    .heap_slice(e.key_off, u64::from(e.key_len))
                    .ok_or_else(oob)?;
                if key.with_bytes(|b| b == stored) {
                    return Ok(Some(slot));
                }
            }
            i += 1;
        }
        Ok(None)
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert!(r.contains("a")?);
    /// assert!(!r.contains(0u64)?);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.key().as_str(), Some("a"));
    /// assert!(r.entry("b").unwrap_err().is_not_found());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn entry<'k>(&self, key: impl Into<PackKey<'k>>) -> Result<PackEntry<'_>> {
        let key = key.into();
        match self.find(&key)? {
            Some(i) => self.make_entry(i),
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1.5f64, 2.5])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.get::<f64, Ix1>(7u64)?, array![1.5, 2.5]);
    /// assert!(r.get::<f32, Ix1>(7u64).is_err()); // wrong dtype
    /// # Ok::<_, Box<dyn std::error::Error>>(())
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1u16, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.get_verified::<u16, Ix1>(7u64)?, array![1u16, 2]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("m", &array![[1i32, 2], [3, 4]])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let v = r.view::<i32, Ix2>("m")?;
    /// assert_eq!(v.sum(), 10);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("b", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry_at(0)?.key().as_str(), Some("b"));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn entry_at(&self, index: usize) -> Result<PackEntry<'_>> {
        if index as u64 >= self.t.n_entries {
            return Err(Error::InvalidInput {
                path: self.path.clone(),
                reason: format!("entry index {index} out of range (pack has {})", self.len()),
            });
        }
        self.make_entry(index as u64)
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
    /// let dir = tempfile::tempdir()?;
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
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn read(&self, start: usize, n: usize) -> Result<Vec<PackEntry<'_>>> {
        match start.checked_add(n) {
            Some(end) if end as u64 <= self.t.n_entries => {
                (start..end).map(|i| self.make_entry(i as u64)).collect()
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("z", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let keys: Vec<String> = r.iter().map(|e| e.map(|e| e.key().to_string())).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, ["z", "a"]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<PackEntry<'_>>> + '_ {
        (0..self.len()).map(move |i| self.make_entry(i as u64))
    }

    /// All entries in key order: integer keys ascending, then string keys
    /// by their UTF-8 bytes. The order is stored in the pack, so nothing is
    /// sorted at read time.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
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
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn iter_by_key(&self) -> impl ExactSizeIterator<Item = Result<PackEntry<'_>>> + '_ {
        (0..self.len()).map(move |i| {
            let i = i as u64;
            let slot = format::u32_in(self.sec(&self.order), i)
                .map(u64::from)
                .filter(|&s| s < self.t.n_entries)
                .ok_or_else(|| self.corrupt(format!("key order #{i} points past the entries")))?;
            self.make_entry(slot)
        })
    }

    /// A description of every entry in file order, for inspection tools.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::Array2::<f32>::zeros((2, 3)))?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let infos = r.list().collect::<Result<Vec<_>, _>>()?;
    /// assert_eq!(infos[0].arrays[0].dtype, "<f4");
    /// assert_eq!(infos[0].arrays[0].shape, [2, 3]);
    /// println!("{}", infos[0]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn list(&self) -> impl ExactSizeIterator<Item = Result<EntryInfo>> + '_ {
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2, 3])?;
    /// w.finish()?;
    /// let report = ndarray_offload::PackReader::open(&path)?.verify()?;
    /// assert_eq!(report.entries, 1);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify(&self) -> Result<VerifyReport> {
        let index = self
            .map
            .get(self.t.index_off as usize..self.t.trailer_off() as usize)
            .ok_or_else(|| self.corrupt("index outside the file"))?;
        if crc32fast::hash(index) != self.t.index_crc {
            return Err(self.corrupt("index checksum mismatch"));
        }
        let n = self.t.n_entries;
        let hashes = self.sec(&self.hashes);
        let slots = self.sec(&self.slots);
        let oob = || self.corrupt("index section too short");
        let mut seen = vec![false; n as usize];
        let mut prev = 0u64;
        for i in 0..n {
            let h = format::u64_in(hashes, i).ok_or_else(oob)?;
            if i > 0 && h < prev {
                return Err(self.corrupt(format!("hash index not sorted at #{i}")));
            }
            if i % FENCE_STRIDE == 0
                && format::u64_in(self.sec(&self.fence), i / FENCE_STRIDE) != Some(h)
            {
                return Err(self.corrupt(format!("fence disagrees with hash #{i}")));
            }
            prev = h;
            let slot = format::u32_in(slots, i).ok_or_else(oob)? as usize;
            if slot as u64 >= n || std::mem::replace(&mut seen[slot], true) {
                return Err(self.corrupt(format!("hash slot #{i} is invalid or repeated")));
            }
            let e = self.entry_rec(slot as u64)?;
            let k = self.key_of(&e, slot as u64)?;
            if k.hash64() != h {
                return Err(
                    self.corrupt(format!("entry {k:?}: stored hash does not match its key"))
                );
            }
        }
        seen.iter_mut().for_each(|s| *s = false);
        let mut prev_key: Option<PackKey<'_>> = None;
        for e in self.iter_by_key() {
            let e = e?;
            if std::mem::replace(&mut seen[e.index], true) {
                return Err(self.corrupt("key order repeats an entry"));
            }
            if prev_key.as_ref().is_some_and(|p| *p >= e.key) {
                return Err(
                    self.corrupt(format!("key order wrong or duplicate key at {:?}", e.key))
                );
            }
            prev_key = Some(e.key.clone());
        }
        let mut report = VerifyReport {
            entries: n,
            ..VerifyReport::default()
        };
        let mut end_prev = PREAMBLE_LEN;
        let mut next_array = 0u64;
        for e in self.iter() {
            let e = e?;
            if u64::from(e.rec.first_array) != next_array {
                return Err(self.corrupt(format!(
                    "entry {:?}: array records not in file order",
                    e.key
                )));
            }
            next_array += u64::from(e.rec.n_arrays);
            e.meta()?;
            for a in e.arrays() {
                let a = a?;
                if a.rec.data_off < end_prev {
                    return Err(
                        self.corrupt(format!("{}: payload overlaps the previous one", a.what()))
                    );
                }
                end_prev = a.rec.data_off + a.rec.stored_len;
                a.check_crc()?;
                if a.compression != Compression::None {
                    a.decoded_bytes()?;
                }
                report.arrays += 1;
                report.payload_bytes += a.rec.stored_len;
            }
        }
        if next_array != self.t.n_arrays {
            return Err(self.corrupt("array records not all used by entries"));
        }
        Ok(report)
    }
}

/// What [`PackReader::verify`] checked.
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("a.pack");
/// ndarray_offload::PackWriter::create(&path)?.finish()?;
/// let r = ndarray_offload::PackReader::open(&path)?.verify()?;
/// assert_eq!((r.entries, r.arrays, r.payload_bytes), (0, 0, 0));
/// # Ok::<_, Box<dyn std::error::Error>>(())
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
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("a.pack");
/// let mut w = PackWriter::create(&path)?;
/// w.append_sample("s", &Sample::new().with_array("x", &array![1u8, 2])?)?;
/// w.finish()?;
/// let r = PackReader::open(&path)?;
/// let e = r.entry("s")?;
/// assert!(e.is_sample());
/// assert_eq!(e.array("x")?.get::<u8, Ix1>()?, array![1u8, 2]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct PackEntry<'a> {
    r: &'a PackReader,
    index: usize,
    rec: EntryRec,
    key: PackKey<'a>,
}

impl fmt::Debug for PackEntry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackEntry")
            .field("key", &self.key)
            .field("index", &self.index)
            .field("arrays", &self.rec.n_arrays)
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

    /// The entry's position in file order.
    ///
    /// # Examples
    ///
    /// See [`PackReader::entry_at`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the entry was written as a [`Sample`] (named arrays), rather
    /// than a single array.
    ///
    /// # Examples
    ///
    /// See [`PackEntry`].
    pub fn is_sample(&self) -> bool {
        self.rec.entry_kind == ENTRY_SAMPLE
    }

    /// Number of arrays in the entry (1 for a plain entry).
    ///
    /// # Examples
    ///
    /// See [`PackEntry::arrays`].
    pub fn len(&self) -> usize {
        self.rec.n_arrays as usize
    }

    /// Whether the entry holds no array (a sample of metadata only).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::{PackReader, PackWriter, Sample};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = PackWriter::create(&path)?;
    /// w.append_sample(1u64, &Sample::new().with_meta(serde_json::json!(1)))?;
    /// w.finish()?;
    /// assert!(PackReader::open(&path)?.entry(1u64)?.is_empty());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.rec.n_arrays == 0
    }

    /// Whether the entry carries metadata.
    ///
    /// # Examples
    ///
    /// See [`PackWriter::append_with_meta`](crate::PackWriter::append_with_meta).
    pub fn has_meta(&self) -> bool {
        self.rec.meta_len > 0
    }

    /// The metadata value, parsed after its checksum is verified.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the checksum does not match or the text is not
    /// JSON.
    ///
    /// # Examples
    ///
    /// See [`PackWriter::append_with_meta`](crate::PackWriter::append_with_meta).
    pub fn meta(&self) -> Result<Option<Value>> {
        if self.rec.meta_len == 0 {
            return Ok(None);
        }
        let b = self
            .r
            .heap_slice(self.rec.meta_off, u64::from(self.rec.meta_len))
            .ok_or_else(|| {
                self.r
                    .corrupt(format!("entry {:?}: metadata outside the heap", self.key))
            })?;
        if crc32fast::hash(b) != self.rec.meta_crc {
            return Err(self
                .r
                .corrupt(format!("entry {:?}: metadata checksum mismatch", self.key)));
        }
        serde_json::from_slice(b).map(Some).map_err(|e| {
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
    /// let dir = tempfile::tempdir()?;
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
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn arrays(&self) -> impl ExactSizeIterator<Item = Result<PackArray<'a>>> + '_ {
        (0..self.rec.n_arrays)
            .map(move |i| self.array_rec(u64::from(self.rec.first_array) + u64::from(i)))
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.dtype(), "<u4");
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn single(&self) -> Result<PackArray<'a>> {
        if self.rec.n_arrays != 1 {
            return Err(Error::InvalidInput {
                path: self.r.path.clone(),
                reason: format!(
                    "entry {:?} holds {} arrays; pick one with array(name)",
                    self.key, self.rec.n_arrays
                ),
            });
        }
        self.array_rec(u64::from(self.rec.first_array))
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
    pub fn info(&self) -> Result<EntryInfo> {
        Ok(EntryInfo {
            key: self.key.clone().into_owned(),
            index: self.index,
            is_sample: self.is_sample(),
            meta_len: u64::from(self.rec.meta_len),
            arrays: self
                .arrays()
                .map(|a| {
                    a.map(|a| ArrayInfo {
                        name: a.name.to_string(),
                        dtype: a.dtype.to_string(),
                        shape: a.shape.clone(),
                        compression: a.compression,
                        stored_len: a.rec.stored_len,
                        raw_len: a.raw_len as u64,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }

    fn array_rec(&self, j: u64) -> Result<PackArray<'a>> {
        let r = self.r;
        let bad = |what: String| r.corrupt(format!("entry {:?}: array #{j}: {what}", self.key));
        let b: &[u8; ARRAY_LEN as usize] = j
            .checked_mul(ARRAY_LEN)
            .and_then(|o| {
                let o = usize::try_from(o).ok()?;
                r.sec(&r.arrays).get(o..o + ARRAY_LEN as usize)
            })
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("record outside the index".into()))?;
        let rec = ArrayRec::decode(b);
        let dt: &'a [u8; format::DTYPE_LEN] = b[40..46]
            .try_into()
            .map_err(|_| bad("bad dtype field".into()))?;
        let dtype = format::decode_dtype(dt).ok_or_else(|| bad("bad dtype field".into()))?;
        let itemsize =
            dtype_itemsize(dtype).ok_or_else(|| bad(format!("unknown dtype {dtype:?}")))?;
        let ndim = rec.ndim as u64;
        if ndim as usize > format::MAX_NDIM
            || rec
                .dims_off
                .checked_add(ndim)
                .is_none_or(|e| e > r.t.n_dims)
        {
            return Err(bad("shape outside the index".into()));
        }
        let dims = r.sec(&r.dims);
        let mut shape = Vec::with_capacity(ndim as usize);
        let mut numel: u64 = 1;
        for k in 0..ndim {
            let d = format::u64_in(dims, rec.dims_off + k)
                .ok_or_else(|| bad("shape outside the index".into()))?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| bad("array size overflows".into()))?;
            shape.push(usize::try_from(d).map_err(|_| bad("dimension too large".into()))?);
        }
        let raw_len = numel
            .checked_mul(itemsize as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| bad("array size overflows".into()))?;
        let compression = Compression::from_code(rec.compression)
            .ok_or_else(|| bad(format!("unknown compression code {}", rec.compression)))?;
        if rec.data_off % ALIGN != 0
            || rec.data_off < PREAMBLE_LEN
            || rec
                .data_off
                .checked_add(rec.stored_len)
                .is_none_or(|e| e > r.t.index_off)
        {
            return Err(bad("payload outside the data region".into()));
        }
        if compression == Compression::None && rec.stored_len != raw_len as u64 {
            return Err(bad(format!(
                "payload holds {} bytes but its shape needs {raw_len}",
                rec.stored_len
            )));
        }
        let name = r
            .heap_slice(rec.name_off, u64::from(rec.name_len))
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| bad("bad name".into()))?;
        let data = r
            .map
            .get(range(rec.data_off, rec.stored_len))
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
            rec,
        })
    }
}

/// One array of a [`PackEntry`]: its name, dtype, shape and stored bytes.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix1};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("a.pack");
/// let mut w = ndarray_offload::PackWriter::create(&path)?;
/// w.append("a", &array![1i16, 2, 3])?;
/// w.finish()?;
/// let r = ndarray_offload::PackReader::open(&path)?;
/// let a = r.entry("a")?.single()?;
/// assert_eq!((a.dtype(), a.shape()), ("<i2", &[3usize][..]));
/// assert_eq!(a.get::<i16, Ix1>()?, array![1i16, 2, 3]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
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
    rec: ArrayRec,
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.compression(), ndarray_offload::Compression::None);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Bytes the payload occupies in the file.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u32, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// let a = r.entry("a")?.single()?;
    /// assert_eq!((a.stored_len(), a.raw_len()), (8, 8));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn stored_len(&self) -> u64 {
        self.rec.stored_len
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.stored_bytes(), [1, 2]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn stored_bytes(&self) -> &'a [u8] {
        self.data
    }

    fn check_crc(&self) -> Result<()> {
        if crc32fast::hash(self.data) != self.rec.crc {
            return Err(self
                .r
                .corrupt(format!("{}: payload checksum mismatch", self.what())));
        }
        Ok(())
    }

    /// Decoded element bytes (the caller has verified the checksum, or the
    /// codec does it here for compressed payloads).
    fn decoded_bytes(&self) -> Result<Vec<u8>> {
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
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::PackWriter::create(&path)?;
    /// w.append("a", &array![true, false])?;
    /// w.finish()?;
    /// let r = ndarray_offload::PackReader::open(&path)?;
    /// assert_eq!(r.entry("a")?.single()?.view::<bool, Ix1>()?, array![true, false]);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
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
pub struct EntryInfo {
    /// The key.
    pub key: PackKey<'static>,
    /// Position in file order.
    pub index: usize,
    /// Whether it was written as a sample.
    pub is_sample: bool,
    /// Bytes of JSON metadata (0: none).
    pub meta_len: u64,
    /// Its arrays.
    pub arrays: Vec<ArrayInfo>,
}

impl EntryInfo {
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
pub struct ArrayInfo {
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

impl fmt::Display for EntryInfo {
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
}
