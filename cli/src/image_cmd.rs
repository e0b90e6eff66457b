//! `warren image load FILE.tar`: puts the images of an OCI image-layout tarball into this
//! box's containerd (namespace `warren`) and unpacks them, so that a containerd node runs them
//! without a registry. Talks to the local containerd socket directly, not to the cluster.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use warren_edge_agent::runtime::containerd::{
    Connection, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER, DEFAULT_SOCKET, import_layout,
};

use crate::output::{OutputFormat, out};

/// `warren image …`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// Subcommands of `warren image`.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Load the images of an OCI image-layout tarball (`docker save`, `skopeo copy
    /// oci-archive:`, `ctr image export`) into this box's containerd and unpack them.
    #[command(after_help = "Example:\n  \
        skopeo copy docker://nginx:1.27 oci-archive:nginx.tar:nginx:1.27   # where there is a network\n  \
        warren image load nginx.tar                                          # on the box")]
    Load {
        /// The tarball.
        file: PathBuf,
        /// containerd's socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
        containerd_socket: PathBuf,
    },
}

/// Runs `warren image …`.
pub fn run(args: ImageArgs, format: OutputFormat) -> Result<()> {
    let ImageCommand::Load {
        file,
        containerd_socket,
    } = args.command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    runtime.block_on(async {
        let conn = Connection::connect(&containerd_socket, DEFAULT_NAMESPACE).await?;
        let began = Instant::now();
        let images = import_layout(&conn, DEFAULT_SNAPSHOTTER, &file)
            .await
            .with_context(|| format!("load {}", file.display()))?;
        let took_ms = began.elapsed().as_millis();
        if format == OutputFormat::Json {
            let json: Vec<_> = images
                .iter()
                .map(|i| serde_json::json!({"name": i.name, "digest": i.digest, "layers_unpacked": i.layers_unpacked}))
                .collect();
            out(&format!("{}\n", serde_json::Value::Array(json)));
            return Ok(());
        }
        for image in &images {
            out(&format!(
                "loaded {} ({}), {} layer(s) unpacked\n",
                image.name, image.digest, image.layers_unpacked
            ));
        }
        out(&format!(
            "{} image(s) from {} in {took_ms} ms\n",
            images.len(),
            file.display()
        ));
        Ok(())
    })
}
