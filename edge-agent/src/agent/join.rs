//! Joining a cluster: a join token and control addresses in, a data dir out (credentials,
//! the node secret key, `agent.json` and a cache claimed for this cluster and node).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use warren_api::NodeId;
use warren_api::NodeRole;
use warren_transport::CertRole;
use warren_transport::join::JoinParams;
use warren_transport::write_atomic;

use super::{AGENT_FILE, AgentError, AgentIdentity, io_error};
use crate::cache::{Cache, CacheIdentity, CacheTuning};
use crate::listeners::ListenSettings;
use crate::secrets;

/// What an agent advertises when it joins (recorded in the node registry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinAdvertise {
    /// The gossip address peers dial; its IP is also the node's address in the service
    /// catalogue (what DNS answers for its replicas).
    pub gossip: Option<SocketAddr>,
    /// The agent's DNS server.
    pub dns: Option<SocketAddr>,
    /// Its metrics address.
    pub metrics: Option<SocketAddr>,
}

impl JoinAdvertise {
    /// The join request's `kind=addr` entries.
    fn entries(&self) -> Vec<String> {
        let mut entries = Vec::new();
        if let Some(addr) = self.gossip {
            entries.push(format!("gossip={addr}"));
        }
        if let Some(addr) = self.dns {
            entries.push(format!("dns={addr}"));
        }
        if let Some(addr) = self.metrics {
            entries.push(format!("metrics={addr}"));
        }
        entries
    }
}

/// What an agent joins with.
#[derive(Clone, Debug, Default)]
pub struct JoinRequest {
    /// Control addresses (`host:port`), tried in order.
    pub control_addrs: Vec<String>,
    /// The agent join token.
    pub token: String,
    /// Node name (a DNS label).
    pub name: String,
    /// Site (a DNS label).
    pub site: String,
    /// Node labels, for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// What to record in the node registry.
    pub advertise: JoinAdvertise,
    /// Where the agent listens, kept in `agent.json` for `agent run`; checked (and port 0
    /// resolved) by the caller with [`crate::listeners::check`] before it works out what to
    /// advertise. `None`: nothing kept (`agent run` then uses its defaults).
    pub listen: Option<ListenSettings>,
    /// Where replica directories go, kept in `agent.json` for `agent run`; `None`: the
    /// default.
    pub workloads_dir: Option<PathBuf>,
}

/// Joins the cluster as an agent through the first reachable control address, then writes the
/// data dir: credentials, `agent.json` and a cache claimed for this cluster and node. Before
/// control is contacted, the data dir must be usable: a directory (created 0700 if missing)
/// this process can write to, whose cache it can open — so that a bad `--data-dir` leaves no
/// node registered in the cluster for an agent that never comes.
///
/// # Errors
/// [`AgentError::AlreadyJoined`] when `data_dir` already holds an agent;
/// [`AgentError::DataDir`] when it cannot hold one; [`AgentError::Join`] when every address
/// failed (the last error); file and cache errors.
///
/// # Cancel safety
/// Not cancel safe: a dropped join may leave a half-written data dir.
pub async fn join(data_dir: &Path, request: JoinRequest) -> Result<AgentIdentity, AgentError> {
    let agent_file = data_dir.join(AGENT_FILE);
    if agent_file.exists() {
        return Err(AgentError::AlreadyJoined {
            path: data_dir.to_owned(),
        });
    }
    let cache = prepare_data_dir(data_dir)?;
    let params = JoinParams {
        role: NodeRole::Agent,
        name: request.name.clone(),
        site: request.site.clone(),
        labels: request.labels.clone(),
        advertise: request.advertise.entries(),
    };
    let joined = join_any(&request.control_addrs, &request.token, &params).await?;
    // The secret key before the credentials: credentials on disk then mean the whole grant
    // is, which is what lets `finish_interrupted_join` finish a join cut short after this.
    match &joined.secret_key {
        Some(key) => {
            let path = data_dir.join(secrets::SECRET_KEY_FILE);
            secrets::save_key(data_dir, key).map_err(io_error("write", &path))?;
        }
        None => warn!("control sent no node secret key: workloads that use secrets will not start"),
    }
    joined.credentials.save(data_dir)?;
    let mut seeds = request.control_addrs.clone();
    for addr in joined.control_addrs {
        if !seeds.contains(&addr) {
            seeds.push(addr);
        }
    }
    let fingerprint = joined.credentials.cluster_fingerprint();
    let identity =
        write_joined(data_dir, cache, request, joined.node_id, fingerprint, seeds).await?;
    info!(node_id = %identity.node_id, "joined the cluster as an agent");
    Ok(identity)
}

