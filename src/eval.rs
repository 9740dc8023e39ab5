//! Metrics of the field: R@n at temporal IoU m and mIoU, for ranked proposals (and later for
//! grounding predictions), with the two baselines every proposal method must beat.

use crate::batch::collect_videos;
use crate::caption::vocab::Vocabulary;
use crate::caption::CaptionError;
use crate::config::Config;
use crate::dataset::{
    moment_detr, read_annotations, read_moments, AnnotationFormat, DatasetError, Moment,
};
use crate::ground::{
    proposal_spans, Answer, Edges, Grounder, SimilarityGrounder, SIMILARITY_WINDOWS,
};
use crate::ingest::{read_video, Durations, VideoRef};
use crate::processor::VideoProposals;
use crate::rng::{hash_str, Rng};
use crate::span::{iou, sliding_windows, IOU_THRESHOLDS};
use crate::train::TrainError;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
/// Why an evaluation cannot run.
pub enum EvalError {
    #[error(transparent)]
    /// The annotations cannot be read.
    Annotations(#[from] DatasetError),
    #[error(transparent)]
    /// The model or the features cannot be used.
    Train(#[from] TrainError),
    #[error(transparent)]
    /// The text tower of the baseline cannot be loaded.
    Caption(#[from] CaptionError),
    #[error("cannot write {path}: {source}")]
    /// The per-query file cannot be written.
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    /// Earlier results that cannot be read.
    Proposals {
        /// The proposals file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Recall of one method over a set of queries.
#[derive(Debug, Clone)]
pub struct RecallTable {
    /// The method's name, as the table prints it.
    pub method: String,
    /// Queries judged.
    pub queries: usize,
    /// Queries whose video had no predictions at all (counted as misses).
    pub unmatched: usize,
    /// R@1 at IoU 0.3, 0.5, 0.7, in percent.
    pub r1: [f64; 3],
    /// R@5 at the same IoUs.
    pub r5: [f64; 3],
    /// Recall with every prediction at the same IoUs.
    pub r_all: [f64; 3],
    /// Mean IoU of the first prediction, in percent.
    pub mean_iou_top1: f64,
    /// Predictions per video, on average.
    pub per_video: f64,
}

/// Scores ranked predictions (best first, seconds), the same for every query of a video,
/// against every query.
pub fn recall(
    method: &str,
    moments: &[Moment],
    predictions: &HashMap<String, Vec<[f64; 2]>>,
) -> RecallTable {
    let ranked: Vec<Option<&[[f64; 2]]>> = moments
        .iter()
        .map(|m| predictions.get(&m.vid).map(Vec::as_slice))
        .collect();
    let videos = predictions.len().max(1) as f64;
    let per_video = predictions.values().map(Vec::len).sum::<usize>() as f64 / videos;
    recall_per_query(method, moments, &ranked, per_video)
}

/// Scores one ranked list per query (best first, seconds; `None` when its video had none).
pub fn recall_per_query(
    method: &str,
    moments: &[Moment],
    ranked: &[Option<&[[f64; 2]]>],
    per_video: f64,
) -> RecallTable {
    let mut hits = [[0usize; 3]; 3];
    let (mut unmatched, mut iou_sum) = (0, 0.0);
    for (moment, ranked) in moments.iter().zip(ranked) {
        let Some(ranked) = ranked.filter(|r| !r.is_empty()) else {
            unmatched += 1;
            continue;
        };
        let ious: Vec<f64> = ranked.iter().map(|p| best_iou(*p, moment)).collect();
        iou_sum += ious[0];
        for (depth, counts) in [1, 5, usize::MAX].into_iter().zip(hits.iter_mut()) {
            let top = ious.iter().take(depth).fold(0.0, |a: f64, &b| a.max(b));
            for (threshold, count) in IOU_THRESHOLDS.iter().zip(counts.iter_mut()) {
                *count += usize::from(top >= *threshold);
            }
        }
    }
    let total = moments.len().max(1) as f64;
    let rate = |counts: [usize; 3]| counts.map(|c| c as f64 / total);
    RecallTable {
        method: method.to_string(),
        queries: moments.len(),
        unmatched,
        r1: rate(hits[0]),
        r5: rate(hits[1]),
        r_all: rate(hits[2]),
        mean_iou_top1: iou_sum / total,
        per_video,
    }
}

/// A prediction's IoU with the closest of a query's ground-truth windows.
pub fn best_iou(prediction: [f64; 2], moment: &Moment) -> f64 {
    moment
        .windows
        .iter()
        .map(|w| iou(prediction, *w))
        .fold(0.0, f64::max)
}

/// `count` spans with uniformly random ends, at least 5% of the video long.
pub fn random_spans(duration: f64, count: usize, rng: &mut Rng) -> Vec<[f64; 2]> {
    (0..count)
        .map(|_| {
            let len = rng.range_f64(0.05, 1.0);
            let start = rng.range_f64(0.0, 1.0 - len);
            [start * duration, (start + len) * duration]
        })
        .collect()
}

/// Reads `dir/<vid>.json` result files (`dir` may be the run's output folder or its
/// `proposals/` folder).
pub fn load_proposals(dir: &Path) -> Result<HashMap<String, VideoProposals>, EvalError> {
    let nested = dir.join("proposals");
    let dir = if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    };
    let fail = |path: &Path, message: String| EvalError::Proposals {
        path: path.to_path_buf(),
        message,
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| fail(&dir, e.to_string()))?;
    let mut out = HashMap::new();
    for entry in entries {
        let path = entry.map_err(|e| fail(&dir, e.to_string()))?.path();
        let is_result = path.extension().is_some_and(|e| e == "json")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !is_result {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| fail(&path, e.to_string()))?;
        let parsed: VideoProposals =
            serde_json::from_str(&text).map_err(|e| fail(&path, e.to_string()))?;
        out.insert(parsed.vid.clone(), parsed);
    }
    Ok(out)
}

/// Our proposals against sliding windows and random spans of the same count per video.
pub fn proposal_report(
    gt: &Path,
    format: Option<AnnotationFormat>,
    proposals_dir: &Path,
) -> Result<Vec<RecallTable>, EvalError> {
    let moments = read_annotations(gt, format)?;
    let ours = load_proposals(proposals_dir)?;
    let spans = |f: &dyn Fn(&VideoProposals) -> Vec<[f64; 2]>| -> HashMap<String, Vec<[f64; 2]>> {
        ours.iter().map(|(vid, v)| (vid.clone(), f(v))).collect()
    };
    let ranked = spans(&|v| v.proposals.iter().map(|p| [p.start, p.end]).collect());
    let sliding = spans(&|v| sliding_windows(v.duration, v.proposals.len()));
    let random = spans(&|v| {
        random_spans(
            v.duration,
            v.proposals.len(),
            &mut Rng::new(hash_str(&v.vid)),
        )
    });
    Ok(vec![
        recall("proposals", &moments, &ranked),
        recall("sliding windows", &moments, &sliding),
        recall("random spans", &moments, &random),
    ])
}

/// How well pseudo-queries name what happens, judged on the proposals that one planted event
/// covers for at least half their length: is that event's verb among the query's first one or
/// three verbs, and its noun among the first one or three nouns.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionAccuracy {
    /// Proposals with a pseudo-query.
    pub proposals: usize,
    /// Every judged proposal.
    pub captioner: WordHits,
    /// The judged proposals that are training pairs (not superseded by `caption.pairs`).
    pub pairs: WordHits,
    /// What a verb drawn uniformly from the same vocabulary would score on every judged
    /// proposal: top-1 and top-3 shares.
    pub random_verb: [f64; 2],
    /// The same for nouns.
    pub random_noun: [f64; 2],
}

/// Right words among judged proposals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordHits {
    /// Proposals one annotated moment covers for at least half their length.
    pub judged: usize,
    /// Top-1 and top-3 shares of the verb.
    pub verb: [f64; 2],
    /// Top-1 and top-3 shares of the noun.
    pub noun: [f64; 2],
    /// Both right at top-1.
    pub both: f64,
}

impl WordHits {
    fn add(&mut self, verb: [bool; 2], noun: [bool; 2]) {
        self.judged += 1;
        for i in 0..2 {
            self.verb[i] += f64::from(u8::from(verb[i]));
            self.noun[i] += f64::from(u8::from(noun[i]));
        }
        self.both += f64::from(u8::from(verb[0] && noun[0]));
    }

    /// Counts into shares.
    fn shares(mut self) -> WordHits {
        let n = self.judged.max(1) as f64;
        self.verb = self.verb.map(|c| c / n);
        self.noun = self.noun.map(|c| c / n);
        self.both /= n;
        self
    }
}

/// What one annotated moment accepts as a right word: the planted verb and noun of the
/// synthetic world's gt.jsonl, or any word of a real sentence.
struct Truth {
    window: [f64; 2],
    verbs: HashSet<String>,
    nouns: HashSet<String>,
}

impl Truth {
    fn of(line: &moment_detr::Line) -> Option<Truth> {
        let window = *line.relevant_windows.first()?;
        let word = |key: &str| line.extra.get(key).and_then(|v| v.as_str());
        if let (Some(verb), Some(noun)) = (word("verb"), word("noun")) {
            return Some(Truth {
                window,
                verbs: HashSet::from([verb.to_string()]),
                nouns: HashSet::from([noun.to_string()]),
            });
        }
        let words: HashSet<String> = line
            .query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        Some(Truth {
            window,
            verbs: words.clone(),
            nouns: words,
        })
    }
}

/// Chance that a word drawn uniformly from `vocabulary` is in `truth`, and that one of three
/// distinct drawn words is.
fn chance(vocabulary: &[String], truth: &HashSet<String>) -> [f64; 2] {
    let size = vocabulary.len() as f64;
    let right = vocabulary.iter().filter(|w| truth.contains(*w)).count() as f64;
    let all_wrong = (0..3)
        .map(|i| ((size - right - i as f64) / (size - i as f64)).max(0.0))
        .product::<f64>();
    [right / size.max(1.0), (1.0 - all_wrong).clamp(0.0, 1.0)]
}

/// Caption accuracy: for each captioned proposal that one annotated moment covers for at least
/// half its length, whether its first (and any of its first three) verbs and nouns are right.
/// Right means the planted word where the ground truth names one (the synthetic world's
/// gt.jsonl carries `verb` and `noun`), else a word of the moment's sentence. Beside it, what
/// words drawn uniformly from the same vocabulary would score on the same proposals. `None`
/// for ground truth that is not Moment-DETR lines or results without captions. The first
/// `verbs` tokens of a query are its verbs, then come its nouns.
pub fn caption_report(
    gt: &Path,
    proposals_dir: &Path,
    verbs: usize,
    vocabulary: &Vocabulary,
) -> Result<Option<CaptionAccuracy>, EvalError> {
    let text = std::fs::read_to_string(gt)
        .map_err(|e| DatasetError::new(gt, None, format!("cannot read: {e}")))?;
    let Ok(lines) = moment_detr::read(gt, &text) else {
        return Ok(None);
    };
    let mut moments: HashMap<&str, Vec<Truth>> = HashMap::new();
    for line in &lines {
        if let Some(truth) = Truth::of(line) {
            moments.entry(&line.vid).or_default().push(truth);
        }
    }
    let ours = load_proposals(proposals_dir)?;
    let mut proposals = 0;
    let (mut captioner, mut pairs) = (WordHits::default(), WordHits::default());
    let (mut random_verb, mut random_noun) = ([0.0; 2], [0.0; 2]);
    for video in ours.values() {
        for p in &video.proposals {
            if p.caption.tokens.is_empty() {
                continue;
            }
            proposals += 1;
            let covering = moments.get(video.vid.as_str()).and_then(|list| {
                list.iter()
                    .map(|t| {
                        (
                            (p.end.min(t.window[1]) - p.start.max(t.window[0])).max(0.0),
                            t,
                        )
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0))
            });
            let Some((overlap, truth)) = covering else {
                continue;
            };
            if overlap < 0.5 * (p.end - p.start) {
                continue;
            }
            let split = verbs.min(p.caption.tokens.len());
            let (said_verbs, said_nouns) = p.caption.tokens.split_at(split);
            let right = |said: &[String], truth: &HashSet<String>| {
                [1, 3].map(|within| said.iter().take(within).any(|w| truth.contains(w)))
            };
            let (verb, noun) = (
                right(said_verbs, &truth.verbs),
                right(said_nouns, &truth.nouns),
            );
            captioner.add(verb, noun);
            if !p.caption.superseded {
                pairs.add(verb, noun);
            }
            for (sums, words, truth) in [
                (&mut random_verb, &vocabulary.verbs, &truth.verbs),
                (&mut random_noun, &vocabulary.nouns, &truth.nouns),
            ] {
                let odds = chance(words, truth);
                sums[0] += odds[0];
                sums[1] += odds[1];
            }
        }
    }
    if proposals == 0 {
        return Ok(None);
    }
    let mean = |sums: [f64; 2]| sums.map(|s| s / captioner.judged.max(1) as f64);
    Ok(Some(CaptionAccuracy {
        proposals,
        random_verb: mean(random_verb),
        random_noun: mean(random_noun),
        captioner: captioner.shares(),
        pairs: pairs.shares(),
    }))
}

impl std::fmt::Display for CaptionAccuracy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |x: f64| 100.0 * x;
        writeln!(
            f,
            "pseudo-queries: {} of {} captioned proposals lie mostly inside one annotated moment, {} of them training pairs",
            self.captioner.judged, self.proposals, self.pairs.judged
        )?;
        writeln!(
            f,
            "{:<20} {:>12} {:>12} {:>12} {:>12} {:>12}",
            "", "verb top-1", "verb top-3", "noun top-1", "noun top-3", "both top-1"
        )?;
        let mut row = |name: &str, shares: [f64; 5]| {
            write!(f, "{name:<20}")?;
            for share in shares {
                write!(f, " {:>11.1}%", pct(share))?;
            }
            writeln!(f)
        };
        for (name, hits) in [
            ("captioner", &self.captioner),
            ("training pairs", &self.pairs),
        ] {
            row(
                name,
                [
                    hits.verb[0],
                    hits.verb[1],
                    hits.noun[0],
                    hits.noun[1],
                    hits.both,
                ],
            )?;
        }
        let (verb, noun) = (self.random_verb, self.random_noun);
        row(
            "random vocabulary",
            [verb[0], verb[1], noun[0], noun[1], verb[0] * noun[0]],
        )
    }
}

