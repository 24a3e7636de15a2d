//! The soak's verdict and report: which failures the killed node explains, whether RSS and
//! descriptors kept growing after warm-up, and `soak.json` / `soak.md` with every figure.

use crate::nodes::Death;
use crate::traffic::{Failure, Kind, Stats, OP_TIMEOUT};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since traffic started.
    pub t: f64,
    pub rss_kib: u64,
    pub fds: usize,
}

#[derive(Debug, Clone)]
pub struct Reload {
    pub t: f64,
    pub to: String,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub took: f64,
}

#[derive(Debug, Clone)]
pub struct Outage {
    pub killed: f64,
    pub restarted: Option<f64>,
    pub restart_error: Option<String>,
    /// Ejections of the victim during the outage, in clusters web, grpc and tcp.
    pub ejections: Vec<f64>,
}

pub struct Input<'a> {
    pub minutes: f64,
    pub traffic_secs: f64,
    /// The driver clock (`now()`) when traffic started; the report counts from there.
    pub t0_clock: f64,
    pub gateway_version: String,
    pub stats: &'a Stats,
    pub samples: Vec<Sample>,
    pub final_sample: Option<(u64, usize)>,
    pub reloads: Vec<Reload>,
    pub outages: Vec<Outage>,
    /// Relative to traffic start.
    pub deaths: Vec<Death>,
    /// The victim's HTTP and TCP addresses, as the access log names upstreams.
    pub victim_addrs: Vec<String>,
    pub access_log: PathBuf,
    pub stderr: PathBuf,
    pub alive_at_end: bool,
    pub exit_code: Option<i32>,
    pub budget_left: i64,
    pub load_before: String,
    pub load_after: String,
    pub joined: bool,
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---- growth ------------------------------------------------------------------------------

/// RSS must not grow by more than this over the second half (fitted), KiB …
const RSS_GROWTH_FLOOR_KIB: f64 = 2048.0;
/// … or this share of its mean there, whichever is more.
const RSS_GROWTH_SHARE: f64 = 0.05;
/// Descriptors: the same, in descriptors and share.
const FD_GROWTH_FLOOR: f64 = 10.0;
const FD_GROWTH_SHARE: f64 = 0.10;
/// Fewer samples than this in the second half: growth is not judged (the run is too short).
const MIN_SAMPLES: usize = 6;

#[derive(Debug)]
struct Growth {
    samples: usize,
    slope_per_min: f64,
    fitted: f64,
    mean: f64,
    limit: f64,
    ok: Option<bool>,
}

/// Least-squares line through the samples of the second half of the run (the first half
/// is warm-up): its growth across that half, against the limit.
fn growth(
    samples: &[Sample],
    half: f64,
    y: impl Fn(&Sample) -> f64,
    floor: f64,
    share: f64,
) -> Growth {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= half)
        .map(|s| (s.t / 60.0, y(s)))
        .collect();
    let n = pts.len() as f64;
    let mean_x = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let mean = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mean_x) * (p.1 - mean)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let span = match (pts.first(), pts.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    let fitted = slope * span;
    let limit = floor.max(share * mean);
    Growth {
        samples: pts.len(),
        slope_per_min: slope,
        fitted,
        mean,
        limit,
        ok: (pts.len() >= MIN_SAMPLES).then_some(fitted <= limit),
    }
}

// ---- the access log ----------------------------------------------------------------------

/// One access-log line that concerns a failed exchange.
#[derive(Debug, Clone)]
struct Logged {
    upstream: Option<String>,
    error: Option<String>,
    status: Option<u64>,
    /// Seconds since traffic started.
    t: f64,
}

