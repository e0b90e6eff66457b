//! Helpers shared by control's integration tests.

use warren_api::NodeRole;
use warren_api::clock::unix_now_ms;
use warren_api::wire::{AgentHello, AgentToControl};
use warren_control::Op;
use warren_control::node::ControlNode;
use warren_transport::join::{JoinParams, Joined, join};
use warren_transport::token::mint;
use warren_transport::{Alpn, Endpoint, EndpointOptions, FramedRecv, FramedSend, MintOptions};

/// Joins an agent named `edge-1` in site `lisbon` through `node`, with a token minted and
/// registered there.
pub async fn join_agent(node: &ControlNode) -> Joined {
    let (token, record) = mint(
        node.control().fingerprint(),
        MintOptions {
            role: NodeRole::Agent,
            ttl: None,
            single_use: false,
        },
        unix_now_ms(),
    );
    node.control()
        .propose(Op::AddToken(record))
        .await
        .unwrap()
        .result
        .unwrap();
    let params = JoinParams {
        role: NodeRole::Agent,
        name: "edge-1".into(),
        site: "lisbon".into(),
        labels: Default::default(),
        advertise: vec![],
    };
    join(
        node.quic_addr(),
        &token.to_string(),
        params,
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// Opens `joined`'s push stream to `node` and sends `hello`. The stream lives as long as the
/// endpoint and both halves.
pub async fn open_push(
    node: &ControlNode,
    joined: &Joined,
    hello: AgentHello,
) -> (Endpoint, FramedSend, FramedRecv) {
    let endpoint = Endpoint::client(
        "127.0.0.1:0".parse().unwrap(),
        &joined.credentials,
        EndpointOptions::default(),
    )
    .unwrap();
    let conn = endpoint
        .connect(node.quic_addr(), Alpn::Agent)
        .await
        .unwrap();
    let (mut send, recv) = conn.open_stream().await.unwrap();
    send.send(&AgentToControl::Hello(hello)).await.unwrap();
    (endpoint, send, recv)
}
