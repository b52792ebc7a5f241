//! Helpers shared by the test modules.

use proptest::test_runner::Config as ProptestConfig;

/// `cases` proptest cases, or fewer when `STRATA_TEST_CASES` says so (scripts/gpu-check.sh and
/// slow machines cap it).
pub fn config(cases: u32) -> ProptestConfig {
    let cap = std::env::var("STRATA_TEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
    ProptestConfig { cases: cases.min(cap).max(1), failure_persistence: None, ..ProptestConfig::default() }
}

use strata_runtime::plan::{Plan, PlanRequest, SpeedSource, Speeds, plan};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A measured machine: a PCIe 4.0 desktop with a fast card (fixed numbers, so the expectations
/// of the planner tests do not move when the assumed speeds are recalibrated).
pub fn measured() -> Speeds {
    Speeds {
        h2d_bytes_per_s: 25e9,
        gpu_bytes_per_s: 750e9,
        gpu_flops: 40e12,
        cpu_bytes_per_s: 20e9,
        cpu_flops: 300e9,
        layer_overhead_s: 30e-6,
        cpu_handoff_s: 50e-6,
        source: SpeedSource::Measured,
        gpu_source: SpeedSource::Measured,
    }
}

/// `req` changed by `f`.
pub fn with(req: &PlanRequest, f: impl FnOnce(&mut PlanRequest)) -> PlanRequest {
    let mut r = req.clone();
    f(&mut r);
    r
}

/// The plan of `req`; a failure names the request.
pub fn ok(req: &PlanRequest) -> Plan {
    plan(req).unwrap_or_else(|e| panic!("plan failed: {e}\nrequest: {req:?}"))
}
