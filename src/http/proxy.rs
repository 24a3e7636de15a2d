//! The request path proper, in named phases: one snapshot is taken, then check → route →
//! route rules → upstream request → send with retries → respond (see [`proxy`]). Bodies
//! stream both ways; every failure is a [`ProxyError`] turned into the one error table's
//! response. Logging happens once, from the request's `telemetry::request::RequestLog`.

use crate::balance::ratelimit::Decision;
use crate::config::model::RateLimitKey;
use crate::config::model::{Limits, Listener, ListenerTimeouts, Protocol};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{RequestBody, RequestShared};
use crate::http::headers::{self, X_REQUEST_ID};
use crate::http::response::{ResponseBody, UpstreamBody};
use crate::listener::{ConnGuard, Phase};
use crate::path::normalize_path;
use crate::state::{
    Action, ClusterState, EndpointState, Gateway, ListenerState, RouteEntry, RouteLimit,
    RouteState, Snapshot,
};
use crate::telemetry::access_log::Entry;
use crate::telemetry::request::RequestLog;
use crate::upstream::{PoolReturn, SendError};
use crate::util::{new_request_id, valid_request_id, Activity};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;
use tokio::time::Instant;

/// What a connection keeps of its listener's settings from the moment it was accepted: a
/// reload's new limits and timeouts apply to new connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    /// Plaintext only: also accept h2c with prior knowledge.
    pub(crate) http2: bool,
    pub(crate) limits: Limits,
    pub(crate) timeouts: ListenerTimeouts,
}

impl ConnSettings {
    pub(crate) fn of(cfg: &Listener) -> ConnSettings {
        ConnSettings {
            http2: cfg.http2,
            limits: cfg.limits,
            timeouts: cfg.timeouts,
        }
    }
}

/// What every request on one client connection shares.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub gateway: Arc<Gateway>,
    /// The listener's position in the snapshot it was accepted on (a hint: a reload may
    /// move it).
    pub listener_index: usize,
    pub listener: Arc<str>,
    /// The listener state the connection was accepted by, for requests that arrive after
    /// a reload removed the listener (kept alive by the listener's drain until it ends).
    pub fallback: Weak<ListenerState>,
    /// The listener's limits and timeouts when the connection was accepted.
    pub settings: ConnSettings,
    pub peer: SocketAddr,
    /// The peer's address pre-rendered for forwarding headers.
    pub client: crate::http::headers::Client,
    pub https: bool,
    pub tls_version: Option<&'static str>,
    pub sni: Option<Arc<str>>,
    /// TLS: the server names of the certificate the handshake served (the 421 check).
    pub cert_names: Option<Arc<crate::certs::ServerNames>>,
    /// Requests in flight on this connection (idle timeout applies only at zero).
    pub activity: Arc<Activity>,
    /// Requests seen so far on this connection (HTTP/1.x order).
    pub requests: AtomicU64,
    /// The raw-head check: which request to refuse, and the `readHeader` clock.
    pub head: Arc<crate::http::sniff::HeadWatch>,
    /// Counts the connection as open on its listener (and tells it when to drain).
    pub guard: ConnGuard,
}

/// The listener state a request uses: the running snapshot's, or a retired one.
enum ListenerRef<'s> {
    Current(&'s Arc<ListenerState>),
    Retired(Arc<ListenerState>),
}

impl std::ops::Deref for ListenerRef<'_> {
    type Target = ListenerState;
    fn deref(&self) -> &ListenerState {
        match self {
            ListenerRef::Current(l) => l,
            ListenerRef::Retired(l) => l,
        }
    }
}

impl ConnCtx {
    /// The running snapshot's listener of this connection's name (new requests on open
    /// connections use the new routes), or, after a reload removed it, the one the
    /// connection was accepted by.
    fn listener<'s>(&self, snap: &'s Snapshot) -> Option<ListenerRef<'s>> {
        match snap.listener(self.listener_index, &self.listener) {
            Some(l) => Some(ListenerRef::Current(l)),
            None => self.fallback.upgrade().map(ListenerRef::Retired),
        }
    }
}

