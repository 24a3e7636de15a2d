//! Health, feeding the balancer (step 3 of the request path): the outcome of every
//! upstream attempt (passive health) and of the probes (active health, `active.rs`)
//! updates per-endpoint state, and ejections, active-health verdicts, returns, slow start
//! and latency de-preference are turned into one published table — the WRR cycle and the
//! health view it was built from change together in a single `ArcSwap` store, so a pick
//! never sees a cycle from one health state and ejections from another. An endpoint is in
//! rotation when neither passive nor active health has taken it out.
//!
//! Rebuilds happen off the per-request fast path: when an ejection starts (on the failing
//! request), and lazily by the first pick after a scheduled change (an ejection ending, a
//! slow-start step, a latency state flip).

use super::wrr::Wrr;
use crate::config::model::PassiveHealth;
use crate::error::LogGate;
use crate::util::Clock;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Weight resolution: effective weights are configured weights times this, rounded, so a
/// factor of 0.1 on weight 1 still means something.
const SCALE: u32 = 10;
/// Above this many table entries the scale drops to 1 (huge weight sums).
const MAX_TABLE: u64 = 200_000;
/// Slow start starts an endpoint at this share of its weight.
const SLOW_START_FLOOR: f64 = 0.1;
/// Slow-start steps: the table is rebuilt this many times over the ramp.
const SLOW_START_STEPS: u64 = 10;
/// EWMA weight of a new latency sample (1/8, like TCP's SRTT).
const EWMA_SHIFT: u32 = 3;
/// Ejections get up to this share added at random, so endpoints ejected together do not
/// all return in the same instant.
const JITTER: f64 = 0.1;

/// Health inputs of one endpoint. Outlives snapshots: a reload that keeps the endpoint
/// keeps its history.
#[derive(Debug, Default)]
pub(crate) struct EndpointHealth {
    consecutive_failures: AtomicU32,
    /// Ejections so far: the next one lasts (n + 1) × base.
    ejections: AtomicU32,
    /// Balancer-clock ms until which the endpoint is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// When the last ejection ended (slow start counts from here); 0 = never ejected.
    returned_at_ms: AtomicU64,
    /// Moving average of time to response headers, in microseconds; 0 = no sample yet.
    latency_ewma_us: AtomicU64,
    /// Whether the average was over the latency threshold at the last rebuild.
    slow: AtomicBool,
    /// Total ejections, for `gateway_endpoint_ejections_total`.
    ejections_total: AtomicU64,
    /// The endpoint's failure log lines: at most one per period, so that a dead endpoint
    /// under load does not flood the log (carried over by reloads like the rest).
    pub(crate) log_gate: LogGate,
    /// Active health's verdicts and probe history.
    active: ActiveState,
}

/// What the probes of one endpoint found so far.
#[derive(Debug, Default)]
struct ActiveState {
    /// Taken out of rotation by active health.
    down: AtomicBool,
    consecutive_passed: AtomicU32,
    consecutive_failed: AtomicU32,
    checks: AtomicU64,
    /// 0 = no check yet, 1 = the last one passed, 2 = it failed.
    last_result: AtomicU8,
    /// The last check's HTTP status; 0 = none (it failed before a response).
    last_status: AtomicU32,
    /// Why the last failed check failed: an index into [`CHECK_FAILURES`].
    last_error: AtomicU8,
}

/// Why a probe failed, as `/status` names it.
pub(crate) const CHECK_FAILURES: [&str; 7] = [
    "unexpected_status",
    "timeout",
    "connect_error",
    "connect_timeout",
    "tls_error",
    "reset",
    "protocol_error",
];

/// One probe's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// A response with one of the expected statuses.
    Passed(u16),
    /// A response with another status.
    Status(u16),
    /// No usable response: an index into [`CHECK_FAILURES`] (never 0).
    Failed(u8),
}

/// Active health's view of one endpoint, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActiveView {
    pub healthy: bool,
    pub checks: u64,
    pub consecutive_passed: u32,
    pub consecutive_failed: u32,
    /// None before the first check.
    pub last_passed: Option<bool>,
    pub last_status: Option<u16>,
    pub last_error: Option<&'static str>,
}

