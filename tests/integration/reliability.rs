//! The reliability suite: what the store promises, checked against a model
//! and against hostile input.
//!
//! * `model_*`: random operation sequences (inserts, durable and batched
//!   inserts, replacements, removals, offloads, flushes, reads, writes
//!   through handles, handles kept across replacements, close and reopen,
//!   small memory budgets) run against a plain map; store, files on disk and
//!   model must agree after every step.
//! * `corpus_*`: malformed stores and files, each refused with its own typed
//!   error, without a panic, without changing the store's files and without
//!   touching anything outside the store directory.
//! * `random_*`: random bytes and random mutations of valid files as `.npy`,
//!   as `.meta.json` and as a standalone `.npy`: any result but a panic or
//!   an abort.
//! * `concurrent_*`: eight threads of mixed operations under a small budget:
//!   no deadlock (a watchdog aborts the run), no lost entry, consistent
//!   statistics.
//!
//! Environment variables for longer runs:
//!
//! * `NDOFFLOAD_PROPTEST_CASES`: cases of every property test here
//!   (defaults: 64 for the model, 256 for the random-bytes tests);
//! * `NDOFFLOAD_CONCURRENCY_SECS`: duration of the concurrency test
//!   (default 2).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ndarray::{arr0, Array, Array0, Array1, Array2, Dimension, Ix0, Ix1, Ix2, IxDyn, ShapeBuilder};
use ndarray_npy::WriteNpyExt;
use ndarray_offload::inspect::{inspect_pack, inspect_store, InspectOptions};
use ndarray_offload::pack::{PackReader, PackSet, PackWriter};
use ndarray_offload::{
    ArrayState, CacheConfig, ConfigOverrides, DiskBackedArray, DiskBackedStore, Element, Error,
    LoadMode, StoreBuilder, StoredArray, LOCK_FILE,
};
use proptest::prelude::*;

