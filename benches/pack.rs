//! Pack benchmarks: a plain program that prints ratios.
//!
//! (a) open + lookup + view of one entry, median over many repetitions,
//!     for packs of 1,000 and 1,000,000 entries (the file in page cache);
//! (b) writing 1,000,000 small arrays into a pack, against a raw
//!     sequential write + fsync of the same number of bytes measured in the
//!     same run (interleaved, each repetition started from the same memory
//!     state by writing and deleting a scratch file of the same size first).
//!
//! Run with `cargo bench --bench pack` (add `--features lz4,zstd` if you
//! like; compression is not used here). Set `PACK_BENCH_DIR` to choose the
//! directory (default: a temporary directory under the system's).
//! `PACK_BENCH_QUICK=1` shrinks the run for a smoke test; `PACK_BENCH_PART=a`
//! or `=b` runs one part only.
//!
//! Part (a) also times a control: 1,000 entries of arrays large enough
//! that the file is as large as the 1,000,000-entry pack.
//!
//! Figures on the project's 2-core VM (ext4 without a journal, file in page
//! cache for (a)), pack format version 2 (bucket directory); medians of two
//! runs while other work shared the machine:
//!
//! | | 1,000 entries (0.2 MB) | 1,000,000 entries (224 MB) | 1,000 entries (224 MB) |
//! |---|---|---|---|
//! | open + lookup + view | 10.5 us | 13.6-14.2 us | 15.6-15.7 us |
//! | the same plus dropping the reader (munmap, close) | 16.5-16.6 us | 20.8-21.2 us | 23.4-23.8 us |
//! | of which open | 6.4 us | 6.6-6.7 us | 6.7 us |
//! | of which open + entry (index, descriptor) | 10.1-10.2 us | 13.2-13.8 us | 12.6-12.7 us |
//! | lookup + view on an open reader | 1.5 us | 2.1-2.8 us | 1.6 us |
//!
//! Where the time goes: opening, mapping and unmapping the file and the one
//! page fault the view needs cost about 12 us of kernel time on this VM; the
//! pack's own work is the 4 KiB tail read at open and, at any entry count,
//! two positioned reads (16 bytes of the bucket directory, then one bucket
//! of 128-256 bytes). The lookup makes the same reads at 1,000 and
//! 1,000,000 entries; what remains of the difference comes with the file's
//! size, not its entry count (the 1,000-entry control pack as large as the
//! million-entry one is as slow): in `perf`, the fault of a fresh map of the
//! large file allocates and clears a page table, which the small file's
//! does not, and the large file's page-cache metadata and index pages are
//! cold in the CPU caches. (Format version 1, with fence levels, measured
//! 10.3-11 us and 14.7-16.6 us.)
//!
//! Writing 1,000,000 arrays of 256 `f32` (1.18 GB file): 0.95-1.09x the
//! speed of a raw write + fsync of the same number of bytes (median of 5
//! rounds, five separate runs; 1.09x with format version 2), 0.78-0.96x of
//! a raw write of the payload bytes alone; with the same arrays under
//! shuffled string keys, 0.66-0.91x (0.79x with version 2).

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::pack::{PackReader, PackWriter};

