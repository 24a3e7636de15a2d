//! The gateway under soak: its two alternating configurations, the release binary as a
//! child process, its admin API (reload, metrics), and its RSS and descriptors read from
//! /proc.

use crate::nodes::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The gateway's own ports. All of them, and the nodes' ports, lie below the kernel's
/// ephemeral range, so no outgoing connection can take one while it is free (the victim
/// node's ports while it is down, the extra listener's while it is removed).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub plain: u16,
    pub tls: u16,
    pub extra: u16,
    pub admin: u16,
    pub l4: u16,
}

/// Free ports on 127.0.0.1 below the ephemeral range, starting at a place that depends on
/// the process id (so two soaks on one machine are unlikely to meet).
pub fn pick_ports(n: usize) -> Result<Vec<u16>, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (first, last) = (10_000u16, low.saturating_sub(1));
    if last <= first + n as u16 {
        return Err(format!(
            "no room below the ephemeral range (it starts at {low})"
        ));
    }
    let span = (last - first) as u32;
    let mut p = first + (std::process::id() * 97 % span) as u16;
    let mut out = Vec::new();
    for _ in 0..span {
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            out.push(p);
            if out.len() == n {
                return Ok(out);
            }
        }
        p = if p >= last { first } else { p + 1 };
    }
    Err("not enough free ports".into())
}

/// Which of the two configurations is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Equal weights; no extra listener, route or cluster.
    A,
    /// Weights 3:2:1, plus listener `extra`, route `extra` (`/extra` → cluster `extra`,
    /// node x) and that cluster.
    B,
}

impl Variant {
    pub fn other(self) -> Variant {
        match self {
            Variant::A => Variant::B,
            Variant::B => Variant::A,
        }
    }
}

/// The configuration text of `variant`.
pub fn config(v: Variant, ports: &Ports, nodes: &[Arc<Node>], extra: &Node) -> String {
    let weights: &[u32] = match v {
        Variant::A => &[1, 1, 1],
        Variant::B => &[3, 2, 1],
    };
    let endpoints = |tcp: bool| {
        nodes
            .iter()
            .zip(weights)
            .map(|(n, w)| {
                let a = if tcp { n.tcp } else { n.http };
                format!("      - {{ address: \"{a}\", weight: {w} }}\n")
            })
            .collect::<String>()
    };
    let health = "    passiveHealth: { consecutiveFailures: 3, baseEjectionTime: 5s, maxEjectionTime: 20s }\n";
    let b = v == Variant::B;
    let extra_listener = if b {
        format!(
            "  - name: extra\n    address: \"127.0.0.1:{}\"\n",
            ports.extra
        )
    } else {
        String::new()
    };
    let extra_route = if b {
        "  - name: extra\n    match: { pathPrefix: /extra }\n    cluster: extra\n".to_string()
    } else {
        String::new()
    };
    let extra_cluster = if b {
        format!(
            "  - name: extra\n    endpoints: [{{ address: \"{}\" }}]\n",
            extra.http
        )
    } else {
        String::new()
    };
    format!(
        "# Soak configuration {v:?} (bench/soak): written by the driver, reloaded every 10 s.\n\
         version: 1\n\
         workers: 0\n\
         reload: {{ watch: false }}\n\
         shutdown: {{ drainTimeout: 5s }}\n\
         admin: {{ address: \"127.0.0.1:{admin}\" }}\n\
         accessLog: {{ path: access.log }}\n\
         listeners:\n\
         \x20 - name: plain\n\
         \x20   address: \"127.0.0.1:{plain}\"\n\
         \x20 - name: tls\n\
         \x20   address: \"127.0.0.1:{tls}\"\n\
         \x20   tls: {{ certificates: [{{ cert: soak.pem, key: soak.key }}] }}\n\
         {extra_listener}\
         routes:\n\
         {extra_route}\
         \x20 - name: grpc\n\
         \x20   match: {{ pathPrefix: /soak.Echo/ }}\n\
         \x20   cluster: grpc\n\
         \x20 - name: web\n\
         \x20   cluster: web\n\
         clusters:\n\
         \x20 - name: web\n\
         \x20   endpoints:\n{web}{health}\
         \x20 - name: grpc\n\
         \x20   protocol: http2\n\
         \x20   endpoints:\n{web}{health}\
         \x20 - name: tcp\n\
         \x20   endpoints:\n{tcp}{health}\
         {extra_cluster}\
         l4:\n\
         \x20 listeners:\n\
         \x20   - name: tcp\n\
         \x20     address: \"127.0.0.1:{l4}\"\n\
         \x20     cluster: tcp\n",
        admin = ports.admin,
        plain = ports.plain,
        tls = ports.tls,
        l4 = ports.l4,
        web = endpoints(false),
        tcp = endpoints(true),
    )
}

