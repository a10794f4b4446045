//! Disk-backed n-dimensional arrays.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod array;
mod config;
mod element;
mod error;
mod inspect;
pub(crate) mod io;
mod map;
pub(crate) mod mapped;
mod name;
pub(crate) mod npy;
mod store;
mod stream;

pub use array::{ArrayState, DiskBackedArray, ReadGuard, WriteGuard};
pub use config::{default_chunk_budget, CacheConfig, ConfigOverrides, LoadMode};
pub use element::Element;
pub use error::{Error, Result};
pub use inspect::{inspect_store, EntryReport, InspectOptions};
pub use name::{EntryName, MAX_NAME_BYTES};
pub use store::{DiskBackedStore, EntryFlags, EntryInfo, StoreBuilder, StoredArray, LOCK_FILE};
pub use stream::{NpyStreamWriter, NpyStreamWriterDyn};

#[doc(hidden)]
pub use crate::io::testing as __testing;
