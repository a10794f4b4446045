//! Threads and guards: the documented guard rules never deadlock, and a
//! handle keeps the data it held.
//!
//! * `guard_matrix_never_deadlocks`: every combination of (a read or write
//!   guard held by thread 1 on entry A) x (the store call thread 1 makes
//!   while holding it) x (the call another thread makes meanwhile on other
//!   entries), each under a watchdog. Thread 2 starts first and is let run
//!   until it returned or is blocked (in `flush` or `offload_all`, waiting
//!   for A) before thread 1 makes its call, so the reported interleavings
//!   happen on every run.
//! * `offload_all_under_a_write_guard_while_another_thread_flushes`,
//!   `three_threads_get_and_offload_under_a_write_guard`,
//!   `removing_an_entry_another_thread_guards_never_blocks_the_store`,
//!   `two_threads_holding_guards_flush_and_offload_all`: the reported
//!   deadlocks (and one the stress below found), one by one.
//! * `a_handle_reads_its_value_while_its_entry_is_removed`,
//!   `get_or_compute_returns_its_value_when_the_key_is_removed_at_once`,
//!   `handles_keep_their_values_under_offloads_and_removals`: a handle keeps
//!   the data it held.
//! * `guards_across_store_calls_under_a_stall_watchdog`: the mixed
//!   operations of `reliability.rs` plus threads holding guards across every
//!   store call, failing with what each thread was doing if one makes no
//!   progress for 20 s.
//!
//! Environment variables:
//!
//! * `NDOFFLOAD_DEADLOCK_SECS`: watchdog of each matrix combination and
//!   reported interleaving (default 20);
//! * `NDOFFLOAD_HANDLE_STRESS_SECS`: duration of the handle stress (default
//!   3);
//! * `NDOFFLOAD_GUARD_STRESS_SECS`: duration of the stall-watchdog stress
//!   (default 60 with `CI=true`, 5 otherwise); `NDOFFLOAD_STALL_SECS`: how
//!   long a thread may make no progress (default 20).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{ArrayState, DiskBackedStore, Error, StoreBuilder, StoredArray};

