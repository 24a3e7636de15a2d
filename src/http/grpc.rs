//! Request step, gRPC only: recognising a gRPC request, and its `grpc-timeout` header as a
//! deadline that shortens the route's `request` timeout. (The status mapping for gRPC
//! lives in the one error table, `error.rs`; trailers-only answers in `proxy`.)

use http::header::{self, HeaderMap, HeaderValue};
use std::time::Duration;
use tokio::time::Instant;

pub(crate) static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
pub(crate) static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// Whether a request is gRPC: `content-type: application/grpc` or `application/grpc+…`.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit, `H` hours, `M`
/// minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds. Anything
/// else is None (the header is then ignored, as gRPC servers do).
pub(crate) fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    let (&unit, digits) = b.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of an exchange that starts `now`: the route's `request` timeout,
/// shortened by a gRPC request's `grpc-timeout`.
pub(crate) fn deadline(
    now: Instant,
    route_request: Option<Duration>,
    headers: &HeaderMap,
    grpc: bool,
) -> Option<Instant> {
    let client = grpc
        .then(|| headers.get(&GRPC_TIMEOUT).and_then(parse_timeout))
        .flatten();
    let shortest = match (route_request, client) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    shortest.map(|d| now + d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &'static str) -> Option<Duration> {
        parse_timeout(&HeaderValue::from_static(s))
    }

    #[test]
    fn every_unit_of_grpc_timeout_parses() {
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("10S"), Some(Duration::from_secs(10)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "100", "123456789S", "1.5S", "10s", "-1S", " 1S"] {
            let v = HeaderValue::from_str(bad).expect("header value");
            assert_eq!(parse_timeout(&v), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeout_shortens_the_route_deadline_but_never_lengthens_it() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        let ms = |d: Option<Instant>| d.map(|d| (d - now).as_millis());
        assert_eq!(
            ms(deadline(now, Some(Duration::from_secs(5)), &h, true)),
            Some(100)
        );
        assert_eq!(ms(deadline(now, None, &h, true)), Some(100));
        assert_eq!(
            ms(deadline(now, Some(Duration::from_millis(50)), &h, true)),
            Some(50)
        );
        // Only gRPC requests carry a gRPC deadline.
        assert_eq!(ms(deadline(now, None, &h, false)), None);
    }
}
