//! What must hold before a run: root, the tools, and the `warren` binary.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::firewall::Firewall;

/// The one line printed when not root.
pub const NEEDS_ROOT: &str =
    "warren-chaos needs root (network namespaces); run it as root or under sudo";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `program` is an executable file in a `$PATH` directory.
pub fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks `ip` and a firewall tool; returns the firewall to use (`wanted`, else detected).
///
/// # Errors
/// Names the missing tool and the Debian package that provides it.
pub fn check_tools(wanted: Option<Firewall>) -> Result<Firewall> {
    if !on_path("ip") {
        bail!("`ip` not found: install the iproute2 package");
    }
    match wanted {
        Some(firewall) if on_path(firewall.program()) => Ok(firewall),
        Some(Firewall::Nft) => bail!("`nft` not found: install the nftables package"),
        Some(Firewall::Iptables) => bail!("`iptables` not found: install the iptables package"),
        None => match Firewall::detect() {
            Some(firewall) => Ok(firewall),
            None => bail!(
                "neither `nft` nor `iptables` found: install the nftables (or iptables) package"
            ),
        },
    }
}

/// Checks what a fleet of containerd agents needs: containerd, runc, ctr (teardown) and
/// nsenter (containerd joins the agent's namespace without `ip netns exec`'s remount of
/// `/sys`, which would hide the cgroups runc needs).
///
/// # Errors
/// Names the missing tool and the Debian package that provides it.
pub fn check_container_tools() -> Result<()> {
    for (tool, package) in [
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("ctr", "containerd"),
        ("nsenter", "util-linux"),
    ] {
        if !on_path(tool) {
            bail!("`{tool}` not found (the fleet runs containers): install the {package} package");
        }
    }
    Ok(())
}

/// `--image-tar` files, made absolute; each must be a readable file.
///
/// # Errors
/// Names the first that is not.
pub fn image_tars(files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    files
        .iter()
        .map(|file| {
            if !file.is_file() {
                bail!("--image-tar {}: no such file", file.display());
            }
            Ok(std::path::absolute(file)?)
        })
        .collect()
}

/// Finds the `warren` binary: `explicit`, else next to this executable, else
/// `target/release/warren`, else `target/debug/warren` (relative to the working directory).
///
/// # Errors
/// When none of them is an executable file (the message lists where it looked).
pub fn locate_warren(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if is_executable(path) {
            return Ok(std::path::absolute(path)?);
        }
        bail!("--warren {}: not an executable file", path.display());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("warren"));
    }
    candidates.push(PathBuf::from("target/release/warren"));
    candidates.push(PathBuf::from("target/debug/warren"));
    for candidate in &candidates {
        if is_executable(candidate) {
            return Ok(std::path::absolute(candidate)?);
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    bail!(
        "no warren binary (looked at {}): build it with `cargo build -p warren-cli` or pass --warren PATH",
        looked.join(", ")
    )
}
