//! Read-ahead of offloaded entries: [`DiskBackedStore::prefetch`] and the
//! [`Prefetching`] iterator adaptor, so that a pass over entries on disk
//! reads at the disk's speed while the caller computes.
//!
//! [`prefetch`](DiskBackedStore::prefetch) is a hint that returns at once:
//! `posix_fadvise(POSIX_FADV_WILLNEED)` on each entry's data file.
//!
//! [`Prefetching`] does more, because a hint alone leaves a mapped read
//! 0.5-0.6x as fast as a plain `read` of the same files with a cold page
//! cache: the hint blocks the caller while the kernel queues the whole
//! file's I/O, the metadata file is still read synchronously by the look-up,
//! and the faults of a mapping read the file in synchronous read-around
//! windows. The iterator therefore starts one reader thread that runs up to
//! `ahead` entries ahead of the caller: for each entry it reads the
//! metadata file, then the data file sequentially (as `cat` does, so that
//! the kernel's asynchronous read-ahead keeps the disk busy) with
//! `sendfile(2)` to `/dev/null`, which brings the pages into the page cache
//! without copying them (`read(2)` into a 1 MiB buffer where that is
//! refused). The caller's map of the entry then finds
//! every page in the page cache and faults only on page-table entries.
//! Nothing is mapped or counted as resident by the reader (the pages are
//! the kernel's, reclaimable cache); the entries ahead are at most the
//! memory budget's worth of bytes (and at least one entry).

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::inner::DiskBackedStore;
use super::storage::Storage;
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
    /// This is a hint to the kernel (`posix_fadvise(WILLNEED)`); for a pass
    /// over many entries in order, [`prefetching`](Self::prefetching) reads
    /// ahead on a thread of its own and is faster.
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

    /// Read-ahead hint for one entry; the bytes requested.
    fn prefetch_one(&self, name: &EntryName) -> u64 {
        if !self.on_disk(name) {
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

    /// Whether `name` is an entry whose data is not held in RAM (a missing
    /// entry is not).
    fn on_disk(&self, name: &EntryName) -> bool {
        let slot = self.inner.entries.read().get(name).cloned();
        let Some(slot) = slot else { return false };
        let in_ram = slot
            .lock()
            .loaded
            .as_ref()
            .is_some_and(|l| l.state() == ArrayState::InMemory);
        !in_ram
    }

    /// Wraps a sequence of entry names: each name is yielded in order while
    /// a reader thread reads the files of the `ahead` names after it into
    /// the page cache (see the module documentation), so that reading the
    /// entries in order runs at the disk's sequential speed while the
    /// caller computes. The entries ahead are at most the memory budget's
    /// worth of bytes (and at least one). Dropping the iterator stops the
    /// reader (it finishes the file it is reading, in 1 MiB steps).
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
            cap: self.inner.budget().unwrap_or(u64::MAX),
            reader: None,
            next_seq: 0,
        }
    }
}

/// An iterator over entry names that reads the next ones ahead on a
/// thread of its own ([`DiskBackedStore::prefetching`]).
pub struct Prefetching<'s, I: Iterator> {
    store: &'s DiskBackedStore,
    names: I,
    /// Names not yielded yet, with their sequence number when they were
    /// handed to the reader.
    window: VecDeque<(I::Item, Option<u64>)>,
    ahead: usize,
    /// Bytes the reader may have read ahead (the memory budget).
    cap: u64,
    /// Started with the first entry on disk.
    reader: Option<Reader>,
    next_seq: u64,
}

/// What the caller and the reader thread share.
#[derive(Default)]
struct Progress {
    /// Entries the caller has taken (sequence numbers below are done).
    taken: u64,
    /// Entries read or being read ahead and not taken yet: (sequence, bytes).
    ahead: VecDeque<(u64, u64)>,
    stop: bool,
}

struct ReaderShared {
    progress: Mutex<Progress>,
    changed: Condvar,
    /// Nanoseconds the reader spent reading.
    busy_ns: AtomicU64,
}

