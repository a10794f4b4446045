//! `ndoffload`: inspect ndarray-offload stores, packs and `.npy` files from
//! the command line.
//!
//! ```text
//! ndoffload ls [--json | --jsonl] [--checksum] PATH
//! ndoffload verify PATH
//! ndoffload help [COMMAND]
//! ndoffload --version
//! ```
//!
//! PATH is a store directory, a pack file, a single `.npy` file or a remote
//! store URL (`s3://bucket/prefix`; build with the `remote` feature; endpoint
//! and credentials from the `AWS_*` environment variables). The
//! inspector opens them read-only and never writes to them. `ls` prints the
//! same columns, JSON fields and totals for a directory and a URL. `verify`
//! exits with 0 when every entry is sound, 1 when an entry is bad or a file
//! named like an entry's is ignored by the store (its name is refused; for
//! an s3:// store, any object under `meta/` and `data/` that is not the
//! store's), 2 when the path cannot be opened, holds no store, or the
//! command line is wrong.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ndarray_offload::inspect::{
    active_writers, inspect_npy, inspect_pack, inspect_store, path_kind, EntryReport,
    InspectOptions, PathKind,
};
use ndarray_offload::{ByteSize, Error};
use serde_json::{json, Value};

/// Inspect ndarray-offload stores, packs and .npy files (read-only).
///
/// PATH is a store directory, a pack file, one .npy file, or a store on
/// S3-compatible object storage, s3://BUCKET/PREFIX (builds with the
/// `remote` feature). Nothing is ever written to it.
#[derive(Parser)]
#[command(name = "ndoffload", version, propagate_version = true)]
#[command(after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "Examples:
  ndoffload ls clouds/
  ndoffload ls --json --checksum tiles.pack
  ndoffload ls points.npy
  ndoffload verify clouds/
  ndoffload ls s3://my-bucket/clouds
  ndoffload help ls

Remote stores (s3://BUCKET/PREFIX) are configured by environment variables:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   credentials (AWS_SESSION_TOKEN for
                                             temporary ones); without them, on
                                             AWS only, the instance role
  AWS_DEFAULT_REGION (or AWS_REGION)         the bucket's region (us-east-1)
  AWS_ENDPOINT (or AWS_ENDPOINT_URL)         an S3-compatible server other than
                                             AWS (MinIO, Ceph, moto), e.g.
                                             http://127.0.0.1:5000
  AWS_ALLOW_HTTP=true                        needed for a plain http:// endpoint
A prefix without store objects (PREFIX/meta/, PREFIX/data/) is reported as
\"not a store\", as an empty directory is.";

#[derive(Subcommand)]
enum Command {
    /// List every entry: name, dtype, shape, size, status and attributes,
    /// then a totals line. For one .npy file: its header.
    #[command(long_about = LS_ABOUT)]
    Ls(LsArgs),
    /// Read and cross-check every entry; exit 1 if any is bad.
    ///
    /// Files of a store named like an entry's (NAME.npy, NAME.meta.json)
    /// under a name the store refuses are reported as "ignored by the
    /// store" and make verify exit 1: the store cannot see them. For an
    /// s3:// store, so are the objects under PREFIX/meta/ and PREFIX/data/
    /// that are not the store's (foreign names, sub-folders, keys with `.`,
    /// `..` or empty segments or control characters).
    Verify {
        /// A store directory, a pack file, a .npy file or a remote store
        /// URL (s3://BUCKET/PREFIX, with the `remote` feature).
        path: PathBuf,
    },
}

const LS_ABOUT: &str = "List every entry: name, dtype, shape, size, status and attributes, \
then a totals line (entries, bytes on disk, data bytes by dtype). For one .npy file: its \
header (dtype, shape, memory order, data bytes).

Output formats:
  (default)  a table for people; columns may change between versions.
  --json     one JSON document: an array with one object per entry, with the fields
             name, dtype, shape, nbytes, fortran_order, state (\"on disk\", \"in pack\",
             \"remote\" for an s3:// store, \"ignored\" or \"unreadable\"), status (\"ok\" or
             the problem), attrs (the entry's attributes, an object) and, with
             --checksum, sha256. The same fields for a directory and an s3:// URL.
  --jsonl    the same objects, one per line (JSON Lines), for streaming tools.

--checksum reads every array and prints the SHA-256 of its values in C order, element
bytes as stored: equal to Python's
  hashlib.sha256(np.ascontiguousarray(np.load(path)).tobytes()).hexdigest()
For an s3:// store it downloads every data object (checking its size and CRC-32).

The writers at work on a local store are listed after the totals, with their start
time in UTC.";

#[derive(Args)]
struct LsArgs {
    /// Print one JSON document (an array of entry objects).
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// Print one JSON object per entry and line (JSON Lines).
    #[arg(long)]
    jsonl: bool,
    /// Read every array and print the SHA-256 of its values in C order
    /// (as hashlib.sha256(np.ascontiguousarray(a).tobytes())).
    #[arg(long)]
    checksum: bool,
    /// A store directory, a pack file, a .npy file or a remote store URL
    /// (s3://BUCKET/PREFIX, with the `remote` feature; see `ndoffload
    /// --help` for its AWS_* variables).
    path: PathBuf,
}

/// What PATH is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Store,
    Pack,
    Npy,
    /// A store on object storage (`s3://...`).
    Remote,
}

