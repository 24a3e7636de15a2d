//! Admin listener, beside the request flow: `/healthz`, `/readyz`, `/metrics`, `/status`,
//! `/config` and `POST /reload`, with optional bearer-token protection. The contract of
//! every endpoint is `openspec/admin.yaml`; tests hold real responses against it.

use crate::certs::Secret;
use crate::config::model::{self, Alpn, HostMatch, LogTarget, Protocol, SecurityMode};
use crate::http::headers::X_REQUEST_ID;
use crate::listener::{ConnGuard, Phase};
use crate::state::{Gateway, ReloadOutcome, ReloadTrigger};
use crate::telemetry::access_log::rfc3339_millis;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

type Resp = Response<Full<Bytes>>;

/// `/metrics` by default, and what Prometheus asks for: what prometheus-client writes
/// (counters with `_total`, a closing `# EOF`).
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `/metrics` for clients that prefer `text/plain`: the Prometheus text format, which
/// scrapers older than OpenMetrics read.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request may use the protected endpoints (all but `/healthz` and `/readyz`):
/// always without a `tokenFile` (bind the admin listener to loopback then), else only with
/// `Authorization: Bearer <token>`. The token is the one validation read for the running
/// configuration, so a reload that changes the file changes the token.
fn authorized<B>(req: &Request<B>, token: Option<&Secret>) -> bool {
    let Some(token) = token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .is_some_and(|given| token.matches(given))
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110
/// §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Serves one connection accepted on the admin listener, on a task of its own. It stays up
/// through the process's drain (so `/readyz` can answer 503 while requests finish) and
/// closes when its listener drains or stops.
pub(crate) fn accept(gateway: &Arc<Gateway>, stream: TcpStream, mut guard: ConnGuard) {
    let gateway = gateway.clone();
    tokio::spawn(async move {
        let svc = service_fn(move |req| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(handle(req, &gateway).await) }
        });
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        let conn = b.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = guard.until(Phase::Draining) => conn.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = conn.as_mut() => {}
            () = guard.until(Phase::Stopped) => {}
        }
    });
}

/// The admin endpoints: path, allowed methods, and whether the token is needed.
const ENDPOINTS: &[(&str, &[Method], bool)] = &[
    ("/healthz", &[Method::GET, Method::HEAD], false),
    ("/readyz", &[Method::GET, Method::HEAD], false),
    ("/metrics", &[Method::GET, Method::HEAD], true),
    ("/status", &[Method::GET, Method::HEAD], true),
    ("/config", &[Method::GET, Method::HEAD], true),
    ("/reload", &[Method::POST], true),
];

async fn handle(req: Request<Incoming>, gateway: &Gateway) -> Resp {
    // Like the proxy: keep a sane client-sent id, so an operator's tooling can correlate.
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if crate::util::valid_request_id(v) => v.clone(),
        _ => crate::util::new_request_id(),
    };
    let mut resp = route(&req, gateway, &request_id).await;
    resp.headers_mut().insert(&X_REQUEST_ID, request_id);
    resp
}

async fn route<B>(req: &Request<B>, gateway: &Gateway, request_id: &HeaderValue) -> Resp {
    let path = req.uri().path();
    let Some(&(_, allowed, protected)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
            request_id,
        );
    };
    if !allowed.contains(req.method()) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this admin endpoint",
            request_id,
        );
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    }
    let allowed = !protected || {
        let snap = gateway.snapshot.load();
        authorized(
            req,
            snap.config.admin.as_ref().and_then(|a| a.token.as_ref()),
        )
    };
    if !allowed {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
            request_id,
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match path {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            if gateway.ready.load(Ordering::Acquire) && !gateway.draining.load(Ordering::Acquire) {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "not ready"}),
                )
            }
        }
        "/metrics" => {
            let openmetrics = gateway.metrics.encode();
            let (body, content_type) = if prefers_prometheus_text(req.headers()) {
                (prometheus_text(&openmetrics), PROMETHEUS_CONTENT_TYPE)
            } else {
                (openmetrics, OPENMETRICS_CONTENT_TYPE)
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept"));
            r
        }
        "/status" => json_response(StatusCode::OK, &status(gateway)),
        "/config" => json_response(
            StatusCode::OK,
            &config_document(&gateway.snapshot.load().config),
        ),
        _ => reload(gateway, request_id).await,
    }
}

