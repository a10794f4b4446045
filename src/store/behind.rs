//! Write-behind spills: eviction hands an entry to background writer
//! threads and returns; the entry's RAM is released by the writer once its
//! pair is written and `fsync`ed (a spill: see `SyncMode::Spill`).
//!
//! The writers hold no store lock and never wait for an entry lock: a job
//! try-locks its entry (`try_offload`) and, if a guard holds it, gives the
//! entry back to the store's least-recently-used order (through
//! [`WriteBehind::take_requeued`], drained by the store's own threads) and
//! leaves it in RAM. They never hold the store (`Inner`) either, so the
//! store is never dropped on a writer thread and `flush` may wait for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::entry::Loaded;
use crate::array::ArrayState;
use crate::error::Error;
use crate::io;
use crate::name::EntryName;

/// How many writer threads, and how many bytes may be in flight
/// (`threads == 0`: no write-behind, every spill is synchronous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriteBehindConfig {
    pub threads: usize,
    pub max_in_flight: u64,
}

/// Entries of at least this many bytes are written behind by default when
/// a memory budget is set: one file of a mebibyte or more takes long enough
/// to write that overlapping it with the caller's work pays, while smaller
/// spills cost little more than their per-file work and stay synchronous.
pub(crate) const DEFAULT_MIN_BYTES: u64 = 1 << 20;

/// At most this many bytes are in flight by default (and a quarter of the
/// budget at most).
pub(crate) const DEFAULT_MAX_IN_FLIGHT: u64 = 64 << 20;

/// Which spills are written behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// None: every spill is written by the evicting call
    /// (`StoreBuilder::write_behind(0, _)`, a read-only store, or a store
    /// over an object store that did not ask for it).
    Off,
    /// Every spill of an entry held in RAM, by writers started when the
    /// store opens (`StoreBuilder::write_behind`).
    Always,
    /// The default: while a memory budget is set, spills of entries of at
    /// least [`DEFAULT_MIN_BYTES`], by one writer started at the first such
    /// spill, with at most a quarter of the budget (and at most
    /// [`DEFAULT_MAX_IN_FLIGHT`]) in flight.
    Large,
}

impl Policy {
    /// The writers' configuration of the default, for `budget`.
    pub(crate) fn default_config(budget: u64) -> WriteBehindConfig {
        WriteBehindConfig {
            threads: 1,
            max_in_flight: (budget / 4).min(DEFAULT_MAX_IN_FLIGHT),
        }
    }
}

