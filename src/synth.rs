//! The synthetic world: untrimmed "videos" whose features follow a known event structure, with
//! ground-truth spans and natural sentences, so every stage can be run and scored end to end on
//! a fresh machine.
//!
//! Each action is a (verb, noun) pair of real English words. Every word has a fixed random
//! prototype; an action's visual prototype is the normalised sum of its verb's and noun's, so
//! actions that share a word look alike (open door vs close door), as they do in real features.
//! A video is background (its scene) with events laid between, blended over a few frames at
//! each boundary, on top of a world-wide common component, a per-video style offset, a slow
//! random-walk drift and per-frame noise: the motion ("i3d") stream. Beside it, the appearance
//! ("clip") stream is what single frames show, in a space of its own: objects well, actions
//! hardly.

use crate::caption::APPEARANCE_STREAM;
use crate::config::SynthConfig;
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{npy, npz, Features};
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
/// Why a world cannot be written.
pub enum SynthError {
    #[error("cannot write {path}: {source}")]
    /// A file or folder cannot be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One planted event and its sentence; also a line of `gt.jsonl` (Moment-DETR format plus the
/// action's words).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroundTruth {
    /// The sentence's number.
    pub qid: usize,
    /// The sentence.
    pub query: String,
    /// The video.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// The event's span, seconds.
    pub relevant_windows: Vec<[f64; 2]>,
    /// The action's verb.
    pub verb: String,
    /// The action's noun.
    pub noun: String,
}

/// A generated video: features plus what is really in it.
pub struct SynthVideo {
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// The motion stream ("i3d").
    pub features: Features,
    /// The appearance stream ("clip"), when the world has one.
    pub appearance: Option<Features>,
    /// The events planted in it.
    pub events: Vec<GroundTruth>,
}

/// Word prototypes are fixed by the world seed, so every video of a world shares them.
struct World {
    dim: usize,
    common: Vec<f32>,
    action_protos: Vec<Vec<f32>>,
    scene_protos: Vec<Vec<f32>>,
    appearance: Option<Appearance>,
}

/// What the appearance ("clip") stream is made of: its own space, as a CLIP image tower's is
/// not an action recogniser's.
struct Appearance {
    dim: usize,
    common: Vec<f32>,
    /// Per action: its noun with a trace of its verb, what a still frame of it shows.
    action_protos: Vec<Vec<f32>>,
    /// Per action: its noun alone, what stays in view while nobody handles it.
    object_protos: Vec<Vec<f32>>,
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

/// Name of the motion stream in a two-stream video; one that `ingest.stream_preference` picks
/// for proposals before the appearance stream.
const MOTION_STREAM: &str = "i3d";

/// Salt of the appearance stream's word prototypes, independent of the motion stream's.
const APPEARANCE_SEED: u64 = 0x636c_6970;

/// The seed and width of the stream captions are scored against: the appearance stream when
/// the world has one, else the only stream. The world's text tower is fitted to its prototypes.
pub fn caption_space(config: &SynthConfig) -> (u64, usize) {
    match config.clip_dim {
        0 => (config.seed, config.dim),
        dim => (config.seed ^ APPEARANCE_SEED, dim),
    }
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

fn weighted_sum(a: &[f32], b: &[f32], b_weight: f32) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + b_weight * y).collect()
}

impl World {
    fn new(config: &SynthConfig) -> World {
        let (seed, dim) = (config.seed, config.dim);
        let word = |w: &str| word_prototype(seed, dim, w);
        let action_protos = ACTIONS
            .iter()
            .map(|&(verb, noun)| normalise(weighted_sum(&word(VERBS[verb].0), &word(noun), 1.0)))
            .collect();
        let appearance = (config.clip_dim > 0).then(|| {
            let (seed, dim) = caption_space(config);
            let word = |w: &str| word_prototype(seed, dim, w);
            Appearance {
                dim,
                common: word("<common>"),
                action_protos: ACTIONS
                    .iter()
                    .map(|&(verb, noun)| {
                        normalise(weighted_sum(
                            &word(noun),
                            &word(VERBS[verb].0),
                            config.clip_verb,
                        ))
                    })
                    .collect(),
                object_protos: ACTIONS.iter().map(|&(_, noun)| word(noun)).collect(),
                scene_protos: SCENES.iter().map(|s| word(s)).collect(),
            }
        });
        World {
            dim,
            common: word("<common>"),
            action_protos,
            scene_protos: SCENES.iter().map(|s| word(s)).collect(),
            appearance,
        }
    }
}

