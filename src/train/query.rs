//! Queries as the grounding model reads them: a sequence of content words, each one MiniLM
//! vector of the word on its own (context-free, as PSVL's GloVe vectors are).
//!
//! A pseudo-query is a bag of vocabulary words in base form ("open close hold door box"); a
//! user's sentence is English ("a person is opening the door."). Both are brought to one form
//! before the model sees them: each word is reduced to the lexicon word it inflects (the
//! captioner's vocabulary, kept in the model card), and words outside the lexicon are left out,
//! so at test time the model reads the same kind of input it was trained on.

use super::error::TrainError;
use crate::caption::text::TextEncoder;
use crate::rng::Rng;
use std::collections::{HashMap, HashSet};

/// Width of MiniLM's token vectors.
pub const QUERY_DIM: usize = 384;

/// The words of `text` the model reads: lower-cased, each mapped onto the lexicon word it is
/// an inflection of, those outside the lexicon dropped. With an empty lexicon, or when no word
/// is in it, every word is kept as written.
pub fn content_words(text: &str, lexicon: &HashSet<String>) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    let known: Vec<String> = words
        .iter()
        .filter_map(|w| {
            lemma_candidates(w)
                .into_iter()
                .find(|c| lexicon.contains(c))
        })
        .collect();
    if known.is_empty() {
        words
    } else {
        known
    }
}

/// The word itself, then the base forms English inflection could have come from: plural and
/// third person (-s, -es, -ies), gerund (-ing, with a dropped e or a doubled consonant) and
/// past (-ed). Only forms the lexicon holds are ever used, so a wrong guess costs nothing.
fn lemma_candidates(word: &str) -> Vec<String> {
    let mut out = vec![word.to_string()];
    let mut push = |stem: Option<&str>, suffix: &str| {
        if let Some(stem) = stem.filter(|s| s.len() >= 2) {
            out.push(format!("{stem}{suffix}"));
        }
    };
    push(word.strip_suffix("ies"), "y");
    push(word.strip_suffix("es"), "");
    push(word.strip_suffix('s'), "");
    for suffix in ["ing", "ed"] {
        if let Some(stem) = word.strip_suffix(suffix) {
            push(Some(stem), "");
            push(Some(stem), "e");
            let bytes = stem.as_bytes();
            if bytes.len() >= 3 && bytes[bytes.len() - 1] == bytes[bytes.len() - 2] {
                push(Some(&stem[..stem.len() - 1]), "");
            }
        }
    }
    out
}

/// Every distinct query's words, and every distinct word's vector, computed once.
pub struct QueryBank {
    words: HashMap<String, Vec<String>>,
    vectors: HashMap<String, Vec<f32>>,
}

impl QueryBank {
    /// Reads each distinct query as its content words (brought to `lexicon`; empty: as
    /// written) and embeds every distinct word once; a query of more than `max_words` words,
    /// or of none, is an error.
    pub fn encode(
        queries: &HashSet<&str>,
        encoder: &TextEncoder,
        lexicon: &HashSet<String>,
        max_words: usize,
    ) -> Result<QueryBank, TrainError> {
        let mut words = HashMap::with_capacity(queries.len());
        let mut distinct: HashSet<String> = HashSet::new();
        for &query in queries {
            let content = content_words(query, lexicon);
            if content.len() > max_words {
                return Err(TrainError::QueryTooLong {
                    query: query.to_string(),
                    words: content.len(),
                    max: max_words,
                });
            }
            if content.is_empty() {
                return Err(TrainError::Data(format!(
                    "the query {query:?} has no words"
                )));
            }
            distinct.extend(content.iter().cloned());
            words.insert(query.to_string(), content);
        }
        let mut list: Vec<&str> = distinct.iter().map(String::as_str).collect();
        list.sort_unstable();
        let mut vectors = HashMap::with_capacity(list.len());
        for chunk in list.chunks(256) {
            for (word, encoded) in chunk.iter().zip(encoder.encode(chunk)?) {
                vectors.insert(word.to_string(), encoded.pooled);
            }
        }
        Ok(QueryBank::from_parts(words, vectors))
    }

    /// A bank from words and vectors at hand.
    pub fn from_parts(
        words: HashMap<String, Vec<String>>,
        vectors: HashMap<String, Vec<f32>>,
    ) -> QueryBank {
        QueryBank { words, vectors }
    }

    /// The vectors of `query`'s words, in order; with `keep`, each word survives with the
    /// sampler's probability (at least one always does), so a model trained on long bags of
    /// pseudo-query words also learns to answer the two or three words of a sentence.
    pub fn vectors(&self, query: &str, keep: Option<&mut WordSampler>) -> Vec<&[f32]> {
        let words = self.words.get(query).map_or(&[][..], Vec::as_slice);
        let chosen: Vec<&String> = match keep {
            Some(sampler) if words.len() > 1 => sampler.choose(words),
            _ => words.iter().collect(),
        };
        chosen
            .into_iter()
            .filter_map(|w| self.vectors.get(w).map(Vec::as_slice))
            .collect()
    }
}

/// Seeded word dropout for training queries (`train.word_keep`).
pub struct WordSampler {
    /// Probability that a word is kept.
    pub keep: f64,
    /// The seeded generator.
    pub rng: Rng,
}

impl WordSampler {
    fn choose<'w>(&mut self, words: &'w [String]) -> Vec<&'w String> {
        let mut chosen: Vec<&String> = words
            .iter()
            .filter(|_| self.rng.uniform() < self.keep)
            .collect();
        if chosen.is_empty() {
            chosen.push(&words[self.rng.below(words.len())]);
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_and_pseudo_queries_come_to_the_same_words() {
        let lexicon: HashSet<String> = [
            "open", "close", "put", "tidy", "wash", "dish", "door", "glass", "take", "shoe",
        ]
        .map(String::from)
        .into();
        let words = |text: &str| content_words(text, &lexicon).join(" ");
        assert_eq!(words("a person is opening the door."), "open door");
        assert_eq!(words("Person closes a door"), "close door");
        assert_eq!(words("someone is putting the glasses away"), "put glass");
        assert_eq!(
            words("the person tidies up and washes dishes"),
            "tidy wash dish"
        );
        assert_eq!(words("person took off their shoes"), "shoe");
        assert_eq!(words("open close door"), "open close door");
        // Nothing of the lexicon: the words as written, rather than nothing.
        assert_eq!(words("Someone laughs"), "someone laughs");
        assert_eq!(
            content_words("a person is opening the door", &HashSet::new()).join(" "),
            "a person is opening the door"
        );
    }

    #[test]
    fn the_sampler_keeps_order_and_at_least_one_word() {
        let words: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        let mut sampler = WordSampler {
            keep: 0.5,
            rng: Rng::new(3),
        };
        let mut lengths = HashSet::new();
        for _ in 0..200 {
            let chosen = sampler.choose(&words);
            assert!(!chosen.is_empty());
            let positions: Vec<usize> = chosen
                .iter()
                .map(|c| words.iter().position(|w| w == *c).unwrap_or(9))
                .collect();
            assert!(positions.windows(2).all(|p| p[0] < p[1]), "{positions:?}");
            lengths.insert(chosen.len());
        }
        assert_eq!(lengths.len(), 4, "every length from 1 to 4 occurs");
    }
}
