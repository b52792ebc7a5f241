//! Continuous batching without a server: four prompts share every forward pass of a
//! [`Scheduler`], and a fifth joins while they run. Each sequence has its own sampler and seed;
//! the text of each is printed when it finishes.
//!
//! `cargo run -p strata-model --example batch` (the model is `$STRATA_MODEL`, else the default
//! model under `models/`).

use std::collections::HashMap;
use std::sync::Arc;

use strata_model::batch::{Event, Request, Scheduler, SchedulerOptions, SeqId};
use strata_model::tokenizer::StreamDecoder;
use strata_model::{Model, SamplerConfig, default_model_path};

fn main() -> strata_model::Result<()> {
    let model = Arc::new(Model::load(&default_model_path())?);
    // 256 MiB of KV blocks shared by every sequence; at most 8 sequences per pass.
    let mut opts = SchedulerOptions { context: 512, max_seqs: 8, ..SchedulerOptions::default() };
    opts.kv_blocks = opts.blocks_for_bytes(&model, 256 << 20);
    let mut sched = Scheduler::new(Arc::clone(&model), &opts)?;
    let tok = &model.tokenizer;
    let request = |text: &str, seed: u64| -> strata_model::Result<Request> {
        let sampler =
            if seed == 0 { SamplerConfig::greedy() } else { SamplerConfig { seed, ..SamplerConfig::default() } };
        Ok(Request { prompt: tok.encode(text, None, true)?, max_tokens: 24, sampler, ignore_eos: false })
    };
    let mut texts: HashMap<SeqId, (String, StreamDecoder<'_>, String)> = HashMap::new();
    for (i, p) in
        ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "Water boils at"].iter().enumerate()
    {
        let id = sched.submit(request(p, i as u64)?)?;
        texts.insert(id, (p.to_string(), StreamDecoder::new(tok), String::new()));
    }
    let mut steps = 0;
    while !sched.is_idle() {
        if steps == 5 {
            let p = "The three primary colours are";
            let id = sched.submit(request(p, 0)?)?;
            texts.insert(id, (p.to_string(), StreamDecoder::new(tok), String::new()));
        }
        for e in sched.step()? {
            match e {
                Event::Token { id, token } => {
                    if let Some((_, d, out)) = texts.get_mut(&id) {
                        out.push_str(&d.push(token));
                    }
                }
                Event::Done { id, reason, generated_tokens, .. } => {
                    if let Some((prompt, mut d, mut out)) = texts.remove(&id) {
                        out.push_str(&d.finish());
                        println!("[{id:?}, {generated_tokens} tokens, {reason:?}] {prompt}{out}\n");
                    }
                }
            }
        }
        steps += 1;
    }
    let st = sched.stats();
    println!(
        "{} passes for {} generated tokens; KV blocks in use at the end: {}",
        st.steps, st.generated_tokens, st.kv_blocks_used
    );
    Ok(())
}