/// How much of each label a frame shows: near a boundary it is a mix of both sides, as real
/// motion is. `None` is background.
type FrameMix = [(Option<usize>, f32); 3];

fn frame_mixes(label: &[Option<usize>], transition_frames: usize) -> Vec<FrameMix> {
    let blend = transition_frames.max(1) as f32;
    let mix = |dist: usize| (0.5 - dist as f32 / (2.0 * blend)).max(0.0);
    (0..label.len())
        .map(|t| {
            let prev = (0..t).rev().find(|&u| label[u] != label[t]);
            let next = (t + 1..label.len()).find(|&u| label[u] != label[t]);
            let wp = prev.map_or(0.0, |u| mix(t - u));
            let wn = next.map_or(0.0, |u| mix(u - t));
            [
                (label[t], 1.0 - wp - wn),
                (prev.and_then(|u| label[u]), wp),
                (next.and_then(|u| label[u]), wn),
            ]
        })
        .collect()
}

/// Picks each event's action; with probability `shared_objects` one that handles an object an
/// earlier event of the video handled.
fn pick_actions(count: usize, shared_objects: f64, rng: &mut Rng) -> Vec<usize> {
    let mut actions: Vec<usize> = Vec::with_capacity(count);
    for _ in 0..count {
        let handled: Vec<usize> = (0..ACTIONS.len())
            .filter(|&a| actions.iter().any(|&b| ACTIONS[b].1 == ACTIONS[a].1))
            .collect();
        let action = if !handled.is_empty() && rng.uniform() < shared_objects {
            handled[rng.below(handled.len())]
        } else {
            rng.below(ACTIONS.len())
        };
        actions.push(action);
    }
    actions
}

/// Generates video `index` of the world `config` describes; pure, so any subset can be made
/// in parallel and reproduced alone.
fn make_video(world: &World, config: &SynthConfig, index: usize) -> SynthVideo {
    let video_seed = config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ index as u64;
    let mut rng = Rng::new(video_seed);
    let vid = format!("synth_{index:05}");
    let frames = rng.range_usize(config.frames_min, config.frames_max);
    let dim = world.dim;
    let layout = plan_events(config, frames, &mut rng);
    let scene_index = rng.below(world.scene_protos.len());
    let scene = &world.scene_protos[scene_index];
    let actions = pick_actions(layout.len(), config.shared_objects, &mut rng);

    // Per-frame target prototype index: None = background.
    let mut label: Vec<Option<usize>> = vec![None; frames];
    for (&(s, e), &a) in layout.iter().zip(&actions) {
        label[s..e].iter_mut().for_each(|l| *l = Some(a));
    }
    let mixes = frame_mixes(&label, config.transition_frames);
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
    let mut data = Vec::with_capacity(frames * dim);
    for mix in &mixes {
        for d in drift.iter_mut() {
            *d += drift_step * rng.normal() as f32;
        }
        for c in nuisance_coef.iter_mut() {
            *c = rho * *c + (1.0 - rho * rho).sqrt() * rng.normal() as f32;
        }
        for d in 0..dim {
            let mut v: f32 = mix.iter().map(|&(l, w)| w * proto(l)[d]).sum();
            v += 0.7 * world.common[d] + config.style * style[d] + drift[d];
            for (dir, c) in nuisance_dirs.iter().zip(&nuisance_coef) {
                v += nuisance_scale * c * dir[d];
            }
            data.push(v + noise_sd * rng.normal() as f32);
        }
    }
    let appearance = world.appearance.as_ref().map(|appearance| {
        let mut rng = Rng::new(video_seed ^ APPEARANCE_SEED);
        appearance_stream(
            appearance,
            config,
            frames,
            &layout,
            scene_index,
            &actions,
            &mut rng,
        )
    });
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
        appearance,
        events,
    }
}

