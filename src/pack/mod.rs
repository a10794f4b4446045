//! Packs: many small arrays in one file, opened with near-zero parsing.
//!
//! A pack is one file holding any number of keyed entries. An entry is one
//! array, or a [`Sample`] of several named arrays, each with optional JSON
//! metadata. It exists for workloads that produce millions of small arrays
//! (point-cloud tiles, training-sample caches), where one file per array
//! exhausts inodes and opening each costs a system call or three.
//!
//! | task | reach for |
//! |---|---|
//! | write arrays or samples into one file, commit atomically | [`PackWriter`] |
//! | open a pack and get an array by key, without copying | [`PackReader::get`] |
//! | read `n` consecutive entries in write order | [`PackReader::read`] |
//! | iterate in write order / key order | [`PackReader::iter`] / [`PackReader::iter_by_key`] |
//! | list entries or check every checksum (inspection tools) | [`PackReader::list`] / [`PackReader::verify`] |
//! | write a stream of samples into several packs in parallel | [`ShardWriter`], read back with [`PackSet`] |
//!
//! The layout (format version 2) is described byte by byte in
//! `docs/format.md, section "Pack file format"`; `python/ndoffload_pack.py` reads it with numpy
//! alone. In short: a 64-byte preamble; for each entry, its 64-byte aligned
//! payloads followed by a checksummed descriptor (key, dtypes, shapes,
//! names, offsets, payload checksums, metadata); the index (descriptor
//! offsets in file order and in key order, and `(key hash, offset)` records
//! sorted by hash, with a directory of hash buckets of 8 to 16 records on
//! average); and a 128-byte trailer with a checksum. Opening reads the trailer
//! in one read of 4 KiB, and a lookup makes two small positioned reads
//! (two directory slots, then one bucket), whatever the entry count.
//!
//! # Examples
//!
//! ```
//! use ndarray::{array, Array2, Ix2};
//! use ndarray_offload::pack::{PackReader, PackWriter};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiles.pack");
//!
//! let mut w = PackWriter::create(&path)?;
//! for i in 0..1000u64 {
//!     w.append(i, &Array2::<f32>::from_elem((16, 3), i as f32))?;
//! }
//! w.finish()?;
//!
//! let r = PackReader::open(&path)?;
//! let tile = r.get::<f32, Ix2>(417u64)?; // a view into the mapped file
//! assert_eq!(tile[[15, 2]], 417.0);
//! # Ok::<_, ndarray_offload::Error>(())
//! ```

mod codec;
mod entry;
mod file;
mod format;
mod index;
mod index_build;
mod info;
mod key;
mod reader;
mod sample;
mod shard;
mod sink;
mod verify;
mod writer;

pub use codec::Compression;
pub use entry::{PackArray, PackEntry};
pub use info::{PackArrayInfo, PackEntryInfo};
pub use key::PackKey;
pub use reader::PackReader;
pub use sample::Sample;
pub use shard::{PackSet, ShardWriter};
pub use verify::VerifyReport;
pub use writer::PackWriter;
