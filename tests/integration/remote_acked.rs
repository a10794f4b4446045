//! Acknowledged writes of an object-store backend, across processes on a
//! moto server on loopback:
//!
//! * writers killed with SIGKILL while they upload arrays from memory:
//!   every write `insert_durable` acknowledged reads back, from another
//!   node, as that write or a later one of the same key;
//! * another live process's staged write in a shared cache directory is
//!   not there for this handle (neither `contains`, `keys`, `get`,
//!   `set_attrs` nor `remove` sees or touches it) until it commits, or
//!   until its writer is dead (then it is this handle's to commit).
//!
//! `NDOFFLOAD_REMOTE_KILLS` sets the number of kills during an upload
//! (default 50).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array2, ShapeBuilder};
use ndarray_offload::remote::{RemoteOptions, TransferOptions};
use ndarray_offload::{Error, StoreBuilder};

use crate::common::Rng;
use crate::remote::Moto;

/// Parts of 5 MiB (the smallest S3 allows), two in flight: the large
/// arrays below are multipart uploads of three parts.
fn options() -> RemoteOptions {
    let mut o = RemoteOptions::default();
    o.transfer = TransferOptions {
        part_size: 5 << 20,
        concurrency: 2,
    };
    o
}

/// The value of write `gen` of key `key`: element `(i, j)` is
/// `gen << 32 | (i * cols + j)`, in C or Fortran order by `gen`.
fn value(gen: u64, key: usize, large: bool) -> Array2<i64> {
    let (rows, cols) = if large {
        (13 << 10, 96 + key)
    } else {
        (40 + key, 7)
    };
    let f = move |(i, j): (usize, usize)| (gen << 32 | (i * cols + j) as u64) as i64;
    if gen.is_multiple_of(2) {
        Array2::from_shape_fn((rows, cols), f)
    } else {
        Array2::from_shape_fn((rows, cols).f(), f)
    }
}

/// The write a value read back is: its generation, if every element is
/// that generation's (a torn or mixed value is an error).
fn generation(key: &str, a: &Array2<i64>) -> Result<u64, String> {
    let cols = a.ncols();
    let gen = a.first().map(|x| (*x as u64) >> 32).unwrap_or(0);
    for ((i, j), x) in a.indexed_iter() {
        if *x as u64 != gen << 32 | (i * cols + j) as u64 {
            return Err(format!(
                "{key}: element ({i}, {j}) is {x:#x}, not of write {gen}"
            ));
        }
    }
    Ok(gen)
}

fn env_of(moto: &Moto, cmd: &mut Command) {
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
}

