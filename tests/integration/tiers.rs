//! One store type, three tiers: [`DiskBackedStore`] over an object-store
//! prefix (`StoreBuilder::remote`), with RAM (the memory budget) and the
//! local directory as caches, against moto on loopback (see `remote.rs`).

use std::ffi::OsStr;
use std::time::Duration;

use ndarray::{array, Array1, ArrayD, Ix1, IxDyn, ShapeBuilder};
use ndarray_offload::remote::{NetOptions, RemoteOptions};
use ndarray_offload::{DiskBackedStore, Element, Error, RemoteErrorKind, StoreBuilder};

use crate::common::run_child;
use crate::remote::Moto;

fn open(moto: &Moto, url: &str, cache: &std::path::Path, budget: &str) -> DiskBackedStore {
    StoreBuilder::new(cache)
        .remote_with(url, moto.options())
        .memory_budget(budget)
        .open()
        .unwrap()
}

fn layouts<T: Element + Copy>(name: &str, f: impl Fn(usize) -> T) -> Vec<(String, ArrayD<T>)> {
    let c = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| f(i[0] * 20 + i[1] * 5 + i[2]));
    let fo = ArrayD::from_shape_vec(IxDyn(&[3, 4, 5]).f(), (0..60).map(&f).collect()).unwrap();
    let sliced = c
        .clone()
        .slice_move(ndarray::s![..;2, ..;-1, 1..])
        .into_dyn();
    let zero_d = ArrayD::from_elem(IxDyn(&[]), f(7));
    let empty = ArrayD::from_shape_vec(IxDyn(&[0, 3]), vec![]).unwrap();
    vec![
        (format!("{name}_c"), c),
        (format!("{name}_f"), fo),
        (format!("{name}_sliced"), sliced),
        (format!("{name}_0d"), zero_d),
        (format!("{name}_empty"), empty),
    ]
}

fn round_trip<T: Element + Copy + PartialEq + std::fmt::Debug>(
    a: &DiskBackedStore,
    b: &DiskBackedStore,
    name: &str,
    f: impl Fn(usize) -> T,
) -> usize {
    let entries = layouts(name, f);
    let n = entries.len();
    a.insert_batch(entries.clone()).unwrap();
    for (k, v) in entries {
        let got = b.get::<T, IxDyn>(&k).unwrap();
        assert_eq!(got.read().unwrap().view(), v.view(), "{k}");
        // Node A reads its own value back from RAM or its cache.
        let mine = a.get::<T, IxDyn>(&k).unwrap();
        assert_eq!(mine.read().unwrap().view(), v.view(), "{k}");
    }
    n
}

#[test]
fn tiered_store_round_trips_every_dtype_and_layout() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("tiers/dtypes");
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A small memory budget: most entries go through a spill or a map.
    let a = open(&moto, &url, ca.path(), "64KiB");
    let b = open(&moto, &url, cb.path(), "64KiB");
    let mut n = 0;
    n += round_trip(&a, &b, "b1", |i| i % 3 == 0);
    n += round_trip(&a, &b, "i1", |i| i as i8 - 30);
    n += round_trip(&a, &b, "i2", |i| i as i16 * -300);
    n += round_trip(&a, &b, "i4", |i| i as i32 * -70_000);
    n += round_trip(&a, &b, "i8", |i| i as i64 * -(1 << 40));
    n += round_trip(&a, &b, "u1", |i| i as u8);
    n += round_trip(&a, &b, "u2", |i| i as u16 * 1000);
    n += round_trip(&a, &b, "u4", |i| i as u32 * 70_000);
    n += round_trip(&a, &b, "u8", |i| i as u64 * (1 << 40));
    n += round_trip(&a, &b, "f4", |i| i as f32 * 0.5);
    n += round_trip(&a, &b, "f8", |i| i as f64 * -0.25);
    n += round_trip(&a, &b, "c8", |i| {
        num_complex::Complex::new(i as f32, -(i as f32))
    });
    n += round_trip(&a, &b, "c16", |i| num_complex::Complex::new(i as f64, 0.5));
    // A .npy file stored without reading it into memory (a copy in the
    // cache, uploaded by parts).
    let file = ca
        .path()
        .join("..")
        .join(format!("ndo-tiers-{}.npy", std::process::id()));
    let streamed = Array1::from_shape_fn(3 << 20, |i| (i as u32).wrapping_mul(7));
    ndarray_npy::write_npy(&file, &streamed).unwrap();
    a.insert_npy_file("streamed", &file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        b.get::<u32, Ix1>("streamed")
            .unwrap()
            .read()
            .unwrap()
            .view(),
        streamed.view()
    );
    n += 1;
    // A multipart entry (3 parts of 5 MiB), larger than the budget.
    let big = Array1::from_shape_fn(12 << 17, |i| i as f64);
    a.insert_durable("big", big.clone()).unwrap();
    assert_eq!(
        b.get::<f64, Ix1>("big").unwrap().read().unwrap().view(),
        big.view()
    );
    n += 1;
    // A third node lists everything; the lower-level handle agrees.
    let cc = tempfile::tempdir().unwrap();
    let c = open(&moto, &url, cc.path(), "1MiB");
    assert_eq!(c.len(), n);
    let cd = tempfile::tempdir().unwrap();
    let d = crate::common::open_remote(&url, cd.path(), moto.options()).unwrap();
    assert_eq!(d.len(), n);
    let stats = b.stats();
    assert!(stats.loads > 0, "{stats}");
}

