//! Ground: "where in this video does `<sentence>` happen?", answered by a trained model or,
//! with no training at all, by a CLIP-style text tower. The model regresses one span and
//! spreads its temporal attention over the steps; the answer is that span and the video's own
//! proposals, ranked by how much more of the attention they hold than an even spread would
//! give them, overlapping ones suppressed. A model with a temporal map (`train.head = "map"`)
//! answers with its best-scored cell instead of the regressed span, and scores each candidate
//! by the cell overlapping it most. A model trained with further seeds (`train.member_seeds`)
//! reads each query with every seed's network and answers from their mean reading. The
//! [`SimilarityGrounder`] ranks the video's proposals by the cosine between the query's text
//! embedding and the span's mean visual embedding, less what every step of the video shares:
//! a real zero-shot grounder wherever such a tower exists. Where the tower reads the stream
//! the proposals were found on, it also places each answer's edges, step by step
//! ([`TowerView::edges`]), and ranks the answers close to the best again as moved
//! ([`CONTENDER_DEVIATIONS`]).

use crate::caption::text::TextEncoder;
use crate::caption::{shared_scene, visual_stream, CaptionError, TextTower};
use crate::config::{Config, QueryWords, TrainConfig};
use crate::ingest::{Features, Video};
use crate::processor::{analyse, StageTimes};
use crate::similarity::Spread;
use crate::span::{iou, steps_of};
use crate::train::{
    members::mean_readings,
    model::Reading,
    projection_matrix,
    query::{read_in_context, read_queries, Lexicon, QueryBank, WordCoverage},
    video_steps, visual_steps, CaptionRecord, ModelCard, Network, Pair, TrainError, VideoBank,
    WEIGHTS_FILE,
};
use serde::Serialize;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Candidates overlapping a better one by this IoU or more are dropped from the ranking.
const SUPPRESS_IOU: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
/// One answer segment.
pub struct Segment {
    /// Seconds.
    pub start: f64,
    /// Seconds.
    pub end: f64,
    /// How strongly the model points at it (higher is better).
    pub score: f64,
}

impl Segment {
    fn scored(span: [f64; 2], score: f64) -> Segment {
        Segment {
            start: span[0],
            end: span[1],
            score,
        }
    }

    fn span(&self) -> [f64; 2] {
        [self.start, self.end]
    }
}

#[derive(Debug, Clone, Serialize)]
/// The segments answering one query.
pub struct Answer {
    /// The query.
    pub query: String,
    /// Best first, seconds.
    pub segments: Vec<Segment>,
}

/// One trained network with the fixed projection its seed gave it.
struct Member {
    network: Network,
    matrix: Vec<f32>,
}

impl Member {
    fn load(dir: &Path, card: &ModelCard) -> Result<Member, TrainError> {
        Ok(Member {
            network: Network::load(&card.config, &dir.join(WEIGHTS_FILE))?,
            matrix: projection_matrix(card.config.seed, card.feature_dim, card.config.projection),
        })
    }
}

/// What members must share to be averaged: everything on the card but the seed, the weights
/// and how training went.
fn answers_alike(card: &ModelCard) -> (TrainConfig, usize, &str, &[String], &CaptionRecord) {
    let mut train = card.config.clone();
    (train.seed, train.member_seeds) = (0, Vec::new());
    (
        train,
        card.feature_dim,
        &card.query_encoder,
        &card.lexicon,
        &card.captions,
    )
}

/// A trained model ready to answer, with the query encoder it was trained with.
pub struct Grounder {
    /// The card's model, then those of its further seeds (`train.member_seeds`).
    members: Vec<Member>,
    /// The model card.
    pub card: ModelCard,
    encoder: TextEncoder,
    /// The card's lexicon, as queries are looked up in it.
    lexicon: Lexicon,
    config: Config,
    /// The text tower, when answers weigh its similarity (`train.similarity_weight`) or the
    /// model reads it (`train.similarity_input`) and one loads.
    tower: Option<SimilarityGrounder>,
    /// The tower's weight next to the model's attention when ranking answers.
    similarity_weight: f64,
}

impl Grounder {
    /// Loads `dir` (model.json + model.safetensors, and the model folders its card lists as
    /// members), checking it was made by this version and with the query encoder configured
    /// now.
    pub fn load(dir: &Path, config: &Config) -> Result<Grounder, TrainError> {
        let card = ModelCard::read(dir)?;
        // An answer-time setting: the caller's, not the one the model was trained under.
        let similarity_weight = config.train.similarity_weight;
        let nearest_word_similarity = config.train.nearest_word_similarity;
        let mut members = vec![Member::load(dir, &card)?];
        for folder in &card.members {
            let member_dir = dir.join(folder);
            let member = ModelCard::read(&member_dir)?;
            if answers_alike(&member) != answers_alike(&card) {
                return Err(TrainError::Model {
                    path: member_dir,
                    message: format!(
                        "a member of {} trained with other settings, features or queries than it; retrain the model",
                        dir.display()
                    ),
                });
            }
            members.push(Member::load(&member_dir, &member)?);
        }
        let encoder = TextEncoder::load(&config.caption)?;
        if encoder.model_key()? != card.query_encoder {
            return Err(TrainError::Model {
                path: dir.to_path_buf(),
                message: format!(
                    "trained with another query encoder than {} (caption.text_model)",
                    config.caption.text_model.display()
                ),
            });
        }
        let mut config = card
            .captions
            .apply(config)
            .map_err(|message| TrainError::Model {
                path: dir.to_path_buf(),
                message,
            })?;
        config.train = card.config.clone();
        let reads_tower = card.config.similarity_input;
        let tower = match similarity_weight > 0.0 || reads_tower {
            true => match SimilarityGrounder::load(&config) {
                Ok(tower) => Some(tower),
                Err(e) if reads_tower => {
                    return Err(TrainError::Model {
                        path: dir.to_path_buf(),
                        message: format!(
                            "the model reads the text tower's similarity (train.similarity_input) and the tower does not load: {e}"
                        ),
                    })
                }
                Err(e) => {
                    tracing::info!(
                        "answers ranked by the model alone (train.similarity_weight needs a text tower): {e}"
                    );
                    None
                }
            },
            false => None,
        };
        Ok(Grounder {
            tower,
            similarity_weight,
            lexicon: Lexicon::new(card.lexicon.iter().cloned(), nearest_word_similarity),
            members,
            card,
            encoder,
            config,
        })
    }

    /// How the content words of `queries` reach the model: in its lexicon, read as their
    /// nearest lexicon word, read in context (`train.query_words`), or left out.
    pub fn word_coverage(&self, queries: &[&str]) -> Result<WordCoverage, TrainError> {
        let distinct: HashSet<&str> = queries.iter().copied().collect();
        let max_words = self.config.train.max_query_words;
        Ok(match self.config.train.query_words {
            QueryWords::Lexicon => {
                read_queries(&distinct, &self.encoder, &self.lexicon, max_words)?.1
            }
            QueryWords::Contextual => read_in_context(&distinct, &self.encoder, max_words)?.1,
        })
    }

    /// Whether answers are ranked with the text tower's similarity too.
    pub fn weighs_similarity(&self) -> bool {
        self.tower.is_some() && self.similarity_weight > 0.0
    }

