//! DiskBackedStore behaviour.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{array, Array1, Array2, ArrayD, Ix0, Ix1, Ix2, IxDyn};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{
    ArrayState, ConfigOverrides, DiskBackedStore, Error, LoadMode, StoreBuilder,
};

use crate::common::{fixtures, numpy_python, run_python, sha256_hex, snapshot, temp_files, Tmpfs};

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DiskBackedStore>();
    check::<ndarray_offload::StoredArray<f32, Ix2>>();
}

#[test]
fn insert_get_replace_remove_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert("b", array![[1.0f32, 2.0], [3.0, 4.0]]).unwrap();
        s.insert_durable("a", array![1i64, 2, 3]).unwrap();
        s.insert("z", ndarray::arr0(true)).unwrap();
        assert_eq!(
            s.keys().iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["a", "b", "z"]
        );
        assert_eq!(s.len(), 3);
        assert!(s.contains("a") && !s.contains("nope") && !s.contains("../x"));
        let b = s.get::<f32, Ix2>("b").unwrap();
        assert_eq!(
            b.read().unwrap().view(),
            array![[1.0f32, 2.0], [3.0, 4.0]].view()
        );
        // Replace: a reader holding the old value keeps it.
        s.insert("b", array![[9.0f32]]).unwrap();
        assert_eq!(b.read().unwrap().view()[[1, 1]], 4.0);
        assert_eq!(
            s.get::<f32, Ix2>("b").unwrap().read().unwrap().view(),
            array![[9.0f32]].view()
        );
        s.flush().unwrap();
        assert!(s.remove("a").unwrap());
        assert!(!s.remove("a").unwrap());
        assert!(!dir.path().join("a.npy").exists());
        assert!(!dir.path().join("a.meta.json").exists());
        s.close().unwrap();
    }
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.keys().iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["b", "z"]
    );
    assert!(
        s.iter().all(|i| i.unwrap().state == ArrayState::Offloaded),
        "nothing loaded at open"
    );
    assert_eq!(
        s.get::<f32, IxDyn>("b")
            .unwrap()
            .read()
            .unwrap()
            .view()
            .shape(),
        &[1, 1]
    );
    assert!(s.get::<bool, Ix0>("z").unwrap().read().unwrap().view()[()]);
    let infos: Vec<_> = s.iter().map(|r| r.unwrap()).collect();
    assert_eq!(infos[0].dtype, "<f4");
    assert_eq!(infos[0].shape, vec![1, 1]);
    assert_eq!(infos[0].state, ArrayState::Mapped(LoadMode::ReadOnly));
    assert_eq!(infos[1].dtype, "|b1");
}

#[test]
fn dropping_the_store_writes_pending_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert("pending", Array1::<u16>::from_elem(5, 7)).unwrap();
    }
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.get::<u16, Ix1>("pending")
            .unwrap()
            .to_owned_array()
            .unwrap(),
        Array1::from_elem(5, 7)
    );
}

