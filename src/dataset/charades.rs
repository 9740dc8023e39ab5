//! Charades-STA: `vid start end##sentence`, seconds, one query per line.

use super::{DatasetError, Moment};
use std::path::Path;

pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let bad = |m: &str| DatasetError::new(path, Some(i + 1), m.to_string());
            let (head, sentence) = line
                .split_once("##")
                .ok_or_else(|| bad("expected 'vid start end##sentence'"))?;
            let fields: Vec<&str> = head.split_whitespace().collect();
            let [vid, start, end] = fields[..] else {
                return Err(bad("expected 'vid start end' before '##'"));
            };
            let number = |s: &str| {
                s.parse::<f64>()
                    .map_err(|_| bad("start/end are not numbers"))
            };
            Ok(Moment {
                vid: vid.to_string(),
                query: sentence.trim().to_string(),
                duration: None,
                windows: vec![[number(start)?, number(end)?]],
            })
        })
        .collect()
}
