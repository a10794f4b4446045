//! [`DiskBackedStore`]: a crash-safe, persistent map of names to arrays.
//!
//! # Lock order
//!
//! Locks are taken in this order, never against it:
//!
//! 1. **Entry locks**, the `RwLock` of each entry's array. Guards hold them
//!    as long as the caller likes, several at a time, in any order; the
//!    store takes one for the length of one write or state change.
//! 2. **Store locks**, all fields of `Inner` below (its methods are in
//!    `inner.rs`, the handle's reads in `read.rs`): a `get_or_compute` gate
//!    (in `inflight`, held while the value is computed: `compute.rs`),
//!    `evicting`, `disk_evicting` (`budget.rs`; only ever try-locked), the
//!    map `entries`, a slot's mutex, `lru` and `incomplete`, in that order.
//! 3. **Leaf locks**, under which nothing else is waited for:
//!    `io::OWNERSHIP`, an entry's `counted` and `pinned` (`entry.rs`), the
//!    disk ledger in `Account` (`budget.rs`), the registry of waiting
//!    threads (`array/guard.rs`).
//!
//! Rules that make every wait end:
//!
//! * The store never waits for an entry lock while it holds a store lock:
//!   what it does to an entry under the map or a slot (`detach`, `pin`,
//!   `stop_publish`, `enable_publish`) never takes the entry's lock, and
//!   eviction only try-locks entries.
//! * The store never waits for an entry lock while it holds another entry
//!   lock it took itself. A batch (`flush`, `offload_all`, `offload_keys`,
//!   `insert_batch`) try-locks its entries, writes the ones it got with one
//!   round of syncs and releases them, then takes each remaining one alone;
//!   offloads take one entry at a time, after the batch.
//! * So a store call waits for an entry only while the entry is held by a
//!   guard or by a short store operation that waits for nothing, and a cycle
//!   of waiting threads can only be made of guards. A thread that holds
//!   guards registers each wait for another entry, and a wait that would
//!   close a cycle (a thread holding a guard on that entry waits, directly
//!   or through others, for a guard of the calling thread) returns
//!   [`Error::InUse`] instead; a thread holding no guard cannot be part of a
//!   cycle. A guard of the calling thread itself is never waited for
//!   ([`Error::InUse`] too), except by a read, the lock being recursive for
//!   reads.
//!
//! The one wait outside these rules is user code: a `get_or_compute`
//! computation runs under its key's gate, and a computation that waits for a
//! guard of a thread calling `get_or_compute` for the same key never ends.

mod behind;
mod budget;
mod compute;
mod entry;
mod evict;
mod handle;
mod import;
mod inner;
mod insert;
pub(crate) mod meta;
mod open;
mod prefetch;
mod read;
mod stats;
pub(crate) mod storage;
mod stored;

#[cfg(feature = "testing")]
pub(crate) use behind::set_min_bytes as set_write_behind_min_bytes;
pub(crate) use behind::WriteBehindConfig;
pub use budget::SystemPressure;
pub use inner::{DiskBackedStore, EntryInfo};
pub use insert::{Batch, InsertOptions};
pub use meta::{Attrs, EntryFlags};
pub(crate) use open::{open_store, OpenOptions};
pub use prefetch::Prefetching;
pub use stats::StoreStats;
#[cfg(feature = "testing")]
pub(crate) use storage::fault::{Faulty, IgnoresVersions, WrapStorage};
#[cfg(feature = "testing")]
pub use storage::fault::{SeamCall, SeamFaults, SeamOp};
#[cfg(feature = "testing")]
pub(crate) use storage::set_read_attempts;
pub(crate) use storage::Backend;
pub use storage::{RemoteStats, WriterInfo, CRATE_DIR, LOCK_FILE};
pub use stored::{DynReadGuard, DynStoredArray, StoredArray};
