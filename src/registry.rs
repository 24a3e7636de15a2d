//! Process layer: the listener registry. Every listener (HTTP, L4 and admin) is known by
//! kind and name. [`plan`] compares the running set with a new configuration's: added,
//! removed, kept (same kind, name and address: the socket stays open, so nothing in its
//! accept queue is lost) and rebound (same name, new address). New sockets are bound
//! before the snapshot is swapped, and closed again if the reload is rolled back; at
//! commit, accept loops start on them, and listeners that went away stop accepting at
//! once while their open connections drain until the drain deadline.

use crate::config::model::Config;
use crate::listener::{accept_loop, bind, ConnLimit, Drain, ErrorCounter};
use crate::state::{Gateway, ListenerState, Listening, Snapshot};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Http,
    L4,
    Admin,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::L4 => "l4",
            Kind::Admin => "admin",
        }
    }
}

/// One listener as a configuration asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) kind: Kind,
    pub(crate) name: Arc<str>,
    /// As configured (port 0: any free port, chosen when bound).
    pub(crate) address: SocketAddr,
    /// HTTP listeners: `maxConnections`, enforced before accept. (L4 listeners enforce
    /// theirs after accept, by closing; the admin listener has none.)
    pub(crate) max_connections: Option<usize>,
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Http => write!(f, "listener `{}`", self.name),
            Kind::L4 => write!(f, "L4 listener `{}`", self.name),
            Kind::Admin => f.write_str("admin listener"),
        }
    }
}

/// The listeners a configuration asks for.
pub(crate) fn specs(cfg: &Config) -> Vec<Spec> {
    let http = cfg.listeners.iter().map(|l| Spec {
        kind: Kind::Http,
        name: l.name.as_str().into(),
        address: l.address,
        max_connections: Some(l.max_connections),
    });
    let l4 = cfg.l4.iter().map(|l| Spec {
        kind: Kind::L4,
        name: l.name.as_str().into(),
        address: l.address,
        max_connections: None,
    });
    let admin = cfg.admin.iter().map(|a| Spec {
        kind: Kind::Admin,
        name: "admin".into(),
        address: a.address,
        max_connections: None,
    });
    http.chain(l4).chain(admin).collect()
}

/// How to get from one set of listeners to another.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) added: Vec<Spec>,
    pub(crate) removed: Vec<Spec>,
    /// Same kind, name and address: the socket and its accept loop stay (in their new
    /// settings).
    pub(crate) kept: Vec<Spec>,
    /// Same kind and name, another address: (old, new).
    pub(crate) rebound: Vec<(Spec, Spec)>,
}

/// Compares the running listeners with the ones a new configuration asks for.
pub(crate) fn plan(old: &[Spec], new: &[Spec]) -> Plan {
    let mut p = Plan::default();
    let same = |a: &Spec, b: &Spec| a.kind == b.kind && a.name == b.name;
    for n in new {
        match old.iter().find(|o| same(o, n)) {
            Some(o) if o.address == n.address => p.kept.push(n.clone()),
            Some(o) => p.rebound.push((o.clone(), n.clone())),
            None => p.added.push(n.clone()),
        }
    }
    for o in old {
        if !new.iter().any(|n| same(o, n)) {
            p.removed.push(o.clone());
        }
    }
    p
}

/// A running listener.
struct Entry {
    spec: Spec,
    local: SocketAddr,
    socket: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    drain: Arc<Drain>,
    limit: Option<Arc<ConnLimit>>,
}

/// Sockets bound for a plan, before the swap. Dropping it (a rollback) closes the new
/// ones; the running listeners are untouched.
pub(crate) struct Bound {
    plan: Plan,
    fresh: Vec<(Spec, Arc<TcpListener>, SocketAddr)>,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("plan", &self.plan)
            .field("fresh", &self.fresh.len())
            .finish()
    }
}

impl Bound {
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }
}

/// The running listeners.
#[derive(Default)]
pub(crate) struct Registry {
    entries: Vec<Entry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.spec, e.local)))
            .finish()
    }
}

impl Registry {
    pub(crate) fn specs(&self) -> Vec<Spec> {
        self.entries.iter().map(|e| e.spec.clone()).collect()
    }

