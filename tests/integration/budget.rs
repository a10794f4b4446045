//! Memory budget, statistics and get_or_compute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ndarray::{Array1, Ix1};
use ndarray_offload::{ArrayState, ByteSize, DiskBackedStore, Error, StoreBuilder};
use proptest::prelude::*;

/// 1000 f64 = 8000 bytes per entry.
fn entry(v: f64) -> Array1<f64> {
    Array1::from_elem(1000, v)
}

fn state(s: &DiskBackedStore, k: &str) -> ArrayState {
    s.info(k).unwrap().state
}

#[test]
fn least_recently_used_entries_are_evicted_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(24_000u64)
        .open()
        .unwrap();
    for k in ["a", "b", "c"] {
        s.insert(k, entry(1.0)).unwrap();
    }
    assert_eq!(s.stats().evictions, 0);
    s.get::<f64, Ix1>("a").unwrap(); // a is now the most recently used
    s.insert("d", entry(2.0)).unwrap();
    assert_eq!(
        state(&s, "b"),
        ArrayState::Offloaded,
        "b was least recently used"
    );
    for k in ["a", "c", "d"] {
        assert_eq!(state(&s, k), ArrayState::InMemory, "{k}");
    }
    s.insert("e", entry(3.0)).unwrap();
    assert_eq!(state(&s, "c"), ArrayState::Offloaded);
    let st = s.stats();
    assert_eq!(st.evictions, 2);
    assert_eq!(st.bytes_resident, 24_000);
    assert_eq!(st.entries_resident, 3);
    // Evicted data was persisted, not lost.
    assert_eq!(
        s.get::<f64, Ix1>("b").unwrap().read().unwrap().view().sum(),
        1000.0
    );
    assert_eq!(s.stats().loads, 1);
}

#[test]
fn pinned_entries_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(16_000u64)
        .open()
        .unwrap();
    s.insert("a", entry(1.0)).unwrap();
    s.insert("b", entry(2.0)).unwrap();
    let a = s.get::<f64, Ix1>("a").unwrap();
    let b = s.get::<f64, Ix1>("b").unwrap();
    let ga = a.read().unwrap();
    let gb = b.read().unwrap();
    // The newest entry is the only unpinned one: it goes.
    s.insert("c", entry(3.0)).unwrap();
    assert_eq!(state(&s, "c"), ArrayState::Offloaded);
    assert_eq!(state(&s, "a"), ArrayState::InMemory);
    assert_eq!(state(&s, "b"), ArrayState::InMemory);
    assert_eq!(s.stats().over_budget_events, 0);
    // Everything resident is pinned: the budget is exceeded for the moment.
    s.set_memory_budget(Some(ByteSize::new(8_000)));
    assert_eq!(state(&s, "a"), ArrayState::InMemory);
    assert_eq!(state(&s, "b"), ArrayState::InMemory);
    assert_eq!(ga.view().sum(), 1000.0, "the reader still sees its data");
    let st = s.stats();
    assert_eq!(st.bytes_resident, 16_000);
    assert_eq!(st.over_budget_events, 1);
    drop(ga);
    // Eviction resumes as soon as a pin drops.
    assert_eq!(state(&s, "a"), ArrayState::Offloaded);
    assert_eq!(s.stats().bytes_resident, 8_000);
    assert_eq!(gb.view().sum(), 2000.0);
    drop(gb);
    s.set_memory_budget(None);
    assert_eq!(s.stats().budget, None);
}

#[test]
fn budget_from_strings() {
    let dir = tempfile::tempdir().unwrap();
    for (text, bytes) in [
        ("512MiB", 512u64 << 20),
        ("2GiB", 2 << 30),
        ("2GB", 2_000_000_000),
        ("500MB", 500_000_000),
    ] {
        let b: ByteSize = text.parse().unwrap();
        let s = StoreBuilder::new(dir.path().join(text))
            .memory_budget(b)
            .open()
            .unwrap();
        assert_eq!(s.stats().budget, Some(bytes));
    }
    assert!(matches!(
        "12 parsecs".parse::<ByteSize>(),
        Err(Error::InvalidSize { .. })
    ));
}

#[test]
fn get_or_compute_computes_once_under_contention() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|sc| {
        for _ in 0..8 {
            let s = s.clone();
            let calls = calls.clone();
            sc.spawn(move || {
                let v = s
                    .get_or_compute::<f64, Ix1, _>("expensive", || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        entry(42.0)
                    })
                    .unwrap();
                assert_eq!(v.read().unwrap().view()[999], 42.0);
            });
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let st = s.stats();
    assert_eq!(st.computes, 1);
    assert_eq!(
        st.hits + st.misses + st.loads,
        8 + 1,
        "7 waiting lookups plus the computing one's miss and get"
    );
    // A failing computation stores nothing.
    let r = s.try_get_or_compute::<f64, Ix1, _, Error>("bad", || {
        Err(Error::InvalidSize {
            input: "x".into(),
            reason: "test",
            option: None,
        })
    });
    assert!(r.is_err());
    assert!(!s.contains("bad"));
}

