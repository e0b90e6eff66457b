//! The `warren` binary as a subprocess, the way operators and scripts use it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{Foreground, command, http_get, ok};

fn warren(args: &[&str]) -> Output {
    command().args(args).output().expect("run warren")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A `warren control init` child process on 127.0.0.1 with ports picked by the kernel; killed
/// when dropped.
struct ControlProcess {
    process: Foreground,
    data_dir: PathBuf,
    api: String,
    quic: String,
}

impl ControlProcess {
    /// `warren control init` on 127.0.0.1, ports picked by the kernel.
    fn init(data_dir: &Path) -> Self {
        Self::spawn(
            data_dir,
            &[
                "init",
                "--name",
                "ops-1",
                "--site",
                "central",
                "--api",
                "127.0.0.1:0",
                "--quic",
                "127.0.0.1:0",
                "--metrics",
                "none",
            ],
        )
    }

    /// `warren control run` from an existing data dir.
    fn run(data_dir: &Path) -> Self {
        Self::spawn(data_dir, &["run"])
    }

    /// `warren control run --metrics METRICS` from an existing data dir.
    fn run_with_metrics(data_dir: &Path, metrics: &str) -> Self {
        Self::spawn(data_dir, &["run", "--metrics", metrics])
    }

    fn spawn(data_dir: &Path, args: &[&str]) -> Self {
        let mut full = vec!["control"];
        full.extend_from_slice(args);
        let data_dir_arg = data_dir.display().to_string();
        full.extend_from_slice(&["--data-dir", &data_dir_arg]);
        let process = Foreground::spawn(&full, data_dir.with_extension("stderr.log"));
        let mut node = ControlProcess {
            process,
            data_dir: data_dir.to_owned(),
            api: String::new(),
            quic: String::new(),
        };
        let ready = node.process.wait_for_line(" serving ");
        // `warren control node <id> serving api=<addr> quic=<addr>`
        for word in ready.split_whitespace() {
            if let Some(api) = word.strip_prefix("api=") {
                node.api = api.to_owned();
            }
            if let Some(quic) = word.strip_prefix("quic=") {
                node.quic = quic.to_owned();
            }
        }
        assert!(ready.starts_with("warren control node "), "{ready}");
        assert!(
            !node.api.ends_with(":0") && !node.quic.ends_with(":0"),
            "{ready}"
        );
        node
    }

    fn config(&self) -> PathBuf {
        self.data_dir.join("admin.conf")
    }

    /// Runs an admin command against this node through its admin config.
    fn warren(&self, args: &[&str]) -> Output {
        command()
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .expect("run warren")
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.signal("-TERM");
        self.process.wait(Duration::from_secs(30))
    }
}

const DEPLOY: &str = "\
kind: Service
name: api
workload:
  process:
    command: [sleep, \"2000\"]
mode:
  replicated: {replicas: 1}
---
kind: Volume
name: data
labels: {tier: hot}
";

/// An operator's first session: `control init` in the foreground, then services, an
/// idempotent `apply`, a YAML mistake, a join token, the local socket, a clean SIGTERM, and
/// `control run` bringing the same cluster back on the same addresses.
#[test]
fn control_init_then_operate_the_cluster() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut node = ControlProcess::init(&scratch.path().join("d"));

    // admin.conf: private, and it records the real API address.
    let config = std::fs::read_to_string(node.config()).expect("admin.conf written");
    assert!(config.contains(&format!("- {}", node.api)), "{config}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.config())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let created = ok(node.warren(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 1000",
        "--replicas",
        "2",
    ]));
    assert!(created.contains("service web created"), "{created}");
    let services: serde_json::Value =
        serde_json::from_str(&ok(node.warren(&["service", "ls", "-o", "json"])))
            .expect("service ls -o json prints JSON");
    let web = services
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["spec"]["name"] == "web")
        .expect("web is listed");
    assert_eq!(web["spec"]["workload"]["process"]["command"][1], "1000");
    assert_eq!(web["replicas_desired"], 2);

    let deploy = scratch.path().join("deploy.yaml");
    std::fs::write(&deploy, DEPLOY).unwrap();
    let deploy_arg = deploy.to_str().unwrap();
    assert_eq!(
        ok(node.warren(&["apply", "-f", deploy_arg, "--detach"])),
        "volume/data created\nservice/api created\n"
    );
    assert_eq!(
        ok(node.warren(&["apply", "-f", deploy_arg, "--detach"])),
        "volume/data unchanged\nservice/api unchanged\n"
    );

    // A volume a service mounts: listed with its user, and not removable while mounted.
    ok(node.warren(&[
        "service",
        "create",
        "db",
        "--command",
        "sleep 1000",
        "--volume",
        "data",
    ]));
    let volumes = ok(node.warren(&["volume", "ls"]));
    assert!(volumes.starts_with("NAME "), "{volumes}");
    let row = volumes
        .lines()
        .find(|l| l.starts_with("data "))
        .expect("data listed");
    assert!(row.contains(" db "), "{volumes}");
    let output = node.warren(&["volume", "rm", "data"]);
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        "error: volume data is used by service db; remove it from the service first\n"
    );
    ok(node.warren(&["service", "rm", "db"]));
    let inspect: serde_json::Value = serde_json::from_str(&ok(
        node.warren(&["volume", "inspect", "data", "-o", "json"])
    ))
    .expect("volume inspect -o json prints JSON");
    assert_eq!(inspect["volume"]["labels"]["tier"], "hot");
    assert_eq!(inspect["services"], serde_json::json!([]));

    let broken = scratch.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "kind: Volume\nname: a\n---\nkind: Volume\nname: b: c\n",
    )
    .unwrap();
    let output = node.warren(&["apply", "-f", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.starts_with("error: "), "{error}");
    assert!(
        error.contains("broken.yaml: document 2, line 5: mapping values are not allowed"),
        "{error}"
    );

    let token = ok(node.warren(&["token", "create", "--role", "agent"]));
    assert!(token.starts_with("WRN1-a-"), "{token}");
    assert_eq!(token.lines().count(), 1, "{token}");

    // The local socket needs no admin config.
    let socket = format!("unix:{}", node.data_dir.join("control.sock").display());
    let listed = ok(warren(&["service", "ls", "--api", &socket]));
    assert!(listed.starts_with("NAME "), "{listed}");
    assert!(listed.contains("\nweb "), "{listed}");

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    node.process.wait_for_line(" stopped");
    let (api, quic) = (node.api.clone(), node.quic.clone());
    drop(node);

    let restarted = ControlProcess::run(&scratch.path().join("d"));
    assert_eq!(
        (restarted.api.as_str(), restarted.quic.as_str()),
        (api.as_str(), quic.as_str())
    );
    let listed = ok(restarted.warren(&["service", "ls"]));
    assert!(
        listed.contains("\nweb ") && listed.contains("\napi "),
        "{listed}"
    );
}

