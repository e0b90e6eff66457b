//! The driver: hickory's `Server` owns the UDP socket and TCP listener; `ZoneRequestHandler`
//! answers each request from the latest catalogue ([`super::answer`](mod@super::answer)) or forwards it
//! ([`super::forward`]), and counts what became of it.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, HeaderCounts, Message, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::answer::{Answer, Zone, answer};
use super::catalogue::Catalogue;
use super::forward::{ForwardError, Forwarder, RESOLV_CONF, upstreams_from_resolv_conf};
use super::metrics::{DnsMetrics, QueryResult};
use super::{DnsConfig, DnsError, Upstreams};

/// Responses queued per TCP connection before the connection's reader waits.
const MAX_TCP_RESPONSES_QUEUED: usize = 32;
/// EDNS payload size we advertise (the DNS Flag Day 2020 value: no IP fragmentation).
const EDNS_PAYLOAD_BYTES: u16 = 1232;
/// Tries at finding a port free for both UDP and TCP when asked for port 0.
const MAX_BIND_PORT_ATTEMPTS: usize = 16;

/// A running DNS server.
#[derive(Debug)]
pub struct DnsServerHandle {
    local_addr: SocketAddr,
    upstreams: Vec<SocketAddr>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl DnsServerHandle {
    /// The address served, on UDP and TCP alike (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The upstreams names outside the zone are forwarded to, in order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Stops accepting, lets requests in progress finish, and returns when the sockets are
    /// closed.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(error) = self.task.await {
            warn!(%error, "dns server task failed");
        }
    }
}

/// Binds `config.listen` on UDP and TCP and serves the zone from the latest catalogue on
/// `catalogue` until `cancel` fires (or [`DnsServerHandle::shutdown`]).
///
/// With [`Upstreams::System`] the upstreams are read once, now, from `/etc/resolv.conf`; a
/// missing file means no upstream (names outside the zone get SERVFAIL).
///
/// # Errors
/// [`DnsError::Config`] or [`DnsError::Zone`] for an invalid config, [`DnsError::Bind`] when the address cannot be
/// bound (port 53 needs `CAP_NET_BIND_SERVICE`).
pub async fn spawn_dns_server(
    config: DnsConfig,
    catalogue: watch::Receiver<Arc<Catalogue>>,
    metrics: DnsMetrics,
    cancel: CancellationToken,
) -> Result<DnsServerHandle, DnsError> {
    config.validate()?;
    let zone = config.parsed_zone()?;
    let (udp, tcp) = bind(config.listen).await?;
    let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
        addr: config.listen,
        source,
    })?;
    let upstreams = match &config.upstreams {
        Upstreams::List(list) => list.clone(),
        Upstreams::System => match tokio::fs::read_to_string(RESOLV_CONF).await {
            Ok(text) => upstreams_from_resolv_conf(&text, local_addr),
            Err(error) => {
                warn!(%error, path = RESOLV_CONF, "no upstream resolvers: cannot read resolv.conf");
                Vec::new()
            }
        },
    };
    let forwarder = Forwarder::new(
        upstreams.clone(),
        config.forward_timeout,
        config.forwards_in_flight_max,
    );
    let handler = ZoneRequestHandler {
        zone,
        catalogue,
        forwarder,
        metrics,
    };
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, config.tcp_idle_timeout, MAX_TCP_RESPONSES_QUEUED);
    let server_shutdown = server.shutdown_token().clone();
    let cancel = cancel.child_token();
    let task_cancel = cancel.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = task_cancel.cancelled() => {}
            result = server.block_until_done() => {
                // The sockets closed on their own: nothing more will be answered.
                if let Err(error) = result {
                    warn!(%error, "dns server stopped");
                }
                return;
            }
        }
        server_shutdown.cancel();
        if let Err(error) = server.block_until_done().await {
            warn!(%error, "dns server shutdown");
        }
    });
    info!(addr = %local_addr, ?upstreams, "dns server listening");
    Ok(DnsServerHandle {
        local_addr,
        upstreams,
        cancel,
        task,
    })
}

/// Binds UDP and TCP on the same address. With port 0, finds a port free for both.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_error = |source| DnsError::Bind {
        addr: listen,
        source,
    };
    let attempts = if listen.port() == 0 {
        MAX_BIND_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen).await.map_err(bind_error)?;
        let udp_addr = udp.local_addr().map_err(bind_error)?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(bind_error(last_error.unwrap_or_else(|| {
        std::io::Error::other("no port free for both UDP and TCP")
    })))
}