/// Finishes a join that control admitted but that stopped before `agent.json` was written (a
/// crash or power loss after the grant was saved). The node exists in the cluster and its
/// credentials (and, saved before them, its secret key) are on disk, so joining again would only leave that node behind
/// and, with a single-use token, be refused: the cache claim and `agent.json` are written from
/// `request` (its token unused) as [`join`] would have. `Ok(None)`: there is no such join to
/// finish (no grant saved, or only part of it), and nothing was done.
///
/// # Errors
/// The cache cannot be opened or claimed, or `agent.json` cannot be written.
///
/// # Cancel safety
/// Not cancel safe, as [`join`].
pub async fn finish_interrupted_join(
    data_dir: &Path,
    request: JoinRequest,
) -> Result<Option<AgentIdentity>, AgentError> {
    if data_dir.join(AGENT_FILE).exists() {
        return Ok(None);
    }
    let Ok(credentials) = warren_transport::Credentials::load(data_dir) else {
        return Ok(None);
    };
    let identity = credentials.identity();
    let Some(node_id) = identity
        .node_id
        .filter(|_| identity.role == CertRole::Agent)
    else {
        return Ok(None);
    };
    let cache = Cache::open(data_dir, CacheTuning::default())?;
    let seeds = request.control_addrs.clone();
    let fingerprint = credentials.cluster_fingerprint();
    let identity = write_joined(data_dir, cache, request, node_id, fingerprint, seeds).await?;
    info!(node_id = %identity.node_id, "finished a join that was interrupted after control admitted this node");
    Ok(Some(identity))
}

/// The end of a join, once the grant is saved: the cache claimed for the node, then
/// `agent.json`, written last and atomically — its presence is what "joined" means.
async fn write_joined(
    data_dir: &Path,
    cache: Cache,
    request: JoinRequest,
    node_id: NodeId,
    fingerprint: [u8; 32],
    control_addrs: Vec<String>,
) -> Result<AgentIdentity, AgentError> {
    let identity = AgentIdentity {
        node_id,
        name: request.name,
        site: request.site,
        labels: request.labels,
        control_addrs,
        cluster_fingerprint: hex(&fingerprint),
        gossip: request.advertise.gossip.map(|a| a.to_string()),
        listen: request.listen,
        workloads_dir: request.workloads_dir,
    };
    cache
        .claim(CacheIdentity {
            cluster_id: fingerprint,
            node_id,
        })
        .await?;
    drop(cache);
    let agent_file = data_dir.join(AGENT_FILE);
    let json = serde_json::to_vec_pretty(&identity).expect("agent identity serializes");
    write_atomic(&agent_file, &json, 0o644).map_err(io_error("write", &agent_file))?;
    Ok(identity)
}

/// Joins through the first control address that answers: each is resolved and tried in turn;
/// a refusal that another address cannot change (a bad token) ends the attempt at once.
async fn join_any(
    control_addrs: &[String],
    token: &str,
    params: &JoinParams,
) -> Result<warren_transport::join::Joined, AgentError> {
    let mut last_error = None;
    for addr in control_addrs {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(addr.as_str()).await {
            Ok(found) => found.collect(),
            Err(error) => {
                warn!(control = %addr, error = %error, "cannot resolve control address");
                last_error = Some(AgentError::NoControl(format!("{addr}: {error}")));
                continue;
            }
        };
        for socket in resolved {
            let result = warren_transport::join::join(
                socket,
                token,
                params.clone(),
                &Default::default(),
                &Default::default(),
            )
            .await;
            match result {
                Ok(joined) => return Ok(joined),
                Err(source) if source.is_retryable() => {
                    warn!(control = %socket, error = %source, "join failed; trying the next address");
                    last_error = Some(AgentError::Join {
                        addr: addr.clone(),
                        source,
                    });
                }
                Err(source) => {
                    return Err(AgentError::Join {
                        addr: addr.clone(),
                        source,
                    });
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| AgentError::NoControl(control_addrs.join(","))))
}

/// Makes sure `data_dir` can hold an agent, before control is asked anything: a directory
/// (created 0700 if missing) that this process can write to, with a cache it can open (not
/// held by another agent). Returns the open cache.
fn prepare_data_dir(data_dir: &Path) -> Result<Cache, AgentError> {
    let refuse = |detail: String| AgentError::DataDir {
        path: data_dir.to_owned(),
        detail,
    };
    match std::fs::metadata(data_dir) {
        Ok(meta) if !meta.is_dir() => return Err(refuse("is not a directory".to_owned())),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(refuse(format!("cannot be read: {error}"))),
    }
    warren_transport::private_dir(data_dir)
        .map_err(|e| refuse(format!("cannot be created: {e}")))?;
    let probe = data_dir.join(".warren-write-check");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| refuse(format!("is not writable: {e}")))?;
    Ok(Cache::open(data_dir, CacheTuning::default())?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
