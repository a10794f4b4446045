//! The `ndoffload` inspector.

use std::process::Command;

use ndarray::{array, Array2};
use ndarray_offload::DiskBackedStore;

use crate::common::{files, numpy_python, run_python, sha256_hex};

fn ndoffload(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ndoffload"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ls_json_checksum_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let pts = Array2::<f32>::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32);
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert("pts", pts.clone()).unwrap();
        s.insert("fort", pts.t().to_owned()).unwrap();
        s.insert("flags", array![true, false]).unwrap();
        s.close().unwrap();
    }
    let before = files(dir.path());
    let d = dir.path().to_str().unwrap();

    let (code, out, _) = ndoffload(&["ls", d]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pts") && out.contains("<f4") && out.contains("[4, 3]"),
        "{out}"
    );

    let (code, out, _) = ndoffload(&["ls", "--json", "--checksum", d]);
    assert_eq!(code, 0);
    let lines = json_array(&out);
    assert_eq!(lines.len(), 3);
    let (code, jsonl, _) = ndoffload(&["ls", "--jsonl", "--checksum", d]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&jsonl), lines, "--jsonl holds the same objects");
    let pts_line = lines.iter().find(|l| l["name"] == "pts").unwrap();
    assert_eq!(pts_line["dtype"], "<f4");
    assert_eq!(pts_line["shape"], serde_json::json!([4, 3]));
    assert_eq!(pts_line["status"], "ok");
    let c: Vec<u8> = pts.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(pts_line["sha256"], sha256_hex(&c).as_str());
    let fort_line = lines.iter().find(|l| l["name"] == "fort").unwrap();
    let t: Vec<u8> = pts
        .t()
        .as_standard_layout()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(fort_line["sha256"], sha256_hex(&t).as_str());

    if let Some(py) = numpy_python() {
        let code = r#"
import sys, hashlib, numpy as np
for k in sys.argv[2:]:
    a = np.load(sys.argv[1] + '/' + k + '.npy')
    print(k, hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest())
"#;
        let py_out = run_python(&py, code, &[d, "pts", "fort", "flags"]);
        for l in py_out.lines() {
            let (k, h) = l.split_once(' ').unwrap();
            let line = lines.iter().find(|x| x["name"] == k).unwrap();
            assert_eq!(line["sha256"], h, "{k}");
        }
    }

    let (code, out, _) = ndoffload(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(files(dir.path()), before, "the inspector never writes");

    // Break two entries.
    std::fs::write(dir.path().join("flags.npy"), b"\x93NUMPY garbage").unwrap();
    std::fs::remove_file(dir.path().join("fort.meta.json")).unwrap();
    let (code, out, _) = ndoffload(&["verify", d]);
    assert_eq!(code, 1);
    let bad: Vec<&str> = out.lines().collect();
    assert_eq!(bad.len(), 2, "{out}");
    assert!(bad.iter().any(|l| l.starts_with("flags: ")), "{out}");
    assert!(
        bad.iter()
            .any(|l| l.starts_with("fort: ") && l.contains("incomplete")),
        "{out}"
    );
    let (code, out, _) = ndoffload(&["ls", "--json", d]);
    assert_eq!(code, 0);
    assert!(json_array(&out)
        .iter()
        .any(|l| l["name"] == "flags" && l["status"] != "ok"));
}

/// The entries of `ls --json`: one JSON document, an array.
fn json_array(out: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(out.trim()).unwrap() {
        serde_json::Value::Array(a) => a,
        other => panic!("not an array: {other}"),
    }
}

