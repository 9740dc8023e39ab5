//! The ONNX Runtime library, loaded once per process from `caption.ort_library` (or
//! `ORT_DYLIB_PATH`). A missing file or a library ort cannot use is an error naming the path and
//! what to install, never a panic: the path is checked, then `ort::init_from` reports the rest.

use super::CaptionError;
use crate::config::CaptionConfig;
use ort::environment::Environment;
use std::path::PathBuf;
use std::sync::Mutex;

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Which library file to load: `ORT_DYLIB_PATH` when set, else the configured one.
pub fn library_path(config: &CaptionConfig) -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| config.ort_library.clone())
}

/// The process's ONNX Runtime environment. The library loads once: the first call that
/// succeeds fixes it for the process, whatever path later calls name; a failed load is not
/// remembered, so a corrected path can still succeed.
pub fn environment(config: &CaptionConfig) -> Result<Environment, CaptionError> {
    let mut loaded = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(environment) = loaded.as_ref() {
        return Ok(environment.clone());
    }
    let path = library_path(config);
    let fail = |message: String| CaptionError::Runtime {
        path: path.clone(),
        message,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let environment = ort::init_from(&path)
        .map_err(|e| fail(e.to_string()))?
        .with_name("momentminer")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    *loaded = Some(environment.clone());
    Ok(environment)
}
