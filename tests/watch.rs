//! `reload.watch`: the file watcher reloads on a real change to the configuration file or
//! a file it references, however the change is made — written in place, renamed over
//! (editors), swapped in by a Kubernetes ConfigMap's `..data` symlink, or truncated and
//! then written — and never applies a half-written file.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(10);

fn config(up: &Upstream, marker: &str) -> String {
    format!(
        r#"# {marker}
reload: {{ watch: true, debounce: 50ms }}
admin: {{ address: 127.0.0.1:0 }}
listeners: [{{ name: public, address: 127.0.0.1:0 }}]
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        up.addr
    )
}

async fn generation(gw: &Gateway) -> u64 {
    let admin = gw.running.as_ref().unwrap().admin.unwrap();
    get(admin, "x", "/status").await.json()["generation"]
        .as_u64()
        .unwrap()
}

/// Waits until the gateway runs generation `g` and its route answers from `expect`.
async fn until_applied(gw: &Gateway, g: u64, expect: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if generation(gw).await == g && get(gw.addr, "x", "/").await.text() == expect {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "generation {g} not applied in time (now {})",
            generation(gw).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_write_and_a_rename_over_the_file_are_both_applied() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, "one")).await;
    let path = gw.dir.path().join("gateway.yaml");
    write(&path, &config(&b, "two"));
    until_applied(&gw, 2, "b").await;
    // An editor's save: write a new file beside it, rename it over the old one.
    let tmp = gw.dir.path().join(".gateway.yaml.swp");
    write(&tmp, &config(&a, "three"));
    std::fs::rename(&tmp, &path).unwrap();
    until_applied(&gw, 3, "a").await;
    // Touched without a change: no reload.
    write(&path, &config(&a, "three"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(generation(&gw).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_applied() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    // The layout kubelet makes: gateway.yaml -> ..data/gateway.yaml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    write(&root.join("..v1/gateway.yaml"), &config(&a, "v1"));
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gateway.yaml", root.join("gateway.yaml")).unwrap();
    let path = root.join("gateway.yaml");
    let loaded = gateway::config::load(&path).unwrap();
    let gw = Gateway::start_loaded(dir, path, loaded).await;
    assert_eq!(get(gw.addr, "x", "/").await.text(), "a");
    // kubelet's update: a new timestamped folder, a new link, renamed over `..data`.
    let root = gw.dir.path();
    std::fs::create_dir(root.join("..v2")).unwrap();
    write(&root.join("..v2/gateway.yaml"), &config(&b, "v2"));
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    until_applied(&gw, 2, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_then_written_file_is_never_applied_half_written() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = Gateway::start(&config(&a, "one")).await;
    let path = gw.dir.path().join("gateway.yaml");
    let next = config(&b, "two");
    // Truncated, then half of the new text, long enough for the watcher to try it.
    write(&path, "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    write(&path, &next[..next.len() / 2]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(generation(&gw).await, 1, "nothing half-written was applied");
    assert_eq!(get(gw.addr, "x", "/").await.text(), "a", "still serving");
    let admin = gw.running.as_ref().unwrap().admin.unwrap();
    let status = get(admin, "x", "/status").await.json();
    assert_eq!(status["lastReload"]["ok"], false, "{status}");
    assert_eq!(status["lastReload"]["trigger"], "watch");
    // The rest arrives: applied, the watcher survived the failures.
    write(&path, &next);
    until_applied(&gw, 2, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_referenced_file_in_another_folder_reloads() {
    let a = Upstream::start("a").await;
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let first = ca.leaf(certs.path(), "site", &["site.test"]);
    let cert_dir = certs.path().display().to_string();
    let yaml = format!(
        r#"
reload: {{ watch: true, debounce: 50ms }}
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: public
    address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: "{cert_dir}/site.pem", key: "{cert_dir}/site.key" }}] }}
routes: [{{ name: r, cluster: c }}]
clusters: [{{ name: c, endpoints: [{{ address: "{}" }}] }}]
"#,
        a.addr
    );
    let gw = Gateway::start(&yaml).await;
    let served = || async {
        let client = tls_client(&[b"http/1.1"], &[], Some(&ca));
        let io = tls_connect(gw.addr, Some("site.test"), client)
            .await
            .unwrap();
        served_cert(&io)
    };
    assert_eq!(served().await, first.der);
    let second = ca.leaf(certs.path(), "site", &["site.test"]);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while served().await != second.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(generation(&gw).await >= 2);
}
