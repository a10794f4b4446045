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
//! * batched durable insert (`insert_batch`), entries per second, of 10,000
//!   clouds and of 10,000 small entries (10 x 3 f32), in batches of 1,000,
//!   against a raw batched publish (temporaries written, one `syncfs`,
//!   renames, one directory fsync) and a floor that skips the temporaries
//!   and renames (not crash-safe; the least work two files per entry need);
//! * `get` + first view of a small entry from a reopened store, against
//!   two raw references: a read of its metadata, an open and a map of its
//!   `.npy` and a read of its first element from the map (what the store
//!   returns: a view of the mapped file), and the same with one `pread` of
//!   the first element instead of the map;
//! * writable open (and close) of a small store, 200 times, against a raw
//!   open and listing of its directory;
//! * reopening a store of 100,000 entries (`NDOFFLOAD_BENCH_REOPEN`, default
//!   100000).
//!
//! The benchmark creates many files: on ext4 without a journal, creating a
//! file skips inodes deleted in the last minutes (`recently_deleted`, which
//! then dominates a profile), so file creation slows down for minutes after
//! mass deletions, and its cost depends on the directory's block group.
//! Every part therefore works in its own directory under one root that is
//! deleted only when the run ends, the references and the crate are
//! interleaved in the same directory (the references under names the store
//! does not list), and a run right after another one deleted its files
//! measures the file system's slow path.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ndarray::{Array, Array2, Dimension, Ix2};
use ndarray_offload::{DiskBackedStore, Element};

