//! Per-request header work: hop-by-hop stripping, forwarding headers, head-size check,
//! and a route's header rules, on a typical browser-like request.
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::http::headers::{head_size, set_forwarding, strip_hop_by_hop, Client};
use http::{HeaderMap, HeaderValue, Method, Uri};
use std::hint::black_box;

fn typical() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("connection", "keep-alive"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let base = typical();
    let uri: Uri = "/products/42?ref=home".parse().expect("static uri");
    let client = Client::new("198.51.100.23".parse().expect("static ip"));
    let host = HeaderValue::from_static("shop.example.com");
    c.bench_function("request_headers", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                let n = head_size(&Method::GET, &uri, &h);
                strip_hop_by_hop(&mut h, false);
                set_forwarding(&mut h, &client, false, Some(&host));
                black_box((n, h))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("response_headers", |b| {
        let mut resp = HeaderMap::new();
        resp.insert("content-type", HeaderValue::from_static("text/html"));
        resp.insert("content-length", HeaderValue::from_static("1234"));
        resp.insert("connection", HeaderValue::from_static("keep-alive"));
        resp.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        b.iter_batched(
            || resp.clone(),
            |mut h| {
                strip_hop_by_hop(&mut h, false);
                black_box(h)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // A route's header rules (compiled at load): three request rules, as in docs/traffic.md.
    let ops = gateway::config::model::HeaderOps {
        set: vec![(
            http::HeaderName::from_static("x-env"),
            HeaderValue::from_static("prod"),
        )],
        add: vec![(
            http::HeaderName::from_static("x-tag"),
            HeaderValue::from_static("gateway"),
        )],
        remove: vec![http::HeaderName::from_static("cookie")],
    };
    let rules = gateway::http::rules::HeaderRules::compile(&ops);
    c.bench_function("route_header_rules", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                rules.apply(&mut h);
                black_box(h)
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
