//! The model's inputs, prepared once before the first epoch: each video's steps
//! ([`VideoBank`]), the pairs with normalised times ([`Pair`]), the train/validation split,
//! the order of an epoch, and the tensors of a batch ([`Batch`]).

use super::error::TrainError;
use super::query::{QueryBank, WordSampler, QUERY_DIM};
use crate::batch::collect_videos;
use crate::caption::{shared_scene, visual_stream, CaptionError};
use crate::config::{Config, TrainConfig};
use crate::dataset::Moment;
use crate::ingest::{read_video, Durations, Features, Video, VideoRef};
use crate::rng::{hash_str, Rng};
use crate::sample::sample;
use crate::similarity::{dot, to_unit_length};
use crate::span::steps_of;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// One training or evaluation pair: a query and where it happens, normalised to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The video id.
    pub vid: String,
    /// The sentence or pseudo-query.
    pub query: String,
    /// Start, as a fraction of the video.
    pub start: f64,
    /// End, as a fraction of the video.
    pub end: f64,
    /// How much its loss counts (`train.confidence_weighting`); 1 for an even weighting.
    pub weight: f32,
}

/// Every video's model input, prepared once: `steps × projection` floats.
pub struct VideoBank {
    /// Each video's `steps × projection` inputs.
    pub steps: HashMap<String, Arc<Vec<f32>>>,
    /// Each video's `steps × width` tower stream ([`visual_steps`]) with
    /// `train.similarity_input`; empty otherwise.
    pub visual: HashMap<String, Arc<Vec<f32>>>,
    /// Each video's duration in seconds.
    pub durations: HashMap<String, f64>,
    /// Width of the raw features (all videos alike).
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

/// `features` resampled to exactly `train.steps` rows (short videos repeat rows), each brought
/// to unit length: the model's steps, whichever stream they are read from.
fn unit_steps(features: &Features, config: &Config) -> Features {
    let steps = config.train.steps;
    let mut sample_config = config.sample.clone();
    sample_config.steps = steps;
    let sampled = sample(features, &sample_config);
    let mut unit = Features {
        frames: steps,
        dim: sampled.dim,
        data: Vec::with_capacity(steps * sampled.dim),
    };
    for i in 0..steps {
        let start = unit.data.len();
        unit.data
            .extend_from_slice(sampled.row((i * sampled.frames / steps).min(sampled.frames - 1)));
        to_unit_length(&mut unit.data[start..]);
    }
    unit
}

/// One video's model input: [`unit_steps`] (with `train.remove_scene`, less the steps'
/// [`shared_scene`] and brought back to unit length), then projected.
pub fn video_steps(features: &Features, config: &Config, matrix: &[f32]) -> Vec<f32> {
    let mut unit = unit_steps(features, config);
    if config.train.remove_scene {
        let scene = shared_scene(&unit);
        for row in unit.data.chunks_mut(unit.dim) {
            row.iter_mut().zip(&scene).for_each(|(v, s)| *v -= s);
            to_unit_length(row);
        }
    }
    let dim = unit.dim;
    unit.data
        .chunks(dim)
        .flat_map(|row| {
            (0..config.train.projection).map(move |p| dot(&matrix[p * dim..(p + 1) * dim], row))
        })
        .collect()
}

/// One video's text-tower stream (`caption.visual_stream`) as [`unit_steps`]: what
/// `train.similarity_input` compares a query's tower embedding with.
pub fn visual_steps(video: &Video, config: &Config) -> Result<Vec<f32>, CaptionError> {
    let stream = visual_stream(video, &config.caption.visual_stream)?;
    Ok(unit_steps(stream, config).data)
}

/// One video as [`VideoBank::load`] reads it, before the bank takes it in.
struct LoadedVideo {
    vid: String,
    duration: f64,
    dim: usize,
    steps: Vec<f32>,
    visual: Option<Vec<f32>>,
}

impl VideoBank {
    /// A bank of no videos yet, of features `feature_dim` wide.
    pub fn empty(feature_dim: usize) -> VideoBank {
        VideoBank {
            steps: HashMap::new(),
            visual: HashMap::new(),
            durations: HashMap::new(),
            feature_dim,
        }
    }

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
        let loaded: Vec<LoadedVideo> = vids
            .par_iter()
            .map(|vid| {
                let video_ref = by_id[vid];
                let unreadable = |message: String| TrainError::Features {
                    vid: vid.clone(),
                    path: video_ref.path.clone(),
                    message,
                };
                let video: Video = read_video(video_ref, &config.ingest, &durations)
                    .map_err(|e| unreadable(e.problem.to_string()))?;
                let visual = match config.train.similarity_input {
                    true => {
                        Some(visual_steps(&video, config).map_err(|e| unreadable(e.to_string()))?)
                    }
                    false => None,
                };
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
                Ok(LoadedVideo {
                    vid: vid.clone(),
                    duration: video.duration,
                    dim: features.dim,
                    steps: video_steps(features, config, &matrix),
                    visual,
                })
            })
            .collect::<Result<_, TrainError>>()?;
        let dims: HashSet<usize> = loaded.iter().map(|l| l.dim).collect();
        if dims.len() > 1 {
            return Err(TrainError::Data(format!(
                "the videos' features have different widths {dims:?}; one model reads one kind of feature"
            )));
        }
        let feature_dim = dims.into_iter().next().unwrap_or(0);
        let mut bank = VideoBank::empty(feature_dim);
        for video in loaded {
            if let Some(visual) = video.visual {
                bank.visual.insert(video.vid.clone(), Arc::new(visual));
            }
            bank.durations.insert(video.vid.clone(), video.duration);
            bank.steps.insert(video.vid, Arc::new(video.steps));
        }
        Ok(bank)
    }
}

