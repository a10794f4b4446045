//! Owned descriptions of a pack's entries, for listings and inspection
//! tools.

use std::fmt;

use super::codec::Compression;
use super::entry::PackEntry;
use super::key::PackKey;
use crate::error::Result;

impl PackEntry<'_> {
    /// An owned description of the entry, for listings.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`](crate::Error::Corrupt) for damaged array records.
    ///
    /// # Examples
    ///
    /// See [`PackReader::list`](super::PackReader::list).
    pub fn info(&self) -> Result<PackEntryInfo> {
        Ok(PackEntryInfo {
            key: self.key.clone().into_owned(),
            is_sample: self.is_sample(),
            meta_len: self.desc.meta.len() as u64,
            arrays: self
                .arrays()
                .map(|a| {
                    a.map(|a| PackArrayInfo {
                        name: a.name.to_string(),
                        dtype: a.dtype.to_string(),
                        shape: a.shape.clone(),
                        compression: a.compression,
                        stored_len: a.stored_len,
                        raw_len: a.raw_len as u64,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// An owned description of one pack entry (see [`PackReader::list`](super::PackReader::list)).
///
/// Its `Display` prints one line per entry: key, then each array's name,
/// dtype, shape, compression and stored bytes, then the metadata size.
///
/// # Examples
///
/// See [`PackReader::list`](super::PackReader::list).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackEntryInfo {
    /// The key.
    pub key: PackKey<'static>,
    /// Whether it was written as a sample.
    pub is_sample: bool,
    /// Bytes of JSON metadata (0: none).
    pub meta_len: u64,
    /// Its arrays.
    pub arrays: Vec<PackArrayInfo>,
}

impl PackEntryInfo {
    /// Whether the entry carries metadata.
    ///
    /// # Examples
    ///
    /// See [`PackReader::list`](super::PackReader::list).
    pub fn has_meta(&self) -> bool {
        self.meta_len > 0
    }
}

/// An owned description of one array of a pack entry.
///
/// # Examples
///
/// See [`PackReader::list`](super::PackReader::list).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PackArrayInfo {
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

impl fmt::Display for PackEntryInfo {
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