    /// Binds every socket the new set needs (added and rebound listeners). A listener
    /// that takes over the address of one that goes away (a renamed listener, say) takes
    /// over its socket instead, since both cannot be bound at once. Errors name the
    /// listener and the address; on any error nothing stays bound.
    pub(crate) fn bind(&self, new: &[Spec]) -> Result<Bound, Vec<String>> {
        let plan = plan(&self.specs(), new);
        let going = plan
            .removed
            .iter()
            .chain(plan.rebound.iter().map(|(old, _)| old));
        let mut releasing: HashMap<SocketAddr, Arc<TcpListener>> = HashMap::new();
        for spec in going.filter(|s| s.address.port() != 0) {
            if let Some(e) = self.entries.iter().find(|e| e.spec == *spec) {
                releasing.insert(spec.address, e.socket.clone());
            }
        }
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        let coming = plan
            .added
            .iter()
            .chain(plan.rebound.iter().map(|(_, new)| new));
        for spec in coming {
            let socket = match releasing.remove(&spec.address) {
                Some(s) => Ok(s),
                None => bind(spec.address).map(Arc::new),
            };
            match socket.and_then(|s| Ok((s.local_addr()?, s))) {
                Ok((local, socket)) => fresh.push((spec.clone(), socket, local)),
                Err(e) => errors.push(format!("cannot bind {spec} on {}: {e}", spec.address)),
            }
        }
        if errors.is_empty() {
            Ok(Bound { plan, fresh })
        } else {
            Err(errors)
        }
    }

    /// After the swap: starts accept loops on the new sockets, applies kept listeners'
    /// new limits, and retires the listeners that went away: they stop accepting at once
    /// and their connections drain until `drain_timeout` (requests on them meanwhile are
    /// served by `previous`, the snapshot they were accepted on).
    pub(crate) fn commit(
        &mut self,
        bound: Bound,
        gateway: &Arc<Gateway>,
        previous: &Snapshot,
        drain_timeout: Duration,
    ) {
        let Bound { plan, fresh } = bound;
        for spec in &plan.kept {
            if let Some(e) = self
                .entries
                .iter_mut()
                .find(|e| e.spec.kind == spec.kind && e.spec.name == spec.name)
            {
                if let (Some(limit), Some(max)) = (&e.limit, spec.max_connections) {
                    if limit.max() != max {
                        limit.set_max(max);
                    }
                }
                e.spec = spec.clone();
            }
        }
        let going: Vec<Spec> = plan
            .removed
            .iter()
            .cloned()
            .chain(plan.rebound.iter().map(|(old, _)| old.clone()))
            .collect();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        for spec in going {
            let Some(i) = self.entries.iter().position(|e| e.spec == spec) else {
                continue;
            };
            let entry = self.entries.remove(i);
            let _ = entry.stop.send(true);
            let retired: Option<Arc<ListenerState>> = match spec.kind {
                Kind::Http => previous.listener_named(&spec.name).map(|(_, l)| l.clone()),
                _ => None,
            };
            tracing::info!(listener = %spec.name, kind = spec.kind.as_str(), address = %entry.local, open = entry.drain.open(), "listener removed: stopped accepting, draining its connections");
            let drain = entry.drain.clone();
            tokio::spawn(async move {
                // Keeps the listener's last state alive for requests still arriving on
                // its connections, until the drain ends.
                let _retired = retired;
                if !drain.drain_until(deadline).await {
                    tracing::warn!(listener = %spec.name, "drain deadline passed; closed the connections still open");
                }
            });
        }
        for (spec, socket, local) in fresh {
            tracing::info!(listener = %spec.name, kind = spec.kind.as_str(), address = %local, "listening");
            let entry = start(spec, socket, local, gateway);
            self.entries.push(entry);
        }
        self.publish(gateway);
    }

    fn publish(&self, gateway: &Gateway) {
        let listening = self
            .entries
            .iter()
            .map(|e| Listening {
                kind: e.spec.kind.as_str(),
                name: e.spec.name.clone(),
                address: e.local,
            })
            .collect();
        if let Ok(mut l) = gateway.listening.lock() {
            *l = listening;
        }
    }

