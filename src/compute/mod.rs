//! Where the heavy stages of the proposal path run: the self-similarity matrix and the k-means
//! of the atomic-event step, for a batch of videos at once. Both back-ends take the same batch
//! and give each video its SSM and atomic events:
//! - `cpu`: [`cosine_ssm`] and [`atomic_events`] per video, across the thread pool;
//! - `cuda`: `kernels/*.cu` compiled by NVRTC at start-up ([`cuda`]), driven by [`batched`].
//!
//! `compute.device = "auto"` takes CUDA when its libraries load and a device answers, and says
//! in one line why not otherwise; a CUDA failure in the middle of a run costs that batch a
//! second pass on the CPU, never a video.

mod batched;
pub mod cuda;
#[cfg(test)]
mod emulate;

use crate::config::{Config, DeviceChoice};
use crate::events::{atomic_events, AtomicEvents};
use crate::ingest::Features;
use crate::similarity::{cosine_ssm, Ssm};
use rayon::prelude::*;
use std::time::{Duration, Instant};
use thiserror::Error;

pub use cuda::{compile_kernels, CompiledKernel, KERNELS};

/// Why a back-end cannot be used, or a kernel not built.
#[derive(Debug, Error)]
pub enum ComputeError {
    /// A CUDA library does not load.
    #[error("{library} cannot be loaded ({hint})")]
    MissingLibrary {
        /// The library, as the loader looks for it.
        library: String,
        /// What provides it.
        hint: &'static str,
    },
    /// A CUDA device was asked for by name and cannot be used.
    #[error("compute.device = {device}: {source}; --device cpu or auto runs on the CPU")]
    Requested {
        /// The device asked for.
        device: String,
        /// Why it cannot be used.
        source: Box<ComputeError>,
    },
    /// cudarc stopped on a library that lacks a function it calls.
    #[error(
        "the CUDA libraries here lack a function cudarc needs (a driver or NVRTC older than \
         CUDA 12.8?)"
    )]
    Unsupported,
    /// The driver refused (no such device, out of memory, ...).
    #[error("CUDA device {ordinal}: {source}")]
    Driver {
        /// The device asked for.
        ordinal: usize,
        /// What the driver said.
        source: cudarc::driver::DriverError,
    },
    /// A kernel did not compile, or compiled with warnings.
    #[error("kernels/{file} for {arch}: {message}")]
    Compile {
        /// The source file.
        file: &'static str,
        /// The virtual architecture it was compiled for.
        arch: String,
        /// The compiler's log, or what failed.
        message: String,
    },
}

/// The back-end a process computes with; opened once, shared by every worker.
pub struct Backend {
    device: Device,
    batch_size: usize,
}

enum Device {
    /// The stage functions on the thread pool.
    Cpu,
    /// The kernels on one device.
    Cuda(Box<cuda::CudaKernels>),
}

impl Backend {
    /// Opens the back-end `config.compute` names (compiling the kernels for a CUDA device).
    pub fn open(config: &Config) -> Result<Backend, ComputeError> {
        let nvrtc = &config.compute.nvrtc_library;
        let device = match config.compute.device {
            DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda(ordinal) => open_cuda(ordinal, nvrtc)
                .map(|k| Device::Cuda(Box::new(k)))
                .map_err(|source| ComputeError::Requested {
                    device: String::from(config.compute.device),
                    source: Box::new(source),
                })?,
            DeviceChoice::Auto => match open_cuda(0, nvrtc) {
                Ok(kernels) => Device::Cuda(Box::new(kernels)),
                Err(e) => {
                    tracing::info!("compute: running on the CPU, CUDA is not usable: {e}");
                    Device::Cpu
                }
            },
        };
        if let Device::Cuda(kernels) = &device {
            tracing::info!(
                "compute: kernels compiled and loaded on {}",
                kernels.describe()
            );
        }
        Ok(Backend {
            device,
            batch_size: config.compute.batch_size,
        })
    }

    /// The CPU back-end with `config`'s batch size, whatever `compute.device` says.
    pub fn cpu(config: &Config) -> Backend {
        Backend {
            device: Device::Cpu,
            batch_size: config.compute.batch_size,
        }
    }

    /// The CUDA device's kernels, when this back-end has one.
    pub fn cuda(&self) -> Option<&cuda::CudaKernels> {
        match &self.device {
            Device::Cpu => None,
            Device::Cuda(kernels) => Some(kernels),
        }
    }

    /// `items` in the batches this back-end takes (`compute.batch_size`).
    pub fn batches<'a, T>(&self, items: &'a [T]) -> std::slice::Chunks<'a, T> {
        items.chunks(self.batch_size.max(1))
    }

    /// `cpu`, or the device's name and compute capability.
    pub fn describe(&self) -> String {
        match &self.device {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(kernels) => kernels.describe(),
        }
    }

    /// Each sampled video's SSM and atomic events, in order. `seeds` are the videos' event
    /// seeds; `config.sample.steps` is the size the videos were sampled to.
    pub fn events(&self, batch: &[&Features], seeds: &[u64], config: &Config) -> Vec<Found> {
        if let Device::Cuda(kernels) = &self.device {
            match batched::events_batch(kernels.as_ref(), batch, seeds, config) {
                Ok(results) => return results,
                Err(e) => tracing::warn!(
                    videos = batch.len(),
                    "compute: the CUDA batch failed, computing it on the CPU: {e}"
                ),
            }
        }
        batch
            .par_iter()
            .zip(seeds)
            .map(|(features, &seed)| cpu_events(features, seed, config))
            .collect()
    }
}

/// Opens the kernels on device `ordinal`. cudarc panics on a symbol its library lacks (an
/// older driver than its bindings); that is an error here, not the end of the process.
fn open_cuda(ordinal: usize, nvrtc: &str) -> Result<cuda::CudaKernels, ComputeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cuda::CudaKernels::open(ordinal, nvrtc)
    }))
    .unwrap_or(Err(ComputeError::Unsupported))
}

/// A video's SSM and atomic events, with what each cost.
#[derive(Debug)]
pub struct Found {
    /// The cosine self-similarity.
    pub ssm: Ssm,
    /// The atomic events found on it.
    pub events: AtomicEvents,
    /// Time on the SSM (a device batch's time shared out evenly).
    pub similarity_time: Duration,
    /// Time on the events (likewise).
    pub events_time: Duration,
}

/// One video on the CPU: the reference both back-ends are held to.
pub fn cpu_events(features: &Features, seed: u64, config: &Config) -> Found {
    let started = Instant::now();
    let ssm = cosine_ssm(features);
    let similarity_time = started.elapsed();
    let events = atomic_events(&ssm, &config.events, config.sample.steps, seed);
    Found {
        ssm,
        events,
        similarity_time,
        events_time: started.elapsed() - similarity_time,
    }
}

/// `videos` random videos of `frames × dim`, each in 3 to 6 blocks of a direction plus unit
/// noise: Charades-like inputs for benchmarks and tests.
pub fn charades_like(videos: usize, frames: usize, dim: usize, seed: u64) -> Vec<Features> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..videos)
        .map(|_| {
            let scenes = 3 + rng.below(4);
            let directions: Vec<Vec<f32>> = (0..scenes)
                .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
                .collect();
            let data = (0..frames)
                .flat_map(|t| {
                    directions[t * scenes / frames]
                        .iter()
                        .map(|v| v + rng.normal() as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            Features { frames, dim, data }
        })
        .collect()
}
