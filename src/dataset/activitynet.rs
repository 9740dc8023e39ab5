//! ActivityNet Captions: `{vid: {"duration": s, "timestamps": [[s, e], ...], "sentences": [...]}}`.

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
struct Entry {
    duration: f64,
    timestamps: Vec<[f64; 2]>,
    sentences: Vec<String>,
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let entries: BTreeMap<String, Entry> =
        serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))?;
    let mut moments = Vec::new();
    for (vid, entry) in entries {
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
            });
        }
    }
    Ok(moments)
}