struct AccessLog {
    lines: u64,
    by_error: BTreeMap<String, u64>,
    by_id: HashMap<String, Vec<Logged>>,
    by_client: HashMap<String, Vec<Logged>>,
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (`2026-12-01T20:37:34.525Z`).
fn epoch(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min, s) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

fn read_access_log(
    path: &Path,
    ids: &HashSet<&str>,
    clients: &HashSet<String>,
    t0_epoch: f64,
) -> AccessLog {
    let mut log = AccessLog {
        lines: 0,
        by_error: BTreeMap::new(),
        by_id: HashMap::new(),
        by_client: HashMap::new(),
    };
    let Ok(file) = std::fs::File::open(path) else {
        return log;
    };
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        log.lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            *log.by_error.entry("(not JSON)".into()).or_default() += 1;
            continue;
        };
        let error = v["error"].as_str().map(str::to_string);
        *log.by_error
            .entry(error.clone().unwrap_or_else(|| "(none)".into()))
            .or_default() += 1;
        let id = v["requestId"].as_str();
        let client = v["clientAddr"].as_str();
        let wanted_id = id.filter(|i| ids.contains(i));
        let wanted_client = client.filter(|c| v["listener"] == "tcp" && clients.contains(*c));
        if wanted_id.is_none() && wanted_client.is_none() {
            continue;
        }
        let entry = Logged {
            upstream: v["upstream"].as_str().map(str::to_string),
            error,
            status: v["status"].as_u64(),
            t: v["ts"]
                .as_str()
                .and_then(epoch)
                .map_or(f64::NAN, |e| e - t0_epoch),
        };
        if let Some(i) = wanted_id {
            log.by_id
                .entry(i.to_string())
                .or_default()
                .push(entry.clone());
        }
        if let Some(c) = wanted_client {
            log.by_client.entry(c.to_string()).or_default().push(entry);
        }
    }
    log
}

// ---- which failures the killed node explains ---------------------------------------------

/// A failure is explained by the kill when the victim was part of it and it overlapped an
/// outage, in one of two ways:
/// - the victim had received it (its request id, or its session's id, is among those the
///   victim saw in the life that ended) and the kill fell between its start and its end:
///   it was in flight on the victim when the victim died;
/// - it overlapped the time the victim was down (from the kill to the restart), and the
///   gateway's access log names the victim as its upstream: it was routed to the victim
///   while it was down (before passive health ejected it, or after an ejection ran out).
///
/// Everything else is unexplained: failures on the other nodes, failures long after a
/// restart, reloads that failed, wrong answers, timeouts, anything outside an outage.
fn explain(
    f: &Failure,
    deaths: &[Death],
    log: &AccessLog,
    victim: &[String],
) -> Option<&'static str> {
    if deaths
        .iter()
        .any(|d| f.start <= d.killed && f.end >= d.killed && d.ids.contains(&f.id))
    {
        return Some("in flight on the victim when it was killed");
    }
    let names_victim = |l: &Logged| l.upstream.as_ref().is_some_and(|u| victim.contains(u));
    let logged_victim = log
        .by_id
        .get(&f.id)
        .is_some_and(|ls| ls.iter().any(names_victim))
        || f.local.is_some_and(|a| {
            log.by_client.get(&a.to_string()).is_some_and(|ls| {
                ls.iter()
                    .any(|l| names_victim(l) && l.t >= f.start - 2.0 && l.t <= f.end + 2.0)
            })
        });
    let overlaps = deaths.iter().any(|d| {
        let back = d.restarted.unwrap_or(f64::INFINITY);
        f.start <= back && f.end >= d.killed
    });
    (overlaps && logged_victim).then_some("routed to the victim while it was down")
}

// ---- the gateway's own log -------------------------------------------------------------------

struct OwnLog {
    by_level: BTreeMap<String, u64>,
    /// (level, message) of WARN and ERROR lines, with counts.
    notable: BTreeMap<(String, String), u64>,
    panics: u64,
}

fn read_stderr(path: &Path) -> OwnLog {
    let mut out = OwnLog {
        by_level: BTreeMap::new(),
        notable: BTreeMap::new(),
        panics: 0,
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        if line.contains("panicked") {
            out.panics += 1;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            *out.by_level.entry("(not JSON)".into()).or_default() += 1;
            continue;
        };
        let level = v["level"].as_str().unwrap_or("?").to_string();
        *out.by_level.entry(level.clone()).or_default() += 1;
        if level == "WARN" || level == "ERROR" {
            let msg = v["fields"]["message"].as_str().unwrap_or("?").to_string();
            *out.notable.entry((level, msg)).or_default() += 1;
        }
    }
    out
}

