//! The commit protocol of a remote store (docs/format.md, "Remote stores").
//!
//! Under a prefix `P`:
//!
//! * `P/data/K.<unique>.npy`: immutable data objects, plain `.npy` files;
//! * `P/meta/K.meta.json`: one metadata object per entry, the commit point.
//!   It holds GSEGUtils' `.meta.json` fields plus `ndoffload_remote`, which
//!   names the entry's data object, its size and its CRC-32. An empty (0
//!   byte) metadata object is a tombstone: the entry was removed;
//! * `P/gc/<data object name>`: a garbage collector's marks.
//!
//! A write uploads a new data object, then swaps the metadata object with a
//! conditional PUT (`If-None-Match: *` for a new key, `If-Match: <etag>` to
//! replace the version the writer saw). A failed condition is
//! [`Error::Conflict`].

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::url::{decode_part, Location};
use crate::error::{Error, RemoteErrorKind, Result};
use crate::name::EntryName;

/// Directory of metadata objects under the prefix.
pub(crate) const META_DIR: &str = "meta";
/// Directory of data objects under the prefix.
pub(crate) const DATA_DIR: &str = "data";
/// Directory of the garbage collector's marks under the prefix.
pub(crate) const GC_DIR: &str = "gc";
/// Suffix of a metadata object.
pub(crate) const META_SUFFIX: &str = ".meta.json";
/// Largest metadata object read.
const META_LIMIT: usize = 1 << 20;
/// Version of the `ndoffload_remote` field.
pub(crate) const REMOTE_VERSION: u32 = 1;

/// The crate's own field of a remote metadata object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RemoteField {
    /// Version of this field's layout (`1`).
    pub(crate) version: u32,
    /// The entry name.
    pub(crate) name: String,
    /// The data object, relative to the prefix, as stored (`data/<part>`).
    pub(crate) data: String,
    /// Size of the data object in bytes.
    pub(crate) size: u64,
    /// CRC-32 (ISO-HDLC) of the data object.
    pub(crate) crc32: u32,
    /// Unique id of the writer's handle.
    pub(crate) writer: String,
    /// When the writer committed (milliseconds since the Unix epoch).
    pub(crate) committed_ms: u64,
}

/// A remote `K.meta.json`: GSEGUtils' fields, then the crate's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RemoteMeta {
    pub(crate) schema_version: serde_json::Value,
    pub(crate) lazy_disk_cache_class: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: String,
    #[serde(default)]
    pub(crate) purge_disk_on_gc: bool,
    #[serde(default)]
    pub(crate) automatic_offloading: bool,
    #[serde(default = "yes")]
    pub(crate) enable_caching: bool,
    /// The user attributes of a store entry ([`DiskBackedStore::set_attrs`](crate::DiskBackedStore::set_attrs)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ndoffload_attrs: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) ndoffload_remote: RemoteField,
}

pub(crate) fn yes() -> bool {
    true
}

