//! Fault planning over a six-node fleet: which blocks each fault installs on which node,
//! what is refused, and how faults are written in scenario files.

use super::*;

/// Control nodes c1-c3 (.1-.3), site a with a-1 (.4), site b with b-1 and b-2 (.5, .6).
fn fleet() -> Vec<NodeAddress<'static>> {
    [
        ("c1", "central"),
        ("c2", "central"),
        ("c3", "central"),
        ("a-1", "a"),
        ("b-1", "b"),
        ("b-2", "b"),
    ]
    .into_iter()
    .zip(1..)
    .map(|((name, site), host)| NodeAddress {
        name,
        site,
        addr: Ipv4Addr::new(10, 77, 0, host),
    })
    .collect()
}

fn groups(text: &[&[&str]]) -> Vec<Vec<String>> {
    text.iter()
        .map(|g| g.iter().map(|n| (*n).to_owned()).collect())
        .collect()
}

/// Which node blocks which hosts (last octet), for compact expectations.
fn summary(plan: &[NodeBlock]) -> Vec<(String, String, Vec<u8>)> {
    plan.iter()
        .map(|(name, block)| {
            let addrs = match &block.drop {
                Scope::Peers(addrs) | Scope::OutgoingTo(addrs) => addrs.clone(),
                Scope::All | Scope::RandomLoss { .. } | Scope::Queue { .. } => Vec::new(),
            };
            (
                name.clone(),
                block.tag.clone(),
                addrs.iter().map(|a| a.octets()[3]).collect(),
            )
        })
        .collect()
}

fn check_partition(text: &[&[&str]], expected: &[(&str, &[u8])]) {
    let plan = partition_blocks(&fleet(), &groups(text)).expect("valid partition");
    let expected: Vec<(String, String, Vec<u8>)> = expected
        .iter()
        .map(|(name, hosts)| ((*name).to_owned(), "partition".to_owned(), hosts.to_vec()))
        .collect();
    assert_eq!(summary(&plan), expected, "{text:?}");
}

#[test]
fn partition_splits_majority_from_minority() {
    // c1 c2 + site a | c3 + site b.
    check_partition(
        &[&["c1", "c2", "a"], &["c3", "b"]],
        &[
            ("c1", &[3, 5, 6]),
            ("c2", &[3, 5, 6]),
            ("c3", &[1, 2, 4]),
            ("a-1", &[3, 5, 6]),
            ("b-1", &[1, 2, 4]),
            ("b-2", &[1, 2, 4]),
        ],
    );
}

#[test]
fn partition_bridge_sees_both_sides_and_unnamed_nodes_are_untouched() {
    // a-1 bridges the control plane and b-1; b-2 is named nowhere.
    check_partition(
        &[&["c1", "c2", "c3", "a-1"], &["a-1", "b-1"]],
        &[
            ("c1", &[5]),
            ("c2", &[5]),
            ("c3", &[5]),
            ("b-1", &[1, 2, 3]),
        ],
    );
}

#[test]
fn partition_sites_expand_and_control_is_central() {
    check_partition(
        &[&["central"], &["b"]],
        &[
            ("c1", &[5, 6]),
            ("c2", &[5, 6]),
            ("c3", &[5, 6]),
            ("b-1", &[1, 2, 3]),
            ("b-2", &[1, 2, 3]),
        ],
    );
}

#[test]
fn partition_rejects_bad_shapes_and_unknown_names() {
    let members = fleet();
    let error = |text: &[&[&str]]| {
        format!(
            "{:#}",
            partition_blocks(&members, &groups(text)).expect_err("invalid")
        )
    };
    assert!(error(&[&["c1", "c2"]]).contains("two or more groups"));
    assert!(error(&[&["c1"], &[]]).contains("group 2 is empty"));
    let unknown = error(&[&["c1"], &["z-9"]]);
    assert!(unknown.contains("no node or site \"z-9\""), "{unknown}");
    assert!(unknown.contains("sites: a b central"), "{unknown}");
    assert!(error(&[&["c1", "c2"], &["c1", "c2"]]).contains("nothing to cut"));
}

