//! Header rules applied in both directions: hop-by-hop removal (done first, so nothing
//! the gateway adds can be removed by a client's `Connection` header), then the
//! forwarding headers and the request id.

use bytes::Bytes;
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
///
/// One pass over the names finds what is present; the common request carries none of
/// these, and then nothing is hashed or removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let (mut connection, mut te, mut upgrade, mut other) = (false, false, false, false);
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if *name == header::TE {
            te = true;
        } else if *name == header::UPGRADE {
            upgrade = true;
        } else if *name == header::TRANSFER_ENCODING
            || *name == KEEP_ALIVE
            || *name == PROXY_CONNECTION
        {
            other = true;
        }
    }
    if connection {
        let values: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for v in &values {
            remove_named(headers, v, keep_upgrade);
        }
        headers.remove(header::CONNECTION);
    }
    if other {
        headers.remove(&KEEP_ALIVE);
        headers.remove(&PROXY_CONNECTION);
        headers.remove(header::TRANSFER_ENCODING);
    }
    if te {
        let mut values = headers.get_all(header::TE).iter();
        let only_trailers = values
            .next()
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
            && values.next().is_none();
        if !only_trailers {
            headers.remove(header::TE);
        }
    }
    if upgrade || connection {
        if keep_upgrade && headers.contains_key(header::UPGRADE) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(header::UPGRADE);
        }
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

/// The client's address as forwarding headers carry it, rendered once per connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// `192.0.2.7` or `2001:db8::1`: the `x-forwarded-for` element.
    xff: HeaderValue,
    /// `for=192.0.2.7` or `for="[2001:db8::1]"`: the start of a `forwarded` element.
    forwarded_for: Box<str>,
}

impl Client {
    pub fn new(ip: IpAddr) -> Self {
        let text = ip.to_string();
        let forwarded_for = match ip {
            IpAddr::V4(_) => format!("for={text}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\""),
        };
        Client {
            // An IP address is always a valid header value.
            xff: HeaderValue::from_maybe_shared(Bytes::from(text))
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for: forwarded_for.into_boxed_str(),
        }
    }
}

/// Sets the forwarding headers for the upstream: `x-forwarded-for` (appended),
/// `x-forwarded-proto`, `x-forwarded-host`, and a `forwarded` element appended to any
/// the client sent (RFC 7239).
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client: &Client,
    https: bool,
    host: Option<&HeaderValue>,
) {
    let proto = if https { "https" } else { "http" };
    match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prev) if !prev.trim_ascii().is_empty() => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.xff.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.xff.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
                headers.insert(&X_FORWARDED_FOR, v);
            }
        }
        _ => {
            headers.insert(&X_FORWARDED_FOR, client.xff.clone());
        }
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => headers.insert(&X_FORWARDED_HOST, h.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };

    let prev = headers
        .get(&FORWARDED)
        .map(HeaderValue::as_bytes)
        .filter(|p| !p.trim_ascii().is_empty());
    let host = host.map(HeaderValue::as_bytes);
    let mut v = Vec::with_capacity(
        prev.map_or(0, |p| p.len() + 2)
            + client.forwarded_for.len()
            + host.map_or(0, |h| h.len() + 8)
            + 12,
    );
    if let Some(p) = prev {
        v.extend_from_slice(p);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(client.forwarded_for.as_bytes());
    if let Some(h) = host {
        v.extend_from_slice(b";host=\"");
        v.extend_from_slice(h);
        v.push(b'"');
    }
    v.extend_from_slice(b";proto=");
    v.extend_from_slice(proto.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
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
        let host = HeaderValue::from_static("example.com");
        let client = Client::new("192.0.2.7".parse().expect("ip"));
        set_forwarding(&mut h, &client, false, Some(&host));
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
