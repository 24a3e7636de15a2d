//! Accept step, the first of every connection (HTTP, L4 and admin alike): binds listener
//! sockets, runs the one accept loop type (under a `maxConnections` permit where the
//! listener has one; beyond it, connections wait in the backlog), backs off and counts
//! when `accept` fails, and tracks each listener's open connections so that they can be
//! drained (a removed listener, or shutdown) and closed at a deadline.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Listen backlog: connections beyond `maxConnections` wait here.
const BACKLOG: i32 = 1024;
/// First pause after a failed accept; doubled while failures continue.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per listener per this long while `accept` keeps failing.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Descriptors belong to the process, not to a listener: a connection closing anywhere
/// frees one for every listener. Accept loops backing off count themselves here, and a
/// closing connection wakes them at once (HAProxy does the same) instead of leaving the
/// queued connections to wait for the backoff timer; when none is backing off, a close
/// costs one atomic load.
static BACKING_OFF: AtomicUsize = AtomicUsize::new(0);
static RELEASED: Notify = Notify::const_new();

/// Binds a TCP listener with address reuse, so a restart does not wait for TIME_WAIT.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Where a listener's connections are in their life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Finish what is in flight and close: HTTP/1.1 `connection: close` on the next
    /// response, HTTP/2 GOAWAY. L4 connections keep relaying until `Stopped`.
    Draining,
    /// The drain deadline passed: close now.
    Stopped,
}

/// The open connections of one listener and the signal that drains, then stops them.
#[derive(Debug)]
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    open: AtomicUsize,
    closed: Notify,
}

impl Drain {
    pub(crate) fn new() -> Arc<Drain> {
        Arc::new(Drain {
            phase: watch::channel(Phase::Serving).0,
            open: AtomicUsize::new(0),
            closed: Notify::new(),
        })
    }

    /// Counts a connection (or a tunnel that outlives its HTTP connection) until the
    /// guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnGuard {
            drain: self.clone(),
            phase: self.phase.subscribe(),
        }
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn drain(&self) {
        self.phase.send_if_modified(|p| {
            let changed = *p == Phase::Serving;
            if changed {
                *p = Phase::Draining;
            }
            changed
        });
    }

    pub(crate) fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }

    /// Drains, waits up to `deadline` for every connection to close, then stops the rest.
    /// Returns true if everything closed in time.
    pub(crate) async fn drain_until(&self, deadline: tokio::time::Instant) -> bool {
        self.drain();
        let closed = tokio::time::timeout_at(deadline, self.until_closed())
            .await
            .is_ok();
        self.stop();
        closed
    }

    /// Resolves once no connection is open.
    pub(crate) async fn until_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One tracked connection: it holds its listener's count up, and watches the phase.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    drain: Arc<Drain>,
    phase: watch::Receiver<Phase>,
}

impl ConnGuard {
    /// The listener's phase, to watch for draining and stopping.
    pub(crate) fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.clone()
    }

    /// Another guard on the same listener (for a tunnel that outlives its connection).
    pub(crate) fn track_another(&self) -> ConnGuard {
        self.drain.track()
    }

    /// Resolves when the listener's phase reaches `at_least` (or its drain is gone).
    pub(crate) async fn until(&mut self, at_least: Phase) {
        let reached = |p: &Phase| match at_least {
            Phase::Serving => true,
            Phase::Draining => *p != Phase::Serving,
            Phase::Stopped => *p == Phase::Stopped,
        };
        let _ = self.phase.wait_for(reached).await;
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.drain.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drain.closed.notify_waiters();
        }
        // The connection's sockets are closed by now where they drop before their guard;
        // where not, the woken accept fails again and waits out its pause.
        if BACKING_OFF.load(Ordering::Acquire) > 0 {
            RELEASED.notify_waiters();
        }
    }
}

/// A listener's `maxConnections`: a permit is taken before each accept, so connections
/// beyond it wait in the backlog. A reload can raise or lower the limit; lowering it below
/// the connections already open takes effect as they close.
#[derive(Debug)]
pub(crate) struct ConnLimit {
    permits: Arc<Semaphore>,
    max: AtomicUsize,
    /// Permits still to be forgotten as connections close (after a lowered limit).
    debt: AtomicUsize,
    /// Wakes an accept loop holding a permit for its next connection when the limit is
    /// lowered, so that the permit is given back (and owed) rather than used.
    lowered: Notify,
}

