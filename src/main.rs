//! The `momentminer` binary: parses the command line ([`cli`]) and hands each subcommand to
//! the library, through [`commands`] where there is printing to do.

mod cli;
mod commands;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Command, LogFormat};
use commands::{
    evaluate_model, load_video, on_model_threads, print_evaluation, propose_paths, train_model,
};
use momentminer::bench;
use momentminer::config::Config;
use momentminer::processor::{analyse, Source, StageTimes};
use momentminer::{caption, daemon, inspect, queue, report, synth};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once: many library errors already
/// include their source's message, which `{:#}` would print a second time.
fn chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
    }
    line
}

fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let colour = std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let format = format.unwrap_or(match under_journald {
        true => LogFormat::Journald,
        false => LogFormat::Human,
    });
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
        LogFormat::Journald => builder.without_time().with_target(false).init(),
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    let mut overrides = cli.overrides.clone();
    if let Some(device) = &cli.device {
        overrides.push(format!("compute.device={device}"));
    }
    let loaded = Config::load(&cli.config, &overrides);
    if let Command::Check { print, sample } = &cli.command {
        return commands::check(loaded, *print, sample.as_deref());
    }
    let mut config = loaded?;
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
            structure,
            release,
        } => {
            let settings = out.join(synth::CAPTION_SETTINGS);
            match structure {
                Some(annotations) => {
                    let world = &mut config.structure;
                    world.first_index = first_index.unwrap_or(world.first_index);
                    world.videos = videos.unwrap_or(world.videos);
                    world.seed = seed.unwrap_or(world.seed);
                    world.dim = dim.unwrap_or(world.dim);
                    let made = momentminer::structure::generate(&annotations, &out, &config)?;
                    println!(
                        "development world on {}: {} videos, {} queries, a {}-word vocabulary; \
                         features in {}, ground truth in {}; caption with --config {}",
                        annotations.display(),
                        made.videos,
                        made.queries,
                        made.words,
                        out.join("features").display(),
                        out.join("gt.jsonl").display(),
                        settings.display()
                    );
                }
                None => {
                    let world = &mut config.synth;
                    world.first_index = first_index.unwrap_or(world.first_index);
                    world.videos = videos.unwrap_or(world.videos);
                    world.seed = seed.unwrap_or(world.seed);
                    world.dim = dim.unwrap_or(world.dim);
                    let truth = synth::generate(&out, world)?;
                    println!(
                        "synthetic world: {} videos, {} events, features in {}, ground truth in {}; \
                         caption with --config {}",
                        world.videos,
                        truth.len(),
                        out.join("features").display(),
                        out.join("gt.jsonl").display(),
                        settings.display()
                    );
                }
            }
            if let Some(release) = release {
                commands::write_release(&out, release)?;
            }
        }
        Command::EvalProposals {
            gt,
            format,
            proposals,
        } => print_evaluation(&gt, format, &proposals, &config)?,
        Command::Demo {
            out,
            epochs,
            test_videos,
        } => {
            let train = config.train.clone();
            on_model_threads(&train, move || {
                commands::demo(&out, epochs, test_videos, config)
            })?
        }
        Command::Bench(options) => print!("{}", bench::run(&config, &options)?),
        Command::Check { .. } => unreachable!("answered above"),
        Command::Kernels { archs, out, bench } => {
            commands::kernels(&archs, out.as_deref(), &config.compute.nvrtc_library)?;
            if bench {
                commands::kernel_bench(&config)?;
            }
        }
        Command::Report {
            run,
            out,
            gt,
            format,
        } => {
            let truth = gt.as_deref().map(|path| report::Truth { path, format });
            let summary = report::write(&run, &out, &config, truth)?;
            println!(
                "report of {} videos ({} with a self-similarity picture): {}",
                summary.videos,
                summary.pictures,
                summary.index.display()
            );
        }
        Command::Watch => {
            let file = cli.config.clone();
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
            format,
            features,
            out,
        } => on_model_threads(&config.train, || {
            train_model(&dataset, format, &features, &out, &config)
        })?,
        Command::Ground {
            model,
            method,
            features,
            video,
            query,
            queries,
            top_k,
        } => on_model_threads(&config.train, || {
            commands::ground(
                method,
                model.as_deref(),
                &features,
                video.as_deref(),
                query,
                queries.as_deref(),
                top_k,
                &config,
            )
        })?,
        Command::Eval {
            model,
            method,
            annotations,
            format,
            features,
            baselines,
            per_query,
        } => on_model_threads(&config.train, || {
            evaluate_model(
                method,
                model.as_deref(),
                &annotations,
                format,
                &features,
                baselines,
                per_query.as_deref(),
                &config,
            )
        })?,
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
