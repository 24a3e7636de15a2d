//! Active health, beside the request path: one probe loop per endpoint of every cluster
//! with `activeHealth`, each checking its endpoint on its own jittered schedule over the
//! cluster's protocol and TLS settings (the endpoint's own connection pool). Verdicts go
//! into the endpoint's health state and the cluster's health epoch, so every snapshot's
//! balancer (`health.rs`) takes them into its one published table.
//!
//! Loops are started and stopped when a configuration is committed, never when a snapshot
//! is built: [`Prober::sync`] runs from the reload's commit, keeps the loops of endpoints
//! that stay (and with them, through the carried-over health state, their history), and
//! stops those of endpoints and clusters that went away.

use super::health::{Balancer, Check, EndpointHealth, CHECK_FAILURES};
use crate::config::model::{ActiveHealth, Protocol};
use crate::error::ErrorKind;
use crate::http::body::RequestBody;
use crate::upstream::{Pool, SendError};
use crate::util::{random_u64, Clock};
use http::{header, HeaderValue, Request, Uri, Version};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A check reads at most this much of a response body; a longer one is cut (its
/// connection is not reused) and the check judged by its status.
const MAX_BODY: usize = 64 * 1024;
/// Each wait between checks is the interval plus up to this share of it, at random, so
/// endpoints checked together drift apart.
const JITTER: f64 = 0.1;

/// An endpoint to probe: cluster name and endpoint address.
pub(crate) type Key = (Arc<str>, Arc<str>);

/// What one check of one endpoint needs, looked up afresh before every check (a reload may
/// have changed the settings, the pool or the protocol).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub check: ActiveHealth,
    pub pool: Arc<Pool>,
    pub protocol: Protocol,
    /// The cluster's connect timeout (bounded by the check's timeout).
    pub connect: Duration,
    /// `Host` / `:authority`: `activeHealth.host` or the endpoint's address.
    pub authority: Arc<str>,
    /// Carried over by reloads with the endpoint: the probe history lives here.
    pub health: Arc<EndpointHealth>,
    /// The cluster's health epoch, shared by its balancers in every snapshot.
    pub epoch: Arc<AtomicU64>,
}

/// Finds the current target of a key; None once the endpoint or its active health is gone.
pub(crate) type Lookup = Arc<dyn Fn(&str, &str) -> Option<Target> + Send + Sync>;

/// The running probe loops.
#[derive(Default)]
pub(crate) struct Prober {
    loops: HashMap<Key, (JoinHandle<()>, Arc<EndpointHealth>)>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("loops", &self.loops.len())
            .finish()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (task, _) in self.loops.values() {
            task.abort();
        }
    }
}

impl Prober {
    /// Makes the running loops those of `wanted` (key and the endpoint's health state):
    /// starts the missing ones, keeps the others as they are, and stops the loops of keys
    /// no longer wanted, forgetting their verdict where the endpoint stays without active
    /// health. Runs on the commit of a configuration, inside the runtime.
    pub(crate) fn sync(&mut self, wanted: Vec<(Key, Arc<EndpointHealth>)>, lookup: Lookup) {
        let keep: HashMap<&Key, &Arc<EndpointHealth>> =
            wanted.iter().map(|(k, h)| (k, h)).collect();
        let gone: Vec<Key> = self
            .loops
            .keys()
            .filter(|k| !keep.contains_key(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((task, health)) = self.loops.remove(&key) {
                task.abort();
                health.reset_active();
                tracing::debug!(cluster = %key.0, endpoint = %key.1, "active health checks stopped");
            }
        }
        for (key, health) in wanted {
            if self.loops.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(key.clone(), lookup.clone()));
            self.loops.insert(key, (task, health));
        }
    }
}

/// A uniformly random share of `d`, in [0, `share` × d).
fn random_part(d: Duration, share: f64) -> Duration {
    let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(share * unit)
}

/// Checks one endpoint until its key is no longer wanted (the task is aborted) or it
/// disappears from the configuration. The first check comes at a random point of the
/// first interval, so the endpoints of a cluster are not all checked at once.
async fn probe_loop(key: Key, lookup: Lookup) {
    let Some(first) = lookup(&key.0, &key.1) else {
        return;
    };
    tokio::time::sleep(random_part(first.check.interval, 1.0)).await;
    drop(first);
    loop {
        let Some(target) = lookup(&key.0, &key.1) else {
            return;
        };
        let check = probe(&target).await;
        let t = &target.check;
        let now = Clock::process().now_ms();
        match target
            .health
            .record_check(check, t.unhealthy_threshold, t.healthy_threshold, now)
        {
            Some(false) => {
                tracing::warn!(
                    event = "endpoint_unhealthy",
                    cluster = %key.0,
                    endpoint = %key.1,
                    check = %describe(check),
                    "active health took the endpoint out of rotation after {} failed checks",
                    t.unhealthy_threshold
                );
                Balancer::health_changed(&target.epoch);
            }
            Some(true) => {
                tracing::info!(
                    event = "endpoint_healthy",
                    cluster = %key.0,
                    endpoint = %key.1,
                    "active health brought the endpoint back after {} passing checks",
                    t.healthy_threshold
                );
                Balancer::health_changed(&target.epoch);
            }
            None => {}
        }
        let wait = t.interval + random_part(t.interval, JITTER);
        drop(target);
        tokio::time::sleep(wait).await;
    }
}

