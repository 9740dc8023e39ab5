//! Why an input produced no result: one [`Failure`] type with a stable, machine-readable
//! [`Reason`] code, shared by every driver (batch commands, the inbox watcher, the queue
//! consumer). The codes are what quarantine records, the ledger and metrics carry; they are
//! part of the output format and never change meaning.

use serde::{Serialize, Serializer};
use std::fmt;

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $code:literal,)*) => {
        /// The kind of failure, serialised as its stable code (`bad_magic`, `truncated`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable code.
            pub fn code(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The reason a code names, if any (ledger rows written by this version).
            pub fn from_code(code: &str) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// An I/O error that may pass (retried).
    Io => "io",
    /// The file ends before its header says it does.
    Truncated => "truncated",
    /// Not the magic bytes of the format its name claims.
    BadMagic => "bad_magic",
    /// A header that cannot be parsed.
    BadHeader => "bad_header",
    /// An element type other than float16/32/64.
    UnsupportedDtype => "unsupported_dtype",
    /// Not (T, D) after squeezing length-1 axes.
    BadRank => "bad_rank",
    /// Over `ingest.max_frames`, `ingest.max_dim` or `ingest.max_bytes`.
    TooLarge => "too_large",
    /// The memory for an input's features could not be allocated (retried, then quarantined).
    OutOfMemory => "out_of_memory",
    /// T = 0.
    NoFrames => "no_frames",
    /// D = 0.
    NoDims => "no_dims",
    /// NaN or Inf in the features.
    NonFinite => "non_finite",
    /// A zip archive that cannot be read.
    BadArchive => "bad_archive",
    /// The configured stream is not in the file.
    MissingStream => "missing_stream",
    /// The HDF5 library refused the file.
    Hdf5 => "hdf5",
    /// No sidecar, durations file entry or features-per-second.
    MissingDuration => "missing_duration",
    /// A duration that is not finite and positive.
    BadDuration => "bad_duration",
    /// A sidecar that cannot be read or parsed.
    BadSidecar => "bad_sidecar",
    /// A video id that cannot name an output file.
    BadVideoId => "bad_video_id",
    /// A file name the file system or the product cannot use: not UTF-8, or its outputs'
    /// names would be too long.
    BadName => "bad_name",
    /// Not a feature file type.
    UnsupportedType => "unsupported_type",
    /// A symlink while `daemon.follow_symlinks` is off.
    Symlink => "symlink",
    /// A followed symlink whose target does not exist.
    DanglingSymlink => "dangling_symlink",
    /// A FIFO, socket or device.
    NotRegularFile => "not_regular_file",
    /// 0 bytes.
    EmptyFile => "empty_file",
    /// A many-video file that holds no videos.
    NoVideos => "no_videos",
    /// Another input already produces this video id.
    DuplicateVideoId => "duplicate_video_id",
    /// Features as wide as no text tower (`caption.visual_stream` against the tower).
    CaptionDimension => "caption_dimension",
    /// The stream captions are read from is not in the file.
    CaptionStream => "caption_stream",
    /// Any other failure of the caption stage.
    Caption => "caption",
    /// The proposals of an earlier run (`caption --proposals`) cannot be read.
    EarlierProposals => "earlier_proposals",
    /// A result that cannot be serialised.
    Serialise => "serialise",
    /// A NaN or infinite number in a result (a score, a time), which no file or ledger row may
    /// hold.
    NonFiniteResult => "non_finite_result",
    /// The ledger refused to record the result (a constraint, a value SQLite will not store).
    LedgerRefused => "ledger_refused",
}

impl Reason {
    /// The file failed what the caption settings asked of it, so other settings may take it.
    pub fn is_caption(self) -> bool {
        matches!(
            self,
            Reason::CaptionDimension | Reason::CaptionStream | Reason::Caption
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// Where in the path from file to result a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Before reading: file type, symlinks, ownership of the video id.
    Check,
    /// Reading and decoding the features and their duration.
    Read,
    /// Turning proposals into pseudo-queries.
    Caption,
    /// Writing results or records.
    Write,
    /// Handing the input to the Redis queue.
    Enqueue,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Check => "check",
            Stage::Read => "read",
            Stage::Caption => "caption",
            Stage::Write => "write",
            Stage::Enqueue => "enqueue",
        })
    }
}

/// An input (or one video of it) that produced no result.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What kind of failure.
    pub reason: Reason,
    /// Where it happened.
    pub stage: Stage,
    /// What a person reads: the problem and, where there is one, what to do about it.
    pub message: String,
    /// Whether trying again may succeed (I/O errors, a locked file).
    pub transient: bool,
}

impl Failure {
    /// A failure that trying again will not mend.
    pub fn permanent(reason: Reason, stage: Stage, message: impl Into<String>) -> Failure {
        Failure {
            reason,
            stage,
            message: message.into(),
            transient: false,
        }
    }

    /// An I/O failure that may pass.
    pub fn io(stage: Stage, message: impl Into<String>) -> Failure {
        Failure {
            reason: Reason::Io,
            stage,
            message: message.into(),
            transient: true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_names_one_reason_and_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for &reason in Reason::ALL {
            assert!(seen.insert(reason.code()), "{} twice", reason.code());
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.code())
            );
        }
        assert_eq!(Reason::from_code("no such code"), None);
    }

    #[test]
    fn only_caption_reasons_depend_on_the_caption_settings() {
        let caption: Vec<_> = Reason::ALL.iter().filter(|r| r.is_caption()).collect();
        assert_eq!(caption.len(), 3);
        assert!(caption.iter().all(|r| r.code().starts_with("caption")));
    }
}
