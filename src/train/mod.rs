//! Train: the zero-shot grounding model learns from pseudo-labelled pairs (a proposal and its
//! pseudo-query) to find where a sentence happens in a video.
//!
//! Inputs are prepared once, before the first epoch: each video resampled to `train.steps`
//! steps, each step L2-normalised and projected by a fixed random matrix to `train.projection`
//! dimensions ([`VideoBank`]); each distinct query's MiniLM token vectors ([`QueryBank`]). The
//! trainable layers ([`model`]) then never touch the raw features or the text encoder. A
//! validation split, chosen by a hash of the video id, drives early stopping and the choice of
//! checkpoint; the test set is never looked at.

pub mod model;
pub mod query;

use crate::batch::collect_videos;
use crate::caption::text::TextEncoder;
use crate::caption::CaptionError;
use crate::config::{Checkpoint, Config, TrainConfig};
use crate::dataset::{read_moments, DatasetError, Moment};
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{read_video, Durations, Features, IngestError, Video, VideoRef};
use crate::rng::{hash_str, Rng};
use crate::sample::sample;
use crate::span::{iou, IOU_THRESHOLDS};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use model::{Dropout, GroundingModel, Prediction, QUERY_DIM};
use query::{QueryBank, WordSampler};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// The model card's format; a folder written by another version is refused.
pub const CARD_VERSION: u32 = 2;
pub const CARD_FILE: &str = "model.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
const STATE_FILE: &str = "train-state.json";
const STATE_WEIGHTS_FILE: &str = "train-state.safetensors";

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Caption(#[from] CaptionError),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Durations(#[from] IngestError),
    #[error("query of {words} words is longer than train.max_query_words = {max}: {query:?}")]
    QueryTooLong {
        query: String,
        words: usize,
        max: usize,
    },
    #[error("features of video {vid} ({path}): {message}")]
    Features {
        vid: String,
        path: PathBuf,
        message: String,
    },
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}

/// One training or evaluation pair: a query and where it happens, normalised to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub vid: String,
    pub query: String,
    pub start: f64,
    pub end: f64,
}

/// Every video's model input, prepared once: `steps × projection` floats.
pub struct VideoBank {
    pub steps: HashMap<String, Arc<Vec<f32>>>,
    pub durations: HashMap<String, f64>,
    pub feature_dim: usize,
}

/// The fixed random projection of L2-normalised steps: a `projection × dim` Gaussian matrix
/// scaled by 1/√projection, drawn from `seed`; it keeps cosine geometry (Johnson-Lindenstrauss)
/// at a quarter of the width.
pub fn projection_matrix(seed: u64, dim: usize, projection: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed ^ 0x005e_ed0f_9a0e);
    let scale = 1.0 / (projection as f64).sqrt();
    (0..projection * dim)
        .map(|_| (rng.normal() * scale) as f32)
        .collect()
}

/// One video's model input: resampled to exactly `config.steps` steps (short videos repeat
/// steps), each L2-normalised, then projected.
pub fn video_steps(features: &Features, config: &Config, matrix: &[f32]) -> Vec<f32> {
    let train = &config.train;
    let mut sample_config = config.sample.clone();
    sample_config.steps = train.steps;
    let sampled = sample(features, &sample_config);
    let dim = sampled.dim;
    let mut out = Vec::with_capacity(train.steps * train.projection);
    for i in 0..train.steps {
        let row = sampled.row((i * sampled.frames / train.steps).min(sampled.frames - 1));
        let norm = crate::similarity::dot(row, row).sqrt().max(1e-12);
        for p in 0..train.projection {
            out.push(crate::similarity::dot(&matrix[p * dim..(p + 1) * dim], row) / norm);
        }
    }
    out
}

