//! In-process mesh clusters on loopback: convergence, failure detection, the sealed transport
//! refusing foreign, forged and replayed datagrams, key rotation, and a partition that heals.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cluster, start_node, wait_until};
use tracing::info;
use warren_api::NodeId;
use warren_api::clock::unix_now_ms;
use warren_mesh::keyring::MAX_DATAGRAM_BYTES;
use warren_mesh::{DropReason, GossipKey, KeyId, Keyring, Liveness, MeshTimers};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,chitchat=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// 20 nodes seeded by node 1 converge (everyone knows all 20 and calls none dead); three are
/// stopped and the 17 others see exactly those three dead within 15 s, and none of each other.
///
/// "Converged" is not "everyone alive at one instant": suspect is an early doubt (a heartbeat
/// still for two fifths of the timeout), and with one peer a round, 20 meshes of a debug build
/// on a machine busy with other builds nearly always have some pair briefly suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_converge_and_see_three_killed_dead() {
    init_tracing();
    let mut cluster = Cluster::start(20, MeshTimers::for_tests()).await;
    let all: Vec<usize> = (0..20).collect();
    let took = wait_until(Duration::from_secs(30), || {
        cluster.all_know_none_dead(&all, &all)
    })
    .await
    .unwrap_or_else(|| panic!("20 nodes converge: {}", cluster.census()));
    info!(?took, "--- 20 nodes converged");

    let killed = [3, 9, 15];
    for idx in killed {
        cluster.kill(idx).await;
    }
    let survivors = cluster.running();
    assert_eq!(survivors.len(), 17);
    let took = wait_until(Duration::from_secs(15), || {
        cluster.all_see(&survivors, &killed, Liveness::Dead)
    })
    .await
    .expect("all 17 survivors see the 3 killed nodes dead");
    info!(?took, "--- 17 survivors see the 3 killed dead");
    // Survivors may be briefly suspect to each other on a loaded machine; none stays dead.
    wait_until(Duration::from_secs(10), || {
        cluster.all_know_none_dead(&survivors, &survivors)
    })
    .await
    .unwrap_or_else(|| panic!("survivors call no survivor dead: {}", cluster.census()));
    for &idx in &survivors {
        let view = cluster.view(idx);
        assert_eq!(
            view.len(),
            20,
            "dead members stay listed (until the dead-node grace)"
        );
        let me = view
            .iter()
            .find(|m| m.node_id == cluster.nodes[idx].node_id)
            .expect("self");
        assert_eq!(me.name.as_deref(), Some(&*format!("node-{}", idx + 1)));
        assert!(me.site.is_some() && me.role.is_some());
    }
    cluster.shutdown().await;
}

/// Nodes with the wrong key (same key id with other bytes, and an unknown key id) seed
/// themselves with every cluster node: nobody in the cluster ever lists them, they list nobody,
/// and their datagrams are counted as `forged` and `unknown_key`. Hand-made datagrams (too
/// short, too large, bad magic) are counted by reason too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_key_cannot_join() {
    init_tracing();
    let timers = MeshTimers::for_tests();
    let cluster = Cluster::start(3, timers.clone()).await;
    let all = [0, 1, 2];
    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&all, &all, Liveness::Alive)
    })
    .await
    .expect("cluster converges");
    let seeds: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    let same_id = start_node(
        NodeId(100),
        seeds.clone(),
        Keyring::new(GossipKey::generate(KeyId(1))),
        timers.clone(),
    )
    .await;
    let other_id = start_node(
        NodeId(101),
        seeds.clone(),
        Keyring::new(GossipKey::generate(KeyId(77))),
        timers.clone(),
    )
    .await;
    info!("--- intruders started");
    let dropped = |reason| -> u64 {
        cluster
            .nodes
            .iter()
            .map(|n| n.metrics.dropped(reason))
            .sum()
    };
    wait_until(Duration::from_secs(10), || {
        dropped(DropReason::Forged) >= 5 && dropped(DropReason::UnknownKey) >= 5
    })
    .await
    .expect("intruders' datagrams are refused and counted");
    // Give gossip a few more rounds in which the intruders could have slipped in.
    tokio::time::sleep(timers.gossip_interval * 10).await;
    for idx in all {
        let ids: Vec<NodeId> = cluster.view(idx).iter().map(|m| m.node_id).collect();
        assert_eq!(
            ids,
            vec![NodeId(1), NodeId(2), NodeId(3)],
            "node {idx} lists only the cluster"
        );
    }
    for intruder in [&same_id, &other_id] {
        let view = intruder.mesh.as_ref().expect("running").members().await;
        assert_eq!(view.len(), 1, "an intruder learns nothing: {view:?}");
    }

    let target = cluster.nodes[0].addr;
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let before = |reason| cluster.nodes[0].metrics.dropped(reason);
    let (short, large, magic) = (
        before(DropReason::TooShort),
        before(DropReason::TooLarge),
        before(DropReason::BadMagic),
    );
    raw.send_to(b"WM\x01short", target).await.expect("send");
    raw.send_to(&vec![0u8; MAX_DATAGRAM_BYTES + 100], target)
        .await
        .expect("send");
    raw.send_to(&[0x53u8; 200], target).await.expect("send");
    wait_until(Duration::from_secs(5), || {
        before(DropReason::TooShort) > short
            && before(DropReason::TooLarge) > large
            && before(DropReason::BadMagic) > magic
    })
    .await
    .expect("hand-made garbage is counted by reason");
    for intruder in [same_id, other_id] {
        intruder.mesh.expect("running").shutdown().await;
    }
    cluster.shutdown().await;
}

