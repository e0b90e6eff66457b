//! Containers and their tasks in containerd: making a replica's container from an image and
//! a runtime spec, starting its task with output to the replica's log file, and asking after,
//! signalling and deleting them.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, StartRequest,
};
use containerd_client::types::v1::Status;
use tonic::Code;

use super::WORKLOAD_HASH_LABEL;
use super::client::{Connection, ContainerdError, Lease, call};
use super::image::{ResolvedImage, unpack};
use crate::runtime::RuntimeError;

/// The shim every container runs under.
const RUNC_SHIM: &str = "io.containerd.runc.v2";
/// The protobuf type of an OCI runtime spec, as containerd stores it.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Label naming the replica a container is.
const REPLICA_LABEL: &str = "warren.replica";

/// What containerd says about a container's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Created, running or paused: its init process exists.
    Running { pid: u32 },
    /// Its init process has exited with `status`.
    Exited { pid: u32, status: u32 },
    /// No task (never started, deleted, or gone with a reboot).
    NoTask,
}

fn not_found(result: Result<(), ContainerdError>) -> Result<(), ContainerdError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// The state of container `id`'s task.
pub(crate) async fn state(conn: &Connection, id: &str) -> Result<TaskState, ContainerdError> {
    let request = GetRequest {
        container_id: id.to_owned(),
        exec_id: String::new(),
    };
    let response = TasksClient::new(conn.channel.clone())
        .get(conn.request(request, None))
        .await;
    let process = match response {
        Ok(response) => response.into_inner().process.unwrap_or_default(),
        Err(status) if status.code() == Code::NotFound => return Ok(TaskState::NoTask),
        Err(status) => return Err(call("get task")(status)),
    };
    Ok(if process.status == Status::Stopped as i32 {
        TaskState::Exited {
            pid: process.pid,
            status: process.exit_status,
        }
    } else {
        TaskState::Running { pid: process.pid }
    })
}

async fn get_container(conn: &Connection, id: &str) -> Result<Option<Container>, ContainerdError> {
    let request = GetContainerRequest { id: id.to_owned() };
    match ContainersClient::new(conn.channel.clone())
        .get(conn.request(request, None))
        .await
    {
        Ok(response) => Ok(response.into_inner().container),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(call("get container")(status)),
    }
}

/// Whether container `id` exists.
pub(crate) async fn container_exists(conn: &Connection, id: &str) -> Result<bool, ContainerdError> {
    Ok(get_container(conn, id).await?.is_some())
}

/// The spec hash container `id` was made from, if it exists and says.
pub(crate) async fn workload_hash(
    conn: &Connection,
    id: &str,
) -> Result<Option<u64>, ContainerdError> {
    let container = get_container(conn, id).await?;
    Ok(container
        .and_then(|c| c.labels.get(WORKLOAD_HASH_LABEL).cloned())
        .and_then(|hash| hash.parse().ok()))
}

/// Sends `signal` to every process of container `id`'s task.
pub(crate) async fn kill(conn: &Connection, id: &str, signal: u32) -> Result<(), ContainerdError> {
    let request = KillRequest {
        container_id: id.to_owned(),
        exec_id: String::new(),
        signal,
        all: true,
    };
    let killed = TasksClient::new(conn.channel.clone())
        .kill(conn.request(request, None))
        .await
        .map(drop)
        .map_err(call("kill task"));
    not_found(killed)
}

/// Deletes container `id`'s (stopped) task, the container and its snapshot; each step that
/// finds nothing to delete is fine.
pub(crate) async fn remove_all(
    conn: &Connection,
    snapshotter: &str,
    id: &str,
) -> Result<(), ContainerdError> {
    let task = DeleteTaskRequest {
        container_id: id.to_owned(),
    };
    let deleted = TasksClient::new(conn.channel.clone())
        .delete(conn.request(task, None))
        .await
        .map(drop)
        .map_err(call("delete task"));
    not_found(deleted)?;
    let container = DeleteContainerRequest { id: id.to_owned() };
    let deleted = ContainersClient::new(conn.channel.clone())
        .delete(conn.request(container, None))
        .await
        .map(drop)
        .map_err(call("delete container"));
    not_found(deleted)?;
    let snapshot = RemoveSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        key: id.to_owned(),
    };
    let removed = SnapshotsClient::new(conn.channel.clone())
        .remove(conn.request(snapshot, None))
        .await
        .map(drop)
        .map_err(call("remove snapshot"));
    not_found(removed)
}

