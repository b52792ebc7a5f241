//! One function per subcommand.

mod bench;
mod run;
mod serve;
mod tools;

use anyhow::{Context, Result};
use strata_model::{Engine, Model, SamplerConfig, Speculative};
use strata_tensor::ops::CpuPath;

use crate::args::{Cli, Command, CpuKernels, ModelArgs, SampleArgs, SpecArgs};
use crate::output::model_path;

pub fn dispatch(cli: Cli) -> Result<()> {
    // The CPU kernels are a setting of the engine each command opens.
    let path = match cli.cpu_kernels() {
        CpuKernels::Exact => CpuPath::Exact,
        CpuKernels::Fast => CpuPath::Fast,
        CpuKernels::Reference => CpuPath::Reference,
    };
    match cli.command {
        Command::Run(a) => run::run(a, path),
        Command::Chat(a) => run::chat(a, path),
        Command::Tokenize(a) => tools::tokenize(a),
        Command::Bench(a) => bench::bench(a, path),
        Command::Logits(a) => tools::logits(a, path),
        Command::Inspect(a) => tools::inspect(a),
        Command::Synth(a) => tools::synth(a),
        Command::Plan(a) => tools::plan(a, path),
        Command::Serve(a) => serve::serve(a, path),
    }
}

fn load_model(a: &ModelArgs) -> Result<Model> {
    let path = model_path(&a.model)?;
    Model::load(&path).with_context(|| format!("cannot use model {}", path.display()))
}

/// Warns (on stderr, unless `quiet`) when `--context` is above the model's training context:
/// the positions beyond it were never seen in training, and the text usually degrades there.
pub fn warn_long_context(model: &Model, a: &crate::args::SessionArgs, quiet: bool) {
    let trained = model.config.n_ctx_train;
    if let Some(c) = a.context
        && c > trained
        && !quiet
    {
        eprintln!(
            "warning: --context {c} is above the {trained} tokens {} was trained with; text past {trained} tokens \
             may degrade",
            model.path.display()
        );
    }
}

fn sampler_config(a: &SampleArgs) -> SamplerConfig {
    SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed.unwrap_or_else(rand_seed),
    }
}

/// A seed from the clock and process id (the summary prints it, so a run can be repeated).
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The speculative decoding `--lookup`, `--draft-model` and `--draft-max` ask for (None: plain
/// decoding). Zero values are refused by [`Speculative::validate`].
fn speculative(a: &SpecArgs) -> Result<Option<Speculative>> {
    let mut spec = match (a.lookup, &a.draft_model) {
        (Some(Some(n)), None) => Speculative::lookup(n),
        (Some(None), None) => Speculative::lookup_default(),
        (None, Some(_)) => Speculative::draft_model(),
        (Some(_), Some(_)) => anyhow::bail!("--lookup and --draft-model are two drafters; give one"),
        (None, None) => {
            if a.draft_max.is_some() {
                anyhow::bail!("--draft-max needs a drafter: --lookup N or --draft-model FILE");
            }
            return Ok(None);
        }
    };
    if let Some(k) = a.draft_max {
        spec.draft_max = k;
    }
    spec.validate()?;
    Ok(Some(spec))
}

/// Loads `--draft-model` into the engine (checked against the engine's model).
fn open_draft(engine: &mut Engine, a: &SpecArgs) -> Result<()> {
    if let Some(path) = &a.draft_model {
        let draft = Model::load(path).with_context(|| format!("cannot use draft model {}", path.display()))?;
        engine.open_draft(std::sync::Arc::new(draft), &|_, _| {})?;
    }
    Ok(())
}

/// One line for `--stats`: what speculative decoding did.
fn speculative_line(s: &strata_model::SpeculativeStats) -> String {
    format!(
        "speculative ({}): {} draft rounds in {} target passes, {}/{} drafted tokens accepted ({:.0}%), {:.2} tokens \
         per target pass, {:.1} ms drafting, {:.1} ms verifying",
        s.drafter,
        s.draft_rounds,
        s.target_passes,
        s.accepted_tokens,
        s.drafted_tokens,
        s.acceptance_rate * 100.0,
        s.tokens_per_target_pass,
        s.draft_seconds * 1e3,
        s.verify_seconds * 1e3
    )
}
