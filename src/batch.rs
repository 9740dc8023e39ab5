//! Batch proposal runs over files and folders (`momentminer propose`, `momentminer bench`).

use crate::config::Config;
use crate::fsio::{sync_filesystem, write_atomic};
use crate::ingest::{list_videos, read_video, Durations, FileKind, IngestError, VideoRef};
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
            walk(input, &mut files, &mut failures);
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

fn walk(dir: &Path, files: &mut Vec<PathBuf>, failures: &mut Vec<Failure>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            failures.push(Failure {
                input: dir.display().to_string(),
                message: format!("cannot list folder: {e}"),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        // Symlinked folders are not followed: they can form cycles.
        let is_link = path
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink());
        if path.is_dir() && !is_link {
            walk(&path, files, failures);
        } else if FileKind::of(&path).is_some() {
            files.push(path);
        }
    }
}

/// Proposes every video, writing `out/proposals/<vid>.json` atomically.
pub fn propose_all(
    videos: &[VideoRef],
    out: &Path,
    config: &Config,
    show_progress: bool,
) -> Result<BatchReport, BatchError> {
    let durations = Durations::load(&config.ingest.durations_file)?;
    let dir = out.join("proposals");
    std::fs::create_dir_all(&dir).map_err(|source| BatchError::Output {
        path: dir.clone(),
        source,
    })?;
    // File creation blocks on the filesystem, so twice as many workers as cores keeps the
    // cores busy while some wait.
    let threads = match config.run.threads {
        0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
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
    let times = pool.install(|| {
        videos
            .par_iter()
            .map(|video| {
                let result = propose_one(video, &dir, config, &durations);
                progress.inc(1);
                result.unwrap_or_else(|failure| {
                    tracing::warn!(input = %failure.input, "{}", failure.message);
                    if let Ok(mut list) = failures.lock() {
                        list.push(failure);
                    }
                    StageTimes::default()
                })
            })
            .reduce(StageTimes::default, |mut a, b| {
                a += b;
                a
            })
    });
    progress.finish_and_clear();
    if config.run.fsync {
        sync_filesystem(&dir).map_err(|source| BatchError::Output {
            path: dir.clone(),
            source,
        })?;
    }
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(BatchReport {
        videos: videos.len() - failures.len(),
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
) -> Result<StageTimes, Failure> {
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
    let analysis = analyse(&loaded, config, &mut times);
    let result = VideoProposals::new(&loaded, &analysis);
    let target = dir.join(format!("{}.json", loaded.id));
    timed(&mut times.write, || {
        let bytes = serde_json::to_vec(&result).map_err(std::io::Error::other)?;
        write_atomic(&target, &bytes, false)
    })
    .map_err(|e| fail(format!("cannot write {}: {e}", target.display())))?;
    Ok(times)
}
