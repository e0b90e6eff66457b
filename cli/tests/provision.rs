//! A box brought up the way systemd brings it up: the command is the `ExecStart=` line of
//! deploy/systemd/warren-agent.service (binary and config paths swapped for the test's), the
//! settings one config file, the token a file. SIGTERM to the agent alone is what the unit's
//! `KillMode=process` sends on stop, restart and upgrade. Also: both units pass
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

mod common;
use common::{
    Foreground, KillUnder, READY_TIMEOUT, admin, agent_status, alive, command, command_of,
    control_init_with, running_pids, wait_until,
};

const AGENT_UNIT: &str = include_str!("../../deploy/systemd/warren-agent.service");
/// Where the units expect the binary and the agent's config file.
const UNIT_BINARY: &str = "/usr/local/bin/warren";
const UNIT_CONFIG: &str = "/etc/warren/agent.yaml";
/// The exit status the unit's `RestartPreventExitStatus=` names.
const EXIT_PERMANENT: i32 = 78;

/// The agent unit's `ExecStart=` arguments (after the binary), with the config path swapped
/// for `config`.
fn unit_args(config: &Path) -> Vec<String> {
    let line = AGENT_UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some(UNIT_BINARY));
    let args: Vec<String> = words
        .map(|w| {
            if w == UNIT_CONFIG {
                config.to_str().expect("utf-8 path").to_owned()
            } else {
                w
            }
        })
        .collect();
    assert!(
        args.iter().any(|a| Path::new(a) == config),
        "ExecStart names {UNIT_CONFIG}: {line}"
    );
    args
}

/// An agent started as the unit starts it, its stdout and stderr in files (to look for the
/// token in), killed when dropped.
struct BoxAgent {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl BoxAgent {
    fn start(dir: &Path, binary: &Path, config: &Path, boot: &str) -> Self {
        let stdout = dir.join(format!("{boot}.stdout.log"));
        let stderr = dir.join(format!("{boot}.stderr.log"));
        let child = command_of(binary)
            .args(unit_args(config))
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the agent");
        BoxAgent {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    #[track_caller]
    fn wait_for_stdout(&mut self, needle: &str) {
        wait_until(
            &format!("{needle:?} on the agent's stdout"),
            READY_TIMEOUT,
            || {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "the agent exited ({status}) before {needle:?}:\n{}",
                        self.logs()
                    );
                }
                std::fs::read_to_string(&self.stdout)
                    .ok()
                    .filter(|out| out.contains(needle))
                    .map(drop)
            },
        );
    }

    /// SIGTERM, what systemd sends the agent alone (`KillMode=process`); waits for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), rustix::process::Signal::TERM);
        let status = wait_until("the agent to exit", READY_TIMEOUT, || {
            self.child.try_wait().expect("wait for the agent")
        });
        assert!(status.success(), "{status}:\n{}", self.logs());
        status
    }

    /// Neither its command line, nor its environment, nor anything it printed holds `token`.
    #[track_caller]
    fn assert_token_hidden(&self, token: &str) {
        for file in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{}/{file}", self.pid())).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(token),
                "the token is in /proc/PID/{file}"
            );
        }
        assert!(
            !self.logs().contains(token),
            "the token is in the agent's output"
        );
    }
}

impl Drop for BoxAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, which: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    let _ = rustix::process::kill_process(pid, which);
}

