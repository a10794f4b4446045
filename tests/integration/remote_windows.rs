//! Windows of entries (`DiskBackedStore::read_window`): boxes of remote
//! entries read by ranged GETs of only their bytes, equal to the same
//! slices of the whole array, of one version while another handle
//! replaces the entry, cached by ranges; and the progress events of
//! transfers.

// A window of a 1-d entry is one range: `&[a..b]`.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use ndarray::{ArrayD, IxDyn, ShapeBuilder, Slice};
use ndarray_offload::__testing::object_store::memory::InMemory;
use ndarray_offload::__testing::object_store::path::Path as ObjPath;
use ndarray_offload::__testing::object_store::{
    self as os, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use ndarray_offload::__testing::{open_tiered_on, tiered_on};
use ndarray_offload::remote::{RemoteOptions, TransferOptions};
use ndarray_offload::{DiskBackedStore, Element, Error, StoreBuilder};
use parking_lot::Mutex;

use crate::common::{remote_stats, Rng};
use crate::remote::Moto;

const URL: &str = "memory:///bucket/windows";

/// An in-memory object store that counts the GETs made of it and the
/// bytes they returned.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemory,
    gets: AtomicU64,
    bytes: AtomicU64,
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counting")
    }
}

impl Counting {
    /// GETs and bytes since the last call.
    fn take(&self) -> (u64, u64) {
        (
            self.gets.swap(0, Ordering::SeqCst),
            self.bytes.swap(0, Ordering::SeqCst),
        )
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> os::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> os::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjPath, options: GetOptions) -> os::Result<GetResult> {
        let r = self.inner.get_opts(location, options).await?;
        if !is_metadata(&r) {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.bytes
                .fetch_add(r.range.end - r.range.start, Ordering::SeqCst);
        }
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, os::Result<ObjPath>>,
    ) -> BoxStream<'static, os::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjPath>) -> BoxStream<'static, os::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjPath>) -> os::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjPath, to: &ObjPath, o: CopyOptions) -> os::Result<()> {
        self.inner.copy_opts(from, to, o).await
    }
}

/// Only data objects count: the metadata objects' GETs are not a window's.
fn is_metadata(r: &GetResult) -> bool {
    !r.meta.location.as_ref().contains("/data/")
}

fn opts() -> RemoteOptions {
    let mut o = RemoteOptions::default();
    o.transfer = TransferOptions {
        part_size: 5 << 20,
        concurrency: 4,
    };
    o
}

/// A writer and a reader (another node: its own cache directory) on one
/// counting in-memory object store.
struct Nodes {
    store: Arc<Counting>,
    writer: DiskBackedStore,
    reader: DiskBackedStore,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn nodes() -> Nodes {
    let store = Arc::new(Counting::default());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let writer = open_tiered_on(URL, store.clone(), a.path(), opts(), None).unwrap();
    let reader = open_tiered_on(URL, store.clone(), b.path(), opts(), None).unwrap();
    Nodes {
        store,
        writer,
        reader,
        _dirs: (a, b),
    }
}

fn slice<T: Clone>(a: &ArrayD<T>, ranges: &[Range<usize>]) -> ArrayD<T> {
    a.slice_each_axis(|ax| Slice::from(ranges[ax.axis.index()].clone()))
        .to_owned()
}

/// Boxes of `shape`: full, a slab of the outer axis, a slab of the last
/// axis, an inner box, one element, empty ranges.
fn boxes(shape: &[usize], rng: &mut Rng) -> Vec<Vec<Range<usize>>> {
    let full: Vec<Range<usize>> = shape.iter().map(|&n| 0..n).collect();
    let mut out = vec![full.clone()];
    let n = shape.len();
    if n == 0 {
        return out;
    }
    let mut slab = full.clone();
    slab[0] = 1..shape[0] - 1;
    out.push(slab);
    let mut last = full.clone();
    last[n - 1] = shape[n - 1] / 2..shape[n - 1];
    out.push(last);
    out.push(shape.iter().map(|&n| 1..n - 1).collect());
    out.push(shape.iter().map(|&n| n - 1..n).collect());
    let mut empty = full.clone();
    empty[n / 2] = 2..2;
    out.push(empty);
    for _ in 0..4 {
        out.push(
            shape
                .iter()
                .map(|&n| {
                    let a = rng.below(n + 1);
                    let b = rng.below(n + 1);
                    a.min(b)..a.max(b)
                })
                .collect(),
        );
    }
    out
}

/// C-order and Fortran-order entries of 1, 2 and 3 axes (and 0) of `T`.
fn entries<T: Element + Copy>(f: &impl Fn(usize) -> T) -> Vec<(String, ArrayD<T>)> {
    let mut out = Vec::new();
    for shape in [vec![], vec![17], vec![9, 11], vec![6, 7, 5]] {
        let n: usize = shape.iter().product();
        let c = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(f).collect()).unwrap();
        let fo = ArrayD::from_shape_vec(IxDyn(&shape).f(), (0..n).map(f).collect()).unwrap();
        out.push((format!("c{}", shape.len()), c));
        out.push((format!("f{}", shape.len()), fo));
    }
    out
}

fn check_dtype<T: Element + Copy + PartialEq + fmt::Debug>(
    n: &Nodes,
    local: &DiskBackedStore,
    ro: &DiskBackedStore,
    tag: &str,
    f: impl Fn(usize) -> T,
) {
    let mut rng = Rng(0x5eed ^ tag.len() as u64);
    for (suffix, a) in entries(&f) {
        let name = format!("{tag}_{suffix}");
        n.writer.insert_durable(&name, a.clone()).unwrap();
        local.insert_durable(&name, a.clone()).unwrap();
        // Only in its file: windows of it map the file.
        local.offload(&name).unwrap();
        for ranges in boxes(a.shape(), &mut rng) {
            let want = slice(&a, &ranges);
            for (who, s) in [
                ("reader", &n.reader),
                ("read-only", ro),
                ("writer", &n.writer),
                ("local", local),
            ] {
                let got = s.read_window::<T>(&name, &ranges).unwrap();
                assert_eq!(got, want, "{who} {name} {ranges:?}");
                assert_eq!(got.shape(), want.shape(), "{who} {name} {ranges:?}");
                let view = s.map_window::<T>(&name, &ranges).unwrap();
                assert_eq!(view.view(), want.view(), "view: {who} {name} {ranges:?}");
                assert_eq!(view.shape(), want.shape(), "view: {who} {name} {ranges:?}");
                // In place, except of the writer (it holds the entry in
                // RAM) and of empty windows.
                if who != "writer" && !want.is_empty() {
                    assert!(view.is_mapped(), "{who} {name} {ranges:?}");
                }
            }
        }
    }
}

