//! What a release ships, checked against the gateway it ships: the version the binary
//! reports (and how `build.rs` finds the commit), and that the container image and the
//! Kubernetes manifests agree with the configuration, ports, endpoints and shutdown
//! timing of this build. tools/release/ci.sh (run by .ci/run) checks the built artifacts.
#![allow(clippy::unwrap_used)]

use gateway::config::raw::{self, Node, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Node {
    raw::parse(&read(path)).unwrap_or_else(|e| panic!("{path}: {}", e.message))
}

fn get<'a>(n: &'a Node, key: &str) -> &'a Node {
    match &n.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no key {key} at line {}", n.line)),
        other => panic!("{key}: line {} is {}, not a map", n.line, other.type_name()),
    }
}

fn at<'a>(n: &'a Node, path: &[&str]) -> &'a Node {
    path.iter().fold(n, |n, k| get(n, k))
}

fn seq(n: &Node) -> &[Node] {
    match &n.value {
        Value::Seq(items) => items,
        other => panic!("line {} is {}, not a list", n.line, other.type_name()),
    }
}

fn s(n: &Node) -> &str {
    match &n.value {
        Value::Str(s) => s,
        other => panic!("line {} is {}, not a string", n.line, other.type_name()),
    }
}

fn int(n: &Node) -> i64 {
    match &n.value {
        Value::Int(i) => *i,
        other => panic!("line {} is {}, not an integer", n.line, other.type_name()),
    }
}

fn named<'a>(items: &'a [Node], name: &str) -> &'a Node {
    items
        .iter()
        .find(|i| s(get(i, "name")) == name)
        .unwrap_or_else(|| panic!("nothing named {name}"))
}

fn gateway(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

// ---- version and provenance ---------------------------------------------------------------

#[test]
fn version_prints_version_commit_and_target_in_every_form() {
    let json: serde_json::Value = serde_json::from_str(&gateway(&["version", "--json"])).unwrap();
    let obj = json.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["commit", "target", "version"]);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["commit"], gateway::version::COMMIT);
    assert_eq!(json["target"], gateway::version::TARGET);
    let target = json["target"].as_str().unwrap();
    assert!(target.split('-').count() >= 3, "not a triple: {target}");
    let commit = json["commit"].as_str().unwrap();
    assert!(
        commit == "unknown" || commit.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{commit}"
    );

    let line = format!(
        "gateway {} (commit {commit}, {target})\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(gateway(&["version"]), line);
    assert_eq!(gateway(&["--version"]), line);
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn the_commit_is_the_checked_out_head() {
    if std::env::var_os("GATEWAY_BUILD_COMMIT").is_some() {
        eprintln!("skipped: GATEWAY_BUILD_COMMIT overrides the commit");
        return;
    }
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        eprintln!(
            "skipped: not a git checkout (the build says {})",
            gateway::version::COMMIT
        );
        return;
    };
    // build.rs reruns when HEAD moves, so the binary under test is HEAD's.
    assert_eq!(gateway::version::COMMIT, head);
}

/// `build.rs` compiled on its own and run as cargo would run it, in a chosen directory.
struct BuildScript {
    exe: PathBuf,
    _dir: tempfile::TempDir,
}

