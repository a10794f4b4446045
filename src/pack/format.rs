//! Byte layout of a pack file, format version 2 (`docs/format.md, section "Pack file format"`).
//!
//! Everything here is a pure function over byte slices: encoders used by the
//! writer, and decoders used by the reader that validate every field they
//! return. No decoder indexes a slice in a way that can panic: fixed-size
//! fields are taken as arrays, and every range is checked with `get`.

use std::path::Path;

use crate::error::{Error, Result};

/// Magic bytes at offset 0 of every pack.
pub(crate) const MAGIC: [u8; 8] = *b"NDOPACK\0";
/// Magic bytes at the start of the trailer (the last 128 bytes).
pub(crate) const TRAILER_MAGIC: [u8; 8] = *b"NDOTRAIL";
/// The format version this crate writes and reads.
pub(crate) const VERSION: u32 = 2;
/// Size of the preamble at the start of the file.
pub(crate) const PREAMBLE_LEN: u64 = 64;
/// Size of the trailer at the end of the file.
pub(crate) const TRAILER_LEN: u64 = 128;
/// Alignment of every payload and of the index region.
pub(crate) const ALIGN: u64 = 64;
/// Alignment of entry descriptors.
pub(crate) const DESC_ALIGN: u64 = 8;
/// Fixed part of an entry descriptor.
pub(crate) const DESC_HEAD: usize = 24;
/// Size of one array record inside a descriptor.
pub(crate) const ARRAY_REC: usize = 32;
/// Size of one leaf record of the hash index: `(hash, descriptor offset)`.
pub(crate) const LEAF_REC: u64 = 16;
/// Target number of leaf records per bucket of the hash index directory:
/// the writer uses the smallest power of two `B >= n / BUCKET_TARGET`
/// buckets, so a bucket holds between 8 and 16 records (128 to 256 bytes)
/// on average.
pub(crate) const BUCKET_TARGET: u64 = 16;
/// Most leaf records a lookup reads in one positioned read (8 KiB); a
/// larger bucket (only possible with many keys whose hashes share their
/// top bits) is binary-searched instead.
pub(crate) const MAX_BUCKET_READ: u64 = 512;
/// Size of the dtype field of an array record.
pub(crate) const DTYPE_LEN: usize = 8;
/// Largest number of dimensions of one array.
pub(crate) const MAX_NDIM: usize = 64;

/// Key kind byte: an unsigned 64-bit integer key (8 bytes, little-endian).
pub(crate) const KEY_U64: u8 = 0;
/// Key kind byte: a UTF-8 string key.
pub(crate) const KEY_STR: u8 = 1;

/// Entry kind: one unnamed array.
pub(crate) const ENTRY_ARRAY: u8 = 0;
/// Entry kind: a sample of named arrays.
pub(crate) const ENTRY_SAMPLE: u8 = 1;

/// Compression codes.
pub(crate) const COMP_NONE: u8 = 0;
pub(crate) const COMP_LZ4: u8 = 1;
pub(crate) const COMP_ZSTD: u8 = 2;