fn pct(v: &[Duration], p: f64) -> Duration {
    // v is sorted
    v[((v.len() - 1) as f64 * p) as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: u64) -> String {
    format!("tile_{i:08}")
}

fn build(path: &Path, n: u64, elems: usize) {
    let mut w = PackWriter::create(path).unwrap();
    let a = Array1::<f32>::from_iter((0..elems).map(|x| x as f32));
    for i in 0..n {
        w.append(key(i).as_str(), &a).unwrap();
    }
    w.finish().unwrap();
}

fn warm(path: &Path) {
    // Bring the whole file into the page cache.
    let _ = black_box(fs::read(path).unwrap().len());
}

struct Lookup {
    /// open + lookup + view, until the view is in hand.
    view: Vec<Duration>,
    /// The same plus dropping the reader (munmap + close).
    cycle: Vec<Duration>,
    /// lookup + view on a reader that stays open.
    open_reader: Vec<Duration>,
    /// Phases of `view`: open alone, then open + `entry` (index reads and
    /// the descriptor, whose page the first touch of the map faults in).
    open: Vec<Duration>,
    entry: Vec<Duration>,
    /// Size of the pack file.
    bytes: u64,
}

fn lookup_bench(dir: &Path, n: u64, elems: usize, reps: usize) -> Lookup {
    let path = dir.join(format!("lookup-{n}.pack"));
    build(&path, n, elems);
    warm(&path);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n);
    let keys: Vec<String> = (0..reps).map(|_| key(rng.next() % n)).collect();
    // A few untimed rounds first.
    for k in keys.iter().take(100) {
        let r = PackReader::open(&path).unwrap();
        black_box(r.view::<f32, Ix1>(k.as_str()).unwrap()[3]);
    }
    let mut out = Lookup {
        view: Vec::with_capacity(reps),
        cycle: Vec::with_capacity(reps),
        open_reader: Vec::with_capacity(reps),
        open: Vec::with_capacity(reps),
        entry: Vec::with_capacity(reps),
        bytes: fs::metadata(&path).unwrap().len(),
    };
    for k in &keys {
        let t = Instant::now();
        let r = PackReader::open(&path).unwrap();
        out.open.push(t.elapsed());
        let e = r.entry(k.as_str()).unwrap();
        out.entry.push(t.elapsed());
        let v = e.single().unwrap().view::<f32, Ix1>().unwrap();
        black_box(v[3]);
        out.view.push(t.elapsed());
        drop(r);
        out.cycle.push(t.elapsed());
    }
    let r = PackReader::open(&path).unwrap();
    for k in &keys {
        let t = Instant::now();
        let v = r.view::<f32, Ix1>(k.as_str()).unwrap();
        black_box(v[3]);
        out.open_reader.push(t.elapsed());
    }
    drop(r);
    fs::remove_file(&path).unwrap();
    out.view.sort();
    out.cycle.sort();
    out.open_reader.sort();
    out.open.sort();
    out.entry.sort();
    out
}

