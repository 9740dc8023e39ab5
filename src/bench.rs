//! `momentminer bench`: throughput of the whole propose path (read `.npy` from disk → write
//! JSON) on a generated corpus, with the time spent in each stage.

use crate::batch::{collect_videos, propose_all, BatchError, BatchReport};
use crate::caption::{CaptionError, Captioner};
use crate::config::{Config, GroupDurability};
use crate::daemon::{self, DaemonError};
use crate::processor::{Source, VideoProcessor};
use crate::service::ledger::{Ledger, LedgerError};
use crate::service::{Folders, Role, ServiceError};
use crate::synth::{generate, SynthError, CAPTION_SETTINGS};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Clone, clap::Args)]
/// What `momentminer bench` runs.
pub struct BenchOptions {
    #[arg(long, default_value_t = 2000)]
    /// Videos in the generated corpus.
    pub videos: usize,
    #[arg(long, default_value_t = 60)]
    /// Shortest video, in feature steps.
    pub frames_min: usize,
    #[arg(long, default_value_t = 400)]
    /// Longest video, in feature steps.
    pub frames_max: usize,
    #[arg(long, default_value_t = 1024)]
    /// Feature width.
    pub dim: usize,
    /// Timed passes over the corpus; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Where the corpus is generated and kept (a removed temporary folder if omitted).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also run the daemon on the same corpus after each batch pass (files hard-linked into a
    /// fresh inbox), then time single files from drop to result.
    #[arg(long)]
    pub watch: bool,
    /// Single files dropped one at a time for the latency figures (with --watch).
    #[arg(long, default_value_t = 50)]
    pub latency_files: usize,
    /// The daemon's settle time during the benchmark; subtracted from every figure.
    #[arg(long, default_value_t = 100)]
    pub settle_ms: u64,
}

