//! The grounding model, PSVL's family, one struct per block as the paper draws it:
//!
//! ```text
//! query tokens (MiniLM, frozen) ─▶ QueryEncoder ───────────────┐
//!                                                              ▼
//! video steps (projected once) ─▶ VideoEncoder ─▶ CrossModal (video ⇄ query) ─▶ NonLocal × k
//!                                                   ─▶ AttentivePooling ─▶ RegressionHead ─▶ (start, end)
//!                                                        └─ temporal attention w (guided by the loss)
//! ```
//!
//! With `train.head = "map"` a [`TemporalMap`] (2D-TAN's head) replaces the regression: every
//! span of clips gets a score, and the best-scored span is the answer.
//!
//! Shapes: B queries, U distinct videos among them, N video steps, L query tokens, H hidden,
//! C clips of the temporal map, M = C(C+1)/2 spans of clips.

use super::data::{Batch, Pair, VideoBank};
use super::error::TrainError;
use super::query::{QueryBank, QUERY_DIM};
use crate::config::{Head, TrainConfig};
use crate::rng::Rng;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarMap;
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, VarBuilder};
use std::path::Path;

const LN_EPS: f64 = 1e-5;

type Result<T> = candle_core::Result<T>;

/// Randomness of one forward pass: dropout masks drawn from our seeded generator, so training
/// is reproducible bit for bit (candle's CPU generator cannot be seeded).
pub struct Dropout<'a> {
    /// Dropout probability.
    pub rate: f64,
    /// The generator for the masks; `None` at inference, when nothing is dropped.
    pub rng: Option<&'a mut Rng>,
}

impl Dropout<'_> {
    /// Inference: no dropout.
    pub fn off() -> Dropout<'static> {
        Dropout {
            rate: 0.0,
            rng: None,
        }
    }

    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        let Some(rng) = self.rng.as_deref_mut() else {
            return Ok(x.clone());
        };
        if self.rate <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.rate;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.uniform() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?
    }
}

/// Softmax over the last axis from primitive operations: candle's fused softmax and layer norm
/// kernels have no backward pass, and gradients would silently stop at them.
fn softmax(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, candle_core::D::Minus1)
}

/// Layer normalisation over the last axis, from primitive operations (see `softmax`).
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

fn layer_norm(size: usize, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
        bias: vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?,
    })
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, LN_EPS as f32)
    }
}

