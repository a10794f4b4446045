//! `python/ndoffload_store.py`, the numpy reader that is safe while writers
//! run: its rules on hand-made stores (`python/test_ndoffload_store.py`), a
//! store the crate wrote, and a Python process reading an entry that a Rust
//! writer process replaces continuously (alternating dtypes, shapes and
//! memory orders). Skipped when numpy is missing, except under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_offload::DiskBackedStore;
use num_complex::Complex;
use serde_json::{json, Value};

use crate::common::{numpy_python, run_python};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// The rules of `ndoffload_store.load` on hand-made stores: plain numpy
/// pairs with metadata without a version, a single-link file under a
/// versioned metadata, matching, missing and foreign version links,
/// truncated files, empty and 0-d arrays, FIFOs and symbolic links.
#[test]
fn ndoffload_store_rules_on_hand_made_stores() {
    let Some(py) = numpy_python() else { return };
    let out = Command::new(&py)
        .arg(python_dir().join("test_ndoffload_store.py"))
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}

/// `ndoffload_store.load` reads what the crate writes: every kind of
/// array, both memory orders, empty and 0-d arrays, with the attributes.
#[test]
fn ndoffload_store_reads_what_the_crate_writes() {
    let Some(py) = numpy_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        let f = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]).f(), |i| {
            (i[0] * 100 + i[1] * 10 + i[2]) as i32
        });
        s.insert_opts(
            "fortran",
            f,
            &ndarray_offload::InsertOptions::new().attrs(json!({"crs": "EPSG:2056"})),
        )
        .unwrap();
        s.insert("scalar", ArrayD::from_elem(IxDyn(&[]), 2.5f64))
            .unwrap();
        s.insert("empty", ArrayD::<u16>::zeros(IxDyn(&[0, 3])))
            .unwrap();
        s.insert("flags", ndarray::array![true, false, true])
            .unwrap();
        s.insert("z", ndarray::array![Complex::new(1.5f64, -2.0)])
            .unwrap();
        s.close().unwrap();
    }
    let code = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import ndoffload_store as S
out = {}
for k in S.keys(sys.argv[2]):
    for mm in (True, False):
        a, attrs = S.load(sys.argv[2], k, mmap=mm)
        out[k] = [a.dtype.str, list(a.shape), bool(a.ndim >= 2 and not a.flags.c_contiguous),
                  np.asarray(a).ravel(order="C").tolist() if a.dtype.kind != "c" else str(a.tolist()),
                  attrs]
print(json.dumps(out))
"#;
    let dir_s = dir.path().to_str().unwrap();
    let out = run_python(&py, code, &[python_dir().to_str().unwrap(), dir_s]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let fortran = &v["fortran"];
    assert_eq!(fortran[0], "<i4");
    assert_eq!(fortran[1], json!([3, 4, 5]));
    assert_eq!(fortran[2], true, "mapped in Fortran order");
    let c_order: Vec<i64> = (0..3)
        .flat_map(|i| (0..4).flat_map(move |j| (0..5).map(move |k| i * 100 + j * 10 + k)))
        .collect();
    assert_eq!(fortran[3], json!(c_order));
    assert_eq!(fortran[4]["crs"], "EPSG:2056");
    assert_eq!(v["scalar"], json!(["<f8", [], false, [2.5], {}]));
    assert_eq!(v["empty"], json!(["<u2", [0, 3], false, [], {}]));
    assert_eq!(
        v["flags"],
        json!(["|b1", [3], false, [true, false, true], {}])
    );
    assert_eq!(v["z"][0], "<c16");
}

// ---------------------------------------------------------------------------
// A Rust writer process replacing one entry while a Python process reads it.

/// What the writer publishes as generation `gen`: the element type, shape
/// and memory order change with every generation (the whole combination
/// repeats only every 60,540 generations), and every element is `gen %
/// 251`, so that a header of one generation over the data or attributes of
/// another shows.
fn generation(gen: u64) -> (&'static str, Vec<usize>, bool, u64) {
    let n = 7 + (gen % 1009) as usize;
    let shape = match gen % 3 {
        0 => vec![n],
        1 => vec![n, 11],
        _ => vec![5, 3, n],
    };
    let fortran = shape.len() >= 2 && gen % 5 < 2;
    let dtype = ["<f4", "<f8", "<i2", "|u1"][(gen % 4) as usize];
    (dtype, shape, fortran, gen % 251)
}

fn filled<T: Clone>(shape: &[usize], fortran: bool, x: T) -> ArrayD<T> {
    if fortran {
        ArrayD::from_elem(IxDyn(shape).f(), x)
    } else {
        ArrayD::from_elem(IxDyn(shape), x)
    }
}