use crate::common::{in_ci, Rng};
use crate::reliability;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Writes `msg` to the standard error (not captured by the test harness,
/// which would lose it) and aborts the test process: threads that are
/// deadlocked cannot be joined.
fn die(msg: &str) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().write_all(msg.as_bytes());
    // Where every thread waits, if a debugger is at hand.
    let pid = std::process::id().to_string();
    if let Ok(out) = std::process::Command::new("gdb")
        .args(["-p", &pid, "-batch", "-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        let _ = std::io::stderr().write_all(&out.stdout);
    }
    std::process::abort();
}

/// Runs its closure when dropped (also while unwinding from a panic).
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn deadlock_limit() -> Duration {
    Duration::from_secs_f64(env_or("NDOFFLOAD_DEADLOCK_SECS", 20.0))
}

/// 1000 `f64`s (8000 bytes), all `x`.
fn v(x: f64) -> Array1<f64> {
    Array1::from_elem(1000, x)
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// Runs `f` on a thread of its own. `Err` with a message if it panicked or
/// did not finish within `limit` (a deadlock: the thread is left behind,
/// blocked, and the test goes on).
fn within<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r.map_err(|p| panic_text(&*p)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => Err(format!("{what}: panicked: {p}")),
        Err(_) => Err(format!("{what}: DEADLOCK: did not finish within {limit:?}")),
    }
}

// ---------------------------------------------------------------------------
// Telling that another thread is blocked
// ---------------------------------------------------------------------------

/// The calling thread's id (Linux), to watch it from another thread.
fn thread_id() -> Option<String> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Whether thread `tid` of this process is asleep in `futex(2)` (waiting
/// for a lock): `None` when that cannot be told.
fn asleep_on_a_lock(tid: &str) -> Option<bool> {
    let futex = if cfg!(target_arch = "x86_64") {
        "202"
    } else if cfg!(target_arch = "aarch64") {
        "98"
    } else {
        return None;
    };
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit(") ").next()?.chars().next()?;
    let syscall = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    Some(state == 'S' && syscall.split_whitespace().next() == Some(futex))
}

/// Waits until `done` is set or thread `tid` has been asleep on a lock for
/// a while (at most 3 s; where that cannot be told, 300 ms).
fn until_done_or_blocked(tid: Option<&str>, done: &AtomicBool) {
    let start = Instant::now();
    let mut asleep = 0;
    while !done.load(Ordering::Acquire) && start.elapsed() < Duration::from_secs(3) {
        match tid.and_then(asleep_on_a_lock) {
            Some(true) => asleep += 1,
            Some(false) => asleep = 0,
            None if start.elapsed() >= Duration::from_millis(300) => return,
            None => {}
        }
        if asleep >= 5 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// The guard matrix
// ---------------------------------------------------------------------------

/// Entry A, which thread 1 guards: last in name order, so that a flush or
/// offload of all entries reaches it after the others.
const A: &str = "z_a";
/// Thread 1's other entry.
const C: &str = "c";
/// Thread 2's entries (values 10 and 11).
const B0: &str = "b0";
const B1: &str = "b1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Offload,
    OffloadKeys,
    OffloadAll,
    Flush,
    Insert,
    InsertDurable,
    Remove,
    Get,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Other {
    Flush,
    OffloadAll,
    GetRead,
    Insert,
    Remove,
}

const GUARDS: [Guard; 2] = [Guard::Read, Guard::Write];
const CALLS: [Call; 9] = [
    Call::Offload,
    Call::OffloadKeys,
    Call::OffloadAll,
    Call::Flush,
    Call::Insert,
    Call::InsertDurable,
    Call::Remove,
    Call::Get,
    Call::Close,
];
const OTHERS: [Other; 5] = [
    Other::Flush,
    Other::OffloadAll,
    Other::GetRead,
    Other::Insert,
    Other::Remove,
];

/// A store (budget: four of the 8000-byte entries, so that one more insert
/// evicts) with A = 1, C = 3, B0 = 10 and B1 = 11, all in RAM and not yet
/// written: a flush holds each of them while it writes it.
fn matrix_store(dir: &Path) -> DiskBackedStore {
    let s = StoreBuilder::new(dir)
        .memory_budget(36_000u64)
        .open()
        .unwrap();
    s.insert(A, v(1.0)).unwrap();
    s.insert(C, v(3.0)).unwrap();
    s.insert(B0, v(10.0)).unwrap();
    s.insert(B1, v(11.0)).unwrap();
    s
}

fn is_in_use(r: &ndarray_offload::Result<()>) -> bool {
    matches!(r, Err(Error::InUse { .. }))
}

/// Thread 1's call while it holds `guard` on A; panics if the result is not
/// the documented one.
fn call_one(s: &DiskBackedStore, guard: Guard, call: Call) {
    let ctx = format!("{guard:?} guard on A, {call:?}");
    match call {
        Call::Offload => {
            s.offload(C).unwrap();
            let r = s.offload(A);
            assert!(is_in_use(&r), "{ctx}: offload(A) gave {r:?}");
        }
        Call::OffloadKeys => {
            let r = s.offload_keys(&[C, A]);
            assert!(is_in_use(&r), "{ctx}: {r:?}");
            assert_eq!(s.info(C).unwrap().state, ArrayState::Offloaded, "{ctx}");
        }
        Call::OffloadAll => {
            let r = s.offload_all();
            assert!(is_in_use(&r), "{ctx}: {r:?}");
        }
        Call::Flush => {
            let r = s.flush();
            match guard {
                Guard::Read => r.unwrap(),
                Guard::Write => assert!(is_in_use(&r), "{ctx}: {r:?}"),
            }
        }
        Call::Insert => s.insert("d", v(4.0)).unwrap(),
        Call::InsertDurable => s.insert_durable("d", v(4.0)).unwrap(),
        Call::Remove => {
            s.remove(C).unwrap();
        }
        Call::Get => {
            let c = s.get::<f64, Ix1>(C).unwrap();
            assert_eq!(c.read().unwrap().view()[1], 3.0, "{ctx}");
            assert_eq!(s.get::<f64, Ix1>(A).unwrap().shape(), &[1000], "{ctx}");
        }
        Call::Close => {
            let r = s.clone().close();
            match guard {
                Guard::Read => r.unwrap(),
                Guard::Write => assert!(is_in_use(&r), "{ctx}: {r:?}"),
            }
        }
    }
}

/// Thread 2's call on the other entries (it holds no guard).
fn other_one(s: &DiskBackedStore, other: Other) {
    match other {
        Other::Flush => s.flush().unwrap(),
        Other::OffloadAll => s.offload_all().unwrap(),
        Other::GetRead => {
            for (k, x) in [(B0, 10.0), (B1, 11.0)] {
                if let Ok(h) = s.get::<f64, Ix1>(k) {
                    assert_eq!(h.read().unwrap().view()[999], x, "{k}");
                }
            }
        }
        Other::Insert => s.insert(B1, v(11.0)).unwrap(),
        Other::Remove => {
            if !s.remove(B0).unwrap() {
                s.insert(B0, v(10.0)).unwrap();
            }
        }
    }
}

/// Runs `f` while holding `guard` on `h` (a write guard sets element 0 to
/// 100).
fn with_guard(h: &StoredArray<f64, Ix1>, guard: Guard, f: impl FnOnce()) {
    match guard {
        Guard::Read => {
            let g = h.read().unwrap();
            f();
            assert_eq!(g.view()[1], 1.0);
        }
        Guard::Write => {
            let mut g = h.write().unwrap();
            g.view_mut()[0] = 100.0;
            f();
            g.finish().unwrap();
        }
    }
}

/// One combination: thread 2 starts `other` and runs until it returned or
/// is blocked; then thread 1, holding `guard` on A, makes `call`; then both
/// repeat their calls for a while (thread 1 taking its guard again each
/// time).
fn combination(dir: PathBuf, guard: Guard, call: Call, other: Other) {
    let s = matrix_store(&dir);
    let h = s.get::<f64, Ix1>(A).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let t2 = {
        let (s, stop, done) = (s.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let (go_tx, go_rx) = mpsc::channel::<()>();
            tid_tx.send((thread_id(), go_tx)).unwrap();
            go_rx.recv().unwrap();
            other_one(&s, other);
            done.store(true, Ordering::Release);
            let mut n = 0;
            while !stop.load(Ordering::Acquire) && n < 200 {
                other_one(&s, other);
                n += 1;
            }
        })
    };
    let (tid, go) = tid_rx.recv().unwrap();
    with_guard(&h, guard, || {
        go.send(()).unwrap();
        until_done_or_blocked(tid.as_deref(), &done);
        call_one(&s, guard, call);
    });
    for _ in 0..5 {
        with_guard(&h, guard, || call_one(&s, guard, call));
        if call == Call::Remove {
            s.insert(C, v(3.0)).unwrap();
        }
    }
    stop.store(true, Ordering::Release);
    t2.join().unwrap();
    let want = if guard == Guard::Write { 100.0 } else { 1.0 };
    assert_eq!(h.to_owned_array().unwrap()[0], want, "A keeps its edit");
    drop(h);
    s.flush().unwrap();
    let keys = s.keys();
    drop(s);
    let s = DiskBackedStore::open(&dir).unwrap();
    assert_eq!(s.keys(), keys, "after reopen");
    for k in keys {
        s.get::<f64, Ix1>(k.as_str())
            .unwrap()
            .to_owned_array()
            .unwrap();
    }
}

/// Every combination of the documented guard rules, each under a watchdog;
/// all combinations run, and the failures are listed together.
#[test]
fn guard_matrix_never_deadlocks() {
    let limit = deadlock_limit();
    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut n = 0;
    for guard in GUARDS {
        for call in CALLS {
            for other in OTHERS {
                n += 1;
                let dir = root.path().join(format!("{n}"));
                let what = format!(
                    "thread 1 holds a {guard:?} guard on A and calls {call:?}; thread 2 calls {other:?}"
                );
                if let Err(e) = within(&what, limit, move || combination(dir, guard, call, other)) {
                    eprintln!("{e}");
                    failures.push(e);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} combinations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The reported deadlock: thread 2's `flush` holds B (written first) and
/// waits for A, on which thread 1 holds a write guard and calls
/// `offload_all`, which needs B.
#[test]
fn offload_all_under_a_write_guard_while_another_thread_flushes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    within("offload_all / flush", deadlock_limit(), move || {
        combination(dir, Guard::Write, Call::OffloadAll, Other::Flush)
    })
    .unwrap();
}

/// Three threads: thread 1 holds a write guard on A; thread 2 flushes
/// (reaching A last); thread 3 gets B0 and offloads it; then thread 1 gets
/// and reads B0 and offloads B1 and everything.
#[test]
fn three_threads_get_and_offload_under_a_write_guard() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_path_buf();
    within(
        "get + offload, three threads",
        deadlock_limit(),
        move || {
            let s = matrix_store(&dir);
            let h = s.get::<f64, Ix1>(A).unwrap();
            let mut g = h.write().unwrap();
            g.view_mut()[0] = 100.0;
            let spawn = |f: fn(&DiskBackedStore)| {
                let s = s.clone();
                let done = Arc::new(AtomicBool::new(false));
                let d = done.clone();
                let (tx, rx) = mpsc::channel();
                let t = std::thread::spawn(move || {
                    tx.send(thread_id()).unwrap();
                    f(&s);
                    d.store(true, Ordering::Release);
                });
                let tid = rx.recv().unwrap();
                until_done_or_blocked(tid.as_deref(), &done);
                t
            };
            let t2 = spawn(|s| s.flush().unwrap());
            let t3 = spawn(|s| {
                let b = s.get::<f64, Ix1>(B0).unwrap();
                s.offload(B0).unwrap();
                assert_eq!(b.read().unwrap().view()[0], 10.0);
            });
            let b = s.get::<f64, Ix1>(B0).unwrap();
            assert_eq!(b.read().unwrap().view()[0], 10.0);
            s.offload(B1).unwrap();
            assert!(is_in_use(&s.offload_all()));
            g.finish().unwrap();
            t2.join().unwrap();
            t3.join().unwrap();
            s.flush().unwrap();
            assert_eq!(h.to_owned_array().unwrap()[0], 100.0);
        },
    )
    .unwrap();
}

/// Thread 2 removes (or replaces) A while thread 1 holds a write guard on
/// it: the removal does not wait for the guard, and thread 1 goes on using
/// the store (before, the removal waited for the guard while holding the
/// store's map, and thread 1's next store call waited for the removal).
#[test]
fn removing_an_entry_another_thread_guards_never_blocks_the_store() {
    for replace in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        within("remove of a guarded entry", deadlock_limit(), move || {
            let s = matrix_store(&dir);
            s.flush().unwrap();
            let h = s.get::<f64, Ix1>(A).unwrap();
            let mut g = h.write().unwrap();
            g.view_mut()[0] = 100.0;
            let t2 = {
                let s = s.clone();
                std::thread::spawn(move || {
                    if replace {
                        s.insert(A, v(7.0)).unwrap();
                    } else {
                        assert!(s.remove(A).unwrap());
                    }
                })
            };
            // Thread 2 finishes while the guard is held.
            t2.join().unwrap();
            assert_eq!(
                s.get::<f64, Ix1>(C).unwrap().to_owned_array().unwrap()[0],
                3.0
            );
            s.insert("d", v(4.0)).unwrap();
            s.flush().unwrap();
            g.finish().unwrap();
            // The handle keeps its own (edited) data; the store has the new
            // value or none.
            assert_eq!(h.to_owned_array().unwrap()[0], 100.0);
            match s.get::<f64, Ix1>(A) {
                Ok(a) => {
                    assert!(replace);
                    assert_eq!(a.to_owned_array().unwrap()[0], 7.0);
                }
                Err(Error::KeyNotFound { .. }) => assert!(!replace),
                Err(e) => panic!("{e}"),
            }
            s.flush().unwrap();
            drop(s);
            let s = DiskBackedStore::open(&dir).unwrap();
            assert_eq!(s.contains(A), replace);
        })
        .unwrap();
    }
}

/// Two threads each holding a guard: thread 1 (a read or write guard on A)
/// flushes and waits for B, on which thread 2 holds a write guard and calls
/// `offload_all`, which needs A. Thread 2's wait would close the cycle: it
/// gets `InUse` for A instead, and both calls return.
#[test]
fn two_threads_holding_guards_flush_and_offload_all() {
    for guard in GUARDS {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_path_buf();
        within("two guard holders", deadlock_limit(), move || {
            let s = matrix_store(&dir);
            let (ha, hb) = (
                s.get::<f64, Ix1>(A).unwrap(),
                s.get::<f64, Ix1>(B0).unwrap(),
            );
            let (held_tx, held_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let t2 = {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut g = hb.write().unwrap();
                    g.view_mut()[0] = 50.0;
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    let r = s.offload_all();
                    assert!(is_in_use(&r), "{r:?}");
                    g.finish().unwrap();
                })
            };
            held_rx.recv().unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let (tid_tx, tid_rx) = mpsc::channel();
            let t1 = {
                let (s, done) = (s.clone(), done.clone());
                std::thread::spawn(move || {
                    tid_tx.send(thread_id()).unwrap();
                    with_guard(&ha, guard, || {
                        let r = s.flush();
                        match guard {
                            Guard::Read => r.unwrap(),
                            Guard::Write => assert!(is_in_use(&r), "{r:?}"),
                        }
                    });
                    done.store(true, Ordering::Release);
                })
            };
            let tid = tid_rx.recv().unwrap();
            until_done_or_blocked(tid.as_deref(), &done);
            go_tx.send(()).unwrap();
            t2.join().unwrap();
            t1.join().unwrap();
            s.flush().unwrap();
            drop(s);
            let s = DiskBackedStore::open(&dir).unwrap();
            let b = s.get::<f64, Ix1>(B0).unwrap().to_owned_array().unwrap();
            assert_eq!(b[0], 50.0);
        })
        .unwrap();
    }
}

// ---------------------------------------------------------------------------
// Handles keep their data
// ---------------------------------------------------------------------------

/// What a read through a handle gave.
type ReadResult = Result<Vec<f64>, String>;

/// A handle that read its value, whose entry is then offloaded (explicitly,
/// or evicted by the budget) and removed, reads its value during the
/// removal (once the entry's `.npy` was renamed away, before the removal
/// returned) and after it.
#[test]
fn a_handle_reads_its_value_while_its_entry_is_removed() {
    for evict in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StoreBuilder::new(dir.path());
        if evict {
            // One 8000-byte entry fits, two do not.
            b = b.memory_budget(10_000u64);
        }
        let s = b.open().unwrap();
        let value = Array1::from_shape_fn(1000, |i| i as f64);
        s.insert("k", value.clone()).unwrap();
        let h = s.get::<f64, Ix1>("k").unwrap();
        assert_eq!(h.to_owned_array().unwrap(), value);
        if evict {
            s.insert("other", v(2.0)).unwrap();
            assert!(s.stats().evictions >= 1);
        } else {
            s.offload("k").unwrap();
        }
        assert_eq!(h.state(), ArrayState::Offloaded);

        // Read through the handle on another thread once `k.npy` is gone.
        let npy = dir.path().join("k.npy");
        let seen: Arc<Mutex<Option<ReadResult>>> = Arc::default();
        let plan = {
            let (h, seen) = (h.clone(), seen.clone());
            FaultPlan::fail_at(0).with_hook(move |_, _| {
                let mut seen = seen.lock().unwrap();
                if seen.is_some() || npy.exists() {
                    return;
                }
                let (tx, rx) = mpsc::channel();
                let h = h.clone();
                // The result is sent while the guard is alive: ending it may
                // enforce the budget, which waits for the removal.
                std::thread::spawn(move || match h.read() {
                    Ok(g) => {
                        let _ = tx.send(Ok(g.view().to_vec()));
                        drop(g);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                });
                *seen = Some(
                    rx.recv_timeout(Duration::from_secs(20))
                        .unwrap_or_else(|_| Err("the read did not finish".into())),
                );
            })
        };
        let g = install(plan);
        assert!(s.remove("k").unwrap());
        drop(g);
        let during = seen.lock().unwrap().take();
        let ctx = if evict { "evicted" } else { "offloaded" };
        match during {
            Some(Ok(got)) => assert_eq!(got, value.to_vec(), "{ctx}: read during the removal"),
            Some(Err(e)) => panic!("{ctx}: read during the removal failed: {e}"),
            None => panic!("{ctx}: the removal never renamed k.npy away"),
        }
        assert_eq!(
            h.to_owned_array().unwrap(),
            value,
            "{ctx}: after the removal"
        );
        assert_eq!(h.to_owned_array().unwrap(), value, "{ctx}: and again");
    }
}

/// `get_or_compute` returns the value it computed and inserted even if
/// another thread removes the key before it returns (here: while the
/// insert evicts another entry).
#[test]
fn get_or_compute_returns_its_value_when_the_key_is_removed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(10_000u64)
        .open()
        .unwrap();
    s.insert("old", v(1.0)).unwrap();
    let removed = Arc::new(AtomicBool::new(false));
    let plan = {
        let (s, removed) = (s.clone(), removed.clone());
        FaultPlan::fail_at(0).with_hook(move |_, _| {
            if removed.swap(true, Ordering::AcqRel) {
                return;
            }
            let s = s.clone();
            let r = std::thread::spawn(move || s.remove("k").unwrap())
                .join()
                .unwrap();
            assert!(r, "k was inserted before the eviction");
        })
    };
    let value = Array1::from_shape_fn(1000, |i| i as f64 * 0.5);
    let g = install(plan);
    let h = s.get_or_compute::<f64, Ix1, _>("k", || value.clone());
    drop(g);
    assert!(removed.load(Ordering::Acquire), "the insert evicted `old`");
    let h = h.unwrap();
    assert_eq!(h.to_owned_array().unwrap(), value);
    assert!(!s.contains("k"));
}

fn stress_value(j: usize) -> Array1<i64> {
    Array1::from_shape_fn(500, |i| (j * 100_000 + i) as i64)
}

/// Readers read each handle twice while other threads insert, offload,
/// evict, flush and remove the same keys (always with the same value per
/// key) under a small budget: a handle whose first read succeeded reads the
/// same value again, and `get_or_compute` returns its key's value.
#[test]
fn handles_keep_their_values_under_offloads_and_removals() {
    const KEYS: usize = 8;
    let secs: f64 = env_or("NDOFFLOAD_HANDLE_STRESS_SECS", 3.0);
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(12_000u64)
        .open()
        .unwrap();
    let key = |j: usize| format!("k{j}");
    let doubles = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let computes = AtomicU64::new(0);
    let errors: Mutex<Vec<String>> = Mutex::default();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let fail = |what: String| {
        failed.fetch_add(1, Ordering::Relaxed);
        let mut e = errors.lock().unwrap();
        if e.len() < 10 {
            e.push(what);
        }
    };
    let (tx, rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        let limit = Duration::from_secs_f64(secs * 10.0 + 120.0);
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            die(&format!(
                "WATCHDOG: the handle stress did not finish within {limit:?}: a deadlock\n"
            ));
        }
    });
    std::thread::scope(|sc| {
        for t in 0..3 {
            let (s, doubles, fail) = (&s, &doubles, &fail);
            sc.spawn(move || {
                let mut rng = Rng(0xD0B1E + t);
                while Instant::now() < deadline {
                    let j = rng.below(KEYS);
                    let Ok(h) = s.get::<i64, Ix1>(key(j)) else {
                        continue;
                    };
                    let Ok(first) = h.to_owned_array() else {
                        continue;
                    };
                    if first != stress_value(j) {
                        fail(format!("{}: first read gave another value", key(j)));
                        continue;
                    }
                    if rng.below(4) == 0 {
                        std::thread::yield_now();
                    }
                    doubles.fetch_add(1, Ordering::Relaxed);
                    let second = h.read().map(|g| g.view() == stress_value(j));
                    match second {
                        Ok(true) => {}
                        Ok(false) => fail(format!("{}: second read gave another value", key(j))),
                        Err(e) => fail(format!("{}: second read failed: {e}", key(j))),
                    }
                }
            });
        }
        for t in 0..2 {
            let (s, computes, fail) = (&s, &computes, &fail);
            sc.spawn(move || {
                let mut rng = Rng(0x5EED + t);
                while Instant::now() < deadline {
                    let j = rng.below(KEYS);
                    match rng.below(8) {
                        0 | 1 => s.insert(key(j), stress_value(j)).unwrap(),
                        2 | 3 => {
                            s.remove(key(j)).unwrap();
                        }
                        4 => match s.offload(key(j)) {
                            Ok(()) | Err(Error::KeyNotFound { .. }) => {}
                            Err(e) => panic!("offload: {e}"),
                        },
                        5 => s.offload_all().unwrap(),
                        6 => s.flush().unwrap(),
                        _ => {
                            computes.fetch_add(1, Ordering::Relaxed);
                            match s.get_or_compute::<i64, Ix1, _>(key(j), || stress_value(j)) {
                                Ok(h) => match h.to_owned_array() {
                                    Ok(a) if a == stress_value(j) => {}
                                    Ok(_) => {
                                        fail(format!("{}: get_or_compute: another value", key(j)))
                                    }
                                    Err(e) => {
                                        fail(format!("{}: get_or_compute, read: {e}", key(j)))
                                    }
                                },
                                Err(e) => fail(format!("{}: get_or_compute: {e}", key(j))),
                            }
                        }
                    }
                }
            });
        }
    });
    drop(tx);
    let _ = dog.join();
    let (doubles, failed) = (doubles.into_inner(), failed.into_inner());
    eprintln!(
        "handles: {doubles} double reads, {} get_or_compute calls, {failed} failures in {secs} s; {}",
        computes.into_inner(),
        s.stats().to_string().replace('\n', ";")
    );
    assert!(doubles > 0);
    assert_eq!(
        failed,
        0,
        "failed double reads or computes; first ones:\n{}",
        errors.into_inner().unwrap().join("\n")
    );
}

