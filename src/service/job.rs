//! One input file, start to finish, on a worker thread: checks, content hash, then the
//! [`VideoProcessor`] for each video it holds, durable outputs or a quarantine record. The
//! front-end's main loop only records the [`Outcome`] in the ledger. [`examine`] and
//! [`process`] are separate so a front-end may hand an examined file elsewhere (the inbox
//! watcher enqueues it for the Redis consumers) instead of processing it.

use super::memory::{decode_bound, MemoryBudget};
use super::record::{FileStat, InputRecord, QuarantineRecord, VideoResult};
use super::Folders;
use crate::config::GroupDurability;
use crate::failure::{Failure, Reason, Stage};
use crate::fsio::{is_name_too_long, open_regular, probe, stage, Staged};
use crate::ingest::{check_video_id, list_videos, FileKind, VideoRef, MAX_SIDECAR_BYTES};
use crate::processor::{ingest_failure, Processed, Source, StageTimes, VideoProcessor};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// What became of a job.
#[derive(Debug)]
pub enum Outcome {
    /// Every video produced results (some of a many-video file may be quarantined).
    Done {
        /// The file's stat when it was hashed.
        stat: FileStat,
        /// Its content hash.
        hash: String,
        /// What it produced.
        results: Results,
    },
    /// Same content as when it was last processed.
    Unchanged {
        /// Its new stat.
        stat: FileStat,
    },
    /// Handed to the Redis queue instead of being processed here.
    Enqueued {
        /// The file's stat when it was hashed.
        stat: FileStat,
        /// Its content hash.
        hash: String,
    },
    /// Written to while it was being read: wait for it to settle again.
    Changed,
    /// Gone before it could be read (moved away or deleted): nothing to record.
    Vanished,
    /// Failed in a way that may pass: try again after a backoff.
    Retry {
        /// Why, as the quarantine record would say.
        record: QuarantineRecord,
    },
    /// Given up on: a quarantine record was written.
    Quarantined {
        /// The file's stat, when it could be read.
        stat: Option<FileStat>,
        /// Its content hash, when it could be read.
        hash: Option<String>,
        /// Why.
        record: QuarantineRecord,
        /// The record written, and any results of an earlier version kept.
        outputs: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone)]
/// One input to run: the file and what is known of it.
pub struct Job {
    /// The input file.
    pub path: PathBuf,
    /// What the ledger knew of the input before this job: its hash, outputs and video ids.
    pub previous: InputRecord,
    /// Tries so far, this one excluded.
    pub attempts: u32,
    /// Tries after which a failure that may pass is quarantined all the same.
    pub retry_attempts: u32,
}

/// Which input owns which video id, so two inputs never write the same output file: this
/// process's own map, and the one its peers share when they serve one queue.
#[derive(Default)]
pub struct Owners {
    by_vid: Mutex<HashMap<String, PathBuf>>,
    shared: OnceLock<Box<dyn SharedOwners>>,
}

/// Video-id owners that several processes share (the queue's consumers, through Redis), so a
/// second input with the same id is refused on whichever process sees it second.
pub trait SharedOwners: Send + Sync {
    /// Makes `input` the owner of `vid` if it has none; returns the owner now.
    fn hold(&self, vid: &str, input: &Path) -> Result<PathBuf, String>;
    /// Makes `input` the owner of `vid` if `gone` still is; whether it did.
    fn replace(&self, vid: &str, gone: &Path, input: &Path) -> Result<bool, String>;
    /// Frees `vid` if `input` owns it.
    fn release(&self, vid: &str, input: &Path) -> Result<(), String>;
}

/// Why a video id cannot be taken.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// Another input that still exists owns it.
    HeldBy(PathBuf),
    /// The shared owners cannot be asked.
    Unreachable(String),
}

impl Owners {
    /// Owners as the ledger records them.
    pub fn new(by_vid: HashMap<String, PathBuf>) -> Owners {
        Owners {
            by_vid: Mutex::new(by_vid),
            shared: OnceLock::new(),
        }
    }

