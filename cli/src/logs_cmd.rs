//! `warren service logs NAME` and `warren logs REPLICA`: workload output read from the centre.
//!
//! One request gives the newest lines of every replica asked for, within a byte cap; a follow
//! then asks again every [`FOLLOW_POLL`] with the cursors of the last answer, so it is pulled in
//! bounded answers and survives the loss of the control node it goes through: the client tries
//! the other control nodes it knows, and the cursors say where to resume (docs/logs.md).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use warren_api::ReplicaId;
use warren_api::clock::unix_now_ms;
use warren_api::logs::{LOG_TAIL_MAX, LogCursor, LogLine, LogQuery, LogsReply, LogsUnavailable};
use warren_api::routes::Route;

use crate::client::Client;
use crate::output::{OutputFormat, one_line, out};
use crate::table::age;

/// How long a follow waits between two requests when the last answer was complete.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// Longest wait between two attempts of a follow whose requests fail.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(5);

/// What to read and how to show it: the flags `service logs` and `logs` share.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogFlags {
    /// Keep printing lines as they are written, until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each replica (at most 10000).
    #[arg(long, value_name = "N", value_parser = parse_tail)]
    pub tail: Option<u32>,
    /// Only lines written in the last DUR (`90s`, `10m`, `2h`, `1d`).
    #[arg(long, value_name = "DUR", value_parser = parse_since)]
    pub since: Option<u64>,
    /// Show each line's time (UTC; see docs/logs.md for how exact it is).
    #[arg(short, long)]
    pub timestamps: bool,
}

/// `--tail N`: a count within [`LOG_TAIL_MAX`].
fn parse_tail(text: &str) -> Result<u32, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of lines"))?;
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= LOG_TAIL_MAX)
        .ok_or_else(|| format!("{n} lines: at most {LOG_TAIL_MAX}"))
}

/// `--since DUR`: a duration, in milliseconds.
fn parse_since(text: &str) -> Result<u64, String> {
    warren_api::parse_duration_ms(text).map_err(|e| e.message)
}

/// `--replica R` of `service logs NAME`: `NAME.SLOT`, a bare slot, or a node id (16 hex digits,
/// a global service's replica).
///
/// # Errors
/// R names another service, or is none of those forms.
pub fn replica_of(service: &str, text: &str) -> Result<ReplicaId> {
    let full = if text.contains('.') {
        text.to_owned()
    } else {
        format!("{service}.{text}")
    };
    let replica: ReplicaId = full
        .parse()
        .map_err(|e: warren_api::ValidationError| anyhow::anyhow!("--replica: {}", e.message))?;
    if replica.service.as_str() != service {
        bail!("--replica: {replica} is not a replica of service {service}");
    }
    Ok(replica)
}

/// `warren logs REPLICA`'s argument.
///
/// # Errors
/// Not `SERVICE.SLOT` or `SERVICE.NODE_ID`.
pub fn parse_replica(text: &str) -> Result<ReplicaId, String> {
    text.parse()
        .map_err(|e: warren_api::ValidationError| e.message)
}

/// `warren logs REPLICA`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The replica: `SERVICE.SLOT` (`web.1`) or `SERVICE.NODE_ID` for a global service.
    #[arg(value_parser = parse_replica)]
    pub replica: ReplicaId,
    #[command(flatten)]
    pub flags: LogFlags,
    // Last: its help heading applies to the arguments after it.
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
}

/// What has been said on stderr already, so that a follow says it once.
#[derive(Default)]
struct Said {
    unavailable: BTreeSet<(String, String)>,
}

/// `warren service logs NAME [--replica R]`.
///
/// # Errors
/// As [`run`], and an `R` that names no replica of `service`.
pub async fn run_for_service(
    client: &Client,
    format: OutputFormat,
    service: &str,
    replica: Option<String>,
    flags: &LogFlags,
) -> Result<()> {
    let replica = (replica.as_deref())
        .map(|r| replica_of(service, r))
        .transpose()?;
    run(client, format, service, replica, flags).await
}

/// Prints the logs of `service` (one replica of it with `replica`) as `flags` say.
///
/// # Errors
/// The control plane cannot be reached for the first answer, the service or replica does not
/// exist, or no replica's logs could be read.
pub async fn run(
    client: &Client,
    format: OutputFormat,
    service: &str,
    replica: Option<ReplicaId>,
    flags: &LogFlags,
) -> Result<()> {
    let mut query = LogQuery {
        replica,
        since_ms: flags.since.map(|ago| unix_now_ms().saturating_sub(ago)),
        tail: flags.tail,
        ..LogQuery::default()
    };
    let mut said = Said::default();
    let reply = fetch(client, service, &query).await?;
    show(format, flags, &reply, &mut said);
    if reply.truncated {
        eprintln!(
            "note: output cut at {} KiB, the most one answer holds; narrow it with --tail or --since",
            query.max_bytes() / 1024
        );
    }
    if reply.cursors.is_empty() && !reply.unavailable.is_empty() {
        bail!("no logs could be read: no replica's logs are available (see the warnings above)");
    }
    if !flags.follow {
        return Ok(());
    }
    query.tail = None;
    query.follow = true;
    query.after = reply.cursors;
    follow(client, format, flags, service, query, &mut said).await
}

