//! Admission limits of an edge node: registrations and connection attempts per client IP, inbound messages per
//! socket, and sockets per node. All checks are lock-free or sharded (governor's GCRA with a dashmap per key), and
//! none is held across an await, so a reconnect storm is answered with 429/503 and `Retry-After` at line rate
//! instead of stalling the node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};

use crate::client_addr::limit_key;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The configured rates.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Registrations per client IP per minute (`CES_LIMIT_REGISTRATIONS_PER_MIN`).
    pub registrations_per_min: NonZeroU32,
    /// WebSocket connection attempts per client IP per minute (`CES_LIMIT_CONNECTS_PER_MIN`).
    pub connects_per_min: NonZeroU32,
    /// Inbound messages per socket per second, also the burst (`CES_LIMIT_MESSAGES_PER_SEC`).
    pub messages_per_sec: NonZeroU32,
    /// Open sockets per node before new ones get 503 (`CES_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// IPv6 clients are limited per network of this many bits (`CES_LIMIT_IPV6_PREFIX`).
    pub ipv6_prefix: u8,
    /// Registrations per JWT subject per minute (`CES_LIMIT_REGISTRATIONS_PER_SUBJECT_PER_MIN`).
    pub registrations_per_subject_per_min: NonZeroU32,
}

/// The node's limiters.
#[derive(Debug)]
pub struct Limits {
    rates: Rates,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    subjects: DefaultKeyedRateLimiter<String>,
    connects: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl Limits {
    /// Limiters for `rates`.
    pub fn new(rates: Rates) -> Self {
        Self {
            rates,
            registrations: RateLimiter::keyed(Quota::per_minute(rates.registrations_per_min)),
            subjects: RateLimiter::keyed(Quota::per_minute(
                rates.registrations_per_subject_per_min,
            )),
            connects: RateLimiter::keyed(Quota::per_minute(rates.connects_per_min)),
            clock: DefaultClock::default(),
        }
    }

    /// Admits a registration from `ip`, or says how long to wait.
    pub fn register(&self, ip: IpAddr) -> Result<(), Duration> {
        self.registrations
            .check_key(&limit_key(ip, self.rates.ipv6_prefix))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Admits a registration by JWT subject `subject` (from any address), or says how long to wait.
    pub fn register_subject(&self, subject: &str) -> Result<(), Duration> {
        self.subjects
            .check_key(&subject.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Admits a connection attempt from `ip`, or says how long to wait.
    pub fn connect(&self, ip: IpAddr) -> Result<(), Duration> {
        self.connects
            .check_key(&limit_key(ip, self.rates.ipv6_prefix))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Most open sockets on this node.
    pub fn max_connections(&self) -> usize {
        self.rates.max_connections
    }

    /// A limiter for one socket's inbound messages.
    pub fn socket(&self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(Quota::per_second(self.rates.messages_per_sec))
    }

    /// Forgets IPs whose limits have fully recovered, so the per-IP maps stay as large as the recent clients.
    pub fn forget_idle(&self) {
        self.registrations.retain_recent();
        self.subjects.retain_recent();
        self.connects.retain_recent();
        self.registrations.shrink_to_fit();
        self.subjects.shrink_to_fit();
        self.connects.shrink_to_fit();
    }
}

/// A WebSocket handshake's slot (`CES_WS_MAX_PENDING_HANDSHAKES`): held from the token check until the welcome
/// frame (and the replay) is sent, so a reconnect storm queues for Redis instead of piling onto it.
#[derive(Debug)]
pub struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl HandshakeSlot {
    /// Waits up to `wait` for a free slot of `slots`; `None` if none freed up (the caller sheds the handshake).
    pub async fn acquire(slots: &Arc<tokio::sync::Semaphore>, wait: Duration) -> Option<Self> {
        let permit = tokio::time::timeout(wait, slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        metrics::gauge!(crate::metrics::PENDING_HANDSHAKES).increment(1.0);
        Some(Self { _permit: permit })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::PENDING_HANDSHAKES).decrement(1.0);
    }
}

/// Each client address's share of the connections not yet upgraded (`CES_HTTP_MAX_CONNECTIONS_PER_IP`): one host
/// holding slow requests or idle keep-alives cannot take every slot of the node. The lock is held for one map
/// operation, never across an await.
#[derive(Debug)]
pub struct ConnectionShares {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionShares {
    /// At most `max` connections per key.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one of `key`'s shares, or `None` when it holds all of them. The share is given back when dropped.
    pub fn take(self: &Arc<Self>, key: IpAddr) -> Option<Share> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            key,
        })
    }

    /// Addresses holding at least one share.
    pub fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection's share of its address's budget.
#[derive(Debug)]
pub struct Share {
    shares: Arc<ConnectionShares>,
    key: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut open = self
            .shares
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(per_min: u32) -> Rates {
        Rates {
            registrations_per_min: NonZeroU32::new(per_min).unwrap(),
            connects_per_min: NonZeroU32::new(per_min).unwrap(),
            messages_per_sec: NonZeroU32::new(3).unwrap(),
            max_connections: 10,
            ipv6_prefix: 64,
            registrations_per_subject_per_min: NonZeroU32::new(per_min).unwrap(),
        }
    }

    #[test]
    fn each_ip_has_its_own_budget_and_a_refusal_says_when_to_retry() {
        let l = Limits::new(rates(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.register(a).is_ok() && l.register(a).is_ok());
        let wait = l.register(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(l.register(b).is_ok(), "another IP is not affected");
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(
            l.register(v6("2001:db8:0:1::1")).is_ok() && l.register(v6("2001:db8:0:1::2")).is_ok()
        );
        assert!(
            l.register(v6("2001:db8:0:1:ffff::3")).is_err(),
            "one /64 is one client, whichever of its addresses it uses"
        );
        assert!(l.register(v6("2001:db8:0:2::1")).is_ok());
        assert!(l.register_subject("user-1").is_ok() && l.register_subject("user-1").is_ok());
        assert!(
            l.register_subject("user-1").is_err(),
            "a subject has a budget of its own"
        );
        assert!(l.register_subject("user-2").is_ok());
        assert!(
            l.connect(a).is_ok(),
            "registrations and connections are separate budgets"
        );
        assert!(l.connect(a).is_ok());
        let wait = l.connect(a).unwrap_err();
        assert!(wait > Duration::from_secs(20), "{wait:?}");
        assert!(l.connect(b).is_ok(), "another IP is not affected");
    }

    #[test]
    fn a_socket_may_burst_its_rate_then_is_refused() {
        let l = Limits::new(rates(2));
        let s = l.socket();
        assert!((0..3).all(|_| s.check().is_ok()));
        assert!(s.check().is_err());
    }

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back_as_connections_end() {
        let shares = ConnectionShares::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = shares.take(a).expect("first");
        let second = shares.take(a).expect("second");
        assert!(shares.take(a).is_none(), "a third is over the share");
        let other = shares.take(b).expect("another address has its own share");
        assert_eq!(shares.addresses(), 2);
        drop(first);
        let again = shares
            .take(a)
            .expect("a share comes back when its connection ends");
        assert!(shares.take(a).is_none());
        drop((second, again, other));
        assert_eq!(shares.addresses(), 0, "idle addresses are forgotten");
    }

    #[test]
    fn idle_addresses_are_forgotten_once_their_budget_is_whole_again() {
        let l = Limits::new(rates(60_000));
        assert_eq!(l.max_connections(), 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        l.register(a).unwrap();
        l.connect(a).unwrap();
        l.register_subject("user-1").unwrap();
        assert_eq!(
            (l.registrations.len(), l.connects.len(), l.subjects.len()),
            (1, 1, 1)
        );
        // 60,000 a minute: one request's worth comes back within a millisecond.
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert_eq!(
            (l.registrations.len(), l.connects.len(), l.subjects.len()),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_handshake_waits_for_a_slot_and_gives_up_after_the_wait() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let first = HandshakeSlot::acquire(&slots, Duration::from_millis(10))
            .await
            .expect("a free slot");
        assert!(
            HandshakeSlot::acquire(&slots, Duration::from_millis(10))
                .await
                .is_none(),
            "no slot frees up within the wait"
        );
        drop(first);
        assert!(
            HandshakeSlot::acquire(&slots, Duration::from_millis(10))
                .await
                .is_some()
        );
    }
}
