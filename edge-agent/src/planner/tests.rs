//! Planner cases, table-driven: each builds a view, what the runtime observed and the restart history, plans, and compares the rendered plan with the expected one.

use super::*;
use proptest::prelude::*;
use warren_api::{
    Availability, Node, NodeAddresses, NodeId, NodeRole, NodeState, ProcessSpec, Revision,
    ServiceName, ServiceSpec, Workload,
};

const HERE: NodeId = NodeId(1);
const ELSEWHERE: NodeId = NodeId(2);
const NOW: u64 = 1_000_000;
/// Commands used in the tests; plans print hashes by the command that produced them.
const COMMANDS: [&str; 8] = [
    "web-v1", "web-v2", "db-v1", "db-v2", "job-v1", "job-v2", "old", "other",
];

fn id(text: &str) -> ReplicaId {
    text.parse().expect("test replica ids are well formed")
}

fn spec(name: &str, command: &str) -> ServiceSpec {
    let name = ServiceName::new(name).expect("test service names are DNS labels");
    let process = ProcessSpec {
        command: vec![command.to_owned()],
        working_dir: None,
    };
    ServiceSpec::new(name, Workload::Process(process))
}

/// The workload hash of a spec running `command` (the name is not part of the hash).
fn hash_of(command: &str) -> u64 {
    spec("x", command).workload_hash()
}

fn hash_name(hash: u64) -> String {
    COMMANDS
        .iter()
        .find(|c| hash_of(c) == hash)
        .map_or_else(|| format!("#{hash}"), |c| (*c).to_owned())
}

fn policy(
    condition: RestartCondition,
    initial: u64,
    max: u64,
    attempts: Option<u32>,
) -> RestartPolicy {
    RestartPolicy {
        condition,
        backoff_initial_ms: initial,
        backoff_max_ms: max,
        max_attempts: attempts,
    }
}

/// Service `name` at version 1 running `command`, with the default policy (always, 1 s
/// to 60 s, no limit).
fn service(name: &str, command: &str) -> Service {
    Service {
        version: 1,
        spec: spec(name, command),
    }
}

fn with_policy(mut service: Service, restart: RestartPolicy) -> Service {
    service.spec.restart = restart;
    service
}

/// Replica `replica` on this node, desired running, assigned `command`'s hash at
/// service version 1.
fn replica(replica: &str, command: &str) -> Replica {
    Replica {
        id: id(replica),
        node: HERE,
        service_version: 1,
        workload_hash: hash_of(command),
        desired: DesiredState::Running,
    }
}

fn observed(replica: &str, command: &str, state: ObservedState) -> ObservedWorkload {
    ObservedWorkload {
        replica: id(replica),
        workload_hash: hash_of(command),
        state,
    }
}

fn running(replica: &str, command: &str, since_ms: u64) -> ObservedWorkload {
    observed(replica, command, ObservedState::Running { since_ms })
}

fn exited(replica: &str, command: &str, code: Option<i32>, at_ms: u64) -> ObservedWorkload {
    observed(replica, command, ObservedState::Exited { code, at_ms })
}

fn node() -> Node {
    Node {
        id: HERE,
        name: "edge-1".to_owned(),
        role: NodeRole::Agent,
        site: "site-a".to_owned(),
        labels: BTreeMap::new(),
        availability: Availability::Active,
        state: NodeState::Ready,
        cert_serial: None,
        addresses: NodeAddresses::default(),
        joined_at_ms: 0,
    }
}

fn view(services: &[Service], replicas: &[Replica]) -> NodeView {
    let mut replicas = replicas.to_vec();
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    NodeView {
        revision: Revision(7),
        cluster_id: [0; 32],
        node: node(),
        services: services
            .iter()
            .map(|s| (s.spec.name.clone(), s.clone()))
            .collect(),
        replicas,
        secrets: BTreeMap::new(),
        catalogue: Vec::new(),
        control_addrs: Vec::new(),
        peers: Vec::new(),
        mesh: None,
        scrape: Default::default(),
    }
}

/// One planner input, built up step by step.
#[derive(Clone, Debug)]
struct Case {
    now_ms: u64,
    services: Vec<Service>,
    replicas: Vec<Replica>,
    observed: Vec<ObservedWorkload>,
    health: BTreeMap<ReplicaId, HealthState>,
    book: RestartBook,
}

impl Case {
    fn new() -> Self {
        Case {
            now_ms: NOW,
            services: Vec::new(),
            replicas: Vec::new(),
            observed: Vec::new(),
            health: BTreeMap::new(),
            book: RestartBook::new(),
        }
    }

    fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    fn replica(mut self, replica: Replica) -> Self {
        self.replicas.push(replica);
        self
    }

    fn observe(mut self, workload: ObservedWorkload) -> Self {
        self.observed.push(workload);
        self
    }

    fn health(mut self, replica: &str, health: HealthState) -> Self {
        self.health.insert(id(replica), health);
        self
    }

    /// Lets the driver fold things into the book; `services` are the case's services.
    fn book(mut self, fold: impl FnOnce(&mut RestartBook, &[Service])) -> Self {
        fold(&mut self.book, &self.services);
        self
    }

    fn at(mut self, now_ms: u64) -> Self {
        self.now_ms = now_ms;
        self
    }

    fn run(&self) -> (Plan, RestartBook) {
        let view = view(&self.services, &self.replicas);
        let input = PlanInput {
            now_ms: self.now_ms,
            view: &view,
            observed: &self.observed,
            health: &self.health,
        };
        let mut book = self.book.clone();
        let plan = plan(&input, &mut book);
        (plan, book)
    }
}

