//! The runtime snapshot: everything a request needs, built from a checked config off the
//! request path and published through `ArcSwap`. A request loads one `Arc<Snapshot>` at
//! its start and keeps it to its end.

use crate::balance::active::Prober;
use crate::balance::ratelimit::RateLimiter;
use crate::balance::{Balancer, EndpointHealth};
use crate::config::model::{self, ClusterTimeouts, Protocol};
use crate::config::Loaded;
use crate::http::rules::{Direct, HeaderRules, Redirect, Rewrite};
use crate::l4::access::{AccessList, L4Stats};
use crate::router::{Conditions, HeaderCondition, Router};
use crate::telemetry::access_log::{AccessLogger, LogSink};
use crate::telemetry::metrics::{
    counter_family, gauge_family, EndpointErrors, ListenerHandles, Metrics, RouteCounters,
    RouteHandles, ScrapeSource,
};
use crate::upstream::{Pool, UpstreamTls};
use crate::util::Clock;
use arc_swap::ArcSwap;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug)]
pub(crate) struct Snapshot {
    pub generation: u64,
    pub hash: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<model::Config>,
    pub listeners: Vec<Arc<ListenerState>>,
    /// Every route, in file order (the listeners' tables share them).
    pub routes: Vec<Arc<RouteState>>,
    pub clusters: Vec<Arc<ClusterState>>,
    /// TCP passthrough listeners, in file order.
    pub l4: Vec<Arc<L4ListenerState>>,
    pub access_log: Option<Arc<AccessLogger>>,
}

#[derive(Debug)]
pub(crate) struct ListenerState {
    pub name: Arc<str>,
    pub cfg: model::Listener,
    pub router: Router<RouteEntry>,
    /// Request metrics for requests that match no route.
    pub no_route: Arc<RouteHandles>,
    /// Connection metrics of this listener.
    pub connections: Arc<ListenerHandles>,
    /// TLS termination (certificates loaded, SNI map built); None = plaintext.
    pub tls: Option<Arc<crate::tls::TlsServer>>,
}

/// What the router yields: the route, and its metric handles on this listener.
#[derive(Debug, Clone)]
pub(crate) struct RouteEntry {
    pub route: Arc<RouteState>,
    pub metrics: Arc<RouteHandles>,
}

/// An L4 listener, ready for its accept loop: the cluster resolved, the access lists
/// compiled.
#[derive(Debug)]
pub(crate) struct L4ListenerState {
    pub name: Arc<str>,
    pub cfg: model::L4Listener,
    pub cluster: Arc<ClusterState>,
    pub access: AccessList,
    /// Carried over from the previous snapshot's listener of the same name.
    pub stats: Arc<L4Stats>,
}

#[derive(Debug)]
pub(crate) struct RouteState {
    pub name: Arc<str>,
    /// Forward to a cluster, or answer by itself.
    pub action: Action,
    /// The cluster's timeouts with this route's overrides applied (unused by routes that
    /// answer by themselves).
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub request: Option<Duration>,
    pub retry_attempts: u32,
    /// Counters of the route (across its listeners): retries.
    pub counters: RouteCounters,
    /// `rewrite`: the upstream's path prefix and host.
    pub rewrite: Rewrite,
    /// `headers.request`, applied after the forwarding headers.
    pub request_headers: HeaderRules,
    /// `headers.response`, applied to every response of the route.
    pub response_headers: HeaderRules,
    /// `rateLimit`, if any.
    pub rate_limit: Option<RouteLimit>,
}

/// A route's rate limit: its settings and its buckets, which outlive a reload that keeps
/// the route's name and settings.
#[derive(Debug)]
pub(crate) struct RouteLimit {
    pub settings: model::RateLimit,
    pub limiter: Arc<RateLimiter>,
}

/// What a route does with a request that passed its rules.
#[derive(Debug)]
pub(crate) enum Action {
    Forward(Arc<ClusterState>),
    Redirect(Redirect),
    Direct(Direct),
}

