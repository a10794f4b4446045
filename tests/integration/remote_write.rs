//! The remote write path: durable inserts upload an array held in memory
//! while the local durable copy is written (C and Fortran order, below, at
//! and above one part), read back equal by another node with the CRC-32
//! its metadata records; the fallbacks (a non-contiguous array, a failed
//! upload whose staged copy the next flush commits); batches uploading
//! and committing many entries at once, one failing key leaving the
//! others committed.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};
use ndarray_offload::__testing::object_store::memory::InMemory;
use ndarray_offload::__testing::object_store::path::Path as ObjPath;
use ndarray_offload::__testing::object_store::{
    self as os, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};
use ndarray_offload::__testing::{open_tiered_on, FaultPlan};
use ndarray_offload::remote::{RemoteOptions, TransferOptions};
use ndarray_offload::{Batch, DiskBackedStore, Element, Error, InsertOptions};
use parking_lot::Mutex;

use crate::common::remote_stats;

const URL: &str = "memory:///bucket/write";
const PART: usize = 5 << 20;

/// An in-memory object store whose uploads of data objects fail while
/// their path contains one of `fail` (a single PUT at once, a multipart
/// upload at its second part), and which counts the parts and PUTs of
/// data objects.
#[derive(Debug, Default)]
struct Flaky {
    inner: InMemory,
    fail: Mutex<Vec<String>>,
    puts: AtomicU64,
    parts: AtomicU64,
}

impl fmt::Display for Flaky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

impl Flaky {
    fn fails(&self, location: &ObjPath) -> bool {
        let l = location.as_ref();
        l.contains("/data/") && self.fail.lock().iter().any(|f| l.contains(f.as_str()))
    }

    fn injected() -> os::Error {
        os::Error::Generic {
            store: "Flaky",
            source: "injected upload failure".into(),
        }
    }

    /// Every object: its path and bytes.
    fn objects(&self) -> Vec<(String, Vec<u8>)> {
        futures::executor::block_on(async {
            let metas: Vec<ObjectMeta> = self.inner.list(None).map(|m| m.unwrap()).collect().await;
            let mut out = Vec::new();
            for m in metas {
                let b = self.inner.get(&m.location).await.unwrap().bytes().await;
                out.push((m.location.to_string(), b.unwrap().to_vec()));
            }
            out
        })
    }

    /// The data objects whose name starts with `key.`.
    fn data_objects(&self, key: &str) -> Vec<String> {
        futures::executor::block_on(async {
            let metas: Vec<ObjectMeta> = self.inner.list(None).map(|m| m.unwrap()).collect().await;
            metas
                .into_iter()
                .map(|m| m.location.to_string())
                .filter(|l| l.contains(&format!("/data/{key}.")))
                .collect()
        })
    }
}

#[derive(Debug)]
struct FlakyUpload {
    inner: Box<dyn MultipartUpload>,
    fail: bool,
    n: u64,
    parts: Arc<Flaky>,
}

