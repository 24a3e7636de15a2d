//! Property test: the compiled router agrees with a direct reading of the spec's
//! precedence rules on random tables and requests, with and without route conditions
//! (methods, headers).
#![allow(clippy::unwrap_used)]

use gateway::config::model::HostMatch;
use gateway::router::{prefix_matches, Conditions, HeaderCondition, Router};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

/// The spec, read literally: the most specific host group (exact, then the wildcard
/// covering one more label, then any host) with a matching prefix; within it the longest
/// prefix; the first in file order among equals.
fn reference(table: &[(HostMatch, String)], host: Option<&str>, path: &str) -> Option<usize> {
    let host = host.map(|h| h.to_ascii_lowercase());
    let parent = host
        .as_deref()
        .and_then(|h| h.split_once('.').map(|(_, p)| p.to_string()));
    type InGroup<'a> = Box<dyn Fn(&HostMatch) -> bool + 'a>;
    let groups: [InGroup<'_>; 3] = [
        Box::new(|m| matches!((m, host.as_deref()), (HostMatch::Exact(e), Some(h)) if e == h)),
        Box::new(|m| matches!((m, parent.as_deref()), (HostMatch::Wildcard(w), Some(p)) if w == p)),
        Box::new(|m| *m == HostMatch::Any),
    ];
    for in_group in groups {
        let best = table
            .iter()
            .enumerate()
            .filter(|(_, (m, p))| in_group(m) && prefix_matches(p, path))
            // Longest prefix; `max_by_key` keeps the last of equals, so reverse file order.
            .rev()
            .max_by_key(|(_, (_, p))| p.len())
            .map(|(i, _)| i);
        if best.is_some() {
            return best;
        }
    }
    None
}

fn host_match() -> impl Strategy<Value = HostMatch> {
    let exact = prop::sample::select(vec![
        "a.example.com",
        "b.example.com",
        "example.com",
        "x.a.example.com",
    ]);
    let wild = prop::sample::select(vec!["example.com", "a.example.com"]);
    prop_oneof![
        3 => Just(HostMatch::Any),
        1 => exact.prop_map(|h| HostMatch::Exact(h.to_string())),
        1 => wild.prop_map(|h| HostMatch::Wildcard(h.to_string())),
    ]
}

fn prefix() -> impl Strategy<Value = String> {
    let named = prop::sample::select(vec![
        "/",
        "/v1",
        "/v1/",
        "/v10",
        "/v1/users",
        "/v1/users/",
        "/api",
        "/api/v1",
        "/a/b/c",
    ]);
    prop_oneof![
        2 => named.prop_map(str::to_string),
        // Many distinct prefixes, so host groups grow past the router's linear-scan size.
        3 => (0u8..40).prop_map(|n| format!("/p{n}")),
        1 => (0u8..5).prop_map(|n| format!("/p{n}/q/")),
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/",
        "/v1",
        "/v1/",
        "/v10",
        "/v10/x",
        "/v1/users",
        "/v1/users/7",
        "/v1/usersx",
        "/api",
        "/api/v1/x",
        "/apix",
        "/a/b/c/d",
        "/a/b",
        "/other",
        "/p3",
        "/p3/q/",
        "/p3/q/r",
        "/p33/x",
        "/p4/q",
        "/p1x",
    ])
    .prop_map(str::to_string)
}

fn request_host() -> impl Strategy<Value = Option<String>> {
    let hosts = prop::sample::select(vec![
        "a.example.com",
        "A.Example.Com:8080",
        "b.example.com",
        "example.com",
        "x.a.example.com",
        "y.x.a.example.com",
        "other.org",
    ]);
    prop::option::of(hosts.prop_map(str::to_string))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn compiled_router_matches_the_reference_reading_of_the_spec(
        table in prop::collection::vec((host_match(), prefix()), 0..120),
        requests in prop::collection::vec((request_host(), request_path()), 1..20),
    ) {
        let router = Router::build(table.iter().enumerate().map(|(i, (h, p))| (h.clone(), p.clone(), i))).0;
        for (host, path) in &requests {
            let stripped = host.as_deref().map(gateway::path::strip_port);
            let want = reference(&table, stripped, path);
            let got = router.find(host.as_deref(), path).copied();
            prop_assert_eq!(got, want, "host {:?} path {}", host, path);
        }
    }
}

