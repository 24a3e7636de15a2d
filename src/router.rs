//! Routing, step 2 of the request path: (host, normalised path, method, headers) → route,
//! from a table compiled once per snapshot. Matching allocates nothing.
//!
//! Precedence (spec "routes"): exact host, then the wildcard covering exactly one more
//! label, then any host; within a host group the longest segment-boundary prefix whose
//! conditions (`methods`, `headers`) all hold wins, and on equal prefixes the route with
//! more conditions, then the first in file order; a host group with no such route falls
//! back to the next less specific group.

use crate::config::model::HostMatch;
use crate::path::strip_port;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::HashMap;

/// One header condition: the header is present (`value` None) or one of its values is
/// exactly `value` (bytes compared as they are; names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub value: Option<HeaderValue>,
}

/// What a route asks of a request besides host and prefix; every condition must hold.
/// Empty = no condition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// None = any method; else one of these (exactly: HEAD is not GET).
    methods: Option<Box<[Method]>>,
    headers: Box<[HeaderCondition]>,
}

impl Conditions {
    /// Conditions in a canonical order, so that equal sets compare equal.
    pub fn new(methods: Option<Vec<Method>>, headers: Vec<HeaderCondition>) -> Conditions {
        let methods = methods.map(|mut m| {
            m.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            m.dedup();
            m.into_boxed_slice()
        });
        let mut headers = headers;
        headers.sort_by(|a, b| {
            (a.name.as_str(), a.value.as_ref().map(HeaderValue::as_bytes))
                .cmp(&(b.name.as_str(), b.value.as_ref().map(HeaderValue::as_bytes)))
        });
        Conditions {
            methods,
            headers: headers.into_boxed_slice(),
        }
    }

    /// How many conditions: a method list counts one, each header condition one. On equal
    /// prefixes, more conditions win.
    pub fn count(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len()
    }

    /// Whether a request with `method` and `headers` meets every condition.
    #[inline]
    pub fn hold(&self, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        self.headers.iter().all(|c| match &c.value {
            None => headers.contains_key(&c.name),
            Some(v) => headers.get_all(&c.name).iter().any(|got| got == v),
        })
    }
}

/// Groups with more prefixes than this are searched by hashing the request path's
/// candidate prefixes instead of scanning the list.
const SCAN_LIMIT: usize = 16;

/// A compiled route table. `T` is what a match yields (the snapshot uses `Arc<RouteState>`).
#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<Box<str>, Group<T>>,
    wildcard: HashMap<Box<str>, Group<T>>,
    any: Group<T>,
}

/// Routes with one prefix, in precedence order: more conditions first, then file order.
type Candidates<T> = Vec<(Conditions, T)>;

#[derive(Debug)]
struct Group<T> {
    /// (prefix, candidates), longest prefix first.
    sorted: Vec<(Box<str>, Candidates<T>)>,
    /// prefix → index into `sorted`, used when the group is large.
    index: HashMap<Box<str>, usize>,
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            sorted: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Group<T> {
    /// Adds a route; false if one with the same prefix and conditions came first (it can
    /// never be chosen).
    fn insert(&mut self, prefix: &str, conditions: Conditions, value: T) -> bool {
        match self.sorted.iter_mut().find(|(p, _)| &**p == prefix) {
            Some((_, candidates)) => {
                if candidates.iter().any(|(c, _)| *c == conditions) {
                    return false;
                }
                candidates.push((conditions, value));
            }
            None => self.sorted.push((prefix.into(), vec![(conditions, value)])),
        }
        true
    }

    fn seal(&mut self) {
        // Stable sorts keep file order among equals.
        self.sorted.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        for (_, candidates) in &mut self.sorted {
            candidates.sort_by_key(|(c, _)| std::cmp::Reverse(c.count()));
        }
        if self.sorted.len() > SCAN_LIMIT {
            self.index = self
                .sorted
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (p.clone(), i))
                .collect();
        }
    }

    /// The first candidate at `sorted[i]` whose conditions hold.
    #[inline]
    fn chosen(&self, i: usize, method: &Method, headers: &HeaderMap) -> Option<&T> {
        self.sorted[i]
            .1
            .iter()
            .find(|(c, _)| c.hold(method, headers))
            .map(|(_, v)| v)
    }

