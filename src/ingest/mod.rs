//! Ingest: feature files on disk → [`Video`]s with a duration and one or more feature streams.
//!
//! Formats: `.npy` (one stream), `.npz` (named streams) and, with the `hdf5` feature, HDF5
//! files holding many videos (ActivityNet's `h5[vid]["c3d_features"]`).

#[cfg(feature = "hdf5")]
mod hdf5;
pub mod npy;
pub mod npz;
mod sidecar;

use crate::config::{IngestConfig, NonFinitePolicy};
use crate::failure::Reason;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use sidecar::{Durations, MAX_SIDECAR_BYTES};

/// A `frames × dim` matrix of features, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// Rows: time steps.
    pub frames: usize,
    /// Columns: the feature width.
    pub dim: usize,
    /// `frames × dim` values, row after row.
    pub data: Vec<f32>,
}

impl Features {
    /// The features of step `t`.
    pub fn row(&self, t: usize) -> &[f32] {
        &self.data[t * self.dim..(t + 1) * self.dim]
    }
}

#[derive(Debug, Clone, PartialEq)]
/// One named stream of a feature file (an `.npz` member, or the only array of an `.npy`).
pub struct Stream {
    /// Its name: the `.npz` member's (`clip`, `i3d`, ...), or the stem of an `.npy`.
    pub name: String,
    /// Its features.
    pub features: Features,
}

#[derive(Debug, Clone)]
/// One video as read: its streams and its duration.
pub struct Video {
    /// The video id: the file stem, or the HDF5 key.
    pub id: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Seconds.
    pub duration: f64,
    /// Every stream the file holds; `primary` indexes the one that drives proposals.
    pub streams: Vec<Stream>,
    /// Index of the stream proposals are found on (`ingest.stream_preference`).
    pub primary: usize,
}

impl Video {
    /// The stream proposals are found on.
    pub fn features(&self) -> &Features {
        &self.streams[self.primary].features
    }
}