/// The tensors of one batch of pairs. Each distinct video's steps are there once (`steps`),
/// and `video_of` says which one each pair reads, so the query-independent video encoder runs
/// once per video, not once per pair.
pub struct Batch {
    /// The distinct videos' steps, `(U, N, projection)`.
    pub steps: Tensor,
    /// Which of them each pair reads, `(B,)`.
    pub video_of: Tensor,
    /// Query token vectors, `(B, L, 384)`.
    pub tokens: Tensor,
    /// 1 on real tokens, 0 on padding, `(B, L)`.
    pub mask: Tensor,
    /// Normalised (start, end) to regress, `(B, 2)`.
    pub targets: Tensor,
    /// 1 on the steps inside the target span, `(B, N)`: what the attention guide loss rewards.
    pub inside: Tensor,
    /// Each pair's loss weight, `(B,)`.
    pub weights: Tensor,
    /// With `train.similarity_input`, each pair's tower cosine between its query and every
    /// step, standardised over the steps, `(B, N)`.
    pub similarity: Option<Tensor>,
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
            let steps = steps_of([pair.start, pair.end], n);
            inside[i * n + steps.start..i * n + steps.end].fill(1.0);
        }
        let similarity = match config.similarity_input {
            true => Some(step_similarity(pairs, videos, queries, n)?),
            false => None,
        };
        let device = Device::Cpu;
        Ok(Batch {
            steps: Tensor::from_vec(steps, (index.len(), n, p), &device)?,
            video_of: Tensor::from_vec(video_of, b, &device)?,
            tokens: Tensor::from_vec(tokens, (b, length, QUERY_DIM), &device)?,
            mask: Tensor::from_vec(mask, (b, length), &device)?,
            targets: Tensor::from_vec(targets, (b, 2), &device)?,
            inside: Tensor::from_vec(inside, (b, n), &device)?,
            weights: Tensor::from_vec(pairs.iter().map(|p| p.weight).collect(), b, &device)?,
            similarity: similarity
                .map(|rows| Tensor::from_vec(rows, (b, n), &device))
                .transpose()?,
        })
    }
}

