//! `momentminer check`: what a run needs, tried before it starts, so a daemon's unit can refuse
//! to start (`ExecStartPre=`) with a line naming what to set instead of quarantining every file
//! it is given. Each check is independent: one failure does not hide the others.

use crate::caption::text::TextEncoder;
use crate::caption::{runtime, Captioner};
use crate::compute::Backend;
use crate::config::{CaptionMode, Config};
use crate::ingest::list_videos;
use crate::processor::VideoProcessor;
use crate::service::allowed_metrics_addr;
use std::path::Path;

/// One check's outcome.
#[derive(Debug)]
pub struct Check {
    /// What was checked.
    pub what: &'static str,
    /// What was found, when it passed; what is wrong and what to set, when it failed.
    pub outcome: Result<String, String>,
}

/// Every check of `config`, and of `sample` (a feature file) when given.
pub fn run(config: &Config, sample: Option<&Path>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |what, outcome| checks.push(Check { what, outcome });
    let uses_words = config.caption.effective_mode() == CaptionMode::Vocabulary;
    let trains = config.train.retrain_after_videos > 0;
    if uses_words || trains {
        check(
            "onnx runtime",
            runtime::environment(&config.caption)
                .map(|_| runtime::library_path(&config.caption).display().to_string())
                .map_err(|e| {
                    format!("{e}; run scripts/fetch-models.sh or set caption.ort_library")
                }),
        );
        check(
            "query encoder",
            TextEncoder::load(&config.caption)
                .map(|_| config.caption.text_model.display().to_string())
                .map_err(|e| format!("{e}; set caption.text_model and caption.text_tokenizer")),
        );
    }
    check(
        "compute",
        Backend::open(config)
            .map(|backend| backend.describe())
            .map_err(|e| e.to_string()),
    );
    let captioner = Captioner::load(config);
    check(
        "captions",
        captioner
            .as_ref()
            .map(Captioner::summary)
            .map_err(|e| e.to_string()),
    );
    if let (Some(sample), Ok(captioner)) = (sample, captioner) {
        check("sample input", check_sample(config, captioner, sample));
    }
    let daemon = &config.daemon;
    check("inbox", readable(&daemon.inbox));
    for (what, folder) in [
        ("output folder", &daemon.output),
        ("quarantine folder", &daemon.quarantine),
        ("state folder", &daemon.state),
    ] {
        check(what, writable(folder));
    }
    check(
        "metrics address",
        allowed_metrics_addr(daemon)
            .map(|addr| {
                addr.map_or(
                    "not served (daemon.metrics_addr = \"\")".into(),
                    str::to_string,
                )
            })
            .map_err(|e| e.to_string()),
    );
    checks
}

/// Reads the first video of `sample` and checks the captioner fits its visual stream.
fn check_sample(config: &Config, captioner: Captioner, sample: &Path) -> Result<String, String> {
    let processor = VideoProcessor::new(config.clone(), captioner).map_err(|e| e.to_string())?;
    let videos = list_videos(sample).map_err(|e| e.to_string())?;
    let first = videos
        .first()
        .ok_or_else(|| format!("{}: holds no videos", sample.display()))?;
    let video = processor.read(first).map_err(|e| e.to_string())?;
    processor
        .check_captions_fit(&video)
        .map_err(|e| format!("{}: {e}", sample.display()))?;
    let streams: Vec<String> = video
        .streams
        .iter()
        .map(|s| format!("{} {}x{}", s.name, s.features.frames, s.features.dim))
        .collect();
    Ok(format!(
        "{}: video {} of {:.1} s, streams {}",
        sample.display(),
        video.id,
        video.duration,
        streams.join(", ")
    ))
}

/// The inbox is only read, but made at start-up when it does not exist yet.
fn readable(folder: &Path) -> Result<String, String> {
    if !folder.exists() {
        return writable(folder);
    }
    std::fs::read_dir(folder)
        .map(|_| folder.display().to_string())
        .map_err(|e| {
            format!(
                "{}: {e}; fix its permissions or set daemon.inbox",
                folder.display()
            )
        })
}

/// A folder that exists and takes a file, or whose nearest existing parent does (the service
/// makes the rest).
fn writable(folder: &Path) -> Result<String, String> {
    let existing = folder
        .ancestors()
        .find(|a| a.as_os_str().is_empty() || a.is_dir())
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .unwrap_or(Path::new("/"));
    let probe = existing.join(format!(".momentminer-check-{}.tmp", std::process::id()));
    let written = std::fs::write(&probe, b"");
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) if existing == folder => Ok(folder.display().to_string()),
        Ok(()) => Ok(format!("{} (made at start-up)", folder.display())),
        Err(e) => Err(format!(
            "{}: cannot write in {}: {e}; fix its permissions or point the setting elsewhere",
            folder.display(),
            existing.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_writable_or_made_under_a_writable_parent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(writable(dir.path()).is_ok());
        let later = writable(&dir.path().join("a/b")).unwrap();
        assert!(later.ends_with("(made at start-up)"), "{later}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no probe left"
        );
        let inbox = dir.path().join("inbox");
        assert!(readable(&inbox).unwrap().ends_with("(made at start-up)"));
        std::fs::write(&inbox, b"a file, not a folder").unwrap();
        let refused = readable(&inbox).unwrap_err();
        assert!(refused.contains("daemon.inbox"), "{refused}");
    }
}
