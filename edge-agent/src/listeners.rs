//! The agent's listeners: metrics (TCP), DNS (UDP and TCP) and gossip (UDP).
//!
//! - [`ListenSettings`]: where they listen. `agent join` keeps them in `agent.json`, so that
//!   `agent run` after a reboot listens where the join was told to (unless told otherwise).
//! - [`check`]: at join, each listener is bound once and released before control is contacted,
//!   so that a taken port fails the join with its reason instead of leaving a node that runs
//!   without it; port 0 becomes the port the kernel picked, which is what is kept and
//!   advertised.
//! - [`ListenerBook`]: while the agent runs, each listener's state — up at its bound address,
//!   or down and why — for `status.json`, `warren_agent_listener_up{listener}` and the report
//!   to control (`warren node ls`).
//! - [`BindRetry`]: a listener that cannot bind while the agent runs (a reboot: the box must
//!   come up, with its workloads) is retried with a jittered, growing delay by whoever owns it,
//!   for as long as the agent runs; it is never given up silently.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGaugeVec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use warren_api::wire::{Listener, ListenerStatus};
use warren_transport::Backoff;

use crate::report::Reporter;

/// First wait before binding a listener again; it doubles (with jitter) up to
/// [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest wait between two attempts to bind a listener.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How many ports 0 → N are tried for DNS, which needs the same port free on UDP and TCP.
const MAX_DNS_PORT_ATTEMPTS: usize = 16;

/// Where the agent listens; `None` turns a listener off. Kept in `agent.json` from the join.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSettings {
    /// Plain-HTTP `/metrics`, `/health` and `/ready` (TCP).
    pub metrics: Option<SocketAddr>,
    /// The DNS server (UDP and TCP, same port).
    pub dns: Option<SocketAddr>,
    /// Resolvers for names outside the zone; empty: the host's (`/etc/resolv.conf`).
    #[serde(default)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// Gossip membership (UDP).
    pub gossip: Option<SocketAddr>,
}

/// A listener that cannot listen where it was told.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {} on {addr}: {source}{}", listener.as_str(), hint(source, *addr))]
pub struct ListenError {
    /// Which listener.
    pub listener: Listener,
    /// Where it was to listen.
    pub addr: SocketAddr,
    /// Why not.
    #[source]
    pub source: std::io::Error,
}

impl ListenError {
    /// Why, without the listener and address: the OS's reason, and a hint where the fix is not
    /// obvious from it.
    pub fn reason(&self) -> String {
        format!("{}{}", self.source, hint(&self.source, self.addr))
    }
}

/// A hint for the one bind failure whose fix is not obvious from the OS error.
fn hint(source: &std::io::Error, addr: SocketAddr) -> &'static str {
    if source.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
        " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    } else {
        ""
    }
}

/// Binds every configured listener once, and releases it: the join checks that the agent will
/// be able to listen before anything is asked of control. Returns the settings with port 0
/// replaced by the port the kernel picked.
///
/// # Errors
/// The first listener that cannot bind, with the OS's reason (`Address in use`).
pub fn check(settings: &ListenSettings) -> Result<ListenSettings, ListenError> {
    let error = |listener, addr| {
        move |source| ListenError {
            listener,
            addr,
            source,
        }
    };
    let mut checked = settings.clone();
    if let Some(addr) = settings.metrics {
        let socket = TcpListener::bind(addr).map_err(error(Listener::Metrics, addr))?;
        checked.metrics = Some(
            socket
                .local_addr()
                .map_err(error(Listener::Metrics, addr))?,
        );
    }
    if let Some(addr) = settings.dns {
        checked.dns = Some(check_dns(addr).map_err(error(Listener::Dns, addr))?);
    }
    if let Some(addr) = settings.gossip {
        let socket = UdpSocket::bind(addr).map_err(error(Listener::Gossip, addr))?;
        checked.gossip = Some(socket.local_addr().map_err(error(Listener::Gossip, addr))?);
    }
    Ok(checked)
}

