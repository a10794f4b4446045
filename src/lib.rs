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
//! | a persistent, crash-safe map of names to arrays that numpy reads | [`DiskBackedStore`], [`StoreBuilder`] |
//! | insert any array: owned (moved), a view, a slice or a reference (copied) | [`DiskBackedStore::insert`], [`IntoStoredArray`] |
//! | read a stored array without copying; guards dereference to the array | [`DiskBackedStore::get`] → [`StoredArray::read`] → [`ReadGuard`] |
//! | read without naming the element type | [`DiskBackedStore::get_dyn`] → [`DynView`] |
//! | read converting the element type (`u16` → `f64`) or the byte order (big-endian files) | [`DiskBackedStore::get_as`], [`DiskBackedStore::read_dyn`], [`Widen`] |
//! | keep the data set larger than RAM: spill least-recently-used entries | [`StoreBuilder::memory_budget`] (`"2GiB"`), [`StoreStats`] |
//! | cap the disk space of entries that can be computed again (deleted least recently used first) | [`StoreBuilder::disk_budget`], [`InsertOptions::recomputable`] |
//! | compute an entry once, store it, reuse it (`?` inside with [`try_get_or_compute`](DiskBackedStore::try_get_or_compute)) | [`DiskBackedStore::get_or_compute`], [`KeyHasher`] for names from inputs |
//! | attach attributes to an entry (CRS, origin, units, provenance) | [`InsertOptions::attrs`], [`DiskBackedStore::set_attrs`], [`EntryInfo::attrs`] |
//! | write many entries durably with one round of syncs | [`DiskBackedStore::insert_batch`] |
//! | write an array larger than RAM chunk by chunk | [`NpyStreamWriter`] |
//! | many small arrays or samples in one file, read without copying | [`pack`]: [`pack::PackWriter`], [`pack::PackReader`] |
//! | check a store, pack or `.npy` without knowing its dtypes (what `ndoffload` does) | [`inspect`] |
//! | validate an entry name before using it | [`EntryName`] |
//! | share a store between a writer process and reader processes | [`DiskBackedStore::open_read_only`], [`DiskBackedStore::refresh`]; see [Many processes](#many-processes) |
//! | the same store with object storage (S3, MinIO, ...) as its durable home, RAM and a local directory as caches (feature `remote`) | `StoreBuilder::remote` (`StoreBuilder::new(cache).remote("s3://bucket/prefix")`); see [Object storage](#object-storage) |
//! | read a remote store's cached entries while the server is unreachable | `remote::RemoteOptions::with_offline` |
//!
//! # Example
//!
//! A store of point-cloud tiles under a memory budget, with attributes, read
//! back with and without naming the element type:
//!
//! ```
//! use ndarray::{s, Array1, Array2, Ix2};
//! use ndarray_offload::{DiskBackedStore, DynView, StoreBuilder};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! // At most 1 MiB of entry data in RAM: older tiles spill to disk.
//! let store = StoreBuilder::new(dir.path()).memory_budget("1MiB").open()?;
//! for i in 0..8 {
//!     let xyz = Array2::<f64>::from_elem((20_000, 3), i as f64); // 480 KB
//!     let attrs = json!({"crs": "EPSG:2056", "origin": [i * 100, 0]});
//!     store.insert_opts(format!("tile_{i}"), xyz, &ndarray_offload::InsertOptions::new().attrs(attrs))?; // moved, no copy
//! }
//! assert!(store.stats().evictions > 0);
//!
//! // Typed reads come from RAM or a memory map, without copying; a guard
//! // reads like an ndarray array.
//! let tile = store.get::<f64, Ix2>("tile_0")?;
//! assert_eq!(tile.read()?.nrows(), 20_000);
//! assert_eq!(store.info("tile_3")?.attrs["origin"], json!([300, 0]));
//!
//! // Views and slices are copied in; a reference works too.
//! store.insert("head", tile.read()?.slice(s![..10, ..]))?;
//!
//! // Computed once, then read from the store.
//! let ones = store.get_or_compute::<f32, ndarray::Ix1, _>("ones", || Array1::ones(4))?;
//! assert_eq!(ones.read()?.sum(), 4.0);
//!
//! // Without naming the element type, or converting it.
//! match store.get_dyn("ones")?.read()?.view() {
//!     DynView::F32(v) => assert_eq!(v.len(), 4),
//!     other => panic!("unexpected {}", other.dtype()),
//! }
//! let as_f64 = store.get_as::<f64, ndarray::Ix1>("ones")?;
//! assert_eq!(as_f64.sum(), 4.0);
//!
//! store.close()?; // durable: numpy reads every tile with np.load
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! A computation that can fail uses
//! [`try_get_or_compute`](DiskBackedStore::try_get_or_compute): its closure
//! returns a `Result`, so `?` works inside, and nothing is stored on error.
//!
//! ```
//! use ndarray::{Array1, Ix1};
//! use ndarray_offload::DiskBackedStore;
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! let dir = tempfile::tempdir()?;
//! let store = DiskBackedStore::open(dir.path())?;
//! let r = store.try_get_or_compute::<f64, Ix1, _, BoxError>("n", || {
//!     let n: usize = "12".parse()?; // any error type converts
//!     Ok(Array1::zeros(n))
//! })?;
//! assert_eq!(r.shape(), &[12]);
//! # Ok::<_, BoxError>(())
//! ```
//!
//! Many small arrays go in a [`pack`], one file read without copying:
//!
//! ```
//! use ndarray::array;
//! use ndarray_offload::pack::{PackReader, PackWriter};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("labels.pack");
//! let mut w = PackWriter::create(&path)?;
//! for i in 0..100u64 {
//!     w.append(i, &array![i as u8, 1, 2])?;
//! }
//! w.finish()?;
//! let r = PackReader::open(&path)?;
//! assert_eq!(r.len(), 100);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! One array alone is a [`DiskBackedArray`]: offload it, and it is mapped
//! back when read.
//!
//! ```
//! use ndarray::Array2;
//! use ndarray_offload::DiskBackedArray;
//!
//! let arr = DiskBackedArray::new(Array2::<f32>::zeros((10_000, 3)))?;
//! arr.offload()?; // RAM freed; data in a private temporary .npy
//! assert_eq!(arr.read()?.nrows(), 10_000);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! # Many processes
//!
//! Any number of processes may open one store at once: writers share it
//! ([`StoreBuilder::open`]), readers open it with
//! [`DiskBackedStore::open_read_only`], which takes no lock, writes nothing
//! and never waits. A reader sees each entry as a complete old or new
//! value. Its [`keys`](DiskBackedStore::keys) are the directory as listed
//! at open until [`refresh`](DiskBackedStore::refresh) lists it again; a
//! name it does not know is looked up on disk by `get` and `info`, which
//! fail with [`Error::KeyNotFound`] until a writer publishes the entry. An
//! entry is durable once the writer's `insert_durable`, `insert_batch`,
//! `flush` or `close` returned (a reader may see it a moment before): a
//! writer that must tell readers writes a marker after `flush`, as
//! `examples/processes.rs` does.
//!
//! ```
//! use ndarray::{array, Ix1};
//! use ndarray_offload::{DiskBackedStore, Error, StoreBuilder};
//!
//! let dir = tempfile::tempdir()?;
//! let writer = StoreBuilder::new(dir.path()).open()?;
//! // Usually in another process.
//! let reader = DiskBackedStore::open_read_only(dir.path())?;
//! assert!(matches!(reader.get::<f64, Ix1>("a"), Err(Error::KeyNotFound { .. })));
//! writer.insert_durable("a", array![1.0, 2.0])?;
//! writer.insert_durable("b", array![3.0])?;
//! // A name the reader does not know is looked up on disk ...
//! assert_eq!(reader.get::<f64, Ix1>("a")?.read()?.sum(), 3.0);
//! // ... but its listing is the one of its open until `refresh`.
//! assert!(!reader.contains("b"));
//! reader.refresh()?;
//! assert_eq!(reader.len(), 2);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! # Object storage
//!
//! With the `remote` feature, `StoreBuilder::new(cache).remote("s3://bucket/prefix")`
//! keeps the store on S3-compatible storage, configured by the `AWS_*`
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT` with `AWS_ALLOW_HTTP=true` for a
//! local `http://` server), with the directory as its local cache. A
//! misconfiguration is an [`Error::Remote`] whose kind
//! ([`RemoteErrorKind`]) and message say what to set; `remote::RemoteOptions::with_offline`
//! reads what the cache holds while the server is unreachable. The
//! README's "Remote stores" section goes from nothing to a running store
//! on a local test server in a few commands.
//!
//! # Compatibility
//!
//! A store directory is plain files: `NAME.npy` (what `numpy.save` writes)
//! and `NAME.meta.json`, whose fields are those of the Python package
//! GSEGUtils' `DiskBackedStore`, so a store written by either opens in the
//! other. Attributes live under one extra field, `ndoffload_attrs`, that
//! GSEGUtils ignores; `docs/format.md` describes every field.
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
mod builder;
mod config;
mod depth;
mod dynarray;
mod element;
mod error;
pub mod inspect;
pub(crate) mod io;
mod key_hasher;
mod lru;
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

pub use array::{ArrayState, DiskBackedArray, IntoStoredArray, ReadGuard, WriteGuard};
pub use builder::StoreBuilder;
pub use config::{default_chunk_budget, CacheConfig, ConfigOverrides};
pub use dynarray::{DynArray, DynView, Widen};
pub use element::Element;
pub use error::{Error, RemoteErrorKind, Result};
pub use key_hasher::KeyHasher;
pub use mmap::LoadMode;
pub use name::{EntryName, MAX_NAME_BYTES};
pub use size::{ByteSize, IntoByteSize};
pub use store::{
    Attrs, Batch, DiskBackedStore, DynReadGuard, DynStoredArray, EntryFlags, EntryInfo,
    InsertOptions, Prefetching, RemoteStats, StoreStats, StoredArray, SystemPressure, CRATE_DIR,
    LOCK_FILE,
};
pub use stream::{NpyStreamWriter, NpyStreamWriterDyn};

/// Test hooks (fault injection), compiled only with the `testing` feature;
/// not part of the stable API.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[path = "testing.rs"]
pub mod __testing;
