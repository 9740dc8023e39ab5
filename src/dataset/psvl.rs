//! PSVL's JSON list: `{"vid", "duration", "timestamp": [s, e] normalised, "tokens" | "sentence"}`.

use super::{DatasetError, Moment, PseudoLabel};
use serde::{Deserialize, Serialize};
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

#[derive(Serialize)]
struct OutEntry<'a> {
    vid: &'a str,
    duration: f64,
    timestamp: [f64; 2],
    tokens: &'a [String],
}

/// The whole JSON list PSVL's trainer loads; timestamps normalised by the duration.
pub fn write(labels: &[PseudoLabel]) -> Result<String, serde_json::Error> {
    let entries: Vec<OutEntry> = labels
        .iter()
        .map(|l| OutEntry {
            vid: &l.vid,
            duration: l.duration,
            timestamp: [l.start / l.duration, l.end / l.duration],
            tokens: &l.tokens,
        })
        .collect();
    serde_json::to_string(&entries)
}
