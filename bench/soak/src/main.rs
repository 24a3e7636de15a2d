//! Soak driver (bench/soak/run, issue 14 item 6): mixed HTTP/1.1, HTTP/2 (h2c and TLS),
//! HTTPS, WebSocket, gRPC (unary and bidi) and L4 traffic through the release gateway
//! binary on loopback for a bounded time, a hot reload every 10 s alternating between two
//! configurations that really differ, and one upstream node killed and restarted every
//! minute. Samples the gateway's RSS and descriptors every 10 s and fails if they keep
//! growing after warm-up, or if any exchange fails that the killed node does not explain.
//! See bench/README.md, "Soak".

mod gateway;
mod grpc;
mod nodes;
mod report;
mod traffic;

use gateway::{Gateway, Ports, Variant};
use nodes::Node;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use traffic::{Ctx, Kind, Phase};

static START: OnceLock<std::time::Instant> = OnceLock::new();

/// Seconds since the driver started: the one clock of every event in the report.
pub fn now() -> f64 {
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

/// When the victim goes down and comes back, within each minute of the run.
const KILL_AT: f64 = 25.0;
const RESTART_AT: f64 = 40.0;
const RELOAD_EVERY: f64 = 10.0;
const SAMPLE_EVERY: f64 = 10.0;
/// Samples fall between reloads, not on them.
const SAMPLE_OFFSET: f64 = 5.0;

struct Args {
    gateway: PathBuf,
    minutes: f64,
    out: PathBuf,
    max_requests: i64,
    keep: bool,
}

const USAGE: &str = "usage: soak --gateway PATH [--minutes N (10)] [--out DIR (bench/results)] \
                     [--max-requests N (5000000)] [--keep]";

fn args() -> Result<Args, String> {
    let mut a = Args {
        gateway: PathBuf::new(),
        minutes: 10.0,
        out: PathBuf::from("bench/results"),
        max_requests: 5_000_000,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--gateway" => a.gateway = PathBuf::from(value()?),
            "--minutes" => {
                a.minutes = value()?.parse().map_err(|e| format!("--minutes: {e}"))?;
                if !(a.minutes > 0.0 && a.minutes <= 24.0 * 60.0) {
                    return Err("--minutes must be more than 0 and at most a day".into());
                }
            }
            "--out" => a.out = PathBuf::from(value()?),
            "--max-requests" => {
                a.max_requests = value()?
                    .parse()
                    .map_err(|e| format!("--max-requests: {e}"))?
            }
            "--keep" => a.keep = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.gateway.as_os_str().is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    now();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn tls_config(ca_der: &[u8], alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| e.to_string())?;
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(c))
}

/// The victim's `gateway_endpoint_ejections_total` in clusters web, grpc and tcp.
async fn ejections(g: &Gateway, victim: &Node) -> Vec<f64> {
    let http = format!("endpoint=\"{}\"", victim.http);
    let tcp = format!("endpoint=\"{}\"", victim.tcp);
    let mut out = Vec::new();
    for (cluster, ep) in [("web", &http), ("grpc", &http), ("tcp", &tcp)] {
        let c = format!("cluster=\"{cluster}\"");
        let v = g
            .metric("gateway_endpoint_ejections_total", &[&c, ep])
            .await;
        out.push(v.unwrap_or(f64::NAN));
    }
    out
}

/// Sleeps until `at` seconds after `t0` (the start of traffic); false if that is past `end`.
async fn until(t0: Instant, at: f64, end: Instant) -> bool {
    let when = t0 + Duration::from_secs_f64(at);
    if when >= end {
        return false;
    }
    tokio::time::sleep_until(when).await;
    true
}

async fn run(args: Args) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("gateway-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_pem, ca_der) = gateway::write_certs(&dir)?;
    let p = gateway::pick_ports(13)?;
    let ports = Ports {
        plain: p[0],
        tls: p[1],
        extra: p[2],
        admin: p[3],
        l4: p[4],
    };
    let at = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 1], p[i]));
    let web = vec![
        Node::start("a", at(5), at(6), false)
            .await
            .map_err(|e| e.to_string())?,
        Node::start("b", at(7), at(8), false)
            .await
            .map_err(|e| e.to_string())?,
        Node::start("c", at(9), at(10), true)
            .await
            .map_err(|e| e.to_string())?,
    ];
    let x = Node::start("x", at(11), at(12), false)
        .await
        .map_err(|e| e.to_string())?;
    let victim = web[2].clone();
    let config = |v: Variant| gateway::config(v, &ports, &web, &x);
    let load_before = report::loadavg();
    let gw = Gateway::start(&args.gateway, &dir, ports, &config(Variant::A)).await?;
    let gw_version = std::process::Command::new(&args.gateway)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "soak: gateway {gw_version} (pid {}) on 127.0.0.1:{{plain {}, tls {}, admin {}, l4 {}}}; {} minutes; work dir {}",
        gw.pid,
        ports.plain,
        ports.tls,
        ports.admin,
        ports.l4,
        args.minutes,
        dir.display()
    );

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let t0 = Instant::now();
    let t0_clock = now();
    let end = t0 + duration;
    let ctx = Arc::new(Ctx {
        ports,
        end,
        stats: traffic::Stats::default(),
        tls_h1: tls_config(&ca_der, b"http/1.1")?,
        tls_h2: tls_config(&ca_der, b"h2")?,
        ca_pem,
        phase: tokio::sync::RwLock::new(Phase {
            variant: Variant::A,
            since: t0,
        }),
        budget: AtomicI64::new(args.max_requests),
    });
    let gw = Arc::new(tokio::sync::Mutex::new(Some(gw)));

    // The traffic: about 1,300 exchanges a second in all.
    let ms = Duration::from_millis;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        workers.spawn(traffic::http(
            ctx.clone(),
            Kind::Http1,
            w,
            false,
            false,
            1,
            ms(10),
        ));
    }
    for w in 0..2 {
        workers.spawn(traffic::http(
            ctx.clone(),
            Kind::H2c,
            w,
            false,
            true,
            8,
            ms(80),
        ));
        workers.spawn(traffic::http(
            ctx.clone(),
            Kind::Https1,
            w,
            true,
            false,
            1,
            ms(20),
        ));
        workers.spawn(traffic::http(
            ctx.clone(),
            Kind::H2Tls,
            w,
            true,
            true,
            8,
            ms(80),
        ));
        workers.spawn(traffic::grpc_unary(ctx.clone(), w, false, ms(20)));
        workers.spawn(traffic::grpc_bidi(ctx.clone(), w, false, ms(50)));
        workers.spawn(traffic::grpc_bidi(ctx.clone(), w, true, ms(50)));
    }
    workers.spawn(traffic::https_new(ctx.clone(), 0, ms(100)));
    workers.spawn(traffic::grpc_unary(ctx.clone(), 0, true, ms(20)));
    for w in 0..3 {
        workers.spawn(traffic::websocket(ctx.clone(), w, false, ms(50)));
    }
    workers.spawn(traffic::websocket(ctx.clone(), 0, true, ms(50)));
    for w in 0..4 {
        workers.spawn(traffic::l4(ctx.clone(), w, ms(50)));
    }
    workers.spawn(traffic::extra(ctx.clone(), ms(100)));

    // RSS and descriptors every 10 s, between the reloads.
    let sampler = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0u32;
            loop {
                let at = SAMPLE_OFFSET + SAMPLE_EVERY * f64::from(i);
                if !until(t0, at, end + Duration::from_millis(1)).await {
                    break;
                }
                // Descriptors: the least of five readings 100 ms apart, so that a client
                // session reconnecting at the sampling moment does not count (a leak
                // raises the least reading too).
                let mut reading: Option<(u64, usize)> = None;
                for n in 0..5 {
                    if n > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if let Some(Ok((rss, fds))) = gw.lock().await.as_ref().map(|g| g.sample()) {
                        reading = Some((rss, reading.map_or(fds, |(_, f)| f.min(fds))));
                    }
                }
                if let Some((rss_kib, fds)) = reading {
                    samples.push(report::Sample {
                        t: at,
                        rss_kib,
                        fds,
                    });
                }
                i += 1;
            }
            samples
        })
    };

    // A reload every 10 s, alternating A and B.
    let reloader = {
        let (gw, ctx) = (gw.clone(), ctx.clone());
        let texts = [config(Variant::A), config(Variant::B)];
        tokio::spawn(async move {
            let mut events = Vec::new();
            let mut i = 1u32;
            while until(
                t0,
                RELOAD_EVERY * f64::from(i),
                end - Duration::from_secs(2),
            )
            .await
            {
                let mut phase = ctx.phase.write().await;
                let next = phase.variant.other();
                let start = now();
                let text = &texts[usize::from(next == Variant::B)];
                let result = match gw.lock().await.as_ref() {
                    Some(g) => g.reload(text).await,
                    None => Err("no gateway".into()),
                };
                let took = now() - start;
                match &result {
                    Ok(_) => {
                        ctx.stats.ok(Kind::Reload);
                        *phase = Phase {
                            variant: next,
                            since: Instant::now(),
                        };
                    }
                    Err(e) => ctx.stats.fail(traffic::Failure {
                        kind: Kind::Reload,
                        id: format!("reload-{i}"),
                        start,
                        end: now(),
                        error: e.clone(),
                        local: None,
                    }),
                }
                drop(phase);
                events.push(report::Reload {
                    t: start - t0_clock,
                    to: format!("{next:?}"),
                    generation: result.as_ref().ok().copied(),
                    error: result.err(),
                    took,
                });
                i += 1;
            }
            events
        })
    };

    // The victim: down from 25 s to 40 s of every minute.
    let killer = {
        let (gw, victim) = (gw.clone(), victim.clone());
        tokio::spawn(async move {
            let mut outages = Vec::new();
            let mut minute = 0u32;
            loop {
                let base = 60.0 * f64::from(minute);
                // Only whole outages: the victim is back before the run ends.
                if base + RESTART_AT >= duration.as_secs_f64()
                    || !until(t0, base + KILL_AT, end).await
                {
                    break;
                }
                let before = match gw.lock().await.as_ref() {
                    Some(g) => ejections(g, &victim).await,
                    None => break,
                };
                let killed = victim.kill().await - t0_clock;
                until(t0, base + RESTART_AT, end + Duration::from_secs(60)).await;
                let after = match gw.lock().await.as_ref() {
                    Some(g) => ejections(g, &victim).await,
                    None => Vec::new(),
                };
                let restarted = victim
                    .restart()
                    .await
                    .map(|t| t - t0_clock)
                    .map_err(|e| e.to_string());
                outages.push(report::Outage {
                    killed,
                    restarted: restarted.clone().ok(),
                    restart_error: restarted.err(),
                    ejections: before
                        .iter()
                        .zip(after.iter())
                        .map(|(b, a)| a - b)
                        .collect(),
                });
                minute += 1;
            }
            outages
        })
    };

    // Every loop ends by itself at `end`; the last exchanges get their timeout on top.
    let joined = tokio::time::timeout(duration + Duration::from_secs(60), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        workers.abort_all();
    }
    let samples = sampler.await.map_err(|e| e.to_string())?;
    let reloads = reloader.await.map_err(|e| e.to_string())?;
    let outages = killer.await.map_err(|e| e.to_string())?;
    let traffic_secs = t0.elapsed().as_secs_f64();
    let load_after = report::loadavg();

    let mut gw = gw.lock().await.take().ok_or("no gateway at the end")?;
    let alive = gw.alive();
    let final_sample = gw.sample().ok();
    let exit = gw.stop(Duration::from_secs(15));

    let deaths: Vec<nodes::Death> = victim
        .deaths()
        .into_iter()
        .map(|mut d| {
            d.killed -= t0_clock;
            d.restarted = d.restarted.map(|r| r - t0_clock);
            d
        })
        .collect();
    let input = report::Input {
        minutes: args.minutes,
        traffic_secs,
        t0_clock,
        gateway_version: gw_version,
        stats: &ctx.stats,
        samples,
        final_sample,
        reloads,
        outages,
        deaths,
        victim_addrs: vec![victim.http.to_string(), victim.tcp.to_string()],
        access_log: dir.join("access.log"),
        stderr: dir.join("gateway.stderr"),
        alive_at_end: alive,
        exit_code: exit,
        budget_left: ctx.budget.load(std::sync::atomic::Ordering::Relaxed),
        load_before,
        load_after,
        joined: joined.is_ok(),
    };
    let verdict = report::write(&input, &args.out)?;
    if args.keep || !verdict {
        eprintln!("soak: work dir kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(verdict)
}