impl RemoteMeta {
    pub(crate) fn new(shape: Vec<usize>, dtype: String, remote: RemoteField) -> Self {
        RemoteMeta {
            schema_version: serde_json::Value::from(1),
            lazy_disk_cache_class: "DiskBackedNDArray".to_string(),
            shape,
            dtype,
            purge_disk_on_gc: false,
            automatic_offloading: false,
            enable_caching: true,
            ndoffload_attrs: None,
            ndoffload_remote: remote,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a metadata object read from `url` for entry `name`.
    pub(crate) fn parse(bytes: &[u8], name: &str, url: &str) -> Result<Self> {
        let path = PathBuf::from(url);
        // The fields it shares with a `.meta.json` are checked by the
        // store's one metadata parser (schema version, class, shape, dtype,
        // flags, attributes, nesting depth); then the crate's own field.
        crate::store::meta::Meta::parse(bytes, &path)?;
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(&path, format!("invalid JSON: {e}")))?;
        let meta: RemoteMeta = serde_json::from_value(value)
            .map_err(|e| Error::corrupt(&path, format!("invalid remote metadata: {e}")))?;
        let r = &meta.ndoffload_remote;
        if r.version != REMOTE_VERSION {
            return Err(Error::Unsupported {
                path,
                reason: format!(
                    "ndoffload_remote version {} (this build reads 1)",
                    r.version
                ),
            });
        }
        if r.name != name {
            return Err(Error::corrupt(
                &path,
                format!("names entry {:?}, stored as {name:?}", r.name),
            ));
        }
        data_file_name(&r.data, name).ok_or_else(|| {
            Error::corrupt(
                &path,
                format!("data object {:?} is not data/{name}.<unique>.npy", r.data),
            )
        })?;
        Ok(meta)
    }
}

/// The local file name of data object `data` (`data/<part>`) of entry `name`:
/// the decoded part, which must be `name.<unique>.npy` with a lowercase
/// hexadecimal `<unique>` (see [`parse_data_part`]).
pub(crate) fn data_file_name(data: &str, name: &str) -> Option<String> {
    let part = data.strip_prefix("data/")?;
    let (entry, decoded) = parse_data_part(part)?;
    (entry.as_str() == name).then_some(decoded)
}

/// The entry a data object's name (the part after `data/`, as stored)
/// belongs to, and the decoded name, if it is of the store's own form:
/// one path segment, percent-encoded as `object_store` encodes a part,
/// that decodes to `K.<unique>.npy` where `K` is a valid entry name and
/// `<unique>` 1 to 64 lowercase hexadecimal digits. Only such objects are
/// ever deleted by `gc`.
pub(crate) fn parse_data_part(part: &str) -> Option<(EntryName, String)> {
    if part.contains('/') || PathPart::parse(part).is_err() {
        return None;
    }
    let decoded = decode_part(part)?;
    if PathPart::from(decoded.as_str()).as_ref() != part {
        return None;
    }
    let (stem, unique) = decoded.strip_suffix(".npy")?.rsplit_once('.')?;
    if unique.is_empty()
        || unique.len() > 64
        || !unique
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let name = EntryName::new(stem).ok()?;
    Some((name, decoded))
}

/// The relative name `data/<part>` of a new data object of `name`.
pub(crate) fn new_data_rel(name: &EntryName, unique: &str) -> String {
    let part = PathPart::from(format!("{}.{unique}.npy", name.as_str()));
    format!("{DATA_DIR}/{}", part.as_ref())
}

/// The store path of a relative name (`data/<part>`, `meta/<part>`, ...).
pub(crate) fn rel_path(loc: &Location, rel: &str) -> Path {
    let mut p = loc.prefix.clone();
    for seg in rel.split('/') {
        match PathPart::parse(seg) {
            Ok(part) => p = p.join(part),
            Err(_) => p = p.join(seg),
        }
    }
    p
}

/// The metadata object of `name`.
pub(crate) fn meta_path(loc: &Location, name: &str) -> Path {
    loc.prefix
        .clone()
        .join(META_DIR)
        .join(PathPart::from(format!("{name}{META_SUFFIX}")))
}

/// The entry name of a listed metadata object's file name, if it is one.
pub(crate) fn name_of_meta(filename: &str) -> Option<EntryName> {
    let stem = decode_part(filename)?;
    let stem = stem.strip_suffix(META_SUFFIX)?;
    let name = EntryName::new(stem).ok()?;
    (PathPart::from(format!("{stem}{META_SUFFIX}")).as_ref() == filename).then_some(name)
}

/// A fresh globally unique id: 20 hexadecimal digits (see
/// [`UniqueId::hex20`](crate::io::UniqueId::hex20)).
pub(crate) fn unique_id() -> String {
    crate::io::unique_id().hex20()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Classifies an `object_store` error into [`Error::Remote`], with a
/// message that names the cause and the fix where it can be told (see
/// [`diagnose`]); the original error is kept as the message's source.
pub(crate) fn remote_err(
    loc: &Location,
    op: &'static str,
    key: &str,
    url: String,
    e: object_store::Error,
) -> Error {
    let (kind, message) = diagnose(loc, &url, &e);
    Error::Remote {
        op,
        key: key.to_string(),
        url,
        kind,
        source: Box::new(Explained {
            message,
            inner: Box::new(e),
        }),
    }
}

/// What went wrong, in words a user can act on; its source is the error
/// `object_store` returned (which may hold the server's raw answer).
#[derive(Debug)]
pub(crate) struct Explained {
    pub(crate) message: String,
    pub(crate) inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Explained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.as_ref())
    }
}

/// Every message of `e`'s chain, one per line.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        text.push_str(&err.to_string());
        text.push('\n');
        cur = err.source();
    }
    text
}

/// The text between `<tag>` and `</tag>` in `text` (an S3 error body).
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim())
}

/// The HTTP status in a message of `object_store`'s retry layer.
fn http_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// `N attempts`, from the `after N retries` of a message of `object_store`'s retry layer.
fn retries(text: &str) -> Option<String> {
    let at = text.find("after ")? + "after ".len();
    let rest = &text[at..];
    let n: u64 = rest[..rest.find(" retries")?].parse().ok()?;
    Some(format!("{} attempts", n + 1))
}

/// The client's own timeout in `e`'s chain (see `url::Guarded`), if it
/// holds one.
fn no_answer_limit<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a super::url::NoAnswer> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err.downcast_ref::<super::url::NoAnswer>() {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

/// Whether `e`'s chain holds a timeout.
fn timed_out(e: &(dyn std::error::Error + 'static), text: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<super::url::NoAnswer>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<object_store::client::HttpError>() {
            if h.kind() == object_store::client::HttpErrorKind::Timeout {
                return true;
            }
        }
        cur = err.source();
    }
    let lower = text.to_ascii_lowercase();
    lower.contains("timed out") || lower.contains("timeout") || lower.contains("deadline")
}

/// Whether `e` says the bucket does not exist.
pub(crate) fn no_such_bucket(e: &object_store::Error) -> bool {
    chain_text(e).contains("<Code>NoSuchBucket</Code>")
}

