//! A control node keeps its registry entry true to where its metrics listener is: started
//! again with the listener moved or turned off (`warren control run --metrics`), or bound to
//! port 0, it records what it serves on, so Prometheus discovery (`/sd/nodes`) and
//! `warren prometheus config` find it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use warren_api::{NodeAddresses, NodeId};

use crate::command::Op;
use crate::control::Control;

/// How often the node looks again while it cannot record its address yet (no leader, not in
/// the registry yet, a proposal that failed).
const RETRY: Duration = Duration::from_secs(1);

/// The metrics address other machines reach this node at: `bound`, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by the IP of the node's advertised QUIC address.
pub(super) fn advertised_metrics(
    bound: Option<SocketAddr>,
    advertise_quic: &str,
) -> Option<String> {
    let bound = bound?;
    if !bound.ip().is_unspecified() {
        return Some(bound.to_string());
    }
    let quic: SocketAddr = advertise_quic.parse().ok()?;
    Some(SocketAddr::new(quic.ip(), bound.port()).to_string())
}

/// Proposes [`Op::SetAddresses`] for this node until the registry holds `metrics` as its
/// metrics address (its other addresses left as they are), or `cancel` fires.
pub(super) async fn keep_metrics_registered(
    control: Arc<Control>,
    metrics: Option<String>,
    cancel: CancellationToken,
) {
    let node = NodeId(control.id());
    loop {
        if let Some(wanted) = addresses_to_record(&control, node, &metrics).await {
            let op = Op::SetAddresses {
                node,
                addresses: wanted,
            };
            match control.propose(op).await {
                Ok(_) => info!(metrics = ?metrics, "recorded this node's metrics address"),
                Err(error) => debug!(error = %error, "metrics address not recorded yet; retrying"),
            }
        } else if control.leader().is_some() && control.applied().0 > 0 {
            let state = control.read_stale().await;
            if state
                .nodes
                .get(&node)
                .is_some_and(|n| n.addresses.metrics == metrics)
            {
                return;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// This node's addresses with `metrics` in place, if the registry holds another metrics
/// address for it; `None` while there is nothing to record, or nothing it can record yet.
async fn addresses_to_record(
    control: &Control,
    node: NodeId,
    metrics: &Option<String>,
) -> Option<NodeAddresses> {
    if control.leader().is_none() || control.applied().0 == 0 {
        return None;
    }
    let state = control.read_stale().await;
    let entry = state.nodes.get(&node)?;
    (entry.addresses.metrics != *metrics).then(|| NodeAddresses {
        metrics: metrics.clone(),
        ..entry.addresses.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_ip_is_advertised_as_the_quic_ip() {
        let bound = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        assert_eq!(
            advertised_metrics(bound("127.0.0.1:9090"), "10.0.0.1:7101").as_deref(),
            Some("127.0.0.1:9090")
        );
        assert_eq!(
            advertised_metrics(bound("0.0.0.0:9090"), "10.0.0.1:7101").as_deref(),
            Some("10.0.0.1:9090")
        );
        assert_eq!(
            advertised_metrics(bound("[::]:9090"), "[fd00::1]:7101").as_deref(),
            Some("[fd00::1]:9090")
        );
        assert_eq!(advertised_metrics(None, "10.0.0.1:7101"), None);
    }
}