    /// Process shutdown: HTTP and L4 listeners stop accepting and drain until `deadline`
    /// (then their remaining connections are closed); the admin listener goes last, so
    /// `/readyz` keeps answering 503 while the rest drains. Returns true if every
    /// connection finished in time.
    pub(crate) async fn shutdown(
        &mut self,
        gateway: &Gateway,
        deadline: tokio::time::Instant,
    ) -> bool {
        let (admin, serving): (Vec<Entry>, Vec<Entry>) = self
            .entries
            .drain(..)
            .partition(|e| e.spec.kind == Kind::Admin);
        // Stop accepting, and let go of the sockets (they close as their loops end), then
        // wait for the connections.
        let drains: Vec<Arc<Drain>> = serving
            .into_iter()
            .map(|e| {
                let _ = e.stop.send(true);
                e.drain
            })
            .collect();
        self.publish(gateway);
        for d in &drains {
            d.drain();
        }
        let mut drained = true;
        for d in &drains {
            drained &= d.drain_until(deadline).await;
        }
        for e in &admin {
            let _ = e.stop.send(true);
            e.drain.stop();
        }
        self.publish(gateway);
        drained
    }
}

/// Starts the accept loop of one listener on its socket.
fn start(spec: Spec, socket: Arc<TcpListener>, local: SocketAddr, gateway: &Arc<Gateway>) -> Entry {
    let (stop, stop_rx) = watch::channel(false);
    let drain = Drain::new();
    let limit = spec.max_connections.map(ConnLimit::new);
    let errors: ErrorCounter = Arc::new(gateway.metrics.accept_errors(&spec.name));
    let name = spec.name.clone();
    let (gw, d) = (gateway.clone(), drain.clone());
    let loop_socket = socket.clone();
    match spec.kind {
        Kind::Http => {
            let n = name.clone();
            tokio::spawn(accept_loop(
                loop_socket,
                name,
                limit.clone(),
                stop_rx,
                errors,
                move |stream, peer, permit| {
                    crate::http::server::accept(&gw, &n, stream, peer, permit, d.track());
                },
            ));
        }
        Kind::L4 => {
            let n = name.clone();
            tokio::spawn(accept_loop(
                loop_socket,
                name,
                None,
                stop_rx,
                errors,
                move |stream, peer, _| {
                    crate::l4::accept(&gw, &n, stream, peer, d.track());
                },
            ));
        }
        Kind::Admin => {
            tokio::spawn(accept_loop(
                loop_socket,
                name,
                None,
                stop_rx,
                errors,
                move |stream, _, _| {
                    crate::admin::accept(&gw, stream, d.track());
                },
            ));
        }
    }
    Entry {
        spec,
        local,
        socket,
        stop,
        drain,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind, name: &str, addr: &str) -> Spec {
        Spec {
            kind,
            name: name.into(),
            address: addr.parse().expect("test address"),
            max_connections: None,
        }
    }

    #[test]
    fn the_plan_keeps_same_name_and_address_and_rebinds_a_moved_one() {
        let old = [
            spec(Kind::Http, "public", "0.0.0.0:80"),
            spec(Kind::Http, "moved", "0.0.0.0:81"),
            spec(Kind::L4, "gone", "0.0.0.0:82"),
            spec(Kind::Admin, "admin", "127.0.0.1:9901"),
        ];
        let new = [
            spec(Kind::Http, "public", "0.0.0.0:80"),
            spec(Kind::Http, "moved", "0.0.0.0:8081"),
            spec(Kind::L4, "new", "0.0.0.0:83"),
            spec(Kind::Admin, "admin", "127.0.0.1:9901"),
        ];
        let p = plan(&old, &new);
        assert_eq!(p.kept, vec![new[0].clone(), new[3].clone()]);
        assert_eq!(p.rebound, vec![(old[1].clone(), new[1].clone())]);
        assert_eq!(p.added, vec![new[2].clone()]);
        assert_eq!(p.removed, vec![old[2].clone()]);
    }

    #[test]
    fn a_name_that_changes_kind_is_removed_and_added() {
        let old = [spec(Kind::Http, "x", "0.0.0.0:80")];
        let new = [spec(Kind::L4, "x", "0.0.0.0:80")];
        let p = plan(&old, &new);
        assert_eq!(p.removed, old.to_vec());
        assert_eq!(p.added, new.to_vec());
        assert!(p.kept.is_empty() && p.rebound.is_empty());
    }

    #[test]
    fn starting_from_nothing_adds_everything() {
        let new = [
            spec(Kind::Http, "a", "127.0.0.1:0"),
            spec(Kind::L4, "b", "127.0.0.1:0"),
        ];
        let p = plan(&[], &new);
        assert_eq!(p.added, new.to_vec());
        assert_eq!(plan(&new, &new).kept, new.to_vec());
    }
}