#[derive(Debug, Error)]
/// Why a benchmark could not run.
pub enum BenchError {
    #[error("cannot prepare the benchmark folder {path}: {source}")]
    /// The benchmark's folder cannot be prepared.
    Scratch {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// The corpus cannot be generated.
    Synth(#[from] SynthError),
    #[error(transparent)]
    /// The corpus's caption settings cannot be merged.
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    /// A batch pass failed.
    Batch(#[from] BatchError),
    #[error(transparent)]
    /// The captioner cannot be loaded.
    Caption(#[from] CaptionError),
    #[error(transparent)]
    /// The durations file or the compute back-end cannot be opened.
    Processor(#[from] crate::processor::OpenError),
    #[error("benchmark corpus unreadable: {0}")]
    /// A corpus file cannot be listed.
    Corpus(String),
    #[error(transparent)]
    /// The daemon pass failed.
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    /// The daemon's service layer cannot start.
    Service(#[from] ServiceError),
    #[error(transparent)]
    /// The daemon's ledger cannot be read.
    Ledger(#[from] LedgerError),
    #[error("the daemon did not finish the corpus within {0:?}")]
    /// The daemon did not finish the corpus in time.
    Stalled(Duration),
}

/// The figures of a benchmark run; `Display` prints its report.
pub struct BenchSummary {
    options: BenchOptions,
    fsync: bool,
    durability: GroupDurability,
    /// videos/s of each timed pass, in order.
    passes: Vec<f64>,
    median: BatchReport,
    /// videos/s of the daemon after each batch pass, settle time excluded.
    watch_passes: Vec<f64>,
    /// Drop-to-result times of single files (ms, settle time excluded), sorted.
    latencies_ms: Vec<f64>,
    /// Median CPU time (user + system, all threads) per video: batch, watch.
    cpu_ms_per_video: [f64; 2],
}

/// Generates a corpus, proposes it `repeats` times (after one untimed pass) and, with `watch`, runs
/// the daemon over it after each pass.
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
    // The corpus is a synthetic world of its own size: caption it with that world's tower.
    let config = &config.merged_with(&root.join(CAPTION_SETTINGS))?;
    let processor = VideoProcessor::new(config.clone(), Captioner::load(config)?)?;
    let (refs, failures) = collect_videos(&[root.join("features")]);
    if let Some(f) = failures.first() {
        return Err(BenchError::Corpus(f.to_string()));
    }
    let mut runs = Vec::with_capacity(options.repeats);
    let mut watch_passes = Vec::new();
    let (mut batch_cpu, mut watch_cpu) = (Vec::new(), Vec::new());
    let mut latencies_ms = Vec::new();
    // Pass 0 warms the page cache and is not timed. Outputs are only removed at the end:
    // deleting thousands of files just before a pass slows the file creation it measures.
    let passes_dir = root.join("passes");
    std::fs::remove_dir_all(&passes_dir).ok();
    for pass in 0..=options.repeats.max(1) {
        let out = passes_dir.join(format!("batch{pass}"));
        let cpu_before = cpu_seconds();
        let report = propose_all(&refs, &out, &processor, Source::Propose, false)?;
        if pass > 0 {
            batch_cpu.push(cpu_seconds() - cpu_before);
            runs.push(report);
            if options.watch {
                let last = pass == options.repeats.max(1);
                let latency_files = if last { options.latency_files } else { 0 };
                let cpu_before = cpu_seconds();
                let (rate, mut latencies) = watch_pass(
                    config,
                    options,
                    &root.join("features"),
                    &passes_dir.join(format!("watch{pass}")),
                    latency_files,
                )?;
                watch_cpu.push(cpu_seconds() - cpu_before);
                watch_passes.push(rate);
                latencies_ms.append(&mut latencies);
            }
        }
    }
    let passes = runs.iter().map(BatchReport::videos_per_second).collect();
    runs.sort_by(|a, b| a.videos_per_second().total_cmp(&b.videos_per_second()));
    let median_run = runs.swap_remove(runs.len() / 2);
    std::fs::remove_dir_all(&passes_dir).ok();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(BenchSummary {
        options: options.clone(),
        fsync: config.run.fsync,
        durability: config.daemon.durability,
        passes,
        median: median_run,
        watch_passes,
        latencies_ms,
        cpu_ms_per_video: [&batch_cpu, &watch_cpu]
            .map(|cpu| 1e3 * median(cpu) / options.videos.max(1) as f64),
    })
}

/// User + system CPU time of this process so far: less disturbed by other tenants of a busy
/// machine than wall-clock rates.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The daemon, in this process, on a fresh inbox: the whole corpus hard-linked in at once
/// (videos/s until the ledger has all of it), then `latency_files` single files, each waited
/// for before the next (ms from drop until its result file exists). Settle time is excluded.
fn watch_pass(
    config: &Config,
    options: &BenchOptions,
    features: &Path,
    base: &Path,
    latency_files: usize,
) -> Result<(f64, Vec<f64>), BenchError> {
    let mut config = config.clone();
    config.daemon.inbox = base.join("inbox");
    config.daemon.output = base.join("out");
    config.daemon.quarantine = base.join("quarantine");
    config.daemon.state = base.join("state");
    config.daemon.settle_ms = options.settle_ms;
    config.daemon.metrics_addr.clear();
    let folders = Folders::prepare(&config.daemon, &Role::Watcher)?;
    let scratch = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BenchError::Scratch { path, source }
    };
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(features)
        .map_err(scratch(features))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    inputs.sort();
    let state = folders.state.clone();
    let running = {
        let config = config.clone();
        std::thread::spawn(move || {
            let reload = config.clone();
            daemon::run(config, Box::new(move || Ok(reload.clone())))
        })
    };
    let settle = Duration::from_millis(options.settle_ms);
    let link = |source: &Path, name: &str| -> Result<(), BenchError> {
        let sidecar = source.with_extension("json");
        let target = folders.inbox.join(name);
        std::fs::hard_link(&sidecar, target.with_extension("json")).map_err(scratch(&sidecar))?;
        std::fs::hard_link(source, &target).map_err(scratch(&target))
    };
    // Wait until the daemon has opened its ledger and watches the inbox.
    let started = Instant::now();
    while !daemon::status::read(&state, &state.join("models")).is_ok_and(|s| s.running) {
        if started.elapsed() > Duration::from_secs(30) || running.is_finished() {
            return finish(running).and(Err(BenchError::Stalled(started.elapsed())));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    for input in &inputs {
        let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
        link(input, &name.unwrap_or_default())?;
    }
    let limit = Duration::from_secs(600);
    let ledger = Ledger::open_read_only(&state)?;
    loop {
        if ledger.finished()? as usize >= inputs.len() {
            break;
        }
        if started.elapsed() > limit || running.is_finished() {
            return finish(running).and(Err(BenchError::Stalled(limit)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = inputs.len() as f64 / started.elapsed().saturating_sub(settle).as_secs_f64();
    let mut latencies = Vec::with_capacity(latency_files);
    for (i, input) in inputs.iter().cycle().take(latency_files).enumerate() {
        let name = format!("single{i:05}");
        let result = folders.proposals.join(format!("{name}.json"));
        let dropped = Instant::now();
        link(input, &format!("{name}.npy"))?;
        while !result.exists() {
            if dropped.elapsed() > Duration::from_secs(60) {
                return finish(running).and(Err(BenchError::Stalled(dropped.elapsed())));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(dropped.elapsed().saturating_sub(settle).as_secs_f64() * 1e3);
    }
    // The daemon stops as it does under systemd: on SIGTERM, which its handler catches.
    // SAFETY: kill(2) on our own pid.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    finish(running)?;
    Ok((rate, latencies))
}

fn finish(running: std::thread::JoinHandle<Result<(), DaemonError>>) -> Result<(), BenchError> {
    match running.join() {
        Ok(result) => Ok(result?),
        Err(_) => Err(BenchError::Corpus("the daemon thread panicked".into())),
    }
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
        // Both per worker thread: captioning must keep up with the stages that find proposals.
        let t = &m.times;
        let finding = (t.sample + t.similarity + t.events + t.proposals).as_secs_f64();
        writeln!(
            f,
            "captioning: {:.0} proposals/s per worker, finding them {:.0} proposals/s per worker ({:.0}x); {:.1} proposals per video",
            m.proposals as f64 / t.caption.as_secs_f64().max(1e-12),
            m.proposals as f64 / finding.max(1e-12),
            finding / t.caption.as_secs_f64().max(1e-12),
            m.proposals as f64 / m.videos.max(1) as f64
        )?;
        if !self.watch_passes.is_empty() {
            writeln!(
                f,
                "watch mode (the daemon: ledger, durability {}, settle {} ms excluded):",
                format!("{:?}", self.durability).to_lowercase(),
                o.settle_ms
            )?;
            for (i, rate) in self.watch_passes.iter().enumerate() {
                writeln!(f, "  pass {}: {rate:.0} videos/s", i + 1)?;
            }
            let (watch, batch) = (median(&self.watch_passes), median(&self.passes));
            writeln!(
                f,
                "median: {watch:.0} videos/s = {:.0}% of the batch median ({batch:.0})",
                100.0 * watch / batch
            )?;
            let [batch_cpu, watch_cpu] = self.cpu_ms_per_video;
            writeln!(
                f,
                "CPU per video (user + system, median pass): batch {batch_cpu:.2} ms, watch {watch_cpu:.2} ms ({:.0}%)",
                100.0 * watch_cpu / batch_cpu
            )?;
        }
        if !self.latencies_ms.is_empty() {
            let l = &self.latencies_ms;
            let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
            writeln!(
                f,
                "drop-to-result latency, {} single files, settle excluded: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                l.len(),
                at(0.5),
                at(0.99),
                at(1.0)
            )?;
        }
        Ok(())
    }
}
