//! Pins: what keeps the memory of an array handed to Python valid.
//!
//! A read guard of the crate keeps an entry's data where it is (in RAM or
//! mapped) until it is dropped, and the budget never evicts an entry under
//! a live guard. A guard must be dropped on the thread that took it (the
//! crate keeps a per-thread registry of guards to refuse waits that would
//! never end), but Python drops an array on whatever thread lets go of it
//! last. So every guard lives on one thread of its own, the *keeper*: a
//! Python thread asks it to pin an entry and gets the data's address,
//! shape and strides; the array's base object asks it to unpin when numpy
//! frees the array.
//!
//! Python threads never hold guards themselves, so the crate's registry of
//! each Python thread stays empty and no store call of theirs ever takes a
//! guard for its own.
//!
//! The fork gate: every call into the crate (and every message the keeper
//! handles) holds [`FORK_GATE`] for reading; `os.register_at_fork`'s
//! `before` hook takes it for writing, so that no thread is inside the
//! crate (holding one of its process-wide locks) when the process forks,
//! and both sides release it after.

use std::collections::HashMap;
use std::sync::mpsc;

use ndarray_offload::{DynReadGuard, DynStoredArray, DynView, Error};
use parking_lot::{Mutex, RwLock};

/// Held for reading by every call into the crate; for writing across
/// `fork()`.
pub static FORK_GATE: RwLock<()> = RwLock::new(());

/// The keeper of this process: its process id and the way to reach it.
static KEEPER: Mutex<Option<(u32, mpsc::Sender<Msg>)>> = Mutex::new(None);

/// The element type of a pinned view (one per numpy dtype the crate maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
    C32,
    C64,
}

/// Where a pinned entry's data is, as numpy needs it.
pub struct PinInfo {
    pub id: u64,
    pub ptr: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub strides: Vec<isize>,
    pub kind: Kind,
    /// The identity of the pinned entry (the address of its array).
    pub entry: usize,
}

pub enum Msg {
    Pin(
        Box<DynStoredArray>,
        mpsc::SyncSender<Result<PinInfo, Error>>,
    ),
    Unpin(u64),
}

/// A guard and the handle it borrows from; the guard is dropped first.
struct Pinned {
    guard: Option<DynReadGuard<'static>>,
    _handle: Box<DynStoredArray>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.guard.take();
    }
}

fn describe(view: &DynView<'_>) -> (usize, Vec<usize>, Vec<isize>, Kind) {
    macro_rules! each {
        ($($v:ident),*) => {
            match view {
                $(DynView::$v(a) => (a.as_ptr() as usize, a.shape().to_vec(), a.strides().to_vec(), Kind::$v),)*
                other => unreachable!("an element type the binding does not know: {}", other.dtype()),
            }
        };
    }
    each!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64, C32, C64)
}

/// The identity of an entry: the address of its array, which lives as long
/// as any handle to the entry.
pub fn entry_id(a: &DynStoredArray) -> usize {
    macro_rules! each {
        ($($v:ident),*) => {
            match a {
                $(DynStoredArray::$v(s) => std::ptr::from_ref(s.as_array()) as usize,)*
                _ => 0,
            }
        };
    }
    each!(Bool, I8, I16, I32, I64, U8, U16, U32, U64, F32, F64, C32, C64)
}

fn run(rx: mpsc::Receiver<Msg>) {
    let mut pins: HashMap<u64, Pinned> = HashMap::new();
    let mut next: u64 = 0;
    for msg in rx {
        let _gate = FORK_GATE.read_recursive();
        match msg {
            Msg::Pin(handle, reply) => {
                let entry = entry_id(&handle);
                // SAFETY: `handle` is boxed: the `DynStoredArray` stays at
                // this address while `Pinned` owns the box (it is never moved
                // out), and `Pinned` drops the guard before the box. The
                // guard itself borrows the entry's array, in the heap
                // allocation of an `Arc` the handle keeps alive.
                let h: &'static DynStoredArray = unsafe { &*std::ptr::from_ref(handle.as_ref()) };
                let r = match h.read() {
                    Ok(guard) => {
                        let (ptr, shape, strides, kind) = describe(&guard.view());
                        next += 1;
                        pins.insert(
                            next,
                            Pinned {
                                guard: Some(guard),
                                _handle: handle,
                            },
                        );
                        Ok(PinInfo {
                            id: next,
                            ptr,
                            shape,
                            strides,
                            kind,
                            entry,
                        })
                    }
                    Err(e) => Err(e),
                };
                if let Err(mpsc::SendError(Ok(info))) = reply.send(r) {
                    // The asking thread is gone: nobody holds the pin.
                    pins.remove(&info.id);
                }
            }
            Msg::Unpin(id) => {
                pins.remove(&id);
            }
        }
    }
}

/// The keeper of this process (started on first use, and again in a forked
/// child, whose copy of the parent's keeper has no thread).
pub fn sender() -> std::io::Result<mpsc::Sender<Msg>> {
    let _gate = FORK_GATE.read_recursive();
    let pid = std::process::id();
    let mut k = KEEPER.lock();
    if let Some((p, tx)) = k.as_ref() {
        if *p == pid {
            return Ok(tx.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("ndoffload-keeper".into())
        .spawn(move || run(rx))?;
    if let Some((_, old)) = k.replace((pid, tx.clone())) {
        // The parent's keeper (this is a forked child): its thread does not
        // exist here; never touch its channel.
        std::mem::forget(old);
    }
    Ok(tx)
}

/// Pins `handle` on the keeper: its data stays where it is until
/// [`Msg::Unpin`] with the returned id.
pub fn pin(handle: DynStoredArray) -> Result<(PinInfo, mpsc::Sender<Msg>), Error> {
    let io = |e: std::io::Error| Error::Io {
        path: "ndoffload-keeper".into(),
        op: "start the keeper thread",
        source: e,
    };
    let tx = sender().map_err(io)?;
    let (rtx, rrx) = mpsc::sync_channel(1);
    let gone = || {
        io(std::io::Error::other(
            "the keeper thread stopped (a panic in the crate?)",
        ))
    };
    tx.send(Msg::Pin(Box::new(handle), rtx))
        .map_err(|_| gone())?;
    let info = rrx.recv().map_err(|_| gone())??;
    Ok((info, tx))
}
