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

/// The mean and standard deviation of a set of scores, to read a score as standard deviations
/// above the set's mean: scores of different sets (words on different spans, candidates of
/// different scorers) then compare.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    mean: f64,
    deviation: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: impl Iterator<Item = f64> + Clone) -> Spread {
        let n = values.clone().count().max(1) as f64;
        let mean = values.clone().sum::<f64>() / n;
        let variance = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Spread {
            mean,
            deviation: variance.sqrt(),
        }
    }

    /// The standard deviation.
    pub fn deviation(&self) -> f64 {
        self.deviation
    }

    /// `value` in standard deviations above the mean; 0 where every value is alike.
    pub fn margin(&self, value: f64) -> f64 {
        match self.deviation > 1e-12 {
            true => (value - self.mean) / self.deviation,
            false => 0.0,
        }
    }
}

/// `row` scaled in place to unit length (left as it is where it is all zeros).
pub fn to_unit_length(row: &mut [f32]) {
    let norm = dot(row, row).sqrt().max(1e-12);
    row.iter_mut().for_each(|v| *v /= norm);
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
