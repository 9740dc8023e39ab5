//! Where a video's duration in seconds comes from: a `<vid>.json` sidecar beside the feature
//! file, a durations map for a whole dataset, or a configured feature rate.

use super::{IngestError, Problem};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// A dataset-wide map from video id to duration (seconds).
#[derive(Debug, Default, Clone)]
pub struct Durations {
    by_id: HashMap<String, f64>,
}

#[derive(Deserialize)]
struct Sidecar {
    duration: Option<f64>,
    fps: Option<f64>,
}

impl Durations {
    /// Reads a map `{vid: s}`, or the durations any annotation file of the field carries:
    /// ActivityNet Captions `{vid: {"duration": s}}`, TACoS `{vid: {"num_frames", "fps"}}`,
    /// MAD `{id: {"movie", "movie_duration"}}`, PSVL's list and Moment-DETR's lines
    /// (`{"vid", "duration"}` each). An empty path means no map.
    pub fn load(path: &str) -> Result<Durations, IngestError> {
        if path.is_empty() {
            return Ok(Durations::default());
        }
        let path = Path::new(path);
        let fail = |message: String| IngestError {
            path: path.to_path_buf(),
            key: None,
            problem: Problem::BadSidecar {
                path: path.to_path_buf(),
                message,
            },
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let values: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(whole) => vec![whole],
            // JSON lines.
            Err(_) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .map_err(|e| fail(format!("neither JSON nor JSON lines: {e}")))?,
        };
        let mut by_id = HashMap::new();
        for value in &values {
            match value {
                serde_json::Value::Object(entries) if is_record(value) => {
                    let id = entries.get("vid").and_then(|v| v.as_str());
                    let seconds = entries.get("duration").and_then(|d| d.as_f64());
                    if let (Some(id), Some(seconds)) = (id, seconds) {
                        by_id.insert(id.to_string(), seconds);
                    }
                }
                serde_json::Value::Object(entries) => {
                    for (key, entry) in entries {
                        if let Some((id, seconds)) = keyed_duration(key, entry) {
                            by_id.insert(id, seconds);
                        }
                    }
                }
                _ => {}
            }
        }
        if by_id.is_empty() {
            return Err(fail("no video durations in it".into()));
        }
        Ok(Durations { by_id })
    }

    /// The duration in seconds of video `id` of `path`, `frames` long: from its sidecar
    /// (`duration`, or `fps`), else the durations file, else `features_per_second`.
    pub fn resolve(
        &self,
        path: &Path,
        id: &str,
        frames: usize,
        features_per_second: f64,
    ) -> Result<f64, Problem> {
        let sidecar = path.with_file_name(format!("{id}.json"));
        let seconds = match read_sidecar(&sidecar)? {
            Some(Sidecar {
                duration: Some(d), ..
            }) => d,
            Some(Sidecar { fps: Some(fps), .. }) if fps > 0.0 => frames as f64 / fps,
            _ => match self.by_id.get(id) {
                Some(&d) => d,
                None if features_per_second > 0.0 => frames as f64 / features_per_second,
                None => return Err(Problem::MissingDuration { sidecar }),
            },
        };
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(Problem::BadDuration(seconds));
        }
        Ok(seconds)
    }
}

/// One record of a list or of JSON lines (PSVL, Moment-DETR), rather than a map keyed by id.
fn is_record(value: &serde_json::Value) -> bool {
    value.get("vid").is_some_and(|v| v.is_string())
}

/// The video and duration one entry of a map gives: `key: s`, `key: {"duration"}`,
/// `key: {"num_frames", "fps"}` (TACoS, whose keys end in `.avi` where the features' do not),
/// or `id: {"movie", "movie_duration"}` (MAD).
fn keyed_duration(key: &str, entry: &serde_json::Value) -> Option<(String, f64)> {
    let number = |name: &str| entry.get(name).and_then(|v| v.as_f64());
    if let Some(seconds) = entry.as_f64() {
        return Some((key.to_string(), seconds));
    }
    if let Some(seconds) = number("duration") {
        return Some((key.to_string(), seconds));
    }
    if let (Some(frames), Some(fps)) = (number("num_frames"), number("fps")) {
        let id = key.strip_suffix(".avi").unwrap_or(key);
        return Some((id.to_string(), frames / fps));
    }
    let movie = entry.get("movie").and_then(|m| m.as_str())?;
    Some((movie.to_string(), number("movie_duration")?))
}

