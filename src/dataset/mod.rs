//! Annotation and dataset formats of the field: Charades-STA text lines, ActivityNet Captions
//! JSON, Moment-DETR/QVHighlights JSONL, PSVL's JSON list, TACoS (times in frames), DiDeMo
//! (5-second segments) and MAD (long movies).

pub mod activitynet;
pub mod charades;
pub mod didemo;
pub mod mad;
pub mod moment_detr;
pub mod psvl;
pub mod tacos;

use crate::fsio::{write_atomic, Durability};
use crate::processor::VideoProposals;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The formats every pseudo-labelled dataset is written in: (name, extension).
pub const FORMATS: [(&str, &str); 3] = [
    ("psvl", "json"),
    ("moment_detr", "jsonl"),
    ("charades", "txt"),
];

/// `dir/<format><suffix>.<extension>` for each of [`FORMATS`], in order (`suffix` numbers the
/// daemon's shards, "-000001", and is empty for a batch run's single dataset).
pub fn dataset_paths(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    FORMATS
        .iter()
        .map(|(name, ext)| dir.join(format!("{name}{suffix}.{ext}")))
        .collect()
}

/// `labels` in each of [`FORMATS`], in order: PSVL's JSON list, Moment-DETR JSONL and
/// Charades-STA lines.
pub fn render(labels: &[PseudoLabel]) -> Result<Vec<String>, serde_json::Error> {
    let lines: Vec<moment_detr::Line> = labels.iter().map(moment_detr::Line::of).collect();
    let sentences: Vec<charades::Line> = labels.iter().map(charades::Line::of).collect();
    Ok(vec![
        psvl::write(labels)?,
        moment_detr::write(&lines)?,
        charades::write(&sentences),
    ])
}

/// Writes `labels` into `paths` (from [`dataset_paths`]), each file whole under a temporary
/// name, so a reader sees the old dataset or the new one.
pub fn write_files(
    paths: &[PathBuf],
    labels: &[PseudoLabel],
    durability: Durability,
) -> Result<(), DatasetError> {
    let texts = render(labels)
        .map_err(|e| DatasetError::new(&paths[0], None, format!("cannot serialise: {e}")))?;
    for (path, text) in paths.iter().zip(texts) {
        write_atomic(path, text.as_bytes(), durability)
            .map_err(|e| DatasetError::new(path, None, format!("cannot write: {e}")))?;
    }
    Ok(())
}

/// Every proposal of `videos` the captioner did not supersede, as a training pair, qids
/// counting from 1 in order.
pub fn labels_of(videos: &[VideoProposals]) -> Vec<PseudoLabel> {
    videos
        .iter()
        .flat_map(|video| {
            video
                .proposals
                .iter()
                .filter(|p| p.is_pair())
                .map(|p| PseudoLabel {
                    qid: 0,
                    vid: video.vid.clone(),
                    duration: video.duration,
                    start: p.start,
                    end: p.end,
                    query: p.caption.query.clone(),
                    tokens: p.caption.tokens.clone(),
                    query_embedding: p.caption.query_embedding.clone(),
                    token_margins: p.caption.token_margins.clone(),
                })
        })
        .zip(1..)
        .map(|(label, qid)| PseudoLabel { qid, ..label })
        .collect()
}

/// One query and the span(s) of one video it describes, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    /// The video id.
    pub vid: String,
    /// The sentence.
    pub query: String,
    /// Known for every format but Charades-STA's text lines.
    pub duration: Option<f64>,
    /// Ground-truth windows; a prediction is judged by its best overlap with any of them.
    pub windows: Vec<[f64; 2]>,
    /// A pseudo-label's confidence: its least sure word's margin (`token_margins`); `None`
    /// for annotations.
    pub confidence: Option<f64>,
}

/// A proposal as a training pair: a span of a video (seconds) and the query that describes it:
/// words (`query`, `tokens`) or, language-free, a visual embedding; empty when uncaptioned.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoLabel {
    /// Its number in the dataset.
    pub qid: u64,
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// Seconds.
    pub start: f64,
    /// Seconds.
    pub end: f64,
    /// The readable query.
    pub query: String,
    /// The query's words (PSVL's `tokens`).
    pub tokens: Vec<String>,
    /// Language-free: the visual embedding standing for the query.
    pub query_embedding: Vec<f32>,
    /// How far each query word stands above the rest of its vocabulary on the span (standard
    /// deviations): the pair's confidence; empty when uncaptioned.
    pub token_margins: Vec<f32>,
}

