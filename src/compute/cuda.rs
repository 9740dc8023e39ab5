//! The CUDA back-end: `kernels/*.cu` compiled by NVRTC for the device at start-up (once per
//! process: the back-end is opened once and shared), run through cudarc's driver API.
//!
//! cudarc panics when it calls into a library that does not load, so both libraries are
//! checked first and their absence is an error that names them. NVRTC can be given by path
//! (`compute.nvrtc_library`): it is loaded from there first, and cudarc's own lookup by soname
//! then finds that copy. This is how a machine without a CUDA toolkit compiles the kernels
//! (the PyPI wheel `nvidia-cuda-nvrtc-cu12`, which `scripts/setup.sh` unpacks into
//! `.cache/nvrtc`); NVRTC needs no GPU and no driver.
//!
//! Parity with the CPU path (`compute::emulate` holds the device's exact arithmetic):
//! - the SSM differs from `similarity::cosine_ssm` by at most 1e-5 (fused multiply-adds and
//!   another summation order; checked on every shape in the emulation tests, bound 1e-4 on a
//!   GPU);
//! - the k-means is bit for bit the CPU's on the same SSM (`kmeans.cu`), so a video's events
//!   differ from the CPU's only where an SSM value within 1e-5 of a tie flips a label.

use super::batched::{kmeans_shared_bytes, pack, Kernels, KmeansJob, KmeansOut};
use super::ComputeError;
use crate::ingest::Features;
use cudarc::driver::sys::{CUresult, CU_MEMHOSTALLOC_WRITECOMBINED};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{result as nvrtc, Ptx};
use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// One kernel source and the NVRTC options it needs.
pub struct KernelSource {
    /// Its file under `kernels/`.
    pub file: &'static str,
    /// The source text, embedded at build time.
    pub source: &'static str,
    /// Options beyond the architecture.
    pub options: &'static [&'static str],
}

/// Every kernel the CUDA back-end runs.
pub const KERNELS: [KernelSource; 2] = [
    KernelSource {
        file: "gram.cu",
        source: include_str!("../../kernels/gram.cu"),
        options: &[],
    },
    KernelSource {
        file: "kmeans.cu",
        source: include_str!("../../kernels/kmeans.cu"),
        // No contraction into fused multiply-adds: the CPU path has none, and the k-means
        // must match it label for label.
        options: &["--fmad=false"],
    },
];

/// A kernel file compiled for one virtual architecture.
#[derive(Clone)]
pub struct CompiledKernel {
    /// Its file under `kernels/`.
    pub file: &'static str,
    /// e.g. `compute_90`.
    pub arch: String,
    /// The PTX text.
    pub ptx: String,
}

const NVRTC_HINT: &str = "NVRTC, from a CUDA toolkit or the PyPI wheel nvidia-cuda-nvrtc-cu12 \
     that scripts/setup.sh unpacks into .cache/nvrtc: set compute.nvrtc_library to its \
     libnvrtc.so.12 or put its folder on LD_LIBRARY_PATH";

/// Makes NVRTC loadable: from `path` when one is given (once per path), else from the
/// library path.
fn load_nvrtc(path: &str) -> Result<(), ComputeError> {
    static PRELOADED: OnceLock<Mutex<HashMap<String, libloading::Library>>> = OnceLock::new();
    if !path.is_empty() {
        let mut kept = PRELOADED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !kept.contains_key(path) {
            // SAFETY: NVRTC's initialisers have no preconditions; the handle is kept for the
            // process's life so the library is never unloaded under cudarc.
            let library = unsafe { libloading::Library::new(path) }.map_err(|e| {
                ComputeError::MissingLibrary {
                    library: format!("{path} ({e})"),
                    hint: NVRTC_HINT,
                }
            })?;
            kept.insert(path.to_string(), library);
        }
    }
    // SAFETY: only tries to open the library by its names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(ComputeError::MissingLibrary {
            library: "libnvrtc.so.12".to_string(),
            hint: NVRTC_HINT,
        })
    }
}

