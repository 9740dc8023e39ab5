//! `momentminer report`: what a run mined, as static HTML a person can look at. An index with
//! the run's figures (counts, throughput, the proposal recall table and caption accuracy when
//! ground truth is given) and one sortable, searchable row per video; a page per video with its
//! self-similarity picture, atomic events, proposals with their pseudo-queries and scores on a
//! time axis, and the true moments beside them. No server and no external assets: the folder
//! opens from disk in any browser.

use crate::batch::{collect_videos, RUN_SUMMARY};
use crate::caption::configured_vocabulary;
use crate::config::Config;
use crate::daemon::status;
use crate::dataset::{read_annotations, AnnotationFormat, DatasetError, Moment};
use crate::eval::{caption_report, load_proposals, proposal_report, EvalError, RecallTable};
use crate::fsio::{write_atomic, Durability};
use crate::ingest::{read_video, Durations};
use crate::inspect;
use crate::processor::{analyse, StageTimes, VideoProposals};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a report cannot be made.
#[derive(Debug, Error)]
pub enum ReportError {
    /// The run's results or the ground truth cannot be read.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The ground truth cannot be read.
    #[error(transparent)]
    Annotations(#[from] DatasetError),
    /// A page cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a report holds.
#[derive(Debug)]
pub struct Summary {
    /// Video pages written.
    pub videos: usize,
    /// Pages with a self-similarity picture (its features could be read again).
    pub pictures: usize,
    /// The index page.
    pub index: PathBuf,
}

/// The ground truth to set beside a run: an annotation file and its format (or the one it
/// looks like).
pub struct Truth<'a> {
    /// The annotation file.
    pub path: &'a Path,
    /// Its format, when named.
    pub format: Option<AnnotationFormat>,
}

/// Proposal rows drawn on a video page's time axis.
const DRAWN_PROPOSALS: usize = 12;
/// Width of the time axis, pixels.
const AXIS_PX: f64 = 860.0;

/// Writes the report of `run` (the output folder of `propose`, or of a daemon) into `out`.
pub fn write(
    run: &Path,
    out: &Path,
    config: &Config,
    truth: Option<Truth>,
) -> Result<Summary, ReportError> {
    let mut videos: Vec<VideoProposals> = load_proposals(run)?.into_values().collect();
    videos.sort_by(|a, b| a.vid.cmp(&b.vid));
    let mut figures = throughput(run, config);
    let mut moments: HashMap<String, Vec<Moment>> = HashMap::new();
    if let Some(truth) = &truth {
        let tables = proposal_report(truth.path, truth.format, run)?;
        figures.push_str(&format!(
            "<h2>Proposals against {}</h2>\n{}",
            escape(&truth.path.display().to_string()),
            recall_table(&tables)
        ));
        if !config.caption.vocabulary.as_os_str().is_empty() {
            if let Ok(vocabulary) = configured_vocabulary(config) {
                if let Some(accuracy) =
                    caption_report(truth.path, run, config.caption.verbs, &vocabulary)?
                {
                    figures.push_str(&format!(
                        "<h2>Pseudo-queries</h2>\n<pre>{}</pre>\n",
                        escape(&accuracy.to_string())
                    ));
                }
            }
        }
        for moment in read_annotations(truth.path, truth.format)? {
            moments.entry(moment.vid.clone()).or_default().push(moment);
        }
    }
    let pages = out.join("videos");
    std::fs::create_dir_all(&pages).map_err(|source| ReportError::Write {
        path: pages.clone(),
        source,
    })?;
    let durations = Durations::load(&config.ingest.durations_file).ok();
    let pictures: Vec<bool> = videos
        .par_iter()
        .enumerate()
        .map(|(i, video)| -> Result<bool, ReportError> {
            let picture = pages.join(format!("{i:05}.png"));
            let drawn = durations
                .as_ref()
                .is_some_and(|d| draw_picture(video, config, d, &picture).is_ok());
            let truth = moments
                .get(&video.vid)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let page = video_page(video, truth, drawn.then(|| format!("{i:05}.png")));
            write_page(&pages.join(format!("{i:05}.html")), &page)?;
            Ok(drawn)
        })
        .collect::<Result<_, _>>()?;
    let index = out.join("index.html");
    write_page(&index, &index_page(run, &videos, &figures, &moments))?;
    Ok(Summary {
        videos: videos.len(),
        pictures: pictures.iter().filter(|&&p| p).count(),
        index,
    })
}

/// How fast the run went: the batch run's summary (`run.json`), or, for the daemon's output
/// folder, what its ledger says; nothing where neither is there.
fn throughput(run: &Path, config: &Config) -> String {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let summary = std::fs::read(run.join(RUN_SUMMARY))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    if let Some(summary) = summary {
        let number = |key: &str| summary.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        return format!(
            "<p class=\"figures\"><span>{:.0} videos/s</span><span>{:.2} s wall clock</span>\
             <span>{:.0} threads</span><span>{:.0} failed</span></p>\n",
            number("videos_per_second"),
            number("seconds"),
            number("threads"),
            number("failed")
        );
    }
    if !same(run, &config.daemon.output) {
        return String::new();
    }
    match status::read(&config.daemon.state, &config.daemon.output.join("models")) {
        Ok(status) => {
            let latency = match (status.latency_p50_ms, status.latency_p99_ms) {
                (Some(p50), Some(p99)) => {
                    format!("<span>latency p50 {p50:.0} ms, p99 {p99:.0} ms</span>")
                }
                _ => String::new(),
            };
            format!(
                "<p class=\"figures\"><span>daemon: {:.1} inputs/s over ten minutes</span>{latency}</p>\n",
                status.per_second_10m
            )
        }
        Err(_) => String::new(),
    }
}

/// The video's self-similarity picture, drawn from its features again (where its source file
/// still is).
fn draw_picture(
    video: &VideoProposals,
    config: &Config,
    durations: &Durations,
    png: &Path,
) -> Result<(), String> {
    let (refs, _) = collect_videos(&[PathBuf::from(&video.source)]);
    let found = refs
        .iter()
        .find(|r| r.id() == video.vid)
        .ok_or("not in its source file")?;
    let loaded = read_video(found, &config.ingest, durations).map_err(|e| e.to_string())?;
    let analysis = analyse(&loaded, config, &mut StageTimes::default());
    inspect::draw(&loaded, &analysis, png).map_err(|e| e.to_string())
}

fn write_page(path: &Path, html: &str) -> Result<(), ReportError> {
    write_atomic(path, html.as_bytes(), Durability::None).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:1em 0}th,td{border-bottom:1px solid #ddd;padding:4px 8px;\
text-align:left;font-size:14px}th{background:#f4f4f4;cursor:pointer;user-select:none}\
td.n,th.n{text-align:right}input{padding:6px;width:320px;font-size:14px}\
.figures span{display:inline-block;margin-right:2em;font-size:18px}svg text{font-size:11px}\
.muted{color:#777}img{max-width:100%;border:1px solid #ddd}";

fn page(title: &str, body: &str, script: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n{script}</body>\n</html>\n",
        escape(title)
    )
}

fn recall_table(tables: &[RecallTable]) -> String {
    let mut html = String::from(
        "<table>\n<tr><th>method</th><th class=\"n\">queries</th><th class=\"n\">per video</th>\
         <th class=\"n\">R@1 .3/.5/.7</th><th class=\"n\">R@5 .3/.5/.7</th>\
         <th class=\"n\">R@all .3/.5/.7</th><th class=\"n\">mIoU@1</th></tr>\n",
    );
    let triple = |r: [f64; 3]| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            100.0 * r[0],
            100.0 * r[1],
            100.0 * r[2]
        )
    };
    for t in tables {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td></tr>",
            escape(&t.method),
            t.queries,
            t.per_video,
            triple(t.r1),
            triple(t.r5),
            triple(t.r_all),
            100.0 * t.mean_iou_top1
        );
    }
    html.push_str("</table>\n");
    html
}

