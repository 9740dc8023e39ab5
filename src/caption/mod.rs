//! Caption: every proposal gets a pseudo-query, the second half of the PSVL recipe. The
//! [`Captioner`] scores a vocabulary of verbs and nouns ([`vocab`]) against the proposal's mean
//! visual embedding with a CLIP-style [`TextTower`] (an exported CLIP text tower, or one
//! fitted to the visual space by anchor words, [`anchored`]), or, language-free, keeps that
//! embedding as the query. Text
//! encoders run through ONNX Runtime, a shared library loaded when first needed ([`runtime`]);
//! [`text`] also gives all-MiniLM-L6-v2's token and sentence embeddings, which the grounding
//! model reads queries and pseudo-queries with.

pub mod anchored;
pub mod runtime;
pub mod text;
pub mod vocab;

use crate::config::{CaptionMode, Config, PairSelection};
use crate::failure::Reason;
use crate::ingest::{Features, Video};
use crate::similarity::dot;
use crate::span::steps_of;
use anchored::AnchoredTower;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use text::{unit, TextEncoder};
use thiserror::Error;
use vocab::{ScoredVocabulary, Vocabulary, WordChoice};

/// A proposal's pseudo-query, as its result file and the datasets carry it. Empty fields are
/// left out of the JSON, so uncaptioned results read and write as before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Caption {
    /// The readable query (the vocabulary's template over the chosen words).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// The chosen words: the best verbs, then the best nouns (PSVL's order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// Each chosen word's cosine similarity to the visual embedding.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_scores: Vec<f32>,
    /// How far each chosen word stands above the rest of its word class on this span, in
    /// standard deviations: the pair's confidence, comparable across spans and videos.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_margins: Vec<f32>,
    /// Language-free mode: the unit-length visual embedding that stands for the query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_embedding: Vec<f32>,
    /// Another proposal of the video shows the same nouns better, so this one is no training
    /// pair (`caption.pairs = "best_per_noun"`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub superseded: bool,
}

fn is_false(flag: &bool) -> bool {
    !flag
}

/// The CLIP-style text tower: text into the visual stream's embedding space.
pub enum TextTower {
    /// An exported CLIP text tower (`caption.clip_text_model`).
    Clip(TextEncoder),
    /// The query encoder fitted to anchor words (`caption.tower_anchors`).
    Anchored(AnchoredTower),
}

impl TextTower {
    /// `caption.clip_text_model`, else `caption.tower_anchors`; an error naming both when
    /// neither is set.
    pub fn open(config: &Config) -> Result<TextTower, CaptionError> {
        let caption = &config.caption;
        if !caption.clip_text_model.as_os_str().is_empty() {
            return Ok(TextTower::Clip(TextEncoder::open(
                &caption.clip_text_model,
                &caption.clip_tokenizer,
                caption,
            )?));
        }
        if !caption.tower_anchors.as_os_str().is_empty() {
            return Ok(TextTower::Anchored(AnchoredTower::load(caption)?));
        }
        Err(CaptionError::NoTower)
    }

    /// Unit-length embeddings of `texts`.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CaptionError> {
        match self {
            TextTower::Clip(encoder) => Ok(encoder
                .encode(texts)?
                .into_iter()
                .map(|e| e.pooled)
                .collect()),
            TextTower::Anchored(tower) => tower.embed(texts),
        }
    }
}

