//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Root of the committed fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Python interpreter with numpy, or `None` (a test then skips, except
/// under `CI=true`, where a missing numpy fails the test).
pub fn numpy_python() -> Option<String> {
    let py = std::env::var("NDOFFLOAD_PYTHON").unwrap_or_else(|_| {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let ok = Command::new(&py)
        .args(["-c", "import numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("numpy is not importable with {py} and CI=true: interop tests must run");
    }
    eprintln!("skipped: numpy not available with {py}");
    None
}

/// Runs a Python snippet with numpy; panics with its output on failure.
pub fn run_python(py: &str, code: &str, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this process may mount file systems (root on Linux).
pub fn can_mount() -> bool {
    cfg!(target_os = "linux")
        && Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
}

/// A small tmpfs mounted for the life of the value.
pub struct Tmpfs {
    pub dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`); `None` when that is not possible.
    pub fn mount(size: &str, extra: &str) -> Option<Tmpfs> {
        if !can_mount() {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let opts = if extra.is_empty() {
            format!("size={size}")
        } else {
            format!("size={size},{extra}")
        };
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Whether CI demands that environment-dependent tests really run.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Names of the crate's temporary files in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".ndo.") && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every regular file in `dir` with its bytes, by name.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The store's files in `dir` with their bytes (everything but the lock file).
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut f = files(dir);
    f.remove(ndarray_offload::LOCK_FILE);
    f
}

/// splitmix64: a small deterministic generator for test schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What a test run in a child process did.
#[derive(Debug)]
pub struct ChildRun {
    /// Exit status (`None`: killed by the timeout).
    pub status: Option<std::process::ExitStatus>,
    /// Standard output and error, joined.
    pub output: String,
}

impl ChildRun {
    /// Whether the child exited normally with status 0 (no panic, no abort,
    /// no signal, no timeout).
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs the (usually `#[ignore]`d) test `test` of this test binary in a
/// child process with `env` set, killing it after `timeout`: a hang, an
/// abort, a stack overflow or a signal shows as a failed [`ChildRun`]
/// instead of taking the whole test run down.
pub fn run_child(
    test: &str,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: std::time::Duration,
) -> ChildRun {
    run_child_with(&[], test, env, timeout)
}

/// [`run_child`] through a wrapper command `prefix` (for example `setpriv`
/// with its options), which is given the test binary and its arguments.
pub fn run_child_with(
    prefix: &[&str],
    test: &str,
    env: &[(&str, &std::ffi::OsStr)],
    timeout: std::time::Duration,
) -> ChildRun {
    use std::io::Read;
    let out = tempfile::tempfile().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match prefix.split_first() {
        Some((wrapper, opts)) => {
            let mut c = Command::new(wrapper);
            c.args(opts).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args([
        test,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(out.try_clone().unwrap())
    .stderr(out.try_clone().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let mut output = String::new();
    let mut out = out;
    use std::io::Seek;
    out.seek(std::io::SeekFrom::Start(0)).unwrap();
    let _ = out.read_to_string(&mut output);
    ChildRun { status, output }
}

/// Enforces `s`'s memory budget now (setting it again enforces it).
pub fn enforce_budget(s: &ndarray_offload::DiskBackedStore) {
    s.set_memory_budget(s.stats().budget.map(ndarray_offload::ByteSize::from));
}

/// Opens a store over the remote prefix `url` with `cache` as its cache
/// directory (read-only when `options` are offline).
#[cfg(feature = "remote")]
pub fn open_remote(
    url: &str,
    cache: impl AsRef<Path>,
    options: ndarray_offload::remote::RemoteOptions,
) -> ndarray_offload::Result<ndarray_offload::DiskBackedStore> {
    let offline = options.offline;
    ndarray_offload::StoreBuilder::new(cache.as_ref())
        .remote_with(url, options)
        .read_only(offline)
        .open()
}

/// As [`open_remote`], with a disk budget on the cache directory.
#[cfg(feature = "remote")]
pub fn open_remote_budget(
    url: &str,
    cache: impl AsRef<Path>,
    options: ndarray_offload::remote::RemoteOptions,
    disk_budget: u64,
) -> ndarray_offload::Result<ndarray_offload::DiskBackedStore> {
    ndarray_offload::StoreBuilder::new(cache.as_ref())
        .remote_with(url, options)
        .disk_budget(disk_budget)
        .open()
}

/// The object store's counters of a store over one.
#[cfg(feature = "remote")]
pub fn remote_stats(s: &ndarray_offload::DiskBackedStore) -> ndarray_offload::RemoteStats {
    s.stats().remote.expect("a store over an object store")
}
