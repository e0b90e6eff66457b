//! The layouts older builds wrote, kept so that their bytes still decode, and their upgrades
//! to the current types.
//!
//! Postcard is not self-describing: a value is read back by the type that wrote it, field by
//! field. So when a type that is stored or sent changes its fields, its old layout stays here
//! as `…V<n>` (the fields in their old order, nothing else), with a `From` into the current
//! type; every store that holds it carries a format number and decodes older numbers through
//! these types (the Raft log, Raft snapshots, the agent's cache; the agent wire refuses an
//! older [`crate::wire::WIRE_VERSION`] instead). See ARCHITECTURE.md, "Format changes".
//!
//! | spec format | layout |
//! |---|---|
//! | 1 | [`ServiceSpecV1`]: before `user`, `group` and `cap_add` |
//! | 2 | [`ServiceSpecV2`]: [`UpdateConfigV1`], before rollouts were health-gated |
//! | 3 | [`ServiceSpecV3`]: before `metrics` |
//! | 4 | [`ServiceSpec`] ([`SPEC_FORMAT`]) |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, Revision, ServiceName};
use crate::node::Node;
use crate::overlay::OwnMesh;
use crate::placement::Placement;
use crate::replica::Replica;
use crate::run_as::{ALL_CAPABILITIES, ROOT_USER};
use crate::scrape::ScrapeTargets;
use crate::secret::SealedBlob;
use crate::service::{
    HealthCheck, OnDisconnect, PortSpec, Resources, RestartPolicy, SecretRef, Service, ServiceMode,
    ServiceSpec, UpdateConfig, VolumeMount, Workload,
};
use crate::wire::{NodeView, PeerInfo, ServiceEndpoint};

/// The layout of [`ServiceSpec`] this build writes. Stores record it (or a number of their own
/// that implies it) beside what they write, so that the next change to the spec knows what it
/// reads.
pub const SPEC_FORMAT: u32 = 4;

/// [`ServiceSpec`] as spec format 1 wrote it: before `user`, `group` and `cap_add`. Every
/// field in its old place; `Serialize` only so that tests can write the old layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of ServiceSpec, in its format-1 order"
)]
pub struct ServiceSpecV1 {
    pub name: ServiceName,
    pub workload: Workload,
    pub mode: ServiceMode,
    pub placement: Placement,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub health: Option<HealthCheck>,
    pub restart: RestartPolicy,
    pub on_disconnect: OnDisconnect,
    pub secrets: Vec<SecretRef>,
    pub volumes: Vec<VolumeMount>,
    pub resources: Resources,
    pub update: UpdateConfigV1,
    pub stop_grace_period_ms: u64,
    pub labels: BTreeMap<String, String>,
}

impl From<ServiceSpecV1> for ServiceSpec {
    /// By way of spec format 2 (see there).
    fn from(v1: ServiceSpecV1) -> Self {
        ServiceSpecV2::from(v1).into()
    }
}

impl From<ServiceSpecV1> for ServiceSpecV2 {
    /// A format-1 spec ran its workload as the agent's user — root on a production box — with
    /// every capability: it keeps doing so, said out loud (`user: root`, `cap_add: [ALL]`),
    /// and its workload hash is unchanged, so an upgrade restarts nothing. New specs get the
    /// unprivileged default.
    fn from(v1: ServiceSpecV1) -> Self {
        ServiceSpecV2 {
            name: v1.name,
            workload: v1.workload,
            mode: v1.mode,
            placement: v1.placement,
            env: v1.env,
            ports: v1.ports,
            health: v1.health,
            restart: v1.restart,
            on_disconnect: v1.on_disconnect,
            secrets: v1.secrets,
            volumes: v1.volumes,
            resources: v1.resources,
            user: Some(ROOT_USER.to_owned()),
            group: None,
            cap_add: vec![ALL_CAPABILITIES.to_owned()],
            update: v1.update,
            stop_grace_period_ms: v1.stop_grace_period_ms,
            labels: v1.labels,
        }
    }
}

