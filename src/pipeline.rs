//! The proposal path for one video, stage after stage: sample → similarity → events →
//! proposals. The CLI, the benchmark and the daemon all call this, so a result never depends on
//! how the file arrived.

use crate::caption::{Caption, CaptionError, Captioner};
use crate::config::Config;
use crate::events::{atomic_events, AtomicEvents};
use crate::ingest::{Features, Video};
use crate::proposals::{propose, Proposal};
use crate::rng::hash_str;
use crate::sample::sample;
use crate::similarity::{cosine_ssm, Ssm};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Time spent per stage, summed over however many videos.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub read: Duration,
    pub sample: Duration,
    pub similarity: Duration,
    pub events: Duration,
    pub proposals: Duration,
    pub caption: Duration,
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
    pub sampled: Features,
    pub ssm: Ssm,
    pub events: AtomicEvents,
    pub proposals: Vec<Proposal>,
}

pub fn analyse(video: &Video, config: &Config, times: &mut StageTimes) -> Analysis {
    let seed = hash_str(&video.id);
    let sampled = timed(&mut times.sample, || {
        sample(video.features(), &config.sample)
    });
    let ssm = timed(&mut times.similarity, || cosine_ssm(&sampled));
    let events = timed(&mut times.events, || {
        atomic_events(
            &ssm,
            &config.events,
            config.sample.steps,
            seed ^ config.events.seed,
        )
    });
    let proposals = timed(&mut times.proposals, || {
        propose(
            &events,
            &ssm,
            &config.proposals,
            seed ^ config.proposals.seed,
        )
    });
    Analysis {
        sampled,
        ssm,
        events,
        proposals,
    }
}

/// The per-video result file `proposals/<vid>.json`; times in seconds, proposals best first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoProposals {
    pub vid: String,
    pub duration: f64,
    pub source: String,
    /// Number of sampled steps the spans were found on.
    pub steps: usize,
    pub atomic_events: Vec<[f64; 2]>,
    pub proposals: Vec<ScoredSpan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScoredSpan {
    pub start: f64,
    pub end: f64,
    pub score: f64,
    #[serde(flatten)]
    pub caption: Caption,
}

impl ScoredSpan {
    /// Whether the dataset takes this proposal: all but those the captioner superseded.
    pub fn is_pair(&self) -> bool {
        !self.caption.superseded
    }
}

impl VideoProposals {
    /// Gives every proposal its pseudo-query.
    pub fn caption(&mut self, video: &Video, captioner: &Captioner) -> Result<(), CaptionError> {
        let spans: Vec<(f64, f64)> = self.proposals.iter().map(|p| (p.start, p.end)).collect();
        for (proposal, caption) in self
            .proposals
            .iter_mut()
            .zip(captioner.caption(video, &spans)?)
        {
            proposal.caption = caption;
        }
        Ok(())
    }

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
                    caption: Caption::default(),
                })
                .collect(),
        }
    }
}
