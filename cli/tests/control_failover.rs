//! Clients that survive the loss of any control node, as real processes: three control nodes
//! started as in the README (init, then two joins), the admin config kept current by the init
//! node and by the CLI itself, and plain `warren` commands — no `--api` — after `kill -9` of
//! the init node.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;
use common::{Foreground, command, ok, wait_until};

/// A `warren control init|join` child on 127.0.0.1 with kernel-picked ports.
struct Node {
    process: Foreground,
    api: String,
    quic: String,
}

impl Node {
    fn start(dir: &Path, name: &str, args: &[&str]) -> Node {
        let data_dir = dir.join(name);
        let data_dir_arg = data_dir.display().to_string();
        let mut full = vec!["control"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[
            "--name",
            name,
            "--site",
            "central",
            "--api",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--metrics",
            "none",
            "--gossip",
            "none",
            "--data-dir",
            &data_dir_arg,
        ]);
        let mut process = Foreground::spawn(&full, dir.join(format!("{name}.stderr.log")));
        let ready = process.wait_for_line(" serving ");
        let word = |prefix: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("{prefix} in {ready:?}"))
                .to_owned()
        };
        Node {
            api: word("api="),
            quic: word("quic="),
            process,
        }
    }

    /// `kill -9`, and reaped.
    fn kill9(&mut self) {
        self.process.child.kill().expect("SIGKILL the node");
        self.process.child.wait().expect("reap the node");
    }
}

/// `warren args…` with `WARREN_CONFIG=config` and no `--api`, as an operator types it.
fn plain(config: &Path, args: &[&str]) -> Output {
    command()
        .env("WARREN_CONFIG", config)
        .args(args)
        .output()
        .expect("run warren")
}

fn api_of(config: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(config).expect("read the admin config");
    let yaml: serde_json::Value = serde_norway::from_str(&text).expect("admin config is YAML");
    yaml["api"]
        .as_array()
        .expect("an api list")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect()
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to).expect("copy the admin config");
    to.to_owned()
}

/// c1 inits, c2 and c3 join. The init node's admin.conf comes to list all three by itself; a
/// copy taken before the joins learns them from its first answer (a read-only copy is used but
/// left as it is). After `kill -9` of c1, plain `warren service ls` and `warren service create`
/// through c1's admin.conf work, and so does the copy that learned.
#[test]
fn plain_commands_survive_the_init_nodes_death() {
    let dir = tempfile::tempdir().unwrap();
    let mut c1 = Node::start(dir.path(), "c1", &["init"]);
    let config = dir.path().join("c1").join("admin.conf");
    assert_eq!(api_of(&config), [c1.api.as_str()]);
    let learner = copy(&config, &dir.path().join("learner.conf"));
    let read_only = copy(&config, &dir.path().join("read-only.conf"));
    std::fs::set_permissions(
        &read_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .unwrap();
    let read_only_before = std::fs::read(&read_only).unwrap();

    let token = ok(plain(&config, &["token", "create", "--role", "control"]));
    let token = token.trim();
    let join = |name: &str| {
        Node::start(
            dir.path(),
            name,
            &["join", "--join", &c1.quic, "--token", token],
        )
    };
    let c2 = join("c2");
    let c3 = join("c3");
    // Members come in node-id order (ids are random), after the addresses already listed.
    let mut all = vec![c1.api.clone(), c2.api.clone(), c3.api.clone()];
    all.sort();
    let listed_in = |config: &Path| {
        let mut api = api_of(config);
        api.sort();
        api
    };

    wait_until(
        "the init node's admin.conf lists every control node",
        Duration::from_secs(30),
        || (listed_in(&config) == all).then_some(()),
    );
    ok(plain(&learner, &["service", "ls"]));
    assert_eq!(listed_in(&learner), all, "the CLI learned the members");
    assert_eq!(api_of(&learner)[0], c1.api, "the known address stays first");
    ok(plain(&read_only, &["service", "ls"]));
    assert_eq!(std::fs::read(&read_only).unwrap(), read_only_before);

    c1.kill9();
    let started = Instant::now();
    let listed = plain(&config, &["service", "ls"]);
    let read_took = started.elapsed();
    ok(listed);
    let started = Instant::now();
    let created = plain(
        &config,
        &[
            "service",
            "create",
            "web",
            "--command",
            "sleep 1000",
            "--replicas",
            "2",
        ],
    );
    let write_took = started.elapsed();
    ok(created);
    eprintln!("after kill -9 of c1: service ls took {read_took:?}, service create {write_took:?}");
    let listed = ok(plain(&learner, &["service", "ls", "-o", "json"]));
    assert!(listed.contains("\"web\""), "{listed}");
    assert_eq!(listed_in(&config), all, "a dead member stays listed");
    drop((c2, c3));
}

/// A host that accepts TCP but never answers (a hung machine) costs one connect timeout, not the
/// request timeout, and the answer that follows drops it from the list: it is no member.
#[test]
fn a_hung_address_costs_one_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = Node::start(dir.path(), "c1", &["init"]);
    // The kernel completes the TCP handshake into the backlog; nobody ever speaks TLS.
    let hung = TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_addr = hung.local_addr().unwrap().to_string();
    let config = dir.path().join("c1").join("admin.conf");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_hung = text.replace(
        &format!("api:\n- {}\n", c1.api),
        &format!("api:\n- {hung_addr}\n- {}\n", c1.api),
    );
    assert_ne!(with_hung, text, "the api list was rewritten");
    let edited = dir.path().join("edited.conf");
    std::fs::write(&edited, with_hung).unwrap();

    let started = Instant::now();
    ok(plain(
        &edited,
        &[
            "service",
            "ls",
            "--timeout",
            "60s",
            "--connect-timeout",
            "1s",
        ],
    ));
    let took = started.elapsed();
    eprintln!("service ls past a hung address took {took:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(api_of(&edited), [c1.api.as_str()]);
    drop(hung);
}