use crate::common::{run_child, temp_files, Rng};

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Cases for a property test: `NDOFFLOAD_PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    env_or("NDOFFLOAD_PROPTEST_CASES", default)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking a failing store run is slow; a failure prints its case.
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// The name of an error's variant, for assertions and messages.
fn variant(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "NotFound",
        Error::PermissionDenied { .. } => "PermissionDenied",
        Error::DiskFull { .. } => "DiskFull",
        Error::Io { .. } => "Io",
        Error::Truncated { .. } => "Truncated",
        Error::Corrupt { .. } => "Corrupt",
        Error::DtypeMismatch { .. } => "DtypeMismatch",
        Error::DimensionMismatch { .. } => "DimensionMismatch",
        Error::Mismatch { .. } => "Mismatch",
        Error::SchemaVersion { .. } => "SchemaVersion",
        Error::UnknownClass { .. } => "UnknownClass",
        Error::InvalidName { .. } => "InvalidName",
        Error::InvalidSize { .. } => "InvalidSize",
        Error::KeyNotFound { .. } => "KeyNotFound",
        Error::Incomplete { .. } => "Incomplete",
        Error::Locked { .. } => "Locked",
        Error::ReadOnly { .. } => "ReadOnly",
        Error::NoFile { .. } => "NoFile",
        Error::InvalidInput { .. } => "InvalidInput",
        Error::Unsupported { .. } => "Unsupported",
        _ => "other",
    }
}

/// What is at a path, without following symbolic links (and without
/// opening anything that is not a regular file: a FIFO would block).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
    Special,
}

/// Every path under `root` (relative) and what it holds. The store's lock
/// file and the crate's folder of process files are left out: a writable
/// open creates them.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel == Path::new(LOCK_FILE) || rel == Path::new(ndarray_offload::CRATE_DIR) {
                continue;
            }
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            let node = if ft.is_symlink() {
                Node::Link(std::fs::read_link(&p).unwrap())
            } else if ft.is_dir() {
                walk(root, &p, out);
                Node::Dir
            } else if ft.is_file() {
                Node::File(std::fs::read(&p).unwrap())
            } else {
                Node::Special
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Aborts the whole test process if it is not dropped within `after`: a
/// deadlocked test must fail, not hang the run.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog(what: &'static str, after: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
            eprintln!(
                "WATCHDOG: {what} did not finish within {after:?}: a deadlock. Aborting the test process."
            );
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// The bytes of `a` as `numpy.save` writes them.
fn npy_of<A: WriteNpyExt>(a: &A) -> Vec<u8> {
    let mut v = Vec::new();
    a.write_npy(&mut v).unwrap();
    v
}

/// Stack size of the threads that read hostile files in the corpus and
/// the random-bytes tests: a parser that recursed once per level of the
/// file's nesting would overflow it within a few dozen levels (an abort of
/// the process, which is why those tests run in child processes).
const SMALL_STACK: usize = 64 * 1024;

/// Runs `f` on a new thread with a [`SMALL_STACK`]-byte stack.
fn on_small_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("small-stack".into())
            .stack_size(SMALL_STACK)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn meta_text(shape: &[u64], dtype: &str) -> String {
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!(
        r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [{}], "dtype": "{dtype}", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}}"#,
        shape.join(", ")
    )
}

// ---------------------------------------------------------------------------
// 1. Model-based property test
// ---------------------------------------------------------------------------

/// Entry names used by the model: a plain one, one that looks like a file
/// name, a hidden one, a non-ASCII one and one with a space.
const KEYS: [&str; 5] = ["a", "b.npy", ".hidden", "\u{fc}ber", "k 1"];

/// A value of one of three element types and shapes.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    /// `i32`, 1-d (possibly empty).
    I(Vec<i32>),
    /// `f64`, 2-d (rows, columns, values in C order; possibly empty).
    F(usize, usize, Vec<f64>),
    /// `bool`, 0-d.
    B(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    I,
    F,
    B,
}

impl Val {
    fn kind(&self) -> Kind {
        match self {
            Val::I(_) => Kind::I,
            Val::F(..) => Kind::F,
            Val::B(_) => Kind::B,
        }
    }

    fn nbytes(&self) -> u64 {
        match self {
            Val::I(v) => 4 * v.len() as u64,
            Val::F(_, _, v) => 8 * v.len() as u64,
            Val::B(_) => 1,
        }
    }

    /// The edit a write makes: `delta` added (or the bool negated).
    fn edited(&self, delta: i32) -> Val {
        match self {
            Val::I(v) => Val::I(v.iter().map(|x| x.wrapping_add(delta)).collect()),
            Val::F(r, c, v) => Val::F(*r, *c, v.iter().map(|x| x + delta as f64).collect()),
            Val::B(b) => Val::B(!b),
        }
    }
}

fn put<T: Element, D: Dimension>(
    s: &DiskBackedStore,
    k: &str,
    a: Array<T, D>,
    durable: bool,
    auto: bool,
) -> ndarray_offload::Result<()> {
    if durable {
        s.insert_durable(k, a)
    } else {
        let o = ConfigOverrides::default().automatic_offloading(auto);
        s.insert_opts(
            k,
            a,
            &ndarray_offload::InsertOptions::new().overrides(o.clone()),
        )
    }
}

fn f_array(r: usize, c: usize, v: &[f64], fortran: bool) -> Array2<f64> {
    let a = Array2::from_shape_vec((r, c), v.to_vec()).unwrap();
    if fortran {
        let mut f = Array2::zeros((r, c).f());
        f.assign(&a);
        f
    } else {
        a
    }
}

fn insert_val(
    s: &DiskBackedStore,
    k: &str,
    v: &Val,
    fortran: bool,
    durable: bool,
    auto: bool,
) -> ndarray_offload::Result<()> {
    match v {
        Val::I(x) => put(s, k, Array1::from(x.clone()), durable, auto),
        Val::F(r, c, x) => put(s, k, f_array(*r, *c, x, fortran), durable, auto),
        Val::B(b) => put(s, k, arr0(*b), durable, auto),
    }
}

/// A typed handle of any of the three kinds.
enum Handle {
    I(StoredArray<i32, Ix1>),
    F(StoredArray<f64, Ix2>),
    B(StoredArray<bool, Ix0>),
}

impl Handle {
    fn get(s: &DiskBackedStore, k: &str, kind: Kind) -> ndarray_offload::Result<Handle> {
        Ok(match kind {
            Kind::I => Handle::I(s.get(k)?),
            Kind::F => Handle::F(s.get(k)?),
            Kind::B => Handle::B(s.get(k)?),
        })
    }

    fn value(&self) -> ndarray_offload::Result<Val> {
        Ok(match self {
            Handle::I(h) => Val::I(h.to_owned_array()?.to_vec()),
            Handle::F(h) => {
                let a = h.to_owned_array()?;
                Val::F(a.nrows(), a.ncols(), a.iter().copied().collect())
            }
            Handle::B(h) => Val::B(h.to_owned_array()?[()]),
        })
    }

    fn edit(&self, delta: i32) -> ndarray_offload::Result<()> {
        match self {
            Handle::I(h) => {
                let mut g = h.write()?;
                g.view_mut().mapv_inplace(|x| x.wrapping_add(delta));
                g.finish()
            }
            Handle::F(h) => {
                let mut g = h.write()?;
                g.view_mut().mapv_inplace(|x| x + delta as f64);
                g.finish()
            }
            Handle::B(h) => {
                let mut g = h.write()?;
                g.view_mut().mapv_inplace(|x| !x);
                g.finish()
            }
        }
    }
}

/// The value of `k` as the files on disk hold it (`None` when neither file
/// exists). Panics on a half pair or files that disagree.
fn disk_val(dir: &Path, k: &str) -> Option<Val> {
    let npy = dir.join(format!("{k}.npy"));
    let meta = dir.join(format!("{k}.meta.json"));
    match (npy.exists(), meta.exists()) {
        (false, false) => return None,
        (true, true) => {}
        other => panic!("{k}: half a pair on disk: (npy, meta) = {other:?}"),
    }
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap())
        .unwrap_or_else(|e| panic!("{k}: metadata is not JSON: {e}"));
    assert_eq!(m["schema_version"], 1, "{k}: {m}");
    assert_eq!(m["lazy_disk_cache_class"], "DiskBackedNDArray", "{k}: {m}");
    let shape: Vec<usize> = m["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let v = match m["dtype"].as_str().unwrap() {
        "<i4" => {
            let a: Array1<i32> = ndarray_npy::read_npy(&npy).unwrap();
            assert_eq!(a.shape(), shape.as_slice(), "{k}");
            Val::I(a.to_vec())
        }
        "<f8" => {
            let a: Array2<f64> = ndarray_npy::read_npy(&npy).unwrap();
            assert_eq!(a.shape(), shape.as_slice(), "{k}");
            Val::F(a.nrows(), a.ncols(), a.iter().copied().collect())
        }
        "|b1" => {
            let a: Array0<bool> = ndarray_npy::read_npy(&npy).unwrap();
            assert_eq!(a.shape(), shape.as_slice(), "{k}");
            Val::B(a[()])
        }
        other => panic!("{k}: unexpected dtype {other}"),
    };
    Some(v)
}

/// The files on disk hold exactly the model: every key's pair, no other
/// pair, no temporary file.
fn assert_disk_is(dir: &Path, model: &BTreeMap<String, Val>, ctx: &str) {
    for (k, v) in model {
        assert_eq!(disk_val(dir, k).as_ref(), Some(v), "{ctx}: {k} on disk");
    }
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".meta.json").map(str::to_owned)
        })
        .collect();
    let expect: BTreeSet<String> = model.keys().cloned().collect();
    assert_eq!(on_disk, expect, "{ctx}: pairs on disk");
    assert!(temp_files(dir).is_empty(), "{ctx}: {:?}", temp_files(dir));
}

#[derive(Clone, Debug)]
enum Op {
    /// Insert into RAM (key, value, Fortran layout, automatic offloading).
    Insert(usize, Val, bool, bool),
    InsertDurable(usize, Val),
    /// One `insert_batch` of `i32` arrays (names may repeat: the last wins).
    InsertBatch(Vec<(usize, Vec<i32>)>),
    /// Replace the n-th existing entry (mod the number of entries).
    Replace(usize, Val),
    Remove(usize),
    Offload(usize),
    OffloadAll,
    Flush,
    /// `get` + read, and `get` with a wrong type.
    Read(usize),
    /// `get` + `write()` (adding the delta), then flush if asked.
    Write(usize, i32, bool),
    /// Keep a handle (its value must never change behind its back).
    Hold(usize),
    /// Drop the n-th kept handle.
    Release(usize),
    /// Write through the n-th kept handle (which may no longer be the
    /// store's entry).
    WriteHeld(usize, i32),
    /// Drop (or `close`) the store and open it again with this budget.
    Reopen(bool, Option<u64>),
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        3 => prop::collection::vec(any::<i32>(), 0..40).prop_map(Val::I),
        2 => (0usize..5, 0usize..4).prop_flat_map(|(r, c)| {
            prop::collection::vec((-4000i32..4000).prop_map(|x| x as f64 / 8.0), r * c)
                .prop_map(move |v| Val::F(r, c, v))
        }),
        1 => any::<bool>().prop_map(Val::B),
    ]
}

fn budget() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        1 => Just(None),
        2 => (0u64..600).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        4 => (k.clone(), val(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(k, v, f, a)| Op::Insert(k, v, f, a)),
        2 => (k.clone(), val()).prop_map(|(k, v)| Op::InsertDurable(k, v)),
        1 => prop::collection::vec((k.clone(), prop::collection::vec(any::<i32>(), 0..20)), 0..4)
            .prop_map(Op::InsertBatch),
        2 => (any::<usize>(), val()).prop_map(|(i, v)| Op::Replace(i, v)),
        2 => k.clone().prop_map(Op::Remove),
        2 => k.clone().prop_map(Op::Offload),
        1 => Just(Op::OffloadAll),
        2 => Just(Op::Flush),
        3 => k.clone().prop_map(Op::Read),
        3 => (k.clone(), -3i32..4, any::<bool>()).prop_map(|(k, d, f)| Op::Write(k, d, f)),
        1 => k.prop_map(Op::Hold),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (any::<usize>(), -3i32..4).prop_map(|(i, d)| Op::WriteHeld(i, d)),
        1 => (any::<bool>(), budget()).prop_map(|(c, b)| Op::Reopen(c, b)),
    ]
}

fn open_store(dir: &Path, budget: Option<u64>) -> DiskBackedStore {
    let mut b = StoreBuilder::new(dir);
    if let Some(n) = budget {
        b = b.memory_budget(n);
    }
    b.open().unwrap()
}

/// A kept handle: the key it was taken for, the generation of that key at
/// the time, and the value it must read.
struct Held {
    key: String,
    gen: u64,
    val: Val,
    handle: Handle,
}

struct Model {
    dir: PathBuf,
    store: Option<DiskBackedStore>,
    budget: Option<u64>,
    vals: BTreeMap<String, Val>,
    /// Bumped whenever a key's entry is replaced by another array (insert,
    /// removal, reopen): handles of an older generation are detached.
    gens: HashMap<String, u64>,
    next_gen: u64,
    held: Vec<Held>,
    auto: BTreeSet<String>,
}

impl Model {
    fn s(&self) -> &DiskBackedStore {
        self.store.as_ref().unwrap()
    }

    fn bump(&mut self, k: &str) {
        self.next_gen += 1;
        self.gens.insert(k.to_owned(), self.next_gen);
    }

    fn gen(&self, k: &str) -> u64 {
        self.gens.get(k).copied().unwrap_or(0)
    }

    fn set(&mut self, k: &str, v: Val, auto: bool) {
        self.bump(k);
        self.vals.insert(k.to_owned(), v);
        if auto {
            self.auto.insert(k.to_owned());
        } else {
            self.auto.remove(k);
        }
    }

    /// A write reached key `k`'s current array: the model and every handle
    /// of the same generation see it.
    fn edited(&mut self, k: &str, delta: i32) {
        let g = self.gen(k);
        let v = self.vals.get_mut(k).unwrap();
        *v = v.edited(delta);
        let v = v.clone();
        for h in &mut self.held {
            if h.key == k && h.gen == g {
                h.val = v.clone();
            }
        }
    }

    fn apply(&mut self, op: &Op, ctx: &str) {
        let dir = self.dir.clone();
        match op {
            Op::Insert(k, v, fortran, auto) => {
                let k = KEYS[*k];
                insert_val(self.s(), k, v, *fortran, false, *auto).unwrap();
                self.set(k, v.clone(), *auto);
            }
            Op::InsertDurable(k, v) => {
                let k = KEYS[*k];
                insert_val(self.s(), k, v, false, true, false).unwrap();
                self.set(k, v.clone(), false);
                assert_eq!(disk_val(&dir, k).as_ref(), Some(v), "{ctx}: durable");
            }
            Op::InsertBatch(items) => {
                let batch: Vec<(&str, Array1<i32>)> = items
                    .iter()
                    .map(|(k, v)| (KEYS[*k], Array1::from(v.clone())))
                    .collect();
                self.s().insert_batch(batch).unwrap();
                let mut touched = BTreeSet::new();
                for (k, v) in items {
                    touched.insert(KEYS[*k]);
                    self.set(KEYS[*k], Val::I(v.clone()), false);
                }
                for k in touched {
                    assert_eq!(
                        disk_val(&dir, k).as_ref(),
                        self.vals.get(k),
                        "{ctx}: batch durable"
                    );
                }
            }
            Op::Replace(i, v) => {
                if self.vals.is_empty() {
                    return;
                }
                let k = self.vals.keys().nth(i % self.vals.len()).unwrap().clone();
                insert_val(self.s(), &k, v, false, false, false).unwrap();
                self.set(&k, v.clone(), false);
            }
            Op::Remove(k) => {
                let k = KEYS[*k];
                let existed = self.s().remove(k).unwrap();
                assert_eq!(existed, self.vals.contains_key(k), "{ctx}");
                self.vals.remove(k);
                self.auto.remove(k);
                self.bump(k);
                assert_eq!(disk_val(&dir, k), None, "{ctx}: removed from disk");
            }
            Op::Offload(k) => {
                let k = KEYS[*k];
                match (self.s().offload(k), self.vals.get(k)) {
                    (Ok(()), Some(v)) => {
                        assert_eq!(disk_val(&dir, k).as_ref(), Some(v), "{ctx}: offloaded");
                        assert_eq!(self.s().info(k).unwrap().state, ArrayState::Offloaded);
                    }
                    (Err(Error::KeyNotFound { .. }), None) => {}
                    (r, v) => panic!("{ctx}: offload gave {r:?} with model {v:?}"),
                }
            }
            Op::OffloadAll => {
                self.s().offload_all().unwrap();
                assert_disk_is(&dir, &self.vals, ctx);
                for k in self.vals.keys() {
                    assert_eq!(
                        self.s().info(k).unwrap().state,
                        ArrayState::Offloaded,
                        "{ctx}: {k}"
                    );
                }
                assert_eq!(self.s().stats().bytes_resident, 0, "{ctx}");
            }
            Op::Flush => {
                self.s().flush().unwrap();
                assert_disk_is(&dir, &self.vals, ctx);
            }
            Op::Read(k) => {
                let k = KEYS[*k];
                match self.vals.get(k).cloned() {
                    Some(v) => {
                        let h = Handle::get(self.s(), k, v.kind()).unwrap();
                        assert_eq!(h.value().unwrap(), v, "{ctx}");
                        // The wrong element type or number of dimensions is
                        // refused, whatever state the entry is in.
                        let (dt, dim) = match v.kind() {
                            Kind::I => (
                                self.s().get::<f64, Ix1>(k).map(drop),
                                self.s().get::<i32, Ix2>(k).map(drop),
                            ),
                            Kind::F => (
                                self.s().get::<f32, Ix2>(k).map(drop),
                                self.s().get::<f64, Ix1>(k).map(drop),
                            ),
                            Kind::B => (
                                self.s().get::<u8, Ix0>(k).map(drop),
                                self.s().get::<bool, Ix1>(k).map(drop),
                            ),
                        };
                        assert!(
                            matches!(dt, Err(Error::DtypeMismatch { .. })),
                            "{ctx}: {dt:?}"
                        );
                        assert!(
                            matches!(dim, Err(Error::DimensionMismatch { .. })),
                            "{ctx}: {dim:?}"
                        );
                    }
                    None => {
                        let r = self.s().get::<i32, Ix1>(k);
                        assert!(matches!(r, Err(Error::KeyNotFound { .. })), "{ctx}: {r:?}");
                    }
                }
            }
            Op::Write(k, delta, flush) => {
                let k = KEYS[*k];
                let Some(kind) = self.vals.get(k).map(Val::kind) else {
                    return;
                };
                Handle::get(self.s(), k, kind)
                    .unwrap()
                    .edit(*delta)
                    .unwrap();
                self.edited(k, *delta);
                if *flush {
                    self.s().flush().unwrap();
                    assert_disk_is(&dir, &self.vals, ctx);
                }
            }
            Op::Hold(k) => {
                let k = KEYS[*k];
                if let Some(v) = self.vals.get(k).cloned() {
                    let handle = Handle::get(self.s(), k, v.kind()).unwrap();
                    let gen = self.gen(k);
                    self.held.push(Held {
                        key: k.to_owned(),
                        gen,
                        val: v,
                        handle,
                    });
                    if self.held.len() > 4 {
                        self.held.remove(0);
                    }
                }
            }
            Op::Release(i) => {
                if !self.held.is_empty() {
                    let i = i % self.held.len();
                    self.held.remove(i);
                }
            }
            Op::WriteHeld(i, delta) => {
                if self.held.is_empty() {
                    return;
                }
                let i = i % self.held.len();
                self.held[i].handle.edit(*delta).unwrap();
                let (k, g) = (self.held[i].key.clone(), self.held[i].gen);
                if self.vals.contains_key(&k) && self.gen(&k) == g {
                    // Still the store's entry: the store sees the edit.
                    self.edited(&k, *delta);
                } else {
                    // A detached handle: only its array changes (which every
                    // handle kept from the same generation shares).
                    for h in &mut self.held {
                        if h.key == k && h.gen == g {
                            h.val = h.val.edited(*delta);
                        }
                    }
                }
            }
            Op::Reopen(close, budget) => {
                let s = self.store.take().unwrap();
                if *close {
                    s.close().unwrap();
                } else {
                    drop(s);
                }
                // Closing (or dropping) wrote everything.
                assert_disk_is(&dir, &self.vals, ctx);
                self.store = Some(open_store(&dir, *budget));
                self.budget = *budget;
                let keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
                for k in keys {
                    self.bump(&k);
                }
            }
        }
    }

    /// Store and model agree: keys, len, contains, values, kept handles,
    /// resident bytes and the budget.
    fn check(&self, ctx: &str) {
        let s = self.s();
        let keys: Vec<String> = s.keys().iter().map(|k| k.to_string()).collect();
        let expect: Vec<String> = self.vals.keys().cloned().collect();
        assert_eq!(keys, expect, "{ctx}: keys");
        assert_eq!(s.len(), self.vals.len(), "{ctx}: len");
        assert_eq!(s.is_empty(), self.vals.is_empty(), "{ctx}");
        for k in KEYS {
            assert_eq!(
                s.contains(k),
                self.vals.contains_key(k),
                "{ctx}: contains {k}"
            );
        }
        assert!(s.incomplete().is_empty(), "{ctx}: {:?}", s.incomplete());
        for (k, v) in &self.vals {
            let info = s.info(k).unwrap();
            assert_eq!(info.nbytes, v.nbytes(), "{ctx}: {k}");
            assert_eq!(
                info.flags.automatic_offloading,
                self.auto.contains(k),
                "{ctx}: {k}"
            );
            let got = Handle::get(s, k, v.kind()).and_then(|h| h.value());
            assert_eq!(got.as_ref().ok(), Some(v), "{ctx}: value of {k}: {got:?}");
        }
        for h in &self.held {
            let got = h.handle.value();
            assert_eq!(
                got.as_ref().ok(),
                Some(&h.val),
                "{ctx}: a handle kept for {} (generation {}) reads {got:?}",
                h.key,
                h.gen
            );
        }
        let resident: u64 = self
            .vals
            .keys()
            .map(|k| s.info(k).unwrap())
            .filter(|i| i.state != ArrayState::Offloaded)
            .map(|i| i.nbytes)
            .sum();
        let st = s.stats();
        assert_eq!(st.bytes_resident, resident, "{ctx}: resident bytes");
        if let Some(b) = self.budget {
            assert!(
                st.bytes_resident <= b,
                "{ctx}: {} bytes resident over a budget of {b}",
                st.bytes_resident
            );
        }
    }
}

fn run_model(ops: &[Op], budget: Option<u64>) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let mut m = Model {
        store: Some(open_store(&dir, budget)),
        dir: dir.clone(),
        budget,
        vals: BTreeMap::new(),
        gens: HashMap::new(),
        next_gen: 0,
        held: Vec::new(),
        auto: BTreeSet::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("step {i} ({op:?})");
        m.apply(op, &ctx);
        m.check(&ctx);
    }
    // The end: close, then the files and a read-only open agree with the
    // model; kept handles still read their values.
    m.store.take().unwrap().close().unwrap();
    assert_disk_is(&dir, &m.vals, "after close");
    let ro = DiskBackedStore::open_read_only(&dir).unwrap();
    for (k, v) in &m.vals {
        let got = Handle::get(&ro, k, v.kind()).and_then(|h| h.value());
        assert_eq!(got.as_ref().ok(), Some(v), "read-only reopen: {k}");
    }
    assert_eq!(ro.len(), m.vals.len());
    for h in &m.held {
        assert_eq!(h.handle.value().ok().as_ref(), Some(&h.val), "{}", h.key);
    }
}

proptest! {
    #![proptest_config(config(cases(64)))]

    /// Random operation sequences against a map.
    #[test]
    fn model_store_agrees_with_a_map(
        ops in prop::collection::vec(op(), 1..50),
        budget in budget(),
    ) {
        run_model(&ops, budget);
    }
}

/// Sequences that once failed or that exercise one promise each; kept as
/// fixed cases so that they run on every test run.
#[test]
fn model_fixed_sequences() {
    use Op::*;
    let i = |v: &[i32]| Val::I(v.to_vec());
    let sequences: Vec<(Vec<Op>, Option<u64>)> = vec![
        // A handle kept across a replacement keeps the old value, also
        // when it was offloaded before the replacement.
        (
            vec![
                Insert(0, i(&[1, 2, 3]), false, false),
                Hold(0),
                OffloadAll,
                InsertDurable(0, i(&[7, 8, 9])),
                Read(0),
            ],
            None,
        ),
        // ... and after a removal, and a write through it changes neither
        // the store nor its files.
        (
            vec![
                Insert(0, i(&[1, 2, 3]), false, true),
                Hold(0),
                OffloadAll,
                InsertDurable(0, i(&[7, 8, 9])),
                WriteHeld(0, 100),
                Flush,
                Remove(0),
                WriteHeld(0, 1),
                InsertDurable(0, i(&[5, 5])),
                WriteHeld(0, 1),
                Reopen(false, None),
            ],
            None,
        ),
        // Handles kept across a reopen.
        (
            vec![
                InsertDurable(1, Val::F(2, 2, vec![1.0, 2.0, 3.0, 4.0])),
                Hold(1),
                Reopen(true, Some(0)),
                Insert(1, Val::F(1, 1, vec![9.0]), true, false),
                Flush,
                WriteHeld(0, 1),
                Read(1),
            ],
            None,
        ),
        // An entry larger than the budget, read through a kept handle after
        // it was evicted, is evicted again when the read ends.
        (
            vec![
                Insert(0, i(&[7; 30]), false, false),
                Hold(0),
                Read(0),
                Read(0),
            ],
            Some(50),
        ),
        // Two handles of one detached entry share its edits.
        (
            vec![
                InsertDurable(3, i(&[0])),
                Hold(3),
                Hold(3),
                Reopen(false, None),
                WriteHeld(0, 1),
            ],
            None,
        ),
        // Everything evicted at once under a zero budget.
        (
            vec![
                Insert(0, i(&[1]), false, false),
                Insert(1, Val::B(true), false, false),
                Write(1, 1, false),
                Insert(2, Val::F(0, 3, vec![]), true, false),
                Read(0),
                Reopen(false, Some(0)),
                Write(0, 2, true),
            ],
            Some(0),
        ),
    ];
    for (ops, budget) in sequences {
        run_model(&ops, budget);
    }
}

// ---------------------------------------------------------------------------
// 2. A corpus of malformed stores and files
// ---------------------------------------------------------------------------

/// The key every corpus case uses in its own store.
const K: &str = "k";

/// The `.npy` bytes of `[1, 2, 3, 4]` as `<i4`: a 128-byte header, 16 bytes
/// of data.
fn good_npy() -> Vec<u8> {
    npy_of(&ndarray::array![1i32, 2, 3, 4])
}

fn good_meta() -> String {
    meta_text(&[4], "<i4")
}

/// An NPY 1.0 file with the header dictionary `dict` (padded as numpy pads
/// it) followed by `data`.
fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut text = dict.to_owned();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((text.len() as u16).to_le_bytes());
    v.extend(text.as_bytes());
    v.extend(data);
    v
}

/// An NPY file of format `version` (1, 2 or 3) with the header dictionary
/// `dict`, padded to a multiple of 64 bytes, followed by `data`.
fn npy_ver(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let pre = if version == 1 { 10 } else { 12 };
    let mut text = dict.to_owned();
    while !(pre + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut v = b"\x93NUMPY".to_vec();
    v.extend([version, 0]);
    if version == 1 {
        v.extend(u16::try_from(text.len()).unwrap().to_le_bytes());
    } else {
        v.extend(u32::try_from(text.len()).unwrap().to_le_bytes());
    }
    v.extend(text.as_bytes());
    v.extend(data);
    v
}

/// `open` repeated `n` times, then `close` repeated `n` times.
fn nest(open: &str, n: usize, close: &str) -> String {
    format!("{}{}", open.repeat(n), close.repeat(n))
}

fn i32_data(n: usize) -> Vec<u8> {
    (1..=n as i32).flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `K.npy` and `K.meta.json` (`None`: that file is absent).
type Build = Box<dyn Fn(&Path, &Path, &str)>;

fn pair(npy: Option<Vec<u8>>, meta: Option<Vec<u8>>) -> Build {
    Box::new(move |d, _, k| {
        if let Some(b) = &npy {
            std::fs::write(d.join(format!("{k}.npy")), b).unwrap();
        }
        if let Some(b) = &meta {
            std::fs::write(d.join(format!("{k}.meta.json")), b).unwrap();
        }
    })
}

fn npy_case(npy: Vec<u8>, meta: String) -> Build {
    pair(Some(npy), Some(meta.into_bytes()))
}

fn meta_case(meta: impl Into<Vec<u8>>) -> Build {
    pair(Some(good_npy()), Some(meta.into()))
}

/// Reading an entry as `T` with dimension `D`: `get`, then a read guard
/// whose every element is visited.
type Access = fn(&DiskBackedStore, &str) -> ndarray_offload::Result<()>;

fn read_as<T: Element, D: Dimension>(s: &DiskBackedStore, k: &str) -> ndarray_offload::Result<()> {
    let h = s.get::<T, D>(k)?;
    let g = h.read()?;
    assert_eq!(g.view().iter().count(), g.view().len());
    drop(g);
    Ok(())
}

/// Opening a standalone `.npy` as `T` with dimension `D` and reading it.
type Standalone = fn(&Path) -> ndarray_offload::Result<()>;

fn open_as<T: Element, D: Dimension>(p: &Path) -> ndarray_offload::Result<()> {
    let a = DiskBackedArray::<T, D>::open(p, &CacheConfig::default())?;
    let g = a.read()?;
    assert_eq!(g.view().iter().count(), g.view().len());
    Ok(())
}

struct Case {
    name: &'static str,
    build: Build,
    access: Access,
    /// The variant every access must fail with.
    expect: &'static str,
    /// Also opened as a standalone `.npy` with `DiskBackedArray::open`,
    /// failing with this variant.
    standalone: Option<(Standalone, &'static str)>,
    /// Whether `ndoffload verify` reports the entry (a well-formed entry of
    /// another element type than the one requested is sound for it).
    verify_bad: bool,
}

fn case(name: &'static str, build: Build, access: Access, expect: &'static str) -> Case {
    Case {
        name,
        build,
        access,
        expect,
        standalone: None,
        verify_bad: true,
    }
}

impl Case {
    fn standalone(mut self, open: Standalone, expect: &'static str) -> Self {
        self.standalone = Some((open, expect));
        self
    }

    fn sound_for_verify(mut self) -> Self {
        self.verify_bad = false;
        self
    }
}

fn symlink_to(target: &'static str, which: &'static str) -> Build {
    Box::new(move |d, outside, k| {
        let (npy, meta) = (d.join(format!("{k}.npy")), d.join(format!("{k}.meta.json")));
        let t = outside.join(target);
        if which == "npy" {
            std::os::unix::fs::symlink(&t, &npy).unwrap();
            std::fs::write(&meta, good_meta()).unwrap();
        } else {
            std::fs::write(&npy, good_npy()).unwrap();
            std::os::unix::fs::symlink(&t, &meta).unwrap();
        }
    })
}

/// The files next to the store that nothing may touch: a valid pair (so
/// that following a symbolic link to it would succeed rather than fail) and
/// a directory.
fn fill_outside(outside: &Path) {
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("victim.npy"), good_npy()).unwrap();
    std::fs::write(outside.join("victim.meta.json"), good_meta()).unwrap();
    std::fs::write(outside.join("sub/precious.txt"), b"precious").unwrap();
}

fn have_mkfifo() -> bool {
    Command::new("mkfifo")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn corpus() -> Vec<Case> {
    let g = good_npy();
    let hdr = 128; // header length of good_npy()
    assert_eq!(g.len(), hdr + 16);
    let trunc = |n: usize| npy_case(good_npy()[..n].to_vec(), good_meta());
    let with = |f: fn(&mut Vec<u8>)| {
        let mut b = good_npy();
        f(&mut b);
        npy_case(b, good_meta())
    };
    let dict = |d: &str, data: Vec<u8>, shape: &[u64], dtype: &str| {
        npy_case(npy_v1(d, &data), meta_text(shape, dtype))
    };
    let deep_shape = |version: u8, shape: &str| {
        npy_case(
            npy_ver(
                version,
                &format!("{{'descr': '<i4', 'fortran_order': False, 'shape': {shape}, }}"),
                &i32_data(4),
            ),
            good_meta(),
        )
    };
    let i1: Access = read_as::<i32, Ix1>;
    let s1: Standalone = open_as::<i32, Ix1>;
    let meta_with = |body: &str| -> Build {
        meta_case(format!(
            r#"{{{body}, "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}}"#
        ))
    };
    const CLASS: &str = r#""lazy_disk_cache_class": "DiskBackedNDArray""#;
    const SHAPE: &str = r#""shape": [4], "dtype": "<i4""#;
    let mut c = vec![
        // --- .npy files --------------------------------------------------
        case("npy_empty", trunc(0), i1, "Truncated").standalone(s1, "Truncated"),
        case("npy_cut_in_magic", trunc(4), i1, "Truncated").standalone(s1, "Truncated"),
        case("npy_cut_in_header_length", trunc(9), i1, "Truncated")
            .standalone(s1, "Truncated"),
        case("npy_cut_in_header", trunc(60), i1, "Truncated").standalone(s1, "Truncated"),
        case("npy_cut_at_data", trunc(hdr), i1, "Truncated").standalone(s1, "Truncated"),
        case("npy_cut_in_data", trunc(hdr + 7), i1, "Truncated").standalone(s1, "Truncated"),
        case("npy_cut_last_byte", trunc(hdr + 15), i1, "Truncated")
            .standalone(s1, "Truncated"),
        case("npy_trailing_bytes", with(|b| b.extend([0, 0, 0])), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case("npy_bad_magic", with(|b| b[1] = b'X'), i1, "Corrupt").standalone(s1, "Corrupt"),
        case("npy_bad_version", with(|b| b[6] = 9), i1, "Corrupt").standalone(s1, "Corrupt"),
        case(
            "npy_header_length_past_end",
            with(|b| b[8..10].copy_from_slice(&0xFFFFu16.to_le_bytes())),
            i1,
            "Truncated",
        )
        .standalone(s1, "Truncated"),
        case(
            // NPY 2.0: a 4-byte header length; 4 GiB must not be allocated.
            "npy_v2_header_length_4gib",
            npy_case(
                {
                    let mut v = b"\x93NUMPY\x02\x00".to_vec();
                    v.extend(0xFFFF_FFF0u32.to_le_bytes());
                    v.extend(b"{'descr': '<i4', ");
                    v
                },
                good_meta(),
            ),
            i1,
            "Truncated",
        )
        .standalone(s1, "Truncated"),
        case(
            "npy_non_ascii_header",
            with(|b| b[100..102].copy_from_slice("\u{e9}".as_bytes())),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case("npy_header_not_a_dict", dict("[1, 2]", i32_data(4), &[4], "<i4"), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case(
            "npy_fortran_order_not_bool",
            dict("{'descr': '<i4', 'fortran_order': 0, 'shape': (4,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_negative_shape",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (-4,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            // The header (and the metadata) claim more than the data holds.
            "npy_shape_longer_than_data",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (8,), }", i32_data(4), &[8], "<i4"),
            i1,
            "Truncated",
        )
        .standalone(s1, "Truncated"),
        case(
            "npy_shape_shorter_than_data",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", i32_data(4), &[2], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_shape_bytes_overflow_u64",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }",
                i32_data(4),
                &[1 << 40, 1 << 40],
                "<i4",
            ),
            read_as::<i32, Ix2>,
            "Corrupt",
        )
        .standalone(open_as::<i32, Ix2>, "Corrupt"),
        case(
            "npy_shape_bytes_over_isize",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (2305843009213693952,), }",
                i32_data(4),
                &[1 << 61],
                "<i4",
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_not_the_requested_dtype",
            npy_case(npy_of(&ndarray::array![1.0f64, 2.0, 3.0, 4.0]), meta_text(&[4], "<f8")),
            i1,
            "DtypeMismatch",
        )
        .standalone(s1, "DtypeMismatch")
        .sound_for_verify(),
        case(
            "npy_big_endian",
            dict(
                "{'descr': '>i4', 'fortran_order': False, 'shape': (4,), }",
                (1..=4i32).flat_map(|x| x.to_be_bytes()).collect(),
                &[4],
                ">i4",
            ),
            i1,
            "DtypeMismatch",
        )
        .standalone(s1, "DtypeMismatch")
        .sound_for_verify(),
        case(
            "npy_unicode_dtype",
            dict("{'descr': '<U5', 'fortran_order': False, 'shape': (4,), }", vec![0; 80], &[4], "<U5"),
            i1,
            "DtypeMismatch",
        )
        .standalone(s1, "DtypeMismatch"),
        case(
            "npy_object_dtype",
            dict("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", vec![0; 16], &[2], "|O"),
            i1,
            "DtypeMismatch",
        )
        .standalone(s1, "DtypeMismatch"),
        case(
            "npy_structured_dtype",
            dict(
                "{'descr': [('a', '<i4'), ('b', '<f4')], 'fortran_order': False, 'shape': (4,), }",
                vec![0; 32],
                &[4],
                "|V8",
            ),
            i1,
            "DtypeMismatch",
        )
        .standalone(s1, "DtypeMismatch"),
        case(
            // The metadata claims <i4, so the header is what refuses it.
            "npy_structured_dtype_meta_claims_i4",
            dict(
                "{'descr': [('a', '<i4'), ('b', '<f4')], 'fortran_order': False, 'shape': (4,), }",
                vec![0; 32],
                &[4],
                "<i4",
            ),
            i1,
            "Mismatch",
        ),
        case(
            "npy_bool_byte_not_0_or_1",
            dict("{'descr': '|b1', 'fortran_order': False, 'shape': (4,), }", vec![0, 1, 2, 1], &[4], "|b1"),
            read_as::<bool, Ix1>,
            "Corrupt",
        )
        .standalone(open_as::<bool, Ix1>, "Corrupt"),
        // --- .npy and .meta.json disagree ---------------------------------
        case(
            "mismatch_shape_same_ndim",
            npy_case(good_npy(), meta_text(&[5], "<i4")),
            i1,
            "Mismatch",
        ),
        case(
            "mismatch_shape_other_ndim",
            npy_case(good_npy(), meta_text(&[2, 2], "<i4")),
            read_as::<i32, Ix2>,
            "Mismatch",
        ),
        case(
            "mismatch_dtype",
            npy_case(good_npy(), meta_text(&[4], "<f4")),
            read_as::<f32, Ix1>,
            "Mismatch",
        ),
        case(
            "mismatch_big_endian_npy_little_endian_meta",
            dict(
                "{'descr': '>i4', 'fortran_order': False, 'shape': (4,), }",
                (1..=4i32).flat_map(|x| x.to_be_bytes()).collect(),
                &[4],
                "<i4",
            ),
            i1,
            "Mismatch",
        ),
        // --- .meta.json ---------------------------------------------------
        case("meta_not_utf8", meta_case(b"{\"schema_version\": 1, \xff\xfe}".to_vec()), i1, "Corrupt"),
        case("meta_utf8_bom", meta_case(format!("\u{feff}{}", good_meta())), i1, "Corrupt"),
        case("meta_empty", meta_case(""), i1, "Corrupt"),
        case("meta_invalid_json", meta_case(r#"{"schema_version": 1,"#), i1, "Corrupt"),
        case("meta_json_array", meta_case("[1, 2]"), i1, "Corrupt"),
        case("meta_json_string", meta_case(r#""DiskBackedNDArray""#), i1, "Corrupt"),
        case("meta_json_number", meta_case("1"), i1, "Corrupt"),
        case("meta_json_null", meta_case("null"), i1, "Corrupt"),
        case(
            "meta_deeply_nested",
            meta_case(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
            i1,
            "Corrupt",
        ),
        case(
            "meta_schema_version_string",
            meta_with(&format!(r#""schema_version": "1", {CLASS}, {SHAPE}"#)),
            i1,
            "SchemaVersion",
        ),
        case(
            "meta_schema_version_2",
            meta_with(&format!(r#""schema_version": 2, {CLASS}, {SHAPE}"#)),
            i1,
            "SchemaVersion",
        ),
        case(
            "meta_schema_version_float",
            meta_with(&format!(r#""schema_version": 1.0, {CLASS}, {SHAPE}"#)),
            i1,
            "SchemaVersion",
        ),
        case(
            "meta_schema_version_missing",
            meta_with(&format!("{CLASS}, {SHAPE}")),
            i1,
            "Corrupt",
        ),
        case(
            "meta_class_unknown",
            meta_with(&format!(
                r#""schema_version": 1, "lazy_disk_cache_class": "PickledObject", {SHAPE}"#
            )),
            i1,
            "UnknownClass",
        ),
        case(
            "meta_class_not_a_string",
            meta_with(&format!(r#""schema_version": 1, "lazy_disk_cache_class": 5, {SHAPE}"#)),
            i1,
            "UnknownClass",
        ),
        case(
            "meta_class_missing",
            meta_with(&format!(r#""schema_version": 1, {SHAPE}"#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_not_a_list",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": 4, "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_a_string",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": "(4,)", "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_negative",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [-4], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_float",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [4.0], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        // A metadata file without `shape` (or `dtype`) is valid: both are
        // taken from the .npy header, as GSEGUtils does (see
        // hardening::metadata_without_shape_or_dtype_opens_from_the_npy_header).
        case(
            // `get` reads only the metadata: a shape whose byte size does not
            // fit in memory must be refused there, not panic later.
            "meta_shape_bytes_overflow",
            meta_with(&format!(
                r#""schema_version": 1, {CLASS}, "shape": [3, 6148914691236517206], "dtype": "<i4""#
            )),
            read_as::<i32, IxDyn>,
            "Corrupt",
        ),
        case(
            "meta_shape_elements_overflow",
            meta_with(&format!(
                r#""schema_version": 1, {CLASS}, "shape": [4294967296, 4294967296], "dtype": "<U5""#
            )),
            read_as::<i32, IxDyn>,
            "Corrupt",
        ),
        case(
            "meta_dtype_not_a_string",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [4], "dtype": 4"#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_flag_not_a_bool",
            meta_case(format!(
                r#"{{"schema_version": 1, {CLASS}, {SHAPE}, "enable_caching": "yes"}}"#
            )),
            i1,
            "Corrupt",
        ),
        // --- nesting: a parser that recursed on it would overflow ---------
        // Headers of about 4 KiB nested thousands of levels deep, in every
        // place and with every kind of bracket; refused before any parser
        // recursion, on any stack.
        case("npy_deep_shape_parens", deep_shape(1, &nest("(", 2000, ")")), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case("npy_deep_shape_brackets", deep_shape(1, &nest("[", 2000, "]")), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case("npy_deep_shape_braces", deep_shape(1, &nest("{", 2000, "}")), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case("npy_deep_shape_mixed", deep_shape(1, &nest("([{", 700, "}])")), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case("npy_deep_shape_unclosed", deep_shape(1, &"(".repeat(4000)), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case(
            "npy_deep_descr",
            dict(
                &format!("{{'descr': {}, 'fortran_order': False, 'shape': (4,), }}", nest("[", 2000, "]")),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_deep_dict_value",
            dict(
                &format!(
                    "{{'descr': '<i4', 'fortran_order': False, 'shape': (4,), 'x': {}1{}}}",
                    "{'a': ".repeat(600),
                    "}".repeat(600)
                ),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_deep_dict_key",
            dict(
                &format!("{{{}: 1, 'descr': '<i4', 'fortran_order': False, 'shape': (4,), }}", nest("(", 2000, ")")),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            // One level more than the limit (8): the dictionary and 8 tuples.
            "npy_nested_9_levels",
            deep_shape(1, &format!("{}4,{}", "(".repeat(8), ",)".repeat(8))),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            // An escaped quote does not end the string: the nesting after
            // the string counts.
            "npy_deep_after_escaped_quote",
            dict(
                &format!("{{'descr': '<i4\\'', 'fortran_order': False, 'shape': {}, }}", nest("(", 2000, ")")),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case("npy_v2_deep_shape", deep_shape(2, &nest("(", 2000, ")")), i1, "Corrupt")
            .standalone(s1, "Corrupt"),
        case(
            // Format 3.0 headers are UTF-8.
            "npy_v3_deep_shape",
            npy_case(
                npy_ver(
                    3,
                    &format!("{{'descr': '<i4', 'fortran_order': False, 'shape': {}, '\u{e9}': 1}}", nest("(", 2000, ")")),
                    &i32_data(4),
                ),
                good_meta(),
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            // Brackets inside string literals do not count: this header is
            // read (a structured dtype the metadata disagrees with).
            "npy_brackets_in_strings_do_not_count",
            dict(
                &format!("{{'descr': [('{}', '<i4')], 'fortran_order': False, 'shape': (4,), }}", "((([[[{{{".repeat(10)),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Mismatch",
        )
        .standalone(s1, "DtypeMismatch"),
        case(
            "npy_brackets_in_escaped_strings_do_not_count",
            dict(
                &format!("{{'descr': [(\"a\\\"{}\", '<i4')], 'fortran_order': False, 'shape': (4,), }}", "([{".repeat(30)),
                i32_data(4),
                &[4],
                "<i4",
            ),
            i1,
            "Mismatch",
        )
        .standalone(s1, "DtypeMismatch"),
        case(
            // A valid header padded to just over the limit (65535 bytes).
            "npy_header_over_64_kib",
            npy_case(
                {
                    let dict = format!("{{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }}{}", " ".repeat(65535));
                    npy_ver(2, &dict, &i32_data(4))
                },
                good_meta(),
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            // Braces nested as deep as allowed (8 levels) around 60 KiB that
            // fail to parse at their end. A backtracking parser (as
            // `ndarray-npy`'s is: a `{` is tried as a dict, twice, then as
            // a set) would parse the inside 3^8 times.
            "npy_backtracking_braces",
            npy_case(
                {
                    let body = "1: 1, ".repeat(10_000);
                    let dict = format!(
                        "{{'descr': '<i4', 'fortran_order': False, 'shape': (4,), 'x': {}{body}1{}}}",
                        "{".repeat(7),
                        "}".repeat(7)
                    );
                    npy_ver(1, &dict, &i32_data(4))
                },
                good_meta(),
            ),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        // --- .meta.json nesting -------------------------------------------
        case(
            "meta_deep_unknown_field",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, {SHAPE}, "x": {}"#, nest("[", 5000, "]"))),
            i1,
            "Corrupt",
        ),
        case(
            // One level more than the limit (16): the object and 16 arrays.
            "meta_nested_17_levels",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, {SHAPE}, "x": {}"#, nest("[", 16, "]"))),
            i1,
            "Corrupt",
        ),
        case(
            "meta_deep_objects",
            meta_case(format!("{}1{}", r#"{"a": "#.repeat(3000), "}".repeat(3000))),
            i1,
            "Corrupt",
        ),
        case("meta_deep_unclosed", meta_case("[".repeat(100_000)), i1, "Corrupt"),
        case(
            "meta_deep_shape",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": {}, "dtype": "<i4""#, nest("[", 5000, "]"))),
            i1,
            "Corrupt",
        ),
        case(
            // Brackets inside strings do not count: the metadata is read
            // (and its schema version refused).
            "meta_brackets_in_strings_do_not_count",
            meta_with(&format!(r#""schema_version": 2, {CLASS}, {SHAPE}, "x": "{}""#, "[{".repeat(500))),
            i1,
            "SchemaVersion",
        ),
        case(
            "meta_brackets_after_escaped_quotes_do_not_count",
            meta_with(&format!(r#""schema_version": 2, {CLASS}, {SHAPE}, "x": "\"{}\\", "y": "\\\"{}""#, "[".repeat(500), "{".repeat(500))),
            i1,
            "SchemaVersion",
        ),
        // --- shapes whose size overflows, zero dimensions or not ---------
        case(
            "npy_zero_dim_and_huge_dim",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (0, 9223372036854775808), }",
                vec![],
                &[0, 1 << 63],
                "<i4",
            ),
            read_as::<i32, Ix2>,
            "Corrupt",
        )
        .standalone(open_as::<i32, Ix2>, "Corrupt"),
        case(
            "npy_huge_dims_then_zero",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 0), }",
                vec![],
                &[1 << 40, 1 << 40, 0],
                "<i4",
            ),
            read_as::<i32, ndarray::Ix3>,
            "Corrupt",
        )
        .standalone(open_as::<i32, ndarray::Ix3>, "Corrupt"),
        case(
            // The element count fits in isize, the byte count does not.
            "npy_zero_dim_and_bytes_over_isize",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (0, 2305843009213693952), }",
                vec![],
                &[0, 1 << 61],
                "<i4",
            ),
            read_as::<i32, Ix2>,
            "Corrupt",
        )
        .standalone(open_as::<i32, Ix2>, "Corrupt"),
        case(
            "npy_v2_zero_dim_and_huge_dim",
            npy_case(
                npy_ver(2, "{'descr': '<i4', 'fortran_order': False, 'shape': (9223372036854775808, 0), }", &[]),
                meta_text(&[1 << 63, 0], "<i4"),
            ),
            read_as::<i32, Ix2>,
            "Corrupt",
        )
        .standalone(open_as::<i32, Ix2>, "Corrupt"),
        case(
            // The metadata is sound; the header is what overflows.
            "npy_zero_dim_overflow_meta_sound",
            dict(
                "{'descr': '<i4', 'fortran_order': False, 'shape': (0, 9223372036854775808), }",
                vec![],
                &[0, 5],
                "<i4",
            ),
            read_as::<i32, Ix2>,
            "Corrupt",
        ),
        case(
            // The header is sound; the metadata is what overflows.
            "meta_zero_dim_overflow_npy_sound",
            npy_case(npy_of(&Array2::<i32>::zeros((0, 5))), meta_text(&[0, 1 << 63], "<i4")),
            read_as::<i32, IxDyn>,
            "Corrupt",
        ),
        case(
            "meta_huge_dims_then_zero",
            npy_case(good_npy(), meta_text(&[1 << 40, 1 << 40, 0], "<i4")),
            read_as::<i32, IxDyn>,
            "Corrupt",
        ),
        case(
            "meta_zero_dim_and_bytes_over_isize",
            npy_case(good_npy(), meta_text(&[0, 1 << 61], "<i4")),
            read_as::<i32, IxDyn>,
            "Corrupt",
        ),
        case(
            "npy_dim_u64_max",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (18446744073709551615,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_dim_over_u64",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (18446744073709551616,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_negative_dim_after_zero",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (0, -1), }", vec![], &[0, 1], "<i4"),
            read_as::<i32, Ix2>,
            "Corrupt",
        )
        .standalone(open_as::<i32, Ix2>, "Corrupt"),
        case(
            "npy_float_dim",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (4.0,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_string_dim",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': ('4',), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_bool_dim",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (True,), }", i32_data(1), &[1], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_none_dim",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': (None,), }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "npy_shape_a_number",
            dict("{'descr': '<i4', 'fortran_order': False, 'shape': 4, }", i32_data(4), &[4], "<i4"),
            i1,
            "Corrupt",
        )
        .standalone(s1, "Corrupt"),
        case(
            "meta_shape_u64_max",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [18446744073709551615], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_over_u64",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [18446744073709551616], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_exponent",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [4e0], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_bool",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [true], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_null_dim",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [null], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        case(
            "meta_shape_nested_list",
            meta_with(&format!(r#""schema_version": 1, {CLASS}, "shape": [[4]], "dtype": "<i4""#)),
            i1,
            "Corrupt",
        ),
        // --- file types ---------------------------------------------------
        case(
            "npy_is_a_directory",
            Box::new(|d, _, k| {
                std::fs::create_dir(d.join(format!("{k}.npy"))).unwrap();
                std::fs::write(d.join(format!("{k}.meta.json")), good_meta()).unwrap();
            }),
            i1,
            "Incomplete",
        ),
        case(
            "meta_is_a_directory",
            Box::new(|d, _, k| {
                std::fs::write(d.join(format!("{k}.npy")), good_npy()).unwrap();
                std::fs::create_dir(d.join(format!("{k}.meta.json"))).unwrap();
            }),
            i1,
            "Incomplete",
        ),
        case("npy_missing", pair(None, Some(good_meta().into_bytes())), i1, "Incomplete"),
        case("meta_missing", pair(Some(good_npy()), None), i1, "Incomplete"),
        case("npy_symlink_out_of_store", symlink_to("victim.npy", "npy"), i1, "Incomplete"),
        case(
            "meta_symlink_out_of_store",
            symlink_to("victim.meta.json", "meta"),
            i1,
            "Incomplete",
        ),
        case("npy_symlink_to_outside_directory", symlink_to("sub", "npy"), i1, "Incomplete"),
        case("npy_symlink_dangling", symlink_to("nothing.npy", "npy"), i1, "Incomplete"),
    ];
    if have_mkfifo() {
        c.push(case(
            // Opening a FIFO for reading would block until a writer comes.
            "npy_is_a_fifo",
            Box::new(|d, _, k| {
                let ok = Command::new("mkfifo")
                    .arg(d.join(format!("{k}.npy")))
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                std::fs::write(d.join(format!("{k}.meta.json")), good_meta()).unwrap();
            }),
            i1,
            "Incomplete",
        ));
    }
    c
}

/// Runs one case in a fresh directory: writable and read-only opens both
/// fail with the expected variant, the store's files and the directory
/// next to it are unchanged, nothing panics.
fn run_case(c: &Case) -> Result<(), String> {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let outside = root.path().join("outside");
    std::fs::create_dir(&store).unwrap();
    fill_outside(&outside);
    (c.build)(&store, &outside, K);
    let (store0, outside0) = (tree(&store), tree(&outside));
    let mut problems = Vec::new();
    for read_only in [false, true] {
        let mode = if read_only { "read-only" } else { "writable" };
        let r = catch_unwind(AssertUnwindSafe(|| {
            let s = if read_only {
                DiskBackedStore::open_read_only(&store)
            } else {
                DiskBackedStore::open(&store)
            }
            .map_err(|e| format!("open failed: {e}"))?;
            let r = (c.access)(&s, K);
            // Nothing else about the broken entry may panic either.
            let _ = (s.keys(), s.len(), s.incomplete(), s.contains(K), s.info(K));
            let _ = s.iter().collect::<Vec<_>>();
            let _ = s.stats().to_string();
            drop(s);
            match r {
                Ok(()) => Err("access succeeded".to_string()),
                Err(e) => Ok(format!("{}: {e}", variant(&e))),
            }
        }));
        match r {
            Err(_) => problems.push(format!("{mode}: panicked")),
            Ok(Err(e)) => problems.push(format!("{mode}: {e}")),
            Ok(Ok(got)) if !got.starts_with(&format!("{}: ", c.expect)) => {
                problems.push(format!("{mode}: expected {}, got {got}", c.expect))
            }
            Ok(Ok(_)) => {}
        }
        if tree(&store) != store0 {
            problems.push(format!("{mode}: the store's files changed"));
        }
        if tree(&outside) != outside0 {
            problems.push(format!("{mode}: a file outside the store changed"));
        }
    }
    if let Some((open, expect)) = c.standalone {
        let p = store.join(format!("{K}.npy"));
        match catch_unwind(AssertUnwindSafe(|| open(&p))) {
            Err(_) => problems.push("standalone: panicked".into()),
            Ok(Ok(())) => problems.push("standalone: opened".into()),
            Ok(Err(e)) if variant(&e) != expect => problems.push(format!(
                "standalone: expected {expect}, got {}: {e}",
                variant(&e)
            )),
            Ok(Err(_)) => {}
        }
        if tree(&store) != store0 || tree(&outside) != outside0 {
            problems.push("standalone: files changed".into());
        }
    }
    // The same reads, and the inspector, on a thread with a small stack.
    // The same variants as on the normal stack.
    let small = [c.expect, c.standalone.map_or("", |(_, e)| e)];
    let (access, standalone, verify_bad) = (c.access, c.standalone, c.verify_bad);
    let got = on_small_stack(|| {
        catch_unwind(AssertUnwindSafe(|| {
            let s =
                DiskBackedStore::open_read_only(&store).map_err(|e| format!("open failed: {e}"))?;
            let r = access(&s, K);
            drop(s);
            let reports = inspect_store(&store, InspectOptions::new(true))
                .map_err(|e| format!("inspect failed: {e}"))?;
            if verify_bad && reports.iter().all(|r| r.problem.is_none()) {
                return Err(format!("the inspector calls it sound: {reports:?}"));
            }
            let standalone = standalone.map(|(open, _)| open(&store.join(format!("{K}.npy"))));
            Ok((r, standalone))
        }))
    });
    match got {
        Err(_) => problems.push("small stack: panicked".into()),
        Ok(Err(e)) => problems.push(format!("small stack: {e}")),
        Ok(Ok((r, standalone))) => {
            for ((what, r), small) in [("read", Some(r)), ("standalone", standalone)]
                .into_iter()
                .zip(small)
            {
                match r {
                    None => {}
                    Some(Ok(())) => problems.push(format!("small stack: {what} succeeded")),
                    Some(Err(e)) if variant(&e) != small => problems.push(format!(
                        "small stack: {what}: expected {small}, got {}: {e}",
                        variant(&e)
                    )),
                    Some(Err(_)) => {}
                }
            }
        }
    }
    if tree(&store) != store0 || tree(&outside) != outside0 {
        problems.push("small stack: files changed".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs every case of `names` in its own child process (the `#[ignore]`d
/// test `child`, told the case by the environment variable `var`), a few
/// at a time, under a timeout: a case passes only if its child exits with
/// status 0 after printing `case NAME: ok`. A panic, an abort (a stack
/// overflow), a signal or a hang of one case is reported as that case's
/// failure. Returns the failures.
fn run_cases_in_children(child: &str, var: &str, names: &[&str]) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { break };
                let run = run_child(
                    child,
                    &[(var, std::ffi::OsStr::new(name))],
                    Duration::from_secs(120),
                );
                if !(run.ok() && run.output.contains(&format!("case {name}: ok"))) {
                    // The panic message if there is one, else the end.
                    let lines: Vec<&str> = run.output.lines().collect();
                    let from = lines
                        .iter()
                        .position(|l| l.contains("panicked at"))
                        .unwrap_or(lines.len().saturating_sub(12));
                    let tail = lines[from..]
                        .iter()
                        .take_while(|l| {
                            !l.starts_with("stack backtrace") && !l.starts_with("note:")
                        })
                        .take(12)
                        .copied()
                        .collect::<Vec<_>>()
                        .join("\n    ");
                    let status = match run.status {
                        None => "killed after 120 s (a hang)".to_string(),
                        Some(st) => format!("{st}"),
                    };
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{name}: {status}:\n    {tail}"));
                }
            });
        }
    });
    let mut f = failures.into_inner().unwrap();
    f.sort();
    f
}