impl EndpointHealth {
    pub(crate) fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Records one probe. Returns the endpoint's new active-health verdict when this check
    /// changed it (`false`: taken out after `unhealthy` failures in a row; `true`: back
    /// after `healthy` passes in a row). `now_ms` (process clock) starts a slow start on
    /// the way back.
    pub(crate) fn record_check(
        &self,
        check: Check,
        unhealthy: u32,
        healthy: u32,
        now_ms: u64,
    ) -> Option<bool> {
        let a = &self.active;
        a.checks.fetch_add(1, Ordering::Relaxed);
        match check {
            Check::Passed(s) | Check::Status(s) => {
                a.last_status.store(u32::from(s), Ordering::Relaxed)
            }
            Check::Failed(_) => a.last_status.store(0, Ordering::Relaxed),
        }
        if let Check::Passed(_) = check {
            a.last_result.store(1, Ordering::Relaxed);
            a.consecutive_failed.store(0, Ordering::Relaxed);
            let passed = a.consecutive_passed.fetch_add(1, Ordering::AcqRel) + 1;
            if passed >= healthy && a.down.swap(false, Ordering::AcqRel) {
                self.returned_at_ms.store(now_ms.max(1), Ordering::Release);
                return Some(true);
            }
            return None;
        }
        let why = match check {
            Check::Failed(i) => i,
            _ => 0,
        };
        a.last_result.store(2, Ordering::Relaxed);
        a.last_error.store(why, Ordering::Relaxed);
        a.consecutive_passed.store(0, Ordering::Relaxed);
        let failed = a.consecutive_failed.fetch_add(1, Ordering::AcqRel) + 1;
        if failed >= unhealthy && !a.down.swap(true, Ordering::AcqRel) {
            return Some(false);
        }
        None
    }

    /// Forgets active health's verdict and history (its probes stopped while the endpoint
    /// stays).
    pub(crate) fn reset_active(&self) {
        let a = &self.active;
        a.down.store(false, Ordering::Release);
        a.consecutive_passed.store(0, Ordering::Relaxed);
        a.consecutive_failed.store(0, Ordering::Relaxed);
        a.checks.store(0, Ordering::Relaxed);
        a.last_result.store(0, Ordering::Relaxed);
        a.last_status.store(0, Ordering::Relaxed);
        a.last_error.store(0, Ordering::Relaxed);
    }

    fn active_down(&self) -> bool {
        self.active.down.load(Ordering::Acquire)
    }

    pub(crate) fn active_view(&self) -> ActiveView {
        let a = &self.active;
        let status = a.last_status.load(Ordering::Relaxed);
        let last = a.last_result.load(Ordering::Relaxed);
        ActiveView {
            healthy: !self.active_down(),
            checks: a.checks.load(Ordering::Relaxed),
            consecutive_passed: a.consecutive_passed.load(Ordering::Relaxed),
            consecutive_failed: a.consecutive_failed.load(Ordering::Relaxed),
            last_passed: (last != 0).then_some(last == 1),
            last_status: (status != 0).then_some(status as u16),
            last_error: (last == 2)
                .then(|| CHECK_FAILURES.get(usize::from(a.last_error.load(Ordering::Relaxed))))
                .flatten()
                .copied(),
        }
    }
}

/// What one endpoint looks like right now, for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EndpointView {
    /// In rotation: neither passive nor active health has taken it out.
    pub healthy: bool,
    /// Not ejected by passive health.
    pub passive_healthy: bool,
    /// Active health's view; None when the cluster has no active health.
    pub active: Option<ActiveView>,
    pub ejections: u64,
    /// Time left in the current ejection.
    pub ejected_for: Duration,
    /// Configured weight × slow-start × latency factors (0 while ejected, unless panic).
    pub effective_weight: f64,
    /// Moving average of time to response headers, if measured.
    pub latency_ms: Option<f64>,
}

/// The published balancing state of a cluster.
#[derive(Debug)]
struct Table {
    wrr: Wrr,
    /// Effective weight per endpoint (0 = out of rotation).
    effective: Box<[f64]>,
    ejected: Box<[bool]>,
    /// Every endpoint ejected: traffic goes to all of them rather than nowhere.
    panic: bool,
    /// Balancer-clock ms at which this table goes stale; u64::MAX = never.
    next_change_ms: u64,
    /// The cluster's health epoch this table was built at: a newer epoch (an ejection or
    /// a latency flip recorded through any snapshot's balancer) makes it stale.
    epoch: u64,
}

/// A cluster's balancer: configured weights, the endpoints' health, and the current table.
#[derive(Debug)]
pub(crate) struct Balancer {
    cluster: Arc<str>,
    names: Box<[Arc<str>]>,
    weights: Box<[u32]>,
    health: Box<[Arc<EndpointHealth>]>,
    policy: Option<PassiveHealth>,
    /// The cluster has active health: its verdicts take endpoints out too.
    active: bool,
    table: ArcSwap<Table>,
    rebuilding: AtomicBool,
    /// Shared by every snapshot's balancer of this cluster (carried over like health).
    epoch: Arc<AtomicU64>,
    clock: Clock,
}

