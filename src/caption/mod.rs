//! Pseudo-queries: text (and, next, vision) encoders run through ONNX Runtime. The runtime is
//! a shared library loaded when first needed ([`runtime`]); [`text`] turns sentences into
//! token and sentence embeddings with all-MiniLM-L6-v2, the encoder the grounding model reads
//! queries and pseudo-queries with; [`vocab`] scores a vocabulary of verbs and nouns against a
//! proposal's visual embedding, CLIP-style, to build its pseudo-query.

pub mod runtime;
pub mod text;
pub mod vocab;

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaptionError {
    #[error("ONNX Runtime library {path}: {message}. Run scripts/fetch-models.sh, or point caption.ort_library (or ORT_DYLIB_PATH) at libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel")]
    Runtime { path: PathBuf, message: String },
    #[error("model {path}: {message}. Run scripts/fetch-models.sh or set the caption section's model paths")]
    Model { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("query of {tokens} tokens is longer than caption.max_query_tokens = {max}: {query:?}")]
    TooLong {
        query: String,
        tokens: usize,
        max: usize,
    },
    #[error("vocabulary {path}: {message}")]
    Vocabulary { path: PathBuf, message: String },
    #[error("visual embeddings have {visual} dimensions but the text encoder gives {text}: the visual stream and the text model must come from one CLIP-style model")]
    Dimensions { visual: usize, text: usize },
    #[error("text encoder {path}: {message}")]
    Inference { path: PathBuf, message: String },
}
