//! Images in containerd's store: naming them, finding this platform's manifest and config, and
//! unpacking their layers into the snapshotter (the Diff service applies each layer onto a
//! snapshot prepared from the one below; containerd 1.6 has no Transfer service).
//!
//! Unpacked snapshots are named by chain id, as containerd's own unpacker names them, so an
//! image `ctr` unpacked and one we unpacked share their layers. The image's config blob gets
//! the `containerd.io/gc.ref.snapshot.<snapshotter>` label: while the image exists, its
//! snapshots are kept.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, GetImageRequest, Info, ReadContentRequest, UpdateRequest,
};
use containerd_client::types::Descriptor;
use serde::Deserialize;

use super::client::{Connection, ContainerdError, Lease, call};

/// The largest manifest, index or config blob we read into memory.
pub(crate) const MAX_METADATA_BYTES: usize = 4 * 1024 * 1024;

/// OCI and Docker media types of an index (a manifest list).
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A descriptor as OCI JSON spells it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JsonDescriptor {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) annotations: HashMap<String, String>,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
}

impl JsonDescriptor {
    pub(crate) fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// An index entry's platform.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Platform {
    pub(crate) architecture: String,
    pub(crate) os: String,
}

/// `index.json` or an image index blob.
#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    pub(crate) manifests: Vec<JsonDescriptor>,
}

/// An image manifest.
#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: JsonDescriptor,
    pub(crate) layers: Vec<JsonDescriptor>,
}

/// The parts of an image config a container is made from.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub(crate) config: RunConfig,
    pub(crate) rootfs: RootFs,
}

/// The image's defaults for the process.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunConfig {
    #[serde(default)]
    pub(crate) env: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) cmd: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) working_dir: Option<String>,
    #[serde(default)]
    pub(crate) user: Option<String>,
}

/// The layers' uncompressed digests.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RootFs {
    pub(crate) diff_ids: Vec<String>,
}

/// An image ready to make containers from.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedImage {
    /// Its name in the store.
    pub(crate) name: String,
    pub(crate) config: ImageConfig,
    pub(crate) config_digest: String,
    pub(crate) layers: Vec<JsonDescriptor>,
}

impl ResolvedImage {
    /// The chain id of the top layer: the snapshot a container's rootfs is prepared from.
    pub(crate) fn top_chain_id(&self) -> Option<String> {
        chain_ids(&self.config.rootfs.diff_ids).pop()
    }
}

/// The name containerd stores `reference` under, as `ctr` and Docker spell it:
/// `busybox` → `docker.io/library/busybox:latest`, `reg.local:5000/app` →
/// `reg.local:5000/app:latest`.
pub fn normalize_reference(reference: &str) -> String {
    let (first, rest) = match reference.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (reference, None),
    };
    let is_host = |s: &str| s.contains('.') || s.contains(':') || s == "localhost";
    let mut name = match rest {
        Some(_) if is_host(first) => reference.to_owned(),
        Some(_) => format!("docker.io/{reference}"),
        None => format!("docker.io/library/{reference}"),
    };
    let last = name.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        name.push_str(":latest");
    }
    name
}

/// Chain ids of a layer stack: the first is its diff id, each next one
/// `sha256(parent + " " + diff_id)`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let id = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(id);
    }
    chain
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// This machine's architecture as OCI names it.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Reads a small blob (manifest, index, config) from the content store.
pub(crate) async fn read_blob(conn: &Connection, digest: &str) -> Result<Vec<u8>, ContainerdError> {
    let request = conn.request(
        ReadContentRequest {
            digest: digest.to_owned(),
            offset: 0,
            size: 0,
        },
        None,
    );
    let mut stream = ContentClient::new(conn.channel.clone())
        .read(request)
        .await
        .map_err(call("read content"))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(call("read content"))? {
        bytes.extend_from_slice(&chunk.data);
        if bytes.len() > MAX_METADATA_BYTES {
            return Err(ContainerdError::Call {
                what: "read content",
                status: tonic::Status::out_of_range(format!(
                    "{digest} is larger than {MAX_METADATA_BYTES} bytes"
                )),
            });
        }
    }
    Ok(bytes)
}

