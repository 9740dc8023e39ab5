//! The command line: every subcommand and option, parsed by clap.

use clap::{Parser, Subcommand, ValueEnum};
use momentminer::bench::BenchOptions;
use momentminer::dataset::AnnotationFormat;
use momentminer::release::Release;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "momentminer",
    version,
    about = "Mines temporal event proposals for video moment retrieval from unlabelled video features"
)]
pub(crate) struct Cli {
    /// Configuration file (TOML); only the keys it sets change the built-in defaults.
    /// Repeatable: later files change what earlier ones set (e.g. a daemon's file, then a
    /// synthetic world's caption.toml).
    #[arg(long, global = true)]
    pub(crate) config: Vec<PathBuf>,
    /// Override one configuration key, e.g. --set events.k=6 (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub(crate) overrides: Vec<String>,
    /// Where the self-similarity and k-means run: auto, cpu, cuda or cuda:N (sets
    /// compute.device).
    #[arg(long, global = true, value_name = "DEVICE")]
    pub(crate) device: Option<String>,
    /// Log format on stderr. Default: journald under systemd (JOURNAL_STREAM set), else human,
    /// in colour only on a terminal and never with NO_COLOR.
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Time, level and message, one line each.
    Human,
    /// One JSON object per line.
    Json,
    /// Level and message only: journald stamps each line itself.
    Journald,
}

/// How `ground` and `eval` answer.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum GroundMethod {
    /// A model trained on pseudo-labels (--model).
    Model,
    /// No training: the text tower's similarity to the spans' mean visual embedding, less the
    /// video's shared scene (caption.remove_scene).
    Similarity,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
        /// Build a development world on this annotation file's temporal structure instead
        /// (a Charades-STA .txt or ActivityNet Captions .json of a train split; [structure]).
        #[arg(long, value_name = "FILE", conflicts_with = "release")]
        structure: Option<PathBuf>,
        /// Also write the world in a public release's layout, as its preset in
        /// config/presets/ reads it: charades-i3d, activitynet-c3d, qvhighlights-clip,
        /// tacos-c3d, didemo or mad-clip (into OUT/<release>/).
        #[arg(long, value_name = "RELEASE")]
        release: Option<Release>,
    },
    /// Recall of ranked proposals against ground truth, with sliding-window and random baselines.
    EvalProposals {
        /// Annotations: Charades-STA .txt, Moment-DETR .jsonl (e.g. synth's gt.jsonl),
        /// ActivityNet Captions, PSVL, TACoS, DiDeMo or MAD .json.
        #[arg(long)]
        gt: PathBuf,
        /// The annotation format, when its name and content do not say it: charades,
        /// moment-detr, activitynet, psvl, tacos, didemo or mad.
        #[arg(long, value_name = "FORMAT")]
        format: Option<AnnotationFormat>,
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
    /// A static HTML report of a run (the output folder of propose or of the daemon): the
    /// run's figures and one row per video in OUT/index.html, a page per video with its
    /// self-similarity picture and its proposals on a time axis. Opens from disk in any browser.
    Report {
        /// The run's output folder (or its proposals/ folder).
        run: PathBuf,
        /// Where the report goes.
        #[arg(long)]
        out: PathBuf,
        /// Ground truth to set beside the proposals (any annotation format).
        #[arg(long)]
        gt: Option<PathBuf>,
        /// The ground truth's format, when its name and content do not say it.
        #[arg(long, value_name = "FORMAT")]
        format: Option<AnnotationFormat>,
    },
    /// Checks everything a run needs before it starts: the configuration, ONNX Runtime and
    /// every configured model and tower, that the tower fits a sample input's visual stream,
    /// that the folders can be written, that the metrics address is allowed. One line per
    /// check; exit 1 if any fails (the systemd units run it as ExecStartPre=).
    Check {
        /// Also print the effective configuration, every file and --set merged.
        #[arg(long)]
        print: bool,
        /// A feature file to read and check the caption tower against.
        #[arg(long, value_name = "FILE")]
        sample: Option<PathBuf>,
    },
    /// Compiles every CUDA kernel (kernels/*.cu) through NVRTC, as a CUDA start-up does, for
    /// each architecture; needs no GPU (compute.nvrtc_library or LD_LIBRARY_PATH finds NVRTC).
    /// Exit 1 on any compile error or warning.
    Kernels {
        /// Virtual architectures: compute_80 (A100), compute_90 (H100/H200); sm_NN is read as
        /// compute_NN.
        #[arg(long = "arch", default_values = ["compute_80", "compute_90"])]
        archs: Vec<String>,
        /// Also write each kernel's PTX to DIR/<kernel>.<arch>.ptx.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Then, on the CUDA device (--device), time the Gram kernel on 4,096 videos of
        /// 128 × 1,024 (TFLOP/s, GB/s, upload GB/s) and the SSM + events of 4,096
        /// Charades-like videos (90 × 1,024) on the device against the CPU, in
        /// compute.batch_size batches.
        #[arg(long)]
        bench: bool,
    },
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
        /// The annotation format, when its name and content do not say it: charades,
        /// moment-detr, activitynet, psvl, tacos, didemo or mad.
        #[arg(long, value_name = "FORMAT")]
        format: Option<AnnotationFormat>,
        /// Feature files or folders holding every video of the dataset.
        #[arg(long, required = true)]
        features: Vec<PathBuf>,
        /// Model folder: model.safetensors + model.json (the best epoch on validation).
        #[arg(long)]
        out: PathBuf,
    },
    /// Where in a video does a sentence happen? Prints JSON: the top-k segments in seconds.
    Ground {
        /// A trained model's folder (for --method model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// model: the trained model; similarity: no training, the caption text tower's
        /// similarity to the video's proposals and sliding windows.
        #[arg(long, value_enum, default_value_t = GroundMethod::Model)]
        method: GroundMethod,
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
    /// R@1/R@5 at IoU 0.3/0.5/0.7 and mIoU of a trained model (or of the training-free
    /// similarity grounder) on annotated sentences.
    Eval {
        /// A trained model's folder (for --method model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// model: the trained model; similarity: the training-free grounder.
        #[arg(long, value_enum, default_value_t = GroundMethod::Model)]
        method: GroundMethod,
        /// Charades-STA .txt, Moment-DETR .jsonl, or ActivityNet Captions, PSVL, TACoS, DiDeMo
        /// or MAD .json.
        #[arg(long)]
        annotations: PathBuf,
        /// The annotation format, when its name and content do not say it: charades,
        /// moment-detr, activitynet, psvl, tacos, didemo or mad.
        #[arg(long, value_name = "FORMAT")]
        format: Option<AnnotationFormat>,
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
