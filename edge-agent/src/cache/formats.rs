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
//! | 2 | specs with `user`, `group`, `cap_add` (the view) |

use serde::Serialize;
use serde::de::DeserializeOwned;
use warren_api::NodeView;
use warren_api::older::NodeViewV1;

use super::CacheIdentity;
use crate::planner::RestartBook;
use crate::report::EventBuffer;
use crate::runtime::WorkloadRecord;

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

same_layout_in_every_format!(
    bool,
    CacheIdentity,
    RestartBook,
    EventBuffer,
    WorkloadRecord
);

impl Cached for NodeView {
    /// Format 1 holds specs of spec format 1: they run as root with every capability, as they
    /// did (`ServiceSpecV1`).
    fn decode_older(_format: u8, payload: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<NodeViewV1>(payload).map(NodeView::from)
    }
}