// ---------------------------------------------------------------------------
// The mixed stress under a stall watchdog
// ---------------------------------------------------------------------------

/// A thread that holds a read or write guard on one of its entries across
/// every store call of the guard rules, checking each documented result.
fn guard_worker(
    t: usize,
    s: &DiskBackedStore,
    deadline: Instant,
    doing: &Mutex<Option<(Instant, String)>>,
) -> u64 {
    let key = |j: usize| format!("g{t}_{j}");
    for j in 0..3 {
        s.insert(key(j), v(j as f64)).unwrap();
    }
    let mut rng = Rng(0x6A4D + t as u64);
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let (held, other) = (rng.below(3), rng.below(3));
        let other = if other == held { (held + 1) % 3 } else { other };
        let guard = if rng.below(2) == 0 {
            Guard::Read
        } else {
            Guard::Write
        };
        let call = CALLS[rng.below(CALLS.len())];
        *doing.lock().unwrap() = Some((
            Instant::now(),
            format!(
                "guard thread {t}, #{n}: {guard:?} guard on {} and {call:?} ({})",
                key(held),
                key(other)
            ),
        ));
        let h = s.get::<f64, Ix1>(key(held)).unwrap();
        let (hk, ok) = (key(held), key(other));
        let ctx = format!("guard thread {t}, #{n}: {guard:?} guard on {hk}, {call:?}");
        let check = |s: &DiskBackedStore| match call {
            Call::Offload => {
                s.offload(&ok).unwrap();
                assert!(is_in_use(&s.offload(&hk)), "{ctx}");
            }
            Call::OffloadKeys => assert!(is_in_use(&s.offload_keys(&[&hk, &ok])), "{ctx}"),
            Call::OffloadAll => assert!(is_in_use(&s.offload_all()), "{ctx}"),
            Call::Flush | Call::Close => {
                let r = if call == Call::Flush {
                    s.flush()
                } else {
                    s.clone().close()
                };
                // Under a read guard, `InUse` only for another thread's entry
                // whose guard waits for this thread's (here: the other guard
                // thread in `offload_all`).
                match guard {
                    Guard::Read => assert!(r.is_ok() || is_in_use(&r), "{ctx}: {r:?}"),
                    Guard::Write => assert!(is_in_use(&r), "{ctx}: {r:?}"),
                }
            }
            Call::Insert => s.insert(&ok, v(other as f64)).unwrap(),
            Call::InsertDurable => s.insert_durable(&ok, v(other as f64)).unwrap(),
            Call::Remove => {
                assert!(s.remove(&ok).unwrap(), "{ctx}");
                s.insert(&ok, v(other as f64)).unwrap();
            }
            Call::Get => {
                let o = s.get::<f64, Ix1>(&ok).unwrap();
                assert_eq!(o.read().unwrap().view()[1], other as f64, "{ctx}");
            }
        };
        match guard {
            Guard::Read => {
                let g = h.read().unwrap();
                check(s);
                assert_eq!(g.view()[1], held as f64, "{ctx}");
            }
            Guard::Write => {
                let mut g = h.write().unwrap();
                g.view_mut()[0] += 1.0;
                check(s);
                g.finish().unwrap();
            }
        }
    }
    *doing.lock().unwrap() = None;
    n
}