    /// From now on, also claims ids in `shared` (set once, before the first job).
    pub fn share(&self, shared: Box<dyn SharedOwners>) {
        if self.shared.set(shared).is_err() {
            tracing::warn!("the shared video-id owners were already set; keeping the first");
        }
    }

    /// Takes `vid` for `input` unless another input that still exists holds it, here or in the
    /// shared owners.
    fn claim(&self, vid: &str, input: &Path) -> Result<(), Refusal> {
        {
            let mut map = self.by_vid.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(vid) {
                Some(owner) if owner != input && owner.symlink_metadata().is_ok() => {
                    return Err(Refusal::HeldBy(owner.clone()))
                }
                _ => {
                    map.insert(vid.to_string(), input.to_path_buf());
                }
            }
        }
        let Some(shared) = self.shared.get() else {
            return Ok(());
        };
        let claimed = (|| {
            // An owner that is gone is replaced; a race with another process doing the same
            // is settled by the compare-and-set, and asked again.
            for _ in 0..3 {
                let owner = shared.hold(vid, input)?;
                if owner == input {
                    return Ok(Ok(()));
                }
                if owner.symlink_metadata().is_ok() {
                    return Ok(Err(Refusal::HeldBy(owner)));
                }
                if shared.replace(vid, &owner, input)? {
                    return Ok(Ok(()));
                }
            }
            Err("the owner kept changing".to_string())
        })();
        let result = claimed.unwrap_or_else(|e| Err(Refusal::Unreachable(e)));
        if result.is_err() {
            self.release_local(vid, input);
        }
        result
    }

    fn release(&self, vid: &str, input: &Path) {
        self.release_local(vid, input);
        if let Some(shared) = self.shared.get() {
            if let Err(e) = shared.release(vid, input) {
                tracing::warn!(vid, input = %input.display(), "cannot free a video id in the shared owners: {e}");
            }
        }
    }

    fn release_local(&self, vid: &str, input: &Path) {
        let mut map = self.by_vid.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(vid).is_some_and(|owner| owner == input) {
            map.remove(vid);
        }
    }
}

/// Everything a job reads; replaced as a whole when SIGHUP reloads the configuration.
pub struct Context {
    /// The way from a video to its result.
    pub processor: VideoProcessor,
    /// Where results and records go.
    pub folders: Folders,
    /// Which input owns which video id.
    pub owners: Arc<Owners>,
    /// Room for decoding, shared by every job.
    pub memory: Arc<MemoryBudget>,
}

/// A file that passed the checks and whose content is new.
#[derive(Debug, Clone)]
pub struct Examined {
    /// Its stat when it was hashed.
    pub stat: FileStat,
    /// Its content hash, sidecar included.
    pub hash: String,
}

/// Examines the file and, if its content is new, processes it.
pub fn run(job: &Job, ctx: &Context) -> Outcome {
    match examine(job, ctx) {
        Ok(examined) => process(job, ctx, examined),
        Err(outcome) => *outcome,
    }
}

/// Checks the file and hashes it; an outcome instead when there is nothing to process (gone,
/// refused, unchanged).
pub fn examine(job: &Job, ctx: &Context) -> Result<Examined, Box<Outcome>> {
    let follow = ctx.processor.config().daemon.follow_symlinks;
    let meta = match probe(&job.path, follow) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Box::new(Outcome::Vanished))
        }
        Err(e) => {
            return Err(Box::new(fail(
                job,
                ctx,
                None,
                None,
                Failure::io(Stage::Check, e.to_string()),
            )))
        }
    };
    let stat = FileStat::of(&meta);
    let max_bytes = ctx.processor.config().ingest.max_bytes;
    if let Err(failure) = check(&job.path, &meta, follow, max_bytes) {
        return Err(Box::new(fail(job, ctx, Some(stat), None, failure)));
    }
    let hash = content_hash(&job.path).map_err(|e| {
        Box::new(fail(
            job,
            ctx,
            Some(stat),
            None,
            Failure::io(Stage::Read, e.to_string()),
        ))
    })?;
    if job.previous.hash.as_deref() == Some(hash.as_str()) {
        return Err(Box::new(Outcome::Unchanged { stat }));
    }
    Ok(Examined { stat, hash })
}

