//! One writer process and several reader processes on one store.
//!
//! The writer adds tiles in batches; after each batch is durable (its
//! `flush` returned) it says so in a small `progress` entry, whose attribute
//! `durable_through` is the number of durable tiles. Each reader opens the store
//! read-only (no lock, nothing written), and polls:
//!
//! * `get("progress")` is `Error::KeyNotFound` until the writer publishes
//!   it (a reader may start first); then it reads how many tiles are
//!   durable. A name the reader's listing does not hold is looked up on
//!   disk by `get`, so no `refresh` is needed for that;
//! * `keys()` stays as it was listed at open until `refresh()` lists the
//!   directory again: the readers print both counts to show it;
//! * every tile it reads is a complete value (checked against the checksum
//!   in its attributes), whatever the writer does meanwhile.
//!
//! ```text
//! cargo run --example processes
//! cargo run --example processes -- --dir /tmp/tiles --readers 4 --tiles 100
//! ```
//!
//! The same program is the writer and the readers: the parent starts
//! itself as `processes writer DIR ...` and `processes reader DIR ...`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, Ix1, Ix2};
use ndarray_offload::{DiskBackedStore, Error, StoreBuilder};
use serde_json::json;

/// Tiles per batch: the writer makes each batch durable with one `flush`,
/// then publishes its progress.
const BATCH: usize = 5;

fn usage() -> ! {
    eprintln!(
        "usage: processes [--dir DIR] [--readers N] [--tiles N]\n       processes writer DIR TILES\n       processes reader DIR TILES ID"
    );
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("writer") if args.len() == 3 => writer(Path::new(&args[1]), args[2].parse()?),
        Some("reader") if args.len() == 4 => {
            reader(Path::new(&args[1]), args[2].parse()?, args[3].parse()?)
        }
        _ => parent(&args),
    }
}

/// Starts the writer and the readers, waits for them, prints what they
/// report.
fn parent(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (mut dir, mut readers, mut tiles) = (None::<PathBuf>, 2usize, 40usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(value())),
            "--readers" => readers = value().parse()?,
            "--tiles" => tiles = value().parse()?,
            _ => usage(),
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().join("store"));
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    // The readers first: they meet a store with no `progress` yet.
    let mut children = Vec::new();
    for id in 0..readers {
        let child = Command::new(&exe)
            .args(["reader", &dir.to_string_lossy(), &tiles.to_string()])
            .arg(id.to_string())
            .stdout(Stdio::inherit())
            .spawn()?;
        children.push(("reader", child));
    }
    let writer = Command::new(&exe)
        .args(["writer", &dir.to_string_lossy(), &tiles.to_string()])
        .stdout(Stdio::inherit())
        .spawn()?;
    children.push(("writer", writer));
    let mut failed = 0;
    for (role, mut c) in children {
        let status = c.wait()?;
        if !status.success() {
            eprintln!("{role} failed: {status}");
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} processes failed").into());
    }
    println!(
        "done: 1 writer and {readers} readers on {} in {:.2} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The values of tile `i`: deterministic, so that a reader can check them.
fn tile(i: usize) -> Array2<f32> {
    Array2::from_shape_fn((1000, 3), |(r, c)| (i * 10_000 + r * 3 + c) as f32)
}

/// A checksum of a tile's values (stored in its attributes).
fn checksum(a: &ndarray::ArrayView2<f32>) -> u64 {
    a.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
    })
}

fn writer(dir: &Path, tiles: usize) -> Result<(), Box<dyn std::error::Error>> {
    // A writable open: it shares the store with other writers (exclusive
    // is off by default) and never waits for readers.
    let store = StoreBuilder::new(dir).open()?;
    let mut written = 0;
    while written < tiles {
        let n = BATCH.min(tiles - written);
        for i in written..written + n {
            let sum = checksum(&tile(i).view());
            store.insert_opts(
                format!("tile_{i:04}"),
                tile(i),
                &ndarray_offload::InsertOptions::new().attrs(json!({ "checksum": sum })),
            )?;
        }
        // Durable when it returns: every entry inserted so far is written,
        // synced, renamed into place, and the directory synced.
        store.flush()?;
        written += n;
        // Say so: a reader that reads `durable_through: N` knows that tiles
        // 0..N survive a crash of the writer or of the machine. (A reader
        // sees an entry as soon as it is renamed into place, which is
        // before the writer's directory sync: seeing it is not knowing it
        // is durable.)
        store.insert_opts(
            "progress",
            Array1::from_elem(1, written as u64),
            &ndarray_offload::InsertOptions::new().attrs(json!({ "durable_through": written })),
        )?;
        store.flush()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    store.close()?;
    println!("writer: {tiles} tiles, durable");
    Ok(())
}

fn reader(dir: &Path, tiles: usize, id: usize) -> Result<(), Box<dyn std::error::Error>> {
    // The writer may not have created the directory yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let store = loop {
        match DiskBackedStore::open_read_only(dir) {
            Ok(s) => break s,
            Err(e) if e.is_not_found() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let keys_at_open = store.len();
    let (mut not_yet, mut refreshes, mut verified) = (0, 0, 0usize);
    // `keys()` when `progress` was first read, before any refresh.
    let mut keys_unrefreshed = None;
    loop {
        if Instant::now() > deadline {
            return Err(format!("reader {id}: the writer did not finish in time").into());
        }
        // Not in this reader's listing yet: `get` looks on disk.
        let durable = match store.info("progress") {
            Ok(info) => info.attrs["durable_through"].as_u64().unwrap_or(0) as usize,
            Err(Error::KeyNotFound { .. }) => {
                not_yet += 1;
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if refreshes == 0 {
            keys_unrefreshed.get_or_insert(store.len());
        }
        // Read every durable tile not read yet; each is a whole value.
        for i in verified..durable {
            let name = format!("tile_{i:04}");
            let want = store.info(&name)?.attrs["checksum"].as_u64();
            let t = store.get::<f32, Ix2>(&name)?;
            let got = checksum(&t.read()?.view());
            if Some(got) != want || t.shape() != [1000, 3] {
                return Err(format!("reader {id}: {name} does not match its checksum").into());
            }
        }
        verified = durable;
        // `progress` itself is replaced by the writer: read it again.
        let p = store.get::<u64, Ix1>("progress")?;
        let _ = p.read()?[0];
        if verified >= tiles {
            break;
        }
        // `keys()` is the listing of the last open or refresh: list again
        // so that the next `get("progress")` reads the new value.
        store.refresh()?;
        refreshes += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    store.refresh()?;
    println!(
        "reader {id}: {verified} tiles verified; `progress` not found {not_yet} times before \
         the writer published it; keys(): {keys_at_open} at open, {} when `progress` was first \
         read (before any refresh), {} after {refreshes} refreshes",
        keys_unrefreshed.unwrap_or(keys_at_open),
        store.len()
    );
    Ok(())
}