/// The kind of `e` and a message naming its cause and the fix: a refused
/// connection or unknown host at the endpoint, a plain-HTTP endpoint
/// without `AWS_ALLOW_HTTP`, no credentials, a key the server does not
/// know or a secret that does not match, a missing bucket, a hung server;
/// otherwise the server's error code and message (never its raw XML).
pub(crate) fn diagnose(
    loc: &Location,
    url: &str,
    e: &object_store::Error,
) -> (RemoteErrorKind, String) {
    use object_store::Error as E;
    use RemoteErrorKind as K;
    let text = chain_text(e);
    let ep = loc.endpoint.as_ref();
    let at = ep.map_or_else(|| loc.url.clone(), |ep| ep.describe());
    let setting = ep.map_or("AWS_ENDPOINT", |ep| ep.setting());
    let key_id = ep
        .and_then(|ep| ep.key_id.clone())
        .map_or_else(|| "(none)".to_string(), |k| format!("{k:?}"));
    let bucket = ep.map(|ep| ep.bucket.clone()).unwrap_or_default();
    let fallback_kind = match e {
        E::NotFound { .. } => K::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => K::PermissionDenied,
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => K::Precondition,
        E::NotImplemented { .. } | E::NotSupported { .. } => K::Unsupported,
        E::UnknownConfigurationKey { .. } | E::InvalidPath { .. } => K::Config,
        _ => K::Other,
    };
    if text.contains("/latest/api/token") || text.contains("/latest/meta-data/iam") {
        return (
            K::PermissionDenied,
            "no credentials found: AWS_ACCESS_KEY_ID is not set, and the EC2 instance \
             metadata service (asked last, for an instance role) gave none: set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance role is \
             attached"
                .to_string(),
        );
    }
    if super::url::connection_refused(e) {
        return (
            K::Network,
            format!(
                "connection refused at {at}: no server listens there; start the server, \
                 or correct {setting}"
            ),
        );
    }
    if super::url::unknown_host(e) {
        return (
            K::Network,
            if ep.is_some_and(|ep| ep.set_by.is_some()) {
                format!("the host of {at} does not exist (DNS): correct {setting}")
            } else {
                format!(
                    "the host of {at} could not be resolved (DNS): check the network, and \
                     AWS_DEFAULT_REGION"
                )
            },
        );
    }
    if text.contains("URL scheme is not allowed")
        || (text.contains("builder error")
            && ep.is_some_and(|ep| ep.url.to_ascii_lowercase().starts_with("http://")))
    {
        return (
            K::Config,
            format!(
                "the endpoint {at} is plain HTTP, which is refused unless AWS_ALLOW_HTTP=true: \
                 set AWS_ALLOW_HTTP=true (a local test server), or use an https:// endpoint"
            ),
        );
    }
    let status = http_status(&text);
    if let Some(code) = xml_field(&text, "Code") {
        let server_says = xml_field(&text, "Message").unwrap_or("");
        let (kind, message) = match code {
            "NoSuchBucket" => (
                K::NotFound,
                format!(
                    "bucket {bucket:?} does not exist at {at}: create it (for example `aws \
                     {}s3 mb s3://{bucket}`), or correct the bucket in the URL",
                    ep.filter(|ep| ep.set_by.is_some())
                        .map(|ep| format!("--endpoint-url {} ", ep.url))
                        .unwrap_or_default()
                ),
            ),
            "InvalidAccessKeyId" => (
                K::PermissionDenied,
                format!(
                    "the server at {at} does not know the access key {key_id} \
                     (AWS_ACCESS_KEY_ID): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to a \
                     key pair it issued"
                ),
            ),
            "SignatureDoesNotMatch" => (
                K::PermissionDenied,
                format!(
                    "the server at {at} refused the request signature: AWS_SECRET_ACCESS_KEY \
                     is not the secret of the access key {key_id} (AWS_ACCESS_KEY_ID)"
                ),
            ),
            "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => (
                K::PermissionDenied,
                format!(
                    "the session token (AWS_SESSION_TOKEN) was refused by {at} ({code}): \
                     renew the credentials"
                ),
            ),
            "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => (
                K::PermissionDenied,
                format!(
                    "access denied by {at} to {url} for the access key {key_id}: the \
                     credentials lack permission (s3:ListBucket, s3:GetObject, s3:PutObject, \
                     s3:DeleteObject on the bucket and prefix)"
                ),
            ),
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException" => (
                K::Config,
                format!(
                    "bucket {bucket:?} is in another region than the one configured: set \
                     AWS_DEFAULT_REGION (or AWS_REGION) to the bucket's region ({code}: \
                     {server_says})"
                ),
            ),
            _ => (
                fallback_kind,
                format!(
                    "{at} answered{} {code}: {server_says}",
                    status.map(|s| format!(" HTTP {s}")).unwrap_or_default()
                ),
            ),
        };
        return (kind, message);
    }
    if timed_out(e, &text) {
        let n = &loc.net;
        let tries = retries(&text)
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let no_answer = no_answer_limit(e);
        let message = if let Some(n) = no_answer.filter(|n| n.stalled()) {
            format!(
                "the answer from {at} stopped for {:?} before its end{tries}: the server is \
                 hung or overloaded, or the connection stalled (RemoteOptions::net sets the \
                 timeouts and retries: NetOptions::request_timeout, timeout_retries)",
                n.limit
            )
        } else if no_answer.is_none() && text.to_ascii_lowercase().contains("connect") {
            format!(
                "could not connect to {at} within {:?}{tries}: the host does not answer (down, \
                 or a firewall drops the packets); check {setting}",
                n.connect_timeout
            )
        } else {
            format!(
                "no answer from {at} within {:?} per request{tries}: the server accepted the \
                 connection but is hung or overloaded (RemoteOptions::net sets the timeouts \
                 and retries: NetOptions::request_timeout, timeout_retries, min_upload_rate)",
                no_answer.map_or(n.request_timeout, |a| a.limit)
            )
        };
        return (K::Timeout, message);
    }
    let lower = text.to_ascii_lowercase();
    if fallback_kind == K::Other
        && (lower.contains("connect")
            || lower.contains("connection")
            || lower.contains("sending request")
            || lower.contains("broken pipe")
            || lower.contains("reset")
            || lower.contains("incomplete")
            || lower.contains("eof"))
    {
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return (K::Network, format!("the connection to {at} failed: {last}"));
    }
    let message = match (fallback_kind, status) {
        (K::NotFound, _) => format!("no such object at {url} (HTTP 404)"),
        (K::PermissionDenied, Some(s)) => format!(
            "{at} refused the request (HTTP {s}) for the access key {key_id}: check \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the permissions on the bucket"
        ),
        (K::PermissionDenied, None) => format!("{at} refused the credentials: {e}"),
        (K::Precondition, _) => format!("a condition of the request failed at {url}"),
        _ => {
            // The first line of `object_store`'s message, without a body.
            let first = e.to_string();
            let first = first.split('<').next().unwrap_or("").trim_end().to_string();
            match status {
                Some(s) => format!("{at} answered HTTP {s}: {first}"),
                None => first,
            }
        }
    };
    (fallback_kind, message)
}