/// [`UpdateConfig`] of spec formats 1 and 2: batches and the pause between them, nothing
/// watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of UpdateConfig, in their format-2 order"
)]
pub struct UpdateConfigV1 {
    pub parallelism: u32,
    pub delay_ms: u64,
}

impl From<UpdateConfigV1> for UpdateConfig {
    /// An older spec's rollouts become health-gated with the defaults (5 s of monitoring, pause
    /// at the first failure), as a new spec's are: a bad update no longer reaches every
    /// replica.
    fn from(v1: UpdateConfigV1) -> Self {
        UpdateConfig {
            parallelism: v1.parallelism,
            delay_ms: v1.delay_ms,
            ..UpdateConfig::default()
        }
    }
}

/// [`ServiceSpec`] as spec format 2 wrote it: [`UpdateConfigV1`]. Every field in its old
/// place; `Serialize` only so that tests can write the old layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of ServiceSpec, in its format-2 order"
)]
pub struct ServiceSpecV2 {
    pub name: ServiceName,
    pub workload: Workload,
    pub mode: ServiceMode,
    pub placement: Placement,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub health: Option<HealthCheck>,
    pub restart: RestartPolicy,
    pub on_disconnect: OnDisconnect,
    pub secrets: Vec<SecretRef>,
    pub volumes: Vec<VolumeMount>,
    pub resources: Resources,
    pub user: Option<String>,
    pub group: Option<String>,
    pub cap_add: Vec<String>,
    pub update: UpdateConfigV1,
    pub stop_grace_period_ms: u64,
    pub labels: BTreeMap<String, String>,
}

impl From<ServiceSpecV2> for ServiceSpec {
    /// Everything as it was; the update config as [`UpdateConfig::from`] says. The workload
    /// hash does not cover `update`: it is unchanged, and an upgrade restarts nothing.
    fn from(v2: ServiceSpecV2) -> Self {
        ServiceSpec {
            name: v2.name,
            workload: v2.workload,
            mode: v2.mode,
            placement: v2.placement,
            env: v2.env,
            ports: v2.ports,
            health: v2.health,
            restart: v2.restart,
            on_disconnect: v2.on_disconnect,
            secrets: v2.secrets,
            volumes: v2.volumes,
            resources: v2.resources,
            user: v2.user,
            group: v2.group,
            cap_add: v2.cap_add,
            update: v2.update.into(),
            stop_grace_period_ms: v2.stop_grace_period_ms,
            labels: v2.labels,
            metrics: None,
        }
    }
}

/// [`ServiceSpec`] as spec format 3 wrote it: before `metrics`. Every field in its old place;
/// `Serialize` only so that tests can write the old layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of ServiceSpec, in its format-3 order"
)]
pub struct ServiceSpecV3 {
    pub name: ServiceName,
    pub workload: Workload,
    pub mode: ServiceMode,
    pub placement: Placement,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortSpec>,
    pub health: Option<HealthCheck>,
    pub restart: RestartPolicy,
    pub on_disconnect: OnDisconnect,
    pub secrets: Vec<SecretRef>,
    pub volumes: Vec<VolumeMount>,
    pub resources: Resources,
    pub user: Option<String>,
    pub group: Option<String>,
    pub cap_add: Vec<String>,
    pub update: UpdateConfig,
    pub stop_grace_period_ms: u64,
    pub labels: BTreeMap<String, String>,
}

impl From<ServiceSpecV3> for ServiceSpec {
    /// Everything as it was, no metrics endpoint declared. The workload hash does not cover
    /// `metrics`: an upgrade restarts nothing.
    fn from(v3: ServiceSpecV3) -> Self {
        ServiceSpec {
            name: v3.name,
            workload: v3.workload,
            mode: v3.mode,
            placement: v3.placement,
            env: v3.env,
            ports: v3.ports,
            health: v3.health,
            restart: v3.restart,
            on_disconnect: v3.on_disconnect,
            secrets: v3.secrets,
            volumes: v3.volumes,
            resources: v3.resources,
            user: v3.user,
            group: v3.group,
            cap_add: v3.cap_add,
            update: v3.update,
            stop_grace_period_ms: v3.stop_grace_period_ms,
            labels: v3.labels,
            metrics: None,
        }
    }
}

