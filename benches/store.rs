//! Store benchmarks, each against a raw reference measured in the same run.
//!
//! ```text
//! cargo bench --bench store                 # everything
//! cargo bench --bench store -- batch get    # only some parts
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
//! The benchmark creates and deletes many files: on ext4, creating a file
//! scans for an inode that was not deleted recently, so file creation slows
//! down for minutes after mass deletions (`recently_deleted` dominates a
//! profile then), and its cost depends on the directory's block group. The
//! reference and the crate are therefore interleaved and write into the same
//! directory (the reference under names the store ignores), and the batch
//! part runs first.

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
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = File::create(&tmp).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
        fs::rename(&tmp, dir.join(name)).unwrap();
    };
    // Names the store ignores, in the store's own directory: ext4 allocates
    // inodes per directory group, and creation cost depends on the group.
    write(format!("{key}.raw-npy"), npy);
    write(format!("{key}.raw-meta"), meta);
    File::open(dir).unwrap().sync_all().unwrap();
    t.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn durable_inserts(n: usize) {
    let dir = bench_dir();
    let raw_dir = &dir;
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

/// Raw reference for a batch: every temporary pair written and closed, one
/// `syncfs`, the renames, one directory fsync.
fn raw_batch(dir: &Path, tag: usize, npys: &[Vec<u8>], meta: &[u8]) -> Duration {
    let t = Instant::now();
    let mut renames = Vec::with_capacity(npys.len() * 2);
    for (j, npy) in npys.iter().enumerate() {
        for (name, bytes) in [
            (format!("r{tag}_{j}.npy"), npy.as_slice()),
            (format!("r{tag}_{j}.meta.json"), meta),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .unwrap();
            f.write_all(bytes).unwrap();
            renames.push((tmp, dir.join(name)));
        }
    }
    let d = File::open(dir).unwrap();
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(&d).unwrap();
    for (a, b) in renames {
        fs::rename(a, b).unwrap();
    }
    d.sync_all().unwrap();
    t.elapsed()
}

fn batched_inserts(n: usize, batch: usize) {
    let dir = bench_dir();
    let raw_dir = &dir;
    let store = DiskBackedStore::open(dir.path()).unwrap();
    let clouds: Vec<Array2<f64>> = (0..batch).map(cloud).collect();
    let npys: Vec<Vec<u8>> = clouds.iter().map(npy_bytes).collect();
    let meta = br#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1000, 3], "dtype": "<f8", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#;
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < n {
        let tag = done / batch;
        // Interleave the reference and the crate, alternating which is first.
        if tag.is_multiple_of(2) {
            raw += raw_batch(raw_dir.path(), tag, &npys, meta);
        }
        let items: Vec<_> = clouds
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("b{tag}_{j}"), a.clone()))
            .collect();
        let t = Instant::now();
        store.insert_batch(items).unwrap();
        ours += t.elapsed();
        store.offload_all().unwrap();
        if !tag.is_multiple_of(2) {
            raw += raw_batch(raw_dir.path(), tag, &npys, meta);
        }
        done += batch;
    }
    let (o, r) = (
        done as f64 / ours.as_secs_f64(),
        done as f64 / raw.as_secs_f64(),
    );
    println!(
        "batched durable insert ({done} clouds, batches of {batch}): raw batched publish {r:.0} pairs/s, ours {o:.0} entries/s, ratio {:.3}",
        o / r
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
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    // The batch runs first: file creation on ext4 slows down for minutes
    // after mass deletions (every other part deletes its files at the end).
    if run("batch") {
        batched_inserts(10_000, 1000);
    }
    if run("durable") {
        durable_inserts(1000);
    }
    if run("get") {
        gets(1000);
    }
    if run("reopen") {
        reopen(reopen_n);
    }
}
