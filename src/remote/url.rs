//! Store URLs: parsed by `object_store` (`ObjectStoreScheme`), S3
//! credentials, region and endpoint from the `AWS_*` environment variables.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreScheme, RetryConfig,
};

use crate::error::{Error, RemoteErrorKind, Result};

/// Network settings of a remote store: how long a request may go without
/// an answer, and how often a failed request is tried again.
///
/// With the defaults, a call against a server that accepts connections but
/// does not answer (hung, overloaded, a stopped process) fails with an
/// [`Error::Remote`] of kind [`Timeout`](RemoteErrorKind::Timeout) after
/// about 20 s: each request waits [`request_timeout`](Self::request_timeout)
/// (10 s) for its answer, and a request that got none is tried
/// [`timeout_retries`](Self::timeout_retries) (1) more time. Once that many
/// requests in a row went unanswered, each further request (of this call
/// or another one on the same handle) waits at most 2 s for its answer,
/// and its answer may pause at most 2 s, until an answer completes: a call
/// that goes on after a timeout adds seconds, not tens of seconds, and a
/// server that answers again is noticed at once. So the bound of a call is
/// `request_timeout × (timeout_retries + 1)`, plus 2 s per further request
/// and the retries' backoff (a fraction of a second). A request that
/// sends a body gets `bytes / min_upload_rate` more (an 8 MiB part at the
/// default 128 KiB/s: 64 s more), so an upload on a slow link is not cut
/// off; a download may take as long as it keeps receiving (no pause longer
/// than `request_timeout`). The request that completes a multipart upload
/// gets 1 s more per part it lists (the server assembles the object before
/// it answers: 128 s more for a 1 GiB object of 8 MiB parts). A server
/// that answers with an error (HTTP 5xx,
/// 429) is retried up to [`max_retries`](Self::max_retries) times within
/// [`retry_timeout`](Self::retry_timeout).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use ndarray_offload::remote::NetOptions;
///
/// // A link slower than 1 Mbit/s per connection, and a patient caller.
/// let net = NetOptions::default()
///     .with_min_upload_rate(32 << 10)
///     .with_request_timeout(Duration::from_secs(30));
/// assert_eq!(net.timeout_retries, 1);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetOptions {
    /// Retries of a request the server answered with an error worth
    /// retrying (HTTP 5xx, 429), or whose connection broke
    /// (object_store's `RetryConfig::max_retries`; default 10). A refused
    /// connection or a host name that does not exist is not retried
    /// (nothing listens there: the error comes at once), and a request
    /// that got no answer in time is retried
    /// [`timeout_retries`](Self::timeout_retries) times.
    pub max_retries: usize,
    /// Time after which a failed request is not retried any more (default
    /// 180 s).
    pub retry_timeout: Duration,
    /// How long a request waits for the server (default 10 s): for the
    /// answer to begin once the request is sent (plus the upload allowance
    /// of [`min_upload_rate`](Self::min_upload_rate)), and between two
    /// pieces of an answer's body.
    pub request_timeout: Duration,
    /// Time limit to connect (default 5 s).
    pub connect_timeout: Duration,
    /// The slowest upload, in bytes per second and per connection, that is
    /// not cut off (default 128 KiB/s): a request sending `n` bytes may
    /// take `n / min_upload_rate` on top of
    /// [`request_timeout`](Self::request_timeout). With
    /// [`TransferOptions::concurrency`](crate::remote::TransferOptions::concurrency)
    /// parts in flight, the link needs that many times this rate. `0`: no
    /// limit on the time a request that sends a body may take.
    pub min_upload_rate: u64,
    /// How many times in a row a request that got no answer in time is
    /// tried again before the call fails with a
    /// [`Timeout`](RemoteErrorKind::Timeout) (default 1). Any answer from
    /// the server starts the count again. Requests that change an object
    /// without being idempotent (a conditional PUT) are never retried after
    /// a timeout.
    pub timeout_retries: usize,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            min_upload_rate: 128 << 10,
            timeout_retries: 1,
        }
    }
}

