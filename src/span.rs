//! Temporal spans as the field judges them: intersection over union, the IoU thresholds
//! recall is reported at, the multi-scale sliding windows every baseline starts from, and the
//! steps a span covers. Below [`crate::caption`], [`crate::eval`], [`crate::ground`] and
//! [`crate::train`], which all measure spans the same way.

use std::ops::Range;

/// The IoU thresholds R@n is reported at (the field's 0.3, 0.5 and 0.7).
pub const IOU_THRESHOLDS: [f64; 3] = [0.3, 0.5, 0.7];

/// The steps of a video `frames` steps long that a normalised span covers, at least one: those
/// its first and last instants fall in (outside [0, 1], the first or last step).
pub fn steps_of(span: [f64; 2], frames: usize) -> Range<usize> {
    let n = frames as f64;
    let first = ((span[0] * n).floor() as usize).min(frames.saturating_sub(1));
    let last = ((span[1] * n).ceil() as usize).clamp(first + 1, frames.max(1));
    first..last
}

/// Temporal intersection over union of two `[start, end]` spans; 0 for empty unions.
pub fn iou(a: [f64; 2], b: [f64; 2]) -> f64 {
    let inter = (a[1].min(b[1]) - a[0].max(b[0])).max(0.0);
    let union = a[1].max(b[1]) - a[0].min(b[0]);
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// `count` multi-scale sliding windows with half-window stride, taken round-robin over scales
/// (lengths 1/2, 1/3, 1/4, ... of the video) so any prefix mixes scales.
pub fn sliding_windows(duration: f64, count: usize) -> Vec<[f64; 2]> {
    let mut scales: Vec<Vec<[f64; 2]>> = Vec::new();
    let mut total = 0;
    let mut m = 2;
    while total < count {
        let len = 1.0 / m as f64;
        let windows: Vec<[f64; 2]> = (0..2 * m - 1)
            .map(|i| {
                let s = i as f64 * len / 2.0;
                [s * duration, (s + len).min(1.0) * duration]
            })
            .collect();
        total += windows.len();
        scales.push(windows);
        m += 1;
    }
    let longest = scales.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| scales.iter().filter_map(move |s| s.get(i).copied()))
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_covers_the_steps_its_first_and_last_instants_fall_in() {
        assert_eq!(steps_of([0.25, 0.5], 8), 2..4);
        assert_eq!(steps_of([0.3, 0.55], 10), 3..6);
        // At least one step, and never past the video's ends.
        assert_eq!(steps_of([0.5, 0.5], 10), 5..6);
        assert_eq!(steps_of([1.0, 1.0], 10), 9..10);
        assert_eq!(steps_of([-0.5, 1.5], 10), 0..10);
        assert_eq!(steps_of([0.2, 0.4], 0), 0..1);
    }

    #[test]
    fn iou_of_nested_disjoint_and_empty_spans() {
        assert!((iou([0.0, 10.0], [0.0, 5.0]) - 0.5).abs() < 1e-12);
        assert_eq!(iou([0.0, 1.0], [2.0, 3.0]), 0.0);
        assert_eq!(iou([1.0, 1.0], [1.0, 1.0]), 0.0);
        assert!((iou([2.0, 6.0], [4.0, 8.0]) - 1.0 / 3.0).abs() < 1e-12);
    }
}
