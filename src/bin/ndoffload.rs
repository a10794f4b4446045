//! `ndoffload`: inspect ndarray-offload stores from the command line.
//!
//! ```text
//! ndoffload ls [--json] [--checksum] DIR|PACK|URL
//! ndoffload verify DIR|PACK|URL
//! ```
//!
//! `URL` is a remote store (`s3://bucket/prefix`; build with the `remote`
//! feature), its endpoint and credentials taken from the `AWS_*`
//! environment variables.
//!
//! The inspector opens stores and packs read-only and never writes to them.
//! `verify` exits with 0 when every entry is sound, 1 when an entry is bad
//! or a file named like an entry's is ignored by the store (its name is
//! refused), 2 when the store or pack cannot be opened.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ndarray_offload::inspect::{
    active_writers, inspect_pack, inspect_store, EntryReport, InspectOptions,
};
use ndarray_offload::Error;

const USAGE: &str = "usage:
  ndoffload ls [--json] [--checksum] DIR|PACK|URL   list every entry (dtype, shape, state, size, status)
  ndoffload verify DIR|PACK|URL                     read and cross-check every entry; exit 1 if any is bad

DIR is a store directory, PACK a pack file, URL a remote store
(s3://bucket/prefix; endpoint and credentials from the AWS_* environment
variables; needs the `remote` feature). All are opened read-only; nothing
is written. Files of DIR named like an entry's (NAME.npy,
NAME.meta.json) under a name the store refuses are listed with state
\"ignored\" and make verify exit 1: the store cannot see them.";

struct Args {
    cmd: String,
    json: bool,
    checksum: bool,
    dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    if cmd == "-h" || cmd == "--help" {
        return Err(String::new());
    }
    if cmd != "ls" && cmd != "verify" {
        return Err(format!("unknown command {cmd:?}"));
    }
    let (mut json, mut checksum, mut dir) = (false, false, None);
    for a in it {
        match a.as_str() {
            "--json" if cmd == "ls" => json = true,
            "--checksum" if cmd == "ls" => checksum = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s:?} for {cmd}")),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    Ok(Args {
        cmd,
        json,
        checksum,
        dir: dir.ok_or("missing DIR or PACK")?,
    })
}

/// Whether `dir` holds any store file. A directory that cannot be listed
/// (no permission, ...) counts as one: opening it then reports why, naming
/// it, rather than calling it "not a store".
fn looks_like_store(dir: &std::path::Path) -> bool {
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

fn human_size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut i = 0;
    while x >= 1024.0 && i < U.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", U[i])
    }
}

/// The STATE column: `state_ok`, "unreadable" or "ignored".
fn state<'a>(r: &EntryReport, state_ok: &'a str) -> &'a str {
    if r.ignored {
        "ignored"
    } else if r.problem.is_none() {
        state_ok
    } else {
        "unreadable"
    }
}

