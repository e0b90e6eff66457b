//! Keeps the crate graph honest: lower layers never depend on higher ones, and only the crates
//! that docs/design.md §1 names may use quinn/rustls/rcgen, openraft, boringtun or chitchat.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Which workspace crates each crate may depend on (normal dependencies), per docs/design.md §1.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("warren-api", &[][..]),
        ("warren-transport", &["warren-api"][..]),
        ("warren-mesh", &["warren-api"][..]),
        ("warren-wireguard", &["warren-api"][..]),
        (
            "warren-control",
            &["warren-api", "warren-transport", "warren-mesh"][..],
        ),
        (
            "warren-edge-agent",
            &[
                "warren-api",
                "warren-transport",
                "warren-mesh",
                "warren-wireguard",
            ][..],
        ),
        ("warren-chaos", &["warren-api"][..]),
    ])
}

/// External crates only one workspace crate may name.
fn exclusive() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("quinn", "warren-transport"),
        ("rustls", "warren-transport"),
        ("rcgen", "warren-transport"),
        ("openraft", "warren-control"),
        ("boringtun", "warren-wireguard"),
        ("chitchat", "warren-mesh"),
    ])
}

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn crate_dependencies_follow_the_layering() {
    let metadata = metadata();
    let packages = metadata["packages"].as_array().expect("packages array");
    let workspace: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let allowed = allowed();
    let exclusive = exclusive();
    let mut violations = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("package name");
        let normal_deps = package["dependencies"]
            .as_array()
            .expect("dependencies array")
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str());
        for dep in normal_deps {
            if workspace.contains(dep)
                && let Some(ok) = allowed.get(name)
                && !ok.contains(&dep)
            {
                violations.push(format!(
                    "{name} depends on {dep}, which docs/design.md §1 does not allow"
                ));
            }
            if let Some(owner) = exclusive.get(dep)
                && *owner != name
                && name != "warren-tests"
            {
                violations.push(format!("{name} names {dep}; only {owner} may"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
    // The check must see the crates it guards, or it proves nothing.
    assert!(workspace.contains("warren-api") && workspace.contains("warren-transport"));
}