fn describe(check: Check) -> String {
    match check {
        Check::Passed(s) => format!("status {s}"),
        Check::Status(s) => format!("unexpected status {s}"),
        Check::Failed(i) => CHECK_FAILURES
            .get(usize::from(i))
            .copied()
            .unwrap_or("failed")
            .to_string(),
    }
}

/// One check: `GET path` on a pooled or new connection, its status against the expected
/// ones, its body read (up to [`MAX_BODY`]) so the connection can be reused — all within
/// the check's timeout.
pub(crate) async fn probe(t: &Target) -> Check {
    let timeout = t.check.timeout;
    match tokio::time::timeout(timeout, exchange(t)).await {
        Ok(Ok(status)) => {
            let expected = t
                .check
                .expected_statuses
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&status));
            if expected {
                Check::Passed(status)
            } else {
                Check::Status(status)
            }
        }
        Ok(Err(kind)) => Check::Failed(failure_index(kind)),
        Err(_) => Check::Failed(failure_index(ErrorKind::UpstreamTimeout)),
    }
}

fn failure_index(kind: ErrorKind) -> u8 {
    let name = match kind {
        ErrorKind::UpstreamConnect => "connect_error",
        ErrorKind::UpstreamConnectTimeout => "connect_timeout",
        ErrorKind::UpstreamTls => "tls_error",
        ErrorKind::UpstreamProtocol => "protocol_error",
        ErrorKind::UpstreamTimeout | ErrorKind::RequestTimeout => "timeout",
        _ => "reset",
    };
    CHECK_FAILURES
        .iter()
        .position(|n| *n == name)
        .map_or(5, |i| i as u8)
}

fn check_request(t: &Target) -> Option<Request<RequestBody>> {
    let mut req = Request::new(RequestBody::empty());
    let path = &t.check.path;
    match t.protocol {
        Protocol::Http1 => {
            *req.uri_mut() = Uri::try_from(path.as_str()).ok()?;
            *req.version_mut() = Version::HTTP_11;
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_str(&t.authority).ok()?);
        }
        Protocol::Http2 => {
            *req.uri_mut() = Uri::try_from(format!("http://{}{path}", t.authority)).ok()?;
            *req.version_mut() = Version::HTTP_2;
        }
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("gateway-health-check/", env!("CARGO_PKG_VERSION"))),
    );
    Some(req)
}

/// The exchange of one check: the response status, or why there was none.
async fn exchange(t: &Target) -> Result<u16, ErrorKind> {
    let connect = t.connect.min(t.check.timeout);
    // A pooled connection that turns out to be closed hands the request back unwritten:
    // one more try on a new connection, as a request would get.
    let mut tries = 0;
    let (resp, pooled) = loop {
        tries += 1;
        let req = check_request(t).ok_or(ErrorKind::BadRequest)?;
        let conn = t
            .pool
            .checkout(connect, t.check.timeout)
            .await
            .map_err(|e| e.kind)?;
        match conn.send(&t.pool, req).await {
            Ok(r) => break r,
            Err(SendError::NotSent(_, _)) if tries < 2 => continue,
            Err(SendError::NotSent(_, e) | SendError::Sent(e)) => return Err(e.kind),
        }
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut read = 0usize;
    let complete = loop {
        match body.frame().await {
            None => break true,
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > MAX_BODY {
                    break false;
                }
            }
            Some(Err(_)) => break false,
        }
    };
    if let (true, Some(p)) = (complete, pooled) {
        p.checkin();
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_over_the_interval_and_waits_get_at_most_a_tenth_more() {
        let interval = Duration::from_secs(10);
        let firsts: Vec<Duration> = (0..200).map(|_| random_part(interval, 1.0)).collect();
        assert!(firsts.iter().all(|d| *d < interval));
        let early = firsts.iter().filter(|d| **d < interval / 2).count();
        assert!(
            (50..150).contains(&early),
            "{early} of 200 in the first half"
        );
        for _ in 0..200 {
            assert!(random_part(interval, JITTER) < Duration::from_secs(1));
        }
    }

    #[test]
    fn failures_are_named_from_the_fixed_set() {
        assert_eq!(
            CHECK_FAILURES[usize::from(failure_index(ErrorKind::UpstreamTls))],
            "tls_error"
        );
        assert_eq!(
            CHECK_FAILURES[usize::from(failure_index(ErrorKind::RequestTimeout))],
            "timeout"
        );
        assert_eq!(
            CHECK_FAILURES[usize::from(failure_index(ErrorKind::UpstreamReset))],
            "reset"
        );
    }
}
