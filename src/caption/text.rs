//! Text encoders run through ONNX Runtime, of two shapes:
//! - BERT-style (all-MiniLM-L6-v2, the query encoder): `last_hidden_state` (batch, tokens, dim)
//!   out; the sentence embedding is the token vectors' mean over the attention mask,
//!   L2-normalised, as sentence-transformers pools this model.
//! - CLIP-style text towers (models/export_clip.py): one projected embedding (batch, dim) out,
//!   L2-normalised here. open_clip towers take exactly 77 tokens; shorter rows are padded.
//!
//! Which inputs to feed (`attention_mask`, `token_type_ids`) is read from the model itself.

use super::{runtime, CaptionError};
use crate::config::CaptionConfig;
use ort::session::Session;
use ort::value::{Tensor, ValueType};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::Tokenizer;

/// One encoded sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    /// Token ids, `[CLS]` and `[SEP]` included.
    pub ids: Vec<u32>,
    /// For each token, the place of the word it belongs to among the text's words, and the
    /// word's bytes in the text it came from (`None` for `[CLS]` and `[SEP]`).
    pub words: Vec<Option<(u32, (usize, usize))>>,
    /// One vector per token, `[CLS]` and `[SEP]` included; empty for models that give only a
    /// sentence embedding.
    pub tokens: Vec<Vec<f32>>,
    /// Unit-length sentence embedding.
    pub pooled: Vec<f32>,
}

/// A text encoder run through ONNX Runtime (MiniLM, or a CLIP text tower), with its tokenizer.
pub struct TextEncoder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    model: PathBuf,
    max_tokens: usize,
    /// The token count a model with a fixed-size input takes; rows are padded to it.
    fixed_length: Option<usize>,
    feeds_mask: bool,
    feeds_token_types: bool,
}

/// Inputs a text encoder may take besides `input_ids`.
const OPTIONAL_INPUTS: [&str; 2] = ["attention_mask", "token_type_ids"];

impl TextEncoder {
    /// The query encoder: `caption.text_model` with `caption.text_tokenizer`.
    pub fn load(config: &CaptionConfig) -> Result<TextEncoder, CaptionError> {
        TextEncoder::open(&config.text_model, &config.text_tokenizer, config)
    }

    /// Any text encoder of either shape, checked against what this code feeds and reads.
    pub fn open(
        model: &Path,
        tokenizer: &Path,
        config: &CaptionConfig,
    ) -> Result<TextEncoder, CaptionError> {
        let environment = runtime::environment(config)?;
        let model_error = |message: String| CaptionError::Model {
            path: model.to_path_buf(),
            message,
        };
        if !model.is_file() {
            return Err(model_error("no such file".into()));
        }
        let session = Session::builder(&environment)
            .and_then(|b| b.with_intra_threads(config.threads).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(model))
            .map_err(|e| model_error(e.to_string()))?;
        let names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let ids_input = session.inputs().iter().find(|i| i.name() == "input_ids");
        let unexpected: Vec<&String> = names
            .iter()
            .filter(|n| *n != "input_ids" && !OPTIONAL_INPUTS.contains(&n.as_str()))
            .collect();
        if ids_input.is_none() || !unexpected.is_empty() {
            return Err(model_error(format!(
                "has inputs {names:?}; a text encoder takes input_ids and optionally {OPTIONAL_INPUTS:?}"
            )));
        }
        let fixed_length = match ids_input.map(|i| i.dtype()) {
            Some(ValueType::Tensor { shape, .. }) if shape.len() == 2 && shape[1] > 0 => {
                Some(shape[1] as usize)
            }
            _ => None,
        };
        let output_rank = match session.outputs().first().map(|o| o.dtype()) {
            Some(ValueType::Tensor { shape, .. }) => shape.len(),
            _ => 0,
        };
        if !(2..=3).contains(&output_rank) {
            return Err(model_error(format!(
                "its first output has rank {output_rank}; expected token vectors (batch, tokens, dim) or one embedding (batch, dim)"
            )));
        }
        let tokenizer_error = |message: String| CaptionError::Tokenizer {
            path: tokenizer.to_path_buf(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_file(tokenizer).map_err(|e| tokenizer_error(e.to_string()))?;
        // Shipped tokenizer.json files often pad or cut to a fixed length; we pad per batch
        // and refuse over-long queries instead of cutting them silently.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        Ok(TextEncoder {
            session: Mutex::new(session),
            tokenizer,
            model: model.to_path_buf(),
            max_tokens: fixed_length
                .map_or(config.max_query_tokens, |l| l.min(config.max_query_tokens)),
            fixed_length,
            feeds_mask: names.iter().any(|n| n == "attention_mask"),
            feeds_token_types: names.iter().any(|n| n == "token_type_ids"),
        })
    }

