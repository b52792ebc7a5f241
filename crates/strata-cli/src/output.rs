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

use strata_model::DEFAULT_MODEL;

/// The model to use: --model, else `strata_model::default_model_path()` ($STRATA_MODEL, else
/// the default model in or above the current directory, or in the checkout the binary was
/// built in).
pub fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        if !p.exists() {
            bail!("model file {} does not exist", p.display());
        }
        return Ok(p.clone());
    }
    let p = strata_model::default_model_path();
    if p.exists() || std::env::var_os(strata_model::MODEL_ENV).is_some() {
        return Ok(p);
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

/// An f32 for JSON as its shortest decimal form: `0.8`, not the `0.800000011920929` of its
/// widening to f64 (what `serde_json::to_value` and `json!` print for an f32).
pub fn json_f32(x: f32) -> serde_json::Value {
    // Display gives the shortest digits that read back as the same f32; non-finite → null.
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(serde_json::Value::Null, Into::into)
}
