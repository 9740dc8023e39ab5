//! The daemon as users run it: the real binary watching a real folder, started, flooded,
//! killed with SIGKILL, stopped with SIGTERM, reloaded with SIGHUP, and restarted. Every test
//! ends by checking that each input has exactly one outcome and the outputs are whole.

mod common;

use common::{
    check_results, done_or, f32_bytes, files_in, good_npy, http_get, make_inputs, malformed_cases,
    momentminer, move_all, npy, p, text, wait_exit, wait_until,
};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

struct Service {
    dir: tempfile::TempDir,
    child: Option<Child>,
    runs: usize,
}

impl Service {
    /// A daemon with its folders in a fresh temporary folder; `extra` is appended to the
    /// `[daemon]` section of its config. Its inputs have no text tower to match, so it
    /// captions language-free.
    fn new(settle_ms: u64, extra: &str) -> Service {
        Service::with_sections(settle_ms, extra, "[caption]\nmode = \"language_free\"\n")
    }

    /// `sections` are whole sections of the config besides `[ingest]` and `[daemon]`.
    fn with_sections(settle_ms: u64, extra: &str, sections: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The tests' own defaults, unless `extra` sets the key.
        let defaults: String = [
            "commit_ms = 20",
            "shard_videos = 300",
            "shard_flush_ms = 100",
        ]
        .into_iter()
        .filter(|line| {
            let key = line.split(' ').next().unwrap();
            !extra.lines().any(|l| l.split(' ').next() == Some(key))
        })
        .map(|line| format!("{line}\n"))
        .collect();
        let config = format!(
            "{sections}\n[ingest]\nfeatures_per_second = 2.0\n\n[daemon]\ninbox = \"{}\"\noutput = \"{}\"\n\
             quarantine = \"{}\"\nstate = \"{}\"\nsettle_ms = {settle_ms}\n{defaults}\
             retry_base_ms = 100\n{extra}\n",
            p(&root.join("in")),
            p(&root.join("out")),
            p(&root.join("q")),
            p(&root.join("state")),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        std::fs::create_dir_all(root.join("in")).unwrap();
        Service {
            dir,
            child: None,
            runs: 0,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn inbox(&self) -> PathBuf {
        self.path("in")
    }

    fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// Adds a synthetic world's caption settings (its text tower and vocabulary) to the config,
    /// as a user adds those of their own CLIP export.
    fn caption_with(&self, world: &Path) {
        let settings = std::fs::read_to_string(world.join("caption.toml")).unwrap();
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(self.config())
            .unwrap();
        writeln!(config, "\n{settings}").unwrap();
    }

    fn start(&mut self) {
        self.start_with(&[]);
    }

    fn start_with(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_momentminer"))
            .args([
                "watch",
                "--log-format",
                "json",
                "--config",
                p(&self.config()),
            ])
            .env("RUST_LOG", "momentminer=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the daemon starts");
        self.child = Some(child);
        // Ready once it holds the state lock (its signal handlers are installed before that).
        wait_until(Duration::from_secs(30), || {
            done_or(self.running(), || {
                let log = std::fs::read_to_string(self.log_path(self.runs)).unwrap_or_default();
                format!("the daemon did not start:\n{log}")
            })
        });
    }

    fn running(&self) -> bool {
        let out = momentminer(&["status", "--json", "--config", p(&self.config())]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["running"] == true)
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.path(&format!("daemon-{run}.log"))
    }

    /// How often run `run` logged that it reloaded its configuration.
    fn reloads(&self, run: usize) -> usize {
        self.log(run)
            .iter()
            .filter(|l| l["fields"]["message"] == "configuration reloaded")
            .count()
    }

    /// The JSON log lines of one run.
    fn log(&self, run: usize) -> Vec<Value> {
        std::fs::read_to_string(self.log_path(run))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit status, which must come within `limit`.
    fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        wait_exit(&mut child, limit, "the daemon, after SIGTERM,")
    }

    fn status(&self) -> Value {
        let out = momentminer(&["status", "--json", "--config", p(&self.config())]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until the ledger shows `finished` inputs done or quarantined and nothing waiting.
    fn wait_finished(&mut self, finished: u64, limit: Duration) -> Value {
        wait_until(limit, || {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "the daemon exited ({status}):\n{}",
                        std::fs::read_to_string(self.log_path(self.runs)).unwrap_or_default()
                    );
                }
            }
            if !self.path("state/ledger.sqlite").exists() {
                return Err("no ledger yet".into());
            }
            let status = self.status();
            let c = counts(&status);
            if c["done"] + c["quarantined"] == finished && c["queued"] + c["retry"] == 0 {
                Ok(status)
            } else {
                Err(format!("{c:?}"))
            }
        })
    }

    /// Waits until the running daemon has rescanned its inbox at start-up and says nothing is
    /// waiting: whatever it would redo would be settling by then.
    fn wait_idle_after_start_up(&self) {
        wait_until(Duration::from_secs(30), || {
            let status = self.status();
            let activity = &status["activity"];
            let idle = activity["rescans"].as_u64() >= Some(1) && activity["waiting"] == 0;
            done_or(idle, || format!("{status}"))
        });
    }

    fn proposal_files(&self) -> Vec<PathBuf> {
        files_in(&self.path("out/proposals"))
    }

    fn check_outputs(&self, vids: &HashSet<String>) {
        check_results(&self.path("out/proposals"), &self.path("out/dataset"), vids);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn counts(status: &Value) -> HashMap<String, u64> {
    status["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The "done" events of one run's log: which inputs that run processed.
fn processed_in_run(service: &Service, run: usize) -> usize {
    service
        .log(run)
        .iter()
        .filter(|l| l["fields"]["message"] == "done")
        .count()
}

#[test]
fn a_burst_of_2000_files_is_done_once_each() {
    let mut service = Service::new(150, "");
    let staging = service.path("staging");
    let vids = make_inputs(&staging, 2000, 0, 32);
    service.start();
    // Half are copied (visible while being written), half renamed in.
    for (i, file) in files_in(&staging).into_iter().enumerate() {
        let target = service.inbox().join(file.file_name().unwrap());
        if i % 2 == 0 {
            std::fs::copy(&file, &target).unwrap();
        } else {
            std::fs::rename(&file, &target).unwrap();
        }
    }
    let status = service.wait_finished(2000, Duration::from_secs(240));
    assert_eq!(counts(&status)["done"], 2000);
    assert_eq!(status["videos"], 2000);
    assert!(status["running"].as_bool().unwrap());
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&vids);
    assert_eq!(processed_in_run(&service, 1), 2000);
    // A restart finds everything already done.
    service.start();
    service.wait_idle_after_start_up();
    assert!(service.terminate(Duration::from_secs(30)).success());
    assert_eq!(
        processed_in_run(&service, 2),
        0,
        "a restart redid finished work"
    );
}

#[test]
fn synthetic_world_files_get_pseudo_queries_in_every_shard_format() {
    let world = "[synth]\ndim = 64\nclip_dim = 32\nvideos = 40\n";
    let mut service = Service::with_sections(150, "", world);
    let corpus = service.path("world");
    let config = service.config();
    let out = momentminer(&["synth", "--out", p(&corpus), "--config", p(&config)]);
    assert!(out.status.success(), "{}", text(&out));
    service.caption_with(&corpus);
    service.start();
    move_all(&corpus.join("features"), &service.inbox());
    let status = service.wait_finished(40, Duration::from_secs(120));
    assert_eq!(counts(&status).get("done"), Some(&40), "{status}");
    assert!(service.terminate(Duration::from_secs(30)).success());
    let vids: HashSet<String> = (0..40).map(|i| format!("synth_{i:05}")).collect();
    service.check_outputs(&vids);
    let shard = |name: &str| std::fs::read_to_string(service.path(&format!("out/dataset/{name}")));
    let psvl: Vec<Value> = serde_json::from_str(&shard("psvl-000001.json").unwrap()).unwrap();
    assert!(psvl
        .iter()
        .all(|e| e["tokens"].as_array().unwrap().len() == 2));
    let charades = shard("charades-000001.txt").unwrap();
    assert_eq!(charades.lines().count(), psvl.len());
    // The ledger keeps each pair's word margins for the Moment-DETR shard (what training weighs
    // pairs by).
    let detr = shard("moment_detr-000001.jsonl").unwrap();
    assert_eq!(detr.lines().count(), psvl.len());
    for line in detr.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let margins = line["token_margins"].as_array();
        assert!(margins.is_some_and(|m| m.len() == 2), "{line}");
    }
    // The daemon's output is a dataset the evaluation reads: captions name the planted events.
    let out = momentminer(&[
        "eval-proposals",
        "--gt",
        p(&corpus.join("gt.jsonl")),
        "--proposals",
        p(&service.path("out")),
        "--config",
        p(&config),
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let captioner = report
        .lines()
        .find(|l| l.starts_with("captioner"))
        .unwrap_or_else(|| panic!("{report}"));
    let column = |n: usize| -> f64 {
        let cell = captioner.split_whitespace().nth(n).unwrap_or_default();
        cell.trim_end_matches('%').parse().unwrap_or(0.0)
    };
    // The noun: in a 32-d appearance stream a still's trace of the verb is lost in the noise.
    assert!(column(3) > 60.0, "{report}");
}

#[test]
fn the_daemon_retrains_in_the_background_and_swaps_the_model_in() {
    let sections = "[synth]\ndim = 64\nclip_dim = 32\nvideos = 30\n\n\
                    [train]\nsteps = 32\nprojection = 32\nhidden = 32\nbatch = 32\nepochs = 2\n\
                    validation_share = 0.2\nretrain_after_videos = 20\n";
    let mut service = Service::with_sections(150, "", sections);
    let corpus = service.path("world");
    let out = momentminer(&[
        "synth",
        "--out",
        p(&corpus),
        "--config",
        p(&service.config()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    service.caption_with(&corpus);
    service.start();
    move_all(&corpus.join("features"), &service.inbox());
    service.wait_finished(30, Duration::from_secs(120));
    let current = service.path("out/models/current");
    wait_until(Duration::from_secs(180), || {
        done_or(current.exists(), || {
            let log = service.path("out/models/.work/v0001/train.log");
            let log = std::fs::read_to_string(log).unwrap_or_default();
            format!("no model version appeared:\n{log}")
        })
    });
    let version = std::fs::read_to_string(&current).unwrap();
    assert_eq!(version, "v0001");
    assert!(service.path("out/models/v0001/model.safetensors").exists());
    assert!(
        !service.path("out/models/.work/v0001").exists(),
        "the work folder is cleared"
    );
    let status = service.status();
    let models = status["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{status}");
    assert_eq!(models[0]["current"], true);
    assert!(models[0]["pairs"].as_u64().unwrap() > 0);
    // The version trained on the daemon's own dataset answers questions.
    let video = service.inbox().join("synth_00003.npz");
    let out = momentminer(&[
        "ground",
        "--model",
        p(&service.path("out/models/v0001")),
        "--features",
        p(&video),
        "--query",
        "a person is opening the door.",
        "--config",
        p(&service.config()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[test]
fn kill_9_at_random_instants_loses_and_duplicates_nothing() {
    let total: usize = std::env::var("MOMENTMINER_SOAK_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill -9 instants from seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut service = Service::new(150, "");
    let staging = service.path("staging");
    let vids = make_inputs(&staging, total, 0, 256);
    service.start();
    move_all(&staging, &service.inbox());
    let mut killed_mid_work = 0;
    for k in 1..=3u64 {
        // Around a quarter, a half and three quarters of the way, give or take a tenth.
        let tenth = total as u64 / 10;
        let target = (total as u64 * k / 4 + next() % (2 * tenth).max(1)).saturating_sub(tenth);
        wait_until(Duration::from_secs(300), || {
            let done = counts(&service.status())["done"];
            done_or(done >= target, || format!("{done} done"))
        });
        service.kill9();
        let done = counts(&service.status())["done"];
        eprintln!("killed at {done} of {total} done (aimed at {target})");
        killed_mid_work += usize::from(done < total as u64);
        service.start();
    }
    assert!(
        killed_mid_work > 0,
        "no kill landed while work was in progress"
    );
    service.wait_finished(total as u64, Duration::from_secs(600));
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&vids);
    service.start();
    service.wait_idle_after_start_up();
    assert!(service.terminate(Duration::from_secs(30)).success());
    assert_eq!(processed_in_run(&service, service.runs), 0);
}

#[test]
fn files_that_arrive_while_it_is_down_are_processed() {
    let mut service = Service::new(150, "");
    let mut vids = make_inputs(&service.inbox(), 20, 0, 32);
    service.start();
    service.wait_finished(20, Duration::from_secs(60));
    assert!(service.terminate(Duration::from_secs(30)).success());
    vids.extend(make_inputs(&service.inbox(), 15, 100, 32));
    service.start();
    service.wait_finished(35, Duration::from_secs(60));
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&vids);
    assert_eq!(processed_in_run(&service, 2), 15);
}

#[test]
fn malformed_inputs_end_in_quarantine_with_reasons_and_the_daemon_stays_up() {
    let mut service = Service::new(1000, "");
    let inbox = service.inbox();
    let outside = service.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("real.npy"), good_npy(50, 16, 1)).unwrap();
    // Durations come from sidecars only, so a file without one is bad input.
    let config = std::fs::read_to_string(service.config()).unwrap();
    let config = config.replace("features_per_second = 2.0", "features_per_second = 0.0");
    std::fs::write(service.config(), config).unwrap();
    let sidecar = |path: &Path| std::fs::write(path.with_extension("json"), r#"{"duration": 30}"#);
    service.start();
    let mut expected: HashMap<String, &str> = HashMap::new();
    for case in malformed_cases() {
        let stem = case.name.rsplit_once('.').unwrap().0;
        if case.name != "noduration.npy" {
            std::fs::write(inbox.join(format!("{stem}.json")), r#"{"duration": 20}"#).unwrap();
        }
        std::fs::write(inbox.join(case.name), &case.bytes).unwrap();
        expected.insert(case.name.to_string(), case.reason);
    }
    std::os::unix::fs::symlink(outside.join("real.npy"), inbox.join("into.npy")).unwrap();
    expected.insert("into.npy".into(), "symlink");
    std::os::unix::fs::symlink(&outside, inbox.join("out-of-inbox")).unwrap();
    std::fs::write(inbox.join("notes.txt"), "not features").unwrap();
    expected.insert("notes.txt".into(), "unsupported_type");
    let fifo = std::ffi::CString::new(p(&inbox.join("pipe.npy"))).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    expected.insert("pipe.npy".into(), "not_regular_file");
    std::fs::write(inbox.join("badside.npy"), good_npy(30, 16, 2)).unwrap();
    std::fs::write(inbox.join("badside.json"), "{not json").unwrap();
    expected.insert("badside.npy".into(), "bad_sidecar");
    // Sidecars are inputs too: one that would block a reader (a FIFO) or never end (a link to
    // /dev/zero) is refused, never waited on.
    std::fs::write(inbox.join("fifoside.npy"), good_npy(30, 16, 3)).unwrap();
    let fifo_sidecar = std::ffi::CString::new(p(&inbox.join("fifoside.json"))).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_sidecar.as_ptr(), 0o644) }, 0);
    expected.insert("fifoside.npy".into(), "bad_sidecar");
    std::fs::write(inbox.join("zeroside.npy"), good_npy(30, 16, 4)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", inbox.join("zeroside.json")).unwrap();
    expected.insert("zeroside.npy".into(), "bad_sidecar");
    let mut vids = HashSet::new();
    for name in ["a..b.npy", "my video é.npy", "sub/deeper.npy"] {
        let path = inbox.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        sidecar(&path).unwrap();
        std::fs::write(&path, good_npy(60, 16, name.len())).unwrap();
        vids.insert(
            Path::new(name)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    std::fs::write(inbox.join("..hidden.npy"), good_npy(30, 16, 3)).unwrap();
    std::fs::write(inbox.join("upload.npy.part"), b"half").unwrap();
    // A slow writer: chunks 120 ms apart, far less than the settle time.
    sidecar(&inbox.join("slow.npy")).unwrap();
    let slow = good_npy(200, 64, 9);
    let mut file = std::fs::File::create(inbox.join("slow.npy")).unwrap();
    for chunk in slow.chunks(slow.len() / 6 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
    drop(file);
    vids.insert("slow".into());
    let status = service.wait_finished(
        (expected.len() + vids.len()) as u64,
        Duration::from_secs(60),
    );
    let c = counts(&status);
    assert_eq!(c["done"], vids.len() as u64, "{status:#}");
    assert_eq!(c["quarantined"], expected.len() as u64, "{status:#}");
    for (name, reason) in &expected {
        let stem = name.rsplit_once('.').unwrap().0;
        let record_path = service.path(&format!("q/{stem}.error.json"));
        let record: Value =
            serde_json::from_slice(&std::fs::read(&record_path).unwrap_or_else(|e| {
                panic!(
                    "no quarantine record for {name} at {}: {e}",
                    record_path.display()
                )
            }))
            .unwrap();
        assert_eq!(record["reason"], *reason, "{name}: {record:#}");
        assert!(record["input"].as_str().unwrap().ends_with(name.as_str()));
        assert!(!record["message"].as_str().unwrap().is_empty());
        assert!(record["time"].as_str().unwrap().ends_with('Z'));
    }
    let slow_quarantined = service.log(1).iter().any(|l| {
        l["fields"]["input"]
            .as_str()
            .is_some_and(|i| i.ends_with("slow.npy"))
            && l["level"] == "WARN"
    });
    assert!(
        !slow_quarantined,
        "the slowly written file was read before it was complete"
    );
    assert!(service.status()["running"].as_bool().unwrap());
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&vids);
    assert_eq!(
        std::fs::read(outside.join("real.npy")).unwrap(),
        good_npy(50, 16, 1)
    );
}

#[test]
fn changed_inputs_are_redone_and_touched_ones_are_not() {
    let mut service = Service::new(150, "");
    let inbox = service.inbox();
    std::fs::write(inbox.join("a.npy"), good_npy(60, 16, 1)).unwrap();
    std::fs::write(inbox.join("b.npy"), b"garbage").unwrap();
    std::fs::write(inbox.join("c.npy"), good_npy(60, 16, 3)).unwrap();
    service.start();
    service.wait_finished(3, Duration::from_secs(60));
    let before = std::fs::read(service.path("out/proposals/a.json")).unwrap();
    assert!(service.path("q/b.error.json").exists());
    // a: new content; b: fixed; c: only touched (same bytes, new mtime).
    std::fs::write(inbox.join("a.npy"), good_npy(120, 16, 7)).unwrap();
    std::fs::write(inbox.join("b.npy"), good_npy(60, 16, 2)).unwrap();
    std::fs::write(inbox.join("c.npy"), good_npy(60, 16, 3)).unwrap();
    // The touched file is examined too, and found unchanged.
    let unchanged = |service: &Service| {
        service.log(1).iter().any(|l| {
            l["fields"]["message"] == "content unchanged"
                && l["fields"]["input"]
                    .as_str()
                    .is_some_and(|i| i.ends_with("c.npy"))
        })
    };
    wait_until(Duration::from_secs(60), || {
        let c = counts(&service.status());
        let b = service.path("out/proposals/b.json").exists();
        done_or(c["done"] == 3 && b && unchanged(&service), || {
            format!("{c:?}, b.json written: {b}")
        })
    });
    assert!(service.terminate(Duration::from_secs(30)).success());
    assert_ne!(
        std::fs::read(service.path("out/proposals/a.json")).unwrap(),
        before
    );
    assert!(
        !service.path("q/b.error.json").exists(),
        "the fixed file keeps its quarantine record"
    );
    let log = service.log(1);
    let done: Vec<&str> = log
        .iter()
        .filter(|l| l["fields"]["message"] == "done")
        .map(|l| l["fields"]["input"].as_str().unwrap())
        .collect();
    assert_eq!(
        done.iter().filter(|i| i.ends_with("c.npy")).count(),
        1,
        "{done:?}"
    );
    assert_eq!(
        done.iter().filter(|i| i.ends_with("a.npy")).count(),
        2,
        "{done:?}"
    );
    service.check_outputs(&["a", "b", "c"].map(String::from).into());
}

#[test]
fn sigterm_during_work_exits_0_with_nothing_half_written() {
    // The per-file durability mode; the other tests run the default group mode.
    let mut service = Service::new(150, "durability = \"file\"");
    let staging = service.path("staging");
    let vids = make_inputs(&staging, 600, 0, 256);
    service.start();
    move_all(&staging, &service.inbox());
    // Stopped once work is under way.
    wait_until(Duration::from_secs(60), || {
        done_or(!service.proposal_files().is_empty(), || {
            "no result yet".into()
        })
    });
    let status = service.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // Whatever was finished is committed: the ledger and the result files agree.
    let done = counts(&service.status())["done"];
    assert_eq!(done as usize, service.proposal_files().len());
    assert!(service.status()["running"] == false);
    service.start();
    service.wait_finished(600, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&vids);
}

/// Inputs quarantined for what the caption settings asked of them are taken again once the
/// settings change: at the next start, or when SIGHUP reloads other caption settings.
#[test]
fn caption_quarantines_are_taken_again_under_new_caption_settings() {
    let broken = "visual_stream = \"siglip\"\n";
    let mut service = Service::with_sections(
        150,
        "",
        &format!("[caption]\nmode = \"language_free\"\n{broken}"),
    );
    let set_broken = |service: &Service, on: bool| {
        let config = std::fs::read_to_string(service.config()).unwrap();
        let fixed = config.replace(broken, "");
        let config = if on {
            fixed.replace(
                "mode = \"language_free\"\n",
                &format!("mode = \"language_free\"\n{broken}"),
            )
        } else {
            fixed
        };
        std::fs::write(service.config(), config).unwrap();
    };
    let wait_done = |service: &mut Service, done: u64| {
        wait_until(Duration::from_secs(60), || {
            let status = service.status();
            done_or(counts(&status)["done"] == done, || format!("{status}"))
        });
    };
    service.start();
    std::fs::write(service.inbox().join("a.npy"), good_npy(120, 16, 1)).unwrap();
    let status = service.wait_finished(1, Duration::from_secs(60));
    assert_eq!(counts(&status)["quarantined"], 1, "{status}");
    let record = std::fs::read_to_string(service.path("q/a.error.json")).unwrap();
    assert!(record.contains("caption_stream"), "{record}");
    assert!(service.terminate(Duration::from_secs(30)).success());

    // Fixed while the daemon was down: taken again at the start.
    set_broken(&service, false);
    service.start();
    wait_done(&mut service, 1);
    assert!(!service.path("q/a.error.json").exists());
    assert!(service.path("out/proposals/a.json").exists());

    // Broken and fixed again through SIGHUP.
    set_broken(&service, true);
    service.signal(libc::SIGHUP);
    let reloaded = |service: &Service, times: usize| {
        wait_until(Duration::from_secs(30), || {
            let reloads = service.reloads(2);
            done_or(reloads >= times, || {
                format!("{reloads} reloads: SIGHUP ignored?")
            })
        });
    };
    reloaded(&service, 1);
    std::fs::write(service.inbox().join("b.npy"), good_npy(120, 16, 2)).unwrap();
    let status = service.wait_finished(2, Duration::from_secs(60));
    assert_eq!(counts(&status)["quarantined"], 1, "{status}");
    set_broken(&service, false);
    service.signal(libc::SIGHUP);
    reloaded(&service, 2);
    wait_done(&mut service, 2);
    assert!(!service.path("q/b.error.json").exists());
    assert!(service.terminate(Duration::from_secs(30)).success());
    assert!(service
        .log(2)
        .iter()
        .any(|l| l["fields"]["why"] == "caption settings reloaded"));
}

#[test]
fn sighup_reloads_the_configuration() {
    let mut service = Service::new(150, "");
    service.start();
    std::fs::write(service.inbox().join("before.npy"), good_npy(120, 16, 1)).unwrap();
    service.wait_finished(1, Duration::from_secs(60));
    let mut config = std::fs::read_to_string(service.config()).unwrap();
    config.push_str("\n[proposals]\ncap = 2\n");
    std::fs::write(service.config(), config).unwrap();
    service.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(30), || {
        done_or(service.reloads(1) == 1, || "SIGHUP ignored".into())
    });
    std::fs::write(service.inbox().join("after.npy"), good_npy(120, 16, 1)).unwrap();
    service.wait_finished(2, Duration::from_secs(60));
    assert!(service.terminate(Duration::from_secs(30)).success());
    let count = |vid: &str| {
        let v: Value = serde_json::from_slice(
            &std::fs::read(service.path(&format!("out/proposals/{vid}.json"))).unwrap(),
        )
        .unwrap();
        v["proposals"].as_array().unwrap().len()
    };
    assert!(count("before") > 2);
    assert_eq!(count("after"), 2);
    assert!(service
        .log(1)
        .iter()
        .any(|l| l["fields"]["message"] == "configuration reloaded"));
}

#[test]
fn systemd_readiness_watchdog_metrics_and_one_instance_per_state_folder() {
    // Port 0: the kernel picks a free port, which `status` then reports; nothing can race.
    let mut service = Service::new(150, "metrics_addr = \"127.0.0.1:0\"");
    let socket_path = service.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    service.start_with(&[
        ("NOTIFY_SOCKET", p(&socket_path)),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut received = String::new();
    let mut buf = [0u8; 4096];
    while !(received.contains("READY=1") && received.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("the daemon notifies systemd");
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
        received.push('\n');
    }
    std::fs::write(service.inbox().join("m.npy"), good_npy(60, 16, 1)).unwrap();
    let status = service.wait_finished(1, Duration::from_secs(60));
    let addr = status["metrics_addr"].as_str().unwrap().to_string();
    let get = |target: &str| http_get(&addr, target);
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    let metrics = get("/metrics");
    assert!(
        metrics.contains("momentminer_inputs_done_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("momentminer_inputs{state=\"done\"}"),
        "{metrics}"
    );
    // One client dripping a request, others holding connections open: /healthz still answers
    // at once, and the drip is cut off at the request deadline.
    let mut drip = std::net::TcpStream::connect(&addr).unwrap();
    drip.write_all(b"GET /hea").unwrap();
    let idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let asked = std::time::Instant::now();
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "/healthz took {:?} beside a slow client",
        asked.elapsed()
    );
    let mut cut = String::new();
    std::io::Read::read_to_string(&mut drip, &mut cut).unwrap();
    assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    drop(idle);
    // A request line that never ends is refused past 8 KiB, not held in memory. (9 KiB: all of
    // it is read before the refusal, so the socket closes cleanly and the answer arrives.)
    let mut flood = std::net::TcpStream::connect(&addr).unwrap();
    flood.write_all(&[b'A'; 9 << 10]).unwrap();
    let mut refused = String::new();
    std::io::Read::read_to_string(&mut flood, &mut refused).unwrap();
    assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
    // Served beyond loopback only when the config says so.
    let public = momentminer(&[
        "watch",
        "--config",
        p(&service.config()),
        "--set",
        "daemon.metrics_addr=0.0.0.0:0",
        "--set",
        &format!("daemon.state={}", p(&service.path("state-public"))),
    ]);
    assert_eq!(public.status.code(), Some(2));
    assert!(
        text(&public).contains("daemon.metrics_public"),
        "{}",
        text(&public)
    );
    let second = momentminer(&["watch", "--config", p(&service.config())]);
    assert_eq!(second.status.code(), Some(2));
    assert!(
        text(&second).contains("already uses the state folder"),
        "{}",
        text(&second)
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[test]
fn the_systemd_units_pass_systemd_analyze() {
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, instance) in [
        ("momentminer.service", "momentminer.service"),
        (
            "momentminer-worker@.service",
            "momentminer-worker@a.service",
        ),
    ] {
        let unit = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name),
        )
        .unwrap();
        assert!(unit.contains("Type=notify") && unit.contains("ProtectSystem=strict"));
        let path = dir.path().join(name);
        let unit = unit.replace(
            "/usr/local/bin/momentminer",
            env!("CARGO_BIN_EXE_momentminer"),
        );
        std::fs::write(&path, unit).unwrap();
        let out = Command::new(&analyze)
            .current_dir(dir.path())
            .args(["verify", p(&path.with_file_name(instance))])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name}: {}",
            text(&out)
        );
    }
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(())
}

/// Finite features at the edge of f32 (3e38: their sums and squares overflow) once gave NaN
/// scores that SQLite refused, wedging every later commit. Now every number a result holds is
/// finite, and the files dropped after them are done too.
#[test]
fn extreme_finite_features_never_wedge_the_ledger() {
    let mut service = Service::new(150, "");
    service.start();
    let inbox = service.inbox();
    let extreme = |seed: usize| {
        let values = (0..300 * 4).map(|i| match (i * 7 + seed) % 3 {
            0 => 3e38,
            1 => -3e38,
            _ => 1e38,
        });
        npy("<f4", "(300, 4)", &f32_bytes(values))
    };
    std::fs::write(
        inbox.join("flat.npy"),
        npy("<f4", "(300, 4)", &f32_bytes([3e38; 1200])),
    )
    .unwrap();
    std::fs::write(inbox.join("mixed.npy"), extreme(1)).unwrap();
    let status = service.wait_finished(2, Duration::from_secs(60));
    for i in 0..3 {
        std::fs::write(inbox.join(format!("after{i}.npy")), good_npy(90, 16, i)).unwrap();
    }
    let status_after = service.wait_finished(5, Duration::from_secs(60));
    assert_eq!(counts(&status_after)["done"], 5, "{status}\n{status_after}");
    assert!(service.terminate(Duration::from_secs(30)).success());
    for file in service.proposal_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("null"), "{}: {text}", file.display());
    }
    let vids = ["flat", "mixed", "after0", "after1", "after2"];
    service.check_outputs(&vids.map(String::from).into());
}

/// Inputs whose headers claim far more than they hold, or more than the byte budget allows:
/// a header of shape (200000, 16384) float64 (26 GB) in a 100-byte .npy and inside an .npz, and a
/// sparse .npy of 25 GB that takes 4 KB on disk. Each is quarantined `too_large` from its header
/// or its size, before anything is allocated or hashed; the files after them are done.
#[test]
fn claims_beyond_the_byte_budget_are_refused_before_allocating() {
    let mut service = Service::new(150, "");
    service.start();
    let inbox = service.inbox();
    let hostile = npy("<f8", "(200000, 16384)", &[0u8; 64]);
    std::fs::write(inbox.join("claims.npy"), &hostile).unwrap();
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    archive.start_file("clip.npy", stored).unwrap();
    archive.write_all(&hostile).unwrap();
    let npz = archive.finish().unwrap().into_inner();
    std::fs::write(inbox.join("zipped.npz"), npz).unwrap();
    let sparse = std::fs::File::create(inbox.join("sparse.npy")).unwrap();
    (&sparse).write_all(&hostile).unwrap();
    sparse.set_len(25_000_000_000).unwrap();
    drop(sparse);
    for i in 0..3 {
        std::fs::write(inbox.join(format!("after{i}.npy")), good_npy(90, 16, i)).unwrap();
    }
    let status = service.wait_finished(6, Duration::from_secs(60));
    let c = counts(&status);
    assert_eq!((c["done"], c["quarantined"]), (3, 3), "{status:#}");
    assert!(service.terminate(Duration::from_secs(30)).success());
    for stem in ["claims", "zipped", "sparse"] {
        let record: Value = serde_json::from_slice(
            &std::fs::read(service.path(&format!("q/{stem}.error.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(record["reason"], "too_large", "{stem}: {record:#}");
    }
    service.check_outputs(&["after0", "after1", "after2"].map(String::from).into());
}

/// A stem of 251 bytes is a legal name whose result file's name is not; a name that is not
/// UTF-8 names no video id. Each is quarantined `bad_name` at once, with a record of its own,
/// instead of being retried forever. An output folder deleted under the daemon is made again.
#[test]
fn bad_names_end_in_quarantine_and_deleted_folders_come_back() {
    use std::os::unix::ffi::OsStrExt;
    let mut service = Service::new(150, "");
    service.start();
    let inbox = service.inbox();
    let long = "v".repeat(251);
    std::fs::write(inbox.join(format!("{long}.npy")), good_npy(60, 16, 1)).unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"clip\xff.npy");
    std::fs::write(inbox.join(odd), good_npy(60, 16, 2)).unwrap();
    std::fs::write(inbox.join("fine.npy"), good_npy(60, 16, 3)).unwrap();
    let status = service.wait_finished(3, Duration::from_secs(60));
    let c = counts(&status);
    assert_eq!((c["done"], c["quarantined"]), (1, 2), "{status:#}");
    let records: Vec<Value> = files_in(&service.path("q"))
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "one record each: {records:#?}");
    assert!(
        records.iter().all(|r| r["reason"] == "bad_name"),
        "{records:#?}"
    );
    // The output folder deleted while the daemon runs: the next result makes it again.
    std::fs::remove_dir_all(service.path("out/proposals")).unwrap();
    std::fs::write(inbox.join("after.npy"), good_npy(60, 16, 4)).unwrap();
    let status = service.wait_finished(4, Duration::from_secs(60));
    assert_eq!(counts(&status)["done"], 2, "{status:#}");
    assert!(service.path("out/proposals/after.json").exists());
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// The daemon's peak memory (VmHWM) while it takes a deflate bomb (a member whose header
/// claims 32 MiB and that holds 288 MiB of zeros, compressed to almost nothing) and a sparse
/// 25 GB file stays under max_bytes × workers + 256 MiB.
#[test]
fn peak_memory_stays_within_the_byte_budget() {
    const BUDGET: u64 = 64 << 20;
    let mut service = Service::new(150, "workers = 2");
    let config = std::fs::read_to_string(service.config()).unwrap();
    let config = config.replacen(
        "features_per_second = 2.0\n",
        &format!("features_per_second = 2.0\nmax_bytes = {BUDGET}\n"),
        1,
    );
    std::fs::write(service.config(), config).unwrap();
    service.start();
    let inbox = service.inbox();
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    archive.start_file("clip.npy", deflated).unwrap();
    archive.write_all(&npy("<f4", "(8192, 1024)", &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..288 {
        archive.write_all(&zeros).unwrap();
    }
    std::fs::write(
        inbox.join("bomb.npz"),
        archive.finish().unwrap().into_inner(),
    )
    .unwrap();
    let sparse = std::fs::File::create(inbox.join("sparse.npy")).unwrap();
    (&sparse)
        .write_all(&npy("<f4", "(8192, 1024)", &[]))
        .unwrap();
    sparse.set_len(25_000_000_000).unwrap();
    drop(sparse);
    std::fs::write(inbox.join("after.npy"), good_npy(90, 16, 1)).unwrap();
    let status = service.wait_finished(3, Duration::from_secs(120));
    let pid = service.child.as_ref().unwrap().id();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(service.terminate(Duration::from_secs(30)).success());
    let c = counts(&status);
    assert_eq!(
        c["done"], 2,
        "the bomb's claimed 32 MiB is within budget: {status:#}"
    );
    assert_eq!(
        c["quarantined"], 1,
        "the sparse file is too large: {status:#}"
    );
    let bound_kb = (2 * BUDGET + (256 << 20)) >> 10;
    eprintln!("peak RSS {peak_kb} kB, bound {bound_kb} kB");
    assert!(
        peak_kb < bound_kb,
        "peak RSS {peak_kb} kB over {bound_kb} kB"
    );
}

/// Two inputs with one video id: the second is quarantined `duplicate_video_id`, and taken
/// again once the first is deleted. In an HDF5 file, a key too long to name a result file is
/// quarantined alone; the file's other videos are done.
#[test]
fn a_duplicate_is_taken_when_its_winner_goes_and_a_bad_hdf5_key_costs_only_itself() {
    let mut service = Service::new(150, "");
    service.start();
    let inbox = service.inbox();
    for folder in ["a", "b"] {
        std::fs::create_dir_all(inbox.join(folder)).unwrap();
    }
    std::fs::write(inbox.join("a/dd.npy"), good_npy(60, 16, 1)).unwrap();
    service.wait_finished(1, Duration::from_secs(60));
    std::fs::write(inbox.join("b/dd.npy"), good_npy(70, 16, 2)).unwrap();
    let long_key = "k".repeat(300);
    {
        let file = hdf5::File::create(inbox.join("many.h5")).unwrap();
        for (i, key) in ["good1", long_key.as_str(), "good2"]
            .into_iter()
            .enumerate()
        {
            let data = ndarray::Array2::<f32>::from_shape_fn((50 + i * 10, 16), |(t, d)| {
                ((t / 10 + 1) * (d % 5 + 1)) as f32 + ((t * 7 + d * 3) % 5) as f32 * 0.1
            });
            file.create_group(key)
                .unwrap()
                .new_dataset_builder()
                .with_data(&data)
                .create("c3d_features")
                .unwrap();
        }
        file.close().unwrap();
    }
    let status = service.wait_finished(3, Duration::from_secs(60));
    let c = counts(&status);
    assert_eq!((c["done"], c["quarantined"]), (2, 1), "{status:#}");
    let record = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(service.path(&format!("q/{name}"))).unwrap()).unwrap()
    };
    let duplicate = record("dd.error.json");
    assert_eq!(duplicate["reason"], "duplicate_video_id", "{duplicate:#}");
    assert!(duplicate["input"].as_str().unwrap().ends_with("b/dd.npy"));
    for good in ["good1", "good2"] {
        assert!(service.path(&format!("out/proposals/{good}.json")).exists());
    }
    let long_records: Vec<Value> = files_in(&service.path("q"))
        .iter()
        .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("kkk"))
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    assert_eq!(long_records.len(), 1, "{long_records:#?}");
    assert_eq!(long_records[0]["reason"], "bad_name");
    assert_eq!(long_records[0]["vid"], long_key.as_str());
    // The winner goes: the loser takes the id, and its own features are what is published.
    std::fs::remove_file(inbox.join("a/dd.npy")).unwrap();
    wait_until(Duration::from_secs(60), || {
        let status = service.status();
        let c = counts(&status);
        done_or(c["quarantined"] == 0 && c["done"] == 3, || format!("{c:?}"))
    });
    let published: Value =
        serde_json::from_slice(&std::fs::read(service.path("out/proposals/dd.json")).unwrap())
            .unwrap();
    // 70 steps at 2 per second: b's, not a's 60.
    assert_eq!(published["duration"].as_f64(), Some(35.0), "{published:#}");
    assert!(!service.path("q/dd.error.json").exists());
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// A ledger deleted together with half the inputs: at the restart the daemon starts a new
/// ledger and redoes what is left, and the shards the old ledger wrote are removed, so no
/// video is in the dataset twice and none of the deleted ones is.
#[test]
fn shards_of_a_deleted_ledger_are_removed_at_start_up() {
    let mut service = Service::new(100, "shard_videos = 3\n");
    let vids = make_inputs(&service.inbox(), 12, 0, 16);
    service.start();
    service.wait_finished(12, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)).success());
    let shards_before = files_in(&service.path("out/dataset")).len();
    assert!(shards_before >= 4 * 3, "{shards_before} shard files");
    for file in files_in(&service.path("state")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ledger.sqlite") {
            std::fs::remove_file(file).unwrap();
        }
    }
    let mut kept = HashSet::new();
    for (i, vid) in vids.iter().enumerate() {
        if i % 2 == 0 {
            std::fs::remove_file(service.inbox().join(format!("{vid}.npy"))).unwrap();
            std::fs::remove_file(service.path(&format!("out/proposals/{vid}.json"))).unwrap();
        } else {
            kept.insert(vid.clone());
        }
    }
    service.start();
    service.wait_finished(6, Duration::from_secs(120));
    assert!(service.terminate(Duration::from_secs(30)).success());
    service.check_outputs(&kept);
}
