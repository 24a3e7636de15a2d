//! The admin listener: health, readiness, status, bearer tokens.
#![allow(clippy::unwrap_used)]

mod support;

use http::Request;
use support::*;

async fn admin_gateway(token: bool) -> (Gateway, Upstream) {
    let up = Upstream::start("u").await;
    let token_line = if token {
        "  tokenFile: token.txt\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"
admin:
  address: 127.0.0.1:0
{token_line}listeners: [{{ name: public, address: "127.0.0.1:0" }}]
routes:
  - {{ name: api, match: {{ host: "*.example.com", pathPrefix: /api }}, cluster: c }}
clusters: [{{ name: c, endpoints: [{{ address: "{}", weight: 4 }}] }}]
"#,
        up.addr
    );
    if token {
        // The token file must exist before the config is loaded; Gateway::start writes the
        // config into a fresh temp dir, so put the token next to it by absolute path.
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token.txt");
        std::fs::write(&token_path, "s3cret-token\n").unwrap();
        let yaml = yaml.replace("token.txt", &token_path.display().to_string());
        let gw = Gateway::start(&yaml).await;
        std::mem::forget(dir);
        return (gw, up);
    }
    (Gateway::start(&yaml).await, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_status_describe_the_running_config() {
    let (gw, up) = admin_gateway(false).await;
    let admin = gw.admin();
    let got = get(admin, "admin", "/healthz").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["status"], "ok");
    let got = get(admin, "admin", "/readyz").await;
    assert_eq!(got.status, 200);

    let got = get(admin, "admin", "/status").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let s = got.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["commit"], gateway::version::COMMIT);
    assert_eq!(s["target"], gateway::version::TARGET);
    assert_eq!(s["generation"], 1);
    assert_eq!(s["configHash"].as_str().unwrap().len(), 16);
    assert_eq!(s["listeners"][0]["name"], "public");
    assert_eq!(s["routes"][0]["name"], "api");
    assert_eq!(s["routes"][0]["host"], "*.example.com");
    assert_eq!(s["routes"][0]["pathPrefix"], "/api");
    assert_eq!(s["clusters"][0]["name"], "c");
    let ep = &s["clusters"][0]["endpoints"][0];
    assert_eq!(ep["address"], up.addr.to_string());
    assert_eq!(ep["weight"], 4);
    assert_eq!(ep["healthy"], true);

    // After a proxied request, the endpoint's pooled connection shows up.
    assert_eq!(get(gw.addr, "a.example.com", "/api").await.status, 200);
    let s = get(admin, "admin", "/status").await.json();
    assert_eq!(s["clusters"][0]["endpoints"][0]["idleConnections"], 1);

    let drained = gw.shutdown(std::time::Duration::from_secs(1)).await;
    assert!(drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_wrong_methods_405_and_post_reload_reloads() {
    let (gw, _up) = admin_gateway(false).await;
    let admin = gw.admin();
    let got = get(admin, "admin", "/nope").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.json()["error"]["code"], "not_found");
    let got = H1::connect(admin)
        .await
        .send(
            Request::post("/status")
                .header("host", "a")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 405);
    assert_eq!(got.header("allow"), Some("GET, HEAD"));
    let got = get(admin, "admin", "/reload").await;
    assert_eq!(got.status, 405);
    let got = H1::connect(admin)
        .await
        .send(
            Request::post("/reload")
                .header("host", "a")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["ok"], true);
    assert_eq!(got.json()["generation"], 2);
    let status = get(admin, "admin", "/status").await.json();
    assert_eq!(status["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_protects_everything_but_health_and_readiness() {
    let (gw, _up) = admin_gateway(true).await;
    let admin = gw.admin();
    assert_eq!(get(admin, "a", "/healthz").await.status, 200);
    assert_eq!(get(admin, "a", "/readyz").await.status, 200);
    let got = get(admin, "a", "/status").await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["code"], "unauthorized");
    assert_eq!(got.header("www-authenticate"), Some("Bearer"));
    for wrong in [
        "Bearer nope",
        "Bearer s3cret-toke",
        "Bearer s3cret-token-and-more",
        "s3cret-token",
    ] {
        let got = H1::connect(admin)
            .await
            .send(
                Request::get("/status")
                    .header("host", "a")
                    .header("authorization", wrong)
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(got.status, 401, "{wrong}");
    }
    let got = H1::connect(admin)
        .await
        .send(
            Request::get("/status")
                .header("host", "a")
                .header("authorization", "Bearer s3cret-token")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
}
