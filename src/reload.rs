//! Process layer: configuration reload, the one way a configuration takes effect (the
//! first one at start included). Read → parse → validate (exactly what `gateway validate`
//! checks, key material included) → build the candidate snapshot (no side effects) → bind
//! new sockets and open a new access-log file → swap (one `ArcSwap` store) → commit:
//! start new accept loops, retire removed listeners, switch the access log. Any failure
//! before the swap leaves the running configuration exactly as it was.
//!
//! SIGHUP, `POST /reload` and the file watcher all hand their request to one worker: at
//! most one reload runs, and requests that arrive meanwhile are answered together by the
//! next one.

use crate::balance::active::{Key, Lookup, Target};
use crate::config::model::Config;
use crate::config::Loaded;
use crate::registry::{specs, Registry};
use crate::state::{Gateway, ReloadOutcome, ReloadRecord, ReloadRequest, ReloadTrigger, Snapshot};
use crate::telemetry::access_log::Output;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

/// A configuration that took effect.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) generation: u64,
    pub(crate) hash: u64,
}

/// Why a configuration did not take effect; nothing changed.
#[derive(Debug)]
pub(crate) enum ApplyError {
    /// Building the snapshot, binding a socket or opening the access log failed.
    Failed(Vec<String>),
}

impl ApplyError {
    pub(crate) fn reasons(&self) -> &[String] {
        match self {
            ApplyError::Failed(r) => r,
        }
    }
}

/// Makes a validated configuration the running one, or changes nothing.
pub(crate) fn apply(
    gateway: &Arc<Gateway>,
    registry: &mut Registry,
    loaded: Loaded,
) -> Result<Applied, ApplyError> {
    if loaded.config.listeners.is_empty() && loaded.config.l4.is_empty() {
        return Err(ApplyError::Failed(vec![
            "the configuration has no HTTP or L4 listener: nothing to serve".into(),
        ]));
    }
    let previous = gateway.snapshot.load_full();
    let generation = previous.generation + 1;
    let candidate = Snapshot::build(&loaded, generation, Some(&previous), gateway)
        .map_err(|e| ApplyError::Failed(vec![e.to_string()]))?;
    let cfg = candidate.config.clone();
    // Resources the new configuration needs, acquired before the swap and released again
    // if anything fails: sockets, and the access-log file when its path changed.
    let bound = registry.bind(&specs(&cfg)).map_err(ApplyError::Failed)?;
    let target = cfg.access_log.as_ref().map(|a| a.target.clone());
    let switch_log = target != gateway.log.target();
    let output = match (&target, switch_log) {
        (Some(t), true) => Some(Output::open(t).map_err(|e| {
            ApplyError::Failed(vec![format!(
                "accessLog.path: cannot open {}: {e}",
                describe(t)
            )])
        })?),
        _ => None,
    };
    let plan_summary = summary(&previous.config, &cfg, bound.plan());
    // The swap: every request from here on takes the new snapshot.
    gateway.snapshot.store(Arc::new(candidate));
    // Commit.
    registry.commit(bound, gateway, &previous, cfg.shutdown.drain_timeout);
    start_probes(gateway);
    if switch_log {
        if let Err(e) = gateway.log.switch(output) {
            tracing::error!(error = %e, "cannot start the access-log writer");
        }
    }
    gateway.committed.send_replace(generation);
    if previous.generation > 0 {
        if previous.config.workers != cfg.workers {
            tracing::warn!(
                running = previous.config.workers,
                configured = cfg.workers,
                "`workers` changed; it takes effect only after a restart"
            );
        }
        tracing::info!(
            event = "config_reloaded",
            generation,
            hash = %format!("{:016x}", loaded.hash),
            added = %plan_summary.added.join(","),
            removed = %plan_summary.removed.join(","),
            changed = %plan_summary.changed.join(","),
            "configuration reloaded"
        );
    }
    Ok(Applied {
        generation,
        hash: loaded.hash,
    })
}

