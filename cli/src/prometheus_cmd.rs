//! `warren prometheus config`: the Prometheus configuration of a site, or of the centre,
//! filled in with the cluster's addresses from the node registry, and the alert and recording
//! rules shipped in `deploy/prometheus/rules/` beside it (`--out DIR`).
//!
//! The structure is the one of `deploy/prometheus/site.yml` and `central.yml` (a test checks
//! that they agree): a site Prometheus finds Warren's nodes and workloads through its agents'
//! `/sd/nodes` and `/sd/workloads`, which they serve from their cached view, so it keeps
//! scraping while the site is cut off; the central one finds the control nodes through their
//! own `/sd/nodes?role=control` and federates every site Prometheus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use warren_api::rest::NodeInfo;
use warren_api::routes::Route;
use warren_api::{Node, NodeRole, NodeState};

use crate::client::{Client, ClientArgs};

/// The site rules, as shipped.
const SITE_RULES: &str = include_str!("../../deploy/prometheus/rules/site.yml");
/// The central rules, as shipped.
const CENTRAL_RULES: &str = include_str!("../../deploy/prometheus/rules/central.yml");

/// `warren prometheus …`.
#[derive(Debug, clap::Args)]
pub struct PrometheusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: PrometheusCommand,
}

/// Subcommands of `warren prometheus`.
#[derive(Debug, clap::Subcommand)]
pub enum PrometheusCommand {
    /// Print (or write, with --out) the Prometheus configuration of a site or of the centre.
    ///
    /// --site SITE: a Prometheus inside the site, which finds every Warren node and workload
    /// of the site through the site's agents (each serves /sd/nodes and /sd/workloads from
    /// its cached view: scraping goes on while the site is cut off) and evaluates the site's
    /// alerts. Every agent of the site that registered a metrics address is listed.
    ///
    /// --central: the Prometheus at the ops site, which scrapes the control nodes (found
    /// through their /sd/nodes?role=control), federates each site Prometheus given with
    /// --federate, and evaluates the fleet and control-plane alerts.
    ///
    /// With --out DIR it writes DIR/prometheus.yml and the rules it loads
    /// (DIR/rules/site.yml or DIR/rules/central.yml); without, it prints the configuration,
    /// which expects those rules beside it.
    #[command(after_help = "Examples:\n  \
        warren prometheus config --site lisbon --out /etc/prometheus\n  \
        warren prometheus config --central --federate lisbon=10.1.0.2:9090 --federate porto=10.2.0.2:9090 --out /etc/prometheus\n  \
        promtool check config /etc/prometheus/prometheus.yml")]
    Config(ConfigArgs),
}

/// `warren prometheus config` flags.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["site", "central"])))]
pub struct ConfigArgs {
    /// The configuration of this site's Prometheus.
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
    /// The configuration of the central Prometheus (give each site's with --federate).
    #[arg(long, requires = "federate")]
    pub central: bool,
    /// A site Prometheus the central one federates, as SITE=HOST:PORT (repeatable).
    #[arg(long, value_name = "SITE=HOST:PORT", requires = "central")]
    pub federate: Vec<String>,
    /// Write DIR/prometheus.yml and DIR/rules/ instead of printing the configuration.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `warren prometheus …`.
///
/// # Errors
/// The API's, a site without agents to discover through, a cluster without control metrics
/// addresses, malformed `--federate`, files that cannot be written.
pub async fn run(client: &Client, command: PrometheusCommand) -> Result<()> {
    let PrometheusCommand::Config(args) = command;
    let federate = federate_targets(&args.federate)?;
    let nodes: Vec<NodeInfo> = client.request(Route::ListNodes).await?.json()?;
    let nodes: Vec<Node> = nodes.into_iter().map(|info| info.node).collect();
    let (config, rules_name, rules) = match &args.site {
        Some(site) => (site_config(site, &nodes)?, "site.yml", SITE_RULES),
        None => (
            central_config(&nodes, &federate)?,
            "central.yml",
            CENTRAL_RULES,
        ),
    };
    match &args.out {
        None => crate::output::out(&config),
        Some(dir) => {
            let (config_path, rules_path) = write_out(dir, &config, rules_name, rules)?;
            crate::output::out(&format!(
                "wrote {} and {}\nstart Prometheus with: prometheus --config.file={}\n",
                config_path.display(),
                rules_path.display(),
                config_path.display()
            ));
        }
    }
    Ok(())
}

/// Writes the configuration and its rules under `dir`; returns both paths.
fn write_out(
    dir: &Path,
    config: &str,
    rules_name: &str,
    rules: &str,
) -> Result<(PathBuf, PathBuf)> {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)
        .with_context(|| format!("--out: create {}", rules_dir.display()))?;
    let config_path = dir.join("prometheus.yml");
    let rules_path = rules_dir.join(rules_name);
    for (path, text) in [(&config_path, config), (&rules_path, rules)] {
        std::fs::write(path, text).with_context(|| format!("--out: write {}", path.display()))?;
    }
    Ok((config_path, rules_path))
}