    /// A content hash of the model file, naming its weights for caches of embeddings.
    pub fn model_key(&self) -> Result<String, CaptionError> {
        model_key(&self.model)
    }

    /// Encodes sentences as one padded batch.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<EncodedText>, CaptionError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(texts.len());
        let mut words = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding =
                self.tokenizer
                    .encode(*text, true)
                    .map_err(|e| CaptionError::Tokenizer {
                        path: PathBuf::from("tokenizer.json"),
                        message: format!("cannot tokenise {text:?}: {e}"),
                    })?;
            let row = encoding.get_ids().to_vec();
            if row.len() > self.max_tokens {
                return Err(CaptionError::TooLong {
                    query: (*text).to_string(),
                    tokens: row.len(),
                    max: self.max_tokens,
                });
            }
            ids.push(row);
            words.push(
                encoding
                    .get_word_ids()
                    .iter()
                    .zip(encoding.get_offsets())
                    .map(|(word, &offsets)| word.map(|w| (w, offsets)))
                    .collect::<Vec<_>>(),
            );
        }
        let batch = ids.len();
        let length = self
            .fixed_length
            .unwrap_or_else(|| ids.iter().map(Vec::len).max().unwrap_or(0));
        let mut input_ids = vec![0i64; batch * length];
        let mut mask = vec![0i64; batch * length];
        for (row, sentence) in ids.iter().enumerate() {
            for (col, &id) in sentence.iter().enumerate() {
                input_ids[row * length + col] = i64::from(id);
                mask[row * length + col] = 1;
            }
        }
        let (rank, output) = self.run(batch, length, input_ids, mask)?;
        if rank == 2 {
            let dim = output.len() / batch;
            return Ok(ids
                .into_iter()
                .zip(words)
                .zip(output.chunks(dim))
                .map(|((ids, words), embedding)| EncodedText {
                    ids,
                    words,
                    tokens: Vec::new(),
                    pooled: unit(embedding.to_vec()),
                })
                .collect());
        }
        let dim = output.len() / (batch * length).max(1);
        Ok(ids
            .into_iter()
            .zip(words)
            .enumerate()
            .map(|(row, (ids, words))| {
                let tokens: Vec<Vec<f32>> = (0..ids.len())
                    .map(|col| {
                        let at = (row * length + col) * dim;
                        output[at..at + dim].to_vec()
                    })
                    .collect();
                let pooled = mean_pool(&tokens, dim);
                EncodedText {
                    ids,
                    words,
                    tokens,
                    pooled,
                }
            })
            .collect())
    }

    /// The first output's rank and data.
    fn run(
        &self,
        batch: usize,
        length: usize,
        input_ids: Vec<i64>,
        mask: Vec<i64>,
    ) -> Result<(usize, Vec<f32>), CaptionError> {
        let fail = |message: String| CaptionError::Inference {
            path: self.model.clone(),
            message,
        };
        let shape = [batch, length];
        let tensor =
            |data: Vec<i64>| Tensor::from_array((shape, data)).map_err(|e| fail(e.to_string()));
        let mut inputs = ort::inputs! { "input_ids" => tensor(input_ids)? };
        if self.feeds_mask {
            inputs.push(("attention_mask".into(), tensor(mask)?.into()));
        }
        if self.feeds_token_types {
            inputs.push((
                "token_type_ids".into(),
                tensor(vec![0i64; batch * length])?.into(),
            ));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).map_err(|e| fail(e.to_string()))?;
        let (out_shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let fits = match out_shape.len() {
            2 => out_shape[0] == batch as i64,
            3 => out_shape[..2] == [batch as i64, length as i64],
            _ => false,
        };
        if !fits {
            return Err(fail(format!(
                "output has shape {out_shape:?}; expected ({batch}, {length}, dim) or ({batch}, dim)"
            )));
        }
        Ok((out_shape.len(), data.to_vec()))
    }
}

