//! `PUT /services/{name}?if_version=N` on a real control node: a write made from what someone
//! read is refused with 409, naming both versions, once the service has changed since; with
//! the right version, or `0` for a service that does not exist yet, it goes through.

use hyper::{Method, StatusCode};
use warren_api::rest::{ServiceInfo, WriteResult};
use warren_api::service::{ProcessSpec, ServiceMode, Workload};
use warren_api::{ServiceName, ServiceSpec};
use warren_control::node::ControlNode;
use warren_tests::{api_get, api_send, start_control};

fn spec(replicas: u32) -> ServiceSpec {
    let mut spec = ServiceSpec::new(
        ServiceName::new("web").unwrap(),
        Workload::Process(ProcessSpec {
            command: vec!["sleep".into(), "1000".into()],
            working_dir: None,
        }),
    );
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

async fn put(control: &ControlNode, spec: &ServiceSpec, query: &str) -> (StatusCode, String) {
    let body = serde_json::to_vec(spec).unwrap();
    let (status, answer) =
        api_send(control, Method::PUT, &format!("/services/web{query}"), body).await;
    (status, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_from_an_old_read_is_refused_with_both_versions() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, _) = start_control(dir.path()).await;

    // Version 0: "only if it does not exist yet".
    let (status, body) = put(&control, &spec(1), "?if_version=0").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created: WriteResult = serde_json::from_str(&body).unwrap();
    assert!(created.created);
    let (status, body) = put(&control, &spec(2), "?if_version=0").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("is at version 1, the write expected it not to exist"),
        "{body}"
    );

    // Two operators read version 1; the first writes, the second is refused.
    let (status, body) = put(&control, &spec(2), "?if_version=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = put(&control, &spec(3), "?if_version=1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("service web is at version 2, the write expected version 1"),
        "{body}"
    );
    // Even a write that would change nothing is refused: the writer's view is out of date.
    let (status, body) = put(&control, &spec(2), "?if_version=1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let info: ServiceInfo = api_get(&control, "/services/web").await;
    assert_eq!(info.version, 2);
    assert_eq!(info.replicas_desired, Some(2));

    // A version that is not a number is bad input, not a conflict.
    let (status, body) = put(&control, &spec(3), "?if_version=two").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("if_version: expected a version number"),
        "{body}"
    );

    // Without the parameter a write goes through as before.
    let (status, body) = put(&control, &spec(3), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    control.shutdown().await;
}
