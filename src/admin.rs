//! Admin listener, beside the request flow: `/healthz`, `/readyz`, `/status` and
//! `POST /reload`, with optional bearer-token protection.

use crate::config::model::HostMatch;
use crate::state::Gateway;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Resp = Response<Full<Bytes>>;

/// Serves the admin API until `shutdown` is set.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    let token: Option<Arc<str>> = gateway
        .snapshot
        .load()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token_file.as_ref())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().into());
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let gateway = gateway.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gateway = gateway.clone();
                let token = token.clone();
                async move { Ok::<_, Infallible>(route(req, &gateway, token.as_deref())) }
            });
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_response(
        status,
        json!({"error": {"status": status.as_u16(), "code": code, "message": message, "requestId": null}}),
    )
}

/// Compares without an early exit, so timing does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| constant_time_eq(given, token.as_bytes()))
}

fn route(req: Request<Incoming>, gateway: &Gateway, token: Option<&str>) -> Resp {
    let path = req.uri().path();
    let allowed: &[Method] = match path {
        "/healthz" | "/readyz" | "/status" | "/metrics" => &[Method::GET, Method::HEAD],
        "/reload" => &[Method::POST],
        _ => return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    };
    if !allowed.contains(req.method()) {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed here",
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
    if !matches!(path, "/healthz" | "/readyz") && !authorized(&req, token) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match path {
        "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
        "/readyz" => {
            if gateway.ready.load(Ordering::Acquire) && !gateway.draining.load(Ordering::Acquire) {
                json_response(StatusCode::OK, json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready"}),
                )
            }
        }
        "/status" => json_response(StatusCode::OK, status(gateway)),
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(gateway.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => error(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "configuration reload is not available in this version; restart the gateway",
        ),
    }
}

/// The `/status` document.
pub fn status(gateway: &Gateway) -> serde_json::Value {
    let snap = gateway.snapshot.load_full();
    let cfg = &snap.config;
    let host = |h: &HostMatch| match h {
        HostMatch::Any => serde_json::Value::Null,
        HostMatch::Exact(h) => json!(h),
        HostMatch::Wildcard(h) => json!(format!("*.{h}")),
    };
    json!({
        "version": crate::VERSION,
        "generation": snap.generation,
        "configHash": format!("{:016x}", snap.hash),
        "configPath": gateway.config_path.display().to_string(),
        "uptimeSeconds": gateway.started.elapsed().as_secs(),
        "listeners": cfg.listeners.iter().map(|l| json!({
            "name": l.name,
            "address": l.address.to_string(),
            "http2": l.http2,
            "maxConnections": l.max_connections,
        })).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(|r| json!({
            "name": r.name,
            "listeners": r.listeners,
            "host": host(&r.host),
            "pathPrefix": r.path_prefix,
            "cluster": r.cluster,
        })).collect::<Vec<_>>(),
        "clusters": snap.clusters.iter().map(|c| json!({
            "name": &*c.name,
            "protocol": match c.protocol { crate::config::model::Protocol::Http1 => "http1", crate::config::model::Protocol::Http2 => "http2" },
            "endpoints": c.endpoints.iter().map(|e| json!({
                "address": &*e.address,
                "weight": e.weight,
                "effectiveWeight": e.weight,
                "healthy": true,
                "idleConnections": e.pool.idle_count(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "l4": snap.l4.iter().map(|l| json!({
            "name": &*l.name,
            "address": l.cfg.address.to_string(),
            "cluster": &*l.cluster.name,
            "maxConnections": l.cfg.max_connections,
            "activeConnections": l.stats.active(),
            "accepted": l.stats.accepted(),
            "rejected": l.stats.rejected().iter().map(|(reason, n)| (reason.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "bytesIn": l.stats.bytes_in(),
            "bytesOut": l.stats.bytes_out(),
        })).collect::<Vec<_>>(),
        "accessLog": {
            "dropped": snap.access_log.as_ref().map_or(0, |l| l.dropped()),
        },
    })
}
