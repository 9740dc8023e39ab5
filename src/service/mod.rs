//! The service layer under both long-running front-ends, the inbox watcher
//! (`momentminer watch`, [`crate::daemon`]) and the Redis consumer (`momentminer worker`,
//! [`crate::queue::consumer`]). [`open`] gives either one everything it shares with the other:
//! the signal listener, the folders, the state lock, the ledger and what it remembers of each
//! input, the owners of the video ids, the worker pool running [`job`]s, the group-commit
//! [`recorder`] and the `/metrics` server. A front-end only decides which inputs to run and
//! what to do with their outcomes.

pub mod job;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod record;
pub mod recorder;
pub mod shards;

use crate::caption::{CaptionError, Captioner};
use crate::config::{Config, DaemonConfig, RunConfig};
use crate::fsio::is_temporary_output;
use crate::processor::VideoProcessor;
use job::{Context, Job, Outcome, Owners};
use ledger::{Ledger, LedgerError};
use memory::{machine_memory, MemoryBudget};
use metrics::Metrics;
use record::{format_time, now_ms, InputRecord};
use recorder::Recorder;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// Why the service cannot start (or reload).
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A folder cannot be created or resolved.
    #[error("cannot create or open folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inbox and an output folder contain one another.
    #[error("folders overlap: inbox {inbox} and {name} {other}; the inbox must not contain the output, quarantine or state folder, nor be inside one")]
    Overlap {
        /// The inbox.
        inbox: PathBuf,
        /// Which folder (`output`, `quarantine`, `state`).
        name: &'static str,
        /// That folder.
        other: PathBuf,
    },
    /// Another process holds the state folder.
    #[error(
        "another momentminer process (pid {pid}) already uses the state folder ({path} is locked)"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it.
        pid: String,
    },
    /// The lock file cannot be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ledger cannot be opened or read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Shards an earlier ledger left cannot be removed.
    #[error(transparent)]
    Shards(#[from] shards::ShardError),
    /// The captioner cannot be loaded.
    #[error("caption: {0}")]
    Caption(#[from] CaptionError),
    /// `ingest.durations_file` or the compute back-end cannot be opened.
    #[error(transparent)]
    Processor(#[from] crate::processor::OpenError),
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The worker pool cannot start.
    #[error("cannot start worker threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// The metrics address is not a loopback address and `daemon.metrics_public` is off.
    #[error("daemon.metrics_addr {addr} can be reached from the network; use a loopback address (127.0.0.1:9464), or set daemon.metrics_public = true to serve /metrics and /healthz there")]
    PublicMetrics {
        /// `daemon.metrics_addr`.
        addr: String,
    },
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// `daemon.metrics_addr`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Which front-end the service runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `momentminer watch`: reads the inbox; owns the state folder and the dataset folder.
    Watcher,
    /// `momentminer worker`: reads the Redis stream; shares the output and quarantine folders
    /// with the other consumers and keeps its own state and shards beneath them.
    Consumer {
        /// The consumer's name in the group.
        name: String,
    },
}

/// The daemon's folders, absolute.
#[derive(Debug, Clone)]
pub struct Folders {
    /// Where inputs arrive (a consumer reads none: paths come in messages).
    pub inbox: PathBuf,
    /// `output/proposals`: one result file per video.
    pub proposals: PathBuf,
    /// Results wait here under temporary names until they are published. One per process
    /// (`output/.staging/<worker>`), so a process cleans only its own after a crash.
    pub staging: PathBuf,
    /// Where the dataset shards go.
    pub dataset: PathBuf,
    /// Quarantine records.
    pub quarantine: PathBuf,
    /// The ledger and the lock.
    pub state: PathBuf,
}

impl Folders {
    /// Creates the folders and resolves them to absolute paths.
    pub fn prepare(config: &DaemonConfig, role: &Role) -> Result<Folders, ServiceError> {
        let make = |path: &Path| -> Result<PathBuf, ServiceError> {
            let fail = |source| ServiceError::Folder {
                path: path.to_path_buf(),
                source,
            };
            std::fs::create_dir_all(path).map_err(fail)?;
            path.canonicalize().map_err(fail)
        };
        let consumer = match role {
            Role::Watcher => None,
            Role::Consumer { name } => Some(name.as_str()),
        };
        let output = make(&config.output)?;
        let quarantine = make(&config.quarantine)?;
        let state = make(&match consumer {
            Some(name) => config.state.join(name),
            None => config.state.clone(),
        })?;
        let inbox = match consumer {
            Some(_) => config.inbox.clone(),
            None => make(&config.inbox)?,
        };
        if consumer.is_none() {
            for (name, other) in [
                ("output", &output),
                ("quarantine", &quarantine),
                ("state", &state),
            ] {
                if other.starts_with(&inbox) || inbox.starts_with(other) {
                    return Err(ServiceError::Overlap {
                        inbox: inbox.clone(),
                        name,
                        other: other.clone(),
                    });
                }
            }
        }
        let proposals = make(&output.join("proposals"))?;
        let staging = make(&output.join(".staging").join(consumer.unwrap_or("daemon")))?;
        let dataset = make(&match consumer {
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

    /// Makes again, saying so, any folder results and records are written to that was deleted
    /// while the service runs: without them no result could be written or committed.
    pub fn make_missing(&self) -> std::io::Result<()> {
        for dir in [&self.staging, &self.proposals, &self.quarantine] {
            if !dir.is_dir() {
                tracing::warn!(folder = %dir.display(), "an output folder was deleted while in use; making it again");
                std::fs::create_dir_all(dir)?;
            }
        }
        Ok(())
    }

    /// The output folder the proposals, dataset and models live in.
    pub fn output(&self) -> &Path {
        self.proposals.parent().unwrap_or(&self.proposals)
    }
}

/// What reaches a front-end's main loop.
pub enum Event {
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// The inbox watcher saw these paths change.
    Paths(Vec<PathBuf>),
    /// The inbox watcher lost events and asks for a rescan, for this reason.
    Rescan(String),
    /// A job finished.
    Finished(Box<Finished>),
}

/// A finished job and what came of it.
pub struct Finished {
    /// The job as it was given.
    pub job: Job,
    /// What came of it.
    pub outcome: Outcome,
    /// When its input was ready to be taken (for the latency metric).
    pub ready_at: Instant,
    /// The Redis message it came from, for a consumer.
    pub message: Option<String>,
}

/// Everything a front-end runs on; see the module documentation.
pub struct Service {
    /// The running configuration (replaced by [`Service::reconfigure`]).
    pub config: Config,
    /// The folders, absolute.
    pub folders: Folders,
    /// The group commit and the ledger behind it.
    pub recorder: Recorder,
    /// The ledger's rows when the service started.
    pub inputs: Vec<(PathBuf, InputRecord)>,
    /// Counters and gauges, served when `daemon.metrics_addr` is set.
    pub metrics: Arc<Metrics>,
    /// Worker threads.
    pub workers: usize,
    /// Jobs at most in flight at once.
    pub max_in_flight: usize,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    role: Role,
    owners: Arc<Owners>,
    memory: Arc<MemoryBudget>,
    ctx: Arc<Context>,
    pool: rayon::ThreadPool,
    tx: Sender<Event>,
    signals: signal_hook::iterator::Handle,
    _lock: std::fs::File,
}

/// Starts the service for `role`; the receiver gets every [`Event`] for the front-end's loop.
pub fn open(config: Config, role: Role) -> Result<(Service, Receiver<Event>), ServiceError> {
    // First of all, so that a stop request during start-up is a clean stop, not a kill.
    let (tx, rx) = channel();
    let signals = {
        let tx = tx.clone();
        listen_for_signals(move |signal| tx.send(Event::Signal(signal)).is_ok())?
    };
    let folders = Folders::prepare(&config.daemon, &role)?;
    let lock = lock_state(&folders.state)?;
    let ledger = Ledger::open(&folders.state)?;
    // Results and quarantine records pass through the staging folder; shards are written in
    // the dataset folder. The output and quarantine folders may be shared with other
    // processes: only these two hold this process's leftovers.
    for dir in [&folders.staging, &folders.dataset] {
        remove_temporaries(dir);
    }
    for stale in shards::remove_unknown(&ledger, &folders.dataset)? {
        tracing::warn!(file = %stale.display(), "removed a dataset shard the ledger does not know (an earlier ledger's)");
    }
    let inputs = ledger.inputs()?;
    let mut by_vid = HashMap::new();
    for (path, input) in &inputs {
        for vid in &input.vids {
            by_vid.insert(vid.clone(), path.clone());
        }
    }
    let owners = Arc::new(Owners::new(by_vid));
    let workers = RunConfig::worker_count(config.daemon.workers);
    let memory = Arc::new(MemoryBudget::new(MemoryBudget::total(
        config.daemon.max_in_flight_bytes,
        workers,
        config.ingest.max_bytes,
        machine_memory(),
    )));
    tracing::debug!(
        bytes = memory.capacity(),
        "memory for decoding, all workers together"
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("momentminer-worker-{i}"))
        .build()?;
    let ctx = Arc::new(context(&config, &role, &folders, &owners, &memory)?);
    let stall = std::time::Duration::from_secs(config.daemon.stall_s);
    let metrics = Arc::new(Metrics::with_stall_limit(stall));
    let metrics_addr = match allowed_metrics_addr(&config.daemon)? {
        None => None,
        Some(addr) => {
            let bound =
                metrics::serve(addr, metrics.clone()).map_err(|source| ServiceError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(addr = %bound, "serving /metrics and /healthz");
            Some(bound)
        }
    };
    let recorder = Recorder::new(ledger, folders.clone(), metrics.clone());
    recorder
        .ledger()
        .set_meta("pid", &std::process::id().to_string())?;
    recorder
        .ledger()
        .set_meta("started", &format_time(now_ms()))?;
    let served = metrics_addr.map(|a| a.to_string()).unwrap_or_default();
    recorder.ledger().set_meta("metrics_addr", &served)?;
    let max_in_flight = max_in_flight(&config, &role, workers);
    Ok((
        Service {
            config,
            folders,
            recorder,
            inputs,
            metrics,
            workers,
            max_in_flight,
            metrics_addr,
            role,
            owners,
            memory,
            ctx,
            pool,
            tx,
            signals,
            _lock: lock,
        },
        rx,
    ))
}

/// `daemon.metrics_addr`, if set, once it resolves and is allowed: a loopback address, or any
/// with `daemon.metrics_public = true`.
pub fn allowed_metrics_addr(daemon: &DaemonConfig) -> Result<Option<&str>, ServiceError> {
    let addr = match daemon.metrics_addr.as_str() {
        "" => return Ok(None),
        addr => addr,
    };
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ServiceError::Metrics {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    if !daemon.metrics_public && !resolved.iter().all(|a| a.ip().is_loopback()) {
        return Err(ServiceError::PublicMetrics {
            addr: addr.to_string(),
        });
    }
    Ok(Some(addr))
}

/// Jobs in flight at once. A watcher's queue is its own, and a deep one keeps the workers busy
/// while the main thread commits: sixteen per worker unless `daemon.max_in_flight` says
/// otherwise. A consumer's are messages it holds and the others cannot take: four per worker
/// unless `queue.in_flight` says otherwise.
fn max_in_flight(config: &Config, role: &Role, workers: usize) -> usize {
    let (configured, per_worker) = match role {
        Role::Watcher => (config.daemon.max_in_flight, 16),
        Role::Consumer { .. } => (config.queue.in_flight, 4),
    };
    match configured {
        0 => per_worker * workers,
        n => n,
    }
}

/// What jobs read. A watcher that only enqueues never captions; the consumers that read the
/// queue do.
fn context(
    config: &Config,
    role: &Role,
    folders: &Folders,
    owners: &Arc<Owners>,
    memory: &Arc<MemoryBudget>,
) -> Result<Context, ServiceError> {
    let captioner = if *role == Role::Watcher && config.daemon.enqueue {
        Captioner::disabled()
    } else {
        Captioner::load(config)?
    };
    Ok(Context {
        processor: VideoProcessor::new(config.clone(), captioner)?,
        folders: folders.clone(),
        owners: owners.clone(),
        memory: memory.clone(),
    })
}

impl Service {
    /// A sender for events from elsewhere (the inbox watcher's thread).
    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }

    /// Runs `work` (usually [`job::run`]) on a worker thread; its outcome comes back as
    /// [`Event::Finished`].
    pub fn spawn(
        &self,
        job: Job,
        ready_at: Instant,
        message: Option<String>,
        work: impl FnOnce(&Job, &Context) -> Outcome + Send + 'static,
    ) {
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        self.pool.spawn(move || {
            let started = Instant::now();
            let thread = std::thread::current()
                .name()
                .unwrap_or("worker")
                .to_string();
            metrics.job_started(&thread, &job.path);
            let outcome = work(&job, &ctx);
            metrics.job_finished(&thread);
            metrics.observe_processing(started.elapsed());
            let _ = tx.send(Event::Finished(Box::new(Finished {
                job,
                outcome,
                ready_at,
                message,
            })));
        });
    }

    /// Says in a few lines what the service runs with: its folders, where it computes, what
    /// makes the pseudo-queries (or why there are none), the model in use and where metrics
    /// are served.
    pub fn log_start_up(&self) {
        let f = &self.folders;
        tracing::info!(
            inbox = %f.inbox.display(),
            output = %f.output().display(),
            quarantine = %f.quarantine.display(),
            state = %f.state.display(),
            "folders"
        );
        tracing::info!(
            workers = self.workers,
            max_in_flight = self.max_in_flight,
            decode_bytes = self.memory.capacity(),
            "compute: cpu"
        );
        if self.role == Role::Watcher && self.config.daemon.enqueue {
            tracing::info!("captions: made by the queue's consumers (daemon.enqueue)");
        } else {
            tracing::info!("captions: {}", self.ctx.processor.captioner().summary());
        }
        let models = f.output().join("models");
        match crate::daemon::retrain::current(&models) {
            Some(version) => tracing::info!("model: {version} in {}", models.display()),
            None => tracing::info!("model: none trained yet (train.retrain_after_videos)"),
        }
        match self.metrics_addr {
            Some(addr) => tracing::info!("metrics: http://{addr}/metrics and /healthz"),
            None => tracing::info!("metrics: not served (daemon.metrics_addr)"),
        }
    }

    /// Makes jobs claim video ids in `shared` too, so processes that serve one queue never
    /// publish two inputs under one id.
    pub fn share_owners(&self, shared: Box<dyn job::SharedOwners>) {
        self.owners.share(shared);
    }

    /// Takes a reloaded configuration for the jobs started from now on. Folders, workers and
    /// the metrics address change only at a restart; they are kept.
    pub fn reconfigure(&mut self, mut fresh: Config) -> Result<(), ServiceError> {
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
        self.ctx = Arc::new(context(
            &fresh,
            &self.role,
            &self.folders,
            &self.owners,
            &self.memory,
        )?);
        self.config = fresh;
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signals.close();
    }
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) where the service stands.
pub fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// One process per state folder: an exclusive lock on `state/lock`, released by the kernel
/// when the process dies however it dies. It is an open-file-description record lock
/// (`F_OFD_SETLK`) because such a lock can be queried without taking it ([`holds_lock`]), so
/// `momentminer status` never stands in the way of a starting daemon.
fn lock_state(state: &Path) -> Result<std::fs::File, ServiceError> {
    use std::io::{Read, Seek, Write};
    let path = state.join("lock");
    let fail = |source| ServiceError::Lock {
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
        return Err(ServiceError::Locked {
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
pub fn holds_lock(path: &Path) -> bool {
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
fn remove_temporaries(dir: &Path) {
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
fn listen_for_signals(
    deliver: impl Fn(i32) -> bool + Send + 'static,
) -> Result<signal_hook::iterator::Handle, ServiceError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServiceError::Signals)?;
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
        .map_err(ServiceError::Signals)?;
    Ok(handle)
}
