//! The runtime snapshot: everything a request needs, built from a checked config off the
//! request path and published through `ArcSwap`. A request loads one `Arc<Snapshot>` at
//! its start and keeps it to its end.

use crate::balance::{Balancer, EndpointHealth};
use crate::config::model::{self, ClusterTimeouts, Protocol};
use crate::config::Loaded;
use crate::l4::access::{AccessList, L4Stats};
use crate::router::Router;
use crate::telemetry::access_log::AccessLogger;
use crate::telemetry::metrics::{
    counter_family, gauge_family, ListenerHandles, Metrics, RouteHandles, ScrapeSource,
};
use crate::upstream::{Pool, UpstreamTls};
use crate::util::Clock;
use arc_swap::ArcSwap;
use prometheus_client::encoding::DescriptorEncoder;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub hash: u64,
    pub loaded_at: SystemTime,
    pub config: Arc<model::Config>,
    pub listeners: Vec<Arc<ListenerState>>,
    pub clusters: Vec<Arc<ClusterState>>,
    /// TCP passthrough listeners, in file order.
    pub l4: Vec<Arc<L4ListenerState>>,
    pub access_log: Option<Arc<AccessLogger>>,
}

#[derive(Debug)]
pub struct ListenerState {
    pub name: Arc<str>,
    pub cfg: model::Listener,
    pub router: Router<RouteEntry>,
    /// Request metrics for requests that match no route.
    pub no_route: Arc<RouteHandles>,
    /// Connection metrics of this listener.
    pub connections: ListenerHandles,
    /// TLS termination (certificates loaded, SNI map built); None = plaintext.
    pub tls: Option<Arc<crate::tls::TlsServer>>,
}

/// What the router yields: the route, and its metric handles on this listener.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub route: Arc<RouteState>,
    pub metrics: Arc<RouteHandles>,
}

/// An L4 listener, ready for its accept loop: the cluster resolved, the access lists
/// compiled.
#[derive(Debug)]
pub struct L4ListenerState {
    pub name: Arc<str>,
    pub cfg: model::L4Listener,
    pub cluster: Arc<ClusterState>,
    pub access: AccessList,
    /// Carried over from the previous snapshot's listener of the same name.
    pub stats: Arc<L4Stats>,
}

#[derive(Debug)]
pub struct RouteState {
    pub name: Arc<str>,
    pub cluster: Arc<ClusterState>,
    /// The cluster's timeouts with this route's overrides applied.
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub request: Option<Duration>,
    pub retry_attempts: u32,
}

#[derive(Debug)]
pub struct ClusterState {
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub endpoints: Box<[Arc<EndpointState>]>,
    /// Smooth WRR over the endpoints in rotation, fed by passive health.
    pub balancer: Balancer,
    pub timeouts: ClusterTimeouts,
}

