//! Configuration shared by arrays and stores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::mmap::LoadMode;
use crate::name::EntryName;
use crate::size::available_memory;

/// Settings for disk-backed arrays (and the defaults of a store's entries).
///
/// Cheap to clone. Build it with the `with_*` methods.
///
/// ## Defaults
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`location`](Self::location) | `None` | directory for array files; `None` uses a private temporary directory (mode 0700) removed when the last array using it is dropped |
/// | [`caching`](Self::caching) | `true` | arrays may live on disk; `false` keeps them in RAM and makes offload a no-op |
/// | [`purge_on_drop`](Self::purge_on_drop) | `None` (automatic) | delete an array's file when the array is dropped: automatic means yes in the temporary directory, no in a configured location |
/// | [`automatic_offloading`](Self::automatic_offloading) | `false` | re-offload after every scoped access that had to load the array |
/// | [`chunk_budget`](Self::chunk_budget) | `None` (automatic) | largest buffer used when a layout must be copied while writing: 10% of the memory available to the process (cgroup limits included), 64 MiB when unknown |
/// | [`load_mode`](Self::load_mode) | [`LoadMode::ReadOnly`] | how an array loaded on demand is mapped |
///
/// # Examples
///
/// ```
/// use ndarray_offload::CacheConfig;
///
/// let dir = tempfile::tempdir()?;
/// let config = CacheConfig::default()
///     .with_location(dir.path())
///     .with_automatic_offloading(true);
/// let per_stage = config.extend_cache_path("stage_1")?;
/// assert_eq!(per_stage.location(), Some(dir.path().join("stage_1").as_path()));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    location: Option<Arc<Path>>,
    caching: bool,
    purge_on_drop: Option<bool>,
    automatic_offloading: bool,
    chunk_budget: Option<u64>,
    load_mode: LoadMode,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            location: None,
            caching: true,
            purge_on_drop: None,
            automatic_offloading: false,
            chunk_budget: None,
            load_mode: LoadMode::ReadOnly,
        }
    }
}

/// Per-entry changes to a [`CacheConfig`]; `None` keeps the base value.
///
/// The equivalent of the keyword overrides GSEGUtils accepts in
/// `LazyDiskCacheConfig.updated(**overrides)` and
/// `DiskBackedStore.add_data_to_store(..., **overrides)`.
///
/// # Examples
///
/// ```
/// use ndarray_offload::{CacheConfig, ConfigOverrides};
///
/// let base = CacheConfig::default();
/// let keep = base.updated(&ConfigOverrides::default().purge_on_drop(false));
/// assert_eq!(keep.purge_on_drop(), Some(false));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigOverrides {
    /// Overrides [`CacheConfig::location`].
    pub location: Option<PathBuf>,
    /// Overrides [`CacheConfig::caching`].
    pub caching: Option<bool>,
    /// Overrides [`CacheConfig::purge_on_drop`].
    pub purge_on_drop: Option<bool>,
    /// Overrides [`CacheConfig::automatic_offloading`].
    pub automatic_offloading: Option<bool>,
}

impl ConfigOverrides {
    /// No overrides: every value comes from the base configuration. The
    /// same as [`ConfigOverrides::default`].
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`location`](ConfigOverrides#structfield.location).
    pub fn location(mut self, dir: impl Into<PathBuf>) -> Self {
        self.location = Some(dir.into());
        self
    }
    /// Sets [`caching`](ConfigOverrides#structfield.caching).
    pub fn caching(mut self, on: bool) -> Self {
        self.caching = Some(on);
        self
    }
    /// Sets [`purge_on_drop`](ConfigOverrides#structfield.purge_on_drop).
    pub fn purge_on_drop(mut self, on: bool) -> Self {
        self.purge_on_drop = Some(on);
        self
    }
    /// Sets
    /// [`automatic_offloading`](ConfigOverrides#structfield.automatic_offloading).
    pub fn automatic_offloading(mut self, on: bool) -> Self {
        self.automatic_offloading = Some(on);
        self
    }
}

