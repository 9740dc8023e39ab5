//! Group commits: finished inputs' changes and their staged results wait here until one
//! commit makes the results durable and visible and records them in the ledger, then the
//! dataset shards are rewritten from it. The daemon and the queue worker both record through
//! this, so a result is committed the same way however its input arrived.

use super::job::{Outcome, Results};
use super::ledger::{Change, Ledger, Refused};
use super::metrics::Metrics;
use super::record::{FileStat, InputRecord, State};
use super::{shards, Folders};
use crate::config::DaemonConfig;
use crate::failure::Reason;
use crate::fsio::{sync_dir, sync_filesystem, Staged};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How soon a commit or a shard flush should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// When the group is due (`commit_ms`, `commit_max`; `shard_flush_ms`).
    WhenDue,
    /// Nothing more will join the group soon: commit it now rather than make it wait.
    Idle,
    /// Now, whatever is due (at shutdown).
    Now,
}

/// How [`Recorder::finish`] took an outcome.
#[derive(Debug)]
pub enum Finish {
    /// The input reached a final state, recorded for the next commit; what the input is now.
    Recorded(InputRecord),
    /// Same content as before: only its stat changed (recorded too).
    Touched(FileStat),
    /// Not finished (changed while read, vanished, to be retried): the caller decides.
    Unfinished(Outcome),
}

/// Changes and staged results waiting for the next group commit, and the ledger they go to.
pub struct Recorder {
    ledger: Ledger,
    folders: Folders,
    metrics: Arc<Metrics>,
    pending: Vec<Change>,
    /// Results of `pending` still under temporary names, published by the next commit.
    staged: Vec<Staged>,
    pending_since: Option<Instant>,
    wrote_outputs: bool,
    blocked_until: Option<Instant>,
    shards_dirty: bool,
    last_shard_flush: Instant,
    /// Inputs committed as quarantined because the ledger refused their change; the front-end
    /// takes them ([`Recorder::take_refused`]) to update what it knows.
    refused: Vec<Refused>,
}

