//! The Redis connection the queue's commands share, and the backoff between reconnections.

use crate::config::QueueConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A Redis command that failed, with the server it was sent to.
#[derive(Debug, Error)]
#[error("Redis at {url}: {source}")]
pub struct RedisError {
    /// The server's URL.
    pub url: String,
    /// What Redis (or the connection) said.
    #[source]
    pub source: ::redis::RedisError,
}

/// A connection that comes back: any failed command drops it, and the next command reconnects
/// (callers space their retries with [`Backoff`]).
pub struct Redis {
    client: ::redis::Client,
    url: String,
    connection: Option<::redis::Connection>,
}

impl Redis {
    /// A connection to `url`, made at the first command.
    pub fn open(url: &str) -> Result<Redis, RedisError> {
        let client = ::redis::Client::open(url).map_err(|source| RedisError {
            url: url.to_string(),
            source,
        })?;
        Ok(Redis {
            client,
            url: url.to_string(),
            connection: None,
        })
    }

    /// Runs one command.
    pub fn query<T: ::redis::FromRedisValue>(
        &mut self,
        cmd: &::redis::Cmd,
    ) -> Result<T, RedisError> {
        self.with(|con| cmd.query(con))
    }

    /// Runs a pipeline.
    pub fn pipeline<T: ::redis::FromRedisValue>(
        &mut self,
        pipe: &::redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.with(|con| pipe.query(con))
    }

    fn with<T>(
        &mut self,
        run: impl FnOnce(&mut ::redis::Connection) -> ::redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let fail = |source| RedisError {
            url: self.url.clone(),
            source,
        };
        let con = match self.connection.as_mut() {
            Some(con) => con,
            None => self.connection.insert(
                self.client
                    .get_connection_with_timeout(Duration::from_secs(5))
                    .map_err(fail)?,
            ),
        };
        run(con).map_err(|source| {
            if source.is_io_error()
                || source.is_connection_dropped()
                || source.is_unrecoverable_error()
            {
                self.connection = None;
            }
            fail(source)
        })
    }
}

/// Exponential backoff between reconnection attempts.
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
    next: Option<Instant>,
}

impl Backoff {
    /// Starting at `queue.reconnect_base_ms`, doubling up to `queue.reconnect_max_ms`.
    pub fn new(config: &QueueConfig) -> Backoff {
        let base = Duration::from_millis(config.reconnect_base_ms);
        Backoff {
            base,
            max: Duration::from_millis(config.reconnect_max_ms),
            current: base,
            next: None,
        }
    }

    /// Whether an attempt may be made now.
    pub fn ready(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// An attempt failed: wait, longer than last time.
    pub fn failed(&mut self) {
        self.next = Some(Instant::now() + self.current);
        self.current = (self.current * 2).min(self.max);
    }

    /// An attempt succeeded: back to the base delay, no wait.
    pub fn succeeded(&mut self) {
        self.current = self.base;
        self.next = None;
    }
}

/// A path as the stream carries it: its bytes, whatever their encoding.
pub fn path_arg(path: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes()
}

impl Redis {
    /// Adds one message `{path}` per path to `stream`, in one round trip.
    pub fn add_paths(&mut self, stream: &str, paths: &[PathBuf]) -> Result<(), RedisError> {
        let mut pipe = ::redis::pipe();
        for path in paths {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("path")
                .arg(path_arg(path))
                .ignore();
        }
        self.pipeline::<()>(&pipe)
    }
}
