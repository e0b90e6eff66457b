//! Flag parsing of the service commands into specs, the errors each bad flag gives, and the
//! tables they print.

use super::*;
use clap::Parser;
use std::collections::BTreeMap;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[derive(Debug, Parser)]
struct Harness {
    #[command(subcommand)]
    command: ServiceCommand,
}

fn parse(args: &[&str]) -> ServiceCommand {
    let mut argv = vec!["service"];
    argv.extend(args);
    Harness::try_parse_from(argv).unwrap().command
}

fn created(args: &[&str]) -> Result<ServiceSpec> {
    match parse(args) {
        ServiceCommand::Create { name, flags } => flags.to_spec(&name),
        other => panic!("not create: {other:?}"),
    }
}

#[test]
fn create_builds_the_spec_from_flags() {
    let spec = created(&[
        "create",
        "web",
        "--command",
        "/usr/bin/web --greeting 'hello world'",
        "--replicas",
        "3",
        "--site",
        "lisbon",
        "--site",
        "porto",
        "--constraint",
        "label.disk==ssd",
        "--env",
        "MODE=prod",
        "--env",
        "EMPTY=",
        "--secret",
        "db-password",
        "--secret",
        "tls-key:key.pem",
        "--port",
        "http:8080",
        "--health-http",
        "http://127.0.0.1:8080/health",
        "--restart",
        "on-failure",
        "--on-disconnect",
        "reschedule=5m",
        "--update-parallelism",
        "2",
        "--update-delay",
        "30s",
        "--update-monitor",
        "10s",
        "--update-failure-action",
        "rollback",
        "--update-max-failure-ratio",
        "0.2",
        "--label",
        "team=edge",
    ])
    .unwrap();
    assert_eq!(
        spec.workload,
        Workload::Process(ProcessSpec {
            command: vec![
                "/usr/bin/web".into(),
                "--greeting".into(),
                "hello world".into()
            ],
            working_dir: None
        })
    );
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
    assert_eq!(spec.placement.sites, ["lisbon", "porto"]);
    assert_eq!(spec.placement.constraints[0].to_string(), "label.disk==ssd");
    assert_eq!(spec.env, map(&[("MODE", "prod"), ("EMPTY", "")]));
    assert_eq!(spec.secrets[0], SecretRef::new("db-password"));
    assert_eq!(spec.secrets[1].target, "key.pem");
    assert_eq!(spec.ports[0].to_string(), "http:8080/tcp");
    assert_eq!(
        spec.health.as_ref().unwrap().probe,
        Probe::Http {
            url: "http://127.0.0.1:8080/health".into()
        }
    );
    assert_eq!(spec.restart.condition, RestartCondition::OnFailure);
    assert_eq!(
        spec.on_disconnect,
        OnDisconnect::Reschedule { after_ms: 300_000 }
    );
    assert_eq!(spec.update.parallelism, 2);
    assert_eq!(spec.update.delay_ms, 30_000);
    assert_eq!(spec.update.monitor_ms, 10_000);
    assert_eq!(
        spec.update.failure_action,
        warren_api::FailureAction::Rollback
    );
    assert_eq!(spec.update.max_failure_ratio.per_mille(), 200);
    assert_eq!(spec.labels, map(&[("team", "edge")]));
}

#[test]
fn create_defaults_to_one_replica_and_global_works() {
    let spec = created(&["create", "web", "--image", "nginx:1.27"]).unwrap();
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 1 });
    let spec = created(&["create", "agent", "--image", "x:1", "--global"]).unwrap();
    assert_eq!(spec.mode, ServiceMode::Global);
}

