//! Test hooks (compiled only with the `testing` feature; not part of the
//! stable API): the `io` layer's fault injection and recording
//! (`io::testing`), faults at the storage seam (`SeamFaults`), and the
//! hooks of the layers above it.

#[cfg(feature = "remote")]
use std::path::Path;
use std::sync::Arc;

pub use crate::io::testing::*;

/// Sets how many times a read on the calling thread reads a pair whose
/// `.npy` is not the version its metadata records before it reports
/// `Error::Mismatch` (`None`: the default, about 1 s of attempts). A
/// checker of stores no writer is changing (crash states) sets `1`: the
/// retries wait for a publish that will not come.
pub fn set_read_attempts(n: Option<u32>) {
    crate::store::set_read_attempts(n);
}

/// Sets the calling thread's size from which the default write-behind
/// writes a spill behind (`None`: the default, 1 MiB), so that tests of
/// the default run with small entries. Read by the thread that evicts.
pub fn set_write_behind_min_bytes(n: Option<u64>) {
    crate::store::set_write_behind_min_bytes(n);
}

/// Makes the cache directory `dir` of a store over an object store read as
/// after a reboot of the machine: the pairs its handles published without
/// syncing until now count as possibly torn (never read nor uploaded). A
/// power-cut checker that restarts a node in the same process calls it
/// before the restart.
#[cfg(feature = "remote")]
pub fn simulate_reboot(dir: &Path) {
    crate::remote::boot::simulate_reboot(dir);
}

/// The `object_store` crate the remote tier is built on (the version
/// [`open_tiered_on`] takes a store of).
#[cfg(feature = "remote")]
pub use object_store;

/// Opens a [`DiskBackedStore`](crate::DiskBackedStore) over the remote
/// prefix `url` with `cache_dir` as its local cache (as
/// [`StoreBuilder::remote_with`](crate::StoreBuilder::remote_with)), its
/// requests all going to `store` instead of the client the URL names
/// (several handles, in one process, on one in-memory object store, or a
/// store a test wraps to record, fail or snapshot requests), with
/// `memory_budget` bytes of RAM when given.
///
/// # Errors
///
/// As [`StoreBuilder::open`](crate::StoreBuilder::open).
#[cfg(feature = "remote")]
pub fn open_tiered_on(
    url: &str,
    store: Arc<dyn object_store::ObjectStore>,
    cache_dir: &Path,
    options: crate::remote::RemoteOptions,
    memory_budget: Option<u64>,
) -> crate::Result<crate::DiskBackedStore> {
    let mut b = tiered_on(crate::StoreBuilder::new(cache_dir), url, store, options);
    if let Some(m) = memory_budget {
        b = b.memory_budget(m);
    }
    b.open()
}

pub use crate::store::{SeamCall, SeamFaults, SeamOp};

/// Opens the store `builder` describes (a local directory, or an object
/// store with `StoreBuilder::remote` or `tiered_on`) with its storage wrapped at the seam by `plan`: every
/// seam call the handle makes (opening included) is counted, recorded and,
/// when the plan says so, failed with [`Error::Io`](crate::Error::Io)
/// saying the fault was injected.
///
/// # Errors
///
/// As [`StoreBuilder::open`](crate::StoreBuilder::open), and the faults
/// the plan injects while opening.
pub fn open_with_seam_faults(
    builder: crate::StoreBuilder,
    plan: &SeamFaults,
) -> crate::Result<crate::DiskBackedStore> {
    let plan = plan.clone();
    builder
        .wrap_storage(crate::store::WrapStorage(Arc::new(move |inner| {
            Arc::new(crate::store::Faulty::new(inner, plan.clone()))
        })))
        .open()
}

/// Opens the store `builder` describes over a deliberately broken backend:
/// the storage it opens, except that it checks no version (it says that
/// the data a handle holds is current whatever was published since, so a
/// handle does not see another's replacements and removals of entries it
/// has read). The conformance suite must reject it.
///
/// # Errors
///
/// As [`StoreBuilder::open`](crate::StoreBuilder::open).
pub fn open_ignoring_versions(
    builder: crate::StoreBuilder,
) -> crate::Result<crate::DiskBackedStore> {
    builder
        .wrap_storage(crate::store::WrapStorage(Arc::new(|inner| {
            Arc::new(crate::store::IgnoresVersions::new(inner))
        })))
        .open()
}

/// `builder` with the remote prefix `url` as its store's durable home, its
/// requests all going to `store` (as [`open_tiered_on`]): the builder's
/// other options (read-only, memory budget, ...) apply.
#[cfg(feature = "remote")]
pub fn tiered_on(
    builder: crate::StoreBuilder,
    url: &str,
    store: Arc<dyn object_store::ObjectStore>,
    options: crate::remote::RemoteOptions,
) -> crate::StoreBuilder {
    builder.backend(crate::remote::backend::backend(
        url.to_string(),
        Some(store),
        options,
    ))
}
