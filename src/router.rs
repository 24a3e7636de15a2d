//! Routing, step 2 of the request path: (host, normalised path) → route, from a table
//! compiled once per snapshot. Matching allocates nothing.
//!
//! Precedence (spec "routes"): exact host, then the wildcard covering exactly one more
//! label, then any host; within a host group the longest segment-boundary prefix wins;
//! a host group with no matching prefix falls back to the next less specific group.

use crate::config::model::HostMatch;
use std::borrow::Cow;
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
    /// `path` must already be normalised (see [`normalize_path`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let mut buf = [0u8; 256];
        if let Some(host) = host.and_then(|h| lower_host(h, &mut buf)) {
            if let Some(v) = self.exact.get(host).and_then(|g| g.find(path)) {
                return Some(v);
            }
            if let Some((_, parent)) = host.split_once('.') {
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

/// Strips the port and a trailing dot and lower-cases into `buf`, without allocating.
/// Returns None for hosts that cannot match any configured name.
fn lower_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Normalises a request path (no query): percent-encoded unreserved characters are
/// decoded, dot-segments removed (RFC 3986 §5.2.4, never above `/`). `%2F` and `%5C`
/// and other reserved encodings stay as they are. Returns None for a path that must be
/// refused: not starting with `/`, a bad percent escape, or a control byte (raw or
/// encoded), so that no path reaching an upstream carries one.
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0..=0x20 | 0x7f => return None,
            b'%' => needs_work = true,
            b'.' if bytes[i - 1] == b'/' => needs_work = true,
            _ => {}
        }
    }
    if !needs_work {
        return Some(Cow::Borrowed(path));
    }
    let decoded = if path.contains('%') {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    let out = remove_dot_segments(&decoded);
    if out == path {
        Some(Cow::Borrowed(path))
    } else {
        Some(Cow::Owned(out))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let c = hi << 4 | lo;
            if c < 0x20 || c == 0x7f {
                return None;
            }
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c));
            } else {
                // Keep reserved and non-ASCII escapes, with upper-case hex (RFC 3986 §6.2.2.1).
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            // Safe: `path` is a str and we copy whole runs of non-'%' bytes below.
            let run = bytes[i..]
                .iter()
                .position(|&b| b == b'%')
                .map_or(bytes.len(), |p| i + p);
            out.push_str(&path[i..run]);
            i = run;
        }
    }
    Some(out)
}

/// RFC 3986 §5.2.4 on an absolute path, building the output in one string.
fn remove_dot_segments(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                let keep = out.rfind('/').unwrap_or(0);
                out.truncate(keep);
            }
            s => {
                out.push('/');
                out.push_str(s);
                continue;
            }
        }
        // A trailing "." or ".." leaves the path ending in '/'.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_root() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/../b").as_deref(), Some("/b"));
        assert_eq!(n("/../../etc/passwd").as_deref(), Some("/etc/passwd"));
        assert_eq!(n("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(n("/a/./b/.").as_deref(), Some("/a/b/"));
        assert_eq!(n("/%2e%2e/x").as_deref(), Some("/x"));
        assert_eq!(n("/%7Euser").as_deref(), Some("/~user"));
        assert_eq!(n("/a%2Fb").as_deref(), Some("/a%2Fb"));
        assert_eq!(n("/a%5cb").as_deref(), Some("/a%5Cb"));
        assert_eq!(n("/a//b").as_deref(), Some("/a//b"));
        assert_eq!(n("/.hidden").as_deref(), Some("/.hidden"));
        assert_eq!(n("/"), Some("/".into()));
        assert_eq!(n("/a%00b"), None);
        assert_eq!(n("/a%zz"), None);
        assert_eq!(n("/a%2"), None);
        assert_eq!(n("relative"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }

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
        assert_eq!(table(40).find(None, "/bulk7x").copied(), Some(2));
    }
}
