//! `warren volume …`: create, list, inspect and remove named volumes, with the node that holds
//! each one's data and the replicas that mount it.

use anyhow::{Result, anyhow};
use warren_api::rest::VolumeInfo;
use warren_api::routes::Route;
use warren_api::{Volume, VolumeDriver};

use crate::client::{Client, ClientArgs};
use crate::output::{OutputFormat, print_read, print_write};
use crate::table::{Table, fields};

/// `warren volume …`.
#[derive(Debug, clap::Args)]
pub struct VolumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: VolumeCommand,
}

/// Subcommands of `warren volume`.
#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a local volume (a directory on the node its first replica goes to).
    #[command(after_help = "Example:\n  \
        warren volume create data\n  \
        warren service create db --command \"sh -c 'date >> $WARREN_VOLUME_DATA/log; sleep 1000'\" --volume data:data")]
    Create {
        /// Volume name (a DNS label).
        name: String,
    },
    /// List volumes: the node that holds each one and the replicas that mount it.
    Ls,
    /// Show one volume: where it lives, the services and replicas that mount it.
    Inspect {
        /// Volume name.
        name: String,
    },
    /// Remove a volume no service mounts (its directory on the node is left in place).
    Rm {
        /// Volume name.
        name: String,
    },
}

/// Runs `warren volume …`.
pub async fn run(client: &Client, format: OutputFormat, command: VolumeCommand) -> Result<()> {
    match command {
        VolumeCommand::Create { name } => {
            let volume = Volume {
                name: name.clone(),
                driver: VolumeDriver::Local,
                size_limit_bytes: None,
                labels: Default::default(),
            };
            volume
                .validate()
                .map_err(|e| anyhow!("volume {}: {}", e.field, e.message))?;
            let route = Route::PutVolume { volume: &name };
            let answer = client.request_json(route, &volume).await?;
            print_write(format, &answer, |r| {
                format!("volume {name} created (revision {})", r.revision)
            })
        }
        VolumeCommand::Ls => print_read(
            format,
            &client.request(Route::VolumeUsage).await?,
            |v: &Vec<VolumeInfo>| render_volumes(v),
        ),
        VolumeCommand::Inspect { name } => print_read(
            format,
            &client.request(Route::GetVolume { volume: &name }).await?,
            render_volume,
        ),
        VolumeCommand::Rm { name } => {
            let answer = client
                .request(Route::RemoveVolume { volume: &name })
                .await?;
            print_write(format, &answer, |r| {
                format!("volume {name} removed (revision {})", r.revision)
            })
        }
    }
}

/// The node column: its name, or `-` before any replica that mounts it was placed.
fn node_text(info: &VolumeInfo) -> String {
    info.node_name.clone().unwrap_or_else(|| "-".to_owned())
}

fn replicas_text(info: &VolumeInfo) -> String {
    if info.replicas.is_empty() {
        return "-".to_owned();
    }
    info.replicas
        .iter()
        .map(|user| {
            let access = if user.read_only { " (ro)" } else { "" };
            format!("{}{access}", user.replica)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn render_volumes(volumes: &[VolumeInfo]) -> String {
    let mut table = Table::new(&["NAME", "DRIVER", "NODE", "SERVICES", "REPLICAS"]);
    for info in volumes {
        let services = if info.services.is_empty() {
            "-".to_owned()
        } else {
            info.services.join(", ")
        };
        table.row(vec![
            info.volume.name.clone(),
            "local".to_owned(),
            node_text(info),
            services,
            replicas_text(info),
        ]);
    }
    table.render()
}

fn render_volume(info: &VolumeInfo) -> String {
    let limit = info
        .volume
        .size_limit_bytes
        .map_or_else(|| "none".to_owned(), |bytes| format!("{bytes} B"));
    let labels = info
        .volume
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let location = match &info.node_name {
        Some(node) => format!(
            "node {node}, <data dir>-volumes/{} (or the agent's --host-volume directory)",
            info.volume.name
        ),
        None => "no node yet (made where its first replica is placed)".to_owned(),
    };
    fields(&[
        ("name", info.volume.name.clone()),
        ("driver", "local".to_owned()),
        ("size limit", limit),
        ("labels", labels),
        ("lives on", location),
        ("services", info.services.join(", ")),
        ("replicas", replicas_text(info)),
    ])
}

#[cfg(test)]
mod tests {
    use warren_api::rest::VolumeUser;

    use super::*;

    fn info(node: Option<&str>, replicas: &[(&str, bool)]) -> VolumeInfo {
        VolumeInfo {
            volume: Volume {
                name: "data".to_owned(),
                driver: VolumeDriver::Local,
                size_limit_bytes: None,
                labels: Default::default(),
            },
            node: None,
            node_name: node.map(str::to_owned),
            services: vec!["db".to_owned()],
            replicas: replicas
                .iter()
                .map(|(replica, read_only)| VolumeUser {
                    replica: (*replica).to_owned(),
                    node_name: "edge-1".to_owned(),
                    read_only: *read_only,
                })
                .collect(),
        }
    }

    #[test]
    fn the_table_names_the_node_and_the_replicas() {
        let text = render_volumes(&[
            info(Some("edge-1"), &[("db.1", false), ("backup.1", true)]),
            info(None, &[]),
        ]);
        assert!(text.contains("edge-1"), "{text}");
        assert!(text.contains("db.1, backup.1 (ro)"), "{text}");
        let unplaced = text.lines().nth(2).expect("second row");
        assert!(unplaced.contains(" - "), "{text}");
    }

    #[test]
    fn inspect_says_where_the_data_lives() {
        let text = render_volume(&info(Some("edge-1"), &[("db.1", false)]));
        assert!(
            text.contains("node edge-1, <data dir>-volumes/data"),
            "{text}"
        );
        let text = render_volume(&info(None, &[]));
        assert!(text.contains("no node yet"), "{text}");
    }
}