/// A real sealed datagram is captured off the wire (a lone node with the cluster key gossips
/// to a seed address the test owns), then: sent to a cluster node once (accepted), again
/// (dropped as `replayed`), and with one bit flipped (dropped as `forged`). A payload sealed
/// under another key is dropped as `unknown_key`. The cluster's membership never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_forged_datagrams_are_dropped() {
    init_tracing();
    let timers = MeshTimers::for_tests();
    let cluster = Cluster::start(2, timers.clone()).await;
    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&[0, 1], &[0, 1], Liveness::Alive)
    })
    .await
    .expect("cluster converges");

    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind tap");
    let lone = start_node(
        NodeId(50),
        vec![tap.local_addr().expect("tap addr")],
        Keyring::new(cluster.key.clone()),
        timers.clone(),
    )
    .await;
    let mut buf = vec![0u8; 70_000];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
        .await
        .expect("the lone node gossips to its seed")
        .expect("recv");
    let captured = buf[..len].to_vec();
    lone.mesh.expect("running").shutdown().await;
    assert_eq!(&captured[..2], b"WM", "what travels is sealed");
    info!(len, "--- captured a sealed datagram");

    let target = &cluster.nodes[1];
    let metrics = &target.metrics;
    let replayed = metrics.dropped(DropReason::Replayed);
    tap.send_to(&captured, target.addr).await.expect("send");
    // The first copy is authentic: the target answers it (a SYN-ACK to the tap).
    tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
        .await
        .expect("the target answers the first copy")
        .expect("recv");
    tap.send_to(&captured, target.addr).await.expect("send");
    wait_until(Duration::from_secs(5), || {
        metrics.dropped(DropReason::Replayed) == replayed + 1
    })
    .await
    .expect("the second copy is dropped as replayed");

    let forged = metrics.dropped(DropReason::Forged);
    let mut flipped = captured.clone();
    let last = flipped.len() - 1;
    flipped[last / 2] ^= 0x01;
    tap.send_to(&flipped, target.addr).await.expect("send");
    wait_until(Duration::from_secs(5), || {
        metrics.dropped(DropReason::Forged) == forged + 1
    })
    .await
    .expect("a flipped bit is dropped as forged");

    let unknown = metrics.dropped(DropReason::UnknownKey);
    let foreign = Keyring::new(GossipKey::generate(KeyId(9))).seal(&captured, unix_now_ms());
    tap.send_to(&foreign, target.addr).await.expect("send");
    wait_until(Duration::from_secs(5), || {
        metrics.dropped(DropReason::UnknownKey) == unknown + 1
    })
    .await
    .expect("a foreign key is dropped as unknown_key");

    cluster.shutdown().await;
}