    fn find(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<&T> {
        if self.sorted.len() <= SCAN_LIMIT {
            return (0..self.sorted.len())
                .filter(|&i| prefix_matches(&self.sorted[i].0, path))
                .find_map(|i| self.chosen(i, method, headers));
        }
        // Candidate prefixes of `path`, longest first: the path itself, then for each '/'
        // from the right, the part up to and including it, and the part before it.
        let at = |p: &str| {
            self.index
                .get(p)
                .and_then(|&i| self.chosen(i, method, headers))
        };
        if let Some(v) = at(path) {
            return Some(v);
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(pos) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if pos + 1 < bytes.len() {
                if let Some(v) = at(&path[..=pos]) {
                    return Some(v);
                }
            }
            if pos > 0 {
                if let Some(v) = at(&path[..pos]) {
                    return Some(v);
                }
            }
            end = pos;
        }
        None
    }
}

/// Segment-boundary prefix match: `/v1` matches `/v1`, `/v1/`, `/v1/x` but not `/v10`;
/// a prefix ending in `/` matches any path starting with it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

impl<T> Router<T> {
    /// Builds a table from (host, prefix, value) in file order, routes without
    /// conditions. Returns the table and the indexes of entries shadowed by an earlier one
    /// with the same host and prefix.
    pub fn build(entries: impl IntoIterator<Item = (HostMatch, String, T)>) -> (Self, Vec<usize>) {
        Self::build_with_conditions(
            entries
                .into_iter()
                .map(|(h, p, v)| (h, p, Conditions::default(), v)),
        )
    }

    /// Builds a table from (host, prefix, conditions, value) in file order. Returns the
    /// table and the indexes of entries shadowed by an earlier one with the same host,
    /// prefix and conditions.
    pub fn build_with_conditions(
        entries: impl IntoIterator<Item = (HostMatch, String, Conditions, T)>,
    ) -> (Self, Vec<usize>) {
        let mut router = Router {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: Group::default(),
        };
        let mut shadowed = Vec::new();
        for (i, (host, prefix, conditions, value)) in entries.into_iter().enumerate() {
            let group = match host {
                HostMatch::Any => &mut router.any,
                HostMatch::Exact(h) => router.exact.entry(h.into()).or_default(),
                HostMatch::Wildcard(h) => router.wildcard.entry(h.into()).or_default(),
            };
            if !group.insert(&prefix, conditions, value) {
                shadowed.push(i);
            }
        }
        router.any.seal();
        router.exact.values_mut().for_each(Group::seal);
        router.wildcard.values_mut().for_each(Group::seal);
        (router, shadowed)
    }

    /// Finds the route for a request with no header and method GET (for tables without
    /// conditions). `host` is as received (any case, maybe with a port); `path` must
    /// already be normalised (see [`crate::path::normalize_path`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        self.find_request(host, path, &Method::GET, &HeaderMap::new())
    }

