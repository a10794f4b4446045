//! Store benchmarks, each against a raw reference measured in the same run.
//!
//! ```text
//! cargo bench --bench store
//! ```
//!
//! * durable insert of 1,000 point clouds (1000 x 3 f64) vs a raw two-file
//!   atomic publish (write, fsync, rename for both files, one directory
//!   fsync) of the same bytes, interleaved one by one;
//! * batched durable insert (`insert_batch`), entries per second;
//! * `get` + first view of a small entry from a reopened store;
//! * reopening a store of 100,000 entries (`NDOFFLOAD_BENCH_REOPEN`, default
//!   100000).
//!
//! The benchmark creates and deletes many files: on an ext4 without a
//! journal, file creation slows down for a while after mass deletions, which
//! is why the reference and the crate are interleaved.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array2, Ix2};
use ndarray_offload::DiskBackedStore;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("NDOFFLOAD_BENCH_DIR").unwrap_or_else(|_| "target".into());
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn cloud(i: usize) -> Array2<f64> {
    Array2::from_shape_fn((1000, 3), |(r, c)| (i * 3000 + r * 3 + c) as f64 * 0.001)
}

fn npy_bytes(a: &Array2<f64>) -> Vec<u8> {
    let mut v = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(a, &mut v).unwrap();
    v
}

fn raw_pair(dir: &Path, key: &str, npy: &[u8], meta: &[u8]) -> Duration {
    let t = Instant::now();
    let write = |name: String, bytes: &[u8]| {
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, dir.join(name)).unwrap();
    };
    write(format!("{key}.npy"), npy);
    write(format!("{key}.meta.json"), meta);
    File::open(dir).unwrap().sync_all().unwrap();
    t.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn durable_inserts(n: usize) {
    let raw_dir = bench_dir();
    let dir = bench_dir();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let meta = br#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1000, 3], "dtype": "<f8", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for i in 0..n {
        let a = cloud(i);
        let bytes = npy_bytes(&a);
        let key = format!("cloud_{i:05}");
        let r = raw_pair(raw_dir.path(), &key, &bytes, meta);
        let t = Instant::now();
        store.insert_durable(&key, a).unwrap();
        let o = t.elapsed();
        store.offload(&key).unwrap();
        raw.push(r.as_secs_f64() * 1e3);
        ours.push(o.as_secs_f64() * 1e3);
    }
    let (r, o) = (median(&mut raw), median(&mut ours));
    println!(
        "durable insert of {n} clouds (1000x3 f64): median raw two-file publish {r:.3} ms, ours {o:.3} ms, ratio ours/raw {:.3}",
        o / r
    );
}

fn batched_inserts(n: usize, batch: usize) {
    let dir = bench_dir();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let clouds: Vec<Array2<f64>> = (0..batch).map(cloud).collect();
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let items = clouds
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("b{}_{j}", done / batch), a.clone()));
        store.insert_batch(items).unwrap();
        store.offload_all().unwrap();
        done += batch;
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "batched durable insert: {done} clouds in {el:.2} s = {:.0} entries/s (batches of {batch})",
        done as f64 / el
    );
}

fn gets(n: usize) {
    let dir = bench_dir();
    {
        let store = DiskBackedStore::open(dir.path()).unwrap();
        store
            .insert_batch((0..n).map(|i| {
                (
                    format!("small_{i:05}"),
                    Array2::<f32>::from_elem((10, 3), i as f32),
                )
            }))
            .unwrap();
    }
    // Warm the page cache, then measure in a fresh open.
    for e in fs::read_dir(dir.path()).unwrap() {
        let _ = fs::read(e.unwrap().path());
    }
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let mut t_get = Vec::new();
    let mut t_both = Vec::new();
    for i in 0..n {
        let k = format!("small_{i:05}");
        let t = Instant::now();
        let h = store.get::<f32, Ix2>(&k).unwrap();
        let g = t.elapsed();
        let s = h.read().unwrap().view()[[0, 0]];
        let both = t.elapsed();
        assert_eq!(s, i as f32);
        t_get.push(g.as_secs_f64() * 1e6);
        t_both.push(both.as_secs_f64() * 1e6);
    }
    println!(
        "get from a reopened store ({n} entries, page cache warm): median get {:.1} us, get + first view {:.1} us",
        median(&mut t_get),
        median(&mut t_both)
    );
}

fn reopen(n: usize) {
    let dir = bench_dir();
    {
        let store = DiskBackedStore::open(dir.path()).unwrap();
        let chunk = 10_000;
        for c in 0..n.div_ceil(chunk) {
            let lo = c * chunk;
            let hi = (lo + chunk).min(n);
            store
                .insert_batch((lo..hi).map(|i| (format!("e{i:06}"), ndarray::arr1(&[i as u32]))))
                .unwrap();
            store.offload_all().unwrap();
        }
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let store = DiskBackedStore::open(dir.path()).unwrap();
        let el = t.elapsed().as_secs_f64();
        assert_eq!(store.len(), n);
        times.push(el);
    }
    println!(
        "reopen a store of {n} entries: median {:.3} s",
        median(&mut times)
    );
}

fn main() {
    let reopen_n: usize = std::env::var("NDOFFLOAD_BENCH_REOPEN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    durable_inserts(1000);
    batched_inserts(10_000, 1000);
    gets(1000);
    reopen(reopen_n);
}
