//! Queries as the grounding model reads them: a sequence of content words, each one MiniLM
//! vector of the word on its own (context-free, as PSVL's GloVe vectors are).
//!
//! A pseudo-query is a bag of vocabulary words in base form ("open close hold door box"); a
//! user's sentence is English ("a person is opening the door."). Both are brought to one form
//! before the model sees them: each word is reduced to the lexicon word it inflects (the
//! captioner's vocabulary, kept in the model card), so at test time the model reads the same
//! kind of input it was trained on. A content word the lexicon lacks ("the person grabs a
//! mug") is read as the lexicon word nearest it in MiniLM's space (*take*, *cup*) when that
//! one is near enough, and left out otherwise.
//!
//! With `train.query_words = "contextual"` neither is reduced: every content word as written
//! is read, as MiniLM's token vectors of the word in its own sentence.

use super::error::TrainError;
use crate::caption::text::{mean_pool, TextEncoder};
use crate::caption::vocab::STOPWORDS;
use crate::caption::TextTower;
use crate::config::QueryWords;
use crate::rng::Rng;
use crate::similarity::dot;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// Width of MiniLM's token vectors.
pub const QUERY_DIM: usize = 384;

/// One word of a query as the lexicon sees it.
#[derive(Debug, Clone, PartialEq)]
enum Word {
    /// The lexicon word it is (an inflection of).
    Known(String),
    /// A content word outside the lexicon, as written.
    Unknown(String),
}

/// The words of `text`, lower-cased.
fn split_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The words of `text` as `lexicon` sees them: each lexicon word a word inflects, else each
/// content word outside it.
fn read_words(text: &str, lexicon: &HashSet<String>) -> Vec<Word> {
    split_words(text)
        .into_iter()
        .filter_map(|w| {
            match lemma_candidates(&w)
                .into_iter()
                .find(|c| lexicon.contains(c))
            {
                Some(known) => Some(Word::Known(known)),
                None if !is_content_word(&w) => None,
                None => Some(Word::Unknown(w)),
            }
        })
        .collect()
}

/// Whether a lower-cased word says what happens: not a stopword, and three letters or more.
fn is_content_word(word: &str) -> bool {
    word.len() >= 3 && !STOPWORDS.contains(&word)
}

/// The words queries are brought to, and how near a word outside it must be to one of them
/// to be read as it (`train.nearest_word_similarity`).
pub struct Lexicon {
    words: HashSet<String>,
    nearest_similarity: f32,
    /// The lexicon's words and MiniLM vectors, embedded the first time a query needs them.
    vectors: OnceLock<Vec<(String, Vec<f32>)>>,
}

impl Lexicon {
    /// `words` (empty: queries are read as written).
    pub fn new(words: impl IntoIterator<Item = String>, nearest_similarity: f32) -> Lexicon {
        Lexicon {
            words: words.into_iter().collect(),
            nearest_similarity,
            vectors: OnceLock::new(),
        }
    }

