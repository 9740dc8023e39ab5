//! The inbox: file-change events from the kernel (inotify through `notify`), and how a path is
//! looked at. Events only say where to look; full rescans catch whatever they miss.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};

pub enum Change {
    Paths(Vec<PathBuf>),
    /// Events were lost (queue overflow, watch error): the whole inbox must be looked at.
    Rescan(String),
}

/// Keeps the watch alive; dropping it stops the events.
pub struct Inbox {
    _watcher: notify::RecommendedWatcher,
}

impl Inbox {
    pub fn watch(
        inbox: &Path,
        mut deliver: impl FnMut(Change) + Send + 'static,
    ) -> notify::Result<Inbox> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let event = match event {
                    Ok(event) if event.need_rescan() => {
                        Change::Rescan("the kernel's event queue overflowed".into())
                    }
                    Ok(event) => match event.kind {
                        // A removal matters too: the video ids its file held are free
                        // again for an input quarantined as their duplicate.
                        EventKind::Create(_)
                        | EventKind::Modify(_)
                        | EventKind::Remove(_)
                        | EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Any
                        | EventKind::Other => Change::Paths(event.paths),
                        EventKind::Access(_) => return,
                    },
                    Err(e) => Change::Rescan(format!("watch error: {e}")),
                };
                deliver(event);
            })?;
        watcher.watch(inbox, RecursiveMode::Recursive)?;
        Ok(Inbox { _watcher: watcher })
    }
}
