//! Helpers shared by the integration tests: running the binary and making feature files,
//! well-formed and malformed.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

pub fn momentminer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs")
}

/// Polls `check` until it gives a value, backing off from 5 ms to 200 ms between tries; after
/// `limit`, fails the test with what `check` last said was missing. Tests wait on conditions
/// through this, never on a fixed time.
pub fn wait_until<T>(limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if started.elapsed() >= limit => panic!("not within {limit:?}: {why}"),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// `check`'s verdict as [`wait_until`] takes it: done, or what is missing.
pub fn done_or(done: bool, missing: impl FnOnce() -> String) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(missing())
    }
}

/// The exit status of `child`, which must come within `limit`; killed (and the test failed)
/// otherwise, so no process outlives its test.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() >= limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The whole response to `GET target` from the HTTP server at `addr` (`/metrics`, `/healthz`).
pub fn http_get(addr: &str, target: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
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

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// `n` valid feature files of width `dim` in `folder`, named `v00000.npy`...; returns their
/// ids.
pub fn make_inputs(folder: &Path, n: usize, offset: usize, dim: usize) -> HashSet<String> {
    std::fs::create_dir_all(folder).unwrap();
    (offset..offset + n)
        .map(|i| {
            let vid = format!("v{i:05}");
            let frames = 40 + i % 90;
            std::fs::write(folder.join(format!("{vid}.npy")), good_npy(frames, dim, i)).unwrap();
            vid
        })
        .collect()
}

/// Moves every file of `staging` into `inbox` (renames: complete the instant they appear).
pub fn move_all(staging: &Path, inbox: &Path) {
    for file in files_in(staging) {
        std::fs::rename(&file, inbox.join(file.file_name().unwrap())).unwrap();
    }
}

/// Exactly-once, whole outputs: one proposals file per expected video and nothing else, no
/// temporaries anywhere, and every video's training pairs (the proposals the captioner did not
/// supersede, windows filled in for recall left out) in exactly one dataset shard of `dataset`.
pub fn check_results(proposals: &Path, dataset: &Path, vids: &HashSet<String>) {
    let mut proposals_per_vid = HashMap::new();
    for file in files_in(proposals) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "a temporary file remains: {name}");
        let result: Value = serde_json::from_slice(&std::fs::read(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not whole JSON: {e}"));
        let vid = result["vid"].as_str().unwrap().to_string();
        let pairs = result["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p.get("superseded").is_none() && p.get("window").is_none())
            .count();
        proposals_per_vid.insert(vid, pairs);
    }
    let seen: HashSet<String> = proposals_per_vid.keys().cloned().collect();
    assert_eq!(&seen, vids, "proposal files differ from the inputs");
    let mut labels_per_vid: HashMap<String, usize> = HashMap::new();
    let mut sentences_per_vid: HashMap<String, usize> = HashMap::new();
    let mut shard_of_vid: HashMap<String, PathBuf> = HashMap::new();
    let mut qids = HashSet::new();
    let mut psvl_labels = 0;
    for file in files_in(dataset).into_iter().filter(|f| f.is_file()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "a temporary file remains: {name}");
        let content = std::fs::read_to_string(&file).unwrap();
        if name.ends_with(".json") {
            let list: Vec<Value> = serde_json::from_str(&content).unwrap();
            psvl_labels += list.len();
            continue;
        }
        assert!(
            content.is_empty() || content.ends_with('\n'),
            "{name}: partial line"
        );
        if name.ends_with(".txt") {
            // Charades-STA: "vid start end##sentence".
            for line in content.lines() {
                let (head, _) = line.split_once("##").expect("vid start end##sentence");
                let vid = head
                    .rsplitn(3, ' ')
                    .nth(2)
                    .expect("vid start end##sentence");
                *sentences_per_vid.entry(vid.to_string()).or_default() += 1;
            }
            continue;
        }
        for line in content.lines() {
            let label: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: partial or bad line {line}: {e}"));
            assert!(qids.insert(label["qid"].as_u64().unwrap()), "duplicate qid");
            assert!(
                !label["query"].as_str().unwrap().is_empty()
                    || label.get("query_embedding").is_some(),
                "{name}: a label without a pseudo-query: {line}"
            );
            let vid = label["vid"].as_str().unwrap().to_string();
            let shard = shard_of_vid.entry(vid.clone()).or_insert(file.clone());
            assert_eq!(shard, &file, "{vid} appears in two shards");
            *labels_per_vid.entry(vid).or_default() += 1;
        }
    }
    assert_eq!(
        sentences_per_vid, labels_per_vid,
        "Charades-STA and Moment-DETR shards differ"
    );
    assert_eq!(
        labels_per_vid, proposals_per_vid,
        "shards differ from proposals"
    );
    assert_eq!(
        psvl_labels,
        qids.len(),
        "PSVL and Moment-DETR shards differ"
    );
}
