//! Workload logs read for control: the answer to an [`AgentLogRequest`], which control sends on
//! a stream of its own on the agent's connection (the link serves them, `link::session`).
//!
//! The workloads write their log files themselves (`runtime::logs`: the agent is not in the
//! data path, so a workload keeps logging while the agent is down), so the files hold no
//! times. The agent keeps them beside the files, in memory: [`LogTimes`] notes, for each live
//! log file, the file's size and modification time each time it looks (every
//! [`SAMPLE_INTERVAL`] and at every read). A line's time is the modification time the agent
//! saw first for a size that includes the line: the time of the last write of the batch the
//! line came in, exact to within [`SAMPLE_INTERVAL`] while the agent runs. Lines written while
//! the agent was down, or before it first looked, take the time of the first look; a rotated
//! copy keeps the notes of the live file it was copied from (one rotation deep), older copies
//! take their modification time. docs/logs.md says the same for operators.
//!
//! Every answer holds to the request's byte budget (at most [`LOG_REPLY_BYTES_MAX`]), shared
//! evenly between the streams asked for: nothing here buffers more than one answer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use warren_api::ReplicaId;
use warren_api::logs::{
    AgentLogLine, AgentLogReply, AgentLogRequest, LOG_LINE_BYTES_MAX, LOG_REPLICAS_MAX,
    LOG_REPLY_BYTES_MAX, LOG_TAIL_MAX, LogCursor, LogStream, cut_line,
};

use crate::cache::Cache;
use crate::runtime::WorkloadRecord;

#[cfg(test)]
mod tests;

/// How often the agent notes the size and time of every live log file.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Most notes kept per file; past it the oldest is dropped (its lines then take the next
/// note's time, a later one).
pub const MARKS_PER_FILE_MAX: usize = 4096;

/// Most files [`LogTimes`] keeps notes for; past it the notes start again from nothing (a
/// file is noted anew at its next look).
pub const FILES_MAX: usize = 8192;

/// "The file had reached `end` bytes by `time_ms`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    end: u64,
    time_ms: u64,
}

/// The notes of one live log file, and those of its last rotated copy.
#[derive(Clone, Debug, Default)]
struct FileMarks {
    live: Vec<Mark>,
    rotated: Vec<Mark>,
}

impl FileMarks {
    /// Notes that the file is `size` bytes, last written at `mtime_ms`. A file smaller than
    /// noted was rotated (copied to `.1`, then truncated): its notes move to the copy.
    fn observe(&mut self, size: u64, mtime_ms: u64) {
        if self.live.last().is_some_and(|last| size < last.end) {
            self.rotated = std::mem::take(&mut self.live);
        }
        let grew = self.live.last().is_none_or(|last| size > last.end);
        if grew && size > 0 {
            if self.live.len() >= MARKS_PER_FILE_MAX {
                self.live.remove(0);
            }
            // A clock step backwards must not make a later line older than an earlier one.
            let floor = self.live.last().map_or(0, |last| last.time_ms);
            self.live.push(Mark {
                end: size,
                time_ms: mtime_ms.max(floor),
            });
        }
    }
}

/// The time of a line ending at byte `end`: the first note that covers it.
fn time_in(marks: &[Mark], end: u64) -> Option<u64> {
    let index = marks.partition_point(|mark| mark.end < end);
    marks.get(index).map(|mark| mark.time_ms)
}

/// Most log requests an agent answers at once; more wait for a turn (control gives up on one
/// after its deadline). Each holds up to one answer, [`LOG_REPLY_BYTES_MAX`], in memory.
pub const LOG_REQUESTS_AT_ONCE_MAX: usize = 4;