/// The log guard of a request arriving on `ctx`: its entry filled from the request head.
fn request_log(
    ctx: &ConnCtx,
    snap: &Snapshot,
    req: &Request<Incoming>,
    request_id: HeaderValue,
) -> RequestLog {
    let logger = snap.access_log.clone();
    let (host, path, user_agent) = if logger.is_some() {
        (
            request_host(req).map(str::to_owned),
            req.uri().path_and_query().cloned(),
            req.headers().get(header::USER_AGENT).cloned(),
        )
    } else {
        (None, None, None)
    };
    let entry = Entry {
        ts: SystemTime::now(),
        request_id,
        client_addr: ctx.peer,
        listener: ctx.listener.clone(),
        tls: ctx.tls_version,
        sni: ctx.sni.clone(),
        version: req.version(),
        method: req.method().clone(),
        host,
        path,
        sent_upstream: false,
        upstream_path: None,
        // Until a response exists, the client is the one who left (NGINX's 499).
        status: 499,
        route: None,
        cluster: None,
        upstream: None,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        upstream_ms: None,
        error: Some(ErrorKind::ClientClosed.row().log),
        user_agent,
    };
    RequestLog::new(entry, ctx.activity.clone(), logger)
}

/// The host a request is for: `:authority` (HTTP/2) or an absolute-form target's
/// authority wins over `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    }
}

use crate::http::grpc::is_grpc;

/// The spec's 421 rule: on a TLS connection where the client sent SNI, a request whose
/// host is neither that name nor covered by the certificate SNI chose is misdirected
/// (connection reuse across names that this certificate does not vouch for).
fn misdirected(ctx: &ConnCtx, host: Option<&str>) -> bool {
    let (Some(sni), Some(names), Some(host)) = (&ctx.sni, &ctx.cert_names, host) else {
        return false;
    };
    let bare = crate::path::strip_port(host).trim_end_matches('.');
    !bare.eq_ignore_ascii_case(sni) && !names.covers(bare)
}

/// The service function for every request on a client connection.
pub(crate) async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<ResponseBody>, Infallible> {
    let snap = ctx.gateway.snapshot.load_full();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    let mut log = request_log(&ctx, &snap, &req, request_id.clone());
    log.metrics = ctx.listener(&snap).map(|l| l.no_route.clone());
    let grpc = is_grpc(req.headers());
    let version = req.version();
    let head = req.method() == Method::HEAD;
    let mut shared = None;
    let mut rules = None;
    let mut resp = match proxy(
        req,
        &ctx,
        &snap,
        &mut log,
        &request_id,
        &mut shared,
        &mut rules,
    )
    .await
    {
        Ok(resp) => {
            log.entry.error = None;
            resp
        }
        Err(e) => {
            let mut resp = error_response(&e, grpc, version, head, &request_id, &mut log);
            // The gateway's own answer for a route gets the route's response headers
            // (security headers on a 502, say).
            if let Some(route) = &rules {
                route.response_headers.apply(resp.headers_mut());
            }
            resp
        }
    };
    if let Some(s) = &shared {
        log.entry.bytes_in = s.bytes.load(Ordering::Relaxed);
    }
    log.entry.status = resp.status().as_u16();
    resp.headers_mut().insert(&X_REQUEST_ID, request_id);
    resp.body_mut().attach(log);
    Ok(resp)
}

/// Builds the gateway's own error response: the JSON envelope, or a trailers-only gRPC
/// response for gRPC requests. Whether the connection closes is the table's `closes`.
fn error_response(
    e: &ProxyError,
    grpc: bool,
    version: Version,
    head: bool,
    request_id: &HeaderValue,
    log: &mut RequestLog,
) -> Response<ResponseBody> {
    let row = e.kind.row();
    log.entry.error = Some(row.log);
    if let (true, Some(code)) = (grpc, row.grpc) {
        let mut resp = Response::new(ResponseBody::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(u16::from(code)));
        h.insert("grpc-message", HeaderValue::from_static(row.code));
        if e.retry_after_secs > 0 {
            h.insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after_secs));
        }
        return resp;
    }
    tracing::debug!(error = %e, status = row.status, side = row.side.as_str(), "request failed");
    let mut body = String::with_capacity(160);
    body.push_str("{\"error\":{\"status\":");
    let _ = write!(body, "{}", row.status);
    body.push_str(",\"code\":\"");
    body.push_str(row.code);
    body.push_str("\",\"message\":\"");
    body.push_str(row.message);
    body.push_str("\",\"requestId\":");
    crate::telemetry::access_log::json_bytes(request_id.as_bytes(), &mut body);
    body.push_str("}}");
    let mut resp = own_response(Bytes::from(body), head);
    *resp.status_mut() = StatusCode::from_u16(row.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if row.closes && version < Version::HTTP_2 {
        // The rest of what the client sent can't be trusted to be framed right.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if e.retry_after_secs > 0 {
        h.insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after_secs));
    }
    resp
}

