//! A synthetic point-cloud pipeline under a memory budget.
//!
//! Generates tiles of points (xyz, f64) and intensities (u16)
//! deterministically and stores each tile, with its origin, CRS and
//! checksum as attributes, under a memory budget that holds only a fraction
//! of the data set (least-recently-used tiles spill to disk, written behind
//! by a background thread while the next tile is computed). Processes
//! every tile (bounding box, mean intensity, voxel downsample) and stores
//! the results, reading spilled tiles ahead on a background thread
//! (`prefetching`); the results are recomputable, so a disk budget
//! (`--disk-budget`) may delete them, never the tiles. Then it reopens the store, as a later process would,
//! and checks every tile against the checksum in its attributes, again
//! reading ahead. It prints the compute time and the background I/O time
//! it overlapped next to its throughput.
//! `python/read_pipeline.py DIR` reads the same store with numpy.
//!
//! ```text
//! cargo run --release --example pipeline
//! cargo run --release --example pipeline -- --dir /data/run1 --budget 1GiB --tiles 200 --points 1000000
//! ```

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array2, ArrayRef, Dimension, Ix1, Ix2};
use ndarray_offload::{ByteSize, StoreBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A synthetic point-cloud pipeline under a memory budget.
#[derive(Parser)]
struct Options {
    /// Keep the store in DIR (default: a temporary directory removed at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Memory budget of the store.
    #[arg(long, default_value = "64MiB")]
    budget: String,
    /// Number of tiles.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..))]
    tiles: u64,
    /// Points per tile.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
    points: u64,
    /// Voxel edge of the downsample, in metres.
    #[arg(long, default_value_t = 0.5)]
    voxel: f64,
    /// Bytes the background writer may hold in flight beyond the budget.
    #[arg(long, default_value = "32MiB")]
    in_flight: String,
    /// Tiles read ahead of the one being processed or verified.
    #[arg(long, default_value_t = 2)]
    ahead: usize,
    /// Disk budget: the voxel summaries can be computed again, so beyond it
    /// they are deleted from disk, least recently used first; the tiles
    /// never are.
    #[arg(long, default_value = "2GiB")]
    disk_budget: String,
}

/// The names of tile `i`'s two entries.
fn tile_names(i: u64) -> [String; 2] {
    [format!("tile_{i:05}_xyz"), format!("tile_{i:05}_intensity")]
}

/// splitmix64: the same tiles on every run and platform.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The origin of a 100 m x 100 m tile.
fn origin(index: u64) -> [f64; 2] {
    [(index % 16) as f64 * 100.0, (index / 16) as f64 * 100.0]
}

/// A tile of rolling terrain with some vegetation returns.
fn make_tile(index: u64, points: usize) -> (Array2<f64>, Array1<u16>) {
    let mut s = 0xC0FFEE ^ index.wrapping_mul(0x1000_0001);
    let mut unit = || (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
    let [ox, oy] = origin(index);
    let mut xyz = Array2::<f64>::zeros((points, 3));
    let mut intensity = Array1::<u16>::zeros(points);
    for (mut p, i) in xyz.rows_mut().into_iter().zip(intensity.iter_mut()) {
        let (x, y) = (ox + unit() * 100.0, oy + unit() * 100.0);
        let veg = if unit() < 0.2 { unit() * 15.0 } else { 0.0 };
        let ground = 20.0 * (x / 150.0).sin() * (y / 90.0).cos() + 0.05 * (x + y);
        p.assign(&ndarray::arr1(&[x, y, ground + veg + unit() * 0.1]));
        *i = (unit() * 4096.0) as u16 + if veg > 0.0 { 0 } else { 8192 };
    }
    (xyz, intensity)
}

/// SHA-256 of the values in C order, little-endian: what numpy's
/// `hashlib.sha256(np.ascontiguousarray(a).tobytes())` gives on x86/ARM.
fn sha256<T: Copy, D: Dimension, const N: usize>(
    a: &ArrayRef<T, D>,
    bytes: fn(T) -> [u8; N],
) -> String {
    let mut h = Sha256::new();
    a.iter().for_each(|&v| h.update(bytes(v)));
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Bounding box, mean intensity, and the centroid of each occupied voxel.
fn process(
    xyz: &ArrayRef<f64, Ix2>,
    intensity: &ArrayRef<u16, Ix1>,
    voxel: f64,
) -> (serde_json::Value, Array2<f64>) {
    let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    let mut cells: HashMap<[i64; 3], ([f64; 3], f64)> = HashMap::new();
    for p in xyz.rows() {
        let c = cells
            .entry([0, 1, 2].map(|d| (p[d] / voxel).floor() as i64))
            .or_default();
        for d in 0..3 {
            (lo[d], hi[d]) = (lo[d].min(p[d]), hi[d].max(p[d]));
            c.0[d] += p[d];
        }
        c.1 += 1.0;
    }
    let mut cells: Vec<_> = cells.into_iter().collect();
    cells.sort_unstable_by_key(|(k, _)| *k);
    let down = Array2::from_shape_fn((cells.len(), 3), |(r, d)| cells[r].1 .0[d] / cells[r].1 .1);
    let mean = intensity.mapv(f64::from).mean().unwrap_or(0.0);
    (
        json!({"bbox_min": lo, "bbox_max": hi, "mean_intensity": mean}),
        down,
    )
}

/// A progress bar on a terminal; elsewhere (a log, CI) a one-line notice.
fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        eprintln!("{what}: {len} tiles (no progress bar: not a terminal)");
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:12} {bar:40} {pos}/{len} tiles {elapsed_precise}")
            .expect("valid template"),
    );
    bar
}

