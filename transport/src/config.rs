//! Transport tuning. Defaults are sized for lossy, NATed, slow WAN links to edge boxes.

use std::time::Duration;

/// Timers and bounds of a Warren QUIC endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Keep-alive PING interval: well under common NAT UDP binding timeouts (30 s).
    pub keep_alive_interval: Duration,
    /// A connection with no traffic (keep-alives included) for this long is dead. Several
    /// keep-alive intervals, so a few lost PINGs on a lossy link do not kill it.
    pub idle_timeout: Duration,
    /// Upper bound on dialling a peer and completing the TLS handshake.
    pub connect_timeout: Duration,
    /// Largest frame accepted or sent; larger ones are refused before allocation.
    pub max_frame_bytes: usize,
    /// Once a frame has started, the rest must arrive within this time, or the peer is
    /// considered stalled.
    pub frame_timeout: Duration,
    /// Upper bound on a whole request/response exchange.
    pub request_timeout: Duration,
    /// Initial RTT estimate before measurements: pessimistic for satellite/LTE backhaul.
    pub initial_rtt: Duration,
    /// Maximum concurrent bidirectional streams a peer may open.
    pub max_concurrent_bidi_streams: u32,
    /// A join connection (no certificate) is closed this long after it arrived, answered or
    /// not: an honest join takes a round trip and one Raft write.
    pub join_deadline: Duration,
    /// Most join connections a server holds at once; past it, new ones are refused at once.
    pub join_connections_max: usize,
    /// Most join connections from one source address (IPv6: one /64) at once.
    pub join_connections_per_source_max: usize,
    /// Join refusals per source address per minute before that source's joins are refused as
    /// rate-limited without their token being checked.
    pub join_refusals_per_source_per_minute: u32,
    /// How long past its expiry a node certificate still gets a new one over `warren-renew`
    /// (a node cut off for longer joins again). Default 365 days.
    pub renew_grace: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_frame_bytes: warren_api::wire::MAX_MESSAGE_BYTES,
            frame_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            initial_rtt: Duration::from_millis(300),
            max_concurrent_bidi_streams: 256,
            join_deadline: Duration::from_secs(10),
            join_connections_max: 256,
            join_connections_per_source_max: 32,
            join_refusals_per_source_per_minute: 10,
            renew_grace: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// A configuration whose values contradict each other.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid transport config: {0}")]
pub struct ConfigError(pub &'static str);

impl TransportConfig {
    /// Checks the relations between the values.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first relation that does not hold.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keep_alive_interval.is_zero() {
            return Err(ConfigError("keep_alive_interval must be positive"));
        }
        if self.idle_timeout < self.keep_alive_interval * 2 {
            return Err(ConfigError(
                "idle_timeout must be at least twice keep_alive_interval",
            ));
        }
        if self.max_frame_bytes == 0 || self.max_frame_bytes > u32::MAX as usize {
            return Err(ConfigError("max_frame_bytes must be between 1 and 4 GiB"));
        }
        if self.frame_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(ConfigError(
                "frame_timeout and request_timeout must be positive",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError("connect_timeout must be positive"));
        }
        if self.max_concurrent_bidi_streams == 0 {
            return Err(ConfigError("max_concurrent_bidi_streams must be positive"));
        }
        if self.join_deadline.is_zero() {
            return Err(ConfigError("join_deadline must be positive"));
        }
        if self.join_connections_per_source_max == 0
            || self.join_connections_max < self.join_connections_per_source_max
        {
            return Err(ConfigError(
                "join_connections_per_source_max must be positive and at most join_connections_max",
            ));
        }
        if self.join_refusals_per_source_per_minute == 0 {
            return Err(ConfigError(
                "join_refusals_per_source_per_minute must be positive",
            ));
        }
        Ok(())
    }

    pub(crate) fn quinn_transport(&self) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(self.keep_alive_interval));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(self.idle_timeout)
                .expect("validated idle timeout fits a QUIC varint"),
        ));
        transport.initial_rtt(self.initial_rtt);
        transport.max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into());
        transport.max_concurrent_uni_streams(self.max_concurrent_bidi_streams.into());
        transport
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_relations_are_checked() {
        TransportConfig::default().validate().unwrap();
        let bad = TransportConfig {
            idle_timeout: Duration::from_secs(6),
            ..TransportConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = TransportConfig {
            max_frame_bytes: 0,
            ..TransportConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
