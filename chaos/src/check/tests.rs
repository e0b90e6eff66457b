//! The invariants over hand-made records and histories: a stop during a partition, a restart
//! after a heal, lost and surviving writes, removed nodes, revisions and convergence bounds.

use super::*;
use crate::observe::Workload;
use crate::record::{Kill, Window, WriteRecord};
use crate::scenario::Write;

fn workload(node: &str, replica: &str, pid: u32, seen: u64, died: Option<u64>) -> Workload {
    let json = serde_json::json!({
        "node": node, "replica": replica,
        "service": replica.split('.').next().unwrap_or(replica),
        "pid": pid, "first_seen_ms": seen, "last_alive_ms": died.unwrap_or(seen),
        "died_ms": died,
    });
    serde_json::from_value(json).expect("workload")
}

fn write(step: &str, sent: u64, write: Write, acked: bool) -> WriteRecord {
    WriteRecord {
        step: step.into(),
        sent_ms: sent,
        done_ms: sent + 50,
        write,
        acked,
        command: "…".into(),
        expected_failure: false,
    }
}

fn window(from: u64, to: Option<u64>) -> Window {
    Window {
        fault: "cut site b off".into(),
        from_ms: from,
        to_ms: to,
        network: true,
    }
}

fn verdict(results: &[InvariantResult], name: &str) -> Verdict {
    results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .verdict
}

fn end(services: &[(&str, Option<u32>)], nodes: &[&str]) -> FinalState {
    FinalState {
        services: Some(
            services
                .iter()
                .map(|(n, r)| ((*n).to_owned(), *r))
                .collect(),
        ),
        nodes: Some(nodes.iter().map(|n| (*n).to_owned()).collect()),
    }
}

#[test]
fn a_stop_during_a_partition_fails_and_one_the_scenario_caused_does_not() {
    let mut record = Record {
        windows: vec![window(1_000, Some(5_000))],
        ..Record::default()
    };
    let mut history = History {
        workloads: vec![
            workload("b-1", "web.1", 10, 500, None),
            workload("b-1", "web.2", 11, 500, Some(2_000)),
        ],
        ..History::default()
    };
    let (results, figures) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
    assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
    assert_eq!(figures.interruptions, 1);
    // The same stop, caused by a kill of that pid: explained.
    record.kills.push(Kill {
        node: "b-1".into(),
        replica: "web.2".into(),
        pid: 11,
        t_ms: 1_900,
    });
    let (results, figures) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Pass);
    assert_eq!(figures.interruptions, 0);
    // … and it was never restarted.
    assert_eq!(
        verdict(&results, "killed_workloads_restarted"),
        Verdict::Fail
    );
    history
        .workloads
        .push(workload("b-1", "web.2", 12, 3_000, None));
    let (results, _) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(
        verdict(&results, "killed_workloads_restarted"),
        Verdict::Pass
    );
}

#[test]
fn a_restart_after_heal_fails_unless_the_service_changed_during_its_life() {
    let mut record = Record {
        windows: vec![window(1_000, Some(5_000))],
        ..Record::default()
    };
    let history = History {
        workloads: vec![
            workload("b-1", "web.1", 10, 500, Some(6_000)),
            workload("b-1", "web.1", 12, 6_200, None),
            workload("b-1", "web.3", 13, 500, Some(6_000)),
        ],
        ..History::default()
    };
    let (results, _) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
    assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Fail);
    assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Pass);
    // Scaling to 2 during the partition explains web.3, not web.1.
    record.writes.push(write(
        "3",
        2_000,
        Write::Scale {
            service: "web".into(),
            replicas: 2,
        },
        true,
    ));
    let (_, figures) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
    assert_eq!(figures.interruptions, 1);
    // An update of the service explains both.
    record.writes.push(write(
        "4",
        2_500,
        Write::Update {
            service: "web".into(),
        },
        true,
    ));
    let (results, figures) = check_all(&record, &history, &end(&[("web", Some(2))], &[]));
    assert_eq!(figures.interruptions, 0);
    assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
}

/// A death found one sample after the heal may have happened before it: it counts as a
/// stop during the fault. A write the scenario expected to be refused explains no stop.
#[test]
fn the_sample_interval_and_refused_writes_excuse_nothing() {
    let mut record = Record {
        windows: vec![window(1_000, Some(5_000))],
        ..Record::default()
    };
    let mut dying = workload("b-1", "web.2", 11, 500, Some(5_150));
    dying.last_alive_ms = 4_950;
    let history = History {
        workloads: vec![workload("b-1", "web.1", 10, 500, None), dying],
        ..History::default()
    };
    let (results, _) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
    assert_eq!(verdict(&results, "no_restart_on_reconnect"), Verdict::Pass);
    let mut refused = write(
        "3",
        2_000,
        Write::Scale {
            service: "web".into(),
            replicas: 1,
        },
        false,
    );
    refused.expected_failure = true;
    record.writes.push(refused);
    let (_, figures) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(
        figures.interruptions, 1,
        "the refused scale explains nothing"
    );
}

