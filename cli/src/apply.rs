//! `warren apply -f FILE.yaml`: declarative, idempotent changes from multi-document YAML.
//!
//! Each document has a `kind` and that kind's fields:
//!
//! - `kind: Service` with the fields of a service spec in its JSON form (the form
//!   `warren service inspect` prints): `name` and `workload` required, everything else
//!   defaulted (`mode`, `placement`, `env`, `ports`, `health`, `restart`, `on_disconnect`,
//!   `secrets`, `volumes`, `resources`, `user`, `group`, `cap_add`, `update`,
//!   `stop_grace_period_ms`, `labels`).
//! - `kind: Secret` with `name` and exactly one of `value` (text) or `file` (a path, relative
//!   to the YAML file's directory).
//! - `kind: Volume` with `name` and optional `driver` (`local`), `size_limit_bytes`, `labels`.
//!
//! Enums are written as in JSON, as a map with one key (`workload: {process: {…}}`,
//! `mode: {replicated: {replicas: 2}}`) or a plain string for variants without data
//! (`mode: global`); YAML tags (`!process`) work too.
//!
//! The whole file is parsed and validated before anything is sent. Then secrets, volumes and
//! services are written in that order (services may reference the others), each with a
//! create-or-replace request, and each reported as created, updated or unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use warren_api::rest::{ServiceInfo, WriteResult};
use warren_api::routes::Route;
use warren_api::{
    HealthCheck, MetricsEndpoint, OnDisconnect, Placement, PortSpec, Resources, RestartPolicy,
    Secret, SecretRef, ServiceMode, ServiceName, ServiceSpec, UpdateConfig, Volume, VolumeDriver,
    VolumeMount, Workload,
};

use serde_norway::with::singleton_map_recursive;

use crate::client::{Client, ClientArgs};
use crate::output::OutputFormat;
use crate::secret_cmd;

/// Largest YAML file read.
const MAX_APPLY_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most documents in one file.
const MAX_DOCUMENTS: usize = 1_000;

/// Flags of `warren apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example deploy.yaml:\n\
    \n  kind: Secret\
    \n  name: db-password\
    \n  file: db-password.txt          # relative to this file; or: value: \"...\"\
    \n  ---\
    \n  kind: Volume\
    \n  name: data\
    \n  ---\
    \n  kind: Service\
    \n  name: web\
    \n  workload:\
    \n    process:                     # or: image: {reference: registry/web:1.4, args: []}\
    \n      command: [/usr/bin/web, --port, \"8080\"]\
    \n  mode:\
    \n    replicated: {replicas: 3}    # or: mode: global\
    \n  placement: {sites: [lisbon, porto]}\
    \n  env: {MODE: prod}\
    \n  ports: [{name: http, port: 8080}]\
    \n  secrets: [{name: db-password, target: db-password}]\
    \n  volumes: [{volume: data, target: data}]\
    \n  health: {probe: {http: {url: \"http://127.0.0.1:8080/health\"}}}\
    \n  on_disconnect: keep            # or: {reschedule: {after_ms: 300000}}\
    \n  user: www-data                 # default: a user of each replica's own; root only if given\
    \n  cap_add: [NET_BIND_SERVICE]    # capabilities kept; every other one is dropped\
    \n  metrics: {port: 9100, path: /metrics}   # Prometheus finds each replica's metrics here\
    \n\n\
    `warren service inspect NAME` prints a service in this form.\n\
    Running apply twice changes nothing the second time; secret values are always re-sent\n\
    (control keeps them sealed and cannot compare them), so secrets report `updated`.")]
pub struct ApplyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The YAML file (documents separated by ---), or - for stdin.
    #[arg(short = 'f', long = "file", value_name = "FILE.yaml")]
    pub file: String,
    /// Parse and validate only; contact no control plane.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once control has every document, without following the services' rollouts.
    #[arg(long)]
    pub detach: bool,
}

/// First pass: only the kind of a document.
#[derive(Deserialize)]
struct KindProbe {
    kind: String,
}