/// Correlation length (frames) of how visible each object of a video is.
const CLUTTER_FRAMES: f32 = 10.0;

/// The appearance stream of one video. The scene and every object its events handle stay in
/// view, each at a visibility that wanders around `clip_objects` (by `clip_clutter`). An event adds
/// what a still frame of it shows, and that lingers: the object is in
/// view and in hand for a while before and after the action (up to `clip_linger` of the
/// event's length on each side, fading), and is partly hidden at times. With probability
/// `clip_incidental` an event's object
/// is also shown up close at another time, with no action. A per-video style and per-frame
/// jitter lie on top.
fn appearance_stream(
    appearance: &Appearance,
    config: &SynthConfig,
    frames: usize,
    layout: &[(usize, usize)],
    scene: usize,
    actions: &[usize],
    rng: &mut Rng,
) -> Features {
    let dim = appearance.dim;
    let mut still = weighted_sum(&appearance.scene_protos[scene], &appearance.common, 0.7);
    still = weighted_sum(&still, &unit_gaussian(dim, rng), config.style);
    // (prototype, weight per frame) of everything shown on top of the still.
    let mut shown: Vec<(&[f32], Vec<f32>)> = Vec::new();
    // Objects in view: as the camera and the person move, each comes closer and recedes.
    let rho = (-1.0 / CLUTTER_FRAMES).exp();
    let mut objects: Vec<&str> = Vec::new();
    for &a in actions {
        if !objects.contains(&ACTIONS[a].1) {
            objects.push(ACTIONS[a].1);
            let mut z = rng.normal() as f32;
            let visibility = (0..frames)
                .map(|_| {
                    z = rho * z + (1.0 - rho * rho).sqrt() * rng.normal() as f32;
                    (config.clip_objects + config.clip_clutter * z).max(0.0)
                })
                .collect();
            shown.push((&appearance.object_protos[a], visibility));
        }
    }
    let fade = config.transition_frames.max(1);
    for (&(s, e), &a) in layout.iter().zip(actions) {
        let length = (e - s) as f64;
        let mut linger = || (rng.uniform() * config.clip_linger * length).round() as usize;
        let (before, after) = (linger().max(fade), linger().max(fade));
        // Half hidden at worst: occlusion, a bad angle.
        let visibility = rng.range_f64(0.5, 1.0) as f32;
        let weights = ramp(frames, s, e, before, after);
        shown.push((
            &appearance.action_protos[a],
            weights.into_iter().map(|w| w * visibility).collect(),
        ));
        if rng.uniform() < config.clip_incidental {
            let start = rng.below(frames.saturating_sub(e - s).max(1));
            shown.push((
                &appearance.object_protos[a],
                ramp(frames, start, (start + e - s).min(frames), fade, fade),
            ));
        }
    }
    let noise_sd = config.noise / (dim as f32).sqrt();
    let mut data = Vec::with_capacity(frames * dim);
    for t in 0..frames {
        for (d, base) in still.iter().enumerate() {
            let on_top: f32 = shown.iter().map(|(proto, w)| w[t] * proto[d]).sum();
            data.push(base + on_top + noise_sd * rng.normal() as f32);
        }
    }
    Features { frames, dim, data }
}

