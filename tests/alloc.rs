//! Route matching plus endpoint selection must not allocate: counted with a global
//! allocator wrapper around the system allocator.
#![allow(clippy::unwrap_used)]

use gateway::balance::Wrr;
use gateway::config::model::HostMatch;
use gateway::path::normalize_path;
use gateway::router::Router;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// bumps a thread-local counter, which neither allocates nor unwinds.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (out, ALLOCS.with(Cell::get) - before)
}

#[test]
fn route_matching_and_endpoint_selection_allocate_nothing() {
    let mut entries = Vec::new();
    for i in 0..2_000 {
        entries.push((
            HostMatch::Exact(format!("svc{}.example.com", i % 40)),
            format!("/api/v{}/r{i}", i % 5),
            i,
        ));
        entries.push((
            HostMatch::Wildcard(format!("t{}.example.com", i % 10)),
            format!("/w{i}"),
            i,
        ));
    }
    entries.push((HostMatch::Any, "/".into(), usize::MAX));
    let router = Router::build(entries).0;
    let wrr = Wrr::new(&[5, 1, 1, 3]);
    let requests = [
        (Some("SVC3.example.com:443"), "/api/v3/r3/items"),
        (Some("x.t7.example.com"), "/w17/a/b"),
        (Some("nowhere.org"), "/static/app.js"),
        (None, "/"),
    ];
    for (host, path) in requests {
        let ((route, endpoint), n) = allocations(|| {
            let path = normalize_path(path).unwrap();
            let route = router.find(host, &path).copied();
            (route, wrr.pick())
        });
        assert!(route.is_some() && endpoint.is_some());
        assert_eq!(n, 0, "allocations matching {host:?} {path}");
    }
    // Normalising a path that needs it is allowed to allocate (once), matching still not.
    let (_, n) =
        allocations(|| normalize_path("/a/../api/v1/r1").map(|p| router.find(None, &p).copied()));
    assert!(n <= 1, "normalising dot-segments allocates one string: {n}");
}

#[test]
fn matching_routes_with_method_and_header_conditions_allocates_nothing() {
    use gateway::router::{Conditions, HeaderCondition};
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    let canary = HeaderName::from_static("x-canary");
    let mut entries = Vec::new();
    for i in 0..200 {
        entries.push((
            HostMatch::Any,
            format!("/api/r{i}"),
            Conditions::new(
                Some(vec![Method::POST]),
                vec![HeaderCondition {
                    name: canary.clone(),
                    value: Some(HeaderValue::from_static("1")),
                }],
            ),
            i,
        ));
        entries.push((
            HostMatch::Any,
            format!("/api/r{i}"),
            Conditions::default(),
            1000 + i,
        ));
    }
    let router = Router::build_with_conditions(entries).0;
    let mut headers = HeaderMap::new();
    headers.insert(&canary, HeaderValue::from_static("1"));
    headers.insert("user-agent", HeaderValue::from_static("test"));
    let (found, n) = allocations(|| {
        (
            router
                .find_request(None, "/api/r7/x", &Method::POST, &headers)
                .copied(),
            router
                .find_request(None, "/api/r7/x", &Method::GET, &headers)
                .copied(),
        )
    });
    assert_eq!(found, (Some(7), Some(1007)));
    assert_eq!(n, 0, "allocations matching with conditions");
}
