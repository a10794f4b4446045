//! DiskBackedArray behaviour.

use std::path::Path;
use std::sync::Arc;

use ndarray::{array, s, Array, Array0, Array1, Array2, Array3, ArrayD, Ix0, Ix1, Ix2, Ix3, IxDyn};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{ArrayState, CacheConfig, DiskBackedArray, Error, LoadMode};
use num_complex::Complex;

use crate::common::{temp_files, Tmpfs};

fn cfg(dir: &Path) -> CacheConfig {
    CacheConfig::default().with_location(dir)
}

fn ino(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn offload_then_read_round_trips_every_dtype() {
    fn check<T: ndarray_offload::Element + PartialEq + std::fmt::Debug>(a: Array2<T>) {
        let d = DiskBackedArray::new(a.clone()).unwrap();
        d.offload().unwrap();
        assert_eq!(d.state(), ArrayState::Offloaded);
        assert_eq!(d.resident_bytes(), 0);
        assert_eq!(d.read().unwrap().view(), a.view());
        let back: Array2<T> = ndarray_npy::read_npy(d.path()).unwrap();
        assert_eq!(back, a);
    }
    check(array![[true, false], [false, true]]);
    check(array![[1i8, -2], [3, -128]]);
    check(array![[1i16, -2], [3, i16::MIN]]);
    check(array![[1i32, -2], [3, i32::MAX]]);
    check(array![[1i64, -2], [3, i64::MIN]]);
    check(array![[1u8, 2], [3, 255]]);
    check(array![[1u16, 2], [3, u16::MAX]]);
    check(array![[1u32, 2], [3, u32::MAX]]);
    check(array![[1u64, 2], [3, u64::MAX]]);
    check(array![[1.5f32, -2.0], [f32::MAX, f32::MIN_POSITIVE]]);
    check(array![[1.5f64, -2.0], [f64::INFINITY, 1e-300]]);
    check(array![
        [Complex::new(1.0f32, 2.0)],
        [Complex::new(-3.0, 0.5)]
    ]);
    check(array![
        [Complex::new(1.0f64, 2.0)],
        [Complex::new(-3.0, 0.5)]
    ]);
}

#[test]
fn zero_dimensional_and_empty_arrays() {
    let z: Array0<f64> = Array0::from_elem((), 4.25);
    let d = DiskBackedArray::new(z.clone()).unwrap();
    d.offload().unwrap();
    assert_eq!(d.shape(), &[] as &[usize]);
    assert_eq!(d.read().unwrap().view(), z.view());

    let e = Array2::<f32>::zeros((0, 3));
    let d = DiskBackedArray::new(e.clone()).unwrap();
    d.offload().unwrap();
    assert!(d.is_empty());
    assert_eq!(d.read().unwrap().view(), e.view());

    let dynamic = ArrayD::<i32>::from_shape_vec(IxDyn(&[2, 0, 5]), vec![]).unwrap();
    let d = DiskBackedArray::new(dynamic.clone()).unwrap();
    d.offload().unwrap();
    assert_eq!(d.read().unwrap().view(), dynamic.view());
}

#[test]
fn layouts_round_trip() {
    let base = Array3::<f32>::from_shape_fn((5, 4, 3), |(i, j, k)| (i * 100 + j * 10 + k) as f32);
    let inputs: Vec<Array3<f32>> = vec![
        base.clone(),
        base.t().to_owned(),                         // fortran order
        base.slice(s![..;2, .., 1..]).to_owned(),    // strided copy
        base.slice(s![..;-1, ..;-2, ..]).to_owned(), // negative strides
        base.clone().reversed_axes(),                // fortran view of owned data
        {
            let mut v = base.clone();
            v.invert_axis(ndarray::Axis(1));
            v
        }, // negative stride inside owned data
    ];
    for a in inputs {
        // Small chunk budget forces the chunked path for non-contiguous data.
        let d =
            DiskBackedArray::with_config(a.clone(), &CacheConfig::default().with_chunk_budget(16))
                .unwrap();
        d.offload().unwrap();
        assert_eq!(d.read().unwrap().view(), a.view());
        let back: Array3<f32> = ndarray_npy::read_npy(d.path()).unwrap();
        assert_eq!(back, a);
    }
}

#[test]
fn numpy_fixtures_load() {
    use serde_json::Value;
    let dir = crate::common::fixtures().join("npy");
    let manifest: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.len() >= 70);
    let mut checked = 0;
    for (name, m) in &manifest {
        let path = dir.join(format!("{name}.npy"));
        let dtype = m["dtype"].as_str().unwrap();
        let bytes = match dtype {
            "|b1" => c_bytes::<bool>(&path, |v| v.iter().map(|&b| b as u8).collect()),
            "|i1" => c_bytes::<i8>(&path, |v| v.iter().map(|&x| x as u8).collect()),
            "|u1" => c_bytes::<u8>(&path, |v| v.to_vec()),
            "<i2" => c_bytes::<i16>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<i4" => c_bytes::<i32>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<i8" => c_bytes::<i64>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<u2" => c_bytes::<u16>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<u4" => c_bytes::<u32>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<u8" => c_bytes::<u64>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<f4" => c_bytes::<f32>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<f8" => c_bytes::<f64>(&path, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            "<c8" => c_bytes::<Complex<f32>>(&path, |v| {
                v.iter()
                    .flat_map(|x| [x.re.to_le_bytes(), x.im.to_le_bytes()].concat())
                    .collect()
            }),
            "<c16" => c_bytes::<Complex<f64>>(&path, |v| {
                v.iter()
                    .flat_map(|x| [x.re.to_le_bytes(), x.im.to_le_bytes()].concat())
                    .collect()
            }),
            other => panic!("fixture dtype {other} not covered"),
        };
        assert_eq!(
            crate::common::sha256_hex(&bytes),
            m["sha256"].as_str().unwrap(),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, manifest.len());
}

