//! Services: what to run, how many, where, and how to keep it healthy.
//!
//! [`ServiceSpec`] is the operator's desired state for one service. Its
//! [`workload_hash`](ServiceSpec::workload_hash) decides whether a spec change restarts
//! running replicas or is applied in place. Validation lives in [`crate::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::{format_duration_ms, parse_duration_ms};
use crate::ids::ServiceName;
use crate::placement::Placement;
use crate::validate::{ValidationError, validate_dns_label};

/// Default for [`ServiceSpec::stop_grace_period_ms`]: 10 s between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE_PERIOD_MS: u64 = 10_000;

/// A service as stored by the control plane: the spec plus its version, which increases by
/// one on every change to the spec. Replicas record the version they were created from.
///
/// `S` is the spec's layout: [`ServiceSpec`], or an older one
/// ([`crate::older::ServiceSpecV1`]) while bytes written by an older build are decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service<S = ServiceSpec> {
    /// Starts at 1 when the service is created.
    pub version: u64,
    /// The desired state.
    pub spec: S,
}

impl<S> Service<S> {
    /// The same service with its spec converted (an older layout upgraded).
    pub fn map_spec<T>(self, f: impl FnOnce(S) -> T) -> Service<T> {
        Service {
            version: self.version,
            spec: f(self.spec),
        }
    }
}

/// The operator's desired state for one service.
///
/// In JSON every field except `name` and `workload` may be omitted and takes its default;
/// unknown fields are refused so typos do not pass silently. Postcard always carries every
/// field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique in the cluster; the DNS name `<name>.warren.`.
    pub name: ServiceName,
    /// A native process or a container image.
    pub workload: Workload,
    /// A fixed number of replicas, or one per eligible node.
    #[serde(default)]
    pub mode: ServiceMode,
    /// Where replicas may run.
    #[serde(default)]
    pub placement: Placement,
    /// Environment variables for the workload.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Ports the workload listens on, published in the service catalogue.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Health check; `None` means a running workload counts as healthy.
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// When and how fast the agent restarts an exited workload.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// What control does when the node running a replica becomes unreachable.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// Secrets exposed to the workload as files.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Volumes mounted into the workload.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Resources,
    /// Who the workload runs as: a user name or number, resolved on the agent. `None`: an
    /// unprivileged user of each replica's own; `root` only when asked for. See
    /// [`crate::run_as`].
    #[serde(default, deserialize_with = "crate::run_as::name_or_number")]
    pub user: Option<String>,
    /// The workload's group: a name or number. `None`: the user's primary group.
    #[serde(default, deserialize_with = "crate::run_as::name_or_number")]
    pub group: Option<String>,
    /// Capabilities the workload keeps (`NET_BIND_SERVICE`, without `CAP_`); every other one
    /// is dropped. `ALL` keeps every capability.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// How a spec change rolls out across replicas.
    #[serde(default)]
    pub update: UpdateConfig,
    /// Time between the stop signal and a forced kill, at most one hour.
    #[serde(default = "default_stop_grace_period_ms")]
    pub stop_grace_period_ms: u64,
    /// Operator labels on the service.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where each replica serves Prometheus metrics, if it does: service discovery lists
    /// every running replica's endpoint for Prometheus to scrape. Not part of the workload
    /// hash: setting it restarts nothing.
    #[serde(default)]
    pub metrics: Option<MetricsEndpoint>,
}

/// Where a workload serves its Prometheus metrics: a port on its node's address and an HTTP
/// path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MetricsEndpoint {
    /// 1..=65535, on the address the replica's node is reached at.
    pub port: u16,
    /// The HTTP path, starting with `/`; `/metrics` unless given.
    #[serde(default = "default_metrics_path")]
    pub path: String,
}

/// The path Prometheus scrapes unless a service says otherwise.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

fn default_metrics_path() -> String {
    DEFAULT_METRICS_PATH.to_owned()
}

fn default_stop_grace_period_ms() -> u64 {
    DEFAULT_STOP_GRACE_PERIOD_MS
}

/// The fields of a spec that the workload itself sees; see [`ServiceSpec::workload_hash`].
#[derive(Serialize)]
struct WorkloadHashInput<'a> {
    workload: &'a Workload,
    env: &'a BTreeMap<String, String>,
    ports: Vec<&'a PortSpec>,
    secrets: Vec<&'a SecretRef>,
    volumes: Vec<&'a VolumeMount>,
    resources: &'a Resources,
}