/// Every dtype, C and Fortran order, 0-3 axes: windows (`read_window`)
/// and views (`map_window`) equal the same slices of the whole array, on
/// another node, a read-only handle, the writer and a local store.
#[test]
fn remote_windows_of_every_dtype_and_layout_equal_slices() {
    let n = nodes();
    let l = tempfile::tempdir().unwrap();
    let local = DiskBackedStore::open(l.path()).unwrap();
    let r = tempfile::tempdir().unwrap();
    let ro = tiered_on(
        StoreBuilder::new(r.path()).read_only(true),
        URL,
        n.store.clone(),
        opts(),
    )
    .open()
    .unwrap();
    check_dtype(&n, &local, &ro, "b1", |i| i % 3 == 0);
    check_dtype(&n, &local, &ro, "i1", |i| (i % 100) as i8 - 50);
    check_dtype(&n, &local, &ro, "i2", |i| (i as i16).wrapping_mul(-300));
    check_dtype(&n, &local, &ro, "i4", |i| i as i32 * -70_000);
    check_dtype(&n, &local, &ro, "i8", |i| i as i64 * -(1 << 40));
    check_dtype(&n, &local, &ro, "u1", |i| i as u8);
    check_dtype(&n, &local, &ro, "u2", |i| i as u16 * 100);
    check_dtype(&n, &local, &ro, "u4", |i| i as u32 * 70_000);
    check_dtype(&n, &local, &ro, "u8", |i| i as u64 * (1 << 40));
    check_dtype(&n, &local, &ro, "f4", |i| i as f32 * 0.5);
    check_dtype(&n, &local, &ro, "f8", |i| i as f64 * -0.25);
    check_dtype(&n, &local, &ro, "c8", |i| {
        num_complex::Complex::new(i as f32, -(i as f32))
    });
    check_dtype(&n, &local, &ro, "c16", |i| {
        num_complex::Complex::new(i as f64, 0.5)
    });
    // The reader and the read-only handle downloaded no whole object: the
    // windows were ranged reads.
    let s = remote_stats(&n.reader);
    assert_eq!(s.downloads, 0, "{s:?}");
    assert!(s.bytes_down > 0, "{s:?}");
    assert_eq!(remote_stats(&ro).downloads, 0);
    // The reader's window cache is in its cache directory, the read-only
    // handle's outside its own.
    let windows = n.reader.dir().join(".ndoffload/windows");
    assert_eq!(std::fs::read_dir(&windows).unwrap().count(), 1);
    assert!(!r.path().join(".ndoffload/windows").exists());
    let dir = n.reader.dir().to_path_buf();
    drop(n.reader);
    assert_eq!(
        std::fs::read_dir(dir.join(".ndoffload/windows"))
            .unwrap()
            .count(),
        0,
        "the window cache is removed with its handle"
    );
}

