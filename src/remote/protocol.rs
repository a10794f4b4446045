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
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(&path, format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::corrupt(&path, "not a JSON object"))?;
        match obj.get("schema_version") {
            Some(v) if v.as_u64() == Some(1) && !v.is_f64() => {}
            Some(v) => {
                return Err(Error::SchemaVersion {
                    path,
                    found: v.to_string(),
                })
            }
            None => return Err(Error::corrupt(&path, "missing schema_version")),
        }
        match obj.get("lazy_disk_cache_class").and_then(|c| c.as_str()) {
            Some("DiskBackedNDArray") => {}
            Some(c) => {
                return Err(Error::UnknownClass {
                    path,
                    class: c.to_string(),
                })
            }
            None => return Err(Error::corrupt(&path, "missing lazy_disk_cache_class")),
        }
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
/// hexadecimal `<unique>`.
pub(crate) fn data_file_name(data: &str, name: &str) -> Option<String> {
    let part = data.strip_prefix("data/")?;
    if part.contains('/') || PathPart::parse(part).is_err() {
        return None;
    }
    let decoded = decode_part(part)?;
    if PathPart::from(decoded.as_str()).as_ref() != part {
        return None;
    }
    let unique = decoded
        .strip_prefix(name)?
        .strip_prefix('.')?
        .strip_suffix(".npy")?;
    if unique.is_empty()
        || unique.len() > 64
        || !unique
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(decoded)
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

/// Whether `e`'s chain holds a timeout.
fn timed_out(e: &(dyn std::error::Error + 'static), text: &str) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
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
        let message = if text.contains("connect") {
            format!(
                "could not connect to {at} within {:?}{tries}: the host does not answer (down, \
                 or a firewall drops the packets); check {setting}",
                n.connect_timeout
            )
        } else {
            format!(
                "no answer from {at} within {:?} per request{tries}: the server accepted the \
                 connection but is hung or overloaded (RemoteOptions::net sets the timeouts \
                 and retries)",
                n.request_timeout
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

/// Lists the metadata objects under the prefix (names that are not valid
/// entry names are skipped).
pub(crate) async fn list_meta(loc: &Location) -> Result<Vec<Listed>> {
    Ok(list_meta_all(loc).await?.0)
}

/// Lists the metadata objects under the prefix, and the decoded names of
/// the objects there named like a metadata object whose entry name the
/// store refuses (the store ignores them).
pub(crate) async fn list_meta_all(loc: &Location) -> Result<(Vec<Listed>, Vec<String>)> {
    use futures::TryStreamExt;
    let dir = loc.prefix.clone().join(META_DIR);
    let url = loc.url_of(&dir);
    let metas: Vec<_> = loc
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| remote_err(loc, "list", "", url, e))?;
    let mut out = Vec::with_capacity(metas.len());
    let mut ignored = Vec::new();
    for m in metas {
        let Some(rest) = m.location.prefix_match(&dir) else {
            continue;
        };
        let parts: Vec<_> = rest.collect();
        if parts.len() != 1 {
            continue;
        }
        let Some(name) = name_of_meta(parts[0].as_ref()) else {
            let file = parts[0].as_ref();
            let decoded = decode_part(file).unwrap_or_else(|| file.to_string());
            if let Some(stem) = decoded.strip_suffix(META_SUFFIX) {
                ignored.push(stem.to_string());
            }
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
    Ok((out, ignored))
}

/// Lists the objects under `prefix/<dir>`: (path, size, last modified ms).
pub(crate) async fn list_dir(loc: &Location, dir: &str) -> Result<Vec<(Path, u64, i64)>> {
    use futures::TryStreamExt;
    let dir = loc.prefix.clone().join(dir);
    let url = loc.url_of(&dir);
    let objs: Vec<_> = loc
        .store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| remote_err(loc, "list", "", url, e))?;
    Ok(objs
        .into_iter()
        .map(|m| (m.location, m.size, m.last_modified.timestamp_millis()))
        .collect())
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

    #[test]
    fn unique_ids_differ() {
        let a = unique_id();
        let b = unique_id();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
