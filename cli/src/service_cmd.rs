//! `warren service …`: create, list, inspect, scale, update, roll back and remove services.
//!
//! `create` and `update` build a [`ServiceSpec`] from flags and validate it locally, so a
//! mistake is named by its flag before anything is sent.

use anyhow::{Context, Result, anyhow, bail};
use warren_api::clock::unix_now_ms;
use warren_api::rest::{ReplicaInfo, RolloutInfo, ScaleRequest, ServiceInfo, WriteResult};
use warren_api::routes::Route;
use warren_api::{
    Constraint, HealthCheck, ImageSpec, MetricsEndpoint, OnDisconnect, PortSpec, Probe,
    ProcessSpec, RestartCondition, SecretRef, ServiceMode, ServiceName, ServiceSpec,
    ValidationError, VolumeMount, Workload,
};

use crate::client::{Client, ClientArgs};
use crate::output::{OutputFormat, print_read, print_write};
use crate::table::{Table, age, fields, prune_defaults, to_yaml_value};

/// Widest workload text shown in `service ls`.
const MAX_WORKLOAD_COLUMN_CHARS: usize = 40;

/// `warren service …`.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

/// Subcommands of `warren service`.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Create a service (fails if it exists; `warren apply` creates or updates).
    #[command(
        group(clap::ArgGroup::new("what").args(["command", "image"]).required(true)),
        after_help = "Examples:\n  \
            warren service create web --command \"/usr/bin/web --port 8080\" --replicas 3 \\\n      \
                --port http:8080 --health-http http://127.0.0.1:8080/health\n  \
            warren service create node-exporter --image prom/node-exporter:v1.8 --global\n  \
            warren service create cache --command \"redis-server --port 6379\" --site lisbon \\\n      \
                --constraint label.disk==ssd --on-disconnect reschedule=5m\n\n\
            --command is split like a shell would (quotes and backslashes work) but is not run\n\
            through one: write `--command \"sh -c 'a | b'\"` for pipes."
    )]
    Create {
        /// Service name: a DNS label (the service's DNS name is NAME.warren.).
        name: String,
        #[command(flatten)]
        flags: SpecFlags,
    },
    /// List services: mode, replicas placed/wanted, version, workload.
    Ls,
    /// Show one service: status and its spec as an apply-ready YAML document.
    Inspect {
        /// Service name.
        name: String,
    },
    /// Print the output of a service's replicas, read from their agents.
    ///
    /// Lines of stdout and stderr of every replica (or one, with --replica), interleaved by
    /// time, each prefixed with its replica and node (`web.1@edge-1 | …`). The lines stay on
    /// the edge boxes; control asks each agent over its own link. A replica whose agent is out
    /// of reach is named on stderr with when its agent was last heard from; the exit code is
    /// non-zero only when no replica could be read. One answer holds at most 1 MiB of text
    /// (a note on stderr says when it was cut).
    #[command(after_help = "Examples:\n  \
        warren service logs web\n  \
        warren service logs web --replica 1 --tail 20 --timestamps\n  \
        warren service logs web --since 10m --follow\n  \
        warren service logs web -o json   # one JSON object per line\n\n\
        See also `warren logs REPLICA`, and docs/logs.md for how line times are known.")]
    Logs {
        /// Service name.
        name: String,
        /// Only this replica: its slot (`1`), its id (`web.1`), or a global service's node id.
        #[arg(long, value_name = "R")]
        replica: Option<String>,
        #[command(flatten)]
        flags: crate::logs_cmd::LogFlags,
    },
    /// List a service's replicas with their node, site and state.
    Ps {
        /// Service name.
        name: String,
    },
    /// Set the number of replicas of a replicated service.
    #[command(after_help = "Example:\n  warren service scale web 5")]
    Scale {
        /// Service name.
        name: String,
        /// New replica count (0 stops every replica but keeps the service).
        replicas: u32,
        /// Return once control has the change, without following the rollout.
        #[arg(long)]
        detach: bool,
    },
    /// Change a service: the flags of `create`, applied on top of its current spec.
    ///
    /// --env and --label add or replace single keys; --site, --constraint, --secret, --volume
    /// and --port replace the whole list when given.
    #[command(after_help = "Examples:\n  \
        warren service update web --image registry.example/web:1.5\n  \
        warren service update web --env LOG=debug --env-rm OLD_FLAG\n  \
        warren service update web --update-parallelism 2 --update-delay 30s\n  \
        warren service update web --if-version 4 --replicas 5   # only if nobody changed it since v4")]
    Update {
        /// Service name.
        name: String,
        /// Update only if the service is still at version N (what `service inspect` showed):
        /// if someone changed it since, fail naming both versions and change nothing. Without
        /// it the update still refuses to overwrite a change made between its own read and
        /// write.
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
        /// Return once control has the change, without following the rollout.
        #[arg(long)]
        detach: bool,

        #[command(flatten)]
        flags: SpecFlags,
        #[command(flatten)]
        removals: Removals,
    },
    /// Return to the spec before the last update.
    Rollback {
        /// Service name.
        name: String,
        /// Return once control has the change, without following the rollout.
        #[arg(long)]
        detach: bool,
    },
    /// Remove a service and stop its replicas.
    Rm {
        /// Service name.
        name: String,
    },
}

