//! Routing, step 2 of the request path: (host, normalised path) → route, from a table
//! compiled once per snapshot. Matching allocates nothing.
//!
//! Precedence (spec "routes"): exact host, then the wildcard covering exactly one more
//! label, then any host; within a host group the longest segment-boundary prefix wins;
//! a host group with no matching prefix falls back to the next less specific group.

use crate::config::model::HostMatch;
use crate::path::strip_port;
use std::collections::HashMap;

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

#[derive(Debug)]
struct Group<T> {
    /// (prefix, value), longest prefix first; the first of equal prefixes is kept.
    sorted: Vec<(Box<str>, T)>,
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
    fn insert(&mut self, prefix: &str, value: T) -> bool {
        if self.sorted.iter().any(|(p, _)| &**p == prefix) {
            return false;
        }
        self.sorted.push((prefix.into(), value));
        true
    }

    fn seal(&mut self) {
        // Stable sort keeps file order among equal lengths (they are distinct prefixes).
        self.sorted.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        if self.sorted.len() > SCAN_LIMIT {
            self.index = self
                .sorted
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (p.clone(), i))
                .collect();
        }
    }

    fn find(&self, path: &str) -> Option<&T> {
        if self.sorted.len() <= SCAN_LIMIT {
            return self
                .sorted
                .iter()
                .find(|(p, _)| prefix_matches(p, path))
                .map(|(_, v)| v);
        }
        // Candidate prefixes of `path`, longest first: the path itself, then for each '/'
        // from the right, the part up to and including it, and the part before it.
        if let Some(&i) = self.index.get(path) {
            return Some(&self.sorted[i].1);
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while let Some(pos) = bytes[..end].iter().rposition(|&b| b == b'/') {
            if pos + 1 < bytes.len() {
                if let Some(&i) = self.index.get(&path[..=pos]) {
                    return Some(&self.sorted[i].1);
                }
            }
            if pos > 0 {
                if let Some(&i) = self.index.get(&path[..pos]) {
                    return Some(&self.sorted[i].1);
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
    /// Builds a table from (host, prefix, value) in file order. Returns the table and the
    /// indexes of entries shadowed by an earlier one with the same host and prefix.
    pub fn build(entries: impl IntoIterator<Item = (HostMatch, String, T)>) -> (Self, Vec<usize>) {
        let mut router = Router {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: Group::default(),
        };
        let mut shadowed = Vec::new();
        for (i, (host, prefix, value)) in entries.into_iter().enumerate() {
            let group = match host {
                HostMatch::Any => &mut router.any,
                HostMatch::Exact(h) => router.exact.entry(h.into()).or_default(),
                HostMatch::Wildcard(h) => router.wildcard.entry(h.into()).or_default(),
            };
            if !group.insert(&prefix, value) {
                shadowed.push(i);
            }
        }
        router.any.seal();
        router.exact.values_mut().for_each(Group::seal);
        router.wildcard.values_mut().for_each(Group::seal);
        (router, shadowed)
    }

    /// Finds the route for a request. `host` is as received (any case, maybe with a port);
    /// `path` must already be normalised (see [`crate::path::normalize_path`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let mut buf = [0u8; 256];
        if let Some(host) = host.and_then(|h| lower_host(h, &mut buf)) {
            if let Some(v) = self.exact.get(host).and_then(|g| g.find(path)) {
                return Some(v);
            }
            // A wildcard covers exactly one label, and an empty one is none (as in
            // `tls::ServerNames::covers`): `.example.com` is not under `*.example.com`.
            let covered = host.split_once('.').filter(|(label, _)| !label.is_empty());
            if let Some((_, parent)) = covered {
                if let Some(v) = self.wildcard.get(parent).and_then(|g| g.find(path)) {
                    return Some(v);
                }
            }
        }
        self.any.find(path)
    }

    /// Number of routes in the table.
    pub fn len(&self) -> usize {
        self.any.sorted.len()
            + self.exact.values().map(|g| g.sorted.len()).sum::<usize>()
            + self
                .wildcard
                .values()
                .map(|g| g.sorted.len())
                .sum::<usize>()
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
}
