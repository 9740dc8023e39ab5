use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use momentminer::batch::{collect_videos, propose_all, BatchReport};
use momentminer::bench::{self, BenchOptions};
use momentminer::config::Config;
use momentminer::ingest::{read_video, Durations};
use momentminer::processor::{analyse, Source, StageTimes, VideoProcessor};
use momentminer::{caption, daemon, eval, ground, inspect, queue, synth, train};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "momentminer",
    version,
    about = "Mines temporal event proposals for video moment retrieval from unlabelled video features"
)]
struct Cli {
    /// Configuration file (TOML); only the keys it sets change the built-in defaults.
    /// Repeatable: later files change what earlier ones set (e.g. a daemon's file, then a
    /// synthetic world's caption.toml).
    #[arg(long, global = true)]
    config: Vec<PathBuf>,
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
        /// Index of the first video: a later range of the same world (a test set).
        #[arg(long)]
        first_index: Option<usize>,
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
        /// Output folder: the synthetic world, its proposals, dataset and models.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// Training epochs of the grounding models (a short run; train.epochs for the full one).
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        /// Videos of the test world (later videos of the same world, never trained on).
        #[arg(long, default_value_t = 100)]
        test_videos: usize,
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
    /// Train the zero-shot grounding model on pseudo-labels (a dataset folder of `propose` or
    /// the daemon, or a PSVL/Moment-DETR/Charades-STA file); resumes an interrupted run in OUT.
    Train {
        #[arg(long)]
        dataset: PathBuf,
        /// Feature files or folders holding every video of the dataset.
        #[arg(long, required = true)]
        features: Vec<PathBuf>,
        /// Model folder: model.safetensors + model.json (the best epoch on validation).
        #[arg(long)]
        out: PathBuf,
    },
    /// Where in a video does a sentence happen? Prints JSON: the top-k segments in seconds.
    Ground {
        #[arg(long)]
        model: PathBuf,
        /// One feature file (the first video of a many-video file unless --video names one).
        #[arg(long)]
        features: PathBuf,
        #[arg(long)]
        video: Option<String>,
        /// A sentence (repeatable).
        #[arg(long)]
        query: Vec<String>,
        /// A file of sentences, one per line.
        #[arg(long)]
        queries: Option<PathBuf>,
        /// Segments per query (default train.top_k).
        #[arg(long)]
        top_k: Option<usize>,
    },
    /// R@1/R@5 at IoU 0.3/0.5/0.7 and mIoU of a trained model on annotated sentences.
    Eval {
        #[arg(long)]
        model: PathBuf,
        /// Charades-STA .txt, ActivityNet Captions .json, Moment-DETR .jsonl or PSVL .json.
        #[arg(long)]
        annotations: PathBuf,
        #[arg(long, required = true)]
        features: Vec<PathBuf>,
        /// Also rank each video's proposals by text similarity (no model) and at random.
        #[arg(long)]
        baselines: bool,
        /// Write every query's predictions and IoU here (JSONL).
        #[arg(long)]
        per_query: Option<PathBuf>,
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
    let mut config = Config::load(&cli.config, &cli.overrides)?;
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
            let loaded = load_video(&file, video.as_deref(), &config)?;
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
            first_index,
        } => {
            config.synth.first_index = first_index.unwrap_or(config.synth.first_index);
            config.synth.videos = videos.unwrap_or(config.synth.videos);
            config.synth.seed = seed.unwrap_or(config.synth.seed);
            config.synth.dim = dim.unwrap_or(config.synth.dim);
            let truth = synth::generate(&out, &config.synth)?;
            println!(
                "synthetic world: {} videos, {} events, features in {}, ground truth in {}; caption with --config {}",
                config.synth.videos,
                truth.len(),
                out.join("features").display(),
                out.join("gt.jsonl").display(),
                out.join(synth::CAPTION_SETTINGS).display()
            );
        }
        Command::EvalProposals { gt, proposals } => print_evaluation(&gt, &proposals, &config)?,
        Command::Demo {
            out,
            epochs,
            test_videos,
        } => {
            let truth = synth::generate(&out, &config.synth)?;
            // Caption as a user would: with the settings file the world writes beside itself.
            config = config.merged_with(&out.join(synth::CAPTION_SETTINGS))?;
            println!(
                "1/6 synthetic world: {} videos, {} planted events in {}",
                config.synth.videos,
                truth.len(),
                out.display()
            );
            println!("2/6 proposing and captioning");
            propose_paths(&[out.join("features")], &out, &config, Source::Propose)?;
            println!("3/6 proposals and pseudo-queries against the planted events");
            print_evaluation(&out.join("gt.jsonl"), &out, &config)?;
            let test = out.join("test");
            let mut test_world = config.synth.clone();
            test_world.first_index = config.synth.first_index + config.synth.videos;
            test_world.videos = test_videos;
            let test_truth = synth::generate(&test, &test_world)?;
            println!(
                "4/6 test world: {test_videos} later videos of the same world, {} sentences, in {}",
                test_truth.len(),
                test.display()
            );
            config.train.epochs = epochs;
            let features = [out.join("features")];
            println!("5/6 training on the pseudo-labels ({epochs} epochs), and on the ground truth (the ceiling)");
            train_model(&out.join("dataset"), &features, &out.join("model"), &config)?;
            train_model(
                &out.join("gt.jsonl"),
                &features,
                &out.join("model-gt"),
                &config,
            )?;
            let example = &test_truth[0];
            let grounder = ground::Grounder::load(&out.join("model"), &config)?;
            let example_file = synth::video_path(&test, &test_world, &example.vid);
            let loaded = load_video(&example_file, None, &config)?;
            let candidates = ground::proposal_spans(&loaded, &config);
            let answer = grounder.ground(&loaded, &[example.query.as_str()], &candidates, 3)?;
            println!(
                "ground {:?} in {}: {} (truth {:.1}-{:.1} s)",
                example.query,
                example.vid,
                answer[0]
                    .segments
                    .iter()
                    .map(|s| format!("{:.1}-{:.1} s", s.start, s.end))
                    .collect::<Vec<_>>()
                    .join(", "),
                example.relevant_windows[0][0],
                example.relevant_windows[0][1]
            );
            println!("6/6 grounding the test world's sentences: trained on pseudo-labels, with the baselines");
            let test_features = [test.join("features")];
            evaluate_model(
                &out.join("model"),
                &test.join("gt.jsonl"),
                &test_features,
                true,
                None,
                &config,
            )?;
            println!("the ceiling: the same model trained on the ground truth");
            evaluate_model(
                &out.join("model-gt"),
                &test.join("gt.jsonl"),
                &test_features,
                false,
                None,
                &config,
            )?;
        }
        Command::Bench(options) => print!("{}", bench::run(&config, &options)?),
        Command::Watch => {
            let (file, overrides) = (cli.config.clone(), cli.overrides.clone());
            let reload = Box::new(move || Config::load(&file, &overrides));
            daemon::run(config, reload)?;
        }
        Command::Status { json, queue: None } => {
            let status =
                daemon::status::read(&config.daemon.state, &config.daemon.output.join("models"))?;
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
            queue::consumer::run(config)?;
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
        Command::Train {
            dataset,
            features,
            out,
        } => train_model(&dataset, &features, &out, &config)?,
        Command::Ground {
            model,
            features,
            video,
            query,
            queries,
            top_k,
        } => {
            let mut sentences = query;
            if let Some(file) = queries {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read queries from {}", file.display()))?;
                sentences.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
            if sentences.is_empty() {
                bail!("no query: give --query \"...\" or --queries FILE");
            }
            let loaded = load_video(&features, video.as_deref(), &config)?;
            let grounder = ground::Grounder::load(&model, &config)?;
            let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
            let candidates = ground::proposal_spans(&loaded, &config);
            let answers = grounder.ground(
                &loaded,
                &texts,
                &candidates,
                top_k.unwrap_or(config.train.top_k),
            )?;
            let out = serde_json::json!({
                "vid": loaded.id,
                "duration": loaded.duration,
                "answers": answers,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Eval {
            model,
            annotations,
            features,
            baselines,
            per_query,
        } => evaluate_model(
            &model,
            &annotations,
            &features,
            baselines,
            per_query.as_deref(),
            &config,
        )?,
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

/// One video of a feature file: the one named, or the first.
fn load_video(
    file: &Path,
    video: Option<&str>,
    config: &Config,
) -> Result<momentminer::ingest::Video> {
    let (videos, failures) = collect_videos(&[file.to_path_buf()]);
    if let Some(f) = failures.first() {
        bail!("{f}");
    }
    let chosen = match video {
        Some(id) => videos.iter().find(|v| v.id() == id),
        None => videos.first(),
    }
    .with_context(|| format!("{}: no video {}", file.display(), video.unwrap_or_default()))?;
    let durations = Durations::load(&config.ingest.durations_file)?;
    Ok(read_video(chosen, &config.ingest, &durations)?)
}

fn train_model(dataset: &Path, features: &[PathBuf], out: &Path, config: &Config) -> Result<()> {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(config.train.epochs as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} epoch {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = train::train(dataset, features, out, config, |record, best| {
        let line = format!(
            "epoch {:>3}: loss {:.4}, validation loss {:.4} R@1 IoU .3/.5/.7 {:.1}/{:.1}/{:.1} mIoU {:.1} (best loss {:.4}), {:.0} pairs/s",
            record.epoch,
            record.loss,
            record.validation.loss,
            100.0 * record.validation.r1[0],
            100.0 * record.validation.r1[1],
            100.0 * record.validation.r1[2],
            100.0 * record.validation.miou,
            best.loss,
            record.pairs_per_second
        );
        bar.set_position(record.epoch as u64);
        bar.set_message(format!(
            "loss {:.4} validation {:.4}",
            record.loss, record.validation.loss
        ));
        bar.println(&line);
        if bar.is_hidden() {
            println!("{line}");
        }
    })?;
    bar.finish_and_clear();
    let card = &report.card;
    if let Some(epoch) = report.resumed_from {
        println!("resumed after epoch {epoch}");
    }
    let seconds: f64 = card.history.iter().map(|r| r.seconds).sum();
    let pairs: f64 = card
        .history
        .iter()
        .map(|r| r.pairs_per_second * r.seconds)
        .sum();
    println!(
        "trained on {} pairs of {} videos ({} held out for validation); best epoch {} of {}{}: validation loss {:.4}, R@1 IoU .5 {:.1}, mIoU {:.1}; {:.0} pairs/s, {:.1} s per epoch; model in {}",
        card.data.train_pairs,
        card.data.videos,
        card.data.validation_pairs,
        card.best_epoch,
        card.history.len(),
        if report.stopped_early { " (stopped early)" } else { "" },
        card.validation.loss,
        100.0 * card.validation.r1[1],
        100.0 * card.validation.miou,
        pairs / seconds.max(1e-9),
        seconds / card.history.len().max(1) as f64,
        out.display()
    );
    Ok(())
}

fn evaluate_model(
    model: &Path,
    annotations: &Path,
    features: &[PathBuf],
    baselines: bool,
    per_query: Option<&Path>,
    config: &Config,
) -> Result<()> {
    let grounder = ground::Grounder::load(model, config)?;
    let started = std::time::Instant::now();
    let (tables, results) =
        eval::grounding_report(&grounder, annotations, features, config, baselines)?;
    print!("{}", eval::format_table(&tables));
    println!(
        "{} queries in {:.2} s ({:.1} ms per query, proposals and baselines included)",
        results.len(),
        started.elapsed().as_secs_f64(),
        1e3 * started.elapsed().as_secs_f64() / results.len().max(1) as f64
    );
    if let Some(path) = per_query {
        let mut text = String::new();
        for r in &results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
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
    let processor = VideoProcessor::new(config.clone(), caption::Captioner::load(config)?)?;
    let (videos, mut failures) = collect_videos(inputs);
    let show_progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut report = propose_all(&videos, out, &processor, source, show_progress)?;
    failures.append(&mut report.failures);
    report.failures = failures;
    println!(
        "{} {} videos in {:.2} s ({:.0} videos/s): {} proposals, {} training pairs; results in {}, dataset in {}",
        match source {
            Source::Propose => "proposed",
            Source::Recaption(_) => "captioned",
        },
        report.videos,
        report.elapsed.as_secs_f64(),
        report.videos_per_second(),
        report.proposals,
        report.pairs,
        out.join("proposals").display(),
        out.join("dataset").display()
    );
    if !report.failures.is_empty() {
        println!("{} inputs failed:", report.failures.len());
        for f in &report.failures {
            println!("  {f}");
        }
    }
    Ok(report)
}
