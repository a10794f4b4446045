//! Read-ahead of offloaded entries: [`DiskBackedStore::prefetch`] and the
//! [`Prefetching`] iterator adaptor, so that a pass over entries on disk
//! reads at the disk's speed while the caller computes.
//!
//! Read-ahead is `posix_fadvise(POSIX_FADV_WILLNEED)` on each entry's data
//! file (through the storage seam's `open_data`): the kernel starts reading
//! the file into its page cache and returns; a later map of the entry finds
//! its pages there. Nothing is mapped or counted as resident until the
//! entry is read, and at most the memory budget's worth of bytes is
//! requested per call.

use std::collections::VecDeque;

use super::DiskBackedStore;
use crate::array::ArrayState;
use crate::error::Result;
use crate::io;
use crate::name::EntryName;

impl DiskBackedStore {
    /// Starts reading the files of `names` into the operating system's page
    /// cache and returns at once, without mapping anything (entries held in
    /// RAM are skipped; so are names beyond the memory budget's worth of
    /// bytes, when the store has a budget). Returns the bytes requested.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for an invalid
    /// name. Missing entries and files that cannot be read are skipped: the
    /// read that follows reports them.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// store.insert("a", array![1.0f32, 2.0])?;
    /// store.offload("a")?;
    /// store.prefetch(&["a"])?;
    /// assert_eq!(store.get::<f32, Ix1>("a")?.read()?.view()[1], 2.0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefetch<N: AsRef<str>>(&self, names: &[N]) -> Result<u64> {
        let cap = self.inner.budget().unwrap_or(u64::MAX);
        let mut requested = 0u64;
        for n in names {
            let name = EntryName::new(n.as_ref())?;
            if requested >= cap {
                break;
            }
            requested = requested.saturating_add(self.prefetch_one(&name));
        }
        Ok(requested)
    }

    /// Read-ahead for one entry; the bytes requested.
    fn prefetch_one(&self, name: &EntryName) -> u64 {
        let slot = self.inner.entries.read().get(name).cloned();
        let Some(slot) = slot else { return 0 };
        let in_ram = slot
            .lock()
            .loaded
            .as_ref()
            .is_some_and(|l| l.state() == ArrayState::InMemory);
        if in_ram {
            return 0;
        }
        match self.inner.storage.open_data(name, io::Access::Read) {
            Ok(f) => {
                let len = f.metadata().map_or(0, |m| m.len());
                if let Err(e) = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed) {
                    tracing::debug!(name = name.as_str(), error = %e, "read-ahead refused");
                    return 0;
                }
                len
            }
            Err(_) => 0,
        }
    }

    /// Wraps a sequence of entry names: each name is yielded in order, and
    /// the `ahead` names after it have been handed to
    /// [`prefetch`](Self::prefetch) already, so that reading the entries in
    /// order finds them in the page cache.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Ix1};
    /// use ndarray_offload::DiskBackedStore;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = DiskBackedStore::open(dir.path())?;
    /// for i in 0..4 {
    ///     store.insert(format!("t{i}"), array![i as f32])?;
    /// }
    /// store.offload_all()?;
    /// let mut sum = 0.0;
    /// for name in store.prefetching((0..4).map(|i| format!("t{i}")), 2) {
    ///     sum += store.get::<f32, Ix1>(&name)?.read()?.view()[0];
    /// }
    /// assert_eq!(sum, 6.0);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefetching<I>(&self, names: I, ahead: usize) -> Prefetching<'_, I::IntoIter>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Prefetching {
            store: self,
            names: names.into_iter(),
            window: VecDeque::new(),
            ahead: ahead.max(1),
        }
    }
}

/// An iterator over entry names that prefetches the next ones
/// ([`DiskBackedStore::prefetching`]).
pub struct Prefetching<'s, I: Iterator> {
    store: &'s DiskBackedStore,
    names: I,
    window: VecDeque<I::Item>,
    ahead: usize,
}

impl<I> Iterator for Prefetching<'_, I>
where
    I: Iterator,
    I::Item: AsRef<str>,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        while self.window.len() <= self.ahead {
            let Some(n) = self.names.next() else { break };
            // An invalid name is reported by the read that follows.
            let _ = self.store.prefetch(std::slice::from_ref(&n));
            self.window.push_back(n);
        }
        self.window.pop_front()
    }
}

impl<I: Iterator> std::fmt::Debug for Prefetching<'_, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetching")
            .field("ahead", &self.ahead)
            .field("queued", &self.window.len())
            .finish()
    }
}
