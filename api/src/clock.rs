//! The wall clock, in one place for every Warren crate.
//!
//! Nothing else in `api` calls it: the pure functions here take times as arguments, so that
//! they stay pure. The crates above read the time through these two functions only, so that
//! "now" means the same everywhere and has one name.

use std::time::{SystemTime, UNIX_EPOCH};

/// The unix time now, in milliseconds (0 if the clock is before 1970).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The unix time now, in seconds (0 if the clock is before 1970), as certificates count it.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