impl Recorder {
    /// A recorder over `ledger`, publishing into `folders`.
    pub fn new(ledger: Ledger, folders: Folders, metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            ledger,
            folders,
            metrics,
            pending: Vec::new(),
            staged: Vec::new(),
            pending_since: None,
            wrote_outputs: false,
            blocked_until: None,
            // Start-up rewrites any shard a crash left behind its rows.
            shards_dirty: true,
            last_shard_flush: Instant::now(),
            refused: Vec::new(),
        }
    }

    /// The inputs the last commits recorded as quarantined instead of as their change said,
    /// with what was recorded.
    pub fn take_refused(&mut self) -> Vec<Refused> {
        std::mem::take(&mut self.refused)
    }

    /// The ledger, for reads and meta values.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Adds a change to the next commit.
    pub fn record(&mut self, change: Change) {
        self.pending.push(change);
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Records a job's outcome if it finished the input, with its log line and metrics.
    pub fn finish(&mut self, path: &Path, outcome: Outcome, ready_at: Instant) -> Finish {
        let path_buf = path.to_path_buf();
        match outcome {
            Outcome::Done {
                stat,
                hash,
                results:
                    Results {
                        videos,
                        quarantined,
                        outputs,
                        staged,
                        times,
                    },
            } => {
                self.wrote(staged);
                self.metrics.record_stage_times(&times);
                self.metrics.record_done(videos.len(), quarantined.len());
                for record in &quarantined {
                    tracing::warn!(input = %path.display(), vid = record.vid.as_deref().unwrap_or(""), reason = %record.reason, "{}", record.message);
                }
                tracing::debug!(input = %path.display(), videos = videos.len(), "done");
                let recorded = InputRecord {
                    state: Some(State::Done),
                    stat: Some(stat),
                    hash: Some(hash.clone()),
                    outputs: outputs.clone(),
                    vids: videos.iter().map(|v| v.vid.clone()).collect(),
                    ..InputRecord::default()
                };
                self.record(Change::Done {
                    path: path_buf,
                    stat,
                    hash,
                    videos,
                    quarantined,
                    outputs,
                    latency_ms: ready_at.elapsed().as_secs_f64() * 1e3,
                });
                Finish::Recorded(recorded)
            }
            Outcome::Quarantined {
                stat,
                hash,
                record,
                outputs,
            } => {
                tracing::warn!(input = %path.display(), reason = %record.reason, stage = %record.stage, "quarantined: {}", record.message);
                self.metrics.record_quarantined();
                self.wrote(Vec::new());
                let recorded = InputRecord {
                    state: Some(State::Quarantined),
                    stat,
                    hash: hash.clone(),
                    attempts: record.attempts,
                    outputs: outputs.clone(),
                    reason: Some(record.reason),
                    ..InputRecord::default()
                };
                self.record(Change::Quarantined {
                    path: path_buf,
                    stat,
                    hash,
                    record,
                    outputs,
                });
                Finish::Recorded(recorded)
            }
            Outcome::Enqueued { stat, hash } => {
                tracing::debug!(input = %path.display(), "enqueued");
                let recorded = InputRecord {
                    state: Some(State::Enqueued),
                    stat: Some(stat),
                    hash: Some(hash.clone()),
                    ..InputRecord::default()
                };
                self.record(Change::Enqueued {
                    path: path_buf,
                    stat,
                    hash,
                });
                Finish::Recorded(recorded)
            }
            Outcome::Unchanged { stat } => {
                tracing::debug!(input = %path.display(), "content unchanged");
                self.record(Change::Unchanged {
                    path: path_buf,
                    stat,
                });
                Finish::Touched(stat)
            }
            unfinished => Finish::Unfinished(unfinished),
        }
    }

    /// Files were written for the changes recorded: their folders need an fsync, and staged
    /// ones a publish, before the commit.
    pub fn wrote(&mut self, staged: Vec<Staged>) {
        self.staged.extend(staged);
        self.wrote_outputs = true;
    }

    /// When a waiting group must be committed at the latest.
    pub fn deadline(&self, settings: &DaemonConfig) -> Option<Instant> {
        self.pending_since
            .map(|since| since + Duration::from_millis(settings.commit_ms))
    }

    /// Commits the waiting group as `urgency` asks. Returns whether everything recorded so far
    /// is now committed. A failure keeps the group for a retry a second later; its outputs
    /// stay valid.
    pub fn commit(&mut self, settings: &DaemonConfig, urgency: Urgency) -> bool {
        let force = urgency == Urgency::Now;
        let Some(since) = self.pending_since else {
            return true;
        };
        let now = Instant::now();
        if self.blocked_until.is_some_and(|t| now < t && !force) {
            return false;
        }
        let due = urgency == Urgency::Idle
            || self.pending.len() >= settings.commit_max
            || now.duration_since(since) >= Duration::from_millis(settings.commit_ms);
        if !(force || due) {
            return false;
        }
        let result = self
            .folders
            .make_missing()
            .map_err(|e| format!("cannot make the output folders again: {e}"))
            .and_then(|()| self.publish_outputs())
            .and_then(|()| {
                if !self.wrote_outputs {
                    return Ok(());
                }
                sync_dir(&self.folders.proposals)
                    .and_then(|()| sync_dir(&self.folders.quarantine))
                    .and_then(|()| sync_dir(&self.folders.staging))
                    .map_err(|e| format!("cannot fsync the output folders: {e}"))
            });
        let result = result.and_then(|()| {
            self.ledger
                .commit(&self.pending, settings.shard_videos)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(refused) => {
                for refusal in &refused {
                    tracing::error!(input = %refusal.path.display(), reason = %Reason::LedgerRefused, "quarantined: the ledger refused its result: {}", refusal.error);
                    self.metrics.record_quarantined();
                }
                self.refused.extend(refused);
                self.metrics.record_commit(self.pending.len());
                self.pending.clear();
                self.pending_since = None;
                self.wrote_outputs = false;
                self.blocked_until = None;
                self.shards_dirty = true;
                true
            }
            Err(message) => {
                self.metrics.record_commit_failure();
                tracing::error!(
                    waiting = self.pending.len(),
                    "ledger commit failed, retrying in 1 s: {message}"
                );
                self.blocked_until = Some(now + Duration::from_secs(1));
                false
            }
        }
    }

    /// Makes the staged results of this group durable with one syncfs, then renames them into
    /// place. A result is never visible before its data is on disk.
    fn publish_outputs(&mut self) -> Result<(), String> {
        if self.staged.is_empty() {
            return Ok(());
        }
        sync_filesystem(&self.folders.proposals)
            .map_err(|e| format!("cannot flush the output filesystem: {e}"))?;
        for staged in &mut self.staged {
            staged.publish().map_err(|e| {
                format!(
                    "cannot rename a result into {}: {e}",
                    staged.target().display()
                )
            })?;
        }
        self.staged.clear();
        Ok(())
    }

    /// Rewrites the shards the last commits changed, at most every `shard_flush_ms` unless
    /// `urgency` is [`Urgency::Now`].
    pub fn flush_shards(&mut self, settings: &DaemonConfig, urgency: Urgency) {
        let force = urgency == Urgency::Now;
        let every = Duration::from_millis(settings.shard_flush_ms);
        if !self.shards_dirty || (!force && self.last_shard_flush.elapsed() < every) {
            return;
        }
        self.last_shard_flush = Instant::now();
        match shards::flush(&self.ledger, &self.folders.dataset) {
            Ok(written) => {
                self.shards_dirty = false;
                if written > 0 {
                    tracing::debug!(shards = written, "dataset shards rewritten");
                }
            }
            Err(e) => tracing::error!("dataset shards not written, retrying later: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::fsio::stage;
    use crate::service::ledger::fixtures::done;
    use crate::service::Role;

    /// Someone deletes the staging folder while a group waits for its commit: the results
    /// it held are written again from memory, published and recorded, and the commit does not
    /// fail forever on files that are gone.
    #[test]
    fn results_staged_in_a_deleted_folder_are_published_and_recorded() {
        let root = tempfile::tempdir().unwrap();
        let mut config = Config::load(&[], &[]).unwrap();
        config.daemon.inbox = root.path().join("in");
        config.daemon.output = root.path().join("out");
        config.daemon.quarantine = root.path().join("q");
        config.daemon.state = root.path().join("state");
        let folders = Folders::prepare(&config.daemon, &Role::Watcher).unwrap();
        let ledger = Ledger::open(&folders.state).unwrap();
        let mut recorder = Recorder::new(ledger, folders.clone(), Arc::new(Metrics::default()));
        let target = folders.proposals.join("a.json");
        let staged = stage(&folders.staging, &target, b"{\"vid\": \"a\"}", false).unwrap();
        recorder.record(done("/in/a.npy", &[("a", 2)]));
        recorder.wrote(vec![staged]);
        std::fs::remove_dir_all(&folders.staging).unwrap();
        assert!(recorder.commit(&config.daemon, Urgency::Now));
        assert_eq!(std::fs::read(&target).unwrap(), b"{\"vid\": \"a\"}");
        assert_eq!(recorder.ledger().finished_videos().unwrap(), 1);
    }
}