/// The 64-bit key hash the index is sorted by: FNV-1a over the kind byte
/// followed by the key bytes, finished with MurmurHash3's `fmix64` so that
/// every bit of the result depends on every input bit.
pub(crate) fn key_hash(kind: u8, bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    h ^= u64::from(kind);
    h = h.wrapping_mul(PRIME);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Rounds `n` up to a multiple of `a` (a power of two), or `None` on overflow.
pub(crate) fn align_up(n: u64, a: u64) -> Option<u64> {
    Some(n.checked_add(a - 1)? & !(a - 1))
}

/// Reads the little-endian `u64` at byte offset `o` of `b`.
pub(crate) fn le64(b: &[u8], o: usize) -> Option<u64> {
    let s = b.get(o..o.checked_add(8)?)?;
    let mut x = [0u8; 8];
    x.copy_from_slice(s);
    Some(u64::from_le_bytes(x))
}

/// Reads the little-endian `u32` at byte offset `o` of `b`.
pub(crate) fn le32(b: &[u8], o: usize) -> Option<u32> {
    let s = b.get(o..o.checked_add(4)?)?;
    let mut x = [0u8; 4];
    x.copy_from_slice(s);
    Some(u32::from_le_bytes(x))
}

/// Reads the little-endian `u16` at byte offset `o` of `b`.
pub(crate) fn le16(b: &[u8], o: usize) -> Option<u16> {
    let s = b.get(o..o.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// The preamble: magic, version, zero padding.
pub(crate) fn encode_preamble() -> [u8; PREAMBLE_LEN as usize] {
    let mut p = [0u8; PREAMBLE_LEN as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&VERSION.to_le_bytes());
    p
}

fn unsupported_version(path: &Path, version: u32) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        reason: format!("pack format version {version} (this crate reads version {VERSION})"),
    }
}

/// Checks the preamble.
pub(crate) fn check_preamble(b: &[u8], path: &Path) -> Result<()> {
    if b.get(..8) != Some(&MAGIC[..]) {
        return Err(Error::corrupt(path, "not a pack file (bad magic)"));
    }
    let version = le32(b, 8).unwrap_or(0);
    if version != VERSION {
        return Err(unsupported_version(path, version));
    }
    match b.get(12..PREAMBLE_LEN as usize) {
        Some(rest) if rest.iter().all(|&x| x == 0) => Ok(()),
        _ => Err(Error::corrupt(
            path,
            "non-zero reserved bytes in the preamble",
        )),
    }
}

/// Number of buckets of the hash index directory the writer uses for `n`
/// entries: the smallest power of two `>= n / BUCKET_TARGET`, at least 1.
pub(crate) fn bucket_count(n: u64) -> u64 {
    n.div_ceil(BUCKET_TARGET).max(1).next_power_of_two()
}

/// The bucket of hash `h` among `buckets` (a power of two): the top
/// `log2(buckets)` bits of `h`.
pub(crate) fn bucket_of(h: u64, buckets: u64) -> u64 {
    h.checked_shr(64 - buckets.trailing_zeros()).unwrap_or(0)
}

/// Byte offsets of the index sections for an index starting at `index_off`:
/// `[seq, order, leaf, dir, trailer]`.
#[derive(Debug)]
pub(crate) struct Layout {
    pub seq: u64,
    pub order: u64,
    pub leaf: u64,
    /// The bucket directory: `buckets + 1` u64 leaf indices.
    pub dir: u64,
    pub buckets: u64,
    pub trailer: u64,
}

pub(crate) fn layout(index_off: u64, n: u64, buckets: u64) -> Option<Layout> {
    let seq = index_off;
    let order = seq.checked_add(n.checked_mul(8)?)?;
    let leaf = order.checked_add(n.checked_mul(8)?)?;
    let dir = leaf.checked_add(n.checked_mul(LEAF_REC)?)?;
    let trailer = dir.checked_add(buckets.checked_add(1)?.checked_mul(8)?)?;
    Some(Layout {
        seq,
        order,
        leaf,
        dir,
        buckets,
        trailer,
    })
}

/// The fixed-size trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Trailer {
    pub file_len: u64,
    pub n_entries: u64,
    pub index_off: u64,
    /// Number of buckets of the hash index directory (a power of two).
    pub buckets: u64,
    /// Offset of the bucket directory.
    pub dir_off: u64,
    pub index_crc: u32,
}

