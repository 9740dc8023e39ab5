//! The CLIP-style vocabulary scorer: a proposal's mean visual embedding is compared (cosine)
//! with the text embeddings of a vocabulary of verbs and nouns, and the best words form the
//! pseudo-query, top verbs then top nouns as in PSVL's released queries. The vocabulary's
//! embeddings are computed once and cached on disk, keyed by the text model and the
//! vocabulary.

use super::CaptionError;
use crate::fsio::{write_atomic, Durability};
use crate::similarity::{dot, Spread};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `{"verbs": [...], "nouns": [...], "template": "a person {verbs} the {nouns}"}`; the template
/// is optional and names how the readable sentence is built from the chosen words.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// Words scored as actions.
    pub verbs: Vec<String>,
    /// Words scored as objects.
    pub nouns: Vec<String>,
    #[serde(default)]
    /// How a query is written from its words: `{verbs}` and `{nouns}` stand for them.
    pub template: Option<String>,
}

impl Vocabulary {
    /// Reads `{"verbs": [...], "nouns": [...], "template": "..."}`; at least one verb and one noun.
    pub fn load(path: &Path) -> Result<Vocabulary, CaptionError> {
        let fail = |message: String| CaptionError::Vocabulary {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let vocabulary: Vocabulary =
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if vocabulary.verbs.is_empty() || vocabulary.nouns.is_empty() {
            return Err(fail("needs at least one verb and one noun".into()));
        }
        Ok(vocabulary)
    }

    fn words(&self) -> impl Iterator<Item = &str> {
        self.verbs.iter().chain(&self.nouns).map(String::as_str)
    }
}

/// The vocabulary with one unit-length embedding per word (verbs first, then nouns).
pub struct ScoredVocabulary {
    vocabulary: Vocabulary,
    dim: usize,
    embeddings: Vec<f32>,
}

/// Words that name no action and no object: never vocabulary words, never read from a query.
pub const STOPWORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "to",
    "in",
    "on",
    "at",
    "into",
    "onto",
    "with",
    "from",
    "up",
    "down",
    "out",
    "off",
    "then",
    "while",
    "is",
    "are",
    "was",
    "were",
    "be",
    "it",
    "its",
    "his",
    "her",
    "their",
    "them",
    "they",
    "he",
    "she",
    "person",
    "someone",
    "man",
    "woman",
    "people",
    "another",
    "some",
    "again",
    "first",
    "other",
    "over",
    "for",
    "by",
    "as",
    "this",
    "that",
    "something",
    "begins",
    "starts",
    "continues",
    "back",
    "around",
    "there",
    "who",
    "one",
    "two",
    "persons",
    "s",
    "thing",
    "things",
    "next",
    "very",
    "also",
    "just",
    "still",
    "way",
];

/// What the scorer says about one visual embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoQuery {
    /// The top verbs, then the top nouns (PSVL's token order).
    pub tokens: Vec<String>,
    /// A readable sentence from the template (or the tokens joined).
    pub sentence: String,
    /// The chosen words' cosine similarities, in `tokens` order.
    pub scores: Vec<f32>,
    /// How far each chosen word stands above the rest of its word class (verbs or nouns), in
    /// standard deviations of that class's scores on this span, in `tokens` order: a cosine
    /// says little alone, since one span's scores all sit high when its mean is close to the
    /// scene every word shares.
    pub margins: Vec<f32>,
}

impl ScoredVocabulary {
    /// Embeds the vocabulary with `embed` (a batch of words → one unit vector each), or reads
    /// the embeddings cached under `cache_dir` for this `model_key` and vocabulary.
    pub fn build(
        vocabulary: Vocabulary,
        model_key: &str,
        cache_dir: &Path,
        embed: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>, CaptionError>,
    ) -> Result<ScoredVocabulary, CaptionError> {
        let words: Vec<&str> = vocabulary.words().collect();
        let key = {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(model_key.as_bytes());
            for word in &words {
                hasher.update(word.as_bytes());
                hasher.update(b"\0");
            }
            format!("{:032x}", hasher.digest128())
        };
        let cache = cache_dir.join(format!("vocab-{key}.f32"));
        if let Some((dim, embeddings)) = read_cache(&cache, words.len()) {
            return Ok(ScoredVocabulary {
                vocabulary,
                dim,
                embeddings,
            });
        }
        let vectors = embed(&words)?;
        let dim = vectors.first().map_or(0, Vec::len);
        let embeddings: Vec<f32> = vectors.into_iter().flatten().collect();
        let mut bytes = (dim as u32).to_le_bytes().to_vec();
        bytes.extend(embeddings.iter().flat_map(|v| v.to_le_bytes()));
        let stored = std::fs::create_dir_all(cache_dir)
            .and_then(|()| write_atomic(&cache, &bytes, Durability::None));
        if let Err(e) = stored {
            tracing::warn!(cache = %cache.display(), "vocabulary embeddings not cached: {e}");
        }
        Ok(ScoredVocabulary {
            vocabulary,
            dim,
            embeddings,
        })
    }