#[derive(Debug, Error)]
#[error("{path}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
/// A file that cannot be read or parsed, with the line where that is known.
pub struct DatasetError {
    /// The file.
    pub path: PathBuf,
    /// The line, from 1.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl DatasetError {
    /// An error in `path` (at `line`).
    pub fn new(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        DatasetError {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// The annotation formats read, as `--format` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationFormat {
    /// Charades-STA lines: `vid start end##sentence`.
    Charades,
    /// Moment-DETR / QVHighlights JSONL.
    MomentDetr,
    /// ActivityNet Captions JSON.
    Activitynet,
    /// PSVL's JSON list.
    Psvl,
    /// TACoS JSON, times in frames.
    Tacos,
    /// DiDeMo JSON, 5-second segments.
    Didemo,
    /// MAD JSON.
    Mad,
}

impl AnnotationFormat {
    /// Every format, with its name.
    pub const ALL: [(&'static str, AnnotationFormat); 7] = [
        ("charades", AnnotationFormat::Charades),
        ("moment-detr", AnnotationFormat::MomentDetr),
        ("activitynet", AnnotationFormat::Activitynet),
        ("psvl", AnnotationFormat::Psvl),
        ("tacos", AnnotationFormat::Tacos),
        ("didemo", AnnotationFormat::Didemo),
        ("mad", AnnotationFormat::Mad),
    ];

    /// The format a file's name and content say: the extension when it is one of ours, else
    /// the text's shape (a JSON list, object or lines, and the fields of its first entry).
    pub fn detect(path: &Path, text: &str) -> AnnotationFormat {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let trimmed = text.trim_start();
        match ext.as_str() {
            "txt" => return AnnotationFormat::Charades,
            "jsonl" => return AnnotationFormat::MomentDetr,
            _ => {}
        }
        let first: Option<serde_json::Value> = match trimmed.chars().next() {
            Some('[') | Some('{') => serde_json::from_str(trimmed).ok(),
            _ => None,
        };
        match first {
            Some(serde_json::Value::Array(items)) => {
                let didemo = items
                    .first()
                    .is_some_and(|i| i.get("times").is_some() && i.get("description").is_some());
                match didemo {
                    true => AnnotationFormat::Didemo,
                    false => AnnotationFormat::Psvl,
                }
            }
            // One record of JSON lines, not a map of videos.
            Some(serde_json::Value::Object(entries))
                if entries.get("vid").is_some_and(|v| v.is_string()) =>
            {
                AnnotationFormat::MomentDetr
            }
            Some(serde_json::Value::Object(entries)) => {
                let entry = entries.values().next();
                let has = |key: &str| entry.is_some_and(|e| e.get(key).is_some());
                if has("num_frames") {
                    AnnotationFormat::Tacos
                } else if has("movie") {
                    AnnotationFormat::Mad
                } else {
                    AnnotationFormat::Activitynet
                }
            }
            // Not one JSON document: JSON lines if its first line is an object, else
            // Charades-STA lines.
            _ if trimmed.starts_with('{') => AnnotationFormat::MomentDetr,
            _ => AnnotationFormat::Charades,
        }
    }
}

impl std::str::FromStr for AnnotationFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        AnnotationFormat::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                let names: Vec<&str> = AnnotationFormat::ALL.iter().map(|(n, _)| *n).collect();
                format!("unknown format {name:?}; one of {}", names.join(", "))
            })
    }
}