impl CacheConfig {
    /// The default configuration (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Directory where array files go (`None`: a private temporary directory).
    pub fn location(&self) -> Option<&Path> {
        self.location.as_deref()
    }
    /// Whether arrays may live on disk.
    pub fn caching(&self) -> bool {
        self.caching
    }
    /// Explicit purge-on-drop setting (`None`: automatic).
    pub fn purge_on_drop(&self) -> Option<bool> {
        self.purge_on_drop
    }
    /// Whether scoped accesses re-offload when they end.
    pub fn automatic_offloading(&self) -> bool {
        self.automatic_offloading
    }
    /// Explicit chunk budget in bytes (`None`: automatic).
    pub fn chunk_budget(&self) -> Option<u64> {
        self.chunk_budget
    }
    /// How arrays loaded on demand are mapped.
    pub fn load_mode(&self) -> LoadMode {
        self.load_mode
    }

    /// Sets the directory for array files.
    pub fn with_location(mut self, dir: impl AsRef<Path>) -> Self {
        self.location = Some(Arc::from(dir.as_ref()));
        self
    }
    /// Uses a private temporary directory for array files.
    pub fn with_temporary_location(mut self) -> Self {
        self.location = None;
        self
    }
    /// Turns caching on or off.
    pub fn with_caching(mut self, on: bool) -> Self {
        self.caching = on;
        self
    }
    /// Sets purge-on-drop explicitly.
    pub fn with_purge_on_drop(mut self, on: bool) -> Self {
        self.purge_on_drop = Some(on);
        self
    }
    /// Turns automatic offloading on or off.
    pub fn with_automatic_offloading(mut self, on: bool) -> Self {
        self.automatic_offloading = on;
        self
    }
    /// Sets the chunk budget (at least 4 KiB is used): a `u64` of bytes or
    /// a [`ByteSize`](crate::ByteSize); a string goes through
    /// `ByteSize::try_from`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::{ByteSize, CacheConfig};
    ///
    /// let c = CacheConfig::default().with_chunk_budget(ByteSize::try_from("64MiB")?);
    /// assert_eq!(c.chunk_budget(), Some(64 << 20));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn with_chunk_budget(mut self, bytes: impl Into<crate::size::ByteSize>) -> Self {
        self.chunk_budget = Some(bytes.into().bytes().max(4096));
        self
    }
    /// Sets how arrays loaded on demand are mapped.
    pub fn with_load_mode(mut self, mode: LoadMode) -> Self {
        self.load_mode = mode;
        self
    }

    /// A copy with `overrides` applied (GSEGUtils' `updated()`).
    pub fn updated(&self, overrides: &ConfigOverrides) -> Self {
        let mut c = self.clone();
        if let Some(l) = &overrides.location {
            c.location = Some(Arc::from(l.as_path()));
        }
        if let Some(v) = overrides.caching {
            c.caching = v;
        }
        if let Some(v) = overrides.purge_on_drop {
            c.purge_on_drop = Some(v);
        }
        if let Some(v) = overrides.automatic_offloading {
            c.automatic_offloading = v;
        }
        c
    }

    /// A copy whose location is extended by the sub-directory `folder`
    /// (GSEGUtils' `extend_cache_path()`). With no location set, the copy
    /// has none either.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) if `folder` is not a
    /// valid entry name (it must be a single path component).
    pub fn extend_cache_path(&self, folder: &str) -> Result<Self> {
        let folder = EntryName::new(folder)?;
        let mut c = self.clone();
        match &self.location {
            Some(l) => c.location = Some(Arc::from(l.join(folder.as_str()).as_path())),
            None => tracing::info!(
                folder = folder.as_str(),
                "extend_cache_path on a configuration without location: keeping the temporary location"
            ),
        }
        Ok(c)
    }

    /// Purge-on-drop as it applies to a file in a temporary (`true`) or a
    /// configured location.
    pub(crate) fn effective_purge(&self, temporary: bool) -> bool {
        self.purge_on_drop.unwrap_or(temporary)
    }

    /// The chunk budget in bytes: the configured one, else
    /// [`default_chunk_budget`].
    pub fn effective_chunk_budget(&self) -> u64 {
        self.chunk_budget.unwrap_or_else(default_chunk_budget)
    }
}

/// Chunk budget used when none is configured: 10% of the memory available
/// to the process (the host's available memory, capped by the process's
/// cgroup limit on Linux), at least 1 MiB, or 64 MiB when that is unknown.
pub fn default_chunk_budget() -> u64 {
    const FALLBACK: u64 = 64 << 20;
    match available_memory() {
        Some(avail) => (avail / 10).max(1 << 20),
        None => FALLBACK,
    }
}
