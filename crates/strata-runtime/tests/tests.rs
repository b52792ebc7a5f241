//! strata-runtime tests, one binary (`runtime`) with a module per area:
//! - `units`: size and rate parsing and formatting (examples, errors, round-trip properties);
//! - `plan`: the placement planner (invariants as property tests, policies, errors, a 7B-like
//!   model at several budgets, the JSON contract);
//! - `plan_moe`: the planner for mixture-of-experts models (expert placements, flags, arithmetic);
//! - `plan_prefill`: the prefill placement (cpu layers streamed in prompt passes, the threshold).

mod support;

mod plan;
mod plan_moe;
mod plan_prefill;
mod units;