impl BuildScript {
    fn compile() -> BuildScript {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("build-script");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let out = Command::new(rustc)
            .args(["--edition", "2021", "-o"])
            .arg(&exe)
            .arg(repo("build.rs"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        BuildScript { exe, _dir: dir }
    }

    /// The `cargo:` lines it prints with the manifest dir `dir` and `overrides` set;
    /// git looks for a repository no higher than `dir`.
    fn run(&self, dir: &Path, overrides: Option<&str>) -> Vec<String> {
        self.run_below(dir, dir.parent().unwrap(), overrides)
    }

    /// Like `run`, with git free to search up to (not into) `ceiling`.
    fn run_below(&self, dir: &Path, ceiling: &Path, overrides: Option<&str>) -> Vec<String> {
        let mut cmd = Command::new(&self.exe);
        cmd.env("CARGO_MANIFEST_DIR", dir)
            .env("TARGET", "riscv64gc-unknown-linux-gnu")
            .env("GIT_CEILING_DIRECTORIES", ceiling)
            .env_remove("GATEWAY_BUILD_COMMIT");
        if let Some(o) = overrides {
            cmd.env("GATEWAY_BUILD_COMMIT", o);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn env_of<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = format!("cargo:rustc-env={name}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
}

#[test]
fn build_script_says_unknown_outside_git_and_takes_the_override() {
    let script = BuildScript::compile();
    let tarball = tempfile::tempdir().unwrap();

    let lines = script.run(tarball.path(), None);
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), "unknown");
    assert_eq!(
        env_of(&lines, "GATEWAY_TARGET"),
        "riscv64gc-unknown-linux-gnu"
    );
    // Nothing to watch but itself and the override: no path that does not exist, which
    // would make cargo rerun it on every build.
    let watched: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("cargo:rerun-if"))
        .collect();
    assert_eq!(
        watched,
        [
            "cargo:rerun-if-changed=build.rs",
            "cargo:rerun-if-env-changed=GATEWAY_BUILD_COMMIT"
        ]
    );

    let lines = script.run(tarball.path(), Some(" 1a2b3c4d5e6f\n"));
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), "1a2b3c4d5e6f");
    let lines = script.run(tarball.path(), Some("v1 \"quoted\" {json}"));
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), "v1quotedjson");
    let lines = script.run(tarball.path(), Some("   "));
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), "unknown");
}

#[test]
fn build_script_ignores_a_repository_the_sources_are_merely_inside() {
    let outer = tempfile::tempdir().unwrap();
    let git_in = |args: &[&str]| {
        let st = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(outer.path())
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
    };
    git_in(&["init", "-q"]);
    git_in(&["commit", "-q", "--allow-empty", "-m", "unrelated"]);
    let unpacked = outer.path().join("gateway-0.5.0");
    std::fs::create_dir(&unpacked).unwrap();

    let script = BuildScript::compile();
    let lines = script.run_below(&unpacked, outer.path().parent().unwrap(), None);
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), "unknown");
}

#[test]
fn build_script_in_a_checkout_reports_head_and_watches_only_existing_paths() {
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        eprintln!("skipped: not a git checkout");
        return;
    };
    let script = BuildScript::compile();
    let lines = script.run(Path::new(env!("CARGO_MANIFEST_DIR")), None);
    assert_eq!(env_of(&lines, "GATEWAY_COMMIT"), head);
    let paths: Vec<_> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cargo:rerun-if-changed="))
        .filter(|p| *p != "build.rs")
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("HEAD")),
        "HEAD is not watched: {paths:?}"
    );
    for p in paths {
        assert!(Path::new(p).exists(), "watches a missing path: {p}");
    }
}

// ---- the image and the manifests against this gateway ---------------------------------------

const IMAGE_CONFIG: &str = "/etc/gateway/gateway.yaml";