impl VideoBank {
    /// Loads and prepares the videos `vids` from the feature files under `features` (files or
    /// folders); every one must be there.
    pub fn load(
        features: &[PathBuf],
        vids: &HashSet<String>,
        config: &Config,
    ) -> Result<VideoBank, TrainError> {
        let (refs, failures) = collect_videos(features);
        if let Some(f) = failures.first() {
            tracing::warn!(input = %f.input, "skipped: {}", f.failure);
        }
        let by_id: HashMap<String, &VideoRef> = refs.iter().map(|r| (r.id(), r)).collect();
        let mut missing: Vec<&String> = vids.iter().filter(|v| !by_id.contains_key(*v)).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(TrainError::Data(format!(
                "{} of {} videos have no feature file under {}: {}{}",
                missing.len(),
                vids.len(),
                features
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                missing
                    .iter()
                    .take(5)
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 5 { ", …" } else { "" }
            )));
        }
        let durations = Durations::load(&config.ingest.durations_file)?;
        let matrices: std::sync::Mutex<HashMap<usize, Arc<Vec<f32>>>> = Default::default();
        let loaded: Vec<(String, f64, usize, Vec<f32>)> = vids
            .par_iter()
            .map(|vid| {
                let video_ref = by_id[vid];
                let video: Video =
                    read_video(video_ref, &config.ingest, &durations).map_err(|e| {
                        TrainError::Features {
                            vid: vid.clone(),
                            path: video_ref.path.clone(),
                            message: e.problem.to_string(),
                        }
                    })?;
                let features = video.features();
                let matrix = {
                    let mut cache = matrices.lock().unwrap_or_else(|e| e.into_inner());
                    cache
                        .entry(features.dim)
                        .or_insert_with(|| {
                            Arc::new(projection_matrix(
                                config.train.seed,
                                features.dim,
                                config.train.projection,
                            ))
                        })
                        .clone()
                };
                Ok((
                    vid.clone(),
                    video.duration,
                    features.dim,
                    video_steps(features, config, &matrix),
                ))
            })
            .collect::<Result<_, TrainError>>()?;
        let dims: HashSet<usize> = loaded.iter().map(|l| l.2).collect();
        if dims.len() > 1 {
            return Err(TrainError::Data(format!(
                "the videos' features have different widths {dims:?}; one model reads one kind of feature"
            )));
        }
        let feature_dim = dims.into_iter().next().unwrap_or(0);
        let mut bank = VideoBank {
            steps: HashMap::new(),
            durations: HashMap::new(),
            feature_dim,
        };
        for (vid, duration, _, steps) in loaded {
            bank.durations.insert(vid.clone(), duration);
            bank.steps.insert(vid, Arc::new(steps));
        }
        Ok(bank)
    }
}

/// The tensors of one batch of pairs. Each distinct video's steps are there once (`steps`),
/// and `video_of` says which one each pair reads, so the query-independent video encoder runs
/// once per video, not once per pair.
pub struct Batch {
    pub steps: Tensor,
    pub video_of: Tensor,
    pub tokens: Tensor,
    pub mask: Tensor,
    pub targets: Tensor,
    pub inside: Tensor,
}

impl Batch {
    /// `sampler` drops words of the queries (training); `None` reads them whole.
    pub fn new(
        pairs: &[&Pair],
        videos: &VideoBank,
        queries: &QueryBank,
        config: &TrainConfig,
        mut sampler: Option<&mut WordSampler>,
    ) -> Result<Batch, TrainError> {
        let b = pairs.len();
        let (n, p) = (config.steps, config.projection);
        let words: Vec<Vec<&[f32]>> = pairs
            .iter()
            .map(|pair| queries.vectors(&pair.query, sampler.as_deref_mut()))
            .collect();
        let length = words.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut steps = Vec::with_capacity(b * n * p);
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut video_of = Vec::with_capacity(b);
        let mut tokens = vec![0f32; b * length * QUERY_DIM];
        let mut mask = vec![0f32; b * length];
        let mut targets = Vec::with_capacity(2 * b);
        let mut inside = vec![0f32; b * n];
        for (i, pair) in pairs.iter().enumerate() {
            let next = index.len() as u32;
            let slot = *index.entry(pair.vid.as_str()).or_insert_with(|| {
                steps.extend_from_slice(&videos.steps[&pair.vid]);
                next
            });
            video_of.push(slot);
            for (j, vector) in words[i].iter().enumerate() {
                let at = (i * length + j) * QUERY_DIM;
                tokens[at..at + QUERY_DIM].copy_from_slice(vector);
            }
            mask[i * length..i * length + words[i].len()].fill(1.0);
            targets.extend([pair.start as f32, pair.end as f32]);
            let first = ((pair.start * n as f64).floor() as usize).min(n - 1);
            let last = ((pair.end * n as f64).ceil() as usize).clamp(first + 1, n);
            inside[i * n + first..i * n + last].fill(1.0);
        }
        let device = Device::Cpu;
        Ok(Batch {
            steps: Tensor::from_vec(steps, (index.len(), n, p), &device)?,
            video_of: Tensor::from_vec(video_of, b, &device)?,
            tokens: Tensor::from_vec(tokens, (b, length, QUERY_DIM), &device)?,
            mask: Tensor::from_vec(mask, (b, length), &device)?,
            targets: Tensor::from_vec(targets, (b, 2), &device)?,
            inside: Tensor::from_vec(inside, (b, n), &device)?,
        })
    }
}

