//! The checks a scenario passes before any fleet starts: node and site names exist, a heal
//! names a fault in place, numbers are in range, a `repeat` round heals what it applies.

use anyhow::{Context, Result, bail};

use super::{CliSpec, Expect, Scenario, Step};
use crate::fault::Fault;
use crate::fleet::CONTROL_SITE;

impl Scenario {
    pub(super) fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            bail!("name: empty");
        }
        self.fleet.spec().validate()?;
        if !(self.converge_within_s.is_finite() && self.converge_within_s > 0.0)
            || self.converge_within_s.is_nan()
        {
            bail!("converge_within_s: must be positive");
        }
        let names = self.fleet.node_names();
        let mut active: Vec<Fault> = Vec::new();
        check_steps(&self.steps, &names, &mut active, "steps")
    }
}

fn check_steps(
    steps: &[Step],
    names: &[(String, String)],
    active: &mut Vec<Fault>,
    at: &str,
) -> Result<()> {
    for (index, step) in steps.iter().enumerate() {
        let at = format!("{at}[{index}]");
        check_step(step, names, active).with_context(|| at.clone())?;
    }
    Ok(())
}

/// Checks one step against the fleet's `names` (node, site) and the faults `active` before
/// it, and brings `active` up to date.
fn check_step(step: &Step, names: &[(String, String)], active: &mut Vec<Fault>) -> Result<()> {
    match step {
        Step::Fault(fault) => check_fault(fault, active)?,
        Step::Heal(fault) => check_heal(fault, active)?,
        Step::HealAll {} => active.clear(),
        Step::Wait(s) => check_seconds("wait", *s)?,
        Step::Cli(cli) => check_cli(&cli.spec(), names)?,
        Step::KillWorkload { node: name, .. } | Step::Reboot { node: name } => {
            require_agent(names, name)?;
        }
        Step::Restart { node: name } => require_node(names, name)?,
        Step::KillLeader {} => {}
        Step::Flap {
            fault,
            times,
            down_s,
            up_s,
        } => check_flap(fault, *times, *down_s, *up_s, active)?,
        Step::Converge { within_s } => {
            if let Some(s) = within_s {
                check_seconds("converge within_s", *s)?;
            }
        }
        Step::Dns {
            node: name,
            min,
            max,
            within_s,
            ..
        } => check_dns(names, name, *min, *max, *within_s)?,
        Step::Overlay { nodes, within_s } => {
            for name in nodes {
                require_node(names, name)?;
            }
            if let Some(s) = within_s {
                check_seconds("overlay within_s", *s)?;
            }
        }
        Step::Repeat { times, steps } => check_repeat(*times, steps, names, active)?,
    }
    if let Step::Fault(fault) | Step::Heal(fault) | Step::Flap { fault, .. } = step {
        for name in fault_names(fault) {
            if !names.iter().any(|(n, s)| *n == name || *s == name) {
                bail!("fault `{fault}`: no node or site {name}");
            }
        }
    }
    Ok(())
}

fn require_node(names: &[(String, String)], name: &str) -> Result<()> {
    if names.iter().any(|(n, _)| n == name) {
        Ok(())
    } else {
        bail!("no node {name} in this fleet")
    }
}

fn require_agent(names: &[(String, String)], name: &str) -> Result<()> {
    require_node(names, name)?;
    if names
        .iter()
        .any(|(n, site)| n == name && site == CONTROL_SITE)
    {
        bail!("{name} is a control node; this step needs an agent");
    }
    Ok(())
}

fn check_seconds(what: &str, s: f64) -> Result<()> {
    if !(s.is_finite() && (0.0..=3600.0).contains(&s)) {
        bail!("{what}: {s} is not between 0 and 3600 seconds");
    }
    Ok(())
}

fn check_fault(fault: &Fault, active: &mut Vec<Fault>) -> Result<()> {
    fault.validate()?;
    if active.contains(fault) {
        bail!("fault `{fault}` is already in place");
    }
    active.push(fault.clone());
    Ok(())
}

fn check_heal(fault: &Fault, active: &mut Vec<Fault>) -> Result<()> {
    let Some(at) = active.iter().position(|f| f == fault) else {
        bail!("heal `{fault}`: no such fault is in place");
    };
    active.remove(at);
    Ok(())
}

fn check_cli(spec: &CliSpec, names: &[(String, String)]) -> Result<()> {
    spec.words(1)?;
    if let Some(api) = &spec.api {
        require_node(names, api)?;
        if !names.iter().any(|(n, s)| n == api && s == CONTROL_SITE) {
            bail!("cli api: {api} is not a control node");
        }
    }
    if let Some(s) = spec.fail_within_s {
        check_seconds("fail_within_s", s)?;
    }
    if let Some(s) = spec.retry_for_s {
        check_seconds("retry_for_s", s)?;
        if spec.expect == Expect::Fail {
            bail!("retry_for_s with expect: fail makes no sense");
        }
    }
    Ok(())
}

fn check_flap(fault: &Fault, times: u32, down_s: f64, up_s: f64, active: &[Fault]) -> Result<()> {
    fault.validate()?;
    if times == 0 {
        bail!("flap: times must be at least 1");
    }
    check_seconds("flap down_s", down_s)?;
    check_seconds("flap up_s", up_s)?;
    if active.contains(fault) {
        bail!("flap: fault `{fault}` is already in place");
    }
    Ok(())
}

fn check_dns(
    names: &[(String, String)],
    name: &str,
    min: Option<usize>,
    max: Option<usize>,
    within_s: Option<f64>,
) -> Result<()> {
    require_agent(names, name)?;
    if within_s.is_some_and(|s| !(s > 0.0 && s <= 600.0)) {
        bail!("dns: within_s must be above 0 and at most 600");
    }
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        bail!("dns: min {min} is above max {max}");
    }
    Ok(())
}

fn check_repeat(
    times: u32,
    steps: &[Step],
    names: &[(String, String)],
    active: &mut Vec<Fault>,
) -> Result<()> {
    if times == 0 {
        bail!("repeat: times must be at least 1");
    }
    // Each round must leave the faults as it found them, or the next round's
    // applies would collide.
    let before = active.clone();
    check_steps(steps, names, active, "repeat")?;
    if *active != before {
        bail!("repeat: each round must heal the faults it applies");
    }
    Ok(())
}

/// The node and site names a fault refers to.
fn fault_names(fault: &Fault) -> Vec<String> {
    match serde_json::to_value(fault) {
        Ok(value) => {
            let mut out = Vec::new();
            collect_strings(&value, &mut out);
            out
        }
        Err(_) => Vec::new(),
    }
}

fn collect_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}