#[derive(Debug)]
pub struct EndpointState {
    pub address: Arc<str>,
    pub weight: u32,
    pub pool: Arc<Pool>,
    /// Passive-health history; carried over by reloads that keep the endpoint.
    pub health: Arc<EndpointHealth>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open access log: {0}")]
    AccessLog(#[source] std::io::Error),
    #[error("cluster `{0}`: {1}")]
    ClusterTls(String, String),
    #[error("listener `{listener}`: {message}")]
    ListenerTls { listener: String, message: String },
}

impl Snapshot {
    /// Builds a snapshot. Connection pools of endpoints that also exist in `previous`
    /// (same cluster, address and protocol) are kept, so a reload drops no connection.
    pub fn build(
        loaded: &Loaded,
        generation: u64,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        clock: Clock,
    ) -> Result<Snapshot, BuildError> {
        let cfg = &loaded.config;
        let mut old_pools: HashMap<(&str, &str), &Arc<Pool>> = HashMap::new();
        let mut old_health: HashMap<(&str, &str), &Arc<EndpointHealth>> = HashMap::new();
        if let Some(prev) = previous {
            for c in &prev.clusters {
                for e in c.endpoints.iter() {
                    old_pools.insert((&c.name, &e.address), &e.pool);
                    old_health.insert((&c.name, &e.address), &e.health);
                }
            }
        }
        let clusters: Vec<Arc<ClusterState>> = cfg
            .clusters
            .iter()
            .map(|c| {
                let tls_config = crate::upstream::client_config(&c.security, c.protocol)
                    .map_err(|e| BuildError::ClusterTls(c.name.clone(), e))?;
                let endpoints: Box<[Arc<EndpointState>]> = c
                    .endpoints
                    .iter()
                    .map(|e| {
                        let address: Arc<str> = e.address.as_str().into();
                        let tls = match &tls_config {
                            Some(config) => Some(UpstreamTls {
                                config: config.clone(),
                                server_name: crate::upstream::server_name(&c.security, &e.address)
                                    .map_err(|err| BuildError::ClusterTls(c.name.clone(), err))?,
                            }),
                            None => None,
                        };
                        let pool = old_pools
                            .get(&(c.name.as_str(), e.address.as_str()))
                            .filter(|p| p.same_settings(c.protocol, tls.as_ref()))
                            .map(|p| Arc::clone(p))
                            .unwrap_or_else(|| {
                                Arc::new(Pool::new(address.clone(), c.protocol, tls))
                            });
                        let health = old_health
                            .get(&(c.name.as_str(), e.address.as_str()))
                            .map(|h| Arc::clone(h))
                            .unwrap_or_default();
                        Ok(Arc::new(EndpointState {
                            address,
                            weight: e.weight,
                            pool,
                            health,
                        }))
                    })
                    .collect::<Result<_, BuildError>>()?;
                let name: Arc<str> = c.name.as_str().into();
                let balancer = Balancer::new(
                    name.clone(),
                    endpoints
                        .iter()
                        .map(|e| (e.address.clone(), e.weight, e.health.clone()))
                        .collect(),
                    c.passive_health.clone(),
                    clock,
                );
                Ok(Arc::new(ClusterState {
                    name,
                    protocol: c.protocol,
                    balancer,
                    endpoints,
                    timeouts: c.timeouts,
                }))
            })
            .collect::<Result<_, BuildError>>()?;
        let by_name: HashMap<&str, &Arc<ClusterState>> =
            clusters.iter().map(|c| (&*c.name, c)).collect();

        let routes: Vec<(&model::Route, Arc<RouteState>)> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let cluster = by_name.get(r.cluster.as_str())?;
                let t = cluster.timeouts;
                Some((
                    r,
                    Arc::new(RouteState {
                        name: r.name.as_str().into(),
                        cluster: Arc::clone(cluster),
                        connect: r.timeouts.connect.unwrap_or(t.connect),
                        read: r.timeouts.read.unwrap_or(t.read),
                        write: r.timeouts.write.unwrap_or(t.write),
                        request: r.timeouts.request,
                        retry_attempts: r.retry_attempts,
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
                        let handles = metrics.route_handles(&l.name, Some((&r.name, &r.cluster)));
                        let entry = RouteEntry {
                            route: Arc::clone(state),
                            metrics: Arc::new(handles),
                        };
                        (r.host.clone(), r.path_prefix.clone(), entry)
                    });
                let (router, _shadowed) = Router::build(entries);
                Ok(Arc::new(ListenerState {
                    name: l.name.as_str().into(),
                    cfg: l.clone(),
                    router,
                    no_route: Arc::new(metrics.route_handles(&l.name, None)),
                    connections: metrics.listener_handles(&l.name),
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

        let access_log = match &cfg.access_log {
            Some(a) => Some(AccessLogger::start(a).map_err(BuildError::AccessLog)?),
            None => None,
        };

        Ok(Snapshot {
            generation,
            hash: loaded.hash,
            loaded_at: SystemTime::now(),
            config: Arc::new(cfg.clone()),
            listeners,
            clusters,
            l4,
            access_log,
        })
    }

    /// The listener state by position, falling back to a search by name (after a reload
    /// that reordered listeners).
    pub fn listener(&self, index: usize, name: &str) -> Option<&Arc<ListenerState>> {
        match self.listeners.get(index) {
            Some(l) if &*l.name == name => Some(l),
            _ => self.listeners.iter().find(|l| &*l.name == name),
        }
    }
}

impl Snapshot {
    /// The L4 listener state by position, falling back to a search by name.
    pub fn l4_listener(&self, index: usize, name: &str) -> Option<&Arc<L4ListenerState>> {
        match self.l4.get(index) {
            Some(l) if &*l.name == name => Some(l),
            _ => self.l4.iter().find(|l| &*l.name == name),
        }
    }
}

/// Process-wide state: the current snapshot and what outlives any one configuration.
#[derive(Debug)]
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<Metrics>,
    /// The process clock every stored time is on.
    pub clock: Clock,
    /// For uptime.
    pub started: Instant,
    pub started_at: SystemTime,
    pub config_path: PathBuf,
    /// True once every listener is bound and accepting.
    pub ready: AtomicBool,
    /// True once shutdown has begun (`/readyz` then answers 503).
    pub draining: AtomicBool,
}

impl Gateway {
    pub fn new(snapshot: Snapshot, config_path: PathBuf, metrics: Arc<Metrics>) -> Arc<Gateway> {
        let gateway = Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            clock: Clock::process(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            config_path,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        let source: Arc<dyn ScrapeSource> = gateway.clone();
        gateway.metrics.attach(Arc::downgrade(&source));
        gateway
    }
}

/// The snapshot-derived metrics, read at scrape time.
impl ScrapeSource for Gateway {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.load_full();
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