/// [`NodeView`] as an agent cached it in spec format 1.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[allow(missing_docs, reason = "the fields of NodeView, in its format-1 order")]
pub struct NodeViewV1 {
    pub revision: Revision,
    pub cluster_id: [u8; 32],
    pub node: Node,
    pub services: BTreeMap<ServiceName, Service<ServiceSpecV1>>,
    pub replicas: Vec<Replica>,
    pub secrets: BTreeMap<String, SealedBlob>,
    pub catalogue: Vec<ServiceEndpoint>,
    pub control_addrs: Vec<String>,
    pub peers: Vec<PeerInfoV1>,
}

impl From<NodeViewV1> for NodeView {
    /// Specs upgraded as [`ServiceSpec::from`] says; everything else as [`NodeViewV2`] reads.
    fn from(v1: NodeViewV1) -> Self {
        NodeViewV2 {
            revision: v1.revision,
            cluster_id: v1.cluster_id,
            node: v1.node,
            services: v1
                .services
                .into_iter()
                .map(|(name, service)| (name, service.map_spec(ServiceSpecV2::from)))
                .collect(),
            replicas: v1.replicas,
            secrets: v1.secrets,
            catalogue: v1.catalogue,
            control_addrs: v1.control_addrs,
            peers: v1.peers,
        }
        .into()
    }
}

/// [`PeerInfo`] before the WireGuard overlay: no next key, no WireGuard endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(missing_docs, reason = "the fields of PeerInfo, in their older order")]
pub struct PeerInfoV1 {
    pub node_id: NodeId,
    pub name: String,
    pub site: String,
    pub overlay_ip: Option<String>,
    pub wg_public_key: Option<[u8; 32]>,
    pub endpoints: Vec<String>,
}

impl From<PeerInfoV1> for PeerInfo {
    /// No control node ever filled a key or an overlay address in this layout; they read as
    /// not registered yet.
    fn from(v1: PeerInfoV1) -> Self {
        PeerInfo {
            node_id: v1.node_id,
            name: v1.name,
            site: v1.site,
            overlay_ip: v1.overlay_ip,
            wg_public_key: v1.wg_public_key,
            endpoints: v1.endpoints,
            wg_next_public_key: None,
            wg_endpoint: None,
        }
    }
}

/// [`NodeView`] as an agent cached it in cache format 2: spec format 2, [`PeerInfoV1`] peers,
/// no mesh settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of NodeView, in their cache-format-2 order"
)]
pub struct NodeViewV2 {
    pub revision: Revision,
    pub cluster_id: [u8; 32],
    pub node: Node,
    pub services: BTreeMap<ServiceName, Service<ServiceSpecV2>>,
    pub replicas: Vec<Replica>,
    pub secrets: BTreeMap<String, SealedBlob>,
    pub catalogue: Vec<ServiceEndpoint>,
    pub control_addrs: Vec<String>,
    pub peers: Vec<PeerInfoV1>,
}

impl From<NodeViewV2> for NodeView {
    /// Peers upgraded as [`PeerInfo::from`] says; no mesh settings until control sends them.
    fn from(v2: NodeViewV2) -> Self {
        NodeView {
            revision: v2.revision,
            cluster_id: v2.cluster_id,
            node: v2.node,
            services: upgrade_services(v2.services),
            replicas: v2.replicas,
            secrets: v2.secrets,
            catalogue: v2.catalogue,
            control_addrs: v2.control_addrs,
            peers: v2.peers.into_iter().map(PeerInfo::from).collect(),
            mesh: None,
            scrape: ScrapeTargets::default(),
        }
    }
}

