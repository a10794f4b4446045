//! The public surface as a numpy/ndarray user meets it: any array in, any
//! dtype out, attributes, sizes as strings, guards that read like arrays,
//! fallible computations and errors in the user's words.

use std::path::Path;

use ndarray::{array, s, ArcArray, Array1, Array2, CowArray, Ix1, Ix2, IxDyn};
use ndarray_offload::{
    DiskBackedArray, DiskBackedStore, DynStoredArray, DynView, Error, StoreBuilder,
};
use serde_json::json;

use crate::common::{numpy_python, run_python};

/// A `.npy` of `values` as big-endian `f8`, and its metadata, as numpy
/// writes them with `dtype='>f8'` (GSEGUtils' metadata).
fn write_big_endian_entry(dir: &Path, name: &str, values: &[f64]) {
    let header = format!(
        "{{'descr': '>f8', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    let mut h = header.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&h);
    for v in values {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    std::fs::write(dir.join(format!("{name}.npy")), bytes).unwrap();
    let meta = format!(
        r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [{}], "dtype": ">f8", "purge_disk_on_gc": true, "automatic_offloading": false, "enable_caching": true}}"#,
        values.len()
    );
    std::fs::write(dir.join(format!("{name}.meta.json")), meta).unwrap();
}

#[test]
fn any_array_goes_in_owned_ones_without_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let big = Array2::from_shape_fn((10, 3), |(i, j)| (i * 3 + j) as f64);
    store.insert("v", big.slice(s![..5, ..])).unwrap();
    store.insert("r", &big).unwrap();
    store.insert("t", big.t()).unwrap();
    let by_ref: &Array2<f64> = &big;
    store.insert_durable("d", by_ref).unwrap();
    let arc: ArcArray<f64, Ix2> = big.to_shared();
    store.insert("arc", arc).unwrap();
    store.insert("cow", CowArray::from(big.view())).unwrap();
    store
        .insert_batch([("b1", big.row(0)), ("b2", big.row(1))])
        .unwrap();
    assert_eq!(store.get::<f64, Ix2>("v").unwrap().shape(), &[5, 3]);
    assert_eq!(
        store
            .get::<f64, Ix2>("t")
            .unwrap()
            .to_owned_array()
            .unwrap(),
        big.t()
    );
    assert_eq!(
        store
            .get::<f64, Ix1>("b2")
            .unwrap()
            .to_owned_array()
            .unwrap(),
        big.row(1)
    );
    // An owned array is moved: its buffer becomes the entry's.
    let owned = Array1::<f32>::zeros(1 << 16);
    let ptr = owned.as_ptr();
    store.insert("moved", owned).unwrap();
    let moved = store.get::<f32, Ix1>("moved").unwrap();
    assert_eq!(moved.read().unwrap().as_ptr(), ptr);
    let a = DiskBackedArray::new(big.slice(s![.., 1])).unwrap();
    assert_eq!(a.shape(), &[10]);
}

#[test]
fn sizes_are_strings_and_bad_ones_fail_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreBuilder::new(dir.path())
        .memory_budget("200MiB")
        .open()
        .unwrap();
    assert_eq!(store.stats().budget, Some(200 << 20));
    drop(store);
    let owned = String::from("1.5 GB");
    let store = StoreBuilder::new(dir.path())
        .memory_budget(&owned)
        .open()
        .unwrap();
    assert_eq!(store.stats().budget, Some(1_500_000_000));
    drop(store);
    let err = StoreBuilder::new(dir.path())
        .memory_budget("200 MiBs")
        .open()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidSize {
            option: Some("memory_budget"),
            ..
        }
    ));
    assert!(
        err.to_string().contains("\"200 MiBs\" for memory_budget"),
        "{err}"
    );
    let b = ndarray_offload::ByteSize::try_from("64MiB").unwrap();
    let c = ndarray_offload::CacheConfig::default().with_chunk_budget(b);
    assert_eq!(c.chunk_budget(), Some(64 << 20));
}

