//! Streaming a data set three times the memory budget through a store.
//!
//! ```text
//! cargo bench --bench budget                    # spill vs raw write+fsync, order-controlled blocks (default store)
//! NDOFFLOAD_BENCH_SYNC=1 cargo bench --bench budget   # the same, synchronous store
//! cargo bench --bench budget -- --attribute      # where the spill time goes (held arrays, second file)
//! cargo bench --bench budget -- --rss           # one pass, for /usr/bin/time -v
//! cargo bench --bench budget -- --pipeline      # compute/I-O overlap: compute only, raw I/O, sync and overlapped store
//! cargo bench --bench budget -- --pipeline-rss  # one overlapped pipeline, for /usr/bin/time -v
//! cargo bench --bench budget -- --read          # cold sequential read: raw, store, store + prefetching (root: drops caches)
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

/// As [`raw`], but holding the arrays the budget holds (a ring of
/// `held` arrays; the oldest is written when a new one is made), and, with
/// `meta`, writing a small second file with its own `fsync` per spill as
/// the pair protocol does: the attribution of the store's extra time.
fn raw_held(dir: &Path, template: &Array1<f32>, count: usize, held: usize, meta: bool) -> f64 {
    use ndarray_npy::WritableElement;
    let t = Instant::now();
    let mut ring = std::collections::VecDeque::new();
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        ring.push_back(a);
        if ring.len() > held {
            let a = ring.pop_front().unwrap();
            let j = i - held;
            let mut f = File::create(dir.join(format!("a{j:04}.raw"))).unwrap();
            f32::write_slice(a.as_slice().unwrap(), &mut f).unwrap();
            f.sync_all().unwrap();
            if meta {
                let mut m = File::create(dir.join(format!("a{j:04}.meta"))).unwrap();
                m.write_all(b"{\"shape\": [4194304], \"dtype\": \"float32\"}")
                    .unwrap();
                m.sync_all().unwrap();
            }
        }
    }
    t.elapsed().as_secs_f64()
}

/// The fixed CPU work of a tile: `passes` multiply-add passes over it.
fn work(a: &Array1<f32>, passes: usize) -> f32 {
    let mut acc = 0f32;
    for p in 0..passes {
        let k = 1.0 + p as f32 * 1e-3;
        acc += a.iter().fold(0f32, |s, &x| s.mul_add(k, x));
    }
    std::hint::black_box(acc)
}

/// Times of one pipeline run, in seconds.
#[derive(Clone, Copy, Default)]
struct Phases {
    /// Making, working on and inserting the tiles.
    insert: f64,
    /// Of which inside `insert` (evictions; waits for the writers).
    in_insert: f64,
    /// Reading the tiles back in order and summing them.
    read: f64,
    /// Of which getting and mapping (`get`, `read`, prefetch).
    in_get: f64,
    /// Evictions (spills, and releases of mapped tiles).
    spills: u64,
    /// CPU time of the process (all threads, user + system) over the run.
    cpu: f64,
    /// Minor page faults of the process over the run.
    faults: u64,
}

/// CPU time of the process so far (user + system, all threads), seconds
/// (from `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_time() -> f64 {
    let s = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // utime and stime are the 14th and 15th fields, the 12th and 13th after
    // the command name.
    let f: Vec<f64> = s
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    f.iter().sum::<f64>() / 100.0
}

impl Phases {
    fn total(&self) -> f64 {
        self.insert + self.read
    }
}

/// One pipeline run: make each tile, work on it, insert it; then read every
/// tile back in order and sum it. `overlap`: write-behind and prefetching
/// on. The store is dropped (its remaining entries written) untimed.
fn pipeline(
    dir: &Path,
    budget: u64,
    template: &Array1<f32>,
    count: usize,
    passes: usize,
    overlap: bool,
) -> Phases {
    let mut b = StoreBuilder::new(dir).memory_budget(ByteSize::new(budget));
    b = match overlap {
        true => b.write_behind(1, ByteSize::new(IN_FLIGHT)),
        false => b.write_behind(0, 0u64),
    };
    let store = b.open().unwrap();
    let mut ph = Phases::default();
    let t = Instant::now();
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        work(&a, passes);
        let ti = Instant::now();
        store.insert(format!("a{i:04}"), a).unwrap();
        ph.in_insert += ti.elapsed().as_secs_f64();
    }
    ph.insert = t.elapsed().as_secs_f64();
    let names: Vec<String> = (0..count).map(|i| format!("a{i:04}")).collect();
    let t = Instant::now();
    let mut in_get = 0f64;
    let read = |n: &String, i: usize| {
        let tg = Instant::now();
        let h = store.get::<f32, Ix1>(n).unwrap();
        let g = h.read().unwrap();
        let got = tg.elapsed().as_secs_f64();
        assert_eq!(g.view()[0], i as f32);
        std::hint::black_box(g.view().fold(0f32, |s, &x| s + x));
        got
    };
    if overlap {
        let mut it = store.prefetching(names.iter(), 2);
        let mut i = 0;
        loop {
            let tg = Instant::now();
            let Some(n) = it.next() else { break };
            in_get += tg.elapsed().as_secs_f64();
            in_get += read(n, i);
            i += 1;
        }
    } else {
        for (i, n) in names.iter().enumerate() {
            in_get += read(n, i);
        }
    }
    ph.read = t.elapsed().as_secs_f64();
    ph.in_get = in_get;
    let st = store.stats();
    ph.spills = st.evictions;
    drop(store);
    ph
}