    /// For each of `unknown` words, the lexicon word nearest it, if near enough.
    fn nearest(
        &self,
        unknown: &[&str],
        encoder: &TextEncoder,
    ) -> Result<HashMap<String, String>, TrainError> {
        if unknown.is_empty() || self.nearest_similarity > 1.0 || self.words.is_empty() {
            return Ok(HashMap::new());
        }
        let lexicon = match self.vectors.get() {
            Some(vectors) => vectors,
            None => {
                let mut words: Vec<&str> = self.words.iter().map(String::as_str).collect();
                words.sort_unstable();
                let vectors = embed(&words, encoder)?;
                self.vectors.get_or_init(|| vectors.into_iter().collect())
            }
        };
        let mut nearest = HashMap::new();
        for (word, vector) in embed(unknown, encoder)? {
            let best = lexicon
                .iter()
                // MiniLM's pooled vectors are unit length: the dot is the cosine.
                .map(|(known, v)| (known, dot(&vector, v)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((known, similarity)) = best {
                if similarity >= self.nearest_similarity {
                    nearest.insert(word, known.clone());
                }
            }
        }
        Ok(nearest)
    }
}

/// MiniLM's vector of each word on its own.
fn embed(words: &[&str], encoder: &TextEncoder) -> Result<Vec<(String, Vec<f32>)>, TrainError> {
    let mut out = Vec::with_capacity(words.len());
    for chunk in words.chunks(256) {
        for (word, encoded) in chunk.iter().zip(encoder.encode(chunk)?) {
            out.push((word.to_string(), encoded.pooled));
        }
    }
    Ok(out)
}

/// How the content words of a set of queries reached the model: as lexicon words, mapped
/// onto their nearest lexicon word, or not at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WordCoverage {
    /// Content words (not stopwords), counted once per distinct query.
    pub content: usize,
    /// Of them, lexicon words or their inflections.
    pub known: usize,
    /// Read as their nearest lexicon word.
    pub mapped: usize,
    /// Read as written: every word with `train.query_words = "contextual"`, else those of
    /// queries none of whose words the lexicon knows.
    pub as_written: usize,
}

impl std::fmt::Display for WordCoverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |n: usize| 100.0 * n as f64 / self.content.max(1) as f64;
        write!(
            f,
            "query words: {} content words, {:.1}% in the lexicon, {:.1}% read as their nearest lexicon word, {:.1}% as written (read in context, or no word of their query in the lexicon), {:.1}% left out",
            self.content,
            pct(self.known),
            pct(self.mapped),
            pct(self.as_written),
            pct(self.content - self.known - self.mapped - self.as_written)
        )
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

/// Each distinct query's content words, brought to `lexicon`, and how its words got there; a
/// query of more than `max_words` words, or of none, is an error. Only words outside the
/// lexicon are embedded (to find their nearest lexicon word).
pub fn read_queries(
    queries: &HashSet<&str>,
    encoder: &TextEncoder,
    lexicon: &Lexicon,
    max_words: usize,
) -> Result<(HashMap<String, Vec<String>>, WordCoverage), TrainError> {
    let read: Vec<(&str, Vec<Word>)> = queries
        .iter()
        .map(|&q| (q, read_words(q, &lexicon.words)))
        .collect();
    let mut unknown: Vec<&str> = read
        .iter()
        .flat_map(|(_, words)| words)
        .filter_map(|w| match w {
            Word::Unknown(w) => Some(w.as_str()),
            Word::Known(_) => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    unknown.sort_unstable();
    let nearest = lexicon.nearest(&unknown, encoder)?;
    let mut coverage = WordCoverage::default();
    let mut words = HashMap::with_capacity(queries.len());
    for (query, read) in read {
        let mut content = Vec::with_capacity(read.len());
        let read_count = read.len();
        for word in read {
            coverage.content += 1;
            match word {
                Word::Known(w) => {
                    coverage.known += 1;
                    content.push(w);
                }
                Word::Unknown(w) => {
                    if let Some(known) = nearest.get(&w) {
                        coverage.mapped += 1;
                        content.push(known.clone());
                    }
                }
            }
        }
        if content.is_empty() {
            // Nothing the lexicon knows: a model trained on sentences rather than
            // pseudo-queries, so the words as written.
            content = split_words(query);
            coverage.as_written += read_count;
        }
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
        words.insert(query.to_string(), content);
    }
    Ok((words, coverage))
}

/// One word of a query as the tokenizer split it.
struct WordPieces<'a> {
    /// Its place among the query's words.
    place: u32,
    /// Its bytes in the query.
    bytes: (usize, usize),
    /// Its tokens' vectors.
    tokens: Vec<&'a [f32]>,
}

/// Each distinct query's content words as written (stopwords and words under three letters
/// aside), each the unit mean of its MiniLM token vectors in the context of the whole query,
/// keyed by its place and its query so that one word in two sentences is two vectors; a query
/// of more than `max_words` such words, or of none, is an error.
pub fn read_in_context(
    queries: &HashSet<&str>,
    encoder: &TextEncoder,
    max_words: usize,
) -> Result<(QueryBank, WordCoverage), TrainError> {
    let mut sorted: Vec<&str> = queries.iter().copied().collect();
    sorted.sort_unstable();
    let (mut words, mut vectors) = (HashMap::new(), HashMap::new());
    let mut coverage = WordCoverage::default();
    for chunk in sorted.chunks(64) {
        for (&query, encoded) in chunk.iter().zip(encoder.encode(chunk)?) {
            // The tokens of each word, in order: a word split into word pieces is one word.
            let mut pieces: Vec<WordPieces> = Vec::new();
            for (word, token) in encoded.words.iter().zip(&encoded.tokens) {
                let Some((place, bytes)) = *word else {
                    continue;
                };
                match pieces.last_mut() {
                    Some(word) if word.place == place => {
                        word.bytes.1 = bytes.1;
                        word.tokens.push(token);
                    }
                    _ => pieces.push(WordPieces {
                        place,
                        bytes,
                        tokens: vec![token],
                    }),
                }
            }
            let mut keys = Vec::new();
            for WordPieces { bytes, tokens, .. } in pieces {
                let word = query
                    .get(bytes.0..bytes.1)
                    .unwrap_or_default()
                    .to_lowercase();
                if !is_content_word(&word) || !word.chars().any(char::is_alphabetic) {
                    continue;
                }
                let key = format!("{}\u{1f}{query}", keys.len());
                vectors.insert(key.clone(), mean_pool(&tokens, tokens[0].len()));
                keys.push(key);
            }
            coverage.content += keys.len();
            coverage.as_written += keys.len();
            if keys.is_empty() {
                return Err(TrainError::Data(format!(
                    "the query {query:?} has no words"
                )));
            }
            if keys.len() > max_words {
                return Err(TrainError::QueryTooLong {
                    query: query.to_string(),
                    words: keys.len(),
                    max: max_words,
                });
            }
            words.insert(query.to_string(), keys);
        }
    }
    Ok((QueryBank::from_parts(words, vectors), coverage))
}

/// Every distinct query's words, and every distinct word's vector, computed once.
pub struct QueryBank {
    words: HashMap<String, Vec<String>>,
    vectors: HashMap<String, Vec<f32>>,
    /// Each query's text-tower embedding, unit length, with `train.similarity_input`.
    tower: HashMap<String, Vec<f32>>,
}

impl QueryBank {
    /// Reads each distinct query as `reading` says: brought to `lexicon` ([`read_queries`]),
    /// every distinct word embedded once, or in context ([`read_in_context`]).
    pub fn encode(
        queries: &HashSet<&str>,
        encoder: &TextEncoder,
        lexicon: &Lexicon,
        reading: QueryWords,
        max_words: usize,
    ) -> Result<QueryBank, TrainError> {
        if reading == QueryWords::Contextual {
            return Ok(read_in_context(queries, encoder, max_words)?.0);
        }
        let (words, _) = read_queries(queries, encoder, lexicon, max_words)?;
        let mut list: Vec<&str> = words.values().flatten().map(String::as_str).collect();
        list.sort_unstable();
        list.dedup();
        let vectors = embed(&list, encoder)?.into_iter().collect();
        Ok(QueryBank::from_parts(words, vectors))
    }

    /// A bank from words and vectors at hand.
    pub fn from_parts(
        words: HashMap<String, Vec<String>>,
        vectors: HashMap<String, Vec<f32>>,
    ) -> QueryBank {
        QueryBank {
            words,
            vectors,
            tower: HashMap::new(),
        }
    }

    /// Adds every query's embedding by the text tower, as written (the tower reads sentences,
    /// not the lexicon's words), for `train.similarity_input`.
    pub fn with_tower(self, tower: &TextTower) -> Result<QueryBank, TrainError> {
        let queries: Vec<&str> = self.words.keys().map(String::as_str).collect();
        let embedded = tower.embed(&queries)?;
        let embeddings = queries
            .iter()
            .map(|q| q.to_string())
            .zip(embedded)
            .collect();
        Ok(self.with_tower_embeddings(embeddings))
    }

    /// Adds the queries' tower embeddings at hand, each brought to unit length.
    pub(crate) fn with_tower_embeddings(mut self, embeddings: HashMap<String, Vec<f32>>) -> Self {
        self.tower = embeddings
            .into_iter()
            .map(|(query, vector)| {
                let norm = dot(&vector, &vector).sqrt().max(1e-12);
                (query, vector.iter().map(|v| v / norm).collect())
            })
            .collect();
        self
    }

    /// `query`'s unit text-tower embedding, when [`QueryBank::with_tower`] added them.
    pub fn tower_vector(&self, query: &str) -> Option<&[f32]> {
        self.tower.get(query).map(Vec::as_slice)
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

    /// Each of `queries` as the model reads it.
    fn read(
        queries: &[&str],
        lexicon: &[&str],
        nearest_similarity: f32,
    ) -> (Vec<String>, WordCoverage) {
        let lexicon = Lexicon::new(lexicon.iter().map(|w| w.to_string()), nearest_similarity);
        let encoder = crate::caption::text::fetched_encoder();
        let (read, coverage) =
            read_queries(&queries.iter().copied().collect(), &encoder, &lexicon, 20).unwrap();
        let words = queries.iter().map(|q| read[*q].join(" ")).collect();
        (words, coverage)
    }

    #[test]
    fn sentences_and_pseudo_queries_come_to_the_same_words() {
        let lexicon = [
            "open", "close", "put", "tidy", "wash", "dish", "door", "glass", "take", "shoe",
        ];
        let queries = [
            "a person is opening the door.",
            "Person closes a door",
            "someone is putting the glasses away",
            "the person tidies up and washes dishes",
            "person took off their shoes",
            "open close door",
            // Nothing of the lexicon: the words as written, rather than nothing.
            "Someone laughs",
        ];
        let (words, coverage) = read(&queries, &lexicon, 2.0);
        assert_eq!(
            words,
            [
                "open door",
                "close door",
                "put glass",
                "tidy wash dish",
                "shoe",
                "open close door",
                "someone laughs"
            ]
        );
        // "away", "took", "laughs" are the content words outside the lexicon.
        assert_eq!(
            (
                coverage.content,
                coverage.known,
                coverage.mapped,
                coverage.as_written
            ),
            (16, 13, 0, 1)
        );
        let (words, coverage) = read(&["a person is opening the door"], &[], 2.0);
        assert_eq!(words, ["a person is opening the door"]);
        assert_eq!((coverage.content, coverage.as_written), (2, 2));
    }

    #[test]
    fn words_outside_the_lexicon_are_read_as_their_nearest_lexicon_word() {
        let lexicon = ["open", "take", "door", "cup", "laptop", "sofa"];
        let queries = ["the person grabs a mug", "a person opens the doorway"];
        let (words, coverage) = read(&queries, &lexicon, 0.5);
        assert_eq!(words, ["take cup", "open door"], "{coverage:?}");
        assert_eq!((coverage.known, coverage.mapped), (1, 3));
        // Above every similarity: left out, as before.
        let (words, coverage) = read(&queries, &lexicon, 1.01);
        assert_eq!(words, ["the person grabs a mug", "open"]);
        assert_eq!(coverage.mapped, 0);
    }

    #[test]
    fn read_in_context_every_content_word_reaches_the_model_and_its_sentence_shapes_it() {
        let encoder = crate::caption::text::fetched_encoder();
        let queries = [
            "A person is opening the refrigerator and unzips a bag.",
            "the person grabs a mug",
            "open door",
            "someone opens the door",
        ];
        let (bank, coverage) =
            read_in_context(&queries.iter().copied().collect(), &encoder, 20).unwrap();
        // Stopwords ("a", "the", "and", "person", "someone", "is") aside, every word as
        // written: "unzips", several word pieces, is one word.
        assert!(encoder.encode(&["unzips"]).unwrap()[0].ids.len() > 3);
        let counts: Vec<usize> = queries
            .iter()
            .map(|q| bank.vectors(q, None).len())
            .collect();
        assert_eq!(counts, [4, 2, 2, 2]);
        assert_eq!(
            (coverage.content, coverage.as_written, coverage.known),
            (10, 10, 0)
        );
        for vector in queries.iter().flat_map(|q| bank.vectors(q, None)) {
            assert_eq!(vector.len(), QUERY_DIM);
            assert!((dot(vector, vector) - 1.0).abs() < 1e-4);
        }
        // One word in two sentences: two vectors, alike but not the same.
        let door = |query: &str| bank.vectors(query, None).last().unwrap().to_vec();
        let similarity = dot(&door("open door"), &door("someone opens the door"));
        assert!(similarity < 0.999 && similarity > 0.5, "{similarity}");
        let error = read_in_context(&HashSet::from(["the a of"]), &encoder, 20)
            .err()
            .unwrap();
        assert!(error.to_string().contains("has no words"), "{error}");
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