/// Processes every video of an examined file and writes its results.
pub fn process(job: &Job, ctx: &Context, examined: Examined) -> Outcome {
    let Examined { stat, hash } = examined;
    let config = ctx.processor.config();
    let follow = config.daemon.follow_symlinks;
    let room = decode_bound(&job.path, stat.size, config.ingest.max_bytes);
    let result = {
        let _room = ctx.memory.reserve(room);
        process_videos(job, ctx)
    };
    // A writer that was still at work makes whatever was read worthless.
    if probe(&job.path, follow).map(|m| FileStat::of(&m)).ok() != Some(stat) {
        return Outcome::Changed;
    }
    match result {
        Ok(results) if !results.videos.is_empty() => {
            forget_previous(job, ctx, &results.outputs, &results.videos);
            Outcome::Done {
                stat,
                hash,
                results,
            }
        }
        Ok(Results {
            quarantined,
            outputs,
            ..
        }) => {
            forget_previous(job, ctx, &outputs, &[]);
            match quarantined.into_iter().next() {
                Some(record) => Outcome::Quarantined {
                    stat: Some(stat),
                    hash: Some(hash),
                    record,
                    outputs,
                },
                None => fail(
                    job,
                    ctx,
                    Some(stat),
                    Some(hash),
                    Failure::permanent(Reason::NoVideos, Stage::Read, "holds no videos"),
                ),
            }
        }
        Err(failure) => fail(job, ctx, Some(stat), Some(hash), failure),
    }
}

/// Headers and zip directories a single-video file may hold beyond its features.
const FILE_OVERHEAD_BYTES: u64 = 1 << 20;

/// Refuses what must not be read: symlinks (unless followed), anything that is not a regular
/// feature file (opening a FIFO would block a worker forever), and a single-video file larger
/// than its features may be (`ingest.max_bytes`), before it is hashed: a sparse file claiming
/// 25 GB would otherwise be read whole. HDF5 files hold many videos and are judged per video.
fn check(
    path: &Path,
    meta: &std::fs::Metadata,
    follow_symlinks: bool,
    max_bytes: u64,
) -> Result<(), Failure> {
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(if follow_symlinks {
            Failure::permanent(
                Reason::DanglingSymlink,
                Stage::Check,
                format!("symlink to {target}, which does not exist"),
            )
        } else {
            Failure::permanent(
                Reason::Symlink,
                Stage::Check,
                format!("is a symlink to {target}; set daemon.follow_symlinks = true to read what it points to"),
            )
        });
    }
    if !meta.is_file() {
        return Err(Failure::permanent(
            Reason::NotRegularFile,
            Stage::Check,
            "is not a regular file (a FIFO, socket or device)",
        ));
    }
    if FileKind::of(path).is_none() {
        return Err(Failure::permanent(
            Reason::UnsupportedType,
            Stage::Check,
            "unsupported file type (expected .npy, .npz, .h5 or .hdf5)",
        ));
    }
    if meta.len() == 0 {
        return Err(Failure::permanent(
            Reason::EmptyFile,
            Stage::Check,
            "is empty (0 bytes)",
        ));
    }
    let single = matches!(FileKind::of(path), Some(FileKind::Npy | FileKind::Npz));
    if single && meta.len() > max_bytes.saturating_add(FILE_OVERHEAD_BYTES) {
        return Err(Failure::permanent(
            Reason::TooLarge,
            Stage::Check,
            format!(
                "is {} bytes, more than its features may take (ingest.max_bytes = {max_bytes})",
                meta.len()
            ),
        ));
    }
    Ok(())
}

