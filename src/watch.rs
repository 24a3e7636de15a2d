//! Process layer: `reload.watch`, the file watcher that feeds the reload worker. It
//! watches the *directories* of the configuration file and of every file it references
//! (certificates, keys, CA bundles, the token file), not the files: an editor's
//! rename-on-save and a Kubernetes ConfigMap's `..data` symlink swap replace the file, and
//! a watch on the file itself would be left on the old inode. On any event it waits for
//! the events to stop for `reload.debounce` (trailing edge), then reads every watched file
//! through its path again and reloads only when their bytes changed. A broken edit is just
//! a failed reload (the next change tries again); an overflowed event queue reloads.

use crate::certs::{fnv1a, fnv1a_with};
use crate::config::model::Config;
use crate::state::{Gateway, ReloadTrigger};
use notify::{RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events queued between the watcher's thread and the task; beyond it the queue counts as
/// overflowed (and a reload follows).
const QUEUE: usize = 1024;

/// Every file a configuration reads: itself, then what it references.
fn files(config_path: &Path, cfg: &Config) -> Vec<PathBuf> {
    let mut out = vec![config_path.to_path_buf()];
    for l in &cfg.listeners {
        for c in l.tls.iter().flat_map(|t| &t.certificates) {
            out.push(c.cert.clone());
            out.push(c.key.clone());
        }
    }
    for c in &cfg.clusters {
        let s = &c.security;
        out.extend(
            [&s.ca_bundle, &s.client_cert, &s.client_key]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(t) = cfg.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        out.push(t.clone());
    }
    out
}

/// The directory a file lives in, as the watcher needs it.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What the files hold now, read through their paths (following symlinks, so a swapped
/// `..data` link is seen). A file that cannot be read counts as its error.
fn fingerprint(files: &[PathBuf]) -> u64 {
    files.iter().fold(fnv1a(b"watch"), |h, f| {
        let h = fnv1a_with(h, f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(bytes) => fnv1a_with(fnv1a_with(h, b"ok"), &bytes),
            Err(e) => fnv1a_with(h, e.kind().to_string().as_bytes()),
        }
    })
}

enum Seen {
    Change,
    /// The event queue overflowed: changes may have been missed.
    Overflow,
}

/// Starts watching for the running configuration (absolute paths), unless the watcher
/// cannot be created (then reloads still work by SIGHUP and `POST /reload`).
pub(crate) fn spawn(gateway: Arc<Gateway>) -> Option<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel::<Seen>(QUEUE);
    let handler = move |event: notify::Result<notify::Event>| {
        let seen = match &event {
            Ok(e) if e.need_rescan() => Seen::Overflow,
            Ok(e) if e.kind.is_access() => return,
            Ok(_) => Seen::Change,
            Err(_) => Seen::Overflow,
        };
        if tx.try_send(seen).is_err() {
            // Full: the task has plenty to do already; one more event changes nothing,
            // unless it is the overflow itself, which the full queue stands for.
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration files; reload with SIGHUP or POST /reload");
            return None;
        }
    };
    // Watching starts before `start` returns: a change made right after is seen.
    let config_path =
        std::path::absolute(&gateway.config_path).unwrap_or_else(|_| gateway.config_path.clone());
    let mut watched = BTreeSet::new();
    let first = refresh(&gateway, &config_path, &mut watcher, &mut watched);
    Some(tokio::spawn(run(
        gateway,
        config_path,
        watcher,
        watched,
        first,
        rx,
    )))
}

/// Watches what the running configuration references (nothing while `reload.watch` is
/// off); returns the fingerprint of those files and the files.
fn refresh(
    gateway: &Gateway,
    config_path: &Path,
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
) -> (u64, Vec<PathBuf>) {
    let snap = gateway.snapshot.load();
    let files = if snap.config.reload.watch {
        files(config_path, &snap.config)
    } else {
        Vec::new()
    };
    rewatch(watcher, watched, &files);
    (fingerprint(&files), files)
}

async fn run(
    gateway: Arc<Gateway>,
    config_path: PathBuf,
    mut watcher: notify::RecommendedWatcher,
    mut watched: BTreeSet<PathBuf>,
    first: (u64, Vec<PathBuf>),
    mut rx: mpsc::Receiver<Seen>,
) {
    let mut committed = gateway.committed.subscribe();
    committed.mark_unchanged();
    let (mut last, mut current) = first;
    loop {
        let first = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            c = committed.changed() => {
                if c.is_err() {
                    return;
                }
                // Whatever committed it, watch what the new configuration references.
                // The bytes last tried stay the baseline while the same files are
                // watched: a change made while the reload ran is still seen as one.
                let (fp, files) = refresh(&gateway, &config_path, &mut watcher, &mut watched);
                if files != current {
                    (last, current) = (fp, files);
                }
                continue;
            }
        };
        if current.is_empty() {
            continue; // `reload.watch: false`
        }
        let mut overflow = matches!(first, Seen::Overflow) || rx.capacity() == 0;
        // Trailing-edge debounce: wait until no event has come for `debounce`.
        let debounce = gateway.snapshot.load().config.reload.debounce;
        loop {
            match tokio::time::timeout(debounce.max(Duration::from_millis(1)), rx.recv()).await {
                Ok(Some(Seen::Overflow)) => overflow = true,
                Ok(Some(Seen::Change)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let now = fingerprint(&current);
        if now == last && !overflow {
            continue; // touched, not changed (or changed and changed back)
        }
        // Whatever this reload makes of it, these bytes have been tried: only a further
        // change tries again.
        last = now;
        tracing::info!(overflow, "configuration files changed; reloading");
        let Some(answer) = gateway.request_reload(ReloadTrigger::Watch) else {
            return;
        };
        // A commit is then seen through `committed` above.
        let _ = answer.await;
    }
}

/// Watches exactly the directories of `files`.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(watched) {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory; changes in it need SIGHUP or POST /reload");
        }
    }
    *watched = wanted;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_the_bytes_behind_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("gateway.yaml");
        std::fs::write(&f, "a").expect("write");
        let files = vec![f.clone()];
        let a = fingerprint(&files);
        std::fs::write(&f, "a").expect("write");
        assert_eq!(fingerprint(&files), a, "rewritten with the same bytes");
        std::fs::write(&f, "b").expect("write");
        assert_ne!(fingerprint(&files), a);
        std::fs::remove_file(&f).expect("remove");
        assert_ne!(fingerprint(&files), a, "a missing file is a change too");
    }

    #[test]
    fn a_file_without_a_folder_is_watched_in_the_current_one() {
        assert_eq!(dir_of(Path::new("gateway.yaml")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("/etc/gateway/gateway.yaml")),
            PathBuf::from("/etc/gateway")
        );
    }
}