/// One query's answer, for `eval --per-query`.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// The video.
    pub vid: String,
    /// The sentence.
    pub query: String,
    /// Its true windows, seconds.
    pub windows: Vec<[f64; 2]>,
    /// Best first, seconds.
    pub predictions: Vec<[f64; 2]>,
    /// IoU of the first prediction with the best window.
    pub iou_top1: f64,
}

/// A grounder on annotated sentences: R@1/R@5 at IoU 0.3/0.5/0.7 and mIoU of a trained model
/// (`model`) or, without one, of the training-free [`SimilarityGrounder`] over the video's
/// proposals. With `baselines`, also the text tower's similarity over the proposals with their
/// edges as found and over sliding windows, and the proposals in random order. Queries whose
/// video has no features count as misses.
pub fn grounding_report(
    model: Option<&Grounder>,
    annotations: &Path,
    format: Option<AnnotationFormat>,
    features: &[PathBuf],
    config: &Config,
    baselines: bool,
) -> Result<(Vec<RecallTable>, Vec<QueryResult>), EvalError> {
    let moments = read_moments(annotations, format)?;
    let (refs, _) = collect_videos(features);
    let by_id: HashMap<String, &VideoRef> = refs.iter().map(|r| (r.id(), r)).collect();
    let mut by_vid: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, m) in moments.iter().enumerate() {
        by_vid.entry(m.vid.as_str()).or_default().push(i);
    }
    // The tower the model's pseudo-queries came from, unless the configuration names it.
    let tower_config = model.map_or(config, Grounder::config);
    let similarity = match model.is_none() || baselines {
        true => Some(SimilarityGrounder::load(tower_config)?),
        false => None,
    };
    let mut methods = vec![match model {
        Some(model) if model.weighs_similarity() => "model + text similarity",
        Some(_) => "model",
        None => "similarity",
    }];
    if baselines {
        methods.extend([
            "text similarity",
            "text similarity, windows",
            "random proposal",
        ]);
    }
    let durations = Durations::load(&config.ingest.durations_file).map_err(TrainError::from)?;
    let top_k = config.train.top_k.max(5);
    type Ranked = Vec<(usize, Vec<Vec<[f64; 2]>>)>;
    let answered: Vec<Ranked> = by_vid
        .par_iter()
        .filter_map(|(vid, indices)| Some((by_id.get(*vid)?, indices)))
        .map(|(video_ref, indices)| -> Result<Ranked, EvalError> {
            let video = read_video(video_ref, &config.ingest, &durations).map_err(|e| {
                TrainError::Features {
                    vid: video_ref.id(),
                    path: video_ref.path.clone(),
                    message: e.problem.to_string(),
                }
            })?;
            let queries: Vec<&str> = indices.iter().map(|&i| moments[i].query.as_str()).collect();
            let proposals = proposal_spans(&video, config);
            let spans = |answers: Vec<Answer>| -> Vec<Vec<[f64; 2]>> {
                answers
                    .into_iter()
                    .map(|a| a.segments.iter().map(|s| [s.start, s.end]).collect())
                    .collect()
            };
            let texts = match &similarity {
                Some(similarity) => similarity.embed(&queries)?,
                None => Vec::new(),
            };
            let mut lists: Vec<Vec<Vec<[f64; 2]>>> = Vec::new();
            match (model, &similarity) {
                (Some(model), _) => {
                    lists.push(spans(model.ground(&video, &queries, &proposals, top_k)?))
                }
                // The grounder's candidates are the video's proposals, found above.
                (None, Some(similarity)) => lists.push(spans(similarity.ground(
                    &video,
                    &queries,
                    &texts,
                    &proposals,
                    top_k,
                    Edges::ByTower,
                )?)),
                (None, None) => unreachable!("loaded when there is no model"),
            }
            if let (true, Some(similarity)) = (baselines, &similarity) {
                lists.push(spans(similarity.ground(
                    &video,
                    &queries,
                    &texts,
                    &proposals,
                    top_k,
                    Edges::AsFound,
                )?));
                let windows = sliding_windows(1.0, SIMILARITY_WINDOWS);
                lists.push(spans(similarity.ground(
                    &video,
                    &queries,
                    &texts,
                    &windows,
                    top_k,
                    Edges::AsFound,
                )?));
                let seconds = |s: &[f64; 2]| [s[0] * video.duration, s[1] * video.duration];
                lists.push(
                    indices
                        .iter()
                        .map(|&i| {
                            let mut random: Vec<[f64; 2]> = proposals.iter().map(seconds).collect();
                            Rng::new(hash_str(&moments[i].vid) ^ i as u64).shuffle(&mut random);
                            random
                        })
                        .collect(),
                );
            }
            Ok(indices
                .iter()
                .enumerate()
                .map(|(q, &i)| (i, lists.iter().map(|l| l[q].clone()).collect()))
                .collect())
        })
        .collect::<Result<_, EvalError>>()?;
    let mut ranked: Vec<Option<Vec<Vec<[f64; 2]>>>> = vec![None; moments.len()];
    for (i, lists) in answered.into_iter().flatten() {
        ranked[i] = Some(lists);
    }
    let tables = methods
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let lists: Vec<Option<&[[f64; 2]]>> = ranked
                .iter()
                .map(|r| r.as_ref().map(|lists| lists[index].as_slice()))
                .collect();
            let answered = lists.iter().flatten().collect::<Vec<_>>();
            let per_video = answered.iter().map(|l| l.len()).sum::<usize>() as f64
                / answered.len().max(1) as f64;
            recall_per_query(name, &moments, &lists, per_video)
        })
        .collect();
    let per_query = moments
        .iter()
        .zip(&ranked)
        .map(|(m, r)| {
            let predictions = r.as_ref().map(|lists| lists[0].clone()).unwrap_or_default();
            QueryResult {
                vid: m.vid.clone(),
                query: m.query.clone(),
                windows: m.windows.clone(),
                iou_top1: predictions.first().map_or(0.0, |p| best_iou(*p, m)),
                predictions,
            }
        })
        .collect();
    Ok((tables, per_query))
}