/// `warren version`, `-o json` and `--version` name one build: version, commit, target and
/// build date.
#[test]
fn version_names_the_build() {
    let json = warren(&["version", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let build: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let field = |name: &str| build[name].as_str().expect(name).to_owned();
    let (version, commit, target, built) = (
        field("version"),
        field("commit"),
        field("target"),
        field("built"),
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(
        target.ends_with("-linux-gnu") || target.ends_with("-linux-musl"),
        "{target}"
    );
    assert!(built.ends_with('Z') && built.len() == 20, "{built}");
    let short = stdout(&warren(&["--version"]));
    assert_eq!(
        short.trim(),
        format!("warren {version} (commit {commit}, {target}, built {built})")
    );
    let long = stdout(&warren(&["version"]));
    for value in [&version, &commit, &target, &built] {
        assert!(long.contains(value.as_str()), "{long}");
    }
}

/// `control run --metrics` moves the metrics listener (or turns it off with `none`), and a
/// later `control run` without the flag listens where the last one said: the setting is kept.
#[test]
fn control_run_moves_the_metrics_listener_and_keeps_it() {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let data_dir = scratch.path().join("d");
    let mut node = ControlProcess::init(&data_dir);
    assert!(node.terminate().success());
    drop(node);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let metrics = free.local_addr().expect("bound").to_string();
    drop(free);
    // The metric names the build `warren version` names.
    let version = warren(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_slice(&version.stdout).expect("JSON");
    let build = format!(
        r#"built="{}",commit="{}""#,
        version["built"].as_str().expect("built"),
        version["commit"].as_str().expect("commit")
    );
    let serves_metrics = |addr: &str| {
        std::net::TcpStream::connect(addr).is_ok() && {
            let scraped = http_get(addr, "/metrics");
            scraped.starts_with("HTTP/1.1 200")
                && scraped.lines().any(|l| {
                    l.starts_with("warren_build_info{")
                        && l.contains("node=\"ops-1\"")
                        && l.contains(&build)
                })
        }
    };
    assert!(!serves_metrics(&metrics), "nothing listens there yet");

    // Turned on (init said none), then kept by a run without the flag; the node records the
    // address in the registry, so discovery lists it.
    let discovered = format!(r#""targets":["{metrics}"]"#);
    for run in [Some(metrics.as_str()), None] {
        let mut node = match run {
            Some(addr) => ControlProcess::run_with_metrics(&data_dir, addr),
            None => ControlProcess::run(&data_dir),
        };
        assert!(serves_metrics(&metrics), "metrics on {metrics} ({run:?})");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !http_get(&metrics, "/sd/nodes?role=control").contains(&discovered) {
            assert!(
                std::time::Instant::now() < deadline,
                "the registry never recorded {metrics}: {}",
                http_get(&metrics, "/sd/nodes?role=control")
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(node.terminate().success());
    }

    // Turned off, and kept off.
    for run in [Some("none"), None] {
        let mut node = match run {
            Some(addr) => ControlProcess::run_with_metrics(&data_dir, addr),
            None => ControlProcess::run(&data_dir),
        };
        assert!(!serves_metrics(&metrics), "no metrics listener ({run:?})");
        assert!(node.terminate().success());
    }

    let refused = warren(&[
        "control",
        "run",
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
        "--metrics",
        "localhost",
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--metrics: expected IP:PORT or none"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn help_lists_what_exists() {
    let output = warren(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "control",
        "cluster",
        "token",
        "node",
        "service",
        "apply",
        "secret",
        "volume",
        "demo",
        "dev",
        "completion",
        "--config",
        "--api",
    ] {
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

#[test]
fn admin_commands_without_a_config_say_where_they_looked() {
    let output = warren(&["cluster", "status"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.starts_with("error: no admin config found"), "{error}");
    assert!(error.contains("/var/lib/warren/admin.conf"), "{error}");
}

#[test]
fn apply_dry_run_validates_without_a_cluster() {
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("deploy.yaml");
    std::fs::write(&file, DEPLOY).unwrap();
    let checked = ok(warren(&[
        "apply",
        "--dry-run",
        "-f",
        file.to_str().unwrap(),
    ]));
    assert_eq!(
        checked,
        "volume/data valid (dry run)\nservice/api valid (dry run)\n"
    );
    std::fs::write(&file, DEPLOY.replace("---", "replica: 2\n---")).unwrap();
    let output = warren(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("deploy.yaml: document 1, line 8: unknown field `replica`"),
        "{error}"
    );
}

#[test]
fn service_create_names_the_bad_flag_before_sending() {
    let output = warren(&[
        "service",
        "create",
        "web",
        "--command",
        "sleep 1",
        "--env",
        "1BAD=x",
        "--api",
        "unix:/nonexistent.sock",
    ]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("(from --env)"), "{error}");
}

/// Runs an admin command with `config` against the API at `api`.
fn admin(config: &Path, api: &str, args: &[&str]) -> Output {
    command()
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--api")
        .arg(api)
        .output()
        .expect("run warren")
}

/// The control plane's promise with real processes: c1 inits, c2 and c3 join with a control
/// token; after `kill -9` of c1, a write through c2 succeeds and c3 still lists the first
/// service; c1 restarted from its data dir catches up.
#[test]
fn three_control_processes_survive_sigkill_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = ControlProcess::init(&dir.path().join("c1"));
    let config = c1.config();
    let token = ok(c1.warren(&["token", "create", "--role", "control", "--ttl", "10m"]))
        .trim()
        .to_owned();
    assert!(token.starts_with("WRN1-c-"), "{token}");
    let join = |name: &str| {
        let args = [
            "join",
            "--name",
            name,
            "--site",
            "central",
            "--join",
            &c1.quic,
            "--token",
            &token,
            "--api",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--metrics",
            "none",
        ];
        ControlProcess::spawn(&dir.path().join(name), &args)
    };
    let c2 = join("c2");
    let c3 = join("c3");
    ok(admin(
        &config,
        &c1.api,
        &[
            "service",
            "create",
            "web",
            "--command",
            "sleep 1000",
            "--replicas",
            "2",
        ],
    ));

    c1.process.child.kill().unwrap();
    c1.process.child.wait().unwrap();
    let started = Instant::now();
    let created = admin(
        &config,
        &c2.api,
        &["service", "create", "api", "--command", "sleep 1000"],
    );
    let took = started.elapsed();
    ok(created);
    eprintln!("write through c2 after SIGKILL of c1 took {took:?}");
    let listed = ok(admin(&config, &c3.api, &["service", "ls", "-o", "json"]));
    assert!(
        listed.contains("\"web\"") && listed.contains("\"api\""),
        "{listed}"
    );

    let c1 = ControlProcess::run(&dir.path().join("c1"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = admin(&config, &c1.api, &["service", "ls", "-o", "json"]);
        if output_ok_and_contains(&listed, "\"api\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted c1 did not catch up: {}",
            stderr(&listed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((c2, c3, c1));
}

fn output_ok_and_contains(output: &Output, needle: &str) -> bool {
    output.status.success() && stdout(output).contains(needle)
}

/// `warren … | head -1`: a reader that goes away ends the command quietly with status 0, not
/// with a panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::io::Read;
    let mut child = command()
        .args(["completion", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    child.stdout.take().unwrap().read_exact(&mut first).ok();
    // The pipe's read end is closed now (dropped above); the rest of the script hits it.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
