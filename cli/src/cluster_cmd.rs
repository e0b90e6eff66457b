//! `warren cluster status`, `warren token create` and `warren node …`.

use anyhow::{Context, Result, anyhow, bail};
use warren_api::clock::unix_now_ms;
use warren_api::rest::{
    AdminCreate, AdminInfo, AdminIssued, AdminRenew, ClusterStatus, KeysRotated, MAX_TOKEN_TTL_MS,
    MemberContact, MemberHealth, NodeInfo, TokenInfo, TokenRequest, TokenResponse,
};
use warren_api::routes::Route;
use warren_api::{NodeRole, NodeState};

use crate::client::{ApiError, Client, ClientArgs};
use crate::output::{OutputFormat, print_read, print_write};
use crate::table::{Table, age, fields, to_yaml};

/// `warren cluster …`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Subcommands of `warren cluster`.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Control members, the leader, Raft term and revision, node and service counts.
    ///
    /// Without a quorum, shows the answering node's own (possibly stale) view and says so.
    Status,
    /// Move the cluster to a new cluster key: the CA key and every secret value are re-sealed
    /// with it, and every node moves to a new gossip key (the old one is accepted for an
    /// hour).
    ///
    /// Removing a node (`warren node rm`) does this by itself; run it by hand when a node's
    /// disk may have leaked, or on a schedule. A removed node, or a copy of a data dir taken
    /// before the rotation, cannot open what is sealed from now on.
    #[command(after_help = "Example:\n  warren cluster rotate-keys")]
    RotateKeys,
}

/// `warren token …`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// `warren admin …`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Subcommands of `warren admin`.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Renew the admin certificate of the admin config in use: a new key made here, a new
    /// certificate for 90 days, the config rewritten in place; the old certificate is revoked.
    ///
    /// Every command that talks to the cluster does this by itself once a third of the
    /// certificate's life is left.
    #[command(after_help = "Example:\n  warren admin renew --config ~/.warren/admin.conf")]
    Renew,
    /// Issue an admin certificate for a named operator and write an admin config for it. The
    /// key is made here and never sent; the certificate lasts 90 days.
    #[command(after_help = "Example:\n  \
        warren admin create alice --out alice.conf\n  \
        warren cluster status --config alice.conf")]
    Create {
        /// The operator's name (a DNS label): shown in `admin ls`, used to revoke.
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write the new admin config (mode 0600). Default: ./admin-NAME.conf.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// List the admin certificates the cluster CA issued: name, serial, expiry, revoked.
    Ls,
    /// Revoke an admin certificate: every control node refuses it from then on.
    #[command(after_help = "Example:\n  warren admin revoke alice")]
    Revoke {
        /// The admin's name, or the certificate's serial (from `admin ls`).
        #[arg(value_name = "NAME|SERIAL")]
        key: String,
    },
}

/// Subcommands of `warren token`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Mint a join token; prints the token alone on stdout (it is shown only once).
    #[command(after_help = "Examples:\n  \
        warren token create --role agent\n  \
        warren token create --role control --ttl 1h --single-use\n  \
        TOKEN=$(warren token create --role agent --single-use)")]
    Create {
        /// Role of the nodes that may join with it: agent or control.
        #[arg(long, value_name = "agent|control")]
        role: NodeRole,
        /// Lifetime, like 30m, 24h or 7d; at most 30d.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        ttl: String,
        /// Let only the first join use it.
        #[arg(long)]
        single_use: bool,
    },
    /// List the join tokens the cluster knows (never their secrets): id, role, expiry, use.
    #[command(after_help = "Example:\n  warren token ls -o json")]
    Ls,
    /// Revoke a join token: every control node refuses it from the next join on.
    #[command(after_help = "Example:\n  warren token revoke 3f2a9c01d4e5b6a7")]
    Revoke {
        /// The token's id: 16 hex digits, from `warren token ls` (it is also the token's
        /// fourth dash-separated part: WRN1-a-<cluster>-<id>-<secret>).
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// `warren node …`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// Subcommands of `warren node`. `N` is a node name or its 16-hex-digit id.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List nodes: id, name, role, site, liveness, availability, replicas.
    Ls,
    /// Show one node in full.
    Inspect {
        /// Node name or id.
        node: String,
    },
    /// Move the node's replicas elsewhere and place nothing new on it.
    Drain {
        /// Node name or id.
        node: String,
    },
    /// Let the scheduler use the node again after a drain.
    Activate {
        /// Node name or id.
        node: String,
    },
    /// Remove the node from the cluster and revoke its certificate; the cluster key and the
    /// gossip key are rotated, so what the node holds stops working.
    Rm {
        /// Node name or id.
        node: String,
    },
    /// Ask the node to roll its WireGuard key without dropping traffic: it makes a new key, both
    /// are accepted while its peers learn the new one, then the old one is retired. Recorded in
    /// the cluster, so a node cut off now rolls when it is back; `node inspect` shows the
    /// keys (`mesh.next_public_key` while it rolls).
    RotateKey {
        /// Node name or id.
        node: String,
    },
    /// Print the node's WireGuard configuration in `wg` format (its peers as the registry
    /// lists them), for debugging or to bring up a third-party WireGuard peer. The private key
    /// never leaves the box: it is in DATA_DIR/wireguard/private.key there.
    #[command(after_help = "Example:\n  \
        warren node wg-config edge-lisbon-1 > wg.conf\n  \
        # on the box (its agent stopped), with wireguard-go or kernel WireGuard as wg0:\n  \
        wg setconf wg0 <(grep -v '^Address' wg.conf)\n  \
        wg set wg0 private-key /var/lib/warren/wireguard/private.key\n  \
        ip addr add OVERLAY_IP/16 dev wg0; ip link set wg0 up    # OVERLAY_IP: the Address line")]
    WgConfig {
        /// Node name or id.
        node: String,
    },
}

