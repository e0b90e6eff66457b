//! A bound on how often a node may change its WireGuard declaration in the registry. Each
//! change is a Raft write replicated to every control node and pushed to every agent; a node
//! that declares in a loop (a bug, or a box in someone else's hands) must not turn the log into
//! its diary. A declaration the registry already holds costs nothing and is not counted.
//!
//! Per node: a bucket of [`BURST`] writes that refills one every [`REFILL`]. A real node writes
//! once at its first start, three times per key rotation and once per endpoint change, far
//! inside it; a declaration refused here is sent again at the node's next session.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warren_api::NodeId;

/// Writes a node may make at once.
pub const BURST: u32 = 10;
/// One write comes back this often.
pub const REFILL: Duration = Duration::from_secs(30);

/// The buckets, by node. Soft state: a restarted control node starts them full.
#[derive(Debug, Default)]
pub struct DeclarationLimit {
    buckets: Mutex<HashMap<NodeId, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    since: Instant,
}

impl DeclarationLimit {
    /// Takes one write for `node` at `now`; `false` when its bucket is empty.
    pub fn take(&self, node: NodeId, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(node).or_insert(Bucket {
            tokens: BURST,
            since: now,
        });
        let refills = now.saturating_duration_since(bucket.since).as_secs() / REFILL.as_secs();
        if refills > 0 {
            let refills = u32::try_from(refills).unwrap_or(u32::MAX);
            bucket.tokens = bucket.tokens.saturating_add(refills).min(BURST);
            bucket.since = if bucket.tokens == BURST {
                now
            } else {
                bucket.since + REFILL * refills
            };
        }
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }

    /// Forgets `node` (removed from the cluster).
    pub fn forget(&self, node: NodeId) {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_write_per_refill_per_node() {
        let limit = DeclarationLimit::default();
        let start = Instant::now();
        let (a, b) = (NodeId(1), NodeId(2));
        for _ in 0..BURST {
            assert!(limit.take(a, start));
        }
        assert!(!limit.take(a, start), "the burst is spent");
        assert!(limit.take(b, start), "another node has its own bucket");
        assert!(!limit.take(a, start + REFILL / 2));
        assert!(limit.take(a, start + REFILL), "one write back per refill");
        assert!(!limit.take(a, start + REFILL));
        // A long silence refills the bucket, never beyond the burst.
        let later = start + REFILL * 1000;
        for _ in 0..BURST {
            assert!(limit.take(a, later));
        }
        assert!(!limit.take(a, later));
        limit.forget(a);
        assert!(limit.take(a, later), "a forgotten node starts full");
    }
}
