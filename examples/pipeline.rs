//! A synthetic point-cloud pipeline under a memory budget.
//!
//! Generates tiles of points (xyz, f64) and intensities (u16)
//! deterministically, stores each tile under a memory budget that holds only
//! a fraction of the data set (least-recently-used tiles spill to disk),
//! processes every tile (bounding box, mean intensity, voxel downsample) and
//! stores the results. Then it reopens the store, as a later process would,
//! and checks every tile against the checksum recorded when it was written.
//!
//! ```text
//! cargo run --release --example pipeline
//! cargo run --release --example pipeline -- --dir /data/run1 --budget 1GiB --tiles 200 --points 1000000
//! ```
//!
//! Options: `--dir PATH` keeps the store in PATH (default: a temporary
//! directory removed at exit), `--budget SIZE` (default 64MiB), `--tiles N`
//! (default 48), `--points N` per tile (default 250000), `--voxel SIZE`
//! (default 0.5).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Ix1, Ix2};
use ndarray_offload::{ByteSize, DiskBackedStore, StoreBuilder};
use sha2::{Digest, Sha256};

struct Options {
    dir: Option<PathBuf>,
    budget: ByteSize,
    tiles: usize,
    points: usize,
    voxel: f64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        dir: None,
        budget: ByteSize::new(64 << 20),
        tiles: 48,
        points: 250_000,
        voxel: 0.5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--budget" => o.budget = value()?.parse().map_err(|e| format!("--budget: {e}"))?,
            "--tiles" => o.tiles = value()?.parse().map_err(|e| format!("--tiles: {e}"))?,
            "--points" => o.points = value()?.parse().map_err(|e| format!("--points: {e}"))?,
            "--voxel" => o.voxel = value()?.parse().map_err(|e| format!("--voxel: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: pipeline [--dir PATH] [--budget SIZE] [--tiles N] [--points N] [--voxel SIZE]".into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.tiles == 0 || o.points == 0 || o.voxel <= 0.0 {
        return Err("--tiles, --points and --voxel must be positive".into());
    }
    Ok(o)
}

/// splitmix64: a small deterministic generator, so every run makes the same
/// tiles on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A 100 m x 100 m tile of rolling terrain with some vegetation returns.
fn make_tile(index: usize, points: usize) -> (Array2<f64>, Array1<u16>) {
    let mut rng = Rng(0xC0FFEE ^ (index as u64).wrapping_mul(0x1000_0001));
    let (ox, oy) = ((index % 16) as f64 * 100.0, (index / 16) as f64 * 100.0);
    let mut xyz = Array2::<f64>::zeros((points, 3));
    let mut intensity = Array1::<u16>::zeros(points);
    for i in 0..points {
        let x = ox + rng.unit() * 100.0;
        let y = oy + rng.unit() * 100.0;
        let ground = 20.0 * (x / 150.0).sin() * (y / 90.0).cos() + 0.05 * (x + y);
        let veg = if rng.unit() < 0.2 {
            rng.unit() * 15.0
        } else {
            0.0
        };
        xyz[[i, 0]] = x;
        xyz[[i, 1]] = y;
        xyz[[i, 2]] = ground + veg + rng.unit() * 0.1;
        intensity[i] = (rng.next_u64() % 4096) as u16 + if veg > 0.0 { 0 } else { 8192 };
    }
    (xyz, intensity)
}

fn checksum(xyz: ArrayView2<f64>, intensity: ArrayView1<u16>) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in xyz.iter() {
        h.update(v.to_le_bytes());
    }
    for v in intensity.iter() {
        h.update(v.to_le_bytes());
    }
    h.finalize().into()
}

struct TileSummary {
    bbox_min: [f64; 3],
    bbox_max: [f64; 3],
    mean_intensity: f64,
    kept: usize,
}

/// Bounding box, mean intensity, and one point per occupied voxel (the
/// centroid of the points in it).
fn process(
    xyz: ArrayView2<f64>,
    intensity: ArrayView1<u16>,
    voxel: f64,
) -> (TileSummary, Array2<f64>) {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    let mut cells: HashMap<(i64, i64, i64), ([f64; 3], u32)> = HashMap::new();
    for p in xyz.rows() {
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
        let key = (
            (p[0] / voxel).floor() as i64,
            (p[1] / voxel).floor() as i64,
            (p[2] / voxel).floor() as i64,
        );
        let c = cells.entry(key).or_insert(([0.0; 3], 0));
        for d in 0..3 {
            c.0[d] += p[d];
        }
        c.1 += 1;
    }
    let mut down = Array2::<f64>::zeros((cells.len(), 3));
    let mut keys: Vec<_> = cells.into_iter().collect();
    keys.sort_unstable_by_key(|(k, _)| *k);
    for (row, (_, (sum, n))) in keys.iter().enumerate() {
        for d in 0..3 {
            down[[row, d]] = sum[d] / *n as f64;
        }
    }
    let mean = intensity.iter().map(|&v| v as f64).sum::<f64>() / intensity.len().max(1) as f64;
    (
        TileSummary {
            bbox_min: lo,
            bbox_max: hi,
            mean_intensity: mean,
            kept: down.nrows(),
        },
        down,
    )
}

/// Processes stored tile `j` (read without copying, from RAM or a map) and
/// stores its voxel centroids.
fn process_tile(
    store: &DiskBackedStore,
    j: usize,
    voxel: f64,
) -> ndarray_offload::Result<TileSummary> {
    let name = format!("tile_{j:05}");
    let xyz = store.get::<f64, Ix2>(format!("{name}_xyz"))?;
    let inten = store.get::<u16, Ix1>(format!("{name}_intensity"))?;
    let (summary, down) = {
        let (gx, gi) = (xyz.read()?, inten.read()?);
        process(gx.view(), gi.view(), voxel)
    };
    store.insert(format!("{name}_voxels"), down)?;
    Ok(summary)
}

fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run(o: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let tmp;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("store")
        }
    };
    let tile_bytes = (o.points * (3 * 8 + 2)) as u64;
    let total = tile_bytes * o.tiles as u64;
    println!(
        "pipeline: {} tiles x {} points = {} in {} (budget {}, {:.1}x the budget)",
        o.tiles,
        o.points,
        ByteSize::new(total),
        dir.display(),
        o.budget,
        total as f64 / o.budget.bytes() as f64
    );
    // Spills are written behind (one writer, a quarter of the budget in
    // flight) while the next tiles are made and processed.
    let store = StoreBuilder::new(&dir)
        .memory_budget(o.budget)
        .write_behind(1, ByteSize::new(o.budget.bytes() / 4))
        .open()?;
    let mut compute_s = 0.0;
    let bar = ProgressBar::new(o.tiles as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tiles  {elapsed_precise}  {msg}")
            .expect("valid template"),
    );
    let t0 = Instant::now();
    let mut sums: Vec<[u8; 32]> = Vec::with_capacity(o.tiles);
    let mut kept_total = 0usize;
    let mut summary_last = None;
    for i in 0..o.tiles {
        let tc = Instant::now();
        let (xyz, intensity) = make_tile(i, o.points);
        sums.push(checksum(xyz.view(), intensity.view()));
        compute_s += tc.elapsed().as_secs_f64();
        let name = format!("tile_{i:05}");
        store.insert(format!("{name}_xyz"), xyz)?;
        store.insert(format!("{name}_intensity"), intensity)?;
        // Every other step, process an earlier tile (which may have spilled
        // to disk by now): tiles 0, 1, 2, ... while 0, 2, 4, ... arrive.
        if i % 2 == 0 {
            // Read-ahead of the tile processed next time.
            let next = format!("tile_{:05}", i / 2 + 1);
            store.prefetch(&[format!("{next}_xyz"), format!("{next}_intensity")])?;
            let tc = Instant::now();
            let summary = process_tile(&store, i / 2, o.voxel)?;
            compute_s += tc.elapsed().as_secs_f64();
            kept_total += summary.kept;
            summary_last = Some(summary);
        }
        let st = store.stats();
        bar.set_message(format!(
            "resident {}  evictions {}",
            ByteSize::new(st.bytes_resident),
            st.evictions
        ));
        bar.inc(1);
    }
    // Tiles not yet processed by the lagging loop.
    for j in (o.tiles - 1) / 2 + 1..o.tiles {
        kept_total += process_tile(&store, j, o.voxel)?.kept;
    }
    store.flush()?;
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let st = store.stats();
    let rss = peak_rss();
    drop(store);

    if let Some(s) = summary_last {
        println!(
            "last processed tile: bbox [{:.1}, {:.1}, {:.1}] - [{:.1}, {:.1}, {:.1}], mean intensity {:.0}, {} voxels",
            s.bbox_min[0], s.bbox_min[1], s.bbox_min[2], s.bbox_max[0], s.bbox_max[1], s.bbox_max[2], s.mean_intensity, s.kept
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| tiles processed | {} |", o.tiles);
    println!("| input data | {} |", ByteSize::new(total));
    println!("| time | {elapsed:.2} s |");
    println!(
        "| throughput | {:.1} MiB/s |",
        total as f64 / (1 << 20) as f64 / elapsed
    );
    println!(
        "| compute / I/O not hidden by it | {compute_s:.2} s / {:.2} s (spills written behind, reads prefetched) |",
        (elapsed - compute_s).max(0.0)
    );
    println!("| voxels kept | {kept_total} |");
    println!("| budget | {} |", o.budget);
    println!("| evictions | {} |", st.evictions);
    println!("| over-budget events | {} |", st.over_budget_events);
    println!(
        "| hit rate | {:.1}% ({} hits, {} loads from disk) |",
        st.hit_rate() * 100.0,
        st.hits,
        st.loads
    );
    println!(
        "| bytes on disk | {} in {} entries |",
        ByteSize::new(st.bytes_on_disk),
        st.entries_on_disk
    );
    match rss {
        Some(r) => println!("| peak RSS | {} |", ByteSize::new(r)),
        None => println!("| peak RSS | unknown |"),
    }

    // Reopen, as a later process would, and check every tile.
    let t1 = Instant::now();
    let store = DiskBackedStore::open_read_only(&dir)?;
    let mut bad = 0;
    for (i, expect) in sums.iter().enumerate() {
        let name = format!("tile_{i:05}");
        let xyz = store.get::<f64, Ix2>(format!("{name}_xyz"))?;
        let inten = store.get::<u16, Ix1>(format!("{name}_intensity"))?;
        let got = checksum(xyz.read()?.view(), inten.read()?.view());
        if &got != expect {
            eprintln!("{name}: checksum mismatch");
            bad += 1;
        }
    }
    println!(
        "\nreopened {} entries and verified {} tiles against their checksums in {:.2} s: {}",
        store.len(),
        o.tiles,
        t1.elapsed().as_secs_f64(),
        if bad == 0 {
            "all match".to_string()
        } else {
            format!("{bad} MISMATCHED")
        }
    );
    Ok(bad == 0)
}

fn main() -> std::process::ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(o) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("pipeline failed: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
