//! Scenario files: a fleet, setup commands and a sequence of steps, in YAML.
//!
//! ```yaml
//! name: site-partition
//! about: A whole site is cut off from the centre; its workloads keep running.
//! fleet: {control: 1, sites: {a: 1, b: 2}}
//! converge_within_s: 40
//! steps:
//!   - cli: service create web --command "sleep 100000" --replicas 3
//!   - converge: {}
//!   - fault: {cut_site: {site: b}}
//!   - wait: 20
//!   - cli: service scale web 4
//!   - heal_all: {}
//!   - converge: {}
//! ```
//!
//! Parsing is pure and checks everything that can be checked without a fleet: node and site
//! names, that heals name a fault applied earlier, that numbers are in range. What the steps
//! do is [`crate::runner`]'s business; what is checked afterwards is [`crate::check`]'s.
//!
//! - `validate`: the checks a scenario passes when it is parsed.
//! - `write`: [`Write`], which CLI commands are writes and what each changes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::fault::Fault;
use crate::fleet::{AgentRuntime, CONTROL_SITE, FleetSpec, SiteSpec};

mod validate;
mod write;

pub use write::Write;

/// Largest scenario file read.
const MAX_SCENARIO_BYTES: u64 = 256 * 1024;

/// Default bound on convergence after a heal.
pub const DEFAULT_CONVERGE_WITHIN_S: f64 = 60.0;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (the report's title).
    pub name: String,
    /// What it rehearses, for people.
    #[serde(default)]
    pub about: String,
    pub fleet: FleetShape,
    /// How long a `converge` step may take unless it says otherwise, in seconds.
    #[serde(default = "default_converge")]
    pub converge_within_s: f64,
    pub steps: Vec<Step>,
}

fn default_converge() -> f64 {
    DEFAULT_CONVERGE_WITHIN_S
}

/// Control nodes and sites with their agent counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetShape {
    #[serde(default = "one")]
    pub control: usize,
    /// Site name → number of agents.
    pub sites: BTreeMap<String, usize>,
    /// What runs every agent's workloads: `process` (the default) or `containerd` (each
    /// agent gets a containerd of its own, loaded with the run's `--image-tar` files).
    #[serde(default)]
    pub runtime: AgentRuntime,
}

fn one() -> usize {
    1
}

impl FleetShape {
    /// The harness's fleet spec.
    pub fn spec(&self) -> FleetSpec {
        FleetSpec {
            control: self.control,
            sites: self
                .sites
                .iter()
                .map(|(name, agents)| SiteSpec {
                    name: name.clone(),
                    agents: *agents,
                })
                .collect(),
            runtime: self.runtime,
        }
    }

    /// Every node name this fleet will have, with its site.
    pub fn node_names(&self) -> Vec<(String, String)> {
        let mut names: Vec<(String, String)> = (1..=self.control)
            .map(|i| (format!("c{i}"), CONTROL_SITE.to_owned()))
            .collect();
        for (site, agents) in &self.sites {
            names.extend((1..=*agents).map(|i| (format!("{site}-{i}"), site.clone())));
        }
        names
    }
}

