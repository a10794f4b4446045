//! The crate's one least-recently-used order: the memory budget's resident
//! entries, the disk budget's entry files and a remote store's cached
//! copies all keep their order in an [`Lru`].

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Keys in least-recently-used order.
#[derive(Debug)]
pub(crate) struct Lru<K> {
    by_tick: BTreeMap<u64, K>,
    tick_of: HashMap<K, u64>,
    next: u64,
}

impl<K> Default for Lru<K> {
    fn default() -> Self {
        Lru {
            by_tick: BTreeMap::new(),
            tick_of: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Clone + Eq + Hash> Lru<K> {
    /// Marks `key` as used now (adding it if absent).
    pub(crate) fn touch(&mut self, key: &K) {
        self.next += 1;
        if let Some(old) = self.tick_of.insert(key.clone(), self.next) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.next, key.clone());
    }

    /// Stops tracking `key`.
    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(t) = self.tick_of.remove(key) {
            self.by_tick.remove(&t);
        }
    }

    /// The keys from least to most recently used.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &K> {
        self.by_tick.values()
    }

    /// The keys from least to most recently used, copied.
    pub(crate) fn oldest_first(&self) -> Vec<K> {
        self.iter().cloned().collect()
    }

    /// Number of tracked keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_tick.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_use() {
        let mut l = Lru::default();
        for k in ["a", "b", "c"] {
            l.touch(&k);
        }
        l.touch(&"a");
        assert_eq!(l.oldest_first(), vec!["b", "c", "a"]);
        l.remove(&"c");
        assert_eq!(l.oldest_first(), vec!["b", "a"]);
        assert_eq!(l.len(), 2);
    }
}
