//! Videos from file to captioned proposals: read → sample → similarity → events → proposals →
//! caption, a batch at a time, the similarity and events on the compute back-end.
//! [`VideoProcessor::process_batch`] (or its two halves, [`VideoProcessor::read_batch`] and
//! [`VideoProcessor::process_loaded`]) is the only way through; the batch commands (`propose`,
//! `caption`, `bench`), the inbox watcher and the queue consumer all call it and differ only in
//! how they write, so a result never depends on how the file arrived.
//! [`analyse`] is the stage chain without reading and captioning, for `inspect` and `ground`.

use crate::caption::{Caption, CaptionError, Captioner};
use crate::compute::{cpu_events, Backend, ComputeError, Found};
use crate::config::Config;
use crate::events::AtomicEvents;
use crate::failure::{Failure, Reason, Stage};
use crate::ingest::{read_video, Durations, Features, IngestError, Video, VideoRef};
use crate::proposals::{propose, Proposal};
use crate::rng::hash_str;
use crate::sample::sample;
use crate::similarity::Ssm;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a processor cannot be made.
#[derive(Debug, Error)]
pub enum OpenError {
    /// `ingest.durations_file` cannot be read.
    #[error(transparent)]
    Durations(#[from] IngestError),
    /// The compute back-end `compute.device` names cannot be used.
    #[error(transparent)]
    Compute(#[from] ComputeError),
}

/// Where a video's proposals come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Found now: the whole proposal path.
    Propose,
    /// Read from an earlier run's `proposals/` folder, to be captioned again (another
    /// vocabulary, text tower or mode) without finding them again.
    Recaption(&'a Path),
}

/// A video's captioned proposals and what each stage cost.
#[derive(Debug)]
pub struct Processed {
    /// What `proposals/<vid>.json` holds.
    pub proposals: VideoProposals,
    /// Time per stage; `write` is left to the caller, who writes.
    pub times: StageTimes,
}

/// Everything that turns a video reference into its result, loaded once and shared by every
/// worker thread: the configuration, the durations file, the compute back-end and the
/// captioner.
pub struct VideoProcessor {
    config: Config,
    durations: Durations,
    backend: Backend,
    captioner: Captioner,
}

/// A video read (or the reason it could not be), with what reading it cost.
pub struct Loaded {
    read: Result<Video, Failure>,
    times: StageTimes,
}

impl VideoProcessor {
    /// Loads `ingest.durations_file` and opens the compute back-end (`compute.device`); the
    /// captioner is loaded by the caller, who knows whether it captions at all (a watcher that
    /// only enqueues does not).
    pub fn new(config: Config, captioner: Captioner) -> Result<VideoProcessor, OpenError> {
        Ok(VideoProcessor {
            durations: Durations::load(&config.ingest.durations_file)?,
            backend: Backend::open(&config)?,
            config,
            captioner,
        })
    }

    /// What the heavy stages run on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What makes its pseudo-queries.
    pub fn captioner(&self) -> &Captioner {
        &self.captioner
    }

    /// Reads one video: features, streams and duration.
    pub fn read(&self, video: &VideoRef) -> Result<Video, IngestError> {
        read_video(video, &self.config.ingest, &self.durations)
    }

    /// Whether the captioner can caption `video`'s features at all: a tower that does not fit
    /// the features fails every video alike, which a batch says once, up front.
    pub fn check_captions_fit(&self, video: &Video) -> Result<(), CaptionError> {
        self.captioner.visual_features(video).map(|_| ())
    }

    /// Each video's result, in order: one back-end batch for all of them.
    pub fn process_batch(
        &self,
        videos: &[VideoRef],
        source: Source,
    ) -> Vec<Result<Processed, Failure>> {
        self.process_loaded(self.read_batch(videos), source, |_, result| result)
    }

    /// Reads the videos across the thread pool (a batch driver reads the next batch while the
    /// back-end works on this one).
    pub fn read_batch(&self, videos: &[VideoRef]) -> Vec<Loaded> {
        videos
            .par_iter()
            .map(|video| {
                let mut times = StageTimes::default();
                let read =
                    timed(&mut times.read, || self.read(video)).map_err(|e| ingest_failure(&e));
                Loaded { read, times }
            })
            .collect()
    }

    /// The results of videos already read, each handed to `then` with its index in the batch
    /// (a driver writes it there) in the same parallel pass. A device computes the batch's
    /// similarity and events at once first; on the CPU each video goes its whole way in that
    /// one pass, so no stage waits for the batch's slowest video.
    pub fn process_loaded<R: Send>(
        &self,
        loaded: Vec<Loaded>,
        source: Source,
        then: impl Fn(usize, Result<Processed, Failure>) -> R + Sync + Send,
    ) -> Vec<R> {
        let analysed: Vec<Option<Analysed>> = match (source, self.backend.cuda()) {
            (Source::Propose, Some(_)) => {
                let read: Vec<&Video> =
                    loaded.iter().filter_map(|l| l.read.as_ref().ok()).collect();
                let mut found = analyse_batch(&read, &self.config, &self.backend).into_iter();
                loaded
                    .iter()
                    .map(|l| l.read.is_ok().then(|| found.next()).flatten())
                    .collect()
            }
            _ => loaded.iter().map(|_| None).collect(),
        };
        loaded
            .into_par_iter()
            .zip(analysed)
            .enumerate()
            .map(|(i, (loaded, analysed))| then(i, self.finish(loaded, analysed, source)))
            .collect()
    }

    /// One video's proposals (analysed now unless the batch did) with their pseudo-queries.
    fn finish(
        &self,
        loaded: Loaded,
        analysed: Option<Analysed>,
        source: Source,
    ) -> Result<Processed, Failure> {
        let video = loaded.read?;
        let mut times = loaded.times;
        let mut proposals = match source {
            Source::Recaption(earlier) => read_earlier(earlier, &video.id)?,
            Source::Propose => {
                let analysis = match analysed {
                    Some((analysis, spent)) => {
                        times += spent;
                        analysis
                    }
                    None => analyse(&video, &self.config, &mut times),
                };
                VideoProposals::new(&video, &analysis)
            }
        };
        timed(&mut times.caption, || {
            proposals.caption(&video, &self.captioner)
        })
        .map_err(|e| Failure::permanent(e.code(), Stage::Caption, e.to_string()))?;
        if let Some(field) = proposals.first_non_finite() {
            return Err(Failure::permanent(
                Reason::NonFiniteResult,
                Stage::Caption,
                format!("the result holds a non-finite {field}; nothing is written for it"),
            ));
        }
        Ok(Processed { proposals, times })
    }
}

fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// `earlier/<vid>.json`, as an earlier run wrote it.
fn read_earlier(earlier: &Path, vid: &str) -> Result<VideoProposals, Failure> {
    let path = earlier.join(format!("{vid}.json"));
    let fail = |message: String| {
        Failure::permanent(
            Reason::EarlierProposals,
            Stage::Read,
            format!("proposals {}: {message}", path.display()),
        )
    };
    let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))
}

