//! Compound proposals: every contiguous run of atomic events is a candidate; a sampler keeps at
//! most `cap` of them, and each kept one gets a score so the list is ranked best first.

use crate::config::{ProposalsConfig, Sampler};
use crate::events::AtomicEvents;
use crate::rng::Rng;
use crate::similarity::Ssm;
use crate::span::sliding_windows;

/// A span of steps `[start, end)` with its score (higher is better).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    /// First step.
    pub start: usize,
    /// One past the last step.
    pub end: usize,
    /// Higher is better.
    pub score: f32,
    /// Mean self-similarity inside the span (what the compactness/diversity samplers rank by).
    pub cohesion: f32,
    /// A window filled in beside the runs of events (`proposals.fill_windows`): listed for
    /// recall only, never captioned, paired or answered with.
    pub window: bool,
}

/// The video's compound proposals (runs of atomic events), ranked and capped by `config`.
pub fn propose(
    events: &AtomicEvents,
    ssm: &Ssm,
    config: &ProposalsConfig,
    seed: u64,
) -> Vec<Proposal> {
    let n = events.n as f64;
    let spans = &events.spans;
    let mut candidates: Vec<Proposal> = (0..spans.len())
        .flat_map(|i| (i..spans.len()).map(move |j| (spans[i].0, spans[j].1)))
        .filter(|&(s, e)| {
            let length = (e - s) as f64 / n;
            length >= config.min_length - 1e-9 && length <= config.max_length + 1e-9
        })
        .map(|(start, end)| score(ssm, start, end, config.length_exponent))
        .collect();
    if candidates.len() > config.cap {
        match config.sampler {
            Sampler::Uniform => Rng::new(seed).shuffle(&mut candidates),
            Sampler::Compactness => candidates.sort_by(|a, b| b.cohesion.total_cmp(&a.cohesion)),
            Sampler::Diversity => candidates.sort_by(|a, b| a.cohesion.total_cmp(&b.cohesion)),
        }
        candidates.truncate(config.cap);
    }
    let mut ranked = rank(candidates, config.rerank_iou);
    if config.fill_windows && ranked.len() < config.cap {
        let filling = windows_beside(&ranked, ssm, config);
        ranked.extend(filling.into_iter().take(config.cap - ranked.len()));
    }
    ranked
}

/// Multi-scale sliding windows (in steps) that overlap none of `proposals` by half or more,
/// nor each other, within the length limits, best score first.
fn windows_beside(proposals: &[Proposal], ssm: &Ssm, config: &ProposalsConfig) -> Vec<Proposal> {
    let n = ssm.n;
    let mut taken: Vec<(usize, usize)> = proposals.iter().map(|p| (p.start, p.end)).collect();
    let mut windows: Vec<Proposal> = Vec::new();
    for w in sliding_windows(1.0, 4 * config.cap) {
        let start = ((w[0] * n as f64).round() as usize).min(n.saturating_sub(1));
        let end = ((w[1] * n as f64).round() as usize).clamp(start + 1, n.max(start + 1));
        let length = (end - start) as f64 / n.max(1) as f64;
        let fits = length >= config.min_length - 1e-9 && length <= config.max_length + 1e-9;
        if fits && taken.iter().all(|&t| step_iou(t, (start, end)) < 0.5) {
            taken.push((start, end));
            windows.push(Proposal {
                window: true,
                ..score(ssm, start, end, config.length_exponent)
            });
        }
    }
    windows.sort_by(|a, b| b.score.total_cmp(&a.score));
    windows
}

/// Contrast between a span and its surroundings: how much more its steps resemble each other
/// than they resemble the steps just outside it (a window as long as half the span on each
/// side). A real event is self-similar and differs from what comes before and after it.
///
/// The contrast is multiplied by `length^length_exponent` (length as a fraction of the video):
/// a short span's few steps resemble each other by chance, so raw contrast overrates them.
fn score(ssm: &Ssm, start: usize, end: usize, length_exponent: f32) -> Proposal {
    let len = end - start;
    let reach = len.div_ceil(2).max(1);
    let cohesion = ssm.block_mean((start, end), (start, end));
    let left = (start.saturating_sub(reach), start);
    let right = (end, (end + reach).min(ssm.n));
    let (nl, nr) = (left.1 - left.0, right.1 - right.0);
    let context = if nl + nr == 0 {
        cohesion
    } else {
        (ssm.block_mean((start, end), left) * nl as f32
            + ssm.block_mean((start, end), right) * nr as f32)
            / (nl + nr) as f32
    };
    Proposal {
        start,
        end,
        score: (cohesion - context) * (len as f32 / ssm.n as f32).powf(length_exponent),
        cohesion,
        window: false,
    }
}

/// Best score first; a proposal that overlaps an already placed better one by more than
/// `max_iou` waits until every distinct one has been placed, so the top few differ.
fn rank(mut proposals: Vec<Proposal>, max_iou: f64) -> Vec<Proposal> {
    proposals.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.start.cmp(&b.start))
            .then(a.end.cmp(&b.end))
    });
    let mut placed: Vec<Proposal> = Vec::with_capacity(proposals.len());
    let mut deferred = Vec::new();
    for p in proposals {
        let overlaps = placed
            .iter()
            .any(|q| step_iou((p.start, p.end), (q.start, q.end)) > max_iou);
        if overlaps {
            deferred.push(p);
        } else {
            placed.push(p);
        }
    }
    placed.extend(deferred);
    placed
}