impl RouteState {
    /// The cluster the route forwards to, if it does.
    pub(crate) fn cluster(&self) -> Option<&Arc<ClusterState>> {
        match &self.action {
            Action::Forward(c) => Some(c),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ClusterState {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub endpoints: Box<[Arc<EndpointState>]>,
    /// Smooth WRR over the endpoints in rotation, fed by passive health.
    pub balancer: Balancer,
    pub timeouts: ClusterTimeouts,
    /// `activeHealth`: its probes run beside the snapshot (see `balance::active`).
    pub active_health: Option<model::ActiveHealth>,
}

#[derive(Debug)]
pub(crate) struct EndpointState {
    pub address: Arc<str>,
    pub weight: u32,
    pub pool: Arc<Pool>,
    /// Passive-health history; carried over by reloads that keep the endpoint.
    pub health: Arc<EndpointHealth>,
    /// `gateway_upstream_errors_total` of this endpoint.
    pub errors: EndpointErrors,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("cluster `{0}`: {1}")]
    ClusterTls(String, String),
    #[error("listener `{listener}`: {message}")]
    ListenerTls { listener: String, message: String },
}

/// Snapshots built and not yet dropped, across the process (`gateway_config_snapshots`):
/// the running one, plus older ones that requests in flight still use. Tunnels and idle
/// connections hold none, so this comes back to 1 once a reload's in-flight requests end.
static SNAPSHOTS_ALIVE: AtomicU64 = AtomicU64::new(0);

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.generation > 0 {
            SNAPSHOTS_ALIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Snapshot {
    /// Builds a snapshot, with no side effect: nothing is read, opened, bound or started
    /// (the material comes from validation; outputs are opened when the snapshot is
    /// committed). What outlives snapshots is carried over from `previous` by value: the
    /// connection pool of an endpoint that stays with equal settings (cluster, address,
    /// protocol, TLS settings and material), its health history, the cluster's health
    /// epoch, an L4 listener's counters.
    pub(crate) fn build(
        loaded: &Loaded,
        generation: u64,
        previous: Option<&Snapshot>,
        gateway: &Gateway,
    ) -> Result<Snapshot, BuildError> {
        let metrics = &gateway.metrics;
        let cfg = &loaded.config;
        let mut old_clusters: HashMap<&str, &ClusterState> = HashMap::new();
        let mut old_endpoints: HashMap<(&str, &str), &EndpointState> = HashMap::new();
        if let Some(prev) = previous {
            for c in &prev.clusters {
                old_clusters.insert(&c.name, c);
                for e in c.endpoints.iter() {
                    old_endpoints.insert((&c.name, &e.address), e);
                }
            }
        }
        let clusters: Vec<Arc<ClusterState>> = cfg
            .clusters
            .iter()
            .map(|c| build_cluster(c, &old_clusters, &old_endpoints, gateway.clock, metrics))
            .collect::<Result<_, BuildError>>()?;
        let by_name: HashMap<&str, &Arc<ClusterState>> =
            clusters.iter().map(|c| (&*c.name, c)).collect();

        // Buckets of routes whose name and limit settings stay.
        let old_limits: HashMap<&str, &RouteLimit> = previous
            .into_iter()
            .flat_map(|p| p.routes.iter())
            .filter_map(|r| Some((&*r.name, r.rate_limit.as_ref()?)))
            .collect();
        let routes: Vec<(&model::Route, Arc<RouteState>)> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let (action, t) = match &r.action {
                    model::RouteAction::Cluster(c) => {
                        let cluster = by_name.get(c.as_str())?;
                        let t = cluster.timeouts;
                        (Action::Forward(Arc::clone(cluster)), t)
                    }
                    model::RouteAction::Redirect(d) => (
                        Action::Redirect(Redirect::compile(&r.path_prefix, d)),
                        crate::config::validate::DEFAULT_CLUSTER_TIMEOUTS,
                    ),
                    model::RouteAction::Direct(d) => (
                        Action::Direct(Direct::compile(d)),
                        crate::config::validate::DEFAULT_CLUSTER_TIMEOUTS,
                    ),
                };
                Some((
                    r,
                    Arc::new(RouteState {
                        name: r.name.as_str().into(),
                        action,
                        connect: r.timeouts.connect.unwrap_or(t.connect),
                        read: r.timeouts.read.unwrap_or(t.read),
                        write: r.timeouts.write.unwrap_or(t.write),
                        request: r.timeouts.request,
                        retry_attempts: r.retry_attempts,
                        counters: metrics.route_counters(&r.name),
                        rewrite: Rewrite::compile(r),
                        request_headers: HeaderRules::compile(&r.request_headers),
                        response_headers: HeaderRules::compile(&r.response_headers),
                        rate_limit: r.rate_limit.as_ref().map(|settings| {
                            let limiter = match old_limits.get(r.name.as_str()) {
                                Some(old) if old.settings == *settings => old.limiter.clone(),
                                _ => Arc::new(RateLimiter::new(
                                    settings.requests_per_second,
                                    settings.burst,
                                    settings.key != model::RateLimitKey::Route,
                                )),
                            };
                            RouteLimit {
                                settings: settings.clone(),
                                limiter,
                            }
                        }),
                    }),
                ))
            })
            .collect();

        let listeners = cfg
            .listeners
            .iter()
            .map(|l| {
                let tls = match &l.tls {
                    Some(t) => Some(Arc::new(crate::tls::TlsServer::build(t).map_err(
                        |message| BuildError::ListenerTls {
                            listener: l.name.clone(),
                            message,
                        },
                    )?)),
                    None => None,
                };
                let entries = routes
                    .iter()
                    .filter(|(r, _)| r.listeners.as_ref().is_none_or(|ls| ls.contains(&l.name)))
                    .map(|(r, state)| {
                        let cluster = r.action.cluster().unwrap_or("");
                        let handles = metrics.route_handles(&l.name, Some((&r.name, cluster)));
                        let entry = RouteEntry {
                            route: Arc::clone(state),
                            metrics: Arc::new(handles),
                        };
                        (r.host.clone(), r.path_prefix.clone(), conditions(r), entry)
                    });
                let (router, _shadowed) = Router::build_with_conditions(entries);
                Ok(Arc::new(ListenerState {
                    name: l.name.as_str().into(),
                    cfg: l.clone(),
                    router,
                    no_route: Arc::new(metrics.route_handles(&l.name, None)),
                    connections: Arc::new(metrics.listener_handles(&l.name)),
                    tls,
                }))
            })
            .collect::<Result<_, BuildError>>()?;

        let l4 = cfg
            .l4
            .iter()
            .filter_map(|l| {
                let cluster = by_name.get(l.cluster.as_str())?;
                let stats = previous
                    .and_then(|p| p.l4.iter().find(|old| *old.name == *l.name))
                    .map(|old| Arc::clone(&old.stats))
                    .unwrap_or_default();
                Some(Arc::new(L4ListenerState {
                    name: l.name.as_str().into(),
                    cfg: l.clone(),
                    cluster: Arc::clone(cluster),
                    access: AccessList::new(&l.allow, &l.deny),
                    stats,
                }))
            })
            .collect();

        let access_log = cfg
            .access_log
            .as_ref()
            .map(|a| AccessLogger::new(a, gateway.log.clone()));

        SNAPSHOTS_ALIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Snapshot {
            generation,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            config: Arc::new(cfg.clone()),
            listeners,
            routes: routes.into_iter().map(|(_, r)| r).collect(),
            clusters,
            l4,
            access_log,
        })
    }

