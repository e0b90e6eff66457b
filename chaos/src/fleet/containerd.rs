//! A containerd of each agent's own, for fleets whose agents run containers.
//!
//! It runs in the agent's network namespace, entered with `nsenter --net` rather than
//! `ip netns exec`: the latter also remounts `/sys`, which hides the cgroup hierarchy runc
//! needs. Its shims and their containers (host network) inherit the namespace, so a fault on
//! the agent's links is a fault on its containers' too, and a reboot step (SIGKILL of every
//! process in the namespace) takes containerd, the shims and the containers down together,
//! as a power cut does. Everything lives under `<run dir>/<node>/containerd/`: `root/` (the
//! content store, snapshots and container records: kept, as on disk), `state/` (wiped at
//! boot, as `/run` is a tmpfs on a real box), the socket and `containerd.log`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The containerd namespace Warren's agents use.
const NAMESPACE: &str = "warren";

/// Where runc keeps its state for that namespace when the client names no root (our agents
/// do not): one directory per container, shared by every containerd on the machine. On a
/// real box it is on a tmpfs, so a power cut empties it.
const RUNC_STATE: &str = "/run/containerd/runc/warren";

/// How long containerd may take to open its socket.
const STARTUP_WAIT: Duration = Duration::from_secs(20);

/// How long a graceful stop may take.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One agent's containerd.
#[derive(Debug)]
pub struct NodeContainerd {
    dir: PathBuf,
    netns: String,
    child: Option<Child>,
}

impl NodeContainerd {
    /// Starts containerd for the agent in `netns`, with everything under `dir`.
    ///
    /// # Errors
    /// Writing its config, spawning it, or no socket within [`STARTUP_WAIT`].
    pub fn start(netns: &str, dir: &Path) -> Result<NodeContainerd> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut daemon = NodeContainerd {
            dir: dir.to_owned(),
            netns: netns.to_owned(),
            child: None,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Its gRPC socket (what `agent join --containerd-socket` is given).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Boots containerd again after a power cut killed it: reaps it, empties what a reboot
    /// empties (its state dir and runc's state of its containers), and starts it on the same
    /// root. Does nothing while it still runs.
    ///
    /// # Errors
    /// As [`NodeContainerd::start`], or when the old state cannot be removed.
    pub fn boot(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().context("poll containerd")?.is_none() {
                return Ok(());
            }
            self.child = None;
        }
        let state = self.dir.join("state");
        unmount_under(&state)?;
        if state.exists() {
            fs::remove_dir_all(&state).with_context(|| format!("remove {}", state.display()))?;
        }
        self.forget_runc_state()?;
        self.spawn()
    }