#[test]
fn create_errors_name_the_flag() {
    let check = |args: &[&str], expected: &str| {
        let error = created(args).unwrap_err().to_string();
        assert!(error.contains(expected), "{args:?}: {error}");
    };
    check(&["create", "Web", "--image", "x:1"], "service name:");
    check(
        &["create", "web", "--command", "a 'b"],
        "--command: missing closing quote",
    );
    check(
        &["create", "web", "--command", "  "],
        "--command: empty command",
    );
    check(
        &["create", "web", "--image", "x:1", "--env", "NOEQ"],
        "--env: expected KEY=VALUE",
    );
    check(
        &["create", "web", "--image", "x:1", "--env", "1BAD=x"],
        "(from --env)",
    );
    check(
        &["create", "web", "--image", "x:1", "--replicas", "20000"],
        "(from --replicas)",
    );
    check(
        &["create", "web", "--image", "x:1", "--update-delay", "5"],
        "--update-delay: invalid duration",
    );
    check(
        &["create", "web", "--image", "x:1", "--update-monitor", "2h"],
        "update.monitor_ms: ",
    );
    check(
        &[
            "create",
            "web",
            "--image",
            "x:1",
            "--update-failure-action",
            "stop",
        ],
        "--update-failure-action: unknown action \"stop\" (expected pause, rollback or continue)",
    );
    check(
        &[
            "create",
            "web",
            "--image",
            "x:1",
            "--update-max-failure-ratio",
            "1.5",
        ],
        "--update-max-failure-ratio: must be a number from 0 to 1, not 1.5",
    );
    check(
        &[
            "create",
            "web",
            "--image",
            "x:1",
            "--update-max-failure-ratio",
            "x",
        ],
        "--update-max-failure-ratio: \"x\" is not a number (expected 0 to 1, e.g. 0.2)",
    );
    check(
        &["create", "web", "--image", "x:1", "--secret", "DB"],
        "(from --secret)",
    );
    check(
        &[
            "create",
            "web",
            "--image",
            "x:1",
            "--cap-add",
            "CAP_NET_RAW",
        ],
        r#"cap_add[0]: unknown capability "CAP_NET_RAW" (write NET_RAW) (from --cap-add)"#,
    );
    check(
        &["create", "web", "--image", "x:1", "--user", "a b"],
        "(from --user)",
    );
}

/// `--user`, `--group` and `--cap-add` set who the workload runs as; without them it is
/// the default (a user of its own, no capability); `update --no-user …` goes back to it.
#[test]
fn run_as_flags() {
    let spec = created(&["create", "web", "--image", "x:1"]).unwrap();
    assert_eq!((spec.user, spec.group), (None, None));
    assert!(spec.cap_add.is_empty());
    let mut spec = created(&[
        "create",
        "web",
        "--image",
        "x:1",
        "--user",
        "www-data",
        "--group",
        "1000",
        "--cap-add",
        "NET_BIND_SERVICE",
        "--cap-add",
        "NET_RAW",
    ])
    .unwrap();
    assert_eq!(spec.user.as_deref(), Some("www-data"));
    assert_eq!(spec.group.as_deref(), Some("1000"));
    assert_eq!(spec.cap_add, ["NET_BIND_SERVICE", "NET_RAW"]);
    let ServiceCommand::Update { flags, .. } = parse(&["update", "web", "--cap-add", "NET_ADMIN"])
    else {
        panic!("not update")
    };
    flags.apply_to(&mut spec).unwrap();
    assert_eq!(spec.cap_add, ["NET_ADMIN"], "the list is replaced");
    assert_eq!(spec.user.as_deref(), Some("www-data"), "the rest is kept");
    let ServiceCommand::Update { removals, .. } =
        parse(&["update", "web", "--no-user", "--no-group", "--no-cap-add"])
    else {
        panic!("not update")
    };
    assert!(removals.no_user && removals.no_group && removals.no_cap_add);
    assert!(
        Harness::try_parse_from(["service", "update", "web", "--no-user", "--user", "x"]).is_err()
    );
}

#[test]
fn clap_refuses_conflicting_and_malformed_flags() {
    for args in [
        vec!["service", "create", "web"],
        vec![
            "service",
            "create",
            "web",
            "--command",
            "a",
            "--image",
            "b:1",
        ],
        vec![
            "service",
            "create",
            "web",
            "--image",
            "b:1",
            "--replicas",
            "2",
            "--global",
        ],
        vec!["service", "create", "web", "--image", "b:1", "--port", "0"],
        vec![
            "service",
            "create",
            "web",
            "--image",
            "b:1",
            "--restart",
            "sometimes",
        ],
        vec![
            "service",
            "create",
            "web",
            "--image",
            "b:1",
            "--constraint",
            "zone=a",
        ],
        vec![
            "service",
            "create",
            "web",
            "--image",
            "b:1",
            "--health-tcp",
            "80",
            "--health-exec",
            "true",
        ],
    ] {
        assert!(Harness::try_parse_from(&args).is_err(), "{args:?}");
    }
}

