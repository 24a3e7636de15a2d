//! The snapshot is a self-contained layer: what it serves is exactly what validation read
//! (key material is read once), whatever happens to the files afterwards.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_served_is_the_one_validation_read() {
    let up = Upstream::start("u").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let checked = ca.leaf(dir.path(), "site", &["site.test"]);
    let path = dir.path().join("gateway.yaml");
    let yaml = format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: site.pem, key: site.key }}] }}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    );
    std::fs::write(&path, yaml).unwrap();
    let loaded = gateway::config::load(&path).unwrap();
    // Swapped after validation, before the snapshot is built: the build must not read it.
    let swapped = ca.leaf(dir.path(), "site", &["site.test"]);
    assert_ne!(checked.der, swapped.der);
    let gw = Gateway::start_loaded(dir, path, loaded).await;
    let io = tls_connect(
        gw.addr,
        Some("site.test"),
        tls_client(&[b"http/1.1"], &[], Some(&ca)),
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&io), checked.der);
    assert_eq!(H1::over(io).await.get("site.test", "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_the_one_validation_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "checked-token\n").unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "admin: { address: 127.0.0.1:0, tokenFile: admin.token }\n\
         listeners: [{ name: public, address: 127.0.0.1:0 }]\n",
    )
    .unwrap();
    let loaded = gateway::config::load(&path).unwrap();
    std::fs::write(dir.path().join("admin.token"), "swapped-token\n").unwrap();
    let gw = Gateway::start_loaded(dir, path, loaded).await;
    let admin = gw.admin();
    assert_eq!(
        get_with_token(admin, "/status", "checked-token")
            .await
            .status,
        200
    );
    assert_eq!(
        get_with_token(admin, "/status", "swapped-token")
            .await
            .status,
        401
    );
}