#[test]
fn dynamic_and_converting_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    store
        .insert("xyz", array![[1.0f32, 2.0], [3.0, 4.0]])
        .unwrap();
    store.insert("cls", array![2u8, 6]).unwrap();
    store.flush().unwrap();
    let e = store.get_dyn("xyz").unwrap();
    assert_eq!((e.dtype().as_str(), e.shape()), ("<f4", &[2, 2][..]));
    assert!(matches!(e, DynStoredArray::F32(_)));
    match e.read().unwrap().view() {
        DynView::F32(v) => assert_eq!(v.sum(), 10.0),
        other => panic!("{}", other.type_name()),
    }
    let as_f64 = store.get_as::<f64, Ix2>("xyz").unwrap();
    assert_eq!(as_f64, array![[1.0, 2.0], [3.0, 4.0]]);
    assert_eq!(store.get_as::<i32, Ix1>("cls").unwrap(), array![2i32, 6]);
    let lossy = store.get_as::<f32, Ix1>("cls");
    assert!(lossy.is_ok(), "u8 to f32 is safe");
    let err = store.get_as::<i8, Ix1>("cls").unwrap_err();
    assert!(matches!(err, Error::DtypeMismatch { .. }));
    assert!(
        matches!(
            store.get_as::<f64, Ix1>("xyz"),
            Err(Error::DimensionMismatch { .. })
        ),
        "a 2-d entry read as 1-d"
    );
    // Typed errors name the Rust types too.
    let err = store.get::<f64, Ix2>("xyz").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("holds f32 (<f4), but f64 (<f8) was requested"),
        "{msg}"
    );
}

#[test]
fn big_endian_entries_read_with_a_converting_read() {
    let dir = tempfile::tempdir().unwrap();
    write_big_endian_entry(dir.path(), "be", &[1.5, -2.0, 1e300]);
    let store = DiskBackedStore::open(dir.path()).unwrap();
    assert_eq!(store.info("be").unwrap().dtype, ">f8");
    let err = store.get::<f64, Ix1>("be").unwrap_err();
    assert!(err.to_string().contains("big-endian"), "{err}");
    assert!(err.to_string().contains("get_as"), "{err}");
    assert!(matches!(
        store.get_dyn("be"),
        Err(Error::DtypeMismatch { .. })
    ));
    assert_eq!(
        store.get_as::<f64, Ix1>("be").unwrap(),
        array![1.5, -2.0, 1e300]
    );
    let d = store.read_dyn("be").unwrap();
    assert_eq!(d.dtype(), "<f8");
    assert_eq!(d.shape(), &[3]);
}

#[test]
fn numpy_big_endian_store_entries_are_readable() {
    let Some(py) = numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import json, sys, numpy as np
d = sys.argv[1]
for name, a in [("xyz", np.arange(12, dtype='>f8').reshape(4, 3)),
                ("ids", np.arange(5, dtype='>i4')),
                ("f", np.asfortranarray(np.arange(6, dtype='>u2').reshape(2, 3)))]:
    np.save(f"{d}/{name}.npy", a)
    with open(f"{d}/{name}.meta.json", "w") as f:
        json.dump({"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray",
                   "shape": list(a.shape), "dtype": a.dtype.str}, f)
"#;
    run_python(&py, code, &[dir.path().to_str().unwrap()]);
    let store = DiskBackedStore::open_read_only(dir.path()).unwrap();
    let xyz = store.get_as::<f64, Ix2>("xyz").unwrap();
    assert_eq!(xyz[[3, 2]], 11.0);
    assert_eq!(
        store.get_as::<i64, Ix1>("ids").unwrap(),
        array![0i64, 1, 2, 3, 4]
    );
    let f = store.get_as::<u32, Ix2>("f").unwrap();
    assert_eq!(f, array![[0u32, 1, 2], [3, 4, 5]]);
}