/// A response with a body of the gateway's own. To HEAD it has the headers,
/// `content-length` included, without the body (which HTTP/2 would refuse).
fn own_response(body: Bytes, head: bool) -> Response<ResponseBody> {
    if !head {
        return Response::new(ResponseBody::full(body));
    }
    let mut resp = Response::new(ResponseBody::empty());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The head of a bodiless idempotent request, kept so it can be sent again after the
/// connection failed before any response byte arrived.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(r: &Request<RequestBody>) -> Replay {
        Replay {
            method: r.method().clone(),
            uri: r.uri().clone(),
            version: r.version(),
            headers: r.headers().clone(),
        }
    }

    fn request(&self) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::empty());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The request path, in the order a request meets its phases: check → route → route
/// rules → upstream request → send with retries → respond. Each phase fails with the one
/// error type; `handle` turns that into the table's response.
async fn proxy(
    mut req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    snap: &Snapshot,
    log: &mut RequestLog,
    request_id: &HeaderValue,
    shared_out: &mut Option<Arc<RequestShared>>,
    rules_out: &mut Option<Arc<RouteState>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let listener = ctx.listener(snap).ok_or(ErrorKind::NoRoute)?;
    // An upgrade's handle must be taken before the request is taken apart.
    let upgrade = headers::is_upgrade_request(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (path, host) = match check(&req, ctx)? {
        Checked::Route { path, host } => (path, host),
        Checked::OptionsAsterisk => {
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
            );
            return Ok(resp);
        }
    };
    let entry = route(&listener, host, &path, &req, log)?;
    let route = &*entry.route;
    if !route.response_headers.is_empty() {
        *rules_out = Some(entry.route.clone());
    }
    let target = match route_rules(&req, ctx, route, host, &path)? {
        Next::Forward(target) => target,
        Next::Answer(resp) => return Ok(*resp),
    };
    drop(path);
    if snap.access_log.is_some() {
        log.entry.sent_upstream = true;
        if log.entry.path.as_ref() != Some(&target.path) {
            log.entry.upstream_path = Some(Box::new(target.path.clone()));
        }
    }
    let cluster = target.cluster;
    let (mut parts, body) = req.into_parts();
    let (body, exchange) =
        upstream_request(&mut parts, body, ctx, route, target, upgrade, request_id)?;
    *shared_out = exchange.shared.clone();
    let request = Request::from_parts(parts, body);
    let answered = send_with_retries(Some(request), route, cluster, &exchange, log).await?;
    log.entry.upstream_ms = Some(answered.started.elapsed().as_secs_f64() * 1000.0);
    Ok(respond(answered, ctx, route, downstream_upgrade, exchange))
}

/// What the route-rules phase decided.
enum Next<'r> {
    /// Send it upstream.
    Forward(Target<'r>),
    /// The route answered by itself (a redirect, a direct response).
    Answer(Box<Response<ResponseBody>>),
}

/// The route's rate limit: the request's key (the client's address, the route, or a
/// header's first value) gets a token from its bucket, or the request is refused.
fn admit(
    limit: &RouteLimit,
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    route: &RouteState,
) -> Result<(), ProxyError> {
    let limiter = &limit.limiter;
    let key = match &limit.settings.key {
        RateLimitKey::ClientIp => limiter.key_of_ip(ctx.peer.ip()),
        RateLimitKey::Route => 0,
        RateLimitKey::Header(name) => {
            limiter.key_of_bytes(req.headers().get(name).map_or(&b""[..], |v| v.as_bytes()))
        }
    };
    match limiter.check(key) {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after } => {
            route.counters.rate_limited();
            Err(ProxyError::rate_limited(retry_after))
        }
    }
}

/// Where a request goes: the route's cluster, and the path and query it is sent.
struct Target<'r> {
    cluster: &'r ClusterState,
    path: PathAndQuery,
}