/// Identifies a model's weights (xxh3 of the file), for caches of its embeddings.
pub fn model_key(model: &Path) -> Result<String, CaptionError> {
    let bytes = std::fs::read(model).map_err(|e| CaptionError::Model {
        path: model.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)))
}

/// Mean of the token vectors, L2-normalised.
pub(crate) fn mean_pool<T: AsRef<[f32]>>(tokens: &[T], dim: usize) -> Vec<f32> {
    let mut pooled = vec![0f32; dim];
    for token in tokens {
        for (p, v) in pooled.iter_mut().zip(token.as_ref()) {
            *p += v;
        }
    }
    unit(pooled)
}

/// `v` scaled to unit length.
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    crate::similarity::to_unit_length(&mut v);
    v
}

/// The caption settings with the text encoder's files found from the crate's root, where the
/// test suite's set-up (`scripts/setup.sh test`) fetches them.
#[cfg(test)]
pub(crate) fn fetched_models() -> CaptionConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = crate::config::Config::default().caption;
    for path in [
        &mut config.ort_library,
        &mut config.text_model,
        &mut config.text_tokenizer,
    ] {
        *path = root.join(&*path);
    }
    config
}

/// MiniLM from [`fetched_models`], for tests.
#[cfg(test)]
pub(crate) fn fetched_encoder() -> TextEncoder {
    TextEncoder::load(&fetched_models()).unwrap_or_else(|e| {
        panic!("{e}\n(the test suite's set-up, scripts/setup.sh test, fetches the models)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Reference {
        sentences: Vec<Sentence>,
    }

    #[derive(Deserialize)]
    struct Sentence {
        text: String,
        ids: Vec<u32>,
        first_tokens: Vec<Vec<f32>>,
        embedding: Vec<f32>,
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Our tokenisation and inference against the Python reference
    /// (models/reference_minilm.py): the same ids, and vectors within 1e-4.
    #[test]
    fn minilm_matches_the_python_reference() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let encoder = fetched_encoder();
        let reference: Reference = serde_json::from_str(
            &std::fs::read_to_string(root.join("models/fixtures/minilm_reference.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<&str> = reference
            .sentences
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        let encoded = encoder.encode(&texts).unwrap();
        for (ours, theirs) in encoded.iter().zip(&reference.sentences) {
            assert_eq!(ours.ids, theirs.ids, "{:?}", theirs.text);
            for (token, expected) in ours.tokens.iter().zip(&theirs.first_tokens) {
                assert!(max_diff(token, expected) <= 1e-4, "{:?}", theirs.text);
            }
            let diff = max_diff(&ours.pooled, &theirs.embedding);
            assert!(diff <= 1e-4, "{:?}: max difference {diff}", theirs.text);
        }
        // Paraphrases are closer than unrelated sentences.
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let [door, light, pours] = [0, 1, 3].map(|i| &encoded[i].pooled);
        let opens = &encoder.encode(&["someone opens a door"]).unwrap()[0].pooled;
        assert!(cos(opens, door) > cos(opens, light) && cos(opens, door) > cos(opens, pours));
        // The vocabulary scorer with this real text tower: a sentence's embedding picks its
        // own verb and noun out of a vocabulary.
        let dir = tempfile::tempdir().unwrap();
        let vocabulary = crate::caption::vocab::Vocabulary {
            verbs: ["open", "pour", "sit", "eat", "sweep"]
                .map(String::from)
                .to_vec(),
            nouns: ["door", "water", "chair", "sandwich", "floor"]
                .map(String::from)
                .to_vec(),
            template: None,
        };
        let scored = crate::caption::vocab::ScoredVocabulary::build(
            vocabulary,
            &encoder.model_key().unwrap(),
            dir.path(),
            |words| {
                Ok(encoder
                    .encode(words)?
                    .into_iter()
                    .map(|e| e.pooled)
                    .collect())
            },
        )
        .unwrap();
        for (sentence, verb, noun) in [
            ("a person opens the door", "open", "door"),
            ("someone pours water into a glass", "pour", "water"),
            ("a man sweeps the floor with a broom", "sweep", "floor"),
        ] {
            let visual = &encoder.encode(&[sentence]).unwrap()[0].pooled;
            let words = crate::caption::vocab::WordChoice {
                verbs: 1,
                nouns: 1,
                explain_nouns: 0,
                verb_contrast: false,
                noun_lift: 0.0,
            };
            let query = scored.caption(visual, None, words).unwrap();
            assert_eq!(query.tokens, [verb, noun], "{sentence}");
        }
        let long = "word ".repeat(fetched_models().max_query_tokens);
        assert!(matches!(
            encoder.encode(&[&long]),
            Err(CaptionError::TooLong { .. })
        ));
    }

    #[derive(Deserialize)]
    struct ClipReference {
        sentences: Vec<ClipSentence>,
    }

    #[derive(Deserialize)]
    struct ClipSentence {
        text: String,
        ids: Vec<u32>,
        hf: Vec<f32>,
        open_clip: Vec<f32>,
    }

    /// Both CLIP export paths of models/export_clip.py (a random-weight Hugging Face CLIP with
    /// any-length input and a mask, and an open_clip CLIP with exactly 77 tokens) against
    /// PyTorch, through our tokenizer.json against open_clip's own tokenizer
    /// (models/make_clip_fixtures.py): the same ids, embeddings within 1e-4.
    #[test]
    fn clip_text_towers_match_pytorch() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/clip");
        let reference: ClipReference =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let texts: Vec<&str> = reference
            .sentences
            .iter()
            .map(|s| s.text.as_str())
            .collect();
        let config = fetched_models();
        for name in ["hf", "open_clip"] {
            let model = dir.join(format!("{name}_text.onnx"));
            let encoder = TextEncoder::open(&model, &dir.join("tokenizer.json"), &config)
                .unwrap_or_else(|e| panic!("{e}"));
            // One padded batch: rows of different lengths must not disturb each other.
            let encoded = encoder.encode(&texts).unwrap();
            for (ours, theirs) in encoded.iter().zip(&reference.sentences) {
                assert_eq!(ours.ids, theirs.ids, "{:?}", theirs.text);
                assert!(ours.tokens.is_empty(), "a CLIP tower gives one embedding");
                let expected = unit(
                    if name == "hf" {
                        &theirs.hf
                    } else {
                        &theirs.open_clip
                    }
                    .clone(),
                );
                let diff = max_diff(&ours.pooled, &expected);
                assert!(
                    diff <= 1e-4,
                    "{name} {:?}: max difference {diff}",
                    theirs.text
                );
            }
        }
        // open_clip's tower takes 77 tokens: longer text is refused, not cut.
        let open_clip = TextEncoder::open(
            &dir.join("open_clip_text.onnx"),
            &dir.join("tokenizer.json"),
            &config,
        )
        .unwrap();
        let long = "word ".repeat(76);
        assert!(matches!(
            open_clip.encode(&[&long]),
            Err(CaptionError::TooLong { max: 64, .. })
        ));
    }

    #[test]
    fn a_model_that_is_no_text_encoder_is_refused_at_load() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/clip");
        let err = match TextEncoder::open(
            &dir.join("not_text.onnx"),
            &dir.join("tokenizer.json"),
            &fetched_models(),
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("an image model loaded as a text encoder"),
        };
        assert!(
            err.contains("not_text.onnx") && err.contains("pixel_values"),
            "{err}"
        );
        let err = match TextEncoder::open(
            &dir.join("hf_text.onnx"),
            &dir.join("missing-tokenizer.json"),
            &fetched_models(),
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing tokenizer loaded"),
        };
        assert!(err.contains("missing-tokenizer.json"), "{err}");
    }

    #[test]
    fn a_missing_library_or_model_is_an_error_naming_the_file() {
        let mut config = Config::default().caption;
        config.ort_library = "/nonexistent/libonnxruntime.so.1.31.1".into();
        config.text_model = "/nonexistent/model.onnx".into();
        // The library loads once per process: whether this test or another loads it first,
        // the file that is missing is named, with what to do.
        let err = match TextEncoder::load(&config) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a missing model loaded"),
        };
        assert!(err.contains("/nonexistent/"), "{err}");
        assert!(err.contains("fetch-models"), "{err}");
    }
}