/// Validation figures: the smooth-L1 error of the regressed span (the training loss without
/// its attention term), and R@1 at IoU 0.3/0.5/0.7 and mIoU of that span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub loss: f64,
    pub r1: [f64; 3],
    pub miou: f64,
}

impl Default for Validation {
    fn default() -> Validation {
        Validation {
            loss: f64::INFINITY,
            r1: [0.0; 3],
            miou: 0.0,
        }
    }
}

impl Validation {
    /// By the loss (the span's smooth-L1 error): R@1 on a few dozen often-wrong pseudo-labels
    /// jumps from epoch to epoch, the loss much less (though it too can turn before the test
    /// figures do; hence `train.checkpoint`).
    pub fn not_worse_than(&self, other: &Validation) -> bool {
        self.loss <= other.loss
    }

    fn better_than(&self, other: &Validation) -> bool {
        self.loss < other.loss
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub validation: Validation,
    pub seconds: f64,
    pub pairs_per_second: f64,
}

/// `model.json`: what the weights are and what they were trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub version: u32,
    pub momentminer: String,
    pub config: TrainConfig,
    /// Width of the raw features the projection takes.
    pub feature_dim: usize,
    /// xxh3 of the query encoder's weights.
    pub query_encoder: String,
    /// The words queries are brought to ([`query::content_words`]): the captioner's
    /// vocabulary when training began; empty = queries read as written.
    pub lexicon: Vec<String>,
    pub data: DataSummary,
    pub best_epoch: usize,
    pub validation: Validation,
    pub history: Vec<EpochRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub source: String,
    /// xxh3 of every pair, so a resumed run knows it sees the same data.
    pub hash: String,
    pub pairs: usize,
    pub videos: usize,
    pub train_pairs: usize,
    pub validation_pairs: usize,
}

impl ModelCard {
    /// Reads `dir/model.json`, refusing another version's folder.
    pub fn read(dir: &Path) -> Result<ModelCard, TrainError> {
        let path = dir.join(CARD_FILE);
        let fail = |message: String| TrainError::Model {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let version = value["version"].as_u64();
        if value["format"] != "momentminer-grounding" || version != Some(CARD_VERSION.into()) {
            return Err(fail(format!(
                "format {} version {}; this momentminer reads momentminer-grounding version {CARD_VERSION}",
                value["format"], value["version"]
            )));
        }
        serde_json::from_value(value).map_err(|e| fail(e.to_string()))
    }
}

/// Where an interrupted run stands: written after every epoch with the last weights and the
/// optimiser's moments, so a resumed run continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    data_hash: String,
    config: TrainConfig,
    epoch: usize,
    step: u64,
    best: Option<Validation>,
    best_epoch: usize,
    bad_epochs: usize,
    history: Vec<EpochRecord>,
}

/// Adam with decoupled weight decay, its moments kept as named tensors so they can be saved.
struct AdamW {
    vars: Vec<(String, Var)>,
    moments: Vec<(Var, Var)>,
    learning_rate: f64,
    weight_decay: f64,
    step: u64,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

impl AdamW {
    fn new(varmap: &VarMap, config: &TrainConfig) -> Result<AdamW, TrainError> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = vars
            .iter()
            .map(|(_, v)| {
                Ok((
                    Var::zeros(v.shape(), DType::F32, &Device::Cpu)?,
                    Var::zeros(v.shape(), DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            vars,
            moments,
            learning_rate: config.learning_rate,
            weight_decay: config.weight_decay,
            step: 0,
        })
    }

    fn step(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        let grads = loss.backward()?;
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for ((_, var), (m, v)) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var) else { continue };
            let m_new = ((m.as_tensor() * BETA1)? + (g * (1.0 - BETA1))?)?;
            let v_new = ((v.as_tensor() * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&m_new / c1)? / ((&v_new / c2)?.sqrt()? + EPSILON)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.learning_rate * self.weight_decay))?;
            var.set(&(decayed - (update * self.learning_rate)?)?)?;
            m.set(&m_new)?;
            v.set(&v_new)?;
        }
        Ok(())
    }