/// xxh3-128 of the file and of its duration sidecar, so a changed sidecar also means new work.
/// Both are opened as regular files only (see [`open_regular`]); a sidecar that is not one,
/// or is larger than a sidecar may be, is left out: reading the video refuses it, with its
/// reason.
pub fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 18];
    let mut feed = |mut file: std::fs::File| -> std::io::Result<()> {
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            hasher.update(&buf[..n]);
        }
    };
    feed(open_regular(path, true)?)?;
    if let Some(sidecar) = sidecar_of(path) {
        match open_regular(&sidecar, true) {
            Ok(file) if file.metadata()?.len() <= MAX_SIDECAR_BYTES => feed(file)?,
            Ok(_) => {}
            Err(e) if is_refused_sidecar(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// A sidecar that is missing (or cannot exist, its name being too long), or that reading the
/// video will refuse.
fn is_refused_sidecar(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput
    ) || is_name_too_long(e)
}

/// `<stem>.json` beside a single-video feature file.
pub fn sidecar_of(path: &Path) -> Option<PathBuf> {
    matches!(FileKind::of(path), Some(FileKind::Npy | FileKind::Npz))
        .then(|| path.with_extension("json"))
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Results {
    /// Videos done.
    pub videos: Vec<VideoResult>,
    /// Videos of a many-video file that failed while the rest succeeded.
    pub quarantined: Vec<QuarantineRecord>,
    /// Every file written (results and quarantine records), absolute.
    pub outputs: Vec<PathBuf>,
    /// Results still under temporary names (`daemon.durability = "group"`).
    pub staged: Vec<Staged>,
    /// Time per stage, summed over its videos.
    pub times: StageTimes,
}

fn process_videos(job: &Job, ctx: &Context) -> Result<Results, Failure> {
    let refs = list_videos(&job.path).map_err(|e| ingest_failure(&e))?;
    let mut done = Results::default();
    for batch in ctx.processor.backend().batches(&refs) {
        let claims: Vec<Result<(), Failure>> = batch
            .iter()
            .map(|video| claim(ctx, &video.id(), &job.path))
            .collect();
        let claimed: Vec<VideoRef> = batch
            .iter()
            .zip(&claims)
            .filter(|(_, claim)| claim.is_ok())
            .map(|(video, _)| video.clone())
            .collect();
        let mut processed = ctx
            .processor
            .process_batch(&claimed, Source::Propose)
            .into_iter();
        for (video, claim) in batch.iter().zip(claims) {
            let vid = video.id();
            let outcome = claim.and_then(|()| {
                processed
                    .next()
                    .unwrap_or_else(|| Err(Failure::io(Stage::Read, "the batch lost it")))
                    .and_then(|result| write_video(result, ctx, &mut done.times))
                    .inspect_err(|_| ctx.owners.release(&vid, &job.path))
            });
            match outcome {
                Ok((result, output)) => {
                    done.videos.push(result);
                    match output {
                        Written::Published(target) => done.outputs.push(target),
                        Written::Staged(staged) => {
                            done.outputs.push(staged.target().to_path_buf());
                            done.staged.push(staged);
                        }
                    }
                }
                // One transient failure retries the whole file; a retry redoes every video.
                Err(failure) if failure.transient => return Err(failure),
                Err(failure) if refs.len() == 1 => return Err(failure),
                Err(failure) => {
                    let record = quarantine_record(job, Some(vid), failure, job.attempts + 1);
                    done.outputs.push(write_record(ctx, &record)?);
                    done.quarantined.push(record);
                }
            }
        }
    }
    Ok(done)
}

/// Takes ownership of video id `vid` for `path`, or says who holds it.
fn claim(ctx: &Context, vid: &str, path: &Path) -> Result<(), Failure> {
    ctx.owners
        .claim(vid, path)
        .map_err(|refusal| match refusal {
            Refusal::HeldBy(owner) => Failure::permanent(
                Reason::DuplicateVideoId,
                Stage::Check,
                format!(
                    "video id '{vid}' is already produced by {}",
                    owner.display()
                ),
            ),
            Refusal::Unreachable(e) => Failure::io(
                Stage::Check,
                format!("cannot ask who owns video id '{vid}': {e}"),
            ),
        })
}

enum Written {
    Published(PathBuf),
    Staged(Staged),
}

/// Writes one video's result: staged for the next group commit, or durable at once
/// (`daemon.durability`).
fn write_video(
    processed: Processed,
    ctx: &Context,
    times: &mut StageTimes,
) -> Result<(VideoResult, Written), Failure> {
    let Processed {
        proposals: result,
        times: spent,
    } = processed;
    *times += spent;
    let write_started = std::time::Instant::now();
    let target = ctx.folders.proposals.join(format!("{}.json", result.vid));
    // Checked before staging: in a group commit the rename comes later, for the whole group,
    // and a name the file system refuses would hold every other result back with it.
    let name = target.file_name().map_or(0, |n| n.len());
    if name > NAME_MAX {
        return Err(Failure::permanent(
            Reason::BadName,
            Stage::Write,
            format!(
                "its result's name would be {name} bytes, more than the file system takes \
                 ({NAME_MAX}); shorten the video id"
            ),
        ));
    }
    let bytes = serde_json::to_vec(&result)
        .map_err(|e| Failure::permanent(Reason::Serialise, Stage::Write, e.to_string()))?;
    let written = match ctx.processor.config().daemon.durability {
        GroupDurability::Group => Written::Staged(
            in_folders(ctx, || stage(&ctx.folders.staging, &target, &bytes, false))
                .map_err(|e| cannot_write(&target, e))?,
        ),
        GroupDurability::File => {
            write_now(ctx, &target, &bytes)?;
            Written::Published(target)
        }
    };
    times.write += write_started.elapsed();
    Ok((
        VideoResult {
            vid: result.vid,
            duration: result.duration,
            proposals: result.proposals,
        },
        written,
    ))
}

fn quarantine_record(
    job: &Job,
    vid: Option<String>,
    failure: Failure,
    attempts: u32,
) -> QuarantineRecord {
    QuarantineRecord::new(job.path.display().to_string(), vid, failure, attempts)
}

/// Longest file name most file systems take.
const NAME_MAX: usize = 255;

/// `quarantine/<vid>.error.json`; inputs whose name gives no usable id get a name made from
/// their file name with separators and leading dots replaced. Every input gets a name of its
/// own that the file system takes: one too long, or from a name that is not UTF-8 (whose
/// readable form two names may share), is cut and given a hash of the input's whole name.
fn quarantine_path(dir: &Path, input: &Path, vid: Option<&str>) -> PathBuf {
    const SUFFIX: &str = ".error.json";
    let stem = input.file_stem().unwrap_or_default();
    let readable = stem.to_string_lossy();
    let name = match vid {
        Some(vid) if check_video_id(vid).is_ok() => vid.to_string(),
        _ => {
            let cleaned: String = readable
                .chars()
                .map(|c| {
                    if matches!(c, '/' | '\\' | '\0') {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            match cleaned.trim_start_matches('.') {
                "" => "unnamed".to_string(),
                rest => rest.to_string(),
            }
        }
    };
    let lossy = stem.to_str().is_none();
    if !lossy && name.len() + SUFFIX.len() <= NAME_MAX {
        return dir.join(format!("{name}{SUFFIX}"));
    }
    let mut cut = name.len().min(NAME_MAX - SUFFIX.len() - 17);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(input.as_os_str().as_encoded_bytes());
    dir.join(format!("{}~{hash:016x}{SUFFIX}", &name[..cut]))
}

fn write_record(ctx: &Context, record: &QuarantineRecord) -> Result<PathBuf, Failure> {
    let target = quarantine_path(
        &ctx.folders.quarantine,
        Path::new(&record.input),
        record.vid.as_deref(),
    );
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| Failure::permanent(Reason::Serialise, Stage::Write, e.to_string()))?;
    write_now(ctx, &target, &bytes)?;
    Ok(target)
}

/// Writes a file durably at once: fsynced under a temporary name in this process's staging
/// folder (where a crash's leftovers are found and removed), then renamed into place.
fn write_now(ctx: &Context, target: &Path, bytes: &[u8]) -> Result<(), Failure> {
    in_folders(ctx, || {
        stage(&ctx.folders.staging, target, bytes, true).and_then(|mut staged| staged.publish())
    })
    .map_err(|e| cannot_write(target, e))
}

/// Runs a write into the service's folders; when one of them was deleted under the running
/// service, makes them again (saying so) and tries once more.
fn in_folders<T>(ctx: &Context, write: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ctx.folders.make_missing()?;
            write()
        }
        other => other,
    }
}

fn cannot_write(target: &Path, e: std::io::Error) -> Failure {
    let message = format!("cannot write {}: {e}", target.display());
    if is_name_too_long(&e) {
        Failure::permanent(Reason::BadName, Stage::Write, message)
    } else {
        Failure::io(Stage::Write, message)
    }
}

/// A failed job: retried while attempts remain and the failure may pass, else quarantined.
pub fn fail(
    job: &Job,
    ctx: &Context,
    stat: Option<FileStat>,
    hash: Option<String>,
    failure: Failure,
) -> Outcome {
    let attempts = job.attempts + 1;
    let transient = failure.transient;
    let vid = job
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned());
    let mut record = quarantine_record(job, vid, failure, attempts);
    if transient && attempts < job.retry_attempts {
        return Outcome::Retry { record };
    }
    if transient {
        record.message = format!("gave up after {attempts} attempts: {}", record.message);
    }
    match write_record(ctx, &record) {
        Ok(output) => {
            forget_previous(job, ctx, std::slice::from_ref(&output), &[]);
            Outcome::Quarantined {
                stat,
                hash,
                record,
                outputs: vec![output],
            }
        }
        // Not even the record can be written (disk full): keep trying later.
        Err(e) => Outcome::Retry {
            record: QuarantineRecord {
                message: format!(
                    "{}; and the quarantine record failed: {}",
                    record.message, e.message
                ),
                ..record
            },
        },
    }
}

/// Removes what an earlier version of the input produced and this one did not, so each input
/// leaves exactly one set of results.
fn forget_previous(job: &Job, ctx: &Context, outputs: &[PathBuf], videos: &[VideoResult]) {
    let kept: HashSet<&PathBuf> = outputs.iter().collect();
    for old in &job.previous.outputs {
        let ours =
            old.starts_with(&ctx.folders.proposals) || old.starts_with(&ctx.folders.quarantine);
        if ours && !kept.contains(old) {
            if let Err(e) = std::fs::remove_file(old) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %old.display(), "cannot remove a stale output: {e}");
                }
            }
        }
    }
    let produced: HashSet<&str> = videos.iter().map(|v| v.vid.as_str()).collect();
    for vid in &job.previous.vids {
        if !produced.contains(vid.as_str()) {
            ctx.owners.release(vid, &job.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_hash_covers_the_sidecar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npy");
        std::fs::write(&path, b"features").unwrap();
        let alone = content_hash(&path).unwrap();
        assert_eq!(alone, content_hash(&path).unwrap());
        std::fs::write(dir.path().join("v.json"), r#"{"duration": 3}"#).unwrap();
        let with_sidecar = content_hash(&path).unwrap();
        assert_ne!(alone, with_sidecar);
        std::fs::write(dir.path().join("v.json"), r#"{"duration": 4}"#).unwrap();
        assert_ne!(with_sidecar, content_hash(&path).unwrap());
    }

    #[test]
    fn a_video_id_belongs_to_one_existing_input() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a/v.npy");
        let second = dir.path().join("b/v.npy");
        std::fs::create_dir_all(first.parent().unwrap()).unwrap();
        std::fs::write(&first, b"x").unwrap();
        let owners = Owners::default();
        assert!(owners.claim("v", &first).is_ok());
        assert!(owners.claim("v", &first).is_ok());
        assert_eq!(
            owners.claim("v", &second),
            Err(Refusal::HeldBy(first.clone()))
        );
        // Once the first input is gone (moved, deleted), the id may move with it.
        std::fs::remove_file(&first).unwrap();
        std::fs::create_dir_all(second.parent().unwrap()).unwrap();
        std::fs::write(&second, b"x").unwrap();
        assert!(owners.claim("v", &second).is_ok());
        owners.release("v", &first);
        assert_eq!(
            owners.claim("v", &first),
            Err(Refusal::HeldBy(second.clone()))
        );
        owners.release("v", &second);
        assert!(owners.claim("v", &first).is_ok());
    }

    /// Owners shared in memory, as Redis shares them between consumers.
    #[derive(Clone, Default)]
    struct SharedMap(Arc<Mutex<HashMap<String, PathBuf>>>);

    impl SharedOwners for SharedMap {
        fn hold(&self, vid: &str, input: &Path) -> Result<PathBuf, String> {
            let mut map = self.0.lock().unwrap();
            Ok(map.entry(vid.into()).or_insert(input.into()).clone())
        }
        fn replace(&self, vid: &str, gone: &Path, input: &Path) -> Result<bool, String> {
            let mut map = self.0.lock().unwrap();
            let replaced = map.get(vid).is_some_and(|o| o == gone);
            if replaced {
                map.insert(vid.into(), input.into());
            }
            Ok(replaced)
        }
        fn release(&self, vid: &str, input: &Path) -> Result<(), String> {
            let mut map = self.0.lock().unwrap();
            if map.get(vid).is_some_and(|o| o == input) {
                map.remove(vid);
            }
            Ok(())
        }
    }

    #[test]
    fn two_processes_sharing_owners_never_take_one_id_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a/dd.npz"), dir.path().join("b/dd.npz"));
        for path in [&a, &b] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let shared = SharedMap::default();
        let (first, second) = (Owners::default(), Owners::default());
        first.share(Box::new(shared.clone()));
        second.share(Box::new(shared.clone()));
        assert!(first.claim("dd", &a).is_ok());
        assert_eq!(second.claim("dd", &b), Err(Refusal::HeldBy(a.clone())));
        assert!(
            second.by_vid.lock().unwrap().is_empty(),
            "a refused claim leaves nothing behind"
        );
        // The owner's input is gone: the other process takes the id over.
        std::fs::remove_file(&a).unwrap();
        assert!(second.claim("dd", &b).is_ok());
        assert_eq!(shared.0.lock().unwrap()["dd"], b);
        // Freed by its owner only.
        first.release("dd", &a);
        assert_eq!(shared.0.lock().unwrap()["dd"], b);
        second.release("dd", &b);
        assert!(shared.0.lock().unwrap().is_empty());
    }

    #[test]
    fn quarantine_names_never_leave_the_folder() {
        let dir = Path::new("/q");
        assert_eq!(
            quarantine_path(dir, Path::new("/in/x.npy"), Some("x")),
            dir.join("x.error.json")
        );
        assert_eq!(
            quarantine_path(dir, Path::new("/in/..npy"), Some("..")),
            dir.join("unnamed.error.json")
        );
        assert_eq!(
            quarantine_path(dir, Path::new("/in/...evil.npy"), Some("a/b")),
            dir.join("evil.error.json")
        );
    }

    #[test]
    fn quarantine_names_fit_and_are_one_per_input() {
        use std::os::unix::ffi::OsStrExt;
        let dir = Path::new("/q");
        let long = "v".repeat(250);
        let path = quarantine_path(
            dir,
            &Path::new("/in").join(format!("{long}.npy")),
            Some(&long),
        );
        let name = path.file_name().unwrap().len();
        assert!(name <= NAME_MAX, "{name} bytes");
        let odd = |byte: u8| {
            let mut raw = b"/in/clip".to_vec();
            raw.push(byte);
            raw.extend_from_slice(b".npy");
            PathBuf::from(std::ffi::OsStr::from_bytes(&raw))
        };
        let (a, b) = (odd(0xfe), odd(0xff));
        assert_ne!(
            quarantine_path(dir, &a, None),
            quarantine_path(dir, &b, None),
            "two names that read alike keep a record each"
        );
    }
}