/// The plan as text, one line per action, event, state and the wakeup.
fn render(plan: &Plan) -> String {
    let mut lines = Vec::new();
    for action in &plan.actions {
        lines.push(match action {
            Action::Stop {
                replica,
                workload_hash,
                grace_ms,
                reason,
            } => format!(
                "stop {replica} {} grace={grace_ms} {}",
                hash_name(*workload_hash),
                reason.as_str()
            ),
            Action::Adopt {
                replica,
                service,
                workload_hash,
                since_ms,
            } => format!(
                "adopt {replica} {} v{} since={since_ms}",
                hash_name(*workload_hash),
                service.version
            ),
            Action::Restart {
                replica,
                service,
                workload_hash,
                previous_hash,
                reason,
            } => {
                assert_eq!(*workload_hash, service.spec.workload_hash());
                format!(
                    "restart {replica} {}->{} {reason:?}",
                    hash_name(*previous_hash),
                    hash_name(*workload_hash)
                )
            }
            Action::Start {
                replica,
                service,
                workload_hash,
            } => {
                assert_eq!(*workload_hash, service.spec.workload_hash());
                format!("start {replica} {}", hash_name(*workload_hash))
            }
            Action::Wait { replica, until_ms } => format!("wait {replica} until={until_ms}"),
        });
    }
    for event in &plan.events {
        let replica = event
            .replica
            .as_ref()
            .expect("planner events name a replica");
        let kind = event.kind.as_str();
        lines.push(format!(
            "event {replica} {kind} at={}: {}",
            event.at_ms, event.message
        ));
    }
    for (replica, state) in &plan.states {
        lines.push(format!("state {replica} {}", state.as_str()));
    }
    if let Some(wakeup) = plan.next_wakeup_ms {
        lines.push(format!("wakeup {wakeup}"));
    }
    lines.join("\n")
}

fn check(case: Case, expected: &str) {
    let (plan, _) = case.run();
    let got = render(&plan);
    let expected: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(got, expected.join("\n"), "\n--- got:\n{got}\n");
}

/// `web.0` desired with `web-v1`, default policy.
fn web() -> Case {
    Case::new()
        .service(service("web", "web-v1"))
        .replica(replica("web.0", "web-v1"))
}

/// `web.0` as above, started by the driver at `started_ms`.
fn web_started(started_ms: u64) -> Case {
    web().book(|book, services| {
        book.record_started(&id("web.0"), &services[0], hash_of("web-v1"), started_ms);
    })
}

#[test]
fn fresh_replica_is_started() {
    check(
        web(),
        "start web.0 web-v1
         state web.0 starting",
    );
}

#[test]
fn running_workload_the_book_does_not_know_is_adopted() {
    check(
        web().observe(running("web.0", "web-v1", 5_000)),
        "adopt web.0 web-v1 v1 since=5000
         state web.0 running",
    );
}

#[test]
fn running_workload_the_book_knows_is_left_alone() {
    check(
        web_started(5_000).observe(running("web.0", "web-v1", 5_001)),
        "state web.0 running",
    );
}

/// After a reconnect the view moved the replica to service version 2, but the workload
/// hash did not change (only the health check did): adopt, never restart.
#[test]
fn reconnect_with_unchanged_workload_adopts_at_the_new_version() {
    let mut v2 = service("web", "web-v1");
    v2.version = 2;
    let mut replica_v2 = replica("web.0", "web-v1");
    replica_v2.service_version = 2;
    let case = web_started(5_000);
    let case = Case {
        services: vec![v2],
        replicas: vec![replica_v2],
        ..case
    };
    check(
        case.observe(running("web.0", "web-v1", 5_000)),
        "adopt web.0 web-v1 v2 since=5000
         state web.0 running",
    );
}

#[test]
fn starting_and_stopping_workloads_are_left_to_finish() {
    check(
        web().observe(observed("web.0", "web-v1", ObservedState::Starting)),
        "state web.0 starting",
    );
    check(
        web().observe(observed("web.0", "web-v1", ObservedState::Stopping)),
        "state web.0 stopping",
    );
}

/// A spec change that changes the workload: stop the old one, and only once it is gone
/// start the new one.
#[test]
fn changed_workload_is_replaced_stop_first() {
    let v2 = || {
        Case::new()
            .service(service("web", "web-v2"))
            .replica(replica("web.0", "web-v2"))
    };
    check(
        v2().observe(running("web.0", "web-v1", 5_000)),
        "stop web.0 web-v1 grace=10000 replaced
         state web.0 stopping",
    );
    check(
        v2().observe(observed("web.0", "web-v1", ObservedState::Stopping)),
        "state web.0 stopping",
    );
    check(
        v2().observe(exited("web.0", "web-v1", None, NOW - 10)),
        "start web.0 web-v2
         state web.0 starting",
    );
}

/// Rolling update in progress: the view has the v2 spec, but control has not moved this
/// replica yet (it still says v1).
#[test]
fn rollout_pending_keeps_old_and_restarts_from_the_new_spec() {
    let case = || {
        Case::new()
            .service(service("web", "web-v2"))
            .replica(replica("web.0", "web-v1"))
    };
    check(
        case().observe(running("web.0", "web-v1", 5_000)),
        "adopt web.0 web-v1 v1 since=5000
         state web.0 running",
    );
    check(
        case().observe(running("web.0", "web-v2", 5_000)),
        "adopt web.0 web-v2 v1 since=5000
         state web.0 running",
    );
    check(
        case().observe(exited("web.0", "web-v1", Some(1), NOW - 5_000)),
        "restart web.0 web-v1->web-v2 Exited { code: Some(1) }
         event web.0 exited at=995000: exited with code 1; restarting (restart 1)
         state web.0 starting",
    );
}

/// Mid-rollout the replica still says version 1 while the spec is at version 2; a
/// workload started or adopted from the v2 spec is not adopted again on every pass.
#[test]
fn rollout_pending_workload_recorded_at_the_new_version_is_left_alone() {
    let mut v2 = service("web", "web-v2");
    v2.version = 2;
    let case = Case::new()
        .service(v2)
        .replica(replica("web.0", "web-v1"))
        .book(|book, services| {
            book.record_started(&id("web.0"), &services[0], hash_of("web-v2"), 5_000);
        });
    check(
        case.observe(running("web.0", "web-v2", 5_000)),
        "state web.0 running",
    );
}

#[test]
fn duplicate_workloads_of_a_replica_keep_the_assigned_one() {
    check(
        web()
            .observe(running("web.0", "other", 4_000))
            .observe(running("web.0", "web-v1", 5_000))
            .observe(observed("web.0", "old", ObservedState::Stopping))
            .observe(exited("web.0", "web-v1", Some(1), 3_000)),
        "stop web.0 other grace=10000 replaced
         adopt web.0 web-v1 v1 since=5000
         state web.0 running",
    );
}

