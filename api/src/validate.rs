//! Validation: the rules every spec, name and label must satisfy, with messages that name the
//! offending field (`ports[1].port: must be between 1 and 65535`).
//!
//! Control validates every write before proposing it; agents validate again what they read
//! from their cache. Validation is pure and stops at the first problem.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::format_duration_ms;
use crate::placement::{ConstraintKey, Placement};
use crate::run_as::{validate_cap_add, validate_user_or_group};
use crate::service::{
    HealthCheck, MetricsEndpoint, OnDisconnect, PortSpec, Probe, Resources, RestartPolicy,
    SecretRef, ServiceMode, ServiceSpec, UpdateConfig, VolumeMount, Workload,
};

/// Most replicas a replicated service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;
/// Most environment variables per service.
pub const MAX_ENV_ENTRIES: usize = 256;
/// Largest environment variable value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most arguments in a command or image argument list.
pub const MAX_COMMAND_ARGS: usize = 1024;
/// Most labels on a node, service or volume.
pub const MAX_LABELS: usize = 64;
/// Most ports per service.
pub const MAX_PORTS: usize = 64;
/// Most secrets per service.
pub const MAX_SECRETS: usize = 64;
/// Most volume mounts per service.
pub const MAX_VOLUMES: usize = 32;
/// Most placement sites or constraints per service.
pub const MAX_PLACEMENT_RULES: usize = 32;
/// Longest stop grace period: one hour.
pub const MAX_STOP_GRACE_PERIOD_MS: u64 = HOUR_MS;
/// Shortest health check interval: one second.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 1_000;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A rule a value breaks: which field, and what is wrong with it.
///
/// `field` is a path in the JSON form of the value (`ports[1].port`, `env.1BAD`,
/// `health.timeout_ms`); `message` says what is expected, in lower case, without a trailing
/// period. Parsers in this crate return it too, with `field` naming what was parsed (`port`,
/// `duration`, `constraint`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ValidationError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Puts the field under `parent`: `port` within `ports[1]` becomes `ports[1].port`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ValidationError> {
    Err(ValidationError::new(field, message))
}

/// A map key as it appears in a field path: quoted when it is empty or has characters that
/// would make the path unreadable.
fn key_in_path(key: &str) -> String {
    if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        format!("{key:?}")
    } else {
        key.to_owned()
    }
}

/// Checks a DNS label: 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
/// Service, secret, volume, node and site names and port names are DNS labels.
///
/// # Errors
/// A [`ValidationError`] on `field` naming the rule broken.
pub fn validate_dns_label(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > 63 {
        return fail(
            field,
            format!("must be 1 to 63 characters, got {}", value.len()),
        );
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(
            field,
            format!("may contain only lowercase letters, digits and '-' (found {c:?})"),
        );
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail(field, "must not start or end with '-'");
    }
    Ok(())
}

/// Checks a site name (a DNS label), reported on field `site`.
///
/// # Errors
/// See [`validate_dns_label`].
pub fn validate_site(site: &str) -> Result<(), ValidationError> {
    validate_dns_label("site", site)
}

/// Checks a node name (a DNS label), reported on field `name`.
///
/// # Errors
/// See [`validate_dns_label`].
pub fn validate_node_name(name: &str) -> Result<(), ValidationError> {
    validate_dns_label("name", name)
}

/// Checks a label key: 1 to 128 characters of letters, digits, `.`, `_`, `/` and `-`,
/// starting and ending with a letter or digit (`zone`, `example.com/gpu`).
///
/// # Errors
/// A [`ValidationError`] on `field`.
pub fn validate_label_key(field: &str, key: &str) -> Result<(), ValidationError> {
    if key.is_empty() {
        return fail(field, "label key must not be empty");
    }
    if key.len() > 128 {
        return fail(field, "label key must be at most 128 characters");
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return fail(
            field,
            format!(
                "label key may contain only letters, digits, '.', '_', '/' and '-' (found {c:?})"
            ),
        );
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(key.chars().next()) || !alnum(key.chars().last()) {
        return fail(field, "label key must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks a label map: at most [`MAX_LABELS`] entries, sane keys, values of at most 256 bytes
/// without control characters. Errors name `<field>.<key>`.
///
/// # Errors
/// The first bad entry.
pub fn validate_labels(
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return fail(
            field,
            format!("at most {MAX_LABELS} labels, got {}", labels.len()),
        );
    }
    for (key, value) in labels {
        let entry = format!("{field}.{}", key_in_path(key));
        validate_label_key(&entry, key)?;
        if value.len() > 256 {
            return fail(entry, "label value must be at most 256 bytes");
        }
        if value.chars().any(char::is_control) {
            return fail(entry, "label value must not contain control characters");
        }
    }
    Ok(())
}

/// Checks an environment map: at most [`MAX_ENV_ENTRIES`] entries, names of letters, digits
/// and `_` not starting with a digit, values without NUL of at most [`MAX_ENV_VALUE_BYTES`].
/// Errors name `<field>.<NAME>`.
///
/// # Errors
/// The first bad entry.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if env.len() > MAX_ENV_ENTRIES {
        return fail(
            field,
            format!("at most {MAX_ENV_ENTRIES} variables, got {}", env.len()),
        );
    }
    for (name, value) in env {
        let entry = format!("{field}.{}", key_in_path(name));
        let name_ok = name.len() <= 256
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return fail(
                entry,
                "invalid environment variable name (letters, digits and '_', not starting with a digit)",
            );
        }
        if value.contains('\0') {
            return fail(entry, "value must not contain NUL bytes");
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return fail(
                entry,
                format!(
                    "value must be at most {MAX_ENV_VALUE_BYTES} bytes, got {}",
                    value.len()
                ),
            );
        }
    }
    Ok(())
}

