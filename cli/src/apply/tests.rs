//! Parsing apply documents: write order, YAML and semantic errors with file, document and
//! line, round trips with `service inspect`, secrets read from files.

use super::*;

fn parse_text(text: &str) -> Result<Vec<Document>> {
    parse("deploy.yaml", text, Path::new("."))
}

fn error_of(text: &str) -> String {
    format!("{:#}", parse_text(text).unwrap_err())
}

const TWO: &str = "\
kind: Service
name: web
workload:
  process:
    command: [sleep, 1000]
mode:
  replicated:
    replicas: 2
---
kind: Volume
name: data
labels: {tier: hot}
";

#[test]
fn parses_services_and_volumes_in_write_order() {
    let documents = parse_text(TWO).unwrap();
    let labels: Vec<String> = documents.iter().map(|d| d.resource.label()).collect();
    assert_eq!(labels, ["volume/data", "service/web"]);
    assert_eq!(documents[0].index, 2);
    let Resource::Service(spec) = &documents[1].resource else {
        panic!("not a service")
    };
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(
        spec.workload,
        Workload::Process(warren_api::ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None
        })
    );
    assert_eq!(
        spec.stop_grace_period_ms,
        warren_api::service::DEFAULT_STOP_GRACE_PERIOD_MS
    );
}

/// `registry_auth: SECRET` names the image's registry credentials: a secret reference of
/// its own beside the files.
#[test]
fn registry_auth_becomes_a_secret_reference() {
    let text = "kind: Service\nname: web\nworkload:\n  image:\n    reference: registry.example/web:1\n\
                secrets: [{name: db, target: db}]\nregistry_auth: regcred\n";
    let documents = parse_text(text).unwrap();
    let Resource::Service(spec) = &documents[0].resource else {
        panic!("not a service")
    };
    assert_eq!(
        spec.secrets,
        [SecretRef::new("db"), SecretRef::registry_auth("regcred")]
    );
}

#[test]
fn empty_documents_are_skipped() {
    let documents = parse_text(&format!("---\n{TWO}---\n")).unwrap();
    assert_eq!(documents.len(), 2);
}

