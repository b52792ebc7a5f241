//! strata-runtime tests, one binary (`runtime`) with a module per area:
//! - `units`: size and rate parsing and formatting (examples, errors, round-trip properties);
//! - `plan`: the placement planner (invariants as property tests, policies, errors, a 7B-like
//!   model at several budgets, the JSON contract).

mod support;

mod plan;
mod units;
