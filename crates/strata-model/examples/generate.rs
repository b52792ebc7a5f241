//! Generates a continuation of a prompt, printing each piece as it comes.
//!
//! `cargo run -p strata-model --example generate -- "Once upon a time"` (the model is
//! `$STRATA_MODEL`, else the default model under `models/`).

use std::io::Write;

use strata_model::{Engine, EngineOptions, GenerateOptions, default_model_path};

fn main() -> strata_model::Result<()> {
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "The capital of France is".to_string());
    let mut engine = Engine::open(EngineOptions::new(default_model_path()))?;
    let opts = GenerateOptions { max_tokens: 32, ..GenerateOptions::default() };
    let g = engine.generate(&prompt, &opts, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
    })?;
    println!("\n[{} tokens on {}]", g.generated_ids.len(), engine.device());
    Ok(())
}
