//! MAD (long movies): `{annotation id: {"movie", "sentence", "timestamps": [s, e],
//! "movie_duration"}}`, seconds.

use super::{DatasetError, Moment};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize)]
struct Entry {
    movie: String,
    sentence: String,
    timestamps: [f64; 2],
    movie_duration: f64,
}

/// One moment per annotation, in the order of their ids.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Moment>, DatasetError> {
    let entries: BTreeMap<String, Entry> =
        serde_json::from_str(text).map_err(|e| DatasetError::new(path, None, e.to_string()))?;
    Ok(entries
        .into_values()
        .map(|entry| Moment {
            vid: entry.movie,
            query: entry.sentence.trim().to_string(),
            duration: Some(entry.movie_duration),
            windows: vec![entry.timestamps],
            confidence: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_name_their_movie() {
        let text = r#"{"11": {"movie": "tt0074285", "sentence": "She smiles. ",
            "timestamps": [120.5, 124.0], "movie_duration": 6000.0, "ext_timestamps": [1, 2]}}"#;
        let moments = parse(Path::new("m.json"), text).unwrap();
        assert_eq!(
            moments,
            [Moment {
                vid: "tt0074285".into(),
                query: "She smiles.".into(),
                duration: Some(6000.0),
                windows: vec![[120.5, 124.0]],
                confidence: None,
            }]
        );
    }
}