/// `--registry-auth` names the image's registry credentials; `--secret` on update replaces
/// the files and keeps them; a second `--registry-auth` replaces them.
#[test]
fn registry_auth_flag() {
    let mut spec = created(&[
        "create",
        "web",
        "--image",
        "web:1",
        "--secret",
        "db",
        "--registry-auth",
        "regcred",
    ])
    .unwrap();
    assert_eq!(
        spec.secrets,
        [SecretRef::new("db"), SecretRef::registry_auth("regcred")]
    );
    let ServiceCommand::Update { flags, .. } = parse(&["update", "web", "--secret", "tls"]) else {
        panic!("not update")
    };
    flags.apply_to(&mut spec).unwrap();
    assert_eq!(
        spec.secrets,
        [SecretRef::new("tls"), SecretRef::registry_auth("regcred")]
    );
    let ServiceCommand::Update { flags, .. } =
        parse(&["update", "web", "--registry-auth", "other"])
    else {
        panic!("not update")
    };
    flags.apply_to(&mut spec).unwrap();
    assert_eq!(
        spec.secrets,
        [SecretRef::new("tls"), SecretRef::registry_auth("other")]
    );
    let err = created(&[
        "create",
        "api",
        "--command",
        "true",
        "--registry-auth",
        "regcred",
    ]);
    let message = format!("{:#}", err.unwrap_err());
    assert!(
        message.contains("registry credentials are for image workloads")
            && message.contains("(from --registry-auth)"),
        "{message}"
    );
}

#[test]
fn update_applies_on_top() {
    let mut spec = created(&[
        "create",
        "web",
        "--image",
        "web:1",
        "--env",
        "A=1",
        "--env",
        "B=2",
        "--site",
        "x",
        "--health-tcp",
        "80",
    ])
    .unwrap();
    if let Workload::Image(image) = &mut spec.workload {
        image.args = vec!["--serve".into()];
    }
    spec.health.as_mut().unwrap().retries = 9;
    let ServiceCommand::Update { flags, .. } = parse(&[
        "update",
        "web",
        "--image",
        "web:2",
        "--env",
        "B=3",
        "--health-tcp",
        "81",
    ]) else {
        panic!("not update")
    };
    flags.apply_to(&mut spec).unwrap();
    assert_eq!(
        spec.workload,
        Workload::Image(ImageSpec {
            reference: "web:2".into(),
            args: vec!["--serve".into()]
        })
    );
    assert_eq!(spec.env, map(&[("A", "1"), ("B", "3")]));
    assert_eq!(spec.placement.sites, ["x"]);
    let health = spec.health.unwrap();
    assert_eq!(health.probe, Probe::Tcp { port: 81 });
    assert_eq!(health.retries, 9);
}

#[test]
fn workload_text_is_short_and_quoted() {
    let process = Workload::Process(ProcessSpec {
        command: vec!["sleep".into(), "1 000".into()],
        working_dir: None,
    });
    assert_eq!(workload_text(&process), "sleep '1 000'");
    let long = Workload::Image(ImageSpec {
        reference: "r".repeat(100),
        args: vec![],
    });
    assert_eq!(
        workload_text(&long).chars().count(),
        MAX_WORKLOAD_COLUMN_CHARS
    );
}

#[test]
fn volume_flags_name_the_volume_target_and_access() {
    let spec = created(&[
        "create",
        "db",
        "--command",
        "sleep 1000",
        "--volume",
        "data",
        "--volume",
        "seed:init:ro",
        "--volume",
        "logs:ro",
    ])
    .unwrap();
    let mount = |volume: &str, target: &str, read_only| VolumeMount {
        volume: volume.to_owned(),
        target: target.to_owned(),
        read_only,
    };
    assert_eq!(
        spec.volumes,
        [
            mount("data", "data", false),
            mount("seed", "init", true),
            mount("logs", "logs", true),
        ]
    );
    for bad in ["data:", ":x", "a:b:c"] {
        let error = created(&["create", "db", "--command", "x", "--volume", bad])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--volume:"), "{bad}: {error}");
    }
}

#[test]
fn ps_notes_why_replicas_wait() {
    let mut info = ServiceInfo {
        spec: created(&["create", "db", "--command", "x"]).unwrap(),
        version: 1,
        created_at_ms: 0,
        updated_at_ms: 0,
        replicas_desired: Some(1),
        replicas_placed: 0,
        replicas_running: Some(0),
        replicas_stale: 0,
        unschedulable: 1,
        pending_reason: None,
        rolling_out: None,
        can_roll_back: false,
        pinned: Some("pinned to node edge-1, which holds volume data".to_owned()),
        rollout: None,
    };
    assert_eq!(
        pending_note(&info),
        "1 replica pending: pinned to node edge-1, which holds volume data\n"
    );
    info.unschedulable = 0;
    assert_eq!(
        pending_note(&info),
        "pinned to node edge-1, which holds volume data\n"
    );
}

