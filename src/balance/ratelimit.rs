//! Rate limits, part of the route-rules step of the request path (before anything goes
//! upstream): a token bucket per key, as GCRA (one "theoretical arrival time" per key, so
//! a bucket is one `u64`). A route-wide limit is one atomic updated by compare-and-swap;
//! per-key limits live in sharded maps, each shard an LRU of at most its share of the
//! route's keys behind its own short lock, so workers limiting different clients do not
//! serialise and memory stays bounded.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys a per-key limiter remembers at most (spec: 100,000 per route).
pub const MAX_KEYS: usize = 100_000;
/// Shards of a full-size limiter; smaller ones have fewer (down to one, an exact LRU).
const MAX_SHARDS: usize = 64;
/// Keys per shard below which a limiter is not split further.
const KEYS_PER_SHARD: usize = 1024;

/// What a limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit: the next request of this key would be allowed after this long.
    Limited {
        retry_after: Duration,
    },
}

/// One route's limiter: `requests_per_second` with bursts of up to `burst` requests, per
/// key or for the whole route.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now a key's arrival time may be and still admit a request:
    /// `(burst - 1) × interval`, so a fresh key gets `burst` requests at once.
    tolerance_ns: u64,
    origin: Instant,
    /// The route-wide bucket (limiters without keys).
    single: AtomicU64,
    /// Per-key buckets; empty for a route-wide limiter.
    shards: Box<[Shard]>,
    /// Keyed hash of what identifies a client (client IPs, header values): unpredictable,
    /// so clients cannot aim at one shard or at another client's bucket.
    hasher: RandomState,
}

impl RateLimiter {
    /// A limiter of `requests_per_second` (> 0) with bursts of `burst` (≥ 1) requests:
    /// per key (at most [`MAX_KEYS`] remembered) when `per_key`, else for everything.
    pub fn new(requests_per_second: f64, burst: u32, per_key: bool) -> RateLimiter {
        Self::with_max_keys(
            requests_per_second,
            burst,
            if per_key { MAX_KEYS } else { 0 },
        )
    }

    /// As [`RateLimiter::new`], remembering at most `max_keys` keys (0 = route-wide).
    pub fn with_max_keys(requests_per_second: f64, burst: u32, max_keys: usize) -> RateLimiter {
        let interval_ns = (1e9 / requests_per_second.max(1e-9)).round().max(1.0) as u64;
        let shards = if max_keys == 0 {
            0
        } else {
            (max_keys / KEYS_PER_SHARD)
                .clamp(1, MAX_SHARDS)
                .next_power_of_two()
                .min(MAX_SHARDS)
        };
        let per_shard = max_keys.checked_div(shards).unwrap_or(0).max(1);
        RateLimiter {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1)) - 1),
            origin: Instant::now(),
            single: AtomicU64::new(0),
            shards: (0..shards)
                .map(|_| Shard(Mutex::new(Lru::new(per_shard))))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The key of a client address: an IPv4 address, or an IPv6 client's /64 (one
    /// subscriber usually has a whole /64, and could otherwise pick a fresh address per
    /// request).
    pub fn key_of_ip(&self, ip: IpAddr) -> u64 {
        let bits: u128 = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
        };
        self.hasher.hash_one(bits)
    }

    /// The key of some bytes (a header value; no header at all is the empty value).
    pub fn key_of_bytes(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes)
    }

    /// Admits or refuses one request of `key` (ignored by a route-wide limiter) now.
    #[inline]
    pub fn check(&self, key: u64) -> Decision {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.check_at(key, now)
    }

    /// As [`RateLimiter::check`], at `now_ns` nanoseconds after the limiter was made.
    pub fn check_at(&self, key: u64, now_ns: u64) -> Decision {
        if self.shards.is_empty() {
            return self.check_single(now_ns);
        }
        // The key is already a keyed hash: its low bits pick the shard.
        let shard = &self.shards[(key as usize) & (self.shards.len() - 1)];
        let Ok(mut lru) = shard.0.lock() else {
            // A panic while a shard was held: admit rather than refuse everyone.
            return Decision::Allowed;
        };
        let tat = lru.entry(key);
        let (decision, next) = self.gcra(*tat, now_ns);
        if let Some(next) = next {
            *tat = next;
        }
        decision
    }

    fn check_single(&self, now_ns: u64) -> Decision {
        let mut tat = self.single.load(Ordering::Acquire);
        loop {
            let (decision, next) = self.gcra(tat, now_ns);
            let Some(next) = next else {
                return decision;
            };
            match self
                .single
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return decision,
                Err(actual) => tat = actual,
            }
        }
    }

    /// GCRA: a request at `now` is admitted if the key's theoretical arrival time is not
    /// more than the tolerance ahead of now; admitting moves it one interval on.
    #[inline]
    fn gcra(&self, tat: u64, now: u64) -> (Decision, Option<u64>) {
        let base = tat.max(now);
        let ahead = base - now;
        if ahead > self.tolerance_ns {
            let wait = ahead - self.tolerance_ns;
            return (
                Decision::Limited {
                    retry_after: Duration::from_nanos(wait),
                },
                None,
            );
        }
        (
            Decision::Allowed,
            Some(base.saturating_add(self.interval_ns)),
        )
    }

    /// Keys remembered now, across shards.
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().map_or(0, |l| l.map.len()))
            .sum()
    }

    /// The most keys this limiter remembers.
    pub fn max_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().map_or(0, |l| l.capacity))
            .sum()
    }
}

