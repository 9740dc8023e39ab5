//! A development world on a real annotation file's temporal structure (`momentminer synth
//! --structure FILE`): the videos, lengths and moments of a dataset's *train* split, with
//! features built the way CLIP-style features behave rather than the way our own world does.
//! Each moment looks like a fixed random projection of the sentence embedding of its first
//! sentence; every step of a video also carries the video's scene (partly its room's look), so steps are ~0.9
//! self-similar everywhere as real CLIP features are; unannotated activity, soft boundaries and
//! temporally correlated noise come on top. The captioner's text tower is *fitted* to word
//! prototypes (the projection of each word's embedding, plus noise), not the generator's map,
//! so there is a modality gap to cross. Queries are the moments' other sentences, read as
//! written.

use crate::caption::text::TextEncoder;
use crate::caption::vocab::STOPWORDS;
use crate::caption::CaptionError;
use crate::config::{Config, StructureConfig};
use crate::dataset::{moment_detr, read_annotations, DatasetError, Moment};
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{npy, Features};
use crate::rng::Rng;
use crate::span::iou;
use crate::synth::{write_tower, SynthError};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a development world cannot be made.
#[derive(Debug, Error)]
pub enum StructureError {
    /// The annotation file cannot be read.
    #[error(transparent)]
    Annotations(#[from] DatasetError),
    /// The sentence encoder cannot run.
    #[error(transparent)]
    Encoder(#[from] CaptionError),
    /// The tower or vocabulary cannot be written.
    #[error(transparent)]
    Tower(#[from] SynthError),
    /// The range of videos asked for is past the file's end.
    #[error(
        "{path} has {available} videos with moments; structure.first_index = {first_index} \
         leaves none (lower it or structure.videos)"
    )]
    NoVideos {
        /// The annotation file.
        path: PathBuf,
        /// Its videos.
        available: usize,
        /// The first taken.
        first_index: usize,
    },
    /// A file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What was made.
#[derive(Debug)]
pub struct StructureWorld {
    /// Videos written.
    pub videos: usize,
    /// Evaluation queries written to `gt.jsonl`.
    pub queries: usize,
    /// Words in the captioner's vocabulary.
    pub words: usize,
}

/// Moments of one video whose windows overlap by half or more: one event. The first moment's
/// sentence makes its appearance; the others ask for it, each with its own window.
struct Event {
    window: [f64; 2],
    sentence: String,
    queries: Vec<([f64; 2], String)>,
}

/// Words that come before a sentence's verb in the field's captions ("person opens the door").
const SUBJECTS: &[&str] = &[
    "person", "someone", "he", "she", "man", "woman", "they", "people",
];

/// The places a home video is shot in (Charades' fifteen scenes): a video's scene looks partly
/// like its room's name, as a CLIP frame of a kitchen looks like the word "kitchen".
const ROOMS: [&str; 15] = [
    "kitchen",
    "bedroom",
    "living room",
    "bathroom",
    "hallway",
    "dining room",
    "pantry",
    "garage",
    "laundry room",
    "basement",
    "stairs",
    "closet",
    "home office",
    "recreation room",
    "entryway",
];

/// Words of the vocabulary, at most, per part of speech.
const VOCABULARY_WORDS: usize = 200;

/// Writes the world into `out`: `features/<vid>.npy` with `<vid>.json` durations, `gt.jsonl`
/// (the evaluation queries), and the captioner's fitted tower, vocabulary and `caption.toml`.
pub fn generate(
    annotations: &Path,
    out: &Path,
    config: &Config,
) -> Result<StructureWorld, StructureError> {
    let settings = &config.structure;
    let mut by_video: BTreeMap<String, Vec<Moment>> = BTreeMap::new();
    for moment in read_annotations(annotations, None)? {
        if !moment.windows.is_empty() {
            by_video.entry(moment.vid.clone()).or_default().push(moment);
        }
    }
    let mut rng = Rng::new(settings.seed);
    let mut vids: Vec<String> = by_video.keys().cloned().collect();
    rng.shuffle(&mut vids);
    // The projection, tower and vocabulary depend on the file and the seed only, so every
    // range of videos is one world.
    let projection = Projection::new(settings, &mut rng);
    let (verbs, nouns) = vocabulary(
        by_video
            .values()
            .flat_map(|moments| moments.iter().map(|m| m.query.as_str())),
    );
    let available = vids.len();
    let vids: Vec<String> = {
        let mut taken: Vec<String> = vids
            .into_iter()
            .skip(settings.first_index)
            .take(settings.videos)
            .collect();
        taken.sort();
        taken
    };
    if vids.is_empty() {
        return Err(StructureError::NoVideos {
            path: annotations.to_path_buf(),
            available,
            first_index: settings.first_index,
        });
    }
    let encoder = TextEncoder::load(&config.caption)?;
    let mut all_sentences: Vec<String> = vids
        .iter()
        .flat_map(|v| by_video[v].iter().map(|m| m.query.clone()))
        .collect();
    all_sentences.sort();
    all_sentences.dedup();
    let embedded = embed(&encoder, &all_sentences)?;
    let rooms: Vec<Vec<f32>> = embed(
        &encoder,
        &ROOMS.iter().map(|r| format!("a {r}")).collect::<Vec<_>>(),
    )?
    .iter()
    .map(|e| projection.apply(e))
    .collect();
    let appearance: HashMap<&str, Vec<f32>> = all_sentences
        .iter()
        .zip(&embedded)
        .map(|(s, e)| (s.as_str(), projection.apply(e)))
        .collect();
    let features_dir = out.join("features");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| StructureError::Write { path, source }
    };
    std::fs::create_dir_all(&features_dir).map_err(fail(&features_dir))?;
    let mut lines = Vec::new();
    for vid in &vids {
        let moments = &by_video[vid];
        let duration = moments.iter().find_map(|m| m.duration).unwrap_or_else(|| {
            // Charades-STA gives none: the last moment's end, with a little after it.
            let last = moments.iter().map(|m| m.windows[0][1]).fold(0.0, f64::max);
            (last * 1.05).max(1.0)
        });
        let events = events_of(moments);
        let features = video_features(
            settings,
            &mut Rng::new(settings.seed ^ crate::rng::hash_str(vid)),
            duration,
            &events,
            &appearance,
            &all_sentences,
            &rooms,
        );
        let path = features_dir.join(format!("{vid}.npy"));
        let mut bytes = Vec::new();
        npy::write(&mut bytes, &features).map_err(fail(&path))?;
        write_atomic(&path, &bytes, Durability::None).map_err(fail(&path))?;
        let sidecar = features_dir.join(format!("{vid}.json"));
        let text = serde_json::json!({ "duration": duration }).to_string();
        write_atomic(&sidecar, text.as_bytes(), Durability::None).map_err(fail(&sidecar))?;
        // An event with one sentence is in the video but asked for by nobody: its own
        // sentence would find the very text it was made from.
        for (window, query) in events.iter().flat_map(|e| &e.queries) {
            lines.push(moment_detr::Line {
                qid: Some(lines.len() as u64 + 1),
                query: query.clone(),
                vid: vid.clone(),
                duration,
                relevant_windows: vec![*window],
                token_margins: Vec::new(),
                extra: serde_json::Map::new(),
            });
        }
    }
    let gt = out.join("gt.jsonl");
    let text = moment_detr::write(&lines).map_err(|e| fail(&gt)(e.into()))?;
    write_atomic(&gt, text.as_bytes(), Durability::None).map_err(fail(&gt))?;
    let anchors: Vec<&str> = verbs.iter().chain(&nouns).map(String::as_str).collect();
    let word_embeddings = embed(&encoder, &anchors)?;
    let mut gap = Rng::new(settings.seed ^ crate::rng::hash_str("tower gap"));
    let prototypes = Features {
        frames: anchors.len(),
        dim: settings.dim,
        data: word_embeddings
            .iter()
            .flat_map(|e| {
                let exact = projection.apply(e);
                let noisy: Vec<f32> = exact
                    .iter()
                    .map(|v| {
                        v + settings.tower_gap * gap.normal() as f32 / (settings.dim as f32).sqrt()
                    })
                    .collect();
                unit(noisy)
            })
            .collect(),
    };
    let verb_refs: Vec<&str> = verbs.iter().map(String::as_str).collect();
    let noun_refs: Vec<&str> = nouns.iter().map(String::as_str).collect();
    write_tower(out, &anchors, &prototypes, &verb_refs, &noun_refs)?;
    Ok(StructureWorld {
        videos: vids.len(),
        queries: lines.len(),
        words: anchors.len(),
    })
}

/// Sentence embeddings, in batches the encoder takes comfortably.
fn embed<S: AsRef<str>>(encoder: &TextEncoder, texts: &[S]) -> Result<Vec<Vec<f32>>, CaptionError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let refs: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
        out.extend(encoder.encode(&refs)?.into_iter().map(|e| e.pooled));
    }
    Ok(out)
}

