//! Test hooks (compiled only with the `testing` feature; not part of the
//! stable API): the `io` layer's fault injection and recording
//! (`io::testing`), and the hooks of the layers above it.

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
    let backend = crate::remote::backend::backend(url.to_string(), Some(store), options);
    let mut b = crate::StoreBuilder::new(cache_dir).backend(backend);
    if let Some(m) = memory_budget {
        b = b.memory_budget(m);
    }
    b.open()
}
