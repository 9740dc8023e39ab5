//! Annotation and dataset formats of the field: Charades-STA text lines, ActivityNet Captions
//! JSON, Moment-DETR/QVHighlights JSONL and PSVL's JSON list.

mod activitynet;
mod charades;
mod moment_detr;
mod psvl;

use std::path::{Path, PathBuf};
use thiserror::Error;

/// One query and the span(s) of one video it describes, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    pub vid: String,
    pub query: String,
    /// Known for every format but Charades-STA's text lines.
    pub duration: Option<f64>,
    /// Ground-truth windows; a prediction is judged by its best overlap with any of them.
    pub windows: Vec<[f64; 2]>,
}

#[derive(Debug, Error)]
#[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct DatasetError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl DatasetError {
    fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        DatasetError {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Reads an annotation file, recognising its format by extension and shape:
/// `.txt` Charades-STA, `.jsonl` Moment-DETR, `.json` ActivityNet (an object) or PSVL (a list).
pub fn read_annotations(path: &Path) -> Result<Vec<Moment>, DatasetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DatasetError::new(path, None, format!("cannot read: {e}")))?;
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let moments = match ext.as_str() {
        "txt" => charades::parse(path, &text)?,
        "jsonl" => moment_detr::parse(path, &text)?,
        "json" if text.trim_start().starts_with('[') => psvl::parse(path, &text)?,
        "json" => activitynet::parse(path, &text)?,
        _ => {
            return Err(DatasetError::new(
                path,
                None,
                "unknown annotation format (expected .txt Charades-STA, .jsonl Moment-DETR, \
                 .json ActivityNet Captions or PSVL)",
            ))
        }
    };
    for m in &moments {
        if m.windows
            .iter()
            .any(|w| !(w[0].is_finite() && w[1].is_finite() && w[0] <= w[1]))
        {
            return Err(DatasetError::new(
                path,
                None,
                format!(
                    "video {}: window with start after end or non-finite time",
                    m.vid
                ),
            ));
        }
    }
    Ok(moments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .join(rel)
    }

    #[test]
    fn reads_every_public_annotation_file() {
        let cases = [
            ("charades-sta/charades_sta_test.txt", 3720),
            ("activitynet/val_1.json", 17505),
            ("qvhighlights/highlight_val_release.jsonl", 1550),
            ("psvl/charades_train_pseudo_supervision_TEP_PS.json", 12523),
            ("psvl/charades_sta_test_pos_original_simple_sent.json", 3720),
        ];
        for (rel, count) in cases {
            let path = shared(rel);
            if !path.exists() {
                panic!(
                    "{} is missing: tests expect ../shared beside the checkout",
                    path.display()
                );
            }
            let moments = read_annotations(&path).unwrap();
            assert_eq!(moments.len(), count, "{rel}");
            assert!(
                moments
                    .iter()
                    .all(|m| !m.windows.is_empty() && !m.vid.is_empty()),
                "{rel}"
            );
        }
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "v1 0 3##ok\nv2 zero 3##bad\n").unwrap();
        let err = read_annotations(&path).unwrap_err().to_string();
        assert!(err.contains("a.txt line 2"), "{err}");
    }
}