/// Runs `warren cluster …`.
pub async fn cluster(client: &Client, format: OutputFormat, command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status => {
            let answer = match client.request(Route::ClusterStatus).await {
                Err(error) => match error.downcast_ref::<ApiError>() {
                    Some(api) if api.is_no_quorum() => {
                        eprintln!(
                            "warning: {}; showing the answering node's own view, which may be stale",
                            api.message
                        );
                        client.request_stale(Route::ClusterStatus).await?
                    }
                    _ => return Err(error),
                },
                Ok(answer) => answer,
            };
            print_read(format, &answer, render_status)
        }
        ClusterCommand::RotateKeys => {
            let answer = client.request(Route::RotateKeys).await?;
            print_read(format, &answer, |rotated: &KeysRotated| {
                format!(
                    "cluster key rotated: generation {} is in force\n",
                    rotated.generation
                )
            })
        }
    }
}

fn render_status(status: &ClusterStatus) -> String {
    let now = unix_now_ms();
    let leader = status.members.iter().find(|m| m.leader);
    let leader_name = leader
        .map(|m| format!("{} ({})", m.name, m.id))
        .unwrap_or_else(|| "none known".to_owned());
    let counts = &status.nodes;
    let mut out = fields(&[
        ("cluster", status.name.clone()),
        ("fingerprint", format!("sha256:{}", status.fingerprint)),
        ("leader", leader_name),
        ("answered by", status.answered_by.to_string()),
        ("term", status.term.to_string()),
        ("revision", status.revision.to_string()),
        (
            "nodes",
            format!(
                "{} ready, {} unreachable, {} down, {} removed ({} total)",
                counts.ready, counts.unreachable, counts.down, counts.removed, counts.total
            ),
        ),
        ("services", status.services.to_string()),
    ]);
    out.push('\n');
    let mut table = Table::new(&[
        "MEMBER", "NAME", "QUIC", "API", "VOTER", "LEADER", "CONTACT",
    ]);
    for member in &status.members {
        table.row(vec![
            member.id.to_string(),
            member.name.clone(),
            member.quic_addr.clone(),
            member.api_addr.clone(),
            yes_no(member.voter),
            yes_no(member.leader),
            member
                .contact
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| contact_state(c, now)),
        ]);
    }
    out.push_str(&table.render());
    // CONTACT is the leader's view; say so when it is another node's.
    let judge = status
        .members
        .iter()
        .find_map(|m| m.contact.as_ref().map(|c| c.judged_by));
    if let Some(judge) = judge
        && leader.is_none_or(|l| l.id != judge)
    {
        out.push_str(&format!(
            "CONTACT as seen by {judge}: the leader could not be asked\n"
        ));
    }
    out
}

