//! Helpers shared by the integration tests: running the binary and making feature files,
//! well-formed and malformed.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn momentminer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs")
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// A well-formed `(frames, dim)` float32 .npy whose content depends on `seed`.
pub fn good_npy(frames: usize, dim: usize, seed: usize) -> Vec<u8> {
    let values = (0..frames * dim).map(|i| (((i + seed) * 7919 + i / dim * 31) % 97) as f32);
    npy("<f4", &format!("({frames}, {dim})"), &f32_bytes(values))
}

pub struct Malformed {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// What the human-readable message says.
    pub message: &'static str,
    /// The daemon's machine-readable reason.
    pub reason: &'static str,
}

/// Every kind of bad feature file the readers must refuse by name. All but `noduration.npy`
/// expect a duration sidecar beside them.
pub fn malformed_cases() -> Vec<Malformed> {
    let good = f32_bytes((0..40 * 8).map(|i| ((i * 7) % 13) as f32));
    let mut nan = good.clone();
    nan[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let case = |name, bytes, message, reason| Malformed {
        name,
        bytes,
        message,
        reason,
    };
    vec![
        case(
            "truncated.npy",
            npy("<f4", "(40, 8)", &good[..100]),
            "truncated",
            "truncated",
        ),
        case(
            "badmagic.npy",
            b"NOTNUMPY, just text".to_vec(),
            "bad magic",
            "bad_magic",
        ),
        case(
            "ints.npy",
            npy("<i8", "(40, 8)", &good),
            "unsupported dtype",
            "unsupported_dtype",
        ),
        case(
            "rank3.npy",
            npy("<f4", "(2, 20, 8)", &good),
            "rank",
            "bad_rank",
        ),
        case(
            "noframes.npy",
            npy("<f4", "(0, 8)", &[]),
            "T = 0",
            "no_frames",
        ),
        case(
            "nan.npy",
            npy("<f4", "(40, 8)", &nan),
            "NaN/Inf",
            "non_finite",
        ),
        case(
            "gigantic.npy",
            npy("<f4", "(9000000000, 9000000000)", &good),
            "exceeds the limits",
            "too_large",
        ),
        case("empty.npy", Vec::new(), "truncated", "empty_file"),
        case(
            "broken.npz",
            b"PK\x03\x04 not really a zip".to_vec(),
            "archive",
            "bad_archive",
        ),
        case(
            "noduration.npy",
            npy("<f4", "(40, 8)", &good),
            "no duration",
            "missing_duration",
        ),
    ]
}