#[test]
fn typed_get_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.insert_durable("x", Array2::<f64>::zeros((2, 3))).unwrap();
    match s.get::<f32, Ix2>("x") {
        Err(Error::DtypeMismatch {
            expected, found, ..
        }) => assert_eq!((expected.as_str(), found.as_str()), ("<f4", "<f8")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.get::<f64, Ix1>("x"),
        Err(Error::DimensionMismatch {
            expected: 1,
            found: 2,
            ..
        })
    ));
    assert!(matches!(
        s.get::<f64, Ix2>("missing"),
        Err(Error::KeyNotFound { .. })
    ));
    assert!(matches!(
        s.get::<f64, Ix2>("a/b"),
        Err(Error::InvalidName { .. })
    ));
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert!(matches!(
        s.get::<f32, Ix2>("x"),
        Err(Error::DtypeMismatch { .. })
    ));
    assert!(matches!(
        s.get::<f64, Ix1>("x"),
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(s.get::<f64, Ix2>("x").is_ok());
}

#[test]
fn offload_one_some_all_and_lazy_reload() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    for i in 0..4 {
        s.insert(format!("k{i}"), Array1::<f32>::from_elem(1000, i as f32))
            .unwrap();
    }
    assert_eq!(s.resident_bytes(), 16_000);
    s.offload("k0").unwrap();
    assert_eq!(s.info("k0").unwrap().state, ArrayState::Offloaded);
    s.offload_keys(&["k1", "k2"]).unwrap();
    assert_eq!(s.resident_bytes(), 4000);
    s.offload_all().unwrap();
    assert_eq!(s.resident_bytes(), 0);
    let h = s.get::<f32, Ix1>("k3").unwrap();
    assert_eq!(h.read().unwrap().view().sum(), 3000.0);
    assert_eq!(h.state(), ArrayState::Mapped(LoadMode::ReadOnly));
    // Editing a persisted entry never changes its published file in place.
    let before = std::fs::read(dir.path().join("k3.npy")).unwrap();
    h.write().unwrap().view_mut()[0] = -1.0;
    assert_eq!(std::fs::read(dir.path().join("k3.npy")).unwrap(), before);
    s.flush().unwrap();
    let after: Array1<f32> = ndarray_npy::read_npy(dir.path().join("k3.npy")).unwrap();
    assert_eq!(after[0], -1.0);
}

#[test]
fn per_entry_overrides_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let o = ConfigOverrides::default()
        .automatic_offloading(true)
        .purge_on_drop(true);
    s.insert_opts(
        "tmp",
        array![1u8, 2],
        &ndarray_offload::InsertOptions::new().overrides(o.clone()),
    )
    .unwrap();
    s.insert("keep", array![3u8]).unwrap();
    s.flush().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tmp.meta.json")).unwrap()).unwrap();
    assert_eq!(meta["automatic_offloading"], true);
    assert_eq!(meta["purge_disk_on_gc"], true);
    assert_eq!(meta["enable_caching"], true);
    let h = s.get::<u8, Ix1>("tmp").unwrap();
    s.offload("tmp").unwrap();
    assert_eq!(h.with_view(|v| v.sum()).unwrap(), 3);
    assert_eq!(
        h.state(),
        ArrayState::Offloaded,
        "automatic offloading applies"
    );
    s.close().unwrap();
    assert!(!dir.path().join("tmp.npy").exists(), "purged at close");
    assert!(dir.path().join("keep.npy").exists());
}

#[test]
fn entries_with_caching_off_stay_in_ram_but_are_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let o = ConfigOverrides::default().caching(false);
    s.insert_opts(
        "ram",
        array![1u8, 2, 3],
        &ndarray_offload::InsertOptions::new().overrides(o.clone()),
    )
    .unwrap();
    s.offload("ram").unwrap();
    assert_eq!(s.info("ram").unwrap().state, ArrayState::InMemory);
    s.flush().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ram.meta.json")).unwrap()).unwrap();
    assert_eq!(meta["enable_caching"], false);
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.get::<u8, Ix1>("ram").unwrap().to_owned_array().unwrap(),
        array![1, 2, 3]
    );
}

#[test]
fn batch_insert_is_durable_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.insert_batch((0..50).map(|i| {
        (
            format!("t{i:03}"),
            Array2::<f64>::from_elem((10, 3), i as f64),
        )
    }))
    .unwrap();
    assert!(temp_files(dir.path()).is_empty());
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(s.len(), 50);
    for i in [0, 17, 49] {
        let v = s
            .get::<f64, Ix2>(format!("t{i:03}"))
            .unwrap()
            .to_owned_array()
            .unwrap();
        assert_eq!(v, Array2::from_elem((10, 3), i as f64));
    }
    assert!(matches!(
        s.insert_batch(vec![("ok", array![1]), ("bad/name", array![2])]),
        Err(Error::InvalidName { .. })
    ));
    assert!(!s.contains("ok"), "nothing inserted when a name is invalid");
}

