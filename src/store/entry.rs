//! A store entry's lifecycle: the link between an entry's array and the
//! store ([`EntryLink`], the array's [`Owner`]), attaching, publishing,
//! pinning and detaching, and the type-erased entry ([`AnyEntry`]) the
//! store keeps in its map.
//!
//! None of the lifecycle methods takes the entry's array lock: the store
//! calls them while it holds its map or the entry's slot, and a guard of any
//! thread may hold the array (see the lock order in the module
//! documentation of `store`).

use std::any::Any;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};
use parking_lot::Mutex;

use super::budget::Account;
use super::meta::{Attrs, EntryFlags};
use super::storage::{PairJob, Published, Storage, SyncMode};
use crate::array::{ArrayState, DiskBackedArray, InitialData, Owner, Snapshot, Unpublished};
use crate::config::CacheConfig;
use crate::element::Element;
use crate::error::{Error, IoContext, Result};
use crate::io::{self, FileId};
use crate::mmap::Known;
use crate::name::EntryName;
use crate::npy::NpyInfo;

/// What links an entry's array to its store: the entry's name and files,
/// whether it may publish, and the store's accounting. The array holds it
/// as its [`Owner`]; the store holds it through the entry ([`AnyEntry::link`])
/// to detach, pin or stop the entry without taking the array's lock. It
/// never points back at the array.
pub(crate) struct EntryLink {
    /// Where the store's entries live.
    storage: Arc<dyn Storage>,
    name: EntryName,
    meta_path: PathBuf,
    purge: AtomicBool,
    /// Whether the disk budget may delete the entry (`ndoffload_recomputable`).
    recomputable: bool,
    /// The store's accounting of resident bytes, while the entry belongs to
    /// the store.
    account: Arc<Account>,
    attached: AtomicBool,
    /// Whether the entry may publish into the store's files: set by the
    /// store once the entry it replaces was detached, cleared when this one
    /// is detached. Checked again at the rename, under `io::OWNERSHIP`, so
    /// that a replaced entry never overwrites its successor's files.
    publish: AtomicBool,
    /// The newest version of the entry's data renamed into its files (see
    /// `PairJob::published`).
    published: AtomicU64,
    /// The entry's file, kept open once the entry stopped publishing (it is
    /// being removed, or was replaced or detached): the entry maps this file
    /// from then on, so that it reads its own data after its name was
    /// removed or given to another entry (see [`pin`](Self::pin)).
    pinned: Mutex<Option<File>>,
    /// The data file opened when the entry was read from disk, together
    /// with its metadata (they agree), and what was read of it then: the
    /// first map uses this very file, whatever another process renamed
    /// over the name since.
    opened: Mutex<Option<(File, Option<Known>)>>,
    /// The bytes this entry adds to the store's resident bytes. Changed
    /// only under this lock, together with the store's count and only while
    /// the entry is attached, so that `detach` takes back exactly what the
    /// entry counted without waiting for the entry's lock.
    counted: Mutex<i64>,
    /// Set when an access mapped the entry from its file without the store
    /// seeing it (through a handle kept from an earlier `get`, after an
    /// eviction): the store tracks the entry again when the access ends.
    loaded_unseen: AtomicBool,
    /// Set while the entry is handed to the write-behind writers
    /// (`behind.rs`), so that it is handed over once.
    behind: AtomicBool,
    /// The user attributes written with each publish.
    attrs: Mutex<Option<Arc<Attrs>>>,
    /// Serializes the writes of the attributes to the entry's metadata
    /// (`replace_attrs`) with the look of each publish at the attributes
    /// it wrote (`settle_attrs`).
    attrs_write: Mutex<()>,
    /// The newest version of the entry's file this handle knows for sure
    /// (published by it, or read with a proven version): the file and its
    /// version token.
    version: Mutex<Option<Published>>,
}