/// The spec flags shared by `service create` and `service update`.
#[derive(Debug, Default, clap::Args)]
pub struct SpecFlags {
    /// Run a native process: its command line, split like a shell would but not run by one.
    #[arg(long, value_name = "CMD", conflicts_with = "image")]
    pub command: Option<String>,
    /// Run a container image (through containerd), like registry.example/app:1.2.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The image's command and arguments, after `--` (replacing its cmd; its entrypoint, if
    /// any, is kept): `--image busybox:1.36 -- sh -c 'echo hi; sleep 100'`.
    #[arg(last = true, value_name = "ARG")]
    pub image_args: Vec<String>,
    /// Number of replicas (default 1).
    #[arg(long, value_name = "N", conflicts_with = "global")]
    pub replicas: Option<u32>,
    /// One replica on every node the placement allows.
    #[arg(long)]
    pub global: bool,
    /// Run only in this site (repeatable; default: any site).
    #[arg(long = "site", value_name = "SITE")]
    pub sites: Vec<String>,
    /// Placement rule KEY==VALUE or KEY!=VALUE, KEY one of site, node.name, label.<key>
    /// (repeatable; all must hold).
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<Constraint>,
    /// Environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Expose a secret as a file on tmpfs, named FILE or after the secret (repeatable).
    #[arg(long = "secret", value_name = "NAME[:FILE]")]
    pub secrets: Vec<String>,
    /// Pull the image with the registry credentials (`user:password`) in this secret.
    #[arg(long, value_name = "SECRET")]
    pub registry_auth: Option<String>,
    /// Mount a local volume (repeatable): a process finds it in $WARREN_VOLUME_<TARGET>, a
    /// container at /volumes/<TARGET>; TARGET defaults to the volume's name, `:ro` mounts it
    /// read-only. The replicas then stay on the node that holds the volume.
    #[arg(long = "volume", value_name = "NAME[:TARGET][:ro]")]
    pub volumes: Vec<String>,
    /// A port the workload listens on, published for DNS (repeatable).
    #[arg(long = "port", value_name = "[NAME:]PORT[/tcp|/udp]")]
    pub ports: Vec<PortSpec>,
    /// Health check: GET this URL must answer 2xx or 3xx.
    #[arg(long, value_name = "URL", conflicts_with_all = ["health_tcp", "health_exec"])]
    pub health_http: Option<String>,
    /// Health check: a TCP connect to this port must succeed.
    #[arg(long, value_name = "PORT", conflicts_with = "health_exec")]
    pub health_tcp: Option<u16>,
    /// Health check: this command (split like --command) must exit 0.
    #[arg(long, value_name = "CMD")]
    pub health_exec: Option<String>,
    /// When the agent restarts an exited workload.
    #[arg(long, value_name = "always|on-failure|never")]
    pub restart: Option<RestartCondition>,
    /// When the node is cut off: keep the replica there, or reschedule it elsewhere after
    /// DURATION (reschedule=5m).
    #[arg(long, value_name = "keep|reschedule=DUR")]
    pub on_disconnect: Option<OnDisconnect>,
    /// Replicas replaced at a time during an update.
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u32>,
    /// Pause between update batches, like 30s.
    #[arg(long, value_name = "DURATION")]
    pub update_delay: Option<String>,
    /// How long each updated replica must keep running (and healthy) before the next batch,
    /// like 10s. Default 5s.
    #[arg(long, value_name = "DURATION")]
    pub update_monitor: Option<String>,
    /// What an update does when too many updated replicas fail. Default pause.
    #[arg(long, value_name = "pause|rollback|continue")]
    pub update_failure_action: Option<String>,
    /// Share of updated replicas allowed to fail before the failure action, 0 to 1, like 0.2.
    /// Default 0.
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<String>,
    /// Label on the service (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The port each replica serves Prometheus metrics on, at its node's address: Prometheus
    /// finds every running replica through Warren's service discovery (`/sd/workloads`, see
    /// `warren prometheus config`). `none` stops declaring it.
    #[arg(long, value_name = "PORT|none")]
    pub metrics_port: Option<String>,
    /// The HTTP path of those metrics. Default /metrics.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<String>,
    /// Run the workload as this user (a name or number on the node). Default: an unprivileged
    /// user of each replica's own; `root` only when given.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Run the workload with this group (a name or number). Default: the user's primary group.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// A capability the workload keeps, like NET_BIND_SERVICE (repeatable; ALL keeps every
    /// one). Every other capability is dropped.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
}

