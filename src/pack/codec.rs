//! Per-entry compression: LZ4 (feature `lz4`) and Zstandard (feature `zstd`).

use std::fmt;
use std::path::Path;

use super::format::{COMP_LZ4, COMP_NONE, COMP_ZSTD};
use crate::error::{Error, Result};

/// How one array's bytes are stored in a pack, chosen per entry at write
/// time with [`PackWriter::set_compression`](crate::pack::PackWriter::set_compression).
///
/// Uncompressed entries are read back as zero-copy views into the file's
/// memory map; compressed entries are decoded into an owned array.
///
/// Every variant exists in every build, so code that names one compiles
/// everywhere; writing or reading an entry with a codec whose cargo feature
/// is disabled is an [`Error::Unsupported`].
///
/// # Examples
///
/// ```
/// use ndarray_offload::pack::Compression;
///
/// assert_eq!(Compression::default(), Compression::None);
/// assert_eq!(Compression::Zstd(3).to_string(), "zstd");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Raw little-endian element bytes; read back without copying.
    #[default]
    None,
    /// LZ4 block compression (cargo feature `lz4`): fast, modest ratio.
    Lz4,
    /// Zstandard at the given level (cargo feature `zstd`; 1..=22, 3 is a
    /// good default).
    Zstd(i32),
}

impl Compression {
    /// Whether this build can write and read this compression.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::Compression;
    ///
    /// assert!(Compression::None.is_available());
    /// assert_eq!(Compression::Lz4.is_available(), cfg!(feature = "lz4"));
    /// ```
    pub fn is_available(self) -> bool {
        match self {
            Compression::None => true,
            Compression::Lz4 => cfg!(feature = "lz4"),
            Compression::Zstd(_) => cfg!(feature = "zstd"),
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => COMP_NONE,
            Compression::Lz4 => COMP_LZ4,
            Compression::Zstd(_) => COMP_ZSTD,
        }
    }

    /// The compression a stored code means (a level is not stored, so zstd
    /// reads back as `Zstd(0)`, zstd's "default level").
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            COMP_NONE => Some(Compression::None),
            COMP_LZ4 => Some(Compression::Lz4),
            COMP_ZSTD => Some(Compression::Zstd(0)),
            _ => None,
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Lz4 => "lz4",
            Compression::Zstd(_) => "zstd",
        }
    }

    fn unsupported(self, path: &Path) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "{self} compression needs the `{}` cargo feature of ndarray-offload",
                self.feature()
            ),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd(_) => "zstd",
        })
    }
}

/// Compresses `raw` into `out` (cleared first).
pub(crate) fn compress(c: Compression, raw: &[u8], out: &mut Vec<u8>, path: &Path) -> Result<()> {
    out.clear();
    match c {
        Compression::None => {
            out.extend_from_slice(raw);
            Ok(())
        }
        #[cfg(feature = "lz4")]
        Compression::Lz4 => {
            out.resize(lz4_flex::block::get_maximum_output_size(raw.len()), 0);
            let n = lz4_flex::block::compress_into(raw, out).map_err(|e| Error::InvalidInput {
                path: path.to_path_buf(),
                reason: format!("lz4 compression failed: {e}"),
            })?;
            out.truncate(n);
            Ok(())
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd(level) => {
            *out = zstd::bulk::compress(raw, level).map_err(|e| Error::InvalidInput {
                path: path.to_path_buf(),
                reason: format!("zstd compression failed: {e}"),
            })?;
            Ok(())
        }
        #[allow(unreachable_patterns)]
        other => Err(other.unsupported(path)),
    }
}

/// Whether zstd accepts `level`.
pub(crate) fn zstd_level_ok(level: i32) -> bool {
    #[cfg(feature = "zstd")]
    {
        zstd::compression_level_range().contains(&level)
    }
    #[cfg(not(feature = "zstd"))]
    {
        let _ = level;
        true
    }
}

/// Checks at write time that `c` is usable in this build.
pub(crate) fn check_available(c: Compression, path: &Path) -> Result<()> {
    if c.is_available() {
        Ok(())
    } else {
        Err(c.unsupported(path))
    }
}

/// Decompresses `stored` into exactly `raw_len` bytes. `what` names the
/// entry in error messages.
pub(crate) fn decompress(
    c: Compression,
    stored: &[u8],
    raw_len: usize,
    path: &Path,
    what: &dyn fmt::Display,
) -> Result<Vec<u8>> {
    let corrupt = |e: &dyn fmt::Display| Error::corrupt(path, format!("{what}: {c} data: {e}"));
    match c {
        Compression::None => Ok(stored.to_vec()),
        #[cfg(feature = "lz4")]
        Compression::Lz4 => {
            let mut out = vec![0u8; raw_len];
            let n = lz4_flex::block::decompress_into(stored, &mut out).map_err(|e| corrupt(&e))?;
            if n != raw_len {
                return Err(corrupt(&format!("decoded {n} bytes, expected {raw_len}")));
            }
            Ok(out)
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd(_) => {
            let mut out = vec![0u8; raw_len];
            let n =
                zstd::bulk::decompress_to_buffer(stored, &mut out[..]).map_err(|e| corrupt(&e))?;
            if n != raw_len {
                return Err(corrupt(&format!("decoded {n} bytes, expected {raw_len}")));
            }
            Ok(out)
        }
        #[allow(unreachable_patterns)]
        other => {
            let _ = (raw_len, &corrupt);
            Err(other.unsupported(path))
        }
    }
}