/// `reachable`, `unknown`, or `unreachable 12s` (since calls to it started failing).
fn contact_state(contact: &MemberContact, now_ms: u64) -> String {
    match (contact.health, contact.unreachable_since_ms) {
        (MemberHealth::Unreachable, Some(since_ms)) => {
            format!("unreachable {}", age(now_ms, since_ms))
        }
        (health, _) => health.as_str().to_owned(),
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Runs `warren token …`.
pub async fn token(client: &Client, format: OutputFormat, command: TokenCommand) -> Result<()> {
    let (role, ttl, single_use) = match command {
        TokenCommand::Create {
            role,
            ttl,
            single_use,
        } => (role, ttl, single_use),
        TokenCommand::Ls => {
            let answer = client.request(Route::ListTokens).await?;
            return print_read(format, &answer, |t: &Vec<TokenInfo>| render_tokens(t));
        }
        TokenCommand::Revoke { id } => {
            let answer = client.request(Route::RevokeToken { token_id: &id }).await?;
            return print_write(format, &answer, |r| {
                format!("token {id} revoked (revision {})", r.revision)
            });
        }
    };
    let ttl_ms =
        warren_api::parse_duration_ms(&ttl).map_err(|e| anyhow!("--ttl: {}", e.message))?;
    if ttl_ms == 0 {
        return Err(anyhow!("--ttl must be more than 0s"));
    }
    if ttl_ms > MAX_TOKEN_TTL_MS {
        return Err(anyhow!(
            "--ttl {ttl} is longer than a token may live ({})",
            warren_api::format_duration_ms(MAX_TOKEN_TTL_MS)
        ));
    }
    let request = TokenRequest {
        role,
        ttl_ms: Some(ttl_ms),
        single_use,
    };
    let answer = client.request_json(Route::CreateToken, &request).await?;
    print_read(format, &answer, |token: &TokenResponse| {
        format!("{}\n", token.token)
    })
}

/// Runs `warren node …`.
pub async fn node(client: &Client, format: OutputFormat, command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Ls => print_read(
            format,
            &client.request(Route::ListNodes).await?,
            |n: &Vec<NodeInfo>| render_nodes(n),
        ),
        NodeCommand::RotateKey { node } => {
            let route = Route::RotateNodeKey { node: &node };
            let answer = client.request(route).await?;
            print_write(format, &answer, |r| {
                format!(
                    "node {node} asked to roll its WireGuard key (revision {}); it rolls when it next hears from control",
                    r.revision
                )
            })
        }
        NodeCommand::WgConfig { node } => {
            let nodes: Vec<NodeInfo> = client.request(Route::ListNodes).await?.json()?;
            let me: NodeInfo = client
                .request(Route::GetNode { node: &node })
                .await?
                .json()?;
            let peers = me.peers.as_deref();
            crate::output::out(&crate::wireguard_args::wg_config_of(&nodes, &node, peers)?);
            Ok(())
        }
        NodeCommand::Inspect { node } => {
            let answer = client.request(Route::GetNode { node: &node }).await?;
            match format {
                OutputFormat::Json => print_read(format, &answer, |_: &NodeInfo| String::new()),
                OutputFormat::Table => {
                    crate::output::out(&to_yaml(&answer.json::<NodeInfo>()?)?);
                    Ok(())
                }
            }
        }
        NodeCommand::Drain { node } => {
            let route = Route::DrainNode { node: &node };
            node_action(client, format, route, &node, "drained").await
        }
        NodeCommand::Activate { node } => {
            let route = Route::ActivateNode { node: &node };
            node_action(client, format, route, &node, "activated").await
        }
        NodeCommand::Rm { node } => {
            let answer = client.request(Route::RemoveNode { node: &node }).await?;
            print_write(format, &answer, |r| {
                format!("node {node} removed (revision {})", r.revision)
            })
        }
    }
}

async fn node_action(
    client: &Client,
    format: OutputFormat,
    action: Route<'_>,
    node: &str,
    done: &str,
) -> Result<()> {
    let answer = client.request(action).await?;
    print_write(format, &answer, |r| {
        if r.changed {
            format!("node {node} {done} (revision {})", r.revision)
        } else {
            format!("node {node} already {done}")
        }
    })
}

/// Runs `warren admin …`.
pub async fn admin(client: &Client, format: OutputFormat, command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Ls => {
            let answer = client.request(Route::ListAdmins).await?;
            print_read(format, &answer, |a: &Vec<AdminInfo>| render_admins(a))
        }
        AdminCommand::Revoke { key } => {
            let answer = client.request(Route::RevokeAdmin { admin: &key }).await?;
            print_write(format, &answer, |r| {
                if r.changed {
                    format!("admin {key} revoked (revision {})", r.revision)
                } else {
                    format!("admin {key} was already revoked")
                }
            })
        }
        AdminCommand::Create { name, out } => create_admin(client, format, name, out).await,
        AdminCommand::Renew => {
            let (answer, issued, path) = renew_admin_config(client).await?;
            print_read(format, &answer, |_: &AdminIssued| {
                format!(
                    "admin {} renewed (serial {}, expires in {}); {} rewritten\n",
                    issued.admin.name,
                    issued.admin.serial,
                    age(issued.admin.expires_at_ms, unix_now_ms()),
                    path.display()
                )
            })
        }
    }
}

