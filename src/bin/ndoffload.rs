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
//! inspector opens them read-only and never writes to them. `verify` exits
//! with 0 when every entry is sound, 1 when an entry is bad or a file named
//! like an entry's is ignored by the store (its name is refused), 2 when
//! the path cannot be opened or the command line is wrong.

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
/// PATH is a store directory, a pack file or one .npy file. Nothing is
/// ever written to it.
#[derive(Parser)]
#[command(name = "ndoffload", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  ndoffload ls clouds/\n  ndoffload ls --json --checksum tiles.pack\n  ndoffload ls points.npy\n  ndoffload verify clouds/\n  ndoffload help ls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    /// store" and make verify exit 1: the store cannot see them.
    Verify {
        /// A store directory, a pack file or a .npy file.
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
             \"ignored\" or \"unreadable\"), status (\"ok\" or the problem), attrs (the
             entry's attributes, an object) and, with --checksum, sha256.
  --jsonl    the same objects, one per line (JSON Lines), for streaming tools.

--checksum reads every array and prints the SHA-256 of its values in C order, element
bytes as stored: equal to Python's
  hashlib.sha256(np.ascontiguousarray(np.load(path)).tobytes()).hexdigest()";

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
    /// (s3://bucket/prefix, with the `remote` feature).
    path: PathBuf,
}

/// What is at `path`, or the message to exit with. The path is opened once
/// without blocking and checked with `fstat` before anything is read (a
/// FIFO, socket or device is refused at once, never read); a symbolic link
/// given as PATH is followed.
fn kind_of(path: &Path) -> Result<PathKind, String> {
    let kind = path_kind(path).map_err(|e| match e {
        Error::NotFound { .. } => format!("{}: no such file or directory", path.display()),
        e => e.to_string(),
    })?;
    if kind == PathKind::Store && !looks_like_store(path) {
        return Err(format!(
            "{}: not a store (no .npy, .meta.json or {} files)",
            path.display(),
            ndarray_offload::LOCK_FILE
        ));
    }
    Ok(kind)
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

fn inspect(path: &Path, kind: PathKind, read_data: bool) -> Result<Vec<EntryReport>, Error> {
    let opts = InspectOptions::new(read_data);
    match kind {
        PathKind::Store => inspect_store(path, opts),
        PathKind::Pack => inspect_pack(path, opts),
        PathKind::Npy => inspect_npy(path, opts).map(|r| vec![r]),
    }
}

/// The state of an entry: where it is, or why it cannot be used.
fn state(r: &EntryReport, kind: PathKind) -> &'static str {
    if r.ignored {
        "ignored"
    } else if r.problem.is_some() {
        "unreadable"
    } else {
        match kind {
            PathKind::Store => "on disk",
            PathKind::Pack => "in pack",
            PathKind::Npy => "file",
        }
    }
}

fn entry_json(r: &EntryReport, kind: PathKind, checksum: bool) -> Value {
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

/// Bytes the files of `path` take: the pack or `.npy` file, or each
/// entry's pair.
fn bytes_on_disk(path: &Path, kind: PathKind, reports: &[EntryReport]) -> u64 {
    let len = |p: PathBuf| std::fs::symlink_metadata(p).map_or(0, |m| m.len());
    match kind {
        // PATH itself may be a symbolic link to the file.
        PathKind::Pack | PathKind::Npy => std::fs::metadata(path).map_or(0, |m| m.len()),
        PathKind::Store => reports
            .iter()
            .filter(|r| !r.ignored)
            .map(|r| {
                len(path.join(format!("{}.npy", r.name)))
                    + len(path.join(format!("{}.meta.json", r.name)))
            })
            .sum(),
    }
}

fn totals_line(path: &Path, kind: PathKind, reports: &[EntryReport]) -> String {
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
        "{n} {}{}, {} on disk; data by dtype: {}",
        if n == 1 { "entry" } else { "entries" },
        if bad > 0 {
            format!(" ({bad} with problems)")
        } else {
            String::new()
        },
        ByteSize::new(bytes_on_disk(path, kind, reports)),
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

fn ls(a: &LsArgs, kind: PathKind) -> Result<ExitCode, Error> {
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
    } else if kind == PathKind::Npy {
        print_npy(&mut out, &a.path, &reports[0]);
    } else {
        print_table(&mut out, &reports, a.checksum);
        let _ = writeln!(out, "{}", totals_line(&a.path, kind, &reports));
        if kind == PathKind::Store {
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

fn verify(path: &Path, kind: PathKind) -> Result<ExitCode, Error> {
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

/// `ls` and `verify` of a remote store (`s3://bucket/prefix`).
#[cfg(feature = "remote")]
fn run_remote(command: &Command, url: &str) -> Result<ExitCode, Error> {
    let mut out = std::io::stdout().lock();
    let a = match command {
        Command::Verify { .. } => {
            let results = ndarray_offload::remote::verify(url)?;
            let mut bad = 0;
            for (name, r) in &results {
                if let Err(e) = r {
                    bad += 1;
                    let _ = writeln!(out, "{name}: {e}");
                }
            }
            if bad == 0 {
                let _ = writeln!(out, "{} entries, all sound", results.len());
                return Ok(ExitCode::SUCCESS);
            }
            return Ok(ExitCode::from(1));
        }
        Command::Ls(a) => a,
    };
    let entries = ndarray_offload::remote::list_entries(url)?;
    let objects: Vec<Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name, "dtype": e.dtype, "shape": e.shape,
                "size": e.size, "data": e.data,
            })
        })
        .collect();
    if a.json {
        let _ = writeln!(out, "{}", Value::Array(objects));
    } else if a.jsonl {
        for o in &objects {
            let _ = writeln!(out, "{o}");
        }
    } else {
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<18} {:>10}  DATA",
            "NAME", "DTYPE", "SHAPE", "SIZE"
        );
        for e in &entries {
            let _ = writeln!(
                out,
                "{:<24} {:<6} {:<18} {:>10}  {}",
                e.name,
                e.dtype,
                format!("{:?}", e.shape),
                ByteSize::new(e.size).to_string(),
                e.data
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Ls(a) => &a.path,
        Command::Verify { path } => path,
    };
    let target = path.to_string_lossy();
    if target.contains("://") {
        #[cfg(feature = "remote")]
        return match run_remote(&cli.command, &target) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ndoffload: {e}");
                ExitCode::from(2)
            }
        };
        #[cfg(not(feature = "remote"))]
        {
            eprintln!("ndoffload: {target}: remote stores need the `remote` feature (cargo install ndarray-offload --features remote)");
            return ExitCode::from(2);
        }
    }
    let kind = match kind_of(path) {
        Ok(k) => k,
        Err(msg) => {
            eprintln!("ndoffload: {msg}");
            return ExitCode::from(2);
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