impl EntryLink {
    fn new(
        storage: &Arc<dyn Storage>,
        name: &EntryName,
        flags: EntryFlags,
        publish: bool,
        account: Arc<Account>,
    ) -> Self {
        EntryLink {
            storage: storage.clone(),
            name: name.clone(),
            meta_path: storage.meta_path(name),
            purge: AtomicBool::new(flags.purge_on_drop),
            recomputable: flags.recomputable,
            account,
            attached: AtomicBool::new(true),
            publish: AtomicBool::new(publish),
            published: AtomicU64::new(0),
            pinned: Mutex::new(None),
            opened: Mutex::new(None),
            counted: Mutex::new(0),
            loaded_unseen: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            attrs: Mutex::new(None),
            attrs_write: Mutex::new(()),
            version: Mutex::new(None),
        }
    }

    /// Records `v` as a version of the entry's file this handle knows.
    pub(crate) fn note_version(&self, v: Published) {
        *self.version.lock() = Some(v);
    }

    /// The version token of the file `id`, if this handle knows it.
    pub(crate) fn token_of(&self, id: FileId) -> Option<Arc<str>> {
        self.version
            .lock()
            .as_ref()
            .filter(|v| v.id == id)
            .and_then(|v| v.token.clone())
    }

    /// Marks the entry as handed to the write-behind writers; `false` if it
    /// already is.
    pub(crate) fn start_write_behind(&self) -> bool {
        self.behind
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The writers are done with the entry.
    pub(crate) fn end_write_behind(&self) {
        self.behind.store(false, Ordering::Release);
    }

    /// Whether the entry still belongs to its store.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Whether the entry may publish now.
    fn may_publish(&self) -> bool {
        self.publish.load(Ordering::Acquire)
    }

    /// The publish job writing `s` as this entry's pair.
    fn job<'a>(&'a self, s: Snapshot<'a>) -> PairJob<'a> {
        PairJob {
            name: &self.name,
            shape: s.shape,
            dtype: s.dtype,
            flags: EntryFlags {
                purge_on_drop: self.purge.load(Ordering::Relaxed),
                automatic_offloading: s.automatic_offloading,
                caching: s.caching,
                recomputable: self.recomputable,
            },
            attrs: self.attrs.lock().clone(),
            publish: &self.publish,
            version: s.version,
            published: &self.published,
            write_npy: s.write_npy,
            image: s.image,
            extra: None,
            unless: None,
        }
    }

    /// Sets the user attributes written with the entry's next publishes.
    pub(crate) fn set_attrs(&self, attrs: Option<Arc<Attrs>>) {
        *self.attrs.lock() = attrs;
    }

    /// Replaces the entry's attributes with `attrs` once `write` (which
    /// writes them into the entry's pair, when it has one) succeeded.
    ///
    /// A publish already under way wrote the old attributes into its new
    /// metadata; renamed in after `write`, it would bring them back. Every
    /// publish therefore looks at the attributes once its pair is in place
    /// ([`settle_attrs`](Self::settle_attrs)), under the same lock as this.
    pub(crate) fn replace_attrs(
        &self,
        attrs: Option<Arc<Attrs>>,
        write: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let _w = self.attrs_write.lock();
        write()?;
        *self.attrs.lock() = attrs;
        Ok(())
    }

    /// After a publish whose metadata holds `with` (the attributes its job
    /// took): when the entry's attributes were replaced since, its pair may
    /// have been renamed over the replacement's metadata, and the current
    /// attributes are written into it again (durably, as `set_attrs`).
    pub(crate) fn settle_attrs(&self, with: &Option<Arc<Attrs>>) -> Result<()> {
        let _w = self.attrs_write.lock();
        let current = self.attrs.lock().clone();
        let same = current.as_ref().map(Arc::as_ptr) == with.as_ref().map(Arc::as_ptr);
        if same || !self.storage.exists(&self.name) {
            return Ok(());
        }
        let empty = Attrs::new();
        self.storage
            .set_attrs(&self.name, current.as_deref().unwrap_or(&empty))
    }

    /// Takes the entry out of its store (it was replaced or removed, or the
    /// store was closed; a handle may still hold it): it stops publishing
    /// into the store's files and counting against its budget, and, with
    /// `keep`, keeps its file open (see [`pin`](Self::pin)) so that it goes
    /// on reading its own data. Its data then stays where it is: offloading
    /// it does nothing.
    pub(crate) fn detach(&self, keep: bool) {
        if keep {
            self.pin();
        } else {
            self.stop_publish();
        }
        let was_attached = {
            // With `enable_publish` and the renames of `publish_pairs`.
            let _g = io::OWNERSHIP.lock();
            self.publish.store(false, Ordering::Release);
            self.attached.swap(false, Ordering::AcqRel)
        };
        if was_attached {
            // Whatever the entry counted, up to now (see `add_resident`).
            let mut counted = self.counted.lock();
            self.account.add_resident(-*counted);
            *counted = 0;
        }
    }

    /// Stops the entry from publishing and keeps the file now at its name
    /// open: the entry maps that file from then on (see `open_data`).
    /// Called before a removal deletes the file, and when the entry is
    /// detached.
    ///
    /// Once publishing is stopped (under `io::OWNERSHIP`, which every rename
    /// of a publish holds) no file of this entry is renamed into place any
    /// more, and no other entry publishes under its name while it is
    /// attached: the file at the name is the last one the entry published or
    /// was opened from, the only one its data can be in when it is mapped or
    /// offloaded. An entry whose data is in RAM and differs from that file
    /// never maps it (it cannot publish any more, so it stays in RAM).
    pub(crate) fn pin(&self) {
        self.stop_publish();
        let mut pinned = self.pinned.lock();
        if pinned.is_some() {
            return;
        }
        if let Ok(f) = self.storage.open_data(&self.name, io::Access::Read) {
            *pinned = Some(f);
        }
    }

    /// Closes the file [`pin`](Self::pin) kept (the removal failed).
    pub(crate) fn unpin(&self) {
        *self.pinned.lock() = None;
    }

    /// Stops the entry from publishing (it is being removed; undone by
    /// [`enable_publish`](Self::enable_publish) if the removal fails).
    pub(crate) fn stop_publish(&self) {
        let _g = io::OWNERSHIP.lock();
        self.publish.store(false, Ordering::Release);
    }

    /// Lets a new entry publish (the entry it replaces is detached).
    pub(crate) fn enable_publish(&self) {
        // Not if it was itself replaced meanwhile (see `detach`).
        let _g = io::OWNERSHIP.lock();
        if self.attached.load(Ordering::Acquire) {
            self.publish.store(true, Ordering::Release);
        }
    }
}

impl Owner for EntryLink {
    fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    fn add_resident(&self, delta: i64) {
        let mut counted = self.counted.lock();
        if self.attached.load(Ordering::Acquire) {
            *counted += delta;
            self.account.add_resident(delta);
        }
    }