#[test]
fn locking() {
    let dir = tempfile::tempdir().unwrap();
    // Several writers, and readers while they run.
    let w1 = DiskBackedStore::open(dir.path()).unwrap();
    let w2 = DiskBackedStore::open(dir.path()).unwrap();
    w1.insert_durable("a", array![1]).unwrap();
    let r = DiskBackedStore::open_read_only(dir.path()).unwrap();
    assert_eq!(r.keys().len(), 1);
    w2.insert_durable("b", array![2]).unwrap();
    // Seen on a miss, without a refresh.
    assert_eq!(
        r.get::<i32, Ix1>("b").unwrap().to_owned_array().unwrap(),
        array![2]
    );
    assert_eq!(w1.writers().unwrap().len(), 2);
    // An exclusive open while writers are registered names them.
    match StoreBuilder::new(dir.path()).exclusive(true).open() {
        Err(Error::Locked { path, holder }) => {
            assert_eq!(path, dir.path().join(ndarray_offload::LOCK_FILE));
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop((w1, w2));
    // Exclusive: keeps the old guarantees for writers; readers still open.
    let x = StoreBuilder::new(dir.path())
        .exclusive(true)
        .open()
        .unwrap();
    assert!(matches!(
        DiskBackedStore::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        StoreBuilder::new(dir.path()).exclusive(true).open(),
        Err(Error::Locked { .. })
    ));
    let r1 = DiskBackedStore::open_read_only(dir.path()).unwrap();
    let r2 = DiskBackedStore::open_read_only(dir.path()).unwrap();
    assert!(matches!(
        r1.insert("x", array![1]),
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(r2.len(), 2);
    drop((r1, r2, x));
    DiskBackedStore::open(dir.path()).unwrap();
}

#[test]
fn locked_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let _w = StoreBuilder::new(dir.path())
        .exclusive(true)
        .open()
        .unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::lock_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("NDOFFLOAD_CHILD_DIR", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run in a child process by locked_across_processes"]
fn lock_child() {
    let Ok(dir) = std::env::var("NDOFFLOAD_CHILD_DIR") else {
        return;
    };
    // The parent holds the store exclusively: writers are refused (and
    // told who holds it), readers are not.
    match DiskBackedStore::open(&dir) {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains("exclusive writer"), "{holder}")
        }
        other => panic!("{other:?}"),
    }
    DiskBackedStore::open_read_only(&dir).unwrap();
}

#[test]
fn read_only_open_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert_durable("a", array![1.5f64]).unwrap();
    }
    // A stray temp file must survive a read-only open.
    std::fs::write(dir.path().join(".ndo.1-2-3.a.npy.tmp"), b"partial").unwrap();
    let before = snapshot(dir.path());
    {
        let s = DiskBackedStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            s.get::<f64, Ix1>("a").unwrap().to_owned_array().unwrap(),
            array![1.5]
        );
        s.flush().unwrap();
    }
    assert_eq!(snapshot(dir.path()), before);
    assert!(matches!(
        DiskBackedStore::open_read_only(dir.path().join("nope")),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn read_only_directory() {
    let Some(fs) = Tmpfs::mount("4m", "") else {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    {
        let s = DiskBackedStore::open(fs.path()).unwrap();
        s.insert_durable("a", array![1u32, 2]).unwrap();
    }
    let ok = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(fs.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let s = DiskBackedStore::open_read_only(fs.path()).unwrap();
    assert_eq!(
        s.get::<u32, Ix1>("a").unwrap().to_owned_array().unwrap(),
        array![1, 2]
    );
    assert!(matches!(
        DiskBackedStore::open(fs.path()),
        Err(Error::PermissionDenied { .. })
    ));
}

#[test]
fn invalid_names_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let before = snapshot(dir.path());
    let long = "x".repeat(201);
    for (name, rule) in [
        ("", "empty or reserved path name"),
        ("..", "empty or reserved path name"),
        ("a\u{1}", "control character"),
        ("/abs", "absolute path, drive or ':'"),
        ("c:x", "absolute path, drive or ':'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("NUL.txt", "Windows device name"),
        ("x.", "trailing space or dot"),
        (long.as_str(), "longer than 200 bytes"),
    ] {
        match s.insert_durable(name, array![1u8]) {
            Err(Error::InvalidName { rule: r, .. }) => assert_eq!(r, rule, "{name:?}"),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert_eq!(snapshot(dir.path()), before);
    // The longest valid name fits every file the store makes.
    let max = "y".repeat(200);
    s.insert_durable(&max, array![1u8]).unwrap();
    s.insert_durable(&max, array![2u8]).unwrap();
    assert_eq!(
        s.get::<u8, Ix1>(&max).unwrap().to_owned_array().unwrap(),
        array![2]
    );
    assert!(s.remove(&max).unwrap());
}

#[test]
fn symlinks_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.npy");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("k.npy")).unwrap();
    std::fs::write(dir.path().join("k.meta.json"), b"{}").unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert!(!s.contains("k"));
    assert!(s
        .incomplete()
        .iter()
        .any(|(n, why)| n.as_str() == "k" && why.contains("symbolic link")));
    assert!(matches!(
        s.get::<u8, Ix1>("k"),
        Err(Error::Incomplete { .. })
    ));
    // Overwriting replaces the link; the target is untouched.
    s.insert_durable("k", array![1u8, 2]).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!std::fs::symlink_metadata(dir.path().join("k.npy"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Removing through a link deletes the link, not the target.
    std::os::unix::fs::symlink(&victim, dir.path().join("j.npy")).unwrap();
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert!(s.remove("j").unwrap());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // A symlink planted at a would-be temp name cannot redirect a write:
    // temp names are unique and created with O_EXCL.
    for i in 0..20 {
        let _ = std::os::unix::fs::symlink(&victim, dir.path().join(format!("k.npy.tmp{i}")));
    }
    s.insert_durable("k", array![3u8]).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn incomplete_entries_and_stray_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert_durable("good", array![1i32]).unwrap();
        s.insert_durable("half", array![2i32]).unwrap();
    }
    std::fs::remove_file(dir.path().join("half.meta.json")).unwrap();
    std::fs::copy(
        dir.path().join("good.meta.json"),
        dir.path().join("orphan.meta.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join(".ndo.99-1-1.good.npy.tmp"), b"junk").unwrap();
    std::fs::write(dir.path().join("good.pkl"), b"\x80\x04 never unpickled").unwrap();
    std::fs::write(dir.path().join("UPPER.NPY"), b"ignored").unwrap();
    std::fs::create_dir(dir.path().join("dir.npy")).unwrap();
    std::fs::copy(
        dir.path().join("good.meta.json"),
        dir.path().join("dir.meta.json"),
    )
    .unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.keys().iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    let inc: BTreeMap<String, String> = s
        .incomplete()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert!(inc["half"].contains("half.meta.json is missing"), "{inc:?}");
    assert!(inc["orphan"].contains("orphan.npy is missing"), "{inc:?}");
    assert!(inc["dir"].contains("is a directory"), "{inc:?}");
    assert!(matches!(
        s.get::<i32, Ix1>("half"),
        Err(Error::Incomplete { .. })
    ));
    assert!(
        temp_files(dir.path()).is_empty(),
        "open sweeps the crate's temp files"
    );
    assert!(
        dir.path().join("good.pkl").exists(),
        "other files are left alone"
    );
    assert_eq!(
        s.get::<i32, Ix1>("good").unwrap().to_owned_array().unwrap(),
        array![1]
    );
    assert!(s.remove("half").unwrap());
    assert!(!dir.path().join("half.npy").exists());
}

fn write_meta(dir: &Path, key: &str, body: &str) {
    std::fs::write(dir.join(format!("{key}.meta.json")), body).unwrap();
}

#[test]
fn metadata_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        for k in [
            "shape",
            "dtype",
            "schema",
            "schema_str",
            "class",
            "notjson",
            "ndim",
        ] {
            s.insert_durable(k, Array2::<f32>::zeros((2, 3))).unwrap();
        }
    }
    let d = dir.path();
    write_meta(
        d,
        "shape",
        r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [3, 2], "dtype": "<f4"}"#,
    );
    write_meta(
        d,
        "dtype",
        r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2, 3], "dtype": "<i4"}"#,
    );
    write_meta(
        d,
        "ndim",
        r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [6], "dtype": "<f4"}"#,
    );
    write_meta(
        d,
        "schema",
        r#"{"schema_version": 2, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2, 3], "dtype": "<f4"}"#,
    );
    write_meta(
        d,
        "schema_str",
        r#"{"schema_version": "1", "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2, 3], "dtype": "<f4"}"#,
    );
    write_meta(
        d,
        "class",
        r#"{"schema_version": 1, "lazy_disk_cache_class": "Pickled", "shape": [2, 3], "dtype": "<f4"}"#,
    );
    write_meta(d, "notjson", "\u{feff}{not json");
    let s = DiskBackedStore::open(d).unwrap();
    match s.get::<f32, Ix2>("shape").unwrap().read() {
        Err(Error::Mismatch { path, field, .. }) => {
            assert_eq!(path, d.join("shape.meta.json"));
            assert_eq!(field, "shape");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    match s.get::<i32, Ix2>("dtype").unwrap().read() {
        Err(Error::Mismatch {
            path, field, other, ..
        }) => {
            assert_eq!(path, d.join("dtype.meta.json"));
            assert_eq!(other, d.join("dtype.npy"));
            assert_eq!(field, "dtype");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(matches!(
        s.get::<f32, Ix1>("ndim").unwrap().read(),
        Err(Error::Mismatch { .. })
    ));
    assert!(matches!(
        s.get::<f32, Ix2>("schema"),
        Err(Error::SchemaVersion { .. })
    ));
    assert!(matches!(
        s.get::<f32, Ix2>("schema_str"),
        Err(Error::SchemaVersion { .. })
    ));
    assert!(matches!(
        s.get::<f32, Ix2>("class"),
        Err(Error::UnknownClass { .. })
    ));
    assert!(matches!(
        s.get::<f32, Ix2>("notjson"),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn numpy_written_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("store_numpy")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("store_numpy.manifest.json")).unwrap(),
    )
    .unwrap();
    let s = DiskBackedStore::open_read_only(dir.path()).unwrap();
    let keys: Vec<String> = s.keys().iter().map(|k| k.to_string()).collect();
    let expect: Vec<String> = manifest.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, expect);
    let c = |a: ArrayD<u8>| sha256_hex(a.as_standard_layout().as_slice().unwrap());
    let _ = c;
    let sha_of = |k: &str| manifest[k]["sha256"].as_str().unwrap().to_owned();
    let f64s = s
        .get::<f64, Ix2>("points")
        .unwrap()
        .to_owned_array()
        .unwrap();
    let bytes: Vec<u8> = f64s
        .as_standard_layout()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(sha256_hex(&bytes), sha_of("points"));
    let u = s
        .get::<u16, Ix1>("intensity")
        .unwrap()
        .to_owned_array()
        .unwrap();
    let bytes: Vec<u8> = u.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(sha256_hex(&bytes), sha_of("intensity"));
    let b = s
        .get::<bool, Ix1>("labels")
        .unwrap()
        .to_owned_array()
        .unwrap();
    let bytes: Vec<u8> = b.iter().map(|&x| x as u8).collect();
    assert_eq!(sha256_hex(&bytes), sha_of("labels"));
    let z = s
        .get::<f32, Ix0>("scalar")
        .unwrap()
        .to_owned_array()
        .unwrap();
    assert_eq!(z[()], 3.5);
    let r = s
        .get::<f32, Ix2>("raster")
        .unwrap()
        .to_owned_array()
        .unwrap();
    let bytes: Vec<u8> = r
        .as_standard_layout()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(sha256_hex(&bytes), sha_of("raster"));
    assert_eq!(
        s.get::<i64, Ix1>(".hidden")
            .unwrap()
            .to_owned_array()
            .unwrap(),
        array![0, 1, 2, 3]
    );
    // A writable open of the same directory works and keeps the data.
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.insert_durable("added", array![1.0f32]).unwrap();
    assert_eq!(s.len(), 7);
}

#[test]
fn numpy_reads_our_store() {
    let Some(py) = numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let pts = Array2::<f64>::from_shape_fn((100, 3), |(i, j)| i as f64 + j as f64 / 10.0);
    s.insert("points", pts.clone()).unwrap();
    s.insert("fortran", pts.t().to_owned()).unwrap();
    s.insert("flags", Array1::from_shape_fn(7, |i| i % 3 == 0))
        .unwrap();
    s.insert("zero_d", ndarray::arr0(-3i8)).unwrap();
    s.insert("empty", Array2::<u64>::zeros((0, 4))).unwrap();
    s.flush().unwrap();
    let code = r#"
import json, os, sys, glob, hashlib
import numpy as np
d = sys.argv[1]
out = {}
for p in sorted(glob.glob(os.path.join(d, '*.npy'))):
    k = os.path.basename(p)[:-4]
    meta = json.load(open(os.path.join(d, k + '.meta.json')))
    a = np.load(p, mmap_mode='r', allow_pickle=False)
    assert meta['schema_version'] == 1 and meta['lazy_disk_cache_class'] == 'DiskBackedNDArray', meta
    assert list(a.shape) == meta['shape'] and a.dtype.str == meta['dtype'], (k, meta, a.dtype.str, a.shape)
    out[k] = [a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
print(json.dumps(out))
"#;
    let out = run_python(&py, code, &[dir.path().to_str().unwrap()]);
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let pts_bytes: Vec<u8> = pts.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(got["points"][2], sha256_hex(&pts_bytes).as_str());
    let t = pts.t();
    let t_bytes: Vec<u8> = t
        .as_standard_layout()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(got["fortran"][2], sha256_hex(&t_bytes).as_str());
    assert_eq!(got["flags"][0], "|b1");
    assert_eq!(got["zero_d"][1], serde_json::json!([]));
    assert_eq!(got["empty"][1], serde_json::json!([0, 4]));
}

#[test]
fn failed_durable_insert_keeps_old_pair() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.insert_durable("k", array![1.0f64, 2.0]).unwrap();
    s.insert_durable("other", array![5u8]).unwrap();
    let before = snapshot(dir.path());
    let mut n = 1;
    loop {
        let plan = FaultPlan::fail_at(n).with_kind(std::io::ErrorKind::StorageFull);
        let g = install(plan.clone());
        let r = s.insert_durable("k", array![9.0f64, 9.0, 9.0]);
        drop(g);
        if plan.count() < n {
            r.unwrap();
            break;
        }
        let e = r.unwrap_err();
        assert!(matches!(e, Error::DiskFull { .. }), "op {n}: {e:?}");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "op {n} ({:?}) changed the store",
            plan.log().last()
        );
        assert!(temp_files(dir.path()).is_empty(), "op {n} left temp files");
        // The new value is still usable in memory.
        assert_eq!(
            s.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap(),
            array![9.0, 9.0, 9.0]
        );
        // A reader opens while the writer is open, and sees the old value.
        let r = DiskBackedStore::open_read_only(dir.path()).unwrap();
        assert_eq!(
            r.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap(),
            array![1.0, 2.0]
        );
        n += 1;
    }
    assert!(
        n > 6,
        "the publish has at least 6 operations, saw {}",
        n - 1
    );
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap(),
        array![9.0, 9.0, 9.0]
    );
}

#[test]
fn full_disk_during_insert() {
    let Some(fs) = Tmpfs::mount("2m", "") else {
        assert!(
            !crate::common::in_ci() || !crate::common::can_mount(),
            "CI as root must mount"
        );
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    let s = DiskBackedStore::open(fs.path()).unwrap();
    s.insert_durable("small", Array1::<f64>::from_elem(1000, 1.0))
        .unwrap();
    let before = snapshot(fs.path());
    let mut i = 0;
    let err = loop {
        match s.insert_durable(
            format!("fill{i}"),
            Array1::<f64>::from_elem(50_000, i as f64),
        ) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
        assert!(i < 100);
    };
    assert!(matches!(err, Error::DiskFull { .. }), "{err:?}");
    assert!(temp_files(fs.path()).is_empty());
    match s.insert_durable("small", Array1::<f64>::from_elem(100_000, 2.0)) {
        Err(Error::DiskFull { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        snapshot(fs.path()).get("small.npy"),
        before.get("small.npy")
    );
    assert!(temp_files(fs.path()).is_empty());
    for j in 0..i {
        assert!(s.remove(format!("fill{j}")).unwrap());
    }
    s.insert_durable("after", Array1::<f64>::from_elem(50_000, 3.0))
        .unwrap();
    drop(s);
    let s = DiskBackedStore::open(fs.path()).unwrap();
    assert_eq!(
        s.get::<f64, Ix1>("after")
            .unwrap()
            .read()
            .unwrap()
            .view()
            .sum(),
        150_000.0
    );
    // The failed replacement of "small" was kept in memory and written when
    // the store was dropped, now that space is free.
    assert_eq!(
        s.get::<f64, Ix1>("small")
            .unwrap()
            .read()
            .unwrap()
            .view()
            .len(),
        100_000
    );
}

/// Builds the on-disk state of an interrupted publish of `key` by hand, as
/// the crate writes it.
fn interrupted(
    dir: &Path,
    key: &str,
    new: &Array1<f32>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let t_npy = dir.join(format!(".ndo.1-1-1.{key}.npy.tmp"));
    ndarray_npy::write_npy(&t_npy, new).unwrap();
    let ino = std::fs::metadata(&t_npy).unwrap().ino();
    let t_meta = dir.join(format!(".ndo.1-1-2.{key}.meta.json.tmp"));
    std::fs::write(
        &t_meta,
        format!(
            r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [{}], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true, "ndoffload_commit": {{"npy_tmp": ".ndo.1-1-1.{key}.npy.tmp", "npy_ino": {ino}}}}}"#,
            new.len()
        ),
    )
    .unwrap();
    (t_npy, t_meta)
}

#[test]
fn open_recovers_interrupted_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = array![1.0f32, 2.0];
    let new = array![7.0f32, 8.0, 9.0];
    {
        let s = DiskBackedStore::open(d).unwrap();
        for k in ["none", "npy_only", "meta_only", "both"] {
            s.insert_durable(k, old.clone()).unwrap();
        }
    }
    interrupted(d, "none", &new);
    let (t_npy, _) = interrupted(d, "npy_only", &new);
    std::fs::rename(t_npy, d.join("npy_only.npy")).unwrap();
    let (_, t_meta) = interrupted(d, "meta_only", &new);
    std::fs::rename(t_meta, d.join("meta_only.meta.json")).unwrap();
    let (t_npy, t_meta) = interrupted(d, "both", &new);
    std::fs::rename(t_npy, d.join("both.npy")).unwrap();
    std::fs::rename(t_meta, d.join("both.meta.json")).unwrap();
    // An interrupted removal: the .npy linked to its tombstone, the
    // metadata already moved to its own.
    {
        let s = DiskBackedStore::open(d).unwrap();
        s.insert_durable("removed", old.clone()).unwrap();
    }
    std::fs::hard_link(
        d.join("removed.npy"),
        d.join(".ndo.1-1-3.removed.npy.del.tmp"),
    )
    .unwrap();
    std::fs::rename(
        d.join("removed.meta.json"),
        d.join(".ndo.1-1-3.removed.meta.json.del.tmp"),
    )
    .unwrap();

    let s = DiskBackedStore::open(d).unwrap();
    let get = |k: &str| s.get::<f32, Ix1>(k).unwrap().to_owned_array().unwrap();
    assert_eq!(get("none"), old);
    assert_eq!(get("npy_only"), new);
    assert_eq!(get("meta_only"), new);
    assert_eq!(get("both"), new);
    assert!(!s.contains("removed") && s.incomplete().is_empty());
    assert!(!d.join("removed.npy").exists());
    assert!(temp_files(d).is_empty());
}

#[test]
fn concurrent_inserts_and_gets() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = s.clone();
            sc.spawn(move || {
                for i in 0..50 {
                    let k = format!("t{t}_{i}");
                    let a = Array1::<u32>::from_elem(100, (t * 1000 + i) as u32);
                    if i % 5 == 0 {
                        s.insert_durable(&k, a).unwrap();
                    } else {
                        s.insert(&k, a).unwrap();
                    }
                    let v = s.get::<u32, Ix1>(&k).unwrap();
                    assert_eq!(v.read().unwrap().view()[99], (t * 1000 + i) as u32);
                    if i % 7 == 0 {
                        s.offload(&k).unwrap();
                    }
                }
            });
        }
        let s2 = s.clone();
        sc.spawn(move || {
            for _ in 0..10 {
                s2.flush().unwrap();
            }
        });
    });
    s.flush().unwrap();
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(s.len(), 200);
    assert_eq!(
        s.get::<u32, Ix1>("t3_49").unwrap().read().unwrap().view()[0],
        3049
    );
}