#[test]
fn remote_window_errors_are_typed() {
    let n = nodes();
    let l = tempfile::tempdir().unwrap();
    let local = DiskBackedStore::open(l.path()).unwrap();
    let a = ArrayD::from_shape_fn(IxDyn(&[4, 5]), |i| (i[0] * 5 + i[1]) as f64);
    n.writer.insert_durable("a", a.clone()).unwrap();
    local.insert_durable("a", a).unwrap();
    for s in [&n.reader, &local] {
        match s.read_window::<f32>("a", &[0..1, 0..1]) {
            Err(Error::DtypeMismatch {
                expected, found, ..
            }) => assert_eq!((expected.as_str(), found.as_str()), ("<f4", "<f8")),
            other => panic!("{other:?}"),
        }
        for bad in [
            vec![0..1],
            vec![0..1, 0..1, 0..1],
            vec![0..5, 0..1],
            vec![0..1, 3..6],
        ] {
            match s.read_window::<f64>("a", &bad) {
                Err(e @ Error::InvalidInput { .. }) => {
                    assert!(e.to_string().contains("a.meta.json"), "{e}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        #[allow(clippy::reversed_empty_ranges)]
        let decreasing = [2..1, 0..1];
        assert!(matches!(
            s.read_window::<f64>("a", &decreasing),
            Err(Error::InvalidInput { .. })
        ));
        assert!(matches!(
            s.read_window::<f64>("nope", &[0..1]),
            Err(Error::KeyNotFound { .. })
        ));
    }
    // A data object gone for good (not collected by a replace): the error
    // names the entry and the object.
    let s = n.reader.read_window::<f64>("a", &[0..1, 0..1]).unwrap();
    assert_eq!(s[[0, 0]], 0.0);
    n.writer
        .insert_durable("b", ArrayD::<f64>::zeros(IxDyn(&[3])))
        .unwrap();
    n.reader.refresh().unwrap();
    let _ = n.reader.read_window::<f64>("b", &[0..0]).unwrap();
    futures::executor::block_on(async {
        use futures::StreamExt;
        let objects: Vec<_> = n.store.inner.list(None).collect().await;
        for o in objects {
            let o = o.unwrap();
            if o.location.as_ref().contains("/data/b.") {
                n.store.inner.delete(&o.location).await.unwrap();
            }
        }
    });
    match n.reader.read_window::<f64>("b", &[0..2]) {
        Err(e @ Error::Remote { .. }) => {
            let text = e.to_string();
            assert!(text.contains("\"b\"") && text.contains("data/b."), "{text}");
            assert!(e.is_not_found(), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn remote_window_of_one_percent_fetches_under_two_percent() {
    let n = nodes();
    // 2,000 x 1,024 f64 (16 MiB, a multipart upload), C and Fortran order.
    let (rows, cols) = (2000usize, 1024usize);
    let c = ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |i| (i[0] * cols + i[1]) as f64);
    let f = ArrayD::from_shape_vec(
        IxDyn(&[rows, cols]).f(),
        (0..rows * cols).map(|i| i as f64).collect(),
    )
    .unwrap();
    n.writer.insert_durable("c", c.clone()).unwrap();
    n.writer.insert_durable("f", f.clone()).unwrap();
    let object = (rows * cols * 8) as u64;
    n.reader.refresh().unwrap();
    n.store.take();
    // 1 % of the rows of the C-order entry: one run.
    let slab = [500..520, 0..cols];
    let got = n.reader.read_window::<f64>("c", &slab).unwrap();
    assert_eq!(got, slice(&c, &slab));
    let (gets, bytes) = n.store.take();
    assert!(bytes * 50 <= object, "{bytes} bytes of {object}");
    assert!(bytes >= 20 * cols as u64 * 8, "{bytes}");
    assert!(gets <= 2, "{gets} GETs (the header, the run)");
    // The same window again, and a window inside it: nothing fetched.
    assert_eq!(n.reader.read_window::<f64>("c", &slab).unwrap(), got);
    let inner = [505..510, 100..200];
    assert_eq!(
        n.reader.read_window::<f64>("c", &inner).unwrap(),
        slice(&c, &inner)
    );
    assert_eq!(n.store.take(), (0, 0));
    // A box over many rows of the C-order entry: 40 runs of 800 bytes,
    // 8 KiB apart, coalesced into one GET of about 320 KiB.
    let b = [1000..1040, 0..100];
    assert_eq!(n.reader.read_window::<f64>("c", &b).unwrap(), slice(&c, &b));
    let (gets, bytes) = n.store.take();
    assert_eq!(gets, 1);
    assert!(bytes <= 40 * cols as u64 * 8, "{bytes}");
    // 1 % of the columns of the Fortran-order entry: one run too.
    let slab = [0..rows, 300..310];
    assert_eq!(
        n.reader.read_window::<f64>("f", &slab).unwrap(),
        slice(&f, &slab)
    );
    let (_, bytes) = n.store.take();
    assert!(bytes * 50 <= object, "{bytes} bytes of {object}");
    // Runs far apart are separate requests, and fetch only their bytes:
    // two elements of the Fortran-order entry (16,000 bytes per column),
    // in columns 0 and 1,000 (16 MB apart).
    let two = [1500..1501, 0..1];
    let far = [0..1, 1000..1001];
    assert_eq!(
        n.reader.read_window::<f64>("f", &two).unwrap()[[0, 0]],
        1500.0
    );
    assert_eq!(
        n.reader.read_window::<f64>("f", &far).unwrap()[[0, 0]],
        (1000 * rows) as f64
    );
    let (gets, bytes) = n.store.take();
    assert_eq!((gets, bytes), (2, 16));
    // A full get downloads the whole object.
    let before = remote_stats(&n.reader).downloads;
    let whole = n.reader.get::<f64, IxDyn>("c").unwrap();
    assert_eq!(whole.read().unwrap().view(), c.view());
    assert_eq!(remote_stats(&n.reader).downloads, before + 1);
    // The entry is now in the cache directory: windows read it there.
    n.store.take();
    assert_eq!(n.reader.read_window::<f64>("c", &b).unwrap(), slice(&c, &b));
    assert_eq!(n.store.take(), (0, 0));
}

/// Generation `g` of the replaced entry: element `i` (in C order) is
/// `g * 1e9 + i`.
fn generation(g: i64, shape: &[usize], fortran: bool) -> ArrayD<i64> {
    let n: usize = shape.iter().product();
    let c = ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n as i64).map(|i| g * 1_000_000_000 + i).collect(),
    )
    .unwrap();
    if fortran {
        let mut f = ArrayD::zeros(IxDyn(shape).f());
        f.assign(&c);
        f
    } else {
        c
    }
}

#[test]
fn remote_windows_read_one_version_while_another_node_replaces() {
    let n = nodes();
    let shape = [64usize, 300, 3];
    n.writer
        .insert_durable("g", generation(0, &shape, false))
        .unwrap();
    n.reader.refresh().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, last) = (stop.clone(), last.clone());
        let w = n.writer;
        std::thread::spawn(move || {
            let mut g = 0i64;
            while !stop.load(Ordering::SeqCst) {
                g += 1;
                w.insert_durable("g", generation(g, &shape, g % 2 == 1))
                    .unwrap();
                last.store(g as u64, Ordering::SeqCst);
                if g % 3 == 0 {
                    // The versions no metadata names are deleted: windows
                    // of a collected version read the entry again.
                    w.gc_with_grace(Duration::ZERO).unwrap();
                }
            }
            g
        })
    };
    let mut rng = Rng(7);
    let mut seen = std::collections::BTreeSet::new();
    let mut gone = 0;
    let mut windows = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) || seen.len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "{seen:?}");
        if rng.below(3) == 0 {
            n.reader.refresh().unwrap();
        }
        let ranges: Vec<Range<usize>> = shape
            .iter()
            .map(|&n| {
                let a = rng.below(n);
                a..(a + 1 + rng.below(n - a))
            })
            .collect();
        let w = match n.reader.read_window::<i64>("g", &ranges) {
            Ok(w) => w,
            // Collected twice in a row (the writer is faster than the
            // retry): a typed error, never a mixed window.
            Err(e) if e.is_not_found() && matches!(e, Error::Remote { .. }) => {
                gone += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        windows += 1;
        let g = w.iter().next().unwrap() / 1_000_000_000;
        let want = slice(&generation(g, &shape, false), &ranges);
        assert_eq!(w, want, "window {ranges:?} of generation {g} is mixed");
        seen.insert(g);
    }
    stop.store(true, Ordering::SeqCst);
    let gens = writer.join().unwrap();
    assert!(gens >= 3 && seen.len() >= 3, "{gens} {seen:?}");
    assert!(
        gone * 10 <= windows,
        "{gone} of {windows} windows found no version"
    );
    eprintln!(
        "windows: {windows} windows, {} generations seen of {gens}, {gone} collected twice",
        seen.len()
    );
}

/// The `tracing` events of target `ndarray_offload::remote` on this thread.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn fmt::Debug) {
        self.0.insert(f.name().into(), format!("{v:?}"));
    }
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        self.0.insert(f.name().into(), v.into());
    }
    fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
        self.0.insert(f.name().into(), v.to_string());
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        m.target() == "ndarray_offload::remote"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields(BTreeMap::new());
        e.record(&mut f);
        self.0.lock().push(f.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Events {
    /// `(bytes_done, bytes_total)` of the events of `direction` for `key`.
    fn of(&self, key: &str, direction: &str) -> Vec<(u64, u64)> {
        self.0
            .lock()
            .iter()
            .filter(|e| {
                e.get("key").map(String::as_str) == Some(key)
                    && e.get("direction").map(String::as_str) == Some(direction)
            })
            .map(|e| {
                (
                    e["bytes_done"].parse().unwrap(),
                    e["bytes_total"].parse().unwrap(),
                )
            })
            .collect()
    }
}

/// Progress from 0 to the total, increasing, at most once per part and
/// per percent.
fn check_progress(ev: &[(u64, u64)], total: u64, parts: u64) {
    assert!(ev.len() >= 2, "{ev:?}");
    assert!(ev.iter().all(|e| e.1 == total), "{ev:?}");
    assert_eq!(ev[0].0, 0, "{ev:?}");
    assert_eq!(ev.last().unwrap().0, total, "{ev:?}");
    assert!(ev.windows(2).all(|w| w[0].0 < w[1].0), "{ev:?}");
    assert!(ev.len() as u64 <= parts.min(100) + 2, "{ev:?}");
}

#[test]
fn remote_transfers_report_progress() {
    let events = Events::default();
    // While a single dispatcher exists, `tracing` decides whether a
    // callsite is enabled with the dispatcher of the thread that hits it
    // first (another test's thread, without one, would disable it for
    // all): a second dispatcher, never the default of any thread, makes it
    // ask every dispatcher.
    let _second = tracing::Dispatch::new(Events::default());
    let n = nodes();
    // 30 MiB: 6 parts of 5 MiB.
    let a = ArrayD::from_shape_fn(IxDyn(&[30 * 128, 1024]), |i| (i[0] + i[1]) as f64);
    let total = 30 * 128 * 1024 * 8 + 128;
    let small = ArrayD::from_shape_fn(IxDyn(&[1000, 3]), |i| (i[0] + i[1]) as f64);
    tracing::subscriber::with_default(events.clone(), || {
        // One PUT, started on the store's runtime: its progress is still
        // reported on the caller's thread.
        n.writer.insert_durable("small", small.clone()).unwrap();
        n.writer.insert_durable("big", a.clone()).unwrap();
        n.reader.refresh().unwrap();
        let w = n
            .reader
            .read_window::<f64>("big", &[0..1280, 0..1024])
            .unwrap();
        assert_eq!(w.shape(), [1280, 1024]);
        let g = n.reader.get::<f64, IxDyn>("big").unwrap();
        assert_eq!(g.read().unwrap()[[1, 2]], 3.0);
    });
    let header = 128u64;
    check_progress(&events.of("small", "upload"), 1000 * 3 * 8 + header, 1);
    check_progress(&events.of("big", "upload"), total, 6);
    check_progress(&events.of("big", "download"), total, 6);
    // The window: its header, then its 10 MiB (2 parts).
    let w = events.of("big", "window");
    assert_eq!(w[..2], [(0, 4096), (4096, 4096)], "{w:?}");
    check_progress(&w[2..], 1280 * 1024 * 8 + header - 4096, 2);
}

#[test]
fn remote_windows_over_s3() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("windows");
    let (ca, cb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = crate::common::open_remote(&url, ca.path(), moto.options()).unwrap();
    let b = crate::common::open_remote(&url, cb.path(), moto.options()).unwrap();
    // 12 MiB, three parts; C and Fortran order.
    let shape = [1536usize, 1024];
    let c = ArrayD::from_shape_fn(IxDyn(&shape), |i| (i[0] * 1024 + i[1]) as f64);
    let mut f = ArrayD::zeros(IxDyn(&shape).f());
    f.assign(&c);
    a.insert_durable("c", c.clone()).unwrap();
    a.insert_durable("f", f.clone()).unwrap();
    b.refresh().unwrap();
    let mut rng = Rng(11);
    // Of "f", boxes of all but its last column (in its own part).
    for (name, arr, of) in [("c", &c, shape), ("f", &f, [1536, 1023])] {
        for ranges in boxes(&of, &mut rng) {
            let got = b.read_window::<f64>(name, &ranges).unwrap();
            assert_eq!(got, slice(arr, &ranges), "{name} {ranges:?}");
        }
    }
    let s = remote_stats(&b);
    assert_eq!(s.downloads, 0, "{s:?}");
    // Replaced: windows read the version the handle knows (here whole in
    // its window cache) until it refreshes.
    let c2 = c.mapv(|v| -v);
    a.insert_durable("c", c2.clone()).unwrap();
    let ranges = [100..110, 0..1024];
    assert_eq!(
        b.read_window::<f64>("c", &ranges).unwrap(),
        slice(&c, &ranges)
    );
    b.refresh().unwrap();
    assert_eq!(
        b.read_window::<f64>("c", &ranges).unwrap(),
        slice(&c2, &ranges)
    );
    // Replaced, and the old data object collected: a window of bytes not
    // fetched yet reads the entry's metadata again, and the new version
    // whole.
    let f2 = f.mapv(|v| v + 0.5);
    a.insert_durable("f", f2.clone()).unwrap();
    a.gc_with_grace(Duration::ZERO).unwrap();
    let unfetched = [0..1536, 1023..1024];
    let got = b.read_window::<f64>("f", &unfetched).unwrap();
    assert_eq!(got, slice(&f2, &unfetched));
}

/// The files of the window cache of the handle whose cache directory is
/// `dir`, and the bytes they take on disk (allocated blocks).
fn window_files(dir: &std::path::Path) -> (Vec<std::path::PathBuf>, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    let mut bytes = 0;
    let Ok(handles) = std::fs::read_dir(dir.join(".ndoffload/windows")) else {
        return (files, 0);
    };
    for h in handles {
        for f in std::fs::read_dir(h.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            if let Ok(m) = std::fs::symlink_metadata(&f) {
                if m.is_file() {
                    bytes += m.blocks() * 512;
                }
            }
            files.push(f);
        }
    }
    (files, bytes)
}

/// Bytes the regular files of a cache directory take on disk: the
/// entries' `.npy` files and the window cache's.
fn cache_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let top: u64 = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".npy"))
        .filter_map(|e| std::fs::symlink_metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum();
    top + window_files(dir).1
}

