//! A world in the layout of a public feature release: the same videos and moments written as
//! Charades-STA I3D `.npy` files, an ActivityNet C3D HDF5 file, QVHighlights CLIP `.npz`
//! files, TACoS, DiDeMo or MAD HDF5 files, each with its annotation file in that dataset's own
//! format. What `config/presets/` is tested on, and what a user tries a preset on before
//! pointing it at the real release.

use crate::batch::collect_videos;
use crate::config::IngestConfig;
use crate::dataset::{read_annotations, AnnotationFormat, DatasetError, Moment};
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{npy, npz, read_video, Durations, Features, IngestError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A public feature release, as its preset in `config/presets/` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// `<vid>.npy` per video; durations in a separate file; Charades-STA lines.
    CharadesI3d,
    /// One HDF5 file, `h5[vid]["c3d_features"]`; ActivityNet Captions JSON with durations.
    ActivitynetC3d,
    /// `clip_features/<vid>.npz` ("features"), one per 2 s; Moment-DETR JSON lines.
    QvhighlightsClip,
    /// One HDF5 file, `h5[vid]`; TACoS JSON, times in frames.
    TacosC3d,
    /// One HDF5 file, `h5[vid]`, one feature per second; DiDeMo JSON, 5-second segments.
    Didemo,
    /// One HDF5 file, `h5[movie]`, five features per second; MAD JSON.
    MadClip,
}

impl Release {
    /// Every release, by its preset's name.
    pub const ALL: [(&'static str, Release); 6] = [
        ("charades-i3d", Release::CharadesI3d),
        ("activitynet-c3d", Release::ActivitynetC3d),
        ("qvhighlights-clip", Release::QvhighlightsClip),
        ("tacos-c3d", Release::TacosC3d),
        ("didemo", Release::Didemo),
        ("mad-clip", Release::MadClip),
    ];

    /// Features per second where the release has a fixed rate (its preset's
    /// `ingest.features_per_second`); `None` where durations come from a file.
    fn rate(self) -> Option<f64> {
        match self {
            Release::QvhighlightsClip => Some(0.5),
            Release::Didemo => Some(1.0),
            Release::MadClip => Some(5.0),
            Release::CharadesI3d | Release::ActivitynetC3d | Release::TacosC3d => None,
        }
    }

    /// The format its annotation file is in.
    pub fn format(self) -> AnnotationFormat {
        match self {
            Release::CharadesI3d => AnnotationFormat::Charades,
            Release::ActivitynetC3d => AnnotationFormat::Activitynet,
            Release::QvhighlightsClip => AnnotationFormat::MomentDetr,
            Release::TacosC3d => AnnotationFormat::Tacos,
            Release::Didemo => AnnotationFormat::Didemo,
            Release::MadClip => AnnotationFormat::Mad,
        }
    }
}

impl std::str::FromStr for Release {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Release::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = Release::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown release {name:?}; one of {}", names.join(", "))
            })
    }
}

/// What [`write`] wrote.
#[derive(Debug)]
pub struct Written {
    /// The feature file or folder to give `propose`.
    pub features: PathBuf,
    /// The annotation file, in the release's format.
    pub annotations: PathBuf,
    /// The file durations come from (`ingest.durations_file`), where the release needs one.
    pub durations: Option<PathBuf>,
}

