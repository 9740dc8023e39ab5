//! Dataset shards: every finished video's captioned proposals as training pairs, in PSVL's JSON
//! list (`psvl-NNNNNN.json`), Moment-DETR JSONL (`moment_detr-NNNNNN.jsonl`) and Charades-STA
//! lines (`charades-NNNNNN.txt`). The ledger holds
//! the rows; a shard file is rewritten whole (temp, fsync, rename) from them, so a reader sees
//! an old or a new shard, never a partial line, and a crash between a commit and the rewrite
//! is repaired at the next start.

use super::ledger::{Ledger, LedgerError};
use crate::dataset::{dataset_paths, write_files, DatasetError, PseudoLabel};
use crate::fsio::{sync_dir, Durability};
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