impl Balancer {
    /// `epoch` is the cluster's health epoch, shared with the balancers of the same
    /// cluster in other snapshots; `clock` is the clock of the health state's millisecond
    /// times (the process clock, given to every snapshot so carried-over health stays
    /// meaningful). Building one has no effect on the shared health: carried-over
    /// ejections and slow starts apply from the first pick, which builds the first table.
    pub(crate) fn new(
        cluster: Arc<str>,
        endpoints: Vec<(Arc<str>, u32, Arc<EndpointHealth>)>,
        policy: Option<PassiveHealth>,
        active: bool,
        epoch: Arc<AtomicU64>,
        clock: Clock,
    ) -> Balancer {
        let names = endpoints.iter().map(|e| e.0.clone()).collect();
        let weights: Box<[u32]> = endpoints.iter().map(|e| e.1).collect();
        let health = endpoints.into_iter().map(|e| e.2).collect();
        let initial = Table {
            wrr: Wrr::new(&weights),
            effective: weights.iter().map(|&w| f64::from(w)).collect(),
            ejected: vec![false; weights.len()].into_boxed_slice(),
            panic: false,
            // Stale at once: with passive health, the first pick builds from the health.
            next_change_ms: 0,
            epoch: 0,
        };
        Balancer {
            cluster,
            names,
            weights,
            health,
            policy,
            active,
            table: ArcSwap::from_pointee(initial),
            rebuilding: AtomicBool::new(false),
            epoch,
            clock,
        }
    }

    /// The cluster's health epoch, for the next snapshot's balancer of this cluster.
    pub(crate) fn epoch(&self) -> &Arc<AtomicU64> {
        &self.epoch
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn len(&self) -> usize {
        self.weights.len()
    }

    /// The next endpoint not in `skip`, by smooth WRR over the endpoints in rotation.
    #[inline]
    pub(crate) fn pick_except(&self, skip: &[usize]) -> Option<usize> {
        self.refresh_if_stale();
        self.table.load().wrr.pick_except(skip)
    }

    /// Rebuilds the table if time or another balancer of the cluster made it stale.
    #[inline]
    fn refresh_if_stale(&self) {
        if self.policy.is_none() && !self.active {
            return;
        }
        let table = self.table.load();
        if self.now_ms() >= table.next_change_ms
            || table.epoch != self.epoch.load(Ordering::Acquire)
        {
            drop(table);
            self.refresh();
        }
    }

    fn refresh(&self) {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return; // someone else is on it; the old table is still valid meanwhile
        }
        let now = self.now_ms();
        let table = self.table.load();
        if now >= table.next_change_ms || table.epoch != self.epoch.load(Ordering::Acquire) {
            drop(table);
            self.rebuild(now);
        }
        self.rebuilding.store(false, Ordering::Release);
    }

