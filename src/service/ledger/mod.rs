//! The ledger: one SQLite row per input file (what it was, what became of it, which files it
//! produced), the pseudo-labels of every finished video, and the dataset shards they go into.
//!
//! SQLite rather than a pure-Rust store because `momentminer status` must read it while the
//! daemon writes (WAL gives readers a consistent snapshot without blocking the writer), because
//! operators can open it with the `sqlite3` shell, and because one transaction covers the input
//! rows, the labels and the shard bookkeeping together.

mod changes;
mod schema;

use super::record::{now_ms, FileStat, InputRecord, State};
use crate::failure::Reason;
pub use changes::Change;
use changes::{record, OpenShard};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use schema::SCHEMA_VERSION;
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The ledger's file in the state folder.
pub const FILE_NAME: &str = "ledger.sqlite";

#[derive(Debug, Error)]
/// Why the ledger cannot be opened, read or written.
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    /// SQLite refused.
    Sql {
        /// The ledger file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    #[error(
        "ledger {path} has schema version {found}; this momentminer reads version {SCHEMA_VERSION}"
    )]
    /// Written by a newer momentminer.
    Version {
        /// The ledger file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    #[error("no ledger at {0}: has `momentminer watch` run with this state folder?")]
    /// No ledger in the state folder.
    Missing(PathBuf),
}

/// A change the ledger refused; its input was recorded as quarantined instead.
#[derive(Debug)]
pub struct Refused {
    /// The input.
    pub path: PathBuf,
    /// What SQLite said.
    pub error: String,
    /// What was recorded instead: the input quarantined with `ledger_refused`.
    pub quarantined: Change,
}

impl Refused {
    /// What the input now is, as the ledger recorded it.
    pub fn record(&self) -> InputRecord {
        match &self.quarantined {
            Change::Quarantined {
                stat,
                hash,
                record,
                outputs,
                ..
            } => InputRecord {
                stat: *stat,
                hash: hash.clone(),
                state: Some(State::Quarantined),
                attempts: record.attempts,
                outputs: outputs.clone(),
                reason: Some(record.reason),
                ..InputRecord::default()
            },
            _ => InputRecord::default(),
        }
    }
}

/// A dataset shard whose files are older than its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleShard {
    /// The shard's number.
    pub id: i64,
    /// The version of its rows the files must show.
    pub version: i64,
}

/// A pseudo-label row as stored (times in seconds).
pub type LabelRow = crate::dataset::PseudoLabel;

/// The open ledger of one state folder.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn path_of(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

fn paths_json(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
}

