//! Which spec format each stretch of the Raft log was written in.
//!
//! A log entry is openraft's `Entry` as postcard wrote it, with no format number of its own,
//! and postcard can only read bytes with the layout that wrote them. So the store records, in
//! its metadata, the index from which each spec format ([`warren_api::older`]) was written:
//! `[(0, 1), (1042, 2)]` says entries 0 to 1041 hold format-1 specs. Opening a log whose last
//! stretch is older than this build's [`SPEC_FORMAT`] starts a new stretch at the next index;
//! truncating or appending below it moves the start back, since every entry from there on is
//! (re)written by this build. Pure: the store persists the value.

use serde::{Deserialize, Serialize};
use warren_api::older::SPEC_FORMAT;

/// The stretches of the log by spec format. Never empty; starts and formats both ascend; the
/// last stretch may be older than [`SPEC_FORMAT`] only until [`LogFormats::opened`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogFormats {
    /// `(first index, spec format)`.
    starts: Vec<(u64, u32)>,
}

impl LogFormats {
    /// A log written by this build from its first entry on.
    pub(crate) fn current() -> Self {
        LogFormats {
            starts: vec![(0, SPEC_FORMAT)],
        }
    }

    /// A log written before formats were recorded (store layout 1): spec format 1 throughout.
    pub(crate) fn before_recording() -> Self {
        LogFormats {
            starts: vec![(0, 1)],
        }
    }

    /// The spec format of the entry at `index`.
    pub(crate) fn format_at(&self, index: u64) -> u32 {
        self.starts
            .iter()
            .rev()
            .find(|(start, _)| *start <= index)
            .or(self.starts.first())
            .map_or(SPEC_FORMAT, |(_, format)| *format)
    }

    /// The newest format recorded; more than [`SPEC_FORMAT`] means a newer build wrote it.
    pub(crate) fn newest(&self) -> (u64, u32) {
        *self.starts.last().expect("never empty")
    }

    /// Opened by this build with `next_index` the index the next entry gets: entries from there
    /// on will be in [`SPEC_FORMAT`]. Returns whether anything changed (to persist).
    pub(crate) fn opened(&mut self, next_index: u64) -> bool {
        if self.newest().1 >= SPEC_FORMAT {
            return false;
        }
        self.starts.push((next_index, SPEC_FORMAT));
        true
    }

    /// Every entry from `index` on is gone or about to be written by this build (a truncation,
    /// or an append starting there). Returns whether anything changed (to persist first).
    pub(crate) fn written_from(&mut self, index: u64) -> bool {
        // Formats ascend and this build's is the newest: once `index` is in it, so is the rest.
        if self.format_at(index) == SPEC_FORMAT {
            return false;
        }
        self.starts.retain(|(start, _)| *start < index);
        self.starts.push((index, SPEC_FORMAT));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_log_is_current_throughout() {
        let mut formats = LogFormats::current();
        assert_eq!(formats.format_at(0), SPEC_FORMAT);
        assert_eq!(formats.format_at(u64::MAX), SPEC_FORMAT);
        assert!(!formats.opened(17));
        assert!(!formats.written_from(3));
        assert_eq!(formats, LogFormats::current());
    }

    #[test]
    fn an_older_log_is_read_in_its_format_until_this_build_writes() {
        let mut formats = LogFormats::before_recording();
        assert!(formats.opened(10));
        assert!(!formats.opened(12), "a second open changes nothing");
        for index in [0, 5, 9] {
            assert_eq!(formats.format_at(index), 1, "{index}");
        }
        for index in [10, 11, 1_000] {
            assert_eq!(formats.format_at(index), SPEC_FORMAT, "{index}");
        }
        // A new leader's log wins over entries 7 to 9: they are truncated and rewritten.
        assert!(formats.written_from(7));
        assert_eq!(formats.format_at(6), 1);
        assert_eq!(formats.format_at(7), SPEC_FORMAT);
        assert!(!formats.written_from(8), "already current from 7 on");
        // Truncating all of it leaves no older stretch behind.
        assert!(formats.written_from(0));
        assert_eq!(formats, LogFormats::current());
    }

    #[test]
    fn round_trips_through_postcard() {
        let mut formats = LogFormats::before_recording();
        formats.opened(42);
        let bytes = postcard::to_allocvec(&formats).unwrap();
        assert_eq!(postcard::from_bytes::<LogFormats>(&bytes).unwrap(), formats);
    }
}