/// What the check phase decided.
enum Checked<'r> {
    /// Route it: the normalised path (what is matched and forwarded) and the host.
    Route {
        path: Cow<'r, str>,
        host: Option<&'r str>,
    },
    /// `OPTIONS *`: the gateway answers by itself.
    OptionsAsterisk,
}

/// Phase 1, check: the request as received is one the gateway routes — the raw-head
/// verdict, the request target, the host, the 421 rule, the head and declared body size —
/// and its path is normalised.
#[inline(always)]
fn check<'r>(req: &'r Request<Incoming>, ctx: &ConnCtx) -> Result<Checked<'r>, ProxyError> {
    let limits = ctx.settings.limits;
    let number = ctx.requests.fetch_add(1, Ordering::AcqRel) + 1;
    if let Some(why) = ctx.head.refused(number) {
        return Err(why.kind().into());
    }
    if req.method() == Method::CONNECT {
        return Err(ErrorKind::MethodNotAllowed.into());
    }
    if req.uri().path() == "*" {
        if req.method() == Method::OPTIONS {
            return Ok(Checked::OptionsAsterisk);
        }
        return Err(ErrorKind::BadRequest.into());
    }
    let host = request_host(req);
    if host.is_some_and(|h| h.contains('@'))
        || (req.version() == Version::HTTP_11 && host.is_none())
    {
        return Err(ErrorKind::BadRequest.into());
    }
    if misdirected(ctx, host) {
        return Err(ErrorKind::MisdirectedRequest.into());
    }
    if headers::head_size(req.method(), req.uri(), req.headers()) > limits.max_request_headers_size
    {
        return Err(ErrorKind::HeadersTooLarge.into());
    }
    let path = normalize_path(req.uri().path()).ok_or(ErrorKind::BadRequest)?;
    if limits.max_request_body > 0 {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.max_request_body) {
            return Err(ErrorKind::BodyTooLarge.into());
        }
    }
    Ok(Checked::Route { path, host })
}

/// Phase 2, route: the listener's table picks the route by host, path and the route's
/// conditions on method and headers; from here on the request's log line and metrics are
/// the route's.
#[inline(always)]
fn route<'l>(
    listener: &'l ListenerState,
    host: Option<&str>,
    path: &str,
    req: &Request<Incoming>,
    log: &mut RequestLog,
) -> Result<&'l RouteEntry, ProxyError> {
    let entry = listener
        .router
        .find_request(host, path, req.method(), req.headers())
        .ok_or(ErrorKind::NoRoute)?;
    log.metrics = Some(entry.metrics.clone());
    log.entry.route = Some(entry.route.name.clone());
    log.entry.cluster = entry.route.cluster().map(|c| c.name.clone());
    Ok(entry)
}

/// Phase 3, route rules: what the route does with the request before anything goes
/// upstream — over the rate limit it is refused (429); a redirect or direct response
/// answers here; otherwise the path and query to send: the normalised path, or what
/// `rewrite.pathPrefix` makes of it, with the query as received.
#[inline(always)]
fn route_rules<'r>(
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    route: &'r RouteState,
    host: Option<&str>,
    path: &str,
) -> Result<Next<'r>, ProxyError> {
    if let Some(limit) = &route.rate_limit {
        admit(limit, req, ctx, route)?;
    }
    let cluster = match &route.action {
        Action::Forward(cluster) => cluster,
        Action::Redirect(r) => {
            let location = r
                .location(ctx.https, host, path, req.uri().query())
                .ok_or(ErrorKind::BadRequest)?;
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = r.status;
            resp.headers_mut().insert(header::LOCATION, location);
            route.response_headers.apply(resp.headers_mut());
            return Ok(Next::Answer(Box::new(resp)));
        }
        Action::Direct(d) => {
            let mut resp = own_response(d.body.clone(), req.method() == Method::HEAD);
            *resp.status_mut() = d.status;
            if let Some(ct) = &d.content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            route.response_headers.apply(resp.headers_mut());
            return Ok(Next::Answer(Box::new(resp)));
        }
    };
    let target = match route.rewrite.target(path, req.uri().query()) {
        Some(target) => target,
        None if route.rewrite.path.is_some() => return Err(ErrorKind::BadRequest.into()),
        None => upstream_path(req.uri(), path)?,
    };
    Ok(Next::Forward(Target {
        cluster,
        path: target,
    }))
}

