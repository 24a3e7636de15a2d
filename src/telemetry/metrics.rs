//! Metrics, the last step of every request beside the access log: Prometheus families
//! whose per-route and per-listener handles are prepared when a snapshot is built and
//! resolved on first use (so unused status codes add no series), after which the request
//! path only bumps atomics (no locks: histograms are this module's own atomic buckets).
//! Everything derived from snapshot state (L4 counters, config generation, endpoint
//! health) is read at scrape time from a [`ScrapeSource`] the state layer provides.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// The `reason` label values of `gateway_accept_errors_total`.
pub(crate) const ACCEPT_ERROR_REASONS: [&str; 4] = ["descriptors", "memory", "aborted", "other"];

/// The `kind` label values of `gateway_upstream_errors_total`: the error table's
/// `upstream` column.
pub(crate) const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "connect_error",
    "connect_timeout",
    "tls_error",
    "reset",
    "protocol_error",
    "timeout",
];

/// Latency buckets in seconds: 0.5 ms to 30 s.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0,
];

/// Status codes whose request counters are cached per route after first use; others are
/// looked up in the family each time (a short read lock).
const COMMON_CODES: [u16; 22] = [
    200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 429, 431, 499, 500, 501,
    502, 503, 504,
];

/// `CODE_SLOT[status]` is the status's index in `COMMON_CODES`, or `NO_SLOT`: one load
/// instead of a search on every request.
const NO_SLOT: u8 = u8::MAX;
const CODE_SLOT: [u8; 600] = {
    let mut table = [NO_SLOT; 600];
    let mut i = 0;
    while i < COMMON_CODES.len() {
        table[COMMON_CODES[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A latency histogram over [`LATENCY_BUCKETS`] made of atomics, so recording takes no
/// lock (prometheus-client's `Histogram` takes a write lock per observation, which
/// workers recording for the same route would contend on). The count is the sum of the
/// buckets; the sum may trail the buckets by an observation in flight during a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct LatencyHistogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug, Default)]
struct HistogramCells {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observed seconds, as `f64` bits.
    sum: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation, in seconds.
    pub(crate) fn observe(&self, seconds: f64) {
        if seconds.is_nan() {
            // Would poison the sum for good; durations from `Instant` never are NaN.
            return;
        }
        // The first bucket whose upper bound is >= the value (Prometheus' `le`).
        let i = LATENCY_BUCKETS.partition_point(|&le| le < seconds);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    /// Observations so far.
    #[cfg(test)]
    fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations, in seconds.
    pub(crate) fn sum(&self) -> f64 {
        f64::from_bits(self.inner.sum.load(Ordering::Relaxed))
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::MAX, 0u64); LATENCY_BUCKETS.len() + 1];
        let mut count = 0;
        for (i, cell) in self.inner.buckets.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            count += n;
            // f64::MAX is how the encoder spells the +Inf bucket.
            buckets[i] = (LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::MAX), n);
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    route: String,
    cluster: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointKindLabels {
    cluster: String,
    endpoint: String,
    kind: &'static str,
}

/// Process-wide metrics. Families live as long as the process; snapshots take handles.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, LatencyHistogram>,
    upstream_duration: Family<ClusterLabel, LatencyHistogram>,
    active_connections: Family<ListenerLabel, Gauge>,
    connections: Family<ListenerLabel, Counter>,
    tls_handshake_errors: Family<ListenerLabel, Counter>,
    accept_errors: Family<ListenerReasonLabels, Counter>,
    upstream_errors: Family<EndpointKindLabels, Counter>,
    retries: Family<RouteLabel, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    reload_success: Counter,
    reload_failure: Counter,
    collector: Arc<SnapshotCollector>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabel, LatencyHistogram>::default();
        let upstream_duration = Family::<ClusterLabel, LatencyHistogram>::default();
        let active_connections = Family::<ListenerLabel, Gauge>::default();
        let connections = Family::<ListenerLabel, Counter>::default();
        let tls_handshake_errors = Family::<ListenerLabel, Counter>::default();
        let accept_errors = Family::<ListenerReasonLabels, Counter>::default();
        let upstream_errors = Family::<EndpointKindLabels, Counter>::default();
        let retries = Family::<RouteLabel, Counter>::default();
        let rate_limited = Family::<RouteLabel, Counter>::default();
        let reload_success = Counter::default();
        let reload_failure = Counter::default();
        registry.register(
            "requests",
            "HTTP requests by listener, route, cluster and status code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response, by route",
            request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending to an upstream to its response headers, by cluster",
            upstream_duration.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections by listener",
            active_connections.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted by listener",
            connections.clone(),
        );
        registry.register(
            "tls_handshake_errors",
            "Failed TLS handshakes by listener",
            tls_handshake_errors.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts by listener and reason (descriptors, memory, aborted, other)",
            accept_errors.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream attempts by cluster, endpoint and kind (connect_error, connect_timeout, tls_error, reset, protocol_error, timeout)",
            upstream_errors.clone(),
        );
        registry.register(
            "retries",
            "Upstream attempts retried on another endpoint, by route",
            retries.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by a route's rate limit (429), by route",
            rate_limited.clone(),
        );
        registry.register(
            "reload_success",
            "Configuration reloads that took effect",
            reload_success.clone(),
        );
        registry.register(
            "reload_failure",
            "Configuration reloads that were rolled back",
            reload_failure.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![
                ("version", crate::VERSION.to_string()),
                ("commit", crate::version::COMMIT.to_string()),
                ("target", crate::version::TARGET.to_string()),
            ]),
        );
        let collector = Arc::new(SnapshotCollector::default());
        registry.register_collector(Box::new(collector.clone()));
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            active_connections,
            connections,
            tls_handshake_errors,
            accept_errors,
            upstream_errors,
            retries,
            rate_limited,
            reload_success,
            reload_failure,
            collector,
        }
    }

    /// Lets the scrape-time collector read values from `source` (the gateway's snapshot).
    pub(crate) fn attach(&self, source: Weak<dyn ScrapeSource>) {
        let _ = self.collector.source.set(source);
    }

    /// The whole registry in the Prometheus/OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Handles for one (listener, route) pair; `route` None is the no-route bucket.
    pub(crate) fn route_handles(
        &self,
        listener: &str,
        route: Option<(&str, &str)>,
    ) -> RouteHandles {
        let (route_name, cluster) = route.unwrap_or(("", ""));
        RouteHandles {
            listener: listener.into(),
            route: route_name.into(),
            cluster: cluster.into(),
            has_cluster: route.is_some(),
            codes: Default::default(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
            requests: self.requests.clone(),
            request_duration: self.request_duration.clone(),
            upstream_duration: self.upstream_duration.clone(),
        }
    }

    /// Upstream error counters of one endpoint, one per kind, each resolved on first use.
    pub(crate) fn endpoint_errors(&self, cluster: &str, endpoint: &str) -> EndpointErrors {
        EndpointErrors {
            cluster: cluster.into(),
            endpoint: endpoint.into(),
            counters: Default::default(),
            family: self.upstream_errors.clone(),
        }
    }

    /// Counters of one route (across listeners), each resolved on first use.
    pub(crate) fn route_counters(&self, route: &str) -> RouteCounters {
        RouteCounters {
            route: route.into(),
            retries: OnceLock::new(),
            retries_family: self.retries.clone(),
            rate_limited: OnceLock::new(),
            rate_limited_family: self.rate_limited.clone(),
        }
    }

    /// Handles for one listener's connection counters, resolved on first use (so a
    /// snapshot that is built and then rolled back adds no series).
    pub(crate) fn listener_handles(&self, listener: &str) -> ListenerHandles {
        ListenerHandles {
            label: ListenerLabel {
                listener: listener.to_string(),
            },
            families: (
                self.active_connections.clone(),
                self.connections.clone(),
                self.tls_handshake_errors.clone(),
            ),
            resolved: OnceLock::new(),
        }
    }

    /// Counts failed accepts of one listener, by reason (a fixed set). Every reason's
    /// series exists from the start at 0, so `rate()` and alerts work before the first
    /// failure.
    pub(crate) fn accept_errors(
        &self,
        listener: &str,
    ) -> impl Fn(&'static str) + Send + Sync + 'static {
        let counters: Vec<(&'static str, Counter)> = ACCEPT_ERROR_REASONS
            .iter()
            .map(|&reason| {
                let labels = ListenerReasonLabels {
                    listener: listener.to_string(),
                    reason,
                };
                (reason, self.accept_errors.get_or_create_owned(&labels))
            })
            .collect();
        move |reason| {
            if let Some((_, c)) = counters.iter().find(|(r, _)| *r == reason) {
                c.inc();
            }
        }
    }

    pub(crate) fn reload_succeeded(&self) {
        self.reload_success.inc();
    }

    pub(crate) fn reload_failed(&self) {
        self.reload_failure.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Request metrics of one route on one listener, each handle resolved once.
#[derive(Debug)]
pub(crate) struct RouteHandles {
    listener: Box<str>,
    route: Box<str>,
    cluster: Box<str>,
    has_cluster: bool,
    codes: [OnceLock<Counter>; COMMON_CODES.len()],
    duration: OnceLock<LatencyHistogram>,
    upstream: OnceLock<LatencyHistogram>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, LatencyHistogram>,
    upstream_duration: Family<ClusterLabel, LatencyHistogram>,
}

impl RouteHandles {
    fn labels(&self, status: u16) -> RequestLabels {
        RequestLabels {
            listener: self.listener.to_string(),
            route: self.route.to_string(),
            cluster: self.cluster.to_string(),
            code: status.to_string(),
        }
    }

    /// Records one finished request.
    pub(crate) fn record(&self, status: u16, seconds: f64, upstream_seconds: Option<f64>) {
        match CODE_SLOT.get(usize::from(status)).copied() {
            Some(i) if i != NO_SLOT => {
                self.codes[usize::from(i)]
                    .get_or_init(|| self.requests.get_or_create_owned(&self.labels(status)))
                    .inc();
            }
            _ => {
                self.requests.get_or_create(&self.labels(status)).inc();
            }
        }
        self.duration
            .get_or_init(|| {
                self.request_duration.get_or_create_owned(&RouteLabel {
                    route: self.route.to_string(),
                })
            })
            .observe(seconds);
        if let (true, Some(s)) = (self.has_cluster, upstream_seconds) {
            self.upstream
                .get_or_init(|| {
                    self.upstream_duration.get_or_create_owned(&ClusterLabel {
                        cluster: self.cluster.to_string(),
                    })
                })
                .observe(s);
        }
    }
}

/// `gateway_upstream_errors_total` of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointErrors {
    cluster: Box<str>,
    endpoint: Box<str>,
    counters: [OnceLock<Counter>; UPSTREAM_ERROR_KINDS.len()],
    family: Family<EndpointKindLabels, Counter>,
}

impl EndpointErrors {
    /// Counts one failed attempt of `kind` (one of [`UPSTREAM_ERROR_KINDS`]).
    pub(crate) fn count(&self, kind: &'static str) {
        let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|k| *k == kind) else {
            return;
        };
        self.counters[i]
            .get_or_init(|| {
                self.family.get_or_create_owned(&EndpointKindLabels {
                    cluster: self.cluster.to_string(),
                    endpoint: self.endpoint.to_string(),
                    kind: UPSTREAM_ERROR_KINDS[i],
                })
            })
            .inc();
    }
}

/// Per-route counters (`gateway_retries_total`, `gateway_rate_limited_total`).
#[derive(Debug)]
pub(crate) struct RouteCounters {
    route: Box<str>,
    retries: OnceLock<Counter>,
    retries_family: Family<RouteLabel, Counter>,
    rate_limited: OnceLock<Counter>,
    rate_limited_family: Family<RouteLabel, Counter>,
}

impl RouteCounters {
    /// A request of this route was refused by its rate limit.
    pub(crate) fn rate_limited(&self) {
        self.rate_limited
            .get_or_init(|| {
                self.rate_limited_family.get_or_create_owned(&RouteLabel {
                    route: self.route.to_string(),
                })
            })
            .inc();
    }

    /// An upstream attempt of this route is retried on another endpoint.
    pub(crate) fn retried(&self) {
        self.retries
            .get_or_init(|| {
                self.retries_family.get_or_create_owned(&RouteLabel {
                    route: self.route.to_string(),
                })
            })
            .inc();
    }
}

/// Connection metrics of one HTTP listener.
#[derive(Debug)]
pub(crate) struct ListenerHandles {
    label: ListenerLabel,
    families: (
        Family<ListenerLabel, Gauge>,
        Family<ListenerLabel, Counter>,
        Family<ListenerLabel, Counter>,
    ),
    resolved: OnceLock<(Gauge, Counter, Counter)>,
}

impl ListenerHandles {
    fn get(&self) -> &(Gauge, Counter, Counter) {
        self.resolved.get_or_init(|| {
            let (active, accepted, tls) = &self.families;
            (
                active.get_or_create_owned(&self.label),
                accepted.get_or_create_owned(&self.label),
                tls.get_or_create_owned(&self.label),
            )
        })
    }

    /// A connection was accepted; it counts as active until [`Self::closed`].
    pub(crate) fn opened(&self) {
        let (active, accepted, _) = self.get();
        accepted.inc();
        active.inc();
    }

    pub(crate) fn closed(&self) {
        self.get().0.dec();
    }

    pub(crate) fn tls_failed(&self) {
        self.get().2.inc();
    }
}

/// Access-log lines dropped so far (`gateway_access_log_dropped_total`).
pub(crate) fn access_log_dropped() -> u64 {
    ACCESS_LOG_DROPPED.load(Ordering::Relaxed)
}

/// Log lines dropped because the access-log writer could not keep up (process-wide, so
/// the count survives the logger being replaced).
pub(crate) static ACCESS_LOG_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Values derived from the running snapshot (health views, L4 counters, the generation),
/// read at scrape time. The layer that owns the snapshot provides them, so metrics does not
/// depend on it.
pub(crate) trait ScrapeSource: Send + Sync + std::fmt::Debug {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error>;
}

/// Reads snapshot-derived values at scrape time.
#[derive(Debug, Default)]
struct SnapshotCollector {
    source: OnceLock<Weak<dyn ScrapeSource>>,
}

/// Writes one counter family of `(labels, value)` samples (no labels: one sample).
pub(crate) fn counter_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, v) in values {
        if labels.is_empty() {
            ConstCounter::new(v).encode(m)?;
            break;
        }
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family of `(labels, value)` samples (no labels: one sample).
pub(crate) fn gauge_family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, v) in values {
        if labels.is_empty() {
            ConstGauge::new(v).encode(m)?;
            break;
        }
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self.source.get().and_then(Weak::upgrade) {
            Some(source) => source.encode(&mut encoder),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_common_code_has_its_own_slot_and_others_have_none() {
        for (i, &code) in COMMON_CODES.iter().enumerate() {
            assert_eq!(usize::from(CODE_SLOT[usize::from(code)]), i);
        }
        assert_eq!(CODE_SLOT[202], NO_SLOT);
        assert_eq!(CODE_SLOT.get(600), None);
    }

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let h = LatencyHistogram::default();
        for v in [0.0, 0.0005, 0.0006, 30.0, 31.0, f64::NAN] {
            h.observe(v);
        }
        assert_eq!(h.count(), 5, "NaN is not counted");
        assert!((h.sum() - 61.0011).abs() < 1e-9);
        let cells: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(cells[0], 2, "0 and 0.5 ms are both le=0.0005");
        assert_eq!(cells[1], 1);
        assert_eq!(cells[LATENCY_BUCKETS.len() - 1], 1, "30 s is le=30");
        assert_eq!(cells[LATENCY_BUCKETS.len()], 1, "31 s is +Inf");
    }

    #[test]
    fn a_histogram_encodes_cumulative_buckets_with_inf() {
        let mut registry = Registry::default();
        let h = LatencyHistogram::default();
        registry.register("lat_seconds", "latency", h.clone());
        h.observe(0.002);
        h.observe(40.0);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encodes");
        assert!(out.contains("# TYPE lat_seconds histogram"), "{out}");
        assert!(out.contains("lat_seconds_count 2"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.001\"} 0"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.0025\"} 1"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"30.0\"} 1"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 2"), "{out}");
    }
}