/// Views (`map_window`) keep the version they mapped, whole: while more
/// windows of the same entry are fetched into the same file (over, beside
/// and far from the bytes they show), after another handle replaced the
/// entry and `gc` deleted the old data object, after a full `get`, and
/// after their handle is dropped (its window cache removed). C and
/// Fortran order, and replaced by the other order. On a local store, a
/// view of the mapped file outlives a replace by another handle.
#[test]
fn remote_views_outlive_more_windows_replaces_and_their_handle() {
    // Views can be sent to and shared with other threads.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ndarray_offload::remote::WindowView<f64>>();
    for fortran in [false, true] {
        let Nodes {
            store,
            writer,
            reader,
            _dirs,
        } = nodes();
        let shape = [400usize, 1024];
        writer
            .insert_durable("g", generation(0, &shape, fortran))
            .unwrap();
        reader.refresh().unwrap();
        let g0 = generation(0, &shape, false);
        let first = vec![10..20, 0..1024];
        let v = reader.map_window::<i64>("g", &first).unwrap();
        assert!(v.is_mapped());
        let mut views = vec![(first.clone(), v)];
        let (files, _) = window_files(reader.dir());
        assert_eq!(files.len(), 1);
        for r in [
            vec![0..100, 0..1024],
            vec![15..30, 100..900],
            vec![300..400, 0..1024],
            vec![5..395, 512..513],
            vec![0..400, 0..1024],
        ] {
            let w = reader.read_window::<i64>("g", &r).unwrap();
            assert_eq!(w, slice(&g0, &r), "{r:?}");
            views.push((r.clone(), reader.map_window::<i64>("g", &r).unwrap()));
            for (rr, v) in &views {
                assert_eq!(v.view(), slice(&g0, rr).view(), "{rr:?} after {r:?}");
            }
        }
        // One file for the version: the windows filled it.
        assert_eq!(window_files(reader.dir()).0, files);
        // Everything was fetched once: the last window fetched nothing.
        store.take();
        let all = vec![0..400, 0..1024];
        let _again = reader.map_window::<i64>("g", &all).unwrap();
        assert_eq!(store.take(), (0, 0));

        // Another handle replaces the entry (in the other order) and the
        // old data object is deleted.
        writer
            .insert_durable("g", generation(1, &shape, !fortran))
            .unwrap();
        writer.gc_with_grace(Duration::ZERO).unwrap();
        reader.refresh().unwrap();
        let g1 = generation(1, &shape, false);
        let new = reader.map_window::<i64>("g", &first).unwrap();
        assert_eq!(new.view(), slice(&g1, &first).view());
        for (rr, v) in &views {
            assert_eq!(v.view(), slice(&g0, rr).view(), "old version, {rr:?}");
        }
        // A new version, a new file; the old one stays while views of it
        // live.
        let now = window_files(reader.dir()).0;
        assert_eq!(now.len(), 2);
        assert!(now.contains(&files[0]));
        // A full get of the new version.
        let whole = reader.get::<i64, IxDyn>("g").unwrap();
        assert_eq!(whole.read().unwrap().view(), g1.view());
        drop(whole);
        for (rr, v) in &views {
            assert_eq!(v.view(), slice(&g0, rr).view(), "old version, {rr:?}");
        }
        // The handle dropped: its window cache is removed, its views read.
        let dir = reader.dir().to_path_buf();
        drop(reader);
        assert!(window_files(&dir).0.is_empty());
        for (rr, v) in &views {
            assert_eq!(v.view(), slice(&g0, rr).view(), "old version, {rr:?}");
        }
        assert_eq!(new.view(), slice(&g1, &first).view());
    }

    // A local store: a view maps the entry's file; another handle
    // replaces the entry (a new file renamed over it).
    let d = tempfile::tempdir().unwrap();
    let a = DiskBackedStore::open(d.path()).unwrap();
    let b = DiskBackedStore::open(d.path()).unwrap();
    let shape = [300usize, 50];
    a.insert_durable("g", generation(0, &shape, true)).unwrap();
    a.offload("g").unwrap();
    let r = vec![100..200, 10..40];
    let v = a.map_window::<i64>("g", &r).unwrap();
    assert!(v.is_mapped());
    b.refresh().unwrap();
    b.insert_durable("g", generation(1, &shape, false)).unwrap();
    a.refresh().unwrap();
    assert_eq!(
        a.read_window::<i64>("g", &r).unwrap(),
        slice(&generation(1, &shape, false), &r)
    );
    assert_eq!(v.view(), slice(&generation(0, &shape, false), &r).view());
}