/// Splits a command line like a POSIX shell would (without running one).
fn split_command(flag: &str, text: &str) -> Result<Vec<String>> {
    let argv = shell_words::split(text).map_err(|e| anyhow!("{flag}: {e} in {text:?}"))?;
    if argv.is_empty() {
        bail!("{flag}: empty command");
    }
    Ok(argv)
}

fn key_value(flag: &str, text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => bail!("{flag}: expected KEY=VALUE, got {text:?}"),
    }
}

fn secret_ref(text: &str) -> SecretRef {
    match text.split_once(':') {
        Some((name, target)) => SecretRef {
            name: name.to_owned(),
            target: target.to_owned(),
        },
        None => SecretRef::new(text),
    }
}

/// `NAME`, `NAME:TARGET`, `NAME:ro` or `NAME:TARGET:ro`.
fn volume_mount(text: &str) -> Result<VolumeMount> {
    let (rest, read_only) = match text.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    let (volume, target) = rest.split_once(':').unwrap_or((rest, rest));
    if volume.is_empty() || target.is_empty() || target.contains(':') {
        bail!("--volume: expected NAME[:TARGET][:ro], got {text:?}");
    }
    Ok(VolumeMount {
        volume: volume.to_owned(),
        target: target.to_owned(),
        read_only,
    })
}

impl SpecFlags {
    /// The workload named by `--command` or `--image`, keeping the working dir or image
    /// arguments of `current` when the kind does not change.
    fn workload(&self, current: Option<&Workload>) -> Result<Option<Workload>> {
        if let Some(command) = &self.command {
            if !self.image_args.is_empty() {
                bail!("arguments after -- are an image's command; a process's go in --command");
            }
            let working_dir = match current {
                Some(Workload::Process(process)) => process.working_dir.clone(),
                _ => None,
            };
            return Ok(Some(Workload::Process(ProcessSpec {
                command: split_command("--command", command)?,
                working_dir,
            })));
        }
        let current_image = match current {
            Some(Workload::Image(image)) => Some(image),
            _ => None,
        };
        let reference = match (&self.image, current_image) {
            (Some(reference), _) => reference.clone(),
            (None, Some(image)) if !self.image_args.is_empty() => image.reference.clone(),
            (None, _) if !self.image_args.is_empty() => {
                bail!("arguments after -- are an image's command: give --image too")
            }
            (None, _) => return Ok(None),
        };
        let args = if self.image_args.is_empty() {
            current_image
                .map(|image| image.args.clone())
                .unwrap_or_default()
        } else {
            self.image_args.clone()
        };
        Ok(Some(Workload::Image(ImageSpec { reference, args })))
    }

    fn probe(&self) -> Result<Option<Probe>> {
        Ok(if let Some(url) = &self.health_http {
            Some(Probe::Http { url: url.clone() })
        } else if let Some(port) = self.health_tcp {
            Some(Probe::Tcp { port })
        } else if let Some(command) = &self.health_exec {
            Some(Probe::Exec {
                command: split_command("--health-exec", command)?,
            })
        } else {
            None
        })
    }