/// Everything needed to make and start one replica's container.
pub(crate) struct Create<'a> {
    pub(crate) id: &'a str,
    pub(crate) workload_hash: u64,
    pub(crate) image: &'a ResolvedImage,
    pub(crate) snapshotter: &'a str,
    pub(crate) spec: &'a serde_json::Value,
    /// The file the shim appends the task's output to (`stdout.log`; `stderr.log` beside it
    /// with a `logger`).
    pub(crate) log: &'a Path,
    /// The log writer to start beside the task ([`super::logger`]); `None`: file stdio.
    pub(crate) logger: Option<&'a Path>,
}

impl Create<'_> {
    /// Unpacks the image if needed, makes the container and starts its task; returns the
    /// task's pid. On failure, removes what it made.
    pub(crate) async fn run(&self, conn: &Connection) -> Result<u32, RuntimeError> {
        let lease = conn.lease("start").await?;
        let result = self.run_under(conn, &lease).await;
        conn.release(lease).await;
        if result.is_err()
            && let Err(e) = remove_all(conn, self.snapshotter, self.id).await
        {
            tracing::warn!(container = self.id, error = %e, "cannot remove a half-made container");
        }
        result
    }

    async fn run_under(&self, conn: &Connection, lease: &Lease) -> Result<u32, RuntimeError> {
        let unpacked = unpack(conn, self.snapshotter, self.image, lease)
            .await
            .map_err(|e| RuntimeError::ImageUnavailable {
                reference: self.image.name.clone(),
                reason: format!("cannot unpack: {e}"),
            })?;
        if unpacked > 0 {
            tracing::info!(image = self.image.name, layers = unpacked, "unpacked image");
        }
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.to_owned(),
            key: self.id.to_owned(),
            parent: self.image.top_chain_id().unwrap_or_default(),
            labels: HashMap::new(),
        };
        let rootfs = SnapshotsClient::new(conn.channel.clone())
            .prepare(conn.request(prepare, Some(lease)))
            .await
            .map_err(call("prepare container snapshot"))?
            .into_inner()
            .mounts;
        self.create_container(conn).await?;
        let (stdout, stderr) = match (self.logger, self.log.parent()) {
            (Some(logger), Some(dir)) => {
                let uri = super::logger::uri(logger, dir);
                (uri.clone(), uri)
            }
            _ => {
                let uri = format!("file://{}", self.log.display());
                (uri.clone(), uri)
            }
        };
        let task = CreateTaskRequest {
            container_id: self.id.to_owned(),
            rootfs,
            stdout,
            stderr,
            ..CreateTaskRequest::default()
        };
        let mut tasks = TasksClient::new(conn.channel.clone());
        tasks
            .create(conn.request(task, None))
            .await
            .map_err(call("create task"))?;
        let start = StartRequest {
            container_id: self.id.to_owned(),
            exec_id: String::new(),
        };
        let started = tasks
            .start(conn.request(start, None))
            .await
            .map_err(call("start task"))?;
        Ok(started.into_inner().pid)
    }

    async fn create_container(&self, conn: &Connection) -> Result<(), ContainerdError> {
        let labels = HashMap::from([
            (
                WORKLOAD_HASH_LABEL.to_owned(),
                self.workload_hash.to_string(),
            ),
            (REPLICA_LABEL.to_owned(), self.id.to_owned()),
        ]);
        let container = Container {
            id: self.id.to_owned(),
            labels,
            image: self.image.name.clone(),
            runtime: Some(ContainerRuntimeInfo {
                name: RUNC_SHIM.to_owned(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value: self.spec.to_string().into_bytes(),
            }),
            snapshotter: self.snapshotter.to_owned(),
            snapshot_key: self.id.to_owned(),
            ..Container::default()
        };
        let request = CreateContainerRequest {
            container: Some(container),
        };
        ContainersClient::new(conn.channel.clone())
            .create(conn.request(request, None))
            .await
            .map(drop)
            .map_err(call("create container"))
    }
}