/// A full `get` after windows copies the ranges the window cache holds
/// of the same version and fetches only the rest: after windows covering
/// X % of the entry (X varied, C and Fortran order, views and owned
/// windows, a writable and a read-only handle) it fetches (100 - X) % of
/// the object, and its value is whole (its CRC-32 checked).
#[test]
fn remote_full_get_after_windows_fetches_only_the_rest() {
    let store = Arc::new(Counting::default());
    let w = tempfile::tempdir().unwrap();
    let writer = open_tiered_on(URL, store.clone(), w.path(), opts(), None).unwrap();
    let (rows, cols) = (2000usize, 1024usize);
    let c = ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |i| (i[0] * cols + i[1]) as f64);
    let mut f = ArrayD::zeros(IxDyn(&[rows, cols]).f());
    f.assign(&c);
    writer.insert_durable("c", c.clone()).unwrap();
    writer.insert_durable("f", f.clone()).unwrap();
    let object = (rows * cols * 8 + 128) as u64;
    // (percent of the outer axis in storage order, Fortran order, views,
    // read-only)
    for (pct, fortran, views, ro) in [
        (0usize, false, false, false),
        (1, false, true, false),
        (10, true, false, false),
        (40, false, true, true),
        (75, true, true, false),
        (99, false, false, true),
        (100, true, false, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let builder = tiered_on(
            StoreBuilder::new(dir.path()).read_only(ro),
            URL,
            store.clone(),
            opts(),
        );
        let reader = builder.open().unwrap();
        let (name, a) = if fortran { ("f", &f) } else { ("c", &c) };
        let outer = if fortran { cols } else { rows };
        // Three slabs of the outer axis (in storage order) in different
        // places, X % of it in all.
        // Slab k is at the start of the k-th third of the axis; the
        // larger slabs in the larger thirds (the last ones).
        let total = outer * pct / 100;
        let mut covered = 0;
        let mut slabs = Vec::new();
        for k in 0..3 {
            let n = total / 3 + usize::from(k >= 3 - total % 3);
            if n > 0 {
                let start = k * outer / 3;
                assert!(start + n <= (k + 1) * outer / 3);
                slabs.push(start..start + n);
                covered += n;
            }
        }
        assert_eq!(covered, total);
        store.take();
        let mut kept = Vec::new();
        for s in &slabs {
            let ranges = if fortran {
                vec![0..rows, s.clone()]
            } else {
                vec![s.clone(), 0..cols]
            };
            if views {
                let v = reader.map_window::<f64>(name, &ranges).unwrap();
                assert_eq!(v.view(), slice(a, &ranges).view());
                kept.push(v);
            } else {
                let got = reader.read_window::<f64>(name, &ranges).unwrap();
                assert_eq!(got, slice(a, &ranges));
            }
        }
        let held = remote_stats(&reader).window_bytes;
        let row_bytes = (if fortran { rows } else { cols } * 8) as u64;
        if pct > 0 {
            // The slabs, and the header's first 4 KiB (perhaps in a slab).
            let slabs = covered as u64 * row_bytes;
            assert!(held >= slabs && held <= slabs + 4096, "{pct}%: {held}");
        }
        let (_, windows) = store.take();
        assert_eq!(windows, held);
        let before = remote_stats(&reader);
        let g = reader.get::<f64, IxDyn>(name).unwrap();
        assert_eq!(g.read().unwrap().view(), a.view(), "{pct}%");
        let (_, fetched) = store.take();
        let after = remote_stats(&reader);
        assert_eq!(fetched, object - held, "{pct}% of {name}");
        assert_eq!(after.bytes_down - before.bytes_down, fetched);
        assert_eq!(after.bytes_reused - before.bytes_reused, held);
        assert_eq!(after.downloads, before.downloads + 1);
        let share = fetched as f64 / object as f64;
        let want = (outer - covered) as f64 / outer as f64;
        assert!((share - want).abs() < 0.001, "{pct}%: fetched {share}");
        eprintln!(
            "full get after windows of {pct}% of {name}: fetched {:.2}% of the object",
            share * 100.0
        );
        // A writable handle's window cache of the entry goes with the
        // download (the cache directory holds it whole); views kept read.
        if !ro {
            assert_eq!(after.window_bytes, 0);
        }
        for (v, s) in kept.iter().zip(&slabs) {
            let ranges = if fortran {
                vec![0..rows, s.clone()]
            } else {
                vec![s.clone(), 0..cols]
            };
            assert_eq!(v.view(), slice(a, &ranges).view());
        }
    }
}

