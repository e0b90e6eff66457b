//! The README's "A control plane on one machine" section — the control-plane block, then the
//! agents block — run as one shell script with the built `warren` first on `PATH`, so that the
//! doc and what works cannot drift apart.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ProcessGroup, agent_status, command, running_pids, wait_until};

const README: &str = include_str!("../../README.md");

/// How long the blocks may take (they start three control nodes and two agents, and return).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The section's shell blocks from the one that starts `warren control init` on, in order.
fn section_script() -> String {
    let section = README
        .split("## A control plane on one machine")
        .nth(1)
        .expect("README has the section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .skip_while(|block| !block.contains("warren control init"))
        .collect();
    assert!(
        blocks.len() >= 2 && blocks[1].contains("warren agent join"),
        "the section has a block that runs `warren control init`, then one that joins agents"
    );
    blocks.concat()
}

/// A loopback address of this test run's own, so that the block's fixed ports cannot collide
/// with anything else on the machine.
fn private_loopback() -> String {
    let pid = std::process::id();
    format!("127.{}.{}.{}", 100 + pid % 100, 1 + (pid / 100) % 250, 7)
}

/// The blocks with their data dirs and address moved, nothing else changed.
fn script(dir: &Path, addr: &str) -> String {
    let block = section_script();
    assert!(
        block.contains("/tmp/w/") && block.contains("127.0.0.1:"),
        "{block}"
    );
    block
        .replace("/tmp/w/", &format!("{}/", dir.display()))
        .replace("127.0.0.1:", &format!("{addr}:"))
}

fn voters(config: &Path) -> Option<usize> {
    let output = command()
        .args(["cluster", "status", "-o", "json", "--config"])
        .arg(config)
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let members = status["members"].as_array()?;
    Some(members.iter().filter(|m| m["voter"] == true).count())
}

/// The README blocks run to the end with status 0 (every command in them succeeds); the cluster
/// they start has three voters, every control node registered once, no refused join, and the
/// service's two replicas running on the agents.
#[test]
fn the_readme_control_plane_section_runs_as_written() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let dir = scratch.path();
    let addr = private_loopback();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_warren"))
        .parent()
        .expect("the binary has a directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stdout = dir.join("script.stdout");
    let stderr = dir.join("script.stderr");
    let started = Instant::now();
    let child = Command::new("bash")
        .args(["-e", "-c", &script(dir, &addr)])
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", "/nonexistent-warren-test-home")
        .env_remove("WARREN_CONFIG")
        .env_remove("WARREN_TOKEN")
        .env_remove("WARREN_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .process_group(0)
        .spawn()
        .expect("run bash");
    // The nodes the block starts in the background stay in its process group.
    let mut group = ProcessGroup::new(child);
    let status = group.wait_leader(SCRIPT_TIMEOUT);
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    eprintln!("README blocks returned after {:?}", started.elapsed());

    let config = dir.join("c1/admin.conf");
    wait_until("three voters", Duration::from_secs(30), || {
        (voters(&config) == Some(3)).then_some(())
    });
    // A joiner prints its line just after the membership change commits: wait for both.
    wait_until("both joins report success", Duration::from_secs(30), || {
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        (out.matches("as control node").count() == 2).then_some(())
    });
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(!err.contains("error:") && !err.contains("refused"), "{err}");
    let nodes = command()
        .args(["node", "ls", "-o", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    let control = nodes.as_array().map(|nodes| {
        nodes
            .iter()
            .filter(|node| node["node"]["role"] == "control")
            .count()
    });
    assert_eq!(control, Some(3), "{nodes}");

    // The agents run the service's two replicas (workloads outlive the agents: stop them too).
    let agents = [dir.join("a1"), dir.join("a2")];
    let pids = wait_until("web's two replicas run", Duration::from_secs(60), || {
        let pids: Vec<u64> = agents
            .iter()
            .filter_map(|agent| agent_status(agent))
            .flat_map(|status| running_pids(&status))
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    group.terminate(Duration::from_secs(30));
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}
