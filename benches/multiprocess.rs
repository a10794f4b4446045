//! Many processes on one store, as ratios measured in the same run.
//!
//! ```text
//! cargo bench --bench multiprocess
//! NDOFFLOAD_BENCH_SECS=10 cargo bench --bench multiprocess
//! ```
//!
//! * read throughput of a reader process (a read-only open reading random
//!   entries of 64 KiB and summing them, refreshing every 100 reads) while
//!   a writer process replaces entries at full speed (`insert_durable` in a
//!   loop), against the same reader alone; the two runs alternate, 2 of
//!   each;
//! * the cost several-writer mode adds to `insert_durable` (a per-key
//!   publish lock: open, `flock`, unlock of `.ndoffload/locks/K.lock`)
//!   against an exclusive open (no per-key lock), 400 small entries per
//!   round, 5 rounds of each mode interleaved, medians compared.
//!
//! The processes are this bench binary run again with
//! `NDOFFLOAD_BENCH_ROLE` set.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::{DiskBackedStore, StoreBuilder};

const ENTRIES: usize = 64;
const ELEMS: usize = 8192; // 64 KiB of f64

fn secs() -> f64 {
    std::env::var("NDOFFLOAD_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

fn reader(dir: &Path) {
    let store = DiskBackedStore::open_read_only(dir).expect("open");
    let keys: Vec<String> = (0..ENTRIES).map(|i| format!("e{i}")).collect();
    let stop = Instant::now() + Duration::from_secs_f64(secs());
    let (mut reads, mut sum, mut x) = (0u64, 0.0f64, 0x9e37_79b9u64);
    let start = Instant::now();
    while Instant::now() < stop {
        if reads % 100 == 99 {
            store.refresh().expect("refresh");
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = &keys[(x % ENTRIES as u64) as usize];
        let h = store.get::<f64, Ix1>(k).expect("get");
        sum += h.read().expect("read").view().sum();
        reads += 1;
    }
    let s = start.elapsed().as_secs_f64();
    println!("reads={reads} secs={s} sum={sum}");
}

fn writer(dir: &Path) {
    let store = DiskBackedStore::open(dir).expect("open");
    let mut i = 0u64;
    while !dir.join("stop").exists() {
        let k = format!("e{}", i % ENTRIES as u64);
        store
            .insert_durable(&k, Array1::from_elem(ELEMS, i as f64))
            .expect("insert");
        i += 1;
    }
    println!("writes={i}");
}

fn spawn(role: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("exe"))
        .env("NDOFFLOAD_BENCH_ROLE", role)
        .env("NDOFFLOAD_BENCH_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn field(out: &str, name: &str) -> f64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Reads per second of one reader run, with or without a writer.
fn read_run(dir: &Path, with_writer: bool) -> (f64, f64) {
    let _ = std::fs::remove_file(dir.join("stop"));
    let w = with_writer.then(|| spawn("writer", dir));
    if w.is_some() {
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = spawn("reader", dir).wait_with_output().expect("reader");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join("stop"), b"").expect("stop");
    let writes = w.map_or(0.0, |w| {
        let o = w.wait_with_output().expect("writer");
        field(&String::from_utf8_lossy(&o.stdout), "writes")
    });
    (field(&text, "reads") / field(&text, "secs"), writes)
}

fn insert_round(dir: &Path, exclusive: bool, round: usize) -> f64 {
    let store = StoreBuilder::new(dir)
        .exclusive(exclusive)
        .open()
        .expect("open");
    let n = 400;
    let start = Instant::now();
    for i in 0..n {
        let k = format!("r{round}-{i}");
        store
            .insert_durable(&k, Array1::from_elem(128, i as f64))
            .expect("insert");
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if let (Ok(role), Ok(dir)) = (
        std::env::var("NDOFFLOAD_BENCH_ROLE"),
        std::env::var("NDOFFLOAD_BENCH_DIR"),
    ) {
        match role.as_str() {
            "reader" => reader(Path::new(&dir)),
            _ => writer(Path::new(&dir)),
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = root.path().join("reads");
    {
        let store = DiskBackedStore::open(&dir).expect("open");
        store
            .insert_batch((0..ENTRIES).map(|i| (format!("e{i}"), Array1::from_elem(ELEMS, 1.0))))
            .expect("fill");
    }
    let (mut alone, mut busy, mut writes) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..2 {
        alone.push(read_run(&dir, false).0);
        let (r, w) = read_run(&dir, true);
        busy.push(r);
        writes += w;
    }
    let (a, b) = (median(alone), median(busy));
    println!(
        "reader alone: {a:.0} reads/s; with a writer at full speed ({:.0} insert_durable/s): {b:.0} reads/s; ratio {:.2}",
        writes / (2.0 * secs()),
        b / a
    );
    let ins = root.path().join("inserts");
    let (mut excl, mut shared) = (Vec::new(), Vec::new());
    for round in 0..5 {
        excl.push(insert_round(&ins, true, 2 * round));
        shared.push(insert_round(&ins, false, 2 * round + 1));
    }
    let (e, s) = (median(excl), median(shared));
    println!(
        "insert_durable of 1 KiB: exclusive {:.1} us, several-writer mode {:.1} us; ratio {:.3} (overhead {:+.1}%)",
        e * 1e6,
        s * 1e6,
        s / e,
        (s / e - 1.0) * 100.0
    );
}
