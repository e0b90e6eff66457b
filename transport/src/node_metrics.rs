//! What every Warren process (control node or agent) exports about itself: the registry whose
//! constant labels name the node (`node` = name, `node_id` = 16 hex digits, `site`), the build
//! (`warren_build_info`), the process (`process_*`), and its certificates' expiry.
//!
//! The labels are the registry's, so every series registered into it — the crate's own, the
//! transport's, mesh, DNS and overlay metrics — carries them, and a central Prometheus tells
//! nodes and sites apart without relabelling.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts, Registry};
use warren_api::NodeId;
use warren_api::build_info;

use crate::current::CurrentCredentials;

/// Who a process's metrics are about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLabels {
    /// The node's name (`node` label).
    pub name: String,
    /// The node's id (`node_id` label, as [`NodeId`] displays: 16 hex digits).
    pub node_id: NodeId,
    /// The node's site (`site` label).
    pub site: String,
}

impl NodeLabels {
    /// A fresh registry whose every series carries `node`, `node_id` and `site`, holding
    /// `warren_build_info` and the standard process metrics already.
    pub fn registry(&self) -> Registry {
        let labels: HashMap<String, String> = [
            ("node".to_owned(), self.name.clone()),
            ("node_id".to_owned(), self.node_id.to_string()),
            ("site".to_owned(), self.site.clone()),
        ]
        .into();
        let registry = Registry::new_custom(None, Some(labels)).expect("constant labels are valid");
        registry
            .register(Box::new(build_info_gauge()))
            .expect("warren_build_info is registered once");
        register_process_metrics(&registry);
        registry
    }
}

/// `warren_build_info{version, commit, arch, target, built} 1`.
fn build_info_gauge() -> IntGauge {
    let build = build_info::get();
    let opts = Opts::new(
        "warren_build_info",
        "Always 1; the labels say which build this process runs.",
    )
    .const_label("version", build.version)
    .const_label("commit", build.commit)
    .const_label("arch", build_info::ARCH)
    .const_label("target", build.target)
    .const_label("built", build.built);
    let gauge = IntGauge::with_opts(opts).expect("valid metric");
    gauge.set(1);
    gauge
}

/// The prometheus crate's own process collector (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, …), read from `/proc/self` at each
/// scrape. It exists on Linux only; elsewhere there are no process series.
fn register_process_metrics(registry: &Registry) {
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics are registered once");
    #[cfg(not(target_os = "linux"))]
    let _ = registry;
}

/// The not-after of this node's certificate and, on control nodes, of the cluster CA's, read
/// from the credentials presented now at each scrape: a renewal shows at the next one.
#[derive(Clone, Debug)]
pub struct CertExpiry {
    credentials: CurrentCredentials,
    cert: IntGauge,
    ca: Option<IntGauge>,
}

impl CertExpiry {
    /// `warren_cert_expiry_timestamp_seconds`, and `warren_ca_expiry_timestamp_seconds` when
    /// `with_ca` (control nodes: the CA's expiry is the cluster's).
    pub fn new(credentials: CurrentCredentials, with_ca: bool) -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        CertExpiry {
            credentials,
            cert: gauge(
                "warren_cert_expiry_timestamp_seconds",
                "When this node's certificate expires, unix seconds (it renews itself once a third of its life is left).",
            ),
            ca: with_ca.then(|| {
                gauge(
                    "warren_ca_expiry_timestamp_seconds",
                    "When the cluster CA certificate expires, unix seconds.",
                )
            }),
        }
    }

    /// Registers the gauges in `registry`.
    ///
    /// # Errors
    /// They are registered there already.
    pub fn register_into(self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self))
    }
}

impl Collector for CertExpiry {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.cert.desc();
        if let Some(ca) = &self.ca {
            descs.extend(ca.desc());
        }
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let creds = self.credentials.get();
        self.cert.set(creds.identity().not_after_unix);
        let mut families = self.cert.collect();
        if let Some(ca) = &self.ca {
            // A CA certificate that does not parse cannot be in use: the endpoint checked it
            // when it loaded the credentials. Leave the series out rather than report 0.
            if let Some(not_after) = not_after_unix(creds.ca_cert_der()) {
                ca.set(not_after);
                families.extend(ca.collect());
            }
        }
        families
    }
}

/// The certificate's not-after, unix seconds; `None` if it does not parse.
fn not_after_unix(cert_der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert_der)
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::{Encoder, TextEncoder};

    use super::*;
    use crate::ca::{CertSubject, ClusterCa, Validity};

    fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn node_series_carry_name_id_and_site() {
        let labels = NodeLabels {
            name: "edge-a".into(),
            node_id: NodeId(0xab),
            site: "lisbon".into(),
        };
        let registry = labels.registry();
        let ca = ClusterCa::generate(
            "test",
            Validity::starting_at(1_000, Duration::from_secs(10_000)),
        )
        .expect("CA");
        let creds = ca
            .issue_credentials(
                &CertSubject::Node {
                    role: crate::identity::CertRole::Control,
                    node_id: NodeId(0xab),
                },
                Validity::starting_at(1_000, Duration::from_secs(500)),
            )
            .expect("credentials");
        let current = CurrentCredentials::new(&creds).expect("usable key");
        CertExpiry::new(current, true)
            .register_into(&registry)
            .expect("registered once");
        let text = render(&registry);
        let labels = [
            "node=\"edge-a\"".to_owned(),
            format!("node_id=\"{}\"", NodeId(0xab)),
            "site=\"lisbon\"".to_owned(),
        ];
        let has = |prefix: &str, value: &str| {
            text.lines().any(|l| {
                l.starts_with(prefix)
                    && labels.iter().all(|label| l.contains(label.as_str()))
                    && l.ends_with(value)
            })
        };
        assert!(has("warren_build_info{arch=", " 1"), "{text}");
        assert!(
            text.contains(&format!("commit=\"{}\"", build_info::get().commit)),
            "{text}"
        );
        assert!(
            has("warren_cert_expiry_timestamp_seconds{", " 1500"),
            "{text}"
        );
        assert!(
            has("warren_ca_expiry_timestamp_seconds{", " 11000"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(has(&format!("{name}{{"), ""), "{name} missing: {text}");
        }
    }
}
