//! Sharded packs: one stream of samples written into several packs by
//! parallel threads, read back as one stream.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::codec::Compression;
use super::entry::PackEntry;
use super::key::PackKey;
use super::reader::PackReader;
use super::sample::Sample;
use super::writer::PackWriter;
use crate::error::{Error, IoContext, Result};
use crate::io::{parent_dir, publish, TempFile};

/// Name of the manifest format written by [`ShardWriter`].
const MANIFEST_FORMAT: &str = "ndarray-offload pack set";
/// The largest manifest read (a few hundred bytes per shard).
const MANIFEST_LIMIT: u64 = 16 << 20;
/// Version of the manifest format.
const MANIFEST_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    entries: u64,
    shards: Vec<String>,
}

/// Writes a stream of samples into several packs at once, one writer thread
/// per shard, and publishes them together with a small JSON manifest
/// (`<name>.packset.json`) that [`PackSet::open`] reads.
///
/// Samples are dealt to the shards round-robin, so shard `s` holds samples
/// `s, s + n, s + 2n, ...` of the stream; [`PackSet::iter`] deals them back
/// in the original order. Keys must be unique across the whole stream.
///
/// The shard files are renamed into place only after every shard has been
/// written and `fsync`ed, and the manifest is published last: a set is
/// visible through its manifest completely or not at all. If writing fails,
/// no shard is published and every temporary file is removed. Threads other
/// than the caller's do not see a fault plan installed for tests.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Ix1};
/// use ndarray_offload::pack::{PackKey, PackSet, Sample, ShardWriter};
///
/// let dir = tempfile::tempdir().unwrap();
/// let stream = (0..100u64).map(|i| {
///     let s = Sample::new().with_array("x", &array![i as f32]).unwrap();
///     (PackKey::from(i), s)
/// });
/// let set = ShardWriter::new(dir.path(), "train").shards(4).write(stream)?;
/// assert_eq!(set.len(), 100);
///
/// let set = PackSet::open(dir.path().join("train.packset.json"))?;
/// let firsts: Vec<f32> = set
///     .iter()
///     .map(|e| e.and_then(|e| Ok(e.array("x")?.get::<f32, Ix1>()?[0])))
///     .collect::<Result<_, _>>()?;
/// assert_eq!(firsts, (0..100).map(|i| i as f32).collect::<Vec<_>>());
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    shards: usize,
    compression: Compression,
    queue: usize,
}

impl ShardWriter {
    /// A writer of the set `name` in directory `dir`, with as many shards
    /// as the machine has cores (at least 2) and no compression.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn new(dir: impl AsRef<Path>, name: impl Into<String>) -> Self {
        ShardWriter {
            dir: dir.as_ref().to_path_buf(),
            name: name.into(),
            shards: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
            compression: Compression::None,
            queue: 64,
        }
    }

    /// Sets the number of shards (and writer threads); at least 1.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }

    /// Sets the compression of every entry.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{Compression, ShardWriter};
    /// let w = ShardWriter::new(".", "set").compression(Compression::None);
    /// # let _ = w;
    /// ```
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// The path of shard `i` of `n`.
    fn shard_file(&self, i: usize, n: usize) -> String {
        format!("{}-{:05}-of-{:05}.pack", self.name, i, n)
    }

    /// The manifest path.
    fn manifest_path(&self) -> PathBuf {
        self.dir.join(format!("{}.packset.json", self.name))
    }

    /// Writes `samples` into the shards and publishes the set; returns it
    /// opened for reading.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a key repeated anywhere in the stream or
    /// an invalid set name; [`Error::Unsupported`] for an unavailable
    /// compression; I/O errors. On error nothing is published.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn write<K, I>(&self, samples: I) -> Result<PackSet>
    where
        K: Into<PackKey<'static>>,
        I: IntoIterator<Item = (K, Sample)>,
    {
        let manifest_path = self.manifest_path();
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name.starts_with('.') {
            return Err(Error::InvalidInput {
                path: manifest_path,
                reason: format!("invalid pack set name {:?}", self.name),
            });
        }
        let n = self.shards;
        let files: Vec<String> = (0..n).map(|i| self.shard_file(i, n)).collect();
        let prepared: Vec<(TempFile, PathBuf, usize)> = std::thread::scope(|s| {
            let mut senders = Vec::with_capacity(n);
            let mut handles = Vec::with_capacity(n);
            for f in &files {
                let (tx, rx) = mpsc::sync_channel::<(PackKey<'static>, Sample)>(self.queue);
                let path = self.dir.join(f);
                let c = self.compression;
                let plan = crate::io::current_plan();
                handles.push(s.spawn(move || -> Result<(TempFile, PathBuf, usize)> {
                    let _plan = crate::io::adopt_plan(plan);
                    let mut w = PackWriter::create(&path)?;
                    w.set_compression(c)?;
                    for (k, sample) in rx {
                        w.append_sample(k, &sample)?;
                    }
                    let tmp = w.prepare()?;
                    Ok((tmp, path, w.len()))
                }));
                senders.push(tx);
            }
            let mut seen: HashSet<PackKey<'static>> = HashSet::new();
            let mut dup = None;
            for (i, (k, sample)) in samples.into_iter().enumerate() {
                let k: PackKey<'static> = k.into();
                if !seen.insert(k.clone()) {
                    dup = Some(k);
                    break;
                }
                if senders[i % n].send((k, sample)).is_err() {
                    break; // that writer failed; its error is reported below
                }
            }
            drop(senders);
            let results: Vec<Result<(TempFile, PathBuf, usize)>> = handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::InvalidInput {
                            path: manifest_path.clone(),
                            reason: "a shard writer thread panicked".into(),
                        })
                    })
                })
                .collect();
            if let Some(k) = dup {
                return Err(Error::InvalidInput {
                    path: manifest_path.clone(),
                    reason: format!("duplicate key {k:?} in the sample stream"),
                });
            }
            results.into_iter().collect::<Result<Vec<_>>>()
        })?;
        let total: usize = prepared.iter().map(|p| p.2).sum();
        for (tmp, path, _) in prepared {
            tmp.rename_to(&path)?;
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            entries: total as u64,
            shards: files,
        };
        // Publishing the manifest fsyncs the directory, which also makes
        // the shard renames above durable.
        publish(&manifest_path, false, |w| {
            serde_json::to_writer_pretty(&mut *w, &manifest)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"))
                .ctx("write", &manifest_path)
        })?;
        PackSet::open(&manifest_path)
    }
}

