//! Round trips through a real numpy.

use ndarray::{Array2, Array3, ArrayD, IxDyn};
use ndarray_offload::{CacheConfig, DiskBackedArray};
use num_complex::Complex;

use crate::common::{numpy_python, run_python, sha256_hex};

const CHECK: &str = r#"
import hashlib, json, sys
import numpy as np
out = {}
for p in sys.argv[1:]:
    a = np.load(p, mmap_mode='r')
    out[p] = [a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
print(json.dumps(out))
"#;

fn le_bytes<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

#[test]
fn numpy_reads_what_we_write() {
    let Some(py) = numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = CacheConfig::default().with_location(dir.path());
    let mut expect: Vec<(String, String, Vec<usize>, String)> = Vec::new();
    let mut keep = Vec::new();

    let f = Array3::<f32>::from_shape_fn((4, 3, 2), |(i, j, k)| (i * 6 + j * 2 + k) as f32 * 0.5);
    let inputs_f32 = [
        f.clone(),
        f.t().to_owned(),
        f.slice(ndarray::s![..;-1, .., ..]).to_owned(),
    ];
    for a in inputs_f32 {
        let d = DiskBackedArray::with_config(a.clone(), &cfg).unwrap();
        d.offload().unwrap();
        let c = a.as_standard_layout().to_owned();
        let bytes = le_bytes(c.as_slice().unwrap(), |x: f32| x.to_le_bytes().to_vec());
        expect.push((
            d.path().display().to_string(),
            "<f4".into(),
            a.shape().to_vec(),
            sha256_hex(&bytes),
        ));
        keep.push(d);
    }
    let b = Array2::from_shape_fn((3, 5), |(i, j)| (i + j) % 2 == 0);
    let d = DiskBackedArray::with_config(b.clone(), &cfg).unwrap();
    d.offload().unwrap();
    let bytes: Vec<u8> = b.iter().map(|&x| x as u8).collect();
    expect.push((
        d.path().display().to_string(),
        "|b1".into(),
        vec![3, 5],
        sha256_hex(&bytes),
    ));
    let z = ArrayD::<Complex<f64>>::from_elem(IxDyn(&[]), Complex::new(1.5, -2.0));
    let dz = DiskBackedArray::with_config(z, &cfg).unwrap();
    dz.offload().unwrap();
    let bytes = [1.5f64.to_le_bytes(), (-2.0f64).to_le_bytes()].concat();
    expect.push((
        dz.path().display().to_string(),
        "<c16".into(),
        vec![],
        sha256_hex(&bytes),
    ));
    let e = Array2::<u16>::zeros((0, 7));
    let de = DiskBackedArray::with_config(e, &cfg).unwrap();
    de.offload().unwrap();
    expect.push((
        de.path().display().to_string(),
        "<u2".into(),
        vec![0, 7],
        sha256_hex(&[]),
    ));

    let paths: Vec<&str> = expect.iter().map(|e| e.0.as_str()).collect();
    let out = run_python(&py, CHECK, &paths);
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for (p, dtype, shape, sha) in &expect {
        let g = &got[p.as_str()];
        assert_eq!(g[0], dtype.as_str(), "{p}");
        let gs: Vec<usize> = g[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(&gs, shape, "{p}");
        assert_eq!(g[2], sha.as_str(), "{p}");
    }
    drop((keep, d, dz, de));
}

#[test]
fn we_read_what_numpy_writes_now() {
    let Some(py) = numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let code = r#"
import sys, numpy as np
d = sys.argv[1]
a = np.arange(24, dtype='<f8').reshape(2, 3, 4)
np.save(d + '/c.npy', a)
np.save(d + '/f.npy', np.asfortranarray(a))
np.save(d + '/z.npy', np.array(7, dtype='<i2'))
np.save(d + '/e.npy', np.zeros((0, 2), dtype='|b1'))
"#;
    run_python(&py, code, &[dir.path().to_str().unwrap()]);
    let c = CacheConfig::default();
    let expect =
        ArrayD::from_shape_vec(IxDyn(&[2, 3, 4]), (0..24).map(|x| x as f64).collect()).unwrap();
    for name in ["c.npy", "f.npy"] {
        let d = DiskBackedArray::<f64, IxDyn>::open(dir.path().join(name), &c).unwrap();
        assert_eq!(d.read().unwrap().view(), expect.view(), "{name}");
    }
    let z = DiskBackedArray::<i16, ndarray::Ix0>::open(dir.path().join("z.npy"), &c).unwrap();
    assert_eq!(z.read().unwrap().view()[()], 7);
    let e = DiskBackedArray::<bool, ndarray::Ix2>::open(dir.path().join("e.npy"), &c).unwrap();
    assert_eq!(e.shape(), &[0, 2]);
    assert_eq!(e.read().unwrap().view().len(), 0);
}

/// The main example's store, read by the committed numpy script: every
/// tile's checksum (in its attributes) matches what numpy reads, and the
/// attributes come through `json.load`.
#[test]
fn numpy_reads_the_pipeline_store_with_attributes() {
    let Some(py) = numpy_python() else { return };
    // `cargo test` builds the examples next to the binaries.
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ndoffload"))
        .parent()
        .unwrap()
        .join("examples/pipeline");
    assert!(
        exe.exists(),
        "{} not built: the whole suite (`cargo test --all-features`) builds the examples",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = std::process::Command::new(&exe)
        .args(["--dir", store.to_str().unwrap()])
        .args(["--tiles", "5", "--points", "2000", "--budget", "40KiB"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("| peak RSS (whole run) |"), "{stdout}");
    assert!(
        stdout.contains("5 tiles in") && stdout.contains("all match"),
        "{stdout}"
    );
    assert!(
        stderr.contains("verifying: 5 tiles (no progress bar: not a terminal)"),
        "{stderr}"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/read_pipeline.py");
    let code = format!(
        "import runpy, sys; sys.argv = ['read_pipeline.py', sys.argv[1]]; runpy.run_path({script:?}, run_name='__main__')"
    );
    let lines = run_python(&py, &code, &[store.to_str().unwrap()]);
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 15, "{lines}");
    let xyz = rows.iter().find(|r| r["name"] == "tile_00001_xyz").unwrap();
    assert_eq!(xyz["checksum_ok"], true);
    assert_eq!(xyz["attrs"]["crs"], "EPSG:2056");
    assert_eq!(xyz["attrs"]["origin"], serde_json::json!([100.0, 0.0]));
    assert_eq!(xyz["shape"], serde_json::json!([2000, 3]));
    let vox = rows
        .iter()
        .find(|r| r["name"] == "tile_00004_voxels")
        .unwrap();
    assert_eq!(vox["attrs"]["voxel"], 0.5);
    assert!(vox["attrs"]["summary"]["mean_intensity"].as_f64().unwrap() > 0.0);
    assert!(rows
        .iter()
        .filter(|r| r.get("checksum_ok").is_some())
        .all(|r| r["checksum_ok"] == true));
}