/// The config file of the box, as an operator would flash it.
fn write_config(dir: &Path, name: &str, control: &str, token_file: &Path) -> PathBuf {
    let text = format!(
        "data_dir: {data}\n\
         control: [{control}]\n\
         token_file: {token}\n\
         name: {name}\n\
         site: lisbon\n\
         labels: {{rack: r1}}\n\
         runtime: process\n\
         workloads_dir: {workloads}\n\
         listen: {{metrics: none, gossip: none, dns: none}}\n\
         wireguard: {{mode: off}}\n",
        data = dir.join(format!("{name}-data")).display(),
        token = token_file.display(),
        workloads = dir.join("workloads").join(name).display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn write_token(dir: &Path, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("token");
    std::fs::write(&path, token.trim()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The pids of the running replicas in the agent's own status, sorted, once there are `n`.
fn running(data_dir: &Path, n: usize) -> Vec<u64> {
    wait_until(&format!("{n} running replicas"), READY_TIMEOUT, || {
        let mut pids = running_pids(&agent_status(data_dir)?);
        pids.sort_unstable();
        (pids.len() == n && pids.iter().all(|p| alive(*p))).then_some(pids)
    })
}

/// The pids control reports for `service`'s running replicas, sorted, once they are `want`.
fn reported(config: &Path, service: &str, want: &[u64]) {
    wait_until(
        "control to report the replicas running",
        READY_TIMEOUT,
        || {
            let ps: serde_json::Value =
                serde_json::from_str(&admin(config, &["service", "ps", service, "-o", "json"]))
                    .ok()?;
            let mut pids: Vec<u64> = ps
                .as_array()?
                .iter()
                .filter(|r| r["state"] == "running" && r["stale"] == false)
                .filter_map(|r| r["pid"].as_u64())
                .collect();
            pids.sort_unstable();
            (pids == want).then_some(())
        },
    );
}

/// A scratch dir with a control node, a single-use agent token in a 0600 file and box
/// `name`'s config file. Dropped in order: the control node, the workloads, the dir.
struct Provisioned {
    control: Foreground,
    _workloads: KillUnder,
    quic: String,
    admin_conf: PathBuf,
    token: String,
    config: PathBuf,
    data_dir: PathBuf,
    binary: PathBuf,
    tmp: tempfile::TempDir,
}

fn provision(name: &str) -> Provisioned {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let workloads = KillUnder(dir.join("workloads"));
    let (control, quic, admin_conf) =
        control_init_with(dir, &["--metrics", "none", "--gossip", "none"]);
    let token = admin(
        &admin_conf,
        &["token", "create", "--role", "agent", "--single-use"],
    );
    let token = token.trim().to_owned();
    let config = write_config(dir, name, &quic, &write_token(dir, &token));
    Provisioned {
        control,
        _workloads: workloads,
        data_dir: dir.join(format!("{name}-data")),
        quic,
        admin_conf,
        token,
        config,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_warren")),
        tmp,
    }
}

fn control_run(dir: &Path) -> Foreground {
    let data = dir.join("control");
    let mut control = Foreground::spawn(
        &["control", "run", "--data-dir", data.to_str().unwrap()],
        dir.join("control-run.stderr.log"),
    );
    control.wait_for_line(" serving ");
    control
}

fn stop(control: &mut Foreground) {
    control.signal("-TERM");
    control.wait(READY_TIMEOUT);
}

/// The box of the issue: provisioned from one file, it joins; stopped, its workloads keep
/// running; rebooted with control down it runs from its cache (workloads adopted, or started
/// again after a power cut killed them); its binary upgraded, the same workload pids are
/// adopted and reported running. The token is never on its command line, in its environment
/// or in its output, and, single-use, it is refused for good to a second box (exit 78).
#[test]
fn a_box_from_one_config_file_joins_reboots_offline_and_upgrades_with_its_workloads_kept() {
    let mut b = provision("edge-box-1");
    let dir = b.tmp.path().to_owned();
    let dir = dir.as_path();
    let token = b.token.clone();
    let token = token.as_str();

    eprintln!("--- first boot: the unit's command joins");
    let mut agent = BoxAgent::start(dir, &b.binary, &b.config, "boot-1");
    agent.wait_for_stdout("joined the cluster as agent node");
    agent.wait_for_stdout(" running");
    admin(
        &b.admin_conf,
        &[
            "service",
            "create",
            "web",
            "--command",
            "sleep 100000",
            "--replicas",
            "2",
        ],
    );
    let pids = running(&b.data_dir, 2);
    agent.assert_token_hidden(token);

    eprintln!("--- systemctl stop: SIGTERM to the agent alone, workloads keep running");
    agent.terminate();
    assert!(
        pids.iter().all(|p| alive(*p)),
        "workloads outlive the agent"
    );

    eprintln!("--- reboot with control down: runs from its cache, adopts the workloads");
    stop(&mut b.control);
    let mut agent = BoxAgent::start(dir, &b.binary, &b.config, "boot-2");
    agent.wait_for_stdout(" running");
    assert_eq!(running(&b.data_dir, 2), pids, "the same workloads, adopted");
    assert!(
        !agent.logs().contains("joined the cluster"),
        "no second join"
    );
    agent.terminate();

    eprintln!("--- power cut with control down: the workloads died too, the agent restarts them");
    for pid in &pids {
        signal(*pid as u32, rustix::process::Signal::KILL);
    }
    wait_until("the workloads to die", READY_TIMEOUT, || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    let mut agent = BoxAgent::start(dir, &b.binary, &b.config, "boot-3");
    agent.wait_for_stdout(" running");
    let pids = running(&b.data_dir, 2);

    eprintln!("--- control back: the box reports its workloads");
    let _control = control_run(dir);
    reported(&b.admin_conf, "web", &pids);

    eprintln!("--- upgrade: a new binary file, SIGTERM the old agent, start the new one");
    let upgraded = dir.join("warren-upgraded");
    std::fs::copy(&b.binary, &upgraded).unwrap();
    agent.terminate();
    let mut agent = BoxAgent::start(dir, &upgraded, &b.config, "boot-4");
    agent.wait_for_stdout(" running");
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap();
    assert_eq!(exe, upgraded, "the upgraded binary runs");
    assert_eq!(
        running(&b.data_dir, 2),
        pids,
        "same workload pids after the upgrade"
    );
    reported(&b.admin_conf, "web", &pids);
    agent.assert_token_hidden(token);

    eprintln!("--- the spent single-use token, given to a second box, is refused for good");
    let other = write_config(dir, "edge-box-2", &b.quic, &dir.join("token"));
    let output = command()
        .args(unit_args(&other))
        .output()
        .expect("run warren");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_PERMANENT), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains(token), "the token is in the error");
}

/// A box that comes up before control can be reached keeps trying (each attempt logged, the
/// token never) and joins once control answers. A join cut short after control admitted the
/// box (`agent.json` not yet written) is finished at the next boot from the saved grant,
/// without asking control again: the single-use token is not needed twice.
#[test]
fn up_waits_for_control_and_finishes_a_join_cut_short() {
    let mut b = provision("edge-late");
    let dir = b.tmp.path().to_owned();
    let dir = dir.as_path();
    let token = b.token.clone();
    let token = token.as_str();

    eprintln!("--- control down: the agent retries");
    stop(&mut b.control);
    let mut agent = BoxAgent::start(dir, &b.binary, &b.config, "early");
    wait_until("two join attempts logged", READY_TIMEOUT, || {
        (agent.logs().matches("cannot join yet").count() >= 2).then_some(())
    });
    agent.assert_token_hidden(token);

    eprintln!("--- control back: it joins");
    let _control = control_run(dir);
    agent.wait_for_stdout("joined the cluster as agent node");
    agent.wait_for_stdout(" running");
    agent.assert_token_hidden(token);
    agent.terminate();

    eprintln!("--- a join cut short before agent.json: finished from the grant, token spent");
    std::fs::remove_file(b.data_dir.join("agent.json")).unwrap();
    let mut agent = BoxAgent::start(dir, &b.binary, &b.config, "resumed");
    agent.wait_for_stdout(" running");
    assert!(
        agent
            .logs()
            .contains("finished a join that was interrupted"),
        "{}",
        agent.logs()
    );
    let nodes = admin(&b.admin_conf, &["node", "ls"]);
    assert_eq!(nodes.matches("edge-late").count(), 1, "one node:\n{nodes}");
    agent.terminate();
}

/// A wrong config file is one line naming the file and the field, with the exit status that
/// stops systemd from starting the agent again.
#[test]
fn a_bad_config_file_is_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "control: [127.0.0.1:7101]\ntoken: x\nlisten: {metrics: x}\n",
            "listen.metrics: expected IP:PORT or none, got \"x\"",
        ),
        (
            "control: [127.0.0.1:7101]\ntoken: x\nlisten: {metric: x}\n",
            "line 3: listen: unknown field `metric`",
        ),
    ] {
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        let output = command()
            .args(unit_args(&path))
            .output()
            .expect("run warren");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_PERMANENT), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{}: {expected}", path.display())),
            "{stderr}"
        );
    }
}

/// Both units pass `systemd-analyze verify`, with their binary path pointing at the built
/// `warren` (verify insists that it exists).
#[test]
fn the_systemd_units_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (install the systemd package)"
        );
        eprintln!("skipped: systemd-analyze is not installed (the systemd package has it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["warren-agent.service", "warren-control.service"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/systemd")
                .join(name),
        )
        .unwrap();
        assert!(text.contains(UNIT_BINARY), "{name} runs {UNIT_BINARY}");
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            text.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_warren")),
        )
        .unwrap();
        units.push(path);
    }
    let output = std::process::Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // verify exits 0 on an unknown key or a bad value and only says so: any word about our
    // units is a failure.
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("warren-")).collect();
    assert!(
        output.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
}
