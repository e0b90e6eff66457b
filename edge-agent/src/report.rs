//! Status going up: the replicas' actual state and the events the agent buffers until it can
//! send them.
//!
//! The reconcile loop writes into a [`Reporter`] (replica states after every pass, events as
//! they happen); the link reads a [`StatusReport`] from it whenever it changed and when a
//! session starts, and commits the events once they are on the stream. Events are bounded
//! ([`EVENTS_BUFFERED`]): when the agent is cut off long enough, the oldest are dropped and
//! counted, and the count goes up with the next report. The buffer is stored in the cache, so
//! events from before a reboot while cut off still reach control.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::warn;
use warren_api::wire::{ListenerStatus, MAX_EVENTS_PER_REPORT, StatusReport};
use warren_api::{Event, NodeId, ReplicaStatus, Revision};

use crate::cache::Cache;

/// Most events the agent holds while it cannot send them; older ones are dropped and counted.
pub const EVENTS_BUFFERED: usize = 1024;

const EVENTS_KEY: &str = "events";

/// The event buffer as stored in the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventBuffer {
    /// Sequence number of the first event in `events`.
    first_seq: u64,
    events: VecDeque<Event>,
    /// Dropped since the last report that was sent.
    dropped: u64,
}

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    replicas: Vec<ReplicaStatus>,
    buffer: EventBuffer,
    listeners: Vec<ListenerStatus>,
    /// Bumped on every change of `listeners` (0: never set), so the link can tell whether a
    /// session has sent the latest.
    listeners_version: u64,
}

/// What [`Reporter::commit`] needs to know of a report taken with [`Reporter::take`].
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    /// Sequence number after the last event the report carries.
    end_seq: u64,
    dropped: u64,
}