#[test]
fn builder_options() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("new");
    assert!(matches!(
        StoreBuilder::new(&p).create(false).open(),
        Err(Error::NotFound { .. })
    ));
    let f = dir.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    assert!(StoreBuilder::new(&f).open().is_err());
    let s = StoreBuilder::new(&p).open().unwrap();
    assert!(s.is_empty() && !s.is_read_only());
    assert_eq!(s.dir(), p);
}

#[test]
fn store_operations_with_a_guard_held_by_the_calling_thread() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    s.insert("a", array![1.0f32, 2.0, 3.0]).unwrap();
    s.insert("b", array![4u16, 5]).unwrap();
    let a_npy = dir.path().join("a.npy");
    let h = s.get::<f32, Ix1>("a").unwrap();

    // A read guard: offloading it is refused, every other entry is
    // offloaded, flushing and replacing work.
    {
        let g = h.read().unwrap();
        match s.offload_all() {
            Err(Error::InUse { path }) => assert_eq!(path, a_npy),
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(matches!(s.offload("a"), Err(Error::InUse { .. })));
        assert_eq!(
            s.get::<u16, Ix1>("b").unwrap().state(),
            ArrayState::Offloaded
        );
        assert!(a_npy.exists(), "the refused entry was still persisted");
        s.flush().unwrap();
        assert_eq!(g.view()[1], 2.0);
    }
    s.offload_all().unwrap();
    assert_eq!(h.state(), ArrayState::Offloaded);

    // A write guard: flushing it is refused after the other entries are
    // written; replacing and removing it work.
    s.insert("c", array![7i8]).unwrap();
    {
        let mut w = h.write().unwrap();
        w.view_mut()[0] = 10.0;
        match s.flush() {
            Err(Error::InUse { path }) => assert_eq!(path, a_npy),
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(dir.path().join("c.npy").exists());
        assert!(dir.path().join("c.meta.json").exists());
        s.insert("a", array![9.0f32]).unwrap();
        assert_eq!(w.view()[0], 10.0, "the old value stays with its guard");
        assert!(s.remove("a").unwrap());
        w.view_mut()[1] = 20.0;
    }
    assert!(!s.contains("a"));
    s.flush().unwrap();
    drop(s);
    let s = DiskBackedStore::open_read_only(dir.path()).unwrap();
    assert_eq!(s.keys().len(), 2);
    assert_eq!(
        s.get::<i8, Ix1>("c").unwrap().read().unwrap().view(),
        array![7i8]
    );
}

#[test]
fn closing_under_a_write_guard_still_purges_and_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let o = ConfigOverrides::default().purge_on_drop(true);
    s.insert_opts(
        "tmp",
        array![1u8, 2],
        &ndarray_offload::InsertOptions::new().overrides(o.clone()),
    )
    .unwrap();
    s.insert("kept", array![3.0f64]).unwrap();
    s.flush().unwrap();
    let h = s.get::<f64, Ix1>("kept").unwrap();
    let mut w = h.write().unwrap();
    w.view_mut()[0] = 4.0;
    assert!(matches!(s.close(), Err(Error::InUse { .. })));
    assert!(!dir.path().join("tmp.npy").exists());
    assert!(!dir.path().join("tmp.meta.json").exists());
    // The lock is released: another writer can open the store, and sees
    // the value last flushed.
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(
        s.get::<f64, Ix1>("kept").unwrap().read().unwrap().view()[0],
        3.0
    );
    assert_eq!(w.view()[0], 4.0);
}
