//! A model of what a power cut can leave on disk, in the style of ALICE,
//! CrashMonkey and LazyFS: the crate's file-system operations are recorded
//! at its seam (`FaultPlan::with_recorder`), replayed on an abstract file
//! system that keeps apart what is durable and what is only in the page
//! cache, and every on-disk state a power cut could leave at each point of
//! the log is generated under a persistence [`Model`], then materialized in
//! a fresh directory.
//!
//! The model covers one directory (the workload's root): names are plain
//! file names in it, and events on paths outside it (a standalone array's
//! private temporary directory) are ignored. A recording of a tree
//! ([`Recording::start_tree`], a remote store's cache directory) also
//! covers the root's subdirectories: names are then relative paths
//! (`objects/x`), and each directory's operations become durable with that
//! directory's `fsync`, independently of the others'.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray_offload::__testing::{install, Event, FaultPlan, PlanGuard};
use parking_lot::Mutex;

/// The page size at which unsynced file data may be partly persisted.
pub const PAGE: u64 = 4096;

/// The store's lock file: created at open outside the seam, always empty,
/// recreated by the next open; left out of the model.
const LOCK: &str = ".ndoffload.lock";
/// A remote store's lock file in its cache directory, likewise.
const REMOTE_LOCK: &str = ".ndoffload-remote.lock";

/// One recorded operation, with names relative to the root.
#[derive(Clone, Debug)]
pub enum Ev {
    Create {
        name: String,
        ino: u64,
    },
    Write {
        name: String,
        off: u64,
        data: Arc<[u8]>,
    },
    Fsync {
        name: String,
    },
    /// `fsync` of the directory `dir` (`""`: the root).
    SyncDir {
        dir: String,
    },
    SyncFs,
    Rename {
        from: String,
        to: String,
    },
    Link {
        src: String,
        dst: String,
    },
    Remove {
        name: String,
    },
    /// An event taken out of a log by a test (keeps indices stable).
    Nop,
    /// A request changed the object store (durable once it returned): the
    /// remote log is `n` operations long from here on.
    Remote {
        n: usize,
    },
}

/// Records the operations under `root` made on the current thread (and the
/// threads the crate spawns for it) while alive.
pub struct Recording {
    events: Arc<Mutex<Vec<Ev>>>,
    _guard: PlanGuard,
}

impl Recording {
    pub fn start(root: &Path) -> Recording {
        Self::start_with(root, false)
    }

    /// Records the root and its subdirectories.
    pub fn start_tree(root: &Path) -> Recording {
        Self::start_with(root, true)
    }

    fn start_with(root: &Path, tree: bool) -> Recording {
        let events: Arc<Mutex<Vec<Ev>>> = Arc::default();
        let sink = events.clone();
        let root = root.to_path_buf();
        let plan = FaultPlan::fail_at(0).with_recorder(move |e| {
            if let Some(ev) = convert(&root, tree, e) {
                sink.lock().push(ev);
            }
        });
        Recording {
            events,
            _guard: install(plan),
        }
    }

    /// Where events made elsewhere (the object store's) are appended, in
    /// the same sequence.
    pub fn sink(&self) -> Arc<Mutex<Vec<Ev>>> {
        self.events.clone()
    }

    /// Events so far.
    pub fn len(&self) -> usize {
        self.events.lock().len()
    }

    pub fn finish(self) -> Vec<Ev> {
        let v = self.events.lock().clone();
        v
    }
}

/// The store's folder of version links (hard links of published `.npy`
/// files): part of the model, as a directory of its own.
pub const VERSIONS: &str = ".ndoffload/versions";

fn rel(root: &Path, tree: bool, p: &Path) -> Option<String> {
    let r = p.strip_prefix(root).ok()?;
    let s = r.to_str()?;
    if s == VERSIONS || s.strip_prefix(VERSIONS).is_some_and(|t| t.starts_with('/')) {
        return Some(s.to_owned());
    }
    if s.is_empty()
        || (s.contains('/') && !tree)
        || s == LOCK
        || s == REMOTE_LOCK
        || s.starts_with(ndarray_offload::CRATE_DIR)
    {
        return None;
    }
    Some(s.to_owned())
}

