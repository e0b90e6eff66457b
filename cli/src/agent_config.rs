//! The file `warren agent up` reads (`/etc/warren/agent.yaml`): every setting an operator gives
//! `agent join`, so that a box flashed with this one file joins by itself on first boot.
//!
//! The file is turned into the very flags `agent join` and `agent run` take
//! ([`JoinFlags`], [`RunFlags`]) and checked by their code; an error that names a flag is
//! reworded to name the file and the field (`/etc/warren/agent.yaml: listen.metrics: …`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::Deserialize;

use crate::agent_cmd::{JoinFlags, ListenArgs, RunFlags, RuntimeArgs, RuntimeKind};
use crate::control_cmd::{DEFAULT_DATA_DIR, TokenArgs};
use crate::wireguard_args::{WireguardArgs, WireguardMode};

/// Where `warren agent up` reads its file unless told otherwise.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/warren/agent.yaml";

/// Files larger than this are refused before parsing: a config file is a few hundred bytes.
const CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its files.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// QUIC addresses of control nodes.
    pub control: Vec<String>,
    /// A file that holds the join token; read only when the box has not joined yet.
    pub token_file: Option<PathBuf>,
    /// The join token itself (the file is root-only as a token file is).
    pub token: Option<String>,
    /// Node name; default the host name.
    pub name: Option<String>,
    /// Site; default `default`.
    pub site: Option<String>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Workload runtime.
    pub runtime: Option<RuntimeKind>,
    /// containerd's socket.
    pub containerd_socket: Option<PathBuf>,
    /// Where replica directories go.
    pub workloads_dir: Option<PathBuf>,
    /// Host directories served as volumes, by volume name.
    #[serde(default)]
    pub host_volumes: BTreeMap<String, PathBuf>,
    /// Listeners.
    #[serde(default)]
    pub listen: ListenConfig,
    /// The WireGuard overlay.
    #[serde(default)]
    pub wireguard: WireguardConfig,
}

/// `listen:`, as `--metrics`, `--gossip`, `--advertise-gossip`, `--dns`, `--dns-upstream`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub metrics: Option<String>,
    pub gossip: Option<String>,
    pub advertise_gossip: Option<SocketAddr>,
    pub dns: Option<String>,
    #[serde(default)]
    pub dns_upstream: Vec<SocketAddr>,
}

/// `wireguard:`, as `--wireguard`, `--wg-interface`, `--wg-port`, `--wg-advertise`,
/// `--wg-rotate-every`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireguardConfig {
    pub mode: Option<WireguardMode>,
    pub interface: Option<String>,
    pub port: Option<u16>,
    pub advertise: Option<SocketAddr>,
    pub rotate_every: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

/// Each flag and the field of the file that sets it, longest flag first so that `--dns` is
/// not taken for the start of `--dns-upstream`.
const FIELD_OF_FLAG: [(&str, &str); 18] = [
    ("--containerd-socket", "containerd_socket"),
    ("--advertise-gossip", "listen.advertise_gossip"),
    ("--wg-rotate-every", "wireguard.rotate_every"),
    ("--workloads-dir", "workloads_dir"),
    ("--dns-upstream", "listen.dns_upstream"),
    ("--wg-interface", "wireguard.interface"),
    ("--wg-advertise", "wireguard.advertise"),
    ("--host-volume", "host_volumes"),
    ("--token-file", "token_file"),
    ("--wireguard", "wireguard.mode"),
    ("--metrics", "listen.metrics"),
    ("--runtime", "runtime"),
    ("--control", "control"),
    ("--wg-port", "wireguard.port"),
    ("--gossip", "listen.gossip"),
    ("--label", "labels"),
    ("--name", "name"),
    ("--site", "site"),
];

/// `message` (from the flags' own checks) in the file's terms: each flag named by its field.
fn in_file_terms(message: &str) -> String {
    let mut text = message.to_owned();
    for (flag, field) in FIELD_OF_FLAG {
        text = text.replace(flag, field);
    }
    text.replace("--dns", "listen.dns")
}

impl AgentConfig {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// One line naming the file and, where YAML can tell, the field and line.
    pub fn load(path: &Path) -> Result<Self> {
        let file = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow!("{file}: cannot read: {e}"))?
            .len();
        if size > CONFIG_BYTES_MAX {
            return Err(anyhow!(
                "{file}: {size} bytes; a config file holds at most {CONFIG_BYTES_MAX}"
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow!("{file}: cannot read: {e}"))?;
        Self::parse(&file.to_string(), &text)
    }

    /// Parses `text`; `file` names it in errors.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn parse(file: &str, text: &str) -> Result<Self> {
        let config: Self = serde_norway::from_str(text).map_err(|error| {
            let message = error.to_string();
            match error.location() {
                Some(at) => {
                    let suffix = format!(" at line {} column {}", at.line(), at.column());
                    anyhow!(
                        "{file}: line {}: {}",
                        at.line(),
                        message.replacen(&suffix, "", 1)
                    )
                }
                None => anyhow!("{file}: {message}"),
            }
        })?;
        if config.control.is_empty() {
            return Err(anyhow!(
                "{file}: control: give at least one control address"
            ));
        }
        if config.token.is_some() && config.token_file.is_some() {
            return Err(anyhow!("{file}: token, token_file: give one, not both"));
        }
        Ok(config)
    }