#[test]
fn workload_no_longer_placed_here_is_stopped() {
    // Removed from the view, service gone too: the default grace period.
    check(
        Case::new().observe(running("db.0", "db-v1", 5_000)),
        "stop db.0 db-v1 grace=10000 removed
         state db.0 stopping",
    );
    // Moved to another node while this one was cut off; the service is still here.
    let mut moved = replica("web.1", "web-v1");
    moved.node = ELSEWHERE;
    let mut slow = service("web", "web-v1");
    slow.spec.stop_grace_period_ms = 30_000;
    check(
        Case::new()
            .service(slow)
            .replica(moved)
            .observe(running("web.1", "web-v1", 5_000)),
        "stop web.1 web-v1 grace=30000 removed
         state web.1 stopping",
    );
    // Set to shut down; a second copy is already stopping and an exited one is let go (its
    // stop cleans it up: held, it would be reported as running).
    let mut shutdown = replica("web.0", "web-v1");
    shutdown.desired = DesiredState::Shutdown;
    check(
        Case::new()
            .service(service("web", "web-v1"))
            .replica(shutdown)
            .observe(observed("web.0", "web-v1", ObservedState::Starting))
            .observe(observed("web.0", "old", ObservedState::Stopping))
            .observe(exited("web.0", "other", Some(0), 1)),
        "stop web.0 web-v1 grace=10000 removed
         stop web.0 other grace=10000 removed
         state web.0 stopping",
    );
    // Removed while waiting out a restart backoff: its exited workload is let go, and it has
    // no state (nothing of it runs).
    check(
        Case::new().observe(exited("db.0", "db-v1", Some(0), 1)),
        "stop db.0 db-v1 grace=10000 removed",
    );
}

/// Found by `prop_plan_is_deterministic`: two live copies of a removed replica must be
/// stopped in the same order whatever order the runtime lists them in.
#[test]
fn stops_do_not_depend_on_listing_order() {
    let a = observed("db.2", "db-v1", ObservedState::Starting);
    let b = observed("db.2", "other", ObservedState::Starting);
    // Stops of one replica come in workload-hash order.
    let (first, second) = if hash_of("db-v1") < hash_of("other") {
        ("db-v1", "other")
    } else {
        ("other", "db-v1")
    };
    let expected = format!(
        "stop db.2 {first} grace=10000 removed
         stop db.2 {second} grace=10000 removed
         state db.2 stopping"
    );
    check(Case::new().observe(a.clone()).observe(b.clone()), &expected);
    check(Case::new().observe(b).observe(a), &expected);
}

/// The book remembers the grace period of a workload whose service left the view.
#[test]
fn removed_service_is_stopped_with_its_recorded_grace() {
    let mut slow = service("db", "db-v1");
    slow.spec.stop_grace_period_ms = 120_000;
    let case = Case::new().book(|book, _| {
        book.record_started(&id("db.0"), &slow, hash_of("db-v1"), 5_000);
    });
    check(
        case.observe(running("db.0", "db-v1", 5_000)),
        "stop db.0 db-v1 grace=120000 removed
         state db.0 stopping",
    );
}

#[test]
fn exit_waits_out_the_backoff() {
    check(
        web_started(NOW - 2_000).observe(exited("web.0", "web-v1", Some(1), NOW - 500)),
        "wait web.0 until=1000500
         event web.0 exited at=999500: exited with code 1; restarting in 1s (restart 1)
         state web.0 failed
         wakeup 1000500",
    );
}

#[test]
fn exit_restarts_once_the_backoff_has_passed() {
    check(
        web_started(NOW - 5_000).observe(exited("web.0", "web-v1", None, NOW - 1_000)),
        "restart web.0 web-v1->web-v1 Exited { code: None }
         event web.0 exited at=999000: exited by a signal; restarting (restart 1)
         state web.0 starting",
    );
}

/// Failures in a row double the backoff: 1 s, 2 s, 4 s, … up to 60 s.
#[test]
fn consecutive_failures_double_the_backoff() {
    let case = web().book(|book, services| {
        let web = &services[0];
        let hash = hash_of("web-v1");
        for n in 0..3 {
            let start = 100_000 * (n + 1);
            book.record_started(&id("web.0"), web, hash, start);
            book.record_exited(&id("web.0"), web, hash, Some(1), start + 100);
        }
        book.record_started(&id("web.0"), web, hash, NOW - 1_000);
    });
    check(
        case.observe(exited("web.0", "web-v1", Some(1), NOW - 100)),
        "wait web.0 until=1007900
         event web.0 exited at=999900: exited with code 1; restarting in 8s (restart 4)
         state web.0 failed
         wakeup 1007900",
    );
}

/// A run at least as long as the stability window (max(60 s backoff ceiling, 10 s))
/// resets the count; a shorter one does not.
#[test]
fn stable_run_resets_the_backoff() {
    let case = |run_ms: u64| {
        web().book(|book, services| {
            let web = &services[0];
            let hash = hash_of("web-v1");
            for n in 0..5 {
                let start = 1_000 * (n + 1);
                book.record_started(&id("web.0"), web, hash, start);
                book.record_exited(&id("web.0"), web, hash, Some(1), start + 100);
            }
            book.record_started(&id("web.0"), web, hash, NOW - 100 - run_ms);
        })
    };
    check(
        case(60_000).observe(exited("web.0", "web-v1", Some(1), NOW - 100)),
        "wait web.0 until=1000900
         event web.0 exited at=999900: exited with code 1; restarting in 1s (restart 1)
         state web.0 failed
         wakeup 1000900",
    );
    check(
        case(59_999).observe(exited("web.0", "web-v1", Some(1), NOW - 100)),
        "wait web.0 until=1031900
         event web.0 exited at=999900: exited with code 1; restarting in 32s (restart 6)
         state web.0 failed
         wakeup 1031900",
    );
}