#[test]
fn tiered_store_keeps_the_store_api() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("tiers/api");
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&moto, &url, ca.path(), "256KiB");
    let b = open(&moto, &url, cb.path(), "256KiB");

    // insert is not durable: another node sees it after flush.
    a.insert("lazy", array![1u16, 2, 3]).unwrap();
    assert!(b.get::<u16, Ix1>("lazy").is_err());
    a.flush().unwrap();
    assert_eq!(b.get::<u16, Ix1>("lazy").unwrap().read().unwrap().sum(), 6);

    // The memory budget spills to the local cache; flush commits the spills.
    for i in 0..16 {
        a.insert(format!("tile{i:02}"), Array1::from_elem(8192, i as f64))
            .unwrap();
    }
    let s = a.stats();
    assert!(s.evictions > 0, "{s}");
    assert!(s.bytes_resident <= 256 << 10, "{s}");
    a.flush().unwrap();
    b.refresh().unwrap();
    for i in 0..16 {
        let t = b.get::<f64, Ix1>(format!("tile{i:02}")).unwrap();
        assert_eq!(t.read().unwrap()[8191], i as f64);
    }

    // get_or_compute: computed once, read by the other node.
    let v = a
        .get_or_compute::<f32, Ix1, _>("computed", || array![0.5f32, 1.5])
        .unwrap();
    assert_eq!(v.read().unwrap().sum(), 2.0);
    let again = b
        .get_or_compute::<f32, Ix1, _>("computed", || panic!("computed twice"))
        .unwrap();
    assert_eq!(again.read().unwrap().sum(), 2.0);
    drop((v, again));

    // Attributes travel with the entry.
    a.set_attrs("lazy", serde_json::json!({"crs": "EPSG:2056"}))
        .unwrap();
    b.refresh().unwrap();
    assert_eq!(
        b.info("lazy").unwrap().attrs["crs"],
        serde_json::json!("EPSG:2056")
    );

    // A replace by one node is seen by the other after refresh.
    a.insert_durable("lazy", array![10u16, 20]).unwrap();
    b.refresh().unwrap();
    assert_eq!(b.get::<u16, Ix1>("lazy").unwrap().read().unwrap().sum(), 30);

    // Two nodes replace the same version: the second is a Conflict naming
    // the key, and its entry then reads as the winner's value.
    a.insert_durable("contested", array![1i32]).unwrap();
    b.refresh().unwrap();
    assert_eq!(
        b.get::<i32, Ix1>("contested").unwrap().read().unwrap()[0],
        1
    );
    a.insert_durable("contested", array![2i32]).unwrap();
    match b.insert_durable("contested", array![3i32]) {
        Err(Error::Conflict { key, url: u }) => {
            assert_eq!(key, "contested");
            assert!(u.contains("contested"), "{u}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        b.get::<i32, Ix1>("contested").unwrap().read().unwrap()[0],
        2
    );
    // Having seen the winner, the other node may replace it.
    b.insert_durable("contested", array![4i32]).unwrap();
    a.refresh().unwrap();
    assert_eq!(
        a.get::<i32, Ix1>("contested").unwrap().read().unwrap()[0],
        4
    );

    // remove commits a tombstone; every node sees the key gone.
    assert!(a.remove("lazy").unwrap());
    b.refresh().unwrap();
    assert!(!b.contains("lazy"));
    assert!(matches!(
        b.get::<u16, Ix1>("lazy"),
        Err(Error::KeyNotFound { .. })
    ));

    // A reopened node lists what was committed, nothing else.
    a.close().unwrap();
    let a = open(&moto, &url, ca.path(), "256KiB");
    assert!(a.contains("tile15") && a.contains("computed") && !a.contains("lazy"));
    assert_eq!(
        a.get::<i32, Ix1>("contested").unwrap().read().unwrap()[0],
        4
    );
}

#[test]
fn tiered_store_disk_budget_evicts_clean_copies() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("tiers/disk");
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&moto, &url, ca.path(), "64MiB");
    for i in 0..8 {
        a.insert_durable(format!("e{i}"), Array1::from_elem(1 << 17, i as f64))
            .unwrap();
    }
    let b = StoreBuilder::new(cb.path())
        .remote_with(&url, moto.options())
        .disk_budget("3MiB")
        .memory_budget("1MiB")
        .open()
        .unwrap();
    for round in 0..2 {
        for i in 0..8 {
            let e = b.get::<f64, Ix1>(format!("e{i}")).unwrap();
            assert_eq!(e.read().unwrap()[7], i as f64, "round {round}");
            drop(e);
            let cached: u64 = std::fs::read_dir(cb.path())
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".npy"))
                .map(|e| e.metadata().unwrap().len())
                .sum();
            assert!(cached <= 4 << 20, "{cached} bytes cached");
        }
    }
}

