//! Batch runs over files and folders (`momentminer propose`, `caption`, `bench`): proposals,
//! their pseudo-queries, and the dataset they make.

use crate::config::RunConfig;
use crate::dataset::{dataset_paths, labels_of, write_files, DatasetError};
use crate::failure::{Failure, Reason, Stage};
use crate::fsio::{sync_filesystem, write_atomic, Durability};
use crate::ingest::{list_videos, walk, FileKind, VideoRef};
use crate::processor::{
    ingest_failure, timed, Processed, Source, StageTimes, VideoProcessor, VideoProposals,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a batch run stopped as a whole (a single input's problem is a [`Failure`] instead).
#[derive(Debug, Error)]
pub enum BatchError {
    #[error("cannot create output folder {path}: {source}")]
    /// The output folder cannot be created.
    Output {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    /// The run's summary cannot be written.
    Summary {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    /// The worker pool cannot start.
    Threads(#[from] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    /// The dataset cannot be written.
    Dataset(#[from] DatasetError),
    #[error("{input}: caption: {source}")]
    /// The captioner does not fit the features (said once, before any work).
    Caption {
        /// The first input, on which it was found.
        input: PathBuf,
        /// What does not fit.
        source: crate::caption::CaptionError,
    },
}

/// An input (a file, or one video of a many-video file) that produced no result, and why.
#[derive(Debug, Clone)]
pub struct InputFailure {
    /// The file, with the HDF5 key where one video of it failed.
    pub input: String,
    /// Why.
    pub failure: Failure,
}

impl std::fmt::Display for InputFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.input, self.failure.message)
    }
}

#[derive(Debug)]
/// What a batch run did.
pub struct BatchReport {
    /// Videos with results.
    pub videos: usize,
    /// Proposals found, and the training pairs the dataset took of them.
    pub proposals: usize,
    /// Training pairs in the dataset.
    pub pairs: usize,
    /// Inputs (or videos of many-video files) without results, and why.
    pub failures: Vec<InputFailure>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time per stage, summed over every video and thread.
    pub times: StageTimes,
    /// Worker threads.
    pub threads: usize,
}

/// The run's figures beside its results (`OUT/run.json`), for `report` to show later.
pub const RUN_SUMMARY: &str = "run.json";

impl BatchReport {
    /// Throughput over the wall time.
    pub fn videos_per_second(&self) -> f64 {
        self.videos as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// What [`RUN_SUMMARY`] holds.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "videos": self.videos,
            "failed": self.failures.len(),
            "proposals": self.proposals,
            "pairs": self.pairs,
            "seconds": self.elapsed.as_secs_f64(),
            "videos_per_second": self.videos_per_second(),
            "threads": self.threads,
        })
    }
}

/// Expands folders (recursively, feature files only, hidden and temporary names skipped) into
/// the videos they hold, each file once however often it was named (`propose x.npy x.npy`
/// would otherwise label the video three times). Inputs that cannot be listed, and anything
/// that is not a regular file (a FIFO named `x.npy` would block its reader), become failures,
/// not errors.
pub fn collect_videos(inputs: &[PathBuf]) -> (Vec<VideoRef>, Vec<InputFailure>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let (found, unlisted) = walk(input);
            files.extend(found.into_iter().filter(|f| FileKind::of(f).is_some()));
            failures.extend(unlisted.into_iter().map(|(path, e)| InputFailure {
                input: path.display().to_string(),
                failure: Failure::io(Stage::Check, format!("cannot list: {e}")),
            }));
        } else {
            files.push(input.clone());
        }
    }
    let mut seen = HashSet::new();
    let mut videos = Vec::new();
    for file in files {
        let fail = |failure: Failure| InputFailure {
            input: file.display().to_string(),
            failure,
        };
        if std::fs::metadata(&file).is_ok_and(|meta| !meta.is_file()) {
            failures.push(fail(Failure::permanent(
                Reason::NotRegularFile,
                Stage::Check,
                "is not a regular file (a FIFO, socket or device)",
            )));
            continue;
        }
        // Errors are reported when the file is read; here a path only needs a stable name.
        if !seen.insert(file.canonicalize().unwrap_or_else(|_| file.clone())) {
            continue;
        }
        match list_videos(&file) {
            Ok(found) => videos.extend(found),
            Err(e) => failures.push(fail(ingest_failure(&e))),
        }
    }
    (videos, failures)
}