/// Every case of the corpus, each in its own child process (see
/// `run_case` for what is checked).
#[test]
fn corpus_every_malformed_entry_has_its_typed_error() {
    let corpus = corpus();
    let names: Vec<&str> = corpus.iter().map(|c| c.name).collect();
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        corpus.len(),
        "case names are unique"
    );
    let start = Instant::now();
    let failures = run_cases_in_children(
        "reliability::corpus_case_child",
        "NDOFFLOAD_CORPUS_CASE",
        &names,
    );
    let standalone = corpus.iter().filter(|c| c.standalone.is_some()).count();
    eprintln!(
        "corpus: {} malformed entries ({standalone} also as standalone .npy files), one child process each, in {:.1} s",
        corpus.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(corpus.len() >= 30);
}

/// One case of `corpus_every_malformed_entry_has_its_typed_error`, named by
/// `NDOFFLOAD_CORPUS_CASE`.
#[test]
#[ignore = "run in a child process by corpus_every_malformed_entry_has_its_typed_error"]
fn corpus_case_child() {
    let Ok(name) = std::env::var("NDOFFLOAD_CORPUS_CASE") else {
        return;
    };
    let corpus = corpus();
    let Some(c) = corpus.iter().find(|c| c.name == name) else {
        panic!("no corpus case {name:?}");
    };
    if let Err(e) = run_case(c) {
        panic!("case {name}: {e}");
    }
    println!("case {name}: ok");
}