    /// The configuration it answers with: the caller's, with the model's training settings
    /// and, where the caller names none, the text tower and vocabulary it was trained with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Top-`top_k` segments for each query over `video`, ranked among `candidates` (the
    /// video's [`proposal_spans`]) and the regressed span, by the model's attention and, with
    /// a text tower and `train.similarity_weight`, the tower's similarity too.
    pub fn ground(
        &self,
        video: &Video,
        queries: &[&str],
        candidates: &[[f64; 2]],
        top_k: usize,
    ) -> Result<Vec<Answer>, TrainError> {
        let features = video.features();
        if features.dim != self.card.feature_dim {
            return Err(TrainError::Features {
                vid: video.id.clone(),
                path: video.source.clone(),
                message: format!(
                    "{}-d features; the model was trained on {}-d",
                    features.dim, self.card.feature_dim
                ),
            });
        }
        let train = &self.config.train;
        let reads_tower = self.tower.as_ref().filter(|_| train.similarity_input);
        let mut bank = VideoBank::empty(features.dim);
        bank.durations.insert(video.id.clone(), video.duration);
        if reads_tower.is_some() {
            let visual = visual_steps(video, &self.config).map_err(|e| TrainError::Features {
                vid: video.id.clone(),
                path: video.source.clone(),
                message: e.to_string(),
            })?;
            bank.visual.insert(video.id.clone(), Arc::new(visual));
        }
        // Each query's tower embedding, computed once for the model's input and the ranking.
        let embedded = match &self.tower {
            Some(grounder) if reads_tower.is_some() || self.weighs_similarity() => {
                grounder.tower.embed(queries)?
            }
            _ => Vec::new(),
        };
        let distinct: HashSet<&str> = queries.iter().copied().collect();
        let texts = QueryBank::encode(
            &distinct,
            &self.encoder,
            &self.lexicon,
            train.query_words,
            train.max_query_words,
        )?;
        let texts = match reads_tower {
            Some(_) => texts.with_tower_embeddings(
                queries
                    .iter()
                    .map(|q| q.to_string())
                    .zip(embedded.iter().cloned())
                    .collect(),
            ),
            None => texts,
        };
        let pairs: Vec<Pair> = queries
            .iter()
            .map(|q| Pair {
                vid: video.id.clone(),
                query: q.to_string(),
                start: 0.0,
                end: 1.0,
                weight: 1.0,
            })
            .collect();
        let refs: Vec<&Pair> = pairs.iter().collect();
        let mut readings = Vec::with_capacity(self.members.len());
        for member in &self.members {
            let steps = video_steps(features, &self.config, &member.matrix);
            bank.steps.insert(video.id.clone(), Arc::new(steps));
            readings.push(member.network.predict(&refs, &bank, &texts, train)?);
        }
        let cell_spans = self.members[0].network.model.cell_spans();
        let predictions = mean_readings(readings, cell_spans);
        // The video as the tower reads it, once for all the queries.
        let tower = match self.tower.as_ref().filter(|_| self.weighs_similarity()) {
            Some(grounder) => {
                let fusion = if names_model_stream(video, &grounder.stream) {
                    Fusion::TOWER_STREAM
                } else {
                    Fusion::OWN_STREAM
                };
                Some((grounder.view(video, &embedded)?, fusion))
            }
            None => None,
        };
        Ok(queries
            .iter()
            .zip(predictions)
            .enumerate()
            .map(|(i, (query, reading))| {
                // The tower's scores of the candidates, then of this query's regressed span.
                let own = tower.as_ref().map(|(view, fusion)| {
                    let regressed = [reading.span.0, reading.span.1];
                    let spans: Vec<[f64; 2]> =
                        candidates.iter().copied().chain([regressed]).collect();
                    TowerScores {
                        similarity: view.similarities(&embedded[i], &spans),
                        weight: self.similarity_weight,
                        fusion: *fusion,
                        edges: Some(EdgeSearch {
                            view,
                            text: &embedded[i],
                            deviation_in_score: FUSED_SCORE_UNIT,
                        }),
                    }
                });
                let Reading {
                    span: (start, end),
                    attention,
                    cells,
                } = reading;
                let model = match &cells {
                    Some(probabilities) => ModelScore::Map {
                        cells: cell_spans,
                        probabilities,
                    },
                    None => ModelScore::Attention(&attention),
                };
                let ranked = rank(&[start, end], candidates, model, own, top_k);
                Answer {
                    query: query.to_string(),
                    segments: in_seconds(ranked, video.duration),
                }
            })
            .collect())
    }
}

/// Sliding windows the similarity baseline over windows ranks (`eval --baselines`): every
/// scale from a half to a twelfth of the video, half-window stride.
pub const SIMILARITY_WINDOWS: usize = 143;

/// The training-free grounder (`ground --method similarity`): the text tower's embedding of
/// each query against the mean of the visual stream over each candidate span, less the
/// video's shared scene.
pub struct SimilarityGrounder {
    tower: TextTower,
    stream: String,
    /// `caption.remove_scene`: each span's mean less the video's [`shared_scene`] first.
    remove_scene: bool,
}

impl SimilarityGrounder {
    /// The tower `caption` names (`clip_text_model` or `tower_anchors`) and the stream it reads
    /// (`caption.visual_stream`).
    pub fn load(config: &Config) -> Result<SimilarityGrounder, CaptionError> {
        Ok(SimilarityGrounder {
            tower: TextTower::open(config)?,
            stream: config.caption.visual_stream.clone(),
            remove_scene: config.caption.remove_scene,
        })
    }

    /// What it ranks on a video: its proposals, normalised to [0, 1]. Measured against
    /// sliding windows and against both together, under three scorings (README, grounding):
    /// proposals under plain cosine were the best on the synthetic world and never far behind
    /// elsewhere.
    pub fn candidates(video: &Video, config: &Config) -> Vec<[f64; 2]> {
        proposal_spans(video, config)
    }

    /// The tower's embedding of each query, what [`SimilarityGrounder::ground`] reads them by:
    /// computed once, however many candidate sets they are grounded among.
    pub fn embed(&self, queries: &[&str]) -> Result<Vec<Vec<f32>>, CaptionError> {
        self.tower.embed(queries)
    }

    /// Top-`top_k` of `candidates` (normalised) for each query (`texts`, its
    /// [`SimilarityGrounder::embed`]), by cosine similarity, any overlapping a better one by
    /// [`SUPPRESS_IOU`] dropped. With [`Edges::ByTower`], where the tower reads the stream the
    /// candidates were found on, each answer's edges are then moved to where the tower sees
    /// the query begin and end ([`TowerView::edges`]).
    pub fn ground(
        &self,
        video: &Video,
        queries: &[&str],
        texts: &[Vec<f32>],
        candidates: &[[f64; 2]],
        top_k: usize,
        edges: Edges,
    ) -> Result<Vec<Answer>, CaptionError> {
        let view = self.view(video, texts)?;
        let move_edges = edges == Edges::ByTower && names_model_stream(video, &self.stream);
        Ok(queries
            .iter()
            .zip(texts)
            .map(|(query, text)| {
                let similarity = view.similarities(text, candidates);
                let edges = move_edges.then_some((&view, text.as_slice()));
                Answer {
                    query: query.to_string(),
                    segments: in_seconds(
                        ranked_by_tower(candidates, &similarity, edges, top_k),
                        video.duration,
                    ),
                }
            })
            .collect())
    }

    /// `video`'s stream as the tower reads it, checked against the width of the embedded
    /// queries (`texts`).
    fn view(&self, video: &Video, texts: &[Vec<f32>]) -> Result<TowerView, CaptionError> {
        let stream = visual_stream(video, &self.stream)?;
        if let Some(text) = texts.first().filter(|t| t.len() != stream.dim) {
            return Err(CaptionError::Dimensions {
                visual: stream.dim,
                text: text.len(),
            });
        }
        Ok(TowerView::of(stream, self.remove_scene, video.duration))
    }
}

/// Where the training-free grounder's answers begin and end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edges {
    /// Where the candidates do: the baselines `eval` measures the model against.
    AsFound,
    /// Moved by the tower where it reads the stream the candidates were found on
    /// ([`TowerView::edges`]): `ground --method similarity`, and `eval` without a model.
    ByTower,
}

/// How far the tower may move each edge of an answer, in seconds ([`TowerView::edges`]): three
/// steps of the development worlds' one feature per second, and the best reach measured at two
/// features per second as well (six steps) and at one every two seconds (two steps; README,
/// "Edges by the tower").
const EDGE_REACH_SECONDS: f64 = 3.0;

/// The flanks an answer is held against reach this share of its length beyond each end.
const FLANK_SHARE: f64 = 0.5;

/// The weight of the flanks' similarity against the span's own ([`TowerView::contrast`]).
const FLANK_WEIGHT: f64 = 0.5;

/// The temperature of the edges' vote, in the tower's standard deviations over the
/// candidates ([`TowerView::edges`]).
const EDGE_TEMPERATURE: f64 = 0.1;