    /// The listener state by position, falling back to a search by name (after a reload
    /// that reordered listeners).
    pub(crate) fn listener(&self, index: usize, name: &str) -> Option<&Arc<ListenerState>> {
        match self.listeners.get(index) {
            Some(l) if &*l.name == name => Some(l),
            _ => self.listeners.iter().find(|l| &*l.name == name),
        }
    }

    /// The HTTP listener named `name`, with its position.
    pub(crate) fn listener_named(&self, name: &str) -> Option<(usize, &Arc<ListenerState>)> {
        self.listeners
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
    }

    /// The L4 listener named `name`.
    pub(crate) fn l4_named(&self, name: &str) -> Option<&Arc<L4ListenerState>> {
        self.l4.iter().find(|l| &*l.name == name)
    }

    /// The snapshot before the first configuration is committed (generation 0): nothing
    /// to serve.
    pub(crate) fn empty(source: PathBuf) -> Snapshot {
        Snapshot {
            generation: 0,
            hash: 0,
            loaded_at: SystemTime::now(),
            config: Arc::new(model::Config::empty(source)),
            listeners: Vec::new(),
            routes: Vec::new(),
            clusters: Vec::new(),
            l4: Vec::new(),
            access_log: None,
        }
    }
}

/// A route's `match.methods` and `match.headers`, compiled for the router.
fn conditions(r: &model::Route) -> Conditions {
    Conditions::new(
        r.methods.clone(),
        r.match_headers
            .iter()
            .map(|h| HeaderCondition {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect(),
    )
}

/// One cluster's state. An endpoint that was in `old` with equal settings keeps its pool
/// (and so its warm connections); every endpoint that stays keeps its health history; the
/// cluster keeps its health epoch, so an ejection recorded through any snapshot's balancer
/// reaches every other one.
fn build_cluster(
    c: &model::Cluster,
    old_clusters: &HashMap<&str, &ClusterState>,
    old_endpoints: &HashMap<(&str, &str), &EndpointState>,
    clock: Clock,
    metrics: &Metrics,
) -> Result<Arc<ClusterState>, BuildError> {
    let tls_error = |e: String| BuildError::ClusterTls(c.name.clone(), e);
    // Built once per cluster, and only if some endpoint needs a new pool.
    let mut client_config = None;
    let mut endpoints = Vec::with_capacity(c.endpoints.len());
    for e in &c.endpoints {
        let address: Arc<str> = e.address.as_str().into();
        let old = old_endpoints.get(&(c.name.as_str(), e.address.as_str()));
        let pool = match old.map(|o| &o.pool) {
            Some(p) if p.same_settings(c.protocol, &c.security) => p.clone(),
            _ => {
                if client_config.is_none() {
                    client_config = Some(
                        crate::upstream::client_config(&c.security, c.protocol)
                            .map_err(tls_error)?,
                    );
                }
                let tls = match client_config.as_ref().and_then(Option::as_ref) {
                    Some(config) => Some(UpstreamTls {
                        config: config.clone(),
                        server_name: crate::upstream::server_name(&c.security, &e.address)
                            .map_err(tls_error)?,
                    }),
                    None => None,
                };
                Arc::new(Pool::new(
                    address.clone(),
                    c.protocol,
                    c.security.clone(),
                    tls,
                ))
            }
        };
        let health = old.map(|o| o.health.clone()).unwrap_or_default();
        endpoints.push(Arc::new(EndpointState {
            errors: metrics.endpoint_errors(&c.name, &address),
            address,
            weight: e.weight,
            pool,
            health,
        }));
    }
    let name: Arc<str> = c.name.as_str().into();
    let epoch = old_clusters
        .get(c.name.as_str())
        .map(|o| o.balancer.epoch().clone())
        .unwrap_or_default();
    let balancer = Balancer::new(
        name.clone(),
        endpoints
            .iter()
            .map(|e| (e.address.clone(), e.weight, e.health.clone()))
            .collect(),
        c.passive_health.clone(),
        c.active_health.is_some(),
        epoch,
        clock,
    );
    Ok(Arc::new(ClusterState {
        name,
        protocol: c.protocol,
        balancer,
        endpoints: endpoints.into_boxed_slice(),
        timeouts: c.timeouts,
        active_health: c.active_health.clone(),
    }))
}

/// Process-wide state: the current snapshot and what outlives any one configuration.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    /// The process clock every stored time is on.
    pub(crate) clock: Clock,
    /// The access-log writer every snapshot's logger writes through.
    pub(crate) log: Arc<LogSink>,
    /// For uptime.
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) config_path: PathBuf,
    /// True once every listener is bound and accepting.
    pub(crate) ready: AtomicBool,
    /// True once shutdown has begun (`/readyz` then answers 503).
    pub(crate) draining: AtomicBool,
    /// Where `POST /reload` hands its request; set when the reload worker starts.
    pub(crate) reloads: OnceLock<mpsc::UnboundedSender<ReloadRequest>>,
    /// The last reload's outcome, for `/status`.
    pub(crate) last_reload: Mutex<Option<ReloadRecord>>,
    /// The listeners accepting now, with the addresses they are bound to.
    pub(crate) listening: Mutex<Vec<Listening>>,
    /// The generation last committed, for whoever follows the configuration (the file
    /// watcher watches what each one references).
    pub(crate) committed: tokio::sync::watch::Sender<u64>,
    /// Active health's probe loops, started and stopped when a configuration is
    /// committed (never by building a snapshot).
    pub(crate) probes: Mutex<Prober>,
}

