//! Config, step 3 of 3: the typed, checked model that `state.rs` builds a snapshot from.
//!
//! Every value here has passed validation; defaults are applied and documented where they
//! are defined (in `validate.rs`, next to the key that carries them).

use crate::certs::{LoadedCert, Secret, UpstreamMaterial};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; relative paths in it are relative to its folder.
    pub source: PathBuf,
    /// Worker threads; 0 = one per CPU core.
    pub workers: usize,
    pub admin: Option<Admin>,
    pub access_log: Option<AccessLog>,
    pub reload: Reload,
    pub shutdown: Shutdown,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub clusters: Vec<Cluster>,
    /// `l4.listeners`: TCP passthrough listeners.
    pub l4: Vec<L4Listener>,
}

impl Config {
    /// A configuration with nothing in it (what runs before the first one is committed).
    pub fn empty(source: PathBuf) -> Config {
        Config {
            source,
            workers: 0,
            admin: None,
            access_log: None,
            reload: Reload {
                watch: false,
                debounce: Duration::ZERO,
            },
            shutdown: Shutdown::default(),
            listeners: Vec::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            l4: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// The token `token_file` held when validation read it.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// As the configuration writes it: `stdout`, `stderr` or the path.
impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("stdout"),
            LogTarget::Stderr => f.write_str("stderr"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub target: LogTarget,
    pub sample_rate: f64,
    pub always_log_errors: bool,
    /// Empty = every field, in the spec's order.
    pub fields: Vec<LogField>,
}

/// `accessLog.fields`: the access-log fields, in the spec's order (the order used when
/// `fields` is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    Ts,
    RequestId,
    ClientAddr,
    Listener,
    Tls,
    Sni,
    Protocol,
    Method,
    Host,
    Path,
    Status,
    Route,
    Cluster,
    Upstream,
    BytesIn,
    BytesOut,
    DurationMs,
    UpstreamMs,
    Error,
    UserAgent,
    /// What was sent upstream (path with query), after rewrites; null without one.
    UpstreamPath,
}

impl LogField {
    pub const ALL: [LogField; 21] = [
        LogField::Ts,
        LogField::RequestId,
        LogField::ClientAddr,
        LogField::Listener,
        LogField::Tls,
        LogField::Sni,
        LogField::Protocol,
        LogField::Method,
        LogField::Host,
        LogField::Path,
        LogField::UpstreamPath,
        LogField::Status,
        LogField::Route,
        LogField::Cluster,
        LogField::Upstream,
        LogField::BytesIn,
        LogField::BytesOut,
        LogField::DurationMs,
        LogField::UpstreamMs,
        LogField::Error,
        LogField::UserAgent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LogField::Ts => "ts",
            LogField::RequestId => "requestId",
            LogField::ClientAddr => "clientAddr",
            LogField::Listener => "listener",
            LogField::Tls => "tls",
            LogField::Sni => "sni",
            LogField::Protocol => "protocol",
            LogField::Method => "method",
            LogField::Host => "host",
            LogField::Path => "path",
            LogField::Status => "status",
            LogField::Route => "route",
            LogField::Cluster => "cluster",
            LogField::Upstream => "upstream",
            LogField::BytesIn => "bytesIn",
            LogField::BytesOut => "bytesOut",
            LogField::DurationMs => "durationMs",
            LogField::UpstreamMs => "upstreamMs",
            LogField::Error => "error",
            LogField::UserAgent => "userAgent",
            LogField::UpstreamPath => "upstreamPath",
        }
    }

    pub fn from_name(name: &str) -> Option<LogField> {
        LogField::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The fields an L4 (TCP passthrough) connection has, in the spec's order.
    pub const L4: [LogField; 9] = [
        LogField::Ts,
        LogField::ClientAddr,
        LogField::Listener,
        LogField::Cluster,
        LogField::Upstream,
        LogField::BytesIn,
        LogField::BytesOut,
        LogField::DurationMs,
        LogField::Error,
    ];

    /// Whether L4 connection lines carry this field.
    pub fn applies_to_l4(self) -> bool {
        LogField::L4.contains(&self)
    }
}

/// `shutdown`: how SIGTERM/SIGINT (and removed listeners) drain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shutdown {
    /// In-flight work gets this long to finish before what is still open is closed.
    pub drain_timeout: Duration,
    /// After the first signal, keep serving this long (with `/readyz` at 503) before the
    /// listeners stop accepting, so load balancers notice first.
    pub delay: Duration,
}

impl Default for Shutdown {
    /// drainTimeout 30s, delay 0s.
    fn default() -> Shutdown {
        Shutdown {
            drain_timeout: Duration::from_secs(30),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    pub watch: bool,
    pub debounce: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Plaintext only: also accept h2c with prior knowledge.
    pub http2: bool,
    pub max_connections: usize,
    pub limits: Limits,
    pub timeouts: ListenerTimeouts,
    /// TLS termination; None = plaintext HTTP.
    pub tls: Option<ListenerTls>,
}

/// `listeners[].tls`: certificates chosen by SNI, protocol versions and ALPN.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// In file order; the first is served when SNI is absent or matches nothing.
    pub certificates: Vec<TlsCertificate>,
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in preference order (`h2`, `http/1.1`). Never empty.
    pub alpn: Vec<Alpn>,
}

/// One certificate chain with its key, read and checked by validation.
#[derive(Debug, Clone)]
pub struct TlsCertificate {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or RSA).
    pub key: PathBuf,
    /// `serverNames` as written (lower-cased); empty = the certificate's DNS SANs.
    pub server_names: Vec<String>,
    /// The chain and key as validation read and checked them: what the listener serves.
    pub loaded: Arc<LoadedCert>,
}

/// Equal when the settings are equal and the files held the same bytes (a rotated
/// certificate is a change).
impl PartialEq for TlsCertificate {
    fn eq(&self, other: &TlsCertificate) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.server_names == other.server_names
            && self.loaded.fingerprint == other.loaded.fingerprint
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// As the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol id on the wire.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Copy)]
pub struct Limits {
    pub max_request_headers_size: usize,
    /// 0 = unlimited.
    pub max_request_body: u64,
}

#[derive(Debug, Clone, PartialEq, Copy)]
pub struct ListenerTimeouts {
    pub read_header: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    /// Lower-cased, without port.
    Exact(String),
    /// The part after `*.`, lower-cased: `*.example.com` → `example.com`.
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// None = every HTTP listener.
    pub listeners: Option<Vec<String>>,
    pub host: HostMatch,
    pub path_prefix: String,
    /// `match.methods`: None = any method; else one of these, exactly (HEAD is not GET).
    pub methods: Option<Vec<http::Method>>,
    /// `match.headers`: every entry must hold; empty = no condition.
    pub match_headers: Vec<HeaderMatch>,
    /// What the route does: forward to `cluster`, or answer by itself.
    pub action: RouteAction,
    pub timeouts: RouteTimeouts,
    pub retry_attempts: u32,
    /// `rewrite`: what the upstream gets instead of the client's path prefix and host.
    pub rewrite: RouteRewrite,
    /// `headers.request`: applied to what goes upstream, after the forwarding headers.
    pub request_headers: HeaderOps,
    /// `headers.response`: applied to what the client gets, the gateway's own answers
    /// for the route included.
    pub response_headers: HeaderOps,
    /// `rateLimit`; None = no limit.
    pub rate_limit: Option<RateLimit>,
}

/// `routes[].rateLimit`: a token bucket per key, per gateway instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Sustained rate; more than 0.
    pub requests_per_second: f64,
    /// Requests a full bucket admits at once; at least 1. Default: requestsPerSecond,
    /// rounded up.
    pub burst: u32,
    pub key: RateLimitKey,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's IP address (an IPv6 client's /64), as the connection shows it.
    ClientIp,
    /// Every request of the route together.
    Route,
    /// The first value of this request header; requests without it share one bucket.
    Header(http::HeaderName),
}