/// The generator's fixed map from sentence embeddings to appearance: a Gaussian matrix.
struct Projection {
    matrix: Vec<f32>,
    dim: usize,
}

impl Projection {
    fn new(settings: &StructureConfig, rng: &mut Rng) -> Projection {
        Projection {
            matrix: (0..settings.dim * TEXT_DIM)
                .map(|_| rng.normal() as f32)
                .collect(),
            dim: settings.dim,
        }
    }

    /// Unit-length appearance of a sentence embedding.
    fn apply(&self, embedding: &[f32]) -> Vec<f32> {
        let width = embedding.len().min(TEXT_DIM);
        unit(
            (0..self.dim)
                .map(|row| {
                    let weights = &self.matrix[row * TEXT_DIM..row * TEXT_DIM + width];
                    weights.iter().zip(embedding).map(|(w, e)| w * e).sum()
                })
                .collect(),
        )
    }
}

/// Width of the query encoder's sentence embeddings (MiniLM).
const TEXT_DIM: usize = 384;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

/// The moments of a video grouped by window (IoU ≥ 0.5): several annotators' sentences of one
/// event.
fn events_of(moments: &[Moment]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for moment in moments {
        let window = moment.windows[0];
        match events.iter_mut().find(|e| iou(e.window, window) >= 0.5) {
            Some(event) => event.queries.push((window, moment.query.clone())),
            None => events.push(Event {
                window,
                sentence: moment.query.clone(),
                queries: Vec::new(),
            }),
        }
    }
    events
}