/// Checks a plain file name: non-empty, at most 255 bytes, no `/`, no NUL or control
/// characters, not `.` or `..`. Secret and volume targets are plain names so that joining them
/// onto a directory can never escape it.
///
/// # Errors
/// A [`ValidationError`] on `field`.
pub fn validate_file_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 255 {
        return fail(field, format!("must be 1 to 255 bytes, got {}", name.len()));
    }
    if name == "." || name == ".." {
        return fail(field, "must not be '.' or '..'");
    }
    if name.contains('/') || name.contains('\\') {
        return fail(field, "must be a plain file name (no '/' or '\\')");
    }
    if name.chars().any(char::is_control) {
        return fail(field, "must not contain control characters or NUL");
    }
    Ok(())
}

/// Checks an argv-style list: at most [`MAX_COMMAND_ARGS`] entries, none containing NUL.
fn validate_args(field: &str, args: &[String]) -> Result<(), ValidationError> {
    if args.len() > MAX_COMMAND_ARGS {
        return fail(
            field,
            format!("at most {MAX_COMMAND_ARGS} arguments, got {}", args.len()),
        );
    }
    for (idx, arg) in args.iter().enumerate() {
        if arg.contains('\0') {
            return fail(format!("{field}[{idx}]"), "must not contain NUL bytes");
        }
    }
    Ok(())
}

fn at_most_ms(field: &str, value_ms: u64, max_ms: u64) -> Result<(), ValidationError> {
    if value_ms > max_ms {
        return fail(
            field,
            format!(
                "must be at most {}, got {}",
                format_duration_ms(max_ms),
                format_duration_ms(value_ms)
            ),
        );
    }
    Ok(())
}

fn at_least_ms(field: &str, value_ms: u64, min_ms: u64) -> Result<(), ValidationError> {
    if value_ms < min_ms {
        return fail(
            field,
            format!(
                "must be at least {}, got {}",
                format_duration_ms(min_ms),
                format_duration_ms(value_ms)
            ),
        );
    }
    Ok(())
}

impl ServiceSpec {
    /// Checks every field of the spec.
    ///
    /// # Errors
    /// The first problem found, as a [`ValidationError`] whose `field` is the path of the
    /// offending value in the spec's JSON form (`ports[1].port`, `env.1BAD`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        // `name` needs no check: a `ServiceName` cannot hold an invalid name.
        validate_workload(&self.workload).map_err(|e| e.within("workload"))?;
        if let ServiceMode::Replicated { replicas } = self.mode
            && replicas > MAX_REPLICAS
        {
            return fail(
                "mode.replicated.replicas",
                format!("must be at most {MAX_REPLICAS}, got {replicas}"),
            );
        }
        validate_placement(&self.placement).map_err(|e| e.within("placement"))?;
        validate_env("env", &self.env)?;
        validate_ports(&self.ports)?;
        if let Some(health) = &self.health {
            validate_health(health).map_err(|e| e.within("health"))?;
        }
        validate_restart(&self.restart).map_err(|e| e.within("restart"))?;
        if let OnDisconnect::Reschedule { after_ms } = self.on_disconnect {
            at_least_ms("on_disconnect.reschedule.after_ms", after_ms, 1_000)?;
        }
        validate_secret_refs(&self.secrets)?;
        if let Some(idx) = self.secrets.iter().position(SecretRef::is_registry_auth)
            && !matches!(self.workload, Workload::Image(_))
        {
            return fail(
                format!("secrets[{idx}].target"),
                "registry credentials are for image workloads; a process pulls nothing",
            );
        }
        validate_volume_mounts(&self.volumes)?;
        validate_resources(&self.resources).map_err(|e| e.within("resources"))?;
        if let Some(user) = &self.user {
            validate_user_or_group("user", user)?;
        }
        if let Some(group) = &self.group {
            validate_user_or_group("group", group)?;
        }
        validate_cap_add(&self.cap_add)?;
        validate_update(&self.update).map_err(|e| e.within("update"))?;
        at_most_ms(
            "stop_grace_period_ms",
            self.stop_grace_period_ms,
            MAX_STOP_GRACE_PERIOD_MS,
        )?;
        validate_labels("labels", &self.labels)?;
        match &self.metrics {
            Some(metrics) => validate_metrics(metrics).map_err(|e| e.within("metrics")),
            None => Ok(()),
        }
    }
}