/// Shared between the reconcile loop (writer) and the link (reader).
#[derive(Debug)]
pub struct Reporter {
    node_id: NodeId,
    cache: Arc<Cache>,
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Reporter {
    /// A reporter for `node_id`, with the events left in `cache` by an earlier run.
    pub fn open(node_id: NodeId, cache: Arc<Cache>) -> Self {
        let buffer = match cache.get::<EventBuffer>(EVENTS_KEY) {
            Ok(found) => found.unwrap_or_default(),
            Err(error) => {
                warn!(error = %error, "buffered events unreadable; starting afresh");
                EventBuffer::default()
            }
        };
        Reporter {
            node_id,
            cache,
            inner: Mutex::new(Inner {
                buffer,
                ..Inner::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("reporter lock is not poisoned")
    }

    fn store(&self, buffer: &EventBuffer) {
        // Not flushed: sled's own flush interval bounds what a power cut loses, and events are
        // a record of what happened, not state anything depends on.
        if let Err(error) = self.cache.put(EVENTS_KEY, buffer) {
            warn!(error = %error, "cannot store buffered events");
        }
    }

    /// Sets the replicas' states after a reconcile pass; wakes the link if they changed.
    pub fn set_replicas(&self, revision: Revision, replicas: Vec<ReplicaStatus>) {
        let mut inner = self.lock();
        if inner.revision == revision && inner.replicas == replicas {
            return;
        }
        inner.revision = revision;
        inner.replicas = replicas;
        drop(inner);
        self.changed.notify_one();
    }

    /// Sets the listeners' states; wakes the link if they changed.
    pub fn set_listeners(&self, listeners: Vec<ListenerStatus>) {
        let mut inner = self.lock();
        if inner.listeners == listeners {
            return;
        }
        inner.listeners = listeners;
        inner.listeners_version += 1;
        drop(inner);
        self.changed.notify_one();
    }

    /// The listeners' states and their version, if newer than `version` (0 before any was
    /// sent).
    pub fn listeners_after(&self, version: u64) -> Option<(u64, Vec<ListenerStatus>)> {
        let inner = self.lock();
        (inner.listeners_version > version)
            .then(|| (inner.listeners_version, inner.listeners.clone()))
    }

    /// Buffers events (dropping the oldest beyond [`EVENTS_BUFFERED`]) and wakes the link.
    pub fn push_events(&self, events: impl IntoIterator<Item = Event>) {
        let mut inner = self.lock();
        let mut any = false;
        for event in events {
            any = true;
            let buffer = &mut inner.buffer;
            if buffer.events.len() == EVENTS_BUFFERED {
                buffer.events.pop_front();
                buffer.first_seq += 1;
                buffer.dropped += 1;
            }
            buffer.events.push_back(event);
        }
        if !any {
            return;
        }
        let buffer = inner.buffer.clone();
        drop(inner);
        self.store(&buffer);
        self.changed.notify_one();
    }

    /// Waits until something changed since the last wake-up.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change that arrives meanwhile wakes the next call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The report to send now: every replica and the oldest buffered events (at most
    /// [`MAX_EVENTS_PER_REPORT`]). Nothing leaves the buffer until [`Reporter::commit`].
    pub fn take(&self) -> (StatusReport, Receipt) {
        let inner = self.lock();
        let events: Vec<Event> = inner
            .buffer
            .events
            .iter()
            .take(MAX_EVENTS_PER_REPORT)
            .cloned()
            .collect();
        let end_seq = inner.buffer.first_seq + events.len() as u64;
        let report = StatusReport {
            node_id: self.node_id,
            revision: inner.revision,
            replicas: inner.replicas.clone(),
            events,
            events_dropped: inner.buffer.dropped,
        };
        let receipt = Receipt {
            end_seq,
            dropped: inner.buffer.dropped,
        };
        (report, receipt)
    }

    /// The report was sent: forget its events and its drop count. Returns whether more events
    /// wait (send another report).
    pub fn commit(&self, sent: Receipt) -> bool {
        let mut inner = self.lock();
        let buffer = &mut inner.buffer;
        // Events dropped since `take` shifted the window; drop only what is still there.
        while buffer.first_seq < sent.end_seq && !buffer.events.is_empty() {
            buffer.events.pop_front();
            buffer.first_seq += 1;
        }
        buffer.dropped = buffer.dropped.saturating_sub(sent.dropped);
        let more = !buffer.events.is_empty();
        let buffer = buffer.clone();
        drop(inner);
        self.store(&buffer);
        more
    }

    /// Events waiting to be sent.
    pub fn buffered(&self) -> usize {
        self.lock().buffer.events.len()
    }

    /// Forgets every buffered event (the node was removed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.buffer = EventBuffer::default();
        inner.replicas.clear();
        drop(inner);
        if let Err(error) = self.cache.remove(EVENTS_KEY) {
            warn!(error = %error, "cannot forget buffered events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheTuning;
    use warren_api::EventKind;

    fn event(at_ms: u64) -> Event {
        Event {
            at_ms,
            replica: None,
            kind: EventKind::LinkLost,
            message: "link lost".into(),
        }
    }

    fn reporter(dir: &std::path::Path) -> Reporter {
        let cache = Cache::open(dir, CacheTuning::default()).unwrap();
        Reporter::open(NodeId(9), Arc::new(cache))
    }

    #[test]
    fn events_stay_until_committed_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let r = reporter(dir.path());
            r.push_events([event(1), event(2)]);
            let (report, _) = r.take();
            assert_eq!(report.events.len(), 2);
            assert_eq!(r.buffered(), 2, "nothing leaves before commit");
        }
        let r = reporter(dir.path());
        assert_eq!(r.buffered(), 2, "buffered events survive a restart");
        let (_, receipt) = r.take();
        r.push_events([event(3)]);
        assert!(r.commit(receipt), "event 3 still waits");
        let (next, receipt) = r.take();
        assert_eq!(next.events, vec![event(3)]);
        assert!(!r.commit(receipt));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = reporter(dir.path());
        r.push_events((0..EVENTS_BUFFERED as u64 + 5).map(event));
        let (report, receipt) = r.take();
        assert_eq!(report.events_dropped, 5);
        assert_eq!(report.events[0].at_ms, 5);
        // Overflow between take and commit: the window shifted, the rest is kept.
        r.push_events([event(10_000), event(10_001)]);
        r.commit(receipt);
        let (next, _) = r.take();
        assert_eq!(next.events_dropped, 2);
        assert_eq!(
            next.events.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![10_000, 10_001]
        );
    }

    #[test]
    fn unchanged_replicas_do_not_wake_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let r = reporter(dir.path());
        r.set_replicas(Revision(1), vec![]);
        let woke = futures_ready(&r);
        assert!(woke, "the first set wakes");
        r.set_replicas(Revision(1), vec![]);
        assert!(!futures_ready(&r), "an identical set does not");
    }

    fn futures_ready(r: &Reporter) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(10), r.changed())
                .await
                .is_ok()
        })
    }
}