/// Whether `Accept` prefers the Prometheus text format to OpenMetrics: `text/plain` (or
/// `text/*`) at a higher quality than `application/openmetrics-text`. Prometheus asks for
/// OpenMetrics first and gets it; a scraper that asks only for `text/plain` gets the text
/// format; no `Accept` or `*/*` keeps OpenMetrics, as 0.5 served it.
fn prefers_prometheus_text(headers: &http::HeaderMap) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" => text = text.max(q),
                _ => {}
            }
        }
    }
    text > openmetrics
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: counters are named by
/// their `_total` sample and info metrics become gauges of their `_info` sample; `# UNIT`,
/// `_created` samples and `# EOF` are not part of the older format.
fn prometheus_text(openmetrics: &str) -> String {
    let mut kinds = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            kinds.insert(name, kind);
        }
    }
    let renamed = |name: &str| match kinds.get(name).copied() {
        Some("counter") => (format!("{name}_total"), "counter"),
        Some("info") => (format!("{name}_info"), "gauge"),
        Some("unknown") => (name.to_string(), "untyped"),
        Some("stateset") => (name.to_string(), "gauge"),
        Some("gaugehistogram") => (name.to_string(), "histogram"),
        Some(other) => (name.to_string(), other),
        None => (name.to_string(), "untyped"),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (name, kind) = renamed(name);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // 0.0.4 escapes only `\` and `\n` in help text.
            let _ = writeln!(
                out,
                "# HELP {} {}",
                renamed(name).0,
                help.replace("\\\"", "\"")
            );
            continue;
        }
        let sample = line.split([' ', '{']).next().unwrap_or("");
        let created = sample
            .strip_suffix("_created")
            .is_some_and(|family| kinds.get(family).is_some_and(|k| *k == "counter"));
        if created {
            continue;
        }
        // Exemplars (` # {…}`) are OpenMetrics only.
        let line = line.split(" # ").next().unwrap_or(line);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `POST /reload`: asks the reload worker, and answers once the reload has finished.
async fn reload(gateway: &Gateway, request_id: &HeaderValue) -> Resp {
    let Some(answer) = gateway.request_reload(ReloadTrigger::Api) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "this gateway is not running a reload worker",
            request_id,
        );
    };
    match answer.await {
        Ok(ReloadOutcome::Applied { generation, hash }) => json_response(
            StatusCode::OK,
            &json!({"ok": true, "generation": generation, "hash": format!("{hash:016x}")}),
        ),
        Ok(ReloadOutcome::Invalid(reasons)) => reload_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            "the configuration file is invalid; the running configuration is unchanged",
            &reasons,
            request_id,
        ),
        Ok(ReloadOutcome::Failed(reasons)) => reload_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reload_failed",
            "the configuration could not be applied; the running configuration is unchanged",
            &reasons,
            request_id,
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "the reload worker stopped (the gateway is shutting down)",
            request_id,
        ),
    }
}