/// Most bytes of a metrics path.
pub const MAX_METRICS_PATH: usize = 256;

/// A metrics endpoint: a port, and an absolute HTTP path Prometheus can put in a URL as it is.
fn validate_metrics(metrics: &MetricsEndpoint) -> Result<(), ValidationError> {
    if metrics.port == 0 {
        return fail("port", "must be between 1 and 65535");
    }
    let path = &metrics.path;
    if !path.starts_with('/') || path.len() > MAX_METRICS_PATH {
        return fail(
            "path",
            format!("must start with / and be at most {MAX_METRICS_PATH} bytes (got {path:?})"),
        );
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return fail(
            "path",
            format!(
                "must be a plain path: no whitespace, control characters, ? or # (got {path:?})"
            ),
        );
    }
    Ok(())
}

fn validate_workload(workload: &Workload) -> Result<(), ValidationError> {
    match workload {
        Workload::Process(process) => {
            match process.command.first() {
                None => {
                    return fail(
                        "process.command",
                        "must not be empty (give the program to run)",
                    );
                }
                Some(program) if program.is_empty() => {
                    return fail("process.command[0]", "must not be empty");
                }
                Some(_) => {}
            }
            validate_args("process.command", &process.command)?;
            match &process.working_dir {
                Some(dir) => validate_working_dir("process.working_dir", dir),
                None => Ok(()),
            }
        }
        Workload::Image(image) => {
            validate_image_reference("image.reference", &image.reference)?;
            validate_args("image.args", &image.args)
        }
    }
}

/// Longest working directory accepted, in bytes (`PATH_MAX`).
pub const MAX_WORKING_DIR_BYTES: usize = 4096;

/// Checks a working directory: normalized (no `.`, `..` or empty components, no trailing `/`),
/// not `/`. A relative one is taken inside the replica's directory, which `..` would leave;
/// where an absolute one may point is for the agent to judge (not its data dir, not another
/// replica's directory), since only it knows where those are.
fn validate_working_dir(field: &str, dir: &str) -> Result<(), ValidationError> {
    if dir.is_empty() || dir.len() > MAX_WORKING_DIR_BYTES || dir.contains('\0') {
        return fail(
            field,
            format!("must be 1 to {MAX_WORKING_DIR_BYTES} bytes with no NUL"),
        );
    }
    if dir == "/" {
        return fail(
            field,
            "must not be / (give a directory of the workload's own)",
        );
    }
    let relative = dir.strip_prefix('/').unwrap_or(dir);
    let components: Vec<&str> = relative.split('/').collect();
    if components.contains(&"..") {
        return fail(
            field,
            format!(
                "must not contain '..' (got {dir:?}): a relative path stays inside the replica's directory"
            ),
        );
    }
    if components.iter().any(|c| c.is_empty() || *c == ".") {
        return fail(
            field,
            format!(
                "must be normalized: no '.' or empty components and no trailing '/' (got {dir:?})"
            ),
        );
    }
    Ok(())
}

/// Checks that an image reference looks like one: 1 to 512 characters of letters, digits and
/// `._-/:@`, starting with a letter or digit and not ending with a separator. The registry is
/// the final judge; this only keeps out text that cannot be a reference.
fn validate_image_reference(field: &str, reference: &str) -> Result<(), ValidationError> {
    if reference.is_empty() || reference.len() > 512 {
        return fail(
            field,
            format!("must be 1 to 512 characters, got {}", reference.len()),
        );
    }
    if let Some(c) = reference
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')))
    {
        return fail(
            field,
            format!("invalid image reference {reference:?}: unexpected character {c:?}"),
        );
    }
    let starts_ok = reference.starts_with(|c: char| c.is_ascii_alphanumeric());
    let ends_ok = !reference.ends_with(['.', '-', '/', ':', '@']);
    if !starts_ok || !ends_ok {
        return fail(
            field,
            format!(
                "invalid image reference {reference:?}: must start with a letter or digit and not end with a separator"
            ),
        );
    }
    Ok(())
}

