//! strata-runtime: the layer-streaming runtime (placement plan, executor, timeline).
//!
//! - [`plan`]: which layer is resident, streamed or computed on the CPU, and the predicted speed;
//! - [`units`]: sizes and rates as users type them (`6GiB`, `25GB/s`) and as strata prints them.

pub mod plan;
pub mod units;
