//! What each cached value looked like in older cache formats, and how it is read now.
//!
//! The cache writes every value in [`super::FORMAT`]; a value an older build wrote keeps its
//! format byte until it is written again, and postcard can read it only with the layout that
//! wrote it. So every type the cache stores implements [`Cached`], which says how it reads
//! each older format: most types kept their layout; those that embed a spec or changed
//! themselves decode through their old layout (`warren_api::older`) and upgrade.
//!
//! | format | what changed |
//! |---|---|
//! | 1 | (the first) |
//! | 2 | specs with `user`, `group`, `cap_add` (the view); workload records say where and as whom the workload runs |
//! | 3 | views with the WireGuard overlay (`NodeView::mesh`; peers' next keys and endpoints) |
//! | 4 | views with spec format 3 (health-gated rollouts: `UpdateConfig::monitor_ms`, …) |
//! | 5 | views with spec format 4 (`ServiceSpec::metrics`) and their site's metrics endpoints (`NodeView::scrape`) |

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warren_api::older::{NodeViewV1, NodeViewV2, NodeViewV3, NodeViewV4};
use warren_api::{NodeView, ReplicaId};

use super::CacheIdentity;
use crate::planner::RestartBook;
use crate::report::EventBuffer;
use crate::runtime::{Instance, WorkloadRecord};

/// A value the cache stores: its current layout (serde) and how it reads a payload an older
/// cache format wrote.
pub trait Cached: Serialize + DeserializeOwned {
    /// Decodes a payload written in cache format `format`, older than [`super::FORMAT`].
    ///
    /// # Errors
    /// The payload does not decode in that format's layout.
    fn decode_older(format: u8, payload: &[u8]) -> Result<Self, postcard::Error>;
}

/// Types whose layout is the same in every cache format so far.
macro_rules! same_layout_in_every_format {
    ($($t:ty),* $(,)?) => {
        $(impl Cached for $t {
            fn decode_older(_format: u8, payload: &[u8]) -> Result<Self, postcard::Error> {
                postcard::from_bytes(payload)
            }
        })*
    };
}

same_layout_in_every_format!(bool, CacheIdentity, RestartBook, EventBuffer);

impl Cached for NodeView {
    /// Format 1 holds specs of spec format 1: they run as root with every capability, as they
    /// did (`ServiceSpecV1`). Formats 1 and 2 hold peers without WireGuard endpoints or next
    /// keys, and no mesh settings (`NodeViewV2`). Formats 2 and 3 hold specs of spec format 2,
    /// whose rollouts get the default gating (`ServiceSpecV2`). Format 4 holds specs of spec
    /// format 3 and no site metrics endpoints (`NodeViewV4`): none until control sends them.
    fn decode_older(format: u8, payload: &[u8]) -> Result<Self, postcard::Error> {
        match format {
            1 => postcard::from_bytes::<NodeViewV1>(payload).map(NodeView::from),
            2 => postcard::from_bytes::<NodeViewV2>(payload).map(NodeView::from),
            3 => postcard::from_bytes::<NodeViewV3>(payload).map(NodeView::from),
            _ => postcard::from_bytes::<NodeViewV4>(payload).map(NodeView::from),
        }
    }
}

/// [`WorkloadRecord`] as cache format 1 held it: before working dirs and credentials.
#[derive(Deserialize)]
struct WorkloadRecordV1 {
    replica: ReplicaId,
    workload_hash: u64,
    boot_id: String,
    started_at_ms: u64,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    instance: Instance,
}

impl Cached for WorkloadRecord {
    /// A format-1 workload was started by an older agent: it runs as that agent did
    /// (`credentials: None`), in the directory that holds its logs (`<data dir>/workloads/
    /// <replica>`, its default working directory then).
    /// Formats 2 to 4 hold today's layout.
    fn decode_older(format: u8, payload: &[u8]) -> Result<Self, postcard::Error> {
        if format >= 2 {
            return postcard::from_bytes(payload);
        }
        let v1: WorkloadRecordV1 = postcard::from_bytes(payload)?;
        let working_dir = v1
            .stdout_log
            .parent()
            .map_or_else(PathBuf::new, PathBuf::from);
        Ok(WorkloadRecord {
            replica: v1.replica,
            workload_hash: v1.workload_hash,
            boot_id: v1.boot_id,
            started_at_ms: v1.started_at_ms,
            stdout_log: v1.stdout_log,
            stderr_log: v1.stderr_log,
            instance: v1.instance,
            working_dir,
            credentials: None,
        })
    }
}
