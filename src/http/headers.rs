//! Header rules applied in both directions: hop-by-hop removal (done first, so nothing
//! the gateway adds can be removed by a client's `Connection` header), then the
//! forwarding headers and the request id.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `connection` and every header it names, `keep-alive`,
/// `proxy-connection`, `transfer-encoding`, `te` (unless it is exactly `trailers`) and
/// `upgrade` (kept, with `connection: upgrade`, when `keep_upgrade` is set).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(first) = headers.get(header::CONNECTION) {
        // Fast path for the overwhelmingly common single value.
        if headers.get_all(header::CONNECTION).iter().count() == 1 {
            let v = first.clone();
            remove_named(headers, &v, keep_upgrade);
        } else {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for v in &values {
                remove_named(headers, v, keep_upgrade);
            }
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        let only_trailers = headers.get_all(header::TE).iter().count() == 1
            && te.as_bytes().eq_ignore_ascii_case(b"trailers");
        if !only_trailers {
            headers.remove(header::TE);
        }
    }
    if keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn remove_named(headers: &mut HeaderMap, value: &HeaderValue, keep_upgrade: bool) {
    let Ok(s) = value.to_str() else { return };
    for name in s.split(',') {
        let name = name.trim();
        if name.is_empty() || name.eq_ignore_ascii_case("close") {
            continue;
        }
        if keep_upgrade && name.eq_ignore_ascii_case("upgrade") {
            continue;
        }
        if let Ok(h) = HeaderName::from_bytes(name.as_bytes()) {
            // Never let a client strip what the gateway itself sets or relies on.
            if h == header::HOST || h == X_REQUEST_ID {
                continue;
            }
            headers.remove(h);
        }
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Sets the forwarding headers for the upstream: `x-forwarded-for` (appended),
/// `x-forwarded-proto`, `x-forwarded-host`, and a `forwarded` element appended to any
/// the client sent (RFC 7239).
pub fn set_forwarding(headers: &mut HeaderMap, client: IpAddr, https: bool, host: Option<&str>) {
    let proto = if https { "https" } else { "http" };
    let mut ip_buf = String::with_capacity(48);
    use std::fmt::Write as _;
    let _ = write!(ip_buf, "{client}");

    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip_buf}"),
        _ => ip_buf.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));

    let mut fwd = String::with_capacity(64);
    match client {
        IpAddr::V4(_) => {
            let _ = write!(fwd, "for={ip_buf}");
        }
        IpAddr::V6(_) => {
            let _ = write!(fwd, "for=\"[{ip_buf}]\"");
        }
    }
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        let _ = write!(fwd, ";host=\"{}\"", host.unwrap_or_default());
        headers.insert(&X_FORWARDED_HOST, h);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    let _ = write!(fwd, ";proto={proto}");
    let combined = match headers.get(&FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {fwd}"),
        _ => fwd,
    };
    if let Ok(v) = HeaderValue::from_str(&combined) {
        headers.insert(&FORWARDED, v);
    }
}

/// Approximate size of a request head as received: request line plus each header's
/// name, value and separators, as HTTP/1.1 would carry it.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go_before_ours_are_added() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-secret, x-forwarded-for, close"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        strip_hop_by_hop(&mut h, false);
        set_forwarding(
            &mut h,
            "192.0.2.7".parse().expect("ip"),
            false,
            Some("example.com"),
        );
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::TE).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert!(h.get(header::CONNECTION).is_none());
        // The client's x-forwarded-for was named in Connection, so it was dropped before
        // the gateway appended the real client address.
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"example.com\";proto=http"
        );
    }

    #[test]
    fn te_trailers_survives() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::TE], "trailers");
    }
}