/// Node A in a child process: a tiered store with its own cache directory.
#[test]
#[ignore = "run in a child process by tiered_store_node_a_writes_node_b_reads"]
fn tiered_node_a_child() {
    let (Ok(url), Ok(cache)) = (
        std::env::var("NDOFFLOAD_REMOTE_URL"),
        std::env::var("NDOFFLOAD_REMOTE_CACHE"),
    ) else {
        return;
    };
    let mut o = RemoteOptions::default();
    o.transfer.part_size = 5 << 20;
    let store = StoreBuilder::new(&cache)
        .remote_with(url, o)
        .memory_budget("4MiB")
        .open()
        .unwrap();
    store
        .insert_durable("small", Array1::from_shape_fn(1000, |i| i as f64))
        .unwrap();
    store
        .insert(
            "big",
            Array1::from_shape_fn(3 << 20, |i| (i as u32).wrapping_mul(2_654_435_761)),
        )
        .unwrap();
    store
        .insert_opts(
            "fortran",
            ndarray::Array2::from_shape_fn((40, 30).f(), |(i, j)| (i * 30 + j) as i16),
            &ndarray_offload::InsertOptions::new().attrs(serde_json::json!({"tile": 7})),
        )
        .unwrap();
    store.close().unwrap();
}

#[test]
fn tiered_store_node_a_writes_node_b_reads() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("tiers/nodes");
    let ca = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, std::ffi::OsString)> =
        moto.env().into_iter().map(|(k, v)| (k, v.into())).collect();
    env.push(("NDOFFLOAD_REMOTE_URL", url.clone().into()));
    env.push(("NDOFFLOAD_REMOTE_CACHE", ca.path().into()));
    let env_ref: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let run = run_child(
        "tiers::tiered_node_a_child",
        &env_ref,
        Duration::from_secs(120),
    );
    assert!(run.ok(), "{}", run.output);
    let cb = tempfile::tempdir().unwrap();
    let b = open(&moto, &url, cb.path(), "8MiB");
    let keys: Vec<String> = b.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["big", "fortran", "small"]);
    assert_eq!(
        b.get::<f64, Ix1>("small").unwrap().read().unwrap().view(),
        Array1::from_shape_fn(1000, |i| i as f64)
    );
    let big = b.get::<u32, Ix1>("big").unwrap();
    assert_eq!(
        big.read().unwrap().view(),
        Array1::from_shape_fn(3 << 20, |i| (i as u32).wrapping_mul(2_654_435_761))
    );
    let f = b.get::<i16, ndarray::Ix2>("fortran").unwrap();
    assert_eq!(f.read().unwrap()[[39, 29]], 39 * 30 + 29);
    assert_eq!(b.info("fortran").unwrap().attrs["tile"], 7);
    assert!(matches!(
        b.get::<f32, Ix1>("small"),
        Err(Error::DtypeMismatch { .. })
    ));
}

