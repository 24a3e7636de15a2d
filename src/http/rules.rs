//! Route rules, step 3 of the request path (between routing and the upstream request):
//! what a route does to a request and its response — path and host rewrites, header
//! rules, redirects and direct responses — compiled from the model when the snapshot is
//! built, so a request only copies prepared bytes.

use crate::config::model;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Replaces the part of a path that a route's `pathPrefix` matched, on segment
/// boundaries, never producing `//` at the seam: with prefix `/api`, replacement `/`
/// turns `/api/users` into `/users` and `/api` into `/`; replacement `/v2` turns
/// `/api/users` into `/v2/users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRewrite {
    /// How many bytes of a matched path are replaced: the prefix without a trailing `/`
    /// (that slash stays, as the seam).
    cut: usize,
    /// Starts with `/`; normalised (checked by validation).
    replacement: Box<str>,
}

impl PrefixRewrite {
    /// `prefix` is the route's `match.pathPrefix`, `replacement` what replaces it.
    pub fn new(prefix: &str, replacement: &str) -> PrefixRewrite {
        PrefixRewrite {
            cut: prefix.strip_suffix('/').unwrap_or(prefix).len(),
            replacement: replacement.into(),
        }
    }

    /// The rewritten path, appended to `out`. `path` must be one the route's prefix
    /// matched (the router guarantees it).
    pub fn apply(&self, path: &str, out: &mut String) {
        // What follows the prefix: empty, or starting at a `/`.
        let rest = path.get(self.cut..).unwrap_or("");
        match rest.strip_prefix('/') {
            Some(tail) if self.replacement.ends_with('/') => {
                out.push_str(&self.replacement);
                out.push_str(tail);
            }
            _ => {
                out.push_str(&self.replacement);
                out.push_str(rest);
            }
        }
    }

    /// The rewritten path as a new string.
    pub fn rewrite(&self, path: &str) -> String {
        let mut out = String::with_capacity(self.replacement.len() + path.len());
        self.apply(path, &mut out);
        out
    }
}

/// A route's `rewrite`: the path prefix and the host the upstream gets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rewrite {
    pub path: Option<PrefixRewrite>,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2) sent upstream; None = the client's.
    pub host: Option<HeaderValue>,
}

impl Rewrite {
    pub(crate) fn compile(route: &model::Route) -> Rewrite {
        Rewrite {
            path: route
                .rewrite
                .path_prefix
                .as_deref()
                .map(|r| PrefixRewrite::new(&route.path_prefix, r)),
            // Validated as a host[:port], which is always a valid header value.
            host: route
                .rewrite
                .host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
        }
    }

    /// The path and query the upstream gets for a request whose normalised path is
    /// `path` and whose query is `query`; None = the normalised path unchanged.
    pub(crate) fn target(&self, path: &str, query: Option<&str>) -> Option<PathAndQuery> {
        let rewrite = self.path.as_ref()?;
        let mut s = String::with_capacity(
            rewrite.replacement.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        rewrite.apply(path, &mut s);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(s)).ok()
    }
}

/// A route's `redirect`, ready to build a `Location` from a request.
#[derive(Debug, Clone)]
pub(crate) struct Redirect {
    scheme: Option<&'static str>,
    host: Option<Box<str>>,
    port: Option<u16>,
    path: Option<Box<str>>,
    prefix: Option<PrefixRewrite>,
    pub status: StatusCode,
}

impl Redirect {
    /// `route_prefix` is the route's `match.pathPrefix` (what `pathPrefix` replaces).
    pub(crate) fn compile(route_prefix: &str, r: &model::Redirect) -> Redirect {
        Redirect {
            scheme: r.scheme.as_deref().map(|s| match s {
                "https" => "https",
                _ => "http",
            }),
            host: r.host.as_deref().map(Into::into),
            port: r.port,
            path: r.path.as_deref().map(Into::into),
            prefix: r
                .path_prefix
                .as_deref()
                .map(|p| PrefixRewrite::new(route_prefix, p)),
            // Validation allows only redirect codes.
            status: StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
        }
    }

