//! `momentminer bench`: throughput of the whole propose path (read `.npy` from disk → write
//! JSON) on a generated corpus, with the time spent in each stage.

use crate::batch::{collect_videos, propose_all, BatchError, BatchReport};
use crate::config::Config;
use crate::synth::{generate, SynthError};
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    #[arg(long, default_value_t = 2000)]
    pub videos: usize,
    #[arg(long, default_value_t = 60)]
    pub frames_min: usize,
    #[arg(long, default_value_t = 400)]
    pub frames_max: usize,
    #[arg(long, default_value_t = 1024)]
    pub dim: usize,
    /// Timed passes over the corpus; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Where the corpus is generated and kept (a removed temporary folder if omitted).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot prepare the benchmark folder {path}: {source}")]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Synth(#[from] SynthError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("benchmark corpus unreadable: {0}")]
    Corpus(String),
}

pub struct BenchSummary {
    options: BenchOptions,
    fsync: bool,
    /// videos/s of each timed pass, in order.
    passes: Vec<f64>,
    median: BatchReport,
}

pub fn run(config: &Config, options: &BenchOptions) -> Result<BenchSummary, BenchError> {
    // A temporary folder only when the user named none; `_scratch` removes it on return.
    let (root, _scratch) = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| BenchError::Scratch {
                path: dir.clone(),
                source,
            })?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("momentminer-bench")
                .tempdir()
                .map_err(|source| BenchError::Scratch {
                    path: std::env::temp_dir(),
                    source,
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let mut synth = config.synth.clone();
    synth.videos = options.videos;
    synth.frames_min = options.frames_min;
    synth.frames_max = options.frames_max;
    synth.dim = options.dim;
    generate(&root, &synth)?;
    let (refs, failures) = collect_videos(&[root.join("features")]);
    if let Some(f) = failures.first() {
        return Err(BenchError::Corpus(format!("{}: {}", f.input, f.message)));
    }
    let mut runs = Vec::with_capacity(options.repeats);
    // Pass 0 warms the page cache and is not timed.
    for pass in 0..=options.repeats.max(1) {
        let out = root.join(format!("run{pass}"));
        let report = propose_all(&refs, &out, config, false)?;
        std::fs::remove_dir_all(&out).ok();
        if pass > 0 {
            runs.push(report);
        }
    }
    let passes = runs.iter().map(BatchReport::videos_per_second).collect();
    runs.sort_by(|a, b| a.videos_per_second().total_cmp(&b.videos_per_second()));
    let median = runs.swap_remove(runs.len() / 2);
    Ok(BenchSummary {
        options: options.clone(),
        fsync: config.run.fsync,
        passes,
        median,
    })
}

impl fmt::Display for BenchSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (o, m) = (&self.options, &self.median);
        writeln!(
            f,
            "corpus: {} videos, T {}..{}, D {}; fsync {}; {} timed passes (+1 warm-up)",
            o.videos,
            o.frames_min,
            o.frames_max,
            o.dim,
            self.fsync,
            self.passes.len()
        )?;
        for (i, rate) in self.passes.iter().enumerate() {
            writeln!(f, "  pass {}: {rate:.0} videos/s", i + 1)?;
        }
        let per_video = |d: std::time::Duration| 1e3 * d.as_secs_f64() / m.videos.max(1) as f64;
        writeln!(
            f,
            "median: {:.0} videos/s ({:.3} ms per video wall clock, {} workers)",
            m.videos_per_second(),
            per_video(m.elapsed),
            m.threads
        )?;
        writeln!(
            f,
            "per-stage time per video in the median pass (summed over workers):"
        )?;
        let total: f64 = m.times.named().iter().map(|(_, d)| per_video(*d)).sum();
        for (name, d) in m.times.named() {
            writeln!(
                f,
                "  {name:<11} {:8.3} ms  {:5.1}%",
                per_video(d),
                100.0 * per_video(d) / total.max(1e-12)
            )?;
        }
        Ok(())
    }
}