// ---------------------------------------------------------------------------
// 2b. Hostile packs and pack sets
// ---------------------------------------------------------------------------

/// A hostile pack or pack set: `build` writes it into a directory and
/// returns the path to open; every reader must fail with `expect`.
struct PackCase {
    name: &'static str,
    build: Box<dyn Fn(&Path) -> PathBuf>,
    /// Whether `build` makes a pack set manifest (else one pack).
    set: bool,
    expect: &'static str,
}

/// Rewrites the descriptor of the first entry of the pack at `p` with `f`
/// and recomputes its checksum, so that only what `f` changed is wrong.
fn patch_first_desc(p: &Path, f: impl FnOnce(&mut [u8])) {
    let mut b = std::fs::read(p).unwrap();
    let le64 = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let trailer = b.len() - 128;
    let index_off = le64(&b, trailer + 32) as usize;
    let off = le64(&b, index_off) as usize;
    let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
    f(&mut b[off..off + len]);
    let crc = crc32fast::hash(&b[off + 8..off + len]);
    b[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(p, b).unwrap();
}

/// A pack holding one array of `T` with `shape`, whose dimensions are then
/// replaced by `dims` in the descriptor.
fn pack_with_dims<T: Element + Default>(
    shape: &[usize],
    dims: &'static [u64],
) -> Box<dyn Fn(&Path) -> PathBuf> {
    let shape = shape.to_vec();
    Box::new(move |d| {
        let p = d.join("a.pack");
        let mut w = PackWriter::create(&p).unwrap();
        w.append(
            "t",
            &Array::<T, IxDyn>::from_elem(IxDyn(&shape), T::default()),
        )
        .unwrap();
        w.finish().unwrap();
        patch_first_desc(&p, |desc| {
            // One array record after the 24-byte head, then the dimensions.
            assert_eq!(usize::from(desc[24 + 23]), dims.len());
            for (i, x) in dims.iter().enumerate() {
                let at = 24 + 32 + 8 * i;
                desc[at..at + 8].copy_from_slice(&x.to_le_bytes());
            }
        });
        p
    })
}

/// A pack holding one entry whose metadata is replaced by `meta` (written
/// as a string of the same length, then overwritten in place).
fn pack_with_meta(meta: String) -> Box<dyn Fn(&Path) -> PathBuf> {
    Box::new(move |d| {
        let p = d.join("a.pack");
        let placeholder = format!("\"{}\"", "m".repeat(meta.len() - 2));
        let mut w = PackWriter::create(&p).unwrap();
        w.append_with_meta(
            "t",
            &ndarray::array![1u8, 2],
            &serde_json::Value::String("m".repeat(meta.len() - 2)),
        )
        .unwrap();
        w.finish().unwrap();
        patch_first_desc(&p, |desc| {
            let at = desc
                .windows(placeholder.len())
                .position(|w| w == placeholder.as_bytes())
                .unwrap();
            desc[at..at + meta.len()].copy_from_slice(meta.as_bytes());
        });
        p
    })
}

/// A pack set of one sound shard whose manifest has `extra` (JSON text) as
/// its `shards` value, or as an extra field when `field` is set.
fn pack_set_with(extra: String, field: bool) -> Box<dyn Fn(&Path) -> PathBuf> {
    Box::new(move |d| {
        let mut w = PackWriter::create(d.join("s-0.pack")).unwrap();
        w.append("t", &ndarray::array![1u8, 2]).unwrap();
        w.finish().unwrap();
        let shards = if field {
            r#"["s-0.pack"]"#
        } else {
            extra.as_str()
        };
        let mut m = format!(
            r#"{{"format": "ndarray-offload pack set", "version": 1, "entries": 1, "shards": {shards}"#
        );
        if field {
            m.push_str(&format!(r#", "x": {extra}"#));
        }
        m.push('}');
        let p = d.join("s.packset.json");
        std::fs::write(&p, m).unwrap();
        p
    })
}

fn pack_corpus() -> Vec<PackCase> {
    let pack = |name, build, expect| PackCase {
        name,
        build,
        set: false,
        expect,
    };
    let set = |name, build, expect| PackCase {
        name,
        build,
        set: true,
        expect,
    };
    vec![
        pack(
            "pack_zero_dim_and_huge_dim",
            pack_with_dims::<u8>(&[0, 5], &[0, 1 << 63]),
            "Corrupt",
        ),
        pack(
            "pack_huge_dims_then_zero",
            pack_with_dims::<u8>(&[0, 5, 5], &[1 << 40, 1 << 40, 0]),
            "Corrupt",
        ),
        pack(
            "pack_zero_dim_and_bytes_over_isize",
            pack_with_dims::<i32>(&[0, 5], &[0, 1 << 61]),
            "Corrupt",
        ),
        pack(
            "pack_dim_u64_max",
            pack_with_dims::<u8>(&[0], &[u64::MAX]),
            "Corrupt",
        ),
        pack(
            "pack_meta_deep",
            pack_with_meta(nest("[", 3000, "]")),
            "Corrupt",
        ),
        pack(
            "pack_meta_deep_objects",
            pack_with_meta(format!("{}1{}", r#"{"a": "#.repeat(1000), "}".repeat(1000))),
            "Corrupt",
        ),
        pack(
            // One level more than the limit (16).
            "pack_meta_nested_17_levels",
            pack_with_meta(nest("[", 17, "]")),
            "Corrupt",
        ),
        set(
            "pack_set_manifest_deep_field",
            pack_set_with(nest("[", 5000, "]"), true),
            "Corrupt",
        ),
        set(
            "pack_set_manifest_deep_shards",
            pack_set_with(nest("[", 5000, "]"), false),
            "Corrupt",
        ),
        set(
            "pack_set_manifest_unclosed",
            pack_set_with("{\"a\": [".repeat(20_000), true),
            "Corrupt",
        ),
    ]
}

/// Reads a pack every way a program might; the first error is returned.
fn read_pack(p: &Path) -> ndarray_offload::Result<()> {
    let r = PackReader::open(p)?;
    for e in r.iter() {
        let e = e?;
        e.meta()?;
        e.info()?;
        for a in e.arrays() {
            let a = a?;
            let _ = a.get::<u8, IxDyn>();
            let _ = a.get::<i32, IxDyn>();
        }
        e.to_sample()?;
    }
    r.verify()?;
    Ok(())
}

fn read_pack_set(p: &Path) -> ndarray_offload::Result<()> {
    let s = PackSet::open(p)?;
    for shard in s.shards() {
        read_pack(shard.path())?;
    }
    Ok(())
}

/// Runs one pack case: every reader fails with the expected variant, on
/// the normal stack and on a small one; the inspector (library and
/// `ndoffload verify`) reports the pack as bad; nothing changes.
fn run_pack_case(c: &PackCase) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let p = (c.build)(dir.path());
    let before = tree(dir.path());
    let read = if c.set { read_pack_set } else { read_pack };
    let mut problems = Vec::new();
    let normal = catch_unwind(AssertUnwindSafe(|| read(&p)));
    let small = on_small_stack(|| catch_unwind(AssertUnwindSafe(|| read(&p))));
    for (what, r) in [("normal stack", normal), ("small stack", small)] {
        match r {
            Err(_) => problems.push(format!("{what}: panicked")),
            Ok(Ok(())) => problems.push(format!("{what}: read succeeded")),
            Ok(Err(e)) if variant(&e) != c.expect => problems.push(format!(
                "{what}: expected {}, got {}: {e}",
                c.expect,
                variant(&e)
            )),
            Ok(Err(_)) => {}
        }
    }
    if !c.set {
        let inspected = on_small_stack(|| {
            inspect_pack(&p, InspectOptions::new(true))
                .map(|rs| rs.iter().any(|r| r.problem.is_some()))
        });
        if matches!(inspected, Ok(false)) {
            problems.push("inspect_pack calls it sound".into());
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ndoffload"))
            .arg("verify")
            .arg(&p)
            .output()
            .unwrap();
        if !matches!(out.status.code(), Some(1 | 2)) {
            problems.push(format!(
                "ndoffload verify: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if tree(dir.path()) != before {
        problems.push("files changed".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Every hostile pack and pack set, each in its own child process.
#[test]
fn corpus_hostile_packs_and_pack_sets() {
    let corpus = pack_corpus();
    let names: Vec<&str> = corpus.iter().map(|c| c.name).collect();
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), corpus.len());
    let failures = run_cases_in_children(
        "reliability::corpus_pack_case_child",
        "NDOFFLOAD_PACK_CASE",
        &names,
    );
    eprintln!("pack corpus: {} hostile packs and pack sets", corpus.len());
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One case of `corpus_hostile_packs_and_pack_sets`, named by
/// `NDOFFLOAD_PACK_CASE`.
#[test]
#[ignore = "run in a child process by corpus_hostile_packs_and_pack_sets"]
fn corpus_pack_case_child() {
    let Ok(name) = std::env::var("NDOFFLOAD_PACK_CASE") else {
        return;
    };
    let corpus = pack_corpus();
    let Some(c) = corpus.iter().find(|c| c.name == name) else {
        panic!("no pack case {name:?}");
    };
    if let Err(e) = run_pack_case(c) {
        panic!("case {name}: {e}");
    }
    println!("case {name}: ok");
}

/// A directory holding every malformed entry at once (and one sound entry):
/// `ndoffload verify` exits with status 1 and one line per bad entry, and
/// changes nothing.
#[test]
fn corpus_verify_reports_every_bad_entry() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let outside = root.path().join("outside");
    std::fs::create_dir(&store).unwrap();
    fill_outside(&outside);
    let corpus = corpus();
    for c in &corpus {
        (c.build)(&store, &outside, c.name);
    }
    {
        let s = DiskBackedStore::open(&store).unwrap();
        s.insert_durable("sound", ndarray::array![1.5f64, 2.5])
            .unwrap();
    }
    // Pairs under names the store refuses are not entries, but are
    // reported as ignored.
    std::fs::write(store.join("CON.npy"), good_npy()).unwrap();
    std::fs::write(store.join("CON.meta.json"), good_meta()).unwrap();
    let long = "x".repeat(201);
    std::fs::write(store.join(format!("{long}.npy")), good_npy()).unwrap();
    std::fs::write(store.join(format!("{long}.meta.json")), good_meta()).unwrap();
    let (store0, outside0) = (tree(&store), tree(&outside));

    let out = Command::new(env!("CARGO_BIN_EXE_ndoffload"))
        .arg("verify")
        .arg(&store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let reported: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(n, _)| n))
        .collect();
    let expect: BTreeSet<&str> = corpus
        .iter()
        .filter(|c| c.verify_bad)
        .map(|c| c.name)
        .chain(["CON", long.as_str()])
        .collect();
    let got: BTreeSet<&str> = reported.iter().copied().collect();
    assert_eq!(reported.len(), got.len(), "one line per entry:\n{stdout}");
    assert_eq!(got, expect, "\n{stdout}");
    assert_eq!(tree(&store), store0, "verify changed the store");
    assert_eq!(tree(&outside), outside0);
    eprintln!(
        "verify reported {} bad entries of {} and 2 ignored names",
        got.len() - 2,
        corpus.len() + 1
    );
    // `ls` lists them all, bad or not, and changes nothing either.
    let out = Command::new(env!("CARGO_BIN_EXE_ndoffload"))
        .args(["ls", "--jsonl"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        corpus.len() + 1 + 2
    );
    assert_eq!(tree(&store), store0, "ls changed the store");

    // The library's inspector agrees and a writable open lists them too.
    let reports = inspect_store(&store, InspectOptions::new(true)).unwrap();
    let bad: BTreeSet<&str> = reports
        .iter()
        .filter(|r| r.problem.is_some())
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(bad, expect);
    let s = DiskBackedStore::open(&store).unwrap();
    assert_eq!(s.len() + s.incomplete().len(), corpus.len() + 1);
    drop(s);
    assert_eq!(tree(&store), store0);
}

/// Symbolic links at `K.npy` or `K.meta.json` pointing out of the store:
/// inserting the key replaces the link, removing it deletes the link; the
/// target is never written, truncated or deleted.
#[test]
fn corpus_symlinks_out_of_the_store_are_never_followed() {
    for which in ["npy", "meta"] {
        for op in ["insert", "insert_durable", "remove", "remove_after_reopen"] {
            let root = tempfile::tempdir().unwrap();
            let store = root.path().join("store");
            let outside = root.path().join("outside");
            std::fs::create_dir(&store).unwrap();
            fill_outside(&outside);
            let target = if which == "npy" {
                "victim.npy"
            } else {
                "victim.meta.json"
            };
            symlink_to(target, which)(&store, &outside, K);
            let link = store.join(if which == "npy" {
                "k.npy"
            } else {
                "k.meta.json"
            });
            let outside0 = tree(&outside);
            let ctx = format!("{which} link, {op}");
            let s = DiskBackedStore::open(&store).unwrap();
            assert!(!s.contains(K), "{ctx}");
            match op {
                "insert" | "insert_durable" => {
                    let v = ndarray::array![9i32, 9];
                    if op == "insert" {
                        s.insert(K, v.clone()).unwrap();
                        s.flush().unwrap();
                    } else {
                        s.insert_durable(K, v.clone()).unwrap();
                    }
                    assert!(!std::fs::symlink_metadata(&link)
                        .unwrap()
                        .file_type()
                        .is_symlink());
                    drop(s);
                    let s = DiskBackedStore::open(&store).unwrap();
                    assert_eq!(s.get::<i32, Ix1>(K).unwrap().to_owned_array().unwrap(), v);
                }
                "remove" => {
                    assert!(s.remove(K).unwrap(), "{ctx}: a broken entry is removable");
                    assert!(std::fs::symlink_metadata(&link).is_err(), "{ctx}");
                }
                _ => {
                    drop(s);
                    let s = DiskBackedStore::open(&store).unwrap();
                    assert!(s.remove(K).unwrap());
                    assert!(s.incomplete().is_empty());
                }
            }
            assert_eq!(tree(&outside), outside0, "{ctx}: the target was touched");
        }
    }
}

/// Every class of invalid name (see `EntryName`) is refused by every call
/// that takes a name, and touches nothing; a 200-byte name works end to end
/// and a 201-byte one does not.
#[test]
fn corpus_invalid_names_are_refused_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let s = DiskBackedStore::open(&dir).unwrap();
    s.insert_durable("ok", ndarray::array![1u8]).unwrap();
    let before = tree(&dir);
    let long_ascii = "x".repeat(201);
    let long_multibyte = format!("{}x", "\u{e9}".repeat(100)); // 201 bytes
    let classes: Vec<(&str, Vec<String>)> = vec![
        (
            "empty or reserved path name",
            vec!["".into(), ".".into(), "..".into()],
        ),
        (
            "control character",
            vec![
                "a\u{0}b".into(),
                "a\nb".into(),
                "tab\t".into(),
                "del\u{7f}".into(),
            ],
        ),
        (
            "absolute path, drive or ':'",
            vec![
                "/etc/passwd".into(),
                "\\\\server\\share".into(),
                "C:evil".into(),
                "a:b".into(),
            ],
        ),
        (
            "path separator",
            vec!["../escape".into(), "a/b".into(), "a\\b".into()],
        ),
        (
            "Windows device name",
            vec![
                "CON".into(),
                "nul.txt".into(),
                "Com1".into(),
                "LPT\u{b9}".into(),
                "AUX .npy".into(),
            ],
        ),
        ("trailing space or dot", vec!["a ".into(), "a.".into()]),
        (
            "longer than 200 bytes",
            vec![long_ascii.clone(), long_multibyte.clone()],
        ),
    ];
    let mut n = 0;
    for (rule, names) in &classes {
        for name in names {
            let check = |what: &str, r: ndarray_offload::Result<()>| match r {
                Err(Error::InvalidName { rule: got, .. }) => {
                    assert_eq!(got, *rule, "{what}({name:?})")
                }
                other => panic!("{what}({name:?}): {other:?}"),
            };
            check("insert", s.insert(name, ndarray::array![1u8]));
            check(
                "insert_durable",
                s.insert_durable(name, ndarray::array![1u8]),
            );
            check(
                "insert_batch",
                s.insert_batch(vec![
                    ("fine", ndarray::array![1u8]),
                    (name.as_str(), ndarray::array![2u8]),
                ]),
            );
            check("get", s.get::<u8, Ix1>(name).map(drop));
            check("info", s.info(name).map(drop));
            check("remove", s.remove(name).map(drop));
            check("offload", s.offload(name));
            check(
                "get_or_compute",
                s.get_or_compute::<u8, Ix1, _>(name, || ndarray::array![1u8])
                    .map(drop),
            );
            assert!(!s.contains(name));
            n += 1;
        }
    }
    assert!(
        !s.contains("fine"),
        "a batch with an invalid name inserts nothing"
    );
    s.flush().unwrap();
    assert_eq!(tree(&dir), before, "invalid names touched the store");
    assert!(tree(root.path()).keys().all(|p| p.starts_with("store")));
    eprintln!("{n} invalid names in {} classes refused", classes.len());

    // 200 bytes, ASCII and multi-byte: every file the store makes fits.
    for max in ["y".repeat(200), "\u{e9}".repeat(100)] {
        assert_eq!(max.len(), 200);
        s.insert(&max, ndarray::array![1i64, 2]).unwrap();
        s.flush().unwrap();
        s.insert_durable(&max, ndarray::array![3i64]).unwrap();
        s.offload(&max).unwrap();
        let h = s.get::<i64, Ix1>(&max).unwrap();
        h.write().unwrap().view_mut()[0] = 4;
        s.offload_all().unwrap();
        assert_eq!(h.to_owned_array().unwrap(), ndarray::array![4]);
    }
    drop(s);
    let s = DiskBackedStore::open(&dir).unwrap();
    for max in ["y".repeat(200), "\u{e9}".repeat(100)] {
        assert_eq!(
            s.get::<i64, Ix1>(&max).unwrap().to_owned_array().unwrap(),
            ndarray::array![4]
        );
        assert!(s.remove(&max).unwrap());
    }
    assert_eq!(s.keys().len(), 1);
    assert!(temp_files(&dir).is_empty());
}

/// A directory or a FIFO opened as a standalone `.npy` is refused at once
/// (opening a FIFO for reading would wait for a writer forever).
#[test]
fn corpus_standalone_special_files_are_refused() {
    let _dog = watchdog(
        "corpus_standalone_special_files_are_refused",
        Duration::from_secs(60),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dir.npy");
    std::fs::create_dir(&d).unwrap();
    let mut paths = vec![d];
    if have_mkfifo() {
        let f = dir.path().join("fifo.npy");
        assert!(Command::new("mkfifo").arg(&f).status().unwrap().success());
        paths.push(f);
    }
    for p in paths {
        let e = DiskBackedArray::<i32, Ix1>::open(&p, &CacheConfig::default()).unwrap_err();
        assert_eq!(variant(&e), "Corrupt", "{}: {e}", p.display());
    }
}

/// The child of `corpus_huge_declared_header_is_refused_without_allocating`,
/// run under an address-space limit.
#[test]
#[ignore = "run in a child process under `ulimit -v`"]
fn huge_header_child() {
    let Ok(dir) = std::env::var("NDOFFLOAD_HUGE_HEADER_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let p = dir.join(format!("{K}.npy"));
    let e = DiskBackedArray::<i32, Ix1>::open(&p, &CacheConfig::default()).unwrap_err();
    assert_eq!(variant(&e), "Truncated", "{e}");
    let s = DiskBackedStore::open_read_only(dir).unwrap();
    let e = read_as::<i32, Ix1>(&s, K).unwrap_err();
    assert_eq!(variant(&e), "Truncated", "{e}");
    let r = inspect_store(dir, InspectOptions::new(true)).unwrap();
    assert!(r[0].problem.is_some());
    println!("huge header refused");
}

/// A 20-byte NPY 2.0 file declaring a 4 GiB header is `Truncated`, also in
/// a process that cannot allocate 4 GiB (batch systems often run jobs under
/// `ulimit -v`): the declared length is never allocated.
#[test]
fn corpus_huge_declared_header_is_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = b"\x93NUMPY\x02\x00".to_vec();
    v.extend(0xFFFF_FFF0u32.to_le_bytes());
    v.extend(b"{'descr': '<i4', ");
    npy_case(v, good_meta())(dir.path(), dir.path(), K);
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" --exact reliability::huge_header_child --include-ignored --nocapture --test-threads=1")
        .arg(std::env::current_exe().unwrap())
        .env("NDOFFLOAD_HUGE_HEADER_DIR", dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("huge header refused"),
        "status {:?}:\n{text}",
        out.status
    );
}

// ---------------------------------------------------------------------------
// 3. Random bytes
// ---------------------------------------------------------------------------

/// Valid `.npy` files of several types, shapes and layouts, with the element
/// type they hold: the bases that mutations start from.
fn base_npys() -> Vec<(Vec<u8>, Vec<u64>, &'static str)> {
    let f = f_array(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], true);
    vec![
        (good_npy(), vec![4], "<i4"),
        (
            npy_of(&Array2::<i32>::from_shape_fn((3, 2), |(i, j)| {
                (i * 2 + j) as i32
            })),
            vec![3, 2],
            "<i4",
        ),
        (npy_of(&arr0(7i32)), vec![], "<i4"),
        (npy_of(&Array2::<i32>::zeros((0, 3))), vec![0, 3], "<i4"),
        (npy_of(&f), vec![2, 3], "<f8"),
        (npy_of(&ndarray::array![true, false, true]), vec![3], "|b1"),
    ]
}

/// An edit of a file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    /// Set the byte at a position (mod the length).
    Set(usize, u8),
    /// Keep only the first n bytes (mod the length + 1).
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove up to n bytes at a position.
    Delete(usize, usize),
    /// Replace one of the header's characters with one that means
    /// something in a header.
    Token(usize, u8),
    /// Insert `n` copies of a run of brackets (maybe with quotes, which
    /// hide what follows them from the nesting count) at a position.
    Nest(usize, &'static str, usize),
}

/// Runs of brackets for [`Mutation::Nest`] and [`deep_text`].
const NEST_UNITS: [&str; 10] = [
    "(",
    "[",
    "{",
    "([{",
    "(((",
    "('",
    "[\"",
    "\\'(",
    "{'a': ",
    "{\"a\": [",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    let meaningful =
        prop::sample::select(b"0123456789(),:'\"{}[] <>|ifubcOUV-.\n\\\x00\xff".to_vec());
    prop_oneof![
        3 => (0usize..200, any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (0usize..200, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (0usize..200, 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        4 => (10usize..128, meaningful).prop_map(|(i, b)| Mutation::Token(i, b)),
        1 => (10usize..140, prop::sample::select(NEST_UNITS.to_vec()), 1usize..3000)
            .prop_map(|(i, u, n)| Mutation::Nest(i, u, n)),
    ]
}

/// Nesting `depth` levels deep made of random bracket runs, closed or not.
fn deep_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(NEST_UNITS.to_vec()), 1..4),
        0usize..3000,
        any::<bool>(),
    )
        .prop_map(|(units, depth, close)| {
            let mut t = String::new();
            for i in 0..depth {
                t.push_str(units[i % units.len()]);
            }
            if close {
                for c in t.clone().chars().rev() {
                    match c {
                        '(' => t.push(')'),
                        '[' => t.push(']'),
                        '{' => t.push('}'),
                        _ => {}
                    }
                }
            }
            t
        })
}

/// A `.npy` file of format 1, 2 or 3 whose header has deep nesting in its
/// shape, its descr or an extra field.
fn deep_npy() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=3, 0usize..3, deep_text()).prop_map(|(version, place, deep)| {
        let dict = match place {
            0 => format!("{{'descr': '<i4', 'fortran_order': False, 'shape': {deep}, }}"),
            1 => format!("{{'descr': {deep}, 'fortran_order': False, 'shape': (4,), }}"),
            _ => format!("{{'descr': '<i4', 'fortran_order': False, 'shape': (4,), 'x': {deep}}}"),
        };
        npy_ver(version, &dict, &i32_data(4))
    })
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match m {
            Mutation::Set(i, x) | Mutation::Token(i, x) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] = *x;
                }
            }
            Mutation::Truncate(n) => {
                let n = n % (b.len() + 1);
                b.truncate(n);
            }
            Mutation::Insert(i, x) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, x.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    let end = (i + n).min(b.len());
                    b.drain(i..end);
                }
            }
            Mutation::Nest(i, unit, n) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, unit.repeat(*n).into_bytes());
            }
        }
    }
    b
}

