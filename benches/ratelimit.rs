//! The rate limiter under contention: 1, 2 and 4 threads checking requests at once, for a
//! route-wide limit (one atomic), per-client limits spread over many keys (sharded LRU
//! maps), and every thread on one key (one shard's lock) — beside a single global mutex
//! over one map, the naive design the sharding replaces.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::balance::ratelimit::RateLimiter;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// Distinct clients per thread in the spread pattern.
const KEYS: u64 = 10_000;

/// Runs `iters` checks split over `threads` threads, started together; the wall time.
fn contended(threads: usize, iters: u64, check: Arc<dyn Fn(usize, u64) + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let per = iters / threads as u64 + 1;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (barrier, check) = (barrier.clone(), check.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per {
                    check(t, i);
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread");
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    for threads in [1usize, 2, 4] {
        let route = Arc::new(RateLimiter::new(1e6, 1_000_000, false));
        g.bench_with_input(
            BenchmarkId::new("route_wide", threads),
            &threads,
            |b, &n| {
                let l = route.clone();
                let check: Arc<dyn Fn(usize, u64) + Send + Sync> = Arc::new(move |_, _| {
                    black_box(l.check(0));
                });
                b.iter_custom(|iters| contended(n, iters, check.clone()))
            },
        );

        let spread = Arc::new(RateLimiter::new(1e6, 1_000_000, true));
        let keys: Arc<Vec<Vec<u64>>> = Arc::new(
            (0..threads)
                .map(|t| {
                    (0..KEYS)
                        .map(|k| spread.key_of_bytes(&(t as u64 * KEYS + k).to_le_bytes()))
                        .collect()
                })
                .collect(),
        );
        g.bench_with_input(
            BenchmarkId::new("per_client_spread", threads),
            &threads,
            |b, &n| {
                let (l, keys) = (spread.clone(), keys.clone());
                let check: Arc<dyn Fn(usize, u64) + Send + Sync> = Arc::new(move |t, i| {
                    black_box(l.check(keys[t][(i % KEYS) as usize]));
                });
                b.iter_custom(|iters| contended(n, iters, check.clone()))
            },
        );

        let one = Arc::new(RateLimiter::new(1e6, 1_000_000, true));
        let hot = one.key_of_bytes(b"everyone");
        g.bench_with_input(
            BenchmarkId::new("per_client_one_key", threads),
            &threads,
            |b, &n| {
                let l = one.clone();
                let check: Arc<dyn Fn(usize, u64) + Send + Sync> = Arc::new(move |_, _| {
                    black_box(l.check(hot));
                });
                b.iter_custom(|iters| contended(n, iters, check.clone()))
            },
        );

        // The design the sharding replaces: one lock over one map for every client.
        let global: Arc<Mutex<HashMap<u64, u64>>> = Arc::new(Mutex::new(HashMap::new()));
        g.bench_with_input(
            BenchmarkId::new("global_mutex_baseline", threads),
            &threads,
            |b, &n| {
                let (m, keys) = (global.clone(), keys.clone());
                let origin = Instant::now();
                // The same clock read and GCRA step, under one lock, in an unbounded map.
                let check: Arc<dyn Fn(usize, u64) + Send + Sync> = Arc::new(move |t, i| {
                    let now = origin.elapsed().as_nanos() as u64;
                    let mut map = m.lock().expect("baseline lock");
                    let tat = map.entry(keys[t][(i % KEYS) as usize]).or_insert(0);
                    let base = (*tat).max(now);
                    if base - now <= 1_000_000_000 {
                        *tat = black_box(base + 1_000);
                    }
                });
                b.iter_custom(|iters| contended(n, iters, check.clone()))
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
