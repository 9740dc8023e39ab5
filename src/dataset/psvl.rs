//! PSVL's JSON list: `{"vid", "duration", "timestamp": [s, e] normalised, "tokens" | "sentence"}`.

use super::{DatasetError, Moment, PseudoLabel};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One entry; fields we do not use (PSVL's test set has `pos`) are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// Start and end as fractions of the duration.
    pub timestamp: [f64; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The sentence, where the file has one (the test file does).
    pub sentence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The words (the pseudo-labels' query).
    pub tokens: Option<Vec<String>>,
    #[serde(flatten)]
    /// Fields we do not use, kept so a file round-trips.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    /// A pseudo-label as PSVL's trainer reads it: timestamps normalised by the duration.
    pub fn of(label: &PseudoLabel) -> Entry {
        Entry {
            vid: label.vid.clone(),
            duration: label.duration,
            timestamp: [label.start / label.duration, label.end / label.duration],
            sentence: None,
            tokens: Some(label.tokens.clone()),
            extra: serde_json::Map::new(),
        }
    }
}

/// The entries of a PSVL JSON list.
pub fn read(path: &Path, text: &str) -> Result<Vec<Entry>, DatasetError> {
    serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))
}

/// The whole JSON list PSVL's trainer loads.
pub fn write(labels: &[PseudoLabel]) -> Result<String, serde_json::Error> {
    write_entries(&labels.iter().map(Entry::of).collect::<Vec<_>>())
}

/// The JSON list for `entries`.
pub fn write_entries(entries: &[Entry]) -> Result<String, serde_json::Error> {
    serde_json::to_string(entries)
}

/// One moment per entry, its sentence or else its words as the query.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    Ok(read(path, text)?
        .into_iter()
        .map(|e| Moment {
            query: e
                .sentence
                .unwrap_or_else(|| e.tokens.unwrap_or_default().join(" ")),
            windows: vec![[e.timestamp[0] * e.duration, e.timestamp[1] * e.duration]],
            confidence: None,
            duration: Some(e.duration),
            vid: e.vid,
        })
        .collect())
}