/// The answers whose scores lie within this many of the tower's standard deviations of the best
/// (in a fused ranking, [`FUSED_SCORE_UNIT`]s) are ranked again once moved, each gaining what
/// the tower sees of the query in its moved span beyond its found one, in the same units. Which
/// of a few close candidates is the event shows better once each spans just the steps the tower
/// sees the query in; further down, a candidate's gain from moving is mostly the search finding
/// noise that looks like the query (README, "Close answers ranked as moved": the training-free
/// grounder's R@1 at IoU .5 and .7 rose by 2.2 and 3.9 points on average over sixteen
/// development worlds; ranking every candidate again lost the weak-tower world 1.3 at IoU .5).
const CONTENDER_DEVIATIONS: f64 = 1.0;

/// A video's stream as the tower reads it: running sums over its steps, so that the tower's
/// similarity to a query of any span costs one pass over the feature width, however long the
/// span.
struct TowerView {
    /// `(frames + 1) × dim` sums: row `t` holds the sum of steps `0..t`.
    sums: Vec<f64>,
    frames: usize,
    dim: usize,
    /// The video's [`shared_scene`], taken from every span's mean (`caption.remove_scene`).
    scene: Option<Vec<f32>>,
    /// How many steps an answer's edge may move: [`EDGE_REACH_SECONDS`] of this video, at
    /// least one step.
    reach: usize,
}

impl TowerView {
    /// `stream`, of a video `duration` seconds long.
    fn of(stream: &Features, remove_scene: bool, duration: f64) -> TowerView {
        let dim = stream.dim;
        let mut sums = vec![0.0; (stream.frames + 1) * dim];
        for t in 0..stream.frames {
            let (before, after) = sums.split_at_mut((t + 1) * dim);
            let previous = &before[t * dim..];
            for ((sum, prior), value) in after[..dim].iter_mut().zip(previous).zip(stream.row(t)) {
                *sum = prior + f64::from(*value);
            }
        }
        // A duration that is no length leaves the reach at one step, not at every step.
        let steps_per_second = match duration.is_finite() && duration > 0.0 {
            true => stream.frames as f64 / duration,
            false => 0.0,
        };
        let reach = ((EDGE_REACH_SECONDS * steps_per_second).round() as usize)
            .clamp(1, stream.frames.max(1));
        TowerView {
            sums,
            frames: stream.frames,
            dim,
            scene: remove_scene.then(|| shared_scene(stream)),
            reach,
        }
    }

    /// The cosine of `text` with each normalised span's mean, less the scene.
    fn similarities(&self, text: &[f32], spans: &[[f64; 2]]) -> Vec<f64> {
        spans
            .iter()
            .map(|span| self.similarity(text, &[steps_of(*span, self.frames)]))
            .collect()
    }

    /// The cosine of `text` with the mean over the steps of `ranges`, less the scene; 0 over no
    /// steps.
    fn similarity(&self, text: &[f32], ranges: &[Range<usize>]) -> f64 {
        let count: usize = ranges.iter().map(|r| r.len()).sum();
        if count == 0 || self.frames == 0 {
            return 0.0;
        }
        let (mut along, mut squared) = (0.0, 0.0);
        for d in 0..self.dim {
            let sum: f64 = ranges
                .iter()
                .map(|r| self.sums[r.end * self.dim + d] - self.sums[r.start * self.dim + d])
                .sum();
            let scene = self.scene.as_ref().map_or(0.0, |s| f64::from(s[d]));
            let value = sum / count as f64 - scene;
            along += value * f64::from(text[d]);
            squared += value * value;
        }
        along / squared.sqrt().max(1e-12)
    }

    /// How much more the tower sees `text` in `steps` than in their flanks (a share
    /// [`FLANK_SHARE`] of their length on either side, as far as the video goes): a span that
    /// stops short of the moment leaves it in the flanks, one that runs past takes in steps
    /// without it.
    fn contrast(&self, text: &[f32], steps: Range<usize>) -> f64 {
        let width = ((steps.len() as f64 * FLANK_SHARE).round() as usize).max(1);
        let before = steps.start.saturating_sub(width)..steps.start;
        let after = steps.end..(steps.end + width).min(self.frames);
        self.similarity(text, &[steps]) - FLANK_WEIGHT * self.similarity(text, &[before, after])
    }

    /// `span`'s edges where the tower sees `text` begin and end: every span whose edges lie
    /// within [`EDGE_REACH_SECONDS`] of its own is scored by [`TowerView::contrast`], and their
    /// edges vote, each weighted by `exp(-(how far its contrast is behind the best) /
    /// EDGE_TEMPERATURE)` in the tower's standard deviations (`spread`, over the candidates it
    /// ranked). An answer's edges are where a change in the video was found, or where the
    /// model's regression put them; the tower's step by step reading places them better
    /// (README, "Edges by the tower"). Without a spread to weigh by, the best alone.
    fn edges(&self, text: &[f32], span: [f64; 2], spread: &Spread) -> [f64; 2] {
        if self.frames == 0 {
            return span;
        }
        let frames = self.frames as f64;
        let start = ((span[0].clamp(0.0, 1.0) * frames).round() as usize).min(self.frames - 1);
        let end =
            ((span[1].clamp(0.0, 1.0) * frames).round() as usize).clamp(start + 1, self.frames);
        let mut readings = Vec::new();
        let reach = self.reach;
        for first in start.saturating_sub(reach)..=(start + reach).min(self.frames - 1) {
            let ends = end.saturating_sub(reach).max(first + 1)..=(end + reach).min(self.frames);
            for last in ends {
                let contrast = self.contrast(text, first..last);
                if contrast.is_finite() {
                    readings.push((first as f64 / frames, last as f64 / frames, contrast));
                }
            }
        }
        let Some(best) = readings.iter().map(|r| r.2).max_by(f64::total_cmp) else {
            return span;
        };
        let (mut total, mut first, mut last) = (0.0, 0.0, 0.0);
        for (start, end, contrast) in readings {
            // Infinitely far behind where the candidates' scores are all alike.
            let behind = (best - contrast) / spread.deviation();
            let weight = match contrast == best {
                true => 1.0,
                false => (-behind / EDGE_TEMPERATURE).exp(),
            };
            // A spread that is no number gives no weight rather than spoil the edges.
            if !weight.is_finite() {
                continue;
            }
            total += weight;
            first += weight * start;
            last += weight * end;
        }
        [first / total, last / total]
    }
}

/// What the tower reads of one query on one video, to move an answer's edges by.
#[derive(Clone, Copy)]
struct EdgeSearch<'a> {
    view: &'a TowerView,
    text: &'a [f32],
    /// What a gain of one of the tower's standard deviations over the candidates counts for in
    /// the ranking's score, and the unit of the gap within which answers are ranked again as
    /// moved ([`CONTENDER_DEVIATIONS`]): the deviation itself where the tower's similarity is
    /// the score, [`FUSED_SCORE_UNIT`] where the score is fused.
    deviation_in_score: f64,
}

impl EdgeSearch<'_> {
    /// `segment` with its edges where the tower sees the query begin and end.
    fn moved(&self, segment: Segment, spread: &Spread) -> Segment {
        let [start, end] = self.view.edges(self.text, segment.span(), spread);
        Segment {
            start,
            end,
            score: segment.score,
        }
    }

    /// `segment` moved, its score raised by what the tower sees of the query in the moved
    /// span beyond the found one ([`CONTENDER_DEVIATIONS`]).
    fn moved_and_scored(&self, segment: Segment, spread: &Spread) -> Segment {
        let moved = self.moved(segment, spread);
        let similarity = |span| {
            self.view
                .similarity(self.text, &[steps_of(span, self.view.frames)])
        };
        let gain = match spread.deviation() > 1e-12 {
            true => (similarity(moved.span()) - similarity(segment.span())) / spread.deviation(),
            false => 0.0,
        };
        Segment {
            score: segment.score + gain * self.deviation_in_score,
            ..moved
        }
    }
}