#[test]
fn nothing_watched_is_a_failure_not_a_pass() {
    let record = Record {
        windows: vec![window(1_000, Some(5_000))],
        ..Record::default()
    };
    let (results, _) = check_all(&record, &History::default(), &end(&[], &[]));
    assert_eq!(verdict(&results, "workloads_keep_running"), Verdict::Fail);
    let (results, _) = check_all(&Record::default(), &History::default(), &end(&[], &[]));
    assert_eq!(
        verdict(&results, "workloads_keep_running"),
        Verdict::NotExercised
    );
}

#[test]
fn acknowledged_writes_must_survive_and_unknown_outcomes_may_go_either_way() {
    let scale = |n| Write::Scale {
        service: "web".into(),
        replicas: n,
    };
    let mut record = Record::default();
    record.writes.push(write(
        "1",
        0,
        Write::Create {
            service: "web".into(),
            replicas: Some(2),
        },
        true,
    ));
    record.writes.push(write("2", 100, scale(4), true));
    record.writes.push(write("3", 200, scale(5), false));
    let lost = |record: &Record, services: &[(&str, Option<u32>)]| {
        let (results, figures) = check_all(record, &History::default(), &end(services, &[]));
        (
            verdict(&results, "no_acknowledged_write_lost"),
            figures.writes_lost,
        )
    };
    assert_eq!(lost(&record, &[("web", Some(4))]), (Verdict::Pass, 0));
    assert_eq!(lost(&record, &[("web", Some(5))]), (Verdict::Pass, 0));
    assert_eq!(lost(&record, &[("web", Some(2))]), (Verdict::Fail, 1));
    assert_eq!(lost(&record, &[]), (Verdict::Fail, 1));
    record.writes.push(write(
        "4",
        300,
        Write::Remove {
            service: "web".into(),
        },
        true,
    ));
    assert_eq!(lost(&record, &[]), (Verdict::Pass, 0));
    assert_eq!(lost(&record, &[("web", Some(4))]), (Verdict::Fail, 1));
    // A node removal must stick.
    record.writes.push(write(
        "5",
        400,
        Write::RemoveNode { node: "a-1".into() },
        true,
    ));
    let (results, _) = check_all(&record, &History::default(), &end(&[], &["a-1"]));
    assert_eq!(
        verdict(&results, "no_acknowledged_write_lost"),
        Verdict::Fail
    );
    // Unreadable control plane: nothing confirmed.
    let (results, _) = check_all(&record, &History::default(), &FinalState::default());
    assert_eq!(
        verdict(&results, "no_acknowledged_write_lost"),
        Verdict::Fail
    );
}

#[test]
fn a_removed_node_must_end_with_no_workload() {
    let mut record = Record::default();
    record.writes.push(write(
        "1",
        1_000,
        Write::RemoveNode { node: "a-1".into() },
        true,
    ));
    let mut history = History {
        workloads: vec![workload("a-1", "web.1", 10, 500, None)],
        ..History::default()
    };
    let (results, _) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(
        verdict(&results, "removed_node_stops_workloads"),
        Verdict::Fail
    );
    history.workloads[0].died_ms = Some(9_000);
    let (results, figures) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(
        verdict(&results, "removed_node_stops_workloads"),
        Verdict::Pass
    );
    assert_eq!(figures.interruptions, 0, "the removal explains the stop");
}

#[test]
fn revisions_going_back_fail_and_convergence_bounds_are_enforced() {
    let mut history = History::default();
    history.revisions.insert("a-1".into(), vec![(1, 3), (2, 5)]);
    let mut record = Record::default();
    record.convergences.push(crate::record::Convergence {
        step: "7".into(),
        from_ms: 1_000,
        bound_ms: 30_000,
        took_ms: None,
        detail: "a-1: web.1 not running".into(),
    });
    let (results, _) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(verdict(&results, "agents_never_go_back"), Verdict::Pass);
    assert_eq!(verdict(&results, "converges_after_heal"), Verdict::Fail);
    history.regressions.push(crate::observe::Regression {
        node: "a-1".into(),
        t_ms: 3,
        from: 5,
        to: 4,
    });
    let (results, _) = check_all(&record, &history, &end(&[], &[]));
    assert_eq!(verdict(&results, "agents_never_go_back"), Verdict::Fail);
}
