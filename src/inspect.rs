//! A picture of one video's self-similarity matrix with its atomic events and top proposals,
//! so a user can see why a boundary is where it is.

use crate::ingest::Video;
use crate::processor::Analysis;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::Once;
use thiserror::Error;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const MATRIX_PX: u32 = 640;
const MARGIN: u32 = 50;
const ROW_PX: u32 = 22;
const LABEL_PX: u32 = 230;
/// How many ranked proposals are drawn under the matrix.
const SHOWN_PROPOSALS: usize = 5;

#[derive(Debug, Error)]
#[error("cannot draw {path}: {message}")]
/// A picture that cannot be drawn or written.
pub struct InspectError {
    path: PathBuf,
    message: String,
}

fn ensure_font() -> Result<(), String> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font is invalid".to_string());
    });
    result
}

/// Draws the SSM with the atomic events and the best proposals beside it, into `png`.
pub fn draw(video: &Video, analysis: &Analysis, png: &Path) -> Result<(), InspectError> {
    let fail = |message: String| InspectError {
        path: png.to_path_buf(),
        message,
    };
    ensure_font().map_err(fail)?;
    let shown = analysis.proposals.len().min(SHOWN_PROPOSALS) as u32;
    let height = MARGIN + MATRIX_PX + 30 + ROW_PX * (2 + shown) + 20;
    let width = MARGIN + MATRIX_PX + LABEL_PX;
    let root = BitMapBackend::new(png, (width, height)).into_drawing_area();
    paint(&root, video, analysis).map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}

fn paint(
    root: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    video: &Video,
    analysis: &Analysis,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>> {
    root.fill(&WHITE)?;
    let ssm = &analysis.ssm;
    let n = ssm.n.max(1);
    let cell = MATRIX_PX as f64 / n as f64;
    let px = |step: usize| MARGIN as i32 + (step as f64 * cell).round() as i32;
    let (lo, hi) = ssm
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let span = (hi - lo).max(1e-6);
    let text = |size: u32| ("sans-serif", size).into_font().color(&BLACK);
    root.draw_text(
        &format!(
            "{}: {:.1} s, {} steps, {} atomic events, {} proposals (cosine similarity {:.2}..{:.2})",
            video.id,
            video.duration,
            n,
            analysis.events.spans.len(),
            analysis.proposals.len(),
            lo,
            hi
        ),
        &text(15),
        (MARGIN as i32, 15),
    )?;
    for i in 0..ssm.n {
        for j in 0..ssm.n {
            let value = (ssm.at(i, j) - lo) / span;
            root.draw(&Rectangle::new(
                [(px(j), px(i)), (px(j + 1), px(i + 1))],
                ViridisRGB::get_color(value).filled(),
            ))?;
        }
    }
    // Each atomic event is a block on the diagonal: similar inside, its edges the boundaries.
    for &(s, e) in &analysis.events.spans {
        root.draw(&Rectangle::new(
            [(px(s), px(s)), (px(e), px(e))],
            ShapeStyle::from(&WHITE).stroke_width(2),
        ))?;
    }
    let seconds = |step: usize| step as f64 / n as f64 * video.duration;
    let mut y = (MARGIN + MATRIX_PX + 15) as i32;
    let label_x = (MARGIN + MATRIX_PX + 10) as i32;
    root.draw_text("atomic events", &text(13), (label_x, y + 3))?;
    y += ROW_PX as i32;
    for (k, &(s, e)) in analysis.events.spans.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        root.draw(&Rectangle::new(
            [(px(s), y - 18), (px(e), y - 4)],
            color.filled(),
        ))?;
    }
    for (rank, p) in analysis.proposals.iter().take(SHOWN_PROPOSALS).enumerate() {
        root.draw(&Rectangle::new(
            [(px(p.start), y + 2), (px(p.end), y + 16)],
            RGBColor(220, 60, 40).filled(),
        ))?;
        root.draw_text(
            &format!(
                "#{} {:.1}-{:.1} s  score {:.3}",
                rank + 1,
                seconds(p.start),
                seconds(p.end),
                p.score
            ),
            &text(12),
            (label_x, y + 3),
        )?;
        y += ROW_PX as i32;
    }
    Ok(())
}
