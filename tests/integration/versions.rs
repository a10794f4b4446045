//! Version identity across processes: a file system may give a freed inode
//! number to the next file it creates (ext4 hands out the lowest free one),
//! so an inode number alone never tells two versions of an entry apart.
//! Each test here runs its writers in separate processes, makes the reuse
//! happen (on a fresh ext4 file system when this process may mount one),
//! and asserts that it did before it checks what the store returns.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ndarray::{Array1, ArrayD, Ix1, IxDyn, ShapeBuilder};
use ndarray_offload::__testing::{install, FaultPlan};
use ndarray_offload::{DiskBackedStore, StoreBuilder};
use serde_json::json;

use crate::common::{can_mount, run_child, temp_files};

/// A directory on a file system that reuses freed inode numbers at once: a
/// fresh ext4 image mounted through a loop device when this process may
/// mount (the numbers are then deterministic), else the temporary directory
/// (ext4 on most machines; the tests assert the reuse they need happened).
pub struct ReuseFs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl ReuseFs {
    pub fn new() -> ReuseFs {
        let dir = tempfile::tempdir().unwrap();
        let mut mounted = false;
        if can_mount_ext4() {
            let img = dir.path().join("fs.img");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            let ok = std::fs::File::create(&img)
                .and_then(|f| f.set_len(64 << 20))
                .is_ok()
                && Command::new("mkfs.ext4")
                    .args(["-q", "-F"])
                    .arg(&img)
                    .status()
                    .is_ok_and(|s| s.success())
                && Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&img)
                    .arg(&mnt)
                    .status()
                    .is_ok_and(|s| s.success());
            mounted = ok;
        }
        ReuseFs { dir, mounted }
    }

    pub fn path(&self) -> PathBuf {
        if self.mounted {
            self.dir.path().join("mnt")
        } else {
            self.dir.path().to_path_buf()
        }
    }
}

fn can_mount_ext4() -> bool {
    can_mount()
        && Command::new("mkfs.ext4")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
}