/// Why a release layout cannot be written.
#[derive(Debug, Error)]
pub enum ReleaseError {
    /// The world's ground truth cannot be read.
    #[error(transparent)]
    Annotations(#[from] DatasetError),
    /// A video of the world cannot be read.
    #[error(transparent)]
    Video(#[from] IngestError),
    /// A file cannot be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// One video as the release stores it: its features and its duration on the release's clock.
struct Stored {
    features: Features,
    duration: f64,
    /// Seconds of the release per second of the world.
    scale: f64,
}

/// Writes the world in `world` (features/ and gt.jsonl, as `synth` makes them) into `out` in
/// `release`'s layout.
pub fn write(world: &Path, release: Release, out: &Path) -> Result<Written, ReleaseError> {
    let moments = read_annotations(&world.join("gt.jsonl"), None)?;
    let (refs, _) = collect_videos(&[world.join("features")]);
    let ingest = IngestConfig {
        features_per_second: 0.0,
        durations_file: String::new(),
        ..crate::config::Config::default().ingest
    };
    let mut videos = BTreeMap::new();
    for video_ref in &refs {
        let video = read_video(video_ref, &ingest, &Durations::default())?;
        let features = video.features().clone();
        let duration = match release.rate() {
            Some(rate) => features.frames as f64 / rate,
            None => video.duration,
        };
        let scale = duration / video.duration;
        videos.insert(
            video.id.clone(),
            Stored {
                features,
                duration,
                scale,
            },
        );
    }
    let moments: Vec<(&Moment, &Stored)> = moments
        .iter()
        .filter_map(|m| Some((m, videos.get(&m.vid)?)))
        .collect();
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| ReleaseError::Write { path, message }
    };
    std::fs::create_dir_all(out).map_err(|e| fail(out)(e.to_string()))?;
    let window = |m: &Moment, v: &Stored| [m.windows[0][0] * v.scale, m.windows[0][1] * v.scale];
    let text_file = |name: &str, text: String| -> Result<PathBuf, ReleaseError> {
        let path = out.join(name);
        write_atomic(&path, text.as_bytes(), Durability::None)
            .map_err(|e| fail(&path)(e.to_string()))?;
        Ok(path)
    };
    let json_file = |name: &str, value: Value| text_file(name, value.to_string());
    let written = match release {
        Release::CharadesI3d => {
            let folder = out.join("i3d_features");
            for (vid, video) in &videos {
                let path = folder.join(format!("{vid}.npy"));
                write_features(&path, |file| npy::write(file, &video.features))?;
            }
            let lines: String = moments
                .iter()
                .map(|(m, v)| {
                    let [start, end] = window(m, v);
                    format!("{} {start:.2} {end:.2}##{}\n", m.vid, m.query)
                })
                .collect();
            // As PSVL's Charades-STA files carry them: the durations Charades-STA lacks.
            let durations: Vec<Value> = videos
                .iter()
                .map(|(vid, v)| json!({"vid": vid, "duration": v.duration}))
                .collect();
            Written {
                features: folder,
                annotations: text_file("charades_sta_test.txt", lines)?,
                durations: Some(json_file("durations.json", Value::Array(durations))?),
            }
        }
        Release::ActivitynetC3d => {
            let features = out.join("sub_activitynet_v1-3.c3d.hdf5");
            write_hdf5(&features, &videos, Some("c3d_features"))?;
            let mut entries = serde_json::Map::new();
            for (vid, video) in &videos {
                let (timestamps, sentences): (Vec<[f64; 2]>, Vec<&str>) = moments
                    .iter()
                    .filter(|(m, _)| &m.vid == vid)
                    .map(|(m, v)| (window(m, v), m.query.as_str()))
                    .unzip();
                entries.insert(
                    vid.clone(),
                    json!({"duration": video.duration, "timestamps": timestamps, "sentences": sentences}),
                );
            }
            let annotations = json_file("val_1.json", Value::Object(entries))?;
            Written {
                features,
                durations: Some(annotations.clone()),
                annotations,
            }
        }
        Release::QvhighlightsClip => {
            let folder = out.join("clip_features");
            for (vid, video) in &videos {
                let path = folder.join(format!("{vid}.npz"));
                write_features(&path, |file| {
                    npz::write(file, &[("features", &video.features)])
                })?;
            }
            let lines: String = moments
                .iter()
                .zip(1..)
                .map(|((m, v), qid)| {
                    let line = json!({"qid": qid, "query": m.query, "duration": v.duration,
                        "vid": m.vid, "relevant_windows": [window(m, v)]});
                    format!("{line}\n")
                })
                .collect();
            Written {
                features: folder,
                annotations: text_file("highlight_val_release.jsonl", lines)?,
                durations: None,
            }
        }
        Release::TacosC3d => {
            const FPS: f64 = 30.0;
            let features = out.join("tall_c3d_features.hdf5");
            write_hdf5(&features, &videos, None)?;
            let mut entries = serde_json::Map::new();
            for (vid, video) in &videos {
                let (timestamps, sentences): (Vec<[f64; 2]>, Vec<&str>) = moments
                    .iter()
                    .filter(|(m, _)| &m.vid == vid)
                    .map(|(m, v)| {
                        let [start, end] = window(m, v);
                        (
                            [(start * FPS).round(), (end * FPS).round()],
                            m.query.as_str(),
                        )
                    })
                    .unzip();
                entries.insert(
                    format!("{vid}.avi"),
                    json!({"num_frames": (video.duration * FPS).round(), "fps": FPS,
                        "timestamps": timestamps, "sentences": sentences}),
                );
            }
            let annotations = json_file("test.json", Value::Object(entries))?;
            Written {
                features,
                durations: Some(annotations.clone()),
                annotations,
            }
        }
        Release::Didemo => {
            const SEGMENT: f64 = 5.0;
            let features = out.join("didemo_features.h5");
            write_hdf5(&features, &videos, None)?;
            let entries: Vec<Value> = moments
                .iter()
                .map(|(m, v)| {
                    let segments = (v.duration / SEGMENT).ceil().max(1.0) as u32;
                    let [start, end] = window(m, v);
                    let first = ((start / SEGMENT).floor() as u32).min(segments - 1);
                    let last = ((end / SEGMENT).ceil() as u32)
                        .saturating_sub(1)
                        .clamp(first, segments - 1);
                    json!({"video": format!("{}.mp4", m.vid), "description": m.query,
                        "times": [[first, last]], "num_segments": segments})
                })
                .collect();
            Written {
                features,
                annotations: json_file("val_data.json", Value::Array(entries))?,
                durations: None,
            }
        }
        Release::MadClip => {
            let features = out.join("CLIP_frames_features_5fps.h5");
            write_hdf5(&features, &videos, None)?;
            let mut entries = serde_json::Map::new();
            for (i, (m, v)) in moments.iter().enumerate() {
                entries.insert(
                    i.to_string(),
                    json!({"movie": m.vid, "sentence": m.query, "timestamps": window(m, v),
                        "movie_duration": v.duration}),
                );
            }
            Written {
                features,
                annotations: json_file("MAD_val.json", Value::Object(entries))?,
                durations: None,
            }
        }
    };
    Ok(written)
}

/// Writes one feature file through `write` (made whole, then renamed into place).
fn write_features(
    path: &Path,
    write: impl FnOnce(&mut std::io::Cursor<Vec<u8>>) -> std::io::Result<()>,
) -> Result<(), ReleaseError> {
    let fail = |message: String| ReleaseError::Write {
        path: path.to_path_buf(),
        message,
    };
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| fail(e.to_string()))?;
    }
    let mut buffer = std::io::Cursor::new(Vec::new());
    write(&mut buffer).map_err(|e| fail(e.to_string()))?;
    write_atomic(path, buffer.get_ref(), Durability::None).map_err(|e| fail(e.to_string()))
}

