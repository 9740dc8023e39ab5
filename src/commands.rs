//! What the subcommands do beyond calling one library function: reading their arguments,
//! printing their reports. The library does the work; these only drive it.

use crate::cli::GroundMethod;
use anyhow::{bail, Context, Result};
use momentminer::batch::{collect_videos, propose_all, BatchReport};
use momentminer::config::{Config, TrainConfig};
use momentminer::dataset::AnnotationFormat;
use momentminer::ingest::{read_video, Durations};
use momentminer::processor::{Source, VideoProcessor};
use momentminer::{caption, compute, eval, ground, synth, train};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `momentminer demo`: the whole loop on a synthetic world, step by step, with the figures.
pub(crate) fn demo(
    out: &Path,
    epochs: usize,
    test_videos: usize,
    mut config: Config,
) -> Result<()> {
    let truth = synth::generate(out, &config.synth)?;
    // Caption as a user would: with the settings file the world writes beside itself.
    config = config.merged_with(&out.join(synth::CAPTION_SETTINGS))?;
    println!(
        "1/6 synthetic world: {} videos, {} planted events in {}",
        config.synth.videos,
        truth.len(),
        out.display()
    );
    println!("2/6 proposing and captioning");
    propose_paths(&[out.join("features")], out, &config, Source::Propose)?;
    println!("3/6 proposals and pseudo-queries against the planted events");
    print_evaluation(&out.join("gt.jsonl"), None, out, &config)?;
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
    train_model(
        &out.join("dataset"),
        None,
        &features,
        &out.join("model"),
        &config,
    )?;
    train_model(
        &out.join("gt.jsonl"),
        None,
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
    println!(
        "6/6 grounding the test world's sentences: trained on pseudo-labels, with the baselines"
    );
    let test_features = [test.join("features")];
    evaluate_model(
        GroundMethod::Model,
        Some(&out.join("model")),
        &test.join("gt.jsonl"),
        None,
        &test_features,
        true,
        None,
        &config,
    )?;
    println!("the ceiling: the same model trained on the ground truth");
    evaluate_model(
        GroundMethod::Model,
        Some(&out.join("model-gt")),
        &test.join("gt.jsonl"),
        None,
        &test_features,
        false,
        None,
        &config,
    )?;
    Ok(())
}

/// Runs `work`, a command that trains or answers with the model, on `train.threads` threads
/// (0: every core), over which the model's arithmetic (candle's matrix products) and everything
/// else inside it spread: training and answering leave the other cores to whatever else the
/// machine runs. Called before any thread of the process starts ([`size_candle_pool`]).
pub(crate) fn on_model_threads<T: Send>(
    train: &TrainConfig,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    size_candle_pool(train);
    match train.threads {
        0 => work(),
        threads => rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("model-{i}"))
            .build()
            .context("cannot start the threads of train.threads")?
            .install(work),
    }
}

/// candle spreads large element-wise operations over one pool of threads per process, sized
/// once from `CANDLE_NUM_THREADS` and serving one operation at a time. Seeds that train side by
/// side queue on it: two seeds, three epochs, took 37 s with the pool at two threads and 25 s
/// at one (README, "Several seeds"). So with several seeds it gets one thread, and otherwise
/// `train.threads`; one set in the environment stands. Called before any thread starts, as the
/// environment may only change then.
fn size_candle_pool(train: &TrainConfig) {
    const VARIABLE: &str = "CANDLE_NUM_THREADS";
    if std::env::var_os(VARIABLE).is_some() {
        return;
    }
    let threads = match (train.member_seeds.is_empty(), train.threads) {
        (false, _) => 1,
        // candle's own default: every core.
        (true, 0) => return,
        (true, threads) => threads,
    };
    std::env::set_var(VARIABLE, threads.to_string());
}

/// The model folder `--method` needs: one for `model`, none for `similarity`.
fn model_for(method: GroundMethod, model: Option<&Path>) -> Result<Option<&Path>> {
    match (method, model) {
        (GroundMethod::Model, Some(model)) => Ok(Some(model)),
        (GroundMethod::Model, None) => {
            bail!("--model FOLDER is needed with --method model (or use --method similarity)")
        }
        (GroundMethod::Similarity, Some(_)) => {
            bail!("--method similarity uses no trained model; leave out --model")
        }
        (GroundMethod::Similarity, None) => Ok(None),
    }
}

