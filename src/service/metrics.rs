//! Counters and gauges of the running daemon, served as Prometheus text on `/metrics`, and
//! `/healthz` (200 while the main loop turns and the ledger accepts commits, else 503).

use super::record::State;
use crate::processor::StageTimes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the processing-time histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0, 10.0];

/// Counters and gauges, updated by the service and read by the metrics thread.
pub struct Metrics {
    started: Instant,
    heartbeat_ms: AtomicU64,
    videos: AtomicU64,
    inputs_done: AtomicU64,
    inputs_quarantined: AtomicU64,
    videos_quarantined: AtomicU64,
    retries: AtomicU64,
    commits: AtomicU64,
    committed_changes: AtomicU64,
    commit_failures: AtomicU64,
    failing_commits: AtomicU64,
    state_counts: [AtomicU64; State::ALL.len()],
    settling: AtomicU64,
    working: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len() + 1],
    processing_us: AtomicU64,
    /// Microseconds spent per stage, in [`StageTimes::named`]'s order.
    stage_us: [AtomicU64; 7],
    /// Each busy worker thread's input and when it took it.
    running: Mutex<HashMap<String, (PathBuf, Instant)>>,
    /// A job running this long is stalled (`daemon.stall_s`).
    stall: Duration,
}

/// A worker that has been on one input longer than `daemon.stall_s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stalled {
    /// The worker thread.
    pub thread: String,
    /// The input it is on.
    pub input: String,
    /// For how long, whole seconds.
    pub seconds: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            videos: AtomicU64::new(0),
            inputs_done: AtomicU64::new(0),
            inputs_quarantined: AtomicU64::new(0),
            videos_quarantined: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            committed_changes: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
            failing_commits: AtomicU64::new(0),
            state_counts: Default::default(),
            settling: AtomicU64::new(0),
            working: AtomicU64::new(0),
            buckets: Default::default(),
            processing_us: AtomicU64::new(0),
            stage_us: Default::default(),
            running: Mutex::default(),
            stall: Duration::from_secs(120),
        }
    }
}

impl Metrics {
    fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Metrics that call a job running longer than `stall` stalled.
    pub fn with_stall_limit(stall: Duration) -> Metrics {
        Metrics {
            stall,
            ..Metrics::default()
        }
    }

    /// Worker `thread` took `input`.
    pub fn job_started(&self, thread: &str, input: &Path) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(thread.to_string(), (input.to_path_buf(), Instant::now()));
    }

    /// Worker `thread` is done with its input.
    pub fn job_finished(&self, thread: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.remove(thread);
    }

    /// The workers on one input for longer than the stall limit, longest first.
    pub fn stalled(&self) -> Vec<Stalled> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut stalled: Vec<Stalled> = running
            .iter()
            .filter(|(_, (_, since))| since.elapsed() >= self.stall)
            .map(|(thread, (input, since))| Stalled {
                thread: thread.clone(),
                input: input.display().to_string(),
                seconds: since.elapsed().as_secs(),
            })
            .collect();
        stalled.sort_by(|a, b| b.seconds.cmp(&a.seconds).then(a.thread.cmp(&b.thread)));
        stalled
    }

    /// The main loop turned: what `/healthz` checks.
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(self.uptime_ms(), Relaxed);
    }

    /// An input finished with `videos` results and `quarantined_videos` quarantined.
    pub fn record_done(&self, videos: usize, quarantined_videos: usize) {
        self.inputs_done.fetch_add(1, Relaxed);
        self.videos.fetch_add(videos as u64, Relaxed);
        self.videos_quarantined
            .fetch_add(quarantined_videos as u64, Relaxed);
    }

    /// An input was quarantined.
    pub fn record_quarantined(&self) {
        self.inputs_quarantined.fetch_add(1, Relaxed);
    }

    /// A failure was scheduled for another try.
    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// A group commit recorded `changes`.
    pub fn record_commit(&self, changes: usize) {
        self.commits.fetch_add(1, Relaxed);
        self.committed_changes.fetch_add(changes as u64, Relaxed);
        self.failing_commits.store(0, Relaxed);
    }

    /// A group commit failed.
    pub fn record_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
        self.failing_commits.fetch_add(1, Relaxed);
    }

    /// A job took `elapsed`.
    pub fn observe_processing(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.processing_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Adds the time a finished input spent in each stage.
    pub fn record_stage_times(&self, times: &StageTimes) {
        for (slot, (_, spent)) in self.stage_us.iter().zip(times.named()) {
            slot.fetch_add(spent.as_micros() as u64, Relaxed);
        }
    }

    /// Inputs per ledger state (in the order of [`State::ALL`]), files settling, and inputs
    /// ready or being worked on.
    pub fn set_gauges(&self, states: [u64; State::ALL.len()], settling: u64, working: u64) {
        for (slot, value) in self.state_counts.iter().zip(states) {
            slot.store(value, Relaxed);
        }
        self.settling.store(settling, Relaxed);
        self.working.store(working, Relaxed);
    }

    /// Whether the main loop turned in the last 10 s, the ledger accepts commits and no worker
    /// is stalled on one input.
    pub fn healthy(&self) -> bool {
        let stuck_loop = self
            .uptime_ms()
            .saturating_sub(self.heartbeat_ms.load(Relaxed))
            > 10_000;
        !stuck_loop && self.failing_commits.load(Relaxed) < 5 && self.stalled().is_empty()
    }

    /// Prometheus text exposition of everything above.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            out.push_str(&format!(
                "# HELP momentminer_{name} {help}\n# TYPE momentminer_{name} {kind}\n"
            ));
            for (labels, value) in samples {
                out.push_str(&format!("momentminer_{name}{labels} {value}\n"));
            }
        };
        let get = |a: &AtomicU64| a.load(Relaxed) as f64;
        let plain = |a: &AtomicU64| vec![(String::new(), get(a))];
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &[(String::new(), self.uptime_ms() as f64 / 1e3)],
        );
        let counters = [
            ("videos_total", "Videos proposed.", &self.videos),
            (
                "inputs_done_total",
                "Input files finished.",
                &self.inputs_done,
            ),
            (
                "inputs_quarantined_total",
                "Input files quarantined.",
                &self.inputs_quarantined,
            ),
            (
                "videos_quarantined_total",
                "Videos of many-video files quarantined.",
                &self.videos_quarantined,
            ),
            (
                "retries_total",
                "Transient failures scheduled for another try.",
                &self.retries,
            ),
            ("commits_total", "Ledger group commits.", &self.commits),
            (
                "committed_changes_total",
                "Changes recorded by ledger commits.",
                &self.committed_changes,
            ),
            (
                "commit_failures_total",
                "Ledger commits that failed and were retried.",
                &self.commit_failures,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, &plain(value));
        }
        let states = State::ALL
            .iter()
            .zip(&self.state_counts)
            .map(|(s, v)| (format!("{{state=\"{}\"}}", s.as_str()), get(v)))
            .collect::<Vec<_>>();
        metric("inputs", "gauge", "Known inputs per ledger state.", &states);
        let stages = StageTimes::default()
            .named()
            .iter()
            .zip(&self.stage_us)
            .map(|((stage, _), us)| (format!("{{stage=\"{stage}\"}}"), get(us) / 1e6))
            .collect::<Vec<_>>();
        metric(
            "stage_seconds_total",
            "counter",
            "Time workers spent per stage of the proposal path.",
            &stages,
        );
        metric(
            "settling_files",
            "gauge",
            "Files waiting to stop changing.",
            &plain(&self.settling),
        );
        metric(
            "working_files",
            "gauge",
            "Files ready or being processed.",
            &plain(&self.working),
        );
        let mut cumulative = 0.0;
        let mut samples = Vec::new();
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += get(count);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            samples.push((format!("_bucket{{le=\"{le}\"}}"), cumulative));
        }
        samples.push(("_sum".into(), get(&self.processing_us) / 1e6));
        samples.push(("_count".into(), cumulative));
        metric(
            "processing_seconds",
            "histogram",
            "Time a worker spends on one input file.",
            &samples,
        );
        out
    }
}