/// The folder under the prefix of the objects a capability probe writes
/// (see [`probe`]); nothing else of the store lives there yet.
pub(crate) const PROBE_DIR: &str = ".ndoffload";
/// The start of a probe object's name: `probe-<unique>`.
const PROBE_STEM: &str = "probe-";
/// How old a probe object left by an interrupted probe must be before
/// `gc` deletes it, whatever its grace period (a probe takes seconds).
pub(crate) const PROBE_LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// The servers (endpoint and bucket) this process has found to enforce
/// conditional PUT.
fn probed() -> &'static parking_lot::Mutex<std::collections::BTreeSet<String>> {
    static PROBED: std::sync::OnceLock<parking_lot::Mutex<std::collections::BTreeSet<String>>> =
        std::sync::OnceLock::new();
    PROBED.get_or_init(Default::default)
}

/// Refuses to open `loc` for writing unless its server enforces the
/// conditions the commit protocol relies on ([`probe`]). Asked once per
/// process and server (endpoint and bucket): the answer is a property of
/// the server the requests reach, which a record under the prefix could
/// not vouch for (another client may reach the prefix through another
/// endpoint or a proxy). `memory://` and `file://` have no server: their
/// conditions are `object_store`'s own code, and are not probed.
pub(crate) async fn check_conditional_put(loc: &Location) -> Result<()> {
    let Some(ep) = &loc.endpoint else {
        return Ok(());
    };
    let server = format!("{} {}", ep.url, ep.bucket);
    if probed().lock().contains(&server) {
        return Ok(());
    }
    probe(loc).await?;
    probed().lock().insert(server);
    Ok(())
}

/// How a server treated one condition of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treated {
    /// The PUT failed with HTTP 412 (or 404 for `If-Match` on a missing
    /// object): the condition holds.
    Enforced,
    /// The PUT succeeded although its condition was false.
    Ignored,
    /// The server (or `object_store`'s client for it) does not implement
    /// the condition.
    NotImplemented,
}

