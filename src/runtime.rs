//! Process wiring around the request flow: the first configuration is committed like every
//! later one (build the snapshot, bind every socket, swap, start the accept loops), then
//! the reload worker takes over; shutdown drains every listener before the admin one.

use crate::config::Loaded;
use crate::registry::Registry;
use crate::reload::{self, Applied, Workers};
use crate::state::{Gateway, ReloadOutcome, ReloadTrigger};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Default time in-flight requests get to finish after SIGTERM/SIGINT.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not start: every reason (sockets that could not be bound, …).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct StartError(pub Vec<String>);

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    pub(crate) gateway: Arc<Gateway>,
    registry: Arc<Mutex<Registry>>,
    /// Bound address of each HTTP listener at start, by name (port 0 in the config is
    /// resolved here). After a reload, [`Running::addr`] has the current ones.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Bound address of the admin listener at start.
    pub admin: Option<SocketAddr>,
    workers: Workers,
}

/// Builds the snapshot, binds every socket (so that a failure leaves nothing half
/// started) and starts serving, with a reload worker for `POST /reload`, SIGHUP and the
/// file watcher.
pub async fn start(loaded: Loaded, config_path: PathBuf) -> Result<Running, StartError> {
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let gateway = Gateway::new(config_path);
    let mut registry = Registry::default();
    match reload::apply(&gateway, &mut registry, loaded) {
        Ok(Applied { .. }) => {}
        Err(e) => return Err(StartError(e.reasons().to_vec())),
    }
    gateway.ready.store(true, Ordering::Release);
    let registry = Arc::new(Mutex::new(registry));
    let workers = reload::spawn_workers(gateway.clone(), registry.clone());
    let listening = gateway.listening();
    let http = |kind: &str| {
        listening
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| (l.name.to_string(), l.address))
            .collect::<Vec<_>>()
    };
    Ok(Running {
        listeners: http("http"),
        admin: http("admin").first().map(|(_, a)| *a),
        gateway,
        registry,
        workers,
    })
}

impl Running {
    /// The bound address of the HTTP listener `name`, now.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.find("http", name)
    }

    /// The bound address of the L4 listener `name`, now.
    pub fn l4_addr(&self, name: &str) -> Option<SocketAddr> {
        self.find("l4", name)
    }

    /// The bound address of the admin listener, now.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.find("admin", "admin")
    }

    fn find(&self, kind: &str, name: &str) -> Option<SocketAddr> {
        self.gateway
            .listening()
            .iter()
            .find(|l| l.kind == kind && &*l.name == name)
            .map(|l| l.address)
    }

    /// The metrics in the Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.gateway.metrics.encode()
    }

    /// Reloads the configuration file now, as SIGHUP does, and waits for the outcome:
    /// `Ok(generation)`, or every reason it failed (the running configuration then stays
    /// as it was).
    pub async fn reload(&self) -> Result<u64, Vec<String>> {
        self.reload_by(ReloadTrigger::Signal).await
    }

    pub(crate) async fn reload_by(&self, trigger: ReloadTrigger) -> Result<u64, Vec<String>> {
        let Some(answer) = self.gateway.request_reload(trigger) else {
            return Err(vec!["the reload worker is not running".into()]);
        };
        match answer.await {
            Ok(ReloadOutcome::Applied { generation, .. }) => Ok(generation),
            Ok(ReloadOutcome::Invalid(r) | ReloadOutcome::Failed(r)) => Err(r),
            Err(_) => Err(vec!["the reload worker stopped".into()]),
        }
    }

    /// Reopens access-log files (SIGUSR1, after logrotate moved them).
    pub fn reopen_logs(&self) {
        self.gateway.log.reopen();
    }

    /// The drain settings of the running configuration: (`shutdown.delay`,
    /// `shutdown.drainTimeout`).
    pub fn shutdown_settings(&self) -> (Duration, Duration) {
        let s = self.gateway.snapshot.load().config.shutdown;
        (s.delay, s.drain_timeout)
    }

    /// Marks the gateway as draining: `/readyz` answers 503 from now on, while every
    /// listener keeps serving (so load balancers notice before anything closes).
    pub fn begin_drain(&self) {
        self.gateway.draining.store(true, Ordering::Release);
        self.gateway.ready.store(false, Ordering::Release);
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits
    /// up to `drain` for them (L4 connections keep relaying until then); what is still
    /// open afterwards is closed, and the admin listener goes last. Returns true if
    /// everything finished in time.
    pub async fn shutdown(self, drain: Duration) -> bool {
        self.begin_drain();
        self.workers.stop();
        let deadline = tokio::time::Instant::now() + drain;
        let mut registry = self.registry.lock().await;
        registry.shutdown(&self.gateway, deadline).await
    }
}
