//! The pack reader's public handle: open, then reach entries by key, by
//! position or in order. Below it: the mapped file (`file.rs`), the key
//! search (`index.rs`), entry decoding (`entry.rs`), `verify` (`verify.rs`)
//! and listings (`info.rs`); none of them imports this file.

use std::fmt;
use std::path::Path;

use ndarray::{ArrayView, CowArray, Dimension};

use super::entry::PackEntry;
use super::file::PackFile;
use super::info::PackEntryInfo;
use super::key::PackKey;
use super::verify::VerifyReport;
use crate::element::Element;
use crate::error::{Error, Result};

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
    pub(super) f: PackFile,
}

impl fmt::Debug for PackReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackReader")
            .field("path", &self.f.path)
            .field("entries", &self.f.t.n_entries)
            .field("bytes", &self.f.t.file_len)
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
        Ok(PackReader {
            f: PackFile::open(path.as_ref())?,
        })
    }

    /// [`PackReader::open`] of a regular file already open (named `path`
    /// in errors): the inspector's, which opens the path it is given once.
    pub(crate) fn from_file(file: std::fs::File, path: &Path) -> Result<Self> {
        Ok(PackReader {
            f: PackFile::from_file(file, path)?,
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
        &self.f.path
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
        self.f.t.n_entries as usize
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
        self.f.t.n_entries == 0
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
        self.f.t.file_len
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
        Ok(self.f.find(&key.into())?.is_some())
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
        match self.f.find(&key)? {
            Some(off) => self.f.make_entry(off),
            None => Err(Error::KeyNotFound {
                name: key.to_string(),
                path: self.f.path.clone(),
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
        if index as u64 >= self.f.t.n_entries {
            return Err(Error::InvalidInput {
                path: self.f.path.clone(),
                reason: format!("entry index {index} out of range (pack has {})", self.len()),
            });
        }
        self.f.entry_in_file_order(index as u64)
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
            Some(end) if end as u64 <= self.f.t.n_entries => {
                (start..end).map(|i| self.entry_at(i)).collect()
            }
            _ => Err(Error::InvalidInput {
                path: self.f.path.clone(),
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
        (0..self.len()).map(move |i| self.f.entry_in_key_order(i as u64))
    }

    /// A description of every entry in file order, for inspection tools.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::Array2::<f32>::zeros((2, 3)))?;
    /// w.finish()?;
    /// let r = ndarray_offload::pack::PackReader::open(&path)?;
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
    /// The first problem found, as [`Error::Corrupt`](crate::Error::Corrupt) naming the file (and
    /// the entry); [`Error::Unsupported`](crate::Error::Unsupported) for a compressed entry this build
    /// cannot decode.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("a.pack");
    /// let mut w = ndarray_offload::pack::PackWriter::create(&path)?;
    /// w.append("a", &ndarray::array![1u8, 2, 3])?;
    /// w.finish()?;
    /// let report = ndarray_offload::pack::PackReader::open(&path)?.verify()?;
    /// assert_eq!(report.entries, 1);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn verify(&self) -> Result<VerifyReport> {
        self.f.verify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::format;
    use std::path::Path;

    #[test]
    fn reader_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PackReader>();
        check::<PackEntry<'static>>();
    }

    fn preads(r: &PackReader) -> u64 {
        r.f.preads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write(path: &Path, keys: &[String]) {
        let mut w = crate::pack::PackWriter::create(path).unwrap();
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
            assert_eq!(r.f.layout.buckets, format::bucket_count(n as u64));
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
        assert_eq!(r.f.layout.buckets, 64);
        for (i, k) in keys.iter().enumerate().step_by(7) {
            let before = preads(&r);
            assert_eq!(r.get::<u32, ndarray::Ix1>(k.as_str()).unwrap()[0], i as u32);
            assert_eq!(preads(&r) - before, 1);
        }
        assert!(!r.contains("absent").unwrap());
        r.verify().unwrap();
    }
}