/// What `service inspect` prints (the JSON form of a spec) parses back to the same spec.
#[test]
fn inspect_output_round_trips_through_apply() {
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Image(warren_api::ImageSpec {
            reference: "web:1".into(),
            args: vec!["--x".into()],
        }),
    );
    spec.mode = ServiceMode::Global;
    spec.placement.sites = vec!["a".into()];
    spec.placement.constraints = vec!["label.zone!=b".parse().unwrap()];
    spec.env.insert("K".into(), "V".into());
    spec.ports = vec!["http:8080".parse().unwrap()];
    spec.health = Some(HealthCheck::new(warren_api::Probe::Tcp { port: 8080 }));
    spec.on_disconnect = OnDisconnect::Reschedule { after_ms: 60_000 };
    spec.secrets = vec![SecretRef::new("db")];
    spec.volumes = vec![VolumeMount {
        volume: "data".into(),
        target: "data".into(),
        read_only: true,
    }];
    spec.resources.memory_bytes = Some(1 << 30);
    spec.update.parallelism = 3;
    spec.stop_grace_period_ms = 5_000;
    spec.labels.insert("team".into(), "edge".into());
    let minimal = ServiceSpec::new(
        ServiceName::new("api").unwrap(),
        Workload::Process(warren_api::ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    for spec in [spec, minimal] {
        let text = crate::service_cmd::spec_document(&spec).unwrap();
        let documents = parse_text(&text).unwrap();
        let Resource::Service(parsed) = &documents[0].resource else {
            panic!("not a service")
        };
        assert_eq!(**parsed, spec, "{text}");
    }
}

#[test]
fn inspect_documents_are_short() {
    let spec = ServiceSpec::new(
        ServiceName::new("api").unwrap(),
        Workload::Process(warren_api::ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    assert_eq!(
        crate::service_cmd::spec_document(&spec).unwrap(),
        "kind: Service\nname: api\nworkload:\n  process:\n    command:\n    - sleep\n    - '1000'\n\
         mode:\n  replicated:\n    replicas: 1\nrestart:\n  condition: always\n  \
         backoff_initial_ms: 1000\n  backoff_max_ms: 60000\non_disconnect: keep\nupdate:\n  \
         parallelism: 1\n  delay_ms: 0\n  monitor_ms: 5000\n  failure_action: pause\n  \
         max_failure_ratio: 0.0\nstop_grace_period_ms: 10000\n"
    );
}

#[test]
fn yaml_errors_name_file_document_and_line() {
    let text = format!(
        "{TWO}---\nkind: Service\nname: api\nworkload:\n  process:\n    command: [a]\nreplicas: 3\n"
    );
    assert_eq!(
        error_of(&text),
        "deploy.yaml: document 3, line 19: unknown field `replicas`, expected one of `kind`, \
         `name`, `workload`, `mode`, `placement`, `env`, `ports`, `health`, `restart`, \
         `on_disconnect`, `secrets`, `registry_auth`, `volumes`, `resources`, `user`, `group`, \
         `cap_add`, `update`, `stop_grace_period_ms`, `labels`, `metrics`"
    );
    let syntax = error_of("kind: Volume\nname: data\n---\nkind: Volume\nname: [unclosed\n");
    assert!(
        syntax.starts_with("deploy.yaml: document 2, line "),
        "{syntax}"
    );
    assert!(!syntax.contains('\n'), "{syntax}");
    let nested = error_of("kind: Service\nname: web\nworkload:\n  process:\n    comand: [a]\n");
    assert!(
        nested.starts_with(
            "deploy.yaml: document 1, line 5: workload.process: unknown field `comand`"
        ),
        "{nested}"
    );
}

#[test]
fn semantic_errors_name_the_document_and_field() {
    let check = |text: &str, expected: &str| {
        let error = error_of(text);
        assert!(error.contains(expected), "{text}: {error}");
    };
    check("kind: Pod\nname: x\n", "document 1: unknown kind \"Pod\"");
    check("name: x\n", "document 1, line 1: missing field `kind`");
    check(
        "kind: Service\nname: web\nworkload: {process: {command: []}}\n",
        "document 1 (service/web): workload.process.command: must not be empty",
    );
    check(
        "kind: Service\nname: Web\nworkload: {image: {reference: x}}\n",
        "document 1, line 1: name: may contain only lowercase letters",
    );
    check(
        "kind: Volume\nname: data\nsize_limit_bytes: 0\n",
        "(volume/data): size_limit_bytes",
    );
    check(
        "kind: Secret\nname: db\n",
        "give exactly one of `value` or `file`",
    );
    check(
        "kind: Secret\nname: db\nvalue: a\nfile: b\n",
        "give exactly one",
    );
    check("kind: Secret\nname: DB\nvalue: a\n", "(secret/DB): name:");
    check(
        "kind: Volume\nname: a\n---\nkind: Volume\nname: a\n",
        "document 2: volume/a is declared twice",
    );
    check("", "no documents");
    check("kind: Volume\nname: a\nbogus: [\n", "document 1, line");
}

#[test]
fn secrets_from_files_are_relative_to_the_yaml() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw.txt"), b"hunter2").unwrap();
    let documents = parse(
        "d.yaml",
        "kind: Secret\nname: db\nfile: pw.txt\n---\nkind: Secret\nname: tok\nvalue: abc\n",
        dir.path(),
    )
    .unwrap();
    let values: Vec<(&str, &[u8])> = documents
        .iter()
        .map(|d| match &d.resource {
            Resource::Secret { name, value } => (name.as_str(), value.as_slice()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, [("db", &b"hunter2"[..]), ("tok", &b"abc"[..])]);
    assert!(!format!("{documents:?}").contains("hunter2"));
}
