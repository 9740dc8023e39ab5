//! The host's half of a device batch: pack the videos, have the kernels compute every SSM and
//! every k-means trial, and finish each video's events with the CPU path's own functions.
//! Generic over [`Kernels`], so the same host code drives the CUDA device and, in the tests,
//! a Rust emulation of the kernels' loops.

use super::{ComputeError, Found};
use crate::config::Config;
use crate::config::EventsConfig;
use crate::events::{events_from_trials, AtomicEvents, Clustering, KmeansProblem};
use crate::ingest::Features;
use crate::similarity::Ssm;
use rayon::prelude::*;
use std::time::Instant;

/// What a device (or its emulation) computes for a batch.
pub(crate) trait Kernels {
    /// What stays on the device between the two steps (the SSMs).
    type Session;

    /// The SSMs of `group`'s videos (each at most `steps` steps of width `dim`), each padded
    /// to `[steps][steps]`, on the host, and kept for [`Kernels::kmeans`].
    fn gram(
        &self,
        group: &[&Features],
        steps: usize,
        dim: usize,
    ) -> Result<(Self::Session, Vec<f32>), ComputeError>;

    /// Every (video, trial) problem of `job` over the session's SSMs.
    fn kmeans(&self, session: &Self::Session, job: &KmeansJob) -> Result<KmeansOut, ComputeError>;
}

/// The k-means of a packed batch: problem `p` is trial `p % trials` of video `p / trials`.
pub(crate) struct KmeansJob {
    /// The SSMs' side.
    pub steps: usize,
    /// Trials per video.
    pub trials: usize,
    /// Clusters.
    pub k: usize,
    /// Floats between two centres in `starts` (`steps + 1`).
    pub stride: usize,
    /// Whether the points end with the position column.
    pub with_time: bool,
    /// Lloyd iterations at most.
    pub max_iter: usize,
    /// Per video: its steps `n`; a video with fewer than `k` is skipped (the host clusters it).
    pub sizes: Vec<i32>,
    /// Per video: the convergence bound.
    pub tols: Vec<f32>,
    /// `[videos][steps]`: the position column.
    pub extra: Vec<f32>,
    /// `[problems][k][stride]`: the k-means++ starts.
    pub starts: Vec<f32>,
}

/// Per problem: `[problems][steps]` labels and the inertia.
pub(crate) struct KmeansOut {
    pub labels: Vec<i32>,
    pub inertia: Vec<f32>,
}

