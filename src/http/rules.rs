//! Route rules, step 3 of the request path (between routing and the upstream request):
//! what a route does to a request and its response — path and host rewrites, header
//! rules, redirects and direct responses — compiled from the model when the snapshot is
//! built, so a request only copies prepared bytes.

use crate::config::model;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};

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
    /// a reference count), so this copies no header bytes.
    #[inline]
    pub fn apply(&self, headers: &mut HeaderMap) {
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