/// Every video into one HDF5 file: `h5[vid][dataset]`, or `h5[vid]` itself without one.
#[cfg(feature = "hdf5")]
fn write_hdf5(
    path: &Path,
    videos: &BTreeMap<String, Stored>,
    dataset: Option<&str>,
) -> Result<(), ReleaseError> {
    let fail = |e: hdf5::Error| ReleaseError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = hdf5::File::create(path).map_err(fail)?;
    for (vid, video) in videos {
        let f = &video.features;
        let data = ndarray::ArrayView2::from_shape((f.frames, f.dim), &f.data).map_err(|e| {
            ReleaseError::Write {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let builder = match dataset {
            Some(name) => file
                .create_group(vid)
                .map_err(fail)?
                .new_dataset_builder()
                .with_data(&data)
                .create(name),
            None => file
                .new_dataset_builder()
                .with_data(&data)
                .create(vid.as_str()),
        };
        builder.map_err(fail)?;
    }
    file.close().map_err(fail)
}

#[cfg(not(feature = "hdf5"))]
fn write_hdf5(
    path: &Path,
    _videos: &BTreeMap<String, Stored>,
    _dataset: Option<&str>,
) -> Result<(), ReleaseError> {
    Err(ReleaseError::Write {
        path: path.to_path_buf(),
        message: "this momentminer was built without HDF5 (the hdf5 feature)".into(),
    })
}