/// Proposes (or reads the proposals of) every video and captions them, writing
/// `out/proposals/<vid>.json` atomically, then the whole run's dataset into `out/dataset/`.
pub fn propose_all(
    videos: &[VideoRef],
    out: &Path,
    processor: &VideoProcessor,
    source: Source,
    show_progress: bool,
) -> Result<BatchReport, BatchError> {
    let config = processor.config();
    let dir = out.join("proposals");
    let dataset = out.join("dataset");
    for folder in [&dir, &dataset] {
        std::fs::create_dir_all(folder).map_err(|source| BatchError::Output {
            path: folder.clone(),
            source,
        })?;
    }
    // A captioner that does not fit the features fails every video alike: say so once, now.
    if let Some(first) = videos.first() {
        if let Ok(video) = processor.read(first) {
            processor
                .check_captions_fit(&video)
                .map_err(|source| BatchError::Caption {
                    input: first.path.clone(),
                    source,
                })?;
        }
    }
    let threads = RunConfig::worker_count(config.run.threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let progress = if show_progress {
        ProgressBar::new(videos.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} videos ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut times = StageTimes::default();
    let mut results = Vec::new();
    let batches: Vec<&[VideoRef]> = processor.backend().batches(videos).collect();
    pool.install(|| {
        // The next batch is read while the back-end works on this one.
        let mut next = batches.first().map(|batch| processor.read_batch(batch));
        for (i, batch) in batches.iter().enumerate() {
            let loaded = next.take().unwrap_or_default();
            let (following, written) = rayon::join(
                || batches.get(i + 1).map(|batch| processor.read_batch(batch)),
                || {
                    processor.process_loaded(loaded, source, |at, result| {
                        let written = write_one(&batch[at], &dir, result);
                        progress.inc(1);
                        written
                    })
                },
            );
            next = following;
            for outcome in written {
                match outcome {
                    Ok((spent, result)) => {
                        times += spent;
                        results.push(result);
                    }
                    Err(failure) => {
                        tracing::warn!(input = %failure.input, reason = %failure.failure.reason, "{}", failure.failure.message);
                        failures.push(failure);
                    }
                }
            }
        }
    });
    progress.finish_and_clear();
    results.sort_by(|a, b| a.vid.cmp(&b.vid));
    let labels = labels_of(&results);
    let durability = if config.run.fsync {
        Durability::Data
    } else {
        Durability::None
    };
    write_files(&dataset_paths(&dataset, ""), &labels, durability)?;
    if config.run.fsync {
        sync_filesystem(&dir).map_err(|source| BatchError::Output {
            path: dir.clone(),
            source,
        })?;
    }
    let report = BatchReport {
        videos: videos.len() - failures.len(),
        proposals: results.iter().map(|r| r.proposals.len()).sum(),
        pairs: labels.len(),
        failures,
        elapsed: started.elapsed(),
        times,
        threads,
    };
    let path = out.join(RUN_SUMMARY);
    write_atomic(&path, report.summary().to_string().as_bytes(), durability)
        .map_err(|source| BatchError::Summary { path, source })?;
    Ok(report)
}

/// Writes one video's result file; a write needs no fsync here, the run syncs the whole
/// filesystem once at the end.
fn write_one(
    video: &VideoRef,
    dir: &Path,
    processed: Result<Processed, Failure>,
) -> Result<(StageTimes, VideoProposals), InputFailure> {
    let fail = |failure: Failure| InputFailure {
        input: match &video.key {
            Some(key) => format!("{} [{key}]", video.path.display()),
            None => video.path.display().to_string(),
        },
        failure,
    };
    let Processed {
        proposals,
        mut times,
    } = processed.map_err(fail)?;
    let target = dir.join(format!("{}.json", proposals.vid));
    timed(&mut times.write, || {
        let bytes = serde_json::to_vec(&proposals).map_err(std::io::Error::other)?;
        write_atomic(&target, &bytes, Durability::None)
    })
    .map_err(|e| {
        fail(Failure::io(
            Stage::Write,
            format!("cannot write {}: {e}", target.display()),
        ))
    })?;
    Ok((times, proposals))
}