    /// The absolute `Location` for a request that arrived over `https` (or not) for
    /// `host` (as received, maybe with a port), with normalised `path` and `query`. None
    /// when the redirect keeps the request's host and the request has no usable one.
    pub(crate) fn location(
        &self,
        https: bool,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Option<HeaderValue> {
        let request_scheme = if https { "https" } else { "http" };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let (request_host, request_port) = match host {
            Some(h) => split_authority(h)?,
            None => ("", None),
        };
        let host = match &self.host {
            Some(h) => &**h,
            None if request_host.is_empty() => return None,
            None => request_host,
        };
        // The request's port only makes sense where it came from: same scheme and host.
        let keep = self.scheme.is_none_or(|s| s == request_scheme) && self.host.is_none();
        let port = match (self.port, keep) {
            (Some(p), _) => Some(p),
            (None, true) => request_port,
            (None, false) => None,
        }
        .filter(|&p| p != if scheme == "https" { 443 } else { 80 });
        let mut s = String::with_capacity(16 + host.len() + path.len() + query.map_or(0, str::len));
        s.push_str(scheme);
        s.push_str("://");
        s.push_str(host);
        if let Some(p) = port {
            s.push(':');
            s.push_str(itoa(p, &mut [0u8; 5]));
        }
        match (&self.path, &self.prefix) {
            (Some(p), _) => s.push_str(p),
            (None, Some(rewrite)) => rewrite.apply(path, &mut s),
            (None, None) => s.push_str(path),
        }
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
    }
}

/// `u16` in decimal, into `buf`.
fn itoa(n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// A request's host split into host and port, if both are well formed: a name or IPv4
/// address of `[A-Za-z0-9.-_]`, or an IPv6 address in brackets; a decimal port. What a
/// `Location` is built from must not carry anything else.
fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if a.starts_with('[') {
        let end = a.find(']')?;
        let (h, rest) = a.split_at(end + 1);
        let ok = h[1..end]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        (ok.then_some(h)?, rest.strip_prefix(':'))
    } else {
        let (h, p) = match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        };
        let ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        (ok.then_some(h)?, p)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// A route's `directResponse`: the status, body and content type, prepared.
#[derive(Debug, Clone)]
pub(crate) struct Direct {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
}

impl Direct {
    pub(crate) fn compile(d: &model::DirectResponse) -> Direct {
        let content_type = match (&d.content_type, d.body.is_empty()) {
            (Some(c), _) => Some(c.clone()),
            (None, false) => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
            (None, true) => None,
        };
        Direct {
            status: StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK),
            body: Bytes::from(d.body.clone()),
            content_type,
        }
    }
}

/// One direction's header rules, in the order they apply: `remove`, `set`, `add`.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderRules {
    pub fn compile(ops: &model::HeaderOps) -> HeaderRules {
        HeaderRules {
            remove: ops.remove.clone().into_boxed_slice(),
            set: ops.set.clone().into_boxed_slice(),
            add: ops.add.clone().into_boxed_slice(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the rules. Names and values are shared with the compiled rules (a clone is
    /// a reference count), so this copies no header bytes. A route without rules pays
    /// one length check.
    #[inline(always)]
    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.is_empty() {
            self.apply_rules(headers);
        }
    }

    fn apply_rules(&self, headers: &mut HeaderMap) {
        for name in self.remove.iter() {
            headers.remove(name);
        }
        for (name, value) in self.set.iter() {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in self.add.iter() {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_replaced_on_segment_boundaries_without_a_double_slash() {
        let cases = [
            ("/api", "/", "/api", "/"),
            ("/api", "/", "/api/", "/"),
            ("/api", "/", "/api/users", "/users"),
            ("/api", "/v2", "/api", "/v2"),
            ("/api", "/v2", "/api/", "/v2/"),
            ("/api", "/v2", "/api/users/7", "/v2/users/7"),
            ("/api", "/v2/", "/api/users", "/v2/users"),
            ("/api/", "/v2", "/api/users", "/v2/users"),
            ("/api/", "/v2/", "/api/users", "/v2/users"),
            ("/api/", "/", "/api/", "/"),
            ("/", "/base", "/x/y", "/base/x/y"),
            ("/", "/base/", "/x", "/base/x"),
            ("/", "/base", "/", "/base/"),
            ("/", "/", "/x", "/x"),
            // The client's own repeated slashes after the prefix are kept as they are.
            ("/api", "/v2", "/api//x", "/v2//x"),
        ];
        for (prefix, replacement, path, want) in cases {
            assert_eq!(
                PrefixRewrite::new(prefix, replacement).rewrite(path),
                want,
                "{prefix} → {replacement} on {path}"
            );
        }
    }

    fn redirect(r: model::Redirect) -> Redirect {
        Redirect::compile("/old", &r)
    }

    fn to(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> model::Redirect {
        model::Redirect {
            scheme: scheme.map(Into::into),
            host: host.map(Into::into),
            port,
            path: None,
            path_prefix: None,
            code: 308,
        }
    }

    #[test]
    fn locations_are_absolute_and_keep_the_port_only_where_it_belongs() {
        let loc = |r: &Redirect, https, host, path, query| {
            r.location(https, host, path, query)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let https = redirect(to(Some("https"), None, None));
        assert_eq!(
            loc(&https, false, Some("example.com:8080"), "/a", Some("q=1")).as_deref(),
            Some("https://example.com/a?q=1"),
            "a new scheme drops the old listener's port"
        );
        let with_port = redirect(to(Some("https"), None, Some(8443)));
        assert_eq!(
            loc(&with_port, false, Some("example.com"), "/", None).as_deref(),
            Some("https://example.com:8443/")
        );
        let default_port = redirect(to(Some("https"), None, Some(443)));
        assert_eq!(
            loc(&default_port, false, Some("example.com"), "/", None).as_deref(),
            Some("https://example.com/")
        );
        let mut moved = to(None, None, None);
        moved.path_prefix = Some("/new/".into());
        let moved = redirect(moved);
        assert_eq!(
            loc(
                &moved,
                true,
                Some("[2001:db8::1]:8443"),
                "/old/x",
                Some("a")
            )
            .as_deref(),
            Some("https://[2001:db8::1]:8443/new/x?a"),
            "same scheme and host: the request's port stays"
        );
        let host = redirect(to(None, Some("www.example.com"), None));
        assert_eq!(
            loc(&host, false, Some("example.com:8080"), "/p", None).as_deref(),
            Some("http://www.example.com/p")
        );
        assert_eq!(
            loc(&host, false, None, "/p", None).as_deref(),
            Some("http://www.example.com/p")
        );
        // A host that could smuggle something into the Location is refused.
        for bad in [
            "evil.com/x",
            "a@b",
            "a b",
            "h:",
            "h:99999",
            "[::1",
            "h:80:80",
        ] {
            assert_eq!(loc(&https, false, Some(bad), "/", None), None, "{bad}");
        }
        assert_eq!(loc(&https, false, None, "/", None), None, "no host to keep");
        assert_eq!(https.status, StatusCode::PERMANENT_REDIRECT);
    }

    #[test]
    fn header_rules_remove_then_set_then_add() {
        let v = HeaderValue::from_static;
        let ops = model::HeaderOps {
            set: vec![(HeaderName::from_static("x-env"), v("prod"))],
            add: vec![
                (HeaderName::from_static("x-tag"), v("b")),
                (HeaderName::from_static("x-env"), v("extra")),
            ],
            remove: vec![
                HeaderName::from_static("x-debug"),
                HeaderName::from_static("x-tag"),
            ],
        };
        let rules = HeaderRules::compile(&ops);
        let mut h = HeaderMap::new();
        h.append("x-env", v("dev"));
        h.append("x-env", v("qa"));
        h.append("x-tag", v("a"));
        h.append("x-debug", v("1"));
        h.append("x-keep", v("1"));
        rules.apply(&mut h);
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-env"), ["prod", "extra"]);
        assert_eq!(all("x-tag"), ["b"], "removed first, then added");
        assert!(all("x-debug").is_empty());
        assert_eq!(all("x-keep"), ["1"]);
        assert!(HeaderRules::default().is_empty() && !rules.is_empty());
    }
}
