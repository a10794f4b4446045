//! The window cache of a handle: per entry, a sparse local copy of the
//! byte ranges windows fetched of its current data object
//! ([`DiskBackedStore::read_window`](crate::DiskBackedStore::read_window)).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::transfer::Fetch;
use crate::error::{IoContext, Result};
use crate::name::EntryName;
use crate::npy::NpyInfo;

/// Byte runs of a window closer than this are fetched by one GET, the bytes
/// between them included (a request costs about as much as this many
/// bytes on a fast link).
pub(crate) const GAP: u64 = 256 << 10;

/// Byte runs in increasing offset order as ranges, those closer than `gap`
/// merged.
pub(crate) fn coalesce(runs: impl Iterator<Item = (u64, u64)>, gap: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (off, len) in runs {
        match out.last_mut() {
            Some(last) if off <= last.end.saturating_add(gap) => {
                last.end = last.end.max(off + len);
            }
            _ => out.push(off..off + len),
        }
    }
    out
}

/// The parts of `want` (sorted ranges) not in `have` (sorted, disjoint),
/// those closer than `gap` merged.
fn missing(want: &[Range<u64>], have: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut pieces = Vec::new();
    for w in want {
        let mut start = w.start;
        let first = have.partition_point(|h| h.end <= start);
        for h in &have[first..] {
            if h.start >= w.end || start >= w.end {
                break;
            }
            if h.start > start {
                pieces.push((start, h.start - start));
            }
            start = start.max(h.end);
        }
        if start < w.end {
            pieces.push((start, w.end - start));
        }
    }
    coalesce(pieces.into_iter(), gap)
}

/// `have` (sorted, disjoint) with `add` (sorted) merged in.
fn merge(have: &mut Vec<Range<u64>>, add: &[Range<u64>]) {
    have.extend(add.iter().cloned());
    have.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(have.len());
    for r in have.drain(..) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    *have = out;
}

/// Where the window cache's files are.
enum WindowDir {
    /// `.ndoffload/windows/<writer id>/` of the cache directory (removed
    /// when the handle is dropped; the folders of dead handles are removed
    /// by the next handle that creates its own).
    Own(PathBuf),
    /// A temporary directory (read-only handles).
    Temp(tempfile::TempDir),
}

impl WindowDir {
    fn path(&self) -> &FsPath {
        match self {
            WindowDir::Own(p) => p,
            WindowDir::Temp(t) => t.path(),
        }
    }
}

impl Drop for WindowDir {
    fn drop(&mut self) {
        if let WindowDir::Own(p) = self {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// The window cache of a handle: per entry, a sparse copy of (parts of)
/// its current data object.
#[derive(Default)]
pub(crate) struct WindowCache {
    dir: Mutex<Option<WindowDir>>,
    copies: Mutex<HashMap<EntryName, Arc<WindowCopy>>>,
}

impl std::fmt::Debug for WindowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCache").finish_non_exhaustive()
    }
}

/// The sparse local copy of (parts of) one data object.
///
/// Its file has the object's full size from its creation on (holes where
/// nothing was fetched yet) and is never truncated or rewritten where it
/// holds bytes: a map of it ([`map_window`](crate::DiskBackedStore::map_window))
/// never loses a page under it, and the bytes a view shows never change.
/// It is unlinked when the last user is gone (the cache, a window being
/// read, a view).
pub(crate) struct WindowCopy {
    /// The data object, relative to the prefix.
    pub(crate) data: String,
    /// Its URL, for messages.
    pub(crate) url: String,
    pub(crate) size: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// The byte ranges fetched (sorted, disjoint).
    fetched: Mutex<Vec<Range<u64>>>,
    /// Held while ranges are fetched into the file: one fetch at a time,
    /// so that no byte already held is written again.
    pub(crate) fetching: Mutex<()>,
    /// The data object's `.npy` header, once fetched and checked.
    pub(crate) header: OnceLock<NpyInfo>,
}

impl Drop for WindowCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl WindowCopy {
    /// The requests that fetch the parts of `want` not held yet, and the
    /// ranges to write.
    pub(crate) fn missing(&self, want: &[Range<u64>]) -> Fetch {
        let have = self.fetched.lock();
        Fetch {
            requests: missing(want, &have, GAP),
            writes: missing(want, &have, 0),
        }
    }

    /// `got` is fetched (written to the file).
    pub(crate) fn note_fetched(&self, got: &[Range<u64>]) {
        merge(&mut self.fetched.lock(), got);
    }

    /// The byte ranges held (sorted, disjoint).
    pub(crate) fn held(&self) -> Vec<Range<u64>> {
        self.fetched.lock().clone()
    }

    /// Bytes held (what the copy takes on disk, to the file system's
    /// block).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.fetched.lock().iter().map(|r| r.end - r.start).sum()
    }

    /// Whether the file is as this copy left it, as far as its descriptor
    /// tells: a regular file of the object's size (something else
    /// truncating it would make reads of its held ranges fail, and a map
    /// of them fault).
    pub(crate) fn intact(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() == self.size)
    }
}

