//! `WARREN_GOSSIP_TUNING`: overrides the gossip mesh's timers of `warren agent` and
//! `warren control`, so that one build can be measured with several settings
//! (`scripts/detect-scenario.py`, docs/mesh.md). For measurements only, not a supported
//! setting: every node of a cluster must run the same timers, and the defaults are the ones
//! measured and documented.
//!
//! The value is a comma-separated list of `name=value`: `peers_per_round`,
//! `gossip_interval_ms`, `phi_threshold`, `attest_interval_ms`, `attest_timeout_ms`. Unset or
//! empty: the defaults. Anything it cannot parse, or timers that contradict each other, stop the
//! command before it starts.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use warren_mesh::MeshTimers;

/// The environment variable.
pub(crate) const GOSSIP_TUNING: &str = "WARREN_GOSSIP_TUNING";

/// The mesh timers: the defaults, changed as `WARREN_GOSSIP_TUNING` says.
pub(crate) fn mesh_timers() -> Result<MeshTimers> {
    let text = std::env::var(GOSSIP_TUNING).unwrap_or_default();
    parse(&text).with_context(|| format!("{GOSSIP_TUNING}={text:?}"))
}

fn parse(text: &str) -> Result<MeshTimers> {
    let mut timers = MeshTimers::default();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("{item:?}: expected name=value"))?;
        let millis = || -> Result<Duration> {
            let ms: u64 = value
                .parse()
                .with_context(|| format!("{name}: {value:?} is not a number of milliseconds"))?;
            Ok(Duration::from_millis(ms))
        };
        match name {
            "peers_per_round" => {
                timers.peers_per_round = value
                    .parse()
                    .with_context(|| format!("{name}: {value:?} is not a count"))?;
            }
            "gossip_interval_ms" => timers.gossip_interval = millis()?,
            "phi_threshold" => {
                timers.phi_threshold = value
                    .parse()
                    .with_context(|| format!("{name}: {value:?} is not a number"))?;
            }
            "attest_interval_ms" => timers.attest_interval = millis()?,
            "attest_timeout_ms" => timers.attest_timeout = millis()?,
            _ => bail!("unknown timer {name:?}"),
        }
    }
    timers.validate()?;
    Ok(timers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_defaults() {
        assert_eq!(parse("").expect("empty"), MeshTimers::default());
        assert_eq!(parse(" , ").expect("blank items"), MeshTimers::default());
    }

    #[test]
    fn named_timers_are_set() {
        let timers = parse(
            "peers_per_round=2, gossip_interval_ms=1500,phi_threshold=6.5,\
             attest_interval_ms=10000,attest_timeout_ms=40000",
        )
        .expect("valid");
        assert_eq!(
            timers,
            MeshTimers {
                peers_per_round: 2,
                gossip_interval: Duration::from_millis(1_500),
                phi_threshold: 6.5,
                attest_interval: Duration::from_secs(10),
                attest_timeout: Duration::from_secs(40),
                ..MeshTimers::default()
            }
        );
    }

    #[test]
    fn garbage_and_contradictions_are_refused() {
        for text in [
            "peers_per_round",
            "peers_per_round=x",
            "peers_per_round=4",
            "gossip_interval_ms=-1",
            "fanout=2",
            // The timeout must cover three signatures.
            "attest_interval_ms=10000",
        ] {
            assert!(parse(text).is_err(), "{text:?} accepted");
        }
    }
}