/// When each live log file reached each size, as far as the agent saw (module doc), and the
/// turns of the log requests being answered.
#[derive(Debug)]
pub struct LogTimes {
    files: Mutex<HashMap<PathBuf, FileMarks>>,
    turns: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for LogTimes {
    fn default() -> Self {
        LogTimes {
            files: Mutex::default(),
            turns: std::sync::Arc::new(tokio::sync::Semaphore::new(LOG_REQUESTS_AT_ONCE_MAX)),
        }
    }
}

impl LogTimes {
    /// Notes the size and modification time of `path` now; a missing file is left alone.
    fn observe(&self, path: &Path) {
        let Ok((size, mtime_ms)) = size_and_mtime(path) else {
            return;
        };
        let mut files = self.files.lock().expect("no panic while holding the lock");
        if files.len() >= FILES_MAX && !files.contains_key(path) {
            files.clear();
        }
        files
            .entry(path.to_owned())
            .or_default()
            .observe(size, mtime_ms);
    }

    /// The time of the line ending at `end` in the live file `path` (`rotated`: in its copy
    /// `.1`), if noted.
    fn time_of(&self, path: &Path, rotated: bool, end: u64) -> Option<u64> {
        let files = self.files.lock().expect("no panic while holding the lock");
        let marks = files.get(path)?;
        time_in(if rotated { &marks.rotated } else { &marks.live }, end)
    }

    /// Waits for a turn to answer a log request ([`LOG_REQUESTS_AT_ONCE_MAX`] at once); the
    /// turn ends when the permit is dropped.
    ///
    /// # Cancel safety
    /// Cancel-safe: a cancelled wait takes no turn.
    pub async fn turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.turns
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Notes every log file of the workloads the cache records.
    pub fn sample(&self, cache: &Cache) {
        let records = cache.keys_with_prefix(crate::agent::RECORD_PREFIX);
        let mut seen = Vec::new();
        for key in records {
            if let Ok(Some(record)) = cache.get::<WorkloadRecord>(&key) {
                for path in [&record.stdout_log, &record.stderr_log] {
                    self.observe(path);
                    seen.push(path.clone());
                }
            }
        }
        // Forget the files of replicas that are gone.
        let mut files = self.files.lock().expect("no panic while holding the lock");
        files.retain(|path, _| seen.contains(path));
    }

    /// Answers `request` from the log files of the replicas the cache records. Blocking file
    /// I/O: call it from a blocking task.
    pub fn answer(&self, cache: &Cache, request: &AgentLogRequest) -> AgentLogReply {
        let mut reply = AgentLogReply::default();
        let replicas = &request.replicas[..request.replicas.len().min(LOG_REPLICAS_MAX)];
        let mut streams = Vec::new();
        for replica in replicas {
            match record_of(cache, replica) {
                Some(record) => streams.extend(streams_of(&record)),
                None => reply.missing.push((
                    replica.clone(),
                    "no workload of it on this node (not started yet, or it could not start)"
                        .to_owned(),
                )),
            }
        }
        let budget = u64::from(request.max_bytes.min(LOG_REPLY_BYTES_MAX));
        // Two cursors a replica at most: a longer list is someone else's mistake.
        let after = &request.after[..request.after.len().min(2 * LOG_REPLICAS_MAX)];
        let offsets: Vec<u64> = (streams.iter())
            .map(|stream| {
                (after.iter())
                    .find(|c| c.replica == stream.replica && c.stream == stream.stream)
                    .map_or(0, |c| c.offset)
            })
            .collect();
        let needs: Vec<u64> = (streams.iter().zip(&offsets))
            .map(|(stream, offset)| stream.unread(request.follow.then_some(*offset)))
            .collect();
        let shares = share_budget(&needs, budget);
        let now_ms = warren_api::clock::unix_now_ms();
        let mut cut = Vec::new();
        for ((stream, offset), share) in streams.iter().zip(offsets).zip(shares) {
            let share = share.max(1);
            let read = if request.follow {
                self.read_after(stream, offset, share, now_ms)
            } else {
                self.read_recent(stream, share, now_ms)
            };
            match read {
                Ok(read) => {
                    if read.truncated {
                        let first_ms = read.lines.first().map(|line| line.time_ms);
                        cut.push((stream.replica.clone(), first_ms));
                    }
                    reply.cursors.push(read.cursor);
                    reply.lines.extend(read.lines);
                }
                Err(error) => reply.missing.push((
                    stream.replica.clone(),
                    format!("cannot read {}: {error}", stream.path.display()),
                )),
            }
        }
        select_lines(&mut reply, request);
        reply.truncated = left_lines_out(&cut, &reply.lines, request);
        reply
    }