/// Each pair's tower cosine between its query and each of the `n` steps of its video,
/// standardised over the steps: a video's steps all share its scene, so the raw cosines differ
/// by little and by a different offset in every video.
fn step_similarity(
    pairs: &[&Pair],
    videos: &VideoBank,
    queries: &QueryBank,
    n: usize,
) -> Result<Vec<f32>, TrainError> {
    let mut rows = Vec::with_capacity(pairs.len() * n);
    for pair in pairs {
        let text = queries.tower_vector(&pair.query).ok_or_else(|| {
            TrainError::Data(format!(
                "the query {:?} has no text-tower embedding (train.similarity_input needs a tower)",
                pair.query
            ))
        })?;
        let visual = videos.visual.get(&pair.vid).ok_or_else(|| {
            TrainError::Data(format!(
                "video {} has no tower stream (train.similarity_input)",
                pair.vid
            ))
        })?;
        if visual.len() != n * text.len() {
            return Err(TrainError::Caption(CaptionError::Dimensions {
                visual: visual.len() / n.max(1),
                text: text.len(),
            }));
        }
        let cosines: Vec<f32> = visual
            .chunks(text.len())
            .map(|step| dot(step, text))
            .collect();
        let mean = cosines.iter().sum::<f32>() / n as f32;
        let spread = (cosines.iter().map(|c| (c - mean).powi(2)).sum::<f32>() / n as f32)
            .sqrt()
            .max(1e-6);
        rows.extend(cosines.iter().map(|c| (c - mean) / spread));
    }
    Ok(rows)
}

/// The pairs of an epoch: videos in a shuffled order, each video's pairs together (shuffled
/// among themselves), so a batch holds few videos and many queries about each: the video
/// encoder runs once per video, and the model must read the query to tell the pairs apart.
pub(crate) fn epoch_order<'p>(pairs: &[&'p Pair], seed: u64) -> Vec<&'p Pair> {
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

/// Moments as pairs with times as fractions of each video's duration (from the annotation, or
/// the features when the format has none), clamped into the video, each weighted by its
/// confidence ([`confidence_weights`]).
pub fn normalised_pairs(moments: &[Moment], videos: &VideoBank, weighting: f64) -> Vec<Pair> {
    moments
        .iter()
        .zip(confidence_weights(moments, weighting))
        .filter_map(|(m, weight)| {
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
                weight,
            })
        })
        .collect()
}

/// Each moment's loss weight, `1 − weighting + weighting · 2 · rank` with `rank` its place
/// among the moments that have a confidence, from 0 (least sure) to 1 (surest), ties sharing
/// their mean place: ranks rather than the margins themselves, which span too narrow a range
/// (about 2 to 4 standard deviations in every development world) to weigh by (README,
/// grounding). Moments without a confidence weigh 1, and so do all when `weighting` is 0.
pub(crate) fn confidence_weights(moments: &[Moment], weighting: f64) -> Vec<f32> {
    let mut weights = vec![1.0; moments.len()];
    let mut ranked: Vec<(usize, f64)> = moments
        .iter()
        .enumerate()
        .filter_map(|(i, m)| m.confidence.map(|c| (i, c)))
        .collect();
    if weighting == 0.0 || ranked.len() < 2 {
        return weights;
    }
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1));
    let last = (ranked.len() - 1) as f64;
    let mut first = 0;
    for tied in ranked.chunk_by(|a, b| a.1 == b.1) {
        let rank = (first as f64 + (tied.len() - 1) as f64 / 2.0) / last;
        for (i, _) in tied {
            weights[*i] = (1.0 - weighting + weighting * 2.0 * rank) as f32;
        }
        first += tied.len();
    }
    weights
}

