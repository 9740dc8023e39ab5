//! What the front-ends record, and how each change becomes rows: an input's state, its videos,
//! their labels and the shards the labels go into, all in the commit's one transaction.

use super::{path_bytes, paths_json};
use crate::failure::{Failure, Reason, Stage};
use crate::service::record::{FileStat, QuarantineRecord, State, VideoResult};
use rusqlite::params;
use std::path::{Path, PathBuf};

/// One change to record, produced by a front-end's main loop; a group commit records many.
#[derive(Debug)]
pub enum Change {
    /// Taken for processing, not finished.
    Queued {
        /// The input.
        path: PathBuf,
    },
    /// Finished with results.
    Done {
        /// The input.
        path: PathBuf,
        /// Its stat when it was hashed.
        stat: FileStat,
        /// Its content hash.
        hash: String,
        /// Each video's result, whose proposals become labels.
        videos: Vec<VideoResult>,
        /// Videos of a many-video file that failed while the rest succeeded.
        quarantined: Vec<QuarantineRecord>,
        /// Every file it produced.
        outputs: Vec<PathBuf>,
        /// From settled to finished.
        latency_ms: f64,
    },
    /// Added to the Redis queue; a worker produces its results.
    Enqueued {
        /// The input.
        path: PathBuf,
        /// Its stat when it was hashed.
        stat: FileStat,
        /// Its content hash.
        hash: String,
    },
    /// Never finished and gone from the inbox.
    Forget {
        /// The input.
        path: PathBuf,
    },
    /// Touched or moved but identical in content: only the remembered stat changes.
    Unchanged {
        /// The input.
        path: PathBuf,
        /// Its new stat.
        stat: FileStat,
    },
    /// Failed in a way that may pass; tried again at `next_attempt_ms`.
    Retry {
        /// The input.
        path: PathBuf,
        /// Tries so far.
        attempts: u32,
        /// When the next is due, milliseconds since the epoch.
        next_attempt_ms: i64,
        /// Why it failed.
        record: QuarantineRecord,
    },
    /// Given up on.
    Quarantined {
        /// The input.
        path: PathBuf,
        /// Its stat, when it could be read.
        stat: Option<FileStat>,
        /// Its content hash, when it could be read.
        hash: Option<String>,
        /// Why.
        record: QuarantineRecord,
        /// The record written.
        outputs: Vec<PathBuf>,
    },
}

impl Change {
    /// The input it is about.
    pub fn path(&self) -> &Path {
        match self {
            Change::Queued { path }
            | Change::Done { path, .. }
            | Change::Enqueued { path, .. }
            | Change::Forget { path }
            | Change::Unchanged { path, .. }
            | Change::Retry { path, .. }
            | Change::Quarantined { path, .. } => path,
        }
    }

    /// What to record instead when the ledger refuses this change: the input quarantined
    /// (`ledger_refused`), keeping what is known of its version and outputs so it is not taken
    /// again until it changes, and its outputs are removed when it is.
    pub(super) fn refused(&self, error: &rusqlite::Error) -> Change {
        let (stat, hash, outputs) = match self {
            Change::Done {
                stat,
                hash,
                outputs,
                ..
            } => (Some(*stat), Some(hash.clone()), outputs.clone()),
            Change::Enqueued { stat, hash, .. } => (Some(*stat), Some(hash.clone()), Vec::new()),
            Change::Quarantined {
                stat,
                hash,
                outputs,
                ..
            } => (*stat, hash.clone(), outputs.clone()),
            _ => (None, None, Vec::new()),
        };
        let path = self.path().to_path_buf();
        let failure = Failure::permanent(
            Reason::LedgerRefused,
            Stage::Write,
            format!("the ledger refused its result: {error}"),
        );
        Change::Quarantined {
            record: QuarantineRecord::new(path.display().to_string(), None, failure, 1),
            path,
            stat,
            hash,
            outputs,
        }
    }
}

pub(super) fn upsert_input(
    tx: &rusqlite::Connection,
    path: &Path,
    state: State,
    now: i64,
) -> rusqlite::Result<i64> {
    tx.query_row(
        "INSERT INTO inputs(path, state, updated_ms) VALUES(?1, ?2, ?3)
         ON CONFLICT(path) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms
         RETURNING id",
        params![path_bytes(path), state.as_str(), now],
        |r| r.get(0),
    )
}

pub(super) fn set_stat(
    tx: &rusqlite::Connection,
    id: i64,
    stat: Option<&FileStat>,
    hash: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE inputs SET size = ?2, mtime_ns = ?3, inode = ?4, hash = ?5 WHERE id = ?1",
        params![
            id,
            stat.map(|s| s.size as i64),
            stat.map(|s| s.mtime_ns),
            stat.map(|s| s.inode as i64),
            hash
        ],
    )?;
    Ok(())
}

/// Little-endian f32s, as language-free query embeddings are stored.
pub(super) fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Drops an input's labels and video ids; the shards that held labels must be rewritten.
pub(super) fn release_results(tx: &rusqlite::Connection, id: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE shards SET version = version + 1
         WHERE id IN (SELECT DISTINCT shard FROM labels WHERE input_id = ?1)",
        [id],
    )?;
    tx.execute("DELETE FROM labels WHERE input_id = ?1", [id])?;
    tx.execute("DELETE FROM videos WHERE input_id = ?1", [id])?;
    Ok(())
}

/// The shard new labels go to, and how many videos it holds; found once per commit.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenShard {
    id: Option<i64>,
    videos: usize,
}

