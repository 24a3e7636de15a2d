//! Process wiring around the request flow: build the first snapshot, bind every socket
//! before serving anything, run the accept loops and the admin listener, and drain on
//! shutdown.

use crate::config::Loaded;
use crate::state::{BuildError, Gateway, Snapshot};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Default time in-flight requests get to finish after SIGTERM/SIGINT.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// Bound address of each HTTP listener, by name (port 0 in the config is resolved here).
    pub listeners: Vec<(String, SocketAddr)>,
    /// Bound address of each L4 listener, by name.
    pub l4: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Set when the drain time is over: L4 connections still open are closed.
    stop_now: watch::Sender<bool>,
    drain_tx: Option<mpsc::Sender<()>>,
    drain_rx: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds the snapshot, binds every socket (so that a failure leaves nothing half
/// started) and starts serving.
pub async fn start(loaded: Loaded, config_path: PathBuf) -> Result<Running, StartError> {
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
    let snapshot = Snapshot::build(&loaded, 1, None, &metrics, crate::util::Clock::process())?;
    let cfg = snapshot.config.clone();
    let mut bound = Vec::new();
    for l in &cfg.listeners {
        let sock = crate::listener::bind(l.address).map_err(|source| StartError::Bind {
            what: format!("listener `{}`", l.name),
            addr: l.address,
            source,
        })?;
        bound.push((l.name.clone(), sock));
    }
    let mut bound_l4 = Vec::new();
    for l in &cfg.l4 {
        let sock = crate::listener::bind(l.address).map_err(|source| StartError::Bind {
            what: format!("L4 listener `{}`", l.name),
            addr: l.address,
            source,
        })?;
        bound_l4.push((l.name.clone(), sock));
    }
    let admin_sock = match &cfg.admin {
        Some(a) => Some(
            crate::listener::bind(a.address).map_err(|source| StartError::Bind {
                what: "admin listener".into(),
                addr: a.address,
                source,
            })?,
        ),
        None => None,
    };

    let gateway = Gateway::new(snapshot, config_path, metrics);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (stop_now, stop_now_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = mpsc::channel(1);
    let mut tasks = Vec::new();
    let mut listeners = Vec::new();
    for (index, (name, sock)) in bound.into_iter().enumerate() {
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            what: format!("listener `{name}`"),
            addr: cfg.listeners[index].address,
            source,
        })?;
        tracing::info!(listener = %name, %addr, "listening");
        listeners.push((name.clone(), addr));
        tasks.push(tokio::spawn(crate::listener::accept_http(
            sock,
            index,
            name.into(),
            gateway.clone(),
            shutdown_rx.clone(),
            drain_tx.clone(),
        )));
    }
    let mut l4 = Vec::new();
    for (index, (name, sock)) in bound_l4.into_iter().enumerate() {
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            what: format!("L4 listener `{name}`"),
            addr: cfg.l4[index].address,
            source,
        })?;
        tracing::info!(listener = %name, %addr, "L4 listening");
        l4.push((name.clone(), addr));
        tasks.push(tokio::spawn(crate::l4::accept(
            sock,
            index,
            name.into(),
            gateway.clone(),
            shutdown_rx.clone(),
            stop_now_rx.clone(),
            drain_tx.clone(),
        )));
    }
    let mut admin = None;
    if let Some(sock) = admin_sock {
        let addr = sock.local_addr().ok();
        admin = addr;
        tracing::info!(addr = ?addr, "admin listening");
        tasks.push(tokio::spawn(crate::admin::serve(
            sock,
            gateway.clone(),
            shutdown_rx.clone(),
        )));
    }
    gateway.ready.store(true, Ordering::Release);
    Ok(Running {
        gateway,
        listeners,
        l4,
        admin,
        shutdown,
        stop_now,
        drain_tx: Some(drain_tx),
        drain_rx,
        tasks,
    })
}

impl Running {
    /// The bound address of the HTTP listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The bound address of the L4 listener `name`.
    pub fn l4_addr(&self, name: &str) -> Option<SocketAddr> {
        self.l4.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits
    /// up to `drain` for them (L4 connections keep relaying until then, and are closed
    /// when it is over). Returns true if everything finished in time.
    pub async fn shutdown(mut self, drain: Duration) -> bool {
        self.gateway.draining.store(true, Ordering::Release);
        self.gateway.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        self.drain_tx = None;
        let drained = tokio::time::timeout(drain, self.drain_rx.recv())
            .await
            .is_ok();
        let _ = self.stop_now.send(true);
        for t in &self.tasks {
            t.abort();
        }
        drained
    }
}