    /// The moments as named tensors, for the resumable state.
    fn named_moments(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, _), (m, v)) in self.vars.iter().zip(&self.moments) {
            out.insert(format!("adam.m.{name}"), m.as_tensor().clone());
            out.insert(format!("adam.v.{name}"), v.as_tensor().clone());
        }
        out
    }

    fn restore(&mut self, saved: &HashMap<String, Tensor>, step: u64) -> Result<(), TrainError> {
        for ((name, _), (m, v)) in self.vars.iter().zip(&self.moments) {
            for (kind, var) in [("m", m), ("v", v)] {
                if let Some(t) = saved.get(&format!("adam.{kind}.{name}")) {
                    var.set(t)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The model and the parameters it reads.
pub struct Network {
    pub varmap: VarMap,
    pub model: GroundingModel,
}

impl Network {
    pub fn new(config: &TrainConfig) -> Result<Network, TrainError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = GroundingModel::new(config, vb)?;
        model::initialise(&varmap, config.seed)?;
        Ok(Network { varmap, model })
    }

    /// Weights from a safetensors file.
    pub fn load(config: &TrainConfig, weights: &Path) -> Result<Network, TrainError> {
        let mut network = Network::new(config)?;
        network
            .varmap
            .load(weights)
            .map_err(|e| TrainError::Model {
                path: weights.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(network)
    }

    /// Predictions for `pairs`, batched, without dropout.
    pub fn predict(
        &self,
        pairs: &[&Pair],
        videos: &VideoBank,
        queries: &QueryBank,
        config: &TrainConfig,
    ) -> Result<Vec<(f64, f64, Vec<f32>)>, TrainError> {
        let mut out = Vec::with_capacity(pairs.len());
        self.each_batch(pairs, videos, queries, config, |_, _, prediction| {
            let attention = prediction.attention.to_vec2::<f32>()?;
            for ((start, end), weights) in ordered_spans(prediction)?.into_iter().zip(attention) {
                out.push((start, end, weights));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs the model without dropout over `pairs`, batch by batch, handing each batch's pairs,
    /// tensors and prediction to `visit`.
    fn each_batch(
        &self,
        pairs: &[&Pair],
        videos: &VideoBank,
        queries: &QueryBank,
        config: &TrainConfig,
        mut visit: impl FnMut(&[&Pair], &Batch, &Prediction) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        for chunk in pairs.chunks(config.batch.max(1)) {
            let batch = Batch::new(chunk, videos, queries, config, None)?;
            let prediction = self.model.forward(&batch, &mut Dropout::off())?;
            visit(chunk, &batch, &prediction)?;
        }
        Ok(())
    }
}

/// The predicted spans as (start, end) with start ≤ end: the head does not order them.
fn ordered_spans(prediction: &Prediction) -> Result<Vec<(f64, f64)>, TrainError> {
    Ok(prediction
        .spans
        .to_vec2::<f32>()?
        .into_iter()
        .map(|span| {
            let (a, b) = (f64::from(span[0]), f64::from(span[1]));
            (a.min(b), a.max(b))
        })
        .collect())
}

/// What a finished run reports.
pub struct TrainReport {
    pub card: ModelCard,
    pub resumed_from: Option<usize>,
    pub stopped_early: bool,
}

/// Trains on the pairs of `dataset` (a file or a folder of our shards) over the features under
/// `features`, writing `out/model.safetensors` + `out/model.json` (the best epoch on the
/// validation split) and resuming an interrupted run in `out` when the data and settings are
/// the same. `progress` is called after every epoch.
pub fn train(
    dataset: &Path,
    features: &[PathBuf],
    out: &Path,
    config: &Config,
    mut progress: impl FnMut(&EpochRecord, &Validation),
) -> Result<TrainReport, TrainError> {
    let train_config = &config.train;
    let started = Instant::now();
    let moments = first_per_video(read_moments(dataset)?, train_config.pairs_per_video);
    if moments.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no pairs to train on",
            dataset.display()
        )));
    }
    if let Some(m) = moments.iter().find(|m| m.query.trim().is_empty()) {
        return Err(TrainError::Data(format!(
            "{}: a pair of video {} has no query text (a language-free dataset?); the grounding model reads sentences",
            dataset.display(),
            m.vid
        )));
    }
    let vids: HashSet<String> = moments.iter().map(|m| m.vid.clone()).collect();
    let videos = VideoBank::load(features, &vids, config)?;
    let pairs = normalised_pairs(&moments, &videos);
    let encoder = TextEncoder::load(&config.caption)?;
    let lexicon = lexicon(config);
    let queries = QueryBank::encode(
        &pairs.iter().map(|p| p.query.as_str()).collect(),
        &encoder,
        &lexicon.iter().cloned().collect(),
        train_config.max_query_words,
    )?;
    let (training, validation) = split(&pairs, train_config.validation_share);
    let data = DataSummary {
        source: dataset.display().to_string(),
        hash: pairs_hash(&pairs),
        pairs: pairs.len(),
        videos: vids.len(),
        train_pairs: training.len(),
        validation_pairs: validation.len(),
    };
    tracing::info!(
        pairs = data.pairs,
        videos = data.videos,
        train = data.train_pairs,
        validation = data.validation_pairs,
        prepared_s = started.elapsed().as_secs_f64(),
        "training data ready"
    );
    std::fs::create_dir_all(out).map_err(|source| TrainError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let network = Network::new(train_config)?;
    let mut optimiser = AdamW::new(&network.varmap, train_config)?;
    let mut state = TrainState {
        data_hash: data.hash.clone(),
        config: train_config.clone(),
        epoch: 0,
        step: 0,
        best: None,
        best_epoch: 0,
        bad_epochs: 0,
        history: Vec::new(),
    };
    let resumed_from = resume(out, &mut state, &network, &mut optimiser)?;
    let mut stopped_early = false;
    let mut card = None;
    while state.epoch < train_config.epochs {
        if state.bad_epochs >= train_config.patience.max(1) {
            stopped_early = true;
            break;
        }
        let epoch = state.epoch + 1;
        let epoch_started = Instant::now();
        let order = epoch_order(
            &training,
            train_config.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9),
        );
        let mut dropout_rng = Rng::new(train_config.seed ^ 0xd0 ^ (epoch as u64) << 20);
        let mut words = WordSampler {
            keep: train_config.word_keep,
            rng: Rng::new(train_config.seed ^ 0x3d ^ (epoch as u64) << 24),
        };
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(train_config.batch) {
            let batch = Batch::new(chunk, &videos, &queries, train_config, Some(&mut words))?;
            let mut dropout = Dropout {
                rate: train_config.dropout,
                rng: Some(&mut dropout_rng),
            };
            let prediction = network.model.forward(&batch, &mut dropout)?;
            let loss = model::loss(
                &prediction,
                &batch.targets,
                &batch.inside,
                train_config.attention_loss,
            )?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
            optimiser.step(&loss)?;
        }
        let seconds = epoch_started.elapsed().as_secs_f64();
        let check = validate(&network, &validation, &videos, &queries, train_config)?;
        let record = EpochRecord {
            epoch,
            loss: loss_sum / f64::from(batches.max(1)),
            validation: check,
            seconds,
            pairs_per_second: training.len() as f64 / seconds.max(1e-9),
        };
        state.epoch = epoch;
        state.step = optimiser.step;
        state.history.push(record.clone());
        let keep = match train_config.checkpoint {
            Checkpoint::Last => true,
            Checkpoint::Validation => state.best.is_none_or(|best| check.better_than(&best)),
        };
        if keep {
            state.best = Some(check);
            state.best_epoch = epoch;
            state.bad_epochs = 0;
            let best = ModelCard {
                format: "momentminer-grounding".into(),
                version: CARD_VERSION,
                momentminer: env!("CARGO_PKG_VERSION").into(),
                config: train_config.clone(),
                feature_dim: videos.feature_dim,
                query_encoder: encoder.model_key()?,
                lexicon: lexicon.clone(),
                data: data.clone(),
                best_epoch: epoch,
                validation: check,
                history: state.history.clone(),
            };
            save_weights(&named_tensors(&network.varmap), &out.join(WEIGHTS_FILE))?;
            write_json(&out.join(CARD_FILE), &best)?;
            card = Some(best);
        } else {
            state.bad_epochs += 1;
        }
        let mut saved = optimiser.named_moments();
        saved.extend(named_tensors(&network.varmap));
        save_weights(&saved, &out.join(STATE_WEIGHTS_FILE))?;
        write_json(&out.join(STATE_FILE), &state)?;
        progress(&record, &state.best.unwrap_or_default());
    }
    let mut card = match card {
        Some(card) => card,
        None => ModelCard::read(out)?,
    };
    // The card always carries the whole history, also of epochs after the best one.
    card.history = state.history.clone();
    write_json(&out.join(CARD_FILE), &card)?;
    Ok(TrainReport {
        card,
        resumed_from,
        stopped_early,
    })
}

/// The captioner's vocabulary, verbs and nouns: the words pseudo-queries are made of, and what
/// any query is brought to. Empty (queries read as written) when no vocabulary is configured.
fn lexicon(config: &Config) -> Vec<String> {
    match crate::caption::configured_vocabulary(config) {
        Ok(vocabulary) => vocabulary
            .verbs
            .into_iter()
            .chain(vocabulary.nouns)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "no caption vocabulary: the model reads queries as written");
            Vec::new()
        }
    }
}

/// The pairs of an epoch: videos in a shuffled order, each video's pairs together (shuffled
/// among themselves), so a batch holds few videos and many queries about each: the video
/// encoder runs once per video, and the model must read the query to tell the pairs apart.
fn epoch_order<'p>(pairs: &[&'p Pair], seed: u64) -> Vec<&'p Pair> {
    let mut rng = Rng::new(seed);
    let mut by_video: HashMap<&str, Vec<&'p Pair>> = HashMap::new();
    for pair in pairs {
        by_video.entry(pair.vid.as_str()).or_default().push(pair);
    }
    let mut videos: Vec<&str> = by_video.keys().copied().collect();
    videos.sort_unstable();
    rng.shuffle(&mut videos);
    let mut order = Vec::with_capacity(pairs.len());
    for vid in videos {
        let mut group = by_video.remove(vid).unwrap_or_default();
        rng.shuffle(&mut group);
        order.extend(group);
    }
    order
}

