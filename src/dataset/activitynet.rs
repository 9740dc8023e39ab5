//! ActivityNet Captions: `{vid: {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}`.

use super::{DatasetError, Moment};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One video's entry; fields we do not use are kept, so writing it back loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Seconds.
    pub duration: f64,
    /// Each sentence's span, seconds.
    pub timestamps: Vec<[f64; 2]>,
    /// The sentences, in the order of `timestamps`.
    pub sentences: Vec<String>,
    #[serde(flatten)]
    /// Fields we do not use, kept so a file round-trips.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The entries of an ActivityNet Captions file, by video id.
pub fn read(path: &Path, text: &str) -> Result<BTreeMap<String, Entry>, DatasetError> {
    serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))
}

/// The file's text for `entries`.
pub fn write(entries: &BTreeMap<String, Entry>) -> Result<String, serde_json::Error> {
    serde_json::to_string(entries)
}

/// One moment per sentence.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let mut moments = Vec::new();
    for (vid, entry) in read(path, text)? {
        if entry.timestamps.len() != entry.sentences.len() {
            return Err(DatasetError::new(
                path,
                None,
                format!(
                    "video {vid}: {} timestamps but {} sentences",
                    entry.timestamps.len(),
                    entry.sentences.len()
                ),
            ));
        }
        for (window, sentence) in entry.timestamps.into_iter().zip(entry.sentences) {
            moments.push(Moment {
                vid: vid.clone(),
                query: sentence.trim().to_string(),
                duration: Some(entry.duration),
                windows: vec![window],
                confidence: None,
            });
        }
    }
    Ok(moments)
}