    /// The width of the word embeddings.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Words in the vocabulary.
    pub fn len(&self) -> usize {
        self.embeddings.len() / self.dim.max(1)
    }

    /// Whether it holds no words.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verbs in the vocabulary. A query's first tokens are its verbs: `verbs` of them, or this
    /// many when the vocabulary has fewer.
    pub fn verb_count(&self) -> usize {
        self.vocabulary.verbs.len()
    }

    /// The best verbs and nouns for one span. Words are scored against `visual`, the span's
    /// mean embedding (any length scale). Where `contrast` gives the span's mean minus its
    /// video's: then verbs are read from it, with the directions of the span's `explain_nouns`
    /// best nouns taken out (a still shows objects far more than actions), and nouns gain
    /// `noun_lift` times how much more the span shows them than the whole video does, so the
    /// scene every step shows (the room) does not name every span.
    pub fn caption(
        &self,
        visual: &[f32],
        contrast: Option<&[f32]>,
        choice: WordChoice,
    ) -> Result<PseudoQuery, CaptionError> {
        for input in std::iter::once(visual).chain(contrast) {
            if input.len() != self.dim {
                return Err(CaptionError::Dimensions {
                    visual: input.len(),
                    text: self.dim,
                });
            }
        }
        let verb_count = self.vocabulary.verbs.len();
        let (verb_embeddings, noun_embeddings) = self.embeddings.split_at(verb_count * self.dim);
        // A span as long as its video differs from it by nothing; its mean has to do.
        let differs = |residual: &[f32]| dot(residual, residual) > 1e-12 * dot(visual, visual);
        let contrast = contrast.filter(|c| differs(c));
        let nouns_in_view = cosines(noun_embeddings, self.dim, visual);
        let lifted: Option<Vec<f32>> = contrast.filter(|_| choice.noun_lift > 0.0).map(|c| {
            let video: Vec<f32> = visual.iter().zip(c).map(|(v, c)| v - c).collect();
            let backdrop = cosines(noun_embeddings, self.dim, &video);
            nouns_in_view
                .iter()
                .zip(backdrop)
                .map(|(span, video)| span + choice.noun_lift * (span - video))
                .collect()
        });
        let noun_scores = lifted.as_deref().unwrap_or(&nouns_in_view);
        let action = contrast
            .filter(|_| choice.verb_contrast)
            .map(|contrast| {
                let explained = best_first(&nouns_in_view)
                    .into_iter()
                    .take(choice.explain_nouns)
                    .map(|i| &noun_embeddings[i * self.dim..(i + 1) * self.dim]);
                without_directions(contrast, explained)
            })
            .filter(|residual| differs(residual));
        let verb_scores = cosines(
            verb_embeddings,
            self.dim,
            action.as_deref().unwrap_or(visual),
        );
        let best = |scores: &[f32], words: &[String], k: usize| {
            let spread = Spread::of(scores.iter().map(|&s| f64::from(s)));
            best_first(scores)
                .into_iter()
                .take(k)
                .map(|i| {
                    let margin = spread.margin(f64::from(scores[i])) as f32;
                    (words[i].clone(), (scores[i], margin))
                })
                .collect::<Vec<_>>()
        };
        let chosen_verbs = best(&verb_scores, &self.vocabulary.verbs, choice.verbs);
        let chosen_nouns = best(noun_scores, &self.vocabulary.nouns, choice.nouns);
        let join = |words: &[(String, (f32, f32))]| {
            words
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let sentence = match &self.vocabulary.template {
            Some(template) => template
                .replace("{verbs}", &join(&chosen_verbs))
                .replace("{nouns}", &join(&chosen_nouns)),
            None => format!("{} {}", join(&chosen_verbs), join(&chosen_nouns)),
        };
        let (tokens, (scores, margins)) = chosen_verbs.into_iter().chain(chosen_nouns).unzip();
        Ok(PseudoQuery {
            tokens,
            sentence,
            scores,
            margins,
        })
    }
}

/// How many words a query takes, and how verbs are told apart from the objects in view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WordChoice {
    /// Verbs per query (`caption.verbs`).
    pub verbs: usize,
    /// Nouns per query (`caption.nouns`).
    pub nouns: usize,
    /// Best nouns whose directions are taken out before verbs are scored (`caption.explain_nouns`).
    pub explain_nouns: usize,
    /// Verbs read from the span's contrast with its video (`caption.verb_contrast`).
    pub verb_contrast: bool,
    /// Weight of a noun's lift (its score on the span less its score on the whole video)
    /// next to its score on the span (`caption.noun_lift`).
    pub noun_lift: f32,
}

