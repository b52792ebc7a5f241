//! strata-runtime: the layer-streaming runtime (placement plan, executor, timeline).

pub mod plan;