/// Bytes the overlapped pipeline lets the writers hold in flight.
const IN_FLIGHT: u64 = 64 << 20;

/// The compute alone (no store, no budget): the same tiles and work.
fn compute_only(template: &Array1<f32>, count: usize, passes: usize) -> Phases {
    let mut ph = Phases::default();
    let t = Instant::now();
    let mut tiles = Vec::with_capacity(count);
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        work(&a, passes);
        tiles.push(a[0]);
        drop(a);
    }
    ph.insert = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut a = template.clone();
    for (i, &v) in tiles.iter().enumerate() {
        a[0] = v;
        assert_eq!(a[0], i as f32);
        std::hint::black_box(a.fold(0f32, |s, &x| s + x));
    }
    ph.read = t.elapsed().as_secs_f64();
    ph
}

/// The I/O alone: the spilled tiles made and written with `write` + `fsync`,
/// then the bytes of every spilled tile read back in order (page cache as the
/// store finds it).
fn raw_io(dir: &Path, template: &Array1<f32>, count: usize, spilled: usize) -> Phases {
    use std::io::Read;
    let mut ph = Phases::default();
    let t = Instant::now();
    raw(dir, template, count, spilled);
    ph.insert = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..spilled {
        let mut f = File::open(dir.join(format!("a{i:04}.raw"))).unwrap();
        while f.read(&mut buf).unwrap() > 0 {}
    }
    ph.read = t.elapsed().as_secs_f64();
    ph.spills = spilled as u64;
    ph
}

