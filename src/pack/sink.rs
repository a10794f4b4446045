//! Buffered output of the pack writer: gathering small writes into large
//! ones, counting and checksumming bytes, and flushing to disk in the
//! background.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::codec::{self, Compression};
use super::format::{self, ALIGN};
use crate::element::dtype_itemsize;
use crate::error::{Error, IoContext, Result};
use crate::io::{sync_file, SeamFile, TempFile};

/// Zero bytes for alignment padding.
pub(super) static ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// Counts and checksums bytes on their way to the file.
pub(super) struct Counter<'a, W: Write> {
    pub(super) inner: &'a mut W,
    pub(super) crc: crc32fast::Hasher,
    pub(super) n: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.crc.update(buf);
        self.n += buf.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Size of the writer's own output buffer: payloads are gathered into
/// 1 MiB writes (the temporary file's buffer is only 64 KiB).
pub(super) const CHUNK: usize = 1 << 20;

/// Gathers small writes into `CHUNK`-sized ones.
pub(super) struct Chunked<'a> {
    pub(super) buf: &'a mut Vec<u8>,
    pub(super) inner: &'a mut BufWriter<SeamFile>,
}

impl Chunked<'_> {
    pub(super) fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.write_all(b)?;
        Ok(b.len())
    }
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        if self.buf.len() + b.len() > CHUNK {
            self.flush_buf()?;
        }
        if b.len() >= CHUNK {
            self.inner.write_all(b)
        } else {
            self.buf.extend_from_slice(b);
            Ok(())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.inner.flush()
    }
}

/// Bytes written between two background flushes.
pub(super) const SYNC_EVERY: u64 = 64 << 20;

/// A thread that `fsync`s the temporary file whenever asked, so the disk
/// writes back the first bytes while later ones are still being produced
/// and `finish` only waits for the tail (what `bytes_per_sync` does in
/// RocksDB). Requests made while a flush runs are merged into one.
pub(super) struct Syncer {
    tx: Option<mpsc::SyncSender<()>>,
    handle: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Syncer {
    pub(super) fn start(file: std::fs::File, path: PathBuf) -> Self {
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let plan = crate::io::current_plan();
        let handle = std::thread::Builder::new()
            .name("ndarray-offload pack sync".into())
            .spawn(move || {
                let _plan = crate::io::adopt_plan(plan);
                for () in rx {
                    sync_file(&file, &path)?;
                }
                Ok(())
            })
            .ok();
        Syncer {
            tx: handle.as_ref().map(|_| tx),
            handle,
        }
    }

    pub(super) fn request(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(());
        }
    }

    /// Stops the thread and returns the first error it met.
    pub(super) fn stop(&mut self) -> Result<()> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) | None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Type-erased view of one array to be written.
pub(crate) struct ArrayIn<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: &'a str,
    pub(super) shape: &'a [usize],
    pub(super) payload: Payload<'a>,
}

pub(super) enum Payload<'a> {
    Bytes(&'a [u8]),
    Typed(&'a dyn Fn(&mut dyn Write) -> io::Result<()>),
}

/// Bytes of an array's elements, if that fits in `u64`.
pub(super) fn byte_len(a: &ArrayIn<'_>) -> Option<u64> {
    let itemsize = dtype_itemsize(a.dtype)? as u64;
    a.shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))?
        .checked_mul(itemsize)
}

/// The temporary file being written, behind the writer's own buffer, with
/// its background flushing.
pub(super) struct Sink {
    pub(super) tmp: Option<TempFile>,
    pub(super) tmp_path: PathBuf,
    /// The next offset in the file (buffered bytes included).
    pub(super) pos: u64,
    raw: Vec<u8>,
    packed: Vec<u8>,
    /// Output not yet handed to the file (see `Chunked`).
    pub(super) chunk: Vec<u8>,
    /// Background flushing of what is written so far.
    pub(super) syncer: Option<Syncer>,
    /// `pos` at which the next background flush is requested.
    next_sync: u64,
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::InvalidInput {
        path: path.to_path_buf(),
        reason,
    }
}

