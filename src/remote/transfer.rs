//! Moving data objects: uploads streamed from a local file (one PUT for a
//! small object, a multipart upload with parallel parts for a large one)
//! and downloads by parallel ranged GETs written straight into a local file.
//!
//! At most `concurrency` parts of `part_size` bytes are in memory at once,
//! whatever the object's size.
//!
//! Long transfers report their progress as `tracing` events (see
//! [`Progress`]).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, WriteMultipart};

use tokio::sync::Semaphore;

use crate::error::{Error, IoContext, Result};

/// Sizes of transfers.
#[derive(Debug, Clone, Copy)]
pub struct TransferOptions {
    /// Bytes per multipart part and per ranged GET (at least 5 MiB, S3's
    /// smallest part).
    pub part_size: usize,
    /// Parts or ranges in flight at once.
    pub concurrency: usize,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            part_size: 8 << 20,
            concurrency: 4,
        }
    }
}

impl TransferOptions {
    fn part(&self) -> usize {
        self.part_size.max(5 << 20)
    }
    fn conc(&self) -> usize {
        self.concurrency.max(1)
    }
    /// The slots of the parts an upload from memory may hold at once
    /// (`concurrency` for one entry).
    pub(crate) fn slots(&self) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(self.conc()))
    }
}

/// The target of the progress events of transfers.
pub(crate) const PROGRESS_TARGET: &str = "ndarray_offload::remote";

/// Progress of one transfer, reported as `tracing` events at DEBUG level,
/// target `ndarray_offload::remote`, message `"transfer progress"`, with
/// the fields `key` (the entry), `direction` (`"upload"`, `"download"` or
/// `"window"`), `bytes_done` and `bytes_total`: one when the transfer
/// starts (`bytes_done = 0`), then at most one per part and per whole
/// percent of `bytes_total` (at most about 100 per transfer whatever its
/// size), and one when the last byte is done.
pub(crate) struct Progress {
    key: String,
    direction: &'static str,
    total: u64,
    done: AtomicU64,
    /// The last percentage reported.
    pct: AtomicU64,
}

impl Progress {
    /// A transfer of `total` bytes of the entry `key` starts (reported).
    pub(crate) fn start(key: &str, direction: &'static str, total: u64) -> Progress {
        let p = Progress {
            key: key.to_string(),
            direction,
            total,
            done: AtomicU64::new(0),
            pct: AtomicU64::new(0),
        };
        p.report(0);
        p
    }

    fn report(&self, done: u64) {
        tracing::debug!(
            target: PROGRESS_TARGET,
            key = %self.key,
            direction = self.direction,
            bytes_done = done,
            bytes_total = self.total,
            "transfer progress"
        );
    }

    /// `n` more bytes are done: reported when a new whole percent of the
    /// total is reached, or the last byte.
    pub(crate) fn advance(&self, n: u64) {
        if n == 0 {
            return;
        }
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let pct = (u128::from(done) * 100 / u128::from(self.total.max(1))) as u64;
        let last = done >= self.total;
        let before = self
            .pct
            .fetch_max(if last { 101 } else { pct }, Ordering::Relaxed);
        if (last && before <= 100) || (!last && pct > before) {
            self.report(done.min(self.total));
        }
    }
}

/// Reads `len` bytes at `off` of `file` on a blocking thread, with their
/// CRC-32.
async fn read_chunk(
    file: Arc<File>,
    path: Arc<FsPath>,
    off: u64,
    len: usize,
) -> Result<(Bytes, crc32fast::Hasher)> {
    let job = tokio::task::spawn_blocking(move || -> Result<(Bytes, crc32fast::Hasher)> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, off).ctx("read", &path)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&buf);
        Ok((Bytes::from(buf), h))
    });
    job.await.map_err(|e| Error::Io {
        path: std::path::PathBuf::new(),
        op: "read",
        source: std::io::Error::other(e),
    })?
}