/// The window cache counts against the disk budget, least recently used
/// first with the cached copies: the files of a cache directory stay
/// within it (windows dropped and fetched again), a view keeps its file
/// while it lives, and a staged write is never dropped.
#[test]
fn remote_window_cache_counts_against_the_disk_budget() {
    let store = Arc::new(Counting::default());
    let w = tempfile::tempdir().unwrap();
    let writer = open_tiered_on(URL, store.clone(), w.path(), opts(), None).unwrap();
    // Six entries of 2 MiB.
    let shape = [256usize, 1024];
    let entry = |k: usize| {
        ArrayD::from_shape_fn(IxDyn(&shape), |i| {
            (k * 1_000_000 + i[0] * 1024 + i[1]) as f64
        })
    };
    for k in 0..6 {
        writer.insert_durable(format!("e{k}"), entry(k)).unwrap();
    }
    let budget = 3u64 << 20;
    let slack = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let reader = tiered_on(
        // The memory budget spills the staged write below.
        StoreBuilder::new(dir.path())
            .disk_budget(budget)
            .memory_budget(1 << 20),
        URL,
        store.clone(),
        opts(),
    )
    .open()
    .unwrap();
    // Windows of 1 MiB of each entry, twice round: at most three fit.
    let half = vec![64..192, 0..1024];
    for round in 0..2 {
        for k in 0..6 {
            let got = reader.read_window::<f64>(format!("e{k}"), &half).unwrap();
            assert_eq!(got, slice(&entry(k), &half), "round {round} e{k}");
            let on_disk = cache_bytes(reader.dir());
            assert!(on_disk <= budget + slack, "round {round} e{k}: {on_disk}");
        }
    }
    let s = remote_stats(&reader);
    assert!(s.window_evictions >= 9, "{s:?}");
    assert!(s.window_bytes <= budget, "{s:?}");
    let st = reader.stats();
    assert!(st.bytes_in_files.unwrap() <= budget, "{st:?}");
    // The second round fetched again what the first dropped.
    assert!(s.bytes_down >= 12 * (1 << 20), "{s:?}");

    // Cached copies and windows in one order: a full get (2 MiB), then
    // windows; the files stay within the budget.
    let g = reader.get::<f64, IxDyn>("e0").unwrap();
    assert_eq!(g.read().unwrap().view(), entry(0).view());
    drop(g);
    assert!(cache_bytes(reader.dir()) <= budget + slack);
    for k in 1..4 {
        let got = reader.read_window::<f64>(format!("e{k}"), &half).unwrap();
        assert_eq!(got, slice(&entry(k), &half));
        assert!(cache_bytes(reader.dir()) <= budget + slack, "e{k}");
    }
    assert!(
        remote_stats(&reader).evictions >= 1,
        "the copy of e0 was dropped"
    );

    // A view keeps its file while it lives, over the budget; once it is
    // dropped, the next window brings the files within the budget.
    let v = reader.map_window::<f64>("e4", &half).unwrap();
    // The file of e4's window: its element [64, 0] is 4,065,536.
    let of_e4 = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        use std::os::unix::fs::FileExt;
        window_files(dir)
            .0
            .into_iter()
            .filter(|f| {
                let mut b = [0u8; 8];
                std::fs::File::open(f)
                    .and_then(|h| h.read_exact_at(&mut b, 128 + 64 * 8192))
                    .is_ok_and(|()| f64::from_le_bytes(b) == 4_065_536.0)
            })
            .collect()
    };
    let pinned = of_e4(reader.dir());
    assert_eq!(pinned.len(), 1);
    for k in [5, 1, 2, 3] {
        let got = reader
            .read_window::<f64>(format!("e{k}"), &[0..256, 0..1024])
            .unwrap();
        assert_eq!(got, entry(k));
        assert_eq!(v.view(), slice(&entry(4), &half).view());
        assert_eq!(of_e4(reader.dir()), pinned, "e{k}");
    }
    drop(v);
    let got = reader.read_window::<f64>("e1", &half).unwrap();
    assert_eq!(got, slice(&entry(1), &half));
    assert!(cache_bytes(reader.dir()) <= budget + slack);

    // A staged write (spilled, not flushed) is never dropped, whatever
    // the windows need.
    let staged = ArrayD::from_shape_fn(IxDyn(&[192, 1024]), |i| -((i[0] * 1024 + i[1]) as f64));
    reader.insert("staged", staged.clone()).unwrap();
    // Spilled by the memory budget: staged in the cache directory.
    assert_eq!(reader.pending_writes(), ["staged"]);
    for round in 0..2 {
        for k in 0..6 {
            let got = reader.read_window::<f64>(format!("e{k}"), &half).unwrap();
            assert_eq!(got, slice(&entry(k), &half), "round {round} e{k}");
            assert!(dir.path().join("staged.npy").is_file());
        }
    }
    assert_eq!(reader.pending_writes(), ["staged"]);
    reader.flush().unwrap();
    writer.refresh().unwrap();
    let got = writer.get::<f64, IxDyn>("staged").unwrap();
    assert_eq!(got.read().unwrap().view(), staged.view());
}

