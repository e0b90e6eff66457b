//! Records the commit the build comes from (`WARREN_COMMIT`), the target it is built for
//! (`WARREN_TARGET`) and when (`WARREN_BUILD_DATE`), for `warren version` and the
//! `warren_build_info` metric (`warren_api::build_info`). Kept in the binary's crate so a commit
//! rebuilds the binary only, not every crate below it.
//!
//! The date is `$SOURCE_DATE_EPOCH` when set (reproducible builds), else the time this script
//! ran: the last clean build or commit.
//!
//! The commit is `$WARREN_BUILD_COMMIT` when set (builds from a tarball, packagers), else
//! `git rev-parse --short=12 HEAD`, else `unknown` (no git, or not a checkout). Cargo reruns
//! this only when HEAD moves: the files watched are the checkout's `HEAD` and the branch it
//! names, found through `git rev-parse --git-path` so a worktree (whose `.git` is a file)
//! works too. Watching nothing would rerun it at every build; watching the source tree would
//! miss commits.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WARREN_BUILD_COMMIT");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=WARREN_TARGET={target}");
    let commit = match std::env::var("WARREN_BUILD_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            watch_head();
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=WARREN_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=WARREN_BUILD_DATE={}", rfc3339(epoch));
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days algorithm).
fn rfc3339(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// Output of `git ARGS` run in this crate's directory, trimmed; `None` when git is missing or
/// fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// Asks cargo to rerun when HEAD or the branch it points at moves (a commit, a checkout). A
/// branch kept only in `packed-refs` is watched there. Only files that exist are named: cargo
/// reruns a script at every build while a file it watches is missing.
fn watch_head() {
    let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let watch = |path: &str| {
        let path = dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    };
    watch(&head);
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            watch(&path);
        }
        if let Some(path) = git(&["rev-parse", "--git-path", "packed-refs"]) {
            watch(&path);
        }
    }
}
