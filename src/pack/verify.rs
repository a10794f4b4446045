//! Checking a whole pack: every checksum, bound and ordering.

use super::codec::Compression;
use super::file::PackFile;
use super::format::{self, LEAF_REC, PREAMBLE_LEN};
use super::key::PackKey;
use crate::error::Result;

impl PackFile {
    /// [`PackReader::verify`](super::PackReader::verify).
    pub(super) fn verify(&self) -> Result<VerifyReport> {
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
        for e in (0..n).map(|i| self.entry_in_file_order(i)) {
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
        for (i, e) in (0..n).map(|i| self.entry_in_key_order(i)).enumerate() {
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

/// What [`PackReader::verify`](super::PackReader::verify) checked.
///
/// # Examples
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("a.pack");
/// ndarray_offload::pack::PackWriter::create(&path)?.finish()?;
/// let r = ndarray_offload::pack::PackReader::open(&path)?.verify()?;
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
