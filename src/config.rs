//! One configuration tree. Its defaults are `config/momentminer.toml`, embedded in the binary,
//! so every parameter is documented in exactly one place; user files and `--set` overrides are
//! merged over it key by key.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The built-in defaults: `config/momentminer.toml`, embedded.
pub const DEFAULT_TOML: &str = include_str!("../config/momentminer.toml");

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file, or the merged tree, is not TOML of the configuration's shape.
    #[error("config {origin} is not valid TOML: {message}")]
    Parse {
        /// Where it came from: a file, the running configuration or the overrides.
        origin: String,
        /// What the TOML reader said.
        message: String,
    },
    /// A `--set` that is not `section.key=value`.
    #[error("override '{0}' must look like section.key=value")]
    BadOverride(String),
    /// A `--set` of a key the configuration does not have.
    #[error("override '{0}': no such key in the configuration")]
    UnknownKey(String),
    /// A value outside what its key allows.
    #[error("invalid configuration: {key} {rule}")]
    Invalid {
        /// The key whose value is wrong.
        key: &'static str,
        /// What its value must be.
        rule: &'static str,
    },
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ingest: IngestConfig,
    pub sample: SampleConfig,
    pub events: EventsConfig,
    pub proposals: ProposalsConfig,
    pub run: RunConfig,
    pub compute: ComputeConfig,
    pub daemon: DaemonConfig,
    pub queue: QueueConfig,
    pub caption: CaptionConfig,
    pub train: TrainConfig,
    pub synth: SynthConfig,
    pub structure: StructureConfig,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    Reject,
    Zero,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    pub stream: String,
    pub stream_preference: Vec<String>,
    pub hdf5_dataset: String,
    pub durations_file: String,
    pub features_per_second: f64,
    pub max_frames: usize,
    pub max_dim: usize,
    pub max_bytes: u64,
    pub non_finite: NonFinitePolicy,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleMethod {
    Mean,
    Pick,
    Midpoint,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    pub steps: usize,
    pub method: SampleMethod,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialSelection {
    MostBoundaries,
    Inertia,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeColumn {
    None,
    Linear,
    Sqrt,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub k: usize,
    pub trials: usize,
    pub max_iter: usize,
    pub tol: f64,
    pub trial_selection: TrialSelection,
    pub time_column: TimeColumn,
    pub time_weight: f32,
    pub smoothing_window: usize,
    pub min_event_steps: usize,
    pub seed: u64,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Uniform,
    Compactness,
    Diversity,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalsConfig {
    pub sampler: Sampler,
    pub cap: usize,
    pub min_length: f64,
    pub max_length: f64,
    pub rerank_iou: f64,
    pub length_exponent: f32,
    pub fill_windows: bool,
    pub seed: u64,
}

/// `compute.device` / `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA device 0 when it can be used, else the CPU (with one line saying why).
    Auto,
    /// The CPU.
    Cpu,
    /// This CUDA device, or an error.
    Cuda(usize),
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> Result<DeviceChoice, String> {
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("device '{s}' is not one of auto, cpu, cuda, cuda:N")),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(device: DeviceChoice) -> String {
        match device {
            DeviceChoice::Auto => "auto".to_string(),
            DeviceChoice::Cpu => "cpu".to_string(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeConfig {
    pub device: DeviceChoice,
    pub nvrtc_library: String,
    pub batch_size: usize,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub threads: usize,
    pub fsync: bool,
}

/// How the daemon makes a group of results durable before recording them in its ledger.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupDurability {
    /// Results wait under temporary names; one `syncfs` per group, then the renames.
    Group,
    /// Each result is fsynced by its worker and renamed at once.
    File,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub inbox: PathBuf,
    pub output: PathBuf,
    pub quarantine: PathBuf,
    pub state: PathBuf,
    pub workers: usize,
    pub max_in_flight: usize,
    pub max_in_flight_bytes: u64,
    pub settle_ms: u64,
    pub rescan_s: u64,
    pub follow_symlinks: bool,
    pub enqueue: bool,
    pub durability: GroupDurability,
    pub commit_ms: u64,
    pub commit_max: usize,
    pub retry_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub shutdown_timeout_s: u64,
    pub shard_videos: usize,
    pub shard_flush_ms: u64,
    pub metrics_addr: String,
    pub metrics_public: bool,
    pub stall_s: u64,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    pub url: String,
    pub stream: String,
    pub group: String,
    pub dead_letter: String,
    pub max_attempts: u32,
    pub consumer: String,
    pub roots: Vec<PathBuf>,
    pub claim_idle_ms: u64,
    pub block_ms: u64,
    pub in_flight: usize,
    pub reconnect_base_ms: u64,
    pub reconnect_max_ms: u64,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionConfig {
    pub ort_library: PathBuf,
    pub text_model: PathBuf,
    pub text_tokenizer: PathBuf,
    pub max_query_tokens: usize,
    pub threads: usize,
    pub mode: CaptionMode,
    pub clip_text_model: PathBuf,
    pub clip_tokenizer: PathBuf,
    pub tower_anchors: PathBuf,
    pub vocabulary: PathBuf,
    pub visual_stream: String,
    pub remove_scene: bool,
    pub verbs: usize,
    pub nouns: usize,
    pub verb_contrast: bool,
    pub noun_lift: f32,
    pub explain_nouns: usize,
    pub pairs: PairSelection,
    pub cache_dir: PathBuf,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub projection: usize,
    pub hidden: usize,
    pub heads: usize,
    pub nonlocal_blocks: usize,
    pub max_query_words: usize,
    pub word_keep: f64,
    pub pairs_per_video: usize,
    pub checkpoint: Checkpoint,
    // Model cards written before it was a setting carry none.
    #[serde(default)]
    pub keep_epochs: bool,
    // Model cards written before it was a setting carry none: their weights are one epoch's.
    #[serde(default)]
    pub neighbour_epochs: usize,
    pub dropout: f64,
    pub batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub patience: usize,
    // Model cards written before it was a setting carry none.
    #[serde(default)]
    pub min_improvement: f64,
    #[serde(default)]
    pub confidence_weighting: f64,
    pub validation_share: f64,
    pub attention_loss: f64,
    pub seed: u64,
    // Model cards written before it was a setting carry none: one model.
    #[serde(default)]
    pub member_seeds: Vec<u64>,
    pub threads: usize,
    pub top_k: usize,
    // Model cards written before it was a setting carry none.
    #[serde(default)]
    pub similarity_weight: f64,
    #[serde(default)]
    pub nearest_word_similarity: f32,
    #[serde(default)]
    pub similarity_input: bool,
    // Model cards written before it was a setting carry none: their input kept the scene.
    #[serde(default)]
    pub remove_scene: bool,
    #[serde(default)]
    pub query_words: QueryWords,
    #[serde(default)]
    pub head: Head,
    #[serde(default = "default_map_clips")]
    pub map_clips: usize,
    pub retrain_after_videos: usize,
}

fn default_map_clips() -> usize {
    16
}

/// What the grounding model answers with on top of its temporal attention.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Head {
    /// One regressed (start, end) per query, PSVL's.
    #[default]
    Regression,
    /// A score for every span of a 2D temporal map of clips, 2D-TAN's.
    Map,
}

/// How the grounding model reads a query's words.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryWords {
    /// Brought to the lexicon, each word's vector on its own.
    #[default]
    Lexicon,
    /// As written, each word's token vectors in the context of its sentence.
    Contextual,
}

/// Which epoch's weights a training run keeps.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpoint {
    /// The lowest validation loss; `patience` stops the run.
    Validation,
    /// The last epoch's; the run goes the full `epochs`.
    Last,
}

impl CaptionConfig {
    /// Whether a text tower (`clip_text_model` or `tower_anchors`) and a `vocabulary` are set:
    /// what making pseudo-queries of words needs.
    pub fn has_words(&self) -> bool {
        let set = |path: &Path| !path.as_os_str().is_empty();
        (set(&self.clip_text_model) || set(&self.tower_anchors)) && set(&self.vocabulary)
    }

    /// The mode in effect: `auto` is words when [`CaptionConfig::has_words`], else `off`.
    pub fn effective_mode(&self) -> CaptionMode {
        match self.mode {
            CaptionMode::Auto if self.has_words() => CaptionMode::Vocabulary,
            CaptionMode::Auto => CaptionMode::Off,
            mode => mode,
        }
    }
}

/// What a proposal's pseudo-query is.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionMode {
    /// Words when a text tower and a vocabulary are configured and the tower is as wide as
    /// a file's visual stream; proposals without pseudo-queries otherwise.
    Auto,
    /// Words of a vocabulary scored against the visual embedding by a CLIP-style text tower.
    Vocabulary,
    /// The visual embedding itself, stored as the query feature.
    LanguageFree,
    /// No pseudo-queries: proposals only.
    Off,
}

/// Which captioned proposals of a video become training pairs.
// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairSelection {
    /// Every proposal, as PSVL.
    All,
    /// For each set of nouns the captioner names in a video, the proposal that shows it best.
    BestPerNoun,
}

impl RunConfig {
    /// Worker threads for `threads` (or `daemon.workers`) = 0: two per core, because file
    /// creation blocks and extra workers keep the cores busy while some wait.
    pub fn worker_count(requested: usize) -> usize {
        match requested {
            0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub videos: usize,
    pub first_index: usize,
    pub seed: u64,
    pub dim: usize,
    pub frames_min: usize,
    pub frames_max: usize,
    pub seconds_per_frame: f64,
    pub events_min: usize,
    pub events_max: usize,
    pub event_length_min: f64,
    pub event_length_max: f64,
    pub background_share: f64,
    pub noise: f32,
    pub drift: f32,
    pub style: f32,
    pub nuisance: f32,
    pub transition_frames: usize,
    pub shared_objects: f64,
    pub clip_dim: usize,
    pub clip_verb: f32,
    pub clip_objects: f32,
    pub clip_linger: f64,
    pub clip_incidental: f64,
    pub clip_clutter: f32,
}

// Mirrors a part of config/momentminer.toml, where each key is documented.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructureConfig {
    pub videos: usize,
    pub first_index: usize,
    pub seed: u64,
    pub dim: usize,
    pub features_per_second: f64,
    pub scene: f32,
    pub scene_text: f32,
    pub noise: f32,
    pub correlation: f32,
    pub distractors: f64,
    pub boundary_s: f64,
    pub tower_gap: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config::load(&[], &[]).expect("the embedded default configuration is valid")
    }
}

impl Config {
    /// Defaults, then each file in order (only the keys it sets change what came before),
    /// then `section.key=value` overrides.
    pub fn load(files: &[PathBuf], overrides: &[String]) -> Result<Config, ConfigError> {
        let mut tree = parse_toml(DEFAULT_TOML, "built-in defaults")?;
        for path in files {
            merge(&mut tree, read_toml(path)?);
        }
        for item in overrides {
            apply_override(&mut tree, item)?;
        }
        let origin = files
            .last()
            .map_or("overrides".into(), |p| p.display().to_string());
        Config::from_tree(tree, &origin)
    }

    /// This configuration with `file`'s keys set over it, as a further `--config` would (a
    /// synthetic world's caption.toml, for the drivers that make a world themselves).
    pub fn merged_with(&self, file: &Path) -> Result<Config, ConfigError> {
        let mut tree = toml::Table::try_from(self).map_err(|e| ConfigError::Parse {
            origin: "the running configuration".into(),
            message: e.to_string(),
        })?;
        merge(&mut tree, read_toml(file)?);
        Config::from_tree(tree, &file.display().to_string())
    }

    fn from_tree(tree: toml::Table, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::Value::Table(tree)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Every value checked on its own, so an error names the one key that is wrong.
    fn validate(&self) -> Result<(), ConfigError> {
        let (e, p, d, c, t, y, q) = (
            &self.events,
            &self.proposals,
            &self.daemon,
            &self.caption,
            &self.train,
            &self.synth,
            &self.queue,
        );
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let checks: &[(&str, bool, &str)] = &[
            ("sample.steps", self.sample.steps >= 2, "must be at least 2"),
            (
                "compute.batch_size",
                (1..=65_535).contains(&self.compute.batch_size),
                "must lie in [1, 65535] (a CUDA grid's second dimension)",
            ),
            ("events.k", e.k >= 1, "must be at least 1"),
            ("events.trials", e.trials >= 1, "must be at least 1"),
            ("events.max_iter", e.max_iter >= 1, "must be at least 1"),
            ("events.tol", e.tol >= 0.0, "must be non-negative"),
            (
                "events.smoothing_window",
                e.smoothing_window % 2 == 1,
                "must be odd",
            ),
            ("proposals.cap", p.cap >= 1, "must be at least 1"),
            (
                "proposals.min_length",
                unit(p.min_length),
                "must lie in [0, 1]",
            ),
            (
                "proposals.max_length",
                unit(p.max_length),
                "must lie in [0, 1]",
            ),
            (
                "proposals.min_length",
                p.min_length <= p.max_length,
                "must be at most proposals.max_length",
            ),
            (
                "proposals.rerank_iou",
                p.rerank_iou > 0.0 && p.rerank_iou <= 1.0,
                "must lie in (0, 1]",
            ),
            (
                "ingest.features_per_second",
                self.ingest.features_per_second >= 0.0,
                "must be non-negative",
            ),
            (
                "ingest.max_frames",
                self.ingest.max_frames >= 1,
                "must be at least 1",
            ),
            (
                "ingest.max_dim",
                self.ingest.max_dim >= 1,
                "must be at least 1",
            ),
            ("daemon.commit_max", d.commit_max >= 1, "must be at least 1"),
            (
                "daemon.max_in_flight_bytes",
                d.max_in_flight_bytes == 0 || d.max_in_flight_bytes >= self.ingest.max_bytes,
                "must be 0 (automatic) or at least ingest.max_bytes",
            ),
            (
                "daemon.shard_videos",
                d.shard_videos >= 1,
                "must be at least 1",
            ),
            (
                "daemon.retry_attempts",
                d.retry_attempts >= 1,
                "must be at least 1",
            ),
            (
                "daemon.retry_base_ms",
                d.retry_base_ms <= d.retry_max_ms,
                "must be at most daemon.retry_max_ms",
            ),
            (
                "queue.max_attempts",
                q.max_attempts >= 1,
                "must be at least 1",
            ),
            (
                "queue.reconnect_base_ms",
                q.reconnect_base_ms >= 1,
                "must be at least 1",
            ),
            (
                "queue.reconnect_base_ms",
                q.reconnect_base_ms <= q.reconnect_max_ms,
                "must be at most queue.reconnect_max_ms",
            ),
            (
                "caption.max_query_tokens",
                c.max_query_tokens >= 2,
                "must be at least 2",
            ),
            ("caption.threads", c.threads >= 1, "must be at least 1"),
            (
                "caption.nouns",
                c.verbs + c.nouns >= 1,
                "and caption.verbs must add up to at least 1",
            ),
            ("train.steps", t.steps >= 2, "must be at least 2"),
            (
                "train.map_clips",
                t.map_clips >= 1 && t.steps % t.map_clips.max(1) == 0,
                "must be at least 1 and divide train.steps",
            ),
            ("train.projection", t.projection >= 1, "must be at least 1"),
            ("train.hidden", t.hidden >= 1, "must be at least 1"),
            ("train.heads", t.heads >= 1, "must be at least 1"),
            (
                "train.hidden",
                t.heads == 0 || t.hidden % t.heads == 0,
                "must be divisible by train.heads",
            ),
            (
                "train.max_query_words",
                t.max_query_words >= 1,
                "must be at least 1",
            ),
            (
                "train.word_keep",
                t.word_keep > 0.0 && t.word_keep <= 1.0,
                "must lie in (0, 1]",
            ),
            ("train.batch", t.batch >= 1, "must be at least 1"),
            ("train.epochs", t.epochs >= 1, "must be at least 1"),
            (
                "train.learning_rate",
                t.learning_rate > 0.0,
                "must be positive",
            ),
            (
                "train.dropout",
                (0.0..1.0).contains(&t.dropout),
                "must lie in [0, 1)",
            ),
            (
                "train.min_improvement",
                (0.0..1.0).contains(&t.min_improvement),
                "must lie in [0, 1)",
            ),
            (
                "train.confidence_weighting",
                (0.0..=1.0).contains(&t.confidence_weighting),
                "must lie in [0, 1]",
            ),
            (
                "train.validation_share",
                (0.0..1.0).contains(&t.validation_share),
                "must lie in [0, 1)",
            ),
            ("train.top_k", t.top_k >= 1, "must be at least 1"),
            (
                "train.member_seeds",
                t.member_seeds
                    .iter()
                    .enumerate()
                    .all(|(i, s)| *s != t.seed && !t.member_seeds[..i].contains(s)),
                "must differ from train.seed and from each other (a repeated seed trains the same model twice)",
            ),
            (
                "caption.noun_lift",
                self.caption.noun_lift >= 0.0 && self.caption.noun_lift.is_finite(),
                "must be 0 or more",
            ),
            (
                "train.similarity_weight",
                t.similarity_weight >= 0.0 && t.similarity_weight.is_finite(),
                "must be 0 or more",
            ),
            (
                "train.nearest_word_similarity",
                t.nearest_word_similarity.is_finite(),
                "must be a number (above 1: words outside the lexicon are left out)",
            ),
            ("synth.frames_min", y.frames_min >= 8, "must be at least 8"),
            (
                "synth.frames_min",
                y.frames_min <= y.frames_max,
                "must be at most synth.frames_max",
            ),
            ("synth.events_min", y.events_min >= 1, "must be at least 1"),
            (
                "synth.events_min",
                y.events_min <= y.events_max,
                "must be at most synth.events_max",
            ),
            (
                "synth.event_length_min",
                y.event_length_min > 0.0,
                "must be positive",
            ),
            (
                "synth.event_length_min",
                y.event_length_min <= y.event_length_max,
                "must be at most synth.event_length_max",
            ),
            (
                "synth.background_share",
                (0.0..1.0).contains(&y.background_share),
                "must lie in [0, 1)",
            ),
            ("synth.dim", y.dim >= 1, "must be at least 1"),
            (
                "structure.videos",
                self.structure.videos >= 1,
                "must be at least 1",
            ),
            (
                "structure.dim",
                self.structure.dim >= 1,
                "must be at least 1",
            ),
            (
                "structure.features_per_second",
                self.structure.features_per_second > 0.0,
                "must be positive",
            ),
            (
                "structure.correlation",
                (0.0..1.0).contains(&self.structure.correlation),
                "must lie in [0, 1)",
            ),
            (
                "structure.distractors",
                self.structure.distractors >= 0.0,
                "must be non-negative",
            ),
            (
                "synth.seconds_per_frame",
                y.seconds_per_frame > 0.0,
                "must be positive",
            ),
            (
                "synth.shared_objects",
                unit(y.shared_objects),
                "must lie in [0, 1]",
            ),
            (
                "synth.clip_verb",
                y.clip_verb >= 0.0,
                "must be non-negative",
            ),
            (
                "synth.clip_objects",
                y.clip_objects >= 0.0,
                "must be non-negative",
            ),
            (
                "synth.clip_linger",
                y.clip_linger >= 0.0,
                "must be non-negative",
            ),
            (
                "synth.clip_clutter",
                y.clip_clutter >= 0.0,
                "must be non-negative",
            ),
            (
                "synth.clip_incidental",
                unit(y.clip_incidental),
                "must lie in [0, 1]",
            ),
        ];
        match checks.iter().find(|(_, ok, _)| !ok) {
            Some(&(key, _, rule)) => Err(ConfigError::Invalid { key, rule }),
            None => Ok(()),
        }
    }
}

fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(&text, &path.display().to_string())
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `section.key=value`; the value is read as a TOML literal (number, bool, array) and falls
/// back to a plain string, so `--set proposals.sampler=diversity` needs no quotes.
fn apply_override(tree: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let (path, raw) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(item.to_string()))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys
        .split_last()
        .filter(|(_, parents)| !parents.is_empty())
        .ok_or_else(|| ConfigError::BadOverride(item.to_string()))?;
    let mut table = &mut *tree;
    for key in parents {
        table = match table.get_mut(*key) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(ConfigError::UnknownKey(item.to_string())),
        };
    }
    if !table.contains_key(*last) {
        return Err(ConfigError::UnknownKey(item.to_string()));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    table.insert((*last).to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_overrides_apply() {
        let config = Config::load(
            &[],
            &[
                "events.k=7".into(),
                "proposals.sampler=diversity".into(),
                "ingest.features_per_second = 0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(config.events.k, 7);
        assert_eq!(config.proposals.sampler, Sampler::Diversity);
        assert_eq!(config.ingest.features_per_second, 0.5);
        assert_eq!(config.sample.steps, 128);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let unknown = Config::load(&[], &["events.kk=3".into()]).unwrap_err();
        assert!(unknown.to_string().contains("no such key"), "{unknown}");
        let bad = Config::load(&[], &["events.smoothing_window=4".into()]).unwrap_err();
        assert!(bad.to_string().contains("odd"), "{bad}");
        // Each check names the one key that is wrong.
        let heads = Config::load(&[], &["train.heads=3".into()]).unwrap_err();
        assert_eq!(
            heads.to_string(),
            "invalid configuration: train.hidden must be divisible by train.heads"
        );
        let retry = Config::load(&[], &["daemon.retry_base_ms=999999999".into()]).unwrap_err();
        assert!(
            retry
                .to_string()
                .contains("daemon.retry_base_ms must be at most"),
            "{retry}"
        );
        let weighting = Config::load(&[], &["train.confidence_weighting=1.5".into()]).unwrap_err();
        assert_eq!(
            weighting.to_string(),
            "invalid configuration: train.confidence_weighting must lie in [0, 1]"
        );
        for seeds in ["[1, 13]", "[1, 7, 1]"] {
            let repeated = Config::load(&[], &[format!("train.member_seeds={seeds}")]).unwrap_err();
            assert!(
                repeated
                    .to_string()
                    .contains("train.member_seeds must differ from train.seed and from each other"),
                "{repeated}"
            );
        }
        let typo = Config::load(&[], &["proposals.sampler=random".into()]).unwrap_err();
        assert!(typo.to_string().contains("random"), "{typo}");
        let device = Config::load(&[], &["compute.device=\"gpu\"".into()]).unwrap_err();
        assert!(
            device
                .to_string()
                .contains("device 'gpu' is not one of auto, cpu, cuda, cuda:N"),
            "{device}"
        );
        for (name, choice) in [
            ("auto", DeviceChoice::Auto),
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            let config = Config::load(&[], &[format!("compute.device=\"{name}\"")]).unwrap();
            assert_eq!(config.compute.device, choice);
        }
    }

    #[test]
    fn a_partial_user_file_merges_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[events]\nk = 3\n").unwrap();
        let config = Config::load(std::slice::from_ref(&path), &[]).unwrap();
        assert_eq!(config.events.k, 3);
        assert_eq!(config.events.trials, 6);
        // A later file changes what an earlier one set, and only that.
        let later = dir.path().join("later.toml");
        std::fs::write(&later, "[events]\ntrials = 2\n").unwrap();
        let config = Config::load(&[path, later], &[]).unwrap();
        assert_eq!((config.events.k, config.events.trials), (3, 2));
    }
}
