//! Sample: a video's `T` features → `N` evenly spaced steps (PSVL/LGI resample to 128).
//! Step `i` of `n` always covers the normalised time span `[i/n, (i+1)/n)`.

use crate::config::{SampleConfig, SampleMethod};
use crate::ingest::Features;

/// Resamples to `sample.steps` steps of equal spans of frames: each step their mean
/// (`sample.method = "mean"`), their first frame (`"pick"`) or SPL's midpoint (`"midpoint"`).
/// A video with no more frames than steps keeps every frame.
pub fn sample(features: &Features, config: &SampleConfig) -> Features {
    let (frames, dim, steps) = (features.frames, features.dim, config.steps);
    if frames <= steps {
        return features.clone();
    }
    let bound = |i: usize| ((i as f64 * frames as f64 / steps as f64).round() as usize).min(frames);
    let mut data = Vec::with_capacity(steps * dim);
    for i in 0..steps {
        let (lo, hi) = (bound(i), bound(i + 1).max(bound(i) + 1).min(frames));
        match config.method {
            SampleMethod::Mean => {
                let start = data.len();
                data.extend_from_slice(features.row(lo));
                for t in lo + 1..hi {
                    for (acc, v) in data[start..].iter_mut().zip(features.row(t)) {
                        *acc += v;
                    }
                }
                let scale = 1.0 / (hi - lo) as f32;
                data[start..].iter_mut().for_each(|v| *v *= scale);
            }
            SampleMethod::Pick => data.extend_from_slice(features.row(lo)),
            SampleMethod::Midpoint => {
                // SPL: midpoints of linspace(0, T - 1, N + 1).
                let step = (frames - 1) as f64 / steps as f64;
                let mid = ((i as f64 + 0.5) * step).round() as usize;
                data.extend_from_slice(features.row(mid.min(frames - 1)));
            }
        }
    }
    Features {
        frames: steps,
        dim,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(frames: usize) -> Features {
        Features {
            frames,
            dim: 2,
            data: (0..frames).flat_map(|t| [t as f32, 1.0]).collect(),
        }
    }

    fn config(steps: usize, method: SampleMethod) -> SampleConfig {
        SampleConfig { steps, method }
    }

    #[test]
    fn short_videos_keep_every_feature() {
        let f = ramp(90);
        assert_eq!(sample(&f, &config(128, SampleMethod::Mean)), f);
    }

    #[test]
    fn mean_pooling_averages_equal_spans() {
        let s = sample(&ramp(400), &config(100, SampleMethod::Mean));
        assert_eq!(s.frames, 100);
        // Each step averages 4 consecutive frames: mean of 4i..4i+3 is 4i + 1.5.
        for i in 0..100 {
            assert_eq!(s.row(i), [4.0 * i as f32 + 1.5, 1.0]);
        }
    }

    #[test]
    fn pick_and_midpoint_take_frames_in_order_within_range() {
        for method in [SampleMethod::Pick, SampleMethod::Midpoint] {
            let s = sample(&ramp(301), &config(128, method));
            let times: Vec<f32> = (0..128).map(|i| s.row(i)[0]).collect();
            assert!(times.windows(2).all(|w| w[0] < w[1]), "{method:?}");
            assert!(times[0] >= 0.0 && times[127] <= 300.0);
        }
    }
}