/// [`NodeView`] as an agent cached it in cache format 3: spec format 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of NodeView, in their cache-format-3 order"
)]
pub struct NodeViewV3 {
    pub revision: Revision,
    pub cluster_id: [u8; 32],
    pub node: Node,
    pub services: BTreeMap<ServiceName, Service<ServiceSpecV2>>,
    pub replicas: Vec<Replica>,
    pub secrets: BTreeMap<String, SealedBlob>,
    pub catalogue: Vec<ServiceEndpoint>,
    pub control_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub mesh: Option<OwnMesh>,
}

impl From<NodeViewV3> for NodeView {
    /// Specs upgraded as [`ServiceSpec::from`] says; everything else as it was.
    fn from(v3: NodeViewV3) -> Self {
        NodeView {
            revision: v3.revision,
            cluster_id: v3.cluster_id,
            node: v3.node,
            services: upgrade_services(v3.services),
            replicas: v3.replicas,
            secrets: v3.secrets,
            catalogue: v3.catalogue,
            control_addrs: v3.control_addrs,
            peers: v3.peers,
            mesh: v3.mesh,
            scrape: ScrapeTargets::default(),
        }
    }
}

/// [`NodeView`] as an agent cached it in cache format 4: spec format 3, no site metrics
/// endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields of NodeView, in their cache-format-4 order"
)]
pub struct NodeViewV4 {
    pub revision: Revision,
    pub cluster_id: [u8; 32],
    pub node: Node,
    pub services: BTreeMap<ServiceName, Service<ServiceSpecV3>>,
    pub replicas: Vec<Replica>,
    pub secrets: BTreeMap<String, SealedBlob>,
    pub catalogue: Vec<ServiceEndpoint>,
    pub control_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
    pub mesh: Option<OwnMesh>,
}

impl From<NodeViewV4> for NodeView {
    /// Specs upgraded as [`ServiceSpec::from`] says; no site metrics endpoints until control
    /// sends them.
    fn from(v4: NodeViewV4) -> Self {
        NodeView {
            revision: v4.revision,
            cluster_id: v4.cluster_id,
            node: v4.node,
            services: upgrade_services(v4.services),
            replicas: v4.replicas,
            secrets: v4.secrets,
            catalogue: v4.catalogue,
            control_addrs: v4.control_addrs,
            peers: v4.peers,
            mesh: v4.mesh,
            scrape: ScrapeTargets::default(),
        }
    }
}