/// Opens a fixture as `DiskBackedArray<T, IxDyn>`, checks shape, returns the
/// C-order bytes of its values.
fn c_bytes<T: ndarray_offload::Element>(
    path: &Path,
    to_bytes: impl Fn(&[T]) -> Vec<u8>,
) -> Vec<u8> {
    let d = DiskBackedArray::<T, IxDyn>::open(path, &CacheConfig::default()).unwrap();
    let g = d.read().unwrap();
    let v = g.view();
    let c = v.as_standard_layout();
    to_bytes(c.as_slice().unwrap())
}

#[test]
fn fortran_fixture_reads_in_right_order() {
    let p = crate::common::fixtures().join("npy/le_f8_f2d.npy");
    let d = DiskBackedArray::<f64, Ix2>::open(&p, &CacheConfig::default()).unwrap();
    let via_npy: Array2<f64> = ndarray_npy::read_npy(&p).unwrap();
    assert_eq!(d.read().unwrap().view(), via_npy.view());
    assert!(!d.read().unwrap().view().is_standard_layout());
}

#[test]
fn read_only_load_then_write_goes_copy_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = Array1::<i32>::from_iter(0..100);
    let d = DiskBackedArray::with_config(a.clone(), &cfg(dir.path())).unwrap();
    d.offload().unwrap();
    let before = std::fs::read(d.path()).unwrap();
    d.load(LoadMode::ReadOnly).unwrap();
    assert_eq!(d.state(), ArrayState::Mapped(LoadMode::ReadOnly));
    d.write().unwrap().view_mut()[0] = -1;
    assert_eq!(d.state(), ArrayState::Mapped(LoadMode::CopyOnWrite));
    // The published file is unchanged until offload.
    assert_eq!(std::fs::read(d.path()).unwrap(), before);
    d.offload().unwrap();
    let back: Array1<i32> = ndarray_npy::read_npy(d.path()).unwrap();
    assert_eq!(back[0], -1);
    assert_eq!(back.slice(s![1..]), a.slice(s![1..]));
}

