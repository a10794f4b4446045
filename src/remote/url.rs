//! Store URLs: parsed by `object_store` (`ObjectStoreScheme`), S3
//! credentials, region and endpoint from the `AWS_*` environment variables.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreScheme, RetryConfig,
};

use crate::error::{Error, RemoteErrorKind, Result};

/// Network settings of a remote store.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Retries of a failed request (object_store's `RetryConfig::max_retries`):
    /// server errors, broken connections and timeouts. A refused connection
    /// or a host name that does not exist is not retried (nothing listens
    /// there: the error comes at once).
    pub max_retries: usize,
    /// Time after which a request is not retried any more.
    pub retry_timeout: Duration,
    /// Time limit of one request (its whole transfer). A server that
    /// accepts connections but does not answer fails after this times the
    /// attempts (with the defaults, about four minutes).
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
    /// Where the requests go, for messages: the endpoint URL and the
    /// variable or option that set it (`None`: not an S3 store).
    pub(crate) endpoint: Option<Endpoint>,
    /// The timeouts and retries the client was built with (for messages).
    pub(crate) net: NetOptions,
}

/// The S3 endpoint of a [`Location`], for messages.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `http://127.0.0.1:5000`, or AWS' own endpoint.
    pub(crate) url: String,
    /// What set it: `AWS_ENDPOINT`, `RemoteOptions::config`, or `None` for
    /// AWS' default endpoint.
    pub(crate) set_by: Option<String>,
    /// The bucket of the URL.
    pub(crate) bucket: String,
    /// The access key id in use, if any (named when the server refuses it).
    pub(crate) key_id: Option<String>,
}

impl Endpoint {
    /// `http://127.0.0.1:5000 (from AWS_ENDPOINT)`.
    pub(crate) fn describe(&self) -> String {
        match &self.set_by {
            Some(v) => format!("{} (from {v})", self.url),
            None => self.url.clone(),
        }
    }

    /// What to correct to change the endpoint: the variable or option that
    /// set it.
    pub(crate) fn setting(&self) -> &str {
        self.set_by.as_deref().unwrap_or("AWS_ENDPOINT")
    }
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
    remote_open_err(url, RemoteErrorKind::Config, source)
}

fn remote_open_err(
    url: &str,
    kind: RemoteErrorKind,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Remote {
        op: "open",
        key: String::new(),
        url: url.to_string(),
        kind,
        source: source.into(),
    }
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Whether `v` is a true value as `object_store` parses booleans.
fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "on" | "yes" | "y"
        )
    })
}

/// The variable (or option) that set `key`: the first of `vars` set in the
/// environment, unless `config` (the options, applied after it) sets it.
fn set_by(config: &[(String, String)], keys: &[AmazonS3ConfigKey], vars: &[&str]) -> String {
    let by_option = config.iter().rev().find(|(k, _)| {
        k.to_ascii_lowercase()
            .parse::<AmazonS3ConfigKey>()
            .is_ok_and(|k| keys.contains(&k))
    });
    if let Some((k, _)) = by_option {
        return format!("RemoteOptions::config {k:?}");
    }
    vars.iter()
        .find(|v| std::env::var_os(v).is_some())
        .map_or_else(|| vars[0].to_string(), |v| v.to_string())
}

/// Opens `url`: `s3://bucket/prefix` (endpoint, region and credentials from
/// `AWS_*`; conditional PUT by `If-Match`/`If-None-Match`), `file:///dir`
/// or `memory:///prefix`.
///
/// Before any request, an S3 configuration that cannot work is refused
/// with what to set (unless `offline`, where no request is made): a plain
/// `http://` endpoint without `AWS_ALLOW_HTTP=true`, and no credentials at
/// all with a custom endpoint (`AWS_ENDPOINT`): `object_store` would ask the
/// EC2 instance metadata service for credentials, which only AWS itself
/// has, and fail after seconds of retries. Without a custom endpoint (AWS
/// proper) and without credentials, the instance metadata service is
/// given 300 ms to accept a connection (it answers in microseconds on EC2,
/// where the instance role keeps working); where nothing answers, no
/// credentials is an error at once.
pub(crate) fn open(
    url: &str,
    net: &NetOptions,
    config: &[(String, String)],
    offline: bool,
) -> Result<Location> {
    let trimmed = url.trim_end_matches('/');
    let parsed = url::Url::parse(trimmed).map_err(|e| config_err(url, e))?;
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| config_err(url, e))?;
    let mut endpoint = None;
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
                .with_http_connector(FailFastConnector)
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    secs(net.request_timeout),
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    secs(net.connect_timeout),
                );
            let ep = describe_endpoint(&builder, &parsed, config);
            if !offline {
                check_s3_config(&builder, &ep, url)?;
            }
            endpoint = Some(ep);
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
        endpoint,
        net: net.clone(),
    })
}