/// A key holder floods a node from one socket with authentic, future-dated datagrams — more
/// than the whole replay cache holds. Before the per-sender share, that filled the cache for
/// two minutes and the node dropped every peer's gossip (`replay_cache_full`), calling healthy
/// members dead. Now the flood fills its own share only: the rest is `sender_over_quota`, the
/// cache never fills, and the cluster keeps seeing itself alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flooding_key_holder_cannot_blind_a_node() {
    init_tracing();
    let timers = MeshTimers::for_tests();
    let cluster = Cluster::start(3, timers.clone()).await;
    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&[0, 1, 2], &[0, 1, 2], Liveness::Alive)
    })
    .await
    .expect("cluster converges");

    let target = &cluster.nodes[1];
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ring = Keyring::new(cluster.key.clone());
    let flood = warren_mesh::keyring::MAX_REPLAY_CACHE_ENTRIES + 4_096;
    for i in 0..flood {
        let sealed = ring.seal(b"flood", unix_now_ms() + 9_000);
        attacker.send_to(&sealed, target.addr).await.expect("send");
        if i % 256 == 0 {
            // Let the target drain its socket buffer, so the flood arrives rather than being
            // dropped by the kernel.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let metrics = &target.metrics;
    wait_until(Duration::from_secs(10), || {
        metrics.dropped(DropReason::SenderOverQuota) > 0
    })
    .await
    .expect("the flood is cut at its sender's share");
    info!(
        over_quota = metrics.dropped(DropReason::SenderOverQuota),
        "--- flood sent"
    );
    // Past the time a dead member is noticed, everyone is still alive to everyone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metrics.dropped(DropReason::ReplayCacheFull), 0);
    wait_until(Duration::from_secs(5), || {
        cluster.all_see(&[0, 1, 2], &[0, 1, 2], Liveness::Alive)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the flooded node still hears its peers: {}",
            cluster.census()
        )
    });
    cluster.shutdown().await;
}

/// Nodes 1 and 2 rotate to a new key with a 3 s overlap while 3 and 4 stay on the old one:
/// during the overlap all four keep seeing each other alive. After it, the rotated nodes
/// refuse the old key (`unknown_key`) and the two pairs lose each other; when 3 and 4 rotate
/// too, all four are alive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_talking_during_the_overlap_only() {
    init_tracing();
    let cluster = Cluster::start(4, MeshTimers::for_tests()).await;
    let all = [0, 1, 2, 3];
    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&all, &all, Liveness::Alive)
    })
    .await
    .expect("cluster converges");

    let new_key = GossipKey::generate(KeyId(2));
    let overlap = Duration::from_secs(3);
    for idx in [0, 1] {
        cluster
            .mesh(idx)
            .rotate_key(new_key.clone(), overlap)
            .expect("rotate");
    }
    let rotated_at = std::time::Instant::now();
    info!("--- nodes 1 and 2 rotated");
    while rotated_at.elapsed() < overlap - Duration::from_millis(300) {
        assert!(
            cluster.none_see(&all, &all, Liveness::Dead),
            "nobody is dead during the overlap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.nodes[0].metrics.dropped(DropReason::UnknownKey),
        0,
        "the rotated nodes accepted the old key throughout the overlap"
    );

    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&[0, 1], &[2, 3], Liveness::Dead)
            && cluster.all_see(&[2, 3], &[0, 1], Liveness::Dead)
    })
    .await
    .expect("after the overlap the old key is refused");
    assert!(cluster.nodes[0].metrics.dropped(DropReason::UnknownKey) > 0);
    info!("--- old key refused after the overlap");

    for idx in [2, 3] {
        cluster
            .mesh(idx)
            .rotate_key(new_key.clone(), overlap)
            .expect("rotate");
    }
    wait_until(Duration::from_secs(10), || {
        cluster.all_see(&all, &all, Liveness::Alive)
    })
    .await
    .expect("all on the new key converge again");
    cluster.shutdown().await;
}

