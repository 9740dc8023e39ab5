//! Moment-DETR / QVHighlights JSONL: `{"qid", "query", "vid", "duration", "relevant_windows"}`.

use super::{DatasetError, Moment, PseudoLabel};
use serde::{Deserialize, Serialize};
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

#[derive(Serialize)]
struct OutLine<'a> {
    qid: u64,
    query: &'a str,
    vid: &'a str,
    duration: f64,
    relevant_windows: [[f64; 2]; 1],
}

/// One JSONL line (with its newline) for Moment-DETR-style trainers; windows in seconds.
pub fn write_line(label: &PseudoLabel) -> Result<String, serde_json::Error> {
    let mut line = serde_json::to_string(&OutLine {
        qid: label.qid,
        query: &label.query,
        vid: &label.vid,
        duration: label.duration,
        relevant_windows: [[label.start, label.end]],
    })?;
    line.push('\n');
    Ok(line)
}