    /// Applies every given flag to `spec`; flags not given leave it as it is.
    ///
    /// # Errors
    /// Malformed flag values (`--env` without `=`, an unsplittable `--command`, …).
    pub fn apply_to(&self, spec: &mut ServiceSpec) -> Result<()> {
        if let Some(workload) = self.workload(Some(&spec.workload))? {
            spec.workload = workload;
        }
        if let Some(replicas) = self.replicas {
            spec.mode = ServiceMode::Replicated { replicas };
        }
        if self.global {
            spec.mode = ServiceMode::Global;
        }
        if !self.sites.is_empty() {
            spec.placement.sites = self.sites.clone();
        }
        if !self.constraints.is_empty() {
            spec.placement.constraints = self.constraints.clone();
        }
        for entry in &self.env {
            let (key, value) = key_value("--env", entry)?;
            spec.env.insert(key, value);
        }
        if !self.secrets.is_empty() {
            // --secret replaces the files; the registry credentials stay unless
            // --registry-auth names others.
            let registry_auth = spec
                .secrets
                .iter()
                .filter(|s| s.is_registry_auth())
                .cloned();
            let files = self.secrets.iter().map(|s| secret_ref(s));
            spec.secrets = files.chain(registry_auth).collect();
        }
        if let Some(name) = &self.registry_auth {
            spec.secrets.retain(|s| !s.is_registry_auth());
            spec.secrets.push(SecretRef::registry_auth(name));
        }
        if !self.volumes.is_empty() {
            spec.volumes = self
                .volumes
                .iter()
                .map(|v| volume_mount(v))
                .collect::<Result<_>>()?;
        }
        if !self.ports.is_empty() {
            spec.ports = self.ports.clone();
        }
        if let Some(probe) = self.probe()? {
            spec.health = Some(match spec.health.take() {
                Some(current) => HealthCheck { probe, ..current },
                None => HealthCheck::new(probe),
            });
        }
        if let Some(condition) = self.restart {
            spec.restart.condition = condition;
        }
        if let Some(on_disconnect) = self.on_disconnect {
            spec.on_disconnect = on_disconnect;
        }
        self.apply_update_flags(&mut spec.update)?;
        self.apply_metrics_flags(&mut spec.metrics)?;
        for entry in &self.labels {
            let (key, value) = key_value("--label", entry)?;
            spec.labels.insert(key, value);
        }
        if let Some(user) = &self.user {
            spec.user = Some(user.clone());
        }
        if let Some(group) = &self.group {
            spec.group = Some(group.clone());
        }
        if !self.cap_add.is_empty() {
            spec.cap_add = self.cap_add.clone();
        }
        Ok(())
    }

    /// `--metrics-port` and `--metrics-path`, onto the spec's metrics endpoint.
    fn apply_metrics_flags(&self, metrics: &mut Option<MetricsEndpoint>) -> Result<()> {
        match self.metrics_port.as_deref() {
            Some("none") => *metrics = None,
            Some(port) => {
                let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(|| {
                    anyhow!("--metrics-port: expected a port 1-65535 or none, got {port:?}")
                })?;
                let path = metrics.take().map(|m| m.path);
                *metrics = Some(MetricsEndpoint {
                    port,
                    path: path.unwrap_or_else(|| warren_api::service::DEFAULT_METRICS_PATH.into()),
                });
            }
            None => {}
        }
        if let Some(path) = &self.metrics_path {
            match metrics {
                Some(endpoint) => endpoint.path.clone_from(path),
                None => bail!(
                    "--metrics-path: the service declares no metrics port; give --metrics-port too"
                ),
            }
        }
        Ok(())
    }

    /// The `--update-*` flags given, onto `update`.
    fn apply_update_flags(&self, update: &mut warren_api::UpdateConfig) -> Result<()> {
        if let Some(parallelism) = self.update_parallelism {
            update.parallelism = parallelism;
        }
        if let Some(delay) = &self.update_delay {
            update.delay_ms = warren_api::parse_duration_ms(delay)
                .map_err(|e| anyhow!("--update-delay: {}", e.message))?;
        }
        if let Some(monitor) = &self.update_monitor {
            update.monitor_ms = warren_api::parse_duration_ms(monitor)
                .map_err(|e| anyhow!("--update-monitor: {}", e.message))?;
        }
        if let Some(action) = &self.update_failure_action {
            update.failure_action = action
                .parse()
                .map_err(|e: ValidationError| anyhow!("--update-failure-action: {}", e.message))?;
        }
        if let Some(ratio) = &self.update_max_failure_ratio {
            update.max_failure_ratio = ratio.parse().map_err(|e: ValidationError| {
                anyhow!("--update-max-failure-ratio: {}", e.message)
            })?;
        }
        Ok(())
    }

