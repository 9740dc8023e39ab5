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
//! a real zero-shot grounder wherever such a tower exists.

use crate::caption::text::TextEncoder;
use crate::caption::{mean_over, shared_scene, visual_stream, CaptionError, TextTower};
use crate::config::{Config, QueryWords, TrainConfig};
use crate::ingest::{Features, Video};
use crate::processor::{analyse, StageTimes};
use crate::similarity::{dot, to_unit_length, Spread};
use crate::span::iou;
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
        // The tower's scores of every query on the candidates and on every regressed span, in
        // one pass: each span's mean and each query's embedding computed once.
        let similarity = match self.tower.as_ref().filter(|_| self.weighs_similarity()) {
            Some(grounder) => {
                let spans: Vec<[f64; 2]> = candidates
                    .iter()
                    .copied()
                    .chain(predictions.iter().map(|r| [r.span.0, r.span.1]))
                    .collect();
                let fusion = if names_model_stream(video, &grounder.stream) {
                    Fusion::TOWER_STREAM
                } else {
                    Fusion::OWN_STREAM
                };
                Some((grounder.scores_of(video, &embedded, &spans)?, fusion))
            }
            None => None,
        };
        Ok(queries
            .iter()
            .zip(predictions)
            .enumerate()
            .map(|(i, (query, reading))| {
                // This query's scores on the candidates, then on its own regressed span.
                let own = similarity.as_ref().map(|(scores, fusion)| {
                    let row = &scores[i];
                    let mut own = row[..candidates.len()].to_vec();
                    own.push(row[candidates.len() + i]);
                    TowerScores {
                        similarity: own,
                        weight: self.similarity_weight,
                        fusion: *fusion,
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

    /// Top-`top_k` of `candidates` (normalised) for each query, by cosine similarity, any
    /// overlapping a better one by [`SUPPRESS_IOU`] dropped.
    pub fn ground(
        &self,
        video: &Video,
        queries: &[&str],
        candidates: &[[f64; 2]],
        top_k: usize,
    ) -> Result<Vec<Answer>, CaptionError> {
        let scores = self.scores(video, queries, candidates)?;
        Ok(queries
            .iter()
            .zip(scores)
            .map(|(query, scores)| {
                let scored = candidates.iter().zip(scores).map(|(c, score)| Segment {
                    start: c[0],
                    end: c[1],
                    score,
                });
                Answer {
                    query: query.to_string(),
                    segments: in_seconds(best_apart(scored.collect(), top_k, None), video.duration),
                }
            })
            .collect())
    }

    /// For each query, the cosine of its text embedding with each candidate's mean visual
    /// embedding, less the video's shared scene with `caption.remove_scene`.
    pub fn scores(
        &self,
        video: &Video,
        queries: &[&str],
        candidates: &[[f64; 2]],
    ) -> Result<Vec<Vec<f64>>, CaptionError> {
        self.scores_of(video, &self.tower.embed(queries)?, candidates)
    }

    /// [`SimilarityGrounder::scores`] of queries already embedded by the tower (`texts`).
    fn scores_of(
        &self,
        video: &Video,
        texts: &[Vec<f32>],
        candidates: &[[f64; 2]],
    ) -> Result<Vec<Vec<f64>>, CaptionError> {
        let stream = visual_stream(video, &self.stream)?;
        if let Some(text) = texts.first().filter(|t| t.len() != stream.dim) {
            return Err(CaptionError::Dimensions {
                visual: stream.dim,
                text: text.len(),
            });
        }
        Ok(span_similarities(
            stream,
            texts,
            candidates,
            self.remove_scene,
        ))
    }
}

/// The cosine of each text embedding with each span's mean visual embedding in `stream`, the
/// video's [`shared_scene`] taken from the mean first where `remove_scene`.
fn span_similarities(
    stream: &Features,
    texts: &[Vec<f32>],
    candidates: &[[f64; 2]],
    remove_scene: bool,
) -> Vec<Vec<f64>> {
    let scene = remove_scene.then(|| shared_scene(stream));
    let visual: Vec<Vec<f32>> = candidates
        .iter()
        .map(|c| {
            let mut mean = mean_over(stream, c[0], c[1]);
            if let Some(scene) = &scene {
                mean.iter_mut().zip(scene).for_each(|(m, s)| *m -= s);
            }
            to_unit_length(&mut mean);
            mean
        })
        .collect();
    texts
        .iter()
        .map(|text| visual.iter().map(|v| f64::from(dot(v, text))).collect())
        .collect()
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
struct TowerScores {
    /// The tower's similarity to the query of each candidate, then of the regressed span.
    similarity: Vec<f64>,
    /// `train.similarity_weight`.
    weight: f64,
    /// How the model's score is read against the tower's.
    fusion: Fusion,
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
    /// With a temperature (in the fused score's units), each answer's boundaries are the mean
    /// of its own and those of the spans it suppressed, each weighted by `exp(-(how far its
    /// score is behind the answer's) / temperature)`: see [`best_apart`].
    boundary_vote: Option<f64>,
}

impl Fusion {
    /// A model reading a stream the tower does not score (motion beside the tower's
    /// appearance) knows events the tower cannot find: all of its score counts.
    const OWN_STREAM: Fusion = Fusion {
        event: 1.0,
        boundary: 1.0,
        tower_lead: 0.0,
        boundary_vote: None,
    };

    /// A model reading the very stream the tower scores (one stream in the file, or
    /// `caption.visual_stream` naming the model's) learnt all it knows of which event a
    /// sentence names from the tower's captions of that stream, so there it repeats the tower
    /// with mistakes of its own, and what it adds is mostly where an event begins and ends,
    /// learnt from the proposals. Its score counts half, its event's part half of that, and the
    /// tower's favourite gains 1.5 times its lead over the tower's second, so the model
    /// overrules a clear favourite only by more than that. Chosen on the rank scores of twelve
    /// development worlds of seven settings and checked on four fresh ones (README, "Which
    /// event, and where it ends").
    ///
    /// Its boundaries are votes at a quarter of the tower's standard deviation: the spans
    /// around an answer that score nearly as high are readings of the same event the scores
    /// cannot tell apart, and their weighted mean lands nearer the event's edges than any one
    /// of them. It raised every figure of all twenty development worlds of one stream; where
    /// the model reads another stream (the synthetic world) its boundaries are its own and the
    /// same vote lowered them (2.9 points at IoU .7; README, "Boundaries by vote").
    const TOWER_STREAM: Fusion = Fusion {
        event: 0.25,
        boundary: 0.5,
        tower_lead: 1.5,
        boundary_vote: Some(0.25),
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
/// starts [`REGRESSED_HANDICAP`] behind, and where the fusion says so the answers' boundaries
/// are votes ([`best_apart`]).
fn rank(
    regressed: &[f64; 2],
    candidates: &[[f64; 2]],
    model: ModelScore,
    tower: Option<TowerScores>,
    top_k: usize,
) -> Vec<Segment> {
    let spans: Vec<[f64; 2]> = candidates.iter().chain([regressed]).copied().collect();
    let mut scores: Vec<f64> = spans.iter().map(|c| model.of(c)).collect();
    let mut vote = None;
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
        vote = fusion.boundary_vote;
    }
    let ranked = spans
        .iter()
        .zip(scores)
        .map(|(c, score)| Segment {
            start: c[0],
            end: c[1],
            score,
        })
        .collect();
    best_apart(ranked, top_k, vote)
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
                let n = attention.len().max(1);
                let first = ((span[0] * n as f64).floor() as usize).min(n - 1);
                let last = ((span[1] * n as f64).ceil() as usize).clamp(first + 1, n);
                let mass: f32 = attention.get(first..last).map_or(0.0, |a| a.iter().sum());
                f64::from(mass) - (last - first) as f64 / n as f64
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

/// The best `top_k` segments by score, each overlapping none better than it by
/// [`SUPPRESS_IOU`]. With a `vote` temperature, their boundaries are [`voted`] first, and the
/// answers are kept apart as voted.
fn best_apart(mut ranked: Vec<Segment>, top_k: usize, vote: Option<f64>) -> Vec<Segment> {
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    match vote {
        Some(temperature) => apart(voted(ranked, temperature), top_k),
        None => apart(ranked, top_k),
    }
}

/// The first `top_k` of `ranked` (best first) that overlap none kept before them by
/// [`SUPPRESS_IOU`].
fn apart(ranked: Vec<Segment>, top_k: usize) -> Vec<Segment> {
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

/// Every segment of `ranked` (best first) that overlaps none better than it by
/// [`SUPPRESS_IOU`], its boundaries the weighted mean of its own and those of the spans it
/// suppressed (those overlapping it and no better answer), each weighted by
/// `exp((score - its score) / temperature)`; its score stays its own. Moved boundaries can bring
/// two answers within [`SUPPRESS_IOU`] of each other, which is why [`apart`] comes after.
fn voted(ranked: Vec<Segment>, temperature: f64) -> Vec<Segment> {
    // Each answer with its ballot: the total weight and the weighted start and end.
    let mut answers: Vec<(Segment, [f64; 3])> = Vec::new();
    for candidate in ranked {
        match answers
            .iter_mut()
            .find(|(answer, _)| count_as_one(answer.span(), candidate.span()))
        {
            Some((answer, ballot)) => {
                let weight = ((candidate.score - answer.score) / temperature).exp();
                // A score that is no number casts no vote rather than spoil the answer's.
                if weight.is_finite() {
                    ballot[0] += weight;
                    ballot[1] += weight * candidate.start;
                    ballot[2] += weight * candidate.end;
                }
            }
            None => answers.push((candidate, [1.0, candidate.start, candidate.end])),
        }
    }
    answers
        .into_iter()
        .map(|(answer, [weight, start, end])| Segment {
            start: start / weight,
            end: end / weight,
            score: answer.score,
        })
        .collect()
}

/// Whether two spans overlap by [`SUPPRESS_IOU`] or more, so count as one answer.
fn count_as_one(a: [f64; 2], b: [f64; 2]) -> bool {
    iou(a, b) >= SUPPRESS_IOU
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tower's scores at `weight`, against a model of its own stream.
    fn tower(similarity: Vec<f64>, weight: f64) -> Option<TowerScores> {
        Some(TowerScores {
            similarity,
            weight,
            fusion: Fusion::OWN_STREAM,
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
        let query = [vec![0.0, 0.0, 1.0]];
        let halves = [[0.0, 0.5], [0.5, 1.0]];
        let plain = span_similarities(&stream, &query, &halves, false);
        let removed = span_similarities(&stream, &query, &halves, true);
        assert!(
            (plain[0][1] - plain[0][0] - 0.196).abs() < 1e-3,
            "{plain:?}"
        );
        assert!(
            (removed[0][1] - removed[0][0] - 0.796).abs() < 1e-3,
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
            (removed[0][1] - expected).abs() < 1e-5,
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
        // model's: the longer (the boundaries as chosen, before the vote of the test below).
        let tower_stream = Fusion {
            boundary_vote: None,
            ..Fusion::TOWER_STREAM
        };
        assert_eq!(first(tower_stream, alike), [0.5, 0.9]);
        // The tower prefers the shorter reading by 0.21 of its standard deviation: less than
        // the model's preference for the longer, more once the tower's lead counts again.
        let shorter = [0.0, 1.0, 0.9, 0.0];
        let (best, lead) = lead_of(&standardised(&shorter)[..3]).unwrap();
        assert!(best == 1 && (lead - 0.21).abs() < 0.01, "{lead}");
        let no_lead = Fusion {
            tower_lead: 0.0,
            ..tower_stream
        };
        assert_eq!(first(no_lead, shorter), [0.5, 0.9]);
        assert_eq!(first(tower_stream, shorter), [0.5, 0.8]);
        assert_eq!(lead_of(&[1.0]), None);
        // With the vote, the answer's end lies between its two readings', nearer the winner's.
        let [start, end] = first(Fusion::TOWER_STREAM, shorter);
        assert!(start == 0.5 && end > 0.8 && end < 0.85, "{end}");
    }

    #[test]
    fn voted_boundaries_are_the_answers_and_its_suppressed_neighbours_weighted_by_score() {
        let segment = |start, end, score| Segment { start, end, score };
        let temperature = 0.25;
        // [0.3, 0.6] overlaps the best by 0.75 and scores ln 2 temperatures behind it: half a
        // vote. [0.7, 1.0] overlaps the second answer by 0.67 and is ln 3 behind it: a third.
        let ranked = vec![
            segment(0.3, 0.6, 1.0 - temperature * 2f64.ln()),
            segment(0.8, 1.0, 0.9),
            segment(0.2, 0.6, 1.0),
            segment(0.7, 1.0, 0.9 - temperature * 3f64.ln()),
        ];
        let spans = |segments: Vec<Segment>| -> Vec<[f64; 2]> {
            segments.iter().map(|s| [s.start, s.end]).collect()
        };
        assert_eq!(
            spans(best_apart(ranked.clone(), 2, None)),
            [[0.2, 0.6], [0.8, 1.0]]
        );
        let voted = best_apart(ranked.clone(), 2, Some(temperature));
        let expected = [
            [(0.2 + 0.5 * 0.3) / 1.5, 0.6],
            [(0.8 + 0.7 / 3.0) / (4.0 / 3.0), 1.0],
        ];
        for (got, want) in spans(voted.clone()).iter().zip(expected) {
            assert!(
                (got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12,
                "{got:?} against {want:?}"
            );
        }
        // Scores stay the answers' own.
        assert_eq!(voted[0].score, 1.0);
        assert_eq!(voted[1].score, 0.9);
        // One answer still counts the votes of the spans it suppressed, and no others.
        let one = spans(best_apart(ranked, 1, Some(temperature)));
        assert_eq!(one.len(), 1);
        assert!((one[0][0] - expected[0][0]).abs() < 1e-12);
    }

    #[test]
    fn answers_that_their_votes_bring_together_count_as_one() {
        let segment = |start, end, score| Segment { start, end, score };
        // Two answers overlapping by 0.4, each with a neighbour as good as itself that reaches
        // towards the other; a third answer apart from both.
        let ranked = vec![
            segment(0.0, 0.55, 1.0),
            segment(0.15, 0.6, 1.0 - 1e-9),
            segment(0.25, 0.75, 0.9),
            segment(0.2, 0.75, 0.9 - 1e-9),
            segment(0.8, 1.0, 0.5),
        ];
        let spans = |segments: Vec<Segment>| -> Vec<[f64; 2]> {
            segments.iter().map(|s| [s.start, s.end]).collect()
        };
        assert_eq!(
            spans(best_apart(ranked.clone(), 2, None)),
            [[0.0, 0.55], [0.25, 0.75]]
        );
        // Voted, the first two come to [0.075, 0.575] and [0.225, 0.75], which overlap by 0.52:
        // the second gives way to the third.
        let voted = spans(best_apart(ranked, 2, Some(0.25)));
        assert_eq!(voted.len(), 2);
        assert!(
            (voted[0][0] - 0.075).abs() < 1e-6 && (voted[0][1] - 0.575).abs() < 1e-6,
            "{voted:?}"
        );
        assert_eq!(voted[1], [0.8, 1.0]);
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