fn convert(root: &Path, tree: bool, e: Event) -> Option<Ev> {
    let rel = |root: &Path, p: &Path| rel(root, tree, p);
    Some(match e {
        Event::Create { path, ino } => Ev::Create {
            name: rel(root, &path)?,
            ino,
        },
        Event::Write { path, offset, data } => Ev::Write {
            name: rel(root, &path)?,
            off: offset,
            data: data.into(),
        },
        Event::Fsync { path } if path == root => Ev::SyncFs,
        Event::Fsync { path } => Ev::Fsync {
            name: rel(root, &path)?,
        },
        Event::SyncDir { path } if path == root => Ev::SyncDir { dir: String::new() },
        Event::SyncDir { path } => Ev::SyncDir {
            dir: rel(root, &path)?,
        },
        Event::SyncFs { path } if path == root => Ev::SyncFs,
        Event::SyncFs { .. } => return None,
        Event::Rename { from, to } => Ev::Rename {
            from: rel(root, &from)?,
            to: rel(root, &to)?,
        },
        Event::Link { src, dst } => Ev::Link {
            src: rel(root, &src)?,
            dst: rel(root, &dst)?,
        },
        Event::Remove { path } => Ev::Remove {
            name: rel(root, &path)?,
        },
        _ => return None,
    })
}

/// The durable files of a directory (all of it is on disk).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub names: BTreeMap<String, usize>,
    /// `(inode number, contents)`.
    pub inodes: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    /// Reads every regular file of `dir` (hard links share an inode).
    pub fn read(dir: &Path) -> Snapshot {
        use std::os::unix::fs::MetadataExt;
        let mut s = Snapshot::default();
        let mut by_ino: HashMap<u64, usize> = HashMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().expect("utf-8 name");
            // The lock files and the crate's folder of process files
            // (registrations, lock files) are not store data.
            if name == ndarray_offload::CRATE_DIR {
                // Of the crate's folder, only the version links are store
                // data (hard links of published files).
                let versions = dir.join(VERSIONS);
                let Ok(rd) = std::fs::read_dir(&versions) else {
                    continue;
                };
                let mut sub: Vec<_> = rd.map(|f| f.expect("entry")).collect();
                sub.sort_by_key(|f| f.file_name());
                for f in sub {
                    let fmd = std::fs::symlink_metadata(f.path()).expect("stat");
                    let fname = f.file_name().into_string().expect("utf-8 name");
                    let i = *by_ino.entry(fmd.ino()).or_insert_with(|| {
                        s.inodes
                            .push((fmd.ino(), std::fs::read(f.path()).expect("read")));
                        s.inodes.len() - 1
                    });
                    s.names.insert(format!("{VERSIONS}/{fname}"), i);
                }
                continue;
            }
            if name == LOCK || name == REMOTE_LOCK {
                continue;
            }
            let md = std::fs::symlink_metadata(e.path()).expect("stat");
            if md.is_dir() {
                // A subdirectory (a remote store's cache): its files, named
                // by their relative paths.
                let mut sub: Vec<_> = std::fs::read_dir(e.path())
                    .expect("list")
                    .map(|f| f.expect("entry"))
                    .collect();
                sub.sort_by_key(|f| f.file_name());
                for f in sub {
                    let fmd = std::fs::symlink_metadata(f.path()).expect("stat");
                    let fname = f.file_name().into_string().expect("utf-8 name");
                    assert!(fmd.is_file(), "{name}/{fname} is not a regular file");
                    let i = *by_ino.entry(fmd.ino()).or_insert_with(|| {
                        s.inodes
                            .push((fmd.ino(), std::fs::read(f.path()).expect("read")));
                        s.inodes.len() - 1
                    });
                    s.names.insert(format!("{name}/{fname}"), i);
                }
                continue;
            }
            assert!(md.is_file(), "{name} is not a regular file");
            let i = *by_ino.entry(md.ino()).or_insert_with(|| {
                s.inodes
                    .push((md.ino(), std::fs::read(e.path()).expect("read")));
                s.inodes.len() - 1
            });
            s.names.insert(name, i);
        }
        s
    }
}

/// A persistence model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Model {
    /// ext4 `data=ordered`-like: a file's data is durable once `fsync`ed
    /// (or `syncfs`), and of its unsynced writes any prefix, cut at a page
    /// boundary, may be on disk; directory operations are durable once the
    /// directory is `fsync`ed (or `syncfs`), and of the unsynced ones a
    /// prefix in the order they were made (an ordered metadata journal).
    Ordered,
    /// Weaker: any subset of the unsynced directory operations may be on
    /// disk, in any order that keeps each name's operations in order (an
    /// operation is kept only if what it acted on is there); of a file's
    /// unsynced data any subset of pages, the gaps read as zeros, and the
    /// size either the written one or the end of the last page kept.
    Weak,
}

