//! Forwarding names outside the zone to the host's resolvers: a small stub forwarder, UDP
//! first and TCP when the answer comes back truncated, under one deadline per query.
//!
//! The query goes upstream as the client sent it, with a fresh random message id (so that an
//! off-path sender cannot guess it from the client's); the reply is checked for that id and
//! handed back decoded, for the server to re-encode under the client's id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};

/// Where the default upstreams come from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Port of an upstream named in resolv.conf (it has no way to say another).
const RESOLV_CONF_PORT: u16 = 53;

/// Largest DNS message over UDP or TCP (the TCP length prefix is a u16).
const MAX_DNS_MESSAGE_BYTES: usize = u16::MAX as usize;

/// Why a forwarded query got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Too many forwarded queries are waiting already.
    #[error("{0} forwarded queries already in flight")]
    Busy(usize),
    /// Every upstream failed or the deadline passed.
    #[error("no upstream answered: {0}")]
    Failed(String),
}

/// The upstream resolvers named by resolv.conf text (`nameserver ADDR` lines, port 53), in
/// order, without `own` (the server's own address: a workload's resolv.conf may point at us,
/// and forwarding to ourselves would loop). Lines that do not parse are skipped, as libc does.
pub fn upstreams_from_resolv_conf(text: &str, own: SocketAddr) -> Vec<SocketAddr> {
    let is_own = |upstream: SocketAddr| {
        upstream == own
            || (own.ip().is_unspecified()
                && own.port() == upstream.port()
                && upstream.ip().is_loopback())
    };
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let upstream = SocketAddr::new(ip, RESOLV_CONF_PORT);
        if !is_own(upstream) && !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
}

/// Forwards queries to a fixed list of upstreams.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
    in_flight_max: usize,
}

impl Forwarder {
    /// Forwards to `upstreams` in order, each query answered within `timeout` or failed, with at
    /// most `in_flight_max` queries outstanding at once.
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration, in_flight_max: usize) -> Self {
        Forwarder {
            upstreams: upstreams.into(),
            timeout,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            in_flight_max,
        }
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (a whole DNS message as the client sent it) upstream and returns the first
    /// answer. Upstreams are tried in order, each with an even share of what is left of the
    /// timeout, so that one dead upstream does not use up the whole budget.
    ///
    /// # Errors
    /// [`ForwardError`]: no upstream, too many in flight, or none answered in time.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future drops its sockets and its in-flight permit.
    pub async fn forward(&self, query: &[u8]) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Err(ForwardError::Busy(self.in_flight_max));
        };
        let deadline = Instant::now() + self.timeout;
        let mut errors = Vec::new();
        for (upstream_idx, &upstream) in self.upstreams.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let n_left = u32::try_from(self.upstreams.len() - upstream_idx).unwrap_or(u32::MAX);
            let attempt_deadline = now + (deadline - now) / n_left;
            match timeout_at(attempt_deadline, exchange(upstream, query)).await {
                Ok(Ok(message)) => return Ok(message),
                Ok(Err(error)) => errors.push(format!("{upstream}: {error}")),
                Err(_) => errors.push(format!("{upstream}: timed out")),
            }
        }
        if errors.is_empty() {
            errors.push("timed out".to_owned());
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }
}

/// One upstream exchange: UDP, then TCP if the UDP answer was truncated.
async fn exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Message> {
    // A query shorter than a header never reaches here (the server drops it), but the
    // forwarder does not rely on that.
    if query.len() < 12 {
        return Err(std::io::Error::other("query shorter than a DNS header"));
    }
    let id = fastrand::u16(..);
    let mut query = query.to_vec();
    query[..2].copy_from_slice(&id.to_be_bytes());
    let message = exchange_udp(upstream, &query, id).await?;
    if !message.metadata.truncation {
        return Ok(message);
    }
    exchange_tcp(upstream, &query, id).await
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buffer = vec![0; MAX_DNS_MESSAGE_BYTES];
    loop {
        let n_read = socket.recv(&mut buffer).await?;
        // Anything that is not our answer (stray or forged datagrams) is ignored; the deadline
        // bounds the wait.
        if let Some(message) = our_answer(&buffer[..n_read], id) {
            return Ok(message);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let length = u16::try_from(query.len())
        .map_err(|_| std::io::Error::other("query longer than a DNS message"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    loop {
        let length = usize::from(stream.read_u16().await?);
        let mut buffer = vec![0; length];
        stream.read_exact(&mut buffer).await?;
        if let Some(message) = our_answer(&buffer, id) {
            return Ok(message);
        }
    }
}

/// `bytes` decoded, if it is a response with message id `id`.
fn our_answer(bytes: &[u8], id: u16) -> Option<Message> {
    let message = Message::from_vec(bytes).ok()?;
    (message.metadata.id == id && message.metadata.message_type == MessageType::Response)
        .then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn resolv_conf_nameservers_in_order_without_ourselves() {
        let text = "\
# written by dhcp
search example.test
nameserver 10.0.0.2
nameserver   127.0.0.11
options ndots:2
nameserver fd00::53
nameserver fe80::1%eth0
nameserver not-an-address
nameserver 10.0.0.2
;nameserver 10.0.0.9
";
        let own = addr("127.0.0.11:53");
        assert_eq!(
            upstreams_from_resolv_conf(text, own),
            [addr("10.0.0.2:53"), addr("[fd00::53]:53")]
        );
        // On another port the resolv.conf entry for 127.0.0.11 is some other server.
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 127.0.0.11", addr("127.0.0.11:5353")),
            [addr("127.0.0.11:53")]
        );
        // Listening on every address includes loopback.
        assert_eq!(
            upstreams_from_resolv_conf("nameserver 127.0.0.53\n", addr("0.0.0.0:53")),
            []
        );
        assert_eq!(upstreams_from_resolv_conf("", own), []);
    }

    #[tokio::test]
    async fn no_upstream_and_busy() {
        let none = Forwarder::new(Vec::new(), Duration::from_secs(1), 4);
        assert!(matches!(
            none.forward(&[0; 12]).await,
            Err(ForwardError::NoUpstream)
        ));
        let closed = Forwarder::new(vec![addr("127.0.0.1:9")], Duration::from_secs(1), 0);
        assert!(matches!(
            closed.forward(&[0; 12]).await,
            Err(ForwardError::Busy(0))
        ));
    }
}