/// What is at `path`, or the message to exit with. The path is opened once
/// without blocking and checked with `fstat` before anything is read (a
/// FIFO, socket or device is refused at once, never read); a symbolic link
/// given as PATH is followed.
fn kind_of(path: &Path) -> Result<Kind, String> {
    let kind = path_kind(path).map_err(|e| match e {
        Error::NotFound { .. } => format!("{}: no such file or directory", path.display()),
        e => e.to_string(),
    })?;
    if kind == PathKind::Store && !looks_like_store(path) {
        return Err(Error::NotAStore {
            location: path.display().to_string(),
            reason: format!(
                "no .npy, .meta.json or {} files",
                ndarray_offload::LOCK_FILE
            ),
        }
        .to_string());
    }
    Ok(match kind {
        PathKind::Store => Kind::Store,
        PathKind::Pack => Kind::Pack,
        _ => Kind::Npy,
    })
}

/// Whether `dir` holds any store file. A directory that cannot be listed
/// (no permission, ...) counts as one: opening it then reports why, naming
/// it, rather than calling it "not a store".
fn looks_like_store(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".npy") || n.ends_with(".meta.json") || n == ndarray_offload::LOCK_FILE
            })
        })
        .unwrap_or(true)
}

fn inspect(path: &Path, kind: Kind, read_data: bool) -> Result<Vec<EntryReport>, Error> {
    let opts = InspectOptions::new(read_data);
    match kind {
        Kind::Store => inspect_store(path, opts),
        Kind::Pack => inspect_pack(path, opts),
        Kind::Npy => inspect_npy(path, opts).map(|r| vec![r]),
        #[cfg(feature = "remote")]
        Kind::Remote => ndarray_offload::remote::inspect_remote(&path.to_string_lossy(), opts),
        #[cfg(not(feature = "remote"))]
        Kind::Remote => unreachable!("remote paths are refused without the feature"),
    }
}

/// The state of an entry: where it is, or why it cannot be used.
fn state(r: &EntryReport, kind: Kind) -> &'static str {
    if r.ignored {
        "ignored"
    } else if r.problem.is_some() {
        "unreadable"
    } else {
        match kind {
            Kind::Store => "on disk",
            Kind::Pack => "in pack",
            Kind::Npy => "file",
            Kind::Remote => "remote",
        }
    }
}

fn entry_json(r: &EntryReport, kind: Kind, checksum: bool) -> Value {
    let mut o = json!({
        "name": r.name,
        "dtype": r.dtype,
        "shape": r.shape,
        "nbytes": r.nbytes,
        "fortran_order": r.fortran_order,
        "state": state(r, kind),
        "status": r.status(),
        "attrs": Value::Object(r.attrs.clone()),
    });
    if checksum {
        o["sha256"] = json!(r.sha256);
    }
    o
}

/// Bytes the entries of `path` take where they are stored: the pack or
/// `.npy` file, or each entry's pair of files or objects.
fn bytes_stored(path: &Path, kind: Kind, reports: &[EntryReport]) -> u64 {
    match kind {
        // PATH itself may be a symbolic link to the file.
        Kind::Pack | Kind::Npy => std::fs::metadata(path).map_or(0, |m| m.len()),
        Kind::Store | Kind::Remote => reports
            .iter()
            .filter(|r| !r.ignored)
            .filter_map(|r| r.stored_bytes)
            .sum(),
    }
}

fn totals_line(path: &Path, kind: Kind, reports: &[EntryReport]) -> String {
    let mut by_dtype: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.problem.is_none()) {
        if let (Some(d), Some(n)) = (&r.dtype, r.nbytes) {
            *by_dtype.entry(d.as_str()).or_default() += n;
        }
    }
    let n = reports.iter().filter(|r| !r.ignored).count();
    let bad = reports.iter().filter(|r| r.problem.is_some()).count();
    let dtypes: Vec<String> = by_dtype
        .iter()
        .map(|(d, b)| format!("{d} {}", ByteSize::new(*b)))
        .collect();
    format!(
        "{n} {}{}, {} {}; data by dtype: {}",
        if n == 1 { "entry" } else { "entries" },
        if bad > 0 {
            format!(" ({bad} with problems)")
        } else {
            String::new()
        },
        ByteSize::new(bytes_stored(path, kind, reports)),
        if kind == Kind::Remote {
            "in the object store"
        } else {
            "on disk"
        },
        if dtypes.is_empty() {
            "-".into()
        } else {
            dtypes.join(", ")
        }
    )
}