#[test]
fn tiered_store_server_stopped_and_restarted() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let url = moto.url("tiers/outage");
    let mut o = moto.options();
    o.net = NetOptions::default()
        .with_max_retries(2)
        .with_retry_timeout(Duration::from_secs(3))
        .with_request_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    let tiered = |cache: &std::path::Path, o: &RemoteOptions| {
        StoreBuilder::new(cache)
            .remote_with(&url, o.clone())
            .memory_budget("1MiB")
            .open()
            .unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    let s = tiered(cache.path(), &o);
    s.insert_durable("before", Array1::from_elem(10, 1.0f32))
        .unwrap();
    // The server hangs (SIGSTOP): the durable insert fails, typed, naming
    // the key and the URL.
    moto.signal("-STOP");
    let err = s
        .insert_durable("during", Array1::from_elem(10, 2.0f32))
        .unwrap_err();
    moto.signal("-CONT");
    match &err {
        Error::Remote {
            kind, key, url: u, ..
        } => {
            assert!(
                matches!(kind, RemoteErrorKind::Timeout | RemoteErrorKind::Network),
                "{err}"
            );
            assert_eq!(key, "during");
            assert!(u.contains("tiers/outage/data/during."), "{u}");
        }
        other => panic!("expected a remote error, got {other}"),
    }
    // Nothing lost: this node still reads it, and the next flush commits it.
    assert_eq!(s.get::<f32, Ix1>("during").unwrap().read().unwrap()[0], 2.0);
    s.flush().unwrap();
    let other = tempfile::tempdir().unwrap();
    let b = tiered(other.path(), &o);
    assert_eq!(b.get::<f32, Ix1>("during").unwrap().read().unwrap()[0], 2.0);
    assert_eq!(b.get::<f32, Ix1>("before").unwrap().read().unwrap()[0], 1.0);
    drop(b);
    // The server is killed: typed errors; the staged write survives a
    // restart of the node, and its first flush commits it.
    moto.kill();
    let err = s
        .insert_durable("killed", Array1::from_elem(10, 3.0f32))
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Remote {
                kind: RemoteErrorKind::Network | RemoteErrorKind::Timeout,
                ..
            }
        ),
        "{err}"
    );
    drop(s);
    moto.restart(); // a new, empty server (moto keeps objects in memory)
    let s = tiered(cache.path(), &o);
    assert!(s.contains("killed"));
    s.flush().unwrap();
    let other = tempfile::tempdir().unwrap();
    let b = tiered(other.path(), &o);
    assert_eq!(b.get::<f32, Ix1>("killed").unwrap().read().unwrap()[0], 3.0);
}

#[test]
fn tiered_store_over_a_memory_url_and_its_option_checks() {
    let cache = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(cache.path())
        .remote("memory:///b/p")
        .memory_budget("64KiB")
        .open()
        .unwrap();
    for i in 0..8 {
        s.insert(format!("t{i}"), Array1::from_elem(4096, i as u32))
            .unwrap();
    }
    assert!(s.stats().evictions > 0);
    s.flush().unwrap();
    for i in 0..8 {
        let t = s.get::<u32, Ix1>(format!("t{i}")).unwrap();
        assert_eq!(t.read().unwrap()[4095], i as u32);
    }
    assert!(s.remove("t0").unwrap());
    assert!(!s.contains("t0"));
    // A disk budget drops cached copies, never entries of the durable tier.
    let other = tempfile::tempdir().unwrap();
    let q = StoreBuilder::new(other.path())
        .remote("memory:///b/q")
        .disk_budget(1u64)
        .open()
        .unwrap();
    q.insert_durable("kept", Array1::from_elem(1000, 7u8))
        .unwrap();
    assert_eq!(q.get::<u8, Ix1>("kept").unwrap().read().unwrap()[999], 7);
    assert!(q.contains("kept"));
    drop(q);
    // A bad URL is a typed remote error naming it.
    let err = StoreBuilder::new(other.path())
        .remote("nosuchscheme://x/y")
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("nosuchscheme"), "{err}");
    // The cache directory is shared as a store directory: a second writer
    // registers beside the first; an exclusive one is refused while it is.
    let second = StoreBuilder::new(cache.path())
        .remote("memory:///b/p")
        .open()
        .unwrap();
    assert_eq!(second.writers().unwrap().len(), 2);
    assert!(matches!(
        StoreBuilder::new(cache.path())
            .remote("memory:///b/p")
            .exclusive(true)
            .open(),
        Err(Error::Locked { .. })
    ));
    drop(second);
}

/// Replacing an entry leaves one copy of it in the cache directory: a
/// superseded staged write goes once the new one is published (20
/// replacements of a 2 MiB entry, durable and spilled).
#[test]
fn replacements_leave_one_copy_in_the_cache_directory() {
    let cache = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(cache.path())
        .remote("memory:///b/replace")
        .memory_budget("1MiB")
        .open()
        .unwrap();
    let n = 1 << 18; // 2 MiB of f64
    for i in 0..20 {
        let v = Array1::from_elem(n, i as f64);
        if i % 2 == 0 {
            s.insert_durable("big", v).unwrap();
        } else {
            s.insert("big", v).unwrap(); // spilled by the budget
        }
    }
    s.flush().unwrap();
    let bytes = dir_bytes(cache.path());
    assert!(
        bytes < 3 * (n as u64 * 8),
        "{bytes} bytes in the cache directory after 20 replacements"
    );
    assert_eq!(s.get::<f64, Ix1>("big").unwrap().read().unwrap()[7], 19.0);
    assert!(s.pending_writes().is_empty());
}

/// Bytes of the regular files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        if md.is_dir() {
            total += dir_bytes(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}