impl Sink {
    /// Starts writing to `tmp`, whose first `pos` bytes are written.
    pub(super) fn new(tmp: TempFile, pos: u64) -> Self {
        Sink {
            tmp_path: tmp.path().to_path_buf(),
            tmp: Some(tmp),
            pos,
            raw: Vec::new(),
            packed: Vec::new(),
            chunk: Vec::with_capacity(CHUNK),
            syncer: None,
            next_sync: SYNC_EVERY,
        }
    }

    /// Accounts for `n` bytes just written with `write_raw`, and requests a
    /// background flush every `SYNC_EVERY` bytes.
    pub(super) fn advance(&mut self, n: u64) {
        self.pos += n;
        if self.pos >= self.next_sync {
            self.next_sync = self.pos + SYNC_EVERY;
            self.background_sync();
        }
    }

    pub(super) fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        let tmp = self.tmp.as_mut().expect("checked by the caller");
        Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        }
        .write_all(b)
        .ctx("write", &self.tmp_path)
    }

    /// Pushes buffered bytes to the file and asks the background thread to
    /// flush them to disk.
    fn background_sync(&mut self) {
        let Some(tmp) = self.tmp.as_mut() else { return };
        let mut w = Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        };
        if w.flush().is_err() {
            return; // the next write reports the error
        }
        if self.syncer.is_none() {
            match tmp.file().try_clone() {
                Ok(f) => self.syncer = Some(Syncer::start(f, self.tmp_path.clone())),
                Err(_) => return,
            }
        }
        if let Some(s) = &self.syncer {
            s.request();
        }
    }

    /// Writes one payload at the next aligned offset; returns
    /// `(offset, stored length, crc32)`.
    pub(super) fn write_payload(
        &mut self,
        a: &ArrayIn<'_>,
        comp: Compression,
        path: &Path,
    ) -> Result<(u64, u64, u32)> {
        let numel = byte_len(a).ok_or_else(|| invalid(path, "array size overflows".into()))?;
        let tmp = self.tmp.as_mut().expect("checked by the caller");
        let tpath = &self.tmp_path;
        let w = &mut Chunked {
            buf: &mut self.chunk,
            inner: tmp.writer(),
        };
        let pad = format::align_up(self.pos, ALIGN).expect("file offsets fit in u64") - self.pos;
        w.write_all(&ZEROS[..pad as usize]).ctx("write", tpath)?;
        let data_off = self.pos + pad;
        let (stored_len, crc) = if comp == Compression::None {
            let mut c = Counter {
                inner: w,
                crc: crc32fast::Hasher::new(),
                n: 0,
            };
            match &a.payload {
                Payload::Bytes(b) => c.write_all(b),
                Payload::Typed(f) => f(&mut c),
            }
            .ctx("write", tpath)?;
            (c.n, c.crc.finalize())
        } else {
            self.raw.clear();
            match &a.payload {
                Payload::Bytes(b) => self.raw.extend_from_slice(b),
                Payload::Typed(f) => f(&mut self.raw).ctx("encode", tpath)?,
            }
            if self.raw.len() as u64 != numel {
                return Err(invalid(
                    path,
                    format!(
                        "array {:?} encoded to {} bytes, expected {numel}",
                        a.name,
                        self.raw.len()
                    ),
                ));
            }
            codec::compress(comp, &self.raw, &mut self.packed, path)?;
            w.write_all(&self.packed).ctx("write", tpath)?;
            (self.packed.len() as u64, crc32fast::hash(&self.packed))
        };
        if comp == Compression::None && stored_len != numel {
            return Err(invalid(
                path,
                format!(
                    "array {:?} encoded to {stored_len} bytes, expected {numel}",
                    a.name
                ),
            ));
        }
        self.pos = data_off + stored_len;
        Ok((data_off, stored_len, crc))
    }
}