/// `kind: Service`: the fields of [`ServiceSpec`], with the same defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDoc {
    #[allow(dead_code)]
    kind: String,
    name: ServiceName,
    workload: Workload,
    #[serde(default)]
    mode: ServiceMode,
    #[serde(default)]
    placement: Placement,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<PortSpec>,
    #[serde(default)]
    health: Option<HealthCheck>,
    #[serde(default)]
    restart: RestartPolicy,
    #[serde(default)]
    on_disconnect: OnDisconnect,
    #[serde(default)]
    secrets: Vec<SecretRef>,
    /// The secret holding the image's registry credentials: a [`SecretRef::registry_auth`]
    /// among `secrets`.
    #[serde(default)]
    registry_auth: Option<String>,
    #[serde(default)]
    volumes: Vec<VolumeMount>,
    #[serde(default)]
    resources: Resources,
    #[serde(default, deserialize_with = "warren_api::run_as::name_or_number")]
    user: Option<String>,
    #[serde(default, deserialize_with = "warren_api::run_as::name_or_number")]
    group: Option<String>,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    update: UpdateConfig,
    #[serde(default)]
    stop_grace_period_ms: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    metrics: Option<MetricsEndpoint>,
}

impl ServiceDoc {
    fn into_spec(self) -> ServiceSpec {
        // Every field named and no `..`: a new `ServiceSpec` field fails to compile here, and a
        // document field that is not carried over fails as never read, until both agree.
        ServiceSpec {
            name: self.name,
            workload: self.workload,
            mode: self.mode,
            placement: self.placement,
            env: self.env,
            ports: self.ports,
            health: self.health,
            restart: self.restart,
            on_disconnect: self.on_disconnect,
            secrets: self
                .secrets
                .into_iter()
                .chain(self.registry_auth.map(SecretRef::registry_auth))
                .collect(),
            volumes: self.volumes,
            resources: self.resources,
            user: self.user,
            group: self.group,
            cap_add: self.cap_add,
            update: self.update,
            stop_grace_period_ms: self
                .stop_grace_period_ms
                .unwrap_or(warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS),
            labels: self.labels,
            metrics: self.metrics,
        }
    }
}

/// `kind: Secret`. No `Debug`: it holds a value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretDoc {
    #[allow(dead_code)]
    kind: String,
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    file: Option<String>,
}

/// `kind: Volume`: the fields of [`Volume`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeDoc {
    #[allow(dead_code)]
    kind: String,
    name: String,
    #[serde(default)]
    driver: VolumeDriver,
    #[serde(default)]
    size_limit_bytes: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl VolumeDoc {
    fn into_volume(self) -> Volume {
        let VolumeDoc {
            kind: _,
            name,
            driver,
            size_limit_bytes,
            labels,
        } = self;
        Volume {
            name,
            driver,
            size_limit_bytes,
            labels,
        }
    }
}

/// A parsed, validated document.
pub enum Resource {
    /// A service spec (boxed: it is far larger than the others).
    Service(Box<ServiceSpec>),
    /// A secret's name and value.
    Secret {
        /// Name.
        name: String,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// A volume.
    Volume(Volume),
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.label())
    }
}

impl Resource {
    /// `service`, `secret` or `volume`.
    fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "service",
            Resource::Secret { .. } => "secret",
            Resource::Volume(_) => "volume",
        }
    }

    fn name(&self) -> &str {
        match self {
            Resource::Service(spec) => spec.name.as_str(),
            Resource::Secret { name, .. } => name,
            Resource::Volume(volume) => &volume.name,
        }
    }

    /// `service/web`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind(), self.name())
    }

    /// Write order: what services reference comes first.
    fn order(&self) -> u8 {
        match self {
            Resource::Secret { .. } => 0,
            Resource::Volume(_) => 1,
            Resource::Service(_) => 2,
        }
    }
}

/// One document of the file, numbered from 1.
#[derive(Debug)]
pub struct Document {
    /// Position in the file, from 1.
    pub index: usize,
    /// What it declares.
    pub resource: Resource,
}

/// A YAML error as one line: `FILE: document N, line L: WHY`.
fn yaml_error(file: &str, index: usize, error: &serde_norway::Error) -> anyhow::Error {
    let text = error.to_string();
    match error.location() {
        Some(location) => {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            let message = text.replacen(&suffix, "", 1);
            anyhow!(
                "{file}: document {index}, line {}: {message}",
                location.line()
            )
        }
        None => anyhow!("{file}: document {index}: {text}"),
    }
}

