//! The inbox watcher (`momentminer watch`): a watched inbox in, proposals and dataset shards
//! out, for months, across crashes, restarts and bad files. It is one front-end of the
//! [`crate::service`] layer (the Redis consumer is the other): it decides which files to take
//! and when, the service runs them and records their outcomes.
//!
//! One main thread owns all state; worker threads run one [`job`] each and send back its
//! outcome. A file is taken once it has settled (unchanged for `settle_ms`). Its outputs are
//! written under temporary names; in a group commit the main thread makes them durable (one
//! syncfs), renames them into place, fsyncs their folders and records the group in the ledger
//! (with `durability = "file"` the worker fsyncs and renames each output itself). A crash at
//! any instant therefore leaves each input either recorded with whole outputs, or not recorded
//! and redone (rewriting identical outputs) after the restart. With `daemon.enqueue` the
//! watcher hands each examined file to the Redis stream instead of processing it.

mod inbox;
pub mod retrain;
mod settle;
pub mod status;

use crate::config::{Config, ConfigError, DaemonConfig};
use crate::failure::{Failure, Reason, Stage};
use crate::queue::{QueueError, Redis};
use crate::service::job::{self, Context, Job, Outcome};
use crate::service::ledger::Change;
use crate::service::metrics::Stalled;
use crate::service::record::{now_ms, InputRecord, State};
use crate::service::recorder::{Finish, Urgency};
use crate::service::{self, notify_systemd, Event, Finished, Role, Service, ServiceError};
use inbox::Inbox;
use settle::Settling;
use status::{Activity, ACTIVITY_KEY};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the watcher cannot start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The service layer cannot start.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The inbox cannot be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The inbox.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
    /// `daemon.enqueue` is set and the queue cannot be reached.
    #[error("daemon.enqueue: {0}")]
    Queue(#[from] QueueError),
}

/// Where the daemon gets a fresh configuration on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError>>;

/// What the main loop knows about an input: its record plus in-memory flags.
#[derive(Debug, Default)]
struct Entry {
    record: InputRecord,
    in_flight: bool,
    /// Something happened to the file while it was in flight: look again when it returns.
    recheck: bool,
}

struct Daemon {
    service: Service,
    /// With `daemon.enqueue`, examined files go to this queue instead of being processed.
    enqueue: Option<Arc<Mutex<Redis>>>,
    reload: Reload,
    index: HashMap<PathBuf, Entry>,
    settling: HashMap<PathBuf, Settling>,
    settle_queue: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    ready: VecDeque<(PathBuf, Instant)>,
    retries: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    in_flight: usize,
    next_rescan: Instant,
    stop_deadline: Option<Instant>,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    last_status: Instant,
    retrainer: retrain::Retrainer,
    /// Rescans of the inbox finished since start-up.
    rescans: u64,
    /// The activity last written to the ledger for `status`.
    published: Option<Activity>,
}

/// Runs until SIGTERM/SIGINT. Returns once in-flight work is finished (or the shutdown timeout
/// passed) and everything finished is committed.
pub fn run(config: Config, reload: Reload) -> Result<(), DaemonError> {
    let enqueue = match config.daemon.enqueue {
        true => Some(Arc::new(Mutex::new(
            Redis::open(&config.queue.url).map_err(QueueError::from)?,
        ))),
        false => None,
    };
    let (mut service, events) = service::open(config, Role::Watcher)?;
    let mut index = HashMap::with_capacity(service.inputs.len());
    let mut forgotten = Vec::new();
    let mut retries = BinaryHeap::new();
    let (now, now_wall) = (Instant::now(), now_ms());
    for (path, record) in std::mem::take(&mut service.inputs) {
        let exists = path.symlink_metadata().is_ok();
        match record.state {
            // Never finished and now gone: nothing to do and nothing to keep.
            Some(State::Queued | State::Retry) if !exists => {
                forgotten.push(path);
                continue;
            }
            Some(State::Retry) => {
                let wait = record.next_attempt_ms.unwrap_or(now_wall) - now_wall;
                let due = now + Duration::from_millis(wait.max(0) as u64);
                retries.push(Reverse((due, path.clone())));
            }
            _ => {}
        }
        index.insert(
            path,
            Entry {
                record,
                ..Entry::default()
            },
        );
    }
    for path in forgotten {
        service.recorder.record(Change::Forget { path });
    }
    let watcher = Inbox::watch(&service.folders.inbox, {
        let tx = service.sender();
        move |event| {
            let _ = tx.send(match event {
                inbox::Change::Paths(paths) => Event::Paths(paths),
                inbox::Change::Rescan(why) => Event::Rescan(why),
            });
        }
    })
    .map_err(|source| DaemonError::Watch {
        path: service.folders.inbox.clone(),
        source,
    })?;
    let retrainer = retrain::Retrainer::new(service.folders.output(), &service.folders.inbox);
    service.log_start_up();
    tracing::info!(
        inbox = %service.folders.inbox.display(),
        workers = service.workers,
        known_inputs = index.len(),
        "watching"
    );
    let mut daemon = Daemon {
        service,
        enqueue,
        reload,
        index,
        settling: HashMap::new(),
        settle_queue: BinaryHeap::new(),
        ready: VecDeque::new(),
        retries,
        in_flight: 0,
        next_rescan: now,
        stop_deadline: None,
        watchdog: sd_notify::watchdog_enabled(),
        last_watchdog: now,
        last_status: now,
        retrainer,
        rescans: 0,
        published: None,
    };
    daemon.rescan("start-up");
    // What was refused for the caption settings or a video id another input held may pass
    // now: the settings or that input may have changed while the daemon was down.
    daemon.retake_quarantined("start-up", |reason| {
        reason.is_caption() || reason == Reason::DuplicateVideoId
    });
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    daemon.serve(events);
    drop(watcher);
    Ok(())
}

