//! Key lookup: the hash index's bucket directory and leaf records, searched
//! with two small positioned reads whatever the number of entries.

use super::file::PackFile;
use super::format::{self, LEAF_REC, MAX_BUCKET_READ};
use super::key::PackKey;
use crate::error::Result;

impl PackFile {
    /// The descriptor offset of the entry holding `key`, if any.
    ///
    /// Two positioned reads whatever the number of entries: the key's
    /// bucket's two directory slots (16 bytes), then that bucket's leaf
    /// records (at most `MAX_BUCKET_READ`, 8 KiB). Records with equal hashes
    /// are in the same bucket, so the scan never leaves it.
    pub(super) fn find(&self, key: &PackKey<'_>) -> Result<Option<u64>> {
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