/// The writer of `numpy_reader_sees_whole_versions_while_a_rust_writer_
/// replaces_an_entry`: publishes generation 0, 1, 2, ... of the entry `e`
/// (with its attributes `{"gen", "dtype", "shape", "fortran"}`) durably,
/// until the stop file appears.
#[test]
#[ignore = "run in a child process"]
fn py_reader_writer_child() {
    let Some(dir) = std::env::var_os("NDOFFLOAD_PYREADER_DIR").map(PathBuf::from) else {
        return;
    };
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let mut gen = 0u64;
    while !dir.join("stop").exists() {
        let (dtype, shape, fortran, v) = generation(gen);
        let attrs = json!({"gen": gen, "dtype": dtype, "shape": shape, "fortran": fortran});
        match gen % 4 {
            0 => store.insert_opts(
                "e",
                filled(&shape, fortran, v as f32),
                &ndarray_offload::InsertOptions::new().attrs(attrs),
            ),
            1 => store.insert_opts(
                "e",
                filled(&shape, fortran, v as f64),
                &ndarray_offload::InsertOptions::new().attrs(attrs),
            ),
            2 => store.insert_opts(
                "e",
                filled(&shape, fortran, v as i16),
                &ndarray_offload::InsertOptions::new().attrs(attrs),
            ),
            _ => store.insert_opts(
                "e",
                filled(&shape, fortran, v as u8),
                &ndarray_offload::InsertOptions::new().attrs(attrs),
            ),
        }
        .unwrap();
        store.flush().unwrap();
        gen += 1;
    }
    println!("published={gen}");
}

/// Reads entry `argv[3]` of store `argv[2]` with `ndoffload_store.load`
/// for `argv[4]` seconds and checks every read against its attributes.
const READER: &str = r#"
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import ndoffload_store as S

store, key, secs = sys.argv[2], sys.argv[3], float(sys.argv[4])
reads = failures = 0
last_gen = -1
seen = set()
problems = []
deadline = time.monotonic() + secs
while time.monotonic() < deadline:
    mm = reads % 4 != 3
    try:
        a, attrs = S.load(store, key, mmap=mm)
        gen = attrs["gen"]
        fortran = a.ndim >= 2 and a.flags.f_contiguous and not a.flags.c_contiguous
        bad = []
        if a.dtype.str != attrs["dtype"]:
            bad.append("dtype %s" % a.dtype.str)
        if list(a.shape) != attrs["shape"]:
            bad.append("shape %s" % list(a.shape))
        if fortran != attrs["fortran"]:
            bad.append("fortran order %s" % fortran)
        if not (a == gen % 251).all():
            bad.append("values %s" % np.unique(a)[:5].tolist())
        if gen < last_gen:
            bad.append("generation went back from %d" % last_gen)
        if bad:
            raise AssertionError("generation %d (%s): %s" % (gen, attrs, ", ".join(bad)))
        last_gen = gen
        seen.add(gen)
        del a
    except Exception as e:
        failures += 1
        if len(problems) < 10:
            problems.append("%s: %s" % (type(e).__name__, e))
    reads += 1
print(json.dumps({"reads": reads, "failures": failures, "generations": len(seen),
                  "last_gen": last_gen, "problems": problems}))
"#;

/// A Python process reads an entry with `ndoffload_store.load` for about
/// 10 s (`NDOFFLOAD_PYREADER_SECS`) while a Rust writer process replaces it
/// as fast as it can, alternating element types (f32, f64, i16, u8), shapes
/// (`(n,)`, `(n, 11)`, `(5, 3, n)`) and C/Fortran order: every read is one
/// whole version (dtype, shape, order and values agree with the
/// attributes read with it), none fails, and the generations read never
/// go back. Holds with the metadata's version field and links, and with
/// metadata without them (the header-agreement rule).
#[test]
fn numpy_reader_sees_whole_versions_while_a_rust_writer_replaces_an_entry() {
    let Some(py) = numpy_python() else { return };
    let secs: u64 = std::env::var("NDOFFLOAD_PYREADER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    let store = dir.join("store");
    std::fs::create_dir(&store).unwrap();
    let out_path = dir.join("writer.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut writer = Command::new(std::env::current_exe().unwrap())
        .args([
            "python_reader::py_reader_writer_child",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NDOFFLOAD_PYREADER_DIR", dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let writer_output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let start = Instant::now();
    while !store.join("e.meta.json").exists() {
        if let Some(status) = writer.try_wait().unwrap() {
            panic!("the writer exited ({status}): {}", writer_output());
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no first publish in 60 s: {}",
            writer_output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let reader = Command::new(&py)
        .arg("-c")
        .arg(READER)
        .arg(python_dir())
        .arg(&store)
        .arg("e")
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();

    std::fs::write(dir.join("stop"), b"").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = writer.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = writer.kill();
            let _ = writer.wait();
            panic!("the writer did not stop: {}", writer_output());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let w = writer_output();
    assert!(status.success(), "writer failed: {w}");
    let published: u64 = w
        .split_whitespace()
        .find_map(|t| t.strip_prefix("published="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no published= in {w}"));

    let stdout = String::from_utf8_lossy(&reader.stdout);
    let stderr = String::from_utf8_lossy(&reader.stderr);
    assert!(
        reader.status.success(),
        "the reader failed: {stdout}{stderr}"
    );
    let r: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"));
    let versioned = std::fs::read_to_string(store.join("e.meta.json"))
        .map(|m| m.contains("\"ndoffload_version\""))
        .unwrap_or(false);
    println!(
        "{secs} s: the writer published {published} versions ({}); the reader made {} reads \
         of {} generations, {} failures",
        if versioned {
            "with version links"
        } else {
            "metadata without a version"
        },
        r["reads"],
        r["generations"],
        r["failures"]
    );
    assert_eq!(
        r["failures"], 0,
        "reads of torn or wrong versions: {:#}",
        r["problems"]
    );
    assert!(r["reads"].as_u64().unwrap() > 100, "too few reads: {r}");
    assert!(
        r["generations"].as_u64().unwrap() >= 2,
        "the reader never saw the entry change: {r} (writer: {published} published)"
    );
}