    fn publish(&self, snapshot: Snapshot<'_>, spill: bool) -> Result<Option<FileId>> {
        if !self.may_publish() {
            return Ok(None);
        }
        let sync = if spill {
            SyncMode::Spill
        } else {
            SyncMode::PerFile
        };
        let job = self.job(snapshot);
        let attrs = job.attrs.clone();
        let published = self.storage.publish(vec![job], sync)?.remove(0);
        let id = published.map(|p| {
            let id = p.id;
            self.note_version(p);
            id
        });
        if id.is_some() {
            if spill {
                self.account.mark_dir_unsynced();
            }
            self.account
                .disk_published(&*self.storage, &self.name, self.recomputable);
            self.settle_attrs(&attrs)?;
        }
        Ok(id)
    }

    fn open_data(&self, access: io::Access) -> Result<(File, Option<Known>)> {
        if let Some(f) = &*self.pinned.lock() {
            return f
                .try_clone()
                .ctx("reopen", &self.storage.data_path(&self.name))
                .map(|f| (f, None));
        }
        if let Some(opened) = self.opened.lock().take() {
            if access == io::Access::Read {
                return Ok(opened);
            }
        }
        if !self.attached() {
            return Err(Error::NoFile {
                path: self.storage.data_path(&self.name),
                reason: "the store entry was replaced or removed, and its data was not kept",
            });
        }
        self.storage
            .open_data(&self.name, access)
            .map(|f| (f, None))
    }

    fn metadata_path(&self) -> &Path {
        &self.meta_path
    }

    fn mapped_unseen(&self) {
        self.loaded_unseen.store(true, Ordering::Relaxed);
    }

