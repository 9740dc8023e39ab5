//! TACoS, as 2D-TAN and its successors ship it: `{vid: {"num_frames": n, "fps": f,
//! "timestamps": [[start frame, end frame], ...], "sentences": [...]}}`: times in frames.

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
struct Entry {
    num_frames: f64,
    fps: f64,
    timestamps: Vec<[f64; 2]>,
    sentences: Vec<String>,
}

/// One moment per sentence, its frames turned into seconds.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let entries: BTreeMap<String, Entry> =
        serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))?;
    let mut moments = Vec::new();
    for (vid, entry) in entries {
        let fail =
            |message: String| DatasetError::new(path, None, format!("video {vid}: {message}"));
        if !(entry.fps.is_finite() && entry.fps > 0.0) {
            return Err(fail(format!("fps {} is not a positive number", entry.fps)));
        }
        if entry.timestamps.len() != entry.sentences.len() {
            return Err(fail(format!(
                "{} timestamps but {} sentences",
                entry.timestamps.len(),
                entry.sentences.len()
            )));
        }
        let vid = vid.strip_suffix(".avi").unwrap_or(&vid).to_string();
        for ([start, end], sentence) in entry.timestamps.into_iter().zip(entry.sentences) {
            moments.push(Moment {
                vid: vid.clone(),
                query: sentence.trim().to_string(),
                duration: Some(entry.num_frames / entry.fps),
                windows: vec![[start / entry.fps, end / entry.fps]],
                confidence: None,
            });
        }
    }
    Ok(moments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_seconds() {
        let text = r#"{"s13-d21.avi": {"num_frames": 3000, "fps": 30.0,
            "timestamps": [[300, 900]], "sentences": ["The person takes out a knife. "]}}"#;
        let moments = parse(Path::new("t.json"), text).unwrap();
        assert_eq!(
            moments,
            [Moment {
                vid: "s13-d21".into(),
                query: "The person takes out a knife.".into(),
                duration: Some(100.0),
                windows: vec![[10.0, 30.0]],
                confidence: None,
            }]
        );
        let bad = r#"{"v": {"num_frames": 10, "fps": 0, "timestamps": [], "sentences": []}}"#;
        assert!(parse(Path::new("t.json"), bad)
            .unwrap_err()
            .to_string()
            .contains("fps"));
    }
}
