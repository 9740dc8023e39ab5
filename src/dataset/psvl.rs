//! PSVL's JSON list: `{"vid", "duration", "timestamp": [s, e] normalised, "tokens" | "sentence"}`.

use super::{DatasetError, Moment, PseudoLabel};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One entry; fields we do not use (PSVL's test set has `pos`) are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub vid: String,
    pub duration: f64,
    pub timestamp: [f64; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    #[serde(flatten)]
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

pub fn read(path: &Path, text: &str) -> Result<Vec<Entry>, DatasetError> {
    serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))
}

/// The whole JSON list PSVL's trainer loads.
pub fn write(labels: &[PseudoLabel]) -> Result<String, serde_json::Error> {
    write_entries(&labels.iter().map(Entry::of).collect::<Vec<_>>())
}

pub fn write_entries(entries: &[Entry]) -> Result<String, serde_json::Error> {
    serde_json::to_string(entries)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    Ok(read(path, text)?
        .into_iter()
        .map(|e| Moment {
            query: e
                .sentence
                .unwrap_or_else(|| e.tokens.unwrap_or_default().join(" ")),
            windows: vec![[e.timestamp[0] * e.duration, e.timestamp[1] * e.duration]],
            duration: Some(e.duration),
            vid: e.vid,
        })
        .collect())
}
