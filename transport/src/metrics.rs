//! The transport's Prometheus metrics. Names follow `warren_transport_<noun>_<unit>`; label
//! values come from fixed sets (the `kind()` of each error type), so cardinality is bounded.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of one process's transport. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    /// Connections established, by side (`client`/`server`) and ALPN purpose.
    pub connections_total: IntCounterVec,
    /// Connections open now.
    pub connections_active: IntGauge,
    /// Handshakes or connection admissions refused, by side and reason.
    pub handshake_failures_total: IntCounterVec,
    /// Frames sent and received, by direction (`tx`/`rx`).
    pub frames_total: IntCounterVec,
    /// Payload bytes of frames, by direction.
    pub frame_bytes_total: IntCounterVec,
    /// Frames refused (too large, truncated, garbage, stalled), by reason.
    pub frames_rejected_total: IntCounterVec,
    /// Join requests answered by this node, by result (`granted`, the refusal kind,
    /// `rate_limited`, or `deadline` for a connection closed unanswered at its deadline).
    pub join_requests_total: IntCounterVec,
}

impl TransportMetrics {
    /// Creates the metrics without registering them anywhere.
    pub fn unregistered() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric names and labels are valid constants")
        };
        Self {
            connections_total: counter(
                "warren_transport_connections_total",
                "QUIC connections established, by side and ALPN purpose.",
                &["side", "alpn"],
            ),
            connections_active: IntGauge::new(
                "warren_transport_connections_active",
                "QUIC connections open now.",
            )
            .expect("metric name is a valid constant"),
            handshake_failures_total: counter(
                "warren_transport_handshake_failures_total",
                "Connections refused during or right after the TLS handshake, by side and reason.",
                &["side", "reason"],
            ),
            frames_total: counter(
                "warren_transport_frames_total",
                "Framed messages sent (tx) and received (rx).",
                &["direction"],
            ),
            frame_bytes_total: counter(
                "warren_transport_frame_bytes_total",
                "Payload bytes of framed messages sent (tx) and received (rx).",
                &["direction"],
            ),
            frames_rejected_total: counter(
                "warren_transport_frames_rejected_total",
                "Frames refused as too large, truncated, undecodable or stalled, by reason.",
                &["reason"],
            ),
            join_requests_total: counter(
                "warren_transport_join_requests_total",
                "Join requests answered, by result (granted or the refusal reason).",
                &["result"],
            ),
        }
    }

    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a metric of the same name is already registered there.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered();
        metrics.register_into(registry)?;
        Ok(metrics)
    }

    /// Registers these (already counting) metrics in `registry`, for a process that creates
    /// its endpoint before its registry.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a metric of the same name is already registered there.
    pub fn register_into(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.connections_total.clone()))?;
        registry.register(Box::new(self.connections_active.clone()))?;
        registry.register(Box::new(self.handshake_failures_total.clone()))?;
        registry.register(Box::new(self.frames_total.clone()))?;
        registry.register(Box::new(self.frame_bytes_total.clone()))?;
        registry.register(Box::new(self.frames_rejected_total.clone()))?;
        registry.register(Box::new(self.join_requests_total.clone()))?;
        Ok(())
    }

    /// The current value of `join_requests_total{result}`.
    pub fn join_requests(&self, result: &str) -> u64 {
        self.join_requests_total.with_label_values(&[result]).get()
    }

    /// The current value of `handshake_failures_total{side, reason}` (for tests and status).
    pub fn handshake_failures(&self, side: &str, reason: &str) -> u64 {
        self.handshake_failures_total
            .with_label_values(&[side, reason])
            .get()
    }

    /// The current value of `frames_rejected_total{reason}`.
    pub fn frames_rejected(&self, reason: &str) -> u64 {
        self.frames_rejected_total
            .with_label_values(&[reason])
            .get()
    }
}

impl Default for TransportMetrics {
    fn default() -> Self {
        Self::unregistered()
    }
}
