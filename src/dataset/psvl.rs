//! PSVL's JSON list: `{"vid", "duration", "timestamp": [s, e] normalised, "tokens" | "sentence"}`.

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Entry {
    vid: String,
    duration: f64,
    timestamp: [f64; 2],
    #[serde(default)]
    sentence: Option<String>,
    #[serde(default)]
    tokens: Vec<String>,
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let entries: Vec<Entry> =
        serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))?;
    Ok(entries
        .into_iter()
        .map(|e| Moment {
            query: e.sentence.unwrap_or_else(|| e.tokens.join(" ")),
            windows: vec![[e.timestamp[0] * e.duration, e.timestamp[1] * e.duration]],
            duration: Some(e.duration),
            vid: e.vid,
        })
        .collect())
}
