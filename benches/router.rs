//! Route matching cost with 10, 1,000 and 10,000 routes (hit, deep hit, and miss).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::config::model::HostMatch;
use gateway::router::Router;
use std::hint::black_box;

fn table(n: usize) -> Router<usize> {
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let host = match i % 3 {
            0 => HostMatch::Any,
            1 => HostMatch::Exact(format!("svc{}.example.com", i % 50)),
            _ => HostMatch::Wildcard(format!("tenant{}.example.com", i % 20)),
        };
        entries.push((host, format!("/api/v{}/resource{i}", i % 7), i));
    }
    entries.push((HostMatch::Any, "/".to_string(), usize::MAX));
    Router::build(entries).0
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1_000, 10_000] {
        let r = table(n);
        g.bench_with_input(BenchmarkId::new("exact_host_hit", n), &r, |b, r| {
            b.iter(|| {
                r.find(
                    black_box(Some("SVC1.example.com:8443")),
                    black_box("/api/v1/resource1/items/42"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("wildcard_host_hit", n), &r, |b, r| {
            b.iter(|| {
                r.find(
                    black_box(Some("a.tenant2.example.com")),
                    black_box("/api/v2/resource2"),
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("fallback_to_default", n), &r, |b, r| {
            b.iter(|| {
                r.find(
                    black_box(Some("unknown.org")),
                    black_box("/static/css/site.css"),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