/// Renews the admin certificate of the config `client` uses and rewrites that config in place
/// (same cluster, same API addresses); the old certificate is revoked by the cluster.
///
/// # Errors
/// No admin config in use, or the cluster refused.
pub async fn renew_admin_config(
    client: &Client,
) -> Result<(crate::client::Answer, AdminIssued, std::path::PathBuf)> {
    let (Some(path), Some(current)) = (client.config_path(), client.credentials()) else {
        bail!("admin renew rewrites the admin config it uses; pass --config FILE");
    };
    let (key, csr) = warren_transport::ca::generate_csr().context("make a key")?;
    let request = AdminRenew {
        csr_der_base64: data_encoding::BASE64.encode(&csr),
    };
    let answer = client.request_json(Route::RenewAdmin, &request).await?;
    let issued: AdminIssued = answer.json()?;
    let cert = data_encoding::BASE64
        .decode(issued.cert_der_base64.as_bytes())
        .context("the issued certificate is not base64")?;
    let renewed = warren_transport::Credentials::new(
        cert.into(),
        key.serialize_der(),
        current.ca_cert_der().clone(),
    )
    .context("read the renewed certificate")?;
    let config = crate::config::AdminConfig::load(path)?;
    crate::config::AdminConfig::new(config.cluster, config.api, &renewed).save(path)?;
    Ok((answer, issued, path.to_owned()))
}

/// Renews the admin certificate in use once a third of its life is left (and before it
/// expires: an expired one is refused). Returns whether it did; a failure is only a warning.
pub async fn renew_admin_if_due(client: &Client) -> bool {
    let Some(identity) = client.credentials().map(|c| c.identity().clone()) else {
        return false;
    };
    let now = warren_api::clock::unix_now();
    if now < identity.renew_at_unix() || now >= identity.not_after_unix {
        return false;
    }
    match renew_admin_config(client).await {
        Ok((_, issued, path)) => {
            eprintln!(
                "note: admin certificate renewed (serial {}, {} rewritten)",
                issued.admin.serial,
                path.display()
            );
            true
        }
        Err(error) => {
            eprintln!(
                "warning: the admin certificate expires soon and could not be renewed: {}",
                crate::output::one_line(&error)
            );
            false
        }
    }
}

/// `admin create`: a key and CSR here, the certificate from the cluster, an admin config
/// with the cluster's API addresses written next to nothing that could be overwritten.
async fn create_admin(
    client: &Client,
    format: OutputFormat,
    name: String,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    let out = out.unwrap_or_else(|| format!("admin-{name}.conf").into());
    if out.exists() {
        bail!("{} exists; choose another --out", out.display());
    }
    let ca_der = client.ca_cert_der().ok_or_else(|| {
        anyhow!("admin create needs an admin config to copy the cluster CA from (--config)")
    })?;
    let status: ClusterStatus = client.request(Route::ClusterStatus).await?.json()?;
    let (key, csr) = warren_transport::ca::generate_csr().context("make a key")?;
    let request = AdminCreate {
        name: name.clone(),
        csr_der_base64: data_encoding::BASE64.encode(&csr),
    };
    let answer = client.request_json(Route::CreateAdmin, &request).await?;
    let issued: AdminIssued = answer.json()?;
    let cert = data_encoding::BASE64
        .decode(issued.cert_der_base64.as_bytes())
        .context("the issued certificate is not base64")?;
    let credentials =
        warren_transport::Credentials::new(cert.into(), key.serialize_der(), ca_der.into())
            .context("read the issued certificate")?;
    let api = status.members.iter().map(|m| m.api_addr.clone()).collect();
    crate::config::AdminConfig::new(status.name, api, &credentials).save(&out)?;
    print_read(format, &answer, |_: &AdminIssued| {
        format!(
            "admin {name} created (serial {}, expires in {}); its config: {}\n",
            issued.admin.serial,
            age(issued.admin.expires_at_ms, unix_now_ms()),
            out.display()
        )
    })
}

