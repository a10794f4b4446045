//! The disk budget: recomputable entries (made by `get_or_compute` or
//! inserted with `InsertOptions::recomputable`) are deleted, least recently used
//! first, when the entries' files exceed it; ordinary and foreign entries
//! never are.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array1, Ix1};
use ndarray_offload::{ByteSize, DiskBackedStore, Error, StoreBuilder};
use proptest::prelude::*;

use crate::common::{fixtures, snapshot, temp_files};

/// The header numpy and the crate write for a one-dimensional `<f8` array.
const HEADER: u64 = 128;

/// `n` f64 of value `v`: a file of `HEADER + 8 n` bytes.
fn entry(n: usize, v: f64) -> Array1<f64> {
    Array1::from_elem(n, v)
}

/// Bytes of the entries' `.npy` files in `dir`, by key.
fn npy_files(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(".npy")?.to_owned();
            (!key.starts_with('.')).then(|| (key, e.metadata().unwrap().len()))
        })
        .collect()
}

fn value(s: &DiskBackedStore, k: &str) -> Array1<f64> {
    s.get::<f64, Ix1>(k).unwrap().to_owned_array().unwrap()
}

fn meta_text(dir: &Path, k: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{k}.meta.json"))).unwrap()
}

#[test]
fn the_recomputable_flag_is_persisted_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert("ordinary", entry(10, 1.0)).unwrap();
        s.insert_opts(
            "inserted",
            entry(10, 2.0),
            &ndarray_offload::InsertOptions::new().recomputable(true),
        )
        .unwrap();
        s.get_or_compute::<f64, Ix1, _>("computed", || entry(10, 3.0))
            .unwrap();
        s.close().unwrap();
    }
    assert!(!meta_text(dir.path(), "ordinary").contains("ndoffload_recomputable"));
    for k in ["inserted", "computed"] {
        let t = meta_text(dir.path(), k);
        assert!(
            t.contains(r#""enable_caching": true, "ndoffload_recomputable": true"#),
            "{t}"
        );
    }
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert!(!s.info("ordinary").unwrap().flags.recomputable);
    assert!(s.info("inserted").unwrap().flags.recomputable);
    assert!(s.info("computed").unwrap().flags.recomputable);
    // Attributes rewritten in place keep the flag.
    s.set_attrs("computed", serde_json::json!({"units": "m"}))
        .unwrap();
    assert!(meta_text(dir.path(), "computed").contains(r#""ndoffload_recomputable": true"#));
    // An edit through a handle is published with the flag.
    let h = s.get::<f64, Ix1>("inserted").unwrap();
    h.write().unwrap().view_mut()[0] = 9.0;
    drop(h);
    s.flush().unwrap();
    assert!(meta_text(dir.path(), "inserted").contains(r#""ndoffload_recomputable": true"#));
    // An ordinary insert over a recomputable key makes it ordinary.
    s.insert_durable("computed", entry(10, 4.0)).unwrap();
    assert!(!meta_text(dir.path(), "computed").contains("ndoffload_recomputable"));
    s.close().unwrap();

    // A reopened store with a budget nothing fits in deletes only the
    // recomputable entry it knows of from the metadata.
    let s = StoreBuilder::new(dir.path())
        .disk_budget(1u64)
        .open()
        .unwrap();
    assert_eq!(s.keys().len(), 2, "{:?}", s.keys());
    assert!(!s.contains("inserted"));
    assert_eq!(value(&s, "ordinary")[0], 1.0);
    assert_eq!(value(&s, "computed")[0], 4.0);
    let st = s.stats();
    assert_eq!(st.disk_evictions, 1, "{st}");
    assert_eq!(st.bytes_disk_evicted, HEADER + 80);
    assert!(st.disk_over_budget_events >= 1, "{st}");
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn numpy_files_read_the_recomputable_entries() {
    let Some(py) = crate::common::numpy_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.get_or_compute::<f64, Ix1, _>("computed", || entry(5, 3.0))
        .unwrap();
    s.close().unwrap();
    let out = crate::common::run_python(
        &py,
        "import json, sys, numpy as np\n\
         d = sys.argv[1]\n\
         a = np.load(d + '/computed.npy', mmap_mode='r')\n\
         m = json.load(open(d + '/computed.meta.json'))\n\
         print(float(a.sum()), m['ndoffload_recomputable'], m['enable_caching'])",
        &[dir.path().to_str().unwrap()],
    );
    assert_eq!(out.trim(), "15.0 True True");
}

#[test]
fn foreign_entries_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("store_numpy")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    // A foreign pair that says it is not recomputable, and one written by
    // hand as GSEGUtils does (no crate field at all).
    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&entry(100, 1.0), &mut npy).unwrap();
    for (k, extra) in [("gseg", ""), ("no", r#", "ndoffload_recomputable": false"#)] {
        std::fs::write(dir.path().join(format!("{k}.npy")), &npy).unwrap();
        std::fs::write(
            dir.path().join(format!("{k}.meta.json")),
            format!(
                r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [100], "dtype": "<f8", "purge_disk_on_gc": true, "automatic_offloading": false, "enable_caching": true{extra}}}"#
            ),
        )
        .unwrap();
    }
    let before = snapshot(dir.path());
    let keys = DiskBackedStore::open_read_only(dir.path()).unwrap().keys();
    assert!(keys.len() >= 4, "{keys:?}");
    {
        let s = StoreBuilder::new(dir.path())
            .disk_budget(1u64)
            .memory_budget(1u64)
            .open()
            .unwrap();
        assert_eq!(s.keys(), keys);
        for k in &keys {
            let _ = s.get_dyn(k.as_str()).map(|h| h.read().map(drop));
        }
        s.flush().unwrap();
        s.offload_all().unwrap();
        // Adding bytes enforces the budget again: still nothing foreign goes.
        s.get_or_compute::<f64, Ix1, _>("computed", || entry(10, 1.0))
            .unwrap();
        s.flush().unwrap();
        assert!(!s.contains("computed"), "the only recomputable entry goes");
        assert_eq!(s.keys(), keys);
        let st = s.stats();
        assert_eq!(st.disk_evictions, 1, "{st}");
        assert!(st.disk_over_budget_events >= 1, "{st}");
        assert!(st.bytes_in_files.unwrap() > 1);
        s.close().unwrap();
    }
    assert_eq!(snapshot(dir.path()), before, "foreign files unchanged");
}

#[test]
fn an_evicted_entry_is_recomputed_and_evictions_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let file = HEADER + 8000;
    // Room for three files.
    let s = StoreBuilder::new(dir.path())
        .disk_budget(3 * file)
        .open()
        .unwrap();
    assert_eq!(s.stats().disk_budget, Some(3 * file));
    s.insert_durable("raw", entry(1000, 0.0)).unwrap();
    let calls = Cell::new(0);
    let compute = |v: f64| {
        calls.set(calls.get() + 1);
        entry(1000, v)
    };
    for (k, v) in [("a", 1.0), ("b", 2.0)] {
        s.get_or_compute::<f64, Ix1, _>(k, || compute(v)).unwrap();
    }
    assert_eq!(s.stats().disk_evictions, 0);
    // "a" is used: "b" is now the least recently used recomputable entry.
    assert_eq!(value(&s, "a")[0], 1.0);
    s.insert_opts(
        "c",
        entry(1000, 3.0),
        &ndarray_offload::InsertOptions::new().recomputable(true),
    )
    .unwrap();
    s.flush().unwrap();
    assert!(!s.contains("b") && s.contains("a") && s.contains("c"));
    let st = s.stats();
    assert_eq!((st.disk_evictions, st.bytes_disk_evicted), (1, file));
    assert_eq!(st.bytes_in_files, Some(3 * file));
    assert_eq!(npy_files(dir.path()).values().sum::<u64>(), 3 * file);
    let text = st.to_string();
    assert!(
        text.contains("disk evictions") && text.contains("disk budget"),
        "{text}"
    );
    // Asked for again, "b" is computed again (and "a" goes).
    let b = s
        .get_or_compute::<f64, Ix1, _>("b", || compute(2.0))
        .unwrap();
    assert_eq!(calls.get(), 3);
    assert_eq!(b.to_owned_array().unwrap()[0], 2.0);
    assert_eq!(s.stats().disk_evictions, 2);
    assert!(!s.contains("a"));
    // Ordinary entries over the budget: only recomputable ones go, then
    // the budget is exceeded and counted.
    for k in ["raw2", "raw3", "raw4"] {
        s.insert_durable(k, entry(1000, 0.5)).unwrap();
    }
    let st = s.stats();
    assert_eq!(s.keys().len(), 4, "{:?}", s.keys());
    assert!(st.disk_over_budget_events >= 1, "{st}");
    assert_eq!(st.disk_evictions, 4);
    s.reset_stats();
    assert_eq!(s.stats().disk_evictions, 0);
    // Lifting the budget deletes nothing more; a read-only handle refuses one.
    s.set_disk_budget(None).unwrap();
    s.get_or_compute::<f64, Ix1, _>("d", || entry(1000, 4.0))
        .unwrap();
    assert!(s.contains("d"));
    let ro = DiskBackedStore::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        ro.set_disk_budget(Some(ByteSize::new(1))),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn a_handle_keeps_its_data_when_its_entry_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path()).open().unwrap();
    s.get_or_compute::<f64, Ix1, _>("a", || entry(1000, 1.0))
        .unwrap();
    s.offload("a").unwrap();
    let h = s.get::<f64, Ix1>("a").unwrap();
    let g = h.read().unwrap(); // mapped from the file
    s.set_disk_budget(Some(ByteSize::new(1))).unwrap();
    assert!(!s.contains("a"));
    assert!(npy_files(dir.path()).is_empty());
    assert_eq!(g.view().sum(), 1000.0);
    drop(g);
    assert_eq!(h.read().unwrap().view().sum(), 1000.0);
    // The budget set on an open store counts the files from then on.
    assert_eq!(s.stats().bytes_in_files, Some(0));
}

