//! The `warren` binary as a subprocess, the way operators and scripts use it.

use std::process::Command;

fn warren(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .expect("run warren")
}

/// `warren demo -o json` runs the whole transport tour on loopback, exits 0, and reports the
/// refusals it must see.
#[test]
fn demo_runs_end_to_end_and_reports_refusals() {
    let output = warren(&["demo", "-o", "json"]);
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("demo prints JSON");
    assert_eq!(
        report["cluster_fingerprint"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(report["joined_node_id"].as_str().map(str::len), Some(16));
    let refusals = report["refusals"].as_object().expect("refusals object");
    assert!(
        refusals["reused single-use token"]
            .as_str()
            .unwrap()
            .contains("already been used")
    );
    assert!(
        refusals["forged token"]
            .as_str()
            .unwrap()
            .contains("invalid")
    );
    assert!(
        refusals["certificate from another cluster"]
            .as_str()
            .unwrap()
            .contains("unknown_ca")
    );
    let metrics = report["server_metrics"]
        .as_object()
        .expect("metrics object");
    assert_eq!(
        metrics["warren_transport_join_requests_total{result=\"granted\"}"],
        1
    );
}

#[test]
fn help_lists_what_exists() {
    let output = warren(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["demo", "completion"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

#[test]
fn completion_scripts_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let output = warren(&["completion", shell]);
        assert!(output.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("warren"),
            "{shell}"
        );
    }
}

#[test]
fn unknown_command_fails_with_a_clear_message() {
    let output = warren(&["frobnicate"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unrecognized subcommand 'frobnicate'"),
        "{stderr}"
    );
}