#[test]
fn attributes_are_set_updated_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = DiskBackedStore::open(dir.path()).unwrap();
        let attrs = json!({"crs": "EPSG:2056", "origin": [2600000.0, 1200000.0], "units": "m"});
        store
            .insert_opts(
                "tile",
                Array2::<f64>::zeros((4, 3)),
                &ndarray_offload::InsertOptions::new().attrs(attrs),
            )
            .unwrap();
        assert_eq!(store.info("tile").unwrap().attrs["units"], "m");
        store.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("tile.meta.json")).unwrap();
        assert!(text.contains(r#""ndoffload_attrs": {"#), "{text}");
        // A write republishes the pair: the attributes go with it.
        store.get::<f64, Ix2>("tile").unwrap().write().unwrap()[[0, 0]] = 1.0;
        store.flush().unwrap();
        store
            .set_attrs("tile", json!({"crs": "EPSG:4326", "units": "deg"}))
            .unwrap();
        assert!(matches!(
            store.set_attrs("tile", json!([1, 2])),
            Err(Error::InvalidAttrs { .. })
        ));
        assert!(matches!(
            store.set_attrs("nope", json!({})),
            Err(Error::KeyNotFound { .. })
        ));
        // An entry not written yet takes them with its first write.
        store.insert("later", array![1u8]).unwrap();
        store.set_attrs("later", json!({"k": 1})).unwrap();
        assert!(!dir.path().join("later.meta.json").exists());
        store.close().unwrap();
    }
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let info = store.info("tile").unwrap();
    assert_eq!(info.attrs["crs"], "EPSG:4326");
    assert_eq!(info.attrs.get("origin"), None);
    assert_eq!(store.info("later").unwrap().attrs["k"], 1);
    assert_eq!(
        store.get::<f64, Ix2>("tile").unwrap().read().unwrap()[[0, 0]],
        1.0
    );
    // The data file was not rewritten by set_attrs; no temporary is left.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty());
    store.set_attrs("tile", json!({})).unwrap();
    let text = std::fs::read_to_string(dir.path().join("tile.meta.json")).unwrap();
    assert!(!text.contains("ndoffload_attrs"), "{text}");
    assert!(
        text.starts_with(r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray""#)
    );
}

#[test]
fn guards_read_like_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    store.insert("xyz", Array2::<f64>::ones((7, 3))).unwrap();
    assert_eq!(
        store
            .get::<f64, Ix2>("xyz")
            .unwrap()
            .read()
            .unwrap()
            .nrows(),
        7
    );
    store.offload("xyz").unwrap();
    let h = store.get::<f64, Ix2>("xyz").unwrap();
    {
        let g = h.read().unwrap(); // mapped
        assert_eq!((g.ncols(), g.sum()), (3, 21.0));
        assert_eq!(g.row(6).to_vec(), [1.0, 1.0, 1.0]);
    }
    {
        let mut w = h.write().unwrap();
        w.column_mut(0).fill(2.0);
        w[[0, 1]] = 5.0;
        assert_eq!(w.sum(), 7.0 * 2.0 + 7.0 * 2.0 + 4.0);
    }
    assert_eq!(h.read().unwrap()[[0, 1]], 5.0);
    let a = DiskBackedArray::new(array![1i32, 2, 3]).unwrap();
    assert_eq!(a.read().unwrap().iter().sum::<i32>(), 6);
}

#[test]
fn fallible_computations_use_the_question_mark() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let parsed = store.try_get_or_compute::<f64, Ix1, _, BoxError>("parsed", || {
        let n: usize = "3".parse()?;
        Ok(Array1::linspace(0.0, 1.0, n))
    });
    assert_eq!(parsed.unwrap().shape(), &[3]);
    let failed = store.try_get_or_compute::<f64, Ix1, _, BoxError>("bad", || {
        let n: usize = "three".parse()?;
        Ok(Array1::zeros(n))
    });
    assert!(failed.unwrap_err().to_string().contains("invalid digit"));
    assert!(!store.contains("bad"));
}

#[test]
fn errors_name_what_the_user_gave() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.npy");
    std::fs::write(&file, b"not a store").unwrap();
    for r in [
        DiskBackedStore::open(&file),
        DiskBackedStore::open_read_only(&file),
    ] {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::NotADirectory { .. }));
        assert_eq!(
            err.to_string(),
            format!("{} is a file, not a store directory", file.display())
        );
    }
}

