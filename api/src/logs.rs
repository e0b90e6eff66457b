//! Workload logs read from the centre: what the CLI asks control for ([`LogQuery`], answered
//! with [`LogsReply`]), and what control asks an agent for on a stream of the agent's own
//! connection ([`AgentLogRequest`], answered with [`AgentLogReply`]).
//!
//! Every answer is bounded ([`LOG_REPLY_BYTES_MAX`], [`LOG_TAIL_MAX`], [`LOG_LINE_BYTES_MAX`]);
//! a follow is a series of such answers, each resuming from the [`LogCursor`]s the last one
//! returned, so no end ever buffers more than one answer and any control node can serve the
//! next one (docs/logs.md).
//!
//! The agent-facing types are postcard-encoded: fields and variants follow the rules of
//! [`crate::wire`] (new variants at the end only; any other change needs a new stream
//! protocol).

use serde::{Deserialize, Serialize};

use crate::ids::ReplicaId;
use crate::validate::ValidationError;

/// Most lines `--tail` may ask for.
pub const LOG_TAIL_MAX: u32 = 10_000;
/// Most bytes of log text in one answer, from one agent or from control. A request may ask
/// for less (`max_bytes`), never for more.
pub const LOG_REPLY_BYTES_MAX: u32 = 1024 * 1024;
/// Longest line kept whole; the rest of a longer line is cut and marked with `…`.
pub const LOG_LINE_BYTES_MAX: usize = 16 * 1024;
/// Most replicas one request names.
pub const LOG_REPLICAS_MAX: usize = 1024;

/// Which of a workload's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output (`stdout.log`).
    Stdout,
    /// Standard error (`stderr.log`).
    Stderr,
}

impl LogStream {
    /// Both streams.
    pub const ALL: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Where a reader of one replica's stream stands: the byte offset in its live log file just
/// after the last line it was given. A follow sends it back to get only what came after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// The replica.
    pub replica: ReplicaId,
    /// Its stream.
    pub stream: LogStream,
    /// Offset in the live file (`stdout.log`). An offset past the file's end means the file
    /// was rotated since: the agent reads the rest of the rotated copy first.
    pub offset: u64,
}

/// What the CLI asks for (`POST /services/{service}/logs`, a read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only this replica of the service (`web.0`), all of them when `None`.
    #[serde(default)]
    pub replica: Option<ReplicaId>,
    /// Only lines written at or after this time (unix ms).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only the last this many lines of each replica's output.
    #[serde(default)]
    pub tail: Option<u32>,
    /// A follow's next request: only what came after these positions, and each replica
    /// without a cursor from its start.
    #[serde(default)]
    pub follow: bool,
    /// Where the previous answer ended, per replica and stream.
    #[serde(default)]
    pub after: Vec<LogCursor>,
    /// Bytes of text wanted at most; [`LOG_REPLY_BYTES_MAX`] when `None`.
    #[serde(default)]
    pub max_bytes: Option<u32>,
}

impl LogQuery {
    /// Checks the bounds a request may ask for.
    ///
    /// # Errors
    /// A [`ValidationError`] naming the field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(tail) = self.tail
            && tail > LOG_TAIL_MAX
        {
            return Err(ValidationError::new(
                "tail",
                format!("{tail} lines asked, at most {LOG_TAIL_MAX}"),
            ));
        }
        if let Some(max) = self.max_bytes
            && (max == 0 || max > LOG_REPLY_BYTES_MAX)
        {
            return Err(ValidationError::new(
                "max_bytes",
                format!("{max} asked, between 1 and {LOG_REPLY_BYTES_MAX}"),
            ));
        }
        if self.after.len() > 2 * LOG_REPLICAS_MAX {
            return Err(ValidationError::new(
                "after",
                format!(
                    "{} cursors, at most {}",
                    self.after.len(),
                    2 * LOG_REPLICAS_MAX
                ),
            ));
        }
        Ok(())
    }

    /// The byte budget of the answer.
    pub fn max_bytes(&self) -> u32 {
        self.max_bytes
            .unwrap_or(LOG_REPLY_BYTES_MAX)
            .min(LOG_REPLY_BYTES_MAX)
    }
}

/// One line of a workload's output, as the CLI receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The replica that wrote it.
    pub replica: ReplicaId,
    /// The name of the node it runs on.
    pub node: String,
    /// Which stream.
    pub stream: LogStream,
    /// When it was written (unix ms, the agent's clock; see docs/logs.md for how exact).
    pub time_ms: u64,
    /// The line, without its newline.
    pub text: String,
}