impl Trailer {
    pub(crate) fn encode(&self) -> [u8; TRAILER_LEN as usize] {
        let mut b = [0u8; TRAILER_LEN as usize];
        b[..8].copy_from_slice(&TRAILER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        // 12..16: flags, zero in version 2.
        b[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.n_entries.to_le_bytes());
        b[32..40].copy_from_slice(&self.index_off.to_le_bytes());
        b[40..48].copy_from_slice(&self.buckets.to_le_bytes());
        b[48..56].copy_from_slice(&self.dir_off.to_le_bytes());
        // 56..120: reserved, zero.
        b[120..124].copy_from_slice(&self.index_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a trailer read from the last 128 bytes of a
    /// file of `actual_len` bytes; returns it with the index layout.
    pub(crate) fn decode(b: &[u8], actual_len: u64, path: &Path) -> Result<(Self, Layout)> {
        if b.len() != TRAILER_LEN as usize || b[..8] != TRAILER_MAGIC {
            return Err(Error::corrupt(
                path,
                "no pack trailer at the end of the file (truncated, or never finished)",
            ));
        }
        let stored_crc = le32(b, 124).unwrap_or(0);
        if crc32fast::hash(&b[..124]) != stored_crc {
            return Err(Error::corrupt(path, "trailer checksum mismatch"));
        }
        let version = le32(b, 8).unwrap_or(0);
        if version != VERSION {
            return Err(unsupported_version(path, version));
        }
        let t = Trailer {
            file_len: le64(b, 16).unwrap_or(0),
            n_entries: le64(b, 24).unwrap_or(0),
            index_off: le64(b, 32).unwrap_or(0),
            buckets: le64(b, 40).unwrap_or(0),
            dir_off: le64(b, 48).unwrap_or(0),
            index_crc: le32(b, 120).unwrap_or(0),
        };
        if t.file_len > actual_len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: t.file_len,
                actual: actual_len,
            });
        }
        let bad = |what: String| Err(Error::corrupt(path, format!("trailer: {what}")));
        if t.file_len != actual_len {
            return bad(format!(
                "records {} bytes but the file has {actual_len}",
                t.file_len
            ));
        }
        if le32(b, 12) != Some(0) || b[56..120].iter().any(|&x| x != 0) {
            return bad("unknown flags or non-zero reserved bytes".into());
        }
        if !t.buckets.is_power_of_two() {
            return bad(format!(
                "hash index bucket count {} is not a power of two",
                t.buckets
            ));
        }
        if t.index_off < PREAMBLE_LEN || !t.index_off.is_multiple_of(ALIGN) {
            return bad("misaligned index offset".into());
        }
        let Some(l) = layout(t.index_off, t.n_entries, t.buckets) else {
            return bad("index sizes overflow".into());
        };
        if t.dir_off != l.dir {
            return bad("the bucket directory does not follow the leaf".into());
        }
        if l.trailer.checked_add(TRAILER_LEN) != Some(t.file_len) {
            return bad("the index does not end where the trailer starts".into());
        }
        Ok((t, l))
    }
}

/// One array of an entry, as the writer describes it.
pub(crate) struct ArrayDesc<'a> {
    pub data_off: u64,
    pub stored_len: u64,
    pub crc: u32,
    pub compression: u8,
    pub dtype: [u8; DTYPE_LEN],
    pub name: &'a str,
    pub shape: &'a [usize],
}

