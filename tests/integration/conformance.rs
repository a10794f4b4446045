//! The conformance suite of the storage seam (issue 21): one set of cases,
//! written against the public store API (`DiskBackedStore`,
//! `StoreBuilder`) and the `__testing` hooks, that every backend passes, as
//! object_store's and zarrs' backends share one suite.
//!
//! A [`Backend`] opens a fresh location and further handles on it
//! (writable or read-only, exclusive or not, with a memory budget or not).
//! Backends: the local directory, the object-store tier over `memory://`
//! (one shared `InMemory`, a cache directory per handle, as nodes), over
//! `s3://` on moto (one server, a fresh prefix per case), and the fault
//! wrapper at the seam (`__testing::open_with_seam_faults`) over the first
//! two, which runs every case with seam call N = 1, 2, ... failed until the
//! case completes without a fault, once failing the call before it is made
//! and once after (it took effect, the answer is lost).
//!
//! Each case is a plain function of a [`Cx`] (the backend, a fresh
//! location, and the journal of every value written), so the suite runs
//! over any backend and a failure names the case and the backend. After
//! every case the location is opened again and checked against the
//! journal: every entry reads as a whole value that was written to it, an
//! acknowledged durable write not written over since is there, and an
//! acknowledged removal is not.
//!
//! A deliberately broken backend (`__testing::open_ignoring_versions`: no
//! version is checked) fails the suite, in the case designed to catch it.
//!
//! Each run prints `CONFORMANCE | backend | case | result` lines, and the
//! fault runs `SEAM-FAULTS | backend | case | calls | runs | typed errors |
//! faults the case did not see` (run with `--nocapture`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "remote")]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use ndarray::{Array1, ArrayD, Ix1, IxDyn, ShapeBuilder};
use ndarray_offload::__testing::{open_ignoring_versions, open_with_seam_faults, SeamFaults};
use ndarray_offload::{
    Batch, DiskBackedStore, DynArray, Element, Error, InsertOptions, StoreBuilder,
};
use num_complex::Complex;
use serde_json::{json, Value};

// ---------------------------------------------------------------------
// Backends

/// How a handle is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts {
    pub read_only: bool,
    pub exclusive: bool,
    /// Memory budget in bytes.
    pub budget: Option<u64>,
}

impl Opts {
    pub fn writer() -> Self {
        Opts::default()
    }

    pub fn reader() -> Self {
        Opts {
            read_only: true,
            ..Opts::default()
        }
    }
}

/// A location of a backend: a directory, or an object-store prefix with
/// the directory its handles' caches are made in.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub struct Loc {
    root: tempfile::TempDir,
    /// The store directory, or the URL of the prefix: what messages name.
    target: String,
    handles: AtomicUsize,
}

impl Loc {
    fn new(target: impl FnOnce(&std::path::Path) -> String) -> Loc {
        let root = scratch();
        let target = target(root.path());
        Loc {
            root,
            target,
            handles: AtomicUsize::new(0),
        }
    }

    /// A new cache directory (one per handle: each handle is a node).
    #[cfg(feature = "remote")]
    fn cache(&self) -> PathBuf {
        let n = self.handles.fetch_add(1, Ordering::Relaxed);
        self.root.path().join(format!("cache-{n}"))
    }
}

/// A new directory for a location: under `NDOFFLOAD_CONFORMANCE_DIR` when
/// set, else on `/dev/shm` when there is one, else in the temporary
/// directory. The suite checks what the API promises while processes live
/// (`powerloss.rs` checks what a power cut leaves); on a disk, the `fsync`s
/// of the fault runs (every case again for each seam call) would make up
/// most of its time.
fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("NDOFFLOAD_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()));
    base.and_then(|b| tempfile::tempdir_in(b).ok())
        .unwrap_or_else(|| tempfile::tempdir().unwrap())
}

/// What the suite needs of a backend.
pub trait Backend: Sync {
    /// Its name, in failures.
    fn name(&self) -> String;
    /// A fresh, empty location.
    fn fresh(&self) -> Loc;
    /// The builder of a new handle on `loc`.
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder;
    /// Opens a new handle on `loc`.
    fn open(&self, loc: &Loc, o: Opts) -> ndarray_offload::Result<DiskBackedStore> {
        self.builder(loc, o).open()
    }
    /// Whether faults are injected (the cases then print nothing).
    fn faulty(&self) -> bool {
        false
    }
}

fn apply(b: StoreBuilder, o: Opts) -> StoreBuilder {
    let b = b.read_only(o.read_only).exclusive(o.exclusive);
    match o.budget {
        Some(m) => b.memory_budget(m),
        None => b,
    }
}

/// The local directory.
pub struct Local;

impl Backend for Local {
    fn name(&self) -> String {
        "local".into()
    }
    fn fresh(&self) -> Loc {
        Loc::new(|root| root.join("store").display().to_string())
    }
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder {
        apply(StoreBuilder::new(&loc.target), o)
    }
}

/// The object-store tier over `memory://`: one `InMemory` shared by every
/// handle (node), each with its own cache directory.
#[cfg(feature = "remote")]
pub struct Memory {
    store: Arc<dyn ndarray_offload::__testing::object_store::ObjectStore>,
    prefixes: AtomicUsize,
}

#[cfg(feature = "remote")]
impl Memory {
    pub fn new() -> Self {
        Memory {
            store: Arc::new(ndarray_offload::__testing::object_store::memory::InMemory::new()),
            prefixes: AtomicUsize::new(0),
        }
    }
}

#[cfg(feature = "remote")]
impl Backend for Memory {
    fn name(&self) -> String {
        "memory://".into()
    }
    fn fresh(&self) -> Loc {
        let n = self.prefixes.fetch_add(1, Ordering::Relaxed);
        Loc::new(|_| format!("memory:///conformance/{n}"))
    }
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder {
        let b = ndarray_offload::__testing::tiered_on(
            StoreBuilder::new(loc.cache()),
            &loc.target,
            self.store.clone(),
            ndarray_offload::remote::RemoteOptions::default(),
        );
        apply(b, o)
    }
}

/// The object-store tier over `s3://` on moto: one server, a fresh prefix
/// per location.
#[cfg(feature = "remote")]
pub struct S3 {
    moto: crate::remote::Moto,
    prefixes: AtomicUsize,
}

#[cfg(feature = "remote")]
impl Backend for S3 {
    fn name(&self) -> String {
        "s3:// (moto)".into()
    }
    fn fresh(&self) -> Loc {
        let n = self.prefixes.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Loc::new(|_| self.moto.url(&format!("conformance/{pid}-{n}")))
    }
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder {
        let b = StoreBuilder::new(loc.cache()).remote_with(&loc.target, self.moto.options());
        apply(b, o)
    }
}

/// The fault wrapper at the seam over another backend: every handle opened
/// while a plan is set shares its counter.
pub struct Faults<'b> {
    inner: &'b dyn Backend,
    plan: Option<SeamFaults>,
}