#[test]
fn read_write_mode_reaches_the_file_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(Array1::<f64>::zeros(10), &cfg(dir.path())).unwrap();
    d.offload().unwrap();
    let inode = ino(d.path());
    d.load(LoadMode::ReadWrite).unwrap();
    d.write().unwrap().view_mut().fill(2.5);
    d.flush().unwrap();
    let back: Array1<f64> = ndarray_npy::read_npy(d.path()).unwrap();
    assert_eq!(back, Array1::from_elem(10, 2.5));
    assert_eq!(ino(d.path()), inode, "read-write writes in place");
    // Loading never zeroes the data.
    d.offload().unwrap();
    d.load(LoadMode::ReadWrite).unwrap();
    assert_eq!(d.read().unwrap().view(), Array1::from_elem(10, 2.5).view());
}

#[test]
fn copy_on_write_edits_stay_private_until_offload() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(array![1u16, 2, 3], &cfg(dir.path())).unwrap();
    d.load(LoadMode::CopyOnWrite).unwrap();
    d.write().unwrap().view_mut()[1] = 20;
    let on_disk: Array1<u16> = ndarray_npy::read_npy(d.path()).unwrap();
    assert_eq!(on_disk, array![1, 2, 3]);
    assert_eq!(d.read().unwrap().view(), array![1, 20, 3].view());
    d.flush().unwrap();
    let on_disk: Array1<u16> = ndarray_npy::read_npy(d.path()).unwrap();
    assert_eq!(on_disk, array![1, 20, 3]);
}

#[test]
fn offloading_an_unmodified_mapped_array_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(Array2::<f32>::ones((20, 3)), &cfg(dir.path())).unwrap();
    d.offload().unwrap();
    let inode = ino(d.path());
    let plan = FaultPlan::fail_at(0);
    let _g = install(plan.clone());
    for mode in [
        LoadMode::ReadOnly,
        LoadMode::ReadWrite,
        LoadMode::CopyOnWrite,
    ] {
        d.load(mode).unwrap();
        assert_eq!(d.read().unwrap().view().sum(), 60.0);
        d.offload().unwrap();
    }
    assert_eq!(
        plan.count(),
        0,
        "no file-system operation: {:?}",
        plan.log()
    );
    assert_eq!(ino(d.path()), inode);
}

#[test]
fn automatic_offloading_after_each_access() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path()).with_automatic_offloading(true);
    let d = DiskBackedArray::with_config(Array1::<i64>::from_iter(0..1000), &c).unwrap();
    d.offload().unwrap();
    let s = d.with_view(|v| v.sum()).unwrap();
    assert_eq!(s, 499_500);
    assert_eq!(d.state(), ArrayState::Offloaded);
    {
        let g = d.read().unwrap();
        assert!(matches!(d.state(), ArrayState::Mapped(_)));
        drop(g);
    }
    assert_eq!(d.state(), ArrayState::Offloaded);
    d.with_view_mut(|mut v| v[0] = 7).unwrap();
    assert_eq!(d.state(), ArrayState::Offloaded);
    assert_eq!(d.read().unwrap().view()[0], 7);
    // An array that was resident on entry stays resident.
    let r = DiskBackedArray::with_config(array![1.0f32], &c).unwrap();
    r.with_view(|v| v.sum()).unwrap();
    assert_eq!(r.state(), ArrayState::InMemory);
}

#[test]
fn concurrent_readers_with_automatic_offloading_never_see_a_dropped_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path()).with_automatic_offloading(true);
    let a = Array1::<u64>::from_iter(0..50_000);
    let expect: u64 = a.sum();
    let d = Arc::new(DiskBackedArray::with_config(a, &c).unwrap());
    d.offload().unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let d = d.clone();
            s.spawn(move || {
                for _ in 0..200 {
                    let g = d.read().unwrap();
                    let v = g.view();
                    assert_eq!(v.sum(), expect);
                    assert_eq!(v[49_999], 49_999);
                }
            });
        }
        let d2 = d.clone();
        s.spawn(move || {
            for _ in 0..200 {
                d2.offload().unwrap();
            }
        });
    });
    assert_eq!(d.state(), ArrayState::Offloaded);
}

