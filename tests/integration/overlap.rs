//! Write-behind spills, prefetch and eviction order under a budget (the
//! disk budget for recomputable entries: `disk_budget.rs`).

use ndarray::{Array1, Ix1};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{ByteSize, Error, StoreBuilder};

/// 1000 f64 = 8000 bytes per entry.
fn entry(v: f64) -> Array1<f64> {
    Array1::from_elem(1000, v)
}

fn read(s: &ndarray_offload::DiskBackedStore, k: &str) -> f64 {
    let h = s.get::<f64, Ix1>(k).unwrap();
    let g = h.read().unwrap();
    let v = g.view();
    assert!(v.iter().all(|&x| x == v[0]), "{k} is torn");
    v[0]
}

#[test]
fn write_behind_spills_everything_and_flush_waits() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(ByteSize::new(24_000))
        .write_behind(2, ByteSize::new(16_000))
        .open()
        .unwrap();
    for i in 0..40 {
        s.insert(format!("k{i}"), entry(i as f64)).unwrap();
        let st = s.stats();
        // Data in RAM: within the budget plus what is in flight.
        assert!(st.bytes_resident <= 24_000 + 16_000 + 8_000, "{st:?}");
        assert!(st.bytes_in_flight <= 16_000, "{st:?}");
    }
    s.flush().unwrap();
    let st = s.stats();
    assert_eq!(st.bytes_in_flight, 0);
    assert!(st.bytes_resident <= 24_000, "{st:?}");
    assert_eq!(st.write_behind_failures, 0);
    for i in 0..40 {
        assert_eq!(read(&s, &format!("k{i}")), i as f64);
    }
    s.close().unwrap();
    let s = StoreBuilder::new(dir.path()).open().unwrap();
    for i in 0..40 {
        assert_eq!(read(&s, &format!("k{i}")), i as f64);
    }
}

#[test]
fn an_entry_in_flight_reads_from_ram_and_a_guard_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(ByteSize::new(8_000))
        .write_behind(1, ByteSize::new(64_000))
        .open()
        .unwrap();
    s.insert("a", entry(1.0)).unwrap();
    let h = s.get::<f64, Ix1>("a").unwrap();
    let g = h.read().unwrap();
    // "a" is evicted while a guard holds it: the writer leaves it in RAM.
    s.insert("b", entry(2.0)).unwrap();
    assert_eq!(g.view()[0], 1.0);
    s.flush().unwrap();
    drop(g);
    assert_eq!(read(&s, "a"), 1.0);
    assert_eq!(read(&s, "b"), 2.0);
    s.close().unwrap();
}

#[test]
fn a_failed_background_write_surfaces_on_the_next_call_and_loses_nothing() {
    // Fail each file-system operation of the first spill in turn.
    for n in 1..=8 {
        let dir = tempfile::tempdir().unwrap();
        let s = StoreBuilder::new(dir.path())
            .memory_budget(ByteSize::new(8_000))
            .write_behind(1, ByteSize::new(64_000))
            .open()
            .unwrap();
        s.insert("a", entry(1.0)).unwrap();
        let plan = FaultPlan::fail_at(n);
        let g = install(plan.clone());
        // Evicts "a" through the writer thread, which adopts this plan.
        let first = s.insert("b", entry(2.0));
        drop(g);
        // The failure is returned by this call or a later one, never lost.
        let mut reported = matches!(first, Err(Error::WriteBehind { .. }));
        let flushed = s.flush();
        reported |= matches!(flushed, Err(Error::WriteBehind { .. }));
        if plan.count() >= n {
            assert!(
                reported,
                "fault {n}: the background failure was not reported"
            );
            assert!(s.stats().write_behind_failures >= 1);
        } else {
            assert!(first.is_ok() && flushed.is_ok());
        }
        assert_eq!(read(&s, "a"), 1.0, "fault {n}");
        assert_eq!(read(&s, "b"), 2.0, "fault {n}");
        s.close().unwrap();
        let s = StoreBuilder::new(dir.path()).open().unwrap();
        assert_eq!(read(&s, "a"), 1.0, "fault {n} after reopen");
        assert_eq!(read(&s, "b"), 2.0, "fault {n} after reopen");
    }
}