/// Weight per frame: 1 on `[start, end)`, rising linearly over `before` frames and falling over
/// `after` frames outside it.
fn ramp(frames: usize, start: usize, end: usize, before: usize, after: usize) -> Vec<f32> {
    (0..frames)
        .map(|t| {
            if t < start {
                let distance = (start - t) as f32;
                (1.0 - distance / (before + 1) as f32).max(0.0)
            } else if t < end {
                1.0
            } else {
                let distance = (t - end + 1) as f32;
                (1.0 - distance / (after + 1) as f32).max(0.0)
            }
        })
        .collect()
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

/// Where [`generate`] writes the features of video `vid`.
pub fn video_path(out: &Path, config: &SynthConfig, vid: &str) -> PathBuf {
    let extension = if config.clip_dim > 0 { "npz" } else { "npy" };
    out.join("features").join(format!("{vid}.{extension}"))
}

/// Generates `config.videos` videos into `out/features/` with `<vid>.json` duration sidecars,
/// and their ground truth into `out/gt.jsonl`. Returns the ground truth. A video is
/// `<vid>.npz` holding "i3d" and "clip" when the world has an appearance stream, else
/// `<vid>.npy`.
pub fn generate(out: &Path, config: &SynthConfig) -> Result<Vec<GroundTruth>, SynthError> {
    let features_dir = out.join("features");
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Write { path, source }
    };
    std::fs::create_dir_all(&features_dir).map_err(fail(&features_dir))?;
    let world = World::new(config);
    let first = config.first_index;
    let per_video: Vec<Vec<GroundTruth>> = (first..first + config.videos)
        .into_par_iter()
        .map(|index| {
            let video = make_video(&world, config, index);
            let path = video_path(out, config, &video.vid);
            let bytes = match &video.appearance {
                Some(appearance) => {
                    let mut bytes = std::io::Cursor::new(Vec::new());
                    npz::write(
                        &mut bytes,
                        &[
                            (MOTION_STREAM, &video.features),
                            (APPEARANCE_STREAM, appearance),
                        ],
                    )
                    .map_err(fail(&path))?;
                    bytes.into_inner()
                }
                None => {
                    let mut bytes = Vec::with_capacity(video.features.data.len() * 4 + 128);
                    npy::write(&mut bytes, &video.features).map_err(fail(&path))?;
                    bytes
                }
            };
            write_atomic(&path, &bytes, Durability::None).map_err(fail(&path))?;
            // The same video in the other format, from a world made with other settings, would
            // be read as a second copy of it.
            let other = path.with_extension(if video.appearance.is_some() {
                "npy"
            } else {
                "npz"
            });
            match std::fs::remove_file(&other) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(&other)(e)),
                _ => {}
            }
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
    write_caption_settings(out, config)?;
    Ok(truth)
}

/// The file beside a world that names its text tower and vocabulary (`[caption]` settings);
/// pass it with `--config` to every command that captions or reads queries.
pub const CAPTION_SETTINGS: &str = "caption.toml";

/// Words of everyday indoor video that no event of the world shows: in the vocabulary, so a
/// captioner can be wrong.
const DISTRACTORS: [&str; 20] = [
    "sit", "stand", "walk", "run", "laugh", "sneeze", "dress", "smile", "play", "turn", "bed",
    "sofa", "shelf", "light", "camera", "dog", "car", "closet", "glass", "vacuum",
];

/// Writes what the product needs to caption this world, as it would for real features: the
/// world's text tower as anchors (`tower/words.txt` and `tower/prototypes.npy`, each word's
/// prototype in the stream captions are scored against), the vocabulary (`vocabulary.json`:
/// the world's words and the distractors) and [`CAPTION_SETTINGS`] naming both.
fn write_caption_settings(out: &Path, config: &SynthConfig) -> Result<(), SynthError> {
    let (verbs, nouns) = words();
    let anchors: Vec<&str> = verbs.iter().chain(&nouns).copied().collect();
    let (seed, dim) = caption_space(config);
    let prototypes = Features {
        frames: anchors.len(),
        dim,
        data: anchors
            .iter()
            .flat_map(|w| word_prototype(seed, dim, w))
            .collect(),
    };
    let (distractor_verbs, distractor_nouns) = DISTRACTORS.split_at(10);
    let verbs: Vec<&str> = verbs.iter().chain(distractor_verbs).copied().collect();
    let nouns: Vec<&str> = nouns.iter().chain(distractor_nouns).copied().collect();
    write_tower(out, &anchors, &prototypes, &verbs, &nouns)
}

