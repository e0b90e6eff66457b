//! What this build is: the version, the commit it was built from, the target it was built for
//! and when. One place for `warren version` and the `warren_build_info` metric.
//!
//! The binary records its own build ([`set`], first thing in `main`): its build script knows the
//! commit and date. Keeping them out of this crate means a commit rebuilds only the binary, not
//! every crate that depends on the API. Code that never called [`set`] (library tests) sees
//! [`BuildInfo::UNKNOWN`]'s `unknown` commit and date.

use std::sync::OnceLock;

/// One build's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// The package version (`Cargo.toml`).
    pub version: &'static str,
    /// The commit built from: 12 hex digits, what `$WARREN_BUILD_COMMIT` said, or `unknown`
    /// (built outside a git checkout).
    pub commit: &'static str,
    /// The target triple built for (`aarch64-unknown-linux-gnu`).
    pub target: &'static str,
    /// When it was built, UTC, RFC 3339 (`$SOURCE_DATE_EPOCH` when the build set it).
    pub built: &'static str,
}

impl BuildInfo {
    /// What a process that never called [`set`] reports.
    pub const UNKNOWN: BuildInfo = BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        commit: "unknown",
        target: "unknown",
        built: "unknown",
    };
}

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The CPU architecture (`x86_64`, `aarch64`).
pub const ARCH: &str = std::env::consts::ARCH;

static BUILD: OnceLock<BuildInfo> = OnceLock::new();

/// Records this process's build; the first call wins.
pub fn set(info: BuildInfo) {
    let _ = BUILD.set(info);
}

/// This process's build: what [`set`] recorded, else [`BuildInfo::UNKNOWN`].
pub fn get() -> &'static BuildInfo {
    BUILD.get().unwrap_or(&BuildInfo::UNKNOWN)
}