#[test]
fn restart_conditions() {
    let case = |condition, code| {
        let web = with_policy(service("web", "web-v1"), policy(condition, 0, 0, None));
        Case::new()
            .service(web)
            .replica(replica("web.0", "web-v1"))
            .observe(exited("web.0", "web-v1", code, NOW))
    };
    check(
        case(RestartCondition::OnFailure, Some(0)),
        "event web.0 exited at=1000000: exited with code 0; not restarting (restart policy on-failure): completed
         state web.0 completed",
    );
    check(
        case(RestartCondition::OnFailure, None),
        "restart web.0 web-v1->web-v1 Exited { code: None }
         event web.0 exited at=1000000: exited by a signal; restarting (restart 1)
         state web.0 starting",
    );
    check(
        case(RestartCondition::Always, Some(0)),
        "restart web.0 web-v1->web-v1 Exited { code: Some(0) }
         event web.0 exited at=1000000: exited with code 0; restarting (restart 1)
         state web.0 starting",
    );
    check(
        case(RestartCondition::Never, Some(0)),
        "event web.0 exited at=1000000: exited with code 0; not restarting (restart policy never): completed
         state web.0 completed",
    );
    check(
        case(RestartCondition::Never, Some(3)),
        "event web.0 exited at=1000000: exited with code 3; not restarting (restart policy never): failed
         state web.0 failed",
    );
}

/// `max_attempts: 2`: restarts 1 and 2 happen, failure 3 gives up.
#[test]
fn max_attempts_gives_up_and_says_so_once() {
    let limited = policy(RestartCondition::Always, 1_000, 60_000, Some(2));
    let case = Case::new()
        .service(with_policy(service("web", "web-v1"), limited))
        .replica(replica("web.0", "web-v1"))
        .book(|book, services| {
            let hash = hash_of("web-v1");
            for n in 0..2 {
                let start = 1_000 * (n + 1);
                book.record_started(&id("web.0"), &services[0], hash, start);
                book.record_exited(&id("web.0"), &services[0], hash, Some(1), start + 10);
            }
            book.record_started(&id("web.0"), &services[0], hash, NOW - 100);
        })
        .observe(exited("web.0", "web-v1", Some(1), NOW - 50));
    check(
        case.clone(),
        "event web.0 exited at=999950: exited with code 1; restarts exhausted
         event web.0 restarts_exhausted at=1000000: not restarting: 2 restarts in a row reached max_attempts 2
         state web.0 failed",
    );
    let (_, book) = case.run();
    check(
        Case {
            book,
            ..case.clone()
        }
        .at(NOW + 60_000),
        "state web.0 failed",
    );
    // Raising the limit in a spec update (same workload) revives it.
    let (_, book) = case.run();
    let raised = policy(RestartCondition::Always, 1_000, 60_000, Some(5));
    check(
        Case {
            book,
            services: vec![with_policy(service("web", "web-v1"), raised)],
            ..case
        },
        "wait web.0 until=1003950
         state web.0 failed
         wakeup 1003950",
    );
}

#[test]
fn exits_are_reported_once() {
    let case = web_started(NOW - 2_000).observe(exited("web.0", "web-v1", Some(1), NOW - 500));
    let (first, book) = case.run();
    assert_eq!(first.events.len(), 1);
    let (second, book_after) = Case {
        book: book.clone(),
        ..case
    }
    .run();
    assert!(second.events.is_empty(), "{second:?}");
    assert_eq!(second.actions, first.actions);
    assert_eq!(book_after, book);
}

#[test]
fn unhealthy_workload_is_restarted_by_policy() {
    check(
        web_started(5_000)
            .observe(running("web.0", "web-v1", 5_000))
            .health("web.0", HealthState::Unhealthy),
        "restart web.0 web-v1->web-v1 Unhealthy
         state web.0 starting",
    );
    check(
        web_started(5_000)
            .observe(running("web.0", "web-v1", 5_000))
            .health("web.0", HealthState::Healthy),
        "state web.0 running",
    );
    let never = policy(RestartCondition::Never, 1_000, 60_000, None);
    check(
        Case::new()
            .service(with_policy(service("web", "web-v1"), never))
            .replica(replica("web.0", "web-v1"))
            .observe(running("web.0", "web-v1", 5_000))
            .health("web.0", HealthState::Unhealthy),
        "adopt web.0 web-v1 v1 since=5000
         state web.0 unhealthy",
    );
}

#[test]
fn unhealthy_with_restarts_exhausted_is_left_running_and_reported_once() {
    let none_left = policy(RestartCondition::Always, 1_000, 60_000, Some(0));
    let case = Case::new()
        .service(with_policy(service("web", "web-v1"), none_left))
        .replica(replica("web.0", "web-v1"))
        .book(|book, services| {
            book.record_started(&id("web.0"), &services[0], hash_of("web-v1"), 5_000);
        })
        .observe(running("web.0", "web-v1", 5_000))
        .health("web.0", HealthState::Unhealthy);
    check(
        case.clone(),
        "event web.0 restarts_exhausted at=1000000: unhealthy, left running; not restarting: 0 restarts in a row reached max_attempts 0
         state web.0 unhealthy",
    );
    let (_, book) = case.run();
    check(Case { book, ..case }, "state web.0 unhealthy");
}

#[test]
fn failed_start_backs_off_then_starts_again() {
    let case = web().book(|book, services| {
        book.record_start_failed(
            &id("web.0"),
            &services[0],
            hash_of("web-v1"),
            NOW - 200,
            "image pull failed",
        );
    });
    check(
        case.clone(),
        "wait web.0 until=1000800
         state web.0 failed
         wakeup 1000800",
    );
    check(
        case.at(NOW + 800),
        "start web.0 web-v1
         state web.0 starting",
    );
}

/// The box rebooted: the book says web.0 ran, the runtime has nothing. Start it at once.
#[test]
fn vanished_workload_is_started_without_backoff() {
    check(
        web_started(NOW - 100),
        "start web.0 web-v1
         state web.0 starting",
    );
}