/// Names the text tower's weights for caches of its embeddings and model cards, without
/// loading it.
pub fn tower_key(config: &Config) -> Result<String, CaptionError> {
    let caption = &config.caption;
    let anchored = caption.clip_text_model.as_os_str().is_empty();
    let (model, tokenizer) = if anchored {
        (&caption.text_model, &caption.text_tokenizer)
    } else {
        (&caption.clip_text_model, &caption.clip_tokenizer)
    };
    if tokenizer.as_os_str().is_empty() {
        return Err(CaptionError::NotSet {
            key: if anchored {
                "caption.text_tokenizer"
            } else {
                "caption.clip_tokenizer"
            },
        });
    }
    if !tokenizer.is_file() {
        return Err(CaptionError::Tokenizer {
            path: tokenizer.clone(),
            message: "no such file".into(),
        });
    }
    let key = text::model_key(model)?;
    if !anchored {
        return Ok(key);
    }
    if caption.tower_anchors.as_os_str().is_empty() {
        return Err(CaptionError::NoTower);
    }
    let anchors = [anchored::WORDS_FILE, anchored::PROTOTYPES_FILE]
        .iter()
        .map(|name| text::model_key(&caption.tower_anchors.join(name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("anchored:{}:{key}", anchors.join(":")))
}

/// `caption.vocabulary`: the words pseudo-queries are made of.
pub fn configured_vocabulary(config: &Config) -> Result<Vocabulary, CaptionError> {
    let caption = &config.caption;
    if caption.vocabulary.as_os_str().is_empty() {
        return Err(CaptionError::NoVocabulary);
    }
    Vocabulary::load(&caption.vocabulary)
}

/// Turns proposals into pseudo-queries; loaded once at start-up, shared by every worker.
pub struct Captioner {
    mode: CaptionMode,
    /// `caption.mode = "auto"`: a file whose visual stream the tower does not fit gets
    /// proposals without pseudo-queries, said once, instead of an error.
    auto: bool,
    told_unfit: AtomicBool,
    stream: String,
    words: WordChoice,
    pairs: PairSelection,
    vocabulary: Option<ScoredVocabulary>,
}

impl Captioner {
    /// Everything captioning needs, checked now rather than at the first file: the library,
    /// the text tower and its tokenizer, the vocabulary (embedded once, then read from
    /// `caption.cache_dir`).
    pub fn load(config: &Config) -> Result<Captioner, CaptionError> {
        let caption = &config.caption;
        let mode = caption.effective_mode();
        if caption.mode == CaptionMode::Auto && mode == CaptionMode::Off {
            tracing::info!(
                "captions off (caption.mode = \"auto\" and no text tower): proposals are written \
                 without pseudo-queries; to get them, set caption.clip_text_model (an exported CLIP \
                 text tower, with caption.clip_tokenizer) or caption.tower_anchors, and \
                 caption.vocabulary"
            );
        }
        let vocabulary = match mode {
            CaptionMode::Vocabulary => {
                let key = tower_key(config)?;
                let vocabulary = configured_vocabulary(config)?;
                let scored =
                    ScoredVocabulary::build(vocabulary, &key, &caption.cache_dir, |words| {
                        TextTower::open(config)?.embed(words)
                    })?;
                tracing::info!(
                    words = scored.len(),
                    dim = scored.dim(),
                    tower = if caption.clip_text_model.as_os_str().is_empty() {
                        "anchored"
                    } else {
                        "clip"
                    },
                    "vocabulary ready"
                );
                Some(scored)
            }
            CaptionMode::Auto | CaptionMode::LanguageFree | CaptionMode::Off => None,
        };
        Ok(Captioner {
            mode,
            auto: caption.mode == CaptionMode::Auto,
            told_unfit: AtomicBool::new(false),
            stream: caption.visual_stream.clone(),
            words: WordChoice {
                verbs: caption.verbs,
                nouns: caption.nouns,
                explain_nouns: caption.explain_nouns,
                verb_contrast: caption.verb_contrast,
                noun_lift: caption.noun_lift,
            },
            pairs: caption.pairs,
            vocabulary,
        })
    }

    /// A captioner that leaves queries empty, whatever the configuration says.
    pub fn disabled() -> Captioner {
        Captioner {
            mode: CaptionMode::Off,
            auto: false,
            told_unfit: AtomicBool::new(false),
            stream: String::new(),
            words: WordChoice {
                verbs: 0,
                nouns: 0,
                explain_nouns: 0,
                verb_contrast: false,
                noun_lift: 0.0,
            },
            pairs: PairSelection::All,
            vocabulary: None,
        }
    }

    /// What it makes, in a few words, for start-up logs and `check`.
    pub fn summary(&self) -> String {
        let auto = if self.auto {
            " (caption.mode = \"auto\")"
        } else {
            ""
        };
        match (&self.vocabulary, self.mode) {
            (Some(vocabulary), _) => format!(
                "words of a {}-word vocabulary through a {}-d text tower{auto}",
                vocabulary.len(),
                vocabulary.dim()
            ),
            (None, CaptionMode::LanguageFree) => {
                "language-free: the span's visual embedding as its query feature".into()
            }
            (None, _) if self.auto => {
                "off: no text tower and vocabulary set (caption.mode = \"auto\"); \
                 set caption.clip_text_model or caption.tower_anchors, and caption.vocabulary"
                    .into()
            }
            (None, _) => "off (caption.mode = \"off\")".into(),
        }
    }

    /// Whether it leaves queries empty (`caption.mode = "off"`).
    pub fn is_off(&self) -> bool {
        self.mode == CaptionMode::Off
    }

    /// The stream the visual embedding comes from, checked against the text tower: what a
    /// batch checks on its first video before it starts. `None` in `auto` mode when the tower
    /// does not fit it: that video gets no pseudo-queries.
    pub fn visual_features<'v>(
        &self,
        video: &'v Video,
    ) -> Result<Option<&'v Features>, CaptionError> {
        let features = visual_stream(video, &self.stream)?;
        match &self.vocabulary {
            Some(vocabulary) if vocabulary.dim() != features.dim => {
                let unfit = CaptionError::Dimensions {
                    visual: features.dim,
                    text: vocabulary.dim(),
                };
                if !self.auto {
                    return Err(unfit);
                }
                if !self.told_unfit.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        video = %video.id,
                        "caption.mode = \"auto\": {unfit}; such videos get proposals without \
                         pseudo-queries (said once)"
                    );
                }
                Ok(None)
            }
            _ => Ok(Some(features)),
        }
    }

    /// One pseudo-query per span (seconds) of `video`, from the mean of the visual stream's
    /// features over the span; with `caption.pairs = "best_per_noun"`, all but the best span
    /// of each set of nouns are marked superseded.
    pub fn caption(
        &self,
        video: &Video,
        spans: &[(f64, f64)],
    ) -> Result<Vec<Caption>, CaptionError> {
        let features = match self.is_off() {
            true => None,
            false => self.visual_features(video)?,
        };
        let Some(features) = features else {
            return Ok(vec![Caption::default(); spans.len()]);
        };
        let video_mean = (self.words.verb_contrast || self.words.noun_lift > 0.0)
            .then(|| mean_over(features, 0.0, 1.0));
        let mut captions = spans
            .iter()
            .map(|&(start, end)| {
                let visual = mean_over(features, start / video.duration, end / video.duration);
                match &self.vocabulary {
                    Some(vocabulary) => {
                        let contrast = video_mean.as_ref().map(|all| {
                            visual
                                .iter()
                                .zip(all)
                                .map(|(v, a)| v - a)
                                .collect::<Vec<_>>()
                        });
                        let query = vocabulary.caption(&visual, contrast.as_deref(), self.words)?;
                        Ok(Caption {
                            query: query.sentence,
                            tokens: query.tokens,
                            token_scores: query.scores,
                            token_margins: query.margins,
                            ..Caption::default()
                        })
                    }
                    None => Ok(Caption {
                        query_embedding: unit(visual),
                        ..Caption::default()
                    }),
                }
            })
            .collect::<Result<Vec<_>, CaptionError>>()?;
        if let (PairSelection::BestPerNoun, Some(vocabulary)) = (self.pairs, &self.vocabulary) {
            supersede_all_but_best_per_noun(
                &mut captions,
                self.words.verbs.min(vocabulary.verb_count()),
            );
        }
        Ok(captions)
    }
}

