//! The write side of a remote store: staging in the local cache, the
//! durable pending record, upload and the conditional commit.

use super::*;

impl RemoteStore {
    /// Stages `array` as the new value of `name` in the local directory; it
    /// is uploaded and committed by [`flush`](Self::flush). Until then
    /// [`get`](Self::get) on this handle returns it. Not durable: a crash
    /// before `flush` loses it (as [`DiskBackedStore::insert`](crate::DiskBackedStore::insert)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`], I/O errors on the local directory.
    pub fn insert<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        let name = name_of(name.as_ref())?;
        self.check_online()?;
        let p = self.stage(&name, &array, false)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p);
        Ok(())
    }

    /// Stores `array` as `name` and commits it to the object store before
    /// returning. The write is staged durably in the local directory first
    /// and kept there until the commit succeeded: after a failure or a
    /// crash, [`flush`](Self::flush) (of this or a later handle on the same
    /// directory) completes it.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] (another writer committed `name` since this
    /// handle saw it; the staged write is dropped), [`Error::Remote`] (the
    /// write stays staged), [`Error::InvalidName`], local I/O errors.
    pub fn insert_durable<T: Element, D: Dimension>(
        &self,
        name: impl AsRef<str>,
        array: Array<T, D>,
    ) -> Result<()> {
        let name = name_of(name.as_ref())?;
        self.check_online()?;
        let mut p = self.stage(&name, &array, true)?;
        self.record(&mut p)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p.clone());
        self.push(p)
    }

    /// Stores the `.npy` file at `path` as `name` and commits it, as
    /// [`insert_durable`](Self::insert_durable) does, without reading the
    /// array into memory: the file is hard-linked (or copied, across file
    /// systems) into the local directory, then uploaded by parts. Use it
    /// with [`NpyStreamWriter`](crate::NpyStreamWriter) for entries larger
    /// than RAM. The file must not be modified afterwards.
    ///
    /// # Errors
    ///
    /// As [`insert_durable`](Self::insert_durable); [`Error::Corrupt`] or
    /// [`Error::Truncated`] if `path` is not a whole `.npy` file.
    pub fn insert_npy_file(&self, name: impl AsRef<str>, path: impl AsRef<FsPath>) -> Result<()> {
        let name = name_of(name.as_ref())?;
        self.check_online()?;
        let src = path.as_ref();
        let (info, len) = NpyInfo::read(src)?;
        info.check_len(len, src)?;
        let unique = protocol::unique_id();
        let file = format!("{}.{unique}.npy", name.as_str());
        let dest = self.objects.join(&file);
        if std::fs::hard_link(src, &dest).is_err() {
            let tmp = self.objects.join(format!(".{unique}.stage.tmp"));
            let copied = std::fs::copy(src, &tmp)
                .ctx("copy", src)
                .and_then(|_| std::fs::rename(&tmp, &dest).ctx("rename", &tmp));
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        let mut p = {
            let mut st = self.state.lock();
            let (base, superseded) = self.register_staged(&mut st, name.as_str(), &file, len);
            Pending {
                name: name.as_str().to_string(),
                file,
                data: protocol::new_data_rel(&name, &unique),
                shape: info.shape.clone(),
                dtype: info.descr.clone(),
                base,
                automatic: false,
                caching: true,
                attrs: None,
                recorded: false,
                superseded,
                remove: false,
            }
        };
        self.record(&mut p)?;
        self.state
            .lock()
            .pending
            .insert(name.as_str().to_string(), p.clone());
        self.push(p)
    }

    /// Stores many entries: stages all of them durably, then uploads and
    /// commits each. Returns the first error after trying all; entries
    /// whose commit failed for another reason than a conflict stay staged.
    ///
    /// # Errors
    ///
    /// As [`insert_durable`](Self::insert_durable).
    pub fn insert_batch<T, D, N, I>(&self, entries: I) -> Result<()>
    where
        T: Element,
        D: Dimension,
        N: AsRef<str>,
        I: IntoIterator<Item = (N, Array<T, D>)>,
    {
        self.check_online()?;
        let mut staged = Vec::new();
        for (n, a) in entries {
            let name = name_of(n.as_ref())?;
            let mut p = self.stage(&name, &a, true)?;
            self.record(&mut p)?;
            self.state
                .lock()
                .pending
                .insert(name.as_str().to_string(), p.clone());
            staged.push(p);
        }
        let mut first = None;
        for p in staged {
            if let Err(e) = self.push(p) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Uploads and commits every staged write. Returns the first error after
    /// trying all; a write that lost a race is dropped (its error is
    /// [`Error::Conflict`]), any other failure keeps it staged, durably.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`], [`Error::Remote`], local I/O errors.
    pub fn flush(&self) -> Result<()> {
        if self.opts.offline {
            let st = self.state.lock();
            if st.pending.is_empty() && st.removals.is_empty() {
                return Ok(());
            }
            drop(st);
            self.check_online()?;
        }
        let mut first = self.flush_removals().err();
        let all: Vec<Pending> = self.state.lock().pending.values().cloned().collect();
        for mut p in all {
            if !p.recorded {
                if let Err(e) = self.record(&mut p) {
                    first.get_or_insert(e);
                    continue;
                }
                if let Some(q) = self.state.lock().pending.get_mut(&p.name) {
                    if q.file == p.file {
                        q.recorded = true;
                        q.superseded = None;
                    }
                }
            }
            if let Err(e) = self.push(p) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Commits the removals whose intent is recorded (see
    /// [`remove`](Self::remove)). Returns the first error after trying all.
    pub(super) fn flush_removals(&self) -> Result<()> {
        let removals: Vec<(String, Option<VersionRec>)> = self
            .state
            .lock()
            .removals
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        let mut first = None;
        for (name, base) in removals {
            if let Err(e) = self.commit_removal(&name, base) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub(super) fn stage<T: Element, D: Dimension>(
        &self,
        name: &EntryName,
        array: &Array<T, D>,
        durable: bool,
    ) -> Result<Pending> {
        let unique = protocol::unique_id();
        let file = format!("{}.{unique}.npy", name.as_str());
        let data = protocol::new_data_rel(name, &unique);
        // Through the seam: `.ndo.<unique>.stage.tmp`, removed on error (and
        // by the next open, as every `*.tmp` of the directory).
        let mut tmp = crate::io::TempFile::create_in(&self.objects_io, "stage", false)?;
        let tmp_path = tmp.path().to_path_buf();
        crate::npy::write_array(
            tmp.writer(),
            array,
            || CacheConfig::default().effective_chunk_budget(),
            &tmp_path,
        )?;
        if durable {
            tmp.flush_and_sync()?;
        } else {
            tmp.flush_and_close()?;
        }
        tmp.rename_into(&file)?;
        let path = self.objects.join(&file);
        let size = std::fs::metadata(&path).ctx("stat", &path)?.len();
        let mut st = self.state.lock();
        let (base, superseded) = self.register_staged(&mut st, name.as_str(), &file, size);
        Ok(Pending {
            name: name.as_str().to_string(),
            file,
            data,
            shape: array.shape().to_vec(),
            dtype: T::dtype(),
            base,
            automatic: false,
            caching: true,
            attrs: None,
            recorded: false,
            superseded,
            remove: false,
        })
    }

    /// Registers `file` (in `objects/`, `size` bytes) as the new staged
    /// write of `name`: a cached copy, replacing any staged write of `name`
    /// (see [`supersede`](Self::supersede)). Returns the version it
    /// replaces and the superseded file.
    pub(super) fn register_staged(
        &self,
        st: &mut State,
        name: &str,
        file: &str,
        size: u64,
    ) -> (Option<VersionRec>, Option<String>) {
        let base = st.view.get(name).map(|s| VersionRec::from(s.version()));
        let superseded = self.supersede(st, name);
        st.order.touch(&file.to_string());
        st.cache.insert(
            file.to_string(),
            Cached {
                size,
                users: Vec::new(),
            },
        );
        (base, superseded)
    }

    /// Takes the staged write of `name` (if any) out of the state, for a new
    /// write of `name` to replace it. An unrecorded one is dropped; a
    /// recorded one's record and staged file stay on disk until the new
    /// write's record replaces that record (see [`record`](Self::record)):
    /// the file is returned, to be carried by the new write.
    pub(super) fn supersede(&self, st: &mut State, name: &str) -> Option<String> {
        // A new write replaces a removal not yet committed, as it replaces
        // the value: its record takes the intent's place (`pending/K.json`,
        // renamed over it), and until then the intent stands.
        st.removals.remove(name);
        let old = st.pending.remove(name)?;
        if old.recorded {
            return Some(old.file);
        }
        // The record on disk, if any, is the one `old` carried.
        self.drop_file(st, &old.file);
        old.superseded
    }

    /// Deletes a staged file, unless a handle still maps it.
    pub(super) fn drop_file(&self, st: &mut State, file: &str) {
        let live = st
            .cache
            .get(file)
            .is_some_and(|c| c.users.iter().any(|u| u.strong_count() > 0));
        if !live {
            st.cache.remove(file);
            st.order.remove(&file.to_string());
            self.objects_io.remove_quietly(file);
        }
    }

    pub(super) fn drop_staged(&self, st: &mut State, p: &Pending) {
        if p.recorded || p.superseded.is_some() {
            self.pending_io.remove_quietly(&format!("{}.json", p.name));
        }
        self.drop_file(st, &p.file);
        if let Some(old) = &p.superseded {
            self.drop_file(st, old);
        }
    }

    /// Makes a staged write durable: fsyncs its file and `objects/` (its
    /// name), then writes its record (synced, renamed into place, `pending/`
    /// synced).
    pub(super) fn record(&self, p: &mut Pending) -> Result<()> {
        if p.recorded {
            return Ok(());
        }
        let path = self.objects.join(&p.file);
        let f = File::open(&path).ctx("open", &path)?;
        crate::io::sync_file(&f, &path)?;
        // The staged file's name too: a record durable without it would be
        // dropped at the next open (a power cut losing a write that
        // `insert_durable` reported as staged).
        self.objects_io.sync()?;
        self.write_record(p, &path)?;
        // The record of the write this one replaced is gone: its file too.
        if let Some(old) = p.superseded.take() {
            let mut st = self.state.lock();
            self.drop_file(&mut st, &old);
        }
        p.recorded = true;
        Ok(())
    }

    /// Writes `p` as `pending/K.json`: a temporary file, `fsync`, renamed
    /// over any record of `K`, `pending/` synced. `path` names the data in
    /// messages.
    pub(super) fn write_record(&self, p: &Pending, path: &FsPath) -> Result<()> {
        let body = serde_json::to_vec(p).map_err(|e| Error::InvalidInput {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut tmp = crate::io::TempFile::create_in(&self.pending_io, "pending", false)?;
        let tmp_path = tmp.path().to_path_buf();
        tmp.writer().write_all(&body).ctx("write", &tmp_path)?;
        tmp.flush_and_sync()?;
        tmp.rename_into(&format!("{}.json", p.name))?;
        self.pending_io.sync()
    }

    /// Uploads and commits one staged write.
    pub(super) fn push(&self, p: Pending) -> Result<()> {
        let (size, crc, started) = self.upload(&p)?;
        self.commit_uploaded(p, size, crc, started)
    }

    /// Uploads the data object of a staged write: its size, CRC-32 and
    /// when the upload started.
    pub(super) fn upload(&self, p: &Pending) -> Result<(u64, u32, std::time::Instant)> {
        let local = self.objects.join(&p.file);
        let dest = protocol::rel_path(&self.loc, &p.data);
        let url = self.loc.url_of(&dest);
        let file = Arc::new(File::open(&local).ctx("open", &local)?);
        let size = file.metadata().ctx("stat", &local)?.len();
        let started = std::time::Instant::now();
        let crc = self
            .rt
            .block_on(transfer::upload_file(
                protocol::client(&self.loc),
                file,
                &local,
                size,
                &dest,
                self.opts.transfer,
            ))
            .map_err(|e| upload_err(&self.loc, "upload", &p.name, url.clone(), e))?;
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_up.fetch_add(size, Ordering::Relaxed);
        Ok((size, crc, started))
    }

    /// Commits a staged write whose data object [`upload`](Self::upload)ed.
    pub(super) fn commit_uploaded(
        &self,
        p: Pending,
        size: u64,
        crc: u32,
        started: std::time::Instant,
    ) -> Result<()> {
        let dest = protocol::rel_path(&self.loc, &p.data);
        let url = self.loc.url_of(&dest);
        if !self.opts.grace.is_zero() && started.elapsed() > self.opts.grace / 2 {
            // gc may already have marked the upload: upload again (flush).
            return Err(Error::Remote {
                op: "commit",
                key: p.name.clone(),
                url,
                kind: RemoteErrorKind::Timeout,
                source: "the upload took longer than half the grace period; flush uploads it again"
                    .into(),
            });
        }
        let mut meta = RemoteMeta::new(
            p.shape.clone(),
            p.dtype.clone(),
            RemoteField {
                version: protocol::REMOTE_VERSION,
                name: p.name.clone(),
                data: p.data.clone(),
                size,
                crc32: crc,
                writer: self.writer.clone(),
                committed_ms: protocol::now_ms(),
            },
        );
        meta.automatic_offloading = p.automatic;
        meta.enable_caching = p.caching;
        meta.ndoffload_attrs = p.attrs.clone().filter(|a| !a.is_empty());
        let base: Option<UpdateVersion> = p.base.clone().map(Into::into);
        let result = self.rt.block_on(protocol::commit(
            &self.loc,
            &p.name,
            base.as_ref(),
            meta.to_bytes(),
        ));
        let mut st = self.state.lock();
        let current = st.pending.get(&p.name).is_some_and(|q| q.file == p.file);
        match result {
            Ok(v) => {
                if current {
                    st.pending.remove(&p.name);
                    self.pending_io.remove_quietly(&format!("{}.json", p.name));
                    self.save_seen(&mut st, &p.name, &meta, &v);
                    st.view
                        .insert(p.name.clone(), Seen::Live(Box::new(meta), v));
                }
                drop(st);
                if current {
                    // The record's removal made durable before the call
                    // returns: after a power cut, a record left of a write
                    // committed and then replaced or removed would be
                    // pushed again by the next open's flush, and fail as a
                    // conflict although the write went through.
                    if let Err(e) = self.pending_io.sync() {
                        tracing::warn!(error = %e, key = p.name.as_str(), "the pending record's removal may not be durable");
                    }
                }
                self.evict();
                Ok(())
            }
            Err(e @ Error::Conflict { .. }) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                // The view stays as it was: stale, so that this handle's
                // next write of the key conflicts too until it reloads.
                if current {
                    if let Some(q) = st.pending.remove(&p.name) {
                        self.drop_staged(&mut st, &q);
                    }
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }
}
