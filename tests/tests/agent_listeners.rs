//! A running agent whose listeners cannot bind (a reboot, with the ports taken) keeps running,
//! shows each one as down with its reason, retries, and binds each once its port is free.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use tracing::info;
use warren_api::wire::{Listener, ListenerStatus};
use warren_edge_agent::agent::{AgentStatus, RunEnd};
use warren_tests::{
    agent_options, agent_status, join_agent, spawn_agent_with, start_control, wait_until,
};

const LONG: Duration = Duration::from_secs(60);

fn listener(status: &AgentStatus, which: Listener) -> Option<&ListenerStatus> {
    status.listeners.iter().find(|l| l.listener == which)
}

fn is_down_in_use(status: &AgentStatus, which: Listener) -> bool {
    listener(status, which).is_some_and(|l| {
        !l.up
            && l.error
                .as_deref()
                .is_some_and(|e| e.contains("in use") && e.ends_with("; retrying"))
    })
}

fn is_up_at(status: &AgentStatus, which: Listener, addr: SocketAddr) -> bool {
    listener(status, which).is_some_and(|l| l.up && l.addr == addr.to_string())
}

/// Metrics (TCP) and gossip (UDP) ports are taken when the agent starts: it runs and connects
/// anyway, both listeners show as down ("in use; retrying"), and once the ports are freed both
/// bind where they were told, and the metrics say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_that_cannot_bind_are_shown_down_and_retried_until_they_bind() {
    warren_tests::init();
    let dir = tempfile::tempdir().unwrap();
    let (control, fingerprint) = start_control(dir.path()).await;
    let agent_dir = dir.path().join("agent");
    join_agent(&control, fingerprint, &agent_dir, "edge-1", "lisbon").await;
    let metrics_squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let gossip_squatter = UdpSocket::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics_squatter.local_addr().unwrap();
    let gossip_addr = gossip_squatter.local_addr().unwrap();
    let mut options = agent_options();
    options.metrics_listen = Some(metrics_addr);
    options.discovery.gossip_listen = Some(gossip_addr);
    let (cancel, task) = spawn_agent_with(&agent_dir, options);

    info!("--- both ports taken: the agent runs, connected, with both listeners down");
    let status = wait_until("both listeners down, the link up", LONG, || {
        agent_status(&agent_dir).filter(|s| {
            s.link.connected
                && is_down_in_use(s, Listener::Metrics)
                && is_down_in_use(s, Listener::Gossip)
        })
    })
    .await;
    assert_eq!(status.metrics_addr, None, "{status:?}");
    assert!(!task.is_finished());

    info!("--- the ports come free: both bind on a later attempt");
    drop(metrics_squatter);
    drop(gossip_squatter);
    let status = wait_until("both listeners up", LONG, || {
        agent_status(&agent_dir).filter(|s| {
            is_up_at(s, Listener::Metrics, metrics_addr)
                && is_up_at(s, Listener::Gossip, gossip_addr)
        })
    })
    .await;
    assert_eq!(status.metrics_addr, Some(metrics_addr));
    assert_eq!(status.discovery.gossip, Some(gossip_addr));
    let scraped = scrape(metrics_addr).await;
    for which in ["metrics", "gossip"] {
        assert!(
            scraped.lines().any(|l| l
                .starts_with(&format!("warren_agent_listener_up{{listener=\"{which}\""))
                && l.ends_with(" 1")),
            "{which} up in {scraped}"
        );
    }

    cancel.cancel();
    assert_eq!(task.await.unwrap().unwrap(), RunEnd::Stopped);
    control.shutdown().await;
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}
