//! Running a command inside a replica's running container, for exec health checks: a process
//! spec made from the container's own (its user, environment, working directory,
//! capabilities) with the check's argv, run by containerd's task Exec and Start, waited for
//! within a timeout (killed past it), then deleted. Its output goes to a file in the replica's
//! directory, through the shim as the task's does, and the first of it says why a check
//! failed.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};

use super::client::{Connection, ContainerdError, call};

/// The protobuf type of an OCI runtime spec's process, as containerd's Exec takes it.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// How long a killed exec process gets to go before it is deleted regardless.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// The most of an exec's output read back.
const MAX_OUTPUT_BYTES: u64 = 4096;
/// SIGKILL, as containerd's Kill takes it.
const SIGKILL: u32 = 9;

/// Where a replica's exec health checks run: in its container, on the containerd that runs
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerExec {
    /// containerd's socket.
    pub socket: PathBuf,
    /// The containerd namespace.
    pub namespace: String,
    /// The container (the replica id).
    pub container_id: String,
    /// The file the check's output goes to (replaced by each check).
    pub output: PathBuf,
}

/// How an exec that ran ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecExit {
    /// Its exit status (128 + N for death by signal N).
    pub status: u32,
    /// The first [`MAX_OUTPUT_BYTES`] of its standard output and error.
    pub output: Vec<u8>,
}

/// Why an exec did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// containerd refused (the command does not exist in the image, the task is gone).
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The container has no usable process spec.
    #[error("container {0} has no process spec")]
    NoSpec(String),
    /// It outlived its timeout and was killed.
    #[error("killed after its timeout")]
    TimedOut,
}

/// Runs `argv` in the container `target` names and waits at most `timeout` for it.
///
/// # Errors
/// [`ExecError`].
///
/// # Cancel safety
/// A dropped call leaves the exec process to be killed and deleted in the background.
pub async fn exec_in_container(
    target: &ContainerExec,
    argv: &[String],
    timeout: Duration,
) -> Result<ExecExit, ExecError> {
    let conn = Connection::connect(&target.socket, &target.namespace).await?;
    let process = process_spec(&conn, &target.container_id, argv).await?;
    let exec_id = exec_id();
    // A left-over file of an earlier check would be appended to.
    let _ = std::fs::remove_file(&target.output);
    let output_uri = format!("file://{}", target.output.display());
    let request = ExecProcessRequest {
        container_id: target.container_id.clone(),
        stdout: output_uri.clone(),
        stderr: output_uri,
        spec: Some(prost_types::Any {
            type_url: PROCESS_TYPE_URL.to_owned(),
            value: process.to_string().into_bytes(),
        }),
        exec_id: exec_id.clone(),
        ..ExecProcessRequest::default()
    };
    // Armed before the Exec call: a caller that goes away during it may leave a process.
    let mut guard = DeleteOnDrop {
        conn: Some(conn.clone()),
        container_id: target.container_id.clone(),
        exec_id: exec_id.clone(),
    };
    let ran = match TasksClient::new(conn.channel.clone())
        .exec(conn.request(request, None))
        .await
    {
        Ok(_) => start_and_wait(&conn, &target.container_id, &exec_id, timeout).await,
        Err(status) => Err(call("exec")(status).into()),
    };
    guard.conn = None;
    delete(&conn, &target.container_id, &exec_id).await;
    let status = ran?;
    Ok(ExecExit {
        status,
        output: read_output(&target.output),
    })
}

/// The container's own process spec with `argv` in place of its args.
async fn process_spec(
    conn: &Connection,
    container_id: &str,
    argv: &[String],
) -> Result<serde_json::Value, ExecError> {
    let request = GetContainerRequest {
        id: container_id.to_owned(),
    };
    let container = ContainersClient::new(conn.channel.clone())
        .get(conn.request(request, None))
        .await
        .map_err(call("get container"))?
        .into_inner()
        .container;
    let no_spec = || ExecError::NoSpec(container_id.to_owned());
    let spec = container.and_then(|c| c.spec).ok_or_else(no_spec)?;
    let spec: serde_json::Value = serde_json::from_slice(&spec.value).map_err(|_| no_spec())?;
    let mut process = spec.get("process").cloned().ok_or_else(no_spec)?;
    let object = process.as_object_mut().ok_or_else(no_spec)?;
    object.insert("args".to_owned(), serde_json::json!(argv));
    object.insert("terminal".to_owned(), serde_json::Value::Bool(false));
    Ok(process)
}

async fn start_and_wait(
    conn: &Connection,
    container_id: &str,
    exec_id: &str,
    timeout: Duration,
) -> Result<u32, ExecError> {
    let mut tasks = TasksClient::new(conn.channel.clone());
    let start = StartRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    tasks
        .start(conn.request(start, None))
        .await
        .map_err(call("start exec"))?;
    let wait = || WaitRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    match tokio::time::timeout(timeout, tasks.wait(conn.request(wait(), None))).await {
        Ok(waited) => Ok(waited
            .map_err(call("wait for exec"))?
            .into_inner()
            .exit_status),
        Err(_) => {
            let kill = KillRequest {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                signal: SIGKILL,
                all: false,
            };
            if let Err(status) = tasks.kill(conn.request(kill, None)).await {
                tracing::debug!(container = container_id, error = %status.message(), "cannot kill exec");
            }
            let _ = tokio::time::timeout(KILL_WAIT, tasks.wait(conn.request(wait(), None))).await;
            Err(ExecError::TimedOut)
        }
    }
}

/// Deletes the exec process; one already gone is fine, and any other failure is only logged
/// (containerd drops it with the task).
async fn delete(conn: &Connection, container_id: &str, exec_id: &str) {
    let request = DeleteProcessRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
    };
    let deleted = TasksClient::new(conn.channel.clone())
        .delete_process(conn.request(request, None))
        .await;
    if let Err(status) = deleted
        && status.code() != tonic::Code::NotFound
    {
        tracing::warn!(container = container_id, exec = exec_id, error = %status.message(), "cannot delete exec process");
    }
}

/// Kills and deletes an exec process whose caller went away before it could.
struct DeleteOnDrop {
    conn: Option<Connection>,
    container_id: String,
    exec_id: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (container_id, exec_id) = (self.container_id.clone(), self.exec_id.clone());
        runtime.spawn(async move {
            let kill = KillRequest {
                container_id: container_id.clone(),
                exec_id: exec_id.clone(),
                signal: SIGKILL,
                all: false,
            };
            let _ = TasksClient::new(conn.channel.clone())
                .kill(conn.request(kill, None))
                .await;
            delete(&conn, &container_id, &exec_id).await;
        });
    }
}

/// A fresh exec id: containerd wants letters, digits, `-`, `_`, `.`, a letter or digit first.
fn exec_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("health-{nanos}-{}", fastrand::u32(..))
}

/// The first [`MAX_OUTPUT_BYTES`] of the output file, which is then removed; empty when it
/// cannot be read.
fn read_output(path: &std::path::Path) -> Vec<u8> {
    let mut kept = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(MAX_OUTPUT_BYTES).read_to_end(&mut kept);
    }
    let _ = std::fs::remove_file(path);
    kept
}