impl NetOptions {
    /// Sets [`max_retries`](Self::max_retries).
    pub fn with_max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets [`retry_timeout`](Self::retry_timeout).
    pub fn with_retry_timeout(mut self, d: Duration) -> Self {
        self.retry_timeout = d;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`min_upload_rate`](Self::min_upload_rate) (bytes per second).
    pub fn with_min_upload_rate(mut self, bytes_per_second: u64) -> Self {
        self.min_upload_rate = bytes_per_second;
        self
    }

    /// Sets [`timeout_retries`](Self::timeout_retries).
    pub fn with_timeout_retries(mut self, n: usize) -> Self {
        self.timeout_retries = n;
        self
    }

    /// How long a request waits for the server: for its answer to begin
    /// (a request that sends `body` bytes: plus the upload allowance;
    /// `None`: no limit), and between two pieces of the answer's body.
    /// `unanswered`: the last `timeout_retries + 1` requests got no
    /// complete answer (see [`UNANSWERED_WAIT`]).
    pub(crate) fn answer_limit(&self, body: u64, unanswered: bool) -> Option<Duration> {
        let wait = self.pause_limit(unanswered);
        if body == 0 {
            return Some(wait);
        }
        if self.min_upload_rate == 0 {
            return None;
        }
        let upload = Duration::from_secs_f64(body as f64 / self.min_upload_rate as f64);
        Some(wait.saturating_add(upload))
    }

    /// The longest wait for a server that says nothing (see
    /// [`answer_limit`](Self::answer_limit)).
    pub(crate) fn pause_limit(&self, unanswered: bool) -> Duration {
        if unanswered {
            self.request_timeout.min(UNANSWERED_WAIT)
        } else {
            self.request_timeout
        }
    }
}

/// How long a request waits for the server once the last
/// `timeout_retries + 1` requests got no complete answer (and
/// [`NetOptions::request_timeout`] is longer): calls against a server known
/// not to answer fail in seconds, while requests are still sent, so that a
/// server that answers again is noticed at its first answer.
pub(crate) const UNANSWERED_WAIT: Duration = Duration::from_secs(2);

/// The extra wait, per part, for the answer to the request that completes
/// a multipart upload (the server assembles the object first).
pub(crate) const COMPLETE_PER_PART: Duration = Duration::from_secs(1);

/// The parts a request completing a multipart upload lists (`POST
/// ...?uploadId=...` with a `<CompleteMultipartUpload>` body); 0 for any
/// other request.
fn parts_completed(req: &HttpRequest) -> u32 {
    let completes = req.method().as_str() == "POST"
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("uploadId=")));
    if !completes {
        return 0;
    }
    let Some(body) = req.body().as_bytes() else {
        return 0;
    };
    let needle = b"<PartNumber>";
    body.windows(needle.len()).filter(|w| w == needle).count() as u32
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
                .with_http_connector(GuardedConnector { net: net.clone() })
                // The time limits are the connector's (see `Guarded`): a
                // whole-request limit would cut off a download that is
                // still receiving. This one only catches what they cannot.
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    secs(WHOLE_REQUEST_LIMIT),
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

/// The time limit reqwest itself puts on a whole request: a safety net
/// only, as the limits that matter are [`Guarded`]'s.
const WHOLE_REQUEST_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// The HTTP client of `object_store` (reqwest), guarded (see [`Guarded`]).
#[derive(Debug)]
struct GuardedConnector {
    net: NetOptions,
}

impl HttpConnector for GuardedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Guarded {
            inner,
            health: Arc::new(Health {
                net: self.net.clone(),
                timeouts: AtomicUsize::new(0),
            }),
        }))
    }
}

/// `object_store`'s HTTP client with three changes:
///
/// * a connection refused, or a host name that does not resolve, is not
///   retried: nothing listens at the endpoint, and retrying it for
///   seconds only delays the error (a connection that breaks or times out
///   is retried as before);
/// * time limits that tell a hung server from a slow transfer: the answer
///   must begin within [`NetOptions::answer_limit`] of the request's body
///   size, and its body may pause no longer than
///   [`NetOptions::request_timeout`]; after
///   [`NetOptions::timeout_retries`] + 1 timeouts in a row (no complete
///   answer in between) a timeout is not retried, and requests wait
///   [`UNANSWERED_WAIT`] at most (see [`Health`]);
/// * the answers of a listing (ListObjectsV2) have every key that
///   `object_store` cannot name (a `.`, `..` or empty segment, a control
///   character) replaced by a marker ([`stray_key`]), so that one such
///   object does not fail the whole listing.
#[derive(Debug)]
struct Guarded {
    inner: HttpClient,
    health: Arc<Health>,
}