fn child(moto: &Moto, test: &str, vars: &[(&str, &std::ffi::OsStr)], err: &Path) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap());
    env_of(moto, &mut cmd);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn wait_for(path: &Path, child: &mut Child, err: &Path) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(s) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(err).unwrap_or_default();
            panic!("child exited early ({s}): {text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A writer: restarts (its first flush commits or abandons what a killed
/// predecessor staged), then writes from memory with `insert_durable`,
/// logging `start KEY GEN` before and `ack KEY GEN` after each write.
#[test]
#[ignore = "run in a child process by sigkill_during_ram_uploads_keeps_every_acknowledged_write"]
fn acked_writer_child() {
    let (Ok(url), Ok(cache), Ok(log), Ok(seed)) = (
        std::env::var("NDOFFLOAD_ACKED_URL"),
        std::env::var("NDOFFLOAD_ACKED_CACHE"),
        std::env::var("NDOFFLOAD_ACKED_LOG"),
        std::env::var("NDOFFLOAD_ACKED_SEED"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let store = StoreBuilder::new(&cache)
        .remote_with(&url, options())
        .open()
        .unwrap();
    let staged = store.pending_writes().len();
    match store.flush() {
        Ok(()) | Err(Error::Conflict { .. }) => {}
        Err(e) => panic!("flush after restart: {e}"),
    }
    let mut log = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    writeln!(log, "ready {staged}").unwrap();
    let mut rng = Rng(seed);
    for n in 0u64.. {
        let key = rng.below(4);
        // Generations unique across rounds: seed in the high bits.
        let gen = seed << 16 | n;
        // Mostly multipart uploads; some single PUTs.
        let a = value(gen, key, rng.below(4) != 0);
        writeln!(log, "start k{key} {gen}").unwrap();
        store.insert_durable(format!("k{key}"), a).unwrap();
        writeln!(log, "ack k{key} {gen}").unwrap();
    }
}

#[test]
fn sigkill_during_ram_uploads_keeps_every_acknowledged_write() {
    let Some(moto) = Moto::start() else { return };
    let kills: usize = std::env::var("NDOFFLOAD_REMOTE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let url = moto.url("acked");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let log = tmp.path().join("log");
    let err = tmp.path().join("err");
    let mut rng = Rng(7);
    // Per key: the last acknowledged generation, and those started after it.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut started: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let (mut mid_upload, mut rounds, mut acks) = (0usize, 0u64, 0usize);
    let (mut early_kills, mut clean_restarts, mut restarts_with_staged) = (0, 0, 0);
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    while mid_upload < kills {
        rounds += 1;
        assert!(
            rounds as usize <= 4 * kills,
            "{mid_upload} kills during an upload in {rounds} rounds"
        );
        std::fs::write(&log, "").unwrap();
        let mut c = child(
            &moto,
            "remote_acked::acked_writer_child",
            &[
                ("NDOFFLOAD_ACKED_URL", url.as_ref()),
                ("NDOFFLOAD_ACKED_CACHE", cache.as_os_str()),
                ("NDOFFLOAD_ACKED_LOG", log.as_os_str()),
                ("NDOFFLOAD_ACKED_SEED", rounds.to_string().as_ref()),
            ],
            &err,
        );
        // Ready once restarted; then killed at a random moment of its
        // writes. One round in five, killed at a random moment from its
        // start: while its restart commits what its predecessor staged.
        let early = rng.below(5) == 0;
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap();
            if text.starts_with("ready") {
                if text.starts_with("ready 0") {
                    clean_restarts += 1;
                } else {
                    restarts_with_staged += 1;
                }
                break;
            }
            if early {
                std::thread::sleep(Duration::from_millis(rng.below(400) as u64));
                early_kills += 1;
                break;
            }
            if let Some(s) = c.try_wait().unwrap() {
                let text = std::fs::read_to_string(&err).unwrap_or_default();
                panic!("writer exited early ({s}): {text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "writer not ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if !early {
            std::thread::sleep(Duration::from_millis(50 + rng.below(700) as u64));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let mut last_started = false;
        for line in text.lines() {
            let mut w = line.split(' ');
            match (w.next(), w.next(), w.next()) {
                (Some("start"), Some(k), Some(g)) => {
                    started
                        .entry(k.to_string())
                        .or_default()
                        .push(g.parse().unwrap());
                    last_started = true;
                }
                (Some("ack"), Some(k), Some(g)) => {
                    let g: u64 = g.parse().unwrap();
                    acked.insert(k.to_string(), g);
                    // Started before this one's ack: superseded.
                    started.get_mut(k).unwrap().retain(|s| *s > g);
                    acks += 1;
                    last_started = false;
                }
                _ => {}
            }
        }
        if last_started {
            mid_upload += 1;
        }
        // Another node (this process, a fresh cache directory) reads every
        // acknowledged key as its last acknowledged write or a later one.
        let reader_cache = tempfile::tempdir().unwrap();
        let reader = StoreBuilder::new(reader_cache.path())
            .remote_with(&url, moto.options())
            .read_only(true)
            .open()
            .unwrap();
        for (k, g) in &acked {
            let a = reader
                .get::<i64, ndarray::Ix2>(k)
                .unwrap_or_else(|e| panic!("round {rounds}: acknowledged {k} write {g}: {e}"))
                .to_owned_array()
                .unwrap();
            let got = generation(k, &a).unwrap_or_else(|e| panic!("round {rounds}: {e}"));
            let later = started.get(k).is_some_and(|s| s.contains(&got));
            assert!(
                got == *g || later,
                "round {rounds}: {k} reads write {got}, acknowledged {g}"
            );
            let outcome = if got == *g { "last ack" } else { "later write" };
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    // The last writer's restart commits or abandons what was staged; then
    // every key reads as its last acknowledged write or a later one, and
    // the store holds nothing unreferenced after a collection.
    let mut o = moto.options();
    o.transfer = options().transfer;
    let store = StoreBuilder::new(&cache)
        .remote_with(&url, o)
        .open()
        .unwrap();
    match store.flush() {
        Ok(()) | Err(Error::Conflict { .. }) => {}
        Err(e) => panic!("final flush: {e}"),
    }
    assert!(store.pending_writes().is_empty());
    let report = store.gc_with_grace(Duration::ZERO).unwrap();
    assert_eq!(report.referenced, store.len());
    eprintln!(
        "{rounds} writers killed: {mid_upload} during a write, {early_kills} during their restart; \
         restarts finding a staged write {restarts_with_staged}, finding none {clean_restarts}; \
         {acks} writes acknowledged; reads of acknowledged keys: {outcomes:?}; gc deleted {}",
        report.deleted
    );
    assert!(acks > 0 && mid_upload >= kills && restarts_with_staged > 0);
}

/// A writer that stages `x` and `y` (writes `GEN + 1` and `GEN + 2`)
/// locally by spilling them, then waits for `go` and flushes (or is
/// killed before).
#[test]
#[ignore = "run in a child process by another_live_process_staged_write_is_not_there_until_committed"]
fn staging_writer_child() {
    let (Ok(url), Ok(cache), Ok(dir), Ok(base)) = (
        std::env::var("NDOFFLOAD_ACKED_URL"),
        std::env::var("NDOFFLOAD_ACKED_CACHE"),
        std::env::var("NDOFFLOAD_ACKED_DIR"),
        std::env::var("NDOFFLOAD_ACKED_GEN"),
    ) else {
        return;
    };
    let dir = Path::new(&dir);
    let base: u64 = base.parse().unwrap();
    let store = StoreBuilder::new(&cache)
        .remote_with(&url, options())
        .memory_budget("1MiB")
        .open()
        .unwrap();
    store.insert("x", value(base + 1, 0, true)).unwrap();
    store.insert("y", value(base + 2, 1, true)).unwrap();
    let start = Instant::now();
    while store.pending_writes().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "not staged");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.join("ready"), "").unwrap();
    while !dir.join("go").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no go");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = store.flush().map_err(|e| e.to_string());
    std::fs::write(dir.join("flushed"), format!("{r:?}")).unwrap();
}

#[test]
fn another_live_process_staged_write_is_not_there_until_committed() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("staging");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = StoreBuilder::new(&cache)
        .remote_with(&url, moto.options())
        .open()
        .unwrap();
    p.insert_durable("y", value(10, 1, false)).unwrap();
    // Round 0: `x` is new, the writer flushes; round 1: both keys are
    // committed, the writer is killed before it flushes.
    for round in 0..2u64 {
        let killed = round == 1;
        let base = 10 * (round + 1);
        let dir = tmp.path().join(format!("round{round}"));
        std::fs::create_dir(&dir).unwrap();
        let err = dir.join("err");
        let mut c = child(
            &moto,
            "remote_acked::staging_writer_child",
            &[
                ("NDOFFLOAD_ACKED_URL", url.as_ref()),
                ("NDOFFLOAD_ACKED_CACHE", cache.as_os_str()),
                ("NDOFFLOAD_ACKED_DIR", dir.as_os_str()),
                ("NDOFFLOAD_ACKED_GEN", base.to_string().as_ref()),
            ],
            &err,
        );
        wait_for(&dir.join("ready"), &mut c, &err);
        // The writer is alive: its staged writes are not this handle's.
        p.refresh().unwrap();
        let (x_before, y_before) = if round == 0 {
            (None, 10)
        } else {
            (Some(11), 12)
        };
        assert_eq!(p.contains("x"), x_before.is_some(), "round {round}");
        assert_eq!(p.keys().iter().any(|k| *k == "x"), x_before.is_some());
        match x_before {
            None => {
                assert!(p.get::<i64, ndarray::Ix2>("x").unwrap_err().is_not_found());
                assert!(matches!(
                    p.set_attrs("x", serde_json::json!({"a": 1})),
                    Err(Error::KeyNotFound { .. })
                ));
                // A removal here must not take the other process's staged
                // files away.
                assert!(!p.remove("x").unwrap());
                assert!(cache.join("x.npy").is_file() && cache.join("x.meta.json").is_file());
            }
            Some(g) => {
                let x = p.get::<i64, ndarray::Ix2>("x").unwrap().to_owned_array();
                assert_eq!(generation("x", &x.unwrap()).unwrap(), g);
            }
        }
        let y = p.get::<i64, ndarray::Ix2>("y").unwrap().to_owned_array();
        assert_eq!(generation("y", &y.unwrap()).unwrap(), y_before);
        if !killed {
            std::fs::write(dir.join("go"), "").unwrap();
            let s = c.wait().unwrap();
            let flushed = std::fs::read_to_string(dir.join("flushed")).unwrap_or_default();
            let text = std::fs::read_to_string(&err).unwrap_or_default();
            assert!(s.success() && flushed == "Ok(())", "{flushed} {text}");
        } else {
            // Dead: its staged writes are read as the entries' values, and
            // committed by this handle's next flush.
            c.kill().unwrap();
            c.wait().unwrap();
            p.refresh().unwrap();
            assert!(p.contains("x"));
            for (k, g) in [("x", base + 1), ("y", base + 2)] {
                let a = p.get::<i64, ndarray::Ix2>(k).unwrap().to_owned_array();
                assert_eq!(generation(k, &a.unwrap()).unwrap(), g);
            }
            assert_eq!(p.pending_writes().len(), 2);
            p.flush().unwrap();
            assert!(p.pending_writes().is_empty());
        }
        // Another node reads what was committed.
        let q_cache = tempfile::tempdir().unwrap();
        let q = StoreBuilder::new(q_cache.path())
            .remote_with(&url, moto.options())
            .read_only(true)
            .open()
            .unwrap();
        for (k, g) in [("x", base + 1), ("y", base + 2)] {
            let a = q.get::<i64, ndarray::Ix2>(k).unwrap().to_owned_array();
            assert_eq!(generation(k, &a.unwrap()).unwrap(), g);
        }
    }
}
