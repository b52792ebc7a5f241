//! Small output helpers: error chains on one line, default model path.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// "outer: inner: innermost" on one line, skipping repeats.
pub fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model to use: --model, else $STRATA_MODEL, else the default model in ./models or in the
/// checkout the binary was built in.
pub fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        if !p.exists() {
            bail!("model file {} does not exist", p.display());
        }
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("STRATA_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from(DEFAULT_MODEL)];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/strata → the checkout root.
        if let Some(root) = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()) {
            candidates.push(root.join(DEFAULT_MODEL));
        }
    }
    if let Some(p) = candidates.iter().find(|p| p.exists()) {
        return Ok(p.clone());
    }
    bail!("the default model {DEFAULT_MODEL} is missing: run scripts/fetch-model.sh (or pass --model FILE)")
}

/// Writes to stdout; a closed pipe (`strata inspect … | head`) ends the program quietly
/// instead of panicking like `print!` does.
pub fn write_out(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`write_out`].
macro_rules! outln {
    () => { $crate::output::write_out("\n") };
    ($($t:tt)*) => { $crate::output::write_out(&(format!($($t)*) + "\n")) };
}

/// `print!` through [`write_out`].
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write_out(&format!($($t)*)) };
}