/// The best pseudo-queries of a video: those of its training pairs, best first.
fn best_queries(video: &VideoProposals, count: usize) -> Vec<&str> {
    let mut seen = Vec::new();
    for proposal in video.proposals.iter().filter(|p| p.is_pair()) {
        let query = proposal.caption.query.as_str();
        if !query.is_empty() && !seen.contains(&query) {
            seen.push(query);
        }
        if seen.len() == count {
            break;
        }
    }
    seen
}

/// Sorts a table by the clicked column (numbers as numbers) and filters its rows by the search
/// box: all the script the report has.
const INDEX_SCRIPT: &str = "<script>\n\
const table=document.getElementById('videos');\n\
document.getElementById('search').addEventListener('input',e=>{const q=e.target.value.toLowerCase();\
for(const row of table.tBodies[0].rows){row.style.display=row.textContent.toLowerCase().includes(q)?'':'none';}});\n\
table.tHead.querySelectorAll('th').forEach((th,col)=>th.addEventListener('click',()=>{\
const rows=[...table.tBodies[0].rows];const up=th.dataset.up!=='1';th.dataset.up=up?'1':'0';\
const key=r=>{const t=r.cells[col].textContent;const n=parseFloat(t);return isNaN(n)?t:n;};\
rows.sort((a,b)=>{const x=key(a),y=key(b);return (x<y?-1:x>y?1:0)*(up?1:-1);});\
rows.forEach(r=>table.tBodies[0].appendChild(r));}));\n\
</script>\n";

