//! A power cut on a node of a remote store (`remote::RemoteStore`): the
//! node's cache directory (its staged writes and pending records, recorded
//! at the seam, `objects/` and `pending/` each a directory of the model)
//! and the object store as it was at the crash point (durable once a
//! request returned: every request that changed it is an event of the same
//! log, so a crash point is one position in one sequence).
//!
//! For each crash state the node restarts (a `RemoteStore` on the
//! materialized cache directory, against the object store replayed to that
//! point) and flushes; then every key must read as the contract allows,
//! the same from the restarted node and from a fresh node (an empty cache
//! directory); nothing stays pending and no temporary file is left; and a
//! garbage-collection pass (grace zero) leaves exactly the data objects the
//! committed entries reference.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use ndarray::IxDyn;
use ndarray_offload::__testing::object_store::memory::InMemory;
use ndarray_offload::__testing::object_store::path::Path as ObjPath;
use ndarray_offload::__testing::object_store::{
    self as os, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use ndarray_offload::__testing::open_tiered_on;
use ndarray_offload::remote::RemoteOptions;
use ndarray_offload::{DiskBackedStore, Error};
use parking_lot::Mutex;

use super::crashfs::{materialize, Ev, Fs, Model, Recording, Rng, Snapshot};
use super::{
    contract, describe, keys, label_at, value, version_of, Driver, Durable, Run, Tally, Target, Ver,
};

/// The store's URL (its prefix), for every handle.
const URL: &str = "memory:///bucket/p";

/// A request that changed the object store.
#[derive(Clone, Debug)]
pub enum ROp {
    Put { path: ObjPath, data: Vec<u8> },
    Delete { path: ObjPath },
}

/// An in-memory object store that logs every request that changed it (and,
/// while a recording is on, appends an [`Ev::Remote`] to its log), and
/// fails every PUT while `down`.
#[derive(Debug)]
pub struct RecStore {
    inner: InMemory,
    log: Mutex<Vec<ROp>>,
    sink: Mutex<Option<Arc<Mutex<Vec<Ev>>>>>,
    down: AtomicBool,
}

impl fmt::Display for RecStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecStore")
    }
}

impl RecStore {
    fn new() -> Arc<RecStore> {
        Arc::new(RecStore {
            inner: InMemory::new(),
            log: Mutex::new(Vec::new()),
            sink: Mutex::new(None),
            down: AtomicBool::new(false),
        })
    }

    fn note(&self, op: ROp) {
        let mut log = self.log.lock();
        log.push(op);
        if let Some(s) = &*self.sink.lock() {
            s.lock().push(Ev::Remote { n: log.len() });
        }
    }

    /// The object store after the first `n` logged requests. `InMemory`
    /// numbers its ETags by successful writes, so the replay gives every
    /// object the ETag it had (pending records hold them).
    fn replay(ops: &[ROp]) -> Arc<InMemory> {
        let store = InMemory::new();
        futures::executor::block_on(async {
            for op in ops {
                match op {
                    ROp::Put { path, data } => {
                        store
                            .put_opts(path, PutPayload::from(data.clone()), PutOptions::default())
                            .await
                            .unwrap();
                    }
                    ROp::Delete { path } => store.delete(path).await.unwrap(),
                }
            }
        });
        Arc::new(store)
    }
}