/// The error envelope of a failed reload, with every reason.
fn reload_error(
    status: StatusCode,
    code: &str,
    message: &str,
    reasons: &[String],
    request_id: &HeaderValue,
) -> Resp {
    let id = String::from_utf8_lossy(request_id.as_bytes());
    json_response(
        status,
        &json!({"error": {
            "status": status.as_u16(),
            "code": code,
            "message": message,
            "requestId": id,
            "reasons": reasons,
        }}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The error envelope, the same shape the proxy answers with.
fn error(status: StatusCode, code: &str, message: &str, request_id: &HeaderValue) -> Resp {
    let id = String::from_utf8_lossy(request_id.as_bytes());
    json_response(
        status,
        &json!({"error": {"status": status.as_u16(), "code": code, "message": message, "requestId": id}}),
    )
}

fn timestamp(t: std::time::SystemTime) -> String {
    let mut s = String::with_capacity(24);
    rfc3339_millis(t, &mut s);
    s
}

fn host_pattern(h: &HostMatch) -> Option<String> {
    match h {
        HostMatch::Any => None,
        HostMatch::Exact(h) => Some(h.clone()),
        HostMatch::Wildcard(h) => Some(format!("*.{h}")),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
    }
}

/// The `/status` document (schema `Status` in `openspec/admin.yaml`). Endpoint health
/// comes from the cluster's balancer, the same view the next pick uses.
pub(crate) fn status(gateway: &Gateway) -> Value {
    let snap = gateway.snapshot.load_full();
    let cfg = &snap.config;
    let mut doc = json!({
        "version": crate::VERSION,
        "commit": crate::version::COMMIT,
        "target": crate::version::TARGET,
        "generation": snap.generation,
        "configHash": format!("{:016x}", snap.hash),
        "configPath": gateway.config_path.display().to_string(),
        "configLoadedAt": timestamp(snap.loaded_at),
        "startedAt": timestamp(gateway.started_at),
        "uptimeSeconds": gateway.started.elapsed().as_secs(),
        "listeners": cfg.listeners.iter().map(|l| json!({
            "name": l.name,
            "address": l.address.to_string(),
            "tls": l.tls.is_some(),
            "http2": l.http2,
            "maxConnections": l.max_connections,
        })).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(|r| json!({
            "name": r.name,
            "listeners": r.listeners,
            "host": host_pattern(&r.host),
            "pathPrefix": r.path_prefix,
            "action": match r.action {
                model::RouteAction::Cluster(_) => "cluster",
                model::RouteAction::Redirect(_) => "redirect",
                model::RouteAction::Direct(_) => "directResponse",
            },
            "cluster": r.action.cluster(),
        })).collect::<Vec<_>>(),
        "clusters": snap.clusters.iter().map(|c| json!({
            "name": &*c.name,
            "protocol": protocol_name(c.protocol),
            "panic": c.balancer.panic(),
            "endpoints": c.endpoints.iter().enumerate().map(|(i, e)| {
                let view = c.balancer.view(i);
                json!({
                    "address": &*e.address,
                    "weight": e.weight,
                    "effectiveWeight": view.map_or(f64::from(e.weight), |v| v.effective_weight),
                    "healthy": view.is_none_or(|v| v.healthy),
                    "passiveHealthy": view.is_none_or(|v| v.passive_healthy),
                    "activeHealthy": view.and_then(|v| v.active).map(|a| a.healthy),
                    "takenOutBy": view.map_or_else(Vec::new, |v| {
                        let mut by = Vec::new();
                        if !v.passive_healthy {
                            by.push("passive");
                        }
                        if v.active.is_some_and(|a| !a.healthy) {
                            by.push("active");
                        }
                        by
                    }),
                    "activeChecks": view.and_then(|v| v.active).map(|a| json!({
                        "checks": a.checks,
                        "consecutivePassed": a.consecutive_passed,
                        "consecutiveFailed": a.consecutive_failed,
                        "lastResult": a.last_passed.map(|p| if p { "passed" } else { "failed" }),
                        "lastStatus": a.last_status,
                        "lastError": a.last_error,
                    })),
                    "ejections": view.map_or(0, |v| v.ejections),
                    "ejectedForMs": view.map_or(0, |v| u64::try_from(v.ejected_for.as_millis()).unwrap_or(u64::MAX)),
                    "latencyMs": view.and_then(|v| v.latency_ms),
                    "idleConnections": e.pool.idle_count(),
                })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "l4": snap.l4.iter().map(|l| json!({
            "name": &*l.name,
            "address": l.cfg.address.to_string(),
            "cluster": &*l.cluster.name,
            "maxConnections": l.cfg.max_connections,
            "activeConnections": l.stats.active(),
            "accepted": l.stats.accepted(),
            "rejected": l.stats.rejected().iter().map(|(reason, n)| (reason.to_string(), json!(n))).collect::<Map<_, _>>(),
            "bytesIn": l.stats.bytes_in(),
            "bytesOut": l.stats.bytes_out(),
        })).collect::<Vec<_>>(),
        "accessLog": {
            "dropped": crate::telemetry::metrics::access_log_dropped(),
        },
    });
    if let Some(r) = gateway.last_reload.lock().ok().and_then(|r| r.clone()) {
        let (ok, generation, errors) = match r.outcome {
            ReloadOutcome::Applied { generation, .. } => (true, Some(generation), Vec::new()),
            ReloadOutcome::Invalid(e) | ReloadOutcome::Failed(e) => (false, None, e),
        };
        let mut last = Map::new();
        last.insert("at".into(), json!(timestamp(r.at)));
        last.insert("trigger".into(), json!(r.trigger.as_str()));
        last.insert("ok".into(), json!(ok));
        put(&mut last, "generation", generation);
        last.insert("errors".into(), json!(errors));
        doc["lastReload"] = Value::Object(last);
    }
    doc
}

/// A duration the way the config file writes it (`1m30s`, `250ms`, `0s`), so the
/// `/config` document reads back as the same configuration.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let parts = [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1_000 % 60, "s"),
        (ms % 1_000, "ms"),
    ];
    let mut out = String::new();
    for (n, unit) in parts {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Inserts `key: value` when the value is present, so absent optional keys stay absent
/// (the document then validates as a config file, where `null` is not always accepted).
fn put<T: Into<Value>>(m: &mut Map<String, Value>, key: &str, value: Option<T>) {
    if let Some(v) = value {
        m.insert(key.into(), v.into());
    }
}

/// The `/config` document: the running configuration as JSON in the file's own shape
/// (defaults filled in, relative paths resolved), which `gateway validate` accepts as a
/// configuration file. Paths of secrets (the admin token, private keys) are shown; what
/// they hold never is: the model only carries paths.
pub fn config_document(cfg: &model::Config) -> Value {
    let mut doc = Map::new();
    doc.insert("version".into(), json!(1));
    doc.insert("workers".into(), json!(cfg.workers));
    if let Some(a) = &cfg.admin {
        let mut m = Map::new();
        m.insert("address".into(), json!(a.address.to_string()));
        put(&mut m, "tokenFile", a.token_file.as_deref().map(path_str));
        doc.insert("admin".into(), Value::Object(m));
    }
    if let Some(a) = &cfg.access_log {
        let path = match &a.target {
            LogTarget::Stdout => "stdout".to_string(),
            LogTarget::Stderr => "stderr".to_string(),
            LogTarget::File(p) => path_str(p),
        };
        doc.insert(
            "accessLog".into(),
            json!({
                "path": path,
                "sampleRate": a.sample_rate,
                "alwaysLogErrors": a.always_log_errors,
                "fields": a.fields.iter().map(|f| f.name()).collect::<Vec<_>>(),
            }),
        );
    }
    doc.insert(
        "reload".into(),
        json!({"watch": cfg.reload.watch, "debounce": duration(cfg.reload.debounce)}),
    );
    doc.insert(
        "shutdown".into(),
        json!({
            "drainTimeout": duration(cfg.shutdown.drain_timeout),
            "delay": duration(cfg.shutdown.delay),
        }),
    );
    doc.insert(
        "listeners".into(),
        cfg.listeners.iter().map(listener_document).collect(),
    );
    doc.insert(
        "routes".into(),
        cfg.routes.iter().map(route_document).collect(),
    );
    doc.insert(
        "clusters".into(),
        cfg.clusters.iter().map(cluster_document).collect(),
    );
    doc.insert(
        "l4".into(),
        json!({"listeners": cfg.l4.iter().map(|l| json!({
            "name": l.name,
            "address": l.address.to_string(),
            "cluster": l.cluster,
            "idleTimeout": duration(l.idle_timeout),
            "maxDuration": duration(l.max_duration.unwrap_or_default()),
            "maxConnections": l.max_connections,
            "allow": l.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "deny": l.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()}),
    );
    Value::Object(doc)
}

fn listener_document(l: &model::Listener) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(l.name));
    m.insert("address".into(), json!(l.address.to_string()));
    match &l.tls {
        // `http2` is for plaintext (h2c) only; with TLS, ALPN decides.
        None => {
            m.insert("http2".into(), json!(l.http2));
        }
        Some(tls) => {
            let certificates: Vec<Value> = tls
                .certificates
                .iter()
                .map(|c| {
                    let mut cert = Map::new();
                    cert.insert("cert".into(), json!(path_str(&c.cert)));
                    cert.insert("key".into(), json!(path_str(&c.key)));
                    if !c.server_names.is_empty() {
                        cert.insert("serverNames".into(), json!(c.server_names));
                    }
                    Value::Object(cert)
                })
                .collect();
            let alpn: Vec<&str> = tls
                .alpn
                .iter()
                .map(|a| match a {
                    Alpn::H2 => "h2",
                    Alpn::Http11 => "http/1.1",
                })
                .collect();
            m.insert(
                "tls".into(),
                json!({
                    "certificates": certificates,
                    "minVersion": tls.min_version.as_str(),
                    "alpn": alpn,
                }),
            );
        }
    }
    m.insert("maxConnections".into(), json!(l.max_connections));
    m.insert(
        "limits".into(),
        json!({
            "maxRequestHeadersSize": l.limits.max_request_headers_size,
            "maxRequestBody": l.limits.max_request_body,
        }),
    );
    m.insert(
        "timeouts".into(),
        json!({
            "readHeader": duration(l.timeouts.read_header),
            "read": duration(l.timeouts.read),
            "write": duration(l.timeouts.write),
            "idle": duration(l.timeouts.idle),
        }),
    );
    Value::Object(m)
}

fn route_document(r: &model::Route) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(r.name));
    put(&mut m, "listeners", r.listeners.clone());
    let mut matcher = Map::new();
    put(&mut matcher, "host", host_pattern(&r.host));
    matcher.insert("pathPrefix".into(), json!(r.path_prefix));
    put(
        &mut matcher,
        "methods",
        r.methods
            .as_ref()
            .map(|ms| ms.iter().map(|m| m.as_str()).collect::<Vec<_>>()),
    );
    if !r.match_headers.is_empty() {
        let headers: Vec<Value> = r
            .match_headers
            .iter()
            .map(|h| match &h.value {
                Some(v) => {
                    json!({"name": h.name.as_str(), "value": String::from_utf8_lossy(v.as_bytes())})
                }
                None => json!({"name": h.name.as_str(), "present": true}),
            })
            .collect();
        matcher.insert("headers".into(), Value::Array(headers));
    }
    m.insert("match".into(), Value::Object(matcher));
    match &r.action {
        model::RouteAction::Cluster(cluster) => {
            m.insert("cluster".into(), json!(cluster));
            let mut t = Map::new();
            put(&mut t, "connect", r.timeouts.connect.map(duration));
            put(&mut t, "read", r.timeouts.read.map(duration));
            put(&mut t, "write", r.timeouts.write.map(duration));
            t.insert(
                "request".into(),
                json!(duration(r.timeouts.request.unwrap_or_default())),
            );
            m.insert("timeouts".into(), Value::Object(t));
            m.insert("retry".into(), json!({"attempts": r.retry_attempts}));
        }
        // Timeouts and retries would be refused on a route that answers by itself.
        model::RouteAction::Redirect(d) => {
            let mut red = Map::new();
            put(&mut red, "scheme", d.scheme.clone());
            put(&mut red, "host", d.host.clone());
            put(&mut red, "port", d.port);
            put(&mut red, "path", d.path.clone());
            put(&mut red, "pathPrefix", d.path_prefix.clone());
            red.insert("code".into(), json!(d.code));
            m.insert("redirect".into(), Value::Object(red));
        }
        model::RouteAction::Direct(d) => {
            let mut direct = Map::new();
            direct.insert("status".into(), json!(d.status));
            direct.insert("body".into(), json!(d.body));
            put(
                &mut direct,
                "contentType",
                d.content_type
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
            m.insert("directResponse".into(), Value::Object(direct));
        }
    }
    let mut rewrite = Map::new();
    put(&mut rewrite, "pathPrefix", r.rewrite.path_prefix.clone());
    put(&mut rewrite, "host", r.rewrite.host.clone());
    if !rewrite.is_empty() {
        m.insert("rewrite".into(), Value::Object(rewrite));
    }
    let mut headers = Map::new();
    for (key, ops) in [
        ("request", &r.request_headers),
        ("response", &r.response_headers),
    ] {
        if !ops.is_empty() {
            headers.insert(key.into(), header_ops_document(ops));
        }
    }
    if !headers.is_empty() {
        m.insert("headers".into(), Value::Object(headers));
    }
    if let Some(l) = &r.rate_limit {
        let key = match &l.key {
            model::RateLimitKey::ClientIp => "clientIp".to_string(),
            model::RateLimitKey::Route => "route".to_string(),
            model::RateLimitKey::Header(h) => format!("header:{h}"),
        };
        m.insert(
            "rateLimit".into(),
            json!({"requestsPerSecond": l.requests_per_second, "burst": l.burst, "key": key}),
        );
    }
    Value::Object(m)
}

/// One side of a route's header rules, as the file writes it.
fn header_ops_document(ops: &model::HeaderOps) -> Value {
    let pairs = |list: &[(http::HeaderName, HeaderValue)]| -> Map<String, Value> {
        list.iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    json!(String::from_utf8_lossy(v.as_bytes())),
                )
            })
            .collect()
    };
    let mut m = Map::new();
    if !ops.set.is_empty() {
        m.insert("set".into(), Value::Object(pairs(&ops.set)));
    }
    if !ops.add.is_empty() {
        m.insert("add".into(), Value::Object(pairs(&ops.add)));
    }
    if !ops.remove.is_empty() {
        m.insert(
            "remove".into(),
            json!(ops.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>()),
        );
    }
    Value::Object(m)
}

fn cluster_document(c: &model::Cluster) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(c.name));
    m.insert("protocol".into(), json!(protocol_name(c.protocol)));
    m.insert(
        "endpoints".into(),
        c.endpoints
            .iter()
            .map(|e| json!({"address": e.address, "weight": e.weight}))
            .collect(),
    );
    m.insert(
        "timeouts".into(),
        json!({
            "connect": duration(c.timeouts.connect),
            "read": duration(c.timeouts.read),
            "write": duration(c.timeouts.write),
        }),
    );
    // Mode none is the absence of the section: the validator refuses `security` on a
    // cluster only L4 uses, whatever its mode.
    let s = &c.security;
    if s.mode != SecurityMode::None {
        let mut sec = Map::new();
        let mode = match s.mode {
            SecurityMode::None => "none",
            SecurityMode::Tls => "tls",
            SecurityMode::Mtls => "mtls",
        };
        sec.insert("mode".into(), json!(mode));
        put(&mut sec, "caBundle", s.ca_bundle.as_deref().map(path_str));
        put(&mut sec, "serverName", s.server_name.clone());
        put(
            &mut sec,
            "clientCert",
            s.client_cert.as_deref().map(path_str),
        );
        put(&mut sec, "clientKey", s.client_key.as_deref().map(path_str));
        m.insert("security".into(), Value::Object(sec));
    }
    if let Some(p) = &c.passive_health {
        let mut ph = Map::new();
        ph.insert("consecutiveFailures".into(), json!(p.consecutive_failures));
        ph.insert("baseEjectionTime".into(), json!(duration(p.base_ejection)));
        ph.insert("maxEjectionTime".into(), json!(duration(p.max_ejection)));
        ph.insert("maxEjectedPercent".into(), json!(p.max_ejected_percent));
        if let Some(l) = &p.latency {
            ph.insert(
                "latency".into(),
                json!({"threshold": duration(l.threshold), "weightFactor": l.weight_factor}),
            );
        }
        ph.insert("slowStart".into(), json!(duration(p.slow_start)));
        m.insert("passiveHealth".into(), Value::Object(ph));
    }
    if let Some(a) = &c.active_health {
        let statuses: Vec<Value> = a
            .expected_statuses
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    json!(lo)
                } else {
                    json!(format!("{lo}-{hi}"))
                }
            })
            .collect();
        let mut ah = Map::new();
        ah.insert("path".into(), json!(a.path));
        ah.insert("interval".into(), json!(duration(a.interval)));
        ah.insert("timeout".into(), json!(duration(a.timeout)));
        ah.insert("unhealthyThreshold".into(), json!(a.unhealthy_threshold));
        ah.insert("healthyThreshold".into(), json!(a.healthy_threshold));
        ah.insert("expectedStatuses".into(), Value::Array(statuses));
        put(&mut ah, "host", a.host.clone());
        m.insert("activeHealth".into(), Value::Object(ah));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_the_config_file_writes_them() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_millis(3_661_001), "1h1m1s1ms"),
            (Duration::from_secs(600), "10m"),
        ] {
            assert_eq!(duration(d), s);
            assert_eq!(crate::config::validate::parse_duration(s), Some(d));
        }
    }

    #[test]
    fn metrics_are_prometheus_text_only_for_clients_that_prefer_it() {
        let text = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
            prefers_prometheus_text(&h)
        };
        assert!(
            !prefers_prometheus_text(&http::HeaderMap::new()),
            "no Accept: as 0.5"
        );
        assert!(!text("*/*"));
        assert!(text("text/plain"));
        assert!(text("text/plain;version=0.0.4"));
        assert!(!text("application/openmetrics-text"));
        // What Prometheus sends.
        assert!(!text("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"));
        assert!(text("text/plain;q=0.9,application/openmetrics-text;q=0.5"));
    }

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples_and_drops_openmetrics_only_lines() {
        let om = "# HELP gateway_requests HTTP requests \\\"finished\\\".\n# TYPE gateway_requests counter\ngateway_requests_total{code=\"200\"} 3\ngateway_requests_created{code=\"200\"} 1.7e9\n# HELP gateway_build Build.\n# TYPE gateway_build info\ngateway_build_info{version=\"0.1.0\"} 1\n# TYPE gateway_up gauge\n# UNIT gateway_up seconds\ngateway_up 1 # {trace_id=\"x\"} 1\n# EOF\n";
        let text = prometheus_text(om);
        assert_eq!(
            text,
            "# HELP gateway_requests_total HTTP requests \"finished\".\n# TYPE gateway_requests_total counter\ngateway_requests_total{code=\"200\"} 3\n# HELP gateway_build_info Build.\n# TYPE gateway_build_info gauge\ngateway_build_info{version=\"0.1.0\"} 1\n# TYPE gateway_up gauge\ngateway_up 1\n"
        );
    }

    #[test]
    fn only_a_bearer_credential_is_taken() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
