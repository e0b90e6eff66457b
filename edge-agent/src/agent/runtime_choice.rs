//! `runtime.json`: which runtime this node runs its workloads with, as `agent join` (or a
//! later `agent run --runtime`) was told, and building that runtime at start.
//!
//! A file of its own beside `agent.json` rather than a field in it: `agent.json` refuses
//! unknown fields, so an older agent could no longer start from a data dir that had one. A
//! data dir without the file is a process-runtime node, as every node was before containers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warren_transport::write_atomic;

use super::{AgentError, AgentOptions, io_error, read_json};
use crate::runtime::containerd::{ContainerdOptions, DEFAULT_SOCKET};
use crate::runtime::{ContainerdRuntime, ProcessRuntime, ProcessRuntimeOptions, Runtime};

/// The runtime choice's file in the data dir.
pub const RUNTIME_FILE: &str = "runtime.json";

/// Which runtime runs this node's workloads. One per node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runtime", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuntimeChoice {
    /// Native processes (the default).
    #[default]
    Process,
    /// Containers of OCI images, through containerd.
    Containerd {
        /// containerd's gRPC socket.
        socket: PathBuf,
    },
}

impl RuntimeChoice {
    /// containerd on its usual socket.
    pub fn containerd_default() -> Self {
        RuntimeChoice::Containerd {
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// The choice kept in `data_dir`; `None` when none was ever written (a process node).
///
/// # Errors
/// [`AgentError::Unparsable`] for a file that does not parse; other read errors.
pub fn load_runtime_choice(data_dir: &Path) -> Result<Option<RuntimeChoice>, AgentError> {
    let path = data_dir.join(RUNTIME_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_json(path).map(Some)
}

/// Keeps `choice` in `data_dir` for later starts.
///
/// # Errors
/// [`AgentError::Io`] when the file cannot be written.
pub fn save_runtime_choice(data_dir: &Path, choice: &RuntimeChoice) -> Result<(), AgentError> {
    let path = data_dir.join(RUNTIME_FILE);
    let json = serde_json::to_vec_pretty(choice).expect("a runtime choice always serializes");
    write_atomic(&path, &json, 0o644).map_err(io_error("write", &path))
}

/// The runtime to start with: the one `options` asks for (kept for later starts), else the
/// one kept in `data_dir`, else the process runtime.
pub(crate) fn choose(data_dir: &Path, options: &AgentOptions) -> Result<RuntimeChoice, AgentError> {
    let kept = load_runtime_choice(data_dir)?;
    match &options.runtime {
        Some(asked) => {
            if kept.as_ref() != Some(asked) {
                save_runtime_choice(data_dir, asked)?;
            }
            Ok(asked.clone())
        }
        None => Ok(kept.unwrap_or_default()),
    }
}

/// Builds the runtime `choice` names; `process` carries the settings both runtimes share
/// (replica directories, log bounds, the workloads' resolv.conf); containers' output goes
/// through `logger` when given.
pub(crate) fn build(
    data_dir: &Path,
    choice: &RuntimeChoice,
    process: &ProcessRuntimeOptions,
    logger: Option<&Path>,
) -> Result<Arc<dyn Runtime>, AgentError> {
    Ok(match choice {
        RuntimeChoice::Process => Arc::new(ProcessRuntime::for_agent(data_dir, process.clone())?),
        RuntimeChoice::Containerd { socket } => {
            let logger = logger
                .map(|program| logger_link(data_dir, program))
                .transpose()?;
            crate::runtime::volumes::check_host_volumes(&process.host_volumes, Some(data_dir))
                .map_err(|reason| crate::runtime::RuntimeError::InvalidOptions { reason })?;
            let root = process
                .workloads_dir
                .clone()
                .unwrap_or_else(|| crate::runtime::default_workloads_dir(data_dir));
            let options = ContainerdOptions {
                socket: socket.clone(),
                log_max_bytes: process.log_max_bytes,
                log_files_max: process.log_files_max,
                resolv_conf: process.resolv_conf.clone(),
                cgroup_root: process.cgroup_root.clone(),
                volumes_dir: Some(
                    process
                        .volumes_dir
                        .clone()
                        .unwrap_or_else(|| crate::runtime::volumes::default_volumes_dir(data_dir)),
                ),
                host_volumes: process.host_volumes.clone(),
                logger,
                ..ContainerdOptions::default()
            };
            Arc::new(ContainerdRuntime::new(root, options)?)
        }
    })
}

/// `<data dir>/warren-container-logger`, a link to `program` (made, or moved to it): the
/// name the shim starts the log writer by. An older binary's link moves to the running one.
fn logger_link(data_dir: &Path, program: &Path) -> Result<PathBuf, AgentError> {
    let link = data_dir.join(crate::runtime::containerd::LOGGER_NAME);
    if std::fs::read_link(&link).is_ok_and(|target| target == program) {
        return Ok(link);
    }
    let temporary = data_dir.join(format!(".{}.tmp", crate::runtime::containerd::LOGGER_NAME));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(program, &temporary)
        .and_then(|()| std::fs::rename(&temporary, &link))
        .map_err(io_error("link the container log writer", &link))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_is_kept_and_defaults_to_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = AgentOptions::default();
        assert_eq!(
            choose(dir.path(), &options).unwrap(),
            RuntimeChoice::Process
        );
        assert!(!dir.path().join(RUNTIME_FILE).exists());

        options.runtime = Some(RuntimeChoice::containerd_default());
        assert_eq!(
            choose(dir.path(), &options).unwrap(),
            RuntimeChoice::containerd_default()
        );
        let text = std::fs::read_to_string(dir.path().join(RUNTIME_FILE)).unwrap();
        assert!(text.contains(r#""runtime": "containerd""#), "{text}");

        options.runtime = None;
        assert_eq!(
            choose(dir.path(), &options).unwrap(),
            RuntimeChoice::containerd_default()
        );
    }
}