/// Reads pairs from an annotation or dataset file (in `format`, or the one it looks like), or
/// from a folder of our dataset files (the Moment-DETR files when there are any, since the
/// other formats repeat them). Times become fractions of the video's duration, from the file
/// or else from the video's features.
pub fn read_moments(
    path: &Path,
    format: Option<AnnotationFormat>,
) -> Result<Vec<Moment>, DatasetError> {
    if !path.is_dir() {
        return read_annotations(path, format);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DatasetError::new(path, None, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let named = |prefix: &str, ext: &str| -> Vec<PathBuf> {
        files
            .iter()
            .filter(|f| {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                name.starts_with(prefix) && name.ends_with(ext)
            })
            .cloned()
            .collect()
    };
    let chosen = [
        named("moment_detr", ".jsonl"),
        named("psvl", ".json"),
        named("charades", ".txt"),
    ]
    .into_iter()
    .find(|list| !list.is_empty())
    .ok_or_else(|| {
        DatasetError::new(
            path,
            None,
            "no dataset files (moment_detr*.jsonl, psvl*.json or charades*.txt)".to_string(),
        )
    })?;
    let mut moments = Vec::new();
    for file in chosen {
        moments.extend(read_annotations(&file, None)?);
    }
    Ok(moments)
}

/// Reads an annotation file in `format`, or in the one its name and content say
/// ([`AnnotationFormat::detect`]).
pub fn read_annotations(
    path: &Path,
    format: Option<AnnotationFormat>,
) -> Result<Vec<Moment>, DatasetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DatasetError::new(path, None, format!("cannot read: {e}")))?;
    let format = format.unwrap_or_else(|| AnnotationFormat::detect(path, &text));
    let moments = match format {
        AnnotationFormat::Charades => charades::parse(path, &text)?,
        AnnotationFormat::MomentDetr => moment_detr::parse(path, &text)?,
        AnnotationFormat::Activitynet => activitynet::parse(path, &text)?,
        AnnotationFormat::Psvl => psvl::parse(path, &text)?,
        AnnotationFormat::Tacos => tacos::parse(path, &text)?,
        AnnotationFormat::Didemo => didemo::parse(path, &text)?,
        AnnotationFormat::Mad => mad::parse(path, &text)?,
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
            let moments = read_annotations(&path, None).unwrap();
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
    fn written_shards_read_back_as_the_same_moments() {
        let labels: Vec<PseudoLabel> = (0..3)
            .map(|i| PseudoLabel {
                qid: i,
                vid: format!("v é {i}"),
                duration: 30.0 + i as f64,
                start: 1.5 * i as f64,
                end: 10.0 + i as f64,
                query: if i == 0 {
                    String::new()
                } else {
                    "open door".into()
                },
                tokens: vec!["open".into(), "door".into()],
                query_embedding: if i == 2 { vec![0.5, -0.25] } else { Vec::new() },
                token_margins: if i == 0 { Vec::new() } else { vec![2.5, 1.25] },
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let paths = dataset_paths(dir.path(), "-000001");
        write_files(&paths, &labels, Durability::None).unwrap();
        let words = |_: &PseudoLabel| "open door".to_string();
        let query = |l: &PseudoLabel| l.query.clone();
        type QueryOf = fn(&PseudoLabel) -> String;
        let checks: [(&PathBuf, QueryOf, bool); 3] = [
            (&paths[0], words, true),
            (&paths[1], query, true),
            (&paths[2], query, false),
        ];
        for (path, query_of, has_duration) in checks {
            let moments = read_annotations(path, None).unwrap();
            assert_eq!(moments.len(), labels.len());
            for (m, l) in moments.iter().zip(&labels) {
                assert_eq!(m.vid, l.vid, "{}", path.display());
                assert_eq!(m.duration, has_duration.then_some(l.duration));
                assert_eq!(m.query, query_of(l));
                assert!((m.windows[0][0] - l.start).abs() < 1e-9);
                assert!((m.windows[0][1] - l.end).abs() < 1e-9);
                // Only the Moment-DETR lines carry the confidence.
                let confidence = (l.qid > 0 && path == &paths[1]).then_some(1.25);
                assert_eq!(m.confidence, confidence, "{}", path.display());
            }
        }
        // A language-free query keeps its embedding in the Moment-DETR line.
        let text = std::fs::read_to_string(&paths[1]).unwrap();
        let lines = moment_detr::read(&paths[1], &text).unwrap();
        assert_eq!(
            lines[2].extra["query_embedding"],
            serde_json::json!([0.5, -0.25])
        );
        assert!(!lines[0].extra.contains_key("query_embedding"));
    }

    /// Numbers as f64, so `150` and `150.0` compare equal: our typed fields write seconds as
    /// floats, which every JSON reader takes as the same value.
    fn normalised(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Number(n) => n
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Value::Array(items) => Value::Array(items.into_iter().map(normalised).collect()),
            Value::Object(map) => {
                Value::Object(map.into_iter().map(|(k, v)| (k, normalised(v))).collect())
            }
            other => other,
        }
    }

    /// Every public annotation file, read into our records and written back, is the same
    /// data: nothing is dropped, renamed or changed in value.
    #[test]
    fn public_annotation_files_round_trip_without_loss() {
        let value =
            |text: &str| normalised(serde_json::from_str::<serde_json::Value>(text).unwrap());
        let read = |rel: &str| std::fs::read_to_string(shared(rel)).unwrap();
        for rel in [
            "psvl/charades_train_pseudo_supervision_TEP_PS.json",
            "psvl/charades_sta_test_pos_original_simple_sent.json",
        ] {
            let text = read(rel);
            let entries = psvl::read(&shared(rel), &text).unwrap();
            assert_eq!(
                value(&psvl::write_entries(&entries).unwrap()),
                value(&text),
                "{rel}"
            );
        }
        let rel = "qvhighlights/highlight_val_release.jsonl";
        let text = read(rel);
        let lines = moment_detr::read(&shared(rel), &text).unwrap();
        let written = moment_detr::write(&lines).unwrap();
        assert_eq!(written.lines().count(), text.lines().count());
        for (ours, theirs) in written.lines().zip(text.lines()) {
            assert_eq!(value(ours), value(theirs));
        }
        let rel = "activitynet/val_1.json";
        let text = read(rel);
        let entries = activitynet::read(&shared(rel), &text).unwrap();
        assert_eq!(value(&activitynet::write(&entries).unwrap()), value(&text));
        for rel in [
            "charades-sta/charades_sta_test.txt",
            "charades-sta/charades_sta_train.txt",
        ] {
            let text = read(rel);
            let lines = charades::read(&shared(rel), &text).unwrap();
            let written = charades::write(&lines);
            assert_eq!(
                charades::read(&shared(rel), &written).unwrap(),
                lines,
                "{rel}"
            );
            assert_eq!(
                written.lines().count(),
                text.lines().filter(|l| !l.trim().is_empty()).count()
            );
        }
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "v1 0 3##ok\nv2 zero 3##bad\n").unwrap();
        let err = read_annotations(&path, None).unwrap_err().to_string();
        assert!(err.contains("a.txt line 2"), "{err}");
    }

    #[test]
    fn formats_are_told_by_content_when_the_name_does_not_say() {
        let cases = [
            ("v1 0 3##a man sits\n", AnnotationFormat::Charades),
            (
                r#"{"qid": 1, "query": "q", "vid": "v"}"#,
                AnnotationFormat::MomentDetr,
            ),
            (
                r#"{"v": {"duration": 3, "timestamps": [], "sentences": []}}"#,
                AnnotationFormat::Activitynet,
            ),
            (
                r#"{"v.avi": {"num_frames": 3, "fps": 1, "timestamps": [], "sentences": []}}"#,
                AnnotationFormat::Tacos,
            ),
            (
                r#"{"1": {"movie": "m", "sentence": "s", "timestamps": [0, 1], "movie_duration": 9}}"#,
                AnnotationFormat::Mad,
            ),
            (
                r#"[{"video": "v.mp4", "description": "d", "times": [[0, 0]]}]"#,
                AnnotationFormat::Didemo,
            ),
            (
                r#"[["v", 30.0, [0, 3], "a man sits"]]"#,
                AnnotationFormat::Psvl,
            ),
        ];
        for (text, format) in cases {
            assert_eq!(
                AnnotationFormat::detect(Path::new("queries.txt.hidden"), text),
                format,
                "{text}"
            );
        }
        // The name decides when it is one of ours, and --format over both.
        let dir = tempfile::tempdir().unwrap();
        let hidden = dir.path().join("queries.txt.hidden");
        std::fs::write(&hidden, "v1 0 3##a man sits\n").unwrap();
        assert_eq!(read_annotations(&hidden, None).unwrap().len(), 1);
        let forced = read_annotations(&hidden, Some(AnnotationFormat::MomentDetr));
        assert!(forced.is_err());
        assert_eq!("tacos".parse(), Ok(AnnotationFormat::Tacos));
        assert!("c3d"
            .parse::<AnnotationFormat>()
            .unwrap_err()
            .contains("moment-detr"));
    }
}
