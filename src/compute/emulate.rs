//! `kernels/*.cu` run in Rust: the same grids, blocks, threads, shared-memory tiles and
//! phases, one thread after another, with the device's floating-point operations (fused
//! multiply-adds where NVRTC contracts them, none in `kmeans.cu`, compiled with
//! `--fmad=false`). It proves the kernels' indexing against the CPU path on a machine without
//! a GPU, and gives the GPU tests the exact values a correct device must produce.

use super::batched::{pack, Kernels, KmeansJob, KmeansOut};
use super::ComputeError;
use crate::ingest::Features;

const GRAM_TILE: usize = 128;
const GRAM_K: usize = 16;
const GRAM_THREADS: usize = 256;
const GRAM_SIDE: usize = 16;
const GRAM_REG: usize = GRAM_TILE / GRAM_SIDE;
const MIN_NORM: f32 = 1e-12;
const WARP: usize = 32;

/// The kernels of `kernels/*.cu`, emulated.
pub(crate) struct Emulated;

impl Kernels for Emulated {
    type Session = Vec<f32>;

    fn gram(
        &self,
        group: &[&Features],
        steps: usize,
        dim: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), ComputeError> {
        let videos = group.len();
        let mut packed = vec![f32::NAN; videos * steps * dim];
        pack(group, steps, dim, &mut packed);
        let inverse = row_inverse_norms(&packed, videos * steps, dim);
        let ssm = gram(&packed, &inverse, videos, steps, dim);
        Ok((ssm.clone(), ssm))
    }

    fn kmeans(&self, ssm: &Vec<f32>, job: &KmeansJob) -> Result<KmeansOut, ComputeError> {
        let problems = job.sizes.len() * job.trials;
        let mut out = KmeansOut {
            labels: vec![0; problems * job.steps],
            inertia: vec![0.0; problems],
        };
        for problem in 0..problems {
            kmeans_block(ssm, job, problem, &mut out);
        }
        Ok(out)
    }
}

/// `row_inverse_norms`: each lane sums its strided share (contracted to FMAs), then the warp's
/// xor butterfly.
pub(crate) fn row_inverse_norms(features: &[f32], rows: usize, dim: usize) -> Vec<f32> {
    (0..rows)
        .map(|row| {
            let r = &features[row * dim..(row + 1) * dim];
            let mut lanes = [0.0f32; WARP];
            for (lane, sum) in lanes.iter_mut().enumerate() {
                for c in (lane..dim).step_by(WARP) {
                    *sum = r[c].mul_add(r[c], *sum);
                }
            }
            let mut offset = 16;
            while offset > 0 {
                let before = lanes;
                for (lane, sum) in lanes.iter_mut().enumerate() {
                    *sum = before[lane] + before[lane ^ offset];
                }
                offset >>= 1;
            }
            let norm = lanes[0].sqrt();
            if norm > MIN_NORM {
                1.0 / norm
            } else {
                0.0
            }
        })
        .collect()
}