/// Uploads the first `size` bytes of `file` (named `local` in errors) to
/// `dest`. Returns the CRC-32 of what was sent. Object-store errors come
/// back as `Err(Ok(e))` so the caller can name the entry; local errors as
/// `Err(Err(e))`.
pub(crate) async fn upload_file(
    store: &dyn ObjectStore,
    file: Arc<File>,
    local: &FsPath,
    size: u64,
    dest: &Path,
    opts: TransferOptions,
    progress: &Progress,
) -> std::result::Result<u32, UploadError> {
    let part = opts.part();
    let local: Arc<FsPath> = Arc::from(local);
    if size <= part as u64 {
        let (bytes, h) = read_chunk(file, local, 0, size as usize)
            .await
            .map_err(UploadError::Local)?;
        store
            .put_opts(dest, bytes.into(), PutOptions::default())
            .await
            .map_err(UploadError::Remote)?;
        progress.advance(size);
        return Ok(h.finalize());
    }
    let upload = store
        .put_multipart_opts(dest, PutMultipartOptions::default())
        .await
        .map_err(UploadError::Remote)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
    let mut crc = crc32fast::Hasher::new();
    let mut off = 0u64;
    // The bytes of the parts handed to the upload, reported once the
    // upload has room for the next part (the parts before it are sent).
    let mut handed = 0u64;
    // Read one part ahead while earlier parts are in flight.
    let mut next = Some(tokio::spawn(read_chunk(
        file.clone(),
        local.clone(),
        0,
        part.min(size as usize),
    )));
    while let Some(job) = next.take() {
        let got = match job.await {
            Ok(r) => r,
            Err(e) => Err(Error::Io {
                path: local.to_path_buf(),
                op: "read",
                source: std::io::Error::other(e),
            }),
        };
        let (bytes, h) = match got {
            Ok(x) => x,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(UploadError::Local(e));
            }
        };
        off += bytes.len() as u64;
        crc.combine(&h);
        if off < size {
            let len = (size - off).min(part as u64) as usize;
            next = Some(tokio::spawn(read_chunk(
                file.clone(),
                local.clone(),
                off,
                len,
            )));
        }
        let inflight = opts.conc().saturating_sub(1).max(1);
        if let Err(e) = writer.wait_for_capacity(inflight).await {
            let _ = writer.abort().await;
            return Err(UploadError::Remote(e));
        }
        // At most `inflight` parts are still being sent.
        let sent = off
            .saturating_sub(bytes.len() as u64)
            .saturating_sub(inflight as u64 * part as u64);
        if sent > handed {
            progress.advance(sent - handed);
            handed = sent;
        }
        writer.put(bytes);
    }
    writer.finish().await.map_err(UploadError::Remote)?;
    progress.advance(size - handed);
    Ok(crc.finalize())
}

/// `len` bytes at `off` of the file `head` followed by `body` (the bytes
/// of an object held in memory), copied into one buffer, with their CRC-32.
pub(crate) fn copy_part(
    head: &[u8],
    body: &[u8],
    off: usize,
    len: usize,
) -> (Bytes, crc32fast::Hasher) {
    let mut buf = Vec::with_capacity(len);
    let end = off + len;
    if off < head.len() {
        buf.extend_from_slice(&head[off..end.min(head.len())]);
    }
    if end > head.len() {
        let from = off.saturating_sub(head.len());
        buf.extend_from_slice(&body[from..end - head.len()]);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&buf);
    (Bytes::from(buf), h)
}