/// Answers the zone from the catalogue and forwards the rest.
struct ZoneRequestHandler {
    zone: Zone,
    catalogue: watch::Receiver<Arc<Catalogue>>,
    forwarder: Forwarder,
    metrics: DnsMetrics,
}

/// A response: header fields plus the three record sections.
struct Reply {
    metadata: Metadata,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn empty(request: &Request, response_code: ResponseCode) -> Self {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = response_code;
        Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for ZoneRequestHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let (result, reply) = self.reply(request).await;
        self.metrics.count(result);
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let metadata = reply.metadata;
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, src = %request.src(), "dns response not sent");
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl ZoneRequestHandler {
    /// Decides the response to `request` and what to count.
    async fn reply(&self, request: &Request) -> (QueryResult, Reply) {
        if request.metadata.op_code != OpCode::Query {
            return (
                QueryResult::NotImp,
                Reply::empty(request, ResponseCode::NotImp),
            );
        }
        let Ok(info) = request.request_info() else {
            return (
                QueryResult::FormErr,
                Reply::empty(request, ResponseCode::FormErr),
            );
        };
        let query = info.query.original();
        let qname = query.name();
        if !self.zone.contains(qname) {
            return self.forward(request).await;
        }
        if query.query_class() != DNSClass::IN {
            return (
                QueryResult::Refused,
                Reply::empty(request, ResponseCode::Refused),
            );
        }
        // Clone the Arc and let the watch's read lock go at once.
        let catalogue = Arc::clone(&self.catalogue.borrow());
        self.zone_reply(
            request,
            answer(&self.zone, &catalogue, qname, query.query_type()),
            qname,
        )
    }

    fn zone_reply(&self, request: &Request, answer: Answer, qname: &Name) -> (QueryResult, Reply) {
        let mut reply = Reply::empty(request, ResponseCode::NoError);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_available = !self.forwarder.upstreams().is_empty();
        let result = match answer {
            Answer::Records {
                answers,
                additionals,
            } => {
                reply.answers = answers;
                reply.additionals = additionals;
                QueryResult::Answered
            }
            Answer::NoData { soa } => {
                reply.authorities.push(soa);
                QueryResult::NoData
            }
            Answer::NxDomain { soa } => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.authorities.push(soa);
                QueryResult::NxDomain
            }
            Answer::OutOfZone => {
                // `reply` checked containment already; reaching here is a bug in `answer`.
                warn!(%qname, "zone answer for a name outside the zone");
                reply.metadata.authoritative = false;
                reply.metadata.response_code = ResponseCode::ServFail;
                QueryResult::UpstreamError
            }
        };
        (result, reply)
    }

    async fn forward(&self, request: &Request) -> (QueryResult, Reply) {
        match self.forwarder.forward(request.as_slice()).await {
            Ok(upstream) => (QueryResult::Forwarded, forwarded_reply(request, upstream)),
            Err(error) => {
                let result = match error {
                    ForwardError::NoUpstream => QueryResult::NoUpstream,
                    ForwardError::Busy(_) => QueryResult::Busy,
                    ForwardError::Failed(_) => QueryResult::UpstreamError,
                };
                debug!(%error, "forwarding failed");
                (result, Reply::empty(request, ResponseCode::ServFail))
            }
        }
    }
}

/// The upstream's answer under the client's header. The AD bit is cleared: we do not
/// validate, and the path to the upstream is not known to be secure.
fn forwarded_reply(request: &Request, upstream: Message) -> Reply {
    let mut reply = Reply::empty(request, upstream.metadata.response_code);
    reply.metadata.recursion_available = upstream.metadata.recursion_available;
    reply.answers = upstream.answers;
    reply.authorities = upstream.authorities;
    reply.additionals = upstream.additionals;
    reply
}

/// An OPT record for the response when the request had one (RFC 6891 requires it).
fn response_edns(request: &Request) -> Option<Edns> {
    let request_edns = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_version(0);
    edns.set_max_payload(EDNS_PAYLOAD_BYTES.min(request_edns.max_payload().max(512)));
    edns.set_dnssec_ok(request_edns.flags().dnssec_ok);
    Some(edns)
}
