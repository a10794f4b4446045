//! Storages that wrap another at the seam, for tests (feature `testing`
//! only): [`Faulty`] fails the N-th seam call, so that faults reach
//! backends without file-system operations to count (an object store),
//! and [`IgnoresVersions`] is a deliberately broken backend, the one the
//! conformance suite must reject.
//!
//! The store opens them through a [`WrapStorage`] set on its
//! [`StoreBuilder`](crate::StoreBuilder) (`__testing::open_with_seam_faults`,
//! `__testing::open_ignoring_versions`): the wrapper takes whichever
//! storage the builder opened, a local directory or an object store.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{
    Checked, Lease, Listing, LockMode, PairJob, Published, Recovered, Storage, SyncMode, WriterInfo,
};
use crate::error::{Error, Result};
use crate::io::{self, FileId, Found};
use crate::name::EntryName;
use crate::npy::NpyInfo;
use crate::store::meta::{Attrs, Meta};

/// Makes the storage a store uses from the one it opened.
pub(crate) type WrapFn = dyn Fn(Arc<dyn Storage>) -> Arc<dyn Storage> + Send + Sync;

/// Wraps the storage a store opened (see the module documentation).
#[derive(Clone)]
pub(crate) struct WrapStorage(pub Arc<WrapFn>);

impl fmt::Debug for WrapStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WrapStorage")
    }
}

/// A call of the storage seam that can fail (the calls that return a
/// `Result`; the ones that only name paths or look without failing are
/// neither counted nor failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SeamOp {
    /// Taking the store's lock (or nothing, for a reader) at open.
    Lock,
    /// Listing the entries (open, `refresh`).
    List,
    /// Recovering interrupted operations (writable opens).
    Recover,
    /// Reading an entry's metadata.
    ReadMeta,
    /// Reading an entry's `.npy` header.
    ReadHeader,
    /// Opening an entry's data for mapping.
    OpenData,
    /// Publishing one or more entries.
    Publish,
    /// Removing an entry.
    Remove,
    /// Making spilled publishes durable.
    Sync,
    /// Replacing an entry's attributes.
    SetAttrs,
    /// Reading an entry's metadata and data together.
    ReadChecked,
    /// Listing the live writers.
    Writers,
    /// Taking an entry's compute lock.
    ComputeLock,
}

impl SeamOp {
    /// What was being done, for [`Error::Io`]'s `op`.
    fn verb(self) -> &'static str {
        match self {
            SeamOp::Lock => "lock",
            SeamOp::List => "list",
            SeamOp::Recover => "recover",
            SeamOp::ReadMeta => "read the metadata of",
            SeamOp::ReadHeader => "read the header of",
            SeamOp::OpenData => "open the data of",
            SeamOp::Publish => "publish",
            SeamOp::Remove => "remove",
            SeamOp::Sync => "sync",
            SeamOp::SetAttrs => "set the attributes of",
            SeamOp::ReadChecked => "read",
            SeamOp::Writers => "list the writers of",
            SeamOp::ComputeLock => "take the compute lock of",
        }
    }
}

/// One seam call a [`SeamFaults`] plan saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeamCall {
    /// The call.
    pub op: SeamOp,
    /// The entries it names (a publish may name several; none for a
    /// listing or a lock).
    pub entries: Vec<String>,
    /// Its number among the calls the plan counts (`0`: not counted, see
    /// [`SeamFaults::only`]).
    pub number: u64,
    /// Whether the plan failed it.
    pub injected: bool,
}

/// A plan of faults at the storage seam: fails the N-th seam call (of
/// every kind, or of one [`SeamOp`] with [`only`](Self::only)) of every
/// store opened with it (`__testing::open_with_seam_faults`; one plan may
/// serve several handles, which then share its counter), with a typed
/// [`Error::Io`] saying that the fault was injected, and records the calls.
/// Clones share the counter and the record.
#[derive(Clone, Debug)]
pub struct SeamFaults {
    fail_at: u64,
    only: Option<SeamOp>,
    after: bool,
    state: Arc<PlanState>,
}

#[derive(Debug, Default)]
struct PlanState {
    count: AtomicU64,
    fired: AtomicBool,
    log: parking_lot::Mutex<Vec<SeamCall>>,
}

impl SeamFaults {
    /// A plan that fails call number `n` (1-based); `0` never fails and
    /// only counts and records.
    pub fn fail_at(n: u64) -> Self {
        SeamFaults {
            fail_at: n,
            only: None,
            after: false,
            state: Arc::default(),
        }
    }

    /// Counts (and fails) only the calls of `op`; the others are recorded
    /// with number `0`.
    pub fn only(mut self, op: SeamOp) -> Self {
        self.only = Some(op);
        self
    }

    /// With `on`, the failing call is made first and its result replaced
    /// by the fault (the operation took effect, the caller is told it
    /// failed: a lost answer); by default it fails without being made.
    pub fn after_call(mut self, on: bool) -> Self {
        self.after = on;
        self
    }

    /// The calls counted so far.
    pub fn count(&self) -> u64 {
        self.state.count.load(Ordering::Relaxed)
    }

