//! Moment-DETR / QVHighlights JSONL: `{"qid", "query", "vid", "duration", "relevant_windows"}`.

use super::{DatasetError, Moment, PseudoLabel};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line; fields we do not use (QVHighlights' saliency scores, clip ids) are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The query's number.
    pub qid: Option<u64>,
    /// The sentence.
    pub query: String,
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// The sentence's windows, seconds.
    pub relevant_windows: Vec<[f64; 2]>,
    #[serde(flatten)]
    /// Fields we do not use, kept so a file round-trips.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Line {
    /// A pseudo-label's line; a language-free query's embedding goes in `query_embedding`.
    pub fn of(label: &PseudoLabel) -> Line {
        let mut extra = serde_json::Map::new();
        if !label.query_embedding.is_empty() {
            extra.insert(
                "query_embedding".into(),
                label.query_embedding.clone().into(),
            );
        }
        Line {
            qid: Some(label.qid),
            query: label.query.clone(),
            vid: label.vid.clone(),
            duration: label.duration,
            relevant_windows: vec![[label.start, label.end]],
            extra,
        }
    }
}

/// The lines of a JSONL file; a malformed one is an error naming its number.
pub fn read(path: &Path, text: &str) -> Result<Vec<Line>, DatasetError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| DatasetError::new(path, Some(i + 1), e.to_string()))
        })
        .collect()
}

/// JSONL for Moment-DETR-style trainers, one line (with its newline) each; windows in seconds.
pub fn write(lines: &[Line]) -> Result<String, serde_json::Error> {
    let mut text = String::new();
    for line in lines {
        text.push_str(&serde_json::to_string(line)?);
        text.push('\n');
    }
    Ok(text)
}

/// One moment per line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    Ok(read(path, text)?
        .into_iter()
        .map(|line| Moment {
            vid: line.vid,
            query: line.query,
            duration: Some(line.duration),
            windows: line.relevant_windows,
        })
        .collect())
}
