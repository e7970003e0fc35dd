//! Where the default model (SmolLM2-135M-Instruct, GGUF Q4_1) lives, fetching it when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::LlmError;

/// File name of the default model in the `models/` cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Environment variable that names a model path and overrides everything else.
pub const MODEL_ENV: &str = "MIRRORSIM_MODEL";
const FETCH_SCRIPT: &str = "scripts/fetch-model.sh";

fn load_error(path: &Path, message: impl Into<String>) -> LlmError {
    LlmError::Load {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Folders that may be the project root, most specific first: the source tree this crate was
/// built from, then upwards from the running executable and from the current directory.
fn candidate_roots() -> Vec<PathBuf> {
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")];
    if let Ok(executable) = std::env::current_exe() {
        roots.extend(executable.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(current) = std::env::current_dir() {
        roots.extend(current.ancestors().map(Path::to_path_buf));
    }
    roots
}

/// The model to use when none is named: `$MIRRORSIM_MODEL` if set (it must exist); else
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf` under the project root if present; else the result of
/// running `scripts/fetch-model.sh`. Fails with what was tried; never silently returns nothing.
pub fn default_model_path() -> Result<PathBuf, LlmError> {
    if let Some(named) = std::env::var_os(MODEL_ENV).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(named);
        return if path.exists() {
            Ok(path)
        } else {
            Err(load_error(
                &path,
                format!("{MODEL_ENV} names this path, but it does not exist"),
            ))
        };
    }

    let roots = candidate_roots();
    for root in &roots {
        let cached = root.join("models").join(DEFAULT_MODEL_FILE);
        if cached.is_file() {
            return Ok(cached.canonicalize().unwrap_or(cached));
        }
    }

    let script = roots
        .iter()
        .map(|root| root.join(FETCH_SCRIPT))
        .find(|script| script.is_file());
    let Some(script) = script else {
        return Err(load_error(
            Path::new(DEFAULT_MODEL_FILE),
            format!(
                "no cached default model and no {FETCH_SCRIPT} found near the source tree, the \
                 executable or the current directory; set {MODEL_ENV} or pass --model"
            ),
        ));
    };
    fetch_with(&script)
}

fn fetch_with(script: &Path) -> Result<PathBuf, LlmError> {
    tracing::info!("default model not cached; running {}", script.display());
    let output = Command::new("bash")
        .arg(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| load_error(script, format!("cannot run the fetch script: {error}")))?;
    if !output.status.success() {
        return Err(load_error(
            script,
            format!(
                "the fetch script failed ({}); set {MODEL_ENV} or pass --model",
                output.status
            ),
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fetched = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| load_error(script, "the fetch script printed no path"))?;
    if fetched.is_file() {
        Ok(fetched)
    } else {
        Err(load_error(
            &fetched,
            format!(
                "{} printed this path, but no file is there",
                script.display()
            ),
        ))
    }
}