#[test]
fn an_images_command_comes_after_two_dashes() {
    let spec = created(&[
        "create",
        "web",
        "--image",
        "busybox:1.36",
        "--",
        "sh",
        "-c",
        "echo hi; sleep 1000",
    ])
    .unwrap();
    assert_eq!(
        spec.workload,
        Workload::Image(ImageSpec {
            reference: "busybox:1.36".into(),
            args: vec!["sh".into(), "-c".into(), "echo hi; sleep 1000".into()],
        })
    );
    let error = created(&["create", "web", "--command", "sleep 1", "--", "x"]).unwrap_err();
    assert!(
        error.to_string().contains("a process's go in --command"),
        "{error}"
    );
}

/// `service ls` adds a rollout under way or paused to REPLICAS, and `inspect` says it in full.
#[test]
fn ls_and_inspect_show_the_rollout() {
    let mut info = ServiceInfo {
        spec: created(&["create", "web", "--command", "x", "--replicas", "3"]).unwrap(),
        version: 2,
        created_at_ms: 0,
        updated_at_ms: 0,
        replicas_desired: Some(3),
        replicas_placed: 3,
        replicas_running: Some(2),
        replicas_stale: 0,
        unschedulable: 0,
        pending_reason: None,
        rolling_out: None,
        can_roll_back: true,
        pinned: None,
        rollout: Some(RolloutInfo {
            version: 2,
            state: "paused".to_owned(),
            updated: 1,
            total: 3,
            failed: 1,
            unreachable: 0,
            message: "paused: web.1 on edge-1 failed: exited with code 127 (monitor 5s)".to_owned(),
        }),
    };
    assert_eq!(replicas_text(&info), "2/3 (paused 1/3)");
    assert_eq!(
        rollout_text(info.rollout.as_ref()),
        "version 2 paused, 1/3 updated, 1 failed: paused: web.1 on edge-1 failed: exited with \
         code 127 (monitor 5s)"
    );
    if let Some(rollout) = info.rollout.as_mut() {
        rollout.state = "rolling_back".to_owned();
    }
    assert_eq!(replicas_text(&info), "2/3 (rolling back 1/3)");
    if let Some(rollout) = info.rollout.as_mut() {
        rollout.state = "completed".to_owned();
    }
    assert_eq!(
        replicas_text(&info),
        "2/3",
        "a finished rollout is not in the column"
    );
    assert_eq!(rollout_text(None), "none");
}

/// `--metrics-port` declares where replicas serve metrics (path /metrics unless
/// `--metrics-path` says otherwise); `update` moves either, `none` stops declaring it, a path
/// without a port is refused, and a bad value names its flag.
#[test]
fn metrics_flags() {
    let spec = created(&["create", "web", "--image", "x:1"]).unwrap();
    assert_eq!(spec.metrics, None);
    let mut spec = created(&["create", "web", "--image", "x:1", "--metrics-port", "9100"]).unwrap();
    assert_eq!(
        spec.metrics,
        Some(MetricsEndpoint {
            port: 9100,
            path: "/metrics".into()
        })
    );
    let update = |spec: &mut ServiceSpec, args: &[&str]| {
        let mut argv = vec!["update", "web"];
        argv.extend(args);
        let ServiceCommand::Update { flags, .. } = parse(&argv) else {
            panic!("not update")
        };
        flags.apply_to(spec)
    };
    update(&mut spec, &["--metrics-path", "/stats"]).unwrap();
    assert_eq!(
        spec.metrics.as_ref().map(|m| (m.port, m.path.as_str())),
        Some((9100, "/stats"))
    );
    update(&mut spec, &["--metrics-port", "9200"]).unwrap();
    assert_eq!(
        spec.metrics.as_ref().map(|m| (m.port, m.path.as_str())),
        Some((9200, "/stats"))
    );
    update(&mut spec, &["--metrics-port", "none"]).unwrap();
    assert_eq!(spec.metrics, None);
    let error = update(&mut spec, &["--metrics-path", "/stats"]).unwrap_err();
    assert!(
        error.to_string().contains("give --metrics-port too"),
        "{error}"
    );
    let error = update(&mut spec, &["--metrics-port", "0"]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--metrics-port: expected a port 1-65535 or none, got \"0\""
    );
    let error = created(&[
        "create",
        "web",
        "--image",
        "x:1",
        "--metrics-port",
        "9100",
        "--metrics-path",
        "stats",
    ])
    .unwrap_err();
    assert!(
        error.to_string().ends_with("(from --metrics-path)"),
        "{error}"
    );
}
