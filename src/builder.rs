//! [`StoreBuilder`]: every option of an open, for a local store or one
//! over an object-store prefix. It sits above the store and the remote
//! tier (it names both); the store itself only takes the options it
//! collected (`store::OpenOptions`) and a backend.

use std::path::Path;

use crate::config::CacheConfig;
#[allow(unused_imports)] // named by the documentation
use crate::error::{Error, Result};
#[cfg(feature = "remote")]
use crate::remote::RemoteOptions;
use crate::size::{ByteSize, IntoByteSize, SizeSetting};
use crate::store::{Backend, OpenOptions, WriteBehindConfig};
use crate::{DiskBackedStore, SystemPressure};

/// Options for opening a [`DiskBackedStore`].
///
/// ## Defaults
///
/// | option | default |
/// |---|---|
/// | [`read_only`](Self::read_only) | `false`: a writable open, which takes the store's lock |
/// | [`create`](Self::create) | `true`: create the directory if it does not exist |
/// | [`entry_config`](Self::entry_config) | [`CacheConfig::default()`] with purge-on-drop off: entries may be offloaded, are not re-offloaded automatically, and are kept when the store is closed |
/// | [`memory_budget`](Self::memory_budget) | none: entries stay in RAM until flushed, offloaded or the store is closed |
/// | [`disk_budget`](Self::disk_budget) | none: no entry is ever deleted to save disk space |
/// | [`system_pressure`](Self::system_pressure) | off: the host's free memory is not watched |
///
/// Reads map entries read-only ([`LoadMode::ReadOnly`](crate::LoadMode));
/// the chunk budget of writes is [`default_chunk_budget`](crate::default_chunk_budget)
/// unless [`entry_config`](Self::entry_config) sets one.
///
/// # Examples
///
/// ```
/// use ndarray_offload::{CacheConfig, StoreBuilder};
///
/// let dir = tempfile::tempdir()?;
/// let store = StoreBuilder::new(dir.path().join("clouds"))
///     .entry_config(CacheConfig::default().with_automatic_offloading(true))
///     .open()?;
/// assert!(store.is_empty());
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct StoreBuilder(OpenOptions);