/// What is wrong with an input, without the file name (see [`IngestError`]).
#[derive(Debug, Error)]
pub enum Problem {
    #[error("I/O error: {0}")]
    /// Reading failed.
    Io(#[from] std::io::Error),
    #[error("not a .npy array (bad magic bytes)")]
    /// Not the `.npy` magic bytes.
    BadMagic,
    #[error("malformed header: {0}")]
    /// An `.npy` header that cannot be parsed.
    BadHeader(String),
    #[error("truncated: needs {expected} bytes of data, {found} present")]
    /// The data ends before the header says it does.
    Truncated {
        /// Bytes of data the header promises.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    #[error("unsupported dtype '{0}' (float16, float32 and float64 are read)")]
    /// An element type other than float16, float32 and float64.
    UnsupportedDtype(String),
    /// Decoding would take more memory than `ingest.max_bytes` allows.
    #[error("decoding needs {bytes} bytes, over ingest.max_bytes = {max_bytes}")]
    OverBudget {
        /// What the header's shape needs (saturated at `u64::MAX`).
        bytes: u64,
        /// `ingest.max_bytes`, or what is left of it after the file's earlier streams.
        max_bytes: u64,
    },
    /// The memory for the features cannot be had now (the allocation failed, not aborted).
    #[error("cannot allocate {bytes} bytes for the features")]
    OutOfMemory {
        /// What was asked for.
        bytes: u64,
    },
    #[error("shape {shape:?} has rank != 2 after squeezing length-1 axes; expected (T, D)")]
    /// Not a matrix after squeezing length-1 axes.
    Rank {
        /// The shape as stored.
        shape: Vec<usize>,
    },
    #[error("shape ({frames}, {dim}) exceeds the limits (ingest.max_frames = {max_frames}, ingest.max_dim = {max_dim})")]
    /// Over `ingest.max_frames` or `ingest.max_dim`.
    TooLarge {
        /// Steps the file claims.
        frames: usize,
        /// Width the file claims.
        dim: usize,
        /// `ingest.max_frames`.
        max_frames: usize,
        /// `ingest.max_dim`.
        max_dim: usize,
    },
    #[error("no frames (T = 0)")]
    /// T = 0.
    NoFrames,
    #[error("zero-width features (D = 0)")]
    /// D = 0.
    NoDims,
    #[error("{count} NaN/Inf values in stream '{stream}' (ingest.non_finite = \"reject\")")]
    /// NaN or Inf values, refused by `ingest.non_finite = "reject"`.
    NonFinite {
        /// The stream holding them.
        stream: String,
        /// How many.
        count: usize,
    },
    #[error("not a valid archive: {0}")]
    /// A zip archive (`.npz`) that cannot be read.
    Archive(String),
    #[error("no stream named '{wanted}'; the file holds {available:?}")]
    /// The configured stream is not in the file.
    MissingStream {
        /// The stream asked for.
        wanted: String,
        /// The streams the file holds.
        available: Vec<String>,
    },
    /// The HDF5 library refused the file (or the entry `what` names).
    #[cfg(feature = "hdf5")]
    #[error("HDF5{what}: {source}")]
    Hdf5 {
        /// The entry, where one entry failed: " 'key/dataset'".
        what: String,
        /// What the library said.
        #[source]
        source: ::hdf5::Error,
    },
    #[error("no duration: no sidecar {sidecar}, not in ingest.durations_file, and ingest.features_per_second is 0")]
    /// No duration from any source.
    MissingDuration {
        /// The sidecar that was looked for.
        sidecar: PathBuf,
    },
    #[error("bad duration {0} seconds in the sidecar or durations file (must be finite and > 0)")]
    /// A duration that is not finite and positive.
    BadDuration(f64),
    #[error("sidecar {path} is unreadable: {message}")]
    /// A sidecar that cannot be read or parsed.
    BadSidecar {
        /// The sidecar.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    #[error("video id '{0}' cannot name an output file (empty, '.', '..', or contains a path separator or NUL)")]
    /// A video id that cannot name an output file.
    BadVideoId(String),
    /// A file name that cannot name a video: not UTF-8.
    #[error("the file name {0:?} is not UTF-8, so it names no video id; rename the file")]
    BadName(String),
    /// A FIFO, socket or device where a file was expected.
    #[error("not a regular file (a FIFO, socket or device)")]
    NotRegularFile,
    /// Not a feature file type.
    #[error("unsupported file type (expected .npy, .npz{})", if cfg!(feature = "hdf5") { ", .h5 or .hdf5" } else { "; HDF5 support is not built in" })]
    UnsupportedType,
}

impl Problem {
    /// A stable, machine-readable name for the kind of problem (quarantine records, metrics).
    pub fn code(&self) -> Reason {
        match self {
            Problem::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Reason::Truncated,
            Problem::Io(e) if crate::fsio::is_name_too_long(e) => Reason::BadName,
            Problem::Io(_) => Reason::Io,
            Problem::BadMagic => Reason::BadMagic,
            Problem::BadHeader(_) => Reason::BadHeader,
            Problem::Truncated { .. } => Reason::Truncated,
            Problem::UnsupportedDtype(_) => Reason::UnsupportedDtype,
            Problem::Rank { .. } => Reason::BadRank,
            Problem::TooLarge { .. } => Reason::TooLarge,
            Problem::NoFrames => Reason::NoFrames,
            Problem::NoDims => Reason::NoDims,
            Problem::NonFinite { .. } => Reason::NonFinite,
            Problem::Archive(_) => Reason::BadArchive,
            Problem::MissingStream { .. } => Reason::MissingStream,
            #[cfg(feature = "hdf5")]
            Problem::Hdf5 { .. } => Reason::Hdf5,
            Problem::NotRegularFile => Reason::NotRegularFile,
            Problem::BadName(_) => Reason::BadName,
            Problem::OverBudget { .. } => Reason::TooLarge,
            Problem::OutOfMemory { .. } => Reason::OutOfMemory,
            Problem::MissingDuration { .. } => Reason::MissingDuration,
            Problem::BadDuration(_) => Reason::BadDuration,
            Problem::BadSidecar { .. } => Reason::BadSidecar,
            Problem::BadVideoId(_) => Reason::BadVideoId,
            Problem::UnsupportedType => Reason::UnsupportedType,
        }
    }
}

#[derive(Debug, Error)]
#[error("{}{}: {problem}", path.display(), key.as_ref().map(|k| format!(" [{k}]")).unwrap_or_default())]
/// An input that cannot be read: the file (and HDF5 key), and what is wrong.
pub struct IngestError {
    /// The file.
    pub path: PathBuf,
    /// The entry inside a many-video file (HDF5 key), when the problem is confined to it.
    pub key: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl IngestError {
    fn new(path: &Path, key: Option<&str>, problem: Problem) -> Self {
        IngestError {
            path: path.to_path_buf(),
            key: key.map(str::to_string),
            problem,
        }
    }

    /// I/O failures other than short reads may succeed on retry, and so may an HDF5 file that
    /// its writer still holds locked; format problems never do.
    pub fn is_transient(&self) -> bool {
        match &self.problem {
            Problem::Io(e) => {
                e.kind() != std::io::ErrorKind::UnexpectedEof && !crate::fsio::is_name_too_long(e)
            }
            // Memory may be free again later; tries are counted, so this ends.
            Problem::OutOfMemory { .. } => true,
            #[cfg(feature = "hdf5")]
            Problem::Hdf5 { source, .. } => source.to_string().contains("lock"),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
/// The largest features accepted, checked from the header before anything is read or
/// allocated: a header's claim is all a reader knows then, and the bytes behind it are read
/// only up to what the limits allow.
pub struct Limits {
    /// `ingest.max_frames`.
    pub max_frames: usize,
    /// `ingest.max_dim`.
    pub max_dim: usize,
    /// `ingest.max_bytes`: what one input may take to decode, all its streams together.
    pub max_bytes: u64,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &IngestConfig) -> Limits {
        Limits {
            max_frames: config.max_frames,
            max_dim: config.max_dim,
            max_bytes: config.max_bytes,
        }
    }

    /// `TooLarge` when a claimed shape exceeds a limit, or its elements of `element_bytes`
    /// each (as stored, and as the f32s they decode to) exceed the byte budget.
    pub fn check(&self, frames: usize, dim: usize, element_bytes: usize) -> Result<(), Problem> {
        if frames > self.max_frames || dim > self.max_dim {
            return Err(Problem::TooLarge {
                frames,
                dim,
                max_frames: self.max_frames,
                max_dim: self.max_dim,
            });
        }
        let bytes = (frames as u64)
            .saturating_mul(dim as u64)
            .saturating_mul(element_bytes.max(4) as u64);
        if bytes > self.max_bytes {
            return Err(Problem::OverBudget {
                bytes,
                max_bytes: self.max_bytes,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The kinds of feature file read.
pub enum FileKind {
    /// `.npy`: one array.
    Npy,
    /// `.npz`: named arrays (streams).
    Npz,
    /// `.h5`/`.hdf5`: many videos, one per top-level key.
    Hdf5,
}

impl FileKind {
    /// The kind of feature file a path names, judged by its extension; `None` for other files
    /// (sidecars, annotations) that folder scans pass over.
    pub fn of(path: &Path) -> Option<FileKind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "npy" => Some(FileKind::Npy),
            "npz" => Some(FileKind::Npz),
            "h5" | "hdf5" => Some(FileKind::Hdf5),
            _ => None,
        }
    }
}

/// One video inside a feature file: the file itself, or one key of an HDF5 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRef {
    /// The file.
    pub path: PathBuf,
    /// The HDF5 key, for a many-video file.
    pub key: Option<String>,
}

impl VideoRef {
    /// The video id: the HDF5 key, or the file stem.
    pub fn id(&self) -> String {
        match &self.key {
            Some(key) => key.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// Names that are never inputs: hidden files and the usual names of files still being written
/// (`.part`, `.tmp`, `.partial`, `.crdownload`, `.swp`, `~`).
pub fn is_temporary_name(name: &str) -> bool {
    const SUFFIXES: [&str; 6] = [".part", ".tmp", ".partial", ".crdownload", ".swp", "~"];
    name.starts_with('.') || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Every file under `dir` (recursively, sorted) whose name is not temporary, with the folders
/// that could not be listed. Symlinked folders are not followed: they can form cycles.
/// Symlinks to files are listed; whoever reads them decides whether to follow.
pub fn walk(dir: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                failures.push((dir, e));
                continue;
            }
        };
        for entry in entries.flatten() {
            if is_temporary_name(&entry.file_name().to_string_lossy()) {
                continue;
            }
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(kind) if kind.is_symlink() && entry.path().is_dir() => {}
                Ok(_) => files.push(entry.path()),
                Err(e) => failures.push((entry.path(), e)),
            }
        }
    }
    files.sort();
    (files, failures)
}

/// The videos a feature file holds, without reading their features.
pub fn list_videos(path: &Path) -> Result<Vec<VideoRef>, IngestError> {
    let single = || {
        vec![VideoRef {
            path: path.to_path_buf(),
            key: None,
        }]
    };
    match FileKind::of(path) {
        Some(FileKind::Npy | FileKind::Npz) => {
            // The stem is the video id, and ids are text: a name that is not UTF-8 would be
            // read as some other id (and two such names as the same one).
            let stem = path.file_stem().unwrap_or_default();
            if stem.to_str().is_none() {
                let problem = Problem::BadName(stem.to_string_lossy().into_owned());
                return Err(IngestError::new(path, None, problem));
            }
            Ok(single())
        }
        #[cfg(feature = "hdf5")]
        Some(FileKind::Hdf5) => Ok(hdf5::list(path)
            .map_err(|problem| IngestError::new(path, None, problem))?
            .into_iter()
            .map(|key| VideoRef {
                path: path.to_path_buf(),
                key: Some(key),
            })
            .collect()),
        _ => Err(IngestError::new(path, None, Problem::UnsupportedType)),
    }
}

/// Reads one video: its streams, checked, and its duration.
pub fn read_video(
    video: &VideoRef,
    config: &IngestConfig,
    durations: &Durations,
) -> Result<Video, IngestError> {
    let path = video.path.as_path();
    let id = video.id();
    let fail = |problem| IngestError::new(path, video.key.as_deref(), problem);
    check_video_id(&id).map_err(fail)?;
    let limits = Limits::of(config);
    let mut streams = match (FileKind::of(path), video.key.as_deref()) {
        (Some(FileKind::Npy), None) => {
            let file = open_input(path).map_err(fail)?;
            let len = file.metadata().map_err(|e| fail(Problem::Io(e)))?.len();
            let features = npy::read(std::io::BufReader::new(file), len, &limits).map_err(fail)?;
            vec![Stream {
                name: "features".into(),
                features,
            }]
        }
        (Some(FileKind::Npz), None) => npz::read(path, &limits).map_err(fail)?,
        #[cfg(feature = "hdf5")]
        (Some(FileKind::Hdf5), Some(key)) => vec![Stream {
            name: config.hdf5_dataset.clone(),
            features: hdf5::read(path, key, &config.hdf5_dataset, &limits).map_err(fail)?,
        }],
        _ => return Err(fail(Problem::UnsupportedType)),
    };
    for stream in &mut streams {
        check_features(stream, config.non_finite).map_err(fail)?;
    }
    let primary = pick_stream(&streams, config).map_err(fail)?;
    let frames = streams[primary].features.frames;
    let duration = durations
        .resolve(path, &id, frames, config.features_per_second)
        .map_err(fail)?;
    Ok(Video {
        id,
        source: path.to_path_buf(),
        duration,
        streams,
        primary,
    })
}

/// Opens a feature file through [`crate::fsio::open_regular`], so a FIFO or device named like
/// one is refused (permanently) instead of blocking or feeding bytes forever.
pub(crate) fn open_input(path: &Path) -> Result<std::fs::File, Problem> {
    crate::fsio::open_regular(path, true).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => Problem::NotRegularFile,
        _ => Problem::Io(e),
    })
}

/// Video ids become output file names, so they must not be able to leave the output folder.
pub fn check_video_id(id: &str) -> Result<(), Problem> {
    let bad = id.is_empty() || id == "." || id == ".." || id.contains(['/', '\\', '\0']);
    if bad {
        return Err(Problem::BadVideoId(id.to_string()));
    }
    Ok(())
}

fn check_features(stream: &mut Stream, policy: NonFinitePolicy) -> Result<(), Problem> {
    let f = &mut stream.features;
    if f.frames == 0 {
        return Err(Problem::NoFrames);
    }
    if f.dim == 0 {
        return Err(Problem::NoDims);
    }
    let count = f.data.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        match policy {
            NonFinitePolicy::Reject => {
                return Err(Problem::NonFinite {
                    stream: stream.name.clone(),
                    count,
                })
            }
            NonFinitePolicy::Zero => {
                tracing::warn!(stream = %stream.name, count, "replacing NaN/Inf feature values with 0");
                f.data
                    .iter_mut()
                    .filter(|v| !v.is_finite())
                    .for_each(|v| *v = 0.0);
            }
        }
    }
    bring_into_range(f);
    Ok(())
}

/// Largest magnitude a stream keeps as it is: sums of squares of up to 2^16 values of it and
/// sums of up to 2^60 of them stay far below f32's 3.4e38, so no mean, norm or dot product of
/// the stages can overflow. Real features are many orders of magnitude smaller.
const MAX_MAGNITUDE: f32 = (1u64 << 40) as f32;

/// Scales a stream whose values could overflow a stage's arithmetic by an exact power of two,
/// so its largest magnitude lies in [1, 2). Every stage is invariant to scaling a stream
/// (means are linear; similarities, pseudo-query scores and the model's inputs are cosines or
/// unit vectors), so results do not change; finite input can no longer become a NaN score.
fn bring_into_range(features: &mut Features) {
    let largest = features.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    if largest <= MAX_MAGNITUDE {
        return;
    }
    // largest = m · 2^e with m in [0.5, 1); 2^(1 - e) is exact in f64, where f32's smallest
    // normal exponent does not get in the way.
    let exponent = (largest.to_bits() >> 23 & 0xff) as i32 - 126;
    let scale = 2f64.powi(1 - exponent);
    features
        .data
        .iter_mut()
        .for_each(|v| *v = (f64::from(*v) * scale) as f32);
}

fn pick_stream(streams: &[Stream], config: &IngestConfig) -> Result<usize, Problem> {
    let names = || streams.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let position = |name: &str| streams.iter().position(|s| s.name == name);
    if config.stream != "auto" {
        return position(&config.stream).ok_or_else(|| Problem::MissingStream {
            wanted: config.stream.clone(),
            available: names(),
        });
    }
    if streams.len() == 1 {
        return Ok(0);
    }
    config
        .stream_preference
        .iter()
        .find_map(|name| position(name))
        .ok_or_else(|| Problem::MissingStream {
            wanted: format!("auto (one of {:?})", config.stream_preference),
            available: names(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn write_npy(dir: &Path, name: &str, features: &Features) -> PathBuf {
        let path = dir.join(name);
        npy::write(std::fs::File::create(&path).unwrap(), features).unwrap();
        path
    }

    fn read_file(
        path: &Path,
        config: &IngestConfig,
        durations: &Durations,
    ) -> Result<Vec<Video>, IngestError> {
        list_videos(path)?
            .iter()
            .map(|v| read_video(v, config, durations))
            .collect()
    }

    fn features(frames: usize, dim: usize) -> Features {
        Features {
            frames,
            dim,
            data: (0..frames * dim).map(|i| i as f32).collect(),
        }
    }

    #[test]
    fn duration_comes_from_sidecar_then_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_npy(dir.path(), "vid1.npy", &features(10, 4));
        let mut config = Config::default().ingest;
        let none = Durations::default();
        let err = read_file(&path, &config, &none).unwrap_err().to_string();
        assert!(
            err.contains("vid1.npy") && err.contains("no duration"),
            "{err}"
        );
        config.features_per_second = 2.0;
        assert_eq!(read_file(&path, &config, &none).unwrap()[0].duration, 5.0);
        std::fs::write(dir.path().join("vid1.json"), r#"{"duration": 31.5}"#).unwrap();
        let video = &read_file(&path, &config, &none).unwrap()[0];
        assert_eq!((video.id.as_str(), video.duration), ("vid1", 31.5));
    }

    #[test]
    fn non_finite_values_are_rejected_or_zeroed_by_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = features(4, 3);
        f.data[2] = f32::NAN;
        f.data[7] = f32::INFINITY;
        let path = write_npy(dir.path(), "nan.npy", &f);
        let mut config = Config::default().ingest;
        config.features_per_second = 1.0;
        let err = read_file(&path, &config, &Durations::default()).unwrap_err();
        assert!(err.to_string().contains("2 NaN/Inf"), "{err}");
        assert!(!err.is_transient());
        config.non_finite = NonFinitePolicy::Zero;
        let video = &read_file(&path, &config, &Durations::default()).unwrap()[0];
        assert_eq!(video.features().data[2], 0.0);
        assert_eq!(video.features().data[7], 0.0);
    }

    #[test]
    fn zero_frames_and_escaping_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_npy(dir.path(), "empty.npy", &features(0, 8));
        let mut config = Config::default().ingest;
        config.features_per_second = 1.0;
        let err = read_file(&path, &config, &Durations::default()).unwrap_err();
        assert!(err.to_string().contains("T = 0"), "{err}");
        for id in ["", ".", "..", "a/b", "a\\b"] {
            assert!(check_video_id(id).is_err(), "{id:?}");
        }
        assert!(check_video_id("v_ab.c d é").is_ok());
    }

    #[test]
    fn huge_finite_features_are_scaled_into_range_exactly() {
        let mut big = Features {
            frames: 2,
            dim: 2,
            data: vec![3e38, -3e38, 1.5e38, 7.0],
        };
        bring_into_range(&mut big);
        let largest = big.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((1.0..2.0).contains(&largest), "{:?}", big.data);
        assert_eq!(big.data[0], -big.data[1]);
        assert_eq!(
            big.data[0],
            2.0 * big.data[2],
            "a power of two keeps ratios exact"
        );
        let mut normal = Features {
            frames: 1,
            dim: 2,
            data: vec![0.25, -1e6],
        };
        let before = normal.clone();
        bring_into_range(&mut normal);
        assert_eq!(normal, before, "real features are left as they are");
    }
}