/// Compiles every kernel for `arch` (e.g. `compute_90`), failing on any error or warning;
/// once per architecture and process.
pub fn compile_kernels(
    arch: &str,
    nvrtc_library: &str,
) -> Result<Vec<CompiledKernel>, ComputeError> {
    static COMPILED: OnceLock<Mutex<HashMap<String, Vec<CompiledKernel>>>> = OnceLock::new();
    let cache = COMPILED.get_or_init(Default::default);
    if let Some(done) = cache.lock().ok().and_then(|c| c.get(arch).cloned()) {
        return Ok(done);
    }
    load_nvrtc(nvrtc_library)?;
    // cudarc panics on a symbol an older NVRTC lacks: an error here, not the process's end.
    let compiled: Vec<CompiledKernel> = std::panic::catch_unwind(|| {
        KERNELS
            .iter()
            .map(|kernel| compile(kernel, arch))
            .collect::<Result<_, _>>()
    })
    .unwrap_or(Err(ComputeError::Unsupported))?;
    if let Ok(mut cache) = cache.lock() {
        cache.insert(arch.to_string(), compiled.clone());
    }
    Ok(compiled)
}

fn text(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn compile(kernel: &KernelSource, arch: &str) -> Result<CompiledKernel, ComputeError> {
    let fail = |message: String| ComputeError::Compile {
        file: kernel.file,
        arch: arch.to_string(),
        message,
    };
    let source = CString::new(kernel.source).map_err(|e| fail(e.to_string()))?;
    let name = CString::new(kernel.file).map_err(|e| fail(e.to_string()))?;
    let program = nvrtc::create_program(&source, Some(&name)).map_err(|e| fail(e.to_string()))?;
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    options.extend(kernel.options.iter().map(|o| o.to_string()));
    // SAFETY: `program` was created above and is destroyed once, below.
    let (compiled, log, ptx) = unsafe {
        let compiled = nvrtc::compile_program(program, &options);
        let log = nvrtc::get_program_log(program)
            .map(|raw| text(&raw))
            .unwrap_or_default();
        let ptx = compiled.and_then(|()| nvrtc::get_ptx(program));
        let _ = nvrtc::destroy_program(program);
        (compiled, log, ptx)
    };
    let log = log.trim().to_string();
    if let Err(e) = compiled {
        return Err(fail(if log.is_empty() { e.to_string() } else { log }));
    }
    if !log.is_empty() {
        return Err(fail(format!("compiled with warnings:\n{log}")));
    }
    let ptx = ptx.map_err(|e| fail(e.to_string()))?;
    Ok(CompiledKernel {
        file: kernel.file,
        arch: arch.to_string(),
        ptx: text(&ptx),
    })
}

/// The `gram` kernel's threads per block; `kernels/gram.cu` GRAM_THREADS.
const GRAM_THREADS: u32 = 256;
/// Its output tile side; `kernels/gram.cu` GRAM_TILE.
const GRAM_TILE: usize = 128;
/// Rows per `row_inverse_norms` block: one warp each.
const NORM_ROWS_PER_BLOCK: u32 = 8;
/// `kmeans` threads per block: one per step for the usual 128 steps.
const KMEANS_THREADS: u32 = 128;

/// Page-locked host buffers, kept and grown across batches: allocating them costs far more
/// than a batch's copies.
#[derive(Default)]
struct Pinned {
    upload: Option<PinnedHostSlice<f32>>,
    download: Option<PinnedHostSlice<f32>>,
}

/// `slot`'s buffer, replaced by a larger one when it holds fewer than `len` values.
fn grown<'a>(
    slot: &'a mut Option<PinnedHostSlice<f32>>,
    len: usize,
    context: &Arc<CudaContext>,
    flags: u32,
) -> Result<&'a mut PinnedHostSlice<f32>, DriverError> {
    if slot.as_ref().is_none_or(|buffer| buffer.len() < len) {
        *slot = None;
        // SAFETY: the caller writes every value it reads back (the upload's before copying,
        // the download's by the copy).
        *slot = Some(unsafe { context.alloc_pinned_with_flags::<f32>(len.max(1), flags) }?);
    }
    slot.as_mut()
        .ok_or(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY))
}

/// The kernels loaded on one device, with two streams so one half of a batch uploads while
/// the other computes.
pub struct CudaKernels {
    streams: [Arc<CudaStream>; 2],
    pinned: Mutex<Pinned>,
    row_inverse_norms: CudaFunction,
    gram: CudaFunction,
    kmeans: CudaFunction,
    name: String,
}

