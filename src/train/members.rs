//! The further seeds of `train.member_seeds` and the first one answer together: the mean of
//! their readings, and the validation figures of that mean on the held-out pseudo-labels.

use super::checkpoint::{Tally, Validation};
use super::error::TrainError;
use super::model::{span_error, Reading};
use candle_core::{Device, Tensor};

/// One trained model's readings of the held-out pairs, those pairs' own spans, and the spans
/// of its temporal map's cells (none without one).
pub(crate) struct HeldOut {
    pub(crate) readings: Vec<Reading>,
    pub(crate) wanted: Vec<(f64, f64)>,
    pub(crate) cell_spans: Vec<[f64; 2]>,
}

/// What the members (`readings[m][q]`: member `m`'s reading of query `q`) read together: their
/// mean attention and regressed span or, with a temporal map, their mean cell probabilities and
/// the cell of the highest. One member's readings pass through as they are.
pub fn mean_readings(readings: Vec<Vec<Reading>>, cell_spans: &[[f64; 2]]) -> Vec<Reading> {
    let count = readings.len();
    let mut members = readings.into_iter();
    let Some(mut mean) = members.next() else {
        return Vec::new();
    };
    if count == 1 {
        return mean;
    }
    let add = |sum: &mut [f32], other: &[f32]| sum.iter_mut().zip(other).for_each(|(s, o)| *s += o);
    for member in members {
        for (sum, reading) in mean.iter_mut().zip(member) {
            sum.span = (sum.span.0 + reading.span.0, sum.span.1 + reading.span.1);
            add(&mut sum.attention, &reading.attention);
            if let (Some(cells), Some(other)) = (&mut sum.cells, &reading.cells) {
                add(cells, other);
            }
        }
    }
    let share = 1.0 / count as f32;
    for reading in &mut mean {
        reading.span = (reading.span.0 / count as f64, reading.span.1 / count as f64);
        reading.attention.iter_mut().for_each(|a| *a *= share);
        if let Some(cells) = &mut reading.cells {
            cells.iter_mut().for_each(|p| *p *= share);
            let best = cells
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .and_then(|(i, _)| cell_spans.get(i));
            if let Some(&[start, end]) = best {
                reading.span = (start, end);
            }
        }
    }
    mean
}

/// What the members answer together on the held-out pairs, as [`Validation`] figures of their
/// mean span ([`mean_readings`]): its smooth-L1 error, R@1 and mIoU. With a temporal map the
/// error too is the span's (the mean cell's), not the map's cross-entropy, which one model's
/// validation reports. Every member must have held out the same pairs; the split depends on the
/// video ids alone, so they do unless the dataset changed between their runs.
pub(crate) fn mean_validation(held_out: Vec<HeldOut>) -> Result<Validation, TrainError> {
    let Some((wanted, cell_spans)) = held_out
        .first()
        .map(|h| (h.wanted.clone(), h.cell_spans.clone()))
    else {
        return Ok(Validation::default());
    };
    if held_out.iter().any(|h| h.wanted != wanted) {
        return Err(TrainError::Data(
            "the seeds held out different validation pairs; the dataset changed between their runs"
                .into(),
        ));
    }
    let mean = mean_readings(
        held_out.into_iter().map(|h| h.readings).collect(),
        &cell_spans,
    );
    if mean.is_empty() {
        return Ok(Validation::default());
    }
    let answered: Vec<(f64, f64)> = mean.iter().map(|r| r.span).collect();
    let as_tensor = |spans: &[(f64, f64)]| {
        let flat: Vec<f32> = spans
            .iter()
            .flat_map(|&(a, b)| [a as f32, b as f32])
            .collect();
        Tensor::from_vec(flat, (spans.len(), 2), &Device::Cpu)
    };
    let error = span_error(&as_tensor(&answered)?, &as_tensor(&wanted)?)?
        .mean(0)?
        .to_scalar::<f32>()?;
    let mut tally = Tally::default();
    tally.add(
        f64::from(error),
        answered.into_iter().zip(wanted.iter().copied()),
    );
    Ok(tally.validation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_answer_with_their_mean_attention_span_and_map() {
        let reading = |span, attention: &[f32], cells: Option<&[f32]>| Reading {
            span,
            attention: attention.to_vec(),
            cells: cells.map(<[f32]>::to_vec),
        };
        let alone = vec![reading((0.1, 0.4), &[0.5, 0.5], None)];
        let passed = mean_readings(vec![alone], &[]);
        assert_eq!(passed[0].span, (0.1, 0.4));
        assert_eq!(passed[0].attention, [0.5, 0.5]);
        // Two queries read by two members.
        let first = vec![
            reading((0.0, 0.4), &[1.0, 0.0], None),
            reading((0.2, 0.6), &[0.25, 0.75], None),
        ];
        let second = vec![
            reading((0.2, 0.8), &[0.5, 0.5], None),
            reading((0.4, 1.0), &[0.75, 0.25], None),
        ];
        let mean = mean_readings(vec![first, second], &[]);
        assert_eq!(mean.len(), 2);
        assert!((mean[0].span.0 - 0.1).abs() < 1e-12 && (mean[0].span.1 - 0.6).abs() < 1e-12);
        assert_eq!(mean[0].attention, [0.75, 0.25]);
        assert!((mean[1].span.0 - 0.3).abs() < 1e-12 && (mean[1].span.1 - 0.8).abs() < 1e-12);
        assert_eq!(mean[1].attention, [0.5, 0.5]);
        // With a map the span is the cell the mean probabilities favour, which neither member's
        // own best cell is.
        let cells = [[0.0, 0.5], [0.25, 0.75], [0.5, 1.0]];
        let mapped = mean_readings(
            vec![
                vec![reading((0.0, 0.5), &[0.5, 0.5], Some(&[0.6, 0.4, 0.0]))],
                vec![reading((0.5, 1.0), &[0.5, 0.5], Some(&[0.0, 0.4, 0.6]))],
            ],
            &cells,
        );
        assert_eq!(mapped[0].span, (0.25, 0.75));
        assert_eq!(mapped[0].cells.as_deref(), Some(&[0.3, 0.4, 0.3][..]));
    }

    #[test]
    fn the_members_validate_with_their_mean_span() {
        let reading = |span| Reading {
            span,
            attention: vec![0.5, 0.5],
            cells: None,
        };
        let member = |first, second| HeldOut {
            readings: vec![reading(first), reading(second)],
            wanted: vec![(0.1, 0.5), (0.0, 0.2)],
            cell_spans: Vec::new(),
        };
        // Neither member finds the first pair's span, their mean does; both miss the second.
        let together = mean_validation(vec![
            member((0.0, 0.4), (0.6, 1.0)),
            member((0.2, 0.6), (0.6, 1.0)),
        ])
        .unwrap();
        assert_eq!(together.r1, [0.5, 0.5, 0.5]);
        assert!((together.miou - 0.5).abs() < 1e-6, "{together:?}");
        // The second pair's error: 0.5·0.6² + 0.5·0.8², over two pairs.
        assert!((together.loss - 0.25).abs() < 1e-6, "{together:?}");
        let alone = mean_validation(vec![member((0.0, 0.4), (0.6, 1.0))]).unwrap();
        assert_eq!(alone.r1, [0.5, 0.5, 0.0]);
        let mut moved = member((0.0, 0.4), (0.6, 1.0));
        moved.wanted[1] = (0.3, 0.4);
        assert!(mean_validation(vec![member((0.0, 0.4), (0.6, 1.0)), moved]).is_err());
    }
}