/// The training-free grounder's answers: `candidates` (normalised) ranked by the tower's
/// `similarity` to the query; with `edges` (the video as the tower reads it, and the query's
/// embedding), their edges moved by the tower and the close ones ranked again as moved, in the
/// tower's standard deviations ([`best_apart`]).
fn ranked_by_tower(
    candidates: &[[f64; 2]],
    similarity: &[f64],
    edges: Option<(&TowerView, &[f32])>,
    top_k: usize,
) -> Vec<Segment> {
    let search = edges.map(|(view, text)| {
        let spread = Spread::of(similarity.iter().copied());
        let search = EdgeSearch {
            view,
            text,
            deviation_in_score: spread.deviation(),
        };
        (search, spread)
    });
    let scored = candidates
        .iter()
        .zip(similarity)
        .map(|(span, &score)| Segment::scored(*span, score))
        .collect();
    best_apart(scored, top_k, search, None)
}

/// The video's proposals as spans normalised to [0, 1], best first: what answers are ranked
/// among, and what the baselines of `eval` rank. Windows filled in for recall are not among
/// them: they are not events the video was found to hold.
pub fn proposal_spans(video: &Video, config: &Config) -> Vec<[f64; 2]> {
    let analysis = analyse(video, config, &mut StageTimes::default());
    let steps = analysis.events.n.max(1) as f64;
    analysis
        .proposals
        .iter()
        .filter(|p| !p.window)
        .map(|p| [p.start as f64 / steps, p.end as f64 / steps])
        .collect()
}

/// The tower's side of a fused ranking.
struct TowerScores<'a> {
    /// The tower's similarity to the query of each candidate, then of the regressed span.
    similarity: Vec<f64>,
    /// `train.similarity_weight`.
    weight: f64,
    /// How the model's score is read against the tower's.
    fusion: Fusion,
    /// What the tower reads of the query, to move the answers' edges where the fusion says so.
    edges: Option<EdgeSearch<'a>>,
}

/// How a model's score and the tower's are weighed in a fused ranking. The model's score of a
/// span is read in two parts: its event's (the mean over the spans overlapping it by
/// [`SUPPRESS_IOU`], itself included), which says which event the sentence names, and its own
/// beyond its event's, which says where that event begins and ends.
#[derive(Clone, Copy, Debug)]
struct Fusion {
    /// The weight of the model's event score, centred over the spans, times [`ATTENTION_SCALE`].
    event: f64,
    /// The weight of its own score beyond its event's, times [`ATTENTION_SCALE`].
    boundary: f64,
    /// The tower's best candidate gains this times its lead over the second (in the tower's
    /// standard deviations) on top of its weighted score.
    tower_lead: f64,
    /// Whether the answers' edges are moved to where the tower sees the query begin and end
    /// ([`TowerView::edges`]).
    tower_edges: bool,
    /// Whether the first answer, where it counts as one with the tower's own first answer (the
    /// training-free grounder's, its edges moved too), ends halfway between the two.
    halfway_to_tower: bool,
}

impl Fusion {
    /// A model reading a stream the tower does not score (motion beside the tower's
    /// appearance) knows events the tower cannot find: all of its score counts.
    const OWN_STREAM: Fusion = Fusion {
        event: 1.0,
        boundary: 1.0,
        tower_lead: 0.0,
        tower_edges: false,
        halfway_to_tower: false,
    };

    /// A model reading the very stream the tower scores (one stream in the file, or
    /// `caption.visual_stream` naming the model's) learnt all it knows of which event a
    /// sentence names from the tower's captions of that stream, so there it repeats the tower
    /// with mistakes of its own, and what it adds is mostly where an event begins and ends,
    /// learnt from the proposals. Its event's part counts a quarter (chosen on the rank scores
    /// of twelve development worlds of seven settings and checked on four fresh ones: README,
    /// "Which event, and where it ends"). Its own score beyond its event's, which says where
    /// the event begins and ends, counted half while the answers' edges were the candidates'
    /// own; now that the tower moves them and ranks close answers again as moved, it counts a
    /// quarter too.
    ///
    /// The tower places the answers' edges: reading the video step by step, it finds where
    /// the query begins and ends better than the proposals' edges or the model's regression
    /// (README, "Edges by the tower": every figure of all twenty development worlds of one
    /// stream rose). Where the model reads another stream (the synthetic world) its edges are
    /// its own and the tower's lowered them.
    ///
    /// The tower's favourite gains half its lead over the tower's second, so the model
    /// overrules a clear favourite only by more than that. It gained 1.5 times its lead while
    /// answers were ranked by their edges as found; since close answers are ranked again as
    /// moved ([`CONTENDER_DEVIATIONS`]), a larger bonus mostly keeps the favourite as found
    /// ahead of a close answer the tower itself sees the query in better once moved (README,
    /// "The tower's favourite, once close answers are moved": 0, 0.25, 0.5, 0.75, 1 and 1.5
    /// measured on seven development worlds, then the boundary's quarter on nine).
    ///
    /// Where the fused first answer and the tower's own first answer name the same event (96 to
    /// 98% of the queries in the cleaner worlds), the two are readings of where that event
    /// begins and ends with errors of their own: the fused one runs longer, taking in part of a
    /// neighbouring step, and the tower's alone is shorter. The answer ends halfway between
    /// them (README, "Halfway to the tower's answer").
    const TOWER_STREAM: Fusion = Fusion {
        event: 0.25,
        boundary: 0.25,
        tower_lead: 0.5,
        tower_edges: true,
        halfway_to_tower: true,
    };
}

/// The regressed span and the candidates by the model's score of each, by default the attention
/// they hold beyond their share of an even spread (mass minus the fraction of steps they cover;
/// with a temporal map, the probability of the cell overlapping them most), greedily skipping
/// any that overlaps a chosen one by [`SUPPRESS_IOU`]; all normalised to [0, 1]. A span gains
/// by taking in a step only where the attention there is above average, so attention that leaks
/// thinly over the whole video does not pull the answer long. The regressed span is not put
/// first: where the attention is sharp it wins on its own, and where the regression is off a
/// proposal that holds the attention answers better. With `tower`, the tower's scores are
/// standardised over the candidates and added, weighted, to the model's, centred and scaled by
/// [`ATTENTION_SCALE`] and read in parts as the tower's [`Fusion`] says, the regressed span
/// starts [`REGRESSED_HANDICAP`] behind, and where the fusion says so the tower moves the
/// answers' edges and the first answer ends halfway to the training-free grounder's where the
/// two name the same event ([`best_apart`]).
fn rank(
    regressed: &[f64; 2],
    candidates: &[[f64; 2]],
    model: ModelScore,
    tower: Option<TowerScores>,
    top_k: usize,
) -> Vec<Segment> {
    let spans: Vec<[f64; 2]> = candidates.iter().chain([regressed]).copied().collect();
    let mut scores: Vec<f64> = spans.iter().map(|c| model.of(c)).collect();
    let (mut edges, mut grounders_first) = (None, None);
    if let Some(tower) = tower.filter(|t| t.similarity.len() == scores.len()) {
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        let events = event_scores(&spans, &scores);
        let text = standardised(&tower.similarity);
        let fusion = tower.fusion;
        scores = scores
            .iter()
            .zip(events)
            .zip(&text)
            .map(|((own, event), t)| {
                let model = fusion.boundary * (own - event) + fusion.event * (event - mean);
                ATTENTION_SCALE * model + tower.weight * t
            })
            .collect();
        // The tower's favourite among the proposals: the regressed span, the model's own
        // reading, has its handicap instead.
        if let Some((best, lead)) = lead_of(&text[..text.len() - 1]) {
            scores[best] += fusion.tower_lead * lead;
        }
        if let Some(own) = scores.last_mut() {
            *own -= REGRESSED_HANDICAP;
        }
        edges = tower
            .edges
            .filter(|_| fusion.tower_edges)
            .map(|search| (search, Spread::of(tower.similarity.iter().copied())));
        // The training-free grounder's answer, over the candidates alone as it ranks them.
        let grounder_answer = |(search, _): &(EdgeSearch, Spread)| {
            let similarity = &tower.similarity[..candidates.len()];
            let edges = Some((search.view, search.text));
            ranked_by_tower(candidates, similarity, edges, 1)
                .first()
                .map(Segment::span)
        };
        grounders_first = edges
            .as_ref()
            .filter(|_| fusion.halfway_to_tower)
            .and_then(grounder_answer);
    }
    let ranked = spans
        .iter()
        .zip(scores)
        .map(|(span, score)| Segment::scored(*span, score))
        .collect();
    best_apart(ranked, top_k, edges, grounders_first)
}

