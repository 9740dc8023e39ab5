//! `momentminer merge`: one dataset out of every ledger of a scale-out run (the workers' and
//! the daemon's). The ledgers, not the shard files, are read: they hold everything a worker
//! committed and acknowledged, even when it died before rewriting its shards. A video that
//! two workers both finished (a message taken over from a worker that was only slow) is kept
//! once; qids are numbered afresh, since each ledger numbered its own.

use crate::dataset::{PseudoLabel, FORMATS};
use crate::fsio::sync_dir;
use crate::service::ledger::{Ledger, LedgerError, FILE_NAME};
use crate::service::shards::{write_shard, ShardError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
/// Why the ledgers cannot be merged.
pub enum MergeError {
    #[error(transparent)]
    /// A ledger cannot be read.
    Ledger(#[from] LedgerError),
    #[error("cannot write {path}: {source}")]
    /// The output folder cannot be written.
    Write {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// A shard cannot be written.
    Shard(#[from] ShardError),
    #[error("no ledger under {0}: has a daemon or worker run with this state folder?")]
    /// No ledger under the state folder.
    NoLedgers(PathBuf),
}

#[derive(Debug, Default)]
/// What a merge did.
pub struct MergeReport {
    /// Ledgers read.
    pub ledgers: usize,
    /// Videos kept.
    pub videos: usize,
    /// Labels written.
    pub labels: usize,
    /// Labels of videos already taken from an earlier ledger.
    pub duplicates_dropped: usize,
    /// Shards written.
    pub shards_written: usize,
}

/// The ledgers of `state`: the daemon's (`state/ledger.sqlite`) and each worker's
/// (`state/<worker>/ledger.sqlite`), in name order.
fn ledgers(state: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(state)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|dir| dir.join(FILE_NAME).is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    if state.join(FILE_NAME).is_file() {
        found.insert(0, state.to_path_buf());
    }
    found
}

/// Writes the merged dataset to `out` in shards of `shard_videos` videos.
pub fn merge(state: &Path, out: &Path, shard_videos: usize) -> Result<MergeReport, MergeError> {
    let dirs = ledgers(state);
    if dirs.is_empty() {
        return Err(MergeError::NoLedgers(state.to_path_buf()));
    }
    let mut report = MergeReport {
        ledgers: dirs.len(),
        ..MergeReport::default()
    };
    let mut seen = HashSet::new();
    let mut videos: Vec<Vec<PseudoLabel>> = Vec::new();
    for dir in &dirs {
        let mut keep = false;
        let mut previous_vid: Option<String> = None;
        for label in Ledger::open_read_only(dir)?.labels(None)? {
            if previous_vid.as_deref() != Some(label.vid.as_str()) {
                previous_vid = Some(label.vid.clone());
                keep = seen.insert(label.vid.clone());
                if keep {
                    videos.push(Vec::new());
                }
            }
            match videos.last_mut() {
                Some(video) if keep => video.push(label),
                _ => report.duplicates_dropped += 1,
            }
        }
    }
    let cannot = |path: &Path, source| MergeError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(|e| cannot(out, e))?;
    let mut qid = 0;
    for (index, chunk) in videos.chunks(shard_videos.max(1)).enumerate() {
        let labels: Vec<PseudoLabel> = chunk
            .iter()
            .flatten()
            .map(|l| {
                qid += 1;
                PseudoLabel { qid, ..l.clone() }
            })
            .collect();
        write_shard(out, index as i64 + 1, &labels)?;
        report.shards_written += 1;
        report.labels += labels.len();
    }
    sync_dir(out).map_err(|e| cannot(out, e))?;
    report.videos = videos.len();
    remove_stale(out, report.shards_written);
    Ok(report)
}

/// Merged shards beyond `written`, left by an earlier, larger merge.
fn remove_stale(out: &Path, written: usize) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let number = FORMATS.iter().find_map(|(format, ext)| {
            name.strip_prefix(&format!("{format}-"))
                .and_then(|n| n.strip_suffix(&format!(".{ext}")))
                .and_then(|n| n.parse::<usize>().ok())
        });
        if number.is_some_and(|n| n > written) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ledger::fixtures::done;

    fn record(dir: &Path, input: &str, vids: &[(&str, usize)]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut ledger = Ledger::open(dir).unwrap();
        ledger.commit(&[done(input, vids)], 100).unwrap();
    }

    #[test]
    fn videos_two_workers_both_finished_are_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        record(&state.join("w1"), "/in/ab.h5", &[("a", 2), ("b", 1)]);
        record(&state.join("w2"), "/in/b.npy", &[("b", 1)]);
        record(&state.join("w2"), "/in/c.npy", &[("c", 3)]);
        let out = dir.path().join("merged");
        let report = merge(&state, &out, 2).unwrap();
        assert_eq!((report.ledgers, report.videos, report.labels), (2, 3, 6));
        assert_eq!((report.duplicates_dropped, report.shards_written), (1, 2));
        let first =
            crate::dataset::read_annotations(&out.join("moment_detr-000001.jsonl"), None).unwrap();
        assert_eq!(
            first.iter().map(|m| m.vid.as_str()).collect::<Vec<_>>(),
            ["a", "a", "b"]
        );
        let second = std::fs::read_to_string(out.join("moment_detr-000002.jsonl")).unwrap();
        assert!(
            second.contains("\"qid\":4") && second.contains("\"vid\":\"c\""),
            "{second}"
        );
        assert!(matches!(
            merge(&dir.path().join("nothing"), &out, 2),
            Err(MergeError::NoLedgers(_))
        ));
    }
}