/// `gram`: a block per (upper-triangle tile pair, video); 256 threads with 8×8 register tiles.
pub(crate) fn gram(
    features: &[f32],
    inverse: &[f32],
    videos: usize,
    steps: usize,
    dim: usize,
) -> Vec<f32> {
    let tiles = steps.div_ceil(GRAM_TILE);
    let mut ssm = vec![0.0f32; videos * steps * steps];
    for video in 0..videos {
        let f = &features[video * steps * dim..(video + 1) * steps * dim];
        for block in 0..tiles * (tiles + 1) / 2 {
            let (mut pair, mut ti) = (block, 0);
            while pair >= tiles - ti {
                pair -= tiles - ti;
                ti += 1;
            }
            let tj = ti + pair;
            let mut rows_a = vec![[0.0f32; GRAM_TILE + 4]; GRAM_K];
            let mut rows_b = vec![[0.0f32; GRAM_TILE + 4]; GRAM_K];
            let mut acc = vec![[[0.0f32; GRAM_REG]; GRAM_REG]; GRAM_THREADS];
            for k0 in (0..dim).step_by(GRAM_K) {
                for e in 0..GRAM_TILE * GRAM_K {
                    let (r, k) = (e / GRAM_K, e % GRAM_K);
                    let (ra, rb, kk) = (ti * GRAM_TILE + r, tj * GRAM_TILE + r, k0 + k);
                    let load = |row: usize| {
                        if row < steps && kk < dim {
                            f[row * dim + kk]
                        } else {
                            0.0
                        }
                    };
                    rows_a[k][r] = load(ra);
                    rows_b[k][r] = load(rb);
                }
                for (thread, tile) in acc.iter_mut().enumerate() {
                    let (tx, ty) = (thread % GRAM_SIDE, thread / GRAM_SIDE);
                    for k in 0..GRAM_K {
                        let a: [f32; GRAM_REG] =
                            std::array::from_fn(|i| rows_a[k][ty + GRAM_SIDE * i]);
                        let b: [f32; GRAM_REG] =
                            std::array::from_fn(|j| rows_b[k][tx + GRAM_SIDE * j]);
                        for i in 0..GRAM_REG {
                            for j in 0..GRAM_REG {
                                tile[i][j] = a[i].mul_add(b[j], tile[i][j]);
                            }
                        }
                    }
                }
            }
            let inv = &inverse[video * steps..(video + 1) * steps];
            let s = &mut ssm[video * steps * steps..(video + 1) * steps * steps];
            for (thread, tile) in acc.iter().enumerate() {
                let (tx, ty) = (thread % GRAM_SIDE, thread / GRAM_SIDE);
                for (i, row) in tile.iter().enumerate() {
                    let r = ti * GRAM_TILE + ty + GRAM_SIDE * i;
                    for (j, &value) in row.iter().enumerate() {
                        let c = tj * GRAM_TILE + tx + GRAM_SIDE * j;
                        if r < steps && c < steps {
                            let v = value * inv[r] * inv[c];
                            s[r * steps + c] = v;
                            if ti != tj {
                                s[c * steps + r] = v;
                            }
                        }
                    }
                }
            }
        }
    }
    ssm
}

/// The eight-lane dot product of `kmeans.cu` (and of `similarity::dot`).
fn dot8(x: impl Fn(usize) -> f32, y: impl Fn(usize) -> f32, dim: usize) -> f32 {
    let mut acc = [0.0f32; 8];
    let whole = dim / 8 * 8;
    for m in (0..whole).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += x(m + l) * y(m + l);
        }
    }
    let mut tail = 0.0f32;
    for m in whole..dim {
        tail += x(m) * y(m);
    }
    let mut sum = 0.0f32;
    for a in acc {
        sum += a;
    }
    sum + tail
}

