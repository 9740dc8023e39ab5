//! The grounding loop through the real binary on a small synthetic world: propose and caption,
//! train (and resume), ground, eval with baselines, and the mistakes users make.

mod common;

use common::{momentminer, p, text};
use serde_json::Value;
use std::path::Path;

/// A small model and world, so a test trains in seconds.
const SMALL: [&str; 16] = [
    "--set",
    "synth.dim=64",
    "--set",
    "synth.clip_dim=32",
    "--set",
    "train.steps=32",
    "--set",
    "train.projection=32",
    "--set",
    "train.hidden=32",
    "--set",
    "train.batch=32",
    "--set",
    "train.validation_share=0.2",
    "--set",
    "synth.videos=24",
];

fn run(args: &[&str]) -> (bool, String) {
    let all = [args, &SMALL[..]].concat();
    let out = momentminer(&all);
    (out.status.success(), text(&out))
}

/// `train` on `dataset` over `features` into `out`, with the world's caption settings
/// (`caption`, its caption.toml) and `settings` (`key=value`).
fn train_args<'a>(
    caption: &'a Path,
    dataset: &'a Path,
    features: &'a Path,
    out: &'a Path,
    settings: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--config",
        p(caption),
        "--dataset",
        p(dataset),
        "--features",
        p(features),
        "--out",
        p(out),
    ];
    for setting in settings {
        args.extend(["--set", setting]);
    }
    args
}

/// `ground` with `model` on one `video` for one `query`, with the caption settings `caption`.
fn ground_args<'a>(
    caption: &'a Path,
    model: &'a Path,
    video: &'a Path,
    query: &'a str,
) -> [&'a str; 9] {
    [
        "ground",
        "--config",
        p(caption),
        "--model",
        p(model),
        "--features",
        p(video),
        "--query",
        query,
    ]
}

/// Proposes and captions the world in `world`; returns its caption settings file.
fn propose_world(world: &Path) -> std::path::PathBuf {
    let caption = world.join("caption.toml");
    let features = world.join("features");
    must(&[
        "propose",
        p(&features),
        "--out",
        p(world),
        "--config",
        p(&caption),
    ]);
    caption
}

fn must(args: &[&str]) -> String {
    let (ok, report) = run(args);
    assert!(ok, "{args:?}\n{report}");
    report
}

