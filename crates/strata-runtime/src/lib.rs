//! strata-runtime: the layer-streaming runtime (placement plan, executor, timeline).
//!
//! - [`plan`]: which layer is resident, streamed or computed on the CPU, and the predicted speed;
//! - [`streamer`]: streamed layers packed in (pinned) host memory and copied into device slots
//!   ahead of compute, on a GPU or on the host "device" used by tests ([`device`]);
//! - [`pack`]: whole-layer packing;
//! - [`units`]: sizes and rates as users type them (`6GiB`, `25GB/s`) and as strata prints them.
//!
//! No unsafe code: everything that touches a GPU goes through strata-tensor's safe types.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod device;
mod error;
pub mod pack;
pub mod plan;
pub mod streamer;
pub mod units;

pub use error::{Error, Result};
