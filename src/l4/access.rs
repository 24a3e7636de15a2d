//! What an L4 listener's snapshot state holds (runtime pieces, below the state layer):
//! its compiled allow/deny list, and the counters that outlive snapshots (a rebuilt
//! snapshot takes over the counters of the listener with the same name).

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Access-log `error` code (and `gateway_l4_rejected_total` reason) of a denied client.
pub(super) const DENIED: &str = "denied";
/// The same, for a connection over `maxConnections`.
pub(super) const CONNECTION_LIMIT: &str = "connection_limit";

/// Compiled `allow`/`deny` lists: deny beats allow; an empty allow list admits everyone.
#[derive(Debug, Clone)]
pub(crate) struct AccessList {
    allow: Box<[IpNet]>,
    deny: Box<[IpNet]>,
}

impl AccessList {
    /// Overlapping and adjacent networks are merged, so checks walk short lists.
    pub(crate) fn new(allow: &[IpNet], deny: &[IpNet]) -> Self {
        AccessList {
            allow: IpNet::aggregate(&allow.to_vec()).into_boxed_slice(),
            deny: IpNet::aggregate(&deny.to_vec()).into_boxed_slice(),
        }
    }

    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        // A v4 client reaching an IPv6 socket appears as ::ffff:a.b.c.d; lists say a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// Counters of one L4 listener. They outlive configuration snapshots (a rebuilt snapshot
/// takes over the counters of the listener with the same name), so they can back
/// Prometheus counters; everything here is a relaxed atomic, read without locks.
#[derive(Debug, Default)]
pub(crate) struct L4Stats {
    /// Every connection the socket accepted, including those then rejected.
    pub accepted: AtomicU64,
    /// Connections admitted and not yet closed (the number `maxConnections` limits).
    pub active: AtomicU64,
    /// Closed at once because the client's address is denied (or not allowed).
    pub rejected_denied: AtomicU64,
    /// Closed at once because `maxConnections` were already open.
    pub rejected_limit: AtomicU64,
    /// Bytes read from clients (sent upstream).
    pub bytes_in: AtomicU64,
    /// Bytes written to clients (received from upstream).
    pub bytes_out: AtomicU64,
}

impl L4Stats {
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Rejections by reason; the reasons are the access-log `error` codes, a fixed set
    /// fit for a metric label.
    pub(crate) fn rejected(&self) -> [(&'static str, u64); 2] {
        [
            (DENIED, self.rejected_denied.load(Ordering::Relaxed)),
            (
                CONNECTION_LIMIT,
                self.rejected_limit.load(Ordering::Relaxed),
            ),
        ]
    }

    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    pub(crate) fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Takes one of `max` connection slots, or refuses when all are taken.
    pub(crate) fn try_admit(&self, max: u64) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| crate::config::validate::parse_network(s).expect("test network"))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn an_empty_allow_list_admits_everyone_and_deny_beats_allow() {
        let open = AccessList::new(&[], &[]);
        assert!(open.admits(ip("203.0.113.9")));
        assert!(open.admits(ip("2001:db8::1")));

        let list = AccessList::new(
            &nets(&["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]),
            &nets(&["10.0.5.0/24", "2001:db8:bad::/48"]),
        );
        assert!(list.admits(ip("10.1.2.3")));
        assert!(!list.admits(ip("10.0.5.7")), "deny beats allow");
        assert!(list.admits(ip("127.0.0.1")));
        assert!(!list.admits(ip("127.0.0.2")), "a bare IP is a /32");
        assert!(list.admits(ip("2001:db8:1::1")));
        assert!(!list.admits(ip("2001:db8:bad::1")));
        assert!(
            !list.admits(ip("192.0.2.1")),
            "not in a non-empty allow list"
        );
        assert!(
            list.admits(ip("::ffff:10.1.2.3")),
            "an IPv4-mapped client is matched as IPv4"
        );
    }

    #[test]
    fn the_connection_limit_admits_exactly_max() {
        let stats = L4Stats::default();
        assert!(stats.try_admit(2));
        assert!(stats.try_admit(2));
        assert!(!stats.try_admit(2));
        stats.active.fetch_sub(1, Ordering::AcqRel);
        assert!(stats.try_admit(2));
        assert_eq!(stats.active(), 2);
    }
}