/// Parses and validates every document of `text`. `file` names the file in errors; relative
/// secret `file:` paths are read from `base_dir`.
///
/// # Errors
/// The first problem, as one line naming the file, the document and (for YAML errors) the line.
pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<Vec<Document>> {
    let mut kinds = Vec::new();
    for (idx, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        if idx >= MAX_DOCUMENTS {
            bail!("{file}: more than {MAX_DOCUMENTS} documents");
        }
        let probe = Option::<KindProbe>::deserialize(document)
            .map_err(|e| yaml_error(file, idx + 1, &e))?;
        kinds.push(probe.map(|p| p.kind));
    }
    let mut documents = Vec::new();
    let mut seen = BTreeSet::new();
    let second_pass = serde_norway::Deserializer::from_str(text);
    for (idx, (document, kind)) in second_pass.zip(kinds).enumerate() {
        let index = idx + 1;
        let Some(kind) = kind else { continue };
        let yaml = |e: serde_norway::Error| yaml_error(file, index, &e);
        let resource = match kind.as_str() {
            "Service" => Resource::Service(Box::new(
                singleton_map_recursive::deserialize::<ServiceDoc, _>(document)
                    .map_err(yaml)?
                    .into_spec(),
            )),
            "Volume" => Resource::Volume(
                singleton_map_recursive::deserialize::<VolumeDoc, _>(document)
                    .map_err(yaml)?
                    .into_volume(),
            ),
            "Secret" => {
                let doc = SecretDoc::deserialize(document).map_err(yaml)?;
                secret_resource(doc, base_dir)
                    .map_err(|e| anyhow!("{file}: document {index}: {e:#}"))?
            }
            other => bail!(
                "{file}: document {index}: unknown kind {other:?} (expected Service, Secret or Volume)"
            ),
        };
        validate(&resource)
            .map_err(|e| anyhow!("{file}: document {index} ({}): {e}", resource.label()))?;
        if !seen.insert(resource.label()) {
            bail!(
                "{file}: document {index}: {} is declared twice",
                resource.label()
            );
        }
        documents.push(Document { index, resource });
    }
    if documents.is_empty() {
        bail!("{file}: no documents (expected Service, Secret or Volume documents)");
    }
    documents.sort_by_key(|d| d.resource.order());
    Ok(documents)
}

fn secret_resource(doc: SecretDoc, base_dir: &Path) -> Result<Resource> {
    let value = match (doc.value, doc.file) {
        (Some(value), None) => value.into_bytes(),
        (None, Some(file)) => secret_cmd::read_value(&file, Some(base_dir))?,
        _ => bail!("secret {}: give exactly one of `value` or `file`", doc.name),
    };
    if value.len() as u64 > warren_api::secret::MAX_SECRET_BYTES {
        bail!(
            "secret {}: value is larger than {} bytes",
            doc.name,
            warren_api::secret::MAX_SECRET_BYTES
        );
    }
    Ok(Resource::Secret {
        name: doc.name,
        value,
    })
}

fn validate(resource: &Resource) -> Result<()> {
    match resource {
        Resource::Service(spec) => spec.validate()?,
        Resource::Volume(volume) => volume.validate()?,
        Resource::Secret { name, .. } => warren_api::validate::validate_dns_label("name", name)?,
    }
    Ok(())
}

/// What happened to one document, for the report.
#[derive(Debug, Serialize)]
struct Applied {
    kind: &'static str,
    name: String,
    result: &'static str,
    revision: Option<u64>,
    version: Option<u64>,
}

fn read_input(file: &str) -> Result<(String, std::path::PathBuf)> {
    if file == "-" {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_APPLY_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .context("read stdin")?;
        if text.len() as u64 > MAX_APPLY_FILE_BYTES {
            bail!("stdin: larger than {MAX_APPLY_FILE_BYTES} bytes");
        }
        return Ok((text, std::env::current_dir().context("current directory")?));
    }
    let path = Path::new(file);
    let text = crate::config::read_bounded(path, MAX_APPLY_FILE_BYTES)
        .with_context(|| format!("read {file}"))?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    Ok((text, base))
}

/// Parses and validates the file named by `args` (no network).
///
/// # Errors
/// Unreadable file or invalid documents.
pub fn load(args: &ApplyArgs) -> Result<Vec<Document>> {
    let (text, base) = read_input(&args.file)?;
    let label = if args.file == "-" {
        "stdin"
    } else {
        &args.file
    };
    parse(label, &text, &base)
}

/// Prints what a dry run found.
pub fn print_dry_run(documents: &[Document]) {
    for document in documents {
        println!("{} valid (dry run)", document.resource.label());
    }
}