fn not_modelled(op: &str) -> os::Error {
    os::Error::NotImplemented {
        operation: op.into(),
        implementer: "RecStore".into(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for RecStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> os::Result<PutResult> {
        if self.down.load(Ordering::SeqCst) {
            return Err(os::Error::Generic {
                store: "RecStore",
                source: "the object store is unreachable".into(),
            });
        }
        let data: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        let r = self
            .inner
            .put_opts(location, PutPayload::from(data.clone()), opts)
            .await?;
        self.note(ROp::Put {
            path: location.clone(),
            data,
        });
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        _location: &ObjPath,
        _opts: PutMultipartOptions,
    ) -> os::Result<Box<dyn MultipartUpload>> {
        // The workloads' objects are far below a part.
        Err(not_modelled("put_multipart_opts"))
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> os::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, os::Result<ObjPath>>,
    ) -> BoxStream<'static, os::Result<ObjPath>> {
        // One by one, each logged once done.
        let paths: Vec<os::Result<ObjPath>> = futures::executor::block_on(locations.collect());
        let mut out = Vec::new();
        for p in paths {
            out.push(p.and_then(|p| {
                futures::executor::block_on(self.inner.delete(&p))?;
                self.note(ROp::Delete { path: p.clone() });
                Ok(p)
            }));
        }
        futures::stream::iter(out).boxed()
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, os::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> os::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, _from: &ObjPath, _to: &ObjPath, _o: CopyOptions) -> os::Result<()> {
        Err(not_modelled("copy_opts"))
    }
}

/// One operation of a remote workload.
#[derive(Clone, Debug)]
pub enum ROpStep {
    Insert(&'static str, u32),
    Durable(&'static str, u32),
    /// `insert_durable` while the object store is unreachable: it fails,
    /// and the write stays staged, durably, for a later flush.
    DurableDown(&'static str, u32),
    Batch(Vec<(&'static str, u32)>),
    Remove(&'static str),
    Flush,
}

/// A recorded remote workload: the run, and the object store's log.
pub struct RemoteRun {
    run: Run,
    ops: Vec<ROp>,
    /// The memory budget of a three-tier store's workload (a
    /// `DiskBackedStore` over the prefix), `None` for a `RemoteStore`'s.
    tiered: Option<u64>,
}

fn opts() -> RemoteOptions {
    RemoteOptions::default()
}

/// Records `steps` on one node, after `initial` was committed by an earlier
/// handle on the same cache directory: the store over the prefix is one
/// kind of handle, so this is [`record_tiered`]'s workload.
pub fn record(name: &str, initial: &[(&'static str, Ver)], steps: &[ROpStep]) -> RemoteRun {
    record_tiered(name, initial, steps)
}

/// Labels of a three-tier store's operations.
fn tiered_label(st: &ROpStep) -> &'static str {
    match st {
        ROpStep::Insert(..) => "tiered: insert (budget spills)",
        ROpStep::Durable(..) => "tiered: insert_durable",
        ROpStep::DurableDown(..) => "tiered: insert_durable (store down)",
        ROpStep::Batch(..) => "tiered: insert_batch",
        ROpStep::Remove(..) => "tiered: remove",
        ROpStep::Flush => "tiered: flush",
    }
}

/// The memory budget of the three-tier workloads: a `big*` value (over
/// 5 KiB) always spills, two or three small ones fit.
pub const TIERED_BUDGET: u64 = 3000;

fn open_tiered(
    cache: &Path,
    shared: &Arc<dyn ObjectStore>,
) -> ndarray_offload::Result<DiskBackedStore> {
    open_tiered_on(URL, shared.clone(), cache, opts(), Some(TIERED_BUDGET))
}

/// Records `steps` on a three-tier store (a `DiskBackedStore` over the
/// prefix, under a memory budget that spills), after `initial` was
/// committed by an earlier handle on the same cache directory. A spill
/// stages only (committed by the next flush); `flush` promises every key.
pub fn record_tiered(name: &str, initial: &[(&'static str, Ver)], steps: &[ROpStep]) -> RemoteRun {
    let cache = tempfile::tempdir_in(super::scratch_base()).unwrap();
    let remote = RecStore::new();
    let shared: Arc<dyn ObjectStore> = remote.clone();
    {
        let s = open_tiered(cache.path(), &shared).unwrap();
        for (k, v) in initial {
            if let Some(v) = v {
                s.insert_durable(*k, value(k, *v)).unwrap();
            }
        }
        s.close().unwrap();
    }
    let snapshot = Snapshot::read(cache.path());
    let rec = Recording::start_tree(cache.path());
    *remote.sink.lock() = Some(rec.sink());
    let mut d = Driver {
        rec: &rec,
        steps: Vec::new(),
        extra: Vec::new(),
    };
    let s = d.op("tiered: open", &[], Durable::No, || {
        open_tiered(cache.path(), &shared)
    });
    for st in steps {
        let label = tiered_label(st);
        match st.clone() {
            ROpStep::Insert(k, v) => {
                d.op(label, &[(k, Some(v))], Durable::No, || {
                    s.insert(k, value(k, v))
                });
            }
            ROpStep::Durable(k, v) => {
                d.op(
                    label,
                    &[(k, Some(v))],
                    Durable::Keys(vec![k.into()]),
                    || s.insert_durable(k, value(k, v)),
                );
            }
            ROpStep::DurableDown(k, v) => {
                remote.down.store(true, Ordering::SeqCst);
                // Failed, but staged durably with its record: the next
                // flush commits it.
                d.op_failing(
                    label,
                    &[(k, Some(v))],
                    Durable::Keys(vec![k.into()]),
                    || s.insert_durable(k, value(k, v)),
                );
                remote.down.store(false, Ordering::SeqCst);
            }
            ROpStep::Batch(batch) => {
                let assign: Vec<(&str, Ver)> = batch.iter().map(|(k, v)| (*k, Some(*v))).collect();
                let ks = batch.iter().map(|(k, _)| k.to_string()).collect();
                d.op(label, &assign, Durable::Keys(ks), || {
                    s.insert_batch(batch.iter().map(|(k, v)| (*k, value(k, *v))))
                });
            }
            ROpStep::Remove(k) => {
                d.op(label, &[(k, None)], Durable::Keys(vec![k.into()]), || {
                    s.remove(k).map(drop)
                });
            }
            ROpStep::Flush => {
                d.op(label, &[], Durable::All, || s.flush());
            }
        }
    }
    d.op("tiered: close", &[], Durable::All, || s.close());
    let steps = d.steps;
    let events = rec.finish();
    *remote.sink.lock() = None;
    let ops = remote.log.lock().clone();
    RemoteRun {
        run: Run {
            name: name.into(),
            target: Target::Remote,
            initial: keys(initial).into_iter().collect(),
            snapshot,
            events,
            steps,
            extra: Vec::new(),
        },
        ops,
        tiered: Some(TIERED_BUDGET),
    }
}

/// The remote log's length at the start of the recording (what the setup
/// committed).
fn start_n(r: &RemoteRun) -> usize {
    let first = r.run.events.iter().find_map(|e| match e {
        Ev::Remote { n } => Some(*n - 1),
        _ => None,
    });
    first.unwrap_or(r.ops.len())
}

/// Reads every key of `allowed` through `get` (`None`: not found).
fn read_keys(
    allowed: &BTreeMap<String, BTreeSet<Ver>>,
    get: impl Fn(&str) -> ndarray_offload::Result<ndarray::ArrayD<f32>>,
) -> Result<BTreeMap<String, Ver>, String> {
    let mut out = BTreeMap::new();
    for key in allowed.keys() {
        let got = match get(key) {
            Ok(a) => Some(version_of(key, &a)?),
            Err(Error::KeyNotFound { .. }) => None,
            Err(e) => return Err(format!("{key}: read failed: {e}")),
        };
        out.insert(key.clone(), got);
    }
    Ok(out)
}

fn read_tiered(
    s: &DiskBackedStore,
    allowed: &BTreeMap<String, BTreeSet<Ver>>,
) -> Result<BTreeMap<String, Ver>, String> {
    read_keys(allowed, |k| {
        s.get::<f32, IxDyn>(k).and_then(|h| h.to_owned_array())
    })
}

/// Restarts a three-tier store (a `DiskBackedStore` over the prefix, the
/// same memory budget) on the crash state in `dir` against `remote`,
/// flushes it, and checks the contract, also from a fresh node (an empty
/// cache directory); then no write stays pending in `dir`, and `gc` (grace
/// zero) leaves exactly the referenced data objects.
fn verify_tiered(
    dir: &Path,
    remote: Arc<InMemory>,
    budget: u64,
    allowed: &BTreeMap<String, BTreeSet<Ver>>,
) -> Result<(), String> {
    let shared: Arc<dyn ObjectStore> = remote.clone();
    // A power cut is a reboot: pairs published without syncing before it
    // may be torn.
    ndarray_offload::__testing::simulate_reboot(dir);
    let node = open_tiered_on(URL, shared.clone(), dir, opts(), Some(budget))
        .map_err(|e| format!("restart: open failed: {e}"))?;
    node.flush()
        .map_err(|e| format!("restart: flush failed: {e}"))?;
    let seen = read_tiered(&node, allowed)?;
    for (key, got) in &seen {
        let ok = &allowed[key];
        if !ok.contains(got) {
            return Err(format!("{key}: found version {got:?}, allowed {ok:?}"));
        }
    }
    for k in node.keys() {
        if !allowed.contains_key(k.as_str()) {
            return Err(format!("unexpected entry {}", k.as_str()));
        }
    }
    node.close()
        .map_err(|e| format!("restart: close failed: {e}"))?;
    // The cache directory as a `RemoteStore` sees it: nothing pending.
    let rs = open_tiered_on(URL, shared.clone(), dir, opts(), None)
        .map_err(|e| format!("reopen: open failed: {e}"))?;
    if !rs.pending_writes().is_empty() {
        return Err(format!(
            "still pending after flush: {:?}",
            rs.pending_writes()
        ));
    }
    let left = temps_in(dir);
    if !left.is_empty() {
        return Err(format!("temporary files left: {left:?}"));
    }
    let fresh_dir = tempfile::tempdir_in(super::scratch_base()).unwrap();
    let fresh = open_tiered_on(URL, shared, fresh_dir.path(), opts(), Some(budget))
        .map_err(|e| format!("fresh node: open failed: {e}"))?;
    let fresh_seen = read_tiered(&fresh, allowed).map_err(|e| format!("fresh node: {e}"))?;
    drop(fresh);
    if fresh_seen != seen {
        return Err(format!(
            "fresh node: sees {fresh_seen:?}, the restarted node {seen:?}"
        ));
    }
    rs.gc_with_grace(Duration::ZERO)
        .map_err(|e| format!("gc failed: {e}"))?;
    let (data, referenced) = data_objects(&remote);
    if data != referenced {
        return Err(format!(
            "gc: data objects {data:?}, referenced {referenced:?}"
        ));
    }
    Ok(())
}

fn read_all(
    s: &ndarray_offload::DiskBackedStore,
    allowed: &BTreeMap<String, BTreeSet<Ver>>,
) -> Result<BTreeMap<String, Ver>, String> {
    let mut out = BTreeMap::new();
    for key in allowed.keys() {
        let got = match s.get::<f32, IxDyn>(key) {
            Ok(h) => {
                let a = h
                    .to_owned_array()
                    .map_err(|e| format!("{key}: read failed: {e}"))?;
                Some(version_of(key, &a)?)
            }
            Err(Error::KeyNotFound { .. }) => None,
            Err(e) => return Err(format!("{key}: get failed: {e}")),
        };
        out.insert(key.clone(), got);
    }
    Ok(out)
}

fn temps_in(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["objects", "pending"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                if n.ends_with(".tmp") {
                    out.push(format!("{sub}/{n}"));
                }
            }
        }
    }
    out
}

/// The data objects under the prefix, and those the committed metadata
/// objects reference.
fn data_objects(store: &Arc<InMemory>) -> (BTreeSet<String>, BTreeSet<String>) {
    futures::executor::block_on(async {
        let mut data = BTreeSet::new();
        let mut referenced = BTreeSet::new();
        let all: Vec<ObjectMeta> = store
            .list(Some(&ObjPath::from("bucket/p")))
            .map(|m| m.unwrap())
            .collect()
            .await;
        for m in all {
            let rel = m
                .location
                .as_ref()
                .trim_start_matches("bucket/p/")
                .to_string();
            if rel.starts_with("data/") {
                data.insert(rel);
            } else if rel.starts_with("meta/") && m.size > 0 {
                let body = store.get(&m.location).await.unwrap().bytes().await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                referenced.insert(v["ndoffload_remote"]["data"].as_str().unwrap().to_string());
            }
        }
        (data, referenced)
    })
}

/// Restarts the node on the crash state in `dir` against `remote`, and
/// checks the contract.
fn verify(
    dir: &Path,
    remote: Arc<InMemory>,
    allowed: &BTreeMap<String, BTreeSet<Ver>>,
) -> Result<(), String> {
    let shared: Arc<dyn ObjectStore> = remote.clone();
    // A power cut is a reboot: pairs published without syncing before it
    // may be torn.
    ndarray_offload::__testing::simulate_reboot(dir);
    let node = open_tiered_on(URL, shared.clone(), dir, opts(), None)
        .map_err(|e| format!("restart: open failed: {e}"))?;
    node.flush()
        .map_err(|e| format!("restart: flush failed: {e}"))?;
    if !node.pending_writes().is_empty() {
        return Err(format!(
            "still pending after flush: {:?}",
            node.pending_writes()
        ));
    }
    let seen = read_all(&node, allowed)?;
    for (key, got) in &seen {
        let ok = &allowed[key];
        if !ok.contains(got) {
            return Err(format!("{key}: found version {got:?}, allowed {ok:?}"));
        }
    }
    let left = temps_in(dir);
    if !left.is_empty() {
        return Err(format!("temporary files left: {left:?}"));
    }
    drop(node);
    let fresh_dir = tempfile::tempdir_in(super::scratch_base()).unwrap();
    let fresh = open_tiered_on(URL, shared, fresh_dir.path(), opts(), None)
        .map_err(|e| format!("fresh node: open failed: {e}"))?;
    let fresh_seen = read_all(&fresh, allowed).map_err(|e| format!("fresh node: {e}"))?;
    if fresh_seen != seen {
        return Err(format!(
            "fresh node: sees {fresh_seen:?}, the restarted node {seen:?}"
        ));
    }
    fresh
        .gc_with_grace(Duration::ZERO)
        .map_err(|e| format!("gc failed: {e}"))?;
    let (data, referenced) = data_objects(&remote);
    if data != referenced {
        return Err(format!(
            "gc: data objects {data:?}, referenced {referenced:?}"
        ));
    }
    Ok(())
}

/// Generates and checks every crash state of `r` (ordered model).
pub fn check_run(r: &RemoteRun, cap: usize, rng: &mut Rng, tally: &mut Tally) {
    let run = &r.run;
    if std::env::var_os("NDOFFLOAD_POWERLOSS_LOG").is_some() {
        eprintln!("{}:", run.name);
        for (i, e) in run.events.iter().enumerate() {
            let step = run.steps.iter().find(|s| s.start <= i && i < s.end);
            eprintln!(
                "  {i:>4} {:<36} {}",
                step.map_or("", |s| s.label),
                super::short(e)
            );
        }
    }
    let base = tempfile::tempdir_in(super::scratch_base()).unwrap();
    let mut fs = Fs::from_snapshot(&run.snapshot);
    let mut n_remote = start_n(r);
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut n = 0u64;
    for i in 0..=run.events.len() {
        if i > 0 {
            let e = &run.events[i - 1];
            if let Ev::Remote { n } = e {
                n_remote = *n;
            }
            fs.apply(e);
        }
        let allowed = contract(run, i);
        let afp = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            allowed.hash(&mut h);
            n_remote.hash(&mut h);
            h.finish()
        };
        let label = label_at(run, i);
        for state in fs.crash_states(Model::Ordered, cap, rng) {
            if !seen.insert((state.fingerprint(), afp)) {
                continue;
            }
            n += 1;
            let dir = base.path().join(format!("s{n}"));
            std::fs::create_dir(&dir).unwrap();
            materialize(&dir, &state);
            *tally.states.entry(label).or_default() += 1;
            tally.total += 1;
            let store = RecStore::replay(&r.ops[..n_remote]);
            let checked = match r.tiered {
                None => verify(&dir, store, &allowed),
                Some(budget) => verify_tiered(&dir, store, budget, &allowed),
            };
            if let Err(msg) = checked {
                let key = msg.split(": ").next().unwrap_or("");
                if allowed.get(key).is_none_or(|ok| ok.len() == 1) {
                    tally.settled += 1;
                }
                *tally
                    .by_op
                    .entry(format!("{}: {label}", run.name))
                    .or_default() += 1;
                tally.violations.push(format!(
                    "{} [remote] crash after event {i}/{} ({label}; last event {}; object store after request {n_remote}): {msg}\n    state: {}",
                    run.name,
                    run.events.len(),
                    if i > 0 { super::short(&run.events[i - 1]) } else { "-".into() },
                    describe(&state)
                ));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A remote workload: its name, the keys' initial values, its steps.
pub type Spec = (String, Vec<(&'static str, Ver)>, Vec<ROpStep>);

/// The fixed remote workloads.
pub fn fixed() -> Vec<Spec> {
    use ROpStep::*;
    vec![
        (
            "remote: insert_durable, replace, remove".into(),
            vec![("a", Some(1)), ("b", None), ("big", None)],
            vec![
                Durable("a", 2),
                Durable("big", 3),
                Durable("b", 4),
                Remove("a"),
                Durable("big", 5),
            ],
        ),
        (
            "remote: insert, flush, batch".into(),
            vec![("a", None), ("b", Some(1)), ("big", Some(1))],
            vec![
                Insert("a", 2),
                Insert("big", 3),
                Flush,
                Batch(vec![("a", 4), ("b", 5)]),
                Insert("b", 6),
                Remove("big"),
                Flush,
            ],
        ),
        (
            "remote: object store down, then flush".into(),
            vec![("a", Some(1)), ("b", None), ("big", None)],
            vec![
                DurableDown("a", 2),
                DurableDown("big", 3),
                Durable("b", 4),
                Flush,
                DurableDown("b", 5),
                Insert("big", 6),
                Flush,
            ],
        ),
    ]
}

/// A seeded random remote workload on three keys.
pub fn random(seed: u64) -> Spec {
    let mut rng = Rng::new(seed);
    let names = ["a", "b", "big"];
    let init = names
        .iter()
        .map(|k| (*k, if rng.below(2) == 1 { Some(1) } else { None }))
        .collect();
    let mut ops = Vec::new();
    let mut v = 1u32;
    for _ in 0..(3 + rng.below(4)) {
        v += 1;
        let (k, k2) = (names[rng.below(3)], names[rng.below(3)]);
        ops.push(match rng.below(7) {
            0 => ROpStep::Durable(k, v),
            1 => ROpStep::DurableDown(k, v),
            2 | 3 => ROpStep::Insert(k, v),
            4 => ROpStep::Flush,
            5 => ROpStep::Remove(k),
            _ if k2 != k => ROpStep::Batch(vec![(k, v), (k2, v)]),
            _ => ROpStep::Batch(vec![(k, v)]),
        });
    }
    ops.push(ROpStep::Flush);
    (format!("random remote workload {seed:#x}"), init, ops)
}

/// The fixed three-tier workloads.
pub fn tiered_fixed() -> Vec<Spec> {
    use ROpStep::*;
    vec![
        (
            "tiered: spills, flush, insert_durable, replace, remove".into(),
            vec![("a", Some(1)), ("b", None), ("c", None), ("big", None)],
            vec![
                Insert("big", 2),
                Insert("a", 3),
                Insert("b", 4),
                Insert("c", 5),
                Flush,
                Durable("a", 6),
                Insert("b", 7),
                Durable("b", 8),
                Remove("a"),
                Durable("big", 9),
            ],
        ),
        (
            "tiered: batch, replacements, object store down".into(),
            vec![("a", None), ("b", Some(1)), ("big", Some(1))],
            vec![
                Insert("big", 2),
                Batch(vec![("a", 3), ("b", 4)]),
                Insert("b", 5),
                Insert("a", 6),
                DurableDown("big", 7),
                Batch(vec![("big", 8), ("a", 9)]),
                Remove("b"),
                Insert("a", 10),
                Flush,
            ],
        ),
    ]
}

/// A seeded random three-tier workload on four keys.
pub fn tiered_random(seed: u64) -> Spec {
    let mut rng = Rng::new(seed);
    let names = ["a", "b", "c", "big"];
    let init = names
        .iter()
        .map(|k| (*k, if rng.below(2) == 1 { Some(1) } else { None }))
        .collect();
    let mut ops = Vec::new();
    let mut v = 1u32;
    for _ in 0..(4 + rng.below(5)) {
        v += 1;
        let (k, k2) = (names[rng.below(4)], names[rng.below(4)]);
        ops.push(match rng.below(9) {
            0 => ROpStep::Durable(k, v),
            1 => ROpStep::DurableDown(k, v),
            2..=4 => ROpStep::Insert(k, v),
            5 => ROpStep::Flush,
            6 => ROpStep::Remove(k),
            _ if k2 != k => ROpStep::Batch(vec![(k, v), (k2, v)]),
            _ => ROpStep::Batch(vec![(k, v)]),
        });
    }
    ops.push(ROpStep::Flush);
    (format!("random tiered workload {seed:#x}"), init, ops)
}