impl Backend for Faults<'_> {
    fn name(&self) -> String {
        format!("seam faults over {}", self.inner.name())
    }
    fn fresh(&self) -> Loc {
        self.inner.fresh()
    }
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder {
        self.inner.builder(loc, o)
    }
    fn open(&self, loc: &Loc, o: Opts) -> ndarray_offload::Result<DiskBackedStore> {
        let plan = self.plan.clone().unwrap_or_else(|| SeamFaults::fail_at(0));
        open_with_seam_faults(self.inner.builder(loc, o), &plan)
    }
    fn faulty(&self) -> bool {
        true
    }
}

/// A deliberately broken backend: another one whose storage checks no
/// version (`__testing::open_ignoring_versions`).
pub struct IgnoresVersions<'b>(&'b dyn Backend);

impl Backend for IgnoresVersions<'_> {
    fn name(&self) -> String {
        format!("{} ignoring versions (broken)", self.0.name())
    }
    fn fresh(&self) -> Loc {
        self.0.fresh()
    }
    fn builder(&self, loc: &Loc, o: Opts) -> StoreBuilder {
        self.0.builder(loc, o)
    }
    fn open(&self, loc: &Loc, o: Opts) -> ndarray_offload::Result<DiskBackedStore> {
        open_ignoring_versions(self.0.builder(loc, o))
    }
}

// ---------------------------------------------------------------------
// Cases: their context, failures and journal

/// Why a case stopped: an error of the store (acceptable only while faults
/// are injected), or a check that failed (never acceptable).
#[derive(Debug)]
pub enum Fail {
    Store(String, Box<Error>),
    Check(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Store(what, e) => write!(f, "{what}: {e}"),
            Fail::Check(m) => write!(f, "check failed: {m}"),
        }
    }
}

pub type R<T = ()> = Result<T, Fail>;

trait At<T> {
    /// The store's error as a [`Fail::Store`] naming what was done.
    fn at(self, what: impl std::fmt::Display) -> R<T>;
}

impl<T> At<T> for ndarray_offload::Result<T> {
    fn at(self, what: impl std::fmt::Display) -> R<T> {
        self.map_err(|e| Fail::Store(what.to_string(), Box::new(e)))
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Fail::Check(format!($($msg)+)));
        }
    };
}

fn injected(e: &Error) -> bool {
    e.to_string().contains("injected fault")
}

/// `r` must fail as `want` says. An injected fault instead stops the case
/// as a store error; any other outcome is a failed check.
fn expect_err<T: Debug>(
    r: ndarray_offload::Result<T>,
    what: &str,
    want: impl Fn(&Error) -> bool,
) -> R<Error> {
    match r {
        Err(e) if want(&e) => Ok(e),
        Err(e) if injected(&e) => Err(Fail::Store(what.to_string(), Box::new(e))),
        Err(e) => Err(Fail::Check(format!("{what}: unexpected error: {e}"))),
        Ok(v) => Err(Fail::Check(format!(
            "{what}: succeeded ({v:?}), expected an error"
        ))),
    }
}

/// What was written to one key.
#[derive(Debug)]
struct KeyLog {
    /// Every value ever written (attempted) to the key.
    values: Vec<DynArray>,
    /// Whether the key may be missing.
    absent_ok: bool,
    /// What an acknowledged durable operation not overtaken since demands:
    /// that value, or (`None`) absence.
    must: Option<Option<DynArray>>,
    /// Written by several handles at once: no write is demanded.
    contended: bool,
}

impl Default for KeyLog {
    fn default() -> Self {
        KeyLog {
            values: Vec::new(),
            absent_ok: true,
            must: None,
            contended: false,
        }
    }
}

/// A case's context: the backend, a fresh location, the journal.
pub struct Cx<'b> {
    pub b: &'b dyn Backend,
    pub loc: Loc,
    journal: Mutex<BTreeMap<String, KeyLog>>,
}

impl<'b> Cx<'b> {
    fn new(b: &'b dyn Backend) -> Self {
        Cx {
            b,
            loc: b.fresh(),
            journal: Mutex::new(BTreeMap::new()),
        }
    }

    /// Where messages say the entries are.
    fn location(&self) -> &str {
        &self.loc.target
    }

    fn open(&self, o: Opts) -> R<DiskBackedStore> {
        self.b.open(&self.loc, o).at(format!("open {o:?}"))
    }

    fn writer(&self) -> R<DiskBackedStore> {
        self.open(Opts::writer())
    }

    fn reader(&self) -> R<DiskBackedStore> {
        self.open(Opts::reader())
    }

    fn log<T>(&self, key: &str, f: impl FnOnce(&mut KeyLog) -> T) -> T {
        f(self
            .journal
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default())
    }

    /// `v` is about to be written to `key`.
    fn attempt(&self, key: &str, v: &DynArray) {
        self.log(key, |l| {
            l.values.push(v.clone());
            l.must = None;
        });
    }

    /// The write of `v` to `key` was acknowledged as durable.
    fn ack(&self, key: &str, v: &DynArray) {
        self.log(key, |l| {
            if !l.contended {
                l.must = Some(Some(v.clone()));
                l.absent_ok = false;
            }
        });
    }

    /// Several handles write `key` at once.
    fn contend(&self, key: &str) {
        self.log(key, |l| {
            l.contended = true;
            l.must = None;
        });
    }

    /// Inserts `v` as `key` with `opts`; a durable insert is acknowledged.
    fn put_opts(
        &self,
        s: &DiskBackedStore,
        key: &str,
        v: &DynArray,
        opts: &InsertOptions,
        durable: bool,
    ) -> R {
        self.attempt(key, v);
        let opts = opts.clone().durable(durable);
        insert_dyn(s, key, v, &opts).at(format!("insert {key}"))?;
        if durable {
            self.ack(key, v);
        }
        Ok(())
    }

    fn put(&self, s: &DiskBackedStore, key: &str, v: &DynArray) -> R {
        self.put_opts(s, key, v, &InsertOptions::new(), false)
    }

    fn put_durable(&self, s: &DiskBackedStore, key: &str, v: &DynArray) -> R {
        self.put_opts(s, key, v, &InsertOptions::new(), true)
    }

    /// Removes `key`; returns whether it existed.
    fn remove(&self, s: &DiskBackedStore, key: &str) -> R<bool> {
        self.log(key, |l| {
            l.absent_ok = true;
            l.must = None;
        });
        let r = s.remove(key).at(format!("remove {key}"))?;
        self.log(key, |l| {
            if !l.contended {
                l.must = Some(None);
            }
        });
        Ok(r)
    }

    /// Flushes `s` and acknowledges `written`, the values its entries hold.
    fn flush(&self, s: &DiskBackedStore, written: &[(&str, &DynArray)]) -> R {
        s.flush().at("flush")?;
        for (k, v) in written {
            self.ack(k, v);
        }
        Ok(())
    }