    /// A new spec from the flags (`service create`).
    ///
    /// # Errors
    /// Malformed flags, or a spec that fails validation (named by its flag).
    pub fn to_spec(&self, name: &str) -> Result<ServiceSpec> {
        let name = ServiceName::new(name).map_err(|e| anyhow!("service name: {}", e.message))?;
        let workload = self
            .workload(None)?
            .ok_or_else(|| anyhow!("give --command CMD or --image REF"))?;
        let mut spec = ServiceSpec::new(name, workload);
        self.apply_to(&mut spec)?;
        validate(&spec)?;
        Ok(spec)
    }
}

/// Validates a spec built from flags; the message names the flag that set the bad field.
///
/// # Errors
/// The first problem, as `invalid service spec: FIELD: WHY (from --FLAG)`.
pub fn validate(spec: &ServiceSpec) -> Result<()> {
    spec.validate().map_err(|error| {
        let flag = flag_of(&error);
        match flag {
            Some(flag) => anyhow!("invalid service spec: {error} (from {flag})"),
            None => anyhow!("invalid service spec: {error}"),
        }
    })
}

/// Which flag sets the field an error names.
fn flag_of(error: &ValidationError) -> Option<&'static str> {
    let root = error
        .field
        .split(['.', '['])
        .next()
        .unwrap_or(error.field.as_str());
    let second = error.field.split('.').nth(1).unwrap_or("");
    Some(match (root, second) {
        ("workload", s) if s.starts_with("process") => "--command",
        ("workload", _) => "--image",
        ("mode", _) => "--replicas",
        ("placement", s) if s.starts_with("sites") => "--site",
        ("placement", _) => "--constraint",
        ("env", _) => "--env",
        ("ports", _) => "--port",
        ("health", _) => "--health-*",
        ("restart", _) => "--restart",
        ("on_disconnect", _) => "--on-disconnect",
        ("secrets", _) if error.message.starts_with("registry credentials") => "--registry-auth",
        ("secrets", _) => "--secret",
        ("volumes", _) => "--volume",
        ("update", s) if s.starts_with("delay") => "--update-delay",
        ("update", s) if s.starts_with("monitor") => "--update-monitor",
        ("update", _) => "--update-parallelism",
        ("labels", _) => "--label",
        ("user", _) => "--user",
        ("group", _) => "--group",
        ("cap_add", _) => "--cap-add",
        ("metrics", "path") => "--metrics-path",
        ("metrics", _) => "--metrics-port",
        _ => return None,
    })
}

/// Runs `warren service …`.
pub async fn run(client: &Client, format: OutputFormat, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Create { name, flags } => {
            let spec = flags.to_spec(&name)?;
            let answer = client.request_json(Route::CreateService, &spec).await?;
            print_write(format, &answer, |r| {
                format!(
                    "service {name} created (version {}, revision {})",
                    r.version.unwrap_or(1),
                    r.revision
                )
            })?;
            warn_if_pending(client, &name).await;
            Ok(())
        }
        ServiceCommand::Ls => print_read(
            format,
            &client.request(Route::ListServices).await?,
            |s: &Vec<ServiceInfo>| render_services(s),
        ),
        ServiceCommand::Inspect { name } => {
            let answer = client.request(Route::GetService { service: &name }).await?;
            match format {
                OutputFormat::Json => crate::output::out(&format!("{}\n", answer.text())),
                OutputFormat::Table => crate::output::out(&render_service(&answer.json()?)?),
            }
            Ok(())
        }
        ServiceCommand::Ps { name } => ps(client, format, &name).await,
        ServiceCommand::Logs {
            name,
            replica,
            flags,
        } => crate::logs_cmd::run_for_service(client, format, &name, replica, &flags).await,
        ServiceCommand::Scale {
            name,
            replicas,
            detach,
        } => scale(client, format, &name, replicas, detach).await,
        ServiceCommand::Update {
            name,
            if_version,
            detach,
            flags,
            removals,
        } => {
            let edit = Edit {
                flags: &flags,
                removals: &removals,
                if_version,
                detach,
            };
            update(client, format, &name, &edit).await
        }
        ServiceCommand::Rollback { name, detach } => rollback(client, format, &name, detach).await,
        ServiceCommand::Rm { name } => {
            let answer = client
                .request(Route::RemoveService { service: &name })
                .await?;
            print_write(format, &answer, |r| {
                format!("service {name} removed (revision {})", r.revision)
            })
        }
    }
}

