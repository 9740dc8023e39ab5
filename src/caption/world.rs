//! The synthetic world's CLIP-style text tower: the query encoder (all-MiniLM-L6-v2) followed
//! by the linear map that takes each of the world's words onto its visual prototype (ridge
//! regression from the words' MiniLM embeddings to their prototypes). Any text lands in the
//! world's visual space: a word of the world on its own prototype, a sentence near the
//! prototypes of the words it is made of, a word foreign to the world wherever its meaning
//! puts it (a "glass" near the "cup"), as a real CLIP's text tower places text near images.

use super::text::{unit, TextEncoder};
use super::CaptionError;
use crate::config::Config;
use crate::synth;

/// Ridge weight of the fit, relative to the unit-length MiniLM embeddings: small enough that a
/// world word lands on its own prototype, large enough that near-collinear words do not blow
/// the map up.
const RIDGE: f64 = 0.05;

pub struct WorldTower {
    encoder: TextEncoder,
    /// The world's words as MiniLM embeds them: the fit's anchors.
    anchors: Vec<Vec<f32>>,
    /// The same words' visual prototypes, in the same order.
    prototypes: Vec<Vec<f32>>,
    /// Lower Cholesky factor of anchors·anchorsᵀ + RIDGE·I, row-major.
    factor: Vec<f64>,
}

impl WorldTower {
    pub fn load(config: &Config) -> Result<WorldTower, CaptionError> {
        let encoder = TextEncoder::load(&config.caption)?;
        let (verbs, nouns) = synth::words();
        let words: Vec<&str> = verbs.into_iter().chain(nouns).collect();
        let anchors: Vec<Vec<f32>> = encoder
            .encode(&words)?
            .into_iter()
            .map(|e| e.pooled)
            .collect();
        let (seed, dim) = synth::caption_space(&config.synth);
        let prototypes = words
            .iter()
            .map(|w| synth::word_prototype(seed, dim, w))
            .collect();
        let n = anchors.len();
        let mut gram = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let dot = dot(&anchors[i], &anchors[j]);
                gram[i * n + j] = dot + if i == j { RIDGE } else { 0.0 };
            }
        }
        Ok(WorldTower {
            encoder,
            anchors,
            prototypes,
            factor: cholesky(gram, n),
        })
    }

    /// Unit-length embeddings of `texts` in the world's visual space.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, CaptionError> {
        let n = self.anchors.len();
        Ok(self
            .encoder
            .encode(texts)?
            .into_iter()
            .map(|encoded| {
                let projections: Vec<f64> = self
                    .anchors
                    .iter()
                    .map(|a| dot(a, &encoded.pooled))
                    .collect();
                let weights = solve(&self.factor, n, projections);
                let dim = self.prototypes[0].len();
                let mut v = vec![0f32; dim];
                for (w, proto) in weights.iter().zip(&self.prototypes) {
                    for (x, p) in v.iter_mut().zip(proto) {
                        *x += *w as f32 * p;
                    }
                }
                unit(v)
            })
            .collect())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Cholesky factor L (lower, row-major) of a symmetric positive definite matrix given by its
/// lower triangle; the ridge keeps the pivots positive.
fn cholesky(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for j in 0..n {
        let pivot = (a[j * n + j] - (0..j).map(|k| a[j * n + k].powi(2)).sum::<f64>())
            .max(f64::MIN_POSITIVE)
            .sqrt();
        a[j * n + j] = pivot;
        for i in j + 1..n {
            let s: f64 = (0..j).map(|k| a[i * n + k] * a[j * n + k]).sum();
            a[i * n + j] = (a[i * n + j] - s) / pivot;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    a
}

/// Solves L·Lᵀ·x = b.
fn solve(l: &[f64], n: usize, mut b: Vec<f64>) -> Vec<f64> {
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * b[k]).sum();
        b[i] = (b[i] - s) / l[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * b[k]).sum();
        b[i] = (b[i] - s) / l[i * n + i];
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of the world land on their own prototypes; a sentence lands near the prototypes
    /// of its verb and noun, though the fit never saw a sentence (among its three nearest: the
    /// meaning MiniLM gives words leaks, "sweeps the floor" is also near "broom").
    #[test]
    fn words_land_on_their_prototypes_and_sentences_near_their_words() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut config = Config::default();
        config.synth.clip_dim = 128;
        for path in [
            &mut config.caption.ort_library,
            &mut config.caption.text_model,
            &mut config.caption.text_tokenizer,
        ] {
            *path = root.join(&*path);
        }
        let tower = WorldTower::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let (verbs, nouns) = synth::words();
        let words: Vec<&str> = verbs.into_iter().chain(nouns).collect();
        let (seed, dim) = synth::caption_space(&config.synth);
        let prototype = |w: &str| synth::word_prototype(seed, dim, w);
        let cosine = |a: &[f32], b: &[f32]| dot(a, b) / dot(b, b).sqrt();
        let embedded = tower.embed(&["pour", "cup"]).unwrap();
        assert!(cosine(&embedded[0], &prototype("pour")) > 0.9);
        assert!(cosine(&embedded[1], &prototype("cup")) > 0.9);
        for (sentence, verb, noun) in [
            ("a person is opening the door.", "open", "door"),
            ("someone sweeps the floor", "sweep", "floor"),
            ("the person eats a sandwich", "eat", "sandwich"),
        ] {
            let e = &tower.embed(&[sentence]).unwrap()[0];
            let mut ranked: Vec<(f64, &str)> = words
                .iter()
                .map(|w| (cosine(e, &prototype(w)), *w))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top: Vec<&str> = ranked[..3].iter().map(|r| r.1).collect();
            assert!(
                top.contains(&verb) && top.contains(&noun),
                "{sentence}: {ranked:?}"
            );
        }
    }

    #[test]
    fn cholesky_solves_a_symmetric_system() {
        // A = [[4, 2, 0.4], [2, 5, 1], [0.4, 1, 3]], x = [1, -2, 0.5].
        let a = vec![4.0, 0.0, 0.0, 2.0, 5.0, 0.0, 0.4, 1.0, 3.0];
        let x = [1.0, -2.0, 0.5];
        let b = vec![
            4.0 * x[0] + 2.0 * x[1] + 0.4 * x[2],
            2.0 * x[0] + 5.0 * x[1] + x[2],
            0.4 * x[0] + x[1] + 3.0 * x[2],
        ];
        let solved = solve(&cholesky(a, 3), 3, b);
        for (s, e) in solved.iter().zip(x) {
            assert!((s - e).abs() < 1e-12, "{solved:?}");
        }
    }
}
