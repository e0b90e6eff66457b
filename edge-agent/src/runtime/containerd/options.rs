//! [`ContainerdOptions`]: the container runtime's settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER, DEFAULT_SOCKET};

/// Settings of a [`ContainerdRuntime`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdOptions {
    /// containerd's gRPC socket. Default [`DEFAULT_SOCKET`].
    pub socket: PathBuf,
    /// Our namespace in containerd. Default [`DEFAULT_NAMESPACE`].
    pub namespace: String,
    /// Snapshotter to unpack images into. Default [`DEFAULT_SNAPSHOTTER`].
    pub snapshotter: String,
    /// A log file larger than this is rotated. Default 10 MiB.
    pub log_max_bytes: u64,
    /// Log files kept per stream, the live one included. Default 3.
    pub log_files_max: u32,
    /// What containers see as `/etc/resolv.conf` (the agent's DNS); `None`: the host's.
    pub resolv_conf: Option<PathBuf>,
    /// Where cgroup v1 controllers are mounted (to remove what runc leaves). Default
    /// `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// Pull an image that is not in the store from its registry. Default true.
    pub pull: bool,
    /// Where local volumes' directories go (`runtime::volumes`); `None`: beside the runtime's
    /// root, as `<root>-volumes` (the agent passes `<data dir>-volumes`). Default `None`.
    pub volumes_dir: Option<PathBuf>,
    /// Volumes served from host directories instead, by name (`--host-volume NAME=PATH`).
    /// Default empty.
    pub host_volumes: std::collections::BTreeMap<String, PathBuf>,
    /// The log writer the shim starts beside each new task (`logger`: the `warren` binary
    /// under the name [`super::LOGGER_NAME`]), so that standard output and standard error
    /// reach `stdout.log` and `stderr.log`; `None`: the shim's own file stdio, both streams
    /// into `stdout.log`. Default `None`.
    pub logger: Option<PathBuf>,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            socket: PathBuf::from(DEFAULT_SOCKET),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_owned(),
            log_max_bytes: 10 * 1024 * 1024,
            log_files_max: 3,
            resolv_conf: None,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            pull: true,
            volumes_dir: None,
            host_volumes: std::collections::BTreeMap::new(),
            logger: None,
        }
    }
}

impl ContainerdOptions {
    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !plain(&self.namespace) {
            return Err(format!(
                "namespace must be letters, digits, '-', '_', '.': {:?}",
                self.namespace
            ));
        }
        if !plain(&self.snapshotter) {
            return Err(format!(
                "snapshotter must be a plain name: {:?}",
                self.snapshotter
            ));
        }
        if self.log_files_max == 0 || self.log_max_bytes < 4096 {
            return Err(
                "log_files_max must be at least 1 and log_max_bytes at least 4096".to_owned(),
            );
        }
        crate::runtime::volumes::check_host_volumes(&self.host_volumes, None)
    }
}