fn driver(ordinal: usize) -> impl Fn(DriverError) -> ComputeError {
    move |source| ComputeError::Driver { ordinal, source }
}

impl CudaKernels {
    /// Opens device `ordinal` and compiles and loads the kernels for it.
    pub fn open(ordinal: usize, nvrtc_library: &str) -> Result<CudaKernels, ComputeError> {
        // SAFETY: only tries to open the library by its names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(ComputeError::MissingLibrary {
                library: "libcuda.so.1".to_string(),
                hint: "the NVIDIA driver; this machine has none, or it is not on the library path",
            });
        }
        load_nvrtc(nvrtc_library)?;
        let err = driver(ordinal);
        let context = CudaContext::new(ordinal).map_err(&err)?;
        let (major, minor) = context.compute_capability().map_err(&err)?;
        let arch = format!("compute_{major}{minor}");
        let compiled = compile_kernels(&arch, "")?;
        let mut modules = Vec::new();
        for kernel in &compiled {
            modules.push(
                context
                    .load_module(Ptx::from_src(kernel.ptx.clone()))
                    .map_err(&err)?,
            );
        }
        let function =
            |module: usize, name: &str| modules[module].load_function(name).map_err(&err);
        let name = format!(
            "cuda:{ordinal} ({}, sm_{major}{minor})",
            context.name().map_err(&err)?
        );
        Ok(CudaKernels {
            streams: [
                context.new_stream().map_err(&err)?,
                context.new_stream().map_err(&err)?,
            ],
            row_inverse_norms: function(0, "row_inverse_norms")?,
            gram: function(0, "gram")?,
            kmeans: function(1, "kmeans")?,
            pinned: Mutex::default(),
            name,
        })
    }

    /// The device's name and compute capability.
    pub fn describe(&self) -> String {
        self.name.clone()
    }

    /// Queues the inverse norms and the Gram kernel of `videos` videos on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn queue_gram(
        &self,
        stream: &CudaStream,
        features: &CudaView<f32>,
        inverse: &mut CudaViewMut<f32>,
        ssm: &mut CudaViewMut<f32>,
        videos: usize,
        steps: usize,
        dim: usize,
    ) -> Result<(), DriverError> {
        let (rows, steps_arg, dim_arg) = (count(videos * steps)?, count(steps)?, count(dim)?);
        let tiles = steps.div_ceil(GRAM_TILE);
        // SAFETY: the arguments match the kernels' signatures; the views hold `videos` videos
        // of features, inverse norms and SSMs.
        unsafe {
            stream
                .launch_builder(&self.row_inverse_norms)
                .arg(features)
                .arg(&mut *inverse)
                .arg(&rows)
                .arg(&dim_arg)
                .launch(LaunchConfig {
                    grid_dim: ((rows as u32).div_ceil(NORM_ROWS_PER_BLOCK), 1, 1),
                    block_dim: (NORM_ROWS_PER_BLOCK * 32, 1, 1),
                    shared_mem_bytes: 0,
                })?;
            stream
                .launch_builder(&self.gram)
                .arg(features)
                .arg(&mut *inverse)
                .arg(ssm)
                .arg(&steps_arg)
                .arg(&dim_arg)
                .launch(LaunchConfig {
                    grid_dim: ((tiles * (tiles + 1) / 2) as u32, videos as u32, 1),
                    block_dim: (GRAM_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                })?;
        }
        Ok(())
    }

    fn ordinal(&self) -> usize {
        self.streams[0].context().ordinal()
    }
}

/// What [`CudaKernels::time_gram`] measured: medians over the repeats.
#[derive(Debug, Clone, Copy)]
pub struct GramTiming {
    /// Seconds for the norms and the Gram kernel over the batch (data already on the device).
    pub kernel_s: f64,
    /// Seconds to upload the batch's features from pinned memory.
    pub upload_s: f64,
    /// Useful floating-point operations: 2·B·T²·D.
    pub flops: f64,
    /// Bytes the kernels must move at least: the features read twice (norms, Gram) and the
    /// SSMs written.
    pub kernel_bytes: f64,
    /// Bytes uploaded.
    pub upload_bytes: f64,
}