    /// Opens the location again (a writable open, which recovers what was
    /// interrupted) and checks it against the journal.
    fn verify(&self, b: &dyn Backend) -> Result<(), String> {
        let s = b
            .open(&self.loc, Opts::writer())
            .map_err(|e| format!("reopen: {e}"))?;
        let journal = self.journal.lock().unwrap();
        let incomplete = s.incomplete();
        if !incomplete.is_empty() {
            return Err(format!("incomplete entries after reopen: {incomplete:?}"));
        }
        for key in s.keys() {
            let k = key.as_str();
            let Some(log) = journal.get(k) else {
                return Err(format!("entry {k} was never written"));
            };
            let v = s
                .read_dyn(k)
                .map_err(|e| format!("read {k} after reopen: {e}"))?;
            if !log.values.contains(&v) {
                return Err(format!(
                    "{k} reads {} {:?}, not a whole value written to it",
                    v.dtype(),
                    v.shape()
                ));
            }
            match &log.must {
                Some(Some(m)) if *m != v => {
                    return Err(format!(
                        "{k}: an acknowledged durable write was lost (it reads an older value)"
                    ))
                }
                Some(None) => return Err(format!("{k}: an acknowledged removal was lost")),
                _ => {}
            }
        }
        for (k, log) in journal.iter() {
            if !s.contains(k) && !log.absent_ok {
                return Err(format!(
                    "{k}: an acknowledged durable write was lost (missing)"
                ));
            }
        }
        drop(journal);
        s.close().map_err(|e| format!("close after verify: {e}"))
    }
}

// ---------------------------------------------------------------------
// Values of every element type

const DTYPES: [&str; 13] = [
    "bool", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64", "c64", "c128",
];

fn make<T>(shape: &[usize], fortran: bool, f: impl Fn(u64) -> T) -> ArrayD<T> {
    let n: usize = shape.iter().product();
    let data: Vec<T> = (0..n as u64).map(f).collect();
    if fortran {
        ArrayD::from_shape_vec(IxDyn(shape).f(), data).unwrap()
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), data).unwrap()
    }
}

/// A value of element type `DTYPES[t]` and `shape`, in Fortran order or
/// not, whose elements depend on `seed`.
fn sample(t: usize, shape: &[usize], fortran: bool, seed: u64) -> DynArray {
    let x = move |i: u64| i.wrapping_mul(37).wrapping_add(seed.wrapping_mul(1001));
    match DTYPES[t] {
        "bool" => DynArray::Bool(make(shape, fortran, |i| x(i) % 3 == 0)),
        "i8" => DynArray::I8(make(shape, fortran, |i| x(i) as i8)),
        "i16" => DynArray::I16(make(shape, fortran, |i| -(x(i) as i16))),
        "i32" => DynArray::I32(make(shape, fortran, |i| x(i) as i32 - 500)),
        "i64" => DynArray::I64(make(shape, fortran, |i| -(x(i) as i64) << 20)),
        "u8" => DynArray::U8(make(shape, fortran, |i| x(i) as u8)),
        "u16" => DynArray::U16(make(shape, fortran, |i| x(i) as u16)),
        "u32" => DynArray::U32(make(shape, fortran, |i| x(i) as u32)),
        "u64" => DynArray::U64(make(shape, fortran, |i| x(i) << 33)),
        "f32" => DynArray::F32(make(shape, fortran, |i| x(i) as f32 / 8.0)),
        "f64" => DynArray::F64(make(shape, fortran, |i| x(i) as f64 / -3.0)),
        "c64" => DynArray::C32(make(shape, fortran, |i| {
            Complex::new(x(i) as f32, -(i as f32))
        })),
        "c128" => DynArray::C64(make(shape, fortran, |i| {
            Complex::new(i as f64 / 7.0, x(i) as f64)
        })),
        other => unreachable!("{other}"),
    }
}

fn index_of(dtype: &str) -> usize {
    DTYPES.iter().position(|d| *d == dtype).unwrap()
}

/// Runs `$body` with `$a` bound to the typed array inside `$v`.
macro_rules! with_typed {
    ($v:expr, $a:ident => $body:expr) => {
        match $v {
            DynArray::Bool($a) => $body,
            DynArray::I8($a) => $body,
            DynArray::I16($a) => $body,
            DynArray::I32($a) => $body,
            DynArray::I64($a) => $body,
            DynArray::U8($a) => $body,
            DynArray::U16($a) => $body,
            DynArray::U32($a) => $body,
            DynArray::U64($a) => $body,
            DynArray::F32($a) => $body,
            DynArray::F64($a) => $body,
            DynArray::C32($a) => $body,
            DynArray::C64($a) => $body,
            other => panic!("an element type the suite does not know: {}", other.dtype()),
        }
    };
}

fn insert_dyn(
    s: &DiskBackedStore,
    key: &str,
    v: &DynArray,
    opts: &InsertOptions,
) -> ndarray_offload::Result<()> {
    with_typed!(v, a => s.insert_opts(key, a.clone(), opts))
}

fn push_dyn(
    b: &mut Batch,
    key: &str,
    v: &DynArray,
    opts: &InsertOptions,
) -> ndarray_offload::Result<()> {
    with_typed!(v, a => b.push_opts(key, a.clone(), opts))
}

/// The typed `get` of `key` reads `want` (same elements; the same memory
/// order for an array of 2 or more dimensions), and `info`, `get_dyn` and
/// `read_dyn` agree with it.
fn check_value(s: &DiskBackedStore, key: &str, want: &DynArray) -> R {
    with_typed!(want, a => check_typed(s, key, a))?;
    let info = s.info(key).at(format!("info {key}"))?;
    ensure!(
        info.dtype == want.dtype() && info.shape == want.shape(),
        "info({key}) says {} {:?}, the value is {} {:?}",
        info.dtype,
        info.shape,
        want.dtype(),
        want.shape()
    );
    let d = s.get_dyn(key).at(format!("get_dyn {key}"))?;
    ensure!(
        d.dtype() == want.dtype() && d.shape() == want.shape(),
        "get_dyn({key}) says {} {:?}",
        d.dtype(),
        d.shape()
    );
    let owned = d.to_owned_array().at(format!("get_dyn {key}: read"))?;
    ensure!(owned == *want, "get_dyn({key}) reads another value");
    let r = s.read_dyn(key).at(format!("read_dyn {key}"))?;
    ensure!(r == *want, "read_dyn({key}) reads another value");
    Ok(())
}