/// What the sending and responding phases share about one exchange.
struct Exchange {
    /// The client's request body (its progress, failure and byte count), if it has one.
    shared: Option<Arc<RequestShared>>,
    /// The route's `request` timeout, shortened by a gRPC `grpc-timeout`.
    deadline: Option<Instant>,
    grpc: bool,
}

impl Exchange {
    /// A failure of the client's own body, which the client is answered for (not the
    /// upstream).
    fn client_failure(&self) -> Option<ErrorKind> {
        self.shared.as_ref().and_then(|s| s.failure())
    }
}

/// Phase 4, upstream request: hop-by-hop headers go first, then the gateway's forwarding
/// headers and request id are added; the target (rewritten by phase 3), host
/// (`rewrite.host` or the client's) and version are the cluster's protocol's (the head is
/// changed in place); the body is wrapped with the listener's limits and read timeout.
#[inline(always)]
fn upstream_request(
    parts: &mut http::request::Parts,
    body: Incoming,
    ctx: &ConnCtx,
    route: &RouteState,
    target: Target<'_>,
    upgrade: bool,
    request_id: &HeaderValue,
) -> Result<(RequestBody, Exchange), ProxyError> {
    let limits = ctx.settings.limits;
    // The host as a header value: the client's own `Host` bytes when that is where it came
    // from (a cheap shared clone), else the authority copied once.
    let client_host: Option<HeaderValue> =
        match (parts.uri.authority(), parts.headers.get(header::HOST)) {
            (None, Some(h)) => Some(h.clone()),
            (Some(a), _) => HeaderValue::from_str(a.as_str()).ok(),
            (None, None) => None,
        };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // Forwarding headers tell the client's host, whatever the upstream is sent.
    headers::set_forwarding(
        &mut parts.headers,
        &ctx.client,
        ctx.https,
        client_host.as_ref(),
    );
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());
    route.request_headers.apply(&mut parts.headers);
    let host_owned = match &route.rewrite.host {
        Some(h) => Some(h.clone()),
        None => client_host,
    };
    match target.cluster.protocol {
        Protocol::Http1 => {
            parts.uri = Uri::from(target.path);
            parts.version = Version::HTTP_11;
            if let Some(h) = host_owned {
                parts.headers.insert(header::HOST, h);
            }
        }
        Protocol::Http2 => {
            let authority = host_owned.as_ref().and_then(|h| h.to_str().ok());
            parts.uri = h2_uri(authority, &target.path)?;
            parts.version = Version::HTTP_2;
            parts.headers.remove(header::HOST);
        }
    }
    let (body, shared) = if body.is_end_stream() {
        (RequestBody::empty(), None)
    } else {
        let (b, shared) =
            RequestBody::new(body, limits.max_request_body, ctx.settings.timeouts.read);
        (b, Some(shared))
    };
    let grpc = is_grpc(&parts.headers);
    let deadline = crate::http::grpc::deadline(Instant::now(), route.request, &parts.headers, grpc);
    Ok((
        body,
        Exchange {
            shared,
            deadline,
            grpc,
        },
    ))
}

/// The absolute-form target an HTTP/2 upstream request carries (`:authority` and
/// `:path`); no host at all is sent as `localhost`, a host that makes no authority is
/// refused.
fn h2_uri(authority: Option<&str>, target: &PathAndQuery) -> Result<Uri, ProxyError> {
    let authority = authority.unwrap_or("localhost");
    let mut s = String::with_capacity(8 + authority.len() + target.as_str().len());
    s.push_str("http://");
    s.push_str(authority);
    s.push_str(target.as_str());
    Uri::try_from(s).map_err(|_| ErrorKind::BadRequest.into())
}

/// An upstream's answer, from the attempt that got one.
struct Answered {
    response: Response<Incoming>,
    /// HTTP/1.1: the connection, returned to its pool when the response body ends.
    pooled: Option<PoolReturn>,
    /// When the attempt that answered started (upstream latency counts from here).
    started: Instant,
}