/// A request line and headers longer than this are refused (431), as Apache and nginx do.
const MAX_REQUEST_BYTES: usize = 8 << 10;
/// A request must arrive whole within this; a client that drips it is cut off (408).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Requests answered at once; connections beyond these and the few waiting are dropped.
const HANDLERS: usize = 4;

/// Serves `/metrics` and `/healthz` on `addr`; returns the bound address (port 0 picks one).
///
/// No single client can block or bloat it: [`HANDLERS`] threads answer, each request must
/// arrive whole within [`REQUEST_DEADLINE`] and [`MAX_REQUEST_BYTES`], and a connection that
/// finds every handler busy and the short queue full is closed at once. Written here rather
/// than with `tiny_http`, which has no limit on a request's headers (tiny-http issue 56): a
/// client sending gigabytes without a newline would grow the daemon by as much.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let (queue, waiting) = std::sync::mpsc::sync_channel::<TcpStream>(HANDLERS);
    let waiting = Arc::new(std::sync::Mutex::new(waiting));
    for i in 0..HANDLERS {
        let (waiting, metrics) = (waiting.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("momentminer-http-{i}"))
            .spawn(move || loop {
                let next = waiting.lock().map(|rx| rx.recv());
                let Ok(Ok(stream)) = next else {
                    return;
                };
                if let Err(e) = answer(stream, &metrics) {
                    tracing::debug!("metrics request failed: {e}");
                }
            })?;
    }
    std::thread::Builder::new()
        .name("momentminer-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if queue.try_send(stream).is_err() {
                    tracing::debug!("metrics: every handler busy, a connection was dropped");
                }
            }
        })?;
    Ok(bound)
}

/// Reads one request within the deadline and the size cap, then answers it.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
        {
            break true;
        }
        if request.len() > MAX_REQUEST_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk) {
            Ok(0) => break request.contains(&b'\n'),
            Ok(n) => request.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => return Err(e),
        }
    };
    if !complete {
        return respond(
            &mut stream,
            "408 Request Timeout",
            "text/plain",
            "request too slow\n",
        );
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let target = line.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = match target {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/healthz" if metrics.healthy() => ("200 OK", "text/plain", "ok\n".to_string()),
        "/healthz" => (
            "503 Service Unavailable",
            "text/plain",
            format!(
                "unhealthy: the main loop is stalled, the ledger refuses commits, or a worker is stuck: {:?}\n",
                metrics.stalled()
            ),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n".to_string(),
        ),
    };
    respond(&mut stream, status, kind, &body)
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_past_the_stall_limit_is_named_and_health_fails() {
        let metrics = Metrics::with_stall_limit(Duration::ZERO);
        metrics.heartbeat();
        assert!(metrics.healthy());
        metrics.job_started("momentminer-worker-1", Path::new("/in/stuck.npy"));
        let stalled = metrics.stalled();
        assert_eq!(stalled.len(), 1);
        assert_eq!(
            (stalled[0].thread.as_str(), stalled[0].input.as_str()),
            ("momentminer-worker-1", "/in/stuck.npy")
        );
        assert!(!metrics.healthy());
        metrics.job_finished("momentminer-worker-1");
        assert!(metrics.healthy());
        let patient = Metrics::with_stall_limit(Duration::from_secs(3600));
        patient.job_started("momentminer-worker-0", Path::new("/in/slow.npy"));
        assert!(patient.stalled().is_empty());
    }
}
