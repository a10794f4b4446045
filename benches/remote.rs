//! The remote tier against `object_store` used directly, on the same moto
//! S3 server on 127.0.0.1, in the same run; prints ratios.
//!
//! ```text
//! NDOFFLOAD_MOTO=.venv/bin/moto_server cargo bench --features remote --bench remote [-- upload|download|ram-upload|small|window]
//! ```
//!
//! `window`: a 1% slab of the outer axis of the large entry read with
//! `read_window` by a node that has nothing cached, against a first full
//! `get` and a raw ranged GET of the same bytes; then the same window
//! again (a hit of the window cache); the same slab as a view
//! (`map_window`: mapped, then every element read) on another node, and
//! again; time and bytes fetched of each. `NDOFFLOAD_BENCH_ROUNDS` rounds
//! (default 2), the best of each.
//!
//! One window run per process, for its peak RSS: `window-setup` uploads
//! the entry (once per server), then `window-read` (a window and the same
//! window again), `window-view` (the same as views) or `window-full` (a
//! window, then a full `get` that copies the window's bytes from the
//! window cache and fetches the rest), each under `/usr/bin/time -v`
//! against a server started separately:
//!
//! ```text
//! .venv/bin/moto_server -H 127.0.0.1 -p 5123 &
//! export NDOFFLOAD_MOTO_PORT=5123
//! B=$(ls target/release/deps/remote-* | grep -v '\.d$')
//! $B window-setup
//! /usr/bin/time -v $B window-read
//! ```
//!
//! `ram-upload`: `insert_durable` of an array made before the clock and
//! moved in (the store uploads it from memory while it writes the local
//! durable copy), against a raw multipart upload of the same bytes from
//! memory (`object_store`'s `WriteMultipart`, the same part size and
//! parts in flight, each part copied out of the `.npy` bytes made before
//! the clock), for each size of `NDOFFLOAD_BENCH_MIB` (a comma-separated
//! list, default `256,1024`; `NDOFFLOAD_BENCH_ROUNDS` rounds, default 2).
//! The rounds alternate which goes first; each timed run starts once the
//! server is idle, and the round's buffers, objects and entry are dropped
//! at its end, so that neither run pays for what the other left behind
//! (on a VM that hands freed memory back to its host, memory freed just
//! before a run is slow to touch again). The process's CPU time of each
//! is printed, and moto's during the raw uploads when its process is
//! known (started by the bench, or `NDOFFLOAD_MOTO_PID`): near one core,
//! moto bounds the figure.
//!
//! `small`: `NDOFFLOAD_BENCH_SMALL` (default 200) 1000x3 f64 entries
//! inserted one by one with `insert_durable`, against two sequential raw
//! PUTs per entry (its data, its metadata), in rounds of 20 alternating
//! which goes first; and batches of 1,000 such entries with `insert_many`,
//! against raw PUTs of 2,000 objects with the same concurrency
//! (`RemoteOptions::batch_concurrency`), three rounds alternating.
//!
//! `NDOFFLOAD_BENCH_DIR` is where the cache directories go (default: the
//! system temporary directory). `NDOFFLOAD_BENCH_MIB` sets the large entry's size (default 1024). For
//! the peak RSS of one group, run the bench binary under
//! `/usr/bin/time -v` with one group, against a moto started separately
//! (`NDOFFLOAD_MOTO_PORT`, so that the server is not counted): for
//! `upload` or `download` the entry is written with `NpyStreamWriter`,
//! never held in memory; `ram-upload` holds its array (one size per run;
//! `NDOFFLOAD_BENCH_RAW=0` leaves out the raw reference, which holds a
//! second copy of the bytes).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use ndarray::Array2;
use ndarray_offload::remote::{RemoteOptions, TransferOptions};
use ndarray_offload::DiskBackedStore;

/// A store over the prefix `url` with `cache` as its cache directory.
fn open_store(url: &str, cache: &std::path::Path, o: RemoteOptions) -> DiskBackedStore {
    StoreBuilder::new(cache).remote_with(url, o).open().unwrap()
}
use ndarray_offload::{NpyStreamWriter, StoreBuilder};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

const BUCKET: &str = "ndo-bench";

struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn create_bucket(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let req = format!("PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

fn start_moto() -> Option<Moto> {
    let exe = std::env::var("NDOFFLOAD_MOTO")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
            p.exists().then_some(p)
        })?;
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(exe)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let m = Moto(child, port);
    for _ in 0..600 {
        if create_bucket(port) {
            return Some(m);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn config(port: u16) -> Vec<(String, String)> {
    vec![
        ("aws_endpoint".into(), format!("http://127.0.0.1:{port}")),
        ("aws_allow_http".into(), "true".into()),
        ("aws_access_key_id".into(), "bench".into()),
        ("aws_secret_access_key".into(), "bench".into()),
        ("aws_region".into(), "us-east-1".into()),
    ]
}

fn raw_store(port: u16) -> Arc<dyn ObjectStore> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    for (k, v) in config(port) {
        b = b.with_config(k.parse().unwrap(), v);
    }
    Arc::new(b.build().unwrap())
}

fn options(port: u16) -> RemoteOptions {
    let mut o = RemoteOptions::default();
    o.config = config(port);
    o
}

/// Writes a `.npy` of `mib` MiB of f64 without holding it in memory.
fn big_npy(dir: &Path, mib: usize) -> PathBuf {
    let rows = mib * 1024 * 1024 / 8 / 1024;
    let path = dir.join("big.npy");
    let mut w = NpyStreamWriter::<f64, ndarray::Ix2>::create(&path, &[rows, 1024]).unwrap();
    let chunk = 1024;
    let mut r = 0;
    while r < rows {
        let n = chunk.min(rows - r);
        let a = Array2::from_shape_fn((n, 1024), |(i, j)| ((r + i) * 1024 + j) as f64);
        w.write_chunk(&a).unwrap();
        r += n;
    }
    w.finish().unwrap()
}

fn raw_upload(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    file: &Path,
    dest: &str,
) -> Duration {
    let t = TransferOptions::default();
    let f = std::fs::File::open(file).unwrap();
    let size = f.metadata().unwrap().len();
    let start = Instant::now();
    rt.block_on(async {
        let up = store.put_multipart(&OPath::from(dest)).await.unwrap();
        let mut w = WriteMultipart::new_with_chunk_size(up, t.part_size);
        let mut off = 0;
        while off < size {
            let n = (t.part_size as u64).min(size - off) as usize;
            let mut buf = vec![0; n];
            f.read_exact_at(&mut buf, off).unwrap();
            w.wait_for_capacity(t.concurrency - 1).await.unwrap();
            w.put(buf.into());
            off += n as u64;
        }
        w.finish().await.unwrap();
    });
    start.elapsed()
}

fn raw_download(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    src: &str,
    size: u64,
    out: &Path,
) -> Duration {
    let t = TransferOptions::default();
    let f = Arc::new(std::fs::File::create(out).unwrap());
    let start = Instant::now();
    f.set_len(size).unwrap();
    let part = t.part_size as u64;
    rt.block_on(async {
        let src = OPath::from(src);
        futures::stream::iter((0..size.div_ceil(part)).map(|i| {
            let (store, src, f) = (store.clone(), src.clone(), f.clone());
            async move {
                let r = i * part..((i + 1) * part).min(size);
                let start = r.start;
                let b = store.get_range(&src, r).await?;
                tokio::task::spawn_blocking(move || f.write_all_at(&b, start).unwrap())
                    .await
                    .unwrap();
                Ok::<_, object_store::Error>(())
            }
        }))
        .buffered(t.concurrency)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    });
    start.elapsed()
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    // NDOFFLOAD_MOTO_PORT: a server already running on 127.0.0.1 (so that
    // `/usr/bin/time -v` measures this process, not the server).
    let (_moto, port) = match std::env::var("NDOFFLOAD_MOTO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        Some(port) if create_bucket(port) => (None, port),
        _ => match start_moto() {
            Some(m) => {
                let port = m.1;
                (Some(m), port)
            }
            None => {
                eprintln!("remote bench skipped: no moto_server (set NDOFFLOAD_MOTO)");
                return;
            }
        },
    };
    let mib: usize = std::env::var("NDOFFLOAD_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = raw_store(port);
    // NDOFFLOAD_BENCH_DIR: where the cache directories go (a fresh file
    // system: file creation slows on one after mass deletions).
    let tmp = match std::env::var("NDOFFLOAD_BENCH_DIR") {
        Ok(dir) => tempfile::tempdir_in(dir).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let url = format!("s3://{BUCKET}/bench");
    println!("remote bench: moto on 127.0.0.1:{port}, entry {mib} MiB");
    if which == "all" || which == "upload" || which == "download" {
        let file = big_npy(tmp.path(), mib);
        let size = std::fs::metadata(&file).unwrap().len();
        let cache = tmp.path().join("cacheA");
        let store = open_store(&url, &cache, options(port));
        // Interleaved: raw, crate, raw, crate; best of each.
        let (mut best_raw, mut best_crate) = (Duration::MAX, Duration::MAX);
        for i in 0..2 {
            best_raw = best_raw.min(raw_upload(&rt, &raw, &file, &format!("raw/up{i}.npy")));
            let t = Instant::now();
            store.insert_npy_file(format!("big{i}"), &file).unwrap();
            best_crate = best_crate.min(t.elapsed());
            if which == "upload" {
                break;
            }
        }
        println!(
            "upload {mib} MiB: crate {:.2} s ({:.2} GiB/s), raw multipart {:.2} s ({:.2} GiB/s), ratio {:.2}x",
            best_crate.as_secs_f64(),
            gib_s(size, best_crate),
            best_raw.as_secs_f64(),
            gib_s(size, best_raw),
            best_raw.as_secs_f64() / best_crate.as_secs_f64()
        );
        if which != "upload" {
            let (mut best_raw, mut best_crate) = (Duration::MAX, Duration::MAX);
            let mut best_tiered = Duration::MAX;
            for i in 0..2 {
                // The store's API over the object store: open, get, map.
                let cache = tmp.path().join(format!("cacheT{i}"));
                let t = Instant::now();
                let s = StoreBuilder::new(&cache)
                    .remote_with(&url, options(port))
                    .memory_budget("256MiB")
                    .open()
                    .unwrap();
                let a = s.get::<f64, ndarray::Ix2>("big0").unwrap();
                assert_eq!(a.read().unwrap()[[0, 1]], 1.0);
                best_tiered = best_tiered.min(t.elapsed());
                drop(a);
                drop(s);
                let _ = std::fs::remove_dir_all(&cache);
                best_raw = best_raw.min(raw_download(
                    &rt,
                    &raw,
                    "raw/up0.npy",
                    size,
                    &tmp.path().join(format!("raw{i}.npy")),
                ));
                let _ = std::fs::remove_file(tmp.path().join(format!("raw{i}.npy")));
                let cache = tmp.path().join(format!("cacheB{i}"));
                let b = open_store(&url, &cache, options(port));
                let t = Instant::now();
                let a = b.get::<f64, ndarray::Ix2>("big0").unwrap();
                best_crate = best_crate.min(t.elapsed());
                drop(a);
                drop(b);
                let _ = std::fs::remove_dir_all(&cache);
            }
            println!(
                "first get {mib} MiB: crate {:.2} s ({:.2} GiB/s), raw parallel ranged get {:.2} s ({:.2} GiB/s), ratio {:.2}x",
                best_crate.as_secs_f64(),
                gib_s(size, best_crate),
                best_raw.as_secs_f64(),
                gib_s(size, best_raw),
                best_raw.as_secs_f64() / best_crate.as_secs_f64()
            );
            println!(
                "first get {mib} MiB through DiskBackedStore (three tiers: open, get, map): {:.2} s ({:.2} GiB/s), ratio {:.2}x of raw",
                best_tiered.as_secs_f64(),
                gib_s(size, best_tiered),
                best_raw.as_secs_f64() / best_tiered.as_secs_f64()
            );
        }
    }
    if which == "tiered-upload" {
        // insert_durable of an array held in RAM: staged in the local cache
        // (write + fsync), then uploaded by parts, against a raw multipart
        // put of the same bytes from a file.
        let file = big_npy(tmp.path(), mib);
        let size = std::fs::metadata(&file).unwrap().len();
        let rows = mib * 1024 * 1024 / 8 / 1024;
        let s = StoreBuilder::new(tmp.path().join("cacheU"))
            .remote_with(&url, options(port))
            .open()
            .unwrap();
        let (mut best_raw, mut best_crate) = (Duration::MAX, Duration::MAX);
        let mut best_file = Duration::MAX;
        for i in 0..2 {
            best_raw = best_raw.min(raw_upload(&rt, &raw, &file, &format!("raw/tu{i}.npy")));
            // The same file, stored without reading it into memory.
            let t = Instant::now();
            s.insert_npy_file(format!("tf{i}"), &file).unwrap();
            best_file = best_file.min(t.elapsed());
            s.remove(format!("tf{i}")).unwrap();
            // Made before the clock starts, moved in (no copy).
            let a = Array2::from_shape_fn((rows, 1024), |(i, j)| (i * 1024 + j) as f64);
            let t = Instant::now();
            s.insert_durable(format!("tu{i}"), a).unwrap();
            best_crate = best_crate.min(t.elapsed());
            s.remove(format!("tu{i}")).unwrap();
        }
        println!(
            "insert_npy_file {mib} MiB through DiskBackedStore: {:.2} s ({:.2} GiB/s), raw multipart {:.2} s, ratio {:.2}x",
            best_file.as_secs_f64(),
            gib_s(size, best_file),
            best_raw.as_secs_f64(),
            best_raw.as_secs_f64() / best_file.as_secs_f64()
        );
        println!(
            "insert_durable {mib} MiB through DiskBackedStore: {:.2} s ({:.2} GiB/s), raw multipart {:.2} s, ratio {:.2}x",
            best_crate.as_secs_f64(),
            gib_s(size, best_crate),
            best_raw.as_secs_f64(),
            best_raw.as_secs_f64() / best_crate.as_secs_f64()
        );
    }
    if which == "all" || which.starts_with("window") {
        window(&rt, &raw, &url, port, tmp.path(), mib, &which);
    }
    if which == "all" || which == "ram-upload" {
        let sizes = std::env::var("NDOFFLOAD_BENCH_MIB").unwrap_or_else(|_| "256,1024".into());
        let moto_pid = _moto
            .as_ref()
            .map(|m| m.0.id())
            .or_else(|| std::env::var("NDOFFLOAD_MOTO_PID").ok()?.parse().ok());
        for mib in sizes
            .split(',')
            .filter_map(|m| m.trim().parse::<usize>().ok())
        {
            ram_upload(&rt, &raw, &url, port, tmp.path(), mib, moto_pid);
        }
    }
    if which == "all" || which == "small" {
        small(&rt, &raw, &url, port, tmp.path());
    }
}

/// Waits until the server is idle before a timed run: its CPU time grows
/// by less than 10 ms in a quarter of a second (at most 5 s; 1 s when its
/// process is not known), so that no run pays for work left over from the
/// one before it.
fn settle(pid: Option<u32>) {
    let quarter = Duration::from_millis(250);
    if pid.is_none() {
        std::thread::sleep(Duration::from_secs(1));
        return;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let before = cpu_time(pid);
        std::thread::sleep(quarter);
        match (before, cpu_time(pid)) {
            (Some(b), Some(a)) if a - b < Duration::from_millis(10) => return,
            (Some(_), Some(_)) => {}
            _ => return,
        }
    }
}

/// CPU time (user + system) of process `pid` so far, from `/proc`.
fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // The fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / 100.0))
}

/// A raw multipart upload of `npy` (an array's `.npy` bytes, in memory):
/// each part copied out of it, `concurrency` parts in flight.
fn raw_upload_ram(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn ObjectStore>,
    npy: &[u8],
    dest: &str,
) -> Duration {
    let t = TransferOptions::default();
    let size = npy.len();
    let start = Instant::now();
    rt.block_on(async {
        let up = store.put_multipart(&OPath::from(dest)).await.unwrap();
        let mut w = WriteMultipart::new_with_chunk_size(up, t.part_size);
        let mut off = 0;
        while off < size {
            let n = t.part_size.min(size - off);
            w.wait_for_capacity(t.concurrency - 1).await.unwrap();
            w.put(bytes::Bytes::copy_from_slice(&npy[off..off + n]));
            off += n;
        }
        w.finish().await.unwrap();
    });
    start.elapsed()
}

/// The `.npy` header of a C-order f64 array of `rows` x `cols`.
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    use ndarray_npy::npy::header::{Header, Layout};
    use ndarray_npy::WritableElement;
    Header {
        type_descriptor: f64::type_descriptor(),
        layout: Layout::Standard,
        shape: vec![rows, cols],
    }
    .to_bytes()
    .unwrap()
}

/// The median of `v` (the upper one of an even count).
fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The `ram-upload` group: see the module documentation.
fn ram_upload(
    rt: &tokio::runtime::Runtime,
    raw: &Arc<dyn ObjectStore>,
    url: &str,
    port: u16,
    tmp: &Path,
    mib: usize,
    moto_pid: Option<u32>,
) {
    let rows = mib * 1024 * 1024 / 8 / 1024;
    let make = || Array2::from_shape_fn((rows, 1024), |(i, j)| (i * 1024 + j) as f64);
    let cache = tmp.join(format!("cacheR{mib}"));
    let s = open_store(url, &cache, options(port));
    let (mut raw_t, mut crate_t) = (Vec::new(), Vec::new());
    let mut moto_busy = Vec::new();
    // NDOFFLOAD_BENCH_RAW=0: the store alone (for its peak RSS: the raw
    // reference holds a second copy of the bytes).
    let with_raw = std::env::var("NDOFFLOAD_BENCH_RAW").map_or(true, |v| v != "0");
    let rounds: usize = std::env::var("NDOFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let me = Some(std::process::id());
    let (mut raw_cpu, mut crate_cpu) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let a = make();
        // The same bytes, made before the clock, and dropped at the end of
        // the round: neither run follows the other's release of a large
        // buffer (on a VM that hands freed memory back to its host, the
        // next run would touch that memory afresh).
        let mut npy = Vec::new();
        if with_raw {
            ndarray_npy::WriteNpyExt::write_npy(&a, &mut npy).unwrap();
        }
        let raw_dest = format!("raw/ram{mib}_{i}.npy");
        let mut run_raw = || {
            settle(moto_pid);
            let (cpu, mine) = (cpu_time(moto_pid), cpu_time(me));
            let d = raw_upload_ram(rt, raw, &npy, &raw_dest);
            if let (Some(before), Some(after)) = (cpu, cpu_time(moto_pid)) {
                moto_busy.push((after - before).as_secs_f64() / d.as_secs_f64());
            }
            if let (Some(before), Some(after)) = (mine, cpu_time(me)) {
                raw_cpu.push(after - before);
            }
            raw_t.push(d);
        };
        // Alternating which goes first.
        if with_raw && i % 2 == 0 {
            run_raw();
        }
        // Moved in, made before the clock.
        settle(moto_pid);
        let mine = cpu_time(me);
        let t = Instant::now();
        s.insert_durable(format!("ram{i}"), a).unwrap();
        crate_t.push(t.elapsed());
        if let (Some(before), Some(after)) = (mine, cpu_time(me)) {
            crate_cpu.push(after - before);
        }
        if with_raw && i % 2 == 1 {
            run_raw();
        }
        drop(npy);
        if with_raw {
            rt.block_on(raw.delete(&OPath::from(raw_dest))).unwrap();
        }
        s.remove(format!("ram{i}")).unwrap();
        s.gc_with_grace(Duration::ZERO).unwrap();
    }
    let size = (npy_header(rows, 1024).len() + rows * 1024 * 8) as u64;
    let best = |v: &[Duration]| v.iter().copied().min().unwrap_or(Duration::MAX);
    let (r, c) = (best(&raw_t), best(&crate_t));
    if !with_raw {
        println!(
            "ram-upload {mib} MiB: insert_durable {:.2} s ({:.3} GiB/s), no raw reference",
            c.as_secs_f64(),
            gib_s(size, c)
        );
        return;
    }
    println!(
        "ram-upload {mib} MiB: insert_durable {:.2} s ({:.3} GiB/s), raw multipart from memory {:.2} s ({:.3} GiB/s), ratio {:.2}x (of the medians {:.2}x; runs: crate {:?}, raw {:?})",
        c.as_secs_f64(),
        gib_s(size, c),
        r.as_secs_f64(),
        gib_s(size, r),
        r.as_secs_f64() / c.as_secs_f64(),
        median(&raw_t).as_secs_f64() / median(&crate_t).as_secs_f64(),
        crate_t.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
        raw_t.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
    );
    if !crate_cpu.is_empty() && !raw_cpu.is_empty() {
        println!(
            "ram-upload {mib} MiB: CPU time of this process (median): insert_durable {:.2} s, raw {:.2} s",
            median(&crate_cpu).as_secs_f64(),
            median(&raw_cpu).as_secs_f64()
        );
    }
    if !moto_busy.is_empty() {
        let busy = moto_busy.iter().copied().fold(0.0, f64::max);
        println!(
            "ram-upload {mib} MiB: moto used {:.0}% of a core during the raw uploads{}",
            busy * 100.0,
            if busy > 0.85 {
                " (moto bounds the figure)"
            } else {
                ""
            }
        );
    }
}

/// The `small` group: see the module documentation.
fn small(
    rt: &tokio::runtime::Runtime,
    raw: &Arc<dyn ObjectStore>,
    url: &str,
    port: u16,
    tmp: &Path,
) {
    let n: usize = std::env::var("NDOFFLOAD_BENCH_SMALL")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // Keys of this run only (a server started separately keeps the
    // objects of earlier runs).
    let run = std::process::id();
    let cache = tmp.join("cacheS");
    let store = open_store(url, &cache, options(port));
    let a = Array2::from_shape_fn((1000, 3), |(i, j)| (i * 3 + j) as f64);
    let mut npy = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&a, &mut npy).unwrap();
    let npy = bytes::Bytes::from(npy);
    // About the size of a metadata object of the store's.
    let meta = bytes::Bytes::from(vec![b'x'; 400]);
    // Rounds of 20 entries, raw and crate alternating which goes first;
    // totals, and the median of the rounds' ratios.
    let (mut crate_t, mut raw_t) = (Duration::ZERO, Duration::ZERO);
    let mut cond_t = Duration::ZERO;
    let mut ratios = Vec::new();
    let per = 20;
    for round in 0..n.div_ceil(per) {
        let raw_round = || {
            let t = Instant::now();
            rt.block_on(async {
                for i in 0..per {
                    raw.put(
                        &OPath::from(format!("raw/s{run}_{round}_{i}.npy")),
                        npy.clone().into(),
                    )
                    .await
                    .unwrap();
                    raw.put(
                        &OPath::from(format!("raw/s{run}_{round}_{i}.meta.json")),
                        meta.clone().into(),
                    )
                    .await
                    .unwrap();
                }
            });
            t.elapsed()
        };
        // The protocol's own two requests, raw: the data PUT, then the
        // metadata PUT conditional on the key having no metadata object
        // (`If-None-Match: *`, the commit of a new key).
        let cond_round = || {
            let t = Instant::now();
            rt.block_on(async {
                for i in 0..per {
                    raw.put(
                        &OPath::from(format!("raw/c{run}_{round}_{i}.npy")),
                        npy.clone().into(),
                    )
                    .await
                    .unwrap();
                    raw.put_opts(
                        &OPath::from(format!("raw/c{run}_{round}_{i}.meta.json")),
                        meta.clone().into(),
                        object_store::PutMode::Create.into(),
                    )
                    .await
                    .unwrap();
                }
            });
            t.elapsed()
        };
        let crate_round = || {
            // Made before the clock, moved in.
            let arrays: Vec<Array2<f64>> = (0..per).map(|_| a.clone()).collect();
            let t = Instant::now();
            for (i, a) in arrays.into_iter().enumerate() {
                store
                    .insert_durable(format!("s{run}_{round}_{i}"), a)
                    .unwrap();
            }
            t.elapsed()
        };
        let (r, c) = if round % 2 == 0 {
            let r = raw_round();
            (r, crate_round())
        } else {
            let c = crate_round();
            (raw_round(), c)
        };
        cond_t += cond_round();
        raw_t += r;
        crate_t += c;
        ratios.push(r.as_secs_f64() / c.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len() * per;
    let c = n as f64 / crate_t.as_secs_f64();
    let r = n as f64 / raw_t.as_secs_f64();
    println!(
        "small entries one by one ({n} of 1000x3 f64, rounds of {per}): insert_durable {c:.0}/s, raw two sequential puts {r:.0}/s, ratio {:.2}x (median of the rounds {:.2}x, from {:.2} to {:.2})",
        c / r,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
    );
    let k = n as f64 / cond_t.as_secs_f64();
    println!(
        "small entries one by one, raw data put + conditional metadata put (If-None-Match): {k:.0}/s, {:.2}x of the raw two plain puts; insert_durable {:.2}x of it",
        k / r,
        c / k
    );
    // Batches of 1,000 entries, against 2,000 raw PUTs with the same
    // concurrency.
    let batch_n = 1000;
    let conc = RemoteOptions::default().batch_concurrency;
    let (mut crate_b, mut raw_b) = (Vec::new(), Vec::new());
    for round in 0..3 {
        if round % 2 == 1 {
            let mut batch = ndarray_offload::Batch::new();
            for i in 0..batch_n {
                batch
                    .push(format!("b{run}_{round}_{i}"), a.clone())
                    .unwrap();
            }
            let t = Instant::now();
            store.insert_many(batch).unwrap();
            crate_b.push(t.elapsed());
        }
        let t = Instant::now();
        rt.block_on(async {
            futures::stream::iter((0..batch_n).flat_map(|i| {
                [
                    (format!("raw/b{run}_{round}_{i}.npy"), npy.clone()),
                    (format!("raw/b{run}_{round}_{i}.meta.json"), meta.clone()),
                ]
            }))
            .map(|(p, b)| async move { raw.put(&OPath::from(p), b.into()).await })
            .buffer_unordered(conc)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        });
        raw_b.push(t.elapsed());
        if round % 2 == 0 {
            let mut batch = ndarray_offload::Batch::new();
            for i in 0..batch_n {
                batch
                    .push(format!("b{run}_{round}_{i}"), a.clone())
                    .unwrap();
            }
            let t = Instant::now();
            store.insert_many(batch).unwrap();
            crate_b.push(t.elapsed());
        }
    }
    let best = |v: &[Duration]| v.iter().copied().min().unwrap();
    let (c, r) = (best(&crate_b), best(&raw_b));
    println!(
        "small entries batched (1,000 of 1000x3 f64, {conc} in flight): insert_many {:.0}/s ({:.2} s), raw 2,000 puts {:.0}/s of entries ({:.2} s), ratio {:.2}x (runs: crate {:?}, raw {:?})",
        batch_n as f64 / c.as_secs_f64(),
        c.as_secs_f64(),
        batch_n as f64 / r.as_secs_f64(),
        r.as_secs_f64(),
        r.as_secs_f64() / c.as_secs_f64(),
        crate_b.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
        raw_b.iter().map(|d| (d.as_secs_f64() * 100.0).round() / 100.0).collect::<Vec<_>>(),
    );
}

/// The `window` groups: see the module documentation.
fn window(
    rt: &tokio::runtime::Runtime,
    raw: &Arc<dyn ObjectStore>,
    url: &str,
    port: u16,
    tmp: &Path,
    mib: usize,
    which: &str,
) {
    let rows = mib * 1024 * 1024 / 8 / 1024;
    let size = (rows * 1024 * 8 + 128) as u64;
    // moto assembles a 1 GiB multipart upload in more than the default
    // 10 s an answer may take to begin: the writer waits longer.
    let mut o = options(port);
    o.net = ndarray_offload::remote::NetOptions::default()
        .with_request_timeout(Duration::from_secs(300));
    // The entry is uploaded once per server (a server started separately
    // keeps it for the next runs).
    let writer = open_store(url, &tmp.join("cacheW"), o);
    let present = writer
        .info("win")
        .is_ok_and(|i| i.shape == [rows, 1024] && i.dtype == "<f8");
    let raw_present = rt
        .block_on(raw.head(&OPath::from("raw/win.npy")))
        .is_ok_and(|m| m.size == size);
    if !present || !raw_present {
        let file = big_npy(tmp, mib);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        let t = Instant::now();
        if !present {
            writer.insert_npy_file("win", &file).unwrap();
        }
        if !raw_present {
            raw_upload(rt, raw, &file, "raw/win.npy");
        }
        let _ = std::fs::remove_file(&file);
        println!(
            "window: uploaded the {mib} MiB entry in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    drop(writer);
    if which == "window-setup" {
        return;
    }
    let bytes_down = |s: &DiskBackedStore| s.stats().remote.unwrap().bytes_down;
    // A 1% slab of rows in the middle.
    let n = (rows / 100).max(1);
    let slab = [rows / 2..rows / 2 + n, 0..1024];
    let slab_bytes = (n * 1024 * 8) as u64;
    let first = ((rows / 2) * 1024 + 1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |b: u64| b as f64 * 100.0 / size as f64;
    let rounds: usize = std::env::var("NDOFFLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let fresh = |tag: &str, i: usize| {
        let cache = tmp.join(format!("cache{tag}{i}"));
        let _ = std::fs::remove_dir_all(&cache);
        (open_store(url, &cache, options(port)), cache)
    };
    if which == "window-read" || which == "window-view" || which == "window-full" {
        // One run per process, for its peak RSS (`/usr/bin/time -v`).
        let (s, cache) = fresh("One", 0);
        let t = Instant::now();
        let got = if which == "window-view" {
            let v = s.map_window::<f64>("win", &slab).unwrap();
            let map_t = t.elapsed();
            let sum: f64 = v.sum();
            let all_t = t.elapsed();
            assert_eq!(v[[0, 1]], first);
            println!(
                "{which}: map_window {:.1} ms, + sum of its elements {:.1} ms (sum {sum:e}), {} bytes fetched ({:.3}%)",
                ms(map_t),
                ms(all_t),
                bytes_down(&s),
                pct(bytes_down(&s))
            );
            None
        } else {
            let w = s.read_window::<f64>("win", &slab).unwrap();
            let win_t = t.elapsed();
            assert_eq!(w[[0, 1]], first);
            println!(
                "{which}: read_window {:.1} ms, {} bytes fetched ({:.3}%)",
                ms(win_t),
                bytes_down(&s),
                pct(bytes_down(&s))
            );
            Some(w)
        };
        let after_window = bytes_down(&s);
        let t = Instant::now();
        if which == "window-view" {
            let v = s.map_window::<f64>("win", &slab).unwrap();
            let sum: f64 = v.sum();
            println!(
                "{which}: the same view again (cache hit) {:.2} ms with the sum of its elements ({sum:e}), {} bytes fetched",
                ms(t.elapsed()),
                bytes_down(&s) - after_window
            );
        } else {
            let w = s.read_window::<f64>("win", &slab).unwrap();
            let hit_t = t.elapsed();
            assert_eq!(Some(w), got);
            println!(
                "{which}: the same window again (cache hit) {:.2} ms, {} bytes fetched",
                ms(hit_t),
                bytes_down(&s) - after_window
            );
        }
        if which == "window-full" {
            // A full get after the window: the window's bytes are copied
            // from the window cache, the rest fetched.
            let before = s.stats().remote.unwrap();
            let t = Instant::now();
            let a = s.get::<f64, ndarray::Ix2>("win").unwrap();
            assert_eq!(a.read().unwrap()[[0, 1]], 1.0);
            let full_t = t.elapsed();
            let after = s.stats().remote.unwrap();
            println!(
                "{which}: full get after the window {:.0} ms, {} bytes fetched ({:.3}%), {} bytes copied from the window cache",
                ms(full_t),
                after.bytes_down - before.bytes_down,
                pct(after.bytes_down - before.bytes_down),
                after.bytes_reused - before.bytes_reused
            );
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&cache);
        return;
    }
    let (mut best_full, mut best_win, mut best_hit, mut best_raw) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut best_view, mut best_view_sum, mut best_view_hit) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut win_bytes, mut hit_bytes, mut view_bytes, mut view_hit_bytes) = (0, 0, 0, 0);
    for i in 0..rounds {
        // Raw: one ranged GET of the slab's bytes (header of 128 bytes).
        let start = 128 + (rows / 2 * 1024 * 8) as u64;
        let t = Instant::now();
        let b = rt
            .block_on(raw.get_range(&OPath::from("raw/win.npy"), start..start + slab_bytes))
            .unwrap();
        best_raw = best_raw.min(t.elapsed());
        assert_eq!(b.len() as u64, slab_bytes);
        drop(b);
        // A node with nothing cached: the window.
        let (s, cache) = fresh("Win", i);
        let t = Instant::now();
        let w = s.read_window::<f64>("win", &slab).unwrap();
        best_win = best_win.min(t.elapsed());
        assert_eq!(w[[0, 1]], first);
        win_bytes = bytes_down(&s);
        // The same window again: the window cache.
        let t = Instant::now();
        let again = s.read_window::<f64>("win", &slab).unwrap();
        best_hit = best_hit.min(t.elapsed());
        assert_eq!(again, w);
        hit_bytes = bytes_down(&s) - win_bytes;
        drop(s);
        let _ = std::fs::remove_dir_all(&cache);
        // Another node with nothing cached: the window as a view (mapped,
        // then every element read), and the same view again.
        let (s, cache) = fresh("View", i);
        let t = Instant::now();
        let v = s.map_window::<f64>("win", &slab).unwrap();
        best_view = best_view.min(t.elapsed());
        let sum: f64 = v.sum();
        best_view_sum = best_view_sum.min(t.elapsed());
        assert_eq!(sum, w.sum());
        view_bytes = bytes_down(&s);
        drop(v);
        let t = Instant::now();
        let v = s.map_window::<f64>("win", &slab).unwrap();
        assert_eq!(v.sum(), sum);
        best_view_hit = best_view_hit.min(t.elapsed());
        view_hit_bytes = bytes_down(&s) - view_bytes;
        drop(v);
        drop(s);
        let _ = std::fs::remove_dir_all(&cache);
        // Another node with nothing cached: the first full get.
        let (s, cache) = fresh("Full", i);
        let t = Instant::now();
        let a = s.get::<f64, ndarray::Ix2>("win").unwrap();
        assert_eq!(a.read().unwrap()[[0, 1]], 1.0);
        best_full = best_full.min(t.elapsed());
        drop(a);
        drop(s);
        let _ = std::fs::remove_dir_all(&cache);
    }
    println!(
        "window (1% slab, {n} of {rows} rows) of {mib} MiB: {:.1} ms, {win_bytes} bytes fetched ({:.3}% of the object); \
         raw ranged GET of the slab {:.1} ms (ratio {:.2}x); first full get {:.0} ms ({:.2}% of its time)",
        ms(best_win),
        pct(win_bytes),
        ms(best_raw),
        best_raw.as_secs_f64() / best_win.as_secs_f64(),
        ms(best_full),
        best_win.as_secs_f64() * 100.0 / best_full.as_secs_f64(),
    );
    println!(
        "window after window (cache hit): {:.2} ms, {hit_bytes} bytes fetched ({:.2}% of the first window's time)",
        ms(best_hit),
        best_hit.as_secs_f64() * 100.0 / best_win.as_secs_f64()
    );
    println!(
        "view (map_window) of the same slab: {:.1} ms mapped, {:.1} ms with every element read, {view_bytes} bytes fetched ({:.3}%; {:.2}% of the full get's time); \
         again (cache hit) {:.2} ms with every element read, {view_hit_bytes} bytes fetched",
        ms(best_view),
        ms(best_view_sum),
        pct(view_bytes),
        best_view_sum.as_secs_f64() * 100.0 / best_full.as_secs_f64(),
        ms(best_view_hit),
    );
}
