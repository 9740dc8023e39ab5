//! What can go wrong in training, grounding and evaluation with a trained model.

use crate::caption::CaptionError;
use crate::dataset::DatasetError;
use crate::ingest::IngestError;
use std::path::PathBuf;
use thiserror::Error;

/// Why training, loading a model or grounding with it failed.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A dataset or annotation file cannot be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The query encoder or the vocabulary cannot be loaded.
    #[error(transparent)]
    Caption(#[from] CaptionError),
    /// The data cannot be trained on (no pairs, videos without features, ...).
    #[error("{0}")]
    Data(String),
    /// `ingest.durations_file` cannot be read.
    #[error(transparent)]
    Durations(#[from] IngestError),
    /// A query longer than `train.max_query_words`.
    #[error("query of {words} words is longer than train.max_query_words = {max}: {query:?}")]
    QueryTooLong {
        /// The query.
        query: String,
        /// Its words.
        words: usize,
        /// `train.max_query_words`.
        max: usize,
    },
    /// A video's features cannot be read or do not fit the model.
    #[error("features of video {vid} ({path}): {message}")]
    Features {
        /// The video.
        vid: String,
        /// Its feature file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model folder that cannot be read or was made for something else.
    #[error("model {path}: {message}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint or card cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The thread a seed trains on cannot start.
    #[error("cannot start a training thread: {0}")]
    Thread(#[from] rayon::ThreadPoolBuildError),
    /// A tensor operation failed (shapes, memory).
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
}