/// Examines a file and, if its content is new, adds it to the Redis stream for the consumers.
fn enqueue_one(job: &Job, ctx: &Context, queue: &Mutex<Redis>) -> Outcome {
    let examined = match job::examine(job, ctx) {
        Ok(examined) => examined,
        Err(outcome) => return *outcome,
    };
    let stream = &ctx.processor.config().queue.stream;
    let added = queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add_paths(stream, std::slice::from_ref(&job.path));
    match added {
        Ok(()) => Outcome::Enqueued {
            stat: examined.stat,
            hash: examined.hash,
        },
        Err(e) => job::fail(
            job,
            ctx,
            Some(examined.stat),
            Some(examined.hash),
            Failure::io(Stage::Enqueue, e.to_string()),
        ),
    }
}

impl Daemon {
    fn settings(&self) -> &DaemonConfig {
        &self.service.config.daemon
    }

    fn serve(&mut self, rx: Receiver<Event>) {
        loop {
            let timeout = self.next_wake().saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Take everything already waiting before doing the periodic work once.
            for msg in rx.try_iter().take(100_000) {
                self.handle(msg);
            }
            self.tick();
            if let Some(deadline) = self.stop_deadline {
                if self.in_flight == 0 || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if self.in_flight > 0 {
            tracing::warn!(
                in_flight = self.in_flight,
                "shutdown timeout passed; unfinished inputs will be redone at the next start"
            );
        }
        self.retrainer.stop();
        let service = &mut self.service;
        service
            .recorder
            .commit(&service.config.daemon, Urgency::Now);
        service
            .recorder
            .flush_shards(&service.config.daemon, Urgency::Now);
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopped");
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        let mut consider = |t: Instant| wake = wake.min(t);
        if let Some(Reverse((t, _))) = self.settle_queue.peek() {
            consider(*t);
        }
        if let Some(Reverse((t, _))) = self.retries.peek() {
            consider(*t);
        }
        if let Some(deadline) = self.service.recorder.deadline(self.settings()) {
            consider(deadline);
        }
        if let Some(deadline) = self.stop_deadline {
            consider(deadline);
        }
        wake
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Paths(paths) => {
                for path in paths {
                    self.observe(&path, false);
                }
            }
            Event::Rescan(why) => self.rescan(&why),
            Event::Signal(signal) => self.on_signal(signal),
            Event::Finished(finished) => self.finished(*finished),
        }
    }

    fn on_signal(&mut self, signal: i32) {
        if signal == signal_hook::consts::SIGHUP {
            self.reload_config();
            return;
        }
        let now = Instant::now();
        match self.stop_deadline {
            None => {
                let timeout = Duration::from_secs(self.settings().shutdown_timeout_s);
                tracing::info!(
                    in_flight = self.in_flight,
                    "stopping: finishing in-flight inputs (at most {} s)",
                    timeout.as_secs()
                );
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                self.stop_deadline = Some(now + timeout);
            }
            Some(_) => {
                tracing::warn!("second stop signal: not waiting for in-flight inputs");
                self.stop_deadline = Some(now);
            }
        }
    }

    fn reload_config(&mut self) {
        notify_systemd(&[sd_notify::NotifyState::Reloading]);
        match (self.reload)() {
            Ok(fresh) => {
                let captions_changed = fresh.caption != self.service.config.caption;
                match self.service.reconfigure(fresh) {
                    Ok(()) => {
                        tracing::info!("configuration reloaded");
                        if captions_changed {
                            self.retry_caption_quarantines("caption settings reloaded");
                        }
                    }
                    Err(e) => tracing::error!("configuration not reloaded: {e}"),
                }
            }
            Err(e) => tracing::error!("configuration not reloaded, keeping the running one: {e}"),
        }
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    /// Inputs quarantined for what the caption settings ask of them (a stream the file lacks,
    /// features as wide as no text tower) may be fine under other settings.
    fn retry_caption_quarantines(&mut self, why: &str) {
        self.retake_quarantined(why, Reason::is_caption);
    }

    /// Takes again, as if their content had changed, the inputs quarantined for a reason that
    /// may no longer hold: caption settings that changed, or a video id whose other input
    /// is gone.
    pub(super) fn retake_quarantined(&mut self, why: &str, wanted: impl Fn(Reason) -> bool) {
        let paths: Vec<PathBuf> = self
            .index
            .iter()
            .filter(|(_, e)| {
                e.record.state == Some(State::Quarantined) && e.record.reason.is_some_and(&wanted)
            })
            .map(|(path, _)| path.clone())
            .collect();
        if paths.is_empty() {
            return;
        }
        tracing::info!(inputs = paths.len(), why, "taking quarantined inputs again");
        for path in paths {
            if let Some(entry) = self.index.get_mut(&path) {
                entry.record.hash = None;
            }
            self.observe(&path, true);
        }
    }

    fn tick(&mut self) {
        if self.stop_deadline.is_none() {
            self.retrainer
                .poll(self.service.recorder.ledger(), &self.service.config);
        }
        let now = Instant::now();
        while let Some(Reverse((deadline, _))) = self.settle_queue.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, path))) = self.settle_queue.pop() else {
                break;
            };
            if self.settling.get(&path).map(|s| s.deadline) != Some(deadline) {
                continue;
            }
            self.check_settled(path, now);
        }
        while let Some(Reverse((due, _))) = self.retries.peek() {
            if *due > now {
                break;
            }
            if let Some(Reverse((_, path))) = self.retries.pop() {
                let waiting = self
                    .index
                    .get(&path)
                    .is_some_and(|e| e.record.state == Some(State::Retry) && !e.in_flight);
                if waiting {
                    self.ready.push_back((path, now));
                }
            }
        }
        self.dispatch();
        // Idle: nothing more will join this group soon, so do not make it wait.
        let idle = self.in_flight == 0 && self.ready.is_empty();
        let urgency = if idle {
            Urgency::Idle
        } else {
            Urgency::WhenDue
        };
        let service = &mut self.service;
        service.recorder.commit(&service.config.daemon, urgency);
        for refused in service.recorder.take_refused() {
            if let Some(entry) = self.index.get_mut(&refused.path) {
                entry.record = refused.record();
            }
        }
        service
            .recorder
            .flush_shards(&service.config.daemon, Urgency::WhenDue);
        if now >= self.next_rescan && self.stop_deadline.is_none() {
            self.rescan("periodic");
        }
        if let Some(interval) = self.watchdog {
            if now.duration_since(self.last_watchdog) >= interval / 2 {
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                self.last_watchdog = now;
            }
        }
        self.update_gauges(now);
    }

    fn dispatch(&mut self) {
        while self.stop_deadline.is_none() && self.in_flight < self.service.max_in_flight {
            let Some((path, ready_at)) = self.ready.pop_front() else {
                break;
            };
            let entry = self.index.entry(path.clone()).or_default();
            if entry.in_flight {
                entry.recheck = true;
                continue;
            }
            entry.in_flight = true;
            let job = Job {
                path: path.clone(),
                previous: entry.record.clone(),
                attempts: if entry.record.state == Some(State::Retry) {
                    entry.record.attempts
                } else {
                    0
                },
                retry_attempts: self.service.config.daemon.retry_attempts,
            };
            // A finished input that is redone keeps its row until the new outcome replaces it.
            if entry.record.state.is_none() {
                entry.record.state = Some(State::Queued);
                self.service
                    .recorder
                    .record(Change::Queued { path: path.clone() });
            }
            self.in_flight += 1;
            match &self.enqueue {
                Some(queue) => {
                    let queue = queue.clone();
                    self.service.spawn(job, ready_at, None, move |job, ctx| {
                        enqueue_one(job, ctx, &queue)
                    });
                }
                None => self.service.spawn(job, ready_at, None, job::run),
            }
        }
    }

    fn finished(&mut self, done: Finished) {
        self.in_flight -= 1;
        let Finished {
            job,
            outcome,
            ready_at,
            ..
        } = done;
        let path = job.path;
        let entry = self.index.entry(path.clone()).or_default();
        entry.in_flight = false;
        let recheck = std::mem::take(&mut entry.recheck);
        let change = match self.service.recorder.finish(&path, outcome, ready_at) {
            Finish::Recorded(record) => {
                entry.record = record;
                None
            }
            Finish::Touched(stat) => {
                entry.record.stat = Some(stat);
                None
            }
            Finish::Unfinished(outcome) => self.unfinished(&path, outcome, job.attempts),
        };
        if let Some(change) = change {
            self.service.recorder.record(change);
        }
        if recheck {
            self.observe(&path, true);
        }
    }

    /// An outcome that did not finish the input: look again, forget it, or retry later.
    fn unfinished(&mut self, path: &Path, outcome: Outcome, attempts: u32) -> Option<Change> {
        match outcome {
            Outcome::Vanished => {
                let never_finished = !self
                    .index
                    .get(path)
                    .and_then(|e| e.record.state)
                    .is_some_and(State::is_final);
                never_finished.then(|| {
                    self.index.remove(path);
                    Change::Forget {
                        path: path.to_path_buf(),
                    }
                })
            }
            Outcome::Retry { record } => {
                let attempts = attempts + 1;
                let backoff = self
                    .settings()
                    .retry_base_ms
                    .saturating_mul(1 << (attempts - 1).min(20))
                    .min(self.settings().retry_max_ms);
                tracing::warn!(input = %path.display(), attempts, retry_in_ms = backoff, reason = %record.reason, "{}", record.message);
                self.service.metrics.record_retry();
                let entry = self.index.entry(path.to_path_buf()).or_default();
                entry.record.state = Some(State::Retry);
                entry.record.attempts = attempts;
                self.retries.push(Reverse((
                    Instant::now() + Duration::from_millis(backoff),
                    path.to_path_buf(),
                )));
                Some(Change::Retry {
                    path: path.to_path_buf(),
                    attempts,
                    next_attempt_ms: now_ms() + backoff as i64,
                    record,
                })
            }
            // Changed while it was read (and anything else unfinished): settle again.
            _ => {
                self.observe(path, true);
                None
            }
        }
    }

    fn update_gauges(&mut self, now: Instant) {
        let mut counts = [0u64; State::ALL.len()];
        if now.duration_since(self.last_status) < Duration::from_secs(1) {
            self.service.metrics.heartbeat();
            return;
        }
        self.last_status = now;
        for entry in self.index.values() {
            if let Some(state) = entry.record.state {
                counts[State::ALL.iter().position(|s| *s == state).unwrap_or(0)] += 1;
            }
        }
        self.service.metrics.set_gauges(
            counts,
            self.settling.len() as u64,
            (self.ready.len() + self.in_flight) as u64,
        );
        self.service.metrics.heartbeat();
        let count = |state: State| counts[State::ALL.iter().position(|s| *s == state).unwrap_or(0)];
        let status = format!(
            "{} done, {} quarantined, {} enqueued, {} retrying, {} waiting",
            count(State::Done),
            count(State::Quarantined),
            count(State::Enqueued),
            count(State::Retry),
            self.settling.len() + self.ready.len() + self.in_flight
        );
        notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
        self.publish_activity();
    }

    /// Tells `status` what this process is doing, when that changed.
    fn publish_activity(&mut self) {
        let activity = Activity {
            pid: std::process::id(),
            rescans: self.rescans,
            waiting: (self.settling.len() + self.ready.len() + self.in_flight) as u64,
            stalled: self.service.metrics.stalled(),
        };
        if self.published.as_ref() == Some(&activity) {
            return;
        }
        let known = |s: &&Stalled| {
            self.published.as_ref().is_some_and(|p| {
                p.stalled
                    .iter()
                    .any(|o| o.thread == s.thread && o.input == s.input)
            })
        };
        for stalled in activity.stalled.iter().filter(|s| !known(s)) {
            tracing::warn!(input = %stalled.input, thread = %stalled.thread, seconds = stalled.seconds, "a worker is stalled on one input (daemon.stall_s); /healthz answers 503 until it is done");
        }
        let json = serde_json::to_string(&activity).unwrap_or_default();
        match self.service.recorder.ledger().set_meta(ACTIVITY_KEY, &json) {
            Ok(()) => self.published = Some(activity),
            Err(e) => tracing::warn!("cannot publish the daemon's activity: {e}"),
        }
    }
}