#[test]
fn train_resume_ground_and_eval_on_a_small_world() {
    let dir = tempfile::tempdir().unwrap();
    let (world, test, model) = (
        dir.path().join("w"),
        dir.path().join("t"),
        dir.path().join("m"),
    );
    must(&["synth", "--out", p(&world)]);
    must(&[
        "synth",
        "--out",
        p(&test),
        "--first-index",
        "1000",
        "--videos",
        "8",
    ]);
    let caption = propose_world(&world);

    // One epoch, then a second run that goes on from it instead of starting again.
    let dataset = world.join("dataset");
    let features = world.join("features");
    let report = must(&train_args(
        &caption,
        &dataset,
        &features,
        &model,
        &["train.epochs=1"],
    ));
    assert!(report.contains("epoch   1"), "{report}");
    let report = must(&train_args(
        &caption,
        &dataset,
        &features,
        &model,
        &["train.epochs=2"],
    ));
    assert!(
        report.contains("resumed after epoch 1") && report.contains("epoch   2"),
        "{report}"
    );
    assert!(!report.contains("epoch   1:"), "{report}");
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["format"], "momentminer-grounding");
    assert_eq!(card["history"].as_array().unwrap().len(), 2);
    assert!(card["data"]["validation_pairs"].as_u64().unwrap() > 0);
    assert!(model.join("model.safetensors").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&model)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "half-written checkpoints remain");
    // The default trains two further seeds beside the first, each a model folder of its own,
    // resumed like it, with its own weights.
    assert_eq!(
        card["members"],
        serde_json::json!(["members/seed-1", "members/seed-7"])
    );
    for (folder, seed) in [("members/seed-1", 1), ("members/seed-7", 7)] {
        let member: Value = serde_json::from_str(
            &std::fs::read_to_string(model.join(folder).join("model.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(member["config"]["seed"], seed);
        assert_eq!(member["history"].as_array().unwrap().len(), 2);
        assert_ne!(
            std::fs::read(model.join(folder).join("model.safetensors")).unwrap(),
            std::fs::read(model.join("model.safetensors")).unwrap()
        );
    }
    assert!(
        report.contains("seed 1 in") && report.contains("seed 7 in"),
        "{report}"
    );
    // The card's validation figures are those of what the folder answers with, the three seeds
    // together, not the first seed's kept epoch.
    assert!(
        report.contains("the 3 seeds together: validation loss"),
        "{report}"
    );
    let best = card["best_epoch"].as_u64().unwrap() as usize;
    assert_ne!(card["validation"], card["history"][best - 1]["validation"]);
    // A setting only answers read does not retrain, for any seed; the card takes it.
    let report = must(&train_args(
        &caption,
        &dataset,
        &features,
        &model,
        &["train.epochs=2", "train.similarity_weight=0.3"],
    ));
    assert_eq!(
        report.matches("resumed after epoch 2").count(),
        3,
        "{report}"
    );
    assert!(!report.contains("epoch   2:"), "{report}");
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["config"]["similarity_weight"], 0.3);

    // Training is deterministic: the same seed gives the same weights, also when the seeds
    // train one after the other (one thread) rather than side by side.
    let again = dir.path().join("m2");
    must(&train_args(
        &caption,
        &dataset,
        &features,
        &again,
        &["train.epochs=2", "train.threads=1"],
    ));
    for weights in [
        "model.safetensors",
        "members/seed-1/model.safetensors",
        "members/seed-7/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(model.join(weights)).unwrap(),
            std::fs::read(again.join(weights)).unwrap(),
            "{weights}: a resumed run ends where an uninterrupted one does"
        );
    }
    // train.checkpoint = "last" keeps the last epoch, whatever the validation says;
    // train.neighbour_epochs = 1 ships its weights averaged with the epoch before it, also when
    // that epoch ran before a resume; train.keep_epochs keeps every epoch's own model beside it
    // (one answers below).
    let last = dir.path().join("m3");
    for epochs in ["train.epochs=2", "train.epochs=3"] {
        must(&train_args(
            &caption,
            &dataset,
            &features,
            &last,
            &[
                epochs,
                "train.checkpoint=last",
                "train.keep_epochs=true",
                "train.neighbour_epochs=1",
            ],
        ));
    }
    let card_of = |folder: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(folder.join("model.json")).unwrap()).unwrap()
    };
    assert_eq!(card_of(&last)["best_epoch"], 3);
    assert_eq!(card_of(&last)["averaged_epochs"], serde_json::json!([2, 3]));
    let epochs = last.join("epochs");
    for epoch in 1..=3 {
        let kept = epochs.join(format!("{epoch:03}"));
        let card = card_of(&kept);
        assert_eq!(card["best_epoch"], epoch, "{card}");
        assert_eq!(card["history"].as_array().unwrap().len(), epoch);
    }
    let weights = |folder: &Path| {
        candle_core::safetensors::load(folder.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (second, third, shipped) = (
        weights(&epochs.join("002")),
        weights(&epochs.join("003")),
        weights(&last),
    );
    assert_eq!(shipped.len(), third.len());
    let mut largest_step = 0f32;
    for (name, tensor) in &shipped {
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b, mean) = (flat(&second[name]), flat(&third[name]), flat(tensor));
        for ((a, b), mean) in a.iter().zip(&b).zip(&mean) {
            assert!(
                (mean - (a + b) / 2.0).abs() <= 1e-6 * (1.0 + mean.abs()),
                "{name}"
            );
            largest_step = largest_step.max((a - b).abs());
        }
    }
    assert!(largest_step > 0.0, "epochs 2 and 3 have the same weights");
    // Each pair's word margins reach the dataset, and training weighs pairs by them when asked:
    // the same seed and data give other weights.
    let lines = std::fs::read_to_string(dataset.join("moment_detr.jsonl")).unwrap();
    for line in lines.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let margins = line["token_margins"].as_array();
        assert!(margins.is_some_and(|m| !m.is_empty()), "{line}");
    }
    let weighted = dir.path().join("weighted");
    must(&train_args(
        &caption,
        &dataset,
        &features,
        &weighted,
        &["train.epochs=2", "train.confidence_weighting=1"],
    ));
    assert_ne!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        std::fs::read(weighted.join("model.safetensors")).unwrap(),
        "weighting the pairs by confidence changed nothing"
    );
    // The 2D temporal map in place of the regression, through the same commands.
    let map = dir.path().join("map");
    must(&train_args(
        &caption,
        &dataset,
        &features,
        &map,
        &["train.epochs=1", "train.head=map", "train.map_clips=8"],
    ));
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(map.join("model.json")).unwrap()).unwrap();
    assert_eq!(card["config"]["head"], "map", "{card}");
    let (ok, report) = run(&train_args(
        &caption,
        &dataset,
        &features,
        &dir.path().join("bad-map"),
        &["train.head=map", "train.map_clips=5"],
    ));
    assert!(
        !ok && report.contains("train.map_clips") && report.contains("divide train.steps"),
        "{report}"
    );

    // A training setting of `key`, one epoch into `folder`: the card keeps it.
    let trained_with = |folder: &str, key: &str| {
        let out = dir.path().join(folder);
        let setting = format!("train.{key}=true");
        must(&train_args(
            &caption,
            &dataset,
            &features,
            &out,
            &["train.epochs=1", &setting],
        ));
        let card: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap())
                .unwrap();
        assert_eq!(card["config"][key], true, "{card}");
        out
    };
    // The tower's per-step similarity as a model input, through the same commands.
    let reads_tower = trained_with("reads-tower", "similarity_input");

    // `eval` on the test videos, with the world's caption settings and `args`.
    let (truth, test_features) = (test.join("gt.jsonl"), test.join("features"));
    let eval_on_test = |args: &[&str]| {
        let on_test = [
            "eval",
            "--config",
            p(&caption),
            "--annotations",
            p(&truth),
            "--features",
            p(&test_features),
        ];
        must(&[&on_test[..], args].concat())
    };

    // Queries read in context: every content word as written reaches the model.
    let in_context = dir.path().join("in-context");
    must(&train_args(
        &caption,
        &dataset,
        &features,
        &in_context,
        &["train.epochs=1", "train.query_words=contextual"],
    ));
    let report = eval_on_test(&["--model", p(&in_context)]);
    assert!(
        report.contains("0.0% in the lexicon") && report.contains("100.0% as written"),
        "{report}"
    );

    // The model's input without the video's shared scene.
    let sceneless = trained_with("sceneless", "remove_scene");

    let video = test.join("features/synth_01000.npz");
    let second_epoch = last.join("epochs/002");
    for trained in [
        &model,
        &map,
        &reads_tower,
        &in_context,
        &sceneless,
        &second_epoch,
    ] {
        let report = must(&[
            "ground",
            "--config",
            p(&caption),
            "--model",
            p(trained),
            "--features",
            p(&video),
            "--query",
            "a person is opening the door.",
            "--query",
            "someone eats a sandwich",
            "--top-k",
            "3",
        ]);
        let answer: Value =
            serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}"));
        let duration = answer["duration"].as_f64().unwrap();
        let answers = answer["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 2);
        for a in answers {
            let segments = a["segments"].as_array().unwrap();
            assert!(!segments.is_empty() && segments.len() <= 3, "{report}");
            for s in segments {
                let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
                assert!(
                    0.0 <= start && start <= end && end <= duration + 1e-9,
                    "{report}"
                );
            }
        }
    }

    let per_query = dir.path().join("per-query.jsonl");
    let report = eval_on_test(&[
        "--model",
        p(&model),
        "--baselines",
        "--per-query",
        p(&per_query),
    ]);
    for method in [
        "model",
        "text similarity",
        "text similarity, windows",
        "random proposal",
    ] {
        assert!(report.lines().any(|l| l.starts_with(method)), "{report}");
    }
    // The training-free grounder needs no model: the text tower alone, by default with the
    // video's shared scene taken from each span first, which ranks otherwise than the plain
    // cosine.
    let similarity_line = |report: String| {
        report
            .lines()
            .find(|l| l.starts_with("similarity"))
            .unwrap_or_else(|| panic!("{report}"))
            .to_string()
    };
    let scene_removed = similarity_line(eval_on_test(&["--method", "similarity"]));
    let plain = similarity_line(eval_on_test(&[
        "--method",
        "similarity",
        "--set",
        "caption.remove_scene=false",
    ]));
    assert_ne!(scene_removed, plain);
    let lines = std::fs::read_to_string(&per_query).unwrap();
    let annotated = std::fs::read_to_string(&truth).unwrap();
    assert_eq!(lines.lines().count(), annotated.lines().count());
}