#[test]
fn a_recomputable_key_replaced_by_an_ordinary_insert_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(dir.path())
        .disk_budget(HEADER + 8000)
        .open()
        .unwrap();
    s.insert_opts(
        "k",
        entry(1000, 1.0),
        &ndarray_offload::InsertOptions::new().recomputable(true),
    )
    .unwrap();
    s.flush().unwrap();
    // Still only in RAM: the file on disk is the recomputable value's.
    s.insert("k", entry(1000, 2.0)).unwrap();
    s.insert_durable("other", entry(1000, 3.0)).unwrap();
    assert_eq!(value(&s, "k")[0], 2.0);
    s.flush().unwrap();
    assert_eq!(value(&s, "k")[0], 2.0);
    assert_eq!(s.stats().disk_evictions, 0);
}

#[test]
fn a_bad_disk_budget_string_is_an_invalid_size_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let err = StoreBuilder::new(dir.path())
        .disk_budget("twelve parsecs")
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSize { option: Some(o), .. } if *o == "disk_budget"),
        "{err:?}"
    );
    assert!(err.to_string().contains("disk_budget"), "{err}");
    for (text, bytes) in [("2GiB", 2u64 << 30), ("500MB", 500_000_000)] {
        let s = StoreBuilder::new(dir.path())
            .disk_budget(text)
            .open()
            .unwrap();
        assert_eq!(s.stats().disk_budget, Some(bytes));
    }
    // A read-only open ignores it.
    let s = StoreBuilder::new(dir.path())
        .read_only(true)
        .disk_budget(1u64)
        .open()
        .unwrap();
    assert_eq!(s.stats().disk_budget, Some(1));
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u16),
    InsertDurable(u8, u16),
    InsertRecomputable(u8, u16),
    Compute(u8),
    Read(u8),
    Remove(u8),
    Flush,
    Offload(u8),
    OffloadAll,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..6, 1u16..200).prop_map(|(k, n)| Op::Insert(k, n)),
        1 => (0u8..6, 1u16..200).prop_map(|(k, n)| Op::InsertDurable(k, n)),
        2 => (0u8..6, 1u16..200).prop_map(|(k, n)| Op::InsertRecomputable(k, n)),
        4 => (0u8..6).prop_map(Op::Compute),
        2 => (0u8..6).prop_map(Op::Read),
        1 => (0u8..6).prop_map(Op::Remove),
        1 => Just(Op::Flush),
        1 => (0u8..6).prop_map(Op::Offload),
        1 => Just(Op::OffloadAll),
        1 => Just(Op::Reopen),
    ]
}