#[test]
fn dyn_store_entries_cover_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    store.insert("b", array![true]).unwrap();
    store.insert("i2", array![1i16]).unwrap();
    store.insert("u8", array![1u64]).unwrap();
    store
        .insert("c", array![num_complex::Complex::new(1.0f32, 2.0)])
        .unwrap();
    let kinds: Vec<&str> = ["b", "i2", "u8", "c"]
        .iter()
        .map(|k| store.get_dyn(k).unwrap().read().unwrap().view().type_name())
        .collect();
    assert_eq!(kinds, ["bool", "i16", "u64", "Complex<f32>"]);
    let c = store.read_dyn("c").unwrap();
    assert_eq!(c.shape(), &[1]);
    let _: ndarray::ArrayD<num_complex::Complex<f64>> = c.into_array().unwrap();
    let _ = IxDyn(&[1]);
}

/// Attributes of an entry read from disk are kept by `info` after a `get`,
/// and by every later publish of the entry (an edit and a flush).
#[test]
fn attributes_survive_a_read_from_disk_and_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert_opts(
            "t",
            array![1.0f64, 2.0],
            &ndarray_offload::InsertOptions::new().attrs(json!({"crs": "EPSG:2056"})),
        )
        .unwrap();
        s.close().unwrap();
    }
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let h = s.get::<f64, Ix1>("t").unwrap();
    assert_eq!(h.read().unwrap()[1], 2.0);
    assert_eq!(s.info("t").unwrap().attrs["crs"], "EPSG:2056");
    h.write().unwrap()[0] = 5.0;
    drop(h);
    s.close().unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("t.meta.json")).unwrap()).unwrap();
    assert_eq!(meta["ndoffload_attrs"]["crs"], "EPSG:2056", "{meta}");
    let a: Array1<f64> = ndarray_npy::read_npy(dir.path().join("t.npy")).unwrap();
    assert_eq!(a[0], 5.0);
}

#[test]
fn a_npy_file_is_stored_without_reading_it_into_memory() {
    use ndarray_offload::NpyStreamWriter;
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.npy");
    let mut w = NpyStreamWriter::<f64, ndarray::Ix2>::create(&big, &[4000, 3]).unwrap();
    for c in 0..4 {
        w.write_chunk(&ndarray::Array2::from_shape_fn((1000, 3), |(i, j)| {
            ((c * 1000 + i) * 3 + j) as f64
        }))
        .unwrap();
    }
    w.finish().unwrap();
    let store = ndarray_offload::DiskBackedStore::open(dir.path().join("s")).unwrap();
    // Over an entry held in RAM, with a handle: the handle keeps its value.
    store
        .insert("points", ndarray::array![[1.0f64, 2.0, 3.0]])
        .unwrap();
    let old = store.get::<f64, ndarray::Ix2>("points").unwrap();
    store.insert_npy_file("points", &big).unwrap();
    assert_eq!(old.read().unwrap().nrows(), 1);
    let new = store.get::<f64, ndarray::Ix2>("points").unwrap();
    assert_eq!(new.read().unwrap()[[3999, 2]], (3999 * 3 + 2) as f64);
    drop((old, new));
    // Durable: a reopened store has it, numpy's layout.
    store.close().unwrap();
    let store = ndarray_offload::DiskBackedStore::open(dir.path().join("s")).unwrap();
    assert_eq!(
        store
            .get::<f64, ndarray::Ix2>("points")
            .unwrap()
            .read()
            .unwrap()[[1, 0]],
        3.0
    );
    // What is not a whole .npy file is a typed error; the entry stays.
    let short = dir.path().join("short.npy");
    let bytes = std::fs::read(&big).unwrap();
    std::fs::write(&short, &bytes[..bytes.len() - 8]).unwrap();
    assert!(matches!(
        store.insert_npy_file("points", &short),
        Err(Error::Truncated { .. })
    ));
    let fifo = dir.path().join("fifo.npy");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let err = store.insert_npy_file("points", &fifo).unwrap_err();
    assert!(err.to_string().contains("fifo.npy"), "{err}");
    let link = dir.path().join("link.npy");
    std::os::unix::fs::symlink(&big, &link).unwrap();
    assert!(store.insert_npy_file("points", &link).is_err());
    assert_eq!(
        store
            .get::<f64, ndarray::Ix2>("points")
            .unwrap()
            .read()
            .unwrap()[[3999, 2]],
        (3999 * 3 + 2) as f64
    );
    assert!(store.insert_npy_file("bad/name", &big).is_err());
}