#[test]
fn grounding_mistakes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("w");
    must(&["synth", "--out", p(&world)]);
    let caption = propose_world(&world);
    let features = world.join("features");
    let fail = |args: &[&str]| {
        let (ok, report) = run(args);
        assert!(!ok, "{args:?} succeeded:\n{report}");
        report
    };
    // Features missing for some videos of the dataset.
    let few = dir.path().join("few");
    std::fs::create_dir(&few).unwrap();
    for name in ["synth_00000.npz", "synth_00000.json"] {
        std::fs::copy(features.join(name), few.join(name)).unwrap();
    }
    let (dataset, scratch) = (world.join("dataset"), dir.path().join("m"));
    let report = fail(&train_args(&caption, &dataset, &few, &scratch, &[]));
    assert!(
        report.contains("23 of 24 videos have no feature file"),
        "{report}"
    );
    // An empty dataset.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let report = fail(&train_args(&caption, &empty, &features, &scratch, &[]));
    assert!(
        report.contains("empty.jsonl") && report.contains("no pairs"),
        "{report}"
    );

    // A trained model, then what cannot be asked of it.
    let model = dir.path().join("model");
    let truth = world.join("gt.jsonl");
    must(&train_args(
        &caption,
        &truth,
        &features,
        &model,
        &["train.epochs=1"],
    ));
    let long = "word ".repeat(40);
    let video = features.join("synth_00001.npz");
    let report = fail(&ground_args(&caption, &model, &video, &long));
    assert!(report.contains("longer than"), "{report}");
    let other = dir.path().join("wide");
    must(&["synth", "--out", p(&other), "--videos", "1", "--dim", "48"]);
    let wide = other.join("features/synth_00000.npz");
    let report = fail(&ground_args(
        &caption,
        &model,
        &wide,
        "a person opens the door",
    ));
    assert!(
        report.contains("48-d features") && report.contains("64-d"),
        "{report}"
    );
    // A member trained otherwise than the model it belongs to, or gone, is named.
    let member = model.join("members/seed-7");
    let card_path = member.join("model.json");
    let original = std::fs::read_to_string(&card_path).unwrap();
    let mut card: Value = serde_json::from_str(&original).unwrap();
    card["config"]["hidden"] = serde_json::json!(16);
    std::fs::write(&card_path, card.to_string()).unwrap();
    let ask = ground_args(&caption, &model, &video, "a person opens the door");
    let report = fail(&ask);
    assert!(
        report.contains("seed-7") && report.contains("other settings"),
        "{report}"
    );
    std::fs::write(&card_path, original).unwrap();
    let aside = dir.path().join("seed-7");
    std::fs::rename(&member, &aside).unwrap();
    let report = fail(&ask);
    assert!(
        report.contains("seed-7") && report.contains("model.json"),
        "{report}"
    );
    std::fs::rename(&aside, &member).unwrap();
    // The members vote: the first model alone scores the answers otherwise.
    let together = must(&ask);
    let main_card = model.join("model.json");
    let listed = std::fs::read_to_string(&main_card).unwrap();
    let mut alone: Value = serde_json::from_str(&listed).unwrap();
    alone["members"] = serde_json::json!([]);
    std::fs::write(&main_card, alone.to_string()).unwrap();
    let first = must(&ask);
    std::fs::write(&main_card, listed).unwrap();
    let scores = |answer: &str| -> Vec<f64> {
        let answer: Value = serde_json::from_str(answer).unwrap();
        answer["answers"][0]["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect()
    };
    assert_ne!(scores(&together), scores(&first), "{together}\n{first}");
    // --method decides whether a model is needed.
    let report = fail(&["ground", "--features", p(&video), "--query", "a door"]);
    assert!(report.contains("--model FOLDER is needed"), "{report}");
    let report = fail(&[
        "ground",
        "--method",
        "similarity",
        "--model",
        p(&model),
        "--features",
        p(&video),
        "--query",
        "a door",
    ]);
    assert!(report.contains("leave out --model"), "{report}");
    let answer = must(&[
        "ground",
        "--method",
        "similarity",
        "--config",
        p(&caption),
        "--features",
        p(&video),
        "--query",
        "a person opens the door",
    ]);
    assert!(answer.contains("\"segments\""), "{answer}");
    // The model carries the tower and vocabulary it was trained with: `eval --baselines`
    // without the caption settings scores with them, and another world's are refused.
    let report = must(&[
        "eval",
        "--model",
        p(&model),
        "--annotations",
        p(&truth),
        "--features",
        p(&features),
        "--baselines",
    ]);
    assert!(
        report.lines().any(|l| l.starts_with("text similarity")),
        "{report}"
    );
    let elsewhere = dir.path().join("elsewhere");
    must(&[
        "synth",
        "--out",
        p(&elsewhere),
        "--videos",
        "1",
        "--seed",
        "99",
    ]);
    // `ground` of "a door" on one video with the model, under `settings`.
    let ground_a_door = |settings: &Path| {
        fail(&[
            "ground",
            "--config",
            p(settings),
            "--model",
            p(&model),
            "--features",
            p(&video),
            "--query",
            "a door",
        ])
    };
    let report = ground_a_door(&elsewhere.join("caption.toml"));
    assert!(
        report.contains("another text tower") && report.contains("caption.tower_anchors"),
        "{report}"
    );
    let card_path = model.join("model.json");
    let card = std::fs::read_to_string(&card_path).unwrap();
    std::fs::write(
        &card_path,
        card.replace(
            &format!("\"version\": {}", momentminer::train::CARD_VERSION),
            "\"version\": 99",
        ),
    )
    .unwrap();
    let report = ground_a_door(&caption);
    assert!(
        report.contains("model.json") && report.contains("version 99"),
        "{report}"
    );
    assert!(Path::new(&model).join("model.safetensors").exists());
}

