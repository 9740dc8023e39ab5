//! The compute back-ends through the real binary: every CUDA kernel compiles through NVRTC
//! (no GPU needed), and without a CUDA driver `auto` runs on the CPU and says why once, while
//! `cuda` asked for by name is an error that names what is missing.

mod common;

use common::{momentminer, p, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// NVRTC from the PyPI wheel that `scripts/setup.sh` unpacks.
fn nvrtc() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/nvrtc/libnvrtc.so.12");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh test (it unpacks the nvidia-cuda-nvrtc-cu12 wheel)",
        path.display()
    );
    path
}

/// The binary with `info` logs, so the back-end's choice is visible.
fn momentminer_logged(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let library = format!("compute.nvrtc_library={}", p(&nvrtc()));
    let out = momentminer(&[
        "--set",
        &library,
        "kernels",
        "--arch",
        "sm_80",
        "--arch",
        "sm_90",
        "--out",
        p(dir.path()),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for arch in ["80", "90"] {
        for (kernel, entries) in [
            ("gram", &["row_inverse_norms", "gram"][..]),
            ("kmeans", &["kmeans"][..]),
        ] {
            assert!(
                said.contains(&format!("kernels/{kernel}.cu for compute_{arch}: "))
                    && said.contains("no warnings"),
                "{said}"
            );
            let ptx =
                std::fs::read_to_string(dir.path().join(format!("{kernel}.compute_{arch}.ptx")))
                    .unwrap();
            assert!(
                ptx.contains(&format!(".target sm_{arch}")),
                "{kernel} {arch}"
            );
            for entry in entries {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{kernel}.cu for sm_{arch} lacks {entry}"
                );
            }
        }
    }
    // Without NVRTC the command says what is missing and where to get it.
    let missing = momentminer(&[
        "--set",
        "compute.nvrtc_library=/nonexistent/libnvrtc.so.12",
        "kernels",
    ]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("/nonexistent/libnvrtc.so.12")
            && text(&missing).contains("nvidia-cuda-nvrtc-cu12"),
        "{}",
        text(&missing)
    );
}

#[test]
fn without_a_cuda_driver_auto_runs_on_the_cpu_and_cuda_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    let made = momentminer(&[
        "synth",
        "--out",
        p(&world),
        "--videos",
        "6",
        "--dim",
        "64",
        "--set",
        "synth.clip_dim=32",
    ]);
    assert!(made.status.success(), "{}", text(&made));
    let settings = world.join("caption.toml");
    let features = world.join("features");
    let run = |device: &str, out: &Path| {
        momentminer_logged(&[
            "--config",
            p(&settings),
            "--device",
            device,
            "propose",
            p(&features),
            "--out",
            p(out),
        ])
    };
    let (cuda_out, auto_out, cpu_out) = (
        dir.path().join("cuda"),
        dir.path().join("auto"),
        dir.path().join("cpu"),
    );
    let cuda = run("cuda", &cuda_out);
    if cuda.status.success() {
        eprintln!("skipped: this machine has a usable CUDA device (scripts/gpu-check.sh tests it)");
        return;
    }
    let said = text(&cuda);
    assert!(
        said.contains("compute.device = cuda:0: libcuda.so.1 cannot be loaded")
            && said.contains("--device cpu or auto runs on the CPU"),
        "{said}"
    );
    assert!(!cuda_out.join("proposals").exists(), "nothing is written");
    // `check` (a unit's ExecStartPre=) says the same before a daemon starts.
    let checked = Command::new(env!("CARGO_BIN_EXE_momentminer"))
        .args(["--device", "cuda", "check"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs");
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains("FAIL  compute: compute.device = cuda:0: libcuda.so.1"),
        "{}",
        text(&checked)
    );

    let auto = run("auto", &auto_out);
    let said = text(&auto);
    assert!(auto.status.success(), "{said}");
    let why = "compute: running on the CPU, CUDA is not usable: libcuda.so.1 cannot be loaded";
    assert_eq!(said.matches(why).count(), 1, "{said}");

    let cpu = run("cpu", &cpu_out);
    assert!(cpu.status.success(), "{}", text(&cpu));
    assert!(!text(&cpu).contains("CUDA is not usable"));
    let listing = |out: &Path| {
        let mut files: Vec<(String, String)> = std::fs::read_dir(out.join("proposals"))
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let (from_auto, from_cpu) = (listing(&auto_out), listing(&cpu_out));
    assert_eq!(from_auto.len(), 6);
    assert_eq!(from_auto, from_cpu);
}