/// Writes a world's text tower as anchors (`tower/words.txt`, `tower/prototypes.npy`: one
/// row per anchor word, what it looks like in the stream captions read), its vocabulary
/// (`vocabulary.json`) and [`CAPTION_SETTINGS`] naming both.
pub fn write_tower(
    out: &Path,
    anchors: &[&str],
    prototypes: &Features,
    verbs: &[&str],
    nouns: &[&str],
) -> Result<(), SynthError> {
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Write { path, source }
    };
    let tower = out.join("tower");
    std::fs::create_dir_all(&tower).map_err(fail(&tower))?;
    let mut bytes = Vec::new();
    npy::write(&mut bytes, prototypes).map_err(fail(&tower))?;
    let files = [
        (tower.join("words.txt"), anchors.join("\n").into_bytes()),
        (tower.join("prototypes.npy"), bytes),
    ];
    for (path, bytes) in &files {
        write_atomic(path, bytes, Durability::None).map_err(fail(path))?;
    }
    let vocabulary = serde_json::json!({ "verbs": verbs, "nouns": nouns });
    let vocabulary_path = out.join("vocabulary.json");
    write_atomic(
        &vocabulary_path,
        vocabulary.to_string().as_bytes(),
        Durability::None,
    )
    .map_err(fail(&vocabulary_path))?;
    let absolute = |path: &Path| path.canonicalize().map_err(fail(path));
    let mut caption = toml::Table::new();
    for (key, path) in [("tower_anchors", &tower), ("vocabulary", &vocabulary_path)] {
        let value = absolute(path)?.to_string_lossy().into_owned();
        caption.insert(key.into(), toml::Value::String(value));
    }
    let mut settings = toml::Table::new();
    settings.insert("caption".into(), toml::Value::Table(caption));
    let text = format!(
        "# This world's text tower and vocabulary. Pass this file with --config to every\n\
         # command that captions or reads queries (propose, caption, train, eval, watch).\n{}",
        toml::to_string(&settings).unwrap_or_default()
    );
    let settings_path = out.join(CAPTION_SETTINGS);
    write_atomic(&settings_path, text.as_bytes(), Durability::None).map_err(fail(&settings_path))
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
        let world = World::new(&config);
        let a = make_video(&world, &config, 3);
        let b = make_video(&World::new(&config), &config, 3);
        assert_eq!(a.features, b.features);
        assert_eq!(a.appearance, b.appearance);
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

    /// A still frame shows the object an event handles much more than the action, and the
    /// objects of a video are in view before anyone handles them.
    #[test]
    fn the_appearance_stream_shows_objects_all_along_and_verbs_faintly() {
        let mut config = small();
        config.clip_dim = 256;
        let video = make_video(&World::new(&config), &config, 5);
        let clip = video.appearance.expect("an appearance stream");
        let (seed, dim) = caption_space(&config);
        let frames = clip.frames as f64;
        let mean_dot = |first: usize, last: usize, word: &str| -> f32 {
            let proto = word_prototype(seed, dim, word);
            let total: f32 = (first..last)
                .map(|t| {
                    clip.row(t)
                        .iter()
                        .zip(&proto)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                })
                .sum();
            total / (last - first) as f32
        };
        let event = &video.events[0];
        let [start, end] = event.relevant_windows[0];
        let (first, last) = (
            (start / video.duration * frames).ceil() as usize + 2,
            (end / video.duration * frames).floor() as usize - 2,
        );
        let (noun, verb) = (
            mean_dot(first, last, &event.noun),
            mean_dot(first, last, &event.verb),
        );
        assert!(
            noun > 0.8 && verb > 0.1 && verb < 0.5 * noun,
            "{noun} {verb}"
        );
        let before = (start / video.duration * frames).floor() as usize - 4;
        assert!(before >= 2, "the first event starts after some background");
        let unrelated = ["mirror", "coffee", "floor"]
            .into_iter()
            .find(|w| video.events.iter().all(|e| e.noun != *w))
            .unwrap_or("mirror");
        let (in_view, absent) = (
            mean_dot(0, before, &event.noun),
            mean_dot(0, before, unrelated),
        );
        assert!(
            in_view > config.clip_objects * 0.6 && absent.abs() < 0.2,
            "{in_view} {absent}"
        );
    }

    #[test]
    fn generate_writes_features_sidecars_and_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        let truth = generate(dir.path(), &small()).unwrap();
        let moments = crate::dataset::read_annotations(&dir.path().join("gt.jsonl"), None).unwrap();
        assert_eq!(moments.len(), truth.len());
        for vid in ["synth_00000", "synth_00003"] {
            assert!(dir.path().join(format!("features/{vid}.npz")).exists());
            assert!(dir.path().join(format!("features/{vid}.json")).exists());
        }
    }
}