/// Something else changes the window cache's file of an entry: replaced
/// by a FIFO, by a symlink to a FIFO, by a directory, removed, truncated,
/// emptied, overwritten with other bytes. Windows, views and a full `get`
/// then give the right values or a typed error, and never hang (a FIFO
/// opened would) or fault; a full `get` is always right (its CRC-32 finds
/// changed bytes: the whole object is fetched again).
#[test]
fn remote_window_cache_files_changed_by_something_else() {
    let store = Arc::new(Counting::default());
    let w = tempfile::tempdir().unwrap();
    let writer = open_tiered_on(URL, store.clone(), w.path(), opts(), None).unwrap();
    let shape = [512usize, 1024];
    let c = ArrayD::from_shape_fn(IxDyn(&shape), |i| (i[0] * 1024 + i[1]) as f64);
    writer.insert_durable("c", c.clone()).unwrap();
    let c = Arc::new(c);
    for case in [
        "fifo",
        "symlink to a fifo",
        "directory",
        "removed",
        "truncated",
        "emptied",
        "other bytes",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let reader = open_tiered_on(URL, store.clone(), dir.path(), opts(), None).unwrap();
        let first = vec![100..200, 0..1024];
        assert_eq!(
            reader.read_window::<f64>("c", &first).unwrap(),
            slice(&c, &first)
        );
        let (files, _) = window_files(reader.dir());
        assert_eq!(files.len(), 1);
        let file = &files[0];
        let fifo = dir.path().join("a.fifo");
        let mkfifo = |p: &std::path::Path| {
            let ok = std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        };
        match case {
            "fifo" => {
                mkfifo(&fifo);
                std::fs::rename(&fifo, file).unwrap();
            }
            "symlink to a fifo" => {
                mkfifo(&fifo);
                std::fs::remove_file(file).unwrap();
                std::os::unix::fs::symlink(&fifo, file).unwrap();
            }
            "directory" => {
                std::fs::remove_file(file).unwrap();
                std::fs::create_dir(file).unwrap();
            }
            "removed" => std::fs::remove_file(file).unwrap(),
            "truncated" => {
                let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
                f.set_len(128 * 1024 * 8).unwrap();
            }
            "emptied" => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(file)
                    .unwrap();
            }
            "other bytes" => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
                f.write_all_at(&[0x55; 4096], 128 + 150 * 1024 * 8).unwrap();
            }
            _ => unreachable!(),
        }
        // Run with a watchdog: a hang fails the test instead of stalling it.
        let (tx, rx) = std::sync::mpsc::channel();
        let (c2, case2) = (c.clone(), case);
        let job = std::thread::spawn(move || {
            let exact = case2 != "other bytes";
            let mut errors = Vec::new();
            for ranges in [first.clone(), vec![300..310, 0..1024], vec![0..512, 7..9]] {
                match reader.read_window::<f64>("c", &ranges) {
                    Ok(w) if exact => assert_eq!(w, slice(&c2, &ranges), "{case2} {ranges:?}"),
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
                match reader.map_window::<f64>("c", &ranges) {
                    Ok(v) if exact => {
                        assert_eq!(v.view(), slice(&c2, &ranges).view(), "{case2} {ranges:?}")
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let g = reader.get::<f64, IxDyn>("c").unwrap();
            assert_eq!(g.read().unwrap().view(), c2.view(), "{case2}");
            drop(g);
            drop(reader);
            let _ = tx.send(errors);
        });
        let errors = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(e) => e,
            Err(_) => {
                if job.is_finished() {
                    job.join().unwrap();
                }
                panic!("{case}: no answer in 120 s");
            }
        };
        job.join().unwrap();
        // The file's descriptor is the copy's: nothing at its path is
        // opened, so no error either; a damaged file is replaced by a new
        // copy, fetched again.
        assert!(errors.is_empty(), "{case}: {errors:?}");
        eprintln!("window cache file {case}: every window, view and the full get right");
    }
}

#[test]
#[ignore = "run in a child process by remote_views_hold_their_version_while_another_process_replaces"]
fn remote_view_replacer_child() {
    let (Ok(url), Ok(cache), Ok(secs), Ok(log)) = (
        std::env::var("NDOFFLOAD_REMOTE_URL"),
        std::env::var("NDOFFLOAD_REMOTE_CACHE"),
        std::env::var("NDOFFLOAD_REMOTE_SECS"),
        std::env::var("NDOFFLOAD_REMOTE_LOG"),
    ) else {
        return;
    };
    let store = StoreBuilder::new(&cache)
        .remote_with(&url, opts())
        .open()
        .unwrap();
    let secs: u64 = secs.parse().unwrap();
    let started = std::time::Instant::now();
    let mut g = 0i64;
    while started.elapsed() < Duration::from_secs(secs) {
        g += 1;
        store
            .insert_durable("g", generation(g, &VIEWED, g % 2 == 1))
            .unwrap();
        if g % 3 == 0 {
            store.gc_with_grace(Duration::ZERO).unwrap();
        }
        std::fs::write(&log, g.to_string()).unwrap();
    }
}

/// The shape of the entry `remote_views_hold_their_version_while_another_process_replaces`
/// replaces.
const VIEWED: [usize; 3] = [64, 300, 3];

/// Views held while another process replaces the entry (alternating C
/// and Fortran order) and collects the old data objects: each view,
/// taken of the version the reader knows, stays whole and of one
/// generation while later views are taken and the entry changes, until it
/// is dropped (up to 16 held at once).
#[test]
fn remote_views_hold_their_version_while_another_process_replaces() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("views");
    let tmp = tempfile::tempdir().unwrap();
    let writer = crate::common::open_remote(&url, tmp.path().join("w"), moto.options()).unwrap();
    writer
        .insert_durable("g", generation(0, &VIEWED, false))
        .unwrap();
    let reader = crate::common::open_remote(&url, tmp.path().join("r"), moto.options()).unwrap();
    let secs: u64 = std::env::var("NDOFFLOAD_REMOTE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let log = tmp.path().join("log");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "remote_windows::remote_view_replacer_child",
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(tmp.path().join("err")).unwrap());
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    cmd.env("NDOFFLOAD_REMOTE_URL", &url)
        .env("NDOFFLOAD_REMOTE_CACHE", tmp.path().join("c"))
        .env("NDOFFLOAD_REMOTE_SECS", secs.to_string())
        .env("NDOFFLOAD_REMOTE_LOG", &log);
    let mut child = cmd.spawn().unwrap();
    let mut rng = Rng(23);
    let mut held = std::collections::VecDeque::new();
    let mut seen = std::collections::BTreeSet::new();
    let (mut views, mut gone) = (0, 0);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(secs + 120));
        if rng.below(3) == 0 {
            reader.refresh().unwrap();
        }
        let ranges: Vec<Range<usize>> = VIEWED
            .iter()
            .map(|&n| {
                let a = rng.below(n);
                a..(a + 1 + rng.below(n - a))
            })
            .collect();
        let v = match reader.map_window::<i64>("g", &ranges) {
            Ok(v) => v,
            // Collected twice in a row: a typed error, never a mixed view.
            Err(e) if e.is_not_found() && matches!(e, Error::Remote { .. }) => {
                gone += 1;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(v.is_mapped());
        views += 1;
        let g = v.iter().next().unwrap() / 1_000_000_000;
        seen.insert(g);
        held.push_back((g, ranges, v));
        if held.len() > 16 {
            held.pop_front();
        }
        for (g, r, v) in &held {
            let want = slice(&generation(*g, &VIEWED, false), r);
            assert_eq!(v.view(), want.view(), "view {r:?} of generation {g}");
        }
    };
    let err = std::fs::read_to_string(tmp.path().join("err")).unwrap_or_default();
    assert!(status.success(), "{err}");
    let gens: i64 = std::fs::read_to_string(&log).unwrap().parse().unwrap();
    for (g, r, v) in &held {
        let want = slice(&generation(*g, &VIEWED, false), r);
        assert_eq!(v.view(), want.view(), "view {r:?} of generation {g}");
    }
    assert!(gens >= 3 && seen.len() >= 3, "{gens} {seen:?}");
    assert!(
        gone * 10 <= views,
        "{gone} of {views} views found no version"
    );
    eprintln!(
        "views: {views} views while another process wrote {gens} generations, {} seen, {gone} collected twice",
        seen.len()
    );
}