/// A store whose budget (8,000 bytes) holds one entry, with one
/// write-behind writer.
fn one_entry_store(dir: &std::path::Path) -> ndarray_offload::DiskBackedStore {
    StoreBuilder::new(dir)
        .memory_budget(ByteSize::new(8_000))
        .write_behind(1, ByteSize::new(64_000))
        .open()
        .unwrap()
}

/// Inserts "b" into `s` (whose budget holds one entry), which evicts "a"
/// through the write-behind writer, with a fault-plan hook that holds the
/// writer for a second at the first `op` on a file whose name satisfies
/// `at`. Returns once the writer is held there, with when it went on
/// (set after the second).
fn spill_held_at(
    s: &ndarray_offload::DiskBackedStore,
    op: &'static str,
    at: fn(&str) -> bool,
) -> std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>> {
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};
    let (reached, held) = mpsc::channel::<()>();
    let left: Arc<Mutex<Option<Instant>>> = Arc::default();
    let left_hook = left.clone();
    let plan = FaultPlan::fail_at(0).with_hook(move |o, path| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if format!("{o:?}") == op && name.is_some_and(|n| at(&n)) {
            let _ = reached.send(());
            std::thread::sleep(Duration::from_millis(1000));
            left_hook.lock().unwrap().get_or_insert_with(Instant::now);
        }
    });
    let g = install(plan);
    // The writer thread adopts the plan.
    s.insert("b", entry(2.0)).unwrap();
    drop(g);
    held.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the spill of a reached its {op}"));
    left
}

/// A removal while the entry's spill is being written behind: the writer
/// is held inside the rename of the spill's pair (where it holds the lock
/// every publish's renames hold) until the removal has started, so the
/// removal runs while the pair is not there yet and is renamed in just
/// after. The removal asks whether there are files only once the entry
/// stopped publishing: it deletes the pair, and the removed entry never
/// comes back (in this handle or after reopening).
#[test]
fn a_removal_while_a_spill_is_renamed_in_leaves_no_files() {
    use std::time::Instant;
    let mut raced = 0;
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let s = one_entry_store(dir.path());
        s.insert("a", entry(1.0)).unwrap();
        let left = spill_held_at(&s, "Rename", |n| n == "a.npy");
        let started = Instant::now();
        assert!(s.remove("a").unwrap(), "round {round}");
        // The removal started while the writer was still inside the rename.
        if left.lock().unwrap().is_some_and(|t| started < t) {
            raced += 1;
        }
        s.flush().unwrap();
        assert!(!s.contains("a"), "round {round}");
        assert!(
            matches!(s.get::<f64, Ix1>("a"), Err(Error::KeyNotFound { .. })),
            "round {round}"
        );
        for f in ["a.npy", "a.meta.json"] {
            assert!(!dir.path().join(f).exists(), "round {round}: {f} is back");
        }
        assert_eq!(read(&s, "b"), 2.0);
        s.close().unwrap();
        let s = StoreBuilder::new(dir.path()).open().unwrap();
        assert!(!s.contains("a"), "round {round}: a is back after reopening");
        assert_eq!(read(&s, "b"), 2.0);
    }
    // The race was made to happen, not hoped for.
    assert!(
        raced >= 4,
        "the removal overlapped the rename in {raced} of 5 rounds"
    );
}