    /// The newest lines of `stream` that fit `budget`, and the cursor after them.
    fn read_recent(&self, stream: &StreamFile, budget: u64, now_ms: u64) -> io::Result<StreamRead> {
        self.observe(&stream.path);
        let live = read_tail_bytes(&stream.path, budget)?;
        let mut lines = Vec::new();
        let mut truncated = live.skipped_before > 0;
        let rotated_path = rotated(&stream.path);
        let left = budget.saturating_sub(live.bytes.len() as u64);
        if live.skipped_before == 0 && left > 0 && rotated_path.exists() {
            let old = read_tail_bytes(&rotated_path, left)?;
            // Older copies (`.2`, …) are not read.
            truncated = old.skipped_before > 0 || nth_rotated(&stream.path, 2).exists();
            let mtime = size_and_mtime(&rotated_path).map_or(now_ms, |(_, m)| m);
            let old_lines = split_lines(&old.bytes, old.skipped_before, true);
            for (end, text) in without_fragment(old_lines, old.skipped_before) {
                let time_ms = self
                    .time_of(&stream.path, true, end)
                    .unwrap_or(mtime)
                    .min(now_ms);
                lines.push(stream.line(time_ms, text));
            }
        }
        let complete = without_fragment(
            split_lines(&live.bytes, live.skipped_before, false),
            live.skipped_before,
        );
        let offset = complete.last().map_or(live.skipped_before, |(end, _)| *end);
        for (end, text) in complete {
            let time_ms = self.time_of(&stream.path, false, end).unwrap_or(now_ms);
            lines.push(stream.line(time_ms.min(now_ms), text));
        }
        never_backwards(&mut lines);
        Ok(StreamRead {
            lines,
            cursor: stream.cursor(offset),
            truncated,
        })
    }

    /// The lines of `stream` after `offset` that fit `budget`, and the cursor after them. An
    /// offset past the live file's end means it was rotated: the rest of the copy comes first.
    fn read_after(
        &self,
        stream: &StreamFile,
        offset: u64,
        budget: u64,
        now_ms: u64,
    ) -> io::Result<StreamRead> {
        self.observe(&stream.path);
        let (size, _) = size_and_mtime(&stream.path)?;
        let mut lines = Vec::new();
        let mut left = budget;
        let mut offset = offset;
        if offset > size {
            let rotated_path = rotated(&stream.path);
            if let Ok(old) = read_from(&rotated_path, offset, left) {
                left = left.saturating_sub(old.bytes.len() as u64);
                let mtime = size_and_mtime(&rotated_path).map_or(now_ms, |(_, m)| m);
                for (end, text) in split_lines(&old.bytes, offset, true) {
                    let time_ms = self.time_of(&stream.path, true, end).unwrap_or(mtime);
                    lines.push(stream.line(time_ms.min(now_ms), text));
                }
            }
            offset = 0;
        }
        let live = read_from(&stream.path, offset, left)?;
        let mut complete = split_lines(&live.bytes, offset, false);
        // A line longer than the whole budget would never complete within one: cut it.
        if complete.is_empty() && live.bytes.len() as u64 >= left.min(LOG_LINE_BYTES_MAX as u64) {
            complete = split_lines(&live.bytes, offset, true);
        }
        let cursor = complete.last().map_or(offset, |(end, _)| *end);
        for (end, text) in complete {
            let time_ms = self.time_of(&stream.path, false, end).unwrap_or(now_ms);
            lines.push(stream.line(time_ms.min(now_ms), text));
        }
        never_backwards(&mut lines);
        Ok(StreamRead {
            lines,
            cursor: stream.cursor(cursor),
            truncated: live.more_after,
        })
    }
}

/// Notes every workload's log files every [`SAMPLE_INTERVAL`] until `cancel` fires.
pub async fn sample_until_cancelled(
    times: std::sync::Arc<LogTimes>,
    cache: std::sync::Arc<Cache>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(SAMPLE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let (times, cache) = (times.clone(), cache.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || times.sample(&cache)).await {
            tracing::warn!(error = %error, "log sampling task failed");
        }
    }
}

/// Splits `budget` between streams that have `needs` bytes to give: one that needs less than
/// an even share gets what it needs, and what it leaves goes to the others.
fn share_budget(needs: &[u64], budget: u64) -> Vec<u64> {
    let mut shares = vec![0; needs.len()];
    let mut open: Vec<usize> = (0..needs.len()).collect();
    let mut left = budget;
    while !open.is_empty() && left > 0 {
        let even = (left / open.len() as u64).max(1);
        let (small, large): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|i| needs[**i] - shares[**i] <= even);
        if small.is_empty() {
            for i in &large {
                let give = even.min(left);
                shares[*i] += give;
                left -= give;
            }
            break;
        }
        for i in small {
            let give = (needs[i] - shares[i]).min(left);
            shares[i] += give;
            left -= give;
        }
        open = large;
    }
    shares
}