/// `headers.request` / `headers.response`: applied in this order — `remove`, then `set`
/// (replaces every value), then `add` (appends). Names are lower-case, never hop-by-hop,
/// `host`, `content-length` or `x-request-id` (checked).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderOps {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Exactly one of `cluster`, `redirect` and `directResponse` (checked).
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// A cluster that exists (checked).
    Cluster(String),
    Redirect(Redirect),
    Direct(DirectResponse),
}

impl RouteAction {
    /// The cluster the route forwards to, if it does.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            RouteAction::Cluster(c) => Some(c),
            _ => None,
        }
    }
}

/// `routes[].redirect`: an absolute `Location` built from the request, with the parts
/// given here replaced. At least one part is given (else it would redirect to itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; None = the request's.
    pub scheme: Option<String>,
    /// A host name or IP (IPv6 in brackets), no port; None = the request's.
    pub host: Option<String>,
    /// None = the request's port when neither scheme nor host changes, else the scheme's
    /// default (left out of the `Location`).
    pub port: Option<u16>,
    /// Replaces the whole path (normalised, starting with `/`).
    pub path: Option<String>,
    /// Replaces the matched prefix only, as `rewrite.pathPrefix` does. Not with `path`.
    pub path_prefix: Option<String>,
    /// 301, 302, 303, 307 or 308; default 301.
    pub code: u16,
}

