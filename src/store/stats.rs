//! Store statistics: counters that cost nothing on the hot path and a
//! snapshot type to print.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::size::ByteSize;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub loads: AtomicU64,
    pub offloads: AtomicU64,
    pub evictions: AtomicU64,
    pub over_budget: AtomicU64,
    pub computes: AtomicU64,
    pub disk_evictions: AtomicU64,
    pub disk_evicted_bytes: AtomicU64,
    pub disk_over_budget: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn reset(&self) {
        for c in [
            &self.hits,
            &self.misses,
            &self.loads,
            &self.offloads,
            &self.evictions,
            &self.over_budget,
            &self.computes,
            &self.disk_evictions,
            &self.disk_evicted_bytes,
            &self.disk_over_budget,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// A snapshot of a store's statistics ([`DiskBackedStore::stats`](crate::DiskBackedStore::stats)).
///
/// Lookups (`get`, `get_or_compute`) count as a *hit* when the entry's data
/// was already in memory (in RAM or mapped), a *load* when it had to be
/// mapped from its file, and a *miss* when the entry did not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups of absent entries (including computations by `get_or_compute`).
    pub misses: u64,
    /// Lookups that mapped the entry from disk.
    pub loads: u64,
    /// Values computed by `get_or_compute`.
    pub computes: u64,
    /// Entries offloaded on request.
    pub offloads: u64,
    /// Entries offloaded by the memory budget (or system pressure).
    pub evictions: u64,
    /// Times the budget stayed exceeded because every resident entry was in
    /// use (pinned by a live guard).
    pub over_budget_events: u64,
    /// Bytes of entry data held in RAM or mapped (what the budget limits).
    pub bytes_resident: u64,
    /// Bytes of entry data in the store's files.
    pub bytes_on_disk: u64,
    /// Entries held in RAM or mapped.
    pub entries_resident: u64,
    /// Entries with a file on disk.
    pub entries_on_disk: u64,
    /// The memory budget, if any.
    pub budget: Option<u64>,
    /// Bytes of entries handed to the write-behind writers and not yet
    /// released (see `StoreBuilder::write_behind`).
    pub bytes_in_flight: u64,
    /// Background writes that failed (their entries stayed in RAM; each
    /// failure is also returned by a later call).
    pub write_behind_failures: u64,
    /// The disk budget, if any (see `StoreBuilder::disk_budget`).
    pub disk_budget: Option<u64>,
    /// Bytes of the entries' `.npy` files the disk budget counts (`None`
    /// when no disk budget was ever set: they are not counted).
    pub bytes_in_files: Option<u64>,
    /// Recomputable entries deleted by the disk budget.
    pub disk_evictions: u64,
    /// Bytes of the files of the entries deleted by the disk budget.
    pub bytes_disk_evicted: u64,
    /// Times the entries' files stayed over the disk budget because no
    /// recomputable entry was left to delete.
    pub disk_over_budget_events: u64,
    /// Time the write-behind writers spent writing (summed over them): I/O
    /// the callers did not wait for.
    pub write_behind_time: std::time::Duration,
    /// The object store's counters, for a store over one
    /// ([`StoreBuilder::remote`](crate::StoreBuilder::remote)); `None` for
    /// a local directory.
    pub remote: Option<super::storage::RemoteStats>,
}

impl StoreStats {
    /// Hits over all lookups (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses + self.loads;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

impl fmt::Display for StoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "store statistics")?;
        writeln!(
            f,
            "  lookups    {:>10}   hit rate {:>6.1}%",
            self.hits + self.misses + self.loads,
            self.hit_rate() * 100.0
        )?;
        writeln!(f, "  hits       {:>10}", self.hits)?;
        writeln!(f, "  loads      {:>10}   (mapped from disk)", self.loads)?;
        writeln!(
            f,
            "  misses     {:>10}   ({} computed)",
            self.misses, self.computes
        )?;
        writeln!(f, "  offloads   {:>10}", self.offloads)?;
        writeln!(f, "  evictions  {:>10}", self.evictions)?;
        writeln!(
            f,
            "  over budget{:>10}   (everything resident was pinned)",
            self.over_budget_events
        )?;
        let budget = self
            .budget
            .map(|b| ByteSize::new(b).to_string())
            .unwrap_or_else(|| "none".into());
        writeln!(
            f,
            "  resident   {:>10}   in {} entries (budget {budget})",
            ByteSize::new(self.bytes_resident).to_string(),
            self.entries_resident
        )?;
        write!(
            f,
            "  on disk    {:>10}   in {} entries",
            ByteSize::new(self.bytes_on_disk).to_string(),
            self.entries_on_disk
        )?;
        if let Some(b) = self.disk_budget {
            write!(
                f,
                " (files {}, disk budget {})",
                ByteSize::new(self.bytes_in_files.unwrap_or(0)),
                ByteSize::new(b)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  disk evictions{:>7}   ({} of recomputable entries deleted)",
            self.disk_evictions,
            ByteSize::new(self.bytes_disk_evicted)
        )?;
        write!(
            f,
            "  disk over budget{:>5}   (only ordinary entries were left)",
            self.disk_over_budget_events
        )?;
        if let Some(r) = &self.remote {
            write!(
                f,
                "\n  remote     {:>10}   up in {} objects, {} down in {}, {} cache hits, {} conflicts, {} pending",
                ByteSize::new(r.bytes_up).to_string(),
                r.uploads,
                ByteSize::new(r.bytes_down),
                r.downloads,
                r.cache_hits,
                r.conflicts,
                r.pending
            )?;
        }
        Ok(())
    }
}