/// Writes every document and reports each.
///
/// # Errors
/// The first failed write, naming its document; earlier ones stay applied.
pub async fn run(
    client: &Client,
    format: OutputFormat,
    args: &ApplyArgs,
    documents: Vec<Document>,
) -> Result<()> {
    let file = args.file.as_str();
    let needs = |kind| documents.iter().any(|d| d.resource.kind() == kind);
    let volumes: Vec<Volume> = if needs("volume") {
        client.request(Route::ListVolumes).await?.json()?
    } else {
        Vec::new()
    };
    let secrets: Vec<Secret> = if needs("secret") {
        client.request(Route::ListSecrets).await?.json()?
    } else {
        Vec::new()
    };
    // Each service is written on condition that it is still at the version read here (or
    // still absent): a change someone makes meanwhile is refused, not overwritten.
    let services: Vec<ServiceInfo> = if needs("service") {
        client.request(Route::ListServices).await?.json()?
    } else {
        Vec::new()
    };
    let mut report = Vec::new();
    for document in documents {
        let label = document.resource.label();
        let known = Known {
            volumes: &volumes,
            secrets: &secrets,
            services: &services,
        };
        let applied = apply_one(client, &known, document.resource)
            .await
            .map_err(|e| anyhow!("{file}: document {} ({label}): {e:#}", document.index))?;
        if format == OutputFormat::Table {
            println!("{}/{} {}", applied.kind, applied.name, applied.result);
        }
        report.push(applied);
    }
    if format == OutputFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encode report")?
        );
    }
    if args.detach {
        return Ok(());
    }
    follow_services(client, format, &report).await
}

/// Follows the rollout of every service the file created or changed, one after the other;
/// fails naming each that did not converge.
async fn follow_services(client: &Client, format: OutputFormat, report: &[Applied]) -> Result<()> {
    let mut failed = Vec::new();
    let written = report
        .iter()
        .filter(|a| a.kind == "service" && a.result != "unchanged");
    for applied in written {
        let Some(version) = applied.version else {
            continue;
        };
        let followed =
            crate::service_cmd::watch::follow(client, format, &applied.name, version).await;
        if let Err(error) = followed {
            eprintln!("error: {}", crate::output::one_line(&error));
            failed.push(applied.name.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "applied, but {} did not converge: {}",
            if failed.len() == 1 {
                "1 service"
            } else {
                "some services"
            },
            failed.join(", ")
        );
    }
    Ok(())
}

/// What the cluster held when `apply` started.
struct Known<'a> {
    volumes: &'a [Volume],
    secrets: &'a [Secret],
    services: &'a [ServiceInfo],
}

async fn apply_one(client: &Client, known: &Known<'_>, resource: Resource) -> Result<Applied> {
    let Known {
        volumes,
        secrets,
        services,
    } = *known;
    let kind = resource.kind();
    let name = resource.name().to_owned();
    let (result, write) = match resource {
        Resource::Service(spec) => {
            let route = Route::PutService {
                service: spec.name.as_str(),
            };
            let version = services
                .iter()
                .find(|s| s.spec.name == spec.name)
                .map_or(0, |s| s.version);
            let write: WriteResult = client
                .request_json_if_version(route, &spec, version)
                .await?
                .json()?;
            let result = if write.created {
                "created"
            } else if write.changed {
                "updated"
            } else {
                "unchanged"
            };
            (result, Some(write))
        }
        Resource::Volume(volume) => {
            // Control reports every volume write as a change, so compare here: an unchanged
            // volume is not written at all.
            let existing = volumes.iter().find(|v| v.name == volume.name);
            if existing == Some(&volume) {
                ("unchanged", None)
            } else {
                let route = Route::PutVolume {
                    volume: &volume.name,
                };
                let write: WriteResult = client.request_json(route, &volume).await?.json()?;
                (
                    if existing.is_some() {
                        "updated"
                    } else {
                        "created"
                    },
                    Some(write),
                )
            }
        }
        Resource::Secret { name, value } => {
            let existed = secrets.iter().any(|s| s.name == name);
            let body = secret_cmd::create_body(&name, &value)?;
            let write: WriteResult = client
                .request_json(Route::CreateSecret, &body)
                .await?
                .json()?;
            (if existed { "updated" } else { "created" }, Some(write))
        }
    };
    Ok(Applied {
        kind,
        name,
        result,
        revision: write.as_ref().map(|w| w.revision),
        version: write.and_then(|w| w.version),
    })
}

#[cfg(test)]
mod tests;
