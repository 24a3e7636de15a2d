//! Reloads do not pile up memory: an old snapshot is freed when the last request using it
//! ends, so 200 reloads (with traffic, an open WebSocket tunnel and idle keep-alive
//! connections held across all of them) leave one snapshot alive and grow the resident
//! set by no more than a few MiB. One test in its own binary, so nothing else moves the
//! process's RSS while it measures.
#![allow(clippy::unwrap_used)]

mod support;

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn config(up: &Upstream, i: usize) -> String {
    // Each generation differs (a timeout, a route), so each reload builds anew.
    format!(
        r#"
reload: {{ watch: false }}
listeners: [{{ name: public, address: 127.0.0.1:0 }}]
routes:
  - {{ name: r, cluster: c, timeouts: {{ request: {}s }} }}
  - {{ name: extra-{i}, match: {{ pathPrefix: /extra }}, cluster: c }}
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        10 + i % 7,
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_reloads_leave_one_snapshot_and_grow_rss_by_a_few_mib_at_most() {
    let up = Upstream::start_unrecorded("u").await;
    let gw = Gateway::start(&config(&up, 0)).await;
    let path = gw.dir.path().join("gateway.yaml");
    let running = gw.running.as_ref().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr))
        .await
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = H1::connect(gw.addr).await;
        assert_eq!(c.get("x", "/").await.status, 200);
        idle.push(c);
    }
    let mut client = H1::connect(gw.addr).await;
    let round = |i: usize| {
        std::fs::write(&path, config(&up, i)).unwrap();
        async move { running.reload().await.unwrap() }
    };
    // Warm up: allocator arenas, pools, metric series of every route name used below.
    for i in 1..=20 {
        round(i).await;
        assert_eq!(client.get("x", "/").await.status, 200);
    }
    let before = rss_kib();
    for i in 21..=220 {
        let generation = round(i).await;
        assert_eq!(generation, i as u64 + 1);
        assert_eq!(client.get("x", "/").await.status, 200);
        if i % 50 == 0 {
            ws.send(Message::text("still here")).await.unwrap();
            let back = ws.next().await.unwrap().unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), "still here");
        }
    }
    // Nothing in flight: only the running snapshot is left (tunnels and idle connections
    // hold none).
    let snapshots = eventually(Duration::from_secs(5), || {
        let n = gw.metric("gateway_config_snapshots")?;
        (n == 1.0).then_some(n)
    })
    .await;
    assert_eq!(snapshots, 1.0);
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB over 200 reloads ({before} → {after} KiB)"
    );
    for c in &mut idle {
        assert_eq!(
            c.get("x", "/").await.status,
            200,
            "idle connections still work"
        );
    }
}
