//! The rule text each firewall gets for each scope: nftables scripts and iptables commands,
//! applied and healed.

use super::*;

fn peers() -> Block {
    Block {
        tag: "cut".into(),
        drop: Scope::Peers(vec![
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(10, 77, 0, 3),
        ]),
    }
}

#[test]
fn nft_isolation_keeps_loopback_and_drops_the_rest() {
    let script = nft_script(&Block {
        tag: "isolate".into(),
        drop: Scope::All,
    });
    assert!(
        script.starts_with("create table inet wchaos_isolate\ntable inet wchaos_isolate {"),
        "{script}"
    );
    assert!(
        script.contains("iifname \"lo\" accept\n    drop"),
        "{script}"
    );
    assert!(
        script.contains("oifname \"lo\" accept\n    drop"),
        "{script}"
    );
}

#[test]
fn nft_peer_block_names_every_address_both_ways() {
    let script = nft_script(&peers());
    assert!(
        script.contains("ip saddr { 10.77.0.1, 10.77.0.3 } drop"),
        "{script}"
    );
    assert!(
        script.contains("ip daddr { 10.77.0.1, 10.77.0.3 } drop"),
        "{script}"
    );
}

#[test]
fn iptables_jumps_come_after_the_chains_and_heal_undoes_them() {
    let apply = iptables_apply(&peers());
    assert_eq!(apply[0], ["-N", "WCHAOS-CUT-IN"]);
    assert_eq!(
        apply[apply.len() - 2],
        ["-I", "INPUT", "1", "-j", "WCHAOS-CUT-IN"]
    );
    assert_eq!(
        apply[apply.len() - 1],
        ["-I", "OUTPUT", "1", "-j", "WCHAOS-CUT-OUT"]
    );
    assert!(apply.contains(&args(&[
        "-A",
        "WCHAOS-CUT-IN",
        "-s",
        "10.77.0.3",
        "-j",
        "DROP"
    ])));
    let heal = iptables_heal("cut");
    assert_eq!(heal[0], ["-D", "INPUT", "-j", "WCHAOS-CUT-IN"]);
    assert_eq!(heal[5], ["-X", "WCHAOS-CUT-OUT"]);
}

#[test]
fn nft_one_way_drops_output_only() {
    let script = nft_script(&Block {
        tag: "oneway".into(),
        drop: Scope::OutgoingTo(vec![Ipv4Addr::new(10, 77, 0, 2)]),
    });
    assert!(script.contains("ip daddr { 10.77.0.2 } drop"), "{script}");
    assert_eq!(script.matches("drop").count(), 1, "{script}");
}

#[test]
fn nft_loss_spares_loopback_and_drops_at_random_both_ways() {
    let script = nft_script(&Block {
        tag: "loss".into(),
        drop: Scope::RandomLoss { percent: 30 },
    });
    assert!(
        script.contains("iifname \"lo\" accept\n    numgen random mod 100 < 30 drop"),
        "{script}"
    );
    assert!(
        script.contains("oifname \"lo\" accept\n    numgen random mod 100 < 30 drop"),
        "{script}"
    );
    let total = nft_script(&Block {
        tag: "loss".into(),
        drop: Scope::RandomLoss { percent: 100 },
    });
    assert!(
        total.contains("iifname \"lo\" accept\n    drop\n"),
        "{total}"
    );
    assert!(!total.contains("numgen"), "{total}");
}

#[test]
fn iptables_one_way_has_output_rules_only() {
    let apply = iptables_apply(&Block {
        tag: "oneway".into(),
        drop: Scope::OutgoingTo(vec![
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(10, 77, 0, 4),
        ]),
    });
    let appended: Vec<&Vec<String>> = apply.iter().filter(|a| a[0] == "-A").collect();
    assert_eq!(
        appended,
        [
            &args(&["-A", "WCHAOS-ONEWAY-OUT", "-d", "10.77.0.2", "-j", "DROP"]),
            &args(&["-A", "WCHAOS-ONEWAY-OUT", "-d", "10.77.0.4", "-j", "DROP"]),
        ]
    );
    // Both chains exist, so healing is the same for every scope.
    assert_eq!(apply[1], ["-N", "WCHAOS-ONEWAY-OUT"]);
    assert_eq!(apply[0], ["-N", "WCHAOS-ONEWAY-IN"]);
}

#[test]
fn iptables_loss_spares_loopback_and_uses_an_exact_probability() {
    let apply = iptables_apply(&Block {
        tag: "loss".into(),
        drop: Scope::RandomLoss { percent: 5 },
    });
    let statistic = |chain: &str| {
        args(&[
            "-A",
            chain,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.05",
            "-j",
            "DROP",
        ])
    };
    assert_eq!(
        &apply[2..6],
        [
            args(&["-A", "WCHAOS-LOSS-IN", "-i", "lo", "-j", "RETURN"]),
            statistic("WCHAOS-LOSS-IN"),
            args(&["-A", "WCHAOS-LOSS-OUT", "-o", "lo", "-j", "RETURN"]),
            statistic("WCHAOS-LOSS-OUT"),
        ]
    );
    assert_eq!(iptables_probability(30), "0.30");
    assert_eq!(iptables_probability(100), "1.00");
}

#[test]
fn nft_queue_holds_output_but_loopback_after_other_tables() {
    let script = nft_script(&Block {
        tag: "delay".into(),
        drop: Scope::Queue { num: 7 },
    });
    assert_eq!(
        script,
        "create table inet wchaos_delay\ntable inet wchaos_delay {\n  \
           chain input {\n    type filter hook input priority 10; policy accept;\n    \n  }\n  \
           chain output {\n    type filter hook output priority 10; policy accept;\n    \
             oifname \"lo\" accept\n    queue num 7 bypass\n  }\n\
         }\n"
    );
}

#[test]
fn iptables_queue_is_output_only_and_appended_last() {
    let apply = iptables_apply(&Block {
        tag: "delay".into(),
        drop: Scope::Queue { num: 7 },
    });
    assert_eq!(
        apply,
        [
            args(&["-N", "WCHAOS-DELAY-IN"]),
            args(&["-N", "WCHAOS-DELAY-OUT"]),
            args(&["-A", "WCHAOS-DELAY-OUT", "-o", "lo", "-j", "RETURN"]),
            args(&[
                "-A",
                "WCHAOS-DELAY-OUT",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "7",
                "--queue-bypass"
            ]),
            args(&["-I", "INPUT", "1", "-j", "WCHAOS-DELAY-IN"]),
            args(&["-A", "OUTPUT", "-j", "WCHAOS-DELAY-OUT"]),
        ]
    );
    // `-D OUTPUT -j CHAIN` finds the jump wherever it is: healing is unchanged.
    assert_eq!(
        iptables_heal("delay")[1],
        ["-D", "OUTPUT", "-j", "WCHAOS-DELAY-OUT"]
    );
}

#[test]
fn loss_must_be_a_percentage() {
    for percent in [1, 50, 100] {
        assert!(
            check_scope(&Scope::RandomLoss { percent }).is_ok(),
            "{percent}"
        );
    }
    for percent in [0, 101, 255] {
        assert!(
            check_scope(&Scope::RandomLoss { percent }).is_err(),
            "{percent}"
        );
    }
    assert!(check_scope(&Scope::All).is_ok());
}

#[test]
fn tags_must_fit_table_and_chain_names() {
    assert!(check_tag("isolate").is_ok());
    assert!(check_tag("cut_a").is_ok());
    for bad in ["", "Upper", "a-b", "a b", "seventeen_chars_x"] {
        assert!(check_tag(bad).is_err(), "{bad:?}");
    }
}