fn index_page(
    run: &Path,
    videos: &[VideoProposals],
    figures: &str,
    moments: &HashMap<String, Vec<Moment>>,
) -> String {
    let proposals: usize = videos.iter().map(|v| v.proposals.len()).sum();
    let pairs: usize = videos
        .iter()
        .map(|v| v.proposals.iter().filter(|p| p.is_pair()).count())
        .sum();
    let captioned: usize = videos
        .iter()
        .map(|v| {
            v.proposals
                .iter()
                .filter(|p| !p.caption.query.is_empty())
                .count()
        })
        .sum();
    let events: usize = videos.iter().map(|v| v.atomic_events.len()).sum();
    let hours: f64 = videos.iter().map(|v| v.duration).sum::<f64>() / 3600.0;
    let mut body = format!(
        "<h1>momentminer run: {}</h1>\n<p class=\"figures\"><span>{} videos</span><span>{hours:.2} h</span>\
         <span>{events} atomic events</span><span>{proposals} proposals</span>\
         <span>{captioned} captioned</span><span>{pairs} training pairs</span></p>\n{figures}",
        escape(&run.display().to_string()),
        videos.len()
    );
    body.push_str(
        "<h2>Videos</h2>\n<input id=\"search\" type=\"search\" placeholder=\"search videos and queries\">\n\
         <table id=\"videos\">\n<thead><tr><th>video</th><th class=\"n\">duration s</th>\
         <th class=\"n\">events</th><th class=\"n\">proposals</th><th class=\"n\">true moments</th>\
         <th>best pseudo-queries</th></tr></thead>\n<tbody>\n",
    );
    for (i, video) in videos.iter().enumerate() {
        let _ = writeln!(
            body,
            "<tr><td><a href=\"videos/{i:05}.html\">{}</a></td><td class=\"n\">{:.1}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&video.vid),
            video.duration,
            video.atomic_events.len(),
            video.proposals.len(),
            moments.get(&video.vid).map_or(0, Vec::len),
            escape(&best_queries(video, 3).join(" · "))
        );
    }
    body.push_str("</tbody>\n</table>\n");
    page("momentminer report", &body, INDEX_SCRIPT)
}