/// Who the workload runs as, hashed after [`WorkloadHashInput`]; see
/// [`ServiceSpec::workload_hash`].
#[derive(Serialize)]
struct RunAsHashInput<'a> {
    user: &'a Option<String>,
    group: &'a Option<String>,
    cap_add: Vec<&'a String>,
}

impl ServiceSpec {
    /// A spec with one replica and every other field at its default.
    pub fn new(name: ServiceName, workload: Workload) -> Self {
        ServiceSpec {
            name,
            workload,
            mode: ServiceMode::default(),
            placement: Placement::default(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            health: None,
            restart: RestartPolicy::default(),
            on_disconnect: OnDisconnect::default(),
            secrets: Vec::new(),
            volumes: Vec::new(),
            resources: Resources::default(),
            user: None,
            group: None,
            cap_add: Vec::new(),
            update: UpdateConfig::default(),
            stop_grace_period_ms: DEFAULT_STOP_GRACE_PERIOD_MS,
            labels: BTreeMap::new(),
            metrics: None,
        }
    }

    /// Whether the spec runs its workload as root with every capability and no group of its
    /// choosing: what every spec meant before `user`, `group` and `cap_add` existed.
    pub fn runs_as_root_with_every_capability(&self) -> bool {
        self.user.as_deref() == Some(crate::run_as::ROOT_USER)
            && self.group.is_none()
            && self.cap_add == [crate::run_as::ALL_CAPABILITIES]
    }

    /// A stable 64-bit hash of the fields whose change requires restarting a running replica.
    ///
    /// An agent that finds a workload already running (after its own restart, or after a
    /// partition heals) compares the hash recorded with the workload to the hash of the
    /// current spec: equal means *adopt it*, different means *replace it*. So the hash covers
    /// exactly what the running process or container was started with:
    ///
    /// - counted: `workload` (command/image, args, working dir), `env`, `ports` (container
    ///   port mappings are fixed at start), `secrets` and `volumes` (which files and mounts
    ///   exist at start), `resources` (limits are set at start), `user`, `group` and
    ///   `cap_add` (credentials are set at start);
    /// - not counted: `name` (part of the replica id already), `mode` and `placement` (which
    ///   replicas exist and where, not what they run), `health` and `restart` (the agent
    ///   applies new ones to a running workload), `on_disconnect`, `update`,
    ///   `stop_grace_period_ms` (used only when stopping) and `labels`.
    ///
    /// Ports, secrets and volumes are hashed in sorted order: reordering a list does not
    /// change what runs. A secret's *content* changing is not a spec change and does not
    /// affect the hash; the agent rewrites the file.
    ///
    /// The value is FNV-1a 64 over the postcard encoding, so it is the same on every machine
    /// and every build, as long as the encoding of these types does not change. Changing it
    /// changes every hash and makes agents restart everything after an upgrade: treat these
    /// types as part of the wire format. That is why a spec that
    /// [runs as root with every capability](Self::runs_as_root_with_every_capability) — what
    /// a spec written before `user`, `group` and `cap_add` existed becomes — hashes without
    /// them, as it did then: upgrading restarts no workload. Any other spec hashes them after
    /// the rest.
    pub fn workload_hash(&self) -> u64 {
        let mut ports: Vec<&PortSpec> = self.ports.iter().collect();
        ports.sort();
        let mut secrets: Vec<&SecretRef> = self.secrets.iter().collect();
        secrets.sort();
        let mut volumes: Vec<&VolumeMount> = self.volumes.iter().collect();
        volumes.sort();
        let input = WorkloadHashInput {
            workload: &self.workload,
            env: &self.env,
            ports,
            secrets,
            volumes,
            resources: &self.resources,
        };
        if self.runs_as_root_with_every_capability() {
            return stable_hash(&input);
        }
        let mut cap_add: Vec<&String> = self.cap_add.iter().collect();
        cap_add.sort();
        let run_as = RunAsHashInput {
            user: &self.user,
            group: &self.group,
            cap_add,
        };
        // A tuple encodes as its parts one after the other: the hash goes on from the input.
        stable_hash(&(input, run_as))
    }

    /// How many replicas the spec asks for, or `None` for a global service.
    pub fn replicas(&self) -> Option<u32> {
        match self.mode {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64 of `value`'s postcard encoding: stable across runs, machines and builds of one
/// wire version (unlike `std::hash`), without allocating the encoding.
pub fn stable_hash<T: Serialize + ?Sized>(value: &T) -> u64 {
    postcard::serialize_with_flavor(value, Fnv1a64(FNV_OFFSET_BASIS))
        .expect("postcard cannot fail on plain data with known lengths into an infallible sink")
}
/// splitmix64's finaliser: every input bit moves about half the output bits. For ordering by
/// [`stable_hash`] (rendezvous hashing), whose FNV-1a output keeps a late input byte mostly in
/// its low bits.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The [`stable_hash`] of a list whose items were encoded one by one (`count` of them, each
/// its postcard bytes): what hashing the list itself gives, from bytes already at hand.
pub fn stable_hash_of_encoded_list<'a>(
    count: usize,
    items: impl IntoIterator<Item = &'a [u8]>,
) -> u64 {
    let mut hash = Fnv1a64(FNV_OFFSET_BASIS);
    let mut length = Vec::new();
    crate::wire::push_varint(&mut length, count as u64);
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash.0 = (hash.0 ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
    };
    feed(&length);
    for item in items {
        feed(item);
    }
    hash.0
}

/// A postcard output "flavor" that hashes bytes instead of storing them.
struct Fnv1a64(u64);

impl postcard::ser_flavors::Flavor for Fnv1a64 {
    type Output = u64;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<u64> {
        Ok(self.0)
    }
}

/// What to run: exactly one of a native process or a container image.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// A native process started by the agent.
    Process(ProcessSpec),
    /// A container image run through containerd.
    Image(ImageSpec),
}

/// A native process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// argv: the program, then its arguments; never empty. Not run through a shell.
    pub command: Vec<String>,
    /// Working directory. `None`: the replica's own directory. A relative path is taken
    /// inside that directory and may not leave it (no `..`); an absolute one must be
    /// normalized and may not be `/`, and the agent refuses one in its own data dir or in
    /// another replica's directory. `$WARREN_VOLUME_<TARGET>`, literally, is the directory
    /// of the spec's volume mounted at that target.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// A container image.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Image reference, e.g. `registry.example.com/app:1.2` or `app@sha256:…`.
    pub reference: String,
    /// Arguments appended to the image's entrypoint.
    #[serde(default)]
    pub args: Vec<String>,
}

/// How many replicas run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    /// A fixed number of replicas (0 is allowed: scaled down, not deleted).
    Replicated {
        /// At most [`crate::validate::MAX_REPLICAS`].
        replicas: u32,
    },
    /// One replica on every node the placement allows.
    Global,
}

