//! The daemon (`momentminer watch`): a watched inbox in, proposals and dataset shards out, for
//! months, across crashes, restarts and bad files.
//!
//! One main thread owns all state and the ledger; worker threads run [`worker::run`] on one
//! input each and send back its outcome. A file is taken once it has settled (unchanged for
//! `settle_ms`). Its outputs are written under temporary names; in a group commit the main
//! thread makes them durable (one syncfs), renames them into place, fsyncs their folders and
//! records the group in the ledger (with `durability = "file"` the worker fsyncs and renames
//! each output itself). A crash at any instant therefore leaves each input either recorded with
//! whole outputs, or not recorded and redone (rewriting identical outputs) after the restart.

mod inbox;
pub mod ledger;
pub(crate) mod metrics;
pub(crate) mod recorder;
pub mod retrain;
pub(crate) mod shards;
pub mod status;
pub mod worker;

use crate::caption::CaptionError;
use crate::config::{Config, ConfigError, DaemonConfig, RunConfig};
use crate::fsio::is_temporary_output;
use crate::ingest::{Durations, IngestError};
use inbox::{probe, Inbox};
use ledger::{now_ms, Change, Ledger, LedgerError, State};
use metrics::Metrics;
use recorder::{Finish, Recorder};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use worker::{Context, FileStat, Job, Outcome, Owners, Previous};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot create or open folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("folders overlap: {0}; the inbox must not contain the output, quarantine or state folder, nor be inside one")]
    Overlap(String),
    #[error(
        "another momentminer watch (pid {pid}) already uses the state folder ({path} is locked)"
    )]
    Locked { path: PathBuf, pid: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("caption: {0}")]
    Caption(#[from] crate::caption::CaptionError),
    #[error(transparent)]
    Durations(#[from] IngestError),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start worker threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    #[error("daemon.enqueue: {0}")]
    Queue(String),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
}

/// The daemon's folders, absolute.
#[derive(Debug, Clone)]
pub struct Folders {
    pub inbox: PathBuf,
    pub proposals: PathBuf,
    /// Results wait here under temporary names until they are published. One per process
    /// (`output/.staging/<worker>`), so a process cleans only its own after a crash.
    pub staging: PathBuf,
    pub dataset: PathBuf,
    pub quarantine: PathBuf,
    pub state: PathBuf,
}

impl Folders {
    /// Creates the folders and resolves them to absolute paths. A queue worker (`worker`
    /// names it) shares the output and quarantine folders with the others but keeps its own
    /// state folder and dataset shards beneath them.
    pub fn prepare(config: &DaemonConfig, worker: Option<&str>) -> Result<Folders, DaemonError> {
        let make = |path: &Path| -> Result<PathBuf, DaemonError> {
            let fail = |source| DaemonError::Folder {
                path: path.to_path_buf(),
                source,
            };
            std::fs::create_dir_all(path).map_err(fail)?;
            path.canonicalize().map_err(fail)
        };
        let output = make(&config.output)?;
        let quarantine = make(&config.quarantine)?;
        let state = make(&match worker {
            Some(name) => config.state.join(name),
            None => config.state.clone(),
        })?;
        // Queue workers read no inbox.
        let inbox = match worker {
            Some(_) => config.inbox.clone(),
            None => make(&config.inbox)?,
        };
        for (name, other) in [
            ("output", &output),
            ("quarantine", &quarantine),
            ("state", &state),
        ] {
            let overlaps = other.starts_with(&inbox) || inbox.starts_with(other);
            if worker.is_none() && overlaps {
                return Err(DaemonError::Overlap(format!(
                    "inbox {} and {name} {}",
                    inbox.display(),
                    other.display()
                )));
            }
        }
        let proposals = make(&output.join("proposals"))?;
        let staging = make(&output.join(".staging").join(worker.unwrap_or("daemon")))?;
        let dataset = make(&match worker {
            Some(name) => output.join("dataset").join(name),
            None => output.join("dataset"),
        })?;
        Ok(Folders {
            inbox,
            proposals,
            staging,
            dataset,
            quarantine,
            state,
        })
    }
}

/// Where the daemon gets a fresh configuration on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError>>;

enum Msg {
    Paths(Vec<PathBuf>),
    Rescan(String),
    Signal(i32),
    Finished(Box<Finished>),
}

struct Finished {
    path: PathBuf,
    outcome: Outcome,
    ready_at: Instant,
    attempts: u32,
}

/// What the main loop knows about an input (the ledger row plus in-memory flags).
#[derive(Debug, Default)]
struct Entry {
    stat: Option<FileStat>,
    hash: Option<String>,
    state: Option<State>,
    attempts: u32,
    outputs: Vec<PathBuf>,
    vids: Vec<String>,
    in_flight: bool,
    /// Something happened to the file while it was in flight: look again when it returns.
    recheck: bool,
    /// The reason code it was quarantined for.
    reason: Option<String>,
}

struct Settling {
    stat: FileStat,
    since: Instant,
    deadline: Instant,
}

struct Daemon {
    config: Config,
    folders: Folders,
    recorder: Recorder,
    pool: rayon::ThreadPool,
    tx: Sender<Msg>,
    ctx: Arc<Context>,
    owners: Arc<Owners>,
    metrics: Arc<Metrics>,
    reload: Reload,
    index: HashMap<PathBuf, Entry>,
    settling: HashMap<PathBuf, Settling>,
    settle_queue: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    ready: VecDeque<(PathBuf, Instant)>,
    retries: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    in_flight: usize,
    max_in_flight: usize,
    next_rescan: Instant,
    stop_deadline: Option<Instant>,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    last_status: Instant,
    retrainer: retrain::Retrainer,
}

/// Runs until SIGTERM/SIGINT. Returns once in-flight work is finished (or the shutdown timeout
/// passed) and everything finished is committed.
pub fn run(config: Config, reload: Reload) -> Result<(), DaemonError> {
    // First of all, so that a stop request during start-up is a clean stop, not a kill.
    let (tx, rx) = channel();
    let signals = {
        let tx = tx.clone();
        listen_for_signals(move |signal| tx.send(Msg::Signal(signal)).is_ok())?
    };
    let folders = Folders::prepare(&config.daemon, None)?;
    let _lock = lock_state(&folders.state)?;
    let ledger = Ledger::open(&folders.state)?;
    // Results and quarantine records pass through the staging folder; shards are written in
    // the dataset folder.
    for dir in [&folders.staging, &folders.dataset] {
        remove_temporaries(dir);
    }
    let rows = ledger.inputs()?;
    let mut owners = HashMap::new();
    let mut index = HashMap::with_capacity(rows.len());
    let mut forgotten = Vec::new();
    let mut retries = BinaryHeap::new();
    let (now, now_wall) = (Instant::now(), now_ms());
    for row in rows {
        for vid in &row.vids {
            owners.insert(vid.clone(), row.path.clone());
        }
        let exists = row.path.symlink_metadata().is_ok();
        match row.state {
            // Never finished and now gone: nothing to do and nothing to keep.
            State::Queued | State::Retry if !exists => {
                forgotten.push(row.path);
                continue;
            }
            State::Retry => {
                let wait = row.next_attempt_ms.unwrap_or(now_wall) - now_wall;
                let due = now + Duration::from_millis(wait.max(0) as u64);
                retries.push(Reverse((due, row.path.clone())));
            }
            _ => {}
        }
        index.insert(
            row.path,
            Entry {
                stat: row.stat,
                hash: row.hash,
                state: Some(row.state),
                attempts: row.attempts,
                outputs: row.outputs,
                vids: row.vids,
                reason: row.reason,
                ..Entry::default()
            },
        );
    }
    let owners = Arc::new(Owners::new(owners));
    let workers = RunConfig::worker_count(config.daemon.workers);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("momentminer-worker-{i}"))
        .build()?;
    let ctx = Arc::new(context(&config, &folders, &owners)?);
    let watcher = Inbox::watch(&folders.inbox, {
        let tx = tx.clone();
        move |event| {
            let msg = match event {
                inbox::Event::Paths(paths) => Msg::Paths(paths),
                inbox::Event::Rescan(why) => Msg::Rescan(why),
            };
            let _ = tx.send(msg);
        }
    })
    .map_err(|source| DaemonError::Watch {
        path: folders.inbox.clone(),
        source,
    })?;
    let metrics = Arc::new(Metrics::default());
    if !config.daemon.metrics_addr.is_empty() {
        let addr =
            metrics::serve(&config.daemon.metrics_addr, metrics.clone()).map_err(|source| {
                DaemonError::Metrics {
                    addr: config.daemon.metrics_addr.clone(),
                    source,
                }
            })?;
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    let max_in_flight = match config.daemon.max_in_flight {
        0 => 16 * workers,
        n => n,
    };
    let mut recorder = Recorder::new(ledger, folders.clone(), metrics.clone());
    for path in forgotten {
        recorder.record(Change::Forget { path });
    }
    recorder
        .ledger()
        .set_meta("pid", &std::process::id().to_string())?;
    recorder
        .ledger()
        .set_meta("started", &ledger::format_time(now_ms()))?;
    let folders_inbox = folders.inbox.clone();
    let output = folders
        .dataset
        .parent()
        .map_or_else(|| config.daemon.output.clone(), Path::to_path_buf);
    let mut daemon = Daemon {
        folders,
        recorder,
        pool,
        tx,
        ctx,
        owners,
        metrics,
        reload,
        index,
        settling: HashMap::new(),
        settle_queue: BinaryHeap::new(),
        ready: VecDeque::new(),
        retries,
        in_flight: 0,
        max_in_flight,
        next_rescan: now,
        stop_deadline: None,
        watchdog: sd_notify::watchdog_enabled(),
        last_watchdog: now,
        last_status: now,
        retrainer: retrain::Retrainer::new(&output, &folders_inbox),
        config,
    };
    tracing::info!(
        inbox = %daemon.folders.inbox.display(),
        workers,
        known_inputs = daemon.index.len(),
        "watching"
    );
    daemon.rescan("start-up");
    daemon.retry_caption_quarantines("start-up");
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    daemon.serve(rx);
    signals.close();
    drop(watcher);
    Ok(())
}

pub(crate) fn context(
    config: &Config,
    folders: &Folders,
    owners: &Arc<Owners>,
) -> Result<Context, DaemonError> {
    let enqueue = if config.daemon.enqueue {
        let redis = crate::queue::Redis::open(&config.queue.url)
            .map_err(|e| DaemonError::Queue(e.to_string()))?;
        Some(std::sync::Mutex::new(redis))
    } else {
        None
    };
    // A watcher that only enqueues never captions; the workers that read the queue do.
    let captioner = if enqueue.is_some() {
        crate::caption::Captioner::disabled()
    } else {
        crate::caption::Captioner::load(config)?
    };
    Ok(Context {
        captioner: Arc::new(captioner),
        enqueue,
        durations: Durations::load(&config.ingest.durations_file)?,
        config: config.clone(),
        proposals_dir: folders.proposals.clone(),
        quarantine_dir: folders.quarantine.clone(),
        staging_dir: folders.staging.clone(),
        owners: owners.clone(),
    })
}

pub(crate) fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// One daemon (or worker) per state folder: an exclusive lock on `state/lock`, released by the
/// kernel when the process dies however it dies. It is an open-file-description record lock
/// (`F_OFD_SETLK`) because such a lock can be queried without taking it ([`holds_lock`]), so
/// `momentminer status` never stands in the way of a starting daemon.
pub(crate) fn lock_state(state: &Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = state.join("lock");
    let fail = |source| DaemonError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(fail)?;
    if let Err(e) = state_lock(&file, libc::F_OFD_SETLK) {
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
            return Err(fail(e));
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(DaemonError::Locked {
            path,
            pid: pid.trim().to_string(),
        });
    }
    file.set_len(0).map_err(fail)?;
    file.rewind().map_err(fail)?;
    writeln!(file, "{}", std::process::id()).map_err(fail)?;
    Ok(file)
}

/// Whether a live process holds the lock of the state folder whose lock file is `path`.
pub(crate) fn holds_lock(path: &Path) -> bool {
    std::fs::File::open(path)
        .and_then(|file| state_lock(&file, libc::F_OFD_GETLK))
        .is_ok_and(|kind| kind != libc::F_UNLCK as libc::c_short)
}

/// A whole-file write lock request (`F_OFD_SETLK`) or query (`F_OFD_GETLK`); returns the lock
/// type the kernel reports (for a query: `F_UNLCK` when nobody holds a conflicting lock).
fn state_lock(file: &std::fs::File, command: libc::c_int) -> std::io::Result<libc::c_short> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero flock is valid (whole file from offset 0); fcntl only reads the
    // descriptor, which `file` keeps open, and writes into `request`, which outlives the call.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    if unsafe { libc::fcntl(file.as_raw_fd(), command, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(request.l_type)
}

