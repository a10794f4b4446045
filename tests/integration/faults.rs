//! Fault injection through the crate's I/O seam: for each store operation,
//! fail the N-th file-system operation for every N.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{array, Array1, Ix1};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{DiskBackedStore, Error};

use crate::common::{snapshot, temp_files};

fn values(s: &DiskBackedStore) -> BTreeMap<String, Vec<i32>> {
    s.keys()
        .iter()
        .map(|k| {
            (
                k.to_string(),
                s.get::<i32, Ix1>(k.as_str())
                    .unwrap()
                    .to_owned_array()
                    .unwrap()
                    .to_vec(),
            )
        })
        .collect()
}

/// A store with `a` and `b` on disk and `c` only in memory.
fn setup(dir: &Path) -> DiskBackedStore {
    let s = DiskBackedStore::open(dir).unwrap();
    s.insert_durable("a", array![1i32, 2, 3]).unwrap();
    s.insert_durable("b", array![4i32]).unwrap();
    s.insert("c", array![5i32, 6]).unwrap();
    s
}

type Op = fn(&DiskBackedStore) -> ndarray_offload::Result<()>;

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("insert", |s| {
            s.insert_durable("new", Array1::<i32>::from_elem(100, 7))
        }),
        ("replace", |s| {
            s.insert_durable("a", Array1::<i32>::from_elem(50, 8))
        }),
        ("remove", |s| s.remove("a").map(|_| ())),
        ("offload", |s| s.offload("c")),
        ("flush", |s| s.flush()),
        ("offload_all", |s| s.offload_all()),
    ]
}

#[test]
fn every_failing_operation_leaves_the_store_intact() {
    let mut total_faults = 0;
    for (name, op) in ops() {
        let mut n = 1;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let s = setup(dir.path());
            let before = snapshot(dir.path());
            let plan = FaultPlan::fail_at(n);
            let guard = install(plan.clone());
            let r = op(&s);
            drop(guard);
            if plan.count() < n {
                r.unwrap_or_else(|e| panic!("{name} without a fault failed: {e}"));
                assert!(n > 1, "{name} did no file-system operation");
                break;
            }
            let failed_op = plan.log().get(n as usize - 1).cloned();
            assert!(
                r.is_err(),
                "{name}: fault at op {n} ({failed_op:?}) was not reported"
            );
            assert_eq!(
                snapshot(dir.path()),
                before,
                "{name}: fault at op {n} ({failed_op:?}) changed the store"
            );
            assert!(
                temp_files(dir.path()).is_empty(),
                "{name}: fault at op {n} left temp files"
            );
            // The store keeps working: the same operation now succeeds.
            op(&s).unwrap_or_else(|e| panic!("{name} after fault {n}: {e}"));
            s.flush().unwrap();
            let after = values(&s);
            drop(s);
            let reopened = DiskBackedStore::open(dir.path()).unwrap();
            assert_eq!(
                values(&reopened),
                after,
                "{name} after fault {n}: reopen differs"
            );
            total_faults += 1;
            n += 1;
        }
    }
    eprintln!("{total_faults} injected faults");
    assert!(total_faults >= 30);
}

#[test]
fn failing_open_recovery_is_retried_by_the_next_open() {
    let mut n = 1;
    loop {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = setup(dir.path());
            s.flush().unwrap();
        }
        // Leftovers of interrupted work: a stray temp and a removal tombstone.
        std::fs::write(dir.path().join(".ndo.1-1-1.a.npy.tmp"), b"partial").unwrap();
        std::fs::hard_link(
            dir.path().join("b.npy"),
            dir.path().join(".ndo.1-1-2.b.npy.del.tmp"),
        )
        .unwrap();
        std::fs::rename(
            dir.path().join("b.meta.json"),
            dir.path().join(".ndo.1-1-2.b.meta.json.del.tmp"),
        )
        .unwrap();
        let plan = FaultPlan::fail_at(n);
        let guard = install(plan.clone());
        let r = DiskBackedStore::open(dir.path());
        drop(guard);
        if plan.count() < n {
            r.unwrap();
            break;
        }
        assert!(r.is_err(), "fault at op {n} of open was not reported");
        drop(r);
        let s = DiskBackedStore::open(dir.path()).unwrap();
        let v = values(&s);
        assert_eq!(v.get("a"), Some(&vec![1, 2, 3]));
        assert_eq!(v.get("c"), Some(&vec![5, 6]));
        assert!(!v.contains_key("b"), "the interrupted removal completes");
        assert!(temp_files(dir.path()).is_empty());
        n += 1;
    }
    assert!(n > 3, "open recovery used only {} operations", n - 1);
}

#[test]
fn injected_error_kinds_map_to_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    for (kind, check) in [
        (
            std::io::ErrorKind::StorageFull,
            (|e: &Error| matches!(e, Error::DiskFull { .. })) as fn(&Error) -> bool,
        ),
        (std::io::ErrorKind::PermissionDenied, |e| {
            matches!(e, Error::PermissionDenied { .. })
        }),
        (std::io::ErrorKind::Other, |e| matches!(e, Error::Io { .. })),
    ] {
        let _g = install(FaultPlan::fail_at(1).with_kind(kind));
        let e = s.insert_durable("x", array![1i32]).unwrap_err();
        assert!(check(&e), "{kind:?}: {e:?}");
        assert!(
            e.to_string().contains(dir.path().to_str().unwrap()),
            "error names the path: {e}"
        );
    }
}
