//! Periodic retraining: once `train.retrain_after_videos` more videos are finished, the daemon
//! trains the next model version on every pseudo-label so far, in a child process (`momentminer
//! train`) at the lowest CPU priority, so the daemon keeps its pace and a crash of either
//! leaves the other standing. The new version replaces the current one only if its validation
//! is not worse; readers follow `models/current`, rewritten atomically after the version's
//! folder is complete.
//!
//! ```text
//! output/models/.work/v0003/   dataset/ (snapshot) config.toml train.log videos model/ (resumable)
//! output/models/v0002/         model.json model.safetensors
//! output/models/current        "v0002"
//! ```

use crate::config::{CaptionMode, Config};
use crate::dataset::{dataset_paths, write_files};
use crate::fsio::{write_atomic, Durability};
use crate::service::ledger::Ledger;
use crate::train::ModelCard;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CURRENT: &str = "current";
/// Ledger meta key: finished videos when the last version was trained.
const TRAINED_AT: &str = "retrained_at_videos";
/// How often the ledger is asked how many videos are finished.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Retrains the grounding model in the background once enough new videos are done.
pub struct Retrainer {
    models: PathBuf,
    inbox: PathBuf,
    running: Option<Running>,
    next_check: Instant,
}

struct Running {
    child: Child,
    version: String,
    work: PathBuf,
}

/// One model version, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    /// `v0001`, ...
    pub name: String,
    /// Whether `models/current` names it.
    pub current: bool,
    /// Whether it was kept out because it validated worse than the current one.
    pub rejected: bool,
    /// Its checkpoint's epoch.
    pub best_epoch: usize,
    /// Pairs it was trained on.
    pub pairs: usize,
    /// Its validation loss.
    pub validation_loss: f64,
    /// Its validation R@1 at IoU 0.5.
    pub validation_r1_iou05: f64,
    /// Its validation mIoU.
    pub validation_miou: f64,
}

impl Retrainer {
    /// A retrainer writing versions under `output/models` and reading features from `inbox`.
    pub fn new(output: &Path, inbox: &Path) -> Retrainer {
        Retrainer {
            models: output.join("models"),
            inbox: inbox.to_path_buf(),
            running: None,
            next_check: Instant::now(),
        }
    }

    /// Called from the daemon's loop: finishes a training that ended, starts one that is due
    /// (or one a restart interrupted). Never blocks on the training itself.
    pub fn poll(&mut self, ledger: &Ledger, config: &Config) {
        if let Some(running) = &mut self.running {
            match running.child.try_wait() {
                Ok(None) => return,
                Ok(Some(status)) => {
                    if let Some(running) = self.running.take() {
                        self.finish(running, status.success(), ledger);
                    }
                }
                Err(e) => tracing::warn!("cannot check the training process: {e}"),
            }
        }
        let every = config.train.retrain_after_videos;
        if every == 0
            || config.caption.effective_mode() != CaptionMode::Vocabulary
            || Instant::now() < self.next_check
        {
            return;
        }
        self.next_check = Instant::now() + CHECK_EVERY;
        if let Err(e) = self.start_if_due(ledger, config, every) {
            tracing::error!("cannot start retraining: {e}");
        }
    }

    fn start_if_due(
        &mut self,
        ledger: &Ledger,
        config: &Config,
        every: usize,
    ) -> std::io::Result<()> {
        // A version a restart interrupted goes on from its last epoch.
        if let Some(work) = self.interrupted() {
            return self.spawn(work);
        }
        let videos = ledger.finished_videos().map_err(std::io::Error::other)?;
        let trained_at: u64 = ledger
            .meta(TRAINED_AT)
            .map_err(std::io::Error::other)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if videos < trained_at + every as u64 {
            return Ok(());
        }
        let work = self
            .models
            .join(".work")
            .join(format!("v{:04}", self.next_version()));
        std::fs::create_dir_all(work.join("dataset"))?;
        let labels = ledger.labels(None).map_err(std::io::Error::other)?;
        write_files(
            &dataset_paths(&work.join("dataset"), ""),
            &labels,
            Durability::Data,
        )
        .map_err(std::io::Error::other)?;
        let settings = toml::to_string(config).map_err(std::io::Error::other)?;
        write_atomic(
            &work.join("config.toml"),
            settings.as_bytes(),
            Durability::Data,
        )?;
        write_atomic(
            &work.join("videos"),
            videos.to_string().as_bytes(),
            Durability::Data,
        )?;
        tracing::info!(videos, labels = labels.len(), work = %work.display(), "retraining");
        self.spawn(work)
    }

