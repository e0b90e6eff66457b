//! Why a service's replicas cannot be placed, in an operator's words: the first filter of the
//! placement that leaves no node (no agent, no node in the site, a constraint no node meets),
//! else why each node that matches is not taking replicas (drained, unreachable, down).

use std::collections::BTreeMap;

use warren_api::{Availability, Node, NodeId, NodeRole, NodeState, Service};

/// At most this many nodes are named in a reason; the rest are counted.
const NAMED_NODES: usize = 3;

/// Why no node takes new replicas of `service`, given the registry's `nodes`.
pub fn why_unplaceable(service: &Service, nodes: &BTreeMap<NodeId, Node>) -> String {
    let placement = &service.spec.placement;
    let agents: Vec<&Node> = nodes
        .values()
        .filter(|n| n.role == NodeRole::Agent && n.state != NodeState::Removed)
        .collect();
    if agents.is_empty() {
        return "no agent has joined the cluster".to_owned();
    }
    let in_sites: Vec<&Node> = agents
        .iter()
        .copied()
        .filter(|n| placement.sites.is_empty() || placement.sites.contains(&n.site))
        .collect();
    if in_sites.is_empty() {
        let sites = placement.sites.join(", ");
        let word = if placement.sites.len() == 1 {
            "site"
        } else {
            "sites"
        };
        return format!("no node in {word} {sites}");
    }
    let needed = warren_api::runtime_needed(&service.spec.workload);
    let fitting: Vec<&Node> = in_sites
        .iter()
        .copied()
        .filter(|n| warren_api::runtime_fits(&service.spec.workload, n))
        .collect();
    if fitting.is_empty() {
        let scope = if placement.sites.is_empty() {
            String::new()
        } else {
            format!(" in {}", placement.sites.join(", "))
        };
        let how = if needed == warren_api::RUNTIME_CONTAINERD {
            "an image needs an agent joined with --runtime containerd"
        } else {
            "a command needs an agent joined with --runtime process"
        };
        return format!("no node{scope} runs {needed} ({how})");
    }
    let mut matching = fitting;
    for constraint in &placement.constraints {
        let only = warren_api::Placement {
            sites: Vec::new(),
            constraints: vec![constraint.clone()],
        };
        matching.retain(|n| only.allows_node(n));
        if matching.is_empty() {
            let scope = if placement.sites.is_empty() {
                String::new()
            } else {
                format!(" in {}", placement.sites.join(", "))
            };
            return format!("no node{scope} matches constraint {constraint}");
        }
    }
    let reasons: Vec<String> = matching
        .iter()
        .filter_map(|n| unschedulable_because(n).map(|why| format!("{} {why}", n.name)))
        .collect();
    if reasons.is_empty() {
        return "every matching node can take it (placement pending)".to_owned();
    }
    let mut text = format!(
        "{} matching node{} not taking replicas: ",
        matching.len(),
        if matching.len() == 1 { "" } else { "s" }
    );
    text.push_str(&reasons[..reasons.len().min(NAMED_NODES)].join(", "));
    if reasons.len() > NAMED_NODES {
        text.push_str(&format!(" and {} more", reasons.len() - NAMED_NODES));
    }
    text
}

/// Why `node` takes no new replicas, if it does not.
fn unschedulable_because(node: &Node) -> Option<&'static str> {
    if node.availability == Availability::Drain {
        return Some("drained");
    }
    match node.state {
        NodeState::Ready => None,
        NodeState::Unreachable { .. } => Some("unreachable"),
        NodeState::Down => Some("down"),
        NodeState::Removed => Some("removed"),
    }
}

#[cfg(test)]
mod tests {
    use warren_api::{Constraint, NodeAddresses, ProcessSpec, ServiceName, ServiceSpec, Workload};

    use super::*;

    fn node(id: u64, site: &str, zone: &str, state: NodeState, drained: bool) -> Node {
        Node {
            id: NodeId(id),
            name: format!("edge-{id}"),
            role: NodeRole::Agent,
            site: site.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            availability: if drained {
                Availability::Drain
            } else {
                Availability::Active
            },
            state,
            cert_serial: None,
            addresses: NodeAddresses::default(),
            joined_at_ms: 0,
        }
    }

    fn service(sites: &[&str], constraints: &[&str]) -> Service {
        let workload = Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1".into()],
            working_dir: None,
        });
        let mut spec = ServiceSpec::new(ServiceName::new("web").unwrap(), workload);
        spec.placement.sites = sites.iter().map(|s| (*s).to_owned()).collect();
        spec.placement.constraints = constraints
            .iter()
            .map(|c| Constraint::parse(c).unwrap())
            .collect();
        Service { version: 1, spec }
    }

    #[test]
    fn the_first_filter_that_leaves_no_node_is_named() {
        let ready = NodeState::Ready;
        let nodes: BTreeMap<NodeId, Node> = [
            node(1, "lisbon", "a", ready, false),
            node(
                2,
                "lisbon",
                "b",
                NodeState::Unreachable { since_ms: 1 },
                false,
            ),
            node(3, "porto", "a", ready, true),
        ]
        .into_iter()
        .map(|n| (n.id, n))
        .collect();
        let why = |sites: &[&str], constraints: &[&str]| {
            why_unplaceable(&service(sites, constraints), &nodes)
        };
        assert_eq!(why(&["madrid"], &[]), "no node in site madrid");
        assert_eq!(
            why(&["madrid", "rome"], &[]),
            "no node in sites madrid, rome"
        );
        assert_eq!(
            why(&["porto"], &["label.zone==b"]),
            "no node in porto matches constraint label.zone==b"
        );
        assert_eq!(
            why(&[], &["label.zone==c"]),
            "no node matches constraint label.zone==c"
        );
        assert_eq!(
            why(&["porto"], &[]),
            "1 matching node not taking replicas: edge-3 drained"
        );
        assert_eq!(
            why(&[], &["label.zone==b"]),
            "1 matching node not taking replicas: edge-2 unreachable"
        );
        assert_eq!(
            why_unplaceable(&service(&[], &[]), &BTreeMap::new()),
            "no agent has joined the cluster"
        );
        // Every node here is a process node: an image has nowhere to go.
        let labelled: BTreeMap<NodeId, Node> = nodes
            .values()
            .cloned()
            .map(|mut n| {
                n.labels.insert(
                    warren_api::RUNTIME_LABEL.to_owned(),
                    warren_api::RUNTIME_PROCESS.to_owned(),
                );
                (n.id, n)
            })
            .collect();
        let mut image = service(&["lisbon"], &[]);
        image.spec.workload = warren_api::Workload::Image(warren_api::ImageSpec {
            reference: "busybox".into(),
            args: Vec::new(),
        });
        assert_eq!(
            why_unplaceable(&image, &labelled),
            "no node in lisbon runs containerd (an image needs an agent joined with --runtime containerd)"
        );
    }
}
