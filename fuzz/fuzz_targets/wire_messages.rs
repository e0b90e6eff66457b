//! Decodes arbitrary bytes as every top-level message that arrives from the network: the agent
//! stream in both directions, control's log requests to agents and their answers, and the join
//! exchange, plus the join token a joiner presents.
//! Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_api::{AgentToControl, ControlToAgent, wire};
use warren_transport::JoinToken;
use warren_transport::join::{JoinRequest, JoinResponse};

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode::<AgentToControl>(data);
    let _ = wire::decode::<ControlToAgent>(data);
    let _ = wire::decode::<warren_api::logs::AgentLogRequest>(data);
    let _ = wire::decode::<warren_api::logs::AgentLogReply>(data);
    let _ = wire::decode::<JoinRequest>(data);
    let _ = wire::decode::<JoinResponse>(data);

    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<JoinToken>();
});