    /// Finds the route for a request: `host` as received (any case, maybe with a port),
    /// `path` already normalised, and the method and headers the conditions look at.
    pub fn find_request(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<&T> {
        let mut buf = [0u8; 256];
        if let Some(host) = host.and_then(|h| lower_host(h, &mut buf)) {
            if let Some(v) = self
                .exact
                .get(host)
                .and_then(|g| g.find(path, method, headers))
            {
                return Some(v);
            }
            // A wildcard covers exactly one label, and an empty one is none (as in
            // `tls::ServerNames::covers`): `.example.com` is not under `*.example.com`.
            let covered = host.split_once('.').filter(|(label, _)| !label.is_empty());
            if let Some((_, parent)) = covered {
                if let Some(v) = self
                    .wildcard
                    .get(parent)
                    .and_then(|g| g.find(path, method, headers))
                {
                    return Some(v);
                }
            }
        }
        self.any.find(path, method, headers)
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        let routes = |g: &Group<T>| g.sorted.iter().map(|(_, c)| c.len()).sum::<usize>();
        routes(&self.any)
            + self.exact.values().map(routes).sum::<usize>()
            + self.wildcard.values().map(routes).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The longest DNS name (RFC 1035: 253 characters without the trailing dot).
const MAX_HOST: usize = 253;

/// Strips the port and a trailing dot and lower-cases into `buf`, without allocating.
/// Returns None for hosts that cannot match any configured name: empty, or longer than
/// a DNS name can be (so such a "host" meets only routes without a host, whether a
/// wildcard's label would make up the length or not).
fn lower_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n_any: usize) -> Router<usize> {
        let mut entries = vec![
            (HostMatch::Exact("api.example.com".into()), "/v1".into(), 0),
            (HostMatch::Wildcard("example.com".into()), "/".into(), 1),
            (HostMatch::Any, "/".into(), 2),
            (HostMatch::Any, "/v1/".into(), 3),
            (
                HostMatch::Exact("api.example.com".into()),
                "/v1/admin".into(),
                4,
            ),
        ];
        for i in 0..n_any {
            entries.push((HostMatch::Any, format!("/bulk{i}"), 100 + i));
        }
        Router::build(entries).0
    }

    #[test]
    fn small_and_large_groups_agree() {
        for router in [table(0), table(40)] {
            let f = |h: Option<&str>, p: &str| router.find(h, p).copied();
            assert_eq!(f(Some("API.example.com:443"), "/v1/users"), Some(0));
            assert_eq!(f(Some("api.example.com"), "/v1/admin/x"), Some(4));
            assert_eq!(f(Some("api.example.com"), "/v10"), Some(1));
            assert_eq!(f(Some("www.example.com"), "/v1/x"), Some(1));
            assert_eq!(f(Some("a.b.example.com"), "/v1/x"), Some(3));
            assert_eq!(f(None, "/v1"), Some(2));
            assert_eq!(f(None, "/v1/"), Some(3));
        }
        assert_eq!(table(40).find(None, "/bulk7/x").copied(), Some(107));
        // Found by the router fuzz target: a host longer than a DNS name can be is no
        // host, even where a wildcard would cover it (254 bytes here).
        let long = format!("{}.example.com", "a".repeat(242));
        assert_eq!(table(0).find(Some(&long), "/x").copied(), Some(2));
        let longest = format!("{}.example.com", "a".repeat(241));
        assert_eq!(table(0).find(Some(&longest), "/x").copied(), Some(1));
        // Found by the router fuzz target: an empty first label is not a label.
        assert_eq!(table(0).find(Some(".example.com"), "/x").copied(), Some(2));
        assert_eq!(
            table(0).find(Some(".example.com:443"), "/x").copied(),
            Some(2)
        );
        assert_eq!(table(40).find(None, "/bulk7x").copied(), Some(2));
    }

    fn canary(value: Option<&'static str>) -> HeaderCondition {
        HeaderCondition {
            name: HeaderName::from_static("x-canary"),
            value: value.map(HeaderValue::from_static),
        }
    }

    #[test]
    fn more_conditions_win_on_equal_prefixes_and_a_failed_condition_falls_through() {
        let get = || Some(vec![Method::GET]);
        let (router, shadowed) = Router::build_with_conditions([
            (
                HostMatch::Any,
                "/api".into(),
                Conditions::default(),
                "plain",
            ),
            (
                HostMatch::Any,
                "/api".into(),
                Conditions::new(get(), vec![]),
                "get",
            ),
            (
                HostMatch::Any,
                "/api".into(),
                Conditions::new(get(), vec![canary(Some("1"))]),
                "get-canary",
            ),
            (
                HostMatch::Any,
                "/api/v2".into(),
                Conditions::new(None, vec![canary(None)]),
                "v2-canary",
            ),
            (
                HostMatch::Any,
                "/api".into(),
                Conditions::new(get(), vec![]),
                "dup",
            ),
            (
                HostMatch::Exact("h.test".into()),
                "/x".into(),
                Conditions::new(Some(vec![Method::PUT]), vec![]),
                "h-put",
            ),
        ]);
        assert_eq!(
            shadowed,
            vec![4],
            "same prefix and conditions as an earlier route"
        );
        let mut h = HeaderMap::new();
        let f = |m: Method, h: &HeaderMap, p: &str| {
            router.find_request(Some("h.test"), p, &m, h).copied()
        };
        assert_eq!(
            f(Method::POST, &h, "/api/v2/x"),
            Some("plain"),
            "v2 needs the header"
        );
        assert_eq!(f(Method::GET, &h, "/api/v2/x"), Some("get"));
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(f(Method::GET, &h, "/api"), Some("get-canary"));
        assert_eq!(
            f(Method::GET, &h, "/api/v2/x"),
            Some("v2-canary"),
            "longest prefix first"
        );
        h.insert("x-canary", HeaderValue::from_static("2"));
        assert_eq!(f(Method::GET, &h, "/api"), Some("get"), "exact value");
        // The exact host group has no route that holds: fall back to any host.
        assert_eq!(f(Method::GET, &h, "/x"), None);
        assert_eq!(f(Method::PUT, &h, "/x"), Some("h-put"));
        assert_eq!(
            f(Method::HEAD, &h, "/api"),
            Some("plain"),
            "HEAD is not GET"
        );
        assert_eq!(router.len(), 5, "the shadowed route is not in the table");
    }
}
