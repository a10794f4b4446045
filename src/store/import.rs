//! Storing a `.npy` file as an entry without reading it into memory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::storage::{PairJob, SyncMode};
use std::sync::Arc;

use parking_lot::Mutex;

use super::entry::{retire_slot, with_entry_stopped, Slot};
use super::inner::DiskBackedStore;
use crate::config::ConfigOverrides;
use crate::error::IoContext;
use crate::error::{Error, Result};
use crate::io;
use crate::name::EntryName;
use crate::npy::NpyInfo;

impl DiskBackedStore {
    /// Stores the `.npy` file at `path` as `name`, durably, without reading
    /// it into memory: it is copied into the store (through the page cache,
    /// a bounded buffer at a time) and published as `insert_durable`
    /// publishes. Over an object store (`StoreBuilder::remote`), the copy
    /// in the local cache is uploaded by parts and committed. Use it with
    /// [`NpyStreamWriter`](crate::NpyStreamWriter) for entries larger than
    /// RAM; the entry is then read by mapping it, like any entry on disk.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], [`Error::ReadOnly`], [`Error::Corrupt`] or
    /// [`Error::Truncated`] if `path` is not a whole `.npy` file (a FIFO, a
    /// directory or a symbolic link is refused), I/O errors (the previous
    /// value stays, in RAM and on disk), [`Error::Conflict`] over an object
    /// store.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{Array2, Ix2};
    /// use ndarray_offload::{DiskBackedStore, NpyStreamWriter};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let big = dir.path().join("big.npy");
    /// let mut w = NpyStreamWriter::<f32, Ix2>::create(&big, &[1000, 3])?;
    /// for _ in 0..10 {
    ///     w.write_chunk(&Array2::<f32>::ones((100, 3)))?; // a chunk at a time
    /// }
    /// w.finish()?;
    /// let store = DiskBackedStore::open(dir.path().join("store"))?;
    /// store.insert_npy_file("points", &big)?;
    /// assert_eq!(store.get::<f32, Ix2>("points")?.read()?.nrows(), 1000);
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn insert_npy_file(&self, name: impl AsRef<str>, path: impl AsRef<Path>) -> Result<()> {
        self.check_writable()?;
        let name = EntryName::new(name.as_ref())?;
        let path = path.as_ref();
        let src = io::open_regular(path, io::Access::Read)?;
        let (info, len) = NpyInfo::read(path)?;
        info.check_len(len, path)?;
        if src.metadata().ctx("stat", path)?.len() != len {
            return Err(Error::corrupt(path, "changed while it was read"));
        }
        let (flags, _) = self.flags_for(&ConfigOverrides::default());
        // The entry it replaces stops publishing (its handles keep their
        // data), as for a removal; it publishes again if this fails.
        let old = self
            .inner
            .entries
            .read()
            .get(&name)
            .and_then(|s| s.lock().loaded.clone());
        let publish = AtomicBool::new(true);
        let published = AtomicU64::new(0);
        let source = path.to_path_buf();
        let job = PairJob {
            name: &name,
            shape: info.shape.clone(),
            dtype: info.descr.clone(),
            flags,
            attrs: None,
            publish: &publish,
            version: 1,
            published: &published,
            write_npy: Box::new(move |w, _target| {
                let mut r = &src;
                std::io::copy(&mut r, w).ctx("copy", &source)?;
                Ok(())
            }),
            image: None,
            extra: None,
            unless: None,
        };
        let r = with_entry_stopped(old.as_ref(), || {
            self.inner.storage.publish(vec![job], SyncMode::PerFile)
        });
        if let Err(e) = r {
            return self.inner.settle(Err(e));
        }
        // The new pair is the entry now, read lazily.
        {
            let mut entries = self.inner.entries.write();
            let prev = entries.insert(name.clone(), Arc::new(Mutex::new(Slot::default())));
            if let Some(prev) = prev {
                retire_slot(&prev, true);
            }
        }
        self.inner.lru.lock().remove(&name);
        self.inner.incomplete.write().remove(&name);
        self.inner.account.disk_touch(&name, Some(false));
        self.inner.enforce_disk_budget();
        Ok(())
    }
}