impl Default for ServiceMode {
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

/// Transport protocol of a port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port the workload listens on.
///
/// Text form `[NAME:]PORT[/PROTOCOL]`: `8080`, `8080/udp`, `http:8080/tcp`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Optional name (a DNS label), used for SRV records `_name._proto.service.warren.`.
    #[serde(default)]
    pub name: Option<String>,
    /// 1..=65535.
    pub port: u16,
    /// TCP or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}:")?;
        }
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

impl FromStr for PortSpec {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| {
            ValidationError::new(
                "port",
                format!("invalid port {s:?}: {why} (expected [NAME:]PORT[/tcp|/udp])"),
            )
        };
        let (name, rest) = match s.split_once(':') {
            Some((name, rest)) => {
                validate_dns_label("name", name).map_err(|e| err(e.to_string()))?;
                (Some(name.to_owned()), rest)
            }
            None => (None, s),
        };
        let (port, protocol) = match rest.split_once('/') {
            Some((port, "tcp")) => (port, Protocol::Tcp),
            Some((port, "udp")) => (port, Protocol::Udp),
            Some((_, other)) => return Err(err(format!("unknown protocol {other:?}"))),
            None => (rest, Protocol::Tcp),
        };
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(err("port must be a number from 1 to 65535".to_owned())),
            Ok(port) => port,
        };
        Ok(PortSpec {
            name,
            port,
            protocol,
        })
    }
}

/// A health check run by the agent against each replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// What to probe.
    pub probe: Probe,
    /// Time between probes; at least 1 s.
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    /// Time a probe may take; less than `interval_ms`.
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures before the replica is unhealthy.
    #[serde(default = "default_health_retries")]
    pub retries: u32,
    /// Grace after start during which failures do not count.
    #[serde(default)]
    pub start_period_ms: u64,
}

fn default_health_interval_ms() -> u64 {
    HealthCheck::DEFAULT_INTERVAL_MS
}
fn default_health_timeout_ms() -> u64 {
    HealthCheck::DEFAULT_TIMEOUT_MS
}
fn default_health_retries() -> u32 {
    HealthCheck::DEFAULT_RETRIES
}

impl HealthCheck {
    /// Default probe interval: 10 s.
    pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
    /// Default probe timeout: 5 s.
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
    /// Default failures before unhealthy: 3.
    pub const DEFAULT_RETRIES: u32 = 3;