/// `set_attrs` while a spill of the entry is writing its files: the spill
/// took the old attributes, and its metadata is renamed in after
/// `set_attrs` wrote (or, with no pair on disk yet, skipped writing) the
/// new ones. A fault-plan hook holds the write-behind writer for a second
/// at the creation of its data file. The publish looks at the attributes
/// once its pair is in place and writes the new ones again: they are what
/// the store and a reopened store read, with or without a pair on disk
/// before.
#[test]
fn attributes_set_while_a_spill_is_written_are_kept() {
    use serde_json::json;
    use std::time::Instant;
    let mut raced = 0;
    for round in 0..6 {
        let on_disk = round % 2 == 0;
        let dir = tempfile::tempdir().unwrap();
        let s = one_entry_store(dir.path());
        let opts = ndarray_offload::InsertOptions::new().attrs(json!({"v": "old"}));
        s.insert_opts("a", entry(1.0), &opts).unwrap();
        if on_disk {
            // A pair with the old attributes, then a change in RAM that the
            // spill writes.
            s.flush().unwrap();
            s.get::<f64, Ix1>("a").unwrap().write().unwrap()[0] = 1.0;
        }
        let left = spill_held_at(&s, "Create", |n| n.ends_with(".a.npy.tmp"));
        let started = Instant::now();
        s.set_attrs("a", json!({"v": "new"})).unwrap();
        let done = Instant::now();
        s.flush().unwrap();
        // set_attrs ran while the writer was still before its renames.
        if left
            .lock()
            .unwrap()
            .is_some_and(|t| started < t && done < t)
        {
            raced += 1;
        }
        assert_eq!(s.info("a").unwrap().attrs["v"], "new", "round {round}");
        let text = std::fs::read_to_string(dir.path().join("a.meta.json")).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(meta["ndoffload_attrs"]["v"], "new", "round {round}: {text}");
        assert_eq!(read(&s, "a"), 1.0);
        s.close().unwrap();
        let s = StoreBuilder::new(dir.path()).open().unwrap();
        assert_eq!(
            s.info("a").unwrap().attrs["v"],
            "new",
            "round {round}: the old attributes are back after reopening"
        );
        assert_eq!(read(&s, "a"), 1.0);
        assert_eq!(read(&s, "b"), 2.0);
    }
    // The race was made to happen, not hoped for.
    assert!(
        raced >= 5,
        "set_attrs overlapped the spill in {raced} of 6 rounds"
    );
}

#[test]
fn prefetching_yields_every_name_in_order_and_reads_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(ByteSize::new(24_000))
        .open()
        .unwrap();
    for i in 0..10 {
        s.insert(format!("k{i}"), entry(i as f64)).unwrap();
    }
    s.flush().unwrap();
    // Entries on disk, in RAM, missing and invalid names all pass through.
    let mut names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    names.push("missing".into());
    names.push("bad/name".into());
    let mut it = s.prefetching(names.clone(), 3);
    let mut seen = Vec::new();
    for n in it.by_ref() {
        if let Some(i) = n.strip_prefix('k') {
            assert_eq!(read(&s, &n), i.parse::<f64>().unwrap());
        }
        seen.push(n);
    }
    assert_eq!(seen, names);
    // The reader may have had nothing left to do: the caller was faster.
    let _ = it.read_time();
    drop(it);
    // Dropped early: the reader stops.
    let mut it = s.prefetching((0..10).map(|i| format!("k{i}")), 4);
    assert_eq!(it.next().as_deref(), Some("k0"));
    drop(it);
    s.close().unwrap();
}

#[test]
fn reading_spilled_entries_back_releases_them_instead_of_spilling_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(ByteSize::new(24_000))
        .open()
        .unwrap();
    for i in 0..6 {
        s.insert(format!("k{i}"), entry(i as f64)).unwrap();
    }
    // k0..k2 spilled, k3..k5 in RAM.
    let evictions = s.stats().evictions;
    for i in 0..3 {
        assert_eq!(read(&s, &format!("k{i}")), i as f64);
    }
    for i in 3..6 {
        assert_eq!(
            s.info(format!("k{i}")).unwrap().state,
            ndarray_offload::ArrayState::InMemory,
            "k{i} was spilled by a read of a spilled entry"
        );
    }
    // Each read mapped one entry and released the one read before.
    assert!(s.stats().evictions - evictions <= 3);
    assert!(s.resident_bytes() <= 24_000 + 8_000);
    s.close().unwrap();
}

#[test]
fn a_read_only_store_with_a_budget_releases_mapped_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = StoreBuilder::new(dir.path()).open().unwrap();
        for i in 0..8 {
            s.insert(format!("k{i}"), entry(i as f64)).unwrap();
        }
        s.close().unwrap();
    }
    let s = StoreBuilder::new(dir.path())
        .read_only(true)
        .memory_budget(ByteSize::new(16_500))
        .open()
        .unwrap();
    for name in s.prefetching((0..8).map(|i| format!("k{i}")), 2) {
        read(&s, &name);
        assert!(s.resident_bytes() <= 16_500 + 8_200, "{:?}", s.stats());
    }
}