fn config(path: &str) -> gateway::config::Config {
    let loaded = gateway::config::load(&repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(loaded.warnings.is_empty(), "{path}: {:?}", loaded.warnings);
    loaded.config
}

/// Port of the HTTP listener named `public`, and of the admin listener.
fn ports(c: &gateway::config::Config) -> (u16, u16) {
    let public = c.listeners.iter().find(|l| l.name == "public").unwrap();
    (
        public.address.port(),
        c.admin.as_ref().unwrap().address.port(),
    )
}

#[test]
fn the_image_runs_its_own_config_on_the_ports_it_exposes() {
    let c = config("deploy/container/gateway.yaml");
    let (http, admin) = ports(&c);
    for l in &c.listeners {
        assert!(
            l.address.ip().is_unspecified(),
            "{} must bind 0.0.0.0",
            l.name
        );
    }
    assert!(c.admin.as_ref().unwrap().address.ip().is_unspecified());

    let file = read("deploy/container/Containerfile");
    let line = |word: &str| -> &str {
        file.lines()
            .find(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} in the Containerfile"))
    };
    assert_eq!(line("EXPOSE "), format!("EXPOSE {http} {admin}"));
    assert_eq!(line("USER "), "USER 65532:65532");
    assert_eq!(
        line("ENTRYPOINT "),
        r#"ENTRYPOINT ["/usr/local/bin/gateway"]"#
    );
    assert_eq!(
        line("CMD "),
        format!(r#"CMD ["run", "--config", "{IMAGE_CONFIG}"]"#)
    );
    let image_sh = read("tools/release/image.sh");
    assert!(image_sh.contains(r#"cp deploy/container/gateway.yaml "$fs/etc/gateway/gateway.yaml""#));
}

#[test]
fn the_deployment_matches_the_config_it_mounts_and_outlasts_its_shutdown() {
    let c = config("deploy/kubernetes/gateway.yaml");
    let (http, admin) = ports(&c);

    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let generator = &seq(get(&kustomization, "configMapGenerator"))[0];
    let configmap = s(get(generator, "name"));
    let files: Vec<_> = seq(get(generator, "files")).iter().map(s).collect();
    assert_eq!(files, ["gateway.yaml"]);
    assert!(
        matches!(
            get(
                get(&kustomization, "generatorOptions"),
                "disableNameSuffixHash"
            )
            .value,
            Value::Bool(true)
        ),
        "a hashed ConfigMap name would roll pods instead of updating the mounted file"
    );
    let image = &seq(get(&kustomization, "images"))[0];
    assert_eq!(s(get(image, "newTag")), env!("CARGO_PKG_VERSION"));

    let dep = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(int(at(&dep, &["spec", "replicas"])), 2);
    let pod = at(&dep, &["spec", "template", "spec"]);
    let container = &seq(get(pod, "containers"))[0];
    assert_eq!(s(get(container, "image")), s(get(image, "name")));

    let args: Vec<_> = seq(get(container, "args")).iter().map(s).collect();
    assert_eq!(args[..3], ["run", "--config", IMAGE_CONFIG]);
    let mount = named(seq(get(container, "volumeMounts")), "config");
    assert_eq!(s(get(mount, "mountPath")), "/etc/gateway");
    let volume = named(seq(get(pod, "volumes")), "config");
    assert_eq!(s(at(volume, &["configMap", "name"])), configmap);

    let container_ports = seq(get(container, "ports"));
    assert_eq!(
        int(get(named(container_ports, "http"), "containerPort")),
        i64::from(http)
    );
    assert_eq!(
        int(get(named(container_ports, "admin"), "containerPort")),
        i64::from(admin)
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get_ = at(container, &[probe, "httpGet"]);
        assert_eq!(s(get(get_, "path")), path, "{probe}");
        assert_eq!(s(get(get_, "port")), "admin", "{probe}");
    }
    assert_eq!(
        int(at(pod, &["securityContext", "runAsUser"])),
        65532,
        "the image's user"
    );

    // The pod must outlive the gateway's shutdown delay plus its drain, or Kubernetes
    // kills requests still in flight.
    let grace = Duration::from_secs(int(get(pod, "terminationGracePeriodSeconds")) as u64);
    let (delay, drain) = (c.shutdown.delay, c.shutdown.drain_timeout);
    assert!(
        delay > Duration::ZERO,
        "without shutdown.delay, listeners close before endpoints are removed"
    );
    assert!(
        grace > delay + drain,
        "grace {grace:?} <= shutdown.delay {delay:?} + drainTimeout {drain:?}"
    );
}

#[test]
fn the_systemd_unit_waits_for_the_drain_and_reloads_with_sighup() {
    let unit = read("deploy/systemd/gateway.service");
    let value = |key: &str| -> &str {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
    };
    let stop = value("TimeoutStopSec");
    let stop = Duration::from_secs(stop.trim_end_matches('s').parse().unwrap());
    let defaults = gateway::config::model::Shutdown::default();
    assert!(stop > defaults.delay + defaults.drain_timeout, "{stop:?}");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(
        value("ExecStart"),
        format!("/usr/local/bin/gateway run --config {IMAGE_CONFIG}")
    );
}