/// What a key holds in the model: its value (length, fill) and whether it
/// is recomputable.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Held {
    len: usize,
    fill: f64,
    recomputable: bool,
}

/// The value `get_or_compute` computes for key `k`.
fn recipe(k: u8) -> Held {
    Held {
        len: 20 + 37 * k as usize,
        fill: 1000.0 + k as f64,
        recomputable: true,
    }
}

fn cases() -> u32 {
    std::env::var("NDOFFLOAD_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

fn open(dir: &Path, cap: u64, memory: Option<u64>) -> DiskBackedStore {
    let mut b = StoreBuilder::new(dir).disk_budget(cap);
    if let Some(m) = memory {
        b = b.memory_budget(m);
    }
    b.open().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn disk_budget_deletes_only_recomputable_entries(
        ops in prop::collection::vec(op(), 1..48),
        cap in 0u64..4000,
        memory in prop::option::of(0u64..3000),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), cap, memory);
        let mut model: BTreeMap<u8, Held> = BTreeMap::new();
        let k = |i: u8| format!("k{i}");
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(i, n) | Op::InsertDurable(i, n) | Op::InsertRecomputable(i, n) => {
                    let fill = step as f64;
                    let a = entry(n as usize, fill);
                    let recomputable = matches!(op, Op::InsertRecomputable(..));
                    match op {
                        Op::Insert(..) => s.insert(k(i), a).unwrap(),
                        Op::InsertDurable(..) => s.insert_durable(k(i), a).unwrap(),
                        _ => s.insert_opts(k(i), a, &ndarray_offload::InsertOptions::new().recomputable(true)).unwrap(),
                    }
                    model.insert(i, Held { len: n as usize, fill, recomputable });
                }
                Op::Compute(i) => {
                    let was = model.get(&i).copied();
                    let computed = Cell::new(false);
                    let h = s
                        .get_or_compute::<f64, Ix1, _>(k(i), || {
                            computed.set(true);
                            let r = recipe(i);
                            entry(r.len, r.fill)
                        })
                        .unwrap();
                    let got = h.to_owned_array().unwrap();
                    drop(h);
                    // Computed exactly when the key was gone: an evicted
                    // entry is computed again.
                    prop_assert_eq!(computed.get(), was.is_none(), "step {}: {:?}", step, was);
                    let expect = was.unwrap_or_else(|| recipe(i));
                    prop_assert_eq!((got.len(), got[0]), (expect.len, expect.fill), "step {}", step);
                    model.insert(i, expect);
                }
                Op::Read(i) => {
                    if let Ok(h) = s.get::<f64, Ix1>(k(i)) {
                        let g = h.read().unwrap();
                        prop_assert_eq!(g.view()[0], model[&i].fill);
                    }
                }
                Op::Remove(i) => {
                    s.remove(k(i)).unwrap();
                    model.remove(&i);
                }
                Op::Flush => s.flush().unwrap(),
                Op::Offload(i) => { let _ = s.offload(k(i)); }
                Op::OffloadAll => s.offload_all().unwrap(),
                Op::Reopen => {
                    s.close().unwrap();
                    s = open(dir.path(), cap, memory);
                }
            }
            // Every entry there holds its value. Reading maps entries, which
            // may spill others under the memory budget and so delete
            // recomputable ones: those leave the model after the reads. An
            // ordinary entry never disappears.
            for (i, h) in &model {
                if s.contains(k(*i)) {
                    let v = value(&s, &k(*i));
                    prop_assert_eq!((v.len(), v[0]), (h.len, h.fill), "step {}: k{}", step, i);
                }
            }
            model.retain(|i, h| !h.recomputable || s.contains(k(*i)));
            for i in model.keys() {
                prop_assert!(s.contains(k(*i)), "step {}: ordinary k{} is gone", step, i);
            }
            prop_assert_eq!(s.keys().len(), model.len(), "step {}", step);
            // Within the budget unless only ordinary entries' files are left.
            let files = npy_files(dir.path());
            let total: u64 = files.values().sum();
            let recomputable_files: Vec<&String> = files
                .keys()
                .filter(|f| model.iter().any(|(i, h)| h.recomputable && k(*i) == **f))
                .collect();
            prop_assert!(
                total <= cap || recomputable_files.is_empty(),
                "step {}: {} bytes of files over {} with recomputable {:?}", step, total, cap, recomputable_files
            );
            prop_assert_eq!(s.stats().bytes_in_files, Some(total), "step {}", step);
            prop_assert!(temp_files(dir.path()).is_empty());
        }
    }
}