/// Keeps, of the captions that name the same nouns (the tokens after the first `verbs`), only
/// the one whose nouns score highest: the proposals of a video overlap and mostly show its
/// dominant object, so one query would otherwise be taught many contradictory spans. The
/// cosine decides, not the margin: choosing by margin picked as right words (development
/// worlds 28.4% against 27.0% of nouns) but cost the synthetic world's model 3.6 points of
/// R@1 at IoU .5 (README, the development world).
fn supersede_all_but_best_per_noun(captions: &mut [Caption], verbs: usize) {
    let noun_score = |c: &Caption| c.token_scores.iter().skip(verbs).sum::<f32>();
    let mut best: HashMap<&[String], usize> = HashMap::new();
    for (i, caption) in captions.iter().enumerate() {
        let nouns = caption.tokens.get(verbs..).unwrap_or_default();
        best.entry(nouns)
            .and_modify(|b| {
                if noun_score(caption) > noun_score(&captions[*b]) {
                    *b = i;
                }
            })
            .or_insert(i);
    }
    let keep: HashSet<usize> = best.into_values().collect();
    for (i, caption) in captions.iter_mut().enumerate() {
        caption.superseded = !keep.contains(&i);
    }
}

/// The stream a CLIP-style tower reads when `caption.visual_stream` is "": one a CLIP image
/// tower made, when the file has one.
pub const APPEARANCE_STREAM: &str = "clip";