fn render_admins(admins: &[AdminInfo]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&["NAME", "SERIAL", "STATE", "EXPIRES", "ISSUED"]);
    for admin in admins {
        let state = if admin.revoked {
            "revoked"
        } else if admin.expires_at_ms <= now {
            "expired"
        } else {
            "valid"
        };
        table.row(vec![
            admin.name.clone(),
            admin.serial.clone(),
            state.to_owned(),
            if admin.expires_at_ms > now {
                format!("in {}", age(admin.expires_at_ms, now))
            } else {
                format!("{} ago", age(now, admin.expires_at_ms))
            },
            format!("{} ago", age(now, admin.issued_at_ms)),
        ]);
    }
    table.render()
}

fn render_tokens(tokens: &[TokenInfo]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&[
        "ID",
        "ROLE",
        "USE",
        "STATE",
        "EXPIRES",
        "CREATED",
        "CREATED BY",
    ]);
    for token in tokens {
        let expired = token.expires_at_ms.is_some_and(|at| at <= now);
        let state = match (token.revoked, expired, token.used_at_ms) {
            (true, _, _) => "revoked".to_owned(),
            (false, true, _) => "expired".to_owned(),
            (false, false, Some(at)) => format!("used {} ago", age(now, at)),
            (false, false, None) => "valid".to_owned(),
        };
        let expires = match token.expires_at_ms {
            Some(at) if at > now => format!("in {}", age(at, now)),
            Some(at) => format!("{} ago", age(now, at)),
            None => "never".to_owned(),
        };
        table.row(vec![
            token.id.clone(),
            token.role.to_string(),
            if token.single_use { "once" } else { "many" }.to_owned(),
            state,
            expires,
            format!("{} ago", age(now, token.created_at_ms)),
            token.created_by.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    table.render()
}

fn render_nodes(nodes: &[NodeInfo]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ROLE",
        "SITE",
        "STATE",
        "AVAIL",
        "REPLICAS",
        "LINK",
        "LISTENERS",
        "GOSSIP",
        "OVERLAY",
        "WG",
        "QUIC",
        "JOINED",
    ]);
    for info in nodes {
        let node = &info.node;
        // A control member the leader cannot reach shows so, whatever the registry says.
        let member_down = info
            .member
            .as_ref()
            .filter(|c| c.health == MemberHealth::Unreachable);
        let state = match (node.state, member_down) {
            (NodeState::Ready, Some(contact)) => contact_state(contact, now),
            (NodeState::Unreachable { since_ms }, _) => {
                format!("unreachable {}", age(now, since_ms))
            }
            (other, _) => other.as_str().to_owned(),
        };
        table.row(vec![
            node.id.to_string(),
            node.name.clone(),
            node.role.to_string(),
            node.site.clone(),
            state,
            node.availability.as_str().to_owned(),
            info.replicas.to_string(),
            match &info.agent {
                Some(link) if link.connected => "connected".to_owned(),
                Some(link) => format!("down, seen {} ago", age(now, link.last_contact_ms)),
                None if node.role == NodeRole::Agent => "not seen".to_owned(),
                None => "-".to_owned(),
            },
            listeners_cell(info),
            // As the answering control node's mesh sees it; `-` when it runs none or has not
            // heard of the node.
            info.gossip
                .as_ref()
                .map_or_else(|| "-".to_owned(), |g| g.liveness.clone()),
            // The overlay address, once the node declared a key; until then no peer has it.
            match &info.mesh {
                Some(mesh) if mesh.public_key.is_some() => mesh.overlay_ip.clone(),
                Some(mesh) => format!("{} (no key)", mesh.overlay_ip),
                None => "-".to_owned(),
            },
            // Peers with a fresh handshake, as the agent last reported them.
            info.agent
                .as_ref()
                .and_then(|a| a.mesh_peers_up)
                .map_or_else(|| "-".to_owned(), |(up, all)| format!("{up}/{all} up")),
            node.addresses
                .quic
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
            format!("{} ago", age(now, node.joined_at_ms)),
        ]);
    }
    table.render()
}

/// The LISTENERS cell: `ok` when every listener the agent reported is up, else which are down
/// (`dns,metrics down`); `-` for control nodes and agents that reported none.
fn listeners_cell(info: &NodeInfo) -> String {
    let Some(link) = info.agent.as_ref().filter(|l| !l.listeners.is_empty()) else {
        return "-".to_owned();
    };
    let down: Vec<&str> = link
        .listeners
        .iter()
        .filter(|l| !l.up)
        .map(|l| l.listener.as_str())
        .collect();
    if down.is_empty() {
        "ok".to_owned()
    } else {
        format!("{} down", down.join(","))
    }
}
