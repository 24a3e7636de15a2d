//! Property test: the compiled router agrees with a direct reading of the spec's
//! precedence rules on random tables and requests.
#![allow(clippy::unwrap_used)]

use gateway::config::model::HostMatch;
use gateway::router::{prefix_matches, Router};
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
