use super::*;

const AFTER: Duration = Duration::from_secs(3);

fn at(start: Instant, ms: u64) -> Instant {
    start + Duration::from_millis(ms)
}

#[test]
fn unknown_until_heard_or_failing_long_enough() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    assert_eq!(book.health(7, t0), Health::Unknown);
    assert_eq!(book.failed(7, t0, "no answer"), None);
    assert_eq!(book.health(7, at(t0, 2_999)), Health::Unknown);
    assert!(matches!(
        book.health(7, at(t0, 3_000)),
        Health::Unreachable { since, last_heard: None, .. } if since == t0
    ));
}

#[test]
fn a_failure_or_two_is_not_down() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    book.failed(7, at(t0, 100), "timeout");
    assert_eq!(
        book.health(7, at(t0, 2_000)),
        Health::Reachable { last_heard: t0 }
    );
    assert_eq!(book.heard(7, at(t0, 2_100)), None, "never reported down");
    assert_eq!(
        book.health(7, at(t0, 9_000)),
        Health::Reachable {
            last_heard: at(t0, 2_100)
        },
        "a success clears the failures"
    );
}

/// A peer that dies is reported once, again at most once a minute, and once when back.
#[test]
fn down_is_logged_once_then_once_a_minute_then_back() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    let mut notices = Vec::new();
    // Calls every 100 ms for two and a half minutes.
    for ms in (100..150_000).step_by(100) {
        notices.extend(book.failed(7, at(t0, ms), "connection lost"));
    }
    notices.extend(book.heard(7, at(t0, 150_000)));
    let kinds: Vec<(&str, u64)> = notices
        .iter()
        .map(|n| match n {
            Notice::Down { failing_for, .. } => ("down", failing_for.as_millis() as u64),
            Notice::StillDown { failing_for, .. } => ("still", failing_for.as_millis() as u64),
            Notice::Back { down_for, .. } => ("back", down_for.as_millis() as u64),
            Notice::Slow { late_calls, .. } => ("slow", u64::from(*late_calls)),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("down", 3_000),
            ("still", 63_000),
            ("still", 123_000),
            ("back", 149_900)
        ]
    );
    assert_eq!(
        book.health(7, at(t0, 150_001)),
        Health::Reachable {
            last_heard: at(t0, 150_000)
        }
    );
}

/// A follower that lets calls time out now and then, but answers, is logged when it
/// answers, with how many were late, at most once a minute.
#[test]
fn a_slow_peer_is_logged_at_most_once_a_minute() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    let mut notices = Vec::new();
    for second in 0..130u64 {
        let now = at(t0, second * 1_000);
        notices.extend(book.late(7, now, "no response within 250ms"));
        notices.extend(book.heard(7, now + Duration::from_millis(300)));
    }
    let late: Vec<u32> = notices
        .iter()
        .map(|n| match n {
            Notice::Slow { late_calls, .. } => *late_calls,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(late, [1, 60, 60]);
    assert_eq!(
        book.health(7, at(t0, 130_000)),
        Health::Reachable {
            last_heard: at(t0, 129_300)
        }
    );
}

/// A peer that dies is reported unreachable, not slow, and its late calls do not come back
/// as "slow" when it returns.
#[test]
fn a_dead_peer_is_not_reported_slow() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    let mut notices = Vec::new();
    for ms in (250..5_000).step_by(250) {
        notices.extend(book.late(7, at(t0, ms), "no response within 250ms"));
    }
    notices.extend(book.heard(7, at(t0, 5_000)));
    notices.extend(book.heard(7, at(t0, 5_100)));
    assert!(
        matches!(notices[..], [Notice::Down { .. }, Notice::Back { .. }]),
        "{notices:?}"
    );
}

#[test]
fn unreachable_shows_the_last_error_and_when_heard() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    book.failed(7, at(t0, 50), "first");
    book.failed(7, at(t0, 4_000), &"x".repeat(1_000));
    match book.health(7, at(t0, 4_000)) {
        Health::Unreachable {
            since,
            last_failed,
            last_heard,
            error,
        } => {
            assert_eq!(since, at(t0, 50));
            assert_eq!(last_failed, at(t0, 4_000));
            assert_eq!(last_heard, Some(t0));
            assert_eq!(error.len(), MAX_ERROR_CHARS, "bounded");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_peer_is_failing_from_its_first_failed_call_until_it_is_heard() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    assert!(!book.failing(7), "never called");
    book.heard(7, t0);
    assert!(!book.failing(7));
    book.failed(7, at(t0, 100), "no answer");
    assert!(book.failing(7), "long before it is unreachable");
    book.heard(7, at(t0, 200));
    assert!(!book.failing(7), "it answered");
}

#[test]
fn an_unreachable_peer_is_skipped_then_asked_again() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.failed(7, t0, "no answer");
    assert!(!book.skip(7, at(t0, 1_000)), "not unreachable yet");
    book.failed(7, at(t0, 3_000), "no answer");
    assert!(book.skip(7, at(t0, 3_001)));
    assert!(book.skip(7, at(t0, 5_999)));
    assert!(!book.skip(7, at(t0, 6_000)), "tried again after a while");
    assert!(!book.skip(8, t0), "never heard of: asked");
}

#[test]
fn api_form_uses_unix_ms() {
    let t0 = Instant::now();
    let health = Health::Unreachable {
        since: at(t0, 1_000),
        last_failed: at(t0, 4_000),
        last_heard: Some(t0),
        error: "gone".into(),
    };
    let contact = health.to_api(9, at(t0, 5_000), 1_700_000_005_000);
    assert_eq!(contact.health, MemberHealth::Unreachable);
    assert_eq!(contact.last_contact_ms, Some(1_700_000_000_000));
    assert_eq!(contact.unreachable_since_ms, Some(1_700_000_001_000));
    assert_eq!(contact.error.as_deref(), Some("gone"));
    assert_eq!(contact.judged_by, NodeId(9));
    assert_eq!(
        Health::Unknown.to_api(9, t0, 5).health,
        MemberHealth::Unknown
    );
}

#[test]
fn retain_forgets_members_that_left() {
    let t0 = Instant::now();
    let mut book = ContactBook::new(AFTER);
    book.heard(7, t0);
    book.heard(8, t0);
    book.retain(|peer| peer == 8);
    assert_eq!(book.health(7, t0), Health::Unknown);
    assert_eq!(book.health(8, t0), Health::Reachable { last_heard: t0 });
}