/// The number of work passes that takes about as long as writing one tile
/// (`write` + `fsync`), as the pipeline's premise asks: medians of 5 of a
/// tile written and of 4 passes over a fresh copy, after one of each
/// untimed.
fn calibrate(dir: &Path, template: &Array1<f32>) -> (usize, f64, f64) {
    use ndarray_npy::WritableElement;
    let mut w = Vec::new();
    let mut c = Vec::new();
    for k in 0..6 {
        let t = Instant::now();
        let mut f = File::create(dir.join(format!("calibrate{k}"))).unwrap();
        f32::write_slice(template.as_slice().unwrap(), &mut f).unwrap();
        f.sync_all().unwrap();
        w.push(t.elapsed().as_secs_f64());
        let a = template.clone();
        let t = Instant::now();
        work(&a, 4);
        c.push(t.elapsed().as_secs_f64() / 4.0);
    }
    let med = |v: &mut Vec<f64>| {
        v.remove(0);
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (w, c) = (med(&mut w), med(&mut c));
    (((w / c).round() as usize).max(1), w, c)
}

fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// A sequential read pass over `count` offloaded entries with a cold page
/// cache: without prefetch, with `prefetching(.., ahead)`, and a raw read of
/// the same files (`cat` speed), interleaved raw, plain, prefetch, prefetch,
/// plain, raw.
fn read_pass(count: usize, array_mib: usize, template: &Array1<f32>) {
    use std::io::Read;
    let dir = bench_dir();
    {
        let store = StoreBuilder::new(dir.path()).open().unwrap();
        for i in 0..count {
            let mut a = template.clone();
            a[0] = i as f32;
            store.insert_durable(format!("a{i:04}"), a).unwrap();
            store.offload(format!("a{i:04}")).unwrap();
        }
        store.close().unwrap();
    }
    let names: Vec<String> = (0..count).map(|i| format!("a{i:04}")).collect();
    let total_mib = (count * array_mib) as f64;
    let ahead = env("NDOFFLOAD_BENCH_AHEAD", 4);
    let mut rates: [Vec<f64>; 3] = Default::default();
    for kind in [0, 1, 2, 2, 1, 0, 0, 1, 2] {
        if !drop_caches() {
            println!("cannot drop caches (needs root): the read pass is not cold");
        }
        let t = Instant::now();
        if kind == 0 {
            let mut buf = vec![0u8; 1 << 20];
            for n in &names {
                let mut f = File::open(dir.path().join(format!("{n}.npy"))).unwrap();
                while f.read(&mut buf).unwrap() > 0 {}
            }
        } else {
            let store = StoreBuilder::new(dir.path()).open().unwrap();
            let sum = |n: &String| {
                let h = store.get::<f32, Ix1>(n).unwrap();
                let g = h.read().unwrap();
                std::hint::black_box(g.view().fold(0f32, |s, &x| s + x));
            };
            if kind == 2 {
                store.prefetching(names.iter(), ahead).for_each(sum);
            } else {
                names.iter().for_each(sum);
            }
        }
        let rate = total_mib / t.elapsed().as_secs_f64();
        println!(
            "  pass {}: {rate:.0} MiB/s",
            [
                "raw read",
                "store without prefetch",
                "store with prefetching"
            ][kind]
        );
        rates[kind].push(rate);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (r, p, q) = (med(&mut rates[0]), med(&mut rates[1]), med(&mut rates[2]));
    println!(
        "cold sequential read of {total_mib:.0} MiB ({count} entries): raw read {r:.0} MiB/s, store without prefetch {p:.0} MiB/s ({:.3}x raw), with prefetching({ahead}) {q:.0} MiB/s ({:.3}x raw) (medians of 3)",
        p / r,
        q / r
    );
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

/// Minor page faults of the process so far.
fn minor_faults() -> u64 {
    let s = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): minflt is
    // the 10th field overall, the 8th after the closing parenthesis.
    s.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Primes the machine before a block: writes `bytes` to a scratch file with
/// one `fsync`, in 16 MiB writes, so that the page cache and the disk are in
/// the same state for the reference and the crate.
/// Waits until the file system holding `dir` has written everything
/// (`syncfs`), then a second.
fn settle(dir: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(d) = File::open(dir) {
        let _ = rustix::fs::syncfs(&d);
    }
    std::thread::sleep(Duration::from_secs(1));
}

fn prime(dir: &Path, bytes: u64) {
    let buf = vec![1u8; 16 << 20];
    let mut f = File::create(dir.join("scratch")).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// The spill phase measured with the order-controlled method: each block is
/// primed by a scratch write of four times the spilled size (this VM's
/// disk absorbs a first burst of about a gibibyte several times faster
/// than it writes after it), then runs reference, store, store, reference
/// (even blocks) or store, reference, reference, store (odd blocks: the
/// first pass of a block is often the fastest on this VM, whatever runs
/// it), each in a new directory, each pass started once the previous
/// one's writes are on disk (`syncfs`: a store's untimed close writes the
/// entries it held); a block's ratio is the reference's total time over
/// the store's (store throughput / reference throughput), and the run's
/// overall ratio the same over all blocks. The store is the
/// default one, or with `NDOFFLOAD_BENCH_SYNC=1` the synchronous one
/// (`write_behind(0, _)`). Files are deleted only after the block, then a
/// pause.
fn spill_blocks(budget_mib: usize, array_mib: usize, count: usize, template: &Array1<f32>) {
    let budget = (budget_mib as u64) << 20;
    let spilled = count - budget_mib / array_mib;
    let spilled_mib = (spilled * array_mib) as f64;
    let blocks = env("NDOFFLOAD_BENCH_REPS", 5);
    let default = env("NDOFFLOAD_BENCH_SYNC", 0) == 0;
    let what = match default {
        true => "default store (spills of these arrays written behind)",
        false => "synchronous store (write_behind(0, _))",
    };
    let mut ratios = Vec::new();
    let (mut all_raw, mut all_store) = (0f64, 0f64);
    for block in 0..blocks {
        // Which passes are the reference's.
        let is_raw = |i: usize| (i == 0 || i == 3) == (block % 2 == 0);
        let scratch = bench_dir();
        prime(scratch.path(), 4 * (spilled * array_mib) as u64 * (1 << 20));
        settle(scratch.path());
        let dirs: Vec<_> = (0..4).map(|_| bench_dir()).collect();
        let mut t = [0f64; 4];
        let mut faults = [0u64; 4];
        for (i, d) in dirs.iter().enumerate() {
            let f0 = minor_faults();
            t[i] = if is_raw(i) {
                raw(d.path(), template, count, spilled)
            } else {
                through_store_insert(d.path(), budget, template, count, default)
            };
            faults[i] = minor_faults() - f0;
            // A store's close (not timed) writes the entries it held; the
            // next pass starts once that is on disk, as after a reference.
            settle(d.path());
        }
        drop((dirs, scratch));
        File::open("target").and_then(|d| d.sync_all()).ok();
        std::thread::sleep(Duration::from_secs(2));
        let (r, s): (Vec<usize>, Vec<usize>) = (0..4).partition(|&i| is_raw(i));
        let (tr, ts) = (t[r[0]] + t[r[1]], t[s[0]] + t[s[1]]);
        all_raw += tr;
        all_store += ts;
        let ratio = tr / ts;
        ratios.push(ratio);
        let order = match block % 2 {
            0 => "ref, store, store, ref",
            _ => "store, ref, ref, store",
        };
        println!(
            "block {block}: raw {:.0} / {:.0} MiB/s, {what} {:.0} / {:.0} MiB/s (order {order}); ratio {ratio:.3}; minor faults raw {} / {}, store {} / {}",
            spilled_mib / t[r[0]],
            spilled_mib / t[r[1]],
            spilled_mib / t[s[0]],
            spilled_mib / t[s[1]],
            faults[r[0]],
            faults[r[1]],
            faults[s[0]],
            faults[s[1]],
        );
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!(
        "spill of {spilled} x {array_mib} MiB through a {budget_mib} MiB budget, {what}: ratio store/raw write+fsync throughput over all blocks {:.3}, median of blocks {:.3} (min {:.3}, max {:.3}, {} blocks)",
        all_raw / all_store,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len()
    );
}

/// The insert phase alone (what spills), in seconds, up to the end of the
/// last spill: with `default`, the default options (these arrays of a
/// mebibyte and more are written behind; the spills still in flight when
/// the last insert returns are waited for), otherwise `write_behind(0, _)`
/// (every spill written by the insert that evicts).
fn through_store_insert(
    dir: &Path,
    budget: u64,
    template: &Array1<f32>,
    count: usize,
    default: bool,
) -> f64 {
    let mut b = StoreBuilder::new(dir).memory_budget(ByteSize::new(budget));
    if !default {
        b = b.write_behind(0, 0u64);
    }
    let store = b.open().unwrap();
    let t = Instant::now();
    for i in 0..count {
        let mut a = template.clone();
        a[0] = i as f32;
        store.insert(format!("a{i:04}"), a).unwrap();
    }
    while store.stats().bytes_in_flight > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let s = t.elapsed().as_secs_f64();
    // Not timed: the close writes the entries still in RAM.
    drop(store);
    s
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
    if args.iter().any(|a| a == "--rss") {
        let dir = bench_dir();
        let r = through_store(dir.path(), budget, &template, count);
        println!(
            "one pass: {count} x {array_mib} MiB through a {budget_mib} MiB budget; insert {:.2} s, read {:.2} s, {} evictions, {} over-budget events",
            r.insert_s, r.read_s, r.evictions, r.over_budget
        );
        return;
    }
    let spilled = count - budget_mib / array_mib;
    if args.iter().any(|a| a == "--spill-once") {
        let dir = bench_dir();
        let s = through_store_insert(dir.path(), budget, &template, count, true);
        println!("store insert (spills {spilled}): {s:.3} s");
        return;
    }
    if args.iter().any(|a| a == "--raw-once") {
        let dir = bench_dir();
        let s = raw(dir.path(), &template, count, spilled);
        println!("raw write+fsync of {spilled}: {s:.3} s");
        return;
    }
    if args.iter().any(|a| a == "--read") {
        let count = env("NDOFFLOAD_BENCH_READ_MIB", 1024) / array_mib;
        read_pass(count, array_mib, &template);
        return;
    }
    let passes = env("NDOFFLOAD_BENCH_PASSES", 8);
    if args.iter().any(|a| a == "--pipeline-rss") {
        let dir = bench_dir();
        let s = pipeline(dir.path(), budget, &template, count, passes, true).total();
        println!(
            "overlapped pipeline: {s:.2} s; peak RSS {:?} KiB; bound budget + in flight + 2 arrays + 32 MiB = {} KiB",
            peak_rss_kib(),
            (budget + IN_FLIGHT + 2 * (array_mib as u64) * (1 << 20) + (32 << 20)) >> 10
        );
        return;
    }
    if args.iter().any(|a| a == "--pipeline") {
        let cal = bench_dir();
        let (auto, w, c) = calibrate(cal.path(), &template);
        drop(cal);
        let passes = env("NDOFFLOAD_BENCH_PASSES", auto);
        println!(
            "one tile: write+fsync {:.1} ms, one work pass {:.1} ms; {passes} passes per tile ({:.1} ms)",
            w * 1e3,
            c * 1e3,
            c * passes as f64 * 1e3
        );
        let mut ratios = [Vec::new(), Vec::new()];
        for block in 0..env("NDOFFLOAD_BENCH_REPS", 3) {
            let scratch = bench_dir();
            prime(scratch.path(), (spilled * array_mib) as u64 * (1 << 20));
            let mut t = [Phases::default(); 4];
            // compute, raw I/O, sync store, overlapped store, then reversed.
            for k in [0, 1, 2, 3, 3, 2, 1, 0] {
                let d = bench_dir();
                let (c0, f0) = (cpu_time(), minor_faults());
                let mut p = match k {
                    0 => compute_only(&template, count, passes),
                    1 => raw_io(d.path(), &template, count, spilled),
                    2 => pipeline(d.path(), budget, &template, count, passes, false),
                    _ => pipeline(d.path(), budget, &template, count, passes, true),
                };
                (p.cpu, p.faults) = (cpu_time() - c0, minor_faults() - f0);
                let s = &mut t[k];
                s.insert += p.insert / 2.0;
                s.in_insert += p.in_insert / 2.0;
                s.read += p.read / 2.0;
                s.in_get += p.in_get / 2.0;
                s.spills = p.spills;
                s.cpu += p.cpu / 2.0;
                s.faults += p.faults / 2;
            }
            let bound = t[0].total().max(t[1].total());
            println!(
                "block {block}: compute only {:.2} s, raw I/O {:.2} s, synchronous store {:.2} s ({:.3}x max), overlapped store {:.2} s ({:.3}x max)",
                t[0].total(), t[1].total(), t[2].total(), t[2].total() / bound, t[3].total(), t[3].total() / bound
            );
            for (k, what) in ["compute", "raw I/O", "sync store", "overlapped"]
                .iter()
                .enumerate()
            {
                println!(
                    "  {what:10}: insert phase {:.2} s (in insert {:.2} s), read phase {:.2} s (in get {:.2} s), {} evictions; CPU {:.2} s, {} minor faults",
                    t[k].insert, t[k].in_insert, t[k].read, t[k].in_get, t[k].spills, t[k].cpu, t[k].faults
                );
            }
            ratios[0].push(t[2].total() / bound);
            ratios[1].push(t[3].total() / bound);
            drop(scratch);
            std::thread::sleep(Duration::from_secs(2));
        }
        for (r, what) in ratios.iter_mut().zip(["synchronous", "overlapped"]) {
            r.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{what} store / max(compute, raw I/O): median {:.3} (min {:.3}, max {:.3}, {} blocks)",
                r[r.len() / 2],
                r[0],
                r[r.len() - 1],
                r.len()
            );
        }
        return;
    }
    if args.iter().any(|a| a == "--attribute") {
        let held = budget_mib / array_mib;
        for block in 0..env("NDOFFLOAD_BENCH_REPS", 3) {
            let scratch = bench_dir();
            prime(scratch.path(), (spilled * array_mib) as u64 * (1 << 20));
            let mut t = Vec::new();
            for k in [0, 1, 2, 3, 3, 2, 1, 0] {
                let d = bench_dir();
                t.push(match k {
                    0 => raw(d.path(), &template, count, spilled),
                    1 => raw_held(d.path(), &template, count, held, false),
                    2 => raw_held(d.path(), &template, count, held, true),
                    // The synchronous store: what the attribution is of.
                    _ => through_store_insert(d.path(), budget, &template, count, false),
                });
            }
            let r = |k: usize| (t[0] + t[7]) / (t[k] + t[7 - k]);
            println!(
                "block {block}: relative to raw write+fsync: holding {held} arrays {:.3}, + a fsynced second file per spill {:.3}, store {:.3}",
                r(1), r(2), r(3)
            );
            drop(scratch);
            std::thread::sleep(Duration::from_secs(2));
        }
        return;
    }
    spill_blocks(budget_mib, array_mib, count, &template);
}