/// Binds UDP and TCP on the same port (for port 0, trying a few kernel-picked ports).
fn check_dns(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let attempts = if addr.port() == 0 {
        MAX_DNS_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound) {
            Ok(_) => return Ok(bound),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// Each listener's state while the agent runs, shared by the tasks that bind them and the
/// places that show them. Setting a state updates `warren_agent_listener_up{listener}`, wakes
/// the reconcile loop (which writes `status.json`) and hands the list to the reporter (which
/// the link sends to control).
#[derive(Clone, Debug)]
pub struct ListenerBook {
    states: Arc<watch::Sender<BTreeMap<Listener, ListenerStatus>>>,
    up: IntGaugeVec,
    reporter: Arc<Reporter>,
}

impl ListenerBook {
    /// An empty book; `up` is the `warren_agent_listener_up` gauge (label `listener`).
    pub fn new(up: IntGaugeVec, reporter: Arc<Reporter>) -> Self {
        ListenerBook {
            states: Arc::new(watch::channel(BTreeMap::new()).0),
            up,
            reporter,
        }
    }

    /// Registers a listener about to be bound at `addr`: down until it is.
    pub fn expect(&self, listener: Listener, addr: SocketAddr) {
        self.set(ListenerStatus {
            listener,
            addr: addr.to_string(),
            up: false,
            error: Some("not bound yet".to_owned()),
        });
    }

    /// The listener is up at `bound`.
    pub fn up(&self, listener: Listener, bound: SocketAddr) {
        self.set(ListenerStatus {
            listener,
            addr: bound.to_string(),
            up: true,
            error: None,
        });
    }

    /// The listener is down (should be at `addr`) because of `error`.
    pub fn down(&self, listener: Listener, addr: SocketAddr, error: String) {
        self.set(ListenerStatus {
            listener,
            addr: addr.to_string(),
            up: false,
            error: Some(error),
        });
    }

    fn set(&self, status: ListenerStatus) {
        self.up
            .with_label_values(&[status.listener.as_str()])
            .set(i64::from(status.up));
        let changed = self.states.send_if_modified(|states| {
            if states.get(&status.listener) == Some(&status) {
                return false;
            }
            states.insert(status.listener, status);
            true
        });
        if changed {
            self.reporter.set_listeners(self.snapshot());
        }
    }

    /// Every registered listener's state, in [`Listener`] order.
    pub fn snapshot(&self) -> Vec<ListenerStatus> {
        self.states.borrow().values().cloned().collect()
    }

    /// Where `listener` is up, if it is.
    pub fn bound(&self, listener: Listener) -> Option<SocketAddr> {
        let states = self.states.borrow();
        let status = states.get(&listener).filter(|s| s.up)?;
        status.addr.parse().ok()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<Listener, ListenerStatus>> {
        self.states.subscribe()
    }
}

/// One listener's attempts to bind while the agent runs: marks it up or down in the book,
/// logs each new failure once (a repeat is a debug line), and says how long to wait before
/// the next attempt.
#[derive(Debug)]
pub struct BindRetry {
    listener: Listener,
    backoff: Backoff,
    last_error: Option<String>,
}

impl BindRetry {
    /// No attempt made yet.
    pub fn new(listener: Listener) -> Self {
        BindRetry {
            listener,
            backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            last_error: None,
        }
    }

    /// An attempt to bind at `addr` failed: the listener is down, saying why and that it is
    /// retried; returns the delay before the next attempt.
    pub fn failed(
        &mut self,
        book: &ListenerBook,
        addr: SocketAddr,
        error: &dyn std::fmt::Display,
    ) -> Duration {
        let delay = self.backoff.next_delay();
        let error = error.to_string();
        let listener = self.listener.as_str();
        let retry_in_ms = delay.as_millis() as u64;
        if self.last_error.as_deref() == Some(error.as_str()) {
            debug!(listener, addr = %addr, error = %error, retry_in_ms, "listener still cannot bind");
        } else {
            warn!(listener, addr = %addr, error = %error, retry_in_ms, "listener cannot bind; retrying, the agent runs on without it meanwhile");
        }
        book.down(self.listener, addr, format!("{error}; retrying"));
        self.last_error = Some(error);
        delay
    }

    /// The listener is up at `bound`.
    pub fn bound(&mut self, book: &ListenerBook, bound: SocketAddr) {
        if self.last_error.take().is_some() {
            info!(listener = self.listener.as_str(), addr = %bound, "listener bound after retrying");
        }
        self.backoff.reset();
        book.up(self.listener, bound);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_resolves_port_zero_and_names_a_taken_port() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let settings = ListenSettings {
            metrics: Some(any),
            dns: Some(any),
            dns_upstreams: vec![],
            gossip: Some(any),
        };
        let checked = check(&settings).unwrap();
        for addr in [checked.metrics, checked.dns, checked.gossip] {
            assert_ne!(addr.unwrap().port(), 0, "{checked:?}");
        }
        assert_eq!(
            check(&ListenSettings::default()).unwrap(),
            ListenSettings::default()
        );

        let taken = TcpListener::bind(any).unwrap();
        let error = check(&ListenSettings {
            metrics: Some(taken.local_addr().unwrap()),
            ..ListenSettings::default()
        })
        .unwrap_err();
        assert_eq!(error.listener, Listener::Metrics);
        let text = error.to_string();
        assert!(
            text.starts_with("cannot listen for metrics on 127.0.0.1:") && text.contains("in use"),
            "{text}"
        );
        let taken = UdpSocket::bind(any).unwrap();
        let error = check(&ListenSettings {
            dns: Some(taken.local_addr().unwrap()),
            ..ListenSettings::default()
        })
        .unwrap_err();
        assert_eq!(error.listener, Listener::Dns);
    }
}