/// A plain-text table, one row per method.
pub fn format_table(tables: &[RecallTable]) -> String {
    let mut out = format!(
        "{:<24} {:>7} {:>6}  {:^20}  {:^20}  {:^20}  {:>6}\n{:<24} {:>7} {:>6}  {:^20}  {:^20}  {:^20}  {:>6}\n",
        "method", "queries", "per-v", "R@1 IoU .3/.5/.7", "R@5 IoU .3/.5/.7", "R@all IoU .3/.5/.7", "mIoU@1",
        "", "", "video", "", "", "", ""
    );
    let triple = |r: [f64; 3]| {
        format!(
            "{:5.1} {:5.1} {:5.1}",
            100.0 * r[0],
            100.0 * r[1],
            100.0 * r[2]
        )
    };
    for t in tables {
        out.push_str(&format!(
            "{:<24} {:>7} {:>6.1}  {:^20}  {:^20}  {:^20}  {:>6.1}\n",
            t.method,
            t.queries,
            t.per_video,
            triple(t.r1),
            triple(t.r5),
            triple(t.r_all),
            100.0 * t.mean_iou_top1
        ));
    }
    if let Some(t) = tables.iter().find(|t| t.unmatched > 0) {
        out.push_str(&format!(
            "note: {} of {} queries name videos without proposals; they count as misses\n",
            t.unmatched, t.queries
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_sentence_accepts_any_of_its_words_and_chance_is_counted_on_it() {
        let line = |extra: serde_json::Value| moment_detr::Line {
            qid: None,
            query: "A person opens the door.".into(),
            vid: "v".into(),
            duration: 30.0,
            relevant_windows: vec![[1.0, 5.0]],
            token_margins: Vec::new(),
            extra: extra.as_object().cloned().unwrap_or_default(),
        };
        let sentence = Truth::of(&line(serde_json::json!({}))).unwrap();
        assert!(sentence.verbs.contains("opens") && sentence.nouns.contains("door"));
        let planted = Truth::of(&line(serde_json::json!({"verb": "open", "noun": "door"})));
        let planted = planted.unwrap();
        assert_eq!(planted.verbs, HashSet::from(["open".to_string()]));
        let words: Vec<String> = ["door", "box", "cup", "bed"].map(String::from).to_vec();
        // One right word of four: 1/4 at top-1; 1 - (3/4)(2/3)(1/2) = 3/4 at top-3.
        let odds = chance(&words, &sentence.nouns);
        assert!(
            (odds[0] - 0.25).abs() < 1e-9 && (odds[1] - 0.75).abs() < 1e-9,
            "{odds:?}"
        );
        assert_eq!(chance(&words[1..], &sentence.nouns), [0.0, 0.0]);
    }

    #[test]
    fn recall_counts_top1_top5_and_all() {
        let moments = vec![Moment {
            vid: "v".into(),
            query: "q".into(),
            duration: Some(100.0),
            windows: vec![[10.0, 20.0]],
            confidence: None,
        }];
        let mut preds = HashMap::new();
        let mut ranked = vec![[50.0, 60.0]; 6];
        ranked[4] = [10.0, 21.0]; // IoU 0.91, at rank 5
        ranked[5] = [10.0, 20.0];
        preds.insert("v".to_string(), ranked);
        let t = recall("x", &moments, &preds);
        assert_eq!(t.r1, [0.0; 3]);
        assert_eq!(t.r5, [1.0; 3]);
        assert_eq!(t.r_all, [1.0; 3]);
        preds.clear();
        assert_eq!(recall("x", &moments, &preds).unmatched, 1);
    }

    #[test]
    fn baselines_produce_the_requested_count_inside_the_video() {
        for count in [1, 4, 12, 40] {
            let windows = sliding_windows(30.0, count);
            assert_eq!(windows.len(), count);
            assert!(windows
                .iter()
                .all(|w| w[0] >= 0.0 && w[1] <= 30.0 && w[0] < w[1]));
            let random = random_spans(30.0, count, &mut Rng::new(1));
            assert_eq!(random.len(), count);
            assert!(random
                .iter()
                .all(|w| w[0] >= 0.0 && w[1] <= 30.0 + 1e-9 && w[0] < w[1]));
        }
    }
}