/// Peak resident memory of the process so far (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?;
    Some(kib.parse::<u64>().ok()? * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = Options::parse();
    let tmp = tempfile::tempdir()?;
    let dir = o.dir.clone().unwrap_or_else(|| tmp.path().join("store"));
    let in_flight = ByteSize::try_from(o.in_flight.as_str())?;
    let store = StoreBuilder::new(&dir)
        .memory_budget(o.budget.as_str())
        .write_behind(1, in_flight)
        .disk_budget(o.disk_budget.as_str())
        .open()?;
    let total = o.tiles * o.points * (3 * 8 + 2);
    println!(
        "pipeline: {} tiles x {} points = {} in {} (budget {}, {} in flight)",
        o.tiles,
        o.points,
        ByteSize::new(total),
        dir.display(),
        o.budget,
        in_flight
    );
    let t0 = Instant::now();
    let bar = progress(o.tiles, "processing");
    // Time spent computing (generating, hashing, processing tiles), on this
    // thread; the store's writes and reads ahead run beside it.
    let mut compute = Duration::ZERO;
    let process_tile = |j: u64, compute: &mut Duration| -> ndarray_offload::Result<()> {
        let [xyz, intensity] = tile_names(j);
        let xyz = store.get::<f64, Ix2>(xyz)?;
        let intensity = store.get::<u16, Ix1>(intensity)?;
        let (xyz, intensity) = (xyz.read()?, intensity.read()?);
        let t = Instant::now();
        let (summary, down) = process(&xyz, &intensity, o.voxel);
        *compute += t.elapsed();
        drop((xyz, intensity));
        // Derived data: recomputable, so the disk budget may delete it.
        store.insert_opts(
            format!("tile_{j:05}_voxels"),
            down,
            &ndarray_offload::InsertOptions::new()
                .recomputable(true)
                .attrs(json!({"voxel": o.voxel, "summary": summary})),
        )
    };
    for i in 0..o.tiles {
        let t = Instant::now();
        let (xyz, intensity) = make_tile(i, o.points as usize);
        let attrs =
            |sha| json!({"crs": "EPSG:2056", "origin": origin(i), "units": "m", "sha256": sha});
        let (sha, sha_i) = (
            sha256(&xyz, |v| v.to_le_bytes()),
            sha256(&intensity, |v| v.to_le_bytes()),
        );
        compute += t.elapsed();
        let [n_xyz, n_intensity] = tile_names(i);
        store.insert_opts(
            n_xyz,
            xyz,
            &ndarray_offload::InsertOptions::new().attrs(attrs(sha)),
        )?;
        store.insert_opts(
            n_intensity,
            intensity,
            &ndarray_offload::InsertOptions::new().attrs(attrs(sha_i)),
        )?;
        // Processing lags generation by half: tile i/2 is read back (from
        // RAM or, once spilled, from a memory map) while tile i arrives.
        if i % 2 == 0 {
            process_tile(i / 2, &mut compute)?;
        }
        bar.inc(1);
    }
    // The second half of the tiles, most of them spilled: read ahead.
    let rest = (o.tiles - 1) / 2 + 1..o.tiles;
    let names = rest.clone().flat_map(tile_names);
    let mut ahead = store.prefetching(names, 2 * o.ahead);
    for j in rest {
        ahead.by_ref().take(2).for_each(drop);
        process_tile(j, &mut compute)?;
    }
    let read_ahead = ahead.read_time();
    drop(ahead);
    store.flush()?;
    bar.finish_and_clear();
    let (elapsed, st) = (t0.elapsed().as_secs_f64(), store.stats());
    drop(store);

    // Reopen, as a later process would, and check every tile against the
    // checksum in its attributes.
    let t1 = Instant::now();
    let store = StoreBuilder::new(&dir)
        .read_only(true)
        .memory_budget(o.budget.as_str())
        .open()?;
    let bar = progress(o.tiles, "verifying");
    let mut bad = Vec::new();
    let mut ahead = store.prefetching((0..o.tiles).flat_map(tile_names), 2 * o.ahead);
    for i in 0..o.tiles {
        ahead.by_ref().take(2).for_each(drop);
        let [xyz, intensity] = tile_names(i);
        let got = sha256(&store.get::<f64, Ix2>(&xyz)?.read()?, |v| v.to_le_bytes());
        let got_i = sha256(&store.get::<u16, Ix1>(&intensity)?.read()?, |v| {
            v.to_le_bytes()
        });
        if store.info(&xyz)?.attrs["sha256"] != got.as_str()
            || store.info(&intensity)?.attrs["sha256"] != got_i.as_str()
        {
            bad.push(i);
        }
        bar.inc(1);
    }
    let verify_ahead = ahead.read_time();
    drop(ahead);
    bar.finish_and_clear();
    let verified = t1.elapsed().as_secs_f64();
    let rss = peak_rss().map_or("unknown".into(), |r| ByteSize::new(r).to_string());
    println!("\n| measure | value |\n|---|---|");
    for (k, v) in [
        (
            "tiles processed",
            format!("{} ({})", o.tiles, ByteSize::new(total)),
        ),
        (
            "time",
            format!(
                "{elapsed:.2} s, {:.1} MiB/s; overlapped: compute {:.2} s, background I/O {:.2} s (writes behind {:.2} s, reads ahead {:.2} s)",
                total as f64 / f64::from(1 << 20) / elapsed,
                compute.as_secs_f64(),
                (st.write_behind_time + read_ahead).as_secs_f64(),
                st.write_behind_time.as_secs_f64(),
                read_ahead.as_secs_f64(),
            ),
        ),
        (
            "budget",
            format!(
                "{} ({:.1}x smaller than the data)",
                o.budget,
                total as f64 / st.budget.unwrap_or(u64::MAX) as f64
            ),
        ),
        (
            "evictions",
            format!(
                "{} ({} over-budget events)",
                st.evictions, st.over_budget_events
            ),
        ),
        (
            "hit rate",
            format!(
                "{:.1}% ({} hits, {} loads from disk)",
                st.hit_rate() * 100.0,
                st.hits,
                st.loads
            ),
        ),
        (
            "on disk",
            format!(
                "{} in {} entries; disk budget {}: {} recomputable entries deleted ({} over-budget events)",
                ByteSize::new(st.bytes_on_disk),
                st.entries_on_disk,
                o.disk_budget,
                st.disk_evictions,
                st.disk_over_budget_events
            ),
        ),
        (
            "verification",
            format!(
                "{} tiles in {verified:.2} s (reads ahead {:.2} s overlapped): {}",
                o.tiles,
                verify_ahead.as_secs_f64(),
                if bad.is_empty() {
                    "all match".into()
                } else {
                    format!("MISMATCHED {bad:?}")
                }
            ),
        ),
        ("peak RSS (whole run)", rss),
    ] {
        println!("| {k} | {v} |");
    }
    if !bad.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