fn print_table(out: &mut impl Write, reports: &[EntryReport], checksum: bool) {
    let shape = |r: &EntryReport| {
        r.shape
            .as_ref()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "-".into())
    };
    let attrs = |r: &EntryReport| {
        if r.attrs.is_empty() {
            String::new()
        } else {
            Value::Object(r.attrs.clone()).to_string()
        }
    };
    let w_name = reports
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let w_shape = reports
        .iter()
        .map(|r| shape(r).len())
        .max()
        .unwrap_or(0)
        .max(5);
    let any_attrs = reports.iter().any(|r| !r.attrs.is_empty());
    let _ = writeln!(
        out,
        "{:<w_name$}  {:<6} {:<w_shape$} {:>10}  STATUS{}{}",
        "NAME",
        "DTYPE",
        "SHAPE",
        "SIZE",
        if any_attrs { "  ATTRS" } else { "" },
        if checksum { "  SHA256" } else { "" },
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<w_name$}  {:<6} {:<w_shape$} {:>10}  {}{}{}",
            r.name,
            r.dtype.as_deref().unwrap_or("-"),
            shape(r),
            r.nbytes
                .map(|n| ByteSize::new(n).to_string())
                .unwrap_or_else(|| "-".into()),
            r.status(),
            if any_attrs {
                format!("  {}", attrs(r))
            } else {
                String::new()
            },
            r.sha256
                .as_ref()
                .map(|s| format!("  {s}"))
                .unwrap_or_default()
        );
    }
}

fn print_npy(out: &mut impl Write, path: &Path, r: &EntryReport) {
    let dtype = r.dtype.as_deref().unwrap_or("-");
    let _ = writeln!(out, "file    {}", path.display());
    let _ = writeln!(out, "dtype   {dtype}");
    let _ = writeln!(
        out,
        "shape   {}",
        r.shape
            .as_ref()
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|| "-".into())
    );
    let order = if r.fortran_order {
        "Fortran (column-major)"
    } else {
        "C (row-major)"
    };
    let _ = writeln!(out, "order   {order}");
    if let Some(n) = r.nbytes {
        let _ = writeln!(out, "data    {} ({n} bytes)", ByteSize::new(n));
    }
    if let Some(s) = &r.sha256 {
        let _ = writeln!(out, "sha256  {s}");
    }
    let _ = writeln!(out, "status  {}", r.status());
}

fn ls(a: &LsArgs, kind: Kind) -> Result<ExitCode, Error> {
    let reports = inspect(&a.path, kind, a.checksum)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let all: Vec<Value> = reports
            .iter()
            .map(|r| entry_json(r, kind, a.checksum))
            .collect();
        let _ = writeln!(out, "{}", Value::Array(all));
    } else if a.jsonl {
        for r in &reports {
            let _ = writeln!(out, "{}", entry_json(r, kind, a.checksum));
        }
    } else if kind == Kind::Npy {
        print_npy(&mut out, &a.path, &reports[0]);
    } else {
        print_table(&mut out, &reports, a.checksum);
        let _ = writeln!(out, "{}", totals_line(&a.path, kind, &reports));
        if kind == Kind::Store {
            // Writers at work on the store (none: nothing printed). A crate
            // folder that cannot be read hides no entry: say so.
            let writers = active_writers(&a.path).unwrap_or_else(|e| {
                eprintln!("ndoffload: writers unknown: {e}");
                Vec::new()
            });
            for w in writers {
                let _ = writeln!(out, "writer: {} (registration {})", w.describe(), w.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path, kind: Kind) -> Result<ExitCode, Error> {
    let reports = inspect(path, kind, true)?;
    let mut out = std::io::stdout().lock();
    // Ignored files are reported as bad: the store cannot see them.
    let bad: Vec<&EntryReport> = reports.iter().filter(|r| r.problem.is_some()).collect();
    for r in &bad {
        let _ = writeln!(out, "{}: {}", r.name, r.status());
    }
    if bad.is_empty() {
        let _ = writeln!(out, "{} entries, all sound", reports.len());
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Ls(a) => &a.path,
        Command::Verify { path } => path,
    };
    let target = path.to_string_lossy();
    let kind = if target.contains("://") {
        if cfg!(not(feature = "remote")) {
            eprintln!("ndoffload: {target}: remote stores need the `remote` feature (cargo install ndarray-offload --features remote)");
            return ExitCode::from(2);
        }
        Kind::Remote
    } else {
        match kind_of(path) {
            Ok(k) => k,
            Err(msg) => {
                eprintln!("ndoffload: {msg}");
                return ExitCode::from(2);
            }
        }
    };
    let r = match &cli.command {
        Command::Ls(a) => ls(a, kind),
        Command::Verify { path } => verify(path, kind),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ndoffload: {e}");
            ExitCode::from(2)
        }
    }
}
