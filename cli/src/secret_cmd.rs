//! `warren secret …`: store, list and remove secrets. Values go to the control plane once,
//! are sealed there, and are never printed or read back.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use warren_api::Secret;
use warren_api::clock::unix_now_ms;
use warren_api::rest::SecretCreate;
use warren_api::routes::Route;
use warren_api::secret::MAX_SECRET_BYTES;

use crate::client::{Client, ClientArgs};
use crate::output::{OutputFormat, print_read, print_write};
use crate::table::{Table, age};

/// `warren secret …`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// Subcommands of `warren secret`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Store a secret (or replace its value) from a file or stdin; the value is never shown.
    #[command(after_help = "Examples:\n  \
        warren secret create db-password --file ./db-password.txt\n  \
        printf '%s' \"$TOKEN\" | warren secret create api-token --file -\n\n\
        Services see it as a file on tmpfs: warren service create … --secret db-password")]
    Create {
        /// Secret name (a DNS label).
        name: String,
        /// File holding the value, or - for stdin (at most 512 KiB; bytes are kept exactly).
        #[arg(long, value_name = "FILE|-")]
        file: String,
    },
    /// List secrets: name, version, size and age (never values).
    Ls,
    /// Remove a secret no service uses.
    Rm {
        /// Secret name.
        name: String,
    },
}

/// Reads a secret value from `source` (`-` for stdin), refusing more than the API accepts.
///
/// # Errors
/// I/O errors, or a value over [`MAX_SECRET_BYTES`].
pub fn read_value(source: &str, base_dir: Option<&Path>) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    let limit = MAX_SECRET_BYTES + 1;
    if source == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut value)
            .context("read secret from stdin")?;
    } else {
        let path = match base_dir {
            Some(dir) => dir.join(source),
            None => Path::new(source).to_owned(),
        };
        std::fs::File::open(&path)
            .and_then(|file| file.take(limit).read_to_end(&mut value))
            .with_context(|| format!("read secret file {}", path.display()))?;
    }
    if value.len() as u64 > MAX_SECRET_BYTES {
        bail!("secret value is larger than {MAX_SECRET_BYTES} bytes");
    }
    Ok(value)
}

/// The request body for a value.
pub fn create_body(name: &str, value: &[u8]) -> Result<SecretCreate> {
    warren_api::validate::validate_dns_label("name", name)
        .map_err(|e| anyhow!("secret name: {}", e.message))?;
    Ok(SecretCreate {
        name: name.to_owned(),
        value_base64: data_encoding::BASE64.encode(value),
    })
}

/// Runs `warren secret …`.
pub async fn run(client: &Client, format: OutputFormat, command: SecretCommand) -> Result<()> {
    match command {
        SecretCommand::Create { name, file } => {
            let body = create_body(&name, &read_value(&file, None)?)?;
            let existing: Vec<Secret> = client.request(Route::ListSecrets).await?.json()?;
            let replaced = existing.iter().any(|s| s.name == name);
            let answer = client.request_json(Route::CreateSecret, &body).await?;
            print_write(format, &answer, |r| {
                let verb = if replaced { "replaced" } else { "created" };
                format!("secret {name} {verb} (revision {})", r.revision)
            })
        }
        SecretCommand::Ls => print_read(
            format,
            &client.request(Route::ListSecrets).await?,
            |s: &Vec<Secret>| render_secrets(s),
        ),
        SecretCommand::Rm { name } => {
            let answer = client
                .request(Route::RemoveSecret { secret: &name })
                .await?;
            print_write(format, &answer, |r| {
                format!("secret {name} removed (revision {})", r.revision)
            })
        }
    }
}

fn render_secrets(secrets: &[Secret]) -> String {
    let now = unix_now_ms();
    let mut table = Table::new(&["NAME", "VERSION", "SIZE", "CREATED"]);
    for secret in secrets {
        table.row(vec![
            secret.name.clone(),
            secret.version.to_string(),
            format!("{} B", secret.size_bytes),
            format!("{} ago", age(now, secret.created_at_ms)),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_exactly_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v"), b"s3cret\n").unwrap();
        assert_eq!(read_value("v", Some(dir.path())).unwrap(), b"s3cret\n");
        let big = vec![b'x'; MAX_SECRET_BYTES as usize + 1];
        std::fs::write(dir.path().join("big"), &big).unwrap();
        let error = read_value("big", Some(dir.path())).unwrap_err().to_string();
        assert!(error.contains("larger than"), "{error}");
        assert!(read_value("missing", Some(dir.path())).is_err());
    }

    #[test]
    fn body_is_base64_and_debug_hides_it() {
        let body = create_body("db", b"hunter2").unwrap();
        assert_eq!(body.value_base64, "aHVudGVyMg==");
        assert!(!format!("{body:?}").contains("aHVudGVyMg"));
        assert!(create_body("DB", b"x").is_err());
    }
}
