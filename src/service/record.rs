//! What the service knows of one input: the plain records the ledger stores, the job reads and
//! the front-ends keep in memory. They sit below all three so that none imports another for
//! its data.

use crate::failure::{Failure, Reason, Stage};
use crate::processor::ScoredSpan;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// What identifies a file's version without reading it: a change in any of these makes the
/// service look again (and hash the content to tell a touch from a real change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number: a file replaced by a rename is another version.
    pub inode: u64,
}

impl FileStat {
    /// The stat of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            inode: meta.ino(),
        }
    }
}

/// Where an input stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Found complete and handed to a worker; not finished when the daemon last committed.
    Queued,
    /// Failed in a way that may pass (I/O); tried again after a backoff.
    Retry,
    /// Results written and recorded.
    Done,
    /// Given up on, with a quarantine record.
    Quarantined,
    /// Handed to the Redis queue for workers (`daemon.enqueue`).
    Enqueued,
}

impl State {
    /// Every state, in the order metrics and status count them.
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Retry,
        State::Done,
        State::Quarantined,
        State::Enqueued,
    ];

    /// The name the ledger stores.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Retry => "retry",
            State::Done => "done",
            State::Quarantined => "quarantined",
            State::Enqueued => "enqueued",
        }
    }

    /// The state a stored name stands for; anything unknown is redone.
    pub fn parse(text: &str) -> State {
        match text {
            "retry" => State::Retry,
            "done" => State::Done,
            "quarantined" => State::Quarantined,
            "enqueued" => State::Enqueued,
            _ => State::Queued,
        }
    }

    /// Finished: nothing more happens to the input unless it changes.
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Quarantined | State::Enqueued)
    }
}

/// One input as the service knows it: a ledger row, what a finished job leaves, and what a job
/// is told of the input's previous version.
#[derive(Debug, Clone, Default)]
pub struct InputRecord {
    /// The file's stat when it was last examined.
    pub stat: Option<FileStat>,
    /// Its content hash (with its sidecar's) when it was last processed.
    pub hash: Option<String>,
    /// Where it stands; `None` while the ledger has no row for it yet.
    pub state: Option<State>,
    /// Failed tries since it last finished.
    pub attempts: u32,
    /// When a retry is due, milliseconds since the epoch.
    pub next_attempt_ms: Option<i64>,
    /// Files this input produced (proposals and quarantine records), absolute.
    pub outputs: Vec<PathBuf>,
    /// The video ids it owns.
    pub vids: Vec<String>,
    /// Why it last failed, if it did.
    pub reason: Option<Reason>,
}

/// The machine-readable record of why an input (or one video of it) was not processed; written
/// to `quarantine/<vid>.error.json` and kept in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineRecord {
    /// The input file.
    pub input: String,
    /// The video, where one video of a file failed or the file names one.
    pub vid: Option<String>,
    /// A stable code: `bad_magic`, `truncated`, `symlink`, `duplicate_video_id`, ...
    pub reason: Reason,
    /// Where it failed: `check`, `read`, `caption`, `write`, `enqueue`.
    pub stage: Stage,
    /// What a person reads.
    pub message: String,
    /// When, as RFC 3339 UTC.
    pub time: String,
    /// Tries so far, this one included.
    pub attempts: u32,
}

impl QuarantineRecord {
    /// The record of `failure` of `input` (or of its video `vid`) at its `attempts`-th try.
    pub fn new(input: String, vid: Option<String>, failure: Failure, attempts: u32) -> Self {
        QuarantineRecord {
            input,
            vid,
            reason: failure.reason,
            stage: failure.stage,
            message: failure.message,
            time: format_time(now_ms()),
            attempts,
        }
    }
}

/// One video's result as the ledger records it (its proposals become dataset labels).
#[derive(Debug, Clone)]
pub struct VideoResult {
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// Its proposals with their pseudo-queries, best first.
    pub proposals: Vec<ScoredSpan>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 UTC time of a Unix time in milliseconds (`2026-11-27T04:05:06.789Z`).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_time(1_795_752_306_789), "2026-11-27T04:05:06.789Z");
    }
}
