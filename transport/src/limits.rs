//! Bounds on what network clients can make a server hold or do: concurrent connections per
//! source address and in total, refusals per source per minute, how fast a failing accept loop
//! retries, and how often a repeated warning is logged.
//!
//! Each piece is a small deciding struct that takes `now` from its caller (no clock, no I/O),
//! so the API listener, the metrics listener and the join server share the same rules and the
//! rules are tested without sockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The key a source address is counted under: IPv4 addresses (and IPv4-mapped IPv6 ones) as
/// they are, IPv6 addresses by their /64 prefix, since one host routinely owns a whole /64 and
/// could otherwise open as many connections as it has addresses.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

/// Which connection cap a new connection hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Every slot of the server is taken.
    Total,
    /// Its source address holds its share already.
    PerSource,
}

impl LimitExceeded {
    /// A short stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerSource => "per_source",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// Counts open connections, in total and per source address ([`source_key`]), and refuses a
/// new one past either cap. Memory is bounded by the total cap: a source's entry goes when its
/// last connection does.
#[derive(Clone, Debug)]
pub struct ConnectionLimiter {
    counts: Arc<Mutex<Counts>>,
    total_max: usize,
    per_source_max: usize,
}

impl ConnectionLimiter {
    /// A limiter allowing `total_max` connections, at most `per_source_max` from one source.
    pub fn new(total_max: usize, per_source_max: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(Counts::default())),
            total_max,
            per_source_max,
        }
    }

    /// Takes a slot for a connection from `source`; the slot is freed when the permit drops.
    ///
    /// # Errors
    /// [`LimitExceeded`] naming the cap that is reached.
    pub fn try_acquire(&self, source: IpAddr) -> Result<ConnectionPermit, LimitExceeded> {
        let key = source_key(source);
        let mut counts = self.counts.lock().expect("limiter lock is not poisoned");
        if counts.total >= self.total_max {
            return Err(LimitExceeded::Total);
        }
        let from_source = counts.by_source.entry(key).or_insert(0);
        if *from_source >= self.per_source_max {
            return Err(LimitExceeded::PerSource);
        }
        *from_source += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.counts
            .lock()
            .expect("limiter lock is not poisoned")
            .total
    }
}

/// One connection's slot in a [`ConnectionLimiter`]; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    counts: Arc<Mutex<Counts>>,
    key: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("limiter lock is not poisoned");
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_source.remove(&self.key);
            }
        }
    }
}

/// Lets a repeated warning through once, then at most once per interval, counting the ones it
/// held back so the next line can say how many there were.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// Notes one occurrence at `now`. `Some(n)` means: log it now, saying that `n` more
    /// happened since the previous line; `None` means: stay quiet (it is counted).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// First pause after a failed `accept`.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed `accept`s.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// At most one warning per this interval about failing `accept`s.
pub const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(60);

/// What an accept loop does after `accept` fails. Out of file descriptors (EMFILE/ENFILE),
/// `accept` fails at once for as long as the pending connections wait, and a loop that simply
/// retries spins a core and writes millions of lines; this one pauses 10 ms, doubling up to
/// 100 ms while the failures last, and warns once a minute with a count.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    log: LogThrottle,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
            log: LogThrottle::new(ACCEPT_WARN_EVERY),
        }
    }
}

impl AcceptBackoff {
    /// `accept` failed at `now`: how long to pause, and whether to warn (with the count of
    /// failures not logged since the last warning).
    pub fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        (pause, self.log.note(now))
    }

    /// `accept` succeeded: the next failure pauses briefly again.
    pub fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

/// Most sources whose refusals a [`RefusalLimiter`] tracks one by one; past that, new sources
/// share one budget (so a flood from many addresses cannot grow the table).
pub const MAX_REFUSAL_SOURCES: usize = 4096;

/// The key new sources share once the table is full.
const OVERFLOW_KEY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    refusals: u32,
}

/// Counts refusals per source ([`source_key`]) in windows of a fixed length; a source that was
/// refused `burst` times in the current window is *limited* until the window ends.
#[derive(Debug)]
pub struct RefusalLimiter {
    burst: u32,
    window: Duration,
    sources: HashMap<IpAddr, Window>,
}