/// Asks again and again with the last cursors; never returns but with an error that is not
/// the control plane's absence (which it waits out).
async fn follow(
    client: &Client,
    format: OutputFormat,
    flags: &LogFlags,
    service: &str,
    mut query: LogQuery,
    said: &mut Said,
) -> Result<()> {
    let mut retry = FOLLOW_POLL;
    let mut failing = false;
    loop {
        match fetch(client, service, &query).await {
            Ok(reply) => {
                if failing {
                    eprintln!("note: control plane reached again; resuming");
                    failing = false;
                }
                retry = FOLLOW_POLL;
                show(format, flags, &reply, said);
                merge_cursors(&mut query.after, reply.cursors);
                if reply.truncated {
                    continue;
                }
            }
            Err(error) if is_gone(&error) => return Err(error),
            Err(error) => {
                if !failing {
                    eprintln!("warning: {}; retrying", one_line(&error));
                    failing = true;
                }
                retry = (retry * 2).min(FOLLOW_RETRY_MAX);
                tokio::time::sleep(retry).await;
                continue;
            }
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// Whether a follow's error means there is nothing more to follow (the service or replica was
/// removed, the request is refused), rather than an unreachable control plane.
fn is_gone(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<crate::client::ApiError>()
        .is_some_and(|e| matches!(e.status.as_u16(), 400 | 403 | 404))
}

async fn fetch(client: &Client, service: &str, query: &LogQuery) -> Result<LogsReply> {
    let route = Route::ServiceLogs { service };
    client.request_json(route, query).await?.json()
}

/// Replaces each cursor of `after` by its newer value from `newer`, adding new ones.
fn merge_cursors(after: &mut Vec<LogCursor>, newer: Vec<LogCursor>) {
    for cursor in newer {
        match after
            .iter_mut()
            .find(|c| c.replica == cursor.replica && c.stream == cursor.stream)
        {
            Some(held) => *held = cursor,
            None => after.push(cursor),
        }
    }
}

/// Prints an answer's lines on stdout, and its unavailable replicas (once each) on stderr.
fn show(format: OutputFormat, flags: &LogFlags, reply: &LogsReply, said: &mut Said) {
    let mut text = String::new();
    for line in &reply.lines {
        text.push_str(&render_line(format, flags.timestamps, line));
        text.push('\n');
    }
    out(&text);
    for unavailable in &reply.unavailable {
        let key = (unavailable.replica.to_string(), unavailable.reason.clone());
        if said.unavailable.insert(key) {
            eprintln!("{}", render_unavailable(unavailable, unix_now_ms()));
        }
    }
}

/// `web.1@edge-1 | text`, with the time first for `--timestamps`; a JSON object for `-o json`.
fn render_line(format: OutputFormat, timestamps: bool, line: &LogLine) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string(line).expect("a log line encodes as JSON"),
        OutputFormat::Table if timestamps => format!(
            "{} {}@{} | {}",
            utc(line.time_ms),
            line.replica,
            line.node,
            line.text
        ),
        OutputFormat::Table => format!("{}@{} | {}", line.replica, line.node, line.text),
    }
}

/// `warning: logs of web.1@edge-2 unavailable: … (agent last heard from 2m ago, at …)`.
fn render_unavailable(unavailable: &LogsUnavailable, now_ms: u64) -> String {
    let since = match unavailable.last_contact_ms {
        Some(at) => format!(
            " (agent last heard from {} ago, at {})",
            age(now_ms, at),
            utc(at)
        ),
        None => String::new(),
    };
    format!(
        "warning: logs of {}@{} unavailable: {}{since}",
        unavailable.replica, unavailable.node, unavailable.reason
    )
}

/// Unix milliseconds as `2026-12-06T21:40:05.123Z`.
fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, in_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_since_parse_with_their_limits() {
        assert_eq!(parse_tail("10"), Ok(10));
        assert_eq!(parse_tail("10000"), Ok(10_000));
        assert!(parse_tail("10001").unwrap_err().contains("at most 10000"));
        assert!(parse_tail("99999999999999999999").is_err());
        assert!(parse_tail("-1").unwrap_err().contains("not a number"));
        assert_eq!(parse_since("90s"), Ok(90_000));
        assert!(parse_since("5 minutes").is_err());
        assert!(parse_since("").is_err());
    }

    #[test]
    fn replicas_parse_in_every_form() {
        let check = |text: &str, expected: Result<&str, &str>| {
            let got = replica_of("web", text).map(|r| r.to_string());
            match expected {
                Ok(want) => assert_eq!(got.unwrap(), want),
                Err(part) => {
                    let error = got.unwrap_err().to_string();
                    assert!(error.contains(part), "{error}");
                }
            }
        };
        check("0", Ok("web.0"));
        check("web.3", Ok("web.3"));
        check("00000000000000ff", Ok("web.00000000000000ff"));
        check("api.0", Err("not a replica of service web"));
        check("x", Err("--replica"));
        assert!(parse_replica("web").is_err());
        assert!(parse_replica("web.1").is_ok());
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_796_593_205_007), "2026-12-06T21:40:05.007Z");
    }

    #[test]
    fn cursors_move_forward_in_place() {
        let cursor = |replica: &str, offset| LogCursor {
            replica: replica.parse().unwrap(),
            stream: warren_api::logs::LogStream::Stdout,
            offset,
        };
        let mut after = vec![cursor("web.0", 5)];
        merge_cursors(&mut after, vec![cursor("web.0", 9), cursor("web.1", 1)]);
        assert_eq!(after, [cursor("web.0", 9), cursor("web.1", 1)]);
    }

    #[test]
    fn lines_carry_replica_and_node() {
        let line = LogLine {
            replica: "web.0".parse().unwrap(),
            node: "edge-1".to_owned(),
            stream: warren_api::logs::LogStream::Stdout,
            time_ms: 0,
            text: "hello".to_owned(),
        };
        assert_eq!(
            render_line(OutputFormat::Table, false, &line),
            "web.0@edge-1 | hello"
        );
        assert_eq!(
            render_line(OutputFormat::Table, true, &line),
            "1970-01-01T00:00:00.000Z web.0@edge-1 | hello"
        );
        assert!(render_line(OutputFormat::Json, false, &line).starts_with('{'));
    }
}