/// A listener that is accepting, as bound (port 0 in the configuration resolved).
#[derive(Debug, Clone)]
pub(crate) struct Listening {
    /// `http`, `l4` or `admin`.
    pub(crate) kind: &'static str,
    pub(crate) name: Arc<str>,
    pub(crate) address: SocketAddr,
}

impl Gateway {
    /// A gateway with nothing to serve yet: its first configuration is committed like
    /// every later one.
    pub(crate) fn new(config_path: PathBuf) -> Arc<Gateway> {
        let gateway = Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(config_path.clone())),
            metrics: Arc::new(Metrics::new()),
            clock: Clock::process(),
            log: LogSink::new(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            config_path,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reloads: OnceLock::new(),
            last_reload: Mutex::new(None),
            listening: Mutex::new(Vec::new()),
            committed: tokio::sync::watch::channel(0).0,
            probes: Mutex::new(Prober::default()),
        });
        let source: Arc<dyn ScrapeSource> = gateway.clone();
        gateway.metrics.attach(Arc::downgrade(&source));
        gateway
    }

    /// The listeners accepting now.
    pub(crate) fn listening(&self) -> Vec<Listening> {
        self.listening.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Asks the reload worker for a reload; the answer comes when it has finished (None
    /// when no worker runs).
    pub(crate) fn request_reload(
        &self,
        trigger: ReloadTrigger,
    ) -> Option<oneshot::Receiver<ReloadOutcome>> {
        let (tx, rx) = oneshot::channel();
        let sender = self.reloads.get()?;
        sender
            .send(ReloadRequest {
                trigger,
                reply: Some(tx),
            })
            .ok()?;
        Some(rx)
    }
}

/// What asked for a reload (it is in the log line of every reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReloadTrigger {
    Signal,
    Api,
    Watch,
}