    /// An entry mapped by an access the store did not see goes back into the
    /// store's least-recently-used order, so that the budget can evict it
    /// again.
    fn note_loaded(&self, caching: bool) {
        if self.loaded_unseen.swap(false, Ordering::Relaxed)
            && self.attached.load(Ordering::Relaxed)
            && caching
        {
            self.account.touch(&self.name);
        }
    }

    fn guard_released(&self) {
        self.account.guard_released();
    }
}

/// A store entry: its array and the link the array publishes through.
pub(crate) struct StoreEntry<T: Element> {
    pub(crate) array: DiskBackedArray<T, IxDyn>,
    link: Arc<EntryLink>,
}

impl<T: Element> StoreEntry<T> {
    /// A new entry held in RAM (not yet written). It publishes once the
    /// store calls [`EntryLink::enable_publish`] (after detaching the entry
    /// it replaces).
    pub(crate) fn new(
        array: ArrayD<T>,
        storage: &Arc<dyn Storage>,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        account: Arc<Account>,
    ) -> Self {
        let data = InitialData::InMemory(array);
        Self::make(data, false, storage, name, flags, config, account)
    }

    /// A persisted entry, offloaded; its files are read when used. `opened`
    /// is its data file, opened when its metadata was read (the first map
    /// uses it); without it, the file at the name when it is mapped.
    pub(crate) fn persisted(
        shape: Vec<usize>,
        opened: Option<(File, Option<FileId>, Option<NpyInfo>)>,
        storage: &Arc<dyn Storage>,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        account: Arc<Account>,
    ) -> Self {
        // A persisted entry's data is the file at its name now: remember
        // which one, so that it can be kept when the name is reused.
        let (opened, id) = match opened {
            Some((f, Some(id), info)) => {
                let known = info.map(|info| Known { id, info });
                (Some((f, known)), Some(id))
            }
            Some((f, None, _)) => {
                let id = FileId::of_file(&f, &storage.data_path(name)).ok();
                (Some((f, None)), id)
            }
            None => (None, storage.stat_data(name).map(|f| f.id)),
        };
        let data = InitialData::InFile { shape, id };
        let entry = Self::make(data, true, storage, name, flags, config, account);
        *entry.link.opened.lock() = opened;
        entry
    }

    fn make(
        data: InitialData<T>,
        publish: bool,
        storage: &Arc<dyn Storage>,
        name: &EntryName,
        flags: EntryFlags,
        config: &CacheConfig,
        account: Arc<Account>,
    ) -> Self {
        let link = Arc::new(EntryLink::new(storage, name, flags, publish, account));
        let array = DiskBackedArray::owned_by(
            link.clone(),
            data,
            storage.data_path(name),
            flags.caching,
            flags.automatic_offloading,
            config,
        );
        StoreEntry { array, link }
    }
}

/// What [`AnyEntry::batch_job`] found.
pub(crate) enum BatchJob<'s> {
    /// A job writing the entry's data.
    Job(PairJob<'s>),
    /// Nothing to write (the file is current, or the entry may not publish).
    Current,
    /// Another thread holds the entry's lock exclusively (not waited for).
    Busy,
}

/// Type-erased operations on a store entry, whatever its element type. A
/// loaded entry is one `Arc<dyn AnyEntry>`, upcast to `Arc<dyn Any>` to
/// downcast it to its [`StoreEntry<T>`].
pub(crate) trait AnyEntry: Any + Send + Sync {
    fn link(&self) -> &EntryLink;
    fn offload(&self) -> Result<()>;
    fn flush(&self) -> Result<()>;
    /// For an entry whose file is not current: a publish job writing its
    /// data (holding the entry's read lock until it has written). Without
    /// `wait`, an entry another thread holds exclusively is
    /// [`BatchJob::Busy`].
    fn batch_job(&self, wait: bool) -> Result<BatchJob<'_>>;
    fn mark_published(&self, version: u64, id: FileId);
    fn state(&self) -> ArrayState;
    fn resident_bytes(&self) -> u64;
    fn dtype(&self) -> String;
    /// The flags recorded in the entry's metadata.
    fn flags(&self) -> EntryFlags;
    fn try_offload(&self) -> Result<bool>;
    fn nbytes(&self) -> u64;
    fn is_persisted(&self) -> bool;
    /// The identity of the entry's file when it holds the entry's data
    /// exactly (`None`: data not written, or the entry is busy).
    fn clean_file(&self) -> Option<FileId>;
}

impl<T: Element> AnyEntry for StoreEntry<T> {
    fn link(&self) -> &EntryLink {
        &self.link
    }
    fn offload(&self) -> Result<()> {
        self.array.offload()
    }
    fn flush(&self) -> Result<()> {
        self.array.flush()
    }
    fn batch_job(&self, wait: bool) -> Result<BatchJob<'_>> {
        if !self.link.may_publish() {
            return Ok(BatchJob::Current);
        }
        Ok(match self.array.unpublished(wait)? {
            Unpublished::Data(s) => BatchJob::Job(self.link.job(s)),
            Unpublished::Current => BatchJob::Current,
            Unpublished::Busy => BatchJob::Busy,
        })
    }
    fn mark_published(&self, version: u64, id: FileId) {
        self.array.mark_published(version, id)
    }
    fn state(&self) -> ArrayState {
        self.array.state()
    }
    fn resident_bytes(&self) -> u64 {
        self.array.resident_bytes()
    }
    fn dtype(&self) -> String {
        T::dtype()
    }
    fn flags(&self) -> EntryFlags {
        EntryFlags {
            purge_on_drop: self.link.purge.load(Ordering::Relaxed),
            automatic_offloading: self.array.automatic_offloading(),
            caching: self.array.caching(),
            recomputable: self.link.recomputable,
        }
    }
    fn try_offload(&self) -> Result<bool> {
        self.array.try_offload()
    }
    fn nbytes(&self) -> u64 {
        self.array.nbytes()
    }
    fn is_persisted(&self) -> bool {
        self.array.has_file()
    }
    fn clean_file(&self) -> Option<FileId> {
        self.array.clean_file()
    }
}

