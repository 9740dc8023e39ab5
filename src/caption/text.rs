//! The query text encoder: all-MiniLM-L6-v2 as ONNX (`caption.text_model`) with its
//! `tokenizer.json`. Each sentence becomes its token ids, one 384-d vector per token
//! (`last_hidden_state`) and a sentence embedding: the mean of the token vectors over the
//! attention mask, L2-normalised, as sentence-transformers pools this model.

use super::{runtime, CaptionError};
use crate::config::CaptionConfig;
use ort::session::Session;
use ort::value::Tensor;
use std::path::PathBuf;
use std::sync::Mutex;
use tokenizers::Tokenizer;

/// One encoded sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedText {
    pub ids: Vec<u32>,
    /// One vector per token, `[CLS]` and `[SEP]` included.
    pub tokens: Vec<Vec<f32>>,
    /// Unit-length sentence embedding.
    pub pooled: Vec<f32>,
}

pub struct TextEncoder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    model: PathBuf,
    max_tokens: usize,
}

impl TextEncoder {
    pub fn load(config: &CaptionConfig) -> Result<TextEncoder, CaptionError> {
        let environment = runtime::environment(config)?;
        let model = config.text_model.clone();
        let model_error = |message: String| CaptionError::Model {
            path: model.clone(),
            message,
        };
        if !model.is_file() {
            return Err(model_error("no such file".into()));
        }
        let session = Session::builder(&environment)
            .and_then(|b| b.with_intra_threads(config.threads).map_err(Into::into))
            .and_then(|mut b| b.commit_from_file(&model))
            .map_err(|e| model_error(e.to_string()))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for wanted in ["input_ids", "attention_mask"] {
            if !names.contains(&wanted) {
                return Err(model_error(format!(
                    "has inputs {names:?}; a BERT-style text encoder needs input_ids and attention_mask"
                )));
            }
        }
        let tokenizer_error = |message: String| CaptionError::Tokenizer {
            path: config.text_tokenizer.clone(),
            message,
        };
        let mut tokenizer = Tokenizer::from_file(&config.text_tokenizer)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        // Shipped tokenizer.json files often pad or cut to a fixed length; we pad per batch
        // and refuse over-long queries instead of cutting them silently.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| tokenizer_error(e.to_string()))?;
        Ok(TextEncoder {
            session: Mutex::new(session),
            tokenizer,
            model,
            max_tokens: config.max_query_tokens,
        })
    }

    /// Identifies the model's weights (xxh3 of the file), for caches of its embeddings.
    pub fn model_key(&self) -> Result<String, CaptionError> {
        let bytes = std::fs::read(&self.model).map_err(|e| CaptionError::Model {
            path: self.model.clone(),
            message: e.to_string(),
        })?;
        Ok(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)))
    }

    /// Encodes sentences as one padded batch.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<EncodedText>, CaptionError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(texts.len());
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
        }
        let (batch, length) = (ids.len(), ids.iter().map(Vec::len).max().unwrap_or(0));
        let mut input_ids = vec![0i64; batch * length];
        let mut mask = vec![0i64; batch * length];
        for (row, sentence) in ids.iter().enumerate() {
            for (col, &id) in sentence.iter().enumerate() {
                input_ids[row * length + col] = i64::from(id);
                mask[row * length + col] = 1;
            }
        }
        let hidden = self.run(batch, length, input_ids, mask.clone())?;
        let dim = hidden.len() / (batch * length).max(1);
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(row, ids)| {
                let tokens: Vec<Vec<f32>> = (0..ids.len())
                    .map(|col| {
                        let at = (row * length + col) * dim;
                        hidden[at..at + dim].to_vec()
                    })
                    .collect();
                let pooled = mean_pool(&tokens, dim);
                EncodedText {
                    ids,
                    tokens,
                    pooled,
                }
            })
            .collect())
    }

    fn run(
        &self,
        batch: usize,
        length: usize,
        input_ids: Vec<i64>,
        mask: Vec<i64>,
    ) -> Result<Vec<f32>, CaptionError> {
        let fail = |message: String| CaptionError::Inference {
            path: self.model.clone(),
            message,
        };
        let shape = [batch, length];
        let tensor =
            |data: Vec<i64>| Tensor::from_array((shape, data)).map_err(|e| fail(e.to_string()));
        let inputs = ort::inputs! {
            "input_ids" => tensor(input_ids)?,
            "attention_mask" => tensor(mask)?,
            "token_type_ids" => tensor(vec![0i64; batch * length])?,
        };
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(inputs).map_err(|e| fail(e.to_string()))?;
        let (out_shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let expected = [batch as i64, length as i64];
        if out_shape.len() != 3 || out_shape[..2] != expected {
            return Err(fail(format!(
                "output has shape {out_shape:?}; expected ({batch}, {length}, dim)"
            )));
        }
        Ok(data.to_vec())
    }
}

/// Mean of the token vectors, L2-normalised.
fn mean_pool(tokens: &[Vec<f32>], dim: usize) -> Vec<f32> {
    let mut pooled = vec![0f32; dim];
    for token in tokens {
        for (p, v) in pooled.iter_mut().zip(token) {
            *p += v;
        }
    }
    let count = tokens.len().max(1) as f32;
    pooled.iter_mut().for_each(|p| *p /= count);
    let norm = pooled.iter().map(|p| p * p).sum::<f32>().sqrt().max(1e-12);
    pooled.iter_mut().for_each(|p| *p /= norm);
    pooled
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
        let mut config = Config::default().caption;
        for path in [
            &mut config.ort_library,
            &mut config.text_model,
            &mut config.text_tokenizer,
        ] {
            *path = root.join(&*path);
        }
        let encoder = TextEncoder::load(&config).unwrap_or_else(|e| {
            panic!("{e}\n(the test suite's set-up, scripts/setup.sh test, fetches the models)")
        });
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
            let query = scored.caption(visual, 1, 1).unwrap();
            assert_eq!(query.tokens, [verb, noun], "{sentence}");
        }
        let long = "word ".repeat(config.max_query_tokens);
        assert!(matches!(
            encoder.encode(&[&long]),
            Err(CaptionError::TooLong { .. })
        ));
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