/// Whether `caption.visual_stream` = `name` is, in `video`, the stream a model reads (the one
/// proposals are found on).
fn names_model_stream(video: &Video, name: &str) -> bool {
    visual_stream(video, name).is_ok_and(|stream| std::ptr::eq(stream, video.features()))
}

/// The index of the largest of `values` and its lead over the second largest; none with fewer
/// than two.
fn lead_of(values: &[f64]) -> Option<(usize, f64)> {
    let (best, top) = values
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let second = values
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != best)
        .map(|(_, v)| *v)
        .max_by(f64::total_cmp)?;
    Some((best, top - second))
}

/// Each span's event score: the mean of `scores` over the spans overlapping it by
/// [`SUPPRESS_IOU`] or more, itself included.
fn event_scores(spans: &[[f64; 2]], scores: &[f64]) -> Vec<f64> {
    spans
        .iter()
        .map(|span| {
            let (sum, count) = spans
                .iter()
                .zip(scores)
                .filter(|(other, _)| count_as_one(*span, **other))
                .fold((0.0, 0usize), |(sum, count), (_, s)| (sum + s, count + 1));
            sum / count.max(1) as f64
        })
        .collect()
}

/// How the model scores a span (normalised).
enum ModelScore<'a> {
    /// The temporal attention over the steps: the mass the span holds beyond its share of an
    /// even spread.
    Attention(&'a [f32]),
    /// A temporal map's probability for each of its `cells`: that of the cell overlapping the
    /// span most.
    Map {
        cells: &'a [[f64; 2]],
        probabilities: &'a [f32],
    },
}

impl ModelScore<'_> {
    fn of(&self, span: &[f64; 2]) -> f64 {
        match self {
            ModelScore::Attention(attention) => {
                let steps = steps_of(*span, attention.len());
                let share = steps.len() as f64 / attention.len().max(1) as f64;
                let mass: f32 = attention.get(steps).map_or(0.0, |a| a.iter().sum());
                f64::from(mass) - share
            }
            ModelScore::Map {
                cells,
                probabilities,
            } => cells
                .iter()
                .zip(probabilities.iter())
                .map(|(cell, p)| (iou(*cell, *span), *p))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map_or(0.0, |(_, p)| f64::from(p)),
        }
    }
}

/// The model's score of a candidate (its attention beyond an even spread, or its map cell's
/// probability, centred over the video's candidates) is multiplied by this before the tower's
/// standardised similarity is added. It is not standardised itself: a model that has learnt
/// little spreads its attention nearly evenly, and standardising blew that noise up to the
/// tower's scale, where it outvoted the tower (the noisy development world: 58.5 at R@1 IoU .5
/// standardised, 67.6 scaled, the tower alone 63.2). A candidate holding a quarter of the
/// attention beyond its share then counts as one standard deviation of the tower's scores; 2
/// to 5 were measured (README, grounding).
const ATTENTION_SCALE: f64 = 4.0;

/// How far behind the candidates the regressed span starts in the fused score (the tower's
/// standard deviations at weight 1). The span is the model's own reading of where its
/// attention lies, so the model scores it about as high as any span can be scored, while its
/// boundaries are smooth guesses where a proposal's follow a change in the video: fused without
/// a handicap, it answered 28% of the real-like development world's queries but finds only
/// 19.7% of that world's moments at IoU .7 (README, "The regressed span's handicap"). At
/// weight 0.7, 0.25 gained in every development world but the synthetic one (0.3 to 0.9 points
/// lower); 0.1 to 0.6 were measured.
const REGRESSED_HANDICAP: f64 = 0.25;

/// What a gain of one of the tower's standard deviations counts for where the score is fused
/// ([`EdgeSearch::deviation_in_score`]): one unit of that score, the one [`REGRESSED_HANDICAP`]
/// is in, and not the tower's deviation as the fused score holds it (`train.similarity_weight`,
/// 0.8 by default). With the model's part at zero the tower's unit reproduces the training-free
/// grounder, but with it the tower's unit lost 1.2 points of R@1 at IoU .7 on average over
/// nine development worlds, and 1.25 fused units lost 1.3 (README, "Where the clean worlds'
/// gap lies").
const FUSED_SCORE_UNIT: f64 = 1.0;

/// `values` less their mean, over their standard deviation (0 when they are all alike).
fn standardised(values: &[f64]) -> Vec<f64> {
    let spread = Spread::of(values.iter().copied());
    values.iter().map(|&v| spread.margin(v)).collect()
}

/// Normalised segments in seconds of a video `duration` long.
fn in_seconds(segments: Vec<Segment>, duration: f64) -> Vec<Segment> {
    segments
        .into_iter()
        .map(|s| Segment {
            start: s.start * duration,
            end: s.end * duration,
            score: s.score,
        })
        .collect()
}

/// The best `top_k` segments by score, best first, each overlapping none better than it by
/// [`SUPPRESS_IOU`]. With an edge search (and the spread of the tower's scores it weighs by),
/// each answer's edges are moved by the tower ([`TowerView::edges`]), those close to the best
/// are ranked again as moved ([`CONTENDER_DEVIATIONS`]), and the answers are kept apart as
/// moved; where moved answers come together, the next one as found fills the place, and the
/// first answer, where it counts as one with `halfway_to` (another reading of its event), ends
/// halfway between the two, the rest kept apart from it so. Without an edge search nothing is
/// moved, `halfway_to` included.
fn best_apart(
    mut ranked: Vec<Segment>,
    top_k: usize,
    edges: Option<(EdgeSearch, Spread)>,
    halfway_to: Option<[f64; 2]>,
) -> Vec<Segment> {
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    match edges {
        Some((search, spread)) => {
            let best = ranked.first().map_or(0.0, |s| s.score);
            let gap = CONTENDER_DEVIATIONS * search.deviation_in_score;
            let contenders = ranked.iter().take_while(|s| s.score >= best - gap).count();
            let mut scored: Vec<Segment> = ranked[..contenders]
                .iter()
                .map(|s| search.moved_and_scored(*s, &spread))
                .collect();
            scored.sort_by(|a, b| b.score.total_cmp(&a.score));
            // The rest moved only as far down the ranking as the answers reach.
            let moved = ranked[contenders..]
                .iter()
                .map(|s| search.moved(*s, &spread));
            let mut order = scored
                .into_iter()
                .chain(moved)
                .chain(ranked.iter().copied());
            let first = order.next().map(|first| match halfway_to {
                Some(other) if count_as_one(first.span(), other) => Segment {
                    start: (first.start + other[0]) / 2.0,
                    end: (first.end + other[1]) / 2.0,
                    ..first
                },
                _ => first,
            });
            let mut answers = apart(first.into_iter().chain(order), top_k);
            // Those ranked after others (the rest, those filling in as found) score no higher.
            for i in 1..answers.len() {
                answers[i].score = answers[i].score.min(answers[i - 1].score);
            }
            answers
        }
        None => apart(ranked, top_k),
    }
}

/// The first `top_k` of `ranked` (best first) that overlap none kept before them by
/// [`SUPPRESS_IOU`].
fn apart(ranked: impl IntoIterator<Item = Segment>, top_k: usize) -> Vec<Segment> {
    let mut kept: Vec<Segment> = Vec::new();
    for candidate in ranked {
        if kept.len() >= top_k {
            break;
        }
        if !kept
            .iter()
            .any(|k| count_as_one(k.span(), candidate.span()))
        {
            kept.push(candidate);
        }
    }
    kept
}