    /// Records the outcome of one attempt on endpoint `idx`: success, or failure (connect
    /// error, TLS failure, reset, timeout, or a 502/503/504 answer); `latency` is the time
    /// to response headers when there was a response.
    pub(crate) fn report(&self, idx: usize, success: bool, latency: Option<Duration>) {
        let (Some(policy), Some(h)) = (&self.policy, self.health.get(idx)) else {
            return;
        };
        if let (Some(lat), Some(lp)) = (latency, &policy.latency) {
            let sample = lat.as_micros().min(u128::from(u64::MAX / 16)) as u64;
            let old = h.latency_ewma_us.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT)
            };
            h.latency_ewma_us.store(new.max(1), Ordering::Relaxed);
            let slow = new > lp.threshold.as_micros() as u64;
            if h.slow.load(Ordering::Relaxed) != slow {
                self.invalidate();
            }
        }
        if success {
            h.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = h.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= policy.consecutive_failures {
            self.try_eject(idx, policy);
        }
    }

    /// Makes every balancer of this cluster (in every snapshot) rebuild at its next pick.
    fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn try_eject(&self, idx: usize, policy: &PassiveHealth) {
        while self.rebuilding.swap(true, Ordering::AcqRel) {
            std::hint::spin_loop();
        }
        let now = self.now_ms();
        let h = &self.health[idx];
        let ejected_now = self
            .health
            .iter()
            .filter(|e| e.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let allowed = if policy.max_ejected_percent == 0 {
            0
        } else {
            // At least one may go, whatever the percentage (as Envoy does): with a single
            // endpoint that means panic mode, which still sends it traffic.
            (self.len() * policy.max_ejected_percent as usize / 100).max(1)
        };
        let already = h.ejected_until_ms.load(Ordering::Relaxed) > now;
        if !already && ejected_now < allowed {
            let n = h.ejections.fetch_add(1, Ordering::AcqRel) + 1;
            let base = policy.base_ejection.as_millis() as u64;
            let mut ms = base
                .saturating_mul(u64::from(n))
                .min(policy.max_ejection.as_millis() as u64);
            let jitter = (crate::util::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
            ms += (ms as f64 * JITTER * jitter) as u64;
            h.ejected_until_ms.store(now + ms.max(1), Ordering::Release);
            h.consecutive_failures.store(0, Ordering::Relaxed);
            h.ejections_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event = "endpoint_ejected",
                cluster = %self.cluster,
                endpoint = %self.names[idx],
                ejection = n,
                duration_ms = ms,
                "endpoint ejected after {} consecutive failures",
                policy.consecutive_failures
            );
            self.invalidate();
            self.rebuild(now);
        }
        self.rebuilding.store(false, Ordering::Release);
    }

    /// Makes every balancer of this cluster rebuild at its next pick: active health
    /// changed an endpoint's verdict.
    pub(crate) fn health_changed(epoch: &AtomicU64) {
        epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Builds and publishes the table for time `now`. Callers hold `rebuilding` (or are
    /// the constructor).
    fn rebuild(&self, now: u64) {
        if self.policy.is_none() && !self.active {
            return;
        }
        // Read first: a change recorded while this table is built makes it stale again.
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut next_change = u64::MAX;
        let mut ejected = vec![false; self.len()];
        let mut effective = vec![0.0; self.len()];
        for (i, h) in self.health.iter().enumerate() {
            let until = if self.policy.is_some() {
                h.ejected_until_ms.load(Ordering::Acquire)
            } else {
                0
            };
            if until > now {
                ejected[i] = true;
                next_change = next_change.min(until);
                continue;
            }
            if self.active && h.active_down() {
                ejected[i] = true;
                continue;
            }
            let Some(policy) = &self.policy else {
                // Active health alone: back at full weight (slow start is passive health's).
                effective[i] = f64::from(self.weights[i]);
                continue;
            };
            // The ejection is over: back into rotation, ramping up. Balancers of other
            // snapshots may notice at the same time; one of them says so.
            if until != 0
                && h.ejected_until_ms
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                h.returned_at_ms.store(now.max(1), Ordering::Release);
                tracing::info!(
                    event = "endpoint_returned",
                    cluster = %self.cluster,
                    endpoint = %self.names[i],
                    "endpoint back in rotation after its ejection"
                );
            }
            let mut factor = 1.0;
            let returned = h.returned_at_ms.load(Ordering::Acquire);
            let ramp = policy.slow_start.as_millis() as u64;
            if returned != 0 && ramp > 0 && now < returned + ramp {
                let done = (now - returned) as f64 / ramp as f64;
                factor *= SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * done;
                next_change = next_change.min(now + (ramp / SLOW_START_STEPS).max(1));
            } else if returned != 0 && now >= returned + policy.max_ejection.as_millis() as u64 {
                // Healthy for a whole maximum ejection time: forget past ejections.
                h.ejections.store(0, Ordering::Relaxed);
                h.returned_at_ms.store(0, Ordering::Relaxed);
            } else if returned != 0 {
                next_change = next_change.min(returned + policy.max_ejection.as_millis() as u64);
            }
            if let Some(lp) = &policy.latency {
                let avg = h.latency_ewma_us.load(Ordering::Relaxed);
                let slow = avg > lp.threshold.as_micros() as u64;
                h.slow.store(slow, Ordering::Relaxed);
                if slow {
                    factor *= lp.weight_factor;
                }
            }
            effective[i] = f64::from(self.weights[i]) * factor;
        }
        let panic = ejected.iter().all(|&e| e);
        if panic {
            // Every endpoint is ejected: route to all of them rather than fail every request.
            effective = self.weights.iter().map(|&w| f64::from(w)).collect();
        }
        self.table.store(Arc::new(Table {
            wrr: Wrr::new(&scaled(&effective)),
            effective: effective.into_boxed_slice(),
            ejected: ejected.into_boxed_slice(),
            panic,
            next_change_ms: next_change,
            epoch,
        }));
    }

    /// The view of endpoint `idx` for `/status` and metrics, from a table brought up to
    /// date first (one no request has picked from since a change would be stale).
    pub(crate) fn view(&self, idx: usize) -> Option<EndpointView> {
        let h = self.health.get(idx)?;
        self.refresh_if_stale();
        let table = self.table.load();
        let now = self.now_ms();
        let until = h.ejected_until_ms.load(Ordering::Relaxed);
        let lat = h.latency_ewma_us.load(Ordering::Relaxed);
        Some(EndpointView {
            healthy: !table.ejected.get(idx).copied().unwrap_or(false),
            passive_healthy: self.policy.is_none() || until <= now,
            active: self.active.then(|| h.active_view()),
            ejections: h.ejections_total(),
            ejected_for: Duration::from_millis(until.saturating_sub(now)),
            effective_weight: table.effective.get(idx).copied().unwrap_or(0.0),
            latency_ms: (lat > 0).then(|| lat as f64 / 1000.0),
        })
    }

    /// Whether every endpoint is out of rotation (traffic then goes to all of them).
    pub(crate) fn panic(&self) -> bool {
        self.refresh_if_stale();
        self.table.load().panic
    }
}

/// Integer WRR weights from effective weights; 0 stays 0 (out of rotation).
fn scaled(effective: &[f64]) -> Vec<u32> {
    let total: f64 = effective.iter().sum();
    let scale = if total * f64::from(SCALE) > MAX_TABLE as f64 {
        1.0
    } else {
        f64::from(SCALE)
    };
    effective
        .iter()
        .map(|&w| {
            if w <= 0.0 {
                0
            } else {
                ((w * scale).round() as u32).max(1)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::LatencyPolicy;

    fn policy() -> PassiveHealth {
        PassiveHealth {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            latency: Some(LatencyPolicy {
                threshold: Duration::from_millis(100),
                weight_factor: 0.1,
            }),
            slow_start: Duration::ZERO,
        }
    }

    fn balancer(n: usize, p: PassiveHealth) -> Balancer {
        let eps = (0..n)
            .map(|i| {
                (
                    Arc::from(format!("10.0.0.{i}:80").as_str()),
                    1,
                    Arc::new(EndpointHealth::default()),
                )
            })
            .collect();
        Balancer::new(
            "c".into(),
            eps,
            Some(p),
            false,
            Arc::default(),
            Clock::process(),
        )
    }

    fn share(b: &Balancer, idx: usize, picks: usize) -> usize {
        (0..picks)
            .filter(|_| b.pick_except(&[]) == Some(idx))
            .count()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let b = balancer(2, policy());
        b.report(0, false, None);
        b.report(0, false, None);
        b.report(0, true, None);
        b.report(0, false, None);
        b.report(0, false, None);
        assert!(b.view(0).unwrap().healthy, "the success reset the count");
        b.report(0, false, None);
        let v = b.view(0).unwrap();
        assert!(!v.healthy);
        assert_eq!(v.ejections, 1);
        assert!(
            v.ejected_for >= Duration::from_secs(29) && v.ejected_for <= Duration::from_secs(34)
        );
        assert_eq!(share(&b, 0, 100), 0);
    }

    #[test]
    fn max_ejected_percent_holds_and_panic_mode_routes_to_everyone() {
        let b = balancer(2, policy());
        for _ in 0..3 {
            b.report(0, false, None);
            b.report(1, false, None);
        }
        // 50% of 2: only one may be ejected.
        assert_eq!(
            [b.view(0).unwrap().healthy, b.view(1).unwrap().healthy],
            [false, true]
        );
        let solo = balancer(1, policy());
        for _ in 0..3 {
            solo.report(0, false, None);
        }
        assert!(solo.panic(), "the only endpoint is ejected: panic mode");
        assert_eq!(share(&solo, 0, 10), 10, "and it still gets traffic");
    }

    #[test]
    fn a_slow_endpoint_gets_its_weight_times_the_factor() {
        let b = balancer(2, policy());
        for _ in 0..20 {
            b.report(1, true, Some(Duration::from_millis(400)));
            b.report(0, true, Some(Duration::from_millis(5)));
        }
        let picks = 110;
        let slow = share(&b, 1, picks);
        // weights 10 : 1 after the factor → 1 in 11 picks.
        assert_eq!(slow, 10, "slow endpoint share");
        assert!((b.view(1).unwrap().effective_weight - 0.1).abs() < 1e-9);
    }
}