impl ConnLimit {
    pub(crate) fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            permits: Arc::new(Semaphore::new(max)),
            max: AtomicUsize::new(max),
            debt: AtomicUsize::new(0),
            lowered: Notify::new(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Changes the limit for connections accepted from now on.
    pub(crate) fn set_max(&self, max: usize) {
        let old = self.max.swap(max, Ordering::AcqRel);
        if max > old {
            let mut more = max - old;
            // Pay back what is still owed from an earlier lowering first.
            while more > 0 {
                let debt = self.debt.load(Ordering::Acquire);
                if debt == 0 {
                    break;
                }
                let pay = debt.min(more);
                if self
                    .debt
                    .compare_exchange(debt, debt - pay, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    more -= pay;
                }
            }
            self.permits.add_permits(more);
        } else if max < old {
            let fewer = old - max;
            let forgotten = self.permits.forget_permits(fewer);
            self.debt.fetch_add(fewer - forgotten, Ordering::AcqRel);
            self.lowered.notify_waiters();
        }
    }

    async fn acquire(self: &Arc<Self>) -> Option<Permit> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        Some(Permit {
            limit: self.clone(),
            permit: Some(permit),
        })
    }
}

/// One connection's slot under its listener's `maxConnections`.
#[derive(Debug)]
pub(crate) struct Permit {
    limit: Arc<ConnLimit>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .limit
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if owed.is_ok() {
            permit.forget();
        }
    }
}

/// Why `accept` failed, as the `reason` label of `gateway_accept_errors_total`.
pub(crate) fn accept_error_reason(e: &std::io::Error) -> &'static str {
    // EMFILE and ENFILE (the same numbers on Linux and the BSDs).
    match e.raw_os_error() {
        Some(24) | Some(23) => "descriptors",
        // ENOBUFS, ENOMEM.
        Some(105) | Some(12) | Some(55) => "memory",
        _ => match e.kind() {
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset => {
                "aborted"
            }
            _ => "other",
        },
    }
}

/// Counts failed accepts of one listener (`gateway_accept_errors_total`).
pub(crate) type ErrorCounter = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The accept loop of every listener: until `stop` is set, takes a permit (if the listener
/// has a connection limit), accepts, and hands the connection to `handle`. When `accept`
/// fails (out of descriptors, say) it backs off instead of spinning, logs at most once per
/// interval, counts each failure, retries when a connection closes (a descriptor is free
/// again) or the pause is over, and logs when `accept` succeeds again.
pub(crate) async fn accept_loop<H>(
    socket: Arc<TcpListener>,
    name: Arc<str>,
    limit: Option<Arc<ConnLimit>>,
    mut stop: watch::Receiver<bool>,
    errors: ErrorCounter,
    mut handle: H,
) where
    H: FnMut(TcpStream, SocketAddr, Option<Permit>),
{
    let mut backoff = BACKOFF_MIN;
    let mut last_log: Option<tokio::time::Instant> = None;
    let mut suppressed = 0u64;
    // Failed accepts since the last one that succeeded, and whether their first was logged.
    let mut failing = 0u64;
    let mut failing_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let permit = match &limit {
            Some(limit) => tokio::select! {
                p = limit.acquire() => match p { Some(p) => Some(p), None => return },
                _ = stop.changed() => return,
            },
            None => None,
        };
        let lowered = async {
            match &limit {
                Some(l) => l.lowered.notified().await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => return,
            // The permit held for the next connection may no longer be ours to use.
            () = lowered => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                if failing > 0 {
                    // Only after a logged start, so that this too is once per interval.
                    if failing_logged {
                        tracing::info!(listener = %name, failed = failing, "accept recovered");
                    }
                    failing = 0;
                }
                let _ = stream.set_nodelay(true);
                handle(stream, peer, permit);
            }
            Err(e) => {
                drop(permit);
                let reason = accept_error_reason(&e);
                errors(reason);
                if reason == "aborted" {
                    // The client gave up while queued: nothing wrong here.
                    continue;
                }
                let now = tokio::time::Instant::now();
                let log = last_log.is_none_or(|t| now.duration_since(t) >= ERROR_LOG_INTERVAL);
                if failing == 0 {
                    failing_logged = log;
                }
                failing += 1;
                if log {
                    tracing::error!(
                        listener = %name,
                        error = %e,
                        reason,
                        suppressed,
                        "accept failed; backing off"
                    );
                    last_log = Some(now);
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                match back_off(backoff, &mut stop).await {
                    Woken::Timer => backoff = (backoff * 2).min(BACKOFF_MAX),
                    // Try again at once; the pause stays as it was.
                    Woken::Released => {}
                    Woken::Stopped => return,
                }
            }
        }
    }
}

/// What ended one backoff pause.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Timer,
    /// A connection closed: a descriptor is free again.
    Released,
    Stopped,
}