/// A replica whose logs could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsUnavailable {
    /// The replica.
    pub replica: ReplicaId,
    /// The node it is placed on.
    pub node: String,
    /// When control last heard from that node's agent (unix ms, control's clock), if ever.
    pub last_contact_ms: Option<u64>,
    /// Why, in words.
    pub reason: String,
}

/// Control's answer to a [`LogQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The lines, oldest first, interleaved across replicas by time.
    pub lines: Vec<LogLine>,
    /// Where each replica's streams now stand: the next request of a follow sends them back.
    pub cursors: Vec<LogCursor>,
    /// Replicas whose logs could not be read, and why.
    pub unavailable: Vec<LogsUnavailable>,
    /// Whether the byte budget cut the answer: older lines were left out (a read), or newer
    /// lines wait for the next request (a follow).
    pub truncated: bool,
}

/// What control asks an agent for, on a new stream of the agent's connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogRequest {
    /// The replicas (each must be on the agent's node).
    pub replicas: Vec<ReplicaId>,
    /// As [`LogQuery::since_ms`].
    pub since_ms: Option<u64>,
    /// As [`LogQuery::tail`].
    pub tail: Option<u32>,
    /// As [`LogQuery::follow`].
    pub follow: bool,
    /// As [`LogQuery::after`].
    pub after: Vec<LogCursor>,
    /// Bytes of text to send at most (the agent also holds to [`LOG_REPLY_BYTES_MAX`]).
    pub max_bytes: u32,
}

/// One line as an agent sends it (control adds the node's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogLine {
    /// The replica.
    pub replica: ReplicaId,
    /// Which stream.
    pub stream: LogStream,
    /// When it was written (unix ms, the agent's clock).
    pub time_ms: u64,
    /// The line, without its newline.
    pub text: String,
}

/// An agent's answer to an [`AgentLogRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLogReply {
    /// Lines of each replica and stream in file order (not interleaved).
    pub lines: Vec<AgentLogLine>,
    /// Where each stream read now stands.
    pub cursors: Vec<LogCursor>,
    /// Replicas the agent has no logs for, and why (`not on this node`, an I/O error).
    pub missing: Vec<(ReplicaId, String)>,
    /// As [`LogsReply::truncated`].
    pub truncated: bool,
}

/// `line` cut to at most [`LOG_LINE_BYTES_MAX`] bytes at a character boundary, marked `…`
/// when cut.
pub fn cut_line(line: &str) -> String {
    if line.len() <= LOG_LINE_BYTES_MAX {
        return line.to_owned();
    }
    let mut end = LOG_LINE_BYTES_MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: LogQuery, expected: Result<(), &str>) {
        let got = query.validate().map_err(|e| e.to_string());
        match expected {
            Ok(()) => assert!(got.is_ok(), "{got:?}"),
            Err(part) => assert!(got.as_ref().is_err_and(|e| e.contains(part)), "{got:?}"),
        }
    }

    #[test]
    fn bounds_are_checked() {
        check(LogQuery::default(), Ok(()));
        check(
            LogQuery {
                tail: Some(LOG_TAIL_MAX),
                ..LogQuery::default()
            },
            Ok(()),
        );
        check(
            LogQuery {
                tail: Some(LOG_TAIL_MAX + 1),
                ..LogQuery::default()
            },
            Err("tail"),
        );
        check(
            LogQuery {
                max_bytes: Some(0),
                ..LogQuery::default()
            },
            Err("max_bytes"),
        );
        check(
            LogQuery {
                max_bytes: Some(LOG_REPLY_BYTES_MAX + 1),
                ..LogQuery::default()
            },
            Err("max_bytes"),
        );
    }

    #[test]
    fn long_lines_are_cut_at_a_character() {
        assert_eq!(cut_line("short"), "short");
        let long = "é".repeat(LOG_LINE_BYTES_MAX);
        let cut = cut_line(&long);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= LOG_LINE_BYTES_MAX + '…'.len_utf8());
    }

    #[test]
    fn agent_messages_survive_postcard() {
        let request = AgentLogRequest {
            replicas: vec!["web.0".parse().unwrap()],
            since_ms: Some(5),
            tail: None,
            follow: true,
            after: vec![LogCursor {
                replica: "web.0".parse().unwrap(),
                stream: LogStream::Stderr,
                offset: 42,
            }],
            max_bytes: 100,
        };
        let bytes = crate::wire::encode(&request).unwrap();
        assert_eq!(
            crate::wire::decode::<AgentLogRequest>(&bytes).unwrap(),
            request
        );
        for cut in 0..bytes.len() {
            assert!(crate::wire::decode::<AgentLogRequest>(&bytes[..cut]).is_err());
        }
    }
}