    /// Whether the fault was injected.
    pub fn fired(&self) -> bool {
        self.state.fired.load(Ordering::Relaxed)
    }

    /// The calls seen, in order.
    pub fn calls(&self) -> Vec<SeamCall> {
        self.state.log.lock().clone()
    }

    /// Counts and records one call; `true` when it is the one to fail.
    fn tick(&self, op: SeamOp, entries: Vec<String>) -> Option<u64> {
        let counted = self.only.is_none_or(|o| o == op);
        let mut log = self.state.log.lock();
        let number = if counted {
            self.state.count.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            0
        };
        let injected = counted && number == self.fail_at;
        if injected {
            self.state.fired.store(true, Ordering::Relaxed);
        }
        log.push(SeamCall {
            op,
            entries,
            number,
            injected,
        });
        injected.then_some(number)
    }
}

/// A [`Storage`] that fails the calls its [`SeamFaults`] plan names.
#[derive(Debug)]
pub(crate) struct Faulty {
    inner: Arc<dyn Storage>,
    plan: SeamFaults,
}

impl Faulty {
    pub(crate) fn new(inner: Arc<dyn Storage>, plan: SeamFaults) -> Self {
        Faulty { inner, plan }
    }

    /// Runs `call` as the plan says: made, failed, or made and then failed.
    fn run<R>(
        &self,
        op: SeamOp,
        entry: Option<&EntryName>,
        call: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let entries = entry.map(|e| vec![e.to_string()]).unwrap_or_default();
        self.run_named(op, entries, entry, call)
    }

    fn run_named<R>(
        &self,
        op: SeamOp,
        entries: Vec<String>,
        entry: Option<&EntryName>,
        call: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let Some(n) = self.plan.tick(op, entries) else {
            return call();
        };
        if self.plan.after {
            // What the call did stands (a lease it took is released).
            drop(call());
        }
        let path = match entry {
            Some(e) => self.inner.meta_path(e),
            None => self.inner.location().to_path_buf(),
        };
        Err(Error::Io {
            path,
            op: op.verb(),
            source: std::io::Error::other(format!(
                "injected fault at seam call #{n} ({op:?}){}",
                if self.plan.after {
                    ", after the call was made"
                } else {
                    ""
                }
            )),
        })
    }
}

impl Storage for Faulty {
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }

    fn holds_copies(&self) -> bool {
        self.inner.holds_copies()
    }

    fn drop_copy(&self, name: &EntryName) -> Result<bool> {
        self.inner.drop_copy(name)
    }

    fn windows_held(&self) -> Vec<(EntryName, u64)> {
        self.inner.windows_held()
    }

    fn window_bytes(&self, name: &EntryName) -> Option<u64> {
        self.inner.window_bytes(name)
    }

    fn drop_window(&self, name: &EntryName) -> Result<Option<u64>> {
        self.inner.drop_window(name)
    }

    fn staged(&self) -> Vec<EntryName> {
        self.inner.staged()
    }

    fn remote_stats(&self) -> Option<super::RemoteStats> {
        self.inner.remote_stats()
    }

    fn location(&self) -> &Path {
        self.inner.location()
    }
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn data_path(&self, name: &EntryName) -> PathBuf {
        self.inner.data_path(name)
    }
    fn meta_path(&self, name: &EntryName) -> PathBuf {
        self.inner.meta_path(name)
    }
    fn lock(&self, mode: LockMode) -> Result<Box<dyn Lease>> {
        self.run(SeamOp::Lock, None, || self.inner.lock(mode))
    }
    fn list(&self) -> Result<Listing> {
        self.run(SeamOp::List, None, || self.inner.list())
    }
    fn recover(&self, pending: &[String]) -> Result<Recovered> {
        self.run(SeamOp::Recover, None, || self.inner.recover(pending))
    }
    fn read_meta(&self, name: &EntryName) -> Result<Meta> {
        self.run(SeamOp::ReadMeta, Some(name), || self.inner.read_meta(name))
    }
    fn read_header(&self, name: &EntryName) -> Result<NpyInfo> {
        self.run(SeamOp::ReadHeader, Some(name), || {
            self.inner.read_header(name)
        })
    }
    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File> {
        self.run(SeamOp::OpenData, Some(name), || {
            self.inner.open_data(name, access)
        })
    }
    fn stat_data(&self, name: &EntryName) -> Option<Found> {
        self.inner.stat_data(name)
    }
    fn exists(&self, name: &EntryName) -> bool {
        self.inner.exists(name)
    }
    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>> {
        let names: Vec<String> = jobs.iter().map(|j| j.name.to_string()).collect();
        let first = jobs.first().map(|j| j.name.clone());
        self.run_named(SeamOp::Publish, names, first.as_ref(), || {
            self.inner.publish(jobs, sync)
        })
    }
    fn remove(&self, name: &EntryName) -> Result<()> {
        self.run(SeamOp::Remove, Some(name), || self.inner.remove(name))
    }
    fn sync(&self) -> Result<()> {
        self.run(SeamOp::Sync, None, || self.inner.sync())
    }
    fn has_unsynced(&self) -> bool {
        self.inner.has_unsynced()
    }
    fn set_attrs(&self, name: &EntryName, attrs: &Attrs) -> Result<()> {
        self.run(SeamOp::SetAttrs, Some(name), || {
            self.inner.set_attrs(name, attrs)
        })
    }
    fn is_pair(&self, name: &EntryName) -> bool {
        self.inner.is_pair(name)
    }
    fn read_checked(&self, name: &EntryName) -> Result<Checked> {
        self.run(SeamOp::ReadChecked, Some(name), || {
            self.inner.read_checked(name)
        })
    }
    fn writers(&self) -> Result<Vec<WriterInfo>> {
        self.run(SeamOp::Writers, None, || self.inner.writers())
    }
    fn is_current(&self, name: &EntryName, id: FileId, token: Option<&str>) -> bool {
        self.inner.is_current(name, id, token)
    }
    fn take_lost(&self) -> Vec<EntryName> {
        self.inner.take_lost()
    }
    fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<dyn Lease>>> {
        self.run(SeamOp::ComputeLock, Some(name), || {
            self.inner.compute_lock(name, timeout)
        })
    }
}