/// The mixed operations of `reliability.rs` (eight threads, guards held
/// across inserts, flushes and replacements) plus two threads holding
/// guards across every other store call, under a small budget, for
/// `NDOFFLOAD_GUARD_STRESS_SECS` (default 60 s with `CI=true`, 5 s
/// otherwise). A thread that makes no progress for `NDOFFLOAD_STALL_SECS`
/// (20 s) fails the run with what every thread was doing.
#[test]
fn guards_across_store_calls_under_a_stall_watchdog() {
    let secs: f64 = env_or(
        "NDOFFLOAD_GUARD_STRESS_SECS",
        if in_ci() { 60.0 } else { 5.0 },
    );
    let stall = Duration::from_secs_f64(env_or("NDOFFLOAD_STALL_SECS", 20.0));
    let root = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(root.path().join("store"))
        .memory_budget(reliability::SMALL_BUDGET)
        .open()
        .unwrap();
    let counts = reliability::Counts::default();
    let guard_doing: [Mutex<Option<(Instant, String)>>; 2] = Default::default();
    let finished = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let guard_ops = std::thread::scope(|sc| {
        let (counts, guard_doing, finished) = (&counts, &guard_doing, &finished);
        // A thread that panicked made no progress but did not stall: the
        // watchdog stops once the scope's closure returns or unwinds, and
        // the panic (with its message) fails the test.
        let _stop_watching = OnDrop(|| finished.store(true, Ordering::Release));
        sc.spawn(move || {
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(250));
                let slots = counts.doing.iter().chain(guard_doing.iter());
                let now: Vec<Option<(Duration, String)>> = slots
                    .map(|d| {
                        d.lock()
                            .ok()
                            .and_then(|d| d.as_ref().map(|(t, w)| (t.elapsed(), w.clone())))
                    })
                    .collect();
                if now.iter().flatten().any(|(e, _)| *e > stall) {
                    let mut dump = format!(
                        "STALL: a thread made no progress for {stall:?}; what each thread is doing:\n"
                    );
                    for (i, d) in now.iter().enumerate() {
                        dump += &match d {
                            Some((e, w)) => format!("  thread {i}: for {:.1} s: {w}\n", e.as_secs_f64()),
                            None => format!("  thread {i}: finished\n"),
                        };
                    }
                    die(&dump);
                }
            }
        });
        let workers: Vec<_> = (0..reliability::THREADS)
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    let _done = OnDrop(|| {
                        if let Ok(mut d) = counts.doing[t].lock() {
                            *d = None;
                        }
                    });
                    reliability::worker(t, s, deadline, counts)
                })
            })
            .collect();
        let guards: Vec<_> = (0..2)
            .map(|t| {
                let s = &s;
                sc.spawn(move || {
                    let _done = OnDrop(|| {
                        if let Ok(mut d) = guard_doing[t].lock() {
                            *d = None;
                        }
                    });
                    guard_worker(t, s, deadline, &guard_doing[t])
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let n: u64 = guards.into_iter().map(|g| g.join().unwrap()).sum();
        finished.store(true, Ordering::Release);
        n
    });
    s.flush().unwrap();
    crate::common::enforce_budget(&s);
    eprintln!(
        "guards across store calls: {} s, {} mixed operations ({} with guards held across store calls), {guard_ops} store calls under a guard; {}",
        secs,
        counts.ops.load(Ordering::Relaxed),
        counts.nested.load(Ordering::Relaxed),
        s.stats().to_string().replace('\n', ";")
    );
}