#[derive(Clone, Debug)]
struct Piece {
    off: u64,
    data: Arc<[u8]>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    pending: Vec<Piece>,
    /// `"npy_ino": N` references in the contents: `(N, model inode)`.
    refs: Vec<(u64, usize)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Create {
        name: String,
        ino: usize,
    },
    Rename {
        from: String,
        to: String,
        ino: usize,
    },
    Link {
        src: String,
        dst: String,
        ino: usize,
    },
    Remove {
        name: String,
        ino: usize,
    },
}

impl DirOp {
    /// The directory the operation is made in (`""`: the root).
    fn dir(&self) -> &str {
        let name = match self {
            DirOp::Create { name, .. } | DirOp::Remove { name, .. } => name,
            DirOp::Rename { to, .. } => to,
            DirOp::Link { dst, .. } => dst,
        };
        name.rsplit_once('/').map_or("", |(d, _)| d)
    }
}

/// The abstract file system: what is durable, and what is only cached.
#[derive(Clone, Debug, Default)]
pub struct Fs {
    inodes: Vec<Inode>,
    volatile: BTreeMap<String, usize>,
    durable: BTreeMap<String, usize>,
    pending: Vec<DirOp>,
    /// Real inode number -> model inode (the newest with that number).
    owner: HashMap<u64, usize>,
}

/// One on-disk state after a power cut: names and the contents of their
/// inodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CrashState {
    pub names: BTreeMap<String, usize>,
    pub contents: BTreeMap<usize, Vec<u8>>,
    pub refs: BTreeMap<usize, Vec<(u64, usize)>>,
}

impl CrashState {
    /// A fingerprint of what a reader would see (names, link groups and
    /// contents).
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.names.hash(&mut h);
        self.contents.hash(&mut h);
        h.finish()
    }
}

fn scan_refs(data: &[u8]) -> Vec<u64> {
    const PAT: &[u8] = b"\"npy_ino\": ";
    let mut out = Vec::new();
    let mut i = 0;
    while i + PAT.len() <= data.len() {
        if &data[i..i + PAT.len()] == PAT {
            let s = i + PAT.len();
            let e = s + data[s..].iter().take_while(|b| b.is_ascii_digit()).count();
            if let Some(n) = std::str::from_utf8(&data[s..e])
                .ok()
                .and_then(|t| t.parse().ok())
            {
                out.push(n);
            }
            i = e;
        } else {
            i += 1;
        }
    }
    out
}

fn apply_piece(buf: &mut Vec<u8>, p: &Piece) {
    let end = p.off as usize + p.data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[p.off as usize..end].copy_from_slice(&p.data);
}

impl Fs {
    pub fn from_snapshot(s: &Snapshot) -> Fs {
        let mut fs = Fs::default();
        for (ino, data) in &s.inodes {
            fs.owner.insert(*ino, fs.inodes.len());
            fs.inodes.push(Inode {
                durable: data.clone(),
                ..Inode::default()
            });
        }
        for (i, (_, data)) in s.inodes.iter().enumerate() {
            let refs = scan_refs(data)
                .into_iter()
                .filter_map(|n| fs.owner.get(&n).map(|&m| (n, m)))
                .collect();
            fs.inodes[i].refs = refs;
        }
        fs.volatile = s.names.clone();
        fs.durable = s.names.clone();
        fs
    }

    fn ino(&self, name: &str) -> usize {
        *self
            .volatile
            .get(name)
            .unwrap_or_else(|| panic!("model: no file {name}"))
    }

    fn flush_data(&mut self, i: usize) {
        let ino = &mut self.inodes[i];
        for p in std::mem::take(&mut ino.pending) {
            apply_piece(&mut ino.durable, &p);
        }
    }