/// `service scale`, then its rollout followed unless `detach`.
async fn scale(
    client: &Client,
    format: OutputFormat,
    name: &str,
    replicas: u32,
    detach: bool,
) -> Result<()> {
    let route = Route::ScaleService { service: name };
    let answer = client
        .request_json(route, &ScaleRequest { replicas })
        .await?;
    print_write(format, &answer, |r| {
        if r.changed {
            format!(
                "service {name} scaled to {replicas} (revision {})",
                r.revision
            )
        } else {
            format!("service {name} already has {replicas} replicas")
        }
    })?;
    follow_write(client, format, name, &answer, detach).await
}

/// `service rollback`, then its rollout followed unless `detach`.
async fn rollback(client: &Client, format: OutputFormat, name: &str, detach: bool) -> Result<()> {
    let answer = client
        .request(Route::RollbackService { service: name })
        .await?;
    print_write(format, &answer, |r| match r.version {
        Some(version) => format!(
            "service {name} rolled back (now version {version}, revision {})",
            r.revision
        ),
        None => format!("service {name} rolled back (revision {})", r.revision),
    })?;
    follow_write(client, format, name, &answer, detach).await
}

/// What `service update` takes away (its flags besides `create`'s).
#[derive(Debug, Default, clap::Args)]
pub struct Removals {
    /// Remove an environment variable (repeatable).
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Remove the health check.
    #[arg(long, conflicts_with_all = ["health_http", "health_tcp", "health_exec"])]
    pub no_health: bool,
    /// Go back to the default user: one of each replica's own.
    #[arg(long, conflicts_with = "user")]
    pub no_user: bool,
    /// Go back to the user's primary group.
    #[arg(long, conflicts_with = "group")]
    pub no_group: bool,
    /// Keep no capability.
    #[arg(long, conflicts_with = "cap_add")]
    pub no_cap_add: bool,
}

/// What `service update` changes, and the version it must find.
struct Edit<'a> {
    flags: &'a SpecFlags,
    removals: &'a Removals,
    if_version: Option<u64>,
    /// Return without following the rollout.
    detach: bool,
}

/// `service update`: the current spec, the flags on top, one PUT if anything changed, made
/// on condition that the service is still at the version read (or `--if-version`).
async fn update(client: &Client, format: OutputFormat, name: &str, edit: &Edit<'_>) -> Result<()> {
    let Edit {
        flags,
        removals,
        if_version,
        detach,
    } = *edit;
    let current: ServiceInfo = client
        .request(Route::GetService { service: name })
        .await?
        .json()?;
    if let Some(expected) = if_version
        && expected != current.version
    {
        bail!(
            "service {name} is at version {}, not {expected} (--if-version): it changed since \
             you looked; see `warren service inspect {name}`",
            current.version
        );
    }
    let mut spec = current.spec.clone();
    flags.apply_to(&mut spec)?;
    for key in &removals.env_rm {
        spec.env.remove(key);
    }
    for key in &removals.label_rm {
        spec.labels.remove(key);
    }
    if removals.no_health {
        spec.health = None;
    }
    if removals.no_user {
        spec.user = None;
    }
    if removals.no_group {
        spec.group = None;
    }
    if removals.no_cap_add {
        spec.cap_add.clear();
    }
    validate(&spec)?;
    // The same spec sent again resumes a paused rollout (docs/rollouts.md).
    let paused = current
        .rollout
        .as_ref()
        .is_some_and(|r| r.state == "paused");
    if spec == current.spec && !paused {
        eprintln!("service {name} unchanged: the flags do not change its spec");
        return Ok(());
    }
    let answer = client
        .request_json_if_version(Route::PutService { service: name }, &spec, current.version)
        .await?;
    print_write(format, &answer, |r| {
        format!(
            "service {name} updated to version {} (revision {})",
            r.version.unwrap_or(current.version + 1),
            r.revision
        )
    })?;
    follow_write(client, format, name, &answer, detach).await
}

