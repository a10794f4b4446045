//! Disk-backed n-dimensional arrays.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod element;
mod error;
pub mod pack;

pub use element::Element;
pub use error::{Error, Result};
pub use pack::{
    Compression, PackArray, PackArrayInfo, PackEntry, PackEntryInfo, PackKey, PackReader, PackSet,
    PackWriter, Sample, ShardWriter, VerifyReport,
};
pub(crate) mod io;
pub(crate) mod mapped;
pub use crate::io::testing as __testing;