impl StoreBuilder {
    /// Options for the store at `dir`.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        StoreBuilder(OpenOptions::new(dir.as_ref()))
    }

    /// Uses `backend` instead of the local directory (the directory is
    /// then the backend's local cache).
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn backend(mut self, backend: Backend) -> Self {
        self.0.backend = Some(backend);
        self
    }

    /// Wraps the storage the open makes (local or over an object store)
    /// with `wrap` (tests: `__testing::open_with_seam_faults`).
    #[cfg(feature = "testing")]
    pub(crate) fn wrap_storage(mut self, wrap: crate::store::WrapStorage) -> Self {
        self.0.wrap = Some(wrap);
        self
    }

    /// Opens as the only writer (off by default): other writable opens, in
    /// this process or another, fail with [`Error::Locked`] while this one
    /// is open, and this one fails if another writer is registered. Readers
    /// are never locked out. An exclusive writer takes no per-key lock, so
    /// its publishes cost what they cost before several writers were
    /// possible; see `docs/reliability.md`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::{Error, StoreBuilder};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let only = StoreBuilder::new(dir.path()).exclusive(true).open()?;
    /// assert!(matches!(StoreBuilder::new(dir.path()).open(), Err(Error::Locked { .. })));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn exclusive(mut self, on: bool) -> Self {
        self.0.exclusive = on;
        self
    }

    /// How long `get_or_compute` waits for another process computing the
    /// same key before it fails with [`Error::Locked`] naming that process
    /// (default: no limit; the wait ends anyway when that process finishes,
    /// fails or dies).
    pub fn lock_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.0.lock_timeout = timeout;
        self
    }

    /// Caps the bytes of entry data held in RAM or mapped (default: no
    /// cap): when an insert or a read takes the store over the budget,
    /// least-recently-used entries are offloaded (written first if needed,
    /// then freed or unmapped) until it is under. Eviction never loses
    /// data, and never takes an entry from under a live guard.
    ///
    /// `budget` is a string (`"200MiB"`, `"2GB"`, see [`ByteSize::parse`]),
    /// a `u64` of bytes or a [`ByteSize`]. A malformed string is reported by
    /// [`open`](Self::open) as [`Error::InvalidSize`] naming this option.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = StoreBuilder::new(dir.path()).memory_budget("512MiB").open()?;
    /// assert_eq!(store.stats().budget, Some(512 << 20));
    ///
    /// let err = StoreBuilder::new(dir.path()).memory_budget("lots").open().unwrap_err();
    /// assert_eq!(err.to_string(), r#"invalid size "lots" for memory_budget: no number"#);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory_budget(mut self, budget: impl IntoByteSize) -> Self {
        self.0.budget = Some(SizeSetting::new(budget));
        self
    }

    /// Caps the bytes of the entries' files (default: no cap) by deleting
    /// *recomputable* entries, least recently used first: those made by
    /// [`get_or_compute`](DiskBackedStore::get_or_compute) (or
    /// [`try_get_or_compute`](DiskBackedStore::try_get_or_compute)) and
    /// those inserted with
    /// [`InsertOptions::recomputable`](crate::InsertOptions::recomputable). The
    /// flag is kept in the entry's `.meta.json` (`ndoffload_recomputable`,
    /// see `docs/format.md`), so a reopened store still knows which
    /// entries it may delete; entries written by GSEGUtils or numpy never
    /// are, and neither is any other entry.
    ///
    /// What is counted is the length of each entry's `.npy` file (header
    /// included; the small `.meta.json` files are not), for the entries this
    /// handle listed at open or wrote since. After each call that adds to
    /// it (an insert that spills, `insert_durable`, `insert_batch`,
    /// `flush`, the `offload` calls, `get_or_compute`, and the open itself),
    /// recomputable entries are deleted, least recently used by this handle
    /// first (after a reopen, entries not used yet go first, in name order),
    /// until the files are within the budget. A deletion is a
    /// [`remove`](DiskBackedStore::remove): durable, and a handle or guard
    /// on the entry keeps its data; the next `get_or_compute` of the key
    /// computes it again. When only ordinary entries are left the budget is
    /// exceeded: nothing else is deleted, and the event is counted in
    /// [`StoreStats::disk_over_budget_events`](crate::StoreStats::disk_over_budget_events);
    /// deletions are counted in
    /// [`StoreStats::disk_evictions`](crate::StoreStats::disk_evictions).
    /// A read-only open ignores it.
    ///
    /// `budget` is a string (`"2GiB"`, `"500MB"`, see [`ByteSize::parse`]),
    /// a `u64` of bytes or a [`ByteSize`]. A malformed string is reported by
    /// [`open`](Self::open) as [`Error::InvalidSize`] naming this option.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{Array1, Ix1};
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let dir = tempfile::tempdir()?;
    /// // 8000 bytes of data (+ a 128-byte header) per entry; room for two.
    /// let store = StoreBuilder::new(dir.path()).disk_budget("17KB").open()?;
    /// store.insert_durable("raw", Array1::<f64>::zeros(1000))?; // ordinary: kept
    /// for key in ["mean", "median"] {
    ///     store.get_or_compute::<f64, Ix1, _>(key, || Array1::ones(1000))?;
    /// }
    /// store.flush()?;
    /// // "mean", least recently used of the recomputable entries, was deleted.
    /// assert_eq!(store.stats().disk_evictions, 1);
    /// assert!(store.contains("raw") && !store.contains("mean"));
    /// // Asked for again, it is computed again.
    /// store.get_or_compute::<f64, Ix1, _>("mean", || Array1::ones(1000))?;
    /// assert_eq!(store.stats().computes, 3);
    ///
    /// let err = StoreBuilder::new(dir.path()).disk_budget("a lot").open().unwrap_err();
    /// assert!(err.to_string().contains("disk_budget"));
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn disk_budget(mut self, budget: impl IntoByteSize) -> Self {
        self.0.disk_budget = Some(SizeSetting::new(budget));
        self
    }

    /// How spills are written behind: when the memory budget evicts an
    /// entry held in RAM, the entry is handed to one of `threads`
    /// background writers and the evicting call returns at once; the
    /// entry's RAM is released once its pair is written and `fsync`ed.
    /// `threads == 0` turns write-behind off: every spill is written by
    /// the call that evicts (an insert, a guard that ends).
    ///
    /// **The default**, while a memory budget is set on a store in a local
    /// directory: entries of 1 MiB and more are written behind by one
    /// writer (started at the first such spill), with at most a quarter of
    /// the budget, and at most 64 MiB, in flight; smaller entries, whose
    /// spill costs little more than its per-file work, are written by the
    /// evicting call. This setting writes every spill behind, whatever its
    /// size, with the writers started when the store opens.
    ///
    /// At most `max_in_flight` bytes are handed over at a time (an eviction
    /// that would exceed it waits; one entry larger than the bound is
    /// written alone). Bytes in flight are held on top of the budget, so
    /// the entries' data in RAM stays within budget + `max_in_flight`
    /// ([`StoreStats::bytes_in_flight`](crate::StoreStats::bytes_in_flight)
    /// counts them).
    /// Reads of an entry in flight read it from RAM; `flush`, the
    /// `offload` calls and `close` wait for the writers first. A failed
    /// background write leaves the entry in RAM (nothing is lost) and is
    /// returned as [`Error::WriteBehind`](crate::Error::WriteBehind) by the
    /// next store call that can return an error; it is counted in
    /// [`StoreStats::write_behind_failures`](crate::StoreStats::write_behind_failures).
    /// A crash keeps the old or the new value of an entry being written, as
    /// for any spill.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::{ByteSize, StoreBuilder};
    ///
    /// let dir = tempfile::tempdir()?;
    /// // Every spill written behind, by one writer, 64 MiB in flight at most.
    /// let store = StoreBuilder::new(dir.path())
    ///     .memory_budget(ByteSize::new(256 << 20))
    ///     .write_behind(1, ByteSize::new(64 << 20))
    ///     .open()?;
    /// # drop(store);
    /// // Every spill written by the call that evicts.
    /// let store = StoreBuilder::new(dir.path())
    ///     .memory_budget(ByteSize::new(256 << 20))
    ///     .write_behind(0, 0u64)
    ///     .open()?;
    /// # drop(store);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_behind(mut self, threads: usize, max_in_flight: impl Into<ByteSize>) -> Self {
        self.0.write_behind = Some(WriteBehindConfig {
            threads,
            max_in_flight: max_in_flight.into().bytes(),
        });
        self
    }

    /// Offloads on host-wide memory pressure (off by default): see
    /// [`SystemPressure`].
    pub fn system_pressure(mut self, pressure: SystemPressure) -> Self {
        self.0.pressure = Some(pressure);
        self
    }

    /// Opens read-only: nothing is written (the directory may be
    /// read-only) and no lock is taken, so a reader opens while writers
    /// run; see [`DiskBackedStore::refresh`] for how it sees their changes.
    pub fn read_only(mut self, on: bool) -> Self {
        self.0.read_only = on;
        self
    }

    /// Whether a missing directory is created (writable opens only).
    pub fn create(mut self, on: bool) -> Self {
        self.0.create = on;
        self
    }

    /// Defaults for entries: caching, automatic offloading, purge-on-drop
    /// and the chunk budget (its location is ignored: entries live in the
    /// store directory).
    pub fn entry_config(mut self, config: CacheConfig) -> Self {
        self.0.config = config;
        self
    }

    /// Makes the object-store prefix at `url` the store's durable home, with
    /// the store's directory as its local cache (cargo feature `remote`).
    ///
    /// The store keeps its whole API: RAM is the first tier (the
    /// [`memory_budget`](Self::memory_budget)), the local directory the
    /// second (entries are downloaded into it and memory-mapped, so reads
    /// stay zero-copy; the [`disk_budget`](Self::disk_budget) drops clean
    /// cached copies, least recently used first), the object store the
    /// durable home. `insert_durable`,
    /// `insert_batch` and `flush` return once the object store committed
    /// the entries; a spill of the memory budget is staged durably in the
    /// local directory and committed by the next `flush` (or by a later
    /// handle on the same directory after a crash).
    ///
    /// URLs are parsed by `object_store`: `s3://bucket/prefix` (credentials,
    /// region and endpoint from the `AWS_*` environment variables),
    /// `memory:///prefix` (tests), `file:///dir`. The commit protocol
    /// (docs/format.md, "Remote stores") makes every entry a complete old or
    /// new value on every node; a write that lost a race with another node
    /// is [`Error::Conflict`](crate::Error::Conflict) naming the key, and the entry then reads as
    /// the winner's value. Other nodes' commits are seen after
    /// [`refresh`](crate::DiskBackedStore::refresh), or on a miss.
    ///
    /// The cache directory is shared as any store directory: any number of
    /// read-only handles (which take no lock and create nothing; their
    /// downloads go to a private temporary directory) and writers (which
    /// register), in one process or many.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::StoreBuilder;
    ///
    /// let cache = tempfile::tempdir()?;
    /// let store = StoreBuilder::new(cache.path())
    ///     .remote("memory:///bucket/clouds")
    ///     .memory_budget("256MiB")
    ///     .open()?;
    /// store.insert_durable("a", array![1.0f64, 2.0])?;
    /// assert_eq!(store.get::<f64, Ix1>("a")?.read()?.sum(), 3.0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "remote")]
    pub fn remote(self, url: impl Into<String>) -> Self {
        self.remote_with(url, RemoteOptions::default())
    }

    /// As [`remote`](Self::remote), with `options` (timeouts, retries,
    /// transfer parallelism, grace period, `object_store` configuration,
    /// offline reads).
    #[cfg(feature = "remote")]
    pub fn remote_with(self, url: impl Into<String>, options: RemoteOptions) -> Self {
        self.backend(crate::remote::backend::backend(url.into(), None, options))
    }

    /// Opens the store.
    ///
    /// A writable open takes a shared `flock` on `.ndoffload.lock` (an
    /// exclusive one with [`exclusive`](Self::exclusive)), registers itself
    /// in the crate's folder `.ndoffload/`, completes or rolls back the
    /// publishes and removals that dead writers left interrupted, and
    /// removes their temporary files; a live writer's are never touched.
    /// Several writable opens, in one process or many, may be open at once
    /// unless one is exclusive. A read-only open takes no lock. Every open
    /// lists the entries from the directory alone: no array and no metadata
    /// is read until used.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`] for a malformed size string (naming
    /// `memory_budget` or `disk_budget`),
    /// [`Error::NotADirectory`] when the path is a file ("is a file, not a
    /// store directory"), [`Error::NotFound`] for a missing directory (read-only, or with
    /// `create(false)`), [`Error::PermissionDenied`] naming a directory the
    /// caller may not read, [`Error::Locked`] naming the holders (an
    /// exclusive writer is open, or this open is exclusive and other writers
    /// are), [`Error::Corrupt`] when the path is not a directory, the lock
    /// file or a registration file is not a regular file or `.ndoffload`
    /// not a directory (a symbolic link, even dangling, a directory, FIFO
    /// or device: never followed or created through a link), I/O errors.
    ///
    /// The path is resolved once: the store holds the directory open and
    /// every later file operation is relative to it, wherever the path
    /// points afterwards.
    pub fn open(self) -> Result<DiskBackedStore> {
        crate::store::open_store(self.0)
    }
}