/// Route conditions as plain data, read by the reference directly.
#[derive(Debug, Clone)]
struct Cond {
    methods: Option<Vec<&'static str>>,
    /// (name, exact value or None for "present")
    headers: Vec<(&'static str, Option<&'static str>)>,
}

impl Cond {
    fn count(&self) -> usize {
        usize::from(self.methods.is_some()) + self.headers.len()
    }

    fn holds(&self, method: &str, headers: &[(&str, &str)]) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(&method))
            && self.headers.iter().all(|(name, want)| {
                headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && want.is_none_or(|w| w == *v))
            })
    }

    fn compiled(&self) -> Conditions {
        Conditions::new(
            self.methods.as_ref().map(|ms| {
                ms.iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                    .collect()
            }),
            self.headers
                .iter()
                .map(|(n, v)| HeaderCondition {
                    name: HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    value: v.map(HeaderValue::from_static),
                })
                .collect(),
        )
    }
}

/// The spec with conditions, read literally: in the most specific host group that has a
/// route whose prefix matches and whose conditions all hold, the longest such prefix; on
/// equal prefixes the one with more conditions; then the first in file order.
fn reference_with_conditions(
    table: &[(HostMatch, String, Cond)],
    host: Option<&str>,
    path: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> Option<usize> {
    let host = host.map(|h| h.to_ascii_lowercase());
    let parent = host
        .as_deref()
        .and_then(|h| h.split_once('.').map(|(_, p)| p.to_string()));
    type InGroup<'a> = Box<dyn Fn(&HostMatch) -> bool + 'a>;
    let groups: [InGroup<'_>; 3] = [
        Box::new(|m| matches!((m, host.as_deref()), (HostMatch::Exact(e), Some(h)) if e == h)),
        Box::new(|m| matches!((m, parent.as_deref()), (HostMatch::Wildcard(w), Some(p)) if w == p)),
        Box::new(|m| *m == HostMatch::Any),
    ];
    for in_group in groups {
        let best = table
            .iter()
            .enumerate()
            .filter(|(_, (m, p, c))| {
                in_group(m) && prefix_matches(p, path) && c.holds(method, headers)
            })
            .max_by_key(|(i, (_, p, c))| (p.len(), c.count(), std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        if best.is_some() {
            return best;
        }
    }
    None
}

fn cond() -> impl Strategy<Value = Cond> {
    let methods = prop::sample::select(vec![
        None,
        Some(vec!["GET"]),
        Some(vec!["POST"]),
        Some(vec!["GET", "POST"]),
        Some(vec!["PUT", "DELETE"]),
    ]);
    let header = prop::sample::select(vec![
        ("x-canary", Some("1")),
        ("x-canary", None),
        ("x-env", Some("prod")),
        ("X-Env", None),
        ("x-tenant", Some("a")),
    ]);
    (methods, prop::collection::vec(header, 0..3)).prop_map(|(methods, mut headers)| {
        // One condition per header name, as validation requires.
        let mut seen = Vec::new();
        headers.retain(|(n, _)| {
            let lower = n.to_ascii_lowercase();
            let fresh = !seen.contains(&lower);
            seen.push(lower);
            fresh
        });
        Cond { methods, headers }
    })
}

fn request_facts() -> impl Strategy<Value = (&'static str, Vec<(&'static str, &'static str)>)> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "DELETE"]);
    let header = prop::sample::select(vec![
        ("x-canary", "1"),
        ("x-canary", "2"),
        ("X-Env", "prod"),
        ("x-env", "staging"),
        ("x-tenant", "a"),
        ("x-other", "1"),
    ]);
    (method, prop::collection::vec(header, 0..4))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn with_conditions_the_compiled_router_matches_the_reference(
        table in prop::collection::vec((host_match(), prefix(), cond()), 0..80),
        requests in prop::collection::vec((request_host(), request_path(), request_facts()), 1..20),
    ) {
        let router = Router::build_with_conditions(
            table.iter().enumerate().map(|(i, (h, p, c))| (h.clone(), p.clone(), c.compiled(), i)),
        ).0;
        for (host, path, (method, headers)) in &requests {
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                map.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static(v));
            }
            let stripped = host.as_deref().map(gateway::path::strip_port);
            let want = reference_with_conditions(&table, stripped, path, method, headers);
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let got = router.find_request(host.as_deref(), path, &m, &map).copied();
            prop_assert_eq!(got, want, "host {:?} path {} {} {:?}", host, path, method, headers);
        }
    }
}
