//! The identity of the machine's current boot, which tells whether a file
//! written without `fsync` is still whole.
//!
//! A write that reached the page cache is read back whole by every process
//! until the machine goes down: a process killed with SIGKILL loses none of
//! it, a power cut or a kernel crash may lose or tear any of it. A copy in
//! the cache directory of a write committed to the object store need not
//! be durable (the object store holds the value), so a durable insert over
//! an object store publishes its local pair without syncing it and records
//! the boot it was written in (`unsynced`, the kernel's
//! `/proc/sys/kernel/random/boot_id`). A pair recorded as unsynced in
//! another boot is never read nor uploaded: it may be torn.
//!
//! Where the boot cannot be told (not Linux, or `/proc` not mounted) every
//! pair is synced before its commit, as on any local store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use parking_lot::Mutex;

/// Cache directories that tests declare rebooted: the boot they are in
/// now (see `__testing::simulate_reboot`).
static REBOOTED: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

/// The kernel's boot id, read once.
fn kernel_boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = text.trim();
        (id.len() >= 16 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| id.to_string())
    })
    .as_deref()
}

/// The boot files of the cache directory `dir` are written in now (`None`:
/// it cannot be told, and writes are synced).
pub(crate) fn current(dir: &Path) -> Option<String> {
    let rebooted = REBOOTED.lock();
    if !rebooted.is_empty() {
        if let Some(id) = rebooted.get(&key(dir)) {
            return Some(id.clone());
        }
    }
    drop(rebooted);
    kernel_boot_id().map(str::to_string)
}

/// `dir` as the map of rebooted directories names it.
fn key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Whether a file recorded as written without syncing in boot `written`
/// (`None`: synced) is whole in the cache directory `dir`.
pub(crate) fn intact(dir: &Path, written: Option<&str>) -> bool {
    match written {
        None => true,
        Some(w) => current(dir).as_deref() == Some(w),
    }
}

/// Makes `dir` read as after a reboot: pairs it recorded as unsynced until
/// now count as possibly torn (a power-cut checker restarts a node in the
/// same process).
#[cfg(feature = "testing")]
pub(crate) fn simulate_reboot(dir: &Path) {
    let id = format!("rebooted-{}", super::protocol::unique_id());
    REBOOTED.lock().insert(key(dir), id);
}
