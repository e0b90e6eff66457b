//! The YAML that docs/cli.md shows for `warren apply -f`, fed to the built binary, so that the
//! example an operator copies and the format the CLI reads cannot drift apart; and the
//! commands docs/logs.md, docs/monitoring.md and docs/install.md show, parsed by the built
//! binary, with install.md's config file the one in deploy/systemd/ and accepted by
//! `warren agent up --check`.

mod common;
use common::command;

const CLI_DOC: &str = include_str!("../../docs/cli.md");
const LOGS_DOC: &str = include_str!("../../docs/logs.md");
const MONITORING_DOC: &str = include_str!("../../docs/monitoring.md");
const INSTALL_DOC: &str = include_str!("../../docs/install.md");
const EXAMPLE_AGENT_CONFIG: &str = include_str!("../../deploy/systemd/agent.yaml");

/// The first YAML block of the `apply -f` section.
fn apply_example() -> &'static str {
    let section = CLI_DOC
        .split("\n## apply -f")
        .nth(1)
        .expect("docs/cli.md has an `apply -f` section");
    section
        .split("```yaml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the section shows a YAML block")
}

#[test]
fn the_apply_example_in_the_cli_doc_parses_and_validates() {
    let dir = tempfile::tempdir().expect("scratch dir");
    std::fs::write(dir.path().join("deploy.yaml"), apply_example()).unwrap();
    // The example's Secret document reads its value from this file.
    std::fs::write(dir.path().join("db-pass.txt"), "s3cret\n").unwrap();
    let output = command()
        .args(["apply", "-f", "deploy.yaml", "--dry-run"])
        .current_dir(dir.path())
        .output()
        .expect("run warren");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for (kind, name) in [
        ("service", "web"),
        ("secret", "db-pass"),
        ("volume", "data"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.to_lowercase().contains(kind) && l.contains(name)),
            "the dry run does not list {kind} {name}:\n{stdout}"
        );
    }
}

#[test]
fn the_apply_error_the_cli_doc_quotes_is_the_one_warren_prints() {
    let dir = tempfile::tempdir().expect("scratch dir");
    // Document 2, line 7 of the file, as the doc's example says.
    let text = "kind: Volume\nname: data\n---\nkind: Service\nname: web\n\
                workload: {process: {command: [a]}}\nreplica: 3\n";
    std::fs::write(dir.path().join("deploy.yaml"), text).unwrap();
    let output = command()
        .args(["apply", "-f", "deploy.yaml", "--dry-run"])
        .current_dir(dir.path())
        .output()
        .expect("run warren");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let quoted = CLI_DOC
        .split("``error: ")
        .nth(1)
        .and_then(|rest| rest.split(", …``").next())
        .expect("docs/cli.md quotes an apply error");
    assert!(
        stderr.contains(&format!("error: {quoted}")),
        "the doc quotes `error: {quoted}`, warren printed:\n{stderr}"
    );
}

/// Every `$ warren …` command of docs/logs.md and docs/cli.md's logs example parses: its flags
/// exist and their values are valid (clap checks them before it reaches the `--help` put at
/// the end). The doc's output comes from a real run (see the test in `logs.rs`).
#[test]
fn the_logs_commands_in_the_docs_parse() {
    let commands: Vec<&str> = [LOGS_DOC, CLI_DOC]
        .iter()
        .flat_map(|doc| doc.lines())
        .filter_map(|line| line.strip_prefix("$ warren "))
        .filter(|line| line.contains("logs "))
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    each_parses(&commands);
}

/// The `$ warren …` command lines of `doc`, without `$ warren `.
fn commands_of(doc: &'static str) -> Vec<&'static str> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("$ warren "))
        .collect()
}

/// Each of `commands` (a `warren` command line without `warren`) parses: its flags exist and
/// their values are valid (clap checks them before it reaches the `--help` put at the end).
fn each_parses(commands: &[&str]) {
    for line in commands {
        let mut args = shell_words::split(line).expect("a command a shell can split");
        args.push("--help".to_owned());
        let output = command().args(&args).output().expect("run warren");
        assert!(
            output.status.success(),
            "`warren {line}`: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every `$ warren …` command of docs/monitoring.md parses (as above; the end-to-end test in
/// `prometheus.rs` runs the same commands against a cluster and real Prometheus servers).
#[test]
fn the_monitoring_commands_in_the_docs_parse() {
    let commands = commands_of(MONITORING_DOC);
    assert!(commands.len() >= 5, "{commands:?}");
    each_parses(&commands);
}

/// Every `$ warren …` command of docs/install.md parses (as above).
#[test]
fn the_install_commands_in_the_docs_parse() {
    let commands = commands_of(INSTALL_DOC);
    assert!(commands.len() >= 5, "{commands:?}");
    each_parses(&commands);
}

/// docs/install.md shows deploy/systemd/agent.yaml as it is, and `agent up --check` accepts it.
#[test]
fn the_install_doc_shows_the_example_agent_config_and_it_checks() {
    let shown = INSTALL_DOC
        .split("```yaml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("docs/install.md shows a YAML block");
    assert_eq!(
        shown, EXAMPLE_AGENT_CONFIG,
        "docs/install.md and deploy/systemd/agent.yaml differ"
    );
    let dir = tempfile::tempdir().expect("scratch dir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, EXAMPLE_AGENT_CONFIG).unwrap();
    let output = command()
        .args(["agent", "up", "--check", "--config"])
        .arg(&path)
        .output()
        .expect("run warren");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).starts_with("ok: "),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