/// One video's steps: scene + soft events + distractors + correlated noise.
fn video_features(
    settings: &StructureConfig,
    rng: &mut Rng,
    duration: f64,
    events: &[Event],
    appearance: &HashMap<&str, Vec<f32>>,
    pool: &[String],
    rooms: &[Vec<f32>],
) -> Features {
    let dim = settings.dim;
    let frames = ((duration * settings.features_per_second).round() as usize).max(8);
    let step_seconds = duration / frames as f64;
    let own = unit((0..dim).map(|_| rng.normal() as f32).collect());
    let scene = match rooms.len() {
        0 => own,
        n => {
            let room = &rooms[rng.below(n)];
            let mix = settings.scene_text;
            let rest = (1.0 - mix * mix).max(0.0).sqrt();
            unit(
                room.iter()
                    .zip(&own)
                    .map(|(r, o)| mix * r + rest * o)
                    .collect(),
            )
        }
    };
    let mut data: Vec<f32> = (0..frames)
        .flat_map(|_| scene.iter().map(|v| v * settings.scene))
        .collect();
    let add_span = |data: &mut Vec<f32>, window: [f64; 2], look: &[f32]| {
        let softness = settings.boundary_s.max(1e-6);
        for t in 0..frames {
            let time = (t as f64 + 0.5) * step_seconds;
            let rise = 1.0 / (1.0 + (-(time - window[0]) / softness * 4.0).exp());
            let fall = 1.0 / (1.0 + (-(window[1] - time) / softness * 4.0).exp());
            let weight = (rise * fall) as f32;
            if weight > 1e-3 {
                for (value, a) in data[t * dim..(t + 1) * dim].iter_mut().zip(look) {
                    *value += weight * a;
                }
            }
        }
    };
    for event in events {
        if let Some(look) = appearance.get(event.sentence.as_str()) {
            add_span(&mut data, event.window, look);
        }
    }
    // Distractors: Poisson-like count with the configured mean.
    let mut expected = settings.distractors;
    while expected > 0.0 && !pool.is_empty() && rng.uniform() < expected.min(1.0) {
        expected -= 1.0;
        let length = rng.range_f64(0.1, 0.3) * duration;
        let start = rng.range_f64(0.0, duration - length);
        if let Some(look) = appearance.get(pool[rng.below(pool.len())].as_str()) {
            add_span(&mut data, [start, start + length], look);
        }
    }
    let innovation = (1.0 - settings.correlation * settings.correlation).sqrt();
    let scale = settings.noise / (dim as f32).sqrt();
    let mut noise: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    for t in 0..frames {
        if t > 0 {
            for n in noise.iter_mut() {
                *n = settings.correlation * *n + innovation * rng.normal() as f32;
            }
        }
        for (value, n) in data[t * dim..(t + 1) * dim].iter_mut().zip(&noise) {
            *value += scale * n;
        }
    }
    Features { frames, dim, data }
}