/// A loaded entry.
pub(crate) type Loaded = Arc<dyn AnyEntry>;

/// An entry of the store's map.
#[derive(Default)]
pub(crate) struct Slot {
    /// The parsed metadata, once read (entries found at open are read lazily).
    pub meta: Option<(String, Vec<usize>, EntryFlags)>,
    /// The user attributes, known with `meta`.
    pub attrs: Option<Arc<Attrs>>,
    pub loaded: Option<Loaded>,
    /// The slot was replaced or removed from the map: a lookup that found
    /// it just before looks again.
    pub retired: bool,
    /// A scratch entry: inserted through this handle with purge-on-drop,
    /// so closing the store deletes it. Never read from a file: the
    /// persisted `purge_disk_on_gc` flag (GSEGUtils' default is `true`)
    /// deletes nothing.
    pub scratch: bool,
}

/// `loaded` as the entry of element type `T`, or `None` if it has another.
pub(crate) fn downcast<T: Element>(loaded: Loaded) -> Option<Arc<StoreEntry<T>>> {
    let any: Arc<dyn Any + Send + Sync> = loaded;
    any.downcast().ok()
}

/// Marks `slot` as replaced or removed from the map (a look-up that found
/// it just before looks again) and detaches its entry from the store
/// (`keep`: keeping the entry's file open for the handles that hold it).
/// The one place where an entry leaves the store's map.
pub(crate) fn retire_slot(slot: &Mutex<Slot>, keep: bool) {
    let mut s = slot.lock();
    s.retired = true;
    if let Some(l) = &s.loaded {
        l.link().detach(keep);
    }
}

/// Runs `op` (a storage operation that removes or replaces `loaded`'s
/// files) with `loaded` stopped: it keeps its file open for its handles and
/// publishes nothing meanwhile; if `op` fails, it is as it was. The one
/// place of that protocol (removal, import).
pub(crate) fn with_entry_stopped<R>(
    loaded: Option<&Loaded>,
    op: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if let Some(l) = loaded {
        l.link().pin();
        l.link().stop_publish();
    }
    let r = op();
    if r.is_err() {
        if let Some(l) = loaded {
            l.link().unpin();
            l.link().enable_publish();
        }
    }
    r
}