/// Phase 5, send with retries: an endpoint by smooth WRR, then another one not yet tried
/// for as long as the failed attempt's error allows a retry (the error table's `retry`)
/// and the route's `retry.attempts` last. Every outcome feeds passive health.
///
/// The request comes as `pending`, the one place it is held: an attempt takes it when it
/// writes it, and puts it back when hyper hands it back unwritten. (An argument moved into
/// a local would be held twice by this future, and each byte of it is copied when the
/// future moves.)
async fn send_with_retries(
    mut pending: Option<Request<RequestBody>>,
    route: &RouteState,
    cluster: &ClusterState,
    exchange: &Exchange,
    log: &mut RequestLog,
) -> Result<Answered, ProxyError> {
    // A copy of the head for a second try after the connection failed before any response
    // byte: bodiless idempotent requests, on routes that retry.
    let replay = pending
        .as_ref()
        .filter(|r| route.retry_attempts > 0 && exchange.shared.is_none() && idempotent(r.method()))
        .map(Replay::of);
    let mut tried = [usize::MAX; 12];
    let mut attempt = 0usize;
    let mut last_error: Option<ProxyError> = None;
    loop {
        // Out of endpoints in rotation on a retry: the previous attempt's error stands.
        let Some(idx) = cluster.balancer.pick_except(&tried[..attempt]) else {
            return Err(last_error.unwrap_or_else(|| ErrorKind::NoHealthyUpstream.into()));
        };
        tried[attempt] = idx;
        let endpoint = &cluster.endpoints[idx];
        log.entry.upstream = Some(endpoint.address.clone());
        if pending.is_none() {
            return Err(ErrorKind::UpstreamReset.into());
        }
        let started = Instant::now();
        let error = match send_once(endpoint, &mut pending, route, exchange).await {
            Ok((response, pooled)) => {
                // Passive health: 502, 503 and 504 answers count as failures too.
                let failed = matches!(response.status().as_u16(), 502..=504);
                cluster
                    .balancer
                    .report(idx, !failed, Some(started.elapsed()));
                return Ok(Answered {
                    response,
                    pooled,
                    started,
                });
            }
            Err(failed) => failed,
        };
        if let Some(kind) = exchange.client_failure() {
            return Err(kind.into());
        }
        cluster.balancer.report(idx, false, None);
        upstream_failed(&cluster.name, endpoint, &error);
        // A retry goes to a different endpoint, so there must be one left to try.
        let can_retry = attempt < route.retry_attempts as usize
            && attempt + 1 < tried.len()
            && attempt + 1 < cluster.endpoints.len();
        // The request itself when it never left (still pending), else the replay copy.
        if !(can_retry && error.may_retry(replay.is_some())) {
            return Err(error);
        }
        if pending.is_none() {
            match &replay {
                Some(r) => pending = Some(r.request()),
                None => return Err(error),
            }
        }
        route.counters.retried();
        last_error = Some(error);
        attempt += 1;
    }
}

/// How often an endpoint may write a failure line; the ones in between are counted and
/// reported by the next line.
const UPSTREAM_LOG_PERIOD_MS: u64 = 10_000;

/// An attempt on `endpoint` failed through no fault of the client: counted by kind, and
/// logged at WARN with the cluster, the endpoint and the reason — one line per endpoint
/// per 10 s at most, with how many were held back since the last one.
fn upstream_failed(cluster: &str, endpoint: &EndpointState, error: &ProxyError) {
    let row = error.kind.row();
    let Some(kind) = row.upstream else {
        return;
    };
    endpoint.errors.count(kind);
    let now = crate::util::Clock::process().now_ms();
    if let Some(suppressed) = endpoint.health.log_gate.admit(now, UPSTREAM_LOG_PERIOD_MS) {
        tracing::warn!(
            event = "upstream_error",
            cluster,
            endpoint = %endpoint.address,
            reason = row.log,
            error = %error,
            suppressed,
            "upstream attempt failed ({suppressed} more failures of this endpoint since its last line were not logged)"
        );
    }
}

/// One attempt on one endpoint: a pooled or new connection, the request, and its response
/// head within the upstream `read` timeout (counted from the end of the request body) and
/// the exchange's deadline. The request is taken from `pending` when it is written, and
/// put back when it provably was not (so a retry can send it again).
async fn send_once(
    endpoint: &EndpointState,
    pending: &mut Option<Request<RequestBody>>,
    route: &RouteState,
    exchange: &Exchange,
) -> Result<(Response<Incoming>, Option<PoolReturn>), ProxyError> {
    // Each branch awaits a future made in place: a future bound to a name and then moved
    // into the timeout would be held twice by this one.
    match exchange.deadline {
        Some(d) => {
            match tokio::time::timeout_at(d, attempt(endpoint, pending, route, exchange)).await {
                Ok(r) => r,
                Err(_) => Err(ErrorKind::RequestTimeout.into()),
            }
        }
        None => attempt(endpoint, pending, route, exchange).await,
    }
}

