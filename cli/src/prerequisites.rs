//! The one gate for this crate's tests that need something of the host (root, a program): a
//! test lists what it needs; at the first thing missing it prints `skipping TEST: WHY` and
//! returns — or, under `CI=true` (where `.ci/run` provides everything), fails, so that CI
//! proves these tests ran. Integration tests under `tests/` can include this file with
//! `#[path]`.
#![allow(dead_code)]

use std::io::Write;

/// Whether `test` may run: `true` when no entry of `missing` is `Some`. Otherwise the first
/// reason is printed straight to stderr (past the test harness's capture, so `cargo test`
/// shows it for a test that passed by skipping), or the test fails under `CI=true`.
#[track_caller]
pub fn require(test: &str, missing: impl IntoIterator<Item = Option<String>>) -> bool {
    let Some(reason) = missing.into_iter().flatten().next() else {
        return true;
    };
    let under_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !under_ci,
        "{test} needs what this host lacks: {reason} (CI=true: a missing prerequisite is a \
         failure, not a skip)"
    );
    let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
    false
}

/// Why not, unless this process runs as root.
pub fn root() -> Option<String> {
    (!rustix::process::geteuid().is_root()).then(|| "needs root".to_owned())
}
