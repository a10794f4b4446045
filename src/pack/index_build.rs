//! The write side of the pack index: the keys appended so far (duplicate
//! detection), the key order, and the index written by `finish`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Write};

use super::format;
use super::key::PackKey;

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

/// End of a chain of entries with the same hash; also bounds the entry count.
pub(super) const NONE: u32 = u32::MAX;

/// What the writer keeps in memory per entry until `finish`.
pub(super) struct EntryMem {
    hash: u64,
    desc_off: u64,
    key_off: u64,
    key_len: u32,
    /// Next entry with the same hash (`NONE` ends the chain).
    next_same: u32,
    key_kind: u8,
}

/// The keys of the entries appended so far, in file order, with what
/// duplicate detection needs.
pub(super) struct KeyIndex {
    /// Per entry, in file order.
    entries: Vec<EntryMem>,
    /// Key bytes of every entry.
    keys: Vec<u8>,
    first_by_hash: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    /// Whether `first_by_hash` holds every entry. Until a key arrives out
    /// of order (per key kind), keys are known to be increasing and
    /// duplicates are ruled out by comparing with the last key, without
    /// touching a hash table.
    indexed: bool,
    /// While not indexed: entry indices of each key kind, keys increasing.
    by_kind: [Vec<u32>; 2],
}

impl KeyIndex {
    pub(super) fn new() -> Self {
        KeyIndex {
            entries: Vec::new(),
            keys: Vec::new(),
            first_by_hash: HashMap::default(),
            indexed: false,
            by_kind: [Vec::new(), Vec::new()],
        }
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
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

    pub(super) fn find(&self, key: &PackKey<'_>, h: u64) -> bool {
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
    pub(super) fn is_new_max(&self, key: &PackKey<'_>) -> bool {
        self.by_kind[usize::from(key.kind())]
            .last()
            .is_none_or(|&i| self.cmp_key(i, key).is_lt())
    }

    /// Whether duplicate detection uses the hash table.
    pub(super) fn indexed(&self) -> bool {
        self.indexed
    }

    /// Switches duplicate detection to the hash table.
    pub(super) fn build_index(&mut self) {
        self.first_by_hash.reserve(self.entries.len());
        for (i, e) in self.entries.iter_mut().enumerate() {
            e.next_same = self.first_by_hash.insert(e.hash, i as u32).unwrap_or(NONE);
        }
        self.indexed = true;
        self.by_kind = [Vec::new(), Vec::new()];
    }

    /// Records a new entry whose descriptor is at `desc_off`; `h` is the
    /// hash of `key`.
    pub(super) fn push(&mut self, key: &PackKey<'_>, h: u64, desc_off: u64, key_len: u32) {
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
            key_len,
            next_same,
            key_kind: key.kind(),
        });
    }

    /// Writes the index: descriptor offsets in file order and in key order,
    /// the `(hash, offset)` records sorted by hash, and the directory of
    /// `buckets` hash buckets.
    pub(super) fn write_index<W: Write>(&self, c: &mut W, buckets: u64) -> io::Result<()> {
        // Hash order (ties broken by file position) and key order.
        let mut leaf: Vec<(u64, u64)> = self.entries.iter().map(|e| (e.hash, e.desc_off)).collect();
        leaf.sort_unstable();
        let order = key_order(&self.entries, &self.keys);
        let entries = &self.entries;
        let mut buf = Vec::with_capacity(1 << 16);
        let put = |buf: &mut Vec<u8>, c: &mut W, bytes: &[u8]| {
            buf.extend_from_slice(bytes);
            if buf.len() >= 1 << 16 {
                c.write_all(buf)?;
                buf.clear();
            }
            io::Result::Ok(())
        };
        for e in &self.entries {
            put(&mut buf, c, &e.desc_off.to_le_bytes())?;
        }
        for &i in &order {
            put(&mut buf, c, &entries[i as usize].desc_off.to_le_bytes())?;
        }
        for (h, off) in &leaf {
            put(&mut buf, c, &h.to_le_bytes())?;
            put(&mut buf, c, &off.to_le_bytes())?;
        }
        // Bucket directory: dir[b] is the index of the first leaf
        // record whose hash is in bucket b or a later one.
        let mut at = 0usize;
        for b in 0..=buckets {
            while at < leaf.len() && format::bucket_of(leaf[at].0, buckets) < b {
                at += 1;
            }
            put(&mut buf, c, &(at as u64).to_le_bytes())?;
        }
        c.write_all(&buf)
    }
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