fn validate_placement(placement: &Placement) -> Result<(), ValidationError> {
    if placement.sites.len() > MAX_PLACEMENT_RULES {
        return fail("sites", format!("at most {MAX_PLACEMENT_RULES} sites"));
    }
    for (idx, site) in placement.sites.iter().enumerate() {
        let field = format!("sites[{idx}]");
        validate_dns_label(&field, site)?;
        if placement.sites[..idx].contains(site) {
            return fail(field, format!("duplicate site {site:?}"));
        }
    }
    if placement.constraints.len() > MAX_PLACEMENT_RULES {
        return fail(
            "constraints",
            format!("at most {MAX_PLACEMENT_RULES} constraints"),
        );
    }
    for (idx, constraint) in placement.constraints.iter().enumerate() {
        let field = format!("constraints[{idx}]");
        if let ConstraintKey::Label(key) = &constraint.key {
            validate_label_key("key", key).map_err(|e| e.within(&field))?;
        }
        constraint.validate_value().map_err(|e| e.within(&field))?;
    }
    Ok(())
}

fn validate_ports(ports: &[PortSpec]) -> Result<(), ValidationError> {
    if ports.len() > MAX_PORTS {
        return fail(
            "ports",
            format!("at most {MAX_PORTS} ports, got {}", ports.len()),
        );
    }
    for (idx, port) in ports.iter().enumerate() {
        if port.port == 0 {
            return fail(format!("ports[{idx}].port"), "must be between 1 and 65535");
        }
        if let Some(name) = &port.name {
            validate_dns_label(&format!("ports[{idx}].name"), name)?;
        }
        let earlier = ports[..idx]
            .iter()
            .position(|other| other.port == port.port && other.protocol == port.protocol);
        if let Some(other_idx) = earlier {
            return fail(
                format!("ports[{idx}].port"),
                format!(
                    "{}/{} is already listed as ports[{other_idx}]",
                    port.port,
                    port.protocol.as_str()
                ),
            );
        }
        let same_name = |other: &PortSpec| port.name.is_some() && other.name == port.name;
        if let Some(other_idx) = ports[..idx].iter().position(same_name) {
            return fail(
                format!("ports[{idx}].name"),
                format!("duplicate name, already used by ports[{other_idx}]"),
            );
        }
    }
    Ok(())
}

fn validate_health(health: &HealthCheck) -> Result<(), ValidationError> {
    at_least_ms("interval_ms", health.interval_ms, MIN_HEALTH_INTERVAL_MS)?;
    at_most_ms("interval_ms", health.interval_ms, HOUR_MS)?;
    if health.timeout_ms == 0 {
        return fail("timeout_ms", "must be greater than 0");
    }
    if health.timeout_ms >= health.interval_ms {
        return fail(
            "timeout_ms",
            format!(
                "must be less than interval_ms ({}), got {}",
                format_duration_ms(health.interval_ms),
                format_duration_ms(health.timeout_ms)
            ),
        );
    }
    if !(1..=100).contains(&health.retries) {
        return fail(
            "retries",
            format!("must be between 1 and 100, got {}", health.retries),
        );
    }
    at_most_ms("start_period_ms", health.start_period_ms, HOUR_MS)?;
    match &health.probe {
        Probe::Http { url } => {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() > 2048 {
                return fail(
                    "probe.http.url",
                    "must be an http:// or https:// URL of at most 2048 bytes",
                );
            }
            if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return fail(
                    "probe.http.url",
                    "must not contain whitespace or control characters",
                );
            }
        }
        Probe::Tcp { port } => {
            if *port == 0 {
                return fail("probe.tcp.port", "must be between 1 and 65535");
            }
        }
        Probe::Exec { command } => {
            if command.first().is_none_or(String::is_empty) {
                return fail(
                    "probe.exec.command",
                    "must not be empty (give the program to run)",
                );
            }
            validate_args("probe.exec.command", command)?;
        }
    }
    Ok(())
}

fn validate_restart(restart: &RestartPolicy) -> Result<(), ValidationError> {
    // A floor on the backoff keeps a crashing workload from spinning a core.
    at_least_ms("backoff_initial_ms", restart.backoff_initial_ms, 100)?;
    at_most_ms("backoff_max_ms", restart.backoff_max_ms, DAY_MS)?;
    if restart.backoff_initial_ms > restart.backoff_max_ms {
        return fail(
            "backoff_initial_ms",
            format!(
                "must be at most backoff_max_ms ({}), got {}",
                format_duration_ms(restart.backoff_max_ms),
                format_duration_ms(restart.backoff_initial_ms)
            ),
        );
    }
    if restart.max_attempts == Some(0) {
        return fail(
            "max_attempts",
            "must be at least 1 (use condition never to disable restarts)",
        );
    }
    Ok(())
}