/// Multi-head scaled dot-product attention of `x` over `context`, keys masked by `mask`
/// (B, Tk) of 1 (attend) and 0 (padding).
pub struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn new(hidden: usize, heads: usize, vb: VarBuilder) -> Result<Attention> {
        Ok(Attention {
            query: linear(hidden, hidden, vb.pp("query"))?,
            key: linear(hidden, hidden, vb.pp("key"))?,
            value: linear(hidden, hidden, vb.pp("value"))?,
            out: linear(hidden, hidden, vb.pp("out"))?,
            heads,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        x.reshape((b, t, self.heads, h / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, x: &Tensor, context: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, tq, h) = x.dims3()?;
        let q = self.split(&self.query.forward(x)?)?;
        let k = self.split(&self.key.forward(context)?)?;
        let v = self.split(&self.value.forward(context)?)?;
        let scale = 1.0 / ((h / self.heads) as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        if let Some(mask) = mask {
            // 0 where attended, a large negative number at padding.
            let bias = ((mask - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?;
            scores = scores.broadcast_add(&bias)?;
        }
        let weights = softmax(&scores)?;
        let mixed = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, tq, h))?;
        self.out.forward(&mixed)
    }
}

/// Position-wise feed-forward layer of a transformer block.
struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn new(hidden: usize, vb: VarBuilder) -> Result<FeedForward> {
        Ok(FeedForward {
            up: linear(hidden, 2 * hidden, vb.pp("up"))?,
            down: linear(2 * hidden, hidden, vb.pp("down"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.up.forward(x)?.relu()?)
    }
}

/// MiniLM's frozen token vectors into the model's width, then one self-attention layer over
/// the words.
pub struct QueryEncoder {
    project: Linear,
    norm: LayerNorm,
    attention: Attention,
}

impl QueryEncoder {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<QueryEncoder> {
        Ok(QueryEncoder {
            project: linear(QUERY_DIM, config.hidden, vb.pp("project"))?,
            norm: layer_norm(config.hidden, vb.pp("norm"))?,
            attention: Attention::new(config.hidden, config.heads, vb.pp("attention"))?,
        })
    }

    fn forward(&self, tokens: &Tensor, mask: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let x = self.norm.forward(&self.project.forward(tokens)?)?;
        let x = dropout.apply(&x)?;
        x.clone() + self.attention.forward(&x, &x, Some(mask))?
    }
}

/// The video's projected steps into the model's width, with a learned position per step and a
/// position-wise feed-forward layer; context across time comes from the non-local blocks after
/// the video has read the query, where it is worth its cost.
pub struct VideoEncoder {
    project: Linear,
    position: Tensor,
    feed_forward: FeedForward,
    norm: LayerNorm,
}

impl VideoEncoder {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<VideoEncoder> {
        Ok(VideoEncoder {
            project: linear(config.projection, config.hidden, vb.pp("project"))?,
            position: vb.get((config.steps, config.hidden), "position")?,
            feed_forward: FeedForward::new(config.hidden, vb.pp("feed_forward"))?,
            norm: layer_norm(config.hidden, vb.pp("norm"))?,
        })
    }

    fn forward(&self, steps: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let x = self.project.forward(steps)?.broadcast_add(&self.position)?;
        let x = dropout.apply(&x)?;
        self.norm
            .forward(&(x.clone() + self.feed_forward.forward(&x)?)?)
    }
}

/// Attention both ways: every video step reads the words, every word reads the video; the
/// sentence (the words' masked mean after reading the video) then gates each step.
pub struct CrossModal {
    video_to_query: Attention,
    query_to_video: Attention,
    gate: Linear,
    norm: LayerNorm,
}

impl CrossModal {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<CrossModal> {
        Ok(CrossModal {
            video_to_query: Attention::new(config.hidden, config.heads, vb.pp("video_to_query"))?,
            query_to_video: Attention::new(config.hidden, config.heads, vb.pp("query_to_video"))?,
            gate: linear(config.hidden, config.hidden, vb.pp("gate"))?,
            norm: layer_norm(config.hidden, vb.pp("norm"))?,
        })
    }

    /// (video (B, N, H), sentence (B, H)).
    fn forward(&self, video: &Tensor, query: &Tensor, mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let video = (video + self.video_to_query.forward(video, query, Some(mask))?)?;
        let query = (query + self.query_to_video.forward(query, &video, None)?)?;
        let weights = mask.unsqueeze(2)?;
        let sentence = query
            .broadcast_mul(&weights)?
            .sum(1)?
            .broadcast_div(&weights.sum(1)?)?;
        let gate = candle_nn::ops::sigmoid(&self.gate.forward(&sentence)?)?.unsqueeze(1)?;
        Ok((self.norm.forward(&video.broadcast_mul(&gate)?)?, sentence))
    }
}

/// A non-local block: every step sees every other step (self-attention, residual).
pub struct NonLocal {
    attention: Attention,
    norm: LayerNorm,
}

impl NonLocal {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<NonLocal> {
        Ok(NonLocal {
            attention: Attention::new(config.hidden, config.heads, vb.pp("attention"))?,
            norm: layer_norm(config.hidden, vb.pp("norm"))?,
        })
    }

    fn forward(&self, x: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let attended = dropout.apply(&self.attention.forward(x, x, None)?)?;
        self.norm.forward(&(x + attended)?)
    }
}

/// Temporal attention over the steps (what the guide loss teaches to sit on the moment) and the
/// video summarised by it. A step's score is what it looks like on its own (an additive
/// scorer) plus how well it matches the sentence (a scaled dot product): the direct match is
/// what lets the attention find the moment within the first epochs rather than the hundreds
/// PSVL trains for.
pub struct AttentivePooling {
    hidden: Linear,
    score: Linear,
    step_key: Linear,
    sentence_key: Linear,
    /// The learned weight of the tower's per-step similarity (`train.similarity_input`).
    similarity_scale: Option<Tensor>,
}

impl AttentivePooling {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<AttentivePooling> {
        Ok(AttentivePooling {
            hidden: linear(config.hidden, config.hidden, vb.pp("hidden"))?,
            score: linear(config.hidden, 1, vb.pp("score"))?,
            step_key: linear(config.hidden, config.hidden, vb.pp("step_key"))?,
            sentence_key: linear(config.hidden, config.hidden, vb.pp("sentence_key"))?,
            similarity_scale: match config.similarity_input {
                true => {
                    Some(vb.get_with_hints(1, "similarity_scale", candle_nn::Init::Const(1.0))?)
                }
                false => None,
            },
        })
    }

    /// (pooled (B, H), weights (B, N)) of steps `x` (B, N, H) for `sentence` (B, H), the
    /// tower's standardised per-step `similarity` (B, N) added to the scores when the model
    /// reads it.
    fn forward(
        &self,
        x: &Tensor,
        sentence: &Tensor,
        similarity: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let scale = 1.0 / (x.dim(2)? as f64).sqrt();
        let matched = self
            .step_key
            .forward(x)?
            .matmul(&self.sentence_key.forward(sentence)?.unsqueeze(2)?)?
            .squeeze(2)?;
        let mut scores = (self
            .score
            .forward(&self.hidden.forward(x)?.tanh()?)?
            .squeeze(2)?
            + (matched * scale)?)?;
        if let (Some(weight), Some(similarity)) = (&self.similarity_scale, similarity) {
            scores = (scores + similarity.broadcast_mul(weight)?)?;
        }
        let weights = softmax(&scores)?;
        let pooled = weights.unsqueeze(1)?.matmul(x)?.squeeze(1)?;
        Ok((pooled, weights))
    }
}

/// Normalised (start, end): the temporal attention's own extent (its mean ± √3 standard
/// deviations, exact for attention spread evenly over a span) corrected by offsets read from
/// the pooled video, so the regression starts where the attention already points.
pub struct RegressionHead {
    hidden: Linear,
    out: Linear,
    /// (N,): the centre of each step, in [0, 1].
    positions: Tensor,
}

impl RegressionHead {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<RegressionHead> {
        let n = config.steps;
        let centres: Vec<f32> = (0..n).map(|t| (t as f32 + 0.5) / n as f32).collect();
        Ok(RegressionHead {
            hidden: linear(config.hidden, config.hidden, vb.pp("hidden"))?,
            out: linear(config.hidden, 2, vb.pp("out"))?,
            positions: Tensor::from_vec(centres, n, vb.device())?,
        })
    }

    fn forward(&self, pooled: &Tensor, attention: &Tensor) -> Result<Tensor> {
        let mean = attention.broadcast_mul(&self.positions)?.sum_keepdim(1)?;
        let square = attention
            .broadcast_mul(&self.positions.sqr()?)?
            .sum_keepdim(1)?;
        let spread = ((square - mean.sqr()?)?.maximum(1e-6)?.sqrt()? * 3f64.sqrt())?;
        let offsets = (self
            .out
            .forward(&self.hidden.forward(pooled)?.relu()?)?
            .tanh()?
            * 0.5)?;
        let extent = Tensor::cat(&[(&mean - &spread)?, (&mean + &spread)?], 1)?;
        (extent + offsets)?.clamp(0.0, 1.0)
    }
}

/// Convolutions over the map of a 2D-TAN head: enough for each span to see its neighbours
/// two clips away either side, at a cost training on two cores can bear.
const MAP_CONVOLUTIONS: usize = 2;

/// 2D-TAN's temporal map: the steps pooled into C clips, every span of clips (start clip ≤ end
/// clip) one cell holding the mean of its steps, fused with the sentence by an elementwise
/// product (L2-normalised, as 2D-TAN), convolutions over the C × C grid so that each span sees
/// the spans around it, and a logit per cell. The spans of cells whose start follows their end
/// are kept at zero after every layer.
pub struct TemporalMap {
    cell: Linear,
    sentence: Linear,
    convolutions: Vec<Conv2d>,
    score: Linear,
    /// (M, N): row m averages the steps of cell m.
    pool: Tensor,
    /// (C·C, M): cell m's place on the grid (row = start clip, column = end clip).
    place: Tensor,
    /// (1, 1, C, C): 1 where a cell's start clip is not after its end clip.
    valid: Tensor,
    /// Each cell's span, normalised, in the order of the M axis.
    spans: Vec<[f64; 2]>,
}

/// The spans of a temporal map of `clips` clips, normalised: what its M axis scores.
pub fn map_spans(clips: usize) -> Vec<[f64; 2]> {
    let c = clips.max(1);
    (0..c)
        .flat_map(|i| (i..c).map(move |j| [i as f64 / c as f64, (j + 1) as f64 / c as f64]))
        .collect()
}

impl TemporalMap {
    fn new(config: &TrainConfig, vb: VarBuilder) -> Result<TemporalMap> {
        let (n, c, h) = (config.steps, config.map_clips.max(1), config.hidden);
        let per_clip = (n / c).max(1);
        let spans = map_spans(c);
        let m = spans.len();
        let mut pool = vec![0f32; m * n];
        let mut place = vec![0f32; c * c * m];
        let mut valid = vec![0f32; c * c];
        let mut cell = 0;
        for i in 0..c {
            for j in i..c {
                let (first, last) = (i * per_clip, ((j + 1) * per_clip).min(n));
                let weight = 1.0 / (last - first).max(1) as f32;
                pool[cell * n + first..cell * n + last].fill(weight);
                place[(i * c + j) * m + cell] = 1.0;
                valid[i * c + j] = 1.0;
                cell += 1;
            }
        }
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let device = vb.device().clone();
        Ok(TemporalMap {
            cell: linear(h, h, vb.pp("cell"))?,
            sentence: linear(h, h, vb.pp("sentence"))?,
            convolutions: (0..MAP_CONVOLUTIONS)
                .map(|i| conv2d(h, h, 3, same, vb.pp(format!("conv{i}"))))
                .collect::<Result<_>>()?,
            score: linear(h, 1, vb.pp("score"))?,
            pool: Tensor::from_vec(pool, (m, n), &device)?,
            place: Tensor::from_vec(place, (c * c, m), &device)?,
            valid: Tensor::from_vec(valid, (1, 1, c, c), &device)?,
            spans,
        })
    }

    /// (B, M) logits of every cell for steps `x` (B, N, H) and `sentence` (B, H).
    fn forward(&self, x: &Tensor, sentence: &Tensor, dropout: &mut Dropout) -> Result<Tensor> {
        let (b, _, h) = x.dims3()?;
        let c = self.valid.dim(2)?;
        let cells = self.cell.forward(&self.pool.broadcast_matmul(x)?)?;
        let fused = cells.broadcast_mul(&self.sentence.forward(sentence)?.unsqueeze(1)?)?;
        let norm = fused.sqr()?.sum_keepdim(2)?.sqrt()?.maximum(1e-6)?;
        let fused = dropout.apply(&fused.broadcast_div(&norm)?)?;
        let mut grid = self
            .place
            .broadcast_matmul(&fused)?
            .reshape((b, c, c, h))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        for convolution in &self.convolutions {
            grid = convolution
                .forward(&grid)?
                .relu()?
                .broadcast_mul(&self.valid)?;
        }
        let logits = self
            .score
            .forward(&grid.permute((0, 2, 3, 1))?.reshape((b, c * c, h))?)?
            .squeeze(2)?;
        logits.matmul(&self.place)
    }

    /// (B, 2): the best-scored cell's span of each row of `logits` (B, M).
    fn best_spans(&self, logits: &Tensor) -> Result<Tensor> {
        let best = logits.argmax(1)?.to_vec1::<u32>()?;
        let spans: Vec<f32> = best
            .iter()
            .flat_map(|&m| {
                let span = self.spans.get(m as usize).copied().unwrap_or([0.0, 1.0]);
                span.map(|v| v as f32)
            })
            .collect();
        Tensor::from_vec(spans, (best.len(), 2), logits.device())
    }

    /// (B, M): each cell's training target for normalised spans `targets` (B, 2), 2D-TAN's
    /// scaled IoU: 0 up to an IoU of [`MAP_MIN_IOU`], rising linearly to 1 at a perfect match.
    fn targets(&self, targets: &Tensor) -> Result<Tensor> {
        let rows = targets.to_vec2::<f32>()?;
        let scaled: Vec<f32> = rows
            .iter()
            .flat_map(|t| {
                let target = [f64::from(t[0].min(t[1])), f64::from(t[0].max(t[1]))];
                self.spans.iter().map(move |span| {
                    let overlap = crate::span::iou(*span, target);
                    ((overlap - MAP_MIN_IOU) / (1.0 - MAP_MIN_IOU)).clamp(0.0, 1.0) as f32
                })
            })
            .collect();
        Tensor::from_vec(scaled, (rows.len(), self.spans.len()), targets.device())
    }
}

/// A map cell overlapping the target by this IoU or less is a negative (2D-TAN's Charades
/// setting).
const MAP_MIN_IOU: f64 = 0.5;

/// The whole network, block by block as drawn above.
pub struct GroundingModel {
    query: QueryEncoder,
    video: VideoEncoder,
    cross: CrossModal,
    nonlocal: Vec<NonLocal>,
    pooling: AttentivePooling,
    head: RegressionHead,
    map: Option<TemporalMap>,
}

/// What the model says for a batch.
pub struct Prediction {
    /// (B, 2): normalised start and end: the regressed span, or the best cell of the map.
    pub spans: Tensor,
    /// (B, N): temporal attention, summing to 1 per query.
    pub attention: Tensor,
    /// (B, M): the temporal map's logit of each of [`map_spans`], with `train.head = "map"`.
    pub cells: Option<Tensor>,
}

impl GroundingModel {
    /// The blocks with their parameters under `vb`.
    pub fn new(config: &TrainConfig, vb: VarBuilder) -> Result<GroundingModel> {
        Ok(GroundingModel {
            query: QueryEncoder::new(config, vb.pp("query"))?,
            video: VideoEncoder::new(config, vb.pp("video"))?,
            cross: CrossModal::new(config, vb.pp("cross"))?,
            nonlocal: (0..config.nonlocal_blocks)
                .map(|i| NonLocal::new(config, vb.pp(format!("nonlocal{i}"))))
                .collect::<Result<_>>()?,
            pooling: AttentivePooling::new(config, vb.pp("pooling"))?,
            head: RegressionHead::new(config, vb.pp("head"))?,
            map: match config.head {
                Head::Regression => None,
                Head::Map => Some(TemporalMap::new(config, vb.pp("map"))?),
            },
        })
    }

    /// The regressed spans and temporal attention for a batch.
    pub fn forward(&self, batch: &Batch, dropout: &mut Dropout) -> Result<Prediction> {
        let query = self.query.forward(&batch.tokens, &batch.mask, dropout)?;
        let videos = self.video.forward(&batch.steps, dropout)?;
        let video = videos.index_select(&batch.video_of, 0)?;
        let (mut video, sentence) = self.cross.forward(&video, &query, &batch.mask)?;
        for block in &self.nonlocal {
            video = block.forward(&video, dropout)?;
        }
        let (pooled, attention) =
            self.pooling
                .forward(&video, &sentence, batch.similarity.as_ref())?;
        match &self.map {
            None => Ok(Prediction {
                spans: self.head.forward(&pooled, &attention)?,
                attention,
                cells: None,
            }),
            Some(map) => {
                let cells = map.forward(&video, &sentence, dropout)?;
                Ok(Prediction {
                    spans: map.best_spans(&cells)?,
                    attention,
                    cells: Some(cells),
                })
            }
        }
    }

    /// The spans the temporal map scores, in the order of [`Prediction::cells`]; empty without
    /// a map.
    pub fn cell_spans(&self) -> &[[f64; 2]] {
        self.map.as_ref().map_or(&[], |map| &map.spans)
    }

    /// (B, M) training targets of the temporal map's cells, with `train.head = "map"`.
    pub fn map_targets(&self, targets: &Tensor) -> Result<Option<Tensor>> {
        self.map
            .as_ref()
            .map(|map| map.targets(targets))
            .transpose()
    }
}

/// The span's loss plus `attention_weight` × the temporal attention guide loss
/// `-Σ mask·log(w) / Σ mask`, each pair's weighted by `weights` (B,) when given and averaged
/// over the batch. The span's loss is smooth-L1 on start and end, or with a temporal map, binary
/// cross-entropy of every cell's logit against its scaled IoU (`map_targets`, (B, M)), averaged
/// over the cells. `targets` (B, 2), `inside` (B, N) is 1 on the steps of the target span.
pub fn loss(
    prediction: &Prediction,
    targets: &Tensor,
    map_targets: Option<&Tensor>,
    inside: &Tensor,
    weights: Option<&Tensor>,
    attention_weight: f64,
) -> Result<Tensor> {
    let span_loss = match (&prediction.cells, map_targets) {
        (Some(logits), Some(wanted)) => binary_cross_entropy(logits, wanted)?,
        _ => span_error(&prediction.spans, targets)?,
    };
    let log_w = (prediction.attention.clone() + 1e-8)?.log()?;
    let guide = (log_w * inside)?
        .sum(1)?
        .neg()?
        .div(&inside.sum(1)?.maximum(1.0)?)?;
    let each = (span_loss + (guide * attention_weight)?)?;
    match weights {
        Some(weights) => (each * weights)?.mean(0),
        None => each.mean(0),
    }
}

/// Each row's smooth-L1 error of the (B, 2) `spans` against `targets`: 0.5·d² below 1,
/// d − 0.5 above, summed over start and end (spans are normalised, so |d| < 1 always).
pub(crate) fn span_error(spans: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let diff = (spans - targets)?.abs()?;
    diff.minimum(1.0)?
        .sqr()?
        .affine(0.5, 0.0)?
        .add(&(diff.clone() - diff.minimum(1.0)?)?)?
        .sum(1)
}

/// Each row's mean binary cross-entropy of `logits` against soft targets in [0, 1], in the
/// form that cannot overflow: max(x, 0) − x·y + log(1 + e^−|x|).
fn binary_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let soft = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * targets)?)? + soft)?.mean(1)
}

/// Initialises every parameter from our seeded generator, in name order, so a seed fixes the
/// model: weights (linear and convolution) uniform in ±1/√fan_in (PyTorch's default), biases
/// 0, layer-norm scales 1, positions N(0, 0.02).
pub fn initialise(varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = Rng::new(seed);
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let count: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("position") {
            (0..count).map(|_| (0.02 * rng.normal()) as f32).collect()
        } else if name.ends_with("bias") {
            vec![0.0; count]
        } else if dims.len() == 1 {
            vec![1.0; count]
        } else {
            // Fan-in: a linear layer's inputs, a convolution's inputs times its kernel.
            let bound = 1.0 / (dims[1..].iter().product::<usize>() as f64).sqrt();
            (0..count)
                .map(|_| rng.range_f64(-bound, bound) as f32)
                .collect()
        };
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu)?.to_dtype(DType::F32)?)?;
    }
    Ok(())
}
/// What the model says about one query, on the host.
pub struct Reading {
    /// Normalised (start, end), start ≤ end: the regressed span or the map's best cell.
    pub span: (f64, f64),
    /// The temporal attention over the steps.
    pub attention: Vec<f32>,
    /// With a temporal map, each of [`map_spans`]'s probability of being the moment.
    pub cells: Option<Vec<f32>>,
}

