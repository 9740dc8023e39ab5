//! DiDeMo: a JSON list of `{"video", "description", "times": [[a, b], ...], "num_segments"?}`,
//! where times are indices of 5-second segments (`[a, b]` is seconds 5a to 5(b + 1)), one pair
//! per annotator. Videos are cut to their first 30 seconds (six segments).

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::path::Path;

/// Seconds per segment.
const SEGMENT: f64 = 5.0;
/// Segments in a video when the file does not say.
const SEGMENTS: usize = 6;

#[derive(Deserialize)]
struct Entry {
    video: String,
    description: String,
    times: Vec<[u32; 2]>,
    num_segments: Option<usize>,
}

/// One moment per description, each annotator's segments a window.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let entries: Vec<Entry> =
        serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))?;
    let mut moments = Vec::with_capacity(entries.len());
    for entry in entries {
        let segments = entry.num_segments.unwrap_or(SEGMENTS);
        let mut windows: Vec<[f64; 2]> = Vec::new();
        for [a, b] in entry.times {
            if a > b || b as usize >= segments {
                return Err(DatasetError::new(
                    path,
                    None,
                    format!(
                        "video {}: segments [{a}, {b}] outside its {segments}",
                        entry.video
                    ),
                ));
            }
            let window = [a as f64 * SEGMENT, (b + 1) as f64 * SEGMENT];
            if !windows.contains(&window) {
                windows.push(window);
            }
        }
        let vid = match entry.video.rsplit_once('.') {
            Some((stem, _)) => stem.to_string(),
            None => entry.video,
        };
        moments.push(Moment {
            vid,
            query: entry.description.trim().to_string(),
            duration: Some(segments as f64 * SEGMENT),
            windows,
            confidence: None,
        });
    }
    Ok(moments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_become_seconds_and_annotators_windows() {
        let text = r#"[{"video": "1234@N00_56_78.mov", "description": "the dog jumps",
            "times": [[1, 1], [1, 2], [1, 1]], "annotation_id": 7}]"#;
        let moments = parse(Path::new("d.json"), text).unwrap();
        assert_eq!(
            moments,
            [Moment {
                vid: "1234@N00_56_78".into(),
                query: "the dog jumps".into(),
                duration: Some(30.0),
                windows: vec![[5.0, 10.0], [5.0, 15.0]],
                confidence: None,
            }]
        );
        let outside = r#"[{"video": "v.mp4", "description": "x", "times": [[2, 6]]}]"#;
        assert!(parse(Path::new("d.json"), outside).is_err());
    }
}