#[test]
fn one_way_drops_output_of_from_towards_to_only() {
    let fault = Fault::OneWay {
        from: "b".into(),
        to: "c1".into(),
    };
    let plan = fault.blocks(&fleet()).expect("valid");
    assert_eq!(
        summary(&plan),
        [
            ("b-1".to_owned(), "oneway".to_owned(), vec![1]),
            ("b-2".to_owned(), "oneway".to_owned(), vec![1]),
        ]
    );
    assert!(matches!(plan[0].1.drop, Scope::OutgoingTo(_)));
    let overlap = Fault::OneWay {
        from: "b".into(),
        to: "b-2".into(),
    };
    let error = format!("{:#}", overlap.blocks(&fleet()).expect_err("overlap"));
    assert!(error.contains("node b-2 is on both ends"), "{error}");
}

#[test]
fn loss_covers_every_node_of_a_site_and_checks_the_percentage() {
    let fault = Fault::Loss {
        target: "b".into(),
        percent: 30,
    };
    let plan = fault.blocks(&fleet()).expect("valid");
    let nodes: Vec<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["b-1", "b-2"]);
    assert_eq!(plan[0].1.drop, Scope::RandomLoss { percent: 30 });
    for percent in [0, 101] {
        let fault = Fault::Loss {
            target: "b".into(),
            percent,
        };
        assert!(fault.blocks(&fleet()).is_err(), "{percent}");
    }
}

#[test]
fn delay_queues_every_node_of_the_target_and_checks_its_limits() {
    let delay = |target: &str, ms, jitter_ms| Fault::Delay {
        target: target.into(),
        ms,
        jitter_ms,
    };
    let plan = delay("b", 100, 30).blocks(&fleet()).expect("valid");
    let queue = Block {
        tag: "delay".into(),
        drop: Scope::Queue { num: DELAY_QUEUE },
    };
    assert_eq!(
        plan,
        [
            ("b-1".to_owned(), queue.clone()),
            ("b-2".to_owned(), queue.clone())
        ]
    );
    assert_eq!(
        delay("c2", 1, 1).blocks(&fleet()).expect("valid"),
        [("c2".to_owned(), queue)]
    );
    assert_eq!(
        delay("b", 100, 30).delay(),
        Some(DelaySpec {
            ms: 100,
            jitter_ms: 30
        })
    );
    assert_eq!(Fault::Kill { node: "c1".into() }.delay(), None);
    let error = |fault: Fault| format!("{:#}", fault.blocks(&fleet()).expect_err("invalid"));
    assert!(error(delay("b", 0, 0)).contains("use 1-10000 ms"));
    assert!(error(delay("b", 10_001, 0)).contains("use 1-10000 ms"));
    assert!(error(delay("b", 100, 101)).contains("exceeds the delay of 100 ms"));
    assert!(error(delay("z", 100, 0)).contains("no node or site \"z\""));
    assert!(delay("b", 10_000, 10_000).validate().is_ok());
}

#[test]
fn isolate_and_cut_site_plans_are_unchanged() {
    let isolate = Fault::Isolate { node: "a-1".into() };
    assert_eq!(
        isolate.blocks(&fleet()).expect("valid"),
        [(
            "a-1".to_owned(),
            Block {
                tag: "isolate".into(),
                drop: Scope::All
            }
        )]
    );
    // Isolate takes a node, not a site.
    assert!(
        Fault::Isolate { node: "a".into() }
            .blocks(&fleet())
            .is_err()
    );
    let cut = Fault::CutSite { site: "b".into() };
    assert_eq!(
        summary(&cut.blocks(&fleet()).expect("valid")),
        [
            ("b-1".to_owned(), "cut".to_owned(), vec![1, 2, 3, 4]),
            ("b-2".to_owned(), "cut".to_owned(), vec![1, 2, 3, 4]),
        ]
    );
    assert!(
        Fault::CutSite { site: "z".into() }
            .blocks(&fleet())
            .is_err()
    );
    assert!(
        Fault::Kill { node: "c1".into() }
            .blocks(&fleet())
            .expect("valid")
            .is_empty()
    );
}