/// Checks that the store at `loc` enforces `If-None-Match: *`
/// (`PutMode::Create` of an object that exists fails) and `If-Match`
/// (`PutMode::Update` with an e-tag the object does not have fails): the
/// two conditions of the commit protocol. Against a server that accepts
/// and ignores them, every commit "succeeds" and concurrent writers
/// overwrite each other without an error.
///
/// Writes one object, `<prefix>/.ndoffload/probe-<unique>` (a create,
/// then a second create and a replace with a wrong e-tag, both of which
/// must fail), and deletes it whatever the outcome; one an interrupted
/// probe leaves is deleted by `gc` after [`PROBE_LEFTOVER_AGE`].
///
/// # Errors
///
/// [`Error::Remote`] of kind [`Unsupported`](RemoteErrorKind::Unsupported)
/// naming the endpoint and what it does wrong; the errors of the requests
/// (network, credentials) as they come.
pub(crate) async fn probe(loc: &Location) -> Result<()> {
    let path = loc
        .prefix
        .clone()
        .join(PROBE_DIR)
        .join(format!("{PROBE_STEM}{}", unique_id()));
    let url = loc.url_of(&path);
    let fail = |e| remote_err(loc, "check conditional PUT at", "", url.clone(), e);
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    loc.store
        .put_opts(&path, b"1".to_vec().into(), create())
        .await
        .map_err(fail)?;
    let checks = async {
        let wrong = UpdateVersion {
            e_tag: Some(format!("\"{}\"", unique_id())),
            version: None,
        };
        let update = PutOptions {
            mode: PutMode::Update(wrong),
            ..Default::default()
        };
        let (again, replace) = futures::join!(
            loc.store.put_opts(&path, b"2".to_vec().into(), create()),
            loc.store.put_opts(&path, b"3".to_vec().into(), update),
        );
        let treated = |r: object_store::Result<object_store::PutResult>| match r {
            Ok(_) => Ok(Treated::Ignored),
            Err(
                e @ (object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. }),
            ) if !no_such_bucket(&e) => Ok(Treated::Enforced),
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) => Ok(Treated::NotImplemented),
            Err(e) => Err(fail(e)),
        };
        Ok::<_, Error>((treated(again)?, treated(replace)?))
    }
    .await;
    // The probe's object goes, whatever the outcome.
    if let Err(e) = loc.store.delete(&path).await {
        if !matches!(e, object_store::Error::NotFound { .. }) {
            tracing::warn!(url = %url, error = %e, "could not delete the probe object (gc deletes it later)");
        }
    }
    let (none_match, if_match) = checks?;
    let mut wrong = Vec::new();
    for (condition, treated, test) in [
        (
            "If-None-Match: *",
            none_match,
            "a PUT that must fail because the object exists",
        ),
        (
            "If-Match",
            if_match,
            "a PUT with an e-tag the object does not have",
        ),
    ] {
        match treated {
            Treated::Enforced => {}
            Treated::Ignored => wrong.push(format!("it ignores {condition} ({test} succeeded)")),
            Treated::NotImplemented => wrong.push(format!(
                "it does not implement {condition} on PUT ({test} was refused as not implemented)"
            )),
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    let at = loc
        .endpoint
        .as_ref()
        .map_or_else(|| loc.url.clone(), |ep| ep.describe());
    Err(Error::Remote {
        op: "open for writing",
        key: String::new(),
        url: loc.url.clone(),
        kind: RemoteErrorKind::Unsupported,
        source: format!(
            "the server at {at} does not enforce conditional PUT: {}, checked on {url}. The \
             commit protocol needs HTTP 412 for a failed If-None-Match / If-Match; without it \
             concurrent writers would overwrite each other's commits without an error, so \
             the store is not opened for writing. Open it read-only \
             (StoreBuilder::read_only(true)), or use a server that enforces conditional PUT \
             (AWS S3, MinIO, Ceph RGW)",
            wrong.join("; and ")
        )
        .into(),
    })
}

/// Deletes the probe objects under the prefix older than `age` (left by
/// probes that were interrupted); returns how many.
pub(crate) async fn sweep_probes(loc: &Location, age: std::time::Duration) -> Result<usize> {
    let now = now_ms() as i64;
    let mut n = 0;
    for item in list_items(loc, PROBE_DIR).await? {
        let Item::Object(m) = item else { continue };
        let dir = loc.prefix.clone().join(PROBE_DIR);
        let parts: Vec<_> = m
            .location
            .prefix_match(&dir)
            .map(|p| p.collect())
            .unwrap_or_default();
        let [file] = parts.as_slice() else { continue };
        let is_probe = file.as_ref().strip_prefix(PROBE_STEM).is_some_and(|u| {
            !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if is_probe && now - m.last_modified.timestamp_millis() >= age.as_millis() as i64 {
            delete(loc, &m.location, file.as_ref()).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a metadata object holds.
#[derive(Debug, Clone)]
pub(crate) enum Head {
    /// A committed entry and the version of its metadata object.
    Live(Box<RemoteMeta>, UpdateVersion),
    /// A tombstone (an empty metadata object) and its version.
    Removed(UpdateVersion),
}

/// Reads the metadata object of `name`; `None` if there is none.
pub(crate) async fn read_meta(loc: &Location, name: &str) -> Result<Option<Head>> {
    let path = meta_path(loc, name);
    let url = loc.url_of(&path);
    let got = match loc.store.get(&path).await {
        Ok(g) => g,
        // A missing bucket is an error, not a missing entry.
        Err(e @ object_store::Error::NotFound { .. }) if !no_such_bucket(&e) => return Ok(None),
        Err(e) => return Err(remote_err(loc, "read metadata of", name, url, e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    if got.meta.size > META_LIMIT as u64 {
        return Err(Error::corrupt(
            &PathBuf::from(&url),
            format!(
                "metadata object of {} bytes (limit {META_LIMIT})",
                got.meta.size
            ),
        ));
    }
    let bytes = got
        .bytes()
        .await
        .map_err(|e| remote_err(loc, "read metadata of", name, url.clone(), e))?;
    if bytes.is_empty() {
        return Ok(Some(Head::Removed(version)));
    }
    let meta = RemoteMeta::parse(&bytes, name, &url)?;
    Ok(Some(Head::Live(Box::new(meta), version)))
}

/// Swaps the metadata object of `name` to `body` (empty: a tombstone) if it
/// is still at `base` (`None`: if there is none). Returns the new version.
///
/// A failed condition is re-checked: if the metadata object now names the
/// data object `body` names (unique to one write: a retried request whose
/// first attempt had succeeded, or a restarted writer completing its
/// staged write), the commit succeeded; otherwise [`Error::Conflict`].
pub(crate) async fn commit(
    loc: &Location,
    name: &str,
    base: Option<&UpdateVersion>,
    body: Vec<u8>,
) -> Result<UpdateVersion> {
    let path = meta_path(loc, name);
    let url = loc.url_of(&path);
    let mode = match base {
        Some(v) => PutMode::Update(v.clone()),
        None => PutMode::Create,
    };
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    match loc.store.put_opts(&path, body.clone().into(), opts).await {
        Ok(r) => Ok(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        }),
        Err(
            e @ (object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::NotFound { .. }),
        ) if !no_such_bucket(&e) => {
            // Did an earlier attempt of this very commit succeed (a retried
            // request, or a writer killed before it recorded its success)?
            // The data object's name is unique to one write.
            if let Ok(Some(head)) = read_meta(loc, name).await {
                match head {
                    Head::Live(m, v)
                        if !body.is_empty()
                            && body_data(&body).as_deref()
                                == Some(m.ndoffload_remote.data.as_str()) =>
                    {
                        return Ok(v);
                    }
                    Head::Removed(v) if body.is_empty() => return Ok(v),
                    _ => {}
                }
            }
            Err(Error::Conflict {
                key: name.to_string(),
                url,
            })
        }
        Err(e) => Err(remote_err(loc, "commit", name, url, e)),
    }
}

fn body_data(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(
        v.get("ndoffload_remote")?
            .get("data")?
            .as_str()?
            .to_string(),
    )
}

/// One listed metadata object.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) name: EntryName,
    pub(crate) version: UpdateVersion,
    /// 0 for a tombstone.
    pub(crate) size: u64,
}

/// An object under `meta/` or `data/` that is not one of the store's:
/// the store ignores it, `gc` never deletes it, `ndoffload ls` and
/// `verify` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stray {
    /// How reports name it: the entry name for a metadata object whose
    /// name is not a valid entry name, else the key relative to the prefix
    /// (control characters escaped).
    pub(crate) name: String,
    /// Why the store ignores it.
    pub(crate) reason: String,
}

/// One object of a listing: an object `object_store` can name, or the raw
/// key of one it cannot (a `.`, `..` or empty segment, a control
/// character: see `url::stray_key`).
enum Item {
    Object(object_store::ObjectMeta),
    Unnamed(String),
}

/// Lists every object under `prefix/<dir>/`. One object whose key
/// `object_store` cannot name does not fail the listing: it is an
/// [`Item::Unnamed`]. A directory marker (an object named `<dir>/`, as
/// consoles create) is left out.
async fn list_items(loc: &Location, dir: &str) -> Result<Vec<Item>> {
    use futures::StreamExt;
    let dir = loc.prefix.clone().join(dir);
    let url = loc.url_of(&dir);
    let mut stream = loc.store.list(Some(&dir));
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        let m = item.map_err(|e| remote_err(loc, "list", "", url.clone(), e))?;
        if let Some(key) = super::url::stray_key(&m) {
            if key.strip_suffix('/') != Some(dir.as_ref()) {
                out.push(Item::Unnamed(key));
            }
            continue;
        }
        if m.location != dir {
            out.push(Item::Object(m));
        }
    }
    Ok(out)
}

/// `key` (a whole key under the bucket) relative to the prefix, control
/// characters escaped, for reports.
fn shown(loc: &Location, key: &str) -> String {
    let prefix = loc.prefix.as_ref();
    let rel = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key)
    };
    crate::inspect::escape_name(rel.as_bytes())
}

/// The key of `path` relative to the prefix, for reports.
fn shown_path(loc: &Location, path: &Path) -> String {
    let parts: Vec<String> = path
        .prefix_match(&loc.prefix)
        .map(|parts| {
            parts
                .map(|p| decode_part(p.as_ref()).unwrap_or_else(|| p.as_ref().to_string()))
                .collect()
        })
        .unwrap_or_default();
    crate::inspect::escape_name(parts.join("/").as_bytes())
}

/// Lists the metadata objects under the prefix (objects that are not a
/// valid `meta/K.meta.json` are skipped).
pub(crate) async fn list_meta(loc: &Location) -> Result<Vec<Listed>> {
    Ok(list_meta_all(loc).await?.0)
}

/// Lists the metadata objects under the prefix, and the other objects
/// under `meta/`, which the store ignores: objects named like a metadata
/// object whose entry name the store refuses, objects in sub-folders or
/// not named `*.meta.json`, and objects whose keys `object_store` cannot
/// name.
pub(crate) async fn list_meta_all(loc: &Location) -> Result<(Vec<Listed>, Vec<Stray>)> {
    let dir = loc.prefix.clone().join(META_DIR);
    let mut out = Vec::new();
    let mut strays = Vec::new();
    for item in list_items(loc, META_DIR).await? {
        let m = match item {
            Item::Object(m) => m,
            Item::Unnamed(key) => {
                strays.push(Stray {
                    name: shown(loc, &key),
                    reason: "not an object of the store: its key has a `.`, `..` or empty \
                             segment, or a control character"
                        .to_string(),
                });
                continue;
            }
        };
        let parts: Vec<_> = m
            .location
            .prefix_match(&dir)
            .map(|p| p.collect())
            .unwrap_or_default();
        let file = match parts.as_slice() {
            [file] => file.as_ref(),
            _ => {
                strays.push(Stray {
                    name: shown_path(loc, &m.location),
                    reason: "not an object of the store: a sub-folder of meta/".to_string(),
                });
                continue;
            }
        };
        let Some(name) = name_of_meta(file) else {
            let decoded = decode_part(file).unwrap_or_else(|| file.to_string());
            let stray = match decoded.strip_suffix(META_SUFFIX) {
                Some(stem) => Stray {
                    name: crate::inspect::escape_name(stem.as_bytes()),
                    reason: format!(
                        "its metadata object's name is not a valid entry name{}",
                        match EntryName::new(stem) {
                            Err(Error::InvalidName { rule, .. }) => format!(" ({rule})"),
                            _ => String::new(),
                        }
                    ),
                },
                None => Stray {
                    name: shown_path(loc, &m.location),
                    reason: format!("not an object of the store: not named K{META_SUFFIX}"),
                },
            };
            strays.push(stray);
            continue;
        };
        out.push(Listed {
            name,
            version: UpdateVersion {
                e_tag: m.e_tag,
                version: m.version,
            },
            size: m.size,
        });
    }
    out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    strays.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, strays))
}

/// An object of the store's own naming form under `data/` or `gc/`:
/// `<dir>/<part>`, one segment that decodes to `K.<unique>.npy` (see
/// [`parse_data_part`]).
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub(crate) path: Path,
    /// The part after `<dir>/`, as stored.
    pub(crate) part: String,
    /// The entry the name says the object belongs to.
    pub(crate) name: EntryName,
    pub(crate) size: u64,
    /// Last modified, in milliseconds since the Unix epoch.
    pub(crate) modified_ms: i64,
}