/// Each video's SSM and events, in the batch's order. Videos of one feature width share a
/// device pass; a batch of mixed widths makes one pass per width.
pub(crate) fn events_batch<K: Kernels>(
    kernels: &K,
    batch: &[&Features],
    seeds: &[u64],
    config: &Config,
) -> Result<Vec<Found>, ComputeError> {
    let mut results: Vec<Option<Found>> = batch.iter().map(|_| None).collect();
    let mut widths: Vec<usize> = batch.iter().map(|f| f.dim).collect();
    widths.sort_unstable();
    widths.dedup();
    for dim in widths {
        let members: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].dim == dim).collect();
        let group: Vec<&Features> = members.iter().map(|&i| batch[i]).collect();
        let group_seeds: Vec<u64> = members.iter().map(|&i| seeds[i]).collect();
        for (slot, result) in events_of_width(kernels, &group, &group_seeds, config)?
            .into_iter()
            .enumerate()
        {
            results[members[slot]] = Some(result);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

fn events_of_width<K: Kernels>(
    kernels: &K,
    group: &[&Features],
    seeds: &[u64],
    config: &Config,
) -> Result<Vec<Found>, ComputeError> {
    let started = Instant::now();
    let dim = group[0].dim;
    let steps = group.iter().map(|f| f.frames).max().unwrap_or(0);
    let (session, ssms) = kernels.gram(group, steps, dim)?;
    let share = group.len() as u32;
    let gram_done = started.elapsed();
    let similarity_time = gram_done / share;
    let events = &config.events;
    let prepared: Vec<(Ssm, KmeansProblem)> = group
        .par_iter()
        .enumerate()
        .map(|(slot, features)| {
            let n = features.frames;
            let block = &ssms[slot * steps * steps..(slot + 1) * steps * steps];
            let data = block
                .chunks_exact(steps)
                .take(n)
                .flat_map(|row| &row[..n])
                .copied()
                .collect();
            let ssm = Ssm { n, data };
            let problem = KmeansProblem::new(&ssm, events, seeds[slot]);
            (ssm, problem)
        })
        .collect();
    let problems: Vec<&KmeansProblem> = prepared.iter().map(|(_, p)| p).collect();
    let job = kmeans_job(&problems, steps, events);
    let done = match &job {
        Some(job) => Some((job, kernels.kmeans(&session, job)?)),
        None => None,
    };
    let found: Vec<(Ssm, AtomicEvents)> = prepared
        .into_par_iter()
        .enumerate()
        .map(|(slot, (ssm, problem))| {
            let n = problem.points.n;
            let trials_done: Vec<Clustering> = match &done {
                Some((job, out)) if job.on_device(slot) => (0..job.trials)
                    .map(|trial| {
                        let p = slot * job.trials + trial;
                        Clustering {
                            labels: out.labels[p * steps..p * steps + n]
                                .iter()
                                .map(|&l| l.max(0) as usize)
                                .collect(),
                            inertia: out.inertia[p],
                        }
                    })
                    .collect(),
                _ => problem.solve(events.max_iter),
            };
            let events = events_from_trials(&ssm, events, config.sample.steps, trials_done);
            (ssm, events)
        })
        .collect();
    // The k-means and the finishing ran for the whole group: each video gets its share.
    let events_time = started.elapsed().saturating_sub(gram_done) / share;
    Ok(found
        .into_iter()
        .map(|(ssm, events)| Found {
            ssm,
            events,
            similarity_time,
            events_time,
        })
        .collect())
}

/// Writes `group`'s features into `packed`, `[videos][steps][dim]`, short videos zero-padded,
/// each video by its own thread: the batch is hundreds of megabytes, written straight into the
/// buffer the device reads, which one thread copying, or a fresh allocation's page faults,
/// would make the slowest step of the batch.
pub(crate) fn pack(group: &[&Features], steps: usize, dim: usize, packed: &mut [f32]) {
    packed[..group.len() * steps * dim]
        .par_chunks_mut((steps * dim).max(1))
        .zip(group)
        .for_each(|(slot, features)| {
            let (filled, padding) = slot.split_at_mut(features.data.len());
            filled.copy_from_slice(&features.data);
            padding.fill(0.0);
        });
}

/// Dynamic shared memory a block may use without opting in.
pub(crate) const SHARED_LIMIT: usize = 48 * 1024;

/// `kernels/kmeans.cu`'s dynamic shared memory for `k` clusters over `steps` steps.
pub(crate) fn kmeans_shared_bytes(k: usize, steps: usize) -> usize {
    let dim = steps + 1;
    4 * (2 * k * dim + k + 3 * steps + 2 * k + 1)
}

/// The device's k-means job for one problem per video, over SSMs of side `steps`, or `None`
/// when a block's shared memory cannot hold that shape (unusually long samples or many
/// clusters): then the host clusters them all. The device takes the problems of the batch's
/// shape: `events.k` clusters, with the position column when the batch has it. A video too
/// short for that (fewer steps than k, or a single step without a position) gets size 0,
/// which the kernel skips, and is clustered on the host.
pub(crate) fn kmeans_job(
    problems: &[&KmeansProblem],
    steps: usize,
    events: &EventsConfig,
) -> Option<KmeansJob> {
    if kmeans_shared_bytes(events.k, steps) > SHARED_LIMIT {
        return None;
    }
    let with_time = problems.iter().any(|p| p.points.with_time());
    let (k, trials, stride) = (events.k, events.trials, steps + 1);
    let mut job = KmeansJob {
        steps,
        trials,
        k,
        stride,
        with_time,
        max_iter: events.max_iter,
        sizes: Vec::with_capacity(problems.len()),
        tols: Vec::with_capacity(problems.len()),
        extra: vec![0.0; problems.len() * steps],
        starts: vec![0.0; problems.len() * trials * k * stride],
    };
    for (slot, problem) in problems.iter().enumerate() {
        let device = problem.k == k && problem.points.with_time() == with_time;
        let (n, dim) = (problem.points.n, problem.points.dim);
        job.sizes.push(if device { n as i32 } else { 0 });
        job.tols.push(problem.tol);
        if !device {
            continue;
        }
        if with_time {
            for i in 0..n {
                job.extra[slot * steps + i] = problem.points.row(i)[n];
            }
        }
        for (trial, start) in problem.starts.iter().enumerate() {
            for (c, centre) in start.chunks_exact(dim).enumerate() {
                let at = ((slot * trials + trial) * k + c) * stride;
                job.starts[at..at + dim].copy_from_slice(centre);
            }
        }
    }
    Some(job)
}

impl KmeansJob {
    /// Whether video `slot`'s problem runs on the device (else the host clusters it).
    pub(crate) fn on_device(&self, slot: usize) -> bool {
        self.sizes[slot] > 0
    }
}