/// The model and the parameters it reads.
pub struct Network {
    /// The parameters.
    pub varmap: VarMap,
    /// The blocks reading them.
    pub model: GroundingModel,
}

impl Network {
    /// A freshly initialised network for `config`.
    pub fn new(config: &TrainConfig) -> std::result::Result<Network, TrainError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = GroundingModel::new(config, vb)?;
        initialise(&varmap, config.seed)?;
        Ok(Network { varmap, model })
    }

    /// Weights from a safetensors file.
    pub fn load(config: &TrainConfig, weights: &Path) -> std::result::Result<Network, TrainError> {
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

    /// What the model says about each of `pairs`, batched, without dropout.
    pub fn predict(
        &self,
        pairs: &[&Pair],
        videos: &VideoBank,
        queries: &QueryBank,
        config: &TrainConfig,
    ) -> std::result::Result<Vec<Reading>, TrainError> {
        let mut out = Vec::with_capacity(pairs.len());
        self.each_batch(pairs, videos, queries, config, |_, _, prediction| {
            let attention = prediction.attention.to_vec2::<f32>()?;
            let cells = match &prediction.cells {
                Some(logits) => candle_nn::ops::sigmoid(logits)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(Some)
                    .collect(),
                None => vec![None; attention.len()],
            };
            for ((span, attention), cells) in ordered_spans(prediction)?
                .into_iter()
                .zip(attention)
                .zip(cells)
            {
                out.push(Reading {
                    span,
                    attention,
                    cells,
                });
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs the model without dropout over `pairs`, batch by batch, handing each batch's pairs,
    /// tensors and prediction to `visit`.
    pub(crate) fn each_batch(
        &self,
        pairs: &[&Pair],
        videos: &VideoBank,
        queries: &QueryBank,
        config: &TrainConfig,
        mut visit: impl FnMut(&[&Pair], &Batch, &Prediction) -> std::result::Result<(), TrainError>,
    ) -> std::result::Result<(), TrainError> {
        for chunk in pairs.chunks(config.batch.max(1)) {
            let batch = Batch::new(chunk, videos, queries, config, None)?;
            let prediction = self.model.forward(&batch, &mut Dropout::off())?;
            visit(chunk, &batch, &prediction)?;
        }
        Ok(())
    }
}

/// The predicted spans as (start, end) with start ≤ end: the head does not order them.
pub(crate) fn ordered_spans(
    prediction: &Prediction,
) -> std::result::Result<Vec<(f64, f64)>, TrainError> {
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
