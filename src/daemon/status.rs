//! `momentminer status`: what the ledger says, read while the daemon runs (or after).

use crate::service::ledger::{Ledger, LedgerError};
use crate::service::metrics::Stalled;
use crate::service::record::{format_time, now_ms, State};
use serde::Serialize;
use std::fmt;
use std::path::Path;

#[derive(Debug, Serialize)]
/// What `momentminer status` shows.
pub struct Status {
    /// The ledger file read.
    pub ledger: String,
    /// Whether a daemon holds the state folder's lock right now, and its pid.
    pub running: bool,
    /// The daemon's pid (the lock holder's, else the last one's).
    pub pid: Option<String>,
    /// When the last daemon started.
    pub started: Option<String>,
    /// When it last committed.
    pub last_commit: Option<String>,
    /// Inputs per state: queued, retry, done, quarantined.
    pub inputs: Vec<(String, u64)>,
    /// Videos with results.
    pub videos: u64,
    /// Pseudo-labels in the shards.
    pub labels: u64,
    /// Dataset shards.
    pub shards: u64,
    /// Inputs finished (done or quarantined) per second over the last minute and ten minutes.
    pub per_second_1m: f64,
    /// Per second over the last ten minutes.
    pub per_second_10m: f64,
    /// From settled to committed, over the last 1,000 finished inputs.
    pub latency_p50_ms: Option<f64>,
    /// The 99th percentile of the same.
    pub latency_p99_ms: Option<f64>,
    /// The ten most recent retries and quarantines.
    pub recent_problems: Vec<Problem>,
    /// Grounding model versions the daemon trained, oldest first.
    pub models: Vec<super::retrain::Version>,
    /// Where the running daemon serves /metrics and /healthz, if it does.
    pub metrics_addr: Option<String>,
    /// What the running daemon is doing, as of its last second: rescans of the inbox finished
    /// since it started, and files settling, ready or being processed.
    pub activity: Option<Activity>,
}

/// What the running watcher is doing; published once a second while it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Activity {
    /// The process it describes.
    pub pid: u32,
    /// Rescans of the inbox finished since it started (the start-up rescan is the first).
    pub rescans: u64,
    /// Files settling, ready or being processed.
    pub waiting: u64,
    /// Workers on one input for longer than `daemon.stall_s`.
    #[serde(default)]
    pub stalled: Vec<Stalled>,
}

/// The ledger meta key [`Activity`] is kept under.
pub const ACTIVITY_KEY: &str = "activity";

#[derive(Debug, Serialize)]
/// One input's recent problem.
pub struct Problem {
    /// The input.
    pub input: String,
    /// `retry` or `quarantined`.
    pub state: String,
    /// The reason code.
    pub reason: String,
    /// What went wrong.
    pub message: String,
    /// When.
    pub time: String,
}

