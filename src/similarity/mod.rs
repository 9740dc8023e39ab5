//! Cosine self-similarity matrix: `S = F̂·F̂ᵀ` over L2-normalised rows. Column `j` of `S` is
//! frame `j`'s contextual feature, what the event step clusters.

mod cpu;

pub use cpu::cosine_ssm;

/// A symmetric `n × n` similarity matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Ssm {
    /// Its side: the number of steps.
    pub n: usize,
    /// `n × n` similarities, row-major.
    pub data: Vec<f32>,
}

impl Ssm {
    /// Similarity of steps `i` and `j`.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.n + j]
    }

    /// Row `i`: step `i`'s contextual feature.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    /// Mean similarity between steps `[a0, a1)` and `[b0, b1)`; 0 for an empty block.
    pub fn block_mean(&self, (a0, a1): (usize, usize), (b0, b1): (usize, usize)) -> f32 {
        let count = (a1 - a0) * (b1 - b0);
        if count == 0 {
            return 0.0;
        }
        let sum: f32 = (a0..a1)
            .map(|i| self.row(i)[b0..b1].iter().sum::<f32>())
            .sum();
        sum / count as f32
    }
}

/// Eight independent partial sums let the compiler vectorise without reassociation licence.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
