//! Charades-STA: `vid start end##sentence`, seconds, one query per line.

use super::{DatasetError, Moment, PseudoLabel};
use std::path::Path;

/// One line, as read: the sentence is kept exactly as written after `##`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub start: f64,
    /// Seconds.
    pub end: f64,
    /// The sentence after `##`.
    pub sentence: String,
}

impl Line {
    /// The line for a pseudo-label (its query as the sentence).
    pub fn of(label: &PseudoLabel) -> Line {
        Line {
            vid: label.vid.clone(),
            start: label.start,
            end: label.end,
            sentence: label.query.clone(),
        }
    }
}

/// The lines of a file; a malformed one is an error naming its number.
pub fn read(path: &Path, text: &str) -> Result<Vec<Line>, DatasetError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let bad = |m: &str| DatasetError::new(path, Some(i + 1), m.to_string());
            let (head, sentence) = line
                .trim_end_matches('\r')
                .split_once("##")
                .ok_or_else(|| bad("expected 'vid start end##sentence'"))?;
            // Start and end are the last two fields, so a video id with spaces (which other
            // readers would split) still reads back whole.
            let mut fields = head.trim_end().rsplitn(3, ' ');
            let (Some(end), Some(start), Some(vid)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected 'vid start end' before '##'"));
            };
            let vid = vid.trim_end();
            if vid.is_empty() {
                return Err(bad("expected 'vid start end' before '##'"));
            }
            let number = |s: &str| {
                s.parse::<f64>()
                    .map_err(|_| bad("start/end are not numbers"))
            };
            Ok(Line {
                vid: vid.to_string(),
                start: number(start)?,
                end: number(end)?,
                sentence: sentence.to_string(),
            })
        })
        .collect()
}

/// The text of a Charades-STA file; reading it back gives the same lines.
pub fn write(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {} {}##{}\n", l.vid, l.start, l.end, l.sentence))
        .collect()
}

/// One moment per line (no durations: the format has none).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    Ok(read(path, text)?
        .into_iter()
        .map(|line| Moment {
            query: line.sentence.trim().to_string(),
            duration: None,
            windows: vec![[line.start, line.end]],
            confidence: None,
            vid: line.vid,
        })
        .collect())
}