/// A CA and a leaf certificate for `soak.test`, written as `soak.pem`/`soak.key` into
/// `dir`; returns the CA's PEM and DER for the clients.
pub fn write_certs(dir: &Path) -> Result<(String, Vec<u8>), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "soak CA");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(e)?;
    let mut params = rcgen::CertificateParams::new(vec!["soak.test".to_string()]).map_err(e)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "soak.test");
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = params.signed_by(&key, &ca).map_err(e)?;
    std::fs::write(dir.join("soak.pem"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("soak.key"), key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok((ca.pem(), ca.der().to_vec()))
}

/// The gateway process.
pub struct Gateway {
    child: Child,
    pub pid: u32,
    pub dir: PathBuf,
    pub ports: Ports,
}

impl Gateway {
    /// Writes `config` and starts `binary` on it; returns once `/readyz` answers 200.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        ports: Ports,
        config: &str,
    ) -> Result<Gateway, String> {
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let stderr =
            std::fs::File::create(dir.join("gateway.stderr")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&path)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        let mut gw = Gateway {
            pid: child.id(),
            child,
            dir: dir.to_path_buf(),
            ports,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = gw.admin("GET", "/readyz", "").await {
                return Ok(gw);
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                return Err(format!(
                    "the gateway exited at start: {status}; see {}",
                    dir.join("gateway.stderr").display()
                ));
            }
            if tokio::time::Instant::now() > deadline {
                return Err("the gateway was not ready within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One request to the admin API on a new connection: (status, body).
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.ports.admin).into();
        let exchange = async {
            let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "admin")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| "admin request timed out".to_string())?
    }

    /// Replaces the config file (write, then rename, as editors and ConfigMaps do) and
    /// reloads it with `POST /reload`; returns the new generation.
    pub async fn reload(&self, config: &str) -> Result<u64, String> {
        let path = self.dir.join("gateway.yaml");
        let tmp = self.dir.join("gateway.yaml.new");
        std::fs::write(&tmp, config).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        let (status, body) = self.admin("POST", "/reload", "").await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["ok"] != true {
            return Err(format!("reload answered {status}: {body}"));
        }
        v["generation"]
            .as_u64()
            .ok_or_else(|| format!("no generation in {body}"))
    }

    /// The value of every series of metric `name` whose labels contain all of `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Result<f64, String> {
        let (_, text) = self.admin("GET", "/metrics", "").await?;
        let prefix = format!("{name}{{");
        Ok(text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (set, value) = rest.split_once("} ")?;
                labels
                    .iter()
                    .all(|want| set.contains(want))
                    .then(|| value.trim().parse::<f64>().ok())?
            })
            .sum())
    }

    /// (RSS in KiB, open descriptors) of the gateway process.
    pub fn sample(&self) -> Result<(u64, usize), String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map_err(|e| e.to_string())?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map_err(|e| e.to_string())?
            .count();
        Ok((rss, fds))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then the exit code (None if it had to be killed after `limit`).
    pub fn stop(mut self, limit: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
