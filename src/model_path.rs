//! Where the default model file is: one lookup for the CLI and every test in the workspace
//! (re-exported as `strata_model::default_model_path`). It lives in this bottom crate so that
//! the kernel tests, which cannot depend on strata-model, use the same lookup.

use std::path::{Path, PathBuf};

/// The default model, relative to a checkout (what `scripts/fetch-model.sh` downloads).
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The environment variable that names another model file.
pub const MODEL_ENV: &str = "STRATA_MODEL";

/// The default model file: `$STRATA_MODEL` when set (as given, whether or not it exists), else
/// the first existing [`DEFAULT_MODEL`] under the current directory or one of its parents, else
/// under a parent of the running program (a binary or test in `<checkout>/target/…`). When none
/// exists it returns `./models/…`, which does not: callers check and say to run
/// `scripts/fetch-model.sh`.
pub fn default_model_path() -> PathBuf {
    if let Some(p) = std::env::var_os(MODEL_ENV) {
        return PathBuf::from(p);
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let bases = cwd.iter().chain(exe.iter()).flat_map(|p| p.ancestors());
    find_under(bases).unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL))
}

fn find_under<'a>(bases: impl Iterator<Item = &'a Path>) -> Option<PathBuf> {
    bases.map(|b| b.join(DEFAULT_MODEL)).find(|p| p.is_file())
}