#[cfg(feature = "testing")]
thread_local! {
    static MIN_BYTES_OVERRIDE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Sets the calling thread's override of [`DEFAULT_MIN_BYTES`] (see
/// `__testing::set_write_behind_min_bytes`).
#[cfg(feature = "testing")]
pub(crate) fn set_min_bytes(n: Option<u64>) {
    MIN_BYTES_OVERRIDE.with(|c| c.set(n));
}

/// [`DEFAULT_MIN_BYTES`], or the calling thread's override (tests of the
/// default with small entries).
pub(crate) fn min_bytes() -> u64 {
    #[cfg(feature = "testing")]
    if let Some(n) = MIN_BYTES_OVERRIDE.with(std::cell::Cell::get) {
        return n;
    }
    DEFAULT_MIN_BYTES
}

#[cfg(feature = "testing")]
type Plan = Option<Arc<io::testing::FaultPlan>>;
#[cfg(not(feature = "testing"))]
type Plan = io::NoPlan;

struct Job {
    name: EntryName,
    entry: Loaded,
    bytes: u64,
    /// The fault plan of the thread that evicted (tests only).
    plan: Plan,
}

#[derive(Default)]
struct Flight {
    bytes: u64,
    jobs: usize,
}

/// What the writers share with the store.
struct Shared {
    flight: Mutex<Flight>,
    changed: Condvar,
    /// The first failure not yet reported.
    error: Mutex<Option<Error>>,
    /// Entries written behind and released.
    written: AtomicU64,
    /// Background writes that failed (the entry stayed in RAM).
    failures: AtomicU64,
    /// Nanoseconds the writers spent writing.
    busy_ns: AtomicU64,
    /// Entries the writers gave back (a guard held them, or the write
    /// failed): the store puts them back into its least-recently-used order.
    requeued: Mutex<Vec<EntryName>>,
}

/// The store's write-behind writers (see the module documentation).
pub(crate) struct WriteBehind {
    config: WriteBehindConfig,
    tx: Mutex<Option<SyncSender<Job>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl WriteBehind {
    /// Starts `config.threads` writers (at least one).
    pub(crate) fn start(config: WriteBehindConfig) -> std::io::Result<Self> {
        let threads = config.threads.max(1);
        let (tx, rx) = sync_channel::<Job>(threads * 4);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            flight: Mutex::new(Flight::default()),
            changed: Condvar::new(),
            error: Mutex::new(None),
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            requeued: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::new();
        for i in 0..threads {
            let (rx, shared) = (rx.clone(), shared.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("ndarray-offload-write-{i}"))
                    .spawn(move || writer(&rx, &shared))?,
            );
        }
        Ok(WriteBehind {
            config,
            tx: Mutex::new(Some(tx)),
            shared,
            threads: Mutex::new(handles),
        })
    }

    /// Bytes of entries handed to the writers and not yet released.
    pub(crate) fn in_flight(&self) -> u64 {
        self.shared.flight.lock().bytes
    }

    /// Hands `entry` (of `bytes` resident bytes, marked as written behind
    /// by the caller) to the writers. Waits while the in-flight bound would
    /// be exceeded (unless nothing is in flight). The caller holds no entry
    /// lock it waits on and the writers take no store lock, so the wait
    /// ends. Returns the entry if the writers are stopped.
    pub(crate) fn submit(&self, name: EntryName, entry: Loaded, bytes: u64) -> Option<Loaded> {
        {
            let mut f = self.shared.flight.lock();
            while f.jobs > 0 && f.bytes + bytes > self.config.max_in_flight {
                self.shared.changed.wait(&mut f);
            }
            f.bytes += bytes;
            f.jobs += 1;
        }
        let job = Job {
            name,
            entry,
            bytes,
            plan: io::current_plan(),
        };
        let tx = self.tx.lock().clone();
        let sent = match tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        match sent {
            Ok(()) => None,
            Err(job) => {
                job.entry.link().end_write_behind();
                self.shared.finish(job.bytes);
                Some(job.entry)
            }
        }
    }

    /// Waits until every entry handed to the writers was written or given
    /// back.
    pub(crate) fn wait_idle(&self) {
        let mut f = self.shared.flight.lock();
        while f.jobs > 0 {
            self.shared.changed.wait(&mut f);
        }
    }

    /// The first background failure not reported yet.
    pub(crate) fn take_error(&self) -> Option<Error> {
        self.shared.error.lock().take()
    }

    /// Entries the writers gave back since the last call.
    pub(crate) fn take_requeued(&self) -> Vec<EntryName> {
        std::mem::take(&mut *self.shared.requeued.lock())
    }

    /// Entries written behind and released so far.
    pub(crate) fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Background writes that failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Time the writers spent writing so far (summed over the writers).
    pub(crate) fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.shared.busy_ns.load(Ordering::Relaxed))
    }

    /// Resets the counts of written entries and failures, and the time.
    pub(crate) fn reset_counts(&self) {
        self.shared.written.store(0, Ordering::Relaxed);
        self.shared.failures.store(0, Ordering::Relaxed);
        self.shared.busy_ns.store(0, Ordering::Relaxed);
    }

    /// Stops the writers once the queue is empty.
    pub(crate) fn stop(&self) {
        self.wait_idle();
        drop(self.tx.lock().take());
        for h in std::mem::take(&mut *self.threads.lock()) {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn finish(&self, bytes: u64) {
        let mut f = self.flight.lock();
        f.bytes -= bytes;
        f.jobs -= 1;
        self.changed.notify_all();
    }
}

fn writer(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = match rx.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let _plan = io::adopt_plan(job.plan);
        // Never waits for the entry: a guard makes it `Ok(false)`.
        let started = std::time::Instant::now();
        let result = job.entry.try_offload();
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
        job.entry.link().end_write_behind();
        match result {
            Ok(true) => {
                shared.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                if job.entry.state() != ArrayState::Offloaded && job.entry.link().is_attached() {
                    shared.requeued.lock().push(job.name.clone());
                }
            }
            Err(e) => {
                tracing::warn!(name = job.name.as_str(), error = %e, "write-behind failed; the entry stays in RAM");
                shared.failures.fetch_add(1, Ordering::Relaxed);
                shared.error.lock().get_or_insert(Error::WriteBehind {
                    name: job.name.to_string(),
                    source: Box::new(e),
                });
                shared.requeued.lock().push(job.name.clone());
            }
        }
        // The entry (and its RAM, if it was not released) is dropped or
        // kept by the store before the flight ends.
        drop(job.entry);
        shared.finish(job.bytes);
    }
}