/// A scenario step as the runner will hold it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Step {
    #[serde(with = "serde_norway::with::singleton_map")]
    fault: Fault,
}

fn parse(text: &str) -> Result<Fault, serde_norway::Error> {
    serde_norway::from_str::<Step>(text).map(|step| step.fault)
}

#[test]
fn faults_parse_from_scenario_yaml() {
    let cases = [
        (
            "fault: {cut_site: {site: b}}",
            Fault::CutSite { site: "b".into() },
        ),
        (
            "fault: {partition: {groups: [[c1, c2], [c3]]}}",
            Fault::Partition {
                groups: groups(&[&["c1", "c2"], &["c3"]]),
            },
        ),
        (
            "fault: {one_way: {from: a-1, to: central}}",
            Fault::OneWay {
                from: "a-1".into(),
                to: "central".into(),
            },
        ),
        (
            "fault: {loss: {target: b, percent: 30}}",
            Fault::Loss {
                target: "b".into(),
                percent: 30,
            },
        ),
        (
            "fault: {delay: {target: b, ms: 100, jitter_ms: 30}}",
            Fault::Delay {
                target: "b".into(),
                ms: 100,
                jitter_ms: 30,
            },
        ),
        (
            "fault: {delay: {target: a-1, ms: 50}}",
            Fault::Delay {
                target: "a-1".into(),
                ms: 50,
                jitter_ms: 0,
            },
        ),
        (
            "fault: {isolate: {node: a-1}}",
            Fault::Isolate { node: "a-1".into() },
        ),
        (
            "fault: {kill: {node: c1}}",
            Fault::Kill { node: "c1".into() },
        ),
        (
            "fault: {pause: {node: c2}}",
            Fault::Pause { node: "c2".into() },
        ),
        (
            "fault:\n  partition:\n    groups:\n      - [c1, c2, a]\n      - [c3, b]\n",
            Fault::Partition {
                groups: groups(&[&["c1", "c2", "a"], &["c3", "b"]]),
            },
        ),
    ];
    for (text, fault) in cases {
        assert_eq!(parse(text).expect(text), fault, "{text}");
        // What the harness writes, it reads back.
        let step = Step { fault };
        let written = serde_norway::to_string(&step).expect("serialize");
        assert_eq!(parse(&written).expect(&written), step.fault, "{written}");
    }
    for bad in [
        "fault: {isolate: {node: a-1, extra: 1}}",
        "fault: {cut: {site: b}}",
        "fault: {loss: {target: b}}",
        "fault: {loss: {target: b, percent: 300}}",
        "fault: {delay: {target: b}}",
        "fault: {delay: {target: b, ms: 100, jitter: 30}}",
        "fault: {delay: {target: b, ms: -1}}",
        "fault: {kill: {node: c1}, pause: {node: c2}}",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn faults_display_for_logs_and_reports() {
    let cases = [
        (
            Fault::Partition {
                groups: groups(&[&["c1", "c2"], &["c3"]]),
            },
            "partition [c1 c2] | [c3]",
        ),
        (
            Fault::OneWay {
                from: "a-1".into(),
                to: "central".into(),
            },
            "drop a-1 -> central one way",
        ),
        (
            Fault::Loss {
                target: "b".into(),
                percent: 30,
            },
            "30% loss on b",
        ),
        (Fault::CutSite { site: "b".into() }, "cut site b off"),
        (
            Fault::Delay {
                target: "b".into(),
                ms: 100,
                jitter_ms: 30,
            },
            "100±30 ms delay on b",
        ),
        (
            Fault::Delay {
                target: "a-1".into(),
                ms: 100,
                jitter_ms: 0,
            },
            "100 ms delay on a-1",
        ),
    ];
    for (fault, text) in cases {
        assert_eq!(fault.to_string(), text);
    }
}