#[test]
fn caching_off_keeps_data_in_ram() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(array![1, 2, 3], &cfg(dir.path()).with_caching(false))
        .unwrap();
    d.offload().unwrap();
    assert_eq!(d.state(), ArrayState::InMemory);
    assert!(!d.path().exists());

    let d = DiskBackedArray::with_config(array![4i32, 5, 6], &cfg(dir.path())).unwrap();
    d.offload().unwrap();
    d.load(LoadMode::ReadOnly).unwrap();
    d.disable_caching().unwrap();
    assert_eq!(d.state(), ArrayState::InMemory);
    assert_eq!(d.read().unwrap().view(), array![4, 5, 6].view());
    d.offload().unwrap();
    assert_eq!(d.state(), ArrayState::InMemory);
    d.enable_caching();
    d.offload().unwrap();
    assert_eq!(d.state(), ArrayState::Offloaded);
}

#[test]
fn purge_on_drop_rules() {
    // Temporary location: purged by default.
    let d = DiskBackedArray::new(array![1u8]).unwrap();
    d.offload().unwrap();
    let p = d.path().to_path_buf();
    assert!(p.exists());
    drop(d);
    assert!(!p.exists());

    // Configured location: kept by default, purged when switched on.
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(array![1u8], &cfg(dir.path())).unwrap();
    assert!(!d.purge_on_drop());
    d.offload().unwrap();
    let p = d.path().to_path_buf();
    drop(d);
    assert!(p.exists());
    let d = DiskBackedArray::with_config(array![1u8], &cfg(dir.path())).unwrap();
    d.set_purge_on_drop(true);
    d.offload().unwrap();
    let p = d.path().to_path_buf();
    drop(d);
    assert!(!p.exists());
}

#[test]
fn dropping_an_old_array_never_deletes_a_newer_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.npy");
    let c = cfg(dir.path()).with_purge_on_drop(true);
    let old = DiskBackedArray::with_path(array![1.0f32], &path, &c).unwrap();
    old.offload().unwrap();
    let new = DiskBackedArray::with_path(array![2.0f32, 3.0], &path, &c).unwrap();
    new.offload().unwrap();
    drop(old);
    assert!(path.exists());
    assert_eq!(new.read().unwrap().view(), array![2.0f32, 3.0].view());
    drop(new);
    assert!(!path.exists());
}

#[test]
fn private_temporary_directory_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let d = DiskBackedArray::new(array![1u8]).unwrap();
    d.offload().unwrap();
    let file_mode = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
    let dir_mode = std::fs::metadata(d.path().parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(file_mode, 0o600);
    assert_eq!(dir_mode, 0o700);
}

/// Runs in a child process (see `temporary_directory_is_removed_with_last_array`).
#[test]
#[ignore = "run in a child process by temporary_directory_is_removed_with_last_array"]
fn temp_dir_child() {
    if std::env::var("NDOFFLOAD_CHILD").is_err() {
        return;
    }
    let a = DiskBackedArray::new(array![1u8]).unwrap();
    let b = DiskBackedArray::new(array![2u8]).unwrap();
    a.offload().unwrap();
    b.offload().unwrap();
    let dir = a.path().parent().unwrap().to_path_buf();
    drop(a);
    assert!(dir.exists(), "still used by b");
    drop(b);
    assert!(!dir.exists(), "removed with the last array");
}

#[test]
fn temporary_directory_is_removed_with_last_array() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "array::temp_dir_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("NDOFFLOAD_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn config_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let e = c.extend_cache_path("stage").unwrap();
    assert_eq!(e.location().unwrap(), dir.path().join("stage"));
    assert!(matches!(
        c.extend_cache_path("../x"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        c.extend_cache_path("a/b"),
        Err(Error::InvalidName {
            rule: "path separator",
            ..
        })
    ));
    assert_eq!(
        CacheConfig::default()
            .extend_cache_path("x")
            .unwrap()
            .location(),
        None
    );
    let d = DiskBackedArray::with_config(array![1u8], &e).unwrap();
    d.offload().unwrap();
    assert!(d.path().starts_with(dir.path().join("stage")));
    assert!(ndarray_offload::default_chunk_budget() >= 1 << 20);
}

// ---- errors ----

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn good_npy() -> Vec<u8> {
    let mut v = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(
        &Array1::<f32>::from_iter((0..16).map(|x| x as f32)),
        &mut v,
    )
    .unwrap();
    v
}

