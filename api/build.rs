//! Records the commit the build comes from (`WARREN_COMMIT`) and the target it is built for
//! (`WARREN_TARGET`), for [`build_info`](src/build_info.rs).
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
