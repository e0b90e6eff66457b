//! The admin config (`admin.conf`): how the CLI finds and authenticates to a cluster, like a
//! kubeconfig.
//!
//! `warren control init` writes one into its data dir (mode 0600). It is YAML:
//!
//! ```yaml
//! cluster: ops-1
//! fingerprint: 3f9a…            # SHA-256 of the CA certificate, hex
//! api:                          # tried in order until one answers
//!   - 10.0.0.5:7100
//! ca_pem: |
//!   -----BEGIN CERTIFICATE-----
//! cert_pem: |                   # the admin client certificate
//!   -----BEGIN CERTIFICATE-----
//! key_pem: |                    # its private key: keep this file private
//!   -----BEGIN PRIVATE KEY-----
//! ```
//!
//! An `api` entry of the form `unix:/path/control.sock` uses the control node's local Unix
//! socket (no TLS; file permissions guard it). The `api` list is kept current with the control
//! members by [`crate::config_sync`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use warren_transport::Credentials;

/// File name of the admin config inside a data dir and under `~/.config/warren/`.
pub const ADMIN_CONF: &str = "admin.conf";
/// The system-wide default location, the last place looked.
pub const SYSTEM_ADMIN_CONF: &str = "/var/lib/warren/admin.conf";
/// Largest admin config read; real ones are a few KiB.
pub const MAX_ADMIN_CONF_BYTES: u64 = 256 * 1024;

/// What `admin.conf` holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Cluster name, for people.
    pub cluster: String,
    /// SHA-256 of the cluster CA certificate, lowercase hex.
    pub fingerprint: String,
    /// API addresses (`HOST:PORT` for TLS, `unix:PATH` for the local socket), tried in order.
    pub api: Vec<String>,
    /// The cluster CA certificate (PEM).
    pub ca_pem: String,
    /// The admin client certificate (PEM).
    pub cert_pem: String,
    /// The admin client key (PKCS#8 PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("cluster", &self.cluster)
            .field("fingerprint", &self.fingerprint)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl AdminConfig {
    /// Builds a config from admin credentials.
    pub fn new(cluster: String, api: Vec<String>, admin: &Credentials) -> Self {
        let (cert_pem, key_pem, ca_pem) = admin.to_pem_bundle();
        AdminConfig {
            cluster,
            fingerprint: data_encoding::HEXLOWER.encode(&admin.cluster_fingerprint()),
            api,
            ca_pem,
            cert_pem,
            key_pem,
        }
    }

    /// The admin credentials, checked against the recorded fingerprint.
    ///
    /// # Errors
    /// Corrupt PEM, or a CA that does not match `fingerprint`.
    pub fn credentials(&self) -> Result<Credentials> {
        let creds = Credentials::from_pem_bundle(&self.cert_pem, &self.key_pem, &self.ca_pem)
            .context("read the admin certificate")?;
        let actual = data_encoding::HEXLOWER.encode(&creds.cluster_fingerprint());
        if !actual.eq_ignore_ascii_case(self.fingerprint.trim()) {
            bail!(
                "ca_pem does not match fingerprint {} (the CA's is {actual})",
                self.fingerprint
            );
        }
        Ok(creds)
    }

    /// Parses the YAML text of an admin config.
    ///
    /// # Errors
    /// YAML errors, with their line.
    pub fn parse(text: &str) -> Result<Self> {
        let config: AdminConfig = serde_norway::from_str(text)?;
        Ok(config)
    }

    /// Reads `path`.
    ///
    /// # Errors
    /// Unreadable, too large or malformed files.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_bounded(path, MAX_ADMIN_CONF_BYTES)
            .with_context(|| format!("read admin config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("admin config {}", path.display()))
    }

    /// The file's text: a comment, then the YAML.
    ///
    /// # Errors
    /// Only if YAML encoding fails.
    pub fn to_text(&self) -> Result<String> {
        let mut text = String::from(
            "# Warren admin config, written by `warren control init`.\n\
             # It holds an admin private key: keep it private (mode 0600).\n",
        );
        text.push_str(&serde_norway::to_string(self).context("encode admin config")?);
        Ok(text)
    }

    /// Writes the config to `path` atomically with mode 0600.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.to_text()?;
        warren_transport::write_atomic(path, text.as_bytes(), 0o600)
            .with_context(|| format!("write {}", path.display()))
    }
}