fn step_iou(a: (usize, usize), b: (usize, usize)) -> f64 {
    let inter = a.1.min(b.1).saturating_sub(a.0.max(b.0));
    let union = a.1.max(b.1) - a.0.min(b.0);
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// An SSM of blocks: steps in the same block have similarity 1, others 0.
    fn block_ssm(bounds: &[usize]) -> Ssm {
        let n = *bounds.last().unwrap();
        let block = |t: usize| bounds.iter().position(|&b| t < b).unwrap();
        Ssm {
            n,
            data: (0..n * n)
                .map(|k| f32::from(u8::from(block(k / n) == block(k % n))))
                .collect(),
        }
    }

    fn events(bounds: &[usize]) -> AtomicEvents {
        let mut start = 0;
        AtomicEvents {
            n: *bounds.last().unwrap(),
            spans: bounds
                .iter()
                .map(|&b| {
                    let span = (start, b);
                    start = b;
                    span
                })
                .collect(),
        }
    }

    #[test]
    fn a_whole_atomic_event_outranks_spans_that_cross_boundaries() {
        let bounds = [30, 60, 100, 128];
        let mut config = Config::default().proposals;
        config.fill_windows = false;
        let ranked = propose(&events(&bounds), &block_ssm(&bounds), &config, 0);
        // 4 events → 10 contiguous runs, all within the default length limits.
        assert_eq!(ranked.len(), 10);
        let top: Vec<(usize, usize)> = ranked[..4].iter().map(|p| (p.start, p.end)).collect();
        for single in [(0, 30), (30, 60), (60, 100), (100, 128)] {
            assert!(top.contains(&single), "{top:?}");
        }
        assert!(ranked.windows(2).take(3).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn samplers_respect_the_cap_and_uniform_is_seeded() {
        let bounds = [10, 25, 40, 60, 80, 100, 128];
        let mut config = Config::default().proposals;
        config.cap = 5;
        config.min_length = 0.0;
        let ssm = block_ssm(&bounds);
        let ev = events(&bounds);
        let a = propose(&ev, &ssm, &config, 3);
        assert_eq!(a.len(), 5);
        assert_eq!(a, propose(&ev, &ssm, &config, 3));
        assert_ne!(a, propose(&ev, &ssm, &config, 4));
        config.sampler = Sampler::Compactness;
        let compact = propose(&ev, &ssm, &config, 3);
        assert!(compact.iter().all(|p| p.cohesion == 1.0));
        config.sampler = Sampler::Diversity;
        let diverse = propose(&ev, &ssm, &config, 3);
        assert!(diverse.iter().all(|p| p.cohesion < 0.5));
    }

    #[test]
    fn length_limits_filter_candidates() {
        let bounds = [10, 64, 128];
        let mut config = Config::default().proposals;
        config.min_length = 0.2;
        config.max_length = 0.9;
        let ranked = propose(&events(&bounds), &block_ssm(&bounds), &config, 0);
        let spans: Vec<(usize, usize)> = ranked.iter().map(|p| (p.start, p.end)).collect();
        assert!(!spans.contains(&(0, 10)) && !spans.contains(&(0, 128)));
        assert!(spans.contains(&(10, 64)) && spans.contains(&(64, 128)));
    }

    #[test]
    fn near_duplicates_are_pushed_behind_distinct_proposals() {
        let make = |start, end, score| Proposal {
            start,
            end,
            score,
            cohesion: 0.0,
            window: false,
        };
        let ranked = rank(
            vec![make(0, 50, 0.9), make(0, 52, 0.8), make(60, 100, 0.5)],
            0.7,
        );
        assert_eq!((ranked[1].start, ranked[1].end), (60, 100));
        assert_eq!((ranked[2].start, ranked[2].end), (0, 52));
    }

    #[test]
    fn windows_fill_the_list_after_the_runs_and_overlap_none_by_half() {
        let bounds = [30, 60, 100, 128];
        let mut config = Config::default().proposals;
        config.fill_windows = true;
        config.cap = 16;
        let (ev, ssm) = (events(&bounds), block_ssm(&bounds));
        let ranked = propose(&ev, &ssm, &config, 0);
        assert_eq!(ranked.len(), 16);
        let (runs, windows) = ranked.split_at(10);
        assert!(runs.iter().all(|p| !p.window) && windows.iter().all(|p| p.window));
        config.fill_windows = false;
        assert_eq!(
            runs,
            propose(&ev, &ssm, &config, 0),
            "the runs come first, as before"
        );
        for (i, w) in windows.iter().enumerate() {
            let earlier = runs.iter().chain(&windows[..i]);
            assert!(earlier
                .into_iter()
                .all(|p| step_iou((p.start, p.end), (w.start, w.end)) < 0.5));
        }
        assert!(windows.windows(2).all(|w| w[0].score >= w[1].score));
        // A full list takes none.
        config.fill_windows = true;
        config.cap = 10;
        assert_eq!(propose(&ev, &ssm, &config, 0).len(), 10);
    }
}