#[async_trait::async_trait]
impl MultipartUpload for FlakyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.n += 1;
        self.parts.parts.fetch_add(1, Ordering::SeqCst);
        if self.fail && self.n == 2 {
            return Box::pin(async { Err(Flaky::injected()) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> os::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> os::Result<()> {
        self.inner.abort().await
    }
}

/// `Flaky` behind an `Arc` (the multipart uploads count into it).
#[derive(Debug, Clone)]
struct Shared(Arc<Flaky>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Flaky")
    }
}

#[async_trait::async_trait]
impl ObjectStore for Shared {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> os::Result<PutResult> {
        if location.as_ref().contains("/data/") {
            self.0.puts.fetch_add(1, Ordering::SeqCst);
        }
        if self.0.fails(location) {
            return Err(Flaky::injected());
        }
        self.0.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> os::Result<Box<dyn MultipartUpload>> {
        let inner = self.0.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FlakyUpload {
            inner,
            fail: self.0.fails(location),
            n: 0,
            parts: self.0.clone(),
        }))
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> os::Result<GetResult> {
        self.0.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, os::Result<ObjPath>>,
    ) -> BoxStream<'static, os::Result<ObjPath>> {
        self.0.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, os::Result<ObjectMeta>> {
        self.0.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> os::Result<ListResult> {
        self.0.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjPath, to: &ObjPath, o: CopyOptions) -> os::Result<()> {
        self.0.inner.copy_opts(from, to, o).await
    }
}

fn opts() -> RemoteOptions {
    let mut o = RemoteOptions::default();
    o.transfer = TransferOptions {
        part_size: PART,
        concurrency: 3,
    };
    o.batch_concurrency = 4;
    o
}

/// A writer and a reader (another node: its own cache directory) on one
/// flaky in-memory object store.
struct Nodes {
    store: Arc<Flaky>,
    writer: DiskBackedStore,
    reader: DiskBackedStore,
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn nodes() -> Nodes {
    let store = Arc::new(Flaky::default());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = Arc::new(Shared(store.clone()));
    let writer = open_tiered_on(URL, shared.clone(), a.path(), opts(), None).unwrap();
    let reader = open_tiered_on(URL, shared, b.path(), opts(), None).unwrap();
    Nodes {
        store,
        writer,
        reader,
        dirs: (a, b),
    }
}

/// The `.npy` bytes of `a` (as numpy would write them).
fn npy_bytes<T: Element>(a: &ArrayD<T>) -> Vec<u8> {
    let mut v = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(a, &mut v).unwrap();
    v
}

/// Checks that `key`'s committed data object holds exactly the `.npy`
/// bytes of `a`, that its metadata's CRC-32 and size are theirs, and that
/// another node reads `a` back (its download checks the CRC-32 too).
fn check_committed<T>(n: &Nodes, key: &str, a: &ArrayD<T>)
where
    T: Element + PartialEq + fmt::Debug,
{
    let want = npy_bytes(a);
    let objects = n.store.objects();
    let meta = objects
        .iter()
        .find(|(p, _)| p.ends_with(&format!("/meta/{key}.meta.json")))
        .unwrap_or_else(|| panic!("no metadata object of {key}"));
    let meta: serde_json::Value = serde_json::from_slice(&meta.1).unwrap();
    let r = &meta["ndoffload_remote"];
    let data = r["data"].as_str().unwrap();
    let (_, bytes) = objects
        .iter()
        .find(|(p, _)| p.ends_with(data))
        .unwrap_or_else(|| panic!("no data object {data}"));
    assert_eq!(bytes.len(), want.len(), "{key}: size");
    assert!(
        bytes == &want,
        "{key}: the data object is not the array's .npy"
    );
    assert_eq!(r["size"].as_u64(), Some(want.len() as u64), "{key}");
    assert_eq!(
        r["crc32"].as_u64(),
        Some(u64::from(crc32fast::hash(&want))),
        "{key}: CRC-32"
    );
    n.reader.refresh().unwrap();
    let got = n.reader.get::<T, IxDyn>(key).unwrap();
    assert_eq!(got.read().unwrap().view(), a.view(), "{key}");
}

/// Shapes of `len`-byte `.npy` files of 8-byte elements (a 2-d shape
/// whose header is 128 bytes).
fn rows_for(len: usize, cols: usize) -> usize {
    (len - 128) / 8 / cols
}

#[test]
fn durable_inserts_upload_c_and_f_order_arrays_from_memory() {
    let n = nodes();
    let cols = 16;
    // Below one part, exactly one part (the header included), one byte
    // over a part's worth of elements, and over two parts.
    let sizes = [
        ("small", rows_for(1 << 20, cols)),
        ("one_part", rows_for(PART, cols)),
        ("above", rows_for(PART, cols) + 1),
        ("three_parts", rows_for(2 * PART + 4096, cols)),
    ];
    for (label, rows) in sizes {
        for fortran in [false, true] {
            let key = format!("{label}_{}", if fortran { "f" } else { "c" });
            let shape = IxDyn(&[rows, cols]);
            let a: ArrayD<f64> = ArrayD::from_shape_fn(shape.clone().set_f(fortran), |i| {
                (i[0] * cols + i[1]) as f64 * 0.5 - 7.0
            });
            assert_eq!(a.is_standard_layout(), !fortran);
            let size = npy_bytes(&a).len();
            if label == "one_part" {
                assert_eq!(size, PART, "{key}");
            }
            let (puts, parts) = (
                n.store.puts.load(Ordering::SeqCst),
                n.store.parts.load(Ordering::SeqCst),
            );
            n.writer.insert_durable(&key, a.clone()).unwrap();
            // One PUT up to a part, else a part per 5 MiB.
            let puts = n.store.puts.load(Ordering::SeqCst) - puts;
            let parts = n.store.parts.load(Ordering::SeqCst) - parts;
            if size <= PART {
                assert_eq!((puts, parts), (1, 0), "{key}");
            } else {
                assert_eq!((puts, parts), (0, size.div_ceil(PART) as u64), "{key}");
            }
            check_committed(&n, &key, &a);
        }
    }
    // Other element types: their memory is their encoding.
    let c = ArrayD::from_shape_fn(IxDyn(&[300, 7]).f(), |i| {
        num_complex::Complex::new(i[0] as f32, -(i[1] as f32))
    });
    n.writer.insert_durable("complex_f", c.clone()).unwrap();
    check_committed(&n, "complex_f", &c);
    let b = ArrayD::from_shape_fn(IxDyn(&[1001]), |i| i[0] % 3 == 0);
    n.writer.insert_durable("bools", b.clone()).unwrap();
    check_committed(&n, "bools", &b);
    let z = ArrayD::<i32>::zeros(IxDyn(&[0, 5]));
    n.writer.insert_durable("empty", z.clone()).unwrap();
    check_committed(&n, "empty", &z);
    let s = remote_stats(&n.writer);
    assert_eq!(s.pending, 0, "{s:?}");
}

/// The local durable copy is written while the data object is uploaded:
/// the data object is complete on the object store before the local pair
/// is renamed into place (the rename waits for it, up to 10 s).
#[test]
fn the_upload_overlaps_the_local_durable_copy() {
    let n = nodes();
    let cache = n.dirs.0.path().to_path_buf();
    let store = n.store.clone();
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let record = seen.clone();
    let plan = FaultPlan::fail_at(0).with_hook(move |op, path: &Path| {
        let Some(key) = renamed_pair(op, path, &cache) else {
            return;
        };
        if record.lock().iter().any(|(k, _)| *k == key) {
            return;
        }
        let start = Instant::now();
        let mut uploaded = false;
        while start.elapsed() < Duration::from_secs(10) {
            if !store.data_objects(&key).is_empty() {
                uploaded = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        record.lock().push((key, uploaded));
    });
    let small = ArrayD::from_shape_fn(IxDyn(&[100, 3]), |i| (i[0] + i[1]) as f64);
    let big = ArrayD::from_shape_fn(IxDyn(&[2 * PART / 8 / 1024, 1024]).f(), |i| i[0] as f64);
    {
        let _g = ndarray_offload::__testing::install(plan);
        n.writer.insert_durable("small", small.clone()).unwrap();
        n.writer.insert_durable("big", big.clone()).unwrap();
    }
    assert_eq!(
        *seen.lock(),
        [("small".to_string(), true), ("big".to_string(), true)]
    );
    check_committed(&n, "small", &small);
    check_committed(&n, "big", &big);
}

/// The entry (of `small` and `big`) whose pair `op` renames into the
/// cache directory `cache` (the staged temporary files' names hold the
/// entry's file names).
fn renamed_pair(op: impl fmt::Debug, path: &Path, cache: &Path) -> Option<String> {
    if format!("{op:?}") != "Rename" || path.parent() != Some(cache) {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    ["small", "big"]
        .into_iter()
        .find(|k| name.contains(&format!("{k}.npy")) || name.contains(&format!("{k}.meta.json")))
        .map(str::to_string)
}

/// A non-contiguous array is written locally, then uploaded from its
/// file (as before); it reads back equal.
#[test]
fn non_contiguous_arrays_are_uploaded_from_the_local_copy() {
    let n = nodes();
    // Owned (moved in) with permuted axes: neither C nor Fortran order.
    let a = ArrayD::from_shape_fn(IxDyn(&[4, 5, 6]), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as i64
    })
    .permuted_axes(IxDyn(&[1, 0, 2]));
    assert!(!a.is_standard_layout() && !a.t().is_standard_layout());
    n.writer.insert_durable("perm", a.clone()).unwrap();
    check_committed(&n, "perm", &a.as_standard_layout().to_owned());
    // Large enough for a multipart upload from the file.
    let b = ArrayD::from_shape_fn(IxDyn(&[1024, 2 * PART / 8 / 1024]), |i| i[1] as f64)
        .permuted_axes(IxDyn(&[1, 0]))
        .into_owned();
    let b = {
        // Reversed rows: negative strides.
        let mut b = b;
        b.invert_axis(ndarray::Axis(0));
        b
    };
    assert!(!b.is_standard_layout() && !b.t().is_standard_layout());
    let parts = n.store.parts.load(Ordering::SeqCst);
    n.writer.insert_durable("rev", b.clone()).unwrap();
    assert!(n.store.parts.load(Ordering::SeqCst) - parts >= 3);
    check_committed(&n, "rev", &b.as_standard_layout().to_owned());
}

/// A failed upload from memory: the insert fails with a typed error
/// naming the key, the local staged copy stays (durable, pending), and
/// the next flush uploads and commits it.
#[test]
fn a_failed_upload_leaves_the_staged_copy_for_flush() {
    for (key, rows) in [("single_put", 100), ("multipart", 2 * PART / 8 / 64)] {
        let n = nodes();
        let a = ArrayD::from_shape_fn(IxDyn(&[rows, 64]), |i| (i[0] * 64 + i[1]) as f64);
        n.store.fail.lock().push(format!("{key}."));
        let e = n.writer.insert_durable(key, a.clone()).unwrap_err();
        match &e {
            Error::Remote { key: k, op, .. } => {
                assert_eq!((k.as_str(), *op), (key, "upload"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(key), "{e}");
        // Staged in the cache directory, nothing committed.
        let s = remote_stats(&n.writer);
        assert_eq!(s.pending, 1, "{s:?}");
        assert!(n.dirs.0.path().join(format!("{key}.npy")).is_file());
        n.reader.refresh().unwrap();
        assert!(!n.reader.contains(key));
        // The writer reads its write.
        let got = n.writer.get::<f64, IxDyn>(key).unwrap();
        assert_eq!(got.read().unwrap().view(), a.view());
        drop(got);
        // The server works again: flush commits the staged copy.
        n.store.fail.lock().clear();
        n.writer.flush().unwrap();
        assert_eq!(remote_stats(&n.writer).pending, 0);
        check_committed(&n, key, &a);
    }
}

/// A batch of small and large entries of several dtypes and layouts: all
/// uploaded while the batch is written locally, then committed; one
/// failing key gives a typed error naming it, and every other entry is
/// committed; a flush commits the failed one once the server accepts it.
#[test]
fn batches_upload_and_commit_concurrently_one_failing_key() {
    let n = nodes();
    let mut batch = Batch::new();
    let mut want: Vec<(String, ArrayD<f64>)> = Vec::new();
    for i in 0..40 {
        let rows = match i % 10 {
            0 => 2 * PART / 8 / 32 + 3, // multipart
            _ => 10 + i,
        };
        let shape = IxDyn(&[rows, 32]).set_f(i % 3 == 0);
        let a = ArrayD::from_shape_fn(shape, |j| (i * 1_000_000 + j[0] * 32 + j[1]) as f64);
        want.push((format!("e{i:02}"), a));
    }
    // A non-contiguous entry and another dtype in the same batch.
    let perm = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |i| (i[0] + 10 * i[1]) as u16)
        .permuted_axes(IxDyn(&[2, 0, 1]));
    for (k, a) in &want {
        batch.push(k, a.clone()).unwrap();
    }
    batch
        .push_opts("perm", perm.clone(), &InsertOptions::new())
        .unwrap();
    // One failing key (a multipart one: its second part fails).
    n.store.fail.lock().push("e20.".into());
    let e = n.writer.insert_many(batch).unwrap_err();
    match &e {
        Error::Remote { key, .. } => assert_eq!(key, "e20", "{e}"),
        other => panic!("{other:?}"),
    }
    for (k, a) in &want {
        if k != "e20" {
            check_committed(&n, k, a);
        }
    }
    check_committed(&n, "perm", &perm.as_standard_layout().to_owned());
    n.reader.refresh().unwrap();
    assert!(!n.reader.contains("e20"));
    assert_eq!(remote_stats(&n.writer).pending, 1);
    n.store.fail.lock().clear();
    n.writer.flush().unwrap();
    check_committed(&n, "e20", &want[20].1);
    assert_eq!(remote_stats(&n.writer).pending, 0);
    // The flush wrote the batch's entries again (the failed insert left
    // them all unmarked): after a collection, one data object per key.
    n.writer.gc_with_grace(Duration::ZERO).unwrap();
    for (k, _) in &want {
        assert_eq!(n.store.data_objects(k).len(), 1, "{k}");
    }
}

/// Replacing entries in batches and one by one leaves each key's newest
/// value committed, and concurrent durable inserts from several threads
/// of one handle all commit.
#[test]
fn concurrent_durable_inserts_all_commit() {
    let n = nodes();
    std::thread::scope(|s| {
        for t in 0..4 {
            let w = &n.writer;
            s.spawn(move || {
                for round in 0..5 {
                    let a = ArrayD::from_shape_fn(IxDyn(&[50 + t, 3]).f(), |i| {
                        (t * 1000 + round * 10 + i[1]) as f64
                    });
                    w.insert_durable(format!("t{t}"), a).unwrap();
                }
            });
        }
    });
    for t in 0..4 {
        let a = ArrayD::from_shape_fn(IxDyn(&[50 + t, 3]).f(), |i| (t * 1000 + 40 + i[1]) as f64);
        check_committed(&n, &format!("t{t}"), &a);
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// A durable insert's local pair is not synced (its commit makes the
/// write durable): it records the boot it was written in, and after a
/// reboot (simulated) such a pair is never read nor uploaded. A torn copy
/// of a committed write is downloaded again; a torn staged write that was
/// never acknowledged (its process died before the commit) is dropped; a
/// write whose commit failed was synced before its error, and the next
/// flush after the reboot commits it.
#[test]
fn pairs_published_without_syncing_are_never_trusted_after_a_reboot() {
    let n = nodes();
    let dir = n.dirs.0.path().to_path_buf();
    let a = ArrayD::from_shape_fn(IxDyn(&[50, 8]), |i| (i[0] * 8 + i[1]) as f64);
    let b = a.mapv(|x| x + 0.5);
    // Committed: the cached copy records the boot it was written in.
    n.writer.insert_durable("c", a.clone()).unwrap();
    let meta = read_json(&dir.join("c.meta.json"));
    let boot = meta["ndoffload_remote"]["unsynced"]
        .as_str()
        .expect("the copy records its boot")
        .to_string();
    assert!(meta.get("ndoffload_staged").is_none(), "{meta}");
    // A failed commit: the staged write is synced before the error.
    n.store.fail.lock().push("f.".into());
    n.writer.insert_durable("f", b.clone()).unwrap_err();
    let meta = read_json(&dir.join("f.meta.json"));
    assert!(meta["ndoffload_staged"].is_object(), "{meta}");
    assert!(meta["ndoffload_staged"].get("unsynced").is_none(), "{meta}");
    n.store.fail.lock().clear();
    // A staged write published without syncing whose process died before
    // its commit: t's pair, forged from c's.
    let mut t = read_json(&dir.join("c.meta.json"));
    let o = t.as_object_mut().unwrap();
    o.remove("ndoffload_remote");
    o.insert(
        "ndoffload_staged".into(),
        serde_json::json!({"data": "data/t.0123456789abcdef.npy", "unsynced": boot}),
    );
    std::fs::write(dir.join("t.meta.json"), t.to_string()).unwrap();
    std::fs::copy(dir.join("c.npy"), dir.join("t.npy")).unwrap();
    let writer = n.writer;
    writer.close().unwrap();
    // The power cut tore c's and t's data (zeros after the header).
    for k in ["c", "t"] {
        let p = dir.join(format!("{k}.npy"));
        let mut bytes = std::fs::read(&p).unwrap();
        let body = bytes.len() - 50 * 8 * 8;
        bytes[body..].fill(0);
        std::fs::write(&p, bytes).unwrap();
    }
    ndarray_offload::__testing::simulate_reboot(&dir);
    let shared = Arc::new(Shared(n.store.clone()));
    let w = open_tiered_on(URL, shared.clone(), &dir, opts(), None).unwrap();
    assert!(!w.contains("t"), "a torn staged write is there");
    assert!(!dir.join("t.npy").exists() && !dir.join("t.meta.json").exists());
    let before = remote_stats(&w).downloads;
    let got = w.get::<f64, IxDyn>("c").unwrap();
    assert_eq!(got.read().unwrap().view(), a.view(), "a torn copy was read");
    drop(got);
    assert_eq!(remote_stats(&w).downloads, before + 1);
    // The failed write is still promised: it reads, and is committed (by
    // the open or by this flush).
    assert_eq!(
        w.get::<f64, IxDyn>("f").unwrap().to_owned_array().unwrap(),
        b
    );
    w.flush().unwrap();
    assert!(w.pending_writes().is_empty());
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = open_tiered_on(URL, shared, fresh_dir.path(), opts(), None).unwrap();
    let got = fresh.get::<f64, IxDyn>("f").unwrap();
    assert_eq!(got.read().unwrap().view(), b.view());
    let got = fresh.get::<f64, IxDyn>("c").unwrap();
    assert_eq!(got.read().unwrap().view(), a.view());
    assert!(!fresh.contains("t"));
    // Before the reboot nothing of this is torn: the same files, read in
    // the boot that wrote them, are trusted (no download).
    w.insert_durable("d", a.clone()).unwrap();
    let w2 = open_tiered_on(URL, Arc::new(Shared(n.store.clone())), &dir, opts(), None);
    drop(w);
    let w2 = w2.unwrap();
    let before = remote_stats(&w2).downloads;
    let got = w2.get::<f64, IxDyn>("d").unwrap();
    assert_eq!(got.read().unwrap().view(), a.view());
    drop(got);
    assert_eq!(
        remote_stats(&w2).downloads,
        before,
        "a whole copy was downloaded again"
    );
}