/// A set of packs written by [`ShardWriter`], read as one stream.
///
/// `PackSet` is `Send + Sync`; [`shards`](PackSet::shards) gives the
/// individual readers for reading them in parallel threads.
///
/// # Examples
///
/// See [`ShardWriter`].
#[derive(Debug)]
pub struct PackSet {
    path: PathBuf,
    shards: Vec<PackReader>,
}

impl PackSet {
    /// Opens the set described by the manifest at `path`
    /// (`<name>.packset.json`), opening every shard.
    ///
    /// # Errors
    ///
    /// I/O errors; [`Error::Corrupt`] for an unreadable manifest or a shard
    /// count that disagrees with it; any error of [`PackReader::open`].
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let text = crate::io::read_bounded(&path, MANIFEST_LIMIT)?;
        crate::depth::check_json(&text, crate::depth::MAX_JSON_DEPTH)
            .map_err(|e| Error::corrupt(&path, format!("pack set manifest: {e}")))?;
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| Error::corrupt(&path, format!("pack set manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::corrupt(&path, "not a pack set manifest"));
        }
        if m.version != MANIFEST_VERSION {
            return Err(Error::Unsupported {
                path,
                reason: format!("pack set manifest version {}", m.version),
            });
        }
        let dir = parent_dir(&path);
        let mut shards = Vec::with_capacity(m.shards.len());
        for f in &m.shards {
            if f.contains(['/', '\\']) || f.starts_with('.') {
                return Err(Error::corrupt(&path, format!("bad shard name {f:?}")));
            }
            shards.push(PackReader::open(dir.join(f))?);
        }
        let total: u64 = shards.iter().map(|s| s.len() as u64).sum();
        if total != m.entries {
            return Err(Error::corrupt(
                &path,
                format!("manifest lists {} entries, shards hold {total}", m.entries),
            ));
        }
        Ok(PackSet { path, shards })
    }

    /// The manifest path.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shards, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{PackKey, Sample, ShardWriter};
    /// let dir = tempfile::tempdir().unwrap();
    /// let stream = (0..10u64).map(|i| (PackKey::from(i), Sample::new()));
    /// let set = ShardWriter::new(dir.path(), "s").shards(3).write(stream)?;
    /// let sizes: Vec<usize> = set.shards().iter().map(|s| s.len()).collect();
    /// assert_eq!(sizes, [4, 3, 3]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn shards(&self) -> &[PackReader] {
        &self.shards
    }

    /// Total number of entries.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether the set holds no entry.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{PackKey, Sample, ShardWriter};
    /// let dir = tempfile::tempdir().unwrap();
    /// let set = ShardWriter::new(dir.path(), "e").write(std::iter::empty::<(PackKey, Sample)>())?;
    /// assert!(set.is_empty());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry holding `key`, searched in every shard.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`]; errors of [`PackReader::entry`].
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{PackKey, Sample, ShardWriter};
    /// let dir = tempfile::tempdir().unwrap();
    /// let stream = (0..10u64).map(|i| (PackKey::from(i), Sample::new()));
    /// let set = ShardWriter::new(dir.path(), "s").shards(3).write(stream)?;
    /// assert_eq!(set.entry(7u64)?.key(), &PackKey::from(7u64));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn entry<'k>(&self, key: impl Into<PackKey<'k>>) -> Result<PackEntry<'_>> {
        let key = key.into();
        for s in &self.shards {
            match s.entry(&key) {
                Err(Error::KeyNotFound { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::KeyNotFound {
            name: key.to_string(),
            path: self.path.clone(),
        })
    }

    /// Every entry, in the order of the stream that was written.
    ///
    /// # Examples
    ///
    /// See [`ShardWriter`].
    pub fn iter(&self) -> impl Iterator<Item = Result<PackEntry<'_>>> + '_ {
        let n = self.shards.len();
        let total = self.len();
        (0..total).map(move |i| self.shards[i % n].entry_at(i / n))
    }

    /// Verifies every shard ([`PackReader::verify`]).
    ///
    /// # Errors
    ///
    /// The first problem found.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::{PackKey, Sample, ShardWriter};
    /// let dir = tempfile::tempdir().unwrap();
    /// let stream = (0..10u64).map(|i| (PackKey::from(i), Sample::new()));
    /// ShardWriter::new(dir.path(), "s").write(stream)?.verify()?;
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn verify(&self) -> Result<()> {
        self.shards.iter().try_for_each(|s| s.verify().map(|_| ()))
    }
}