/// One shard, on cache lines of its own: workers locking neighbouring shards must not
/// bounce one line between them (measured: without the padding, two threads on different
/// shards were slower than one).
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Lru>);

/// The hash of an already keyed-hashed `u64`: the value itself.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NIL: u32 = u32::MAX;

/// One bucket in a shard, on the shard's recency list.
#[derive(Debug)]
struct Slot {
    key: u64,
    tat: u64,
    prev: u32,
    next: u32,
}

/// A bounded map from key to arrival time, forgetting the least recently used key when
/// full: a hash map into a slab of slots linked most recent first.
#[derive(Debug)]
struct Lru {
    map: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            map: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    /// The arrival time of `key`, now the most recently used; a new key starts at 0 (a
    /// full bucket), taking the least recently used key's place when the shard is full.
    fn entry(&mut self, key: u64) -> &mut u64 {
        let i = match self.map.get(&key) {
            Some(&i) => {
                self.unlink(i);
                i
            }
            None if self.slots.len() < self.capacity => {
                let i = self.slots.len() as u32;
                self.slots.push(Slot {
                    key,
                    tat: 0,
                    prev: NIL,
                    next: NIL,
                });
                self.map.insert(key, i);
                i
            }
            None => {
                let i = self.tail;
                self.unlink(i);
                let slot = &mut self.slots[i as usize];
                self.map.remove(&slot.key);
                slot.key = key;
                slot.tat = 0;
                self.map.insert(key, i);
                i
            }
        };
        self.push_front(i);
        &mut self.slots[i as usize].tat
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limited(d: Decision) -> Option<Duration> {
        match d {
            Decision::Allowed => None,
            Decision::Limited { retry_after } => Some(retry_after),
        }
    }

    #[test]
    fn a_fresh_key_gets_its_burst_then_the_sustained_rate() {
        let l = RateLimiter::new(10.0, 3, true);
        let k = l.key_of_bytes(b"a");
        for _ in 0..3 {
            assert_eq!(l.check_at(k, 1_000 * MS), Decision::Allowed);
        }
        // The bucket is empty: one token comes back every 100 ms.
        assert_eq!(
            limited(l.check_at(k, 1_000 * MS)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            limited(l.check_at(k, 1_060 * MS)),
            Some(Duration::from_millis(40))
        );
        assert_eq!(l.check_at(k, 1_100 * MS), Decision::Allowed);
        assert!(limited(l.check_at(k, 1_100 * MS)).is_some());
        // Other keys have buckets of their own.
        let other = l.key_of_bytes(b"b");
        assert_eq!(l.check_at(other, 1_100 * MS), Decision::Allowed);
        // Idle for a while, the bucket refills to the burst, no further.
        for _ in 0..3 {
            assert_eq!(l.check_at(k, 10_000 * MS), Decision::Allowed);
        }
        assert!(limited(l.check_at(k, 10_000 * MS)).is_some());
    }

    #[test]
    fn a_route_wide_limiter_counts_every_request_together() {
        let l = RateLimiter::new(2.0, 1, false);
        assert_eq!(l.check_at(l.key_of_bytes(b"x"), 0), Decision::Allowed);
        assert_eq!(
            limited(l.check_at(l.key_of_bytes(b"y"), 0)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(l.check_at(7, 500 * MS), Decision::Allowed);
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_least_recently_used_key_is_forgotten_first() {
        let l = RateLimiter::with_max_keys(1.0, 1, 3);
        let (a, b, c, d) = (1, 2, 3, 4);
        for k in [a, b, c] {
            assert_eq!(l.check_at(k, 0), Decision::Allowed);
        }
        // `a` is used again, so `b` is now the least recently used.
        assert!(limited(l.check_at(a, 0)).is_some());
        assert_eq!(l.check_at(d, 0), Decision::Allowed);
        assert_eq!(l.keys(), 3);
        assert!(limited(l.check_at(a, 0)).is_some(), "a is remembered");
        assert!(limited(l.check_at(c, 0)).is_some(), "c is remembered");
        assert!(limited(l.check_at(d, 0)).is_some(), "d is remembered");
        assert_eq!(
            l.check_at(b, 0),
            Decision::Allowed,
            "b was forgotten: a full bucket"
        );
    }

    #[test]
    fn a_full_size_limiter_is_sharded_and_never_holds_more_than_its_maximum() {
        let l = RateLimiter::new(1.0, 1, true);
        assert_eq!(l.shards.len(), MAX_SHARDS);
        assert!(l.max_keys() <= MAX_KEYS && l.max_keys() > MAX_KEYS - MAX_SHARDS);
        for i in 0..(MAX_KEYS as u64 + 20_000) {
            l.check_at(l.key_of_bytes(&i.to_le_bytes()), 0);
        }
        assert!(l.keys() <= MAX_KEYS, "{} keys", l.keys());
    }

    #[test]
    fn ipv6_clients_share_their_64_and_ipv4_clients_are_one_each() {
        let l = RateLimiter::new(1.0, 1, true);
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(
            l.key_of_ip(ip("2001:db8:1:2::1")),
            l.key_of_ip(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            l.key_of_ip(ip("2001:db8:1:2::1")),
            l.key_of_ip(ip("2001:db8:1:3::1"))
        );
        assert_ne!(l.key_of_ip(ip("192.0.2.1")), l.key_of_ip(ip("192.0.2.2")));
    }
}