    /// `error` (from checking the flags this file makes) as one line naming `file` and the
    /// field.
    pub fn error(file: &Path, error: &anyhow::Error) -> anyhow::Error {
        let message = crate::output::one_line(error);
        anyhow!("{}: {}", file.display(), in_file_terms(&message))
    }

    /// The flags `agent join` would be given.
    pub fn join_flags(&self) -> JoinFlags {
        JoinFlags {
            data_dir: self.data_dir.clone(),
            control: self.control.clone(),
            token: TokenArgs {
                token: self.token.clone(),
                token_file: self.token_file.clone(),
            },
            name: self.name.clone(),
            site: self.site.clone().unwrap_or_else(|| "default".to_owned()),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            runtime: self.runtime_args(),
            workloads_dir: self.workloads_dir.clone(),
            host_volumes: self.host_volume_flags(),
            listen: self.listen_args(),
            wireguard: self.wireguard_args(),
        }
    }

    /// The flags `agent run` would be given on a joined box.
    pub fn run_flags(&self) -> RunFlags {
        RunFlags {
            data_dir: self.data_dir.clone(),
            workloads_dir: self.workloads_dir.clone(),
            host_volumes: self.host_volume_flags(),
            runtime: self.runtime_args(),
            listen: self.listen_args(),
            wireguard: self.wireguard_args(),
        }
    }

    fn runtime_args(&self) -> RuntimeArgs {
        RuntimeArgs {
            runtime: self.runtime,
            containerd_socket: self.containerd_socket.clone(),
        }
    }

    fn host_volume_flags(&self) -> Vec<String> {
        self.host_volumes
            .iter()
            .map(|(name, path)| format!("{name}={}", path.display()))
            .collect()
    }

    fn listen_args(&self) -> ListenArgs {
        ListenArgs {
            metrics: self.listen.metrics.clone(),
            gossip: self.listen.gossip.clone(),
            advertise_gossip: self.listen.advertise_gossip,
            dns: self.listen.dns.clone(),
            dns_upstream: self.listen.dns_upstream.clone(),
        }
    }

    fn wireguard_args(&self) -> WireguardArgs {
        WireguardArgs {
            wireguard: self.wireguard.mode,
            wg_interface: self.wireguard.interface.clone(),
            wg_port: self.wireguard.port,
            wg_advertise: self.wireguard.advertise,
            wg_rotate_every: self.wireguard.rotate_every.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/systemd/agent.yaml");

    #[test]
    fn the_example_parses_into_join_flags() {
        let config = AgentConfig::parse("agent.yaml", EXAMPLE).unwrap();
        let flags = config.join_flags();
        assert_eq!(flags.control.len(), 2);
        assert_eq!(flags.labels, ["rack=r1"]);
        assert_eq!(flags.listen.metrics.as_deref(), Some("127.0.0.1:9091"));
        assert!(flags.token.token.is_none());
    }

    #[test]
    fn bad_files_say_which_field() {
        fn check(text: &str, expected: &str) {
            let error = AgentConfig::parse("/etc/warren/agent.yaml", text).unwrap_err();
            let message = crate::output::one_line(&error);
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(message.starts_with("/etc/warren/agent.yaml: "), "{message}");
        }
        check(
            "control: [a:1]\nlisten: {metric: x}\n",
            "unknown field `metric`",
        );
        check("control: [a:1]\nsize: 3\n", "unknown field `size`");
        check("control: []\n", "control: give at least one");
        check("site: x\n", "missing field `control`");
        check(
            "control: [a:1]\ntoken: a\ntoken_file: /t\n",
            "give one, not both",
        );
        check(
            "control: [a:1]\nruntime: docker\n",
            "runtime: unknown variant `docker`",
        );
        check(
            "control: [a:1]\nwireguard: {port: x}\n",
            "wireguard.port: invalid type",
        );
    }

    #[test]
    fn flag_errors_name_the_field() {
        for (message, expected) in [
            (
                "--metrics: expected IP:PORT or none, got \"x\"",
                "listen.metrics: expected IP:PORT or none, got \"x\"",
            ),
            (
                "--dns 127.0.0.1:53: cannot listen",
                "listen.dns 127.0.0.1:53: cannot listen",
            ),
            ("--dns-upstream: bad", "listen.dns_upstream: bad"),
            ("--label: expected K=V", "labels: expected K=V"),
            ("--wg-rotate-every: 1s", "wireguard.rotate_every: 1s"),
        ] {
            assert_eq!(in_file_terms(message), expected);
        }
    }
}