/// A `.npy` file's bytes: random, or a mutated valid file.
fn npy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let n = base_npys().len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => (prop::collection::vec(any::<u8>(), 0..200)).prop_map(|tail| {
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend(tail);
            v
        }),
        6 => (0..n, prop::collection::vec(mutation(), 1..5))
            .prop_map(|(i, m)| mutate(base_npys()[i].0.clone(), &m)),
        1 => deep_npy(),
    ]
}

/// A `.meta.json` file's bytes: random, a mutated valid file, or a JSON
/// object whose fields take random (often wrong) values.
fn meta_bytes() -> impl Strategy<Value = Vec<u8>> {
    use serde_json::{json, Value};
    let any_json = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[ -~]{0,12}".prop_map(Value::from),
        prop::collection::vec(any::<i64>(), 0..3).prop_map(|v| json!(v)),
    ];
    // Each field is usually valid, so that the others get checked too.
    let field = |valid: Value| prop_oneof![3 => Just(valid), 1 => any_json.clone()];
    let shape = prop_oneof![
        3 => Just(json!([4])),
        1 => prop::collection::vec(any::<u64>(), 0..4).prop_map(|v| json!(v)),
        1 => prop::collection::vec(prop_oneof![0u64..8, Just(1u64 << 32), Just(u64::MAX)], 0..4)
            .prop_map(|v| json!(v)),
        1 => any_json.clone(),
    ];
    let dtype = prop_oneof![
        3 => Just(json!("<i4")),
        1 => prop::sample::select(vec!["<i4", ">i4", "<f8", "|b1", "<U5", "|O", "<i8", "i4", "", "<i0", "<i99999999999999999999"])
            .prop_map(Value::from),
        1 => any_json.clone(),
    ];
    let flag = prop::option::weighted(0.3, any_json.clone());
    let object = (
        field(json!(1)),
        field(json!("DiskBackedNDArray")),
        shape,
        dtype,
        flag,
    )
        .prop_map(|(v, c, s, d, f)| {
            let mut o = serde_json::Map::new();
            o.insert("schema_version".into(), v);
            o.insert("lazy_disk_cache_class".into(), c);
            o.insert("shape".into(), s);
            o.insert("dtype".into(), d);
            if let Some(f) = f {
                o.insert("enable_caching".into(), f);
            }
            Value::Object(o).to_string().into_bytes()
        });
    // JSON nesting: arrays and objects, strings holding brackets (each
    // unit with what closes it).
    let deep_json = (
        prop::collection::vec(
            prop::sample::select(vec![
                ("[", "]"),
                ("{\"a\": ", "}"),
                ("[{\"b\": ", "}]"),
                ("[\"[{\", ", "]"),
                ("[\"\\\"[\", ", "]"),
            ]),
            1..4,
        ),
        0usize..3000,
        any::<bool>(),
    )
        .prop_map(|(units, depth, close)| {
            let mut t = String::new();
            for i in 0..depth {
                t.push_str(units[i % units.len()].0);
            }
            t.push('1');
            if close {
                for i in (0..depth).rev() {
                    t.push_str(units[i % units.len()].1);
                }
            }
            t
        });
    let deep = (prop_oneof![deep_text(), deep_json], any::<bool>()).prop_map(|(deep, field)| {
        if field {
            format!(r#"{{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [4], "dtype": "<i4", "x": {deep}}}"#)
        } else {
            deep
        }
        .into_bytes()
    });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200),
        2 => prop::collection::vec(mutation(), 1..5)
            .prop_map(|m| mutate(good_meta().into_bytes(), &m)),
        4 => object,
        1 => deep,
    ]
}