/// A reading failure with its reason code; the message names the HDF5 key when the problem is
/// confined to one entry of a many-video file.
pub fn ingest_failure(e: &IngestError) -> Failure {
    Failure {
        reason: e.problem.code(),
        stage: Stage::Read,
        message: match &e.key {
            Some(key) => format!("[{key}] {}", e.problem),
            None => e.problem.to_string(),
        },
        transient: e.is_transient(),
    }
}

/// Time spent per stage, summed over however many videos.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    /// Reading the file and its duration.
    pub read: Duration,
    /// Resampling to `sample.steps`.
    pub sample: Duration,
    /// The self-similarity matrix.
    pub similarity: Duration,
    /// k-means atomic events.
    pub events: Duration,
    /// Compound proposals.
    pub proposals: Duration,
    /// Pseudo-queries.
    pub caption: Duration,
    /// Writing results (the driver's share).
    pub write: Duration,
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, o: StageTimes) {
        self.read += o.read;
        self.sample += o.sample;
        self.similarity += o.similarity;
        self.events += o.events;
        self.proposals += o.proposals;
        self.caption += o.caption;
        self.write += o.write;
    }
}

impl StageTimes {
    /// Each stage with its time, in the order of the path.
    pub fn named(&self) -> [(&'static str, Duration); 7] {
        [
            ("read", self.read),
            ("sample", self.sample),
            ("similarity", self.similarity),
            ("events", self.events),
            ("proposals", self.proposals),
            ("caption", self.caption),
            ("write", self.write),
        ]
    }
}

/// Runs `work`, adds its duration to `slot`.
pub fn timed<T>(slot: &mut Duration, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = work();
    *slot += start.elapsed();
    out
}

/// Every intermediate of the proposal path (what `inspect` draws).
pub struct Analysis {
    /// The resampled features.
    pub sampled: Features,
    /// Their cosine self-similarity.
    pub ssm: Ssm,
    /// The atomic events found on it.
    pub events: AtomicEvents,
    /// The ranked proposals, in steps.
    pub proposals: Vec<Proposal>,
}

/// The stage chain on a read video, without captions, on the CPU: sample → similarity →
/// events → proposals, each seeded by the video id so a result never depends on the order
/// videos come in.
pub fn analyse(video: &Video, config: &Config, times: &mut StageTimes) -> Analysis {
    let seed = hash_str(&video.id);
    let sampled = timed(&mut times.sample, || {
        sample(video.features(), &config.sample)
    });
    let found = cpu_events(&sampled, seed ^ config.events.seed, config);
    finish_analysis(sampled, found, seed, config, times)
}

/// A video's analysis and what its stages cost.
pub type Analysed = (Analysis, StageTimes);

/// [`analyse`] for a batch of videos, the similarity and events on `backend` as one batch;
/// each video's analysis with its stage times.
pub fn analyse_batch(videos: &[&Video], config: &Config, backend: &Backend) -> Vec<Analysed> {
    let seeds: Vec<u64> = videos.iter().map(|v| hash_str(&v.id)).collect();
    let sampled: Vec<(Features, StageTimes)> = videos
        .par_iter()
        .map(|video| {
            let mut times = StageTimes::default();
            let sampled = timed(&mut times.sample, || {
                sample(video.features(), &config.sample)
            });
            (sampled, times)
        })
        .collect();
    let batch: Vec<&Features> = sampled.iter().map(|(f, _)| f).collect();
    let event_seeds: Vec<u64> = seeds.iter().map(|s| s ^ config.events.seed).collect();
    let found = backend.events(&batch, &event_seeds, config);
    sampled
        .into_par_iter()
        .zip(found)
        .zip(seeds)
        .map(|(((sampled, mut times), found), seed)| {
            let analysis = finish_analysis(sampled, found, seed, config, &mut times);
            (analysis, times)
        })
        .collect()
}

fn finish_analysis(
    sampled: Features,
    found: Found,
    seed: u64,
    config: &Config,
    times: &mut StageTimes,
) -> Analysis {
    times.similarity += found.similarity_time;
    times.events += found.events_time;
    let proposals = timed(&mut times.proposals, || {
        propose(
            &found.events,
            &found.ssm,
            &config.proposals,
            seed ^ config.proposals.seed,
        )
    });
    Analysis {
        sampled,
        ssm: found.ssm,
        events: found.events,
        proposals,
    }
}

/// The per-video result file `proposals/<vid>.json`; times in seconds, proposals best first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoProposals {
    /// The video id.
    pub vid: String,
    /// Seconds.
    pub duration: f64,
    /// The feature file it was read from.
    pub source: String,
    /// Number of sampled steps the spans were found on.
    pub steps: usize,
    /// The atomic events, in seconds.
    pub atomic_events: Vec<[f64; 2]>,
    /// The proposals, best first.
    pub proposals: Vec<ScoredSpan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// A proposal in seconds with its score and pseudo-query.
pub struct ScoredSpan {
    /// Seconds.
    pub start: f64,
    /// Seconds.
    pub end: f64,
    /// Higher is better; what ranks the video's proposals.
    pub score: f64,
    /// A window filled in beside the runs of events (`proposals.fill_windows`): listed for
    /// recall, never captioned, paired or answered with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub window: bool,
    #[serde(flatten)]
    /// Its pseudo-query (empty when uncaptioned).
    pub caption: Caption,
}

impl ScoredSpan {
    /// Whether the dataset takes this proposal: all but filled-in windows and those the
    /// captioner superseded.
    pub fn is_pair(&self) -> bool {
        !self.window && !self.caption.superseded
    }
}

impl VideoProposals {
    /// The first number that is NaN or infinite, named (`proposal 3 score`), if any: such a
    /// result is refused whole, since JSON writes it as `null` and the ledger refuses it.
    pub fn first_non_finite(&self) -> Option<String> {
        if !self.duration.is_finite() {
            return Some("duration".into());
        }
        if let Some(i) = self.atomic_events.iter().position(|e| !all_finite(e)) {
            return Some(format!("atomic event {i}"));
        }
        self.proposals.iter().enumerate().find_map(|(i, p)| {
            let field = if !all_finite(&[p.start, p.end]) {
                "span"
            } else if !p.score.is_finite() {
                "score"
            } else if !p
                .caption
                .token_scores
                .iter()
                .chain(&p.caption.token_margins)
                .all(|s| s.is_finite())
            {
                "word score"
            } else if !p.caption.query_embedding.iter().all(|s| s.is_finite()) {
                "query embedding"
            } else {
                return None;
            };
            Some(format!("proposal {i} {field}"))
        })
    }