impl RefusalLimiter {
    /// Allows `burst` refusals per source per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            sources: HashMap::new(),
        }
    }

    fn key(&self, source: IpAddr) -> IpAddr {
        let key = source_key(source);
        if self.sources.contains_key(&key) || self.sources.len() < MAX_REFUSAL_SOURCES {
            key
        } else {
            OVERFLOW_KEY
        }
    }

    fn current(&self, key: IpAddr, now: Instant) -> Option<Window> {
        self.sources
            .get(&key)
            .copied()
            .filter(|w| now.saturating_duration_since(w.started) < self.window)
    }

    /// Whether `source` has used up its refusals for the current window. When it returns
    /// `Some(wait)`, the caller refuses without looking further; `wait` is when to retry.
    pub fn limited(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let window = self.current(self.key(source), now)?;
        (window.refusals >= self.burst).then(|| {
            self.window
                .saturating_sub(now.saturating_duration_since(window.started))
        })
    }

    /// Counts one refusal of `source` at `now`.
    pub fn refused(&mut self, source: IpAddr, now: Instant) {
        if self.sources.len() >= MAX_REFUSAL_SOURCES {
            let window = self.window;
            self.sources
                .retain(|_, w| now.saturating_duration_since(w.started) < window);
        }
        let key = self.key(source);
        let window = self.current(key, now).unwrap_or(Window {
            started: now,
            refusals: 0,
        });
        self.sources.insert(
            key,
            Window {
                refusals: window.refusals.saturating_add(1),
                ..window
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connection_caps_hold_per_source_and_in_total_and_free_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a1 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        let _a2 = limiter.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.1")).unwrap_err(),
            LimitExceeded::PerSource
        );
        let _b = limiter.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            limiter.try_acquire(ip("10.0.0.3")).unwrap_err(),
            LimitExceeded::Total
        );
        drop(a1);
        assert_eq!(limiter.open(), 2);
        limiter.try_acquire(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_sources_count_by_their_64_prefix() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _a = limiter.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(limiter.try_acquire(ip("2001:db8::ffff:2")).is_err());
        limiter.try_acquire(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(source_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    /// Table-driven: (seconds since start, expected verdict) for one throttle of 60 s.
    #[test]
    fn log_throttle_lets_one_line_through_then_one_a_minute_with_a_count() {
        let start = Instant::now();
        let mut throttle = LogThrottle::new(Duration::from_secs(60));
        let check = |throttle: &mut LogThrottle, at_s: u64, expected: Option<u64>| {
            assert_eq!(
                throttle.note(start + Duration::from_secs(at_s)),
                expected,
                "at {at_s} s"
            );
        };
        check(&mut throttle, 0, Some(0));
        for at in 1..=59 {
            check(&mut throttle, at, None);
        }
        check(&mut throttle, 60, Some(59));
        check(&mut throttle, 61, None);
        check(&mut throttle, 500, Some(1));
    }

    /// 7 million failed accepts in 10 s was the symptom: the loop now pauses 10, 20, 40, 80,
    /// then 100 ms for as long as the failures last, and warns once for the whole burst.
    #[test]
    fn accept_backoff_grows_to_its_cap_and_logs_once_a_minute() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        let mut pauses = Vec::new();
        let mut warnings = Vec::new();
        let mut at = start;
        for _ in 0..1_000 {
            let (pause, warn) = backoff.failed(at);
            pauses.push(pause.as_millis());
            warnings.extend(warn);
            at += pause;
        }
        assert_eq!(pauses[..6], [10, 20, 40, 80, 100, 100]);
        assert!(pauses.iter().all(|&p| p <= 100));
        // ~100 s of failures: a warning at the start and one a minute later, with a count.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(warnings[0], 0);
        assert!(warnings[1] > 500, "{warnings:?}");
        backoff.succeeded();
        assert_eq!(backoff.failed(at).0, ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn refusals_past_the_burst_limit_a_source_until_its_window_ends() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut limiter = RefusalLimiter::new(3, minute);
        let source = ip("192.0.2.7");
        for _ in 0..3 {
            assert_eq!(limiter.limited(source, start), None);
            limiter.refused(source, start);
        }
        let wait = limiter.limited(source, start + Duration::from_secs(10));
        assert_eq!(wait, Some(Duration::from_secs(50)));
        assert_eq!(limiter.limited(ip("192.0.2.8"), start), None);
        assert_eq!(limiter.limited(source, start + minute), None);
    }

    #[test]
    fn a_flood_of_sources_shares_one_budget_once_the_table_is_full() {
        let start = Instant::now();
        let mut limiter = RefusalLimiter::new(1, Duration::from_secs(60));
        for n in 0..MAX_REFUSAL_SOURCES as u32 {
            limiter.refused(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), start);
        }
        assert_eq!(limiter.sources.len(), MAX_REFUSAL_SOURCES);
        let newcomer = ip("198.51.100.1");
        limiter.refused(newcomer, start);
        assert!(limiter.sources.len() <= MAX_REFUSAL_SOURCES + 1);
        assert!(limiter.limited(ip("198.51.100.2"), start).is_some());
    }
}
