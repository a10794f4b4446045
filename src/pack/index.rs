//! Key lookup: the hash index's bucket directory and leaf records, searched
//! with two small positioned reads whatever the number of entries.

use super::format::{self, LEAF_REC, MAX_BUCKET_READ};
use super::key::PackKey;
use super::reader::PackReader;
use crate::error::Result;

impl PackReader {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn preads(r: &PackReader) -> u64 {
        r.preads.load(std::sync::atomic::Ordering::Relaxed)
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
