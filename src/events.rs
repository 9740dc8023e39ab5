//! Atomic events: k-means over the SSM's contextual features, majority-vote smoothing of the
//! labels, contiguous runs of one label, and merging of runs that are too short.

use crate::config::{EventsConfig, TimeColumn, TrialSelection};
use crate::rng::Rng;
use crate::similarity::{dot, Ssm};

/// Contiguous half-open step ranges covering `[0, n)` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomicEvents {
    /// The number of steps covered.
    pub n: usize,
    /// The events, as `[start, end)` step ranges.
    pub spans: Vec<(usize, usize)>,
}

/// `steps` is the configured sample size, so `min_event_steps` keeps its meaning (a share of
/// the video) for videos that had fewer frames than that.
pub fn atomic_events(ssm: &Ssm, config: &EventsConfig, steps: usize, seed: u64) -> AtomicEvents {
    let trials = KmeansProblem::new(ssm, config, seed).solve(config.max_iter);
    events_from_trials(ssm, config, steps, trials)
}

/// The atomic events of the best of a video's k-means trials: its labels smoothed, cut into
/// runs and the too-short runs merged. Both compute back-ends finish here.
pub fn events_from_trials(
    ssm: &Ssm,
    config: &EventsConfig,
    steps: usize,
    trials: Vec<Clustering>,
) -> AtomicEvents {
    let n = ssm.n;
    let labels = best_trial(trials, config.trial_selection).unwrap_or_else(|| vec![0; n]);
    let smoothed = smooth(&labels, config.smoothing_window);
    let min_len = ((config.min_event_steps * n) as f64 / steps as f64)
        .round()
        .max(1.0) as usize;
    AtomicEvents {
        n,
        spans: merge_short(runs(&smoothed), ssm, min_len),
    }
}

/// What one video's k-means needs: its points, their squared norms, the convergence bound and
/// one k-means++ start per trial, each trial seeded apart so a trial's result never depends on
/// the others.
pub struct KmeansProblem {
    /// The points: the SSM's rows, with the optional position column.
    pub points: Points,
    /// Each point's squared norm.
    pub norms: Vec<f32>,
    /// Clusters.
    pub k: usize,
    /// Lloyd stops when the centres' squared move is at most this.
    pub tol: f32,
    /// Per trial, the `k × dim` k-means++ starting centres.
    pub starts: Vec<Vec<f32>>,
}

impl KmeansProblem {
    /// Builds the points from `ssm` and draws every trial's start.
    pub fn new(ssm: &Ssm, config: &EventsConfig, seed: u64) -> KmeansProblem {
        let points = contextual_features(ssm, config);
        let k = config.k.min(points.n);
        let norms: Vec<f32> = (0..points.n)
            .map(|i| dot(points.row(i), points.row(i)))
            .collect();
        let tol = config.tol as f32 * mean_variance(&points);
        let starts = (0..config.trials as u64)
            .map(|trial| {
                let mut rng = Rng::new(seed ^ trial.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                kmeans_plus_plus(&points, &norms, k, &mut rng)
            })
            .collect();
        KmeansProblem {
            points,
            norms,
            k,
            tol,
            starts,
        }
    }

    /// Every trial's Lloyd run on the host, in trial order.
    pub fn solve(&self, max_iter: usize) -> Vec<Clustering> {
        self.starts
            .iter()
            .map(|start| lloyd(self, start.clone(), max_iter))
            .collect()
    }
}

/// Rows of the SSM (= columns, it is symmetric), with the optional position column scaled to
/// the typical norm of a row so `time_weight` means the same for every video length.
fn contextual_features(ssm: &Ssm, config: &EventsConfig) -> Points {
    let n = ssm.n;
    let with_time = config.time_column != TimeColumn::None && config.time_weight > 0.0 && n > 1;
    let dim = n + usize::from(with_time);
    let mut data = Vec::with_capacity(n * dim);
    let mean_norm = (0..n)
        .map(|i| ssm.row(i).iter().map(|v| v * v).sum::<f32>().sqrt())
        .sum::<f32>()
        / n as f32;
    for i in 0..n {
        data.extend_from_slice(ssm.row(i));
        if with_time {
            let t = i as f32 / (n - 1) as f32;
            let position = match config.time_column {
                TimeColumn::Sqrt => t.sqrt(),
                _ => t,
            };
            data.push(position * config.time_weight * mean_norm);
        }
    }
    Points { n, dim, data }
}

/// `n` points of `dim` values, row-major.
pub struct Points {
    /// How many.
    pub n: usize,
    /// Values per point: `n`, or `n + 1` with the position column.
    pub dim: usize,
    /// The values.
    pub data: Vec<f32>,
}

impl Points {
    /// Point `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Whether each point ends with the position column.
    pub fn with_time(&self) -> bool {
        self.dim > self.n
    }
}

/// One k-means run's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    /// Each point's cluster.
    pub labels: Vec<usize>,
    /// The sum of squared distances to the assigned centres.
    pub inertia: f32,
}

