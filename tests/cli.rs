//! End-to-end tests of the real binary: the synthetic world, every malformed-input kind, real
//! CLIP features, HDF5 and the picture.

mod common;

use common::{f32_bytes, good_npy, malformed_cases, momentminer, npy, p, text, wait_exit};
use std::path::{Path, PathBuf};

/// The R@1/R@5/R@all triples of one method row of the recall table.
fn row(table: &str, method: &str) -> Vec<f64> {
    let line = table
        .lines()
        .find(|l| l.starts_with(method))
        .unwrap_or_else(|| panic!("no row '{method}' in\n{table}"));
    line[method.len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn proposals_beat_sliding_windows_on_the_synthetic_world() {
    let dir = tempfile::tempdir().unwrap();
    let out = momentminer(&[
        "synth",
        "--out",
        p(dir.path()),
        "--videos",
        "120",
        "--dim",
        "256",
        "--seed",
        "3",
        "--set",
        "synth.clip_dim=64",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The world's own text tower and vocabulary, as the settings file beside it names them.
    let settings = dir.path().join("caption.toml");
    let world = ["--config", p(&settings)];
    let out = momentminer(
        &[
            &[
                "propose",
                p(&dir.path().join("features")),
                "--out",
                p(dir.path()),
            ][..],
            &world,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("proposed 120 videos"), "{}", text(&out));
    let out = momentminer(
        &[
            &[
                "eval-proposals",
                "--gt",
                p(&dir.path().join("gt.jsonl")),
                "--proposals",
                p(dir.path()),
            ][..],
            &world,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let table = text(&out);
    // Columns: queries, per-video, R@1 x3, R@5 x3, R@all x3, mIoU.
    let ours = row(&table, "proposals");
    let sliding = row(&table, "sliding windows");
    assert_eq!(
        ours[1], sliding[1],
        "baseline must have the same count\n{table}"
    );
    assert!(ours[6] > sliding[6] + 10.0, "R@5 IoU 0.5\n{table}");
    assert!(ours[10] > sliding[10] + 10.0, "R@all IoU 0.7\n{table}");
    // Pseudo-queries name the planted event's noun nearly always. A still frame shows the
    // object, hardly the action, so verbs are read from what the span adds to its video, less
    // its objects (caption.verb_contrast): right most of the time, against 3% by chance.
    let accuracy = |method: &str| -> Vec<f64> {
        let line = table.lines().find(|l| l.starts_with(method)).unwrap();
        line[method.len()..]
            .split_whitespace()
            .map(|v| v.trim_end_matches('%').parse().unwrap())
            .collect()
    };
    let (captioner, random) = (accuracy("captioner"), accuracy("random vocabulary"));
    assert!(
        captioner[0] > 40.0 && captioner[0] > 10.0 * random[0],
        "verb top-1\n{table}"
    );
    assert!(
        captioner[2] > 80.0 && captioner[2] > 5.0 * random[2],
        "noun top-1\n{table}"
    );

    // The dataset, in three formats that agree.
    let dataset = dir.path().join("dataset");
    let psvl: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dataset.join("psvl.json")).unwrap()).unwrap();
    // One verb and one noun (caption.verbs, caption.nouns).
    assert!(psvl
        .iter()
        .all(|e| e["tokens"].as_array().unwrap().len() == 2));
    // One pair per noun and video (caption.pairs = "best_per_noun"); the other proposals stay
    // in the result files, marked superseded.
    let mut named = std::collections::HashSet::new();
    assert!(psvl.iter().all(|e| named.insert((
        e["vid"].as_str().unwrap().to_string(),
        e["tokens"][1].as_str().unwrap().to_string()
    ))));
    let superseded = std::fs::read_dir(dir.path().join("proposals"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .filter(|text| text.contains("\"superseded\":true"))
        .count();
    assert!(superseded > 0, "no proposal was superseded");
    let detr = std::fs::read_to_string(dataset.join("moment_detr.jsonl")).unwrap();
    let charades = std::fs::read_to_string(dataset.join("charades.txt")).unwrap();
    assert_eq!(detr.lines().count(), psvl.len());
    assert_eq!(charades.lines().count(), psvl.len());
    let first: serde_json::Value = serde_json::from_str(detr.lines().next().unwrap()).unwrap();
    let tokens: Vec<&str> = psvl[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(first["query"].as_str().unwrap(), tokens.join(" "));
    assert!(charades
        .lines()
        .next()
        .unwrap()
        .ends_with(&format!("##{}", tokens.join(" "))));

    // Captioned again, language-free, from the same proposals: embeddings instead of words.
    let again = dir.path().join("language-free");
    let out = momentminer(&[
        "caption",
        p(&dir.path().join("features")),
        "--proposals",
        p(dir.path()),
        "--out",
        p(&again),
        "--set",
        "caption.mode=language_free",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("captioned 120 videos"),
        "{}",
        text(&out)
    );
    let recaptioned: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(again.join("proposals/synth_00000.json")).unwrap(),
    )
    .unwrap();
    let original: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("proposals/synth_00000.json")).unwrap(),
    )
    .unwrap();
    for (a, b) in recaptioned["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .zip(original["proposals"].as_array().unwrap())
    {
        assert_eq!((&a["start"], &a["end"]), (&b["start"], &b["end"]));
        assert!(a.get("tokens").is_none());
        let embedding = a["query_embedding"].as_array().unwrap();
        assert_eq!(embedding.len(), 64, "the appearance stream's width");
        let norm: f64 = embedding.iter().map(|v| v.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    let detr = std::fs::read_to_string(again.join("dataset/moment_detr.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(detr.lines().next().unwrap()).unwrap();
    assert_eq!(line["query_embedding"].as_array().unwrap().len(), 64);

    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("proposals/synth_00000.json")).unwrap(),
    )
    .unwrap();
    let proposals = result["proposals"].as_array().unwrap();
    assert!(!proposals.is_empty());
    let scores: Vec<f64> = proposals
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect();
    let duration = result["duration"].as_f64().unwrap();
    for p in proposals {
        let (s, e) = (p["start"].as_f64().unwrap(), p["end"].as_f64().unwrap());
        assert!(0.0 <= s && s < e && e <= duration + 1e-9);
    }
    assert!(scores[0] >= scores[1], "best first: {scores:?}");
    let events = result["atomic_events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()[0].as_f64(), Some(0.0));
    assert!((events.last().unwrap()[1].as_f64().unwrap() - duration).abs() < 1e-9);
}

#[test]
fn every_malformed_kind_is_reported_by_name_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    std::fs::create_dir(&inbox).unwrap();
    let cases = malformed_cases();
    for case in &cases {
        std::fs::write(inbox.join(case.name), &case.bytes).unwrap();
        let stem = case.name.rsplit_once('.').unwrap().0;
        if case.name != "noduration.npy" {
            std::fs::write(inbox.join(format!("{stem}.json")), r#"{"duration": 20}"#).unwrap();
        }
    }
    let good = f32_bytes((0..40 * 8).map(|i| ((i * 7) % 13) as f32));
    std::fs::write(inbox.join("good.npy"), npy("<f4", "(40, 8)", &good)).unwrap();
    std::fs::write(inbox.join("good.json"), r#"{"duration": 20}"#).unwrap();
    let out_dir = dir.path().join("out");

    let lf = ["--set", "caption.mode=language_free"];
    let out = momentminer(&[&["propose", p(&inbox), "--out", p(&out_dir)][..], &lf].concat());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("proposed 1 videos"), "{report}");
    assert!(
        report.contains(&format!("{} inputs failed", cases.len())),
        "{report}"
    );
    for case in &cases {
        let line = report
            .lines()
            .find(|l| l.contains(case.name))
            .unwrap_or_else(|| panic!("{} not reported:\n{report}", case.name));
        assert!(
            line.contains(case.message),
            "{}: expected '{}' in '{line}'",
            case.name,
            case.message
        );
    }
    assert!(out_dir.join("proposals/good.json").exists());
    let written: Vec<_> = std::fs::read_dir(out_dir.join("proposals"))
        .unwrap()
        .collect();
    assert_eq!(
        written.len(),
        1,
        "only the good file has a result, and no temporaries"
    );

    let strict = momentminer(
        &[
            &["propose", p(&inbox), "--out", p(&out_dir), "--strict"][..],
            &lf,
        ]
        .concat(),
    );
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict));
}

#[test]
fn real_clip_features_run_end_to_end_with_a_picture() {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/univtg/vid.npz");
    assert!(
        real.exists(),
        "{} is missing: tests expect ../shared beside the checkout",
        real.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // One CLIP feature per 2 s clip.
    let out = momentminer(&[
        "propose",
        p(&real),
        "--out",
        p(dir.path()),
        "--set",
        "ingest.features_per_second=0.5",
        "--set",
        "caption.mode=language_free",
        "--strict",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("proposals/vid.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["duration"].as_f64(), Some(30.0));
    assert_eq!(result["steps"].as_u64(), Some(15));
    assert!(!result["proposals"].as_array().unwrap().is_empty());

    let png = dir.path().join("vid.png");
    let out = momentminer(&[
        "inspect",
        p(&real),
        "--png",
        p(&png),
        "--set",
        "ingest.features_per_second=0.5",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
}

#[test]
fn hdf5_files_with_many_videos_and_a_durations_map() {
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("c3d.h5");
    {
        let file = hdf5::File::create(&h5).unwrap();
        for (vid, frames) in [("v_one", 90usize), ("v_two", 300)] {
            let data = ndarray::Array2::<f32>::from_shape_fn((frames, 500), |(t, d)| {
                ((t / 30 + 1) * (d % 7 + 1)) as f32 + ((t * 31 + d * 17) % 11) as f32 * 0.1
            });
            file.create_group(vid)
                .unwrap()
                .new_dataset_builder()
                .with_data(&data)
                .create("c3d_features")
                .unwrap();
        }
        let bad = ndarray::Array2::<f32>::from_elem((5, 500), f32::NAN);
        file.create_group("v_bad")
            .unwrap()
            .new_dataset_builder()
            .with_data(&bad)
            .create("c3d_features")
            .unwrap();
        file.close().unwrap();
    }
    let durations = dir.path().join("durations.json");
    std::fs::write(
        &durations,
        r#"{"v_one": {"duration": 45.0}, "v_two": {"duration": 150.5}, "v_bad": 3}"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let setting = format!("ingest.durations_file={}", p(&durations));
    let out = momentminer(&[
        "propose",
        p(&h5),
        "--out",
        p(&out_dir),
        "--set",
        &setting,
        "--set",
        "caption.mode=off",
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("proposed 2 videos"), "{report}");
    assert!(
        report.contains("[v_bad]") && report.contains("NaN/Inf"),
        "{report}"
    );
    for (vid, duration) in [("v_one", 45.0), ("v_two", 150.5)] {
        let result: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join(format!("proposals/{vid}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(result["duration"].as_f64(), Some(duration));
    }
}

#[test]
fn configuration_mistakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = momentminer(&[
        "propose",
        p(dir.path()),
        "--out",
        p(dir.path()),
        "--set",
        "events.kk=3",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("events.kk=3"), "{}", text(&out));
    let missing: PathBuf = dir.path().join("nope.toml");
    let out = momentminer(&[
        "propose",
        p(dir.path()),
        "--out",
        p(dir.path()),
        "--config",
        p(&missing),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("nope.toml"), "{}", text(&out));
}

/// With the default `caption.mode = "auto"`, features no tower fits still get their proposals:
/// with no tower at all, and with one of another width; the log says once what to set.
#[test]
fn by_default_real_features_get_proposals_without_a_fitting_tower() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("i3d");
    std::fs::create_dir_all(&inputs).unwrap();
    for (i, vid) in ["AO8RW", "3MSZA"].iter().enumerate() {
        std::fs::write(inputs.join(format!("{vid}.npy")), good_npy(80, 1024, i)).unwrap();
    }
    let world = dir.path().join("world");
    let out = momentminer(&["synth", "--out", p(&world), "--videos", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let world_settings = world.join("caption.toml");
    for (run, extra) in [
        ("none", vec![]),
        ("unfit", vec!["--config", p(&world_settings)]),
    ] {
        let out_dir = dir.path().join(run);
        let mut args = vec![
            "propose",
            p(&inputs),
            "--out",
            p(&out_dir),
            "--set",
            "ingest.features_per_second=1",
        ];
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_momentminer"))
            .args(&args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        for vid in ["AO8RW", "3MSZA"] {
            let result: serde_json::Value = serde_json::from_slice(
                &std::fs::read(out_dir.join(format!("proposals/{vid}.json"))).unwrap(),
            )
            .unwrap();
            let proposals = result["proposals"].as_array().unwrap();
            assert!(!proposals.is_empty(), "{result}");
            let no_query = |p: &serde_json::Value| p.get("query").is_none_or(|q| q == "");
            assert!(proposals.iter().all(no_query), "{result}");
        }
        let told = match run {
            "none" => "caption.tower_anchors",
            _ => "such videos get proposals without pseudo-queries",
        };
        assert_eq!(report.matches(told).count(), 1, "{report}");
    }
}

#[test]
fn captioning_mistakes_are_clear_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/univtg/vid.npz");
    // A world without an appearance stream: its tower reads its 1024-d stream.
    let world = dir.path().join("world");
    let out = momentminer(&[
        "synth",
        "--out",
        p(&world),
        "--videos",
        "1",
        "--set",
        "synth.clip_dim=0",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let world_settings = world.join("caption.toml");
    let run = |args: &[&str]| {
        let mut all = vec![
            "propose",
            p(&real),
            "--out",
            p(dir.path()),
            "--set",
            "ingest.features_per_second=0.5",
            "--set",
            "caption.mode=vocabulary",
        ];
        all.extend(args);
        let out = momentminer(&all);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(!dir.path().join("proposals/vid.json").exists());
        let report = text(&out);
        let first_line = report
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("");
        let message = first_line.trim_start_matches("error: ");
        if let Some(cut) = message.get(..40) {
            assert_eq!(message.matches(cut).count(), 1, "said twice: {message}");
        }
        report
    };
    // Words asked for and nothing says which tower scores them: the error names what to set.
    let report = run(&[]);
    assert!(
        report.contains("caption.clip_text_model") && report.contains("caption.tower_anchors"),
        "{report}"
    );
    // 512-d CLIP features against that world's 1024-d tower.
    let report = run(&["--config", p(&world_settings)]);
    assert!(
        report.contains("vid.npz") && report.contains("512 dimensions") && report.contains("1024"),
        "{report}"
    );
    let report = run(&[
        "--config",
        p(&world_settings),
        "--set",
        "caption.visual_stream=siglip",
    ]);
    assert!(
        report.contains("\"siglip\"") && report.contains("caption.visual_stream"),
        "{report}"
    );
    let empty = dir.path().join("empty-vocab.json");
    std::fs::write(&empty, r#"{"verbs": [], "nouns": []}"#).unwrap();
    let empty_vocabulary = format!("caption.vocabulary={}", p(&empty));
    let report = run(&["--config", p(&world_settings), "--set", &empty_vocabulary]);
    assert!(
        report.contains("empty-vocab.json") && report.contains("at least one verb"),
        "{report}"
    );
    let vocabulary = dir.path().join("vocab.json");
    std::fs::write(&vocabulary, r#"{"verbs": ["open"], "nouns": ["door"]}"#).unwrap();
    let vocabulary = format!("caption.vocabulary={}", p(&vocabulary));
    let report = run(&[
        "--set",
        &vocabulary,
        "--set",
        "caption.clip_text_model=/nonexistent/text.onnx",
        "--set",
        "caption.clip_tokenizer=models/fixtures/clip/tokenizer.json",
    ]);
    assert!(report.contains("/nonexistent/text.onnx"), "{report}");
    let report = run(&[
        "--set",
        "caption.clip_text_model=models/fixtures/clip/hf_text.onnx",
    ]);
    assert!(
        report.contains("caption.clip_tokenizer is not set"),
        "{report}"
    );
    let report = run(&[
        "--set",
        "caption.clip_text_model=models/fixtures/clip/hf_text.onnx",
        "--set",
        "caption.clip_tokenizer=models/fixtures/clip/tokenizer.json",
    ]);
    assert!(report.contains("caption.vocabulary is not set"), "{report}");
}

#[test]
fn demo_and_bench_run_on_small_worlds() {
    let dir = tempfile::tempdir().unwrap();
    let out = momentminer(&[
        "demo",
        "--out",
        p(dir.path()),
        "--set",
        "synth.videos=30",
        "--set",
        "synth.dim=64",
        "--set",
        "synth.clip_dim=32",
        "--epochs",
        "1",
        "--test-videos",
        "6",
        "--set",
        "train.steps=32",
        "--set",
        "train.hidden=32",
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("proposed 30 videos"), "{report}");
    assert!(row(&report, "proposals").len() == 12, "{report}");
    // The whole loop: trained, grounded, evaluated against the baselines and the ceiling.
    for step in ["5/6", "ground \"", "6/6", "text similarity", "the ceiling"] {
        assert!(report.contains(step), "{step}\n{report}");
    }

    let out = momentminer(&[
        "bench",
        "--videos",
        "20",
        "--frames-min",
        "40",
        "--frames-max",
        "80",
        "--dim",
        "32",
        "--repeats",
        "1",
        "--dir",
        p(&dir.path().join("bench")),
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("median:") && report.contains("similarity"),
        "{report}"
    );
}

#[test]
fn sentences_are_encoded_and_a_missing_runtime_is_a_clear_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = |key: &str, rel: &str| format!("caption.{key}={}", root.join(rel).display());
    let library = set(
        "ort_library",
        ".cache/models/onnxruntime/libonnxruntime.so.1.31.1",
    );
    let model = set("text_model", ".cache/models/minilm/model.onnx");
    let tokenizer = set("text_tokenizer", ".cache/models/minilm/tokenizer.json");
    let out = momentminer(&[
        "encode-text",
        "open the door",
        "a person is opening the door.",
        "--set",
        &library,
        "--set",
        &model,
        "--set",
        &tokenizer,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["ids"][1], 1037, "the tokenizer's id for 'a'");
    let vector = |i: usize| -> Vec<f64> {
        lines[i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let cosine: f64 = vector(0).iter().zip(vector(1)).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.5 && cosine < 1.0, "{cosine}");
    let missing = momentminer(&[
        "encode-text",
        "x",
        "--set",
        "caption.ort_library=/nowhere/libonnxruntime.so.1.31.1",
    ]);
    assert_eq!(missing.status.code(), Some(2));
    let message = text(&missing);
    assert!(
        message.contains("/nowhere/libonnxruntime.so.1.31.1") && message.contains("fetch-models"),
        "{message}"
    );
}

/// A FIFO named like a feature file, or a sidecar that is a FIFO or a link to /dev/zero, would
/// block `propose` forever; each is refused with its reason and the batch goes on. A file named
/// three times is proposed once.
#[test]
fn propose_refuses_what_would_block_it_and_takes_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    let good = npy(
        "<f4",
        "(40, 8)",
        &f32_bytes((0..320).map(|i| (i % 13) as f32)),
    );
    let mkfifo = |path: &Path| {
        let name = std::ffi::CString::new(p(path)).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
    };
    mkfifo(&folder.join("pipe.npy"));
    std::fs::write(folder.join("fifoside.npy"), &good).unwrap();
    mkfifo(&folder.join("fifoside.json"));
    std::fs::write(folder.join("zeroside.npy"), &good).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("zeroside.json")).unwrap();
    std::fs::write(folder.join("good.npy"), &good).unwrap();
    std::fs::write(folder.join("good.json"), r#"{"duration": 20}"#).unwrap();
    let good_path = folder.join("good.npy");
    let out_dir = dir.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args([
            "propose",
            p(&folder),
            p(&good_path),
            p(&good_path),
            "--out",
            p(&out_dir),
        ])
        .args(["--set", "caption.mode=language_free"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, std::time::Duration::from_secs(60), "propose");
    let mut report = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut report).unwrap();
    assert!(status.success(), "{report}");
    assert!(report.contains("proposed 1 videos"), "{report}");
    let failed =
        |name: &str, says: &str| report.lines().any(|l| l.contains(name) && l.contains(says));
    assert!(failed("pipe.npy", "not a regular file"), "{report}");
    assert!(failed("fifoside.npy", "fifoside.json"), "{report}");
    assert!(failed("zeroside.npy", "not a regular file"), "{report}");
    let psvl = std::fs::read_to_string(out_dir.join("dataset/psvl.json")).unwrap();
    let labels: Vec<serde_json::Value> = serde_json::from_str(&psvl).unwrap();
    let proposals: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("proposals/good.json")).unwrap(),
    )
    .unwrap();
    let pairs = proposals["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["superseded"] != true)
        .count();
    assert_eq!(
        labels.len(),
        pairs,
        "the video's labels appear once, not three times"
    );
}

/// `check` says, one line each, whether a run has what it needs, and names what to set when
/// it does not: a tower of the wrong width for the sample, a missing model, a folder that
/// cannot be written.
#[test]
fn check_names_what_is_wrong_before_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    let out = momentminer(&["synth", "--out", p(&world), "--videos", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let settings = world.join("caption.toml");
    let sample = std::fs::read_dir(world.join("features"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.extension().is_some_and(|e| e == "npz"))
        .expect("a world video");
    let i3d = dir.path().join("i3d.npy");
    std::fs::write(&i3d, good_npy(40, 1024, 1)).unwrap();
    let folders = |root: &str| {
        ["inbox", "output", "quarantine", "state"]
            .map(|key| format!("daemon.{key}={}", p(&dir.path().join(root).join(key))))
    };
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--config",
            p(&settings),
            "--set",
            "ingest.features_per_second=1",
        ];
        let folders = folders("run");
        for setting in &folders {
            args.extend(["--set", setting.as_str()]);
        }
        args.extend(extra);
        momentminer(&args)
    };
    let out = check(&["--sample", p(&sample), "--print"]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("FAIL"), "{report}");
    assert!(report.contains("ok    captions: words of a"), "{report}");
    assert!(report.contains("ok    compute: "), "{report}");
    assert!(
        report.contains("[caption]") && report.contains("tower_anchors"),
        "{report}"
    );
    // A tower that does not fit the sample, with words asked for.
    let out = check(&["--sample", p(&i3d), "--set", "caption.mode=vocabulary"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  sample input") && report.contains("caption.visual_stream"),
        "{report}"
    );
    // A model that is not there.
    let out = check(&[
        "--set",
        "caption.clip_text_model=/nonexistent/text.onnx",
        "--set",
        "caption.clip_tokenizer=models/fixtures/clip/tokenizer.json",
    ]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  captions") && report.contains("/nonexistent/text.onnx"),
        "{report}"
    );
    // A folder that cannot be written.
    let out = check(&["--set", "daemon.output=/proc/momentminer-out"]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  output folder: /proc/momentminer-out"),
        "{report}"
    );
    // A configuration that does not load is a failed check too.
    let out = check(&["--set", "events.k=0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL  configuration: invalid configuration: events.k"),
        "{}",
        text(&out)
    );
}

/// Each preset of config/presets/ reads its release's layout end to end: a small world written
/// in that layout (`synth --release`), proposed with the preset, and its annotation file read
/// back in the release's own format for `eval-proposals`.
#[test]
fn every_preset_reads_its_release_layout_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    let releases = [
        (
            "charades-i3d",
            "i3d_features",
            "charades_sta_test.txt",
            "charades",
            Some("durations.json"),
        ),
        (
            "activitynet-c3d",
            "sub_activitynet_v1-3.c3d.hdf5",
            "val_1.json",
            "activitynet",
            Some("val_1.json"),
        ),
        (
            "qvhighlights-clip",
            "clip_features",
            "highlight_val_release.jsonl",
            "moment-detr",
            None,
        ),
        (
            "tacos-c3d",
            "tall_c3d_features.hdf5",
            "test.json",
            "tacos",
            Some("test.json"),
        ),
        (
            "didemo",
            "didemo_features.h5",
            "val_data.json",
            "didemo",
            None,
        ),
        (
            "mad-clip",
            "CLIP_frames_features_5fps.h5",
            "MAD_val.json",
            "mad",
            None,
        ),
    ];
    for (release, features, annotations, format, durations) in releases {
        let out = momentminer(&[
            "synth",
            "--out",
            p(&world),
            "--videos",
            "3",
            "--release",
            release,
        ]);
        assert!(out.status.success(), "{release}: {}", text(&out));
        let layout = world.join(release);
        let run = layout.join("run");
        let preset = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/presets")
            .join(format!("{release}.toml"));
        let durations_setting =
            durations.map(|d| format!("ingest.durations_file={}", p(&layout.join(d))));
        let features = layout.join(features);
        let mut args = vec![
            "propose",
            p(&features),
            "--out",
            p(&run),
            "--config",
            p(&preset),
        ];
        if let Some(setting) = &durations_setting {
            args.extend(["--set", setting.as_str()]);
        }
        let out = momentminer(&args);
        assert!(out.status.success(), "{release}: {}", text(&out));
        let results = std::fs::read_dir(run.join("proposals")).unwrap().count();
        assert_eq!(results, 3, "{release}: {}", text(&out));
        let out = momentminer(&[
            "eval-proposals",
            "--gt",
            p(&layout.join(annotations)),
            "--format",
            format,
            "--proposals",
            p(&run),
        ]);
        let report = text(&out);
        assert!(out.status.success(), "{release}: {report}");
        let ours = report
            .lines()
            .find(|l| l.starts_with("proposals"))
            .unwrap_or("");
        assert!(!ours.is_empty(), "{release}: {report}");
    }
}

/// Checks that every non-void element of `html` is closed in order; returns the first
/// mismatch.
fn balanced(html: &str) -> Result<(), String> {
    const VOID: [&str; 4] = ["meta", "img", "input", "br"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>').ok_or("a tag is never closed")?;
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if tag.starts_with('/') {
            match open.pop() {
                Some(last) if last == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else if !VOID.contains(&name.as_str()) && !tag.ends_with('/') {
            open.push(name.clone());
        }
        if name == "script" && !tag.starts_with('/') {
            // Script text is not markup.
            let close = rest.find("</script>").ok_or("a script is never closed")?;
            rest = &rest[close..];
        }
    }
    match open.is_empty() {
        true => Ok(()),
        false => Err(format!("never closed: {open:?}")),
    }
}

/// `report` makes a static site of a run: every video linked from the index, every page and
/// picture present, well-formed HTML without external assets.
#[test]
fn the_report_links_every_video_and_its_picture() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    let out = momentminer(&["synth", "--out", p(&world), "--videos", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    let settings = world.join("caption.toml");
    let run = dir.path().join("run");
    let out = momentminer(&[
        "propose",
        p(&world.join("features")),
        "--out",
        p(&run),
        "--config",
        p(&settings),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let site = dir.path().join("report");
    let out = momentminer(&[
        "report",
        p(&run),
        "--out",
        p(&site),
        "--gt",
        p(&world.join("gt.jsonl")),
        "--config",
        p(&settings),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("5 videos (5 with a self-similarity picture)"));
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    balanced(&index).unwrap_or_else(|e| panic!("index.html: {e}"));
    for expected in [
        "R@1",
        "proposals",
        "sliding windows",
        "pseudo-queries",
        "<script>",
        // The batch run's throughput, from its run.json.
        "videos/s",
        "s wall clock",
    ] {
        assert!(index.contains(expected), "{expected}");
    }
    let links: Vec<&str> = index
        .split("href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .collect();
    assert_eq!(links.len(), 5, "{links:?}");
    for link in links {
        let page = std::fs::read_to_string(site.join(link)).unwrap();
        balanced(&page).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert!(page.contains("truth: "), "{link}: no true moment drawn");
        let src = page.split("<img src=\"").nth(1).expect("a picture");
        let picture = site.join("videos").join(&src[..src.find('"').unwrap()]);
        assert_eq!(&std::fs::read(&picture).unwrap()[..4], b"\x89PNG", "{link}");
    }
    let all = std::fs::read_dir(site.join("videos"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .chain([index])
        .collect::<String>();
    for external in ["src=\"http", "href=\"http", "url(", "@import"] {
        assert!(!all.contains(external), "an external asset: {external}");
    }
}