/// Appends an entry descriptor to `out` (which must start 8-aligned in the
/// file); the descriptor's length is a multiple of 8.
///
/// Layout: `u32 len, u32 crc (of bytes 8..len), u8 key kind, u8 entry kind,
/// u16 array count, u32 key length, u32 metadata length, u32 reserved`, then
/// one 32-byte record per array, then all dimensions (`u64` each), then the
/// key bytes, the array names, the metadata JSON, and zero padding.
pub(crate) fn encode_desc(
    out: &mut Vec<u8>,
    key_kind: u8,
    entry_kind: u8,
    key: &[u8],
    meta: &[u8],
    arrays: &[ArrayDesc<'_>],
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(key_kind);
    out.push(entry_kind);
    out.extend_from_slice(&(arrays.len() as u16).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for a in arrays {
        out.extend_from_slice(&a.data_off.to_le_bytes());
        out.extend_from_slice(&a.stored_len.to_le_bytes());
        out.extend_from_slice(&a.crc.to_le_bytes());
        out.extend_from_slice(&(a.name.len() as u16).to_le_bytes());
        out.push(a.compression);
        out.push(a.shape.len() as u8);
        out.extend_from_slice(&a.dtype);
    }
    for a in arrays {
        for &d in a.shape {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
    }
    out.extend_from_slice(key);
    for a in arrays {
        out.extend_from_slice(a.name.as_bytes());
    }
    out.extend_from_slice(meta);
    let len = (out.len() - start).next_multiple_of(DESC_ALIGN as usize);
    out.resize(start + len, 0);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[start + 8..start + len]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded, checksum-verified entry descriptor borrowing from the map.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc<'a> {
    pub key_kind: u8,
    pub entry_kind: u8,
    pub n_arrays: u16,
    pub key: &'a [u8],
    pub meta: &'a [u8],
    pub recs: &'a [u8],
    pub dims: &'a [u8],
    pub names: &'a [u8],
    pub len: u64,
}

/// One decoded array record (fields not yet checked against the file).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ArrayRec<'a> {
    pub data_off: u64,
    pub stored_len: u64,
    pub crc: u32,
    pub name_len: u16,
    pub compression: u8,
    pub ndim: u8,
    pub dtype: &'a [u8; DTYPE_LEN],
}

/// Decodes the descriptor at the start of `b` (which extends at most to the
/// end of the data region), verifying its checksum. Errors are reasons.
pub(crate) fn decode_desc(b: &[u8]) -> std::result::Result<Desc<'_>, String> {
    let len = le32(b, 0).ok_or("descriptor outside the data region")? as usize;
    if len < DESC_HEAD || !len.is_multiple_of(DESC_ALIGN as usize) {
        return Err(format!("bad descriptor length {len}"));
    }
    let d = b.get(..len).ok_or("descriptor runs past the data region")?;
    let crc = le32(d, 4).unwrap_or(0);
    if crc32fast::hash(&d[8..]) != crc {
        return Err("descriptor checksum mismatch".into());
    }
    let key_kind = d[8];
    let entry_kind = d[9];
    let n_arrays = le16(d, 10).unwrap_or(0);
    let key_len = le32(d, 12).unwrap_or(0) as usize;
    let meta_len = le32(d, 16).unwrap_or(0) as usize;
    if le32(d, 20) != Some(0) {
        return Err("non-zero reserved descriptor bytes".into());
    }
    match (key_kind, key_len) {
        (KEY_U64, 8) | (KEY_STR, _) => {}
        _ => return Err("bad key kind or length".into()),
    }
    match (entry_kind, n_arrays) {
        (ENTRY_ARRAY, 1) | (ENTRY_SAMPLE, _) => {}
        _ => return Err("bad entry kind".into()),
    }
    let recs_end = DESC_HEAD.saturating_add((n_arrays as usize).saturating_mul(ARRAY_REC));
    let recs = d.get(DESC_HEAD..recs_end).ok_or("array records overrun")?;
    let mut ndims = 0usize;
    let mut names_len = 0usize;
    for i in 0..n_arrays as usize {
        let r = &recs[i * ARRAY_REC..];
        names_len += le16(r, 20).unwrap_or(0) as usize;
        ndims += r[23] as usize;
    }
    let dims_end = recs_end.saturating_add(ndims.saturating_mul(8));
    let dims = d.get(recs_end..dims_end).ok_or("dimensions overrun")?;
    let key_end = dims_end.saturating_add(key_len);
    let key = d.get(dims_end..key_end).ok_or("key overruns")?;
    let names_end = key_end.saturating_add(names_len);
    let names = d.get(key_end..names_end).ok_or("names overrun")?;
    let meta = d
        .get(names_end..names_end.saturating_add(meta_len))
        .ok_or("metadata overruns")?;
    Ok(Desc {
        key_kind,
        entry_kind,
        n_arrays,
        key,
        meta,
        recs,
        dims,
        names,
        len: len as u64,
    })
}

impl<'a> Desc<'a> {
    /// Array record `i` (`i < n_arrays`).
    pub(crate) fn rec(&self, i: usize) -> Option<ArrayRec<'a>> {
        let r = self.recs.get(i * ARRAY_REC..(i + 1) * ARRAY_REC)?;
        Some(ArrayRec {
            data_off: le64(r, 0)?,
            stored_len: le64(r, 8)?,
            crc: le32(r, 16)?,
            name_len: le16(r, 20)?,
            compression: r[22],
            ndim: r[23],
            dtype: r[24..32].try_into().ok()?,
        })
    }
}

/// Encodes a numpy dtype string into the 8-byte field, if it fits.
pub(crate) fn encode_dtype(s: &str) -> Option<[u8; DTYPE_LEN]> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > DTYPE_LEN || !b.iter().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    let mut out = [0u8; DTYPE_LEN];
    out[..b.len()].copy_from_slice(b);
    Some(out)
}