/// Whether two spans overlap by [`SUPPRESS_IOU`] or more, so count as one answer.
fn count_as_one(a: [f64; 2], b: [f64; 2]) -> bool {
    iou(a, b) >= SUPPRESS_IOU
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::dot;

    /// The tower's scores at `weight`, against a model of its own stream.
    fn tower(similarity: Vec<f64>, weight: f64) -> Option<TowerScores<'static>> {
        Some(TowerScores {
            similarity,
            weight,
            fusion: Fusion::OWN_STREAM,
            edges: None,
        })
    }

    #[test]
    fn spans_rank_by_attention_beyond_an_even_spread_and_overlaps_are_suppressed() {
        // Attention on steps 4..8 of 10.
        let attention = [0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25, 0.0, 0.0];
        let model = || ModelScore::Attention(&attention);
        let candidates = [[0.3, 0.9], [0.0, 0.3], [0.6, 1.0]];
        let spans = |ranked: Vec<Segment>| -> Vec<[f64; 2]> {
            ranked.iter().map(|s| [s.start, s.end]).collect()
        };
        // The regressed span holds all the attention in the least time; [0.3, 0.9] overlaps it
        // (IoU 0.67), [0.6, 1.0] holds half of it and overlaps by 0.33 only.
        assert_eq!(
            spans(rank(&[0.4, 0.8], &candidates, model(), None, 3)),
            [[0.4, 0.8], [0.6, 1.0], [0.0, 0.3]]
        );
        // A regressed span off the attention ranks below the proposals that hold it.
        assert_eq!(
            spans(rank(&[0.0, 0.2], &candidates, model(), None, 2)),
            [[0.3, 0.9], [0.6, 1.0]]
        );
        // Steps 4 and 5 hold 0.2 each, the other eight 0.075 each: below the even 0.1, so the
        // whole video, which holds all of it, ranks below the peak (mass over √length would
        // rank it first: 1.0 against 0.89).
        let mut leaky = [0.075f32; 10];
        leaky[4..6].fill(0.2);
        assert_eq!(
            spans(rank(
                &[0.0, 1.0],
                &[[0.4, 0.6]],
                ModelScore::Attention(&leaky),
                None,
                2
            )),
            [[0.4, 0.6], [0.0, 1.0]]
        );
    }

    #[test]
    fn with_the_scene_taken_out_a_query_finds_what_a_span_adds_to_its_room() {
        // Eight steps of one room (axis 0, stronger than anything else): the first half adds
        // one action (axis 1), the second half another (axis 2), weakly. The room dominates
        // both halves' means, so a query for the second action (axis 2) tells them apart by
        // 0.2 only; with the room taken out, by 0.8.
        let (first, second) = ([2.0f32, 1.0, 0.0], [2.5f32, 0.0, 0.5]);
        let stream = Features {
            frames: 8,
            dim: 3,
            data: [first; 4]
                .iter()
                .chain(&[second; 4])
                .flatten()
                .copied()
                .collect(),
        };
        let query = [0.0, 0.0, 1.0];
        let halves = [[0.0, 0.5], [0.5, 1.0]];
        let plain = TowerView::of(&stream, false, 8.0).similarities(&query, &halves);
        let removed = TowerView::of(&stream, true, 8.0).similarities(&query, &halves);
        assert!((plain[1] - plain[0] - 0.196).abs() < 1e-3, "{plain:?}");
        assert!(
            (removed[1] - removed[0] - 0.796).abs() < 1e-3,
            "{removed:?}"
        );
        // By hand: the steps' mean cosine over all pairs, times the video's mean, from the half.
        let length = |v: &[f32]| dot(v, v).sqrt();
        let cosine = dot(&first, &second) / (length(&first) * length(&second));
        let alike = (2.0 + 2.0 * cosine) / 4.0;
        let mean = [2.25f32, 0.5, 0.25];
        let rest: Vec<f32> = second
            .iter()
            .zip(mean)
            .map(|(v, m)| v - alike * m)
            .collect();
        let expected = f64::from(rest[2] / length(&rest));
        assert!(
            (removed[1] - expected).abs() < 1e-5,
            "{removed:?} against {expected}"
        );
    }

    #[test]
    fn the_text_similarity_reorders_what_the_attention_leaves_close() {
        // Attention split evenly between steps 0..2 and 6..8 of 10.
        let attention = [0.25, 0.25, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.0, 0.0];
        let candidates = [[0.0, 0.2], [0.6, 0.8], [0.3, 0.5]];
        let regressed = [0.3, 0.5];
        let first = |similarity| {
            rank(
                &regressed,
                &candidates,
                ModelScore::Attention(&attention),
                similarity,
                1,
            )[0]
        };
        // The tower sees the query in the second span.
        let text = vec![0.1, 0.9, 0.2, 0.2];
        assert_eq!([first(None).start, first(None).end], [0.0, 0.2]);
        let fused = first(tower(text.clone(), 1.0));
        assert_eq!([fused.start, fused.end], [0.6, 0.8]);
        // A weight of 0 leaves the model's order; scores of the wrong length are ignored.
        let alone = first(tower(text, 0.0));
        assert_eq!([alone.start, alone.end], [0.0, 0.2]);
        let ignored = first(tower(vec![0.0, 1.0], 1.0));
        assert_eq!([ignored.start, ignored.end], [0.0, 0.2]);
        assert_eq!(standardised(&[2.0, 2.0]), [0.0, 0.0]);
        // Attention spread almost evenly: the model's 0.02 lead for the first span is little
        // against the tower's preference, even at half weight (standardised, it outvoted it).
        let flat = [0.11, 0.11, 0.1, 0.1, 0.1, 0.1, 0.09, 0.09, 0.1, 0.1];
        let unsure = rank(
            &regressed,
            &candidates,
            ModelScore::Attention(&flat),
            tower(vec![0.1, 0.9, 0.2, 0.2], 0.5),
            1,
        )[0];
        assert_eq!([unsure.start, unsure.end], [0.6, 0.8]);
    }

    #[test]
    fn the_regressed_span_starts_behind_the_candidates_when_the_tower_weighs_in() {
        // Attention on steps 4..8 of 10: the regressed span [0.4, 0.8] holds all of it (0.6
        // beyond its share), the proposal [0.4, 0.7] three quarters (0.45), so the regressed
        // span leads by 4 × 0.15 = 0.6 in the fused score.
        let attention = [0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.25, 0.0, 0.0];
        let first = |similarity: [f64; 3]| {
            let top = rank(
                &[0.4, 0.8],
                &[[0.4, 0.7], [0.0, 0.2]],
                ModelScore::Attention(&attention),
                tower(similarity.to_vec(), 1.0),
                1,
            )[0];
            [top.start, top.end]
        };
        // Where the tower sees the two alike, the attention's lead stands.
        assert_eq!(first([1.0, 0.0, 1.0]), [0.4, 0.8]);
        // The tower prefers the proposal by 0.59 of its standard deviation: less than the
        // attention's lead, more than the lead less the handicap.
        let z = standardised(&[1.0, 0.0, 0.75]);
        assert!(
            z[0] - z[2] < 0.6 && z[0] - z[2] > 0.6 - REGRESSED_HANDICAP,
            "{z:?}"
        );
        assert_eq!(first([1.0, 0.0, 0.75]), [0.4, 0.7]);
        // The model alone ranks by the attention, no handicap.
        let alone = rank(
            &[0.4, 0.8],
            &[[0.4, 0.7]],
            ModelScore::Attention(&attention),
            None,
            1,
        )[0];
        assert_eq!([alone.start, alone.end], [0.4, 0.8]);
    }

    #[test]
    fn where_the_model_reads_the_towers_stream_it_says_less_about_which_event() {
        // Steps 0..3 hold 0.6 of the attention, steps 5..9 the rest, the last of them most.
        let attention = [0.2, 0.2, 0.2, 0.0, 0.0, 0.08, 0.08, 0.08, 0.16, 0.0];
        // The model prefers the first event (0.3 beyond its share) to the second (-0.06 and 0
        // for its two readings, which overlap by 0.75); the tower sees the query in the second.
        let candidates = [[0.0, 0.3], [0.5, 0.8], [0.5, 0.9]];
        assert_eq!(
            event_scores(&[[0.0, 0.3], [0.5, 0.8], [0.5, 0.9]], &[0.3, -0.06, 0.0]),
            [0.3, -0.03, -0.03]
        );
        let first = |fusion, similarity: [f64; 4]| {
            let tower = TowerScores {
                similarity: similarity.to_vec(),
                weight: 0.5,
                fusion,
                edges: None,
            };
            let top = rank(
                &[0.0, 0.3],
                &candidates,
                ModelScore::Attention(&attention),
                Some(tower),
                1,
            )[0];
            [top.start, top.end]
        };
        let alike = [0.0, 1.0, 1.0, 0.0];
        // All of its score counting, the model's preference for the first event outweighs the
        // tower at 0.5.
        assert_eq!(first(Fusion::OWN_STREAM, alike), [0.0, 0.3]);
        // Reading the tower's stream, the tower's event wins, and of its two readings the
        // model's: the longer (the edges as found: no edge search here).
        let tower_stream = Fusion::TOWER_STREAM;
        assert_eq!(first(tower_stream, alike), [0.5, 0.9]);
        // The tower prefers the shorter reading by a tenth of its standard deviation: less
        // than the model's preference for the longer, more once the tower's lead counts again.
        let shorter = [0.0, 1.0, 0.95, 0.0];
        let (best, lead) = lead_of(&standardised(&shorter)[..3]).unwrap();
        assert!(best == 1 && (lead - 0.1).abs() < 0.01, "{lead}");
        let no_lead = Fusion {
            tower_lead: 0.0,
            ..tower_stream
        };
        assert_eq!(first(no_lead, shorter), [0.5, 0.9]);
        assert_eq!(first(tower_stream, shorter), [0.5, 0.8]);
        assert_eq!(lead_of(&[1.0]), None);
    }

    /// Twenty steps of one room (axis 0) with a faint flicker (axis 3); the steps of each of
    /// `actions` also show the query's action (axis 1) at its strength.
    fn room_with_actions(actions: &[(Range<usize>, f32)]) -> Features {
        let data = (0..20)
            .flat_map(|t| {
                let action = actions
                    .iter()
                    .find(|(steps, _)| steps.contains(&t))
                    .map_or(0.0, |(_, strength)| *strength);
                let flicker = if t % 2 == 0 { 0.1 } else { -0.1 };
                [1.0, action, 0.0, flicker]
            })
            .collect();
        Features {
            frames: 20,
            dim: 4,
            data,
        }
    }

    #[test]
    fn the_towers_running_sums_give_each_spans_mean_less_the_scene() {
        let stream = room_with_actions(&[(5..9, 1.0)]);
        let query = [0.3f32, 0.5, 0.2, 0.4];
        for remove_scene in [false, true] {
            let view = TowerView::of(&stream, remove_scene, 20.0);
            let scene = remove_scene.then(|| shared_scene(&stream));
            for span in [[0.0, 1.0], [0.25, 0.45], [0.33, 0.61], [0.95, 1.0]] {
                let mut mean = crate::caption::mean_over(&stream, span[0], span[1]);
                if let Some(scene) = &scene {
                    mean.iter_mut().zip(scene).for_each(|(m, s)| *m -= s);
                }
                crate::similarity::to_unit_length(&mut mean);
                let expected = f64::from(dot(&mean, &query));
                let got = view.similarities(&query, &[span])[0];
                assert!(
                    (got - expected).abs() < 1e-6,
                    "{span:?}: {got} against {expected}"
                );
            }
        }
        // Over no steps, nothing is seen.
        let view = TowerView::of(&stream, true, 20.0);
        let no_steps = 3..3;
        assert_eq!(view.similarity(&query, &[no_steps]), 0.0);
    }

    #[test]
    fn the_tower_moves_an_answers_edges_onto_where_it_sees_the_query() {
        let view = TowerView::of(&room_with_actions(&[(7..13, 1.0)]), true, 20.0);
        let query = [0.0f32, 1.0, 0.0, 0.0];
        // The candidates' scores so close that any reading behind the best is far behind.
        let sharp = Spread::of([0.0, 1e-4].into_iter());
        let steps = |span: [f64; 2]| [span[0] * 20.0, span[1] * 20.0];
        // Two steps too early and too long, then one step short at either end: both find the
        // action's edges.
        for answer in [[0.25, 0.75], [0.4, 0.6]] {
            let moved = view.edges(&query, answer, &sharp);
            let [first, last] = steps(moved);
            assert!(
                (first - 7.0).abs() < 1e-9 && (last - 13.0).abs() < 1e-9,
                "{moved:?}"
            );
        }
        // Each edge moves at most three seconds, three steps here: from steps 0..4 the action's
        // start is out of reach.
        let [first, last] = steps(view.edges(&query, [0.0, 0.2], &sharp));
        assert!(first <= 3.0 && last <= 7.0, "{first} {last}");
        // Where the candidates' scores are all alike, the best reading alone counts too.
        let flat = Spread::of([0.5, 0.5].into_iter());
        let [first, last] = steps(view.edges(&query, [0.25, 0.75], &flat));
        assert!((first - 7.0).abs() < 1e-9 && (last - 13.0).abs() < 1e-9);
        // Where readings behind the best are near it in the candidates' standard deviations,
        // they vote: the edges stay near the action's, no longer on a step.
        let close = Spread::of([0.0, 0.1].into_iter());
        let [first, last] = steps(view.edges(&query, [0.25, 0.75], &close));
        assert!(
            (6.5..7.5).contains(&first) && (12.5..13.5).contains(&last) && first.fract() != 0.0,
            "{first} {last}"
        );
    }

    #[test]
    fn an_edge_reaches_three_seconds_of_the_video_whatever_its_feature_rate() {
        let stream = room_with_actions(&[(7..13, 1.0)]);
        let query = [0.0f32, 1.0, 0.0, 0.0];
        let sharp = Spread::of([0.0, 1e-4].into_iter());
        // Steps 4..16, three steps too wide at either end.
        let answer = [0.2, 0.8];
        let reach = |duration: f64| TowerView::of(&stream, true, duration).reach;
        // One step a second: three steps, and the action is found.
        assert_eq!(reach(20.0), 3);
        let [first, last] = TowerView::of(&stream, true, 20.0).edges(&query, answer, &sharp);
        assert!((first * 20.0 - 7.0).abs() < 1e-9 && (last * 20.0 - 13.0).abs() < 1e-9);
        // One step every two seconds: two steps (1.5, rounded), and the action is out of reach.
        assert_eq!(reach(40.0), 2);
        let [first, last] = TowerView::of(&stream, true, 40.0).edges(&query, answer, &sharp);
        assert!(first * 20.0 <= 6.0 && last * 20.0 >= 14.0, "{first} {last}");
        // Two steps a second: six; never more than the video, never less than a step.
        assert_eq!(reach(10.0), 6);
        assert_eq!(reach(1.0), 20);
        for no_length in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(reach(no_length), 1);
        }
    }

    /// Runs `check` with an edge search for a query shown on steps 7..13 of a 20-step room,
    /// in scores the tower's similarity plays no part in (none is ranked again as moved), and
    /// a spread sharp enough that the best edges alone count.
    fn on_one_action(check: impl FnOnce(EdgeSearch, Spread)) {
        let view = TowerView::of(&room_with_actions(&[(7..13, 1.0)]), true, 20.0);
        let query = [0.0f32, 1.0, 0.0, 0.0];
        let search = EdgeSearch {
            view: &view,
            text: &query,
            deviation_in_score: 0.0,
        };
        check(search, Spread::of([0.0, 1e-4].into_iter()));
    }

    #[test]
    fn answers_that_the_tower_moves_together_count_as_one_and_the_next_as_found_fills_in() {
        on_one_action(|search, sharp| {
            // Two readings of the action, apart as found (they overlap by 0.17): steps 6..12 and
            // 10..18.
            let ranked = vec![
                Segment::scored([0.3, 0.6], 1.0),
                Segment::scored([0.5, 0.9], 0.9),
            ];
            let spans = |segments: &[Segment]| -> Vec<[f64; 2]> {
                segments.iter().map(|s| [s.start, s.end]).collect()
            };
            assert_eq!(
                spans(&best_apart(ranked.clone(), 2, None, None)),
                [[0.3, 0.6], [0.5, 0.9]]
            );
            // Moved, the first is the action, steps 7..13; the second reaches back to step 7 but
            // its end no further than step 15, and counts as one with the first. The second as
            // found, apart from the moved first, takes its place.
            let moved = best_apart(ranked.clone(), 2, Some((search, sharp)), None);
            assert!(
                (moved[0].start - 0.35).abs() < 1e-9 && (moved[0].end - 0.65).abs() < 1e-9,
                "{moved:?}"
            );
            assert_eq!(moved[0].score, 1.0);
            assert_eq!(spans(&moved[1..]), [[0.5, 0.9]]);
            assert_eq!(moved[1].score, 0.9);
            // A third reading, of the room before the action, is moved and kept before the one
            // filling in as found, which then scores no higher than it.
            let with_room = [ranked, vec![Segment::scored([0.0, 0.15], 0.1)]].concat();
            let answers = best_apart(with_room, 3, Some((search, sharp)), None);
            assert!(answers[1].end <= 0.3, "{answers:?}");
            assert_eq!(spans(&answers[2..]), [[0.5, 0.9]]);
            let scores: Vec<f64> = answers.iter().map(|s| s.score).collect();
            assert_eq!(scores, [1.0, 0.1, 0.1]);
        });
    }

    #[test]
    fn the_first_answer_ends_halfway_to_another_reading_of_its_event_and_no_other() {
        on_one_action(|search, sharp| {
            // The first moves onto the action, steps 7..13; the second reads the room after it.
            let ranked = vec![
                Segment::scored([0.3, 0.6], 1.0),
                Segment::scored([0.7, 1.0], 0.5),
            ];
            let first =
                |halfway_to| best_apart(ranked.clone(), 2, Some((search, sharp)), halfway_to);
            assert_eq!(first(None)[0].span(), [0.35, 0.65]);
            // Another reading that starts two steps earlier counts as one with it (IoU 0.75).
            let met = first(Some([0.25, 0.65]));
            assert!(
                (met[0].start - 0.3).abs() < 1e-9 && (met[0].end - 0.65).abs() < 1e-9,
                "{met:?}"
            );
            assert_eq!(met[0].score, 1.0);
            // A reading of another event leaves it where the tower put it.
            assert_eq!(first(Some([0.6, 0.95]))[0].span(), [0.35, 0.65]);
            for answers in [met, first(Some([0.6, 0.95]))] {
                assert!(
                    !count_as_one(answers[0].span(), answers[1].span()),
                    "{answers:?}"
                );
            }
        });
    }

    /// The tower's view of a room with a strong action on steps 2..5 and a weaker one on steps
    /// 11..17, the scene taken out.
    fn strong_and_weak_actions() -> TowerView {
        TowerView::of(
            &room_with_actions(&[(2..5, 1.5), (11..17, 1.0)]),
            true,
            20.0,
        )
    }

    #[test]
    fn answers_close_to_the_best_are_ranked_again_as_moved_and_the_rest_as_found() {
        let view = strong_and_weak_actions();
        let query = [0.0f32, 1.0, 0.0, 0.0];
        // As found, the strong action is under half of its span (steps 0..8) and the weak one
        // most of its own (steps 10..19); the third span is the room alone (steps 7..10).
        let found = [[0.0, 0.4], [0.5, 0.95], [0.35, 0.5]];
        let similarity = view.similarities(&query, &found);
        let spread = Spread::of(similarity.iter().copied());
        assert!(
            similarity[1] > similarity[0] && similarity[0] > similarity[1] - spread.deviation()
        );
        assert!(
            similarity[2] < similarity[1] - spread.deviation(),
            "{similarity:?}"
        );
        let ranked: Vec<Segment> = found
            .iter()
            .zip(&similarity)
            .map(|(span, &score)| Segment::scored(*span, score))
            .collect();
        // The training-free grounder's way: the tower's similarity is the score.
        let search = EdgeSearch {
            view: &view,
            text: &query,
            deviation_in_score: spread.deviation(),
        };
        let answers = best_apart(ranked.clone(), 3, Some((search, spread)), None);
        // Moved, each close answer spans its action alone, and the strong one leads.
        assert!(
            answers[0].end <= 0.3 && answers[1].start >= 0.5,
            "{answers:?} {similarity:?}"
        );
        let similarity_of = |s: &Segment| view.similarities(&query, &[s.span()])[0];
        assert!((answers[0].score - similarity_of(&answers[0])).abs() < 1e-12);
        assert!((answers[1].score - similarity_of(&answers[1])).abs() < 1e-12);
        assert!(answers[2].score <= similarity[2]);
        // Where no score is close to the best, the answers keep their order as found.
        let far = EdgeSearch {
            deviation_in_score: 0.0,
            ..search
        };
        let answers = best_apart(ranked, 3, Some((far, spread)), None);
        assert!(
            answers[0].start >= 0.5 && answers[1].end <= 0.3,
            "{answers:?}"
        );
        assert_eq!(answers[0].score, similarity[1]);
    }

    #[test]
    fn the_towers_favourite_as_found_gives_way_to_a_close_answer_it_sees_better_once_moved() {
        let view = strong_and_weak_actions();
        let query = [0.0f32, 1.0, 0.0, 0.0];
        // As found, the strong action is under half of the first span (steps 0..8) and the
        // weak one more than half of the second (steps 10..20), the tower's favourite by an
        // eighth of its standard deviation; the regressed span is the room alone.
        let candidates = [[0.0, 0.4], [0.5, 1.0]];
        let regressed = [0.35, 0.5];
        // The model prefers no span.
        let attention = [0.05f32; 20];
        let first = |fusion| {
            let spans = [candidates[0], candidates[1], regressed];
            let tower = TowerScores {
                similarity: view.similarities(&query, &spans),
                weight: 0.8,
                fusion,
                edges: Some(EdgeSearch {
                    view: &view,
                    text: &query,
                    deviation_in_score: FUSED_SCORE_UNIT,
                }),
            };
            let answers = rank(
                &regressed,
                &candidates,
                ModelScore::Attention(&attention),
                Some(tower),
                1,
            );
            answers[0]
        };
        // Moved, the first spans the strong action alone, where the tower sees the query more
        // than in the favourite moved: enough to overcome half the favourite's lead.
        let top = first(Fusion::TOWER_STREAM);
        assert!(top.end <= 0.3, "{top:?}");
        // With the favourite's bonus at 1.5 times its lead, it kept its place as found.
        let top = first(Fusion {
            tower_lead: 1.5,
            ..Fusion::TOWER_STREAM
        });
        assert!(top.start >= 0.5, "{top:?}");
    }

    #[test]
    fn the_tower_reads_the_models_stream_when_the_file_has_one_or_names_it() {
        let stream = |name: &str| crate::ingest::Stream {
            name: name.to_string(),
            features: Features {
                frames: 2,
                dim: 2,
                data: vec![1.0, 0.0, 0.0, 1.0],
            },
        };
        let video = |streams: Vec<crate::ingest::Stream>, primary| Video {
            id: "v".to_string(),
            source: "v.npz".into(),
            duration: 2.0,
            streams,
            primary,
        };
        assert!(names_model_stream(&video(vec![stream("v")], 0), ""));
        // Motion and appearance: by default the tower reads the appearance ("clip").
        let both = video(vec![stream("clip"), stream("i3d")], 1);
        assert!(!names_model_stream(&both, ""));
        assert!(names_model_stream(&both, "i3d"));
        assert!(!names_model_stream(&both, "slowfast"));
    }

    #[test]
    fn a_temporal_map_scores_each_span_by_the_cell_overlapping_it_most() {
        // Four clips; the map is sure of the span of clips 1..=2 and of nothing else.
        let cells = crate::train::model::map_spans(4);
        assert_eq!(cells.len(), 10);
        let probabilities: Vec<f32> = cells
            .iter()
            .map(|c| if *c == [0.25, 0.75] { 0.9 } else { 0.1 })
            .collect();
        let model = ModelScore::Map {
            cells: &cells,
            probabilities: &probabilities,
        };
        assert_eq!(model.of(&[0.26, 0.74]), f64::from(0.9f32));
        assert_eq!(model.of(&[0.0, 0.3]), f64::from(0.1f32));
        let ranked = rank(&[0.0, 0.25], &[[0.5, 1.0], [0.3, 0.7]], model, None, 1);
        assert_eq!([ranked[0].start, ranked[0].end], [0.3, 0.7]);
    }
}
