#![allow(clippy::unwrap_used)]
//! `/metrics` speaks both exposition formats, chosen by `Accept`: the Prometheus text
//! format (0.0.4) for clients that prefer `text/plain`, OpenMetrics for Prometheus (which
//! asks for it first) and, as in 0.5, for `*/*` and no `Accept` at all.

mod support;

use http::Request;
use std::collections::BTreeSet;
use support::*;

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

async fn scrape(gw: &Gateway, accept: Option<&str>) -> Got {
    let mut req = Request::get("/metrics").header("host", "admin");
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    H1::connect(gw.admin())
        .await
        .send(req.body(empty()).unwrap())
        .await
}

/// `(name, type)` of every `# TYPE` line.
fn types(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|r| r.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_for_text_plain_and_openmetrics_otherwise() {
    let up = Upstream::start("up").await;
    let gw = Gateway::start(&format!(
        "admin: {{ address: 127.0.0.1:0 }}\nlisteners: [{{ name: public, address: 127.0.0.1:0 }}]\nroutes: [{{ name: r, cluster: c }}]\nclusters: [{{ name: c, endpoints: [{{ address: \"{}\" }}] }}]\n",
        up.addr
    ))
    .await;
    assert_eq!(get(gw.addr, "x", "/").await.status, 200);

    let om = scrape(&gw, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(om.status, 200);
    for accept in [Some(PROMETHEUS_ACCEPT), Some("*/*"), None] {
        let got = scrape(&gw, accept).await;
        assert_eq!(
            got.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{accept:?}"
        );
        assert!(got.text().ends_with("# EOF\n"), "{}", got.text());
    }

    for accept in [
        Some("text/plain"),
        Some("text/plain;version=0.0.4"),
        Some("application/openmetrics-text;q=0.1,text/plain;q=0.9"),
    ] {
        let text = scrape(&gw, accept).await;
        assert_eq!(text.status, 200);
        assert_eq!(
            text.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8"),
            "{accept:?}"
        );
        assert_eq!(text.header("vary"), Some("accept"));
        let body = text.text();
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
        assert!(
            body.lines()
                .any(|l| l.starts_with("gateway_requests_total{")
                    && l.contains("code=\"200\"")
                    && l.ends_with(" 1")),
            "{body}"
        );
        // The same families, each announced by the name its samples carry.
        let expected: BTreeSet<(String, String)> = types(&om.text())
            .into_iter()
            .map(|(n, t)| match t.as_str() {
                "counter" => (format!("{n}_total"), t),
                "info" => (format!("{n}_info"), "gauge".into()),
                _ => (n, t),
            })
            .collect();
        assert_eq!(types(&body), expected, "{accept:?}");
    }
}