/// Temporary files a crash left behind in a folder only this process writes temporaries to
/// (never the inbox).
pub(crate) fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if is_temporary_output(&entry.file_name().to_string_lossy()) {
            let file = entry.path();
            match std::fs::remove_file(&file) {
                Ok(()) => {
                    tracing::info!(file = %file.display(), "removed a temporary file left by a crash")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), "cannot remove a temporary file: {e}")
                }
            }
        }
    }
}

/// Hands SIGTERM, SIGINT and SIGHUP to `deliver` until the returned handle is closed or
/// `deliver` returns false.
pub(crate) fn listen_for_signals(
    deliver: impl Fn(i32) -> bool + Send + 'static,
) -> Result<signal_hook::iterator::Handle, DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(DaemonError::Signals)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("momentminer-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if !deliver(signal) {
                    break;
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(handle)
}

impl Daemon {
    fn settings(&self) -> &DaemonConfig {
        &self.config.daemon
    }

    fn serve(&mut self, rx: Receiver<Msg>) {
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
        self.recorder.commit(&self.config.daemon, true, true);
        self.recorder.flush_shards(&self.config.daemon, true);
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
        if let Some(deadline) = self.recorder.deadline(self.settings()) {
            consider(deadline);
        }
        if let Some(deadline) = self.stop_deadline {
            consider(deadline);
        }
        wake
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Paths(paths) => {
                for path in paths {
                    self.observe(&path, false);
                }
            }
            Msg::Rescan(why) => self.rescan(&why),
            Msg::Signal(signal) => self.on_signal(signal),
            Msg::Finished(finished) => self.finished(*finished),
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
            Ok(mut fresh) => {
                let old = &self.config.daemon;
                let fixed = (
                    &old.inbox,
                    &old.output,
                    &old.quarantine,
                    &old.state,
                    old.workers,
                    &old.metrics_addr,
                );
                let wanted = (
                    &fresh.daemon.inbox,
                    &fresh.daemon.output,
                    &fresh.daemon.quarantine,
                    &fresh.daemon.state,
                    fresh.daemon.workers,
                    &fresh.daemon.metrics_addr,
                );
                if fixed != wanted {
                    tracing::warn!("folders, workers and metrics_addr change only at a restart; keeping the running ones");
                }
                fresh.daemon.inbox = old.inbox.clone();
                fresh.daemon.output = old.output.clone();
                fresh.daemon.quarantine = old.quarantine.clone();
                fresh.daemon.state = old.state.clone();
                fresh.daemon.workers = old.workers;
                fresh.daemon.metrics_addr = old.metrics_addr.clone();
                match context(&fresh, &self.folders, &self.owners) {
                    Ok(ctx) => {
                        self.ctx = Arc::new(ctx);
                        let captions_changed = fresh.caption != self.config.caption;
                        self.config = fresh;
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
    /// features as wide as no text tower) may be fine under other settings: they are taken
    /// again, as if their content had changed.
    fn retry_caption_quarantines(&mut self, why: &str) {
        let paths: Vec<PathBuf> = self
            .index
            .iter()
            .filter(|(_, e)| {
                e.state == Some(State::Quarantined)
                    && e.reason.as_deref().is_some_and(CaptionError::is_code)
            })
            .map(|(path, _)| path.clone())
            .collect();
        if paths.is_empty() {
            return;
        }
        tracing::info!(
            inputs = paths.len(),
            why,
            "taking again the inputs quarantined for their caption settings"
        );
        for path in paths {
            if let Some(entry) = self.index.get_mut(&path) {
                entry.hash = None;
            }
            self.observe(&path, true);
        }
    }

    fn rescan(&mut self, why: &str) {
        let started = Instant::now();
        let (files, failures) = crate::ingest::walk(&self.folders.inbox);
        for (path, e) in failures {
            tracing::warn!(path = %path.display(), "cannot list: {e}");
        }
        let found = files.len();
        for file in files {
            self.observe(&file, false);
        }
        self.next_rescan = Instant::now() + Duration::from_secs(self.settings().rescan_s.max(1));
        tracing::debug!(
            why,
            found,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rescanned the inbox"
        );
    }

    /// Something may have happened to `path`: decide whether it needs (re)processing and, if
    /// so, start waiting for it to settle.
    fn observe(&mut self, path: &Path, forced: bool) {
        let Ok(rel) = path.strip_prefix(&self.folders.inbox) else {
            return;
        };
        let hidden = rel
            .components()
            .any(|c| crate::ingest::is_temporary_name(&c.as_os_str().to_string_lossy()));
        if hidden || rel.as_os_str().is_empty() {
            return;
        }
        let Ok(meta) = probe(path, self.settings().follow_symlinks) else {
            self.settling.remove(path);
            return;
        };
        if meta.file_type().is_symlink() && path.is_dir() {
            // Symlinked folders are never entered, as in rescans: they can form cycles.
            return;
        }
        if meta.is_dir() && !path.is_symlink() {
            // A folder moved in brings files that produced no events of their own, and files
            // written into a new folder before its watch was added produce none either: look
            // now, and rescan once they had time to settle.
            let (files, _) = crate::ingest::walk(path);
            for file in files {
                self.observe(&file, forced);
            }
            let soon = Instant::now() + 2 * Duration::from_millis(self.settings().settle_ms);
            self.next_rescan = self.next_rescan.min(soon);
            return;
        }
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            // A duration sidecar changes the result of the feature file beside it.
            for ext in ["npy", "npz"] {
                let sibling = path.with_extension(ext);
                if self.index.contains_key(&sibling) || sibling.exists() {
                    self.observe(&sibling, true);
                }
            }
            return;
        }
        let stat = FileStat::of(&meta);
        if let Some(entry) = self.index.get_mut(path) {
            if entry.in_flight {
                entry.recheck = true;
                return;
            }
            let same = entry.stat == Some(stat);
            let waiting = match entry.state {
                Some(state) => state.is_final() || state == State::Retry,
                None => false,
            };
            if same && waiting && !forced {
                return;
            }
        }
        let now = Instant::now();
        let settle = Duration::from_millis(self.settings().settle_ms);
        let since = match self.settling.get(path) {
            Some(s) if s.stat == stat => s.since,
            _ => now,
        };
        // Also wait until the file's own change time is `settle` old, which covers a writer
        // that changed it just before we first looked.
        let changed = [meta.modified(), meta_ctime(&meta)]
            .into_iter()
            .filter_map(|t| t.ok())
            .max();
        let age = changed
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .unwrap_or(settle);
        let deadline = (since + settle).max(now + settle.saturating_sub(age));
        self.settling.insert(
            path.to_path_buf(),
            Settling {
                stat,
                since,
                deadline,
            },
        );
        self.settle_queue
            .push(Reverse((deadline, path.to_path_buf())));
    }

    fn tick(&mut self) {
        if self.stop_deadline.is_none() {
            self.retrainer.poll(self.recorder.ledger(), &self.config);
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
                    .is_some_and(|e| e.state == Some(State::Retry) && !e.in_flight);
                if waiting {
                    self.ready.push_back((path, now));
                }
            }
        }
        self.dispatch();
        // Idle: nothing more will join this group soon, so do not make it wait.
        let idle = self.in_flight == 0 && self.ready.is_empty();
        self.recorder.commit(&self.config.daemon, false, idle);
        self.recorder.flush_shards(&self.config.daemon, false);
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

    fn check_settled(&mut self, path: PathBuf, now: Instant) {
        let follow = self.settings().follow_symlinks;
        match probe(&path, follow) {
            Err(_) => {
                self.settling.remove(&path);
            }
            Ok(meta) => {
                let unchanged = self
                    .settling
                    .get(&path)
                    .is_some_and(|s| s.stat == FileStat::of(&meta));
                if unchanged {
                    self.settling.remove(&path);
                    self.ready.push_back((path, now));
                } else {
                    self.observe(&path, true);
                }
            }
        }
    }

    fn dispatch(&mut self) {
        while self.stop_deadline.is_none() && self.in_flight < self.max_in_flight {
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
                previous: Previous {
                    hash: entry.hash.clone(),
                    outputs: entry.outputs.clone(),
                    vids: entry.vids.clone(),
                },
                attempts: if entry.state == Some(State::Retry) {
                    entry.attempts
                } else {
                    0
                },
                retry_attempts: self.config.daemon.retry_attempts,
            };
            // A finished input that is redone keeps its row until the new outcome replaces it.
            if entry.state.is_none() {
                entry.state = Some(State::Queued);
                self.recorder.record(Change::Queued { path: path.clone() });
            }
            self.in_flight += 1;
            let ctx = self.ctx.clone();
            let tx = self.tx.clone();
            let metrics = self.metrics.clone();
            self.pool.spawn(move || {
                let started = Instant::now();
                let outcome = worker::run(&job, &ctx);
                metrics.observe_processing(started.elapsed());
                let _ = tx.send(Msg::Finished(Box::new(Finished {
                    path: job.path,
                    outcome,
                    ready_at,
                    attempts: job.attempts,
                })));
            });
        }
    }

    fn finished(&mut self, done: Finished) {
        self.in_flight -= 1;
        let Finished {
            path,
            outcome,
            ready_at,
            attempts,
        } = done;
        let entry = self.index.entry(path.clone()).or_default();
        entry.in_flight = false;
        let recheck = std::mem::take(&mut entry.recheck);
        let change = match self.recorder.finish(&path, outcome, ready_at) {
            Finish::Recorded(recorded) => {
                *entry = Entry {
                    stat: recorded.stat,
                    hash: recorded.hash,
                    state: Some(recorded.state),
                    attempts: recorded.attempts,
                    outputs: recorded.outputs,
                    vids: recorded.vids,
                    reason: recorded.reason,
                    ..Entry::default()
                };
                None
            }
            Finish::Touched(stat) => {
                entry.stat = Some(stat);
                None
            }
            Finish::Unfinished(outcome) => self.unfinished(&path, outcome, attempts),
        };
        if let Some(change) = change {
            self.recorder.record(change);
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
                    .and_then(|e| e.state)
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
                tracing::warn!(input = %path.display(), attempts, retry_in_ms = backoff, reason = record.reason, "{}", record.message);
                self.metrics.record_retry();
                let entry = self.index.entry(path.to_path_buf()).or_default();
                entry.state = Some(State::Retry);
                entry.attempts = attempts;
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
            self.metrics.heartbeat();
            return;
        }
        self.last_status = now;
        for entry in self.index.values() {
            if let Some(state) = entry.state {
                counts[State::ALL.iter().position(|s| *s == state).unwrap_or(0)] += 1;
            }
        }
        self.metrics.set_gauges(
            counts,
            self.settling.len() as u64,
            (self.ready.len() + self.in_flight) as u64,
        );
        self.metrics.heartbeat();
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
    }
}

fn meta_ctime(meta: &std::fs::Metadata) -> std::io::Result<std::time::SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let secs = u64::try_from(meta.ctime()).map_err(std::io::Error::other)?;
    Ok(std::time::UNIX_EPOCH + Duration::new(secs, meta.ctime_nsec() as u32))
}
