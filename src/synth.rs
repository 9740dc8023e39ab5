//! The synthetic world: untrimmed "videos" whose features follow a known event structure, with
//! ground-truth spans and natural sentences, so every stage can be run and scored end to end on
//! a fresh machine.
//!
//! Each action is a (verb, noun) pair of real English words. Every word has a fixed random
//! prototype; an action's visual prototype is the normalised sum of its verb's and noun's, so
//! actions that share a word look alike (open door vs close door), as they do in real features.
//! A video is background (its scene) with events laid between, blended over a few frames at
//! each boundary, on top of a world-wide common component, a per-video style offset, a slow
//! random-walk drift and per-frame noise.

use crate::config::SynthConfig;
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{npy, Features};
use crate::rng::{hash_str, Rng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// (base, third person, gerund).
const VERBS: &[(&str, &str, &str)] = &[
    ("open", "opens", "opening"),
    ("close", "closes", "closing"),
    ("hold", "holds", "holding"),
    ("take", "takes", "taking"),
    ("put", "puts", "putting"),
    ("eat", "eats", "eating"),
    ("drink", "drinks", "drinking"),
    ("wash", "washes", "washing"),
    ("fold", "folds", "folding"),
    ("throw", "throws", "throwing"),
    ("carry", "carries", "carrying"),
    ("read", "reads", "reading"),
    ("watch", "watches", "watching"),
    ("wipe", "wipes", "wiping"),
    ("pour", "pours", "pouring"),
    ("cook", "cooks", "cooking"),
    ("fix", "fixes", "fixing"),
    ("push", "pushes", "pushing"),
    ("sweep", "sweeps", "sweeping"),
    ("tidy", "tidies", "tidying"),
];

/// Actions as (verb index into VERBS, noun).
const ACTIONS: &[(usize, &str)] = &[
    (0, "door"),
    (1, "door"),
    (0, "window"),
    (1, "window"),
    (0, "box"),
    (1, "box"),
    (0, "laptop"),
    (1, "laptop"),
    (0, "refrigerator"),
    (1, "refrigerator"),
    (2, "phone"),
    (2, "cup"),
    (2, "book"),
    (2, "pillow"),
    (2, "broom"),
    (2, "picture"),
    (3, "book"),
    (3, "shoe"),
    (3, "towel"),
    (3, "phone"),
    (4, "book"),
    (4, "shoe"),
    (4, "cup"),
    (4, "bag"),
    (5, "sandwich"),
    (5, "food"),
    (5, "cookie"),
    (6, "coffee"),
    (6, "water"),
    (7, "dish"),
    (7, "cup"),
    (7, "window"),
    (8, "towel"),
    (8, "blanket"),
    (8, "clothes"),
    (9, "pillow"),
    (9, "bag"),
    (9, "towel"),
    (10, "bag"),
    (10, "box"),
    (10, "blanket"),
    (11, "book"),
    (11, "paper"),
    (12, "television"),
    (12, "laptop"),
    (13, "table"),
    (13, "mirror"),
    (14, "water"),
    (14, "coffee"),
    (15, "food"),
    (16, "chair"),
    (16, "door"),
    (17, "chair"),
    (17, "box"),
    (18, "floor"),
    (19, "table"),
    (19, "clothes"),
];

const NUISANCE_RANK: usize = 4;
/// Correlation length (frames) of the nuisance coefficients.
const NUISANCE_FRAMES: f32 = 8.0;

const SCENES: &[&str] = &[
    "kitchen",
    "bedroom",
    "living room",
    "bathroom",
    "hallway",
    "garage",
    "office",
    "pantry",
];

#[derive(Debug, Error)]
pub enum SynthError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One planted event and its sentence; also a line of `gt.jsonl` (Moment-DETR format plus the
/// action's words).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroundTruth {
    pub qid: usize,
    pub query: String,
    pub vid: String,
    pub duration: f64,
    pub relevant_windows: Vec<[f64; 2]>,
    pub verb: String,
    pub noun: String,
}

/// A generated video: features plus what is really in it.
pub struct SynthVideo {
    pub vid: String,
    pub duration: f64,
    pub features: Features,
    pub events: Vec<GroundTruth>,
}

/// Word prototypes are fixed by the world seed, so every video of a world shares them.
struct World {
    dim: usize,
    common: Vec<f32>,
    action_protos: Vec<Vec<f32>>,
    scene_protos: Vec<Vec<f32>>,
}

/// The world's verbs (base forms) and nouns, each once, in a fixed order.
pub fn words() -> (Vec<&'static str>, Vec<&'static str>) {
    let verbs = VERBS.iter().map(|v| v.0).collect();
    let mut nouns: Vec<&str> = Vec::new();
    for &(_, noun) in ACTIONS {
        if !nouns.contains(&noun) {
            nouns.push(noun);
        }
    }
    (verbs, nouns)
}

/// The visual prototype of one word in the world of `seed` and `dim`: what the features of an
/// action built from it contain.
pub fn word_prototype(seed: u64, dim: usize, word: &str) -> Vec<f32> {
    unit_gaussian(dim, &mut Rng::new(seed ^ hash_str(word)))
}

fn unit_gaussian(dim: usize, rng: &mut Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
    normalise(v)
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

impl World {
    fn new(seed: u64, dim: usize) -> World {
        let word = |w: &str| word_prototype(seed, dim, w);
        let action_protos = ACTIONS
            .iter()
            .map(|&(verb, noun)| {
                let (v, n) = (word(VERBS[verb].0), word(noun));
                normalise(v.iter().zip(&n).map(|(a, b)| a + b).collect())
            })
            .collect();
        World {
            dim,
            common: word("<common>"),
            action_protos,
            scene_protos: SCENES.iter().map(|s| word(s)).collect(),
        }
    }
}

/// Generates video `index` of the world `config` describes; pure, so any subset can be made
/// in parallel and reproduced alone.
fn make_video(world: &World, config: &SynthConfig, index: usize) -> SynthVideo {
    let mut rng = Rng::new(config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ index as u64);
    let vid = format!("synth_{index:05}");
    let frames = rng.range_usize(config.frames_min, config.frames_max);
    let dim = world.dim;
    let layout = plan_events(config, frames, &mut rng);
    let scene = &world.scene_protos[rng.below(world.scene_protos.len())];
    let actions: Vec<usize> = layout.iter().map(|_| rng.below(ACTIONS.len())).collect();

    // Per-frame target prototype index: None = background.
    let mut label: Vec<Option<usize>> = vec![None; frames];
    for (&(s, e), &a) in layout.iter().zip(&actions) {
        label[s..e].iter_mut().for_each(|l| *l = Some(a));
    }
    let proto = |l: Option<usize>| -> &[f32] {
        match l {
            Some(a) => &world.action_protos[a],
            None => scene,
        }
    };
    let style = unit_gaussian(dim, &mut rng);
    // Low-rank, slowly varying nuisance (pose, camera, lighting): structured variation that,
    // unlike white noise, does not average away and makes spurious boundaries plausible.
    let nuisance_dirs: Vec<Vec<f32>> = (0..NUISANCE_RANK)
        .map(|_| unit_gaussian(dim, &mut rng))
        .collect();
    let rho = (-1.0 / NUISANCE_FRAMES).exp();
    let mut nuisance_coef: Vec<f32> = (0..NUISANCE_RANK).map(|_| rng.normal() as f32).collect();
    let nuisance_scale = config.nuisance / (NUISANCE_RANK as f32).sqrt();
    let mut drift = vec![0.0f32; dim];
    // Per-dimension steps sized so the walk ends about `drift` away from where it began.
    let drift_step = config.drift / ((frames * dim) as f32).sqrt();
    let noise_sd = config.noise / (dim as f32).sqrt();
    let blend = config.transition_frames.max(1) as f32;
    let mut data = Vec::with_capacity(frames * dim);
    for t in 0..frames {
        for d in drift.iter_mut() {
            *d += drift_step * rng.normal() as f32;
        }
        for c in nuisance_coef.iter_mut() {
            *c = rho * *c + (1.0 - rho * rho).sqrt() * rng.normal() as f32;
        }
        // Near a boundary the frame is a mix of both sides, as real motion is.
        let (prev, next) = (
            (0..t)
                .rev()
                .find(|&u| label[u] != label[t])
                .map(|u| (t - u, label[u])),
            (t + 1..frames)
                .find(|&u| label[u] != label[t])
                .map(|u| (u - t, label[u])),
        );
        let mix = |dist: usize| (0.5 - dist as f32 / (2.0 * blend)).max(0.0);
        let (wp, wn) = (
            prev.map_or(0.0, |(d, _)| mix(d)),
            next.map_or(0.0, |(d, _)| mix(d)),
        );
        let own = proto(label[t]);
        let before = prev.map(|(_, l)| proto(l));
        let after = next.map(|(_, l)| proto(l));
        for d in 0..dim {
            let mut v = (1.0 - wp - wn) * own[d];
            if let Some(b) = before {
                v += wp * b[d];
            }
            if let Some(a) = after {
                v += wn * a[d];
            }
            v += 0.7 * world.common[d] + config.style * style[d] + drift[d];
            for (dir, c) in nuisance_dirs.iter().zip(&nuisance_coef) {
                v += nuisance_scale * c * dir[d];
            }
            data.push(v + noise_sd * rng.normal() as f32);
        }
    }
    let duration = (frames as f64 * config.seconds_per_frame * 100.0).round() / 100.0;
    let seconds = |f: usize| f as f64 / frames as f64 * duration;
    let events = layout
        .iter()
        .zip(&actions)
        .enumerate()
        .map(|(i, (&(s, e), &a))| {
            let (verb, noun) = (VERBS[ACTIONS[a].0], ACTIONS[a].1);
            GroundTruth {
                qid: index * 16 + i,
                query: sentence(verb, noun, &mut rng),
                vid: vid.clone(),
                duration,
                relevant_windows: vec![[seconds(s), seconds(e)]],
                verb: verb.0.to_string(),
                noun: noun.to_string(),
            }
        })
        .collect();
    SynthVideo {
        vid,
        duration,
        features: Features { frames, dim, data },
        events,
    }
}

/// Event spans in frames, in order, separated by background gaps.
fn plan_events(config: &SynthConfig, frames: usize, rng: &mut Rng) -> Vec<(usize, usize)> {
    let count = rng.range_usize(config.events_min, config.events_max);
    let mut lengths: Vec<f64> = (0..count)
        .map(|_| rng.range_f64(config.event_length_min, config.event_length_max))
        .collect();
    // Events fill what the background leaves; shrink them evenly when they would not fit.
    let room = 1.0 - config.background_share;
    let total: f64 = lengths.iter().sum();
    if total > room {
        lengths.iter_mut().for_each(|l| *l *= room / total);
    }
    let background = 1.0 - lengths.iter().sum::<f64>();
    let mut gaps: Vec<f64> = (0..=count).map(|_| rng.uniform() + 0.05).collect();
    let gap_total: f64 = gaps.iter().sum();
    gaps.iter_mut().for_each(|g| *g *= background / gap_total);
    let mut spans = Vec::with_capacity(count);
    let mut at = gaps[0];
    for (i, len) in lengths.iter().enumerate() {
        let (s, e) = (
            (at * frames as f64).round() as usize,
            ((at + len) * frames as f64).round() as usize,
        );
        if e > s {
            spans.push((s, e.min(frames)));
        }
        at += len + gaps[i + 1];
    }
    spans
}

fn sentence(verb: (&str, &str, &str), noun: &str, rng: &mut Rng) -> String {
    let (_, third, gerund) = verb;
    match rng.below(4) {
        0 => format!("a person is {gerund} the {noun}."),
        1 => format!("person {third} a {noun}."),
        2 => format!("someone is {gerund} a {noun}."),
        _ => format!("the person {third} the {noun}."),
    }
}

/// Generates `config.videos` videos into `out/features/<vid>.npy` with `<vid>.json` duration
/// sidecars, and their ground truth into `out/gt.jsonl`. Returns the ground truth.
pub fn generate(out: &Path, config: &SynthConfig) -> Result<Vec<GroundTruth>, SynthError> {
    let features_dir = out.join("features");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Write { path, source }
    };
    std::fs::create_dir_all(&features_dir).map_err(fail(&features_dir))?;
    let world = World::new(config.seed, config.dim);
    let first = config.first_index;
    let per_video: Vec<Vec<GroundTruth>> = (first..first + config.videos)
        .into_par_iter()
        .map(|index| {
            let video = make_video(&world, config, index);
            let npy_path = features_dir.join(format!("{}.npy", video.vid));
            let mut bytes = Vec::with_capacity(video.features.data.len() * 4 + 128);
            npy::write(&mut bytes, &video.features).map_err(fail(&npy_path))?;
            write_atomic(&npy_path, &bytes, Durability::None).map_err(fail(&npy_path))?;
            let sidecar = features_dir.join(format!("{}.json", video.vid));
            let meta = serde_json::json!({ "duration": video.duration });
            write_atomic(&sidecar, meta.to_string().as_bytes(), Durability::None)
                .map_err(fail(&sidecar))?;
            Ok(video.events)
        })
        .collect::<Result<_, SynthError>>()?;
    let truth: Vec<GroundTruth> = per_video.into_iter().flatten().collect();
    let mut lines = String::new();
    for gt in &truth {
        lines.push_str(&serde_json::to_string(gt).unwrap_or_default());
        lines.push('\n');
    }
    let gt_path = out.join("gt.jsonl");
    write_atomic(&gt_path, lines.as_bytes(), Durability::Full).map_err(fail(&gt_path))?;
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn small() -> SynthConfig {
        let mut config = Config::default().synth;
        config.dim = 64;
        config.videos = 4;
        config
    }

    #[test]
    fn videos_are_reproducible_and_events_lie_inside() {
        let config = small();
        let world = World::new(config.seed, config.dim);
        let a = make_video(&world, &config, 3);
        let b = make_video(&World::new(config.seed, config.dim), &config, 3);
        assert_eq!(a.features, b.features);
        assert!(a.features.frames >= config.frames_min && a.features.frames <= config.frames_max);
        assert!(!a.events.is_empty());
        let mut last_end = 0.0;
        for gt in &a.events {
            let [s, e] = gt.relevant_windows[0];
            assert!(s >= last_end && e > s && e <= a.duration + 1e-9, "{s} {e}");
            last_end = e;
            assert!(gt.query.contains(&gt.noun));
        }
    }

    #[test]
    fn generate_writes_features_sidecars_and_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        let truth = generate(dir.path(), &small()).unwrap();
        let moments = crate::dataset::read_annotations(&dir.path().join("gt.jsonl")).unwrap();
        assert_eq!(moments.len(), truth.len());
        for vid in ["synth_00000", "synth_00003"] {
            assert!(dir.path().join(format!("features/{vid}.npy")).exists());
            assert!(dir.path().join(format!("features/{vid}.json")).exists());
        }
    }
}
