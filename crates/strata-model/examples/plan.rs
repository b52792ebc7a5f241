//! Prints where the layers would go on a hypothetical 8 GiB card, without a GPU: the planner
//! is a pure function of the model's sizes, the budgets and the speeds (cached measurements of
//! this machine, else assumed ones).
//!
//! `cargo run -p strata-model --example plan -- [path/to/model.gguf]`.

use strata_model::engine::plan_for;
use strata_model::{DeviceChoice, EngineOptions, Model};

fn main() -> strata_model::Result<()> {
    let path = std::env::args().nth(1).map_or_else(strata_model::default_model_path, Into::into);
    let model = Model::load(&path)?;
    let mut opts = EngineOptions::new(&path);
    opts.device = DeviceChoice::Cpu;
    opts.offload.hypothetical_gpu = Some(8 << 30);
    print!("{}", plan_for(&model, &opts, None)?.render_table());
    Ok(())
}