/// One step. Written as a one-key map: `- wait: 5`, `- fault: {isolate: {node: a-1}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Apply a fault; it stays until a `heal` or `heal_all`.
    Fault(Fault),
    /// Heal one fault applied earlier (written exactly as it was applied).
    Heal(Fault),
    /// Heal every fault still in place, the latest first.
    HealAll {},
    /// Sleep this many seconds (the fleet keeps running; the observer keeps watching).
    Wait(f64),
    /// A `warren` command from the operator's seat.
    Cli(CliStep),
    /// SIGKILL one workload process of `service` on `node` (its restart policy brings it back).
    KillWorkload { node: String, service: String },
    /// Power-cycle an agent: SIGKILL its `warren` and every workload in its namespace, then
    /// start the agent again from its data dir. Faults in place stay in place.
    Reboot { node: String },
    /// SIGKILL a node's `warren` and start it again right away.
    Restart { node: String },
    /// SIGKILL whichever control node leads now; healed (restarted) by `heal_all`.
    KillLeader {},
    /// Apply and heal `fault` `times` times: `down_s` applied, `up_s` healed.
    Flap {
        fault: Fault,
        times: u32,
        down_s: f64,
        up_s: f64,
    },
    /// Wait until the fleet runs exactly what control wants (see [`crate::runner`]); fails
    /// the `converges` invariant when it takes longer than `within_s`.
    Converge {
        #[serde(default)]
        within_s: Option<f64>,
    },
    /// Run `steps` `times` times.
    Repeat { times: u32, steps: Vec<Step> },
    /// Ask the DNS server of agent `node` (inside its namespace, `dig @127.0.0.11`) for the A
    /// records of `name`; checked as an operator expectation: at least `min` and at most
    /// `max` addresses (`max: 0` for "no answer"). With `within_s`, asked again until the
    /// answer holds or that long has passed (an answer that must come back after a heal,
    /// once gossip hears the other side again); without, asked once.
    Dns {
        node: String,
        name: String,
        #[serde(default)]
        min: Option<usize>,
        #[serde(default)]
        max: Option<usize>,
        #[serde(default)]
        within_s: Option<f64>,
    },
    /// Every agent whose `warren` runs pings every other such agent's WireGuard overlay
    /// address from inside its namespace (addresses from `node ls`, learned at the first such
    /// step, so later ones work with the control plane down). With `within_s`, pairs that do
    /// not answer are tried again until they do or that long has passed. With `nodes`, only
    /// pairs among those agents (a site cut off from the rest keeps its own tunnels). Checked
    /// by the `overlay_connectivity` invariant.
    Overlay {
        #[serde(default)]
        nodes: Vec<String>,
        #[serde(default)]
        within_s: Option<f64>,
    },
}

/// A CLI step: `- cli: service scale web 3` or the long form with expectations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CliStep {
    Short(String),
    Long(CliSpec),
}

/// A CLI step with its expectations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliSpec {
    /// The command after `warren --config …`, shell-quoted.
    pub run: String,
    /// Send it to this control node only (default: every control node's API, in order).
    #[serde(default)]
    pub api: Option<String>,
    /// Whether it must succeed (default) or fail.
    #[serde(default)]
    pub expect: Expect,
    /// A failure must come within this many seconds (fail fast, e.g. "no quorum").
    #[serde(default)]
    pub fail_within_s: Option<f64>,
    /// A failure's message must contain this.
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Retry a failing command for up to this long (e.g. a write during an election, or a
    /// read until its output shows what `output_contains` wants).
    #[serde(default)]
    pub retry_for_s: Option<f64>,
    /// A success must print this (e.g. a read on a node that had to catch up).
    #[serde(default)]
    pub output_contains: Option<String>,
}

/// What a CLI step must do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    #[default]
    Ok,
    Fail,
}

impl CliStep {
    /// The long form of either.
    pub fn spec(&self) -> CliSpec {
        match self {
            CliStep::Short(run) => CliSpec {
                run: run.clone(),
                api: None,
                expect: Expect::Ok,
                fail_within_s: None,
                error_contains: None,
                retry_for_s: None,
                output_contains: None,
            },
            CliStep::Long(spec) => spec.clone(),
        }
    }
}

