//! The shape of a fleet: how many control nodes, which sites with how many agents, checked
//! before anything is built.

use anyhow::{Result, anyhow, bail};

use super::CONTROL_SITE;
use crate::netns;

/// A site and how many agents it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub name: String,
    pub agents: usize,
}

/// What runs the agents' workloads.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentRuntime {
    /// Native processes (`warren agent join`'s default).
    #[default]
    Process,
    /// Containers, through a containerd of each agent's own (`--runtime containerd`).
    Containerd,
}

/// The shape of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    pub control: usize,
    pub sites: Vec<SiteSpec>,
    /// The same for every agent.
    pub runtime: AgentRuntime,
}

impl FleetSpec {
    /// Parses `a:1,b:2` (site name, agent count).
    ///
    /// # Errors
    /// Names the malformed part.
    pub fn parse_sites(text: &str) -> Result<Vec<SiteSpec>> {
        let mut sites: Vec<SiteSpec> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, count) = part
                .split_once(':')
                .ok_or_else(|| anyhow!("--sites {part:?}: expected SITE:AGENTS, e.g. a:2"))?;
            let agents = count
                .parse()
                .map_err(|_| anyhow!("--sites {part:?}: {count:?} is not a number"))?;
            if sites.iter().any(|s| s.name == name) {
                bail!("--sites: site {name} is listed twice");
            }
            sites.push(SiteSpec {
                name: name.to_owned(),
                agents,
            });
        }
        Ok(sites)
    }

    /// Checks names and counts.
    ///
    /// # Errors
    /// When there is no control node, a site name is not a DNS label or is the control site,
    /// or the fleet does not fit the subnet.
    pub fn validate(&self) -> Result<()> {
        if self.control == 0 {
            bail!("--control: at least one control node");
        }
        for site in &self.sites {
            warren_api::validate_site(&site.name)
                .map_err(|e| anyhow!("site {:?}: {}", site.name, e.message))?;
            if site.name == CONTROL_SITE {
                bail!("site {CONTROL_SITE} is the control nodes' site; pick another name");
            }
        }
        let total = self.control + self.sites.iter().map(|s| s.agents).sum::<usize>();
        if total > netns::MAX_HOSTS {
            bail!("{total} nodes: at most {} fit the subnet", netns::MAX_HOSTS);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_and_validate() {
        let sites = FleetSpec::parse_sites("a:1, b:2").expect("valid");
        assert_eq!(
            sites,
            [
                SiteSpec {
                    name: "a".into(),
                    agents: 1
                },
                SiteSpec {
                    name: "b".into(),
                    agents: 2
                }
            ]
        );
        assert!(
            FleetSpec::parse_sites("")
                .expect("empty is fine")
                .is_empty()
        );
        for bad in ["a", "a:x", "a:1,a:2"] {
            assert!(FleetSpec::parse_sites(bad).is_err(), "{bad:?}");
        }
        let spec = |control, name: &str| FleetSpec {
            control,
            sites: vec![SiteSpec {
                name: name.into(),
                agents: 1,
            }],
            runtime: AgentRuntime::Process,
        };
        assert!(spec(1, "a").validate().is_ok());
        assert!(spec(0, "a").validate().is_err());
        assert!(spec(1, CONTROL_SITE).validate().is_err());
        assert!(spec(1, "Not_A_Label").validate().is_err());
    }
}