/// Largest sidecar read: a duration and a frame rate need a few bytes, and a sidecar is read
/// whole.
pub const MAX_SIDECAR_BYTES: u64 = 1 << 20;

/// A sidecar is an input like the feature file beside it: a regular file (a FIFO or a symlink
/// to `/dev/zero` is refused, never waited on or read forever), at most
/// [`MAX_SIDECAR_BYTES`], JSON nested no deeper than serde_json's limit of 128.
fn read_sidecar(path: &Path) -> Result<Option<Sidecar>, Problem> {
    let bad = |message: String| Problem::BadSidecar {
        path: path.to_path_buf(),
        message,
    };
    let file = match crate::fsio::open_regular(path, true) {
        Ok(file) => file,
        // No sidecar, or none can exist: its name would be too long for the file system.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || crate::fsio::is_name_too_long(&e) => {
            return Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Err(bad(e.to_string())),
        Err(e) => return Err(Problem::Io(e)),
    };
    let mut text = String::new();
    file.take(MAX_SIDECAR_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_SIDECAR_BYTES {
        return Err(bad(format!("larger than {MAX_SIDECAR_BYTES} bytes")));
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_activitynet_style_and_plain_maps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"{"v_a": {"duration": 12.5, "timestamps": [[0, 1]]}, "v_b": 3}"#,
        )
        .unwrap();
        let map = Durations::load(path.to_str().unwrap()).unwrap();
        let feature = dir.path().join("x.h5");
        assert_eq!(map.resolve(&feature, "v_a", 10, 0.0).unwrap(), 12.5);
        assert_eq!(map.resolve(&feature, "v_b", 10, 0.0).unwrap(), 3.0);
        assert!(map.resolve(&feature, "v_c", 10, 0.0).is_err());
    }

    #[test]
    fn reads_the_durations_annotation_files_carry() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "tacos.json",
                r#"{"s13-d21.avi": {"num_frames": 300, "fps": 30, "timestamps": [], "sentences": []}}"#,
                "s13-d21",
                10.0,
            ),
            (
                "mad.json",
                r#"{"7": {"movie": "tt01", "sentence": "s", "timestamps": [1, 2], "movie_duration": 7000}}"#,
                "tt01",
                7000.0,
            ),
            (
                "psvl.json",
                r#"[{"vid": "AO8RW", "duration": 33.67, "timestamp": [0, 0.2]}]"#,
                "AO8RW",
                33.67,
            ),
            (
                "md.jsonl",
                "{\"qid\": 1, \"vid\": \"q_1\", \"duration\": 150}\n{\"qid\": 2, \"vid\": \"q_2\", \"duration\": 126}\n",
                "q_2",
                126.0,
            ),
        ];
        let feature = dir.path().join("x.h5");
        for (name, text, vid, seconds) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let map = Durations::load(path.to_str().unwrap()).unwrap();
            assert_eq!(
                map.resolve(&feature, vid, 10, 0.0).unwrap(),
                seconds,
                "{name}"
            );
        }
        let path = dir.path().join("charades.txt");
        std::fs::write(
            &path,
            "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n",
        )
        .unwrap();
        let err = Durations::load(path.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("charades.txt"), "{err}");
    }

    #[test]
    fn sidecar_fps_and_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        let feature = dir.path().join("v.npy");
        std::fs::write(dir.path().join("v.json"), r#"{"fps": 4}"#).unwrap();
        let none = Durations::default();
        assert_eq!(none.resolve(&feature, "v", 10, 0.0).unwrap(), 2.5);
        std::fs::write(dir.path().join("v.json"), r#"{"duration": -1}"#).unwrap();
        assert!(matches!(
            none.resolve(&feature, "v", 10, 0.0),
            Err(Problem::BadDuration(_))
        ));
        std::fs::write(dir.path().join("v.json"), "{oops").unwrap();
        let err = none
            .resolve(&feature, "v", 10, 0.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("v.json"), "{err}");
    }
}
