//! Pulling an image from an OCI registry (the distribution API, through `oci-client`) into
//! containerd's content store, then naming and unpacking it as an import does.
//!
//! Blobs stream from the registry into the content store's `Write` call in 1 MiB chunks
//! (never a whole layer in memory); containerd checks each digest on commit. Blobs the store
//! has already are not fetched again. Loopback registries (`localhost…`, `127.…`) are spoken
//! to over plain HTTP, every other one over HTTPS; pulls are anonymous (a registry's bearer
//! token dance included) unless the service names registry credentials, which go as HTTP
//! Basic (or into the bearer-token request, as the registry asks).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use containerd_client::services::v1::InfoRequest;
use containerd_client::services::v1::content_client::ContentClient;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio_stream::StreamExt;

use super::client::{Connection, ContainerdError, Lease};
use super::image::{
    ImageError, Index, JsonDescriptor, MAX_METADATA_BYTES, Manifest, pick_platform, resolve, unpack,
};
use super::layout::{BlobWrite, ImportedImage, label_children, put_image};
use super::registry_auth::{RegistryCredentials, is_refusal};

/// Bytes sent per content `Write` message.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Manifest media types we ask a registry for.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How far a pull has got, for the replica's state message.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Layer and config bytes fetched so far.
    pub bytes_done: AtomicU64,
    /// Layer and config bytes the manifest lists (0 until it is read).
    pub bytes_total: AtomicU64,
}

impl PullProgress {
    /// `12.3 of 45.6 MB`, or `starting` before the manifest is in.
    pub fn describe(&self) -> String {
        let total = self.bytes_total.load(Ordering::Relaxed);
        if total == 0 {
            return "starting".to_owned();
        }
        let done = self.bytes_done.load(Ordering::Relaxed);
        format!("{:.1} of {:.1} MB", mb(done), mb(total))
    }
}

/// Bytes in (decimal) megabytes, as registries and `docker pull` count them.
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error("not an image reference: {0}")]
    Reference(String),
    /// The registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(#[from] oci_client::errors::OciDistributionError),
    /// The registry refused an anonymous pull.
    #[error(
        "the registry {registry} needs credentials: name a secret holding user:password with --registry-auth"
    )]
    NeedsCredentials {
        /// The registry's host.
        registry: String,
    },
    /// The registry refused the credentials given.
    #[error("the registry {registry} refused the credentials in secret {secret}")]
    CredentialsRefused {
        /// The registry's host.
        registry: String,
        /// The secret they came from.
        secret: String,
    },
    /// A manifest is not what it says it is.
    #[error("{digest}: {reason}")]
    Malformed {
        /// The blob.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// containerd refused.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The image cannot be used.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Pulls `name` (a normalized reference) into the store and unpacks it into `snapshotter`,
/// with `credentials` when given, else anonymously.
///
/// # Errors
/// [`PullError`].
pub async fn pull(
    conn: &Connection,
    snapshotter: &str,
    name: &str,
    credentials: Option<&RegistryCredentials>,
    progress: &PullProgress,
) -> Result<ImportedImage, PullError> {
    let reference: Reference = name
        .parse()
        .map_err(|e: oci_client::ParseError| PullError::Reference(format!("{name}: {e}")))?;
    let lease = conn.lease("pull").await?;
    let source = Source {
        reference: &reference,
        credentials,
    };
    let result = pull_under(conn, snapshotter, name, &source, progress, &lease).await;
    conn.release(lease).await;
    result
}

/// Where a pull reads from: the reference and the credentials for its registry.
struct Source<'a> {
    reference: &'a Reference,
    credentials: Option<&'a RegistryCredentials>,
}

async fn pull_under(
    conn: &Connection,
    snapshotter: &str,
    name: &str,
    source: &Source<'_>,
    progress: &PullProgress,
    lease: &Lease,
) -> Result<ImportedImage, PullError> {
    let reference = source.reference;
    let client = registry_client(reference);
    let mut small = HashMap::new();
    let top = fetch_manifest(conn, &client, source, lease, &mut small).await?;
    let mut manifest_descriptor = top.clone();
    if let Ok(index) = serde_json::from_slice::<Index>(&small[&top.digest])
        && !index.manifests.is_empty()
    {
        manifest_descriptor = pick_platform(&index).ok_or_else(|| PullError::Malformed {
            digest: top.digest.clone(),
            reason: format!("no manifest for linux/{}", super::image::oci_arch()),
        })?;
        let by_digest = reference.clone_with_digest(manifest_descriptor.digest.clone());
        let by_digest = Source {
            reference: &by_digest,
            credentials: source.credentials,
        };
        fetch_manifest(conn, &client, &by_digest, lease, &mut small).await?;
    }
    let manifest: Manifest =
        serde_json::from_slice(&small[&manifest_descriptor.digest]).map_err(|e| {
            PullError::Malformed {
                digest: manifest_descriptor.digest.clone(),
                reason: e.to_string(),
            }
        })?;
    let blobs: Vec<&JsonDescriptor> = std::iter::once(&manifest.config)
        .chain(&manifest.layers)
        .collect();
    let total: i64 = blobs.iter().map(|b| b.size.max(0)).sum();
    progress.bytes_total.store(total as u64, Ordering::Relaxed);
    for blob in blobs {
        fetch_blob(conn, &client, reference, blob, lease, progress).await?;
    }
    label_children(conn, &small, &top).await?;
    put_image(conn, name, &top).await?;
    let image = resolve(conn, name).await?;
    let layers_unpacked = unpack(conn, snapshotter, &image, lease).await?;
    tracing::info!(
        image = name,
        digest = top.digest,
        layers_unpacked,
        "pulled image"
    );
    Ok(ImportedImage {
        name: name.to_owned(),
        digest: top.digest,
        layers_unpacked,
    })
}

