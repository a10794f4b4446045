//! The object-store backend against servers and prefixes that are not as
//! they should be, on moto (see `remote.rs`):
//!
//! * a server that accepts `If-None-Match` / `If-Match` and ignores them
//!   (a proxy in front of moto that strips both headers) is refused for
//!   writing by the capability probe, with a typed error naming the
//!   endpoint; moto itself is accepted; read-only opens work through the
//!   proxy;
//! * stray objects under the prefix (keys with `.`, `..` or empty segments
//!   or a control character, foreign objects under `data/` and `meta/`,
//!   malformed metadata), written with boto3, leave the store openable with
//!   every other entry readable; `ndoffload ls` / `verify` report them;
//!   `gc` deletes none of them;
//! * a hung server (moto stopped with `SIGSTOP`) gives a typed `Timeout`
//!   with default options within the documented bound;
//! * an upload and a download slower than the request timeout (a
//!   throttling proxy) are not cut off.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ndarray::{Array1, Ix1};
use ndarray_offload::remote::{NetOptions, RemoteOptions};
use ndarray_offload::{DiskBackedStore, Error, RemoteErrorKind, StoreBuilder};
use serde_json::Value;

use crate::common::{in_ci, numpy_python};
use crate::remote::{Moto, BUCKET};

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 forwarder

/// What the forwarder does to the traffic.
#[derive(Debug, Clone, Copy)]
struct ProxyMode {
    /// Drop the `If-Match` and `If-None-Match` request headers: the server
    /// behind then ignores the conditions, as some S3-compatible servers do.
    strip_conditions: bool,
    /// Send request and response bodies at this many bytes per second.
    rate: Option<u64>,
}

/// A forwarder on 127.0.0.1 in front of a server: each request of a
/// client connection (kept alive) is read whole (its head and its body, by
/// `Content-Length` or chunked), changed as `mode` says, sent to the
/// server on a connection of its own (`Connection: close`), and the whole
/// answer relayed with a `Content-Length`. Its threads end with the test
/// process.
struct Proxy {
    port: u16,
}

impl Proxy {
    fn start(upstream: u16, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                thread::spawn(move || {
                    let _ = serve(conn, upstream, mode);
                });
            }
        });
        Proxy { port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

type Headers = Vec<(String, String)>;

fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&buf);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed")
}