    fn spawn(&mut self, work: PathBuf) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("train.log"))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("train")
            .arg("--config")
            .arg(work.join("config.toml"))
            .arg("--dataset")
            .arg(work.join("dataset"))
            .arg("--features")
            .arg(&self.inbox)
            .arg("--out")
            .arg(work.join("model"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setpriority is async-signal-safe; it only lowers the child's own priority.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::setpriority(libc::PRIO_PROCESS, 0, 19);
                Ok(())
            });
        }
        let child = command.spawn()?;
        let version = work
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(
            version,
            pid = child.id(),
            "training in the background at nice 19"
        );
        self.running = Some(Running {
            child,
            version,
            work,
        });
        Ok(())
    }

    /// Swaps a finished version in if it is not worse than the current one.
    fn finish(&mut self, running: Running, success: bool, ledger: &Ledger) {
        let Running { version, work, .. } = running;
        let videos = std::fs::read_to_string(work.join("videos")).unwrap_or_default();
        if let Err(e) = ledger.set_meta(TRAINED_AT, videos.trim()) {
            tracing::warn!("cannot record the retraining: {e}");
        }
        if !success {
            tracing::error!(version, log = %work.join("train.log").display(), "retraining failed; the current model stays");
            let _ = std::fs::rename(&work, self.models.join(format!("failed-{version}")));
            return;
        }
        let new = match ModelCard::read(&work.join("model")) {
            Ok(card) => card,
            Err(e) => {
                tracing::error!(version, "{e}");
                return;
            }
        };
        let current =
            current(&self.models).and_then(|name| ModelCard::read(&self.models.join(name)).ok());
        // Compared on each version's validation videos; the split is by a hash of the video
        // id, so the earlier version's validation videos are among the newer one's.
        let accept = current
            .as_ref()
            .is_none_or(|old| new.validation.not_worse_than(&old.validation));
        let target = if accept {
            self.models.join(&version)
        } else {
            self.models.join(format!("rejected-{version}"))
        };
        let installed = std::fs::rename(work.join("model"), &target);
        // Cleared before `current` names the version, so whoever sees the new version in use
        // finds its work folder gone.
        let _ = std::fs::remove_dir_all(&work);
        let swapped = installed.and_then(|()| {
            if accept {
                write_atomic(
                    &self.models.join(CURRENT),
                    version.as_bytes(),
                    Durability::Full,
                )
            } else {
                Ok(())
            }
        });
        match swapped {
            Ok(()) if accept => tracing::info!(
                version,
                loss = new.validation.loss,
                r1 = new.validation.r1[1],
                "new model version in use"
            ),
            Ok(()) => tracing::warn!(
                version,
                loss = new.validation.loss,
                "new model version is worse on validation; the current one stays"
            ),
            Err(e) => tracing::error!(version, "cannot install the new model version: {e}"),
        }
    }

    fn interrupted(&self) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.models.join(".work"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.toml").is_file())
            .collect();
        found.sort();
        found.pop()
    }

    fn next_version(&self) -> u32 {
        let highest = std::fs::read_dir(&self.models)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let number = name.rsplit('v').next()?.parse::<u32>().ok()?;
                Some(number)
            })
            .max()
            .unwrap_or(0);
        highest + 1
    }

    /// Stops a training in progress; it goes on from its last epoch at the next start.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
            tracing::info!(
                version = running.version,
                "training stopped; it resumes at the next start"
            );
        }
    }
}

/// The version `models/current` names.
pub fn current(models: &Path) -> Option<String> {
    let name = std::fs::read_to_string(models.join(CURRENT)).ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Every finished version (accepted or rejected), oldest first.
pub fn versions(models: &Path) -> Vec<Version> {
    let in_use = current(models);
    let mut out: Vec<Version> = std::fs::read_dir(models)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let card = ModelCard::read(&e.path()).ok()?;
            Some(Version {
                current: in_use.as_deref() == Some(name.as_str()),
                rejected: name.starts_with("rejected-"),
                best_epoch: card.best_epoch,
                pairs: card.data.pairs,
                validation_loss: card.validation.loss,
                validation_r1_iou05: card.validation.r1[1],
                validation_miou: card.validation.miou,
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        a.name
            .trim_start_matches("rejected-")
            .cmp(b.name.trim_start_matches("rejected-"))
    });
    out
}