/// After a write to service `name`: unless `detach`, follows its rollout to the end
/// ([`watch::follow`]); with `detach`, warns of replicas no node can take.
async fn follow_write(
    client: &Client,
    format: OutputFormat,
    name: &str,
    answer: &crate::client::Answer,
    detach: bool,
) -> Result<()> {
    if detach {
        warn_if_pending(client, name).await;
        return Ok(());
    }
    let write: WriteResult = answer.json()?;
    let version = match write.version {
        Some(version) => version,
        None => {
            let info: ServiceInfo = client
                .request(Route::GetService { service: name })
                .await?
                .json()?;
            info.version
        }
    };
    watch::follow(client, format, name, version).await
}

/// `N replica(s) pending: WHY` when some of the service's replicas cannot be placed.
fn pending_text(info: &ServiceInfo) -> Option<String> {
    if info.unschedulable == 0 {
        return None;
    }
    let why = info
        .pending_reason
        .as_deref()
        .or(info.pinned.as_deref())
        .unwrap_or("no node matches its placement");
    let count = info.unschedulable;
    let noun = if count == 1 { "replica" } else { "replicas" };
    Some(format!("{count} {noun} pending: {why}"))
}

/// [`pending_text`] of service `name` as control has it now (nothing when it cannot be read).
async fn pending_line(client: &Client, name: &str) -> Option<String> {
    let answer = client
        .request(Route::GetService { service: name })
        .await
        .ok()?;
    pending_text(&answer.json().ok()?)
}

/// Says on stderr when a write left replicas that no node can take: the write stands (a node
/// may join later), but the operator should not wait for them in silence.
async fn warn_if_pending(client: &Client, name: &str) {
    if let Some(line) = pending_line(client, name).await {
        eprintln!("warning: service {name}: {line}; they start once a node can take them");
    }
}

/// The workload in one short line: the command line or the image reference.
pub fn workload_text(workload: &Workload) -> String {
    let text = match workload {
        Workload::Process(process) => shell_words::join(&process.command),
        Workload::Image(image) => image.reference.clone(),
    };
    if text.chars().count() > MAX_WORKLOAD_COLUMN_CHARS {
        let head: String = text.chars().take(MAX_WORKLOAD_COLUMN_CHARS - 1).collect();
        format!("{head}…")
    } else {
        text
    }
}

/// `running/desired` (`running/placed` for a global service), as the agents report them;
/// `(stale)` when some of it rests on agents whose link is down. Placed replicas stand in for
/// a control node that does not count running ones.
fn replicas_text(info: &ServiceInfo) -> String {
    let running = info.replicas_running.unwrap_or(info.replicas_placed);
    let mut text = match info.replicas_desired {
        Some(wanted) => format!("{running}/{wanted}"),
        None => format!("{running}/{} (global)", info.replicas_placed),
    };
    if info.replicas_stale > 0 {
        text.push_str(" (stale)");
    }
    if info.unschedulable > 0 {
        text.push_str(&format!(", {} unschedulable", info.unschedulable));
    }
    if let Some(rollout) = info
        .rollout
        .as_ref()
        .filter(|r| !matches!(r.state.as_str(), "completed" | "rolled_back"))
    {
        let state = rollout.state.replace('_', " ");
        text.push_str(&format!(" ({state} {}/{})", rollout.updated, rollout.total));
    }
    text
}

/// The last rollout in one line: `version 3 paused, 1/3 updated, 1 failed: paused: …`.
fn rollout_text(rollout: Option<&RolloutInfo>) -> String {
    let Some(rollout) = rollout else {
        return "none".to_owned();
    };
    let mut text = format!(
        "version {} {}, {}/{} updated, {} failed",
        rollout.version,
        rollout.state.replace('_', " "),
        rollout.updated,
        rollout.total,
        rollout.failed
    );
    if rollout.unreachable > 0 {
        text.push_str(&format!(
            ", {} pending: node unreachable",
            rollout.unreachable
        ));
    }
    if !rollout.message.is_empty() {
        text.push_str(": ");
        text.push_str(&rollout.message);
    }
    text
}

fn render_services(services: &[ServiceInfo]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&["NAME", "MODE", "REPLICAS", "VERSION", "WORKLOAD", "UPDATED"]);
    for info in services {
        let mode = match info.spec.mode {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
        };
        let version = match info.rolling_out {
            Some(next) => format!("{} -> {next}", info.version),
            None => info.version.to_string(),
        };
        table.row(vec![
            info.spec.name.to_string(),
            mode.to_owned(),
            replicas_text(info),
            version,
            workload_text(&info.spec.workload),
            format!("{} ago", age(now, info.updated_at_ms)),
        ]);
    }
    table.render()
}