/// The commit of active health: probe loops for every endpoint of a cluster with
/// `activeHealth` in the running snapshot, the others stopped. Each check looks its
/// endpoint up in the snapshot running then, through a weak handle (a loop never keeps
/// the gateway alive).
fn start_probes(gateway: &Arc<Gateway>) {
    let snap = gateway.snapshot.load_full();
    let wanted: Vec<(Key, Arc<crate::balance::EndpointHealth>)> = snap
        .clusters
        .iter()
        .filter(|c| c.active_health.is_some())
        .flat_map(|c| {
            c.endpoints
                .iter()
                .map(|e| ((c.name.clone(), e.address.clone()), e.health.clone()))
        })
        .collect();
    let weak = Arc::downgrade(gateway);
    let lookup: Lookup = Arc::new(move |cluster: &str, endpoint: &str| {
        let gateway = weak.upgrade()?;
        let snap = gateway.snapshot.load();
        let c = snap.clusters.iter().find(|c| &*c.name == cluster)?;
        let check = c.active_health.clone()?;
        let e = c.endpoints.iter().find(|e| &*e.address == endpoint)?;
        Some(Target {
            authority: check.host.as_deref().unwrap_or(endpoint).into(),
            check,
            pool: e.pool.clone(),
            protocol: c.protocol,
            connect: c.timeouts.connect,
            health: e.health.clone(),
            epoch: c.balancer.epoch().clone(),
        })
    });
    if let Ok(mut probes) = gateway.probes.lock() {
        probes.sync(wanted, lookup);
    }
}

fn describe(t: &crate::config::model::LogTarget) -> String {
    match t {
        crate::config::model::LogTarget::Stdout => "stdout".into(),
        crate::config::model::LogTarget::Stderr => "stderr".into(),
        crate::config::model::LogTarget::File(p) => p.display().to_string(),
    }
}

/// What a reload adds, removes and changes, by name, for its log line.
#[derive(Debug, Default)]
struct Summary {
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

fn summary(old: &Config, new: &Config, plan: &crate::registry::Plan) -> Summary {
    let mut s = Summary::default();
    for spec in &plan.added {
        s.added
            .push(format!("{}:{}", spec.kind.as_str(), spec.name));
    }
    for spec in &plan.removed {
        s.removed
            .push(format!("{}:{}", spec.kind.as_str(), spec.name));
    }
    for (_, spec) in &plan.rebound {
        s.changed
            .push(format!("{}:{}", spec.kind.as_str(), spec.name));
    }
    fn by_name<'a, T: PartialEq + 'a>(
        kind: &str,
        old: impl Iterator<Item = (&'a str, &'a T)> + Clone,
        new: impl Iterator<Item = (&'a str, &'a T)> + Clone,
        s: &mut Summary,
    ) {
        for (name, n) in new.clone() {
            match old.clone().find(|(o, _)| *o == name) {
                None => s.added.push(format!("{kind}:{name}")),
                Some((_, o)) if o != n => s.changed.push(format!("{kind}:{name}")),
                _ => {}
            }
        }
        for (name, _) in old {
            if !new.clone().any(|(n, _)| n == name) {
                s.removed.push(format!("{kind}:{name}"));
            }
        }
    }
    // Listener sockets are in the plan; their settings are compared here.
    for l in &new.listeners {
        if let Some(o) = old.listeners.iter().find(|o| o.name == l.name) {
            if o != l && o.address == l.address {
                s.changed.push(format!("http:{}", l.name));
            }
        }
    }
    by_name(
        "route",
        old.routes.iter().map(|r| (r.name.as_str(), r)),
        new.routes.iter().map(|r| (r.name.as_str(), r)),
        &mut s,
    );
    by_name(
        "cluster",
        old.clusters.iter().map(|c| (c.name.as_str(), c)),
        new.clusters.iter().map(|c| (c.name.as_str(), c)),
        &mut s,
    );
    s
}

/// Reads and validates the configuration file, then applies it.
async fn reload_once(
    gateway: &Arc<Gateway>,
    registry: &Mutex<Registry>,
    trigger: ReloadTrigger,
) -> ReloadOutcome {
    let started = Instant::now();
    let path = gateway.config_path.clone();
    // Validation reads files (the configuration, certificates, keys): off the runtime.
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path)).await;
    let loaded = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(invalid)) => {
            for w in &invalid.warnings {
                tracing::warn!("{w}");
            }
            return ReloadOutcome::Invalid(
                invalid.errors.iter().map(ToString::to_string).collect(),
            );
        }
        Err(e) => return ReloadOutcome::Failed(vec![format!("reload task failed: {e}")]),
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let mut registry = registry.lock().await;
    match apply(gateway, &mut registry, loaded) {
        Ok(applied) => {
            tracing::debug!(
                trigger = trigger.as_str(),
                ms = started.elapsed().as_millis() as u64,
                "reload applied"
            );
            ReloadOutcome::Applied {
                generation: applied.generation,
                hash: applied.hash,
            }
        }
        Err(e) => ReloadOutcome::Failed(e.reasons().to_vec()),
    }
}