impl WindowCache {
    /// The copy of `name`'s data object `data` (of `size` bytes, at `url`),
    /// created (empty) if the cache has none, or if its file was damaged
    /// by something else (see [`WindowCopy::intact`]); a copy of another
    /// data object of the entry is dropped. `make_dir` makes the cache's
    /// directory in the cache directory on first use (`None`: a temporary
    /// directory).
    pub(crate) fn copy(
        &self,
        name: &EntryName,
        data: &str,
        url: String,
        size: u64,
        make_dir: impl FnOnce() -> Result<Option<PathBuf>>,
    ) -> Result<Arc<WindowCopy>> {
        let mut copies = self.copies.lock();
        if let Some(c) = copies.get(name).filter(|c| c.data == data && c.intact()) {
            return Ok(c.clone());
        }
        let mut dir = self.dir.lock();
        if dir.is_none() {
            *dir = Some(match make_dir()? {
                Some(path) => WindowDir::Own(path),
                None => WindowDir::Temp(
                    tempfile::Builder::new()
                        .prefix("ndoffload-windows-")
                        .tempdir()
                        .ctx("create", &std::env::temp_dir())?,
                ),
            });
        }
        let base = dir.as_ref().map(|d| d.path().to_path_buf());
        drop(dir);
        let base = base.unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!("{}.window", super::protocol::unique_id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx("create", &path)?;
        let copy = Arc::new(WindowCopy {
            data: data.to_string(),
            url,
            size,
            file: Arc::new(file),
            path,
            fetched: Mutex::new(Vec::new()),
            fetching: Mutex::new(()),
            header: OnceLock::new(),
        });
        // Sparse: only the fetched ranges take disk space. Its full size
        // from now on: never truncated.
        copy.file.set_len(size).ctx("resize", &copy.path)?;
        copies.insert(name.clone(), copy.clone());
        Ok(copy)
    }

    /// The copy of `name`'s data object `data`, if the cache holds one
    /// whose file is intact.
    pub(crate) fn get(&self, name: &EntryName, data: &str) -> Option<Arc<WindowCopy>> {
        self.copies
            .lock()
            .get(name)
            .filter(|c| c.data == data && c.intact())
            .cloned()
    }

    /// Forgets `name`'s copy (its file goes when its last user does).
    pub(crate) fn discard(&self, name: &EntryName) {
        self.copies.lock().remove(name);
    }

    /// Drops `name`'s copy if nothing but the cache uses it (no window
    /// being read, no view): the bytes it held, `None` if it stays (or
    /// there is none).
    pub(crate) fn drop_unused(&self, name: &EntryName) -> Option<u64> {
        let mut copies = self.copies.lock();
        // Users get their `Arc` under this lock only: the count cannot
        // grow meanwhile.
        let c = copies.get(name).filter(|c| Arc::strong_count(c) == 1)?;
        let bytes = c.held_bytes();
        copies.remove(name);
        Some(bytes)
    }

    /// Bytes the copy of `name` holds (`None`: none).
    pub(crate) fn bytes_of(&self, name: &EntryName) -> Option<u64> {
        self.copies.lock().get(name).map(|c| c.held_bytes())
    }

    /// The entries with a copy, and the bytes each holds.
    pub(crate) fn held(&self) -> Vec<(EntryName, u64)> {
        self.copies
            .lock()
            .iter()
            .map(|(n, c)| (n.clone(), c.held_bytes()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn missing_ranges_and_merges() {
        let have = vec![10..20, 30..40];
        assert_eq!(missing(&[0..50], &have, 0), [0..10, 20..30, 40..50]);
        assert_eq!(
            missing(&[12..18, 32..35], &have, 0),
            Vec::<Range<u64>>::new()
        );
        assert_eq!(missing(&[15..35], &have, 0), [20..30]);
        assert_eq!(missing(&[0..50], &have, 100), [0..50]);
        let mut h = have.clone();
        merge(&mut h, &[18..31, 50..60]);
        assert_eq!(h, [10..40, 50..60]);
        assert_eq!(
            coalesce([(0, 4), (4, 4), (20, 4)].into_iter(), 0),
            [0..8, 20..24]
        );
        assert_eq!(coalesce([(0, 4), (10, 4)].into_iter(), 6), [0..14]);
    }

    /// The requests of a fetch may span bytes held already (coalesced
    /// over them), the writes never do, and with what is held they cover
    /// what is wanted.
    #[test]
    fn writes_never_touch_held_bytes() {
        let mut seed = 0x1234_5678_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2000 {
            let mut have = Vec::new();
            for _ in 0..next(6) {
                let a = next(1000);
                merge(&mut have, &[a..a + 1 + next(100)]);
            }
            let mut want: Vec<Range<u64>> = Vec::new();
            for _ in 0..1 + next(5) {
                let a = next(1100);
                want.push(a..a + 1 + next(200));
            }
            want.sort_by_key(|r| r.start);
            let gap = next(300);
            let requests = missing(&want, &have, gap);
            let writes = missing(&want, &have, 0);
            for w in &writes {
                assert!(have.iter().all(|h| h.end <= w.start || h.start >= w.end));
                assert!(requests
                    .iter()
                    .any(|r| r.start <= w.start && w.end <= r.end));
            }
            for b in want.iter().flat_map(|r| r.clone()) {
                let held = have.iter().any(|h| h.contains(&b));
                let written = writes.iter().any(|w| w.contains(&b));
                assert!(held || written, "{b} of {want:?}, {have:?}");
            }
        }
    }
}