/// The first line and the headers of a request; `None` at the end of the
/// connection.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<(String, Headers)>> {
    let first = loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(eof)?;
        if line.is_empty() {
            return Ok(Some((first, headers)));
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn chunked(headers: &Headers) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// A body of `headers`' framing from `r`.
fn read_body(r: &mut impl BufRead, headers: &Headers) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if chunked(headers) {
        loop {
            let line = read_line(r)?.ok_or_else(eof)?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                while !read_line(r)?.ok_or_else(eof)?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    }
    if let Some(n) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(body)
}

/// Writes `bytes`, at `rate` bytes per second when given.
fn send(w: &mut impl Write, bytes: &[u8], rate: Option<u64>) -> std::io::Result<()> {
    let Some(rate) = rate else {
        return w.write_all(bytes);
    };
    let start = Instant::now();
    let mut sent = 0u64;
    for chunk in bytes.chunks(8192) {
        w.write_all(chunk)?;
        w.flush()?;
        sent += chunk.len() as u64;
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    Ok(())
}

fn serve(client: TcpStream, upstream: u16, mode: ProxyMode) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        let Some((line, request_headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        let body = read_body(&mut reader, &request_headers)?;
        let method = line.split(' ').next().unwrap_or("").to_string();
        let mut head = format!("{line}\r\n");
        for (k, v) in &request_headers {
            let lower = k.to_ascii_lowercase();
            let framing = matches!(
                lower.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "content-length"
            );
            let condition = lower == "if-match" || lower == "if-none-match";
            if framing || (mode.strip_conditions && condition) {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        up.write_all(head.as_bytes())?;
        send(&mut up, &body, mode.rate)?;
        let mut answer = BufReader::new(up);
        let (status_line, headers) = read_head(&mut answer)?.ok_or_else(eof)?;
        let mut rest = Vec::new();
        answer.read_to_end(&mut rest)?;
        let body = if chunked(&headers) {
            read_body(&mut &rest[..], &headers)?
        } else {
            rest
        };
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        let reason = status_line.split_once(' ').map_or("500", |(_, r)| r);
        let mut out = format!("HTTP/1.1 {reason}\r\n");
        for (k, v) in &headers {
            let lower = k.to_ascii_lowercase();
            let framing = matches!(
                lower.as_str(),
                "connection" | "keep-alive" | "transfer-encoding"
            ) || (lower == "content-length" && method != "HEAD");
            if !framing {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
        if !bodiless {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        let close =
            header(&request_headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        out.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        writer.write_all(out.as_bytes())?;
        if !bodiless {
            send(&mut writer, &body, mode.rate)?;
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// One request to 127.0.0.1:`port`: the status code and the body. It
/// carries an `Authorization` header of moto's credentials, which moto
/// does not check but needs to evaluate conditions.
fn raw_request(
    port: u16,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential=test/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, \
         Signature=0\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `moto.options()` with the endpoint of `proxy` instead of moto's.
fn via(moto: &Moto, proxy: &Proxy) -> RemoteOptions {
    let mut o = moto.options();
    for (k, v) in o.config.iter_mut() {
        if k == "aws_endpoint" {
            *v = proxy.endpoint();
        }
    }
    o
}

fn open(dir: &Path, url: &str, o: RemoteOptions) -> ndarray_offload::Result<DiskBackedStore> {
    StoreBuilder::new(dir).remote_with(url, o).open()
}

fn open_read_only(
    dir: &Path,
    url: &str,
    o: RemoteOptions,
) -> ndarray_offload::Result<DiskBackedStore> {
    StoreBuilder::new(dir)
        .remote_with(url, o)
        .read_only(true)
        .open()
}

fn value(seed: f64, n: usize) -> Array1<f64> {
    Array1::from_shape_fn(n, |i| seed + i as f64)
}

fn read(s: &DiskBackedStore, key: &str) -> Array1<f64> {
    s.get::<f64, Ix1>(key)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
        .read()
        .unwrap()
        .to_owned()
}

/// The keys of every object under `prefix` (relative to it), listed by
/// moto directly.
fn keys_at(moto: &Moto, prefix: &str) -> Vec<String> {
    let (status, body) = raw_request(
        moto.port,
        "GET",
        &format!("/{BUCKET}?list-type=2&prefix={prefix}/"),
        &[],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    let mut keys = Vec::new();
    let mut rest = body.as_str();
    while let Some(at) = rest.find("<Key>") {
        let end = rest[at..].find("</Key>").unwrap() + at;
        let key = rest[at + 5..end].replace("&amp;", "&");
        keys.push(
            key.strip_prefix(&format!("{prefix}/"))
                .unwrap_or(&key)
                .to_string(),
        );
        rest = &rest[end..];
    }
    keys
}

// ---------------------------------------------------------------------------
// The capability probe

#[test]
fn probe_accepts_moto_and_refuses_a_server_that_ignores_conditions() {
    let Some(moto) = Moto::start() else { return };
    let prefix = "robust/probe";
    let url = moto.url(prefix);
    let proxy = Proxy::start(
        moto.port,
        ProxyMode {
            strip_conditions: true,
            rate: None,
        },
    );
    // The two servers: moto answers 412 to a failed condition; through the
    // proxy the same PUT succeeds.
    let obj = format!("/{BUCKET}/robust/condition");
    assert_eq!(raw_request(moto.port, "PUT", &obj, &[], b"1").0, 200);
    for (port, expected) in [(moto.port, 412), (proxy.port, 200)] {
        let (status, body) = raw_request(port, "PUT", &obj, &[("If-None-Match", "*")], b"2");
        assert_eq!(status, expected, "If-None-Match via port {port}: {body}");
        let (status, body) = raw_request(
            port,
            "PUT",
            &obj,
            &[("If-Match", "\"0123456789abcdef0123456789abcdef\"")],
            b"3",
        );
        assert_eq!(status, expected, "If-Match via port {port}: {body}");
    }

    // moto is accepted: a writable open, then a write.
    let c1 = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let s = open(c1.path(), &url, moto.options()).unwrap();
    let t_probed = start.elapsed();
    s.insert_durable("a", value(1.0, 100)).unwrap();
    drop(s);
    let c1b = tempfile::tempdir().unwrap();
    let start = Instant::now();
    drop(open(c1b.path(), &url, moto.options()).unwrap());
    let t_known = start.elapsed();
    let c1c = tempfile::tempdir().unwrap();
    let start = Instant::now();
    drop(open_read_only(c1c.path(), &url, moto.options()).unwrap());
    let t_read_only = start.elapsed();
    eprintln!(
        "PROBE | writable open with the probe {:.1} ms, writable open of a server this \
         process probed {:.1} ms, read-only open {:.1} ms",
        t_probed.as_secs_f64() * 1e3,
        t_known.as_secs_f64() * 1e3,
        t_read_only.as_secs_f64() * 1e3
    );

    // Through the proxy, a writable open is refused, naming the endpoint
    // and what is wrong; nothing is left behind.
    let c2 = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = open(c2.path(), &url, via(&moto, &proxy)).unwrap_err();
    let t = start.elapsed();
    eprintln!("PROBE | refused in {:.3} s | {e}", t.as_secs_f64());
    match &e {
        Error::Remote { kind, url: u, .. } => {
            assert_eq!(*kind, RemoteErrorKind::Unsupported, "{e}");
            assert_eq!(u, &url);
        }
        other => panic!("expected Error::Remote, got {other:?}"),
    }
    let text = e.to_string();
    for phrase in [
        proxy.endpoint().as_str(),
        "does not enforce conditional PUT",
        "ignores If-None-Match: *",
        "ignores If-Match",
        "read-only",
    ] {
        assert!(text.contains(phrase), "{phrase:?} missing from {text}");
    }
    let left = keys_at(&moto, prefix);
    assert!(
        left.iter().all(|k| !k.starts_with(".ndoffload/")),
        "probe objects left: {left:?}"
    );

    // A read-only open through the proxy works, and reads.
    let c3 = tempfile::tempdir().unwrap();
    let r = open_read_only(c3.path(), &url, via(&moto, &proxy)).unwrap();
    let keys: Vec<String> = r.keys().iter().map(|k| k.as_str().to_string()).collect();
    assert_eq!(keys, ["a"]);
    assert_eq!(read(&r, "a"), value(1.0, 100));
    drop(r);

    // moto is still accepted (another process would probe it again; this
    // one remembers it), and a second writable open through the proxy is
    // refused again: a refusal is not remembered as a success.
    let c4 = tempfile::tempdir().unwrap();
    open(c4.path(), &url, moto.options()).unwrap();
    let c5 = tempfile::tempdir().unwrap();
    assert!(matches!(
        open(c5.path(), &url, via(&moto, &proxy)),
        Err(Error::Remote {
            kind: RemoteErrorKind::Unsupported,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// Stray objects

/// The Python of `NDOFFLOAD_PYTHON` when it has boto3; `None` (skip)
/// outside CI otherwise.
fn boto_python() -> Option<String> {
    let py = numpy_python()?;
    let ok = Command::new(&py)
        .args(["-c", "import boto3"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(!in_ci(), "boto3 is not importable with {py} and CI=true");
        eprintln!("boto3 not available: test skipped");
        return None;
    }
    Some(py)
}

/// Puts `objects` (raw keys under `prefix`, bodies) with boto3, which
/// sends any key as it is.
fn boto_put(py: &str, moto: &Moto, prefix: &str, objects: &[(&str, &str)]) {
    let code = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
args = sys.argv[4:]
for key, body in zip(args[0::2], args[1::2]):
    s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3] + "/" + key, Body=body.encode())
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3] + "/").get("Contents", [])]
for key in args[0::2]:
    assert sys.argv[3] + "/" + key in keys, (key, keys)
"#;
    let mut c = Command::new(py);
    c.arg("-c")
        .arg(code)
        .arg(moto.endpoint())
        .arg(BUCKET)
        .arg(prefix);
    for (k, b) in objects {
        c.arg(k).arg(b);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The keys `python/ndoffload_remote.py` (the reader for other languages)
/// lists under `prefix`.
fn python_keys(py: &str, moto: &Moto, prefix: &str) -> Vec<String> {
    let code = r#"
import json, sys, boto3
sys.path.insert(0, sys.argv[4])
from ndoffload_remote import RemoteStore
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
print(json.dumps(RemoteStore(f"s3://{sys.argv[2]}/{sys.argv[3]}", client=s3).keys()))
"#;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new(py)
        .arg("-c")
        .arg(code)
        .arg(moto.endpoint())
        .arg(BUCKET)
        .arg(prefix)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ndoffload_remote.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `ndoffload` with moto's variables: exit code and stdout.
fn ndoffload(moto: &Moto, args: &[&str]) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ndoffload"));
    c.args(args);
    for (k, v) in moto.env() {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A class of objects the store does not use.
struct StrayClass {
    what: &'static str,
    /// Raw keys relative to the prefix, and bodies.
    objects: &'static [(&'static str, &'static str)],
    /// How `ls` names each of them (control characters escaped), and the
    /// state it gives them.
    reported: &'static [(&'static str, &'static str)],
    /// Objects under `data/` and `gc/` `gc` counts as foreign.
    foreign: usize,
    /// Metadata objects `gc` counts as malformed.
    malformed: usize,
}

const STRAYS: &[StrayClass] = &[
    StrayClass {
        what: "`.` segments",
        objects: &[("meta/./x.meta.json", "{}"), ("data/./x.0f.npy", "x")],
        reported: &[
            ("meta/./x.meta.json", "ignored"),
            ("data/./x.0f.npy", "ignored"),
        ],
        foreign: 1,
        malformed: 0,
    },
    StrayClass {
        what: "`..` segments",
        objects: &[("meta/../x.meta.json", "{}"), ("data/../y.npy", "y")],
        reported: &[
            ("meta/../x.meta.json", "ignored"),
            ("data/../y.npy", "ignored"),
        ],
        foreign: 1,
        malformed: 0,
    },
    StrayClass {
        what: "empty segments",
        objects: &[("meta//x.meta.json", "{}"), ("data//x.0f.npy", "x")],
        reported: &[
            ("meta//x.meta.json", "ignored"),
            ("data//x.0f.npy", "ignored"),
        ],
        foreign: 1,
        malformed: 0,
    },
    StrayClass {
        what: "control characters",
        objects: &[
            ("meta/a\u{1}b.meta.json", "{}"),
            ("data/a\u{1}b.0f.npy", "x"),
        ],
        reported: &[
            ("meta/a\\x01b.meta.json", "ignored"),
            ("data/a\\x01b.0f.npy", "ignored"),
        ],
        foreign: 1,
        malformed: 0,
    },
    StrayClass {
        what: "foreign objects under data/ and meta/",
        objects: &[
            ("data/foreign.bin", "x"),
            ("data/x.npy", "x"),
            ("data/sub/y.npy", "y"),
            ("meta/foreign.txt", "t"),
            ("meta/sub/z.meta.json", "{}"),
        ],
        reported: &[
            ("data/foreign.bin", "ignored"),
            ("data/x.npy", "ignored"),
            ("data/sub/y.npy", "ignored"),
            ("meta/foreign.txt", "ignored"),
            ("meta/sub/z.meta.json", "ignored"),
        ],
        foreign: 3,
        malformed: 0,
    },
    StrayClass {
        what: "a metadata object whose name the store refuses",
        objects: &[("meta/CON.meta.json", "{}")],
        reported: &[("CON", "ignored")],
        foreign: 0,
        malformed: 0,
    },
    StrayClass {
        what: "malformed metadata objects",
        objects: &[
            ("meta/bad.meta.json", "{not json"),
            ("meta/worse.meta.json", "{\"schema_version\":1}"),
        ],
        reported: &[("bad", "unreadable"), ("worse", "unreadable")],
        foreign: 0,
        malformed: 2,
    },
];

#[test]
fn stray_objects_leave_the_store_openable_and_are_reported() {
    let Some(moto) = Moto::start() else { return };
    let Some(py) = boto_python() else { return };
    for (i, class) in STRAYS.iter().enumerate() {
        let prefix = format!("robust/strays/{i}");
        let url = moto.url(&prefix);
        let what = class.what;
        // Two entries, one of them replaced (its old data object is the
        // store's own garbage, which gc deletes).
        let c = tempfile::tempdir().unwrap();
        let w = open(c.path(), &url, moto.options()).unwrap();
        w.insert_durable("a", value(0.0, 50)).unwrap();
        w.insert_durable("b", value(100.0, 70)).unwrap();
        w.insert_durable("a", value(1.0, 50)).unwrap();
        drop(w);
        boto_put(&py, &moto, &prefix, class.objects);

        // A writable open on a fresh cache directory: every entry reads, a
        // write commits.
        let c = tempfile::tempdir().unwrap();
        let s = open(c.path(), &url, moto.options())
            .unwrap_or_else(|e| panic!("{what}: writable open: {e}"));
        let mut keys: Vec<String> = s.keys().iter().map(|k| k.as_str().to_string()).collect();
        keys.retain(|k| k != "bad" && k != "worse");
        assert_eq!(keys, ["a", "b"], "{what}");
        assert_eq!(read(&s, "a"), value(1.0, 50), "{what}");
        assert_eq!(read(&s, "b"), value(100.0, 70), "{what}");
        s.insert_durable("c", value(7.0, 10)).unwrap();
        // The reader for other languages lists what the store lists.
        let all: Vec<String> = s.keys().iter().map(|k| k.as_str().to_string()).collect();
        assert_eq!(python_keys(&py, &moto, &prefix), all, "{what}");
        if class.malformed > 0 {
            // Reading a malformed entry is a typed error naming its object.
            let e = s.get::<f64, Ix1>("bad").unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e:?}");
            assert!(
                e.to_string().contains(&format!("{url}/meta/bad.meta.json")),
                "{e}"
            );
        }
        drop(s);
        // A read-only open.
        let c = tempfile::tempdir().unwrap();
        let r = open_read_only(c.path(), &url, moto.options())
            .unwrap_or_else(|e| panic!("{what}: read-only open: {e}"));
        assert_eq!(read(&r, "c"), value(7.0, 10), "{what}");
        drop(r);

        // ls reports the entries and the strays; verify exits 1 naming them.
        let (code, out) = ndoffload(&moto, &["ls", "--json", &url]);
        assert_eq!(code, 0, "{what}: {out}");
        let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let states: Vec<(String, String, String)> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_string(),
                    o["state"].as_str().unwrap().to_string(),
                    o["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for entry in ["a", "b", "c"] {
            assert!(
                states
                    .iter()
                    .any(|(n, s, st)| n == entry && s == "remote" && st == "ok"),
                "{what}: {entry} in {states:?}"
            );
        }
        for (name, state) in class.reported {
            let found = states.iter().find(|(n, _, _)| n == name);
            let Some((_, s, status)) = found else {
                panic!("{what}: {name} not reported: {states:?}");
            };
            assert_eq!(s, state, "{what}: {name}: {status}");
            if *state == "ignored" {
                assert!(status.starts_with("ignored by the store: "), "{status}");
            }
        }
        assert_eq!(states.len(), 3 + class.reported.len(), "{what}: {states:?}");
        let (code, out) = ndoffload(&moto, &["verify", &url]);
        assert_eq!(code, 1, "{what}: {out}");
        for (name, _) in class.reported {
            assert!(
                out.contains(&format!("{name}: ")),
                "{what}: {name} in {out}"
            );
        }

        // gc deletes the replaced value, and none of the strays.
        let c = tempfile::tempdir().unwrap();
        let report = open(c.path(), &url, moto.options())
            .and_then(|s| s.gc_with_grace(Duration::ZERO))
            .unwrap_or_else(|e| panic!("{what}: gc: {e}"));
        assert_eq!(report.deleted, 1, "{what}: {report:?}");
        assert_eq!(report.referenced, 3, "{what}: {report:?}");
        assert_eq!(report.foreign, class.foreign, "{what}: {report:?}");
        assert_eq!(report.malformed, class.malformed, "{what}: {report:?}");
        let left = keys_at(&moto, &prefix);
        for (key, _) in class.objects {
            assert!(
                left.iter().any(|k| k == key),
                "{what}: gc deleted {key:?}: {left:?}"
            );
        }
        let c = tempfile::tempdir().unwrap();
        let s = open(c.path(), &url, moto.options()).unwrap();
        for (k, v) in [
            ("a", value(1.0, 50)),
            ("b", value(100.0, 70)),
            ("c", value(7.0, 10)),
        ] {
            assert_eq!(read(&s, k), v, "{what}: {k} after gc");
        }
        eprintln!("STRAYS | {what} | openable, reported, kept by gc: {report:?}");
    }
}

// ---------------------------------------------------------------------------
// Time limits

/// Runs `f` on a thread: its result and how long it took.
fn timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<(T, Duration)> {
    thread::spawn(move || {
        let start = Instant::now();
        let r = f();
        (r, start.elapsed())
    })
}

#[test]
fn a_hung_server_gives_a_typed_timeout_within_the_documented_bound() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("robust/hung");
    // Default network options (moto's address and credentials only).
    let o = moto.options();
    let net = NetOptions::default();
    assert_eq!(o.net.request_timeout, net.request_timeout);
    // The documented bound (README, "Remote stores"; `NetOptions`): no
    // answer within request_timeout, tried timeout_retries more times, and
    // 2 s for a further request of the call (a failed durable insert
    // uploads once more).
    let bound = net.request_timeout * (net.timeout_retries as u32 + 1) + Duration::from_secs(2);
    let slack = Duration::from_secs(10);
    let c = tempfile::tempdir().unwrap();
    let w = open(c.path(), &url, o.clone()).unwrap();
    w.insert_durable("a", value(3.0, 1000)).unwrap();
    drop(w);
    // Handles open before the server hangs: one to read (nothing cached),
    // one to write.
    let reader_dir = tempfile::tempdir().unwrap();
    let reader = open(reader_dir.path(), &url, o.clone()).unwrap();
    let writer_dir = tempfile::tempdir().unwrap();
    let writer = open(writer_dir.path(), &url, o.clone()).unwrap();

    moto.signal("-STOP");
    let open_dir = tempfile::tempdir().unwrap();
    let open_path = open_dir.path().to_path_buf();
    let (url2, o2) = (url.clone(), o.clone());
    let opening = timed(move || open(&open_path, &url2, o2).map(|_| ()));
    let getting = timed(move || {
        let r = reader.get::<f64, Ix1>("a").map(|_| ());
        (r, reader)
    });
    let inserting = timed(move || writer.insert_durable("b", value(4.0, 1000)));
    let (opened, t_open) = opening.join().unwrap();
    let ((got, reader), t_get) = getting.join().unwrap();
    let (inserted, t_insert) = inserting.join().unwrap();
    // A later call while the server still does not answer: seconds.
    let start = Instant::now();
    let again = reader.get::<f64, Ix1>("a").map(|_| ());
    let t_again = start.elapsed();
    moto.signal("-CONT");
    let later = Duration::from_secs(2) + Duration::from_secs(5);
    for (op, r, t, limit) in [
        ("open", opened, t_open, bound + slack),
        ("get", got, t_get, bound + slack),
        ("insert_durable", inserted, t_insert, bound + slack),
        ("get, again", again, t_again, later),
    ] {
        let e = r.expect_err(op);
        eprintln!(
            "HUNG | {op} | {:.2} s (limit {limit:?}) | {e}",
            t.as_secs_f64()
        );
        match &e {
            Error::Remote { kind, .. } => assert_eq!(*kind, RemoteErrorKind::Timeout, "{op}: {e}"),
            other => panic!("{op}: expected Error::Remote, got {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("no answer from") && text.contains(&moto.endpoint()),
            "{op}: {text}"
        );
        assert!(t < limit, "{op} took {t:?}");
    }
    // The first calls waited for a second attempt: a request that got no
    // answer is tried again once.
    for (op, t) in [
        ("open", t_open),
        ("get", t_get),
        ("insert_durable", t_insert),
    ] {
        assert!(t >= net.request_timeout * 2, "{op} took {t:?}");
    }
    // The server answers again: so does the store.
    let c = tempfile::tempdir().unwrap();
    let s = open(c.path(), &url, o).unwrap();
    assert_eq!(read(&s, "a"), value(3.0, 1000));
    s.insert_durable("c", value(5.0, 10)).unwrap();
}

#[test]
fn transfers_slower_than_the_request_timeout_are_not_cut_off() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url("robust/slow");
    // 1 MiB each way at 256 KiB/s: about 4 s per transfer, twice the
    // request timeout.
    let rate = 256 << 10;
    let proxy = Proxy::start(
        moto.port,
        ProxyMode {
            strip_conditions: false,
            rate: Some(rate),
        },
    );
    let mut o = via(&moto, &proxy);
    o.net = NetOptions::default()
        .with_request_timeout(Duration::from_secs(2))
        .with_min_upload_rate(128 << 10);
    let big = value(0.5, 1 << 17); // 1 MiB of f64
    let c = tempfile::tempdir().unwrap();
    let s = open(c.path(), &url, o.clone()).unwrap();
    let start = Instant::now();
    s.insert_durable("big", big.clone()).unwrap();
    let up = start.elapsed();
    drop(s);
    let c = tempfile::tempdir().unwrap();
    let r = open_read_only(c.path(), &url, o.clone()).unwrap();
    let start = Instant::now();
    assert_eq!(read(&r, "big"), big);
    let down = start.elapsed();
    eprintln!(
        "SLOW | upload {:.2} s, download {:.2} s, request timeout 2 s",
        up.as_secs_f64(),
        down.as_secs_f64()
    );
    // Both outlived the request timeout: only a pause would have cut them.
    assert!(up > Duration::from_secs(3), "{up:?}");
    assert!(down > Duration::from_secs(3), "{down:?}");
    // An upload slower than min_upload_rate is cut off: 1 MiB at 256 KiB/s
    // against a floor of 1 MiB/s (2 s + 1 s allowed).
    let mut strict = o.clone();
    strict.net = strict
        .net
        .with_min_upload_rate(1 << 20)
        .with_timeout_retries(0);
    let c = tempfile::tempdir().unwrap();
    let s = open(c.path(), &url, strict).unwrap();
    let e = s.insert_durable("big2", value(0.25, 1 << 17)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Remote {
                kind: RemoteErrorKind::Timeout,
                ..
            }
        ),
        "{e}"
    );
}
