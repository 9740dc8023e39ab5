//! Atomic file output: a reader sees either no file or a whole one, never a partial write.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How far [`write_atomic`] goes to make a file survive power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Rename only: whole or absent after a crash of the process, not of the machine.
    None,
    /// The data is fsynced before the rename; the caller fsyncs the folder ([`sync_dir`]),
    /// once for many files, before it relies on the new name.
    Data,
    /// Data and folder entry are fsynced before returning.
    Full,
}

/// The temporary names [`write_atomic`] uses, so start-up can clear those a crash left.
pub fn is_temporary_output(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Writes to a hidden temporary name in the same folder, then renames over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut staged = stage(dir, path, bytes, durability != Durability::None)?;
    staged.publish()?;
    if durability == Durability::Full {
        sync_dir(staged.folder())?;
    }
    Ok(())
}

/// A whole file under a hidden temporary name, waiting to be renamed into place; the caller
/// may make many durable at once ([`sync_filesystem`]) before publishing them. It keeps its
/// bytes until then: a temporary file deleted before its publish (its folder removed by hand
/// while a group waited for its commit) is written again rather than lost.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    bytes: Vec<u8>,
    published: bool,
}

impl Staged {
    /// Renames the file into place, writing it again (data fsynced) if its temporary file is
    /// gone. Publishing twice is harmless, so a caller may retry a group in which some renames
    /// already happened.
    pub fn publish(&mut self) -> std::io::Result<()> {
        if self.published {
            return Ok(());
        }
        match std::fs::rename(&self.temp, &self.target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.temp.exists() => {
                write_temp(&self.temp, &self.bytes, true)?;
                std::fs::rename(&self.temp, &self.target)?;
            }
            other => other?,
        }
        self.published = true;
        self.bytes = Vec::new();
        Ok(())
    }

    /// Where it will be published.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The folder it will be published in.
    pub fn folder(&self) -> &Path {
        self.target.parent().unwrap_or(Path::new("."))
    }
}

/// A staged file that is dropped unpublished (its result was thrown away) leaves nothing.
impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `temp` (made anew), fsynced if `sync_data`; a partial file is removed.
fn write_temp(temp: &Path, bytes: &[u8], sync_data: bool) -> std::io::Result<()> {
    let result = (|| {
        let mut file = std::fs::File::create(temp)?;
        file.write_all(bytes)?;
        if sync_data {
            file.sync_data()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    result
}

/// Writes `bytes` to a hidden temporary name in `dir` (fsynced with `sync_data`); nothing is
/// visible under `path` until [`Staged::publish`]. `dir` must be on `path`'s filesystem.
pub fn stage(dir: &Path, path: &Path, bytes: &[u8], sync_data: bool) -> std::io::Result<Staged> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    // The pid and counter make it unique; the name only says whose it is, so a long one is cut
    // (a temporary name must not fail where the target's would not).
    let name = name.to_string_lossy();
    let mut cut = name.len().min(64);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let temp = dir.join(format!(
        ".{}.{}-{}.tmp",
        &name[..cut],
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    write_temp(&temp, bytes, sync_data)?;
    Ok(Staged {
        temp,
        target: path.to_path_buf(),
        bytes: bytes.to_vec(),
        published: false,
    })
}

/// Makes the entries (creations, renames, removals) of a folder durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Flushes everything written to the filesystem holding `dir` (syncfs): one call makes a
/// whole batch durable, far cheaper than an fsync per file.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the file system refused a name for its length (ENAMETOOLONG): trying again never
/// helps, and a file by that name cannot exist.
pub fn is_name_too_long(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENAMETOOLONG)
}

/// Opens `path` for reading only if it is a regular file, without ever blocking: opened with
/// `O_NONBLOCK` (a FIFO opens at once instead of waiting for a writer) and checked with
/// `fstat` on what was opened (no race with a rename), so a FIFO, a socket or a device (a
/// symlink to `/dev/zero`) is refused with `InvalidInput` before a byte is read. With
/// `follow_symlinks` off, a symlink is refused too (`ELOOP`). Every reader of an input goes
/// through this.
pub fn open_regular(path: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device)",
        ));
    }
    Ok(file)
}

/// The metadata that decides whether a file is new, changed or settled: the link itself, or
/// what it points to when symlinks are followed (the link itself again if that is missing).
pub fn probe(path: &Path, follow_symlinks: bool) -> std::io::Result<std::fs::Metadata> {
    let meta = path.symlink_metadata()?;
    if follow_symlinks && meta.file_type().is_symlink() {
        return Ok(std::fs::metadata(path).unwrap_or(meta));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_appear_only_when_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let mut staged = stage(dir.path(), &path, b"whole", false).unwrap();
        assert!(!path.exists());
        staged.publish().unwrap();
        staged.publish().unwrap();
        drop(staged);
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        drop(stage(dir.path(), &path, b"thrown away", true).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_staged_file_deleted_before_its_publish_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(".staging");
        std::fs::create_dir(&staging).unwrap();
        let path = dir.path().join("out.json");
        let mut staged = stage(&staging, &path, b"kept in memory", false).unwrap();
        std::fs::remove_dir_all(&staging).unwrap();
        assert!(staged.publish().is_err(), "no folder to write it again in");
        std::fs::create_dir(&staging).unwrap();
        staged.publish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"kept in memory");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }

    #[test]
    fn replaces_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_atomic(&path, b"first", Durability::Full).unwrap();
        write_atomic(&path, b"second", Durability::None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/x.json"), b"x", Durability::Data).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_regular_files_open_and_a_fifo_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("f.npy");
        std::fs::write(&regular, b"x").unwrap();
        assert!(open_regular(&regular, false).is_ok());
        let fifo = dir.path().join("fifo.npy");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let refused = open_regular(&fifo, true).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            open_regular(&zero, true).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        let link = dir.path().join("link.npy");
        std::os::unix::fs::symlink(&regular, &link).unwrap();
        assert!(open_regular(&link, true).is_ok());
        assert!(
            open_regular(&link, false).is_err(),
            "not followed when told not to"
        );
    }
}
