//! Settling: a file is taken only once its size, modification time and inode have stayed the
//! same for `daemon.settle_ms` and its change time is that old, so a file still being written
//! is never read. Inbox events and rescans only say where to look; this decides whether a path
//! needs work and when it is ready.

use super::Daemon;
use crate::failure::Reason;
use crate::fsio::probe;
use crate::service::record::{FileStat, State};
use std::cmp::Reverse;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file waiting to stop changing.
pub(super) struct Settling {
    pub(super) stat: FileStat,
    pub(super) since: Instant,
    pub(super) deadline: Instant,
}

impl Daemon {
    /// Looks at every file of the inbox (at start-up, periodically, and when events were lost).
    pub(super) fn rescan(&mut self, why: &str) {
        let started = Instant::now();
        let (files, failures) = crate::ingest::walk(&self.service.folders.inbox);
        for (path, e) in failures {
            tracing::warn!(path = %path.display(), "cannot list: {e}");
        }
        let found = files.len();
        for file in files {
            self.observe(&file, false);
        }
        self.rescans += 1;
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
    pub(super) fn observe(&mut self, path: &Path, forced: bool) {
        let Ok(rel) = path.strip_prefix(&self.service.folders.inbox) else {
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
            let held_ids = self
                .index
                .get(path)
                .is_some_and(|e| !e.record.vids.is_empty());
            if held_ids {
                self.retake_quarantined("an input holding video ids is gone", |reason| {
                    reason == Reason::DuplicateVideoId
                });
            }
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
            let same = entry.record.stat == Some(stat);
            let waiting = match entry.record.state {
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

    pub(super) fn check_settled(&mut self, path: PathBuf, now: Instant) {
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
}

fn meta_ctime(meta: &std::fs::Metadata) -> std::io::Result<std::time::SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let secs = u64::try_from(meta.ctime()).map_err(std::io::Error::other)?;
    Ok(std::time::UNIX_EPOCH + Duration::new(secs, meta.ctime_nsec() as u32))
}
