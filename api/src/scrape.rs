//! What Prometheus scrapes in a Warren cluster, and the service-discovery document that tells
//! it: each node's metrics endpoint and each replica's that declares one
//! ([`crate::ServiceSpec::metrics`]), with the labels they are found under.
//!
//! Control builds [`ScrapeTargets`] from its state for the whole cluster; each agent's view
//! carries its own site's, so that a site's Prometheus keeps finding its targets through the
//! agents while the site is cut off from the centre. Both serve [`ScrapeTargets::node_groups`]
//! and [`ScrapeTargets::workload_groups`] in Prometheus's `http_sd` JSON format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, ReplicaId};
use crate::node::NodeRole;

/// The targets of a cluster, or of one site.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ScrapeTargets {
    /// Every node that registered a metrics address, by node id.
    pub nodes: Vec<NodeTarget>,
    /// Every replica control wants running whose service declares a metrics endpoint, by
    /// replica id.
    pub workloads: Vec<WorkloadTarget>,
}

/// A node's own metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeTarget {
    /// Its id.
    pub node_id: NodeId,
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Agent or control.
    pub role: NodeRole,
    /// `host:port` of its metrics listener, as registered.
    pub address: String,
}

/// A replica's metrics endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkloadTarget {
    /// The replica (its service is `replica.service`).
    pub replica: ReplicaId,
    /// The node it runs on.
    pub node_id: NodeId,
    /// That node's name.
    pub node: String,
    /// That node's site.
    pub site: String,
    /// `host:port`: the node's address and the declared port.
    pub address: String,
    /// The declared HTTP path.
    pub path: String,
}

/// Which targets a discovery request wants (its query string: `?site=S&role=R`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SdFilter {
    /// Only this site.
    pub site: Option<String>,
    /// Only nodes of this role (node targets only).
    pub role: Option<NodeRole>,
}

impl SdFilter {
    /// Reads `site=` and `role=` from a query string (without the `?`); other keys are
    /// ignored, as Prometheus ignores what it does not know.
    ///
    /// # Errors
    /// A one-line reason: an unknown role.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut filter = SdFilter::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "site" => filter.site = Some(value.to_owned()),
                "role" => {
                    let role = value.parse::<NodeRole>().map_err(|e| e.to_string())?;
                    filter.role = Some(role);
                }
                _ => {}
            }
        }
        Ok(filter)
    }

    fn site_ok(&self, site: &str) -> bool {
        self.site.as_deref().is_none_or(|wanted| wanted == site)
    }
}

/// One group of Prometheus's `http_sd` format: targets and the labels they get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdGroup {
    /// `host:port` strings.
    pub targets: Vec<String>,
    /// Labels every target of the group gets.
    pub labels: BTreeMap<String, String>,
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl ScrapeTargets {
    /// The targets of nodes in `site` only (what an agent's view carries).
    pub fn of_site(&self, site: &str) -> ScrapeTargets {
        ScrapeTargets {
            nodes: self
                .nodes
                .iter()
                .filter(|n| n.site == site)
                .cloned()
                .collect(),
            workloads: self
                .workloads
                .iter()
                .filter(|w| w.site == site)
                .cloned()
                .collect(),
        }
    }

    /// One group per node the filter keeps, labelled `site`, `node` (its name), `node_id` and
    /// `role`.
    pub fn node_groups(&self, filter: &SdFilter) -> Vec<SdGroup> {
        self.nodes
            .iter()
            .filter(|n| filter.site_ok(&n.site) && filter.role.is_none_or(|r| r == n.role))
            .map(|n| SdGroup {
                targets: vec![n.address.clone()],
                labels: labels([
                    ("site", &n.site),
                    ("node", &n.name),
                    ("node_id", &n.node_id.to_string()),
                    ("role", n.role.as_str()),
                ]),
            })
            .collect()
    }

    /// One group per replica the filter keeps, labelled `service`, `replica`, `node`,
    /// `node_id`, `site`, and `__metrics_path__` (the path Prometheus scrapes).
    pub fn workload_groups(&self, filter: &SdFilter) -> Vec<SdGroup> {
        self.workloads
            .iter()
            .filter(|w| filter.site_ok(&w.site))
            .map(|w| SdGroup {
                targets: vec![w.address.clone()],
                labels: labels([
                    ("service", w.replica.service.as_str()),
                    ("replica", &w.replica.to_string()),
                    ("node", &w.node),
                    ("node_id", &w.node_id.to_string()),
                    ("site", &w.site),
                    ("__metrics_path__", &w.path),
                ]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServiceName;

    fn targets() -> ScrapeTargets {
        let node = |id: u64, name: &str, site: &str, role| NodeTarget {
            node_id: NodeId(id),
            name: name.into(),
            site: site.into(),
            role,
            address: format!("10.0.0.{id}:9091"),
        };
        ScrapeTargets {
            nodes: vec![
                node(1, "c1", "centre", NodeRole::Control),
                node(2, "edge-a", "lisbon", NodeRole::Agent),
                node(3, "edge-b", "porto", NodeRole::Agent),
            ],
            workloads: vec![WorkloadTarget {
                replica: ReplicaId::replicated(ServiceName::new("web").unwrap(), 1),
                node_id: NodeId(2),
                node: "edge-a".into(),
                site: "lisbon".into(),
                address: "10.0.0.2:8080".into(),
                path: "/stats".into(),
            }],
        }
    }

    #[test]
    fn node_groups_carry_names_sites_and_roles_and_filter() {
        let all = targets().node_groups(&SdFilter::default());
        assert_eq!(all.len(), 3);
        let json = serde_json::to_string(&all[1]).unwrap();
        assert_eq!(
            json,
            r#"{"targets":["10.0.0.2:9091"],"labels":{"node":"edge-a","node_id":"0000000000000002","role":"agent","site":"lisbon"}}"#
        );
        let control = SdFilter::from_query("role=control").unwrap();
        assert_eq!(targets().node_groups(&control).len(), 1);
        let porto = SdFilter::from_query("site=porto&x=1").unwrap();
        assert_eq!(targets().node_groups(&porto)[0].labels["node"], "edge-b");
        assert_eq!(
            SdFilter::from_query("role=boss").unwrap_err(),
            "role: unknown role \"boss\" (expected agent or control)"
        );
    }

    #[test]
    fn workload_groups_say_the_path_and_the_replica() {
        let groups = targets().workload_groups(&SdFilter::default());
        assert_eq!(groups[0].targets, ["10.0.0.2:8080"]);
        assert_eq!(groups[0].labels["replica"], "web.1");
        assert_eq!(groups[0].labels["service"], "web");
        assert_eq!(groups[0].labels["__metrics_path__"], "/stats");
        let porto = SdFilter::from_query("site=porto").unwrap();
        assert!(targets().workload_groups(&porto).is_empty());
        let lisbon = targets().of_site("lisbon");
        assert_eq!(lisbon.nodes.len(), 1);
        assert_eq!(lisbon.workloads.len(), 1);
    }
}
