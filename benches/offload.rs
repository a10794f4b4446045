//! Offload and load benchmarks for `DiskBackedArray`, each against a raw
//! reference measured in the same run.
//!
//! ```text
//! cargo bench --bench offload                 # throughput and load figures
//! cargo bench --bench offload -- --rss offload 1024   # one 1 GiB offload (run under /usr/bin/time -v)
//! cargo bench --bench offload -- --rss baseline 1024  # the same allocation without the offload
//! ```
//!
//! Environment: `NDOFFLOAD_BENCH_DIR` (default: a temporary directory under
//! the current directory's file system, `target/`), `NDOFFLOAD_BENCH_REPS`
//! (default 5), `NDOFFLOAD_BENCH_SIZES_MIB` (default `64,1024`).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::{CacheConfig, DiskBackedArray, LoadMode};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("NDOFFLOAD_BENCH_DIR").unwrap_or_else(|_| "target".into());
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn make(n: usize) -> Array1<f32> {
    Array1::from_shape_fn(n, |i| (i % 1024) as f32)
}

/// Raw reference: write the same bytes to a temp file, fsync, rename, fsync dir.
fn raw_publish(dir: &Path, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    let tmp = dir.join("raw.tmp");
    let mut f = File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    fs::rename(&tmp, dir.join("raw.npy")).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
    t.elapsed()
}

/// Brings the machine to the same state before each timed step: write and
/// delete a scratch file of the same size (see docs/benchmarks.md).
fn settle(dir: &Path, bytes: &[u8]) {
    let p = dir.join("scratch");
    let mut f = File::create(&p).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(p).unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn throughput(reps: usize, mib: usize) {
    let dir = bench_dir();
    let n = mib * (1 << 20) / 4;
    let a = make(n);
    let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
    let cfg = CacheConfig::default().with_location(dir.path());
    let mut ratios = Vec::new();
    let (mut raw_t, mut ours_t) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Allocate the array before settling, so both timed steps start
        // from the same page-cache state; alternate which goes first.
        let d = DiskBackedArray::with_config(a.clone(), &cfg).unwrap();
        let raw_step = || {
            settle(dir.path(), &bytes);
            let raw = raw_publish(dir.path(), &bytes);
            fs::remove_file(dir.path().join("raw.npy")).unwrap();
            raw
        };
        let raw_first = rep % 2 == 0;
        let mut raw = if raw_first {
            raw_step()
        } else {
            Duration::ZERO
        };
        settle(dir.path(), &bytes);
        let t = Instant::now();
        d.offload().unwrap();
        let ours = t.elapsed();
        d.set_purge_on_drop(true);
        drop(d);
        if !raw_first {
            raw = raw_step();
        }
        let mbps = |d: Duration| (mib as f64) / d.as_secs_f64();
        println!(
            "offload {mib:>5} MiB rep {rep}: raw {:8.1} MiB/s  ours {:8.1} MiB/s  ratio {:.3}",
            mbps(raw),
            mbps(ours),
            raw.as_secs_f64() / ours.as_secs_f64()
        );
        raw_t.push(raw.as_secs_f64());
        ours_t.push(ours.as_secs_f64());
        ratios.push(raw.as_secs_f64() / ours.as_secs_f64());
    }
    println!(
        "offload {mib:>5} MiB: median raw {:.1} MiB/s, ours {:.1} MiB/s, median ratio ours/raw throughput {:.3}",
        mib as f64 / median(raw_t),
        mib as f64 / median(ours_t),
        median(ratios)
    );
}

fn load_and_sum(reps: usize, mib: usize) {
    let dir = bench_dir();
    let n = mib * (1 << 20) / 4;
    let a = make(n);
    let cfg = CacheConfig::default()
        .with_location(dir.path())
        .with_purge_on_drop(true);
    let d = DiskBackedArray::with_config(a.clone(), &cfg).unwrap();
    d.offload().unwrap();
    // Warm the page cache.
    d.load(LoadMode::ReadOnly).unwrap();
    let _ = d.read().unwrap().view().sum();
    let mut loads = Vec::new();
    let (mut ram, mut mapped) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        d.offload().unwrap();
        let t = Instant::now();
        d.load(LoadMode::ReadOnly).unwrap();
        loads.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let s1 = std::hint::black_box(a.sum());
        ram.push(t.elapsed().as_secs_f64());
        let g = d.read().unwrap();
        let t = Instant::now();
        let s2 = std::hint::black_box(g.view().sum());
        mapped.push(t.elapsed().as_secs_f64());
        assert_eq!(s1, s2);
    }
    let (r, m) = (median(ram), median(mapped));
    println!(
        "load {mib} MiB offloaded array: median {:.1} us (max {:.1} us)",
        median(loads.clone()),
        loads.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "sum {mib} MiB: in RAM {:.1} ms, mapped (page cache) {:.1} ms, mapped/RAM speed ratio {:.3}",
        r * 1e3,
        m * 1e3,
        r / m
    );
}

fn rss_mode(which: &str, mib: usize) {
    let dir = bench_dir();
    let n = mib * (1 << 20) / 4;
    let a = make(n);
    let cfg = CacheConfig::default()
        .with_location(dir.path())
        .with_purge_on_drop(true);
    let d = DiskBackedArray::<f32, Ix1>::with_config(a, &cfg).unwrap();
    if which == "offload" {
        d.offload().unwrap();
        println!("offloaded {mib} MiB to {}", d.path().display());
    } else {
        println!("baseline: allocated {mib} MiB, no offload");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--rss") {
        let which = args.get(1).map(String::as_str).unwrap_or("offload");
        let mib = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
        return rss_mode(which, mib);
    }
    let reps: usize = std::env::var("NDOFFLOAD_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let sizes: Vec<usize> = std::env::var("NDOFFLOAD_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "64,1024".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for &mib in &sizes {
        throughput(reps, mib);
    }
    load_and_sum(reps, *sizes.last().unwrap_or(&64));
}
