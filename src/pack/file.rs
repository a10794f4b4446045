//! An open pack file: the map, the trailer, and checked reads of the file's
//! records. The lowest layer of the reader: `index.rs` searches it,
//! `entry.rs` decodes its entries, `verify.rs` checks it, and `reader.rs`
//! wraps it in the public [`PackReader`](super::PackReader).

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::format::{self, Desc, Layout, Trailer, PREAMBLE_LEN, TRAILER_LEN};
use crate::error::{Error, IoContext, Result};
use crate::mmap::map_readonly;

/// Tail read at open: one page holding the trailer (and, for a small file,
/// the preamble too).
const TAIL_READ: u64 = 4096;

/// A mapped pack file and its decoded trailer.
pub(super) struct PackFile {
    pub(super) path: PathBuf,
    file: File,
    pub(super) map: Mmap,
    pub(super) t: Trailer,
    pub(super) layout: Layout,
    /// Positioned reads made so far (tests check a lookup's cost with it).
    #[cfg(test)]
    pub(super) preads: std::sync::atomic::AtomicU64,
}

impl PackFile {
    /// Opens and maps the pack at `path`, reading only its trailer (and
    /// the preamble of a file of at most 4 KiB).
    pub(super) fn open(path: &Path) -> Result<Self> {
        let file = crate::io::open_regular(path, crate::io::Access::Read)?;
        Self::from_file(file, path)
    }

    /// [`PackFile::open`] of a regular file already open (named `path`).
    pub(super) fn from_file(file: File, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
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
        Ok(PackFile {
            path,
            file,
            map,
            t,
            layout,
            #[cfg(test)]
            preads: std::sync::atomic::AtomicU64::new(0),
        })
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
