//! Store URLs: parsed by `object_store` (`ObjectStoreScheme`), S3
//! credentials, region and endpoint from the `AWS_*` environment variables.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreScheme, RetryConfig};

use crate::error::{Error, RemoteErrorKind, Result};

/// Network settings of a remote store.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Retries of a failed request (object_store's `RetryConfig::max_retries`).
    pub max_retries: usize,
    /// Time after which a request is not retried any more.
    pub retry_timeout: Duration,
    /// Time limit of one request.
    pub request_timeout: Duration,
    /// Time limit to connect.
    pub connect_timeout: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// An opened store URL: the client, the prefix inside it, and the URL text
/// used in error messages.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    /// The URL without a trailing `/`.
    pub(crate) url: String,
}

impl Location {
    /// The URL of `path` (a path inside the store, prefix included).
    pub(crate) fn url_of(&self, path: &Path) -> String {
        let rel = path
            .prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
            .unwrap_or_default();
        if rel.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url, rel.join("/"))
        }
    }
}

fn config_err(url: &str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Remote {
        op: "open",
        key: String::new(),
        url: url.to_string(),
        kind: RemoteErrorKind::Config,
        source: source.into(),
    }
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Opens `url`: `s3://bucket/prefix` (endpoint, region and credentials from
/// `AWS_*`; conditional PUT by `If-Match`/`If-None-Match`), `file:///dir`
/// or `memory:///prefix`.
pub(crate) fn open(url: &str, net: &NetOptions, config: &[(String, String)]) -> Result<Location> {
    let trimmed = url.trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).map_err(|e| config_err(url, e))?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| config_err(url, e))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let retry = RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: net.max_retries,
                retry_timeout: net.retry_timeout,
            };
            let mut builder = AmazonS3Builder::from_env();
            for (k, v) in config {
                let key: AmazonS3ConfigKey = k
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|e| config_err(url, e))?;
                builder = builder.with_config(key, v);
            }
            let builder = builder
                .with_url(trimmed)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(retry)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    secs(net.request_timeout),
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    secs(net.connect_timeout),
                );
            Arc::new(builder.build().map_err(|e| config_err(url, e))?)
        }
        ObjectStoreScheme::Local => {
            let root = std::path::PathBuf::from(parsed.path());
            std::fs::create_dir_all(&root).map_err(|e| config_err(url, e))?;
            Arc::new(object_store::local::LocalFileSystem::new())
        }
        ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
        other => {
            return Err(config_err(
                url,
                format!(
                    "unsupported object store scheme {other:?} (use s3://, file:// or memory://)"
                ),
            ))
        }
    };
    Ok(Location {
        store,
        prefix,
        url: trimmed.to_string(),
    })
}

/// Percent-decodes an object-store path part (the inverse of `PathPart`'s
/// encoding); `None` if it is not valid percent-encoded UTF-8.
pub(crate) fn decode_part(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = part.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::PathPart;

    #[test]
    fn decode_inverts_path_part() {
        for name in [
            "plain",
            "a%b",
            "sp ace",
            "ＣＯＮ",
            "x{y}~z",
            ".hidden",
            "a*b?c",
        ] {
            let enc = PathPart::from(name);
            assert_eq!(decode_part(enc.as_ref()).as_deref(), Some(name));
        }
        assert_eq!(decode_part("%zz"), None);
        assert_eq!(decode_part("%4"), None);
    }

    #[test]
    fn memory_url_opens() {
        let loc = open("memory:///p/q", &NetOptions::default(), &[]).unwrap();
        assert_eq!(loc.prefix.as_ref(), "p/q");
        assert_eq!(loc.url_of(&loc.prefix.clone().join("x")), "memory:///p/q/x");
    }
}