impl OpenShard {
    pub(super) fn find(tx: &rusqlite::Connection) -> rusqlite::Result<OpenShard> {
        let id: Option<i64> = tx.query_row("SELECT MAX(id) FROM shards", [], |r| r.get(0))?;
        let videos: i64 = match id {
            Some(id) => tx.query_row(
                "SELECT COUNT(DISTINCT vid) FROM labels WHERE shard = ?1",
                [id],
                |r| r.get(0),
            )?,
            None => 0,
        };
        Ok(OpenShard {
            id,
            videos: videos as usize,
        })
    }

    /// The shard for `videos` more videos, sealing the open one when it is full.
    fn take(
        &mut self,
        tx: &rusqlite::Connection,
        videos: usize,
        shard_videos: usize,
    ) -> rusqlite::Result<i64> {
        let id = match self.id {
            Some(id) if self.videos < shard_videos => id,
            _ => {
                tx.execute("INSERT INTO shards(version) VALUES(0)", [])?;
                self.videos = 0;
                tx.last_insert_rowid()
            }
        };
        self.id = Some(id);
        self.videos += videos;
        Ok(id)
    }
}

pub(super) fn record(
    tx: &rusqlite::Connection,
    change: &Change,
    now: i64,
    shard: &mut OpenShard,
    shard_videos: usize,
) -> rusqlite::Result<()> {
    match change {
        Change::Queued { path } => {
            upsert_input(tx, path, State::Queued, now)?;
        }
        Change::Enqueued { path, stat, hash } => {
            let id = upsert_input(tx, path, State::Enqueued, now)?;
            set_stat(tx, id, Some(stat), Some(hash))?;
            release_results(tx, id)?;
            tx.execute(
                "UPDATE inputs SET attempts = 0, next_attempt_ms = NULL, reason = NULL,
                        error = NULL, outputs = '[]', videos = 0
                 WHERE id = ?1",
                [id],
            )?;
        }
        Change::Forget { path } => {
            tx.execute(
                "DELETE FROM inputs WHERE path = ?1 AND state IN ('queued', 'retry')",
                [path_bytes(path)],
            )?;
        }
        Change::Unchanged { path, stat } => {
            tx.execute(
                "UPDATE inputs SET size = ?2, mtime_ns = ?3, inode = ?4, updated_ms = ?5
                 WHERE path = ?1",
                params![
                    path_bytes(path),
                    stat.size as i64,
                    stat.mtime_ns,
                    stat.inode as i64,
                    now
                ],
            )?;
        }
        Change::Retry {
            path,
            attempts,
            next_attempt_ms,
            record,
        } => {
            let id = upsert_input(tx, path, State::Retry, now)?;
            tx.execute(
                "UPDATE inputs SET attempts = ?2, next_attempt_ms = ?3, reason = ?4, error = ?5
                 WHERE id = ?1",
                params![
                    id,
                    attempts,
                    next_attempt_ms,
                    record.reason.code(),
                    record.message
                ],
            )?;
        }
        Change::Quarantined {
            path,
            stat,
            hash,
            record,
            outputs,
        } => {
            let id = upsert_input(tx, path, State::Quarantined, now)?;
            set_stat(tx, id, stat.as_ref(), hash.as_deref())?;
            release_results(tx, id)?;
            tx.execute(
                "UPDATE inputs SET attempts = ?2, next_attempt_ms = NULL, reason = ?3, error = ?4,
                        outputs = ?5, videos = 0
                 WHERE id = ?1",
                params![
                    id,
                    record.attempts,
                    record.reason.code(),
                    record.message,
                    paths_json(outputs)
                ],
            )?;
        }
        Change::Done {
            path,
            stat,
            hash,
            videos,
            quarantined,
            outputs,
            latency_ms,
        } => {
            let id = upsert_input(tx, path, State::Done, now)?;
            set_stat(tx, id, Some(stat), Some(hash))?;
            release_results(tx, id)?;
            let (reason, error) = match quarantined.first() {
                Some(first) => (
                    Some(first.reason.code()),
                    Some(format!(
                        "{} of {} videos quarantined; first: {}",
                        quarantined.len(),
                        quarantined.len() + videos.len(),
                        first.message
                    )),
                ),
                None => (None, None),
            };
            tx.execute(
                "UPDATE inputs SET next_attempt_ms = NULL, reason = ?2, error = ?3, outputs = ?4,
                        videos = ?5, latency_ms = ?6
                 WHERE id = ?1",
                params![
                    id,
                    reason,
                    error,
                    paths_json(outputs),
                    videos.len() as i64,
                    latency_ms
                ],
            )?;
            let shard = shard.take(tx, videos.len(), shard_videos)?;
            let mut insert_video = tx.prepare_cached(
                "INSERT INTO videos(vid, input_id) VALUES(?1, ?2)
                 ON CONFLICT(vid) DO UPDATE SET input_id = excluded.input_id",
            )?;
            let mut insert_label = tx.prepare_cached(
                "INSERT INTO labels(shard, input_id, vid, duration, start, end, score, query,
                                    tokens, embedding, margins)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for video in videos {
                insert_video.execute(params![video.vid, id])?;
                for span in video.proposals.iter().filter(|s| s.is_pair()) {
                    insert_label.execute(params![
                        shard,
                        id,
                        video.vid,
                        video.duration,
                        span.start,
                        span.end,
                        span.score,
                        span.caption.query,
                        serde_json::to_string(&span.caption.tokens).unwrap_or_else(|_| "[]".into()),
                        (!span.caption.query_embedding.is_empty())
                            .then(|| bytes(&span.caption.query_embedding)),
                        serde_json::to_string(&span.caption.token_margins)
                            .unwrap_or_else(|_| "[]".into()),
                    ])?;
                }
            }
            tx.execute(
                "UPDATE shards SET version = version + 1 WHERE id = ?1",
                [shard],
            )?;
        }
    }
    Ok(())
}