/// A client speaking plain HTTP to loopback registries and HTTPS to the rest.
fn registry_client(reference: &Reference) -> Client {
    // reqwest is built without a crypto provider of its own: it uses the process's, ring
    // (installing it is a no-op when the agent has done so already).
    warren_transport::install_crypto_provider();
    let registry = reference.resolve_registry();
    let loopback = registry.starts_with("localhost") || registry.starts_with("127.");
    let protocol = if loopback {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        ..ClientConfig::default()
    })
}

/// Fetches the manifest (or index) `reference` names, stores it and keeps its bytes.
/// The client keeps the registry's answer to these credentials (a Basic header or a bearer
/// token) for the blob requests that follow.
async fn fetch_manifest(
    conn: &Connection,
    client: &Client,
    source: &Source<'_>,
    lease: &Lease,
    small: &mut HashMap<String, Vec<u8>>,
) -> Result<JsonDescriptor, PullError> {
    let auth = source
        .credentials
        .map_or(RegistryAuth::Anonymous, RegistryCredentials::to_oci);
    let (bytes, digest) = client
        .pull_manifest_raw(source.reference, &auth, &MANIFEST_TYPES)
        .await
        .map_err(|e| refusal_or(e, source))?;
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(PullError::Malformed {
            digest,
            reason: format!("manifest larger than {MAX_METADATA_BYTES} bytes"),
        });
    }
    let media_type = manifest_media_type(&bytes);
    let mut write = BlobWrite::begin(conn, digest.clone(), bytes.len() as u64, lease);
    write.chunk(bytes.to_vec()).await;
    write.finish().await?;
    small.insert(digest.clone(), bytes.to_vec());
    Ok(JsonDescriptor {
        media_type,
        digest,
        size: bytes.len() as i64,
        annotations: HashMap::new(),
        platform: None,
    })
}

/// A refusal as what it means for these credentials; any other error as it is.
fn refusal_or(error: oci_client::errors::OciDistributionError, source: &Source<'_>) -> PullError {
    if !is_refusal(&error) {
        return error.into();
    }
    let registry = source.reference.resolve_registry().to_owned();
    match source.credentials {
        None => PullError::NeedsCredentials { registry },
        Some(credentials) => PullError::CredentialsRefused {
            registry,
            secret: credentials.secret().to_owned(),
        },
    }
}

/// The `mediaType` a manifest names, else what its shape says it is.
fn manifest_media_type(bytes: &[u8]) -> String {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(media_type) = json["mediaType"].as_str() {
        return media_type.to_owned();
    }
    let index = json.get("manifests").is_some();
    MANIFEST_TYPES[if index { 0 } else { 2 }].to_owned()
}

/// Whether the content store has `digest` already.
async fn have_blob(conn: &Connection, digest: &str) -> Result<bool, ContainerdError> {
    let request = conn.request(
        InfoRequest {
            digest: digest.to_owned(),
        },
        None,
    );
    match ContentClient::new(conn.channel.clone()).info(request).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
        Err(status) => Err(super::client::call("content info")(status)),
    }
}

/// Streams one blob from the registry into the content store, unless it is there already.
async fn fetch_blob(
    conn: &Connection,
    client: &Client,
    reference: &Reference,
    blob: &JsonDescriptor,
    lease: &Lease,
    progress: &PullProgress,
) -> Result<(), PullError> {
    if have_blob(conn, &blob.digest).await? {
        progress
            .bytes_done
            .fetch_add(blob.size.max(0) as u64, Ordering::Relaxed);
        return Ok(());
    }
    let mut stream = client
        .pull_blob_stream(reference, blob.digest.as_str())
        .await?
        .stream;
    let mut write = BlobWrite::begin(conn, blob.digest.clone(), blob.size.max(0) as u64, lease);
    let mut buffer = Vec::with_capacity(CHUNK_BYTES);
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| PullError::Malformed {
            digest: blob.digest.clone(),
            reason: format!("download: {e}"),
        })?;
        progress
            .bytes_done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        buffer.extend_from_slice(&bytes);
        if buffer.len() >= CHUNK_BYTES {
            write.chunk(std::mem::take(&mut buffer)).await;
        }
    }
    if !buffer.is_empty() {
        write.chunk(buffer).await;
    }
    write.finish().await?;
    Ok(())
}

/// A running or finished background pull.
#[derive(Debug)]
pub(crate) struct PullJob {
    pub(crate) progress: Arc<PullProgress>,
    /// The image, and `pulled REF: 52.0 MB in 3.1 s`; or why the pull failed.
    pub(crate) task: tokio::task::JoinHandle<Result<(ImportedImage, String), String>>,
}

impl PullJob {
    /// Starts pulling `name` in the background, with `credentials` when given.
    pub(crate) fn spawn(
        conn: Connection,
        snapshotter: String,
        name: String,
        credentials: Option<RegistryCredentials>,
    ) -> Self {
        let progress = Arc::new(PullProgress::default());
        let task = tokio::spawn({
            let progress = Arc::clone(&progress);
            async move {
                tracing::info!(image = name, "pulling image");
                let began = std::time::Instant::now();
                let image = pull(&conn, &snapshotter, &name, credentials.as_ref(), &progress)
                    .await
                    .map_err(|e| {
                        tracing::warn!(image = name, error = %e, "cannot pull image");
                        e.to_string()
                    })?;
                let bytes = progress.bytes_total.load(Ordering::Relaxed);
                let summary = format!(
                    "pulled {name}: {:.1} MB in {:.1} s",
                    mb(bytes),
                    began.elapsed().as_secs_f64()
                );
                tracing::info!(image = name, "{summary}");
                Ok((image, summary))
            }
        });
        PullJob { progress, task }
    }
}