    /// Makes the pending operations in `dir` durable (`None`: in every
    /// directory).
    fn flush_dir(&mut self, dir: Option<&str>) {
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|op| dir.is_none_or(|d| op.dir() == d));
        self.pending = later;
        for op in now {
            let ok = replay(&mut self.durable, &op);
            assert!(
                ok,
                "model: a synced directory operation does not apply: {op:?}"
            );
        }
    }

    /// Applies one recorded event.
    pub fn apply(&mut self, ev: &Ev) {
        match ev {
            Ev::Nop | Ev::Remote { .. } => {}
            Ev::Create { name, ino } => {
                let i = self.inodes.len();
                self.inodes.push(Inode::default());
                self.owner.insert(*ino, i);
                self.volatile.insert(name.clone(), i);
                self.pending.push(DirOp::Create {
                    name: name.clone(),
                    ino: i,
                });
            }
            Ev::Write { name, off, data } => {
                let i = self.ino(name);
                let refs: Vec<(u64, usize)> = scan_refs(data)
                    .into_iter()
                    .filter_map(|n| self.owner.get(&n).map(|&m| (n, m)))
                    .collect();
                let ino = &mut self.inodes[i];
                ino.refs.extend(refs);
                // Split at page boundaries of the file.
                let mut pos = 0usize;
                while pos < data.len() {
                    let at = off + pos as u64;
                    let room = (PAGE - at % PAGE) as usize;
                    let n = room.min(data.len() - pos);
                    ino.pending.push(Piece {
                        off: at,
                        data: data[pos..pos + n].into(),
                    });
                    pos += n;
                }
            }
            Ev::Fsync { name } => {
                let i = self.ino(name);
                self.flush_data(i);
            }
            Ev::SyncDir { dir } => self.flush_dir(Some(dir)),
            Ev::SyncFs => {
                for i in 0..self.inodes.len() {
                    self.flush_data(i);
                }
                self.flush_dir(None);
            }
            Ev::Rename { from, to } => {
                let i = self.ino(from);
                self.volatile.remove(from);
                self.volatile.insert(to.clone(), i);
                self.pending.push(DirOp::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    ino: i,
                });
            }
            Ev::Link { src, dst } => {
                let i = self.ino(src);
                self.volatile.insert(dst.clone(), i);
                self.pending.push(DirOp::Link {
                    src: src.clone(),
                    dst: dst.clone(),
                    ino: i,
                });
            }
            Ev::Remove { name } => {
                let i = self.ino(name);
                self.volatile.remove(name);
                self.pending.push(DirOp::Remove {
                    name: name.clone(),
                    ino: i,
                });
            }
        }
    }

    /// The crash states at this point under `model`: all of them when there
    /// are at most `cap`, else `cap` drawn with `rng` (always including the
    /// state with nothing unsynced kept and the one with everything kept).
    pub fn crash_states(&self, model: Model, cap: usize, rng: &mut Rng) -> Vec<CrashState> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut push = |s: CrashState, out: &mut Vec<CrashState>| {
            if seen.insert(s.fingerprint()) {
                out.push(s);
            }
        };
        match model {
            Model::Ordered => {
                // Count the combinations: per prefix of directory operations
                // (of each directory's, independently), the product of
                // (pieces + 1) over named inodes.
                let mut total = 0usize;
                let mut prefixes = Vec::new();
                for kept in self.dir_prefixes() {
                    let names = self.names_with(&kept);
                    let dims = self.data_dims(&names);
                    let n = dims
                        .iter()
                        .fold(1usize, |a, (_, d)| a.saturating_mul(d + 1));
                    total = total.saturating_add(n);
                    prefixes.push((names, dims, n));
                }
                if total <= cap {
                    for (names, dims, _) in &prefixes {
                        let mut idx = vec![0usize; dims.len()];
                        loop {
                            let cuts: HashMap<usize, usize> =
                                dims.iter().zip(&idx).map(|((i, _), &c)| (*i, c)).collect();
                            push(self.build_prefix(names, &cuts), &mut out);
                            // Next combination.
                            let mut j = 0;
                            while j < idx.len() {
                                idx[j] += 1;
                                if idx[j] <= dims[j].1 {
                                    break;
                                }
                                idx[j] = 0;
                                j += 1;
                            }
                            if j == idx.len() {
                                break;
                            }
                        }
                    }
                } else {
                    // Extremes, then random draws.
                    for (names, dims, _) in [&prefixes[0], &prefixes[prefixes.len() - 1]] {
                        let none: HashMap<usize, usize> =
                            dims.iter().map(|(i, _)| (*i, 0)).collect();
                        let all: HashMap<usize, usize> =
                            dims.iter().map(|(i, d)| (*i, *d)).collect();
                        push(self.build_prefix(names, &none), &mut out);
                        push(self.build_prefix(names, &all), &mut out);
                    }
                    let mut tries = 0;
                    while out.len() < cap && tries < cap * 4 {
                        tries += 1;
                        let (names, dims, _) = &prefixes[rng.below(prefixes.len())];
                        let cuts: HashMap<usize, usize> =
                            dims.iter().map(|(i, d)| (*i, rng.below(d + 1))).collect();
                        push(self.build_prefix(names, &cuts), &mut out);
                    }
                }
            }
            Model::Weak => {
                let p = self.pending.len();
                let all_ops: Vec<&DirOp> = self.pending.iter().collect();
                // Extremes first.
                for keep in [Vec::new(), all_ops.clone()] {
                    let names = self.names_with(&keep);
                    push(self.build_weak(&names, WeakData::None, rng), &mut out);
                    push(self.build_weak(&names, WeakData::All, rng), &mut out);
                }
                let exhaustive = p <= 10 && (1usize << p) * 2 <= cap;
                if exhaustive {
                    for mask in 0..(1usize << p) {
                        let keep: Vec<&DirOp> = (0..p)
                            .filter(|b| mask >> b & 1 == 1)
                            .map(|b| &self.pending[b])
                            .collect();
                        let names = self.names_with(&keep);
                        push(self.build_weak(&names, WeakData::All, rng), &mut out);
                        push(self.build_weak(&names, WeakData::Random, rng), &mut out);
                    }
                }
                let mut tries = 0;
                while out.len() < cap && tries < cap * 4 {
                    tries += 1;
                    let keep: Vec<&DirOp> =
                        self.pending.iter().filter(|_| rng.below(2) == 1).collect();
                    let names = self.names_with(&keep);
                    push(self.build_weak(&names, WeakData::Random, rng), &mut out);
                }
            }
        }
        out
    }

    /// Every combination of a prefix of each directory's pending
    /// operations (in log order); for one directory, its prefixes from the
    /// empty one to the whole.
    fn dir_prefixes(&self) -> Vec<Vec<&DirOp>> {
        let mut dirs: Vec<&str> = Vec::new();
        let mut pos = Vec::with_capacity(self.pending.len());
        let mut counts: Vec<usize> = Vec::new();
        for op in &self.pending {
            let d = match dirs.iter().position(|x| *x == op.dir()) {
                Some(d) => d,
                None => {
                    dirs.push(op.dir());
                    counts.push(0);
                    dirs.len() - 1
                }
            };
            pos.push((d, counts[d]));
            counts[d] += 1;
        }
        let mut out = Vec::new();
        let mut cut = vec![0usize; dirs.len()];
        loop {
            out.push(
                self.pending
                    .iter()
                    .zip(&pos)
                    .filter(|(_, (d, k))| *k < cut[*d])
                    .map(|(op, _)| op)
                    .collect(),
            );
            // The last directory varies slowest: one directory gives its
            // prefixes in order.
            let mut j = 0;
            while j < cut.len() {
                cut[j] += 1;
                if cut[j] <= counts[j] {
                    break;
                }
                cut[j] = 0;
                j += 1;
            }
            if j == cut.len() {
                break;
            }
        }
        out
    }

    /// The durable names after replaying `ops` (in log order), each kept
    /// only if it applies.
    fn names_with(&self, ops: &[&DirOp]) -> BTreeMap<String, usize> {
        let mut names = self.durable.clone();
        for op in ops {
            replay(&mut names, op);
        }
        names
    }

    /// The named inodes with unsynced data, and how many pieces each has.
    fn data_dims(&self, names: &BTreeMap<String, usize>) -> Vec<(usize, usize)> {
        let set: BTreeSet<usize> = names.values().copied().collect();
        set.into_iter()
            .filter(|&i| !self.inodes[i].pending.is_empty())
            .map(|i| (i, self.inodes[i].pending.len()))
            .collect()
    }

    fn state_of(
        &self,
        names: &BTreeMap<String, usize>,
        content: impl Fn(usize) -> Vec<u8>,
    ) -> CrashState {
        let set: BTreeSet<usize> = names.values().copied().collect();
        let mut contents = BTreeMap::new();
        let mut refs = BTreeMap::new();
        for i in set {
            contents.insert(i, content(i));
            refs.insert(i, self.inodes[i].refs.clone());
        }
        CrashState {
            names: names.clone(),
            contents,
            refs,
        }
    }

    fn build_prefix(
        &self,
        names: &BTreeMap<String, usize>,
        cuts: &HashMap<usize, usize>,
    ) -> CrashState {
        self.state_of(names, |i| {
            let ino = &self.inodes[i];
            let mut buf = ino.durable.clone();
            for p in &ino.pending[..cuts.get(&i).copied().unwrap_or(0)] {
                apply_piece(&mut buf, p);
            }
            buf
        })
    }

    fn build_weak(
        &self,
        names: &BTreeMap<String, usize>,
        how: WeakData,
        rng: &mut Rng,
    ) -> CrashState {
        let rng = std::cell::RefCell::new(rng);
        self.state_of(names, |i| {
            let ino = &self.inodes[i];
            let mut buf = ino.durable.clone();
            match how {
                WeakData::None => {}
                WeakData::All => {
                    for p in &ino.pending {
                        apply_piece(&mut buf, p);
                    }
                }
                WeakData::Random => {
                    let mut r = rng.borrow_mut();
                    let full = ino
                        .pending
                        .iter()
                        .map(|p| p.off as usize + p.data.len())
                        .max()
                        .unwrap_or(0)
                        .max(buf.len());
                    match r.below(4) {
                        0 => {}
                        1 => {
                            let m = r.below(ino.pending.len() + 1);
                            for p in &ino.pending[..m] {
                                apply_piece(&mut buf, p);
                            }
                        }
                        _ => {
                            for p in &ino.pending {
                                if r.below(2) == 1 {
                                    apply_piece(&mut buf, p);
                                }
                            }
                            if r.below(2) == 1 && buf.len() < full {
                                buf.resize(full, 0); // the size made it, not the data
                            }
                        }
                    }
                }
            }
            buf
        })
    }
}