/// The reload worker and the file watcher feeding it.
#[derive(Debug)]
pub(crate) struct Workers {
    worker: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
}

impl Workers {
    pub(crate) fn stop(&self) {
        self.worker.abort();
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// Starts the reload worker and the file watcher (which watches while `reload.watch` is
/// on).
pub(crate) fn spawn_workers(gateway: Arc<Gateway>, registry: Arc<Mutex<Registry>>) -> Workers {
    Workers {
        worker: spawn_worker(gateway.clone(), registry),
        watcher: crate::watch::spawn(gateway),
    }
}

fn spawn_worker(gateway: Arc<Gateway>, registry: Arc<Mutex<Registry>>) -> JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ReloadRequest>();
    let _ = gateway.reloads.set(tx);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Everything that asked while the last reload ran is answered by this one.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let trigger = batch[0].trigger;
            // systemd (Type=notify-reload) waits for RELOADING=1, then READY=1.
            crate::notify::reloading();
            let outcome = reload_once(&gateway, &registry, trigger).await;
            crate::notify::ready(&match &outcome {
                ReloadOutcome::Applied { generation, .. } => {
                    format!("serving configuration generation {generation}")
                }
                _ => "serving; the last reload failed and changed nothing".to_string(),
            });
            match &outcome {
                ReloadOutcome::Applied { .. } => gateway.metrics.reload_succeeded(),
                ReloadOutcome::Invalid(reasons) | ReloadOutcome::Failed(reasons) => {
                    gateway.metrics.reload_failed();
                    tracing::error!(
                        event = "config_reload_failed",
                        trigger = trigger.as_str(),
                        reasons = %reasons.join("; "),
                        "configuration reload failed; the running configuration is unchanged"
                    );
                }
            }
            if let Ok(mut last) = gateway.last_reload.lock() {
                *last = Some(ReloadRecord {
                    at: SystemTime::now(),
                    trigger,
                    outcome: outcome.clone(),
                });
            }
            for request in batch {
                if let Some(reply) = request.reply {
                    let _ = reply.send(outcome.clone());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_arrive_while_a_reload_runs_are_answered_by_one_more() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            "listeners: [{ name: public, address: 127.0.0.1:0 }]\n",
        )
        .expect("write");
        let gateway = Gateway::new(path.clone());
        let mut registry = Registry::default();
        let loaded = crate::config::load(&path).expect("valid");
        apply(&gateway, &mut registry, loaded).expect("applied");
        let registry = Arc::new(Mutex::new(registry));
        let workers = spawn_workers(gateway.clone(), registry.clone());
        // While the registry is held, no reload can finish: every request below is sent
        // while at most the first one is running.
        let held = registry.lock().await;
        let answers: Vec<_> = (0..8)
            .map(|_| gateway.request_reload(ReloadTrigger::Api).expect("worker"))
            .collect();
        drop(held);
        let mut generations = std::collections::BTreeSet::new();
        for a in answers {
            match a.await.expect("answered") {
                ReloadOutcome::Applied { generation, .. } => generations.insert(generation),
                other => panic!("{other:?}"),
            };
        }
        assert!(
            generations.len() <= 2 && generations.iter().all(|g| *g == 2 || *g == 3),
            "one running, one queued: {generations:?}"
        );
        assert_eq!(
            gateway.snapshot.load().generation,
            *generations.last().expect("one")
        );
        workers.stop();
    }
}
