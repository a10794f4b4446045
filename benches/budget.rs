//! Streaming a data set three times the memory budget through a store.
//!
//! ```text
//! cargo bench --bench budget                    # throughput vs raw write+fsync
//! cargo bench --bench budget -- --rss           # one pass, for /usr/bin/time -v
//! ```
//!
//! Budget 256 MiB, arrays of 16 MiB (f32), 48 arrays (768 MiB): insert all
//! (least-recently-used arrays spill to disk), then read all back in
//! insertion order. The raw reference writes the same 48 x 16 MiB with
//! `write` + `fsync` per file, in the same run. Sizes can be changed with
//! `NDOFFLOAD_BENCH_BUDGET_MIB`, `NDOFFLOAD_BENCH_ARRAY_MIB` and
//! `NDOFFLOAD_BENCH_FACTOR`.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::{ByteSize, StoreBuilder};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("NDOFFLOAD_BENCH_DIR").unwrap_or_else(|_| "target".into());
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

struct Run {
    insert_s: f64,
    read_s: f64,
    evictions: u64,
    over_budget: u64,
}

fn through_store(dir: &Path, budget: u64, template: &Array1<f32>, count: usize) -> Run {
    let store = StoreBuilder::new(dir)
        .memory_budget(ByteSize::new(budget))
        .open()
        .unwrap();
    let t = Instant::now();
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        store.insert(format!("a{i:04}"), a).unwrap();
    }
    let insert_s = t.elapsed().as_secs_f64();
    if std::env::var("NDOFFLOAD_BENCH_VERBOSE").is_ok() {
        eprintln!(
            "after insert: peak RSS {:?} KiB, resident {}",
            peak_rss_kib(),
            store.stats().bytes_resident
        );
    }
    let t = Instant::now();
    for i in 0..count {
        let h = store.get::<f32, Ix1>(format!("a{i:04}")).unwrap();
        let g = h.read().unwrap();
        assert_eq!(g.view()[0], i as f32);
        std::hint::black_box(g.view().sum());
    }
    let read_s = t.elapsed().as_secs_f64();
    let st = store.stats();
    Run {
        insert_s,
        read_s,
        evictions: st.evictions,
        over_budget: st.over_budget_events,
    }
}

/// Raw reference for the insert phase: the same arrays made the same way,
/// and the `spilled` of them that the store must spill written with one
/// `write` + `fsync` each.
fn raw(dir: &Path, template: &Array1<f32>, count: usize, spilled: usize) -> f64 {
    use ndarray_npy::WritableElement;
    let t = Instant::now();
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        if i < spilled {
            let mut f = File::create(dir.join(format!("a{i:04}.raw"))).unwrap();
            f32::write_slice(a.as_slice().unwrap(), &mut f).unwrap();
            f.flush().unwrap();
            f.sync_all().unwrap();
        }
    }
    t.elapsed().as_secs_f64()
}

fn peak_rss_kib() -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let budget_mib = env("NDOFFLOAD_BENCH_BUDGET_MIB", 256);
    let array_mib = env("NDOFFLOAD_BENCH_ARRAY_MIB", 16);
    let factor = env("NDOFFLOAD_BENCH_FACTOR", 3);
    let count = budget_mib * factor / array_mib;
    let budget = (budget_mib as u64) << 20;
    let template = Array1::<f32>::from_shape_fn(array_mib * (1 << 20) / 4, |i| (i % 977) as f32);
    let total_mib = (count * array_mib) as f64;
    if args.iter().any(|a| a == "--rss") {
        let dir = bench_dir();
        let r = through_store(dir.path(), budget, &template, count);
        println!(
            "one pass: {count} x {array_mib} MiB through a {budget_mib} MiB budget; insert {:.2} s, read {:.2} s, {} evictions, {} over-budget events",
            r.insert_s, r.read_s, r.evictions, r.over_budget
        );
        return;
    }
    let reps = env("NDOFFLOAD_BENCH_REPS", 3);
    // What the store must spill while inserting: all but what fits.
    let spilled = count - budget_mib / array_mib;
    let mut ratios = Vec::new();
    for rep in 0..reps {
        // Alternate the order so neither side always runs on a warmer
        // machine; files are deleted only after both ran, and the deletions
        // (this file system discards freed blocks) settle before the next
        // repetition.
        let (raw_dir, store_dir) = (bench_dir(), bench_dir());
        let (raw_s, r) = if rep % 2 == 0 {
            let raw_s = raw(raw_dir.path(), &template, count, spilled);
            (
                raw_s,
                through_store(store_dir.path(), budget, &template, count),
            )
        } else {
            let r = through_store(store_dir.path(), budget, &template, count);
            (raw(raw_dir.path(), &template, count, spilled), r)
        };
        drop((raw_dir, store_dir));
        File::open("target").and_then(|d| d.sync_all()).ok();
        std::thread::sleep(Duration::from_secs(3));
        let spilled_mib = (spilled * array_mib) as f64;
        let raw_rate = spilled_mib / raw_s;
        let ours_rate = spilled_mib / r.insert_s;
        ratios.push(ours_rate / raw_rate);
        println!(
            "rep {rep}: {spilled_mib:.0} MiB spilled; raw write+fsync {raw_rate:.0} MiB/s, store spill {ours_rate:.0} MiB/s, ratio {:.3} ({} evictions, {} over budget); read back {:.0} MiB/s",
            ours_rate / raw_rate,
            r.evictions,
            r.over_budget,
            total_mib / r.read_s
        );
    }
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "streaming {total_mib:.0} MiB through a {budget_mib} MiB budget: median ratio store/raw write throughput {:.3}",
        ratios[ratios.len() / 2]
    );
}
