#![allow(clippy::unwrap_used)]
//! TLS termination through the real server: which certificate each SNI name gets, ALPN,
//! protocol versions, the handshake timeout, session resumption, the 421 rule, the
//! access log's `tls`/`sni` fields, and what `validate` says about certificate files.

mod support;

use http::Request;
use std::time::Duration;
use support::*;
use tokio::io::AsyncReadExt;

const H2: &[u8] = b"h2";
const H11: &[u8] = b"http/1.1";

/// Three certificates: a default one, a wildcard and an exact name under it.
struct Three {
    dir: tempfile::TempDir,
    default: Leaf,
    wildcard: Leaf,
    exact: Leaf,
}

fn three_certs(ca: &TestCa) -> Three {
    let dir = tempfile::tempdir().unwrap();
    Three {
        default: ca.leaf(dir.path(), "default", &["default.test"]),
        wildcard: ca.leaf(dir.path(), "wildcard", &["*.example.com"]),
        exact: ca.leaf(dir.path(), "exact", &["api.example.com"]),
        dir,
    }
}

fn tls_config(up: &Upstream, tls_extra: &str) -> String {
    format!(
        r#"
accessLog: {{ path: "{{dir}}/access.log" }}
listeners:
  - name: public
    address: 127.0.0.1:0
    timeouts: {{ readHeader: 2s }}
    tls:
      certificates:
        - {{ cert: default.pem, key: default.key }}
        - {{ cert: wildcard.pem, key: wildcard.key }}
        - {{ cert: exact.pem, key: exact.key }}
{tls_extra}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_exact_name_then_the_wildcard_then_the_first_certificate() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let (default, wildcard, exact) = (
        certs.default.der.clone(),
        certs.wildcard.der.clone(),
        certs.exact.der.clone(),
    );
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;
    let client = tls_client(&[H11], &[], None);
    let cases: [(Option<&str>, &Vec<u8>, &str); 6] = [
        (Some("api.example.com"), &exact, "exact beats wildcard"),
        (Some("www.example.com"), &wildcard, "wildcard"),
        (
            Some("a.b.example.com"),
            &default,
            "a wildcard covers one label",
        ),
        (Some("example.com"), &default, "nor the bare domain"),
        (
            Some("unknown.org"),
            &default,
            "unknown name: first certificate",
        ),
        (None, &default, "no SNI: first certificate"),
    ];
    for (sni, want, why) in cases {
        let io = tls_connect(gw.addr, sni, client.clone()).await.unwrap();
        assert!(served_cert(&io) == *want, "{why} ({sni:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_replace_the_certificates_own_names() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(dir.path(), "first", &["first.test"]);
    let named = ca.leaf(dir.path(), "named", &["san.test"]);
    let gw = Gateway::start_in(
        dir,
        &format!(
            r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: first.pem, key: first.key }}
        - {{ cert: named.pem, key: named.key, serverNames: [configured.test] }}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
            up.addr
        ),
    )
    .await;
    let client = tls_client(&[H11], &[], None);
    let io = tls_connect(gw.addr, Some("configured.test"), client.clone())
        .await
        .unwrap();
    assert!(served_cert(&io) == named.der);
    let io = tls_connect(gw.addr, Some("san.test"), client)
        .await
        .unwrap();
    assert!(
        served_cert(&io) == first.der,
        "the SAN no longer selects the certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http11_and_requests_flow_over_both() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;

    let io = tls_connect(
        gw.addr,
        Some("api.example.com"),
        tls_client(&[H2, H11], &[], Some(&ca)),
    )
    .await
    .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(H2));
    let mut h2 = H2::over(io).await;
    let got = h2
        .send(
            Request::get("https://api.example.com/x")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "u");

    let io = tls_connect(
        gw.addr,
        Some("api.example.com"),
        tls_client(&[H11], &[], Some(&ca)),
    )
    .await
    .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(H11));
    let got = H1::over(io).await.get("api.example.com", "/x").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "u");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_http11_only_keeps_an_h2_capable_client_on_http11() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "      alpn: [http/1.1]")).await;
    let io = tls_connect(
        gw.addr,
        Some("www.example.com"),
        tls_client(&[H2, H11], &[], Some(&ca)),
    )
    .await
    .unwrap();
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(H11));
    let got = H1::over(io).await.get("www.example.com", "/").await;
    assert_eq!(got.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_refused_when_min_version_is_13_and_the_failure_is_counted() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "      minVersion: \"1.3\"")).await;
    let tls12 = tls_client(&[H11], &[&rustls::version::TLS12], Some(&ca));
    let refused = tls_connect(gw.addr, Some("api.example.com"), tls12).await;
    assert!(refused.is_err(), "a TLS 1.2-only client must be refused");
    let tls13 = tls_client(&[H11], &[&rustls::version::TLS13], Some(&ca));
    let io = tls_connect(gw.addr, Some("api.example.com"), tls13)
        .await
        .unwrap();
    assert_eq!(
        io.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    eventually(Duration::from_secs(5), || {
        gw.metrics_text()
            .contains("gateway_tls_handshake_errors_total{listener=\"public\"} 1")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_still_works_with_the_default_min_version_and_only_aead_suites_are_offered() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;
    let tls12 = tls_client(&[H11], &[&rustls::version::TLS12], Some(&ca));
    let io = tls_connect(gw.addr, Some("api.example.com"), tls12)
        .await
        .unwrap();
    let conn = io.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
    assert!(
        suite.starts_with("TLS_ECDHE_") && (suite.contains("GCM") || suite.contains("CHACHA20")),
        "{suite}"
    );
    let got = H1::over(io).await.get("api.example.com", "/").await;
    assert_eq!(got.status, 200);
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["tls"], "1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_closed_after_read_header() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let yaml = tls_config(&up, "").replace("readHeader: 2s", "readHeader: 300ms");
    let gw = Gateway::start_in(certs.dir, &yaml).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the gateway closes the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    eventually(Duration::from_secs(5), || {
        gw.metrics_text()
            .contains("gateway_tls_handshake_errors_total{listener=\"public\"} 1")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_resumes_the_first_ones_session() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = tls_client(&[H11], &[versions], Some(&ca));
        let first = tls_connect(gw.addr, Some("api.example.com"), client.clone())
            .await
            .unwrap();
        assert_eq!(
            first.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // TLS 1.3 tickets arrive after the handshake: read a response so they are in.
        let got = H1::over(first).await.get("api.example.com", "/").await;
        assert_eq!(got.status, 200);
        let second = tls_connect(gw.addr, Some("api.example.com"), client)
            .await
            .unwrap();
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{versions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_sni_certificate_does_not_cover_gets_421() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;
    let client = tls_client(&[H2], &[], Some(&ca));

    // The connection was made for www.example.com, so the wildcard certificate was served.
    let io = tls_connect(gw.addr, Some("www.example.com"), client.clone())
        .await
        .unwrap();
    let mut h2 = H2::over(io).await;
    let get = |host: &str| {
        Request::get(format!("https://{host}/"))
            .body(empty())
            .unwrap()
    };
    assert_eq!(h2.send(get("www.example.com")).await.status, 200);
    assert_eq!(
        h2.send(get("other.example.com:443")).await.status,
        200,
        "covered by the wildcard"
    );
    // api.example.com has a certificate of its own; this one covers it too.
    assert_eq!(h2.send(get("api.example.com")).await.status, 200);
    let got = h2.send(get("default.test")).await;
    assert_eq!(got.status, 421);
    assert_eq!(got.json()["error"]["code"], "misdirected_request");
    assert_eq!(h2.send(get("a.b.example.com")).await.status, 421);

    // Without SNI there is nothing to check against.
    let any = tls_client(&[H2], &[], None);
    let io = tls_connect(gw.addr, None, any.clone()).await.unwrap();
    let got = H2::over(io).await.send(get("anything.test")).await;
    assert_eq!(got.status, 200);

    // An unknown SNI name gets the first certificate; the same host is still fine.
    let io = tls_connect(gw.addr, Some("unknown.test"), any)
        .await
        .unwrap();
    let mut h2 = H2::over(io).await;
    assert_eq!(h2.send(get("unknown.test")).await.status, 200);
    assert_eq!(h2.send(get("www.example.com")).await.status, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_requests_are_logged_with_version_and_sni_and_forwarded_as_https() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let certs = three_certs(&ca);
    let gw = Gateway::start_in(certs.dir, &tls_config(&up, "")).await;
    let io = tls_connect(
        gw.addr,
        Some("api.example.com"),
        tls_client(&[H11], &[], Some(&ca)),
    )
    .await
    .unwrap();
    let got = H1::over(io).await.get("api.example.com", "/p").await;
    assert_eq!(got.status, 200);
    let seen = up.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(seen.headers["forwarded"]
        .to_str()
        .unwrap()
        .ends_with("proto=https"));
    let log = gw.access_log(1).await;
    assert_eq!(log[0]["tls"], "1.3");
    assert_eq!(log[0]["sni"], "api.example.com");
    assert_eq!(log[0]["protocol"], "HTTP/1.1");
}

// ---- validate ------------------------------------------------------------------------

fn write_config(dir: &std::path::Path, certs: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:8443\n    tls:\n      certificates:\n{certs}routes: [{{ name: r, cluster: c }}]\nclusters: [{{ name: c, endpoints: [{{ address: \"127.0.0.1:9\" }}] }}]\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn validate_reports_a_mismatched_key_and_a_missing_file_at_their_key_paths() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test"]);
    ca.leaf(dir.path(), "b", &["b.test"]);
    let path = write_config(
        dir.path(),
        "        - cert: a.pem\n          key: b.key\n        - cert: missing.pem\n          key: a.key\n        - cert: a.pem\n          key: missing.key\n",
    );
    let invalid = gateway::config::load(&path).unwrap_err();
    let find = |p: &str| {
        invalid
            .errors
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("no error at {p}: {:#?}", invalid.errors))
    };
    let e = find("listeners[0].tls.certificates[0].key");
    assert!(e.message.contains("does not match"), "{e}");
    assert_eq!(e.line, 7);
    let e = find("listeners[0].tls.certificates[1].cert");
    assert!(e.message.contains("cannot read"), "{e}");
    assert_eq!(e.line, 8);
    let e = find("listeners[0].tls.certificates[2].key");
    assert!(e.message.contains("cannot read"), "{e}");
    assert_eq!(e.line, 11);
    assert_eq!(invalid.errors.len(), 3, "{:#?}", invalid.errors);
}

#[test]
fn validate_warns_about_an_expired_certificate_without_failing() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.leaf_with(dir.path(), "old", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 6, 30);
    });
    let path = write_config(dir.path(), "        - { cert: old.pem, key: old.key }\n");
    let loaded = gateway::config::load(&path).unwrap();
    let w = loaded
        .warnings
        .iter()
        .find(|w| w.path == "listeners[0].tls.certificates[0].cert")
        .unwrap_or_else(|| panic!("{:#?}", loaded.warnings));
    assert!(w.message.contains("expired on 2021-06-30"), "{w}");
}

#[test]
fn server_names_from_sans_and_from_config_are_what_the_listener_serves() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(dir.path(), "a", &["a.test", "*.a.test"]);
    let path = write_config(
        dir.path(),
        "        - { cert: a.pem, key: a.key }\n        - { cert: a.pem, key: a.key, serverNames: [\"*.b.test\", B.test] }\n",
    );
    let loaded = gateway::config::load(&path).unwrap();
    let tls = loaded.config.listeners[0].tls.as_ref().unwrap();
    assert!(tls.certificates[0].server_names.is_empty());
    assert_eq!(tls.certificates[1].server_names, ["*.b.test", "b.test"]);
    let first = &tls.certificates[0].loaded;
    assert!(first.names.covers("x.a.test") && first.names.covers("a.test"));
    assert!(!first.names.covers("b.test"));
    let second = &tls.certificates[1].loaded;
    assert!(second.names.covers("x.b.test") && second.names.covers("b.test"));
    assert!(!second.names.covers("a.test"));
}