fn video_page(video: &VideoProposals, truth: &[Moment], picture: Option<String>) -> String {
    let mut body = format!(
        "<p><a href=\"../index.html\">all videos</a></p>\n<h1>{}</h1>\n\
         <p>{:.1} s, {} sampled steps, {} atomic events, {} proposals; from {}</p>\n",
        escape(&video.vid),
        video.duration,
        video.steps,
        video.atomic_events.len(),
        video.proposals.len(),
        escape(&video.source)
    );
    body.push_str(&timeline(video, truth));
    match picture {
        Some(file) => {
            let _ = writeln!(
                body,
                "<h2>Self-similarity</h2>\n<img src=\"{file}\" alt=\"self-similarity of {}\">",
                escape(&video.vid)
            );
        }
        None => body.push_str(
            "<p class=\"muted\">No self-similarity picture: the features could not be read \
             again from their source file.</p>\n",
        ),
    }
    body.push_str(
        "<h2>Proposals</h2>\n<table>\n<tr><th class=\"n\">rank</th><th class=\"n\">start s</th>\
         <th class=\"n\">end s</th><th class=\"n\">score</th><th>pseudo-query</th><th>pair</th></tr>\n",
    );
    for (rank, p) in video.proposals.iter().enumerate() {
        let _ = writeln!(
            body,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td>\
             <td class=\"n\">{:.3}</td><td>{}</td><td>{}</td></tr>",
            rank + 1,
            p.start,
            p.end,
            p.score,
            escape(&p.caption.query),
            if p.is_pair() { "yes" } else { "superseded" }
        );
    }
    body.push_str("</table>\n");
    page(&video.vid, &body, "")
}

/// The time axis: the true moments, the atomic events, then the best proposals, one row each,
/// as inline SVG.
fn timeline(video: &VideoProposals, truth: &[Moment]) -> String {
    const ROW: f64 = 20.0;
    const LEFT: f64 = 10.0;
    let x = |t: f64| LEFT + AXIS_PX * (t / video.duration.max(1e-9)).clamp(0.0, 1.0);
    let mut rows = String::new();
    let mut y = 24.0;
    let bar = |rows: &mut String, y: f64, span: [f64; 2], colour: &str, label: &str| {
        let (x0, x1) = (x(span[0]), x(span[1]));
        let _ = writeln!(
            rows,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
             <title>{}</title></rect><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            (x1 - x0).max(1.0),
            ROW - 6.0,
            escape(label),
            x0 + 2.0,
            y + ROW - 9.0,
            escape(label)
        );
    };
    for moment in truth {
        for window in &moment.windows {
            bar(
                &mut rows,
                y,
                *window,
                "#b6e3b6",
                &format!("truth: {}", moment.query),
            );
            y += ROW;
        }
    }
    for (i, event) in video.atomic_events.iter().enumerate() {
        let colour = if i % 2 == 0 { "#c9d7f0" } else { "#9fb7e3" };
        bar(&mut rows, y, *event, colour, "");
    }
    y += ROW;
    for p in video.proposals.iter().take(DRAWN_PROPOSALS) {
        let label = match p.caption.query.as_str() {
            "" => format!("{:.3}", p.score),
            query => format!("{query} ({:.3})", p.score),
        };
        let colour = if p.is_pair() { "#f3c98b" } else { "#e6e6e6" };
        bar(&mut rows, y, [p.start, p.end], colour, &label);
        y += ROW;
    }
    let mut ticks = String::new();
    let step = tick_step(video.duration);
    let mut t = 0.0;
    while t <= video.duration + 1e-9 {
        let _ = write!(
            ticks,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"14\" y2=\"{1:.1}\" stroke=\"#eee\"/>\
             <text x=\"{0:.1}\" y=\"11\">{t:.0} s</text>",
            x(t),
            y
        );
        t += step;
    }
    format!(
        "<h2>Time axis</h2>\n<p class=\"muted\">green: true moments; blue: atomic events; orange: \
         proposals that are training pairs (grey: superseded), best first, with their pseudo-query \
         and score.</p>\n<svg width=\"{:.0}\" height=\"{:.0}\">\n\
         {ticks}\n{rows}</svg>\n",
        // Room on the right for the labels of spans that end near the end.
        AXIS_PX + 2.0 * LEFT + 180.0,
        y + 6.0
    )
}

/// A round tick spacing giving about ten ticks.
fn tick_step(duration: f64) -> f64 {
    let raw = (duration / 10.0).max(1e-3);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_ticks_are_round() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(tick_step(30.0), 5.0);
        assert_eq!(tick_step(150.0), 20.0);
        assert_eq!(tick_step(7000.0), 1000.0);
    }
}
