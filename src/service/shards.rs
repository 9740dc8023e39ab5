//! Dataset shards: every finished video's captioned proposals as training pairs, in PSVL's JSON
//! list (`psvl-NNNNNN.json`), Moment-DETR JSONL (`moment_detr-NNNNNN.jsonl`) and Charades-STA
//! lines (`charades-NNNNNN.txt`). The ledger holds
//! the rows; a shard file is rewritten whole (temp, fsync, rename) from them, so a reader sees
//! an old or a new shard, never a partial line, and a crash between a commit and the rewrite
//! is repaired at the next start.

use super::ledger::{Ledger, LedgerError};
use crate::dataset::{dataset_paths, write_files, DatasetError, PseudoLabel, FORMATS};
use crate::fsio::{sync_dir, Durability};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
/// Why dataset shards cannot be written.
pub enum ShardError {
    #[error(transparent)]
    /// The ledger cannot be read.
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    /// The labels cannot be written in a format.
    Dataset(#[from] DatasetError),
    #[error("cannot write shard {path}: {source}")]
    /// A shard file or its folder cannot be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// `dataset/<format>-<id>.<ext>`: a shard's file in each format.
pub fn shard_paths(dataset: &Path, id: i64) -> Vec<PathBuf> {
    dataset_paths(dataset, &format!("-{id:06}"))
}

/// Writes shard `id` of `labels` (every format), each file whole (temporary name, fsync,
/// rename); the caller fsyncs `dataset` once for all the shards it wrote.
pub fn write_shard(dataset: &Path, id: i64, labels: &[PseudoLabel]) -> Result<(), ShardError> {
    Ok(write_files(
        &shard_paths(dataset, id),
        labels,
        Durability::Data,
    )?)
}

/// Rewrites every shard the ledger has changed since its files were written; returns how many.
pub fn flush(ledger: &Ledger, dataset: &Path) -> Result<usize, ShardError> {
    let stale = ledger.stale_shards()?;
    for shard in &stale {
        write_shard(dataset, shard.id, &ledger.labels(Some(shard.id))?)?;
    }
    if !stale.is_empty() {
        sync_dir(dataset).map_err(|source| ShardError::Write {
            path: dataset.to_path_buf(),
            source,
        })?;
        for shard in &stale {
            ledger.mark_shard_written(*shard)?;
        }
    }
    Ok(stale.len())
}

/// The shard a file of the dataset folder is, if it is one: `<format>-<digits>.<ext>`.
fn shard_of(name: &str) -> Option<i64> {
    FORMATS.iter().find_map(|(format, ext)| {
        let digits = name
            .strip_prefix(format)?
            .strip_prefix('-')?
            .strip_suffix(ext)?
            .strip_suffix('.')?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    })
}

/// Removes the shard files of shards the ledger does not know: left by an earlier ledger that
/// was deleted or replaced, their labels would otherwise be read twice next to the new
/// shards that hold the same videos. Returns the files removed.
pub fn remove_unknown(ledger: &Ledger, dataset: &Path) -> Result<Vec<PathBuf>, ShardError> {
    let known: HashSet<i64> = ledger.shard_ids()?.into_iter().collect();
    let listing = |source| ShardError::Write {
        path: dataset.to_path_buf(),
        source,
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dataset).map_err(listing)? {
        let path = entry.map_err(listing)?.path();
        let unknown = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(shard_of)
            .is_some_and(|id| !known.contains(&id));
        if unknown {
            std::fs::remove_file(&path).map_err(|source| ShardError::Write {
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dataset).map_err(listing)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_files_are_told_from_other_files() {
        assert_eq!(shard_of("psvl-000012.json"), Some(12));
        assert_eq!(shard_of("moment_detr-000003.jsonl"), Some(3));
        assert_eq!(shard_of("charades-1234567.txt"), Some(1_234_567));
        for other in [
            "psvl.json",
            "psvl-.json",
            "psvl-00a1.json",
            "psvl-000001.jsonl",
            "notes-000001.txt",
            "charades-000001.txt.bak",
        ] {
            assert_eq!(shard_of(other), None, "{other}");
        }
    }

    #[test]
    fn shards_an_earlier_ledger_wrote_are_removed_and_known_ones_kept() {
        let state = tempfile::tempdir().unwrap();
        let dataset = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(state.path()).unwrap();
        ledger
            .commit(
                &[crate::service::ledger::fixtures::done(
                    "/in/a.npy",
                    &[("a", 2)],
                )],
                10,
            )
            .unwrap();
        assert_eq!(flush(&ledger, dataset.path()).unwrap(), 1);
        for old in shard_paths(dataset.path(), 7) {
            std::fs::write(old, "an earlier ledger's labels").unwrap();
        }
        std::fs::write(dataset.path().join("readme.txt"), "mine").unwrap();
        let mut removed = remove_unknown(&ledger, dataset.path()).unwrap();
        removed.sort();
        let mut expected = shard_paths(dataset.path(), 7);
        expected.sort();
        assert_eq!(removed, expected);
        let mut left: Vec<String> = std::fs::read_dir(dataset.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "charades-000001.txt",
                "moment_detr-000001.jsonl",
                "psvl-000001.json",
                "readme.txt"
            ]
        );
    }
}