#[derive(Clone, Copy)]
enum WeakData {
    None,
    All,
    Random,
}

/// Applies one directory operation to `names` if it applies there (what it
/// acts on is as it was when the operation was made); whether it did.
fn replay(names: &mut BTreeMap<String, usize>, op: &DirOp) -> bool {
    match op {
        DirOp::Create { name, ino } => {
            if names.contains_key(name) {
                return false;
            }
            names.insert(name.clone(), *ino);
        }
        DirOp::Rename { from, to, ino } => {
            if names.get(from) != Some(ino) {
                return false;
            }
            names.remove(from);
            names.insert(to.clone(), *ino);
        }
        DirOp::Link { src, dst, ino } => {
            // A link into another directory names the inode whether or not
            // the source name's directory entry is on disk yet (each
            // directory's operations persist on their own).
            let dir = |n: &str| n.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
            let same_dir = dir(src) == dir(dst);
            if (same_dir && names.get(src) != Some(ino)) || names.contains_key(dst) {
                return false;
            }
            names.insert(dst.clone(), *ino);
        }
        DirOp::Remove { name, ino } => {
            if names.get(name) != Some(ino) {
                return false;
            }
            names.remove(name);
        }
    }
    true
}

/// Writes `state` into the empty directory `dir`: one file per inode, hard
/// links for its other names, and `"npy_ino": N` in the contents rewritten
/// to the inode numbers the files got here.
pub fn materialize(dir: &Path, state: &CrashState) {
    use std::os::unix::fs::MetadataExt;
    let mut first: BTreeMap<usize, PathBuf> = BTreeMap::new();
    let mut real: HashMap<usize, u64> = HashMap::new();
    for (name, &i) in &state.names {
        let p = dir.join(name);
        if let Some(parent) = p.parent().filter(|d| *d != dir) {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        match first.get(&i) {
            Some(f) => std::fs::hard_link(f, &p).expect("link"),
            None => {
                let f = std::fs::File::create(&p).expect("create");
                real.insert(i, f.metadata().expect("stat").ino());
                first.insert(i, p);
            }
        }
    }
    for (i, p) in &first {
        let mut data = state.contents[i].clone();
        if let Some(refs) = state.refs.get(i).filter(|r| !r.is_empty()) {
            data = rewrite_refs(&data, refs, &real);
        }
        std::fs::write(p, data).expect("write");
    }
}

fn rewrite_refs(data: &[u8], refs: &[(u64, usize)], real: &HashMap<usize, u64>) -> Vec<u8> {
    const PAT: &[u8] = b"\"npy_ino\": ";
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(PAT) {
            out.extend_from_slice(PAT);
            let s = i + PAT.len();
            let e = s + data[s..].iter().take_while(|b| b.is_ascii_digit()).count();
            let n: Option<u64> = std::str::from_utf8(&data[s..e])
                .ok()
                .and_then(|t| t.parse().ok());
            match n.and_then(|n| refs.iter().rev().find(|r| r.0 == n)) {
                // An inode that is not on disk in this state matches no file.
                Some((_, m)) => {
                    out.extend_from_slice(real.get(m).copied().unwrap_or(0).to_string().as_bytes())
                }
                None => out.extend_from_slice(&data[s..e]),
            }
            i = e;
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

/// A small seeded generator (SplitMix64), so a failing run can be replayed
/// from the seed it prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