/// Every way of reading `K` that a program might try; each may fail, none
/// may panic, and whatever opens can be read to the last element.
fn poke_store(dir: &Path) {
    for read_only in [false, true] {
        let s = if read_only {
            DiskBackedStore::open_read_only(dir)
        } else {
            DiskBackedStore::open(dir)
        }
        .unwrap();
        let _ = read_as::<i32, Ix1>(&s, K);
        let _ = read_as::<i32, IxDyn>(&s, K);
        let _ = read_as::<f64, IxDyn>(&s, K);
        let _ = read_as::<bool, IxDyn>(&s, K);
        if let Ok(h) = s.get::<i32, IxDyn>(K) {
            let a = h.as_array();
            let _ = (
                a.len(),
                a.is_empty(),
                a.nbytes(),
                h.shape().to_vec(),
                h.state(),
            );
            if !read_only {
                if let Ok(mut g) = h.write() {
                    g.view_mut().mapv_inplace(|x| x.wrapping_add(1));
                }
                // Offloading rewrites the pair from the (valid) data held.
                let _ = s.offload(K);
            }
        }
        let _ = (
            s.info(K),
            s.iter().collect::<Vec<_>>(),
            s.stats().to_string(),
        );
        let _ = inspect_store(dir, InspectOptions::new(true));
        drop(s);
        let _ = inspect_store(dir, InspectOptions::new(true));
    }
}

