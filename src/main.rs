use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use momentminer::batch::{collect_videos, propose_all, BatchReport, Source};
use momentminer::bench::{self, BenchOptions};
use momentminer::config::Config;
use momentminer::ingest::{read_video, Durations};
use momentminer::pipeline::{analyse, StageTimes};
use momentminer::{caption, daemon, eval, inspect, queue, synth};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "momentminer",
    version,
    about = "Mines temporal event proposals for video moment retrieval from unlabelled video features"
)]
struct Cli {
    /// Configuration file (TOML); only the keys it sets change the built-in defaults.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override one configuration key, e.g. --set events.k=6 (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Propose temporal events for feature files and folders and caption them (caption.mode);
    /// writes OUT/proposals/<vid>.json and the dataset: OUT/dataset/psvl.json,
    /// moment_detr.jsonl and charades.txt.
    Propose {
        /// Feature files (.npy, .npz, .h5/.hdf5) and folders, searched recursively.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder; results go to OUT/proposals/<vid>.json.
        #[arg(long)]
        out: PathBuf,
        /// Exit non-zero when any input fails.
        #[arg(long)]
        strict: bool,
    },
    /// Caption the proposals of an earlier `propose` run again (another vocabulary, text tower
    /// or caption.mode) without finding them again; writes OUT/proposals/<vid>.json and
    /// OUT/dataset/.
    Caption {
        /// The feature files and folders the proposals were found on.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The earlier run's output folder (or its proposals/ folder).
        #[arg(long)]
        proposals: PathBuf,
        /// Output folder (may be the earlier run's: its results are replaced one by one).
        #[arg(long)]
        out: PathBuf,
        /// Exit non-zero when any input fails.
        #[arg(long)]
        strict: bool,
    },
    /// Draw one video's similarity matrix, atomic events and top proposals to a PNG.
    Inspect {
        /// A feature file.
        file: PathBuf,
        /// Where the picture is written.
        #[arg(long)]
        png: PathBuf,
        /// Which video of a many-video (HDF5) file; the first if omitted.
        #[arg(long)]
        video: Option<String>,
    },
    /// Generate the synthetic world: features, duration sidecars and ground truth (gt.jsonl).
    /// Flags override the [synth] section of the configuration.
    Synth {
        /// Output folder: OUT/features/<vid>.npy + <vid>.json, and OUT/gt.jsonl.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        videos: Option<usize>,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        dim: Option<usize>,
    },
    /// Recall of ranked proposals against ground truth, with sliding-window and random baselines.
    EvalProposals {
        /// Annotations: Charades-STA .txt, Moment-DETR .jsonl (e.g. synth's gt.jsonl),
        /// ActivityNet Captions .json or PSVL .json.
        #[arg(long)]
        gt: PathBuf,
        /// The output folder of `propose` (or its proposals/ folder).
        #[arg(long)]
        proposals: PathBuf,
    },
    /// The README's first command: synthetic world → proposals → recall table.
    Demo {
        /// Output folder: the synthetic world and its proposals.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
    },
    /// Throughput of the whole propose path on a generated corpus, with per-stage times.
    Bench(BenchOptions),
    /// Run the daemon: watch [daemon].inbox, write proposals, dataset shards and quarantine
    /// records, keep the ledger. SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the config.
    Watch,
    /// What the daemon's ledger says: inputs per state, throughput, latency, recent problems.
    /// With --queue, what the Redis stream says instead.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Report on the Redis queue at this URL (overrides queue.url).
        #[arg(long, value_name = "URL")]
        queue: Option<String>,
    },
    /// Add one Redis Streams message per feature file for `worker`s to process.
    Enqueue {
        /// Feature files and folders (searched recursively); paths are sent absolute.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Redis URL (overrides queue.url).
        #[arg(long, value_name = "URL")]
        queue: Option<String>,
    },
    /// Process queued inputs as one consumer of the group, with the daemon's outputs.
    Worker {
        /// Redis URL (overrides queue.url).
        #[arg(long, value_name = "URL")]
        queue: Option<String>,
        /// This worker's name in the group (overrides queue.consumer).
        #[arg(long)]
        name: Option<String>,
    },
    /// Encode sentences with the query text encoder (caption.text_model); prints JSON lines
    /// with the token ids and the unit-length sentence embedding.
    EncodeText {
        #[arg(required = true)]
        sentences: Vec<String>,
    },
    /// Merge the pseudo-labels of every ledger (STATE/<worker>/ and the daemon's) into one
    /// dataset.
    Merge {
        /// Where the merged shards go (default: OUTPUT/dataset/merged).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let mut config = Config::load(cli.config.as_deref(), &cli.overrides)?;
    match cli.command {
        Command::Propose {
            inputs,
            out,
            strict,
        } => {
            let report = propose_paths(&inputs, &out, &config, Source::Propose)?;
            if strict && !report.failures.is_empty() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Caption {
            inputs,
            proposals,
            out,
            strict,
        } => {
            let nested = proposals.join("proposals");
            let earlier = if nested.is_dir() { nested } else { proposals };
            let report = propose_paths(&inputs, &out, &config, Source::Recaption(&earlier))?;
            if strict && !report.failures.is_empty() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
        Command::Inspect { file, png, video } => {
            let (videos, failures) = collect_videos(std::slice::from_ref(&file));
            if let Some(f) = failures.first() {
                bail!("{}: {}", f.input, f.message);
            }
            let chosen = match &video {
                Some(id) => videos.iter().find(|v| &v.id() == id),
                None => videos.first(),
            }
            .with_context(|| {
                format!("{}: no video {}", file.display(), video.unwrap_or_default())
            })?;
            let durations = Durations::load(&config.ingest.durations_file)?;
            let loaded = read_video(chosen, &config.ingest, &durations)?;
            let analysis = analyse(&loaded, &config, &mut StageTimes::default());
            inspect::draw(&loaded, &analysis, &png)?;
            println!(
                "{}: {} atomic events, {} proposals; picture in {}",
                loaded.id,
                analysis.events.spans.len(),
                analysis.proposals.len(),
                png.display()
            );
        }
        Command::Synth {
            out,
            videos,
            seed,
            dim,
        } => {
            config.synth.videos = videos.unwrap_or(config.synth.videos);
            config.synth.seed = seed.unwrap_or(config.synth.seed);
            config.synth.dim = dim.unwrap_or(config.synth.dim);
            let truth = synth::generate(&out, &config.synth)?;
            println!(
                "synthetic world: {} videos, {} events, features in {}, ground truth in {}",
                config.synth.videos,
                truth.len(),
                out.join("features").display(),
                out.join("gt.jsonl").display()
            );
        }
        Command::EvalProposals { gt, proposals } => print_evaluation(&gt, &proposals, &config)?,
        Command::Demo { out } => {
            let truth = synth::generate(&out, &config.synth)?;
            println!(
                "1/3 synthetic world: {} videos, {} planted events in {}",
                config.synth.videos,
                truth.len(),
                out.display()
            );
            println!("2/3 proposing and captioning");
            propose_paths(&[out.join("features")], &out, &config, Source::Propose)?;
            println!("3/3 against the planted events");
            print_evaluation(&out.join("gt.jsonl"), &out, &config)?;
        }
        Command::Bench(options) => print!("{}", bench::run(&config, &options)?),
        Command::Watch => {
            let (file, overrides) = (cli.config.clone(), cli.overrides.clone());
            let reload = Box::new(move || Config::load(file.as_deref(), &overrides));
            daemon::run(config, reload)?;
        }
        Command::Status { json, queue: None } => {
            let status = daemon::status::read(&config.daemon.state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Status {
            json,
            queue: Some(url),
        } => {
            config.queue.url = url;
            let status = queue::status(&config.queue)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Enqueue { inputs, queue } => {
            config.queue.url = queue.unwrap_or(config.queue.url);
            let added = queue::enqueue(&config.queue, &inputs)?;
            println!(
                "enqueued {added} inputs on {} stream {}",
                config.queue.url, config.queue.stream
            );
        }
        Command::Worker { queue, name } => {
            config.queue.url = queue.unwrap_or(config.queue.url);
            config.queue.consumer = name.unwrap_or(config.queue.consumer);
            queue::worker::run(config)?;
        }
        Command::EncodeText { sentences } => {
            let encoder = caption::text::TextEncoder::load(&config.caption)?;
            let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
            for (text, encoded) in texts.iter().zip(encoder.encode(&texts)?) {
                let line = serde_json::json!({
                    "text": text,
                    "ids": encoded.ids,
                    "embedding": encoded.pooled,
                });
                println!("{line}");
            }
        }
        Command::Merge { out } => {
            let out = out.unwrap_or_else(|| config.daemon.output.join("dataset/merged"));
            let report =
                queue::merge::merge(&config.daemon.state, &out, config.daemon.shard_videos)?;
            println!(
                "merged {} ledgers: {} videos, {} labels in {} shards in {} ({} duplicate labels dropped)",
                report.ledgers,
                report.videos,
                report.labels,
                report.shards_written,
                out.display(),
                report.duplicates_dropped
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Proposal recall, and caption accuracy where the ground truth names verbs and nouns.
fn print_evaluation(gt: &Path, proposals: &Path, config: &Config) -> Result<()> {
    print!(
        "{}",
        eval::format_table(&eval::proposal_report(gt, proposals)?)
    );
    let vocabulary = caption::configured_vocabulary(config)?;
    if let Some(accuracy) = eval::caption_report(gt, proposals, config.caption.verbs, &vocabulary)?
    {
        print!("{accuracy}");
    }
    Ok(())
}

fn propose_paths(
    inputs: &[PathBuf],
    out: &Path,
    config: &Config,
    source: Source,
) -> Result<BatchReport> {
    let captioner = caption::Captioner::load(config)?;
    let (videos, mut failures) = collect_videos(inputs);
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut report = propose_all(&videos, out, config, &captioner, source, show_progress)?;
    failures.append(&mut report.failures);
    report.failures = failures;
    println!(
        "{} {} videos in {:.2} s ({:.0} videos/s): {} proposals; results in {}, dataset in {}",
        match source {
            Source::Propose => "proposed",
            Source::Recaption(_) => "captioned",
        },
        report.videos,
        report.elapsed.as_secs_f64(),
        report.videos_per_second(),
        report.proposals,
        out.join("proposals").display(),
        out.join("dataset").display()
    );
    if !report.failures.is_empty() {
        println!("{} inputs failed:", report.failures.len());
        for f in &report.failures {
            println!("  {}: {}", f.input, f.message);
        }
    }
    Ok(report)
}