/// `routes[].directResponse`: the gateway answers with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    /// 200..=599.
    pub status: u16,
    /// At most 1 MiB; empty for 204 and 304.
    pub body: String,
    /// `content-type`; None = `text/plain; charset=utf-8` when there is a body, and no
    /// header without one.
    pub content_type: Option<http::HeaderValue>,
}

/// `routes[].rewrite`; every part optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteRewrite {
    /// Replaces the part of the path that `match.pathPrefix` matched (normalised,
    /// starting with `/`).
    pub path_prefix: Option<String>,
    /// The `Host` / `:authority` sent upstream (`host` or `host:port`); None = the
    /// client's.
    pub host: Option<String>,
}

/// One `match.headers` entry: the header is present, or one of its values is exactly
/// `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    /// None = `present: true`.
    pub value: Option<http::HeaderValue>,
}

/// Per-route overrides; `None` inherits the cluster's value.
#[derive(Debug, Clone, PartialEq, Copy, Default)]
pub struct RouteTimeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    /// Whole exchange; None (or `0s` in the file) = off.
    pub request: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    pub timeouts: ClusterTimeouts,
    /// Upstream TLS; `SecurityMode::None` when absent.
    pub security: Security,
    /// None = passive health off.
    pub passive_health: Option<PassiveHealth>,
    /// None = active health off.
    pub active_health: Option<ActiveHealth>,
}

/// Active health: the gateway probes every endpoint on its own schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// What the check requests (`GET`), starting with `/`, query allowed.
    pub path: String,
    /// Between the end of one check and the start of the next (plus up to 10% jitter).
    pub interval: Duration,
    /// The whole check: connect, TLS, response headers and body. At most `interval`.
    pub timeout: Duration,
    /// Consecutive failed checks that take an endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Consecutive passing checks that bring it back.
    pub healthy_threshold: u32,
    /// Inclusive ranges of passing statuses, such as (200, 399).
    pub expected_statuses: Vec<(u16, u16)>,
    /// `Host` / `:authority` of the check; None = the endpoint's address.
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityMode {
    #[default]
    None,
    Tls,
    Mtls,
}

/// How the gateway speaks TLS to a cluster's endpoints. Equal when the settings are equal
/// and the material read for them has the same fingerprint.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub mode: SecurityMode,
    /// None = the system's trust roots.
    pub ca_bundle: Option<PathBuf>,
    /// SNI and the name verified; None = the endpoint's host.
    pub server_name: Option<String>,
    /// mtls only (required there).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Trust roots and client identity as validation read them; None for mode none.
    pub material: Option<Arc<UpstreamMaterial>>,
}

impl PartialEq for Security {
    fn eq(&self, other: &Security) -> bool {
        self.mode == other.mode
            && self.ca_bundle == other.ca_bundle
            && self.server_name == other.server_name
            && self.client_cert == other.client_cert
            && self.client_key == other.client_key
            && self.material.as_ref().map(|m| m.fingerprint)
                == other.material.as_ref().map(|m| m.fingerprint)
    }
}

/// Passive health: endpoints are judged by the outcomes of real requests.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
    pub latency: Option<LatencyPolicy>,
    /// After an ejection ends, the endpoint's weight ramps from ~10% to full over this.
    pub slow_start: Duration,
}

/// De-preference of slow endpoints.
#[derive(Debug, Clone, PartialEq, Copy)]
pub struct LatencyPolicy {
    pub threshold: Duration,
    pub weight_factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `ip:port` or `dns-name:port`, as written.
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Copy)]
pub struct ClusterTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
}

/// One `l4.listeners` entry: a TCP listener whose connections are relayed byte for byte to
/// an endpoint of `cluster`.
#[derive(Debug, Clone, PartialEq)]
pub struct L4Listener {
    pub name: String,
    pub address: SocketAddr,
    /// A cluster that exists (checked).
    pub cluster: String,
    /// No bytes in either direction for this long closes both sides. Never zero.
    pub idle_timeout: Duration,
    /// Overall connection lifetime; None (`0s` in the file) = unlimited.
    pub max_duration: Option<Duration>,
    /// Connections beyond this are accepted and closed at once. At least 1.
    pub max_connections: usize,
    /// Networks admitted; empty = everyone. Host bits are cleared; a bare IP is a /32 or /128.
    pub allow: Vec<ipnet::IpNet>,
    /// Networks refused; beats `allow`.
    pub deny: Vec<ipnet::IpNet>,
}