#[test]
fn replica_without_spec_is_left_alone() {
    check(
        Case::new()
            .replica(replica("web.0", "web-v1"))
            .observe(running("web.0", "web-v1", 5_000)),
        "state web.0 running",
    );
    check(Case::new().replica(replica("web.0", "web-v1")), "");
}

#[test]
fn stops_come_before_starts() {
    check(
        Case::new()
            .service(service("web", "web-v1"))
            .replica(replica("web.0", "web-v1"))
            .observe(running("db.0", "db-v1", 1))
            .observe(running("web.1", "web-v1", 1)),
        "stop db.0 db-v1 grace=10000 removed
         stop web.1 web-v1 grace=10000 removed
         start web.0 web-v1
         state db.0 stopping
         state web.0 starting
         state web.1 stopping",
    );
}

#[test]
fn records_of_replicas_gone_from_view_and_runtime_are_dropped() {
    let case = web().book(|book, services| {
        book.record_started(&id("web.7"), &services[0], hash_of("web-v1"), 5);
        book.record_started(&id("web.0"), &services[0], hash_of("web-v1"), 5);
    });
    let (_, book) = case.observe(running("web.0", "web-v1", 5)).run();
    let ids: Vec<String> = book.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(ids, ["web.0"]);
}

#[test]
fn book_records_what_the_driver_did() {
    let web = service("web", "web-v1");
    let hash = hash_of("web-v1");
    let web0 = id("web.0");
    let mut book = RestartBook::new();
    let started = book.record_started(&web0, &web, hash, 1_000);
    assert_eq!(started.kind, EventKind::Started);
    assert!(book.record_exited(&web0, &web, hash, Some(2), 1_500));
    assert!(
        !book.record_exited(&web0, &web, hash, Some(2), 1_500),
        "idempotent"
    );
    assert!(
        !book.record_exited(&web0, &web, hash, Some(2), 1_200),
        "older exit"
    );
    let record = book.get(&web0).expect("recorded");
    assert_eq!(record.consecutive_failures, 1);
    assert_eq!(record.next_start_at_ms, Some(2_500));
    let restarted = book.record_started(&web0, &web, hash, 2_500);
    assert_eq!(restarted.kind, EventKind::Restarted);
    assert_eq!(
        restarted.message,
        "restarted (restart 1; last run exited with code 2)"
    );
    assert_eq!(book.get(&web0).map(|r| r.restarts), Some(1));
    // A new workload hash starts a new history.
    let v2 = service("web", "web-v2");
    let event = book.record_started(&web0, &v2, hash_of("web-v2"), 3_000);
    assert_eq!(event.kind, EventKind::Started);
    assert_eq!(book.get(&web0).map(|r| r.consecutive_failures), Some(0));
    // Stopping another hash leaves the record; stopping this one drops it.
    let stopped = book.record_stopped(&web0, hash, StopReason::Replaced, 3_100);
    assert_eq!(stopped.kind, EventKind::Stopped);
    assert_eq!(book.len(), 1);
    book.record_stopped(&web0, hash_of("web-v2"), StopReason::Removed, 3_200);
    assert!(book.is_empty());
    let adopted = book.record_adopted(&web0, &v2, hash_of("web-v2"), 10, 3_300);
    assert_eq!(adopted.kind, EventKind::Adopted);
    assert_eq!(
        book.get(&web0).and_then(|r| r.run),
        Some(RunRecord {
            service_version: 1,
            started_at_ms: 10
        })
    );
}

#[test]
fn book_round_trips_through_json() {
    let web = service("web", "web-v1");
    let mut book = RestartBook::new();
    book.record_started(&id("web.0"), &web, hash_of("web-v1"), 1_000);
    book.record_exited(&id("web.0"), &web, hash_of("web-v1"), None, 1_500);
    book.record_start_failed(&id("web.1"), &web, hash_of("web-v1"), 1_600, "no");
    let json = serde_json::to_string(&book).expect("encode");
    let back: RestartBook = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, book);
}

#[test]
fn backoff_table() {
    let p = policy(RestartCondition::Always, 1_000, 60_000, None);
    let delays: Vec<u64> = (0..9).map(|n| backoff_delay_ms(&p, n)).collect();
    assert_eq!(
        delays,
        [
            0, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000
        ]
    );
    assert_eq!(backoff_delay_ms(&p, u32::MAX), 60_000);
    assert_eq!(stable_run_ms(&p), 60_000);
    let short = policy(RestartCondition::Always, 100, 1_000, None);
    assert_eq!(stable_run_ms(&short), STABLE_RUN_MIN_MS);
}

/// A failed start is retried even with `never`: the workload has not had its run.
#[test]
fn failed_start_is_retried_even_with_restart_never() {
    let never = policy(RestartCondition::Never, 1_000, 60_000, None);
    check(
        Case::new()
            .service(with_policy(service("job", "job-v1"), never))
            .replica(replica("job.0", "job-v1"))
            .book(|book, services| {
                let hash = hash_of("job-v1");
                book.record_start_failed(&id("job.0"), &services[0], hash, NOW - 5_000, "no");
            }),
        "start job.0 job-v1
         state job.0 starting",
    );
}

// ---- property tests ----

const NAMES: [&str; 3] = ["web", "db", "job"];

/// For service `name`: its v1 or v2 command's hash, or an unrelated one.
fn hash_choice(name: &str, choice: u8) -> u64 {
    match choice {
        0 => hash_of(&format!("{name}-v1")),
        1 => hash_of(&format!("{name}-v2")),
        _ => hash_of("other"),
    }
}

fn replica_id(service: usize, slot: u32) -> ReplicaId {
    let name = ServiceName::new(NAMES[service]).expect("fixed names are DNS labels");
    ReplicaId::replicated(name, slot)
}

fn arb_policy() -> impl Strategy<Value = RestartPolicy> {
    let conditions = [
        RestartCondition::Always,
        RestartCondition::OnFailure,
        RestartCondition::Never,
    ];
    (
        proptest::sample::select(conditions.to_vec()),
        0_u64..5_000,
        0_u64..70_000,
        proptest::option::of(0_u32..4),
    )
        .prop_map(|(condition, initial, max, attempts)| policy(condition, initial, max, attempts))
}