/// Cosine similarity of `visual` with each unit-length row of `rows`.
fn cosines(rows: &[f32], dim: usize, visual: &[f32]) -> Vec<f32> {
    let norm = dot(visual, visual).sqrt().max(1e-12);
    rows.chunks(dim)
        .map(|row| dot(row, visual) / norm)
        .collect()
}

/// Indices of `scores`, highest first.
fn best_first(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// `vector` less its projection on the span of `directions` (made orthonormal as they come).
fn without_directions<'d>(vector: &[f32], directions: impl Iterator<Item = &'d [f32]>) -> Vec<f32> {
    let mut basis: Vec<Vec<f32>> = Vec::new();
    for direction in directions {
        let mut axis = direction.to_vec();
        basis.iter().for_each(|b| remove_along(&mut axis, b));
        let norm = dot(&axis, &axis).sqrt();
        if norm > 1e-6 {
            axis.iter_mut().for_each(|a| *a /= norm);
            basis.push(axis);
        }
    }
    let mut residual = vector.to_vec();
    basis.iter().for_each(|b| remove_along(&mut residual, b));
    residual
}

/// Takes out of `vector` its component along the unit vector `axis`.
fn remove_along(vector: &mut [f32], axis: &[f32]) {
    let along = dot(vector, axis);
    vector
        .iter_mut()
        .zip(axis)
        .for_each(|(v, a)| *v -= along * a);
}