impl CudaKernels {
    /// Times the Gram path on `videos` random videos of `steps × dim`: the medians of
    /// `repeats` runs, each synchronised.
    pub fn time_gram(
        &self,
        videos: usize,
        steps: usize,
        dim: usize,
        repeats: usize,
    ) -> Result<GramTiming, ComputeError> {
        let err = driver(self.ordinal());
        let run = || -> Result<GramTiming, DriverError> {
            let stream = &self.streams[0];
            let context = stream.context();
            let len = videos * steps * dim;
            let mut rng = crate::rng::Rng::new(1);
            // SAFETY: filled right below, before any copy reads it.
            let mut staging = unsafe { context.alloc_pinned::<f32>(len) }?;
            staging
                .as_mut_slice()?
                .iter_mut()
                .for_each(|v| *v = rng.normal() as f32);
            // SAFETY: the upload fills it before the kernels read it.
            let mut features = unsafe { stream.alloc::<f32>(len) }?;
            let mut inverse = unsafe { stream.alloc::<f32>(videos * steps) }?;
            let mut ssm = unsafe { stream.alloc::<f32>(videos * steps * steps) }?;
            let (mut uploads, mut kernels) = (Vec::new(), Vec::new());
            for _ in 0..repeats.max(1) {
                let started = std::time::Instant::now();
                stream.memcpy_htod(&staging, &mut features)?;
                stream.synchronize()?;
                uploads.push(started.elapsed().as_secs_f64());
                let started = std::time::Instant::now();
                self.queue_gram(
                    stream,
                    &features.slice(..),
                    &mut inverse.slice_mut(..),
                    &mut ssm.slice_mut(..),
                    videos,
                    steps,
                    dim,
                )?;
                stream.synchronize()?;
                kernels.push(started.elapsed().as_secs_f64());
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (b, t, d) = (videos as f64, steps as f64, dim as f64);
            Ok(GramTiming {
                kernel_s: median(kernels),
                upload_s: median(uploads),
                flops: 2.0 * b * t * t * d,
                kernel_bytes: 4.0 * (2.0 * b * t * d + b * t * t),
                upload_bytes: 4.0 * b * t * d,
            })
        };
        run().map_err(err)
    }
}

fn count(value: usize) -> Result<i32, DriverError> {
    i32::try_from(value).map_err(|_| DriverError(CUresult::CUDA_ERROR_INVALID_VALUE))
}

impl Kernels for CudaKernels {
    type Session = CudaSlice<f32>;

    fn gram(
        &self,
        group: &[&Features],
        steps: usize,
        dim: usize,
    ) -> Result<(CudaSlice<f32>, Vec<f32>), ComputeError> {
        let err = driver(self.ordinal());
        let run = || -> Result<(CudaSlice<f32>, Vec<f32>), DriverError> {
            let context = self.streams[0].context();
            let videos = group.len();
            let (per_video, per_ssm) = (steps * dim, steps * steps);
            let len = videos * per_video;
            // One batch at a time uses the pinned buffers (and the streams).
            let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
            let Pinned { upload, download } = &mut *pinned;
            // Write-combined for the upload (the host only writes it), cached for the download.
            let staging = grown(upload, len, context, CU_MEMHOSTALLOC_WRITECOMBINED)?;
            pack(group, steps, dim, staging.as_mut_slice()?);
            let landing = grown(download, videos * per_ssm, context, 0)?;
            // SAFETY: every element is written before it is read: the upload fills the
            // features, the kernels fill the norms and the SSMs.
            let mut features = unsafe { self.streams[0].alloc::<f32>(len.max(1)) }?;
            let mut inverse = unsafe { self.streams[0].alloc::<f32>((videos * steps).max(1)) }?;
            let mut ssm = unsafe { self.streams[0].alloc::<f32>((videos * per_ssm).max(1)) }?;
            self.streams[0].synchronize()?;
            let staged = staging.as_slice()?;
            let landed = landing.as_mut_slice()?;
            let half = videos.div_ceil(2);
            for (stream, range) in self.streams.iter().zip([0..half, half..videos]) {
                if range.is_empty() {
                    continue;
                }
                let (v0, v1) = (range.start, range.end);
                stream.memcpy_htod(
                    &staged[v0 * per_video..v1 * per_video],
                    &mut features.slice_mut(v0 * per_video..v1 * per_video),
                )?;
                self.queue_gram(
                    stream,
                    &features.slice(v0 * per_video..v1 * per_video),
                    &mut inverse.slice_mut(v0 * steps..v1 * steps),
                    &mut ssm.slice_mut(v0 * per_ssm..v1 * per_ssm),
                    v1 - v0,
                    steps,
                    dim,
                )?;
                stream.memcpy_dtoh(
                    &ssm.slice(v0 * per_ssm..v1 * per_ssm),
                    &mut landed[v0 * per_ssm..v1 * per_ssm],
                )?;
            }
            for stream in &self.streams {
                stream.synchronize()?;
            }
            Ok((ssm, landed[..videos * per_ssm].to_vec()))
        };
        run().map_err(err)
    }