/// The captioner's vocabulary from the sentences: a word right after a subject ("person
/// opens ...") is a verb, the other content words are nouns; the most frequent of each.
fn vocabulary<'a>(sentences: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
    let mut verbs: HashMap<String, usize> = HashMap::new();
    let mut nouns: HashMap<String, usize> = HashMap::new();
    for sentence in sentences {
        let words: Vec<String> = sentence
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        for (i, word) in words.iter().enumerate() {
            if STOPWORDS.contains(&word.as_str()) || word.len() < 3 {
                continue;
            }
            let after_subject = i > 0 && SUBJECTS.contains(&words[i - 1].as_str());
            let counts = if after_subject {
                &mut verbs
            } else {
                &mut nouns
            };
            *counts.entry(word.clone()).or_default() += 1;
        }
    }
    let top = |counts: HashMap<String, usize>, exclude: &HashMap<String, usize>| {
        let mut ranked: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(w, n)| exclude.get(w).is_none_or(|m| n >= m))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(VOCABULARY_WORDS);
        ranked.into_iter().map(|(w, _)| w).collect::<Vec<_>>()
    };
    let verbs_ranked = top(verbs.clone(), &nouns);
    let nouns_ranked = top(nouns, &verbs);
    (verbs_ranked, nouns_ranked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_after_a_subject_are_verbs() {
        let sentences = [
            "person opens the door.",
            "a person opens a box",
            "someone holds the door",
        ];
        let (verbs, nouns) = vocabulary(sentences);
        assert_eq!(verbs, ["opens", "holds"]);
        assert_eq!(nouns, ["door", "box"]);
    }

    #[test]
    fn a_video_is_its_scene_with_its_events_on_top() {
        let settings = Config::default().structure;
        let look = unit((0..settings.dim).map(|i| (i % 7) as f32 - 3.0).collect());
        let appearance = HashMap::from([("a man reads", look.clone())]);
        let events = [Event {
            window: [10.0, 20.0],
            sentence: "a man reads".into(),
            queries: Vec::new(),
        }];
        let features = video_features(
            &StructureConfig {
                distractors: 0.0,
                ..settings.clone()
            },
            &mut Rng::new(3),
            30.0,
            &events,
            &appearance,
            &[],
            &[],
        );
        assert_eq!((features.frames, features.dim), (30, settings.dim));
        let cosine = |t: usize| {
            let row = features.row(t);
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter().zip(&look).map(|(a, b)| a * b).sum::<f32>() / norm
        };
        assert!(
            cosine(15) > cosine(2) + 0.2,
            "{} vs {}",
            cosine(15),
            cosine(2)
        );
    }
}