/// Ten nodes split 5 | 5 at the transport. Each side keeps its own members alive (never dead)
/// and sees the other side dead. During the partition node 1 deletes a key everyone had and sets a new one.
/// After heal everyone sees everyone alive, has the new key, and the deleted key never comes
/// back (checked for a further second of gossip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_without_resurrecting_deleted_keys() {
    init_tracing();
    let cluster = Cluster::start(10, MeshTimers::for_tests()).await;
    let all: Vec<usize> = (0..10).collect();
    let (side_a, side_b) = ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]);
    wait_until(Duration::from_secs(15), || {
        cluster.all_see(&all, &all, Liveness::Alive)
    })
    .await
    .expect("cluster converges");
    cluster
        .mesh(0)
        .set_meta("doomed", "x")
        .await
        .expect("set meta");
    let has_key = |observer: usize, key: &str| {
        cluster
            .view(observer)
            .iter()
            .any(|m| m.node_id == NodeId(1) && m.meta.contains_key(key))
    };
    wait_until(Duration::from_secs(10), || {
        all.iter().all(|&o| has_key(o, "doomed"))
    })
    .await
    .expect("everyone sees the key");

    info!("--- partition 5 | 5");
    cluster.partition(&side_a, &side_b);
    wait_until(Duration::from_secs(15), || {
        cluster.all_see(&side_a, &side_b, Liveness::Dead)
            && cluster.all_see(&side_b, &side_a, Liveness::Dead)
    })
    .await
    .expect("each side sees the other dead");
    assert!(cluster.none_see(&side_a, &side_a, Liveness::Dead));
    assert!(cluster.none_see(&side_b, &side_b, Liveness::Dead));
    cluster.mesh(0).delete_meta("doomed").await;
    cluster
        .mesh(0)
        .set_meta("during", "a")
        .await
        .expect("set meta");
    wait_until(Duration::from_secs(10), || {
        side_a
            .iter()
            .all(|&o| !has_key(o, "doomed") && has_key(o, "during"))
    })
    .await
    .expect("side a sees the deletion");
    assert!(
        side_b.iter().all(|&o| has_key(o, "doomed")),
        "side b cannot know yet"
    );
    assert!(cluster.none_see(&side_a, &side_a, Liveness::Dead));
    assert!(cluster.none_see(&side_b, &side_b, Liveness::Dead));
    assert!(cluster.nodes[0].metrics.dropped(DropReason::FaultInjected) > 0);

    info!("--- heal");
    cluster.heal();
    wait_until(Duration::from_secs(15), || {
        cluster.all_see(&all, &all, Liveness::Alive)
            && all
                .iter()
                .all(|&o| has_key(o, "during") && !has_key(o, "doomed"))
    })
    .await
    .expect("membership converges after heal, with the deletion");
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert!(
            all.iter().all(|&o| !has_key(o, "doomed")),
            "a deleted key came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

/// A key holder gossiping under another node's id — with its own key, since it has no other —
/// can neither keep that node alive after it died nor change what it publishes while it
/// lives: observers accept only what the node itself signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holder_cannot_gossip_as_another_node() {
    init_tracing();
    let mut cluster = Cluster::start(4, MeshTimers::for_tests()).await;
    let all: Vec<usize> = (0..4).collect();
    wait_until(Duration::from_secs(15), || {
        cluster.all_see(&all, &all, Liveness::Alive)
    })
    .await
    .expect("cluster converges");
    let (victim, attacker) = (3usize, 2usize);
    let victim_id = cluster.nodes[victim].node_id;
    let attacker_id = cluster.nodes[attacker].node_id;
    let observers = [0usize, 1];
    let seed = cluster.nodes[0].addr;

    // While the victim lives: an impersonator (a new generation under the victim's id, signing
    // with the attacker's key) publishes a service endpoint for it. Observers keep the
    // victim's own, signed state.
    let impersonate = |name: &str| {
        let mut config = common::config(
            victim_id,
            vec![seed],
            Keyring::new(cluster.key.clone()),
            MeshTimers::for_tests(),
            warren_mesh::GossipFaultSwitch::new(),
        );
        config.member.name = name.to_owned();
        config.member.identity = common::identity_signed_by(attacker_id);
        config
    };
    let metrics = warren_mesh::MeshMetrics::unregistered();
    let impostor = warren_mesh::Mesh::start(impersonate("impostor"), metrics)
        .await
        .expect("impostor starts");
    impostor
        .set_service_endpoints("web", &["192.0.2.66:80".parse().unwrap()])
        .await
        .expect("impostor publishes");
    let victims_name = |cluster: &Cluster, observer: usize| {
        cluster
            .view(observer)
            .into_iter()
            .find(|m| m.node_id == victim_id)
            .and_then(|m| m.name)
    };
    let refused = |cluster: &Cluster, observer: usize| {
        cluster.nodes[observer]
            .metrics
            .member_states(warren_mesh::Unverified::Credential.label())
    };
    wait_until(Duration::from_secs(10), || {
        observers.iter().all(|&o| refused(&cluster, o) > 0)
    })
    .await
    .expect("observers receive the impostor's state and refuse it");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for o in observers {
        let view = cluster.view(o);
        let seen = view
            .iter()
            .find(|m| m.node_id == victim_id)
            .expect("victim listed");
        assert_eq!(
            seen.name.as_deref(),
            Some("node-4"),
            "observer {o}: {seen:?}"
        );
        assert_eq!(seen.liveness, Liveness::Alive, "observer {o}: {seen:?}");
        assert!(seen.services.is_empty(), "observer {o}: {seen:?}");
    }

    // The victim dies; the impostor keeps heartbeating under its id. Observers see the victim
    // dead all the same, and it stays dead.
    cluster.kill(victim).await;
    let took = wait_until(Duration::from_secs(15), || {
        cluster.all_see(&observers, &[victim], Liveness::Dead)
    })
    .await
    .expect("observers see the victim dead despite the impostor");
    info!(?took, "--- victim dead despite the impostor");
    for _ in 0..3 {
        tokio::time::sleep(MeshTimers::for_tests().attest_timeout).await;
        for o in observers {
            assert!(
                cluster.sees(o, victim, Liveness::Dead),
                "observer {o} sees {:?}",
                cluster.view(o).iter().find(|m| m.node_id == victim_id)
            );
            assert_ne!(victims_name(&cluster, o).as_deref(), Some("impostor"));
        }
    }
    impostor.shutdown().await;
    cluster.shutdown().await;
}