/// Continues the run saved in `out` if it trained on the same data with the same settings.
fn resume(
    out: &Path,
    state: &mut TrainState,
    network: &Network,
    optimiser: &mut AdamW,
) -> Result<Option<usize>, TrainError> {
    let Ok(text) = std::fs::read_to_string(out.join(STATE_FILE)) else {
        return Ok(None);
    };
    let Ok(saved) = serde_json::from_str::<TrainState>(&text) else {
        tracing::warn!(dir = %out.display(), "unreadable training state; starting afresh");
        return Ok(None);
    };
    // More epochs or patience continue a run; any other change starts afresh.
    let comparable = |c: &TrainConfig| TrainConfig {
        epochs: 0,
        patience: 0,
        ..c.clone()
    };
    if saved.data_hash != state.data_hash || comparable(&saved.config) != comparable(&state.config)
    {
        tracing::warn!(dir = %out.display(), "the data or the settings changed since the saved run; starting afresh");
        return Ok(None);
    }
    let path = out.join(STATE_WEIGHTS_FILE);
    let tensors =
        candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| TrainError::Model {
            path: path.clone(),
            message: e.to_string(),
        })?;
    for (name, var) in network
        .varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let tensor = tensors.get(name).ok_or_else(|| TrainError::Model {
            path: path.clone(),
            message: format!("no tensor {name}"),
        })?;
        var.set(tensor)?;
    }
    optimiser.restore(&tensors, saved.step)?;
    let epoch = saved.epoch;
    let config = state.config.clone();
    *state = saved;
    state.config = config;
    tracing::info!(epoch, "resuming");
    Ok(Some(epoch))
}