/// Embeddings cached by an earlier run: a little-endian u32 dimension, then the vectors.
fn read_cache(path: &PathBuf, words: usize) -> Option<(usize, Vec<f32>)> {
    let bytes = std::fs::read(path).ok()?;
    let dim = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..)?;
    if dim == 0 || body.len() != words * dim * 4 {
        return None;
    }
    Some((
        dim,
        body.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn vocabulary() -> Vocabulary {
        Vocabulary {
            verbs: vec!["open".into(), "pour".into(), "sit".into()],
            nouns: vec!["door".into(), "water".into(), "chair".into(), "book".into()],
            template: Some("a person {verbs} the {nouns}".into()),
        }
    }

    /// A toy text tower: word i of the vocabulary is the i-th axis.
    fn axes(words: &[&str]) -> Result<Vec<Vec<f32>>, CaptionError> {
        Ok((0..words.len())
            .map(|i| {
                let mut v = vec![0.0; words.len()];
                v[i] = 1.0;
                v
            })
            .collect())
    }

    #[test]
    fn the_best_verbs_then_nouns_form_the_query_and_embeddings_are_cached() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Cell::new(0);
        let embed = |words: &[&str]| {
            calls.set(calls.get() + 1);
            axes(words)
        };
        let scored = ScoredVocabulary::build(vocabulary(), "toy", dir.path(), embed).unwrap();
        // Mostly "pour" and "water", some "sit" and "chair".
        let visual = [0.1, 0.9, 0.3, 0.0, 0.8, 0.4, 0.1];
        let words = WordChoice {
            verbs: 1,
            nouns: 2,
            explain_nouns: 0,
            verb_contrast: false,
            noun_lift: 0.0,
        };
        let query = scored.caption(&visual, None, words).unwrap();
        assert_eq!(query.tokens, ["pour", "water", "chair"]);
        assert_eq!(query.sentence, "a person pour the water chair");
        assert!(query.scores[0] > query.scores[2]);
        // "pour" against the verbs' 0.1, 0.9, 0.3 (the norm divides out): (0.9 - 0.433) / 0.340.
        assert!(
            (query.margins[0] - 1.373).abs() < 1e-3,
            "{:?}",
            query.margins
        );
        assert!(query.margins[1] > query.margins[2]);
        let again = ScoredVocabulary::build(vocabulary(), "toy", dir.path(), embed).unwrap();
        assert_eq!(calls.get(), 1, "the second build read the cache");
        assert_eq!(again.caption(&visual, None, words).unwrap(), query);
        // Another model is another cache entry.
        ScoredVocabulary::build(vocabulary(), "other", dir.path(), embed).unwrap();
        assert_eq!(calls.get(), 2);
        assert!(matches!(
            scored.caption(&[1.0, 0.0], None, words),
            Err(CaptionError::Dimensions { visual: 2, text: 7 })
        ));
        assert!(matches!(
            scored.caption(&visual, Some(&[1.0]), words),
            Err(CaptionError::Dimensions { visual: 1, text: 7 })
        ));
    }

    /// Word i is axis i, but the text of "pour" leans towards "water" and that of "sit"
    /// towards "chair", as a real tower's verbs lean towards their usual objects.
    fn leaning(words: &[&str]) -> Result<Vec<Vec<f32>>, CaptionError> {
        let mut vectors = axes(words)?;
        for (verb, noun) in [(1, 4), (2, 5)] {
            vectors[verb][verb] = 0.6;
            vectors[verb][noun] = 0.8;
        }
        Ok(vectors)
    }

    #[test]
    fn verbs_are_read_from_what_the_span_shows_more_than_its_video_less_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let scored = ScoredVocabulary::build(vocabulary(), "leaning", dir.path(), leaning).unwrap();
        // A door, some water and a chair in view all along; the span: someone opens the door
        // (faint "open", more door) and passes closer to the chair.
        let video = [0.0, 0.0, 0.0, 0.3, 0.4, 0.5, 0.0];
        let span = [0.1, 0.0, 0.0, 0.9, 0.4, 0.8, 0.0];
        let contrast: Vec<f32> = span.iter().zip(video).map(|(s, v)| s - v).collect();
        let words = |explain_nouns| WordChoice {
            verbs: 1,
            nouns: 1,
            explain_nouns,
            verb_contrast: true,
            noun_lift: 0.0,
        };
        let plain = scored.caption(&span, None, words(2)).unwrap();
        assert_eq!(
            plain.tokens,
            ["sit", "door"],
            "the objects in view decide the verb"
        );
        let unexplained = scored.caption(&span, Some(&contrast), words(0)).unwrap();
        assert_eq!(
            unexplained.tokens,
            ["sit", "door"],
            "the chair it passes still does"
        );
        let read = scored.caption(&span, Some(&contrast), words(2)).unwrap();
        assert_eq!(read.tokens, ["open", "door"]);
        assert_eq!(
            read.scores[1], plain.scores[1],
            "nouns are scored as before"
        );
        // A span as long as its video shows no contrast: its mean decides.
        let whole = scored.caption(&video, Some(&[0.0; 7]), words(2)).unwrap();
        assert_eq!(whole, scored.caption(&video, None, words(2)).unwrap());
    }

    #[test]
    fn directions_are_removed_even_when_they_are_not_orthogonal() {
        let directions = [[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.8, 0.6, 0.0]];
        let residual = without_directions(&[3.0, 4.0, 5.0], directions.iter().map(|d| &d[..]));
        assert!(
            residual[0].abs() < 1e-6 && residual[1].abs() < 1e-6,
            "{residual:?}"
        );
        assert!((residual[2] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn bad_vocabulary_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.json");
        std::fs::write(&path, r#"{"verbs": [], "nouns": ["door"]}"#).unwrap();
        let err = Vocabulary::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("vocab.json") && err.contains("at least one verb"),
            "{err}"
        );
        std::fs::write(
            &path,
            r#"{"verbs": ["open"], "nouns": ["door"], "colour": 1}"#,
        )
        .unwrap();
        assert!(Vocabulary::load(&path).is_err());
    }

    #[test]
    fn a_nouns_lift_names_what_the_span_adds_to_its_room() {
        let dir = tempfile::tempdir().unwrap();
        let scored = ScoredVocabulary::build(vocabulary(), "axes", dir.path(), axes).unwrap();
        // The chair fills every step (the room); the span adds a door to it.
        let video = [0.0, 0.0, 0.0, 0.1, 0.0, 0.9, 0.0];
        let span = [0.0, 0.0, 0.0, 0.5, 0.0, 0.9, 0.0];
        let contrast: Vec<f32> = span.iter().zip(video).map(|(s, v)| s - v).collect();
        let words = |noun_lift| WordChoice {
            verbs: 1,
            nouns: 1,
            explain_nouns: 0,
            verb_contrast: false,
            noun_lift,
        };
        let by_mean = scored.caption(&span, Some(&contrast), words(0.0)).unwrap();
        assert_eq!(by_mean.tokens[1], "chair");
        let by_lift = scored.caption(&span, Some(&contrast), words(3.0)).unwrap();
        assert_eq!(by_lift.tokens[1], "door");
        // A span as long as its video adds nothing: its mean decides.
        let zero = vec![0.0; 7];
        let whole = scored.caption(&video, Some(&zero), words(3.0)).unwrap();
        assert_eq!(whole.tokens[1], "chair");
    }
}