/// One pause after a failed accept: until it is over, a connection closes anywhere in the
/// process, or `stop` changes. (Linux takes the new descriptor before it looks at the
/// accept queue, so at the descriptor limit `accept` fails even with no connection waiting,
/// and a loop can back off with nobody queued; a close wakes it all the same.)
async fn back_off(pause: Duration, stop: &mut watch::Receiver<bool>) -> Woken {
    /// Counts the loop as backing off for as long as it waits, even if cancelled.
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            BACKING_OFF.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let released = RELEASED.notified();
    tokio::pin!(released);
    released.as_mut().enable();
    BACKING_OFF.fetch_add(1, Ordering::AcqRel);
    let _waiting = Waiting;
    tokio::select! {
        () = tokio::time::sleep(pause) => Woken::Timer,
        () = released => Woken::Released,
        _ = stop.changed() => Woken::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lowered_limit_takes_effect_as_connections_close() {
        let limit = ConnLimit::new(2);
        let a = limit.acquire().await.expect("permit");
        let b = limit.acquire().await.expect("permit");
        limit.set_max(1);
        drop(a);
        assert_eq!(limit.permits.available_permits(), 0, "owed: forgotten");
        drop(b);
        assert_eq!(limit.permits.available_permits(), 1);
        limit.set_max(3);
        assert_eq!(limit.permits.available_permits(), 3);
        limit.set_max(1);
        assert_eq!(limit.permits.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_raised_limit_pays_back_what_is_owed_first() {
        let limit = ConnLimit::new(2);
        let a = limit.acquire().await.expect("permit");
        let b = limit.acquire().await.expect("permit");
        limit.set_max(0);
        limit.set_max(1);
        drop(a);
        drop(b);
        assert_eq!(limit.permits.available_permits(), 1);
    }

    #[tokio::test]
    async fn drain_waits_for_guards_then_stops() {
        let drain = Drain::new();
        let mut guard = drain.track();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.drain_until(deadline).await })
        };
        guard.until(Phase::Draining).await;
        drop(guard);
        assert!(waiter.await.expect("task"), "closed before the deadline");
        assert_eq!(*drain.phase.borrow(), Phase::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_ends_the_backoff_pause_at_once() {
        let (_tx, mut stop) = watch::channel(false);
        let start = tokio::time::Instant::now();
        // Nothing closes: the pause runs its course (time is virtual here).
        assert_eq!(back_off(BACKOFF_MAX, &mut stop).await, Woken::Timer);
        assert!(start.elapsed() >= BACKOFF_MAX);
        let drain = Drain::new();
        let guard = drain.track();
        let start = tokio::time::Instant::now();
        let (_tx, mut stop) = watch::channel(false);
        let pause = tokio::spawn(async move { back_off(BACKOFF_MAX, &mut stop).await });
        while BACKING_OFF.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        drop(guard);
        assert_eq!(pause.await.expect("task"), Woken::Released);
        assert!(start.elapsed() < BACKOFF_MAX, "{:?}", start.elapsed());
        assert_eq!(BACKING_OFF.load(Ordering::Acquire), 0);
    }

    #[test]
    fn out_of_descriptors_is_its_own_reason() {
        assert_eq!(
            accept_error_reason(&std::io::Error::from_raw_os_error(24)),
            "descriptors"
        );
        assert_eq!(
            accept_error_reason(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)),
            "aborted"
        );
    }
}
