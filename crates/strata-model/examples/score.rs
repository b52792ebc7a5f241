//! Scores a text: the logits at every position, shown as the probability the model gave to
//! each next token, and the text's perplexity.
//!
//! `cargo run -p strata-model --example score -- "The quick brown fox"`.

use strata_model::{Engine, EngineOptions, default_model_path};

fn main() -> strata_model::Result<()> {
    let text = std::env::args().nth(1).unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".to_string());
    let mut engine = Engine::open(EngineOptions::new(default_model_path()))?;
    let ids = engine.tokenizer().encode(&text, None, true)?;
    let logits = engine.score(&ids)?;
    let n_vocab = engine.model().config.n_vocab;
    let mut nll = 0.0;
    for (row, &next) in logits.chunks_exact(n_vocab).zip(&ids[1..]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let log_sum = row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln() + f64::from(max);
        let log_p = f64::from(row[next as usize]) - log_sum;
        nll -= log_p;
        println!("{:>8.4}  {:?}", log_p.exp(), engine.tokenizer().piece(next));
    }
    println!("perplexity {:.2} over {} tokens", (nll / (ids.len() - 1).max(1) as f64).exp(), ids.len() - 1);
    Ok(())
}