impl Drop for ReuseFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg(self.dir.path().join("mnt"))
                .status();
        }
    }
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// The inode numbers of the version links in `store`.
fn version_links(store: &Path) -> Vec<u64> {
    std::fs::read_dir(store.join(".ndoffload").join("versions"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.metadata().unwrap().ino())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills this process with SIGKILL when it is about to rename a file into
/// `target` (a name in the store): installed on the calling thread, it
/// stops a publish between its two renames.
pub fn die_at_rename_into(target: &'static str) -> ndarray_offload::__testing::PlanGuard {
    install(FaultPlan::fail_at(0).with_hook(move |op, path| {
        if format!("{op:?}") == "Rename" && path.file_name().is_some_and(|n| n == target) {
            let _ = Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }))
}

fn attrs(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

// ---------------------------------------------------------------------------
// 1. Recovery never installs a dead writer's metadata over a live pair.

/// The dead writer: publishes `k` (a value of another dtype and shape, or
/// the live writer's, by `NDOFFLOAD_VA_SAME`) and is killed between its
/// `.npy` rename and its `.meta.json` rename.
#[test]
#[ignore = "run in a child process by the recovery tests"]
fn va_dead_writer_child() {
    let Ok(dir) = std::env::var("NDOFFLOAD_VA_DIR") else {
        return;
    };
    let same = std::env::var("NDOFFLOAD_VA_SAME").is_ok();
    let store = DiskBackedStore::open(&dir).unwrap();
    let who = json!({"who": "dead"});
    let _g = die_at_rename_into("k.meta.json");
    if same {
        store
            .insert_opts(
                "k",
                Array1::<f64>::from_elem(5, -1.0),
                &ndarray_offload::InsertOptions::new().attrs(who),
            )
            .unwrap();
    } else {
        let a = ArrayD::<f32>::from_elem(IxDyn(&[7, 3]), -1.0);
        store
            .insert_opts("k", a, &ndarray_offload::InsertOptions::new().attrs(who))
            .unwrap();
    }
    store.flush().unwrap();
    unreachable!("the writer was to be killed between its renames");
}

fn recovery_case(same: bool) {
    let fs = ReuseFs::new();
    let dir = fs.path().join("store");
    {
        let s = DiskBackedStore::open(&dir).unwrap();
        s.insert_opts(
            "k",
            Array1::<f64>::zeros(5),
            &ndarray_offload::InsertOptions::new().attrs(json!({"who": "first"})),
        )
        .unwrap();
        s.flush().unwrap();
    }
    // The live writer, open before the other writer dies (so its open
    // recovered nothing) and for the rest of the test.
    let live = DiskBackedStore::open(&dir).unwrap();
    let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![("NDOFFLOAD_VA_DIR", dir.as_os_str())];
    if same {
        env.push(("NDOFFLOAD_VA_SAME", std::ffi::OsStr::new("1")));
    }
    let run = run_child(
        "versions::va_dead_writer_child",
        &env,
        Duration::from_secs(120),
    );
    assert_eq!(
        run.status.and_then(|s| s.signal()),
        Some(9),
        "the writer was to die by SIGKILL between its renames: {}",
        run.output
    );
    // Killed between the renames: its `.npy` is in place, its metadata
    // staged.
    let staged: Vec<String> = temp_files(&dir)
        .into_iter()
        .filter(|t| t.ends_with(".k.meta.json.tmp"))
        .collect();
    assert_eq!(staged.len(), 1, "{:?}", temp_files(&dir));
    let dead_ino = ino(&dir.join("k.npy"));

    // The live writer publishes `k` until one of its files is given the
    // inode number of the dead writer's `.npy`, or of one of its own
    // earlier versions (the file system reuses numbers: asserted).
    let mut seen = vec![ino(&dir.join("k.npy"))];
    let (mut dead_reused, mut own_reused) = (false, false);
    let mut last = 0;
    for n in 1..=300u32 {
        let v = Array1::<f64>::from_elem(5, f64::from(n));
        live.insert_opts(
            "k",
            v,
            &ndarray_offload::InsertOptions::new().attrs(json!({"who": "live", "n": n})),
        )
        .unwrap();
        live.flush().unwrap();
        last = n;
        let now = ino(&dir.join("k.npy"));
        dead_reused |= now == dead_ino;
        own_reused |= seen[1..].contains(&now);
        seen.push(now);
        // Recovery is to run while `k.npy` has the dead writer's number (if
        // it ever gets it), or once the file system showed that it reuses
        // numbers.
        if dead_reused || (own_reused && n >= 20) {
            break;
        }
    }
    // The dead writer's file is held by its version link for as long as
    // its leftover may be recovered, so its number cannot be given to a
    // live file; the file system did reuse numbers meanwhile.
    let held = version_links(&dir).contains(&dead_ino);
    assert!(
        own_reused || dead_reused,
        "the file system never reused an inode number: this test proves nothing here ({})",
        fs.path().display()
    );
    assert!(
        dead_reused || held,
        "the dead writer's file was neither reused nor held"
    );
    eprintln!("dead writer's inode reused: {dead_reused}, held by its version link: {held}");

    // A writable open recovers the dead writer's leftovers.
    drop(DiskBackedStore::open(&dir).unwrap());
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    let want = Array1::<f64>::from_elem(5, f64::from(last));
    let want_attrs = attrs(json!({"who": "live", "n": last}));
    for s in [
        StoreBuilder::new(&dir).read_only(true).open().unwrap(),
        live.clone(),
    ] {
        s.refresh().unwrap();
        let got = s.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap();
        assert_eq!(got, want);
        assert_eq!(s.info("k").unwrap().attrs, want_attrs);
        let d = s.read_dyn("k").unwrap();
        assert_eq!(d.shape(), &[5]);
    }
    // Nothing of the dead writer is left to recover later.
    let held_after = version_links(&dir).contains(&dead_ino);
    assert!(!held_after, "the dead writer's version link was not swept");
}

#[test]
fn recovery_keeps_a_live_pair_when_a_dead_writer_changed_dtype_and_shape() {
    recovery_case(false);
}

#[test]
fn recovery_keeps_a_live_pairs_attributes_when_a_dead_writer_had_the_same_shape() {
    recovery_case(true);
}

// ---------------------------------------------------------------------------
// 2. `refresh` sees a replacement whose file reuses the inode number.

/// Replaces `k` with `f32` values of shape (3, 4) until `k.npy` has the
/// inode number `NDOFFLOAD_VB_INO`; exits with 0 if it got it, 3 if not.
#[test]
#[ignore = "run in a child process by refresh_sees_a_replacement_that_reuses_the_inode_number"]
fn vb_writer_child() {
    let (Ok(dir), Ok(target)) = (
        std::env::var("NDOFFLOAD_VB_DIR"),
        std::env::var("NDOFFLOAD_VB_INO"),
    ) else {
        return;
    };
    let target: u64 = target.parse().unwrap();
    let dir = PathBuf::from(dir);
    let store = DiskBackedStore::open(&dir).unwrap();
    for n in 1..=300u32 {
        let a = ndarray::Array2::<f32>::from_elem((3, 4), n as f32);
        store
            .insert_opts(
                "k",
                a,
                &ndarray_offload::InsertOptions::new().attrs(json!({"gen": n})),
            )
            .unwrap();
        store.flush().unwrap();
        if ino(&dir.join("k.npy")) == target {
            println!("reused at gen {n}");
            std::fs::write(dir.join("gen"), n.to_string()).unwrap();
            return;
        }
    }
    std::process::exit(3);
}

#[test]
fn refresh_sees_a_replacement_that_reuses_the_inode_number() {
    let fs = ReuseFs::new();
    let dir = fs.path().join("store");
    {
        let s = DiskBackedStore::open(&dir).unwrap();
        s.insert_opts(
            "k",
            Array1::<f64>::zeros(100),
            &ndarray_offload::InsertOptions::new().attrs(json!({"gen": 0})),
        )
        .unwrap();
        s.insert("other", Array1::<f64>::ones(100)).unwrap();
        s.flush().unwrap();
    }
    for writable in [false, true] {
        let reader = StoreBuilder::new(&dir)
            .read_only(!writable)
            .memory_budget(1000u64)
            .open()
            .unwrap();
        // Read the entry, then let the budget take it from memory (no map,
        // no file held: its inode number is free once another process
        // replaces it).
        let first = reader.get_dyn("k").unwrap().to_owned_array().unwrap();
        let _ = reader.get_dyn("other").unwrap().to_owned_array().unwrap();
        let old = ino(&dir.join("k.npy"));
        let run = run_child(
            "versions::vb_writer_child",
            &[
                ("NDOFFLOAD_VB_DIR", dir.as_os_str()),
                ("NDOFFLOAD_VB_INO", std::ffi::OsStr::new(&old.to_string())),
            ],
            Duration::from_secs(120),
        );
        assert!(
            run.ok(),
            "the writer never got the old inode number back: {}",
            run.output
        );
        assert_eq!(ino(&dir.join("k.npy")), old, "the inode number was reused");
        let gen: u32 = std::fs::read_to_string(dir.join("gen"))
            .unwrap()
            .parse()
            .unwrap();
        reader.refresh().unwrap();
        let got = reader.get_dyn("k").unwrap().to_owned_array().unwrap();
        assert_ne!(got.dtype(), first.dtype());
        assert_eq!(got.dtype(), "<f4");
        assert_eq!(got.shape(), &[3, 4]);
        let a = got.into_array::<f64>().unwrap();
        assert!(a.iter().all(|&x| x == f64::from(gen)));
        assert_eq!(reader.info("k").unwrap().attrs, attrs(json!({"gen": gen})));
        let typed = reader.get::<f32, ndarray::Ix2>("k").unwrap();
        assert_eq!(typed.read().unwrap()[[2, 3]], gen as f32);
        drop(typed);
        drop(reader);
        // The next round starts from a value of the first kind again.
        let s = DiskBackedStore::open(&dir).unwrap();
        s.insert_opts(
            "k",
            Array1::<f64>::zeros(100),
            &ndarray_offload::InsertOptions::new().attrs(json!({"gen": 0})),
        )
        .unwrap();
        s.flush().unwrap();
    }
}

// ---------------------------------------------------------------------------
// 3. Untyped reads while another process changes the entry's dtype.

/// The value of generation `g`: its dtype, shape and layout follow from
/// `g`, and every element is `g`.
pub fn mixed_value(g: u64) -> (String, ArrayD<f64>, bool) {
    let shapes: [&[usize]; 3] = [&[1000], &[37, 11], &[5, 3, 7]];
    let shape = shapes[(g / 4 % 3) as usize];
    let fortran = g / 12 % 2 == 1;
    let dtype = ["<f4", "<f8", "<i2", "|u1"][(g % 4) as usize];
    let a = if fortran {
        ArrayD::from_elem(IxDyn(shape).f(), (g % 200) as f64)
    } else {
        ArrayD::from_elem(IxDyn(shape), (g % 200) as f64)
    };
    (dtype.to_owned(), a, fortran)
}

/// Inserts generation `g` of `key` with attributes naming it.
pub fn insert_mixed(store: &DiskBackedStore, key: &str, g: u64) {
    let (dtype, a, _) = mixed_value(g);
    let at = json!({"gen": g, "dtype": dtype, "shape": a.shape()});
    match dtype.as_str() {
        "<f4" => store.insert_opts(
            key,
            a.mapv(|x| x as f32),
            &ndarray_offload::InsertOptions::new().attrs(at),
        ),
        "<f8" => store.insert_opts(key, a, &ndarray_offload::InsertOptions::new().attrs(at)),
        "<i2" => store.insert_opts(
            key,
            a.mapv(|x| x as i16),
            &ndarray_offload::InsertOptions::new().attrs(at),
        ),
        _ => store.insert_opts(
            key,
            a.mapv(|x| x as u8),
            &ndarray_offload::InsertOptions::new().attrs(at),
        ),
    }
    .unwrap();
}

/// Checks an untyped read: a dtype and a shape of one generation, and its
/// elements all that generation's.
pub fn check_mixed(d: &ndarray_offload::DynArray) -> Result<(), String> {
    let dtype = d.dtype();
    let shape = d.shape().to_vec();
    let a = d
        .clone()
        .into_array::<f64>()
        .ok_or_else(|| format!("{dtype} does not widen to f64"))?;
    let first = a.iter().next().copied().unwrap_or(0.0);
    let ok = (0..1200u64).any(|g| {
        let (dt, v, _) = mixed_value(g);
        dt == dtype && v.shape() == shape.as_slice() && (g % 200) as f64 == first
    });
    if !ok || a.iter().any(|&x| x != first) {
        return Err(format!(
            "torn or foreign value: {dtype} {shape:?} first {first}"
        ));
    }
    Ok(())
}

/// Replaces `k` with values of changing dtype, shape and layout until the
/// file `stop` appears.
#[test]
#[ignore = "run in a child process by untyped_reads_never_fail_while_another_process_changes_the_dtype"]
fn vc_writer_child() {
    let Ok(dir) = std::env::var("NDOFFLOAD_VC_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let mut g = 1;
    while !dir.join("stop").exists() {
        insert_mixed(&store, "k", g);
        store.flush().unwrap();
        g += 1;
    }
    println!("generations={g}");
}

#[test]
fn untyped_reads_never_fail_while_another_process_changes_the_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    {
        let s = DiskBackedStore::open(dir.join("store")).unwrap();
        insert_mixed(&s, "k", 0);
        s.flush().unwrap();
    }
    let d2 = dir.clone();
    let writer = std::thread::spawn(move || {
        run_child(
            "versions::vc_writer_child",
            &[("NDOFFLOAD_VC_DIR", d2.as_os_str())],
            Duration::from_secs(120),
        )
    });
    let store_dir = dir.join("store");
    let run_for = Duration::from_secs(4);
    let results: Vec<(u64, Vec<String>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..3)
            .map(|mode| {
                let store_dir = &store_dir;
                sc.spawn(move || {
                    let (mut reads, mut errors) = (0u64, Vec::new());
                    let start = Instant::now();
                    let long = StoreBuilder::new(store_dir).read_only(true).open().unwrap();
                    while start.elapsed() < run_for {
                        let r = match mode {
                            // A fresh handle: `get_dyn` and a read.
                            0 => StoreBuilder::new(store_dir)
                                .read_only(true)
                                .open()
                                .and_then(|s| s.get_dyn("k")?.to_owned_array()),
                            // A fresh handle: `read_dyn`.
                            1 => StoreBuilder::new(store_dir)
                                .read_only(true)
                                .open()
                                .and_then(|s| s.read_dyn("k")),
                            // One handle, refreshed before each read.
                            _ => long.refresh().and_then(|()| long.read_dyn("k")),
                        };
                        reads += 1;
                        match r {
                            Ok(d) => {
                                if let Err(e) = check_mixed(&d) {
                                    errors.push(e);
                                }
                            }
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (reads, errors)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::fs::write(dir.join("stop"), b"").unwrap();
    let run = writer.join().unwrap();
    assert!(run.ok(), "{}", run.output);
    for (mode, (reads, errors)) in results.iter().enumerate() {
        eprintln!("reader {mode}: {reads} reads, {} errors", errors.len());
        assert!(*reads > 20, "reader {mode} read {reads} times only");
        assert!(
            errors.is_empty(),
            "reader {mode}: {} of {reads} reads failed, first: {}",
            errors.len(),
            errors[0]
        );
    }
}

// ---------------------------------------------------------------------------
// Many processes, values of changing dtype, shape and layout.

const MIXED_KEYS: u64 = 6;

/// Seconds the reader test runs: 60 in CI, `NDOFFLOAD_VD_SECS` or 8 here.
fn mixed_secs() -> u64 {
    std::env::var("NDOFFLOAD_VD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if crate::common::in_ci() { 60 } else { 8 })
}

/// Checks that `d` is generation `gen` exactly (dtype, shape, elements).
fn is_generation(d: &ndarray_offload::DynArray, gen: u64) -> Result<(), String> {
    let (dtype, want, _) = mixed_value(gen);
    if d.dtype() != dtype || d.shape() != want.shape() {
        return Err(format!(
            "gen {gen}: read {} {:?}, expected {dtype} {:?}",
            d.dtype(),
            d.shape(),
            want.shape()
        ));
    }
    let a = d.clone().into_array::<f64>().unwrap();
    if a != want {
        return Err(format!("gen {gen}: elements of another generation (torn)"));
    }
    Ok(())
}

fn gen_of(store: &DiskBackedStore, key: &str) -> Result<u64, String> {
    store
        .info(key)
        .map_err(|e| e.to_string())?
        .attrs
        .get("gen")
        .and_then(|g| g.as_u64())
        .ok_or_else(|| format!("{key}: no gen attribute"))
}

/// The writer of the reader test: replaces `m0..m5` with generations of
/// changing dtype, shape and layout until `stop` appears.
#[test]
#[ignore = "run in a child process by mixed_replacements_one_writer_four_reader_processes"]
fn vd_writer_child() {
    let Ok(dir) = std::env::var("NDOFFLOAD_VD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let mut g = MIXED_KEYS;
    while !dir.join("stop").exists() {
        insert_mixed(&store, &format!("m{}", g % MIXED_KEYS), g);
        if g.is_multiple_of(3) {
            store.flush().unwrap();
        }
        g += 1;
    }
    store.flush().unwrap();
    println!("generations={g}");
}

/// A reader of the reader test (`NDOFFLOAD_VD_MODE`: typed, dyn, read_dyn
/// or get_as): one read-only handle, refreshed every few reads; prints
/// `reads=N errors=M` and the first errors.
#[test]
#[ignore = "run in a child process by mixed_replacements_one_writer_four_reader_processes"]
fn vd_reader_child() {
    let (Ok(dir), Ok(mode)) = (
        std::env::var("NDOFFLOAD_VD_DIR"),
        std::env::var("NDOFFLOAD_VD_MODE"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let store = StoreBuilder::new(dir.join("store"))
        .read_only(true)
        .open()
        .unwrap();
    let (mut reads, mut errors, mut retypes) = (0u64, Vec::<String>::new(), 0u64);
    let mut n = 0u64;
    while !dir.join("stop").exists() {
        n += 1;
        if n.is_multiple_of(4) {
            store.refresh().unwrap();
        }
        let key = format!("m{}", n % MIXED_KEYS);
        let r: Result<(), String> = (|| {
            let d = match mode.as_str() {
                "typed" => {
                    // The dtype this handle knows, then a typed read: a
                    // `DtypeMismatch` is right only when the entry read
                    // really holds another dtype than the one asked for.
                    let dtype = store.info(&key).map_err(|e| e.to_string())?.dtype;
                    let got = match dtype.as_str() {
                        "<f4" => store
                            .get::<f32, IxDyn>(&key)
                            .map(|h| h.to_owned_array().map(|a| a.mapv(f64::from))),
                        "<f8" => store.get::<f64, IxDyn>(&key).map(|h| h.to_owned_array()),
                        "<i2" => store
                            .get::<i16, IxDyn>(&key)
                            .map(|h| h.to_owned_array().map(|a| a.mapv(f64::from))),
                        _ => store
                            .get::<u8, IxDyn>(&key)
                            .map(|h| h.to_owned_array().map(|a| a.mapv(f64::from))),
                    };
                    match got {
                        Ok(a) => {
                            let a = a.map_err(|e| e.to_string())?;
                            let gen = gen_of(&store, &key)?;
                            let (dt, want, _) = mixed_value(gen);
                            if dt != dtype || a != want {
                                return Err(format!("{key}: typed read is not gen {gen}"));
                            }
                            return Ok(());
                        }
                        Err(ndarray_offload::Error::DtypeMismatch {
                            found, expected, ..
                        }) if found != expected => {
                            retypes += 1;
                            return Ok(());
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                "dyn" => store
                    .get_dyn(&key)
                    .and_then(|h| h.to_owned_array())
                    .map_err(|e| e.to_string())?,
                "read_dyn" => store.read_dyn(&key).map_err(|e| e.to_string())?,
                _ => {
                    let a = store
                        .get_as::<f64, IxDyn>(&key)
                        .map_err(|e| e.to_string())?;
                    let gen = gen_of(&store, &key)?;
                    let (_, want, _) = mixed_value(gen);
                    if a != want {
                        return Err(format!("{key}: get_as read is not gen {gen}"));
                    }
                    return Ok(());
                }
            };
            is_generation(&d, gen_of(&store, &key)?)
        })();
        reads += 1;
        if let Err(e) = r {
            errors.push(e);
        }
    }
    println!("reads={reads} errors={} retypes={retypes}", errors.len());
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}

/// The numpy reader of `mixed_replacements_one_writer_four_reader_processes`
/// (arguments: the `python/` folder, the test directory).
const NUMPY_READER: &str = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import ndoffload_store
top = sys.argv[2]
store = os.path.join(top, "store")
reads, errors, n = 0, [], 0
while not os.path.exists(os.path.join(top, "stop")):
    key = "m%d" % (n % 6)
    n += 1
    try:
        a, attrs = ndoffload_store.load(store, key)
        g = attrs["gen"]
        want = np.dtype(attrs["dtype"])
        ok = a.dtype == want and list(a.shape) == list(attrs["shape"]) and bool(np.all(a == g % 200))
        if a.ndim > 1:
            ok = ok and (a.flags.f_contiguous if (g // 12) % 2 == 1 else a.flags.c_contiguous)
        if not ok:
            errors.append("%s: gen %d read as %s %s" % (key, g, a.dtype, a.shape))
        del a
    except Exception as e:
        errors.append("%s: %r" % (key, e))
    reads += 1
print("reads=%d errors=%d" % (reads, len(errors)))
for e in errors[:5]:
    print("error:", e)
"#;

fn field(out: &str, name: &str) -> Option<u64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

#[test]
fn mixed_replacements_one_writer_four_reader_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    {
        let s = DiskBackedStore::open(dir.join("store")).unwrap();
        for g in 0..MIXED_KEYS {
            insert_mixed(&s, &format!("m{g}"), g);
        }
        s.flush().unwrap();
    }
    let secs = mixed_secs();
    let timeout = Duration::from_secs(secs + 120);
    let spawn = |test: &'static str, mode: &'static str| {
        let d = dir.clone();
        std::thread::spawn(move || {
            run_child(
                test,
                &[
                    ("NDOFFLOAD_VD_DIR", d.as_os_str()),
                    ("NDOFFLOAD_VD_MODE", std::ffi::OsStr::new(mode)),
                ],
                timeout,
            )
        })
    };
    let writer = spawn("versions::vd_writer_child", "");
    let readers: Vec<_> = ["typed", "dyn", "read_dyn", "get_as"]
        .into_iter()
        .map(|m| (m, spawn("versions::vd_reader_child", m)))
        .collect();
    // A numpy reader the documented way (`python/ndoffload_store.py`).
    let numpy = crate::common::numpy_python().map(|py| {
        let pydir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        Command::new(py)
            .arg("-c")
            .arg(NUMPY_READER)
            .arg(&pydir)
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    std::thread::sleep(Duration::from_secs(secs));
    std::fs::write(dir.join("stop"), b"").unwrap();
    if let Some(np) = numpy {
        let out = np.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "numpy reader: {text}");
        let (reads, errors) = (field(&text, "reads").unwrap_or(0), field(&text, "errors"));
        eprintln!("numpy reader: reads={reads} errors={errors:?}");
        assert!(reads > 50, "numpy reader: {text}");
        assert_eq!(errors, Some(0), "numpy reader: {text}");
    }
    let w = writer.join().unwrap();
    assert!(w.ok(), "writer: {}", w.output);
    eprintln!("writer: generations={:?}", field(&w.output, "generations"));
    for (mode, r) in readers {
        let r = r.join().unwrap();
        assert!(r.ok(), "{mode} reader: {}", r.output);
        let reads = field(&r.output, "reads").unwrap_or(0);
        let errors = field(&r.output, "errors").unwrap_or(u64::MAX);
        eprintln!(
            "{mode} reader: reads={reads} errors={errors} retypes={:?}",
            field(&r.output, "retypes")
        );
        assert!(reads > 50, "{mode} reader read {reads} times: {}", r.output);
        assert_eq!(errors, 0, "{mode} reader: {}", r.output);
    }
}

// ---------------------------------------------------------------------------
// Four writers SIGKILLed at random, values of changing dtype and shape.

/// A writer of `four_writers_killed_with_mixed_values`: publishes
/// generations `NDOFFLOAD_VE_ID * 10^9 + n` of random keys, logging each
/// before it starts (`start`) and after it returned (`done`).
#[test]
#[ignore = "run in a child process by four_writers_killed_with_mixed_values"]
fn ve_writer_child() {
    use std::io::Write;
    let (Ok(dir), Ok(id)) = (
        std::env::var("NDOFFLOAD_VE_DIR"),
        std::env::var("NDOFFLOAD_VE_ID"),
    ) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let id: u64 = id.parse().unwrap();
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    let mut rng = crate::common::Rng(id ^ u64::from(std::process::id()) << 20);
    for n in 0.. {
        let key = format!("w{}", rng.below(4));
        let gen = id * 1_000_000_000 + u64::from(std::process::id()) * 10_000 + n;
        log.write_all(format!("start {key} {gen}\n").as_bytes())
            .unwrap();
        insert_mixed(&store, &key, gen);
        store.flush().unwrap();
        log.write_all(format!("done {key} {gen}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn four_writers_killed_with_mixed_values() {
    use std::collections::{BTreeMap, BTreeSet};
    let kills_wanted: u64 = std::env::var("NDOFFLOAD_VE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if crate::common::in_ci() { 200 } else { 60 });
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    drop(DiskBackedStore::open(dir.join("store")).unwrap());
    let exe = std::env::current_exe().unwrap();
    let start = |id: u64| {
        Command::new(&exe)
            .args([
                "versions::ve_writer_child",
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NDOFFLOAD_VE_DIR", &dir)
            .env("NDOFFLOAD_VE_ID", (id + 1).to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut writers: Vec<_> = (0..4).map(start).collect();
    let mut rng = crate::common::Rng(0x005e_ed7e);
    let mut kills = 0;
    while kills < kills_wanted {
        std::thread::sleep(Duration::from_millis(5 + rng.below(40) as u64));
        let i = rng.below(4);
        writers[i].kill().unwrap();
        let status = writers[i].wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "writer {i} ended by itself: {status:?}"
        );
        kills += 1;
        writers[i] = start(i as u64);
    }
    for mut w in writers {
        let _ = w.kill();
        let _ = w.wait();
    }
    // Every key holds a generation some writer completed or was
    // completing, whole, with its own attributes.
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    let mut started: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut done = 0;
    for l in log.lines() {
        let p: Vec<&str> = l.split(' ').collect();
        if p.len() == 3 {
            if p[0] == "done" {
                done += 1;
            }
            if let Ok(g) = p[2].parse() {
                started.entry(p[1].to_owned()).or_default().insert(g);
            }
        }
    }
    let store = DiskBackedStore::open(dir.join("store")).unwrap();
    assert!(store.incomplete().is_empty(), "{:?}", store.incomplete());
    assert!(temp_files(&dir.join("store")).is_empty());
    for (key, gens) in &started {
        let Ok(d) = store.read_dyn(key) else {
            panic!("{key}: unreadable: {:?}", store.read_dyn(key).err());
        };
        let gen = gen_of(&store, key).unwrap();
        assert!(gens.contains(&gen), "{key}: gen {gen} was never written");
        is_generation(&d, gen).unwrap();
    }
    drop(store);
    // One version link per key is left, each of its key's current version.
    let links = std::fs::read_dir(dir.join("store/.ndoffload/versions"))
        .unwrap()
        .count();
    assert_eq!(links, started.len());
    eprintln!(
        "{kills} kills, {done} completed publishes, {} keys",
        started.len()
    );
}

// ---------------------------------------------------------------------------
// What else could be at the names of the version links.

/// A symbolic link, a FIFO or a regular file at `.ndoffload/versions`, and a
/// FIFO, a directory or a symbolic link at an entry's version link: a
/// writable open is refused naming the folder (nothing is followed or
/// created through it), a read-only open reads every entry, whole, by the
/// header rule, and nothing hangs.
#[test]
fn hostile_files_at_the_version_links_are_never_followed() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    for what in ["symlink", "fifo", "file"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let s = DiskBackedStore::open(&dir).unwrap();
            s.insert_durable("k", Array1::<f64>::from_elem(4, 2.0))
                .unwrap();
        }
        let versions = dir.join(".ndoffload").join("versions");
        std::fs::remove_dir_all(&versions).unwrap();
        match what {
            "symlink" => symlink(outside.path(), &versions).unwrap(),
            "fifo" => assert!(Command::new("mkfifo")
                .arg(&versions)
                .status()
                .unwrap()
                .success()),
            _ => std::fs::write(&versions, b"x").unwrap(),
        }
        let run = Instant::now();
        let err = DiskBackedStore::open(&dir).unwrap_err();
        assert!(err.to_string().contains("versions"), "{what}: {err}");
        let r = StoreBuilder::new(&dir).read_only(true).open().unwrap();
        let a = r.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap();
        assert_eq!(a, Array1::<f64>::from_elem(4, 2.0), "{what}");
        assert!(run.elapsed() < Duration::from_secs(30), "{what}: too slow");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
    // At the link's own name.
    for what in ["fifo", "dir", "symlink"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let s = DiskBackedStore::open(&dir).unwrap();
        s.insert_durable("k", Array1::<f64>::from_elem(4, 3.0))
            .unwrap();
        let versions = dir.join(".ndoffload").join("versions");
        let link = std::fs::read_dir(&versions)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::remove_file(&link).unwrap();
        match what {
            "fifo" => assert!(Command::new("mkfifo")
                .arg(&link)
                .status()
                .unwrap()
                .success()),
            "dir" => std::fs::create_dir(&link).unwrap(),
            _ => symlink(dir.join("k.npy"), &link).unwrap(),
        }
        let r = StoreBuilder::new(&dir).read_only(true).open().unwrap();
        let a = r.read_dyn("k").unwrap().into_array::<f64>().unwrap();
        assert!(a.iter().all(|&x| x == 3.0), "{what}");
        // The next publish of the key replaces the version; a later open
        // leaves what is not a regular file alone.
        s.insert_durable("k", Array1::<f64>::from_elem(4, 5.0))
            .unwrap();
        drop(s);
        let s = DiskBackedStore::open(&dir).unwrap();
        let a = s.get::<f64, Ix1>("k").unwrap().to_owned_array().unwrap();
        assert_eq!(a, Array1::<f64>::from_elem(4, 5.0), "{what}");
    }
}
