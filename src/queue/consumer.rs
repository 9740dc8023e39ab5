//! `momentminer worker`: one consumer of the group, the second front-end of the
//! [`crate::service`] layer. It reads messages (first the ones it held before a restart, then
//! new ones), takes over messages that a dead consumer left idle (XAUTOCLAIM), runs each input
//! as a [`job`] on the service's pool, records the results with the service's group commit,
//! and acknowledges (XACK) only what is committed. A message delivered `max_attempts` times
//! without success goes to the dead-letter stream with its last error.

use super::owners::RedisOwners;
use super::{path_arg, Backoff, QueueError, Redis, RedisError};
use crate::config::Config;
use crate::service::job::{self, Outcome};
use crate::service::record::InputRecord;
use crate::service::recorder::{Finish, Urgency};
use crate::service::{self, notify_systemd, Event, Finished, Role, Service};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The consumer name: `queue.consumer`, or this machine's host name.
pub fn consumer_name(config: &Config) -> String {
    if !config.queue.consumer.is_empty() {
        return config.queue.consumer.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// `queue.roots` (or the inbox when it is empty), with symlinks resolved where they exist.
fn resolved_roots(config: &Config) -> Vec<PathBuf> {
    let roots = match config.queue.roots.as_slice() {
        [] => std::slice::from_ref(&config.daemon.inbox),
        roots => roots,
    };
    roots
        .iter()
        .map(|root| {
            root.canonicalize().unwrap_or_else(|e| {
                tracing::warn!(root = %root.display(), "queue root cannot be resolved: {e}");
                lexical(root)
            })
        })
        .collect()
}

/// Whether `path`, with symlinks and `..` resolved, lies under one of `roots`. A path that does
/// not exist is judged as written, `..` taken away lexically.
fn within(path: &Path, roots: &[PathBuf]) -> bool {
    let resolved = path.canonicalize().unwrap_or_else(|_| lexical(path));
    roots.iter().any(|root| resolved.starts_with(root))
}

/// `path` made absolute with `.` and `..` taken away, without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    let absolute = std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

struct Consumer {
    service: Service,
    name: String,
    redis: Redis,
    backoff: Backoff,
    /// What this consumer's ledger knows of each input, for change detection.
    known: HashMap<PathBuf, InputRecord>,
    in_flight: HashMap<String, PathBuf>,
    /// Messages whose results wait for the next commit, then to be acknowledged.
    awaiting_commit: Vec<String>,
    to_ack: Vec<String>,
    /// Read our own pending messages (held before a restart) before new ones.
    own_pending_first: bool,
    last_claim: Instant,
    stopping: Option<Instant>,
    /// `queue.roots`, resolved: the only folders inputs are read from.
    roots: Vec<PathBuf>,
}

/// Runs until SIGTERM/SIGINT, then drains: in-flight messages are finished (or left pending for
/// another consumer after the shutdown timeout) and everything finished is committed and
/// acknowledged.
pub fn run(config: Config) -> Result<(), QueueError> {
    let mut config = config;
    // A consumer processes what it reads; enqueueing is the watcher's job.
    config.daemon.enqueue = false;
    let name = consumer_name(&config);
    let redis = Redis::open(&config.queue.url)?;
    let backoff = Backoff::new(&config.queue);
    let (mut service, events) = service::open(config, Role::Consumer { name: name.clone() })?;
    service.share_owners(Box::new(RedisOwners::new(
        Redis::open(&service.config.queue.url)?,
        &service.config.queue.stream,
    )));
    let known = std::mem::take(&mut service.inputs).into_iter().collect();
    let roots = resolved_roots(&service.config);
    service.log_start_up();
    tracing::info!(
        consumer = %name,
        stream = %service.config.queue.stream,
        group = %service.config.queue.group,
        workers = service.workers,
        "worker started"
    );
    let mut consumer = Consumer {
        service,
        name,
        redis,
        backoff,
        known,
        in_flight: HashMap::new(),
        awaiting_commit: Vec::new(),
        to_ack: Vec::new(),
        own_pending_first: true,
        last_claim: Instant::now(),
        stopping: None,
        roots,
    };
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    consumer.serve(&events);
    Ok(())
}

impl Consumer {
    fn serve(&mut self, rx: &Receiver<Event>) {
        let mut group_ready = false;
        loop {
            for event in rx.try_iter() {
                self.handle(event);
            }
            let urgency = if self.in_flight.is_empty() {
                Urgency::Idle
            } else {
                Urgency::WhenDue
            };
            self.commit(urgency);
            if !self.to_ack.is_empty() && self.backoff.ready() {
                self.acknowledge();
            }
            if let Some(deadline) = self.stopping {
                let drained = self.in_flight.is_empty() || Instant::now() >= deadline;
                if drained && (self.to_ack.is_empty() || !self.backoff.ready()) {
                    break;
                }
            }
            let room = self
                .service
                .max_in_flight
                .saturating_sub(self.in_flight.len());
            if self.stopping.is_none() && room > 0 && self.backoff.ready() {
                if !group_ready {
                    group_ready = self.create_group();
                }
                if group_ready {
                    self.fetch(room);
                    continue;
                }
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.commit(Urgency::Now);
        if !self.to_ack.is_empty() {
            self.acknowledge();
        }
        if !self.in_flight.is_empty() {
            tracing::warn!(
                unfinished = self.in_flight.len(),
                "stopping with messages in progress; they stay pending and another worker takes them over"
            );
        }
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        tracing::info!(consumer = %self.name, "worker stopped");
    }

    /// Commits finished results as `urgency` asks; what is committed may be acknowledged.
    fn commit(&mut self, urgency: Urgency) {
        let service = &mut self.service;
        if service.recorder.commit(&service.config.daemon, urgency) {
            self.to_ack.append(&mut self.awaiting_commit);
        }
        for refused in service.recorder.take_refused() {
            self.known.insert(refused.path.clone(), refused.record());
        }
        let shards = match urgency {
            Urgency::Now => Urgency::Now,
            _ => Urgency::WhenDue,
        };
        service
            .recorder
            .flush_shards(&service.config.daemon, shards);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(signal) if signal == signal_hook::consts::SIGHUP => {
                tracing::info!("SIGHUP: a worker re-reads its configuration only at a restart");
            }
            Event::Signal(_) => {
                let timeout = Duration::from_secs(self.service.config.daemon.shutdown_timeout_s);
                match self.stopping {
                    None => {
                        tracing::info!(in_flight = self.in_flight.len(), "stopping: draining");
                        self.stopping = Some(Instant::now() + timeout);
                    }
                    Some(_) => self.stopping = Some(Instant::now()),
                }
            }
            Event::Finished(finished) => self.finished(*finished),
            // Only the inbox watcher sees paths change.
            Event::Paths(_) | Event::Rescan(_) => {}
        }
    }

    /// Redis errors are logged once per failure and retried after the backoff.
    fn redis_failed(&mut self, what: &str, e: RedisError) {
        tracing::warn!("{what}: {e}; retrying");
        self.backoff.failed();
    }

    fn create_group(&mut self) -> bool {
        let q = &self.service.config.queue;
        let created = self.redis.query::<()>(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&q.stream)
                .arg(&q.group)
                .arg("0")
                .arg("MKSTREAM"),
        );
        match created {
            Ok(()) => true,
            Err(e) if e.source.code() == Some("BUSYGROUP") => true,
            Err(e) => {
                self.redis_failed("cannot create the consumer group", e);
                false
            }
        }
    }

    /// Takes over idle messages now and then, else reads own pending or new messages.
    fn fetch(&mut self, room: usize) {
        let q = self.service.config.queue.clone();
        let claim_every = Duration::from_millis(q.claim_idle_ms / 2).max(Duration::from_millis(50));
        if self.last_claim.elapsed() >= claim_every {
            self.last_claim = Instant::now();
            let claimed: Result<StreamAutoClaimReply, _> = self.redis.query(
                redis::cmd("XAUTOCLAIM")
                    .arg(&q.stream)
                    .arg(&q.group)
                    .arg(&self.name)
                    .arg(q.claim_idle_ms)
                    .arg("0-0")
                    .arg("COUNT")
                    // A dead worker's messages are taken over in one go (at most doubling the
                    // messages in progress here), not a free slot at a time.
                    .arg(self.service.max_in_flight),
            );
            match claimed {
                Ok(reply) => {
                    if !reply.claimed.is_empty() {
                        tracing::info!(messages = reply.claimed.len(), "took over idle messages");
                    }
                    self.accept(reply.claimed, true);
                }
                Err(e) => self.redis_failed("cannot claim idle messages", e),
            }
            return;
        }
        let waiting = self.awaiting_commit.len() + self.to_ack.len();
        let block = if self.in_flight.is_empty() && waiting == 0 {
            q.block_ms
        } else {
            5
        };
        let start = if self.own_pending_first { "0" } else { ">" };
        let read: Result<Option<StreamReadReply>, _> = self.redis.query(
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&q.group)
                .arg(&self.name)
                .arg("COUNT")
                .arg(room)
                .arg("BLOCK")
                .arg(block)
                .arg("STREAMS")
                .arg(&q.stream)
                .arg(start),
        );
        match read {
            Ok(reply) => {
                self.backoff.succeeded();
                let messages: Vec<StreamId> = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                if self.own_pending_first {
                    // Own pending messages are re-read from "0" until none is left that is
                    // not already being worked on.
                    let fresh = messages
                        .iter()
                        .filter(|m| !self.in_flight.contains_key(&m.id))
                        .count();
                    self.own_pending_first = fresh > 0;
                }
                self.accept(messages, start == "0");
            }
            Err(e) => self.redis_failed("cannot read messages", e),
        }
    }

    /// Starts work on messages; `redelivered` ones have their delivery count checked first.
    fn accept(&mut self, messages: Vec<StreamId>, redelivered: bool) {
        for message in messages {
            let held = [&self.awaiting_commit, &self.to_ack];
            if self.in_flight.contains_key(&message.id)
                || held.iter().any(|ids| ids.contains(&message.id))
            {
                continue;
            }
            let deliveries = if redelivered {
                self.deliveries(&message.id)
            } else {
                1
            };
            let path = message.map.get("path").and_then(|v| match v {
                redis::Value::BulkString(bytes) => {
                    use std::os::unix::ffi::OsStringExt;
                    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes.clone())))
                }
                _ => None,
            });
            let Some(path) = path else {
                self.dead_letter(
                    &message.id,
                    None,
                    deliveries,
                    "the message has no 'path' field",
                );
                continue;
            };
            if !within(&path, &self.roots) {
                let error = format!(
                    "outside_roots: {} is outside queue.roots {:?}; not read",
                    path.display(),
                    self.roots
                );
                self.dead_letter(&message.id, Some(&path), deliveries, &error);
                continue;
            }
            if deliveries > self.service.config.queue.max_attempts as usize {
                let error = self.last_error(&message.id);
                self.dead_letter(&message.id, Some(&path), deliveries - 1, &error);
                continue;
            }
            self.dispatch(message.id, path, deliveries);
        }
    }

    fn deliveries(&mut self, id: &str) -> usize {
        let q = &self.service.config.queue;
        let reply: Result<StreamPendingCountReply, _> = self.redis.query(
            redis::cmd("XPENDING")
                .arg(&q.stream)
                .arg(&q.group)
                .arg(id)
                .arg(id)
                .arg(1),
        );
        reply
            .ok()
            .and_then(|r| r.ids.first().map(|p| p.times_delivered))
            .unwrap_or(1)
    }

    fn errors_key(&self) -> String {
        format!("{}:errors", self.service.config.queue.stream)
    }

    fn last_error(&mut self, id: &str) -> String {
        let key = self.errors_key();
        self.redis
            .query::<Option<String>>(redis::cmd("HGET").arg(key).arg(id))
            .ok()
            .flatten()
            .unwrap_or_else(|| "no error recorded (the worker holding it died?)".into())
    }

    fn dead_letter(&mut self, id: &str, path: Option<&PathBuf>, attempts: usize, error: &str) {
        let q = self.service.config.queue.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&q.dead_letter)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("path")
            .arg(path.map_or(&[][..], |p| path_arg(p)))
            .arg("error")
            .arg(error)
            .arg("attempts")
            .arg(attempts)
            .arg("consumer")
            .arg(&self.name)
            .ignore()
            .cmd("XACK")
            .arg(&q.stream)
            .arg(&q.group)
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(self.errors_key())
            .arg(id)
            .ignore();
        match self.redis.pipeline::<()>(&pipe) {
            Ok(()) => tracing::warn!(id, attempts, "dead letter: {error}"),
            Err(e) => self.redis_failed("cannot move a message to the dead letters", e),
        }
    }

    fn dispatch(&mut self, id: String, path: PathBuf, deliveries: usize) {
        let job = job::Job {
            previous: self.known.get(&path).cloned().unwrap_or_default(),
            path: path.clone(),
            attempts: deliveries.saturating_sub(1) as u32,
            // Redis counts the attempts here: transient failures are never quarantined by the
            // job itself, they are redelivered and end in the dead letters.
            retry_attempts: u32::MAX,
        };
        self.in_flight.insert(id.clone(), path);
        self.service.spawn(job, Instant::now(), Some(id), job::run);
    }

    fn finished(&mut self, done: Finished) {
        let Finished {
            job,
            outcome,
            ready_at,
            message,
        } = done;
        let Some(id) = message else {
            return;
        };
        self.in_flight.remove(&id);
        let deliveries = job.attempts + 1;
        let path = job.path;
        match self.service.recorder.finish(&path, outcome, ready_at) {
            Finish::Recorded(record) => {
                self.known.insert(path, record);
            }
            Finish::Touched(_) => {}
            // Not acknowledged: the message stays pending and is delivered again after
            // `claim_idle_ms`, to this consumer or another, until `max_attempts`.
            Finish::Unfinished(outcome) => {
                let error = match outcome {
                    Outcome::Retry { record } => record.message,
                    Outcome::Vanished => {
                        "the file does not exist (not on storage this worker sees?)".into()
                    }
                    _ => "the file changed while it was read".into(),
                };
                tracing::warn!(id = %id, input = %path.display(), deliveries, "will be retried: {error}");
                let key = self.errors_key();
                if let Err(e) = self
                    .redis
                    .query::<()>(redis::cmd("HSET").arg(key).arg(&id).arg(&error))
                {
                    self.redis_failed("cannot record an error", e);
                }
                return;
            }
        }
        self.awaiting_commit.push(id);
    }

    fn acknowledge(&mut self) {
        let q = &self.service.config.queue;
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&q.stream)
            .arg(&q.group)
            .arg(&self.to_ack)
            .ignore()
            .cmd("HDEL")
            .arg(self.errors_key())
            .arg(&self.to_ack)
            .ignore();
        match self.redis.pipeline::<()>(&pipe) {
            Ok(()) => {
                self.backoff.succeeded();
                self.to_ack.clear();
            }
            Err(e) => self.redis_failed("cannot acknowledge", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_a_root_are_within_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("shared");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/v.npz"), b"x").unwrap();
        let roots = [root.canonicalize().unwrap()];
        assert!(within(&root.join("a/v.npz"), &roots));
        assert!(within(&root.join("a/missing.npz"), &roots));
        assert!(!within(&root.join("../../elsewhere/x.npz"), &roots));
        assert!(!within(Path::new("/etc/passwd"), &roots));
        let escape = root.join("a/escape.npz");
        std::os::unix::fs::symlink("/etc/hostname", &escape).unwrap();
        assert!(
            !within(&escape, &roots),
            "a symlink out of the root is outside it"
        );
    }
}