fn poke_file(p: &Path) {
    fn one<T: Element, D: Dimension>(p: &Path) {
        if let Ok(a) = DiskBackedArray::<T, D>::open(p, &CacheConfig::default()) {
            let _ = (a.len(), a.nbytes(), a.is_empty());
            if let Ok(g) = a.read() {
                assert_eq!(g.view().iter().count(), g.view().len());
            }
            for mode in [LoadMode::ReadOnly, LoadMode::CopyOnWrite] {
                let _ = a.load(mode);
            }
            let _ = a.to_owned_array();
        }
    }
    one::<i32, Ix1>(p);
    one::<i32, IxDyn>(p);
    one::<f64, Ix2>(p);
    one::<bool, IxDyn>(p);
    one::<i32, Ix0>(p);
}

proptest! {
    #![proptest_config(config(cases(256)))]

    #[test]
    fn random_npy_bytes_in_a_store(npy in npy_bytes(), meta_of in 0usize..6) {
        let dir = tempfile::tempdir().unwrap();
        // The metadata of one of the bases: a mutated file of that base then
        // gets past the metadata checks to its header.
        let (_, shape, dtype) = &base_npys()[meta_of];
        npy_case(npy, meta_text(shape, dtype))(dir.path(), dir.path(), K);
        poke_store(dir.path());
    }

    #[test]
    fn random_meta_bytes_in_a_store(meta in meta_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        meta_case(meta)(dir.path(), dir.path(), K);
        poke_store(dir.path());
    }

    #[test]
    fn random_bytes_as_a_standalone_npy(npy in npy_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        std::fs::write(&p, &npy).unwrap();
        poke_file(&p);
        prop_assert_eq!(std::fs::read(&p).unwrap(), npy, "opening changed the file");
    }
}

/// The three random-bytes properties again, every file read on a thread
/// with a small stack, in a child process: a parser that recursed on a
/// file's nesting would overflow that stack, and the abort is reported as
/// this test's failure instead of ending the test run.
/// `NDOFFLOAD_PROPTEST_CASES` sets the cases of each property (default 64).
#[test]
fn random_bytes_on_a_small_stack() {
    let run = run_child(
        "reliability::random_bytes_on_a_small_stack_child",
        &[("NDOFFLOAD_SMALL_STACK_CHILD", std::ffi::OsStr::new("1"))],
        Duration::from_secs(900),
    );
    let lines: Vec<&str> = run.output.lines().collect();
    if let Some(l) = lines.iter().find(|l| l.contains("on a small stack: ok")) {
        eprintln!("{l}");
    }
    assert!(
        run.ok() && run.output.contains("random bytes on a small stack: ok"),
        "status {:?}:\n{}",
        run.status,
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
}

#[test]
#[ignore = "run in a child process by random_bytes_on_a_small_stack"]
fn random_bytes_on_a_small_stack_child() {
    if std::env::var_os("NDOFFLOAD_SMALL_STACK_CHILD").is_none() {
        return;
    }
    // A runner counts the cases of all its runs: one per property.
    let runner = || proptest::test_runner::TestRunner::new(config(cases(64)));
    let n = AtomicU64::new(0);
    runner()
        .run(&(npy_bytes(), 0usize..6), |(npy, meta_of)| {
            n.fetch_add(1, Ordering::Relaxed);
            let dir = tempfile::tempdir().unwrap();
            let (_, shape, dtype) = &base_npys()[meta_of];
            npy_case(npy, meta_text(shape, dtype))(dir.path(), dir.path(), K);
            on_small_stack(|| poke_store(dir.path()));
            Ok(())
        })
        .unwrap();
    runner()
        .run(&meta_bytes(), |meta| {
            n.fetch_add(1, Ordering::Relaxed);
            let dir = tempfile::tempdir().unwrap();
            meta_case(meta)(dir.path(), dir.path(), K);
            on_small_stack(|| poke_store(dir.path()));
            Ok(())
        })
        .unwrap();
    runner()
        .run(&npy_bytes(), |npy| {
            n.fetch_add(1, Ordering::Relaxed);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("a.npy");
            std::fs::write(&p, &npy).unwrap();
            on_small_stack(|| poke_file(&p));
            prop_assert_eq!(std::fs::read(&p).unwrap(), npy, "opening changed the file");
            Ok(())
        })
        .unwrap();
    println!(
        "random bytes on a small stack: ok ({} cases)",
        n.load(Ordering::Relaxed)
    );
}

// ---------------------------------------------------------------------------
// 4. Concurrency
// ---------------------------------------------------------------------------

pub(crate) const THREADS: usize = 8;
const OWN_KEYS: usize = 4;
const SHARED_KEYS: usize = 4;
/// 32 KiB: about a tenth of what the threads keep in the store, so that
/// inserts and reads evict all the time.
pub(crate) const SMALL_BUDGET: u64 = 32 << 10;

fn own_key(t: usize, j: usize) -> String {
    format!("t{t}_{j}")
}

fn shared_key(j: usize) -> String {
    format!("shared_{j}")
}

fn shared_value(j: usize) -> Array1<i64> {
    Array1::from_shape_fn(300, |i| (j * 1000 + i) as i64)
}

fn fresh_value(t: usize, n: u64, rng: &mut Rng) -> Array1<i64> {
    let len = 1 + rng.below(600);
    Array1::from_shape_fn(len, |i| (t as i64) << 40 | (n as i64) << 12 | i as i64)
}

/// A short description of a value for assertion messages.
fn summary(v: &[i64]) -> String {
    match (v.first(), v.last()) {
        (Some(a), Some(b)) => format!("{} values {a:#x}..{b:#x}", v.len()),
        _ => "empty".into(),
    }
}

/// Compares a value read from the store with the model, printing summaries.
fn same(got: &[i64], want: &[i64], ctx: &str) {
    assert!(
        got == want,
        "{ctx}: store has {}, model {}",
        summary(got),
        summary(want)
    );
}

#[derive(Default)]
pub(crate) struct Counts {
    /// `get` and `get_or_compute` calls made.
    pub(crate) gets: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) nested: AtomicU64,
    /// What each worker is doing and since when (`None`: not running), for
    /// the stall watchdog of `concurrency.rs`.
    pub(crate) doing: [std::sync::Mutex<Option<(Instant, String)>>; THREADS],
}

