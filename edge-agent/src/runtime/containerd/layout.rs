//! Importing an OCI image-layout tarball (`oci-layout`, `index.json`, `blobs/sha256/…`; what
//! `docker save`, `skopeo copy oci-archive:` and `ctr image export` write) into containerd's
//! content store, naming its images and unpacking them: how an air-gapped box gets images.
//!
//! The tarball is read once, front to back, on a blocking thread; each blob streams to the
//! content store's `Write` call in chunks as it is read, so a layer is never held in memory.
//! containerd checks every blob against its digest on commit. Everything is written under a
//! lease, so its garbage collector cannot take a layer before the manifest that references
//! it is labelled.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, Image, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{Connection, ContainerdError, Lease, call};
use super::image::{
    ImageError, Index, JsonDescriptor, MAX_METADATA_BYTES, Manifest, normalize_reference, resolve,
    set_labels, unpack,
};

/// Bytes per content `Write` message.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks in flight between the tar reader and containerd.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The tarball cannot be read.
    #[error("read {}: {source}", path.display())]
    Io {
        /// The tarball.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The tarball is not an OCI image layout.
    #[error("{}: {reason}", path.display())]
    Layout {
        /// The tarball.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// containerd refused.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// An image in it cannot be used.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// One image an import made available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    /// Its name in the store (normalized: `docker.io/library/busybox:latest`).
    pub name: String,
    /// Digest of its index or manifest.
    pub digest: String,
    /// Layers that had to be unpacked (0: all were there already).
    pub layers_unpacked: usize,
}

/// What the tar reader hands to the async side.
enum Item {
    Start { digest: String, size: u64 },
    Chunk(Vec<u8>),
    End,
}

/// What the tar reader kept: `index.json` and every small blob (manifests, configs).
#[derive(Default)]
struct Kept {
    index: Option<Vec<u8>>,
    small: HashMap<String, Vec<u8>>,
}

/// Imports every image of the OCI layout tarball at `path` and unpacks it into `snapshotter`.
///
/// # Errors
/// [`ImportError`]; images imported before the error stay.
pub async fn import_layout(
    conn: &Connection,
    snapshotter: &str,
    path: &Path,
) -> Result<Vec<ImportedImage>, ImportError> {
    let lease = conn.lease("import").await?;
    let result = import_under(conn, snapshotter, path, &lease).await;
    conn.release(lease).await;
    result
}

async fn import_under(
    conn: &Connection,
    snapshotter: &str,
    path: &Path,
    lease: &Lease,
) -> Result<Vec<ImportedImage>, ImportError> {
    let (items_tx, mut items_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let reader_path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || read_tar(&reader_path, &items_tx));
    let mut current: Option<BlobWrite> = None;
    let mut first_error = None;
    while let Some(item) = items_rx.recv().await {
        match item {
            Item::Start { digest, size } => {
                current = Some(BlobWrite::begin(conn, digest, size, lease));
            }
            Item::Chunk(data) => {
                if let Some(write) = current.as_mut() {
                    write.chunk(data).await;
                }
            }
            Item::End => {
                if let Some(write) = current.take()
                    && let Err(e) = write.finish().await
                {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let kept = reader.await.map_err(|e| ImportError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })??;
    if let Some(e) = first_error {
        return Err(e.into());
    }
    name_images(conn, snapshotter, path, kept, lease).await
}

/// Reads the tarball, sending blobs as items and keeping the small ones.
fn read_tar(path: &Path, items: &mpsc::Sender<Item>) -> Result<Kept, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut kept = Kept::default();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let size = entry.header().size().map_err(io)?;
        if name == "index.json" {
            kept.index = Some(read_small(&mut entry, size, path)?);
            continue;
        }
        let Some(digest) = blob_digest(&name) else {
            continue;
        };
        let keep = usize::try_from(size).is_ok_and(|s| s <= MAX_METADATA_BYTES);
        let mut small = Vec::new();
        if items
            .blocking_send(Item::Start {
                digest: digest.clone(),
                size,
            })
            .is_err()
        {
            break;
        }
        loop {
            let mut chunk = vec![0; CHUNK_BYTES];
            let n = entry.read(&mut chunk).map_err(io)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            if keep {
                small.extend_from_slice(&chunk);
            }
            if items.blocking_send(Item::Chunk(chunk)).is_err() {
                break;
            }
        }
        let _ = items.blocking_send(Item::End);
        if keep {
            kept.small.insert(digest, small);
        }
    }
    Ok(kept)
}

fn read_small(entry: &mut impl Read, size: u64, path: &Path) -> Result<Vec<u8>, ImportError> {
    if size > MAX_METADATA_BYTES as u64 {
        return Err(ImportError::Layout {
            path: path.to_owned(),
            reason: format!("index.json is larger than {MAX_METADATA_BYTES} bytes"),
        });
    }
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// `blobs/sha256/<hex>` → `sha256:<hex>`.
fn blob_digest(name: &str) -> Option<String> {
    let rest = name.strip_prefix("blobs/")?;
    let (algorithm, hex) = rest.split_once('/')?;
    let valid = !hex.is_empty() && !hex.contains('/') && hex.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| format!("{algorithm}:{hex}"))
}

/// One blob on its way into the content store.
pub(super) struct BlobWrite {
    digest: String,
    size: u64,
    reference: String,
    offset: i64,
    requests: mpsc::Sender<WriteContentRequest>,
    call: tokio::task::JoinHandle<Result<(), ContainerdError>>,
}

impl BlobWrite {
    pub(super) fn begin(conn: &Connection, digest: String, size: u64, lease: &Lease) -> Self {
        let (requests, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let request = conn.request(ReceiverStream::new(rx), Some(lease));
        let mut client = ContentClient::new(conn.channel.clone());
        let call = tokio::spawn(async move {
            let mut responses = client
                .write(request)
                .await
                .map_err(call("write content"))?
                .into_inner();
            while responses
                .message()
                .await
                .map_err(call("write content"))?
                .is_some()
            {}
            Ok(())
        });
        let reference = format!("warren-import-{}-{}", digest, fastrand::u64(..));
        BlobWrite {
            digest,
            size,
            reference,
            offset: 0,
            requests,
            call,
        }
    }

    pub(super) async fn chunk(&mut self, data: Vec<u8>) {
        let len = data.len() as i64;
        let request = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: self.offset,
            data,
            ..WriteContentRequest::default()
        };
        self.offset += len;
        // A closed stream means the call ended (an error, or the blob exists already):
        // `finish` reports which.
        let _ = self.requests.send(request).await;
    }

    pub(super) async fn finish(self) -> Result<(), ContainerdError> {
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.size as i64,
            expected: self.digest.clone(),
            offset: self.offset,
            ..WriteContentRequest::default()
        };
        let _ = self.requests.send(commit).await;
        drop(self.requests);
        let result = self.call.await.map_err(|e| ContainerdError::Call {
            what: "write content",
            status: tonic::Status::internal(e.to_string()),
        })?;
        match result {
            Err(e) if e.is_already_exists() => Ok(()),
            other => other,
        }
    }
}

/// Labels what the index references and creates (or moves) an image per named entry.
async fn name_images(
    conn: &Connection,
    snapshotter: &str,
    path: &Path,
    kept: Kept,
    lease: &Lease,
) -> Result<Vec<ImportedImage>, ImportError> {
    let layout_error = |reason: String| ImportError::Layout {
        path: path.to_owned(),
        reason,
    };
    let index_bytes = kept
        .index
        .as_deref()
        .ok_or_else(|| layout_error("no index.json: not an OCI image layout".to_owned()))?;
    let index: Index = serde_json::from_slice(index_bytes)
        .map_err(|e| layout_error(format!("index.json: {e}")))?;
    let mut imported = Vec::new();
    for descriptor in &index.manifests {
        let name = image_name(descriptor).ok_or_else(|| {
            layout_error(format!(
                "{} has no full image name (annotation io.containerd.image.name, or org.opencontainers.image.ref.name with a repository)",
                descriptor.digest
            ))
        })?;
        label_children(conn, &kept.small, descriptor).await?;
        put_image(conn, &name, descriptor).await?;
        let image = resolve(conn, &name).await?;
        let layers_unpacked = unpack(conn, snapshotter, &image, lease).await?;
        tracing::info!(
            image = name,
            digest = descriptor.digest,
            layers_unpacked,
            "imported image"
        );
        imported.push(ImportedImage {
            name,
            digest: descriptor.digest.clone(),
            layers_unpacked,
        });
    }
    Ok(imported)
}

/// The store name of an index entry, if it has a usable one.
fn image_name(descriptor: &JsonDescriptor) -> Option<String> {
    let annotations = &descriptor.annotations;
    if let Some(name) = annotations.get("io.containerd.image.name") {
        return Some(normalize_reference(name));
    }
    let name = annotations.get("org.opencontainers.image.ref.name")?;
    // A bare tag ("latest") names no repository.
    (name.contains('/') || name.contains(':')).then(|| normalize_reference(name))
}

/// Sets the garbage collector's reference labels on `top` and the indexes and manifests
/// below it, so that the image keeps all its blobs.
pub(super) async fn label_children(
    conn: &Connection,
    small: &HashMap<String, Vec<u8>>,
    top: &JsonDescriptor,
) -> Result<(), ContainerdError> {
    let mut pending = vec![top.clone()];
    while let Some(descriptor) = pending.pop() {
        let Some(bytes) = small.get(&descriptor.digest) else {
            continue;
        };
        let mut labels = Vec::new();
        if let Ok(index) = serde_json::from_slice::<Index>(bytes) {
            for (idx, child) in index.manifests.iter().enumerate() {
                labels.push((
                    format!("containerd.io/gc.ref.content.m.{idx}"),
                    child.digest.clone(),
                ));
                pending.push(child.clone());
            }
        } else if let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes) {
            let config = manifest.config.digest.clone();
            labels.push(("containerd.io/gc.ref.content.config".to_owned(), config));
            for (idx, layer) in manifest.layers.iter().enumerate() {
                labels.push((
                    format!("containerd.io/gc.ref.content.l.{idx}"),
                    layer.digest.clone(),
                ));
            }
        }
        set_labels(conn, &descriptor.digest, &labels).await?;
    }
    Ok(())
}

/// Creates image `name` pointing at `target`, or points an existing one there.
pub(super) async fn put_image(
    conn: &Connection,
    name: &str,
    target: &JsonDescriptor,
) -> Result<(), ContainerdError> {
    let image = Image {
        name: name.to_owned(),
        target: Some(target.to_proto()),
        ..Image::default()
    };
    let mut images = ImagesClient::new(conn.channel.clone());
    let create = CreateImageRequest {
        image: Some(image.clone()),
        ..CreateImageRequest::default()
    };
    match images.create(conn.request(create, None)).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let update = UpdateImageRequest {
                image: Some(image),
                ..UpdateImageRequest::default()
            };
            images
                .update(conn.request(update, None))
                .await
                .map(drop)
                .map_err(call("update image"))
        }
        Err(status) => Err(call("create image")(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names() {
        let hex = "ab".repeat(32);
        assert_eq!(
            blob_digest(&format!("blobs/sha256/{hex}")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(blob_digest("blobs/sha256/"), None);
        assert_eq!(blob_digest("blobs/sha256/../x"), None);
        assert_eq!(blob_digest("oci-layout"), None);
    }
}
