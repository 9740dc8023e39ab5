//! momentminer: temporal event proposals and pseudo-queries for video moment retrieval, mined
//! from unlabelled video features (the PSVL recipe).
//!
//! One module per pipeline stage, plain functions over plain data:
//! [`ingest`] → [`sample`] → [`similarity`] → [`events`] → [`proposals`] → [`caption`].
//! [`processor`] is the one way from a video file to its captioned proposals; every driver
//! calls it and only the writing differs: the batch commands ([`batch`], [`bench`]), and the
//! long-running [`service`] layer with its two front-ends, the inbox watcher ([`daemon`]) and
//! the Redis consumer ([`queue`]). Beside the path: [`dataset`] (annotation and dataset
//! formats), [`train`], [`ground`] and [`eval`] (the grounding model and the metrics, with
//! [`span`] below them), [`synth`] (a world with known answers, which hands the product its
//! text tower and vocabulary as files), [`release`] (that world in the layouts of public
//! feature releases), [`structure`] (a development world on a real annotation file's
//! structure), [`inspect`] (pictures), [`report`] (a run as HTML) and [`check`] (what a run
//! needs, tried before it starts). Imports flow one way:
//! `scripts/import-cycles.py` fails CI on any circle.

#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod caption;
pub mod check;
pub mod compute;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod eval;
pub mod events;
pub mod failure;
pub mod fsio;
pub mod ground;
pub mod ingest;
pub mod inspect;
pub mod processor;
pub mod proposals;
pub mod queue;
pub mod release;
pub mod report;
pub mod rng;
pub mod sample;
pub mod service;
pub mod similarity;
pub mod span;
pub mod structure;
pub mod synth;
pub mod train;