/// Decodes the dtype field (ASCII, zero-padded at the end).
pub(crate) fn decode_dtype(b: &[u8; DTYPE_LEN]) -> Option<&str> {
    let n = b.iter().position(|&c| c == 0).unwrap_or(DTYPE_LEN);
    if n == 0 || b[n..].iter().any(|&c| c != 0) {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?;
    s.bytes().all(|c| c.is_ascii_graphic()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trip() {
        let mut out = vec![0u8; 8];
        let shape = [2usize, 3];
        let arrays = [
            ArrayDesc {
                data_off: 64,
                stored_len: 24,
                crc: 7,
                compression: COMP_NONE,
                dtype: encode_dtype("<f4").unwrap(),
                name: "xyz",
                shape: &shape,
            },
            ArrayDesc {
                data_off: 128,
                stored_len: 1,
                crc: 8,
                compression: COMP_LZ4,
                dtype: encode_dtype("|u1").unwrap(),
                name: "",
                shape: &[],
            },
        ];
        encode_desc(&mut out, KEY_STR, ENTRY_SAMPLE, b"key", b"{}", &arrays);
        assert_eq!(out.len() % 8, 0);
        let d = decode_desc(&out[8..]).unwrap();
        assert_eq!(
            (d.key, d.meta, d.names),
            (&b"key"[..], &b"{}"[..], &b"xyz"[..])
        );
        assert_eq!(d.n_arrays, 2);
        let r = d.rec(0).unwrap();
        assert_eq!((r.data_off, r.stored_len, r.crc, r.ndim), (64, 24, 7, 2));
        assert_eq!(decode_dtype(r.dtype), Some("<f4"));
        assert_eq!(le64(d.dims, 8), Some(3));
        // Any flipped bit is caught by the checksum or the bounds.
        for i in 8..out.len() {
            let mut c = out.clone();
            c[i] ^= 0x10;
            assert!(decode_desc(&c[8..]).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn trailer_round_trip_and_checks() {
        let n = 70_000;
        let l = layout(128, n, bucket_count(n)).unwrap();
        assert_eq!((l.dir, l.buckets), (128 + 32 * n, 8192));
        let t = Trailer {
            file_len: l.trailer + TRAILER_LEN,
            n_entries: n,
            index_off: 128,
            buckets: l.buckets,
            dir_off: l.dir,
            index_crc: 99,
        };
        let b = t.encode();
        let p = Path::new("x.pack");
        assert_eq!(Trailer::decode(&b, t.file_len, p).unwrap().0, t);
        assert!(matches!(
            Trailer::decode(&b, t.file_len - 1, p),
            Err(Error::Truncated { .. })
        ));
        let mut c = b;
        c[20] ^= 1;
        assert!(matches!(
            Trailer::decode(&c, t.file_len, p),
            Err(Error::Corrupt { .. })
        ));
        // With a valid checksum: version 1 is refused by name, a bucket
        // count that is not a power of two or a misplaced directory is
        // corrupt.
        let recrc = |mut c: [u8; TRAILER_LEN as usize]| {
            let crc = crc32fast::hash(&c[..124]);
            c[124..].copy_from_slice(&crc.to_le_bytes());
            c
        };
        let mut c = b;
        c[8..12].copy_from_slice(&1u32.to_le_bytes());
        match Trailer::decode(&recrc(c), t.file_len, p) {
            Err(Error::Unsupported { path, reason }) => {
                assert_eq!(path, p);
                assert!(reason.contains("version 1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        for (at, v) in [(40, 1000u64), (40, 512), (48, l.dir + 8)] {
            let mut c = b;
            c[at..at + 8].copy_from_slice(&v.to_le_bytes());
            assert!(matches!(
                Trailer::decode(&recrc(c), t.file_len, p),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(bucket_count(0), 1);
        assert_eq!(bucket_count(16), 1);
        assert_eq!(bucket_count(17), 2);
        assert_eq!(bucket_count(1_000), 64);
        assert_eq!(bucket_count(1_000_000), 65_536);
        assert_eq!(bucket_of(u64::MAX, 1), 0);
        assert_eq!(bucket_of(u64::MAX, 2), 1);
        assert_eq!(bucket_of(0x8000_0000_0000_0000, 8192), 4096);
        assert_eq!(bucket_of(u64::MAX, 1 << 63), (1 << 63) - 1);
    }

    #[test]
    fn hash_is_pinned() {
        // Other readers (python/ndoffload_pack.py) compute the same function.
        assert_eq!(key_hash(KEY_STR, b"tile_0001"), 0x4cb0_4eae_e593_5bf2);
        assert_eq!(
            key_hash(KEY_U64, &7u64.to_le_bytes()),
            0x2a59_d254_0a4d_ed6c
        );
    }
}
