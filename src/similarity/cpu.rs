use super::Ssm;
use crate::ingest::Features;

/// Rows with (near) zero norm stay zero instead of becoming NaN: a blank frame is dissimilar
/// to everything rather than poisoning the matrix.
const MIN_NORM: f32 = 1e-12;

/// Row-normalises the features and returns S = F̂·F̂ᵀ.
pub fn cosine_ssm(features: &Features) -> Ssm {
    let (n, d) = (features.frames, features.dim);
    let mut unit = features.data.clone();
    for row in unit.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let scale = if norm > MIN_NORM { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let mut data = vec![0.0f32; n * n];
    // SAFETY: the pointers and strides describe `unit` as n×d row-major, its transpose
    // (d×n, read with swapped strides) and `data` as n×n row-major; all are in bounds.
    unsafe {
        matrixmultiply::sgemm(
            n,
            d,
            n,
            1.0,
            unit.as_ptr(),
            d as isize,
            1,
            unit.as_ptr(),
            1,
            d as isize,
            0.0,
            data.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    Ssm { n, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_cosine_and_is_symmetric() {
        let f = Features {
            frames: 3,
            dim: 2,
            data: vec![1.0, 0.0, 3.0, 4.0, 0.0, 0.0],
        };
        let s = cosine_ssm(&f);
        let expected = [1.0, 0.6, 0.0, 0.6, 1.0, 0.0, 0.0, 0.0, 0.0];
        for (a, b) in s.data.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{:?}", s.data);
        }
    }

    #[test]
    fn large_random_matrix_agrees_with_naive_loops() {
        let mut rng = crate::rng::Rng::new(3);
        let (n, d) = (37, 129);
        let f = Features {
            frames: n,
            dim: d,
            data: (0..n * d).map(|_| rng.normal() as f32).collect(),
        };
        let s = cosine_ssm(&f);
        for i in 0..n {
            for j in 0..n {
                let (a, b) = (f.row(i), f.row(j));
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
                let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((s.at(i, j) - dot / (na * nb)).abs() < 1e-5);
            }
        }
    }
}
