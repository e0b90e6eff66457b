//! The init node's admin config follows the control members: while a control node whose data
//! dir holds `admin.conf` (the one `control init` wrote there) runs, that file's `api` list is
//! kept equal to the members' API addresses, by the rule of [`crate::config_sync`]. So the file
//! an operator copies from the init node lists every control node, and a client using it fails
//! over to them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use warren_control::control::Control;
use warren_control::members;
use warren_control::node::ControlNode;

use crate::config::ADMIN_CONF;
use crate::config_sync::{Sighting, Updated, update_file};

/// How soon the admin config is looked at again after this node could not prove it is caught
/// up (no quorum), so that a member that left is dropped once it can.
const ADMIN_CONF_RETRY: Duration = Duration::from_secs(5);

/// The running watch; [`AdminConfWatch::stop`] ends it.
pub struct AdminConfWatch {
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminConfWatch {
    /// Starts keeping `<data-dir>/admin.conf` current, if the node has one; otherwise does
    /// nothing.
    pub fn start(node: &ControlNode) -> Self {
        let cancel = CancellationToken::new();
        let path = node.data_dir().join(ADMIN_CONF);
        let task = path.is_file().then(|| {
            tokio::spawn(keep_admin_conf_current(
                Arc::clone(node.control()),
                path,
                node.settings().advertise_api.clone(),
                cancel.clone(),
            ))
        });
        AdminConfWatch { cancel, task }
    }

    /// Stops the watch and waits for it.
    ///
    /// # Cancel safety
    /// The watch is told to stop at once; dropping this future only skips the wait.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Keeps the `api` list of the admin config at `path` equal to the members' API addresses
/// while the node runs, by the rule of [`crate::config_sync`]: additions at once, removals
/// once this node has proven with a linearizable read that its membership is not behind.
async fn keep_admin_conf_current(
    control: Arc<Control>,
    path: PathBuf,
    own_api: String,
    cancel: CancellationToken,
) {
    let fingerprint = data_encoding::HEXLOWER.encode(&control.fingerprint());
    let mut settled: Vec<String> = Vec::new();
    loop {
        let changed = tokio::select! {
            () = cancel.cancelled() => return,
            changed = members::api_addrs_changed(&control, &settled) => changed,
        };
        if changed.is_none() {
            return;
        }
        let current = tokio::select! {
            () = cancel.cancelled() => return,
            read = control.read_linearizable() => read.is_ok(),
        };
        let sighting = Sighting {
            members: members::api_addrs(&control),
            answered: own_api.clone(),
            current,
        };
        match update_file(&path, &sighting, &fingerprint) {
            Ok(Updated::Rewritten(api)) => tracing::info!(
                path = %path.display(),
                api = %api.join(","),
                "admin config lists the control members"
            ),
            Ok(Updated::Unchanged) => {}
            Ok(Updated::LeftAlone(reason)) => {
                tracing::info!(path = %path.display(), reason, "admin config not updated");
            }
            Err(error) => tracing::warn!(
                path = %path.display(),
                error = %format!("{error:#}"),
                "cannot update the admin config's API addresses"
            ),
        }
        if current {
            settled = sighting.members;
        } else {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(ADMIN_CONF_RETRY) => {}
            }
        }
    }
}