/// A deliberately broken [`Storage`]: it does not check versions. It says
/// that whatever data file a handle holds is still the entry's current
/// version ([`Storage::is_current`] is always `true`), so a handle that
/// read an entry goes on reading it after another handle replaced or
/// removed it, even after `refresh`. Everything else is the wrapped
/// storage's.
#[derive(Debug)]
pub(crate) struct IgnoresVersions {
    inner: Arc<dyn Storage>,
}

impl IgnoresVersions {
    pub(crate) fn new(inner: Arc<dyn Storage>) -> Self {
        IgnoresVersions { inner }
    }
}

impl Storage for IgnoresVersions {
    fn as_any(&self) -> &dyn std::any::Any {
        self.inner.as_any()
    }

    fn holds_copies(&self) -> bool {
        self.inner.holds_copies()
    }

    fn drop_copy(&self, name: &EntryName) -> Result<bool> {
        self.inner.drop_copy(name)
    }

    fn windows_held(&self) -> Vec<(EntryName, u64)> {
        self.inner.windows_held()
    }

    fn window_bytes(&self, name: &EntryName) -> Option<u64> {
        self.inner.window_bytes(name)
    }

    fn drop_window(&self, name: &EntryName) -> Result<Option<u64>> {
        self.inner.drop_window(name)
    }

    fn staged(&self) -> Vec<EntryName> {
        self.inner.staged()
    }

    fn remote_stats(&self) -> Option<super::RemoteStats> {
        self.inner.remote_stats()
    }

    fn location(&self) -> &Path {
        self.inner.location()
    }
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn data_path(&self, name: &EntryName) -> PathBuf {
        self.inner.data_path(name)
    }
    fn meta_path(&self, name: &EntryName) -> PathBuf {
        self.inner.meta_path(name)
    }
    fn lock(&self, mode: LockMode) -> Result<Box<dyn Lease>> {
        self.inner.lock(mode)
    }
    fn list(&self) -> Result<Listing> {
        self.inner.list()
    }
    fn recover(&self, pending: &[String]) -> Result<Recovered> {
        self.inner.recover(pending)
    }
    fn read_meta(&self, name: &EntryName) -> Result<Meta> {
        self.inner.read_meta(name)
    }
    fn read_header(&self, name: &EntryName) -> Result<NpyInfo> {
        self.inner.read_header(name)
    }
    fn open_data(&self, name: &EntryName, access: io::Access) -> Result<File> {
        self.inner.open_data(name, access)
    }
    fn stat_data(&self, name: &EntryName) -> Option<Found> {
        self.inner.stat_data(name)
    }
    fn exists(&self, name: &EntryName) -> bool {
        self.inner.exists(name)
    }
    fn publish(&self, jobs: Vec<PairJob<'_>>, sync: SyncMode) -> Result<Vec<Option<Published>>> {
        self.inner.publish(jobs, sync)
    }
    fn remove(&self, name: &EntryName) -> Result<()> {
        self.inner.remove(name)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn has_unsynced(&self) -> bool {
        self.inner.has_unsynced()
    }
    fn set_attrs(&self, name: &EntryName, attrs: &Attrs) -> Result<()> {
        self.inner.set_attrs(name, attrs)
    }
    fn is_pair(&self, name: &EntryName) -> bool {
        self.inner.is_pair(name)
    }
    fn read_checked(&self, name: &EntryName) -> Result<Checked> {
        self.inner.read_checked(name)
    }
    fn writers(&self) -> Result<Vec<WriterInfo>> {
        self.inner.writers()
    }
    fn is_current(&self, _name: &EntryName, _id: FileId, _token: Option<&str>) -> bool {
        // The breakage: no version is ever checked.
        true
    }
    fn take_lost(&self) -> Vec<EntryName> {
        self.inner.take_lost()
    }
    fn compute_lock(
        &self,
        name: &EntryName,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<dyn Lease>>> {
        self.inner.compute_lock(name, timeout)
    }
}