fn scratch(dir: &Path, bytes: u64) {
    // Touch the same amount of memory as the timed write, then give it back,
    // so each timed write starts from the same state.
    let p = dir.join("scratch.bin");
    let mut f = File::create(&p).unwrap();
    let buf = vec![7u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    drop(f);
    fs::remove_file(&p).unwrap();
}

fn raw_write(dir: &Path, bytes: u64) -> Duration {
    let p = dir.join("raw.bin");
    let buf = vec![1u8; 1 << 20];
    let t = Instant::now();
    let mut f = File::create(&p).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    drop(f);
    let d = t.elapsed();
    fs::remove_file(&p).unwrap();
    d
}

fn pack_write(
    dir: &Path,
    n: u64,
    arrays: &[Array1<f32>],
    keys: Option<&[String]>,
) -> (Duration, u64) {
    let p = dir.join("write.pack");
    let t = Instant::now();
    let mut w = PackWriter::create(&p).unwrap();
    for i in 0..n {
        let a = &arrays[(i % arrays.len() as u64) as usize];
        match keys {
            None => w.append(i, a).unwrap(),
            Some(k) => w.append(k[i as usize].as_str(), a).unwrap(),
        }
    }
    w.finish().unwrap();
    let d = t.elapsed();
    let len = fs::metadata(&p).unwrap().len();
    fs::remove_file(&p).unwrap();
    (d, len)
}

fn main() {
    let quick = std::env::var_os("PACK_BENCH_QUICK").is_some();
    let tmp;
    let dir = match std::env::var_os("PACK_BENCH_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    let big: u64 = if quick { 20_000 } else { 1_000_000 };
    let reps = if quick { 2_000 } else { 20_000 };
    let part = std::env::var("PACK_BENCH_PART").unwrap_or_default();
    if part != "b" {
        lookup_part(&dir, big, reps);
    }
    if part != "a" {
        write_part(&dir, big, quick);
    }
}

fn lookup_part(dir: &Path, big: u64, reps: usize) {
    println!(
        "== (a) open + lookup + view of one entry (file in page cache), {reps} random keys =="
    );
    let small = lookup_bench(dir, 1_000, 16, reps);
    let large = lookup_bench(dir, big, 16, reps);
    // Control: 1,000 entries in a file as large as the big pack (arrays of
    // about 1/1000 of its size), to tell entry-count effects from file-size
    // effects (page tables and page-cache metadata of a large mapping).
    let control = lookup_bench(dir, 1_000, (large.bytes / 1_000 / 4) as usize, reps);
    for (n, l) in [(1_000, &small), (big, &large), (1_000, &control)] {
        println!(
            "{n:>9} entries, {:>4} MB: open+lookup+view median {:6.2} us (p90 {:6.2}) | with close (munmap) {:6.2} us (p90 {:6.2}) | lookup+view on an open reader {:5.2} us",
            l.bytes / 1_000_000,
            us(l.view[reps / 2]),
            us(pct(&l.view, 0.9)),
            us(l.cycle[reps / 2]),
            us(pct(&l.cycle, 0.9)),
            us(l.open_reader[reps / 2]),
        );
        println!(
            "{:>9}                   phases (medians): open {:5.2} us, open+entry {:5.2} us",
            "",
            us(l.open[reps / 2]),
            us(l.entry[reps / 2]),
        );
    }
    println!(
        "ratio {big} / 1000 entries, median open+lookup+view: {:.2}x (with close {:.2}x)",
        large.view[reps / 2].as_secs_f64() / small.view[reps / 2].as_secs_f64(),
        large.cycle[reps / 2].as_secs_f64() / small.cycle[reps / 2].as_secs_f64(),
    );
}

fn write_part(dir: &Path, big: u64, quick: bool) {
    println!("== (b) writing {big} small arrays vs raw sequential write + fsync ==");
    let elems: usize = std::env::var("PACK_BENCH_ELEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let arrays: Vec<Array1<f32>> = (0..16)
        .map(|k| Array1::from_iter((0..elems).map(|x| (x * 31 + k) as f32)))
        .collect();
    let payload = big * (elems as u64) * 4;
    let rounds = if quick { 2 } else { 5 };
    let (mut ratios_file, mut ratios_payload) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        scratch(dir, payload + payload / 2);
        let (tp, file_len) = pack_write(dir, big, &arrays, None);
        scratch(dir, payload + payload / 2);
        let tr = raw_write(dir, file_len);
        scratch(dir, payload + payload / 2);
        let trp = raw_write(dir, payload);
        let rf = tr.as_secs_f64() / tp.as_secs_f64();
        let rp = trp.as_secs_f64() / tp.as_secs_f64();
        println!(
            "round {round}: pack {:.3} s ({file_len} bytes, {:.2} GB/s) | raw same bytes {:.3} s -> {rf:.2}x | raw payload only ({payload} bytes) {:.3} s -> {rp:.2}x",
            tp.as_secs_f64(),
            file_len as f64 / tp.as_secs_f64() / 1e9,
            tr.as_secs_f64(),
            trp.as_secs_f64(),
        );
        ratios_file.push(rf);
        ratios_payload.push(rp);
    }
    // The same with string keys in random order: duplicate detection then
    // goes through a hash table (integer keys in increasing order skip it).
    let mut rng = Rng(42);
    let mut keys: Vec<String> = (0..big).map(key).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let mut shuffled = Vec::new();
    for _ in 0..rounds.min(3) {
        scratch(dir, payload + payload / 2);
        let (tp, file_len) = pack_write(dir, big, &arrays, Some(&keys));
        scratch(dir, payload + payload / 2);
        let tr = raw_write(dir, file_len);
        shuffled.push(tr.as_secs_f64() / tp.as_secs_f64());
        println!(
            "shuffled string keys: pack {:.3} s ({file_len} bytes) | raw same bytes {:.3} s -> {:.2}x",
            tp.as_secs_f64(),
            tr.as_secs_f64(),
            shuffled.last().unwrap()
        );
    }
    shuffled.sort_by(f64::total_cmp);
    ratios_file.sort_by(f64::total_cmp);
    ratios_payload.sort_by(f64::total_cmp);
    println!(
        "median speed ratio pack/raw over {rounds} rounds: {:.2}x of a raw write of the same file bytes, {:.2}x of a raw write of the payload bytes only ({elems} f32 per array)",
        ratios_file[rounds / 2],
        ratios_payload[rounds / 2]
    );
    println!(
        "median speed ratio with shuffled string keys: {:.2}x of a raw write of the same file bytes",
        shuffled[shuffled.len() / 2]
    );
}