fn describe_endpoint(
    builder: &AmazonS3Builder,
    parsed: &url::Url,
    config: &[(String, String)],
) -> Endpoint {
    let get = |k: AmazonS3ConfigKey| builder.get_config_value(&k).filter(|v| !v.is_empty());
    let bucket = parsed.host_str().unwrap_or_default().to_string();
    let key_id = get(AmazonS3ConfigKey::AccessKeyId);
    let s3 = get(AmazonS3ConfigKey::S3Endpoint);
    let (url, set_by) = match (s3, get(AmazonS3ConfigKey::Endpoint)) {
        (Some(e), _) => (
            e,
            Some(self::set_by(
                config,
                &[AmazonS3ConfigKey::S3Endpoint],
                &["AWS_ENDPOINT_URL_S3"],
            )),
        ),
        (None, Some(e)) => (
            e,
            Some(self::set_by(
                config,
                &[AmazonS3ConfigKey::Endpoint],
                &["AWS_ENDPOINT", "AWS_ENDPOINT_URL"],
            )),
        ),
        (None, None) => {
            let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
            (format!("https://s3.{region}.amazonaws.com"), None)
        }
    };
    Endpoint {
        url: url.trim_end_matches('/').to_string(),
        set_by,
        bucket,
        key_id,
    }
}

/// Refuses, before any request, an S3 configuration that cannot work (see
/// [`open`]).
fn check_s3_config(builder: &AmazonS3Builder, ep: &Endpoint, url: &str) -> Result<()> {
    let get = |k: AmazonS3ConfigKey| builder.get_config_value(&k).filter(|v| !v.is_empty());
    let allow_http = truthy(get(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref());
    if ep.url.to_ascii_lowercase().starts_with("http://") && !allow_http {
        return Err(config_err(
            url,
            format!(
                "the endpoint {} is plain HTTP, which is refused unless AWS_ALLOW_HTTP=true: \
                 set AWS_ALLOW_HTTP=true (a local test server), or use an https:// endpoint",
                ep.describe()
            ),
        ));
    }
    let has = |k: AmazonS3ConfigKey| get(k).is_some();
    let credentials = has(AmazonS3ConfigKey::AccessKeyId)
        || has(AmazonS3ConfigKey::SecretAccessKey)
        || (has(AmazonS3ConfigKey::WebIdentityTokenFile) && has(AmazonS3ConfigKey::RoleArn))
        || has(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || (has(AmazonS3ConfigKey::ContainerCredentialsFullUri)
            && has(AmazonS3ConfigKey::ContainerAuthorizationTokenFile))
        || truthy(get(AmazonS3ConfigKey::SkipSignature).as_deref());
    if !credentials && ep.set_by.is_none() {
        // On AWS itself the instance role is the last source, asked through
        // the instance metadata service: refuse at once where none answers
        // (not on EC2), rather than after a minute of retried timeouts.
        let imds = get(AmazonS3ConfigKey::MetadataEndpoint)
            .unwrap_or_else(|| "http://169.254.169.254".to_string());
        if !answers(&imds, IMDS_PROBE) {
            return Err(remote_open_err(
                url,
                RemoteErrorKind::PermissionDenied,
                format!(
                    "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
                     AWS_SKIP_SIGNATURE=true for a bucket open to anonymous requests); no EC2 \
                     instance metadata service (for an instance role) answered at {imds} \
                     within {IMDS_PROBE:?}"
                ),
            ));
        }
    }
    if !credentials && ep.set_by.is_some() {
        return Err(remote_open_err(
            url,
            RemoteErrorKind::PermissionDenied,
            format!(
                "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
                 AWS_SKIP_SIGNATURE=true for a bucket open to anonymous requests); the EC2 \
                 instance metadata service is not asked when a custom endpoint is set: {}",
                ep.describe()
            ),
        ));
    }
    Ok(())
}

/// How long the instance metadata service is given to accept a connection
/// when it is the only source of credentials (it answers in microseconds
/// on EC2).
const IMDS_PROBE: Duration = Duration::from_millis(300);

/// Whether something accepts a TCP connection at the host and port of
/// `url` within `timeout`.
fn answers(url: &str, timeout: Duration) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(parsed) = url::Url::parse(url) else {
        return true; // let object_store report it
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
}

/// The HTTP client of `object_store` (reqwest), except that a connection
/// refused, or a host name that does not resolve, is not retried: nothing
/// listens at the endpoint, and retrying it for seconds only delays the
/// error. A connection that breaks or times out is retried as before.
#[derive(Debug, Default)]
struct FailFastConnector;

impl HttpConnector for FailFastConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(FailFast(inner)))
    }
}

#[derive(Debug)]
struct FailFast(HttpClient);

impl HttpService for FailFast {
    // The shape `async_trait` gives the trait's method.
    fn call<'a, 'b>(
        &'a self,
        req: HttpRequest,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<HttpResponse, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            match self.0.execute(req).await {
                Err(e) if e.kind() == HttpErrorKind::Connect && unreachable_for_sure(&e) => {
                    // `Unknown` is never retried.
                    Err(HttpError::new(HttpErrorKind::Unknown, e))
                }
                r => r,
            }
        })
    }
}

/// Whether a connection error says that no server can be reached at all:
/// connection refused, or a host name that does not exist.
pub(crate) fn unreachable_for_sure(e: &(dyn std::error::Error + 'static)) -> bool {
    connection_refused(e) || unknown_host(e)
}

/// Whether `e`'s chain holds a refused connection.
pub(crate) fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether `e`'s chain says a host name does not exist (not a temporary
/// failure of the resolver).
pub(crate) fn unknown_host(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("Name or service not known")
            || text.contains("nodename nor servname provided")
            || text.contains("No such host is known")
        {
            return true;
        }
        cur = err.source();
    }
    false
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
        let loc = open("memory:///p/q", &NetOptions::default(), &[], false).unwrap();
        assert_eq!(loc.prefix.as_ref(), "p/q");
        assert_eq!(loc.url_of(&loc.prefix.clone().join("x")), "memory:///p/q/x");
    }
}