#[test]
fn a_development_world_on_real_structure_is_one_world_across_ranges() {
    let annotations = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/charades-sta/charades_sta_train.txt");
    assert!(
        annotations.exists(),
        "{} is missing: tests expect ../shared beside the checkout",
        annotations.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (train, held_out) = (dir.path().join("train"), dir.path().join("held-out"));
    let world = |out: &Path, first: &str| {
        must(&[
            "synth",
            "--structure",
            p(&annotations),
            "--out",
            p(out),
            "--videos",
            "40",
            "--first-index",
            first,
            "--set",
            "structure.dim=64",
        ])
    };
    world(&train, "0");
    world(&held_out, "40");
    // One projection, tower and vocabulary, whatever range is taken.
    for file in ["tower/prototypes.npy", "tower/words.txt", "vocabulary.json"] {
        assert_eq!(
            std::fs::read(train.join(file)).unwrap(),
            std::fs::read(held_out.join(file)).unwrap(),
            "{file}"
        );
    }
    let features = |world: &Path| {
        let mut vids: Vec<String> = std::fs::read_dir(world.join("features"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".npy"))
            .collect();
        vids.sort();
        vids
    };
    let (seen, unseen) = (features(&train), features(&held_out));
    assert_eq!((seen.len(), unseen.len()), (40, 40));
    assert!(seen.iter().all(|v| !unseen.contains(v)), "ranges overlap");
    // Queries are real sentences with their own windows inside their video.
    let gt = std::fs::read_to_string(held_out.join("gt.jsonl")).unwrap();
    let lines: Vec<Value> = gt
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let window = &line["relevant_windows"][0];
        let (start, end) = (window[0].as_f64().unwrap(), window[1].as_f64().unwrap());
        assert!(0.0 <= start && start < end && end <= line["duration"].as_f64().unwrap());
        assert!(line["query"].as_str().unwrap().contains(' '));
    }
    // The world's caption settings carry the whole loop: proposals with pseudo-queries and
    // the training-free grounder on the held-out range. One stream, which the tower reads: it
    // moves the answers' edges to where it sees each query begin and end, and the baseline row
    // keeps them where the proposals found them.
    propose_world(&train);
    let pairs = std::fs::read_to_string(train.join("dataset/moment_detr.jsonl")).unwrap();
    assert!(pairs.lines().count() > 10, "{pairs}");
    let report = must(&[
        "eval",
        "--method",
        "similarity",
        "--baselines",
        "--config",
        p(&held_out.join("caption.toml")),
        "--annotations",
        p(&held_out.join("gt.jsonl")),
        "--features",
        p(&held_out.join("features")),
    ]);
    let figures = |method: &str| -> Vec<f64> {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{method}  ")))
            .unwrap_or_else(|| panic!("no {method} row: {report}"));
        line[method.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    // Queries, answers per video, R@1 at IoU .3 / .5 / .7, R@5 ..., R@all ..., mIoU.
    let (moved, as_found) = (figures("similarity"), figures("text similarity"));
    assert_eq!(moved[0], as_found[0]);
    assert!(
        moved[4] > as_found[4] && moved[11] > as_found[11],
        "R@1 at IoU .7 and mIoU, edges by the tower {moved:?} against as found {as_found:?}"
    );
    let (ok, report) = run(&[
        "synth",
        "--structure",
        p(&annotations),
        "--out",
        p(&dir.path().join("past")),
        "--first-index",
        "100000",
    ]);
    assert!(!ok && report.contains("first_index = 100000"), "{report}");
}
