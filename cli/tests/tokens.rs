//! Join tokens as an operator handles them, with real processes: a lifetime is required and
//! bounded, tokens are listed without their secrets, and a revoked token is refused at the
//! next join.

mod common;
use common::{Foreground, command, control_init, ok};

#[test]
fn join_tokens_are_bounded_listed_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| {
        command()
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run warren")
    };
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // No token lives for ever, nor longer than 30 days.
    let too_long = admin(&["token", "create", "--role", "agent", "--ttl", "60d"]);
    assert!(!too_long.status.success());
    assert!(
        stderr(&too_long).contains("--ttl 60d is longer than a token may live (30d)"),
        "{}",
        stderr(&too_long)
    );

    let token = ok(admin(&[
        "token", "create", "--role", "agent", "--ttl", "1h",
    ]));
    let token = token.trim();
    let id = token
        .split('-')
        .nth(3)
        .expect("WRN1-a-<cluster>-<id>-<secret>");

    // Listed by id, never with the secret.
    let listed = ok(admin(&["token", "ls", "-o", "json"]));
    assert!(
        !listed.contains(token),
        "the secret is never listed: {listed}"
    );
    let tokens: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let entry = tokens
        .as_array()
        .expect("a list")
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("token {id} listed: {listed}"));
    assert_eq!(entry["role"], "agent");
    assert_eq!(entry["revoked"], false);
    assert!(entry["expires_at_ms"].as_u64().is_some(), "{entry}");
    // Who minted it: the admin certificate the request came with.
    let by = entry["created_by"].as_str().unwrap_or_default().to_owned();
    assert!(by.starts_with("admin "), "{entry}");
    let table = ok(admin(&["token", "ls"]));
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .ends_with("CREATED BY"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("valid") && row.contains("in 59m"), "{row}");
    assert!(row.ends_with(&by), "{row}");

    // Revoked: refused at the next join, with the reason.
    let revoked = ok(admin(&["token", "revoke", id]));
    assert!(
        revoked.contains(&format!("token {id} revoked")),
        "{revoked}"
    );
    let table = ok(admin(&["token", "ls"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(id) && l.contains("revoked")),
        "{table}"
    );
    let agent_dir = dir.path().join("agent");
    let join = command()
        .args(["agent", "join", "--control", &quic, "--token", token])
        .args(["--metrics", "none", "--gossip", "none", "--dns", "none"])
        .arg("--data-dir")
        .arg(&agent_dir)
        .output()
        .unwrap();
    assert!(!join.status.success());
    assert!(stderr(&join).contains("revoked"), "{}", stderr(&join));

    // An unknown id says so.
    let unknown = admin(&["token", "revoke", "00000000000000ff"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("not found"),
        "{}",
        stderr(&unknown)
    );
    let garbled = admin(&["token", "revoke", "zz"]);
    assert!(!garbled.status.success());
    assert!(
        stderr(&garbled).contains("is not a token id"),
        "{}",
        stderr(&garbled)
    );
}

/// `agent join --token-file` reads the token from a file; with `--token` on the command line,
/// the joined agent carries on as `agent run` (same pid) so the token is not left readable in
/// `ps` for the agent's life.
#[test]
fn a_join_token_does_not_stay_on_the_agents_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, quic, config) = control_init(dir.path());
    let token = ok(command()
        .args(["token", "create", "--role", "agent", "--ttl", "1h"])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap());
    let token = token.trim().to_owned();
    let cmdline = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };

    // From a file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let a1 = dir.path().join("a1");
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--control",
            &quic,
            "--name",
            "edge-1",
            "--token-file",
            token_file.to_str().unwrap(),
            "--metrics",
            "none",
            "--gossip",
            "none",
            "--dns",
            "none",
            "--data-dir",
            a1.to_str().unwrap(),
        ],
        dir.path().join("a1.stderr.log"),
    );
    agent.wait_for_line("joined the cluster as agent node");
    agent.wait_for_line(" running");
    let line = cmdline(agent.child.id());
    assert!(
        line.contains("agent run") && !line.contains("--token-file"),
        "{line}"
    );
    drop(agent);

    // On the command line: gone once joined, the pid unchanged.
    let a2 = dir.path().join("a2");
    let mut agent = Foreground::spawn(
        &[
            "agent",
            "join",
            "--control",
            &quic,
            "--name",
            "edge-2",
            "--token",
            &token,
            "--metrics",
            "none",
            "--gossip",
            "none",
            "--dns",
            "none",
            "--data-dir",
            a2.to_str().unwrap(),
        ],
        dir.path().join("a2.stderr.log"),
    );
    agent.wait_for_line(" running");
    let line = cmdline(agent.child.id());
    assert!(!line.contains(&token), "the token stays in ps: {line}");
    assert!(
        line.ends_with(&format!("agent run --data-dir {} ", a2.display())),
        "{line}"
    );
}