#[test]
fn typed_errors_for_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = CacheConfig::default();
    let good = good_npy();

    let p = dir.path().join("missing.npy");
    match DiskBackedArray::<f32, Ix1>::open(&p, &c) {
        Err(Error::NotFound { path, .. }) => assert_eq!(path, p),
        other => panic!("{other:?}"),
    }
    let p = write_bytes(dir.path(), "empty.npy", b"");
    assert!(matches!(
        DiskBackedArray::<f32, Ix1>::open(&p, &c),
        Err(Error::Truncated { .. })
    ));
    let p = write_bytes(dir.path(), "short_header.npy", &good[..20]);
    assert!(matches!(
        DiskBackedArray::<f32, Ix1>::open(&p, &c),
        Err(Error::Truncated { .. })
    ));
    let mut bad = good.clone();
    bad[1] = b'X';
    let p = write_bytes(dir.path(), "magic.npy", &bad);
    match DiskBackedArray::<f32, Ix1>::open(&p, &c) {
        Err(Error::Corrupt { path, reason }) => {
            assert_eq!(path, p);
            assert!(reason.contains("header"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut bad = good.clone();
    let pos = bad.windows(5).position(|w| w == b"shape").unwrap();
    bad[pos] = b'x';
    let p = write_bytes(dir.path(), "header.npy", &bad);
    assert!(matches!(
        DiskBackedArray::<f32, Ix1>::open(&p, &c),
        Err(Error::Corrupt { .. })
    ));
    // A file shorter than the header promises: an error, never SIGBUS.
    let p = write_bytes(dir.path(), "truncated.npy", &good[..good.len() - 8]);
    match DiskBackedArray::<f32, Ix1>::open(&p, &c) {
        Err(Error::Truncated {
            path,
            expected,
            actual,
        }) => {
            assert_eq!(path, p);
            assert_eq!(expected, good.len() as u64);
            assert_eq!(actual, good.len() as u64 - 8);
        }
        other => panic!("{other:?}"),
    }
    let p = write_bytes(dir.path(), "ok.npy", &good);
    match DiskBackedArray::<f64, Ix1>::open(&p, &c) {
        Err(Error::DtypeMismatch {
            expected, found, ..
        }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("<f8", "<f4"))
        }
        other => panic!("{other:?}"),
    }
    match DiskBackedArray::<f32, Ix2>::open(&p, &c) {
        Err(Error::DimensionMismatch {
            expected: 2,
            found: 1,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(DiskBackedArray::<f32, IxDyn>::open(&p, &c).is_ok());
    // A file swapped for a shorter one after open is caught when mapped.
    let d = DiskBackedArray::<f32, Ix1>::open(&p, &c).unwrap();
    std::fs::write(&p, &good[..good.len() - 4]).unwrap();
    assert!(matches!(d.read(), Err(Error::Truncated { .. })));
    // A shape whose byte size overflows.
    let mut hdr = Vec::new();
    let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 8), }";
    hdr.extend_from_slice(b"\x93NUMPY\x01\x00");
    let pad = 64 - (10 + text.len() + 1) % 64;
    let hlen = text.len() + pad + 1;
    hdr.extend_from_slice(&(hlen as u16).to_le_bytes());
    hdr.extend_from_slice(text.as_bytes());
    hdr.extend(std::iter::repeat_n(b' ', pad));
    hdr.push(b'\n');
    let p = write_bytes(dir.path(), "overflow.npy", &hdr);
    assert!(matches!(
        DiskBackedArray::<f64, Ix2>::open(&p, &c),
        Err(Error::Corrupt { .. })
    ));
    // A directory named like a file.
    std::fs::create_dir(dir.path().join("dir.npy")).unwrap();
    assert!(DiskBackedArray::<f64, Ix1>::open(dir.path().join("dir.npy"), &c).is_err());
}

#[test]
fn failed_offload_leaves_array_usable_and_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let d = DiskBackedArray::with_config(array![1i32, 2, 3], &cfg(dir.path())).unwrap();
    d.offload().unwrap();
    let old = std::fs::read(d.path()).unwrap();
    d.write().unwrap().view_mut()[0] = 100;
    for n in 1..=5 {
        for kind in [
            std::io::ErrorKind::Other,
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::PermissionDenied,
        ] {
            let plan = FaultPlan::fail_at(n).with_kind(kind);
            let g = install(plan.clone());
            let r = d.offload();
            drop(g);
            if plan.count() < n {
                r.unwrap();
                panic!("offload uses fewer than {n} operations");
            }
            let e = r.unwrap_err();
            match (&e, kind) {
                (Error::DiskFull { path, .. }, std::io::ErrorKind::StorageFull)
                | (Error::PermissionDenied { path, .. }, std::io::ErrorKind::PermissionDenied)
                | (Error::Io { path, .. }, std::io::ErrorKind::Other) => {
                    assert!(path.starts_with(dir.path()), "{path:?}")
                }
                _ => panic!("{e:?} for {kind:?}"),
            }
            if n < 5 {
                // Failed before the rename: the old file is byte-identical.
                assert_eq!(std::fs::read(d.path()).unwrap(), old);
            }
            assert!(temp_files(dir.path()).is_empty());
            assert_eq!(d.read().unwrap().view()[0], 100);
            assert!(!d.is_offloaded());
        }
    }
    d.offload().unwrap();
    assert_eq!(d.read().unwrap().view(), array![100, 2, 3].view());
}

#[test]
fn full_disk_is_a_typed_error() {
    let Some(fs) = Tmpfs::mount("1m", "") else {
        assert!(
            !crate::common::in_ci() || !crate::common::can_mount(),
            "CI as root must mount"
        );
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    let c = cfg(fs.path());
    let big = Array1::<f64>::from_elem(300_000, 1.0); // 2.4 MB > 1 MiB
    let d = DiskBackedArray::with_config(big, &c).unwrap();
    match d.offload() {
        Err(Error::DiskFull { path, .. }) => assert!(path.starts_with(fs.path())),
        other => panic!("{other:?}"),
    }
    assert!(temp_files(fs.path()).is_empty());
    assert_eq!(d.read().unwrap().view().sum(), 300_000.0);
    let small = DiskBackedArray::with_config(Array1::<f64>::ones(1000), &c).unwrap();
    small.offload().unwrap();
    assert_eq!(small.read().unwrap().view().sum(), 1000.0);
}

#[test]
fn read_only_file_system_is_permission_denied() {
    let Some(fs) = Tmpfs::mount("1m", "ro") else {
        eprintln!("skipped: cannot mount a tmpfs");
        return;
    };
    let d = DiskBackedArray::with_config(array![1u8], &cfg(fs.path())).unwrap();
    match d.offload() {
        Err(Error::PermissionDenied { path, .. }) => assert!(path.starts_with(fs.path())),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.state(), ArrayState::InMemory);
}

#[test]
fn stream_writer_writes_in_chunks_and_aborts_on_drop() {
    use ndarray_offload::NpyStreamWriter;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.npy");
    let mut w = NpyStreamWriter::<i32, Ix2>::create(&p, &[10, 2]).unwrap();
    for i in 0..5 {
        w.write_chunk(&Array2::from_elem((2, 2), i)).unwrap();
    }
    assert!(w.write_chunk(&Array2::from_elem((1, 2), 9)).is_err());
    assert!(!p.exists());
    let arr = w.finish_array(&CacheConfig::default()).unwrap();
    let v: Array2<i32> = ndarray_npy::read_npy(&p).unwrap();
    assert_eq!(v[[9, 1]], 4);
    assert_eq!(arr.read().unwrap().view(), v.view());

    let p2 = dir.path().join("aborted.npy");
    let mut w = NpyStreamWriter::<i32, Ix2>::create(&p2, &[10, 2]).unwrap();
    w.write_chunk(&Array2::from_elem((3, 2), 1)).unwrap();
    drop(w);
    assert!(!p2.exists());
    assert!(temp_files(dir.path()).is_empty());
    let w = NpyStreamWriter::<i32, Ix2>::create(&p2, &[10, 2]).unwrap();
    assert!(matches!(w.finish(), Err(Error::InvalidInput { .. })));
    assert!(temp_files(dir.path()).is_empty());
    assert!(NpyStreamWriter::<i32, Ix0>::create(&p2, &[]).is_err());
}

#[test]
fn into_array_and_to_owned() {
    let a = Array::from_shape_fn((3, 3), |(i, j)| (i * 3 + j) as u32);
    let d = DiskBackedArray::new(a.clone()).unwrap();
    d.offload().unwrap();
    assert_eq!(d.to_owned_array().unwrap(), a);
    assert_eq!(d.into_array().unwrap(), a);
    let d = DiskBackedArray::<u32, Ix3>::try_from(&Array3::<u32>::zeros((1, 2, 3))).unwrap();
    assert_eq!(d.nbytes(), 24);
    assert_eq!(d.dtype(), "<u4");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn layouts() -> impl Strategy<Value = (Vec<usize>, u8)> {
        (prop::collection::vec(0usize..5, 0..4), 0u8..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip_any_shape_and_layout((shape, layout) in layouts(), seed in any::<u64>()) {
            let n: usize = shape.iter().product();
            let data: Vec<i64> = (0..n as i64).map(|x| x.wrapping_mul(seed as i64 | 1)).collect();
            let base = ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap();
            let a = match layout {
                0 => base.clone(),
                1 => base.t().to_owned(),
                2 => { let mut b = base.clone(); if b.ndim() > 0 { b.invert_axis(ndarray::Axis(0)); } b }
                _ => base.clone().reversed_axes(),
            };
            let d = DiskBackedArray::with_config(a.clone(), &CacheConfig::default().with_chunk_budget(8)).unwrap();
            d.offload().unwrap();
            let g = d.read().unwrap();
            prop_assert_eq!(g.view(), a.view());
            drop(g);
            let back: ArrayD<i64> = ndarray_npy::read_npy(d.path()).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}

#[test]
fn operations_that_would_wait_for_a_guard_of_the_same_thread_are_in_use_errors() {
    let dir = tempfile::tempdir().unwrap();
    let arr =
        DiskBackedArray::with_config(Array1::from_vec(vec![1.0f64; 64]), &cfg(dir.path())).unwrap();
    let other = DiskBackedArray::with_config(array![1u8, 2], &cfg(dir.path())).unwrap();
    let in_use = |r: Result<(), Error>| match r {
        Err(Error::InUse { path }) => assert_eq!(path, arr.path()),
        other => panic!("expected InUse, got {other:?}"),
    };
    {
        let g = arr.read().unwrap();
        in_use(arr.offload());
        in_use(arr.flush());
        in_use(arr.load(LoadMode::ReadOnly));
        in_use(arr.disable_caching());
        in_use(arr.write().map(drop));
        in_use(arr.with_view_mut(|_| ()));
        // Reading again on the same thread is fine, and so is another array.
        assert_eq!(arr.read().unwrap().view().sum(), 64.0);
        other.offload().unwrap();
        assert_eq!(g.view()[0], 1.0);
        assert_eq!(arr.state(), ArrayState::InMemory);
    }
    {
        let mut g = arr.write().unwrap();
        g.view_mut()[0] = 2.0;
        in_use(arr.read().map(drop));
        in_use(arr.with_view(|_| ()));
        in_use(arr.offload());
        g.finish().unwrap();
    }
    // Once the guards are gone everything works.
    arr.offload().unwrap();
    assert_eq!(arr.state(), ArrayState::Offloaded);
    assert_eq!(arr.read().unwrap().view()[0], 2.0);
    // Ending a read guard with `finish` releases it as well.
    let g = arr.read().unwrap();
    g.finish().unwrap();
    arr.load(LoadMode::CopyOnWrite).unwrap();
}

#[test]
fn a_guard_of_another_thread_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let arr = DiskBackedArray::with_config(array![1.0f32, 2.0, 3.0], &cfg(dir.path())).unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let arr = &arr;
        s.spawn(move || {
            let g = arr.read().unwrap();
            held_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            assert_eq!(g.view()[2], 3.0);
        });
        held_rx.recv().unwrap();
        let offloader = s.spawn(move || arr.offload());
        go_tx.send(()).unwrap();
        offloader.join().unwrap().unwrap();
    });
    assert_eq!(arr.state(), ArrayState::Offloaded);
}