/// Whether the server answers: the timeouts in a row, without a complete
/// answer in between.
#[derive(Debug)]
struct Health {
    net: NetOptions,
    timeouts: AtomicUsize,
}

impl Health {
    /// The server completed an answer.
    fn answered(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
    }

    /// Whether the last `timeout_retries + 1` requests got no complete
    /// answer.
    fn unanswered(&self) -> bool {
        self.timeouts.load(Ordering::Relaxed) > self.net.timeout_retries
    }

    /// A timeout: retried by `object_store` (kind `Timeout`, for the
    /// requests it retries) unless it makes more than `timeout_retries` in
    /// a row (kind `Unknown`, never retried).
    fn timed_out(&self, e: impl std::error::Error + Send + Sync + 'static) -> HttpError {
        let n = self.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
        let kind = if n > self.net.timeout_retries {
            HttpErrorKind::Unknown
        } else {
            HttpErrorKind::Timeout
        };
        HttpError::new(kind, e)
    }
}

impl HttpService for Guarded {
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
            let health = &self.health;
            let unanswered = health.unanswered();
            let list = listing_prefix(&req);
            let head_only = req.method().as_str() == "HEAD";
            let limit = health
                .net
                .answer_limit(req.body().content_length() as u64, unanswered)
                .map(|l| l.saturating_add(COMPLETE_PER_PART * parts_completed(&req)));
            let sent = self.inner.execute(req);
            let answer = match limit {
                Some(limit) => match tokio::time::timeout(limit, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(health.timed_out(NoAnswer {
                            limit,
                            what: Silence::NoAnswer,
                        }))
                    }
                },
                None => sent.await,
            };
            let response = match answer {
                Err(e) if e.kind() == HttpErrorKind::Connect && unreachable_for_sure(&e) => {
                    // `Unknown` is never retried.
                    return Err(HttpError::new(HttpErrorKind::Unknown, e));
                }
                Err(e) if e.kind() == HttpErrorKind::Timeout => return Err(health.timed_out(e)),
                Err(e) => return Err(e),
                Ok(r) => r,
            };
            let (mut parts, body) = response.into_parts();
            if head_only || http_body::Body::is_end_stream(&body) {
                health.answered();
            }
            let idle = health.net.pause_limit(unanswered);
            let body = HttpResponseBody::new(IdleBody {
                inner: body,
                idle,
                sleep: Box::pin(tokio::time::sleep(idle)),
                waiting: false,
                health: health.clone(),
            });
            let Some(prefix) = list.filter(|_| parts.status.is_success()) else {
                return Ok(HttpResponse::from_parts(parts, body));
            };
            let bytes = body.bytes().await?;
            let body = match sanitize_listing(&bytes, &prefix) {
                Some(clean) => {
                    parts.headers.remove("content-length");
                    HttpResponseBody::from(clean)
                }
                None => HttpResponseBody::from(bytes),
            };
            Ok(HttpResponse::from_parts(parts, body))
        })
    }
}

/// What a server did not do in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// No answer began.
    NoAnswer,
    /// An answer began, then its body stopped.
    Stalled,
}

/// No answer, or no more of an answer's body, within a time limit.
#[derive(Debug)]
pub(crate) struct NoAnswer {
    pub(crate) limit: Duration,
    what: Silence,
}

impl NoAnswer {
    /// Whether an answer began and then stopped (not: no answer at all).
    pub(crate) fn stalled(&self) -> bool {
        self.what == Silence::Stalled
    }
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.what {
            Silence::NoAnswer => write!(f, "no answer within {:?} (timed out)", self.limit),
            Silence::Stalled => write!(
                f,
                "the answer stopped for {:?} before its end (timed out)",
                self.limit
            ),
        }
    }
}

impl std::error::Error for NoAnswer {}

