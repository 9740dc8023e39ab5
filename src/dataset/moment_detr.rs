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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// A pseudo-label's word margins ([`PseudoLabel::token_margins`]).
    pub token_margins: Vec<f32>,
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
            token_margins: label.token_margins.clone(),
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

/// One moment per line; a pseudo-label's confidence is its smallest word margin.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    read(path, text)?
        .into_iter()
        .map(|line| {
            if line.token_margins.iter().any(|m| !m.is_finite()) {
                return Err(DatasetError::new(
                    path,
                    None,
                    format!(
                        "query {:?} of video {}: token_margins must be finite numbers",
                        line.query, line.vid
                    ),
                ));
            }
            let confidence = line
                .token_margins
                .iter()
                .copied()
                .reduce(f32::min)
                .map(f64::from);
            Ok(Moment {
                vid: line.vid,
                query: line.query,
                duration: Some(line.duration),
                windows: line.relevant_windows,
                confidence,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudo_labels_confidence_is_its_least_sure_word() {
        let path = Path::new("moment_detr.jsonl");
        let text = concat!(
            r#"{"query":"open door","vid":"a","duration":10,"relevant_windows":[[1,2]],"token_margins":[3.5,2.25]}"#,
            "\n",
            r#"{"query":"a person opens a door.","vid":"a","duration":10,"relevant_windows":[[1,2]]}"#,
        );
        let moments = parse(path, text).unwrap();
        assert_eq!(moments[0].confidence, Some(2.25));
        assert_eq!(moments[1].confidence, None);
        // f32 overflows to infinity; that is no confidence to weigh a pair by.
        let text = r#"{"query":"open door","vid":"a","duration":10,"relevant_windows":[[1,2]],"token_margins":[1e39]}"#;
        let error = parse(path, text).unwrap_err().to_string();
        assert!(
            error.contains("moment_detr.jsonl") && error.contains("token_margins"),
            "{error}"
        );
    }
}