/// The parameters by name, as safetensors files hold them.
fn named_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Saves tensors under a temporary name and renames, so a reader never sees half a file.
fn save_weights(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), TrainError> {
    let temporary = path.with_extension("safetensors.part");
    candle_core::safetensors::save(tensors, &temporary)?;
    std::fs::rename(&temporary, path).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &text, Durability::Data).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Moments as pairs with times as fractions of each video's duration (from the annotation, or
/// the features when the format has none), clamped into the video.
pub fn normalised_pairs(moments: &[Moment], videos: &VideoBank) -> Vec<Pair> {
    moments
        .iter()
        .filter_map(|m| {
            let duration = m
                .duration
                .or_else(|| videos.durations.get(&m.vid).copied())?;
            let [start, end] = *m.windows.first()?;
            let s = (start / duration).clamp(0.0, 1.0);
            let e = (end / duration).clamp(s, 1.0);
            Some(Pair {
                vid: m.vid.clone(),
                query: m.query.trim().to_string(),
                start: s,
                end: e,
            })
        })
        .collect()
}

/// The first `limit` moments of each video, in the order the dataset lists them (0 = all): our
/// datasets list a video's proposals best first, and the best few are the most often right.
fn first_per_video(moments: Vec<Moment>, limit: usize) -> Vec<Moment> {
    if limit == 0 {
        return moments;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    moments
        .into_iter()
        .filter(|m| {
            let count = seen.entry(m.vid.clone()).or_default();
            *count += 1;
            *count <= limit
        })
        .collect()
}

/// Training and validation pairs; a video's pairs all go to one side, chosen by a hash of its
/// id, so the validation videos are never seen in training.
fn split(pairs: &[Pair], share: f64) -> (Vec<&Pair>, Vec<&Pair>) {
    let held_out = |vid: &str| (hash_str(vid) % 10_000) as f64 / 10_000.0 < share;
    let (mut validation, mut training): (Vec<&Pair>, Vec<&Pair>) =
        pairs.iter().partition(|p| held_out(&p.vid));
    if validation.is_empty() && share > 0.0 {
        // A tiny dataset still needs something to choose the checkpoint on: the last video.
        if let Some(last) = training.last().map(|p| p.vid.clone()) {
            let (moved, kept): (Vec<&Pair>, Vec<&Pair>) =
                training.into_iter().partition(|p| p.vid == last);
            validation = moved;
            training = kept;
        }
    }
    if training.is_empty() {
        training = validation.clone();
    }
    (training, validation)
}

fn pairs_hash(pairs: &[Pair]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for p in pairs {
        hasher.update(p.vid.as_bytes());
        hasher.update(p.query.as_bytes());
        hasher.update(&p.start.to_le_bytes());
        hasher.update(&p.end.to_le_bytes());
    }
    format!("{:032x}", hasher.digest128())
}

fn validate(
    network: &Network,
    pairs: &[&Pair],
    videos: &VideoBank,
    queries: &QueryBank,
    config: &TrainConfig,
) -> Result<Validation, TrainError> {
    if pairs.is_empty() {
        return Ok(Validation::default());
    }
    let (mut loss_sum, mut hits, mut iou_sum) = (0.0, [0usize; 3], 0.0);
    network.each_batch(
        pairs,
        videos,
        queries,
        config,
        |chunk, batch, prediction| {
            // The span's error only: many held-out pseudo-labels are wrong, and the attention
            // term punishes confident attention on them, so with it the loss favours a model
            // that hedges (on one world it was lowest after the first epoch, while the test
            // figures rose for several more).
            let loss = model::loss(prediction, &batch.targets, &batch.inside, 0.0)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * chunk.len() as f64;
            for (pair, (start, end)) in chunk.iter().zip(ordered_spans(prediction)?) {
                let iou = iou([start, end], [pair.start, pair.end]);
                iou_sum += iou;
                for (hit, threshold) in hits.iter_mut().zip(IOU_THRESHOLDS) {
                    *hit += usize::from(iou >= threshold);
                }
            }
            Ok(())
        },
    )?;
    let n = pairs.len() as f64;
    Ok(Validation {
        loss: loss_sum / n,
        r1: hits.map(|h| h as f64 / n),
        miou: iou_sum / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TrainConfig {
        let mut config = Config::default().train;
        config.steps = 16;
        config.projection = 8;
        config.hidden = 16;
        config.heads = 2;
        config.nonlocal_blocks = 1;
        config.dropout = 0.0;
        config.learning_rate = 3e-3;
        config
    }

    /// Two kinds of query, each marking where its own pattern sits in the video: the model must
    /// learn to read the query to find the span. The guide loss starts at the uniform
    /// attention's −log(1/16) ≈ 2.8; its floor, attention spread evenly over the 4 steps of the
    /// span, is ln 4 ≈ 1.39.
    #[test]
    fn the_model_learns_to_find_what_the_query_names() {
        let config = tiny();
        let mut rng = Rng::new(5);
        let pattern = |k: usize| -> Vec<f32> {
            (0..8)
                .map(|d| if d % 2 == k { 1.0 } else { -1.0 })
                .collect()
        };
        let mut videos = VideoBank {
            steps: HashMap::new(),
            durations: HashMap::new(),
            feature_dim: 8,
        };
        let mut pairs = Vec::new();
        for v in 0..24 {
            let vid = format!("v{v}");
            let spans = [
                (rng.range_usize(0, 5), 0usize),
                (rng.range_usize(8, 12), 1usize),
            ];
            let mut steps = vec![0f32; 16 * 8];
            for t in 0..16 {
                for d in 0..8 {
                    steps[t * 8 + d] = 0.1 * rng.normal() as f32;
                }
            }
            for &(start, kind) in &spans {
                for t in start..start + 4 {
                    steps[t * 8..t * 8 + 8].copy_from_slice(&pattern(kind));
                }
                pairs.push(Pair {
                    vid: vid.clone(),
                    query: format!("kind {kind}"),
                    start: start as f64 / 16.0,
                    end: (start + 4) as f64 / 16.0,
                });
            }
            videos.steps.insert(vid, Arc::new(steps));
        }
        let mut words = HashMap::new();
        let mut vectors = HashMap::new();
        for kind in 0..2 {
            let mut t = vec![0f32; QUERY_DIM];
            t[kind * 7] = 3.0;
            t[100 + kind] = 3.0;
            vectors.insert(format!("w{kind}"), t);
            words.insert(
                format!("kind {kind}"),
                vec!["kind".into(), format!("w{kind}")],
            );
        }
        vectors.insert("kind".into(), vec![0.5; QUERY_DIM]);
        let queries = QueryBank::from_parts(words, vectors);
        let network = Network::new(&config).unwrap();
        let mut optimiser = AdamW::new(&network.varmap, &config).unwrap();
        let refs: Vec<&Pair> = pairs.iter().collect();
        let batch = Batch::new(&refs, &videos, &queries, &config, None).unwrap();
        let mut losses = Vec::new();
        for _ in 0..200 {
            let prediction = network.model.forward(&batch, &mut Dropout::off()).unwrap();
            let loss = model::loss(&prediction, &batch.targets, &batch.inside, 1.0).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            optimiser.step(&loss).unwrap();
        }
        assert!(losses[0] > 2.5, "{losses:?}");
        let floor = 4f32.ln();
        assert!(
            *losses.last().unwrap() < floor + 0.1,
            "{:?}",
            &losses[losses.len() - 10..]
        );
        let check = validate(&network, &refs, &videos, &queries, &config).unwrap();
        assert!(check.r1[1] > 0.8, "{check:?}");
    }

    #[test]
    fn the_split_keeps_each_video_on_one_side() {
        let pairs: Vec<Pair> = (0..200)
            .map(|i| Pair {
                vid: format!("v{}", i / 4),
                query: format!("q{i}"),
                start: 0.1,
                end: 0.5,
            })
            .collect();
        let (training, validation) = split(&pairs, 0.2);
        assert_eq!(training.len() + validation.len(), 200);
        assert!(!validation.is_empty() && validation.len() < 100);
        let held: HashSet<&str> = validation.iter().map(|p| p.vid.as_str()).collect();
        assert!(training.iter().all(|p| !held.contains(p.vid.as_str())));
        let (_, tiny) = split(&pairs[..4], 0.01);
        assert_eq!(tiny.len(), 4, "one video: it validates (and trains)");
    }
}