/// A round reaches as many live peers as `peers_per_round` says: chitchat picks three (and
/// sometimes a seed), the transport sends the first and skips the rest. 10 converged nodes are
/// watched for 1.5 s of 100 ms rounds: with one peer a round they send about one SYN per round
/// each and skip the others; with three, about three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_reaches_as_many_live_peers_as_configured() {
    init_tracing();
    for (peers_per_round, low, high) in [(1, 0.8, 1.3), (3, 2.5, 3.3)] {
        let timers = MeshTimers {
            peers_per_round,
            ..MeshTimers::for_tests()
        };
        let cluster = Cluster::start(10, timers).await;
        let all: Vec<usize> = (0..10).collect();
        wait_until(Duration::from_secs(15), || {
            cluster.all_see(&all, &all, Liveness::Alive)
        })
        .await
        .unwrap_or_else(|| panic!("10 nodes converge: {}", cluster.census()));
        let counts = |cluster: &Cluster| {
            cluster
                .nodes
                .iter()
                .fold((0, 0, 0), |(syns, rounds, skipped), node| {
                    let metrics = &node.metrics;
                    (
                        syns + metrics
                            .gossip_messages_total
                            .with_label_values(&["tx", "syn"])
                            .get(),
                        rounds + metrics.gossip_rounds_total.get(),
                        skipped + metrics.syns_skipped_total.get(),
                    )
                })
        };
        let (syns_before, rounds_before, skipped_before) = counts(&cluster);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let (syns, rounds, skipped) = counts(&cluster);
        let syns_per_round = (syns - syns_before) as f64 / (rounds - rounds_before).max(1) as f64;
        info!(
            peers_per_round,
            syns_per_round,
            skipped = skipped - skipped_before,
            "--- measured"
        );
        assert!(
            (low..=high).contains(&syns_per_round),
            "{peers_per_round} peers a round: {syns_per_round:.2} SYNs per round"
        );
        if peers_per_round == 1 {
            assert!(
                skipped > skipped_before,
                "chitchat's other picks are skipped"
            );
        }
        cluster.shutdown().await;
    }
}
