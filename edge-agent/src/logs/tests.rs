use std::io::Write;

use super::*;

fn stream(dir: &Path) -> StreamFile {
    StreamFile {
        replica: "web.0".parse().expect("literal replica"),
        stream: LogStream::Stdout,
        path: dir.join("stdout.log"),
    }
}

fn texts(read: &StreamRead) -> Vec<&str> {
    read.lines.iter().map(|l| l.text.as_str()).collect()
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_line_takes_the_first_note_that_covers_it() {
    let mut marks = FileMarks::default();
    marks.observe(10, 1_000);
    marks.observe(10, 2_000); // no growth: no note
    marks.observe(25, 3_000);
    assert_eq!(time_in(&marks.live, 4), Some(1_000));
    assert_eq!(time_in(&marks.live, 10), Some(1_000));
    assert_eq!(time_in(&marks.live, 11), Some(3_000));
    assert_eq!(time_in(&marks.live, 26), None);
    // A clock stepping back does not reorder lines.
    marks.observe(30, 500);
    assert_eq!(time_in(&marks.live, 30), Some(3_000));
    // Truncation is a rotation: the notes move to the copy.
    marks.observe(5, 4_000);
    assert_eq!(time_in(&marks.rotated, 11), Some(3_000));
    assert_eq!(time_in(&marks.live, 5), Some(4_000));
}

#[test]
fn notes_per_file_are_bounded() {
    let mut marks = FileMarks::default();
    for size in 1..=(MARKS_PER_FILE_MAX as u64 + 10) {
        marks.observe(size, size);
    }
    assert_eq!(marks.live.len(), MARKS_PER_FILE_MAX);
    // The oldest lines take the oldest kept note's time.
    assert_eq!(time_in(&marks.live, 1), Some(11));
}

#[test]
fn lines_split_with_their_end_offsets() {
    assert_eq!(
        split_lines(b"a\nbb\r\nc", 10, false),
        vec![(12, "a".to_owned()), (16, "bb".to_owned())]
    );
    assert_eq!(
        split_lines(b"a\nc", 0, true).last(),
        Some(&(3, "c".to_owned()))
    );
    assert_eq!(
        split_lines(b"\xff\n", 0, false),
        vec![(2, "\u{fffd}".to_owned())]
    );
    assert!(split_lines(b"", 0, true).is_empty());
}

#[test]
fn recent_lines_fit_the_budget_and_skip_the_cut_line() {
    let dir = tempfile::tempdir().unwrap();
    let stream = stream(dir.path());
    append(&stream.path, "one\ntwo\nthree\npartial");
    let times = LogTimes::default();
    let read = times.read_recent(&stream, 1024, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["one", "two", "three"]);
    assert!(!read.truncated);
    assert_eq!(read.cursor.offset, 14);
    // 12 bytes from the end start inside "three": that fragment is left out.
    let read = times.read_recent(&stream, 12, u64::MAX).unwrap();
    assert!(read.truncated);
    assert!(texts(&read).is_empty(), "{:?}", texts(&read));
    let read = times.read_recent(&stream, 16, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["three"]);
}

#[test]
fn a_follow_resumes_after_its_cursor_and_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let stream = stream(dir.path());
    append(&stream.path, "one\ntwo\n");
    let times = LogTimes::default();
    let read = times.read_after(&stream, 0, 1024, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["one", "two"]);
    let cursor = read.cursor.offset;
    assert_eq!(
        times
            .read_after(&stream, cursor, 1024, u64::MAX)
            .unwrap()
            .lines
            .len(),
        0
    );
    append(&stream.path, "three\nfour\nfi");
    let read = times.read_after(&stream, cursor, 1024, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["three", "four"]);
    let cursor = read.cursor.offset;
    // Rotation by copy-truncate, then more lines.
    append(&stream.path, "ve\n");
    assert!(crate::runtime::logs::rotate_if_larger(&stream.path, 1, 3).unwrap());
    append(&stream.path, "six\n");
    let read = times.read_after(&stream, cursor, 1024, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["five", "six"]);
    assert_eq!(read.cursor.offset, 4);
}

#[test]
fn a_follow_is_pulled_in_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let stream = stream(dir.path());
    append(&stream.path, "aaaa\nbbbb\ncccc\n");
    let times = LogTimes::default();
    let read = times.read_after(&stream, 0, 11, u64::MAX).unwrap();
    assert_eq!(texts(&read), ["aaaa", "bbbb"]);
    assert!(read.truncated);
    let read = times
        .read_after(&stream, read.cursor.offset, 11, u64::MAX)
        .unwrap();
    assert_eq!(texts(&read), ["cccc"]);
    assert!(!read.truncated);
}

#[test]
fn tail_and_since_apply_per_replica() {
    let line = |replica: &str, time_ms, text: &str| AgentLogLine {
        replica: replica.parse().unwrap(),
        stream: LogStream::Stdout,
        time_ms,
        text: text.to_owned(),
    };
    let mut reply = AgentLogReply {
        lines: vec![
            line("web.0", 1, "a"),
            line("web.0", 2, "b"),
            line("web.0", 3, "c"),
            line("web.1", 1, "x"),
        ],
        ..AgentLogReply::default()
    };
    let request = AgentLogRequest {
        replicas: Vec::new(),
        since_ms: Some(2),
        tail: Some(1),
        follow: false,
        after: Vec::new(),
        max_bytes: 100,
    };
    select_lines(&mut reply, &request);
    let texts: Vec<&str> = reply.lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["c"]);
}

#[test]
fn the_budget_goes_where_the_bytes_are() {
    assert_eq!(share_budget(&[0, 5_000], 1_000), [0, 1_000]);
    assert_eq!(share_budget(&[100, 5_000, 5_000], 1_000), [100, 450, 450]);
    assert_eq!(share_budget(&[10, 20], 1_000), [10, 20]);
    assert_eq!(share_budget(&[], 1_000), Vec::<u64>::new());
    assert_eq!(share_budget(&[5, 5], 0), [0, 0]);
    let shares = share_budget(&[7; 3], 10);
    assert!(shares.iter().sum::<u64>() <= 10, "{shares:?}");
}

#[test]
fn a_cut_read_says_so_only_when_wanted_lines_were_left_out() {
    let replica: ReplicaId = "web.0".parse().unwrap();
    let lines: Vec<AgentLogLine> = (10..13)
        .map(|time_ms| AgentLogLine {
            replica: replica.clone(),
            stream: LogStream::Stdout,
            time_ms,
            text: String::new(),
        })
        .collect();
    let request = |since_ms, tail, follow| AgentLogRequest {
        replicas: Vec::new(),
        since_ms,
        tail,
        follow,
        after: Vec::new(),
        max_bytes: 100,
    };
    let cut = [(replica.clone(), Some(10))];
    assert!(left_lines_out(&cut, &lines, &request(None, None, false)));
    assert!(!left_lines_out(&[], &lines, &request(None, None, false)));
    // The three lines asked for are there.
    assert!(!left_lines_out(
        &cut,
        &lines,
        &request(None, Some(3), false)
    ));
    assert!(left_lines_out(&cut, &lines, &request(None, Some(4), false)));
    // The read reached lines older than --since.
    assert!(!left_lines_out(
        &cut,
        &lines,
        &request(Some(11), None, false)
    ));
    assert!(left_lines_out(&cut, &lines, &request(Some(5), None, false)));
    // A follow's cut stream has more to give, whatever it asked.
    assert!(left_lines_out(&cut, &lines, &request(None, Some(1), true)));
}