/// Around `NOW`, a little in the future too (clocks are not perfect).
fn arb_time() -> impl Strategy<Value = u64> {
    (NOW - 200_000)..=(NOW + 1_000)
}

fn arb_observed_state() -> impl Strategy<Value = ObservedState> {
    prop_oneof![
        Just(ObservedState::Starting),
        arb_time().prop_map(|since_ms| ObservedState::Running { since_ms }),
        (proptest::option::of(-1_i32..3), arb_time())
            .prop_map(|(code, at_ms)| ObservedState::Exited { code, at_ms }),
        Just(ObservedState::Stopping),
    ]
}

/// Any record, consistent or not: the planner must cope with a book from an older agent.
fn arb_record(name: &'static str) -> impl Strategy<Value = RestartRecord> {
    let exit = (proptest::option::of(-1_i32..3), arb_time(), any::<bool>()).prop_map(
        |(code, at_ms, start_failed)| ExitRecord {
            code,
            at_ms,
            start_failed,
        },
    );
    let run = (1_u64..4, arb_time()).prop_map(|(service_version, started_at_ms)| RunRecord {
        service_version,
        started_at_ms,
    });
    (
        0_u8..3,
        proptest::option::of(run),
        0_u32..6,
        proptest::option::of(exit),
        proptest::option::of(arb_time()),
        0_u64..60_000,
        0_u8..3,
        proptest::option::of(arb_time()),
    )
        .prop_map(
            move |(hash, run, failures, last_exit, next, grace, reported, unhealthy)| {
                let reported_exit_ms = match reported {
                    0 => None,
                    1 => last_exit.map(|e| e.at_ms),
                    _ => next,
                };
                RestartRecord {
                    workload_hash: hash_choice(name, hash),
                    run,
                    consecutive_failures: failures,
                    restarts: failures,
                    last_exit,
                    next_start_at_ms: next,
                    stop_grace_period_ms: grace,
                    reported_exit_ms,
                    reported_unhealthy_ms: unhealthy,
                }
            },
        )
}

/// Everything the planner reads.
#[derive(Clone, Debug)]
struct World {
    now_ms: u64,
    view: NodeView,
    observed: Vec<ObservedWorkload>,
    health: BTreeMap<ReplicaId, HealthState>,
    book: RestartBook,
}

impl World {
    fn run(&self) -> (Plan, RestartBook) {
        let input = PlanInput {
            now_ms: self.now_ms,
            view: &self.view,
            observed: &self.observed,
            health: &self.health,
        };
        let mut book = self.book.clone();
        let plan = plan(&input, &mut book);
        (plan, book)
    }

    fn desired(&self) -> impl Iterator<Item = &Replica> {
        self.view
            .replicas
            .iter()
            .filter(|r| r.node == HERE && r.desired == DesiredState::Running)
    }
}

type ServiceChoice = Option<(u64, u8, RestartPolicy, u64)>;
type ReplicaChoice = Option<(bool, bool, u8, u64)>;

fn build_view(services: Vec<ServiceChoice>, replicas: Vec<ReplicaChoice>) -> NodeView {
    let services: Vec<Service> = services
        .into_iter()
        .enumerate()
        .filter_map(|(i, choice)| {
            let (version, command, restart, grace) = choice?;
            let mut service = service(NAMES[i], &format!("{}-v{}", NAMES[i], command + 1));
            service.version = version;
            service.spec.restart = restart;
            service.spec.stop_grace_period_ms = grace;
            Some(service)
        })
        .collect();
    let replicas: Vec<Replica> = replicas
        .into_iter()
        .enumerate()
        .filter_map(|(i, choice)| {
            let (here, running, hash, version) = choice?;
            let id = replica_id(i / 3, (i % 3) as u32);
            Some(Replica {
                workload_hash: hash_choice(NAMES[i / 3], hash),
                node: if here { HERE } else { ELSEWHERE },
                desired: if running {
                    DesiredState::Running
                } else {
                    DesiredState::Shutdown
                },
                service_version: version,
                id,
            })
        })
        .collect();
    view(&services, &replicas)
}