/// Raises each line's time to at least the one before it: a stream's lines were written in
/// file order, and a rotated copy's modification time can exceed the live file's first notes.
/// Interleaving by time then keeps each stream's order.
fn never_backwards(lines: &mut [AgentLogLine]) {
    let mut floor = 0;
    for line in lines {
        line.time_ms = line.time_ms.max(floor);
        floor = line.time_ms;
    }
}

/// Whether the budget left out lines the request wanted, given the streams it `cut` (each with
/// the time of the first line read): a follow's cut stream has more to give; a read's does
/// only when neither `--since` (the read reached older lines) nor `--tail` (the replica has
/// its count) says the lines left out were not wanted anyway.
fn left_lines_out(
    cut: &[(ReplicaId, Option<u64>)],
    lines: &[AgentLogLine],
    request: &AgentLogRequest,
) -> bool {
    if request.follow {
        return !cut.is_empty();
    }
    cut.iter().any(|(replica, first_ms)| {
        let reached_since = request
            .since_ms
            .zip(*first_ms)
            .is_some_and(|(since_ms, first_ms)| first_ms < since_ms);
        let has_tail = request.tail.is_some_and(|tail| {
            lines.iter().filter(|l| l.replica == *replica).count() >= tail as usize
        });
        !reached_since && !has_tail
    })
}

/// Applies `--since` and `--tail` to the lines read, per replica (both streams together).
fn select_lines(reply: &mut AgentLogReply, request: &AgentLogRequest) {
    if let Some(since_ms) = request.since_ms {
        reply.lines.retain(|line| line.time_ms >= since_ms);
    }
    let Some(tail) = request.tail.map(|t| t.min(LOG_TAIL_MAX) as usize) else {
        return;
    };
    let mut by_replica: HashMap<ReplicaId, Vec<AgentLogLine>> = HashMap::new();
    for line in reply.lines.drain(..) {
        by_replica
            .entry(line.replica.clone())
            .or_default()
            .push(line);
    }
    let mut kept = Vec::new();
    for (_, mut lines) in by_replica {
        lines.sort_by_key(|line| line.time_ms);
        let skip = lines.len().saturating_sub(tail);
        kept.extend(lines.into_iter().skip(skip));
    }
    reply.lines = kept;
}

/// One stream of one replica and its live file.
struct StreamFile {
    replica: ReplicaId,
    stream: LogStream,
    path: PathBuf,
}

impl StreamFile {
    /// Bytes there are to read: from `offset` on (a follow), or all that is kept.
    fn unread(&self, offset: Option<u64>) -> u64 {
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let (live, old) = (size(&self.path), size(&rotated(&self.path)));
        match offset {
            None => live + old,
            Some(offset) if offset <= live => live - offset,
            Some(offset) => old.saturating_sub(offset) + live,
        }
    }