/// The reader thread of a [`Prefetching`].
struct Reader {
    tx: Option<Sender<(u64, EntryName)>>,
    shared: Arc<ReaderShared>,
    handle: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(storage: Arc<dyn Storage>, cap: u64) -> Option<Self> {
        let (tx, rx) = channel::<(u64, EntryName)>();
        let shared = Arc::new(ReaderShared {
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
            busy_ns: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let handle = std::thread::Builder::new()
            .name("ndarray-offload-prefetch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
                let null = null.ok();
                while let Ok((seq, name)) = rx.recv() {
                    let go_on =
                        read_ahead(&*storage, seq, &name, null.as_ref(), &mut buf, &sh, cap);
                    if !go_on {
                        return;
                    }
                }
            });
        match handle {
            Ok(h) => Some(Reader {
                tx: Some(tx),
                shared,
                handle: Some(h),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "no prefetch thread");
                None
            }
        }
    }

    /// The caller took the entry `seq` (and every one before it).
    fn taken(&self, seq: u64) {
        let mut p = self.shared.progress.lock();
        p.taken = p.taken.max(seq + 1);
        let taken = p.taken;
        while p.ahead.front().is_some_and(|&(s, _)| s < taken) {
            p.ahead.pop_front();
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.shared.progress.lock().stop = true;
        self.shared.changed.notify_all();
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads `name`'s metadata and data files into the page cache, once the
/// bytes read ahead and not taken leave room for it (within `cap`, or
/// nothing else ahead). Failures are left for the read that follows to
/// report. Returns `false` when the reader is to stop.
fn read_ahead(
    storage: &dyn Storage,
    seq: u64,
    name: &EntryName,
    null: Option<&std::fs::File>,
    buf: &mut [u8],
    shared: &ReaderShared,
    cap: u64,
) -> bool {
    let _ = storage.read_meta(name);
    let Ok(mut f) = storage.open_data(name, io::Access::Read) else {
        return true;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    {
        let mut p = shared.progress.lock();
        loop {
            if p.stop {
                return false;
            }
            if seq < p.taken {
                return true; // the caller is past it already
            }
            let used: u64 = p.ahead.iter().map(|a| a.1).sum();
            if p.ahead.is_empty() || used.saturating_add(len) <= cap {
                break;
            }
            shared.changed.wait(&mut p);
        }
        p.ahead.push_back((seq, len));
    }
    let started = Instant::now();
    let go_on = fill(&mut f, name, null, buf, shared);
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
    go_on
}

/// Reads `f` to its end (see [`read_ahead`]); `false` when the reader is to
/// stop.
fn fill(
    f: &mut std::fs::File,
    name: &EntryName,
    null: Option<&std::fs::File>,
    buf: &mut [u8],
    shared: &ReaderShared,
) -> bool {
    // `sendfile` to /dev/null reads the file into the page cache (with the
    // kernel's read-ahead) without copying it to user memory; `read` into
    // the buffer where that is refused.
    let mut splice = null;
    loop {
        if shared.progress.lock().stop {
            return false;
        }
        let step = match splice {
            Some(null) => match rustix::fs::sendfile(null, &*f, None, 8 << 20) {
                Ok(n) => Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    splice = None; // retried with `read`
                    continue;
                }
            },
            None => f.read(buf),
        };
        match step {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(name = name.as_str(), error = %e, "read-ahead failed");
                return true;
            }
        }
    }
}

impl<I> Iterator for Prefetching<'_, I>
where
    I: Iterator,
    I::Item: AsRef<str>,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        // The name yielded now, and `ahead` after it.
        while self.window.len() <= self.ahead {
            let Some(n) = self.names.next() else { break };
            let seq = self.queue(&n);
            self.window.push_back((n, seq));
        }
        let (n, seq) = self.window.pop_front()?;
        if let (Some(seq), Some(r)) = (seq, &self.reader) {
            r.taken(seq);
        }
        Some(n)
    }
}

impl<I: Iterator> Prefetching<'_, I> {
    /// Time the reader thread spent reading data files ahead so far
    /// (waiting for the disk included, waiting for room within the memory
    /// budget not): I/O the caller did not wait for, unless it caught up
    /// with the reader.
    pub fn read_time(&self) -> Duration {
        self.reader.as_ref().map_or(Duration::ZERO, |r| {
            Duration::from_nanos(r.shared.busy_ns.load(Ordering::Relaxed))
        })
    }
}

impl<I> Prefetching<'_, I>
where
    I: Iterator,
    I::Item: AsRef<str>,
{
    /// Hands `n` to the reader if it is an entry not held in RAM; its
    /// sequence number.
    fn queue(&mut self, n: &I::Item) -> Option<u64> {
        // An invalid name is reported by the read that follows.
        let name = EntryName::new(n.as_ref()).ok()?;
        if !self.store.on_disk(&name) {
            return None;
        }
        if self.reader.is_none() {
            self.reader = Reader::start(self.store.inner.storage.clone(), self.cap);
        }
        let tx = self.reader.as_ref()?.tx.as_ref()?;
        let seq = self.next_seq;
        tx.send((seq, name)).ok()?;
        self.next_seq += 1;
        Some(seq)
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