fn arb_world() -> impl Strategy<Value = World> {
    let services = proptest::collection::vec(
        proptest::option::weighted(0.85, (1_u64..4, 0_u8..2, arb_policy(), 0_u64..60_000)),
        3,
    );
    let replicas = proptest::collection::vec(
        proptest::option::weighted(
            0.7,
            (
                proptest::bool::weighted(0.85),
                proptest::bool::weighted(0.85),
                0_u8..3,
                1_u64..4,
            ),
        ),
        9,
    );
    let observed =
        proptest::collection::vec((0_usize..3, 0_u32..3, 0_u8..3, arb_observed_state()), 0..12);
    let health = proptest::collection::vec(0_u8..3, 9);
    let records = proptest::collection::vec(
        (0_usize..3, 0_u32..3).prop_flat_map(|(service, slot)| {
            (Just(replica_id(service, slot)), arb_record(NAMES[service]))
        }),
        0..8,
    );
    let now = NOW..NOW + 70_000;
    (services, replicas, observed, health, records, now).prop_map(
        |(services, replicas, observed, health, records, now_ms)| World {
            now_ms,
            view: build_view(services, replicas),
            observed: observed
                .into_iter()
                .map(|(service, slot, hash, state)| ObservedWorkload {
                    replica: replica_id(service, slot),
                    workload_hash: hash_choice(NAMES[service], hash),
                    state,
                })
                .collect(),
            health: health
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    let health = [
                        HealthState::Unknown,
                        HealthState::Healthy,
                        HealthState::Unhealthy,
                    ][usize::from(h)];
                    (replica_id(i / 3, (i % 3) as u32), health)
                })
                .collect(),
            book: RestartBook {
                records: records.into_iter().collect(),
            },
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// THE invariant: a workload that is desired here, runs with the assigned hash and is
    /// not unhealthy is never stopped, restarted or started again.
    #[test]
    fn prop_running_desired_workload_is_never_disturbed(world in arb_world()) {
        let (plan, _) = world.run();
        for replica in world.desired() {
            let unhealthy = world.health.get(&replica.id) == Some(&HealthState::Unhealthy);
            let keeps = world.observed.iter().any(|w| {
                w.replica == replica.id
                    && w.workload_hash == replica.workload_hash
                    && matches!(w.state, ObservedState::Running { .. })
            });
            if !keeps || unhealthy {
                continue;
            }
            for action in plan.actions_for(&replica.id) {
                let disturbs = match action {
                    Action::Stop { workload_hash, .. } => *workload_hash == replica.workload_hash,
                    Action::Start { .. } | Action::Restart { .. } => true,
                    Action::Adopt { workload_hash, .. } => *workload_hash != replica.workload_hash,
                    Action::Wait { .. } => true,
                };
                prop_assert!(!disturbs, "{} disturbed by {action:?}", replica.id);
            }
        }
    }

    /// Same input, same plan and book — whatever the order of the observed workloads.
    #[test]
    fn prop_plan_is_deterministic(world in arb_world(), rotate in any::<usize>()) {
        let (first, first_book) = world.run();
        let (second, second_book) = world.run();
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(&first_book, &second_book);
        let mut shuffled = world.clone();
        if !shuffled.observed.is_empty() {
            let n = shuffled.observed.len();
            shuffled.observed.rotate_left(rotate % n);
            shuffled.observed.reverse();
        }
        let (third, third_book) = shuffled.run();
        prop_assert_eq!(&first, &third);
        prop_assert_eq!(&first_book, &third_book);
    }

    /// Planning again with nothing new: the same actions and states, no event repeated,
    /// and the book does not move.
    #[test]
    fn prop_replanning_without_news_is_quiet(world in arb_world()) {
        let (first, book) = world.run();
        let again = World { book: book.clone(), ..world };
        let (second, second_book) = again.run();
        prop_assert!(second.events.is_empty(), "repeated: {:?}", second.events);
        prop_assert_eq!(&second.actions, &first.actions);
        prop_assert_eq!(&second.states, &first.states);
        prop_assert_eq!(&second_book, &book);
    }

    /// Every desired replica with nothing alive gets exactly one of start, restart or
    /// wait — or stays completed/failed with its exit reported (in this plan if not
    /// before). No replica ever gets two of start/restart/wait/adopt.
    #[test]
    fn prop_every_desired_replica_gets_one_disposition(world in arb_world()) {
        let (plan, book) = world.run();
        for action in &plan.actions {
            let n = plan
                .actions_for(action.replica())
                .filter(|a| !matches!(a, Action::Stop { .. }))
                .count();
            prop_assert!(n <= 1, "{}: {:?}", action.replica(), plan.actions);
        }
        for replica in world.desired() {
            let id = &replica.id;
            if !world.view.services.contains_key(&id.service)
                || world.observed.iter().any(|w| &w.replica == id && w.state.is_live())
            {
                continue;
            }
            let actions: Vec<&Action> = plan.actions_for(id).collect();
            let state = plan.states.get(id).copied();
            match actions.as_slice() {
                [Action::Start { .. } | Action::Restart { .. }] => {
                    prop_assert_eq!(state, Some(TaskState::Starting));
                }
                [Action::Wait { until_ms, .. }] => {
                    prop_assert!(*until_ms > world.now_ms);
                    prop_assert_eq!(state, Some(TaskState::Failed));
                }
                [] => {
                    prop_assert!(
                        matches!(state, Some(TaskState::Completed | TaskState::Failed)),
                        "{id}: {state:?}"
                    );
                    let record = book.get(id).expect("a settled replica has a record");
                    let exit = record.last_exit.expect("a settled replica has exited");
                    prop_assert_eq!(record.reported_exit_ms, Some(exit.at_ms));
                    let reported_before = world
                        .book
                        .get(id)
                        .and_then(|r| r.reported_exit_ms)
                        == Some(exit.at_ms);
                    let reported_now = plan.events.iter().any(|e| e.replica.as_ref() == Some(id));
                    prop_assert!(reported_before || reported_now, "{id} settled silently");
                }
                other => prop_assert!(false, "{id}: {other:?}"),
            }
        }
    }

    /// Every starting, running or exited workload of a replica not desired here gets exactly
    /// one stop (per workload hash), and nothing else happens to such replicas.
    #[test]
    fn prop_undesired_workloads_are_stopped(world in arb_world()) {
        let (plan, _) = world.run();
        let desired: BTreeSet<&ReplicaId> = world.desired().map(|r| &r.id).collect();
        for workload in &world.observed {
            if desired.contains(&workload.replica) {
                continue;
            }
            let stops = plan
                .actions
                .iter()
                .filter(|a| matches!(a,
                    Action::Stop { replica, workload_hash, reason: StopReason::Removed, .. }
                        if *replica == workload.replica
                            && *workload_hash == workload.workload_hash))
                .count();
            // Running or starting: stopped. Exited: let go (its stop cleans up). Stopping:
            // left to finish.
            let handled = world.observed.iter().any(|w| {
                w.replica == workload.replica
                    && w.workload_hash == workload.workload_hash
                    && (w.state.is_stoppable() || !w.state.is_live())
            });
            prop_assert_eq!(stops, usize::from(handled), "{:?}", workload);
        }
        for action in &plan.actions {
            if !desired.contains(action.replica()) {
                let is_removal =
                    matches!(action, Action::Stop { reason: StopReason::Removed, .. });
                prop_assert!(is_removal, "{action:?}");
            }
        }
    }

    /// Adoption converges: once the driver has recorded the adoptions a plan asked for,
    /// the next plan asks for none.
    #[test]
    fn prop_adoption_converges(world in arb_world()) {
        let (plan, mut book) = world.run();
        for action in &plan.actions {
            if let Action::Adopt { replica, service, workload_hash, since_ms } = action {
                book.record_adopted(replica, service, *workload_hash, *since_ms, world.now_ms);
            }
        }
        let again = World { book, ..world };
        let (second, _) = again.run();
        let adopts: Vec<&Action> = second
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Adopt { .. }))
            .collect();
        prop_assert!(adopts.is_empty(), "{adopts:?}");
    }

    /// Structural: stops first, starts carry the spec's hash, the wakeup is the earliest
    /// wait.
    #[test]
    fn prop_plan_is_well_formed(world in arb_world()) {
        let (plan, _) = world.run();
        let phases: Vec<u8> = plan.actions.iter().map(Action::phase).collect();
        prop_assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
        for action in &plan.actions {
            if let Action::Start { service, workload_hash, .. }
            | Action::Restart { service, workload_hash, .. } = action
            {
                prop_assert_eq!(*workload_hash, service.spec.workload_hash());
            }
        }
        let earliest = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Wait { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min();
        prop_assert_eq!(plan.next_wakeup_ms, earliest);
    }

    /// Backoff never exceeds `backoff_max_ms` and never shrinks as failures add up — as a
    /// function, and through the book for a workload that keeps crashing before the
    /// stability window.
    #[test]
    fn prop_backoff_is_bounded_and_monotonic(
        restart in arb_policy(),
        runs in proptest::collection::vec(0_u64..STABLE_RUN_MIN_MS, 1..40),
    ) {
        let mut previous = 0;
        for n in 1..=80 {
            let delay = backoff_delay_ms(&restart, n);
            prop_assert!(delay <= restart.backoff_max_ms);
            prop_assert!(delay >= previous);
            previous = delay;
        }
        prop_assert_eq!(
            backoff_delay_ms(&restart, 1),
            restart.backoff_initial_ms.min(restart.backoff_max_ms)
        );
        let web = with_policy(service("web", "web-v1"), restart.clone());
        let (web0, hash) = (id("web.0"), hash_of("web-v1"));
        let mut book = RestartBook::new();
        let mut t = 1_000;
        let mut previous = 0;
        for (n, run_ms) in runs.iter().enumerate() {
            book.record_started(&web0, &web, hash, t);
            t += run_ms;
            prop_assert!(book.record_exited(&web0, &web, hash, Some(1), t));
            let record = book.get(&web0).expect("recorded");
            let next = record.next_start_at_ms.expect("backoff fixed at the exit");
            let delay = next - t;
            prop_assert_eq!(record.consecutive_failures as usize, n + 1);
            prop_assert!(delay <= restart.backoff_max_ms);
            prop_assert!(delay >= previous);
            previous = delay;
            t = next;
        }
    }
}

