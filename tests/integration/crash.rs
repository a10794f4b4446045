//! Crash tests with real processes: a child process runs random operations
//! on a store and is killed with SIGKILL at a random moment; the parent
//! reopens the store and checks every key.
//!
//! `NDOFFLOAD_CRASH_KILLS` sets the number of kills (default 200).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ndarray::{Array1, Ix1};
use ndarray_offload::{DiskBackedStore, StoreBuilder};

use crate::common::{sha256_hex, temp_files, Rng};

const KEYS: usize = 6;

fn value(seed: u64, n: u64) -> Array1<i64> {
    let len = ((seed.wrapping_mul(31) ^ n.wrapping_mul(7919)) % 3000) as usize;
    Array1::from_shape_fn(len, |i| {
        (seed as i64) * 1_000_003 + (n as i64) * 7 + i as i64
    })
}

fn digest(a: &Array1<i64>) -> String {
    let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
    format!("{}:{}", a.len(), sha256_hex(&bytes))
}

/// The child: random operations, each announced in a durable log before it
/// starts and confirmed after it returns.
#[test]
#[ignore = "run in a child process by kill_during_random_operations"]
fn crash_child() {
    let (Ok(dir), Ok(seed)) = (
        std::env::var("NDOFFLOAD_CRASH_DIR"),
        std::env::var("NDOFFLOAD_CRASH_SEED"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let dir = Path::new(&dir);
    let store = StoreBuilder::new(dir.join("store"))
        .memory_budget(40_000u64)
        .open()
        .unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    let mut say = |line: String| {
        log.write_all(line.as_bytes()).unwrap();
        log.sync_data().unwrap();
    };
    let mut rng = Rng(seed);
    for n in 0.. {
        let key = format!("k{}", rng.next() % KEYS as u64);
        match rng.next() % 10 {
            0..=4 => {
                let v = value(seed, n);
                say(format!("B {key} {}\n", digest(&v)));
                store.insert_durable(&key, v).unwrap();
            }
            5 => {
                say(format!("B {key} -\n"));
                store.remove(&key).unwrap();
            }
            6 | 7 => {
                // An in-memory insert made durable by a flush (with spills
                // to disk in between, under the small budget).
                let v = value(seed, n);
                say(format!("B {key} {}\n", digest(&v)));
                store.insert(&key, v).unwrap();
                store.flush().unwrap();
            }
            8 => {
                say(format!("B {key} =\n"));
                let _ = store.offload(&key);
            }
            _ => {
                say(format!("B {key} =\n"));
                if let Ok(h) = store.get::<i64, Ix1>(&key) {
                    h.write().unwrap().view_mut().mapv_inplace(|x| x);
                }
                store.flush().unwrap();
            }
        }
        say("E\n".to_string());
    }
}

/// Values each key may hold: the last confirmed one, and the one of an
/// operation that had started but not returned.
fn acceptable(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut confirmed: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: Option<(String, String)> = None;
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["B", key, v] => pending = Some((key.to_string(), v.to_string())),
            ["E"] => {
                if let Some((k, v)) = pending.take() {
                    if v != "=" {
                        confirmed.insert(k, v);
                    }
                }
            }
            _ => {} // a torn last line: the operation had not started
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..KEYS {
        let k = format!("k{i}");
        let mut ok = vec![confirmed.get(&k).cloned().unwrap_or_else(|| "-".into())];
        if let Some((pk, pv)) = &pending {
            if *pk == k && pv != "=" {
                ok.push(pv.clone());
            }
        }
        out.insert(k, ok);
    }
    out
}

#[test]
fn kill_during_random_operations() {
    let kills: u64 = std::env::var("NDOFFLOAD_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x5EED);
    let mut checked_keys = 0;
    let (mut ops_started, mut interrupted) = (0usize, 0usize);
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NDOFFLOAD_CRASH_DIR", dir.path())
            .env("NDOFFLOAD_CRASH_SEED", (round + 1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 60));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        ops_started += log
            .lines()
            .filter(|l| l.starts_with("B "))
            .count()
            .saturating_sub(KEYS);
        interrupted += usize::from(!log.ends_with("E\n"));
        let ok = acceptable(&log);
        let store_dir = dir.path().join("store");
        if !store_dir.exists() {
            continue;
        }
        let store = DiskBackedStore::open(&store_dir).unwrap();
        assert!(
            temp_files(&store_dir).is_empty(),
            "round {round}: temp files survived open"
        );
        assert!(
            store.incomplete().is_empty(),
            "round {round}: {:?}",
            store.incomplete()
        );
        for (k, allowed) in &ok {
            let got = match store.get::<i64, Ix1>(k) {
                Ok(h) => digest(&h.to_owned_array().unwrap()),
                Err(e) if e.is_not_found() => "-".to_string(),
                Err(e) => panic!("round {round}: {k}: {e}"),
            };
            assert!(
                allowed.contains(&got),
                "round {round}: {k} holds {got}, expected one of {allowed:?}\nlog tail: {}",
                log.lines().rev().take(6).collect::<Vec<_>>().join(" | ")
            );
            checked_keys += 1;
        }
        drop(store);
        // The next child continues from this state; rewrite the log so the
        // confirmed values are its starting point.
        let mut fresh = String::new();
        for (k, allowed) in &ok {
            let got = match DiskBackedStore::open_read_only(&store_dir)
                .unwrap()
                .get::<i64, Ix1>(k)
            {
                Ok(h) => digest(&h.to_owned_array().unwrap()),
                Err(_) => "-".into(),
            };
            debug_assert!(allowed.contains(&got));
            fresh.push_str(&format!("B {k} {got}\nE\n"));
        }
        std::fs::write(dir.path().join("log"), fresh).unwrap();
    }
    eprintln!("{kills} kills, {ops_started} operations started, {interrupted} killed mid-operation, {checked_keys} key checks");
    assert!(checked_keys > 0);
    assert!(
        ops_started as u64 >= kills,
        "the children did too little work to test anything"
    );
}

/// Keys of the write-behind crash test.
const BEHIND_KEYS: usize = 8;

/// The child of `kill_during_write_behind_spills`: in-memory inserts under a
/// memory budget small enough that almost every insert hands entries to
/// the background writers, with a `flush` now and then. Each insert is
/// announced in the log before it starts (`I key digest`), each flush too
/// (`F`), and a flush that returned `Ok` is confirmed (`D`); `W` follows an
/// insert that returned while spills were in flight. The log is written
/// with plain `write`s: a killed process loses nothing it wrote.
#[test]
#[ignore = "run in a child process by kill_during_write_behind_spills"]
fn crash_behind_child() {
    let (Ok(dir), Ok(seed)) = (
        std::env::var("NDOFFLOAD_CRASH_DIR"),
        std::env::var("NDOFFLOAD_CRASH_SEED"),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().unwrap();
    let dir = Path::new(&dir);
    let store = StoreBuilder::new(dir.join("store"))
        .memory_budget(30_000u64)
        .write_behind(2, ndarray_offload::ByteSize::new(48_000))
        .open()
        .unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    let mut say = |line: &str| log.write_all(line.as_bytes()).unwrap();
    let mut rng = Rng(seed ^ 0xB0B);
    for n in 0.. {
        if rng.next().is_multiple_of(12) {
            say("F\n");
            store.flush().unwrap();
            say("D\n");
            continue;
        }
        let key = format!("k{}", rng.next() % BEHIND_KEYS as u64);
        let v = value(seed, n);
        say(&format!("I {key} {}\n", digest(&v)));
        store.insert(&key, v).unwrap();
        if store.stats().bytes_in_flight > 0 {
            say("W\n");
        }
    }
}

/// What the write-behind log allows for each key: its last confirmed value
/// (`-`: absent) and every value inserted since (any of them may have been
/// spilled, or been in flight, when the child was killed).
fn behind_acceptable(log: &str) -> BTreeMap<String, Vec<String>> {
    let mut confirmed: BTreeMap<String, String> = BTreeMap::new();
    let mut since: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in log.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["I", key, v] => since
                .entry(key.to_string())
                .or_default()
                .push(v.to_string()),
            ["D"] => {
                // The flush wrote every entry as it was when it was called:
                // the last value inserted before it.
                for (k, vs) in std::mem::take(&mut since) {
                    if let Some(last) = vs.last() {
                        confirmed.insert(k, last.clone());
                    }
                }
            }
            // `F`, `W`, a restart's `C` lines, or a torn last line (the
            // operation had not started).
            ["C", key, v] => {
                confirmed.insert(key.to_string(), v.to_string());
            }
            _ => {}
        }
    }
    (0..BEHIND_KEYS)
        .map(|i| {
            let k = format!("k{i}");
            let mut ok = vec![confirmed.get(&k).cloned().unwrap_or_else(|| "-".into())];
            ok.extend(since.get(&k).into_iter().flatten().cloned());
            (k, ok)
        })
        .collect()
}

#[test]
fn kill_during_write_behind_spills() {
    let kills: u64 = std::env::var("NDOFFLOAD_CRASH_BEHIND_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0xBE41D);
    let (mut checked_keys, mut inserts, mut flushes, mut in_flight) = (0usize, 0, 0, 0);
    let (mut mid_flush, mut changed_since_flush) = (0usize, 0usize);
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_behind_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NDOFFLOAD_CRASH_DIR", dir.path())
            .env("NDOFFLOAD_CRASH_SEED", (round + 1).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(10 + rng.next() % 90));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        inserts += log.lines().filter(|l| l.starts_with("I ")).count();
        flushes += log.lines().filter(|l| *l == "D").count();
        in_flight += log.lines().filter(|l| *l == "W").count();
        mid_flush += usize::from(log.lines().rev().find(|l| *l == "F" || *l == "D") == Some("F"));
        let ok = behind_acceptable(&log);
        let store_dir = dir.path().join("store");
        if !store_dir.exists() {
            continue;
        }
        let store = DiskBackedStore::open(&store_dir).unwrap();
        assert!(
            temp_files(&store_dir).is_empty(),
            "round {round}: temp files survived open: {:?}",
            temp_files(&store_dir)
        );
        assert!(
            store.incomplete().is_empty(),
            "round {round}: {:?}",
            store.incomplete()
        );
        let mut fresh = String::new();
        for (k, allowed) in &ok {
            let got = match store.get::<i64, Ix1>(k) {
                Ok(h) => digest(&h.to_owned_array().unwrap()),
                Err(e) if e.is_not_found() => "-".to_string(),
                Err(e) => panic!("round {round}: {k}: {e}"),
            };
            assert!(
                allowed.contains(&got),
                "round {round}: {k} holds {got}, expected one of {allowed:?}\nlog tail: {}",
                log.lines().rev().take(8).collect::<Vec<_>>().join(" | ")
            );
            changed_since_flush += usize::from(got != allowed[0]);
            checked_keys += 1;
            // The next child starts from what is on disk now.
            fresh.push_str(&format!("C {k} {got}\n"));
        }
        store.close().unwrap();
        std::fs::write(dir.path().join("log"), fresh).unwrap();
    }
    eprintln!(
        "write-behind crash: {kills} kills, {inserts} inserts, {flushes} flushes confirmed, \
         {in_flight} inserts returned with spills in flight, {mid_flush} kills during a flush, \
         {checked_keys} key checks, {changed_since_flush} keys held a value newer than their last flush"
    );
    assert!(checked_keys > 0);
    assert!(
        inserts as u64 >= kills,
        "the children did too little work to test anything"
    );
    assert!(
        in_flight > 0,
        "no insert ever returned with spills in flight"
    );
}