/// One `kmeans` block: problem `problem`'s Lloyd iterations, phase by phase.
fn kmeans_block(ssm: &[f32], job: &KmeansJob, problem: usize, out: &mut KmeansOut) {
    let (steps, k) = (job.steps, job.k);
    let video = problem / job.trials;
    let n = job.sizes[video] as usize;
    if n < k {
        return;
    }
    let dim = n + usize::from(job.with_time);
    let tol = job.tols[video];
    let s = &ssm[video * steps * steps..(video + 1) * steps * steps];
    let x = &job.extra[video * steps..(video + 1) * steps];
    let point = |i: usize, d: usize| if d < n { s[i * steps + d] } else { x[i] };

    let mut centers: Vec<f32> = (0..k * dim)
        .map(|e| job.starts[problem * k * job.stride + (e / dim) * job.stride + e % dim])
        .collect();
    let norms: Vec<f32> = (0..n)
        .map(|i| dot8(|d| point(i, d), |d| point(i, d), dim))
        .collect();
    let mut sums = vec![0.0f32; k * dim];
    let mut labels = vec![0usize; n];
    let mut distances = vec![0.0f32; n];
    let assign = |centers: &[f32], labels: &mut [usize], distances: &mut [f32]| {
        let center_norms: Vec<f32> = (0..k)
            .map(|c| {
                let centre = &centers[c * dim..(c + 1) * dim];
                dot8(|d| centre[d], |d| centre[d], dim)
            })
            .collect();
        for i in 0..n {
            let (mut best, mut best_d) = (0, f32::INFINITY);
            for c in 0..k {
                let centre = &centers[c * dim..(c + 1) * dim];
                let d =
                    norms[i] - 2.0 * dot8(|d| point(i, d), |d| centre[d], dim) + center_norms[c];
                if d < best_d {
                    (best, best_d) = (c, d);
                }
            }
            labels[i] = best;
            distances[i] = best_d.max(0.0);
        }
    };
    for _ in 0..job.max_iter {
        assign(&centers, &mut labels, &mut distances);
        let counts: Vec<usize> = (0..k)
            .map(|c| labels.iter().filter(|&&l| l == c).count())
            .collect();
        for d in 0..dim {
            for c in 0..k {
                sums[c * dim + d] = 0.0;
            }
            for (i, &label) in labels.iter().enumerate() {
                sums[label * dim + d] += point(i, d);
            }
        }
        for d in 0..dim {
            for c in 0..k {
                if counts[c] > 0 {
                    let scale = 1.0 / counts[c] as f32;
                    let next = sums[c * dim + d] * scale;
                    let value = centers[c * dim + d];
                    sums[c * dim + d] = (next - value) * (next - value);
                    centers[c * dim + d] = next;
                }
            }
        }
        let mut far = vec![0usize; k];
        let mut shift = 0.0f32;
        for c in 0..k {
            if counts[c] == 0 {
                let (mut worst, mut worst_d) = (0, f32::NEG_INFINITY);
                for (i, &d) in distances.iter().enumerate() {
                    if d > worst_d {
                        (worst, worst_d) = (i, d);
                    }
                }
                distances[worst] = 0.0;
                far[c] = worst;
                let mut moved = 0.0f32;
                for d in 0..dim {
                    let a = centers[c * dim + d] - point(worst, d);
                    moved += a * a;
                }
                shift += moved;
            } else {
                for d in 0..dim {
                    shift += sums[c * dim + d];
                }
            }
        }
        for d in 0..dim {
            for c in 0..k {
                if counts[c] == 0 {
                    centers[c * dim + d] = point(far[c], d);
                }
            }
        }
        if shift <= tol {
            break;
        }
    }
    assign(&centers, &mut labels, &mut distances);
    for (i, &label) in labels.iter().enumerate() {
        out.labels[problem * steps + i] = label as i32;
    }
    let mut total = 0.0f32;
    for d in &distances {
        total += d;
    }
    out.inertia[problem] = total;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::batched::{events_batch, kmeans_job};
    use crate::compute::{charades_like, cpu_events};
    use crate::config::Config;
    use crate::events::KmeansProblem;
    use crate::similarity::cosine_ssm;

    fn video(seed: u64, frames: usize, dim: usize) -> Features {
        charades_like(1, frames, dim, seed).remove(0)
    }

    #[test]
    fn the_gram_tiles_give_the_cpu_similarity_for_every_shape() {
        // One tile, a partial second tile (three tile pairs, mirrored), and a width that is
        // not a multiple of the k step; a zero row stays zero.
        for (videos, steps, dim) in [(3, 90, 64), (2, 200, 37), (1, 128, 500)] {
            let mut clips = charades_like(videos, steps, dim, steps as u64);
            clips[0].data[..dim].iter_mut().for_each(|v| *v = 0.0);
            // A shorter last video: the batch pads it with zero steps.
            let last = clips.last_mut().unwrap();
            last.frames -= 7;
            last.data.truncate(last.frames * dim);
            let refs: Vec<&Features> = clips.iter().collect();
            let (_, ssm) = Emulated.gram(&refs, steps, dim).unwrap();
            for (v, clip) in clips.iter().enumerate() {
                let cpu = cosine_ssm(clip);
                let n = clip.frames;
                let block = &ssm[v * steps * steps..(v + 1) * steps * steps];
                let worst = (0..n * n)
                    .map(|e| (cpu.data[e] - block[e / n * steps + e % n]).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{steps}×{dim}: max |ΔS| = {worst}");
                assert!(
                    block[n * steps..].iter().all(|&x| x == 0.0),
                    "padding is zero"
                );
            }
        }
    }

    #[test]
    fn the_kmeans_block_gives_the_cpu_clustering_label_for_label() {
        let config = Config::default();
        for (frames, dim) in [(128, 64), (57, 20), (9, 8)] {
            let clip = video(frames as u64, frames, dim);
            let ssm = cosine_ssm(&clip);
            let problem = KmeansProblem::new(&ssm, &config.events, 77);
            let n = problem.points.n;
            let job = kmeans_job(&[&problem], n, &config.events).unwrap();
            let out = Emulated.kmeans(&ssm.data, &job).unwrap();
            for (t, cpu) in problem
                .solve(config.events.max_iter)
                .into_iter()
                .enumerate()
            {
                let labels: Vec<usize> = out.labels[t * n..(t + 1) * n]
                    .iter()
                    .map(|&l| l as usize)
                    .collect();
                assert_eq!(labels, cpu.labels, "{frames} steps, trial {t}");
                assert_eq!(out.inertia[t].to_bits(), cpu.inertia.to_bits());
            }
        }
    }

    #[test]
    fn a_batch_through_the_emulated_kernels_has_the_cpu_events() {
        let config = Config::default();
        // Mixed lengths (zero padding), two widths (two passes), and a video too short for k.
        let clips: Vec<Features> = [(128, 48), (100, 48), (3, 48), (128, 30), (77, 48)]
            .iter()
            .map(|&(frames, dim)| video(frames as u64, frames, dim))
            .collect();
        let batch: Vec<&Features> = clips.iter().collect();
        let seeds: Vec<u64> = (0..clips.len() as u64).map(|i| i * 31 + 7).collect();
        let device = events_batch(&Emulated, &batch, &seeds, &config).unwrap();
        assert_eq!(device.len(), clips.len());
        for ((clip, &seed), found) in clips.iter().zip(&seeds).zip(&device) {
            let cpu = cpu_events(clip, seed, &config);
            assert_eq!(found.ssm.n, cpu.ssm.n);
            assert_eq!(
                found.events, cpu.events,
                "{} steps × {}",
                clip.frames, clip.dim
            );
        }
    }

    /// The SSM rows (and position column) of a 128-step video, `k = 5`, 6 trials: the atomic
    /// event step's problem, as `benches/kmeans.rs` times it.
    fn event_problem(seed: u64) -> (Config, KmeansProblem) {
        let mut config = Config::default();
        config.events.k = 5;
        config.events.trials = 6;
        let ssm = cosine_ssm(&video(seed, 128, 512));
        let problem = KmeansProblem::new(&ssm, &config.events, seed);
        (config, problem)
    }

    /// linfa's best-of-6 mean squared distance to the nearest centre, recomputed from its
    /// centres so both sides are measured alike.
    fn linfa_inertia(problem: &KmeansProblem, runs: usize) -> f32 {
        use linfa::traits::Fit;
        use linfa::DatasetBase;
        let points = &problem.points;
        let array =
            ndarray16::Array2::from_shape_vec((points.n, points.dim), points.data.clone()).unwrap();
        let model = linfa_clustering::KMeans::params(problem.k)
            .n_runs(runs)
            .fit(&DatasetBase::from(array))
            .unwrap();
        let centres = model.centroids();
        let total: f32 = (0..points.n)
            .map(|i| {
                centres
                    .rows()
                    .into_iter()
                    .map(|c| {
                        c.iter()
                            .zip(points.row(i))
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>()
                    })
                    .fold(f32::INFINITY, f32::min)
            })
            .sum();
        total / points.n as f32
    }

    #[test]
    fn our_kmeans_and_its_kernel_reach_linfas_inertia_within_one_percent() {
        for seed in 0..6 {
            let (config, problem) = event_problem(seed);
            let n = problem.points.n;
            let ours = problem
                .solve(config.events.max_iter)
                .iter()
                .map(|c| c.inertia)
                .fold(f32::INFINITY, f32::min)
                / n as f32;
            let ssm: Vec<f32> = (0..n)
                .flat_map(|i| problem.points.row(i)[..n].to_vec())
                .collect();
            let job = kmeans_job(&[&problem], n, &config.events).unwrap();
            let kernel = Emulated
                .kmeans(&ssm, &job)
                .unwrap()
                .inertia
                .into_iter()
                .fold(f32::INFINITY, f32::min)
                / n as f32;
            let reference = linfa_inertia(&problem, job.trials);
            assert!(problem.points.with_time() && problem.points.dim == 129);
            eprintln!("seed {seed}: mean squared distance ours {ours}, kernel {kernel}, linfa {reference}");
            assert!(
                ours <= reference * 1.01 && kernel <= reference * 1.01,
                "seed {seed}: ours {ours}, kernel {kernel}, linfa {reference}"
            );
        }
    }
}