/// The stream named `name`; "" = the file's "clip" stream, else the one proposals are found on.
pub fn visual_stream<'v>(video: &'v Video, name: &str) -> Result<&'v Features, CaptionError> {
    if name.is_empty() {
        let appearance = video.streams.iter().find(|s| s.name == APPEARANCE_STREAM);
        return Ok(appearance.map_or_else(|| video.features(), |s| &s.features));
    }
    video
        .streams
        .iter()
        .find(|s| s.name == name)
        .map(|s| &s.features)
        .ok_or_else(|| CaptionError::Stream {
            wanted: name.to_string(),
            found: video.streams.iter().map(|s| s.name.clone()).collect(),
        })
}

/// The mean feature over the normalised time span `[start, end)`, at least one frame.
pub fn mean_over(features: &Features, start: f64, end: f64) -> Vec<f32> {
    let steps = steps_of([start, end], features.frames);
    let count = steps.len() as f32;
    let mut mean = vec![0f32; features.dim];
    for t in steps {
        for (m, v) in mean.iter_mut().zip(features.row(t)) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= count);
    mean
}

/// What every step of a video shows alike (its scene, the room of a home video): the video's
/// mean feature weighted by how alike its steps are, the squared length of the mean of its
/// unit-length steps. That weight is the mean cosine over all pairs of steps (each with itself
/// too): near 1 where a scene dominates every step (real CLIP video: about 0.9), near 0 where
/// the steps share nothing. Taking all of the mean from a span takes the video's other moments
/// with it, which noise then stands in for; the weight takes less where the steps are noisier
/// (README, "The scene taken out").
pub fn shared_scene(features: &Features) -> Vec<f32> {
    let mut unit_mean = vec![0f32; features.dim];
    for t in 0..features.frames {
        let row = features.row(t);
        let norm = dot(row, row).sqrt().max(1e-12);
        unit_mean
            .iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v / norm);
    }
    let frames = features.frames.max(1) as f32;
    let alike = dot(&unit_mean, &unit_mean) / (frames * frames);
    let mut scene = mean_over(features, 0.0, 1.0);
    scene.iter_mut().for_each(|s| *s *= alike);
    scene
}

#[derive(Debug, Error)]
/// Why captioning cannot start, or failed for one input.
pub enum CaptionError {
    #[error("ONNX Runtime library {path}: {message}. Run scripts/fetch-models.sh, or point caption.ort_library (or ORT_DYLIB_PATH) at libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel")]
    /// The ONNX Runtime library cannot be loaded.
    Runtime {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    #[error("model {path}: {message}. Run scripts/fetch-models.sh or set the caption section's model paths")]
    /// A text encoder model cannot be read or has an unexpected shape.
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error("tokenizer {path}: {message}")]
    /// A tokenizer cannot be read or fails on a text.
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error("query of {tokens} tokens is longer than caption.max_query_tokens = {max}: {query:?}")]
    /// A query longer than `caption.max_query_tokens`.
    TooLong {
        /// The query.
        query: String,
        /// Its tokens, `[CLS]` and `[SEP]` included.
        tokens: usize,
        /// `caption.max_query_tokens`.
        max: usize,
    },
    #[error("vocabulary {path}: {message}")]
    /// The vocabulary cannot be read or is empty.
    Vocabulary {
        /// The vocabulary file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error("caption.vocabulary is not set: name the vocabulary to score (a synthetic world's is in the caption.toml `momentminer synth` writes beside it: pass --config WORLD/caption.toml), or set caption.mode = \"language_free\" or \"off\"")]
    /// `caption.vocabulary` is empty while captions are made of words.
    NoVocabulary,
    #[error("{key} is not set: name the tokenizer.json of the text tower it goes with")]
    /// A tokenizer key is empty while its model is set.
    NotSet {
        /// The key.
        key: &'static str,
    },
    #[error("tower anchors {path}: {message}")]
    /// The anchors of a fitted tower cannot be read or disagree.
    Anchors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    #[error("no text tower to score the vocabulary with: set caption.clip_text_model (an exported CLIP text tower) or caption.tower_anchors (a synthetic world's is in the caption.toml `momentminer synth` writes beside it: pass --config WORLD/caption.toml), or set caption.mode = \"language_free\" or \"off\"")]
    /// Neither `caption.clip_text_model` nor `caption.tower_anchors` is set.
    NoTower,
    #[error("visual features have {visual} dimensions but the text tower gives {text}: the visual stream (caption.visual_stream) and the text tower must come from one CLIP-style model (a synthetic world's tower is as wide as its clip stream, or its only stream); or set caption.mode = \"language_free\" or \"off\"")]
    /// The visual stream and the text tower are of different widths.
    Dimensions {
        /// The visual stream's width.
        visual: usize,
        /// The tower's.
        text: usize,
    },
    #[error("text encoder {path}: {message}")]
    /// The text encoder failed on a batch.
    Inference {
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        message: String,
    },
    #[error("no feature stream {wanted:?} to caption from (caption.visual_stream); the file has {found:?}")]
    /// The stream captions are read from is not in the file.
    Stream {
        /// `caption.visual_stream`.
        wanted: String,
        /// The streams the file holds.
        found: Vec<String>,
    },
}