impl ReloadTrigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::Api => "api",
            ReloadTrigger::Watch => "watch",
        }
    }
}

/// One request for a reload. Requests that arrive while a reload runs are answered
/// together by the next one.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub(crate) trigger: ReloadTrigger,
    pub(crate) reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// How a reload ended.
#[derive(Debug, Clone)]
pub(crate) enum ReloadOutcome {
    Applied {
        generation: u64,
        hash: u64,
    },
    /// The new configuration is invalid: every error, with key paths.
    Invalid(Vec<String>),
    /// It was valid but could not be applied (a socket could not be bound, say); nothing
    /// changed.
    Failed(Vec<String>),
}

/// The last reload, as `/status` shows it.
#[derive(Debug, Clone)]
pub(crate) struct ReloadRecord {
    pub(crate) at: SystemTime,
    pub(crate) trigger: ReloadTrigger,
    pub(crate) outcome: ReloadOutcome,
}

/// The snapshot-derived metrics, read at scrape time.
impl ScrapeSource for Gateway {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.load_full();
        gauge_family(
            encoder,
            "config_snapshots",
            "Configuration snapshots in memory: the running one, and older ones that requests in flight still use.",
            [(Vec::new(), SNAPSHOTS_ALIVE.load(Ordering::Relaxed) as i64)],
        )?;
        gauge_family(
            encoder,
            "config_generation",
            "Generation of the running configuration (1 at start, +1 per successful reload).",
            [(Vec::new(), snap.generation as i64)],
        )?;
        counter_family(
            encoder,
            "access_log_dropped",
            "Access-log lines dropped because the writer could not keep up.",
            [(
                Vec::new(),
                crate::telemetry::metrics::ACCESS_LOG_DROPPED
                    .load(std::sync::atomic::Ordering::Relaxed),
            )],
        )?;
        gauge_family(
            encoder,
            "endpoint_healthy",
            "1 if the endpoint receives traffic, 0 if it is ejected.",
            snap.clusters.iter().flat_map(|c| {
                c.endpoints.iter().enumerate().map(move |(i, e)| {
                    let healthy = c.balancer.view(i).is_none_or(|v| v.healthy);
                    (
                        vec![
                            ("cluster", c.name.to_string()),
                            ("endpoint", e.address.to_string()),
                        ],
                        i64::from(healthy),
                    )
                })
            }),
        )?;
        counter_family(
            encoder,
            "endpoint_ejections",
            "Passive-health ejections by endpoint.",
            snap.clusters.iter().flat_map(|c| {
                c.endpoints.iter().map(move |e| {
                    (
                        vec![
                            ("cluster", c.name.to_string()),
                            ("endpoint", e.address.to_string()),
                        ],
                        e.health.ejections_total(),
                    )
                })
            }),
        )?;
        let l4 = &snap.l4;
        let name = |l: &L4ListenerState| l.name.to_string();
        counter_family(
            encoder,
            "l4_connections",
            "TCP connections accepted by L4 listener (including rejected ones).",
            l4.iter()
                .map(|l| (vec![("listener", name(l))], l.stats.accepted())),
        )?;
        gauge_family(
            encoder,
            "l4_active_connections",
            "Open L4 connections by listener.",
            l4.iter()
                .map(|l| (vec![("listener", name(l))], l.stats.active() as i64)),
        )?;
        counter_family(
            encoder,
            "l4_bytes",
            "Bytes relayed by L4 listener; direction in = from clients, out = to clients.",
            l4.iter().flat_map(|l| {
                [
                    (
                        vec![("listener", name(l)), ("direction", "in".to_string())],
                        l.stats.bytes_in(),
                    ),
                    (
                        vec![("listener", name(l)), ("direction", "out".to_string())],
                        l.stats.bytes_out(),
                    ),
                ]
            }),
        )?;
        counter_family(
            encoder,
            "l4_rejected",
            "L4 connections closed at once, by reason (denied, connection_limit).",
            l4.iter().flat_map(|l| {
                l.stats.rejected().into_iter().map(move |(reason, v)| {
                    (
                        vec![("listener", name(l)), ("reason", reason.to_string())],
                        v,
                    )
                })
            }),
        )?;
        Ok(())
    }
}