#[test]
fn stats_display_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(8_000u64)
        .open()
        .unwrap();
    s.insert("a", entry(1.0)).unwrap();
    s.insert("b", entry(1.0)).unwrap();
    let _ = s.get::<f64, Ix1>("zzz");
    let text = s.stats().to_string();
    assert!(
        text.contains("evictions") && text.contains("hit rate"),
        "{text}"
    );
    let st = s.stats();
    assert_eq!((st.misses, st.evictions, st.entries_on_disk), (1, 1, 1));
    assert_eq!(st.bytes_on_disk, 8000);
    s.reset_stats();
    let st = s.stats();
    assert_eq!((st.misses, st.evictions), (0, 0));
    assert_eq!(st.bytes_resident, 8000, "gauges are not reset");
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u16),
    Get(u8),
    Write(u8),
    Offload(u8),
    OffloadAll,
    Remove(u8),
    Flush,
    Pin(u8),
    Unpin,
    DisableCaching(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u16..400).prop_map(|(k, n)| Op::Insert(k, n)),
        3 => (0u8..6).prop_map(Op::Get),
        1 => (0u8..6).prop_map(Op::Write),
        1 => (0u8..6).prop_map(Op::Offload),
        1 => Just(Op::OffloadAll),
        1 => (0u8..6).prop_map(Op::Remove),
        1 => Just(Op::Flush),
        1 => (0u8..6).prop_map(Op::Pin),
        1 => Just(Op::Unpin),
        1 => (0u8..6).prop_map(Op::DisableCaching),
    ]
}