/// What the ledger in `state_dir` and the model versions under `models` say.
pub fn read(state_dir: &Path, models: &Path) -> Result<Status, LedgerError> {
    let ledger = Ledger::open_read_only(state_dir)?;
    let conn = ledger.conn();
    let fail = |e| ledger.sql_error(e);
    let count = |sql: &str| -> Result<u64, LedgerError> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(fail)
    };
    let mut inputs = Vec::new();
    for state in State::ALL {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM inputs WHERE state = ?1",
                [state.as_str()],
                |r| r.get(0),
            )
            .map_err(fail)?;
        inputs.push((state.as_str().to_string(), n as u64));
    }
    let now = now_ms();
    let finished_since = |ms: i64| -> Result<f64, LedgerError> {
        let n: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM inputs WHERE state IN ('done', 'quarantined') AND updated_ms >= ?1",
                [now - ms],
                |r| r.get(0),
            )
            .map_err(fail)?;
        Ok(n as f64 / (ms as f64 / 1e3))
    };
    let mut latencies: Vec<f64> = conn
        .prepare(
            "SELECT latency_ms FROM inputs WHERE state = 'done' AND latency_ms IS NOT NULL
             ORDER BY updated_ms DESC LIMIT 1000",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<Vec<f64>, _>>()
        })
        .map_err(fail)?;
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        (!latencies.is_empty())
            .then(|| latencies[((latencies.len() - 1) as f64 * q).round() as usize])
    };
    let recent_problems = conn
        .prepare(
            "SELECT path, state, reason, error, updated_ms FROM inputs
             WHERE error IS NOT NULL ORDER BY updated_ms DESC LIMIT 10",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                let path: Vec<u8> = r.get(0)?;
                Ok(Problem {
                    input: String::from_utf8_lossy(&path).into_owned(),
                    state: r.get(1)?,
                    reason: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                    message: r.get(3)?,
                    time: format_time(r.get(4)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(fail)?;
    let (running, pid) = holder(state_dir);
    // Only what the process holding the lock now published: a stopped daemon's is stale.
    let activity = ledger
        .meta(ACTIVITY_KEY)?
        .and_then(|json| serde_json::from_str::<Activity>(&json).ok())
        .filter(|a| running && pid.as_deref() == Some(a.pid.to_string().as_str()));
    let metrics_addr = ledger.meta("metrics_addr")?.filter(|_| running);
    Ok(Status {
        ledger: state_dir
            .join(crate::service::ledger::FILE_NAME)
            .display()
            .to_string(),
        running,
        pid: pid.or(ledger.meta("pid")?),
        started: ledger.meta("started")?,
        last_commit: ledger
            .meta("last_commit_ms")?
            .and_then(|ms| ms.parse().ok())
            .map(format_time),
        inputs,
        videos: count("SELECT COUNT(*) FROM videos")?,
        labels: count("SELECT COUNT(*) FROM labels")?,
        shards: count("SELECT COUNT(*) FROM shards")?,
        per_second_1m: finished_since(60_000)?,
        per_second_10m: finished_since(600_000)?,
        latency_p50_ms: quantile(0.5),
        latency_p99_ms: quantile(0.99),
        recent_problems,
        models: super::retrain::versions(models),
        metrics_addr,
        activity,
    })
}

/// Whether a daemon holds `state/lock` (queried, not taken), and the pid it wrote there.
fn holder(state_dir: &Path) -> (bool, Option<String>) {
    let path = state_dir.join("lock");
    let pid = std::fs::read_to_string(&path)
        .ok()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    (crate::service::holds_lock(&path), pid)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let daemon = match (self.running, &self.pid) {
            (true, Some(pid)) => format!("running (pid {pid})"),
            (true, None) => "running".into(),
            (false, _) => "not running".into(),
        };
        writeln!(f, "ledger      {}", self.ledger)?;
        writeln!(
            f,
            "daemon      {daemon}; started {}; last commit {}",
            self.started.as_deref().unwrap_or("never"),
            self.last_commit.as_deref().unwrap_or("never")
        )?;
        let counts: Vec<String> = self
            .inputs
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        writeln!(f, "inputs      {}", counts.join(", "))?;
        for stalled in self.activity.iter().flat_map(|a| &a.stalled) {
            writeln!(
                f,
                "stalled     {} on {} for {} s (daemon.stall_s)",
                stalled.thread, stalled.input, stalled.seconds
            )?;
        }
        writeln!(
            f,
            "results     {} videos, {} pseudo-labels in {} shards",
            self.videos, self.labels, self.shards
        )?;
        writeln!(
            f,
            "throughput  {:.1} inputs/s over the last minute, {:.1} over ten minutes",
            self.per_second_1m, self.per_second_10m
        )?;
        if let (Some(p50), Some(p99)) = (self.latency_p50_ms, self.latency_p99_ms) {
            writeln!(
                f,
                "latency     p50 {p50:.1} ms, p99 {p99:.1} ms from settled to committed"
            )?;
        }
        if self.models.is_empty() {
            writeln!(f, "models      none trained (train.retrain_after_videos)")?;
        }
        for m in &self.models {
            writeln!(
                f,
                "model       {}{}: {} pairs, best epoch {}, validation loss {:.4}, R@1 IoU .5 {:.1}, mIoU {:.1}",
                m.name,
                if m.current { " (in use)" } else { "" },
                m.pairs,
                m.best_epoch,
                m.validation_loss,
                100.0 * m.validation_r1_iou05,
                100.0 * m.validation_miou
            )?;
        }
        if !self.recent_problems.is_empty() {
            writeln!(f, "recent problems:")?;
            for p in &self.recent_problems {
                writeln!(
                    f,
                    "  {} {} [{}] {}: {}",
                    p.time, p.state, p.reason, p.input, p.message
                )?;
            }
        }
        Ok(())
    }
}