/// `momentminer ground`: the best segments of one video for each sentence, as JSON.
#[allow(clippy::too_many_arguments)]
pub(crate) fn ground(
    method: GroundMethod,
    model: Option<&Path>,
    features: &Path,
    video: Option<&str>,
    query: Vec<String>,
    queries: Option<&Path>,
    top_k: Option<usize>,
    config: &Config,
) -> Result<()> {
    let mut sentences = query;
    if let Some(file) = queries {
        let text = std::fs::read_to_string(file)
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
    let model = model_for(method, model)?;
    let loaded = load_video(features, video, config)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let top_k = top_k.unwrap_or(config.train.top_k);
    let answers = match model {
        Some(model) => {
            let grounder = ground::Grounder::load(model, config)?;
            let candidates = ground::proposal_spans(&loaded, config);
            grounder.ground(&loaded, &texts, &candidates, top_k)?
        }
        None => {
            let grounder = ground::SimilarityGrounder::load(config)?;
            let candidates = ground::SimilarityGrounder::candidates(&loaded, config);
            let embedded = grounder.embed(&texts)?;
            let edges = ground::Edges::ByTower;
            grounder.ground(&loaded, &texts, &embedded, &candidates, top_k, edges)?
        }
    };
    let out = serde_json::json!({
        "vid": loaded.id,
        "duration": loaded.duration,
        "answers": answers,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// One video of a feature file: the one named, or the first.
pub(crate) fn load_video(
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

pub(crate) fn train_model(
    dataset: &Path,
    format: Option<AnnotationFormat>,
    features: &[PathBuf],
    out: &Path,
    config: &Config,
) -> Result<()> {
    // Every seed's epochs, as the seeds train side by side.
    let seeds = 1 + config.train.member_seeds.len();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new((config.train.epochs * seeds) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} epoch {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let seed_of = |seed: u64| match seeds > 1 {
        true => format!("seed {seed} "),
        false => String::new(),
    };
    let report_epoch = |seed: u64, record: &train::EpochRecord, best: &train::Validation| {
        let line = format!(
            "{}epoch {:>3}: loss {:.4}, validation loss {:.4} R@1 IoU .3/.5/.7 {:.1}/{:.1}/{:.1} mIoU {:.1} (best loss {:.4}), {:.0} pairs/s",
            seed_of(seed),
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
        bar.inc(1);
        bar.set_message(format!(
            "seed {seed} loss {:.4} validation {:.4}",
            record.loss, record.validation.loss
        ));
        bar.println(&line);
        if bar.is_hidden() {
            println!("{line}");
        }
    };
    let report = train::train(dataset, format, features, out, config, report_epoch)?;
    bar.finish_and_clear();
    let card = &report.card;
    if let Some(epoch) = report.resumed_from {
        println!("resumed after epoch {epoch}");
    }
    println!(
        "trained on {} pairs of {} videos ({} held out for validation); {}; model in {}",
        card.data.train_pairs,
        card.data.videos,
        card.data.validation_pairs,
        run_summary(&report),
        out.display()
    );
    for member in &report.members {
        println!(
            "seed {} in {}{}: {}",
            member.card.config.seed,
            out.join(train::member_folder(member.card.config.seed))
                .display(),
            match member.resumed_from {
                Some(epoch) => format!(" (resumed after epoch {epoch})"),
                None => String::new(),
            },
            run_summary(member)
        );
    }
    if !report.members.is_empty() {
        println!(
            "the {} seeds together: validation loss {:.4}, R@1 IoU .5 {:.1}, mIoU {:.1}",
            report.members.len() + 1,
            card.validation.loss,
            100.0 * card.validation.r1[1],
            100.0 * card.validation.miou,
        );
    }
    Ok(())
}

/// The kept epoch of one seed's run and how it went.
fn run_summary(report: &train::TrainReport) -> String {
    let card = &report.card;
    let seconds: f64 = card.history.iter().map(|r| r.seconds).sum();
    let pairs: f64 = card
        .history
        .iter()
        .map(|r| r.pairs_per_second * r.seconds)
        .sum();
    format!(
        "best epoch {} of {}{}{}: validation loss {:.4}, R@1 IoU .5 {:.1}, mIoU {:.1}; {:.0} pairs/s, {:.1} s per epoch",
        card.best_epoch,
        card.history.len(),
        if report.stopped_early { " (stopped early)" } else { "" },
        match card.averaged_epochs.as_slice() {
            [first, .., last] => format!(", weights averaged over epochs {first}-{last}"),
            _ => String::new(),
        },
        report.validation.loss,
        100.0 * report.validation.r1[1],
        100.0 * report.validation.miou,
        pairs / seconds.max(1e-9),
        seconds / card.history.len().max(1) as f64,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_model(
    method: GroundMethod,
    model: Option<&Path>,
    annotations: &Path,
    format: Option<AnnotationFormat>,
    features: &[PathBuf],
    baselines: bool,
    per_query: Option<&Path>,
    config: &Config,
) -> Result<()> {
    let grounder = match model_for(method, model)? {
        Some(model) => Some(ground::Grounder::load(model, config)?),
        None => None,
    };
    let started = std::time::Instant::now();
    let (tables, results) = eval::grounding_report(
        grounder.as_ref(),
        annotations,
        format,
        features,
        config,
        baselines,
    )?;
    print!("{}", eval::format_table(&tables));
    if let Some(grounder) = &grounder {
        let queries: Vec<&str> = results.iter().map(|r| r.query.as_str()).collect();
        println!("{}", grounder.word_coverage(&queries)?);
    }
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
pub(crate) fn print_evaluation(
    gt: &Path,
    format: Option<AnnotationFormat>,
    proposals: &Path,
    config: &Config,
) -> Result<()> {
    print!(
        "{}",
        eval::format_table(&eval::proposal_report(gt, format, proposals)?)
    );
    // Caption accuracy needs the words the captions were made of.
    if config.caption.vocabulary.as_os_str().is_empty() {
        return Ok(());
    }
    let vocabulary = caption::configured_vocabulary(config)?;
    if let Some(accuracy) = eval::caption_report(gt, proposals, config.caption.verbs, &vocabulary)?
    {
        print!("{accuracy}");
    }
    Ok(())
}

pub(crate) fn propose_paths(
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

/// `momentminer check`: one line per check, `ok` or `FAIL` with what to set; exit 1 on any
/// failure, a configuration that does not load included.
pub(crate) fn check(
    loaded: Result<Config, momentminer::config::ConfigError>,
    print: bool,
    sample: Option<&Path>,
) -> Result<std::process::ExitCode> {
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            println!("FAIL  configuration: {e}");
            return Ok(std::process::ExitCode::from(1));
        }
    };
    println!("ok    configuration: loaded and valid");
    let checks = momentminer::check::run(&config, sample);
    for check in &checks {
        match &check.outcome {
            Ok(found) => println!("ok    {}: {found}", check.what),
            Err(problem) => println!("FAIL  {}: {problem}", check.what),
        }
    }
    if print {
        println!(
            "\n# The effective configuration\n{}",
            toml::to_string(&config)?
        );
    }
    let failed = checks.iter().filter(|c| c.outcome.is_err()).count();
    Ok(match failed {
        0 => std::process::ExitCode::SUCCESS,
        _ => {
            println!("{failed} check(s) failed");
            std::process::ExitCode::from(1)
        }
    })
}

/// `synth --release`: the world just made, in a release's layout, and the commands that read
/// it with the release's preset.
pub(crate) fn write_release(world: &Path, release: momentminer::release::Release) -> Result<()> {
    let name = momentminer::release::Release::ALL
        .iter()
        .find(|(_, r)| *r == release)
        .map_or("release", |(n, _)| *n);
    let out = world.join(name);
    let written = momentminer::release::write(world, release, &out)?;
    let durations = written
        .durations
        .as_ref()
        .map(|d| format!(" --set ingest.durations_file={}", d.display()))
        .unwrap_or_default();
    println!(
        "{name} layout in {}: features {}, annotations {}\n  momentminer propose {} --out {} --config config/presets/{name}.toml{durations}\n  momentminer eval-proposals --gt {} --proposals {}",
        out.display(),
        written.features.display(),
        written.annotations.display(),
        written.features.display(),
        out.join("run").display(),
        written.annotations.display(),
        out.join("run").display(),
    );
    Ok(())
}

/// `momentminer kernels`: every kernel compiled for every architecture, one line each.
pub(crate) fn kernels(archs: &[String], out: Option<&Path>, nvrtc_library: &str) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for arch in archs {
        let arch = match arch.strip_prefix("sm_") {
            Some(number) => format!("compute_{number}"),
            None => arch.clone(),
        };
        for kernel in compute::compile_kernels(&arch, nvrtc_library)? {
            println!(
                "kernels/{} for {}: {} bytes of PTX, no warnings",
                kernel.file,
                kernel.arch,
                kernel.ptx.len()
            );
            if let Some(dir) = out {
                let name = kernel.file.trim_end_matches(".cu");
                let path = dir.join(format!("{name}.{}.ptx", kernel.arch));
                std::fs::write(&path, &kernel.ptx)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// `momentminer kernels --bench`: the Gram kernel's throughput and the device's SSM + events
/// against the CPU's, in one run.
pub(crate) fn kernel_bench(config: &Config) -> Result<()> {
    let backend = compute::Backend::open(config)?;
    let Some(device) = backend.cuda() else {
        bail!(
            "kernels --bench needs a CUDA device; --device {} gave the CPU",
            String::from(config.compute.device)
        );
    };
    let (videos, steps, dim) = (4096, 128, 1024);
    let timing = device.time_gram(videos, steps, dim, 5)?;
    println!(
        "gram on {}: B={videos} T={steps} D={dim}: {:.2} ms, {:.1} TFLOP/s, {:.0} GB/s; \
         upload {:.2} ms, {:.1} GB/s",
        device.describe(),
        timing.kernel_s * 1e3,
        timing.flops / timing.kernel_s / 1e12,
        timing.kernel_bytes / timing.kernel_s / 1e9,
        timing.upload_s * 1e3,
        timing.upload_bytes / timing.upload_s / 1e9,
    );
    let features = compute::charades_like(videos, 90, dim, 3);
    let seeds: Vec<u64> = (0..videos as u64).collect();
    let cpu = compute::Backend::cpu(config);
    let mut rates = Vec::new();
    for backend in [&backend, &cpu] {
        // One batch first, untimed: the device's buffers are allocated once, for good.
        if let (Some(batch), Some(seeds)) = (
            backend.batches(&features).next(),
            backend.batches(&seeds).next(),
        ) {
            backend.events(&batch.iter().collect::<Vec<_>>(), seeds, config);
        }
        let started = std::time::Instant::now();
        let (mut similarity, mut events) = (Duration::ZERO, Duration::ZERO);
        for (batch, seeds) in backend.batches(&features).zip(backend.batches(&seeds)) {
            let batch: Vec<&_> = batch.iter().collect();
            for found in backend.events(&batch, seeds, config) {
                similarity += found.similarity_time;
                events += found.events_time;
            }
        }
        let rate = videos as f64 / started.elapsed().as_secs_f64();
        // Per video, as each video is charged: its share of a device batch, its own time on
        // the CPU (where the cores work side by side, so these add up to more than the wall).
        println!(
            "similarity + events of {videos} videos of 90 × {dim} on {}: {rate:.0} videos/s; \
             per video {:.1} µs similarity (packing, copies and kernels on a device), {:.1} µs events",
            backend.describe(),
            similarity.as_secs_f64() * 1e6 / videos as f64,
            events.as_secs_f64() * 1e6 / videos as f64,
        );
        rates.push(rate);
    }
    println!("device / cpu: {:.1}×", rates[0] / rates[1]);
    Ok(())
}