    fn line(&self, time_ms: u64, text: String) -> AgentLogLine {
        AgentLogLine {
            replica: self.replica.clone(),
            stream: self.stream,
            time_ms,
            text,
        }
    }

    fn cursor(&self, offset: u64) -> LogCursor {
        LogCursor {
            replica: self.replica.clone(),
            stream: self.stream,
            offset,
        }
    }
}

/// What one read of a stream gave.
struct StreamRead {
    lines: Vec<AgentLogLine>,
    cursor: LogCursor,
    truncated: bool,
}

fn record_of(cache: &Cache, replica: &ReplicaId) -> Option<WorkloadRecord> {
    let key = format!("{}{replica}", crate::agent::RECORD_PREFIX);
    cache.get::<WorkloadRecord>(&key).ok().flatten()
}

/// The streams of a record; one when both go to the same file (a container's).
fn streams_of(record: &WorkloadRecord) -> Vec<StreamFile> {
    let mut streams = vec![StreamFile {
        replica: record.replica.clone(),
        stream: LogStream::Stdout,
        path: record.stdout_log.clone(),
    }];
    if record.stderr_log != record.stdout_log {
        streams.push(StreamFile {
            replica: record.replica.clone(),
            stream: LogStream::Stderr,
            path: record.stderr_log.clone(),
        });
    }
    streams
}

/// `stdout.log` → `stdout.log.1`, the newest rotated copy.
fn rotated(live: &Path) -> PathBuf {
    nth_rotated(live, 1)
}

/// `stdout.log` → `stdout.log.N`.
fn nth_rotated(live: &Path, index: u32) -> PathBuf {
    let mut name = live.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

fn size_and_mtime(path: &Path) -> io::Result<(u64, u64)> {
    let metadata = std::fs::metadata(path)?;
    let mtime_ms = metadata
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Ok((metadata.len(), mtime_ms))
}

/// Bytes read from a file, and where they sit in it.
#[derive(Debug, Default)]
struct FileBytes {
    bytes: Vec<u8>,
    /// Offset of the first byte read (bytes before it were left out).
    skipped_before: u64,
    /// Whether the file goes on past what was read.
    more_after: bool,
}

/// `lines` without the first when the read began mid-file (`start > 0`): that one is the end
/// of a line whose beginning was not read.
fn without_fragment(mut lines: Vec<(u64, String)>, start: u64) -> Vec<(u64, String)> {
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    lines
}

/// The last `budget` bytes of `path` (a missing file reads as empty).
fn read_tail_bytes(path: &Path, budget: u64) -> io::Result<FileBytes> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileBytes::default()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let start = size.saturating_sub(budget);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(size - start).read_to_end(&mut bytes)?;
    Ok(FileBytes {
        bytes,
        skipped_before: start,
        more_after: false,
    })
}

/// At most `budget` bytes of `path` from `offset` on.
fn read_from(path: &Path, offset: u64, budget: u64) -> io::Result<FileBytes> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if offset >= size {
        return Ok(FileBytes {
            skipped_before: offset,
            ..FileBytes::default()
        });
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(budget).read_to_end(&mut bytes)?;
    Ok(FileBytes {
        more_after: offset + (bytes.len() as u64) < size,
        bytes,
        skipped_before: offset,
    })
}

/// The lines of `bytes`, which start at `start` in their file, each with the offset just past
/// its end. A last line without its newline is kept only when `keep_partial`. Lines are cut to
/// [`LOG_LINE_BYTES_MAX`], invalid UTF-8 replaced.
fn split_lines(bytes: &[u8], start: u64, keep_partial: bool) -> Vec<(u64, String)> {
    let mut lines = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let rest = &bytes[position..];
        let (line, consumed) = match rest.iter().position(|b| *b == b'\n') {
            Some(newline) => (&rest[..newline], newline + 1),
            None if keep_partial => (rest, rest.len()),
            None => break,
        };
        position += consumed;
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        lines.push((start + position as u64, cut_line(text)));
    }
    lines
}
