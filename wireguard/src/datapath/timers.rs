//! The timer thread: boringtun's timers (handshake retransmits, rekeys, keepalives), the
//! choice of each peer's outbound tunnel, handshakes prepared ahead of a key rotation, and the
//! endpoint fallback.

use std::sync::atomic::Ordering;

use boringtun::noise::TunnResult;

use super::{BUFFER_BYTES, Shared, TIMER_TICK, TableView};
use crate::plan;
use crate::table::{Peer, lock};

/// The timer thread: every [`TIMER_TICK`], run each tunnel's timers and re-decide each peer's
/// outbound tunnel.
pub(crate) fn run_timers(shared: &Shared) {
    let mut view = TableView::new(shared);
    let mut out = vec![0u8; BUFFER_BYTES];
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TIMER_TICK);
        let table = view.current();
        for our in &table.our_keys {
            our.limiter.reset_count();
        }
        for peer in &table.peers {
            tick_peer(shared, peer, &mut out);
        }
    }
}

fn tick_peer(shared: &Shared, peer: &Peer, out: &mut [u8]) {
    let endpoint = peer.live.endpoint();
    for tunnel in &peer.tunnels {
        let result = lock(&tunnel.tunn).update_timers(out);
        if let (TunnResult::WriteToNetwork(bytes), Some(to)) = (result, endpoint) {
            shared.send(bytes, to);
        }
    }
    let views = peer.refresh_outbound();
    let outbound = views[peer.outbound.load(Ordering::Relaxed)];
    // With nowhere to send, a prepared handshake would only sit "in progress" for 90 s.
    if let Some(to) = endpoint {
        for (view, tunnel) in views.iter().zip(&peer.tunnels) {
            if !plan::should_prepare(view, &outbound) {
                continue;
            }
            let result = lock(&tunnel.tunn).format_handshake_initiation(out, false);
            if let TunnResult::WriteToNetwork(bytes) = result {
                shared.send(bytes, to);
            }
        }
    }
    peer.live.tick_endpoint();
}