/// Why an image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// containerd failed or does not have it.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// A blob is not what its media type says.
    #[error("{digest}: {reason}")]
    Malformed {
        /// The blob.
        digest: String,
        /// What is wrong.
        reason: String,
    },
}

fn parse<T: serde::de::DeserializeOwned>(digest: &str, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::Malformed {
        digest: digest.to_owned(),
        reason: e.to_string(),
    })
}

/// The manifest for this platform under `target` (an index or a manifest).
pub(crate) async fn platform_manifest(
    conn: &Connection,
    target: &JsonDescriptor,
) -> Result<Manifest, ImageError> {
    let mut descriptor = target.clone();
    // Nested indexes are legal; three levels is more than any real image has.
    for _ in 0..3 {
        let bytes = read_blob(conn, &descriptor.digest).await?;
        if !INDEX_TYPES.contains(&descriptor.media_type.as_str()) {
            return parse(&descriptor.digest, &bytes);
        }
        let index: Index = parse(&descriptor.digest, &bytes)?;
        descriptor = pick_platform(&index).ok_or_else(|| ImageError::Malformed {
            digest: descriptor.digest.clone(),
            reason: format!("no manifest for linux/{}", oci_arch()),
        })?;
    }
    Err(ImageError::Malformed {
        digest: target.digest.clone(),
        reason: "indexes nested too deep".to_owned(),
    })
}

/// The entry of `index` for this machine: its platform, or the only one without a platform.
pub(crate) fn pick_platform(index: &Index) -> Option<JsonDescriptor> {
    let matching = index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == oci_arch())
    });
    matching
        .or_else(|| index.manifests.iter().find(|m| m.platform.is_none()))
        .cloned()
}

/// Looks `name` up in the store and reads what a container needs from it.
///
/// # Errors
/// [`ContainerdError::is_not_found`] when the store has no such image.
pub(crate) async fn resolve(conn: &Connection, name: &str) -> Result<ResolvedImage, ImageError> {
    let request = conn.request(
        GetImageRequest {
            name: name.to_owned(),
        },
        None,
    );
    let image = ImagesClient::new(conn.channel.clone())
        .get(request)
        .await
        .map_err(call("get image"))?
        .into_inner()
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| ImageError::Malformed {
            digest: name.to_owned(),
            reason: "image without a target".to_owned(),
        })?;
    let target = JsonDescriptor {
        media_type: image.media_type,
        digest: image.digest,
        size: image.size,
        annotations: HashMap::new(),
        platform: None,
    };
    let manifest = platform_manifest(conn, &target).await?;
    let config_bytes = read_blob(conn, &manifest.config.digest).await?;
    let config: ImageConfig = parse(&manifest.config.digest, &config_bytes)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Malformed {
            digest: manifest.config.digest,
            reason: "config and manifest disagree on the number of layers".to_owned(),
        });
    }
    Ok(ResolvedImage {
        name: name.to_owned(),
        config,
        config_digest: manifest.config.digest,
        layers: manifest.layers,
    })
}

/// Unpacks every layer of `image` not yet in `snapshotter`, under `lease`, and labels the
/// config so that the snapshots live as long as the image. Returns the number of layers it
/// had to apply.
pub(crate) async fn unpack(
    conn: &Connection,
    snapshotter: &str,
    image: &ResolvedImage,
    lease: &Lease,
) -> Result<usize, ImageError> {
    let chain = chain_ids(&image.config.rootfs.diff_ids);
    let mut applied = 0;
    for (idx, chain_id) in chain.iter().enumerate() {
        if snapshot_exists(conn, snapshotter, chain_id).await? {
            continue;
        }
        let parent = if idx == 0 { "" } else { &chain[idx - 1] };
        apply_layer(
            conn,
            snapshotter,
            &image.layers[idx],
            parent,
            chain_id,
            lease,
        )
        .await?;
        applied += 1;
    }
    if let Some(top) = chain.last() {
        let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
        set_labels(conn, &image.config_digest, &[(label, top.clone())]).await?;
    }
    Ok(applied)
}