/// The attempt itself, without the exchange's deadline.
async fn attempt(
    endpoint: &EndpointState,
    pending: &mut Option<Request<RequestBody>>,
    route: &RouteState,
    exchange: &Exchange,
) -> Result<(Response<Incoming>, Option<PoolReturn>), ProxyError> {
    let conn = endpoint.pool.checkout(route.connect, route.write).await?;
    let Some(req) = pending.take() else {
        return Err(ErrorKind::UpstreamReset.into());
    };
    let send = conn.send(&endpoint.pool, req);
    tokio::pin!(send);
    let sent = loop {
        match tokio::time::timeout(route.read, &mut send).await {
            Ok(r) => break r,
            // `read` counts from the end of the request body: while the client is still
            // uploading (policed by the body's own timeouts), keep waiting.
            Err(_) if exchange.shared.as_ref().is_some_and(|s| !s.finished()) => {}
            Err(_) => break Err(SendError::Sent(ErrorKind::UpstreamTimeout.into())),
        }
    };
    sent.map_err(|e| match e {
        SendError::NotSent(req, e) => {
            *pending = Some(*req);
            e.not_sent()
        }
        SendError::Sent(e) => e,
    })
}

/// Phase 6, respond: the upstream's response on its way back — hop-by-hop headers
/// stripped, an accepted upgrade turned into a tunnel, the body streamed with the read
/// timeout and deadline.
#[inline(always)]
fn respond(
    answered: Answered,
    ctx: &ConnCtx,
    route: &RouteState,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    exchange: Exchange,
) -> Response<ResponseBody> {
    let Answered {
        response, pooled, ..
    } = answered;
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let mut pooled = pooled;
    if let (true, Some(down)) = (switching, downstream_upgrade) {
        let mut resp_for_upgrade = Response::from_parts(parts, ());
        let up = hyper::upgrade::on(&mut resp_for_upgrade);
        let (p, ()) = resp_for_upgrade.into_parts();
        parts = p;
        pooled = None;
        tokio::spawn(tunnel(down, up, ctx.guard.track_another()));
        headers::strip_hop_by_hop(&mut parts.headers, true);
    } else {
        headers::strip_hop_by_hop(&mut parts.headers, false);
    }
    route.response_headers.apply(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let body = ResponseBody::upstream(UpstreamBody {
        inner: body,
        read_timeout: route.read,
        deadline: exchange.deadline,
        pooled,
        grpc: exchange.grpc,
        activity: exchange.shared,
    });
    Response::from_parts(parts, body)
}

/// The path and query sent upstream: the normalised path plus the query as received.
/// Shares the request's bytes when normalisation changed nothing (the common case).
fn upstream_path(uri: &Uri, normalised: &str) -> Result<PathAndQuery, ProxyError> {
    if let Some(pq) = uri.path_and_query().filter(|pq| pq.path() == normalised) {
        return Ok(pq.clone());
    }
    let query = uri.query();
    let mut s = String::with_capacity(normalised.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(normalised);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).map_err(|_| ProxyError::new(ErrorKind::BadRequest))
}

/// Copies bytes both ways between an upgraded client connection and upstream connection.
/// The tunnel holds only the two connections and its listener's drain guard (never a
/// snapshot): reloads leave it alone; its listener's drain deadline closes it.
async fn tunnel(
    down: hyper::upgrade::OnUpgrade,
    up: hyper::upgrade::OnUpgrade,
    mut guard: ConnGuard,
) {
    match tokio::join!(down, up) {
        (Ok(down), Ok(up)) => {
            let mut down = TokioIo::new(down);
            let mut up = TokioIo::new(up);
            tokio::select! {
                r = tokio::io::copy_bidirectional(&mut down, &mut up) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded tunnel ended with an error");
                    }
                }
                () = guard.until(Phase::Stopped) => {
                    tracing::debug!("drain deadline passed; closing upgraded tunnel");
                }
            }
        }
        (d, u) => {
            tracing::debug!(
                down = d.is_ok(),
                up = u.is_ok(),
                "upgrade failed on one side"
            );
        }
    }
}