fn validate_secret_refs(secrets: &[SecretRef]) -> Result<(), ValidationError> {
    if secrets.len() > MAX_SECRETS {
        return fail(
            "secrets",
            format!("at most {MAX_SECRETS} secrets, got {}", secrets.len()),
        );
    }
    for (idx, secret) in secrets.iter().enumerate() {
        validate_dns_label(&format!("secrets[{idx}].name"), &secret.name)?;
        let target_field = format!("secrets[{idx}].target");
        validate_file_name(&target_field, &secret.target)?;
        if let Some(other_idx) = secrets[..idx]
            .iter()
            .position(|s| s.target == secret.target)
        {
            return fail(
                target_field,
                format!(
                    "duplicate target {:?}, already used by secrets[{other_idx}]",
                    secret.target
                ),
            );
        }
    }
    Ok(())
}

fn validate_volume_mounts(volumes: &[VolumeMount]) -> Result<(), ValidationError> {
    if volumes.len() > MAX_VOLUMES {
        return fail(
            "volumes",
            format!("at most {MAX_VOLUMES} volumes, got {}", volumes.len()),
        );
    }
    for (idx, mount) in volumes.iter().enumerate() {
        validate_dns_label(&format!("volumes[{idx}].volume"), &mount.volume)?;
        let target_field = format!("volumes[{idx}].target");
        validate_file_name(&target_field, &mount.target)?;
        if let Some(other_idx) = volumes[..idx].iter().position(|m| m.target == mount.target) {
            return fail(
                target_field,
                format!(
                    "duplicate target {:?}, already used by volumes[{other_idx}]",
                    mount.target
                ),
            );
        }
    }
    Ok(())
}

fn validate_resources(resources: &Resources) -> Result<(), ValidationError> {
    const MIB: u64 = 1024 * 1024;
    if resources.memory_bytes.is_some_and(|bytes| bytes < MIB) {
        return fail(
            "memory_bytes",
            format!("must be at least 1 MiB ({MIB} bytes)"),
        );
    }
    if resources
        .cpu_millis
        .is_some_and(|millis| !(1..=1_000_000).contains(&millis))
    {
        return fail("cpu_millis", "must be between 1 and 1000000");
    }
    Ok(())
}