/// Reads a UTF-8 file of at most `max_bytes`.
///
/// # Errors
/// I/O errors, a file over the limit, or invalid UTF-8.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        bail!("larger than {max_bytes} bytes");
    }
    String::from_utf8(bytes).context("not UTF-8 text")
}

/// Where the admin config is looked for, in order: `--config`, `$WARREN_CONFIG`,
/// `~/.config/warren/admin.conf`, `/var/lib/warren/admin.conf`. An explicit file (flag or
/// environment) is the only candidate: if it is missing, that is the error.
pub fn candidates(flag: Option<&Path>, env: Option<&Path>, home: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = flag.or(env) {
        return vec![path.to_owned()];
    }
    let mut paths = Vec::new();
    if let Some(home) = home {
        paths.push(home.join(".config/warren").join(ADMIN_CONF));
    }
    paths.push(PathBuf::from(SYSTEM_ADMIN_CONF));
    paths
}

/// `$WARREN_CONFIG`, when set and not empty.
pub fn from_env() -> Option<PathBuf> {
    std::env::var_os("WARREN_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds and loads the admin config.
///
/// # Errors
/// No config anywhere (the message lists where it looked), or a broken one.
pub fn find(flag: Option<&Path>) -> Result<(PathBuf, AdminConfig)> {
    let env = from_env();
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let explicit = flag.is_some() || env.is_some();
    let paths = candidates(flag, env.as_deref(), home.as_deref());
    for path in &paths {
        if explicit || path.exists() {
            return AdminConfig::load(path).map(|config| (path.clone(), config));
        }
    }
    let looked: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no admin config found (looked in {}); pass --config FILE or set WARREN_CONFIG \
         (`warren control init` writes <data-dir>/admin.conf)",
        looked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::clock::unix_now;
    use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
    use warren_transport::{CertSubject, ClusterCa, Validity};

    fn admin() -> Credentials {
        let ca = ClusterCa::generate("t", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap();
        ca.issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )
        .unwrap()
    }

    #[test]
    fn save_load_round_trip_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_CONF);
        let config = AdminConfig::new("ops".into(), vec!["127.0.0.1:7100".into()], &admin());
        config.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = AdminConfig::load(&path).unwrap();
        assert_eq!(loaded, config);
        loaded.credentials().unwrap();
    }

    #[test]
    fn mismatched_fingerprint_is_refused() {
        let mut config = AdminConfig::new("ops".into(), vec![], &admin());
        config.fingerprint = "00".repeat(32);
        let err = config.credentials().unwrap_err().to_string();
        assert!(err.contains("does not match fingerprint"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_with_a_line() {
        let err = AdminConfig::parse("cluster: a\nfingerprnt: b\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `fingerprnt`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn lookup_order() {
        let flag = Path::new("/x/admin.conf");
        let env = Path::new("/e/admin.conf");
        let home = Some(Path::new("/h"));
        assert_eq!(candidates(Some(flag), Some(env), home), vec![flag]);
        assert_eq!(candidates(None, Some(env), home), vec![env]);
        assert_eq!(
            candidates(None, None, home),
            vec![
                PathBuf::from("/h/.config/warren/admin.conf"),
                PathBuf::from(SYSTEM_ADMIN_CONF)
            ]
        );
        assert_eq!(
            candidates(None, None, None),
            vec![PathBuf::from(SYSTEM_ADMIN_CONF)]
        );
    }
}
