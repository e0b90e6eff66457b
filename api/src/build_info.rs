//! What this build is: the version, the commit it was built from and the target it was built
//! for. One place for `warren --version` and the `warren_build_info` metric; the commit and
//! target come from `build.rs`.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit built from: 12 hex digits, `$WARREN_BUILD_COMMIT` when the build set it, or
/// `unknown` when built outside a git checkout.
pub const COMMIT: &str = env!("WARREN_COMMIT");

/// The target triple built for (`x86_64-unknown-linux-gnu`).
pub const TARGET: &str = env!("WARREN_TARGET");

/// The CPU architecture (`x86_64`, `aarch64`).
pub const ARCH: &str = std::env::consts::ARCH;