/// The entries of `ls --jsonl`: one object per line.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn clear_messages_for_bad_directories() {
    let (code, _, err) = ndoffload(&["ls", "/nonexistent/store"]);
    assert_eq!(code, 2);
    assert!(err.contains("no such file or directory"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    let (code, _, err) = ndoffload(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not a store"), "{err}");
    let (code, _, err) = ndoffload(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'"),
        "{err}"
    );
    let (code, _, err) = ndoffload(&["ls", "--jsn", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--json"), "suggests the option: {err}");
    let (code, out, _) = ndoffload(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ndoffload ls") && out.contains("verify"),
        "{out}"
    );
}

#[test]
fn version_and_help_follow_conventions() {
    for flag in ["--version", "-V"] {
        let (code, out, _) = ndoffload(&[flag]);
        assert_eq!(code, 0);
        assert_eq!(
            out.trim(),
            format!("ndoffload {}", env!("CARGO_PKG_VERSION"))
        );
    }
    let (code, help_ls, _) = ndoffload(&["help", "ls"]);
    assert_eq!(code, 0);
    let (_, ls_help, _) = ndoffload(&["ls", "--help"]);
    assert_eq!(help_ls, ls_help);
    for needle in [
        "--json",
        "--jsonl",
        "--checksum",
        "hashlib.sha256(np.ascontiguousarray",
    ] {
        assert!(
            help_ls.contains(needle),
            "{needle} missing from:\n{help_ls}"
        );
    }
    let (code, out, _) = ndoffload(&["verify", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("exit 1"), "{out}");
    let (code, _, err) = ndoffload(&["ls", "--json", "--jsonl", "x"]);
    assert_eq!(code, 2, "the two formats exclude each other: {err}");
}

#[test]
fn ls_shows_totals_attributes_and_no_constant_columns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = DiskBackedStore::open(dir.path()).unwrap();
        s.insert_opts(
            "tile",
            Array2::<f64>::zeros((4, 3)),
            &ndarray_offload::InsertOptions::new().attrs(serde_json::json!({"crs": "EPSG:2056"})),
        )
        .unwrap();
        s.insert("labels", array![1u8, 0, 1, 1]).unwrap();
        s.insert("more", Array2::<f64>::zeros((2, 2))).unwrap();
        s.close().unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let (code, out, _) = ndoffload(&["ls", d]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines[0].contains("STATE"), "{out}");
    assert!(!out.contains("on disk\u{20}\u{20}"), "{out}");
    assert!(lines[0].contains("ATTRS"), "{out}");
    let tile = lines.iter().find(|l| l.starts_with("tile ")).unwrap();
    assert!(tile.contains(r#"{"crs":"EPSG:2056"}"#), "{out}");
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != ndarray_offload::LOCK_FILE)
        .filter(|e| e.file_name() != ndarray_offload::CRATE_DIR)
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let total = lines.last().unwrap();
    assert_eq!(
        *total,
        format!(
            "3 entries, {} on disk; data by dtype: <f8 128 B, |u1 4 B",
            ndarray_offload::ByteSize::new(on_disk)
        )
    );
    let (_, out, _) = ndoffload(&["ls", "--json", d]);
    let v = json_array(&out);
    let tile = v.iter().find(|l| l["name"] == "tile").unwrap();
    assert_eq!(tile["attrs"]["crs"], "EPSG:2056");
    assert_eq!(
        v.iter().find(|l| l["name"] == "labels").unwrap()["attrs"],
        serde_json::json!({})
    );
}

#[test]
fn ls_of_one_npy_file_shows_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("points.npy");
    let a = Array2::<f32>::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f32);
    ndarray_npy::write_npy(&path, &a.t()).unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = ndoffload(&["ls", "--checksum", p]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("not a pack"), "{out}");
    assert!(out.contains("dtype   <f4"), "{out}");
    assert!(out.contains("shape   [3, 5]"), "{out}");
    assert!(out.contains("order   Fortran"), "{out}");
    let c: Vec<u8> = a.t().iter().flat_map(|x| x.to_le_bytes()).collect();
    assert!(
        out.contains(&format!("sha256  {}", sha256_hex(&c))),
        "{out}"
    );
    let (code, out, _) = ndoffload(&["ls", "--json", p]);
    assert_eq!(code, 0);
    let v = json_array(&out);
    assert_eq!(v[0]["fortran_order"], true);
    let (code, out, _) = ndoffload(&["verify", p]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn packs_are_listed_and_verified() {
    use ndarray_offload::pack::{PackWriter, Sample};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiles.pack");
    let a = Array2::<f32>::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f32);
    let mut w = PackWriter::create(&path).unwrap();
    w.append("t0", &a).unwrap();
    w.append_sample(
        "s1",
        &Sample::new()
            .with_array("xyz", &a)
            .unwrap()
            .with_array("label", &array![1u8, 0])
            .unwrap(),
    )
    .unwrap();
    w.finish().unwrap();
    let p = path.to_str().unwrap();
    let (code, out, err) = ndoffload(&["ls", "--json", "--checksum", p]);
    assert_eq!(code, 0, "{err}");
    let lines = json_array(&out);
    assert_eq!(lines.len(), 3);
    let c: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
    let t0 = lines.iter().find(|l| l["name"] == "t0").unwrap();
    assert_eq!(t0["sha256"], sha256_hex(&c).as_str());
    assert_eq!(t0["shape"], serde_json::json!([5, 3]));
    assert!(lines
        .iter()
        .any(|l| l["name"] == "s1/label" && l["dtype"] == "|u1"));
    let (code, out, _) = ndoffload(&["verify", p]);
    assert_eq!(code, 0, "{out}");
    // Corrupt the first payload byte (t0's data starts at offset 64):
    // verify names the entry and fails.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[64] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, err) = ndoffload(&["verify", p]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("t0: ") && out.contains("checksum"), "{out}");
    let junk = dir.path().join("junk.pack");
    std::fs::write(&junk, b"not a pack").unwrap();
    let (code, _, err) = ndoffload(&["ls", junk.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("junk.pack"), "{err}");
}

/// Files named like an entry's under names the store refuses are no
/// entries (the store ignores them, as GSEGUtils does), but the inspector
/// does not call the directory sound: `verify` names each with the reason
/// and exits 1, `ls` lists them as "ignored". The store still ignores them.
#[test]
fn verify_and_ls_report_files_the_store_ignores() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    DiskBackedStore::open(dir.path())
        .unwrap()
        .insert_durable("ok", array![1u8, 2])
        .unwrap();
    let (code, out, _) = ndoffload(&["verify", d]);
    assert_eq!(code, 0, "{out}");
    let npy = std::fs::read(dir.path().join("ok.npy")).unwrap();
    let meta = std::fs::read(dir.path().join("ok.meta.json")).unwrap();
    let long = "x".repeat(201);
    let stems: Vec<&[u8]> = vec![b"CON", long.as_bytes(), b"a\nb", b"bad\xff", b"a ", b""];
    for stem in &stems {
        for (suffix, bytes) in [(&b".npy"[..], &npy), (b".meta.json", &meta)] {
            let name = [*stem, suffix].concat();
            std::fs::write(dir.path().join(std::ffi::OsStr::from_bytes(&name)), bytes).unwrap();
        }
    }
    // Half a pair under a refused name is reported too.
    std::fs::write(dir.path().join("lpt1.meta.json"), &meta).unwrap();
    let before = files(dir.path());

    let (code, out, err) = ndoffload(&["verify", d]);
    assert_eq!(code, 1, "{out}{err}");
    let expect = [
        ("CON", "Windows device name"),
        (long.as_str(), "longer than 200 bytes"),
        ("a\\x0ab", "control character"),
        ("bad\\xff", "not UTF-8"),
        ("a ", "trailing space or dot"),
        ("", "empty or reserved path name"),
        ("lpt1", "Windows device name"),
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        expect.len(),
        "one line per ignored name:\n{out}"
    );
    for (name, reason) in expect {
        assert!(
            lines.iter().any(
                |l| l.starts_with(&format!("{name}: ignored by the store: ")) && l.contains(reason)
            ),
            "{name:?} ({reason}) not reported:\n{out}"
        );
    }

    let (code, out, _) = ndoffload(&["ls", d]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains(" ignored ")).count(),
        expect.len(),
        "{out}"
    );
    let (code, out, _) = ndoffload(&["ls", "--jsonl", d]);
    assert_eq!(code, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), expect.len() + 1);
    for l in &lines {
        let want = if l["name"] == "ok" {
            "on disk"
        } else {
            "ignored"
        };
        assert_eq!(l["state"], want, "{l}");
    }
    assert_eq!(files(dir.path()), before, "the inspector never writes");

    // The store's listing is unchanged: only the valid entry.
    let s = DiskBackedStore::open_read_only(dir.path()).unwrap();
    assert_eq!(s.keys().len(), 1);
    assert!(s.incomplete().is_empty());
}

/// Runs `ndoffload` once per argument list, all at once, killing any still
/// running after `timeout`. Returns `(exit code, stdout, stderr)` per run,
/// `None` for a run that had to be killed.
fn ndoffload_all(
    runs: &[Vec<String>],
    timeout: std::time::Duration,
) -> Vec<Option<(i32, String, String)>> {
    use std::io::{Read, Seek};
    let mut children: Vec<_> = runs
        .iter()
        .map(|args| {
            let out = tempfile::tempfile().unwrap();
            let err = tempfile::tempfile().unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_ndoffload"))
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(err.try_clone().unwrap())
                .spawn()
                .unwrap();
            (child, out, err, None)
        })
        .collect();
    let start = std::time::Instant::now();
    loop {
        let mut running = 0;
        for (child, _, _, status) in children.iter_mut() {
            if status.is_none() {
                match child.try_wait().unwrap() {
                    Some(s) => *status = Some(s),
                    None => running += 1,
                }
            }
        }
        if running == 0 || start.elapsed() > timeout {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    children
        .into_iter()
        .map(|(mut child, mut out, mut err, status)| {
            let Some(status) = status else {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            };
            let read = |f: &mut std::fs::File| {
                let mut s = String::new();
                f.seek(std::io::SeekFrom::Start(0)).unwrap();
                f.read_to_string(&mut s).unwrap();
                s
            };
            Some((status.code().unwrap_or(-1), read(&mut out), read(&mut err)))
        })
        .collect()
}

/// A FIFO, a socket, a character device or a symbolic link to a FIFO given
/// as PATH is refused at once, naming the path and what it is: never a
/// hang on an open or a read, never an unbounded read.
#[test]
fn paths_that_are_no_file_or_directory_are_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo failed");
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let link = dir.path().join("link-to-fifo.npy");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let cases = [
        (fifo.clone(), "a FIFO"),
        (sock.clone(), "a socket"),
        ("/dev/null".into(), "a character device"),
        (link.clone(), "a FIFO"),
    ];
    let commands: [&[&str]; 4] = [
        &["ls"],
        &["ls", "--json"],
        &["verify"],
        &["ls", "--checksum"],
    ];
    let mut runs = Vec::new();
    let mut expected = Vec::new();
    for (path, what) in &cases {
        for cmd in commands {
            let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            args.push(path.display().to_string());
            runs.push(args.clone());
            expected.push((args, path.display().to_string(), *what));
        }
    }
    let results = ndoffload_all(&runs, std::time::Duration::from_secs(10));
    let mut failures = Vec::new();
    for (r, (args, path, what)) in results.into_iter().zip(expected) {
        match r {
            None => failures.push(format!("{args:?}: still running after 10 s (killed)")),
            Some((code, out, err)) => {
                if code != 2 || !err.contains(&path) || !err.contains(what) {
                    failures.push(format!(
                        "{args:?}: exit {code}, expected 2 and an error naming {path} as {what}; \
                         stdout: {out:?} stderr: {err:?}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A symbolic link to a `.npy` file or a pack given as PATH is followed
/// (users pass links legitimately); files inside a store never are.
#[test]
fn symbolic_links_given_as_path_are_followed() {
    use ndarray_offload::pack::PackWriter;
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("a.npy");
    ndarray_npy::write_npy(&npy, &array![1.0f64, 2.0]).unwrap();
    let pack = dir.path().join("a.pack");
    let mut w = PackWriter::create(&pack).unwrap();
    w.append("t0", &array![1u8, 2]).unwrap();
    w.finish().unwrap();
    let store = dir.path().join("store");
    DiskBackedStore::open(&store)
        .unwrap()
        .insert_durable("k", array![3u16])
        .unwrap();
    for (target, name) in [
        (&npy, "npy-link"),
        (&pack, "pack-link"),
        (&store, "store-link"),
    ] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(target, &link).unwrap();
        let l = link.to_str().unwrap();
        for args in [&["ls", "--checksum", l][..], &["verify", l]] {
            let (code, out, err) = ndoffload(args);
            assert_eq!(code, 0, "{args:?}: {out}{err}");
        }
    }
}

/// The library's inspection functions check what they are given as the
/// CLI does: a directory where a file is expected, a FIFO where a store
/// directory is expected.
#[test]
fn inspect_functions_refuse_the_wrong_kind_of_path() {
    use ndarray_offload::inspect::{inspect_npy, inspect_pack, inspect_store, InspectOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = InspectOptions::new(true);
    for e in [
        inspect_npy(dir.path(), opts).map(|_| ()).unwrap_err(),
        inspect_pack(dir.path(), opts).map(|_| ()).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains("is a directory, not a regular file"), "{msg}");
    }
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for e in [
        inspect_npy(&fifo, opts).map(|_| ()).unwrap_err(),
        inspect_pack(&fifo, opts).map(|_| ()).unwrap_err(),
        inspect_store(&fifo, opts).map(|_| ()).unwrap_err(),
    ] {
        let msg = e.to_string();
        assert!(msg.contains("fifo") && msg.contains("is a FIFO"), "{msg}");
    }
}

/// `--help` tells a new user how to reach an object store: the URL form
/// and the variables that configure it.
#[test]
fn help_names_remote_urls_and_their_variables() {
    let (code, out, _) = ndoffload(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "s3://",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP=true",
        "not a store",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    let (_, ls_help, _) = ndoffload(&["ls", "--help"]);
    assert!(ls_help.contains("s3://"), "{ls_help}");
    assert!(ls_help.contains("\"remote\""), "{ls_help}");
    let (_, verify_help, _) = ndoffload(&["verify", "--help"]);
    assert!(verify_help.contains("s3://"), "{verify_help}");
}

/// `ls` of a store with a live writer names it with a readable start time
/// (UTC), not seconds since the epoch.
#[test]
fn ls_shows_live_writers_with_utc_start_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskBackedStore::open(dir.path()).unwrap();
    store.insert_durable("a", array![1u8, 2]).unwrap();
    let (code, out, err) = ndoffload(&["ls", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("writer: "))
        .unwrap_or_else(|| panic!("no writer line in:\n{out}"));
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    assert!(line.contains("shared writer since 20"), "{line}");
    assert!(line.contains(" UTC (registration "), "{line}");
    assert!(!line.contains("Unix time"), "{line}");
    drop(store);
}