impl Ledger {
    /// Opens (creating if needed) the ledger in `state_dir` for the daemon: WAL, and every
    /// commit fsynced, since a commit is what promises a result is safe.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        let fail = |source| LedgerError::Sql {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        schema::prepare(&conn, &path)?;
        Ok(Ledger { conn, path })
    }

    /// Opens an existing ledger for reading only (`momentminer status`).
    pub fn open_read_only(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(FILE_NAME);
        if !path.exists() {
            return Err(LedgerError::Missing(path));
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| LedgerError::Sql {
                path: path.clone(),
                source,
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|source| LedgerError::Sql {
                path: path.clone(),
                source,
            })?;
        Ok(Ledger { conn, path })
    }

    fn fail(&self) -> impl Fn(rusqlite::Error) -> LedgerError + '_ {
        |source| LedgerError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn sql_error(&self, source: rusqlite::Error) -> LedgerError {
        (self.fail())(source)
    }

    /// Every input row, with the videos it owns.
    pub fn inputs(&self) -> Result<Vec<(PathBuf, InputRecord)>, LedgerError> {
        let fail = self.fail();
        let mut vids: HashMap<i64, Vec<String>> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT input_id, vid FROM videos")
            .map_err(&fail)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(&fail)?;
        for row in rows {
            let (id, vid) = row.map_err(&fail)?;
            vids.entry(id).or_default().push(vid);
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, path, size, mtime_ns, inode, hash, state, attempts, next_attempt_ms,
                        outputs, reason FROM inputs",
            )
            .map_err(&fail)?;
        let rows = stmt
            .query_map([], |r| {
                let id: i64 = r.get(0)?;
                let size: Option<i64> = r.get(2)?;
                let stat = match (
                    size,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ) {
                    (Some(size), Some(mtime_ns), Some(inode)) => Some(FileStat {
                        size: size as u64,
                        mtime_ns,
                        inode: inode as u64,
                    }),
                    _ => None,
                };
                let outputs: Vec<String> =
                    serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default();
                let reason: Option<String> = r.get(10)?;
                Ok((
                    id,
                    path_of(r.get(1)?),
                    InputRecord {
                        stat,
                        hash: r.get(5)?,
                        state: Some(State::parse(&r.get::<_, String>(6)?)),
                        attempts: r.get(7)?,
                        next_attempt_ms: r.get(8)?,
                        outputs: outputs.into_iter().map(PathBuf::from).collect(),
                        vids: Vec::new(),
                        reason: reason.as_deref().and_then(Reason::from_code),
                    },
                ))
            })
            .map_err(&fail)?;
        rows.map(|row| {
            let (id, path, mut input) = row.map_err(&fail)?;
            input.vids = vids.remove(&id).unwrap_or_default();
            Ok((path, input))
        })
        .collect()
    }

    /// Records a group of changes in one transaction. Finished videos' proposals become labels
    /// in the open shard (a new one once it holds `shard_videos` videos). Each change is
    /// recorded under a savepoint: one the ledger refuses (a constraint, a value SQLite will
    /// not store) is rolled back alone and its input recorded as quarantined instead
    /// ([`Refused`]), so one bad row can never hold the rest of the group back, now or at the
    /// next try.
    pub fn commit(
        &mut self,
        changes: &[Change],
        shard_videos: usize,
    ) -> Result<Vec<Refused>, LedgerError> {
        let path = self.path.clone();
        let fail = |source| LedgerError::Sql {
            path: path.clone(),
            source,
        };
        let now = now_ms();
        let mut tx = self.conn.transaction().map_err(fail)?;
        let mut shard = OpenShard::find(&tx).map_err(fail)?;
        let mut refused = Vec::new();
        for change in changes {
            let before = shard;
            let attempt = tx.savepoint().map_err(fail)?;
            match record(&attempt, change, now, &mut shard, shard_videos) {
                Ok(()) => attempt.commit().map_err(fail)?,
                Err(error) => {
                    // Dropping the savepoint rolls the change back.
                    drop(attempt);
                    shard = before;
                    let instead = change.refused(&error);
                    let fallback = tx.savepoint().map_err(fail)?;
                    let quarantined = record(&fallback, &instead, now, &mut shard, shard_videos);
                    match quarantined {
                        Ok(()) => fallback.commit().map_err(fail)?,
                        Err(_) => shard = before,
                    }
                    refused.push(Refused {
                        path: change.path().to_path_buf(),
                        error: error.to_string(),
                        quarantined: instead,
                    });
                }
            }
        }
        tx.execute(
            "INSERT INTO meta(key, value) VALUES('last_commit_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [now.to_string()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(refused)
    }

    /// Shards whose files do not yet show their latest rows.
    pub fn stale_shards(&self) -> Result<Vec<StaleShard>, LedgerError> {
        let fail = self.fail();
        let mut stmt = self
            .conn
            .prepare("SELECT id, version FROM shards WHERE written < version ORDER BY id")
            .map_err(&fail)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StaleShard {
                    id: r.get(0)?,
                    version: r.get(1)?,
                })
            })
            .map_err(&fail)?;
        rows.map(|r| r.map_err(&fail)).collect()
    }

    /// Every shard the ledger knows, in order.
    pub fn shard_ids(&self) -> Result<Vec<i64>, LedgerError> {
        let fail = self.fail();
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM shards ORDER BY id")
            .map_err(&fail)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(&fail)?;
        rows.map(|r| r.map_err(&fail)).collect()
    }

    /// The labels of one shard, or of every shard, in qid order (a video's labels are
    /// consecutive: one commit wrote them).
    pub fn labels(&self, shard: Option<i64>) -> Result<Vec<LabelRow>, LedgerError> {
        let fail = self.fail();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT qid, vid, duration, start, end, query, tokens, embedding, margins FROM labels
                 WHERE ?1 IS NULL OR shard = ?1 ORDER BY qid",
            )
            .map_err(&fail)?;
        let rows = stmt
            .query_map([shard], |r| {
                let tokens: String = r.get(6)?;
                let embedding: Option<Vec<u8>> = r.get(7)?;
                let margins: String = r.get(8)?;
                Ok(LabelRow {
                    qid: r.get::<_, i64>(0)? as u64,
                    vid: r.get(1)?,
                    duration: r.get(2)?,
                    start: r.get(3)?,
                    end: r.get(4)?,
                    query: r.get(5)?,
                    tokens: serde_json::from_str(&tokens).unwrap_or_default(),
                    query_embedding: embedding.as_deref().map(floats).unwrap_or_default(),
                    token_margins: serde_json::from_str(&margins).unwrap_or_default(),
                })
            })
            .map_err(&fail)?;
        rows.map(|r| r.map_err(&fail)).collect()
    }

    /// Records that the shard's files now show `shard.version`.
    pub fn mark_shard_written(&self, shard: StaleShard) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "UPDATE shards SET written = ?2 WHERE id = ?1",
                params![shard.id, shard.version],
            )
            .map(|_| ())
            .map_err(self.fail())
    }

    /// Inputs that reached a final state (done or quarantined).
    pub fn finished(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM inputs WHERE state IN ('done', 'quarantined')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.fail())
    }

    /// Videos with results.
    pub fn finished_videos(&self) -> Result<u64, LedgerError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM videos", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.fail())
    }

    /// Sets a `meta` value (pid, start time, activity), committed at once.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        self.conn
            .execute(
                "INSERT INTO meta(key, value) VALUES(?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(self.fail())
    }

    /// A `meta` value, if set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.fail())
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Ledger changes for tests here and elsewhere.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::caption::Caption;
    use crate::processor::ScoredSpan;
    use crate::service::record::VideoResult;

    /// A finished input holding `(vid, proposal count)` videos; proposal i spans [i, 10 + i].
    pub(crate) fn done(path: &str, vids: &[(&str, usize)]) -> Change {
        Change::Done {
            path: PathBuf::from(path),
            stat: FileStat {
                size: 10,
                mtime_ns: 20,
                inode: 30,
            },
            hash: format!("hash-of-{path}"),
            videos: vids
                .iter()
                .map(|&(vid, spans)| VideoResult {
                    vid: vid.to_string(),
                    duration: 30.0,
                    proposals: (0..spans)
                        .map(|i| ScoredSpan {
                            start: i as f64,
                            end: 10.0 + i as f64,
                            score: 1.0,
                            window: false,
                            caption: Caption {
                                query: format!("open door {i}"),
                                tokens: vec!["open".into(), "door".into()],
                                token_scores: vec![0.5, 0.4],
                                token_margins: vec![2.5, 2.0],
                                query_embedding: if i == 1 { vec![0.6, 0.8] } else { Vec::new() },
                                ..Caption::default()
                            },
                        })
                        .collect(),
                })
                .collect(),
            quarantined: Vec::new(),
            outputs: vids
                .iter()
                .map(|(v, _)| PathBuf::from(format!("/out/{v}.json")))
                .collect(),
            latency_ms: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::done;
    use super::*;

    #[test]
    fn rows_survive_reopening_and_shards_fill_then_seal() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .commit(
                &[
                    Change::Queued {
                        path: "/in/a.npy".into(),
                    },
                    done("/in/a.npy", &[("a", 3)]),
                    done("/in/b.h5", &[("b1", 2), ("b2", 2)]),
                    Change::Queued {
                        path: "/in/gone.npy".into(),
                    },
                ],
                2,
            )
            .unwrap();
        // The second commit replaces a's results and forgets the input that vanished.
        ledger
            .commit(
                &[
                    done("/in/a.npy", &[("a", 1)]),
                    Change::Forget {
                        path: "/in/gone.npy".into(),
                    },
                ],
                2,
            )
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        let mut rows = ledger.inputs().unwrap();
        rows.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, Path::new("/in/a.npy"));
        assert_eq!(rows[0].1.state, Some(State::Done));
        assert_eq!(rows[0].1.hash.as_deref(), Some("hash-of-/in/a.npy"));
        assert_eq!(rows[1].1.vids.len(), 2);
        assert_eq!(rows[1].1.outputs.len(), 2);
        // a (3 labels) and b1, b2 fill shard 1 past 2 videos; a's redo goes to shard 2.
        let stale = ledger.stale_shards().unwrap();
        assert_eq!(stale.iter().map(|s| s.id).collect::<Vec<_>>(), [1, 2]);
        let first = ledger.labels(Some(1)).unwrap();
        assert_eq!(
            first.len(),
            4,
            "b1 and b2, two labels each; a's old labels gone"
        );
        let second = ledger.labels(Some(2)).unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].vid.as_str(), second[0].end), ("a", 10.0));
        // Pseudo-queries survive the ledger: words, and language-free embeddings.
        assert_eq!(first[1].query, "open door 1");
        assert_eq!(first[1].tokens, ["open", "door"]);
        assert_eq!(first[1].query_embedding, [0.6, 0.8]);
        assert!(first[0].query_embedding.is_empty());
        for shard in stale {
            ledger.mark_shard_written(shard).unwrap();
        }
        assert!(ledger.stale_shards().unwrap().is_empty());
        assert_eq!(ledger.finished().unwrap(), 2);
    }

    /// A daemon upgraded in place finds a version-1 ledger (labels without embeddings): it is
    /// upgraded, keeps its rows, and takes language-free labels from then on. A ledger from a
    /// newer momentminer is refused, not guessed at.
    #[test]
    fn a_version_1_ledger_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .commit(&[done("/in/a.npy", &[("a", 1)])], 10)
            .unwrap();
        ledger
            .conn
            .execute_batch(
                "ALTER TABLE labels DROP COLUMN margins;
                 ALTER TABLE labels DROP COLUMN embedding;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        drop(ledger);
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .commit(&[done("/in/b.npy", &[("b", 2)])], 10)
            .unwrap();
        let labels = ledger.labels(None).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(
            (labels[0].vid.as_str(), labels[0].query.as_str()),
            ("a", "open door 0")
        );
        assert_eq!(labels[2].query_embedding, [0.6, 0.8]);
        // Rows from before the margins were kept have none; new rows carry theirs.
        assert!(labels[0].token_margins.is_empty());
        assert_eq!(labels[2].token_margins, [2.5, 2.0]);
        ledger
            .conn
            .execute_batch("PRAGMA user_version = 4;")
            .unwrap();
        drop(ledger);
        assert!(matches!(
            Ledger::open(dir.path()),
            Err(LedgerError::Version { found: 4, .. })
        ));
    }

    /// A row SQLite refuses (a NaN score binds as NULL into a NOT NULL column) quarantines its
    /// input alone: the rest of the group commits, and so does the next group.
    #[test]
    fn a_refused_row_quarantines_its_input_and_the_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path()).unwrap();
        let mut poisoned = done("/in/bad.npy", &[("bad", 2)]);
        if let Change::Done { videos, .. } = &mut poisoned {
            videos[0].proposals[1].score = f64::NAN;
        }
        let refused = ledger
            .commit(
                &[
                    done("/in/a.npy", &[("a", 1)]),
                    poisoned,
                    done("/in/b.npy", &[("b", 1)]),
                ],
                100,
            )
            .unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].path, Path::new("/in/bad.npy"));
        assert!(
            refused[0].error.contains("NOT NULL"),
            "{}",
            refused[0].error
        );
        let rows: HashMap<PathBuf, InputRecord> = ledger.inputs().unwrap().into_iter().collect();
        assert_eq!(rows[Path::new("/in/a.npy")].state, Some(State::Done));
        assert_eq!(rows[Path::new("/in/b.npy")].state, Some(State::Done));
        let bad = &rows[Path::new("/in/bad.npy")];
        assert_eq!(bad.state, Some(State::Quarantined));
        assert_eq!(bad.reason, Some(Reason::LedgerRefused));
        assert_eq!(bad.hash.as_deref(), Some("hash-of-/in/bad.npy"));
        assert!(bad.vids.is_empty(), "no video of it is recorded");
        let labels = ledger.labels(None).unwrap();
        assert_eq!(labels.iter().filter(|l| l.vid == "bad").count(), 0);
        assert_eq!(labels.len(), 2);
        // Nothing stays behind to refuse the next group.
        let next = ledger.commit(&[done("/in/c.npy", &[("c", 1)])], 100);
        assert!(next.unwrap().is_empty());
    }
}
