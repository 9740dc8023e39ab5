//! Scale-out through a real redis-server (each test starts its own, with AOF, on a Unix socket
//! in its own folder, so no two tests can race for a port, and stops it): several worker
//! processes of the real binary, one killed, Redis itself restarted, a poison message.

mod common;

use common::{
    check_results, done_or, files_in, good_npy, http_get, make_inputs, momentminer, p, text,
    wait_exit, wait_until,
};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    fn start(dir: &Path) -> RedisServer {
        let mut server = RedisServer {
            dir: dir.to_path_buf(),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket", p(&self.socket())])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--dir", p(&self.dir)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: run scripts/setup.sh (apt install redis-server)",
            );
        self.child = Some(child);
        wait_until(Duration::from_secs(20), || {
            let up = std::os::unix::net::UnixStream::connect(self.socket()).is_ok();
            done_or(up, || "redis-server did not start".into())
        });
    }

    /// SIGKILL and start again on the same socket and data folder: only the AOF survives.
    fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        // A dead server's socket file would answer nothing but still exist.
        std::fs::remove_file(self.socket()).ok();
        self.launch();
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", p(&self.socket()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    root: tempfile::TempDir,
    redis: RedisServer,
    workers: Vec<(String, Child)>,
}

impl Cluster {
    /// `extra` is appended to the `[queue]` section of the config.
    fn new(claim_idle_ms: u64, extra: &str) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(&root.path().join("redis"));
        let config = format!(
            "[caption]\nmode = \"language_free\"\n\n\
             [ingest]\nfeatures_per_second = 2.0\n\n[daemon]\ninbox = \"{}\"\noutput = \"{}\"\n\
             quarantine = \"{}\"\nstate = \"{}\"\nworkers = 2\ncommit_ms = 20\n\
             shard_flush_ms = 100\n\n[queue]\nurl = \"{}\"\nclaim_idle_ms = {claim_idle_ms}\nblock_ms = 200\n\
             reconnect_base_ms = 50\nreconnect_max_ms = 500\nroots = [\"{}\", \"{}\"]\n{extra}\n",
            p(&root.path().join("in")),
            p(&root.path().join("out")),
            p(&root.path().join("q")),
            p(&root.path().join("state")),
            redis.url(),
            p(&root.path().join("in")),
            p(&root.path().join("inputs")),
        );
        std::fs::write(root.path().join("config.toml"), config).unwrap();
        Cluster {
            root,
            redis,
            workers: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    fn enqueue(&self, what: &Path) -> usize {
        let out = momentminer(&["enqueue", p(what), "--config", p(&self.config())]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    fn start_worker(&mut self, name: &str) {
        self.start_worker_with(name, &[]);
    }

    /// A worker with `args` added to its command line (`--set key=value`).
    fn start_worker_with(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_momentminer"))
            .args(["--log-format", "json", "worker", "--name", name])
            .args(["--config", p(&self.config())])
            .args(args)
            .env("RUST_LOG", "momentminer=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push((name.to_string(), child));
    }

    fn kill9(&mut self, name: &str) {
        let index = self.workers.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.workers.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM to every worker: each must drain and exit 0.
    fn stop_all(&mut self) {
        for (name, child) in &self.workers {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            assert_eq!(
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) },
                0,
                "{name}"
            );
        }
        for (name, mut child) in self.workers.drain(..) {
            let status = wait_exit(&mut child, Duration::from_secs(30), &name);
            assert!(status.success(), "{name} exited with {status}");
        }
    }

    fn queue_status(&self) -> Value {
        let out = momentminer(&[
            "status",
            "--json",
            "--queue",
            &self.redis.url(),
            "--config",
            p(&self.config()),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn results(&self) -> usize {
        files_in(&self.path("out/proposals"))
            .iter()
            .filter(|f| !f.file_name().unwrap().to_string_lossy().starts_with('.'))
            .count()
    }

    /// Waits until at least `count` results exist (work is under way).
    fn wait_results(&self, count: usize) {
        wait_until(Duration::from_secs(120), || {
            let results = self.results();
            done_or(results >= count, || format!("{results} results"))
        });
    }

    /// Waits until `expected` results exist and nothing is pending or undelivered.
    fn wait_drained(&mut self, expected: usize, limit: Duration) -> Value {
        wait_until(limit, || {
            for (name, child) in &mut self.workers {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("worker {name} exited early ({status})");
                }
            }
            let results = self.results();
            if results < expected {
                return Err(format!("{results} results"));
            }
            let status = self.queue_status();
            if status["pending"] == 0 && status["lag"] == 0 {
                Ok(status)
            } else {
                Err(format!("{status:#}"))
            }
        })
    }

    fn merge_and_check(&self, vids: &HashSet<String>) {
        let out = momentminer(&["merge", "--config", p(&self.config())]);
        assert!(out.status.success(), "{}", text(&out));
        check_results(
            &self.path("out/proposals"),
            &self.path("out/dataset/merged"),
            vids,
        );
    }

    /// How many inputs each worker finished, from its log.
    fn done_per_worker(&self, names: &[&str]) -> Vec<usize> {
        names
            .iter()
            .map(|name| {
                std::fs::read_to_string(self.path(&format!("{name}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|l| l["fields"]["message"] == "done")
                    .count()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn three_workers_share_3000_inputs_and_each_is_done_once() {
    let mut cluster = Cluster::new(400, "");
    let inputs = cluster.path("inputs");
    let vids = make_inputs(&inputs, 3000, 0, 32);
    assert_eq!(cluster.enqueue(&inputs), 3000);
    let names = ["w1", "w2", "w3"];
    for name in names {
        cluster.start_worker(name);
    }
    let status = cluster.wait_drained(3000, Duration::from_secs(300));
    assert_eq!(status["dead_letters"], 0);
    cluster.stop_all();
    cluster.merge_and_check(&vids);
    let done = cluster.done_per_worker(&names);
    eprintln!("inputs done per worker: {done:?}");
    assert!(
        done.iter().all(|&n| n > 0),
        "a worker got no work: {done:?}"
    );
    assert!(done.iter().sum::<usize>() >= 3000);
}

#[test]
fn a_killed_workers_messages_are_taken_over_by_the_others() {
    let mut cluster = Cluster::new(400, "");
    let inputs = cluster.path("inputs");
    let vids = make_inputs(&inputs, 1200, 0, 256);
    cluster.enqueue(&inputs);
    for name in ["w1", "w2", "w3"] {
        cluster.start_worker(name);
    }
    cluster.wait_results(300);
    cluster.kill9("w1");
    let killed = Instant::now();
    // The others take over what w1 held once it has been idle for claim_idle_ms.
    wait_until(Duration::from_secs(60), || {
        let status = cluster.queue_status();
        let held = status["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "w1")
            .map_or(0, |c| c["pending"].as_u64().unwrap());
        done_or(held == 0, || format!("w1's {held} messages stay pending"))
    });
    eprintln!("w1's messages taken over within {:?}", killed.elapsed());
    cluster.wait_drained(1200, Duration::from_secs(300));
    cluster.stop_all();
    cluster.merge_and_check(&vids);
}

#[test]
fn workers_ride_out_a_redis_crash_and_restart() {
    let mut cluster = Cluster::new(400, "");
    let inputs = cluster.path("inputs");
    let vids = make_inputs(&inputs, 1200, 0, 256);
    cluster.enqueue(&inputs);
    cluster.start_worker("w1");
    cluster.start_worker("w2");
    cluster.wait_results(300);
    cluster.redis.crash_and_restart();
    cluster.wait_drained(1200, Duration::from_secs(300));
    cluster.stop_all();
    cluster.merge_and_check(&vids);
    let reconnected = ["w1", "w2"].iter().any(|name| {
        std::fs::read_to_string(cluster.path(&format!("{name}.log")))
            .unwrap()
            .contains("retrying")
    });
    assert!(reconnected, "no worker noticed the Redis restart");
}

#[test]
fn a_poison_message_ends_in_the_dead_letters_with_its_error() {
    let mut cluster = Cluster::new(150, "max_attempts = 3");
    let inputs = cluster.path("inputs");
    let vids = make_inputs(&inputs, 5, 0, 32);
    cluster.enqueue(&inputs);
    // Enqueued, then gone before any worker could read it.
    let doomed = inputs.join("doomed.npy");
    std::fs::write(&doomed, b"soon gone").unwrap();
    cluster.enqueue(&doomed);
    std::fs::remove_file(&doomed).unwrap();
    // A real file, but outside queue.roots: never read, whatever the message says.
    let outside = cluster.path("elsewhere/secret.npy");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, b"not for workers").unwrap();
    cluster.enqueue(&outside);
    cluster.start_worker("w1");
    cluster.start_worker("w2");
    wait_until(Duration::from_secs(60), || {
        let status = cluster.queue_status();
        let dead = status["dead_letters"] == 2 && status["pending"] == 0;
        done_or(dead, || format!("{status:#}"))
    });
    cluster.wait_drained(5, Duration::from_secs(60));
    cluster.stop_all();
    let out = Command::new("redis-cli")
        .args([
            "-s",
            p(&cluster.redis.socket()),
            "XRANGE",
            "momentminer:dead",
            "-",
            "+",
        ])
        .output()
        .expect("redis-cli runs");
    let dead = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dead.contains(p(&doomed)), "{dead}");
    assert!(dead.contains("does not exist"), "{dead}");
    assert!(dead.contains("outside_roots"), "{dead}");
    assert!(!cluster.path("out/proposals/secret.json").exists());
    // The doomed message's own fields: its path, then its error and attempts.
    let fields: Vec<&str> = dead.lines().collect();
    let at = fields.iter().position(|l| *l == p(&doomed)).unwrap();
    let attempts = at + fields[at..].iter().position(|l| *l == "attempts").unwrap();
    assert_eq!(fields[attempts + 1], "3", "{dead}");
    cluster.merge_and_check(&vids);
}

#[test]
fn the_watcher_can_enqueue_instead_of_processing() {
    let mut cluster = Cluster::new(400, "");
    let watcher = Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args(["watch", "--config", p(&cluster.config())])
        .args([
            "--set",
            "daemon.enqueue=true",
            "--set",
            "daemon.settle_ms=100",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cluster.workers.push(("watcher".into(), watcher));
    cluster.start_worker("w1");
    let vids = make_inputs(&cluster.path("in"), 40, 0, 32);
    cluster.wait_drained(40, Duration::from_secs(60));
    cluster.stop_all();
    let out = momentminer(&["status", "--json", "--config", p(&cluster.config())]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let enqueued = status["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "enqueued")
        .map(|pair| pair[1].as_u64().unwrap());
    assert_eq!(enqueued, Some(40), "{status:#}");
    cluster.merge_and_check(&vids);
}

/// A consumer runs on the same service layer as the inbox watcher, so it serves /metrics and
/// /healthz too, with the time each stage took; `status` on its state folder says where.
#[test]
fn a_consumer_serves_metrics_like_the_watcher() {
    let mut cluster = Cluster::new(150, "");
    let inputs = cluster.path("inputs");
    make_inputs(&inputs, 3, 0, 32);
    cluster.enqueue(&inputs);
    cluster.start_worker_with("w1", &["--set", "daemon.metrics_addr=127.0.0.1:0"]);
    cluster.wait_drained(3, Duration::from_secs(60));
    let state = format!("daemon.state={}", p(&cluster.path("state/w1")));
    let out = momentminer(&[
        "status",
        "--json",
        "--config",
        p(&cluster.config()),
        "--set",
        &state,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let addr = status["metrics_addr"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}"));
    let get = |target: &str| http_get(addr, target);
    assert!(get("/healthz").starts_with("HTTP/1.1 200"));
    // Drained means acknowledged, which comes after each result was recorded and counted.
    let metrics = get("/metrics");
    for expected in [
        "momentminer_inputs_done_total 3",
        "momentminer_stage_seconds_total{stage=\"similarity\"}",
    ] {
        assert!(metrics.contains(expected), "{expected}\n{metrics}");
    }
    cluster.stop_all();
}

/// Two inputs with one video id, taken by two workers that never met: the second is
/// quarantined `duplicate_video_id` (the owners are shared through Redis), so `proposals/`
/// holds the first one's result and `merge` agrees with it.
#[test]
fn two_workers_never_publish_one_video_id_twice() {
    let mut cluster = Cluster::new(150, "");
    let inputs = cluster.path("inputs");
    for folder in ["a", "b"] {
        std::fs::create_dir_all(inputs.join(folder)).unwrap();
    }
    std::fs::write(inputs.join("a/dd.npy"), good_npy(60, 32, 1)).unwrap();
    std::fs::write(inputs.join("b/dd.npy"), good_npy(70, 32, 2)).unwrap();
    assert_eq!(cluster.enqueue(&inputs.join("a/dd.npy")), 1);
    cluster.start_worker("w1");
    cluster.wait_drained(1, Duration::from_secs(60));
    cluster.stop_all();
    assert_eq!(cluster.enqueue(&inputs.join("b/dd.npy")), 1);
    cluster.start_worker("w2");
    wait_until(Duration::from_secs(60), || {
        let status = cluster.queue_status();
        let record = cluster.path("q/dd.error.json");
        done_or(
            record.exists() && status["pending"] == 0 && status["lag"] == 0,
            || format!("{status:#}"),
        )
    });
    cluster.stop_all();
    let record: Value =
        serde_json::from_slice(&std::fs::read(cluster.path("q/dd.error.json")).unwrap()).unwrap();
    assert_eq!(record["reason"], "duplicate_video_id", "{record:#}");
    assert!(record["message"].as_str().unwrap().contains("a/dd.npy"));
    let published: Value =
        serde_json::from_slice(&std::fs::read(cluster.path("out/proposals/dd.json")).unwrap())
            .unwrap();
    assert_eq!(published["duration"].as_f64(), Some(30.0), "a's 60 steps");
    cluster.merge_and_check(&["dd".to_string()].into());
}
