//! What can go wrong in training, grounding and evaluation with a trained model.

use crate::caption::CaptionError;
use crate::dataset::DatasetError;
use crate::ingest::IngestError;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Caption(#[from] CaptionError),
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Durations(#[from] IngestError),
    #[error("query of {words} words is longer than train.max_query_words = {max}: {query:?}")]
    QueryTooLong {
        query: String,
        words: usize,
        max: usize,
    },
    #[error("features of video {vid} ({path}): {message}")]
    Features {
        vid: String,
        path: PathBuf,
        message: String,
    },
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}