// ---- the report --------------------------------------------------------------------------

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// Judges the run, writes `soak.json` and `soak.md` into `out`, prints the summary, and
/// returns whether it passed.
pub fn write(i: &Input<'_>, out: &Path) -> Result<bool, String> {
    let t0_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
        - crate::now()
        + i.t0_clock;
    let failures: Vec<Failure> = i
        .stats
        .failures()
        .into_iter()
        .map(|mut f| {
            f.start -= i.t0_clock;
            f.end -= i.t0_clock;
            f
        })
        .collect();
    let ids: HashSet<&str> = failures.iter().map(|f| f.id.as_str()).collect();
    let clients: HashSet<String> = failures
        .iter()
        .filter_map(|f| f.local.map(|a| a.to_string()))
        .collect();
    let log = read_access_log(&i.access_log, &ids, &clients, t0_epoch);
    let own = read_stderr(&i.stderr);

    let mut explained: HashMap<Kind, u64> = HashMap::new();
    let mut unexplained: Vec<(&Failure, Option<&Logged>)> = Vec::new();
    let mut examples: Vec<(&Failure, &'static str)> = Vec::new();
    for f in &failures {
        match explain(f, &i.deaths, &log, &i.victim_addrs) {
            Some(why) => {
                *explained.entry(f.kind).or_default() += 1;
                if examples.len() < 20 {
                    examples.push((f, why));
                }
            }
            None => unexplained.push((f, log.by_id.get(&f.id).and_then(|l| l.first()))),
        }
    }

    // Failures by what went wrong (the message, without ids and addresses).
    let mut by_error: BTreeMap<String, u64> = BTreeMap::new();
    for f in &failures {
        let what: String = f.error.chars().take(100).collect();
        *by_error
            .entry(format!("{}: {what}", f.kind.name()))
            .or_default() += 1;
    }

    let half = i.minutes * 60.0 / 2.0;
    let rss = growth(
        &i.samples,
        half,
        |s| s.rss_kib as f64,
        RSS_GROWTH_FLOOR_KIB,
        RSS_GROWTH_SHARE,
    );
    let fds = growth(
        &i.samples,
        half,
        |s| s.fds as f64,
        FD_GROWTH_FLOOR,
        FD_GROWTH_SHARE,
    );

    // The verdict.
    let mut reasons: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    let (mut total_ok, mut total_failed) = (0u64, 0u64);
    for k in Kind::ALL {
        let (ok, failed) = i.stats.counts(k);
        total_ok += ok;
        total_failed += failed;
        let ex = explained.get(&k).copied().unwrap_or(0);
        let kept = failures.iter().filter(|f| f.kind == k).count() as u64;
        // Failures beyond those kept in full cannot be explained.
        let unex = failed - ex.min(failed);
        if ok == 0 {
            reasons.push(format!("no {} exchange succeeded", k.name()));
        }
        kinds.push(json!({
            "kind": k.name(), "what": k.what(), "ok": ok, "failed": failed,
            "explained": ex, "unexplained": unex, "kept": kept,
        }));
    }
    if !unexplained.is_empty() || (total_failed as usize) > failures.len() {
        reasons.push(format!(
            "{} failures the killed upstream does not explain",
            unexplained.len() as u64 + total_failed - failures.len() as u64
        ));
    }
    for (name, unit, g) in [("RSS", " KiB", &rss), ("descriptors", "", &fds)] {
        if g.ok == Some(false) {
            reasons.push(format!(
                "{name} kept growing after warm-up: {:+.1}{unit} over the second half (limit {:.1}{unit})",
                g.fitted, g.limit
            ));
        }
    }
    let reload_failures = i.reloads.iter().filter(|r| r.error.is_some()).count();
    if reload_failures > 0 {
        reasons.push(format!("{reload_failures} reloads failed"));
    }
    for (n, o) in i.outages.iter().enumerate() {
        if let Some(e) = &o.restart_error {
            reasons.push(format!("outage {n}: the victim could not restart: {e}"));
        }
        if o.ejections.first().is_none_or(|e| e.is_nan() || *e < 1.0) {
            reasons.push(format!(
                "outage {n}: passive health did not eject the victim from cluster web"
            ));
        }
    }
    if !i.alive_at_end {
        reasons.push("the gateway was not running at the end".into());
    }
    if i.exit_code != Some(0) {
        reasons.push(format!(
            "the gateway's exit on SIGTERM was {:?}, not 0",
            i.exit_code
        ));
    }
    if own.panics > 0 {
        reasons.push(format!("{} panics in the gateway's log", own.panics));
    }
    if !i.joined {
        reasons.push("some client loops did not finish by the end plus a minute".into());
    }
    if i.budget_left <= 0 {
        reasons.push("the request budget ran out before the time (raise --max-requests)".into());
    }
    let passed = reasons.is_empty();

    let growth_json = |g: &Growth, unit: &str| {
        json!({
            "unit": unit, "samplesSecondHalf": g.samples, "slopePerMinute": g.slope_per_min,
            "fittedGrowthSecondHalf": g.fitted, "meanSecondHalf": g.mean, "limit": g.limit,
            "ok": g.ok,
        })
    };
    let doc = json!({
        "passed": passed,
        "reasons": reasons,
        "minutes": i.minutes,
        "trafficSeconds": i.traffic_secs,
        "gateway": i.gateway_version,
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "loadBefore": i.load_before, "loadAfter": i.load_after,
        },
        "totals": { "ok": total_ok, "failed": total_failed, "explained": explained.values().sum::<u64>() },
        "kinds": kinds,
        "failuresByError": by_error,
        "growth": { "rss": growth_json(&rss, "KiB"), "descriptors": growth_json(&fds, "descriptors") },
        "rules": {
            "warmUp": "the first half of the run",
            "growth": format!(
                "least-squares line through the samples of the second half; fails if its growth across that half exceeds max({RSS_GROWTH_FLOOR_KIB} KiB, {}% of the mean) for RSS, max({FD_GROWTH_FLOOR}, {}% of the mean) for descriptors; not judged with fewer than {MIN_SAMPLES} samples",
                RSS_GROWTH_SHARE * 100.0, FD_GROWTH_SHARE * 100.0),
            "explained": "received by the victim and in flight when it was killed; or overlapping the victim's outage with the gateway's access log naming the victim as upstream",
            "timeout": format!("an exchange without an answer within {OP_TIMEOUT:?} is a failure"),
        },
        "samples": i.samples.iter().map(|s| json!({"t": s.t, "rssKiB": s.rss_kib, "fds": s.fds})).collect::<Vec<_>>(),
        "finalSample": i.final_sample.map(|(r, f)| json!({"rssKiB": r, "fds": f})),
        "reloads": {
            "count": i.reloads.len(),
            "failed": reload_failures,
            "maxSeconds": i.reloads.iter().map(|r| r.took).fold(0.0, f64::max),
            "events": i.reloads.iter().map(|r| json!({"t": r.t, "to": r.to, "generation": r.generation, "error": r.error, "seconds": r.took})).collect::<Vec<_>>(),
        },
        "outages": i.outages.iter().zip(i.deaths.iter().map(Some).chain(std::iter::repeat(None))).map(|(o, d)| json!({
            "killed": o.killed, "restarted": o.restarted, "restartError": o.restart_error,
            "ejections": {"web": o.ejections.first(), "grpc": o.ejections.get(1), "tcp": o.ejections.get(2)},
            "idsReceivedInTheLifeItEnded": d.map(|d| d.ids.len()),
            "failuresOverlapping": failures.iter().filter(|f| d.is_some_and(|d| f.end >= d.killed && f.start <= d.restarted.unwrap_or(f64::INFINITY) + OP_TIMEOUT.as_secs_f64())).count(),
        })).collect::<Vec<_>>(),
        "accessLog": { "lines": log.lines, "byError": log.by_error },
        "gatewayLog": {
            "byLevel": own.by_level,
            "warningsAndErrors": own.notable.iter().map(|((l, m), n)| json!({"level": l, "message": m, "count": n})).collect::<Vec<_>>(),
            "panics": own.panics,
        },
        "exitCode": i.exit_code,
        "unexplained": unexplained.iter().take(200).map(|(f, l)| failure_json(f, None, *l)).collect::<Vec<_>>(),
        "explainedExamples": examples.iter().map(|(f, why)| failure_json(f, Some(why), None)).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(out.join("soak.json"), text + "\n").map_err(|e| e.to_string())?;
    let md = markdown(i, &doc, &rss, &fds);
    std::fs::write(out.join("soak.md"), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    Ok(passed)
}

fn failure_json(f: &Failure, why: Option<&str>, logged: Option<&Logged>) -> Value {
    json!({
        "kind": f.kind.name(), "id": f.id, "start": f.start, "end": f.end, "error": f.error,
        "local": f.local.map(|a| a.to_string()), "why": why,
        "accessLog": logged.map(|l| json!({"upstream": l.upstream, "status": l.status, "error": l.error, "t": l.t})),
    })
}

fn markdown(i: &Input<'_>, doc: &Value, rss: &Growth, fds: &Growth) -> String {
    let mut s = String::new();
    let passed = doc["passed"] == true;
    let _ = writeln!(s, "# Soak: {}\n", if passed { "passed" } else { "FAILED" });
    let _ = writeln!(
        s,
        "`bench/soak/run --minutes {}`: {:.0} s of traffic through `{}` on a {}-CPU machine \
         (load average {} before, {} after). Written by the soak driver; the raw figures are \
         in `soak.json` beside this file.\n",
        i.minutes,
        i.traffic_secs,
        i.gateway_version,
        doc["machine"]["cpus"],
        i.load_before,
        i.load_after
    );
    if let Some(r) = doc["reasons"].as_array().filter(|r| !r.is_empty()) {
        let _ = writeln!(s, "Why it failed:\n");
        for r in r {
            let _ = writeln!(s, "- {}", r.as_str().unwrap_or_default());
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Exchanges by kind\n");
    let _ = writeln!(
        s,
        "| kind | what | ok | failed | explained by the kill | unexplained |"
    );
    let _ = writeln!(s, "| --- | --- | ---: | ---: | ---: | ---: |");
    for k in doc["kinds"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            k["kind"].as_str().unwrap_or_default(),
            k["what"].as_str().unwrap_or_default(),
            k["ok"],
            k["failed"],
            k["explained"],
            k["unexplained"]
        );
    }
    let t = &doc["totals"];
    let _ = writeln!(
        s,
        "| **all** | | **{}** | **{}** | **{}** | |\n",
        t["ok"], t["failed"], t["explained"]
    );
    if let Some(by) = doc["failuresByError"].as_object().filter(|b| !b.is_empty()) {
        let _ = writeln!(s, "Failures by error:\n");
        for (what, n) in by {
            let _ = writeln!(s, "- {what} ×{n}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "A failure is explained by the kill when the killed node was part of it and it \
         overlapped an outage: either the node had received it (its request or session id) \
         and was killed while it was in flight, or it overlapped the outage (kill to \
         restart) and the gateway's access log names the node as its upstream. Every other \
         failure, wrong answer or exchange without an answer within {OP_TIMEOUT:?} fails \
         the soak.\n"
    );
    let _ = writeln!(s, "## The killed upstream\n");
    let _ = writeln!(
        s,
        "Node c (one of three endpoints of clusters `web`, `grpc` and `tcp`) is killed at \
         0:25 of every minute (both its ports closed, every connection dropped) and \
         restarted at 0:40. Passive health: 3 consecutive failures eject for 5 s × n, at \
         most 20 s.\n"
    );
    let _ = writeln!(
        s,
        "| killed at (s) | back at (s) | ejections web / grpc / tcp | failures overlapping |"
    );
    let _ = writeln!(s, "| ---: | ---: | --- | ---: |");
    for o in doc["outages"].as_array().into_iter().flatten() {
        let e = &o["ejections"];
        let _ = writeln!(
            s,
            "| {:.1} | {} | {} / {} / {} | {} |",
            o["killed"].as_f64().unwrap_or(f64::NAN),
            o["restarted"]
                .as_f64()
                .map_or("—".into(), |r| format!("{r:.1}")),
            e["web"],
            e["grpc"],
            e["tcp"],
            o["failuresOverlapping"]
        );
    }
    let r = &doc["reloads"];
    let _ = writeln!(
        s,
        "\n## Reloads\n\n{} reloads (`POST /reload` every 10 s, alternating configuration A — \
         weights 1:1:1 — and B — weights 3:2:1, plus a listener, a route and a cluster), {} \
         failed, the slowest took {:.3} s. `reload-route` and `reload-listener` above check \
         that each one took effect.\n",
        r["count"],
        r["failed"],
        r["maxSeconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(s, "## RSS and descriptors of the gateway\n");
    let _ = writeln!(
        s,
        "Sampled every 10 s (at 5 s, 15 s, …, between reloads) from /proc. Warm-up is the \
         first half; over the second half a least-squares line must not grow by more than \
         max(2 MiB, 5% of the mean) for RSS and max(10, 10% of the mean) for descriptors.\n"
    );
    let _ = writeln!(s, "| | samples | mean | slope per minute | fitted growth over the second half | limit | verdict |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let verdict = |g: &Growth| match g.ok {
        Some(true) => "flat",
        Some(false) => "GROWING",
        None => "not judged (run too short)",
    };
    let _ = writeln!(
        s,
        "| RSS (MiB) | {} | {:.1} | {:+.3} | {:+.2} | {:.2} | {} |",
        rss.samples,
        mib(rss.mean),
        mib(rss.slope_per_min),
        mib(rss.fitted),
        mib(rss.limit),
        verdict(rss)
    );
    let _ = writeln!(
        s,
        "| descriptors | {} | {:.1} | {:+.2} | {:+.1} | {:.1} | {} |\n",
        fds.samples,
        fds.mean,
        fds.slope_per_min,
        fds.fitted,
        fds.limit,
        verdict(fds)
    );
    let _ = writeln!(s, "| t (s) | RSS (MiB) | descriptors |");
    let _ = writeln!(s, "| ---: | ---: | ---: |");
    for x in &i.samples {
        let _ = writeln!(
            s,
            "| {:.0} | {:.1} | {} |",
            x.t,
            mib(x.rss_kib as f64),
            x.fds
        );
    }
    let _ = writeln!(s, "\n## Logs\n");
    let _ = writeln!(
        s,
        "Access log: {} lines; by `error`: {}.\n",
        doc["accessLog"]["lines"], doc["accessLog"]["byError"]
    );
    let _ = writeln!(
        s,
        "Gateway log by level: {}; panics: {}; exit code on SIGTERM: {}.",
        doc["gatewayLog"]["byLevel"], doc["gatewayLog"]["panics"], doc["exitCode"]
    );
    for w in doc["gatewayLog"]["warningsAndErrors"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            s,
            "- {} {:?} ×{}",
            w["level"].as_str().unwrap_or_default(),
            w["message"].as_str().unwrap_or_default(),
            w["count"]
        );
    }
    if let Some(u) = doc["unexplained"].as_array().filter(|u| !u.is_empty()) {
        let _ = writeln!(s, "\n## Unexplained failures (first {})\n", u.len().min(30));
        for f in u.iter().take(30) {
            let _ = writeln!(
                s,
                "- {} `{}` {:.2}–{:.2} s: {} (access log: {})",
                f["kind"].as_str().unwrap_or_default(),
                f["id"].as_str().unwrap_or_default(),
                f["start"].as_f64().unwrap_or(f64::NAN),
                f["end"].as_f64().unwrap_or(f64::NAN),
                f["error"].as_str().unwrap_or_default(),
                f["accessLog"]
            );
        }
    }
    if let Some(e) = doc["explainedExamples"]
        .as_array()
        .filter(|e| !e.is_empty())
    {
        let _ = writeln!(s, "\n## Explained failures (first {})\n", e.len().min(10));
        for f in e.iter().take(10) {
            let _ = writeln!(
                s,
                "- {} `{}` {:.2}–{:.2} s: {} — {}",
                f["kind"].as_str().unwrap_or_default(),
                f["id"].as_str().unwrap_or_default(),
                f["start"].as_f64().unwrap_or(f64::NAN),
                f["end"].as_f64().unwrap_or(f64::NAN),
                f["error"].as_str().unwrap_or_default(),
                f["why"].as_str().unwrap_or_default()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(id: &str, start: f64, end: f64, local: Option<&str>) -> Failure {
        Failure {
            kind: Kind::Http1,
            id: id.into(),
            start,
            end,
            error: "reset".into(),
            local: local.map(|l| l.parse().unwrap()),
        }
    }

    fn log(by_id: &[(&str, &str)], by_client: &[(&str, &str, f64)]) -> AccessLog {
        let logged = |u: &str, t: f64| Logged {
            upstream: Some(u.into()),
            error: Some("upstream_connect_error".into()),
            status: Some(502),
            t,
        };
        AccessLog {
            lines: 0,
            by_error: BTreeMap::new(),
            by_id: by_id
                .iter()
                .map(|(i, u)| (i.to_string(), vec![logged(u, 0.0)]))
                .collect(),
            by_client: by_client
                .iter()
                .map(|(c, u, t)| (c.to_string(), vec![logged(u, *t)]))
                .collect(),
        }
    }

    #[test]
    fn only_failures_the_victim_took_part_in_during_an_outage_are_explained() {
        let victim = vec!["127.0.0.1:9".to_string(), "127.0.0.1:10".to_string()];
        let deaths = vec![Death {
            killed: 25.0,
            restarted: Some(40.0),
            ids: ["seen", "seen-late"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }];
        let l = log(
            &[("routed", "127.0.0.1:9"), ("elsewhere", "127.0.0.1:5")],
            &[("127.0.0.1:50000", "127.0.0.1:10", 30.0)],
        );
        let explain = |f: &Failure| explain(f, &deaths, &l, &victim);
        // In flight on the victim at the kill.
        assert!(explain(&failure("seen", 24.0, 25.1, None)).is_some());
        // Received by the victim, but it failed before the kill: not the kill's doing.
        assert!(explain(&failure("seen", 20.0, 24.9, None)).is_none());
        // Never received, but routed to the victim while it was down.
        assert!(explain(&failure("routed", 30.0, 30.1, None)).is_some());
        // The same, after the victim was back: unexplained.
        assert!(explain(&failure("routed", 41.0, 41.1, None)).is_none());
        // Routed to another node during the outage: unexplained.
        assert!(explain(&failure("elsewhere", 30.0, 30.1, None)).is_none());
        // Unknown to the victim and the log: unexplained.
        assert!(explain(&failure("other", 30.0, 30.1, None)).is_none());
        // L4, by client address and time.
        assert!(explain(&failure("l4-0-1", 29.0, 30.5, Some("127.0.0.1:50000"))).is_some());
        assert!(explain(&failure("l4-0-2", 35.0, 36.0, Some("127.0.0.1:50000"))).is_none());
    }

    #[test]
    fn epoch_of_an_rfc3339_timestamp() {
        assert_eq!(epoch("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(epoch("2000-03-01T00:00:01.500Z"), Some(951_868_801.5));
    }

    #[test]
    fn growth_is_the_fitted_line_over_the_second_half() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t: 5.0 + 10.0 * i as f64,
                rss_kib: 10_000 + if i >= 10 { 600 * (i - 10) } else { 50_000 },
                fds: 40,
            })
            .collect();
        let g = growth(&samples, 100.0, |s| s.rss_kib as f64, 4096.0, 0.05);
        assert_eq!(g.samples, 10);
        // 600 KiB per 10 s is 3,600 KiB a minute, over 1.5 minutes of samples.
        assert!((g.slope_per_min - 3600.0).abs() < 1e-6, "{g:?}");
        assert!((g.fitted - 5400.0).abs() < 1e-6);
        assert_eq!(g.ok, Some(false));
        let flat = growth(&samples, 100.0, |s| s.fds as f64, 10.0, 0.1);
        assert_eq!(flat.ok, Some(true));
        assert_eq!(flat.fitted, 0.0);
    }
}