    /// A check with the defaults: every 10 s, 5 s timeout, 3 retries, no start period.
    pub fn new(probe: Probe) -> Self {
        HealthCheck {
            probe,
            interval_ms: Self::DEFAULT_INTERVAL_MS,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retries: Self::DEFAULT_RETRIES,
            start_period_ms: 0,
        }
    }
}

/// What a health check probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET url` must answer 2xx or 3xx.
    Http {
        /// `http://` or `https://` URL, usually on 127.0.0.1.
        url: String,
    },
    /// A TCP connect to the replica's port must succeed.
    Tcp {
        /// 1..=65535.
        port: u16,
    },
    /// A command run next to the workload must exit 0.
    Exec {
        /// argv; not run through a shell.
        command: Vec<String>,
    },
}

/// When the agent restarts an exited workload. Restarts need no control plane.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Which exits trigger a restart.
    pub condition: RestartCondition,
    /// First backoff; doubled after each consecutive failure.
    pub backoff_initial_ms: u64,
    /// Backoff ceiling.
    pub backoff_max_ms: u64,
    /// Give up after this many consecutive restarts; `None` means never give up.
    pub max_attempts: Option<u32>,
}

impl Default for RestartPolicy {
    /// Always restart, backing off from 1 s to 60 s, forever.
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Always,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            max_attempts: None,
        }
    }
}

/// Which exits trigger a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartCondition {
    /// Any exit.
    #[default]
    Always,
    /// A non-zero exit or death by signal.
    OnFailure,
    /// Never; a finished workload stays `completed` or `failed`.
    Never,
}

impl RestartCondition {
    /// `always`, `on-failure` or `never`, as the CLI spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::Always => "always",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Never => "never",
        }
    }
}

impl FromStr for RestartCondition {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(RestartCondition::Always),
            "on-failure" | "on_failure" => Ok(RestartCondition::OnFailure),
            "never" => Ok(RestartCondition::Never),
            _ => Err(ValidationError::new(
                "restart",
                format!("unknown restart condition {s:?} (expected always, on-failure or never)"),
            )),
        }
    }
}

/// What control does with a replica whose node becomes unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// Leave it where it is; the cut-off agent keeps running it. The right choice for
    /// workloads tied to their box (sensors, local caches).
    #[default]
    Keep,
    /// Start a replacement elsewhere once the node has been unreachable for `after_ms`. The
    /// stale copy is stopped when the node comes back.
    Reschedule {
        /// How long to wait, at least 1 s.
        after_ms: u64,
    },
}

impl fmt::Display for OnDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnDisconnect::Keep => f.write_str("keep"),
            OnDisconnect::Reschedule { after_ms } => {
                write!(f, "reschedule={}", format_duration_ms(*after_ms))
            }
        }
    }
}

impl FromStr for OnDisconnect {
    type Err = ValidationError;

    /// Parses `keep` or `reschedule=DURATION` (`reschedule=5m`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "keep" {
            return Ok(OnDisconnect::Keep);
        }
        match s.strip_prefix("reschedule=") {
            Some(duration) => parse_duration_ms(duration)
                .map(|after_ms| OnDisconnect::Reschedule { after_ms })
                .map_err(|e| ValidationError::new("on_disconnect", e.message)),
            None => Err(ValidationError::new(
                "on_disconnect",
                format!("expected keep or reschedule=DURATION (like reschedule=5m), got {s:?}"),
            )),
        }
    }
}

/// A secret exposed to the workload as the file `<secrets dir>/<target>` on tmpfs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name (a DNS label).
    pub name: String,
    /// File name under the secrets directory; a plain name, no `/`.
    pub target: String,
}

/// The target that makes a [`SecretRef`] the service's registry credentials instead of a
/// file: the agent pulls the service's image with the secret's `user:password` and never
/// shows it to the workload. A reference, not a field of its own, so that the credentials
/// reach the agent as every secret does, sealed for the node, and specs keep their layout.
pub const REGISTRY_AUTH_TARGET: &str = ".registry-auth";

impl SecretRef {
    /// A reference whose file is named after the secret.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        SecretRef {
            target: name.clone(),
            name,
        }
    }

    /// A reference naming the secret that holds the registry credentials of the service's
    /// image (`user:password`): `--registry-auth NAME`, `registry_auth: NAME`.
    pub fn registry_auth(name: impl Into<String>) -> Self {
        SecretRef {
            name: name.into(),
            target: REGISTRY_AUTH_TARGET.to_owned(),
        }
    }

    /// Whether this reference names registry credentials rather than a file.
    pub fn is_registry_auth(&self) -> bool {
        self.target == REGISTRY_AUTH_TARGET
    }
}