async fn snapshot_exists(
    conn: &Connection,
    snapshotter: &str,
    key: &str,
) -> Result<bool, ContainerdError> {
    let request = conn.request(
        StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        },
        None,
    );
    match SnapshotsClient::new(conn.channel.clone())
        .stat(request)
        .await
    {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
        Err(status) => Err(call("stat snapshot")(status)),
    }
}

/// Applies `layer` onto a snapshot prepared from `parent` and commits it as `chain_id`.
async fn apply_layer(
    conn: &Connection,
    snapshotter: &str,
    layer: &JsonDescriptor,
    parent: &str,
    chain_id: &str,
    lease: &Lease,
) -> Result<(), ImageError> {
    let key = format!("warren-extract-{}-{chain_id}", fastrand::u64(..));
    let mut snapshots = SnapshotsClient::new(conn.channel.clone());
    let prepare = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        key: key.clone(),
        parent: parent.to_owned(),
        labels: HashMap::new(),
    };
    let mounts = snapshots
        .prepare(conn.request(prepare, Some(lease)))
        .await
        .map_err(call("prepare snapshot"))?
        .into_inner()
        .mounts;
    let apply = ApplyRequest {
        diff: Some(layer.to_proto()),
        mounts,
        payloads: HashMap::new(),
        sync_fs: false,
    };
    let applied = DiffClient::new(conn.channel.clone())
        .apply(conn.request(apply, Some(lease)))
        .await
        .map_err(call("apply layer"));
    let commit = CommitSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        name: chain_id.to_owned(),
        key: key.clone(),
        labels: HashMap::new(),
    };
    let committed = match applied {
        Ok(_) => snapshots
            .commit(conn.request(commit, Some(lease)))
            .await
            .map(drop)
            .map_err(call("commit snapshot")),
        Err(e) => Err(e),
    };
    match committed {
        Ok(()) => Ok(()),
        Err(e) => {
            let remove = RemoveSnapshotRequest {
                snapshotter: snapshotter.to_owned(),
                key,
            };
            let _ = snapshots.remove(conn.request(remove, None)).await;
            // Another unpack committed the same layer first: that is what we wanted.
            if e.is_already_exists() {
                Ok(())
            } else {
                Err(e.into())
            }
        }
    }
}

/// Adds `labels` to the content blob `digest`, keeping its others.
pub(crate) async fn set_labels(
    conn: &Connection,
    digest: &str,
    labels: &[(String, String)],
) -> Result<(), ContainerdError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
    let info = Info {
        digest: digest.to_owned(),
        labels: labels.iter().cloned().collect(),
        ..Info::default()
    };
    let request = UpdateRequest {
        info: Some(info),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    ContentClient::new(conn.channel.clone())
        .update(conn.request(request, None))
        .await
        .map(drop)
        .map_err(call("label content"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        let check = |input: &str, expected: &str| assert_eq!(normalize_reference(input), expected);
        check("busybox", "docker.io/library/busybox:latest");
        check("busybox:1.36", "docker.io/library/busybox:1.36");
        check("me/app", "docker.io/me/app:latest");
        check("reg.local:5000/app", "reg.local:5000/app:latest");
        check("localhost/app:2", "localhost/app:2");
        check("ghcr.io/o/app@sha256:abc", "ghcr.io/o/app@sha256:abc");
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let diff = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[diff('a'), diff('b')]);
        assert_eq!(ids[0], diff('a'));
        assert_eq!(
            ids[1],
            sha256_digest(format!("{} {}", diff('a'), diff('b')).as_bytes())
        );
    }
}