fn best_trial(trials: Vec<Clustering>, selection: TrialSelection) -> Option<Vec<usize>> {
    let better = |a: &Clustering, b: &Clustering| match selection {
        TrialSelection::Inertia => a.inertia < b.inertia,
        TrialSelection::MostBoundaries => {
            let (ba, bb) = (boundaries(&a.labels), boundaries(&b.labels));
            ba > bb || (ba == bb && a.inertia < b.inertia)
        }
    };
    trials
        .into_iter()
        .reduce(|best, next| if better(&next, &best) { next } else { best })
        .map(|c| c.labels)
}

fn boundaries(labels: &[usize]) -> usize {
    labels.windows(2).filter(|w| w[0] != w[1]).count()
}

fn mean_variance(points: &Points) -> f32 {
    let n = points.n as f32;
    let mut mean = vec![0.0f32; points.dim];
    for i in 0..points.n {
        mean.iter_mut()
            .zip(points.row(i))
            .for_each(|(m, v)| *m += v / n);
    }
    let total: f32 = (0..points.n)
        .map(|i| {
            points
                .row(i)
                .iter()
                .zip(&mean)
                .map(|(v, m)| (v - m) * (v - m))
                .sum::<f32>()
        })
        .sum();
    total / (n * points.dim as f32)
}

/// Lloyd's algorithm from one start (scikit-learn's recipe). `kernels/kmeans.cu` runs the same
/// phases in the same floating-point order; change both or neither.
fn lloyd(problem: &KmeansProblem, mut centers: Vec<f32>, max_iter: usize) -> Clustering {
    let (points, norms, k, tol) = (&problem.points, &problem.norms, problem.k, problem.tol);
    let (n, dim) = (points.n, points.dim);
    let mut labels = vec![0usize; n];
    let mut distances = vec![0.0f32; n];
    let mut sums = vec![0.0f32; k * dim];
    let mut counts = vec![0usize; k];
    for _ in 0..max_iter {
        assign(points, norms, &centers, k, &mut labels, &mut distances);
        sums.iter_mut().for_each(|v| *v = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for (i, &label) in labels.iter().enumerate() {
            counts[label] += 1;
            sums[label * dim..(label + 1) * dim]
                .iter_mut()
                .zip(points.row(i))
                .for_each(|(s, v)| *s += v);
        }
        let mut shift = 0.0f32;
        for c in 0..k {
            let center = &mut centers[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                // An empty cluster restarts at the point worst served by its centre.
                let far = argmax(&distances);
                distances[far] = 0.0;
                let row = points.row(far);
                shift += center
                    .iter()
                    .zip(row)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>();
                center.copy_from_slice(row);
                continue;
            }
            let scale = 1.0 / counts[c] as f32;
            for (value, sum) in center.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                let next = sum * scale;
                shift += (next - *value) * (next - *value);
                *value = next;
            }
        }
        if shift <= tol {
            break;
        }
    }
    assign(points, norms, &centers, k, &mut labels, &mut distances);
    Clustering {
        labels,
        inertia: distances.iter().sum(),
    }
}

fn assign(
    points: &Points,
    norms: &[f32],
    centers: &[f32],
    k: usize,
    labels: &mut [usize],
    distances: &mut [f32],
) {
    let dim = points.dim;
    let center_norms: Vec<f32> = centers.chunks_exact(dim).map(|c| dot(c, c)).collect();
    for i in 0..points.n {
        let row = points.row(i);
        let (mut best, mut best_d) = (0, f32::INFINITY);
        for c in 0..k {
            let d = norms[i] - 2.0 * dot(row, &centers[c * dim..(c + 1) * dim]) + center_norms[c];
            if d < best_d {
                (best, best_d) = (c, d);
            }
        }
        labels[i] = best;
        distances[i] = best_d.max(0.0);
    }
}