fn upgrade_services<S: Into<ServiceSpec>>(
    services: BTreeMap<ServiceName, Service<S>>,
) -> BTreeMap<ServiceName, Service> {
    services
        .into_iter()
        .map(|(name, service)| (name, service.map_spec(Into::into)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ProcessSpec;

    /// A spec with most fields set, as the golden bytes below hold it.
    pub(crate) fn sample_spec() -> ServiceSpec {
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()],
                working_dir: Some("data".into()),
            }),
        );
        spec.mode = ServiceMode::Replicated { replicas: 2 };
        spec.env.insert("MODE".into(), "edge".into());
        spec.ports = vec!["http:8080".parse().unwrap()];
        spec.secrets = vec![SecretRef::new("db")];
        spec.labels.insert("team".into(), "a".into());
        spec
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `sample_spec()` encoded by the build before `user`, `group` and `cap_add` (spec
    /// format 1), and its workload hash then.
    const SPEC_V1: &str = "037765620003027368022d63076563686f2068690104646174610002000001044d4f44\
        45046564676501010468747470903f000000e807e0d4030000010264620264620000000100904e0104746561\
        6d0161";
    const SPEC_V1_HASH: u64 = 0xd852_ad39_3787_4142;

    #[test]
    fn a_format_1_spec_runs_as_root_with_every_capability_and_keeps_its_hash() {
        let v1: ServiceSpecV1 = postcard::from_bytes(&unhex(SPEC_V1)).unwrap();
        let spec = ServiceSpec::from(v1.clone());
        let mut expected = sample_spec();
        expected.user = Some("root".into());
        expected.cap_add = vec!["ALL".into()];
        assert_eq!(spec, expected);
        assert!(spec.runs_as_root_with_every_capability());
        assert_eq!(
            spec.workload_hash(),
            SPEC_V1_HASH,
            "an upgrade restarts nothing"
        );
        // The old layout type writes the old bytes: it is the old layout.
        assert_eq!(postcard::to_allocvec(&v1).unwrap(), unhex(SPEC_V1));
        // The new layout does not read them.
        assert!(
            postcard::from_bytes::<ServiceSpec>(&unhex(SPEC_V1)).map_or(true, |read| read != spec)
        );
    }

    /// `sample_spec()` running as `www-data`, updated two at a time with 5 s between batches,
    /// encoded by the build before health-gated rollouts (spec format 2), and its workload hash
    /// then.
    const SPEC_V2: &str = "037765620003027368022d63076563686f2068690104646174610002000001044d4f44\
        45046564676501010468747470903f000000e807e0d40300000102646202646200000001087777772d646174\
        610000028827904e01047465616d0161";
    const SPEC_V2_HASH: u64 = 0x202c_6d8a_30d6_b2d5;

    #[test]
    fn a_format_2_spec_gets_the_default_gating_and_keeps_its_hash() {
        let v2: ServiceSpecV2 = postcard::from_bytes(&unhex(SPEC_V2)).unwrap();
        let spec = ServiceSpec::from(v2.clone());
        let mut expected = sample_spec();
        expected.user = Some("www-data".into());
        expected.update = UpdateConfig {
            parallelism: 2,
            delay_ms: 5_000,
            ..UpdateConfig::default()
        };
        assert_eq!(spec, expected);
        assert_eq!(spec.update.monitor_ms, 5_000);
        assert_eq!(spec.update.failure_action, crate::FailureAction::Pause);
        assert_eq!(
            spec.workload_hash(),
            SPEC_V2_HASH,
            "an upgrade restarts nothing"
        );
        assert_eq!(postcard::to_allocvec(&v2).unwrap(), unhex(SPEC_V2));
        assert!(
            postcard::from_bytes::<ServiceSpec>(&unhex(SPEC_V2)).map_or(true, |read| read != spec)
        );
    }

    /// `sample_spec()` running as `www-data`, updated two at a time 5 s apart with 7 s of
    /// monitoring, encoded by the build before metrics endpoints (spec format 3).
    const SPEC_V3: &str = "037765620003027368022d63076563686f2068690104646174610002000001044d4f44\
        45046564676501010468747470903f000000e807e0d40300000102646202646200000001087777772d646174\
        610000028827d8360000904e01047465616d0161";

    #[test]
    fn a_format_3_spec_reads_without_a_metrics_endpoint_and_keeps_its_hash() {
        let v3: ServiceSpecV3 = postcard::from_bytes(&unhex(SPEC_V3)).unwrap();
        let spec = ServiceSpec::from(v3.clone());
        let mut expected = sample_spec();
        expected.user = Some("www-data".into());
        expected.update = UpdateConfig {
            parallelism: 2,
            delay_ms: 5_000,
            monitor_ms: 7_000,
            ..UpdateConfig::default()
        };
        assert_eq!(spec, expected);
        assert_eq!(spec.metrics, None);
        assert_eq!(
            spec.workload_hash(),
            SPEC_V2_HASH,
            "an upgrade restarts nothing"
        );
        assert_eq!(postcard::to_allocvec(&v3).unwrap(), unhex(SPEC_V3));
        assert!(
            postcard::from_bytes::<ServiceSpec>(&unhex(SPEC_V3)).map_or(true, |read| read != spec)
        );
        // Declaring an endpoint restarts nothing either.
        let mut with_metrics = spec.clone();
        with_metrics.metrics = Some(crate::MetricsEndpoint {
            port: 9100,
            path: "/metrics".into(),
        });
        assert_eq!(with_metrics.workload_hash(), spec.workload_hash());
    }
}