    /// Removes runc's state of this daemon's containers: the directories whose bundle is in
    /// this daemon's state dir (other containerds on the machine keep theirs).
    fn forget_runc_state(&self) -> Result<()> {
        let Ok(entries) = fs::read_dir(RUNC_STATE) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let Ok(text) = fs::read_to_string(entry.path().join("state.json")) else {
                continue;
            };
            if bundle_of(&text).is_some_and(|bundle| bundle.starts_with(&self.dir)) {
                tracing::info!(container = %entry.path().display(), "forget runc state after the power cut");
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("remove {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let socket = self.socket();
        let _ = fs::remove_file(&socket);
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n\
             [debug]\n  address = \"\"\n\n[metrics]\n  address = \"\"\n",
            root = self.dir.join("root").display(),
            state = self.dir.join("state").display(),
            sock = socket.display(),
        );
        let config_path = self.dir.join("config.toml");
        fs::write(&config_path, config)
            .with_context(|| format!("write {}", config_path.display()))?;
        let log_path = self.dir.join("containerd.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .context("start containerd (nsenter)")?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_WAIT;
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!(
                    "containerd opened no socket in {STARTUP_WAIT:?}; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Runs `ctr` against this daemon in Warren's namespace; its standard output and error.
    fn ctr(&self, args: &[&str]) -> (String, String) {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                (
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                    String::from_utf8_lossy(&o.stderr).into_owned(),
                )
            })
            .unwrap_or_default()
    }

    /// Kills and deletes every task and container (so runc's shared state and the cgroups
    /// go with them), then stops containerd. Best effort: teardown goes on regardless.
    pub fn stop(&mut self) {
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            let (listed, _) = self.ctr(&["containers", "ls", "-q"]);
            let ids: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
            for id in &ids {
                self.ctr(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
            }
            for id in &ids {
                // A task SIGKILLed a moment ago may still be stopping.
                for _ in 0..100 {
                    let (_, error) = self.ctr(&["tasks", "rm", "-f", id]);
                    if !error.contains("running") {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let (_, error) = self.ctr(&["containers", "rm", id]);
                if !error.trim().is_empty() {
                    tracing::warn!(container = %id, "ctr containers rm: {}", error.trim());
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = crate::netns::signal(child.id(), rustix::process::Signal::TERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever the removal above could not undo (containerd already dead, say) must not
        // outlive the run: root filesystems stay mounted and runc keeps the ids otherwise.
        if let Err(error) = unmount_under(&self.dir.join("state")) {
            tracing::warn!("{error:#}");
        }
        let _ = self.forget_runc_state();
    }
}

/// Undoes what the containerds of a run under `run_dir` leave when they are killed with
/// their namespace (a crashed harness): their containers' mounts and runc state.
///
/// # Errors
/// When a mount cannot be detached or a runc state dir removed.
pub fn forget_containers(run_dir: &Path) -> Result<()> {
    let Ok(nodes) = fs::read_dir(run_dir) else {
        return Ok(());
    };
    for node in nodes.flatten() {
        let dir = node.path().join("containerd");
        if dir.is_dir() {
            unmount_under(&dir.join("state"))?;
            let daemon = NodeContainerd {
                dir,
                netns: String::new(),
                child: None,
            };
            daemon.forget_runc_state()?;
        }
    }
    Ok(())
}

/// Detaches every mount under `dir` (the containers' root filesystems in their bundles),
/// deepest first: a power cut leaves none, killing the processes leaves them all.
fn unmount_under(dir: &Path) -> Result<()> {
    let table = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = mount_points(&table)
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        match rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(error) => {
                return Err(error).with_context(|| format!("unmount {}", point.display()));
            }
        }
    }
    Ok(())
}

/// The mount points of a `/proc/self/mountinfo` table (the fifth field, with the kernel's
/// octal escapes of space, tab, newline and backslash undone).
fn mount_points(table: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| {
            PathBuf::from(
                point
                    .replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .collect()
}

/// The bundle directory runc's `state.json` names (containerd labels every container with
/// `bundle=<dir>`).
fn bundle_of(state_json: &str) -> Option<PathBuf> {
    let state: serde_json::Value = serde_json::from_str(state_json).ok()?;
    state["config"]["labels"]
        .as_array()?
        .iter()
        .filter_map(serde_json::Value::as_str)
        .find_map(|label| label.strip_prefix("bundle="))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_the_fifth_field_unescaped() {
        let table = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                     90 22 0:50 / /tmp/r/a\\0401/rootfs rw - overlay overlay rw\n\
                     short line\n";
        assert_eq!(
            mount_points(table),
            [PathBuf::from("/"), PathBuf::from("/tmp/r/a 1/rootfs")]
        );
    }

    #[test]
    fn the_bundle_comes_from_runc_state_labels() {
        let state = r#"{"id":"web.0","config":{"labels":["a=b","bundle=/tmp/r/a-1/containerd/state/io.containerd.runtime.v2.task/warren/web.0"]}}"#;
        assert_eq!(
            bundle_of(state),
            Some(PathBuf::from(
                "/tmp/r/a-1/containerd/state/io.containerd.runtime.v2.task/warren/web.0"
            ))
        );
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"config":{"labels":"x"}}"#,
            r#"{"config":{"labels":[1]}}"#,
        ] {
            assert_eq!(bundle_of(bad), None, "{bad:?}");
        }
    }
}