/// A response body that fails when no piece of it arrives within `idle`
/// of its reader waiting for one; its end is a complete answer.
struct IdleBody {
    inner: HttpResponseBody,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Whether the reader is waiting (since `sleep` was set).
    waiting: bool,
    health: Arc<Health>,
}

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>>
    {
        use std::task::Poll;
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if frame.is_none() {
                    this.health.answered();
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.waiting {
                    // The wait starts now, not when the reader last read.
                    this.waiting = true;
                    let until = tokio::time::Instant::now() + this.idle;
                    this.sleep.as_mut().reset(until);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.waiting = false;
                        Poll::Ready(Some(Err(this.health.timed_out(NoAnswer {
                            limit: this.idle,
                            what: Silence::Stalled,
                        }))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// The `prefix` of a listing request (ListObjectsV2: a GET with
/// `list-type=2`), `""` without one; `None` for any other request.
fn listing_prefix(req: &HttpRequest) -> Option<String> {
    if req.method().as_str() != "GET" {
        return None;
    }
    let query = req.uri().query()?;
    let mut list = false;
    let mut prefix = String::new();
    for (k, v) in ::url::form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("list-type", "2") => list = true,
            ("prefix", p) => prefix = p.to_string(),
            _ => {}
        }
    }
    list.then_some(prefix)
}

/// The e-tag that marks an object of a listing whose key `object_store`
/// cannot name; the key follows, hex-encoded.
const STRAY_ETAG: &str = "ndoffload-stray:";

/// The object name a stray object is listed under (after the listing's
/// prefix).
const STRAY_NAME: &str = "ndoffload-stray";

/// The raw key of a listed object that stands for one `object_store`
/// cannot name (see [`Guarded`]), or `None` for an ordinary object.
pub(crate) fn stray_key(m: &object_store::ObjectMeta) -> Option<String> {
    let hex = m.e_tag.as_deref()?.strip_prefix(STRAY_ETAG)?;
    let bytes = hex_decode(hex)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `object_store` lists the object `key` under that very key.
fn nameable(key: &str) -> bool {
    Path::parse(key).is_ok_and(|p| p.as_ref() == key)
}

/// A ListObjectsV2 answer with each `<Contents>` whose `<Key>`
/// `object_store` cannot name replaced by a marker object (named
/// `<prefix>ndoffload-stray`, e-tag [`STRAY_ETAG`] and the key in hex),
/// and each such `<CommonPrefixes>` dropped. `None` when nothing changes
/// (or the answer is not UTF-8: `object_store` reports it then).
fn sanitize_listing(body: &[u8], prefix: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let marker = {
        let name = format!("{prefix}{STRAY_NAME}");
        if nameable(&name) {
            name
        } else {
            STRAY_NAME.to_string()
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    loop {
        let next = ["<Contents>", "<CommonPrefixes>"]
            .iter()
            .filter_map(|t| rest.find(t).map(|at| (at, *t)))
            .min();
        let Some((at, open)) = next else { break };
        let close = if open == "<Contents>" {
            "</Contents>"
        } else {
            "</CommonPrefixes>"
        };
        let Some(len) = rest[at..].find(close) else {
            break;
        };
        let end = at + len + close.len();
        let block = &rest[at..end];
        out.push_str(&rest[..at]);
        rest = &rest[end..];
        if open == "<Contents>" {
            match xml_element(block, "Key").and_then(xml_unescape) {
                Some(key) if !nameable(&key) => {
                    changed = true;
                    out.push_str(&format!(
                        "<Contents><Key>{}</Key><LastModified>{}</LastModified>\
                         <ETag>{STRAY_ETAG}{}</ETag><Size>{}</Size></Contents>",
                        xml_escape(&marker),
                        xml_element(block, "LastModified").unwrap_or("1970-01-01T00:00:00.000Z"),
                        hex_encode(key.as_bytes()),
                        xml_element(block, "Size").unwrap_or("0"),
                    ));
                }
                _ => out.push_str(block),
            }
        } else {
            match xml_element(block, "Prefix").and_then(xml_unescape) {
                Some(p) if Path::parse(&p).is_err() => changed = true,
                _ => out.push_str(block),
            }
        }
    }
    out.push_str(rest);
    changed.then(|| out.into_bytes())
}

/// The text of the first `<tag>...</tag>` in `xml`, as written.
fn xml_element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(&xml[start..start + len])
}

/// `text` with XML's entities and character references decoded.
fn xml_unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';')? + at;
        let entity = &rest[at + 1..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    entity.strip_prefix('#')?.parse().ok()?
                };
                char::from_u32(code)?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
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
    fn completing_a_multipart_upload_waits_longer_per_part() {
        let req = |method: &str, uri: &str, body: &str| -> HttpRequest {
            let mut r = HttpRequest::new(body.to_string().into());
            *r.method_mut() = method.parse().unwrap();
            *r.uri_mut() = uri.parse().unwrap();
            r
        };
        let body = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>\
                    <Part><PartNumber>2</PartNumber></Part><Part><PartNumber>3</PartNumber>\
                    </Part></CompleteMultipartUpload>";
        let complete = req("POST", "http://h/b/k?uploadId=abc", body);
        assert_eq!(parts_completed(&complete), 3);
        assert_eq!(parts_completed(&req("POST", "http://h/b/k?uploads", "")), 0);
        assert_eq!(
            parts_completed(&req("PUT", "http://h/b/k?uploadId=abc&partNumber=1", body)),
            0
        );
        assert_eq!(parts_completed(&req("GET", "http://h/b/k", "")), 0);
    }

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
    fn listings_with_keys_object_store_cannot_name_are_cleaned() {
        let key = |k: &str| {
            format!(
                "<Contents><Key>{k}</Key><LastModified>2025-01-02T03:04:05.000Z</LastModified>\
                 <ETag>&quot;abc&quot;</ETag><Size>7</Size><StorageClass>STANDARD</StorageClass>\
                 </Contents>"
            )
        };
        let head =
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Prefix>p/meta/</Prefix>";
        let good = [
            "p/meta/a.meta.json",
            "p/meta/a&amp;b.meta.json",
            "p/meta/%2E.meta.json",
        ];
        let bad = [
            "p/meta/./x.meta.json",
            "p/meta/../x.meta.json",
            "p/meta//x.meta.json",
            "p/meta/a\u{1}b.meta.json",
            "p/meta/a&#x1;c.meta.json",
            "p/meta/",
        ];
        let clean = format!(
            "{head}{}<CommonPrefixes><Prefix>p/ok/</Prefix></CommonPrefixes></ListBucketResult>",
            good.iter().map(|k| key(k)).collect::<String>()
        );
        assert_eq!(sanitize_listing(clean.as_bytes(), "p/meta/"), None);
        let body = format!(
            "{head}{}<CommonPrefixes><Prefix>p/./</Prefix></CommonPrefixes>\
             <CommonPrefixes><Prefix>p/ok/</Prefix></CommonPrefixes></ListBucketResult>",
            good.iter()
                .chain(bad.iter())
                .map(|k| key(k))
                .collect::<String>()
        );
        let out = String::from_utf8(sanitize_listing(body.as_bytes(), "p/meta/").unwrap()).unwrap();
        for k in good {
            assert!(out.contains(&key(k)), "{k} kept");
        }
        for (k, raw) in bad.iter().zip([
            "p/meta/./x.meta.json",
            "p/meta/../x.meta.json",
            "p/meta//x.meta.json",
            "p/meta/a\u{1}b.meta.json",
            "p/meta/a\u{1}c.meta.json",
            "p/meta/",
        ]) {
            assert!(!out.contains(&key(k)), "{k} replaced");
            let marker = format!(
                "<Key>p/meta/ndoffload-stray</Key><LastModified>2025-01-02T03:04:05.000Z\
                 </LastModified><ETag>ndoffload-stray:{}</ETag><Size>7</Size>",
                hex_encode(raw.as_bytes())
            );
            assert!(out.contains(&marker), "{k}: {out}");
            let m = object_store::ObjectMeta {
                location: Path::parse("p/meta/ndoffload-stray").unwrap(),
                last_modified: Default::default(),
                size: 7,
                e_tag: Some(format!("{STRAY_ETAG}{}", hex_encode(raw.as_bytes()))),
                version: None,
            };
            assert_eq!(stray_key(&m).as_deref(), Some(raw));
        }
        assert!(!out.contains("<Prefix>p/./</Prefix>"));
        assert!(out.contains("<CommonPrefixes><Prefix>p/ok/</Prefix></CommonPrefixes>"));
        assert!(!out.contains('\u{1}'));
        // An ordinary object is not a stray.
        let m = object_store::ObjectMeta {
            location: Path::parse("p/meta/a").unwrap(),
            last_modified: Default::default(),
            size: 1,
            e_tag: Some("\"abc\"".into()),
            version: None,
        };
        assert_eq!(stray_key(&m), None);
    }

    #[test]
    fn xml_text_is_decoded() {
        assert_eq!(
            xml_unescape("a&amp;b&lt;&gt;&quot;&apos;").as_deref(),
            Some("a&b<>\"'")
        );
        assert_eq!(xml_unescape("&#x1;&#65;&#X42;").as_deref(), Some("\u{1}AB"));
        assert_eq!(xml_unescape("&bogus;"), None);
        assert_eq!(xml_unescape("a&b"), None);
    }

    #[test]
    fn answer_limits_grow_with_the_upload() {
        let n = NetOptions::default();
        assert_eq!(n.answer_limit(0, false), Some(Duration::from_secs(10)));
        assert_eq!(
            n.answer_limit(8 << 20, false),
            Some(Duration::from_secs(10 + 64))
        );
        assert_eq!(n.answer_limit(0, true), Some(Duration::from_secs(2)));
        assert_eq!(
            n.answer_limit(8 << 20, true),
            Some(Duration::from_secs(2 + 64))
        );
        let short = n.clone().with_request_timeout(Duration::from_secs(1));
        assert_eq!(short.answer_limit(0, true), Some(Duration::from_secs(1)));
        assert_eq!(short.pause_limit(false), Duration::from_secs(1));
        assert_eq!(
            n.clone().with_min_upload_rate(0).answer_limit(1, false),
            None
        );
    }

    /// A server that answers the head of every request, then 10 bytes of
    /// its body, and then nothing: a read fails with a `Timeout` naming the
    /// stall, after about the request timeout per attempt (`object_store`
    /// retries a broken body by ranged GETs, `max_retries` times).
    #[test]
    fn an_answer_that_stops_times_out() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    let mut from = 0;
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        // A retry resumes with `Range: bytes=N-99`.
                        let lower = line.to_ascii_lowercase();
                        if let Some(range) = lower.strip_prefix("range: bytes=") {
                            from = range.split('-').next().unwrap().trim().parse().unwrap();
                        }
                        line.clear();
                    }
                    let head = if from == 0 {
                        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n".to_string()
                    } else {
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                             Content-Range: bytes {from}-99/100\r\n",
                            100 - from
                        )
                    };
                    let _ = conn.write_all(
                        format!(
                            "{head}ETag: \"e\"\r\nLast-Modified: Wed, 01 Jan 2025 00:00:00 GMT\
                             \r\n\r\n0123456789"
                        )
                        .as_bytes(),
                    );
                    std::thread::sleep(Duration::from_secs(30));
                });
            }
        });
        let config: Vec<(String, String)> = [
            ("aws_endpoint", format!("http://127.0.0.1:{port}")),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_default_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // Three body retries: about 4 pauses of 1 s.
        let net = NetOptions::default()
            .with_request_timeout(Duration::from_secs(1))
            .with_max_retries(3);
        let loc = open("s3://bucket/p", &net, &config, false).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        let e = rt
            .block_on(super::super::protocol::read_meta(&loc, "k"))
            .unwrap_err();
        let t = start.elapsed();
        match &e {
            Error::Remote { kind, .. } => assert_eq!(*kind, RemoteErrorKind::Timeout, "{e}"),
            other => panic!("expected Error::Remote, got {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("the answer from http://127.0.0.1:")
                && text.contains("stopped for 1s before its end"),
            "{text}"
        );
        assert!(
            t >= Duration::from_secs(4) && t < Duration::from_secs(15),
            "{t:?}"
        );
    }

    #[test]
    fn memory_url_opens() {
        let loc = open("memory:///p/q", &NetOptions::default(), &[], false).unwrap();
        assert_eq!(loc.prefix.as_ref(), "p/q");
        assert_eq!(loc.url_of(&loc.prefix.clone().join("x")), "memory:///p/q/x");
    }
}