/// A volume made available to the workload under the name `target`: a process finds its
/// directory in `WARREN_VOLUME_<TARGET>` (upper-cased, other characters as `_`), a container
/// at `/volumes/<target>` (and in the same variable). See `docs/volumes.md`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name (a DNS label).
    pub volume: String,
    /// The name the workload knows the mount by; a plain name, no `/`.
    pub target: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Resource limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Memory limit in bytes, at least 1 MiB.
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core (1000 = one core).
    pub cpu_millis: Option<u32>,
}

/// Default for [`UpdateConfig::monitor_ms`]: 5 s, as Docker Swarm's `update_config`.
pub const DEFAULT_UPDATE_MONITOR_MS: u64 = 5_000;

/// How a spec change rolls out: in batches of `parallelism` replicas; each batch's new
/// replicas must run (and pass their health check, when the service has one) for `monitor_ms`
/// before the next batch goes, `delay_ms` later. A new replica that fails within its monitor
/// window counts as a failure; past `max_failure_ratio` of the replicas updated so far, the
/// rollout does `failure_action`. See docs/rollouts.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Replicas replaced at a time; at least 1.
    pub parallelism: u32,
    /// Pause between batches, after the batch's monitor window.
    pub delay_ms: u64,
    /// How long each new replica must stay running (and healthy) before its batch counts as
    /// done; at most one hour.
    pub monitor_ms: u64,
    /// What the rollout does when too many new replicas fail.
    pub failure_action: FailureAction,
    /// The share of updated replicas allowed to fail before `failure_action`: 0 to 1.
    pub max_failure_ratio: FailureRatio,
}

impl Default for UpdateConfig {
    /// One replica at a time, no pause, 5 s of monitoring, pause at the first failure.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            monitor_ms: DEFAULT_UPDATE_MONITOR_MS,
            failure_action: FailureAction::default(),
            max_failure_ratio: FailureRatio::ZERO,
        }
    }
}

/// What a rollout does when its new replicas fail past [`UpdateConfig::max_failure_ratio`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop moving replicas; a later update or rollback resumes or replaces the rollout.
    #[default]
    Pause,
    /// Go back to the previous spec, itself rolled out.
    Rollback,
    /// Carry on with the next batch.
    Continue,
}

impl FailureAction {
    /// `pause`, `rollback` or `continue`, as YAML, JSON and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureAction::Pause => "pause",
            FailureAction::Rollback => "rollback",
            FailureAction::Continue => "continue",
        }
    }
}

impl FromStr for FailureAction {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "rollback" => Ok(FailureAction::Rollback),
            "continue" => Ok(FailureAction::Continue),
            other => Err(ValidationError::new(
                "failure_action",
                format!("unknown action {other:?} (expected pause, rollback or continue)"),
            )),
        }
    }
}

/// A share from 0 to 1 in thousandths, so that specs keep `Eq` and `Hash` and encode exactly
/// in postcard (an integer). JSON and YAML read and write it as a number (`0.2`); finer
/// fractions round to the nearest thousandth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FailureRatio(u16);

impl FailureRatio {
    /// No failure allowed.
    pub const ZERO: FailureRatio = FailureRatio(0);
    /// The largest value: 1000 thousandths.
    pub const MAX_PER_MILLE: u16 = 1000;

    /// From thousandths; `None` above [`Self::MAX_PER_MILLE`].
    pub fn from_per_mille(per_mille: u16) -> Option<Self> {
        (per_mille <= Self::MAX_PER_MILLE).then_some(FailureRatio(per_mille))
    }

    /// From a fraction in [0, 1], rounded to thousandths.
    ///
    /// # Errors
    /// The value is not a number from 0 to 1.
    pub fn from_fraction(fraction: f64) -> Result<Self, ValidationError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(ValidationError::new(
                "max_failure_ratio",
                format!("must be a number from 0 to 1, not {fraction}"),
            ));
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked to lie in [0, 1] above, so the product is in [0, 1000]"
        )]
        Ok(FailureRatio((fraction * 1000.0).round() as u16))
    }

    /// Thousandths.
    pub fn per_mille(self) -> u16 {
        self.0
    }

    /// Whether `failed` out of `updated` is more than this share.
    pub fn exceeded_by(self, failed: u32, updated: u32) -> bool {
        u64::from(failed) * 1000 > u64::from(self.0) * u64::from(updated)
    }
}

