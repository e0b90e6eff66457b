//! Human durations (`30s`, `5m`, `1500ms`) to and from `u64` milliseconds.
//!
//! The resource model stores durations as `*_ms: u64` fields because that is what postcard
//! encodes simply and JSON shows plainly; these two functions are the only place that turns
//! them into the text operators type.

use crate::validate::ValidationError;

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses one number followed by one unit: `ms`, `s`, `m`, `h` or `d` (`1500ms`, `30s`, `5m`,
/// `2h`, `1d`). A unit is required, even for zero (`0s`), so that `5` is never silently read
/// as five milliseconds.
///
/// # Errors
/// A [`ValidationError`] on field `duration` for empty input, a missing number or unit, an
/// unknown unit, or a value that overflows `u64` milliseconds.
pub fn parse_duration_ms(input: &str) -> Result<u64, ValidationError> {
    let err = |why: String| {
        ValidationError::new("duration", format!("invalid duration {input:?}: {why}"))
    };
    if input.is_empty() {
        return Err(err("empty".to_owned()));
    }
    let digits_end = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(digits_end);
    if number.is_empty() {
        return Err(err("must start with a number, like 30s".to_owned()));
    }
    if unit.is_empty() {
        return Err(err("missing unit (ms, s, m, h or d)".to_owned()));
    }
    let Some(&(_, unit_ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(err(format!(
            "unknown unit {unit:?} (expected ms, s, m, h or d)"
        )));
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| err("too large".to_owned()))
}

/// Formats milliseconds with the largest unit that divides them exactly, so that
/// `parse_duration_ms(&format_duration_ms(ms)) == Ok(ms)` for every `ms`.
///
/// `0` → `0s`, `1500` → `1500ms`, `90_000` → `90s`, `300_000` → `5m`, `86_400_000` → `1d`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    let (name, unit_ms) = UNITS
        .iter()
        .rev()
        .find(|(_, unit_ms)| ms.is_multiple_of(*unit_ms))
        .copied()
        .unwrap_or(("ms", 1));
    format!("{}{name}", ms / unit_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<u64, &str>) {
        let got = parse_duration_ms(input).map_err(|e| e.to_string());
        match (&got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(*got, want, "{input}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
            _ => panic!("{input}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parse_table() {
        check("1500ms", Ok(1500));
        check("30s", Ok(30_000));
        check("5m", Ok(300_000));
        check("2h", Ok(7_200_000));
        check("1d", Ok(86_400_000));
        check("0s", Ok(0));
        check("007s", Ok(7_000));
        check("", Err("duration: invalid duration \"\": empty"));
        check("5", Err("missing unit"));
        check("s", Err("must start with a number"));
        check("5x", Err("unknown unit \"x\""));
        check("5 s", Err("unknown unit \" s\""));
        check("-5s", Err("must start with a number"));
        check("1.5s", Err("unknown unit \".5s\""));
        check("5M", Err("unknown unit"));
        check("1h30m", Err("unknown unit \"h30m\""));
        check("18446744073709551615ms", Ok(u64::MAX));
        check("18446744073709551616ms", Err("too large"));
        check("213503982335d", Err("too large"));
    }

    #[test]
    fn format_table() {
        for (ms, text) in [
            (0, "0s"),
            (1, "1ms"),
            (1_500, "1500ms"),
            (90_000, "90s"),
            (300_000, "5m"),
            (5_400_000, "90m"),
            (7_200_000, "2h"),
            (172_800_000, "2d"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn format_then_parse_round_trips(ms in any::<u64>()) {
            prop_assert_eq!(parse_duration_ms(&format_duration_ms(ms)).unwrap(), ms);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,12}") {
            let _ = parse_duration_ms(&input);
        }
    }
}