/// The first `limit` moments of each video, in the order the dataset lists them (0 = all): our
/// datasets list a video's proposals best first, and the best few are the most often right.
pub(crate) fn first_per_video(moments: Vec<Moment>, limit: usize) -> Vec<Moment> {
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
pub(crate) fn split(pairs: &[Pair], share: f64) -> (Vec<&Pair>, Vec<&Pair>) {
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

pub(crate) fn pairs_hash(pairs: &[Pair]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for p in pairs {
        hasher.update(p.vid.as_bytes());
        hasher.update(p.query.as_bytes());
        hasher.update(&p.start.to_le_bytes());
        hasher.update(&p.end.to_le_bytes());
    }
    format!("{:032x}", hasher.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moment(confidence: Option<f64>) -> Moment {
        Moment {
            vid: "v".into(),
            query: "open door".into(),
            duration: Some(10.0),
            windows: vec![[1.0, 2.0]],
            confidence,
        }
    }

    #[test]
    fn confidence_weights_rank_the_pairs_and_average_one() {
        let moments: Vec<Moment> = [Some(3.0), Some(1.0), None, Some(2.0), Some(2.0), Some(9.0)]
            .into_iter()
            .map(moment)
            .collect();
        assert_eq!(confidence_weights(&moments, 0.0), vec![1.0; 6]);
        // Ranks 0, 0.375 (the tie), 0.75, 1 of the five with a confidence.
        let full = confidence_weights(&moments, 1.0);
        assert_eq!(full, vec![1.5, 0.0, 1.0, 0.75, 0.75, 2.0]);
        let half = confidence_weights(&moments, 0.5);
        assert_eq!(half, vec![1.25, 0.5, 1.0, 0.875, 0.875, 1.5]);
        let ranked: f32 = full.iter().sum::<f32>() - full[2];
        assert!((ranked / 5.0 - 1.0).abs() < 1e-6);
    }

    /// Four steps of a 2-d tower stream, the query's direction on the last two.
    fn similarity_batch(tower: bool) -> Result<Batch, TrainError> {
        let mut config = Config::default().train;
        config.steps = 4;
        config.projection = 2;
        config.similarity_input = true;
        let videos = VideoBank {
            steps: HashMap::from([("v".into(), Arc::new(vec![0.0; 8]))]),
            visual: HashMap::from([(
                "v".into(),
                Arc::new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]),
            )]),
            durations: HashMap::from([("v".into(), 10.0)]),
            feature_dim: 2,
        };
        let mut queries = QueryBank::from_parts(
            HashMap::from([("a cup".into(), vec!["cup".into()])]),
            HashMap::from([("cup".into(), vec![1.0; QUERY_DIM])]),
        );
        if tower {
            queries =
                queries.with_tower_embeddings(HashMap::from([("a cup".into(), vec![0.0, 2.0])]));
        }
        let pair = Pair {
            vid: "v".into(),
            query: "a cup".into(),
            start: 0.5,
            end: 1.0,
            weight: 1.0,
        };
        Batch::new(&[&pair], &videos, &queries, &config, None)
    }

    #[test]
    fn the_input_steps_lose_their_shared_scene_and_keep_unit_length() {
        let (first, second) = ([2.0f32, 1.0, 0.0], [2.5f32, 0.0, 0.5]);
        let features = Features {
            frames: 4,
            dim: 3,
            data: [first, first, second, second]
                .iter()
                .flatten()
                .copied()
                .collect(),
        };
        let mut config = Config::default();
        config.train.steps = 4;
        config.train.projection = 3;
        let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let unit = |v: &[f32]| -> Vec<f32> {
            let length = dot(v, v).sqrt();
            v.iter().map(|x| x / length).collect()
        };
        let (a, b) = (unit(&first), unit(&second));
        config.train.remove_scene = false;
        let kept = video_steps(&features, &config, &identity);
        assert_eq!(kept, [a.clone(), a.clone(), b.clone(), b.clone()].concat());
        config.train.remove_scene = true;
        let removed = video_steps(&features, &config, &identity);
        let mean: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
        let alike = dot(&mean, &mean);
        let less = |v: &[f32]| {
            unit(
                &v.iter()
                    .zip(&mean)
                    .map(|(x, m)| x - alike * m)
                    .collect::<Vec<_>>(),
            )
        };
        let expected = [less(&a), less(&a), less(&b), less(&b)].concat();
        for (got, want) in removed.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-5,
                "{removed:?} against {expected:?}"
            );
        }
        assert!(dot(&removed[0..3], &removed[6..9]) < dot(&a, &b) - 0.5);
    }

    #[test]
    fn the_tower_similarity_input_is_standardised_over_the_steps() {
        let batch = similarity_batch(true).unwrap();
        let rows = batch.similarity.unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(rows, vec![vec![-1.0, -1.0, 1.0, 1.0]]);
        let error = similarity_batch(false).err().unwrap().to_string();
        assert!(
            error.contains("\"a cup\"") && error.contains("train.similarity_input"),
            "{error}"
        );
    }
}
