//! `status.json`: what the agent last did, for `warren agent status` (which reads it with the
//! agent stopped too) — its format, reading it, and writing it only when it says something
//! new.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;
use warren_api::wire::ListenerStatus;
use warren_api::{HealthState, NodeId, ReplicaId, TaskState};

use super::{AgentError, read_json};
use crate::link::LinkStatus;

/// The local status file `warren agent status` reads.
pub const STATUS_FILE: &str = "status.json";
/// The file beside it that the next `status.json` is written into, then swapped with it: it
/// holds the one before.
const STATUS_SPARE: &str = ".status.json.spare";
/// The longest time between two writes of `status.json` when nothing in it changed: only its
/// timestamps (the write time, the link's last contact) would be news. Each write was then a
/// new file, an fsync, a rename and a directory fsync, about 26 kB reaching the disk with its
/// metadata; every 30 s that was 3.2 MB an hour on an idle box's flash (`benches/footprint.rs`).
/// A write is now the spare file rewritten, an fsync and an exchange ([`swap_in`]).
pub const STATUS_REFRESH: Duration = Duration::from_secs(600);

/// One replica in `status.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReplica {
    /// The replica.
    pub replica: ReplicaId,
    /// Its state as of the last pass.
    pub state: TaskState,
    /// The workload's process id, while the agent holds a workload for it.
    pub pid: Option<u32>,
    /// Restarts of the current workload.
    pub restarts: u32,
    /// The workload hash, 16 hex digits.
    pub workload_hash: Option<String>,
    /// When the workload started, unix millis.
    pub started_at_ms: Option<u64>,
    /// The health check's verdict on the current run: `unknown` without a check or before
    /// enough results.
    #[serde(default)]
    pub health: HealthState,
    /// Why the latest health probe failed, while it does (`2 of 3 failures: …`).
    #[serde(default)]
    pub health_detail: Option<String>,
}

/// What `status.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This node.
    pub node_id: NodeId,
    /// Node name.
    pub name: String,
    /// Site.
    pub site: String,
    /// The agent's own process id.
    pub agent_pid: u32,
    /// When the file was written, unix millis.
    pub updated_at_ms: u64,
    /// Revision of the view the agent acts on (0 before any).
    pub revision: u64,
    /// The link to control.
    pub link: LinkStatus,
    /// Every replica the agent knows of.
    pub replicas: Vec<LocalReplica>,
    /// Where the agent serves `/metrics`, if it does.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where it serves DNS and gossips, once started.
    #[serde(default)]
    pub discovery: crate::discovery::DiscoveryStatus,
    /// Each configured listener (metrics, DNS, gossip): its address, whether it is up, and
    /// why not while it is down (it is being retried).
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// Reads `status.json` from `data_dir`.
///
/// # Errors
/// [`AgentError::Io`] when missing, [`AgentError::Unparsable`] when it does not parse.
pub fn load_status(data_dir: &Path) -> Result<AgentStatus, AgentError> {
    read_json(data_dir.join(STATUS_FILE))
}

/// Writes `status.json` when what it says changed, or [`STATUS_REFRESH`] after the last
/// write (so its link contact time stays roughly current) — not on every pass: the data dir
/// may sit on flash, and each write is an fsync.
#[derive(Debug)]
pub(super) struct StatusWriter {
    path: PathBuf,
    spare: PathBuf,
    /// What `status.json` last held (without its timestamps), and when it was written.
    written: Option<(AgentStatus, tokio::time::Instant)>,
}

impl StatusWriter {
    pub(super) fn new(data_dir: &Path) -> Self {
        StatusWriter {
            path: data_dir.join(STATUS_FILE),
            spare: data_dir.join(STATUS_SPARE),
            written: None,
        }
    }

    /// Writes `status` unless the file already says the same and is fresh; `force` writes
    /// it regardless.
    pub(super) fn write(&mut self, status: &AgentStatus, force: bool) {
        let comparable = AgentStatus {
            updated_at_ms: 0,
            link: LinkStatus {
                last_contact_ms: None,
                ..status.link.clone()
            },
            ..status.clone()
        };
        let fresh = self
            .written
            .as_ref()
            .is_some_and(|(last, at)| *last == comparable && at.elapsed() < STATUS_REFRESH);
        if fresh && !force {
            return;
        }
        let json = serde_json::to_vec_pretty(status).expect("status serializes");
        if let Err(error) = swap_in(&self.path, &self.spare, &json) {
            warn!(error = %error, path = %self.path.display(), "cannot write agent status");
            return;
        }
        self.written = Some((comparable, tokio::time::Instant::now()));
    }
}

/// Replaces `path`'s content with `bytes` the way readers need (the old file or the new one,
/// never half of one) without making a file: `bytes` go into `spare`, flushed, and the two
/// names are exchanged (`renameat2(RENAME_EXCHANGE)`), so `spare` keeps the old content for the
/// next write. A new file and a rename every time, as before, made an inode and freed one per
/// write: on ext4 each allocation then scans the recently freed ones, which was the largest
/// share of 100 agents' kernel time on one box. The directory is not flushed: after a power
/// cut `status.json` may say what it said one write earlier, as the agent rewrites it at start.
///
/// Where the exchange is not supported (an old kernel, a filesystem without it), and the first
/// time (no `path` yet), `spare` is renamed onto `path`.
fn swap_in(path: &Path, spare: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(spare)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(cwd, spare, cwd, path, rustix::fs::RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            std::fs::rename(spare, path)
        }
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first write makes the file; each later one swaps the new content in and keeps the
    /// one before in the spare, always the same two files.
    #[test]
    fn swap_in_replaces_the_content_and_keeps_two_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, spare) = (dir.path().join(STATUS_FILE), dir.path().join(STATUS_SPARE));
        swap_in(&path, &spare, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        swap_in(&path, &spare, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read(&spare).unwrap(), b"one");
        let inodes = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let before = [inodes(&path), inodes(&spare)];
        swap_in(&path, &spare, b"three, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three, longer");
        assert_eq!(
            [inodes(&spare), inodes(&path)],
            before,
            "no new file per write"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