/// `SITE=HOST:PORT` pairs, in the order given.
fn federate_targets(given: &[String]) -> Result<Vec<(String, String)>> {
    given
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((site, addr)) if !site.is_empty() && addr.contains(':') => {
                Ok((site.to_owned(), addr.to_owned()))
            }
            _ => bail!("--federate: expected SITE=HOST:PORT, got {entry:?}"),
        })
        .collect()
}

/// A Prometheus configuration, as much of it as Warren writes.
#[derive(Serialize)]
struct PrometheusConfig {
    global: Global,
    rule_files: Vec<String>,
    scrape_configs: Vec<ScrapeConfig>,
}

#[derive(Serialize)]
struct Global {
    scrape_interval: &'static str,
    evaluation_interval: &'static str,
}

/// Every 15 s; the alerts' `for:` durations assume it.
const GLOBAL: Global = Global {
    scrape_interval: "15s",
    evaluation_interval: "15s",
};

#[derive(Serialize)]
struct ScrapeConfig {
    job_name: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    honor_labels: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_path: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    params: BTreeMap<&'static str, Vec<&'static str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_sd_configs: Vec<HttpSd>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    static_configs: Vec<StaticConfig>,
}

impl ScrapeConfig {
    fn discovered(job_name: &'static str, honor_labels: bool, urls: Vec<String>) -> Self {
        ScrapeConfig {
            job_name,
            honor_labels,
            metrics_path: None,
            params: BTreeMap::new(),
            http_sd_configs: urls.into_iter().map(|url| HttpSd { url }).collect(),
            static_configs: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct HttpSd {
    url: String,
}

#[derive(Serialize)]
struct StaticConfig {
    targets: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

/// What a central Prometheus federates from each site Prometheus: Warren's series, the sites'
/// recording rules, and the `up` of their Warren targets.
const FEDERATE_MATCH: [&str; 2] = [
    r#"{__name__=~"warren_.+|warren:.+|process_.+"}"#,
    r#"up{job=~"warren.*"}"#,
];

/// The metrics addresses of the nodes of `role` (in `site`, if given) that registered one,
/// removed nodes left out, in registry order.
fn metrics_addrs(nodes: &[Node], role: NodeRole, site: Option<&str>) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.role == role && n.state != NodeState::Removed)
        .filter(|n| site.is_none_or(|site| n.site == site))
        .filter_map(|n| n.addresses.metrics.clone())
        .collect()
}

fn render(header: &str, config: &PrometheusConfig) -> Result<String> {
    let yaml = serde_norway::to_string(config).context("encode the configuration")?;
    Ok(format!("{header}\n{yaml}"))
}

/// The configuration of `site`'s Prometheus: every agent of the site with a metrics address
/// is a discovery source for the nodes (job `warren`) and the workloads (`warren-workloads`).
///
/// # Errors
/// No agent of the site registered a metrics address.
fn site_config(site: &str, nodes: &[Node]) -> Result<String> {
    let agents = metrics_addrs(nodes, NodeRole::Agent, Some(site));
    if agents.is_empty() {
        let sites: std::collections::BTreeSet<&str> =
            nodes.iter().map(|n| n.site.as_str()).collect();
        bail!(
            "site {site:?} has no agent with a metrics address (sites: {}); agents register \
             theirs at join (--metrics)",
            sites.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let urls = |path: &str| agents.iter().map(|a| format!("http://{a}{path}")).collect();
    let config = PrometheusConfig {
        global: GLOBAL,
        rule_files: vec!["rules/site.yml".into()],
        scrape_configs: vec![
            ScrapeConfig::discovered("warren", true, urls("/sd/nodes")),
            ScrapeConfig::discovered("warren-workloads", false, urls("/sd/workloads")),
        ],
    };
    let header = format!(
        "# Prometheus for Warren site {site}, written by `warren prometheus config --site {site}`.\n\
         # Its agents serve discovery for the site from their cached views, so scraping and the\n\
         # site's alerts go on while the site is cut off. Rules: rules/site.yml beside this file.\n"
    );
    render(&header, &config)
}

/// The central Prometheus's configuration: the control nodes with a metrics address are
/// discovery sources for job `warren-control`; each of `federate` (site, `host:port`) is a
/// site Prometheus whose `/federate` job `warren-federate` scrapes.
///
/// # Errors
/// No control node has a metrics address.
fn central_config(nodes: &[Node], federate: &[(String, String)]) -> Result<String> {
    let controls = metrics_addrs(nodes, NodeRole::Control, None);
    if controls.is_empty() {
        bail!(
            "no control node has a metrics address; give them one (warren control run --metrics \
             IP:PORT) so the central Prometheus can scrape and discover them"
        );
    }
    let urls = controls
        .iter()
        .map(|c| format!("http://{c}/sd/nodes?role=control"))
        .collect();
    let federation = ScrapeConfig {
        job_name: "warren-federate",
        honor_labels: true,
        metrics_path: Some("/federate"),
        params: BTreeMap::from([("match[]", FEDERATE_MATCH.to_vec())]),
        http_sd_configs: Vec::new(),
        static_configs: federate
            .iter()
            .map(|(site, addr)| StaticConfig {
                targets: vec![addr.clone()],
                labels: BTreeMap::from([("site", site.clone())]),
            })
            .collect(),
    };
    let config = PrometheusConfig {
        global: GLOBAL,
        rule_files: vec!["rules/central.yml".into()],
        scrape_configs: vec![
            ScrapeConfig::discovered("warren-control", true, urls),
            federation,
        ],
    };
    let header = "# The central Prometheus of a Warren cluster, written by `warren prometheus \
                  config --central`.\n# It scrapes the control nodes and federates each site's \
                  Prometheus. Rules: rules/central.yml beside this file.\n";
    render(header, &config)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use warren_api::{Availability, NodeAddresses, NodeId};

    use super::*;

    fn node(id: u64, role: NodeRole, site: &str, metrics: Option<&str>) -> Node {
        Node {
            id: NodeId(id),
            name: format!("n{id}"),
            role,
            site: site.into(),
            labels: BTreeMap::new(),
            availability: Availability::Active,
            state: NodeState::Ready,
            cert_serial: None,
            addresses: NodeAddresses {
                metrics: metrics.map(str::to_owned),
                ..NodeAddresses::default()
            },
            joined_at_ms: 0,
        }
    }

    /// The shipped example file and what the command renders for the same cluster are the
    /// same configuration (comments aside).
    fn same_as_shipped(rendered: &str, shipped: &str) {
        let rendered: serde_norway::Value = serde_norway::from_str(rendered).unwrap();
        let shipped: serde_norway::Value = serde_norway::from_str(shipped).unwrap();
        assert_eq!(rendered, shipped);
    }

    fn example_cluster() -> Vec<Node> {
        vec![
            node(1, NodeRole::Control, "centre", Some("10.0.0.1:9090")),
            node(2, NodeRole::Control, "centre", Some("10.0.0.2:9090")),
            node(3, NodeRole::Control, "centre", Some("10.0.0.3:9090")),
            node(11, NodeRole::Agent, "site-a", Some("10.1.0.11:9091")),
            node(12, NodeRole::Agent, "site-a", Some("10.1.0.12:9091")),
            node(13, NodeRole::Agent, "site-a", None),
            node(21, NodeRole::Agent, "site-b", Some("10.2.0.21:9091")),
        ]
    }

    #[test]
    fn the_site_config_is_the_shipped_one_filled_in() {
        let rendered = site_config("site-a", &example_cluster()).unwrap();
        same_as_shipped(&rendered, include_str!("../../deploy/prometheus/site.yml"));
        assert!(rendered.starts_with("# Prometheus for Warren site site-a"));
        let error = site_config("site-c", &example_cluster()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "site \"site-c\" has no agent with a metrics address (sites: centre, site-a, site-b); \
             agents register theirs at join (--metrics)"
        );
    }

    #[test]
    fn the_central_config_is_the_shipped_one_filled_in() {
        let federate = federate_targets(&[
            "site-a=10.1.0.2:9090".to_owned(),
            "site-b=10.2.0.2:9090".to_owned(),
        ])
        .unwrap();
        let rendered = central_config(&example_cluster(), &federate).unwrap();
        same_as_shipped(
            &rendered,
            include_str!("../../deploy/prometheus/central.yml"),
        );
        let agents_only: Vec<Node> = example_cluster().into_iter().skip(3).collect();
        let error = central_config(&agents_only, &federate).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no control node has a metrics address")
        );
        let error = federate_targets(&["lisbon".to_owned()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--federate: expected SITE=HOST:PORT, got \"lisbon\""
        );
    }

    #[test]
    fn out_writes_the_config_and_its_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (config, rules) =
            write_out(dir.path(), "global: {}\n", "site.yml", SITE_RULES).unwrap();
        assert_eq!(config, dir.path().join("prometheus.yml"));
        assert_eq!(std::fs::read_to_string(rules).unwrap(), SITE_RULES);
    }
}