impl CaptionError {
    /// The stable reason code for quarantine records.
    pub fn code(&self) -> Reason {
        match self {
            CaptionError::Dimensions { .. } => Reason::CaptionDimension,
            CaptionError::Stream { .. } => Reason::CaptionStream,
            _ => Reason::Caption,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caption(verb: &str, noun: &str, noun_score: f32, noun_margin: f32) -> Caption {
        Caption {
            query: format!("{verb} {noun}"),
            tokens: vec![verb.into(), noun.into()],
            token_scores: vec![0.9, noun_score],
            token_margins: vec![3.0, noun_margin],
            ..Caption::default()
        }
    }

    #[test]
    fn the_shared_scene_is_the_mean_weighted_by_the_mean_cosine_over_all_pairs() {
        let rows: [[f32; 3]; 4] = [
            [3.0, 1.0, 0.0],
            [3.0, 0.0, 1.0],
            [2.0, 2.0, 0.0],
            [6.0, 0.0, 0.0],
        ];
        let features = Features {
            frames: 4,
            dim: 3,
            data: rows.iter().flatten().copied().collect(),
        };
        let cosine = |a: &[f32; 3], b: &[f32; 3]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let norm = |v: &[f32; 3]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (norm(a) * norm(b))
        };
        let pairs: f32 = rows
            .iter()
            .flat_map(|a| rows.iter().map(move |b| cosine(a, b)))
            .sum();
        let alike = pairs / 16.0;
        let mean = [3.5, 0.75, 0.25];
        let scene = shared_scene(&features);
        for (s, m) in scene.iter().zip(mean) {
            assert!(
                (s - alike * m).abs() < 1e-5,
                "{scene:?} against {alike} × {mean:?}"
            );
        }
        let same = Features {
            frames: 3,
            dim: 2,
            data: vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0],
        };
        let scene = shared_scene(&same);
        assert!(
            (scene[0] - 1.0).abs() < 1e-5 && (scene[1] - 2.0).abs() < 1e-5,
            "{scene:?}"
        );
    }

    #[test]
    fn of_the_captions_naming_one_noun_only_the_best_shown_is_a_pair() {
        let mut captions = [
            caption("open", "door", 0.4, 2.0),
            caption("hold", "cup", 0.7, 2.5),
            caption("close", "door", 0.6, 1.5),
            caption("open", "door", 0.5, 3.5),
        ];
        supersede_all_but_best_per_noun(&mut captions, 1);
        let kept: Vec<&str> = captions
            .iter()
            .filter(|c| !c.superseded)
            .map(|c| c.query.as_str())
            .collect();
        assert_eq!(
            kept,
            ["hold cup", "close door"],
            "the verb and the margin do not count"
        );
        let json = serde_json::to_string(&captions[1]).unwrap();
        assert!(!json.contains("superseded"), "pairs read as before: {json}");
    }
}