impl CliSpec {
    /// The command's words; `{round}` becomes the round number inside a `repeat` (1 outside).
    ///
    /// # Errors
    /// Unbalanced quotes, or an empty command.
    pub fn words(&self, round: u32) -> Result<Vec<String>> {
        let words = shell_words::split(&self.run.replace("{round}", &round.to_string()))
            .map_err(|e| anyhow!("cli {:?}: {e}", self.run))?;
        if words.is_empty() {
            bail!("cli: empty command");
        }
        if words.iter().any(|w| w == "--config" || w == "--api") {
            bail!(
                "cli {:?}: the harness chooses --config and --api (use `api:` for one control node)",
                self.run
            );
        }
        Ok(words)
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    ///
    /// # Errors
    /// Unreadable, too large, not YAML of this shape, or inconsistent (names the problem).
    pub fn load(path: &Path) -> Result<Scenario> {
        let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
        if meta.len() > MAX_SCENARIO_BYTES {
            bail!(
                "{}: {} bytes, larger than any scenario ({MAX_SCENARIO_BYTES})",
                path.display(),
                meta.len()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks scenario text.
    ///
    /// # Errors
    /// As [`Scenario::load`].
    pub fn parse(text: &str) -> Result<Scenario> {
        // Through a JSON value: serde_norway wants `!tags` for enums, and a one-key map
        // (`- wait: 5`) reads better in a scenario.
        let value: serde_json::Value = serde_norway::from_str(text)?;
        let scenario: Scenario = serde_json::from_value(value)?;
        scenario.validate()?;
        Ok(scenario)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE_PARTITION: &str = r#"
name: site-partition
fleet: {control: 1, sites: {a: 1, b: 2}}
converge_within_s: 30
steps:
  - cli: service create web --command "sleep 100000" --replicas 3
  - converge: {}
  - fault: {cut_site: {site: b}}
  - wait: 2.5
  - cli: {run: service scale web 4, retry_for_s: 10}
  - kill_workload: {node: b-1, service: web}
  - heal: {cut_site: {site: b}}
  - converge: {within_s: 20}
  - repeat:
      times: 2
      steps:
        - kill_leader: {}
        - heal_all: {}
"#;

    #[test]
    fn a_scenario_parses() {
        let scenario = Scenario::parse(SITE_PARTITION).expect("valid");
        assert_eq!(scenario.name, "site-partition");
        assert_eq!(scenario.fleet.spec().sites.len(), 2);
        assert_eq!(scenario.steps.len(), 9);
        assert_eq!(
            scenario.steps[2],
            Step::Fault(Fault::CutSite { site: "b".into() })
        );
        assert_eq!(scenario.steps[3], Step::Wait(2.5));
        let Step::Cli(cli) = &scenario.steps[4] else {
            panic!("cli step expected")
        };
        assert_eq!(cli.spec().retry_for_s, Some(10.0));
        assert_eq!(
            scenario.fleet.node_names()[1],
            ("a-1".to_owned(), "a".to_owned())
        );
    }

    #[test]
    fn inconsistent_scenarios_are_refused_with_the_reason() {
        let refused = |text: &str, needle: &str| {
            let error = format!("{:#}", Scenario::parse(text).expect_err(text));
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        };
        let head = "name: x\nfleet: {control: 1, sites: {a: 1}}\nsteps:\n";
        refused(
            &format!("{head}  - heal: {{isolate: {{node: a-1}}}}\n"),
            "no such fault is in place",
        );
        refused(
            &format!("{head}  - fault: {{isolate: {{node: z-9}}}}\n"),
            "no node or site z-9",
        );
        refused(
            &format!(
                "{head}  - fault: {{isolate: {{node: a-1}}}}\n  - fault: {{isolate: {{node: a-1}}}}\n"
            ),
            "already in place",
        );
        refused(
            &format!("{head}  - kill_workload: {{node: c1, service: web}}\n"),
            "control node",
        );
        refused(&format!("{head}  - wait: -1\n"), "between 0 and 3600");
        refused(&format!("{head}  - sleep: 1\n"), "unknown variant");
        refused(&format!("{head}  - cli: \"service ls --api x\"\n"), "--api");
        refused(&format!("{head}  - cli: \"a 'b\"\n"), "cli");
        refused(
            &format!(
                "{head}  - repeat: {{times: 2, steps: [{{fault: {{isolate: {{node: a-1}}}}}}]}}\n"
            ),
            "must heal",
        );
        refused(
            "name: x\nfleet: {control: 0, sites: {a: 1}}\nsteps: []\n",
            "at least one control node",
        );
        refused(
            "name: x\nfleet: {control: 1, sites: {a: 1}}\nsteps: []\nextra: 1\n",
            "unknown field",
        );
    }

    /// Every scenario we ship parses and passes the checks (no root needed), and there are at
    /// least eight of them (issue 5's bar).
    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("chaos/scenarios") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let scenario =
                    Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(
                    !scenario.about.trim().is_empty(),
                    "{}: about",
                    path.display()
                );
                names.push(scenario.name);
            }
        }
        names.sort();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count, "scenario names are unique: {names:?}");
        assert!(count >= 8, "{count} scenarios: {names:?}");
    }
}
