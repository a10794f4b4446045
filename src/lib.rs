//! Disk-backed n-dimensional arrays for programs that hold more array data
//! than fits in RAM, and that must not lose it when they crash.
//!
//! Every file this crate writes is a plain `.npy` that
//! `numpy.load(path, mmap_mode='r')` reads, published atomically (unique
//! temporary file, `fsync`, rename, directory `fsync`).
//!
//! # Which type for which task
//!
//! | task | reach for |
//! |---|---|
//! | keep one large array in RAM or on disk, map it back on demand | [`DiskBackedArray`] |
//! | choose where files go, caching, automatic offloading, purge-on-drop | [`CacheConfig`], [`ConfigOverrides`] |
//! | a persistent, crash-safe map of names to arrays (numpy- and GSEGUtils-readable) | [`DiskBackedStore`], [`StoreBuilder`] |
//! | read a stored array without copying | [`DiskBackedStore::get`] → [`StoredArray::read`] |
//! | write many entries durably with one round of syncs | [`DiskBackedStore::insert_batch`] |
//! | write an array larger than RAM chunk by chunk | [`NpyStreamWriter`] |
//! | many small arrays or samples in one file, read without copying | [`pack`]: [`pack::PackWriter`], [`pack::PackReader`] |
//! | check a store or pack without knowing its dtypes (what `ndoffload` does) | [`inspect`]: [`inspect::inspect_store`], [`inspect::inspect_pack`] |
//! | validate an entry name before using it | [`EntryName`] |
//!
//! # Example
//!
//! ```
//! use ndarray::{Array2, Ix2};
//! use ndarray_offload::{DiskBackedArray, DiskBackedStore, LoadMode};
//!
//! // One array: offload it, then read it back through a memory map.
//! let points = Array2::<f32>::from_shape_fn((10_000, 3), |(i, j)| (i + j) as f32);
//! let arr = DiskBackedArray::new(points)?;
//! arr.offload()?; // RAM freed; data in a private temporary .npy
//! let n = arr.read()?.view().nrows();
//! assert_eq!(n, 10_000);
//!
//! // A store: entries survive the process and open in numpy.
//! let dir = tempfile::tempdir()?;
//! let store = DiskBackedStore::open(dir.path())?;
//! store.insert_durable("normals", Array2::<f32>::zeros((10_000, 3)))?;
//! let normals = store.get::<f32, Ix2>("normals")?;
//! assert_eq!(normals.read()?.view().shape(), &[10_000, 3]);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors and guarantees
//!
//! Every fallible call returns [`Error`], whose variants name the file or
//! entry concerned. Bad files are reported as errors, never as panics or
//! `SIGBUS`. What survives a crash, and which test shows it, is written in
//! `docs/reliability.md`; the on-disk format is in `docs/format.md`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod array;
mod config;
mod depth;
mod element;
mod error;
pub mod inspect;
pub(crate) mod io;
mod key_hasher;
mod mmap;
mod name;
pub(crate) mod npy;
pub mod pack;
mod pylit;
#[cfg(feature = "remote")]
pub mod remote;
mod size;
mod store;
mod stream;

pub use array::{ArrayState, DiskBackedArray, ReadGuard, WriteGuard};
pub use config::{default_chunk_budget, CacheConfig, ConfigOverrides};
pub use element::Element;
pub use error::{Error, RemoteErrorKind, Result};
pub use key_hasher::KeyHasher;
pub use mmap::LoadMode;
pub use name::{EntryName, MAX_NAME_BYTES};
pub use size::ByteSize;
pub use store::{
    DiskBackedStore, EntryFlags, EntryInfo, StoreBuilder, StoreStats, StoredArray, SystemPressure,
    CRATE_DIR, LOCK_FILE,
};
pub use stream::{NpyStreamWriter, NpyStreamWriterDyn};

/// Test hooks (fault injection), compiled only with the `testing` feature;
/// not part of the stable API.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use crate::io::testing as __testing;