impl fmt::Display for FailureRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}.{:03}", self.0 / 1000, self.0 % 1000);
        f.write_str(text.trim_end_matches('0').trim_end_matches('.'))
    }
}

impl FromStr for FailureRatio {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fraction: f64 = s.trim().parse().map_err(|_| {
            ValidationError::new(
                "max_failure_ratio",
                format!("{s:?} is not a number (expected 0 to 1, e.g. 0.2)"),
            )
        })?;
        Self::from_fraction(fraction)
    }
}

impl Serialize for FailureRatio {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_f64(f64::from(self.0) / 1000.0)
        } else {
            serializer.serialize_u16(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for FailureRatio {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let fraction = f64::deserialize(deserializer)?;
            FailureRatio::from_fraction(fraction).map_err(|e| D::Error::custom(e.to_string()))
        } else {
            let per_mille = u16::deserialize(deserializer)?;
            FailureRatio::from_per_mille(per_mille).ok_or_else(|| {
                D::Error::custom(format!(
                    "max_failure_ratio: {per_mille} thousandths is more than 1"
                ))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        let mut spec = ServiceSpec::new(
            ServiceName::new("web").unwrap(),
            Workload::Process(ProcessSpec {
                command: vec!["/bin/web".to_owned(), "--port=8080".to_owned()],
                working_dir: None,
            }),
        );
        spec.env.insert("MODE".to_owned(), "prod".to_owned());
        spec.ports = vec!["http:8080".parse().unwrap(), "53/udp".parse().unwrap()];
        spec
    }

    /// A named change to a spec.
    type Edit = (&'static str, fn(&mut ServiceSpec));

    #[test]
    fn workload_hash_ignores_non_workload_fields() {
        let base = spec();
        let hash = base.workload_hash();
        let edits: Vec<Edit> = vec![
            ("replicas", |s| {
                s.mode = ServiceMode::Replicated { replicas: 7 }
            }),
            ("global", |s| s.mode = ServiceMode::Global),
            ("placement", |s| s.placement.sites.push("edge-a".to_owned())),
            ("update", |s| s.update.parallelism = 3),
            ("update monitor", |s| s.update.monitor_ms = 1),
            ("update failure action", |s| {
                s.update.failure_action = FailureAction::Rollback
            }),
            ("labels", |s| {
                s.labels.insert("team".to_owned(), "x".to_owned());
            }),
            ("health", |s| {
                s.health = Some(HealthCheck::new(Probe::Tcp { port: 8080 }))
            }),
            ("restart", |s| s.restart.condition = RestartCondition::Never),
            ("on_disconnect", |s| {
                s.on_disconnect = OnDisconnect::Reschedule { after_ms: 60_000 }
            }),
            ("stop_grace", |s| s.stop_grace_period_ms = 1),
            ("port order", |s| s.ports.reverse()),
        ];
        for (what, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_eq!(
                changed.workload_hash(),
                hash,
                "{what} must not change the hash"
            );
        }
    }

    #[test]
    fn workload_hash_tracks_workload_fields() {
        let base = spec();
        let hash = base.workload_hash();
        let edits: Vec<Edit> = vec![
            ("env value", |s| {
                s.env.insert("MODE".to_owned(), "dev".to_owned());
            }),
            ("env added", |s| {
                s.env.insert("X".to_owned(), String::new());
            }),
            ("command", |s| {
                s.workload = Workload::Process(ProcessSpec {
                    command: vec!["/bin/web".to_owned()],
                    working_dir: None,
                })
            }),
            ("image", |s| {
                s.workload = Workload::Image(ImageSpec {
                    reference: "web:1".to_owned(),
                    args: vec![],
                })
            }),
            ("ports", |s| s.ports[0].port = 8081),
            ("secrets", |s| s.secrets.push(SecretRef::new("db"))),
            ("volumes", |s| {
                s.volumes.push(VolumeMount {
                    volume: "data".to_owned(),
                    target: "data".to_owned(),
                    read_only: false,
                })
            }),
            ("resources", |s| s.resources.memory_bytes = Some(1 << 30)),
            ("user", |s| s.user = Some("app".to_owned())),
            ("group", |s| s.group = Some("app".to_owned())),
            ("cap_add", |s| s.cap_add = vec!["NET_RAW".to_owned()]),
            ("root with every capability", |s| {
                s.user = Some("root".to_owned());
                s.cap_add = vec!["ALL".to_owned()];
            }),
        ];
        for (what, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_ne!(changed.workload_hash(), hash, "{what} must change the hash");
        }
    }

    #[test]
    fn workload_hash_is_stable() {
        // Pinned: if these change, every agent restarts every workload after an upgrade.
        // Change them only on purpose, and say so in the release notes. Root with every
        // capability hashes as every spec did before `user`, `group` and `cap_add` existed.
        let mut root = spec();
        root.user = Some("root".to_owned());
        root.cap_add = vec!["ALL".to_owned()];
        assert_eq!(root.workload_hash(), 0xcf30_a624_5a8b_335a);
        assert_eq!(spec().workload_hash(), PINNED_DEFAULT_USER_HASH);
        // Capabilities are a set: their order does not matter.
        let mut two = spec();
        two.cap_add = vec!["NET_RAW".to_owned(), "NET_ADMIN".to_owned()];
        let mut swapped = two.clone();
        swapped.cap_add.reverse();
        assert_eq!(two.workload_hash(), swapped.workload_hash());
    }

    const PINNED_DEFAULT_USER_HASH: u64 = 0xbea5_2a87_5624_991e;

    #[test]
    fn fnv1a64_known_vectors() {
        use postcard::ser_flavors::Flavor;
        let hash = |bytes: &[u8]| {
            let mut fnv = Fnv1a64(FNV_OFFSET_BASIS);
            for byte in bytes {
                fnv.try_push(*byte).unwrap();
            }
            fnv.finalize().unwrap()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    fn check_port(input: &str, expected: Result<&str, &str>) {
        match (input.parse::<PortSpec>(), expected) {
            (Ok(port), Ok(want)) => assert_eq!(port.to_string(), want, "{input}"),
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "{input}"),
            (got, want) => panic!("{input}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn port_parse_table() {
        check_port("8080", Ok("8080/tcp"));
        check_port("8080/udp", Ok("8080/udp"));
        check_port("http:8080/tcp", Ok("http:8080/tcp"));
        check_port("dns:53/udp", Ok("dns:53/udp"));
        check_port("65535", Ok("65535/tcp"));
        check_port(
            "0",
            Err(
                r#"port: invalid port "0": port must be a number from 1 to 65535 (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
        check_port(
            "65536",
            Err(
                r#"port: invalid port "65536": port must be a number from 1 to 65535 (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
        check_port(
            "8080/sctp",
            Err(
                r#"port: invalid port "8080/sctp": unknown protocol "sctp" (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
        check_port(
            "HTTP:80",
            Err(
                r#"port: invalid port "HTTP:80": name: may contain only lowercase letters, digits and '-' (found 'H') (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
        check_port(
            ":80",
            Err(
                r#"port: invalid port ":80": name: must be 1 to 63 characters, got 0 (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
        check_port(
            "web",
            Err(
                r#"port: invalid port "web": port must be a number from 1 to 65535 (expected [NAME:]PORT[/tcp|/udp])"#,
            ),
        );
    }

    #[test]
    fn on_disconnect_parse() {
        assert_eq!("keep".parse::<OnDisconnect>().unwrap(), OnDisconnect::Keep);
        let five_min = OnDisconnect::Reschedule { after_ms: 300_000 };
        assert_eq!("reschedule=5m".parse::<OnDisconnect>().unwrap(), five_min);
        assert_eq!(five_min.to_string(), "reschedule=5m");
        assert_eq!(
            "reschedule=5"
                .parse::<OnDisconnect>()
                .unwrap_err()
                .to_string(),
            r#"on_disconnect: invalid duration "5": missing unit (ms, s, m, h or d)"#
        );
        assert_eq!(
            "move".parse::<OnDisconnect>().unwrap_err().to_string(),
            r#"on_disconnect: expected keep or reschedule=DURATION (like reschedule=5m), got "move""#
        );
    }

    #[test]
    fn restart_condition_parse() {
        for c in [
            RestartCondition::Always,
            RestartCondition::OnFailure,
            RestartCondition::Never,
        ] {
            assert_eq!(c.as_str().parse::<RestartCondition>().unwrap(), c);
        }
        assert!("sometimes".parse::<RestartCondition>().is_err());
    }

    #[test]
    fn json_defaults() {
        let spec: ServiceSpec =
            serde_json::from_str(r#"{"name":"web","workload":{"image":{"reference":"nginx:1"}}}"#)
                .unwrap();
        assert_eq!(
            spec,
            ServiceSpec::new(
                ServiceName::new("web").unwrap(),
                Workload::Image(ImageSpec {
                    reference: "nginx:1".to_owned(),
                    args: vec![]
                })
            )
        );
        let err = serde_json::from_str::<ServiceSpec>(
            r#"{"name":"web","workload":{"image":{"reference":"nginx:1"}},"replica":3}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `replica`"), "{err}");
    }

    #[test]
    fn users_and_groups_read_as_names_or_numbers() {
        let spec: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","workload":{"image":{"reference":"nginx:1"}},
                "user":1000,"group":"staff","cap_add":["NET_BIND_SERVICE"]}"#,
        )
        .unwrap();
        assert_eq!(spec.user.as_deref(), Some("1000"));
        assert_eq!(spec.group.as_deref(), Some("staff"));
        assert_eq!(spec.cap_add, ["NET_BIND_SERVICE"]);
        let null: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","workload":{"image":{"reference":"nginx:1"}},"user":null}"#,
        )
        .unwrap();
        assert_eq!(null.user, None);
        let err = serde_json::from_str::<ServiceSpec>(
            r#"{"name":"web","workload":{"image":{"reference":"nginx:1"}},"user":[1]}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a user or group name, or a number"),
            "{err}"
        );
        // Postcard reads back what it wrote, numbers as strings.
        let bytes = postcard::to_allocvec(&spec).unwrap();
        assert_eq!(postcard::from_bytes::<ServiceSpec>(&bytes).unwrap(), spec);
    }

    /// The update config in JSON as operators write it; bad ratios and actions are one-line
    /// errors that name the field.
    #[test]
    fn update_config_reads_ratios_as_numbers() {
        let update: UpdateConfig = serde_json::from_str(
            r#"{"monitor_ms":10000,"failure_action":"rollback","max_failure_ratio":0.2}"#,
        )
        .unwrap();
        assert_eq!(update.monitor_ms, 10_000);
        assert_eq!(update.failure_action, FailureAction::Rollback);
        assert_eq!(update.max_failure_ratio.per_mille(), 200);
        assert_eq!(update.parallelism, 1, "the rest at their defaults");
        assert_eq!(
            serde_json::to_value(update).unwrap()["max_failure_ratio"],
            serde_json::json!(0.2)
        );
        let err = serde_json::from_str::<UpdateConfig>(r#"{"max_failure_ratio":1.5}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_failure_ratio: must be a number from 0 to 1, not 1.5"),
            "{err}"
        );
        let err = serde_json::from_str::<UpdateConfig>(r#"{"failure_action":"stop"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `stop`"), "{err}");
        // Postcard carries thousandths and refuses more than 1.
        let bytes = postcard::to_allocvec(&FailureRatio::from_per_mille(1000).unwrap()).unwrap();
        assert_eq!(
            postcard::from_bytes::<FailureRatio>(&bytes)
                .unwrap()
                .per_mille(),
            1000
        );
        let too_much = postcard::to_allocvec(&1001u16).unwrap();
        assert!(postcard::from_bytes::<FailureRatio>(&too_much).is_err());
    }

    #[test]
    fn failure_ratio_compares_and_prints_exactly() {
        let ratio = |text: &str| text.parse::<FailureRatio>().unwrap();
        assert!(ratio("0").exceeded_by(1, 10));
        assert!(!ratio("0").exceeded_by(0, 10));
        assert!(!ratio("0.5").exceeded_by(1, 2));
        assert!(ratio("0.5").exceeded_by(2, 3));
        assert!(!ratio("1").exceeded_by(3, 3));
        assert_eq!(ratio("0.2").to_string(), "0.2");
        assert_eq!(ratio("1").to_string(), "1");
        assert_eq!(ratio("0").to_string(), "0");
        assert_eq!(ratio("0.0004").per_mille(), 0);
        assert!("-0.1".parse::<FailureRatio>().is_err());
        assert!("NaN".parse::<FailureRatio>().is_err());
    }

    proptest::proptest! {
        /// Every ratio survives JSON and postcard unchanged.
        #[test]
        fn failure_ratios_round_trip(per_mille in 0..=FailureRatio::MAX_PER_MILLE) {
            let ratio = FailureRatio::from_per_mille(per_mille).unwrap();
            let json = serde_json::to_string(&ratio).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<FailureRatio>(&json).unwrap(), ratio);
            let bytes = postcard::to_allocvec(&ratio).unwrap();
            proptest::prop_assert_eq!(postcard::from_bytes::<FailureRatio>(&bytes).unwrap(), ratio);
            proptest::prop_assert_eq!(ratio.to_string().parse::<FailureRatio>().unwrap(), ratio);
        }
    }
}