fn render_service(info: &ServiceInfo) -> Result<String> {
    let now = unix_now_ms();
    let mut out = fields(&[
        ("name", info.spec.name.to_string()),
        ("version", info.version.to_string()),
        ("rollout", rollout_text(info.rollout.as_ref())),
        ("replicas", replicas_text(info)),
        (
            "pending",
            info.pending_reason
                .clone()
                .unwrap_or_else(|| "none".to_owned()),
        ),
        (
            "placement",
            info.pinned
                .clone()
                .unwrap_or_else(|| "any node its placement allows".to_owned()),
        ),
        (
            "runs as",
            warren_api::run_as::describe(
                info.spec.user.as_deref(),
                info.spec.group.as_deref(),
                &info.spec.cap_add,
            ),
        ),
        ("created", format!("{} ago", age(now, info.created_at_ms))),
        ("updated", format!("{} ago", age(now, info.updated_at_ms))),
        (
            "rollback",
            if info.can_roll_back {
                "available"
            } else {
                "none"
            }
            .to_owned(),
        ),
    ]);
    out.push_str("---\n");
    out.push_str(&spec_document(&info.spec)?);
    Ok(out)
}

/// The spec as a `kind: Service` YAML document that `warren apply` accepts, leaving out
/// fields at their empty defaults.
///
/// # Errors
/// Serialization failures (not expected for plain data).
pub fn spec_document(spec: &ServiceSpec) -> Result<String> {
    let mut value = to_yaml_value(spec).context("encode spec")?;
    prune_defaults(&mut value);
    let mut doc = serde_norway::Mapping::new();
    doc.insert("kind".into(), "Service".into());
    if let serde_norway::Value::Mapping(fields) = value {
        doc.extend(fields);
    }
    Ok(serde_norway::to_string(&doc)?)
}

/// `service ps`: the placed replicas, then (as a table) why any wait or where they are pinned.
async fn ps(client: &Client, format: OutputFormat, name: &str) -> Result<()> {
    let route = Route::ServiceReplicas { service: name };
    let answer = client.request(route).await?;
    print_read(format, &answer, |r: &Vec<ReplicaInfo>| render_replicas(r))?;
    if format == OutputFormat::Table {
        let info: ServiceInfo = client
            .request(Route::GetService { service: name })
            .await?
            .json()?;
        print!("{}", pending_note(&info));
    }
    Ok(())
}

/// Under `service ps`: replicas that wait for no node or for the one node they may go to, and
/// why; empty when every replica is placed.
fn pending_note(info: &ServiceInfo) -> String {
    if let Some(line) = pending_text(info) {
        format!("{line}\n")
    } else if let Some(pinned) = &info.pinned {
        format!("{pinned}\n")
    } else {
        String::new()
    }
}

fn render_replicas(replicas: &[ReplicaInfo]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&[
        "ID",
        "NODE",
        "SITE",
        "VERSION",
        "DESIRED",
        "STATE",
        "PID",
        "RESTARTS",
        "HEALTH",
        "SINCE",
        "NODE STATE",
        "MESSAGE",
    ]);
    for replica in replicas {
        let mut node = if replica.node_name.is_empty() {
            replica.node.to_string()
        } else {
            replica.node_name.clone()
        };
        if replica.pinned_by.is_some() {
            node.push_str(" (pinned)");
        }
        let desired = serde_json::to_value(replica.desired)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        // A report from an agent that is cut off may be out of date: say so.
        let state = if replica.stale {
            format!("{} (last known)", replica.state)
        } else {
            replica.state.clone()
        };
        table.row(vec![
            replica.id.clone(),
            node,
            replica.site.clone(),
            replica.service_version.to_string(),
            desired,
            state,
            replica
                .pid
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            replica.restarts.to_string(),
            replica.health.clone(),
            replica
                .updated_at_ms
                .map_or_else(|| "-".to_owned(), |at| format!("{} ago", age(now, at))),
            replica.node_state.clone(),
            replica.message.clone().unwrap_or_default(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests;
pub(crate) mod watch;
