//! A CLIP-style text tower fitted to a visual space: the query encoder (all-MiniLM-L6-v2)
//! followed by the linear map that takes each anchor word onto its visual prototype (ridge
//! regression from the words' MiniLM embeddings to their prototypes). Any text lands in the
//! visual space: an anchor word on its own prototype, a sentence near the prototypes of the
//! words it is made of, a word that is no anchor wherever its meaning puts it (a "glass" near
//! the "cup"), as a real CLIP's text tower places text near images. The anchors come from
//! `caption.tower_anchors`: `words.txt` and `prototypes.npy`, as `momentminer synth` writes its
//! world's, or as anyone who knows what a few words look like in their features can write.

use super::text::{unit, TextEncoder};
use super::CaptionError;
use crate::config::CaptionConfig;
use crate::ingest::{npy, Limits};
use std::path::Path;

/// Ridge weight of the fit, relative to the unit-length MiniLM embeddings: small enough that an
/// anchor word lands on its own prototype, large enough that near-collinear words do not blow
/// the map up.
const RIDGE: f64 = 0.05;

/// The file of `tower_anchors` that lists the words, one per line.
pub const WORDS_FILE: &str = "words.txt";
/// The file of `tower_anchors` that holds one prototype row per word.
pub const PROTOTYPES_FILE: &str = "prototypes.npy";

/// The fitted tower.
pub struct AnchoredTower {
    encoder: TextEncoder,
    /// The anchor words as MiniLM embeds them.
    anchors: Vec<Vec<f32>>,
    /// The same words' visual prototypes, in the same order.
    prototypes: Vec<Vec<f32>>,
    /// Lower Cholesky factor of anchors·anchorsᵀ + RIDGE·I, row-major.
    factor: Vec<f64>,
}

/// The anchor words and their prototypes, as `folder` holds them.
pub fn read_anchors(folder: &Path) -> Result<(Vec<String>, Vec<Vec<f32>>), CaptionError> {
    let words_path = folder.join(WORDS_FILE);
    let prototypes_path = folder.join(PROTOTYPES_FILE);
    let fail = |path: &Path, message: String| CaptionError::Anchors {
        path: path.to_path_buf(),
        message,
    };
    let words: Vec<String> = std::fs::read_to_string(&words_path)
        .map_err(|e| fail(&words_path, e.to_string()))?
        .lines()
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let file =
        std::fs::File::open(&prototypes_path).map_err(|e| fail(&prototypes_path, e.to_string()))?;
    let size = file
        .metadata()
        .map_err(|e| fail(&prototypes_path, e.to_string()))?
        .len();
    let limits = Limits {
        max_frames: words.len().max(1),
        max_dim: 1 << 16,
        max_bytes: 1 << 30,
    };
    let features = npy::read(std::io::BufReader::new(file), size, &limits)
        .map_err(|e| fail(&prototypes_path, e.to_string()))?;
    if words.is_empty() || features.frames != words.len() {
        return Err(fail(
            &prototypes_path,
            format!(
                "has {} rows for the {} words of {}",
                features.frames,
                words.len(),
                words_path.display()
            ),
        ));
    }
    let prototypes = (0..features.frames)
        .map(|t| features.row(t).to_vec())
        .collect();
    Ok((words, prototypes))
}

impl AnchoredTower {
    /// Loads the query encoder and the anchors of `caption.tower_anchors`, and fits the map.
    pub fn load(caption: &CaptionConfig) -> Result<AnchoredTower, CaptionError> {
        let encoder = TextEncoder::load(caption)?;
        let (words, prototypes) = read_anchors(&caption.tower_anchors)?;
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let anchors: Vec<Vec<f32>> = encoder
            .encode(&words)?
            .into_iter()
            .map(|e| e.pooled)
            .collect();
        let n = anchors.len();
        let mut gram = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let dot = dot(&anchors[i], &anchors[j]);
                gram[i * n + j] = dot + if i == j { RIDGE } else { 0.0 };
            }
        }
        Ok(AnchoredTower {
            encoder,
            anchors,
            prototypes,
            factor: cholesky(gram, n),
        })
    }

    /// Unit-length embeddings of `texts` in the visual space.
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

    /// Anchor words land on their own prototypes; a sentence lands near the prototypes of its
    /// verb and noun, though the fit never saw a sentence (among its three nearest).
    #[test]
    fn words_land_on_their_prototypes_and_sentences_near_their_words() {
        let anchors = tempfile::tempdir().unwrap();
        let words = [
            "open", "pour", "sweep", "eat", "hold", "sit", "door", "cup", "floor", "sandwich",
            "broom", "chair", "window", "laptop",
        ];
        let dim = 128;
        let mut rng = crate::rng::Rng::new(11);
        let prototypes: Vec<Vec<f32>> = words
            .iter()
            .map(|_| unit((0..dim).map(|_| rng.normal() as f32).collect()))
            .collect();
        write_anchors(anchors.path(), &words, &prototypes);
        let mut caption = crate::caption::text::fetched_models();
        caption.tower_anchors = anchors.path().to_path_buf();
        let tower = AnchoredTower::load(&caption).unwrap_or_else(|e| panic!("{e}"));
        let prototype = |w: &str| &prototypes[words.iter().position(|x| *x == w).unwrap()];
        let cosine = |a: &[f32], b: &[f32]| dot(a, b) / dot(b, b).sqrt();
        let embedded = tower.embed(&["pour", "cup"]).unwrap();
        assert!(cosine(&embedded[0], prototype("pour")) > 0.9);
        assert!(cosine(&embedded[1], prototype("cup")) > 0.9);
        for (sentence, verb, noun) in [
            ("a person is opening the door.", "open", "door"),
            ("someone sweeps the floor", "sweep", "floor"),
            ("the person eats a sandwich", "eat", "sandwich"),
        ] {
            let e = &tower.embed(&[sentence]).unwrap()[0];
            let mut ranked: Vec<(f64, &str)> = words
                .iter()
                .map(|w| (cosine(e, prototype(w)), *w))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top: Vec<&str> = ranked[..3].iter().map(|r| r.1).collect();
            assert!(
                top.contains(&verb) && top.contains(&noun),
                "{sentence}: {ranked:?}"
            );
        }
    }

    fn write_anchors(folder: &Path, words: &[&str], prototypes: &[Vec<f32>]) {
        std::fs::write(folder.join(WORDS_FILE), words.join("\n")).unwrap();
        let features = crate::ingest::Features {
            frames: prototypes.len(),
            dim: prototypes[0].len(),
            data: prototypes.concat(),
        };
        let mut bytes = Vec::new();
        npy::write(&mut bytes, &features).unwrap();
        std::fs::write(folder.join(PROTOTYPES_FILE), bytes).unwrap();
    }

    #[test]
    fn anchors_that_disagree_are_refused_naming_the_file() {
        let folder = tempfile::tempdir().unwrap();
        write_anchors(
            folder.path(),
            &["a", "b", "c"],
            &[vec![1.0, 0.0], vec![0.0, 1.0]],
        );
        let e = read_anchors(folder.path()).unwrap_err().to_string();
        assert!(e.contains(PROTOTYPES_FILE) && e.contains("3 words"), "{e}");
        let missing = read_anchors(&folder.path().join("nowhere"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains(WORDS_FILE), "{missing}");
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
