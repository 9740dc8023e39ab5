//! Our k-means against linfa's on the atomic-event step's problem: the 128 × 129 points of a
//! 128-step video's SSM rows and position column, k = 5, 6 runs each (k-means++ starts
//! included on both sides). `cargo bench --bench kmeans`; the result decides whether keeping
//! our own k-means (the one the CUDA kernel mirrors) costs speed.

use criterion::{criterion_group, criterion_main, Criterion};
use linfa::traits::Fit;
use linfa::DatasetBase;
use momentminer::compute::charades_like;
use momentminer::config::Config;
use momentminer::events::KmeansProblem;
use momentminer::similarity::cosine_ssm;
use std::hint::black_box;

fn kmeans(c: &mut Criterion) {
    let mut config = Config::default();
    config.events.k = 5;
    config.events.trials = 6;
    let video = charades_like(1, 128, 512, 3).remove(0);
    let ssm = cosine_ssm(&video);
    let points = KmeansProblem::new(&ssm, &config.events, 1).points;
    assert_eq!((points.n, points.dim), (128, 129));
    let array = ndarray16::Array2::from_shape_vec((points.n, points.dim), points.data.clone())
        .expect("128 × 129 values");
    let dataset = DatasetBase::from(array);

    let mut group = c.benchmark_group("kmeans 128x129 k=5 6 runs");
    group.bench_function("momentminer", |b| {
        b.iter(|| {
            KmeansProblem::new(black_box(&ssm), &config.events, 1)
                .solve(config.events.max_iter)
                .iter()
                .map(|c| c.inertia)
                .fold(f32::INFINITY, f32::min)
        })
    });
    group.bench_function("linfa", |b| {
        b.iter(|| {
            linfa_clustering::KMeans::params(5)
                .n_runs(6)
                .fit(black_box(&dataset))
                .map(|model| model.inertia())
        })
    });
    group.finish();
}

criterion_group!(benches, kmeans);
criterion_main!(benches);