/// Lists `data/` (or `gc/`): the objects of the store's own naming form,
/// and the others (never touched by the store).
pub(crate) async fn list_owned(loc: &Location, dir: &str) -> Result<(Vec<Owned>, Vec<Stray>)> {
    let base = loc.prefix.clone().join(dir);
    let foreign = format!("not an object of the store: not named {dir}/K.<unique>.npy");
    let mut owned = Vec::new();
    let mut strays = Vec::new();
    for item in list_items(loc, dir).await? {
        let m = match item {
            Item::Object(m) => m,
            Item::Unnamed(key) => {
                strays.push(Stray {
                    name: shown(loc, &key),
                    reason: foreign.clone(),
                });
                continue;
            }
        };
        let parts: Vec<_> = m
            .location
            .prefix_match(&base)
            .map(|p| p.collect())
            .unwrap_or_default();
        let name = match parts.as_slice() {
            [part] => parse_data_part(part.as_ref()).map(|(n, _)| (n, part.as_ref().to_string())),
            _ => None,
        };
        match name {
            Some((name, part)) => owned.push(Owned {
                path: m.location,
                part,
                name,
                size: m.size,
                modified_ms: m.last_modified.timestamp_millis(),
            }),
            None => strays.push(Stray {
                name: shown_path(loc, &m.location),
                reason: foreign.clone(),
            }),
        }
    }
    strays.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((owned, strays))
}

