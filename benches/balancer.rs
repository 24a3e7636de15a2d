//! Smooth-WRR picks: one thread, and four threads picking from the same cluster at once.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::balance::Wrr;
use std::hint::black_box;
use std::sync::Arc;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("wrr_pick");
    let wrr = Arc::new(Wrr::new(&[5, 1, 1, 3, 7, 2, 9, 4]));
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_thread", |b| b.iter(|| black_box(wrr.pick())));
    const PER_THREAD: u64 = 10_000;
    g.throughput(Throughput::Elements(4 * PER_THREAD));
    g.bench_function("four_threads_contending", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let wrr = wrr.clone();
                    s.spawn(move || {
                        for _ in 0..PER_THREAD {
                            black_box(wrr.pick());
                        }
                    });
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