fn check_typed<T: Element + PartialEq + Debug>(
    s: &DiskBackedStore,
    key: &str,
    want: &ArrayD<T>,
) -> R {
    let h = s.get::<T, IxDyn>(key).at(format!("get {key}"))?;
    ensure!(
        h.shape() == want.shape(),
        "get({key}): shape {:?}",
        h.shape()
    );
    let g = h.read().at(format!("read {key}"))?;
    ensure!(g.view() == want.view(), "get({key}) reads another value");
    if want.ndim() >= 2 && want.len() > 1 && !want.is_standard_layout() {
        ensure!(
            g.view().t().is_standard_layout(),
            "get({key}): inserted in Fortran order, read with strides {:?}",
            g.view().strides()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------
// The cases

type CaseFn = fn(&Cx) -> R;

/// Every case of the suite, by name.
pub fn cases() -> Vec<(&'static str, CaseFn)> {
    vec![
        ("round_trip_every_dtype", case_round_trip_every_dtype),
        (
            "replace_changes_dtype_and_shape",
            case_replace_changes_dtype_and_shape,
        ),
        ("remove_then_get", case_remove_then_get),
        ("attrs", case_attrs),
        ("durable_then_reopen", case_durable_then_reopen),
        ("batch_of_mixed_dtypes", case_batch_of_mixed_dtypes),
        (
            "get_or_compute_computes_once",
            case_get_or_compute_computes_once,
        ),
        ("refresh_sees_other_handle", case_refresh_sees_other_handle),
        ("read_only_handle", case_read_only_handle),
        ("memory_budget_spill", case_memory_budget_spill),
        ("racing_writers", case_racing_writers),
        ("keys_after_reopen", case_keys_after_reopen),
        ("info_and_dyn_agree", case_info_and_dyn_agree),
    ]
}

/// Every element type in C and Fortran order (2-d and 3-d), 0-d and empty,
/// some written durably one by one, the rest by one `flush`; read back by
/// the writing handle and by a new one.
fn case_round_trip_every_dtype(cx: &Cx) -> R {
    let layouts: [(&str, &[usize], bool); 5] = [
        ("c", &[3, 4], false),
        ("f", &[3, 4], true),
        ("f3", &[2, 3, 2], true),
        ("0d", &[], false),
        ("empty", &[0, 3], false),
    ];
    let mut values = Vec::new();
    for (t, dtype) in DTYPES.iter().enumerate() {
        for (i, (label, shape, fortran)) in layouts.iter().enumerate() {
            values.push((
                format!("{dtype}_{label}"),
                sample(t, shape, *fortran, (t * 5 + i) as u64),
            ));
        }
    }
    let s = cx.writer()?;
    for (i, (k, v)) in values.iter().enumerate() {
        if i % 8 == 0 {
            cx.put_durable(&s, k, v)?;
        } else {
            cx.put(&s, k, v)?;
        }
    }
    for (k, v) in &values {
        check_value(&s, k, v)?;
    }
    let all: Vec<(&str, &DynArray)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
    cx.flush(&s, &all)?;
    drop(s);
    let r = cx.reader()?;
    ensure!(r.len() == values.len(), "reopened: {} entries", r.len());
    for (k, v) in &values {
        check_value(&r, k, v)?;
    }
    Ok(())
}

/// A replace that changes the dtype and the shape: the new value reads with
/// its own type only, everywhere; a handle taken before keeps the old one.
fn case_replace_changes_dtype_and_shape(cx: &Cx) -> R {
    let s = cx.writer()?;
    let old = sample(index_of("f64"), &[2, 3], false, 1);
    let new = sample(index_of("i16"), &[5], false, 2);
    cx.put_durable(&s, "k", &old)?;
    let before = s.get_dyn("k").at("get_dyn k")?;
    cx.put_durable(&s, "k", &new)?;
    check_value(&s, "k", &new)?;
    let e = expect_err(
        s.get::<f64, IxDyn>("k"),
        "get::<f64> of the i16 entry",
        |e| matches!(e, Error::DtypeMismatch { .. }),
    )?;
    ensure!(e.to_string().contains("k"), "{e}");
    ensure!(
        before.to_owned_array().at("read the handle taken before")? == old,
        "a handle taken before the replace no longer reads the old value"
    );
    drop(before);
    drop(s);
    let r = cx.reader()?;
    check_value(&r, "k", &new)?;
    expect_err(r.get::<f64, IxDyn>("k"), "reopened: get::<f64>", |e| {
        matches!(e, Error::DtypeMismatch { .. })
    })?;
    Ok(())
}

/// A removed key is gone: `get`, `info`, `read_dyn` fail with `KeyNotFound`
/// naming the key and the location, in the handle and after a reopen.
fn case_remove_then_get(cx: &Cx) -> R {
    let s = cx.writer()?;
    cx.put_durable(&s, "gone", &sample(index_of("f32"), &[4], false, 3))?;
    cx.put_durable(&s, "kept", &sample(index_of("u8"), &[2], false, 4))?;
    ensure!(
        cx.remove(&s, "gone")?,
        "remove of an existing key said it did not exist"
    );
    let not_found = |e: &Error| -> bool {
        matches!(e, Error::KeyNotFound { name, .. } if name == "gone")
            && e.to_string().contains(cx.location())
    };
    expect_err(s.get::<f32, IxDyn>("gone"), "get after remove", not_found)?;
    expect_err(s.info("gone"), "info after remove", not_found)?;
    expect_err(s.read_dyn("gone"), "read_dyn after remove", not_found)?;
    ensure!(
        !cx.remove(&s, "gone")?,
        "a second remove said the key existed"
    );
    ensure!(!s.contains("gone"), "contains(gone) after remove");
    ensure!(
        s.keys().iter().map(|k| k.as_str()).collect::<Vec<_>>() == ["kept"],
        "keys after remove: {:?}",
        s.keys()
    );
    drop(s);
    let r = cx.reader()?;
    expect_err(r.get::<f32, IxDyn>("gone"), "reopened: get", not_found)?;
    expect_err(r.read_dyn("gone"), "reopened: read_dyn", not_found)?;
    expect_err(r.info("gone"), "reopened: info", not_found)?;
    ensure!(
        r.contains("kept") && r.len() == 1,
        "reopened: {:?}",
        r.keys()
    );
    Ok(())
}

fn attrs_of(s: &DiskBackedStore, key: &str) -> R<Value> {
    Ok(Value::Object(s.info(key).at(format!("info {key}"))?.attrs))
}

/// Attributes: given with an insert, replaced by `set_attrs`, seen by
/// another handle; a replace with attributes has exactly those (nothing of
/// the old ones) and they survive a reopen; a replace without any has none.
fn case_attrs(cx: &Cx) -> R {
    let s = cx.writer()?;
    let v1 = sample(index_of("f64"), &[3], false, 5);
    let first = json!({"crs": "EPSG:2056", "origin": [2600000.0, 1200000.0]});
    cx.put_opts(
        &s,
        "a",
        &v1,
        &InsertOptions::new().attrs(first.clone()),
        true,
    )?;
    ensure!(
        attrs_of(&s, "a")? == first,
        "attrs after insert: {}",
        attrs_of(&s, "a")?
    );
    s.set_attrs("a", json!({"units": "m"})).at("set_attrs a")?;
    ensure!(
        attrs_of(&s, "a")? == json!({"units": "m"}),
        "attrs after set_attrs"
    );
    let other = cx.reader()?;
    ensure!(
        attrs_of(&other, "a")? == json!({"units": "m"}),
        "another handle reads attrs {}",
        attrs_of(&other, "a")?
    );
    drop(other);
    let v2 = sample(index_of("i32"), &[2, 2], true, 6);
    cx.put_opts(
        &s,
        "a",
        &v2,
        &InsertOptions::new().attrs(json!({"v": 2})),
        true,
    )?;
    ensure!(
        attrs_of(&s, "a")? == json!({"v": 2}),
        "attrs after the replace: {}",
        attrs_of(&s, "a")?
    );
    expect_err(
        s.set_attrs("nope", json!({"x": 1})),
        "set_attrs of a missing key",
        |e| matches!(e, Error::KeyNotFound { .. }),
    )?;
    expect_err(
        s.set_attrs("a", json!([1, 2])),
        "set_attrs of a non-object",
        |e| matches!(e, Error::InvalidAttrs { .. }),
    )?;
    drop(s);
    let r = cx.writer()?;
    ensure!(
        attrs_of(&r, "a")? == json!({"v": 2}),
        "reopened: attrs {}",
        attrs_of(&r, "a")?
    );
    check_value(&r, "a", &v2)?;
    let v3 = sample(index_of("u16"), &[1], false, 7);
    cx.put_durable(&r, "a", &v3)?;
    ensure!(
        attrs_of(&r, "a")? == json!({}),
        "a replace without attrs kept {}",
        attrs_of(&r, "a")?
    );
    drop(r);
    let r = cx.reader()?;
    ensure!(
        attrs_of(&r, "a")? == json!({}),
        "reopened: attrs {}",
        attrs_of(&r, "a")?
    );
    Ok(())
}

/// `insert_durable` is on the storage when it returns: a handle opened
/// while the writer is still open reads it, and so does one opened after.
fn case_durable_then_reopen(cx: &Cx) -> R {
    let w = cx.writer()?;
    let a = sample(index_of("f64"), &[64, 3], false, 8);
    let b = sample(index_of("c64"), &[2, 5], true, 9);
    cx.put_durable(&w, "points", &a)?;
    cx.put_opts(&w, "field", &b, &InsertOptions::new(), true)?;
    let r = cx.reader()?;
    check_value(&r, "points", &a)?;
    check_value(&r, "field", &b)?;
    drop(r);
    w.close().at("close")?;
    let w = cx.writer()?;
    check_value(&w, "points", &a)?;
    check_value(&w, "field", &b)?;
    Ok(())
}

/// A `Batch` of mixed dtypes, shapes and options (a name given twice: the
/// later wins) is read back by another handle.
fn case_batch_of_mixed_dtypes(cx: &Cx) -> R {
    let w = cx.writer()?;
    let items = [
        ("f32", sample(index_of("f32"), &[4], false, 10), None),
        ("u8", sample(index_of("u8"), &[2, 2], true, 11), None),
        ("bool", sample(index_of("bool"), &[], false, 12), None),
        (
            "c128",
            sample(index_of("c128"), &[3], false, 13),
            Some(json!({"t": "c"})),
        ),
        ("i64", sample(index_of("i64"), &[0], false, 14), None),
        ("dup", sample(index_of("i8"), &[2], false, 15), None),
        ("dup", sample(index_of("u64"), &[3, 1], false, 16), None),
    ];
    let mut batch = Batch::new();
    for (k, v, attrs) in &items {
        let mut o = InsertOptions::new();
        if let Some(a) = attrs {
            o = o.attrs(a.clone());
        }
        cx.attempt(k, v);
        push_dyn(&mut batch, k, v, &o).at(format!("push {k}"))?;
    }
    ensure!(batch.len() == items.len(), "batch of {}", batch.len());
    w.insert_many(batch).at("insert_many")?;
    for (k, v, _) in &items[..5] {
        cx.ack(k, v);
    }
    cx.ack("dup", &items[6].1);
    let r = cx.reader()?;
    ensure!(r.len() == 6, "another handle sees {:?}", r.keys());
    for (k, v, _) in &items[..5] {
        check_value(&r, k, v)?;
    }
    check_value(&r, "dup", &items[6].1)?;
    ensure!(attrs_of(&r, "c128")? == json!({"t": "c"}), "batch attrs");
    Ok(())
}

/// `get_or_compute` computes once per key: again in the same handle, and in
/// another handle once the first flushed, the stored value is returned.
fn case_get_or_compute_computes_once(cx: &Cx) -> R {
    let w = cx.writer()?;
    let value = Array1::from_shape_fn(50, |i| i as f64 * 0.5);
    let dynv = DynArray::F64(value.clone().into_dyn());
    let computed = AtomicUsize::new(0);
    let compute = || {
        computed.fetch_add(1, Ordering::Relaxed);
        value.clone()
    };
    cx.attempt("c", &dynv);
    let a = w
        .get_or_compute::<f64, Ix1, _>("c", compute)
        .at("get_or_compute")?;
    let b = w
        .get_or_compute::<f64, Ix1, _>("c", compute)
        .at("get_or_compute again")?;
    ensure!(
        computed.load(Ordering::Relaxed) == 1,
        "computed {} times",
        computed.load(Ordering::Relaxed)
    );
    ensure!(a.to_owned_array().at("read a")? == value, "first result");
    ensure!(b.to_owned_array().at("read b")? == value, "second result");
    ensure!(
        w.stats().computes == 1,
        "stats: {} computes",
        w.stats().computes
    );
    drop((a, b));
    cx.flush(&w, &[("c", &dynv)])?;
    let other = cx.writer()?;
    let c = other
        .get_or_compute::<f64, Ix1, _>("c", compute)
        .at("get_or_compute in another handle")?;
    ensure!(
        computed.load(Ordering::Relaxed) == 1,
        "another handle computed it again"
    );
    ensure!(
        c.to_owned_array().at("read c")? == value,
        "another handle's result"
    );
    check_value(&other, "c", &dynv)?;
    Ok(())
}

/// Another handle (a reader, and a writer) sees this handle's insert,
/// replace and removal after `refresh`, including of an entry it has read.
fn case_refresh_sees_other_handle(cx: &Cx) -> R {
    let a = cx.writer()?;
    let others = [cx.reader()?, cx.writer()?];
    let v1 = sample(index_of("f64"), &[4], false, 17);
    let v2 = sample(index_of("u32"), &[2, 3], false, 18);
    cx.put_durable(&a, "k", &v1)?;
    for (i, b) in others.iter().enumerate() {
        b.refresh().at("refresh after the insert")?;
        ensure!(b.contains("k"), "handle {i} does not see the insert");
        check_value(b, "k", &v1)?;
    }
    cx.put_durable(&a, "k", &v2)?;
    for (i, b) in others.iter().enumerate() {
        b.refresh().at("refresh after the replace")?;
        let got = b.read_dyn("k").at("read_dyn after the replace")?;
        ensure!(
            got == v2,
            "handle {i} still reads {} {:?} after another handle replaced it and refresh",
            got.dtype(),
            got.shape()
        );
        check_value(b, "k", &v2)?;
    }
    ensure!(cx.remove(&a, "k")?, "remove said the key did not exist");
    cx.put_durable(&a, "k2", &v1)?;
    for (i, b) in others.iter().enumerate() {
        b.refresh().at("refresh after the removal")?;
        ensure!(
            !b.contains("k") && b.contains("k2"),
            "handle {i} sees {:?} after the removal",
            b.keys()
        );
        expect_err(b.read_dyn("k"), "read_dyn of the removed key", |e| {
            matches!(e, Error::KeyNotFound { .. })
        })?;
    }
    Ok(())
}

/// A read-only handle refuses every write with `Error::ReadOnly` naming the
/// location, reads, and takes no lock: an exclusive writer opens beside it,
/// and the reader sees its writes after `refresh`.
fn case_read_only_handle(cx: &Cx) -> R {
    let x = sample(index_of("i32"), &[3], false, 19);
    let w = cx.writer()?;
    cx.put_durable(&w, "x", &x)?;
    w.close().at("close")?;
    let r = cx.reader()?;
    ensure!(r.is_read_only(), "is_read_only");
    let read_only =
        |e: &Error| matches!(e, Error::ReadOnly { .. }) && e.to_string().contains(cx.location());
    let y = Array1::from_elem(2, 1u8);
    expect_err(r.insert("y", y.clone()), "insert", read_only)?;
    expect_err(
        r.insert_durable("y", y.clone()),
        "insert_durable",
        read_only,
    )?;
    expect_err(r.remove("x"), "remove", read_only)?;
    expect_err(r.set_attrs("x", json!({"a": 1})), "set_attrs", read_only)?;
    let mut batch = Batch::new();
    batch.push("y", y.clone()).at("push")?;
    expect_err(r.insert_many(batch), "insert_many", read_only)?;
    expect_err(r.offload("x"), "offload", read_only)?;
    expect_err(
        r.get_or_compute::<u8, Ix1, _>("z", || y.clone()),
        "get_or_compute of a missing key",
        read_only,
    )?;
    check_value(&r, "x", &x)?;
    let w = cx.open(Opts {
        exclusive: true,
        ..Opts::writer()
    })?;
    let z = sample(index_of("f32"), &[2, 2], false, 20);
    cx.put_durable(&w, "z", &z)?;
    r.refresh().at("refresh")?;
    check_value(&r, "z", &z)?;
    ensure!(r.len() == 2, "the reader sees {:?}", r.keys());
    drop(w);
    ensure!(r.keys().len() == 2 && r.contains("x"), "{:?}", r.keys());
    Ok(())
}

/// A memory budget of a few entries: inserts spill, every value reads
/// back in the handle, after `flush`, and in a new handle with the budget.
fn case_memory_budget_spill(cx: &Cx) -> R {
    const BUDGET: u64 = 40 << 10;
    let budget = Opts {
        budget: Some(BUDGET),
        ..Opts::writer()
    };
    let w = cx.open(budget)?;
    let values: Vec<(String, DynArray)> = (0..8)
        .map(|i| {
            let t = if i % 2 == 0 { "f64" } else { "i32" };
            let n = if t == "f64" { 2048 } else { 4096 };
            (format!("tile{i}"), sample(index_of(t), &[n], false, 30 + i))
        })
        .collect();
    for (k, v) in &values {
        cx.put(&w, k, v)?;
    }
    let st = w.stats();
    ensure!(st.evictions > 0, "no entry was spilled: {st:?}");
    ensure!(
        st.bytes_resident <= BUDGET,
        "resident {} over the budget",
        st.bytes_resident
    );
    for (k, v) in &values {
        check_value(&w, k, v)?;
    }
    let all: Vec<(&str, &DynArray)> = values.iter().map(|(k, v)| (k.as_str(), v)).collect();
    cx.flush(&w, &all)?;
    drop(w);
    let r = cx.open(budget)?;
    for (k, v) in &values {
        check_value(&r, k, v)?;
    }
    ensure!(r.stats().bytes_resident <= BUDGET, "reopened: over budget");
    Ok(())
}

/// Two writer handles, each in its thread, write one shared key in turn
/// (each its own dtype and shapes) and keys of their own durably: the
/// shared key then reads as a whole value one of them wrote, the same for
/// every new handle, and every acknowledged write of an own key is there.
fn case_racing_writers(cx: &Cx) -> R {
    const ROUNDS: u64 = 6;
    cx.contend("shared");
    let handles = [cx.writer()?, cx.writer()?];
    let conflicts = AtomicUsize::new(0);
    let conflicts = &conflicts;
    let value = |w: usize, i: u64| -> DynArray {
        if w == 0 {
            DynArray::F64(ArrayD::from_elem(
                IxDyn(&[i as usize + 1, 2]),
                (w * 100) as f64 + i as f64,
            ))
        } else {
            DynArray::I32(ArrayD::from_elem(
                IxDyn(&[2, i as usize + 2]),
                (w * 100) as i32 + i as i32,
            ))
        }
    };
    let results: Vec<R> = std::thread::scope(|scope| {
        let threads: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(w, s)| {
                scope.spawn(move || -> R {
                    for i in 0..ROUNDS {
                        let v = value(w, i);
                        cx.attempt("shared", &v);
                        match insert_dyn(s, "shared", &v, &InsertOptions::new().durable(true)) {
                            Ok(()) => {}
                            Err(Error::Conflict { .. }) => {
                                // Lost to the other writer: the entry reads
                                // as a whole value it wrote.
                                conflicts.fetch_add(1, Ordering::Relaxed);
                                let now = s.read_dyn("shared").at("read shared after a conflict")?;
                                ensure!(
                                    (0..ROUNDS).any(|j| value(1 - w, j) == now),
                                    "writer {w} lost a race on the shared key and reads {} {:?}, not a value of the winner",
                                    now.dtype(),
                                    now.shape()
                                );
                            }
                            Err(e) => {
                                return Err(Fail::Store(format!("writer {w}: insert shared"), Box::new(e)))
                            }
                        }
                        cx.put_durable(s, &format!("own{w}_{i}"), &v)?;
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(Fail::Check("a writer thread panicked".into())))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    drop(handles);
    if !cx.b.faulty() {
        eprintln!(
            "RACE | {} | {} writes of the shared key, {} lost a race (Error::Conflict)",
            cx.b.name(),
            2 * ROUNDS,
            conflicts.load(Ordering::Relaxed)
        );
    }
    let r = cx.reader()?;
    let w = cx.writer()?;
    let a = r.read_dyn("shared").at("read shared")?;
    let b = w.read_dyn("shared").at("read shared (writer)")?;
    ensure!(
        a == b,
        "two new handles read different values of the shared key"
    );
    let whole = (0..2).any(|w| (0..ROUNDS).any(|i| value(w, i) == a));
    ensure!(
        whole,
        "the shared key reads {} {:?}, no writer's whole value",
        a.dtype(),
        a.shape()
    );
    for w in 0..2 {
        for i in 0..ROUNDS {
            check_value(&r, &format!("own{w}_{i}"), &value(w, i))?;
        }
    }
    Ok(())
}

/// `keys`, `len`, `contains` and `is_empty` after a reopen: durable,
/// flushed-on-close and removed entries.
fn case_keys_after_reopen(cx: &Cx) -> R {
    let w = cx.writer()?;
    let v = |i: u64| sample(index_of("u16"), &[i as usize + 1], false, 40 + i);
    cx.put_durable(&w, "b", &v(1))?;
    cx.put_durable(&w, "a", &v(2))?;
    cx.put(&w, "c", &v(3))?;
    cx.put_durable(&w, "d", &v(4))?;
    ensure!(cx.remove(&w, "d")?, "remove d");
    cx.put(&w, "e", &v(5))?;
    ensure!(cx.remove(&w, "e")?, "remove e (never written)");
    let names = |s: &DiskBackedStore| s.keys().iter().map(|k| k.to_string()).collect::<Vec<_>>();
    ensure!(
        names(&w) == ["a", "b", "c"] && w.len() == 3,
        "before close: {:?}",
        names(&w)
    );
    w.close().at("close")?;
    cx.ack("c", &v(3));
    for o in [Opts::reader(), Opts::writer()] {
        let r = cx.open(o)?;
        ensure!(
            names(&r) == ["a", "b", "c"],
            "reopened {o:?}: {:?}",
            names(&r)
        );
        ensure!(r.len() == 3 && !r.is_empty(), "len {}", r.len());
        ensure!(
            r.contains("c") && !r.contains("d") && !r.contains("e"),
            "contains"
        );
        ensure!(
            r.incomplete().is_empty(),
            "incomplete: {:?}",
            r.incomplete()
        );
        check_value(&r, "c", &v(3))?;
    }
    Ok(())
}

/// `info`, `iter`, `get_dyn` and `read_dyn` agree with the typed `get`, for
/// entries in RAM, on the storage, and after a reopen.
fn case_info_and_dyn_agree(cx: &Cx) -> R {
    let values = [
        ("u16f", sample(index_of("u16"), &[2, 3], true, 50)),
        ("c128", sample(index_of("c128"), &[2], false, 51)),
        ("bool", sample(index_of("bool"), &[0, 2], false, 52)),
        ("f32", sample(index_of("f32"), &[], false, 53)),
        ("i8", sample(index_of("i8"), &[3, 1, 2], false, 54)),
    ];
    let w = cx.writer()?;
    for (i, (k, v)) in values.iter().enumerate() {
        if i % 2 == 0 {
            cx.put(&w, k, v)?;
        } else {
            cx.put_durable(&w, k, v)?;
        }
    }
    let check_all = |s: &DiskBackedStore| -> R {
        for (k, v) in &values {
            check_value(s, k, v)?;
            let info = s.info(k).at("info")?;
            let size = match v {
                DynArray::Bool(_) | DynArray::I8(_) | DynArray::U8(_) => 1,
                DynArray::I16(_) | DynArray::U16(_) => 2,
                DynArray::I32(_) | DynArray::U32(_) | DynArray::F32(_) => 4,
                DynArray::C64(_) => 16,
                _ => 8,
            };
            let n: usize = v.shape().iter().product();
            ensure!(
                info.nbytes == (n * size) as u64,
                "info({k}).nbytes = {}",
                info.nbytes
            );
        }
        let listed: Vec<_> = s.iter().collect::<Result<_, _>>().at("iter")?;
        ensure!(listed.len() == values.len(), "iter gave {}", listed.len());
        for info in listed {
            let again = s.info(info.name.as_str()).at("info")?;
            ensure!(
                again.dtype == info.dtype
                    && again.shape == info.shape
                    && again.nbytes == info.nbytes,
                "iter and info disagree on {}",
                info.name
            );
        }
        Ok(())
    };
    check_all(&w)?;
    let all: Vec<(&str, &DynArray)> = values.iter().map(|(k, v)| (*k, v)).collect();
    cx.flush(&w, &all)?;
    w.offload_all().at("offload_all")?;
    check_all(&w)?;
    drop(w);
    check_all(&cx.reader()?)?;
    Ok(())
}

// ---------------------------------------------------------------------
// Runners

/// Runs one case over `b`: its outcome, then the journal check.
fn run_case(b: &dyn Backend, f: CaseFn) -> (Result<R, String>, Cx<'_>) {
    let cx = Cx::new(b);
    let r = catch_unwind(AssertUnwindSafe(|| f(&cx))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    });
    (r, cx)
}

/// Runs every case over `b`; the failures, each naming its case and `b`.
pub fn run_suite(b: &dyn Backend) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    for (name, f) in cases() {
        let start = Instant::now();
        let (r, cx) = run_case(b, f);
        let outcome = match r {
            Err(p) => Err(format!("panicked: {p}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(())) => cx.verify(b).map_err(|e| format!("after the case: {e}")),
        };
        eprintln!(
            "CONFORMANCE | {} | {name} | {} | {:.2} s",
            b.name(),
            match &outcome {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            },
            start.elapsed().as_secs_f64()
        );
        if let Err(e) = outcome {
            failures.push((
                name.to_string(),
                format!("case {name} over {}: {e}", b.name()),
            ));
        }
    }
    failures
}

/// Runs every case over `inner` wrapped by the fault wrapper, failing seam
/// call N = 1, 2, ... (made first with `after`) until the case completes
/// without a fault: each run gives `Ok` or the injected fault as a typed
/// error (no panic, no failed check, no other error in its place), and
/// after reopening without faults every entry reads as a whole value
/// written to it. The failures, and the faults injected.
pub fn run_with_seam_faults(inner: &dyn Backend, after: bool) -> (Vec<String>, u64) {
    let mut failures = Vec::new();
    let mut injected_total = 0;
    for (name, f) in cases() {
        let start = Instant::now();
        let mut errors = 0u64;
        let mut swallowed = BTreeMap::<String, u64>::new();
        let mut n = 1;
        let calls = loop {
            let plan = SeamFaults::fail_at(n).after_call(after);
            let fb = Faults {
                inner,
                plan: Some(plan.clone()),
            };
            let (r, cx) = run_case(&fb, f);
            let at = || {
                plan.calls()
                    .into_iter()
                    .find(|c| c.injected)
                    .map(|c| format!("{:?} {:?}", c.op, c.entries))
                    .unwrap_or_else(|| "no call".into())
            };
            let fail = |m: String| {
                format!(
                    "case {name} over {} with seam call {n} failed ({}){}: {m}",
                    inner.name(),
                    at(),
                    if after { " after it was made" } else { "" }
                )
            };
            match r {
                Err(p) => failures.push(fail(format!("panicked: {p}"))),
                Ok(Ok(())) if plan.fired() => {
                    // The store went on without the failed call (a best
                    // effort: keeping a replaced entry's file open for its
                    // handles, a spill of the memory budget).
                    let op = plan.calls().into_iter().find(|c| c.injected).map(|c| c.op);
                    *swallowed
                        .entry(op.map_or("?".into(), |o| format!("{o:?}")))
                        .or_insert(0) += 1;
                }
                Ok(Ok(())) => {}
                Ok(Err(Fail::Store(what, e))) if plan.fired() => {
                    if !injected(&e) {
                        failures.push(fail(format!(
                            "{what}: the fault was reported as another error: {e}"
                        )));
                    }
                    errors += 1;
                }
                Ok(Err(e)) => failures.push(fail(e.to_string())),
            }
            if let Err(e) = cx.verify(inner) {
                failures.push(fail(format!("after reopening without faults: {e}")));
            }
            if !plan.fired() {
                break plan.count();
            }
            injected_total += 1;
            if n > 5000 {
                failures.push(fail("more than 5000 seam calls".into()));
                break plan.count();
            }
            n += 1;
        };
        eprintln!(
            "SEAM-FAULTS | {}{} | {name} | {calls} calls | {n} runs | {errors} typed errors | faults the case did not see: {swallowed:?} | {:.2} s",
            inner.name(),
            if after { " (after the call)" } else { "" },
            start.elapsed().as_secs_f64()
        );
    }
    (failures, injected_total)
}

fn assert_passes(b: &dyn Backend) {
    let failures = run_suite(b);
    assert!(
        failures.is_empty(),
        "{} of {} cases failed over {}:\n{}",
        failures.len(),
        cases().len(),
        b.name(),
        failures
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn assert_passes_with_faults(inner: &dyn Backend, after: bool) {
    let (failures, injected) = run_with_seam_faults(inner, after);
    assert!(injected > 0, "no fault was injected");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------
// The tests

#[test]
fn conformance_local() {
    assert_passes(&Local);
}

#[cfg(feature = "remote")]
#[test]
fn conformance_memory() {
    assert_passes(&Memory::new());
}

#[cfg(feature = "remote")]
#[test]
fn conformance_s3_on_moto() {
    let Some(moto) = crate::remote::Moto::start() else {
        return;
    };
    assert_passes(&S3 {
        moto,
        prefixes: AtomicUsize::new(0),
    });
}

#[test]
fn conformance_seam_faults_over_local() {
    assert_passes_with_faults(&Local, false);
}

#[test]
fn conformance_seam_faults_after_the_call_over_local() {
    assert_passes_with_faults(&Local, true);
}

#[cfg(feature = "remote")]
#[test]
fn conformance_seam_faults_over_memory() {
    assert_passes_with_faults(&Memory::new(), false);
}

#[cfg(feature = "remote")]
#[test]
fn conformance_seam_faults_after_the_call_over_memory() {
    assert_passes_with_faults(&Memory::new(), true);
}

/// The suite rejects a backend that checks no version, in the case made to
/// catch it (another handle's `refresh` must see a replacement of an entry
/// it has read), and only there.
#[test]
fn conformance_rejects_a_backend_that_ignores_versions() {
    #[cfg(feature = "remote")]
    let memory = Memory::new();
    #[cfg_attr(not(feature = "remote"), allow(unused_mut))]
    let mut inners: Vec<&dyn Backend> = vec![&Local];
    #[cfg(feature = "remote")]
    inners.push(&memory);
    for inner in inners {
        let broken = IgnoresVersions(inner);
        let failures = run_suite(&broken);
        let cases: Vec<&str> = failures.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            cases,
            ["refresh_sees_other_handle"],
            "over {}: {failures:?}",
            inner.name()
        );
        assert!(
            failures[0].1.contains("after another handle replaced it"),
            "{}",
            failures[0].1
        );
    }
}

/// The fault wrapper counts and records every fallible seam call, fails
/// exactly the one planned with a typed error saying it was injected, and
/// can count one kind of call only.
#[test]
fn seam_faults_fail_the_planned_call_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let counting = SeamFaults::fail_at(0);
    let s = open_with_seam_faults(StoreBuilder::new(dir.path()), &counting).unwrap();
    s.insert_durable("a", Array1::from_elem(3, 1.5f64)).unwrap();
    s.insert_durable("b", Array1::from_elem(3, 2u8)).unwrap();
    drop(s);
    use ndarray_offload::__testing::SeamOp;
    let ops: Vec<SeamOp> = counting.calls().iter().map(|c| c.op).collect();
    assert_eq!(
        &ops[..3],
        [SeamOp::Lock, SeamOp::List, SeamOp::Recover],
        "{ops:?}"
    );
    let publishes: Vec<Vec<String>> = counting
        .calls()
        .into_iter()
        .filter(|c| c.op == SeamOp::Publish)
        .map(|c| c.entries)
        .collect();
    assert_eq!(publishes, [vec!["a".to_string()], vec!["b".to_string()]]);
    assert!(!counting.fired());
    assert_eq!(counting.count(), ops.len() as u64);

    // The second publish fails, with the entry's path and "injected".
    let plan = SeamFaults::fail_at(2).only(SeamOp::Publish);
    let s = open_with_seam_faults(StoreBuilder::new(dir.path()), &plan).unwrap();
    s.insert_durable("c", Array1::from_elem(2, 3i32)).unwrap();
    let e = s
        .insert_durable("d", Array1::from_elem(2, 4i32))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("injected fault at seam call #2 (Publish)"),
        "{text}"
    );
    assert!(text.contains("d.meta.json"), "{text}");
    assert!(plan.fired());
    let failed: Vec<_> = plan.calls().into_iter().filter(|c| c.injected).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].entries, ["d"]);
    assert_eq!(failed[0].number, 2);
    // Calls of other kinds were recorded, not counted.
    assert!(plan
        .calls()
        .iter()
        .any(|c| c.op == SeamOp::Lock && c.number == 0));
    drop(s);
    // Nothing was lost or torn: "d" was kept in RAM and written at drop.
    let r = DiskBackedStore::open_read_only(dir.path()).unwrap();
    let keys: Vec<String> = r.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["a", "b", "c", "d"]);
    assert_eq!(
        r.get::<i32, Ix1>("d")
            .unwrap()
            .to_owned_array()
            .unwrap()
            .to_vec(),
        [4, 4]
    );

    // Failing the open itself: a typed error, and the next open works.
    let plan = SeamFaults::fail_at(1);
    let e = open_with_seam_faults(StoreBuilder::new(dir.path()), &plan).unwrap_err();
    assert!(
        e.to_string()
            .contains("injected fault at seam call #1 (Lock)"),
        "{e}"
    );
    drop(DiskBackedStore::open(dir.path()).unwrap());
}
