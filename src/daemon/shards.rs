//! Dataset shards: every finished video's proposals as training pairs, in PSVL's JSON list
//! (`psvl-NNNNNN.json`) and Moment-DETR JSONL (`moment_detr-NNNNNN.jsonl`). The ledger holds
//! the rows; a shard file is rewritten whole (temp, fsync, rename) from them, so a reader sees
//! an old or a new shard, never a partial line, and a crash between a commit and the rewrite
//! is repaired at the next start.

use super::ledger::{Ledger, LedgerError};
use crate::dataset::{moment_detr, psvl, PseudoLabel};
use crate::fsio::{sync_dir, write_atomic, Durability};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ShardError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot write shard {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn shard_paths(dataset: &Path, id: i64) -> [PathBuf; 2] {
    [
        dataset.join(format!("psvl-{id:06}.json")),
        dataset.join(format!("moment_detr-{id:06}.jsonl")),
    ]
}

/// Writes shard `id` of `labels` (both formats), each file whole (temporary name, fsync,
/// rename); the caller fsyncs `dataset` once for all the shards it wrote.
pub fn write_shard(dataset: &Path, id: i64, labels: &[PseudoLabel]) -> Result<(), ShardError> {
    let [json, jsonl] = shard_paths(dataset, id);
    let lines: Vec<moment_detr::Line> = labels.iter().map(moment_detr::Line::of).collect();
    for (path, text) in [
        (json, psvl::write(labels)),
        (jsonl, moment_detr::write(&lines)),
    ] {
        text.map_err(std::io::Error::other)
            .and_then(|text| write_atomic(&path, text.as_bytes(), Durability::Data))
            .map_err(|source| ShardError::Write { path, source })?;
    }
    Ok(())
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
