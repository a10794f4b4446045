//! The pack reader's handle: open (map the file, read the trailer), then
//! reach entries by key, by position or in order. The key search is in
//! `index.rs`, entry decoding in `entry.rs`, `verify` in `verify.rs` and
//! listings in `info.rs`.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayView, CowArray, Dimension};

use super::entry::PackEntry;
use super::format::{self, Desc, Layout, Trailer, KEY_U64, PREAMBLE_LEN, TRAILER_LEN};
use super::key::PackKey;
use crate::element::Element;
use crate::error::{Error, IoContext, Result};
use crate::mmap::map_readonly;

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
/// use ndarray_offload::pack::{PackReader, PackWriter};
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
    pub(super) path: PathBuf,
    file: File,
    pub(super) map: Mmap,
    pub(super) t: Trailer,
    pub(super) layout: Layout,
    /// Positioned reads made so far (tests check a lookup's cost with it).
    #[cfg(test)]
    pub(super) preads: std::sync::atomic::AtomicU64,
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
    /// assert!(ndarray_offload::pack::PackReader::open(&path).is_err());
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
    /// ndarray_offload::pack::PackWriter::create(&path)?.finish()?;
    /// assert_eq!(ndarray_offload::pack::PackReader::open(&path)?.path(), path);
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append(1u64, &ndarray::array![0u8])?;
    /// w.finish()?;
    /// assert_eq!(ndarray_offload::pack::PackReader::open(&path)?.len(), 1);
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
    /// ndarray_offload::pack::PackWriter::create(&path)?.finish()?;
    /// assert!(ndarray_offload::pack::PackReader::open(&path)?.is_empty());
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
    /// ndarray_offload::pack::PackWriter::create(&path)?.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// assert_eq!(r.file_len(), std::fs::metadata(&path).unwrap().len());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn file_len(&self) -> u64 {
        self.t.file_len
    }

    pub(super) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corrupt(&self.path, reason)
    }

    /// The `u64` at byte offset `off` of the file, through the map.
    pub(super) fn map_u64(&self, off: u64) -> Result<u64> {
        usize::try_from(off)
            .ok()
            .and_then(|o| format::le64(&self.map, o))
            .ok_or_else(|| self.corrupt(format!("read outside the file at {off}")))
    }

    /// Positioned read of `buf.len()` bytes at `off` (not through the map, so
    /// that a cold lookup does not fault in index pages one by one).
    pub(super) fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        #[cfg(test)]
        self.preads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        read_at(&self.file, &self.map, buf, off).ctx("read", &self.path)
    }

    /// The descriptor at `off`, checksum-verified.
    pub(super) fn desc_at(&self, off: u64) -> Result<Desc<'_>> {
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1.5f64, 2.5])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append(7u64, &array![1u16, 2])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("m", &array![[1i32, 2], [3, 4]])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("b", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![1u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// for i in 0..10u64 {
    ///     w.append(i, &array![i as f32])?;
    /// }
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("z", &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("b", &ndarray::array![0u8])?;
    /// w.append(10u64, &ndarray::array![0u8])?;
    /// w.append("a", &ndarray::array![0u8])?;
    /// w.append(2u64, &ndarray::array![0u8])?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
    /// let keys: Vec<String> = r.iter_by_key().map(|e| e.map(|e| e.key().to_string())).collect::<Result<_, _>>()?;
    /// assert_eq!(keys, ["2", "10", "a", "b"]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn iter_by_key(&self) -> impl ExactSizeIterator<Item = Result<PackEntry<'_>>> + '_ {
        (0..self.len())
            .map(move |i| self.make_entry(self.map_u64(self.layout.order + 8 * i as u64)?))
    }
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