/// A fresh directory for one part, inside the run's root. Nothing is
/// deleted before the run ends: deletions would slow down the file creation
/// of the parts that follow (see above).
fn bench_dir(root: &Path, part: &str) -> PathBuf {
    let d = root.join(part);
    fs::create_dir(&d).unwrap();
    d
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

fn durable_inserts(root: &Path, n: usize) {
    let dir = bench_dir(root, "durable");
    let store = DiskBackedStore::open(&dir).unwrap();
    let meta = br#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1000, 3], "dtype": "<f8", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#;
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for i in 0..n {
        let a = cloud(i);
        let bytes = npy_bytes(&a);
        let key = format!("cloud_{i:05}");
        let r = raw_pair(&dir, &key, &bytes, meta);
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

/// Creates `path` (it must not exist) and writes `bytes`, without syncing.
fn write_new(path: &Path, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// Raw reference for a batch: every temporary pair written and closed, one
/// `syncfs`, the renames, one directory fsync.
fn raw_batch(dir: &Path, tag: &str, npys: &[Vec<u8>], meta: &[u8]) -> Duration {
    let t = Instant::now();
    let mut renames = Vec::with_capacity(npys.len() * 2);
    for (j, npy) in npys.iter().enumerate() {
        for (name, bytes) in [
            (format!("r{tag}_{j}.npy"), npy.as_slice()),
            (format!("r{tag}_{j}.meta.json"), meta),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            write_new(&tmp, bytes);
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

/// The least file-system work two files per entry need: both files created
/// at their final names and written, one `syncfs`, one directory fsync. No
/// temporary files and no renames, so not crash-safe (a crash can leave torn
/// files): a floor, not a protocol.
fn floor_batch(dir: &Path, tag: &str, npys: &[Vec<u8>], meta: &[u8]) -> Duration {
    let t = Instant::now();
    for (j, npy) in npys.iter().enumerate() {
        for (name, bytes) in [
            (format!("f{tag}_{j}.npy"), npy.as_slice()),
            (format!("f{tag}_{j}.meta.json"), meta),
        ] {
            write_new(&dir.join(name), bytes);
        }
    }
    let d = File::open(dir).unwrap();
    #[cfg(target_os = "linux")]
    rustix::fs::syncfs(&d).unwrap();
    d.sync_all().unwrap();
    t.elapsed()
}

/// `n` entries in batches of `arrays.len()` through `insert_batch`, the raw
/// batched publish and the floor, rotating which runs first.
fn batched_inserts<T: Element, D: Dimension>(
    root: &Path,
    label: &str,
    short: &str,
    arrays: &[Array<T, D>],
    n: usize,
) {
    let dir = bench_dir(root, &format!("batch-{short}"));
    let store = DiskBackedStore::open(&dir).unwrap();
    let batch = arrays.len();
    let npys: Vec<Vec<u8>> = arrays
        .iter()
        .map(|a| {
            let mut v = Vec::new();
            ndarray_npy::WriteNpyExt::write_npy(a, &mut v).unwrap();
            v
        })
        .collect();
    let meta = format!(
        r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": {:?}, "dtype": "{}", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}}"#,
        arrays[0].shape(),
        T::dtype()
    );
    let (mut ours, mut raw, mut floor) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < n {
        let tag = format!("{short}{}", done / batch);
        for k in 0..3 {
            match (k + done / batch) % 3 {
                0 => raw += raw_batch(&dir, &tag, &npys, meta.as_bytes()),
                1 => floor += floor_batch(&dir, &tag, &npys, meta.as_bytes()),
                _ => {
                    let items: Vec<_> = arrays
                        .iter()
                        .enumerate()
                        .map(|(j, a)| (format!("b{tag}_{j}"), a.clone()))
                        .collect();
                    let t = Instant::now();
                    store.insert_batch(items).unwrap();
                    ours += t.elapsed();
                    store.offload_all().unwrap();
                }
            }
        }
        done += batch;
    }
    let rate = |d: Duration| done as f64 / d.as_secs_f64();
    let (o, r, f) = (rate(ours), rate(raw), rate(floor));
    println!(
        "batched durable insert ({done} {label}, batches of {batch}): ours {o:.0} entries/s, raw batched publish {r:.0} pairs/s (ratio {:.3}), floor without temporaries or renames {f:.0} pairs/s",
        o / r
    );
}

fn gets(root: &Path, n: usize) {
    let dir = bench_dir(root, "get");
    {
        let store = DiskBackedStore::open(&dir).unwrap();
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
    for e in fs::read_dir(&dir).unwrap() {
        let _ = fs::read(e.unwrap().path());
    }
    let store = DiskBackedStore::open(&dir).unwrap();
    let mut t_get = Vec::new();
    let mut t_both = Vec::new();
    let mut t_raw = Vec::new();
    let mut t_map = Vec::new();
    // Kept until the run ends, as the store keeps its maps: unmapping is
    // not part of either measure.
    let mut maps = Vec::with_capacity(n);
    for i in 0..n {
        let k = format!("small_{i:05}");
        // The first raw reference: read the metadata, open the `.npy`, read
        // its first element (one `pread`, cheaper than a map).
        let t = Instant::now();
        let meta = fs::read(dir.join(format!("{k}.meta.json"))).unwrap();
        let f = File::open(dir.join(format!("{k}.npy"))).unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 128).unwrap();
        let raw = t.elapsed();
        assert!(!meta.is_empty() && f32::from_le_bytes(b) == i as f32);
        // The second: read the metadata, open and map the `.npy`, read its
        // first element from the map (what the store returns: a view of
        // the mapped file).
        let t = Instant::now();
        let meta = fs::read(dir.join(format!("{k}.meta.json"))).unwrap();
        let f = File::open(dir.join(format!("{k}.npy"))).unwrap();
        // SAFETY: the bench's own file, not changed while it is mapped.
        let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let first = f32::from_le_bytes(m[128..132].try_into().unwrap());
        let map = t.elapsed();
        assert!(!meta.is_empty() && first == i as f32);
        maps.push(m);
        let t = Instant::now();
        let h = store.get::<f32, Ix2>(&k).unwrap();
        let g = t.elapsed();
        let s = h.read().unwrap().view()[[0, 0]];
        let both = t.elapsed();
        assert_eq!(s, i as f32);
        t_get.push(g.as_secs_f64() * 1e6);
        t_both.push(both.as_secs_f64() * 1e6);
        t_raw.push(raw.as_secs_f64() * 1e6);
        t_map.push(map.as_secs_f64() * 1e6);
    }
    let (g, b) = (median(&mut t_get), median(&mut t_both));
    let (r, m) = (median(&mut t_raw), median(&mut t_map));
    println!(
        "get from a reopened store ({n} entries, page cache warm): median get {g:.1} us, get + first view {b:.1} us; raw metadata read + open + map + first element {m:.1} us, ratio {:.2}; raw metadata read + open + pread of the first element {r:.1} us, ratio {:.2}",
        b / m,
        b / r
    );
}

/// Writable opens of a small store (10 entries, page cache warm), against
/// a raw open and listing of its directory, interleaved.
fn opens(root: &Path, n: usize) {
    let dir = bench_dir(root, "open");
    {
        let store = DiskBackedStore::open(&dir).unwrap();
        store
            .insert_batch((0..10).map(|i| (format!("e{i}"), ndarray::arr1(&[i as u32]))))
            .unwrap();
    }
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let names = fs::read_dir(&dir).unwrap().count();
        raw.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let store = DiskBackedStore::open(&dir).unwrap();
        let len = store.len();
        drop(store);
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(names >= 20 && len == 10);
    }
    let p99 = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    };
    let (o50, r50) = (median(&mut ours), median(&mut raw));
    println!(
        "writable open + close of a 10-entry store ({n} times): ours p50 {o50:.3} ms p99 {:.3} ms, raw open + listing of the directory p50 {r50:.3} ms p99 {:.3} ms",
        p99(&mut ours),
        p99(&mut raw)
    );
}

fn reopen(root: &Path, n: usize) {
    let dir = bench_dir(root, "reopen");
    {
        let store = DiskBackedStore::open(&dir).unwrap();
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
        let store = DiskBackedStore::open(&dir).unwrap();
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
    let base = std::env::var("NDOFFLOAD_BENCH_DIR").unwrap_or_else(|_| "target".into());
    fs::create_dir_all(&base).unwrap();
    let root = tempfile::tempdir_in(base).unwrap();
    if run("batch") {
        let clouds: Vec<Array2<f64>> = (0..1000).map(cloud).collect();
        batched_inserts(root.path(), "clouds (1000x3 f64)", "c", &clouds, 10_000);
        let small: Vec<Array2<f32>> = (0..1000)
            .map(|i| Array2::from_elem((10, 3), i as f32))
            .collect();
        batched_inserts(root.path(), "small entries (10x3 f32)", "s", &small, 10_000);
    }
    if run("durable") {
        durable_inserts(root.path(), 1000);
    }
    if run("get") {
        gets(root.path(), 1000);
    }
    if run("open") {
        opens(root.path(), 200);
    }
    if run("reopen") {
        reopen(root.path(), reopen_n);
    }
}