fn validate_update(update: &UpdateConfig) -> Result<(), ValidationError> {
    if update.parallelism == 0 {
        return fail("parallelism", "must be at least 1");
    }
    at_most_ms("delay_ms", update.delay_ms, HOUR_MS)?;
    at_most_ms("monitor_ms", update.monitor_ms, HOUR_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ServiceName;
    use crate::placement::{Constraint, ConstraintOp};
    use crate::service::{ImageSpec, ProcessSpec, Protocol, RestartCondition};

    fn base() -> ServiceSpec {
        ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["/usr/bin/web".to_owned()],
                working_dir: None,
            }),
        )
    }

    /// Applies `edit` to a valid spec and checks the outcome: `Ok(())` or the exact
    /// `field: message` text.
    fn check(edit: impl FnOnce(&mut ServiceSpec), expected: Result<(), &str>) {
        let mut spec = base();
        edit(&mut spec);
        let got = spec.validate().map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned));
    }

    fn port(port: u16, protocol: Protocol) -> PortSpec {
        PortSpec {
            name: None,
            port,
            protocol,
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn valid_specs() {
        check(|_| {}, Ok(()));
        check(
            |s| {
                s.mode = ServiceMode::Replicated {
                    replicas: MAX_REPLICAS,
                };
                s.env
                    .insert("_X1".to_owned(), "v".repeat(MAX_ENV_VALUE_BYTES));
                s.ports = vec![port(53, Protocol::Tcp), port(53, Protocol::Udp)];
                s.health = Some(HealthCheck::new(Probe::Http {
                    url: "http://127.0.0.1:8080/health".to_owned(),
                }));
                s.secrets = vec![
                    SecretRef::new("db"),
                    SecretRef {
                        name: "db".to_owned(),
                        target: "db.pem".to_owned(),
                    },
                ];
                s.stop_grace_period_ms = MAX_STOP_GRACE_PERIOD_MS;
                s.placement
                    .constraints
                    .push(Constraint::parse("label.zone==a").unwrap());
                s.workload = Workload::Image(ImageSpec {
                    reference: "registry.example.com:5000/team/app@sha256:abc123".to_owned(),
                    args: strings(&["--flag"]),
                });
            },
            Ok(()),
        );
    }

    #[test]
    fn workload_rules() {
        let process = |command: &[&str]| {
            Workload::Process(ProcessSpec {
                command: strings(command),
                working_dir: None,
            })
        };
        let image = |reference: &str| {
            Workload::Image(ImageSpec {
                reference: reference.to_owned(),
                args: vec![],
            })
        };
        check(
            |s| s.workload = process(&[]),
            Err("workload.process.command: must not be empty (give the program to run)"),
        );
        check(
            |s| s.workload = process(&[""]),
            Err("workload.process.command[0]: must not be empty"),
        );
        check(
            |s| s.workload = process(&["/bin/sh", "-c", "a\0b"]),
            Err("workload.process.command[2]: must not contain NUL bytes"),
        );
        check(
            |s| s.workload = image(""),
            Err("workload.image.reference: must be 1 to 512 characters, got 0"),
        );
        check(
            |s| s.workload = image("nginx latest"),
            Err(
                r#"workload.image.reference: invalid image reference "nginx latest": unexpected character ' '"#,
            ),
        );
        check(
            |s| s.workload = image("nginx:"),
            Err(
                r#"workload.image.reference: invalid image reference "nginx:": must start with a letter or digit and not end with a separator"#,
            ),
        );
    }

    #[test]
    fn working_dir_rules() {
        let with_dir = |dir: &str| {
            let dir = dir.to_owned();
            move |s: &mut ServiceSpec| {
                s.workload = Workload::Process(ProcessSpec {
                    command: strings(&["/usr/bin/web"]),
                    working_dir: Some(dir),
                })
            }
        };
        for ok in [
            "data",
            "data/cache",
            "/srv/web",
            "/var/lib/web-data",
            ".hidden",
        ] {
            check(with_dir(ok), Ok(()));
        }
        check(
            with_dir("/"),
            Err(
                "workload.process.working_dir: must not be / (give a directory of the workload's own)",
            ),
        );
        for escape in ["..", "../../..", "data/../../x", "/srv/../var/lib/warren"] {
            check(
                with_dir(escape),
                Err(&format!(
                    "workload.process.working_dir: must not contain '..' (got {escape:?}): a relative path stays inside the replica's directory"
                )),
            );
        }
        for unnormal in ["./data", "data/", "a//b", "/srv/./web", "//srv"] {
            check(
                with_dir(unnormal),
                Err(&format!(
                    "workload.process.working_dir: must be normalized: no '.' or empty components and no trailing '/' (got {unnormal:?})"
                )),
            );
        }
        check(
            with_dir(""),
            Err("workload.process.working_dir: must be 1 to 4096 bytes with no NUL"),
        );
        check(
            with_dir("a\0b"),
            Err("workload.process.working_dir: must be 1 to 4096 bytes with no NUL"),
        );
    }

    #[test]
    fn user_group_and_capability_rules() {
        check(
            |s| {
                s.user = Some("www-data".to_owned());
                s.group = Some("1000".to_owned());
                s.cap_add = strings(&["NET_BIND_SERVICE"]);
            },
            Ok(()),
        );
        check(|s| s.user = Some("root".to_owned()), Ok(()));
        check(
            |s| s.user = Some("bad name".to_owned()),
            Err(
                r#"user: invalid name "bad name": use a user or group name (letters, digits, '_', '-', '.'; starting with a letter or '_') or a number"#,
            ),
        );
        check(
            |s| s.group = Some("-1".to_owned()),
            Err(
                r#"group: invalid name "-1": use a user or group name (letters, digits, '_', '-', '.'; starting with a letter or '_') or a number"#,
            ),
        );
        check(
            |s| s.cap_add = strings(&["CAP_NET_RAW"]),
            Err(r#"cap_add[0]: unknown capability "CAP_NET_RAW" (write NET_RAW)"#),
        );
    }

    #[test]
    fn mode_env_and_port_rules() {
        check(
            |s| s.mode = ServiceMode::Replicated { replicas: 10_001 },
            Err("mode.replicated.replicas: must be at most 10000, got 10001"),
        );
        check(
            |s| {
                s.env.insert("1BAD".to_owned(), String::new());
            },
            Err(
                "env.1BAD: invalid environment variable name (letters, digits and '_', not starting with a digit)",
            ),
        );
        check(
            |s| {
                s.env.insert(String::new(), String::new());
            },
            Err(
                r#"env."": invalid environment variable name (letters, digits and '_', not starting with a digit)"#,
            ),
        );
        check(
            |s| {
                s.env.insert("A".to_owned(), "x\0".to_owned());
            },
            Err("env.A: value must not contain NUL bytes"),
        );
        check(
            |s| {
                s.env
                    .insert("A".to_owned(), "v".repeat(MAX_ENV_VALUE_BYTES + 1));
            },
            Err("env.A: value must be at most 32768 bytes, got 32769"),
        );
        check(
            |s| {
                s.env = (0..=MAX_ENV_ENTRIES)
                    .map(|i| (format!("V{i}"), String::new()))
                    .collect();
            },
            Err("env: at most 256 variables, got 257"),
        );
        check(
            |s| s.ports = vec![port(80, Protocol::Tcp), port(0, Protocol::Tcp)],
            Err("ports[1].port: must be between 1 and 65535"),
        );
        check(
            |s| {
                s.ports = vec![
                    port(80, Protocol::Tcp),
                    port(81, Protocol::Tcp),
                    port(80, Protocol::Tcp),
                ]
            },
            Err("ports[2].port: 80/tcp is already listed as ports[0]"),
        );
        check(
            |s| {
                s.ports = vec!["http:80".parse().unwrap(), "http:81".parse().unwrap()];
            },
            Err("ports[1].name: duplicate name, already used by ports[0]"),
        );
    }

    #[test]
    fn health_and_restart_rules() {
        let health = |interval_ms, timeout_ms| {
            let mut check = HealthCheck::new(Probe::Tcp { port: 80 });
            check.interval_ms = interval_ms;
            check.timeout_ms = timeout_ms;
            Some(check)
        };
        check(|s| s.health = health(1_000, 999), Ok(()));
        check(
            |s| s.health = health(500, 100),
            Err("health.interval_ms: must be at least 1s, got 500ms"),
        );
        check(
            |s| s.health = health(10_000, 10_000),
            Err("health.timeout_ms: must be less than interval_ms (10s), got 10s"),
        );
        check(
            |s| s.health = health(10_000, 0),
            Err("health.timeout_ms: must be greater than 0"),
        );
        check(
            |s| s.health = Some(HealthCheck::new(Probe::Exec { command: vec![] })),
            Err("health.probe.exec.command: must not be empty (give the program to run)"),
        );
        check(
            |s| {
                s.health = Some(HealthCheck::new(Probe::Http {
                    url: "localhost:80".to_owned(),
                }))
            },
            Err("health.probe.http.url: must be an http:// or https:// URL of at most 2048 bytes"),
        );
        check(
            |s| s.restart.backoff_initial_ms = 120_000,
            Err("restart.backoff_initial_ms: must be at most backoff_max_ms (1m), got 2m"),
        );
        check(
            |s| s.restart.backoff_initial_ms = 10,
            Err("restart.backoff_initial_ms: must be at least 100ms, got 10ms"),
        );
        check(
            |s| {
                s.restart.condition = RestartCondition::OnFailure;
                s.restart.max_attempts = Some(0);
            },
            Err(
                "restart.max_attempts: must be at least 1 (use condition never to disable restarts)",
            ),
        );
        check(
            |s| s.on_disconnect = OnDisconnect::Reschedule { after_ms: 0 },
            Err("on_disconnect.reschedule.after_ms: must be at least 1s, got 0s"),
        );
    }

    #[test]
    fn secret_volume_and_resource_rules() {
        let secret = |name: &str, target: &str| SecretRef {
            name: name.to_owned(),
            target: target.to_owned(),
        };
        let mount = |volume: &str, target: &str| VolumeMount {
            volume: volume.to_owned(),
            target: target.to_owned(),
            read_only: true,
        };
        check(
            |s| s.secrets = vec![secret("DB", "db")],
            Err("secrets[0].name: may contain only lowercase letters, digits and '-' (found 'D')"),
        );
        check(
            |s| s.secrets = vec![secret("db", "../etc/passwd")],
            Err("secrets[0].target: must be a plain file name (no '/' or '\\')"),
        );
        check(
            |s| s.secrets = vec![secret("db", "..")],
            Err("secrets[0].target: must not be '.' or '..'"),
        );
        check(
            |s| s.secrets = vec![secret("a", "x"), secret("b", "x")],
            Err(r#"secrets[1].target: duplicate target "x", already used by secrets[0]"#),
        );
        check(
            |s| s.secrets = vec![secret("db", "db"), SecretRef::registry_auth("regcred")],
            Err(
                "secrets[1].target: registry credentials are for image workloads; a process pulls nothing",
            ),
        );
        check(
            |s| {
                s.workload = Workload::Image(ImageSpec {
                    reference: "registry.example/app:1".to_owned(),
                    args: vec![],
                });
                s.secrets = vec![SecretRef::registry_auth("regcred")];
            },
            Ok(()),
        );
        check(
            |s| s.volumes = vec![mount("data", "/var/lib/data")],
            Err("volumes[0].target: must be a plain file name (no '/' or '\\')"),
        );
        check(
            |s| s.volumes = vec![mount("-data", "data")],
            Err("volumes[0].volume: must not start or end with '-'"),
        );
        check(
            |s| s.resources.memory_bytes = Some(1024),
            Err("resources.memory_bytes: must be at least 1 MiB (1048576 bytes)"),
        );
        check(
            |s| s.resources.cpu_millis = Some(0),
            Err("resources.cpu_millis: must be between 1 and 1000000"),
        );
    }

    #[test]
    fn placement_update_grace_and_label_rules() {
        check(
            |s| s.placement.sites = vec!["edge-a".to_owned(), "Edge_B".to_owned()],
            Err(
                "placement.sites[1]: may contain only lowercase letters, digits and '-' (found 'E')",
            ),
        );
        check(
            |s| s.placement.sites = vec!["a".to_owned(), "a".to_owned()],
            Err(r#"placement.sites[1]: duplicate site "a""#),
        );
        check(
            |s| {
                s.placement.constraints = vec![Constraint {
                    key: ConstraintKey::Label("bad key".to_owned()),
                    op: ConstraintOp::Eq,
                    value: "x".to_owned(),
                }];
            },
            Err(
                "placement.constraints[0].key: label key may contain only letters, digits, '.', '_', '/' and '-' (found ' ')",
            ),
        );
        check(
            |s| {
                s.placement.constraints = vec![Constraint {
                    key: ConstraintKey::Site,
                    op: ConstraintOp::NotEq,
                    value: String::new(),
                }];
            },
            Err("placement.constraints[0].value: must not be empty"),
        );
        check(
            |s| s.update.parallelism = 0,
            Err("update.parallelism: must be at least 1"),
        );
        check(
            |s| s.update.delay_ms = 2 * HOUR_MS,
            Err("update.delay_ms: must be at most 1h, got 2h"),
        );
        check(
            |s| s.stop_grace_period_ms = HOUR_MS + 1,
            Err("stop_grace_period_ms: must be at most 1h, got 3600001ms"),
        );
        check(
            |s| {
                s.labels.insert("-team".to_owned(), "x".to_owned());
            },
            Err("labels.-team: label key must start and end with a letter or digit"),
        );
        check(
            |s| {
                s.labels.insert("team".to_owned(), "a\nb".to_owned());
            },
            Err("labels.team: label value must not contain control characters"),
        );
    }

    #[test]
    fn metrics_endpoint_rules() {
        let endpoint = |port: u16, path: &str| {
            let path = path.to_owned();
            move |s: &mut ServiceSpec| s.metrics = Some(MetricsEndpoint { port, path })
        };
        check(endpoint(9100, "/metrics"), Ok(()));
        check(endpoint(8080, "/stats/prometheus"), Ok(()));
        check(
            endpoint(0, "/metrics"),
            Err("metrics.port: must be between 1 and 65535"),
        );
        check(
            endpoint(9100, "metrics"),
            Err("metrics.path: must start with / and be at most 256 bytes (got \"metrics\")"),
        );
        check(
            endpoint(9100, "/m?x=1"),
            Err(
                "metrics.path: must be a plain path: no whitespace, control characters, ? or # (got \"/m?x=1\")",
            ),
        );
        let long = format!("/{}", "a".repeat(MAX_METRICS_PATH));
        assert!(
            check_err(endpoint(9100, &long)).starts_with("metrics.path: must start with /"),
            "a path over {MAX_METRICS_PATH} bytes is refused"
        );
        let yaml: MetricsEndpoint = serde_json::from_str(r#"{"port": 9100}"#).unwrap();
        assert_eq!(yaml.path, "/metrics", "the path defaults to /metrics");
    }

    fn check_err(edit: impl FnOnce(&mut ServiceSpec)) -> String {
        let mut spec = base();
        edit(&mut spec);
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn dns_label_rules() {
        fn check_label(input: &str, expected: Result<(), &str>) {
            let got = validate_dns_label("name", input).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{input:?}");
        }
        check_label("a", Ok(()));
        check_label("edge-site-1", Ok(()));
        check_label(&"a".repeat(63), Ok(()));
        check_label("", Err("name: must be 1 to 63 characters, got 0"));
        check_label(
            &"a".repeat(64),
            Err("name: must be 1 to 63 characters, got 64"),
        );
        check_label(
            "a.b",
            Err("name: may contain only lowercase letters, digits and '-' (found '.')"),
        );
        check_label("a-", Err("name: must not start or end with '-'"));
        assert_eq!(
            validate_site("Paris").unwrap_err().to_string(),
            "site: may contain only lowercase letters, digits and '-' (found 'P')"
        );
        assert!(validate_node_name("box-7").is_ok());
    }

    #[test]
    fn within_builds_paths() {
        let err = ValidationError::new("port", "bad")
            .within("ports[1]")
            .within("spec");
        assert_eq!(err.to_string(), "spec.ports[1].port: bad");
        assert_eq!(ValidationError::new("", "bad").within("x").field, "x");
    }
}