    /// Gives every proposal but the filled-in windows its pseudo-query.
    pub fn caption(&mut self, video: &Video, captioner: &Captioner) -> Result<(), CaptionError> {
        let runs: Vec<&mut ScoredSpan> = self.proposals.iter_mut().filter(|p| !p.window).collect();
        let spans: Vec<(f64, f64)> = runs.iter().map(|p| (p.start, p.end)).collect();
        for (proposal, caption) in runs.into_iter().zip(captioner.caption(video, &spans)?) {
            proposal.caption = caption;
        }
        Ok(())
    }

    /// The result of an analysis, in seconds, not yet captioned.
    pub fn new(video: &Video, analysis: &Analysis) -> Self {
        let n = analysis.events.n as f64;
        let seconds = |step: usize| step as f64 / n * video.duration;
        VideoProposals {
            vid: video.id.clone(),
            duration: video.duration,
            source: video.source.display().to_string(),
            steps: analysis.events.n,
            atomic_events: analysis
                .events
                .spans
                .iter()
                .map(|&(s, e)| [seconds(s), seconds(e)])
                .collect(),
            proposals: analysis
                .proposals
                .iter()
                .map(|p| ScoredSpan {
                    start: seconds(p.start),
                    end: seconds(p.end),
                    score: f64::from(p.score),
                    window: p.window,
                    caption: Caption::default(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_number_anywhere_in_a_result_is_named() {
        let span = |score: f64| ScoredSpan {
            start: 1.0,
            end: 2.0,
            score,
            window: false,
            caption: Caption::default(),
        };
        let mut result = VideoProposals {
            vid: "v".into(),
            duration: 10.0,
            source: "v.npy".into(),
            steps: 8,
            atomic_events: vec![[0.0, 5.0], [5.0, 10.0]],
            proposals: vec![span(0.5), span(0.25)],
        };
        assert_eq!(result.first_non_finite(), None);
        result.proposals[1].caption.token_scores = vec![0.1, f32::NAN];
        assert_eq!(
            result.first_non_finite().as_deref(),
            Some("proposal 1 word score")
        );
        result.proposals[0].score = f64::INFINITY;
        assert_eq!(
            result.first_non_finite().as_deref(),
            Some("proposal 0 score")
        );
        result.atomic_events[1][1] = f64::NAN;
        assert_eq!(result.first_non_finite().as_deref(), Some("atomic event 1"));
    }
}