/// Uploads the object made of `head` followed by `body` (held in memory:
/// an array's `.npy` header and its elements) to `dest`: one PUT when it
/// fits in one part, else a multipart upload whose parts are copied out
/// of the memory one at a time, each holding one of `slots` until it is
/// sent (so at most that many parts are in memory, whatever the size; a
/// batch's uploads share their slots). Returns the CRC-32 of what was
/// sent. Stops (aborting the multipart upload) when `cancel` is set
/// before a part, with a local error.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn upload_bytes(
    store: &Arc<dyn ObjectStore>,
    head: &[u8],
    body: &[u8],
    dest: &Path,
    opts: TransferOptions,
    slots: &Arc<Semaphore>,
    cancel: &std::sync::atomic::AtomicBool,
    progress: &Progress,
) -> std::result::Result<u32, UploadError> {
    let part = opts.part();
    let size = head.len() + body.len();
    let cancelled = || {
        UploadError::Local(Error::Io {
            path: std::path::PathBuf::from(dest.as_ref()),
            op: "upload",
            source: std::io::Error::other("the local publish of the same write failed"),
        })
    };
    let closed = |e: tokio::sync::AcquireError| {
        UploadError::Local(Error::Io {
            path: std::path::PathBuf::from(dest.as_ref()),
            op: "upload",
            source: std::io::Error::other(e),
        })
    };
    if size <= part {
        let _slot = slots.acquire().await.map_err(closed)?;
        if cancel.load(Ordering::Acquire) {
            return Err(cancelled());
        }
        let (bytes, h) = copy_part(head, body, 0, size);
        store
            .put_opts(dest, bytes.into(), PutOptions::default())
            .await
            .map_err(UploadError::Remote)?;
        progress.advance(size as u64);
        return Ok(h.finalize());
    }
    let mut upload = store
        .put_multipart_opts(dest, PutMultipartOptions::default())
        .await
        .map_err(UploadError::Remote)?;
    let mut crc = crc32fast::Hasher::new();
    let mut parts: tokio::task::JoinSet<std::result::Result<u64, object_store::Error>> =
        tokio::task::JoinSet::new();
    let mut failed: Option<UploadError> = None;
    let mut off = 0;
    // Parts sent: reported as they are done.
    let done = |r: std::result::Result<
        std::result::Result<u64, object_store::Error>,
        tokio::task::JoinError,
    >|
     -> std::result::Result<(), UploadError> {
        match r {
            Ok(Ok(n)) => {
                progress.advance(n);
                Ok(())
            }
            Ok(Err(e)) => Err(UploadError::Remote(e)),
            Err(e) => Err(UploadError::Local(Error::Io {
                path: std::path::PathBuf::from(dest.as_ref()),
                op: "upload",
                source: std::io::Error::other(e),
            })),
        }
    };
    while off < size {
        let slot = match slots.clone().acquire_owned().await {
            Ok(s) => s,
            Err(e) => {
                failed = Some(closed(e));
                break;
            }
        };
        while let Some(r) = parts.try_join_next() {
            if let Err(e) = done(r) {
                failed.get_or_insert(e);
            }
        }
        if failed.is_some() {
            break;
        }
        if cancel.load(Ordering::Acquire) {
            failed = Some(cancelled());
            break;
        }
        let len = part.min(size - off);
        let (bytes, h) = copy_part(head, body, off, len);
        crc.combine(&h);
        off += len;
        let send = upload.put_part(bytes.into());
        parts.spawn(async move {
            let r = send.await;
            drop(slot);
            r.map(|()| len as u64)
        });
    }
    while let Some(r) = parts.join_next().await {
        if let Err(e) = done(r) {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        let _ = upload.abort().await;
        return Err(e);
    }
    upload.complete().await.map_err(UploadError::Remote)?;
    Ok(crc.finalize())
}

/// Why an upload failed.
#[derive(Debug)]
pub(crate) enum UploadError {
    /// The object store refused or could not be reached.
    Remote(object_store::Error),
    /// Reading the local file failed.
    Local(Error),
}

/// Byte ranges of an object another local file holds already (a window
/// cache's copy), at the same offsets.
pub(crate) struct Held {
    pub(crate) file: Arc<File>,
    pub(crate) path: std::path::PathBuf,
    /// Sorted, disjoint.
    pub(crate) ranges: Vec<Range<u64>>,
}

/// What a fetch of byte ranges into a copy does: the requests (runs
/// closer than a gap coalesced) and the parts of them to write (only
/// the bytes the copy does not hold yet).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub(crate) requests: Vec<Range<u64>>,
    pub(crate) writes: Vec<Range<u64>>,
}

/// Where a piece of a download comes from: a held file (and its name), or
/// the object store (`None`).
type Source = Option<(Arc<File>, Arc<FsPath>)>;

/// What a download did: the CRC-32 of the object, and the bytes fetched
/// and copied from [`Held`] ranges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downloaded {
    pub(crate) crc: u32,
    pub(crate) fetched: u64,
    pub(crate) reused: u64,
}