fn json_line(r: &EntryReport, checksum: bool, state_ok: &str) -> String {
    let mut o = serde_json::Map::new();
    o.insert("name".into(), r.name.clone().into());
    o.insert(
        "dtype".into(),
        r.dtype
            .clone()
            .map(Into::into)
            .unwrap_or(serde_json::Value::Null),
    );
    o.insert(
        "shape".into(),
        r.shape
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|&d| serde_json::Value::from(d))
                    .collect::<Vec<_>>()
                    .into()
            })
            .unwrap_or(serde_json::Value::Null),
    );
    o.insert("state".into(), state(r, state_ok).into());
    o.insert(
        "nbytes".into(),
        r.nbytes.map(Into::into).unwrap_or(serde_json::Value::Null),
    );
    o.insert("fortran_order".into(), r.fortran_order.into());
    o.insert("status".into(), r.status().into());
    if checksum {
        o.insert(
            "sha256".into(),
            r.sha256
                .clone()
                .map(Into::into)
                .unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(o).to_string()
}

fn run(args: Args) -> Result<ExitCode, Error> {
    let read_data = args.cmd == "verify" || args.checksum;
    let opts = InspectOptions { read_data };
    let is_pack = args.dir.is_file();
    let reports = if is_pack {
        inspect_pack(&args.dir, opts)?
    } else {
        inspect_store(&args.dir, opts)?
    };
    let state_ok = if is_pack { "in pack" } else { "on disk" };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.cmd == "verify" {
        // Ignored files are reported as bad: the store cannot see them.
        let bad: Vec<&EntryReport> = reports.iter().filter(|r| r.problem.is_some()).collect();
        for r in &bad {
            let _ = writeln!(out, "{}: {}", r.name, r.status());
        }
        if bad.is_empty() {
            let _ = writeln!(out, "{} entries, all sound", reports.len());
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(ExitCode::from(1));
    }
    if args.json {
        for r in &reports {
            let _ = writeln!(out, "{}", json_line(r, args.checksum, state_ok));
        }
    } else {
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<18} {:<10} {:>10}  STATUS{}",
            "NAME",
            "DTYPE",
            "SHAPE",
            "STATE",
            "SIZE",
            if args.checksum { "  SHA256" } else { "" }
        );
        for r in &reports {
            let shape = r
                .shape
                .as_ref()
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<24} {:<6} {:<18} {:<10} {:>10}  {}{}",
                r.name,
                r.dtype.as_deref().unwrap_or("-"),
                shape,
                state(r, state_ok),
                r.nbytes.map(human_size).unwrap_or_else(|| "-".into()),
                r.status(),
                r.sha256
                    .as_ref()
                    .map(|s| format!("  {s}"))
                    .unwrap_or_default()
            );
        }
    }
    // Writers at work on the store (none: nothing printed).
    if !is_pack {
        // A crate folder that cannot be read hides no entry: say so, list
        // the entries anyway.
        let writers = active_writers(&args.dir).unwrap_or_else(|e| {
            eprintln!("ndoffload: writers unknown: {e}");
            Vec::new()
        });
        for w in writers {
            if args.json {
                let line = serde_json::json!({ "writer": w });
                let _ = writeln!(out, "{line}");
            } else {
                let _ = writeln!(out, "writer: {} (registration {})", w.describe(), w.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "remote")]
fn run_remote(args: &Args, url: &str) -> Result<ExitCode, Error> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.cmd == "verify" {
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
    let entries = ndarray_offload::remote::list_entries(url)?;
    if !args.json {
        let _ = writeln!(
            out,
            "{:<24} {:<6} {:<18} {:>10}  DATA",
            "NAME", "DTYPE", "SHAPE", "SIZE"
        );
    }
    for e in &entries {
        if args.json {
            let line = serde_json::json!({
                "name": e.name, "dtype": e.dtype, "shape": e.shape,
                "size": e.size, "data": e.data,
            });
            let _ = writeln!(out, "{line}");
        } else {
            let _ = writeln!(
                out,
                "{:<24} {:<6} {:<18} {:>10}  {}",
                e.name,
                e.dtype,
                format!("{:?}", e.shape),
                human_size(e.size),
                e.data
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("ndoffload: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let target = args.dir.to_string_lossy().into_owned();
    if target.contains("://") {
        #[cfg(feature = "remote")]
        return match run_remote(&args, &target) {
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
    if !args.dir.exists() {
        eprintln!(
            "ndoffload: {}: no such file or directory",
            args.dir.display()
        );
        return ExitCode::from(2);
    }
    if args.dir.is_dir() && !looks_like_store(&args.dir) {
        eprintln!(
            "ndoffload: {}: not a store (no .npy, .meta.json or {} files)",
            args.dir.display(),
            ndarray_offload::LOCK_FILE
        );
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ndoffload: {e}");
            ExitCode::from(2)
        }
    }
}
