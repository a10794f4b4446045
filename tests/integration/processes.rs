//! Many processes on one store: readers while a writer runs, writers killed
//! at random, compute-once across processes. Every participant is a
//! separate OS process: this test binary run again on one `#[ignore]`d
//! child test, configured by environment variables.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::{DiskBackedStore, Error};

use crate::common::{in_ci, sha256_hex, temp_files, Rng};

/// A number from the environment, or `ci` under `CI=true`, else `local`.
fn knob(var: &str, ci: u64, local: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if in_ci() { ci } else { local })
}

/// Starts the child test `test` with `env`, its output going to a file next
/// to the store (returned with the child).
fn spawn(test: &str, env: &[(&str, String)], out_dir: &Path, tag: &str) -> (Child, PathBuf) {
    let out_path = out_dir.join(format!("out-{tag}.txt"));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        test,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), out_path)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Appends one line to `path` (`O_APPEND`: lines of several processes never
/// mix).
fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// A value for a writer to publish: its length and contents change with
/// every version, so that a pair torn between two versions shows (a shape
/// disagreeing with the metadata, or bytes no writer logged).
fn value(rng: &mut Rng) -> Array1<f64> {
    let n = 1 + rng.below(3000);
    let base = rng.next() as f64;
    Array1::from_iter((0..n).map(|i| base + i as f64))
}

fn checksum(a: &Array1<f64>) -> String {
    let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
    sha256_hex(&bytes)
}

/// The `key checksum` lines of a log.
fn logged(log: &Path) -> HashSet<(String, String)> {
    read(log)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var(var).ok().map(PathBuf::from)
}

// ---------------------------------------------------------------------------
// 1 writer replacing entries continuously, 4 reader processes.

/// The writer of `readers_see_whole_values_while_a_writer_replaces_entries`:
/// replaces `k0..k15` and adds `n0, n1, ...` until the stop file appears,
/// logging each value's checksum before it publishes it.
#[test]
#[ignore = "run in a child process"]
fn mp_writer_child() {
    let Some(dir) = env_dir("NDOFFLOAD_MP_DIR") else {
        return;
    };
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let log = dir.join("log");
    let mut rng = Rng(std::process::id() as u64);
    let (mut published, mut added) = (0u64, 0u64);
    while !dir.join("stop").exists() {
        let key = if published % 40 == 39 {
            added += 1;
            format!("n{}", added - 1)
        } else {
            format!("k{}", rng.below(16))
        };
        let v = value(&mut rng);
        append_line(&log, &format!("{key} {}", checksum(&v)));
        store.insert_durable(&key, v).unwrap();
        published += 1;
    }
    println!("published={published} added={added}");
}

/// A reader: opens the store read-only once, reads random entries and checks
/// each against the writer's log, refreshing now and then.
#[test]
#[ignore = "run in a child process"]
fn mp_reader_child() {
    let Some(dir) = env_dir("NDOFFLOAD_MP_DIR") else {
        return;
    };
    let store = DiskBackedStore::open_read_only(dir.join("store")).unwrap();
    let log = dir.join("log");
    let mut known = logged(&log);
    let mut rng = Rng(std::process::id() as u64 ^ 0x5eed);
    let (mut reads, mut wrong, mut errors, mut new_reads, mut refreshes) = (0u64, 0, 0, 0, 0);
    let mut keys: Vec<String> = store.keys().iter().map(|k| k.to_string()).collect();
    while !dir.join("stop").exists() {
        if reads % 25 == 0 {
            store.refresh().unwrap();
            refreshes += 1;
            keys = store.keys().iter().map(|k| k.to_string()).collect();
        }
        if keys.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            reads += 1;
            continue;
        }
        let key = keys[rng.below(keys.len())].clone();
        match store.get::<f64, Ix1>(&key).and_then(|h| h.to_owned_array()) {
            Ok(a) => {
                let sum = checksum(&a);
                let pair = (key.clone(), sum);
                if !known.contains(&pair) {
                    known = logged(&log);
                    if !known.contains(&pair) {
                        wrong += 1;
                        eprintln!("wrong value for {key}: {} elements", a.len());
                    }
                }
                if key.starts_with('n') {
                    new_reads += 1;
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("error reading {key}: {e}");
            }
        }
        reads += 1;
    }
    println!(
        "reads={reads} wrong={wrong} errors={errors} new_reads={new_reads} refreshes={refreshes} keys={}",
        keys.len()
    );
}

fn field(out: &str, name: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {out}"))
}

/// Must-show 1: one writer process replaces entries continuously while four
/// reader processes read them; every value read is one the writer logged
/// (never torn, never a header of one value with the metadata of another),
/// no read fails, and the readers see entries added after they opened.
#[test]
fn readers_see_whole_values_while_a_writer_replaces_entries() {
    let secs = knob("NDOFFLOAD_MP_READ_SECS", 30, 3);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    std::fs::create_dir(dir.join("store")).unwrap();
    let env = [("NDOFFLOAD_MP_DIR", dir.display().to_string())];
    let (mut writer, writer_out) = spawn("processes::mp_writer_child", &env, dir, "writer");
    // Let the writer publish a first round before the readers open.
    let start = Instant::now();
    while logged(&dir.join("log")).len() < 20 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let readers: Vec<(Child, PathBuf)> = (0..4)
        .map(|i| {
            spawn(
                "processes::mp_reader_child",
                &env,
                dir,
                &format!("reader{i}"),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    std::fs::write(dir.join("stop"), b"").unwrap();
    let mut totals = (0, 0, 0, 0);
    let mut problems = Vec::new();
    for (mut c, out) in readers {
        let status = c.wait().unwrap();
        let text = read(&out);
        problems.extend(
            text.lines()
                .filter(|l| l.starts_with("error reading") || l.starts_with("wrong value"))
                .map(str::to_owned),
        );
        assert!(status.success(), "reader failed: {text}");
        let line = text
            .lines()
            .find(|l| l.contains("reads="))
            .unwrap_or_else(|| panic!("{text}"));
        totals.0 += field(line, "reads");
        totals.1 += field(line, "wrong");
        totals.2 += field(line, "errors");
        assert!(
            field(line, "new_reads") > 0,
            "a reader never saw an entry added after it opened: {text}"
        );
        totals.3 += field(line, "new_reads");
    }
    assert!(writer.wait().unwrap().success(), "{}", read(&writer_out));
    let w = read(&writer_out);
    let line = w.lines().find(|l| l.contains("published=")).unwrap();
    println!(
        "{secs} s: writer published {} values ({} new keys); 4 readers read {} values ({} of new keys): {} wrong, {} errors",
        field(line, "published"),
        field(line, "added"),
        totals.0,
        totals.3,
        totals.1,
        totals.2
    );
    assert_eq!(
        (totals.1, totals.2),
        (0, 0),
        "torn or wrong values, or errors:\n{}",
        problems.join("\n")
    );
    assert!(totals.0 > 100, "too few reads: {}", totals.0);
}

// ---------------------------------------------------------------------------
// 4 writer processes on overlapping keys, killed at random.

const KILL_KEYS: usize = 8;

/// A writer of `writers_killed_at_random_leave_whole_values`: publishes,
/// batches and removes random keys forever (until killed), logging each
/// value before publishing it. Any failed operation ends it with an error:
/// a staged file of a live writer removed by another's recovery would fail
/// its rename.
#[test]
#[ignore = "run in a child process"]
fn mp_killed_writer_child() {
    let Some(dir) = env_dir("NDOFFLOAD_MP_DIR") else {
        return;
    };
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let log = dir.join("log");
    let mut rng = Rng(std::process::id() as u64 ^ 0xdead);
    loop {
        let key = format!("k{}", rng.below(KILL_KEYS));
        match rng.below(10) {
            0 => {
                store.remove(&key).unwrap();
            }
            1 => {
                let key2 = format!("k{}", rng.below(KILL_KEYS));
                let (a, b) = (value(&mut rng), value(&mut rng));
                append_line(&log, &format!("{key} {}", checksum(&a)));
                append_line(&log, &format!("{key2} {}", checksum(&b)));
                store.insert_batch([(key, a), (key2, b)]).unwrap();
            }
            _ => {
                let v = value(&mut rng);
                append_line(&log, &format!("{key} {}", checksum(&v)));
                store.insert_durable(&key, v).unwrap();
            }
        }
    }
}

/// Must-show 2: four writer processes on overlapping keys are SIGKILLed at
/// random and restarted. A long-lived writer (this process) holds a staged
/// file all along: no recovery ever removes it, and no live writer's
/// operation fails (a removed staged file would fail its rename). After the
/// last kill a writable open leaves no temporary file of a dead writer, and
/// every key holds a whole value some writer logged.
#[test]
fn writers_killed_at_random_leave_whole_values() {
    let kills_wanted = knob("NDOFFLOAD_MP_KILLS", 200, 40);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    let store_dir = dir.join("store");
    let me = DiskBackedStore::open(&store_dir).unwrap();
    let my_id = me
        .writers()
        .unwrap()
        .into_iter()
        .find(|w| w.pid == std::process::id())
        .unwrap()
        .id;
    // A staged file of this live writer, as its publishes name them.
    let sentinel = format!(".ndo.{my_id}-ffff.k0.npy.tmp");
    std::fs::write(store_dir.join(&sentinel), b"staged by a live writer").unwrap();
    let env = [("NDOFFLOAD_MP_DIR", dir.display().to_string())];
    let mut rng = Rng(0x4b1);
    let mut spawned = 0;
    let mut children: Vec<(Child, PathBuf)> = (0..4)
        .map(|_| {
            spawned += 1;
            spawn(
                "processes::mp_killed_writer_child",
                &env,
                dir,
                &format!("w{spawned}"),
            )
        })
        .collect();
    let mut kills = 0;
    let start = Instant::now();
    while kills < kills_wanted {
        std::thread::sleep(Duration::from_millis(20 + rng.below(120) as u64));
        // A writer that ended by itself failed an operation.
        for (c, out) in &mut children {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("a writer ended by itself ({status}): {}", read(out));
            }
        }
        let i = rng.below(children.len());
        children[i].0.kill().unwrap();
        children[i].0.wait().unwrap();
        kills += 1;
        spawned += 1;
        children[i] = spawn(
            "processes::mp_killed_writer_child",
            &env,
            dir,
            &format!("w{spawned}"),
        );
        assert!(
            store_dir.join(&sentinel).exists(),
            "a live writer's staged file was removed (after {kills} kills)"
        );
    }
    for (c, _) in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let elapsed = start.elapsed();
    // The next open recovers what the dead writers left; the live writer's
    // staged file stays.
    let s = DiskBackedStore::open(&store_dir).unwrap();
    let temps = temp_files(&store_dir);
    assert_eq!(temps, [sentinel], "temporary files left");
    assert!(s.incomplete().is_empty(), "{:?}", s.incomplete());
    let log = logged(&dir.join("log"));
    let mut present = 0;
    for k in s.keys() {
        let a = s
            .get::<f64, Ix1>(k.as_str())
            .and_then(|h| h.to_owned_array())
            .unwrap();
        assert!(
            log.contains(&(k.to_string(), checksum(&a))),
            "{k} holds a value no writer logged"
        );
        present += 1;
    }
    let operations = read(&dir.join("log")).lines().count();
    println!(
        "{kills} kills of 4 writer processes in {:.1} s, {operations} values logged, {present} of {KILL_KEYS} keys present and whole, no temporary file of a dead writer left, the live writer's staged file kept",
        elapsed.as_secs_f64()
    );
    drop(s);
    drop(me);
}

// ---------------------------------------------------------------------------
// get_or_compute from 8 processes.

const COMPUTE_KEYS: usize = 16;

fn computed(key: &str) -> Array1<f64> {
    let seed = key
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    Array1::from_iter((0..100).map(|i| (seed + i) as f64))
}

/// A process of `get_or_compute_runs_once_across_processes`: asks for every
/// key (in its own order); each computation appends `key pid` to the count
/// file and takes a while.
#[test]
#[ignore = "run in a child process"]
fn mp_compute_child() {
    let Some(dir) = env_dir("NDOFFLOAD_MP_DIR") else {
        return;
    };
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let counts = dir.join("counts");
    let only = std::env::var("NDOFFLOAD_MP_KEY").ok();
    let hang = std::env::var("NDOFFLOAD_MP_HANG").is_ok();
    let keys: Vec<String> = match &only {
        Some(k) => vec![k.clone()],
        None => {
            let mut rng = Rng(std::process::id() as u64);
            let mut k: Vec<String> = (0..COMPUTE_KEYS).map(|i| format!("c{i}")).collect();
            for i in (1..k.len()).rev() {
                k.swap(i, rng.below(i + 1));
            }
            k
        }
    };
    for key in keys {
        let a = store
            .get_or_compute::<f64, Ix1, _>(&key, || {
                append_line(&counts, &format!("{key} {}", std::process::id()));
                if hang {
                    // Killed by the parent while computing.
                    std::thread::sleep(Duration::from_secs(60));
                }
                std::thread::sleep(Duration::from_millis(30));
                computed(&key)
            })
            .unwrap();
        assert_eq!(a.to_owned_array().unwrap(), computed(&key), "{key}");
    }
    println!("computed all");
}

fn count_lines(path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in read(path).lines() {
        if let Some((k, pid)) = l.split_once(' ') {
            m.entry(k.to_owned()).or_default().push(pid.to_owned());
        }
    }
    m
}

/// Must-show 3: eight processes call `get_or_compute` on the same sixteen
/// keys: each key is computed exactly once (counted in a file appended with
/// `O_APPEND`) and every process gets its value. Then a process computing a
/// key is killed: a waiting process computes it.
#[test]
fn get_or_compute_runs_once_across_processes() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    std::fs::create_dir(dir.join("store")).unwrap();
    let env = vec![("NDOFFLOAD_MP_DIR", dir.display().to_string())];
    let children: Vec<(Child, PathBuf)> = (0..8)
        .map(|i| spawn("processes::mp_compute_child", &env, dir, &format!("c{i}")))
        .collect();
    for (mut c, out) in children {
        assert!(c.wait().unwrap().success(), "{}", read(&out));
    }
    let counts = count_lines(&dir.join("counts"));
    assert_eq!(counts.len(), COMPUTE_KEYS, "{counts:?}");
    for (k, pids) in &counts {
        assert_eq!(pids.len(), 1, "{k} computed {} times: {pids:?}", pids.len());
    }
    let processes: HashSet<&String> = counts.values().flatten().collect();
    println!(
        "8 processes x {COMPUTE_KEYS} keys: every key computed once, by {} different processes",
        processes.len()
    );

    // A computing process killed mid-way releases the key.
    let mut env_hang = env.clone();
    env_hang.push(("NDOFFLOAD_MP_KEY", "z".into()));
    env_hang.push(("NDOFFLOAD_MP_HANG", "1".into()));
    let (mut hung, _) = spawn("processes::mp_compute_child", &env_hang, dir, "hung");
    let start = Instant::now();
    while !count_lines(&dir.join("counts")).contains_key("z") {
        assert!(start.elapsed() < Duration::from_secs(60), "never computed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut env_wait = env.clone();
    env_wait.push(("NDOFFLOAD_MP_KEY", "z".into()));
    let waiters: Vec<(Child, PathBuf)> = (0..3)
        .map(|i| {
            spawn(
                "processes::mp_compute_child",
                &env_wait,
                dir,
                &format!("z{i}"),
            )
        })
        .collect();
    // The waiters are blocked on the key's compute lock, which names the
    // computing process.
    std::thread::sleep(Duration::from_millis(300));
    let timeout = ndarray_offload::StoreBuilder::new(dir.join("store"))
        .lock_timeout(Some(Duration::from_millis(100)))
        .open()
        .unwrap()
        .get_or_compute::<f64, Ix1, _>("z", || unreachable!("the key is being computed"));
    match timeout {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains(&format!("pid {}", hung.id())), "{holder}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count_lines(&dir.join("counts"))["z"].len(), 1);
    hung.kill().unwrap();
    hung.wait().unwrap();
    for (mut c, out) in waiters {
        assert!(c.wait().unwrap().success(), "{}", read(&out));
    }
    let z = &count_lines(&dir.join("counts"))["z"];
    assert_eq!(
        z.len(),
        2,
        "computed by the killed process, then once more: {z:?}"
    );
    assert_ne!(z[1], hung.id().to_string());
    println!("a computing process killed: the key was computed by a waiting process, once");
}

/// Regression (power loss, "two writers, overlapping keys": a crash between
/// two operations, no temporary file on disk): both writers' registrations
/// were left, unlocked, and the next writable open did not remove them, as
/// recovery ran only when a temporary file was found. Every writable open
/// now removes dead writers' registrations.
#[test]
fn dead_registrations_without_temporaries_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let writers = dir.path().join(ndarray_offload::CRATE_DIR).join("writers");
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert_durable("a", Array1::from(vec![1.0f64, 2.0]))
            .unwrap();
        s.close().unwrap();
    }
    // What a power cut leaves of two writers between their operations:
    // their registrations, no lock held, no temporary file.
    let dead = ["1a-1-kx0.writer", "1a-2-kx0.writer"];
    for n in dead {
        std::fs::write(
            writers.join(n),
            b"{\"id\":\"x\",\"pid\":1,\"host\":\"h\",\"started\":0,\"exclusive\":false}\n",
        )
        .unwrap();
    }
    let s = DiskBackedStore::open(dir.path()).unwrap();
    assert!(s.writers().unwrap().len() == 1, "only this writer is alive");
    let left: Vec<String> = std::fs::read_dir(&writers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| dead.contains(&n.as_str()))
        .collect();
    assert!(left.is_empty(), "dead registrations left: {left:?}");
    assert_eq!(
        s.get::<f64, Ix1>("a").unwrap().to_owned_array().unwrap()[1],
        2.0
    );
    s.close().unwrap();
}
