//! A store's memory budget: the least-recently-used order of resident
//! entries, and offloading on system memory pressure.

use std::collections::BTreeMap;

use crate::name::EntryName;

/// Offloading on host-wide memory pressure (off by default).
///
/// When the memory available to the process (as `sysinfo` reports it for
/// the host, capped by the process's cgroup limit on Linux) falls below
/// `min_available`, the store offloads least-recently-used entries until its
/// resident bytes are at most `target_resident`.
///
/// # Examples
///
/// ```
/// use ndarray_offload::{StoreBuilder, SystemPressure};
///
/// let dir = tempfile::tempdir()?;
/// let store = StoreBuilder::new(dir.path())
///     .system_pressure(SystemPressure::new(512 << 20, 64 << 20))
///     .open()?;
/// # drop(store);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SystemPressure {
    /// Available-memory threshold that triggers offloading.
    pub min_available: u64,
    /// Resident bytes to offload down to once triggered.
    pub target_resident: u64,
}

impl SystemPressure {
    /// Offload down to `target_resident` bytes whenever less than
    /// `min_available` bytes of memory are available.
    pub const fn new(min_available: u64, target_resident: u64) -> Self {
        SystemPressure {
            min_available,
            target_resident,
        }
    }
}

/// Resident entries in least-recently-used order.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    by_tick: BTreeMap<u64, EntryName>,
    tick_of: std::collections::HashMap<EntryName, u64>,
    next: u64,
}

impl Lru {
    /// Marks `name` as used now (adding it if absent).
    pub(crate) fn touch(&mut self, name: &EntryName) {
        self.next += 1;
        if let Some(old) = self.tick_of.insert(name.clone(), self.next) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.next, name.clone());
    }

    /// Stops tracking `name`.
    pub(crate) fn remove(&mut self, name: &EntryName) {
        if let Some(t) = self.tick_of.remove(name) {
            self.by_tick.remove(&t);
        }
    }

    /// Names from least to most recently used.
    pub(crate) fn oldest_first(&self) -> Vec<EntryName> {
        self.by_tick.values().cloned().collect()
    }

    /// Number of tracked names.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_tick.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order() {
        let n = |s: &str| EntryName::new(s).unwrap();
        let mut l = Lru::default();
        l.touch(&n("a"));
        l.touch(&n("b"));
        l.touch(&n("c"));
        l.touch(&n("a"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("c"), n("a")]);
        l.remove(&n("c"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("a")]);
        assert_eq!(l.len(), 2);
    }
}