/// Downloads `src` (of `size` bytes) into `file` (named `local` in errors)
/// by ranged GETs, `concurrency` at a time; the ranges `held` holds are
/// copied from it instead. The CRC-32 covers every byte, fetched or
/// copied.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn download_to_file(
    store: Arc<dyn ObjectStore>,
    src: &Path,
    size: u64,
    file: Arc<File>,
    local: &FsPath,
    held: Option<&Held>,
    opts: TransferOptions,
    progress: &Progress,
) -> std::result::Result<Downloaded, UploadError> {
    let part = opts.part() as u64;
    let local: Arc<FsPath> = Arc::from(local);
    file.set_len(size)
        .ctx("resize", &local)
        .map_err(UploadError::Local)?;
    // The object in order, as pieces of at most a part: copied (`Some`:
    // from the held file) or fetched.
    let mut pieces: Vec<(Range<u64>, Source)> = Vec::new();
    let mut at = 0u64;
    let mut push = |r: Range<u64>, from: Source| {
        let n = (r.end - r.start).div_ceil(part);
        for i in 0..n {
            let p = r.start + i * part..(r.start + (i + 1) * part).min(r.end);
            pieces.push((p, from.clone()));
        }
    };
    if let Some(h) = held {
        let path: Arc<FsPath> = Arc::from(h.path.as_path());
        for r in &h.ranges {
            let r = r.start.min(size)..r.end.min(size);
            if r.start > at {
                push(at..r.start, None);
            }
            if r.end > r.start.max(at) {
                push(r.start.max(at)..r.end, Some((h.file.clone(), path.clone())));
                at = r.end;
            }
        }
    }
    if at < size {
        push(at..size, None);
    }
    let jobs = futures::stream::iter(pieces.into_iter().map(|(r, from)| {
        let store = store.clone();
        let src = src.clone();
        let file = file.clone();
        let local = local.clone();
        async move {
            let want = r.end - r.start;
            let start = r.start;
            let (bytes, copied) = match from {
                Some((held, held_path)) => {
                    let job = tokio::task::spawn_blocking(move || -> Result<Bytes> {
                        let mut buf = vec![0u8; want as usize];
                        held.read_exact_at(&mut buf, start)
                            .ctx("read", &held_path)?;
                        Ok(Bytes::from(buf))
                    });
                    let bytes = match job.await {
                        Ok(r) => r.map_err(UploadError::Local)?,
                        Err(e) => {
                            return Err(UploadError::Local(Error::Io {
                                path: local.to_path_buf(),
                                op: "read",
                                source: std::io::Error::other(e),
                            }))
                        }
                    };
                    (bytes, true)
                }
                None => (
                    store
                        .get_range(&src, r)
                        .await
                        .map_err(UploadError::Remote)?,
                    false,
                ),
            };
            if bytes.len() as u64 != want {
                return Err(UploadError::Local(Error::Truncated {
                    path: local.to_path_buf(),
                    expected: want,
                    actual: bytes.len() as u64,
                }));
            }
            let path = local.clone();
            let job = tokio::task::spawn_blocking(move || -> Result<crc32fast::Hasher> {
                file.write_all_at(&bytes, start).ctx("write", &path)?;
                let mut h = crc32fast::Hasher::new();
                h.update(&bytes);
                Ok(h)
            });
            match job.await {
                Ok(r) => {
                    progress.advance(want);
                    r.map(|h| (h, want, copied)).map_err(UploadError::Local)
                }
                Err(e) => Err(UploadError::Local(Error::Io {
                    path: local.to_path_buf(),
                    op: "write",
                    source: std::io::Error::other(e),
                })),
            }
        }
    }))
    .buffered(opts.conc());
    let done: Vec<(crc32fast::Hasher, u64, bool)> = jobs.try_collect().await?;
    let mut crc = crc32fast::Hasher::new();
    let (mut fetched, mut reused) = (0, 0);
    for (h, n, copied) in &done {
        crc.combine(h);
        if *copied {
            reused += n;
        } else {
            fetched += n;
        }
    }
    Ok(Downloaded {
        crc: crc.finalize(),
        fetched,
        reused,
    })
}

