//! First contact with a remote store, against moto on loopback (see
//! `remote.rs`): each misconfiguration a new user meets fails fast, with
//! the right kind and a message that names the cause and the fix; a
//! mistyped prefix is "not a store" for the inspector; an offline open
//! reads what the cache directory holds; `ndoffload ls` prints the same
//! fields for a local and a remote store of the same entries.
//!
//! Each misconfiguration test prints one line `MISCONFIG | case | seconds |
//! message` (run with `--nocapture` to collect them). The settings are
//! given through `RemoteOptions::config`, which overrides the `AWS_*`
//! variables of the test process; an empty value counts as unset.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ndarray::{array, Array1, Array2, Ix1, Ix2, ShapeBuilder};
use ndarray_offload::inspect::InspectOptions;
use ndarray_offload::remote::{self, NetOptions, RemoteOptions};
use ndarray_offload::{DiskBackedStore, Error, RemoteErrorKind, StoreBuilder};
use serde_json::{json, Value};

use crate::remote::{free_port, Moto};

/// `RemoteOptions` for `endpoint` with moto's credentials, then `changes`
/// (a key set to `""` counts as unset).
fn options(endpoint: &str, changes: &[(&str, &str)]) -> RemoteOptions {
    let mut config: Vec<(String, String)> = [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_default_region", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in changes {
        config.retain(|(key, _)| key != k);
        config.push((k.to_string(), v.to_string()));
    }
    let mut o = RemoteOptions::default();
    o.config = config;
    o
}

/// Opens `url` with `opts` on a fresh cache directory, expecting a
/// failure; returns it and the time it took.
fn open_fails(url: &str, opts: RemoteOptions) -> (Error, Duration) {
    let cache = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = crate::common::open_remote(url, cache.path(), opts).unwrap_err();
    (e, start.elapsed())
}

/// Checks the kind and the phrases of a remote error, that it holds no
/// XML, and prints its line of the table.
fn check(case: &str, e: &Error, t: Duration, kind: RemoteErrorKind, phrases: &[&str]) {
    eprintln!("MISCONFIG | {case} | {:.3} s | {e}", t.as_secs_f64());
    match e {
        Error::Remote { kind: k, .. } => assert_eq!(*k, kind, "{case}: {e}"),
        other => panic!("{case}: expected Error::Remote, got {other:?}"),
    }
    let text = e.to_string();
    for p in phrases {
        assert!(text.contains(p), "{case}: {p:?} missing from: {text}");
    }
    assert!(!text.contains('<'), "{case}: raw XML in: {text}");
    assert!(!text.contains("builder error"), "{case}: {text}");
}

#[test]
fn misconfig_plain_http_without_allow_http() {
    let Some(moto) = Moto::start() else { return };
    let opts = options(&moto.endpoint(), &[("aws_allow_http", "false")]);
    let (e, t) = open_fails(&moto.url("setup/http"), opts);
    check(
        "no AWS_ALLOW_HTTP",
        &e,
        t,
        RemoteErrorKind::Config,
        &[
            "set AWS_ALLOW_HTTP=true",
            &moto.endpoint(),
            "plain HTTP",
            "s3://ndo-test/setup/http",
        ],
    );
    assert!(t < Duration::from_secs(1), "{t:?}");
}

#[test]
fn misconfig_no_credentials() {
    let Some(moto) = Moto::start() else { return };
    let unset = [
        ("aws_access_key_id", ""),
        ("aws_secret_access_key", ""),
        ("aws_session_token", ""),
        ("aws_web_identity_token_file", ""),
        ("aws_container_credentials_relative_uri", ""),
        ("aws_container_credentials_full_uri", ""),
        ("aws_skip_signature", "false"),
    ];
    let (e, t) = open_fails(&moto.url("setup/creds"), options(&moto.endpoint(), &unset));
    check(
        "no credentials",
        &e,
        t,
        RemoteErrorKind::PermissionDenied,
        &[
            "no credentials found",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ],
    );
    // No instance-metadata timeout: the check comes before any request.
    assert!(t < Duration::from_secs(1), "{t:?}");
}

