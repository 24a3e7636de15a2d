//! Passive health through the real server: ejection and return, slow start, panic mode,
//! latency de-preference, maxEjectedPercent, and retries around a dead endpoint. Hits are
//! counted at each upstream.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// An upstream that answers every request with a status it can be told to change, after
/// a fixed delay.
struct Fixed {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
}

impl Fixed {
    async fn start(status: u16, delay: Duration) -> Fixed {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let code = Arc::new(AtomicU16::new(status));
        let (h, c) = (hits.clone(), code.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, c) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let (h, c) = (h.clone(), c.clone());
                        async move {
                            h.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let mut r = Response::new(Full::new(Bytes::from_static(b"x")));
                            *r.status_mut() =
                                StatusCode::from_u16(c.load(Ordering::SeqCst)).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fixed {
            addr,
            hits,
            status: code,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn config(endpoints: &[SocketAddr], health: &str, admin: bool) -> String {
    let eps: String = endpoints
        .iter()
        .map(|a| format!("      - {{ address: \"{a}\" }}\n"))
        .collect();
    let admin = if admin {
        "admin: { address: \"127.0.0.1:0\" }\n"
    } else {
        ""
    };
    format!(
        "{admin}listeners: [{{ name: public, address: \"127.0.0.1:0\" }}]\n\
         routes: [{{ name: r, cluster: c, retry: {{ attempts: 0 }} }}]\n\
         clusters:\n  - name: c\n    endpoints:\n{eps}    passiveHealth:\n{health}"
    )
}

async fn send(c: &mut H1, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.get("h", "/").await.status.as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_503_is_ejected_then_returns_after_the_ejection_time() {
    let good = Fixed::start(200, Duration::ZERO).await;
    let bad = Fixed::start(503, Duration::ZERO).await;
    let gw = Gateway::start(&config(
        &[good.addr, bad.addr],
        "      consecutiveFailures: 3\n      baseEjectionTime: 400ms\n      slowStart: 0s\n",
        false,
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    // Alternating picks: the bad endpoint answers 503 three times, then is ejected.
    send(&mut c, 6).await;
    assert_eq!(bad.hits(), 3);
    let before = (good.hits(), bad.hits());
    let statuses = send(&mut c, 20).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(bad.hits(), before.1, "no traffic while ejected");
    assert_eq!(good.hits(), before.0 + 20);
    // It comes back once the ejection time has passed (now healthy).
    bad.status.store(200, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while bad.hits() == before.1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never returned"
        );
        send(&mut c, 1).await;
    }
    let statuses = send(&mut c, 10).await;
    assert!(statuses.iter().all(|&s| s == 200));
    assert!(bad.hits() >= before.1 + 5, "back to its full share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_endpoint_ramps_up_over_slow_start() {
    let good = Fixed::start(200, Duration::ZERO).await;
    let bad = Fixed::start(503, Duration::ZERO).await;
    let gw = Gateway::start(&config(
        &[good.addr, bad.addr],
        "      consecutiveFailures: 2\n      baseEjectionTime: 300ms\n      slowStart: 3s\n",
        false,
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    send(&mut c, 4).await;
    assert_eq!(bad.hits(), 2, "ejected after two 503s");
    bad.status.store(200, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while bad.hits() == 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never returned"
        );
        send(&mut c, 1).await;
    }
    // Early in the ramp its weight is ~10-20% of the other's: about 1 pick in 6-11.
    let (g0, b0) = (good.hits(), bad.hits());
    send(&mut c, 22).await;
    let early = bad.hits() - b0;
    assert_eq!(good.hits() - g0 + early, 22);
    assert!(
        early <= 5,
        "slow start: only {early} of 22 early requests should reach it"
    );
    // After the ramp it takes its full half.
    let after = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < after {
        send(&mut c, 1).await;
    }
    let b1 = bad.hits();
    send(&mut c, 20).await;
    assert_eq!(bad.hits() - b1, 10, "full weight once slow start is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_ejected_traffic_still_flows_to_all_of_them() {
    let only = Fixed::start(503, Duration::ZERO).await;
    let gw = Gateway::start(&config(
        &[only.addr],
        "      consecutiveFailures: 2\n      baseEjectionTime: 30s\n",
        true,
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    let statuses = send(&mut c, 10).await;
    assert_eq!(
        statuses,
        vec![503; 10],
        "panic mode: the upstream's own answers pass through"
    );
    assert_eq!(only.hits(), 10);
    let metrics = get(gw.admin(), "admin", "/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "gateway_endpoint_healthy{{cluster=\"c\",endpoint=\"{}\"}} 0",
            only.addr
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "gateway_endpoint_ejections_total{{cluster=\"c\",endpoint=\"{}\"}} 1",
        only.addr
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_keeps_half_of_two_failing_endpoints_in_rotation() {
    let a = Fixed::start(503, Duration::ZERO).await;
    let b = Fixed::start(503, Duration::ZERO).await;
    let gw = Gateway::start(&config(
        &[a.addr, b.addr],
        "      consecutiveFailures: 2\n      baseEjectionTime: 30s\n      maxEjectedPercent: 50\n",
        true,
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    send(&mut c, 20).await;
    let metrics = get(gw.admin(), "admin", "/metrics").await.text();
    let healthy: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_endpoint_healthy{"))
        .collect();
    assert_eq!(healthy.len(), 2, "{metrics}");
    assert_eq!(
        healthy.iter().filter(|l| l.ends_with(" 0")).count(),
        1,
        "exactly one ejected: {healthy:?}"
    );
    // The one left in rotation took every request after the other was ejected.
    assert!(a.hits().max(b.hits()) >= 17, "{} {}", a.hits(), b.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_a_smaller_share() {
    let fast = Fixed::start(200, Duration::ZERO).await;
    let slow = Fixed::start(200, Duration::from_millis(120)).await;
    let gw = Gateway::start(&config(
        &[fast.addr, slow.addr],
        "      latency: { threshold: 50ms, weightFactor: 0.1 }\n",
        false,
    ))
    .await;
    let mut c = H1::connect(gw.addr).await;
    send(&mut c, 4).await;
    let (f0, s0) = (fast.hits(), slow.hits());
    send(&mut c, 44).await;
    let slow_share = slow.hits() - s0;
    assert_eq!(fast.hits() - f0 + slow_share, 44);
    // Weights 1 : 0.1 → 4 of 44.
    assert!(slow_share <= 5, "the slow endpoint got {slow_share} of 44");
    assert!(
        slow_share >= 3,
        "but it is de-preferred, not ejected: {slow_share}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_endpoint_of_three_costs_no_client_request() {
    let a = Fixed::start(200, Duration::ZERO).await;
    let b = Fixed::start(200, Duration::ZERO).await;
    let dead = closed_port().await;
    let yaml = config(
        &[a.addr, dead, b.addr],
        "      consecutiveFailures: 2\n      baseEjectionTime: 30s\n",
        false,
    )
    .replace("retry: { attempts: 0 }", "retry: { attempts: 1 }");
    let gw = Gateway::start(&yaml).await;
    let mut c = H1::connect(gw.addr).await;
    let statuses = send(&mut c, 30).await;
    assert_eq!(statuses, vec![200; 30]);
    assert_eq!(a.hits() + b.hits(), 30);
}