/// Deletes `path`; a missing object is not an error.
pub(crate) async fn delete(loc: &Location, path: &Path, key: &str) -> Result<()> {
    match loc.store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(remote_err(loc, "delete", key, loc.url_of(path), e)),
    }
}

/// The store's client (for transfers).
pub(crate) fn client(loc: &Location) -> &dyn ObjectStore {
    loc.store.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn data_names() {
        let n = EntryName::new("a b%").unwrap();
        let rel = new_data_rel(&n, "0123abcd");
        assert_eq!(
            data_file_name(&rel, "a b%").as_deref(),
            Some("a b%.0123abcd.npy")
        );
        assert_eq!(data_file_name("data/x.1.npy", "y"), None);
        assert_eq!(data_file_name("data/x.Z.npy", "x"), None);
        assert_eq!(data_file_name("data/../x.1.npy", "x"), None);
        assert_eq!(data_file_name("meta/x.1.npy", "x"), None);
    }

    #[test]
    fn meta_names() {
        let n = name_of_meta(PathPart::from("k~1.meta.json").as_ref()).unwrap();
        assert_eq!(n.as_str(), "k~1");
        assert!(name_of_meta("k.npy").is_none());
        assert!(name_of_meta("CON.meta.json").is_none());
    }

    #[test]
    fn meta_round_trip_and_checks() {
        let m = RemoteMeta::new(
            vec![2, 3],
            "<f8".into(),
            RemoteField {
                version: 1,
                name: "k".into(),
                data: "data/k.ab.npy".into(),
                size: 176,
                crc32: 7,
                writer: "w".into(),
                committed_ms: 1,
            },
        );
        let b = m.to_bytes();
        assert!(std::str::from_utf8(&b)
            .unwrap()
            .starts_with("{\"schema_version\":1,"));
        assert_eq!(RemoteMeta::parse(&b, "k", "u").unwrap(), m);
        assert!(matches!(
            RemoteMeta::parse(&b, "j", "u"),
            Err(Error::Corrupt { .. })
        ));
        let v2 = String::from_utf8(b)
            .unwrap()
            .replace("\"schema_version\":1", "\"schema_version\":2");
        assert!(matches!(
            RemoteMeta::parse(v2.as_bytes(), "k", "u"),
            Err(Error::SchemaVersion { .. })
        ));
        assert!(matches!(
            RemoteMeta::parse(b"[1]", "k", "u"),
            Err(Error::Corrupt { .. })
        ));
    }

    /// An object store that turns `PutMode::Create` (when `create`) and
    /// `PutMode::Update` (when `update`) into plain overwrites, as a server
    /// that ignores `If-None-Match` / `If-Match` does; it counts requests.
    #[derive(Debug)]
    struct IgnoresModes {
        inner: object_store::memory::InMemory,
        create: bool,
        update: bool,
        requests: std::sync::atomic::AtomicUsize,
    }

    impl std::fmt::Display for IgnoresModes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("IgnoresModes")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresModes {
        async fn put_opts(
            &self,
            location: &Path,
            payload: object_store::PutPayload,
            mut opts: PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match opts.mode {
                PutMode::Create if self.create => opts.mode = PutMode::Overwrite,
                PutMode::Update(_) if self.update => opts.mode = PutMode::Overwrite,
                _ => {}
            }
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn on(store: Arc<dyn ObjectStore>) -> Location {
        let loc = super::super::url::open(
            "memory:///bucket/p",
            &super::super::url::NetOptions::default(),
            &[],
            false,
        )
        .unwrap();
        Location { store, ..loc }
    }

    fn ignoring(create: bool, update: bool) -> Arc<IgnoresModes> {
        Arc::new(IgnoresModes {
            inner: object_store::memory::InMemory::new(),
            create,
            update,
            requests: Default::default(),
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Every key under the store, as text.
    fn keys(store: &dyn ObjectStore) -> Vec<String> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = block_on(store.list(None).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn probe_accepts_a_store_that_enforces_both_conditions() {
        let store = ignoring(false, false);
        block_on(probe(&on(store.clone()))).unwrap();
        assert!(keys(store.as_ref()).is_empty(), "the probe object is gone");
        // create, create again, replace, delete
        assert_eq!(store.requests.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    #[test]
    fn probe_refuses_a_store_that_ignores_the_conditions() {
        for (create, update, says, not_says) in [
            (
                true,
                true,
                vec!["ignores If-None-Match: *", "ignores If-Match"],
                vec![],
            ),
            (
                true,
                false,
                vec!["ignores If-None-Match: *"],
                vec!["ignores If-Match"],
            ),
            (
                false,
                true,
                vec!["ignores If-Match"],
                vec!["ignores If-None-Match"],
            ),
        ] {
            let store = ignoring(create, update);
            let e = block_on(probe(&on(store.clone()))).unwrap_err();
            let text = e.to_string();
            match &e {
                Error::Remote { kind, url, op, .. } => {
                    assert_eq!(*kind, RemoteErrorKind::Unsupported, "{text}");
                    assert_eq!(url, "memory:///bucket/p");
                    assert_eq!(*op, "open for writing");
                }
                other => panic!("expected Error::Remote, got {other:?}"),
            }
            for p in says {
                assert!(text.contains(p), "{p:?} missing from {text}");
            }
            for p in not_says {
                assert!(!text.contains(p), "{p:?} in {text}");
            }
            assert!(text.contains("read-only"), "{text}");
            assert!(
                text.contains("memory:///bucket/p/.ndoffload/probe-"),
                "{text}"
            );
            assert!(keys(store.as_ref()).is_empty(), "the probe object is gone");
        }
    }

    #[test]
    fn stores_without_a_server_are_not_probed() {
        let store = ignoring(true, true);
        block_on(check_conditional_put(&on(store.clone()))).unwrap();
        assert_eq!(store.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn data_part_forms() {
        let ok = |part: &str, name: &str| {
            let (n, decoded) = parse_data_part(part).unwrap_or_else(|| panic!("{part}"));
            assert_eq!(n.as_str(), name);
            decoded
        };
        assert_eq!(
            ok("a.0123456789abcdef0123.npy", "a"),
            "a.0123456789abcdef0123.npy"
        );
        ok("a.b.0f.npy", "a.b");
        ok(PathPart::from("sp ace%.ab.npy").as_ref(), "sp ace%");
        for bad in [
            "x.npy",
            "x.bin",
            "x.ABC.npy",
            "x.12g.npy",
            "x..npy",
            ".0f.npy",
            "CON.0f.npy",
            "sub/y.0f.npy",
            "a%20b.0f.npy",
            "x.0f.npy.tmp",
            &format!("x.{}.npy", "0".repeat(65)),
        ] {
            assert!(parse_data_part(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn listing_reports_what_the_store_ignores() {
        let loc = super::super::url::open(
            "memory:///bucket/p",
            &super::super::url::NetOptions::default(),
            &[],
            false,
        )
        .unwrap();
        let put = |key: &str, body: &[u8]| {
            let path = Path::parse(key).unwrap();
            block_on(loc.store.put(&path, body.to_vec().into())).unwrap();
        };
        put("bucket/p/meta/a.meta.json", b"{}");
        put("bucket/p/meta/foreign.txt", b"x");
        put("bucket/p/meta/sub/b.meta.json", b"{}");
        put("bucket/p/meta/CON.meta.json", b"{}");
        put("bucket/p/data/a.0f.npy", b"x");
        put("bucket/p/data/x.npy", b"x");
        put("bucket/p/data/sub/a.0f.npy", b"x");
        let (listed, strays) = block_on(list_meta_all(&loc)).unwrap();
        let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        let strays: Vec<&str> = strays.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(strays, ["CON", "meta/foreign.txt", "meta/sub/b.meta.json"]);
        let (owned, strays) = block_on(list_owned(&loc, DATA_DIR)).unwrap();
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].part, "a.0f.npy");
        let strays: Vec<&str> = strays.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(strays, ["data/sub/a.0f.npy", "data/x.npy"]);
    }

    #[test]
    fn unique_ids_differ() {
        let a = unique_id();
        let b = unique_id();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
