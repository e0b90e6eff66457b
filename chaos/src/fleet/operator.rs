//! The operator's seat: `warren` commands run from the bridge namespace with the fleet's
//! admin config, the control nodes' API addresses, and the admin config itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use super::{API_PORT, Fleet, POLL_INTERVAL, Role};
use crate::netns;

impl Fleet {
    /// A fresh join token for `role` (`agent` or `control`), made through the CLI.
    pub(super) fn token(&self, role: &str) -> Result<String> {
        let token = self.cli(&["token", "create", "--role", role])?;
        Ok(token.trim().to_owned())
    }

    /// A `warren` command with the fleet's admin config, run from the operator's seat.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = netns::exec_in(
            &self.bridge_netns(),
            &self.options.warren.display().to_string(),
        );
        command.arg("--config").arg(self.admin_conf()).args(args);
        command
    }

    /// Runs `warren --config <admin.conf> args…` from the operator's seat; returns stdout.
    ///
    /// # Errors
    /// When it exits non-zero (the error carries its stderr).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = self
            .cli_command(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run warren {}", args.join(" ")))?;
        if !output.status.success() {
            bail!(
                "warren {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `HOST:PORT` of every control node's API, in order.
    pub fn control_api_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Control)
            .map(|n| format!("{}:{API_PORT}", n.host.addr))
            .collect()
    }

    /// `HOST:PORT` of control node `name`'s API.
    ///
    /// # Errors
    /// When there is no such control node.
    pub fn api_addr(&self, name: &str) -> Result<String> {
        let node = self.node(name)?;
        if node.role != Role::Control {
            bail!("{name} is not a control node");
        }
        Ok(format!("{}:{API_PORT}", node.host.addr))
    }

    /// The fleet's admin config: `<run dir>/admin.conf`, the operator's copy of the init
    /// node's (until it is taken, the init node's own).
    pub fn admin_conf(&self) -> PathBuf {
        let fleet = self.options.run_dir.join("admin.conf");
        if fleet.is_file() {
            return fleet;
        }
        self.init_admin_conf()
    }

    pub(super) fn init_admin_conf(&self) -> PathBuf {
        self.options
            .run_dir
            .join("c1")
            .join("data")
            .join("admin.conf")
    }

    /// Takes the operator's copy of the admin config once the init node's lists every control
    /// node: the cluster keeps that list current as members join, and the CLI keeps the copy
    /// current afterwards. The harness never writes addresses into it itself.
    pub(super) fn take_admin_conf(&self) -> Result<()> {
        let source = self.init_admin_conf();
        let mut wanted = self.control_api_addrs();
        wanted.sort();
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            let mut listed = admin_conf_api(&source)?;
            listed.sort();
            if listed == wanted {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} lists {} after {:?}, not every control node ({})",
                    source.display(),
                    listed.join(","),
                    self.options.ready_timeout,
                    wanted.join(",")
                );
            }
            if self.options.cancel.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let target = self.options.run_dir.join("admin.conf");
        std::fs::copy(&source, &target)
            .with_context(|| format!("copy {} to {}", source.display(), target.display()))?;
        // It holds the admin key.
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("restrict {}", target.display()))
    }

    /// The namespace of the bridge and the operator's seat.
    pub fn bridge_netns(&self) -> String {
        format!("{}bridge", self.run.prefix())
    }
}

/// The `api` list of the admin config at `path`.
///
/// # Errors
/// An unreadable file, or one without an `api` list of strings.
pub fn admin_conf_api(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let config: serde_json::Value =
        serde_norway::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    config["api"]
        .as_array()
        .and_then(|list| {
            list.iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| anyhow!("{}: no `api` list of addresses", path.display()))
}