fn kmeans_plus_plus(points: &Points, norms: &[f32], k: usize, rng: &mut Rng) -> Vec<f32> {
    let (n, dim) = (points.n, points.dim);
    let mut centers = Vec::with_capacity(k * dim);
    centers.extend_from_slice(points.row(rng.below(n)));
    let sq_dist =
        |i: usize, c: &[f32]| (norms[i] - 2.0 * dot(points.row(i), c) + dot(c, c)).max(0.0);
    let mut closest: Vec<f32> = (0..n).map(|i| sq_dist(i, &centers[..dim])).collect();
    while centers.len() < k * dim {
        let total: f32 = closest.iter().sum();
        let pick = if total > 0.0 {
            let mut target = rng.uniform() as f32 * total;
            closest
                .iter()
                .position(|&d| {
                    target -= d;
                    target <= 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.below(n)
        };
        let start = centers.len();
        centers.extend_from_slice(points.row(pick));
        for (i, best) in closest.iter_mut().enumerate() {
            *best = best.min(sq_dist(i, &centers[start..]));
        }
    }
    centers
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Majority vote over a centred window; ties keep the current label, so smoothing never
/// invents a boundary.
fn smooth(labels: &[usize], window: usize) -> Vec<usize> {
    let half = window / 2;
    let n = labels.len();
    (0..n)
        .map(|i| {
            let neighbourhood = &labels[i.saturating_sub(half)..(i + half + 1).min(n)];
            let count = |label: usize| neighbourhood.iter().filter(|&&l| l == label).count();
            let own = count(labels[i]);
            neighbourhood
                .iter()
                .copied()
                .map(|l| (count(l), l))
                .filter(|&(c, _)| c > own)
                .max()
                .map_or(labels[i], |(_, l)| l)
        })
        .collect()
}

fn runs(labels: &[usize]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 1..=labels.len() {
        if i == labels.len() || labels[i] != labels[start] {
            spans.push((start, i));
            start = i;
        }
    }
    spans
}

/// Repeatedly folds the shortest too-short event into the neighbour it is more similar to.
fn merge_short(mut spans: Vec<(usize, usize)>, ssm: &Ssm, min_len: usize) -> Vec<(usize, usize)> {
    while spans.len() > 1 {
        let Some((i, _)) = spans
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1 - s.0 < min_len)
            .min_by_key(|(_, s)| s.1 - s.0)
        else {
            break;
        };
        let similarity = |j: usize| ssm.block_mean(spans[i], spans[j]);
        let into = match (i.checked_sub(1), (i + 1 < spans.len()).then_some(i + 1)) {
            (Some(l), Some(r)) => {
                if similarity(l) >= similarity(r) {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => break,
        };
        let (lo, hi) = (i.min(into), i.max(into));
        spans[lo] = (spans[lo].0, spans[hi].1);
        spans.remove(hi);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingest::Features;
    use crate::similarity::cosine_ssm;

    /// Frames drawn around one prototype per planted segment, plus noise.
    fn planted(bounds: &[usize], dim: usize, noise: f64, seed: u64) -> Features {
        let mut rng = Rng::new(seed);
        let protos: Vec<Vec<f64>> = (0..bounds.len())
            .map(|_| (0..dim).map(|_| rng.normal()).collect())
            .collect();
        let frames = *bounds.last().unwrap();
        let mut data = Vec::with_capacity(frames * dim);
        for t in 0..frames {
            let seg = bounds.iter().position(|&b| t < b).unwrap();
            data.extend(
                protos[seg]
                    .iter()
                    .map(|p| (p + noise * rng.normal()) as f32),
            );
        }
        Features { frames, dim, data }
    }

    #[test]
    fn planted_segments_are_recovered_exactly() {
        let config = Config::default().events;
        let bounds = [20, 50, 70, 100, 128];
        let f = planted(&bounds, 64, 0.5, 11);
        let events = atomic_events(&cosine_ssm(&f), &config, 128, 1);
        let expected: Vec<(usize, usize)> = std::iter::once(0)
            .chain(bounds)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| (w[0], w[1]))
            .collect();
        assert_eq!(events.spans, expected);
    }

    #[test]
    fn results_are_deterministic_by_seed() {
        let config = Config::default().events;
        let f = planted(&[30, 64, 90, 128], 32, 2.0, 5);
        let ssm = cosine_ssm(&f);
        assert_eq!(
            atomic_events(&ssm, &config, 128, 9),
            atomic_events(&ssm, &config, 128, 9)
        );
    }

    #[test]
    fn short_runs_merge_into_the_more_similar_neighbour() {
        // Steps 0..6 resemble 6..8 (block A); 8..12 resemble nothing else (block B).
        let bounds = [6, 8, 12];
        let mut f = planted(&bounds, 16, 0.0, 2);
        let a_row = f.row(0).to_vec();
        for t in 6..8 {
            let blend: Vec<f32> = a_row
                .iter()
                .zip(f.row(t))
                .map(|(a, b)| 0.9 * a + 0.1 * b)
                .collect();
            f.data[t * 16..(t + 1) * 16].copy_from_slice(&blend);
        }
        let ssm = cosine_ssm(&f);
        let merged = merge_short(vec![(0, 6), (6, 8), (8, 12)], &ssm, 3);
        assert_eq!(merged, vec![(0, 8), (8, 12)]);
        // Nothing is merged when every run is long enough, and one run stays one run.
        assert_eq!(
            merge_short(vec![(0, 6), (6, 12)], &ssm, 3),
            vec![(0, 6), (6, 12)]
        );
        assert_eq!(merge_short(vec![(0, 2)], &ssm, 3), vec![(0, 2)]);
    }

    #[test]
    fn smoothing_removes_isolated_labels_but_keeps_ties() {
        assert_eq!(
            smooth(&[0, 0, 1, 0, 0, 2, 2, 2], 5),
            [0, 0, 0, 0, 0, 2, 2, 2]
        );
        assert_eq!(smooth(&[0, 0, 1, 1], 5), [0, 0, 1, 1]);
        assert_eq!(smooth(&[3, 1, 2], 1), [3, 1, 2]);
    }

    #[test]
    fn tiny_inputs_do_not_break() {
        let config = Config::default().events;
        for frames in 1..4 {
            let f = planted(&[frames], 4, 1.0, 1);
            let events = atomic_events(&cosine_ssm(&f), &config, 128, 0);
            assert_eq!(events.spans.first().map(|s| s.0), Some(0));
            assert_eq!(events.spans.last().map(|s| s.1), Some(frames));
        }
    }
}
