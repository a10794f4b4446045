//! The read side of a remote store: fetching into the local cache,
//! mapping cached copies, `get_or_compute`, and the disk budget.

use super::*;

impl RemoteStore {
    /// Returns the entry `name`, mapped from its copy in the local
    /// directory (downloaded by parallel ranged GETs if this directory has
    /// no copy of its current data object). A write staged by this handle
    /// is returned before it is committed.
    ///
    /// The value is the one this handle last saw: call
    /// [`reload`](Self::reload) or [`refresh`](Self::refresh) first to see
    /// other nodes' newer commits.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`], [`Error::DtypeMismatch`],
    /// [`Error::DimensionMismatch`], [`Error::Corrupt`] (a data object whose
    /// size or checksum differs from its metadata), [`Error::Remote`].
    pub fn get<T: Element, D: Dimension + 'static>(
        &self,
        name: impl AsRef<str>,
    ) -> Result<Arc<DiskBackedArray<T, D>>> {
        let name = name_of(name.as_ref())?;
        let staged = self
            .state
            .lock()
            .pending
            .get(name.as_str())
            .map(|p| p.file.clone());
        if let Some(file) = staged {
            return self.open_cached::<T, D>(&file, None);
        }
        let mut retried = false;
        loop {
            let meta = self.meta_of(name.as_str())?;
            match self.fetch(name.as_str(), &meta) {
                Ok(file) => return self.open_cached::<T, D>(&file, Some(&meta)),
                Err(e) if e.is_not_found() && !retried => {
                    // The data object was collected: the entry changed.
                    retried = true;
                    self.reload(name.as_str())?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ensures the local directory has the data object of `meta`; returns
    /// its local file name.
    pub(super) fn fetch(&self, name: &str, meta: &RemoteMeta) -> Result<String> {
        let r = &meta.ndoffload_remote;
        let url_path = PathBuf::from(&self.loc.url);
        let file = protocol::data_file_name(&r.data, name).ok_or_else(|| {
            Error::corrupt(&url_path, format!("bad data object name {:?}", r.data))
        })?;
        {
            let mut st = self.state.lock();
            let hit = st
                .cache
                .get(&file)
                .is_some_and(|c| c.size == r.size && self.objects.join(&file).exists());
            if hit {
                st.order.touch(&file);
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(file);
            }
        }
        if self.opts.offline {
            return Err(self.not_found(name));
        }
        let src = protocol::rel_path(&self.loc, &r.data);
        let url = self.loc.url_of(&src);
        let tmp = self
            .objects
            .join(format!(".{}.fetch.tmp", protocol::unique_id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        let got = self
            .rt
            .block_on(transfer::download_to_file(
                self.loc.store.clone(),
                &src,
                r.size,
                Arc::new(f),
                &tmp,
                self.opts.transfer,
            ))
            .map_err(|e| upload_err(&self.loc, "download", name, url.clone(), e));
        let crc = match got {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if crc != r.crc32 {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::corrupt(
                &PathBuf::from(url),
                format!("CRC-32 {crc:08x}, but its metadata says {:08x}", r.crc32),
            ));
        }
        let path = self.objects.join(&file);
        if let Err(e) = std::fs::rename(&tmp, &path).ctx("rename", &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.counters.downloads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_down
            .fetch_add(r.size, Ordering::Relaxed);
        let mut st = self.state.lock();
        st.order.touch(&file);
        st.cache.insert(
            file.clone(),
            Cached {
                size: r.size,
                users: Vec::new(),
            },
        );
        Ok(file)
    }

    pub(super) fn open_cached<T: Element, D: Dimension + 'static>(
        &self,
        file: &str,
        meta: Option<&RemoteMeta>,
    ) -> Result<Arc<DiskBackedArray<T, D>>> {
        let path = self.objects.join(file);
        let arr = DiskBackedArray::<T, D>::open(&path, &CacheConfig::default())?;
        if let Some(m) = meta {
            if arr.shape() != m.shape.as_slice() {
                return Err(Error::Mismatch {
                    path: PathBuf::from(&self.loc.url)
                        .join("meta")
                        .join(format!("{}.meta.json", m.ndoffload_remote.name)),
                    field: "shape",
                    found: format!("{:?}", m.shape),
                    expected: format!("{:?}", arr.shape()),
                    other: path,
                });
            }
        }
        let arr = Arc::new(arr);
        let any: Arc<dyn Any + Send + Sync> = arr.clone();
        {
            let mut st = self.state.lock();
            if let Some(c) = st.cache.get_mut(file) {
                c.users.retain(|u| u.strong_count() > 0);
                c.users.push(Arc::downgrade(&any));
            }
        }
        self.evict();
        Ok(arr)
    }

    /// Returns `name` if it exists, else computes it with `f`, commits it
    /// and returns it. If another node commits `name` first, its value is
    /// returned (and `f`'s result dropped).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get) and [`insert_durable`](Self::insert_durable).
    pub fn get_or_compute<T, D, F>(
        &self,
        name: impl AsRef<str>,
        f: F,
    ) -> Result<Arc<DiskBackedArray<T, D>>>
    where
        T: Element,
        D: Dimension + 'static,
        F: FnOnce() -> Array<T, D>,
    {
        let name = name.as_ref();
        match self.get::<T, D>(name) {
            Err(e) if e.is_not_found() => {}
            other => return other,
        }
        match self.insert_durable(name, f()) {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => {
                self.reload(name)?;
            }
            Err(e) => return Err(e),
        }
        self.get(name)
    }

    /// Deletes clean cached copies, least recently used first, until the
    /// disk budget holds. Copies in use by a returned array and staged
    /// writes are kept.
    pub(super) fn evict(&self) {
        self.evict_except("");
    }

    /// As [`evict`](Self::evict), keeping the cached copy `keep` (a file
    /// about to be mapped).
    pub(super) fn evict_except(&self, keep: &str) {
        let Some(budget) = self.opts.disk_budget else {
            return;
        };
        if self.opts.offline {
            // An evicted copy could not be downloaded again.
            return;
        }
        let budget = budget.bytes();
        let mut st = self.state.lock();
        let staged: std::collections::HashSet<String> =
            st.pending.values().map(|p| p.file.clone()).collect();
        let mut total: u64 = st.cache.values().map(|c| c.size).sum();
        if total <= budget {
            return;
        }
        let mut order = Vec::new();
        for f in st.order.oldest_first() {
            if staged.contains(&f) || f == keep {
                continue;
            }
            if let Some(c) = st.cache.get_mut(&f) {
                c.users.retain(|u| u.strong_count() > 0);
                if c.users.is_empty() {
                    order.push(f);
                }
            }
        }
        for f in order {
            if total <= budget {
                break;
            }
            st.order.remove(&f);
            if let Some(c) = st.cache.remove(&f) {
                let _ = std::fs::remove_file(self.objects.join(&f));
                total = total.saturating_sub(c.size);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
