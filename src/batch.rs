//! Batch runs over files and folders (`momentminer propose`, `caption`, `bench`): proposals,
//! their pseudo-queries, and the dataset they make.

use crate::caption::Captioner;
use crate::config::{Config, RunConfig};
use crate::dataset::{dataset_paths, labels_of, write_files, DatasetError};
use crate::fsio::{sync_filesystem, write_atomic, Durability};
use crate::ingest::{list_videos, read_video, walk, Durations, FileKind, IngestError, VideoRef};
use crate::pipeline::{analyse, timed, StageTimes, VideoProposals};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BatchError {
    #[error(transparent)]
    Durations(#[from] IngestError),
    #[error("cannot create output folder {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{input}: caption: {source}")]
    Caption {
        input: PathBuf,
        source: crate::caption::CaptionError,
    },
}

/// An input that produced no result, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub input: String,
    pub message: String,
}

#[derive(Debug)]
pub struct BatchReport {
    pub videos: usize,
    /// Proposals found, and the training pairs the dataset took of them.
    pub proposals: usize,
    pub pairs: usize,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
    pub times: StageTimes,
    pub threads: usize,
}

impl BatchReport {
    pub fn videos_per_second(&self) -> f64 {
        self.videos as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Expands folders (recursively, feature files only, hidden and temporary names skipped) into
/// the videos they hold. Inputs that cannot be listed become failures, not errors.
pub fn collect_videos(inputs: &[PathBuf]) -> (Vec<VideoRef>, Vec<Failure>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let (found, unlisted) = walk(input);
            files.extend(found.into_iter().filter(|f| FileKind::of(f).is_some()));
            failures.extend(unlisted.into_iter().map(|(path, e)| Failure {
                input: path.display().to_string(),
                message: format!("cannot list: {e}"),
            }));
        } else {
            files.push(input.clone());
        }
    }
    let mut videos = Vec::new();
    for file in files {
        match list_videos(&file) {
            Ok(found) => videos.extend(found),
            Err(e) => failures.push(Failure {
                input: file.display().to_string(),
                message: e.problem.to_string(),
            }),
        }
    }
    (videos, failures)
}

/// Where a batch run's proposals come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Found now: the whole proposal path.
    Propose,
    /// Read from an earlier run's `proposals/` folder, to be captioned again (another
    /// vocabulary, text tower or mode) without finding them again.
    Recaption(&'a Path),
}

/// Proposes (or reads the proposals of) every video and captions them, writing
/// `out/proposals/<vid>.json` atomically, then the whole run's dataset into `out/dataset/`.
pub fn propose_all(
    videos: &[VideoRef],
    out: &Path,
    config: &Config,
    captioner: &Captioner,
    source: Source,
    show_progress: bool,
) -> Result<BatchReport, BatchError> {
    let durations = Durations::load(&config.ingest.durations_file)?;
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
        if let Ok(video) = read_video(first, &config.ingest, &durations) {
            captioner
                .visual_features(&video)
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
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    let (times, mut results) = pool.install(|| {
        videos
            .par_iter()
            .map(|video| {
                let result = propose_one(video, &dir, config, &durations, captioner, source);
                progress.inc(1);
                match result {
                    Ok((times, result)) => (times, vec![result]),
                    Err(failure) => {
                        tracing::warn!(input = %failure.input, "{}", failure.message);
                        if let Ok(mut list) = failures.lock() {
                            list.push(failure);
                        }
                        (StageTimes::default(), Vec::new())
                    }
                }
            })
            .reduce(
                || (StageTimes::default(), Vec::new()),
                |(mut times, mut results), (t, mut r)| {
                    times += t;
                    results.append(&mut r);
                    (times, results)
                },
            )
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
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(BatchReport {
        videos: videos.len() - failures.len(),
        proposals: results.iter().map(|r| r.proposals.len()).sum(),
        pairs: labels.len(),
        failures,
        elapsed: started.elapsed(),
        times,
        threads,
    })
}

fn propose_one(
    video: &VideoRef,
    dir: &Path,
    config: &Config,
    durations: &Durations,
    captioner: &Captioner,
    source: Source,
) -> Result<(StageTimes, VideoProposals), Failure> {
    let mut times = StageTimes::default();
    let fail = |message: String| Failure {
        input: match &video.key {
            Some(key) => format!("{} [{key}]", video.path.display()),
            None => video.path.display().to_string(),
        },
        message,
    };
    let loaded = timed(&mut times.read, || {
        read_video(video, &config.ingest, durations)
    })
    .map_err(|e| fail(e.problem.to_string()))?;
    let mut result = match source {
        Source::Propose => VideoProposals::new(&loaded, &analyse(&loaded, config, &mut times)),
        Source::Recaption(earlier) => {
            let path = earlier.join(format!("{}.json", loaded.id));
            std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<VideoProposals>(&bytes).map_err(|e| e.to_string())
                })
                .map_err(|e| fail(format!("proposals {}: {e}", path.display())))?
        }
    };
    timed(&mut times.caption, || result.caption(&loaded, captioner))
        .map_err(|e| fail(e.to_string()))?;
    let target = dir.join(format!("{}.json", loaded.id));
    timed(&mut times.write, || {
        let bytes = serde_json::to_vec(&result).map_err(std::io::Error::other)?;
        write_atomic(&target, &bytes, Durability::None)
    })
    .map_err(|e| fail(format!("cannot write {}: {e}", target.display())))?;
    Ok((times, result))
}