/// One step of the agent's life with one replica, for the model test below.
#[derive(Clone, Debug)]
enum Step {
    /// Time passes.
    Advance(u64),
    /// The workload dies (crash, OOM, kill -9) with this exit code.
    Kill(Option<i32>),
    /// The view places the replica here, or takes it away (`service rm`, scale down, moved).
    Desired(bool),
    /// The service's command changes (a new version).
    Update,
    /// A reconcile pass: plan, then carry the actions out on the runtime.
    Pass,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0_u64..4_000).prop_map(Step::Advance),
        2 => proptest::option::of(0_i32..3).prop_map(Step::Kill),
        1 => any::<bool>().prop_map(Step::Desired),
        1 => Just(Step::Update),
        4 => Just(Step::Pass),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The status the agent reports follows the runtime through every stop, restart,
    /// backoff and removal: a replica is reported running only while its workload is alive,
    /// and a replica no longer placed here leaves no workload behind. The driver below does
    /// what the reconciler does: one workload per replica, the book folded as it folds it,
    /// and a held workload the plan gives no state reported as running.
    #[test]
    fn prop_reported_running_means_a_live_workload(steps in proptest::collection::vec(arb_step(), 1..60)) {
        let replica_id = id("web.1");
        let mut now = NOW;
        let mut desired = true;
        let mut version = 1;
        let mut command = "web-v1";
        // The runtime: the replica's one workload, if it holds one.
        let mut held: Option<ObservedWorkload> = None;
        let mut book = RestartBook::new();
        for step in steps {
            match step {
                Step::Advance(ms) => now += ms,
                Step::Kill(code) => {
                    if let Some(w) = held.as_mut().filter(|w| w.state.is_live()) {
                        w.state = ObservedState::Exited { code, at_ms: now };
                    }
                }
                Step::Desired(on) => desired = on,
                Step::Update => {
                    version += 1;
                    command = if command == "web-v1" { "web-v2" } else { "web-v1" };
                }
                Step::Pass => {
                    let mut web = service("web", command);
                    web.version = version;
                    let mut placed = replica("web.1", command);
                    placed.service_version = version;
                    let view = if desired { view(&[web], &[placed]) } else { view(&[web], &[]) };
                    let observed: Vec<ObservedWorkload> = held.iter().cloned().collect();
                    let input = PlanInput {
                        now_ms: now,
                        view: &view,
                        observed: &observed,
                        health: &BTreeMap::new(),
                    };
                    let plan = plan(&input, &mut book);
                    for action in &plan.actions {
                        match action {
                            Action::Stop { replica, workload_hash, reason, .. } => {
                                held = None;
                                book.record_stopped(replica, *workload_hash, *reason, now);
                            }
                            Action::Adopt { replica, service, workload_hash, since_ms } => {
                                book.record_adopted(replica, service, *workload_hash, *since_ms, now);
                            }
                            Action::Start { replica, service, workload_hash }
                            | Action::Restart { replica, service, workload_hash, .. } => {
                                held = Some(ObservedWorkload {
                                    replica: replica.clone(),
                                    workload_hash: *workload_hash,
                                    state: ObservedState::Running { since_ms: now },
                                });
                                book.record_started(replica, service, *workload_hash, now);
                            }
                            Action::Wait { .. } => {}
                        }
                    }
                    let reported = plan
                        .states
                        .get(&replica_id)
                        .copied()
                        .or(held.as_ref().map(|_| TaskState::Running));
                    let live = held.as_ref().is_some_and(|w| w.state.is_live());
                    prop_assert!(
                        reported != Some(TaskState::Running) || live,
                        "reported running with no live workload: {held:?}, plan {plan:?}"
                    );
                    prop_assert!(
                        desired || held.as_ref().is_none_or(|w| w.state.is_live()),
                        "a replica no longer placed here left its exited workload held: {held:?}"
                    );
                }
            }
        }
    }
}