impl Counts {
    fn doing(&self, t: usize, what: String) {
        if let Some(slot) = self.doing.get(t) {
            if let Ok(mut d) = slot.lock() {
                *d = Some((Instant::now(), what));
            }
        }
    }
}

/// One thread: random operations on its own keys (whose values it tracks
/// exactly), lookups of the shared keys and of other threads' keys.
pub(crate) fn worker(
    t: usize,
    s: &DiskBackedStore,
    deadline: Instant,
    counts: &Counts,
) -> BTreeMap<String, Vec<i64>> {
    let mut rng = Rng(0xC0FFEE + t as u64);
    let mut model: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let get = |k: &str| {
        counts.gets.fetch_add(1, Ordering::Relaxed);
        s.get::<i64, Ix1>(k)
    };
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let k = own_key(t, rng.below(OWN_KEYS));
        let ctx = format!("thread {t}, op {n}, {k}");
        let op = rng.below(16);
        counts.doing(t, format!("{ctx}: operation {op} of `worker`"));
        match op {
            0 | 1 => {
                let v = fresh_value(t, n, &mut rng);
                s.insert(&k, v.clone()).unwrap();
                model.insert(k, v.to_vec());
            }
            2 => {
                let v = fresh_value(t, n, &mut rng);
                s.insert_durable(&k, v.clone()).unwrap();
                model.insert(k, v.to_vec());
            }
            3 | 4 => match (get(&k), model.get(&k)) {
                (Ok(h), Some(v)) => same(&h.to_owned_array().unwrap().to_vec(), v, &ctx),
                (Err(Error::KeyNotFound { .. }), None) => {}
                (r, v) => panic!(
                    "{ctx}: get gave {:?} with model {:?}",
                    r.map(drop),
                    v.map(|v| summary(v))
                ),
            },
            5 => {
                if let Some(v) = model.get_mut(&k) {
                    let h = get(&k).unwrap();
                    let mut g = h.write().unwrap();
                    g.view_mut().mapv_inplace(|x| x + 1);
                    g.finish().unwrap();
                    v.iter_mut().for_each(|x| *x += 1);
                    if rng.below(2) == 0 {
                        s.flush().unwrap();
                    }
                }
            }
            6 => {
                let existed = s.remove(&k).unwrap();
                assert_eq!(existed, model.remove(&k).is_some(), "{ctx}");
            }
            7 => match (s.offload(&k), model.contains_key(&k)) {
                (Ok(()), true) | (Err(Error::KeyNotFound { .. }), false) => {}
                (r, present) => panic!("{ctx}: offload gave {r:?}, present {present}"),
            },
            8 => s.flush().unwrap(),
            9 => {
                let j = rng.below(SHARED_KEYS);
                counts.gets.fetch_add(1, Ordering::Relaxed);
                let h = s
                    .get_or_compute::<i64, Ix1, _>(shared_key(j), || shared_value(j))
                    .unwrap();
                assert_eq!(h.to_owned_array().unwrap(), shared_value(j), "{ctx}");
            }
            10 => {
                let v = fresh_value(t, n, &mut rng);
                counts.gets.fetch_add(1, Ordering::Relaxed);
                let h = s.get_or_compute::<i64, Ix1, _>(&k, || v.clone()).unwrap();
                let expect = model.entry(k).or_insert_with(|| v.to_vec()).clone();
                same(&h.to_owned_array().unwrap().to_vec(), &expect, &ctx);
            }
            11 => {
                // Another thread's key: it may be replaced, removed or
                // offloaded meanwhile; any error is acceptable, a panic or a
                // torn view is not.
                let o = (t + 1 + rng.below(THREADS - 1)) % THREADS;
                if let Ok(h) = get(&own_key(o, rng.below(OWN_KEYS))) {
                    if let Ok(g) = h.read() {
                        let v = g.view();
                        assert_eq!(v.iter().count(), v.len());
                        assert!(
                            v.iter().all(|x| (x >> 40) as usize == o),
                            "{ctx}: torn value"
                        );
                    }
                }
            }
            12 => {
                let (a, b) = (
                    own_key(t, rng.below(OWN_KEYS)),
                    own_key(t, rng.below(OWN_KEYS)),
                );
                let (va, vb) = (fresh_value(t, n, &mut rng), fresh_value(t, n, &mut rng));
                s.insert_batch(vec![(a.clone(), va.clone()), (b.clone(), vb.clone())])
                    .unwrap();
                model.insert(a, va.to_vec());
                model.insert(b, vb.to_vec()); // the later duplicate wins
            }
            13 => {
                // Guards held across store calls, as a pipeline does: edit
                // one entry while inserting another derived from it, look at
                // the statistics meanwhile; flush and replace an entry while
                // reading it.
                let Some(v) = model.get(&k).cloned() else {
                    continue;
                };
                counts.nested.fetch_add(1, Ordering::Relaxed);
                let other = own_key(
                    t,
                    (k.as_bytes()[k.len() - 1] - b'0' + 1) as usize % OWN_KEYS,
                );
                let h = get(&k).unwrap();
                if rng.below(2) == 0 {
                    let mut g = h.write().unwrap();
                    g.view_mut().mapv_inplace(|x| x + 1);
                    let derived = g.view().to_owned();
                    s.insert(&other, derived.clone()).unwrap();
                    let _ = (s.stats(), s.info(&k).unwrap(), s.len());
                    g.finish().unwrap();
                    model.insert(k, v.iter().map(|x| x + 1).collect());
                    model.insert(other, derived.to_vec());
                } else {
                    let g = h.read().unwrap();
                    // `InUse`: another thread holding a guard waits for
                    // this one (its entry is then not flushed).
                    match s.flush() {
                        Ok(()) | Err(Error::InUse { .. }) => {}
                        Err(e) => panic!("{ctx}: flush under a read guard: {e}"),
                    }
                    let derived = g.view().mapv(|x| x + 2);
                    s.insert(&k, derived.clone()).unwrap();
                    same(
                        &g.view().to_vec(),
                        &v,
                        &format!("{ctx}: the reader keeps its value"),
                    );
                    drop(g);
                    model.insert(k, derived.to_vec());
                }
            }
            14 => {
                let _ = s.stats();
                let _ = s.iter().count();
            }
            _ => {
                if rng.below(8) == 0 {
                    s.offload_all().unwrap();
                } else {
                    crate::common::enforce_budget(s);
                }
            }
        }
        counts.ops.fetch_add(1, Ordering::Relaxed);
    }
    // Every key of this thread reads as its last value.
    counts.doing(t, format!("thread {t}: final check of its keys"));
    for j in 0..OWN_KEYS {
        let k = own_key(t, j);
        match (get(&k), model.get(&k)) {
            (Ok(h), Some(v)) => same(
                &h.to_owned_array().unwrap().to_vec(),
                v,
                &format!("end: {k}"),
            ),
            (Err(Error::KeyNotFound { .. }), None) => {}
            (r, v) => panic!(
                "end: {k}: {:?} with model {:?}",
                r.map(drop),
                v.map(|v| summary(v))
            ),
        }
    }
    model
}

#[test]
fn concurrent_mixed_operations_under_a_small_budget() {
    let secs: f64 = env_or("NDOFFLOAD_CONCURRENCY_SECS", 2.0);
    let run = Duration::from_secs_f64(secs);
    let _dog = watchdog(
        "concurrent_mixed_operations_under_a_small_budget",
        run * 10 + Duration::from_secs(120),
    );
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let s = StoreBuilder::new(&dir)
        .memory_budget(SMALL_BUDGET)
        .open()
        .unwrap();
    let counts = Counts::default();
    let deadline = Instant::now() + run;
    let models: Vec<BTreeMap<String, Vec<i64>>> = std::thread::scope(|sc| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, counts) = (&s, &counts);
                sc.spawn(move || worker(t, s, deadline, counts))
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: BTreeMap<String, Vec<i64>> = models.into_iter().flatten().collect();
    for j in 0..SHARED_KEYS {
        if s.contains(shared_key(j)) {
            all.insert(shared_key(j), shared_value(j).to_vec());
        }
    }
    let keys: Vec<String> = s.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        all.keys().cloned().collect::<Vec<_>>(),
        "no entry lost or invented"
    );
    assert!(s.incomplete().is_empty());

    // Statistics with every thread done.
    let st = s.stats();
    let resident: u64 = s
        .keys()
        .iter()
        .map(|k| s.info(k.as_str()).unwrap())
        .filter(|i| i.state != ArrayState::Offloaded)
        .map(|i| i.nbytes)
        .sum();
    assert_eq!(st.bytes_resident, resident, "{st}");
    let gets = counts.gets.load(Ordering::Relaxed);
    assert!(
        st.hits + st.loads + st.misses >= gets,
        "{gets} gets issued, {st}"
    );
    crate::common::enforce_budget(&s);
    assert!(s.stats().bytes_resident <= SMALL_BUDGET, "{}", s.stats());

    for (k, v) in &all {
        let got = s.get::<i64, Ix1>(k).unwrap().to_owned_array().unwrap();
        same(&got.to_vec(), v, k);
    }
    s.flush().unwrap();
    drop(s);
    let s = DiskBackedStore::open(&dir).unwrap();
    let keys: Vec<String> = s.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(
        keys,
        all.keys().cloned().collect::<Vec<_>>(),
        "after reopen"
    );
    assert!(s.incomplete().is_empty());
    assert!(temp_files(&dir).is_empty());
    for (k, v) in &all {
        let got = s.get::<i64, Ix1>(k).unwrap().to_owned_array().unwrap();
        same(&got.to_vec(), v, &format!("after reopen: {k}"));
    }
    eprintln!(
        "concurrency: {THREADS} threads for {secs} s: {} operations ({} with guards held across store calls), {gets} lookups, {} entries at the end; {}",
        counts.ops.load(Ordering::Relaxed),
        counts.nested.load(Ordering::Relaxed),
        all.len(),
        st.to_string().replace('\n', ";")
    );
}

/// Store calls made while the same thread holds a guard on an entry must
/// not wait for that guard (a self-deadlock); the watchdog turns a hang
/// into a failure.
#[test]
fn concurrent_store_calls_while_holding_a_guard() {
    let _dog = watchdog(
        "concurrent_store_calls_while_holding_a_guard",
        Duration::from_secs(120),
    );
    let dir = tempfile::tempdir().unwrap();
    // Two 8000-byte entries fit, a third does not.
    let s = StoreBuilder::new(dir.path())
        .memory_budget(16_000u64)
        .open()
        .unwrap();
    let v = |x: f64| Array1::<f64>::from_elem(1000, x);
    s.insert("x", v(1.0)).unwrap();
    s.insert("y", v(2.0)).unwrap();

    // A write guard on x while inserting (which evicts) and querying.
    let hx = s.get::<f64, Ix1>("x").unwrap();
    let mut g = hx.write().unwrap();
    g.view_mut()[0] = 10.0;
    s.insert("z", v(3.0)).unwrap();
    s.insert("w", v(4.0)).unwrap();
    let st = s.stats();
    assert!(st.evictions >= 1, "{st}");
    assert_ne!(s.info("x").unwrap().state, ArrayState::Offloaded, "pinned");
    let _ = (
        s.iter().count(),
        s.get::<f64, Ix1>("x").unwrap().shape().to_vec(),
    );
    crate::common::enforce_budget(&s);
    g.finish().unwrap();

    // A read guard on x while flushing, offloading others and replacing x.
    let g = hx.read().unwrap();
    s.flush().unwrap();
    s.offload("y").unwrap();
    s.insert("x", v(5.0)).unwrap();
    s.insert_durable("x", v(6.0)).unwrap();
    assert_eq!(g.view()[0], 10.0, "the reader keeps its value");
    drop(g);
    drop(hx);
    // A read guard on y while removing y.
    let hy = s.get::<f64, Ix1>("y").unwrap();
    let g = hy.read().unwrap();
    assert!(s.remove("y").unwrap());
    assert_eq!(g.view()[0], 2.0, "the reader keeps its value");
    drop(g);
    assert_eq!(
        hy.to_owned_array().unwrap(),
        v(2.0),
        "and so does the handle"
    );
    s.flush().unwrap();
    drop(s);
    let s = DiskBackedStore::open(dir.path()).unwrap();
    let x = s.get::<f64, Ix1>("x").unwrap().to_owned_array().unwrap();
    assert_eq!(x, v(6.0));
    assert_eq!(s.len(), 3);
}
