//! momentminer: temporal event proposals and pseudo-queries for video moment retrieval, mined
//! from unlabelled video features (the PSVL recipe).
//!
//! Data flows one way through one module per stage:
//! [`ingest`] → [`sample`] → [`similarity`] → [`events`] → [`proposals`], composed by
//! [`pipeline`]; [`batch`] runs it over many files, [`eval`] measures it, [`synth`] makes a
//! world with known answers, [`inspect`] draws why a boundary is where it is. [`daemon`] is
//! the long-running service: a watched inbox, a ledger, durable outputs and dataset shards.

pub mod batch;
pub mod bench;
pub mod caption;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod eval;
pub mod events;
pub mod fsio;
pub mod ground;
pub mod ingest;
pub mod inspect;
pub mod pipeline;
pub mod proposals;
pub mod queue;
pub mod rng;
pub mod sample;
pub mod similarity;
pub mod synth;
pub mod train;
