//! Scale-out through Redis Streams: `enqueue` adds one message per input file to a stream, and
//! `worker`s on any number of machines read it through one consumer group
//! ([`consumer::run`]), with the daemon's stages and durable outputs. Redis keeps what was
//! delivered and not yet acknowledged; a worker acknowledges only after its outputs are
//! committed, so every input is done at least once and, outputs being idempotent, effectively
//! once.

mod connection;
pub mod consumer;
pub mod merge;
mod owners;

use crate::config::QueueConfig;
use crate::ingest::{walk, FileKind};
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Why a queue command failed.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Redis refused or could not be reached.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// An input to enqueue cannot be resolved or listed.
    #[error("cannot enqueue {path}: {message}")]
    Input {
        /// The input.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The consumer's service layer cannot start.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

pub use connection::{path_arg, Backoff, Redis, RedisError};

/// Adds one message `{path}` per feature file under `inputs` (folders are walked); returns how
/// many. Paths are made absolute, since workers elsewhere read them.
pub fn enqueue(config: &QueueConfig, inputs: &[PathBuf]) -> Result<usize, QueueError> {
    let mut files = Vec::new();
    for input in inputs {
        let fail = |message: String| QueueError::Input {
            path: input.clone(),
            message,
        };
        let absolute = input.canonicalize().map_err(|e| fail(e.to_string()))?;
        if absolute.is_dir() {
            let (found, unlisted) = walk(&absolute);
            if let Some((path, e)) = unlisted.into_iter().next() {
                return Err(QueueError::Input {
                    path,
                    message: format!("cannot list: {e}"),
                });
            }
            files.extend(found.into_iter().filter(|f| FileKind::of(f).is_some()));
        } else {
            files.push(absolute);
        }
    }
    let mut redis = Redis::open(&config.url)?;
    for chunk in files.chunks(1000) {
        redis.add_paths(&config.stream, chunk)?;
    }
    Ok(files.len())
}

/// What `momentminer status --queue` prints.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    /// The Redis server.
    pub url: String,
    /// The stream.
    pub stream: String,
    /// Messages in the stream.
    pub length: usize,
    /// The consumer group.
    pub group: String,
    /// Messages never delivered to any consumer of the group.
    pub lag: Option<usize>,
    /// Delivered, not yet acknowledged.
    pub pending: usize,
    /// The group's consumers.
    pub consumers: Vec<ConsumerStatus>,
    /// Messages in the dead-letter stream.
    pub dead_letters: usize,
    /// Messages acknowledged per second, sampled over one second.
    pub acked_per_second: f64,
}

#[derive(Debug, Serialize)]
/// One consumer of the group.
pub struct ConsumerStatus {
    /// Its name.
    pub name: String,
    /// Messages it holds, unacknowledged.
    pub pending: usize,
    /// Since it last read.
    pub idle_ms: usize,
}

/// The stream, its group and consumers and the dead letters, with the acknowledgement rate sampled
/// over a second.
pub fn status(config: &QueueConfig) -> Result<QueueStatus, QueueError> {
    let mut redis = Redis::open(&config.url)?;
    let sample = |redis: &mut Redis| -> Result<(usize, Option<usize>, usize), QueueError> {
        let groups: StreamInfoGroupsReply =
            match redis.query(redis::cmd("XINFO").arg("GROUPS").arg(&config.stream)) {
                Ok(groups) => groups,
                // No stream yet: nothing was ever enqueued.
                Err(e) if e.source.code() == Some("ERR") => StreamInfoGroupsReply::default(),
                Err(e) => return Err(e.into()),
            };
        let group = groups.groups.into_iter().find(|g| g.name == config.group);
        let read = group.as_ref().and_then(|g| g.entries_read).unwrap_or(0);
        let pending = group.as_ref().map_or(0, |g| g.pending);
        Ok((
            read.saturating_sub(pending),
            group.and_then(|g| g.lag),
            pending,
        ))
    };
    let (acked_before, _, _) = sample(&mut redis)?;
    std::thread::sleep(Duration::from_secs(1));
    let (acked_after, lag, pending) = sample(&mut redis)?;
    let length: usize = redis.query(redis::cmd("XLEN").arg(&config.stream))?;
    let dead_letters: usize = redis.query(redis::cmd("XLEN").arg(&config.dead_letter))?;
    let consumers: StreamInfoConsumersReply = if pending > 0 || lag.is_some() {
        redis
            .query(
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&config.stream)
                    .arg(&config.group),
            )
            .unwrap_or_default()
    } else {
        StreamInfoConsumersReply::default()
    };
    Ok(QueueStatus {
        url: config.url.clone(),
        stream: config.stream.clone(),
        length,
        group: config.group.clone(),
        lag,
        pending,
        consumers: consumers
            .consumers
            .into_iter()
            .map(|c| ConsumerStatus {
                name: c.name,
                pending: c.pending,
                idle_ms: c.idle,
            })
            .collect(),
        dead_letters,
        acked_per_second: acked_after.saturating_sub(acked_before) as f64,
    })
}

impl fmt::Display for QueueStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "queue       {} stream {}", self.url, self.stream)?;
        writeln!(
            f,
            "messages    {} in the stream, {} not yet delivered, {} delivered and not acknowledged",
            self.length,
            self.lag.map_or("?".to_string(), |l| l.to_string()),
            self.pending
        )?;
        writeln!(f, "dead        {} dead letters", self.dead_letters)?;
        writeln!(
            f,
            "throughput  {:.0} messages/s acknowledged",
            self.acked_per_second
        )?;
        for c in &self.consumers {
            writeln!(
                f,
                "  consumer {}: {} pending, idle {} ms",
                c.name, c.pending, c.idle_ms
            )?;
        }
        Ok(())
    }
}
