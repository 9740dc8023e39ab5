//! The ledger's tables, created on first use and upgraded from older versions in place.

use super::LedgerError;
use rusqlite::Connection;
use std::path::Path;

/// The schema this version reads and writes (SQLite's `user_version`).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// What each version after the first added to the one before: `UPGRADES[v - 1]` takes a
/// version-`v` ledger to `v + 1`.
const UPGRADES: [&str; 2] = [
    // Language-free query embeddings.
    "ALTER TABLE labels ADD COLUMN embedding BLOB;",
    // The query words' margins, a pair's confidence.
    "ALTER TABLE labels ADD COLUMN margins TEXT NOT NULL DEFAULT '[]';",
];

/// Creates the tables of a new ledger, upgrades an older one, refuses a newer one.
pub(super) fn prepare(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    let fail = |source| LedgerError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    match found {
        0 => conn
            .execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE inputs(
                    id INTEGER PRIMARY KEY,
                    path BLOB NOT NULL UNIQUE,
                    size INTEGER, mtime_ns INTEGER, inode INTEGER,
                    hash TEXT,
                    state TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_ms INTEGER,
                    reason TEXT, error TEXT,
                    outputs TEXT NOT NULL DEFAULT '[]',
                    videos INTEGER NOT NULL DEFAULT 0,
                    updated_ms INTEGER NOT NULL,
                    latency_ms REAL);
                 CREATE INDEX inputs_by_state ON inputs(state, updated_ms);
                 CREATE TABLE videos(vid TEXT PRIMARY KEY, input_id INTEGER NOT NULL);
                 CREATE INDEX videos_by_input ON videos(input_id);
                 CREATE TABLE shards(id INTEGER PRIMARY KEY,
                    version INTEGER NOT NULL DEFAULT 0,
                    written INTEGER NOT NULL DEFAULT -1);
                 CREATE TABLE labels(qid INTEGER PRIMARY KEY AUTOINCREMENT,
                    shard INTEGER NOT NULL, input_id INTEGER NOT NULL, vid TEXT NOT NULL,
                    duration REAL NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
                    score REAL NOT NULL,
                    query TEXT NOT NULL DEFAULT '', tokens TEXT NOT NULL DEFAULT '[]',
                    embedding BLOB, margins TEXT NOT NULL DEFAULT '[]');
                 CREATE INDEX labels_by_shard ON labels(shard);
                 CREATE INDEX labels_by_input ON labels(input_id);
                 CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))
            .map_err(fail)?,
        older @ 1..SCHEMA_VERSION => conn
            .execute_batch(&format!(
                "BEGIN;
                 {}
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;",
                UPGRADES[older as usize - 1..].concat()
            ))
            .map_err(fail)?,
        SCHEMA_VERSION => {}
        found => {
            return Err(LedgerError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
    }
    Ok(())
}