/// Reads a whole object by ranged GETs and returns its CRC-32 and its first
/// `head` bytes (for `verify`), without keeping more than `concurrency`
/// parts in memory.
pub(crate) async fn checksum_object(
    store: Arc<dyn ObjectStore>,
    src: &Path,
    size: u64,
    head: usize,
    opts: TransferOptions,
) -> std::result::Result<(u32, Vec<u8>), object_store::Error> {
    let part = opts.part() as u64;
    let ranges: Vec<std::ops::Range<u64>> = (0..size.div_ceil(part))
        .map(|i| i * part..((i + 1) * part).min(size))
        .collect();
    let mut jobs = futures::stream::iter(ranges.into_iter().map(|r| {
        let store = store.clone();
        let src = src.clone();
        async move { store.get_range(&src, r).await }
    }))
    .buffered(opts.conc());
    let mut crc = crc32fast::Hasher::new();
    let mut first = Vec::new();
    while let Some(bytes) = jobs.next().await {
        let bytes = bytes?;
        if first.len() < head {
            let take = (head - first.len()).min(bytes.len());
            first.extend_from_slice(&bytes[..take]);
        }
        crc.update(&bytes);
    }
    Ok((crc.finalize(), first))
}

/// Fetches the byte ranges `fetch.requests` of `src` into the same
/// offsets of `file` (named `local` in errors), each range split into
/// parts of at most `part_size` bytes, `concurrency` GETs in flight at
/// once; of the bytes fetched, only those in `fetch.writes` (sorted,
/// disjoint) are written (the others are held already). Returns the bytes fetched.
pub(crate) async fn fetch_ranges(
    store: Arc<dyn ObjectStore>,
    src: &Path,
    fetch: &Fetch,
    file: Arc<File>,
    local: &FsPath,
    opts: TransferOptions,
    progress: &Progress,
) -> std::result::Result<u64, UploadError> {
    let part = opts.part() as u64;
    let local: Arc<FsPath> = Arc::from(local);
    let writes: Arc<[Range<u64>]> = Arc::from(fetch.writes.as_slice());
    let pieces: Vec<Range<u64>> = fetch
        .requests
        .iter()
        .flat_map(|r| {
            let n = (r.end - r.start).div_ceil(part);
            (0..n).map(move |i| r.start + i * part..(r.start + (i + 1) * part).min(r.end))
        })
        .collect();
    let jobs = futures::stream::iter(pieces.into_iter().map(|r| {
        let store = store.clone();
        let src = src.clone();
        let file = file.clone();
        let local = local.clone();
        let writes = writes.clone();
        async move {
            let want = r.end - r.start;
            let start = r.start;
            let end = r.end;
            let bytes = store
                .get_range(&src, r)
                .await
                .map_err(UploadError::Remote)?;
            if bytes.len() as u64 != want {
                return Err(UploadError::Local(Error::Truncated {
                    path: local.to_path_buf(),
                    expected: want,
                    actual: bytes.len() as u64,
                }));
            }
            let path = local.clone();
            let job = tokio::task::spawn_blocking(move || -> Result<()> {
                let first = writes.partition_point(|w| w.end <= start);
                for w in writes[first..].iter().take_while(|w| w.start < end) {
                    let (a, b) = (w.start.max(start), w.end.min(end));
                    let part = &bytes[(a - start) as usize..(b - start) as usize];
                    file.write_all_at(part, a).ctx("write", &path)?;
                }
                Ok(())
            });
            match job.await {
                Ok(r) => {
                    progress.advance(want);
                    r.map(|()| want).map_err(UploadError::Local)
                }
                Err(e) => Err(UploadError::Local(Error::Io {
                    path: local.to_path_buf(),
                    op: "write",
                    source: std::io::Error::other(e),
                })),
            }
        }
    }))
    .buffer_unordered(opts.conc());
    let got: Vec<u64> = jobs.try_collect().await?;
    Ok(got.iter().sum())
}