    fn kmeans(&self, ssm: &CudaSlice<f32>, job: &KmeansJob) -> Result<KmeansOut, ComputeError> {
        let err = driver(self.ordinal());
        let shared = kmeans_shared_bytes(job.k, job.steps);
        let stream = &self.streams[0];
        let run = || -> Result<KmeansOut, DriverError> {
            let problems = job.sizes.len() * job.trials;
            let sizes = stream.clone_htod(&job.sizes)?;
            let tols = stream.clone_htod(&job.tols)?;
            let extra = stream.clone_htod(&job.extra)?;
            let starts = stream.clone_htod(&job.starts)?;
            let mut labels = stream.alloc_zeros::<i32>((problems * job.steps).max(1))?;
            let mut inertia = stream.alloc_zeros::<f32>(problems.max(1))?;
            let args = [
                count(job.steps)?,
                count(job.trials)?,
                count(job.k)?,
                count(job.stride)?,
                i32::from(job.with_time),
                count(job.max_iter)?,
            ];
            let config = LaunchConfig {
                grid_dim: (problems as u32, 1, 1),
                block_dim: (KMEANS_THREADS, 1, 1),
                shared_mem_bytes: shared as u32,
            };
            // The SSMs were written on both streams; k-means reads them on the first.
            self.streams[1].synchronize()?;
            // SAFETY: the arguments match kmeans' signature; the job's arrays are sized for
            // `problems` problems over `steps` steps.
            unsafe {
                let mut launch = stream.launch_builder(&self.kmeans);
                launch
                    .arg(ssm)
                    .arg(&extra)
                    .arg(&sizes)
                    .arg(&tols)
                    .arg(&starts)
                    .arg(&mut labels)
                    .arg(&mut inertia);
                for value in &args {
                    launch.arg(value);
                }
                launch.launch(config)?;
            }
            let mut out = KmeansOut {
                labels: stream.clone_dtoh(&labels)?,
                inertia: stream.clone_dtoh(&inertia)?,
            };
            stream.synchronize()?;
            out.labels.truncate(problems * job.steps);
            out.inertia.truncate(problems);
            Ok(out)
        };
        run().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::super::batched::events_batch;
    use super::super::emulate::Emulated;
    use super::*;
    use crate::compute::{charades_like, cpu_events};
    use crate::config::Config;
    use crate::rng::Rng;
    use crate::similarity::cosine_ssm;

    /// NVRTC from the wheel `scripts/setup.sh` unpacks, else the library path's.
    fn nvrtc() -> &'static str {
        let wheel = concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/nvrtc/libnvrtc.so.12");
        if std::path::Path::new(wheel).exists() {
            wheel
        } else {
            ""
        }
    }

    #[test]
    fn a_kernel_that_fails_or_warns_is_refused_with_the_compilers_words() {
        load_nvrtc(nvrtc()).expect("NVRTC loads: run scripts/setup.sh test");
        let broken = KernelSource {
            file: "broken.cu",
            source: "extern \"C\" __global__ void f(float *x) { x[0] = undeclared; }",
            options: &[],
        };
        let said = compile(&broken, "compute_90").err().unwrap().to_string();
        assert!(
            said.starts_with("kernels/broken.cu for compute_90: ") && said.contains("undeclared"),
            "{said}"
        );
        let warned = KernelSource {
            file: "warned.cu",
            source: "extern \"C\" __global__ void f(float *x) { int unused; x[0] = 1.0f; }",
            options: &[],
        };
        let said = compile(&warned, "compute_90").err().unwrap().to_string();
        assert!(
            said.contains("compiled with warnings") && said.contains("unused"),
            "{said}"
        );
    }

