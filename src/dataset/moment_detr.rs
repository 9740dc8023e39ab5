//! Moment-DETR / QVHighlights JSONL: `{"qid", "query", "vid", "duration", "relevant_windows"}`.

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Line {
    query: String,
    vid: String,
    duration: f64,
    relevant_windows: Vec<[f64; 2]>,
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let parsed: Line = serde_json::from_str(line)
                .map_err(|e| DatasetError::new(path, Some(i + 1), e.to_string()))?;
            Ok(Moment {
                vid: parsed.vid,
                query: parsed.query,
                duration: Some(parsed.duration),
                windows: parsed.relevant_windows,
            })
        })
        .collect()
}