/// Runs `ops` on a store with a memory budget of `budget` bytes and checks
/// after each one that the resident bytes are those of the entries not
/// offloaded. With `behind`, every spill is written behind by the default
/// policy (its size threshold lowered to one byte for this thread): the
/// bytes in flight then stay within the default bound (a quarter of the
/// budget, or one entry alone), and once the writer is idle the accounting
/// is exact again.
fn check_accounting(ops: Vec<Op>, budget: u64, behind: bool) -> Result<(), TestCaseError> {
    ndarray_offload::__testing::set_write_behind_min_bytes(behind.then_some(1));
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .memory_budget(budget)
        .open()
        .unwrap();
    let mut pins = Vec::new();
    let mut largest = 0u64;
    let mut behind_seen = false;
    for op in ops {
        if let Op::Insert(_, n) = op {
            largest = largest.max(u64::from(n) * 4);
        }
        {
            let k = |i: u8| format!("k{i}");
            match op {
                Op::Insert(i, n) => s
                    .insert(k(i), Array1::<f32>::from_elem(n as usize, 1.0))
                    .unwrap(),
                Op::Get(i) => {
                    if let Ok(h) = s.get::<f32, Ix1>(k(i)) {
                        h.read().unwrap();
                    }
                }
                Op::Write(i) => {
                    if let Ok(h) = s.get::<f32, Ix1>(k(i)) {
                        h.write().unwrap().view_mut()[0] = 2.0;
                    }
                }
                Op::Offload(i) => {
                    let _ = s.offload(k(i));
                }
                Op::OffloadAll => s.offload_all().unwrap(),
                Op::Remove(i) => {
                    s.remove(k(i)).unwrap();
                }
                Op::Flush => s.flush().unwrap(),
                Op::Pin(i) => {
                    if let Ok(h) = s.get::<f32, Ix1>(k(i)) {
                        pins.push(h);
                    }
                }
                Op::Unpin => {
                    pins.clear();
                }
                Op::DisableCaching(i) => {
                    if let Ok(h) = s.get::<f32, Ix1>(k(i)) {
                        h.as_array().disable_caching().unwrap();
                    }
                }
            }
        }
        if behind {
            let flying = s.stats().bytes_in_flight;
            behind_seen |= flying > 0;
            prop_assert!(
                flying <= (budget / 4).max(largest),
                "{} bytes in flight",
                flying
            );
            let t = std::time::Instant::now();
            while s.stats().bytes_in_flight > 0 {
                prop_assert!(
                    t.elapsed() < std::time::Duration::from_secs(20),
                    "the writer never finished"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let expect: u64 = s
            .keys()
            .iter()
            .map(|k| s.info(k.as_str()).unwrap())
            .filter(|i| i.state != ArrayState::Offloaded)
            .map(|i| i.nbytes)
            .sum();
        let st = s.stats();
        prop_assert_eq!(st.bytes_resident, expect);
        prop_assert_eq!(s.resident_bytes(), expect);
    }
    if behind && behind_seen {
        prop_assert!(s.stats().write_behind_time > std::time::Duration::ZERO);
    }
    ndarray_offload::__testing::set_write_behind_min_bytes(None);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn resident_accounting_matches_entries(ops in prop::collection::vec(op(), 1..40), budget in 0u64..6000) {
        check_accounting(ops, budget * 4, false)?;
    }

    #[test]
    fn resident_accounting_matches_entries_with_spills_written_behind(ops in prop::collection::vec(op(), 1..40), budget in 0u64..6000) {
        check_accounting(ops, budget * 4, true)?;
    }
}

#[test]
fn system_pressure_offloads_down_to_the_target() {
    use ndarray_offload::SystemPressure;
    let dir = tempfile::tempdir().unwrap();
    // A threshold no machine meets: the store is always under pressure.
    let s = StoreBuilder::new(dir.path())
        .system_pressure(SystemPressure::new(u64::MAX, 16_000))
        .open()
        .unwrap();
    for k in ["a", "b", "c", "d"] {
        s.insert(k, entry(1.0)).unwrap();
        // Pressure is checked at most every 100 ms.
        std::thread::sleep(std::time::Duration::from_millis(110));
        crate::common::enforce_budget(&s);
    }
    let st = s.stats();
    assert!(st.bytes_resident <= 16_000, "{st}");
    assert!(st.evictions >= 2, "{st}");
    assert_eq!(st.budget, None);
    // A threshold no machine falls under: nothing is offloaded.
    let dir2 = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir2.path())
        .system_pressure(SystemPressure::new(0, 0))
        .open()
        .unwrap();
    for k in ["a", "b"] {
        s.insert(k, entry(1.0)).unwrap();
    }
    assert_eq!(s.stats().evictions, 0);
}

/// With a memory budget and the default options, spills of entries of a
/// mebibyte and more are written behind (the evicting insert returns; one
/// writer writes them, within the default bound in flight) and smaller
/// ones by the evicting call; `write_behind(0, _)` writes every spill in
/// the evicting call. Either way every value reads back.
#[test]
fn large_spills_are_written_behind_by_default_small_ones_in_the_call() {
    let big = |v: f32| Array1::<f32>::from_elem(384 << 10, v); // 1.5 MiB
    let budget = 4u64 << 20;
    for (name, sync) in [("default", false), ("write_behind(0, _)", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StoreBuilder::new(dir.path()).memory_budget(budget);
        if sync {
            b = b.write_behind(0, 0u64);
        }
        let s = b.open().unwrap();
        let mut largest_flight = 0;
        for i in 0..8 {
            s.insert(format!("b{i}"), big(i as f32)).unwrap();
            let st = s.stats();
            largest_flight = largest_flight.max(st.bytes_in_flight);
            // In flight: at most a quarter of the budget, or one entry.
            assert!(
                st.bytes_in_flight <= (budget / 4).max(1536 << 10),
                "{name}: {st}"
            );
            // What is not in flight is within the budget.
            assert!(
                st.bytes_resident - st.bytes_in_flight <= budget,
                "{name}: {st}"
            );
            if sync {
                assert_eq!(st.bytes_in_flight, 0, "{name}");
                assert!(st.bytes_resident <= budget, "{name}: {st}");
            }
        }
        let t = std::time::Instant::now();
        while s.stats().bytes_in_flight > 0 {
            assert!(
                t.elapsed().as_secs() < 60,
                "{name}: the writer never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let st = s.stats();
        assert!(st.bytes_resident <= budget, "{name}: {st}");
        assert_eq!(st.evictions, 6, "{name}: {st}");
        assert_eq!(
            st.write_behind_time > std::time::Duration::ZERO,
            !sync,
            "{name}: {st} (largest in flight {largest_flight})"
        );
        for i in 0..8 {
            let h = s.get::<f32, Ix1>(format!("b{i}")).unwrap();
            assert_eq!(h.read().unwrap().view()[1000], i as f32, "{name}");
        }
        // Small entries spill in the evicting call, also by default.
        let dir = tempfile::tempdir().unwrap();
        let s = StoreBuilder::new(dir.path())
            .memory_budget(24_000u64)
            .open()
            .unwrap();
        for k in ["a", "b", "c", "d"] {
            s.insert(k, entry(1.0)).unwrap();
        }
        assert_eq!(state(&s, "a"), ArrayState::Offloaded);
        let st = s.stats();
        assert_eq!((st.evictions, st.bytes_in_flight), (1, 0));
        assert_eq!(st.write_behind_time, std::time::Duration::ZERO);
    }
}