/// On AWS itself (no custom endpoint) and without credentials, the
/// instance metadata service is asked (instance roles); where it does not
/// answer, the message says that no credentials were found. Here the
/// metadata endpoint is a port nothing listens on, so no request reaches
/// AWS.
#[test]
fn misconfig_no_credentials_on_aws_asks_the_instance_metadata_service() {
    // Credentials or an endpoint in the environment would be used.
    let set = [
        "AWS_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_SKIP_SIGNATURE",
    ]
    .iter()
    .find(|v| std::env::var_os(v).is_some());
    if let Some(v) = set {
        eprintln!("{v} is set: test skipped");
        return;
    }
    let mut o = RemoteOptions::default();
    o.config = [
        ("aws_default_region", "us-east-1".to_string()),
        (
            "aws_metadata_endpoint",
            format!("http://127.0.0.1:{}", free_port()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (e, t) = open_fails("s3://ndo-no-such-bucket-on-aws/p", o);
    check(
        "no credentials, AWS (instance metadata unreachable)",
        &e,
        t,
        RemoteErrorKind::PermissionDenied,
        &[
            "no credentials found",
            "instance metadata service",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ],
    );
    assert!(t < Duration::from_secs(5), "{t:?}");
}

#[test]
fn misconfig_wrong_credentials() {
    // A server that checks signatures: after the request that creates the
    // bucket, only keys moto issued are accepted.
    let Some(moto) = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]) else {
        return;
    };
    let opts = options(
        &moto.endpoint(),
        &[
            ("aws_access_key_id", "AKIAWRONGKEY"),
            ("aws_secret_access_key", "wrong"),
        ],
    );
    let (e, t) = open_fails(&moto.url("setup/wrong"), opts);
    check(
        "wrong credentials",
        &e,
        t,
        RemoteErrorKind::PermissionDenied,
        &[
            "does not know the access key \"AKIAWRONGKEY\"",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ],
    );
    assert!(t < Duration::from_secs(5), "{t:?}");
}

#[test]
fn misconfig_missing_bucket() {
    let Some(moto) = Moto::start() else { return };
    let (e, t) = open_fails("s3://no-such-bucket/clouds", options(&moto.endpoint(), &[]));
    check(
        "missing bucket",
        &e,
        t,
        RemoteErrorKind::NotFound,
        &[
            "bucket \"no-such-bucket\" does not exist",
            &moto.endpoint(),
            "create it",
            "s3://no-such-bucket/clouds",
        ],
    );
    assert!(t < Duration::from_secs(5), "{t:?}");
    // The inspector says the same, and exits 2.
    let (code, _, err) = ndoffload(&moto, &["ls", "s3://no-such-bucket/clouds"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn misconfig_connection_refused_fails_fast() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let url = moto.url("setup/refused");
    let opts = options(&moto.endpoint(), &[]);
    let cache = tempfile::tempdir().unwrap();
    let s = crate::common::open_remote(&url, cache.path(), opts.clone()).unwrap();
    s.insert_durable("a", array![1.0f32, 2.0]).unwrap();
    drop(s);
    // The server is gone: nothing listens on its port.
    moto.kill();
    let (e, t) = open_fails(&url, opts.clone());
    let at = format!("connection refused at {}", moto.endpoint());
    check(
        "connection refused",
        &e,
        t,
        RemoteErrorKind::Network,
        &[&at, "start the server, or correct"],
    );
    assert!(t < Duration::from_secs(5), "not retried for seconds: {t:?}");
    // A port no server ever listened on.
    let port = free_port();
    let (e, t) = open_fails(&url, options(&format!("http://127.0.0.1:{port}"), &[]));
    check(
        "connection refused (never listened)",
        &e,
        t,
        RemoteErrorKind::Network,
        &["connection refused at http://127.0.0.1:"],
    );
    assert!(t < Duration::from_secs(5), "{t:?}");
    // A write of an open handle fails as fast, and stays staged.
    let s = crate::common::open_remote(&url, cache.path(), opts.with_offline(false));
    assert!(s.is_err(), "the server is down");
}

#[test]
fn misconfig_hung_server_times_out() {
    let Some(moto) = Moto::start() else { return };
    let mut opts = options(&moto.endpoint(), &[]);
    opts.net = NetOptions::default()
        .with_max_retries(1)
        .with_retry_timeout(Duration::from_secs(2))
        .with_request_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1));
    // The server accepts connections (the kernel does) but never answers.
    moto.signal("-STOP");
    let (e, t) = open_fails(&moto.url("setup/hung"), opts);
    moto.signal("-CONT");
    check(
        "hung server",
        &e,
        t,
        RemoteErrorKind::Timeout,
        &[
            "no answer from",
            &moto.endpoint(),
            "within 1s per request",
            "hung or overloaded",
            "RemoteOptions::net",
        ],
    );
    assert!(t < Duration::from_secs(30), "{t:?}");
}

/// Runs `ndoffload` with exactly moto's variables (nothing inherited).
fn ndoffload(moto: &Moto, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ndoffload"));
    c.env_clear().args(args);
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn misconfig_mistyped_prefix_is_not_a_store() {
    let Some(moto) = Moto::start() else { return };
    let cache = tempfile::tempdir().unwrap();
    let s = crate::common::open_remote(
        &moto.url("clouds"),
        cache.path(),
        options(&moto.endpoint(), &[]),
    )
    .unwrap();
    s.insert_durable("a", array![1u8]).unwrap();
    let typo = moto.url("clods");
    for cmd in ["ls", "verify"] {
        let start = Instant::now();
        let (code, out, err) = ndoffload(&moto, &[cmd, &typo]);
        let t = start.elapsed();
        eprintln!(
            "MISCONFIG | mistyped prefix ({cmd}) | {:.3} s | {}",
            t.as_secs_f64(),
            err.trim()
        );
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!("ndoffload: {typo}: not a store (")),
            "{err}"
        );
        assert!(err.contains("s3://ndo-test/ holds clouds/"), "{err}");
    }
    // As an empty local directory.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = ndoffload(&moto, &["ls", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(": not a store ("), "{err}");
    // The library call says so with a typed error.
    match remote::inspect_remote_with(
        &typo,
        InspectOptions::default(),
        &options(&moto.endpoint(), &[]),
    ) {
        Err(Error::NotAStore { location, reason }) => {
            assert_eq!(location, typo);
            assert!(reason.contains("clouds/"), "{reason}");
        }
        other => panic!("expected NotAStore, got {other:?}"),
    }
    // A store whose every entry was removed is still a store.
    assert!(s.remove("a").unwrap());
    let (code, out, err) = ndoffload(&moto, &["verify", &moto.url("clouds")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 entries, all sound"), "{out}");
}

/// An offline open reads what the cache directory holds while the server
/// is down; an ordinary open fails fast and says how to open offline.
#[test]
fn offline_open_reads_the_cache_while_the_server_is_down() {
    let Some(mut moto) = Moto::start() else {
        return;
    };
    let url = moto.url("offline/p");
    let opts = options(&moto.endpoint(), &[]);
    let node_a = tempfile::tempdir().unwrap();
    let node_b = tempfile::tempdir().unwrap();
    {
        let a = StoreBuilder::new(node_a.path())
            .remote_with(&url, opts.clone())
            .open()
            .unwrap();
        a.insert_opts(
            "points",
            Array2::from_elem((100, 3), 1.5f64),
            &ndarray_offload::InsertOptions::new().attrs(json!({"crs": "EPSG:2056"})),
        )
        .unwrap();
        a.insert("ids", Array1::from_shape_fn(10, |i| i as u32))
            .unwrap();
        a.flush().unwrap();
        a.close().unwrap();
        // Node B reads one of the two entries (a writable handle: a
        // read-only one writes nothing into the cache directory).
        let b = StoreBuilder::new(node_b.path())
            .remote_with(&url, opts.clone())
            .open()
            .unwrap();
        assert_eq!(b.get::<u32, Ix1>("ids").unwrap().read().unwrap()[9], 9);
    }
    moto.kill();
    // Without the option: a fast, typed error that names the way out.
    let start = Instant::now();
    let e = StoreBuilder::new(node_a.path())
        .remote_with(&url, opts.clone())
        .read_only(true)
        .open()
        .unwrap_err();
    let t = start.elapsed();
    eprintln!(
        "MISCONFIG | server down, read-only open | {:.3} s | {e}",
        t.as_secs_f64()
    );
    assert!(t < Duration::from_secs(5), "{t:?}");
    assert!(
        matches!(
            e,
            Error::Remote {
                kind: RemoteErrorKind::Network,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("with_offline(true)"), "{e}");
    // Offline: node A's cache holds both entries, with their attributes.
    let offline = opts.clone().with_offline(true);
    let start = Instant::now();
    let a = StoreBuilder::new(node_a.path())
        .remote_with(&url, offline.clone())
        .read_only(true)
        .open()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    let keys: Vec<String> = a.keys().iter().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["ids", "points"]);
    let p = a.get::<f64, Ix2>("points").unwrap();
    assert_eq!(p.read().unwrap().sum(), 450.0);
    assert_eq!(a.info("points").unwrap().attrs["crs"], "EPSG:2056");
    assert!(matches!(
        a.insert("x", array![1u8]),
        Err(Error::ReadOnly { .. })
    ));
    match a.get::<f64, Ix1>("nope") {
        Err(e @ Error::KeyNotFound { .. }) => {
            assert!(e.to_string().contains(&url), "{e}");
            assert!(e.to_string().contains("offline"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    a.refresh().unwrap();
    drop(a);
    // Node B holds what it read.
    let b = crate::common::open_remote(&url, node_b.path(), offline.clone()).unwrap();
    assert!(b.is_read_only());
    assert_eq!(b.keys(), ["ids"]);
    assert_eq!(b.get::<u32, Ix1>("ids").unwrap().read().unwrap()[3], 3);
    assert!(matches!(
        b.insert_durable("x", array![1u8]),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        b.get::<f64, Ix2>("points"),
        Err(Error::KeyNotFound { .. })
    ));
    drop(b);
    // Offline needs a read-only store handle.
    let e = StoreBuilder::new(node_a.path())
        .remote_with(&url, offline)
        .open()
        .unwrap_err();
    assert!(e.to_string().contains("read_only(true)"), "{e}");
}

/// A remote store's "not found" names the bucket and prefix, not the local
/// cache directory.
#[test]
fn remote_key_not_found_names_the_url() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("names/p");
    let cache = tempfile::tempdir().unwrap();
    let s = StoreBuilder::new(cache.path())
        .remote_with(&url, options(&moto.endpoint(), &[]))
        .open()
        .unwrap();
    let e = s.get::<f64, Ix1>("nope").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::KeyNotFound { .. }), "{text}");
    assert_eq!(text, format!("no entry named \"nope\" in {url}"));
    assert!(
        !text.contains(&cache.path().display().to_string()),
        "{text}"
    );
    assert_eq!(s.dir(), cache.path());
}

/// `ndoffload ls --json` (and the table, the totals, `--checksum`) of a
/// local and a remote store holding the same entries.
#[test]
fn ls_json_of_a_local_and_a_remote_store_have_the_same_fields() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("same/entries");
    let local_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let local = DiskBackedStore::open(local_dir.path()).unwrap();
    let remote = StoreBuilder::new(cache.path())
        .remote_with(&url, options(&moto.endpoint(), &[]))
        .open()
        .unwrap();
    for s in [&local, &remote] {
        s.insert_opts(
            "points",
            Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f64),
            &ndarray_offload::InsertOptions::new()
                .attrs(json!({"crs": "EPSG:2056", "origin": [2600000.0, 1200000.0]})),
        )
        .unwrap();
        s.insert(
            "fortran",
            Array2::from_shape_vec((3, 2).f(), (0..6).map(|i| i as i16).collect()).unwrap(),
        )
        .unwrap();
        s.insert("flags", array![true, false, true]).unwrap();
        s.flush().unwrap();
    }
    let local_path = local_dir.path().to_str().unwrap().to_string();
    let ls_json = |target: &str, checksum: bool| -> Vec<Value> {
        let mut args = vec!["ls", "--json"];
        if checksum {
            args.push("--checksum");
        }
        args.push(target);
        let (code, out, err) = ndoffload(&moto, &args);
        assert_eq!(code, 0, "{err}");
        match serde_json::from_str(out.trim()).unwrap() {
            Value::Array(a) => a,
            other => panic!("{other}"),
        }
    };
    for checksum in [false, true] {
        let l = ls_json(&local_path, checksum);
        let r = ls_json(&url, checksum);
        eprintln!(
            "LS-JSON local  (checksum {checksum}): {}",
            Value::Array(l.clone())
        );
        eprintln!(
            "LS-JSON remote (checksum {checksum}): {}",
            Value::Array(r.clone())
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l.len(), r.len());
        for (a, b) in l.iter().zip(&r) {
            let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
            let keys_a: Vec<&String> = a.keys().collect();
            let keys_b: Vec<&String> = b.keys().collect();
            assert_eq!(keys_a, keys_b);
            for k in keys_a {
                if k == "state" {
                    assert_eq!(a[k], "on disk");
                    assert_eq!(b[k], "remote");
                } else {
                    assert_eq!(a[k], b[k], "field {k} of {}", a["name"]);
                }
            }
        }
        let fortran = r.iter().find(|e| e["name"] == "fortran").unwrap();
        assert_eq!(fortran["fortran_order"], true);
        assert_eq!(fortran["nbytes"], 12);
    }
    // The table: the same header, rows and totals (but where the bytes are).
    let table = |target: &str| -> Vec<String> {
        let (code, out, err) = ndoffload(&moto, &["ls", "--checksum", target]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .filter(|l| !l.starts_with("writer: "))
            .map(String::from)
            .collect()
    };
    let (lt, rt) = (table(&local_path), table(&url));
    eprintln!(
        "LS local:\n{}\nLS remote:\n{}",
        lt.join("\n"),
        rt.join("\n")
    );
    assert_eq!(lt.len(), rt.len());
    assert_eq!(lt[..lt.len() - 1], rt[..rt.len() - 1]);
    assert!(lt[0].contains("STATUS") && lt[0].contains("ATTRS") && lt[0].contains("SHA256"));
    let (lt_tot, rt_tot) = (lt.last().unwrap(), rt.last().unwrap());
    assert!(
        lt_tot.starts_with("3 entries, ") && lt_tot.contains(" on disk; data by dtype: "),
        "{lt_tot}"
    );
    assert!(
        rt_tot.starts_with("3 entries, ")
            && rt_tot.contains(" in the object store; data by dtype: "),
        "{rt_tot}"
    );
    assert_eq!(
        lt_tot.split("; ").nth(1),
        rt_tot.split("; ").nth(1),
        "data by dtype"
    );
    let (code, out, _) = ndoffload(&moto, &["verify", &url]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "3 entries, all sound");
    drop(remote);
    let _ = Path::new(&local_path);
}

/// The same misconfigurations as a user meets them from the shell:
/// `ndoffload ls` with the `AWS_*` variables of the first-contact recipe
/// (README, "Remote stores"), one of them missing or wrong; exit 2 and a
/// message naming the variable. Prints `MISCONFIG-CLI | case | seconds |
/// stderr`.
#[test]
fn misconfig_messages_of_the_cli() {
    let Some(moto) = Moto::start() else { return };
    let Some(strict) = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]) else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let s = crate::common::open_remote(
        &moto.url("cli/clouds"),
        cache.path(),
        options(&moto.endpoint(), &[]),
    )
    .unwrap();
    s.insert_durable("a", array![1u8]).unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let url = moto.url("cli/clouds");
    // (case, variables changed (empty: unset), URL, phrases of the message)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "no AWS_ALLOW_HTTP",
            vec![("AWS_ALLOW_HTTP", String::new())],
            url.clone(),
            &["set AWS_ALLOW_HTTP=true", "(from AWS_ENDPOINT)"],
        ),
        (
            "no credentials",
            vec![
                ("AWS_ACCESS_KEY_ID", String::new()),
                ("AWS_SECRET_ACCESS_KEY", String::new()),
            ],
            url.clone(),
            &[
                "(permission denied)",
                "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ],
        ),
        (
            "wrong credentials",
            vec![
                ("AWS_ENDPOINT", strict.endpoint()),
                ("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY".into()),
                ("AWS_SECRET_ACCESS_KEY", "wrong".into()),
            ],
            strict.url("cli/clouds"),
            &[
                "(permission denied)",
                "does not know the access key \"AKIAWRONGKEY\" (AWS_ACCESS_KEY_ID)",
            ],
        ),
        (
            "missing bucket",
            vec![],
            "s3://no-such-bucket/clouds".into(),
            &[
                "(not found)",
                "bucket \"no-such-bucket\" does not exist",
                "s3 mb s3://no-such-bucket",
            ],
        ),
        (
            "connection refused",
            vec![("AWS_ENDPOINT", dead.clone())],
            url.clone(),
            &[
                "(network)",
                "connection refused at http://127.0.0.1:",
                "or correct AWS_ENDPOINT",
            ],
        ),
        (
            "mistyped prefix",
            vec![],
            moto.url("cli/clods"),
            &["not a store (", "s3://ndo-test/cli/ holds clouds/"],
        ),
    ];
    for (case, changes, target, phrases) in cases {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ndoffload"));
        c.env_clear().args(["ls", &target]);
        for (k, v) in moto.env() {
            if let Some((_, v2)) = changes.iter().find(|(k2, _)| *k2 == k) {
                if !v2.is_empty() {
                    c.env(k, v2);
                }
            } else {
                c.env(k, v);
            }
        }
        let start = Instant::now();
        let out = c.output().unwrap();
        let t = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "MISCONFIG-CLI | {case} | {:.3} s | {}",
            t.as_secs_f64(),
            err.trim()
        );
        assert_eq!(out.status.code(), Some(2), "{case}: {err}");
        assert!(out.stdout.is_empty(), "{case}");
        for p in phrases {
            assert!(err.contains(p), "{case}: {p:?} missing from {err}");
        }
        assert!(!err.contains('<'), "{case}: {err}");
        assert!(t < Duration::from_secs(5), "{case}: {t:?}");
    }
}