    /// Device 0, or `None` with the reason printed: these tests need a GPU.
    fn device() -> Option<CudaKernels> {
        match CudaKernels::open(0, nvrtc()) {
            Ok(kernels) => {
                eprintln!("GPU test on {}", kernels.describe());
                Some(kernels)
            }
            Err(e) => {
                eprintln!("skipped, no usable CUDA device: {e}");
                None
            }
        }
    }

    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal() as f32 + 0.5).collect()
    }

    #[test]
    fn on_a_gpu_the_gram_kernel_gives_the_emulated_and_the_cpu_similarity() {
        let Some(device) = device() else { return };
        let mut rng = Rng::new(4);
        for (videos, steps, dim) in [(8, 128, 1024), (3, 90, 500), (2, 200, 37), (2, 128, 2304)] {
            let packed = random(&mut rng, videos * steps * dim);
            let clips: Vec<Features> = packed
                .chunks_exact(steps * dim)
                .map(|data| Features {
                    frames: steps,
                    dim,
                    data: data.to_vec(),
                })
                .collect();
            let refs: Vec<&Features> = clips.iter().collect();
            let (_, gpu) = device.gram(&refs, steps, dim).unwrap();
            let (_, emulated) = Emulated.gram(&refs, steps, dim).unwrap();
            let (mut to_cpu, mut to_emulation) = (0.0f32, 0.0f32);
            for v in 0..videos {
                let features = Features {
                    frames: steps,
                    dim,
                    data: packed[v * steps * dim..(v + 1) * steps * dim].to_vec(),
                };
                let cpu = cosine_ssm(&features);
                let block = v * steps * steps..(v + 1) * steps * steps;
                for ((g, e), c) in gpu[block.clone()]
                    .iter()
                    .zip(&emulated[block])
                    .zip(&cpu.data)
                {
                    to_cpu = to_cpu.max((g - c).abs());
                    to_emulation = to_emulation.max((g - e).abs());
                }
            }
            eprintln!("{videos}×{steps}×{dim}: max |ΔS| to the CPU {to_cpu:e}, to the emulation {to_emulation:e}");
            assert!(to_cpu <= 1e-4, "{to_cpu}");
            assert!(to_emulation <= 1e-6, "{to_emulation}");
        }
    }

    #[test]
    fn on_a_gpu_a_batch_has_the_emulated_events_and_the_cpu_ones_but_for_ties() {
        let Some(device) = device() else { return };
        let config = Config::default();
        let videos: Vec<Features> = (0..48)
            .map(|i| charades_like(1, 60 + i % 69, 512, i as u64).remove(0))
            .collect();
        let batch: Vec<&Features> = videos.iter().collect();
        let seeds: Vec<u64> = (0..videos.len() as u64).collect();
        let gpu = events_batch(&device, &batch, &seeds, &config).unwrap();
        let emulated = events_batch(&Emulated, &batch, &seeds, &config).unwrap();
        let mut same_as_cpu = 0;
        for ((g, e), (features, &seed)) in gpu.iter().zip(&emulated).zip(videos.iter().zip(&seeds))
        {
            assert_eq!(g.events, e.events);
            same_as_cpu += usize::from(g.events == cpu_events(features, seed, &config).events);
        }
        eprintln!(
            "{same_as_cpu} of {} videos have the CPU's events exactly",
            videos.len()
        );
        assert!(same_as_cpu * 100 >= videos.len() * 95, "{same_as_cpu}");
    }

    #[test]
    fn the_kmeans_shared_memory_fits_the_default_sample() {
        let config = crate::config::Config::default();
        let bytes = kmeans_shared_bytes(config.events.k, config.sample.steps);
        assert!(
            bytes <= super::super::batched::SHARED_LIMIT,
            "{bytes} bytes"
        );
    }
}
